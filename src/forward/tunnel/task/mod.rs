//! The tunnel task: one small struct, polled by hand, that is the whole
//! long-lived task of a call.
//!
//! Why a struct and not `async` blocks: an idle audio tunnel may live for an
//! hour and there may be ten thousand of them, so what a tunnel holds while
//! idle is what the proxy costs. Here that is its two legs, two
//! [`Direction`]s (no buffer, no pipe while idle), a few `u32` times in
//! milliseconds since the call's start, its guards, one timer and one
//! shutdown waiter.
//!
//! [`Tunnel::poll_tunnel`] is the state machine's only driver. Its parts:
//!
//! - [`deadlines`]: every deadline merged into the one timer, Pings to a
//!   silent leg, stalls;
//! - [`close`]: how shunt ends a call itself, with a Close at a frame
//!   boundary to each leg still open;
//! - [`outcome`]: why a call ended, and its end in `/status`, `/calls` and
//!   the log.

use std::future::poll_fn;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;

use super::direction::{Ctx, Direction, Done, Failed, Report};
use super::leg::Leg;
use super::mode::Relay;
use super::parts::{CLOSE_WAIT, TunnelParts};
use crate::calls::{CallGuard, DIRECTIONS, Framing, TO_DOWNSTREAM, TO_UPSTREAM};
use crate::policy::rate::TunnelSlot;
use crate::stats::TunnelGuard;
use close::Why;
use deadlines::{Ms, ms};
pub(super) use outcome::{Ending, Loss, Side};

mod close;
mod deadlines;
mod outcome;

/// Polling rounds in one wake-up before the task yields.
/// A round repeats only on a state change; the bound keeps a tunnel whose
/// state keeps changing from holding a current-thread worker: it wakes
/// itself and goes on at its next poll.
const MAX_ROUNDS: usize = 16;

/// Everything a tunnel holds.
#[derive(Debug)]
pub(super) struct Tunnel<D, U> {
    /// The downstream leg: index 0 of the per-leg arrays
    /// ([`Side::Downstream`]), the source of [`TO_UPSTREAM`].
    downstream: D,
    /// The upstream leg: index 1 ([`Side::Upstream`]), the source of [`TO_DOWNSTREAM`].
    upstream: U,
    /// [`TO_UPSTREAM`] (downstream → upstream), [`TO_DOWNSTREAM`].
    dirs: [Direction; 2],
    /// Per direction: it returned [`Done::Eof`] and is not polled again.
    done: [bool; 2],
    /// The tunnel's timer settings, converted to milliseconds once in `new`.
    timers: Ms,
    /// Times below are milliseconds since the call's start.
    /// This one: the last byte forwarded either way, shunt's own Pong excepted;
    /// the idle deadline counts from it.
    last_activity: u32,
    /// Per leg: the last byte from it.
    /// Any byte counts, a Pong too: the leg's next Ping is due
    /// `ping_interval` after it, and a byte clears `ping_out`.
    last_rx: [u32; 2],
    /// Per leg: 1 + when shunt's unanswered Ping went out; 0 = none.
    /// Set when the direction towards the leg reports the Ping written; the leg
    /// is lost at `ping_out - 1 + ping_timeout` unless a byte comes first.
    ping_out: [u32; 2],
    /// Per direction: its stall deadline is in the timer.
    /// Set by a data frame, cleared when the deadline fires: a silent direction
    /// is checked once, not on every later tick.
    stall_armed: [bool; 2],
    /// When the half-close linger ends; set once, when a direction first ends.
    linger_at: Option<u32>,
    /// When the drain ends; set once, when the shutdown token fires.
    drain_at: Option<u32>,
    /// While closing: the boundary / peer-Close deadline.
    /// Moved to now + [`CLOSE_WAIT`] whenever shunt's Close goes out, so each
    /// leg gets the whole wait for its answer.
    close_at: Option<u32>,
    /// Why shunt is closing the call. `Some` from `begin_close` on and never
    /// cleared; from then on only `close_at` is timed (no idle, Ping or stall).
    closing: Option<Why>,
    /// While closing: shunt's Close (or silence) was asked of each direction.
    requested: [bool; 2],
    /// Legs known to be gone.
    /// Nothing more is written to such a leg, and no Close is awaited from it.
    gone: [bool; 2],
    /// The direction that ended first.
    /// Who closed the call when no Close frame says so (a `u8`, not a
    /// `usize`, to keep the struct small).
    first_done: Option<u8>,
    /// The first Close an endpoint sent: its direction and code.
    /// The direction is the one the Close travelled in, so it names the
    /// sender; the code is `None` for a Close without a readable code.
    close_seen: Option<(u8, Option<u16>)>,
    /// The leg whose read or write failed, for an untracked tunnel's log.
    failed: Option<Side>,
    /// How this process joins tunnels, with the splice pipe pool: pipes are
    /// borrowed from it per burst and given back in `finish` (or on drop).
    relay: Arc<Relay>,
    /// The tunnel's `/status` gauge entry: `finish` hands it the call's byte
    /// totals, which reach the counters, with the gauge's decrement, on drop.
    guard: TunnelGuard,
    /// The call's `/calls` record, which the directions write their live
    /// figures into; `finish` records who ended it and with what code.
    call: CallGuard,
    /// The policy's per-client tunnel slot: released when the tunnel (the
    /// task's only state) is dropped, so no wrapper future is needed.
    _slot: Option<TunnelSlot>,
}

