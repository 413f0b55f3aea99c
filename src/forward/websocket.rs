//! A WebSocket handshake: written to the upstream by hand on a fresh
//! connection ([`handshake`]), and on a 101 the downstream upgrade and the
//! bare upstream stream become a [`tunnel`].
//!
//! A 4xx refusal is relayed to the client as an ordinary response with its
//! body; any other answer that is not a 101 (2xx, 3xx, 5xx) is
//! [`ForwardError::UpgradeNotForwarded`], which the caller retries on the
//! route's next upstream.

use std::time::Duration;

use http::{Request, Response, StatusCode};

use super::tunnel::Handoff;
use super::{Exchange, Target, handshake, response_timeout, tunnel, upgrade_answered};
use crate::body::{self, Body};
use crate::calls::CallInfo;
use crate::config::{BackendLoss, CallSpec, Timeouts};
use crate::dial::Conn;
use crate::forward::{ForwardError, UpgradeNotForwarded};
use crate::headers;
use crate::stats::Stats;

/// Send the handshake `req` over a fresh connection; on a 101, hand both
/// legs to the tunnel and answer the client's upgrade.
pub(super) async fn forward(
    mut req: Request<Body>,
    conn: Conn,
    exchange: Exchange<'_>,
    counters: &Stats,
    handoff: &Handoff,
) -> Result<Response<Body>, ForwardError> {
    let downstream_upgrade = hyper::upgrade::on(&mut req);
    super::request::prepare(&mut req, &exchange.rewrite());
    // Only shunt says that a handshake is a reattach.
    req.headers_mut().remove(super::reattach::X_SHUNT_REATTACH);
    let Exchange {
        route,
        routed_path,
        tunnel: slot,
        upstream,
        downstream,
        timeouts,
        call,
        reattach_to,
        ..
    } = exchange;
    let name = upstream.name();
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
        let reattach = match (call.spec.backend_loss, reattach_to) {
            (BackendLoss::Reattach(spec), Some(to)) => Some((spec, to)),
            _ => None,
        };
        let call_guard = counters.calls.open(CallInfo {
            client: downstream.peer,
            host: call.host,
            path: call.target.to_owned(),
            user: call.user.map(str::to_owned),
            route: route.to_owned(),
            upstream: name.0.clone(),
            generation: call.generation,
            frames: call.spec.frames,
            reattach: reattach.is_some(),
        });
        let reattach = reattach.and_then(|(spec, to)| {
            super::reattach::plan(spec, &req, &head.headers, to, timeouts, &call_guard.call)
        });
        let parts = tunnel::TunnelParts {
            guard: counters.open_tunnel(route, name),
            call: call_guard,
            slot: slot.take(),
            timers: tunnel_timers(timeouts, &call.spec),
            reattach,
        };
        // The connection starts it once hyper has written the 101.
        handoff.park(downstream_upgrade, (answer.stream, answer.bytes), parts);
        body::full(bytes::Bytes::new())
    } else {
        // A refusal's connection is never reused.
        drop(answer.stream);
        body::full(answer.bytes)
    };
    headers::prepare_response(&mut head.headers, switching, upstream.route_header);
    head.version = http::Version::HTTP_11;
    Ok(Response::from_parts(head, body))
}

/// The upstream side of a WebSocket handshake ([`handshake`]), on a fresh
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

/// A tunnel's timers: the timeouts, and the route's call settings.
fn tunnel_timers(timeouts: &Timeouts, spec: &CallSpec) -> tunnel::TunnelTimers {
    tunnel::TunnelTimers {
        ping_interval: spec.ping_interval.filter(|_| spec.frames),
        ping_timeout: spec.ping_timeout,
        stall_after: spec.stall_after,
        ..tunnel::TunnelTimers::relay(timeouts.idle, timeouts.drain)
    }
}
