//! Per-core workers: one current-thread tokio runtime per thread, each
//! accepting on its own `SO_REUSEPORT` listener on `--listen`.
//!
//! Why: with one work-stealing runtime, a connection's downstream task, its
//! upstream connection task and its tunnel were woken across threads, and
//! those cross-thread wake-ups took about a third of the CPU of a handshake.
//! With a worker per core, the kernel spreads new connections over the
//! listeners (by hash, so a burst of connections is balanced), and a
//! connection, its upstream connection and its tunnel live and die on one
//! thread.
//!
//! What stays shared is what [`crate::handles::Handles`] holds (the snapshot,
//! certificates, health, the policy's gate, stats, the shutdown token and the
//! task tracker): a task a worker spawns is tracked by the one
//! [`TaskTracker`], so [`crate::app::Running::stopped`] waits for every
//! worker's tasks. Health probes, the admin listener, the file watcher and
//! signals stay on the caller's runtime.
//!
//! `SO_REUSEPORT` would also let another process of the same user bind the
//! same port and silently take a share of the connections (a second shunt
//! started by hand, a test instance). So before binding, the start looks in
//! `/proc` for any process already listening on the address and fails,
//! naming it ([`crate::procnet`]); and `shunt doctor` fails a port held by
//! more than one process. (One socket shared by all workers would shut the
//! port to others entirely, but then whichever worker wakes first takes a
//! whole burst of connections: measured, flood throughput fell by a third
//! on some runs.) Where the kernel refuses `SO_REUSEPORT`, one listener is
//! bound and each worker accepts on a duplicate of its descriptor.

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

/// Bind `n` listeners on `addr` (`SO_REUSEPORT`), or one shared listener
/// where the kernel refuses the option, after making sure no other process
/// listens there (which `SO_REUSEPORT` would let us join). An IPv6 address is
/// dual-stack, as with [`crate::listener::bind`]. The first fixes the port
/// when `addr` asks for port 0; the others bind to the same one.
pub(crate) fn bind(addr: SocketAddr, n: usize) -> Result<Vec<std::net::TcpListener>, BindError> {
    let named = |source: io::Error| BindError::new("proxy", addr, source);
    if addr.port() != 0 && !crate::procnet::holders(addr).is_empty() {
        let in_use = io::Error::from_raw_os_error(rustix::io::Errno::ADDRINUSE.raw_os_error());
        return Err(named(in_use));
    }
    let n = n.max(1);
    let first = match listen(addr, true) {
        Ok(l) => l,
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NOPROTOOPT.raw_os_error()) => {
            tracing::info!("SO_REUSEPORT is not available; the workers share one listener");
            let one = listen(addr, false).map_err(named)?;
            return (0..n).map(|_| one.try_clone().map_err(named)).collect();
        }
        Err(e) => return Err(named(e)),
    };
    let bound = first.local_addr().map_err(named)?;
    let mut all = vec![first];
    for _ in 1..n {
        all.push(listen(bound, true).map_err(named)?);
    }
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
