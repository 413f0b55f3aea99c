//! Joining the two byte streams of an upgraded connection.
//!
//! After the upstream's 101 has been written to the client, both connections
//! are taken out of hyper and relayed in both directions until they close.
//!
//! - Both legs plain TCP: they are unwrapped to their sockets and joined by a
//!   [`plain::PlainTunnel`], whose two [`direction::Direction`]s copy small
//!   reads through the worker thread's buffer ([`copy`]) and [`splice`] large
//!   ones kernel to kernel through pipes borrowed from the [`pool`] only while
//!   bytes move (or copy everything if splice is off or unavailable).
//! - A TLS leg: the buffered path ([`relay_buffered`]) runs over hyper's
//!   `Upgraded`, borrowing the same per-thread buffer only inside one poll.
//!
//! Either way an idle tunnel holds no buffer and no pipe. Bytes hyper had
//! already read past either handshake are written to the other side first.
//! An EOF on one side is passed on as a half-close; the other direction then
//! has [`HALF_CLOSE_LINGER`] to finish. A tunnel silent in both directions for
//! the idle timeout is closed, and at shutdown a tunnel gets the drain timeout
//! before it is closed. A reload never touches a tunnel: it holds its own
//! connections.

pub mod copy;
pub mod direction;
pub mod plain;
pub mod pool;
pub mod splice;

use std::io;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Timeouts, TunnelMode, TunnelSettings};
use crate::policy::rate::TunnelSlot;
use crate::stats::TunnelGuard;
use plain::PlainTunnel;
use pool::PipePool;

/// After one direction has closed, how long the other may go on.
pub const HALF_CLOSE_LINGER: Duration = Duration::from_secs(30);

/// Why a tunnel ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ending {
    /// Both sides closed.
    Closed,
    /// One side closed and the other did not follow within the linger.
    HalfClosedTimeout,
    /// No byte in either direction for the idle timeout.
    Idle,
    /// Shutdown's drain timeout ran out.
    Drained,
    /// A read or write failed (a reset, usually).
    Error(io::ErrorKind),
}

/// How this process joins tunnels, chosen once at start.
#[derive(Debug)]
pub struct Relay {
    /// `Some` when plain-TCP tunnels are spliced.
    pipes: Option<PipePool>,
}

