//! Upstreams: where requests go, whether they are healthy, and how one is chosen.
//!
//! An [`Upstream`] owns its health record and, while any route uses it, a probe
//! task that stops when the last reference to it is dropped (a reload that
//! removes or changes it). Selection walks a route's upstreams in order and
//! connects to the first that is not down, falling through to the next one on
//! a connect failure, which also counts against the failed upstream's health.
//!
//! No stale refusals: when *every* upstream of a route is marked down, the
//! marks may be a whole probe interval old, so selection tries them all anyway,
//! in order (panic routing, as Envoy's panic threshold and nginx's lone-server
//! rule do). A request that connects marks its upstream up at once (passive
//! recovery), so `/readyz` and `/status` follow what requests really saw.
//!
//! Falling through on a connect failure is safe because nothing has been sent
//! yet: the request is still whole, so the next upstream gets it as if it had
//! been first. Once bytes are sent, a failure is reported to the client
//! (502/504) rather than retried, since the request may have had effects.
//!
//! The one exception is a WebSocket handshake an upstream answered without
//! upgrading (2xx, 3xx, 5xx: an nginx without the upgrade headers). It is a
//! GET without a body, so [`Failover`] sends it again to the route's next
//! upstream. What an exchange means for an upstream's health (a 101, an
//! upgrade it did not forward, no answer in time) is upstream knowledge, so
//! it is recorded here too ([`Upstream::record`]), not by the caller.

//! Before an upstream is needed for WebSocket, its probe loop checks it on
//! the paths of the routes that carry WebSocket through it
//! ([`websocket_check`]): a fallback that would not forward upgrades makes
//! its route `degraded` while the primary still serves. [`Failover`] tells
//! every upstream of a route when a 101 shows the route carries WebSocket.
//!
//! Errors: selection's own is [`SelectError`]; what a failure meant for an
//! upstream's health is kept as a typed [`health::HealthReason`], never as
//! text, and becomes text only where `/status`, `/readyz` or a 503 body
//! shows it.

pub(crate) mod health;
pub(crate) mod probe;
pub(crate) mod websocket_check;

use std::borrow::Cow;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{HeaderValue, Response, StatusCode};
use rustls::ClientConfig;
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;

use crate::config::{Scheme, Timeouts, UpstreamName, UpstreamSpec};
use crate::dial::pool::ConnPool;
use crate::dial::{Conn, ConnectError};
use crate::error_chain::ErrorChain;
use crate::forward::ForwardError;
use crate::tls::client::{ClientTlsError, client_config};
use health::{Health, HealthReason, State};
use websocket_check::WebSocketChecks;

/// One named upstream with its live health.
#[derive(Debug)]
pub struct Upstream {
    /// The upstream as configured.
    pub spec: UpstreamSpec,
    /// Its health, shared with the probe loop (and kept across reloads).
    pub health: Arc<Health>,
    /// Whether a route uses it (only then is it probed).
    pub probed: bool,
    /// TLS towards an `https` upstream.
    pub tls: Option<Arc<ClientConfig>>,
    /// Idle keep-alive connections for plain requests.
    pub pool: Arc<ConnPool>,
    /// `host:port`, the `Host` of a request that had none: made once here,
    /// not per request.
    pub authority: String,
    /// Its name as the `x-shunt-route` value of every response it serves:
    /// made once; each response shares it.
    pub route_header: HeaderValue,
    /// The routes whose paths its probe loop WebSocket-checks: set by each
    /// snapshot build, added to on a route's first 101, and kept with the
    /// upstream across reloads.
    pub(crate) websocket_checks: Arc<WebSocketChecks>,
    /// Cancels the probe loop when the upstream is dropped.
    ///
    /// So the probe task lives exactly as long as some snapshot still holds
    /// this upstream; an `Arc<Health>` carried over to a new `Upstream` keeps
    /// its record while the old probe stops and a new one starts.
    _probe: Option<DropGuard>,
}

