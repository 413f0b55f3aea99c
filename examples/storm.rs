//! A reconnect storm, for `examples/bench.sh` (mode `storm`).
//!
//! Opens `--calls` WebSocket calls (`ws://` or `wss://`) at audio cadence
//! (`--size` bytes every `--interval-ms` each way: the client sends, the echo
//! backend sends it back), waits until every call carries audio, then
//! SIGKILLs the backend `--kill` names. Every call is cut (shunt says Close
//! 1014; a proxy that cannot say so just closes, seen as 1006) and
//! reconnects at once, with no backoff, as a browser's audio client does.
//! Each call is its own client with its own TLS session store, like 1,000
//! browsers: a call that got a session ticket before the cut may resume.
//!
//! Prints one JSON line: the time from the kill until the first and the
//! last call is cut, until the first call is back, and until 50 %, 99 % and 100 %
//! of the calls carry audio again (a call is back at its first echo on the
//! new connection), until 50 % and 99 % had their new upgrade (101), the close codes seen, reconnect attempts that failed
//! (TCP, TLS, an HTTP status other than 101, or no echo), the storm's full
//! and resumed TLS handshakes, and the CPU time, from the kill until the
//! last call is back, of the `--proxy-pid` processes, of the `--fallback-pid`
//! ones (the fallback nginx behind shunt) and of this client.
//!
//! ```text
//! storm --url wss://127.0.0.1:19132/bench --ca ca.pem --calls 1000 \
//!     --kill BACKEND_PID --proxy-pid SHUNT_PID
//! ```

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use fastwebsockets::{Frame, OpCode, Payload, WebSocket, handshake};
use http::{Request, header};
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

#[derive(Parser)]
struct Args {
    /// `ws://HOST:PORT/PATH` or `wss://...` (then `--ca`).
    #[arg(long)]
    url: String,
    /// PEM CA the TLS server's certificate chains to.
    #[arg(long)]
    ca: Option<String>,
    /// Concurrent calls.
    #[arg(long, default_value_t = 1000)]
    calls: usize,
    /// Bytes per audio frame.
    #[arg(long, default_value_t = 640)]
    size: usize,
    /// Milliseconds between frames.
    #[arg(long, default_value_t = 20)]
    interval_ms: u64,
    /// The backend process to SIGKILL once every call carries audio.
    #[arg(long)]
    kill: u32,
    /// Processes whose CPU time the storm costs (the proxy), comma-separated.
    #[arg(long, value_delimiter = ',')]
    proxy_pid: Vec<u32>,
    /// Processes on the path that are not the proxy measured (the fallback
    /// nginx behind shunt), comma-separated: their CPU is reported apart.
    #[arg(long, value_delimiter = ',')]
    fallback_pid: Vec<u32>,
    /// Clock ticks per second of /proc/PID/stat (`getconf CLK_TCK`).
    #[arg(long, default_value_t = 100)]
    clk_tck: u64,
    /// Give up on the storm (and on the set-up) after this many seconds.
    #[arg(long, default_value_t = 60)]
    timeout_secs: u64,
    /// Copied into the JSON line.
    #[arg(long, default_value = "storm")]
    label: String,
}

type Ws = WebSocket<TokioIo<hyper::upgrade::Upgraded>>;

