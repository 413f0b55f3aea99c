//! Check 3: each WebSocket route, through each of its upstreams: a real
//! handshake on the route's path (with `--origin`), expecting 101 with a
//! valid `Sec-WebSocket-Accept`, and the diagnosis of any other answer.
//!
//! The classic outage: nginx proxies the path but drops the `Upgrade` and
//! `Connection` headers, so the backend sees a plain GET and nginx answers
//! 400, 404, 426 or a 200 page. A `Server: nginx` non-101 gets the location
//! block to add.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use fastwebsockets::{Frame, OpCode, Role, WebSocket};
use http::{HeaderMap, Request, StatusCode, header};
use hyper_util::rt::TokioIo;

use super::{Context, Finding, Report, human, millis, upstreams};
use crate::config::{RouteSpec, UpstreamName, UpstreamSpec};
use crate::dial::probe::{accept_key, send, ws_upgrade};
use crate::error_chain::chain;

/// What an upstream answered to the handshake.
#[derive(Debug, Clone)]
pub(crate) struct Answer {
    /// The status code (101 when the upgrade worked).
    pub status: StatusCode,
    /// The `Server` header, if any.
    pub server: Option<String>,
    /// On 101: whether `Sec-WebSocket-Accept` matched the key sent.
    pub accept_valid: bool,
    /// From the first byte sent to the response head.
    pub elapsed: Duration,
}

/// Handshake on every WebSocket route through every upstream it names.
///
/// Each upstream is tried directly, not through shunt: shunt falls back
/// from one upstream to the next, so a broken nginx behind a working
/// `direct` would otherwise stay hidden until `direct` goes down. An
/// upstream that did not accept TCP in check 2 is reported as not tried
/// rather than dialled again. Each handshake, connect included, is bounded
/// by `--timeout`; a backend that accepts and never answers ends there.
pub(crate) async fn check(
    ctx: &Context,
    reachable: &BTreeMap<UpstreamName, bool>,
    report: &mut Report,
) {
    for route in ctx.websocket_routes() {
        let path = ctx.handshake_path(route);
        for name in &route.via {
            let check = format!("websocket {} via {name}", route.label());
            let Some(u) = ctx.config.upstream(name) else {
                continue;
            };
            if !reachable.get(name).copied().unwrap_or(false) {
                report.push(Finding::fail(
                    check,
                    format!(
                        "not tried: {} is unreachable (see `upstream {name}`)",
                        u.url
                    ),
                    format!("bring upstream {name} up first"),
                ));
                continue;
            }
            let finding = match tokio::time::timeout(ctx.timeout, handshake(ctx, u, &path)).await {
                Ok(Ok(answer)) => diagnose(ctx, route, u, &path, &answer),
                Ok(Err(e)) => Finding::fail(
                    check,
                    format!("handshake GET {path} on {}: {e}", u.url),
                    "check the upstream's logs: it closed the connection instead of answering",
                ),
                Err(_) => Finding::fail(
                    check,
                    format!(
                        "handshake GET {path} on {}: no answer within {}",
                        u.url,
                        human(ctx.timeout)
                    ),
                    "the upstream accepts connections but does not answer the handshake: check its logs",
                ),
            };
            report.push(finding);
        }
    }
}

/// One handshake to `u` for `path`, as shunt would forward it (the public
/// `Host`, the `Origin`); a 101 is closed politely with 1000.
///
/// The request is built by the health prober's [`ws_upgrade`] and sent by
/// its [`send`], so doctor and shunt's own `ws:` probes speak the same
/// handshake. The time is from the connect to the response head: what a
/// browser waits before `onopen`.
async fn handshake(ctx: &Context, u: &UpstreamSpec, path: &str) -> Result<Answer, String> {
    let started = Instant::now();
    let stream = upstreams::open(ctx, u).await?;
    let key = fastwebsockets::handshake::generate_key();
    let mut request = Request::get(path)
        .header(header::HOST, ctx.url.host_header())
        .header(header::USER_AGENT, "shunt-doctor");
    if let Some(origin) = &ctx.origin {
        request = request.header(header::ORIGIN, origin);
    }
    let mut resp = send(stream, ws_upgrade(request, &key), &ctx.tracker, &ctx.stop)
        .await
        .map_err(|e| chain(&e))?;
    let elapsed = started.elapsed();
    let answer = Answer {
        status: resp.status(),
        server: header_text(resp.headers(), header::SERVER),
        accept_valid: header_text(resp.headers(), header::SEC_WEBSOCKET_ACCEPT)
            .is_some_and(|a| a == accept_key(&key)),
        elapsed,
    };
    if answer.status == StatusCode::SWITCHING_PROTOCOLS
        && let Ok(upgraded) = hyper::upgrade::on(&mut resp).await
    {
        close(upgraded).await;
    }
    Ok(answer)
}

/// Send Close 1000 and wait briefly (500 ms at most) for the reply, so the
/// backend logs a clean close rather than a dropped connection.
pub(crate) async fn close(upgraded: hyper::upgrade::Upgraded) {
    let mut ws = WebSocket::after_handshake(TokioIo::new(upgraded), Role::Client);
    if ws.write_frame(Frame::close(1000, b"")).await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        while let Ok(frame) = ws.read_frame().await {
            if frame.opcode == OpCode::Close {
                break;
            }
        }
    })
    .await;
}

