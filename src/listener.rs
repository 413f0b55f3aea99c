//! Binding and accepting: the entry of the data flow.
//!
//! The accept loop never dies on a transient error (out of file descriptors,
//! a connection reset before accept): it logs, backs off and continues. It
//! stops when the root token is cancelled. Each accepted connection gets
//! `TCP_NODELAY` (audio frames are small and latency-bound) and its own
//! tracked task. An IPv6 listener is dual-stack (`[::]:8443` takes IPv4 too).
//!
//! The back-off doubles from 5 ms up to 1 s and resets on the next successful
//! accept: long enough that a process out of file descriptors does not spin,
//! short enough that it serves again soon after descriptors are freed.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

use crate::procnet::Holder;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A listener address that cannot be bound (in use, not ours, no permission).
#[derive(Debug, thiserror::Error)]
#[error("cannot bind {what} listener on {addr}{}", held_by(holders))]
pub struct BindError {
    /// Which listener: `proxy` or `admin`.
    pub what: &'static str,
    /// The address asked for.
    pub addr: SocketAddr,
    /// When the address is in use: the processes holding it, where `/proc`
    /// shows them, so the message says what to stop.
    pub holders: Vec<Holder>,
    /// What the OS said.
    #[source]
    pub source: io::Error,
}

impl BindError {
    /// The error for `what` on `addr`; an `address in use` looks up who
    /// holds the port (a blocking `/proc` walk, done once, on a failed start).
    pub fn new(what: &'static str, addr: SocketAddr, source: io::Error) -> Self {
        let holders = if source.kind() == io::ErrorKind::AddrInUse {
            crate::procnet::holders(addr)
        } else {
            Vec::new()
        };
        BindError {
            what,
            addr,
            holders,
            source,
        }
    }
}

/// `" (held by shunt (pid 42); …)"` for a port in use, else nothing.
fn held_by(holders: &[Holder]) -> String {
    if holders.is_empty() {
        return String::new();
    }
    let names: Vec<String> = holders.iter().map(ToString::to_string).collect();
    format!(
        " (held by {}; `shunt doctor` checks the listeners)",
        names.join(", ")
    )
}

/// Bind `addr`, naming the listener and the address in the error. An IPv6
/// address is bound with `IPV6_V6ONLY` off, so `[::]:PORT` is dual-stack: it
/// also accepts IPv4 clients (seen as `::ffff:a.b.c.d`), whatever
/// `net.ipv6.bindv6only` says.
pub(crate) async fn bind(addr: SocketAddr, what: &'static str) -> Result<TcpListener, BindError> {
    bind_dual_stack(addr).map_err(|source| BindError::new(what, addr, source))
}

/// How many connections may wait in the kernel to be accepted (tokio's
/// default for `TcpListener::bind`).
const BACKLOG: i32 = 1024;

/// A listening socket on `addr` as `TcpListener::bind` makes it
/// (`SO_REUSEADDR`, non-blocking), but with `IPV6_V6ONLY` off for IPv6.
fn bind_dual_stack(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::from_std(socket(addr, false)?)
}

/// A non-blocking listening socket on `addr` (`SO_REUSEADDR`, `IPV6_V6ONLY`
/// off for IPv6), with `SO_REUSEPORT` when `reuse_port` (one per worker,
/// [`crate::workers`], which first makes sure no other process holds the
/// port); not yet registered with any runtime.
pub(crate) fn socket(addr: SocketAddr, reuse_port: bool) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// Accept until `stop` is cancelled, handing each connection to `serve` on a tracked task.
pub(crate) async fn accept_loop<F, Fut>(
    listener: TcpListener,
    stop: CancellationToken,
    tracker: TaskTracker,
    serve: F,
) where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            () = stop.cancelled() => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = Duration::from_millis(5);
                let _ = stream.set_nodelay(true);
                tracker.spawn(serve(stream, peer));
            }
            Err(e) if is_per_connection(&e) => {
                tracing::debug!(error = %e, "accept: connection failed before it was accepted");
            }
            Err(e) => {
                tracing::warn!(error = %e, backoff_ms = backoff.as_millis() as u64, "accept failed; backing off");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = stop.cancelled() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// Errors that concern one connection only, not the listener.
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}
