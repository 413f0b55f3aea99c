//! The request target as the access log shows it, and the token's query
//! parameter. (Which target forms are accepted is [`crate::checkpoint`]'s;
//! what the upstream is sent is [`crate::forward::request`].)
//!
//! The token query parameter is replaced by `REDACTED` in logs (and removed
//! before forwarding).

use std::borrow::Cow;

use http::Uri;

use crate::percent;

/// What a log line shows in place of a token.
pub(crate) const REDACTED: &str = "REDACTED";

/// The value of query parameter `name` (names and values percent-decoded).
///
/// The first pair named `name` wins; a name without `=` has an empty value.
/// Used to find the token in `?token=...` (the query parameter's name is
/// `--token-query`).
pub(crate) fn query_param<'a>(query: &'a str, name: &str) -> Option<Cow<'a, str>> {
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
pub(crate) fn redact_query<'a>(query: &'a str, name: &str) -> Cow<'a, str> {
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
pub(crate) fn loggable_target<'a>(uri: &'a Uri, token_param: &str) -> Cow<'a, str> {
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
}
