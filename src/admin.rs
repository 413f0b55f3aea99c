//! The admin listener: `/healthz`, `/readyz`, `/status`, `/metrics`, `/calls`,
//! `POST /reload`, and the dashboard at `/` ([`dashboard`]).
//!
//! Every request first passes the `Host` guard ([`host`]), which answers 403
//! to names that are not an IP literal, `localhost` or in `admin_hosts`; a
//! `POST` that a browser sends from a page of another site (its `Origin` or
//! `Sec-Fetch-Site` says so) gets 403 too.
//!
//! A side module: it reads the live snapshot, health and counters, and asks
//! the reloader for a reload; it never touches a request in flight. It should
//! stay on loopback (a warning is logged when it is bound elsewhere).
//!
//! The endpoints answer different questions. `/healthz` says the process is
//! alive (a liveness probe that must not fail because an upstream is down);
//! `/readyz` says every route has an upstream to go to (and, for a route
//! with `auth = "jwt"` and a JWKS URL, keys to check tokens with), and when
//! not, names the route and why, so an operator (or `shunt healthcheck`) reads the cause
//! instead of guessing (a route that still works but has lost a fallback, an
//! upstream down or one that does not forward WebSocket upgrades, is listed
//! under `degraded` of a 200); `/status` is the whole picture in JSON; `/metrics` the
//! same counters for Prometheus. `POST /reload` is the scripted twin of
//! SIGHUP: 200 with what changed, or 422 with why nothing did.

use std::convert::Infallible;
use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::body::{Body, json, text};
use crate::calls::Sort;
use crate::dial::http1_handshake;
use crate::handles::Handles;
use crate::live::Snapshot;
use crate::reload::Reloader;
use crate::upstream::health::State;

/// The tunnel relay's state for `/status` (mode, pipes in use), asked for
/// on each request. A function rather than the relay itself, so this side
/// module does not reach into the forwarding flow.
pub(crate) type TunnelStatus = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;

pub(crate) mod dashboard;
pub(crate) mod host;

/// Serve the admin API on `listener` until `stop` is cancelled, each
/// connection on `tracker`.
///
/// `stop` is not the root shutdown token: the admin API stays up while the
/// proxy drains (`/readyz` 503, `/status` with `draining: true` and the
/// tunnels left), so an operator can watch the drain; [`crate::app`] cancels
/// it once everything else has ended.
pub(crate) async fn run(
    listener: TcpListener,
    handles: Arc<Handles>,
    reloader: Arc<Reloader>,
    tunnel: TunnelStatus,
    stop: CancellationToken,
    tracker: TaskTracker,
) {
    let stop_connection = stop.clone();
    crate::listener::accept_loop(listener, stop, tracker, move |stream, _peer| {
        let stop = stop_connection.clone();
        let handles = handles.clone();
        let reloader = reloader.clone();
        let tunnel = tunnel.clone();
        async move {
            let service = service_fn(move |req| {
                let handles = handles.clone();
                let reloader = reloader.clone();
                let tunnel = tunnel.clone();
                async move { Ok::<_, Infallible>(route(req, &handles, &reloader, &tunnel).await) }
            });
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10));
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = connection => {}
                () = stop.cancelled() => {}
            }
        }
    })
    .await;
}

/// Dispatch one admin request by method and path.
async fn route(
    req: Request<Incoming>,
    handles: &Handles,
    reloader: &Reloader,
    tunnel: &TunnelStatus,
) -> Response<Body> {
    if !host_allowed(&req, handles) {
        return text(
            StatusCode::FORBIDDEN,
            "forbidden: the admin API answers only Host: an IP address, localhost or a name in admin_hosts\n",
        );
    }
    if !matches!(*req.method(), Method::GET | Method::HEAD) && from_another_site(&req) {
        return text(
            StatusCode::FORBIDDEN,
            "forbidden: a page on another site may not change shunt (Origin or Sec-Fetch-Site names another origin); send POST /reload without them, as curl does\n",
        );
    }
    if matches!(*req.method(), Method::GET | Method::HEAD)
        && let Some(page) = dashboard::asset(req.uri().path())
    {
        return page;
    }
    match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET | &Method::HEAD, "/readyz") => readyz(handles),
        (&Method::GET | &Method::HEAD, "/status") => {
            json(StatusCode::OK, &status(handles, reloader, tunnel))
        }
        (&Method::GET | &Method::HEAD, "/metrics") => metrics(handles, reloader),
        (&Method::GET | &Method::HEAD, "/calls") => calls(handles, req.uri().query()),
        (&Method::GET | &Method::HEAD, path) if path.starts_with("/calls/") => {
            call(handles, &path["/calls/".len()..])
        }
        (&Method::POST, "/reload") => reload(reloader).await,
        (
            _,
            "/healthz" | "/readyz" | "/status" | "/metrics" | "/calls" | "/reload" | "/"
            | "/dashboard.js" | "/dashboard.css",
        ) => text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found; try GET / (the dashboard), /healthz, /readyz, /status, /metrics, /calls or POST /reload\n",
        ),
    }
}

