//! Joining the two byte streams of an upgraded connection: a call.
//!
//! After the upstream's 101 has been written to the client, the downstream
//! connection is taken out of hyper and, with the upstream one (never in
//! hyper: [`super::handshake`](mod@super::handshake)), relayed in both
//! directions until they close.
//!
//! How a tunnel starts: `forward` [`park`](Handoff::park)s it in the
//! connection's [`Handoff`]; the connection's task [`start`](Handoff::start)s
//! it once hyper lets go, and spawns the tunnel's task: one hand-polled
//! `task::Tunnel` (its close policy, deadlines and outcome are child
//! modules of `task`) with two `direction::Direction`s.
//!
//! - Both legs plain TCP: they are unwrapped to their sockets; small reads
//!   are copied through the worker thread's `buffer` and large payloads
//!   are spliced kernel to kernel through `pipes` borrowed only while
//!   bytes move (or copied if the relay `mode` is copy).
//! - A TLS leg: the same tunnel runs over the streams (`leg::Stream`),
//!   borrowing the same per-thread buffer inside one poll.
//!
//! Either way an idle tunnel holds no buffer and no pipe. Bytes hyper had
//! already read past either handshake are written to the other side first.
//!
//! Unless a route says `frames = false`, the tunnel follows the WebSocket
//! frame headers each way ([`frames`]) without touching a payload, and keeps
//! the call honest: Pings to a silent leg and a Close with a code that says
//! why when shunt ends a call (`control`), per-direction frame figures and
//! stalls in the [`crate::calls`] registry. `parts` holds what a tunnel
//! keeps for its life. On a route with `backend_loss = "reattach"` the
//! upstream leg is a `reattach::Reattaching`, which replaces a lost backend
//! connection under the live call (always the buffered path). A reload never touches a tunnel: it holds its own
//! connections.

mod buffer;
mod control;
mod direction;
pub mod frames;
mod leg;
mod mode;
mod parts;
mod pipes;
mod reattach;
mod task;
#[cfg(test)]
mod tests;

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::dial::UpstreamStream;
use leg::{IoStream, Stream};
pub(crate) use mode::Relay;
pub(crate) use parts::{TunnelParts, TunnelTimers};
use reattach::Reattaching;
pub(crate) use reattach::{ReattachPlan, Redial, RedialError, Redialed};
use task::Tunnel;

/// Per downstream connection: where a WebSocket handshake that the upstream
/// answered with 101 leaves its tunnel, for the connection's own task to
/// start once hyper has written the 101 and let go of the connection.
///
/// `connection::serve` makes one per connection and lends it to every
/// request (`proxy::handle` → `forward::forward`, which [`park`](Self::park)s
/// the tunnel here); when hyper's connection future ends, the connection
/// calls [`start`](Self::start). So a call costs two tasks, the connection's
/// and the tunnel's, and no task waits for the upgrade on the side. The
/// slot is a `Mutex` only because the connection's future must be `Send`:
/// it is never contended.
#[derive(Debug, Default)]
pub(crate) struct Handoff(Mutex<Option<Pending>>);

/// A tunnel whose upstream has answered 101, waiting for hyper to write
/// that answer to the client and hand the downstream connection over.
#[derive(Debug)]
struct Pending {
    /// The downstream connection, once the 101 is written.
    downstream: OnUpgrade,
    /// The upstream connection after its 101, with the bytes read past that head.
    upstream: (UpstreamStream, Bytes),
    parts: TunnelParts,
}

impl Handoff {
    /// Leave a tunnel to be started when the connection's HTTP part ends:
    /// `downstream` completes once hyper has written the 101; `upstream` is
    /// the upstream connection after its 101, with the bytes read past that
    /// head. A connection upgrades at most once (hyper serves nothing after
    /// a 101), so the slot is empty here.
    pub(crate) fn park(
        &self,
        downstream: OnUpgrade,
        upstream: (UpstreamStream, Bytes),
        parts: TunnelParts,
    ) {
        *self.slot() = Some(Pending {
            downstream,
            upstream,
            parts,
        });
    }

