//! One side of a tunnel as the relay drives it: a plain TCP socket polled by
//! readiness, or any async stream (TLS, hyper's `Upgraded`) polled through
//! `AsyncRead`/`AsyncWrite`.
//!
//! The same [`super::direction::Direction`] state machine runs over both;
//! only a [`Leg`] that is a bare socket ([`Leg::socket`]) can be spliced.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

/// Reads, writes and half-closes of one tunnel leg, polled by hand.
pub(super) trait Leg {
    /// Read into `buf`; `Ok(0)` is end of stream.
    fn poll_recv(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>>;
    /// Write from `buf`; returns how much was taken.
    fn poll_send(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>>;
    /// Push out anything the stream buffers (TLS records).
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
    /// Pass an end of stream on (shut down the write side). The peer may be
    /// gone already; its own direction reports that.
    fn poll_half_close(&mut self, cx: &mut Context<'_>) -> Poll<()>;
    /// The bare socket, when this leg is plain TCP (it can be spliced).
    fn socket(&self) -> Option<&TcpStream>;
    /// The leg did not answer shunt's Ping in time: whether it replaces its
    /// connection (a reattachable upstream, [`super::reattach`]) instead of
    /// being lost. Asked only on a ping timeout, never per byte.
    fn replace_silent(&mut self) -> bool {
        false
    }
}

impl Leg for TcpStream {
    fn poll_recv(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.poll_read_ready(cx))?;
            let len = buf.len();
            match partial_io(self, Interest::READABLE, len, || read_from(self, buf)) {
                // Readiness was stale; it is cleared, the next poll waits.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return Poll::Ready(r),
            }
        }
    }

    fn poll_send(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.poll_write_ready(cx))?;
            match partial_io(self, Interest::WRITABLE, buf.len(), || write_to(self, buf)) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return Poll::Ready(r),
            }
        }
    }

    fn poll_flush(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_half_close(&mut self, _cx: &mut Context<'_>) -> Poll<()> {
        let _ = rustix::net::shutdown(&*self, rustix::net::Shutdown::Write);
        Poll::Ready(())
    }

    fn socket(&self) -> Option<&TcpStream> {
        Some(self)
    }
}

/// A stream a [`Stream`] leg can relay.
///
/// One trait for the four bounds, so a leg can be boxed as `dyn IoStream`:
/// a tunnel with a TLS leg holds its downstream that way, whether it is a
/// plain socket beside a TLS upstream or hyper's `Upgraded` around a TLS
/// downstream. Implemented for every type that meets the bounds.
pub(super) trait IoStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> IoStream for T {}

/// An async stream as a [`Leg`].
#[derive(Debug)]
pub(super) struct Stream<T>(pub T);

impl<T: AsyncRead + AsyncWrite + Unpin> Leg for Stream<T> {
    fn poll_recv(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let mut read = ReadBuf::new(buf);
        match ready!(Pin::new(&mut self.0).poll_read(cx, &mut read)) {
            Ok(()) => Poll::Ready(Ok(read.filled().len())),
            // A TLS peer that closes without close_notify has still closed.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Poll::Ready(Ok(0)),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_send(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_half_close(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let _ = ready!(Pin::new(&mut self.0).poll_shutdown(cx));
        Poll::Ready(())
    }

    fn socket(&self) -> Option<&TcpStream> {
        None
    }
}

/// Run one non-blocking syscall `f` that asked for `wanted` bytes, through
/// tokio's readiness: like tokio's own `poll_read`, a short transfer shows the
/// socket is drained (or full), so readiness is cleared at once instead of
/// after one more syscall that would return `EAGAIN`. (Clearing is safe: an
/// event that arrived meanwhile has a newer tick and is kept.)
pub(super) fn partial_io(
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
