//! The forward stage's error: what went wrong after an upstream connection
//! was made.
//!
//! It lives with the stage that produces it, as every stage's error does;
//! [`crate::response`] imports it to map each variant to a status code, and
//! the caller reads it to record what the exchange meant for the upstream's
//! health (a timeout, an upgrade it did not forward). Each variant says
//! whose fault it is. A cause is kept as `#[source]` and never repeated in
//! the variant's own message: whoever reports the error prints the chain.

use std::time::Duration;

use http::StatusCode;

use super::handshake::HandshakeError;
use crate::config::UpstreamName;
use crate::dial::ConnectError;

/// What went wrong after an upstream connection was made.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// Upstream's: the connection failed while talking HTTP.
    #[error("upstream {upstream} failed")]
    Protocol {
        /// The upstream's name.
        upstream: UpstreamName,
        /// What hyper saw.
        #[source]
        source: hyper::Error,
    },
    /// Downstream's: the request body could not be read (bad chunking, cut short).
    #[error("the request body is malformed or was cut short")]
    DownstreamBody {
        /// What hyper saw.
        #[source]
        source: hyper::Error,
    },
    /// Upstream's: no response head within the response timeout.
    #[error("upstream {upstream} did not answer within {after:?}")]
    Timeout {
        /// The upstream's name.
        upstream: UpstreamName,
        /// The response timeout that ran out.
        after: Duration,
    },
    /// Upstream's, for WebSocket only: the upgrade was answered, but not
    /// with 101 or a 4xx (see [`UpgradeNotForwarded`]).
    #[error(transparent)]
    UpgradeNotForwarded(#[from] UpgradeNotForwarded),
    /// Upstream's, for WebSocket only: its answer to the handshake could not be read.
    #[error("upstream {upstream}")]
    Handshake {
        /// The upstream's name.
        upstream: UpstreamName,
        /// What went wrong.
        #[source]
        source: HandshakeError,
    },
    /// A pooled connection had closed and a new one could not be made.
    #[error("upstream {upstream}")]
    Reconnect {
        /// The upstream's name.
        upstream: UpstreamName,
        /// Why the new connection failed.
        #[source]
        source: ConnectError,
    },
}

/// Upstream's, for WebSocket only: a WebSocket upgrade answered with a 2xx,
/// 3xx or 5xx instead of 101. A 2xx or 3xx is typically an nginx without
/// the upgrade headers; a 5xx, one whose own backend failed
/// ([`upgrade_failure_cause`]). A 4xx is a deliberate refusal and relayed
/// as is.
///
/// Its own type, and cheap to clone, because it outlives the exchange: the
/// upstream's health keeps it as the reason of its WebSocket mark, which
/// `/status` and `/readyz` show. Its message starts `{upstream} answered
/// {status}`, which `shunt doctor` reads for its report's wording (the
/// diagnosis itself comes from the `x-shunt-error` code).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{upstream} answered {} to a WebSocket upgrade on {path}: {}",
    status.as_u16(),
    upgrade_failure_cause(*status)
)]
pub struct UpgradeNotForwarded {
    /// The upstream's name.
    pub upstream: UpstreamName,
    /// What it answered instead of 101.
    pub status: StatusCode,
    /// The path of the upgrade.
    pub path: String,
}

/// The likely cause of an upgrade answered with `status` (not 101, not a
/// 4xx), as the warning, `/readyz`'s `degraded` list and the 502 say it.
pub(crate) fn upgrade_failure_cause(status: StatusCode) -> &'static str {
    if status.is_server_error() {
        "it failed to serve it (a 5xx: the backend behind it is likely down or failing)"
    } else {
        "it does not forward upgrades (proxy_http_version 1.1, Upgrade/Connection headers)"
    }
}
