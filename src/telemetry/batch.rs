//! Access-log lines gathered per thread and handed to the log queue in
//! batches.
//!
//! Why: the log queue ([`tracing_appender::non_blocking()`]) wakes its writer
//! thread whenever a line arrives at an empty queue. Under steady traffic
//! the writer keeps up, parks, and is woken again by the next line: one
//! futex wake-up and a context switch per request on a 2-core machine,
//! which cost plain HTTP more than formatting the line. Here each thread
//! appends its access lines to a buffer of its own (a lock nobody else
//! takes, but the flusher every [`FLUSH_EVERY`]) and a batch goes to the
//! queue as one message: when it reaches [`BATCH_BYTES`], or when the
//! flusher thread sweeps it. The first line into an empty set of buffers
//! wakes the flusher once; it then waits [`FLUSH_EVERY`] for the rest of
//! the burst. So a line reaches stderr at most about 50 ms late, and lines
//! of one thread stay in order (lines of different threads may interleave by
//! up to that much, as with nginx's `access_log ... buffer= flush=`).
//!
//! Only the `shunt::access` target is batched; every other line goes to the
//! queue as before, at once. [`Batcher::stop`] (from the [`super::LogGuard`])
//! sweeps a last time, so no line is lost at exit.

use std::cell::RefCell;
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// How long the flusher waits, once woken, before it sweeps every buffer.
pub(crate) const FLUSH_EVERY: Duration = Duration::from_millis(50);
/// A thread's buffer goes to the queue without waiting once it is this large.
pub(crate) const BATCH_BYTES: usize = 32 * 1024;

/// One thread's pending access lines.
#[derive(Debug, Default)]
struct Pending {
    bytes: Vec<u8>,
    lines: usize,
}

/// What the writers and the flusher share.
#[derive(Debug)]
struct Shared<W> {
    /// Tells this batcher's buffers from another's in a thread's list.
    id: u64,
    /// Where batches go (the log queue).
    out: W,
    /// Every thread's buffer; a thread that ended leaves its buffer here
    /// until the flusher has emptied it.
    buffers: Mutex<Vec<Arc<Mutex<Pending>>>>,
    /// Set by the first line after a sweep; the flusher clears it.
    pending: AtomicBool,
    /// Set by [`Batcher::stop`].
    stopping: AtomicBool,
    /// The queue's count of dropped messages: tells whether a batch was dropped.
    dropped: fn() -> usize,
    /// Lines beyond the first of each dropped batch (the queue counts one).
    dropped_extra: AtomicUsize,
}

/// Gathers access lines per thread and hands them to `W` in batches.
#[derive(Debug)]
pub(crate) struct Batcher<W: Write + Clone + Send + Sync + 'static> {
    shared: Arc<Shared<W>>,
    flusher: std::thread::Thread,
    joined: Mutex<Option<JoinHandle<()>>>,
}

thread_local! {
    /// This thread's buffer of each batcher (one in a running shunt), by id.
    static MINE: RefCell<Vec<(u64, Arc<Mutex<Pending>>)>> = const { RefCell::new(Vec::new()) };
}

/// Numbers the batchers.
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl<W: Write + Clone + Send + Sync + 'static> Batcher<W> {
    /// A batcher writing to `out`, a queue whose count of dropped messages
    /// `dropped` reads (`|| 0` for one that never drops); starts the
    /// flusher thread.
    pub(crate) fn start(out: W, dropped: fn() -> usize) -> io::Result<Self> {
        let shared = Arc::new(Shared {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            out,
            buffers: Mutex::new(Vec::new()),
            pending: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            dropped,
            dropped_extra: AtomicUsize::new(0),
        });
        let flusher = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("shunt-log-flush".into())
                .spawn(move || {
                    while !shared.stopping.load(Ordering::Acquire) {
                        std::thread::park();
                        if shared.pending.load(Ordering::Acquire)
                            && !shared.stopping.load(Ordering::Acquire)
                        {
                            // Let the rest of the burst gather.
                            std::thread::park_timeout(FLUSH_EVERY);
                        }
                        shared.sweep();
                    }
                    shared.sweep();
                })?
        };
        Ok(Batcher {
            shared,
            flusher: flusher.thread().clone(),
            joined: Mutex::new(Some(flusher)),
        })
    }

    /// A writer for one access line of the calling thread.
    pub(crate) fn writer(&self) -> BatchWriter<'_, W> {
        BatchWriter { batcher: self }
    }

    /// Lines dropped beyond the queue's own count (the rest of each dropped batch).
    pub(crate) fn dropped_extra(&self) -> usize {
        self.shared.dropped_extra.load(Ordering::Relaxed)
    }

    /// Sweep every buffer a last time and stop the flusher; later lines are
    /// written through at once.
    pub(crate) fn stop(&self) {
        self.shared.stopping.store(true, Ordering::Release);
        self.flusher.unpark();
        if let Some(flusher) = lock(&self.joined).take() {
            let _ = flusher.join();
        }
    }
}

impl<W: Write + Clone> Shared<W> {
    /// Hand every non-empty buffer to the queue; forget those of ended threads.
    fn sweep(&self) {
        self.pending.store(false, Ordering::Release);
        let mut buffers = lock(&self.buffers);
        for buffer in buffers.iter() {
            self.send(&mut lock(buffer));
        }
        // The thread's own list holds the other reference while it lives.
        buffers.retain(|b| Arc::strong_count(b) > 1);
    }

