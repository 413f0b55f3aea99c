//! One direction of a tunnel, as a small poll-driven state machine rather
//! than nested `async` blocks, over any two [`Leg`]s.
//!
//! Why hand-written: thousands of idle audio tunnels must cost almost
//! nothing. Each `.await` on tokio's `readable()`/`writable()` keeps a waiter
//! node in the task's future, and nested async functions add up to
//! kilobytes per tunnel. Polling readiness instead uses the waker slot each
//! socket already has for its one reader and its one writer, so an idle
//! direction is a few words: no buffer, no pipe, no waiter.
//!
//! Small reads (audio frames, chat) are copied: read into the worker
//! thread's buffer and written at once; only a remainder the destination did
//! not take is kept, in a `Vec` of exactly that size. Between two plain TCP
//! legs, a large payload is spliced kernel to kernel through a pipe borrowed
//! from the [`PipePool`], given back the moment the pipe is empty and the
//! source has nothing more. Without splice, or when the pool is exhausted,
//! every read is copied.
//!
//! With frames tracked ([`Framing::Tracked`]) the [`Tracker`] reads each
//! header in the bytes the copy path already holds; a large payload is
//! spliced for exactly the length its header gave. In a bulk stream the next
//! header is peeked in place (`MSG_PEEK`, at most 14 bytes): a large data
//! frame is then spliced whole, header and payload; anything else is read
//! through the copy path. shunt's own Ping and Close go
//! out only at a frame boundary: while one waits, reads stop at the end of
//! the current frame. The Pong that answers shunt's Ping is cut out, also
//! when it arrives split across reads: at a boundary, the start of a frame
//! that may be it (at most 18 bytes) is held back, and nothing is written
//! after it, until the frame is whole. Framing the tracker cannot follow
//! turns the direction into a plain relay ([`Framing::Opaque`]).
//!
//! Its parts: [`copy`] (reads through the worker thread's buffer, and the
//! remainder a destination did not take), [`bulk`] (large payloads spliced
//! through a borrowed pipe), [`scan`] (following the frames, cutting out the
//! Pong that answers shunt). shunt's own frames come from
//! [`super::control`].

use std::io;
use std::task::{Context, Poll, ready};

use tokio::time::Instant;

use super::buffer::with_buffer;
use super::control::{self, CloseCode};
use super::frames::{FrameError, Tracker};
use super::leg::Leg;
use super::pipes::{Pipe, PipePool};
use crate::calls::{DirStats, Framing, Histogram};
use bulk::Bulk;

mod bulk;
mod copy;
mod scan;

/// shunt's own Close towards the destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CloseState {
    /// None asked for.
    None,
    /// Waiting for a frame boundary.
    Pending(CloseCode),
    /// Written (the rest of its bytes may still be in `rest`).
    Sent,
    /// Not sent: no boundary came in time, the source's bytes are gone, or
    /// a Close already passed.
    Skipped,
}

/// What a direction ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Done {
    /// The source ended; the end was passed on (or nothing is forwarded any more).
    Eof,
    /// A tracked source ended without a Close: the tunnel decides what the
    /// destination is told. Nothing was done to the destination.
    Lost,
}

/// Which side of a direction failed.
#[derive(Debug)]
pub(super) enum Failed {
    /// Reading the source.
    Src(io::Error),
    /// Writing the destination.
    Dst(io::Error),
}

/// What one poll saw, for the tunnel's call state.
#[derive(Debug, Default)]
pub(super) struct Report {
    /// Bytes came from the source (its leg is alive).
    pub read: bool,
    /// Bytes other than shunt's own Pong were forwarded (idle activity).
    pub active: bool,
    /// A Pong answering shunt's Ping, with that Ping's send time (µs since the call's start).
    pub pong_sent_us: Option<u64>,
    /// The framing could not be followed any more.
    pub opaque: Option<FrameError>,
    /// A Close passed, with its code if it was readable.
    pub close_seen: Option<Option<u16>>,
    /// A data frame passed.
    pub data_frame: bool,
    /// The direction was stalled and a data frame ended it after this gap (ms).
    pub resumed_after_ms: Option<u32>,
    /// shunt's Ping went out.
    pub ping_sent: bool,
    /// shunt's Close went out.
    pub close_sent: bool,
}

/// What a direction writes its figures into.
#[derive(Debug)]
pub(super) struct Ctx<'a> {
    /// The direction's live figures.
    pub stats: &'a DirStats,
    /// The route's gap histogram for this direction.
    pub gaps: &'a Histogram,
    /// The call's start: times are milliseconds since then.
    pub start: Instant,
    /// Frames shunt writes to this destination are masked (it is the upstream).
    pub mask: bool,
    /// What this poll saw.
    pub report: &'a mut Report,
}

