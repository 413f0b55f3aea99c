//! `backend_loss = "reattach"`: the upstream leg of a call that outlives its
//! backend connection.
//!
//! [`Reattaching`] is a [`Leg`] around the upstream stream. The tunnel task
//! drives it like any other leg and knows nothing of a reattach, so a route
//! that keeps the default `close` runs the tunnel exactly as before (no
//! work per frame or per byte is added there). What it does:
//!
//! - It follows the frames each way on its own: client → backend to record
//!   the first `replay_messages` complete messages (the preamble, at most
//!   `replay_bytes`; a larger one makes the call not reattachable, logged
//!   once) and to know whether a client message is in flight; backend →
//!   client to know whether the backend is mid-message, and to hold a Close
//!   back until its code is known.
//! - The backend leg is lost when it ends or fails without a Close, does not
//!   answer shunt's Ping ([`Leg::replace_silent`]), or sends Close `1001` or
//!   `1012` (which is then not forwarded). Any other Close is forwarded and
//!   the leg stops following frames: the application ended the call.
//! - On a loss at a frame boundary towards the client, with no message
//!   begun, it dials the route's upstreams in order (the [`Redial`] that
//!   `forward` made), backing off between passes, for at most
//!   `reattach_within`. Meanwhile nothing is read for the client and the
//!   client's bytes are held, up to `reattach_buffer`. The new connection
//!   is sent the preamble, then the held bytes from the next message
//!   boundary on: the rest of a client message cut by the loss is dropped
//!   (and counted).
//! - When it cannot go on (the backend was mid-message towards the client,
//!   no upstream in time, a mismatched 101, the buffer full) it gives up:
//!   the leg reads as ended (or fails a write), and the tunnel closes the
//!   client with 1014 as for any lost backend.
//!
//! A reattachable call always runs on the tunnel's buffered path (no
//! splice): its upstream can change from plain TCP to TLS, and every byte
//! to the backend has to be seen here anyway.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::frames::{self, OP_CLOSE, Tracker};
use super::leg::{Leg, Stream};
use crate::calls::{Call, ReattachResult};
use crate::config::ReattachSpec;
use crate::dial::UpstreamStream;

/// First wait between two passes over the route's upstreams; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(25);
/// Longest wait between two passes.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// A new backend connection, after its 101.
#[derive(Debug)]
pub(crate) struct Redialed {
    /// The connection.
    pub stream: UpstreamStream,
    /// Bytes read past the 101: the new backend's first frames.
    pub early: Bytes,
    /// The upstream's name.
    pub upstream: Arc<str>,
}

/// Why one pass over the route's upstreams gave no new backend leg.
#[derive(Debug)]
pub(crate) enum RedialError {
    /// No upstream answered 101: try again after a backoff.
    Unavailable(String),
    /// An upstream answered 101, but the call cannot go on over it
    /// (another subprotocol or other extensions): give up.
    Mismatch(String),
}

/// One pass's future.
pub(crate) type RedialFuture = Pin<Box<dyn Future<Output = Result<Redialed, RedialError>> + Send>>;

/// One pass over the route's upstreams, in order, for this call's reattach
/// number `n` (1 for the first).
pub(crate) type Redial = Arc<dyn Fn(u32) -> RedialFuture + Send + Sync>;

/// What a reattachable call needs to replace its backend leg.
pub(crate) struct ReattachPlan {
    /// The route's settings.
    pub spec: ReattachSpec,
    /// Dials and handshakes a new backend leg.
    pub redial: Redial,
}

impl fmt::Debug for ReattachPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReattachPlan")
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

/// A replacement under way: passes with backoff, within `reattach_within`.
type Replacement = Pin<Box<dyn Future<Output = Result<Redialed, String>> + Send>>;

/// Where the leg stands.
enum Mode {
    /// Following the call: a loss starts a replacement.
    Armed,
    /// Dialing a new backend leg since `since`.
    Replacing {
        /// The passes, with backoff.
        replacement: Replacement,
        /// When the loss was noticed.
        since: Instant,
    },
    /// Not reattachable (any more): a plain leg.
    Off,
    /// A replacement failed: the leg reads as ended and takes no more bytes.
    GaveUp,
}