/// Where the storm target is.
struct Target {
    host: String,
    port: u16,
    path: String,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Target {
    fn parse(args: &Args) -> Target {
        let (tls, rest) = match args.url.split_once("://") {
            Some(("wss", rest)) => (true, rest),
            Some(("ws", rest)) => (false, rest),
            _ => panic!("--url must start with ws:// or wss://"),
        };
        let (authority, path) = rest.find('/').map_or((rest, "/"), |i| rest.split_at(i));
        let (host, port) = authority.rsplit_once(':').expect("--url needs host:port");
        // The same client TLS as shunt's own towards https upstreams.
        let tls = tls.then(|| {
            let ca = args.ca.as_deref().expect("--ca is required for wss://");
            shunt::client_config(Some(std::path::Path::new(ca))).expect("--ca: a CA certificate")
        });
        Target {
            host: host.to_owned(),
            port: port.parse().expect("--url port"),
            path: path.to_owned(),
            tls,
        }
    }

    /// A client of its own: a fresh TLS session store (one browser).
    fn client(&self) -> Option<TlsConnector> {
        self.tls.as_ref().map(|c| {
            let mut own = (**c).clone();
            own.resumption = rustls::client::Resumption::in_memory_sessions(8);
            TlsConnector::from(Arc::new(own))
        })
    }
}

/// What the calls report, shared.
#[derive(Default)]
struct Totals {
    /// Calls that carried audio before the kill.
    ready: AtomicUsize,
    /// Set at the kill: sessions that end after it are the storm's.
    killed_at: Mutex<Option<Instant>>,
    /// Milliseconds from the kill to each call's first echo after its cut.
    back_ms: Mutex<Vec<u64>>,
    /// Milliseconds from the kill to each cut call's first new upgrade (its
    /// 101), to tell a slow handshake from a slow first echo.
    upgraded_ms: Mutex<Vec<u64>>,
    /// Milliseconds from the kill to each call's cut (its Close, or the end of its connection).
    cut_ms: Mutex<Vec<u64>>,
    /// How the cut sessions ended: a Close code, or `1006` (no Close).
    closes: Mutex<BTreeMap<String, u64>>,
    /// Reconnects that failed, by why.
    failed: Mutex<BTreeMap<String, u64>>,
    /// TLS handshakes after the kill: [full, resumed].
    storm_handshakes: [AtomicUsize; 2],
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// How a reconnect failed.
#[derive(Debug)]
enum Failed {
    Tcp,
    Tls,
    Status(u16),
    Upgrade,
}

impl Failed {
    fn key(&self) -> String {
        match self {
            Failed::Tcp => "tcp".into(),
            Failed::Tls => "tls".into(),
            Failed::Status(code) => format!("http {code}"),
            Failed::Upgrade => "upgrade".into(),
        }
    }
}

/// TCP, TLS (counted, full or resumed, when after the kill), the upgrade.
async fn open(target: &Target, tls: Option<&TlsConnector>, t: &Totals) -> Result<Ws, Failed> {
    let step = Duration::from_secs(10);
    let tcp = tokio::time::timeout(
        step,
        TcpStream::connect((target.host.as_str(), target.port)),
    )
    .await
    .map_err(|_| Failed::Tcp)?
    .map_err(|_| Failed::Tcp)?;
    let _ = tcp.set_nodelay(true);
    let req = Request::get(&target.path)
        .header(header::HOST, format!("{}:{}", target.host, target.port))
        .header(header::UPGRADE, "websocket")
        .header(header::CONNECTION, "upgrade")
        .header(header::SEC_WEBSOCKET_KEY, handshake::generate_key())
        .header(header::SEC_WEBSOCKET_VERSION, "13")
        .body(Empty::<bytes::Bytes>::new())
        .map_err(|_| Failed::Upgrade)?;
    let executor = TokioExecutor::new();
    let upgraded = match tls {
        Some(connector) => {
            let name = ServerName::try_from(target.host.clone()).map_err(|_| Failed::Tls)?;
            let stream = tokio::time::timeout(step, connector.connect(name, tcp))
                .await
                .map_err(|_| Failed::Tls)?
                .map_err(|_| Failed::Tls)?;
            if lock(&t.killed_at).is_some() {
                let resumed =
                    stream.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
                t.storm_handshakes[usize::from(resumed)].fetch_add(1, Ordering::Relaxed);
            }
            tokio::time::timeout(step, handshake::client(&executor, req, stream)).await
        }
        None => tokio::time::timeout(step, handshake::client(&executor, req, tcp)).await,
    };
    match upgraded {
        Ok(Ok((mut ws, _))) => {
            // Close frames are read by hand: fastwebsockets refuses 1014.
            ws.set_auto_close(false);
            Ok(ws)
        }
        Ok(Err(fastwebsockets::WebSocketError::InvalidStatusCode(code))) => {
            Err(Failed::Status(code))
        }
        _ => Err(Failed::Upgrade),
    }
}

/// One call: a session at audio cadence; after a cut, reconnect at once.
/// `permit` is held until the call first carries audio (the set-up's pace).
async fn call(
    target: Arc<Target>,
    t: Arc<Totals>,
    period: Duration,
    size: usize,
    stop: Arc<AtomicBool>,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    let mut permit = Some(permit);
    let tls = target.client();
    let frame = vec![0x5a_u8; size];
    let mut cut = false;
    let mut back = false;
    let mut upgraded = false;
    let mut first = true;
    while !stop.load(Ordering::Relaxed) {
        let ws = match open(&target, tls.as_ref(), &t).await {
            Ok(ws) => ws,
            Err(why) => {
                if lock(&t.killed_at).is_some() {
                    *lock(&t.failed).entry(why.key()).or_default() += 1;
                }
                tokio::time::sleep(period).await;
                continue;
            }
        };
        if let (true, false, Some(at)) = (cut, upgraded, *lock(&t.killed_at)) {
            upgraded = true;
            lock(&t.upgraded_ms).push(at.elapsed().as_millis() as u64);
        }
        // Split, so that no read is ever cancelled halfway through a frame:
        // the sender ticks on its own and stops when the receiver ends.
        let (mut rx, mut tx) = ws.split(tokio::io::split);
        let done = tokio_util::sync::CancellationToken::new();
        let sender = async {
            let mut tick = tokio::time::interval(period);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = done.cancelled() => break,
                }
                let write = tx.write_frame(Frame::binary(Payload::Borrowed(&frame)));
                if !matches!(
                    tokio::time::timeout(Duration::from_secs(1), write).await,
                    Ok(Ok(()))
                ) {
                    break;
                }
            }
        };
        let mut echoed = false;
        let receiver = async {
            // Obligations are not sent by the reader: the Close is answered below.
            let mut ignore = |_: Frame<'_>| async { Ok::<(), fastwebsockets::WebSocketError>(()) };
            let ended = loop {
                match rx.read_frame(&mut ignore).await {
                    Ok(f) if f.opcode == OpCode::Binary => {
                        if !echoed {
                            echoed = true;
                            if first {
                                first = false;
                                permit.take();
                                t.ready.fetch_add(1, Ordering::Relaxed);
                            } else if cut {
                                cut = false;
                                // A call counts once: its first return after the kill.
                                if let (Some(at), false) = (*lock(&t.killed_at), back) {
                                    back = true;
                                    lock(&t.back_ms).push(at.elapsed().as_millis() as u64);
                                }
                            }
                        }
                    }
                    Ok(f) if f.opcode == OpCode::Close => {
                        let p = &f.payload;
                        break if p.len() >= 2 {
                            Some(u16::from_be_bytes([p[0], p[1]]))
                        } else {
                            Some(1005)
                        };
                    }
                    Ok(_) => {}
                    Err(_) => break None,
                }
            };
            done.cancel();
            ended
        };
        let ((), code) = tokio::join!(sender, receiver);
        if let Some(code) = code {
            // Answer the Close with its code, as a browser does.
            let reply = Frame::close_raw(Payload::Owned(code.to_be_bytes().to_vec()));
            let _ = tokio::time::timeout(Duration::from_secs(1), tx.write_frame(reply)).await;
        }
        let ended = code.map_or_else(|| "1006".to_owned(), |c| c.to_string());
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let killed_at = *lock(&t.killed_at);
        if let (Some(at), true) = (killed_at, echoed) {
            lock(&t.cut_ms).push(at.elapsed().as_millis() as u64);
            *lock(&t.closes).entry(ended).or_default() += 1;
            cut = true;
        } else if !echoed && killed_at.is_some() {
            // Upgraded but cut before any echo: a failed reconnect.
            *lock(&t.failed).entry("no echo".to_owned()).or_default() += 1;
        }
    }
}

