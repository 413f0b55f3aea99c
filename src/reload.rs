//! Reload: re-read the configuration, build a whole new snapshot, swap it in.
//!
//! All or nothing: a config that fails to read, parse or validate changes
//! nothing; the error is logged once and kept for `/status`. Triggers (SIGHUP,
//! `POST /reload`) all come here, one reload at a time. Settings that only a
//! restart can change (listen and admin addresses) are reported, not ignored.
//!
//! Why all or nothing: a half-applied configuration (new routes, old
//! certificates) is a state nobody wrote and nobody can test. The new
//! [`Snapshot`] is built completely, certificates and CA files included, and
//! only then stored with one `ArcSwap::store`; requests already running keep
//! the snapshot they loaded. The serializing lock makes two triggers at once
//! (a file change and a SIGHUP) two reloads in a row rather than a race.

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde_json::json;

use crate::config::{Config, ConfigError};
use crate::live::{BuildError, Snapshot};
use crate::runtime::Runtime;

/// Why a reload was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The new configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The new snapshot could not be built (a certificate, a CA file).
    #[error(transparent)]
    Build(#[from] BuildError),
}

/// Performs reloads and remembers how the last one went.
#[derive(Debug)]
pub struct Reloader {
    rt: Arc<Runtime>,
    /// Serializes reloads.
    busy: tokio::sync::Mutex<()>,
    last: Mutex<Option<LastReload>>,
}

#[derive(Debug, Clone)]
struct LastReload {
    at: SystemTime,
    trigger: String,
    error: Option<String>,
}

impl Reloader {
    /// A reloader for the runtime's live snapshot.
    pub fn new(rt: Arc<Runtime>) -> Arc<Self> {
        Arc::new(Reloader {
            rt,
            busy: tokio::sync::Mutex::new(()),
            last: Mutex::new(None),
        })
    }

    /// Reload now; `trigger` says why (for the log). Returns what changed.
    pub async fn reload(&self, trigger: &str) -> Result<serde_json::Value, ReloadError> {
        let _one_at_a_time = self.busy.lock().await;
        let result = self.try_reload();
        let error = result.as_ref().err().map(|e| crate::error_chain::chain(e));
        match &error {
            None => tracing::info!(trigger, "reload applied"),
            Some(e) => {
                tracing::error!(
                    trigger,
                    error = e.as_str(),
                    "reload failed; keeping the running configuration"
                )
            }
        }
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(LastReload {
            at: SystemTime::now(),
            trigger: trigger.to_owned(),
            error,
        });
        result
    }

    fn try_reload(&self) -> Result<serde_json::Value, ReloadError> {
        let old = self.rt.live.load_full();
        let config = old.config.reread()?;
        let mut restart_required = restart_only_changes(&old.config, &config);
        let new = Snapshot::build(config, Some(&old), &self.rt.shutdown, &self.rt.tracker)?;
        match (&self.rt.certs, &new.certs) {
            (Some(store), Some(set)) => {
                for warning in set.warnings() {
                    tracing::warn!("{warning}");
                }
                store.store(set.clone());
            }
            (None, None) => {}
            _ => restart_required.push("tls"),
        }
        // Once per field, after the TLS check has added its own.
        for field in &restart_required {
            tracing::warn!(
                field,
                "{field} changed in the configuration; it takes effect only after a restart"
            );
        }
        let report = json!({
            "ok": true,
            "generation": new.generation,
            "changed": diff(&old, &new),
            "restart_required": restart_required,
        });
        self.rt.live.store(Arc::new(new));
        Ok(report)
    }

    /// `{at, ok, trigger, error}` of the last reload, or null.
    pub fn last_json(&self) -> serde_json::Value {
        match &*self.last.lock().unwrap_or_else(|p| p.into_inner()) {
            None => serde_json::Value::Null,
            Some(l) => json!({
                "at": humantime::format_rfc3339_seconds(l.at).to_string(),
                "ok": l.error.is_none(),
                "trigger": l.trigger,
                "error": l.error,
            }),
        }
    }
}

/// Settings a running process cannot change: reported in the reload's
/// `restart_required` and warned about once each.
fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut fields = Vec::new();
    if old.listen != new.listen {
        fields.push("listen");
    }
    if old.admin != new.admin {
        fields.push("admin");
    }
    if old.log_format != new.log_format {
        fields.push("log_format");
    }
    fields
}

/// The certificates' fingerprints, to tell whether a reload changed them.
fn fingerprints(s: &Snapshot) -> Vec<String> {
    s.certs
        .iter()
        .flat_map(|set| set.certs())
        .map(|c| c.info.fingerprint.clone())
        .collect()
}

/// Which upstreams and routes a reload added, removed or changed.
fn diff(old: &Snapshot, new: &Snapshot) -> serde_json::Value {
    let names = |s: &Snapshot| s.upstreams.keys().map(|n| n.0.clone()).collect::<Vec<_>>();
    let added: Vec<_> = names(new)
        .into_iter()
        .filter(|n| !names(old).contains(n))
        .collect();
    let removed: Vec<_> = names(old)
        .into_iter()
        .filter(|n| !names(new).contains(n))
        .collect();
    let changed: Vec<_> = new
        .upstreams
        .iter()
        .filter(|(n, u)| old.upstreams.get(*n).is_some_and(|o| o.spec != u.spec))
        .map(|(n, _)| n.0.clone())
        .collect();
    let routes = |s: &Snapshot| s.config.routes.clone();
    json!({
        "upstreams_added": added,
        "upstreams_removed": removed,
        "upstreams_changed": changed,
        "routes_changed": routes(old) != routes(new),
        "timeouts_changed": old.timeouts != new.timeouts,
        "certificates_changed": fingerprints(old) != fingerprints(new),
    })
}
