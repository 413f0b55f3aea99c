//! A one-request HTTP/1.1 client for probing upstreams: the health probes
//! ([`crate::upstream::probe`]) and `shunt doctor` send the same request
//! shapes through it, so both see what a real request would.
//!
//! It sits in [`crate::dial`], below every user, so the doctor reaches it
//! without importing `upstream`. Its error is typed ([`SendError`]) and
//! names the request; callers print it with [`crate::error_chain`].

use bytes::Bytes;
use http::{Method, Uri, header};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::http1_handshake;

/// Why a probe request got no response head.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The request could not be built (a header value `http` refuses).
    #[error(transparent)]
    Request(#[from] http::Error),
    /// The handshake or the exchange failed; the message names the request,
    /// as logs and `/status` show it (`GET /health: ...`).
    #[error("{method} {target}")]
    Exchange {
        /// The request's method.
        method: Method,
        /// The request's target.
        target: Uri,
        /// What hyper saw.
        #[source]
        source: hyper::Error,
    },
}

/// Make `request` (a GET with its `Host`) a WebSocket handshake (RFC 6455
/// §4.1) with `Sec-WebSocket-Key: key`.
/// Shared by the `ws` probe and the doctor's WebSocket check, so both send
/// what a browser sends.
pub(crate) fn ws_upgrade(request: http::request::Builder, key: &str) -> http::request::Builder {
    request
        .header(header::UPGRADE, "websocket")
        .header(header::CONNECTION, "upgrade")
        .header(header::SEC_WEBSOCKET_KEY, key)
        .header(header::SEC_WEBSOCKET_VERSION, "13")
}

/// The `Sec-WebSocket-Accept` a server must answer to `key` (RFC 6455 §4.2.2).
pub(crate) fn accept_key(key: &str) -> String {
    use base64::Engine;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key.as_bytes());
    ctx.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(ctx.finish())
}

/// Send one bodiless request over `stream` and return the response head; a
/// 101 can then be taken over with `hyper::upgrade::on`.
/// The connection is used for this one request: the probe never pools it.
pub(crate) async fn send<S>(
    stream: S,
    request: http::request::Builder,
    tracker: &TaskTracker,
    stop: &CancellationToken,
) -> Result<hyper::Response<hyper::body::Incoming>, SendError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let req = request.body(Empty::<Bytes>::new())?;
    let (method, target) = (req.method().clone(), req.uri().clone());
    let exchange = async {
        let mut sender = http1_handshake(TokioIo::new(stream), tracker, stop, || {}).await?;
        sender.send_request(req).await
    };
    exchange.await.map_err(|source| SendError::Exchange {
        method,
        target,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The worked example of RFC 6455 §1.3.
    #[test]
    fn accept_key_matches_rfc_6455_example() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}
