//! The WebSocket check: which (route, path) pairs the probe loop of one
//! upstream sends a real WebSocket handshake to, every `ws_check_interval`.
//!
//! Why: a fallback probed with `tcp` or `http:` (an nginx without the
//! upgrade headers answers both) looks healthy until the direct backend
//! dies and every reconnecting call gets 502. Checking it on each
//! WebSocket route's path before it is needed puts the route in `/readyz`'s
//! `degraded` list and on the dashboard while the primary still serves.
//!
//! Which routes: those declared with `websocket = true` (set from the
//! snapshot at build, on the route's path), and those through which shunt
//! has seen a 101 (learned on the first one, on the path that upgraded).
//! The list is shared by the snapshot that fills it and the probe task
//! that reads it; it lives as long as the upstream, so an upstream that a
//! reload keeps keeps what it learned. The check itself runs in
//! [`super::probe::probe_loop`].

use std::sync::{Mutex, MutexGuard};

/// One route to check through the upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Check {
    /// The route's label, as `/readyz` names it.
    route: String,
    /// The path the handshake is sent to.
    path: String,
    /// Seen upgrading (a 101), rather than declared `websocket = true`.
    learned: bool,
}

/// The routes whose paths one upstream is WebSocket-checked on.
#[derive(Debug, Default)]
pub(crate) struct WebSocketChecks {
    /// Held only to read or change the list, never across an `.await`.
    checks: Mutex<Vec<Check>>,
}

/// The routes that share one path: one handshake answers for all of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PathCheck {
    /// The path the handshake is sent to.
    pub(crate) path: String,
    /// The labels of the routes checked on it.
    pub(crate) routes: Vec<String>,
}

impl WebSocketChecks {
    /// The list, whatever a panicking holder left (each entry is whole).
    fn lock(&self) -> MutexGuard<'_, Vec<Check>> {
        self.checks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Set at each snapshot build: `declared` are the (label, path) of the
    /// routes through this upstream with `websocket = true`; `routes` the
    /// labels of every route through it. Learned entries of routes that
    /// are gone (or whose host or path changed, so their label did) are
    /// dropped; the others stay.
    pub(crate) fn configure(&self, declared: &[(String, String)], routes: &[String]) {
        let mut checks = self.lock();
        checks.retain(|c| c.learned && routes.contains(&c.route));
        for (route, path) in declared {
            if !checks.iter().any(|c| &c.route == route) {
                checks.push(Check {
                    route: route.clone(),
                    path: path.clone(),
                    learned: false,
                });
            }
        }
    }

    /// A 101 came through route `route` on `path`: from the next check on,
    /// the route is checked on that path. A route already on the list keeps
    /// its path. Called for every WebSocket handshake a route's upstream
    /// upgrades, so the common case (already known) is one short scan.
    ///
    /// Not checked at once: the call that taught it has just started on
    /// one of these upstreams, and a backend that counts its sessions
    /// should see the check at its usual rate, not with every new route.
    pub(crate) fn learn(&self, route: &str, path: &str) {
        let mut checks = self.lock();
        if !checks.iter().any(|c| c.route == route) {
            checks.push(Check {
                route: route.to_owned(),
                path: path.to_owned(),
                learned: true,
            });
        }
    }

    /// What to check now, one entry per path, minus `skip` (the path the
    /// upstream's own `ws:` probe already handshakes on every interval).
    pub(crate) fn due(&self, skip: Option<&str>) -> Vec<PathCheck> {
        let mut out: Vec<PathCheck> = Vec::new();
        for c in self.lock().iter().filter(|c| Some(c.path.as_str()) != skip) {
            match out.iter_mut().find(|p| p.path == c.path) {
                Some(p) => p.routes.push(c.route.clone()),
                None => out.push(PathCheck {
                    path: c.path.clone(),
                    routes: vec![c.route.clone()],
                }),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(r, p)| ((*r).to_owned(), (*p).to_owned()))
            .collect()
    }

    fn labels(list: &[&str]) -> Vec<String> {
        list.iter().map(|l| (*l).to_owned()).collect()
    }

    /// Declared routes are checked on the route's path; a learned route on
    /// the path that upgraded; routes on one path share one handshake; the
    /// `ws:` probe's own path is left out.
    #[test]
    fn declared_and_learned_routes_are_checked_once_per_path() {
        let checks = WebSocketChecks::default();
        assert!(checks.due(None).is_empty());
        checks.configure(&pairs(&[("/audio", "/audio")]), &labels(&["/audio", "/"]));
        checks.learn("/", "/ws");
        checks.learn("/", "/other");
        checks.learn("a.example/audio", "/audio");
        checks.learn("/audio", "/audio/room");
        assert_eq!(
            checks.due(None),
            [
                PathCheck {
                    path: "/audio".into(),
                    routes: labels(&["/audio", "a.example/audio"]),
                },
                PathCheck {
                    path: "/ws".into(),
                    routes: labels(&["/"]),
                },
            ]
        );
        assert_eq!(
            checks.due(Some("/audio")),
            [PathCheck {
                path: "/ws".into(),
                routes: labels(&["/"]),
            }]
        );
    }

    /// A rebuild keeps what was learned for routes that still go through the
    /// upstream, drops the others, and replaces the declared ones.
    #[test]
    fn a_rebuild_keeps_learned_routes_that_still_exist() {
        let checks = WebSocketChecks::default();
        checks.configure(
            &pairs(&[("/declared", "/declared")]),
            &labels(&["/declared"]),
        );
        checks.learn("/kept", "/kept/ws");
        checks.learn("/gone", "/gone");
        checks.configure(&[], &labels(&["/kept", "/declared"]));
        assert_eq!(
            checks.due(None),
            [PathCheck {
                path: "/kept/ws".into(),
                routes: labels(&["/kept"]),
            }]
        );
    }
}
