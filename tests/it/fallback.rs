//! Fallback between upstreams: `/frontend-audio=direct,nginx` with a real
//! nginx in front of a separate backend (`via-nginx`). When the direct
//! backend dies, handshakes go via nginx at once (connect-failure fallback,
//! before any health probe notices); when it comes back, they go direct
//! again; readiness names the route when nothing can serve it. A fallback
//! that would not forward upgrades is `degraded` before it is needed (the
//! WebSocket check).

use crate::support;

use std::time::Duration;

use hyper::StatusCode;
use support::raw::ws_handshake;
use support::shunt::ShuntBuilder;
use support::ws;
use support::{
    EchoBackend, direct_and_nginx, echo_backend, eventually, not_yet, raw_request, shunt,
    shunt_with_nginx, ws_connect,
};

/// Handshake on `/frontend-audio`; returns (`x-shunt-route`, hello text).
async fn handshake(addr: std::net::SocketAddr) -> Result<(String, String), support::BoxError> {
    let (mut socket, response) = ws_connect(addr, "/frontend-audio", &[]).await?;
    let route = ws::header(&response, "x-shunt-route").to_owned();
    let hello = ws::recv_text(&mut socket).await?;
    Ok((route, hello))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_down_falls_back_to_nginx_at_once_and_returns_when_direct_is_back() {
    let Some((mut direct, _via_nginx, _nginx, shunt)) = shunt_with_nginx(
        ("direct", "via-nginx"),
        &["--route", "/frontend-audio=direct,nginx", "--fall", "1"],
    )
    .await
    else {
        return;
    };

    assert_eq!(
        handshake(shunt.addr())
            .await
            .expect("handshake while direct is up"),
        ("direct".to_owned(), "hello from direct".to_owned())
    );

    // No waiting for the health checker: the first handshake after the stop
    // must already fall back.
    direct.stop().await;
    for i in 0..20 {
        let (route, hello) = handshake(shunt.addr())
            .await
            .unwrap_or_else(|e| panic!("handshake {i} after direct stopped: {e}"));
        assert_eq!(route, "nginx", "handshake {i}");
        assert_eq!(hello, "hello from via-nginx", "handshake {i}");
    }
    shunt.wait_upstream("direct", "down").await;

    // Back on the same port: within a bounded wait, handshakes go direct.
    direct.restart().await;
    let mut last = String::new();
    let back = eventually(Duration::from_secs(10), async || {
        match handshake(shunt.addr()).await {
            Ok((route, hello)) if route == "direct" => hello == "hello from direct",
            Ok((route, hello)) => not_yet(&mut last, format!("{route}: {hello}")),
            Err(e) => not_yet(&mut last, e),
        }
    })
    .await;
    assert!(
        back,
        "handshakes did not return to direct within 10 s; last: {last}"
    );
    for i in 0..5 {
        let (route, _) = handshake(shunt.addr())
            .await
            .expect("handshake after recovery");
        assert_eq!(route, "direct", "handshake {i} after recovery");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_failure_falls_back_and_marks_the_upstream_down_between_probes() {
    // One probe at start, then none for 60 s: only the request path can
    // notice that direct went away.
    let Some((mut direct, _via_nginx, _nginx, shunt)) = shunt_with_nginx(
        ("direct", "via-nginx"),
        &[
            "--route",
            "/frontend-audio=direct,nginx",
            "--fall",
            "1",
            "--health-interval",
            "60s",
        ],
    )
    .await
    else {
        return;
    };
    assert_eq!(shunt.upstream_health("direct").await.unwrap(), "up");

    direct.stop().await;
    let (route, hello) = handshake(shunt.addr())
        .await
        .expect("first handshake after direct stopped");
    assert_eq!(
        (route.as_str(), hello.as_str()),
        ("nginx", "hello from via-nginx")
    );
    // --fall 1: that one connect failure marked direct down.
    shunt.wait_upstream("direct", "down").await;
    let (code, body) = shunt.admin_get("/readyz").await.unwrap();
    assert_eq!(
        code,
        StatusCode::OK,
        "nginx still serves every route: {body}"
    );
    for i in 0..5 {
        let (route, _) = handshake(shunt.addr()).await.expect("handshake via nginx");
        assert_eq!(route, "nginx", "handshake {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_names_the_route_when_all_its_upstreams_are_down_and_recovers() {
    let Some((mut direct, mut via_nginx, nginx)) = direct_and_nginx("direct", "via-nginx").await
    else {
        return;
    };
    // HTTP probes so that nginx counts as down when the backend behind it is.
    let shunt = shunt()
        .direct(direct.url())
        .nginx(nginx.url())
        .route("/frontend-audio=direct,nginx")
        .arg("--health-check", "http:/health")
        .start_ready()
        .await;

    direct.stop().await;
    via_nginx.stop().await;
    let mut last = (StatusCode::OK, String::new());
    let unready = eventually(Duration::from_secs(10), async || {
        match shunt.admin_get("/readyz").await {
            Ok(answer) => {
                let done = answer.0 == StatusCode::SERVICE_UNAVAILABLE
                    && answer.1.contains("/frontend-audio");
                last = answer;
                done
            }
            Err(_) => false,
        }
    })
    .await;
    assert!(
        unready,
        "/readyz did not turn 503 naming /frontend-audio; last: {last:?}"
    );
    let body: serde_json::Value = serde_json::from_str(&last.1).expect("/readyz 503 body is JSON");
    assert_eq!(body["ready"], false, "{body}");
    let routes = body["routes"].as_array().expect("routes array");
    assert!(
        routes.iter().any(|r| r["route"] == "/frontend-audio"
            && r["reason"].as_str().is_some_and(|s| !s.is_empty())),
        "no reason given for /frontend-audio: {body}"
    );
    shunt.wait_upstream("direct", "down").await;
    shunt.wait_upstream("nginx", "down").await;

    // And a client gets an answer, not a hang.
    let response = raw_request(shunt.addr(), &ws_handshake("/frontend-audio", &[]))
        .await
        .expect("answer while everything is down");
    assert!(
        [502, 503].contains(&response.status),
        "expected 502/503 while all upstreams are down, got {response:?}"
    );

    direct.restart().await;
    via_nginx.restart().await;
    shunt.wait_ready().await;
    shunt.wait_upstream("direct", "up").await;
    shunt.wait_upstream("nginx", "up").await;
}

/// shunt with `/frontend-audio` going only to `direct` at `url`.
fn only_direct(url: String) -> ShuntBuilder {
    shunt().direct(url).route("/frontend-audio=direct")
}

/// An address where nothing listens (bound, then released).
fn dead_addr() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_with_only_a_dead_upstream_answers_instead_of_hanging() {
    let dead = dead_addr();
    let shunt = only_direct(format!("http://{dead}")).start().await;

    // Before any probe has run, and after the checker has marked it down.
    for phase in ["first request", "after the health checker"] {
        let response = raw_request(shunt.addr(), &ws_handshake("/frontend-audio", &[]))
            .await
            .unwrap_or_else(|e| panic!("{phase}: WebSocket handshake got no answer: {e}"));
        assert!(
            [502, 503].contains(&response.status),
            "{phase}: handshake to a dead upstream answered {response:?}"
        );
        // The code names the kind: one upstream refused (502), or all are down (503).
        let expected = if response.status == 502 {
            "upstream_connect"
        } else {
            "no_healthy_upstream"
        };
        assert_eq!(
            response.header("x-shunt-error"),
            Some(expected),
            "{phase}: {response:?}"
        );
        let plain = support::http_get(shunt.addr(), "/frontend-audio", &[])
            .await
            .unwrap_or_else(|e| panic!("{phase}: GET got no answer: {e}"));
        assert!(
            [StatusCode::BAD_GATEWAY, StatusCode::SERVICE_UNAVAILABLE].contains(&plain.status),
            "{phase}: GET to a dead upstream answered {}",
            plain.status
        );
        let expected = if plain.status == StatusCode::BAD_GATEWAY {
            "upstream_connect"
        } else {
            "no_healthy_upstream"
        };
        assert_eq!(plain.header("x-shunt-error"), expected, "{phase}");
        shunt.wait_upstream("direct", "down").await;
    }
    let (code, body) = shunt.admin_get("/readyz").await.unwrap();
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("/frontend-audio"), "{body}");
}

/// A backend that accepts connections and never answers.
async fn silent_backend() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        for _ in 0..1000 {
            match listener.accept().await {
                Ok((stream, _)) => held.push(stream),
                Err(_) => return,
            }
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_never_answers_gets_504_within_the_response_timeout() {
    let (silent, task) = silent_backend().await;
    let shunt = only_direct(format!("http://{silent}"))
        .arg("--response-timeout", "300ms")
        // A timeout counts as a failed probe; with --fall 3 (and probes
        // succeeding in between) one timeout does not mark direct down.
        .arg("--fall", "3")
        .start_ready()
        .await;
    let started = std::time::Instant::now();
    let plain = support::http_get(shunt.addr(), "/frontend-audio", &[])
        .await
        .expect("GET to a silent upstream got no answer");
    assert_eq!(
        plain.status,
        StatusCode::GATEWAY_TIMEOUT,
        "{}",
        plain.text()
    );
    let response = raw_request(shunt.addr(), &ws_handshake("/frontend-audio", &[]))
        .await
        .expect("handshake to a silent upstream got no answer");
    assert_eq!(response.status, 504, "{response:?}");
    assert!(started.elapsed() < Duration::from_secs(4));
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_falls_back_with_its_body_intact() {
    // Probes only at start: the fallback below is the request path's.
    let Some((mut direct, _via_nginx, _nginx, shunt)) = shunt_with_nginx(
        ("direct", "via-nginx"),
        &["--route", "/=direct,nginx", "--health-interval", "60s"],
    )
    .await
    else {
        return;
    };
    direct.stop().await;

    let body: Vec<u8> = (0..256 * 1024u32).map(|i| (i % 241) as u8).collect();
    let response = support::http_post(shunt.addr(), "/upload", body.clone())
        .await
        .expect("POST after direct stopped");
    assert_eq!(response.status, StatusCode::OK, "{}", response.text());
    assert_eq!(response.header("x-shunt-route"), "nginx");
    assert_eq!(response.header("x-backend"), "via-nginx");
    assert!(
        response.body == body,
        "the body changed on the way through the fallback"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_while_the_first_probe_is_pending() {
    // An HTTP probe against a backend that never answers stays pending for
    // the whole 3 s probe timeout: the upstream is "unknown" meanwhile.
    let (silent, task) = silent_backend().await;
    let shunt = only_direct(format!("http://{silent}"))
        .arg("--health-check", "http:/health")
        .arg("--health-timeout", "3s")
        .start()
        .await;
    let (code, body) = shunt.admin_get("/readyz").await.unwrap();
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("/frontend-audio"), "{body}");
    assert_eq!(shunt.upstream_health("direct").await.unwrap(), "unknown");
    let (code, body) = shunt.admin_get("/healthz").await.unwrap();
    assert_eq!(
        code,
        StatusCode::OK,
        "liveness does not depend on upstreams: {body}"
    );
    task.abort();
}

/// `direct` = an echo backend, `nginx` = a real nginx *without* the upgrade
/// headers (the original outage) in front of another echo backend
/// (`via-nginx`): plain GETs through it work, upgrades get a 200 page.
/// `None` when nginx is missing and not required.
async fn direct_and_broken_nginx() -> Option<(EchoBackend, EchoBackend, support::Nginx)> {
    let direct = echo_backend().name("direct").spawn().await;
    let via_nginx = echo_backend().name("via-nginx").spawn().await;
    let nginx = support::nginx(via_nginx.addr())
        .without_upgrade_headers()
        .spawn()
        .await?;
    Some((direct, via_nginx, nginx))
}

/// The `degraded` entries of a 200 `/readyz` (none when absent); panics on
/// a 503, since `direct` serves every route in these tests.
async fn degraded(shunt: &support::Shunt) -> Vec<serde_json::Value> {
    let (code, body) = shunt.admin_get_json("/readyz").await;
    assert_eq!(code, StatusCode::OK, "direct still serves: {body}");
    assert_eq!(body["ready"], true, "{body}");
    body["degraded"].as_array().cloned().unwrap_or_default()
}

/// Waits (bounded) until `/readyz` lists `route` as degraded through
/// `upstream`, and returns that entry's reason.
async fn wait_degraded(shunt: &support::Shunt, route: &str, upstream: &str) -> String {
    let mut last = String::new();
    let mut reason = None;
    let listed = eventually(Duration::from_secs(10), async || {
        let entries = degraded(shunt).await;
        reason = entries
            .iter()
            .find(|e| e["route"] == route && e["upstream"] == upstream)
            .and_then(|e| e["reason"].as_str().map(str::to_owned));
        reason.is_some() || not_yet(&mut last, format!("{entries:?}"))
    })
    .await;
    assert!(
        listed,
        "/readyz did not list {route} as degraded via {upstream} within 10 s; last: {last}"
    );
    reason.unwrap_or_default()
}

/// Waits (bounded) until `via_nginx` has seen `more` plain requests beyond
/// what it had seen so far: the `http:/` probes of nginx, one per health
/// interval (100 ms in the harness), so this proves time for that many
/// probes passed, without a bare sleep.
async fn wait_for_probes(via_nginx: &EchoBackend, more: usize) {
    let target = via_nginx.requests() + more;
    let probed = eventually(Duration::from_secs(10), async || {
        via_nginx.requests() >= target
    })
    .await;
    assert!(
        probed,
        "nginx was probed {} times, not {target}, within 10 s",
        via_nginx.requests()
    );
}

/// The reason names the path, the status nginx answered and the fix.
fn assert_names_the_broken_upgrade(reason: &str) {
    for part in [
        "nginx answered 200 to a WebSocket upgrade on /frontend-audio",
        "it does not forward upgrades",
    ] {
        assert!(reason.contains(part), "{part:?} missing from {reason:?}");
    }
}

/// Issue 19, item 2: a fallback probed with `http:` that cannot carry
/// upgrades is `degraded` as soon as the route is seen carrying WebSocket,
/// while direct is still up and serving, not once direct is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fallback_that_does_not_forward_upgrades_is_degraded_before_it_is_needed() {
    let Some((direct, via_nginx, nginx)) = direct_and_broken_nginx().await else {
        return;
    };
    let shunt = shunt()
        .direct(direct.url())
        .nginx(nginx.url())
        .route("/frontend-audio=direct,nginx")
        .arg("--health-check", "http:/")
        .arg("--ws-check-interval", "200ms")
        .start_ready()
        .await;
    // Nothing says yet that the route carries WebSocket: no check, no mark
    // (four probes at 100 ms: two check intervals).
    wait_for_probes(&via_nginx, 4).await;
    assert_eq!(degraded(&shunt).await, Vec::<serde_json::Value>::new());

    // One call, through direct: the route carries WebSocket.
    assert_eq!(
        handshake(shunt.addr()).await.expect("call through direct"),
        ("direct".to_owned(), "hello from direct".to_owned())
    );
    let reason = wait_degraded(&shunt, "/frontend-audio", "nginx").await;
    assert_names_the_broken_upgrade(&reason);

    // Direct is still up and serves; the dashboard's source shows nginx broken.
    assert_eq!(shunt.upstream_health("direct").await.unwrap(), "up");
    assert_eq!(shunt.upstream_health("nginx").await.unwrap(), "up");
    let nginx_status = shunt.upstream("nginx").await.unwrap();
    assert_eq!(nginx_status["websocket"], "broken", "{nginx_status}");
    assert_names_the_broken_upgrade(nginx_status["websocket_error"].as_str().unwrap_or_default());
    let direct_status = shunt.upstream("direct").await.unwrap();
    assert_eq!(direct_status["websocket"], "ok", "{direct_status}");
    assert_eq!(
        handshake(shunt.addr()).await.expect("second call").0,
        "direct"
    );
}

/// With `websocket = true` on the route, its upstreams are checked from the
/// start: degraded without a single call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_declared_websocket_is_checked_without_a_call() {
    let Some((direct, _via_nginx, nginx)) = direct_and_broken_nginx().await else {
        return;
    };
    let config = support::TempFile::new(
        "ws-check.toml",
        "[[routes]]\npath = \"/frontend-audio\"\nvia = [\"direct\", \"nginx\"]\nwebsocket = true\n",
    );
    let shunt = shunt()
        .direct(direct.url())
        .nginx(nginx.url())
        .arg("--config", config.path())
        .arg("--health-check", "tcp")
        .arg("--ws-check-interval", "200ms")
        .start_ready()
        .await;
    let reason = wait_degraded(&shunt, "/frontend-audio", "nginx").await;
    assert_names_the_broken_upgrade(&reason);
    assert_eq!(shunt.upstream_health("direct").await.unwrap(), "up");
}

/// `--ws-check-interval 0s` turns the check off: after a call and many
/// probes (each 100 ms, so several 200 ms check intervals), nothing is degraded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_ws_check_interval_turns_the_check_off() {
    let Some((direct, via_nginx, nginx)) = direct_and_broken_nginx().await else {
        return;
    };
    let shunt = shunt()
        .direct(direct.url())
        .nginx(nginx.url())
        .route("/frontend-audio=direct,nginx")
        .arg("--health-check", "http:/")
        .arg("--ws-check-interval", "0s")
        .start_ready()
        .await;
    assert_eq!(
        handshake(shunt.addr())
            .await
            .expect("call through direct")
            .0,
        "direct"
    );
    wait_for_probes(&via_nginx, 8).await;
    assert_eq!(degraded(&shunt).await, Vec::<serde_json::Value>::new());
    let nginx_status = shunt.upstream("nginx").await.unwrap();
    assert_eq!(nginx_status["websocket"], "ok", "{nginx_status}");
}

/// A backend that accepts each connection, reads the handshake and resets it
/// (SO_LINGER 0) before answering: a backend dying or restarting under a
/// reconnect storm.
async fn accept_and_reset() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        // Bounded: the test ends long before this many connections.
        for _ in 0..1_000 {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let mut buf = [0u8; 4096];
            let _ = tokio::io::AsyncReadExt::read(&mut s, &mut buf).await;
            let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
            drop(s);
        }
    });
    (addr, task)
}

/// An upstream that accepts the connection and then resets it before
/// answering the upgrade is treated like a refused connect: the same
/// handshake goes to the route's next upstream (the client gets its 101,
/// never a 502) and the upstream is marked down, naming why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_resets_before_answering_a_handshake_falls_back() {
    let (dying, _task) = accept_and_reset().await;
    let fallback = echo_backend().name("fallback").spawn().await;
    let shunt = shunt()
        .direct(format!("http://{dying}"))
        .nginx(fallback.url())
        .route("/frontend-audio=direct,nginx")
        .arg("--health-interval", "1h")
        .start()
        .await;
    for _ in 0..3 {
        let (route, hello) = handshake(shunt.addr()).await.expect("a 101, not a 502");
        assert_eq!(route, "nginx");
        assert_eq!(hello, "hello from fallback");
    }
    let direct = shunt.upstream("direct").await.unwrap();
    assert_eq!(direct["health"], "down", "{direct}");
    assert!(
        direct["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("closed the connection before answering")),
        "{direct}"
    );
}
