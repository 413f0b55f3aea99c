//! Header rewriting between downstream and upstream, and the token-list
//! reading every stage shares.
//!
//! A side module: `upgrade` reads token lists here, `forward` rewrites both
//! directions with it, `doctor` reads `x-shunt-route`. Keeping it out of the
//! flow means no stage imports a later one for a helper.
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

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::ip_text::{MAX_IP_TEXT, ip_text};

/// `x-shunt-route`: which upstream served a response.
pub(crate) const X_SHUNT_ROUTE: HeaderName = HeaderName::from_static("x-shunt-route");
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
pub(crate) fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.as_bytes()
            .split(|b| *b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

/// How many [`HOP_BY_HOP`] names there are.
const HOP_COUNT: usize = 9;

/// Headers that never cross the proxy, whatever `Connection` says
/// (`Connection` first: [`strip_hop_headers`] reads it before removing it).
static HOP_BY_HOP: [HeaderName; HOP_COUNT] = [
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
/// Allocates nothing.
pub(crate) fn strip_hop_headers(headers: &mut HeaderMap, upgrade: bool) {
    // One pass over the names present (a handful) finds the hop-by-hop
    // ones, so only those are looked up and removed: most heads have at
    // most `Connection`.
    let mut present = [false; HOP_COUNT];
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|hop| hop == name) {
            present[i] = true;
        }
    }
    if present[0] {
        remove_connection_listed(headers);
    }
    for (name, _) in HOP_BY_HOP.iter().zip(present).filter(|(_, p)| *p) {
        headers.remove(name);
    }
    if upgrade {
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Remove every header that a `Connection` value names (RFC 9110 §7.6.1).
///
/// Each `Connection` value is cloned out of the map (a shared reference to
/// the request head's bytes) so the names it lists can be removed while
/// going through it, and names are looked up as text rather than built
/// into `HeaderName`s.
fn remove_connection_listed(headers: &mut HeaderMap) {
    let listed = headers.get_all(header::CONNECTION).iter().count();
    for i in 0..listed {
        let Some(value) = headers.get_all(header::CONNECTION).iter().nth(i).cloned() else {
            break;
        };
        for token in value.as_bytes().split(|b| *b == b',') {
            match std::str::from_utf8(token.trim_ascii()) {
                // `Connection` itself goes below, after its last value is read.
                Ok(name) if !name.eq_ignore_ascii_case("connection") => {
                    headers.remove(name);
                }
                _ => {}
            }
        }
    }
}

/// Rewrite a request's headers for the upstream; `authority` (`host:port`)
/// is the `Host` of a request that had none. `client` is who the request
/// is from (`X-Real-IP`), `hop` the address this hop appends to
/// `X-Forwarded-For` (the client itself, or the L7 balancer that already
/// listed it).
pub(crate) fn prepare_request(
    headers: &mut HeaderMap,
    upgrade: bool,
    (client, hop): (IpAddr, IpAddr),
    tls: bool,
    authority: &str,
) {
    strip_hop_headers(headers, upgrade);
    // The addresses as text, on the stack: the two header values below
    // are the only copies made of them.
    let mut text = [0; MAX_IP_TEXT];
    let mut hop_text = [0; MAX_IP_TEXT];
    if let Some(v) = forwarded_for(headers, ip_text(hop, &mut hop_text)) {
        headers.insert(X_FORWARDED_FOR, v);
    }
    if let Ok(v) = HeaderValue::from_bytes(ip_text(client, &mut text)) {
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
        // HTTP/1.0 without Host: name the upstream, as a client would, and
        // pass no X-Forwarded-Host (shunt has none; a client's copy would be
        // a claim no one checked).
        None => {
            headers.remove(X_FORWARDED_HOST);
            if let Ok(v) = HeaderValue::from_str(authority) {
                headers.insert(header::HOST, v);
            }
        }
    }
}

/// `X-Forwarded-For`: every incoming hop (sent as one list or as several
/// header lines), then `peer`, built in one buffer of exactly its size.
fn forwarded_for(headers: &HeaderMap, peer: &[u8]) -> Option<HeaderValue> {
    let hops = || {
        headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    let len = hops().map(|h| h.len() + 2).sum::<usize>() + peer.len();
    let mut out = Vec::with_capacity(len);
    for hop in hops() {
        out.extend_from_slice(hop.as_bytes());
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(peer);
    // Length equal to capacity: the `Bytes` takes the buffer as it is.
    HeaderValue::from_maybe_shared(Bytes::from(out)).ok()
}

/// Rewrite a response's headers for the client and say which upstream
/// served it: `route_header` is the upstream's name as a header value,
/// made once per upstream ([`crate::upstream::Upstream::route_header`]).
pub(crate) fn prepare_response(headers: &mut HeaderMap, upgrade: bool, route_header: &HeaderValue) {
    strip_hop_headers(headers, upgrade);
    headers.insert(X_SHUNT_ROUTE, route_header.clone());
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A header map of `pairs`, in order (repeated names append).
    pub(crate) fn map(pairs: &[(&str, &str)]) -> HeaderMap {
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
    fn strips_only_what_is_there_and_keeps_the_rest() {
        let mut h = map(&[
            ("host", "a"),
            ("proxy-authorization", "Basic x"),
            ("trailer", "x-sum"),
            ("accept", "*/*"),
        ]);
        strip_hop_headers(&mut h, false);
        assert_eq!(h.len(), 2, "{h:?}");
        assert_eq!(h["host"], "a");
        assert_eq!(h["accept"], "*/*");
        let mut h = map(&[("accept", "*/*")]);
        strip_hop_headers(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
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
            ("127.0.0.2".parse().unwrap(), "127.0.0.2".parse().unwrap()),
            true,
            "127.0.0.1:5006",
        );
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.2");
        assert_eq!(h["x-real-ip"], "127.0.0.2");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "calls.example.com");
        assert_eq!(h["host"], "calls.example.com");
        // HTTP/1.0 without Host: the client's X-Forwarded-Host does not pass.
        let mut h = map(&[("x-forwarded-host", "forged.example")]);
        prepare_request(
            &mut h,
            false,
            ("::1".parse().unwrap(), "::1".parse().unwrap()),
            false,
            "127.0.0.1:5006",
        );
        assert_eq!(h["host"], "127.0.0.1:5006");
        assert_eq!(h["x-forwarded-for"], "::1");
        assert!(!h.contains_key("x-forwarded-host"));
        // Through a trusted L7 balancer: the client is X-Real-IP, the balancer the hop.
        let mut h = map(&[("x-forwarded-for", "6.6.6.6, 203.0.113.7")]);
        prepare_request(
            &mut h,
            false,
            ("203.0.113.7".parse().unwrap(), "10.0.0.1".parse().unwrap()),
            false,
            "127.0.0.1:5006",
        );
        assert_eq!(h["x-forwarded-for"], "6.6.6.6, 203.0.113.7, 10.0.0.1");
        assert_eq!(h["x-real-ip"], "203.0.113.7");
    }
}
