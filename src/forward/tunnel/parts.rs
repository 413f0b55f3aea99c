//! What a tunnel holds for its life besides its legs (its `/status` and
//! `/calls` entries, its policy slot), and the timers that can end it.

use std::time::Duration;

use crate::calls::CallGuard;
use crate::policy::rate::TunnelSlot;
use crate::stats::TunnelGuard;

/// After one direction has closed, how long the other may go on.
pub(super) const HALF_CLOSE_LINGER: Duration = Duration::from_secs(30);

/// How long shunt waits for a frame boundary before its Close, and then for
/// the peer's Close, before it closes TCP.
pub(super) const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// Timers of one tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TunnelTimers {
    /// Close after this long without a byte either way.
    pub idle: Duration,
    /// After shutdown begins, close after this long.
    pub drain: Duration,
    /// After one direction has closed, close the other after this long.
    pub linger: Duration,
    /// Ping a leg silent for this long; `None`: no pings.
    pub ping_interval: Option<Duration>,
    /// A pinged leg silent for this long is dead.
    pub ping_timeout: Duration,
    /// A streaming direction silent this long is stalled.
    pub stall_after: Duration,
}

impl TunnelTimers {
    /// Only the idle and drain timeouts, no pings: a plain byte relay.
    pub(crate) fn relay(idle: Duration, drain: Duration) -> Self {
        TunnelTimers {
            idle,
            drain,
            linger: HALF_CLOSE_LINGER,
            ping_interval: None,
            ping_timeout: Duration::from_secs(10),
            stall_after: Duration::from_secs(2),
        }
    }
}

/// What one tunnel holds for its life besides its legs.
#[derive(Debug)]
pub(crate) struct TunnelParts {
    /// Its place in `/status`.
    pub guard: TunnelGuard,
    /// Its place in `/calls`.
    pub call: CallGuard,
    /// The policy's per-client tunnel slot, released when the tunnel ends.
    pub slot: Option<TunnelSlot>,
    /// Its timers.
    pub timers: TunnelTimers,
    /// On a `backend_loss = "reattach"` route, a call that can be reattached:
    /// how to replace its backend leg.
    pub reattach: Option<Box<super::ReattachPlan>>,
}
