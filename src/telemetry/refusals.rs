//! Refusal lines, rate-limited: at most one line per reason per second.
//!
//! A connection refused at accept, a TLS handshake that fails, a request
//! head that never arrives or does not parse: each is worth a line, but a
//! flood of them (a scanner, a misconfigured balancer, 500 refusals in
//! 40 ms) would write one line each, fill the bounded log queue and push out
//! the access lines that matter. So the first event of a reason is logged at
//! once, with its peer; the rest of that second are counted, and when the
//! second ends one summary line says how many were not logged
//! (`suppressed=N`). A flood that goes on gives one summary a second; a
//! second without events lets the reason fall quiet again.
//!
//! The counting is a pure state machine ([`Limiter`]) over explicit
//! instants; [`flush`] is the task that writes the summaries when a
//! second ends, started once by [`crate::app`] and woken only when
//! something was suppressed.

use std::fmt::Display;
use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long one reason's window lasts: at most one line per reason per window.
pub(crate) const WINDOW: Duration = Duration::from_secs(1);

/// Why a connection was refused or closed before it carried a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    /// Refused at accept by the IP allow/deny lists.
    AcceptIp,
    /// Refused at accept by a connection limit (`--max-conns`, per IP).
    AcceptLimit,
    /// The TLS handshake failed or timed out.
    TlsHandshake,
    /// No complete request head within `--header-timeout`.
    HeaderTimeout,
    /// A request head that does not parse or is too large.
    MalformedRequest,
    /// PROXY protocol is on and the source is not in `trusted_proxies`
    /// (nor `proxy_protocol_optional_from`): closed without reading.
    ProxyUntrusted,
    /// A trusted proxy's connection that does not start with a PROXY header.
    ProxyMissing,
    /// A PROXY header that is malformed, too long, of the wrong version or unfinished.
    ProxyMalformed,
}

impl Reason {
    /// Every reason, in the order of [`Limiter`]'s slots.
    pub(crate) const ALL: [Reason; 8] = [
        Reason::AcceptIp,
        Reason::AcceptLimit,
        Reason::TlsHandshake,
        Reason::HeaderTimeout,
        Reason::MalformedRequest,
        Reason::ProxyUntrusted,
        Reason::ProxyMissing,
        Reason::ProxyMalformed,
    ];

    /// The `reason` field of the log line.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Reason::AcceptIp => "ip",
            Reason::AcceptLimit => "limit",
            Reason::TlsHandshake => "tls_handshake",
            Reason::HeaderTimeout => "header_timeout",
            Reason::MalformedRequest => "malformed_request",
            Reason::ProxyUntrusted => "proxy_untrusted",
            Reason::ProxyMissing => "proxy_missing",
            Reason::ProxyMalformed => "proxy_malformed",
        }
    }

    /// The log line's message.
    fn message(self) -> &'static str {
        match self {
            Reason::AcceptIp | Reason::AcceptLimit => "connection refused at accept",
            Reason::TlsHandshake => "TLS connection refused",
            Reason::HeaderTimeout => "closed a connection that did not send a request head in time",
            Reason::MalformedRequest => "closed a connection after a malformed request",
            Reason::ProxyUntrusted => {
                "connection refused: PROXY protocol is on and the source is not in trusted_proxies"
            }
            Reason::ProxyMissing => {
                "connection refused: a trusted proxy sent no PROXY protocol header (is the balancer configured to send one?)"
            }
            Reason::ProxyMalformed => "connection refused: broken PROXY protocol header",
        }
    }

    /// The slot index of this reason.
    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// One reason's window: when it started (`None`: quiet) and what it held back.
#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    since: Option<Instant>,
    suppressed: u64,
}

/// What [`Limiter::event`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Write the line; `suppressed` events of the previous window were not
    /// yet reported (no summary ran) and go in this line.
    Log {
        /// Events held back before this one and not yet reported.
        suppressed: u64,
    },
    /// Counted, not written; a summary reports it when the window ends.
    Suppressed,
}

