//! Check 7: end to end through shunt itself, when it runs: a WebSocket
//! handshake to `--url` (its Host, SNI and path, with `--origin` and the
//! token in the query, as a browser sends them), dialled at shunt's own
//! listener. Reports the status and which upstream served it
//! (`x-shunt-route`, what `usingDirectConnection: true` used to tell in the
//! browser console), then a few 640-byte frames round trip with the median
//! RTT. A refusal says which policy refused it, from shunt's `x-shunt-error`
//! code ([`crate::response::X_SHUNT_ERROR`]), never from the body's wording.
//!
//! Dialling the listener tests shunt, its routes and its backends, but not
//! the way to it: DNS, the public port, NAT or port forwarding, a cloud
//! firewall, a proxy in front. So when `--url` names another address (its
//! host resolves to a non-loopback address, or its port is not the
//! listener's), the same handshake also goes to that public address, as
//! its own finding, `end to end (public)`. From the server itself a router
//! without hairpin NAT can refuse what works from outside, so an address
//! that does not connect is a `warn`, not a `FAIL`; an answer that is not
//! shunt's 101 is a `FAIL`. Every step is bounded by `--timeout`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use fastwebsockets::{Frame, OpCode, Payload, Role, WebSocket};
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

use super::listeners::Running;
use super::websocket::{close, header_text, nginx_fix};
use super::{Context, Finding, Report, human, millis};
use crate::dial::UpstreamStream;
use crate::dial::probe::{accept_key, send, ws_upgrade};
use crate::error_chain::chain;
use crate::headers::X_SHUNT_ROUTE;
use crate::response::X_SHUNT_ERROR;

/// Frames sent for the round-trip measure.
const ROUND_TRIPS: usize = 5;
/// The size of each frame: 20 ms of 16 kHz 16-bit mono audio, the chunk the
/// dashboard's audio sends.
const FRAME_BYTES: usize = 640;
/// The check name of the handshake through shunt's listener.
const CHECK: &str = "end to end";
/// The check name of the handshake to `--url`'s own address.
const PUBLIC_CHECK: &str = "end to end (public)";
/// Most of a refusal body kept for the report.
const BODY_LIMIT: usize = 2048;

/// A handshake through shunt that got its 101.
#[derive(Debug, Clone)]
pub(crate) struct Served {
    /// The upstream named by `x-shunt-route`.
    pub upstream: String,
}

/// Check 7; returns what served the handshake, if it succeeded.
///
/// Skipped with a `warn` when check 4 found no running shunt: there is
/// nothing to go through. Otherwise the handshake through the listener,
/// then, when `--url` points elsewhere, the one to its own address. Each is
/// bounded by `--timeout` (the name lookup, the connect with TLS and the
/// answer; the round trips get their own `--timeout`).
pub(crate) async fn check(
    ctx: &Context,
    running: Option<Running>,
    report: &mut Report,
) -> Option<Served> {
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
    let served = through_listener(ctx, running, report).await;
    if let Some(public) = public_target(ctx, running).await {
        public_address(ctx, public, report).await;
    }
    served
}

