//! Call-layer settings of a route: frame tracking, proxy pings, stalls.
//!
//! Globals come from `--frames`, `--ping-interval`, `--ping-timeout`,
//! `--stall-after` (or the config file's `frames`, `ping_interval`,
//! `ping_timeout`, `stall_after`); a route's own `frames`, `ping_interval`
//! and `ping_timeout` override them.

use std::time::Duration;

/// What the call layer does on one route's tunnels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallSpec {
    /// Follow WebSocket frames (`false`: a pure byte relay, no pings, no close codes).
    pub frames: bool,
    /// Ping a leg silent this long; `None` (`0`): no pings.
    pub ping_interval: Option<Duration>,
    /// A pinged leg silent this long is dead.
    pub ping_timeout: Duration,
    /// A streaming direction silent this long is stalled.
    pub stall_after: Duration,
}

impl Default for CallSpec {
    fn default() -> Self {
        CallSpec {
            frames: true,
            ping_interval: Some(Duration::from_secs(20)),
            ping_timeout: Duration::from_secs(10),
            stall_after: Duration::from_secs(2),
        }
    }
}
