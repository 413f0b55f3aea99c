//! How a call ended: the leg names, why it ended ([`Ending`]), and the
//! call's end in `/status`, `/calls` and its one log line.

use std::io;
use std::sync::atomic::Ordering::Relaxed;

use super::Tunnel;
use crate::calls::{ClosedBy, TO_DOWNSTREAM, TO_UPSTREAM};
use crate::forward::tunnel::control::CloseCode;
use crate::forward::tunnel::direction::CloseState;
use crate::forward::tunnel::leg::Leg;

/// A tunnel leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    /// The downstream leg (the client that connected to shunt).
    Downstream,
    /// The upstream leg.
    Upstream,
}

impl Side {
    /// The leg's name in logs: `client` or `backend`, as in `/calls`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Side::Downstream => "client",
            Side::Upstream => "backend",
        }
    }

    /// The leg's index (0 downstream, 1 upstream), which is also the index of
    /// the direction its bytes come in on.
    pub(crate) fn index(self) -> usize {
        match self {
            Side::Downstream => 0,
            Side::Upstream => 1,
        }
    }

    /// The leg of index `i`.
    pub(crate) fn of(i: usize) -> Side {
        if i == 0 {
            Side::Downstream
        } else {
            Side::Upstream
        }
    }
}

/// How a leg was lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Loss {
    /// End of stream without a Close frame.
    Eof,
    /// A read or write failed (a reset, usually).
    Error(io::ErrorKind),
    /// No byte within the ping timeout after shunt's Ping.
    PingTimeout,
}

/// Why a tunnel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ending {
    /// Both sides closed.
    Closed,
    /// One side closed and the other did not follow within the linger.
    HalfClosedTimeout,
    /// No byte in either direction for the idle timeout.
    Idle,
    /// Shutdown's drain timeout ran out.
    Drained,
    /// A read or write failed (a reset, usually), frames untracked.
    Error(io::ErrorKind),
    /// A leg of a tracked call was lost; shunt told the other leg.
    Lost(Side, Loss),
}

impl<D: Leg, U: Leg> Tunnel<D, U> {
    /// Give pipes back, record the call's end, write its one log line.
    pub(super) fn finish(&mut self, ending: &Ending) {
        let pool = self.relay.pipes();
        for d in &mut self.dirs {
            d.give_back(pool);
        }
        let call = &self.call.call;
        let bytes = |d: usize| call.dirs[d].bytes.load(Relaxed);
        let frames = |d: usize| call.dirs[d].frames.load(Relaxed);
        self.guard
            .add_bytes(bytes(TO_UPSTREAM), bytes(TO_DOWNSTREAM));
        let (by, code, reason) = self.outcome(ending);
        self.call.record_end(by, code);
        let gap = |d: usize| {
            let g = call.dirs[d].largest_gap.load(Relaxed);
            (g > 0).then(|| f64::from(g - 1) / 1000.0)
        };
        let stalls: u32 = call.dirs.iter().map(|d| d.stalls.load(Relaxed)).sum();
        // A reattachable call: its reattaches, their total gap, the client
        // messages cut by a loss (absent on other routes).
        let reattach = call.reattach.as_ref().map(|r| {
            (
                r.count.load(Relaxed),
                r.gap_ms.load(Relaxed) as f64 / 1000.0,
                r.dropped_messages.load(Relaxed),
            )
        });
        tracing::info!(
            tunnel = call.id,
            route = call.route(),
            upstream = &*call.current_upstream(),
            peer = %call.client,
            // Milliseconds are the log's precision (not 2.9712608940000003).
            duration_s = call.started.elapsed().as_millis() as f64 / 1000.0,
            bytes_to_backend = bytes(TO_UPSTREAM),
            bytes_to_client = bytes(TO_DOWNSTREAM),
            frames_to_backend = frames(TO_UPSTREAM),
            frames_to_client = frames(TO_DOWNSTREAM),
            closed_by = by.as_str(),
            code = code.map_or_else(|| "none".to_owned(), |c| c.to_string()),
            reason = %reason,
            largest_gap_to_backend_s = gap(TO_UPSTREAM),
            largest_gap_to_client_s = gap(TO_DOWNSTREAM),
            stalls,
            reattached = reattach.map(|r| r.0),
            reattach_gap_s = reattach.map(|r| r.1),
            reattach_dropped_messages = reattach.map(|r| r.2),
            "call ended"
        );
    }

    /// Who closed the call, the close code seen or sent, and why.
    pub(super) fn outcome(&self, ending: &Ending) -> (ClosedBy, Option<u16>, String) {
        let by_leg = |l: usize| {
            if l == 0 {
                ClosedBy::Downstream
            } else {
                ClosedBy::Upstream
            }
        };
        // The code shunt sent: the downstream's if it got one, else the upstream's.
        let sent = [TO_DOWNSTREAM, TO_UPSTREAM].into_iter().find_map(|d| {
            (self.dirs[d].close_state() == CloseState::Sent)
                .then(|| self.closing.and_then(|w| w.code(d)))
                .flatten()
                .map(CloseCode::code)
        });
        match *ending {
            Ending::Closed | Ending::HalfClosedTimeout => {
                let reason = if *ending == Ending::Closed {
                    "closed by the endpoints"
                } else {
                    "half-closed, the other side did not follow"
                };
                match self.close_seen {
                    Some((d, code)) => (by_leg(usize::from(d)), code, reason.to_owned()),
                    None => {
                        let first = self.first_done.map_or(0, usize::from);
                        (by_leg(first), None, reason.to_owned())
                    }
                }
            }
            Ending::Idle => (ClosedBy::Shunt, sent, "idle timeout".to_owned()),
            Ending::Drained => (
                ClosedBy::Shunt,
                sent,
                "drain timeout at shutdown".to_owned(),
            ),
            Ending::Error(kind) => {
                let side = self.failed.unwrap_or(Side::Downstream);
                let by = by_leg(side.index());
                (by, None, format!("{} leg failed: {kind}", side.as_str()))
            }
            Ending::Lost(side, loss) => {
                let what = match loss {
                    Loss::Eof => "ended without a Close".to_owned(),
                    Loss::Error(kind) => format!("failed: {kind}"),
                    Loss::PingTimeout => "did not answer a ping".to_owned(),
                };
                let by = if loss == Loss::PingTimeout {
                    ClosedBy::Shunt
                } else {
                    by_leg(side.index())
                };
                (by, sent, format!("{} leg {what}", side.as_str()))
            }
        }
    }
}
