//! Keep-alive connections to an HTTP upstream, reused by plain requests.
//!
//! A plain request that finds an idle connection here skips the TCP connect
//! and hyper's handshake. A connection goes back into the pool only when its
//! response body has been read to the end ([`PooledBody`]), so the next
//! request never queues behind an unfinished one. The pool is bounded per
//! upstream, drops connections idle longer than its timeout or closed by the
//! upstream, and is emptied at shutdown. WebSocket upgrades always use a fresh
//! connection: an upgraded connection is never HTTP again.
//!
//! Why reuse at all: a plain request through nginx or to the backend
//! otherwise pays a TCP connect and an HTTP/1.1 handshake each time, which
//! dominates the latency of small requests on loopback. Why bounded and
//! idle-timed: an upstream that closes idle connections after its own
//! keep-alive timeout would otherwise leave dead entries for the next
//! request to trip over.
//!
//! Why a deque and no sweep: taking and returning a connection are O(1)
//! under the lock. The newest connection is taken first (it is the least
//! likely to have been closed by the upstream); when the newest is past the
//! idle timeout, every older one is too, so they all go at once. A return to
//! a full pool evicts the oldest. An earlier version swept every idle entry
//! (`retain` with `Instant::elapsed`) on each return, which showed up in the
//! plain-HTTP profile.
//!
//! Why a shard per thread: with `--workers`, each worker is a current-thread
//! runtime, and an upstream connection's hyper task runs on the worker that
//! opened it. A request on another worker that borrowed it would wake that
//! task across threads, and its answer would wake the request back: two
//! cross-thread wake-ups per request, the largest cost in the plain-HTTP
//! profile after the pool was made O(1). So a connection remembers the shard
//! of the thread that opened it ([`Sender::new`]) and always goes back there;
//! a request takes from its own thread's shard first, and borrows from
//! another shard only when its own is empty (a reused connection still beats
//! a new TCP connect and handshake). Each shard holds at most `max_idle`.

use std::collections::VecDeque;
use std::ops::{Deref, DerefMut};
use std::pin::Pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use std::sync::Arc;

/// Idle connections kept per upstream.
pub(crate) const MAX_IDLE: usize = 32;
/// How long a connection may wait in the pool.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Shards per pool: threads beyond this share shards (they lose only locality).
const SHARDS: usize = 16;

/// The request side of one upstream HTTP/1.1 connection. The body is boxed
/// so that a WebSocket handshake retried on the next upstream can be sent
/// with an empty body of its own (the client's `Incoming` is spent by then).
pub(crate) type SendRequestBoxed =
    SendRequest<http_body_util::combinators::BoxBody<Bytes, hyper::Error>>;

/// One upstream connection's [`SendRequestBoxed`], with the pool shard of
/// the thread whose runtime runs its connection task. Derefs to the hyper
/// sender.
#[derive(Debug)]
pub struct Sender {
    inner: SendRequestBoxed,
    home: usize,
}

impl Sender {
    /// Wrap a sender whose connection task was just spawned on this thread.
    pub fn new(inner: SendRequestBoxed) -> Self {
        Sender {
            inner,
            home: this_thread_shard(),
        }
    }
}

impl Deref for Sender {
    type Target = SendRequestBoxed;
    fn deref(&self) -> &SendRequestBoxed {
        &self.inner
    }
}

impl DerefMut for Sender {
    fn deref_mut(&mut self) -> &mut SendRequestBoxed {
        &mut self.inner
    }
}

/// The calling thread's shard: threads are numbered as they first ask.
fn this_thread_shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    SHARD.with(|s| *s)
}

/// The idle connections of one shard, newest last.
type Shard = Mutex<VecDeque<(Sender, Instant)>>;

/// Idle keep-alive connections of one upstream, a shard per thread.
#[derive(Debug)]
pub struct ConnPool {
    shards: [Shard; SHARDS],
    max_idle: usize,
    idle_timeout: Duration,
    closed: std::sync::atomic::AtomicBool,
}

impl Default for ConnPool {
    fn default() -> Self {
        ConnPool::new(MAX_IDLE, IDLE_TIMEOUT)
    }
}