/// The upstream leg of a reattachable call (see the module's documentation).
pub(super) struct Reattaching {
    /// The backend connection; `None` while it is being replaced or after giving up.
    stream: Option<Stream<UpstreamStream>>,
    mode: Mode,
    plan: Box<ReattachPlan>,
    /// The call's `/calls` record and route metrics.
    call: Arc<Call>,
    // --- client → backend ---
    /// The frames as written to the backend (or dropped).
    sent: Tracker,
    /// The current frame is a data frame.
    frame_data: bool,
    /// The current frame has FIN.
    frame_fin: bool,
    /// The current frame is being dropped (the rest of a message cut by a loss).
    frame_drop: bool,
    /// A data message is begun and not finished.
    in_msg: bool,
    /// Data frames are dropped up to the end of the message cut by a loss.
    dropping: bool,
    /// The first messages' frames, as the client sent them.
    preamble: Vec<u8>,
    /// How much of `preamble` is whole messages.
    preamble_whole: usize,
    /// Whole messages recorded.
    recorded: u32,
    /// How much of the preamble the new backend connection has been sent.
    replayed: usize,
    /// Client bytes not written yet: held during a replacement, then sent.
    outbox: Vec<u8>,
    /// A Close went to the backend: from then on a Close from it is an answer.
    client_closed: bool,
    // --- backend → client ---
    /// The frames read from the backend.
    recv: Tracker,
    /// A data message towards the client is begun and not finished.
    recv_in_msg: bool,
    /// Backend bytes to hand out before reading more (early bytes, a released Close).
    inbox: Vec<u8>,
    /// A Close from the backend, held until its code is known.
    stash: Vec<u8>,
    /// `stash` is being filled.
    stashing: bool,
}

impl fmt::Debug for Reattaching {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reattaching")
            .field("call", &self.call.id)
            .field("plan", &self.plan)
            .finish_non_exhaustive()
    }
}

impl Reattaching {
    /// The upstream leg of `call` over `stream`, whose bytes read past the
    /// 101 are `early`.
    pub(super) fn new(
        stream: UpstreamStream,
        early: Bytes,
        plan: Box<ReattachPlan>,
        call: Arc<Call>,
    ) -> Self {
        Reattaching {
            stream: Some(Stream(stream)),
            mode: Mode::Armed,
            plan,
            call,
            sent: Tracker::default(),
            frame_data: false,
            frame_fin: false,
            frame_drop: false,
            in_msg: false,
            dropping: false,
            preamble: Vec::new(),
            preamble_whole: 0,
            recorded: 0,
            replayed: 0,
            outbox: Vec::new(),
            client_closed: false,
            recv: Tracker::default(),
            recv_in_msg: false,
            inbox: early.to_vec(),
            stash: Vec::new(),
            stashing: false,
        }
    }

    /// Still recording the preamble.
    fn recording(&self) -> bool {
        self.recorded < self.plan.spec.replay_messages && matches!(self.mode, Mode::Armed)
    }

    /// The call cannot be reattached from now on: a plain leg, counted and logged once.
    fn turn_off(&mut self, reason: &str) {
        if !matches!(self.mode, Mode::Armed) {
            return;
        }
        self.mode = Mode::Off;
        self.preamble = Vec::new();
        self.call
            .record_reattach(ReattachResult::NotReattachable, Duration::ZERO, None);
        let call = &self.call;
        tracing::warn!(
            tunnel = call.id,
            route = call.route(),
            upstream = &*call.current_upstream(),
            "call not reattachable: {reason}; a backend loss closes it with 1014"
        );
    }

    /// A replacement cannot be had: the leg reads as ended, counted and logged.
    fn give_up(&mut self, reason: &str) {
        self.mode = Mode::GaveUp;
        self.stream = None;
        self.outbox = Vec::new();
        self.call
            .record_reattach(ReattachResult::GaveUp, Duration::ZERO, None);
        let call = &self.call;
        tracing::warn!(
            tunnel = call.id,
            route = call.route(),
            peer = %call.client,
            "reattach gave up: {reason}; closing the call with 1014"
        );
    }

    /// The backend leg is lost (`why`): start replacing it, unless the call
    /// cannot go on. Returns whether a replacement is under way.
    fn on_loss(&mut self, why: &str) -> bool {
        match self.mode {
            Mode::Replacing { .. } => return true,
            Mode::Armed => {}
            Mode::Off | Mode::GaveUp => return false,
        }
        if self.client_closed {
            // The call is ending anyway.
            self.mode = Mode::Off;
            return false;
        }
        if !self.recv.at_boundary() || self.recv_in_msg {
            self.give_up(&format!(
                "the backend {why} in the middle of a message to the client"
            ));
            return false;
        }
        if self.in_msg || !self.sent.at_boundary() {
            // The rest of the client's message in flight is dropped.
            self.frame_drop = !self.sent.at_boundary();
            self.dropping = self.in_msg;
            if self.in_msg {
                self.in_msg = false;
                if let Some(r) = &self.call.reattach {
                    r.dropped_messages.fetch_add(1, Relaxed);
                }
            }
            self.preamble.truncate(self.preamble_whole);
        }
        let attempt = self.call.reattached() + 1;
        let call = &self.call;
        tracing::info!(
            tunnel = call.id,
            route = call.route(),
            upstream = &*call.current_upstream(),
            peer = %call.client,
            attempt,
            "backend leg {why}; reattaching"
        );
        self.stream = None;
        self.inbox = Vec::new();
        self.stash = Vec::new();
        self.stashing = false;
        if let Some(r) = &self.call.reattach {
            r.reattaching.store(true, Relaxed);
        }
        self.mode = Mode::Replacing {
            replacement: replacement(self.plan.redial.clone(), self.plan.spec.within, attempt),
            since: Instant::now(),
        };
        true
    }

