//! WebSocket tunnels through shunt: echo of every message kind, straight to
//! the backend and through a real nginx; bytes sent with the 101; close
//! propagation both ways; the idle timeout.

use crate::support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use fastwebsockets::OpCode;
use support::ws::{self, Closed, Msg};
use support::{echo_backend, eventually, shunt, shunt_with_nginx, ws_connect};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Connects to `path` via shunt, checks the 101 and the backend's hello,
/// then checks echo of text, binary, fragmented text and binary, a 1 MiB
/// message and ping → pong.
async fn echo_suite(addr: SocketAddr, path: &str, route: &str, backend: &str) {
    let (mut socket, response) = ws_connect(addr, path, &[])
        .await
        .expect("handshake through shunt");
    assert_eq!(
        ws::header(&response, "x-shunt-route"),
        route,
        "{:?}",
        response.headers()
    );
    assert_eq!(
        ws::header(&response, "x-backend"),
        backend,
        "{:?}",
        response.headers()
    );
    assert_eq!(
        ws::recv_text(&mut socket).await.expect("hello"),
        format!("hello from {backend}")
    );

    ws::send_text(&mut socket, "ping-pong of text")
        .await
        .unwrap();
    assert_eq!(
        ws::recv_text(&mut socket).await.unwrap(),
        "ping-pong of text"
    );

    let binary: Vec<u8> = (0..=255u8).chain(0..=255u8).collect();
    ws::send_binary(&mut socket, &binary).await.unwrap();
    assert_eq!(ws::recv_binary(&mut socket).await.unwrap(), binary);

    ws::send_fragmented(&mut socket, OpCode::Text, &[b"frag", b"ment", b"ed text"])
        .await
        .unwrap();
    assert_eq!(ws::recv_text(&mut socket).await.unwrap(), "fragmented text");

    ws::send_fragmented(&mut socket, OpCode::Binary, &[&[1, 2, 3], &[4], &[5, 6]])
        .await
        .unwrap();
    assert_eq!(
        ws::recv_binary(&mut socket).await.unwrap(),
        [1, 2, 3, 4, 5, 6]
    );

    let big: Vec<u8> = (0..1024 * 1024 + 17u32).map(|i| (i % 253) as u8).collect();
    ws::send_binary(&mut socket, &big).await.unwrap();
    let echoed = ws::recv_binary(&mut socket).await.expect("1 MiB echo");
    assert_eq!(echoed.len(), big.len());
    assert!(echoed == big, "1 MiB message came back different");

    ws::send_ping(&mut socket, b"are you there").await.unwrap();
    let (fin, opcode, payload) = ws::recv_frame(&mut socket, support::IO_TIMEOUT)
        .await
        .expect("pong");
    assert!(fin);
    assert_eq!(opcode, OpCode::Pong);
    assert_eq!(payload, b"are you there");

    // Still usable after all that.
    ws::send_text(&mut socket, "last").await.unwrap();
    assert_eq!(
        ws::recv(&mut socket).await.unwrap(),
        Msg::Text("last".into())
    );
    ws::send_frame(&mut socket, fastwebsockets::Frame::close(1000, b"bye"))
        .await
        .unwrap();
    let closed = ws::wait_closed(&mut socket, Duration::from_secs(3))
        .await
        .unwrap();
    assert_eq!(
        closed,
        Closed::CloseFrame(Some(1000)),
        "the backend answers our Close"
    );
}