impl Upstream {
    /// Create the upstream; if `probed`, start its probe loop on `tracker`.
    /// `health` and `websocket_checks` carry over the record and the
    /// WebSocket routes of an unchanged upstream across a reload.
    ///
    /// Fails only for an `https` upstream whose TLS client cannot be built:
    /// its CA file is unreadable or holds no certificate, or there is no CA
    /// file and no system roots to trust.
    pub(crate) fn start(
        spec: UpstreamSpec,
        probed: bool,
        health: Option<Arc<Health>>,
        websocket_checks: Option<Arc<WebSocketChecks>>,
        root: &CancellationToken,
        tracker: &TaskTracker,
    ) -> Result<Arc<Self>, ClientTlsError> {
        let tls = match spec.url.scheme {
            Scheme::Https => Some(client_config(spec.ca.as_deref())?),
            Scheme::Http => None,
        };
        let health = health
            .unwrap_or_else(|| Arc::new(Health::new(spec.name.clone(), &spec.health, probed)));
        let websocket_checks = websocket_checks.unwrap_or_default();
        let probe = probed.then(|| {
            let stop = root.child_token();
            tracker.spawn(probe::probe_loop(
                spec.clone(),
                tls.clone(),
                health.clone(),
                websocket_checks.clone(),
                stop.clone(),
                tracker.clone(),
            ));
            stop.drop_guard()
        });
        // A name is letters, digits, `-`, `_` or `.` (`config::parse`): always a valid value.
        let route_header = HeaderValue::from_str(&spec.name.0)
            .unwrap_or_else(|_| HeaderValue::from_static("upstream"));
        // A PROXY header names one client: no connection is kept for another.
        let pool = Arc::new(match spec.send_proxy_protocol {
            Some(_) => ConnPool::new(0, std::time::Duration::ZERO),
            None => ConnPool::default(),
        });
        Ok(Arc::new(Upstream {
            authority: spec.url.authority(),
            route_header,
            websocket_checks,
            spec,
            health,
            probed,
            tls,
            pool,
            _probe: probe,
        }))
    }

    /// The upstream's name.
    pub fn name(&self) -> &UpstreamName {
        &self.spec.name
    }

    /// Not known to be down.
    /// `Unknown` and `Unused` count as usable: a fresh upstream is tried
    /// before its first probe has answered.
    pub fn is_usable(&self) -> bool {
        self.health.state() != State::Down
    }
}

/// Why no upstream of a route could take a request. Selection's own error,
/// kept here with the selection that produces it; [`crate::response`] maps
/// it (503 when all are down, 504 on a connect timeout, else 502).
#[derive(Debug, thiserror::Error)]
pub enum SelectError {
    /// Every upstream of the route is marked down and, tried anyway in
    /// order (panic routing), none accepted a connection.
    #[error("no healthy upstream ({reasons})")]
    NoneHealthy {
        /// Why each upstream is down, as `/readyz` shows it.
        reasons: DownReasons,
    },
    /// Every usable upstream was tried and refused; the last failure is kept
    /// (shared with that upstream's health record, which keeps it too).
    #[error("upstream {upstream}")]
    Connect {
        /// The last upstream tried.
        upstream: UpstreamName,
        /// Why it could not be reached.
        #[source]
        source: Arc<ConnectError>,
    },
}

impl Upstream {
    /// Record on this upstream's health what one forwarded exchange means:
    /// a 101 to a WebSocket handshake clears a "does not forward upgrades"
    /// mark, an upgrade it answered without upgrading sets one (for
    /// `route`, on the path the failure names), and no answer within the response timeout counts as
    /// a failure. Any other outcome says nothing about the upstream.
    pub fn record(&self, outcome: Result<StatusCode, &ForwardError>, websocket: bool, route: &str) {
        match outcome {
            Ok(status) if websocket && status == StatusCode::SWITCHING_PROTOCOLS => {
                self.health.record_websocket_success();
            }
            Ok(_) => {}
            Err(ForwardError::UpgradeNotForwarded(failure)) => {
                self.health.record_websocket_failure(failure, route);
            }
            Err(ForwardError::Timeout { after, .. }) => {
                self.health.record_failure(HealthReason::NoResponse(*after));
            }
            Err(e) if dropped_before_answering(e) => {
                self.health.record_failure(HealthReason::Dropped);
            }
            Err(_) => {}
        }
    }
}

/// One request's walk over its route's upstreams: connect to the first
/// usable one ([`connect_first`]); after the exchange, record what it meant
/// for that upstream ([`Upstream::record`]) and say whether to go on to the
/// next one (only a WebSocket handshake: one the upstream did not upgrade,
/// or whose connection it dropped before answering).
#[derive(Debug)]
pub(crate) struct Failover<'a> {
    /// Every upstream of the route, in route order: each learns of a 101.
    via: &'a [Arc<Upstream>],
    /// The upstreams not yet tried, in the order they are tried.
    candidates: Cow<'a, [Arc<Upstream>]>,
    timeouts: &'a Timeouts,
    websocket: bool,
    /// The client and the address it reached, for an upstream that wants a
    /// PROXY header (`send_proxy_protocol`).
    client: Option<(SocketAddr, SocketAddr)>,
}