impl Ctx<'_> {
    fn ms(&self, now: Instant) -> u32 {
        u32::try_from(now.saturating_duration_since(self.start).as_millis()).unwrap_or(u32::MAX)
    }
}

/// State of one direction; the caller gives its pipe back ([`Direction::give_back`])
/// when the tunnel ends.
#[derive(Debug)]
pub(super) struct Direction {
    /// A borrowed pipe, held only while a burst is in flight.
    pipe: Option<Pipe>,
    /// Bytes to write before anything else (a partial write's remainder,
    /// the bytes read past the handshake, the rest of shunt's own frame);
    /// empty holds no allocation.
    rest: Vec<u8>,
    frames: Tracker,
    framing: Framing,
    close: CloseState,
    /// shunt's Ping waits for a frame boundary.
    ping: bool,
    /// The source reached end of stream.
    eof: bool,
    /// The last payload (or untracked read) was large: splice (if a pool is given).
    bulk: bool,
    /// The destination may hold buffered bytes (TLS).
    flush: bool,
    /// Forward nothing more that is read (shunt closed the destination, or it is gone).
    discard: bool,
    /// `rest` holds bytes read past the handshake whose frames are not counted yet.
    unscanned: bool,
    /// Bytes of a peeked header (already counted) still in the socket, to be
    /// spliced ahead of its payload.
    head_in_socket: u8,
    /// The destination is gone: write nothing at all.
    dst_gone: bool,
    /// `rest` holds the start of a frame that may be shunt's Pong, split
    /// across reads: not written (nor anything after it) until it is whole.
    held: bool,
}

impl Direction {
    /// A direction that first writes `first` (bytes read past the handshake),
    /// whose frames are followed unless `framing` says otherwise.
    pub(super) fn new(first: &[u8], framing: Framing) -> Self {
        Direction {
            pipe: None,
            rest: first.to_vec(),
            frames: Tracker::default(),
            framing,
            close: CloseState::None,
            ping: false,
            eof: false,
            bulk: false,
            flush: false,
            discard: false,
            dst_gone: false,
            unscanned: !first.is_empty(),
            head_in_socket: 0,
            held: false,
        }
    }

    /// Everything read has been written (nothing in `rest`, the pipe or a TLS buffer).
    pub(super) fn flushed(&self) -> bool {
        self.rest.is_empty() && !self.flush && self.pipe.as_ref().is_none_or(|p| p.pending == 0)
    }

    /// How this direction's frames are followed.
    pub(super) fn framing(&self) -> Framing {
        self.framing
    }

    /// shunt's Close towards the destination.
    pub(super) fn close_state(&self) -> CloseState {
        self.close
    }

    /// A Close has passed from the source.
    pub(super) fn close_seen(&self) -> bool {
        self.frames.closed()
    }

    /// Whether shunt may write its own frames into this direction.
    pub(super) fn can_inject(&self) -> bool {
        self.framing == Framing::Tracked
            && !self.frames.closed()
            && !self.discard
            && self.close == CloseState::None
    }

    /// Send shunt's Ping at the next frame boundary.
    pub(super) fn request_ping(&mut self) {
        if self.can_inject() {
            self.ping = true;
        }
    }

    /// A Ping is waiting for a boundary.
    pub(super) fn ping_pending(&self) -> bool {
        self.ping
    }

    /// Send shunt's Close with `code` at the next frame boundary; if it
    /// cannot be sent at all, forward nothing more instead.
    pub(super) fn request_close(&mut self, code: CloseCode) {
        if self.close != CloseState::None {
            return;
        }
        if self.can_inject() {
            self.close = CloseState::Pending(code);
        } else {
            self.close = CloseState::Skipped;
            self.discard = true;
        }
        self.ping = false;
    }

    /// No boundary came in time: give up on the Close, forward nothing more.
    pub(super) fn skip_close(&mut self) {
        if let CloseState::Pending(_) = self.close {
            self.close = CloseState::Skipped;
        }
        self.discard = true;
    }

    /// The destination is gone: write nothing more to it.
    pub(super) fn drop_output(&mut self) {
        self.skip_close();
        self.dst_gone = true;
        self.rest = Vec::new();
        self.held = false;
    }

    /// Move bytes `src` → `dst` until EOF, then half-close `dst` (or report
    /// [`Done::Lost`]); splices through pipes from `pool` if given and both
    /// legs are sockets. After a failure the failed side is not used again.
    pub(super) fn poll_relay<S: Leg, D: Leg>(
        &mut self,
        cx: &mut Context<'_>,
        src: &mut S,
        dst: &mut D,
        pool: Option<&PipePool>,
        ctx: &mut Ctx<'_>,
    ) -> Poll<Result<Done, Failed>> {
        let polled = self.poll_relay_inner(cx, src, dst, pool, ctx);
        match &polled {
            Poll::Ready(Err(Failed::Src(_))) => {
                self.eof = true;
                self.give_back(pool);
            }
            Poll::Ready(Err(Failed::Dst(_))) => {
                self.drop_output();
                self.give_back(pool);
            }
            _ => {}
        }
        polled
    }

