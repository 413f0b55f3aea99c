//! The log lines of the test binary, captured in memory so tests can check
//! what shunt logged (once, and without a secret in it).

use std::sync::{Arc, Mutex};

/// Every log line of the test binary, captured (installed by [`capture_logs`]).
static LOGS: std::sync::OnceLock<Arc<Mutex<Vec<u8>>>> = std::sync::OnceLock::new();

#[derive(Clone)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Install the capturing subscriber once.
pub(crate) fn capture_logs() {
    LOGS.get_or_init(|| {
        let buf: Arc<Mutex<Vec<u8>>> = Arc::default();
        let sink = Capture(buf.clone());
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || sink.clone())
            .finish();
        let _ = tracing::subscriber::set_global_default(subscriber);
        buf
    });
}

/// The captured log text so far.
pub(crate) fn logs() -> String {
    capture_logs();
    String::from_utf8_lossy(&LOGS.get().unwrap().lock().unwrap()).into_owned()
}
