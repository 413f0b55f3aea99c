//! The zero-copy primitives: `splice(2)` socket → pipe and pipe → socket,
//! through rustix's safe wrapper, and a probe of whether the kernel allows it.
//!
//! Bytes moved this way never enter userspace. [`super::direction`] drives
//! them: it only ever fills an empty pipe, so `EAGAIN` on the way in can only
//! mean the socket is drained. Whether splice works at all is probed once per
//! process, at start.

use std::io;
use std::sync::OnceLock;

use rustix::pipe::{PipeFlags, SpliceFlags, pipe_with, splice};
use tokio::net::TcpStream;

use super::pool::Pipe;

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

/// Splice from a socket into an empty pipe, up to its capacity and `max`; `Ok(0)` is EOF.
pub fn into_pipe(src: &TcpStream, pipe: &Pipe, max: usize) -> io::Result<usize> {
    let len = pipe.size.min(max.max(1));
    splice(src, None, &pipe.write, None, len, FLAGS).map_err(io::Error::from)
}

/// Splice what the pipe holds into a socket.
pub fn out_of_pipe(pipe: &Pipe, dst: &TcpStream) -> io::Result<usize> {
    splice(&pipe.read, None, dst, None, pipe.pending, FLAGS).map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    #[test]
    fn splice_is_available_on_linux() {
        assert_eq!(super::available(), Ok(()));
    }
}
