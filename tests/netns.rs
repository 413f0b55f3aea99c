//! Real network failures: a network namespace made by the test, joined to
//! the host by a veth pair with addresses from a private /30 that exists only
//! on that pair, plays the browser. The client socket is created inside the
//! namespace (a thread joins it with `setns`), so shunt sees a real remote
//! address and real packet loss, not loopback.
//!
//! - true half-open: iptables `DROP` inside the namespace mid-call (no FIN,
//!   no RST); `--tcp-keepalive` finds the dead peer and shunt closes both legs;
//! - `--allow-ip` / `--deny-ip` against the namespace's address;
//! - loss and jitter with `tc netem` (skipped when the kernel has no netem).
//!
//! Needs root and `ip netns`; otherwise each test prints why and passes,
//! unless `CI=true` or `SHUNT_REQUIRE_NETNS=1`, when it fails instead.

mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use fastwebsockets::{Frame, OpCode, Payload, Role, WebSocket};
use support::raw::{parse_answer, read_head, ws_handshake};
use support::{EchoBackend, echo_backend, eventually, shunt};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// A namespace `shunt-tN-PID` with veth `shNPa` (host, .1) / `shNPb` (inside, .2).
struct NetNs {
    name: String,
    host_if: String,
    inside_if: String,
    host: Ipv4Addr,
    inside: Ipv4Addr,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

fn required() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
        || std::env::var("SHUNT_REQUIRE_NETNS").is_ok_and(|v| v == "1")
}

