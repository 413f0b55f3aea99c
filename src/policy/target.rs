//! The request target: which forms are accepted, what the upstream is sent,
//! and what the access log shows.
//!
//! Upstreams behind shunt expect origin-form (`/path?query`), so CONNECT
//! (authority-form), absolute-form (`http://host/path`) and TRACE are refused
//! unless the route opts in. Routing and policy decide on the normalized path
//! ([`crate::router::normalize_path`]); when normalization changed the path,
//! the normalized path is what the upstream receives, so the upstream cannot
//! read `/frontend-audio/%2e%2e/admin` differently from how it was routed.
//! The token query parameter is removed before forwarding and replaced by
//! `REDACTED` in logs. Header values that are not UTF-8 are refused.

use std::borrow::Cow;

use http::{Method, Request, Uri};

use super::{Denied, RoutePolicy};

/// What a log line shows in place of a token.
pub const REDACTED: &str = "REDACTED";

/// Refuse request forms the route does not allow.
pub fn check_form<B>(req: &Request<B>, route: &RoutePolicy) -> Result<(), Denied> {
    let method = req.method();
    if method == Method::CONNECT && !route.allow_connect {
        return Err(Denied::Method {
            method: method.to_string(),
        });
    }
    if method == Method::TRACE {
        return Err(Denied::Method {
            method: method.to_string(),
        });
    }
    if req.uri().scheme().is_some() && !route.allow_absolute_form {
        return Err(Denied::AbsoluteForm);
    }
    // HTTP tolerates obs-text (bytes >= 0x80) in values; upstreams decode it
    // inconsistently, so a value that is not UTF-8 is refused here.
    if let Some((name, _)) = req
        .headers()
        .iter()
        .find(|(_, v)| std::str::from_utf8(v.as_bytes()).is_err())
    {
        return Err(Denied::HeaderEncoding {
            name: name.to_string(),
        });
    }
    Ok(())
}

/// The value of query parameter `name` (names and values percent-decoded).
pub fn query_param<'a>(query: &'a str, name: &str) -> Option<Cow<'a, str>> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k) == name).then(|| percent_decode(v))
    })
}

/// `query` without every `name=...` pair; `None` when there was none.
pub fn strip_query_param(query: &str, name: &str) -> Option<String> {
    let mut removed = false;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let k = pair.split_once('=').map_or(*pair, |(k, _)| k);
            let hit = percent_decode(k) == name;
            removed |= hit;
            !hit
        })
        .collect();
    removed.then(|| kept.join("&"))
}

/// `query` with the value of every `name=...` pair replaced by [`REDACTED`].
pub fn redact_query<'a>(query: &'a str, name: &str) -> Cow<'a, str> {
    if !query.split('&').any(|pair| {
        let k = pair.split_once('=').map_or(pair, |(k, _)| k);
        percent_decode(k) == name
    }) {
        return Cow::Borrowed(query);
    }
    let parts: Vec<String> = query
        .split('&')
        .map(|pair| {
            let k = pair.split_once('=').map_or(pair, |(k, _)| k);
            if percent_decode(k) == name {
                format!("{k}={REDACTED}")
            } else {
                pair.to_owned()
            }
        })
        .collect();
    Cow::Owned(parts.join("&"))
}

/// Path and query as the access log shows them, the token parameter redacted.
pub fn loggable_target(uri: &Uri, token_param: &str) -> String {
    match uri.query() {
        Some(q) => format!("{}?{}", uri.path(), redact_query(q, token_param)),
        None => uri.path().to_owned(),
    }
}

/// The origin-form target sent upstream: the normalized path when it differs
/// from the path as sent, and the query without `strip` (the token parameter).
/// `None` when the request's target can be forwarded unchanged.
pub fn upstream_target(uri: &Uri, normalized: &str, strip: Option<&str>) -> Option<Uri> {
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

/// Decode `%XX` escapes; an invalid escape or non-UTF-8 result is kept as sent.
pub fn percent_decode(text: &str) -> Cow<'_, str> {
    if !text.contains('%') {
        return Cow::Borrowed(text);
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = |b: u8| (b as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    match String::from_utf8(out) {
        Ok(s) => Cow::Owned(s),
        Err(_) => Cow::Borrowed(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_decoded_params() {
        assert_eq!(
            query_param("a=1&token=abc", "token").as_deref(),
            Some("abc")
        );
        assert_eq!(
            query_param("%74oken=a%2Bb", "token").as_deref(),
            Some("a+b")
        );
        assert_eq!(query_param("token", "token").as_deref(), Some(""));
        assert_eq!(query_param("tokens=1", "token"), None);
        assert_eq!(query_param("", "token"), None);
    }

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
    fn redacts_params() {
        assert_eq!(
            redact_query("a=1&token=secret", "token"),
            "a=1&token=REDACTED"
        );
        assert_eq!(redact_query("a=1", "token"), "a=1");
        let uri: Uri = "/ws?token=s3cr3t&x=1".parse().unwrap();
        let logged = loggable_target(&uri, "token");
        assert_eq!(logged, "/ws?token=REDACTED&x=1");
        assert!(!logged.contains("s3cr3t"));
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
    fn decoding() {
        assert_eq!(percent_decode("a%20b"), "a b");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
        assert_eq!(percent_decode("%ff"), "%ff");
    }

    #[test]
    fn forms() {
        let route = RoutePolicy::default();
        let ok = Request::get("/x").body(()).unwrap();
        assert!(check_form(&ok, &route).is_ok());
        let abs = Request::get("http://example.com/x").body(()).unwrap();
        assert!(matches!(
            check_form(&abs, &route),
            Err(Denied::AbsoluteForm)
        ));
        let trace = Request::builder()
            .method("TRACE")
            .uri("/")
            .body(())
            .unwrap();
        assert!(matches!(
            check_form(&trace, &route),
            Err(Denied::Method { .. })
        ));
        let connect = Request::builder()
            .method("CONNECT")
            .uri("example.com:443")
            .body(())
            .unwrap();
        assert!(matches!(
            check_form(&connect, &route),
            Err(Denied::Method { .. })
        ));
        let open = RoutePolicy {
            allow_connect: true,
            allow_absolute_form: true,
            ..RoutePolicy::default()
        };
        assert!(check_form(&connect, &open).is_ok());
        assert!(check_form(&abs, &open).is_ok());
        let mut latin1 = Request::get("/x").body(()).unwrap();
        latin1
            .headers_mut()
            .insert("x-name", http::HeaderValue::from_bytes(b"caf\xe9").unwrap());
        assert!(matches!(
            check_form(&latin1, &route),
            Err(Denied::HeaderEncoding { .. })
        ));
    }
}