/// The handshake through shunt's own listener, then the round trips.
///
/// The finding names the listener address dialled next to `--url`, so that
/// an `ok` here is not read as "the public address works".
async fn through_listener(ctx: &Context, running: Running, report: &mut Report) -> Option<Served> {
    let target = format!("{} at shunt's listener {}", ctx.url, running.addr);
    let (mut resp, upstream, took) =
        shunt_101(ctx, CHECK, &target, &[running.addr], report).await?;
    let rtts = match hyper::upgrade::on(&mut resp).await {
        Ok(upgraded) => round_trips(ctx, upgraded).await,
        Err(e) => Err(e.to_string()),
    };
    let head =
        format!("{target}: 101 in {took}, served by `{upstream}` (x-shunt-route: {upstream})");
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

/// Where `--url` leads when that is not simply shunt's listener: its host
/// resolved (bounded by the timeout) and its port. `None` when `--url` was
/// not given (the default is the listener itself), or when every address it
/// resolves to is loopback and its port is the listener's: then the
/// handshake above already went where a browser on this machine would go.
/// A name that does not resolve is returned as an error for the report.
async fn public_target(ctx: &Context, running: Running) -> Option<Result<Vec<SocketAddr>, String>> {
    if !ctx.url_given {
        return None;
    }
    let lookup = tokio::time::timeout(
        ctx.timeout,
        tokio::net::lookup_host((ctx.url.host.as_str(), ctx.url.port)),
    )
    .await;
    let addrs: Vec<SocketAddr> = match lookup {
        Ok(Ok(addrs)) => addrs.collect(),
        Ok(Err(e)) => return Some(Err(format!("{} does not resolve: {e}", ctx.url.host))),
        Err(_) => {
            return Some(Err(format!(
                "{} did not resolve within {}",
                ctx.url.host,
                human(ctx.timeout)
            )));
        }
    };
    if addrs.is_empty() {
        return Some(Err(format!("{} resolves to no address", ctx.url.host)));
    }
    let same = addrs
        .iter()
        .all(|a| a.ip().is_loopback() && a.port() == running.addr.port());
    (!same).then_some(Ok(addrs))
}

/// The same handshake to `--url`'s own address: its finding says whether
/// the way from a browser to shunt works, or where it breaks.
async fn public_address(
    ctx: &Context,
    target: Result<Vec<SocketAddr>, String>,
    report: &mut Report,
) {
    let addrs = match target {
        Ok(addrs) => addrs,
        Err(e) => {
            report.push(Finding::warn(
                PUBLIC_CHECK,
                format!("{}: not dialled: {e}", ctx.url),
                format!(
                    "publish a DNS record (A/AAAA) for {} that points at this server",
                    ctx.url.host
                ),
            ));
            return;
        }
    };
    let list = addrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let target = format!("{} at its public address {list}", ctx.url);
    let Some((resp, upstream, took)) = shunt_101(ctx, PUBLIC_CHECK, &target, &addrs, report).await
    else {
        return;
    };
    if let Ok(upgraded) = hyper::upgrade::on(resp).await {
        close(upgraded).await;
    }
    report.push(Finding::ok(
        PUBLIC_CHECK,
        format!("{target}: 101 in {took}, served by `{upstream}` (x-shunt-route: {upstream})"),
    ));
}

/// What to check when `--url`'s own address does not connect: each part of
/// the way from a browser to shunt's listener.
fn path_fix(ctx: &Context) -> String {
    format!(
        "check, from outside: DNS for {host} points at this server, TCP {port} is allowed in the host's and the cloud's firewall, and NAT / port forwarding sends it to shunt's --listen {listen}; a router without hairpin NAT refuses this from the server itself, so also try the URL from a browser elsewhere",
        host = ctx.url.host,
        port = ctx.url.port,
        listen = ctx.config.listen
    )
}

/// Dial the first of `addrs` that accepts and send the handshake; a 101 from
/// shunt (with `x-shunt-route` and a valid `Sec-WebSocket-Accept`) returns
/// the response, the upstream and the time taken, anything else pushes a
/// finding under `check` and returns `None`. Not connecting at all is a
/// `FAIL` for the listener and a `warn` for a public address.
async fn shunt_101(
    ctx: &Context,
    check: &str,
    target: &str,
    addrs: &[SocketAddr],
    report: &mut Report,
) -> Option<(hyper::Response<hyper::body::Incoming>, String, String)> {
    let public = check == PUBLIC_CHECK;
    let key = fastwebsockets::handshake::generate_key();
    let started = Instant::now();
    // The listener speaks TLS when it has a certificate; the public address
    // when --url says wss:// (a terminator in front of a plain shunt, say).
    let tls = if public {
        ctx.url.secure
    } else {
        ctx.config.tls.is_some() || ctx.config.acme.is_some()
    };
    let answer = match tokio::time::timeout(ctx.timeout, dial_first(ctx, addrs, tls, &key)).await {
        Ok(Ok(resp)) => resp,
        Ok(Err(Dial::Connect(e))) if public => {
            report.push(Finding::warn(
                check,
                format!("handshake to {target}: {e}"),
                path_fix(ctx),
            ));
            return None;
        }
        Ok(Err(Dial::Connect(e) | Dial::Handshake(e))) => {
            // The error names the request, whose target holds ?token=.
            let e = ctx.redact(&e);
            let fix = if public {
                format!(
                    "something accepts TCP there but broke the handshake: check that {} speaks {} like --url says, and whatever proxy or TLS terminator sits in front of shunt",
                    ctx.url.host_header(),
                    if ctx.url.secure {
                        "TLS (wss://)"
                    } else {
                        "plain ws://"
                    }
                )
            } else {
                "check shunt's log for this connection (RUST_LOG=shunt=debug)".to_owned()
            };
            report.push(Finding::fail(
                check,
                format!("handshake to {target}: {e}"),
                fix,
            ));
            return None;
        }
        Err(_) if public => {
            report.push(Finding::warn(
                check,
                format!(
                    "handshake to {target}: no answer within {}: a firewall drops the packets, or the address is not this server's",
                    human(ctx.timeout)
                ),
                path_fix(ctx),
            ));
            return None;
        }
        Err(_) => {
            report.push(Finding::fail(
                check,
                format!(
                    "handshake to {target}: no answer within {}",
                    human(ctx.timeout)
                ),
                "check shunt's log; a TLS port answered with plain ws:// (or the reverse) hangs like this",
            ));
            return None;
        }
    };
    let took = millis(started.elapsed());
    let resp = answer;
    let route = header_text(resp.headers(), X_SHUNT_ROUTE);
    let status = resp.status();
    if status != StatusCode::SWITCHING_PROTOCOLS {
        let server = header_text(resp.headers(), header::SERVER);
        let retry = header_text(resp.headers(), header::RETRY_AFTER);
        let error = header_text(resp.headers(), X_SHUNT_ERROR);
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
            check,
            target,
            Answer {
                status,
                route: route.as_deref(),
                server: server.as_deref(),
                retry: retry.as_deref(),
                error: error.as_deref(),
                body: &body,
            },
        ));
        return None;
    }
    let Some(upstream) = route else {
        report.push(Finding::fail(
            check,
            format!(
                "{target}: 101 in {took} without x-shunt-route: it is not shunt that answered"
            ),
            if public {
                format!(
                    "point DNS and the port forwarding for {}:{} at shunt's --listen {}, not at another proxy (or let that proxy pass x-shunt-route)",
                    ctx.url.host, ctx.url.port, ctx.config.listen
                )
            } else {
                "point --listen (and --url) at shunt, not at another proxy".to_owned()
            },
        ));
        return None;
    };
    let accept_ok = header_text(resp.headers(), header::SEC_WEBSOCKET_ACCEPT)
        .is_some_and(|a| a == accept_key(&key));
    if !accept_ok {
        report.push(Finding::fail(
            check,
            format!("{target}: 101 via `{upstream}` without a valid Sec-WebSocket-Accept"),
            "something between the client and the backend rewrites the handshake; browsers drop such a connection",
        ));
        return None;
    }
    Some((resp, upstream, took))
}

