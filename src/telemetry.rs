//! Logging setup: pretty or JSON lines, filtered by `RUST_LOG` (default `info`).
//!
//! Access-log lines come from [`crate::proxy`] under the target `shunt::access`
//! with the fields `peer method path status route upstream websocket ms`.
//!
//! Lines go to stderr, where a container runtime collects them. JSON lines
//! carry the same fields as flat keys (no nested `fields` object), so a log
//! collector can index `route` and `upstream` directly.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Install the global subscriber; later calls are ignored.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Pretty => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
