//! Forwarding one request to the chosen upstream, and its answer back.
//!
//! A plain request goes over a pooled keep-alive connection when the
//! upstream has one idle (it returns to the pool when its response body has
//! been read to the end), otherwise over a fresh HTTP/1.1 connection; bodies
//! are streamed, never buffered. A WebSocket handshake always uses a fresh
//! connection and no hyper client: [`handshake`](mod@handshake) writes the rewritten head
//! and reads the answer. If the upstream accepts it (101), the downstream
//! upgrade and the bare upstream stream go to [`tunnel`]; a 4xx refusal is
//! relayed to the client as an ordinary response with its body; any other
//! answer (2xx, 3xx, 5xx) is [`ForwardError::UpgradeNotForwarded`], which
//! the caller retries on the route's next upstream.
//!
//! Timeouts split the blame. The response timeout bounds the upstream's
//! answer (and counts against its health when it runs out); a body the
//! *client* fails to send is the client's fault (400), never the upstream's.
//! A pooled connection the upstream closed while idle is noticed before the
//! request goes out and replaced by a fresh one, so keep-alive reuse never
//! turns into a spurious 502.

pub mod error;
pub mod handshake;
pub mod headers;
pub mod request;
pub mod tunnel;

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use rustls::ClientConfig;

use crate::body::{self, Body};
use crate::calls::CallInfo;
use crate::config::{CallSpec, Timeouts, UpstreamName, UpstreamUrl};
use crate::dial::pool::{ConnPool, PooledBody, Sender};
use crate::dial::{self, Conn, UpstreamStream};
use crate::downstream::Downstream;
use crate::policy::rate::TunnelSlot;
use crate::runtime::Runtime;
use tunnel::Relay;

pub use error::{ForwardError, UpgradeNotForwarded};

/// The chosen upstream as this stage sees it (built by the proxy from
/// `upstream::Upstream`): enough to reconnect and to pool, nothing
/// of its health. What an exchange means for the upstream's health (a
/// timeout, an upgrade it did not forward) is recorded by the caller, from
/// the [`ForwardError`] it gets back, so this stage never reaches back up.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// The upstream's name (`x-shunt-route`, errors, logs).
    pub name: &'a UpstreamName,
    /// Where it listens; a reconnect dials this again.
    pub url: &'a UpstreamUrl,
    /// TLS towards an `https` upstream.
    pub tls: Option<&'a Arc<ClientConfig>>,
    /// Its idle keep-alive connections for plain requests.
    pub pool: &'a Arc<ConnPool>,
    /// `host:port` ([`crate::upstream::Upstream::authority`]).
    pub authority: &'a str,
    /// Its `x-shunt-route` value ([`crate::upstream::Upstream::route_header`]).
    pub route_header: &'a HeaderValue,
}

impl Target<'_> {
    /// The upstream's name.
    pub fn name(&self) -> &UpstreamName {
        self.name
    }

    /// Dial the upstream anew (a pooled connection turned out closed, or an
    /// upgrade was handed a pooled one).
    async fn reconnect(&self, timeout: Duration) -> Result<UpstreamStream, ForwardError> {
        dial::connect(self.url, self.tls, timeout)
            .await
            .map_err(|source| ForwardError::Reconnect {
                upstream: self.name.clone(),
                source,
            })
    }
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

/// Who and what one forwarded exchange involves.
#[derive(Debug)]
pub struct Exchange<'a> {
    /// A WebSocket handshake (else a plain request).
    pub websocket: bool,
    /// Label of the route that matched.
    pub route: &'a str,
    /// The normalized path the request was routed and policed on: what the upstream is sent.
    pub routed_path: &'a str,
    /// The token query parameter, removed before forwarding (routes with authentication).
    pub strip_param: Option<&'a str>,
    /// The policy's per-client tunnel slot (WebSocket handshakes), taken by
    /// the tunnel for its life; left in place when the upgrade is not
    /// answered, for the next upstream tried.
    pub tunnel: &'a mut Option<TunnelSlot>,
    /// The upstream chosen: where it is, and its pool.
    pub upstream: Target<'a>,
    /// Who the client is (for `X-Forwarded-*`).
    pub downstream: Downstream,
    /// The snapshot's timeouts.
    pub timeouts: &'a Timeouts,
    /// What a WebSocket call is listed with in `/calls`, and its route's call settings.
    pub call: CallMeta<'a>,
}

