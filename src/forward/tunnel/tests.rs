//! The tunnel task over in-memory pipes (the TLS case), with paused time
//! where the logic is the timers'; the plain TCP paths are exercised end to
//! end in `tests/tunnel.rs` and `tests/calls.rs`. And what an idle call
//! costs in memory.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, duplex};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::direction::Direction;
use super::frames::{self, MAX_CONTROL_FRAME};
use super::leg::Stream;
use super::task::{Ending, Loss, Side, Tunnel};
use super::{Relay, TunnelParts, TunnelTimers};
use crate::calls::{CallGuard, CallInfo, CallRegistry};
use crate::config::{TunnelMode, TunnelSettings, UpstreamName};
use crate::stats::{Stats, TunnelGuard};

/// A relay that only copies, as `--tunnel-mode copy` makes it.
fn copy_only() -> Arc<Relay> {
    Arc::new(Relay::start(&TunnelSettings {
        mode: TunnelMode::Copy,
        pipe_size: 0,
        max_pipes: 0,
    }))
}

/// Run the tunnel task over two streams, as a tunnel with a TLS leg runs,
/// until it ends; `to_upstream_first` are bytes read past the downstream's
/// handshake. `timers` are the route's deadlines; `shutdown` starts the
/// drain; `guard` and `call` are the `/status` and `/calls` entries,
/// settled when it returns.
async fn run_over_streams<D, U>(
    downstream: D,
    upstream: U,
    to_upstream_first: &[u8],
    timers: TunnelTimers,
    shutdown: CancellationToken,
    guard: TunnelGuard,
    call: CallGuard,
) -> Ending
where
    D: AsyncRead + AsyncWrite + Unpin + Send,
    U: AsyncRead + AsyncWrite + Unpin + Send,
{
    let parts = TunnelParts {
        guard,
        call,
        slot: None,
        timers,
        reattach: None,
    };
    Tunnel::new(
        (Stream(downstream), to_upstream_first),
        (Stream(upstream), &[]),
        parts,
        copy_only(),
    )
    .run(shutdown)
    .await
}

/// Deadlines that never fire in a test (an hour idle, 30 s drain); a test
/// shortens the one it is about.
fn timers() -> TunnelTimers {
    TunnelTimers::relay(Duration::from_secs(3600), Duration::from_secs(30))
}

/// A `/status` entry and a `/calls` record for one call on route `/t`, frames
/// tracked when `frames`; the registry is returned so a test can see the call
/// leave it.
fn guards(frames: bool) -> (TunnelGuard, CallGuard, Arc<CallRegistry>) {
    let stats = Arc::new(Stats::default());
    let registry = Arc::new(CallRegistry::default());
    let guard = stats.open_tunnel("/t", &UpstreamName("direct".into()));
    let call = registry.open(CallInfo {
        user: None,
        client: "127.0.0.1:1".parse().unwrap(),
        host: None,
        path: "/t".into(),
        route: "/t".into(),
        upstream: "direct".into(),
        generation: 1,
        frames,
        reattach: false,
    });
    (guard, call, registry)
}

/// `len` bytes that change from one position to the next, so a dropped or
/// reordered byte shows in an equality check.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// A binary frame with `len` payload bytes, masked when `mask`.
fn frame(len: usize, mask: bool) -> Vec<u8> {
    let mut head = [0; frames::MAX_HEADER];
    let n = frames::write_header(&mut head, 0x82, len as u64, mask.then_some([1, 2, 3, 4]));
    let mut v = head[..n].to_vec();
    v.extend(pattern(len, 3));
    v
}

/// A Close frame with `code`, masked as a client's when `mask`.
fn close(code: u16, mask: bool) -> Vec<u8> {
    let mut out = [0; MAX_CONTROL_FRAME];
    let n = frames::control_frame(
        &mut out,
        frames::OP_CLOSE,
        &code.to_be_bytes(),
        mask.then_some([9, 8, 7, 6]),
    );
    out[..n].to_vec()
}

