//! Logging setup: pretty or JSON lines, filtered by `RUST_LOG` (default `info`).
//!
//! Access-log lines come from [`crate::proxy`] under the target `shunt::access`
//! with the fields `peer method path status route upstream websocket ms`.
//!
//! Lines go to stderr, where a container runtime collects them. JSON lines
//! carry the same fields as flat keys (no nested `fields` object), so a log
//! collector can index `route` and `upstream` directly.
//!
//! Why a non-blocking writer: a request that logs must not wait for stderr.
//! A synchronous write takes the stderr lock and makes one `write(2)` per line
//! on the request's thread, and a slow log collector (a full pipe) would stall
//! every connection. Lines are formatted on the request's thread and queued
//! (bounded, [`QUEUE_LINES`]); one writer thread drains the queue to stderr,
//! one write per burst of lines.
//! Access lines, one per request, are gathered per thread first and queued
//! in batches ([`batch`]): under steady traffic a line per request woke the
//! writer thread per request. They are formatted straight into that batch,
//! not through `tracing` ([`access`]), in the same form.
//! When the queue is full, lines are dropped and counted
//! ([`dropped_lines`], `shunt_log_lines_dropped_total` in `/metrics`) rather
//! than slowing the proxy down. The [`LogGuard`] returned by [`init`] flushes
//! the queue when dropped, so the last lines ("stopped") reach stderr at exit.
//!
//! Pretty lines are coloured only when stderr is a terminal and `NO_COLOR` is
//! unset or empty (<https://no-color.org>): a file or journald gets no ANSI codes.

pub(crate) mod access;
pub(crate) mod batch;
pub(crate) mod refusals;

use std::io::IsTerminal;
use std::sync::{Arc, OnceLock};

use tracing::Metadata;
use tracing_appender::non_blocking::{ErrorCounter, NonBlocking, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::writer::EitherWriter;

use batch::{BatchWriter, Batcher};

use crate::config::LogFormat;

/// The target of access-log lines.
pub(crate) const ACCESS_TARGET: &str = "shunt::access";

/// Messages the log queue holds before new ones are dropped: single lines,
/// or batches of access lines of up to [`batch::BATCH_BYTES`] (so the queue
/// holds at most a few tens of MiB).
pub(crate) const QUEUE_LINES: usize = 1024;

/// Bytes the writer thread gathers before a write to stderr.
const WRITE_BUFFER: usize = 64 * 1024;

/// Counts the lines dropped because the queue was full; set by [`init`].
static DROPPED: OnceLock<ErrorCounter> = OnceLock::new();

/// The access-line batcher; set by [`init`].
static ACCESS: OnceLock<Arc<Batcher<NonBlocking>>> = OnceLock::new();

/// The direct access-line writer; set by [`init`] unless lines are coloured.
static DIRECT: OnceLock<access::Direct> = OnceLock::new();

/// Where each line goes: access lines to the batcher, the rest to the queue.
struct Writers {
    queue: NonBlocking,
    access: Arc<Batcher<NonBlocking>>,
}

impl<'a> MakeWriter<'a> for Writers {
    type Writer = EitherWriter<BatchWriter<'a, NonBlocking>, NonBlocking>;

    fn make_writer(&'a self) -> Self::Writer {
        EitherWriter::B(self.queue.clone())
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Self::Writer {
        if meta.target() == ACCESS_TARGET {
            EitherWriter::A(self.access.writer())
        } else {
            EitherWriter::B(self.queue.clone())
        }
    }
}

/// Keeps the log writer thread alive; dropping it flushes queued lines.
/// Hold it for the whole life of the process.
#[must_use = "dropping the guard stops the log writer"]
#[derive(Debug)]
pub struct LogGuard {
    _worker: Option<WorkerGuard>,
}

impl Drop for LogGuard {
    /// The batched access lines first, then the queue (the worker guard).
    fn drop(&mut self) {
        if self._worker.is_some()
            && let Some(access) = ACCESS.get()
        {
            access.stop();
        }
    }
}

/// Install the global subscriber, writing through a non-blocking queue to
/// stderr; later calls are ignored (and their guard does nothing).
pub fn init(format: LogFormat) -> LogGuard {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(QUEUE_LINES)
        .thread_name("shunt-log")
        // Buffered: the writer thread drains every queued line, then flushes,
        // so a burst of lines costs one write(2), not one per line.
        .finish(std::io::BufWriter::with_capacity(
            WRITE_BUFFER,
            std::io::stderr(),
        ));
    let counter = writer.error_counter();
    let access = match Batcher::start(writer.clone(), queue_dropped) {
        Ok(b) => Arc::new(b),
        Err(e) => {
            eprintln!("shunt: cannot start the log flusher thread: {e}");
            return LogGuard { _worker: None };
        }
    };
    let writers = Writers {
        queue: writer,
        access: access.clone(),
    };
    let ansi = colour(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR"),
    );
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writers)
        .with_ansi(ansi);
    let installed = match format {
        LogFormat::Pretty => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    if installed.is_err() {
        return LogGuard { _worker: None };
    }
    let _ = DROPPED.set(counter);
    let form = match format {
        // A terminal's coloured lines keep to `tracing`: no throughput matters there.
        LogFormat::Pretty if ansi => None,
        LogFormat::Pretty => Some(access::Form::Pretty),
        LogFormat::Json => Some(access::Form::Json),
    };
    if let Some(form) = form {
        let _ = DIRECT.set(access::Direct {
            form,
            batcher: access.clone(),
        });
    }
    let _ = ACCESS.set(access);
    LogGuard {
        _worker: Some(guard),
    }
}

/// Log lines dropped so far because the queue to stderr was full (0 before [`init`]).
pub(crate) fn dropped_lines() -> usize {
    queue_dropped() + ACCESS.get().map_or(0, |a| a.dropped_extra())
}

/// Messages the queue dropped (a dropped batch counts once here).
fn queue_dropped() -> usize {
    DROPPED.get().map_or(0, ErrorCounter::dropped_lines)
}

/// Whether to colour: on a terminal, unless `NO_COLOR` is set to something.
fn colour(terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::colour;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour(true, None));
        assert!(colour(true, Some("".into())));
        assert!(!colour(true, Some("1".into())));
        assert!(!colour(false, None));
    }
}
