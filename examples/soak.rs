//! Chaos soak (issue 13, item 6): N calls at audio cadence (a 160-byte frame
//! every 20 ms each way: the client sends, the echo backend sends it back)
//! through shunt with TLS on, routed `direct` first with `nginx` as fallback,
//! while the soak
//!
//! - SIGKILLs the `direct` echo backend every 30 s and restarts it 3 s later,
//! - reloads nginx (SIGHUP to its master) every 20 s,
//! - sends shunt `POST /reload` every 5 s,
//! - swaps the certificate by atomic rename every 60 s,
//! - keeps 5 % of clients not reading, and makes 5 % vanish (RST, no Close).
//!
//! A session on `direct` is cut only by its backend's death: shunt must tell
//! the client with Close 1014 (read by hand: fastwebsockets refuses that
//! code); the call reconnects at once, through nginx while `direct` is dead,
//! and the time to reconnect is recorded. On every session that was not cut,
//! frames lost, duplicated or reordered must be 0. shunt's RSS and
//! descriptors are sampled every 10 s. Exit status 1 when a must-be-zero is
//! not (lost/duplicated/reordered on uncut sessions, 5xx answers from shunt,
//! panics in shunt's log, a cut call that never came back, a reading client
//! cut by a backend death without Close 1014 or not back through nginx).
//!
//! With `--backend-loss reattach`, the calls go to `/frontend-audio`, a
//! route with `backend_loss = "reattach"`: a backend death must then reach
//! no client as a Close; the call moves to a new backend connection (the
//! client sees the new backend's hello mid-session), the echoes in flight at
//! the death are counted as lost, and every hole in a call's echoes longer
//! than 100 ms is measured. `--backend-loss both` runs half the calls on each
//! route in the same run, for the audio gap of reattach beside today's
//! reconnect-by-1014.
//!
//! ```text
//! cargo build --release --bin shunt --example echo_backend --example soak
//! target/release/examples/soak --shunt target/release/shunt \
//!     --echo target/release/examples/echo_backend --calls 300 --secs 60
//! ```

#[path = "common/procfs.rs"]
mod procfs;

use procfs::sample;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use fastwebsockets::{Frame, OpCode, Payload, WebSocket, handshake};
use http::{Request, header};
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Seconds `direct` stays dead after each SIGKILL: long enough for shunt's
/// 1 s health probe to mark it down, so cut calls come back through nginx.
const DOWN_SECS: u64 = 3;

/// Chaos soak through shunt.
#[derive(Debug, Parser)]
struct Args {
    /// The shunt binary.
    #[arg(long, default_value = "target/release/shunt")]
    shunt: PathBuf,
    /// The echo backend example binary.
    #[arg(long, default_value = "target/release/examples/echo_backend")]
    echo: PathBuf,
    /// The nginx binary.
    #[arg(long, default_value = "/usr/sbin/nginx")]
    nginx: PathBuf,
    /// Concurrent calls (at most 20000).
    #[arg(long, default_value_t = 300)]
    calls: usize,
    /// Duration in seconds (at most 7200).
    #[arg(long, default_value_t = 60)]
    secs: u64,
    /// Frames per second per call and direction.
    #[arg(long, default_value_t = 50)]
    fps: u64,
    /// `close` (every call on `/audio`, today's 1014), `reattach` (every
    /// call on `/frontend-audio` with `backend_loss = "reattach"`) or `both`
    /// (half on each, in blocks of 20 calls).
    #[arg(long, default_value = "close", value_parser = ["close", "reattach", "both"])]
    backend_loss: String,
}

type Ws = WebSocket<TokioIo<hyper::upgrade::Upgraded>>;

