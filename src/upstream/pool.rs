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

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use std::sync::Arc;

/// Idle connections kept per upstream.
pub const MAX_IDLE: usize = 32;
/// How long a connection may wait in the pool.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// The request side of one upstream HTTP/1.1 connection. The body is boxed
/// so that a WebSocket handshake retried on the next upstream can be sent
/// with an empty body of its own (the client's `Incoming` is spent by then).
pub type Sender = SendRequest<http_body_util::combinators::BoxBody<Bytes, hyper::Error>>;

/// Idle keep-alive connections of one upstream.
#[derive(Debug)]
pub struct ConnPool {
    idle: Mutex<VecDeque<(Sender, Instant)>>,
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
    /// A pool of at most `max_idle` connections, each idle at most `idle_timeout`.
    pub fn new(max_idle: usize, idle_timeout: Duration) -> Self {
        ConnPool {
            idle: Mutex::new(VecDeque::new()),
            max_idle,
            idle_timeout,
            closed: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<(Sender, Instant)>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The most recently used live connection, if any.
    pub fn take(&self) -> Option<Sender> {
        let mut idle = self.lock();
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

    /// Offer a connection whose last response was read to the end.
    pub fn put(&self, sender: Sender) {
        if sender.is_closed() || self.closed.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        if self.max_idle == 0 {
            return;
        }
        let now = Instant::now();
        let mut idle = self.lock();
        if idle.len() >= self.max_idle {
            idle.pop_front();
        }
        idle.push_back((sender, now));
    }

    /// Drop every idle connection and accept no more (shutdown).
    pub fn close(&self) {
        self.closed
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.lock().clear();
    }

    /// Idle connections now.
    pub fn idle(&self) -> usize {
        self.lock().len()
    }
}

/// A response body that gives its connection back to the pool once read to
/// the end (and drops it on an error or if dropped early).
#[derive(Debug)]
pub struct PooledBody {
    inner: Incoming,
    release: Option<(Sender, Arc<ConnPool>)>,
}

impl PooledBody {
    /// Wrap `inner`; a body already at its end releases the connection now.
    pub fn new(inner: Incoming, sender: Sender, pool: Arc<ConnPool>) -> Self {
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
        (sender, server)
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