impl<D: Leg, U: Leg> Tunnel<D, U> {
    /// Join two legs, each with the bytes hyper read past its handshake
    /// (written to the other side first).
    pub(super) fn new(
        (downstream, downstream_early): (D, &[u8]),
        (upstream, upstream_early): (U, &[u8]),
        parts: TunnelParts,
        relay: Arc<Relay>,
    ) -> Self {
        let TunnelParts {
            guard,
            call,
            slot,
            timers,
            reattach: _,
        } = parts;
        let framing = if call.call.frames() {
            Framing::Tracked
        } else {
            Framing::Off
        };
        let dirs = [
            Direction::new(downstream_early, framing),
            Direction::new(upstream_early, framing),
        ];
        for (d, stats) in dirs.iter().zip(&call.call.dirs) {
            stats.framing.store(d.framing() as u8, Relaxed);
        }
        let ping_interval = match (framing, timers.ping_interval) {
            (Framing::Tracked, Some(i)) => ms(i).max(1),
            _ => 0,
        };
        Tunnel {
            downstream,
            upstream,
            dirs,
            done: [false; 2],
            timers: Ms {
                idle: ms(timers.idle),
                drain: ms(timers.drain),
                linger: ms(timers.linger),
                ping_interval,
                ping_timeout: ms(timers.ping_timeout),
                stall_after: ms(timers.stall_after).max(1),
            },
            last_activity: 0,
            last_rx: [0; 2],
            ping_out: [0; 2],
            stall_armed: [false; 2],
            linger_at: None,
            drain_at: None,
            close_at: None,
            closing: None,
            requested: [false; 2],
            gone: [false; 2],
            first_done: None,
            close_seen: None,
            failed: None,
            relay,
            guard,
            call,
            _slot: slot,
        }
    }

    /// Relay until the tunnel ends; record it in `/status` and `/calls`.
    // Not an `async fn`: its argument would be stored twice in the future
    // (once as the argument, once as the local), doubling an idle tunnel's size.
    pub(super) fn run(self, shutdown: CancellationToken) -> impl Future<Output = Ending> + Send
    where
        D: Send,
        U: Send,
    {
        let mut tunnel = self;
        async move {
            let first = tunnel.at(tunnel.next_deadline());
            let mut timer = pin!(tokio::time::sleep_until(first));
            let mut cancelled = pin!(shutdown.cancelled());
            let ending =
                poll_fn(|cx| tunnel.poll_tunnel(cx, timer.as_mut(), cancelled.as_mut())).await;
            tunnel.finish(&ending);
            ending
        }
    }

