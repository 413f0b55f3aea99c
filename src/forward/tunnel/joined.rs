//! A joined tunnel: one small struct, polled by hand, that is the whole
//! long-lived task, with the call state of a WebSocket tunnel.
//!
//! Why a struct and not `async` blocks: an idle audio tunnel may live for an
//! hour and there may be ten thousand of them, so what a tunnel holds while
//! idle is what the proxy costs. Here that is its two legs, two
//! [`Direction`]s (no buffer, no pipe while idle), a few `u32` times in
//! milliseconds since the call's start, its guards, one timer and one
//! shutdown waiter. Every deadline — idle, linger, drain, each leg's next
//! Ping or its ping timeout, each direction's stall, the wait for a Close —
//! is merged into that one timer. It is reset only when a deadline moves
//! earlier (a half-close, the start of a drain, a Ping sent or answered, a
//! direction that starts streaming) or fires; the others are read from the
//! times of the last byte or frame when it fires, so traffic costs no timer
//! work.
//!
//! Call state (frames tracked): a leg silent for the ping interval gets a
//! Ping; no byte within the ping timeout means it is lost. When shunt ends a
//! call itself it sends each leg still open a Close at a frame boundary
//! (browser first), waits up to [`CLOSE_WAIT`] for the boundary and then for
//! the peer's Close, and closes TCP.

use std::future::poll_fn;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;

use super::direction::{CloseState, Ctx, Direction, Done, Failed, Report};
use super::ending::{CLOSE_WAIT, Ending, Loss, Side, TunnelParts};
use super::leg::Leg;
use super::relay::Relay;
use crate::calls::{CallGuard, ClosedBy, DIRECTIONS, Framing, TO_BACKEND, TO_CLIENT};
use crate::policy::rate::TunnelSlot;
use crate::stats::TunnelGuard;

/// Why shunt is closing a call itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Why {
    /// Shutdown began and the drain time ran out: 1012 (Service Restart: the
    /// client may reconnect) to the client, 1001 (Going Away) to the backend.
    Drain,
    /// No byte either way for the idle timeout: 1001 to both legs.
    Idle,
    /// A leg ended without a Close, failed, or did not answer a Ping. The
    /// other leg is told (1014 Bad Gateway to the client when the backend went,
    /// 1001 to the backend when the client did); the lost leg gets nothing.
    Lost(Side, Loss),
}

impl Why {
    /// The code shunt sends into direction `d` (towards its destination
    /// leg); `None`: that leg is gone, write nothing more to it.
    fn code(self, d: usize) -> Option<u16> {
        match (self, d) {
            (Why::Drain, TO_CLIENT) => Some(1012),
            (Why::Drain | Why::Idle, _) => Some(1001),
            (Why::Lost(Side::Backend, _), TO_CLIENT) => Some(1014),
            (Why::Lost(Side::Client, _), TO_BACKEND) => Some(1001),
            (Why::Lost(..), _) => None,
        }
    }

    /// The [`Ending`] the tunnel returns, and logs, once a close for this
    /// reason is complete (or given up).
    fn ending(self) -> Ending {
        match self {
            Why::Drain => Ending::Drained,
            Why::Idle => Ending::Idle,
            Why::Lost(side, loss) => Ending::Lost(side, loss),
        }
    }
}

/// Polling rounds in one wake-up before the task yields.
/// A round repeats only on a state change; the bound keeps a tunnel whose
/// state keeps changing from holding a current-thread worker: it wakes
/// itself and goes on at its next poll.
const MAX_ROUNDS: usize = 16;

/// Timer settings in milliseconds (`u32`: up to 49 days).
#[derive(Debug, Clone, Copy)]
struct Ms {
    /// No byte either way for this long ends the call ([`Why::Idle`]).
    idle: u32,
    /// After the shutdown token fires, how long the call may go on before
    /// shunt closes it ([`Why::Drain`]).
    drain: u32,
    /// After one direction ends (a half-close), how long the other may go on
    /// before [`Ending::HalfClosedTimeout`].
    linger: u32,
    /// 0: no pings.
    /// Set only when frames are tracked (at least 1). A leg that sent nothing
    /// for this long gets shunt's Ping.
    ping_interval: u32,
    /// After shunt's Ping, how long the leg has to send any byte before it is
    /// lost ([`Loss::PingTimeout`]).
    ping_timeout: u32,
    /// A streaming direction (5 frames/s or more) silent this long counts one
    /// stall (at least 1).
    stall_after: u32,
}

