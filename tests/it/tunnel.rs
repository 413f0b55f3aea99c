//! The raw byte tunnel, exactly: both paths (splice and buffered copy) carry
//! large, small and fragmented streams, bytes sent past either handshake,
//! half-closes both ways, idle timeouts, thousands of tunnels at once, and an
//! idle tunnel holds no pipe. Plain requests reuse keep-alive upstream
//! connections.
//!
//! The upstream here is a hand-written TCP server that answers any request
//! with `101 Switching Protocols` and then hands its socket to the test, so
//! every byte on both legs is under the test's control.
//!
//! Raw bytes go through with `--frames off`: followed as frames, random
//! bytes parse as WebSocket frames, a Close among them (the 41st frame of
//! `small_fragmented_writes_arrive_in_order`'s stream), and once the echoed
//! Close completes the handshake shunt ends the tunnel, resetting a client
//! that still writes; how soon depends on timing, so such a test fails only
//! sometimes. `small_fragmented_frames_arrive_in_order` covers the framed
//! path with real frames written a few bytes at a time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::support;
use crate::support::raw::{read_head, upgrade_with};
use crate::support::{Shunt, eventually, shunt};

/// Bound on every wait for a tunnel state.
const WAIT: Duration = Duration::from_secs(5);

const MODES: [&str; 2] = ["splice", "copy"];

const SWITCHING: &[u8] =
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n";

/// A raw upstream: answers 101 (plus `early` in the same write) and sends each
/// upgraded socket to the test, or echoes on it.
struct RawUpstream {
    addr: SocketAddr,
    accepted: mpsc::UnboundedReceiver<TcpStream>,
}

#[derive(Clone, Copy)]
enum Then {
    /// Hand the socket to the test.
    Hand,
    /// Echo every byte; on EOF, half-close.
    Echo,
}

async fn raw_upstream(early: &'static [u8], then: Then) -> RawUpstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, accepted) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                // Health probes connect and leave: no head, nothing to do.
                let Some(head) = read_head(&mut s).await else {
                    return;
                };
                // shunt's WebSocket check of the route (`X-Shunt-Probe: 1`)
                // is not a tunnel: never hand it to the test as one.
                if String::from_utf8_lossy(&head)
                    .to_ascii_lowercase()
                    .contains("\r\nx-shunt-probe: 1\r\n")
                {
                    return;
                }
                let mut answer = SWITCHING.to_vec();
                answer.extend_from_slice(early);
                if s.write_all(&answer).await.is_err() {
                    return;
                }
                match then {
                    Then::Hand => {
                        let _ = tx.send(s);
                    }
                    Then::Echo => echo(s).await,
                }
            });
        }
    });
    RawUpstream { addr, accepted }
}

async fn echo(mut s: TcpStream) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = s.shutdown().await;
                return;
            }
            Ok(n) => {
                if s.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// shunt in front of `upstream` with tunnel mode `mode` and `extra` flags;
/// health probes rare, so the raw upstream sees the test's connections only.
/// Frames are not followed: these streams are raw bytes, not WebSocket
/// frames (see the module's note).
async fn start_shunt(upstream: SocketAddr, mode: &str, extra: &[&str]) -> Shunt {
    shunt_with_frames(upstream, mode, "off", extra).await
}

/// [`start_shunt`] with `--frames` set to `frames`.
async fn shunt_with_frames(
    upstream: SocketAddr,
    mode: &str,
    frames: &str,
    extra: &[&str],
) -> Shunt {
    shunt()
        .direct(format!("http://{upstream}"))
        .arg("--tunnel-mode", mode)
        .arg("--frames", frames)
        .arg("--health-interval", "60s")
        .arg("--drain-timeout", "1s")
        .flags(extra)
        .start()
        .await
}

/// Wait (bounded) until shunt reports no open tunnel.
async fn wait_tunnels_closed(shunt: &Shunt, what: &str) {
    let closed = eventually(WAIT, async || {
        shunt.status().await.unwrap()["active_tunnels"] == 0
    })
    .await;
    assert!(closed, "timed out waiting for {what}");
}

/// The relay's pipes in use, from `/status`.
async fn pipes_in_use(shunt: &Shunt) -> u64 {
    shunt.status().await.unwrap()["tunnel"]["pipes_in_use"]
        .as_u64()
        .unwrap()
}

/// Deterministic bytes: a xorshift stream, so both ends can check without storing.
struct Pattern(u64);

impl Pattern {
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            chunk.copy_from_slice(&self.0.to_le_bytes()[..chunk.len()]);
        }
    }
}