/// A response header as text, `None` when absent or not visible ASCII.
pub(crate) fn header_text(headers: &HeaderMap, name: header::HeaderName) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Turn an answer into a finding with its fix.
///
/// The order matters: a valid 101 first; then a 101 whose
/// `Sec-WebSocket-Accept` does not match (browsers drop it, and only
/// something rewriting the handshake produces it); a 403 while `--origin`
/// is set (the backend's CORS check); then any answer signed `Server:
/// nginx`, whatever its status, since nginx without the Upgrade headers
/// answers 400, 404, 426 or a 200 page and the fix is the same location
/// block; then 404 and 426 from a backend itself; anything else last.
fn diagnose(ctx: &Context, route: &RouteSpec, u: &UpstreamSpec, path: &str, a: &Answer) -> Finding {
    let check = format!("websocket {} via {}", route.label(), u.name);
    let what = format!("handshake GET {path} on {}", u.url);
    let took = millis(a.elapsed);
    let is_nginx = a
        .server
        .as_deref()
        .is_some_and(|s| s.to_ascii_lowercase().starts_with("nginx"));
    match a.status {
        StatusCode::SWITCHING_PROTOCOLS if a.accept_valid => {
            let origin = ctx
                .origin
                .as_deref()
                .map(|o| format!(" with Origin {o}"))
                .unwrap_or_default();
            Finding::ok(check, format!("{what}{origin}: 101 in {took}"))
        }
        StatusCode::SWITCHING_PROTOCOLS => Finding::fail(
            check,
            format!(
                "{what}: 101 in {took} without a valid Sec-WebSocket-Accept: a broken intermediary rewrites the handshake"
            ),
            "find the proxy or middlebox between shunt and the backend that rewrites headers, and let it pass Sec-WebSocket-* unchanged",
        ),
        StatusCode::FORBIDDEN if ctx.origin.is_some() => Finding::fail(
            check,
            format!(
                "{what} with Origin {}: 403 Forbidden in {took}: the backend refuses that Origin",
                ctx.origin.as_deref().unwrap_or_default()
            ),
            format!(
                "allow {} in the backend's CORS / WebSocket origin setting, or let shunt check the Origin (allow_origin, --allow-origin {}) and have the backend trust shunt",
                ctx.origin.as_deref().unwrap_or_default(),
                ctx.origin.as_deref().unwrap_or_default()
            ),
        ),
        status if is_nginx => Finding::fail(
            check,
            format!(
                "{what}: nginx answered {status} in {took} instead of 101: nginx does not forward WebSocket upgrades on {}",
                route.path
            ),
            nginx_fix(&route.path),
        ),
        StatusCode::NOT_FOUND => Finding::fail(
            check,
            format!("{what}: 404 Not Found in {took}: no WebSocket endpoint on that path"),
            format!(
                "use the path the backend serves WebSockets on (--url / the route's path), or add a route for it: --route PATH={}",
                u.name
            ),
        ),
        StatusCode::UPGRADE_REQUIRED => Finding::fail(
            check,
            format!(
                "{what}: 426 Upgrade Required in {took}: WebSocket version mismatch (shunt speaks version 13)"
            ),
            "make the backend accept Sec-WebSocket-Version 13 (RFC 6455)",
        ),
        status => Finding::fail(
            check,
            format!("{what}: {status} in {took} instead of 101"),
            format!(
                "make {} serve a WebSocket endpoint on {path}, and check its logs for why it refused",
                u.url
            ),
        ),
    }
}

/// What [`nginx_fix`] shows in place of the `proxy_pass` address.
pub(crate) const NGINX_FIX_PROXY_PASS: &str = "<the address this location already forwards to>";

/// The nginx lines that forward WebSocket upgrades on `path`.
///
/// nginx speaks HTTP/1.0 to upstreams and drops hop-by-hop headers unless
/// told otherwise, so `Upgrade` and `Connection` never reach the backend:
/// `proxy_http_version 1.1` and the two `proxy_set_header` lines restore
/// them, and the `map` sends `Connection: close` for plain requests. The
/// long `proxy_read_timeout` keeps a quiet call from being cut at nginx's
/// 60 s default.
///
/// The `proxy_pass` line is a marked placeholder, never an address: only
/// nginx's own config knows where that location forwards (another host,
/// another pod, a unix socket), and shunt's `direct` URL is often not it.
pub(crate) fn nginx_fix(path: &str) -> String {
    format!(
        "add to nginx's config, then `nginx -t && nginx -s reload`:\n\
         # in the http {{ }} block\n\
         map $http_upgrade $connection_upgrade {{\n\
         \x20   default upgrade;\n\
         \x20   ''      close;\n\
         }}\n\
         # in the server {{ }} block\n\
         location {path} {{\n\
         \x20   # keep the proxy_pass this location already has: the next line only marks its place\n\
         \x20   proxy_pass {NGINX_FIX_PROXY_PASS};\n\
         \x20   proxy_http_version 1.1;\n\
         \x20   proxy_set_header Upgrade $http_upgrade;\n\
         \x20   proxy_set_header Connection $connection_upgrade;\n\
         \x20   proxy_set_header Host $host;\n\
         \x20   proxy_read_timeout 3600s;\n\
         }}"
    )
}

#[cfg(test)]
mod tests {
    /// Every line of the fix, and a `proxy_pass` that is a placeholder
    /// saying to keep the location's own, never an address.
    #[test]
    fn the_nginx_fix_has_every_line() {
        let fix = super::nginx_fix("/frontend-audio");
        for line in [
            "map $http_upgrade $connection_upgrade {",
            "location /frontend-audio {",
            "# keep the proxy_pass this location already has",
            "proxy_pass <the address this location already forwards to>;",
            "proxy_http_version 1.1;",
            "proxy_set_header Upgrade $http_upgrade;",
            "proxy_set_header Connection $connection_upgrade;",
        ] {
            assert!(fix.contains(line), "{line} missing from\n{fix}");
        }
        assert!(!fix.contains("http://"), "an address is pasted:\n{fix}");
    }
}
