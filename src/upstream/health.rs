//! Health of one upstream: its state, the rise/fall thresholds, and the active
//! probe loop.
//!
//! State starts `Unknown` and the first result decides it; after that it takes
//! `rise` consecutive successes to come up and `fall` consecutive failures to go
//! down. Probes and real requests (passively, on connect failure or timeout)
//! both report here. Each change is logged once, saying why.
//!
//! Why thresholds: one lost probe on a busy machine should not move every
//! new call to nginx, and one lucky probe should not bring back an upstream
//! that is flapping. The first result decides at once, though, so a fresh
//! start does not wait `rise` intervals before it is ready. Probe kinds
//! match what the route needs: `tcp` (the port accepts), `http` (the app
//! answers), `ws` (the WebSocket path really upgrades, then closes cleanly).
//!
//! Besides the state, a separate WebSocket mark: an upstream that answers
//! plain HTTP but not upgrades (an nginx without the upgrade headers, or one
//! whose own backend is down) is put last for WebSocket only, so it keeps
//! serving plain requests. The mark remembers the routes whose upgrades saw
//! it fail, so readiness judges only routes that carry WebSocket. It does not
//! last forever: once it is a health interval old (the backoff), upgrades try
//! the upstream in its normal order again, and the probe loop re-tests it with
//! a WebSocket handshake on the path that failed, once per interval. An
//! upgrade, `ws:` probe or re-test through it that succeeds clears the mark.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use fastwebsockets::{Frame, OpCode, Role, WebSocket};
use http::{Request, StatusCode, header};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::connect::{connect, http1_handshake};
use crate::config::{HealthSpec, ProbeKind, UpstreamName, UpstreamUrl};

/// What shunt believes about an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Not probed yet.
    Unknown,
    /// Healthy: routes use it.
    Up,
    /// Unhealthy: routes skip it while another is up.
    Down,
    /// No route uses it, so it is not probed.
    Unused,
}

impl State {
    /// Lower-case name, as in `/status`.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Unknown => "unknown",
            State::Up => "up",
            State::Down => "down",
            State::Unused => "unused",
        }
    }
}

/// A copy of the health record, for `/status` and `/readyz`.
#[derive(Debug, Clone)]
pub struct HealthView {
    /// The current state.
    pub state: State,
    /// Why the last probe or request failed, if one has.
    pub last_error: Option<String>,
    /// When the state last changed.
    pub last_change: SystemTime,
    /// Why WebSocket upgrades through it fail while plain HTTP works, if they do.
    pub websocket_error: Option<String>,
}

/// Shared health record of one upstream.
#[derive(Debug)]
pub struct Health {
    /// For log lines: every state change names the upstream.
    name: UpstreamName,
    /// Consecutive probe successes that bring a `Down` upstream back (at least 1).
    rise: u32,
    /// Consecutive failures (probes, connects, response timeouts) that take an
    /// `Up` upstream down.
    fall: u32,
    /// How long a WebSocket mark stands before the upstream is tried again
    /// in its normal order and re-tested: the health interval.
    websocket_backoff: Duration,
    /// Read by every request's selection and written by probes and requests;
    /// held only for a few field updates, never across an `.await`.
    inner: Mutex<Inner>,
}

/// The mutable part of [`Health`]; `lock` hands it out.
#[derive(Debug)]
struct Inner {
    state: State,
    /// The current run of successes; any failure resets it to 0.
    successes: u32,
    /// The current run of failures; any success resets it to 0.
    failures: u32,
    /// The reason of the last failure (probe, connect, timeout or WebSocket),
    /// kept after a recovery so `/status` can say what last went wrong.
    last_error: Option<String>,
    /// When `state` last changed (wall clock, as `/status` shows it).
    last_change: SystemTime,
    /// `Some` while upgrades through the upstream are known to fail; set by a
    /// failed upgrade, cleared by one that works.
    websocket: Option<WebSocketMark>,
}