impl Relay {
    /// Choose the path for `settings` (probing splice once) and log the choice.
    pub fn start(settings: &TunnelSettings) -> Relay {
        let splice = match settings.mode {
            TunnelMode::Copy => {
                tracing::info!("tunnels: buffered copy (--tunnel-mode copy)");
                false
            }
            TunnelMode::Auto | TunnelMode::Splice => match splice::available() {
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
    pub fn pipes(&self) -> Option<&PipePool> {
        self.pipes.as_ref()
    }

    /// `{"mode": .., "pipes_in_use": .., "pipes_open": .., "pool_exhausted": ..}` for `/status`.
    pub fn to_json(&self) -> serde_json::Value {
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

/// Start relaying once both upgrades complete; the task is tracked on `tracker`
/// and ends by `shutdown`'s drain.
#[allow(clippy::too_many_arguments)] // the call layer (issue 10) regroups these
pub fn spawn(
    downstream: OnUpgrade,
    upstream: OnUpgrade,
    guard: TunnelGuard,
    slot: Option<TunnelSlot>,
    timeouts: &Timeouts,
    shutdown: &CancellationToken,
    tracker: &TaskTracker,
    relay: Arc<Relay>,
) {
    let limits = Limits {
        idle: timeouts.idle,
        drain: timeouts.drain,
        linger: HALF_CLOSE_LINGER,
    };
    let shutdown = shutdown.clone();
    let tracker = tracker.clone();
    tracker.clone().spawn(async move {
        let (downstream, upstream) = match tokio::try_join!(downstream, upstream) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade did not complete");
                return;
            }
        };
        match unwrap_plain(downstream, upstream) {
            // The long-lived task is exactly the tunnel's small state.
            Unwrapped::Plain(d, d_early, u, u_early) => {
                let tunnel = PlainTunnel::new(d, d_early, u, u_early, limits, relay, guard);
                // The per-client tunnel slot (if any) is released when the tunnel ends.
                tracker.spawn(async move {
                    tunnel.run(shutdown).await;
                    drop(slot);
                });
            }
            Unwrapped::Buffered(d, u, d_early) => {
                relay_and_record(d, u, d_early, limits, &shutdown, guard).await;
                drop(slot);
            }
        }
    });
}

/// The two legs after trying to unwrap them to sockets.
enum Unwrapped {
    /// Both plain TCP, with the bytes read past each handshake.
    Plain(TcpStream, Bytes, TcpStream, Bytes),
    /// A TLS leg: relay through buffers; the downstream's early bytes if it was unwrapped.
    Buffered(Box<dyn IoStream>, TokioIo<Upgraded>, Bytes),
}

/// A stream the buffered path can relay.
trait IoStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> IoStream for T {}

/// Downcast both legs to the exact type `connection.rs` and `forward` give
/// hyper for plain TCP. Downstream first: a TLS downstream fails it, and then
/// there is no point unwrapping upstream.
fn unwrap_plain(downstream: Upgraded, upstream: Upgraded) -> Unwrapped {
    let d = match downstream.downcast::<PlainIo>() {
        Ok(d) => d,
        Err(downstream) => {
            return Unwrapped::Buffered(
                Box::new(TokioIo::new(downstream)),
                TokioIo::new(upstream),
                Bytes::new(),
            );
        }
    };
    let down = d.io.into_inner();
    match upstream.downcast::<PlainIo>() {
        Ok(u) => Unwrapped::Plain(down, d.read_buf, u.io.into_inner(), u.read_buf),
        // A TLS upstream: copy, downstream's early bytes first.
        Err(upstream) => Unwrapped::Buffered(Box::new(down), TokioIo::new(upstream), d.read_buf),
    }
}

/// The buffered path of one tunnel, start to end.
async fn relay_and_record(
    downstream: Box<dyn IoStream>,
    upstream: TokioIo<Upgraded>,
    downstream_early: Bytes,
    limits: Limits,
    shutdown: &CancellationToken,
    mut guard: TunnelGuard,
) {
    let counters = Counters::default();
    let ending = relay_buffered(
        downstream,
        upstream,
        downstream_early,
        limits,
        shutdown,
        &counters,
    )
    .await;
    let to_upstream = counters.to_upstream.load(Ordering::Relaxed);
    let to_downstream = counters.to_downstream.load(Ordering::Relaxed);
    guard.add_bytes(to_upstream, to_downstream);
    tracing::debug!(
        ?ending,
        bytes_to_upstream = to_upstream,
        bytes_to_downstream = to_downstream,
        "tunnel closed (buffered)"
    );
}

/// Timers of one tunnel.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Close after this long without a byte either way.
    pub idle: Duration,
    /// After shutdown begins, close after this long.
    pub drain: Duration,
    /// After one direction has closed, close the other after this long.
    pub linger: Duration,
}

/// Bytes moved each way and the time of the last one.
#[derive(Debug)]
pub struct Counters {
    /// Bytes written to upstream.
    pub to_upstream: AtomicU64,
    /// Bytes written to downstream.
    pub to_downstream: AtomicU64,
    start: Instant,
    /// Milliseconds since `start` of the last byte either way.
    last_activity_ms: AtomicU64,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            to_upstream: AtomicU64::new(0),
            to_downstream: AtomicU64::new(0),
            start: Instant::now(),
            last_activity_ms: AtomicU64::new(0),
        }
    }
}

impl Counters {
    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_activity_ms.store(ms, Ordering::Relaxed);
    }

    fn last_activity(&self) -> Instant {
        self.start + Duration::from_millis(self.last_activity_ms.load(Ordering::Relaxed))
    }
}

/// The exact type `connection.rs` and `forward` hand to hyper for plain TCP.
type PlainIo = TokioIo<TcpStream>;

/// Buffered relay over any pair of streams. `Upgraded` yields the bytes read
/// past its handshake itself; `to_upstream_first` are those of an unwrapped
/// downstream.
pub async fn relay_buffered<D, U>(
    downstream: D,
    upstream: U,
    to_upstream_first: Bytes,
    limits: Limits,
    shutdown: &CancellationToken,
    counters: &Counters,
) -> Ending
where
    D: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let (mut dr, mut dw) = tokio::io::split(downstream);
    let (mut ur, mut uw) = tokio::io::split(upstream);
    let to_upstream = pin!(async {
        if !to_upstream_first.is_empty() {
            counters.touch();
            uw.write_all(&to_upstream_first).await?;
            let n = to_upstream_first.len() as u64;
            counters.to_upstream.fetch_add(n, Ordering::Relaxed);
        }
        drop(to_upstream_first);
        copy::copy_until_closed(&mut dr, &mut uw, &counters.to_upstream, counters).await
    });
    let to_downstream = pin!(copy::copy_until_closed(
        &mut ur,
        &mut dw,
        &counters.to_downstream,
        counters
    ));
    supervise(to_upstream, to_downstream, limits, shutdown, counters).await
}

