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
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::handshake::Kind;
use crate::runtime::{Downstream, Runtime};
use crate::upstream::Upstream;

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
    #[error("upstream {upstream} did not answer within {after:?}")]
    Timeout { upstream: String, after: Duration },
}

/// Send `req` to `upstream` over `stream` and return the response for the client.
#[allow(clippy::too_many_arguments)]
pub async fn forward(
    mut req: Request<Incoming>,
    kind: Kind,
    route: &str,
    upstream: &Arc<Upstream>,
    stream: TcpStream,
    downstream: Downstream,
    rt: &Runtime,
    timeouts: &crate::config::Timeouts,
) -> Result<Response<Body>, ForwardError> {
    let upgrade = kind == Kind::WebSocket;
    let name = upstream.name();
    let protocol = |source| ForwardError::Protocol {
        upstream: name.0.clone(),
        source,
    };
    let downstream_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    to_origin_form(&mut req);
    headers::prepare_request(
        req.headers_mut(),
        upgrade,
        downstream.peer.ip(),
        downstream.tls,
        &upstream.spec.url.authority(),
    );

    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(protocol)?;
    rt.tracker.spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "upstream connection ended with an error");
        }
    });

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
        tunnel::spawn(downstream_upgrade, upstream_upgrade, guard, timeouts, rt);
    }
    headers::prepare_response(resp.headers_mut(), switching, name);
    // The client speaks HTTP/1.1 with us whatever the upstream spoke.
    *resp.version_mut() = http::Version::HTTP_11;
    Ok(resp.map(BodyExt::boxed))
}

/// Upstreams get origin-form (`/path?query`), whatever form the client used.
fn to_origin_form<B>(req: &mut Request<B>) {
    if req.uri().scheme().is_some() || req.uri().authority().is_some() {
        let pq = req
            .uri()
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .to_owned();
        if let Ok(uri) = pq.parse::<Uri>() {
            *req.uri_mut() = uri;
        }
    }
}
