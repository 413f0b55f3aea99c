//! `examples/audio_client`, the built binary, run as a user runs it against
//! shunt: plain and `wss://` calls (`--ca`, `--insecure`), `--origin`,
//! `--token` and `--header` reaching shunt's policy, a refused handshake
//! printed with its status and body, and calls that end abnormally (a broken
//! connection, a close code other than 1000) making it exit non-zero with a
//! summary.

use crate::support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use fastwebsockets::{Frame, Payload};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use support::tls::{TestPki, tls_in_front};
use support::{echo_backend, eventually, shunt};
use tokio::net::TcpListener;

/// Bound on one run of the client.
const RUN_LIMIT: Duration = Duration::from_secs(30);

/// A finished run: exit code and what it printed.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn from(output: Output) -> Run {
        Run {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Panics, showing the output, unless stdout contains every one of `needles`.
    fn expect_stdout(&self, needles: &[&str]) {
        for needle in needles {
            assert!(
                self.stdout.contains(needle),
                "expected {needle:?} in audio_client's output (exit {:?})\n--- stdout\n{}\n--- stderr\n{}",
                self.code,
                self.stdout,
                self.stderr
            );
        }
    }
}

async fn client_binary() -> PathBuf {
    tokio::task::spawn_blocking(|| support::examples::example_binary("audio_client"))
        .await
        .expect("build audio_client")
}

