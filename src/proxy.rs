//! One request, top-down: handshake check → route → policy → upstream → forward.
//!
//! [`handle`] is hyper's service function for downstream connections. It never
//! fails: every error becomes a response in [`crate::response`], and every
//! request ends in exactly one access-log line naming route and upstream.
//!
//! # Why this order
//!
//! - The WebSocket check ([`crate::upgrade`]) comes first: a malformed
//!   handshake is the client's fault whatever the route, and refusing it
//!   costs nothing upstream.
//! - Routing runs on the *normalized* path, and the policy runs after routing,
//!   because a route carries its own policy (its IP lists, its `auth`, its
//!   Origin list). The path that was routed is the path that was policed, and
//!   it is also the path the upstream is sent ([`crate::forward::request`]).
//! - Only then is an upstream connected: nothing reaches a backend before the
//!   request has passed every check.
//! - A WebSocket handshake that an upstream answers without upgrading (2xx,
//!   3xx, 5xx: an nginx without the upgrade headers) is sent again to the
//!   route's next upstream: it is a GET without a body, so repeating it is
//!   safe, and the client gets its 101 from the upstream that can give one.
//!   That walk, and what each answer means for an upstream's health, is
//!   [`upstream::Failover`]'s: this module never writes health.
//! - The access log is written here, once per request, with the token
//!   parameter redacted, so no other module needs to know about logging.

use std::borrow::Cow;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use http::{HeaderValue, Request, Response, Uri, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::body::Body;
use crate::checkpoint;
use crate::config::BackendLoss;
use crate::downstream::{ClientCert, Downstream};
use crate::error_chain::ErrorChain;
use crate::forward::tunnel::{Handoff, Relay};
use crate::forward::{self, Exchange};
use crate::handles::Handles;
use crate::live::Snapshot;
use crate::policy;
use crate::policy::auth::{AuthError, Identity, JwtError, Remote};
use crate::policy::credential;
use crate::policy::rate::{Gate, TunnelSlot};
use crate::response::{self, ProxyError};
use crate::router::{Route, normalize_path};
use crate::telemetry::{self, access::Access};
use crate::upgrade::{self, Kind};
use crate::upstream::{self, Failover};

/// What every request shares, handed down from `app`: the shared handles
/// and the relay that joins tunnels.
#[derive(Debug)]
pub(crate) struct Context {
    handles: Arc<Handles>,
    relay: Arc<Relay>,
}

impl Context {
    /// Bundle the shared handles with the tunnels' relay.
    pub(crate) fn new(handles: Arc<Handles>, relay: Arc<Relay>) -> Self {
        Context { handles, relay }
    }

    /// The snapshot, counters, gate and shutdown handles (the accept stage uses them too).
    pub(crate) fn handles(&self) -> &Handles {
        &self.handles
    }

    /// How tunnels are joined: the connection starts its hand-off with it.
    pub(crate) fn relay(&self) -> &Arc<Relay> {
        &self.relay
    }

    /// What forwarding may use: shutdown and the counters; no snapshot.
    fn forwarding(&self) -> forward::Shared<'_> {
        forward::Shared {
            shutdown: self.handles.shutdown(),
            counters: self.handles.stats(),
        }
    }
}

/// What the access log says about one request, filled in as it goes: the
/// route and upstream themselves (shared), so naming them costs no copy.
#[derive(Debug, Default)]
struct Trace {
    /// The route once routing chose one (`-` in the log before that: a
    /// malformed handshake, no route).
    route: Option<Arc<Route>>,
    /// The upstream last connected to; after a retried handshake, the one
    /// that answered.
    upstream: Option<Arc<upstream::Upstream>>,
    /// The verified token's `sub` claim (`user=`), once authenticated.
    user: Option<String>,
}