    /// One batch to the queue as one message (the queue copies it), then
    /// emptied in place: the buffer keeps its capacity, so a thread's lines
    /// allocate nothing once it has grown. Counts the lines if dropped. The
    /// queue is lossy, so this never waits while the buffer is locked.
    fn send(&self, batch: &mut Pending) {
        if batch.lines == 0 {
            return;
        }
        let before = (self.dropped)();
        let _ = self.out.clone().write_all(&batch.bytes);
        if (self.dropped)() > before {
            self.dropped_extra
                .fetch_add(batch.lines - 1, Ordering::Relaxed);
        }
        batch.bytes.clear();
        batch.lines = 0;
    }
}

impl<W: Write + Clone + Send + Sync + 'static> Batcher<W> {
    /// Append one line, written by `line` straight into the calling thread's
    /// buffer (registered on first use; nothing is copied or allocated once
    /// the buffer has grown). A full buffer goes to the queue at once; once
    /// stopped, or while the thread is being torn down, the line is written
    /// through instead.
    pub(crate) fn push(&self, line: impl FnOnce(&mut Vec<u8>)) -> io::Result<()> {
        let shared = &self.shared;
        let mut line = Some(line);
        let appended = if shared.stopping.load(Ordering::Acquire) {
            None
        } else {
            self.append(&mut line)
        };
        match appended {
            None => {
                let mut through = Vec::new();
                if let Some(line) = line.take() {
                    line(&mut through);
                }
                return shared.out.clone().write_all(&through);
            }
            // Full, and sent already.
            Some(true) => {}
            // Read first: a set flag (the common case) costs no write to
            // the line the other threads share.
            Some(false)
                if !shared.pending.load(Ordering::Acquire)
                    && !shared.pending.swap(true, Ordering::AcqRel) =>
            {
                self.flusher.unpark();
            }
            Some(false) => {}
        }
        Ok(())
    }

    /// Run `line` on this thread's buffer and send the buffer when it is
    /// full (`Some(true)`); `None` (with `line` left in place) while the
    /// thread is being torn down.
    fn append(&self, line: &mut Option<impl FnOnce(&mut Vec<u8>)>) -> Option<bool> {
        let shared = &self.shared;
        MINE.try_with(|mine| {
            let mut mine = mine.borrow_mut();
            let i = match mine.iter().position(|(id, _)| *id == shared.id) {
                Some(i) => i,
                None => {
                    let buffer = Arc::new(Mutex::new(Pending::default()));
                    lock(&shared.buffers).push(buffer.clone());
                    mine.push((shared.id, buffer));
                    mine.len() - 1
                }
            };
            let mut pending = lock(&mine[i].1);
            if let Some(line) = line.take() {
                line(&mut pending.bytes);
            }
            pending.lines += 1;
            let full = pending.bytes.len() >= BATCH_BYTES;
            if full {
                shared.send(&mut pending);
            }
            full
        })
        .ok()
    }
}

/// Appends one access line to the calling thread's buffer.
#[derive(Debug)]
pub(crate) struct BatchWriter<'a, W: Write + Clone + Send + Sync + 'static> {
    batcher: &'a Batcher<W>,
}

impl<W: Write + Clone + Send + Sync + 'static> Write for BatchWriter<'_, W> {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        self.batcher.push(|buf| buf.extend_from_slice(line))?;
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An in-memory sink standing in for the log queue.
    #[derive(Debug, Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            lock(&self.0).extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Sink {
        fn text(&self) -> String {
            String::from_utf8(lock(&self.0).clone()).expect("utf-8")
        }
    }

    fn never_drops() -> usize {
        0
    }

    /// Polls `f` until it holds, for at most 5 s.
    fn eventually(f: impl Fn() -> bool) -> bool {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if f() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        f()
    }

    #[test]
    fn lines_reach_the_queue_through_the_flusher_in_order() {
        let sink = Sink::default();
        let batcher = Batcher::start(sink.clone(), never_drops).expect("start");
        for i in 0..3 {
            writeln!(batcher.writer(), "line {i}").expect("write");
        }
        assert!(
            eventually(|| sink.text() == "line 0\nline 1\nline 2\n"),
            "got {:?}",
            sink.text()
        );
        batcher.stop();
    }

    #[test]
    fn a_full_batch_goes_at_once_and_stop_sweeps_the_rest() {
        let sink = Sink::default();
        let batcher = Batcher::start(sink.clone(), never_drops).expect("start");
        let line = format!("{}\n", "x".repeat(1023));
        for _ in 0..(BATCH_BYTES / line.len()) {
            batcher.writer().write_all(line.as_bytes()).expect("write");
        }
        // The line that fills the buffer sends the batch from this thread.
        assert_eq!(sink.text().len(), BATCH_BYTES);
        batcher.writer().write_all(b"last\n").expect("write");
        batcher.stop();
        assert!(sink.text().ends_with("last\n"), "stop swept the last line");
        batcher.writer().write_all(b"after\n").expect("write");
        assert!(
            sink.text().ends_with("after\n"),
            "written through once stopped"
        );
    }

    #[test]
    fn lines_of_a_thread_that_ended_are_not_lost() {
        let sink = Sink::default();
        let batcher = Arc::new(Batcher::start(sink.clone(), never_drops).expect("start"));
        let b = batcher.clone();
        std::thread::spawn(move || writeln!(b.writer(), "from a thread").expect("write"))
            .join()
            .expect("thread");
        assert!(eventually(|| sink.text() == "from a thread\n"));
        assert!(
            eventually(|| lock(&batcher.shared.buffers).is_empty()),
            "the ended thread's buffer is forgotten"
        );
        batcher.stop();
    }
}