impl<'a> Failover<'a> {
    /// Walk `via` for a plain request (which may take a pooled connection)
    /// or, with `websocket`, for a handshake (fresh connections only, and
    /// upstreams known not to forward upgrades last: [`websocket_order`]).
    pub(crate) fn new(via: &'a [Arc<Upstream>], websocket: bool, timeouts: &'a Timeouts) -> Self {
        let candidates = if websocket {
            Cow::Owned(websocket_order(via))
        } else {
            Cow::Borrowed(via)
        };
        Failover {
            via,
            candidates,
            timeouts,
            websocket,
            client: None,
        }
    }

    /// The client (`source`, and the address it connected to) that a
    /// PROXY header names to an upstream with `send_proxy_protocol`.
    pub(crate) fn for_client(self, source: SocketAddr, destination: SocketAddr) -> Self {
        Failover {
            client: Some((source, destination)),
            ..self
        }
    }

    /// Connect to the first usable upstream left ([`connect_first`]).
    pub(crate) async fn connect(&self) -> Result<(Arc<Upstream>, Conn), SelectError> {
        connect_first(
            &self.candidates,
            self.timeouts,
            !self.websocket,
            self.client,
        )
        .await
    }

    /// Record what the exchange with `upstream` on route `route` (its
    /// label) for `path` meant for it, then: `None` to send the request to
    /// the next upstream (an upgrade not forwarded, or a handshake whose
    /// connection was dropped before any answer, with a usable upstream left
    /// after this one), else the result to answer the client with.
    ///
    /// A 101 also shows that the route carries WebSocket: from then on
    /// every upstream of the route is WebSocket-checked on `path`.
    pub(crate) fn settle<B>(
        &mut self,
        upstream: &Arc<Upstream>,
        result: Result<Response<B>, ForwardError>,
        route: &str,
        path: &str,
    ) -> Option<Result<Response<B>, ForwardError>> {
        let outcome = result.as_ref().map(Response::status);
        upstream.record(outcome, self.websocket, route);
        if self.websocket && matches!(outcome, Ok(StatusCode::SWITCHING_PROTOCOLS)) {
            for u in self.via {
                u.websocket_checks.learn(route, path);
            }
        }
        let again = match &result {
            Err(ForwardError::UpgradeNotForwarded { .. }) => true,
            Err(e) => self.websocket && dropped_before_answering(e),
            Ok(_) => false,
        };
        if !again {
            return Some(result);
        }
        // A WebSocket handshake is a GET without a body: safe to send again.
        let tried = self
            .candidates
            .iter()
            .position(|u| Arc::ptr_eq(u, upstream));
        self.candidates.to_mut().drain(..=tried.unwrap_or(0));
        if self.candidates.iter().all(|u| !u.is_usable()) {
            return Some(result);
        }
        None
    }
}

/// Whether the upstream accepted the connection, then closed or reset it
/// before any answer to a WebSocket handshake: like a refused connect, the
/// upstream is marked down and the route's next one is tried (a dying or
/// restarting backend; nginx retries the same way).
fn dropped_before_answering(e: &ForwardError) -> bool {
    matches!(
        e,
        ForwardError::Handshake {
            source: crate::forward::handshake::HandshakeError::Dropped(_),
            ..
        }
    )
}

/// Why each upstream of a route is down, in route order: its last failure,
/// or its state when none is recorded. Shown as
/// `direct: connection refused; nginx: down` in 503 bodies and `/readyz`.
#[derive(Debug, Clone)]
pub struct DownReasons(pub Vec<(UpstreamName, Result<HealthReason, State>)>);

impl fmt::Display for DownReasons {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, (name, why)) in self.0.iter().enumerate() {
            if n > 0 {
                f.write_str("; ")?;
            }
            match why {
                Ok(reason) => write!(f, "{name}: {reason}")?,
                Err(state) => write!(f, "{name}: {}", state.as_str())?,
            }
        }
        Ok(())
    }
}