    fn slot(&self) -> MutexGuard<'_, Option<Pending>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// After the connection's HTTP part has ended: if a handshake parked a
    /// tunnel, wait for the downstream upgrade, then spawn the tunnel on
    /// `tracker`, joined the way `relay` says; `shutdown` starts its drain.
    pub(crate) async fn start(
        self,
        relay: &Arc<Relay>,
        shutdown: &CancellationToken,
        tracker: &TaskTracker,
    ) {
        let pending = self.0.into_inner().unwrap_or_else(PoisonError::into_inner);
        if let Some(pending) = pending {
            pending
                .start(relay.clone(), shutdown.clone(), tracker)
                .await;
        }
    }
}

impl Pending {
    /// Wait for the downstream upgrade, then spawn the tunnel on `tracker`:
    /// the long-lived task is exactly the tunnel's small state.
    async fn start(self, relay: Arc<Relay>, shutdown: CancellationToken, tracker: &TaskTracker) {
        let Pending {
            downstream,
            upstream,
            mut parts,
        } = self;
        let downstream = match downstream.await {
            Ok(upgraded) => upgraded,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade did not complete");
                return;
            }
        };
        // The task is the tunnel's `run` future itself: wrapping it in
        // another `async` block would store the tunnel twice (once captured,
        // once inside the awaited future), doubling an idle call's task.
        if let Some(plan) = parts.reattach.take() {
            // A reattachable call: always the buffered path, its upstream
            // leg able to become any new upstream stream.
            let (d, d_early) = buffered(downstream);
            let (u, u_early) = upstream;
            let call = parts.call.call.clone();
            let u = Reattaching::new(u, u_early, plan, call);
            let tunnel = Tunnel::new((Stream(d), &d_early), (u, &[]), parts, relay);
            drop(d_early);
            tracker.spawn(tunnel.run(shutdown));
            return;
        }
        match unwrap_plain(downstream, upstream) {
            Unwrapped::Plain(d, d_early, u, u_early) => {
                let tunnel = Tunnel::new((d, &d_early), (u, &u_early), parts, relay);
                drop((d_early, u_early));
                tracker.spawn(tunnel.run(shutdown));
            }
            Unwrapped::Buffered(d, d_early, u, u_early) => {
                let tunnel =
                    Tunnel::new((Stream(d), &d_early), (Stream(u), &u_early), parts, relay);
                drop((d_early, u_early));
                tracker.spawn(tunnel.run(shutdown));
            }
        }
    }
}

/// The two legs after trying to unwrap them to sockets, each with the bytes
/// read past its handshake (to be written to the other leg first).
enum Unwrapped {
    /// Both plain TCP.
    Plain(TcpStream, Bytes, TcpStream, Bytes),
    /// A TLS leg: relay through buffers.
    Buffered(Box<dyn IoStream>, Bytes, UpstreamStream, Bytes),
}

/// Downcast the downstream leg to the exact type `connection.rs` gives hyper
/// for plain TCP; the upstream one is plain unless it is TLS.
fn unwrap_plain(downstream: Upgraded, upstream: (UpstreamStream, Bytes)) -> Unwrapped {
    let (upstream, u_early) = upstream;
    match (downstream.downcast::<PlainIo>(), upstream) {
        (Ok(d), UpstreamStream::Plain(u)) => {
            Unwrapped::Plain(d.io.into_inner(), d.read_buf, u, u_early)
        }
        // A TLS upstream: copy, downstream's early bytes first.
        (Ok(d), upstream) => {
            Unwrapped::Buffered(Box::new(d.io.into_inner()), d.read_buf, upstream, u_early)
        }
        // A TLS downstream: `Upgraded` yields its own early bytes.
        (Err(downstream), upstream) => Unwrapped::Buffered(
            Box::new(TokioIo::new(downstream)),
            Bytes::new(),
            upstream,
            u_early,
        ),
    }
}

/// The downstream leg as a stream to relay through buffers, with the bytes
/// read past its handshake.
fn buffered(downstream: Upgraded) -> (Box<dyn IoStream>, Bytes) {
    match downstream.downcast::<PlainIo>() {
        Ok(d) => (Box::new(d.io.into_inner()), d.read_buf),
        Err(downstream) => (Box::new(TokioIo::new(downstream)), Bytes::new()),
    }
}

/// The exact type `connection.rs` hands to hyper for plain TCP.
type PlainIo = TokioIo<TcpStream>;
