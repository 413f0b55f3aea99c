//! Forwarding one request to the chosen upstream, and its answer back.
//!
//! A plain request goes over a pooled keep-alive connection when the
//! upstream has one idle (it returns to the pool when its response body has
//! been read to the end), otherwise over a fresh HTTP/1.1 connection; bodies
//! are streamed, never buffered. A WebSocket handshake always uses a fresh
//! connection and no hyper client: [`handshake`] writes the rewritten head
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
//!
//! [`forward`] only dispatches: `http` sends a plain request (pooled or
//! fresh connection), `websocket` a handshake and, on a 101, starts the tunnel.

pub(crate) mod error;
pub(crate) mod handshake;
pub(crate) mod reattach;
// `http` shadows the crate of that name in this file only (hence `::http` below).
mod http;
pub(crate) mod request;
pub(crate) mod tunnel;
mod websocket;

use std::sync::Arc;
use std::time::Duration;

use ::http::{HeaderValue, Request, Response, StatusCode};
use rustls::ClientConfig;

use crate::body::Body;
use crate::config::{CallSpec, Timeouts, UpstreamName, UpstreamUrl};
use crate::dial::pool::ConnPool;
use crate::dial::{self, Conn, UpstreamStream};
use crate::downstream::Downstream;
use crate::policy::rate::TunnelSlot;
use crate::shutdown::Shutdown;
use crate::stats::Stats;
use tunnel::Handoff;

pub(crate) use error::{ForwardError, UpgradeNotForwarded};

/// The chosen upstream as this stage sees it (built by the proxy from
/// `upstream::Upstream`): enough to reconnect and to pool, nothing
/// of its health. What an exchange means for the upstream's health (a
/// timeout, an upgrade it did not forward) is recorded by the upstream stage
/// (`Upstream::record`), from the [`ForwardError`] this one returns, so
/// forwarding never reaches back up.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Target<'a> {
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
    pub(crate) fn name(&self) -> &UpstreamName {
        self.name
    }

    /// Dial the upstream anew (a pooled connection turned out closed, or an
    /// upgrade was handed a pooled one). Without a PROXY header: an upstream
    /// with `send_proxy_protocol` has no pool, so it never gets here.
    async fn reconnect(&self, timeout: Duration) -> Result<UpstreamStream, ForwardError> {
        dial::connect(self.url, self.tls, timeout, None)
            .await
            .map_err(|source| ForwardError::Reconnect {
                upstream: self.name.clone(),
                source,
            })
    }
}

/// Who and what one forwarded exchange involves.
#[derive(Debug)]
pub(crate) struct Exchange<'a> {
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
    /// On a `backend_loss = "reattach"` route: its upstreams in order, for a
    /// call's new backend leg.
    pub reattach_to: Option<&'a Arc<[reattach::Candidate]>>,
}

impl Exchange<'_> {
    /// How the request is rewritten for this exchange's upstream.
    fn rewrite(&self) -> request::Rewrite<'_> {
        request::Rewrite {
            routed_path: self.routed_path,
            strip_param: self.strip_param,
            websocket: self.websocket,
            downstream: self.downstream,
            upstream_authority: self.upstream.authority,
        }
    }
}

/// What a WebSocket call is listed with, and how the call layer treats it.
#[derive(Debug, Clone)]
pub(crate) struct CallMeta<'a> {
    /// The request's `Host` header.
    pub host: Option<String>,
    /// Path and query as the access log shows them (token redacted).
    pub target: &'a str,
    /// The verified token's `sub` claim, if any.
    pub user: Option<&'a str>,
    /// Configuration generation.
    pub generation: u64,
    /// The route's call-layer settings.
    pub spec: CallSpec,
}

/// What forwarding shares with every other request: shutdown and the
/// counters. No snapshot: this stage cannot reach the router or the
/// upstreams, only the one [`Target`] it is handed. (The relay mode is the
/// connection's: it starts the tunnel a handshake leaves in its [`Handoff`].)
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shared<'a> {
    /// The root token and the tracker that upstream connection tasks join.
    pub shutdown: &'a Shutdown,
    /// `/status` and `/metrics` counters, and the live calls.
    pub counters: &'a Stats,
}

/// Send `req` over `conn` to the exchange's upstream and return the response for the client.
///
/// A WebSocket handshake the upstream answers with 101 leaves its tunnel in
/// `handoff`, which the downstream connection starts once hyper has written
/// the 101 ([`Handoff::start`]).
pub(crate) async fn forward(
    req: Request<Body>,
    conn: Conn,
    exchange: Exchange<'_>,
    shared: Shared<'_>,
    handoff: &Handoff,
) -> Result<Response<Body>, ForwardError> {
    // Each path boxed: a request's state holds only the path it takes
    // (built in place), not the larger of the two, which every layer
    // above would otherwise copy as it starts.
    if exchange.websocket {
        Box::pin(websocket::forward(
            req,
            conn,
            exchange,
            shared.counters,
            handoff,
        ))
        .await
    } else {
        Box::pin(http::forward(req, conn, &exchange, shared.shutdown)).await
    }
}

/// The upstream ran out of the response timeout. That counts against its
/// health; the caller records it (see [`ForwardError::Timeout`]).
fn response_timeout(upstream: &Target<'_>, after: Duration) -> ForwardError {
    ForwardError::Timeout {
        upstream: upstream.name().clone(),
        after,
    }
}

/// Whether `status` is a real answer to a WebSocket upgrade: 101, or a 4xx
/// refusal (auth, Origin, a wrong path) that the client should see. A 2xx,
/// 3xx or 5xx means the upgrade did not reach a WebSocket server (an nginx
/// without the upgrade headers answers 200 with a page).
pub(crate) fn upgrade_answered(status: StatusCode) -> bool {
    status == StatusCode::SWITCHING_PROTOCOLS || status.is_client_error()
}
