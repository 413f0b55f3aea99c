//! Load generator for shunt's benchmark (`examples/bench.sh`): a fastwebsockets
//! client over `ws://` or `wss://`, in four modes, each ending with one JSON line.
//!
//! - `rtt`: N connections, each sends one S-byte message every I ms and waits
//!   for its echo; round-trip p50/p90/p99/p99.9/max in µs.
//! - `flood`: N connections, W messages in flight each; messages/s and MB/s.
//! - `handshakes`: C concurrent connect + upgrade + one message + close loops;
//!   handshakes/s and p99 of one loop. Over `wss://` every TLS handshake is
//!   full unless `--tls-resume`.
//! - `idle`: open N connections (one message each, so every tunnel is fully
//!   set up), print `{"event":"ready"}`, hold them for `--hold` seconds.
//!
//! Every loop is bounded by `--duration` (or `--hold`) and by counts.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Parser, ValueEnum};
use fastwebsockets::{Frame, OpCode, Payload, WebSocket, handshake};
use http::{Request, header};
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Mode {
    Rtt,
    Flood,
    Handshakes,
    Idle,
}

/// WebSocket load generator.
#[derive(Debug, Parser)]
struct Args {
    /// ws://host:port/path or wss://host:port/path
    #[arg(long)]
    url: String,
    #[arg(long, value_enum)]
    mode: Mode,
    /// Connections (rtt, flood, idle) or concurrent loops (handshakes).
    #[arg(long, default_value_t = 100)]
    conns: usize,
    /// Message size in bytes.
    #[arg(long, default_value_t = 640)]
    size: usize,
    /// rtt: milliseconds between messages on one connection.
    #[arg(long, default_value_t = 20)]
    interval_ms: u64,
    /// flood: messages in flight per connection.
    #[arg(long, default_value_t = 16)]
    inflight: usize,
    /// Seconds of measurement (after connecting; rtt also warms up 1 s).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// idle: seconds to hold the connections after "ready".
    #[arg(long, default_value_t = 10.0)]
    hold: f64,
    /// PEM CA for wss://.
    #[arg(long)]
    ca: Option<String>,
    /// wss://: offer the sessions earlier connections got (rustls' in-memory
    /// client cache), so handshakes resume; without it every one is full.
    #[arg(long)]
    tls_resume: bool,
    /// A label copied into the JSON line.
    #[arg(long, default_value = "")]
    label: String,
}

type Ws = WebSocket<TokioIo<hyper::upgrade::Upgraded>>;

/// Where to connect and how.
struct Target {
    host: String,
    port: u16,
    path: String,
    tls: Option<tokio_rustls::TlsConnector>,
}

impl Target {
    fn parse(args: &Args) -> Target {
        let (tls, rest) = if let Some(r) = args.url.strip_prefix("wss://") {
            (true, r)
        } else if let Some(r) = args.url.strip_prefix("ws://") {
            (false, r)
        } else {
            panic!("--url must start with ws:// or wss://");
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = authority.rsplit_once(':').expect("host:port");
        let tls = tls.then(|| {
            let mut roots = rustls::RootCertStore::empty();
            let ca = args.ca.as_deref().expect("--ca is required for wss://");
            for cert in CertificateDer::pem_file_iter(ca).expect("read --ca") {
                roots.add(cert.expect("CA PEM")).expect("add CA");
            }
            let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
            let mut config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("TLS versions")
                .with_root_certificates(roots)
                .with_no_client_auth();
            if !args.tls_resume {
                config.resumption = rustls::client::Resumption::disabled();
            }
            tokio_rustls::TlsConnector::from(Arc::new(config))
        });
        Target {
            host: host.to_owned(),
            port: port.parse().expect("port"),
            path: path.to_owned(),
            tls,
        }
    }

    async fn connect(&self) -> Result<Ws, String> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        tcp.set_nodelay(true).map_err(|e| e.to_string())?;
        match &self.tls {
            None => self.upgrade(tcp).await,
            Some(connector) => {
                let name = ServerName::try_from(self.host.clone()).map_err(|e| e.to_string())?;
                let tls = connector
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("tls: {e}"))?;
                self.upgrade(tls).await
            }
        }
    }

    async fn upgrade<S>(&self, io: S) -> Result<Ws, String>
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let req = Request::get(self.path.as_str())
            .header(header::HOST, format!("{}:{}", self.host, self.port))
            .header(header::UPGRADE, "websocket")
            .header(header::CONNECTION, "upgrade")
            .header("Sec-WebSocket-Key", handshake::generate_key())
            .header("Sec-WebSocket-Version", "13")
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let (ws, _) = handshake::client(&TokioExecutor::new(), req, io)
            .await
            .map_err(|e| format!("upgrade: {e}"))?;
        Ok(ws)
    }
}

