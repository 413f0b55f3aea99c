//! A load client shaped like the dashboard's audio stream: each connection
//! sends a 640-byte binary frame every 20 ms (16 kHz, 16-bit mono) and
//! matches the backend's echoes to measure round-trip time.
//!
//! ```text
//! cargo run --example echo_backend -- --port 5006 &
//! cargo run -- --listen 127.0.0.1:8080 &
//! cargo run --example audio_client -- --url ws://127.0.0.1:8080/frontend-audio --connections 10 --seconds 10
//! ```
//!
//! Each frame starts with its sequence number and send time (two big-endian
//! u64, the time in microseconds since the client started), so an echo can be
//! matched without keeping state per frame. The backend's text hello is
//! skipped. Prints p50/p90/p99/max round trip, sent/received/lost counts and
//! which upstream served (`x-shunt-route` of the 101). Exits non-zero if no
//! connection succeeded.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use fastwebsockets::{Frame, OpCode, Payload, WebSocketError};
use http_body_util::Empty;
use hyper::Request;
use hyper::header::{CONNECTION, HOST, UPGRADE};
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpStream;

/// One audio frame: 20 ms of 16 kHz 16-bit mono.
const FRAME_BYTES: usize = 640;
const FRAME_INTERVAL: Duration = Duration::from_millis(20);
/// Bound on TCP connect + WebSocket handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long to wait for the last echoes after sending stops.
const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// Streams fake call audio over WebSockets and reports round-trip times.
#[derive(Debug, Parser)]
struct Args {
    /// WebSocket URL to stream to (ws:// only).
    #[arg(long, default_value = "ws://127.0.0.1:8080/frontend-audio")]
    url: String,
    /// Concurrent connections.
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// How long each connection streams, in seconds.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
}

