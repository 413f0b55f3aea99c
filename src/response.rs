//! The one place errors become what a client sees: status code, headers, body.
//!
//! Bodies are short plain text saying what is wrong and what to fix; they never
//! carry secrets or internal addresses beyond upstream names.
//!
//! The error types of the flow live here too ([`ProxyError`] and its
//! forwarding part [`ForwardError`]), next to their mapping, so the mapping is
//! total by construction: adding a variant without deciding its status code
//! does not compile. The fault decides the code: the client's (400, 401, 403,
//! 404, 405, 426, 429), an upstream's (502, 503, 504), and the body says which
//! and what to fix. Refusals at accept, before hyper sees the connection, are
//! written by hand ([`raw_refusal`]) with the same status and text.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};

use crate::dial::ConnectError;
use crate::policy::Denied;
use crate::policy::rate::{LimitExceeded, retry_secs};
use crate::upstream::SelectError;

/// The response body type used throughout the proxy.
pub type Body = BoxBody<Bytes, hyper::Error>;

/// What went wrong after an upstream connection was made.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// Upstream's: the connection failed while talking HTTP.
    #[error("upstream {upstream} failed: {source}")]
    Protocol {
        /// The upstream's name.
        upstream: String,
        /// What hyper saw.
        #[source]
        source: hyper::Error,
    },
    /// Downstream's: the request body could not be read (bad chunking, cut short).
    #[error("the request body is malformed or was cut short: {source}")]
    DownstreamBody {
        /// What hyper saw.
        #[source]
        source: hyper::Error,
    },
    /// Upstream's: no response head within the response timeout.
    #[error("upstream {upstream} did not answer within {after:?}")]
    Timeout {
        /// The upstream's name.
        upstream: String,
        /// The response timeout that ran out.
        after: Duration,
    },
    /// Upstream's, for WebSocket only: a WebSocket upgrade answered with a
    /// 2xx, 3xx or 5xx instead of 101. A 2xx or 3xx is typically an nginx
    /// without the upgrade headers; a 5xx, one whose own backend failed
    /// ([`upgrade_failure_cause`]). A 4xx is a deliberate refusal and
    /// relayed as is.
    #[error(
        "{upstream} answered {} to a WebSocket upgrade on {path}: {}",
        status.as_u16(),
        upgrade_failure_cause(*status)
    )]
    UpgradeNotForwarded {
        /// The upstream's name.
        upstream: String,
        /// What it answered instead of 101.
        status: StatusCode,
        /// The path of the upgrade.
        path: String,
    },
    /// Upstream's, for WebSocket only: its answer to the handshake could not be read.
    #[error("upstream {upstream}: {source}")]
    Handshake {
        /// The upstream's name.
        upstream: String,
        /// What went wrong.
        #[source]
        source: HandshakeError,
    },
    /// A pooled connection had closed and a new one could not be made.
    #[error("upstream {upstream}: {source}")]
    Reconnect {
        /// The upstream's name.
        upstream: String,
        /// Why the new connection failed.
        #[source]
        source: ConnectError,
    },
}

/// The likely cause of an upgrade answered with `status` (not 101, not a
/// 4xx), as the warning, `/readyz`'s `degraded` list and the 502 say it.
pub fn upgrade_failure_cause(status: StatusCode) -> &'static str {
    if status.is_server_error() {
        "it failed to serve it (a 5xx: the backend behind it is likely down or failing)"
    } else {
        "it does not forward upgrades (proxy_http_version 1.1, Upgrade/Connection headers)"
    }
}

/// A WebSocket upgrade request the proxy refuses ([`crate::upgrade::classify`]),
/// with what is wrong: always the client's fault (400, or 426 for a version).
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