/// Send one binary message and wait for its echo.
async fn round_trip(ws: &mut Ws, payload: &[u8]) -> Result<(), String> {
    ws.write_frame(Frame::binary(Payload::Borrowed(payload)))
        .await
        .map_err(|e| e.to_string())?;
    read_data(ws).await
}

/// Send one binary message.
async fn send(ws: &mut Ws, payload: &[u8]) -> Result<(), fastwebsockets::WebSocketError> {
    ws.write_frame(Frame::binary(Payload::Borrowed(payload)))
        .await
}

/// Read frames until a data frame arrives.
async fn read_data(ws: &mut Ws) -> Result<(), String> {
    loop {
        let frame = ws.read_frame().await.map_err(|e| e.to_string())?;
        match frame.opcode {
            OpCode::Binary | OpCode::Text => return Ok(()),
            OpCode::Close => return Err("closed by peer".into()),
            _ => {}
        }
    }
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Connect `n` connections, at most `parallel` at a time.
async fn connect_many(target: &Arc<Target>, n: usize, parallel: usize) -> (Vec<Ws>, u64) {
    let mut out = Vec::with_capacity(n);
    let mut errors = 0;
    let mut started = 0;
    let mut set = tokio::task::JoinSet::new();
    while out.len() + (errors as usize) < n {
        while started < n && set.len() < parallel {
            let t = target.clone();
            set.spawn(async move { t.connect().await });
            started += 1;
        }
        match set.join_next().await {
            Some(Ok(Ok(ws))) => out.push(ws),
            Some(Ok(Err(e))) => {
                if errors == 0 {
                    eprintln!("connect error: {e}");
                }
                errors += 1;
            }
            Some(Err(e)) => panic!("{e}"),
            None => break,
        }
    }
    (out, errors)
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let target = Arc::new(Target::parse(&args));
    let result = match args.mode {
        Mode::Rtt => rtt(&args, &target).await,
        Mode::Flood => flood(&args, &target).await,
        Mode::Handshakes => handshakes(&args, &target).await,
        Mode::Idle => idle(&args, &target).await,
    };
    let mut result = result;
    result["label"] = args.label.clone().into();
    result["url"] = args.url.clone().into();
    println!("{result}");
}

async fn rtt(args: &Args, target: &Arc<Target>) -> serde_json::Value {
    let (conns, errors) = connect_many(target, args.conns, 64).await;
    let interval = Duration::from_millis(args.interval_ms);
    let warmup = Duration::from_secs(1);
    let measure = Duration::from_secs_f64(args.duration);
    let start = Instant::now() + Duration::from_millis(50);
    let n = conns.len().max(1);
    let failures = Arc::new(AtomicU64::new(0));
    let mut set = tokio::task::JoinSet::new();
    for (i, mut ws) in conns.into_iter().enumerate() {
        let payload = vec![0x5a; args.size];
        let failures = failures.clone();
        // Spread the connections evenly over one interval, like independent calls.
        let first = start + interval * i as u32 / n as u32;
        set.spawn(async move {
            let mut samples = Vec::new();
            let mut ticker = tokio::time::interval_at(first.into(), interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let warm_until = start + warmup;
            let end = warm_until + measure;
            loop {
                let tick = ticker.tick().await;
                if tick.into_std() >= end {
                    break;
                }
                let sent = Instant::now();
                if round_trip(&mut ws, &payload).await.is_err() {
                    failures.fetch_add(1, Ordering::Relaxed);
                    return samples;
                }
                if sent >= warm_until {
                    samples.push(sent.elapsed().as_micros().min(u32::MAX as u128) as u32);
                }
            }
            let _ = ws.write_frame(Frame::close(1000, b"")).await;
            samples
        });
    }
    let mut all = Vec::new();
    while let Some(r) = set.join_next().await {
        all.extend(r.expect("rtt task"));
    }
    all.sort_unstable();
    serde_json::json!({
        "mode": "rtt",
        "conns": args.conns,
        "size": args.size,
        "interval_ms": args.interval_ms,
        "messages": all.len(),
        "connect_errors": errors,
        "failures": failures.load(Ordering::Relaxed),
        "p50_us": percentile(&all, 50.0),
        "p90_us": percentile(&all, 90.0),
        "p99_us": percentile(&all, 99.0),
        "p999_us": percentile(&all, 99.9),
        "max_us": all.last().copied().unwrap_or(0),
    })
}

async fn flood(args: &Args, target: &Arc<Target>) -> serde_json::Value {
    let (conns, errors) = connect_many(target, args.conns, 64).await;
    let measure = Duration::from_secs_f64(args.duration);
    let echoed = Arc::new(AtomicU64::new(0));
    let begin = Instant::now();
    let end = begin + measure;
    let mut set = tokio::task::JoinSet::new();
    for mut ws in conns {
        let payload = vec![0xa5; args.size];
        let echoed = echoed.clone();
        let inflight = args.inflight;
        set.spawn(async move {
            for _ in 0..inflight {
                if send(&mut ws, &payload).await.is_err() {
                    return;
                }
            }
            let mut outstanding = inflight;
            while outstanding > 0 {
                if read_data(&mut ws).await.is_err() {
                    return;
                }
                outstanding -= 1;
                if Instant::now() < end {
                    echoed.fetch_add(1, Ordering::Relaxed);
                    if send(&mut ws, &payload).await.is_err() {
                        return;
                    }
                    outstanding += 1;
                }
            }
            let _ = ws.write_frame(Frame::close(1000, b"")).await;
        });
    }
    while set.join_next().await.is_some() {}
    let secs = measure.as_secs_f64();
    let messages = echoed.load(Ordering::Relaxed);
    serde_json::json!({
        "mode": "flood",
        "conns": args.conns,
        "size": args.size,
        "inflight": args.inflight,
        "connect_errors": errors,
        "messages": messages,
        "seconds": secs,
        "msgs_per_s": messages as f64 / secs,
        // Each echoed message crossed the proxy twice (there and back).
        "mb_per_s": messages as f64 * args.size as f64 * 2.0 / secs / 1e6,
    })
}

async fn handshakes(args: &Args, target: &Arc<Target>) -> serde_json::Value {
    let measure = Duration::from_secs_f64(args.duration);
    let begin = Instant::now();
    let end = begin + measure;
    let failures = Arc::new(AtomicU64::new(0));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..args.conns {
        let target = target.clone();
        let failures = failures.clone();
        let payload = vec![0x42; args.size];
        set.spawn(async move {
            let mut samples = Vec::new();
            while Instant::now() < end {
                let t = Instant::now();
                let done = async {
                    let mut ws = target.connect().await?;
                    round_trip(&mut ws, &payload).await?;
                    ws.write_frame(Frame::close(1000, b""))
                        .await
                        .map_err(|e| e.to_string())?;
                    // Wait for the close echo so the server side really ended.
                    let _ = ws.read_frame().await;
                    Ok::<_, String>(())
                };
                match tokio::time::timeout(Duration::from_secs(5), done).await {
                    Ok(Ok(())) => samples.push(t.elapsed().as_micros() as u32),
                    _ => {
                        failures.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            samples
        });
    }
    let mut all = Vec::new();
    while let Some(r) = set.join_next().await {
        all.extend(r.expect("handshake task"));
    }
    let secs = begin.elapsed().as_secs_f64();
    all.sort_unstable();
    serde_json::json!({
        "mode": "handshakes",
        "concurrency": args.conns,
        "handshakes": all.len(),
        "failures": failures.load(Ordering::Relaxed),
        "per_s": all.len() as f64 / secs,
        "p50_us": percentile(&all, 50.0),
        "p99_us": percentile(&all, 99.0),
    })
}

async fn idle(args: &Args, target: &Arc<Target>) -> serde_json::Value {
    let started = Instant::now();
    let (mut conns, errors) = connect_many(target, args.conns, 200).await;
    let payload = vec![0x11; args.size.min(64)];
    let mut failures = 0u64;
    for ws in &mut conns {
        if round_trip(ws, &payload).await.is_err() {
            failures += 1;
        }
    }
    let open_secs = started.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({"event": "ready", "conns": conns.len(), "connect_errors": errors})
    );
    tokio::time::sleep(Duration::from_secs_f64(args.hold)).await;
    // Every connection must still work after the hold.
    let mut dead = 0u64;
    for ws in &mut conns {
        if tokio::time::timeout(Duration::from_secs(5), round_trip(ws, &payload))
            .await
            .map_or(true, |r| r.is_err())
        {
            dead += 1;
        }
    }
    let held = conns.len();
    drop(conns);
    serde_json::json!({
        "mode": "idle",
        "conns": held,
        "connect_errors": errors,
        "failures": failures,
        "dead_after_hold": dead,
        "open_secs": open_secs,
    })
}