/// Serve one downstream request.
///
/// `downstream` is the connection's peer and whether it came over TLS,
/// fixed at accept. The `Err` type is `Infallible`: hyper would close the
/// connection on an error, and every failure here has an answer instead.
/// The log's `path` is the target as sent (token redacted), not the
/// normalized path the route was chosen on. A WebSocket handshake answered
/// with 101 leaves its tunnel in the connection's `handoff`.
pub(crate) async fn handle(
    req: Request<Incoming>,
    downstream: Downstream,
    ctx: Arc<Context>,
    handoff: &Handoff,
) -> Result<Response<Body>, Infallible> {
    let started = Instant::now();
    let method = req.method().clone();
    // The target shares the request head's bytes: keeping it for the log copies nothing.
    let uri = req.uri().clone();
    // Path and query, the token parameter redacted: a token never reaches a log line.
    // `--hsts`: only on the TLS listener (a header on plain HTTP means nothing).
    let (path, downstream, hsts) = {
        let snapshot = ctx.handles.live().load();
        let policy = &snapshot.config().policy;
        let hsts = downstream
            .tls
            .then(|| snapshot.config().hsts.clone())
            .flatten();
        (
            policy::target::loggable_target(&uri, &policy.sources.query),
            downstream.for_request(req.headers(), &policy.balancers),
            hsts,
        )
    };
    let upgrade = req.version() >= http::Version::HTTP_11
        && crate::headers::has_token(req.headers(), header::UPGRADE, "websocket");
    let mut trace = Trace::default();
    let mut resp = match proxy(req, downstream, &ctx, &mut trace, &uri, &path, handoff).await {
        Ok(resp) => resp,
        Err(e @ ProxyError::Denied(_)) => {
            if let ProxyError::Denied(policy::Denied::Auth(a)) = &e {
                let route = trace.route.as_ref().map_or("-", |r| r.label.as_str());
                ctx.handles.stats().auth_failure(route, a.reason());
            }
            tracing::info!(peer = %downstream.peer, path = %path, reason = %ErrorChain(&e), "request refused by policy");
            response::error_response(&e)
        }
        Err(e) => {
            tracing::debug!(error = %ErrorChain(&e), "request refused");
            response::error_response(&e)
        }
    };
    if let Some(value) = hsts {
        add_hsts(&mut resp, value);
    }
    ctx.handles.stats().record(resp.status(), upgrade);
    telemetry::access::log(&Access {
        peer: downstream.peer,
        via: downstream.via,
        method: method.as_str(),
        path: &path,
        status: resp.status().as_u16(),
        route: trace.route.as_ref().map_or("-", |r| r.label.as_str()),
        upstream: trace.upstream.as_ref().map_or("-", |u| u.name().0.as_str()),
        user: trace.user.as_deref().unwrap_or("-"),
        websocket: upgrade,
        ms: started.elapsed().as_millis() as u64,
    });
    Ok(resp)
}

/// `Strict-Transport-Security` on an HTTP answer of the TLS listener, unless
/// the upstream set its own; never on a 101 (the tunnel is not HTTP).
fn add_hsts(resp: &mut Response<Body>, value: HeaderValue) {
    if resp.status() != http::StatusCode::SWITCHING_PROTOCOLS {
        resp.headers_mut()
            .entry(header::STRICT_TRANSPORT_SECURITY)
            .or_insert(value);
    }
}

/// What [`check_request`] found out about a request that may go on.
struct Checked<'a> {
    /// A valid WebSocket handshake (else a plain request).
    websocket: bool,
    /// The normalized path: routed, policed, and sent upstream.
    path: Cow<'a, str>,
    /// The route it matched (in the request's snapshot).
    route: &'a Arc<Route>,
    /// The allowed Origin to echo on the answer (CORS routes).
    cors_origin: Option<HeaderValue>,
    /// A CORS preflight, answered here.
    preflight: bool,
    /// The client's tunnel slot (WebSocket handshakes): it moves into the
    /// tunnel on a 101 and is released if the handshake fails.
    slot: Option<TunnelSlot>,
    /// Who the client is (for `X-Forwarded-*` and `/calls`).
    downstream: Downstream,
    /// Who the caller is, once authenticated (claims, where the credential was).
    identity: Identity,
}

