//! `--workers`: the binary serves the proxy listener from several worker
//! threads (one runtime and SO_REUSEPORT listener each) that share the
//! counters, and drains and exits as with one.

mod support;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use http::StatusCode;
use support::bin::run_shunt;
use support::{echo_backend, eventually, ws, ws_connect};

/// `text` without ANSI colour sequences.
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_share_the_port_and_the_counters_and_drain() {
    let backend = echo_backend().name("direct-backend").spawn().await;
    let listen = SocketAddr::from(([127, 0, 0, 1], support::free_port()));
    let admin = SocketAddr::from(([127, 0, 0, 1], support::free_port()));
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_shunt"))
        .args(["run", "--listen", &listen.to_string()])
        .args(["--admin", &admin.to_string(), "--workers", "3"])
        .args(["--direct", &backend.url(), "--drain-timeout", "500ms"])
        .args(["--health-interval", "100ms", "--no-watch"])
        .env_remove("SHUNT_WORKERS")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn shunt");
    let mut pipe = child.stderr.take().expect("stderr");
    let stderr = tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text).await;
        text
    });
    let up = eventually(Duration::from_secs(10), async || {
        support::http_get(admin, "/readyz", &[])
            .await
            .is_ok_and(|r| r.status == StatusCode::OK)
    })
    .await;
    if !up {
        let _ = child.start_kill();
        let _ = child.wait().await;
        panic!("never ready; stderr:\n{}", stderr.await.unwrap_or_default());
    }

    // Each request on its own connection, spread over the workers by the kernel.
    for i in 0..30 {
        let resp = support::http_get(listen, &format!("/r{i}"), &[])
            .await
            .unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(resp.status, StatusCode::OK, "request {i}");
    }
    let (mut socket, _) = ws_connect(listen, "/frontend-audio", &[]).await.unwrap();
    assert_eq!(
        ws::recv_text(&mut socket).await.unwrap(),
        "hello from direct-backend"
    );
    // One set of counters across the workers.
    let metrics = support::http_get(admin, "/metrics", &[])
        .await
        .unwrap()
        .text();
    for line in [
        "shunt_requests_total{class=\"2xx\"} 30",
        "shunt_tunnels_active{route=\"/\",upstream=\"direct\"} 1",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no {line:?} in\n{metrics}"
        );
    }

    let pid = child.id().expect("pid").to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill")
            .success()
    );
    let status = match tokio::time::timeout(Duration::from_secs(10), child.wait()).await {
        Ok(status) => status.expect("wait"),
        Err(_) => {
            let _ = child.start_kill();
            panic!("shunt did not exit within 10 s of SIGTERM");
        }
    };
    // The live tunnel is closed at the drain deadline, then the process exits.
    assert!(
        ws::wait_closed(&mut socket, Duration::from_secs(2))
            .await
            .is_ok()
    );
    let stderr = tokio::time::timeout(Duration::from_secs(2), stderr)
        .await
        .ok()
        .and_then(Result::ok)
        .map(|t| plain(&t))
        .unwrap_or_default();
    assert_eq!(status.code(), Some(0), "stderr:\n{stderr}");
    assert!(stderr.contains("workers=3"), "stderr:\n{stderr}");
    assert!(
        stderr.lines().any(|l| l.ends_with(" stopped")),
        "stderr:\n{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_workers_is_refused() {
    let out = run_shunt(&["run", "--workers", "0"], Duration::from_secs(10)).await;
    let stderr = out.refused("--workers 0");
    assert!(stderr.contains("--workers"), "{stderr}");
}
