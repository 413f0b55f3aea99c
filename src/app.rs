//! Wiring: builds the first snapshot, binds the listeners, starts the tasks,
//! and owns the root `CancellationToken` and `TaskTracker` of shutdown and the
//! tunnel [`Relay`](crate::forward::tunnel::Relay), which it hands down to the
//! accept stage ([`crate::connection::accept`]) in a [`crate::proxy::Context`].
//!
//! Shutdown (DESIGN.md): readiness turns 503 and the proxy listener stops accepting;
//! in-flight HTTP finishes; tunnels get the drain timeout to end on their own,
//! then are closed; [`Running::stopped`] resolves when every task has ended.
//! The admin listener has its own token and tracker: it answers during the
//! whole drain (`/readyz` 503, `/status` `draining: true`) and stops last.
//!
//! Startup order matters: the listeners are bound first, so a port in use
//! fails the start before any task runs; the tunnel relay is chosen next
//! (splice is probed once); then the first snapshot is built, which loads
//! every certificate and starts the health probes; only then do the accept
//! loops, the admin listener and the file watcher start. Everything spawned
//! is tracked, so [`Running::stopped`] can wait for all of it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::acme::challenge::Http01Tokens;
use crate::acme::{Acme, AcmeStatus};
use crate::config::{AcmeChallenge, Config};
use crate::handles::Handles;
use crate::live::{BuildError, Snapshot};
use crate::reload::Reloader;
use crate::shutdown::Shutdown;
use crate::tls::CertStore;