/// Upgrades through the upstream fail while plain HTTP works.
#[derive(Debug)]
struct WebSocketMark {
    /// Why (the warning's text).
    reason: String,
    /// The labels of the routes whose upgrades saw it.
    routes: Vec<String>,
    /// The path of the last failed upgrade, for the re-test.
    path: String,
    /// When it was last seen failing (a tokio instant, so tests can pause time).
    since: tokio::time::Instant,
}

impl Health {
    /// A fresh record: `Unknown` if it will be probed, else `Unused`.
    pub fn new(name: UpstreamName, spec: &HealthSpec, probed: bool) -> Self {
        Health {
            name,
            rise: spec.rise,
            fall: spec.fall,
            websocket_backoff: spec.interval,
            inner: Mutex::new(Inner {
                state: if probed {
                    State::Unknown
                } else {
                    State::Unused
                },
                successes: 0,
                failures: 0,
                last_error: None,
                last_change: SystemTime::now(),
                websocket: None,
            }),
        }
    }

    /// The record, whatever a panicking holder left: every field is valid on
    /// its own, so a half-done update is at worst one stale counter.
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A poisoned lock only means a panic elsewhere mid-update; the counters are still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Current state.
    pub fn state(&self) -> State {
        self.lock().state
    }

    /// A copy of the whole record.
    pub fn view(&self) -> HealthView {
        let i = self.lock();
        HealthView {
            state: i.state,
            last_error: i.last_error.clone(),
            last_change: i.last_change,
            websocket_error: i.websocket.as_ref().map(|m| m.reason.clone()),
        }
    }

    /// Why WebSocket upgrades through it fail, if they do (see [`Health::record_websocket_failure`]).
    pub fn websocket_error(&self) -> Option<String> {
        self.lock().websocket.as_ref().map(|m| m.reason.clone())
    }

    /// Whether an upgrade on route `route` (its label) saw the WebSocket failure
    /// that still stands: the route carries WebSocket and this upstream failed it.
    pub fn websocket_failed_on(&self, route: &str) -> bool {
        self.lock()
            .websocket
            .as_ref()
            .is_some_and(|m| m.routes.iter().any(|r| r == route))
    }

    /// Whether upgrades should try it last: it is marked, and the mark is
    /// younger than the backoff. Past the backoff it takes its normal place
    /// again, so a fixed upstream is noticed.
    pub fn websocket_put_last(&self) -> bool {
        self.lock()
            .websocket
            .as_ref()
            .is_some_and(|m| m.since.elapsed() < self.websocket_backoff)
    }

    /// The path to re-test with a WebSocket handshake, once the mark is at
    /// least the backoff old; `None` when not marked or not yet due.
    pub fn websocket_retest_due(&self) -> Option<String> {
        self.lock()
            .websocket
            .as_ref()
            .filter(|m| m.since.elapsed() >= self.websocket_backoff)
            .map(|m| m.path.clone())
    }

    /// The re-test failed too: the mark stands for another backoff (no new warning).
    pub fn websocket_retest_failed(&self, why: &str) {
        let mut i = self.lock();
        if let Some(m) = i.websocket.as_mut() {
            m.since = tokio::time::Instant::now();
            tracing::debug!(upstream = %self.name, why, "WebSocket re-test failed; still tried last for upgrades");
        }
    }

    /// An upgrade on route `route` (its label) to `path` was answered, but not
    /// with 101 or a 4xx: it does not carry WebSocket (an nginx without the
    /// upgrade headers, or whose backend is down). Only WebSocket is
    /// affected: the state, and so plain HTTP, stay as they are. Logged
    /// once per change of reason.
    pub fn record_websocket_failure(&self, reason: &str, route: &str, path: &str) {
        let mut i = self.lock();
        i.last_error = Some(reason.to_owned());
        if i.websocket.as_ref().is_none_or(|m| m.reason != reason) {
            tracing::warn!(upstream = %self.name, reason, "{reason}");
        }
        let now = tokio::time::Instant::now();
        let mark = i.websocket.get_or_insert_with(|| WebSocketMark {
            reason: String::new(),
            routes: Vec::new(),
            path: String::new(),
            since: now,
        });
        reason.clone_into(&mut mark.reason);
        path.clone_into(&mut mark.path);
        mark.since = now;
        if !mark.routes.iter().any(|r| r == route) {
            mark.routes.push(route.to_owned());
        }
    }