/// utime + stime of `pids`, in microseconds.
fn cpu_us(pids: &[u32], clk_tck: u64) -> u64 {
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .filter_map(|s| {
            let f: Vec<u64> = s
                .rsplit_once(") ")?
                .1
                .split_whitespace()
                .skip(11)
                .take(2)
                .filter_map(|v| v.parse().ok())
                .collect();
            Some(f.iter().sum::<u64>() * 1_000_000 / clk_tck.max(1))
        })
        .sum()
}

/// The time by which `share` of `calls` were back (`None`: never).
fn by_share(sorted: &[u64], calls: usize, share: f64) -> Option<u64> {
    let need = ((calls as f64 * share).ceil() as usize).max(1);
    sorted.get(need - 1).copied()
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let target = Arc::new(Target::parse(&args));
    let t = Arc::new(Totals::default());
    let stop = Arc::new(AtomicBool::new(false));
    let period = Duration::from_millis(args.interval_ms.max(1));
    let limit = Duration::from_secs(args.timeout_secs);

    // Set-up: every call up and echoing, opened 64 at a time.
    let gate = Arc::new(tokio::sync::Semaphore::new(64));
    let mut tasks = Vec::with_capacity(args.calls);
    for _ in 0..args.calls {
        let permit = gate.clone().acquire_owned().await.expect("semaphore");
        let (target, t, stop) = (target.clone(), t.clone(), stop.clone());
        tasks.push(tokio::spawn(call(
            target, t, period, args.size, stop, permit,
        )));
    }
    let begun = Instant::now();
    while t.ready.load(Ordering::Relaxed) < args.calls && begun.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ready = t.ready.load(Ordering::Relaxed);
    if ready < args.calls {
        eprintln!(
            "storm: only {ready} of {} calls carried audio after {limit:?}",
            args.calls
        );
        std::process::exit(1);
    }
    // A second of audio on every call (TLS 1.3 tickets arrive with the first reads).
    tokio::time::sleep(Duration::from_secs(1)).await;

    let (proxy0, self0, fallback0) = (
        cpu_us(&args.proxy_pid, args.clk_tck),
        cpu_us(&[std::process::id()], args.clk_tck),
        cpu_us(&args.fallback_pid, args.clk_tck),
    );
    let killed = Instant::now();
    *lock(&t.killed_at) = Some(killed);
    let status = std::process::Command::new("kill")
        .args(["-9", &args.kill.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -9 {} failed", args.kill);

    while lock(&t.back_ms).len() < args.calls && killed.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let storm = killed.elapsed();
    let (proxy1, self1, fallback1) = (
        cpu_us(&args.proxy_pid, args.clk_tck),
        cpu_us(&[std::process::id()], args.clk_tck),
        cpu_us(&args.fallback_pid, args.clk_tck),
    );
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.abort();
    }

    let mut back = lock(&t.back_ms).clone();
    back.sort_unstable();
    let mut cut = lock(&t.cut_ms).clone();
    cut.sort_unstable();
    let mut upgraded = lock(&t.upgraded_ms).clone();
    upgraded.sort_unstable();
    let failed: u64 = lock(&t.failed).values().sum();
    let report = serde_json::json!({
        "label": args.label,
        "calls": args.calls,
        "back": back.len(),
        "never_back": args.calls - back.len(),
        "cut_first_ms": cut.first(),
        "cut_all_ms": by_share(&cut, args.calls, 1.0),
        "upgraded_p50_ms": by_share(&upgraded, args.calls, 0.50),
        "upgraded_p99_ms": by_share(&upgraded, args.calls, 0.99),
        "back_first_ms": back.first(),
        "back_p50_ms": by_share(&back, args.calls, 0.50),
        "back_p99_ms": by_share(&back, args.calls, 0.99),
        "back_all_ms": by_share(&back, args.calls, 1.0),
        "closes": *lock(&t.closes),
        "failed": failed,
        "failed_by": *lock(&t.failed),
        "tls_full": t.storm_handshakes[0].load(Ordering::Relaxed),
        "tls_resumed": t.storm_handshakes[1].load(Ordering::Relaxed),
        "storm_ms": storm.as_millis() as u64,
        "proxy_cpu_us": proxy1.saturating_sub(proxy0),
        "client_cpu_us": self1.saturating_sub(self0),
        "fallback_cpu_us": (!args.fallback_pid.is_empty()).then(|| fallback1.saturating_sub(fallback0)),
    });
    println!("{report}");
    std::process::exit(0);
}
