//! The relay mode: how this process joins tunnels, chosen once at start.
//! Splice between plain TCP legs (with the pipe pool), or copy through the
//! per-thread buffer only. A tunnel with a TLS leg always copies.

use crate::config::{TunnelMode, TunnelSettings};

use super::pipes::{self, PipePool};

/// How this process joins tunnels, chosen once at start.
#[derive(Debug)]
pub(crate) struct Relay {
    /// `Some` when plain-TCP tunnels are spliced.
    pipes: Option<PipePool>,
}

impl Relay {
    /// Choose the path for `settings` (probing splice once) and log the choice.
    pub(crate) fn start(settings: &TunnelSettings) -> Relay {
        let splice = match settings.mode {
            TunnelMode::Copy => {
                tracing::info!("tunnels: buffered copy (--tunnel-mode copy)");
                false
            }
            TunnelMode::Auto | TunnelMode::Splice => match pipes::available() {
                Ok(()) => {
                    tracing::info!(
                        pipe_size = settings.pipe_size,
                        max_pipes = settings.max_pipes,
                        "tunnels: splice(2) between plain TCP legs, buffered copy otherwise"
                    );
                    true
                }
                Err(e) => {
                    tracing::warn!(error = %e, "tunnels: splice(2) is unavailable; using buffered copy");
                    false
                }
            },
        };
        Relay {
            pipes: splice.then(|| PipePool::new(settings.pipe_size, settings.max_pipes)),
        }
    }

    /// The pipe pool, if splicing.
    pub(crate) fn pipes(&self) -> Option<&PipePool> {
        self.pipes.as_ref()
    }

    /// `{"mode": .., "pipes_in_use": .., "pipes_open": .., "pool_exhausted": ..}` for `/status`.
    pub(crate) fn to_json(&self) -> serde_json::Value {
        match &self.pipes {
            Some(p) => serde_json::json!({
                "mode": "splice",
                "pipes_in_use": p.in_use(),
                "pipes_open": p.open(),
                "pool_exhausted": p.exhausted(),
            }),
            None => serde_json::json!({"mode": "copy", "pipes_in_use": 0, "pipes_open": 0}),
        }
    }
}