/// Drive both directions under the idle, linger and drain deadlines, with one timer.
pub async fn supervise<A, B>(
    mut to_upstream: std::pin::Pin<&mut A>,
    mut to_downstream: std::pin::Pin<&mut B>,
    limits: Limits,
    shutdown: &CancellationToken,
    counters: &Counters,
) -> Ending
where
    A: Future<Output = io::Result<()>>,
    B: Future<Output = io::Result<()>>,
{
    let (mut up_done, mut down_done) = (false, false);
    let mut linger_at: Option<Instant> = None;
    let mut drain_at: Option<Instant> = None;
    let next = |linger_at: Option<Instant>, drain_at: Option<Instant>| {
        [
            Some(counters.last_activity() + limits.idle),
            linger_at,
            drain_at,
        ]
        .into_iter()
        .flatten()
        .min()
        .expect("the idle deadline is always set")
    };
    let mut timer = pin!(tokio::time::sleep(limits.idle));
    loop {
        tokio::select! {
            r = to_upstream.as_mut(), if !up_done => {
                if let Err(e) = r { return Ending::Error(e.kind()); }
                up_done = true;
                if down_done { return Ending::Closed; }
                linger_at = Some(Instant::now() + limits.linger);
            }
            r = to_downstream.as_mut(), if !down_done => {
                if let Err(e) = r { return Ending::Error(e.kind()); }
                down_done = true;
                if up_done { return Ending::Closed; }
                linger_at = Some(Instant::now() + limits.linger);
            }
            () = shutdown.cancelled(), if drain_at.is_none() => {
                drain_at = Some(Instant::now() + limits.drain);
            }
            () = timer.as_mut() => {
                let now = Instant::now();
                if drain_at.is_some_and(|t| t <= now) { return Ending::Drained; }
                if linger_at.is_some_and(|t| t <= now) { return Ending::HalfClosedTimeout; }
                if counters.last_activity() + limits.idle <= now { return Ending::Idle; }
            }
        }
        timer.as_mut().reset(next(linger_at, drain_at).into());
    }
}

#[cfg(test)]
mod tests {
    //! The buffered path over in-memory pipes (the TLS case); the plain TCP
    //! paths are exercised end to end in `tests/tunnel.rs`.

    use super::*;
    use tokio::io::{AsyncReadExt, duplex};

    fn limits() -> Limits {
        Limits {
            idle: Duration::from_secs(3600),
            drain: Duration::from_secs(30),
            linger: HALF_CLOSE_LINGER,
        }
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[tokio::test]
    async fn buffered_relay_is_exact_with_partial_writes_early_bytes_and_half_close() {
        // A 1 KiB duplex forces partial writes: only the remainder is kept.
        let (mut client, proxy_down) = duplex(1024);
        let (proxy_up, mut server) = duplex(1024);
        let shutdown = CancellationToken::new();
        let counters = Counters::default();
        let up = pattern(300_000, 1);
        let down = pattern(200_000, 7);
        let early = Bytes::from_static(b"EARLY");
        let relay = relay_buffered(proxy_down, proxy_up, early, limits(), &shutdown, &counters);
        let drive = async {
            let client_side = async {
                client.write_all(&up).await.unwrap();
                client.shutdown().await.unwrap();
                let mut got = Vec::new();
                client.read_to_end(&mut got).await.unwrap();
                got
            };
            let server_side = async {
                let mut got = Vec::new();
                server.read_to_end(&mut got).await.unwrap();
                // Downstream has half-closed; this direction still goes on.
                server.write_all(&down).await.unwrap();
                server.shutdown().await.unwrap();
                got
            };
            tokio::join!(client_side, server_side)
        };
        let (ending, (client_got, server_got)) = tokio::join!(relay, drive);
        assert_eq!(ending, Ending::Closed);
        assert_eq!(&server_got[..5], b"EARLY");
        assert_eq!(&server_got[5..], &up[..]);
        assert_eq!(client_got, down);
        assert_eq!(counters.to_upstream.load(Ordering::Relaxed), 300_005);
        assert_eq!(counters.to_downstream.load(Ordering::Relaxed), 200_000);
    }

    #[tokio::test]
    async fn buffered_relay_closes_an_idle_tunnel_and_drains_at_shutdown() {
        let (_client, proxy_down) = duplex(1024);
        let (proxy_up, _server) = duplex(1024);
        let shutdown = CancellationToken::new();
        let counters = Counters::default();
        let mut l = limits();
        l.idle = Duration::from_millis(100);
        l.drain = Duration::from_millis(150);
        let ending =
            relay_buffered(proxy_down, proxy_up, Bytes::new(), l, &shutdown, &counters).await;
        assert_eq!(ending, Ending::Idle);

        let (_client, proxy_down) = duplex(1024);
        let (proxy_up, _server) = duplex(1024);
        let counters = Counters::default();
        shutdown.cancel();
        l.idle = Duration::from_secs(3600);
        let started = Instant::now();
        let ending =
            relay_buffered(proxy_down, proxy_up, Bytes::new(), l, &shutdown, &counters).await;
        assert_eq!(ending, Ending::Drained);
        assert!(started.elapsed() >= Duration::from_millis(150));
    }
}
