//! One direction of a tunnel between two plain TCP sockets, as a small
//! poll-driven state machine rather than nested `async` blocks.
//!
//! Why hand-written: thousands of idle audio tunnels must cost almost
//! nothing. Each `.await` on tokio's `readable()`/`writable()` keeps a waiter
//! node in the task's future, and nested async functions add up to
//! kilobytes per tunnel. Polling `poll_read_ready`/`poll_write_ready` instead
//! uses the waker slot each socket already has for its one reader and its one
//! writer, so an idle direction is a few words: no buffer, no pipe, no waiter.
//!
//! Small reads (audio frames, chat) are copied: read into the worker
//! thread's buffer and written at once; only a remainder the destination did
//! not take is kept, in a `Vec` of exactly that size. Once a read is large
//! (at least `BULK`, 16 KiB), the direction borrows a pipe from the
//! [`PipePool`] and splices source → pipe → destination, kernel to kernel,
//! until reads get small again; it gives the pipe back the moment the pipe is
//! empty and the source has nothing more. Without splice, or when the pool is
//! exhausted, every read is copied.

use std::io;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use tokio::io::Interest;
use tokio::net::TcpStream;

use super::copy::{self, with_buffer};
use super::pool::{Pipe, PipePool};
use super::splice;

/// State of one direction; the caller gives its pipe back ([`Direction::give_back`])
/// when the tunnel ends.
#[derive(Debug)]
pub struct Direction {
    /// A borrowed pipe, held only while a burst is in flight.
    pipe: Option<Pipe>,
    /// Bytes read but not yet written (a partial write's remainder, or the
    /// bytes read past the handshake); empty holds no allocation.
    rest: Vec<u8>,
    /// The source reached end of stream.
    eof: bool,
    /// The last read was large: splice the next one (if a pool is given).
    bulk: bool,
}

/// A splice that moves less than this goes back to copying: for small
/// messages (audio frames) one copy through a warm buffer is cheaper than
/// moving pages through a pipe, and needs no pipe at all.
const BULK: usize = 16 * 1024;

impl Direction {
    /// A direction that first writes `first` (bytes read past the handshake).
    pub fn new(first: &[u8]) -> Self {
        Direction {
            pipe: None,
            rest: first.to_vec(),
            eof: false,
            bulk: false,
        }
    }

