//! Check 7: end to end through shunt itself, when it runs: a WebSocket
//! handshake to `--url` (its Host, SNI and path, with `--origin` and the
//! token in the query, as a browser sends them), dialled at shunt's own
//! listener. Reports the status and which upstream served it
//! (`x-shunt-route`, what `usingDirectConnection: true` used to tell in the
//! browser console), then a few 640-byte frames round trip with the median
//! RTT. A 401, 403 or 429 says which policy refused it, from the body.

use std::time::{Duration, Instant};

use fastwebsockets::{Frame, OpCode, Payload, Role, WebSocket};
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

use super::listeners::Running;
use super::websocket::{header_text, nginx_fix};
use super::{Context, Finding, Report, human, millis};
use crate::forward::headers::X_SHUNT_ROUTE;
use crate::upstream::connect::UpstreamStream;
use crate::upstream::health::{accept_key, send, ws_upgrade};

/// Frames sent for the round-trip measure, and their size (an audio chunk).
const ROUND_TRIPS: usize = 5;
const FRAME_BYTES: usize = 640;
/// Most of a refusal body kept for the report.
const BODY_LIMIT: usize = 2048;

/// A handshake through shunt that got its 101.
#[derive(Debug, Clone)]
pub struct Served {
    /// The upstream named by `x-shunt-route`.
    pub upstream: String,
}

/// Check 7; returns what served the handshake, if it succeeded.
pub(crate) async fn check(
    ctx: &Context,
    running: Option<Running>,
    report: &mut Report,
) -> Option<Served> {
    const CHECK: &str = "end to end";
    let Some(running) = running else {
        report.push(Finding::warn(
            CHECK,
            format!(
                "not tried: shunt is not running (see `listener`), so {} was not dialled",
                ctx.url
            ),
            format!("start shunt ({}), then run doctor again", ctx.run_hint()),
        ));
        return None;
    };
    let key = fastwebsockets::handshake::generate_key();
    let started = Instant::now();
    let answer = match tokio::time::timeout(ctx.timeout, handshake(ctx, running, &key)).await {
        Ok(Ok(resp)) => resp,
        Ok(Err(e)) => {
            // The error names the request, whose target holds ?token=.
            let e = ctx.redact(&e);
            report.push(Finding::fail(
                CHECK,
                format!("handshake to {} at {}: {e}", ctx.url, running.addr),
                "check shunt's log for this connection (RUST_LOG=shunt=debug)",
            ));
            return None;
        }
        Err(_) => {
            report.push(Finding::fail(
                CHECK,
                format!(
                    "handshake to {} at {}: no answer within {}",
                    ctx.url,
                    running.addr,
                    human(ctx.timeout)
                ),
                "check shunt's log; a TLS port answered with plain ws:// (or the reverse) hangs like this",
            ));
            return None;
        }
    };
    let took = millis(started.elapsed());
    let mut resp = answer;
    let route = header_text(resp.headers(), X_SHUNT_ROUTE);
    let status = resp.status();
    if status != StatusCode::SWITCHING_PROTOCOLS {
        let server = header_text(resp.headers(), header::SERVER);
        let retry = header_text(resp.headers(), header::RETRY_AFTER);
        let body = tokio::time::timeout(
            ctx.timeout,
            Limited::new(resp.into_body(), BODY_LIMIT).collect(),
        )
        .await
        .ok()
        .and_then(Result::ok)
        .map(|b| String::from_utf8_lossy(&b.to_bytes()).trim().to_owned())
        .unwrap_or_default();
        report.push(refused(
            ctx,
            status,
            route.as_deref(),
            server.as_deref(),
            retry.as_deref(),
            &body,
        ));
        return None;
    }
    let Some(upstream) = route else {
        report.push(Finding::fail(
            CHECK,
            format!(
                "{} answered 101 without x-shunt-route: it is not shunt that answered",
                ctx.url
            ),
            "point --listen (and --url) at shunt, not at another proxy",
        ));
        return None;
    };
    let accept_ok = header_text(resp.headers(), header::SEC_WEBSOCKET_ACCEPT)
        .is_some_and(|a| a == accept_key(&key));
    if !accept_ok {
        report.push(Finding::fail(
            CHECK,
            format!("{}: 101 via `{upstream}` without a valid Sec-WebSocket-Accept", ctx.url),
            "something between the client and the backend rewrites the handshake; browsers drop such a connection",
        ));
        return None;
    }
    let rtts = match hyper::upgrade::on(&mut resp).await {
        Ok(upgraded) => round_trips(ctx, upgraded).await,
        Err(e) => Err(e.to_string()),
    };
    let head = format!(
        "{}: 101 in {took}, served by `{upstream}` (x-shunt-route: {upstream})",
        ctx.url
    );
    match rtts {
        Ok(mut rtts) => {
            rtts.sort();
            let median = rtts[rtts.len() / 2];
            report.push(Finding::ok(
                CHECK,
                format!(
                    "{head}; {ROUND_TRIPS} × {FRAME_BYTES}-byte frames round trip, median RTT {}",
                    millis(median)
                ),
            ));
        }
        Err(e) => report.push(Finding::warn(
            CHECK,
            format!("{head}; but {FRAME_BYTES}-byte frames did not come back: {e}"),
            "fine if the backend never echoes (it only streams); otherwise check its logs for the session",
        )),
    }
    Some(Served { upstream })
}