/// Read frames from `s` until a Close; returns (frames before it, its code).
async fn read_until_close(s: &mut DuplexStream) -> (usize, u16) {
    let mut buf = Vec::new();
    let mut frames_before = 0;
    loop {
        let mut chunk = [0; 4096];
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed without a Close frame");
        buf.extend_from_slice(&chunk[..n]);
        while let Ok(Some(h)) = frames::parse(&buf) {
            let total = usize::from(h.header_len) + h.len as usize;
            if buf.len() < total {
                break;
            }
            if h.opcode == frames::OP_CLOSE {
                let mut two = [0; 2];
                frames::unmask_into(&buf[usize::from(h.header_len)..], h.mask, &mut two);
                return (frames_before, u16::from_be_bytes(two));
            }
            frames_before += 1;
            buf.drain(..total);
        }
    }
}

/// Untracked, byte for byte: the early bytes go first, partial writes keep
/// only their remainder, and one direction goes on after the other's
/// half-close; the byte counts reach `/calls` and the call leaves the registry.
#[tokio::test]
async fn buffered_relay_is_exact_with_partial_writes_early_bytes_and_half_close() {
    // A 1 KiB duplex forces partial writes: only the remainder is kept.
    let (mut client, proxy_down) = duplex(1024);
    let (proxy_up, mut server) = duplex(1024);
    let (guard, call, registry) = guards(false);
    let record = call.call.clone();
    let up = pattern(300_000, 1);
    let down = pattern(200_000, 7);
    let relay = run_over_streams(
        proxy_down,
        proxy_up,
        b"EARLY",
        timers(),
        CancellationToken::new(),
        guard,
        call,
    );
    let drive = async {
        let client_side = async {
            client.write_all(&up).await.unwrap();
            client.shutdown().await.unwrap();
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.unwrap();
            got
        };
        let server_side = async {
            let mut got = Vec::new();
            server.read_to_end(&mut got).await.unwrap();
            // Downstream has half-closed; this direction still goes on.
            server.write_all(&down).await.unwrap();
            server.shutdown().await.unwrap();
            got
        };
        tokio::join!(client_side, server_side)
    };
    let (ending, (client_got, server_got)) = tokio::join!(relay, drive);
    assert_eq!(ending, Ending::Closed);
    assert_eq!(&server_got[..5], b"EARLY");
    assert_eq!(&server_got[5..], &up[..]);
    assert_eq!(client_got, down);
    assert_eq!(record.dirs[0].bytes.load(Relaxed), 300_005);
    assert_eq!(record.dirs[1].bytes.load(Relaxed), 200_000);
    assert_eq!(record.dirs[0].frames.load(Relaxed), 0, "frames off");
    assert_eq!(registry.active(), 0);
}

/// Every length encoding (7-bit, 16-bit, 64-bit, at their edges) passes
/// unchanged both ways; frames are counted with the Close, messages without.
#[tokio::test]
async fn tracked_frames_pass_unchanged_and_are_counted() {
    let (mut client, proxy_down) = duplex(1000);
    let (proxy_up, mut server) = duplex(1000);
    let (guard, call, _registry) = guards(true);
    let record = call.call.clone();
    let mut up = Vec::new();
    for len in [0, 1, 125, 126, 127, 65535, 65536, 200_000] {
        up.extend(frame(len, true));
    }
    up.extend(close(1000, true));
    let mut down = Vec::new();
    for len in [125, 126, 65535, 65536] {
        down.extend(frame(len, false));
    }
    down.extend(close(1000, false));
    let relay = run_over_streams(
        proxy_down,
        proxy_up,
        &[],
        timers(),
        CancellationToken::new(),
        guard,
        call,
    );
    let drive = async {
        let c = async {
            client.write_all(&up).await.unwrap();
            let mut got = vec![0; down.len()];
            client.read_exact(&mut got).await.unwrap();
            client.shutdown().await.unwrap();
            got
        };
        let s = async {
            let mut got = vec![0; up.len()];
            server.read_exact(&mut got).await.unwrap();
            server.write_all(&down).await.unwrap();
            server.shutdown().await.unwrap();
            got
        };
        tokio::join!(c, s)
    };
    let (ending, (client_got, server_got)) = tokio::join!(relay, drive);
    assert_eq!(ending, Ending::Closed);
    assert_eq!(server_got, up);
    assert_eq!(client_got, down);
    assert_eq!(record.dirs[0].frames.load(Relaxed), 9);
    assert_eq!(record.dirs[0].messages.load(Relaxed), 8);
    assert_eq!(record.dirs[1].frames.load(Relaxed), 5);
}

