//! Memory with clients that stop reading (issue 13, item 4): runs the shunt
//! binary as a child in front of a backend that streams as fast as it can,
//! opens `--clients` WebSocket calls that never read after the handshake, and
//! prints shunt's RSS and open descriptors every 10 s for `--secs`, plus how
//! many bytes the backend managed to write (bounded by socket buffers when
//! shunt applies backpressure, instead of growing with time).
//!
//! ```text
//! cargo build --release && cargo run --release --example slow_clients -- \
//!     --shunt target/release/shunt --clients 200 --secs 60
//! ```

#[path = "common/procfs.rs"]
mod procfs;

use procfs::sample;
use std::convert::Infallible;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use fastwebsockets::{Frame, Payload};
use http_body_util::Empty;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Slow-client memory measurement.
#[derive(Debug, Parser)]
struct Args {
    /// The shunt binary to run.
    #[arg(long, default_value = "target/release/shunt")]
    shunt: String,
    /// Calls that stop reading.
    #[arg(long, default_value_t = 200)]
    clients: usize,
    /// How long to hold them, in seconds (at most 3600).
    #[arg(long, default_value_t = 60)]
    secs: u64,
}

/// Each call stops being fed after this much (bounds the run without backpressure).
const PER_CALL_AT_MOST: u64 = 256 * 1024 * 1024;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let secs = args.secs.min(3600);
    let written = Arc::new(AtomicU64::new(0));
    let backend = streaming_backend(written.clone()).await?;
    let port = TcpListener::bind("127.0.0.1:0").await?.local_addr()?.port();
    let listen = format!("127.0.0.1:{port}");
    let mut child = tokio::process::Command::new(&args.shunt)
        .args(["--listen", &listen, "--admin", "off", "--route", "/=direct"])
        .args(["--direct", &format!("http://{backend}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().ok_or("shunt exited at once")?;
    let started = Instant::now();
    while TcpStream::connect(&listen).await.is_err() {
        if started.elapsed() > Duration::from_secs(10) {
            return Err("shunt did not listen within 10 s".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (rss0, fds0) = sample(pid);
    println!("before: rss {rss0} KiB, fds {fds0}");
    let mut held = Vec::with_capacity(args.clients);
    for _ in 0..args.clients {
        held.push(stalled_call(&listen).await?);
    }
    println!("| t (s) | shunt RSS (KiB) | shunt fds | backend bytes written |");
    println!("|------:|----------------:|----------:|----------------------:|");
    let start = Instant::now();
    loop {
        let (rss, fds) = sample(pid);
        let t = start.elapsed().as_secs();
        let w = written.load(Ordering::Relaxed);
        println!("| {t} | {rss} | {fds} | {w} |");
        if t >= secs {
            break;
        }
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
    drop(held);
    child.kill().await?;
    Ok(())
}

/// A WebSocket handshake, then nothing more is read from the socket.
async fn stalled_call(listen: &str) -> Result<TcpStream, Box<dyn std::error::Error>> {
    let mut s = TcpStream::connect(listen).await?;
    s.write_all(
        b"GET /stream HTTP/1.1\r\nHost: slow\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await?;
    // Read only the response head (byte by byte, so no frame is consumed).
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 4096 {
        s.read_exact(&mut byte).await?;
        head.push(byte[0]);
    }
    if !head.starts_with(b"HTTP/1.1 101") {
        return Err(format!("handshake refused: {}", String::from_utf8_lossy(&head)).into());
    }
    Ok(s)
}

/// A backend that writes 16 KiB binary frames as fast as each call takes them.
async fn streaming_backend(
    written: Arc<AtomicU64>,
) -> Result<std::net::SocketAddr, Box<dyn std::error::Error>> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let written = written.clone();
            let service = service_fn(move |mut req: Request<hyper::body::Incoming>| {
                let written = written.clone();
                async move {
                    let Ok((response, fut)) = fastwebsockets::upgrade::upgrade(&mut req) else {
                        return Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new()));
                    };
                    tokio::spawn(async move {
                        let Ok(mut ws) = fut.await else { return };
                        let chunk = vec![7u8; 16 * 1024];
                        let mut mine = 0u64;
                        while mine < PER_CALL_AT_MOST {
                            let frame = Frame::binary(Payload::Borrowed(&chunk));
                            if ws.write_frame(frame).await.is_err() {
                                return;
                            }
                            mine += chunk.len() as u64;
                            written.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                        }
                    });
                    let (parts, _) = response.into_parts();
                    Ok(Response::from_parts(parts, Empty::<Bytes>::new()))
                }
            });
            tokio::spawn(
                http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades(),
            );
        }
    });
    Ok(addr)
}
