//! The buffered tunnel path over any stream pair, used when a leg is not plain
//! TCP (TLS), and the per-thread buffer that [`super::direction`] also uses
//! when `splice(2)` is unavailable or switched off, or for a burst that finds
//! the pipe pool exhausted.
//!
//! No buffer belongs to a tunnel. One buffer per worker thread is borrowed
//! only for the span of a single read and the write that follows it, inside
//! one poll (no `.await` while it is held), so an idle tunnel holds no
//! userspace buffer and a busy one costs nothing extra. If the destination
//! takes only part of a read, exactly the remainder is copied out and kept
//! until written.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use super::Counters;

/// Size of the per-thread buffer.
const BUFFER_SIZE: usize = 64 * 1024;

thread_local! {
    static BUFFER: RefCell<Box<[u8]>> = RefCell::new(vec![0; BUFFER_SIZE].into_boxed_slice());
}

/// Run `f` with the worker thread's buffer; it must not be held across an `.await`.
pub fn with_buffer<T>(f: impl FnOnce(&mut [u8]) -> T) -> T {
    BUFFER.with_borrow_mut(|buf| f(buf))
}

/// What one read-and-write step left behind.
enum Step {
    Eof,
    Moved,
    /// The destination took only part; this is the rest.
    Rest(Vec<u8>),
}

/// Copy `r` to `w` until EOF, then half-close `w`.
pub async fn copy_until_closed<R, W>(
    r: &mut R,
    w: &mut W,
    moved: &AtomicU64,
    counters: &Counters,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    loop {
        let step = poll_fn(|cx| {
            read_then_write(Pin::new(&mut *r), Pin::new(&mut *w), cx, moved, counters)
        })
        .await?;
        match step {
            Step::Eof => {
                // The peer may already be gone; its own direction reports that.
                let _ = w.shutdown().await;
                return Ok(());
            }
            Step::Rest(rest) => {
                w.write_all(&rest).await?;
                moved.fetch_add(rest.len() as u64, Ordering::Relaxed);
            }
            Step::Moved => {}
        }
        w.flush().await?;
    }
}

/// One poll: borrow the thread's buffer, read once, write what was read, give the buffer back.
fn read_then_write<R, W>(
    r: Pin<&mut R>,
    mut w: Pin<&mut W>,
    cx: &mut Context<'_>,
    moved: &AtomicU64,
    counters: &Counters,
) -> Poll<io::Result<Step>>
where
    R: AsyncRead,
    W: AsyncWrite,
{
    with_buffer(|buf| {
        let mut read = ReadBuf::new(buf);
        match r.poll_read(cx, &mut read) {
            Poll::Pending => return Poll::Pending,
            // A TLS peer that closes without close_notify has still closed.
            Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Poll::Ready(Ok(Step::Eof));
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Ready(Ok(())) => {}
        }
        let n = read.filled().len();
        if n == 0 {
            return Poll::Ready(Ok(Step::Eof));
        }
        counters.touch();
        let mut written = 0;
        while written < n {
            match w.as_mut().poll_write(cx, &buf[written..n]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(m)) => written += m,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => break,
            }
        }
        moved.fetch_add(written as u64, Ordering::Relaxed);
        Poll::Ready(Ok(if written == n {
            Step::Moved
        } else {
            Step::Rest(buf[written..n].to_vec())
        }))
    })
}

/// Pass an EOF on: shut down the write side. The peer may already be gone;
/// its own direction reports that.
pub fn half_close(dst: &TcpStream) {
    let _ = rustix::net::shutdown(dst, rustix::net::Shutdown::Write);
}