    fn poll_relay_inner<S: Leg, D: Leg>(
        &mut self,
        cx: &mut Context<'_>,
        src: &mut S,
        dst: &mut D,
        pool: Option<&PipePool>,
        ctx: &mut Ctx<'_>,
    ) -> Poll<Result<Done, Failed>> {
        let pool = pool.filter(|_| src.socket().is_some() && dst.socket().is_some());
        if self.unscanned {
            // The bytes read past the handshake are frames like any others.
            self.unscanned = false;
            if self.framing == Framing::Tracked {
                let mut first = std::mem::take(&mut self.rest);
                let n = first.len();
                let len = self.scan(&mut first, 0, n, false, ctx);
                first.truncate(len);
                self.rest = first;
            }
        }
        loop {
            if self.dst_gone {
                self.rest = Vec::new();
                self.held = false;
                if let Some(p) = &mut self.pipe
                    && p.pending > 0
                {
                    // Its bytes can go nowhere: the pool will close it.
                    self.give_back(pool);
                }
            }
            if self.pipe.as_ref().is_some_and(|p| p.pending > 0) {
                ready!(self.poll_drain_pipe(cx, dst, ctx)).map_err(Failed::Dst)?;
                continue;
            }
            if !self.rest.is_empty() && !self.held {
                ready!(self.poll_write_rest(cx, dst, ctx)).map_err(Failed::Dst)?;
                continue;
            }
            if self.flush && !self.dst_gone {
                ready!(dst.poll_flush(cx)).map_err(Failed::Dst)?;
                self.flush = false;
            }
            let boundary = self.frames.at_boundary() && !self.held;
            if boundary && !self.discard && self.framing == Framing::Tracked {
                if let CloseState::Pending(code) = self.close {
                    self.write_close(code, ctx);
                    continue;
                }
                if self.ping {
                    self.write_ping(ctx);
                    continue;
                }
            }
            if self.eof {
                self.give_back(pool);
                self.ping = false;
                if let CloseState::Pending(_) = self.close {
                    // Mid-frame, and the source's bytes are gone: no Close.
                    self.close = CloseState::Skipped;
                    self.discard = true;
                }
                // An end mid-frame is not a WebSocket close at all: the
                // frame's bytes are gone, so pass the end on as a byte relay.
                let clean = self.framing != Framing::Tracked
                    || self.frames.closed()
                    || !self.frames.at_boundary();
                if !self.discard && !clean {
                    return Poll::Ready(Ok(Done::Lost));
                }
                if !self.dst_gone && (!self.discard || self.close == CloseState::Sent) {
                    ready!(dst.poll_half_close(cx));
                }
                return Poll::Ready(Ok(Done::Eof));
            }
            if let (Some(pool), Some(s)) = (pool, src.socket())
                && self.bulk
                && !self.discard
            {
                match self.bulk_step(cx, s, pool, ctx) {
                    Bulk::Again => continue,
                    Bulk::Idle => return Poll::Pending,
                    Bulk::Failed(e) => return Poll::Ready(Err(Failed::Src(e))),
                    Bulk::Copy => {}
                }
            }
            let cap = self.read_cap();
            let splice_ok = pool.is_some();
            let step =
                with_buffer(|buf| self.copy_step(cx, src, dst, &mut buf[..cap], splice_ok, ctx));
            match step {
                Poll::Pending => {
                    self.give_back(pool);
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {}
            }
        }
    }

    /// Queue shunt's Ping (it goes out before anything else read).
    fn write_ping(&mut self, ctx: &mut Ctx<'_>) {
        self.ping = false;
        let sent_us = Instant::now()
            .saturating_duration_since(ctx.start)
            .as_micros() as u64;
        control::queue_ping(&mut self.rest, sent_us, ctx.mask);
        ctx.report.ping_sent = true;
    }

    /// Queue shunt's Close; nothing more is forwarded to this destination.
    fn write_close(&mut self, code: CloseCode, ctx: &mut Ctx<'_>) {
        control::queue_close(&mut self.rest, code, ctx.mask);
        self.close = CloseState::Sent;
        // One Close per leg: nothing more goes to this destination.
        self.discard = true;
        self.ping = false;
        ctx.report.close_sent = true;
    }

    /// Give the pipe (if any) back to `pool`; the pool closes it if it still
    /// holds bytes (a tunnel that ended mid-burst).
    pub(super) fn give_back(&mut self, pool: Option<&PipePool>) {
        if let (Some(pool), Some(pipe)) = (pool, self.pipe.take()) {
            pool.give(pipe);
        }
    }
}