/// An untracked tunnel ends at the idle timeout with nothing sent; a tracked
/// one at the drain deadline sends 1012 to the client, then 1001 to the
/// backend, and ends as soon as both answer rather than at the close wait.
#[tokio::test(start_paused = true)]
async fn idle_and_drain_close_with_codes_when_tracked_and_bare_when_not() {
    // Untracked: a plain byte relay, closed with no frame.
    let (_client, proxy_down) = duplex(1024);
    let (proxy_up, _server) = duplex(1024);
    let (guard, call, _r) = guards(false);
    let mut t = timers();
    t.idle = Duration::from_millis(100);
    let shutdown = CancellationToken::new();
    let ending =
        run_over_streams(proxy_down, proxy_up, &[], t, shutdown.clone(), guard, call).await;
    assert_eq!(ending, Ending::Idle);

    // Tracked, at the drain deadline: 1012 to the client, then 1001 to the backend.
    let (mut client, proxy_down) = duplex(4096);
    let (proxy_up, mut server) = duplex(4096);
    let (guard, call, _r) = guards(true);
    let mut t = timers();
    t.drain = Duration::from_millis(150);
    let shutdown = CancellationToken::new();
    shutdown.cancel();
    let started = tokio::time::Instant::now();
    let relay = run_over_streams(proxy_down, proxy_up, &[], t, shutdown, guard, call);
    let peers = async {
        let (_, code) = read_until_close(&mut client).await;
        assert_eq!(code, 1012);
        client.write_all(&close(1012, true)).await.unwrap();
        let (_, code) = read_until_close(&mut server).await;
        assert_eq!(code, 1001);
        server.write_all(&close(1001, false)).await.unwrap();
    };
    let (ending, ()) = tokio::join!(relay, peers);
    assert_eq!(ending, Ending::Drained);
    assert!(started.elapsed() >= Duration::from_millis(150));
    assert!(
        started.elapsed() < Duration::from_millis(1150),
        "answered Closes end it at once"
    );
}

/// A client that never answers shunt's Ping is lost at the ping timeout and
/// the backend gets 1001; the backend's Pong to shunt's own Ping is cut out
/// and not counted as a frame.
#[tokio::test(start_paused = true)]
async fn a_silent_client_is_pinged_then_lost_and_the_backend_gets_1001() {
    let (mut client, proxy_down) = duplex(4096);
    let (proxy_up, mut server) = duplex(4096);
    let (guard, call, _r) = guards(true);
    let record = call.call.clone();
    let mut t = timers();
    // The backend's next ping would be due at 600 ms, after the client is found dead.
    t.ping_interval = Some(Duration::from_millis(300));
    t.ping_timeout = Duration::from_millis(200);
    let started = tokio::time::Instant::now();
    let relay = run_over_streams(
        proxy_down,
        proxy_up,
        &[],
        t,
        CancellationToken::new(),
        guard,
        call,
    );
    let backend = async {
        // The backend answers shunt's ping (its pong is removed), then sees the Close.
        let mut buf = [0; 64];
        let n = server.read(&mut buf).await.unwrap();
        let h = frames::parse(&buf[..n]).unwrap().unwrap();
        assert_eq!(h.opcode, frames::OP_PING);
        assert!(h.mask.is_some(), "pings to the backend are masked");
        let mut payload = [0; 13];
        frames::unmask_into(&buf[usize::from(h.header_len)..n], h.mask, &mut payload);
        let mut pong = [0; MAX_CONTROL_FRAME];
        let m = frames::control_frame(&mut pong, frames::OP_PONG, &payload, None);
        server.write_all(&pong[..m]).await.unwrap();
        let (before, code) = read_until_close(&mut server).await;
        assert_eq!((before, code), (0, 1001));
        server.write_all(&close(1001, false)).await.unwrap();
        // The client got shunt's ping too, and nothing of the backend's pong.
        let mut got = [0; 64];
        let n = client.read(&mut got).await.unwrap();
        let h = frames::parse(&got[..n]).unwrap().unwrap();
        assert_eq!(h.opcode, frames::OP_PING);
        assert!(h.mask.is_none());
        assert_eq!(n, usize::from(h.header_len) + 13, "only the ping");
    };
    let (ending, ()) = tokio::join!(relay, backend);
    assert_eq!(ending, Ending::Lost(Side::Downstream, Loss::PingTimeout));
    assert!(started.elapsed() <= Duration::from_millis(500 + 50));
    assert_eq!(record.legs[1].pongs_received.load(Relaxed), 1);
    assert_eq!(record.legs[0].pings_sent.load(Relaxed), 1);
    assert_eq!(
        record.dirs[1].frames.load(Relaxed),
        1,
        "the backend's Close only: shunt's pong is not counted"
    );
}