/// What a WebSocket call is listed with, and how the call layer treats it.
#[derive(Debug, Clone)]
pub struct CallMeta<'a> {
    /// The request's `Host` header.
    pub host: Option<String>,
    /// Path and query as the access log shows them (token redacted).
    pub target: &'a str,
    /// Configuration generation.
    pub generation: u64,
    /// The route's call-layer settings.
    pub spec: CallSpec,
}

/// Send `req` over `conn` to the exchange's upstream and return the response for the client.
pub async fn forward(
    mut req: Request<Body>,
    conn: Conn,
    exchange: Exchange<'_>,
    rt: &Runtime,
    relay: &Arc<Relay>,
) -> Result<Response<Body>, ForwardError> {
    let Exchange {
        websocket: upgrade,
        route,
        routed_path,
        strip_param,
        tunnel: slot,
        upstream,
        downstream,
        timeouts,
        call,
    } = exchange;
    let name = upstream.name();
    let downstream_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    request::prepare(
        &mut req,
        &request::Rewrite {
            routed_path,
            strip_param,
            websocket: upgrade,
            downstream,
            upstream_authority: upstream.authority,
        },
    );
    if let Some(downstream_upgrade) = downstream_upgrade {
        let answer = tokio::time::timeout(
            timeouts.response,
            upgrade_upstream(&req, conn, &upstream, timeouts.connect),
        )
        .await
        .unwrap_or_else(|_| Err(response_timeout(&upstream, timeouts.response)))?;
        let status = answer.head.status;
        if !upgrade_answered(status) {
            return Err(UpgradeNotForwarded {
                upstream: name.clone(),
                status,
                path: routed_path.to_owned(),
            }
            .into());
        }
        let switching = status == StatusCode::SWITCHING_PROTOCOLS;
        let mut head = answer.head;
        let body = if switching {
            let parts = tunnel::TunnelParts {
                guard: rt.stats.open_tunnel(route, name),
                call: rt.stats.calls.open(CallInfo {
                    client: downstream.peer,
                    host: call.host,
                    path: call.target.to_owned(),
                    route: route.to_owned(),
                    upstream: name.0.clone(),
                    generation: call.generation,
                    frames: call.spec.frames,
                }),
                slot: slot.take(),
                timers: tunnel_timers(timeouts, &call.spec),
            };
            tunnel::spawn(
                downstream_upgrade,
                (answer.stream, answer.bytes),
                parts,
                relay.clone(),
                rt.shutdown.clone(),
                &rt.tracker,
            );
            body::full(bytes::Bytes::new())
        } else {
            // A refusal's connection is never reused.
            drop(answer.stream);
            body::full(answer.bytes)
        };
        headers::prepare_response(&mut head.headers, switching, upstream.route_header);
        head.version = http::Version::HTTP_11;
        return Ok(Response::from_parts(head, body));
    }

    let sent = tokio::time::timeout(
        timeouts.response,
        send(conn, req, &upstream, rt, timeouts.connect),
    )
    .await;
    let (mut resp, sender) = match sent {
        Ok(r) => r?,
        Err(_) => return Err(response_timeout(&upstream, timeouts.response)),
    };
    headers::prepare_response(resp.headers_mut(), false, upstream.route_header);
    // The client speaks HTTP/1.1 with us whatever the upstream spoke.
    *resp.version_mut() = http::Version::HTTP_11;
    let pool = upstream.pool.clone();
    Ok(resp.map(|body| PooledBody::new(body, sender, pool).boxed()))
}

/// The upstream ran out of the response timeout. That counts against its
/// health; the caller records it (see [`ForwardError::Timeout`]).
fn response_timeout(upstream: &Target<'_>, after: Duration) -> ForwardError {
    ForwardError::Timeout {
        upstream: upstream.name().clone(),
        after,
    }
}

