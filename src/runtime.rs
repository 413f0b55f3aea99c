//! The handles every connection shares, passed down the flow explicitly.
//!
//! One root `CancellationToken` (cancelled at shutdown) and one `TaskTracker`
//! (every spawned task, so shutdown can wait for them), the live snapshot and
//! the counters (including the policy's per-client [`Gate`], kept across reloads). Nothing here calls back into the flow.
//!
//! Why a struct passed down rather than globals: every test starts its own
//! shunt in-process, on its own ports, and several run at once; with the
//! handles threaded explicitly, each instance shuts down only its own tasks
//! and counts only its own traffic.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::live::Live;
use crate::policy::rate::Gate;
use crate::stats::Stats;
use crate::tls::CertStore;

/// Shared by every listener, connection, request and tunnel.
#[derive(Debug)]
pub struct Runtime {
    /// The hot-swappable snapshot (routes, upstreams, policy, timeouts).
    pub live: Live,
    /// Counters for `/status` and `/metrics`; outlive reloads.
    pub stats: Arc<Stats>,
    /// Per-client rate and connection counters; outlives reloads.
    pub gate: Arc<Gate>,
    /// Cancelled when shutdown begins.
    pub shutdown: CancellationToken,
    /// Every spawned task, so shutdown can wait for them all.
    pub tracker: TaskTracker,
    /// When the process started (`uptime_secs`).
    pub started: Instant,
    /// Certificates served by the TLS listener; `None` without TLS.
    pub certs: Option<Arc<CertStore>>,
    draining: AtomicBool,
}

impl Runtime {
    /// Wrap a first snapshot.
    pub fn new(
        live: Live,
        certs: Option<Arc<CertStore>>,
        shutdown: CancellationToken,
        tracker: TaskTracker,
    ) -> Arc<Self> {
        Arc::new(Runtime {
            live,
            stats: Arc::default(),
            gate: Arc::default(),
            shutdown,
            tracker,
            started: Instant::now(),
            certs,
            draining: AtomicBool::new(false),
        })
    }

    /// Mark the process as draining (readiness turns 503) and cancel the root token.
    pub fn begin_shutdown(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.shutdown.cancel();
    }

    /// Whether shutdown has begun.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst) || self.shutdown.is_cancelled()
    }
}