/// Why a handshake got no answer: no address accepted the connection, or
/// one did and then TLS or HTTP broke.
enum Dial {
    /// No TCP connection (refused, unreachable): nothing of shunt was reached.
    Connect(String),
    /// Connected, then TLS or the HTTP exchange failed.
    Handshake(String),
}

/// Try `addrs` in order, as a browser does, and send the handshake on the
/// first that accepts (over TLS when `tls`).
async fn dial_first(
    ctx: &Context,
    addrs: &[SocketAddr],
    tls: bool,
    key: &str,
) -> Result<hyper::Response<hyper::body::Incoming>, Dial> {
    let mut last = String::from("no address to dial");
    for &addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(mut tcp) => {
                if addr == super::dial_addr(ctx.config.listen) {
                    local_header(ctx, &mut tcp).await.map_err(Dial::Handshake)?;
                }
                return handshake(ctx, tcp, tls, key).await.map_err(Dial::Handshake);
            }
            Err(e) => last = format!("connect to {addr}: {e}"),
        }
    }
    Err(Dial::Connect(last))
}

/// Dialing shunt's listener straight from an address in `trusted_proxies`
/// with the PROXY protocol on: say so first as a balancer's own health
/// check does (v2 `LOCAL`, or v1 `PROXY UNKNOWN`), or shunt would close the
/// connection for the missing header.
async fn local_header(ctx: &Context, tcp: &mut TcpStream) -> Result<(), String> {
    use crate::policy::balancer::Arrival;
    use crate::proxy_header::{Version, Versions, encode};
    let Ok(local) = tcp.local_addr() else {
        return Ok(());
    };
    let version = match ctx.config.policy.balancers.arrival(local.ip()) {
        Arrival::Header(Versions::V1) => Version::V1,
        Arrival::Header(Versions::V2 | Versions::Any) => Version::V2,
        Arrival::Plain | Arrival::Untrusted => return Ok(()),
    };
    tokio::io::AsyncWriteExt::write_all(tcp, &encode(version, None))
        .await
        .map_err(|e| format!("sending the PROXY header: {e}"))
}

