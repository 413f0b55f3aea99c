//! Origin allowlist on WebSocket handshakes, CORS answers on plain HTTP.

use crate::security::prelude::*;

#[tokio::test]
async fn websocket_origin_allowed_refused_missing() {
    let (backend, shunt) = start_with_backend(&[
        "--allow-origin",
        "https://app.example.com",
        "--allow-origin",
        "https://*.calls.example.com:8443",
    ])
    .await;
    let a = shunt.addr();
    let (s, ws, _) = ws_open(a, "127.0.0.1", "/ws", &["Origin: https://app.example.com"]).await;
    assert_eq!(s, Some(101));
    echo(&mut ws.unwrap(), "hello").await;
    let (s, _, _) = ws_open(
        a,
        "127.0.0.1",
        "/ws",
        &["Origin: https://eu.calls.example.com:8443"],
    )
    .await;
    assert_eq!(s, Some(101));
    let (s, _, refused) =
        ws_open(a, "127.0.0.1", "/ws", &["Origin: https://evil.example.net"]).await;
    assert_eq!(s, Some(403));
    assert!(refused.body().contains("evil.example.net"), "{refused:?}");
    assert!(
        !refused.body().contains("app.example.com"),
        "the allowlist is not revealed"
    );
    for bad in [
        "https://app.example.com.evil.net",
        "http://app.example.com",
        "null",
        "https://calls.example.com:8443",
    ] {
        let (s, _, _) = ws_open(a, "127.0.0.1", "/ws", &[&format!("Origin: {bad}")]).await;
        assert_eq!(s, Some(403), "{bad}");
    }
    // Non-browser client without Origin: allowed by default.
    let (s, _, _) = ws_open(a, "127.0.0.1", "/ws", &[]).await;
    assert_eq!(s, Some(101));
    shunt.stop().await;

    let shunt = start(
        &backend,
        &[
            "--allow-origin",
            "https://app.example.com",
            "--require-origin",
        ],
    )
    .await;
    let (s, _, refused) = ws_open(shunt.addr(), "127.0.0.1", "/ws", &[]).await;
    assert_eq!(s, Some(403));
    assert!(refused.body().contains("requires an Origin"), "{refused:?}");
    let (s, _, _) = ws_open(
        shunt.addr(),
        "127.0.0.1",
        "/ws",
        &["Origin: https://app.example.com"],
    )
    .await;
    assert_eq!(s, Some(101));
    shunt.stop().await;
}

#[tokio::test]
async fn cors_preflight_answered_by_shunt() {
    let (backend, _tokens, shunt) = start_with_file(
        "--token-file",
        "tk\n",
        &["--allow-origin", "https://app.example.com", "--cors"],
    )
    .await;
    let a = shunt.addr();
    let pre = raw(
        a,
        b"OPTIONS /api/calls HTTP/1.1\r\nHost: x\r\nOrigin: https://app.example.com\r\nAccess-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: authorization\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(pre.status, Some(204), "{pre:?}");
    assert_eq!(
        pre.header("access-control-allow-origin").as_deref(),
        Some("https://app.example.com")
    );
    assert_eq!(pre.header("vary").as_deref(), Some("Origin"));
    assert_eq!(
        pre.header("access-control-allow-headers").as_deref(),
        Some("authorization")
    );
    let bad = raw(
        a,
        b"OPTIONS /api HTTP/1.1\r\nHost: x\r\nOrigin: https://evil.net\r\nAccess-Control-Request-Method: POST\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(bad.status, Some(403));
    assert!(bad.header("access-control-allow-origin").is_none());
    assert!(
        backend.seen().is_empty(),
        "preflights never reach the backend"
    );
    let real = raw(
        a,
        &get(
            "/api",
            &[
                "Origin: https://app.example.com",
                "Authorization: Bearer tk",
            ],
        ),
    )
    .await;
    assert_eq!(real.status, Some(200));
    assert_eq!(
        real.header("access-control-allow-origin").as_deref(),
        Some("https://app.example.com")
    );
    assert!(real.header("vary").unwrap().contains("Origin"));
    let cross = raw(
        a,
        &get(
            "/api",
            &["Origin: https://evil.net", "Authorization: Bearer tk"],
        ),
    )
    .await;
    assert_eq!(cross.status, Some(403));
    shunt.stop().await;
}

#[test]
fn cors_without_a_specific_list_is_refused() {
    let err = shunt::Config::from_args(["--cors"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("allow_origin"), "{err}");
}
