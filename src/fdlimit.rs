//! The file-descriptor budget: raise the soft `RLIMIT_NOFILE` to the hard
//! limit at start, and say whether `--max-conns` fits in it.
//!
//! Why: distributions start services with a soft limit of 1024 while the hard
//! limit is far higher; nginx (`worker_rlimit_nofile`) and Go's runtime raise
//! it for the same reason. Each tunnel holds two sockets (downstream and
//! upstream), each splice pipe two more descriptors, and shunt itself needs a
//! few for listeners, the event loop, the file watcher and log output. When the
//! budget runs out anyway, the accept loop backs off (see [`crate::listener`])
//! and live calls are untouched.
//!
//! Called from `main` only: tests run many shunts in one process and must not
//! change its limits.

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// Descriptors shunt needs besides tunnels and pipes: listeners, epoll,
/// the watcher, signal pipes, config and certificate reads, health probes.
pub(crate) const RESERVED: u64 = 64;

/// The limit in force after [`raise_to_hard`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoFile {
    /// The soft limit before shunt raised it (`None`: unlimited).
    pub was: Option<u64>,
    /// The soft limit now.
    pub soft: Option<u64>,
    /// The hard limit.
    pub hard: Option<u64>,
}

/// Raise the soft `RLIMIT_NOFILE` to the hard limit, logging the result.
/// A failure (e.g. an unlimited hard limit the kernel will not grant) keeps the
/// old limit and is logged; shunt still starts.
pub fn raise_to_hard() -> NoFile {
    let before = getrlimit(Resource::Nofile);
    let mut now = before;
    if before.current != before.maximum {
        let wanted = Rlimit {
            current: before.maximum,
            maximum: before.maximum,
        };
        match setrlimit(Resource::Nofile, wanted) {
            Ok(()) => now = getrlimit(Resource::Nofile),
            Err(e) => tracing::warn!(
                error = %e,
                soft = show(before.current),
                hard = show(before.maximum),
                "cannot raise the open-files limit to the hard limit; keeping it"
            ),
        }
    }
    let limit = NoFile {
        was: before.current,
        soft: now.current,
        hard: now.maximum,
    };
    tracing::info!(
        soft = show(limit.soft),
        hard = show(limit.hard),
        was = show(limit.was),
        "open-files limit (RLIMIT_NOFILE) {}",
        show(limit.soft)
    );
    limit
}

/// Descriptors `max_conns` tunnels and `max_pipes` splice pipes need at most.
pub(crate) fn needed(max_conns: u64, max_pipes: u64) -> u64 {
    max_conns
        .saturating_mul(2)
        .saturating_add(max_pipes.saturating_mul(2))
        .saturating_add(RESERVED)
}

/// Why the configured limits do not fit the descriptor budget, if they don't.
pub(crate) fn shortfall(
    soft: Option<u64>,
    max_conns: Option<usize>,
    max_pipes: usize,
) -> Option<String> {
    let soft = soft?;
    let pipes = max_pipes as u64;
    match max_conns {
        Some(conns) => {
            let need = needed(conns as u64, pipes);
            (need > soft).then(|| {
                format!(
                    "--max-conns {conns} needs up to {need} file descriptors (2 per tunnel, 2 per \
                     splice pipe up to --max-pipes {max_pipes}, {RESERVED} reserved) but the \
                     open-files limit is {soft}; raise it (ulimit -n, LimitNOFILE=) or lower --max-conns"
                )
            })
        }
        None => {
            let fit = soft.saturating_sub(needed(0, pipes)) / 2;
            Some(format!(
                "--max-conns is unlimited; the open-files limit {soft} fits about {fit} tunnels \
                 (2 descriptors each, plus pipes); beyond that new connections wait in the \
                 accept back-off"
            ))
        }
    }
}

/// Check the budget against the configuration and warn when it cannot fit.
pub fn check(limit: NoFile, max_conns: Option<usize>, max_pipes: usize) {
    match (shortfall(limit.soft, max_conns, max_pipes), max_conns) {
        (Some(why), Some(_)) => tracing::warn!("{why}"),
        (Some(why), None) => tracing::info!("{why}"),
        (None, _) => {}
    }
}

fn show(limit: Option<u64>) -> String {
    limit.map_or_else(|| "unlimited".to_owned(), |n| n.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_conns_that_fit_give_no_warning() {
        assert_eq!(shortfall(Some(65536), Some(1000), 512), None);
        assert_eq!(shortfall(None, Some(1_000_000), 512), None);
    }

    #[test]
    fn max_conns_beyond_the_limit_is_named_with_the_numbers() {
        let why = shortfall(Some(1024), Some(1000), 512).unwrap();
        assert!(why.contains("--max-conns 1000"), "{why}");
        assert!(why.contains("3088"), "{why}");
        assert!(why.contains("1024"), "{why}");
    }

    #[test]
    fn huge_values_do_not_overflow() {
        assert!(shortfall(Some(10), Some(usize::MAX), usize::MAX).is_some());
        assert_eq!(needed(u64::MAX, u64::MAX), u64::MAX);
    }
}