    /// Poll a replacement under way; ready once it is over either way.
    fn poll_replacement(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Mode::Replacing { replacement, since } = &mut self.mode else {
            return Poll::Ready(());
        };
        let since = *since;
        match ready!(replacement.as_mut().poll(cx)) {
            Ok(new) => {
                let gap = since.elapsed();
                self.stream = Some(Stream(new.stream));
                self.inbox = new.early.to_vec();
                self.recv = Tracker::default();
                self.recv_in_msg = false;
                self.replayed = 0;
                self.mode = Mode::Armed;
                self.call
                    .record_reattach(ReattachResult::Ok, gap, Some(&new.upstream));
                let call = &self.call;
                tracing::info!(
                    tunnel = call.id,
                    route = call.route(),
                    upstream = &*new.upstream,
                    peer = %call.client,
                    reattached = call.reattached(),
                    gap_s = gap.as_millis() as f64 / 1000.0,
                    "call reattached to a new backend connection"
                );
            }
            Err(reason) => self.give_up(&reason),
        }
        Poll::Ready(())
    }

    /// Write the preamble, then the held client bytes, to a new backend
    /// connection; ready once nothing is left.
    fn poll_backlog(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.replayed < self.preamble_whole {
            let stream = self.stream.as_mut().ok_or(io::ErrorKind::NotConnected)?;
            let m =
                ready!(stream.poll_send(cx, &self.preamble[self.replayed..self.preamble_whole]))?;
            if m == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.replayed += m;
        }
        while !self.outbox.is_empty() {
            let outbox = std::mem::take(&mut self.outbox);
            let pushed = self.push_client(cx, &outbox);
            let mut outbox = outbox;
            let done = match pushed {
                Poll::Ready(Ok(n)) => n,
                Poll::Ready(Err(e)) => {
                    self.outbox = outbox;
                    return Poll::Ready(Err(e));
                }
                Poll::Pending => {
                    self.outbox = outbox;
                    return Poll::Pending;
                }
            };
            outbox.drain(..done);
            self.outbox = outbox;
        }
        self.outbox = Vec::new();
        Poll::Ready(Ok(()))
    }

