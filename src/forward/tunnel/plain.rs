//! A tunnel whose two legs are plain TCP: one small struct, polled by hand,
//! that is the whole long-lived task.
//!
//! Why a struct and not `async` blocks: an idle audio tunnel may live for an
//! hour and there may be ten thousand of them, so what a tunnel holds while
//! idle is what the proxy costs. Here that is its two sockets, two
//! [`Direction`]s (no buffer, no pipe while idle), byte counts, deadlines,
//! its `/status` guard, one timer and one shutdown waiter — a few hundred
//! bytes. The timer is reset only when a deadline changes (a half-close, the
//! start of a drain) or fires; the idle deadline is read from the time of the
//! last byte when it fires, so traffic costs no timer work.

use std::future::poll_fn;
use std::io;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use tokio::net::TcpStream;
use tokio::time::Sleep;
use tokio_util::sync::CancellationToken;

use super::direction::Direction;
use super::{Ending, Limits, Relay};
use crate::stats::TunnelGuard;

/// Everything a plain tunnel holds.
#[derive(Debug)]
pub struct PlainTunnel {
    downstream: TcpStream,
    upstream: TcpStream,
    to_upstream: Direction,
    to_downstream: Direction,
    bytes_to_upstream: u64,
    bytes_to_downstream: u64,
    last_activity: Instant,
    linger_at: Option<Instant>,
    drain_at: Option<Instant>,
    upstream_done: bool,
    downstream_done: bool,
    limits: Limits,
    relay: Arc<Relay>,
    guard: TunnelGuard,
}

impl PlainTunnel {
    /// Join two sockets; `downstream_early`/`upstream_early` are the bytes
    /// hyper read past each handshake, written to the other side first.
    pub fn new(
        downstream: TcpStream,
        downstream_early: Bytes,
        upstream: TcpStream,
        upstream_early: Bytes,
        limits: Limits,
        relay: Arc<Relay>,
        guard: TunnelGuard,
    ) -> Self {
        PlainTunnel {
            downstream,
            upstream,
            to_upstream: Direction::new(&downstream_early),
            to_downstream: Direction::new(&upstream_early),
            bytes_to_upstream: 0,
            bytes_to_downstream: 0,
            last_activity: Instant::now(),
            linger_at: None,
            drain_at: None,
            upstream_done: false,
            downstream_done: false,
            limits,
            relay,
            guard,
        }
    }

    /// Relay until the tunnel ends; record its bytes in `/status`.
    // Not an `async fn`: its argument would be stored twice in the future
    // (once as the argument, once as the local), doubling an idle tunnel's size.
    pub fn run(self, shutdown: CancellationToken) -> impl Future<Output = Ending> + Send {
        let mut tunnel = self;
        async move {
            let mut timer = pin!(tokio::time::sleep(tunnel.limits.idle));
            let mut cancelled = pin!(shutdown.cancelled());
            let ending =
                poll_fn(|cx| tunnel.poll_tunnel(cx, timer.as_mut(), cancelled.as_mut())).await;
            tunnel.finish(&ending);
            ending
        }
    }

    /// Give pipes back and record the bytes in `/status`.
    fn finish(&mut self, ending: &Ending) {
        let pool = self.relay.pipes();
        self.to_upstream.give_back(pool);
        self.to_downstream.give_back(pool);
        self.guard
            .add_bytes(self.bytes_to_upstream, self.bytes_to_downstream);
        tracing::debug!(
            ?ending,
            bytes_to_upstream = self.bytes_to_upstream,
            bytes_to_downstream = self.bytes_to_downstream,
            "tunnel closed"
        );
    }

    fn poll_tunnel(
        &mut self,
        cx: &mut Context<'_>,
        mut timer: Pin<&mut Sleep>,
        cancelled: Pin<&mut impl Future<Output = ()>>,
    ) -> Poll<Ending> {
        let pool = self.relay.pipes();
        let mut deadlines_changed = false;
        if !self.upstream_done {
            let polled = self.to_upstream.poll_relay(
                cx,
                &self.downstream,
                &self.upstream,
                pool,
                &mut self.bytes_to_upstream,
                &mut self.last_activity,
            );
            match polled {
                Poll::Ready(Ok(())) => {
                    self.upstream_done = true;
                    deadlines_changed = true;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(ending_of(&e)),
                Poll::Pending => {}
            }
        }
        if !self.downstream_done {
            let polled = self.to_downstream.poll_relay(
                cx,
                &self.upstream,
                &self.downstream,
                pool,
                &mut self.bytes_to_downstream,
                &mut self.last_activity,
            );
            match polled {
                Poll::Ready(Ok(())) => {
                    self.downstream_done = true;
                    deadlines_changed = true;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(ending_of(&e)),
                Poll::Pending => {}
            }
        }
        if self.upstream_done && self.downstream_done {
            return Poll::Ready(Ending::Closed);
        }
        if deadlines_changed && self.linger_at.is_none() {
            self.linger_at = Some(Instant::now() + self.limits.linger);
        }
        if self.drain_at.is_none() && cancelled.poll(cx).is_ready() {
            self.drain_at = Some(Instant::now() + self.limits.drain);
            deadlines_changed = true;
        }
        if deadlines_changed {
            timer.as_mut().reset(self.next_deadline().into());
        }
        while timer.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            if self.drain_at.is_some_and(|t| t <= now) {
                return Poll::Ready(Ending::Drained);
            }
            if self.linger_at.is_some_and(|t| t <= now) {
                return Poll::Ready(Ending::HalfClosedTimeout);
            }
            if self.last_activity + self.limits.idle <= now {
                return Poll::Ready(Ending::Idle);
            }
            timer.as_mut().reset(self.next_deadline().into());
        }
        Poll::Pending
    }

    fn next_deadline(&self) -> Instant {
        let idle = self.last_activity + self.limits.idle;
        [Some(idle), self.linger_at, self.drain_at]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(idle)
    }
}

impl Drop for PlainTunnel {
    /// Also when the task is dropped unfinished (runtime teardown): pipes go
    /// back to the pool's accounting, and a non-empty one is closed.
    fn drop(&mut self) {
        let pool = self.relay.pipes();
        self.to_upstream.give_back(pool);
        self.to_downstream.give_back(pool);
    }
}

fn ending_of(e: &io::Error) -> Ending {
    Ending::Error(e.kind())
}