/// A duration in timer milliseconds, saturating at `u32::MAX` (49 days:
/// as good as never for a call).
fn ms(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

/// Everything a tunnel holds.
#[derive(Debug)]
pub struct Tunnel<D, U> {
    /// The client leg: index 0 of the per-leg arrays ([`Side::Client`]), the
    /// source of [`TO_BACKEND`].
    downstream: D,
    /// The backend leg: index 1 ([`Side::Backend`]), the source of [`TO_CLIENT`].
    upstream: U,
    /// [`TO_BACKEND`] (downstream → upstream), [`TO_CLIENT`].
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
    pub fn new(
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
        } = parts;
        let framing = if call.call.frames {
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
    pub fn run(self, shutdown: CancellationToken) -> impl Future<Output = Ending> + Send
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
            for d in [TO_BACKEND, TO_CLIENT] {
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
    /// (downstream → upstream for [`TO_BACKEND`]), its live figures in `/calls`
    /// and the pipe pool. Frames shunt writes towards the backend are masked,
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
            mask: d == TO_BACKEND,
            report,
        };
        let pool = self.relay.pipes();
        if d == TO_BACKEND {
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

    /// Leg `side` is gone (end without a Close, an error, a ping timeout).
    /// Returns the ending if the tunnel ends at once.
    fn leg_lost(&mut self, side: Side, loss: Loss) -> Option<Ending> {
        let l = side.index();
        self.gone[l] = true;
        // Nothing more is written to it.
        self.dirs[1 - l].drop_output();
        if self.closing.is_some() {
            return None;
        }
        self.begin_close(Why::Lost(side, loss))
    }

    /// Start closing the call with shunt's codes; the ending if there is
    /// nothing to send (frames untracked or opaque).
    fn begin_close(&mut self, why: Why) -> Option<Ending> {
        if !self.dirs.iter().any(Direction::can_inject) {
            return Some(why.ending());
        }
        self.closing = Some(why);
        self.close_at = Some(self.now_ms().saturating_add(ms(CLOSE_WAIT)));
        self.advance_close();
        if self.close_complete() {
            return Some(why.ending());
        }
        None
    }

    /// Ask each direction for shunt's Close in turn: the browser's first, so
    /// that the backend's answer to its own Close cannot reach the browser
    /// before shunt's. Returns whether anything was asked.
    fn advance_close(&mut self) -> bool {
        let Some(why) = self.closing else {
            return false;
        };
        let mut asked = false;
        for d in [TO_CLIENT, TO_BACKEND] {
            if self.requested[d] {
                continue;
            }
            let waiting = d == TO_BACKEND
                && matches!(self.dirs[TO_CLIENT].close_state(), CloseState::Pending(_));
            if waiting {
                continue;
            }
            self.requested[d] = true;
            asked = true;
            match why.code(d) {
                Some(code) if !self.gone[1 - d] => self.dirs[d].request_close(code),
                _ => self.dirs[d].drop_output(),
            }
            if !self.done[d] {
                continue;
            }
            // The direction had ended: nothing more can go through it.
            self.dirs[d].skip_close();
        }
        asked
    }

    /// Every leg has had shunt's Close answered, or gets none.
    fn close_complete(&self) -> bool {
        (0..2).all(|l| {
            let out = 1 - l;
            if !self.requested[out] {
                return false;
            }
            match self.dirs[out].close_state() {
                CloseState::Pending(_) => false,
                CloseState::Sent => self.dirs[l].close_seen() || self.done[l] || self.gone[l],
                CloseState::None | CloseState::Skipped => true,
            }
        })
    }

    /// The timer fired: act on every deadline that has passed.
    /// While closing, only the close wait counts: a direction still waiting
    /// for a frame boundary gives up its Close, the next direction is asked, and
    /// the call ends once nothing is pending. Otherwise, in order: drain,
    /// linger, idle, then per leg its ping timeout or its next Ping, then each
    /// armed stall. `Some` when the tunnel ends now.
    fn on_timer(&mut self) -> Option<Ending> {
        let now = self.now_ms();
        if let Some(why) = self.closing {
            if self.close_at.is_some_and(|t| t <= now) {
                let mut pending = false;
                for d in &mut self.dirs {
                    if let CloseState::Pending(_) = d.close_state() {
                        d.skip_close();
                    }
                }
                if self.advance_close() {
                    pending = self
                        .dirs
                        .iter()
                        .any(|d| matches!(d.close_state(), CloseState::Pending(_)));
                }
                if !pending || self.close_complete() {
                    return Some(why.ending());
                }
                self.close_at = Some(now.saturating_add(ms(CLOSE_WAIT)));
            }
            return None;
        }
        if self.drain_at.is_some_and(|t| t <= now) {
            return self.begin_close(Why::Drain);
        }
        if self.linger_at.is_some_and(|t| t <= now) {
            return Some(Ending::HalfClosedTimeout);
        }
        if self.last_activity.saturating_add(self.timers.idle) <= now {
            return self.begin_close(Why::Idle);
        }
        if self.pings_on() {
            for l in 0..2 {
                let out = 1 - l;
                if self.ping_out[l] > 0 {
                    let sent = self.ping_out[l] - 1;
                    if sent.saturating_add(self.timers.ping_timeout) <= now {
                        let side = Side::of(l);
                        if let Some(e) = self.leg_lost(side, Loss::PingTimeout) {
                            return Some(e);
                        }
                        return None;
                    }
                } else if !self.dirs[out].ping_pending()
                    && self.dirs[out].can_inject()
                    && self.last_rx[l].saturating_add(self.timers.ping_interval) <= now
                {
                    self.dirs[out].request_ping();
                }
            }
        }
        for d in 0..2 {
            if self.stall_armed[d] && self.stall_at(d).is_some_and(|t| t <= now) {
                self.stall_armed[d] = false;
                self.check_stall(d, now);
            }
        }
        None
    }

    /// The endpoints have closed the WebSocket (a Close each way, both
    /// passed on): TCP can close now, as the server would close it.
    fn handshake_done(&self) -> bool {
        self.dirs
            .iter()
            .all(|d| d.framing() == Framing::Tracked && d.close_seen() && d.flushed())
    }

    /// Pings apply: frames tracked both ways, no Close seen yet.
    fn pings_on(&self) -> bool {
        self.timers.ping_interval > 0
            && self.closing.is_none()
            && self
                .dirs
                .iter()
                .all(|d| d.framing() == Framing::Tracked && !d.close_seen())
    }

    /// When direction `d` would count a stall: its last data frame plus
    /// `stall_after`. `last_frame` is stored as 1 + ms (0: no frame yet).
    fn stall_at(&self, d: usize) -> Option<u32> {
        let last = self.call.call.dirs[d].last_frame.load(Relaxed);
        (last > 0).then(|| (last - 1).saturating_add(self.timers.stall_after))
    }

    /// Direction `d` has been silent for `stall_after`: a stall if it was
    /// carrying at least 5 frames/s.
    fn check_stall(&mut self, d: usize, now: u32) {
        let call = &self.call.call;
        let stats = &call.dirs[d];
        let last = stats.last_frame.load(Relaxed);
        if last == 0 || stats.stalled.load(Relaxed) || self.done[d] {
            return;
        }
        let sec = u64::from((last - 1) / 1000);
        let streaming = stats.in_second(sec) >= 5 || stats.in_second(sec.saturating_sub(1)) >= 5;
        if !streaming {
            return;
        }
        stats.stalled.store(true, Relaxed);
        stats.stalls.fetch_add(1, Relaxed);
        call.metrics.stalls.fetch_add(1, Relaxed);
        let silent = f64::from(now.saturating_sub(last - 1)) / 1000.0;
        let from = Side::of(d).as_str();
        tracing::warn!(
            tunnel = call.id,
            route = call.route(),
            upstream = call.upstream(),
            peer = %call.client,
            direction = DIRECTIONS[d],
            "call stalled: no frames from {from} for {silent:.1}s"
        );
    }

    /// The earliest deadline in tunnel milliseconds, for the one timer. It
    /// must consider every deadline `on_timer` acts on, in the same state
    /// (closing or not), or that deadline would wait for unrelated traffic.
    fn next_deadline(&self) -> u32 {
        let mut next = u32::MAX;
        let mut consider = |t: Option<u32>| {
            if let Some(t) = t {
                next = next.min(t);
            }
        };
        if self.closing.is_some() {
            consider(self.close_at);
            return next;
        }
        consider(Some(self.last_activity.saturating_add(self.timers.idle)));
        consider(self.linger_at);
        consider(self.drain_at);
        if self.pings_on() {
            for l in 0..2 {
                if self.ping_out[l] > 0 {
                    consider(Some(
                        (self.ping_out[l] - 1).saturating_add(self.timers.ping_timeout),
                    ));
                } else if !self.dirs[1 - l].ping_pending() && self.dirs[1 - l].can_inject() {
                    consider(Some(
                        self.last_rx[l].saturating_add(self.timers.ping_interval),
                    ));
                }
            }
        }
        for d in 0..2 {
            if self.stall_armed[d] {
                consider(self.stall_at(d));
            }
        }
        next
    }

    /// Give pipes back, record the call's end, write its one log line.
    fn finish(&mut self, ending: &Ending) {
        let pool = self.relay.pipes();
        for d in &mut self.dirs {
            d.give_back(pool);
        }
        let call = &self.call.call;
        let bytes = |d: usize| call.dirs[d].bytes.load(Relaxed);
        let frames = |d: usize| call.dirs[d].frames.load(Relaxed);
        self.guard.add_bytes(bytes(TO_BACKEND), bytes(TO_CLIENT));
        let (by, code, reason) = self.outcome(ending);
        self.call.record_end(by, code);
        let gap = |d: usize| {
            let g = call.dirs[d].largest_gap.load(Relaxed);
            (g > 0).then(|| f64::from(g - 1) / 1000.0)
        };
        let stalls: u32 = call.dirs.iter().map(|d| d.stalls.load(Relaxed)).sum();
        tracing::info!(
            tunnel = call.id,
            route = call.route(),
            upstream = call.upstream(),
            peer = %call.client,
            duration_s = call.started.elapsed().as_secs_f64(),
            bytes_to_backend = bytes(TO_BACKEND),
            bytes_to_client = bytes(TO_CLIENT),
            frames_to_backend = frames(TO_BACKEND),
            frames_to_client = frames(TO_CLIENT),
            closed_by = by.as_str(),
            code = code.map_or_else(|| "none".to_owned(), |c| c.to_string()),
            reason = %reason,
            largest_gap_to_backend_s = gap(TO_BACKEND),
            largest_gap_to_client_s = gap(TO_CLIENT),
            stalls,
            "call ended"
        );
    }

    /// Who closed the call, the close code seen or sent, and why.
    fn outcome(&self, ending: &Ending) -> (ClosedBy, Option<u16>, String) {
        let by_leg = |l: usize| {
            if l == 0 {
                ClosedBy::Client
            } else {
                ClosedBy::Backend
            }
        };
        // The code shunt sent: the browser's if it got one, else the backend's.
        let sent = [TO_CLIENT, TO_BACKEND].into_iter().find_map(|d| {
            (self.dirs[d].close_state() == CloseState::Sent)
                .then(|| self.closing.and_then(|w| w.code(d)))
                .flatten()
        });
        match *ending {
            Ending::Closed | Ending::HalfClosedTimeout => {
                let reason = if *ending == Ending::Closed {
                    "closed by the endpoints"
                } else {
                    "half-closed, the other side did not follow"
                };
                match self.close_seen {
                    Some((d, code)) => (by_leg(usize::from(d)), code, reason.to_owned()),
                    None => {
                        let first = self.first_done.map_or(0, usize::from);
                        (by_leg(first), None, reason.to_owned())
                    }
                }
            }
            Ending::Idle => (ClosedBy::Shunt, sent, "idle timeout".to_owned()),
            Ending::Drained => (
                ClosedBy::Shunt,
                sent,
                "drain timeout at shutdown".to_owned(),
            ),
            Ending::Error(kind) => {
                let side = self.failed.unwrap_or(Side::Client);
                let by = by_leg(side.index());
                (by, None, format!("{} leg failed: {kind}", side.as_str()))
            }
            Ending::Lost(side, loss) => {
                let what = match loss {
                    Loss::Eof => "ended without a Close".to_owned(),
                    Loss::Error(kind) => format!("failed: {kind}"),
                    Loss::PingTimeout => "did not answer a ping".to_owned(),
                };
                let by = if loss == Loss::PingTimeout {
                    ClosedBy::Shunt
                } else {
                    by_leg(side.index())
                };
                (by, sent, format!("{} leg {what}", side.as_str()))
            }
        }
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

#[cfg(test)]
mod size_tests {
    use std::sync::Arc;

    use tokio::net::{TcpListener, TcpStream};
    use tokio_util::sync::CancellationToken;

    use super::{Relay, Tunnel, TunnelParts};
    use crate::forward::tunnel::buffered::tests::{guards, timers};

    /// The task an idle call costs is the `run` future: the tunnel, one
    /// timer and one shutdown waiter, stored once. (Spawning it inside
    /// another `async` block stored the tunnel twice: 1,280 bytes, a
    /// 1,152-byte task cell per call instead of 768.)
    #[tokio::test]
    async fn the_tunnel_task_stores_the_tunnel_once() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let (guard, call, _registry) = guards(true);
        let parts = TunnelParts {
            guard,
            call,
            slot: None,
            timers: timers(),
        };
        let tunnel = Tunnel::new(
            (client, &[]),
            (server, &[]),
            parts,
            Arc::new(Relay::copy_only()),
        );
        let tunnel_size = size_of_val(&tunnel);
        let task = tunnel.run(CancellationToken::new());
        let waiters = size_of::<tokio::time::Sleep>()
            + size_of::<tokio_util::sync::WaitForCancellationFuture<'static>>();
        assert!(
            size_of_val(&task) <= tunnel_size + waiters + 64,
            "run future {} B for a {tunnel_size} B tunnel",
            size_of_val(&task)
        );
    }

    /// What an idle tunnel holds is what thousands of calls cost: keep it small.
    #[test]
    fn an_idle_call_stays_small() {
        assert!(size_of::<super::Tunnel<TcpStream, TcpStream>>() <= 400);
        assert!(size_of::<super::Direction>() <= 88);
        assert!(size_of::<super::super::frames::Tracker>() <= 24);
        // One registry entry per call (plus the Arc's two counters).
        assert!(size_of::<crate::calls::Call>() <= 304);
    }
}
