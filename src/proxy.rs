//! One request, top-down: handshake check → route → policy → upstream → forward.
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
use crate::forward::{self, Body, Exchange, ForwardError};
use crate::handshake::{self, HandshakeError, Kind};
use crate::policy::{self, Denied};
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
    // Path and query, the token parameter redacted: a token never reaches a log line.
    let path = {
        let snapshot = rt.live.load();
        policy::target::loggable_target(req.uri(), &snapshot.config.policy.sources.query)
    };
    let upgrade = req.version() >= http::Version::HTTP_11
        && handshake::has_token(req.headers(), header::UPGRADE, "websocket");
    let mut trace = Trace::default();
    let resp = match proxy(req, downstream, &rt, &mut trace, &path).await {
        Ok(resp) => resp,
        Err(e @ ProxyError::Denied(_)) => {
            tracing::info!(peer = %downstream.peer, path = %path, reason = %e, "request refused by policy");
            response::error_response(&e)
        }
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
    mut req: Request<Incoming>,
    downstream: Downstream,
    rt: &Runtime,
    trace: &mut Trace,
    target: &str,
) -> Result<Response<Body>, ProxyError> {
    let snapshot = rt.live.load_full();
    let kind: Kind = handshake::classify(&req)?;
    let path = normalize_path(req.uri().path());
    let host = request_host(&req)?;
    let route = snapshot
        .router
        .route(host, &path)
        .ok_or_else(|| ProxyError::NoRoute { path: path.clone() })?;
    trace.route = Some(route.label.clone());
    let global = &snapshot.config.policy;
    let admission = policy::check(
        &req,
        kind,
        &route.spec.policy,
        global,
        downstream.peer.ip(),
        &rt.gate,
    )?;
    if admission.preflight {
        let origin = admission.cors_origin.as_ref();
        let headers = origin.map_or_else(Vec::new, |o| {
            policy::origin::cors_headers(o, Some(req.headers()))
        });
        return Ok(response::preflight(headers));
    }
    // An absolute-form target's authority is the host (RFC 9112 §3.2.2): the
    // upstream sees the host the request was routed on.
    if req.method() != http::Method::CONNECT
        && let Some(host) = req
            .uri()
            .authority()
            .and_then(|a| header::HeaderValue::from_str(a.as_str()).ok())
    {
        req.headers_mut().insert(header::HOST, host);
    }
    // The upstream gets the path that was routed and policed, without the token parameter.
    let strip = (route.spec.policy.auth != policy::auth::AuthMode::None)
        .then_some(global.sources.query.as_str());
    if req.method() != http::Method::CONNECT
        && let Some(uri) = policy::target::upstream_target(req.uri(), &path, strip)
    {
        *req.uri_mut() = uri;
    }
    if let Some(slot) = admission.tunnel.clone() {
        req.extensions_mut().insert(slot);
    }
    let reuse = kind == Kind::Plain;
    let (upstream, conn) = upstream::connect_first(&route.via, snapshot.timeouts.connect, reuse)
        .await
        .map_err(|source| ProxyError::Select {
            route: route.label.clone(),
            source,
        })?;
    trace.upstream = Some(upstream.name().clone());
    // What `/calls` shows of a WebSocket call: the client's Host and the redacted target.
    let host_header = (kind == Kind::WebSocket)
        .then(|| {
            req.headers()
                .get(header::HOST)?
                .to_str()
                .ok()
                .map(str::to_owned)
        })
        .flatten();
    let exchange = Exchange {
        kind,
        route: &route.label,
        upstream: &upstream,
        downstream,
        timeouts: &snapshot.timeouts,
        call: forward::CallMeta {
            host: host_header,
            target,
            generation: snapshot.generation,
            spec: route.spec.calls,
        },
    };
    let mut resp = forward::forward(req, conn, exchange, rt).await?;
    if let Some(origin) = &admission.cors_origin {
        for (name, value) in policy::origin::cors_headers(origin, None) {
            if name == header::VARY {
                resp.headers_mut().append(name, value);
            } else {
                resp.headers_mut().insert(name, value);
            }
        }
    }
    Ok(resp)
}

/// The host the client asked for: the authority of an absolute-form target,
/// else the one `Host` header (required on HTTP/1.1, RFC 9112 §3.2).
fn request_host<B>(req: &Request<B>) -> Result<Option<&str>, ProxyError> {
    if let Some(host) = req.uri().host() {
        return Ok(Some(host));
    }
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let (first, second) = (hosts.next(), hosts.next());
    match (first, second) {
        (Some(_), Some(_)) => Err(ProxyError::BadHost("several Host headers")),
        (None, _) if req.version() == http::Version::HTTP_11 => {
            Err(ProxyError::BadHost("HTTP/1.1 needs a Host header"))
        }
        (None, _) => Ok(None),
        (Some(value), None) => {
            let text = value
                .to_str()
                .map_err(|_| ProxyError::BadHost("not a host name"))?;
            match text.parse::<http::uri::Authority>() {
                Ok(a) if !text.contains('@') && !a.host().is_empty() => Ok(Some(text)),
                _ => Err(ProxyError::BadHost("not a host name")),
            }
        }
    }
}
