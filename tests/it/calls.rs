//! The call layer end to end: proxy pings and dead peers, close codes at
//! shutdown and on a lost leg, stalls, `/calls` and the metrics, frames that
//! pass unchanged on both paths, the opaque fallback and `--frames off`.
//!
//! Real sockets on 127.0.0.1, shunt in-process (or as a child process where
//! its log or exit code is asserted), the echo backend or a backend that hands
//! each call to the test, and clients that speak frames by hand.

use crate::support;
use crate::support::Part;

use std::net::SocketAddr;
use std::time::Duration;

use fastwebsockets::{Frame, OpCode, Payload};
use hyper::StatusCode;
use serde_json::Value;

use support::calls::{BackendWs, RawWs, WsBackend, backend_ws, encode, next_close, read_exactly};
use support::shunt::ShuntChild;
use support::{echo_backend, eventually, not_yet, shunt, ws, ws_connect};

const PING: u8 = 9;
const PONG: u8 = 10;
const CLOSE: u8 = 8;

/// `shunt run` as a child with `RUST_LOG=info`, fast probes and `args`, its
/// stderr and stdout collected together, ready.
async fn logging_child(args: &[&str]) -> ShuntChild {
    shunt()
        .env("RUST_LOG", "info")
        .with_stdout()
        .arg("--health-interval", "100ms")
        .flags(args)
        .spawn_process_ready()
        .await
}

async fn calls(s: &support::Shunt) -> Value {
    s.admin_json("/calls").await
}

/// A 4 MiB binary message and its one unmasked frame, for a backend to write
/// slowly across the drain deadline.
fn big_message() -> (Vec<u8>, Vec<u8>) {
    let big: Vec<u8> = (0..4 << 20).map(|i| (i % 251) as u8).collect();
    let frame = encode(true, 0, 2, &big, false);
    (big, frame)
}