/// Connect to the first usable upstream of `via`, in order; a failed connect
/// marks that upstream and falls through to the next. With `reuse` (plain
/// requests, never upgrades), an idle pooled connection is taken first. An
/// upstream with `send_proxy_protocol` gets a PROXY header naming `client`
/// first on each connection, and has no pool: a connection opened for one
/// client is never reused for another.
///
/// Who calls it: [`Failover::connect`] for every request (with `reuse` for
/// plain HTTP), after [`websocket_order`] for an upgrade. The error becomes what the
/// client gets ([`crate::response`]): [`SelectError::Connect`] when a
/// usable upstream refused (502, or 504 on a connect timeout),
/// [`SelectError::NoneHealthy`] when all were down (503).
pub(crate) async fn connect_first(
    via: &[Arc<Upstream>],
    timeouts: &Timeouts,
    reuse: bool,
    client: Option<(SocketAddr, SocketAddr)>,
) -> Result<(Arc<Upstream>, Conn), SelectError> {
    let panic = !via.iter().any(|u| u.is_usable());
    if panic && !via.is_empty() {
        tracing::info!(
            upstreams = %names(via),
            "every upstream of the route is marked down; trying them anyway (panic routing)"
        );
    }
    let mut last = None;
    for upstream in via.iter().filter(|u| panic || u.is_usable()) {
        if let Some(sender) = reuse.then(|| upstream.pool.take()).flatten() {
            return Ok((upstream.clone(), Conn::Pooled(sender)));
        }
        let header = upstream
            .spec
            .send_proxy_protocol
            .map(|v| crate::proxy_header::encode(v, client));
        let dialed = crate::dial::connect(
            &upstream.spec.url,
            upstream.tls.as_ref(),
            timeouts.connect,
            header.as_deref(),
        );
        match dialed.await {
            Ok(stream) => {
                if let Some(idle) = timeouts.keepalive
                    && let Err(e) = crate::keepalive::apply(stream.tcp(), idle)
                {
                    tracing::debug!(upstream = %upstream.name(), error = %e, "cannot set TCP keepalive");
                }
                upstream.health.record_connected();
                return Ok((upstream.clone(), Conn::Fresh(stream)));
            }
            Err(e) => {
                let e = Arc::new(e);
                upstream
                    .health
                    .record_failure(HealthReason::Connect(e.clone()));
                tracing::debug!(upstream = %upstream.name(), error = %ErrorChain(&*e), "connect failed, trying the next upstream");
                last = Some((upstream.name().clone(), e));
            }
        }
    }
    match last {
        // In panic mode every upstream was down before and still refuses: say so
        // as before (503 with the reasons), not as one upstream's failure.
        Some(_) if panic => Err(SelectError::NoneHealthy {
            reasons: down_reasons(via),
        }),
        Some((upstream, source)) => Err(SelectError::Connect { upstream, source }),
        None => Err(SelectError::NoneHealthy {
            reasons: down_reasons(via),
        }),
    }
}

/// `via` in order for a WebSocket handshake: upstreams recently seen not to
/// forward upgrades ([`Health::websocket_put_last`]) after the others, so they
/// are tried only when nothing else is left (and clear themselves if they
/// work). Once a mark is a backoff old, its upstream is back in its place.
pub(crate) fn websocket_order(via: &[Arc<Upstream>]) -> Vec<Arc<Upstream>> {
    let (broken, working): (Vec<_>, Vec<_>) = via
        .iter()
        .cloned()
        .partition(|u| u.health.websocket_put_last());
    working.into_iter().chain(broken).collect()
}