/// Answer `n` of shunt's Pings on `s` (the Pong masked when `mask`);
/// returns when the last one came.
async fn answer_pings(s: &mut DuplexStream, n: usize, mask: bool) -> tokio::time::Instant {
    let mut buf = Vec::new();
    let mut answered = 0;
    loop {
        let mut chunk = [0; 256];
        let k = s.read(&mut chunk).await.unwrap();
        assert!(k > 0, "closed before {n} pings");
        buf.extend_from_slice(&chunk[..k]);
        while let Ok(Some(h)) = frames::parse(&buf) {
            let total = usize::from(h.header_len) + h.len as usize;
            if buf.len() < total {
                break;
            }
            assert_eq!(h.opcode, frames::OP_PING);
            let mut payload = [0; 13];
            frames::unmask_into(&buf[usize::from(h.header_len)..total], h.mask, &mut payload);
            let mut pong = [0; MAX_CONTROL_FRAME];
            let key = mask.then_some([5, 6, 7, 8]);
            let m = frames::control_frame(&mut pong, frames::OP_PONG, &payload, key);
            s.write_all(&pong[..m]).await.unwrap();
            buf.drain(..total);
            answered += 1;
            if answered == n {
                return tokio::time::Instant::now();
            }
        }
    }
}

/// With a ping timeout longer than the interval, an answered Ping's successor
/// is due an interval after the Pong: four Pings each way in four intervals.
#[tokio::test(start_paused = true)]
async fn an_answered_ping_is_followed_by_the_next_one_after_the_interval() {
    let (mut client, proxy_down) = duplex(4096);
    let (proxy_up, mut server) = duplex(4096);
    let (guard, call, _r) = guards(true);
    let record = call.call.clone();
    let mut t = timers();
    // A ping timeout longer than the interval: an answered Ping's next
    // one is due an interval after the Pong, not at the timeout.
    t.ping_interval = Some(Duration::from_millis(100));
    t.ping_timeout = Duration::from_secs(1);
    let started = tokio::time::Instant::now();
    let relay = run_over_streams(
        proxy_down,
        proxy_up,
        &[],
        t,
        CancellationToken::new(),
        guard,
        call,
    );
    let peers = async {
        let (to_client, to_backend) = tokio::join!(
            answer_pings(&mut client, 4, true),
            answer_pings(&mut server, 4, false)
        );
        drop((client, server));
        (to_client - started, to_backend - started)
    };
    let (_, (client_4th, backend_4th)) = tokio::join!(relay, peers);
    let bound = Duration::from_millis(4 * 100 + 50);
    assert!(
        client_4th <= bound,
        "4th Ping to the client at {client_4th:?}"
    );
    assert!(
        backend_4th <= bound,
        "4th Ping to the backend at {backend_4th:?}"
    );
    for leg in &record.legs {
        assert_eq!(leg.pings_sent.load(Relaxed), 4);
        assert_eq!(leg.pongs_received.load(Relaxed), 4);
    }
}

