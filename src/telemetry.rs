//! Logging setup: pretty or JSON lines, filtered by `RUST_LOG` (default `info`).
//!
//! Access-log lines come from [`crate::proxy`] under the target `shunt::access`
//! with the fields `peer method path status route upstream websocket ms`.
//!
//! Lines go to stderr, where a container runtime collects them. JSON lines
//! carry the same fields as flat keys (no nested `fields` object), so a log
//! collector can index `route` and `upstream` directly.
//!
//! Pretty lines are coloured only when stderr is a terminal and `NO_COLOR` is
//! unset or empty (<https://no-color.org>): a file or journald gets no ANSI codes.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Install the global subscriber; later calls are ignored.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour(
            std::io::stderr().is_terminal(),
            std::env::var_os("NO_COLOR"),
        ));
    let _ = match format {
        LogFormat::Pretty => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Whether to colour: on a terminal, unless `NO_COLOR` is set to something.
fn colour(terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::colour;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour(true, None));
        assert!(colour(true, Some("".into())));
        assert!(!colour(true, Some("1".into())));
        assert!(!colour(false, None));
    }
}
