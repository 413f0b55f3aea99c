//! Reload: re-read the configuration, build a whole new snapshot, swap it in.
//!
//! All or nothing: a config that fails to read, parse or validate changes
//! nothing; the error is logged once and kept for `/status`. Triggers (SIGHUP,
//! `POST /reload`, a changed file) all come here, one reload at a time, and
//! are counted for `/metrics`. Settings that only a restart can change
//! (listen and admin addresses, log format, TLS on or off) are compared with
//! what the process started with, so `/status` keeps reporting them until a
//! restart, whichever reload saw the change first.
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
use crate::handles::Handles;
use crate::live::{BuildError, Snapshot};

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
    handles: Arc<Handles>,
    /// Serializes reloads.
    busy: tokio::sync::Mutex<()>,
    last: Mutex<Option<LastReload>>,
    /// What the process runs with for the settings only a restart changes:
    /// a reload compares against these, not against the previous snapshot,
    /// so a pending restart stays reported until the process restarts.
    started: Started,
    /// Settings changed in the configuration that wait for a restart.
    pending: Mutex<Vec<&'static str>>,
    /// Reloads so far, by trigger kind and result.
    counts: Mutex<Vec<(Trigger, bool, u64)>>,
}

/// The restart-only settings the process started with.
#[derive(Debug, Clone, PartialEq)]
struct Started {
    listen: std::net::SocketAddr,
    admin: Option<std::net::SocketAddr>,
    log_format: crate::config::LogFormat,
    tls: bool,
    client_ca: bool,
    tls_groups: Vec<crate::tls::KxGroup>,
    tls_ticket_rotation: std::time::Duration,
    acme: Option<crate::config::AcmeSpec>,
    http_listen: Option<std::net::SocketAddr>,
    https_port: Option<u16>,
}

impl Started {
    /// `file_certs`: whether the snapshot has file certificates; TLS is on
    /// with them or with ACME.
    fn of(config: &Config, file_certs: bool) -> Self {
        Started {
            listen: config.listen,
            admin: config.admin,
            log_format: config.log_format,
            tls: file_certs || config.acme.is_some(),
            client_ca: config.tls.as_ref().is_some_and(|t| t.client_ca.is_some()),
            tls_groups: config.tls_groups.clone(),
            tls_ticket_rotation: config.tls_ticket_rotation,
            acme: config.acme.clone(),
            http_listen: config.http_listen,
            https_port: config.https_port,
        }
    }
}

/// What asked for a reload: the `trigger` label of `shunt_reloads_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// SIGHUP.
    Signal,
    /// `POST /reload` on the admin listener.
    Api,
    /// A watched file changed.
    File,
}

impl Trigger {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Signal => "signal",
            Trigger::Api => "api",
            Trigger::File => "file",
        }
    }
}

#[derive(Debug, Clone)]
struct LastReload {
    at: SystemTime,
    trigger: String,
    error: Option<String>,
}

impl Reloader {
    /// A reloader for the runtime's live snapshot.
    pub fn new(handles: Arc<Handles>) -> Arc<Self> {
        let started = Started::of(handles.live().load().config(), handles.certs().is_some());
        Arc::new(Reloader {
            handles,
            busy: tokio::sync::Mutex::new(()),
            last: Mutex::new(None),
            started,
            pending: Mutex::new(Vec::new()),
            counts: Mutex::new(Vec::new()),
        })
    }

    /// Reload now; `trigger` says why (for the log, e.g. the file that
    /// changed) and `kind` counts it. Returns what changed.
    pub async fn reload(
        &self,
        kind: Trigger,
        trigger: &str,
    ) -> Result<serde_json::Value, ReloadError> {
        let _one_at_a_time = self.busy.lock().await;
        let result = self.try_reload();
        let error = result.as_ref().err().map(|e| crate::error_chain::chain(e));
        match (&result, &error) {
            (Ok(report), _) => tracing::info!(
                trigger,
                changes = %Changes(&report["changed"]),
                "reload applied"
            ),
            (Err(_), Some(e)) => tracing::error!(
                trigger,
                error = e.as_str(),
                "reload failed; keeping the running configuration"
            ),
            (Err(_), None) => {}
        }
        self.count(kind, error.is_none());
        *lock(&self.last) = Some(LastReload {
            at: SystemTime::now(),
            trigger: trigger.to_owned(),
            error,
        });
        result
    }

