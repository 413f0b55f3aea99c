//! The bulk path between two plain TCP legs: a large payload spliced kernel
//! to kernel through a pipe borrowed from the pool, the next header of a
//! bulk stream peeked in place so a large data frame is spliced whole.

use std::io;
use std::task::{Context, Poll, ready};

use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::{Ctx, Direction};
use crate::calls::Framing;
use crate::forward::tunnel::frames;
use crate::forward::tunnel::leg::{Leg, partial_io};
use crate::forward::tunnel::pipes::{self, Pipe, PipePool};

/// A splice that moves less than this goes back to copying: for small
/// messages (audio frames) one copy through a warm buffer is cheaper than
/// moving pages through a pipe, and needs no pipe at all.
pub(super) const BULK: usize = 16 * 1024;

/// What one bulk step leaves the direction's loop to do.
#[derive(Debug)]
pub(super) enum Bulk {
    /// Bytes moved, or readiness was stale: go round again.
    Again,
    /// The source is drained and the pipe given back: wait.
    Idle,
    /// Reading the source failed.
    Failed(io::Error),
    /// Read this through the copy path.
    Copy,
}

impl Direction {
    /// One step of the bulk path, for a source socket with a large payload
    /// next: at a boundary, peek at the next frame's header, then splice what
    /// the pipe takes. [`Bulk::Copy`] when the copy path should read instead
    /// (no pipe to be had, a small frame next, a partial header).
    pub(super) fn bulk_step(
        &mut self,
        cx: &mut Context<'_>,
        s: &TcpStream,
        pool: &PipePool,
        ctx: &mut Ctx<'_>,
    ) -> Bulk {
        let tracked = self.framing == Framing::Tracked;
        if s.poll_read_ready(cx).is_pending() {
            // Drained and nothing to read: an idle direction holds no pipe.
            self.give_back(Some(pool));
            return Bulk::Idle;
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
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Bulk::Again,
                Err(e) => return Bulk::Failed(e),
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
                Err(e) => return Bulk::Failed(e),
            }
            return Bulk::Again;
        }
        Bulk::Copy
    }

    /// At a boundary of a bulk stream: peek at the next header. A complete
    /// header of a large data frame is counted and left in the socket
    /// (`head_in_socket`) to be spliced with its payload; `Ok(false)` for
    /// anything else (read through the copy path).
    pub(super) fn peek_large_header(
        &mut self,
        s: &TcpStream,
        ctx: &mut Ctx<'_>,
    ) -> io::Result<bool> {
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

    pub(super) fn poll_drain_pipe<D: Leg>(
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
            pipes::out_of_pipe(pipe, dst)
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
}

/// Splice what `src` has (at most `max` bytes) into the (empty) pipe; `Ok(0)` is EOF.
///
/// Unlike a `recv`, a short splice does not show the socket is drained: the
/// pipe's slots (one per page fragment) may have run out first. Readiness is
/// therefore cleared only on a real `EAGAIN`, or bytes still queued could
/// wait for an edge that never comes.
pub(super) fn splice_in(src: &TcpStream, pipe: &mut Pipe, max: usize) -> io::Result<usize> {
    let n = src.try_io(Interest::READABLE, || pipes::into_pipe(src, pipe, max))?;
    pipe.pending = n;
    Ok(n)
}