/// The `Host` guard: the header and, in absolute-form, the request target's authority.
fn host_allowed(req: &Request<Incoming>, handles: &Handles) -> bool {
    let snapshot = handles.live().load();
    let admin_hosts = snapshot.config().admin_hosts.as_slice();
    let header = match req.headers().get(http::header::HOST) {
        None => None,
        Some(v) => match v.to_str() {
            Ok(v) => Some(v),
            Err(_) => return false,
        },
    };
    host::allowed(header, admin_hosts)
        && req
            .uri()
            .authority()
            .is_none_or(|a| host::allowed(Some(a.as_str()), admin_hosts))
}

/// A browser request from a page of another origin ([`host::foreign_origin`]).
fn from_another_site(req: &Request<Incoming>) -> bool {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .map(|v| v.to_str().unwrap_or("\u{fffd}"))
    };
    host::foreign_origin(header("origin"), header("sec-fetch-site"), header("host"))
}

/// 200 iff not draining and every route has an upstream that is up (and,
/// for a route that carries WebSocket, one that forwards upgrades).
fn readyz(handles: &Handles) -> Response<Body> {
    if handles.is_draining() {
        return json(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"ready": false, "reason": "shutting down"}),
        );
    }
    let snapshot = handles.live().load();
    let unready: Vec<_> = snapshot
        .router()
        .routes()
        .iter()
        .filter_map(|r| {
            let up = |u: &&Arc<crate::upstream::Upstream>| u.health.state() == State::Up;
            let carries_ws =
                |u: &&Arc<crate::upstream::Upstream>| u.health.websocket_error().is_none();
            let jwks_missing = r.spec.policy.auth == crate::policy::auth::AuthMode::Jwt
                && snapshot.config().policy.jwks.is_some()
                && !handles.jwks().loaded();
            if jwks_missing {
                return Some(json!({
                    "route": r.label,
                    "reason": format!("auth = \"jwt\" cannot verify tokens: {}", handles.jwks().unavailable()),
                }));
            }
            let reason = if !r.via.iter().any(|u| up(&u)) {
                "no healthy upstream"
            } else if carries_websocket(r) && !r.via.iter().any(|u| up(&u) && carries_ws(&u)) {
                "no upstream forwards WebSocket upgrades"
            } else {
                return None;
            };
            Some(json!({
                "route": r.label,
                "reason": format!("{reason}: {}", crate::upstream::down_reasons(&r.via)),
            }))
        })
        .collect();
    if unready.is_empty() {
        let degraded = degraded(&snapshot);
        if degraded.is_empty() {
            json(StatusCode::OK, &json!({"ready": true}))
        } else {
            json(
                StatusCode::OK,
                &json!({"ready": true, "degraded": degraded}),
            )
        }
    } else {
        json(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"ready": false, "routes": unready}),
        )
    }
}

/// Whether route `r` carries WebSocket as far as readiness goes: an upgrade
/// on it failed through one of its upstreams and that mark still stands.
/// A WebSocket mark says nothing about a route that only carries plain
/// HTTP (`/=nginx` beside `/frontend-audio=direct,nginx`), so it is judged
/// by its upstreams' state alone.
fn carries_websocket(r: &crate::router::Route) -> bool {
    r.via.iter().any(|u| u.health.websocket_failed_on(&r.label))
}

/// Routes that still work but have lost a fallback: an upstream of theirs
/// that is down, or, on a route that carries WebSocket, one that does not
/// forward upgrades. Each entry names the route, the upstream and why.
fn degraded(snapshot: &Snapshot) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for r in snapshot.router().routes() {
        let websocket = carries_websocket(r);
        for u in &r.via {
            let v = u.health.view();
            let reason = if v.state == State::Down {
                Some(match &v.last_error {
                    Some(why) => format!("upstream down: {why}"),
                    None => "upstream down: down".to_owned(),
                })
            } else {
                v.websocket_error
                    .filter(|_| websocket)
                    .map(|why| why.to_string())
            };
            if let Some(reason) = reason {
                out.push(json!({"route": r.label, "upstream": u.name().0, "reason": reason}));
            }
        }
    }
    out
}