/// Write `total` pattern bytes in writes of `sizes` (cycled), then half-close.
async fn send_pattern(
    mut w: impl tokio::io::AsyncWrite + Unpin,
    seed: u64,
    total: usize,
    sizes: &[usize],
) {
    let mut pattern = Pattern(seed);
    let mut sent = 0;
    let mut buf = vec![0u8; 256 * 1024];
    let mut i = 0;
    while sent < total {
        let n = sizes[i % sizes.len()].min(total - sent);
        i += 1;
        pattern.fill(&mut buf[..n]);
        w.write_all(&buf[..n]).await.unwrap();
        sent += n;
    }
    w.shutdown().await.unwrap();
}

/// Read to EOF and check the bytes are exactly the pattern of `total` bytes.
async fn expect_pattern(mut r: impl tokio::io::AsyncRead + Unpin, seed: u64, total: usize) {
    // The pattern comes in 8-byte words, so writers use multiples of 8 bytes.
    let mut pattern = Pattern(seed);
    let mut expected = vec![0u8; 0];
    let mut got = 0usize;
    let mut buf = vec![0u8; 128 * 1024];
    loop {
        let n = r.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        while expected.len() < n {
            let mut more = vec![0u8; 64 * 1024];
            pattern.fill(&mut more);
            expected.extend_from_slice(&more);
        }
        assert_eq!(&buf[..n], &expected[..n], "mismatch at byte {got}");
        expected.drain(..n);
        got += n;
    }
    assert_eq!(got, total, "bytes received");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_stream_both_ways_is_exact_and_counted() {
    const TOTAL: usize = 64 * 1024 * 1024;
    for mode in MODES {
        let mut upstream = raw_upstream(b"", Then::Hand).await;
        let shunt = start_shunt(upstream.addr, mode, &[]).await;
        let client = upgrade_with(shunt.addr(), b"").await;
        let server = upstream.accepted.recv().await.unwrap();
        let (cr, cw) = client.into_split();
        let (sr, sw) = server.into_split();
        // Writes of multiples of 8 so the pattern lines up across writes.
        tokio::join!(
            send_pattern(cw, 1, TOTAL, &[256 * 1024, 8, 65536, 4096]),
            expect_pattern(sr, 1, TOTAL),
            send_pattern(sw, 2, TOTAL, &[65536]),
            expect_pattern(cr, 2, TOTAL),
        );
        wait_tunnels_closed(&shunt, "the tunnel to close").await;
        let status = shunt.status().await.unwrap();
        let t = &status["tunnels"][0];
        assert_eq!(t["bytes_downstream_to_upstream"], TOTAL as u64, "{mode}");
        assert_eq!(t["bytes_upstream_to_downstream"], TOTAL as u64, "{mode}");
        assert_eq!(status["tunnel"]["mode"], mode);
        assert_eq!(status["tunnel"]["pipes_in_use"], 0);
        if mode == "splice" {
            // The bulk transfer went through pipes, now back in the pool.
            assert!(status["tunnel"]["pipes_open"].as_u64().unwrap() > 0);
        }
        shunt.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_message_comes_back_whole_without_a_close_to_push_it() {
    // One 4 MiB write, echoed, with both sides kept open: nothing may stay
    // queued in a socket waiting for an event that only a FIN would bring.
    const SIZE: usize = 4 * 1024 * 1024;
    for mode in MODES {
        let upstream = raw_upstream(b"", Then::Echo).await;
        let shunt = start_shunt(upstream.addr, mode, &[]).await;
        let mut client = upgrade_with(shunt.addr(), b"").await;
        let mut msg = vec![0u8; SIZE];
        Pattern(5).fill(&mut msg);
        for round in 0..3 {
            let (mut r, mut w) = client.split();
            let mut back = vec![0u8; SIZE];
            let echoed = async { tokio::join!(w.write_all(&msg), r.read_exact(&mut back)) };
            let (sent, got) = tokio::time::timeout(Duration::from_secs(20), echoed)
                .await
                .unwrap_or_else(|_| panic!("{mode} round {round}: echo stalled"));
            sent.unwrap();
            got.unwrap();
            assert!(back == msg, "{mode} round {round}: echo differs");
        }
        drop(client);
        shunt.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_fragmented_writes_arrive_in_order() {
    for mode in MODES {
        let upstream = raw_upstream(b"", Then::Echo).await;
        // Raw bytes, not WebSocket frames: the byte relay. (Followed as
        // frames, random bytes parse as frames, a Close among them; shunt then
        // ends the tunnel CLOSE_WAIT after that "Close", resetting a client
        // that still writes. The framed twin below sends real frames.)
        let shunt = start_shunt(upstream.addr, mode, &[]).await;
        let mut client = upgrade_with(shunt.addr(), b"").await;
        // Ping-pong single bytes and small frames: each must come back alone.
        for i in 0..300u32 {
            let msg = i.to_le_bytes();
            let n = 1 + (i as usize % 4);
            client.write_all(&msg[..n]).await.unwrap();
            let mut back = [0u8; 4];
            client.read_exact(&mut back[..n]).await.unwrap();
            assert_eq!(&back[..n], &msg[..n], "{mode} round {i}");
        }
        // Then a stream of tiny writes without waiting.
        let (cr, cw) = client.into_split();
        let total = 8 * 5000;
        tokio::join!(
            send_pattern(cw, 7, total, &[8]),
            expect_pattern(cr, 7, total)
        );
        shunt.stop().await;
    }
}

/// A masked client frame (binary, FIN) carrying `payload` (under 126 bytes).
fn client_frame(payload: &[u8]) -> Vec<u8> {
    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
    let mut frame = vec![0x82, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&MASK);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    frame
}

/// Read one unmasked server frame with FIN (a payload under 64 KiB): its
/// opcode and payload.
async fn read_server_frame(r: &mut (impl tokio::io::AsyncRead + Unpin)) -> (u8, Vec<u8>) {
    let mut head = [0u8; 2];
    r.read_exact(&mut head).await.unwrap();
    assert_eq!(head[0] & 0xf0, 0x80, "FIN and no RSV bits: {:#x}", head[0]);
    assert_eq!(head[1] & 0x80, 0, "a server frame is unmasked");
    let len = match head[1] {
        126 => {
            let mut ext = [0u8; 2];
            r.read_exact(&mut ext).await.unwrap();
            usize::from(u16::from_be_bytes(ext))
        }
        127 => panic!("an unexpected 64-bit length"),
        short => usize::from(short),
    };
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await.unwrap();
    (head[0] & 0x0f, payload)
}

/// The next binary frame's payload.
async fn read_binary(r: &mut (impl tokio::io::AsyncRead + Unpin)) -> Vec<u8> {
    let (opcode, payload) = read_server_frame(r).await;
    assert_eq!(opcode, 0x2, "a binary frame");
    payload
}

/// The framed twin of the test above: real WebSocket frames, written a few
/// bytes at a time, followed by shunt, echoed by a real WebSocket backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_fragmented_frames_arrive_in_order() {
    let mut backend = support::echo_backend().spawn().await;
    for mode in MODES {
        let shunt = shunt_with_frames(backend.addr(), mode, "on", &[]).await;
        let mut client = upgrade_with(shunt.addr(), b"").await;
        // The echo backend greets each call with a text frame.
        assert_eq!(
            read_server_frame(&mut client).await.0,
            0x1,
            "{mode} greeting"
        );
        // Ping-pong: each frame written one byte at a time comes back whole.
        for i in 0..300u32 {
            let msg = i.to_le_bytes();
            let n = 1 + (i as usize % 4);
            for byte in client_frame(&msg[..n]) {
                client.write_all(&[byte]).await.unwrap();
            }
            assert_eq!(
                read_binary(&mut client).await,
                &msg[..n],
                "{mode} round {i}"
            );
        }
        // Then 2,000 frames in 3-byte writes without waiting: all come back,
        // in order.
        let (mut cr, mut cw) = client.into_split();
        const FRAMES: u32 = 2000;
        let send = async {
            let stream: Vec<u8> = (0..FRAMES)
                .flat_map(|i| client_frame(&u64::from(i).to_le_bytes()))
                .collect();
            for chunk in stream.chunks(3) {
                cw.write_all(chunk).await.unwrap();
            }
            cw
        };
        let receive = async {
            for i in 0..FRAMES {
                let got = read_binary(&mut cr).await;
                assert_eq!(got, u64::from(i).to_le_bytes(), "{mode} frame {i}");
            }
        };
        let (mut cw, ()) = tokio::join!(send, receive);
        cw.shutdown().await.unwrap();
        drop((cr, cw));
        wait_tunnels_closed(&shunt, "the framed tunnel to close").await;
        shunt.stop().await;
    }
    backend.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_past_either_handshake_come_first() {
    for mode in MODES {
        let mut upstream = raw_upstream(b"FROM-UPSTREAM", Then::Hand).await;
        let shunt = start_shunt(upstream.addr, mode, &[]).await;
        let mut client = upgrade_with(shunt.addr(), b"FROM-CLIENT").await;
        let mut server = upstream.accepted.recv().await.unwrap();
        let mut got = [0u8; 13];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"FROM-UPSTREAM", "{mode}");
        let mut got = [0u8; 11];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"FROM-CLIENT", "{mode}");
        // And the tunnel goes on after them.
        client.write_all(b"more").await.unwrap();
        let mut got = [0u8; 4];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"more");
        drop((client, server));
        shunt.stop().await;
    }
}

/// `from` writes `data` (if any) and shuts its write side; what `to` then
/// reads up to EOF.
async fn write_then_shut(from: &mut TcpStream, to: &mut TcpStream, data: &[u8]) -> Vec<u8> {
    from.write_all(data).await.unwrap();
    from.shutdown().await.unwrap();
    let mut got = Vec::new();
    to.read_to_end(&mut got).await.unwrap();
    got
}

/// `from` writes `data`; what `to` reads of the same length.
async fn pass(from: &mut TcpStream, to: &mut TcpStream, data: &[u8]) -> Vec<u8> {
    from.write_all(data).await.unwrap();
    let mut got = vec![0; data.len()];
    to.read_exact(&mut got).await.unwrap();
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_passes_each_way_and_the_other_way_goes_on() {
    for mode in MODES {
        let mut upstream = raw_upstream(b"", Then::Hand).await;
        let shunt = start_shunt(upstream.addr, mode, &[]).await;

        // Downstream closes its write side first, then (a second tunnel)
        // upstream does; both tunnels' sockets stay open to the end.
        let mut held = Vec::new();
        let turns: [(&str, &[u8], &[u8]); 2] = [
            ("client", b"bye", b"still here"),
            ("upstream", b"done", b"reply"),
        ];
        for (closer, data, answer) in turns {
            let mut client = upgrade_with(shunt.addr(), b"").await;
            let mut server = upstream.accepted.recv().await.unwrap();
            let (first, other, sees) = if closer == "client" {
                (&mut client, &mut server, "upstream")
            } else {
                (&mut server, &mut client, "client")
            };
            let got = write_then_shut(first, other, data).await;
            assert_eq!(got, data, "{mode}: {sees} sees the data, then EOF");
            let got = pass(other, first, answer).await;
            assert_eq!(got, answer, "{mode}");
            let rest = write_then_shut(other, first, b"").await;
            assert!(rest.is_empty());
            held.push((client, server));
        }
        wait_tunnels_closed(&shunt, "both tunnels to close").await;
        shunt.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_tunnel_is_closed_after_the_idle_timeout_and_a_busy_one_is_not() {
    for mode in MODES {
        let upstream = raw_upstream(b"", Then::Echo).await;
        // Raw bytes: the byte relay (tests/it/calls.rs has the framed case).
        let shunt = start_shunt(upstream.addr, mode, &["--idle-timeout", "400ms"]).await;
        let mut busy = upgrade_with(shunt.addr(), b"").await;
        let mut idle = upgrade_with(shunt.addr(), b"").await;
        let started = Instant::now();
        // Busy: a byte every 100 ms for 1 s, well past the idle timeout.
        for _ in 0..10 {
            busy.write_all(b"x").await.unwrap();
            let mut b = [0u8; 1];
            busy.read_exact(&mut b).await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Idle: already closed by shunt.
        let mut rest = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(2), idle.read_to_end(&mut rest))
            .await
            .expect("idle tunnel closed");
        assert!(n.is_err() || rest.is_empty(), "{mode}");
        assert!(started.elapsed() >= Duration::from_millis(400));
        busy.write_all(b"y").await.unwrap();
        let mut b = [0u8; 1];
        busy.read_exact(&mut b).await.unwrap();
        shunt.stop().await;
    }
}

/// Raise the soft descriptor limit towards the hard one, bounded.
fn raise_fd_limit(want: u64) {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut lim = getrlimit(Resource::Nofile);
    let hard = lim.maximum.unwrap_or(want);
    let target = want.min(hard);
    if lim.current.is_some_and(|c| c < target) {
        lim.current = Some(target);
        let _ = setrlimit(Resource::Nofile, lim);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_tunnels_at_once_and_idle_ones_hold_no_pipe() {
    const TUNNELS: usize = 2000;
    // Each tunnel: client + shunt's two legs + upstream = 4 descriptors in this process.
    raise_fd_limit(16_384);
    for mode in MODES {
        let upstream = raw_upstream(b"", Then::Echo).await;
        let shunt = start_shunt(upstream.addr, mode, &["--max-pipes", "64"]).await;
        let mut clients = Vec::with_capacity(TUNNELS);
        for _ in 0..TUNNELS / 100 {
            let batch: Vec<_> = (0..100).map(|_| upgrade_with(shunt.addr(), b"")).collect();
            clients.extend(futures_join_all(batch).await);
        }
        // Every tunnel carries a message each way, all at once.
        let rounds: Vec<_> = clients
            .iter_mut()
            .enumerate()
            .map(|(i, c)| async move {
                let msg = format!("tunnel {i:05} says hello");
                c.write_all(msg.as_bytes()).await.unwrap();
                let mut back = vec![0u8; msg.len()];
                c.read_exact(&mut back).await.unwrap();
                assert_eq!(back, msg.as_bytes());
            })
            .collect();
        futures_join_all(rounds).await;
        let status = shunt.status().await.unwrap();
        assert_eq!(status["active_tunnels"], TUNNELS as u64, "{mode}");
        // Nothing moves now: no tunnel holds a pipe, though all stay open.
        assert!(
            eventually(WAIT, async || pipes_in_use(&shunt).await == 0).await,
            "timed out waiting for pipes to be given back"
        );
        let open = shunt.status().await.unwrap()["tunnel"]["pipes_open"]
            .as_u64()
            .unwrap();
        assert!(open <= 64, "{mode}: pipe pool bounded, {open} open");
        drop(clients);
        wait_tunnels_closed(&shunt, "tunnels to close").await;
        shunt.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_pipe_pool_falls_back_to_copying_per_burst() {
    const TOTAL: usize = 8 * 1024 * 1024;
    let upstream = raw_upstream(b"", Then::Echo).await;
    let shunt = start_shunt(upstream.addr, "splice", &["--max-pipes", "1"]).await;
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(upgrade_with(shunt.addr(), b"").await);
    }
    let flows: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, c)| async move {
            let (r, w) = c.into_split();
            tokio::join!(
                send_pattern(w, 10 + i as u64, TOTAL, &[65536]),
                expect_pattern(r, 10 + i as u64, TOTAL)
            );
        })
        .collect();
    futures_join_all(flows).await;
    let status = shunt.status().await.unwrap();
    assert!(status["tunnel"]["pipes_open"].as_u64().unwrap() <= 1);
    assert!(status["tunnel"]["pool_exhausted"].as_u64().unwrap() > 0);
    shunt.stop().await;
}

/// Run futures concurrently on this task (no extra dependency).
async fn futures_join_all<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    // Poll them all from this task; each wake polls the unfinished ones.
    let mut pinned: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = (0..pinned.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in pinned.iter_mut().enumerate() {
            if outputs[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => outputs[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().map(Option::unwrap).collect()
}

/// A raw HTTP/1.1 upstream answering `200 ok` to every request on a
/// connection; counts connections. With `close_each`, it closes the
/// connection after each answer without saying so (a keep-alive race).
async fn http_upstream(close_each: bool) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let counter = conns.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut counted = false;
                while read_head(&mut s).await.is_some() {
                    if !counted {
                        counter.fetch_add(1, Ordering::SeqCst);
                        counted = true;
                    }
                    let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                    if s.write_all(answer).await.is_err() || close_each {
                        return;
                    }
                }
            });
        }
    });
    (addr, conns)
}

async fn get_ok(shunt: &Shunt) {
    let mut s = TcpStream::connect(shunt.addr()).await.unwrap();
    s.write_all(b"GET /plain HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.ends_with("\r\n\r\nok"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_requests_reuse_one_keep_alive_upstream_connection() {
    let (addr, conns) = http_upstream(false).await;
    let shunt = start_shunt(addr, "auto", &[]).await;
    for _ in 0..10 {
        get_ok(&shunt).await;
    }
    assert_eq!(
        conns.load(Ordering::SeqCst),
        1,
        "one upstream connection for 10 requests"
    );
    shunt.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_the_upstream_closed_is_replaced_transparently() {
    let (addr, conns) = http_upstream(true).await;
    let shunt = start_shunt(addr, "auto", &[]).await;
    for _ in 0..5 {
        get_ok(&shunt).await;
        // Let the upstream's close arrive, or race it: both must work.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(conns.load(Ordering::SeqCst), 5);
    shunt.stop().await;
}
