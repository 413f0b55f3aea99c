//! Forwarding one request to the chosen upstream, and its answer back.
//!
//! The request goes over a fresh upstream HTTP/1.1 connection with its body
//! streamed, never buffered. A WebSocket handshake that the upstream accepts
//! (101) hands both connections to [`tunnel`]; a refusal is relayed to the
//! client as an ordinary response.

pub mod headers;
pub mod tunnel;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

use crate::config::Timeouts;
use crate::handshake::Kind;
use crate::policy::rate::TunnelSlot;
use crate::runtime::{Downstream, Runtime};
use crate::upstream::Upstream;
use crate::upstream::connect::UpstreamStream;

/// The response body type used throughout the proxy.
pub type Body = BoxBody<Bytes, hyper::Error>;

/// What went wrong after an upstream connection was made.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("upstream {upstream} failed: {source}")]
    Protocol {
        upstream: String,
        #[source]
        source: hyper::Error,
    },
    /// Downstream's: the request body could not be read (bad chunking, cut short).
    #[error("the request body is malformed or was cut short: {source}")]
    DownstreamBody {
        #[source]
        source: hyper::Error,
    },
    #[error("upstream {upstream} did not answer within {after:?}")]
    Timeout { upstream: String, after: Duration },
}

/// Who and what one forwarded exchange involves.
#[derive(Debug, Clone, Copy)]
pub struct Exchange<'a> {
    pub kind: Kind,
    /// Label of the route that matched.
    pub route: &'a str,
    pub upstream: &'a Arc<Upstream>,
    pub downstream: Downstream,
    pub timeouts: &'a Timeouts,
}

/// Send `req` over `stream` to the exchange's upstream and return the response for the client.
pub async fn forward(
    mut req: Request<Incoming>,
    stream: UpstreamStream,
    exchange: Exchange<'_>,
    rt: &Runtime,
) -> Result<Response<Body>, ForwardError> {
    let Exchange {
        kind,
        route,
        upstream,
        downstream,
        timeouts,
    } = exchange;
    let upgrade = kind == Kind::WebSocket;
    let name = upstream.name();
    let protocol = |source: hyper::Error| {
        // A "user" error here is the downstream request's body failing
        // (malformed chunking, a client that left): not the upstream's fault.
        if source.is_user() {
            ForwardError::DownstreamBody { source }
        } else {
            ForwardError::Protocol {
                upstream: name.0.clone(),
                source,
            }
        }
    };
    let downstream_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    // The policy's per-client tunnel slot, held by the tunnel for its life.
    let slot = req.extensions_mut().remove::<TunnelSlot>();
    to_origin_form(&mut req);
    headers::prepare_request(
        req.headers_mut(),
        upgrade,
        downstream.peer.ip(),
        downstream.tls,
        &upstream.spec.url.authority(),
    );

    // Plain TCP stays a bare `TcpStream` so the tunnel can recover it for splice.
    let mut sender = match stream {
        UpstreamStream::Plain(tcp) => open(TokioIo::new(tcp), rt).await,
        UpstreamStream::Tls(tls) => open(TokioIo::new(*tls), rt).await,
    }
    .map_err(protocol)?;

    let sent = tokio::time::timeout(timeouts.response, sender.send_request(req)).await;
    let mut resp = match sent {
        Ok(r) => r.map_err(protocol)?,
        Err(_) => {
            upstream
                .health
                .record_failure(&format!("no response within {:?}", timeouts.response));
            return Err(ForwardError::Timeout {
                upstream: name.0.clone(),
                after: timeouts.response,
            });
        }
    };

    let switching = upgrade && resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    if let (true, Some(downstream_upgrade)) = (switching, downstream_upgrade) {
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        let guard = rt.stats.open_tunnel(route, name);
        tunnel::spawn(
            downstream_upgrade,
            upstream_upgrade,
            guard,
            slot,
            timeouts,
            rt,
        );
    }
    headers::prepare_response(resp.headers_mut(), switching, name);
    // The client speaks HTTP/1.1 with us whatever the upstream spoke.
    *resp.version_mut() = http::Version::HTTP_11;
    Ok(resp.map(BodyExt::boxed))
}

/// HTTP/1.1 client handshake over `io`; the connection task is tracked and
/// supports upgrades.
async fn open<IO>(io: IO, rt: &Runtime) -> Result<SendRequest<Incoming>, hyper::Error>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    rt.tracker.spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "upstream connection ended with an error");
        }
    });
    Ok(sender)
}

/// Upstreams get origin-form (`/path?query`), whatever form the client used.
fn to_origin_form<B>(req: &mut Request<B>) {
    // CONNECT's target is an authority by definition (only with a route's allow_connect).
    if req.method() == http::Method::CONNECT {
        return;
    }
    if req.uri().authority().is_none() {
        return;
    }
    let pq = req
        .uri()
        .path_and_query()
        .map_or("/", |pq| pq.as_str())
        .to_owned();
    if let Ok(uri) = pq.parse::<Uri>() {
        *req.uri_mut() = uri;
    }
}