    /// Move bytes `src` → `dst` until EOF, then half-close `dst`; splices
    /// through pipes from `pool` if given. Adds to `moved`; sets
    /// `last_activity` on each read.
    pub fn poll_relay(
        &mut self,
        cx: &mut Context<'_>,
        src: &TcpStream,
        dst: &TcpStream,
        pool: Option<&PipePool>,
        moved: &mut u64,
        last_activity: &mut Instant,
    ) -> Poll<io::Result<()>> {
        loop {
            if self.pipe.as_ref().is_some_and(|p| p.pending > 0) {
                ready!(self.poll_drain_pipe(cx, dst, moved))?;
                continue;
            }
            if !self.rest.is_empty() {
                ready!(self.poll_write_rest(cx, dst, moved))?;
                continue;
            }
            if self.eof {
                self.give_back(pool);
                copy::half_close(dst);
                return Poll::Ready(Ok(()));
            }
            if src.poll_read_ready(cx).is_pending() {
                // Drained and nothing to read: an idle direction holds no pipe.
                self.give_back(pool);
                return Poll::Pending;
            }
            if self.bulk && self.pipe.is_none() {
                self.pipe = pool.and_then(PipePool::take);
            }
            let read = match &mut self.pipe {
                Some(pipe) if self.bulk => splice_in(src, pipe),
                _ => copy_once(src, dst, &mut self.rest, moved),
            };
            // Splice while reads are large, copy while they are small.
            if let Ok(n) = read {
                self.bulk = pool.is_some() && n >= BULK;
            }
            match read {
                Ok(0) => self.eof = true,
                Ok(_) => *last_activity = Instant::now(),
                // Readiness was stale; it is cleared, the next poll waits.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn poll_drain_pipe(
        &mut self,
        cx: &mut Context<'_>,
        dst: &TcpStream,
        moved: &mut u64,
    ) -> Poll<io::Result<()>> {
        let Some(pipe) = &mut self.pipe else {
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
                *moved += m as u64;
                Poll::Ready(Ok(()))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Poll::Ready(Ok(())),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_write_rest(
        &mut self,
        cx: &mut Context<'_>,
        dst: &TcpStream,
        moved: &mut u64,
    ) -> Poll<io::Result<()>> {
        ready!(dst.poll_write_ready(cx))?;
        let rest = &self.rest;
        match partial_io(dst, Interest::WRITABLE, rest.len(), || write_to(dst, rest)) {
            Ok(0) => Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
            Ok(m) => {
                *moved += m as u64;
                if m == self.rest.len() {
                    // Free it: an idle direction keeps no allocation.
                    self.rest = Vec::new();
                } else {
                    self.rest.drain(..m);
                }
                Poll::Ready(Ok(()))
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Poll::Ready(Ok(())),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    /// Give the pipe (if any) back to `pool`; the pool closes it if it still
    /// holds bytes (a tunnel that ended mid-burst).
    pub fn give_back(&mut self, pool: Option<&PipePool>) {
        if let (Some(pool), Some(pipe)) = (pool, self.pipe.take()) {
            pool.give(pipe);
        }
    }
}

/// Run one non-blocking syscall `f` that asked for `wanted` bytes, through
/// tokio's readiness: like tokio's own `poll_read`, a short transfer shows the
/// socket is drained (or full), so readiness is cleared at once instead of
/// after one more syscall that would return `EAGAIN`. (Clearing is safe: an
/// event that arrived meanwhile has a newer tick and is kept.)
fn partial_io(
    socket: &TcpStream,
    interest: Interest,
    wanted: usize,
    f: impl FnOnce() -> io::Result<usize>,
) -> io::Result<usize> {
    let mut done = 0;
    let r = socket.try_io(interest, || {
        done = f()?;
        if 0 < done && done < wanted {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(done)
    });
    match r {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock && done > 0 => Ok(done),
        r => r,
    }
}

fn read_from(src: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    let (_, n) = rustix::net::recv(src, buf, rustix::net::RecvFlags::empty())?;
    Ok(n)
}

/// `send` with `MSG_NOSIGNAL`: a peer that has gone is an error, not a SIGPIPE.
fn write_to(dst: &TcpStream, bytes: &[u8]) -> io::Result<usize> {
    rustix::net::send(dst, bytes, rustix::net::SendFlags::NOSIGNAL).map_err(io::Error::from)
}

/// Splice what `src` has into the (empty) pipe; `Ok(0)` is EOF.
///
/// Unlike a `recv`, a short splice does not show the socket is drained: the
/// pipe's slots (one per page fragment) may have run out first. Readiness is
/// therefore cleared only on a real `EAGAIN`, or bytes still queued could
/// wait for an edge that never comes.
fn splice_in(src: &TcpStream, pipe: &mut Pipe) -> io::Result<usize> {
    let n = src.try_io(Interest::READABLE, || splice::into_pipe(src, pipe))?;
    pipe.pending = n;
    Ok(n)
}

/// Read once into the thread's buffer and write at once; keep only what
/// `dst` did not take. `Ok(0)` is EOF.
fn copy_once(
    src: &TcpStream,
    dst: &TcpStream,
    rest: &mut Vec<u8>,
    moved: &mut u64,
) -> io::Result<usize> {
    with_buffer(|buf| {
        let len = buf.len();
        let n = partial_io(src, Interest::READABLE, len, || read_from(src, buf))?;
        if n == 0 {
            return Ok(0);
        }
        let chunk = &buf[..n];
        let written = match partial_io(dst, Interest::WRITABLE, n, || write_to(dst, chunk)) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(e) => return Err(e),
        };
        *moved += written as u64;
        rest.extend_from_slice(&buf[written..n]);
        Ok(n)
    })
}