/// Runs `audio_client ARGS`, bounded by [`RUN_LIMIT`].
async fn audio_client(args: &[&str]) -> Run {
    let output = tokio::time::timeout(
        RUN_LIMIT,
        tokio::process::Command::new(client_binary().await)
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("audio_client {args:?} did not finish within {RUN_LIMIT:?}"))
    .expect("run audio_client");
    Run::from(output)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_that_complete_exit_0_with_a_summary() {
    let backend = echo_backend().spawn().await;
    let proxy = shunt().direct(backend.url()).start_ready().await;
    let url = proxy.ws_url("/frontend-audio");
    let run = audio_client(&["--url", &url, "--connections", "2", "--seconds", "1"]).await;
    run.expect_stdout(&[
        "route=direct backend=backend",
        "connected: 2/2  upstream: direct  backend: backend",
        "lost=0",
        "calls: completed=2 dropped=0 failed=0",
        "close codes: 1000x2",
    ]);
    assert_eq!(run.code, Some(0), "stdout: {}", run.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_handshake_prints_status_and_body() {
    // Nothing listens on the direct upstream's port.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let proxy = shunt().direct(dead_url).start().await;
    proxy.wait_upstream("direct", "down").await;
    let url = proxy.ws_url("/frontend-audio");
    let run = audio_client(&["--url", &url, "--seconds", "1"]).await;
    run.expect_stdout(&[
        "failed: handshake refused: 503 ",
        "no healthy upstream",
        "calls: completed=0 dropped=0 failed=1",
        "close codes: none",
    ]);
    assert_eq!(run.code, Some(1), "stdout: {}", run.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_token_and_headers_reach_the_policy() {
    let pki = TestPki::new(); // only for its scratch directory
    let tokens = pki.dir.join("tokens");
    std::fs::write(&tokens, "s3cret-token\n").unwrap();
    let backend = echo_backend().spawn().await;
    let proxy = shunt()
        .direct(backend.url())
        .arg("--token-file", tokens.to_str().unwrap())
        .arg("--allow-origin", "https://calls.example.com")
        .flag("--require-origin")
        .start_ready()
        .await;
    let url = proxy.ws_url("/frontend-audio");
    let origin = "https://calls.example.com";

    let no_token = audio_client(&["--url", &url, "--seconds", "1", "--origin", origin]).await;
    no_token.expect_stdout(&["failed: handshake refused: 401 ", "failed=1"]);
    assert_eq!(no_token.code, Some(1));

    let wrong_origin = audio_client(&[
        "--url",
        &url,
        "--seconds",
        "1",
        "--origin",
        "https://evil.example",
        "--token",
        "s3cret-token",
    ])
    .await;
    wrong_origin.expect_stdout(&["failed: handshake refused: 403 ", "https://evil.example"]);
    assert_eq!(wrong_origin.code, Some(1));

    let with_token = audio_client(&[
        "--url",
        &url,
        "--seconds",
        "1",
        "--origin",
        origin,
        "--token",
        "s3cret-token",
    ])
    .await;
    with_token.expect_stdout(&["calls: completed=1 dropped=0 failed=0"]);
    assert_eq!(with_token.code, Some(0), "stdout: {}", with_token.stdout);

    let with_header = audio_client(&[
        "--url",
        &url,
        "--seconds",
        "1",
        "--header",
        &format!("Origin: {origin}"),
        "--header",
        "Authorization: Bearer s3cret-token",
    ])
    .await;
    with_header.expect_stdout(&["calls: completed=1 dropped=0 failed=0"]);
    assert_eq!(with_header.code, Some(0), "stdout: {}", with_header.stdout);

    let bad_header = audio_client(&["--url", &url, "--header", "no colon here"]).await;
    assert_eq!(bad_header.code, Some(2));
    assert!(
        bad_header.stderr.contains("expected 'Name: value'"),
        "stderr: {}",
        bad_header.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_with_a_ca_file_or_insecure() {
    let (pki, _, _backend, proxy) = tls_in_front("server", &["127.0.0.1"], "backend").await;
    let proxy = proxy.start_ready().await;
    let url = format!("wss://{}/frontend-audio", proxy.addr());
    let ca = pki.ca_file();

    let trusted = audio_client(&[
        "--url",
        &url,
        "--seconds",
        "1",
        "--ca",
        ca.to_str().unwrap(),
    ])
    .await;
    trusted.expect_stdout(&["route=direct", "calls: completed=1 dropped=0 failed=0"]);
    assert_eq!(trusted.code, Some(0), "stdout: {}", trusted.stdout);

    let insecure = audio_client(&["--url", &url, "--seconds", "1", "--insecure"]).await;
    insecure.expect_stdout(&["calls: completed=1 dropped=0 failed=0"]);
    assert_eq!(insecure.code, Some(0), "stdout: {}", insecure.stdout);

    // The test CA is not among the system roots: the certificate is refused.
    let untrusted = audio_client(&["--url", &url, "--seconds", "1"]).await;
    assert_ne!(untrusted.code, Some(0), "stdout: {}", untrusted.stdout);
    let said = format!("{}{}", untrusted.stdout, untrusted.stderr);
    assert!(
        said.contains("TLS handshake with") || said.contains("no system root certificates"),
        "output: {said}"
    );

    let plain_with_ca = audio_client(&[
        "--url",
        &proxy.ws_url("/frontend-audio"),
        "--ca",
        ca.to_str().unwrap(),
    ])
    .await;
    assert_eq!(plain_with_ca.code, Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_broken_midway_is_dropped_and_exits_1() {
    let mut backend = echo_backend().spawn().await;
    let proxy = shunt().direct(backend.url()).start_ready().await;
    let url = proxy.ws_url("/frontend-audio");
    let child = tokio::process::Command::new(client_binary().await)
        .args(["--url", &url, "--seconds", "20"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run audio_client");
    assert!(
        eventually(Duration::from_secs(10), async || backend
            .active_websockets()
            == 1)
        .await,
        "the call never reached the backend"
    );
    // The backend dies mid-call.
    backend.stop().await;
    let output = tokio::time::timeout(RUN_LIMIT, child.wait_with_output())
        .await
        .expect("audio_client ends soon after its call broke")
        .expect("wait for audio_client");
    let run = Run::from(output);
    run.expect_stdout(&["dropped: ", "calls: completed=0 dropped=1 failed=0"]);
    assert_eq!(run.code, Some(1), "stdout: {}", run.stdout);
}

/// A WebSocket server that says hello, then closes every call with `code`.
async fn closing_server(code: u16) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(move |mut req| async move {
                    let (response, upgrade) = fastwebsockets::upgrade::upgrade(&mut req)?;
                    tokio::spawn(async move {
                        let Ok(mut ws) = upgrade.await else { return };
                        let hello = Payload::Borrowed(b"hello from closer");
                        let _ = ws.write_frame(Frame::text(hello)).await;
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        let _ = ws.write_frame(Frame::close(code, b"server error")).await;
                    });
                    Ok::<_, fastwebsockets::WebSocketError>(response)
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_code_other_than_1000_exits_1() {
    let server = closing_server(1011).await;
    let url = format!("ws://{server}/frontend-audio");
    let run = audio_client(&["--url", &url, "--seconds", "5"]).await;
    run.expect_stdout(&[
        "backend=closer",
        "close=1011 dropped: closed by the server with 1011",
        "calls: completed=0 dropped=1 failed=0",
        "close codes: 1011x1",
    ]);
    assert_eq!(run.code, Some(1), "stdout: {}", run.stdout);
}
