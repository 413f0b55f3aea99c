//! Temporary files for the tests that need a config, token or secret file
//! on disk; each is removed when dropped.

use std::io::Write as _;
use std::path::PathBuf;

/// A temporary file with `content`, removed on drop.
pub(crate) struct TempFile(pub PathBuf);

impl TempFile {
    /// A fresh file named after `name`, holding `content`.
    pub(crate) fn new(name: &str, content: &str) -> TempFile {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("shunt-test-{}-{n}-{name}", std::process::id()));
        TempFile::write(&path, content);
        TempFile(path)
    }

    /// Replace the content of the file at `path`.
    pub(crate) fn write(path: &PathBuf, content: &str) {
        let mut f = std::fs::File::create(path).unwrap();
        f.write_all(content.as_bytes()).unwrap();
    }

    /// The path, as the flags take it.
    pub(crate) fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
