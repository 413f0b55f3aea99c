//! What an accepted request carries on to the upstream of its credential
//! and its caller's identity.
//!
//! Once shunt has accepted a credential, the copies meant for shunt are
//! removed from what is forwarded ([`strip_credentials`]): the
//! `Authorization: Bearer` header, the `token_cookie` cookie, and the
//! `bearer, <token>` values of `Sec-WebSocket-Protocol` (the query parameter
//! is removed with the target, in [`crate::forward::request`]). A route with
//! `forward_credential = true` keeps them, for a backend that checks them
//! again. Verified claims go on as headers ([`forward_claims`]); any copy
//! of those headers the client sent is removed first, so no client can
//! forge them.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use super::auth::{Claims, TokenSources, list_values};

/// A verified claim passed to the upstream as a request header (`forward_claims`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimHeader {
    /// The claim's name.
    pub claim: String,
    /// The header it is sent in.
    pub header: HeaderName,
}

/// Remove the credentials meant for shunt from `headers`: bearer
/// `Authorization`, the token cookie, and the subprotocol marker with the
/// token after it.
pub(crate) fn strip_credentials(headers: &mut HeaderMap, sources: &TokenSources) {
    let bearer = headers
        .get_all(header::AUTHORIZATION)
        .iter()
        .any(|v| is_bearer(v.as_bytes()));
    if bearer {
        let kept: Vec<HeaderValue> = headers
            .get_all(header::AUTHORIZATION)
            .iter()
            .filter(|v| !is_bearer(v.as_bytes()))
            .cloned()
            .collect();
        headers.remove(header::AUTHORIZATION);
        for v in kept {
            headers.append(header::AUTHORIZATION, v);
        }
    }
    strip_cookie(headers, &sources.cookie);
    if let Some(marker) = &sources.subprotocol {
        let rest = other_subprotocols(headers, marker);
        headers.remove(header::SEC_WEBSOCKET_PROTOCOL);
        if let Some(v) = (!rest.is_empty())
            .then(|| HeaderValue::from_str(&rest.join(", ")).ok())
            .flatten()
        {
            headers.insert(header::SEC_WEBSOCKET_PROTOCOL, v);
        }
    }
}

fn is_bearer(value: &[u8]) -> bool {
    let value = value.trim_ascii_start();
    value.len() > 6 && value[..6].eq_ignore_ascii_case(b"bearer") && value[6] == b' '
}

/// The client's offered subprotocols without `marker` and the token after it.
pub(crate) fn other_subprotocols(headers: &HeaderMap, marker: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut values = list_values(headers, &header::SEC_WEBSOCKET_PROTOCOL);
    while let Some(v) = values.next() {
        if v == marker {
            values.next();
        } else {
            out.push(v.to_owned());
        }
    }
    out
}

/// Remove the cookie `name` from every `Cookie` header; a header left empty goes.
fn strip_cookie(headers: &mut HeaderMap, name: &str) {
    let mut changed = false;
    let mut kept_values = Vec::new();
    for value in headers.get_all(header::COOKIE) {
        let Ok(text) = value.to_str() else {
            kept_values.push(value.clone());
            continue;
        };
        let pairs: Vec<&str> = text
            .split(';')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .collect();
        let kept: Vec<&str> = pairs
            .iter()
            .copied()
            .filter(|p| p.split_once('=').is_none_or(|(k, _)| k.trim() != name))
            .collect();
        if kept.len() == pairs.len() {
            kept_values.push(value.clone());
            continue;
        }
        changed = true;
        if let Some(v) = (!kept.is_empty())
            .then(|| HeaderValue::from_str(&kept.join("; ")).ok())
            .flatten()
        {
            kept_values.push(v);
        }
    }
    if changed {
        headers.remove(header::COOKIE);
        for v in kept_values {
            headers.append(header::COOKIE, v);
        }
    }
}

/// Remove the client's copies of the claim headers, then add the verified
/// claims' values: strings as they are, numbers and booleans as text;
/// other values, or text that is not a valid header value, are left out.
pub(crate) fn forward_claims(
    headers: &mut HeaderMap,
    claims: Option<&Claims>,
    list: &[ClaimHeader],
) {
    for c in list {
        headers.remove(&c.header);
    }
    let Some(claims) = claims else {
        return;
    };
    for c in list {
        if let Some(v) = claims
            .text(&c.claim)
            .and_then(|t| HeaderValue::from_str(&t).ok())
        {
            headers.insert(c.header.clone(), v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::headers::tests::map as headers;
    use serde_json::json;

    #[test]
    fn credentials_are_stripped() {
        let sources = TokenSources {
            subprotocol: Some("bearer".into()),
            ..TokenSources::default()
        };
        let mut h = headers(&[
            ("authorization", "Bearer abc"),
            ("cookie", "a=1; shunt_token=abc; b=2"),
            ("cookie", "shunt_token=abc"),
            ("sec-websocket-protocol", "chat, bearer, abc"),
            ("sec-websocket-protocol", "v2"),
        ]);
        strip_credentials(&mut h, &sources);
        assert_eq!(h.get("authorization"), None);
        let cookies: Vec<_> = h.get_all("cookie").iter().collect();
        assert_eq!(cookies, ["a=1; b=2"]);
        assert_eq!(h.get("sec-websocket-protocol").unwrap(), "chat, v2");
        let mut h = headers(&[
            ("authorization", "Basic dXNlcg=="),
            ("sec-websocket-protocol", "bearer, abc"),
        ]);
        strip_credentials(&mut h, &sources);
        assert_eq!(h.get("authorization").unwrap(), "Basic dXNlcg==");
        assert_eq!(h.get("sec-websocket-protocol"), None);
    }

    #[test]
    fn claims_become_headers_and_client_copies_go() {
        let list = vec![
            ClaimHeader {
                claim: "sub".into(),
                header: HeaderName::from_static("x-user-id"),
            },
            ClaimHeader {
                claim: "admin".into(),
                header: HeaderName::from_static("x-admin"),
            },
            ClaimHeader {
                claim: "groups".into(),
                header: HeaderName::from_static("x-groups"),
            },
            ClaimHeader {
                claim: "bad".into(),
                header: HeaderName::from_static("x-bad"),
            },
        ];
        let claims = Claims(
            json!({"sub": "alice", "admin": true, "groups": ["a"], "bad": "a\nb"})
                .as_object()
                .unwrap()
                .clone(),
        );
        let mut h = headers(&[("x-user-id", "mallory"), ("x-groups", "root")]);
        forward_claims(&mut h, Some(&claims), &list);
        assert_eq!(h.get("x-user-id").unwrap(), "alice");
        assert_eq!(h.get("x-admin").unwrap(), "true");
        assert_eq!(h.get("x-groups"), None);
        assert_eq!(h.get("x-bad"), None);
        let mut h = headers(&[("x-user-id", "mallory")]);
        forward_claims(&mut h, None, &list);
        assert_eq!(h.get("x-user-id"), None);
    }
}
