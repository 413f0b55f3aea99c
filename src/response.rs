//! The one place the proxy's errors become what a client sees: status code,
//! headers, body, and the `x-shunt-error` code.
//!
//! Bodies are short plain text saying what is wrong and what to fix; they never
//! carry secrets or internal addresses beyond upstream names. A body is the
//! error's whole chain ([`ErrorChain`]): each stage's message says what
//! failed at its level, and each cause follows once.
//!
//! Each stage's error lives with the stage that produces it
//! ([`UpgradeError`] in `upgrade`, [`Denied`] in `policy`, [`SelectError`] in
//! `upstream`, [`ConnectError`] in `dial`, [`ForwardError`] in `forward`), so
//! a stage never imports this module to name its own failure. This module
//! sits just below `proxy` and `connection`, imports them all, and maps them:
//! [`ProxyError`] is their union at the edge (it stays here rather than in
//! `proxy` because `proxy` calls the mapping), and its mapping is total by
//! construction: adding a variant without deciding its status code does not
//! compile. The fault decides the code: the client's (400, 401, 403, 404,
//! 405, 426, 429), an upstream's (502, 503, 504), and the body says which and
//! what to fix. Refusals at accept, before hyper sees the connection, are
//! written by hand ([`raw_refusal`]) with the same status and text.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use crate::body::{Body, full, text};
use crate::dial::ConnectError;
use crate::error_chain::ErrorChain;
use crate::forward::ForwardError;
use crate::policy::Denied;
use crate::policy::rate::{LimitExceeded, retry_secs};
use crate::upgrade::UpgradeError;
use crate::upstream::SelectError;

/// Why a request was not proxied.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// Downstream's fault: a malformed WebSocket handshake.
    #[error("bad WebSocket handshake")]
    Upgrade(#[from] UpgradeError),
    /// Downstream's (or the config's): nothing routes this path.
    #[error("no route for {path}")]
    NoRoute {
        /// The normalized path that matched nothing.
        path: String,
    },
    /// Upstream's: none could be reached.
    #[error("route {route}")]
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
/// | `auth = "jwt"` while the JWKS URL's keys were never loaded | 503 |
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
                source: SelectError::Connect { source, .. },
                ..
            } if matches!(**source, ConnectError::Timeout(_)) => StatusCode::GATEWAY_TIMEOUT,
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
            // The JWKS URL's keys are not loaded: shunt's fault, never open.
            Denied::Auth(e) if e.keys_unavailable() => StatusCode::SERVICE_UNAVAILABLE,
            Denied::Auth(_) => StatusCode::UNAUTHORIZED,
            Denied::Limit(_) => StatusCode::TOO_MANY_REQUESTS,
            Denied::Method { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Denied::AbsoluteForm | Denied::HeaderEncoding { .. } => StatusCode::BAD_REQUEST,
        }
    }
}

/// The header naming the kind of every answer shunt makes itself on the
/// proxy listener, so programs (`shunt doctor`, scripts, dashboards) read a
/// stable code instead of the body's prose. Never set on an answer that
/// comes from an upstream.
pub(crate) const X_SHUNT_ERROR: header::HeaderName =
    header::HeaderName::from_static("x-shunt-error");

impl ProxyError {
    /// The `x-shunt-error` code of this refusal: stable, lowercase
    /// snake_case, one per kind, next to the status table above (README,
    /// troubleshooting, lists them). Several codes may share a status; a
    /// code never changes its meaning.
    pub fn code(&self) -> &'static str {
        match self {
            ProxyError::Upgrade(UpgradeError::UnsupportedVersion(_)) => {
                "unsupported_websocket_version"
            }
            ProxyError::Upgrade(_) => "bad_upgrade",
            ProxyError::BadHost(_) => "bad_host",
            ProxyError::NoRoute { .. } => "no_route",
            ProxyError::Denied(d) => denied_code(d),
            ProxyError::Select {
                source: SelectError::NoneHealthy { .. },
                ..
            } => "no_healthy_upstream",
            ProxyError::Select {
                source: SelectError::Connect { source, .. },
                ..
            } if matches!(**source, ConnectError::Timeout(_)) => "upstream_connect_timeout",
            ProxyError::Select { .. } | ProxyError::Forward(ForwardError::Reconnect { .. }) => {
                "upstream_connect"
            }
            ProxyError::Forward(ForwardError::Timeout { .. }) => "upstream_timeout",
            ProxyError::Forward(ForwardError::Protocol { .. }) => "upstream_protocol",
            ProxyError::Forward(ForwardError::DownstreamBody { .. }) => "bad_request_body",
            ProxyError::Forward(ForwardError::UpgradeNotForwarded(n)) => {
                if n.status.is_server_error() {
                    "upgrade_failed_upstream"
                } else {
                    "upgrade_not_forwarded"
                }
            }
            ProxyError::Forward(ForwardError::Handshake { .. }) => "upstream_handshake",
        }
    }
}

