//! The active health probe of one upstream: the loop that probes it every
//! interval, and one probe of each kind (`tcp`, `http`, `ws`). The same loop
//! runs the WebSocket check of [`super::websocket_check`] every
//! `ws_check_interval`, whatever the probe's kind.
//!
//! Results go to the upstream's [`Health`] record; a failure is a typed
//! [`ProbeError`], kept as the record's [`HealthReason`], whose `Display`
//! is what logs and `/status` show. The request itself is sent by the
//! shared client in [`crate::dial::probe`], which `shunt doctor` uses too.

use std::sync::Arc;

use fastwebsockets::{Frame, OpCode, Role, WebSocket};
use http::{Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::health::{Health, HealthReason};
use super::websocket_check::{PathCheck, WebSocketChecks};
use crate::config::{HealthSpec, ProbeKind, UpstreamSpec, UpstreamUrl};
use crate::dial::probe::{SendError, send, ws_upgrade};
use crate::dial::{ConnectError, connect};
use crate::forward::UpgradeNotForwarded;

/// Why one probe failed. Upstream's by definition: the probe is shunt's own
/// request. Each message names the request, as logs and `/status` show it.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The upstream could not be reached.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The request got no response head.
    #[error(transparent)]
    Send(#[from] SendError),
    /// `http`: the GET answered something other than 2xx or 3xx.
    #[error("GET {path} answered {status}")]
    Status {
        /// The probed path.
        path: String,
        /// What it answered.
        status: StatusCode,
    },
    /// `ws`: the handshake answered something other than 101.
    #[error("websocket handshake on {path} answered {status}")]
    NotUpgraded {
        /// The probed path.
        path: String,
        /// What it answered.
        status: StatusCode,
    },
    /// `ws`: a 101 whose connection could not be taken over.
    #[error("websocket handshake on {path}")]
    Upgrade {
        /// The probed path.
        path: String,
        /// What hyper saw.
        #[source]
        source: hyper::Error,
    },
    /// `ws`: the closing frame could not be sent.
    #[error("websocket close on {path}")]
    Close {
        /// The probed path.
        path: String,
        /// What the WebSocket layer saw.
        #[source]
        source: fastwebsockets::WebSocketError,
    },
}

/// Probe `url` every `spec.interval` until `stop` is cancelled.
///
/// Started by [`super::Upstream::start`] for an upstream a route uses, and
/// stopped through `stop` when that upstream is dropped (a reload that
/// removes or changes it) or at shutdown. Each probe, connect included, is
/// bounded by `spec.timeout`; a timeout counts as a failure. While a
/// WebSocket mark is due, a re-test on its path follows the probe.
/// Between probes, every `spec.ws_check_interval` (the first right after
/// the first probe), the WebSocket check ([`check_websocket_paths`])
/// handshakes on each path of `checks` as it is then.
/// `tracker` tracks the probe connections' hyper tasks.
pub(crate) async fn probe_loop(
    upstream: UpstreamSpec,
    tls: Option<Arc<ClientConfig>>,
    health: Arc<Health>,
    checks: Arc<WebSocketChecks>,
    stop: CancellationToken,
    tracker: TaskTracker,
) {
    // An upstream that wants a PROXY header gets one that names no client.
    let proxy_header = upstream
        .send_proxy_protocol
        .map(|v| crate::proxy_header::encode(v, None));
    let prober = Prober {
        url: upstream.url,
        tls,
        spec: upstream.health,
        proxy_header,
        tracker,
        stop,
    };
    let spec = &prober.spec;
    let stop = &prober.stop;
    // The first WebSocket check follows the first probe.
    let mut ws_due = Instant::now();
    loop {
        let result = tokio::select! {
            r = prober.probe(spec) => r,
            () = stop.cancelled() => return,
        };
        match result {
            Ok(Ok(())) => {
                health.record_success();
                if matches!(spec.check, ProbeKind::Ws(_)) {
                    health.record_websocket_success();
                }
            }
            Ok(Err(e)) => health.record_failure(HealthReason::Probe(Arc::new(e))),
            Err(_) => health.record_failure(HealthReason::ProbeTimeout(spec.timeout)),
        }
        if let Some(path) = health.websocket_retest_due() {
            let retest = HealthSpec {
                check: ProbeKind::Ws(path),
                ..spec.clone()
            };
            let result = tokio::select! {
                r = prober.probe(&retest) => r,
                () = stop.cancelled() => return,
            };
            match result {
                Ok(Ok(())) => health.record_websocket_success(),
                Ok(Err(e)) => health.websocket_retest_failed(&HealthReason::Probe(Arc::new(e))),
                Err(_) => health.websocket_retest_failed(&HealthReason::ProbeTimeout(spec.timeout)),
            }
        }
        let next_probe = Instant::now() + spec.interval;
        loop {
            if let Some(every) = spec.ws_check_interval
                && Instant::now() >= ws_due
            {
                let due = checks.due(own_websocket_path(spec));
                tokio::select! {
                    () = check_websocket_paths(&prober, &health, due) => {}
                    () = stop.cancelled() => return,
                }
                ws_due = Instant::now() + every;
            }
            let wake = match spec.ws_check_interval {
                Some(_) => next_probe.min(ws_due),
                None => next_probe,
            };
            tokio::select! {
                () = tokio::time::sleep_until(wake) => {}
                () = stop.cancelled() => return,
            }
            if Instant::now() >= next_probe {
                break;
            }
        }
    }
}

/// What every probe of one upstream needs besides its kind.
struct Prober {
    url: UpstreamUrl,
    tls: Option<Arc<ClientConfig>>,
    spec: HealthSpec,
    /// `LOCAL` (v2) or `PROXY UNKNOWN` (v1), for `send_proxy_protocol`.
    proxy_header: Option<Vec<u8>>,
    tracker: TaskTracker,
    stop: CancellationToken,
}

impl Prober {
    /// One probe of `kind` (the upstream's own, a re-test or a check),
    /// bounded by the health timeout.
    async fn probe(
        &self,
        kind: &HealthSpec,
    ) -> Result<Result<(), ProbeError>, tokio::time::error::Elapsed> {
        tokio::time::timeout(
            self.spec.timeout,
            probe(
                &self.url,
                self.tls.as_ref(),
                self.proxy_header.as_deref(),
                kind,
                &self.tracker,
                &self.stop,
            ),
        )
        .await
    }
}

/// The path the upstream's own probe already handshakes on every interval
/// (`ws:PATH`): the WebSocket check leaves it out.
fn own_websocket_path(spec: &HealthSpec) -> Option<&str> {
    match &spec.check {
        ProbeKind::Ws(path) => Some(path),
        ProbeKind::Tcp | ProbeKind::Http(_) => None,
    }
}

/// What one WebSocket check says about the upstream.
#[derive(Debug)]
enum Verdict {
    /// It answered 101: it forwards upgrades on that path.
    Upgrades,
    /// It answered the handshake, with `status` instead of 101 (not a 4xx):
    /// what a real upgrade through it would have got too.
    NotForwarded(StatusCode),
    /// Nothing to say about upgrades: unreachable, no answer in time (the
    /// state probe judges those), or a 4xx (a deliberate refusal, relayed
    /// as is to a real upgrade too).
    Unknown(HealthReason),
}

/// One WebSocket check: a handshake on `path` and a Close, bounded by the
/// health timeout, with the probe's `User-Agent` and `X-Shunt-Probe`.
async fn check_websocket(prober: &Prober, path: &str) -> Verdict {
    let kind = HealthSpec {
        check: ProbeKind::Ws(path.to_owned()),
        ..prober.spec.clone()
    };
    match prober.probe(&kind).await {
        // A peer that drops the socket right after its 101 did upgrade.
        Ok(Ok(()) | Err(ProbeError::Close { .. })) => Verdict::Upgrades,
        Ok(Err(ProbeError::NotUpgraded { status, .. })) if !status.is_client_error() => {
            Verdict::NotForwarded(status)
        }
        Ok(Err(e)) => Verdict::Unknown(HealthReason::Probe(Arc::new(e))),
        Err(_) => Verdict::Unknown(HealthReason::ProbeTimeout(prober.spec.timeout)),
    }
}

/// Check each of `due` and record what it says, exactly as a real upgrade
/// through the upstream would: a path answered without upgrading marks the
/// upstream for each route checked on it ([`Health::record_websocket_failure`],
/// so those routes are `degraded` in `/readyz` now, while another upstream
/// still serves them); when every path checked upgrades, the mark is cleared.
async fn check_websocket_paths(prober: &Prober, health: &Health, due: Vec<PathCheck>) {
    let (mut upgraded, mut failed) = (false, false);
    for PathCheck { path, routes } in due {
        match check_websocket(prober, &path).await {
            Verdict::Upgrades => upgraded = true,
            Verdict::NotForwarded(status) => {
                failed = true;
                let reason = UpgradeNotForwarded {
                    upstream: health.name().clone(),
                    status,
                    path,
                };
                for route in &routes {
                    health.record_websocket_failure(&reason, route);
                }
            }
            Verdict::Unknown(why) => {
                tracing::debug!(upstream = %health.name(), path = %path, why = %why, "WebSocket check inconclusive");
            }
        }
    }
    if upgraded && !failed {
        health.record_websocket_success();
    }
}

/// The `User-Agent` of every probe: a backend that counts connected agents
/// (or logs handshakes) can tell shunt's probes from browsers.
pub(crate) const PROBE_USER_AGENT: &str = concat!("shunt-health/", env!("CARGO_PKG_VERSION"));

/// Sent with value `1` on every probe, for a backend that filters on a header.
pub(crate) const PROBE_HEADER: &str = "x-shunt-probe";

/// One probe.
/// `tcp`: the connect is the check. `http`: `GET path` must answer 2xx or
/// 3xx. `ws`: the upgrade must be answered 101, then shunt sends a Close
/// (1000) and waits for the answer or the socket's end, so the backend
/// sees a clean close rather than a reset.
async fn probe(
    url: &UpstreamUrl,
    tls: Option<&Arc<ClientConfig>>,
    proxy_header: Option<&[u8]>,
    spec: &HealthSpec,
    tracker: &TaskTracker,
    stop: &CancellationToken,
) -> Result<(), ProbeError> {
    let stream = connect(url, tls, spec.timeout, proxy_header).await?;
    let request = |path: &str| {
        Request::get(path)
            .header(header::HOST, url.authority())
            .header(header::USER_AGENT, PROBE_USER_AGENT)
            .header(PROBE_HEADER, "1")
    };
    match &spec.check {
        ProbeKind::Tcp => Ok(()),
        ProbeKind::Http(path) => {
            let resp = send(stream, request(path), tracker, stop).await?;
            let status = resp.status();
            if status.is_success() || status.is_redirection() {
                Ok(())
            } else {
                Err(ProbeError::Status {
                    path: path.clone(),
                    status,
                })
            }
        }
        ProbeKind::Ws(path) => {
            let key = fastwebsockets::handshake::generate_key();
            let handshake = ws_upgrade(request(path), &key);
            let mut resp = send(stream, handshake, tracker, stop).await?;
            if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
                return Err(ProbeError::NotUpgraded {
                    path: path.clone(),
                    status: resp.status(),
                });
            }
            let upgraded =
                hyper::upgrade::on(&mut resp)
                    .await
                    .map_err(|source| ProbeError::Upgrade {
                        path: path.clone(),
                        source,
                    })?;
            let mut ws = WebSocket::after_handshake(TokioIo::new(upgraded), Role::Client);
            ws.write_frame(Frame::close(1000, b""))
                .await
                .map_err(|source| ProbeError::Close {
                    path: path.clone(),
                    source,
                })?;
            // Read until the upstream answers the close (a hello may come first);
            // a peer that just closes the socket after our Close is fine too.
            while let Ok(frame) = ws.read_frame().await {
                if frame.opcode == OpCode::Close {
                    break;
                }
            }
            Ok(())
        }
    }
}
