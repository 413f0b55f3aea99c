//! Per-core workers: one current-thread tokio runtime per thread, each
//! accepting on `--listen`.
//!
//! Why: with one work-stealing runtime, a connection's downstream task, its
//! upstream connection task and its tunnel were woken across threads, and
//! those cross-thread wake-ups took about a third of the CPU of a handshake.
//! With a worker per core, each worker accepts what it can from the one
//! listening socket, and a connection, its upstream connection and its
//! tunnel live and die on one thread.
//!
//! What stays shared is what [`crate::handles::Handles`] holds (the snapshot,
//! certificates, health, the policy's gate, stats, the shutdown token and the
//! task tracker): a task a worker spawns is tracked by the one
//! [`TaskTracker`], so [`crate::app::Running::stopped`] waits for every
//! worker's tasks. Health probes, the admin listener, the file watcher and
//! signals stay on the caller's runtime.
//!
//! The workers share one listening socket: each accepts on a duplicate of
//! its descriptor (the same queue). Not one `SO_REUSEPORT` socket per
//! worker: that option lets any other process of the same user bind the
//! same port and take a share of the connections unnoticed (a second shunt
//! started by hand, a stale old version). Without it, a second process
//! cannot bind the port at all, and its start fails naming this one.

use std::io;
use std::net::SocketAddr;
use std::num::NonZeroUsize;

use crate::listener::{BindError, socket as listen};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The number of CPUs this process may run on (the `--workers` default).
pub fn default_count() -> usize {
    std::thread::available_parallelism().map_or(1, NonZeroUsize::get)
}

/// Bind one listener on `addr` and return it with a duplicate of its
/// descriptor for each further worker (`n` in all). An IPv6 address is
/// dual-stack, as with [`crate::listener::bind`].
pub(crate) fn bind(addr: SocketAddr, n: usize) -> Result<Vec<std::net::TcpListener>, BindError> {
    let named = |source: io::Error| BindError::new("proxy", addr, source);
    let one = listen(addr).map_err(named)?;
    let mut all = Vec::with_capacity(n.max(1));
    for _ in 1..n.max(1) {
        all.push(one.try_clone().map_err(named)?);
    }
    all.push(one);
    Ok(all)
}

/// Start one thread per listener, each on its own current-thread runtime,
/// accepting until `stop` is cancelled and then staying up until every task
/// in `tracker` has ended (once it is closed), so no worker's connection is
/// dropped with its runtime. `serve` is built once per worker.
pub(crate) fn spawn<M, F, Fut>(
    listeners: Vec<std::net::TcpListener>,
    stop: CancellationToken,
    tracker: TaskTracker,
    make_serve: M,
) -> io::Result<()>
where
    M: Fn() -> F,
    F: Fn(tokio::net::TcpStream, SocketAddr) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    for (i, listener) in listeners.into_iter().enumerate() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (stop, tracker, serve) = (stop.clone(), tracker.clone(), make_serve());
        std::thread::Builder::new()
            .name(format!("shunt-worker-{i}"))
            .spawn(move || {
                runtime.block_on(async move {
                    match tokio::net::TcpListener::from_std(listener) {
                        Ok(listener) => {
                            crate::listener::accept_loop(listener, stop, tracker.clone(), serve)
                                .await;
                        }
                        Err(e) => tracing::error!(error = %e, worker = i, "worker cannot listen"),
                    }
                    tracker.wait().await;
                });
            })?;
    }
    Ok(())
}
