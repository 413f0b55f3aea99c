//! `--workers`: the binary serves the proxy listener from several worker
//! threads (one runtime and SO_REUSEPORT listener each) that share the
//! counters, and drains and exits as with one.

use crate::support;

use std::time::Duration;

use http::StatusCode;
use support::bin::run_shunt;
use support::{echo_backend, ws, ws_connect};

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
    let served = support::draining_child(&backend.url())
        .flags(&["--workers", "3", "--no-watch"])
        .spawn_process_ready()
        .await;
    let (listen, admin) = (served.addr(), served.admin_addr());

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

    let (code, stderr) = served.stop().await;
    // The live tunnel is closed at the drain deadline, then the process exits.
    assert!(
        ws::wait_closed(&mut socket, Duration::from_secs(2))
            .await
            .is_ok()
    );
    let stderr = plain(&stderr);
    assert_eq!(code, Some(0), "stderr:\n{stderr}");
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

/// A second shunt cannot join the port of a running one through
/// `SO_REUSEPORT`: its start fails with exit 2, naming the holder, and
/// every request keeps reaching the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_shunt_cannot_bind_a_held_port_and_names_the_holder() {
    let backend = echo_backend().name("direct-backend").spawn().await;
    let first = support::draining_child(&backend.url())
        .flags(&["--workers", "2", "--no-watch"])
        .spawn_process_ready()
        .await;
    let other_admin = support::free_port().to_string();
    let second = run_shunt(
        &[
            "run",
            "--listen",
            &first.addr().to_string(),
            "--admin",
            &format!("127.0.0.1:{other_admin}"),
            "--direct",
            "http://127.0.0.1:9",
            "--workers",
            "2",
            "--no-watch",
        ],
        Duration::from_secs(10),
    )
    .await;
    let stderr = plain(second.refused("a port another shunt holds"));
    assert_eq!(second.code, Some(2), "stderr:\n{stderr}");
    assert!(
        stderr.contains(&format!("cannot bind proxy listener on {}", first.addr())),
        "stderr:\n{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "held by shunt (pid {})",
            first.child.id().expect("running")
        )),
        "the holder is named: stderr:\n{stderr}"
    );
    assert!(stderr.contains("shunt doctor"), "stderr:\n{stderr}");
    // Every connection still reaches the first shunt, whose logs show them.
    for i in 0..20 {
        let resp = support::http_get(first.addr(), &format!("/after{i}"), &[])
            .await
            .unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(resp.status, StatusCode::OK, "request {i}");
    }
    let metrics = support::http_get(first.admin_addr(), "/metrics", &[])
        .await
        .unwrap()
        .text();
    assert!(
        metrics
            .lines()
            .any(|l| l == "shunt_requests_total{class=\"2xx\"} 20"),
        "all 20 requests were served by the first shunt:\n{metrics}"
    );
    assert_eq!(first.terminate().await, Some(0));
}
