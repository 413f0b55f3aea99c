//! Reattaching a live call to a new backend connection (issue 25):
//! `backend_loss = "reattach"` on a route keeps the client's WebSocket open
//! when the backend leg is lost (killed, restarted, or Close 1001/1012) and
//! replaces it, replaying the preamble; every case that cannot be
//! reattached safely closes the client with 1014 as before, and is counted.
//!
//! The client is a raw frame-by-frame WebSocket ([`RawWs`]), the backends
//! are scripted ([`WsBackend`]: each accepted call is handed to the test),
//! restarted on the same port by dropping one and binding another.

use std::time::Duration;

use fastwebsockets::{Frame, OpCode, Payload};
use serde_json::Value;

use crate::support;
use crate::support::calls::{BackendWs, RawFrame, RawWs, SeenHeaders, WsBackend};
use crate::support::{TempFile, eventually, not_yet, shunt};

/// Bound on one frame or one state change.
const LIMIT: Duration = Duration::from_secs(5);

/// shunt with one route `/call` over `upstreams` (name, URL) in that order,
/// `backend_loss = "reattach"` and the `extra` route keys.
async fn start(upstreams: &[(&str, String)], extra: &str) -> (support::Shunt, TempFile) {
    start_with(upstreams, extra, &[]).await
}

/// [`start`] with extra flags.
async fn start_with(
    upstreams: &[(&str, String)],
    extra: &str,
    flags: &[(&str, &str)],
) -> (support::Shunt, TempFile) {
    let mut text = String::new();
    for (name, url) in upstreams {
        text += &format!("[upstreams.{name}]\nurl = \"{url}\"\n");
    }
    let via: Vec<String> = upstreams.iter().map(|(n, _)| format!("\"{n}\"")).collect();
    text += &format!(
        "[[routes]]\npath = \"/call\"\nvia = [{}]\nbackend_loss = \"reattach\"\n{extra}\n",
        via.join(", ")
    );
    let file = TempFile::new("reattach.toml", &text);
    let mut builder = shunt().arg("--config", file.path());
    for (flag, value) in flags {
        builder = builder.arg(flag, *value);
    }
    (builder.start_ready().await, file)
}

/// The next data message the backend reads, as text (control frames skipped).
async fn backend_text(ws: &mut BackendWs) -> String {
    loop {
        let frame = tokio::time::timeout(LIMIT, ws.read_frame())
            .await
            .expect("a frame reaches the backend in time")
            .expect("a frame");
        match frame.opcode {
            OpCode::Text | OpCode::Binary | OpCode::Continuation => {
                return String::from_utf8_lossy(&frame.payload).into_owned();
            }
            OpCode::Close => panic!("the backend got a Close"),
            _ => {}
        }
    }
}

/// The backend sends one text message.
async fn backend_send(ws: &mut BackendWs, text: &str) {
    ws.write_frame(Frame::text(Payload::Owned(text.as_bytes().to_vec())))
        .await
        .expect("backend write");
}

/// The next frame the client reads that is not a Ping (Pings are answered).
async fn client_frame(client: &mut RawWs) -> RawFrame {
    loop {
        let f = client
            .read_frame(LIMIT)
            .await
            .expect("a frame reaches the client");
        if f.opcode == 9 {
            client.send(true, 10, &f.payload).await.expect("pong");
            continue;
        }
        return f;
    }
}

/// The next message the client reads must be data (never a Close): its text.
async fn client_text(client: &mut RawWs) -> String {
    let f = client_frame(client).await;
    assert_ne!(f.opcode, 8, "the client got a Close: {:?}", f.close_code());
    String::from_utf8_lossy(&f.payload).into_owned()
}

/// The client's next frame is a Close: its code.
async fn client_close(client: &mut RawWs) -> Option<u16> {
    let f = client_frame(client).await;
    assert_eq!(f.opcode, 8, "expected a Close, got {f:?}");
    f.close_code()
}

/// The one live call in `/calls`.
async fn the_call(shunt: &support::Shunt) -> Value {
    let calls = shunt.admin_json("/calls").await;
    calls["calls"][0].clone()
}

