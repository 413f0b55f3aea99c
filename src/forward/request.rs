//! What the upstream is sent: the whole rewrite of a downstream request, in
//! one place and in order.
//!
//! 1. An absolute-form target's authority becomes the `Host` (RFC 9112
//!    §3.2.2), so the upstream sees the host the request was routed on.
//! 2. The target becomes origin-form (`/path?query`), which is what upstreams
//!    behind shunt expect, whatever form the client used.
//! 3. The path is the one that was routed and policed: when normalization
//!    changed it ([`crate::router::normalize_path`]), the upstream gets the
//!    normalized path, so it cannot read `/a/%2e%2e/admin` differently from
//!    how shunt routed it.
//! 4. On a route with authentication, the token query parameter is removed:
//!    a credential meant for shunt is not passed on.
//! 5. Hop-by-hop headers go and the `X-Forwarded-*` family is added
//!    ([`crate::headers`]).
//!
//! CONNECT (only on a route with `allow_connect`) keeps its authority-form
//! target: steps 1 to 4 do not apply to it.

use http::{HeaderValue, Method, Request, Uri, header};

use crate::downstream::Downstream;
use crate::headers;
use crate::percent;

/// What the rewrite needs to know besides the request itself.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rewrite<'a> {
    /// The normalized path the request was routed and policed on.
    pub routed_path: &'a str,
    /// The query parameter to remove (the token's), on routes with authentication.
    pub strip_param: Option<&'a str>,
    /// A WebSocket handshake keeps its `Upgrade`.
    pub websocket: bool,
    /// Who the client is (`X-Forwarded-For`, `X-Forwarded-Proto`).
    pub downstream: Downstream,
    /// `host:port` of the upstream, the `Host` of a request that had none (HTTP/1.0).
    pub upstream_authority: &'a str,
}

/// Rewrite `req` in place into what the upstream is sent.
pub(crate) fn prepare<B>(req: &mut Request<B>, rewrite: &Rewrite<'_>) {
    if req.method() != Method::CONNECT {
        host_from_absolute_form(req);
        match upstream_target(req.uri(), rewrite.routed_path, rewrite.strip_param) {
            Some(uri) => *req.uri_mut() = uri,
            None => to_origin_form(req),
        }
    }
    headers::prepare_request(
        req.headers_mut(),
        rewrite.websocket,
        (rewrite.downstream.peer.ip(), rewrite.downstream.hop()),
        rewrite.downstream.tls,
        rewrite.upstream_authority,
    );
}

/// An absolute-form target's authority is the host (RFC 9112 §3.2.2).
fn host_from_absolute_form<B>(req: &mut Request<B>) {
    if let Some(host) = req
        .uri()
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    {
        req.headers_mut().insert(header::HOST, host);
    }
}

/// The origin-form target sent upstream: the normalized path when it differs
/// from the path as sent, and the query without `strip` (the token parameter).
/// `None` when the path and query can be forwarded unchanged.
pub(crate) fn upstream_target(uri: &Uri, normalized: &str, strip: Option<&str>) -> Option<Uri> {
    let path_changed = uri.path() != normalized;
    let query = uri.query();
    let stripped = match (query, strip) {
        (Some(q), Some(name)) => strip_query_param(q, name),
        _ => None,
    };
    if !path_changed && stripped.is_none() {
        return None;
    }
    let query = stripped.as_deref().or(query).filter(|q| !q.is_empty());
    let text = match query {
        Some(q) => format!("{normalized}?{q}"),
        None => normalized.to_owned(),
    };
    text.parse().ok()
}

/// Reduce an absolute-form target (`http://host/path?q`) to its path and query.
fn to_origin_form<B>(req: &mut Request<B>) {
    if req.uri().authority().is_none() {
        return;
    }
    let pq = req
        .uri()
        .path_and_query()
        .map_or("/", |pq| pq.as_str())
        .to_owned();
    if let Ok(uri) = pq.parse::<Uri>() {
        *req.uri_mut() = uri;
    }
}

/// `query` without every `name=...` pair (names compared percent-decoded);
/// `None` when there was none.
pub(crate) fn strip_query_param(query: &str, name: &str) -> Option<String> {
    let mut removed = false;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let k = pair.split_once('=').map_or(*pair, |(k, _)| k);
            let hit = percent::decode(k) == name;
            removed |= hit;
            !hit
        })
        .collect();
    removed.then(|| kept.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_params() {
        assert_eq!(
            strip_query_param("a=1&token=x&b=2", "token").as_deref(),
            Some("a=1&b=2")
        );
        assert_eq!(strip_query_param("token=x", "token").as_deref(), Some(""));
        assert_eq!(
            strip_query_param("token=x&token=y&c", "token").as_deref(),
            Some("c")
        );
        assert_eq!(strip_query_param("%74oken=x", "token").as_deref(), Some(""));
        assert_eq!(strip_query_param("a=1", "token"), None);
    }

    #[test]
    fn upstream_targets() {
        let uri: Uri = "/a/../b?token=t&x=1".parse().unwrap();
        assert_eq!(
            upstream_target(&uri, "/b", Some("token"))
                .unwrap()
                .to_string(),
            "/b?x=1"
        );
        let uri: Uri = "/b?x=1".parse().unwrap();
        assert_eq!(upstream_target(&uri, "/b", Some("token")), None);
        let uri: Uri = "/b?token=t".parse().unwrap();
        assert_eq!(
            upstream_target(&uri, "/b", Some("token"))
                .unwrap()
                .to_string(),
            "/b"
        );
        let uri: Uri = "/b?token=t".parse().unwrap();
        assert_eq!(upstream_target(&uri, "/b", None), None);
        let uri: Uri = "http://h/a/%2e%2e/b".parse().unwrap();
        assert_eq!(upstream_target(&uri, "/b", None).unwrap().to_string(), "/b");
    }

    #[test]
    fn absolute_form_becomes_host_and_origin_form() {
        let mut req = Request::get("http://example.com:8080/a/%2e%2e/b?token=t&x=1")
            .header(header::HOST, "other")
            .body(())
            .unwrap();
        let rewrite = Rewrite {
            routed_path: "/b",
            strip_param: Some("token"),
            websocket: false,
            downstream: Downstream::direct(
                "127.0.0.1:1".parse().unwrap(),
                "127.0.0.1:8080".parse().unwrap(),
            ),
            upstream_authority: "127.0.0.1:5006",
        };
        prepare(&mut req, &rewrite);
        assert_eq!(req.uri().to_string(), "/b?x=1");
        assert_eq!(req.headers()[header::HOST], "example.com:8080");
        let mut req = Request::get("http://example.com/x?y").body(()).unwrap();
        prepare(
            &mut req,
            &Rewrite {
                routed_path: "/x",
                strip_param: None,
                ..rewrite
            },
        );
        assert_eq!(req.uri().to_string(), "/x?y");
    }
}