/// Why shunt could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The proxy or admin address cannot be bound.
    #[error(transparent)]
    Bind(#[from] crate::listener::BindError),
    /// The worker threads (`--workers`) could not be started.
    #[error("cannot start the worker threads")]
    Workers(#[source] std::io::Error),
    /// The address a listener was bound to cannot be read back.
    #[error("cannot read the bound address")]
    LocalAddr(#[source] std::io::Error),
    /// The first snapshot could not be built (certificates, upstream TLS).
    #[error(transparent)]
    Build(#[from] BuildError),
    /// rustls refused the server configuration.
    #[error("TLS setup")]
    Tls(#[from] rustls::Error),
    /// The ACME state directory cannot be used.
    #[error(transparent)]
    Acme(#[from] crate::acme::store::StoreError),
    /// `--acme-ca-file` does not hold a PEM certificate.
    #[error("--acme-ca-file {}", path.display())]
    AcmeCa {
        /// The file.
        path: std::path::PathBuf,
        /// What the PEM reader found.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
}

/// A started proxy.
#[derive(Debug)]
pub struct Running {
    listen_addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    http_addr: Option<SocketAddr>,
    handles: Arc<Handles>,
    reloader: Arc<Reloader>,
    /// Stops the admin API, which outlives the drain (see [`crate::admin::run`]).
    admin_stop: CancellationToken,
    /// The admin listener and its connections.
    admin_tracker: TaskTracker,
}

/// Where the proxy listener's connections are served.
enum Proxy {
    /// One listener on the caller's runtime.
    InRuntime(tokio::net::TcpListener),
    /// One listener per worker thread ([`crate::workers`]).
    Workers(Vec<std::net::TcpListener>),
}

/// Bind the listeners and start serving `config`, every connection on the
/// caller's runtime (what the in-process tests use).
pub async fn start(config: Config) -> Result<Running, StartError> {
    start_on(config, None).await
}

/// Like [`start`], but the proxy listener's connections are served by
/// `workers` threads, each with its own current-thread runtime, all
/// accepting on its own `SO_REUSEPORT` listener (`--workers`); probes, admin and the
/// file watcher stay on the caller's runtime.
pub async fn start_workers(config: Config, workers: usize) -> Result<Running, StartError> {
    start_on(config, Some(workers.max(1))).await
}

async fn start_on(config: Config, workers: Option<usize>) -> Result<Running, StartError> {
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let listen = config.listen;
    let admin = config.admin;
    let proxy_listener = match workers {
        None => Proxy::InRuntime(crate::listener::bind(listen, "proxy").await?),
        Some(n) => Proxy::Workers(crate::workers::bind(listen, n)?),
    };
    let http_listener = match config.http_listen {
        Some(addr) => Some(crate::listener::bind(addr, "http").await?),
        None => None,
    };
    let admin_listener = match admin {
        Some(addr) => Some(crate::listener::bind(addr, "admin").await?),
        None => None,
    };
    if let Some(addr) = admin.filter(|a| !a.ip().is_loopback()) {
        tracing::warn!(%addr, "the admin listener is bound beyond loopback; anyone who can reach it can read /status and trigger reloads");
    }
    let relay = Arc::new(crate::forward::tunnel::Relay::start(&config.tunnel));
    let shutdown = Shutdown::new(shutdown, tracker);
    let snapshot = Snapshot::build(config, None, &shutdown)?;
    // TLS is on with file certificates, ACME, or both.
    let acme = snapshot.config().acme.clone();
    let certs = (snapshot.certs().is_some() || acme.is_some())
        .then(|| CertStore::new(snapshot.certs().cloned()));
    let groups = snapshot.config().tls_groups.clone();
    let ticket_rotation = snapshot.config().tls_ticket_rotation;
    let tls_alpn = acme
        .as_ref()
        .is_some_and(|a| a.challenge == AcmeChallenge::TlsAlpn01);
    let (acceptor, client_auth) = match certs.clone() {
        Some(store) => {
            let (acceptor, client_auth) = crate::tls::acceptor(
                store,
                &groups,
                ticket_rotation,
                tls_alpn,
                snapshot.client_ca().cloned(),
            )?;
            (Some(acceptor), client_auth)
        }
        None => (None, None),
    };
    if let Some(set) = snapshot.certs() {
        for warning in set.warnings() {
            tracing::warn!("{warning}");
        }
    }
    let tokens = Arc::new(Http01Tokens::default());
    let acme_task = match (acme, &certs) {
        (Some(spec), Some(store)) => {
            if let Some(ca) = &spec.ca_file {
                use rustls::pki_types::pem::PemObject;
                rustls::pki_types::CertificateDer::from_pem_file(ca).map_err(|source| {
                    StartError::AcmeCa {
                        path: ca.clone(),
                        source,
                    }
                })?;
            }
            let status = Arc::new(AcmeStatus::default());
            let task = Acme::new(spec, store.clone(), tokens.clone(), status.clone())?;
            Some((task, status))
        }
        _ => None,
    };
    let acme_status = acme_task.as_ref().map(|(_, s)| s.clone());
    let handles = Handles::new(
        ArcSwap::from_pointee(snapshot),
        certs,
        client_auth,
        acme_status,
        shutdown,
    );
    let reloader = Reloader::new(handles.clone());

    let listen_addr = match &proxy_listener {
        Proxy::InRuntime(l) => l.local_addr(),
        Proxy::Workers(ls) => ls.first().map_or_else(
            || Err(std::io::Error::other("no proxy listener")),
            std::net::TcpListener::local_addr,
        ),
    }
    .map_err(StartError::LocalAddr)?;
    let admin_addr = match &admin_listener {
        Some(l) => Some(l.local_addr().map_err(StartError::LocalAddr)?),
        None => None,
    };

    let ctx = Arc::new(crate::proxy::Context::new(handles.clone(), relay.clone()));
    let serve = move || {
        let (ctx, acceptor) = (ctx.clone(), acceptor.clone());
        move |stream, peer| {
            crate::connection::accept(stream, peer, listen_addr, &ctx, acceptor.as_ref())
        }
    };
    let workers = match proxy_listener {
        Proxy::InRuntime(listener) => {
            handles
                .shutdown()
                .tracker()
                .spawn(crate::listener::accept_loop(
                    listener,
                    handles.shutdown().token().clone(),
                    handles.shutdown().tracker().clone(),
                    serve(),
                ));
            0
        }
        Proxy::Workers(listeners) => {
            let n = listeners.len();
            crate::workers::spawn(
                listeners,
                handles.shutdown().token().clone(),
                handles.shutdown().tracker().clone(),
                serve,
            )
            .map_err(StartError::Workers)?;
            n
        }
    };
    if let Some((task, _)) = acme_task {
        handles
            .shutdown()
            .tracker()
            .spawn(task.run(handles.shutdown().token().clone()));
    }
    let http_addr = match http_listener {
        Some(listener) => {
            let addr = listener.local_addr().map_err(StartError::LocalAddr)?;
            let port = crate::http_port::HttpPort {
                tokens,
                https_port: handles
                    .live()
                    .load()
                    .config()
                    .https_port
                    .unwrap_or(listen_addr.port()),
                stop: handles.shutdown().token().clone(),
            };
            handles.shutdown().tracker().spawn(crate::http_port::run(
                listener,
                port,
                handles.shutdown().tracker().clone(),
            ));
            Some(addr)
        }
        None => None,
    };
    handles
        .shutdown()
        .tracker()
        .spawn(crate::telemetry::refusals::flush(
            handles.shutdown().token().clone(),
        ));
    handles.start_jwks_fetcher();
    let admin_stop = CancellationToken::new();
    let admin_tracker = TaskTracker::new();

    if let Some(listener) = admin_listener {
        let tunnel: crate::admin::TunnelStatus = Arc::new(move || relay.to_json());
        admin_tracker.spawn(crate::admin::run(
            listener,
            handles.clone(),
            reloader.clone(),
            tunnel,
            admin_stop.clone(),
            admin_tracker.clone(),
        ));
    }
    let watch = handles.live().load().config().watch;
    if let Err(e) = watch
        .then(|| crate::watch::spawn(handles.clone(), reloader.clone()))
        .transpose()
    {
        tracing::warn!(error = %e, "cannot watch files for changes; use SIGHUP or POST /reload");
    }
    let admin_shown = admin_addr.map_or_else(|| "off".to_owned(), |a| a.to_string());
    tracing::info!(listen = %listen_addr, admin = %admin_shown, tls = handles.certs().is_some(), workers, "shunt listening");
    Ok(Running {
        listen_addr,
        admin_addr,
        http_addr,
        handles,
        reloader,
        admin_stop,
        admin_tracker,
    })
}

impl Running {
    /// The proxy listener's bound address.
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen_addr
    }

    /// The admin listener's bound address, unless it is off.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The HTTP port's bound address (`--http-listen`), if it is on.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// The reloader (SIGHUP and file watching call it).
    pub fn reloader(&self) -> &Arc<Reloader> {
        &self.reloader
    }

    /// Begin graceful shutdown; idempotent.
    pub fn shutdown(&self) {
        if !self.handles.is_draining() {
            tracing::info!(
                tunnels = self.handles.stats().active_tunnels(),
                "shutting down: no new connections; draining"
            );
        }
        self.handles.begin_shutdown();
    }

    /// Wait until every task has ended (after [`Running::shutdown`]), then
    /// stop the admin API, which answered throughout the drain.
    pub async fn stopped(self) {
        self.handles.shutdown().tracker().close();
        let drain = self.handles.live().load().timeouts().drain;
        // Tunnels close themselves at the drain deadline; the margin covers their last writes.
        let bound = drain + Duration::from_secs(5);
        if tokio::time::timeout(bound, self.handles.shutdown().tracker().wait())
            .await
            .is_err()
        {
            tracing::warn!(
                tasks = self.handles.shutdown().tracker().len(),
                "tasks still running {bound:?} after shutdown began; exiting anyway"
            );
        }
        self.admin_stop.cancel();
        self.admin_tracker.close();
        // Admin connections end at once on the token; the bound is a safety net.
        let _ = tokio::time::timeout(Duration::from_secs(1), self.admin_tracker.wait()).await;
    }
}
