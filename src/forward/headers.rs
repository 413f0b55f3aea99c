//! Header rewriting between downstream and upstream.
//!
//! Hop-by-hop headers (RFC 9110 §7.6.1: `Connection` and every header it names,
//! plus the classic list) belong to one connection and are removed in both
//! directions; hyper re-frames bodies itself. A WebSocket handshake keeps its
//! upgrade: `Upgrade: websocket` and exactly `Connection: upgrade` go on.
//! Requests gain the `X-Forwarded-*` family and `X-Real-IP`; `Host` is kept.
//!
//! `X-Forwarded-For` keeps the hops already listed and appends the client's
//! address, so a backend behind both nginx and shunt sees the whole chain;
//! `X-Real-IP` is just the peer, for backends that read only that.
//! `X-Forwarded-Proto` says `https` when shunt terminated TLS, so the backend
//! builds `wss://` links. A request without `Host` (HTTP/1.0) gets the
//! upstream's authority, as a client talking to it directly would send.
//! Responses gain `x-shunt-route: <upstream>`, the server-side answer to the
//! front end's old `usingDirectConnection` log line.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::config::UpstreamName;

/// `x-shunt-route`: which upstream served a response.
pub const X_SHUNT_ROUTE: HeaderName = HeaderName::from_static("x-shunt-route");
/// The client and every proxy before it, comma-separated.
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `https` when shunt terminated TLS, else `http`.
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// The `Host` the client asked for.
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// The client's address alone (nginx's convention).
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
/// Hop-by-hop (RFC 9112 §9.6 history); never forwarded.
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
/// A non-standard `Connection` some old clients send; never forwarded.
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Whether any `name` header holds `token` in its comma-separated list
/// (RFC 9110 §5.6.1): tokens are compared case-insensitively and the
/// whitespace around each is ignored, so `keep-alive, Upgrade` holds
/// `upgrade`. Several `name` headers count as one list.
pub fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.as_bytes()
            .split(|b| *b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

/// Headers that never cross the proxy, whatever `Connection` says.
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
];

/// Remove hop-by-hop headers; with `upgrade`, put back a WebSocket upgrade.
pub fn strip_hop_headers(headers: &mut HeaderMap, upgrade: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .filter_map(|t| HeaderName::from_bytes(t.trim_ascii()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    if upgrade {
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Rewrite a request's headers for the upstream.
pub fn prepare_request(
    headers: &mut HeaderMap,
    upgrade: bool,
    peer: IpAddr,
    tls: bool,
    authority: &str,
) {
    strip_hop_headers(headers, upgrade);
    let peer_text = peer.to_string();
    // Every incoming hop, whether sent as one list or as several header lines.
    let mut hops: Vec<&str> = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect();
    hops.push(&peer_text);
    let forwarded_for = hops.join(", ");
    if let Ok(v) = HeaderValue::from_str(&forwarded_for) {
        headers.insert(X_FORWARDED_FOR, v);
    }
    if let Ok(v) = HeaderValue::from_str(&peer_text) {
        headers.insert(X_REAL_IP, v);
    }
    headers.insert(
        X_FORWARDED_PROTO,
        HeaderValue::from_static(if tls { "https" } else { "http" }),
    );
    match headers.get(header::HOST).cloned() {
        Some(host) => {
            headers.insert(X_FORWARDED_HOST, host);
        }
        // HTTP/1.0 without Host: name the upstream, as a client would.
        None => {
            if let Ok(v) = HeaderValue::from_str(authority) {
                headers.insert(header::HOST, v);
            }
        }
    }
}

/// Rewrite a response's headers for the client and say which upstream served it.
pub fn prepare_response(headers: &mut HeaderMap, upgrade: bool, upstream: &UpstreamName) {
    strip_hop_headers(headers, upgrade);
    if let Ok(v) = HeaderValue::from_str(&upstream.0) {
        headers.insert(X_SHUNT_ROUTE, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn strips_hop_headers_and_those_connection_names() {
        let mut h = map(&[
            ("connection", "close, x-hop"),
            ("x-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("x-end", "kept"),
        ]);
        strip_hop_headers(&mut h, false);
        assert_eq!(h.len(), 1);
        assert_eq!(h["x-end"], "kept");
    }

    #[test]
    fn keeps_a_websocket_upgrade() {
        let mut h = map(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "WebSocket"),
            ("sec-websocket-key", "k"),
        ]);
        strip_hop_headers(&mut h, true);
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["sec-websocket-key"], "k");
    }

    #[test]
    fn forwarding_headers() {
        let mut h = map(&[
            ("host", "calls.example.com"),
            ("x-forwarded-for", "10.0.0.1"),
            ("x-real-ip", "spoofed"),
        ]);
        prepare_request(
            &mut h,
            false,
            "127.0.0.2".parse().unwrap(),
            true,
            "127.0.0.1:5006",
        );
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.2");
        assert_eq!(h["x-real-ip"], "127.0.0.2");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "calls.example.com");
        assert_eq!(h["host"], "calls.example.com");
        let mut h = HeaderMap::new();
        prepare_request(
            &mut h,
            false,
            "::1".parse().unwrap(),
            false,
            "127.0.0.1:5006",
        );
        assert_eq!(h["host"], "127.0.0.1:5006");
        assert_eq!(h["x-forwarded-for"], "::1");
    }
}