/// The Pong answering shunt's Ping is removed even when split into one-byte
/// writes; another Pong of the same length, data, and a trailing partial
/// frame at the end of the stream all pass byte for byte.
#[tokio::test(start_paused = true)]
async fn shunts_pong_is_cut_out_even_when_it_comes_one_byte_at_a_time() {
    let (mut client, proxy_down) = duplex(4096);
    let (proxy_up, mut server) = duplex(4096);
    let (guard, call, _r) = guards(true);
    let record = call.call.clone();
    let mut t = timers();
    t.ping_interval = Some(Duration::from_millis(100));
    let relay = run_over_streams(
        proxy_down,
        proxy_up,
        &[],
        t,
        CancellationToken::new(),
        guard,
        call,
    );
    let key = Some([5, 6, 7, 8]);
    let control = |opcode, payload: &[u8]| {
        let mut out = [0; MAX_CONTROL_FRAME];
        let n = frames::control_frame(&mut out, opcode, payload, key);
        out[..n].to_vec()
    };
    // Another endpoint's Pong of the same length, also split: it passes.
    let other = control(frames::OP_PONG, b"not shunt's!!");
    let data = frame(300, true);
    // The start of what could be shunt's Pong, then the end of the stream.
    let partial = [0x8A, 0x8D, 5];
    let client_side = async {
        let mut got = [0; 64];
        let n = client.read(&mut got).await.unwrap();
        let h = frames::parse(&got[..n]).unwrap().unwrap();
        assert_eq!(h.opcode, frames::OP_PING);
        let start = usize::from(h.header_len);
        let pong = control(frames::OP_PONG, &got[start..start + h.len as usize]);
        for bytes in [&pong, &other] {
            for b in bytes {
                client.write_all(&[*b]).await.unwrap();
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        client.write_all(&data).await.unwrap();
        client.write_all(&partial).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
        client.shutdown().await.unwrap();
        client
    };
    let server_side = async {
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        server.shutdown().await.unwrap();
        got
    };
    let (_, _client, got) = tokio::join!(relay, client_side, server_side);
    // What the backend got, without shunt's own Pings to it.
    let mut kept = Vec::new();
    let mut at = 0;
    while let Ok(Some(h)) = frames::parse(&got[at..]) {
        let total = usize::from(h.header_len) + h.len as usize;
        if got.len() - at < total {
            break;
        }
        if h.opcode != frames::OP_PING {
            kept.extend_from_slice(&got[at..at + total]);
        }
        at += total;
    }
    kept.extend_from_slice(&got[at..]);
    let mut expect = other.clone();
    expect.extend(&data);
    expect.extend(partial);
    assert_eq!(kept, expect, "only shunt's Pong is cut out, byte for byte");
    assert_eq!(record.legs[0].pongs_received.load(Relaxed), 1);
    assert_eq!(
        record.dirs[0].frames.load(Relaxed),
        2,
        "the other Pong and the data"
    );
}

/// A backend that ends its stream without a Close is lost: the frame before
/// the end still reaches the client, followed by shunt's 1014.
#[tokio::test(start_paused = true)]
async fn a_backend_that_ends_without_close_gives_the_client_1014() {
    let (mut client, proxy_down) = duplex(4096);
    let (proxy_up, mut server) = duplex(4096);
    let (guard, call, _r) = guards(true);
    let relay = run_over_streams(
        proxy_down,
        proxy_up,
        &[],
        timers(),
        CancellationToken::new(),
        guard,
        call,
    );
    let peers = async {
        server.write_all(&frame(10, false)).await.unwrap();
        server.shutdown().await.unwrap();
        drop(server);
        let (before, code) = read_until_close(&mut client).await;
        assert_eq!((before, code), (1, 1014));
        client.write_all(&close(1014, true)).await.unwrap();
    };
    let (ending, ()) = tokio::join!(relay, peers);
    assert_eq!(ending, Ending::Lost(Side::Upstream, Loss::Eof));
}

/// The task an idle call costs is the `run` future: the tunnel, one
/// timer and one shutdown waiter, stored once (wrapped in another `async`
/// block, the tunnel would be stored twice).
#[tokio::test]
async fn the_tunnel_task_stores_the_tunnel_once() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (server, _) = listener.accept().await.unwrap();
    let (guard, call, _registry) = guards(true);
    let parts = TunnelParts {
        guard,
        call,
        slot: None,
        timers: timers(),
        reattach: None,
    };
    let tunnel = Tunnel::new((client, &[]), (server, &[]), parts, copy_only());
    let tunnel_size = size_of_val(&tunnel);
    let task = tunnel.run(CancellationToken::new());
    let waiters = size_of::<tokio::time::Sleep>()
        + size_of::<tokio_util::sync::WaitForCancellationFuture<'static>>();
    assert!(
        size_of_val(&task) <= tunnel_size + waiters + 64,
        "run future {} B for a {tunnel_size} B tunnel",
        size_of_val(&task)
    );
}

/// What an idle tunnel holds is what thousands of calls cost: keep it small.
#[test]
fn an_idle_call_stays_small() {
    assert!(size_of::<Tunnel<TcpStream, TcpStream>>() <= 400);
    assert!(size_of::<Direction>() <= 88);
    assert!(size_of::<frames::Tracker>() <= 24);
    // One registry entry per call (plus the Arc's two counters).
    let call = size_of::<crate::calls::Call>();
    assert!(call <= 304, "a call entry is {call} B");
}
