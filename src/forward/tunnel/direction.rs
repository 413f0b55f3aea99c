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

use std::io;
use std::task::{Context, Poll, ready};

use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::copy::{BUFFER_SIZE, with_buffer};
use super::frames::{self, FrameError, Header, MAX_CONTROL_FRAME, MAX_CONTROL_PAYLOAD, Tracker};
use super::leg::{Leg, partial_io};
use super::pool::{Pipe, PipePool};
use super::splice;
use crate::calls::{DirStats, Framing, Histogram};

/// A splice that moves less than this goes back to copying: for small
/// messages (audio frames) one copy through a warm buffer is cheaper than
/// moving pages through a pipe, and needs no pipe at all.
const BULK: usize = 16 * 1024;

/// The payload of shunt's Ping starts with this; 8 bytes of send time follow.
const PING_TAG: &[u8; 5] = b"shunt";
const PING_LEN: usize = PING_TAG.len() + 8;

/// shunt's own Close towards the destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseState {
    /// None asked for.
    None,
    /// Waiting for a frame boundary.
    Pending(u16),
    /// Written (the rest of its bytes may still be in `rest`).
    Sent,
    /// Not sent: no boundary came in time, the source's bytes are gone, or
    /// a Close already passed.
    Skipped,
}

/// What a direction ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Done {
    /// The source ended; the end was passed on (or nothing is forwarded any more).
    Eof,
    /// A tracked source ended without a Close: the tunnel decides what the
    /// destination is told. Nothing was done to the destination.
    Lost,
}

/// Which side of a direction failed.
#[derive(Debug)]
pub enum Failed {
    /// Reading the source.
    Src(io::Error),
    /// Writing the destination.
    Dst(io::Error),
}

