//! A tunnel's clock: every deadline in one timer.
//!
//! Idle, linger, drain, each leg's next Ping or its ping timeout, each
//! direction's stall, the wait for a Close: all are merged into the task's
//! one timer. It is reset only when a deadline moves earlier (a half-close,
//! the start of a drain, a Ping sent or answered, a direction that starts
//! streaming) or fires; the others are read from the times of the last byte
//! or frame when it fires, so traffic costs no timer work.
//!
//! Pings (frames tracked): a leg silent for the ping interval gets shunt's
//! Ping; no byte within the ping timeout means it is lost.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use super::close::Why;
use super::{Ending, Loss, Side, Tunnel};
use crate::calls::{DIRECTIONS, Framing};
use crate::forward::tunnel::direction::CloseState;
use crate::forward::tunnel::leg::Leg;
use crate::forward::tunnel::parts::CLOSE_WAIT;

/// Timer settings in milliseconds (`u32`: up to 49 days).
#[derive(Debug, Clone, Copy)]
pub(super) struct Ms {
    /// No byte either way for this long ends the call ([`Why::Idle`]).
    pub(super) idle: u32,
    /// After the shutdown token fires, how long the call may go on before
    /// shunt closes it ([`Why::Drain`]).
    pub(super) drain: u32,
    /// After one direction ends (a half-close), how long the other may go on
    /// before [`Ending::HalfClosedTimeout`].
    pub(super) linger: u32,
    /// 0: no pings.
    /// Set only when frames are tracked (at least 1). A leg that sent nothing
    /// for this long gets shunt's Ping.
    pub(super) ping_interval: u32,
    /// After shunt's Ping, how long the leg has to send any byte before it is
    /// lost ([`Loss::PingTimeout`]).
    pub(super) ping_timeout: u32,
    /// A streaming direction (5 frames/s or more) silent this long counts one
    /// stall (at least 1).
    pub(super) stall_after: u32,
}

/// A duration in timer milliseconds, saturating at `u32::MAX` (49 days:
/// as good as never for a call).
pub(super) fn ms(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

impl<D: Leg, U: Leg> Tunnel<D, U> {
    /// The timer fired: act on every deadline that has passed.
    /// While closing, only the close wait counts: a direction still waiting
    /// for a frame boundary gives up its Close, the next direction is asked, and
    /// the call ends once nothing is pending. Otherwise, in order: drain,
    /// linger, idle, then per leg its ping timeout or its next Ping, then each
    /// armed stall. `Some` when the tunnel ends now.
    pub(super) fn on_timer(&mut self) -> Option<Ending> {
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
                        if side == Side::Upstream && self.upstream.replace_silent() {
                            // A reattachable backend leg is being replaced: its
                            // silence is the gap, not a loss.
                            self.ping_out[l] = 0;
                            self.last_rx[l] = now;
                            continue;
                        }
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

    /// The earliest deadline in tunnel milliseconds, for the one timer. It
    /// must consider every deadline `on_timer` acts on, in the same state
    /// (closing or not), or that deadline would wait for unrelated traffic.
    pub(super) fn next_deadline(&self) -> u32 {
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

    /// Pings apply: frames tracked both ways, no Close seen yet.
    pub(super) fn pings_on(&self) -> bool {
        self.timers.ping_interval > 0
            && self.closing.is_none()
            && self
                .dirs
                .iter()
                .all(|d| d.framing() == Framing::Tracked && !d.close_seen())
    }

    /// When direction `d` would count a stall: its last data frame plus
    /// `stall_after`. `last_frame` is stored as 1 + ms (0: no frame yet).
    pub(super) fn stall_at(&self, d: usize) -> Option<u32> {
        let last = self.call.call.dirs[d].last_frame.load(Relaxed);
        (last > 0).then(|| (last - 1).saturating_add(self.timers.stall_after))
    }

    /// Direction `d` has been silent for `stall_after`: a stall if it was
    /// carrying at least 5 frames/s.
    pub(super) fn check_stall(&mut self, d: usize, now: u32) {
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
}
