//! No stale refusals: with probes an hour apart, only the request path can
//! notice that an upstream came back. Panic routing (every upstream marked
//! down is tried anyway) lets the request through, and passive recovery (a
//! request that connects marks its upstream up) makes `/readyz` and
//! `/status` say so at once.

use crate::support;

use std::net::SocketAddr;

use hyper::StatusCode;
use support::{EchoBackend, Shunt, echo_backend, free_port, raw_request, shunt, ws, ws_connect};

/// Probes an hour apart: after the first one at start, health changes only
/// through real requests.
async fn shunt_probing_hourly(direct: SocketAddr) -> Shunt {
    shunt()
        .direct(format!("http://{direct}"))
        .route("/frontend-audio=direct")
        .arg("--health-interval", "1h")
        .arg("--fall", "1")
        .arg("--rise", "3")
        .start()
        .await
}

/// A WebSocket handshake on `/frontend-audio` and its hello text.
async fn hello(shunt: &Shunt) -> Result<String, support::BoxError> {
    let (mut socket, _) = ws_connect(shunt.addr(), "/frontend-audio", &[]).await?;
    ws::recv_text(&mut socket).await
}

fn upgrade_request() -> Vec<u8> {
    b"GET /frontend-audio HTTP/1.1\r\nHost: shunt.test\r\nUpgrade: websocket\r\n\
      Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
      Sec-WebSocket-Version: 13\r\n\r\n"
        .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_started_after_shunt_is_used_at_once() {
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let shunt = shunt_probing_hourly(addr).await;
    shunt.wait_upstream("direct", "down").await;

    // Still nothing listening: an error answer naming the upstream, not a hang.
    let refused = raw_request(shunt.addr(), &upgrade_request())
        .await
        .expect("an answer while the backend is absent");
    assert_eq!(refused.status, 503, "{refused:?}");
    let (code, _) = shunt.admin_get("/readyz").await.unwrap();
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);

    let _backend: EchoBackend = EchoBackend::spawn_on(addr, "late").await;
    // The next probe is an hour away; the request itself finds the backend.
    assert_eq!(hello(&shunt).await.expect("handshake"), "hello from late");
    assert_eq!(shunt.upstream_health("direct").await.unwrap(), "up");
    let (code, body) = shunt.admin_get("/readyz").await.unwrap();
    assert_eq!(code, StatusCode::OK, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_restarted_between_probes_is_used_again_at_once() {
    let mut backend = echo_backend().name("direct").spawn().await;
    let shunt = shunt_probing_hourly(backend.addr()).await;
    shunt.wait_upstream("direct", "up").await;
    assert_eq!(hello(&shunt).await.unwrap(), "hello from direct");

    backend.stop().await;
    let refused = raw_request(shunt.addr(), &upgrade_request())
        .await
        .expect("an answer while the backend is stopped");
    assert!([502, 503].contains(&refused.status), "{refused:?}");
    // The failed connect marked it down (fall = 1), and /readyz says so.
    assert_eq!(shunt.upstream_health("direct").await.unwrap(), "down");
    let (code, _) = shunt.admin_get("/readyz").await.unwrap();
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);

    backend.restart().await;
    // rise = 3 and no probe for an hour: only passive recovery can bring it up.
    assert_eq!(hello(&shunt).await.expect("handshake"), "hello from direct");
    assert_eq!(shunt.upstream_health("direct").await.unwrap(), "up");
    let (code, body) = shunt.admin_get("/readyz").await.unwrap();
    assert_eq!(code, StatusCode::OK, "{body}");
}
