//! One request, top-down: handshake check → route → upstream → forward.
//!
//! [`handle`] is hyper's service function for downstream connections. It never
//! fails: every error becomes a response in [`crate::response`], and every
//! request ends in exactly one access-log line naming route and upstream.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use http::{Request, Response, header};
use hyper::body::Incoming;

use crate::config::UpstreamName;
use crate::forward::{self, Body, ForwardError};
use crate::handshake::{self, HandshakeError, Kind};
use crate::response;
use crate::router::normalize_path;
use crate::runtime::{Downstream, Runtime};
use crate::upstream::{self, SelectError};

/// Why a request was not proxied.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// Downstream's fault: a malformed WebSocket handshake.
    #[error("bad WebSocket handshake: {0}")]
    Handshake(#[from] HandshakeError),
    /// Downstream's (or the config's): nothing routes this path.
    #[error("no route for {path}")]
    NoRoute { path: String },
    /// Upstream's: none could be reached.
    #[error("route {route}: {source}")]
    Select {
        route: String,
        #[source]
        source: SelectError,
    },
    /// Upstream's: the chosen upstream failed after connecting.
    #[error(transparent)]
    Forward(#[from] ForwardError),
}

/// What the access log says about one request, filled in as it goes.
#[derive(Debug, Default)]
struct Trace {
    route: Option<String>,
    upstream: Option<UpstreamName>,
}

/// Serve one downstream request.
pub async fn handle(
    req: Request<Incoming>,
    downstream: Downstream,
    rt: Arc<Runtime>,
) -> Result<Response<Body>, Infallible> {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let upgrade = handshake::has_token(req.headers(), header::UPGRADE, "websocket");
    let mut trace = Trace::default();
    let resp = match proxy(req, downstream, &rt, &mut trace).await {
        Ok(resp) => resp,
        Err(e) => {
            tracing::debug!(error = %e, "request refused");
            response::error_response(&e)
        }
    };
    rt.stats.record(resp.status(), upgrade);
    tracing::info!(
        target: "shunt::access",
        peer = %downstream.peer,
        method = %method,
        path = %path,
        status = resp.status().as_u16(),
        route = %trace.route.as_deref().unwrap_or("-"),
        upstream = %trace.upstream.as_ref().map_or("-", |u| u.0.as_str()),
        websocket = upgrade,
        ms = started.elapsed().as_millis() as u64,
        "request"
    );
    Ok(resp)
}

async fn proxy(
    req: Request<Incoming>,
    downstream: Downstream,
    rt: &Runtime,
    trace: &mut Trace,
) -> Result<Response<Body>, ProxyError> {
    let snapshot = rt.live.load_full();
    let kind: Kind = handshake::classify(&req)?;
    let path = normalize_path(req.uri().path());
    let host = request_host(&req);
    let route = snapshot
        .router
        .route(host, &path)
        .ok_or_else(|| ProxyError::NoRoute { path: path.clone() })?;
    trace.route = Some(route.label.clone());
    let reuse = kind == Kind::Plain;
    let (upstream, conn) = upstream::connect_first(&route.via, snapshot.timeouts.connect, reuse)
        .await
        .map_err(|source| ProxyError::Select {
            route: route.label.clone(),
            source,
        })?;
    trace.upstream = Some(upstream.name().clone());
    let resp = forward::forward(
        req,
        kind,
        &route.label,
        &upstream,
        conn,
        downstream,
        rt,
        &snapshot.timeouts,
    )
    .await?;
    Ok(resp)
}

/// The host the client asked for: `Host`, or the authority of an absolute-form URI.
fn request_host<B>(req: &Request<B>) -> Option<&str> {
    req.uri().host().or_else(|| {
        req.headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
    })
}
