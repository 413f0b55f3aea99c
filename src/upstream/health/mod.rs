//! Health of one upstream: its state, the rise/fall thresholds, and why it
//! last failed ([`HealthReason`]). The active probe that reports here is
//! [`super::probe`].
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
//! Besides the state, a separate WebSocket mark (`websocket_mark.rs`): an
//! upstream that answers plain HTTP but not upgrades is put last for
//! WebSocket only, so it keeps serving plain requests.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

mod websocket_mark;

use super::probe::ProbeError;
use crate::config::{HealthSpec, UpstreamName};
use crate::dial::ConnectError;
use crate::error_chain::ErrorChain;
use crate::forward::UpgradeNotForwarded;
use websocket_mark::WebSocketMark;

/// Why an upstream failed, as the health record keeps it: typed, and cheap
/// to clone (a record is copied for every `/status`). Its `Display` is
/// exactly what `/status` (`last_error`, `websocket_error`), `/readyz`, the
/// 503 body and the log lines show, so scripts that read those keep working.
#[derive(Debug, Clone)]
pub enum HealthReason {
    /// A probe failed: its error and each cause.
    Probe(Arc<ProbeError>),
    /// A probe did not finish within the health timeout.
    ProbeTimeout(Duration),
    /// A real request could not connect.
    Connect(Arc<ConnectError>),
    /// A real request got no response head within the response timeout.
    NoResponse(Duration),
    /// It accepted a WebSocket handshake's connection, then closed or reset
    /// it before answering.
    Dropped,
    /// A WebSocket upgrade through it was answered, but not with 101 or a 4xx.
    WebSocket(UpgradeNotForwarded),
}

impl fmt::Display for HealthReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HealthReason::Probe(e) => write!(f, "{}", ErrorChain(&**e)),
            HealthReason::ProbeTimeout(after) => {
                write!(f, "health check timed out after {after:?}")
            }
            HealthReason::Connect(e) => write!(f, "{}", ErrorChain(&**e)),
            HealthReason::NoResponse(after) => write!(f, "no response within {after:?}"),
            HealthReason::Dropped => {
                f.write_str("closed the connection before answering a WebSocket handshake")
            }
            HealthReason::WebSocket(e) => write!(f, "{e}"),
        }
    }
}

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
    pub last_error: Option<HealthReason>,
    /// When the state last changed.
    pub last_change: SystemTime,
    /// Why WebSocket upgrades through it fail while plain HTTP works, if they do.
    pub websocket_error: Option<UpgradeNotForwarded>,
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
    last_error: Option<HealthReason>,
    /// When `state` last changed (wall clock, as `/status` shows it).
    last_change: SystemTime,
    /// `Some` while upgrades through the upstream are known to fail; set by a
    /// failed upgrade, cleared by one that works.
    websocket: Option<WebSocketMark>,
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

    /// The upstream's name, for what its probes report.
    pub(crate) fn name(&self) -> &UpstreamName {
        &self.name
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
            websocket_error: i.websocket.as_ref().map(WebSocketMark::reason),
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
    pub fn record_failure(&self, reason: HealthReason) {
        let mut i = self.lock();
        i.successes = 0;
        i.failures = i.failures.saturating_add(1);
        let goes_down = match i.state {
            State::Unknown | State::Unused => true,
            State::Up => i.failures >= self.fall,
            State::Down => false,
        };
        if goes_down {
            i.state = State::Down;
            i.last_change = SystemTime::now();
            tracing::warn!(upstream = %self.name, reason = %reason, "upstream {} down: {reason} (/status reports it down; /readyz fails while every upstream of a route is)", self.name);
        }
        i.last_error = Some(reason);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ProbeKind;
    use std::time::Duration;

    /// A failure reason that says `n` (a response timeout of `n` ms).
    fn failure(n: u64) -> HealthReason {
        HealthReason::NoResponse(Duration::from_millis(n))
    }

    /// A probed record with a 1 s interval (which is also the WebSocket
    /// backoff); the WebSocket mark's tests use it too.
    pub(super) fn health(rise: u32, fall: u32) -> Health {
        let spec = HealthSpec {
            check: ProbeKind::Tcp,
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            rise,
            fall,
            ws_check_interval: None,
        };
        Health::new(UpstreamName("t".into()), &spec, true)
    }

    /// `Unknown` follows the first result; after that `fall` and `rise` apply.
    #[test]
    fn first_result_decides_then_thresholds_apply() {
        let h = health(2, 3);
        assert_eq!(h.state(), State::Unknown);
        h.record_success();
        assert_eq!(h.state(), State::Up);
        h.record_failure(failure(1));
        h.record_failure(failure(2));
        assert_eq!(h.state(), State::Up);
        h.record_failure(failure(3));
        assert_eq!(h.state(), State::Down);
        assert_eq!(
            h.view().last_error.map(|r| r.to_string()).as_deref(),
            Some("no response within 3ms")
        );
        h.record_success();
        assert_eq!(h.state(), State::Down);
        h.record_success();
        assert_eq!(h.state(), State::Up);
    }

    /// Passive recovery: a real connect brings the upstream up without `rise`.
    #[test]
    fn a_connected_request_marks_up_at_once_despite_rise() {
        let h = health(3, 1);
        h.record_failure(failure(1));
        assert_eq!(h.state(), State::Down);
        h.record_connected();
        assert_eq!(h.state(), State::Up);
        h.record_failure(failure(2));
        assert_eq!(h.state(), State::Down);
    }

    /// Failures must be consecutive: one success between them starts over.
    #[test]
    fn a_success_resets_the_failure_streak() {
        let h = health(1, 2);
        h.record_success();
        h.record_failure(failure(1));
        h.record_success();
        h.record_failure(failure(2));
        assert_eq!(h.state(), State::Up);
    }
}
