//! The zero-copy tunnel path: `splice(2)` socket → pipe → socket, for tunnels
//! whose two legs are both plain TCP.
//!
//! Bytes never enter userspace. A direction waits for its source to be
//! readable holding nothing, borrows a pipe from the [`PipePool`] for the
//! burst, splices until the source has no more and the pipe is empty, and
//! gives the pipe back. Only an empty pipe is ever filled, so `EAGAIN` on
//! the way in can only mean the socket is drained. If the pool is exhausted
//! the burst goes through the buffered path instead of waiting for a pipe.
//! Whether the kernel allows splice at all is probed once, at start.

use std::io;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::pipe::{PipeFlags, SpliceFlags, pipe_with, splice};
use tokio::io::Interest;
use tokio::net::TcpStream;

use super::Counters;
use super::copy::{self, Burst};
use super::pool::{Pipe, PipePool};

const FLAGS: SpliceFlags = SpliceFlags::MOVE.union(SpliceFlags::NONBLOCK);

/// Whether `splice(2)` works here: probed once per process (a socket pair,
/// one byte through a pipe), then remembered.
pub fn available() -> Result<(), String> {
    static PROBED: OnceLock<Result<(), String>> = OnceLock::new();
    PROBED
        .get_or_init(|| probe().map_err(|e| e.to_string()))
        .clone()
}

fn probe() -> io::Result<()> {
    use rustix::net::{AddressFamily, SendFlags, SocketFlags, SocketType, send, socketpair};
    let (a, b) = socketpair(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?;
    let (pr, pw) = pipe_with(PipeFlags::NONBLOCK | PipeFlags::CLOEXEC)?;
    send(&a, b"x", SendFlags::empty())?;
    let into_pipe = splice(&b, None, &pw, None, 1, FLAGS)?;
    let out_of_pipe = splice(&pr, None, &a, None, 1, FLAGS)?;
    if (into_pipe, out_of_pipe) != (1, 1) {
        return Err(io::Error::other(format!(
            "moved {into_pipe} byte(s) in and {out_of_pipe} out instead of 1"
        )));
    }
    Ok(())
}

/// Splice `src` to `dst` until EOF, then half-close `dst`.
pub async fn splice_until_closed(
    src: &TcpStream,
    dst: &TcpStream,
    pool: &PipePool,
    moved: &AtomicU64,
    counters: &Counters,
) -> io::Result<()> {
    loop {
        src.readable().await?;
        let burst = match pool.take() {
            Some(mut pipe) => pump(src, dst, &mut pipe, moved, counters).await?,
            None => copy::tcp_burst(src, dst, moved, counters).await?,
        };
        if burst == Burst::Eof {
            copy::half_close(dst);
            return Ok(());
        }
    }
}

/// Splice through `pipe` until `src` has nothing more; the pipe is empty on `Ok`.
async fn pump(
    src: &TcpStream,
    dst: &TcpStream,
    pipe: &mut Pipe,
    moved: &AtomicU64,
    counters: &Counters,
) -> io::Result<Burst> {
    loop {
        let filled = src.try_io(Interest::READABLE, || {
            splice(src, None, &pipe.write, None, pipe.size, FLAGS).map_err(io::Error::from)
        });
        let n = match filled {
            Ok(0) => return Ok(Burst::Eof),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Burst::Drained),
            Err(e) => return Err(e),
        };
        pipe.pending = n;
        counters.touch();
        while pipe.pending > 0 {
            dst.writable().await?;
            let drained = dst.try_io(Interest::WRITABLE, || {
                splice(&pipe.read, None, dst, None, pipe.pending, FLAGS).map_err(io::Error::from)
            });
            match drained {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(m) => {
                    pipe.pending -= m;
                    moved.fetch_add(m as u64, Ordering::Relaxed);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn splice_is_available_on_linux() {
        assert_eq!(super::available(), Ok(()));
    }
}
