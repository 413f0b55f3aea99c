//! The admin listener's own endpoints: /metrics, unknown paths and methods.

use crate::support;

use support::ws::recv_text;
use support::{echo_backend, http_get, shunt, ws_connect};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_tunnels_and_health() {
    let backend = echo_backend().spawn().await;
    let proxy = shunt().direct(backend.url()).start_ready().await;
    let resp = http_get(proxy.addr(), "/x", &[]).await.unwrap();
    assert_eq!(resp.status, 200);
    let (mut ws, _) = ws_connect(proxy.addr(), "/frontend-audio", &[])
        .await
        .unwrap();
    recv_text(&mut ws).await.unwrap();

    let (code, body) = proxy.admin_get("/metrics").await.unwrap();
    assert_eq!(code, 200);
    for line in [
        "shunt_requests_total{class=\"2xx\"} 1",
        "shunt_upgrades_total{class=\"1xx\"} 1",
        "shunt_tunnels_active{route=\"/\",upstream=\"direct\"} 1",
        "shunt_upstream_up{upstream=\"direct\"} 1",
        "shunt_config_generation 1",
        "shunt_log_lines_dropped_total 0",
    ] {
        assert!(
            body.lines().any(|l| l == line),
            "missing {line:?} in\n{body}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_admin_paths_and_methods_are_refused() {
    let proxy = shunt().start().await;
    let (code, body) = proxy.admin_get("/nope").await.unwrap();
    assert_eq!(code, 404);
    assert!(body.contains("/readyz"), "{body}");
    let (code, _) = proxy.admin_get("/reload").await.unwrap();
    assert_eq!(code, 405);
}