    /// Write client bytes to the backend, frame by frame: the rest of a
    /// message cut by a loss is dropped, the first messages are recorded.
    /// Returns how many bytes were taken (written or dropped).
    fn push_client(&mut self, cx: &mut Context<'_>, bytes: &[u8]) -> Poll<io::Result<usize>> {
        let mut done = 0;
        while done < bytes.len() {
            let rest = &bytes[done..];
            let starts = self.sent.at_boundary();
            if starts {
                // A frame begins: its first byte says what it is.
                self.frame_data = rest[0] & 0x08 == 0;
                self.frame_fin = rest[0] & 0x80 != 0;
                self.frame_drop = self.dropping && self.frame_data;
            }
            let mut look = self.sent.clone();
            let k = match look.feed(rest) {
                Ok((k, _)) => k,
                Err(e) => {
                    self.turn_off(&format!("the client's frames cannot be followed ({e})"));
                    if done > 0 {
                        return Poll::Ready(Ok(done));
                    }
                    let stream = self.stream.as_mut().ok_or(io::ErrorKind::NotConnected)?;
                    return stream.poll_send(cx, rest);
                }
            };
            let piece = &rest[..k];
            let m = if self.frame_drop {
                k
            } else {
                let stream = self.stream.as_mut().ok_or(io::ErrorKind::NotConnected)?;
                match stream.poll_send(cx, piece) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                    }
                    Poll::Ready(Ok(m)) => m,
                    Poll::Ready(Err(e)) if done == 0 => return Poll::Ready(Err(e)),
                    Poll::Ready(Err(_)) | Poll::Pending if done > 0 => {
                        return Poll::Ready(Ok(done));
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return Poll::Pending,
                }
            };
            let header = match self.sent.feed(&piece[..m]) {
                Ok((_, h)) => h,
                // Unreachable: the look-ahead took the same bytes.
                Err(_) => None,
            };
            if starts && self.frame_data && !self.frame_drop {
                self.in_msg = true;
            }
            if self.frame_data && !self.frame_drop && self.recording() {
                self.preamble.extend_from_slice(&piece[..m]);
            }
            if header.is_some_and(|h| h.opcode == OP_CLOSE) {
                self.client_closed = true;
            }
            done += m;
            if self.sent.at_boundary() {
                self.frame_ended();
            }
        }
        Poll::Ready(Ok(done))
    }

    /// The current client frame has been written (or dropped) whole.
    fn frame_ended(&mut self) {
        if !(self.frame_data && self.frame_fin) {
            return;
        }
        if self.frame_drop {
            self.dropping = false;
            self.frame_drop = false;
            return;
        }
        self.in_msg = false;
        if self.recording() {
            self.recorded += 1;
            self.preamble_whole = self.preamble.len();
            // Recorded as it went out: this connection has it already.
            self.replayed = self.preamble_whole;
            if self.preamble.len() > self.plan.spec.replay_bytes as usize {
                let limit = self.plan.spec.replay_bytes;
                self.turn_off(&format!(
                    "its first {} message(s) exceed replay_bytes ({limit} B)",
                    self.recorded
                ));
            }
        }
    }

    /// Follow backend bytes `buf` as read; a Close is moved to the stash
    /// with everything after it. Returns how many bytes go to the client.
    fn filter_recv(&mut self, buf: &[u8]) -> usize {
        if self.stashing {
            self.stash.extend_from_slice(buf);
            return 0;
        }
        let mut at = 0;
        while at < buf.len() {
            if self.recv.at_boundary() && buf[at] & 0x0F == OP_CLOSE {
                self.stash.extend_from_slice(&buf[at..]);
                self.stashing = true;
                return at;
            }
            match self.recv.feed(&buf[at..]) {
                Ok((k, h)) => {
                    if let Some(h) = h.filter(|h| h.is_data()) {
                        self.recv_in_msg = !h.fin;
                    }
                    at += k;
                }
                Err(e) => {
                    self.turn_off(&format!("the backend's frames cannot be followed ({e})"));
                    return buf.len();
                }
            }
        }
        buf.len()
    }

    /// A whole Close in the stash: reattach on 1001 or 1012 (returns
    /// `true`), else pass it on and follow frames no more.
    fn settle_close(&mut self) -> bool {
        let whole = match frames::parse(&self.stash) {
            Ok(Some(h)) => {
                let end = usize::from(h.header_len) + h.len as usize;
                (self.stash.len() >= end).then(|| {
                    let mut two = [0; 2];
                    let payload = &self.stash[usize::from(h.header_len)..end];
                    (frames::unmask_into(payload, h.mask, &mut two) == 2)
                        .then(|| u16::from_be_bytes(two))
                })
            }
            Ok(None) => None,
            Err(_) => Some(None),
        };
        let Some(code) = whole else {
            return false;
        };
        if matches!(code, Some(1001 | 1012)) && !self.client_closed && !self.recv_in_msg {
            let code = code.unwrap_or_default();
            return self.on_loss(&format!("closed with {code}"));
        }
        // The application ended the call: its Close goes to the client.
        self.stashing = false;
        self.inbox = std::mem::take(&mut self.stash);
        if matches!(self.mode, Mode::Armed) {
            self.mode = Mode::Off;
        }
        false
    }

    /// Hand out inbox bytes into `buf`.
    fn take_inbox(&mut self, buf: &mut [u8]) -> usize {
        let n = self.inbox.len().min(buf.len());
        buf[..n].copy_from_slice(&self.inbox[..n]);
        if n == self.inbox.len() {
            self.inbox = Vec::new();
        } else {
            self.inbox.drain(..n);
        }
        n
    }
}