/// The `x-shunt-error` code of a policy refusal (see [`ProxyError::code`]).
pub(crate) fn denied_code(d: &Denied) -> &'static str {
    match d {
        Denied::Ip { .. } => "ip_denied",
        Denied::Origin(_) => "origin_denied",
        Denied::Auth(e) if e.keys_unavailable() => "jwks_unavailable",
        Denied::Auth(_) => "unauthorized",
        Denied::Limit(LimitExceeded::Rate { .. }) => "rate_limited",
        Denied::Limit(LimitExceeded::TunnelsPerIp { .. }) => "tunnel_limit",
        Denied::Limit(LimitExceeded::Conns { .. }) => "connection_limit",
        Denied::Method { .. } => "method_not_allowed",
        Denied::AbsoluteForm => "absolute_form",
        Denied::HeaderEncoding { .. } => "bad_header_encoding",
    }
}

/// The headers a refusal carries besides its body: `WWW-Authenticate`
/// (RFC 6750) on 401, `Retry-After` on 429.
fn denied_headers(d: &Denied) -> Vec<(header::HeaderName, HeaderValue)> {
    match d {
        Denied::Auth(e) if e.keys_unavailable() => Vec::new(),
        Denied::Auth(e) => {
            let value = if e.is_invalid_token() {
                format!(
                    r#"Bearer realm="shunt", error="invalid_token", error_description="{}""#,
                    ErrorChain(e)
                )
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
pub(crate) fn raw_refusal(d: &Denied) -> Vec<u8> {
    let status = StatusCode::from(d);
    let body = format!("{}\n", ErrorChain(d));
    let mut head = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    );
    head.push_str(&format!("{X_SHUNT_ERROR}: {}\r\n", denied_code(d)));
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
pub(crate) fn preflight(headers: Vec<(header::HeaderName, HeaderValue)>) -> Response<Body> {
    let mut resp = Response::new(full(Bytes::new()));
    *resp.status_mut() = StatusCode::NO_CONTENT;
    for (name, value) in headers {
        resp.headers_mut().append(name, value);
    }
    resp
}

/// The response for `e`.
pub(crate) fn error_response(e: &ProxyError) -> Response<Body> {
    let status = StatusCode::from(e);
    let mut resp = text(status, format!("{}\n", ErrorChain(e)));
    resp.headers_mut()
        .insert(X_SHUNT_ERROR, HeaderValue::from_static(e.code()));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::ip::IpRefusal;

    /// A refusal written at accept names its kind like one hyper sends.
    #[test]
    fn raw_refusal_carries_the_error_code() {
        let denied = Denied::Ip {
            reason: IpRefusal::NotAllowed,
        };
        let text = String::from_utf8(raw_refusal(&denied)).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{head}");
        assert!(
            head.split("\r\n").any(|l| l == "x-shunt-error: ip_denied"),
            "{head}"
        );
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let resp = error_response(&ProxyError::Denied(denied));
        assert_eq!(resp.headers()[X_SHUNT_ERROR], "ip_denied");
    }

    /// A body is the whole chain, each cause once: the same text the
    /// messages gave when each one repeated its source.
    #[test]
    fn bodies_print_each_cause_once() {
        use std::sync::Arc;
        use std::time::Duration;

        use crate::config::UpstreamName;
        use crate::forward::handshake::HandshakeError;

        let body = |e: &ProxyError| {
            let resp = error_response(e);
            let bytes = body_bytes(resp);
            String::from_utf8(bytes).unwrap()
        };
        let timeout = ProxyError::Select {
            route: "/a".into(),
            source: SelectError::Connect {
                upstream: UpstreamName("direct".into()),
                source: Arc::new(ConnectError::Timeout(Duration::from_secs(2))),
            },
        };
        assert_eq!(
            body(&timeout),
            "route /a: upstream direct: connect timed out after 2s\n"
        );
        assert_eq!(StatusCode::from(&timeout), StatusCode::GATEWAY_TIMEOUT);
        let handshake = ProxyError::Forward(ForwardError::Handshake {
            upstream: UpstreamName("nginx".into()),
            source: HandshakeError::Io(std::io::Error::other("reset")),
        });
        assert_eq!(
            body(&handshake),
            "upstream nginx: connection failed during the WebSocket handshake: reset\n"
        );
        let upgrade = ProxyError::Upgrade(UpgradeError::MissingKey);
        assert_eq!(
            body(&upgrade),
            "bad WebSocket handshake: Sec-WebSocket-Key is missing\n"
        );
    }

    /// The bytes of a complete body.
    fn body_bytes(resp: Response<Body>) -> Vec<u8> {
        use http_body_util::BodyExt;
        let collect = resp.into_body().collect();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(collect).unwrap().to_bytes().to_vec()
    }

    /// Every code is lowercase snake_case, so it is a valid header value
    /// and scripts can match it exactly.
    #[test]
    fn codes_are_snake_case() {
        let errors = [
            ProxyError::NoRoute { path: "/x".into() },
            ProxyError::BadHost("not a host name"),
            ProxyError::Upgrade(UpgradeError::UnsupportedVersion("8".into())),
            ProxyError::Upgrade(UpgradeError::MissingKey),
        ];
        for e in &errors {
            let code = e.code();
            assert!(
                !code.is_empty() && code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{code}"
            );
        }
    }
}
