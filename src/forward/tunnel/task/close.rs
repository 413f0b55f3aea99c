//! How shunt ends a call itself: why ([`Why`]), the code each leg is sent
//! ([`CloseCode`]), and the order.
//!
//! When frames are tracked, shunt sends each leg still open a Close at a
//! frame boundary (the downstream first), waits up to [`CLOSE_WAIT`] for the
//! boundary and then for the peer's Close, and closes TCP. A leg that is
//! gone gets nothing; an untracked call just ends.

use super::{Ending, Loss, Side, Tunnel, ms};
use crate::calls::{Framing, TO_DOWNSTREAM, TO_UPSTREAM};
use crate::forward::tunnel::control::CloseCode;
use crate::forward::tunnel::direction::{CloseState, Direction};
use crate::forward::tunnel::leg::Leg;
use crate::forward::tunnel::parts::CLOSE_WAIT;

/// Why shunt is closing a call itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Why {
    /// Shutdown began and the drain time ran out: 1012 (Service Restart: the
    /// client may reconnect) downstream, 1001 (Going Away) upstream.
    Drain,
    /// No byte either way for the idle timeout: 1001 to both legs.
    Idle,
    /// A leg ended without a Close, failed, or did not answer a Ping. The
    /// other leg is told (1014 Bad Gateway downstream when the upstream went,
    /// 1001 upstream when the downstream did); the lost leg gets nothing.
    Lost(Side, Loss),
}

impl Why {
    /// The code shunt sends into direction `d` (towards its destination
    /// leg); `None`: that leg is gone, write nothing more to it.
    pub(super) fn code(self, d: usize) -> Option<CloseCode> {
        match (self, d) {
            (Why::Drain, TO_DOWNSTREAM) => Some(CloseCode::ServiceRestart),
            (Why::Drain | Why::Idle, _) => Some(CloseCode::GoingAway),
            (Why::Lost(Side::Upstream, _), TO_DOWNSTREAM) => Some(CloseCode::BadGateway),
            (Why::Lost(Side::Downstream, _), TO_UPSTREAM) => Some(CloseCode::GoingAway),
            (Why::Lost(..), _) => None,
        }
    }

    /// The [`Ending`] the tunnel returns, and logs, once a close for this
    /// reason is complete (or given up).
    pub(super) fn ending(self) -> Ending {
        match self {
            Why::Drain => Ending::Drained,
            Why::Idle => Ending::Idle,
            Why::Lost(side, loss) => Ending::Lost(side, loss),
        }
    }
}

impl<D: Leg, U: Leg> Tunnel<D, U> {
    /// Leg `side` is gone (end without a Close, an error, a ping timeout).
    /// Returns the ending if the tunnel ends at once.
    pub(super) fn leg_lost(&mut self, side: Side, loss: Loss) -> Option<Ending> {
        let l = side.index();
        self.gone[l] = true;
        // Nothing more is written to it.
        self.dirs[1 - l].drop_output();
        if self.closing.is_some() {
            return None;
        }
        self.begin_close(Why::Lost(side, loss))
    }

    /// Start closing the call with shunt's codes; the ending if there is
    /// nothing to send (frames untracked or opaque).
    pub(super) fn begin_close(&mut self, why: Why) -> Option<Ending> {
        if !self.dirs.iter().any(Direction::can_inject) {
            return Some(why.ending());
        }
        self.closing = Some(why);
        self.close_at = Some(self.now_ms().saturating_add(ms(CLOSE_WAIT)));
        self.advance_close();
        if self.close_complete() {
            return Some(why.ending());
        }
        None
    }

    /// Ask each direction for shunt's Close in turn: the downstream's first, so
    /// that the upstream's answer to its own Close cannot reach the downstream
    /// before shunt's. Returns whether anything was asked.
    pub(super) fn advance_close(&mut self) -> bool {
        let Some(why) = self.closing else {
            return false;
        };
        let mut asked = false;
        for d in [TO_DOWNSTREAM, TO_UPSTREAM] {
            if self.requested[d] {
                continue;
            }
            let waiting = d == TO_UPSTREAM
                && matches!(
                    self.dirs[TO_DOWNSTREAM].close_state(),
                    CloseState::Pending(_)
                );
            if waiting {
                continue;
            }
            self.requested[d] = true;
            asked = true;
            match why.code(d) {
                Some(code) if !self.gone[1 - d] => self.dirs[d].request_close(code),
                _ => self.dirs[d].drop_output(),
            }
            if !self.done[d] {
                continue;
            }
            // The direction had ended: nothing more can go through it.
            self.dirs[d].skip_close();
        }
        asked
    }

    /// Every leg has had shunt's Close answered, or gets none.
    pub(super) fn close_complete(&self) -> bool {
        (0..2).all(|l| {
            let out = 1 - l;
            if !self.requested[out] {
                return false;
            }
            match self.dirs[out].close_state() {
                CloseState::Pending(_) => false,
                CloseState::Sent => self.dirs[l].close_seen() || self.done[l] || self.gone[l],
                CloseState::None | CloseState::Skipped => true,
            }
        })
    }

    /// The endpoints have closed the WebSocket (a Close each way, both
    /// passed on): TCP can close now, as the server would close it.
    pub(super) fn handshake_done(&self) -> bool {
        self.dirs
            .iter()
            .all(|d| d.framing() == Framing::Tracked && d.close_seen() && d.flushed())
    }
}