/// Run `ip`/`iptables`/`tc`; `Err` with its stderr when it fails.
fn sh(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl NetNs {
    /// Create the namespace and the pair, or say why not (skip or fail as required).
    fn create(test: &str) -> Option<NetNs> {
        match NetNs::try_create() {
            Ok(ns) => Some(ns),
            Err(why) if required() => panic!("{test}: network namespaces required: {why}"),
            Err(why) => {
                eprintln!("skipping {test}: {why}");
                None
            }
        }
    }

    fn try_create() -> Result<NetNs, String> {
        if !rustix::process::geteuid().is_root() {
            return Err("not root".into());
        }
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id() % 10_000;
        // 10.213.K.0/30, K from the pid and counter: distinct per test and run.
        let k = ((pid * 8 + n) % 250) as u8;
        let inside_if = format!("sh{n}p{pid}b");
        let ns = NetNs {
            name: format!("shunt-t{n}-{pid}"),
            host_if: format!("sh{n}p{pid}a"),
            inside_if: inside_if.clone(),
            host: Ipv4Addr::new(10, 213, k, 1),
            inside: Ipv4Addr::new(10, 213, k, 2),
        };
        sh("ip", &["netns", "add", &ns.name])?;
        // From here on, Drop cleans up whatever was made.
        let host_cidr = format!("{}/30", ns.host);
        let inside_cidr = format!("{}/30", ns.inside);
        let ip_in = |args: &[&str]| {
            let mut all = vec!["netns", "exec", &ns.name, "ip"];
            all.extend_from_slice(args);
            sh("ip", &all)
        };
        sh(
            "ip",
            &[
                "link",
                "add",
                &ns.host_if,
                "type",
                "veth",
                "peer",
                "name",
                &inside_if,
            ],
        )?;
        sh("ip", &["link", "set", &inside_if, "netns", &ns.name])?;
        sh("ip", &["addr", "add", &host_cidr, "dev", &ns.host_if])?;
        sh("ip", &["link", "set", &ns.host_if, "up"])?;
        ip_in(&["addr", "add", &inside_cidr, "dev", &inside_if])?;
        ip_in(&["link", "set", &inside_if, "up"])?;
        ip_in(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Run a command inside the namespace.
    fn exec(&self, program: &str, args: &[&str]) -> Result<(), String> {
        let mut all = vec!["netns", "exec", &self.name, program];
        all.extend_from_slice(args);
        sh("ip", &all)
    }

    /// A TCP connection to `addr` made from inside the namespace.
    async fn connect(&self, addr: SocketAddr) -> std::io::Result<TcpStream> {
        let path = format!("/var/run/netns/{}", self.name);
        // A thread of its own joins the namespace and ends: no pooled thread
        // is left behind inside it. The socket stays in the namespace.
        let thread = std::thread::spawn(move || {
            let ns = std::fs::File::open(&path)?;
            rustix::thread::move_into_link_name_space(
                std::os::fd::AsFd::as_fd(&ns),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )?;
            std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        });
        let std_stream = tokio::task::spawn_blocking(move || thread.join())
            .await
            .expect("join task")
            .expect("connect thread")?;
        std_stream.set_nonblocking(true)?;
        TcpStream::from_std(std_stream)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Deleting the namespace removes its end of the pair, and with it ours.
        let _ = sh("ip", &["netns", "del", &self.name]);
        let _ = sh("ip", &["link", "del", &self.host_if]);
    }
}

type Client = WebSocket<TcpStream>;

/// A WebSocket call from the namespace: the status, and on 101 the socket
/// with the backend's hello already read.
async fn call_from(ns: &NetNs, addr: SocketAddr) -> (Option<u16>, Option<Client>) {
    let mut stream = ns.connect(addr).await.expect("connect from the namespace");
    stream
        .write_all(&ws_handshake("/audio", &[]))
        .await
        .expect("send the handshake");
    let head = tokio::time::timeout(Duration::from_secs(5), read_head(&mut stream))
        .await
        .expect("an answer in time")
        .unwrap_or_default();
    let status = parse_answer(&head).status;
    if status != Some(101) {
        return (status, None);
    }
    let mut ws = WebSocket::after_handshake(stream, Role::Client);
    ws.set_auto_close(false);
    let hello = recv(&mut ws).await.expect("hello");
    assert!(hello.starts_with(b"hello from"), "{hello:?}");
    (status, Some(ws))
}

async fn recv(ws: &mut Client) -> Option<Vec<u8>> {
    match tokio::time::timeout(Duration::from_secs(10), ws.read_frame()).await {
        Ok(Ok(f)) if matches!(f.opcode, OpCode::Text | OpCode::Binary) => Some(f.payload.to_vec()),
        _ => None,
    }
}

async fn send(ws: &mut Client, data: &[u8]) {
    ws.write_frame(Frame::binary(Payload::Owned(data.to_vec())))
        .await
        .expect("send a frame");
}

/// shunt on the host end of the pair, in front of an echo backend on loopback.
async fn shunt_on(ns: &NetNs, backend: &EchoBackend, flags: &[&str]) -> support::Shunt {
    shunt()
        .direct(backend.url())
        .route("/=direct")
        .arg("--listen", format!("{}:0", ns.host))
        .flags(flags)
        .start()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_open_client_is_found_by_tcp_keepalive_and_both_legs_close() {
    let Some(ns) = NetNs::create("half-open") else {
        return;
    };
    let backend = echo_backend().name("direct").spawn().await;
    let proxy = shunt_on(
        &ns,
        &backend,
        &["--tcp-keepalive", "1s", "--idle-timeout", "1h"],
    )
    .await;
    let (status, ws) = call_from(&ns, proxy.addr()).await;
    assert_eq!(status, Some(101));
    let mut ws = ws.unwrap();
    send(&mut ws, b"frame before the drop").await;
    assert_eq!(
        recv(&mut ws).await.as_deref(),
        Some(&b"frame before the drop"[..])
    );
    assert_eq!(backend.active_websockets(), 1);

    // The laptop vanishes: every packet dropped, no FIN, no RST.
    ns.exec("iptables", &["-A", "INPUT", "-j", "DROP"]).unwrap();
    ns.exec("iptables", &["-A", "OUTPUT", "-j", "DROP"])
        .unwrap();

    // keepalive 1s: idle 1s + 3 probes 1s apart, about 4s; allow generously.
    let closed = eventually(Duration::from_secs(30), async || {
        backend.active_websockets() == 0
    })
    .await;
    assert!(closed, "the upstream leg of a half-open call stayed open");
    let status = proxy.status().await.unwrap();
    assert_eq!(status["active_tunnels"], 0, "{status}");
    drop(ws);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_lists_apply_to_the_namespace_address() {
    let Some(ns) = NetNs::create("ip lists") else {
        return;
    };
    let backend = echo_backend().name("direct").spawn().await;
    let inside = format!("{}/32", ns.inside);

    let denying = shunt_on(&ns, &backend, &["--deny-ip", &inside]).await;
    let (status, _) = call_from(&ns, denying.addr()).await;
    assert_eq!(status, Some(403), "--deny-ip {inside}");

    let allowing = shunt_on(&ns, &backend, &["--allow-ip", &inside]).await;
    let (status, ws) = call_from(&ns, allowing.addr()).await;
    assert_eq!(status, Some(101), "--allow-ip {inside}");
    let mut ws = ws.unwrap();
    send(&mut ws, b"allowed").await;
    assert_eq!(recv(&mut ws).await.as_deref(), Some(&b"allowed"[..]));
    // The host itself (not in the list) is refused by the same shunt.
    let from_host = ns.host.to_string();
    let answer =
        support::raw::raw_from(allowing.addr(), &from_host, &support::raw::get("/", &[])).await;
    assert_eq!(answer.status, Some(403), "{:?}", answer.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audio_continues_in_order_through_loss_and_jitter() {
    let Some(ns) = NetNs::create("loss and jitter") else {
        return;
    };
    let netem = [
        "qdisc",
        "add",
        "dev",
        &ns.inside_if,
        "root",
        "netem",
        "loss",
        "5%",
        "delay",
        "40ms",
        "20ms",
    ];
    if let Err(why) = ns.exec("tc", &netem) {
        if std::env::var("SHUNT_REQUIRE_NETEM").is_ok_and(|v| v == "1") {
            panic!("tc netem required: {why}");
        }
        eprintln!("skipping loss and jitter: tc netem unavailable here: {why}");
        return;
    }
    let backend = echo_backend().name("direct").spawn().await;
    let proxy = shunt_on(&ns, &backend, &[]).await;
    let (_, ws) = call_from(&ns, proxy.addr()).await;
    let mut ws = ws.expect("a call through netem");
    // 100 frames at 20 ms cadence, one reader per direction would be ideal;
    // the echo keeps order per frame, so sending then reading in turn suffices.
    for i in 0u32..100 {
        let frame = i.to_be_bytes();
        send(&mut ws, &frame).await;
        assert_eq!(
            recv(&mut ws).await.as_deref(),
            Some(&frame[..]),
            "frame {i}"
        );
    }
}
