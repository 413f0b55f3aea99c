//! A call client shaped like the dashboard's audio stream: each connection
//! sends a 640-byte binary frame every 20 ms (16 kHz, 16-bit mono) and
//! matches the backend's echoes to measure round-trip time.
//!
//! ```text
//! cargo run --example echo_backend -- --port 5006 &
//! cargo run -- --listen 127.0.0.1:8080 &
//! cargo run --example audio_client -- --url ws://127.0.0.1:8080/frontend-audio --connections 10 --seconds 10
//! cargo run --example audio_client -- --url wss://calls.example.com:8443/frontend-audio \
//!     --ca certs/ca.crt --origin https://calls.example.com --token "$JWT"
//! ```
//!
//! Each frame starts with its sequence number and send time (two big-endian
//! u64, the time in microseconds since the client started), so an echo can be
//! matched without keeping state per frame. The backend's text hello
//! (`hello from NAME`) names the backend that answered.
//!
//! What it prints: per connection the upstream (`x-shunt-route` of the 101),
//! the backend, counts and how the call ended; then round-trip percentiles
//! and a summary of calls completed, dropped and failed, with the close codes
//! seen. A refused handshake prints the status and the body shunt sent
//! (`503 route /frontend-audio: no healthy upstream ...`).
//!
//! Exit status: 0 when every call completed (streamed to the end and closed
//! with 1000), 1 when a call failed to connect or ended abnormally (an I/O
//! error such as a broken pipe, or a close code other than 1000), 2 on bad
//! arguments.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use fastwebsockets::{Frame, OpCode, Payload, Role, WebSocket, WebSocketError};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::header::{AUTHORIZATION, CONNECTION, HOST, HeaderName, HeaderValue, ORIGIN, UPGRADE};
use hyper::upgrade::Upgraded;
use hyper::{Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;

/// One audio frame: 20 ms of 16 kHz 16-bit mono.
const FRAME_BYTES: usize = 640;
const FRAME_INTERVAL: Duration = Duration::from_millis(20);
/// Bound on TCP connect + TLS + WebSocket handshake (and a refusal's body).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long to wait for the last echoes after sending stops.
const DRAIN_GRACE: Duration = Duration::from_secs(2);
/// How long to wait for the server's answer to our Close.
const CLOSE_WAIT: Duration = Duration::from_secs(2);
/// How much of a refusal's body is shown.
const BODY_LIMIT: usize = 4096;

/// Streams fake call audio over WebSockets (ws:// or wss://) and reports
/// round-trip times and how each call ended.
///
/// Exits 0 when every call completed with close code 1000, 1 when a call
/// was refused or ended abnormally, 2 on bad arguments.
#[derive(Debug, Parser)]
struct Args {
    /// WebSocket URL to stream to: ws://HOST[:PORT]/PATH or wss://HOST[:PORT]/PATH.
    #[arg(long, default_value = "ws://127.0.0.1:8080/frontend-audio")]
    url: String,
    /// Concurrent connections (calls).
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// How long each call streams, in seconds.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// wss://: trust this CA (PEM) instead of the system roots.
    #[arg(long, value_name = "FILE", conflicts_with = "insecure")]
    ca: Option<PathBuf>,
    /// wss://: do not verify the server certificate (testing only).
    #[arg(long)]
    insecure: bool,
    /// Send `Origin: ORIGIN`, as a browser on that site would.
    #[arg(long, value_name = "ORIGIN")]
    origin: Option<String>,
    /// An extra request header, 'Name: value'; repeatable.
    #[arg(long = "header", value_name = "'NAME: VALUE'")]
    headers: Vec<String>,
    /// A token or JWT, sent as `Authorization: Bearer TOKEN` (a browser
    /// cannot set headers: to test the query parameter instead, put
    /// `?token=...` in --url).
    #[arg(long, env = "AUDIO_CLIENT_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

/// Where to connect and what to ask for, from `--url` and the header flags.
#[derive(Debug, Clone)]
struct Target {
    /// `HOST:PORT` to resolve and connect to.
    connect: String,
    /// TLS server name (the URL host without brackets), for `wss://`.
    tls: Option<ServerName<'static>>,
    /// The `Host` header: the URL's authority.
    host_header: String,
    /// Path and query.
    path: String,
    /// Origin, Authorization and `--header` headers.
    headers: Vec<(HeaderName, HeaderValue)>,
}

/// How one call ended.
#[derive(Debug, Default)]
enum Ending {
    /// Streamed to the end and closed with 1000 (or closed by the server with 1000).
    #[default]
    Completed,
    /// Connected, then ended abnormally.
    Dropped(String),
    /// Never connected (refused handshake, TLS or connect error).
    Failed(String),
}

/// What one connection measured.
#[derive(Debug, Default)]
struct Report {
    route: String,
    backend: String,
    sent: u64,
    received: u64,
    rtts_us: Vec<u64>,
    /// The code of the Close frame the server sent, if any.
    close_code: Option<u16>,
    ending: Ending,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let (target, tls) = match setup(&args) {
        Ok(pair) => pair,
        Err(e) => {
            eprintln!("audio_client: {e}");
            return ExitCode::from(2);
        }
    };
    let addr = match tokio::net::lookup_host(&target.connect)
        .await
        .map(|mut a| a.next())
    {
        Ok(Some(addr)) => addr,
        Ok(None) => {
            eprintln!("audio_client: {} resolves to no address", target.connect);
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("audio_client: resolve {}: {e}", target.connect);
            return ExitCode::from(2);
        }
    };
    let base = Instant::now();
    let streaming = Duration::from_secs(args.seconds);
    let tasks: Vec<_> = (0..args.connections.max(1))
        .map(|_| {
            let (target, tls) = (target.clone(), tls.clone());
            tokio::spawn(async move { call(addr, target, tls, base, streaming).await })
        })
        .collect();
    let mut reports = Vec::new();
    for task in tasks {
        reports.push(task.await.unwrap_or_else(|e| Report {
            ending: Ending::Failed(format!("task failed: {e}")),
            ..Report::default()
        }));
    }
    print_summary(&args, &reports);
    if reports
        .iter()
        .all(|r| matches!(r.ending, Ending::Completed))
    {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Parses `--url` and the header flags, and builds the TLS config for `wss://`.
fn setup(args: &Args) -> Result<(Target, Option<TlsConnector>), String> {
    let url = &args.url;
    let uri: Uri = url
        .parse()
        .map_err(|e| format!("--url {url:?}: not a URL: {e}"))?;
    let secure = match uri.scheme_str() {
        Some("ws") => false,
        Some("wss") => true,
        _ => return Err(format!("--url {url:?}: use ws:// or wss://")),
    };
    let authority = uri
        .authority()
        .ok_or_else(|| format!("--url {url:?}: no host"))?;
    let host = authority.host();
    let port = authority
        .port_u16()
        .unwrap_or(if secure { 443 } else { 80 });
    let path = uri
        .path_and_query()
        .map_or("/".to_owned(), |p| p.as_str().to_owned());

    let mut headers = Vec::new();
    if let Some(origin) = &args.origin {
        let value = HeaderValue::from_str(origin)
            .map_err(|_| format!("--origin {origin:?}: not a valid header value"))?;
        headers.push((ORIGIN, value));
    }
    if let Some(token) = &args.token {
        let value = HeaderValue::from_str(&format!("Bearer {}", token.trim()))
            .map_err(|_| "--token: not a valid header value".to_owned())?;
        headers.push((AUTHORIZATION, value));
    }
    for text in &args.headers {
        headers.push(parse_header(text)?);
    }

    let (tls, server_name) = if secure {
        let name = ServerName::try_from(host.trim_start_matches('[').trim_end_matches(']'))
            .map_err(|e| format!("--url {url:?}: {e}"))?
            .to_owned();
        (Some(TlsConnector::from(tls_config(args)?)), Some(name))
    } else {
        if args.ca.is_some() || args.insecure {
            return Err("--ca and --insecure apply to wss:// URLs only".to_owned());
        }
        (None, None)
    };
    let target = Target {
        connect: format!("{host}:{port}"),
        tls: server_name,
        host_header: authority.as_str().to_owned(),
        path,
        headers,
    };
    Ok((target, tls))
}

/// `Name: value` → a header pair.
fn parse_header(text: &str) -> Result<(HeaderName, HeaderValue), String> {
    let (name, value) = text
        .split_once(':')
        .ok_or_else(|| format!("--header {text:?}: expected 'Name: value'"))?;
    let name = HeaderName::from_bytes(name.trim().as_bytes())
        .map_err(|_| format!("--header {text:?}: {:?} is not a header name", name.trim()))?;
    let value = HeaderValue::from_str(value.trim())
        .map_err(|_| format!("--header {text:?}: not a valid header value"))?;
    Ok((name, value))
}

/// The TLS client config: `--ca`, `--insecure`, or the system roots.
fn tls_config(args: &Args) -> Result<Arc<ClientConfig>, String> {
    if !args.insecure {
        return shunt::client_config(args.ca.as_deref()).map_err(|e| match &args.ca {
            Some(_) => format!("--ca: {e}"),
            None => format!("{e} (or give --ca FILE)"),
        });
    }
    shunt::testing::unverified_config().map_err(|e| format!("TLS setup: {e}"))
}

type Ws = WebSocket<TokioIo<Upgraded>>;

/// One call: handshake, then send and receive concurrently, then close.
async fn call(
    addr: SocketAddr,
    target: Target,
    tls: Option<TlsConnector>,
    base: Instant,
    streaming: Duration,
) -> Report {
    let mut report = Report::default();
    let connected = tokio::time::timeout(CONNECT_TIMEOUT, connect(addr, &target, tls)).await;
    let (ws, route) = match connected {
        Ok(Ok(pair)) => pair,
        Ok(Err(e)) => {
            report.ending = Ending::Failed(e);
            return report;
        }
        Err(_) => {
            report.ending =
                Ending::Failed(format!("handshake timed out after {CONNECT_TIMEOUT:?}"));
            return report;
        }
    };
    report.route = route;
    let (mut rx, mut tx) = ws.split(tokio::io::split);
    let sent = Arc::new(AtomicU64::new(0));
    let done_sending = Arc::new(AtomicBool::new(false));
    // Cancelled when the receiving side ends, so the sender stops too.
    let stop = CancellationToken::new();

    let sender = {
        let (sent, done_sending, stop) = (sent.clone(), done_sending.clone(), stop.clone());
        async move {
            let mut ticker = tokio::time::interval(FRAME_INTERVAL);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let stop_at = Instant::now() + streaming;
            let mut seq = 0u64;
            let mut error = None;
            while Instant::now() < stop_at {
                tokio::select! {
                    _ = ticker.tick() => {}
                    () = stop.cancelled() => break,
                }
                let frame = audio_frame(seq, base.elapsed().as_micros() as u64);
                if let Err(e) = tx.write_frame(Frame::binary(Payload::Owned(frame))).await {
                    error = Some(format!("send: {e}"));
                    break;
                }
                seq += 1;
                sent.store(seq, Ordering::Release);
            }
            done_sending.store(true, Ordering::Release);
            (tx, error)
        }
    };

    let receiver = async {
        let mut received = 0u64;
        let mut seen = Vec::<bool>::new();
        let mut rtts = Vec::new();
        let mut backend = String::new();
        // (the server's close code, or the I/O error that ended the stream)
        let mut ended: Option<Result<u16, String>> = None;
        let hard_stop = tokio::time::Instant::now() + streaming + DRAIN_GRACE;
        // Obligations (pong, close echo) are not sent: this client closes itself.
        let mut ignore = |_: Frame<'_>| async { Ok::<(), WebSocketError>(()) };
        loop {
            if done_sending.load(Ordering::Acquire) && received >= sent.load(Ordering::Acquire) {
                break;
            }
            let frame = match tokio::time::timeout_at(hard_stop, rx.read_frame(&mut ignore)).await {
                Err(_) => break,
                Ok(Err(e)) => {
                    ended = Some(Err(format!("receive: {e}")));
                    break;
                }
                Ok(Ok(frame)) => frame,
            };
            match frame.opcode {
                OpCode::Binary if frame.payload.len() >= 16 => {
                    let (seq, sent_us) = frame_stamp(&frame.payload);
                    let idx = seq as usize;
                    if seen.len() <= idx {
                        seen.resize(idx + 1, false);
                    }
                    if !seen[idx] {
                        seen[idx] = true;
                        received += 1;
                        rtts.push((base.elapsed().as_micros() as u64).saturating_sub(sent_us));
                    }
                }
                OpCode::Text if backend.is_empty() => {
                    let text = String::from_utf8_lossy(&frame.payload);
                    if let Some(name) = text.strip_prefix("hello from ") {
                        backend = name.to_owned();
                    }
                }
                OpCode::Close => {
                    ended = Some(Ok(close_code(&frame.payload)));
                    break;
                }
                _ => {}
            }
        }
        stop.cancel();
        (received, rtts, backend, ended)
    };

    let ((mut tx, send_error), (received, rtts, backend, ended)) = tokio::join!(sender, receiver);
    report.sent = sent.load(Ordering::Acquire);
    report.received = received;
    report.rtts_us = rtts;
    report.backend = backend;
    report.ending = match (ended, send_error) {
        // The server closed the call (or the stream broke) before we did.
        (Some(Ok(code)), _) => {
            report.close_code = Some(code);
            if code == 1000 {
                Ending::Completed
            } else {
                Ending::Dropped(format!("closed by the server with {code}"))
            }
        }
        (Some(Err(e)), _) | (None, Some(e)) => Ending::Dropped(e),
        // We streamed to the end: close with 1000 and wait for the answer.
        (None, None) => {
            let closed = tokio::time::timeout(CLOSE_WAIT, async {
                tx.write_frame(Frame::close(1000, b"done"))
                    .await
                    .map_err(|e| format!("send close: {e}"))?;
                await_close(&mut rx).await
            })
            .await
            .unwrap_or_else(|_| Err(format!("no close answer within {CLOSE_WAIT:?}")));
            match closed {
                Ok(Some(code)) => {
                    report.close_code = Some(code);
                    if code == 1000 {
                        Ending::Completed
                    } else {
                        Ending::Dropped(format!("closed by the server with {code}"))
                    }
                }
                // The server closed the connection after our Close: done.
                Ok(None) => Ending::Completed,
                Err(e) => Ending::Dropped(e),
            }
        }
    };
    report
}

/// Reads until the server's Close; `None` when the connection ends first.
async fn await_close<S>(rx: &mut fastwebsockets::WebSocketRead<S>) -> Result<Option<u16>, String>
where
    S: AsyncRead + Unpin,
{
    let mut ignore = |_: Frame<'_>| async { Ok::<(), WebSocketError>(()) };
    loop {
        match rx.read_frame(&mut ignore).await {
            Ok(frame) if frame.opcode == OpCode::Close => {
                return Ok(Some(close_code(&frame.payload)));
            }
            Ok(_) => {}
            Err(WebSocketError::UnexpectedEOF | WebSocketError::ConnectionClosed) => {
                return Ok(None);
            }
            Err(e) => return Err(format!("receive after close: {e}")),
        }
    }
}

/// A Close frame's status code; 1005 ("no status") when it carries none.
fn close_code(payload: &[u8]) -> u16 {
    match payload {
        [hi, lo, ..] => u16::from_be_bytes([*hi, *lo]),
        _ => 1005,
    }
}

/// TCP connect, TLS for `wss://`, then the WebSocket handshake.
async fn connect(
    addr: SocketAddr,
    target: &Target,
    tls: Option<TlsConnector>,
) -> Result<(Ws, String), String> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    match (tls, &target.tls) {
        (Some(connector), Some(name)) => {
            let stream = connector
                .connect(name.clone(), tcp)
                .await
                .map_err(|e| format!("TLS handshake with {}: {e}", target.connect))?;
            handshake(stream, target).await
        }
        _ => handshake(tcp, target).await,
    }
}

/// The WebSocket handshake over `io`; returns the socket and `x-shunt-route`.
/// A refusal comes back as `STATUS BODY`.
async fn handshake<S>(io: S, target: &Target) -> Result<(Ws, String), String>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let mut request = Request::get(target.path.as_str())
        .header(HOST, target.host_header.as_str())
        .header(UPGRADE, "websocket")
        .header(CONNECTION, "upgrade")
        .header(
            "Sec-WebSocket-Key",
            fastwebsockets::handshake::generate_key(),
        )
        .header("Sec-WebSocket-Version", "13")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("request: {e}"))?;
    for (name, value) in &target.headers {
        request.headers_mut().append(name.clone(), value.clone());
    }
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(conn.with_upgrades());
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        let status = response.status().as_u16();
        let body = match Limited::new(response.into_body(), BODY_LIMIT)
            .collect()
            .await
        {
            Ok(body) => String::from_utf8_lossy(&body.to_bytes()).trim().to_owned(),
            Err(e) => format!("(body unreadable: {e})"),
        };
        return Err(format!("handshake refused: {status} {body}"));
    }
    let route = response
        .headers()
        .get("x-shunt-route")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("(no x-shunt-route)")
        .to_owned();
    let upgraded = hyper::upgrade::on(response)
        .await
        .map_err(|e| format!("upgrade: {e}"))?;
    let ws = WebSocket::after_handshake(TokioIo::new(upgraded), Role::Client);
    Ok((ws, route))
}

