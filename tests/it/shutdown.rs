//! Graceful shutdown: readiness turns 503, new connections are refused,
//! live tunnels keep working until the drain timeout and are then closed,
//! and everything stops within a bound. Also the binary under SIGTERM.

use crate::support;

use std::time::{Duration, Instant};

use hyper::StatusCode;
use support::ws;
use support::{echo_backend, eventually, ws_connect};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_live_tunnels_until_the_drain_timeout() {
    let (_backend, shunt) = support::direct_shunt(&[("--drain-timeout", "1s")]).await;
    let (listen, admin) = (shunt.addr(), shunt.admin_addr());

    let (mut socket, _) = ws_connect(listen, "/frontend-audio", &[]).await.unwrap();
    assert_eq!(
        ws::recv_text(&mut socket).await.unwrap(),
        "hello from direct-backend"
    );

    let running = shunt.into_running();
    let began = Instant::now();
    running.shutdown();

    // Readiness turns 503 (or the admin listener is gone).
    let mut last = String::new();
    let unready = eventually(Duration::from_secs(2), async || {
        match support::http_get(admin, "/readyz", &[]).await {
            Ok(r) if r.status == StatusCode::SERVICE_UNAVAILABLE => true,
            Ok(r) => {
                last = format!("{} {}", r.status, r.text());
                false
            }
            Err(_) => true,
        }
    })
    .await;
    assert!(unready, "/readyz still answers {last} after shutdown()");

    // New connections are refused (or at least never get a 101).
    let refused = eventually(Duration::from_secs(2), async || {
        ws_connect(listen, "/frontend-audio", &[]).await.is_err()
    })
    .await;
    assert!(
        refused,
        "new WebSocket handshakes still succeed after shutdown()"
    );

    // The live tunnel keeps echoing during the drain.
    for i in 0..3 {
        let text = format!("still here {i}");
        ws::send_text(&mut socket, &text).await.unwrap();
        let echoed = ws::recv_text(&mut socket).await;
        assert_eq!(
            echoed.as_deref().ok(),
            Some(text.as_str()),
            "tunnel broke {:?} into the drain: {echoed:?}",
            began.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert!(
        began.elapsed() < Duration::from_secs(1),
        "the checks above took too long to mean anything"
    );

    // Then it is closed at the drain timeout.
    let closed = ws::wait_closed(&mut socket, Duration::from_secs(4)).await;
    let closed_after = began.elapsed();
    assert!(
        closed.is_ok(),
        "tunnel still open {closed_after:?} after shutdown(): {closed:?}"
    );
    assert!(
        closed_after >= Duration::from_millis(900),
        "tunnel closed after {closed_after:?}, before the 1 s drain timeout"
    );

    let stopped = tokio::time::timeout(Duration::from_secs(5), running.stopped()).await;
    assert!(
        stopped.is_ok(),
        "stopped() did not resolve within 5 s of the drain timeout"
    );
    assert!(
        tokio::net::TcpStream::connect(listen).await.is_err(),
        "the proxy listener still accepts after stopped()"
    );
}

/// The drain deadline with paused time and a realistic timeout (shunt runs
/// in-process on this test's current-thread runtime, so its clock is the
/// paused one): a live call keeps echoing through 9 minutes of a 10-minute
/// drain, is closed at 10 minutes and not before, and `stopped()` follows.
#[tokio::test(start_paused = true)]
async fn a_ten_minute_drain_closes_the_live_call_at_ten_minutes_in_paused_time() {
    let (_backend, shunt) =
        support::direct_shunt(&[("--drain-timeout", "10m"), ("--health-interval", "1h")]).await;
    let mut socket = ws::open_call(shunt.addr(), "/frontend-audio").await.0;
    let running = shunt.into_running();
    let began = tokio::time::Instant::now();
    running.shutdown();

    // A message every 20 s (the client answers pings while it reads) for
    // 9 minutes of the drain.
    for i in 0..27 {
        tokio::time::sleep(Duration::from_secs(20)).await;
        let text = format!("drain second {}", (i + 1) * 20);
        ws::send_text(&mut socket, &text)
            .await
            .unwrap_or_else(|e| panic!("the call broke {:?} into the drain: {e}", began.elapsed()));
        let echoed = ws::recv_text(&mut socket).await;
        assert_eq!(
            echoed.as_deref().ok(),
            Some(text.as_str()),
            "the call broke {:?} into the drain",
            began.elapsed()
        );
    }

    let closed = ws::wait_closed(&mut socket, Duration::from_secs(5 * 60)).await;
    let closed_after = began.elapsed();
    assert!(closed.is_ok(), "still open {closed_after:?} in: {closed:?}");
    assert!(
        closed_after >= Duration::from_secs(600) && closed_after <= Duration::from_secs(601),
        "closed after {closed_after:?}, not at the 10 min drain timeout"
    );
    let stopped = tokio::time::timeout(Duration::from_secs(5), running.stopped()).await;
    assert!(
        stopped.is_ok(),
        "stopped() did not follow the drain deadline"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_without_tunnels_does_not_wait_for_the_drain_timeout() {
    let (_backend, shunt) = support::direct_shunt(&[("--drain-timeout", "30s")]).await;
    // A finished HTTP exchange leaves nothing to drain.
    let response = support::http_get(shunt.addr(), "/x", &[]).await.unwrap();
    assert_eq!(response.status, StatusCode::OK);
    let began = Instant::now();
    assert!(
        shunt.stop_within(Duration::from_secs(5)).await,
        "stopped() took more than 5 s with nothing to drain"
    );
    assert!(began.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_exits_0_on_sigterm() {
    let backend = echo_backend().name("direct-backend").spawn().await;
    let served = support::draining_child(&backend.url())
        .spawn_process_ready()
        .await;
    let (listen, admin) = (served.addr(), served.admin_addr());
    // A live tunnel: the process must still exit after the drain timeout.
    let (mut socket, _) = ws_connect(listen, "/frontend-audio", &[]).await.unwrap();
    assert_eq!(
        ws::recv_text(&mut socket).await.unwrap(),
        "hello from direct-backend"
    );

    // The log writer's drop counter is exported (nothing dropped at this volume).
    let metrics = support::http_get(admin, "/metrics", &[]).await.unwrap();
    assert!(
        metrics
            .text()
            .lines()
            .any(|l| l == "shunt_log_lines_dropped_total 0"),
        "no shunt_log_lines_dropped_total 0 in\n{}",
        metrics.text()
    );

    let (code, stderr) = served.stop().await;
    assert_eq!(
        code,
        Some(0),
        "exit status after SIGTERM; stderr:\n{stderr}"
    );
    // The queued log lines are flushed at exit: the last line is there.
    assert!(
        stderr.lines().any(|l| l.ends_with(" stopped")),
        "no \"stopped\" line on stderr:\n{stderr}"
    );
    assert!(
        ws::wait_closed(&mut socket, Duration::from_secs(2))
            .await
            .is_ok()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_in_flight_http_finish() {
    let (backend, shunt) = support::direct_shunt(&[("--drain-timeout", "5s")]).await;
    let addr = shunt.addr();
    let in_flight =
        tokio::spawn(async move { support::http_get(addr, "/slow?delay_ms=600", &[]).await });
    // Shut down once the request has reached the backend.
    assert!(
        eventually(Duration::from_secs(2), async || backend.requests() >= 1).await,
        "the request never reached the backend"
    );
    let running = shunt.into_running();
    running.shutdown();
    let response = tokio::time::timeout(Duration::from_secs(5), in_flight)
        .await
        .expect("in-flight request did not finish within 5 s")
        .expect("request task")
        .expect("in-flight request failed during shutdown");
    assert_eq!(response.status, StatusCode::OK, "{}", response.text());
    assert_eq!(response.json()["path"], "/slow");
    assert!(
        tokio::time::timeout(Duration::from_secs(5), running.stopped())
            .await
            .is_ok(),
        "stopped() did not resolve after the in-flight request finished"
    );
}