/// The per-reason windows: a pure state machine over explicit instants.
#[derive(Debug, Default)]
pub(crate) struct Limiter {
    slots: [Slot; Reason::ALL.len()],
}

impl Limiter {
    /// An event of `reason` at `now`: log it, or count it.
    pub(crate) fn event(&mut self, reason: Reason, now: Instant) -> Decision {
        let slot = &mut self.slots[reason.index()];
        match slot.since {
            Some(since) if now < since + WINDOW => {
                slot.suppressed += 1;
                Decision::Suppressed
            }
            _ => {
                let suppressed = std::mem::take(&mut slot.suppressed);
                slot.since = Some(now);
                Decision::Log { suppressed }
            }
        }
    }

    /// The summaries due at `now`: each reason whose window has ended with
    /// events held back, and how many. Its next window starts where the
    /// last one ended (the summary is that window's line); a window that
    /// ends with nothing held back leaves the reason quiet.
    pub(crate) fn due(&mut self, now: Instant) -> Vec<(Reason, u64)> {
        let mut out = Vec::new();
        for reason in Reason::ALL {
            let slot = &mut self.slots[reason.index()];
            let Some(since) = slot.since else { continue };
            if now < since + WINDOW {
                continue;
            }
            if slot.suppressed > 0 {
                out.push((reason, std::mem::take(&mut slot.suppressed)));
                slot.since = Some(since + WINDOW);
            } else {
                slot.since = None;
            }
        }
        out
    }

    /// When the earliest open window with events held back ends, if any.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.slots
            .iter()
            .filter(|s| s.suppressed > 0)
            .filter_map(|s| s.since)
            .map(|since| since + WINDOW)
            .min()
    }
}

/// The process's limiter: refusals come from every worker thread.
static LIMITER: Mutex<Limiter> = Mutex::new(Limiter {
    slots: [Slot {
        since: None,
        suppressed: 0,
    }; Reason::ALL.len()],
});

/// The log target of these lines: the accept stage's, where they always came from.
const TARGET: &str = "shunt::connection";

/// Wakes [`flush`] when an event was held back.
static HELD_BACK: Notify = Notify::const_new();

/// Log a refusal of `peer` for `reason` with its `detail`, or count it.
pub(crate) fn refused(reason: Reason, peer: SocketAddr, detail: &dyn Display) {
    let decision = LIMITER
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .event(reason, Instant::now());
    match decision {
        Decision::Log { suppressed: 0 } => write_line(reason, peer, detail),
        Decision::Log { suppressed } => {
            write_summary(reason, suppressed);
            write_line(reason, peer, detail);
        }
        Decision::Suppressed => HELD_BACK.notify_one(),
    }
}

/// The line for one refusal, at the level each reason always had.
fn write_line(reason: Reason, peer: SocketAddr, detail: &dyn Display) {
    let (r, message) = (reason.as_str(), reason.message());
    match reason {
        Reason::AcceptIp
        | Reason::AcceptLimit
        | Reason::ProxyUntrusted
        | Reason::ProxyMissing
        | Reason::ProxyMalformed => {
            tracing::warn!(target: TARGET, %peer, reason = %r, detail = %detail, "{message}");
        }
        Reason::TlsHandshake | Reason::MalformedRequest => {
            tracing::info!(target: TARGET, %peer, reason = %r, error = %detail, "{message}");
        }
        Reason::HeaderTimeout => tracing::info!(target: TARGET, %peer, reason = %r, "{message}"),
    }
}

/// The line for the refusals of one window that were counted, not written.
fn write_summary(reason: Reason, suppressed: u64) {
    let (r, message) = (reason.as_str(), reason.message());
    match reason {
        Reason::AcceptIp
        | Reason::AcceptLimit
        | Reason::ProxyUntrusted
        | Reason::ProxyMissing
        | Reason::ProxyMalformed => tracing::warn!(
            target: TARGET,
            reason = %r,
            suppressed,
            "{message}: {suppressed} more in the last second, not logged one by one"
        ),
        _ => tracing::info!(
            target: TARGET,
            reason = %r,
            suppressed,
            "{message}: {suppressed} more in the last second, not logged one by one"
        ),
    }
}

