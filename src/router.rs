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
///
/// Almost every request's path is normal already (rooted, no empty, `.` or
/// `..` segment, no escape that decodes to a dot or a separator, no
/// backslash): it is returned as it is, borrowed, so a plain request pays no
/// allocation here. Only the others are rebuilt.
pub fn normalize_path(path: &str) -> Cow<'_, str> {
    if is_normal(path) {
        Cow::Borrowed(path)
    } else {
        Cow::Owned(rebuild_path(path))
    }
}

/// Whether [`rebuild_path`] would return `path` unchanged.
fn is_normal(path: &str) -> bool {
    let Some(rest) = path.strip_prefix('/') else {
        return false;
    };
    let bytes = rest.as_bytes();
    let hidden = bytes.windows(3).any(|w| {
        w[0] == b'%'
            && matches!(
                (w[1], w[2].to_ascii_lowercase()),
                (b'2', b'e' | b'f') | (b'5', b'c')
            )
    });
    if hidden || bytes.contains(&b'\\') {
        return false;
    }
    // Only the last segment may be empty: `/` and a trailing slash.
    let mut segments = rest.split('/').peekable();
    while let Some(seg) = segments.next() {
        let last = segments.peek().is_none();
        if seg == "." || seg == ".." || (seg.is_empty() && !last) {
            return false;
        }
    }
    true
}

/// The normalization itself, into a new string.
fn rebuild_path(path: &str) -> String {
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
                            websocket: false,
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

    #[test]
    fn a_normal_path_is_borrowed_and_agrees_with_the_rebuild() {
        for p in [
            "/",
            "",
            "/a",
            "/a/",
            "/a/b",
            "//",
            "/a//b",
            "/a/.",
            "/a/./b",
            "/.",
            "/..",
            "/a/..",
            "/.a",
            "/a.",
            "/..a/b",
            "/a/%2e",
            "/a/%2E%2e",
            "/%2fa",
            "/a%5Cb",
            "/a%5cb",
            "/a\\b",
            "/%41%",
            "/%2",
            "/%",
            "/é/x",
            "a/b",
            "/a/b/",
            "/a/b//",
            "/x%2ey",
            "/%252e",
            "/a%2",
            "/a/...",
        ] {
            let fast = normalize_path(p);
            assert_eq!(fast, rebuild_path(p), "{p:?}");
            assert_eq!(
                matches!(fast, Cow::Borrowed(_)),
                rebuild_path(p) == p,
                "borrowed exactly when unchanged: {p:?}"
            );
        }
    }
}
