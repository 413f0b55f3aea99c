//! A plain request: sent over a pooled keep-alive connection or a fresh
//! HTTP/1.1 one, its body streamed both ways.
//!
//! The response timeout bounds the upstream's answer; a pooled connection the
//! upstream closed while idle is replaced before the request goes out. The
//! connection returns to the upstream's pool when the response body has been
//! read to the end ([`PooledBody`]).

use std::time::Duration;

use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use super::{Exchange, Target, response_timeout};
use crate::body::Body;
use crate::dial::pool::{PooledBody, Sender};
use crate::dial::{self, Conn, UpstreamStream};
use crate::forward::ForwardError;
use crate::headers;
use crate::shutdown::Shutdown;

/// Send the plain request `req` over `conn` and return the upstream's answer,
/// its connection going back to the pool once the body is read.
pub(super) async fn forward(
    mut req: Request<Body>,
    conn: Conn,
    exchange: &Exchange<'_>,
    shutdown: &Shutdown,
) -> Result<Response<Body>, ForwardError> {
    let (upstream, timeouts) = (&exchange.upstream, exchange.timeouts);
    super::request::prepare(&mut req, &exchange.rewrite());
    let sent = tokio::time::timeout(
        timeouts.response,
        send(conn, req, upstream, shutdown, timeouts.connect),
    )
    .await;
    let (mut resp, sender) = match sent {
        Ok(r) => r?,
        Err(_) => return Err(response_timeout(upstream, timeouts.response)),
    };
    headers::prepare_response(resp.headers_mut(), false, upstream.route_header);
    // The client speaks HTTP/1.1 with us whatever the upstream spoke.
    *resp.version_mut() = http::Version::HTTP_11;
    let pool = upstream.pool.clone();
    Ok(resp.map(|body| PooledBody::new(body, sender, pool).boxed()))
}

/// A hyper error while talking to `upstream`. A "user" error there is the
/// downstream request's body failing (malformed chunking, a client that
/// left): not the upstream's fault.
fn hyper_error(upstream: &Target<'_>, source: hyper::Error) -> ForwardError {
    if source.is_user() {
        ForwardError::DownstreamBody { source }
    } else {
        ForwardError::Protocol {
            upstream: upstream.name().clone(),
            source,
        }
    }
}

/// Send `req` over `conn`; a pooled connection found closed before the
/// request went out is replaced by a fresh one (the request is intact then).
async fn send(
    conn: Conn,
    req: Request<Body>,
    upstream: &Target<'_>,
    shutdown: &Shutdown,
    connect_timeout: Duration,
) -> Result<(Response<Incoming>, Sender), ForwardError> {
    let mut sender = match conn {
        Conn::Fresh(stream) => start_http1(stream, upstream, shutdown).await?,
        Conn::Pooled(mut sender) => {
            // It is idle, so ready at once unless the upstream has closed it.
            let ready = tokio::time::timeout(connect_timeout, sender.ready()).await;
            if matches!(ready, Ok(Ok(()))) {
                match sender.try_send_request(req).await {
                    Ok(resp) => return Ok((resp, sender)),
                    Err(mut e) => match e.take_message() {
                        Some(req) => return resend(req, upstream, shutdown, connect_timeout).await,
                        None => return Err(hyper_error(upstream, e.into_error())),
                    },
                }
            }
            return resend(req, upstream, shutdown, connect_timeout).await;
        }
    };
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| hyper_error(upstream, e))?;
    Ok((resp, sender))
}

/// Send `req` over a fresh connection after a pooled one turned out closed.
async fn resend(
    req: Request<Body>,
    upstream: &Target<'_>,
    shutdown: &Shutdown,
    connect_timeout: Duration,
) -> Result<(Response<Incoming>, Sender), ForwardError> {
    tracing::debug!(upstream = %upstream.name(), "pooled connection was closed; reconnecting");
    let stream = upstream.reconnect(connect_timeout).await?;
    let mut sender = start_http1(stream, upstream, shutdown).await?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| hyper_error(upstream, e))?;
    Ok((resp, sender))
}

/// hyper's client handshake on a new connection. Plain TCP stays a bare
/// `TcpStream` inside `TokioIo` so the tunnel can take it back for splice.
async fn start_http1(
    stream: UpstreamStream,
    upstream: &Target<'_>,
    shutdown: &Shutdown,
) -> Result<Sender, ForwardError> {
    match stream {
        UpstreamStream::Plain(tcp) => open(TokioIo::new(tcp), upstream, shutdown).await,
        UpstreamStream::Tls(tls) => open(TokioIo::new(*tls), upstream, shutdown).await,
    }
}

/// The handshake over `io`; at shutdown its task empties the upstream's pool
/// so idle connections end.
async fn open<IO>(
    io: IO,
    upstream: &Target<'_>,
    shutdown: &Shutdown,
) -> Result<Sender, ForwardError>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let pool = upstream.pool.clone();
    dial::http1_handshake(io, shutdown.tracker(), shutdown.token(), move || {
        pool.close()
    })
    .await
    .map(Sender::new)
    .map_err(|e| hyper_error(upstream, e))
}