/// `GET /status`: everything an operator asks first, in one JSON document.
fn status(handles: &Handles, reloader: &Reloader, tunnel: &TunnelStatus) -> serde_json::Value {
    let snapshot = handles.live().load();
    let (requests, upgrades, tunnels) = handles.stats().to_json();
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_secs": handles.started().elapsed().as_secs(),
        "draining": handles.is_draining(),
        "generation": snapshot.generation(),
        "last_reload": reloader.last_json(),
        "restart_required": reloader.restart_required(),
        "upstreams": upstreams_json(&snapshot),
        "certificates": certificates_json(&snapshot, handles),
        "routes": routes_json(&snapshot),
        "tunnels": tunnels,
        "active_tunnels": handles.stats().active_tunnels(),
        "tunnel": tunnel(),
        "calls": handles.stats().calls.status_json(),
        "requests": requests,
        "upgrades": upgrades,
        "jwks": snapshot
            .config()
            .policy
            .jwks
            .is_some()
            .then(|| handles.jwks().to_json()),
        "tls": {
            "groups": handles.stats().tls_handshakes.groups_json(),
            "handshakes": handles.stats().tls_handshakes.kinds_json(),
        },
    })
}

/// Prometheus text: counters, tunnels, and each upstream's health (1 = up).
fn metrics(handles: &Handles, reloader: &Reloader) -> Response<Body> {
    use std::fmt::Write;
    let mut out = String::new();
    handles.stats().to_prometheus(&mut out);
    handles.stats().calls.to_prometheus(&mut out);
    handles.stats().tls_handshakes.to_prometheus(&mut out);
    let snapshot = handles.live().load();
    if snapshot.config().policy.jwks.is_some() {
        handles.jwks().to_prometheus(&mut out);
    }
    let _ = writeln!(
        out,
        "# HELP shunt_upstream_up Whether the upstream is healthy (1), down or not yet probed (0).\n# TYPE shunt_upstream_up gauge"
    );
    for u in snapshot.upstreams().values().filter(|u| u.probed) {
        let up = u8::from(u.health.state() == State::Up);
        let _ = writeln!(
            out,
            "shunt_upstream_up{{upstream=\"{}\"}} {up}",
            crate::prometheus::escape(&u.name().0)
        );
    }
    let _ = writeln!(
        out,
        "# HELP shunt_config_generation Configuration generation (1 at start, +1 per reload).\n# TYPE shunt_config_generation gauge\nshunt_config_generation {}",
        snapshot.generation()
    );
    let _ = writeln!(
        out,
        "# HELP shunt_log_lines_dropped_total Log lines dropped because the queue to stderr was full.\n# TYPE shunt_log_lines_dropped_total counter\nshunt_log_lines_dropped_total {}",
        crate::telemetry::dropped_lines()
    );
    reloader.to_prometheus(&mut out);
    let now = std::time::SystemTime::now();
    let acme = handles.certs().and_then(|store| store.acme());
    if snapshot.certs().is_some() || acme.is_some() {
        crate::tls::resolver::expiry_header(&mut out);
    }
    if let Some(set) = snapshot.certs() {
        set.expiry_to_prometheus(&mut out, now);
    }
    if let Some(cert) = &acme {
        crate::tls::resolver::expiry_line(&mut out, cert, "acme", now);
    }
    if let Some(acme) = handles.acme() {
        acme.to_prometheus(&mut out);
    }
    let mut resp = text(StatusCode::OK, out);
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}

/// Default `limit` of `GET /calls`; a larger one is taken as given (no more than the live calls).
const CALLS_LIMIT: usize = 1000;

/// `GET /calls?limit=N&sort=age|stalls|rtt`: the live calls.
fn calls(handles: &Handles, query: Option<&str>) -> Response<Body> {
    let mut limit = CALLS_LIMIT;
    let mut sort = Sort::Age;
    let usage = "expected /calls?limit=N&sort=age|stalls|rtt (limit a whole number >= 0, default 1000; sort default age)";
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let parsed = match key {
            "limit" => value.parse().ok().map(|n| limit = n),
            "sort" => Sort::parse(value).map(|s| sort = s),
            _ => None,
        };
        if parsed.is_none() {
            return json(
                StatusCode::BAD_REQUEST,
                &json!({"error": format!("bad parameter `{pair}`: {usage}")}),
            );
        }
    }
    json(
        StatusCode::OK,
        &handles.stats().calls.list_json(limit, sort),
    )
}

/// `GET /calls/ID`: one live call.
fn call(handles: &Handles, id: &str) -> Response<Body> {
    let found = id
        .parse::<u64>()
        .ok()
        .and_then(|id| handles.stats().calls.get(id));
    match found {
        Some(c) => json(StatusCode::OK, &c.to_json()),
        None => json(
            StatusCode::NOT_FOUND,
            &json!({"error": format!("no live call with id `{id}`; GET /calls lists them")}),
        ),
    }
}