/// What one poll saw, for the tunnel's call state.
#[derive(Debug, Default)]
pub struct Report {
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
pub struct Ctx<'a> {
    /// The direction's live figures.
    pub stats: &'a DirStats,
    /// The route's gap histogram for this direction.
    pub gaps: &'a Histogram,
    /// The call's start: times are milliseconds since then.
    pub start: Instant,
    /// Frames shunt writes to this destination are masked (it is the backend).
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
pub struct Direction {
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
    pub fn new(first: &[u8], framing: Framing) -> Self {
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
    pub fn flushed(&self) -> bool {
        self.rest.is_empty() && !self.flush && self.pipe.as_ref().is_none_or(|p| p.pending == 0)
    }

    /// How this direction's frames are followed.
    pub fn framing(&self) -> Framing {
        self.framing
    }

    /// shunt's Close towards the destination.
    pub fn close_state(&self) -> CloseState {
        self.close
    }

    /// A Close has passed from the source.
    pub fn close_seen(&self) -> bool {
        self.frames.closed()
    }

    /// Whether shunt may write its own frames into this direction.
    pub fn can_inject(&self) -> bool {
        self.framing == Framing::Tracked
            && !self.frames.closed()
            && !self.discard
            && self.close == CloseState::None
    }

    /// Send shunt's Ping at the next frame boundary.
    pub fn request_ping(&mut self) {
        if self.can_inject() {
            self.ping = true;
        }
    }

    /// A Ping is waiting for a boundary.
    pub fn ping_pending(&self) -> bool {
        self.ping
    }

    /// Send shunt's Close with `code` at the next frame boundary; if it
    /// cannot be sent at all, forward nothing more instead.
    pub fn request_close(&mut self, code: u16) {
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
    pub fn skip_close(&mut self) {
        if let CloseState::Pending(_) = self.close {
            self.close = CloseState::Skipped;
        }
        self.discard = true;
    }

    /// The destination is gone: write nothing more to it.
    pub fn drop_output(&mut self) {
        self.skip_close();
        self.dst_gone = true;
        self.rest = Vec::new();
        self.held = false;
    }

    /// Move bytes `src` → `dst` until EOF, then half-close `dst` (or report
    /// [`Done::Lost`]); splices through pipes from `pool` if given and both
    /// legs are sockets. After a failure the failed side is not used again.
    pub fn poll_relay<S: Leg, D: Leg>(
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
            let tracked = self.framing == Framing::Tracked;
            if let (Some(pool), Some(s)) = (pool, src.socket())
                && self.bulk
                && !self.discard
            {
                if s.poll_read_ready(cx).is_pending() {
                    // Drained and nothing to read: an idle direction holds no pipe.
                    self.give_back(Some(pool));
                    return Poll::Pending;
                }
                // A large frame next: see its header in place (a peek), count
                // it, and splice header and payload together. The pipe first,
                // so a peeked header is never left behind.
                if tracked && self.frames.at_boundary() && self.pipe.is_none() {
                    self.pipe = pool.take();
                }
                if tracked && self.frames.at_boundary() && self.pipe.is_none() {
                    self.bulk = false;
                } else if tracked && self.frames.at_boundary() {
                    match self.peek_large_header(s, ctx) {
                        Ok(true) => {}
                        // A small frame or a partial header: the copy path reads it.
                        Ok(false) => self.bulk = false,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                        Err(e) => return Poll::Ready(Err(Failed::Src(e))),
                    }
                }
                let spliceable = !tracked || self.frames.payload_left() > 0;
                if spliceable && self.pipe.is_none() {
                    self.pipe = pool.take();
                }
                if let Some(pipe) = self.pipe.as_mut().filter(|_| spliceable) {
                    let max = if tracked {
                        let left = self.frames.payload_left() + u64::from(self.head_in_socket);
                        usize::try_from(left).unwrap_or(usize::MAX)
                    } else {
                        usize::MAX
                    };
                    match splice_in(s, pipe, max) {
                        Ok(0) => self.eof = true,
                        Ok(n) => {
                            ctx.report.read = true;
                            ctx.report.active = true;
                            if tracked {
                                let head = n.min(usize::from(self.head_in_socket));
                                self.head_in_socket -= head as u8;
                                self.frames.skip((n - head) as u64);
                            } else {
                                self.bulk = n >= BULK;
                            }
                        }
                        // Readiness was stale; it is cleared, the next poll waits.
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) => return Poll::Ready(Err(Failed::Src(e))),
                    }
                    continue;
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

    /// At a boundary of a bulk stream: peek at the next header. A complete
    /// header of a large data frame is counted and left in the socket
    /// (`head_in_socket`) to be spliced with its payload; `Ok(false)` for
    /// anything else (read through the copy path).
    fn peek_large_header(&mut self, s: &TcpStream, ctx: &mut Ctx<'_>) -> io::Result<bool> {
        let mut head = [0; frames::MAX_HEADER];
        let n = s.try_io(Interest::READABLE, || {
            let (_, n) = rustix::net::recv(s, &mut head, rustix::net::RecvFlags::PEEK)?;
            Ok(n)
        })?;
        let Ok(Some(h)) = frames::parse(&head[..n]) else {
            return Ok(false);
        };
        if !h.is_data() || h.len < BULK as u64 {
            return Ok(false);
        }
        let header_len = usize::from(h.header_len);
        if !matches!(self.frames.feed(&head[..header_len]), Ok((k, Some(_))) if k == header_len) {
            return Ok(false);
        }
        self.head_in_socket = h.header_len;
        let now_ms = ctx.ms(Instant::now());
        self.record(&h, now_ms, ctx);
        Ok(true)
    }

    /// How much one copy read may take: everything, unless a frame boundary
    /// must not be crossed (shunt's frame waits) or the next header of a
    /// bulk stream is read (its payload is spliced).
    fn read_cap(&self) -> usize {
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
    fn copy_step<S: Leg, D: Leg>(
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

    /// Follow the frames in `buf[from..n]`, record them, and cut out shunt's own
    /// Pongs; returns the length of what is left to forward. With `hold`, a
    /// frame at the end that may be shunt's Pong but is not whole yet is
    /// moved to `rest` and held (`rest` is empty when `hold` is asked).
    fn scan(
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
    fn release_held(&mut self, ctx: &mut Ctx<'_>) {
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
    fn record(&mut self, h: &Header, now_ms: u32, ctx: &mut Ctx<'_>) {
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

    fn go_opaque(&mut self, e: FrameError, ctx: &mut Ctx<'_>) {
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

    fn write_ping(&mut self, ctx: &mut Ctx<'_>) {
        self.ping = false;
        let sent_us = Instant::now()
            .saturating_duration_since(ctx.start)
            .as_micros() as u64;
        let mut payload = [0; PING_LEN];
        payload[..PING_TAG.len()].copy_from_slice(PING_TAG);
        payload[PING_TAG.len()..].copy_from_slice(&sent_us.to_be_bytes());
        self.queue_control(frames::OP_PING, &payload, ctx);
        ctx.report.ping_sent = true;
    }

    fn write_close(&mut self, code: u16, ctx: &mut Ctx<'_>) {
        let mut payload = [0; MAX_CONTROL_PAYLOAD];
        let n = frames::close_payload(code, close_reason(code), &mut payload);
        self.queue_control(frames::OP_CLOSE, &payload[..n], ctx);
        self.close = CloseState::Sent;
        // One Close per leg: nothing more goes to this destination.
        self.discard = true;
        self.ping = false;
        ctx.report.close_sent = true;
    }

    /// Put a whole control frame of shunt's in `rest` (written next, before any read).
    fn queue_control(&mut self, opcode: u8, payload: &[u8], ctx: &Ctx<'_>) {
        let mut frame = [0; MAX_CONTROL_FRAME];
        let mask = ctx.mask.then(mask_key);
        let n = frames::control_frame(&mut frame, opcode, payload, mask);
        self.rest.extend_from_slice(&frame[..n]);
    }

    fn poll_drain_pipe<D: Leg>(
        &mut self,
        cx: &mut Context<'_>,
        dst: &mut D,
        ctx: &Ctx<'_>,
    ) -> Poll<io::Result<()>> {
        let (Some(pipe), Some(dst)) = (&mut self.pipe, dst.socket()) else {
            return Poll::Ready(Ok(()));
        };
        ready!(dst.poll_write_ready(cx))?;
        let pending = pipe.pending;
        match partial_io(dst, Interest::WRITABLE, pending, || {
            splice::out_of_pipe(pipe, dst)
        }) {
            Ok(0) => Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
            Ok(m) => {
                pipe.pending -= m;
                ctx.stats
                    .bytes
                    .fetch_add(m as u64, std::sync::atomic::Ordering::Relaxed);
                Poll::Ready(Ok(()))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Poll::Ready(Ok(())),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_write_rest<D: Leg>(
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

    /// Give the pipe (if any) back to `pool`; the pool closes it if it still
    /// holds bytes (a tunnel that ended mid-burst).
    pub fn give_back(&mut self, pool: Option<&PipePool>) {
        if let (Some(pool), Some(pipe)) = (pool, self.pipe.take()) {
            pool.give(pipe);
        }
    }
}

/// The short reason shunt writes after its close codes.
pub fn close_reason(code: u16) -> &'static str {
    match code {
        1012 => "service restart",
        1014 => "bad gateway",
        _ => "going away",
    }
}

/// Whether `bytes`, at a frame boundary, are the start but not the whole
/// of a frame that may be shunt's Pong: FIN and Pong, a payload of
/// [`PING_LEN`], its first payload bytes (unmasked, once the key is there)
/// matching [`PING_TAG`]. At most 18 bytes (a masked Pong is 19).
fn split_shunt_pong(bytes: &[u8]) -> bool {
    if bytes.first() != Some(&(0x80 | frames::OP_PONG)) {
        return false;
    }
    let Some(&b1) = bytes.get(1) else {
        return true;
    };
    if usize::from(b1 & 0x7F) != PING_LEN {
        return false;
    }
    let head = if b1 & 0x80 != 0 { 6 } else { 2 };
    if bytes.len() >= head + PING_LEN {
        return false;
    }
    let Some(payload) = bytes.get(head..) else {
        return true;
    };
    let key = (head == 6).then(|| [bytes[2], bytes[3], bytes[4], bytes[5]]);
    let mut plain = [0; PING_LEN];
    let n = frames::unmask_into(payload, key, &mut plain);
    let n = n.min(PING_TAG.len());
    plain[..n] == PING_TAG[..n]
}

/// The send time in a Pong that answers shunt's Ping, if it is one.
fn shunt_pong(payload: &[u8], mask: Option<[u8; 4]>) -> Option<u64> {
    if payload.len() != PING_LEN {
        return None;
    }
    let mut plain = [0; PING_LEN];
    frames::unmask_into(payload, mask, &mut plain);
    if &plain[..PING_TAG.len()] != PING_TAG {
        return None;
    }
    let mut be = [0; 8];
    be.copy_from_slice(&plain[PING_TAG.len()..]);
    Some(u64::from_be_bytes(be))
}

/// A fresh random masking key for a frame towards the backend.
fn mask_key() -> [u8; 4] {
    use ring::rand::SecureRandom;
    let mut key = [0; 4];
    if ring::rand::SystemRandom::new().fill(&mut key).is_err() {
        // Never seen; the key then still changes with every frame.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        key = t.to_le_bytes();
    }
    key
}

/// Splice what `src` has (at most `max` bytes) into the (empty) pipe; `Ok(0)` is EOF.
///
/// Unlike a `recv`, a short splice does not show the socket is drained: the
/// pipe's slots (one per page fragment) may have run out first. Readiness is
/// therefore cleared only on a real `EAGAIN`, or bytes still queued could
/// wait for an edge that never comes.
fn splice_in(src: &TcpStream, pipe: &mut Pipe, max: usize) -> io::Result<usize> {
    let n = src.try_io(Interest::READABLE, || splice::into_pipe(src, pipe, max))?;
    pipe.pending = n;
    Ok(n)
}
