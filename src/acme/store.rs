//! The ACME state directory: the account, the certificate and its key.
//!
//! Files: `account.json` (instant-acme's credentials: the account URL and
//! its private key), `cert.pem` (chain, leaf first) and `key.pem`. Every
//! file is written 0600 to a temporary file in the same directory, synced,
//! then renamed over the old one, so a crash leaves the old file or the new
//! one, never half of either. The certificate and its key are two files;
//! the key is written first, and a pair that does not match is treated as
//! no certificate (the next order replaces both).

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Why the state directory could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("ACME state {}", path.display())]
pub struct StoreError {
    /// The file or directory at fault.
    pub path: PathBuf,
    /// What the filesystem said.
    #[source]
    pub source: std::io::Error,
}

/// The state directory of one certificate.
#[derive(Debug, Clone)]
pub(crate) struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    /// The directory `dir`, created 0700 if missing.
    pub(crate) fn open(dir: &Path) -> Result<StateDir, StoreError> {
        let err = |source| StoreError {
            path: dir.to_owned(),
            source,
        };
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(err)?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(err)?;
        }
        Ok(StateDir {
            dir: dir.to_owned(),
        })
    }

    /// `account.json`.
    pub(crate) fn account(&self) -> PathBuf {
        self.dir.join("account.json")
    }

    /// `cert.pem`: the chain, leaf first.
    pub(crate) fn cert(&self) -> PathBuf {
        self.dir.join("cert.pem")
    }

    /// `key.pem`: the certificate's private key.
    pub(crate) fn key(&self) -> PathBuf {
        self.dir.join("key.pem")
    }

    /// The contents of `path`, or `None` if it does not exist.
    pub(crate) fn read(&self, path: &Path) -> Result<Option<String>, StoreError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Ok(Some(text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StoreError {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// Write `text` to `path` atomically, mode 0600.
    pub(crate) fn write(&self, path: &Path, text: &str) -> Result<(), StoreError> {
        let tmp = path.with_extension("tmp");
        let err = |source| StoreError {
            path: path.to_owned(),
            source,
        };
        let _ = std::fs::remove_file(&tmp);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(err)?;
        file.write_all(text.as_bytes()).map_err(err)?;
        file.sync_all().map_err(err)?;
        drop(file);
        std::fs::rename(&tmp, path).map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_are_0600_and_replace_the_old_file() {
        let dir = std::env::temp_dir().join(format!("shunt-acme-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let state = StateDir::open(&dir).unwrap();
        assert_eq!(
            std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        assert_eq!(state.read(&state.key()).unwrap(), None);
        state.write(&state.key(), "one").unwrap();
        state.write(&state.key(), "two").unwrap();
        assert_eq!(state.read(&state.key()).unwrap().as_deref(), Some("two"));
        let mode = std::fs::metadata(state.key()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!state.key().with_extension("tmp").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
