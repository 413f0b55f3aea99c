//! Reload when the config file, a certificate, a key or a file they name
//! changes on disk.
//!
//! Watches the *directories* holding those files, not the files: certbot's
//! atomic rename and the `..data` symlink swap of Kubernetes secret volumes
//! replace inodes, which a file watch would lose. Only events that can change
//! content count (inotify also reports opens and reads, which would otherwise
//! make every reload trigger the next). Bursts are coalesced into one reload.
//! The watched set follows the configuration after each reload.
//!
//! Paths are resolved to canonical absolute directories before they are
//! watched and compared: inotify reports absolute paths under the directory
//! actually watched, which a relative `--config jwt.toml` or a symlinked
//! directory would never equal.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode, EventKind};
use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::handles::Handles;
use crate::reload::Reloader;

/// How long a burst of events may last before the reload runs.
const DEBOUNCE: Duration = Duration::from_millis(300);

/// A watched file, by the canonical directory holding it and its name.
///
/// Resolved once per configuration: a relative `--config jwt.toml` (or a
/// certificate named relative to it, or a directory reached through a
/// symlink) becomes the absolute, canonical directory that inotify reports
/// events under, so events and files compare equal.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Watched {
    dir: PathBuf,
    name: OsString,
}

/// Start watching; the task ends at shutdown.
///
/// The directories are watched before this returns, not when the task first
/// runs: a file changed right after start (a deploy script, a test) is seen.
pub(crate) fn spawn(handles: Arc<Handles>, reloader: Arc<Reloader>) -> notify::Result<()> {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event {
            // The receiver is gone only at shutdown.
            let _ = tx.send(event);
        }
    })?;
    let files = resolve(&handles.live().load().config().watched_files());
    let mut dirs = BTreeSet::new();
    update_watches(&mut watcher, &files, &mut dirs);
    let task = watch_loop(
        Watches {
            watcher,
            files,
            dirs,
        },
        rx,
        handles.clone(),
        reloader,
    );
    handles.shutdown().tracker().spawn(task);
    Ok(())
}

/// The watcher with what it watches: the files that count, and their directories.
struct Watches {
    watcher: RecommendedWatcher,
    files: Vec<Watched>,
    dirs: BTreeSet<PathBuf>,
}

/// Turn file events into reloads: a burst of events is coalesced (an editor
/// or certbot writes several files), then one reload runs.
async fn watch_loop(
    watches: Watches,
    mut events: mpsc::UnboundedReceiver<notify::Event>,
    handles: Arc<Handles>,
    reloader: Arc<Reloader>,
) {
    let Watches {
        mut watcher,
        mut files,
        mut dirs,
    } = watches;
    loop {
        let first = tokio::select! {
            e = events.recv() => match e { Some(e) => e, None => return },
            () = handles.shutdown().token().cancelled() => return,
        };
        let Some(trigger) = relevant(&first, &files) else {
            continue;
        };
        // Coalesce the rest of the burst (an editor or certbot writes several files).
        let deadline = tokio::time::Instant::now() + DEBOUNCE;
        while let Ok(Some(_)) = tokio::time::timeout_at(deadline, events.recv()).await {}
        let _ = reloader
            .reload(
                crate::reload::Trigger::File,
                &format!("file change: {}", trigger.display()),
            )
            .await;
        files = resolve(&handles.live().load().config().watched_files());
        update_watches(&mut watcher, &files, &mut dirs);
    }
}

/// Each file as its canonical directory and name. A directory that cannot
/// be resolved (not there yet) is kept absolute, as written.
fn resolve(files: &[PathBuf]) -> Vec<Watched> {
    files
        .iter()
        .filter_map(|f| {
            let name = f.file_name()?.to_owned();
            let dir = directory_of(f);
            let dir = std::fs::canonicalize(&dir)
                .or_else(|_| std::path::absolute(&dir))
                .unwrap_or(dir);
            Some(Watched { dir, name })
        })
        .collect()
}

/// Watch the directory of every file; drop directories no longer needed.
fn update_watches(
    watcher: &mut RecommendedWatcher,
    files: &[Watched],
    dirs: &mut BTreeSet<PathBuf>,
) {
    let wanted: BTreeSet<PathBuf> = files.iter().map(|f| f.dir.clone()).collect();
    for gone in dirs.difference(&wanted) {
        let _ = watcher.unwatch(gone);
    }
    for dir in wanted.difference(dirs) {
        match watcher.watch(dir, RecursiveMode::NonRecursive) {
            Ok(()) => tracing::debug!(dir = %dir.display(), "watching for changes"),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot watch for changes; use SIGHUP or POST /reload")
            }
        }
    }
    *dirs = wanted;
}

/// The directory holding `file`: watching the directory, not the file,
/// survives editors and volume swaps that replace the file by a rename.
fn directory_of(file: &Path) -> PathBuf {
    match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// The path that makes `event` worth a reload, if any.
fn relevant<'a>(event: &'a notify::Event, files: &[Watched]) -> Option<&'a Path> {
    let changes_content = matches!(
        event.kind,
        EventKind::Create(_)
            | EventKind::Modify(_)
            | EventKind::Remove(_)
            | EventKind::Access(AccessKind::Close(AccessMode::Write))
    );
    if !changes_content {
        return None;
    }
    event.paths.iter().map(PathBuf::as_path).find(|path| {
        let (Some(name), Some(dir)) = (path.file_name(), path.parent()) else {
            return false;
        };
        let in_dir = |f: &Watched| {
            // inotify names events under the (canonical) directory watched.
            f.dir == dir || std::fs::canonicalize(dir).is_ok_and(|d| d == f.dir)
        };
        // Kubernetes secret volumes swap `..data` and `..<timestamp>` entries.
        let volume_swap = name.to_string_lossy().starts_with("..");
        files
            .iter()
            .any(|f| in_dir(f) && (volume_swap || f.name == name))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{CreateKind, ModifyKind};

    fn event(kind: EventKind, path: &str) -> notify::Event {
        notify::Event::new(kind).add_path(PathBuf::from(path))
    }

    #[test]
    fn only_content_changes_to_watched_files_count() {
        let files = resolve(&[
            PathBuf::from("/etc/shunt/tls.crt"),
            PathBuf::from("/etc/shunt/shunt.toml"),
        ]);
        let modify = EventKind::Modify(ModifyKind::Any);
        assert!(relevant(&event(modify, "/etc/shunt/tls.crt"), &files).is_some());
        assert!(
            relevant(
                &event(EventKind::Create(CreateKind::File), "/etc/shunt/..data"),
                &files
            )
            .is_some()
        );
        assert!(relevant(&event(modify, "/etc/shunt/other.txt"), &files).is_none());
        assert!(relevant(&event(modify, "/elsewhere/tls.crt"), &files).is_none());
        let open = EventKind::Access(AccessKind::Open(AccessMode::Any));
        assert!(relevant(&event(open, "/etc/shunt/tls.crt"), &files).is_none());
    }
}
