//! Kernel pipes for splice tunnels: a bounded pool lent to a direction
//! while bytes move, and the `splice(2)` calls that move them.
//!
//! `splice(2)` moves bytes socket → pipe → socket without copying them into
//! userspace (through rustix's safe wrapper), but every pipe costs two file
//! descriptors and up to `pipe_size` of kernel memory, so a pipe per tunnel
//! would not scale to thousands of idle audio calls under the process's
//! descriptor limit. Instead a tunnel direction borrows a pipe when its
//! source becomes readable and gives it back as soon as the pipe is drained
//! again; an idle tunnel holds none. A pipe given back with bytes still
//! inside (its tunnel died mid-burst) is closed, never reused, so no byte
//! can leak into another tunnel.
//!
//! [`super::direction`] drives the splices: it only ever fills an empty
//! pipe, so `EAGAIN` on the way in can only mean the socket is drained.
//! Whether splice works at all is probed once per process, at start
//! ([`available`]).

use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use rustix::pipe::{PipeFlags, SpliceFlags, fcntl_setpipe_size, pipe_with, splice};
use tokio::net::TcpStream;

/// Idle pipes kept open for reuse; the rest are closed when given back.
const IDLE_KEPT: usize = 64;

/// One pipe and what is in it.
#[derive(Debug)]
pub(crate) struct Pipe {
    /// Read end: spliced into the destination socket.
    pub read: OwnedFd,
    /// Write end: the source socket is spliced into it.
    pub write: OwnedFd,
    /// Capacity the kernel granted.
    pub size: usize,
    /// Bytes spliced in and not yet out.
    pub pending: usize,
}

/// The pool: idle pipes, and counters for `/status`.
#[derive(Debug)]
pub(crate) struct PipePool {
    idle: Mutex<Vec<Pipe>>,
    size: usize,
    max: usize,
    open: AtomicUsize,
    in_use: AtomicUsize,
    exhausted: AtomicUsize,
}

impl PipePool {
    /// A pool of at most `max` pipes of `size` bytes each (the kernel may round it).
    pub(crate) fn new(size: usize, max: usize) -> Self {
        PipePool {
            idle: Mutex::new(Vec::new()),
            size,
            max,
            open: AtomicUsize::new(0),
            in_use: AtomicUsize::new(0),
            exhausted: AtomicUsize::new(0),
        }
    }

    /// Borrow a pipe; `None` if `max` are lent out already (or the kernel
    /// refused a new one): the caller copies this burst through a buffer.
    pub(crate) fn take(&self) -> Option<Pipe> {
        let reused = self.lock().pop();
        let pipe = match reused {
            Some(p) => p,
            None => match self.open_one() {
                Ok(p) => p,
                Err(e) => {
                    if self.exhausted.fetch_add(1, Ordering::Relaxed) == 0 {
                        tracing::warn!(error = %e, max = self.max, "pipe pool exhausted; copying through a buffer meanwhile");
                    }
                    return None;
                }
            },
        };
        self.in_use.fetch_add(1, Ordering::Relaxed);
        Some(pipe)
    }

    fn open_one(&self) -> io::Result<Pipe> {
        let reserved = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            });
        if reserved.is_err() {
            return Err(io::Error::other("every pipe is in use"));
        }
        let made = pipe_with(PipeFlags::NONBLOCK | PipeFlags::CLOEXEC).map_err(io::Error::from);
        let (read, write) = match made {
            Ok(ends) => ends,
            Err(e) => {
                self.open.fetch_sub(1, Ordering::AcqRel);
                return Err(e);
            }
        };
        // Unprivileged users may be over pipe-user-pages-soft: keep the default size then.
        let size = fcntl_setpipe_size(&write, self.size)
            .or_else(|_| rustix::pipe::fcntl_getpipe_size(&write))
            .unwrap_or(64 * 1024);
        Ok(Pipe {
            read,
            write,
            size,
            pending: 0,
        })
    }

    /// Give a pipe back: kept for reuse if empty, closed otherwise.
    pub(crate) fn give(&self, pipe: Pipe) {
        self.in_use.fetch_sub(1, Ordering::Relaxed);
        if pipe.pending == 0 {
            let mut idle = self.lock();
            if idle.len() < IDLE_KEPT {
                idle.push(pipe);
                return;
            }
        }
        // Not empty (its tunnel ended mid-burst) or not needed: close it.
        drop(pipe);
        self.open.fetch_sub(1, Ordering::AcqRel);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Pipe>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Pipes lent to a tunnel right now.
    pub(crate) fn in_use(&self) -> usize {
        self.in_use.load(Ordering::Relaxed)
    }

    /// Pipes open (lent or kept idle).
    pub(crate) fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Times a burst found the pool exhausted and was copied instead.
    pub(crate) fn exhausted(&self) -> usize {
        self.exhausted.load(Ordering::Relaxed)
    }
}

const FLAGS: SpliceFlags = SpliceFlags::MOVE.union(SpliceFlags::NONBLOCK);

/// Whether `splice(2)` works here: probed once per process (a socket pair,
/// one byte through a pipe), then remembered.
pub(super) fn available() -> Result<(), String> {
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
pub(super) fn into_pipe(src: &TcpStream, pipe: &Pipe, max: usize) -> io::Result<usize> {
    let len = pipe.size.min(max.max(1));
    splice(src, None, &pipe.write, None, len, FLAGS).map_err(io::Error::from)
}

/// Splice what the pipe holds into a socket.
pub(super) fn out_of_pipe(pipe: &Pipe, dst: &TcpStream) -> io::Result<usize> {
    splice(&pipe.read, None, dst, None, pipe.pending, FLAGS).map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lends_up_to_the_bound_and_reuses_empty_pipes() {
        let pool = PipePool::new(64 * 1024, 2);
        let a = pool.take().expect("first");
        let b = pool.take().expect("second");
        assert!(pool.take().is_none(), "bounded at 2");
        assert_eq!((pool.in_use(), pool.open()), (2, 2));
        pool.give(a);
        assert_eq!((pool.in_use(), pool.open()), (1, 2), "empty pipe kept idle");
        let c = pool.take().expect("reused");
        pool.give(b);
        pool.give(c);
        assert_eq!((pool.in_use(), pool.open()), (0, 2));
        assert_eq!(pool.exhausted(), 1);
    }

    #[test]
    fn a_pipe_given_back_non_empty_is_closed() {
        let pool = PipePool::new(64 * 1024, 4);
        let mut pipe = pool.take().expect("pipe");
        pipe.pending = 10;
        pool.give(pipe);
        assert_eq!((pool.in_use(), pool.open()), (0, 0));
    }

    #[test]
    fn splice_is_available_on_linux() {
        assert_eq!(super::available(), Ok(()));
    }
}
