//! Floods of refused connections are logged one line per reason per second,
//! with the count of what was not logged: 500 refusals at accept, 200
//! failed TLS handshakes and 100 header timeouts never write a line each,
//! and the counts add up to every refusal.

use crate::support;

use std::net::SocketAddr;
use std::time::Duration;

use support::shunt::ShuntChild;
use support::tls::TestPki;
use support::{echo_backend, eventually, shunt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The lines of `stderr` whose message is `message`, and the refusals they
/// account for: 1 per line, plus each summary's `suppressed=N`.
fn accounted(stderr: &str, message: &str) -> (usize, u64) {
    let lines: Vec<&str> = stderr.lines().filter(|l| l.contains(message)).collect();
    let counted = lines
        .iter()
        .map(|l| match l.split("suppressed=").nth(1) {
            Some(rest) => rest
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .and_then(|n| n.parse::<u64>().ok())
                .expect("a count after suppressed="),
            None => 1,
        })
        .sum();
    (lines.len(), counted)
}

/// Waits until `served`'s stderr accounts for `n` refusals of `message`;
/// asserts they took few lines: one per second of flood and one summary.
async fn assert_flood_logged(served: &ShuntChild, message: &str, n: u64, secs: u64) {
    let complete = eventually(Duration::from_secs(10), async || {
        accounted(&served.log(), message).1 >= n
    })
    .await;
    let stderr = served.log();
    let (lines, counted) = accounted(&stderr, message);
    assert!(
        complete,
        "{counted} of {n} refusals accounted for:\n{stderr}"
    );
    assert_eq!(counted, n, "every refusal counted once:\n{stderr}");
    assert!(
        lines as u64 <= secs + 2,
        "{lines} lines for {n} refusals in {secs}s:\n{stderr}"
    );
}

/// Connect `n` times to `addr`, send `bytes` and read until the peer closes
/// (bounded); returns how long the flood took, in whole seconds, rounded up.
async fn flood(addr: SocketAddr, n: usize, bytes: &'static [u8]) -> u64 {
    let started = std::time::Instant::now();
    for _ in 0..n {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let _ = s.write_all(bytes).await;
        let mut sink = [0u8; 512];
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while s.read(&mut sink).await.is_ok_and(|n| n > 0) {}
        })
        .await;
    }
    started.elapsed().as_secs() + 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_refusals_at_accept_take_a_line_a_second() {
    let backend = echo_backend().spawn().await;
    let served = shunt()
        .flags(&["--direct", &backend.url(), "--deny-ip", "127.0.0.1"])
        .spawn_process_ready()
        .await;
    let secs = flood(served.addr(), 500, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_flood_logged(&served, "connection refused at accept", 500, secs).await;
    assert!(served.log().contains("reason=ip"), "{}", served.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_tls_handshakes_and_header_timeouts_are_rate_limited_too() {
    let backend = echo_backend().spawn().await;
    let pki = TestPki::new();
    let (cert, key) = pki.write("localhost", &["localhost"]);
    let tls = shunt()
        .flags(&[
            "--direct",
            &backend.url(),
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ])
        .spawn_process_ready()
        .await;
    let secs = flood(tls.addr(), 200, b"this is not a TLS client hello\r\n\r\n").await;
    assert_flood_logged(&tls, "TLS connection refused", 200, secs).await;

    let plain = shunt()
        .flags(&["--direct", &backend.url(), "--header-timeout", "100ms"])
        .spawn_process_ready()
        .await;
    // 100 connections that never send a head, all open at once.
    let started = std::time::Instant::now();
    let mut idle = Vec::new();
    for _ in 0..100 {
        idle.push(tokio::net::TcpStream::connect(plain.addr()).await.unwrap());
    }
    for mut s in idle {
        let mut sink = [0u8; 512];
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read(&mut sink)).await;
    }
    let secs = started.elapsed().as_secs() + 1;
    assert_flood_logged(
        &plain,
        "closed a connection that did not send a request head in time",
        100,
        secs,
    )
    .await;
}
