//! Active health probes against upstreams that accept TCP but fail the
//! check, and the WebSocket check that runs whatever the probe kind.

use crate::support;

use std::net::SocketAddr;

use support::shunt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// An upstream that answers every request with `status_line` and closes.
async fn fixed_answer(status_line: &'static str) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        // Bounded: the test drops the task long before this many probes.
        for _ in 0..10_000 {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let answer = format!(
                    "HTTP/1.1 {status_line}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
                let _ = s.write_all(answer.as_bytes()).await;
            });
        }
    });
    (addr, task)
}

/// shunt with `direct` at `addr`, probed with `--health-check CHECK` (the
/// default TCP probe when `None`).
async fn probing(addr: SocketAddr, check: Option<&str>) -> support::Shunt {
    let mut builder = shunt().direct(format!("http://{addr}"));
    if let Some(check) = check {
        builder = builder.arg("--health-check", check);
    }
    builder.start().await
}

/// Upstream `name`'s `last_error` in `/status`.
async fn last_error(proxy: &support::Shunt, name: &str) -> String {
    let upstream = proxy.upstream(name).await.unwrap();
    upstream["last_error"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_probe_marks_an_upstream_that_does_not_upgrade_down() {
    let (addr, task) = fixed_answer("200 OK").await;
    let proxy = probing(addr, Some("ws:/frontend-audio")).await;
    proxy.wait_upstream("direct", "down").await;
    let err = last_error(&proxy, "direct").await;
    assert!(
        err.contains("/frontend-audio") && err.contains("200"),
        "{err}"
    );
    let (code, body) = proxy.admin_get("/readyz").await.unwrap();
    assert_eq!(code, 503);
    assert!(
        body.contains("websocket handshake on /frontend-audio"),
        "{body}"
    );
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_probe_marks_a_failing_upstream_down_and_tcp_probe_does_not() {
    let (addr, task) = fixed_answer("500 Internal Server Error").await;
    let http = probing(addr, Some("http:/health")).await;
    http.wait_upstream("direct", "down").await;
    let err = last_error(&http, "direct").await;
    assert!(err.contains("GET /health answered 500"), "{err}");
    // A TCP probe only checks that something listens.
    let tcp = probing(addr, None).await;
    tcp.wait_upstream("direct", "up").await;
    task.abort();
}

/// Every probe names itself, so a backend that counts connected agents can
/// tell it from a browser: `User-Agent: shunt-health/VERSION` and
/// `X-Shunt-Probe: 1`, on `http:` and `ws:` probes alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_send_their_user_agent_and_the_probe_header() {
    for check in ["http:/health", "ws:/frontend-audio"] {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let heads = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let seen = heads.clone();
        let task = tokio::spawn(async move {
            for _ in 0..1_000 {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let mut buf = vec![0u8; 4096];
                let n = s.read(&mut buf).await.unwrap_or(0);
                seen.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&buf[..n]).to_lowercase());
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
            }
        });
        let _proxy = probing(addr, Some(check)).await;
        let probed = support::eventually(std::time::Duration::from_secs(5), async || {
            !heads.lock().unwrap().is_empty()
        })
        .await;
        assert!(probed, "no probe arrived ({check})");
        let head = heads.lock().unwrap()[0].clone();
        let agent = format!("user-agent: shunt-health/{}\r\n", env!("CARGO_PKG_VERSION"));
        assert!(head.contains(&agent), "{check}: {head}");
        assert!(head.contains("x-shunt-probe: 1\r\n"), "{check}: {head}");
        task.abort();
    }
}

/// The WebSocket check of a route declared `websocket = true` is a real
/// handshake on the route's path, sent even though the upstream's probe is
/// `tcp`, and names itself like every probe (`User-Agent:
/// shunt-health/VERSION`, `X-Shunt-Probe: 1`). An upstream that answers it
/// 200 makes the route degraded while `direct` serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_websocket_check_handshakes_on_the_route_path_whatever_the_probe_kind() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heads = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let seen = heads.clone();
    let task = tokio::spawn(async move {
        for _ in 0..1_000 {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let mut buf = vec![0u8; 4096];
            let n = s.read(&mut buf).await.unwrap_or(0);
            if n > 0 {
                seen.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&buf[..n]).to_lowercase());
            }
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                .await;
        }
    });
    let direct = support::echo_backend().name("direct").spawn().await;
    let config = support::TempFile::new(
        "ws-check-declared.toml",
        "[[routes]]\npath = \"/frontend-audio\"\nvia = [\"direct\", \"nginx\"]\nwebsocket = true\n",
    );
    let proxy = shunt()
        .direct(direct.url())
        .nginx(format!("http://{addr}"))
        .arg("--config", config.path())
        .arg("--health-check", "tcp")
        .arg("--ws-check-interval", "200ms")
        .start_ready()
        .await;
    let checked = support::eventually(std::time::Duration::from_secs(10), async || {
        !heads.lock().unwrap().is_empty()
    })
    .await;
    assert!(
        checked,
        "no WebSocket check reached the tcp-probed upstream"
    );
    let head = heads.lock().unwrap()[0].clone();
    let agent = format!("user-agent: shunt-health/{}\r\n", env!("CARGO_PKG_VERSION"));
    for line in [
        "get /frontend-audio http/1.1\r\n",
        "upgrade: websocket\r\n",
        "sec-websocket-version: 13\r\n",
        agent.as_str(),
        "x-shunt-probe: 1\r\n",
    ] {
        assert!(head.contains(line), "{line:?} missing from {head}");
    }
    let degraded = support::eventually(std::time::Duration::from_secs(10), async || {
        let (code, body) = proxy.admin_get_json("/readyz").await;
        code == 200
            && body["degraded"].as_array().is_some_and(|d| {
                d.iter().any(|e| {
                    e["route"] == "/frontend-audio"
                        && e["upstream"] == "nginx"
                        && e["reason"].as_str().is_some_and(|r| {
                            r.contains("answered 200 to a WebSocket upgrade on /frontend-audio")
                        })
                })
            })
    })
    .await;
    assert!(degraded, "{:?}", proxy.admin_get("/readyz").await);
    task.abort();
}
