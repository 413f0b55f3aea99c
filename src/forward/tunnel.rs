//! Joining the two byte streams of an upgraded connection.
//!
//! After the upstream's 101 has been written to the client, both connections
//! are taken out of hyper and relayed in both directions until they close.
//! Bytes hyper had already read past either handshake come first (hyper's
//! `Upgraded` yields them before reading the socket). An EOF on one side is
//! passed on as a half-close; the other direction then has [`HALF_CLOSE_LINGER`]
//! to finish. A tunnel silent in both directions for the idle timeout is
//! closed, and at shutdown a tunnel gets the drain timeout before it is closed.
//! A reload never touches a tunnel: it holds its own connections.

use std::io;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::config::Timeouts;
use crate::policy::rate::TunnelSlot;
use crate::runtime::Runtime;
use crate::stats::TunnelGuard;

/// After one direction has closed, how long the other may go on.
pub const HALF_CLOSE_LINGER: Duration = Duration::from_secs(30);
/// Relay buffer per direction.
const BUFFER: usize = 16 * 1024;

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

/// Start relaying once both upgrades complete; the task is tracked.
pub fn spawn(
    downstream: OnUpgrade,
    upstream: OnUpgrade,
    guard: TunnelGuard,
    slot: Option<TunnelSlot>,
    timeouts: &Timeouts,
    rt: &Runtime,
) {
    let limits = Limits {
        idle: timeouts.idle,
        drain: timeouts.drain,
        linger: HALF_CLOSE_LINGER,
    };
    let shutdown = rt.shutdown.clone();
    rt.tracker.spawn(async move {
        let mut guard = guard;
        // The policy's per-client tunnel count, released when the task ends.
        let _slot = slot;
        let (downstream, upstream) = match tokio::try_join!(downstream, upstream) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade did not complete");
                return;
            }
        };
        let counters = Counters::default();
        let ending = join(downstream, upstream, limits, &shutdown, &counters).await;
        let to_upstream = counters.to_upstream.load(Ordering::Relaxed);
        let to_downstream = counters.to_downstream.load(Ordering::Relaxed);
        guard.add_bytes(to_upstream, to_downstream);
        tracing::debug!(
            ?ending,
            bytes_to_upstream = to_upstream,
            bytes_to_downstream = to_downstream,
            "tunnel closed"
        );
    });
}

/// Timers of one tunnel.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub idle: Duration,
    pub drain: Duration,
    pub linger: Duration,
}

/// Bytes moved each way and the time of the last one.
#[derive(Debug)]
pub struct Counters {
    pub to_upstream: AtomicU64,
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

/// Relay between the two upgraded connections until the tunnel ends.
async fn join(
    downstream: Upgraded,
    upstream: Upgraded,
    limits: Limits,
    shutdown: &CancellationToken,
    counters: &Counters,
) -> Ending {
    relay(
        TokioIo::new(downstream),
        TokioIo::new(upstream),
        limits,
        shutdown,
        counters,
    )
    .await
}

/// Buffered relay over any pair of streams.
pub async fn relay<D, U>(
    downstream: D,
    upstream: U,
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
    let to_upstream = pin!(copy_until_eof(
        &mut dr,
        &mut uw,
        &counters.to_upstream,
        counters
    ));
    let to_downstream = pin!(copy_until_eof(
        &mut ur,
        &mut dw,
        &counters.to_downstream,
        counters
    ));
    supervise(to_upstream, to_downstream, limits, shutdown, counters).await
}

/// Drive both directions under the idle, linger and drain timers.
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
    let mut linger = pin!(tokio::time::sleep(Duration::MAX / 4));
    let mut idle = pin!(tokio::time::sleep(limits.idle));
    let mut drain = pin!(async {
        shutdown.cancelled().await;
        tokio::time::sleep(limits.drain).await;
    });
    loop {
        tokio::select! {
            r = to_upstream.as_mut(), if !up_done => {
                if let Err(e) = r { return Ending::Error(e.kind()); }
                up_done = true;
                if down_done { return Ending::Closed; }
                linger.as_mut().reset((Instant::now() + limits.linger).into());
            }
            r = to_downstream.as_mut(), if !down_done => {
                if let Err(e) = r { return Ending::Error(e.kind()); }
                down_done = true;
                if up_done { return Ending::Closed; }
                linger.as_mut().reset((Instant::now() + limits.linger).into());
            }
            () = linger.as_mut() => return Ending::HalfClosedTimeout,
            () = idle.as_mut() => {
                let deadline = counters.last_activity() + limits.idle;
                if deadline <= Instant::now() {
                    return Ending::Idle;
                }
                idle.as_mut().reset(deadline.into());
            }
            () = drain.as_mut() => return Ending::Drained,
        }
    }
}

/// Copy `r` to `w` until EOF, then half-close `w`.
async fn copy_until_eof<R, W>(
    r: &mut R,
    w: &mut W,
    moved: &AtomicU64,
    counters: &Counters,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; BUFFER];
    loop {
        let n = match r.read(&mut buf).await {
            Ok(n) => n,
            // A TLS peer that closes without close_notify has still closed.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => 0,
            Err(e) => return Err(e),
        };
        if n == 0 {
            // The peer may already be gone; its own direction reports that.
            let _ = w.shutdown().await;
            return Ok(());
        }
        counters.touch();
        w.write_all(&buf[..n]).await?;
        w.flush().await?;
        moved.fetch_add(n as u64, Ordering::Relaxed);
    }
}