/// Waits until the call is between two backend legs.
async fn wait_reattaching(shunt: &support::Shunt) {
    let mut last = String::new();
    let ok = eventually(LIMIT, async || {
        let call = the_call(shunt).await;
        call["reattaching"] == true || not_yet(&mut last, call)
    })
    .await;
    assert!(ok, "the call never started reattaching: {last}");
}

/// The value of `shunt_call_reattach_total{route="/call",result=RESULT}`.
async fn reattach_total(shunt: &support::Shunt, result: &str) -> u64 {
    let (_, text) = shunt.admin_get("/metrics").await.expect("/metrics");
    let needle = format!("shunt_call_reattach_total{{route=\"/call\",result=\"{result}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&needle))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Waits until the counter of `result` reads `n`.
async fn wait_total(shunt: &support::Shunt, result: &str, n: u64) {
    let mut last = 0;
    let ok = eventually(LIMIT, async || {
        last = reattach_total(shunt, result).await;
        last == n
    })
    .await;
    assert!(
        ok,
        "shunt_call_reattach_total{{result={result}}} is {last}, not {n}"
    );
}

/// A header of the `i`th upgrade request a backend saw.
fn seen_header(seen: &SeenHeaders, i: usize, name: &str) -> String {
    let seen = seen.lock().unwrap();
    seen[i]
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_backend_killed_and_restarted_takes_the_call_over() {
    let (backend, seen) = WsBackend::spawn_negotiating(&[]).await;
    let port = backend.addr;
    let (shunt, _config) = start(&[("direct", backend.url())], "").await;
    let mut backend = backend;
    let mut client = RawWs::connect(shunt.addr(), "/call?room=7").await.unwrap();
    client.send(true, 1, b"subscribe 7").await.unwrap();
    let mut ws = backend.accept().await;
    assert_eq!(backend_text(&mut ws).await, "subscribe 7");
    backend_send(&mut ws, "before").await;
    assert_eq!(client_text(&mut client).await, "before");
    let id = the_call(&shunt).await["id"].as_u64().unwrap();

    // The backend dies: its connection and its listener.
    drop(ws);
    drop(backend);
    wait_reattaching(&shunt).await;
    client.send(true, 1, b"during the gap").await.unwrap();
    let (mut backend, seen_again) = WsBackend::spawn_on(port, &[]).await;
    let mut ws = backend.accept().await;
    // The preamble first, then what the client sent in the gap.
    assert_eq!(backend_text(&mut ws).await, "subscribe 7");
    assert_eq!(backend_text(&mut ws).await, "during the gap");
    backend_send(&mut ws, "after").await;
    assert_eq!(client_text(&mut client).await, "after");
    client.send(true, 1, b"still here").await.unwrap();
    assert_eq!(backend_text(&mut ws).await, "still here");

    // What the new backend was told.
    assert_eq!(
        seen_header(&seen_again, 0, "x-shunt-reattach"),
        format!("{id}; attempt=1")
    );
    assert_ne!(
        seen_header(&seen_again, 0, "sec-websocket-key"),
        seen_header(&seen, 0, "sec-websocket-key"),
        "a fresh key"
    );
    assert_eq!(seen_header(&seen, 0, "x-shunt-reattach"), "");
    let call = the_call(&shunt).await;
    assert_eq!(call["reattached"], 1, "{call}");
    assert_eq!(call["upstream"], "direct", "{call}");
    wait_total(&shunt, "ok", 1).await;
    let (_, metrics) = shunt.admin_get("/metrics").await.unwrap();
    assert!(
        metrics.contains("shunt_call_reattach_gap_seconds_count{route=\"/call\"} 1"),
        "{metrics}"
    );

    // Lost again: the same listener takes it, as attempt 2.
    drop(ws);
    let mut ws = backend.accept().await;
    assert_eq!(backend_text(&mut ws).await, "subscribe 7");
    backend_send(&mut ws, "second").await;
    assert_eq!(client_text(&mut client).await, "second");
    assert_eq!(
        seen_header(&seen_again, 1, "x-shunt-reattach"),
        format!("{id}; attempt=2")
    );
    assert_eq!(the_call(&shunt).await["reattached"], 2);
}

#[tokio::test]
async fn a_killed_backend_moves_the_call_to_the_fallback() {
    let mut direct = WsBackend::spawn().await;
    let mut fallback = WsBackend::spawn().await;
    let (shunt, _config) = start(&[("direct", direct.url()), ("nginx", fallback.url())], "").await;
    let mut client = RawWs::connect(shunt.addr(), "/call").await.unwrap();
    client.send(true, 2, b"\x01hello").await.unwrap();
    let mut ws = direct.accept().await;
    assert_eq!(backend_text(&mut ws).await, "\x01hello");
    drop(ws);
    drop(direct);
    let mut ws = fallback.accept().await;
    assert_eq!(backend_text(&mut ws).await, "\x01hello");
    backend_send(&mut ws, "from the fallback").await;
    assert_eq!(client_text(&mut client).await, "from the fallback");
    let call = the_call(&shunt).await;
    assert_eq!(call["upstream"], "nginx", "{call}");
    assert_eq!(call["reattached"], 1, "{call}");
}

#[tokio::test]
async fn a_killed_backend_moves_the_call_to_a_real_nginx() {
    let mut direct = WsBackend::spawn().await;
    let mut behind = WsBackend::spawn().await;
    let Some(nginx) = support::nginx(behind.addr).spawn().await else {
        return;
    };
    let (shunt, _config) = start(&[("direct", direct.url()), ("nginx", nginx.url())], "").await;
    let mut client = RawWs::connect(shunt.addr(), "/call").await.unwrap();
    client.send(true, 1, b"subscribe").await.unwrap();
    let mut ws = direct.accept().await;
    assert_eq!(backend_text(&mut ws).await, "subscribe");
    drop(ws);
    drop(direct);
    let mut ws = behind.accept().await;
    assert_eq!(backend_text(&mut ws).await, "subscribe");
    backend_send(&mut ws, "through nginx").await;
    assert_eq!(client_text(&mut client).await, "through nginx");
    assert_eq!(the_call(&shunt).await["upstream"], "nginx");
}

#[tokio::test]
async fn close_1001_and_1012_reattach_and_1000_is_forwarded() {
    let mut backend = WsBackend::spawn().await;
    let (shunt, _config) = start(&[("direct", backend.url())], "").await;
    let mut client = RawWs::connect(shunt.addr(), "/call").await.unwrap();
    client.send(true, 1, b"subscribe").await.unwrap();
    let mut ws = backend.accept().await;
    assert_eq!(backend_text(&mut ws).await, "subscribe");
    for code in [1001u16, 1012] {
        ws.write_frame(Frame::close(code, b"going away"))
            .await
            .unwrap();
        let mut next = backend.accept().await;
        assert_eq!(backend_text(&mut next).await, "subscribe", "after {code}");
        backend_send(&mut next, &format!("after {code}")).await;
        assert_eq!(client_text(&mut client).await, format!("after {code}"));
        ws = next;
    }
    assert_eq!(the_call(&shunt).await["reattached"], 2);
    ws.write_frame(Frame::close(1000, b"done")).await.unwrap();
    assert_eq!(client_close(&mut client).await, Some(1000));
    wait_total(&shunt, "ok", 2).await;
}

#[tokio::test]
async fn a_preamble_over_replay_bytes_is_not_reattachable() {
    let mut backend = WsBackend::spawn().await;
    let (shunt, _config) = start(&[("direct", backend.url())], "replay_bytes = 16").await;
    let mut client = RawWs::connect(shunt.addr(), "/call").await.unwrap();
    client.send(true, 1, &[b'x'; 100]).await.unwrap();
    let mut ws = backend.accept().await;
    assert_eq!(backend_text(&mut ws).await.len(), 100);
    wait_total(&shunt, "not_reattachable", 1).await;
    drop(ws);
    assert_eq!(client_close(&mut client).await, Some(1014));
    assert_eq!(reattach_total(&shunt, "ok").await, 0);
}

#[tokio::test]
async fn the_rest_of_a_client_message_cut_by_the_loss_is_dropped() {
    let backend = WsBackend::spawn().await;
    let port = backend.addr;
    let mut backend = backend;
    let (shunt, _config) = start(&[("direct", backend.url())], "").await;
    let mut client = RawWs::connect(shunt.addr(), "/call").await.unwrap();
    client.send(true, 1, b"subscribe").await.unwrap();
    let mut ws = backend.accept().await;
    assert_eq!(backend_text(&mut ws).await, "subscribe");
    // The first fragment of a message reaches the backend, then it dies.
    client.send(false, 1, b"part one").await.unwrap();
    assert_eq!(backend_text(&mut ws).await, "part one");
    drop(ws);
    drop(backend);
    wait_reattaching(&shunt).await;
    client.send(false, 0, b"part two").await.unwrap();
    client.send(true, 0, b"part three").await.unwrap();
    client.send(true, 1, b"next message").await.unwrap();
    let (mut backend, _) = WsBackend::spawn_on(port, &[]).await;
    let mut ws = backend.accept().await;
    assert_eq!(backend_text(&mut ws).await, "subscribe");
    assert_eq!(backend_text(&mut ws).await, "next message");
    backend_send(&mut ws, "ok").await;
    assert_eq!(client_text(&mut client).await, "ok");
}

#[tokio::test]
async fn a_backend_mid_message_to_the_client_gives_up_with_1014() {
    let mut backend = WsBackend::spawn().await;
    let (shunt, _config) = start(&[("direct", backend.url())], "").await;
    let mut client = RawWs::connect(shunt.addr(), "/call").await.unwrap();
    client.send(true, 1, b"subscribe").await.unwrap();
    let mut ws = backend.accept().await;
    assert_eq!(backend_text(&mut ws).await, "subscribe");
    ws.write_frame(Frame::new(
        false,
        OpCode::Text,
        None,
        Payload::Owned(b"first half".to_vec()),
    ))
    .await
    .unwrap();
    let f = client_frame(&mut client).await;
    assert!(!f.fin && f.payload == b"first half", "{f:?}");
    drop(ws);
    assert_eq!(client_close(&mut client).await, Some(1014));
    wait_total(&shunt, "gave_up", 1).await;
    assert_eq!(reattach_total(&shunt, "ok").await, 0);
}

#[tokio::test]
async fn deflate_with_context_takeover_is_not_reattachable() {
    let (mut backend, _) =
        WsBackend::spawn_negotiating(&[("sec-websocket-extensions", "permessage-deflate")]).await;
    let (shunt, _config) = start(&[("direct", backend.url())], "").await;
    let mut client = RawWs::connect(shunt.addr(), "/call").await.unwrap();
    let ws = backend.accept().await;
    wait_total(&shunt, "not_reattachable", 1).await;
    drop(ws);
    assert_eq!(client_close(&mut client).await, Some(1014));
    assert_eq!(reattach_total(&shunt, "ok").await, 0);
}

#[tokio::test]
async fn no_upstream_back_within_reattach_within_closes_with_1014() {
    let mut backend = WsBackend::spawn().await;
    let (shunt, _config) = start(&[("direct", backend.url())], "reattach_within = \"400ms\"").await;
    let mut client = RawWs::connect(shunt.addr(), "/call").await.unwrap();
    let ws = backend.accept().await;
    drop(ws);
    drop(backend);
    let started = tokio::time::Instant::now();
    assert_eq!(client_close(&mut client).await, Some(1014));
    assert!(
        started.elapsed() >= Duration::from_millis(350),
        "closed before reattach_within"
    );
    wait_total(&shunt, "gave_up", 1).await;
}

#[tokio::test]
async fn a_full_reattach_buffer_closes_with_1014() {
    let mut backend = WsBackend::spawn().await;
    let (shunt, _config) = start(&[("direct", backend.url())], "reattach_buffer = \"1 KiB\"").await;
    let mut client = RawWs::connect(shunt.addr(), "/call").await.unwrap();
    let ws = backend.accept().await;
    drop(ws);
    drop(backend);
    wait_reattaching(&shunt).await;
    for _ in 0..4 {
        client.send(true, 2, &[7; 400]).await.unwrap();
    }
    // Well before reattach_within (10 s).
    assert_eq!(client_close(&mut client).await, Some(1014));
    wait_total(&shunt, "gave_up", 1).await;
}

#[tokio::test]
async fn another_subprotocol_on_the_new_101_gives_up() {
    let (mut first, _) =
        WsBackend::spawn_negotiating(&[("sec-websocket-protocol", "audio.v1")]).await;
    let (mut other, _) =
        WsBackend::spawn_negotiating(&[("sec-websocket-protocol", "audio.v2")]).await;
    let (shunt, _config) = start(&[("direct", first.url()), ("nginx", other.url())], "").await;
    let (mut client, head) = RawWs::connect_with(
        shunt.addr(),
        "/call",
        &["Sec-WebSocket-Protocol: audio.v1, audio.v2"],
    )
    .await
    .unwrap();
    assert!(head.to_ascii_lowercase().contains("audio.v1"), "{head}");
    let ws = first.accept().await;
    drop(ws);
    drop(first);
    let _refused = other.accept().await;
    assert_eq!(client_close(&mut client).await, Some(1014));
    wait_total(&shunt, "gave_up", 1).await;
}

#[tokio::test]
async fn a_backend_that_stops_answering_pings_is_replaced() {
    let mut backend = WsBackend::spawn().await;
    let (shunt, _config) = start(
        &[("direct", backend.url())],
        "ping_interval = \"200ms\"\nping_timeout = \"300ms\"",
    )
    .await;
    let mut client = RawWs::connect(shunt.addr(), "/call").await.unwrap();
    client.send(true, 1, b"subscribe").await.unwrap();
    // This connection is never read again: shunt's Pings to it go unanswered.
    let mut silent = backend.accept().await;
    assert_eq!(backend_text(&mut silent).await, "subscribe");
    // The client answers shunt's Pings meanwhile, so only the backend leg is silent.
    let accept = backend.accept();
    tokio::pin!(accept);
    let mut ws = loop {
        tokio::select! {
            ws = &mut accept => break ws,
            f = client.read_frame(LIMIT) => {
                let f = f.expect("the client leg stays open");
                assert_eq!(f.opcode, 9, "only shunt's Pings reach the client: {f:?}");
                client.send(true, 10, &f.payload).await.unwrap();
            }
        }
    };
    assert_eq!(backend_text(&mut ws).await, "subscribe");
    backend_send(&mut ws, "fresh").await;
    assert_eq!(client_text(&mut client).await, "fresh");
    assert_eq!(the_call(&shunt).await["reattached"], 1);
    drop(silent);
}

#[tokio::test]
async fn drain_closes_a_reattachable_call_as_before() {
    let (mut backend, seen) = WsBackend::spawn_negotiating(&[]).await;
    let (shunt, _config) = start_with(
        &[("direct", backend.url())],
        "",
        &[("--drain-timeout", "300ms")],
    )
    .await;
    let mut client = RawWs::connect(shunt.addr(), "/call").await.unwrap();
    let mut ws = backend.accept().await;
    shunt.shutdown();
    assert_eq!(
        client_close(&mut client).await,
        Some(1012),
        "service restart"
    );
    client.send_close(1012).await.unwrap();
    assert_eq!(
        support::calls::next_close(&mut ws, LIMIT).await,
        1001,
        "going away"
    );
    // The backend answers with 1001 too: an answer, not a reason to reattach.
    ws.write_frame(Frame::close(1001, b"")).await.unwrap();
    assert!(shunt.stop_within(LIMIT).await, "shunt stopped");
    assert_eq!(seen.lock().unwrap().len(), 1, "no second handshake");
}

// ---- a real browser --------------------------------------------------------------

/// tests/browser: playwright-core, the `ws` package and the scripts.
fn browser_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

fn chromium() -> std::path::PathBuf {
    std::env::var_os("CHROMIUM").map_or_else(
        || std::path::PathBuf::from("/usr/bin/chromium"),
        std::path::PathBuf::from,
    )
}

/// Whether chromium, node and tests/browser's packages are there; a visible
/// skip when not, or a failure where the browser is required.
fn browser_available() -> bool {
    let node = std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let missing = if !chromium().is_file() {
        Some(format!(
            "{} not found (apt-get install chromium)",
            chromium().display()
        ))
    } else if !node {
        Some("node not found (apt-get install nodejs)".to_owned())
    } else if !browser_dir().join("node_modules/playwright-core").is_dir()
        || !browser_dir().join("node_modules/ws").is_dir()
    {
        Some("tests/browser/node_modules missing (run npm ci in tests/browser)".to_owned())
    } else {
        None
    };
    support::require(support::Part::Browser, missing.map_or(Ok(()), Err)).is_some()
}

/// The Node `ws` backend (tests/browser/ws_backend.js), generation `generation`
/// on `port`; killed on drop.
struct NodeBackend(tokio::process::Child);

impl NodeBackend {
    /// Starts it and waits (bounded) until it listens; the port of a killed
    /// one may take a moment to be free again.
    async fn start(port: u16, generation: u32) -> NodeBackend {
        use tokio::io::AsyncBufReadExt;
        for _ in 0..20 {
            let mut child = tokio::process::Command::new("node")
                .arg("ws_backend.js")
                .arg(port.to_string())
                .arg(generation.to_string())
                .current_dir(browser_dir())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .expect("start node");
            let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
            let listening = tokio::time::timeout(LIMIT, lines.next_line()).await;
            if let Ok(Ok(Some(line))) = listening
                && line == "LISTENING"
            {
                return NodeBackend(child);
            }
            let _ = child.kill().await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the node backend did not listen on {port}");
    }

    /// SIGKILL: every connection it held is lost without a Close.
    async fn kill(mut self) {
        let _ = self.0.kill().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_call_survives_three_backend_restarts() {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    if !browser_available() {
        return;
    }
    let port = support::free_port();
    let mut backend = NodeBackend::start(port, 1).await;
    let (shunt, _config) = start(&[("direct", format!("http://127.0.0.1:{port}"))], "").await;
    let plan = serde_json::json!({
        "url": format!("ws://{}/call", shunt.addr()),
        "restarts": 3,
    });
    let mut child = tokio::process::Command::new("node")
        .arg("reattach.js")
        .arg(plan.to_string())
        .env("CHROMIUM", chromium())
        .current_dir(browser_dir())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start node");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut stderr = child.stderr.take().expect("stderr");
    let mut output = String::new();
    let mut generation = 1;
    let drive = async {
        while let Some(line) = lines.next_line().await.expect("the script's output") {
            output.push_str(&line);
            output.push('\n');
            if line.starts_with("STEP restart") {
                backend.kill().await;
                generation += 1;
                backend = NodeBackend::start(port, generation).await;
                stdin.write_all(b"ok\n").await.expect("answer the script");
                stdin.flush().await.expect("answer the script");
            }
        }
        let mut err = String::new();
        stderr
            .read_to_string(&mut err)
            .await
            .expect("the script's errors");
        (child.wait().await.expect("wait for node"), err)
    };
    let (status, err) = tokio::time::timeout(Duration::from_secs(90), drive)
        .await
        .expect("the browser script ran over 90 s");
    println!("{output}");
    assert!(
        status.success(),
        "the browser script failed ({status}):\n{err}\n{output}"
    );
    assert!(output.contains("PASS onclose never fired"), "{output}");
    assert_eq!(generation, 4);
    assert_eq!(reattach_total(&shunt, "ok").await, 3);
    assert_eq!(reattach_total(&shunt, "gave_up").await, 0);
}