/// Write each window's summary when it ends, until `stop`; then the ones
/// still open, so no count is lost at exit. Idle (no timer) while nothing
/// is held back.
pub(crate) async fn flush(stop: CancellationToken) {
    loop {
        let next = LIMITER
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .next_due();
        let woke = match next {
            Some(at) => tokio::select! {
                () = tokio::time::sleep_until(at) => true,
                () = stop.cancelled() => false,
            },
            None => tokio::select! {
                () = HELD_BACK.notified() => true,
                () = stop.cancelled() => false,
            },
        };
        let now = if woke {
            Instant::now()
        } else {
            Instant::now() + WINDOW
        };
        let due = LIMITER
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .due(now);
        for (reason, suppressed) in due {
            write_summary(reason, suppressed);
        }
        if !woke {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_event_of_a_reason_is_logged_and_the_rest_of_its_second_counted() {
        let t0 = Instant::now();
        let mut l = Limiter::default();
        assert_eq!(
            l.event(Reason::AcceptIp, t0),
            Decision::Log { suppressed: 0 }
        );
        for i in 1..500 {
            let at = t0 + Duration::from_micros(80 * i);
            assert_eq!(l.event(Reason::AcceptIp, at), Decision::Suppressed);
        }
        // Another reason has its own window.
        assert_eq!(
            l.event(Reason::TlsHandshake, t0 + Duration::from_millis(10)),
            Decision::Log { suppressed: 0 }
        );
        assert_eq!(l.next_due(), Some(t0 + WINDOW));
        assert!(l.due(t0 + WINDOW - Duration::from_millis(1)).is_empty());
        assert_eq!(l.due(t0 + WINDOW), vec![(Reason::AcceptIp, 499)]);
        assert_eq!(l.next_due(), None);
    }

    #[test]
    fn a_flood_that_goes_on_gives_one_line_a_second() {
        let t0 = Instant::now();
        let mut l = Limiter::default();
        let mut lines = 0;
        // 10 events a millisecond for 3.5 s, summaries written when due.
        for ms in 0..3500u64 {
            let now = t0 + Duration::from_millis(ms);
            lines += l.due(now).len();
            for _ in 0..10 {
                if let Decision::Log { .. } = l.event(Reason::AcceptLimit, now) {
                    lines += 1;
                }
            }
        }
        // One line at 0 s, then a summary at 1, 2 and 3 s.
        assert_eq!(lines, 4);
    }

    #[test]
    fn a_quiet_window_lets_the_reason_log_at_once_again() {
        let t0 = Instant::now();
        let mut l = Limiter::default();
        assert!(matches!(
            l.event(Reason::HeaderTimeout, t0),
            Decision::Log { .. }
        ));
        assert!(l.due(t0 + WINDOW).is_empty(), "nothing held back");
        assert_eq!(
            l.event(
                Reason::HeaderTimeout,
                t0 + WINDOW + Duration::from_millis(1)
            ),
            Decision::Log { suppressed: 0 }
        );
    }

    #[test]
    fn counts_no_summary_reported_go_in_the_next_line() {
        let t0 = Instant::now();
        let mut l = Limiter::default();
        l.event(Reason::MalformedRequest, t0);
        l.event(Reason::MalformedRequest, t0 + Duration::from_millis(1));
        l.event(Reason::MalformedRequest, t0 + Duration::from_millis(2));
        // No summary ran (no flush task): the next line carries the count.
        assert_eq!(
            l.event(Reason::MalformedRequest, t0 + 2 * WINDOW),
            Decision::Log { suppressed: 2 }
        );
    }
}
