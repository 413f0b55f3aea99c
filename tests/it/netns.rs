//! Real network failures: a network namespace made by the test, joined to
//! the host by a veth pair with addresses from a private /30 that exists only
//! on that pair, plays the browser. The client socket is created inside the
//! namespace (a thread joins it with `setns`), so shunt sees a real remote
//! address and real packet loss, not loopback.
//!
//! - true half-open: iptables `DROP` inside the namespace mid-call (no FIN,
//!   no RST); `--tcp-keepalive` finds the dead peer and shunt closes both legs;
//! - the same found by the call layer's ping bound alone (`--ping-interval
//!   1s --ping-timeout 1s`, no keepalive): a vanished browser gives the
//!   backend Close 1001, a vanished backend (listening inside the
//!   namespace) gives the browser Close 1014;
//! - `--allow-ip` / `--deny-ip` against the namespace's address;
//! - loss and jitter with `tc netem`: ignored by default, since CI's kernel
//!   has no `sch_netem` module; run it where netem exists with
//!   `SHUNT_REQUIRE=netem cargo test --test it -- --ignored loss_and_jitter`.
//!
//! Needs root and `ip netns`: a missing part is a visible skip, or a failure
//! where it is required (`CI=true`, `SHUNT_REQUIRE=netns`; see
//! [`support::require`]).

use crate::support;
use crate::support::Part;

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use fastwebsockets::{Frame, OpCode, Payload, Role, WebSocket};
use support::calls::{RawWs, WsBackend, next_close};
use support::echo::EchoServer;
use support::raw::{parse_answer, read_head, ws_handshake};
use support::{IO_TIMEOUT, echo_backend, eventually, shunt};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

/// A namespace `shunt-tN-PID` with veth `shNPa` (host, .1) / `shNPb` (inside, .2).
struct NetNs {
    name: String,
    host_if: String,
    inside_if: String,
    host: Ipv4Addr,
    inside: Ipv4Addr,
}

const TEXT: u8 = 1;
const BINARY: u8 = 2;
const CLOSE: u8 = 8;
const PING: u8 = 9;
const PONG: u8 = 10;