    /// An upgrade, a `ws:` probe or a re-test through it succeeded: WebSocket works again.
    pub fn record_websocket_success(&self) {
        let mut i = self.lock();
        if i.websocket.take().is_some() {
            tracing::info!(upstream = %self.name, "upstream {} forwards WebSocket upgrades again", self.name);
        }
    }

    /// A probe (or request) succeeded.
    pub fn record_success(&self) {
        let mut i = self.lock();
        i.failures = 0;
        i.successes = i.successes.saturating_add(1);
        let comes_up = match i.state {
            State::Unknown | State::Unused => true,
            State::Down => i.successes >= self.rise,
            State::Up => false,
        };
        if comes_up {
            i.state = State::Up;
            i.last_change = SystemTime::now();
            tracing::info!(upstream = %self.name, "upstream {} up (/readyz and /status report it up)", self.name);
        }
    }

    /// A real request connected: the upstream is up at once, whatever the
    /// `rise` threshold (passive recovery), since it plainly accepts work now.
    pub fn record_connected(&self) {
        let mut i = self.lock();
        i.failures = 0;
        i.successes = i.successes.saturating_add(1);
        if i.state != State::Up {
            let was = i.state;
            i.state = State::Up;
            i.last_change = SystemTime::now();
            tracing::info!(
                upstream = %self.name,
                was = was.as_str(),
                "upstream {} up: a request connected (/readyz and /status now report it up)",
                self.name
            );
        }
    }

    /// A probe failed, or a real request could not connect or timed out.
    pub fn record_failure(&self, reason: &str) {
        let mut i = self.lock();
        i.successes = 0;
        i.failures = i.failures.saturating_add(1);
        i.last_error = Some(reason.to_owned());
        let goes_down = match i.state {
            State::Unknown | State::Unused => true,
            State::Up => i.failures >= self.fall,
            State::Down => false,
        };
        if goes_down {
            i.state = State::Down;
            i.last_change = SystemTime::now();
            tracing::warn!(upstream = %self.name, reason, "upstream {} down: {reason} (/status reports it down; /readyz fails while every upstream of a route is)", self.name);
        }
    }
}

/// Probe `url` every `spec.interval` until `stop` is cancelled.
///
/// Started by [`super::Upstream::start`] for an upstream a route uses, and
/// stopped through `stop` when that upstream is dropped (a reload that
/// removes or changes it) or at shutdown. Each probe, connect included, is
/// bounded by `spec.timeout`; a timeout counts as a failure. While a
/// WebSocket mark is due, a re-test on its path follows the probe.
/// `tracker` tracks the probe connections' hyper tasks.
pub async fn probe_loop(
    url: UpstreamUrl,
    tls: Option<Arc<ClientConfig>>,
    spec: HealthSpec,
    health: Arc<Health>,
    stop: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let result = tokio::select! {
            r = tokio::time::timeout(spec.timeout, probe(&url, tls.as_ref(), &spec, &tracker, &stop)) => r,
            () = stop.cancelled() => return,
        };
        match result {
            Ok(Ok(())) => {
                health.record_success();
                if matches!(spec.check, ProbeKind::Ws(_)) {
                    health.record_websocket_success();
                }
            }
            Ok(Err(reason)) => health.record_failure(&reason),
            Err(_) => {
                health.record_failure(&format!("health check timed out after {:?}", spec.timeout))
            }
        }
        if let Some(path) = health.websocket_retest_due() {
            let retest = HealthSpec {
                check: ProbeKind::Ws(path),
                ..spec.clone()
            };
            let result = tokio::select! {
                r = tokio::time::timeout(spec.timeout, probe(&url, tls.as_ref(), &retest, &tracker, &stop)) => r,
                () = stop.cancelled() => return,
            };
            match result {
                Ok(Ok(())) => health.record_websocket_success(),
                Ok(Err(why)) => health.websocket_retest_failed(&why),
                Err(_) => health.websocket_retest_failed("timed out"),
            }
        }
        tokio::select! {
            () = tokio::time::sleep(spec.interval) => {}
            () = stop.cancelled() => return,
        }
    }
}

