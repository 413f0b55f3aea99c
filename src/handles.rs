//! The handles every connection shares, one per role, passed down the flow explicitly.
//!
//! - [`Shutdown`] (its own leaf module, so a stage that takes it imports
//!   nothing else of this one): the root `CancellationToken` (cancelled at shutdown) and
//!   the `TaskTracker` of every spawned task, so shutdown can wait for them.
//! - [`Live`]: the hot-swappable snapshot (router, upstreams, policy, timeouts).
//! - The counters ([`Stats`], with the live calls): they outlive reloads.
//! - The policy's per-client [`Gate`] (rates, connection caps), kept across reloads.
//! - The listener's certificate store, the JWKS URL's keys ([`Jwks`]) and the start time.
//!
//! [`Handles`] holds one of each for the wiring (`app`, `admin`, `reload`,
//! `watch`); a stage is given only the handles it uses, so `forward` gets
//! [`Shutdown`] and the counters and cannot reach the router or the
//! upstreams. Nothing here calls back into the flow.
//!
//! Why explicit handles rather than globals: every test starts its own
//! shunt in-process, on its own ports, and several run at once; with the
//! handles threaded explicitly, each instance shuts down only its own tasks
//! and counts only its own traffic.
//!
//! The module is called `handles`, not `runtime`, so that it is never read
//! as one of tokio's runtimes (which `workers` builds one per core).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crate::acme::AcmeStatus;
use crate::jwks::Jwks;
use crate::live::Live;
use crate::policy::rate::Gate;
use crate::shutdown::Shutdown;
use crate::stats::Stats;
use crate::tls::CertStore;
use crate::tls::client_auth::ClientAuth;

/// One handle per role, shared by every listener, connection and request.
#[derive(Debug)]
pub struct Handles {
    live: Live,
    stats: Arc<Stats>,
    gate: Arc<Gate>,
    shutdown: Shutdown,
    started: Instant,
    certs: Option<Arc<CertStore>>,
    client_auth: Option<Arc<ClientAuth>>,
    jwks: Arc<Jwks>,
    acme: Option<Arc<AcmeStatus>>,
    draining: AtomicBool,
}

impl Handles {
    /// Wrap a first snapshot.
    pub fn new(
        live: Live,
        certs: Option<Arc<CertStore>>,
        client_auth: Option<Arc<ClientAuth>>,
        acme: Option<Arc<AcmeStatus>>,
        shutdown: Shutdown,
    ) -> Arc<Self> {
        Arc::new(Handles {
            live,
            stats: Arc::default(),
            gate: Arc::default(),
            shutdown,
            started: Instant::now(),
            certs,
            client_auth,
            jwks: Arc::default(),
            acme,
            draining: AtomicBool::new(false),
        })
    }

    /// The hot-swappable snapshot (routes, upstreams, policy, timeouts).
    pub fn live(&self) -> &Live {
        &self.live
    }

    /// Counters for `/status` and `/metrics`, with the live calls; they outlive reloads.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Per-client rate and connection counters; outlives reloads.
    pub fn gate(&self) -> &Arc<Gate> {
        &self.gate
    }

    /// The root token and the task tracker.
    pub fn shutdown(&self) -> &Shutdown {
        &self.shutdown
    }

    /// When the process started (`uptime_secs`).
    pub fn started(&self) -> Instant {
        self.started
    }

    /// What the ACME task reports; `None` without `[acme]`.
    pub fn acme(&self) -> Option<&Arc<AcmeStatus>> {
        self.acme.as_ref()
    }

    /// The listener's certificate store (file and ACME certificates), if TLS is on.
    pub fn certs(&self) -> Option<&Arc<CertStore>> {
        self.certs.as_ref()
    }

    /// The listener's client-certificate verifier (`[tls] client_ca`), if any.
    pub(crate) fn client_auth(&self) -> Option<&Arc<ClientAuth>> {
        self.client_auth.as_ref()
    }

    /// The keys of the JWKS URL and their fetch state; outlive reloads.
    pub(crate) fn jwks(&self) -> &Arc<Jwks> {
        &self.jwks
    }

    /// Start the JWKS fetcher ([`crate::jwks::run`]) on the tracker when the
    /// live configuration names a JWKS URL and no fetcher runs: at start, and
    /// after a reload that adds the URL. It reads the URL and timeouts from
    /// the live snapshot before each fetch.
    pub(crate) fn start_jwks_fetcher(self: &Arc<Self>) {
        if self.live.load().config().policy.jwks.is_none() || !self.jwks.claim_fetcher() {
            return;
        }
        let handles = self.clone();
        let settings = move || {
            let snapshot = handles.live().load();
            crate::jwks::Settings {
                jwks: snapshot.config().policy.jwks.clone(),
                connect_timeout: snapshot.timeouts().connect,
                response_timeout: snapshot.timeouts().response,
            }
        };
        self.shutdown.tracker().spawn(crate::jwks::run(
            self.jwks.clone(),
            settings,
            self.shutdown.clone(),
        ));
    }

    /// Mark the process as draining (readiness turns 503) and cancel the root token.
    pub fn begin_shutdown(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.shutdown.token().cancel();
    }

    /// Whether shutdown has begun.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst) || self.shutdown.token().is_cancelled()
    }
}
