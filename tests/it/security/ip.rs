//! IP allow/deny lists: global at accept, per route after routing.

use crate::security::prelude::*;

#[tokio::test]
async fn global_allow_list_refuses_at_accept() {
    let (backend, shunt) = start_with_backend(&["--allow-ip", "127.0.0.2/32"]).await;
    let ok = raw_from(shunt.addr(), "127.0.0.2", &get("/x", &[])).await;
    assert_eq!(ok.status, Some(200), "{ok:?}");
    let refused = raw_from(shunt.addr(), "127.0.0.3", &get("/x", &[])).await;
    assert_eq!(refused.status, Some(403), "{refused:?}");
    assert!(refused.body().contains("allow_ip"), "{refused:?}");
    // shunt's own answer names its kind; the backend's answer carries no code.
    assert_eq!(
        refused.header("x-shunt-error").as_deref(),
        Some("ip_denied"),
        "a refusal at accept: {refused:?}"
    );
    assert_eq!(ok.header("x-shunt-error"), None, "{ok:?}");
    let (status, _, _) = ws_open(shunt.addr(), "127.0.0.3", "/ws", &[]).await;
    assert_eq!(status, Some(403));
    assert_eq!(
        backend.seen(),
        vec!["/x".to_owned()],
        "nothing refused reached the backend"
    );
    assert!(
        logs().contains("127.0.0.3"),
        "the refusal is logged with the address"
    );
    shunt.stop().await;
}

#[tokio::test]
async fn deny_wins_over_allow() {
    let (_backend, shunt) = start_with_backend(&[
        "--allow-ip",
        "127.0.0.0/8",
        "--deny-ip",
        "127.0.0.4",
        "--deny-ip",
        "::1",
    ])
    .await;
    assert_eq!(
        raw_from(shunt.addr(), "127.0.0.2", &get("/", &[]))
            .await
            .status,
        Some(200)
    );
    let refused = raw_from(shunt.addr(), "127.0.0.4", &get("/", &[])).await;
    assert_eq!(refused.status, Some(403));
    assert!(
        refused.body().contains("deny_ip 127.0.0.4/32"),
        "{refused:?}"
    );
    shunt.stop().await;
}

#[tokio::test]
async fn route_lists_apply_to_the_normalized_route() {
    let backend = echo_backend().spawn().await;
    let file = routes_config(
        "",
        &[
            ("/admin", r#"allow_ip = ["127.0.0.2"]"#),
            ("/frontend-audio", r#"deny_ip = ["127.0.0.5"]"#),
            ("/", ""),
        ],
    );
    let shunt = start(&backend, &["--config", file.path()]).await;
    let from = |ip: &'static str, target: &'static str| {
        let addr = shunt.addr();
        async move { raw_from(addr, ip, &get(target, &[])).await.status }
    };
    assert_eq!(from("127.0.0.2", "/admin").await, Some(200));
    assert_eq!(from("127.0.0.3", "/admin").await, Some(403));
    let refused = raw_from(shunt.addr(), "127.0.0.3", &get("/admin", &[])).await;
    assert_eq!(
        refused.header("x-shunt-error").as_deref(),
        Some("ip_denied"),
        "a route's refusal: {refused:?}"
    );
    assert_eq!(from("127.0.0.3", "/frontend-audio").await, Some(200));
    assert_eq!(from("127.0.0.5", "/frontend-audio/x").await, Some(403));
    assert_eq!(from("127.0.0.5", "/other").await, Some(200));
    // Path tricks land on /admin's policy, not /frontend-audio's.
    for trick in [
        "/frontend-audio/../admin",
        "/frontend-audio/%2e%2e/admin",
        "/frontend-audio/%2E%2e%2fadmin",
        "/frontend-audio/..%5cadmin",
        "//admin",
        "/./admin/",
    ] {
        assert_eq!(from("127.0.0.3", trick).await, Some(403), "{trick}");
    }
    // From an allowed address the upstream gets the path that was routed.
    let ok = raw_from(
        shunt.addr(),
        "127.0.0.2",
        &get("/frontend-audio/%2e%2e/admin?q=1", &[]),
    )
    .await;
    assert_eq!(ok.status, Some(200));
    assert!(
        backend.seen().contains(&"/admin?q=1".to_owned()),
        "{:?}",
        backend.seen()
    );
    shunt.stop().await;
}
