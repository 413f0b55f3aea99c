//! Following a direction's frames in the bytes the copy path holds:
//! counting them into `/calls`, noting a Close and its code, cutting out the
//! Pong that answers shunt's Ping (held back while it arrives split), and
//! turning the direction opaque when its framing cannot be followed.

use tokio::time::Instant;

use super::{CloseState, Ctx, Direction};
use crate::calls::Framing;
use crate::forward::tunnel::control::{shunt_pong, split_shunt_pong};
use crate::forward::tunnel::frames::{self, FrameError, Header};

impl Direction {
    /// Follow the frames in `buf[from..n]`, record them, and cut out shunt's own
    /// Pongs; returns the length of what is left to forward. With `hold`, a
    /// frame at the end that may be shunt's Pong but is not whole yet is
    /// moved to `rest` and held (`rest` is empty when `hold` is asked).
    pub(super) fn scan(
        &mut self,
        buf: &mut [u8],
        from: usize,
        n: usize,
        hold: bool,
        ctx: &mut Ctx<'_>,
    ) -> usize {
        let now_ms = ctx.ms(Instant::now());
        let mut at = from;
        let mut len = n;
        while at < len {
            let began_here = self.frames.at_boundary();
            if hold
                && began_here
                && !self.frames.closed()
                && !self.discard
                && split_shunt_pong(&buf[at..len])
            {
                self.rest.extend_from_slice(&buf[at..len]);
                self.held = true;
                return at;
            }
            let (k, header) = match self.frames.feed(&buf[at..len]) {
                Ok(step) => step,
                Err(e) => {
                    self.go_opaque(e, ctx);
                    return len;
                }
            };
            at += k;
            let Some(h) = header else { continue };
            let plen = usize::try_from(h.len).unwrap_or(usize::MAX);
            let whole = began_here && h.is_control() && at + plen <= len;
            if whole
                && h.opcode == frames::OP_PONG
                && let Some(sent) = shunt_pong(&buf[at..at + plen], h.mask)
            {
                // Cut the whole frame out: it answers shunt, not the other endpoint.
                let start = at - usize::from(h.header_len);
                buf.copy_within(at + plen..len, start);
                len -= usize::from(h.header_len) + plen;
                self.frames.skip(h.len);
                at = start;
                ctx.report.pong_sent_us = Some(sent);
                continue;
            }
            self.record(&h, now_ms, ctx);
            if h.opcode == frames::OP_CLOSE {
                let code = (whole && plen >= 2).then(|| {
                    let mut two = [0; 2];
                    frames::unmask_into(&buf[at..at + 2], h.mask, &mut two);
                    u16::from_be_bytes(two)
                });
                ctx.report.close_seen = Some(code);
                // No Ping of shunt's may follow an endpoint's Close.
                self.ping = false;
            }
        }
        len
    }

    /// The source ended with a frame held: pass its start on as the begun
    /// frame it is (or drop it, if nothing more is forwarded).
    pub(super) fn release_held(&mut self, ctx: &mut Ctx<'_>) {
        self.held = false;
        let mut start = std::mem::take(&mut self.rest);
        if self.discard || self.dst_gone {
            return;
        }
        let n = start.len();
        let len = self.scan(&mut start, 0, n, false, ctx);
        start.truncate(len);
        self.rest = start;
    }

    /// Count one frame in the direction's figures.
    pub(super) fn record(&mut self, h: &Header, now_ms: u32, ctx: &mut Ctx<'_>) {
        use std::sync::atomic::Ordering::Relaxed;
        let s = ctx.stats;
        s.frames.fetch_add(1, Relaxed);
        if !h.is_data() {
            return;
        }
        if h.fin {
            s.messages.fetch_add(1, Relaxed);
        }
        let last = s.last_frame.load(Relaxed);
        if last > 0 {
            let gap = now_ms.saturating_sub(last - 1);
            ctx.gaps
                .observe(std::time::Duration::from_millis(u64::from(gap)));
            if gap + 1 > s.largest_gap.load(Relaxed) {
                s.largest_gap.store(gap + 1, Relaxed);
            }
            if s.stalled.load(Relaxed) {
                s.stalled.store(false, Relaxed);
                ctx.report.resumed_after_ms = Some(gap);
            }
        }
        s.last_frame.store(now_ms.saturating_add(1), Relaxed);
        s.count_second(now_ms);
        ctx.report.data_frame = true;
    }

    pub(super) fn go_opaque(&mut self, e: FrameError, ctx: &mut Ctx<'_>) {
        self.framing = Framing::Opaque;
        ctx.stats
            .framing
            .store(Framing::Opaque as u8, std::sync::atomic::Ordering::Relaxed);
        ctx.report.opaque = Some(e);
        self.ping = false;
        if let CloseState::Pending(_) = self.close {
            self.close = CloseState::Skipped;
            self.discard = true;
        }
    }
}