/// The backend side of a call until shunt's Close: it answers with the same
/// code and returns it (`None` when the call broke first).
fn answer_close(mut server: BackendWs) -> tokio::task::JoinHandle<Option<u16>> {
    tokio::spawn(async move {
        loop {
            match server.read_frame().await {
                Ok(f) if f.opcode == OpCode::Close => {
                    let code = u16::from_be_bytes([f.payload[0], f.payload[1]]);
                    let _ = server.write_frame(Frame::close(code, b"")).await;
                    return Some(code);
                }
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    })
}

/// The opcode of the next frame the backend reads, within 5 s.
async fn next_opcode(server: &mut BackendWs) -> OpCode {
    tokio::time::timeout(Duration::from_secs(5), server.read_frame())
        .await
        .expect("a frame at the backend in time")
        .expect("a frame")
        .opcode
}

/// Whether shunt, told to shut down, has stopped within `limit`.
async fn stopped_within(running: ::shunt::Running, limit: Duration) -> bool {
    tokio::time::timeout(limit, running.stopped()).await.is_ok()
}

/// Short pings for the timer tests.
const FAST_PINGS: [(&str, &str); 2] = [("--ping-interval", "200ms"), ("--ping-timeout", "300ms")];

/// A backend that hands each call to the test, and shunt in front of it
/// (`--direct` to it, then each `(flag, value)` of `flags`).
async fn ws_shunt(flags: &[(&str, &str)]) -> (WsBackend, support::Shunt) {
    let backend = WsBackend::spawn().await;
    let mut builder = shunt().direct(backend.url());
    for (flag, value) in flags {
        builder = builder.arg(flag, *value);
    }
    (backend, builder.start().await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_are_answered_by_a_real_client_and_shunts_pongs_never_reach_the_backend() {
    let (mut backend, shunt) = ws_shunt(&FAST_PINGS).await;
    let (mut client, _) = ws_connect(shunt.addr(), "/audio", &[]).await.unwrap();
    let mut server = backend.accept().await;
    // The client auto-pongs (fastwebsockets); the backend answers by hand
    // and records every frame it gets.
    server.set_auto_pong(false);
    let seen = tokio::spawn(async move {
        let mut opcodes = Vec::new();
        // Read for a bounded while: pings come every 200 ms.
        let deadline = tokio::time::Instant::now() + Duration::from_millis(1500);
        while let Ok(Ok(frame)) = tokio::time::timeout_at(deadline, server.read_frame()).await {
            opcodes.push(frame.opcode);
            if frame.opcode == OpCode::Ping {
                let payload = frame.payload.to_vec();
                let pong = Frame::pong(Payload::Owned(payload));
                server.write_frame(pong).await.unwrap();
            }
        }
        (opcodes, server)
    });
    let client_reader = tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(1500);
        while let Ok(Ok(_)) = tokio::time::timeout_at(deadline, client.read_frame()).await {}
        client
    });
    let answered = eventually(Duration::from_secs(3), async || {
        let c = calls(&shunt).await;
        let legs = &c["calls"][0]["legs"];
        legs["client"]["pongs_received"].as_u64() >= Some(2)
            && legs["backend"]["pongs_received"].as_u64() >= Some(1)
    })
    .await;
    let c = calls(&shunt).await;
    assert!(answered, "pongs counted on both legs: {c}");
    let client_leg = &c["calls"][0]["legs"]["client"];
    assert!(client_leg["rtt_last_ms"].as_f64().is_some(), "{c}");
    assert!(client_leg["rtt_median_ms"].as_f64().is_some(), "{c}");
    assert!(client_leg["pings_sent"].as_u64() >= Some(2), "{c}");
    assert_eq!(client_leg["rtt_status"], "measured", "{c}");
    let (opcodes, _server) = seen.await.unwrap();
    let _client = client_reader.await.unwrap();
    assert!(
        opcodes.contains(&OpCode::Ping),
        "the backend is pinged: {opcodes:?}"
    );
    assert!(
        !opcodes.contains(&OpCode::Pong),
        "the client's pongs to shunt's pings never reach the backend: {opcodes:?}"
    );
    let (_, metrics) = shunt.admin_get("/metrics").await.unwrap();
    assert!(
        metrics.contains("shunt_ping_rtt_seconds_count{route=\"/\",leg=\"client\"}"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_is_found_dead_and_the_backend_gets_1001() {
    let (mut backend, shunt) = ws_shunt(&FAST_PINGS).await;
    // Completes the handshake, then never reads or writes again.
    let mut client = RawWs::connect(shunt.addr(), "/audio").await.unwrap();
    let mut server = backend.accept().await;
    server.set_auto_pong(true);
    let started = tokio::time::Instant::now();
    let code = next_close(&mut server, Duration::from_secs(3)).await;
    let elapsed = started.elapsed();
    assert_eq!(code, 1001, "going away to the backend");
    // ping_interval + ping_timeout = 500 ms, with slack for a loaded machine.
    assert!(elapsed <= Duration::from_millis(1500), "{elapsed:?}");
    assert!(elapsed >= Duration::from_millis(400), "{elapsed:?}");
    // The backend answers; shunt closes the client's socket.
    server.write_frame(Frame::close(1001, b"")).await.unwrap();
    assert!(
        client.closed_within(Duration::from_secs(3)).await,
        "client socket closed"
    );
    let (_, status) = shunt.admin_get_json("/status").await;
    let closes = &status["calls"]["closes"];
    assert!(
        closes
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["closed_by"] == "shunt" && c["code"] == 1001),
        "{status}"
    );
}

/// The same bound with paused time and realistic settings (shunt runs
/// in-process on this test's current-thread runtime, so its clock is the
/// paused one): a silent client is found dead at `--ping-interval` +
/// `--ping-timeout`, 30 s + 10 s, not before, and within a second after.
#[tokio::test(start_paused = true)]
async fn a_silent_client_is_found_dead_at_interval_plus_timeout_in_paused_time() {
    let (mut backend, shunt) = ws_shunt(&[
        ("--ping-interval", "30s"),
        ("--ping-timeout", "10s"),
        ("--health-interval", "1h"),
    ])
    .await;
    let _client = RawWs::connect(shunt.addr(), "/audio").await.unwrap();
    let mut server = backend.accept().await;
    server.set_auto_pong(true);
    let started = tokio::time::Instant::now();
    let code = next_close(&mut server, Duration::from_secs(120)).await;
    let elapsed = started.elapsed();
    assert_eq!(code, 1001, "going away to the backend");
    assert!(
        elapsed >= Duration::from_secs(40) && elapsed <= Duration::from_secs(41),
        "{elapsed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_stops_answering_gives_the_client_1014() {
    let (mut backend, shunt) = ws_shunt(&FAST_PINGS).await;
    // A client that answers pings (fastwebsockets refuses 1014 as a close
    // code, browsers accept it: see the browser-grade test below).
    let mut client = RawWs::connect(shunt.addr(), "/audio").await.unwrap();
    // The backend holds the call but never reads: shunt's pings go unanswered.
    let _server = backend.accept().await;
    let started = tokio::time::Instant::now();
    let (before, close) = client
        .read_until_close(Duration::from_secs(3))
        .await
        .unwrap();
    assert_eq!(close.close_code(), Some(1014));
    assert_eq!(&close.payload[2..], b"bad gateway");
    assert!(before.iter().all(|f| f.opcode == PING), "{before:?}");
    assert!(started.elapsed() <= Duration::from_millis(1500));
    client.send_close(1014).await.unwrap();
    let line = "shunt_tunnel_closes_total{route=\"/\",closed_by=\"shunt\",code=\"1014\"} 1";
    let counted = eventually(Duration::from_secs(3), async || {
        shunt
            .admin_get("/metrics")
            .await
            .is_ok_and(|(_, m)| m.contains(line))
    })
    .await;
    assert!(counted, "{}", shunt.admin_get("/metrics").await.unwrap().1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_dies_gives_the_client_1014_at_once() {
    let (mut backend, shunt) = ws_shunt(&[]).await;
    let mut client = RawWs::connect(shunt.addr(), "/audio").await.unwrap();
    let server = backend.accept().await;
    drop(server); // EOF without a Close
    let (_, close) = client
        .read_until_close(Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(close.close_code(), Some(1014));
    client.send_close(1014).await.unwrap();
    assert!(client.closed_within(Duration::from_secs(2)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_vanishes_gives_the_backend_1001() {
    let (mut backend, shunt) = ws_shunt(&[]).await;
    let client = RawWs::connect(shunt.addr(), "/audio").await.unwrap();
    let mut server = backend.accept().await;
    drop(client);
    assert_eq!(next_close(&mut server, Duration::from_secs(2)).await, 1001);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_sends_1001_both_ways() {
    let (mut backend, shunt) = ws_shunt(&[("--idle-timeout", "300ms")]).await;
    let mut client = RawWs::connect(shunt.addr(), "/audio").await.unwrap();
    let mut server = backend.accept().await;
    let (before, close) = client
        .read_until_close(Duration::from_secs(3))
        .await
        .unwrap();
    assert!(before.is_empty());
    assert_eq!(close.close_code(), Some(1001));
    assert!(!close.masked, "frames to the browser are unmasked");
    client.send_close(1001).await.unwrap();
    assert_eq!(next_close(&mut server, Duration::from_secs(3)).await, 1001);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_calls_with_1012_after_the_last_whole_frame() {
    let (mut backend, shunt) = ws_shunt(&[("--drain-timeout", "300ms")]).await;
    let mut client = RawWs::connect(shunt.addr(), "/audio").await.unwrap();
    let server = backend.accept().await;
    // The backend writes a 4 MiB message slowly, across the drain deadline.
    let (big, frame) = big_message();
    let mut raw = server.into_inner();
    let writer = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        for chunk in frame.chunks(256 * 1024) {
            raw.write_all(chunk).await.unwrap();
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
        raw
    });
    // Begin the shutdown once the message has started to arrive.
    let arriving = eventually(Duration::from_secs(3), async || {
        calls(&shunt).await["calls"][0]["directions"]["to_client"]["bytes"].as_u64() > Some(0)
    })
    .await;
    assert!(arriving);
    let running = shunt.into_running();
    running.shutdown();
    let (before, close) = client
        .read_until_close(Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(close.close_code(), Some(1012), "service restart");
    assert_eq!(before.len(), 1, "the whole message, then the Close");
    assert!(before[0].payload == big, "never inside the 4 MiB message");
    // The backend gets 1001 once the browser's Close is out.
    let raw = writer.await.unwrap();
    client.send_close(1012).await.unwrap();
    let mut server = backend_ws(raw);
    assert_eq!(next_close(&mut server, Duration::from_secs(3)).await, 1001);
    assert!(
        stopped_within(running, Duration::from_secs(5)).await,
        "shunt stopped after the calls were closed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_sends_1012_and_1001_at_the_drain_deadline_and_exits_0() {
    let mut backend = WsBackend::spawn().await;
    let mut shunt = logging_child(&["--direct", &backend.url(), "--drain-timeout", "300ms"]).await;
    let (mut client, _) = ws_connect(shunt.addr(), "/audio", &[]).await.unwrap();
    let mut server = backend.accept().await;
    ws::send_text(&mut client, "hi").await.unwrap();
    assert_eq!(next_opcode(&mut server).await, OpCode::Text);
    let backend_side = answer_close(server);
    let pid = shunt.child.id().unwrap().to_string();
    let term = tokio::spawn(async move { shunt.terminate_within(Duration::from_secs(10)).await });
    let closed = ws::wait_closed(&mut client, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(closed, ws::Closed::CloseFrame(Some(1012)), "pid {pid}");
    let code = tokio::time::timeout(Duration::from_secs(5), backend_side)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(code, Some(1001));
    assert_eq!(term.await.unwrap(), Some(0), "exit code after SIGTERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_that_closes_itself_before_the_deadline_gets_nothing_from_shunt() {
    let backend = echo_backend().spawn().await;
    let shunt = shunt()
        .direct(backend.url())
        .arg("--drain-timeout", "5s")
        .start()
        .await;
    let (mut client, _) = ws_connect(shunt.addr(), "/audio", &[]).await.unwrap();
    ws::recv_text(&mut client).await.unwrap();
    let running = shunt.into_running();
    running.shutdown();
    client
        .write_frame(Frame::close(1000, b"bye"))
        .await
        .unwrap();
    let closed = ws::wait_closed(&mut client, Duration::from_secs(2))
        .await
        .unwrap();
    // The backend's own answer, not shunt's 1012.
    assert_eq!(closed, ws::Closed::CloseFrame(Some(1000)));
    assert!(stopped_within(running, Duration::from_secs(3)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_pauses_is_one_stall_in_calls_metrics_and_the_log() {
    let mut backend = WsBackend::spawn().await;
    let mut shunt = logging_child(&["--direct", &backend.url(), "--drain-timeout", "300ms"]).await;
    let (mut client, _) = ws_connect(shunt.addr(), "/audio", &[]).await.unwrap();
    let mut server = backend.accept().await;
    let reader = tokio::spawn(async move {
        let mut n = 0;
        while let Ok(Ok(f)) =
            tokio::time::timeout(Duration::from_secs(6), client.read_frame()).await
        {
            if f.opcode == OpCode::Binary {
                n += 1;
            }
            if n == 75 {
                break;
            }
        }
        (n, client)
    });
    // 50 frames/s for 1 s, a 3 s pause, then 0.5 s more.
    let frame = [0u8; 160];
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    for _ in 0..50 {
        tick.tick().await;
        server
            .write_frame(Frame::binary(Payload::Borrowed(&frame)))
            .await
            .unwrap();
    }
    let get = async |path: &str| shunt.admin_json(path).await;
    let stalled = eventually(Duration::from_secs(4), async || {
        get("/calls").await["calls"][0]["directions"]["to_client"]["stalled"] == true
    })
    .await;
    assert!(stalled, "stalled while paused: {}", get("/calls").await);
    tokio::time::sleep(Duration::from_millis(1000)).await; // the rest of the 3 s pause
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    for _ in 0..25 {
        tick.tick().await;
        server
            .write_frame(Frame::binary(Payload::Borrowed(&frame)))
            .await
            .unwrap();
    }
    let (n, _client) = reader.await.unwrap();
    assert_eq!(n, 75);
    let resumed = eventually(Duration::from_secs(3), async || {
        shunt.log().contains("resumed after")
    })
    .await;
    let log = shunt.log();
    assert!(resumed, "{log}");
    let c = get("/calls").await;
    let dir = &c["calls"][0]["directions"]["to_client"];
    assert_eq!(dir["stalls"], 1, "{c}");
    assert_eq!(dir["stalled"], false, "{c}");
    assert!(dir["largest_gap_seconds"].as_f64().unwrap() >= 2.5, "{c}");
    assert_eq!(dir["framing"], "tracked");
    assert!(dir["frames_per_second"].as_f64().unwrap() > 0.0, "{c}");
    assert_eq!(
        log.matches("call stalled: no frames from backend for 2.")
            .count(),
        1,
        "{log}"
    );
    let r = support::http_get(shunt.admin_addr(), "/metrics", &[])
        .await
        .unwrap();
    let metrics = String::from_utf8_lossy(&r.body);
    assert!(
        metrics.contains("shunt_call_stalls_total{route=\"/\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "shunt_frame_gap_seconds_bucket{route=\"/\",direction=\"to_client\",le=\"5\"}"
        ),
        "{metrics}"
    );
    let status = get("/status").await;
    assert_eq!(status["calls"]["stalls_total"], 1, "{status}");
    assert_eq!(
        shunt.terminate_within(Duration::from_secs(10)).await,
        Some(0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_lists_live_calls_with_limits_sorting_and_redacted_tokens() {
    let backend = echo_backend().spawn().await;
    let shunt = shunt().direct(backend.url()).start().await;
    let (mut a, _) = ws_connect(shunt.addr(), "/audio?token=s3cret&x=1", &[])
        .await
        .unwrap();
    ws::recv_text(&mut a).await.unwrap();
    let (mut b, _) = ws_connect(shunt.addr(), "/other", &[]).await.unwrap();
    ws::recv_text(&mut b).await.unwrap();
    ws::send_binary(&mut b, &[7; 300]).await.unwrap();
    ws::recv_binary(&mut b).await.unwrap();

    let (status, c) = shunt.admin_get_json("/calls").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(c["total"], 2);
    assert_eq!(
        (c["limit"].clone(), c["sort"].clone()),
        (1000.into(), "age".into())
    );
    let first = &c["calls"][0];
    assert!(
        !first["path"].as_str().unwrap().contains("s3cret"),
        "{first}"
    );
    assert!(
        first["path"].as_str().unwrap().starts_with("/audio?token="),
        "{first}"
    );
    assert_eq!(first["route"], "/");
    assert_eq!(first["upstream"], "direct");
    assert_eq!(first["generation"], 1);
    assert_eq!(first["frames"], true);
    assert_eq!(first["host"], shunt.addr().to_string());
    assert!(first["client"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(first["started"].as_str().unwrap().ends_with('Z'));
    assert!(first["age_seconds"].as_f64().unwrap() >= 0.0);
    for dir in ["to_backend", "to_client"] {
        for key in [
            "frames",
            "messages",
            "bytes",
            "frames_per_second",
            "last_frame_age_seconds",
            "largest_gap_seconds",
            "stalls",
            "stalled",
            "framing",
        ] {
            assert!(
                first["directions"][dir].get(key).is_some(),
                "{dir}.{key}: {first}"
            );
        }
    }
    for leg in ["client", "backend"] {
        for key in [
            "rtt_last_ms",
            "rtt_median_ms",
            "rtt_status",
            "pings_sent",
            "pongs_received",
        ] {
            assert!(
                first["legs"][leg].get(key).is_some(),
                "{leg}.{key}: {first}"
            );
        }
        // Both legs spoke within the ping interval: no ping was needed.
        assert_eq!(first["legs"][leg]["rtt_status"], "streaming", "{first}");
    }
    let second = &c["calls"][1];
    assert_eq!(second["directions"]["to_backend"]["frames"], 1);
    assert_eq!(second["directions"]["to_backend"]["messages"], 1);
    assert_eq!(
        second["directions"]["to_client"]["frames"], 2,
        "hello + echo"
    );
    assert!(
        second["directions"]["to_backend"]["bytes"]
            .as_u64()
            .unwrap()
            >= 300
    );

    let (_, limited) = shunt.admin_get_json("/calls?limit=1&sort=stalls").await;
    assert_eq!(limited["total"], 2);
    assert_eq!(limited["calls"].as_array().unwrap().len(), 1);
    let id = second["id"].as_u64().unwrap();
    let (status, one) = shunt.admin_get_json(&format!("/calls/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(one["id"], id);
    assert_eq!(one["path"], "/other");
    let (status, missing) = shunt.admin_get_json("/calls/999999").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(missing["error"].as_str().unwrap().contains("999999"));
    for bad in ["/calls?sort=loud", "/calls?limit=-1", "/calls?frobnicate=1"] {
        let (status, body) = shunt.admin_get_json(bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains("sort=age|stalls|rtt"),
            "{body}"
        );
    }
    let (_, metrics) = shunt.admin_get("/metrics").await.unwrap();
    assert!(
        metrics.contains("shunt_calls_active{route=\"/\",upstream=\"direct\"} 2"),
        "{metrics}"
    );
    let (_, status) = shunt.admin_get_json("/status").await;
    assert_eq!(status["calls"]["active"], 2);
    drop((a, b));
    assert!(
        eventually(
            Duration::from_secs(3),
            async || calls(&shunt).await["total"] == 0
        )
        .await
    );
    let (_, metrics) = shunt.admin_get("/metrics").await.unwrap();
    assert!(
        metrics.contains("shunt_call_duration_seconds_count{route=\"/\"} 2"),
        "{metrics}"
    );
}

/// Frames through shunt: fragments with pings between them, RSV1 (deflate)
/// frames, every length boundary and a 16 MiB message, byte for byte.
async fn frames_pass_unchanged(shunt: &support::Shunt, backend: &mut WsBackend, mut client: RawWs) {
    let server = backend.accept().await;
    let mut raw = server.into_inner();
    let mut sent = Vec::new();
    sent.extend(encode(false, 0, 1, b"frag-1 ", true));
    sent.extend(encode(true, 0, PING, b"client ping", true));
    sent.extend(encode(false, 0, 0, b"frag-2 ", true));
    sent.extend(encode(true, 0, PONG, b"unsolicited", true));
    sent.extend(encode(true, 0, 0, b"frag-3", true));
    // permessage-deflate: RSV1 set, payload compressed bytes (shunt never inflates).
    sent.extend(encode(
        true,
        4,
        2,
        &[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00],
        true,
    ));
    for len in [0usize, 125, 126, 127, 65535, 65536, 16 << 20] {
        let payload: Vec<u8> = (0..len).map(|i| (i * 7 % 256) as u8).collect();
        sent.extend(encode(true, 0, 2, &payload, true));
    }
    let expect = sent.clone();
    let reader = tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        let mut got = vec![0; expect.len()];
        tokio::time::timeout(Duration::from_secs(20), raw.read_exact(&mut got))
            .await
            .expect("all bytes in time")
            .unwrap();
        assert!(got == expect, "bytes changed on the way to the backend");
        // And back: the backend's unmasked frames, unchanged.
        let mut back = Vec::new();
        back.extend(encode(false, 0, 2, b"a", false));
        back.extend(encode(true, 0, PING, b"backend ping", false));
        back.extend(encode(true, 0, 0, &vec![9; 70_000], false));
        use tokio::io::AsyncWriteExt;
        raw.write_all(&back).await.unwrap();
        (raw, back)
    });
    client.send_raw(&sent).await.unwrap();
    let (_raw, back) = reader.await.unwrap();
    let mut frames = Vec::new();
    for _ in 0..3 {
        frames.push(client.read_frame(Duration::from_secs(5)).await.unwrap());
    }
    let mut again = Vec::new();
    for f in &frames {
        again.extend(encode(f.fin, f.rsv, f.opcode, &f.payload, false));
    }
    assert!(again == back, "bytes changed on the way to the client");
    let c = calls(shunt).await;
    let dir = &c["calls"][0]["directions"]["to_backend"];
    assert_eq!(dir["frames"], 6 + 7, "{c}");
    assert_eq!(dir["messages"], 1 + 1 + 7, "{c}");
    assert_eq!(dir["framing"], "tracked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_pass_unchanged_on_the_splice_and_copy_paths() {
    for mode in ["auto", "copy"] {
        let mut backend = WsBackend::spawn().await;
        let shunt = shunt()
            .direct(backend.url())
            .arg("--tunnel-mode", mode)
            .start()
            .await;
        let client = RawWs::connect(shunt.addr(), "/audio").await.unwrap();
        frames_pass_unchanged(&shunt, &mut backend, client).await;
        // Large tracked payloads still move kernel to kernel on the splice path.
        let pipes = shunt.status().await.unwrap()["tunnel"]["pipes_open"].clone();
        if mode == "auto" {
            assert!(pipes.as_u64() >= Some(1), "spliced: {pipes}");
        } else {
            assert_eq!(pipes, 0, "copy mode uses no pipe");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_pass_unchanged_on_the_tls_buffered_path() {
    let pki = support::tls::TestPki::new();
    let (cert, key) = pki.write("server", &["localhost", "127.0.0.1"]);
    let mut backend = WsBackend::spawn().await;
    let shunt = shunt().direct(backend.url()).tls(&cert, &key).start().await;
    let (tls, _) = support::tls::tls_connect(shunt.addr(), "localhost", pki.client_config())
        .await
        .unwrap();
    let client = RawWs::handshake(Box::new(tls), "/audio").await.unwrap();
    frames_pass_unchanged(&shunt, &mut backend, client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unparsable_framing_falls_back_to_an_opaque_relay() {
    let (mut backend, shunt) = ws_shunt(&[]).await;
    let mut client = RawWs::connect(shunt.addr(), "/audio").await.unwrap();
    let server = backend.accept().await;
    let mut raw = server.into_inner();
    // A Ping of 200 bytes cannot be a control frame: framing lost.
    let mut sent = encode(true, 0, 1, b"ok", true);
    sent.extend(encode(true, 0, PING, &[1; 200], true));
    sent.extend(b"then anything at all \x00\xff\x88\x02");
    client.send_raw(&sent).await.unwrap();
    let got = read_exactly(&mut raw, sent.len(), Duration::from_secs(5)).await;
    assert_eq!(got, sent, "relayed byte for byte");
    let c = calls(&shunt).await;
    assert_eq!(
        c["calls"][0]["directions"]["to_backend"]["framing"], "opaque",
        "{c}"
    );
    assert_eq!(
        c["calls"][0]["directions"]["to_client"]["framing"], "tracked",
        "{c}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_off_is_todays_byte_relay() {
    let (mut backend, shunt) = ws_shunt(&[
        FAST_PINGS[0],
        FAST_PINGS[1],
        ("--frames", "off"),
        ("--drain-timeout", "200ms"),
    ])
    .await;
    let mut client = RawWs::connect(shunt.addr(), "/audio").await.unwrap();
    let mut server = backend.accept().await;
    client.send(true, 2, b"x").await.unwrap();
    let f = server.read_frame().await.unwrap();
    assert_eq!(f.opcode, OpCode::Binary);
    let c = calls(&shunt).await;
    assert_eq!(c["calls"][0]["frames"], false);
    assert_eq!(c["calls"][0]["directions"]["to_backend"]["framing"], "off");
    assert_eq!(c["calls"][0]["directions"]["to_backend"]["frames"], 0);
    // No pings: nothing arrives for well over the ping interval.
    assert!(client.read_frame(Duration::from_millis(700)).await.is_err());
    // At the drain deadline the tunnel is cut without a Close.
    let running = shunt.into_running();
    running.shutdown();
    let got = client.read_frame(Duration::from_secs(3)).await;
    assert!(got.is_err(), "no Close frame with frames off: {got:?}");
    let _ = tokio::time::timeout(Duration::from_secs(3), running.stopped()).await;
}

/// Whether node with its WHATWG WebSocket (undici) is here; without it a
/// test is skipped, visibly, or fails where node is required (see
/// [`support::require`]).
fn node_websocket() -> bool {
    let node_ok = std::process::Command::new("node")
        .args([
            "--experimental-websocket",
            "-e",
            "process.exit(typeof WebSocket === 'function' ? 0 : 1)",
        ])
        .status()
        .is_ok_and(|s| s.success());
    if !node_ok {
        support::require::missing(
            Part::Node,
            "node with --experimental-websocket is not available",
        );
    }
    node_ok
}

/// Node's WebSocket on `ws://ADDR/audio`: it sends "hi" once open and prints
/// the close event as JSON (`code`, `reason`, `clean`), within 8 s.
fn node_call(addr: SocketAddr) -> tokio::task::JoinHandle<std::io::Result<std::process::Output>> {
    let script = format!(
        "const ws = new WebSocket('ws://{addr}/audio');\
         ws.onopen = () => ws.send('hi');\
         ws.onclose = (e) => {{ console.log(JSON.stringify({{code: e.code, reason: e.reason, clean: e.wasClean}})); process.exit(0); }};\
         setTimeout(() => {{ console.log('timeout'); process.exit(1); }}, 8000);"
    );
    tokio::spawn(
        tokio::process::Command::new("node")
            .args(["--no-warnings", "--experimental-websocket", "-e", &script])
            .kill_on_drop(true)
            .output(),
    )
}

/// A [`node_call`] through `shunt`, with the backend side of its call and
/// the opcode of the first frame the backend got (node's "hi").
async fn node_says_hi(
    shunt: &support::Shunt,
    backend: &mut WsBackend,
) -> (
    tokio::task::JoinHandle<std::io::Result<std::process::Output>>,
    BackendWs,
    OpCode,
) {
    let node = node_call(shunt.addr());
    let mut server = backend.accept().await;
    let first = next_opcode(&mut server).await;
    (node, server, first)
}

/// The close event a [`node_call`] printed.
fn node_close(out: &std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "node said {:?} {:?}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// A browser-grade client: Node's WHATWG WebSocket (undici), which checks
/// close codes the way browsers do and reports `wasClean`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_grade_client_sees_1012_at_restart_and_1014_when_the_backend_dies() {
    if !node_websocket() {
        return;
    }
    let (mut backend, shunt) = ws_shunt(&[("--drain-timeout", "500ms")]).await;
    // 1014: the backend dies mid-call.
    let (node, server, first) = node_says_hi(&shunt, &mut backend).await;
    assert_eq!(first, OpCode::Text);
    drop(server);
    let seen = node_close(&node.await.unwrap().unwrap());
    assert_eq!(seen["code"], 1014, "{seen}");
    assert_eq!(seen["reason"], "bad gateway");
    // 1012: shunt shuts down.
    let (node, server, first) = node_says_hi(&shunt, &mut backend).await;
    assert_eq!(first, OpCode::Text);
    let backend_side = answer_close(server);
    let running = shunt.into_running();
    running.shutdown();
    let seen = node_close(&node.await.unwrap().unwrap());
    assert_eq!(seen["code"], 1012, "{seen}");
    assert_eq!(seen["reason"], "service restart");
    assert_eq!(seen["clean"], true, "{seen}");
    assert_eq!(backend_side.await.unwrap(), Some(1001));
    assert!(stopped_within(running, Duration::from_secs(5)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shunts_pings_and_their_pongs_do_not_count_as_activity_for_the_idle_timeout() {
    // The echo backend answers Pings and, after its hello, is idle.
    let backend = echo_backend().spawn().await;
    let idle = Duration::from_secs(1);
    let shunt = shunt()
        .direct(backend.url())
        .arg("--ping-interval", "100ms")
        .arg("--ping-timeout", "1s")
        .arg("--idle-timeout", "1s")
        .start()
        .await;
    let started = tokio::time::Instant::now();
    let mut client = RawWs::connect(shunt.addr(), "/audio").await.unwrap();
    // The client answers every Ping, as a browser does, until the Close.
    let reader = tokio::spawn(async move {
        let got = client.read_until_close(Duration::from_secs(5)).await;
        let elapsed = started.elapsed();
        if got.is_ok() {
            let _ = client.send_close(1001).await;
        }
        got.map(|got| (got, elapsed))
    });
    // Within the idle timeout both legs are pinged, and answer, again and again.
    let mut last = String::new();
    let pinged = eventually(Duration::from_secs(2), async || {
        let c = calls(&shunt).await;
        let legs = &c["calls"][0]["legs"];
        let ok = ["client", "backend"].into_iter().all(|leg| {
            legs[leg]["pings_sent"].as_u64() >= Some(2)
                && legs[leg]["pongs_received"].as_u64() >= Some(1)
        });
        ok || not_yet(&mut last, &c)
    })
    .await;
    assert!(pinged, "both legs pinged and answering: {last}");
    // Yet the call is idle: the Close comes at the idle timeout.
    let (before, close) = reader.await.unwrap().map_or_else(
        |e| panic!("no idle Close reached the client: {e}"),
        |((before, close), elapsed)| {
            assert!(elapsed >= idle, "not before the idle timeout: {elapsed:?}");
            assert!(
                elapsed <= idle + Duration::from_secs(1),
                "within the bound: {elapsed:?}"
            );
            (before, close)
        },
    );
    assert_eq!(close.close_code(), Some(1001), "going away");
    let pings = before.iter().filter(|f| f.opcode == PING).count();
    assert!(pings >= 2, "the client was pinged: {before:?}");
    assert!(
        before
            .iter()
            .all(|f| f.opcode == PING || f.payload == b"hello from backend"),
        "nothing but the hello and shunt's Pings: {before:?}"
    );
    let mut last = String::new();
    let recorded = eventually(Duration::from_secs(3), async || {
        let (_, status) = shunt.admin_get_json("/status").await;
        let closes = status["calls"]["closes"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let ok = closes
            .iter()
            .any(|c| c["closed_by"] == "shunt" && c["code"] == 1001);
        ok || not_yet(&mut last, &status)
    })
    .await;
    assert!(recorded, "closed by shunt with 1001: {last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_grade_client_answers_shunts_pings() {
    if !node_websocket() {
        return;
    }
    let (mut backend, shunt) = ws_shunt(&[("--ping-interval", "200ms")]).await;
    let (node, mut server, first) = node_says_hi(&shunt, &mut backend).await;
    assert_eq!(first, OpCode::Text);
    // Node answers shunt's Pings by itself, as a browser does.
    let mut last = String::new();
    let answered = eventually(Duration::from_secs(5), async || {
        let c = calls(&shunt).await;
        let leg = &c["calls"][0]["legs"]["client"];
        let ok = leg["pongs_received"].as_u64() >= Some(1) && leg["rtt_last_ms"].is_f64();
        ok || not_yet(&mut last, &c)
    })
    .await;
    assert!(answered, "the client leg's Pongs and RTT: {last}");
    let c = calls(&shunt).await;
    let leg = &c["calls"][0]["legs"]["client"];
    assert!(leg["pings_sent"].as_u64() >= Some(1), "{c}");
    let rtt = leg["rtt_median_ms"].as_f64().unwrap_or(-1.0);
    assert!((0.0..1000.0).contains(&rtt), "{c}");
    // The call carried on: it ends as the backend ends it, cleanly.
    server
        .write_frame(Frame::close(1000, b"done"))
        .await
        .unwrap();
    let seen = node_close(&node.await.unwrap().unwrap());
    assert_eq!(seen["code"], 1000, "{seen}");
    assert_eq!(seen["clean"], true, "{seen}");
}

/// One call whose client → backend framing is lost (a Ping of 200 bytes),
/// with more bytes that are no framing at all sent later: every byte is
/// relayed as it is, the other direction is still followed, and the
/// fallback is logged once, with the tunnel id.
async fn the_opaque_fallback_relays_and_is_logged_once(
    shunt: &ShuntChild,
    backend: &mut WsBackend,
    mut client: RawWs,
) {
    use tokio::io::AsyncWriteExt;
    let server = backend.accept().await;
    let mut raw = server.into_inner();
    let mut first = encode(true, 0, 1, b"ok", true);
    first.extend(encode(true, 0, PING, &[1; 200], true));
    first.extend(b"then anything at all \x00\xff\x88\x02");
    // Unparsable again if it were parsed: a 64-bit length with the top bit
    // set, then a Close and bytes after it.
    let mut second = vec![0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0];
    second.extend(encode(true, 0, CLOSE, &1000u16.to_be_bytes(), true));
    second.extend(b"and bytes after a Close");
    for part in [&first, &second] {
        client.send_raw(part).await.unwrap();
        let got = read_exactly(&mut raw, part.len(), Duration::from_secs(5)).await;
        assert_eq!(&got, part, "relayed byte for byte");
    }
    // The backend → client direction is still followed frame by frame.
    raw.write_all(&encode(true, 0, 2, b"from the backend", false))
        .await
        .unwrap();
    let f = client.read_frame(Duration::from_secs(5)).await.unwrap();
    assert_eq!(f.payload, b"from the backend");
    let c = shunt.admin_json("/calls").await;
    let call = &c["calls"][0];
    assert_eq!(call["directions"]["to_backend"]["framing"], "opaque", "{c}");
    assert_eq!(call["directions"]["to_client"]["framing"], "tracked", "{c}");
    assert!(
        call["directions"]["to_client"]["frames"].as_u64() >= Some(1),
        "{c}"
    );
    let tunnel = format!("tunnel={}", call["id"].as_u64().unwrap());
    // End the call: its one "call ended" line comes after any line about
    // its framing.
    drop((client, raw));
    let ended = eventually(Duration::from_secs(5), async || {
        shunt
            .log()
            .lines()
            .any(|l| l.contains("call ended") && l.split(' ').any(|w| w == tunnel))
    })
    .await;
    let log = shunt.log();
    assert!(ended, "the call ended: {log}");
    // The duration has millisecond precision: at most 3 decimals.
    let ended_line = log
        .lines()
        .find(|l| l.contains("call ended") && l.split(' ').any(|w| w == tunnel))
        .unwrap();
    let duration = ended_line
        .split(' ')
        .find_map(|w| w.strip_prefix("duration_s="))
        .unwrap_or_else(|| panic!("no duration_s in {ended_line}"));
    assert!(
        duration.split('.').nth(1).is_none_or(|d| d.len() <= 3) && duration.parse::<f64>().is_ok(),
        "{ended_line}"
    );
    let fallbacks: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("cannot be followed"))
        .collect();
    assert_eq!(fallbacks.len(), 1, "logged once: {log}");
    assert!(
        fallbacks[0].split(' ').any(|w| w == tunnel),
        "with the tunnel id ({tunnel}): {}",
        fallbacks[0]
    );
    assert!(
        fallbacks[0].contains("frames from client cannot be followed"),
        "{}",
        fallbacks[0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_opaque_fallback_is_logged_once_with_the_tunnel_id() {
    let mut backend = WsBackend::spawn().await;
    let mut shunt = logging_child(&["--direct", &backend.url()]).await;
    let client = RawWs::connect(shunt.addr(), "/audio").await.unwrap();
    the_opaque_fallback_relays_and_is_logged_once(&shunt, &mut backend, client).await;
    assert_eq!(
        shunt.terminate_within(Duration::from_secs(10)).await,
        Some(0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_opaque_fallback_works_on_the_tls_buffered_path() {
    let pki = support::tls::TestPki::new();
    let (cert, key) = pki.write("server", &["localhost", "127.0.0.1"]);
    let mut backend = WsBackend::spawn().await;
    let mut shunt = logging_child(&[
        "--direct",
        &backend.url(),
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ])
    .await;
    let (tls, _) = support::tls::tls_connect(shunt.addr(), "localhost", pki.client_config())
        .await
        .unwrap();
    let client = RawWs::handshake(Box::new(tls), "/audio").await.unwrap();
    the_opaque_fallback_relays_and_is_logged_once(&shunt, &mut backend, client).await;
    assert_eq!(
        shunt.terminate_within(Duration::from_secs(10)).await,
        Some(0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_negotiated_extension_and_subprotocol_pass_through_with_their_rsv1_frames() {
    let (mut backend, seen) = WsBackend::spawn_negotiating(&[
        (
            "sec-websocket-extensions",
            "permessage-deflate; server_no_context_takeover",
        ),
        ("sec-websocket-protocol", "audio.v1"),
    ])
    .await;
    let shunt = shunt().direct(backend.url()).start().await;
    let (client, head) = RawWs::connect_with(
        shunt.addr(),
        "/audio",
        &[
            "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits",
            "Sec-WebSocket-Protocol: audio.v1, audio.v0",
        ],
    )
    .await
    .unwrap();
    let server = backend.accept().await;
    // The upstream request carried both offers as the client wrote them.
    let request = seen.lock().unwrap().last().cloned().expect("a request");
    assert_eq!(
        request["sec-websocket-extensions"],
        "permessage-deflate; client_max_window_bits"
    );
    assert_eq!(request["sec-websocket-protocol"], "audio.v1, audio.v0");
    // The 101 carries the backend's choices.
    let lower = head.to_ascii_lowercase();
    assert!(
        lower.contains(
            "\r\nsec-websocket-extensions: permessage-deflate; server_no_context_takeover\r\n"
        ),
        "{head}"
    );
    assert!(
        lower.contains("\r\nsec-websocket-protocol: audio.v1\r\n"),
        "{head}"
    );
    // Compressed messages: RSV1 on a whole message, on the first fragment of
    // a fragmented one (not on its continuation), and on one large enough
    // to be spliced; byte for byte both ways, never inflated.
    let hello = [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00]; // "Hello", raw DEFLATE
    let large: Vec<u8> = (0..100_000).map(|i| (i * 13 % 256) as u8).collect();
    let mut up = encode(true, 4, 2, &hello, true);
    up.extend(encode(false, 4, 1, &hello[..3], true));
    up.extend(encode(true, 0, 0, &hello[3..], true));
    up.extend(encode(true, 4, 2, &large, true));
    let mut down = encode(true, 4, 1, &hello, false);
    down.extend(encode(true, 4, 2, &large, false));
    let mut raw = server.into_inner();
    let (expect, back) = (up.clone(), down.clone());
    let backend_side = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let got = read_exactly(&mut raw, expect.len(), Duration::from_secs(5)).await;
        assert!(got == expect, "bytes changed on the way to the backend");
        raw.write_all(&back).await.unwrap();
        raw
    });
    let mut client = client;
    client.send_raw(&up).await.unwrap();
    let _raw = backend_side.await.unwrap();
    let mut again = Vec::new();
    for _ in 0..2 {
        let f = client.read_frame(Duration::from_secs(5)).await.unwrap();
        assert_eq!(f.rsv, 4, "RSV1 kept");
        again.extend(encode(f.fin, f.rsv, f.opcode, &f.payload, false));
    }
    assert!(again == down, "bytes changed on the way to the client");
    let c = calls(&shunt).await;
    let dirs = &c["calls"][0]["directions"];
    assert_eq!(dirs["to_backend"]["frames"], 4, "{c}");
    assert_eq!(dirs["to_backend"]["messages"], 3, "{c}");
    assert_eq!(dirs["to_backend"]["framing"], "tracked", "{c}");
    assert_eq!(dirs["to_client"]["framing"], "tracked", "{c}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_gives_each_live_call_1012_at_the_drain_deadline_after_the_whole_frame() {
    use tokio::io::AsyncWriteExt;
    let drain = Duration::from_millis(500);
    let mut backend = WsBackend::spawn().await;
    let mut shunt = logging_child(&["--direct", &backend.url(), "--drain-timeout", "500ms"]).await;
    // Call a: the backend will send a 4 MiB message slowly.
    let a = RawWs::connect(shunt.addr(), "/a").await.unwrap();
    let server_a = backend.accept().await;
    // Call b: a quiet call that has carried a message each way.
    let mut b = RawWs::connect(shunt.addr(), "/b").await.unwrap();
    let mut server_b = backend.accept().await;
    b.send(true, 1, b"hi").await.unwrap();
    assert_eq!(server_b.read_frame().await.unwrap().opcode, OpCode::Text);
    server_b
        .write_frame(Frame::text(Payload::Borrowed(b"hello")))
        .await
        .unwrap();
    assert_eq!(
        b.read_frame(Duration::from_secs(5)).await.unwrap().payload,
        b"hello"
    );
    let (big, frame) = big_message();
    let mut raw = server_a.into_inner();
    let (go, sigterm_sent) = tokio::sync::oneshot::channel::<()>();
    let writer = tokio::spawn(async move {
        let (head, rest) = frame.split_at(256 * 1024);
        raw.write_all(head).await.unwrap();
        // The rest only after SIGTERM, over more than the drain timeout: the
        // message is still in flight at the deadline.
        sigterm_sent.await.unwrap();
        for chunk in rest.chunks(rest.len().div_ceil(6)) {
            tokio::time::sleep(Duration::from_millis(110)).await;
            raw.write_all(chunk).await.unwrap();
        }
        raw
    });
    // Each client reads until shunt's Close and answers it, as a browser does.
    let read = |mut ws: RawWs| {
        tokio::spawn(async move {
            let frames = ws
                .timed_frames_until_close(Duration::from_secs(10))
                .await
                .unwrap();
            ws.send_close(1012).await.unwrap();
            frames
        })
    };
    let (read_a, read_b) = (read(a), read(b));
    let arriving = eventually(Duration::from_secs(3), async || {
        let c = shunt.admin_json("/calls").await;
        c["calls"].as_array().is_some_and(|calls| {
            calls.iter().any(|call| {
                call["path"] == "/a" && call["directions"]["to_client"]["bytes"].as_u64() > Some(0)
            })
        })
    })
    .await;
    assert!(arriving, "the message has begun to reach client a");
    let sigterm = tokio::time::Instant::now();
    let term = tokio::spawn(async move { shunt.terminate_within(Duration::from_secs(10)).await });
    go.send(()).unwrap();

    let frames_a = read_a.await.unwrap();
    let (close, closed_at) = frames_a.last().unwrap();
    assert_eq!(close.close_code(), Some(1012), "service restart to a");
    assert_eq!(&close.payload[2..], b"service restart");
    assert_eq!(frames_a.len(), 2, "the whole message, then the Close");
    let (message, done_at) = &frames_a[0];
    assert!(message.payload == big, "never inside the 4 MiB message");
    assert!(
        *done_at - sigterm >= drain,
        "the message was in flight at the deadline"
    );
    let after = *closed_at - sigterm;
    assert!(
        after >= drain,
        "a's Close not before the deadline: {after:?}"
    );
    assert!(
        after <= drain + Duration::from_millis(1500),
        "a's Close within the 1 s wait for the boundary: {after:?}"
    );

    let frames_b = read_b.await.unwrap();
    assert_eq!(frames_b.len(), 1, "nothing but the Close: {frames_b:?}");
    let (close, closed_at) = &frames_b[0];
    assert_eq!(close.close_code(), Some(1012), "service restart to b");
    let after = *closed_at - sigterm;
    assert!(
        after >= drain,
        "b's Close not before the deadline: {after:?}"
    );
    assert!(
        after <= drain + Duration::from_secs(1),
        "b's Close at the deadline: {after:?}"
    );

    // The backend gets 1001 on both calls.
    assert_eq!(
        next_close(&mut server_b, Duration::from_secs(3)).await,
        1001
    );
    let _ = server_b.write_frame(Frame::close(1001, b"")).await;
    let raw = writer.await.unwrap();
    let mut server_a = backend_ws(raw);
    assert_eq!(
        next_close(&mut server_a, Duration::from_secs(3)).await,
        1001
    );
    let _ = server_a.write_frame(Frame::close(1001, b"")).await;
    assert_eq!(term.await.unwrap(), Some(0), "exit code after SIGTERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shunts_pong_is_removed_even_when_it_arrives_split() {
    for mode in ["auto", "copy"] {
        let (mut backend, shunt) = ws_shunt(&[
            ("--tunnel-mode", mode),
            ("--ping-interval", "200ms"),
            ("--ping-timeout", "2s"),
        ])
        .await;
        let mut client = RawWs::connect(shunt.addr(), "/audio").await.unwrap();
        let mut server = backend.accept().await;
        server.set_auto_pong(true);
        let ping = client.read_frame(Duration::from_secs(3)).await.unwrap();
        assert_eq!(ping.opcode, PING);
        // The answer in three writes, each read on its own by shunt.
        let pong = encode(true, 0, PONG, &ping.payload, true);
        for part in [&pong[..1], &pong[1..8], &pong[8..]] {
            client.send_raw(part).await.unwrap();
            tokio::time::sleep(Duration::from_millis(30)).await; // pacing the writer
        }
        client.send(true, 2, b"after the pong").await.unwrap();
        let mut opcodes = Vec::new();
        let data = loop {
            let f = tokio::time::timeout(Duration::from_secs(3), server.read_frame())
                .await
                .expect("the data frame reaches the backend")
                .unwrap();
            if f.opcode == OpCode::Binary {
                break f.payload.to_vec();
            }
            opcodes.push(f.opcode);
        };
        assert_eq!(data, b"after the pong", "{mode}");
        assert!(
            !opcodes.contains(&OpCode::Pong),
            "{mode}: the split Pong never reaches the backend: {opcodes:?}"
        );
        let c = calls(&shunt).await;
        let leg = &c["calls"][0]["legs"]["client"];
        assert!(leg["pongs_received"].as_u64() >= Some(1), "{mode}: {c}");
        assert!(leg["rtt_last_ms"].is_f64(), "{mode}: {c}");
    }
}