/// The request's steps, in order; each one that refuses returns the error
/// that [`response::error_response`] turns into the client's answer.
///
/// The snapshot is loaded once, so one request sees one configuration even
/// if a reload lands halfway. `uri` is the request's target (a shared copy,
/// which the routed path borrows), `target` the loggable one, for `/calls`.
async fn proxy(
    req: Request<Incoming>,
    downstream: Downstream,
    ctx: &Context,
    trace: &mut Trace,
    uri: &Uri,
    target: &str,
    handoff: &Handoff,
) -> Result<Response<Body>, ProxyError> {
    let snapshot = ctx.handles.live().load_full();
    let mut checked = check_with_fresh_keys(&req, downstream, ctx, &snapshot, uri, trace).await?;
    trace.user = checked.identity.user().map(str::to_owned);
    if checked.preflight {
        return Ok(answer_preflight(checked.cors_origin.as_ref(), &req));
    }
    let mut resp =
        exchange_with_failover(req, ctx, &snapshot, &mut checked, trace, target, handoff).await?;
    decorate_cors(&mut resp, checked.cors_origin.as_ref());
    Ok(resp)
}

/// [`check_request`] with the JWKS URL's keys; a token whose `kid` no key
/// has wakes the JWKS fetcher (at most once per `jwt_jwks_min_refresh`)
/// and, when it did, is checked again once the fetch is done (bounded by
/// the connect and response timeouts), so a key rotated in at the provider
/// works from its first token. That second check takes a second rate token:
/// it happens at most once per `jwt_jwks_min_refresh` for the whole process.
async fn check_with_fresh_keys<'a>(
    req: &Request<Incoming>,
    downstream: Downstream,
    ctx: &Context,
    snapshot: &'a Snapshot,
    uri: &'a Uri,
    trace: &mut Trace,
) -> Result<Checked<'a>, ProxyError> {
    let jwks = ctx.handles.jwks();
    let settings = snapshot.config().policy.jwks.as_ref();
    // Only with a JWKS URL: a request on any other configuration reads nothing.
    let view = settings.map(|_| jwks.view());
    let remote = view.as_ref().map_or(Remote::None, |v| v.remote(true));
    let first = check_request(
        req,
        downstream,
        snapshot,
        ctx.handles.gate(),
        uri,
        trace,
        remote,
    );
    let (
        Err(ProxyError::Denied(policy::Denied::Auth(AuthError::Jwt(JwtError::UnknownKey)))),
        Some(settings),
    ) = (&first, settings)
    else {
        return first;
    };
    let Some(mut fetched) = jwks.refresh_for_unknown_kid(settings.min_refresh) else {
        return first;
    };
    let bound = snapshot.timeouts().connect + snapshot.timeouts().response;
    if tokio::time::timeout(bound, fetched.changed())
        .await
        .is_err()
    {
        return first;
    }
    let view = jwks.view();
    check_request(
        req,
        downstream,
        snapshot,
        ctx.handles.gate(),
        uri,
        trace,
        view.remote(true),
    )
}

/// Classify the request (a malformed handshake is refused whatever the
/// route), route it on its normalized path and host, then run the route's
/// policy on it.
fn check_request<'a>(
    req: &Request<Incoming>,
    downstream: Downstream,
    snapshot: &'a Snapshot,
    gate: &Arc<Gate>,
    uri: &'a Uri,
    trace: &mut Trace,
    remote: Remote<'_>,
) -> Result<Checked<'a>, ProxyError> {
    let kind: Kind = upgrade::classify(req)?;
    let path = normalize_path(uri.path());
    let host = request_host(req)?;
    let route = snapshot
        .router()
        .route(host, &path)
        .ok_or_else(|| ProxyError::NoRoute {
            path: path.to_string(),
        })?;
    trace.route = Some(route.clone());
    if downstream.from_headers {
        checkpoint::admit_forwarded(&snapshot.config().policy, downstream.peer.ip())?;
    }
    let websocket = kind == Kind::WebSocket;
    let admission = checkpoint::check(
        req,
        websocket,
        &route.spec.policy,
        &snapshot.config().policy,
        downstream.peer.ip(),
        gate,
        remote,
    )?;
    Ok(Checked {
        websocket,
        path,
        route,
        cors_origin: admission.cors_origin,
        preflight: admission.preflight,
        slot: admission.tunnel,
        downstream,
        identity: admission.identity,
    })
}