#[derive(Default)]
struct Totals {
    sessions_uncut: u64,
    frames_sent: u64,
    frames_echoed: u64,
    lost: u64,
    duplicated: u64,
    reordered: u64,
    /// Sessions on `direct` cut (its backend is SIGKILLed), reading clients.
    death_cuts: u64,
    death_close_codes: BTreeMap<String, u64>,
    /// Time from a death cut to the next session's hello.
    death_reconnect_ms: Vec<u64>,
    /// The backend that greeted the session after a death cut.
    death_reconnected_via: BTreeMap<String, u64>,
    /// Sessions on `direct` of clients that never read: they cannot see the Close.
    death_cuts_unread: u64,
    /// Any other cut (a session through nginx, say).
    other_cuts: u64,
    other_close_codes: BTreeMap<String, u64>,
    never_back: u64,
    shunt_5xx: u64,
    connect_errors: u64,
    /// Per route (0 close, 1 reattach): the hole in a reading call's echoes
    /// across a backend death (last echo before it to first echo after), in ms.
    death_gaps_ms: [Vec<u64>; 2],
    /// Reattach route: sessions of reading clients that saw a Close or were cut, by code.
    reattach_closes: BTreeMap<String, u64>,
    /// Reattach route: a new backend's hello in the middle of a session.
    reattach_moves: u64,
    /// Reattach route: echoes lost at a move (in flight at the backend's death).
    reattach_lost: u64,
}

