//! The body type of every response shunt sends downstream, and the helpers
//! that build one.
//!
//! A leaf: it imports nothing of the crate, so every stage (forward, proxy,
//! admin, the status mapping in [`crate::response`]) can build a body without
//! importing the module that maps errors, and each stage's error type can
//! live with the stage that produces it.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};

/// The response body type used throughout the proxy.
pub(crate) type Body = BoxBody<Bytes, hyper::Error>;

/// A complete body as the proxy's body type.
pub fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A plain-text response.
pub(crate) fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// A JSON response.
pub(crate) fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut resp = Response::new(full(format!("{value:#}\n")));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}