/// Why the upstream's answer to a WebSocket handshake could not be read
/// ([`crate::forward::handshake`]); always the upstream's fault (502).
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// Writing the request or reading the answer failed.
    #[error("connection failed during the WebSocket handshake: {0}")]
    Io(#[from] std::io::Error),
    /// The connection closed before a whole answer head (or body) arrived.
    #[error("the connection closed before the answer was complete")]
    Closed,
    /// The answer is not HTTP/1.x.
    #[error("malformed answer to the WebSocket handshake: {0}")]
    Parse(#[from] httparse::Error),
    /// A header or status that `http` cannot represent.
    #[error("malformed answer to the WebSocket handshake: {0}")]
    Header(#[from] http::Error),
    /// The head or the refusal's body is larger than shunt relays.
    #[error("the answer to the WebSocket handshake is too large")]
    TooLarge,
    /// A chunked body that does not follow RFC 9112 §7.1.
    #[error("malformed chunked body in the answer to the WebSocket handshake")]
    Chunked,
}

/// Why a request was not proxied.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// Downstream's fault: a malformed WebSocket handshake.
    #[error("bad WebSocket handshake: {0}")]
    Upgrade(#[from] UpgradeError),
    /// Downstream's (or the config's): nothing routes this path.
    #[error("no route for {path}")]
    NoRoute {
        /// The normalized path that matched nothing.
        path: String,
    },
    /// Upstream's: none could be reached.
    #[error("route {route}: {source}")]
    Select {
        /// The route's label.
        route: String,
        /// Why no upstream of the route could be used.
        #[source]
        source: SelectError,
    },
    /// Downstream's: refused by the security policy (IP, token, Origin, limits, form).
    #[error(transparent)]
    Denied(#[from] Denied),
    /// Downstream's: no `Host` on HTTP/1.1, several, or one that is not a host.
    #[error("bad Host header: {0}")]
    BadHost(&'static str),
    /// Upstream's: the chosen upstream failed after connecting.
    #[error(transparent)]
    Forward(#[from] ForwardError),
}

/// The status code of each refusal, by whose fault it is:
///
/// | error | status |
/// |-------|--------|
/// | malformed WebSocket handshake, bad `Host` | 400 |
/// | unsupported `Sec-WebSocket-Version` | 426 (with the version to use) |
/// | no route | 404 |
/// | refused by policy | see [`Denied`]'s mapping (401, 403, 405, 429, 400) |
/// | every upstream of the route down | 503 |
/// | connect or response timeout | 504 |
/// | any other upstream failure | 502 |
/// | the client's request body broken | 400 |
impl From<&ProxyError> for StatusCode {
    fn from(e: &ProxyError) -> Self {
        match e {
            ProxyError::Upgrade(UpgradeError::UnsupportedVersion(_)) => {
                StatusCode::UPGRADE_REQUIRED
            }
            ProxyError::Upgrade(_) | ProxyError::BadHost(_) => StatusCode::BAD_REQUEST,
            ProxyError::NoRoute { .. } => StatusCode::NOT_FOUND,
            ProxyError::Select {
                source: SelectError::NoneHealthy { .. },
                ..
            } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Select {
                source:
                    SelectError::Connect {
                        source: ConnectError::Timeout(_),
                        ..
                    },
                ..
            } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Select { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::Forward(ForwardError::Timeout { .. }) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Forward(ForwardError::Protocol { .. }) => StatusCode::BAD_GATEWAY,
            ProxyError::Forward(ForwardError::DownstreamBody { .. }) => StatusCode::BAD_REQUEST,
            ProxyError::Denied(d) => StatusCode::from(d),
            ProxyError::Forward(
                ForwardError::Reconnect { .. }
                | ForwardError::UpgradeNotForwarded { .. }
                | ForwardError::Handshake { .. },
            ) => StatusCode::BAD_GATEWAY,
        }
    }
}

impl From<&Denied> for StatusCode {
    fn from(d: &Denied) -> Self {
        match d {
            Denied::Ip { .. } | Denied::Origin(_) => StatusCode::FORBIDDEN,
            Denied::Auth(_) => StatusCode::UNAUTHORIZED,
            Denied::Limit(_) => StatusCode::TOO_MANY_REQUESTS,
            Denied::Method { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Denied::AbsoluteForm | Denied::HeaderEncoding { .. } => StatusCode::BAD_REQUEST,
        }
    }
}

/// The headers a refusal carries besides its body: `WWW-Authenticate`
/// (RFC 6750) on 401, `Retry-After` on 429.
fn denied_headers(d: &Denied) -> Vec<(header::HeaderName, HeaderValue)> {
    match d {
        Denied::Auth(e) => {
            let value = if e.is_invalid_token() {
                format!(r#"Bearer realm="shunt", error="invalid_token", error_description="{e}""#)
            } else {
                r#"Bearer realm="shunt""#.to_owned()
            };
            HeaderValue::from_str(&value)
                .map(|v| vec![(header::WWW_AUTHENTICATE, v)])
                .unwrap_or_default()
        }
        Denied::Limit(l) => {
            let secs = match l {
                LimitExceeded::Rate { retry_after } => retry_secs(*retry_after),
                LimitExceeded::TunnelsPerIp { .. } | LimitExceeded::Conns { .. } => 1,
            };
            vec![(header::RETRY_AFTER, HeaderValue::from(secs))]
        }
        Denied::Method { .. } => vec![(
            header::ALLOW,
            HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
        )],
        _ => Vec::new(),
    }
}

/// A refusal written by hand on a connection hyper never saw (at accept, on
/// plain HTTP): status line, headers and body, then `Connection: close`.
pub fn raw_refusal(d: &Denied) -> Vec<u8> {
    let status = StatusCode::from(d);
    let body = format!("{d}\n");
    let mut head = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    );
    for (name, value) in denied_headers(d) {
        head.push_str(&format!(
            "{name}: {}\r\n",
            String::from_utf8_lossy(value.as_bytes())
        ));
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

/// The answer to a CORS preflight shunt handles itself: 204 with the CORS headers.
pub fn preflight(headers: Vec<(header::HeaderName, HeaderValue)>) -> Response<Body> {
    let mut resp = Response::new(full(Bytes::new()));
    *resp.status_mut() = StatusCode::NO_CONTENT;
    for (name, value) in headers {
        resp.headers_mut().append(name, value);
    }
    resp
}

/// The response for `e`.
pub fn error_response(e: &ProxyError) -> Response<Body> {
    let status = StatusCode::from(e);
    let mut resp = text(status, format!("{e}\n"));
    if let ProxyError::Upgrade(UpgradeError::UnsupportedVersion(_)) = e {
        // RFC 6455 §4.4 and RFC 9110 §15.5.22: say what to upgrade to.
        let h = resp.headers_mut();
        h.insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    }
    if let ProxyError::Denied(d) = e {
        for (name, value) in denied_headers(d) {
            resp.headers_mut().insert(name, value);
        }
    }
    resp
}

/// A plain-text response.
pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// A JSON response.
pub fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut resp = Response::new(full(format!("{value:#}\n")));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// A complete body as the proxy's body type.
pub fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into())
        .map_err(|never| match never {})
        .boxed()
}

/// An error and each of its causes, once each, joined by `: ` (what
/// `{:#}` prints for an `anyhow` chain): for messages that leave the process
/// as text, like a failed reload in `/status`. The error types on the config
/// and startup path do not repeat their source in their own message.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}