/// Whether the backend's WebSocket sessions all end within 3 s.
async fn sessions_end(backend: &support::EchoBackend) -> bool {
    eventually(Duration::from_secs(3), async || {
        backend.active_websockets() == 0
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_direct() {
    let (_backend, shunt) = support::direct_shunt(&[]).await;
    echo_suite(shunt.addr(), "/frontend-audio", "direct", "direct-backend").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_via_real_nginx() {
    let Some((direct, _behind_nginx, nginx, shunt)) = shunt_with_nginx(
        ("direct-backend", "nginx-backend"),
        &["--route", "/frontend-audio=nginx"],
    )
    .await
    else {
        return;
    };
    echo_suite(shunt.addr(), "/frontend-audio", "nginx", "nginx-backend").await;

    // Without --route, the defaults with --nginx: `/` goes nginx first,
    // `/frontend-audio` goes direct first.
    let defaults = support::shunt()
        .direct(direct.url())
        .nginx(nginx.url())
        .start_ready()
        .await;
    echo_suite(defaults.addr(), "/other-ws", "nginx", "nginx-backend").await;
    echo_suite(
        defaults.addr(),
        "/frontend-audio",
        "direct",
        "direct-backend",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_the_client_closes_the_backend_side() {
    let (backend, shunt) = support::direct_shunt(&[]).await;

    // Graceful: a Close frame.
    let mut socket = ws::open_call(shunt.addr(), "/frontend-audio").await.0;
    assert_eq!(backend.active_websockets(), 1);
    ws::send_frame(&mut socket, fastwebsockets::Frame::close(1000, b""))
        .await
        .unwrap();
    ws::wait_closed(&mut socket, Duration::from_secs(3))
        .await
        .unwrap();
    drop(socket);
    assert!(
        sessions_end(&backend).await,
        "backend still has a session after the client sent Close"
    );

    // Abrupt: the client's TCP connection just goes away, no Close frame.
    let socket = ws::open_call(shunt.addr(), "/frontend-audio").await.0;
    assert_eq!(backend.active_websockets(), 1);
    drop(socket);
    assert!(
        sessions_end(&backend).await,
        "backend still has a session 3 s after the client's connection went away"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_backend_closes_the_client_promptly() {
    let mut backend = echo_backend().name("direct-backend").spawn().await;
    let shunt = shunt().direct(backend.url()).start_ready().await;

    let mut socket = ws::open_call(shunt.addr(), "/frontend-audio").await.0;
    let stopped_at = Instant::now();
    backend.stop().await;
    let closed = ws::wait_closed(&mut socket, Duration::from_secs(3)).await;
    assert!(
        closed.is_ok(),
        "client still open after the backend went away: {closed:?}"
    );
    assert!(stopped_at.elapsed() < Duration::from_secs(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_closes_a_silent_tunnel_but_not_a_busy_one() {
    let (backend, shunt) = support::direct_shunt(&[("--idle-timeout", "300ms")]).await;

    // Busy: a message every 100 ms for 1 s keeps it open.
    let mut socket = ws::open_call(shunt.addr(), "/frontend-audio").await.0;
    let mut silent_from = Instant::now();
    for i in 0..10 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let text = format!("keep-alive {i}");
        ws::send_text(&mut socket, &text).await.unwrap();
        assert_eq!(
            ws::recv_text(&mut socket)
                .await
                .unwrap_or_else(|e| panic!("message {i}: {e}")),
            text
        );
        silent_from = Instant::now();
    }

    // Silent: closed soon after 300 ms without a byte.
    let closed = ws::wait_closed(&mut socket, Duration::from_secs(3)).await;
    assert!(
        closed.is_ok(),
        "silent tunnel still open 3 s later: {closed:?}"
    );
    let after = silent_from.elapsed();
    assert!(
        after >= Duration::from_millis(250),
        "closed after only {after:?}"
    );
    assert!(
        sessions_end(&backend).await,
        "the idle timeout closed the client side but not the backend side"
    );
}

/// The same timer with paused time (shunt in-process runs on this test's
/// current-thread runtime, so its clock is the paused one): an hour-long
/// `--idle-timeout` keeps a call open through 59 silent minutes, and closes
/// it at the hour, without the test waiting an hour.
#[tokio::test(start_paused = true)]
async fn idle_timeout_of_an_hour_closes_at_the_hour_in_paused_time() {
    let (backend, shunt) =
        support::direct_shunt(&[("--idle-timeout", "1h"), ("--health-interval", "1h")]).await;
    let mut socket = ws::open_call(shunt.addr(), "/frontend-audio").await.0;
    ws::send_text(&mut socket, "last word").await.unwrap();
    assert_eq!(ws::recv_text(&mut socket).await.unwrap(), "last word");
    let silent_from = tokio::time::Instant::now();

    let early = ws::wait_closed(&mut socket, Duration::from_secs(59 * 60)).await;
    assert!(early.is_err(), "closed before the hour: {early:?}");
    let closed = ws::wait_closed(&mut socket, Duration::from_secs(2 * 60)).await;
    assert!(
        closed.is_ok(),
        "still open 61 silent minutes on: {closed:?}"
    );
    let after = silent_from.elapsed();
    assert!(
        after >= Duration::from_secs(3600) && after <= Duration::from_secs(3600 + 60),
        "closed after {after:?}"
    );
    assert!(
        sessions_end(&backend).await,
        "the idle timeout closed the client side but not the backend side"
    );
}

/// A backend that writes the 101 and a first WebSocket message in one
/// `write`, so the message arrives in the same segment as the response head.
async fn one_write_backend() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        for _ in 0..1000 {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let mut head = Vec::new();
            let mut buf = [0u8; 4096];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 64 * 1024 {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let head = String::from_utf8_lossy(&head).to_string();
            let key = head
                .lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(n, _)| n.trim().eq_ignore_ascii_case("sec-websocket-key"))
                .map(|(_, v)| v.trim().to_owned());
            let Some(key) = key else {
                // A health probe or a plain request: answer and close.
                let _ = stream
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    )
                    .await;
                continue;
            };
            let mut out = format!(
                "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\
                 sec-websocket-accept: {}\r\n\r\n",
                ws::accept_key(&key)
            )
            .into_bytes();
            let hello = b"sent with the 101";
            out.extend_from_slice(&[0x81, hello.len() as u8]);
            out.extend_from_slice(hello);
            let _ = stream.write_all(&out).await;
            held.push(stream);
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_sent_together_with_the_101_arrive() {
    let (backend, task) = one_write_backend().await;
    let shunt = shunt()
        .direct(format!("http://{backend}"))
        .start_ready()
        .await;
    let (mut socket, response) = ws_connect(shunt.addr(), "/frontend-audio", &[])
        .await
        .unwrap();
    assert_eq!(ws::header(&response, "x-shunt-route"), "direct");
    assert_eq!(
        ws::recv_text(&mut socket).await.unwrap(),
        "sent with the 101"
    );
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_live_tunnels_and_upgrade_counts() {
    let backend = echo_backend().name("direct-backend").spawn().await;
    let shunt = shunt()
        .direct(backend.url())
        .route("/frontend-audio=direct")
        .start_ready()
        .await;

    let socket = ws::open_call(shunt.addr(), "/frontend-audio").await.0;
    let active = async |shunt: &support::Shunt| -> u64 {
        let status = shunt.status().await.expect("/status");
        status["tunnels"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|t| t["route"] == "/frontend-audio" && t["upstream"] == "direct")
            .filter_map(|t| t["active"].as_u64())
            .sum()
    };
    assert!(
        eventually(Duration::from_secs(3), async || active(&shunt).await == 1).await,
        "/status does not show the live tunnel: {}",
        shunt.status().await.unwrap()
    );
    let status = shunt.status().await.unwrap();
    assert!(
        status["upgrades"]["1xx"].as_u64().is_some_and(|n| n >= 1),
        "the 101 is not counted: {status}"
    );
    assert!(status["version"].is_string(), "{status}");
    assert!(status["uptime_secs"].is_u64(), "{status}");

    drop(socket);
    assert!(
        eventually(Duration::from_secs(3), async || active(&shunt).await == 0).await,
        "/status still shows the tunnel after the client left: {}",
        shunt.status().await.unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_sent_right_behind_the_handshake_head_arrives() {
    let (_backend, shunt) = support::direct_shunt(&[]).await;

    // Head and a first masked text frame in one write, before any 101.
    let mut out = b"GET /frontend-audio HTTP/1.1\r\nHost: shunt.test\r\nUpgrade: websocket\r\n\
        Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Sec-WebSocket-Version: 13\r\n\r\n"
        .to_vec();
    let payload = b"early bird";
    let mask = [1u8, 2, 3, 4];
    out.extend_from_slice(&[0x81, 0x80 | payload.len() as u8]);
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));

    let mut stream = tokio::net::TcpStream::connect(shunt.addr()).await.unwrap();
    stream.write_all(&out).await.unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(3);
    while !seen.windows(payload.len()).any(|w| w == payload) && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_millis(500), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
            Err(_) => continue,
        }
    }
    let text = String::from_utf8_lossy(&seen);
    assert!(text.starts_with("HTTP/1.1 101"), "{text:?}");
    assert!(
        seen.windows(payload.len()).any(|w| w == payload),
        "the frame sent with the head was not echoed: {text:?}"
    );
}
