//! The worker thread's copy buffer: the one buffer through which tunnels copy: small reads on the
//! plain path, everything on the buffered (TLS) path, and any burst that
//! finds the pipe pool exhausted.
//!
//! No buffer belongs to a tunnel. One buffer per worker thread is borrowed
//! only for the span of a single read and the write that follows it, inside
//! one poll (no `.await` while it is held), so an idle tunnel holds no
//! userspace buffer and a busy one costs nothing extra. If the destination
//! takes only part of a read, exactly the remainder is copied out and kept
//! until written. Frame headers are parsed in this buffer, in place.

use std::cell::RefCell;

/// Size of the per-thread buffer.
pub(super) const BUFFER_SIZE: usize = 64 * 1024;

thread_local! {
    static BUFFER: RefCell<Box<[u8]>> = RefCell::new(vec![0; BUFFER_SIZE].into_boxed_slice());
}

/// Run `f` with the worker thread's buffer; it must not be held across an `.await`.
pub(super) fn with_buffer<T>(f: impl FnOnce(&mut [u8]) -> T) -> T {
    BUFFER.with_borrow_mut(|buf| f(buf))
}
