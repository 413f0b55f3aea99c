//! The one place errors become what a client sees: status code, headers, body.
//!
//! Bodies are short plain text saying what is wrong and what to fix; they never
//! carry secrets or internal addresses beyond upstream names.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};

use crate::forward::{Body, ForwardError};
use crate::handshake::HandshakeError;
use crate::proxy::ProxyError;
use crate::upstream::SelectError;
use crate::upstream::connect::ConnectError;

impl From<&ProxyError> for StatusCode {
    fn from(e: &ProxyError) -> Self {
        match e {
            ProxyError::Handshake(HandshakeError::UnsupportedVersion(_)) => {
                StatusCode::UPGRADE_REQUIRED
            }
            ProxyError::Handshake(_) => StatusCode::BAD_REQUEST,
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
            ProxyError::Forward(ForwardError::Reconnect { .. }) => StatusCode::BAD_GATEWAY,
        }
    }
}

/// The response for `e`.
pub fn error_response(e: &ProxyError) -> Response<Body> {
    let status = StatusCode::from(e);
    let mut resp = text(status, format!("{e}\n"));
    if let ProxyError::Handshake(HandshakeError::UnsupportedVersion(_)) = e {
        resp.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
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