/// `direct, nginx`, for log lines.
/// The names in route order, comma-separated.
fn names(via: &[Arc<Upstream>]) -> String {
    via.iter()
        .map(|u| u.name().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Why each upstream of `via` is down, for 503 bodies and `/readyz`.
pub(crate) fn down_reasons(via: &[Arc<Upstream>]) -> DownReasons {
    DownReasons(
        via.iter()
            .map(|u| {
                let v = u.health.view();
                (u.name().clone(), v.last_error.ok_or(v.state))
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{HealthSpec, ProbeKind, UpstreamUrl};
    use std::time::Duration;

    /// An unprobed upstream on the discard port with a 2 s interval, whose
    /// health the test sets by hand.
    fn upstream(name: &str) -> Arc<Upstream> {
        let spec = UpstreamSpec {
            name: UpstreamName(name.into()),
            url: UpstreamUrl {
                scheme: Scheme::Http,
                host: "127.0.0.1".into(),
                port: 9,
            },
            health: HealthSpec {
                check: ProbeKind::Tcp,
                interval: Duration::from_secs(2),
                timeout: Duration::from_secs(1),
                rise: 1,
                fall: 1,
                ws_check_interval: None,
            },
            ca: None,
            send_proxy_protocol: None,
        };
        // Not probed: no task, the test drives the health record itself.
        let root = CancellationToken::new();
        Upstream::start(spec, false, None, None, &root, &TaskTracker::new())
            .unwrap_or_else(|e| panic!("upstream {name}: {e}"))
    }

    /// The names [`websocket_order`] returns, for short assertions.
    fn order(via: &[Arc<Upstream>]) -> Vec<String> {
        websocket_order(via)
            .iter()
            .map(|u| u.name().to_string())
            .collect()
    }

    /// A marked upstream goes last for exactly one health interval (2 s), then
    /// takes its place again until it fails again.
    #[tokio::test(start_paused = true)]
    async fn a_websocket_mark_puts_the_upstream_last_for_one_health_interval() {
        let via = [upstream("nginx"), upstream("direct")];
        let not_forwarded = crate::forward::UpgradeNotForwarded {
            upstream: UpstreamName("nginx".into()),
            status: http::StatusCode::OK,
            path: "/a".into(),
        };
        assert_eq!(order(&via), ["nginx", "direct"]);
        via[0].health.record_websocket_failure(&not_forwarded, "/a");
        assert_eq!(order(&via), ["direct", "nginx"]);
        tokio::time::advance(Duration::from_millis(1999)).await;
        assert_eq!(order(&via), ["direct", "nginx"]);
        // Past the backoff it is tried in its place again (and may clear itself).
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(order(&via), ["nginx", "direct"]);
        // Failing again puts it last for another interval.
        via[0].health.record_websocket_failure(&not_forwarded, "/a");
        assert_eq!(order(&via), ["direct", "nginx"]);
    }

    /// Timeouts for a walk that never connects (only `settle` is driven).
    fn timeouts() -> Timeouts {
        let s = Duration::from_secs(1);
        Timeouts {
            connect: s,
            response: s,
            header: s,
            idle: s,
            drain: s,
            keepalive: None,
        }
    }

    fn not_upgraded(name: &str) -> Result<Response<()>, ForwardError> {
        Err(ForwardError::UpgradeNotForwarded(
            crate::forward::UpgradeNotForwarded {
                upstream: UpstreamName(name.into()),
                status: StatusCode::OK,
                path: "/a".into(),
            },
        ))
    }

    /// An upgrade the first upstream did not forward marks it and goes on to
    /// the next; the last one's refusal is the answer. A 101 clears the mark
    /// and makes every upstream of the route WebSocket-checked on its path.
    #[tokio::test(start_paused = true)]
    async fn failover_moves_on_after_an_upgrade_not_forwarded() {
        let via = [upstream("nginx"), upstream("direct")];
        let t = timeouts();
        let mut walk = Failover::new(&via, true, &t);
        assert!(
            walk.settle(&via[0], not_upgraded("nginx"), "/a", "/a")
                .is_none()
        );
        assert!(via[0].health.websocket_failed_on("/a"));
        let last = walk.settle(&via[1], not_upgraded("direct"), "/a", "/a");
        assert!(matches!(
            last,
            Some(Err(ForwardError::UpgradeNotForwarded { .. }))
        ));
        let switched = Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .body(())
            .unwrap_or_else(|e| panic!("{e}"));
        let mut walk = Failover::new(&via, true, &t);
        assert!(
            via.iter().all(|u| u.websocket_checks.due(None).is_empty()),
            "an upgrade not forwarded does not show the route carries WebSocket"
        );
        assert!(matches!(
            walk.settle(&via[0], Ok(switched), "/a", "/a/room"),
            Some(Ok(_))
        ));
        assert!(!via[0].health.websocket_failed_on("/a"));
        // The 101 shows the route carries WebSocket: every upstream of it is
        // checked from now on, on the path that upgraded.
        for u in &via {
            let due = u.websocket_checks.due(None);
            assert_eq!(
                due,
                [websocket_check::PathCheck {
                    path: "/a/room".into(),
                    routes: vec!["/a".into()],
                }],
                "{}",
                u.name()
            );
        }
    }

    /// No answer within the response timeout counts against the upstream and
    /// is answered at once: a request that was sent is never retried.
    #[tokio::test(start_paused = true)]
    async fn a_response_timeout_counts_against_the_upstream_and_ends_the_walk() {
        let via = [upstream("direct"), upstream("nginx")];
        let t = timeouts();
        let mut walk = Failover::new(&via, false, &t);
        let timeout = Err::<Response<()>, _>(ForwardError::Timeout {
            upstream: UpstreamName("direct".into()),
            after: Duration::from_secs(1),
        });
        assert!(matches!(
            walk.settle(&via[0], timeout, "/a", "/a"),
            Some(Err(ForwardError::Timeout { .. }))
        ));
        let v = via[0].health.view();
        assert_eq!(
            v.last_error.map(|e| e.to_string()).as_deref(),
            Some("no response within 1s")
        );
    }
}