    /// Now on the tunnel's clock: milliseconds since the call's start, the
    /// unit of every `u32` time in [`Tunnel`].
    fn now_ms(&self) -> u32 {
        self.call.call.ms(Instant::now())
    }

    /// A tunnel time as the `Instant` the timer is set to (the inverse of `now_ms`).
    fn at(&self, ms: u32) -> Instant {
        self.call.call.started + Duration::from_millis(u64::from(ms))
    }

    /// Frames are followed in at least one direction (the other may have gone
    /// opaque). Then a failed leg is a lost leg, which shunt may still close
    /// with a code; otherwise an I/O error ends the tunnel at once.
    fn tracked(&self) -> bool {
        self.dirs.iter().any(|d| d.framing() == Framing::Tracked)
    }

    /// One wake-up of the task, and the state machine's only driver: poll each
    /// direction not done and take its [`Report`] into the call state, advance a
    /// close in progress or end the call, notice the shutdown token, then fire
    /// the timer. The timer goes last, so a deadline is judged on bytes that
    /// arrived in this very wake-up. Ready with the ending once the tunnel is over.
    fn poll_tunnel(
        &mut self,
        cx: &mut Context<'_>,
        mut timer: Pin<&mut Sleep>,
        mut cancelled: Pin<&mut impl Future<Output = ()>>,
    ) -> Poll<Ending> {
        // A few rounds at most: a round repeats only when a state change
        // (a Close asked for, a leg lost) needs the directions polled again.
        for _ in 0..MAX_ROUNDS {
            let mut again = false;
            let mut changed = false;
            for d in [TO_UPSTREAM, TO_DOWNSTREAM] {
                if self.done[d] {
                    continue;
                }
                let mut report = Report::default();
                let polled = self.poll_direction(cx, d, &mut report);
                changed |= self.take_report(d, report);
                match polled {
                    Poll::Pending => {}
                    Poll::Ready(Ok(Done::Eof)) => {
                        self.done[d] = true;
                        self.first_done.get_or_insert(d as u8);
                        changed = true;
                        again = true;
                    }
                    Poll::Ready(Ok(Done::Lost)) => {
                        self.first_done.get_or_insert(d as u8);
                        if let Some(e) = self.leg_lost(Side::of(d), Loss::Eof) {
                            return Poll::Ready(e);
                        }
                        changed = true;
                        again = true;
                    }
                    Poll::Ready(Err(failed)) => {
                        let (side, e) = match failed {
                            Failed::Src(e) => (Side::of(d), e),
                            Failed::Dst(e) => (Side::of(1 - d), e),
                        };
                        self.failed.get_or_insert(side);
                        if !self.tracked() {
                            return Poll::Ready(Ending::Error(e.kind()));
                        }
                        if let Some(e) = self.leg_lost(side, Loss::Error(e.kind())) {
                            return Poll::Ready(e);
                        }
                        changed = true;
                        again = true;
                    }
                }
            }
            if let Some(why) = self.closing {
                if self.advance_close() {
                    again = true;
                    changed = true;
                }
                if self.close_complete() {
                    return Poll::Ready(why.ending());
                }
            } else {
                if self.done == [true, true] || self.handshake_done() {
                    return Poll::Ready(Ending::Closed);
                }
                if self.done.contains(&true) && self.linger_at.is_none() {
                    self.linger_at = Some(self.now_ms().saturating_add(self.timers.linger));
                    changed = true;
                }
            }
            if self.drain_at.is_none() && cancelled.as_mut().poll(cx).is_ready() {
                self.drain_at = Some(self.now_ms().saturating_add(self.timers.drain));
                changed = true;
            }
            if changed {
                timer.as_mut().reset(self.at(self.next_deadline()));
            }
            while timer.as_mut().poll(cx).is_ready() {
                if let Some(e) = self.on_timer() {
                    return Poll::Ready(e);
                }
                again = true;
                timer.as_mut().reset(self.at(self.next_deadline()));
            }
            if !again {
                return Poll::Pending;
            }
        }
        // Still changing: yield to other tasks, then go on.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Poll direction `d` once with its source and destination legs
    /// (downstream → upstream for [`TO_UPSTREAM`]), its live figures in `/calls`
    /// and the pipe pool. Frames shunt writes upstream are masked,
    /// as a client's must be (RFC 6455 §5.3).
    fn poll_direction(
        &mut self,
        cx: &mut Context<'_>,
        d: usize,
        report: &mut Report,
    ) -> Poll<Result<Done, Failed>> {
        let call = &self.call.call;
        let mut ctx = Ctx {
            stats: &call.dirs[d],
            gaps: &call.metrics.gaps[d],
            start: call.started,
            mask: d == TO_UPSTREAM,
            report,
        };
        let pool = self.relay.pipes();
        if d == TO_UPSTREAM {
            self.dirs[d].poll_relay(cx, &mut self.downstream, &mut self.upstream, pool, &mut ctx)
        } else {
            self.dirs[d].poll_relay(cx, &mut self.upstream, &mut self.downstream, pool, &mut ctx)
        }
    }

    /// Take what direction `d` saw into the call state; returns whether a
    /// deadline may have moved earlier.
    fn take_report(&mut self, d: usize, r: Report) -> bool {
        let mut changed = false;
        if !(r.read || r.ping_sent || r.close_sent || r.opaque.is_some()) {
            return false;
        }
        let now = self.now_ms();
        let call = &self.call.call;
        if r.read {
            // Any byte from a leg proves it is alive. If it answers shunt's
            // Ping, the leg's next Ping (now + interval) may come before the
            // ping timeout the timer holds.
            changed |= self.ping_out[d] > 0;
            self.last_rx[d] = now;
            self.ping_out[d] = 0;
        }
        if r.active {
            self.last_activity = now;
        }
        if let Some(sent_us) = r.pong_sent_us {
            let now_us = Instant::now()
                .saturating_duration_since(call.started)
                .as_micros() as u64;
            let rtt = Duration::from_micros(now_us.saturating_sub(sent_us));
            call.legs[d].record_rtt(rtt);
            call.metrics.rtt[d].observe(rtt);
        }
        if let Some(e) = r.opaque {
            let from = Side::of(d).as_str();
            tracing::warn!(
                tunnel = call.id,
                route = call.route(),
                upstream = call.upstream(),
                peer = %call.client,
                direction = DIRECTIONS[d],
                reason = %e,
                "frames from {from} cannot be followed ({e}); relaying that direction as opaque bytes"
            );
        }
        if let Some(code) = r.close_seen {
            self.close_seen.get_or_insert((d as u8, code));
        }
        if r.data_frame && !self.stall_armed[d] {
            self.stall_armed[d] = true;
            changed = true;
        }
        if let Some(gap) = r.resumed_after_ms {
            tracing::info!(
                tunnel = call.id,
                route = call.route(),
                upstream = call.upstream(),
                peer = %call.client,
                direction = DIRECTIONS[d],
                "resumed after {:.1}s",
                f64::from(gap) / 1000.0
            );
        }
        if r.ping_sent {
            // Direction d carries shunt's Ping to the other leg.
            self.ping_out[1 - d] = now.saturating_add(1);
            call.legs[1 - d].pings_sent.fetch_add(1, Relaxed);
            changed = true;
        }
        if r.close_sent {
            self.close_at = Some(now.saturating_add(ms(CLOSE_WAIT)));
            changed = true;
        }
        changed
    }
}

impl<D, U> Drop for Tunnel<D, U> {
    /// Also when the task is dropped unfinished (runtime teardown): pipes go
    /// back to the pool's accounting, and a non-empty one is closed.
    fn drop(&mut self) {
        let pool = self.relay.pipes();
        for d in &mut self.dirs {
            d.give_back(pool);
        }
    }
}