/// A CORS preflight the policy answers itself: 204 with the allowed origin's headers.
fn answer_preflight(origin: Option<&HeaderValue>, req: &Request<Incoming>) -> Response<Body> {
    let headers = origin.map_or_else(Vec::new, |o| {
        policy::origin::cors_headers(o, Some(req.headers()))
    });
    response::preflight(headers)
}

/// Send the request to the route's first usable upstream; a WebSocket
/// handshake the upstream did not upgrade goes on to the next one
/// ([`Failover`], which also records what each exchange meant for its
/// upstream's health).
async fn exchange_with_failover(
    req: Request<Incoming>,
    ctx: &Context,
    snapshot: &Snapshot,
    checked: &mut Checked<'_>,
    trace: &mut Trace,
    target: &str,
    handoff: &Handoff,
) -> Result<Response<Body>, ProxyError> {
    let Checked {
        websocket,
        path,
        route,
        slot,
        downstream,
        identity,
        ..
    } = checked;
    let (websocket, downstream) = (*websocket, *downstream);
    let global = &snapshot.config().policy;
    let policy = &route.spec.policy;
    // A credential meant for shunt is not passed on (unless the route says so).
    let strip = matches!(
        policy.auth,
        policy::auth::AuthMode::Token | policy::auth::AuthMode::Jwt
    ) && !policy.forward_credential;
    let strip_param = strip.then_some(global.sources.query.as_str());
    // A browser offering only `bearer, <token>` needs `bearer` selected back
    // (whether that token or another credential was the one accepted).
    let select_marker = global
        .sources
        .subprotocol
        .as_deref()
        .filter(|marker| policy::auth::subprotocol_token(req.headers(), marker).is_some())
        .filter(|marker| credential::other_subprotocols(req.headers(), marker).is_empty());
    // What `/calls` shows of a WebSocket call: the client's Host and the redacted target.
    let host_header = websocket
        .then(|| {
            req.headers()
                .get(header::HOST)?
                .to_str()
                .ok()
                .map(str::to_owned)
        })
        .flatten();
    // A reattachable call's new backend leg goes to the route's upstreams in order.
    let reattach_to: Option<Arc<[forward::reattach::Candidate]>> = (websocket
        && matches!(route.spec.calls.backend_loss, BackendLoss::Reattach(_)))
    .then(|| {
        route
            .via
            .iter()
            .map(|u| forward::reattach::Candidate {
                name: u.name().clone(),
                url: u.spec.url.clone(),
                tls: u.tls.clone(),
                proxy_header: u.spec.send_proxy_protocol.map(|v| {
                    crate::proxy_header::encode(v, Some((downstream.peer, downstream.local)))
                        .into_boxed_slice()
                }),
            })
            .collect()
    });
    let mut failover = Failover::new(&route.via, websocket, snapshot.timeouts())
        .for_client(downstream.peer, downstream.local);
    let (mut parts, body) = req.into_parts();
    if strip {
        credential::strip_credentials(&mut parts.headers, &global.sources);
    }
    credential::forward_claims(
        &mut parts.headers,
        identity.claims.as_ref(),
        &policy.forward_claims,
    );
    if policy.forward_client_cert {
        forward_client_cert(&mut parts);
    }
    let mut body = Some(body.boxed());
    loop {
        let (upstream, conn) = failover
            .connect()
            .await
            .map_err(|source| ProxyError::Select {
                route: route.label.clone(),
                source,
            })?;
        trace.upstream = Some(upstream.clone());
        // The first attempt sends the client's body; a retried handshake has none.
        let body = body
            .take()
            .unwrap_or_else(|| crate::body::full(bytes::Bytes::new()));
        let exchange = Exchange {
            websocket,
            route: &route.label,
            routed_path: path,
            strip_param,
            tunnel: slot,
            upstream: forward::Target {
                name: upstream.name(),
                url: &upstream.spec.url,
                tls: upstream.tls.as_ref(),
                pool: &upstream.pool,
                authority: &upstream.authority,
                route_header: &upstream.route_header,
            },
            downstream,
            timeouts: snapshot.timeouts(),
            call: forward::CallMeta {
                host: host_header.clone(),
                target,
                user: identity.user(),
                generation: snapshot.generation(),
                spec: route.spec.calls,
            },
            reattach_to: reattach_to.as_ref(),
        };
        // Only a WebSocket handshake can be sent again; a plain request takes the head itself.
        let head = if websocket {
            parts.clone()
        } else {
            std::mem::replace(&mut parts, Request::new(()).into_parts().0)
        };
        let req = Request::from_parts(head, body);
        let result = forward::forward(req, conn, exchange, ctx.forwarding(), handoff).await;
        if let Some(result) = failover.settle(&upstream, result, &route.label, path) {
            let mut resp = result.map_err(ProxyError::from)?;
            if let Some(marker) = select_marker {
                select_subprotocol(&mut resp, marker);
            }
            return Ok(resp);
        }
    }
}