/// Send the handshake on `tcp` as a browser would: TLS (when `tls`) with
/// `--url`'s host as SNI, `--url`'s Host and path, `--origin`, and the
/// token in the query. The certificate is not verified here: check 6 judges
/// it, and this check is about what answers.
async fn handshake(
    ctx: &Context,
    tcp: TcpStream,
    tls: bool,
    key: &str,
) -> Result<hyper::Response<hyper::body::Incoming>, String> {
    let _ = tcp.set_nodelay(true);
    let stream = if tls {
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
    send(stream, ws_upgrade(request, key), &ctx.tracker, &ctx.stop)
        .await
        .map_err(|e| chain(&e))
}

/// Send [`ROUND_TRIPS`] binary frames and time each echo; other frames (a
/// hello, pings) are skipped. Then Close 1000.
///
/// The median of five is robust to the first frame's warm-up. The whole
/// exchange is bounded by `--timeout`; a backend that never echoes (it only
/// streams) is a `warn`, since the handshake itself worked.
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
/// upstream of the route forwarded, for the report's wording only: the
/// `upgrade_not_forwarded` code has already decided the diagnosis. The body
/// starts `nginx answered 200 to a WebSocket upgrade on /a: ...`
/// ([`crate::forward::ForwardError::UpgradeNotForwarded`]); if it ever reads
/// otherwise, the diagnosis stands and names the upstream as `?`.
fn not_forwarded(body: &str) -> (String, String) {
    let parsed = (|| {
        let (before, after) = body.split_once(" answered ")?;
        let (code, _) = after.split_once(" to a WebSocket upgrade")?;
        let up = before.rsplit([' ', ':']).next()?.to_owned();
        let answered = code
            .parse::<u16>()
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
            .map_or_else(|| code.to_owned(), |s| s.to_string());
        Some((up, answered))
    })();
    parsed.unwrap_or_else(|| ("?".to_owned(), "something other than 101".to_owned()))
}

/// What shunt (or whatever answered) said instead of 101.
struct Answer<'a> {
    /// The status code.
    status: StatusCode,
    /// `x-shunt-route`: the upstream shunt forwarded to, if it did.
    route: Option<&'a str>,
    /// The `Server` header (`nginx/…` names nginx).
    server: Option<&'a str>,
    /// `Retry-After`, on a 429.
    retry: Option<&'a str>,
    /// `x-shunt-error`: the kind of an answer shunt made itself.
    error: Option<&'a str>,
    /// The start of the body: shunt's refusals say why in it.
    body: &'a str,
}

