//! The request target: which forms are accepted, and what the access log
//! shows. (What the upstream is sent is [`crate::forward::request`].)
//!
//! Upstreams behind shunt expect origin-form (`/path?query`), so CONNECT
//! (authority-form), absolute-form (`http://host/path`) and TRACE are refused
//! unless the route opts in. Routing and policy decide on the normalized path
//! ([`crate::router::normalize_path`]); when normalization changed the path,
//! the normalized path is what the upstream receives, so the upstream cannot
//! read `/frontend-audio/%2e%2e/admin` differently from how it was routed.
//! The token query parameter is replaced by `REDACTED` in logs (and removed
//! before forwarding). Header values that are not UTF-8 are refused.

use std::borrow::Cow;

use http::{Method, Request, Uri};

use super::{Denied, RoutePolicy};
use crate::percent;

/// What a log line shows in place of a token.
pub const REDACTED: &str = "REDACTED";

/// Refuse request forms the route does not allow.
///
/// The first step of [`super::check`]: cheap and credential-free. CONNECT
/// (unless `allow_connect`) and TRACE are 405, an absolute-form target
/// (unless `allow_absolute_form`) and a header value that is not UTF-8 are 400.
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
///
/// The first pair named `name` wins; a name without `=` has an empty value.
/// Used to find the token in `?token=...` (the query parameter's name is
/// `--token-query`).
pub fn query_param<'a>(query: &'a str, name: &str) -> Option<Cow<'a, str>> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent::decode(k) == name).then(|| percent::decode(v))
    })
}

/// `query` with the value of every `name=...` pair replaced by [`REDACTED`].
///
/// Names are compared decoded, as `query_param` finds them, so a
/// percent-encoded name (`%74oken=`) is redacted too. The query is borrowed
/// unchanged when no pair needs it, the common case.
pub fn redact_query<'a>(query: &'a str, name: &str) -> Cow<'a, str> {
    if !query.split('&').any(|pair| {
        let k = pair.split_once('=').map_or(pair, |(k, _)| k);
        percent::decode(k) == name
    }) {
        return Cow::Borrowed(query);
    }
    let parts: Vec<String> = query
        .split('&')
        .map(|pair| {
            let k = pair.split_once('=').map_or(pair, |(k, _)| k);
            if percent::decode(k) == name {
                format!("{k}={REDACTED}")
            } else {
                pair.to_owned()
            }
        })
        .collect();
    Cow::Owned(parts.join("&"))
}

/// Path and query as the access log shows them, the token parameter redacted.
/// Borrowed from `uri` unless there was a token to redact.
pub fn loggable_target<'a>(uri: &'a Uri, token_param: &str) -> Cow<'a, str> {
    match uri.query() {
        Some(q) => match (redact_query(q, token_param), uri.path_and_query()) {
            // Nothing to redact: the target as sent (an empty path still reads `/`).
            (Cow::Borrowed(_), Some(pq)) if pq.as_str().starts_with('/') => {
                Cow::Borrowed(pq.as_str())
            }
            (q, _) => Cow::Owned(format!("{}?{q}", uri.path())),
        },
        None => Cow::Borrowed(uri.path()),
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