/// `x-client-cert-subject` and `x-client-cert-sha256` from the verified TLS
/// client certificate; the client's own copies are removed first.
fn forward_client_cert(parts: &mut http::request::Parts) {
    const SUBJECT: header::HeaderName = header::HeaderName::from_static("x-client-cert-subject");
    const SHA256: header::HeaderName = header::HeaderName::from_static("x-client-cert-sha256");
    parts.headers.remove(SUBJECT);
    parts.headers.remove(SHA256);
    let Some(cert) = parts.extensions.get::<Arc<ClientCert>>() else {
        return;
    };
    for (name, value) in [(SUBJECT, &cert.subject), (SHA256, &cert.sha256)] {
        if let Ok(v) = HeaderValue::from_str(value) {
            parts.headers.insert(name, v);
        }
    }
}

/// A 101 to a client that offered only `bearer, <token>` selects `bearer`
/// when the upstream selected nothing: a browser fails a handshake whose
/// server selects no protocol it offered.
fn select_subprotocol(resp: &mut Response<Body>, marker: &str) {
    if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS
        && !resp.headers().contains_key(header::SEC_WEBSOCKET_PROTOCOL)
        && let Ok(v) = HeaderValue::from_str(marker)
    {
        resp.headers_mut().insert(header::SEC_WEBSOCKET_PROTOCOL, v);
    }
}

/// On a CORS route, the allowed origin's headers go on the upstream's answer
/// (`Vary` is added to, never replaced).
fn decorate_cors(resp: &mut Response<Body>, cors_origin: Option<&HeaderValue>) {
    let Some(origin) = cors_origin else {
        return;
    };
    for (name, value) in policy::origin::cors_headers(origin, None) {
        if name == header::VARY {
            resp.headers_mut().append(name, value);
        } else {
            resp.headers_mut().insert(name, value);
        }
    }
}

/// The host the client asked for: the authority of an absolute-form target,
/// else the one `Host` header (required on HTTP/1.1, RFC 9112 §3.2).
///
/// Two `Host` headers, or one with user info or no host, are 400: the
/// router and the upstream could otherwise read different hosts. `None`
/// (HTTP/1.0 without `Host`) matches host-less routes only.
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
