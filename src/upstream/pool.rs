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
    idle: Mutex<Vec<(Sender, Instant)>>,
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
            idle: Mutex::new(Vec::new()),
            max_idle,
            idle_timeout,
            closed: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(Sender, Instant)>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The most recently used live connection, if any.
    pub fn take(&self) -> Option<Sender> {
        let mut idle = self.lock();
        while let Some((sender, since)) = idle.pop() {
            if !sender.is_closed() && since.elapsed() < self.idle_timeout {
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
        let mut idle = self.lock();
        let timeout = self.idle_timeout;
        idle.retain(|(s, since)| !s.is_closed() && since.elapsed() < timeout);
        if idle.len() < self.max_idle {
            idle.push((sender, Instant::now()));
        }
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
