//! The plain HTTP port (`--http-listen`): ACME HTTP-01 answers and a 308 to
//! https:// for everything else. It carries no proxied traffic.
//!
//! - `GET /.well-known/acme-challenge/TOKEN` answers the key authorization
//!   of a token an order is waiting on, `404` for any other token;
//! - every other request gets `308 Permanent Redirect` to the same host and
//!   path (query included) on `https://`, at `--https-port` (default: the
//!   TLS listener's port; `:443` is left out of the URL);
//! - a request without a usable `Host` gets `400`.
//!
//! A side listener like the admin one: it uses `listener`'s accept loop and
//! hyper's HTTP/1.1 server, and reads only the HTTP-01 tokens.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;

use crate::acme::challenge::Http01Tokens;
use crate::body::{Body, text};

/// Where HTTP-01 tokens are asked for (RFC 8555 8.3).
const CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";
/// Bound on a request head, and on a connection's idle time.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// What the port needs to answer.
#[derive(Debug, Clone)]
pub(crate) struct HttpPort {
    /// HTTP-01 key authorizations of orders in flight.
    pub tokens: Arc<Http01Tokens>,
    /// The port redirects go to.
    pub https_port: u16,
    /// Cancelled at shutdown: idle keep-alive connections end then.
    pub stop: tokio_util::sync::CancellationToken,
}

/// Serve one connection of the port.
pub(crate) async fn serve(stream: TcpStream, port: HttpPort) {
    let stop = port.stop.clone();
    let service = service_fn(move |req| {
        let port = port.clone();
        async move { Ok::<_, Infallible>(answer(&req, &port)) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(16 * 1024)
        .serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        _ = conn => {}
        () = stop.cancelled() => {}
    }
}

/// The answer to one request.
fn answer(req: &Request<Incoming>, port: &HttpPort) -> Response<Body> {
    let path = req.uri().path();
    if let Some(token) = path.strip_prefix(CHALLENGE_PREFIX) {
        return match port.tokens.get(token) {
            Some(key_auth) if req.method() == http::Method::GET => {
                tracing::debug!(token, "answered an ACME http-01 validation");
                text(StatusCode::OK, key_auth)
            }
            _ => text(StatusCode::NOT_FOUND, "no such ACME challenge token\n"),
        };
    }
    match redirect_target(req, port.https_port) {
        Some(location) => {
            let mut resp = text(
                StatusCode::PERMANENT_REDIRECT,
                "this service is served over https\n",
            );
            resp.headers_mut().insert(header::LOCATION, location);
            resp
        }
        None => text(
            StatusCode::BAD_REQUEST,
            "a request to the HTTP port needs a Host header\n",
        ),
    }
}

/// `https://HOST[:PORT]/path?query` for the request's Host.
fn redirect_target(req: &Request<Incoming>, https_port: u16) -> Option<HeaderValue> {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().host())?;
    let host = strip_port(host.trim());
    if host.is_empty()
        || !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
    {
        return None;
    }
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", http::uri::PathAndQuery::as_str);
    let port = if https_port == 443 {
        String::new()
    } else {
        format!(":{https_port}")
    };
    HeaderValue::from_str(&format!("https://{host}{port}{path}")).ok()
}

/// `host` without a `:port` (an IPv6 literal keeps its brackets).
fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host
            .split_once(']')
            .map_or(host, |(h, _)| &host[..h.len() + 1]);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

/// The accept loop of the port, until `stop`.
pub(crate) async fn run(
    listener: tokio::net::TcpListener,
    port: HttpPort,
    tracker: tokio_util::task::TaskTracker,
) {
    crate::listener::accept_loop(
        listener,
        port.stop.clone(),
        tracker,
        move |stream, _peer: SocketAddr| serve(stream, port.clone()),
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::strip_port;

    #[test]
    fn ports_are_stripped_from_hosts() {
        assert_eq!(strip_port("calls.example.com:80"), "calls.example.com");
        assert_eq!(strip_port("calls.example.com"), "calls.example.com");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
    }
}