/// Each upstream: URL, probe, health and the last error.
fn upstreams_json(snapshot: &Snapshot) -> serde_json::Value {
    snapshot
        .upstreams()
        .values()
        .map(|u| {
            let v = u.health.view();
            json!({
                "name": u.name().0,
                "url": u.spec.url.to_string(),
                "check": u.spec.health.check.to_string(),
                "health": v.state.as_str(),
                "last_error": v.last_error.map(|why| why.to_string()),
                "websocket": if v.websocket_error.is_some() { "broken" } else { "ok" },
                "websocket_error": v.websocket_error.map(|why| why.to_string()),
                "last_change": humantime::format_rfc3339_seconds(v.last_change).to_string(),
            })
        })
        .collect()
}

/// Each certificate served: names, where it comes from (`file` or
/// `acme`), expiry, when ACME renews it and its last error, fingerprint.
/// With ACME on and no certificate yet, the ACME entry is there with
/// `not_after: null` and the error that keeps it from being issued.
fn certificates_json(snapshot: &Snapshot, handles: &Handles) -> serde_json::Value {
    let time = |t: std::time::SystemTime| humantime::format_rfc3339_seconds(t).to_string();
    let mut out: Vec<serde_json::Value> = snapshot
        .certs()
        .map(|set| set.certs())
        .unwrap_or_default()
        .iter()
        .map(|c| {
            json!({
                "source": "file",
                "subject": c.info.subject,
                "sans": c.info.sans,
                "names": c.names,
                "not_after": time(c.info.not_after),
                "renewal_at": null,
                "last_error": null,
                "sha256": c.info.fingerprint,
                "cert_file": c.info.cert_file.display().to_string(),
                "key_file": c.info.key_file.display().to_string(),
            })
        })
        .collect();
    if let (Some(acme), Some(spec)) = (handles.acme(), snapshot.config().acme.as_ref()) {
        let cert = handles.certs().and_then(|s| s.acme());
        out.push(json!({
            "source": "acme",
            "subject": cert.as_ref().map(|c| c.info.subject.clone()),
            "sans": cert.as_ref().map_or_else(Vec::new, |c| c.info.sans.clone()),
            "names": spec.domains,
            "challenge": spec.challenge.name(),
            "not_after": cert.as_ref().map(|c| time(c.info.not_after)),
            "renewal_at": acme.renewal_at().map(time),
            "last_error": acme.last_error(),
            "sha256": cert.as_ref().map(|c| c.info.fingerprint.clone()),
            "cert_file": cert.as_ref().map(|c| c.info.cert_file.display().to_string()),
            "key_file": cert.as_ref().map(|c| c.info.key_file.display().to_string()),
        }));
    }
    out.into()
}

/// Each route and the upstream a request would go to now.
fn routes_json(snapshot: &Snapshot) -> serde_json::Value {
    snapshot
        .router()
        .routes()
        .iter()
        .map(|r| {
            let selected = r
                .via
                .iter()
                .find(|u| u.is_usable())
                .map(|u| u.name().0.clone());
            json!({
                "host": r.spec.host,
                "path": r.spec.path,
                "via": r.spec.via.iter().map(|n| n.0.clone()).collect::<Vec<_>>(),
                "selected": selected,
            })
        })
        .collect()
}

/// `POST /reload`: 200 with what changed, or 422 with why nothing did.
async fn reload(reloader: &Reloader) -> Response<Body> {
    match reloader
        .reload(crate::reload::Trigger::Api, "POST /reload")
        .await
    {
        Ok(report) => json(StatusCode::OK, &report),
        Err(e) => json(
            StatusCode::UNPROCESSABLE_ENTITY,
            &json!({"ok": false, "error": crate::error_chain::chain(&e)}),
        ),
    }
}

/// Ask an admin listener for `path` and return the status code (`shunt healthcheck`).
pub async fn get_status(
    addr: std::net::SocketAddr,
    path: &str,
) -> Result<u16, Box<dyn std::error::Error + Send + Sync>> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    // A one-shot command: nothing to track or stop.
    let (tracker, stop) = (TaskTracker::new(), CancellationToken::new());
    let mut sender = http1_handshake::<_, http_body_util::Empty<bytes::Bytes>>(
        TokioIo::new(stream),
        &tracker,
        &stop,
        || {},
    )
    .await?;
    let req = Request::get(path)
        .header(http::header::HOST, addr.to_string())
        .body(http_body_util::Empty::new())?;
    Ok(sender.send_request(req).await?.status().as_u16())
}
