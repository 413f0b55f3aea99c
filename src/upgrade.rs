//! Is this request a WebSocket handshake, and a valid one (RFC 6455 §4.2.1)?
//!
//! Checked before a route or an upstream is chosen, so a malformed handshake
//! costs no upstream connection. A request that asks to upgrade to anything
//! other than `websocket` is treated as a plain request (its `Upgrade` header
//! is hop-by-hop and is dropped), as nginx does.
//!
//! The check is strict where a lenient proxy would pass a broken handshake to
//! the backend and let it fail there, less clearly: the method must be GET,
//! `Connection` must carry `upgrade`, the key must be 16 bytes of base64 and
//! the version 13 (anything else is answered 426 with the version to use).
//! What passes is a [`Kind::WebSocket`]: the exchange then takes a fresh
//! upstream connection and, after a 101, becomes a tunnel.

use base64::Engine;
use http::{Method, Request, Version, header};

use crate::headers::has_token;

/// A WebSocket upgrade request the proxy refuses ([`classify`]), with what is
/// wrong: always the client's fault (400, or 426 for a version). It lives
/// with the check that produces it; [`crate::response`] maps it to a status.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UpgradeError {
    /// Not a GET (RFC 6455 §4.1).
    #[error("a WebSocket handshake must use GET, not {0}")]
    Method(String),
    /// `Connection` does not carry the `upgrade` token.
    #[error("the Connection header must contain the token `upgrade`")]
    ConnectionToken,
    /// No `Sec-WebSocket-Key`.
    #[error("Sec-WebSocket-Key is missing")]
    MissingKey,
    /// A key that is not 16 bytes of base64.
    #[error("Sec-WebSocket-Key must be 16 bytes, base64-encoded")]
    BadKey,
    /// No `Sec-WebSocket-Version`.
    #[error("Sec-WebSocket-Version is missing")]
    MissingVersion,
    /// Answered 426 with `Sec-WebSocket-Version: 13`.
    #[error("Sec-WebSocket-Version {0} is not supported; use 13")]
    UnsupportedVersion(String),
}

/// What kind of exchange a request starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An ordinary HTTP request, forwarded over a pooled connection.
    Plain,
    /// A valid WebSocket handshake: a fresh upstream connection, then a tunnel.
    WebSocket,
}

/// Classify `req`, validating it if it is a WebSocket handshake.
pub fn classify<B>(req: &Request<B>) -> Result<Kind, UpgradeError> {
    let headers = req.headers();
    // HTTP/1.0 has no upgrade: its `Upgrade` header is ignored (RFC 9110 §7.8).
    if !has_token(headers, header::UPGRADE, "websocket") || req.version() < Version::HTTP_11 {
        return Ok(Kind::Plain);
    }
    if req.method() != Method::GET {
        return Err(UpgradeError::Method(req.method().to_string()));
    }
    if !has_token(headers, header::CONNECTION, "upgrade") {
        return Err(UpgradeError::ConnectionToken);
    }
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .ok_or(UpgradeError::MissingKey)?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(key.as_bytes().trim_ascii())
        .map_err(|_| UpgradeError::BadKey)?;
    if decoded.len() != 16 || headers.get_all(header::SEC_WEBSOCKET_KEY).iter().count() > 1 {
        return Err(UpgradeError::BadKey);
    }
    let version = headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .ok_or(UpgradeError::MissingVersion)?;
    if version.as_bytes().trim_ascii() != b"13" {
        return Err(UpgradeError::UnsupportedVersion(
            String::from_utf8_lossy(version.as_bytes()).into_owned(),
        ));
    }
    Ok(Kind::WebSocket)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(f: impl FnOnce(http::request::Builder) -> http::request::Builder) -> Request<()> {
        let b = Request::get("/ws")
            .header("upgrade", "websocket")
            .header("connection", "keep-alive, Upgrade")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .header("sec-websocket-version", "13");
        f(b).body(()).unwrap()
    }

    #[test]
    fn valid_handshake() {
        assert_eq!(classify(&req(|b| b)), Ok(Kind::WebSocket));
    }

    #[test]
    fn plain_requests() {
        assert_eq!(
            classify(&Request::get("/").body(()).unwrap()),
            Ok(Kind::Plain)
        );
        let h2c = Request::get("/")
            .header("upgrade", "h2c")
            .header("connection", "upgrade");
        assert_eq!(classify(&h2c.body(()).unwrap()), Ok(Kind::Plain));
    }

    #[test]
    fn defects() {
        let mut r = req(|b| b);
        *r.method_mut() = Method::POST;
        assert!(matches!(classify(&r), Err(UpgradeError::Method(_))));
        let mut r = req(|b| b);
        r.headers_mut()
            .insert("connection", "keep-alive".parse().unwrap());
        assert_eq!(classify(&r), Err(UpgradeError::ConnectionToken));
        let mut r = req(|b| b);
        r.headers_mut().remove("sec-websocket-key");
        assert_eq!(classify(&r), Err(UpgradeError::MissingKey));
        let mut r = req(|b| b);
        r.headers_mut()
            .insert("sec-websocket-key", "AAAAAAAAAAAAAAAAAAAA".parse().unwrap()); // 15 bytes
        assert_eq!(classify(&r), Err(UpgradeError::BadKey));
        let mut r = req(|b| b);
        r.headers_mut()
            .insert("sec-websocket-key", "not base64!".parse().unwrap());
        assert_eq!(classify(&r), Err(UpgradeError::BadKey));
        let mut r = req(|b| b);
        r.headers_mut()
            .insert("sec-websocket-version", "8".parse().unwrap());
        assert_eq!(
            classify(&r),
            Err(UpgradeError::UnsupportedVersion("8".into()))
        );
        let mut r = req(|b| b);
        r.headers_mut().remove("sec-websocket-version");
        assert_eq!(classify(&r), Err(UpgradeError::MissingVersion));
        let mut r = req(|b| b);
        *r.version_mut() = Version::HTTP_10;
        assert_eq!(classify(&r), Ok(Kind::Plain));
    }
}