fn port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let secs = args.secs.min(7200);
    let calls = args.calls.min(20_000);
    let dir = std::env::temp_dir().join(format!("shunt-soak-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = soak(&args, secs, calls, &dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    let failed = result?;
    std::process::exit(i32::from(failed));
}

async fn soak(
    args: &Args,
    secs: u64,
    calls: usize,
    dir: &Path,
) -> Result<bool, Box<dyn std::error::Error>> {
    // PKI: a CA (trusted by the clients) and a server certificate, reissued on every swap.
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "soak CA");
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);
    let (cert_path, key_path) = (dir.join("server.crt"), dir.join("server.key"));
    swap_cert(&issuer, &cert_path, &key_path)?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca_cert.der().clone())?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let client_tls = Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );

    let (p_direct, p_behind, p_nginx, p_shunt, p_admin) = (port(), port(), port(), port(), port());
    let echo = |port: u16, name: &str| {
        tokio::process::Command::new(&args.echo)
            .args(["--port", &port.to_string(), "--name", name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
    };
    let mut direct = echo(p_direct, "direct")?;
    let _behind = echo(p_behind, "via-nginx")?;
    std::fs::write(dir.join("nginx.conf"), nginx_conf(dir, p_nginx, p_behind))?;
    let mut nginx = tokio::process::Command::new(&args.nginx)
        .args(["-p", &dir.display().to_string(), "-c", "nginx.conf"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let mut command = tokio::process::Command::new(&args.shunt);
    command
        .args(["--listen", &format!("127.0.0.1:{p_shunt}")])
        .args(["--admin", &format!("127.0.0.1:{p_admin}")])
        .args(["--health-interval", "1s"]);
    if args.backend_loss == "close" {
        command
            .args(["--direct", &format!("http://127.0.0.1:{p_direct}")])
            .args(["--nginx", &format!("http://127.0.0.1:{p_nginx}")])
            .args(["--route", "/=direct,nginx"]);
    } else {
        // The echo backend needs no preamble: nothing is replayed.
        let config = dir.join("shunt.toml");
        std::fs::write(
            &config,
            format!(
                "[upstreams.direct]\nurl = \"http://127.0.0.1:{p_direct}\"\n\
                 [upstreams.nginx]\nurl = \"http://127.0.0.1:{p_nginx}\"\n\
                 [[routes]]\npath = \"/frontend-audio\"\nvia = [\"direct\", \"nginx\"]\n\
                 backend_loss = \"reattach\"\nreplay_messages = 0\n\
                 [[routes]]\npath = \"/\"\nvia = [\"direct\", \"nginx\"]\n"
            ),
        )?;
        command.args(["--config", &config.display().to_string()]);
    }
    let mut shunt = command
        .args(["--tls-cert", &cert_path.display().to_string()])
        .args(["--tls-key", &key_path.display().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let shunt_pid = shunt.id().ok_or("shunt exited at once")?;
    let panics = Arc::new(AtomicU64::new(0));
    if let Some(stderr) = shunt.stderr.take() {
        let panics = panics.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains("panicked") {
                    eprintln!("shunt: {line}");
                    panics.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    for p in [p_direct, p_behind, p_nginx, p_shunt] {
        wait_listening(p).await?;
    }

    let totals = Arc::new(Mutex::new(Totals::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let connector = TlsConnector::from(client_tls);
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..calls {
        let kind = match i % 20 {
            0 => Kind::NotReading,
            1 => Kind::Vanishing,
            _ => Kind::Normal,
        };
        let (connector, totals, stop) = (connector.clone(), totals.clone(), stop.clone());
        let reattach = match args.backend_loss.as_str() {
            "close" => false,
            "reattach" => true,
            _ => (i / 20) % 2 == 0,
        };
        tasks.spawn(call(
            i, kind, p_shunt, reattach, connector, args.fps, secs, totals, stop,
        ));
        // Ramp up over about two seconds.
        if i % 50 == 49 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    println!("| t (s) | shunt RSS (KiB) | shunt fds |");
    println!("|------:|----------------:|----------:|");
    let mut samples = Vec::new();
    let mut tick = 0u64;
    let mut restart_at: Option<u64> = None;
    // POST /reload answers: applied (200), refused (anything else).
    let mut reloads = [0u64; 2];
    while start.elapsed() < Duration::from_secs(secs) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        tick += 1;
        if tick.is_multiple_of(5) {
            let applied = admin_post(p_admin, "/reload")
                .await
                .is_ok_and(|head| head.starts_with("HTTP/1.1 200"));
            reloads[usize::from(!applied)] += 1;
        }
        if tick.is_multiple_of(10) {
            let (rss, fds) = sample(shunt_pid);
            let t = start.elapsed().as_secs();
            println!("| {t} | {rss} | {fds} |");
            samples.push((t, rss, fds));
        }
        if tick.is_multiple_of(20)
            && let Some(pid) = nginx.id()
        {
            let _ = std::process::Command::new("kill")
                .args(["-HUP", &pid.to_string()])
                .status();
        }
        // SIGKILL `direct` every 30 s (not in the last 10 s: its cut calls
        // must have time to come back) and start it again DOWN_SECS later.
        if tick.is_multiple_of(30) && tick + 10 < secs {
            let _ = direct.start_kill();
            let _ = direct.wait().await;
            restart_at = Some(tick + DOWN_SECS);
        }
        if restart_at == Some(tick) {
            direct = echo(p_direct, "direct")?;
            restart_at = None;
        }
        if tick.is_multiple_of(60) {
            swap_cert(&issuer, &cert_path, &key_path)?;
        }
    }
    stop.store(true, Ordering::Relaxed);
    while tasks.join_next().await.is_some() {}
    // shunt's own count of reattaches, before it stops.
    let reattach_metrics = admin_get(p_admin, "/metrics")
        .await
        .unwrap_or_default()
        .lines()
        .filter(|l| {
            l.starts_with("shunt_call_reattach_total")
                || l.starts_with("shunt_call_reattach_gap_seconds_sum")
                || l.starts_with("shunt_call_reattach_gap_seconds_count")
        })
        .map(str::to_owned)
        .collect::<Vec<_>>();
    // SIGTERM, not SIGKILL: nginx's master stops its workers only when it
    // is asked to (a killed master leaves them running, orphaned).
    if let Some(pid) = nginx.id() {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
    }
    if tokio::time::timeout(Duration::from_secs(5), nginx.wait())
        .await
        .is_err()
    {
        let _ = nginx.start_kill();
        let _ = nginx.wait().await;
    }
    let _ = shunt.start_kill();
    let _ = shunt.wait().await;

    let t = totals.lock().map_err(|_| "poisoned")?;
    let panics = panics.load(Ordering::Relaxed);
    let mut ms = t.death_reconnect_ms.clone();
    ms.sort_unstable();
    let pct = |p: usize| {
        ms.get((ms.len().saturating_sub(1)) * p / 100)
            .copied()
            .unwrap_or(0)
    };
    let (rss_first, rss_last, rss_max) = spread(samples.iter().map(|s| s.1));
    let (fds_first, fds_last, fds_max) = spread(samples.iter().map(|s| s.2 as u64));
    println!();
    println!("| measure | value |");
    println!("|---|---:|");
    println!(
        "| calls / duration | {calls} / {secs} s at {} frames/s each way |",
        args.fps
    );
    println!(
        "| frames sent / echoed (uncut sessions) | {} / {} |",
        t.frames_sent, t.frames_echoed
    );
    println!("| uncut sessions | {} |", t.sessions_uncut);
    println!(
        "| lost / duplicated / reordered (uncut) | {} / {} / {} |",
        t.lost, t.duplicated, t.reordered
    );
    println!(
        "| calls cut by a backend death (reading clients) | {} |",
        t.death_cuts
    );
    println!("| close codes on those cuts | {:?} |", t.death_close_codes);
    println!(
        "| reconnected via (backend that greeted) | {:?} |",
        t.death_reconnected_via
    );
    println!(
        "| time to reconnect p50 / p99 / max | {} / {} / {} ms |",
        pct(50),
        pct(99),
        ms.last().copied().unwrap_or(0)
    );
    println!(
        "| not-reading calls cut by a backend death (Close unread) | {} |",
        t.death_cuts_unread
    );
    println!(
        "| other cuts / their close codes | {} / {:?} |",
        t.other_cuts, t.other_close_codes
    );
    println!("| cut calls that never came back | {} |", t.never_back);
    println!("| 5xx from shunt | {} |", t.shunt_5xx);
    println!("| connect errors (retried) | {} |", t.connect_errors);
    println!("| RSS first / last / max (KiB) | {rss_first} / {rss_last} / {rss_max} |");
    println!("| fds first / last / max | {fds_first} / {fds_last} / {fds_max} |");
    println!("| panics | {panics} |");
    println!(
        "| shunt POST /reload: applied / refused (must be 0) | {} / {} |",
        reloads[0], reloads[1]
    );
    println!("| backend_loss | {} |", args.backend_loss);
    for (route, gaps) in [
        "close (/audio): reconnect by 1014",
        "reattach (/frontend-audio)",
    ]
    .iter()
    .zip(&t.death_gaps_ms)
    {
        let mut h = gaps.clone();
        h.sort_unstable();
        let at = |p: usize| {
            h.get(h.len().saturating_sub(1) * p / 100)
                .copied()
                .unwrap_or(0)
        };
        println!(
            "| audio gap at a backend death, {route}: calls, p50 / p99 / max | {}, {} / {} / {} ms |",
            h.len(),
            at(50),
            at(99),
            h.last().copied().unwrap_or(0)
        );
    }
    if args.backend_loss != "close" {
        println!(
            "| reattach route: reading calls that saw a Close (must be 0) | {} {:?} |",
            t.reattach_closes.values().sum::<u64>(),
            t.reattach_closes
        );
        println!(
            "| reattach route: backend changes seen mid-call | {} |",
            t.reattach_moves
        );
        println!(
            "| reattach route: echoes lost at a change (in flight at the death) | {} |",
            t.reattach_lost
        );
        for line in &reattach_metrics {
            println!("| {line} | |");
        }
    }
    // Every reading client cut by a backend death got 1014 and came back through nginx.
    let told = t.death_close_codes.get("1014").copied().unwrap_or(0);
    let via_nginx = t
        .death_reconnected_via
        .get("via-nginx")
        .copied()
        .unwrap_or(0);
    let untold = t.death_cuts - told + (t.death_reconnect_ms.len() as u64 - via_nginx);
    let reattach_closed: u64 = t.reattach_closes.values().sum();
    let failed = t.lost
        + t.duplicated
        + t.reordered
        + t.shunt_5xx
        + panics
        + t.never_back
        + untold
        + reattach_closed
        + reloads[1]
        > 0;
    println!("| verdict | {} |", if failed { "FAIL" } else { "PASS" });
    Ok(failed)
}

fn spread(values: impl Iterator<Item = u64>) -> (u64, u64, u64) {
    let v: Vec<u64> = values.collect();
    (
        v.first().copied().unwrap_or(0),
        v.last().copied().unwrap_or(0),
        v.iter().copied().max().unwrap_or(0),
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Normal,
    NotReading,
    Vanishing,
}

/// One call for the whole soak: sessions until `stop`, reconnecting after a cut.
#[allow(clippy::too_many_arguments)]
async fn call(
    id: usize,
    kind: Kind,
    port: u16,
    reattach: bool,
    connector: TlsConnector,
    fps: u64,
    secs: u64,
    totals: Arc<Mutex<Totals>>,
    stop: Arc<AtomicBool>,
) {
    let period = Duration::from_micros(1_000_000 / fps.clamp(1, 1000));
    // When the last session was cut by a backend death, while not back.
    let mut cut_at: Option<Instant> = None;
    let vanish_after = Duration::from_millis(1000 + (id as u64 * 7919) % (secs.max(2) * 500));
    let begun = Instant::now();
    let path = if reattach {
        "/frontend-audio"
    } else {
        "/audio"
    };
    // The last echo this call received (across sessions: a hole spans a reconnect).
    let mut last_echo: Option<Instant> = None;
    while !stop.load(Ordering::Relaxed) {
        let (mut ws, mut via) = match open(port, &connector, path).await {
            Ok(opened) => opened,
            Err(Open::Status(code)) => {
                {
                    let mut t = lock(&totals);
                    if code >= 500 {
                        t.shunt_5xx += 1;
                    }
                    t.connect_errors += 1;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Err(Open::Io) => {
                lock(&totals).connect_errors += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let reconnected = cut_at.is_some();
        if let Some(at) = cut_at.take() {
            let mut t = lock(&totals);
            t.death_reconnect_ms.push(at.elapsed().as_millis() as u64);
            *t.death_reconnected_via.entry(via.clone()).or_default() += 1;
        }
        let mut seq = 0u64;
        let mut expect = 0u64;
        let (mut dup, mut reord) = (0u64, 0u64);
        // A new backend greeted mid-session: the next gap in the echoes is a loss.
        let mut moved = false;
        // This session follows a cut by a backend death: its first echo ends the hole.
        let mut after_cut = reconnected;
        let mut tick = tokio::time::interval(period);
        let outcome = loop {
            if stop.load(Ordering::Relaxed) {
                break Outcome::Stopped;
            }
            if kind == Kind::Vanishing && begun.elapsed() > vanish_after {
                break Outcome::Vanished;
            }
            tokio::select! {
                _ = tick.tick() => {
                    let mut frame = [0u8; 160];
                    frame[..8].copy_from_slice(&seq.to_be_bytes());
                    if ws.write_frame(Frame::binary(Payload::Borrowed(&frame))).await.is_err() {
                        break Outcome::Cut(Err("no Close frame, a write failed".to_owned()));
                    }
                    seq += 1;
                }
                r = ws.read_frame(), if kind != Kind::NotReading => match r {
                    Ok(f) if f.opcode == OpCode::Binary && f.payload.len() >= 8 => {
                        let now = Instant::now();
                        if (moved || after_cut) && let Some(last) = last_echo {
                            let gap = (now - last).as_millis() as u64;
                            lock(&totals).death_gaps_ms[usize::from(reattach)].push(gap);
                        }
                        after_cut = false;
                        last_echo = Some(now);
                        let mut n = [0u8; 8];
                        n.copy_from_slice(&f.payload[..8]);
                        let n = u64::from_be_bytes(n);
                        if n == expect {
                            expect += 1
                        } else if n < expect {
                            dup += 1
                        } else if moved {
                            lock(&totals).reattach_lost += n - expect;
                            expect = n + 1
                        } else {
                            reord += 1;
                            expect = n + 1
                        }
                        moved = false;
                    }
                    Ok(f) if f.opcode == OpCode::Text && reattach => {
                        // The new backend connection's greeting: the call moved.
                        let hello = String::from_utf8_lossy(&f.payload);
                        via = hello.strip_prefix("hello from ").unwrap_or(&hello).to_owned();
                        moved = true;
                        lock(&totals).reattach_moves += 1;
                    }
                    Ok(f) if f.opcode == OpCode::Close => {
                        break Outcome::Cut(answer_close(&mut ws, &f.payload).await.ok_or_else(|| "Close without a code".to_owned()));
                    }
                    Ok(_) => {}
                    Err(e) => break Outcome::Cut(Err(format!("no Close frame, a read failed: {e}"))),
                },
            }
        };
        match outcome {
            Outcome::Stopped if kind == Kind::Normal => {
                // Let the frames in flight come back, then count.
                let _ = tokio::time::timeout(Duration::from_secs(10), async {
                    while expect < seq {
                        match ws.read_frame().await {
                            Ok(f) if f.opcode == OpCode::Binary && f.payload.len() >= 8 => {
                                let mut n = [0u8; 8];
                                n.copy_from_slice(&f.payload[..8]);
                                let n = u64::from_be_bytes(n);
                                if n == expect {
                                    expect += 1
                                } else if n < expect {
                                    dup += 1
                                } else {
                                    reord += 1;
                                    expect = n + 1
                                }
                            }
                            Ok(f) if f.opcode == OpCode::Close => {
                                answer_close(&mut ws, &f.payload).await;
                                break;
                            }
                            Ok(_) => {}
                            Err(_) => break,
                        }
                    }
                })
                .await;
                let mut t = lock(&totals);
                t.sessions_uncut += 1;
                t.frames_sent += seq;
                t.frames_echoed += expect.min(seq);
                t.lost += seq.saturating_sub(expect);
                t.duplicated += dup;
                t.reordered += reord;
            }
            Outcome::Stopped => {}
            Outcome::Vanished => {
                // An abrupt end: RST, no Close frame; this call does not come back.
                drop(ws);
                return;
            }
            Outcome::Cut(code) => {
                let mut t = lock(&totals);
                let key = code.map_or_else(|why| why, |c| c.to_string());
                if reattach && kind == Kind::Normal {
                    *t.reattach_closes.entry(key.clone()).or_default() += 1;
                }
                // Only a SIGKILL ends the `direct` backend's sessions.
                if via != "direct" {
                    t.other_cuts += 1;
                    let key = if kind == Kind::NotReading {
                        format!("{key} (not reading)")
                    } else {
                        key
                    };
                    *t.other_close_codes.entry(key).or_default() += 1;
                } else if kind == Kind::NotReading {
                    t.death_cuts_unread += 1;
                } else {
                    t.death_cuts += 1;
                    *t.death_close_codes.entry(key).or_default() += 1;
                    cut_at = Some(Instant::now());
                }
            }
        }
    }
    if cut_at.is_some() {
        lock(&totals).never_back += 1;
    }
}

enum Outcome {
    Stopped,
    Vanished,
    /// The Close frame's code, or how the session ended without one.
    Cut(Result<u16, String>),
}

enum Open {
    Status(u16),
    Io,
}

/// The code of a Close frame's payload, after answering it with the same
/// payload. Read by hand: fastwebsockets' auto-close refuses 1014, a code
/// browsers accept (RFC 6455 leaves it to the IANA registry, where 1014 is
/// "Bad Gateway").
async fn answer_close(ws: &mut Ws, payload: &[u8]) -> Option<u16> {
    let code = (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
    let reply = Frame::close_raw(Payload::Owned(payload.get(..2).unwrap_or(&[]).to_vec()));
    let _ = tokio::time::timeout(Duration::from_secs(1), ws.write_frame(reply)).await;
    code
}

fn lock(t: &Mutex<Totals>) -> std::sync::MutexGuard<'_, Totals> {
    t.lock().unwrap_or_else(|p| p.into_inner())
}

/// A session: TLS, the upgrade, then the backend's hello; returns the socket
/// and the name the backend greeted with (`direct` or `via-nginx`).
async fn open(port: u16, connector: &TlsConnector, path: &str) -> Result<(Ws, String), Open> {
    let tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|_| Open::Io)?;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from("localhost").map_err(|_| Open::Io)?;
    let tls = tokio::time::timeout(Duration::from_secs(5), connector.connect(name, tcp))
        .await
        .map_err(|_| Open::Io)?
        .map_err(|_| Open::Io)?;
    let req = Request::get(path)
        .header(header::HOST, format!("localhost:{port}"))
        .header(header::UPGRADE, "websocket")
        .header(header::CONNECTION, "upgrade")
        .header(header::SEC_WEBSOCKET_KEY, handshake::generate_key())
        .header(header::SEC_WEBSOCKET_VERSION, "13")
        .body(Empty::<bytes::Bytes>::new())
        .map_err(|_| Open::Io)?;
    let executor = TokioExecutor::new();
    let attempt = handshake::client(&executor, req, tls);
    match tokio::time::timeout(Duration::from_secs(5), attempt).await {
        Ok(Ok((mut ws, _))) => {
            // Close frames are read and answered by hand (see `answer_close`).
            ws.set_auto_close(false);
            // The backend greets first: "hello from NAME".
            match tokio::time::timeout(Duration::from_secs(5), ws.read_frame()).await {
                Ok(Ok(f)) if f.opcode == OpCode::Text => {
                    let hello = String::from_utf8_lossy(&f.payload);
                    let via = hello
                        .strip_prefix("hello from ")
                        .unwrap_or(&hello)
                        .to_owned();
                    Ok((ws, via))
                }
                _ => Err(Open::Io),
            }
        }
        Ok(Err(fastwebsockets::WebSocketError::InvalidStatusCode(code))) => Err(Open::Status(code)),
        _ => Err(Open::Io),
    }
}

async fn admin_post(port: u16, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
    // `Host: localhost`: the admin listener refuses other names (DNS rebinding).
    s.write_all(
        format!(
            "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await?;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut answer)).await;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

/// A GET on the admin listener: the response, head and body.
async fn admin_get(port: u16, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut body = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut body)).await;
    Ok(String::from_utf8_lossy(&body).into_owned())
}

async fn wait_listening(port: u16) -> Result<(), Box<dyn std::error::Error>> {
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        if start.elapsed() > Duration::from_secs(10) {
            return Err(format!("nothing listens on {port} after 10 s").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Issue a new server certificate and swap it in by atomic rename (key first).
fn swap_cert(
    issuer: &Issuer<'static, KeyPair>,
    cert: &Path,
    key: &Path,
) -> Result<(), Box<dyn std::error::Error>> {
    let kp = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let c = params.signed_by(&kp, issuer)?;
    for (path, text) in [(key, kp.serialize_pem()), (cert, c.pem())] {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, path)?;
    }
    Ok(())
}

fn nginx_conf(dir: &Path, listen: u16, upstream: u16) -> String {
    let d = dir.display();
    format!(
        r#"daemon off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log warn;
events {{ worker_connections 20000; }}
http {{
    access_log off;
    client_body_temp_path {d}/cb; proxy_temp_path {d}/px; fastcgi_temp_path {d}/fc;
    uwsgi_temp_path {d}/uw; scgi_temp_path {d}/sc;
    map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
    server {{
        listen 127.0.0.1:{listen};
        location / {{
            proxy_pass http://127.0.0.1:{upstream};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_read_timeout 1h;
        }}
    }}
}}
"#
    )
}
