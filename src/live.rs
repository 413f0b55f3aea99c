//! The live, hot-swappable state: one immutable [`Snapshot`] behind `ArcSwap`.
//!
//! A request loads the snapshot once and uses it to the end, so a reload never
//! changes a request (or a tunnel) halfway. Building a snapshot loads and
//! checks everything that can fail (certificates, keys, upstream CA files)
//! before anything is swapped, and carries over the health record of every
//! upstream whose settings did not change, so a reload does not make healthy
//! upstreams flap to "unknown".
//!
//! What a snapshot holds is exactly what a reload may change: routes,
//! upstreams (with their pools and probe tasks), policy, timeouts and the
//! certificate set. What must outlive reloads (counters, the per-client
//! rate and connection gate, the tunnel relay) lives outside it.

use std::collections::BTreeMap;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::{Config, Scheme, Timeouts, UpstreamName};
use crate::router::{Route, Router};
use crate::shutdown::Shutdown;
use crate::tls::client::ClientTlsError;
use crate::tls::{CertError, CertSet};
use crate::upstream::Upstream;

/// Everything a request needs that a reload may change.
#[derive(Debug)]
pub struct Snapshot {
    /// Increases by one with every successful reload; 1 at start.
    generation: u64,
    /// Host and path → route, built from `config.routes`.
    router: Router,
    /// Every upstream by name, with its health and connection pool.
    upstreams: BTreeMap<UpstreamName, Arc<Upstream>>,
    /// The timeouts every new connection and request uses.
    timeouts: Timeouts,
    /// Largest request head a connection accepts.
    max_header_bytes: usize,
    /// Certificates of the TLS listener, if TLS is configured.
    certs: Option<Arc<CertSet>>,
    /// The CA of client certificates (`[tls] client_ca`), read from its file.
    client_ca: Option<Arc<rustls::RootCertStore>>,
    /// The configuration it was built from.
    config: Arc<Config>,
}

/// Why a snapshot could not be built from a valid config.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A certificate or key could not be loaded.
    #[error("certificate")]
    Cert(#[from] CertError),
    /// The client CA file could not be loaded.
    #[error(transparent)]
    ClientCa(#[from] crate::tls::client_auth::ClientCaError),
    /// An https upstream's client TLS could not be set up.
    #[error("upstream {upstream}")]
    UpstreamTls {
        /// The upstream concerned.
        upstream: UpstreamName,
        /// Why (a CA file, no system roots).
        #[source]
        source: ClientTlsError,
    },
}

impl Snapshot {
    /// Build from a validated config, reusing unchanged upstreams of `previous`.
    pub fn build(
        config: Config,
        previous: Option<&Snapshot>,
        shutdown: &Shutdown,
    ) -> Result<Snapshot, BuildError> {
        let certs = match &config.tls {
            Some(tls) => Some(crate::tls::load_cert_set(&tls.certs)?),
            None => None,
        };
        let client_ca = match config.tls.as_ref().and_then(|t| t.client_ca.as_ref()) {
            Some(path) => Some(crate::tls::client_auth::load_roots(path)?),
            None => None,
        };
        let used = |name: &UpstreamName| config.routes.iter().any(|r| r.via.contains(name));
        let mut upstreams = BTreeMap::new();
        for spec in &config.upstreams {
            let probed = used(&spec.name);
            let old = previous
                .and_then(|p| p.upstreams.get(&spec.name))
                .filter(|old| old.spec == *spec && old.probed == probed);
            let upstream = match old {
                // A plain upstream that did not change is kept whole, probe task included.
                Some(old) if spec.url.scheme == Scheme::Http => old.clone(),
                // An https one is rebuilt (its CA file may have changed) but
                // keeps its health and the WebSocket routes it learned.
                _ => Upstream::start(
                    spec.clone(),
                    probed,
                    old.map(|o| o.health.clone()),
                    old.map(|o| o.websocket_checks.clone()),
                    shutdown.token(),
                    shutdown.tracker(),
                )
                .map_err(|source| BuildError::UpstreamTls {
                    upstream: spec.name.clone(),
                    source,
                })?,
            };
            upstreams.insert(spec.name.clone(), upstream);
        }
        set_websocket_checks(&config, &upstreams);
        let routes = config
            .routes
            .iter()
            .map(|spec| {
                Arc::new(Route {
                    label: spec.label(),
                    // Validation guarantees every name resolves.
                    via: spec
                        .via
                        .iter()
                        .filter_map(|n| upstreams.get(n).cloned())
                        .collect(),
                    spec: spec.clone(),
                })
            })
            .collect();
        Ok(Snapshot {
            generation: previous.map_or(1, |p| p.generation + 1),
            router: Router::new(routes),
            upstreams,
            timeouts: config.timeouts,
            max_header_bytes: config.max_header_bytes,
            certs,
            client_ca,
            config: Arc::new(config),
        })
    }

    /// Increases by one with every successful reload; 1 at start.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Host and path → route.
    pub fn router(&self) -> &Router {
        &self.router
    }

    /// Every upstream by name, with its health and connection pool.
    pub fn upstreams(&self) -> &BTreeMap<UpstreamName, Arc<Upstream>> {
        &self.upstreams
    }

    /// The timeouts every new connection and request uses.
    pub fn timeouts(&self) -> &Timeouts {
        &self.timeouts
    }

    /// Largest request head a connection accepts.
    pub fn max_header_bytes(&self) -> usize {
        self.max_header_bytes
    }

    /// Certificates of the TLS listener, if TLS is configured.
    pub fn certs(&self) -> Option<&Arc<CertSet>> {
        self.certs.as_ref()
    }

    /// The client CA's trust anchors, if `[tls] client_ca` is set.
    pub(crate) fn client_ca(&self) -> Option<&Arc<rustls::RootCertStore>> {
        self.client_ca.as_ref()
    }

    /// The configuration it was built from.
    pub fn config(&self) -> &Arc<Config> {
        &self.config
    }
}

/// Tell each upstream which routes through it to WebSocket-check: those
/// declared `websocket = true` from the start (on the route's path); what
/// it learned from 101s stays for the routes that still go through it.
/// Runs once nothing else in the build can fail, since a kept upstream is
/// shared with the snapshot still serving.
fn set_websocket_checks(config: &Config, upstreams: &BTreeMap<UpstreamName, Arc<Upstream>>) {
    for (name, upstream) in upstreams {
        let through = || config.routes.iter().filter(move |r| r.via.contains(name));
        let declared: Vec<(String, String)> = through()
            .filter(|r| r.websocket)
            .map(|r| (r.label(), r.path.clone()))
            .collect();
        let labels: Vec<String> = through().map(|r| r.label()).collect();
        upstream.websocket_checks.configure(&declared, &labels);
    }
}

/// The current snapshot; cheap to load from any task.
pub(crate) type Live = ArcSwap<Snapshot>;