/// The upstream side of a WebSocket handshake ([`handshake`](mod@handshake)), on a fresh
/// connection (an upgrade never takes a pooled one; if handed one, it
/// connects anew).
async fn upgrade_upstream<B>(
    req: &Request<B>,
    conn: Conn,
    upstream: &Target<'_>,
    connect_timeout: Duration,
) -> Result<handshake::Answer, ForwardError> {
    let stream = match conn {
        Conn::Fresh(stream) => stream,
        Conn::Pooled(_) => upstream.reconnect(connect_timeout).await?,
    };
    handshake::exchange(req, stream)
        .await
        .map_err(|source| ForwardError::Handshake {
            upstream: upstream.name().clone(),
            source,
        })
}

/// Whether `status` is a real answer to a WebSocket upgrade: 101, or a 4xx
/// refusal (auth, Origin, a wrong path) that the client should see. A 2xx,
/// 3xx or 5xx means the upgrade did not reach a WebSocket server (an nginx
/// without the upgrade headers answers 200 with a page).
pub fn upgrade_answered(status: StatusCode) -> bool {
    status == StatusCode::SWITCHING_PROTOCOLS || status.is_client_error()
}

/// A tunnel's timers: the timeouts, and the route's call settings.
fn tunnel_timers(timeouts: &Timeouts, spec: &CallSpec) -> tunnel::TunnelTimers {
    tunnel::TunnelTimers {
        ping_interval: spec.ping_interval.filter(|_| spec.frames),
        ping_timeout: spec.ping_timeout,
        stall_after: spec.stall_after,
        ..tunnel::TunnelTimers::relay(timeouts.idle, timeouts.drain)
    }
}

/// Send `req` over `conn`; a pooled connection found closed before the
/// request went out is replaced by a fresh one (the request is intact then).
async fn send(
    conn: Conn,
    req: Request<Body>,
    upstream: &Target<'_>,
    rt: &Runtime,
    connect_timeout: Duration,
) -> Result<(Response<Incoming>, Sender), ForwardError> {
    let mut sender = match conn {
        Conn::Fresh(stream) => handshake(stream, upstream, rt).await?,
        Conn::Pooled(mut sender) => {
            // It is idle, so ready at once unless the upstream has closed it.
            let ready = tokio::time::timeout(connect_timeout, sender.ready()).await;
            if matches!(ready, Ok(Ok(()))) {
                match sender.try_send_request(req).await {
                    Ok(resp) => return Ok((resp, sender)),
                    Err(mut e) => match e.take_message() {
                        Some(req) => return resend(req, upstream, rt, connect_timeout).await,
                        None => return Err(hyper_error(upstream, e.into_error())),
                    },
                }
            }
            return resend(req, upstream, rt, connect_timeout).await;
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
    rt: &Runtime,
    connect_timeout: Duration,
) -> Result<(Response<Incoming>, Sender), ForwardError> {
    tracing::debug!(upstream = %upstream.name(), "pooled connection was closed; reconnecting");
    let stream = upstream.reconnect(connect_timeout).await?;
    let mut sender = handshake(stream, upstream, rt).await?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| hyper_error(upstream, e))?;
    Ok((resp, sender))
}

/// hyper's client handshake on a new connection. Plain TCP stays a bare
/// `TcpStream` inside `TokioIo` so the tunnel can take it back for splice.
async fn handshake(
    stream: UpstreamStream,
    upstream: &Target<'_>,
    rt: &Runtime,
) -> Result<Sender, ForwardError> {
    match stream {
        UpstreamStream::Plain(tcp) => open(TokioIo::new(tcp), upstream, rt).await,
        UpstreamStream::Tls(tls) => open(TokioIo::new(*tls), upstream, rt).await,
    }
}

/// The handshake over `io`; at shutdown its task empties the upstream's pool
/// so idle connections end.
async fn open<IO>(io: IO, upstream: &Target<'_>, rt: &Runtime) -> Result<Sender, ForwardError>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let pool = upstream.pool.clone();
    dial::http1_handshake(io, &rt.tracker, &rt.shutdown, move || pool.close())
        .await
        .map(Sender::new)
        .map_err(|e| hyper_error(upstream, e))
}
