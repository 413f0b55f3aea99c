//! Per-IP rate, per-IP tunnel cap, global connection cap.

use tokio::io::AsyncWriteExt;

use crate::security::prelude::*;

#[tokio::test]
async fn burst_over_the_rate_gets_429_then_recovers() {
    let (_backend, shunt) = start_with_backend(&["--rate", "5/s", "--burst", "3"]).await;
    let a = shunt.addr();
    for i in 0..3 {
        assert_eq!(
            raw_from(a, "127.0.0.2", &get("/", &[])).await.status,
            Some(200),
            "request {i}"
        );
    }
    let limited = raw_from(a, "127.0.0.2", &get("/", &[])).await;
    assert_eq!(limited.status, Some(429), "{limited:?}");
    assert_eq!(limited.header("retry-after").as_deref(), Some("1"));
    // Handshakes count too.
    let (s, _, _) = ws_open(a, "127.0.0.2", "/ws", &[]).await;
    assert_eq!(s, Some(429));
    // Another client is not affected.
    assert_eq!(
        raw_from(a, "127.0.0.3", &get("/", &[])).await.status,
        Some(200)
    );
    // One token every 200 ms: the client recovers soon.
    assert!(
        eventually(IO_TIMEOUT, async || {
            raw_from(a, "127.0.0.2", &get("/", &[])).await.status == Some(200)
        })
        .await,
        "the rate-limited client did not recover"
    );
    shunt.stop().await;
}

#[tokio::test]
async fn tunnels_per_ip_are_capped_and_released() {
    let (_backend, shunt) = start_with_backend(&["--max-conns-per-ip", "2"]).await;
    let a = shunt.addr();
    let (s1, ws1, _) = ws_open(a, "127.0.0.2", "/ws", &[]).await;
    let (s2, ws2, _) = ws_open(a, "127.0.0.2", "/ws", &[]).await;
    assert_eq!((s1, s2), (Some(101), Some(101)));
    let (s3, _, refused) = ws_open(a, "127.0.0.2", "/ws", &[]).await;
    assert_eq!(s3, Some(429), "{refused:?}");
    assert_eq!(refused.header("retry-after").as_deref(), Some("1"));
    // Plain requests are not tunnels.
    assert_eq!(
        raw_from(a, "127.0.0.2", &get("/", &[])).await.status,
        Some(200)
    );
    let (s, _, _) = ws_open(a, "127.0.0.3", "/ws", &[]).await;
    assert_eq!(s, Some(101), "another address has its own count");
    let mut ws1 = ws1.unwrap();
    echo(&mut ws1, "still flowing").await;
    drop(ws1);
    let reopened = eventually(IO_TIMEOUT, async || {
        matches!(ws_open(a, "127.0.0.2", "/ws", &[]).await, (Some(101), _, _))
    })
    .await;
    assert!(reopened, "a closed tunnel gives its slot back");
    drop(ws2);
    shunt.stop().await;
}

#[tokio::test]
async fn global_connection_cap_at_accept() {
    let (_backend, shunt) = start_with_backend(&["--max-conns", "2"]).await;
    let a = shunt.addr();
    let idle1 = connect_from(a, "127.0.0.2").await;
    let (s, ws, _) = ws_open(a, "127.0.0.3", "/ws", &[]).await;
    assert_eq!(s, Some(101));
    // The tunnel still counts once its connection has upgraded.
    let refused = eventually(IO_TIMEOUT, async || {
        raw_from(a, "127.0.0.4", &get("/", &[])).await.status == Some(429)
    })
    .await;
    assert!(refused, "a third connection is refused with 429");
    let answer = raw_from(a, "127.0.0.4", &get("/", &[])).await;
    assert_eq!(answer.header("retry-after").as_deref(), Some("1"));
    drop(idle1);
    drop(ws);
    let admitted = eventually(IO_TIMEOUT, async || {
        raw_from(a, "127.0.0.4", &get("/", &[])).await.status == Some(200)
    })
    .await;
    assert!(admitted, "capacity comes back when connections close");
    shunt.stop().await;
}

#[tokio::test]
async fn many_source_addresses_do_not_grow_state_unbounded() {
    let (_backend, shunt) =
        start_with_backend(&["--rate", "100/s", "--max-tracked-ips", "16"]).await;
    let a = shunt.addr();
    for i in 2..60u8 {
        let from = format!("127.0.{i}.1");
        let mut s = connect_from(a, &from).await;
        s.write_all(&get("/", &[])).await.unwrap();
        let answer = {
            let mut buf = Vec::new();
            let _ = tokio::time::timeout(
                IO_TIMEOUT,
                tokio::io::AsyncReadExt::read_to_end(&mut s, &mut buf),
            )
            .await;
            parse_answer(&buf)
        };
        assert_eq!(answer.status, Some(200), "from {from}");
    }
    shunt.stop().await;
}
