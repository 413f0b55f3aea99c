//! Why a tunnel ended, the timers that can end it, and what a tunnel holds
//! for its life besides its legs (its `/status` and `/calls` entries, its
//! policy slot).

use std::io;
use std::time::Duration;

use crate::calls::CallGuard;
use crate::policy::rate::TunnelSlot;
use crate::stats::TunnelGuard;

/// After one direction has closed, how long the other may go on.
pub const HALF_CLOSE_LINGER: Duration = Duration::from_secs(30);

/// How long shunt waits for a frame boundary before its Close, and then for
/// the peer's Close, before it closes TCP.
pub const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// A tunnel leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The downstream leg (the browser).
    Client,
    /// The upstream leg (the backend).
    Backend,
}

impl Side {
    /// `client` or `backend`.
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Backend => "backend",
        }
    }

    /// The leg's index (0 client, 1 backend), which is also the index of
    /// the direction its bytes come in on.
    pub fn index(self) -> usize {
        match self {
            Side::Client => 0,
            Side::Backend => 1,
        }
    }

    /// The leg of index `i`.
    pub fn of(i: usize) -> Side {
        if i == 0 { Side::Client } else { Side::Backend }
    }
}

/// How a leg was lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loss {
    /// End of stream without a Close frame.
    Eof,
    /// A read or write failed (a reset, usually).
    Error(io::ErrorKind),
    /// No byte within the ping timeout after shunt's Ping.
    PingTimeout,
}

/// Why a tunnel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
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

/// Timers of one tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TunnelTimers {
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
    /// Only the idle and drain timeouts (no pings): today's byte relay.
    pub fn relay(idle: Duration, drain: Duration) -> Self {
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
pub struct TunnelParts {
    /// Its place in `/status`.
    pub guard: TunnelGuard,
    /// Its place in `/calls`.
    pub call: CallGuard,
    /// The policy's per-client tunnel slot, released when the tunnel ends.
    pub slot: Option<TunnelSlot>,
    /// Its timers.
    pub timers: TunnelTimers,
}
