//! The bench's independent WebSocket client (`examples/wsbench.js`: Node.js
//! and the `ws` package, no code shared with `examples/loadgen.rs`) against
//! shunt: its handshake and round-trip modes over `ws://`, and full against
//! resumed TLS handshakes over `wss://`, as the client and shunt's
//! `/status` counters both see them.

use crate::support;

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use support::require::Part;
use support::tls::tls_in_front;

/// Whether node and `tests/browser/node_modules/ws` are here; without them
/// the test is skipped, visibly, or fails where node is required.
fn node_with_ws() -> bool {
    let ws = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/node_modules/ws");
    let node = std::process::Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !node || !ws.is_dir() {
        support::require::missing(
            Part::Node,
            "node and tests/browser/node_modules/ws (npm ci in tests/browser)",
        );
        return false;
    }
    true
}

/// Run `examples/wsbench.js` with `args` (bounded to 60 s) and parse its JSON line.
async fn wsbench(args: &[&str]) -> Value {
    let root = env!("CARGO_MANIFEST_DIR");
    let run = tokio::process::Command::new("node")
        .arg(Path::new(root).join("examples/wsbench.js"))
        .args(args)
        .current_dir(root)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("wsbench.js within 60 s")
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "wsbench.js {args:?} failed: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("{e}: {stdout:?}"))
}

/// A JSON field as an integer.
fn n(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no integer {key} in {v}"))
}

/// `/status` `tls.handshakes` as (full, resumed).
async fn kinds(proxy: &support::Shunt) -> (u64, u64) {
    let status = proxy.status().await.unwrap();
    let h = &status["tls"]["handshakes"];
    (
        h["full"].as_u64().unwrap_or_else(|| panic!("{status}")),
        h["resumed"].as_u64().unwrap_or_else(|| panic!("{status}")),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wsbench_handshakes_and_round_trips_through_shunt() {
    if !node_with_ws() {
        return;
    }
    let backend = support::echo_backend().spawn().await;
    let proxy = support::shunt().direct(backend.url()).start().await;
    let url = format!("ws://{}/bench", proxy.addr());

    let hs = wsbench(&[
        "--url",
        &url,
        "--mode",
        "handshakes",
        "--conns",
        "4",
        "--duration",
        "1",
        "--procs",
        "2",
    ])
    .await;
    assert_eq!(hs["client"], "node-ws", "{hs}");
    assert_eq!(n(&hs, "failures"), 0, "{hs}");
    assert!(n(&hs, "handshakes") >= 4, "{hs}");
    assert!(hs["per_s"].as_f64().unwrap() > 0.0, "{hs}");
    assert!(n(&hs, "p99_us") >= n(&hs, "p50_us"), "{hs}");
    assert!(n(&hs, "client_cpu_us") > 0, "{hs}");

    let rtt = wsbench(&[
        "--url",
        &url,
        "--mode",
        "rtt",
        "--conns",
        "4",
        "--interval-ms",
        "20",
        "--duration",
        "1",
        "--procs",
        "2",
    ])
    .await;
    assert_eq!(n(&rtt, "failures"), 0, "{rtt}");
    assert_eq!(n(&rtt, "connect_errors"), 0, "{rtt}");
    // 4 calls at 50 messages/s for the 1 s after the warm-up: about 200.
    assert!(n(&rtt, "messages") >= 100, "{rtt}");
    assert!(
        n(&rtt, "p50_us") > 0 && n(&rtt, "p99_us") >= n(&rtt, "p50_us"),
        "{rtt}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wsbench_full_and_resumed_tls_handshakes_match_shunts_counters() {
    if !node_with_ws() {
        return;
    }
    let (pki, _, _backend, proxy) = tls_in_front("server", &["127.0.0.1"], "direct").await;
    let proxy = proxy.start().await;
    let url = format!("wss://{}/bench", proxy.addr());
    let ca = pki.ca_file();

    let out = wsbench(&[
        "--url",
        &url,
        "--ca",
        ca.to_str().unwrap(),
        "--mode",
        "tls-handshakes",
        "--conns",
        "3",
        "--duration",
        "1",
        "--procs",
        "1",
    ])
    .await;
    let (full, resumed) = (n(&out, "full_handshakes"), n(&out, "resumed_handshakes"));
    assert!(full >= 3 && resumed >= 3, "{out}");
    assert_eq!(
        n(&out, "full_failures") + n(&out, "resumed_failures"),
        0,
        "{out}"
    );
    // The client offered no session in the full phase, and every offered one resumed.
    assert_eq!(n(&out, "full_resumed_seen"), 0, "{out}");
    assert_eq!(n(&out, "resumed_resumed_seen"), resumed, "{out}");
    // shunt saw the same: the full phase plus one uncounted full handshake
    // per loop to get the first session, and exactly the resumed ones.
    assert_eq!(kinds(&proxy).await, (full + 3, resumed), "{out}");
}