/// What one connection measured.
#[derive(Debug, Default)]
struct Report {
    route: String,
    sent: u64,
    received: u64,
    rtts_us: Vec<u64>,
    error: Option<String>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let (authority, path) = match parse_ws_url(&args.url) {
        Ok(parts) => parts,
        Err(e) => {
            eprintln!("audio_client: {e}");
            return ExitCode::from(2);
        }
    };
    let addr = match tokio::net::lookup_host(&authority)
        .await
        .map(|mut a| a.next())
    {
        Ok(Some(addr)) => addr,
        Ok(None) => {
            eprintln!("audio_client: {authority} resolves to no address");
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("audio_client: resolve {authority}: {e}");
            return ExitCode::from(2);
        }
    };
    let base = Instant::now();
    let streaming = Duration::from_secs(args.seconds);
    let tasks: Vec<_> = (0..args.connections.max(1))
        .map(|_| {
            let (authority, path) = (authority.clone(), path.clone());
            tokio::spawn(async move { stream(addr, authority, path, base, streaming).await })
        })
        .collect();
    let mut reports = Vec::new();
    for task in tasks {
        reports.push(task.await.unwrap_or_else(|e| Report {
            error: Some(format!("task failed: {e}")),
            ..Report::default()
        }));
    }
    print_summary(&args, &reports);
    if reports.iter().any(|r| !r.route.is_empty()) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `ws://HOST:PORT/PATH` → (`HOST:PORT`, `/PATH`).
fn parse_ws_url(url: &str) -> Result<(String, String), String> {
    let rest = url
        .strip_prefix("ws://")
        .ok_or_else(|| format!("--url {url:?}: only ws:// URLs are supported"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(format!("--url {url:?}: no host"));
    }
    let authority = if authority.contains(':') {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    Ok((authority, path.to_owned()))
}

/// One connection: handshake, then send and receive concurrently.
async fn stream(
    addr: SocketAddr,
    authority: String,
    path: String,
    base: Instant,
    streaming: Duration,
) -> Report {
    let mut report = Report::default();
    let connected = tokio::time::timeout(CONNECT_TIMEOUT, handshake(addr, &authority, &path)).await;
    let (ws, route) = match connected {
        Ok(Ok(pair)) => pair,
        Ok(Err(e)) => {
            report.error = Some(e);
            return report;
        }
        Err(_) => {
            report.error = Some(format!("handshake timed out after {CONNECT_TIMEOUT:?}"));
            return report;
        }
    };
    report.route = route;
    let (mut rx, mut tx) = ws.split(tokio::io::split);
    let sent = Arc::new(AtomicU64::new(0));
    let done_sending = Arc::new(AtomicBool::new(false));

    let sender = {
        let (sent, done_sending) = (sent.clone(), done_sending.clone());
        async move {
            let mut ticker = tokio::time::interval(FRAME_INTERVAL);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let stop_at = Instant::now() + streaming;
            let mut seq = 0u64;
            let mut error = None;
            while Instant::now() < stop_at {
                ticker.tick().await;
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
        let mut error = None;
        let hard_stop = tokio::time::Instant::now() + streaming + DRAIN_GRACE;
        // The backend does not ping; obligations (pong/close echo) are dropped.
        let mut ignore = |_: Frame<'_>| async { Ok::<(), WebSocketError>(()) };
        loop {
            if done_sending.load(Ordering::Acquire) && received >= sent.load(Ordering::Acquire) {
                break;
            }
            let frame = match tokio::time::timeout_at(hard_stop, rx.read_frame(&mut ignore)).await {
                Err(_) => break,
                Ok(Err(e)) => {
                    error = Some(format!("receive: {e}"));
                    break;
                }
                Ok(Ok(frame)) => frame,
            };
            match frame.opcode {
                OpCode::Binary if frame.payload.len() >= 16 => {
                    let seq = u64::from_be_bytes(frame.payload[0..8].try_into().expect("8 bytes"));
                    let sent_us =
                        u64::from_be_bytes(frame.payload[8..16].try_into().expect("8 bytes"));
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
                OpCode::Close => {
                    error = Some("closed by the server".to_owned());
                    break;
                }
                // The hello (text) and anything else.
                _ => {}
            }
        }
        (received, rtts, error)
    };

    let ((mut tx, send_error), (received, rtts, recv_error)) = tokio::join!(sender, receiver);
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        tx.write_frame(Frame::close(1000, b"done")),
    )
    .await;
    report.sent = sent.load(Ordering::Acquire);
    report.received = received;
    report.rtts_us = rtts;
    report.error = send_error.or(recv_error);
    report
}

/// TCP connect + WebSocket handshake; returns the socket and `x-shunt-route`.
async fn handshake(
    addr: SocketAddr,
    authority: &str,
    path: &str,
) -> Result<
    (
        fastwebsockets::WebSocket<hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>>,
        String,
    ),
    String,
> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let request = Request::get(path)
        .header(HOST, authority)
        .header(UPGRADE, "websocket")
        .header(CONNECTION, "upgrade")
        .header(
            "Sec-WebSocket-Key",
            fastwebsockets::handshake::generate_key(),
        )
        .header("Sec-WebSocket-Version", "13")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("request: {e}"))?;
    let (ws, response) = fastwebsockets::handshake::client(&TokioExecutor::new(), request, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let route = response
        .headers()
        .get("x-shunt-route")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("(no x-shunt-route)")
        .to_owned();
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

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1] as f64 / 1000.0
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
        match &r.error {
            Some(e) => println!(
                "  conn {i}: route={route} sent={} received={} error: {e}",
                r.sent, r.received
            ),
            None => println!(
                "  conn {i}: route={route} sent={} received={}",
                r.sent, r.received
            ),
        }
    }
    let mut rtts: Vec<u64> = reports
        .iter()
        .flat_map(|r| r.rtts_us.iter().copied())
        .collect();
    rtts.sort_unstable();
    let sent: u64 = reports.iter().map(|r| r.sent).sum();
    let received: u64 = reports.iter().map(|r| r.received).sum();
    let connected = reports.iter().filter(|r| !r.route.is_empty()).count();
    let mut routes: Vec<&str> = reports
        .iter()
        .filter(|r| !r.route.is_empty())
        .map(|r| r.route.as_str())
        .collect();
    routes.sort_unstable();
    routes.dedup();
    println!(
        "connected: {connected}/{}  upstream: {}",
        reports.len(),
        if routes.is_empty() {
            "-".to_owned()
        } else {
            routes.join(",")
        }
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
}