/// The `User-Agent` of every probe: a backend that counts connected agents
/// (or logs handshakes) can tell shunt's probes from browsers.
pub const PROBE_USER_AGENT: &str = concat!("shunt-health/", env!("CARGO_PKG_VERSION"));

/// Sent with value `1` on every probe, for a backend that filters on a header.
pub const PROBE_HEADER: &str = "x-shunt-probe";

/// One probe; the error is the reason shown in logs and `/status`.
/// `tcp`: the connect is the check. `http`: `GET path` must answer 2xx or
/// 3xx. `ws`: the upgrade must be answered 101, then shunt sends a Close
/// (1000) and waits for the answer or the socket's end, so the backend
/// sees a clean close rather than a reset.
async fn probe(
    url: &UpstreamUrl,
    tls: Option<&Arc<ClientConfig>>,
    spec: &HealthSpec,
    tracker: &TaskTracker,
    stop: &CancellationToken,
) -> Result<(), String> {
    let stream = connect(url, tls, spec.timeout)
        .await
        .map_err(|e| e.to_string())?;
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
                Err(format!("GET {path} answered {status}"))
            }
        }
        ProbeKind::Ws(path) => {
            let key = fastwebsockets::handshake::generate_key();
            let handshake = ws_upgrade(request(path), &key);
            let mut resp = send(stream, handshake, tracker, stop).await?;
            if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
                return Err(format!(
                    "websocket handshake on {path} answered {}",
                    resp.status()
                ));
            }
            let upgraded = hyper::upgrade::on(&mut resp)
                .await
                .map_err(|e| format!("websocket handshake on {path}: {e}"))?;
            let mut ws = WebSocket::after_handshake(TokioIo::new(upgraded), Role::Client);
            ws.write_frame(Frame::close(1000, b""))
                .await
                .map_err(|e| format!("websocket close on {path}: {e}"))?;
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

/// Make `request` (a GET with its `Host`) a WebSocket handshake (RFC 6455
/// §4.1) with `Sec-WebSocket-Key: key`.
/// Shared by the `ws` probe and the doctor's WebSocket check, so both send
/// what a browser sends.
pub fn ws_upgrade(request: http::request::Builder, key: &str) -> http::request::Builder {
    request
        .header(header::UPGRADE, "websocket")
        .header(header::CONNECTION, "upgrade")
        .header(header::SEC_WEBSOCKET_KEY, key)
        .header(header::SEC_WEBSOCKET_VERSION, "13")
}

/// The `Sec-WebSocket-Accept` a server must answer to `key` (RFC 6455 §4.2.2).
pub fn accept_key(key: &str) -> String {
    use base64::Engine;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key.as_bytes());
    ctx.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(ctx.finish())
}