/// Which policy refused the handshake, and what to do.
///
/// With `x-shunt-error` the answer is shunt's own, and the code names the
/// policy or the failure (authentication, Origin, IP, rate or connection
/// limit, no route, no upstream, an upgrade nginx did not forward). With
/// `x-shunt-route`, shunt forwarded and the upstream answered, so the
/// diagnosis is the upstream's (nginx, a backend's Origin check). `target` names the
/// URL and the address dialled, `check` the finding.
fn refused(ctx: &Context, check: &str, target: &str, answer: Answer<'_>) -> Finding {
    let Answer {
        status,
        route,
        server,
        retry,
        error,
        body,
    } = answer;
    let url = target;
    let said = if body.is_empty() {
        String::new()
    } else {
        format!(": {body}")
    };
    let origin = ctx.origin.as_deref().unwrap_or("<the page origin>");
    match (error, route) {
        (Some("unauthorized"), _) => Finding::fail(
            check,
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
        (Some("origin_denied"), _) => Finding::fail(
            check,
            format!("{url}: 403, refused by shunt's Origin policy{said}"),
            format!(
                "add the front end's origin to --allow-origin (or the route's allow_origin): --allow-origin {origin}"
            ),
        ),
        (Some("ip_denied"), _) => Finding::fail(
            check,
            format!("{url}: 403, refused by shunt's IP policy{said}"),
            "allow the client addresses with --allow-ip (or the route's allow_ip); --deny-ip wins over it",
        ),
        (Some("rate_limited" | "tunnel_limit" | "connection_limit"), _) => Finding::fail(
            check,
            format!(
                "{url}: 429, refused by shunt's rate or connection limit{said}{}",
                retry
                    .map(|r| format!(" (Retry-After {r}s)"))
                    .unwrap_or_default()
            ),
            "wait and retry, or raise --rate / --burst / --max-conns-per-ip / --max-conns",
        ),
        (Some("no_route"), _) => Finding::fail(
            check,
            format!("{url}: 404 from shunt{said}"),
            format!(
                "add a route for {}: --route {}=direct",
                ctx.url.path(),
                ctx.url.path()
            ),
        ),
        (Some("upgrade_not_forwarded"), _) => {
            let (up, answered) = not_forwarded(body);
            Finding::fail(
                check,
                format!(
                    "{url}: shunt forwarded to `{up}`, where nginx answered {answered} instead of 101: nginx does not forward WebSocket upgrades on {}",
                    ctx.url.path()
                ),
                nginx_fix(ctx.url.path()),
            )
        }
        (
            Some(
                "no_healthy_upstream"
                | "upstream_connect"
                | "upstream_connect_timeout"
                | "upstream_timeout"
                | "upstream_protocol"
                | "upstream_handshake"
                | "upgrade_failed_upstream",
            ),
            _,
        ) => Finding::fail(
            check,
            format!("{url}: {status}, shunt could not reach an upstream{said}"),
            "see the `upstream` and `websocket` lines above",
        ),
        (None, Some(up)) if server.is_some_and(|s| s.to_ascii_lowercase().starts_with("nginx")) => {
            Finding::fail(
                check,
                format!(
                    "{url}: shunt forwarded to `{up}`, where nginx answered {status} instead of 101: nginx does not forward WebSocket upgrades on {}",
                    ctx.url.path()
                ),
                nginx_fix(ctx.url.path()),
            )
        }
        (None, Some(up)) if status == StatusCode::FORBIDDEN => Finding::fail(
            check,
            format!(
                "{url}: 403 from upstream `{up}`: the backend refuses the handshake (Origin {origin}){said}"
            ),
            format!(
                "allow {origin} in the backend's CORS / WebSocket origin setting, or let shunt check it (--allow-origin) and have the backend trust shunt"
            ),
        ),
        (None, Some(up)) => Finding::fail(
            check,
            format!("{url}: upstream `{up}` answered {status} instead of 101{said}"),
            "see the `websocket` line for that upstream above",
        ),
        (_, None) | (Some(_), Some(_)) => Finding::fail(
            check,
            format!("{url}: {status} instead of 101{said}"),
            "the answer names what is wrong; check shunt's log for this request",
        ),
    }
}