/// Dial shunt's listener and send the handshake as a browser would.
async fn handshake(
    ctx: &Context,
    running: Running,
    key: &str,
) -> Result<hyper::Response<hyper::body::Incoming>, String> {
    let tcp = TcpStream::connect(running.addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let stream = if ctx.config.tls.is_some() {
        let name = ServerName::try_from(ctx.url.host.clone()).map_err(|e| e.to_string())?;
        let tls = tokio_rustls::TlsConnector::from(
            crate::tls::client::unverified_config().map_err(|e| e.to_string())?,
        )
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS handshake: {e}"))?;
        UpstreamStream::Tls(Box::new(tls))
    } else {
        UpstreamStream::Plain(tcp)
    };
    let path = match &ctx.token {
        Some(t) => ctx.url.with_query(&ctx.config.policy.sources.query, t),
        None => ctx.url.path_and_query.clone(),
    };
    let mut request = Request::get(path)
        .header(header::HOST, ctx.url.host_header())
        .header(header::USER_AGENT, "shunt-doctor");
    if let Some(origin) = &ctx.origin {
        request = request.header(header::ORIGIN, origin);
    }
    send(stream, ws_upgrade(request, key), &ctx.tracker, &ctx.stop).await
}

/// Send [`ROUND_TRIPS`] binary frames and time each echo; other frames (a
/// hello, pings) are skipped. Then Close 1000.
async fn round_trips(
    ctx: &Context,
    upgraded: hyper::upgrade::Upgraded,
) -> Result<Vec<Duration>, String> {
    let mut ws = WebSocket::after_handshake(TokioIo::new(upgraded), Role::Client);
    let exchange = async {
        let mut rtts = Vec::with_capacity(ROUND_TRIPS);
        for i in 0..ROUND_TRIPS {
            let payload: Vec<u8> = (0..FRAME_BYTES).map(|j| (i * 31 + j) as u8).collect();
            let sent = Instant::now();
            ws.write_frame(Frame::binary(Payload::Owned(payload.clone())))
                .await
                .map_err(|e| e.to_string())?;
            loop {
                let frame = ws.read_frame().await.map_err(|e| e.to_string())?;
                match frame.opcode {
                    OpCode::Binary if *frame.payload == payload[..] => break,
                    OpCode::Close => return Err("the backend closed the connection".to_owned()),
                    _ => {}
                }
            }
            rtts.push(sent.elapsed());
        }
        Ok(rtts)
    };
    let result = tokio::time::timeout(ctx.timeout, exchange)
        .await
        .unwrap_or_else(|_| Err(format!("no echo within {}", human(ctx.timeout))));
    let _ = tokio::time::timeout(
        Duration::from_millis(500),
        ws.write_frame(Frame::close(1000, b"")),
    )
    .await;
    result
}

/// The upstream and its answer in shunt's 502 for an upgrade that no
/// upstream of the route forwarded (`route /a: nginx answered 200 to a
/// WebSocket upgrade on /a: it does not forward upgrades ...`).
fn not_forwarded(body: &str) -> Option<(String, String)> {
    let (before, after) = body.split_once(" answered ")?;
    let (code, _) = after.split_once(" to a WebSocket upgrade")?;
    if !after.contains("does not forward upgrades") {
        return None;
    }
    let up = before.rsplit([' ', ':']).next()?.to_owned();
    let answered = code
        .parse::<u16>()
        .ok()
        .and_then(|c| StatusCode::from_u16(c).ok())
        .map_or_else(|| code.to_owned(), |s| s.to_string());
    Some((up, answered))
}

/// Which policy refused the handshake, and what to do.
fn refused(
    ctx: &Context,
    status: StatusCode,
    route: Option<&str>,
    server: Option<&str>,
    retry: Option<&str>,
    body: &str,
) -> Finding {
    const CHECK: &str = "end to end";
    let url = &ctx.url;
    let said = if body.is_empty() {
        String::new()
    } else {
        format!(": {body}")
    };
    let origin = ctx.origin.as_deref().unwrap_or("<the page origin>");
    match (status, route) {
        (StatusCode::UNAUTHORIZED, None) => Finding::fail(
            CHECK,
            format!("{url}: 401, refused by shunt's authentication{said}"),
            if ctx.token.is_some() {
                "the token given was refused: check it against --token-file / --jwt-secret-file (issuer, audience, expiry)".to_owned()
            } else {
                format!(
                    "pass a valid token with --token (or SHUNT_DOCTOR_TOKEN); browsers send it as ?{}=",
                    ctx.config.policy.sources.query
                )
            },
        ),
        (StatusCode::FORBIDDEN, None) if body.to_ascii_lowercase().contains("origin") => {
            Finding::fail(
                CHECK,
                format!("{url}: 403, refused by shunt's Origin policy{said}"),
                format!(
                    "add the front end's origin to --allow-origin (or the route's allow_origin): --allow-origin {origin}"
                ),
            )
        }
        (StatusCode::FORBIDDEN, None) => Finding::fail(
            CHECK,
            format!("{url}: 403, refused by shunt's IP policy{said}"),
            "allow the client addresses with --allow-ip (or the route's allow_ip); --deny-ip wins over it",
        ),
        (StatusCode::TOO_MANY_REQUESTS, None) => Finding::fail(
            CHECK,
            format!(
                "{url}: 429, refused by shunt's rate or connection limit{said}{}",
                retry
                    .map(|r| format!(" (Retry-After {r}s)"))
                    .unwrap_or_default()
            ),
            "wait and retry, or raise --rate / --burst / --max-conns-per-ip / --max-conns",
        ),
        (StatusCode::NOT_FOUND, None) => Finding::fail(
            CHECK,
            format!("{url}: 404 from shunt{said}"),
            format!(
                "add a route for {}: --route {}=direct",
                url.path(),
                url.path()
            ),
        ),
        (StatusCode::BAD_GATEWAY, None) if not_forwarded(body).is_some() => {
            let (up, answered) = not_forwarded(body).unwrap_or_default();
            Finding::fail(
                CHECK,
                format!(
                    "{url}: shunt forwarded to `{up}`, where nginx answered {answered} instead of 101: nginx does not forward WebSocket upgrades on {}",
                    url.path()
                ),
                nginx_fix(url.path(), &ctx.backend_url()),
            )
        }
        (
            StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT,
            None,
        ) => Finding::fail(
            CHECK,
            format!("{url}: {status}, shunt could not reach an upstream{said}"),
            "see the `upstream` and `websocket` lines above",
        ),
        (_, Some(up)) if server.is_some_and(|s| s.to_ascii_lowercase().starts_with("nginx")) => {
            Finding::fail(
                CHECK,
                format!(
                    "{url}: shunt forwarded to `{up}`, where nginx answered {status} instead of 101: nginx does not forward WebSocket upgrades on {}",
                    url.path()
                ),
                nginx_fix(url.path(), &ctx.backend_url()),
            )
        }
        (StatusCode::FORBIDDEN, Some(up)) => Finding::fail(
            CHECK,
            format!(
                "{url}: 403 from upstream `{up}`: the backend refuses the handshake (Origin {origin}){said}"
            ),
            format!(
                "allow {origin} in the backend's CORS / WebSocket origin setting, or let shunt check it (--allow-origin) and have the backend trust shunt"
            ),
        ),
        (_, Some(up)) => Finding::fail(
            CHECK,
            format!("{url}: upstream `{up}` answered {status} instead of 101{said}"),
            "see the `websocket` line for that upstream above",
        ),
        (_, None) => Finding::fail(
            CHECK,
            format!("{url}: {status} instead of 101{said}"),
            "the answer names what is wrong; check shunt's log for this request",
        ),
    }
}
