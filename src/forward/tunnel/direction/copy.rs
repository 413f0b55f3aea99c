//! The copy path: one read into the worker thread's buffer, written at
//! once; only a remainder the destination did not take is kept, in `rest`.

use std::io;
use std::task::{Context, Poll, ready};

use super::bulk::BULK;
use super::{CloseState, Ctx, Direction, Failed};
use crate::calls::Framing;
use crate::forward::tunnel::buffer::BUFFER_SIZE;
use crate::forward::tunnel::control::PING_LEN;
use crate::forward::tunnel::frames::MAX_CONTROL_FRAME;
use crate::forward::tunnel::leg::Leg;

impl Direction {
    /// How much one copy read may take: everything, unless a frame boundary
    /// must not be crossed (shunt's frame waits) or the next header of a
    /// bulk stream is read (its payload is spliced).
    pub(super) fn read_cap(&self) -> usize {
        if self.framing != Framing::Tracked || self.discard {
            return BUFFER_SIZE;
        }
        let mut cap = BUFFER_SIZE;
        if self.bulk && self.frames.payload_left() == 0 {
            // Room for a header, or a whole control frame.
            cap = MAX_CONTROL_FRAME;
        }
        if self.ping || matches!(self.close, CloseState::Pending(_)) {
            let left = if self.held {
                // The held frame's own end (its length byte, if not there yet).
                let total = self
                    .rest
                    .get(1)
                    .map_or(2, |b1| 2 + if b1 & 0x80 != 0 { 4 } else { 0 } + PING_LEN);
                (total - self.rest.len()) as u64
            } else {
                self.frames.until_boundary()
            };
            if left > 0 {
                cap = cap.min(usize::try_from(left).unwrap_or(usize::MAX));
            }
        }
        if self.held {
            // Room for the held bytes, put back in front of the read.
            cap = cap.saturating_add(self.rest.len()).min(BUFFER_SIZE);
        }
        cap
    }

    /// Read once into `buf` and write at once; keep only what `dst` did not take.
    pub(super) fn copy_step<S: Leg, D: Leg>(
        &mut self,
        cx: &mut Context<'_>,
        src: &mut S,
        dst: &mut D,
        buf: &mut [u8],
        splice_ok: bool,
        ctx: &mut Ctx<'_>,
    ) -> Poll<Result<(), Failed>> {
        let held = if self.held { self.rest.len() } else { 0 };
        let n = ready!(src.poll_recv(cx, &mut buf[held..])).map_err(Failed::Src)?;
        if n == 0 {
            self.eof = true;
            if self.held {
                self.release_held(ctx);
            }
            return Poll::Ready(Ok(()));
        }
        ctx.report.read = true;
        if self.held {
            // The held start of a frame goes back in front of what came next.
            buf[..held].copy_from_slice(&self.rest);
            self.rest = Vec::new();
            self.held = false;
        }
        let n = held + n;
        let len = if self.framing == Framing::Tracked {
            // The first bytes may be a header already seen in a peek.
            let seen = n.min(usize::from(self.head_in_socket));
            self.head_in_socket -= seen as u8;
            let len = self.scan(buf, seen, n, true, ctx);
            if self.framing == Framing::Tracked {
                self.bulk = splice_ok && self.frames.payload_left() >= BULK as u64;
            }
            len
        } else {
            self.bulk = splice_ok && n >= BULK;
            n
        };
        if self.discard || self.dst_gone || len == 0 {
            return Poll::Ready(Ok(()));
        }
        ctx.report.active = true;
        let mut written = 0;
        while written < len {
            match dst.poll_send(cx, &buf[written..len]) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(Failed::Dst(io::ErrorKind::WriteZero.into())));
                }
                Poll::Ready(Ok(m)) => written += m,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(Failed::Dst(e))),
                Poll::Pending => break,
            }
        }
        ctx.stats
            .bytes
            .fetch_add(written as u64, std::sync::atomic::Ordering::Relaxed);
        self.rest.extend_from_slice(&buf[written..len]);
        self.flush = true;
        Poll::Ready(Ok(()))
    }

    pub(super) fn poll_write_rest<D: Leg>(
        &mut self,
        cx: &mut Context<'_>,
        dst: &mut D,
        ctx: &Ctx<'_>,
    ) -> Poll<io::Result<()>> {
        let m = ready!(dst.poll_send(cx, &self.rest))?;
        if m == 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        ctx.stats
            .bytes
            .fetch_add(m as u64, std::sync::atomic::Ordering::Relaxed);
        if m == self.rest.len() {
            // Free it: an idle direction keeps no allocation.
            self.rest = Vec::new();
        } else {
            self.rest.drain(..m);
        }
        self.flush = true;
        Poll::Ready(Ok(()))
    }
}