static NEXT: AtomicU32 = AtomicU32::new(0);

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
    /// Create the namespace and the pair, or say why not (a visible skip, or
    /// a failure where namespaces are required: see [`support::require`]).
    fn create() -> Option<NetNs> {
        support::require(Part::Netns, NetNs::try_create())
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

    /// Run `f` on a thread of its own that joins the namespace and then
    /// ends: no pooled thread is left behind inside it. Sockets it makes
    /// stay in the namespace.
    async fn inside<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
    ) -> std::io::Result<T> {
        let path = format!("/var/run/netns/{}", self.name);
        let thread = std::thread::spawn(move || {
            let ns = std::fs::File::open(&path)?;
            rustix::thread::move_into_link_name_space(
                std::os::fd::AsFd::as_fd(&ns),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )?;
            f()
        });
        tokio::task::spawn_blocking(move || thread.join())
            .await
            .expect("join task")
            .expect("namespace thread")
    }

    /// A TCP connection to `addr` made from inside the namespace.
    async fn connect(&self, addr: SocketAddr) -> std::io::Result<TcpStream> {
        let std_stream = self
            .inside(move || std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)))
            .await?;
        std_stream.set_nonblocking(true)?;
        TcpStream::from_std(std_stream)
    }

    /// A listener on the namespace's address, port chosen by the kernel.
    async fn listen(&self) -> std::io::Result<TcpListener> {
        let addr = SocketAddr::from((self.inside, 0));
        let std_listener = self
            .inside(move || std::net::TcpListener::bind(addr))
            .await?;
        std_listener.set_nonblocking(true)?;
        TcpListener::from_std(std_listener)
    }

    /// Drop every packet in and out of the namespace: no FIN, no RST.
    fn vanish(&self) {
        for chain in ["INPUT", "OUTPUT"] {
            self.exec("iptables", &["-A", chain, "-j", "DROP"])
                .unwrap_or_else(|e| panic!("{e}"));
        }
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

/// shunt on the host end of the pair, in front of a backend on loopback.
async fn shunt_on(ns: &NetNs, backend: &str, flags: &[&str]) -> support::Shunt {
    shunt()
        .direct(backend)
        .route("/=direct")
        .arg("--listen", format!("{}:0", ns.host))
        .flags(flags)
        .start()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_open_client_is_found_by_tcp_keepalive_and_both_legs_close() {
    let Some(ns) = NetNs::create() else {
        return;
    };
    let backend = echo_backend().name("direct").spawn().await;
    let proxy = shunt_on(
        &ns,
        &backend.url(),
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
    ns.vanish();

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

/// The ping bound of the half-open tests; no TCP keepalive, and an idle
/// timeout far beyond the test, so only the call layer's pings can find it.
const PING_FLAGS: [&str; 6] = [
    "--ping-interval",
    "1s",
    "--ping-timeout",
    "1s",
    "--idle-timeout",
    "1h",
];
/// `--ping-interval` + `--ping-timeout`.
const PING_BOUND: Duration = Duration::from_secs(2);
/// Slack on top of the bound for a loaded machine (a full run under CI
/// once took longer than 3 s): still far below what TCP alone would take,
/// minutes of retransmissions, so a missing ping bound fails. The exact
/// bound is checked in paused time in tests/it/calls.rs
/// (`a_silent_client_is_found_dead_at_interval_plus_timeout_in_paused_time`).
const SLACK: Duration = Duration::from_secs(8);

/// Waits until no call is listed in `/calls` and `/metrics` has `line`.
async fn call_gone_and_counted(proxy: &support::Shunt, line: &str) {
    let done = eventually(Duration::from_secs(10), async || {
        let calls = proxy.admin_json("/calls").await;
        let metrics = proxy.admin_get("/metrics").await.map(|m| m.1);
        calls["calls"].as_array().is_some_and(Vec::is_empty)
            && metrics.is_ok_and(|m| m.contains(line))
    })
    .await;
    let metrics = proxy.admin_get("/metrics").await.map(|m| m.1);
    assert!(
        done,
        "want no call and {line}\n/calls: {}\n/metrics: {metrics:?}",
        proxy.admin_json("/calls").await
    );
}

/// Reads frames on the raw client, answering Pings, until a data frame.
async fn client_data(client: &mut RawWs) -> Vec<u8> {
    loop {
        let f = client.read_frame(IO_TIMEOUT).await.expect("a frame");
        match f.opcode {
            PING => client.send(true, PONG, &f.payload).await.expect("pong"),
            TEXT | BINARY => return f.payload,
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_open_client_is_found_by_the_ping_bound_and_the_backend_gets_1001() {
    let Some(ns) = NetNs::create() else {
        return;
    };
    let mut backend = WsBackend::spawn().await;
    let proxy = shunt_on(&ns, &backend.url(), &PING_FLAGS).await;
    let stream = ns.connect(proxy.addr()).await.expect("connect");
    let mut client = RawWs::handshake(Box::new(stream), "/audio")
        .await
        .expect("a 101 from the namespace");
    let mut server = backend.accept().await;
    server.set_auto_pong(true);
    client.send(true, BINARY, b"up").await.unwrap();
    let up = loop {
        let f = tokio::time::timeout(IO_TIMEOUT, server.read_frame())
            .await
            .expect("a frame in time")
            .expect("a frame");
        if f.opcode == OpCode::Binary {
            break f.payload.to_vec();
        }
    };
    assert_eq!(up, b"up");
    server
        .write_frame(Frame::binary(Payload::Borrowed(b"down")))
        .await
        .unwrap();
    assert_eq!(client_data(&mut client).await, b"down");

    // The laptop vanishes mid-call: every packet dropped, no FIN, no RST.
    ns.vanish();
    let dropped = tokio::time::Instant::now();
    // Panics unless the Close comes within the bound.
    let code = next_close(&mut server, PING_BOUND + SLACK).await;
    eprintln!(
        "backend got Close {code} {:?} after the drop",
        dropped.elapsed()
    );
    assert_eq!(code, 1001, "going away, to the backend of a dead client");
    server.write_frame(Frame::close(1001, b"")).await.unwrap();
    // shunt then closes the backend's socket too.
    let ended = tokio::time::timeout(IO_TIMEOUT, server.read_frame()).await;
    assert!(
        ended.as_ref().is_ok_and(Result::is_err),
        "the backend's socket stays open after the Close exchange"
    );
    call_gone_and_counted(
        &proxy,
        "shunt_tunnel_closes_total{route=\"/\",closed_by=\"shunt\",code=\"1001\"} 1",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_backend_is_found_by_the_ping_bound_and_the_client_gets_1014() {
    let Some(ns) = NetNs::create() else {
        return;
    };
    // The echo backend listens inside the namespace; shunt and the client
    // are on the host's loopback.
    let listener = ns.listen().await.expect("listen in the namespace");
    let backend = EchoServer::serve(listener, "direct").expect("echo backend");
    let proxy = shunt()
        .direct(format!("http://{}", backend.addr()))
        .route("/=direct")
        .flags(&PING_FLAGS)
        .start()
        .await;
    let mut client = RawWs::connect(proxy.addr(), "/audio").await.unwrap();
    let hello = client_data(&mut client).await;
    assert_eq!(hello, b"hello from direct");
    client.send(true, BINARY, b"echo me").await.unwrap();
    assert_eq!(client_data(&mut client).await, b"echo me");
    assert_eq!(backend.active_websockets(), 1);

    // The backend's host vanishes: no FIN, no RST.
    ns.vanish();
    let dropped = tokio::time::Instant::now();
    // Answers shunt's pings meanwhile, as a browser does.
    let (_, close) = client
        .read_until_close(PING_BOUND + SLACK)
        .await
        .expect("a Close within the ping bound");
    eprintln!(
        "client got Close {:?} {:?} after the drop",
        close.close_code(),
        dropped.elapsed()
    );
    assert_eq!(close.close_code(), Some(1014), "bad gateway, to the client");
    client
        .send(true, CLOSE, &1014u16.to_be_bytes())
        .await
        .unwrap();
    assert!(
        client.closed_within(IO_TIMEOUT).await,
        "shunt closes the client's socket after the Close exchange"
    );
    call_gone_and_counted(
        &proxy,
        "shunt_tunnel_closes_total{route=\"/\",closed_by=\"shunt\",code=\"1014\"} 1",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_lists_apply_to_the_namespace_address() {
    let Some(ns) = NetNs::create() else {
        return;
    };
    let backend = echo_backend().name("direct").spawn().await;
    let inside = format!("{}/32", ns.inside);

    let denying = shunt_on(&ns, &backend.url(), &["--deny-ip", &inside]).await;
    let (status, _) = call_from(&ns, denying.addr()).await;
    assert_eq!(status, Some(403), "--deny-ip {inside}");

    let allowing = shunt_on(&ns, &backend.url(), &["--allow-ip", &inside]).await;
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
#[ignore = "needs tc netem (the sch_netem kernel module), which CI's kernel lacks; run with SHUNT_REQUIRE=netem and --ignored"]
async fn audio_continues_in_order_through_loss_and_jitter() {
    let Some(ns) = NetNs::create() else {
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
    if support::require(Part::Netem, ns.exec("tc", &netem)).is_none() {
        return;
    }
    let backend = echo_backend().name("direct").spawn().await;
    let proxy = shunt_on(&ns, &backend.url(), &[]).await;
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