/// Send one bodiless request over `stream` and return the response head; a
/// 101 can then be taken over with `hyper::upgrade::on`.
/// The connection is used for this one request: the probe never pools it.
/// Errors are text naming the request (`GET /health: ...`), as logs and
/// `/status` show them.
pub async fn send<S>(
    stream: S,
    request: http::request::Builder,
    tracker: &TaskTracker,
    stop: &CancellationToken,
) -> Result<hyper::Response<hyper::body::Incoming>, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let req = request
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let what = format!("{} {}", req.method(), req.uri());
    let mut sender = http1_handshake(TokioIo::new(stream), tracker, stop, || {})
        .await
        .map_err(|e| format!("{what}: {e}"))?;
    sender
        .send_request(req)
        .await
        .map_err(|e| format!("{what}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A probed record with a 1 s interval (which is also the WebSocket backoff).
    fn health(rise: u32, fall: u32) -> Health {
        let spec = HealthSpec {
            check: ProbeKind::Tcp,
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            rise,
            fall,
        };
        Health::new(UpstreamName("t".into()), &spec, true)
    }

    /// A failed upgrade marks WebSocket only: the state stays `Up`, a plain
    /// probe does not clear the mark, a WebSocket success does.
    #[test]
    fn a_websocket_failure_leaves_the_state_and_clears_on_success() {
        let h = health(1, 1);
        h.record_success();
        h.record_websocket_failure(
            "nginx answered 200 to a WebSocket upgrade on /a",
            "/a",
            "/a",
        );
        let v = h.view();
        assert_eq!(v.state, State::Up, "plain HTTP keeps the upstream");
        assert_eq!(
            v.websocket_error.as_deref(),
            Some("nginx answered 200 to a WebSocket upgrade on /a")
        );
        assert_eq!(v.last_error, v.websocket_error);
        h.record_success();
        assert!(
            h.websocket_error().is_some(),
            "a tcp/http probe says nothing about upgrades"
        );
        h.record_websocket_success();
        assert_eq!(h.websocket_error(), None);
        assert_eq!(h.state(), State::Up);
    }

    /// The mark lists the routes that saw it, puts the upstream last for one
    /// interval, then asks for a re-test; a failed re-test starts a new interval.
    #[tokio::test(start_paused = true)]
    async fn a_websocket_mark_names_its_routes_and_backs_off_for_one_interval() {
        let h = health(1, 1); // interval 1 s: the backoff
        h.record_success();
        assert!(!h.websocket_put_last());
        assert_eq!(h.websocket_retest_due(), None);
        h.record_websocket_failure("x answered 502", "/audio", "/audio/room");
        assert!(h.websocket_failed_on("/audio"));
        assert!(
            !h.websocket_failed_on("/"),
            "only routes whose upgrades saw it"
        );
        assert!(h.websocket_put_last());
        assert_eq!(h.websocket_retest_due(), None, "not before the backoff");

        tokio::time::advance(Duration::from_millis(999)).await;
        assert!(h.websocket_put_last());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(!h.websocket_put_last(), "back in its normal order");
        assert_eq!(h.websocket_retest_due().as_deref(), Some("/audio/room"));

        // A failed re-test keeps the mark (and its routes) for another backoff.
        h.websocket_retest_failed("answered 502");
        assert!(h.websocket_put_last());
        assert_eq!(h.websocket_retest_due(), None);
        assert!(h.websocket_failed_on("/audio"));

        // Another route's failure adds it; a new reason replaces the old one.
        h.record_websocket_failure("x answered 200", "/other", "/other");
        assert!(h.websocket_failed_on("/audio") && h.websocket_failed_on("/other"));
        assert_eq!(h.websocket_error().as_deref(), Some("x answered 200"));

        h.record_websocket_success();
        assert!(!h.websocket_failed_on("/audio"));
        assert!(!h.websocket_put_last());
        assert_eq!(h.websocket_retest_due(), None);
    }

    /// The worked example of RFC 6455 §1.3.
    #[test]
    fn accept_key_matches_rfc_6455_example() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    /// `Unknown` follows the first result; after that `fall` and `rise` apply.
    #[test]
    fn first_result_decides_then_thresholds_apply() {
        let h = health(2, 3);
        assert_eq!(h.state(), State::Unknown);
        h.record_success();
        assert_eq!(h.state(), State::Up);
        h.record_failure("a");
        h.record_failure("b");
        assert_eq!(h.state(), State::Up);
        h.record_failure("c");
        assert_eq!(h.state(), State::Down);
        assert_eq!(h.view().last_error.as_deref(), Some("c"));
        h.record_success();
        assert_eq!(h.state(), State::Down);
        h.record_success();
        assert_eq!(h.state(), State::Up);
    }

    /// Passive recovery: a real connect brings the upstream up without `rise`.
    #[test]
    fn a_connected_request_marks_up_at_once_despite_rise() {
        let h = health(3, 1);
        h.record_failure("refused");
        assert_eq!(h.state(), State::Down);
        h.record_connected();
        assert_eq!(h.state(), State::Up);
        h.record_failure("refused again");
        assert_eq!(h.state(), State::Down);
    }

    /// Failures must be consecutive: one success between them starts over.
    #[test]
    fn a_success_resets_the_failure_streak() {
        let h = health(1, 2);
        h.record_success();
        h.record_failure("x");
        h.record_success();
        h.record_failure("y");
        assert_eq!(h.state(), State::Up);
    }
}