/// Passes over the route's upstreams with backoff, for at most `within`.
fn replacement(redial: Redial, within: Duration, attempt: u32) -> Replacement {
    Box::pin(async move {
        let deadline = Instant::now() + within;
        let mut backoff = FIRST_BACKOFF;
        let mut last = String::from("no upstream tried");
        loop {
            match tokio::time::timeout_at(deadline, redial(attempt)).await {
                Ok(Ok(new)) => return Ok(new),
                Ok(Err(RedialError::Mismatch(e))) => return Err(e),
                Ok(Err(RedialError::Unavailable(e))) => last = e,
                Err(_) => break,
            }
            // Keep trying up to the deadline: the last wait is cut to it.
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            tokio::time::sleep(backoff.min(deadline - now)).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        Err(format!(
            "no upstream took the call within reattach_within ({}; last: {last})",
            humantime::format_duration(within)
        ))
    })
}

impl Leg for Reattaching {
    fn poll_recv(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        loop {
            match self.mode {
                Mode::Off => {
                    if !self.inbox.is_empty() {
                        return Poll::Ready(Ok(self.take_inbox(buf)));
                    }
                    return match self.stream.as_mut() {
                        Some(s) => s.poll_recv(cx, buf),
                        None => Poll::Ready(Ok(0)),
                    };
                }
                Mode::GaveUp => return Poll::Ready(Ok(0)),
                Mode::Replacing { .. } => {
                    ready!(self.poll_replacement(cx));
                    continue;
                }
                Mode::Armed => {}
            }
            // A silent client must not keep the new backend from its preamble.
            if let Poll::Ready(Err(e)) = self.poll_backlog(cx) {
                if self.on_loss(&format!("failed ({})", e.kind())) {
                    continue;
                }
                return Poll::Ready(Err(e));
            }
            let n = if self.inbox.is_empty() {
                let Some(stream) = self.stream.as_mut() else {
                    return Poll::Ready(Ok(0));
                };
                match ready!(stream.poll_recv(cx, buf)) {
                    Ok(0) => {
                        if self.on_loss("ended without a Close") {
                            continue;
                        }
                        return Poll::Ready(Ok(0));
                    }
                    Ok(n) => n,
                    Err(e) => {
                        if self.on_loss(&format!("failed ({})", e.kind())) {
                            continue;
                        }
                        return Poll::Ready(Err(e));
                    }
                }
            } else {
                self.take_inbox(buf)
            };
            let kept = self.filter_recv(&buf[..n]);
            if self.stashing && self.settle_close() {
                continue;
            }
            if kept > 0 {
                return Poll::Ready(Ok(kept));
            }
            // Everything read went to the stash (or the inbox): read on.
        }
    }

    fn poll_send(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        loop {
            match self.mode {
                Mode::Off => {
                    let Some(s) = self.stream.as_mut() else {
                        return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
                    };
                    // Held bytes left when the call turned not reattachable go first.
                    while !self.outbox.is_empty() {
                        let m = ready!(s.poll_send(cx, &self.outbox))?;
                        if m == 0 {
                            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                        }
                        self.outbox.drain(..m);
                    }
                    return match self.stream.as_mut() {
                        Some(s) => s.poll_send(cx, buf),
                        None => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
                    };
                }
                Mode::GaveUp => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
                Mode::Replacing { .. } => {
                    if self.poll_replacement(cx).is_ready() {
                        continue;
                    }
                    if self.outbox.len() + buf.len() > self.plan.spec.buffer as usize {
                        let limit = self.plan.spec.buffer;
                        self.give_up(&format!(
                            "the client sent more than reattach_buffer ({limit} B) during the gap"
                        ));
                        return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
                    }
                    self.outbox.extend_from_slice(buf);
                    return Poll::Ready(Ok(buf.len()));
                }
                Mode::Armed => {}
            }
            let polled = match self.poll_backlog(cx) {
                Poll::Ready(Ok(())) => self.push_client(cx, buf),
                other => other.map_ok(|()| 0),
            };
            match polled {
                Poll::Ready(Err(e)) => {
                    if self.on_loss(&format!("failed ({})", e.kind())) {
                        continue;
                    }
                    return Poll::Ready(Err(e));
                }
                other => return other,
            }
        }
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(stream) = self.stream.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        match ready!(stream.poll_flush(cx)) {
            Err(e) if matches!(self.mode, Mode::Armed) => {
                if self.on_loss(&format!("failed ({})", e.kind())) {
                    Poll::Ready(Ok(()))
                } else {
                    Poll::Ready(Err(e))
                }
            }
            r => Poll::Ready(r),
        }
    }

    fn poll_half_close(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if let Mode::Replacing { .. } = self.mode {
            // The client left during the gap: nothing to reattach for.
            self.mode = Mode::GaveUp;
            if let Some(r) = &self.call.reattach {
                r.reattaching.store(false, Relaxed);
            }
            return Poll::Ready(());
        }
        match self.stream.as_mut() {
            Some(s) => s.poll_half_close(cx),
            None => Poll::Ready(()),
        }
    }

    fn socket(&self) -> Option<&TcpStream> {
        None
    }

    fn replace_silent(&mut self) -> bool {
        self.on_loss("did not answer a ping")
    }
}
