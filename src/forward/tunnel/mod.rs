//! Joining the two byte streams of an upgraded connection: a call.
//!
//! After the upstream's 101 has been written to the client, both connections
//! are taken out of hyper and relayed in both directions until they close,
//! by one hand-polled [`joined::Tunnel`] with two [`direction::Direction`]s:
//!
//! - Both legs plain TCP: they are unwrapped to their sockets; small reads
//!   are copied through the worker thread's buffer ([`copy`]) and large
//!   payloads are [`splice`]d kernel to kernel through pipes borrowed from
//!   the [`pool`] only while bytes move (or copied if splice is off or
//!   unavailable).
//! - A TLS leg: the [`buffered`] path runs the same tunnel over the streams
//!   ([`leg::Stream`]), borrowing the same per-thread buffer inside one poll.
//!
//! Either way an idle tunnel holds no buffer and no pipe. Bytes hyper had
//! already read past either handshake are written to the other side first.
//!
//! Unless a route says `frames = false`, the tunnel follows the WebSocket
//! frame headers each way ([`frames`]) without touching a payload, and keeps
//! the call honest: Pings to a silent leg, a Close with a code that says why
//! when shunt ends a call, per-direction frame figures and stalls in the
//! [`crate::calls`] registry. See [`ending`] for what ends a tunnel. A reload
//! never touches a tunnel: it holds its own connections.

pub mod buffered;
pub mod copy;
pub mod direction;
pub mod ending;
pub mod frames;
pub mod joined;
pub mod leg;
pub mod pool;
pub mod relay;
pub mod splice;

use std::sync::Arc;

use bytes::Bytes;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::calls::CallGuard;
use crate::policy::rate::TunnelSlot;
use crate::stats::TunnelGuard;
pub use ending::{Ending, HALF_CLOSE_LINGER, TunnelTimers};
use joined::Tunnel;
use leg::Stream;
pub use relay::Relay;

/// What one tunnel holds for its life besides its legs.
#[derive(Debug)]
pub struct TunnelParts {
    /// Its place in `/status`.
    pub guard: TunnelGuard,
    /// Its place in `/calls`.
    pub call: CallGuard,
    /// The policy's per-client tunnel slot, released when the tunnel ends.
    pub slot: Option<TunnelSlot>,
    /// Its timers.
    pub timers: TunnelTimers,
}

/// Start relaying once both upgrades complete; the task is tracked on `tracker`
/// and ends by `shutdown`'s drain.
pub fn spawn(
    downstream: OnUpgrade,
    upstream: OnUpgrade,
    parts: TunnelParts,
    relay: Arc<Relay>,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) {
    let inner = tracker.clone();
    tracker.spawn(async move {
        let (downstream, upstream) = match tokio::try_join!(downstream, upstream) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade did not complete");
                return;
            }
        };
        let TunnelParts {
            guard,
            call,
            slot,
            timers,
        } = parts;
        match unwrap_plain(downstream, upstream) {
            // The long-lived task is exactly the tunnel's small state.
            Unwrapped::Plain(d, d_early, u, u_early) => {
                let tunnel = Tunnel::new((d, &d_early), (u, &u_early), timers, relay, guard, call);
                drop((d_early, u_early));
                inner.spawn(async move {
                    tunnel.run(shutdown).await;
                    drop(slot);
                });
            }
            Unwrapped::Buffered(d, u, d_early) => {
                let tunnel = Tunnel::new(
                    (Stream(d), &d_early),
                    (Stream(u), &[]),
                    timers,
                    relay,
                    guard,
                    call,
                );
                drop(d_early);
                tunnel.run(shutdown).await;
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
    Buffered(Box<dyn buffered::IoStream>, TokioIo<Upgraded>, Bytes),
}

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

/// The exact type `connection.rs` and `forward` hand to hyper for plain TCP.
type PlainIo = TokioIo<TcpStream>;