impl ConnPool {
    /// A pool of at most `max_idle` connections per shard, each idle at most
    /// `idle_timeout`.
    pub fn new(max_idle: usize, idle_timeout: Duration) -> Self {
        ConnPool {
            shards: std::array::from_fn(|_| Mutex::new(VecDeque::new())),
            max_idle,
            idle_timeout,
            closed: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn lock(&self, shard: usize) -> std::sync::MutexGuard<'_, VecDeque<(Sender, Instant)>> {
        self.shards[shard].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The most recently used live connection, if any: this thread's own
    /// first, then one borrowed from another shard.
    pub fn take(&self) -> Option<Sender> {
        let home = this_thread_shard();
        (0..SHARDS).find_map(|i| self.take_from((home + i) % SHARDS))
    }

    /// The newest live connection of one shard; expired ones are dropped.
    fn take_from(&self, shard: usize) -> Option<Sender> {
        let mut idle = self.lock(shard);
        while let Some((sender, since)) = idle.pop_back() {
            if since.elapsed() >= self.idle_timeout {
                // Older entries have waited longer still.
                idle.clear();
                return None;
            }
            if !sender.is_closed() {
                return Some(sender);
            }
        }
        None
    }

    /// Offer a connection whose last response was read to the end; it goes
    /// back to the shard of the thread that runs it.
    pub fn put(&self, sender: Sender) {
        if sender.is_closed() || self.closed.load(Ordering::Relaxed) {
            return;
        }
        if self.max_idle == 0 {
            return;
        }
        let now = Instant::now();
        let mut idle = self.lock(sender.home);
        if idle.len() >= self.max_idle {
            idle.pop_front();
        }
        idle.push_back((sender, now));
    }

    /// Drop every idle connection and accept no more (shutdown).
    pub fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        for shard in 0..SHARDS {
            self.lock(shard).clear();
        }
    }

    /// Idle connections now, over all shards.
    pub fn idle(&self) -> usize {
        (0..SHARDS).map(|shard| self.lock(shard).len()).sum()
    }
}

/// A response body that gives its connection back to the pool once read to
/// the end (and drops it on an error or if dropped early).
#[derive(Debug)]
pub(crate) struct PooledBody {
    inner: Incoming,
    release: Option<(Sender, Arc<ConnPool>)>,
}

impl PooledBody {
    /// Wrap `inner`; a body already at its end releases the connection now.
    pub(crate) fn new(inner: Incoming, sender: Sender, pool: Arc<ConnPool>) -> Self {
        let mut body = PooledBody {
            inner,
            release: Some((sender, pool)),
        };
        if body.inner.is_end_stream() {
            body.release();
        }
        body
    }

    fn release(&mut self) {
        if let Some((sender, pool)) = self.release.take() {
            pool.put(sender);
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.release(),
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.release(),
            Poll::Ready(Some(Err(_))) => self.release = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper_util::rt::TokioIo;

    /// A live sender over an in-memory stream (its connection task keeps it open).
    async fn sender() -> (Sender, tokio::io::DuplexStream) {
        let (client, server) = tokio::io::duplex(1024);
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(client))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        (Sender::new(sender), server)
    }

    #[tokio::test]
    async fn a_full_pool_is_bounded_and_a_closed_one_keeps_nothing() {
        let pool = ConnPool::new(2, Duration::from_secs(30));
        let mut ends = Vec::new();
        for _ in 0..3 {
            let (s, end) = sender().await;
            pool.put(s);
            ends.push(end);
        }
        assert_eq!(pool.idle(), 2, "bounded at max_idle");
        assert!(pool.take().is_some());
        assert_eq!(pool.idle(), 1);
        pool.close();
        assert_eq!(pool.idle(), 0);
        let (s, _end) = sender().await;
        pool.put(s);
        assert_eq!(pool.idle(), 0, "a closed pool keeps nothing");
    }

    #[tokio::test]
    async fn a_connection_goes_home_and_is_borrowed_when_this_shard_is_empty() {
        let pool = ConnPool::new(4, Duration::from_secs(30));
        let (mut s, _end) = sender().await;
        // As if another worker thread had opened it.
        let other = (this_thread_shard() + 1) % SHARDS;
        s.home = other;
        pool.put(s);
        assert_eq!(pool.lock(other).len(), 1, "back in its own shard");
        assert_eq!(pool.lock(this_thread_shard()).len(), 0);
        let s = pool.take().expect("borrowed from the other shard");
        assert_eq!(s.home, other, "it keeps its home");
        pool.put(s);
        assert_eq!(pool.lock(other).len(), 1, "and returns there");
    }

    #[tokio::test]
    async fn expired_connections_are_not_taken() {
        let pool = ConnPool::new(4, Duration::ZERO);
        let mut ends = Vec::new();
        for _ in 0..3 {
            let (s, end) = sender().await;
            pool.put(s);
            ends.push(end);
        }
        assert_eq!(pool.idle(), 3);
        assert!(pool.take().is_none(), "every entry is past a zero timeout");
        assert_eq!(pool.idle(), 0, "the expired entries went at once");
    }
}
