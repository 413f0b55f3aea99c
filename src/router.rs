//! Routing: host + longest path prefix → [`Route`].
//!
//! Prefixes match whole segments (`/frontend-audio` matches `/frontend-audio`
//! and `/frontend-audio/x`, not `/frontend-audiox`). Routes naming a host win
//! over host-less ones. Matching runs on the normalized path (dot segments
//! resolved, percent-encoded dots decoded, repeated slashes folded), so a path
//! trick cannot reach another route's upstream.
//!
//! The table is built once per snapshot and sorted by specificity, so a
//! lookup is a linear walk that stops at the first match; route counts are
//! small (a handful), where that beats any index. The host comparison ignores
//! case and the port, as `Host` headers vary in both.

use std::borrow::Cow;
use std::sync::Arc;

use crate::config::RouteSpec;
use crate::percent;
use crate::upstream::Upstream;

/// One route with its upstreams resolved, in order of preference.
#[derive(Debug)]
pub struct Route {
    /// The route as configured.
    pub spec: RouteSpec,
    /// How logs and `/status` name it.
    pub label: String,
    /// The upstreams, resolved from `spec.via`, in order of preference.
    pub via: Vec<Arc<Upstream>>,
}

/// The routing table of one snapshot.
#[derive(Debug, Default)]
pub struct Router {
    /// Most specific first: host routes, then by prefix length.
    routes: Vec<Arc<Route>>,
}

impl Router {
    /// Build a table; `routes` may come in any order.
    pub fn new(mut routes: Vec<Arc<Route>>) -> Self {
        routes.sort_by_key(|r| std::cmp::Reverse(r.spec.specificity()));
        Router { routes }
    }

    /// The routes, most specific first.
    pub fn routes(&self) -> &[Arc<Route>] {
        &self.routes
    }

    /// The route for `host` (as sent, port allowed) and an already normalized `path`.
    pub fn route(&self, host: Option<&str>, path: &str) -> Option<&Arc<Route>> {
        let host = host.map(strip_port);
        self.routes.iter().find(|r| {
            let host_ok = match (&r.spec.host, host) {
                (None, _) => true,
                (Some(want), Some(got)) => want.eq_ignore_ascii_case(got),
                (Some(_), None) => false,
            };
            host_ok && prefix_matches(&r.spec.path, path)
        })
    }
}

/// `Host` without its port (`a:8080` → `a`, `[::1]:8443` → `::1`): routes name
/// hosts, never ports, since the listener already fixed the port.
fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split_once(']').map_or(host, |(h, _)| &h[1..]);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

/// Whether `prefix` (no trailing slash, or exactly `/`) covers `path` on segment boundaries.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    prefix == "/"
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Resolve `.` and `..`, decode `%2e`, fold `//`: the path routing decides on.
/// `..` never climbs above the root.
pub fn normalize_path(path: &str) -> String {
    let decoded = decode_dots(path);
    let mut out: Vec<&str> = Vec::new();
    for seg in decoded.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let trailing = decoded.ends_with('/') && !out.is_empty();
    let mut norm = String::with_capacity(decoded.len());
    for seg in &out {
        norm.push('/');
        norm.push_str(seg);
    }
    if norm.is_empty() || trailing {
        norm.push('/');
    }
    norm
}

/// Decode the percent-escapes that could hide a dot segment or a separator
/// (`%2e`, `%2f`, `%5c`); a backslash counts as a separator too, as some
/// backends treat it so.
fn decode_dots(path: &str) -> Cow<'_, str> {
    let decoded = percent::decode_where(path, |b| matches!(b, b'.' | b'/' | b'\\'));
    if decoded.contains('\\') {
        Cow::Owned(decoded.replace('\\', "/"))
    } else {
        decoded
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(specs: &[(Option<&str>, &str)]) -> Router {
        Router::new(
            specs
                .iter()
                .map(|(host, path)| {
                    Arc::new(Route {
                        spec: RouteSpec {
                            host: host.map(str::to_owned),
                            path: (*path).to_owned(),
                            via: vec![],
                            policy: Default::default(),
                            calls: Default::default(),
                        },
                        label: format!("{}{}", host.unwrap_or(""), path),
                        via: vec![],
                    })
                })
                .collect(),
        )
    }

    fn label<'a>(r: &'a Router, host: Option<&str>, path: &str) -> Option<&'a str> {
        r.route(host, &normalize_path(path))
            .map(|r| r.label.as_str())
    }

    #[test]
    fn longest_prefix_on_segments() {
        let r = router(&[
            (None, "/"),
            (None, "/frontend-audio"),
            (None, "/frontend-audio/admin"),
        ]);
        assert_eq!(label(&r, None, "/frontend-audio"), Some("/frontend-audio"));
        assert_eq!(
            label(&r, None, "/frontend-audio/x"),
            Some("/frontend-audio")
        );
        assert_eq!(label(&r, None, "/frontend-audiox"), Some("/"));
        assert_eq!(
            label(&r, None, "/frontend-audio/admin/1"),
            Some("/frontend-audio/admin")
        );
        assert_eq!(label(&r, None, "/api"), Some("/"));
    }

    #[test]
    fn host_routes_win_and_ports_are_ignored() {
        let r = router(&[(None, "/"), (Some("calls.example.com"), "/")]);
        assert_eq!(
            label(&r, Some("Calls.Example.com:8443"), "/x"),
            Some("calls.example.com/")
        );
        assert_eq!(label(&r, Some("other"), "/x"), Some("/"));
        assert_eq!(label(&r, None, "/x"), Some("/"));
    }

    #[test]
    fn no_route() {
        let r = router(&[(None, "/frontend-audio")]);
        assert_eq!(label(&r, None, "/"), None);
        assert_eq!(label(&r, None, "/frontend-audio/../admin"), None);
    }

    #[test]
    fn normalization() {
        assert_eq!(normalize_path("/"), "/");
        assert_eq!(normalize_path(""), "/");
        assert_eq!(normalize_path("/a/./b/../c"), "/a/c");
        assert_eq!(normalize_path("/a//b/"), "/a/b/");
        assert_eq!(normalize_path("/../../etc"), "/etc");
        assert_eq!(normalize_path("/a/%2e%2E/b"), "/b");
        assert_eq!(normalize_path("/a/%2f..%2fb"), "/b");
        assert_eq!(normalize_path("/a\\..\\b"), "/b");
        assert_eq!(normalize_path("/%41%"), "/%41%");
        assert_eq!(normalize_path("/é/x"), "/é/x");
    }
}