/// A frame: sequence number, send time, then a deterministic pattern.
fn audio_frame(seq: u64, sent_us: u64) -> Vec<u8> {
    let mut frame = Vec::with_capacity(FRAME_BYTES);
    frame.extend_from_slice(&seq.to_be_bytes());
    frame.extend_from_slice(&sent_us.to_be_bytes());
    frame.extend((16..FRAME_BYTES).map(|i| (i as u64 ^ seq) as u8));
    frame
}

/// The sequence number and send time at the start of an echoed frame.
fn frame_stamp(payload: &[u8]) -> (u64, u64) {
    let word = |at: usize| {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&payload[at..at + 8]);
        u64::from_be_bytes(bytes)
    };
    (word(0), word(8))
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1] as f64 / 1000.0
}

/// The distinct non-empty values, sorted, joined with commas (`-` if none).
fn distinct<'a>(values: impl Iterator<Item = &'a str>) -> String {
    let mut v: Vec<&str> = values.filter(|s| !s.is_empty()).collect();
    v.sort_unstable();
    v.dedup();
    if v.is_empty() {
        "-".to_owned()
    } else {
        v.join(",")
    }
}

fn print_summary(args: &Args, reports: &[Report]) {
    println!(
        "audio_client: {} connection(s) to {} for {}s",
        reports.len(),
        args.url,
        args.seconds
    );
    for (i, r) in reports.iter().enumerate() {
        let route = if r.route.is_empty() { "-" } else { &r.route };
        let backend = if r.backend.is_empty() {
            "-"
        } else {
            &r.backend
        };
        let close = r.close_code.map_or("-".to_owned(), |c| c.to_string());
        let ending = match &r.ending {
            Ending::Completed => "completed".to_owned(),
            Ending::Dropped(e) => format!("dropped: {e}"),
            Ending::Failed(e) => format!("failed: {e}"),
        };
        println!(
            "  conn {i}: route={route} backend={backend} sent={} received={} close={close} {ending}",
            r.sent, r.received
        );
    }
    let mut rtts: Vec<u64> = reports
        .iter()
        .flat_map(|r| r.rtts_us.iter().copied())
        .collect();
    rtts.sort_unstable();
    let sent: u64 = reports.iter().map(|r| r.sent).sum();
    let received: u64 = reports.iter().map(|r| r.received).sum();
    let connected = reports.iter().filter(|r| !r.route.is_empty()).count();
    println!(
        "connected: {connected}/{}  upstream: {}  backend: {}",
        reports.len(),
        distinct(reports.iter().map(|r| r.route.as_str())),
        distinct(reports.iter().map(|r| r.backend.as_str())),
    );
    println!(
        "messages: sent={sent} received={received} lost={}",
        sent.saturating_sub(received)
    );
    println!(
        "round trip ms: p50={:.3} p90={:.3} p99={:.3} max={:.3}",
        percentile(&rtts, 0.50),
        percentile(&rtts, 0.90),
        percentile(&rtts, 0.99),
        rtts.last().map_or(0.0, |&m| m as f64 / 1000.0)
    );
    let count = |f: fn(&Ending) -> bool| reports.iter().filter(|r| f(&r.ending)).count();
    println!(
        "calls: completed={} dropped={} failed={}",
        count(|e| matches!(e, Ending::Completed)),
        count(|e| matches!(e, Ending::Dropped(_))),
        count(|e| matches!(e, Ending::Failed(_))),
    );
    let mut codes = BTreeMap::<u16, usize>::new();
    for code in reports.iter().filter_map(|r| r.close_code) {
        *codes.entry(code).or_default() += 1;
    }
    let codes: Vec<String> = codes.iter().map(|(c, n)| format!("{c}x{n}")).collect();
    println!(
        "close codes: {}",
        if codes.is_empty() {
            "none".to_owned()
        } else {
            codes.join(" ")
        }
    );
}