    fn try_reload(&self) -> Result<serde_json::Value, ReloadError> {
        let old = self.handles.live().load_full();
        let config = old.config().reread()?;
        let new = Snapshot::build(config, Some(&old), self.handles.shutdown())?;
        if let (Some(store), Some(set)) = (self.handles.certs(), new.certs()) {
            for warning in set.warnings() {
                tracing::warn!("{warning}");
            }
            store.store(set.clone());
        }
        // The client CA file is re-read with the certificates; new handshakes use it.
        if let (Some(auth), Some(roots)) = (self.handles.client_auth(), new.client_ca())
            && let Err(e) = auth.store(roots.clone())
        {
            tracing::warn!(error = %e, "the client CA could not be used; the previous one stays");
        }
        let restart_required = restart_only_changes(
            &self.started,
            &Started::of(new.config(), new.certs().is_some()),
        );
        {
            let mut pending = lock(&self.pending);
            // Once per field, when it first differs from what the process runs with.
            for field in restart_required.iter().filter(|f| !pending.contains(f)) {
                tracing::warn!(
                    field,
                    "{field} changed in the configuration; it takes effect only after a restart"
                );
            }
            pending.clone_from(&restart_required);
        }
        let report = json!({
            "ok": true,
            "generation": new.generation(),
            "changed": diff(&old, &new),
            "restart_required": restart_required,
        });
        self.handles.live().store(Arc::new(new));
        // A JWKS URL named for the first time gets its fetcher now.
        self.handles.start_jwks_fetcher();
        Ok(report)
    }

    /// The settings changed in the configuration that take effect only
    /// after a restart: what `/status` shows as `restart_required`, kept
    /// until the process restarts (or the configuration changes them back).
    pub fn restart_required(&self) -> Vec<&'static str> {
        lock(&self.pending).clone()
    }

    fn count(&self, kind: Trigger, ok: bool) {
        let mut counts = lock(&self.counts);
        match counts.iter_mut().find(|(k, o, _)| *k == kind && *o == ok) {
            Some((_, _, n)) => *n += 1,
            None => counts.push((kind, ok, 1)),
        }
    }

    /// `shunt_reloads_total{result, trigger}` and `shunt_last_reload_success`
    /// (1 before any reload: the running configuration is the one that loaded).
    pub fn to_prometheus(&self, out: &mut String) {
        use std::fmt::Write;
        let _ = writeln!(
            out,
            "# HELP shunt_reloads_total Configuration reloads, by result (ok, failed) and trigger (signal, api, file).\n# TYPE shunt_reloads_total counter"
        );
        for (kind, ok, n) in lock(&self.counts).iter() {
            let result = if *ok { "ok" } else { "failed" };
            let _ = writeln!(
                out,
                "shunt_reloads_total{{result=\"{result}\",trigger=\"{}\"}} {n}",
                kind.as_str()
            );
        }
        let success = lock(&self.last).as_ref().is_none_or(|l| l.error.is_none());
        let _ = writeln!(
            out,
            "# HELP shunt_last_reload_success Whether the last reload was applied (1) or failed (0); 1 before any.\n# TYPE shunt_last_reload_success gauge\nshunt_last_reload_success {}",
            u8::from(success)
        );
    }

    /// `{at, ok, trigger, error}` of the last reload, or null.
    pub fn last_json(&self) -> serde_json::Value {
        match &*lock(&self.last) {
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

/// A lock that survives a panic elsewhere: the data are counters and lists.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Settings a running process cannot change, where the configuration now
/// differs from what the process started with.
fn restart_only_changes(running: &Started, new: &Started) -> Vec<&'static str> {
    let mut fields = Vec::new();
    if running.listen != new.listen {
        fields.push("listen");
    }
    if running.admin != new.admin {
        fields.push("admin");
    }
    if running.log_format != new.log_format {
        fields.push("log_format");
    }
    if running.tls != new.tls {
        fields.push("tls");
    }
    if running.client_ca != new.client_ca {
        fields.push("tls.client_ca");
    }
    if running.tls_groups != new.tls_groups {
        fields.push("tls_groups");
    }
    if running.tls_ticket_rotation != new.tls_ticket_rotation {
        fields.push("tls_ticket_rotation");
    }
    if running.acme != new.acme {
        fields.push("acme");
    }
    if running.http_listen != new.http_listen {
        fields.push("http_listen");
    }
    if running.https_port != new.https_port {
        fields.push("https_port");
    }
    fields
}

/// A reload's `changed` report as one short phrase for the log line:
/// `routes added /a; upstreams changed nginx; certificates`, or `nothing`.
struct Changes<'a>(&'a serde_json::Value);

