//! The access log, as an operator reads it from the binary's stderr: one
//! line per request with `peer method path status route upstream websocket
//! ms`, in both formats. Access lines are batched per worker thread before
//! they reach stderr, so these tests also check that a batch is written
//! while the proxy is idle, and that the lines of the last requests before a
//! SIGTERM are not lost.

use crate::support;

use http::StatusCode;
use support::{HttpConn, echo_backend, shunt};

/// Requests each test sends, on keep-alive connections and fresh ones.
const REQUESTS: usize = 40;

/// Sends [`REQUESTS`] GETs to distinct paths: half on one keep-alive
/// connection, half on a fresh connection each (so both workers serve some).
async fn send_requests(listen: std::net::SocketAddr, tag: &str) {
    let mut keep = HttpConn::connect(listen).await.expect("connect");
    for i in 0..REQUESTS {
        let path = format!("/{tag}/{i}");
        let resp = if i % 2 == 0 {
            keep.get(&path, &[]).await
        } else {
            support::http_get(listen, &path, &[]).await
        }
        .expect("request");
        assert_eq!(resp.status, StatusCode::OK, "{path}");
    }
}

/// The access lines of stderr (pretty format), colour-free since stderr is a pipe.
fn access_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.contains("shunt::access"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_request_is_one_line_and_none_is_lost_at_exit() {
    let backend = echo_backend().spawn().await;
    let served = shunt()
        .flags(&["--workers", "2", "--direct", &backend.url()])
        .spawn_process_ready()
        .await;
    send_requests(served.addr(), "idle").await;
    // Idle now: the batch reaches stderr without more traffic.
    let last = format!("path=/idle/{}", REQUESTS - 1);
    let written = support::eventually(std::time::Duration::from_secs(5), async || {
        served.log().contains(&last)
    })
    .await;
    assert!(written, "an idle proxy's batched lines reach stderr");
    // A second burst, then SIGTERM at once: the stop sweeps the batches.
    send_requests(served.addr(), "exit").await;
    let (code, stderr) = served.stop().await;
    assert_eq!(code, Some(0), "{stderr}");
    let lines = access_lines(&stderr);
    for tag in ["idle", "exit"] {
        for i in 0..REQUESTS {
            let path = format!("path=/{tag}/{i} ");
            let found: Vec<_> = lines.iter().filter(|l| l.contains(&path)).collect();
            assert_eq!(found.len(), 1, "one line for {path}; stderr:\n{stderr}");
            let line = found[0];
            for field in [
                "method=GET",
                "status=200",
                "upstream=direct",
                "websocket=false",
                "peer=127.0.0.1:",
                " ms=",
            ] {
                assert!(line.contains(field), "{field} in {line:?}");
            }
        }
    }
    // The process's own events are still there, in their order.
    let listening = stderr.find("listening").expect("a listening line");
    let stopped = stderr.rfind("stopped").expect("a stopped line");
    assert!(listening < stopped, "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_access_lines_carry_flat_fields() {
    let backend = echo_backend().spawn().await;
    let served = shunt()
        .flags(&["--log-format", "json", "--direct", &backend.url()])
        .spawn_process_ready()
        .await;
    send_requests(served.addr(), "json").await;
    let (code, stderr) = served.stop().await;
    assert_eq!(code, Some(0), "{stderr}");
    let access: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .filter(|v: &serde_json::Value| v["target"] == "shunt::access")
        .collect();
    assert_eq!(access.len(), REQUESTS, "{stderr}");
    for line in &access {
        assert_eq!(line["message"], "request", "{line}");
        assert_eq!(line["method"], "GET", "{line}");
        assert_eq!(line["status"], 200, "{line}");
        assert_eq!(line["upstream"], "direct", "{line}");
        assert!(line["ms"].is_u64(), "{line}");
    }
    // Lines of different workers may interleave: compare as a set.
    let mut paths: Vec<String> = access
        .iter()
        .map(|l| l["path"].as_str().expect("path").to_owned())
        .collect();
    paths.sort();
    let mut want: Vec<String> = (0..REQUESTS).map(|i| format!("/json/{i}")).collect();
    want.sort();
    assert_eq!(paths, want);
}

/// `RUST_LOG` decides whether access lines are written, as for any other
/// target: `warn`, or `shunt::access=off`, silences them (the process's own
/// lines follow the rest of the filter); `warn,shunt::access=info` keeps them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_log_filters_access_lines() {
    let backend = echo_backend().spawn().await;
    for (filter, access, stopped) in [
        ("warn", false, false),
        ("info,shunt::access=off", false, true),
        ("warn,shunt::access=info", true, false),
    ] {
        let served = shunt()
            .env("RUST_LOG", filter)
            .flags(&["--workers", "2", "--direct", &backend.url()])
            .spawn_process_ready()
            .await;
        send_requests(served.addr(), "filtered").await;
        let (code, stderr) = served.stop().await;
        assert_eq!(code, Some(0), "{stderr}");
        let lines = access_lines(&stderr);
        let want = if access { REQUESTS } else { 0 };
        assert_eq!(lines.len(), want, "RUST_LOG={filter}:\n{stderr}");
        assert_eq!(
            stderr.contains("stopped"),
            stopped,
            "RUST_LOG={filter}:\n{stderr}"
        );
    }
}