impl std::fmt::Display for Changes<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = self.0;
        let mut parts = Vec::new();
        for (key, what) in [
            ("routes_added", "routes added"),
            ("routes_removed", "routes removed"),
            ("routes_modified", "routes changed"),
            ("upstreams_added", "upstreams added"),
            ("upstreams_removed", "upstreams removed"),
            ("upstreams_changed", "upstreams changed"),
        ] {
            let names: Vec<&str> = c[key]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(serde_json::Value::as_str)
                .collect();
            if !names.is_empty() {
                parts.push(format!("{what} {}", names.join(", ")));
            }
        }
        for (key, what) in [
            ("certificates_changed", "certificates"),
            ("policy_changed", "policy"),
            ("timeouts_changed", "timeouts"),
        ] {
            if c[key].as_bool() == Some(true) {
                parts.push(what.to_owned());
            }
        }
        if parts.is_empty() {
            f.write_str("nothing")
        } else {
            f.write_str(&parts.join("; "))
        }
    }
}

/// The certificates' fingerprints, to tell whether a reload changed them.
fn fingerprints(s: &Snapshot) -> Vec<String> {
    s.certs()
        .into_iter()
        .flat_map(|set| set.certs())
        .map(|c| c.info.fingerprint.clone())
        .collect()
}

/// Whether the global IP lists, token sources or limits changed (a route's
/// own policy is part of its route; credentials are re-read from their files
/// on every reload and are not compared).
fn policy_changed(old: &crate::config::GlobalPolicy, new: &crate::config::GlobalPolicy) -> bool {
    old.ip != new.ip || old.sources != new.sources || old.limits != new.limits
}

/// Which upstreams and routes a reload added, removed or changed.
fn diff(old: &Snapshot, new: &Snapshot) -> serde_json::Value {
    let names = |s: &Snapshot| {
        s.upstreams()
            .keys()
            .map(|n| n.0.clone())
            .collect::<Vec<_>>()
    };
    let added: Vec<_> = names(new)
        .into_iter()
        .filter(|n| !names(old).contains(n))
        .collect();
    let removed: Vec<_> = names(old)
        .into_iter()
        .filter(|n| !names(new).contains(n))
        .collect();
    let changed: Vec<_> = new
        .upstreams()
        .iter()
        .filter(|(n, u)| old.upstreams().get(*n).is_some_and(|o| o.spec != u.spec))
        .map(|(n, _)| n.0.clone())
        .collect();
    let (old_routes, new_routes) = (&old.config().routes, &new.config().routes);
    let find = |routes: &[crate::config::RouteSpec], label: &str| {
        routes.iter().find(|r| r.label() == label).cloned()
    };
    let routes_added: Vec<String> = new_routes
        .iter()
        .filter(|r| find(old_routes, &r.label()).is_none())
        .map(crate::config::RouteSpec::label)
        .collect();
    let routes_removed: Vec<String> = old_routes
        .iter()
        .filter(|r| find(new_routes, &r.label()).is_none())
        .map(crate::config::RouteSpec::label)
        .collect();
    let routes_modified: Vec<String> = new_routes
        .iter()
        .filter(|r| find(old_routes, &r.label()).is_some_and(|o| o != **r))
        .map(crate::config::RouteSpec::label)
        .collect();
    json!({
        "upstreams_added": added,
        "upstreams_removed": removed,
        "upstreams_changed": changed,
        "routes_changed": old_routes != new_routes,
        "routes_added": routes_added,
        "routes_removed": routes_removed,
        "routes_modified": routes_modified,
        "policy_changed": policy_changed(&old.config().policy, &new.config().policy),
        "timeouts_changed": old.timeouts() != new.timeouts(),
        "certificates_changed": fingerprints(old) != fingerprints(new),
    })
}
