//! Malformed WebSocket handshakes and oversized or unroutable requests get
//! the documented status codes, sent as raw bytes so nothing "fixes" them.

use crate::support;

use support::{RawResponse, echo_backend, raw_request, shunt};

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ=="; // 16 bytes, RFC 6455's example

/// A request head with `lines` (each "Name: value"), on `path`.
fn request(method: &str, path: &str, lines: &[&str]) -> Vec<u8> {
    let mut out = format!("{method} {path} HTTP/1.1\r\nHost: shunt.test\r\n");
    for line in lines {
        out.push_str(line);
        out.push_str("\r\n");
    }
    if method == "POST" {
        out.push_str("Content-Length: 0\r\n");
    }
    out.push_str("\r\n");
    out.into_bytes()
}

/// A valid upgrade request's header lines, minus those named in `without`,
/// plus `extra`.
fn upgrade_lines(without: &[&str], extra: &[&str]) -> Vec<String> {
    let mut lines: Vec<String> = [
        "Upgrade: websocket".to_owned(),
        "Connection: Upgrade".to_owned(),
        format!("Sec-WebSocket-Key: {KEY}"),
        "Sec-WebSocket-Version: 13".to_owned(),
    ]
    .into_iter()
    .filter(|l| {
        !without
            .iter()
            .any(|w| l.to_ascii_lowercase().starts_with(&w.to_ascii_lowercase()))
    })
    .collect();
    lines.extend(extra.iter().map(|s| s.to_string()));
    lines
}

async fn send(shunt: &support::Shunt, method: &str, path: &str, lines: &[String]) -> RawResponse {
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    raw_request(shunt.addr(), &request(method, path, &lines))
        .await
        .unwrap_or_else(|e| panic!("{method} {path} {lines:?}: {e}"))
}

/// shunt with one route, `/frontend-audio` → direct (nothing covers `/`).
async fn start() -> (support::EchoBackend, support::Shunt) {
    let backend = echo_backend().name("direct-backend").spawn().await;
    let shunt = shunt()
        .direct(backend.url())
        .route("/frontend-audio=direct")
        .arg("--max-header-bytes", "16384")
        .start_ready()
        .await;
    (backend, shunt)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_raw_handshake_is_switched() {
    let (_backend, shunt) = start().await;
    // Connection as a token list, mixed case: still an upgrade.
    let lines = upgrade_lines(&["Connection"], &["Connection: keep-alive, Upgrade"]);
    let response = send(&shunt, "GET", "/frontend-audio", &lines).await;
    assert_eq!(response.status, 101, "{response:?}");
    assert_eq!(
        response.header("x-shunt-route"),
        Some("direct"),
        "{response:?}"
    );
    assert_eq!(
        response.header("sec-websocket-accept"),
        Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        "RFC 6455's example accept key: {response:?}"
    );
    assert!(
        response
            .header("upgrade")
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket")),
        "{response:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_handshakes_answer_400() {
    let (_backend, shunt) = start().await;
    let cases: Vec<(&str, &str, Vec<String>)> = vec![
        ("POST with upgrade headers", "POST", upgrade_lines(&[], &[])),
        (
            "missing Sec-WebSocket-Key",
            "GET",
            upgrade_lines(&["Sec-WebSocket-Key"], &[]),
        ),
        (
            "key decoding to 15 bytes",
            "GET",
            upgrade_lines(
                &["Sec-WebSocket-Key"],
                &["Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAA"],
            ),
        ),
        (
            "key that is not base64",
            "GET",
            upgrade_lines(
                &["Sec-WebSocket-Key"],
                &["Sec-WebSocket-Key: not base64 at all!!!!"],
            ),
        ),
        (
            "Connection without the upgrade token",
            "GET",
            upgrade_lines(&["Connection"], &["Connection: keep-alive"]),
        ),
        (
            "missing Sec-WebSocket-Version",
            "GET",
            upgrade_lines(&["Sec-WebSocket-Version"], &[]),
        ),
    ];
    let mut failures = Vec::new();
    for (what, method, lines) in &cases {
        let response = send(&shunt, method, "/frontend-audio", lines).await;
        if response.status != 400 {
            failures.push(format!(
                "{what}: expected 400, got {} {:?}",
                response.status, response.headers
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_version_answers_426_naming_version_13() {
    let (_backend, shunt) = start().await;
    let lines = upgrade_lines(&["Sec-WebSocket-Version"], &["Sec-WebSocket-Version: 8"]);
    let response = send(&shunt, "GET", "/frontend-audio", &lines).await;
    assert_eq!(response.status, 426, "{response:?}");
    assert_eq!(
        response.header("sec-websocket-version"),
        Some("13"),
        "{response:?}"
    );
    // RFC 9110 §15.5.22: a 426 names the protocol to upgrade to.
    assert_eq!(
        response.header("upgrade"),
        Some("websocket"),
        "{response:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_header_is_required_once_and_must_be_a_host() {
    let (_backend, shunt) = start().await;
    let no_host = b"GET /frontend-audio HTTP/1.1\r\n\r\n";
    let two_hosts = b"GET /frontend-audio HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n";
    let bad_host = b"GET /frontend-audio HTTP/1.1\r\nHost: a b@c\r\n\r\n";
    for raw in [&no_host[..], &two_hosts[..], &bad_host[..]] {
        let response = raw_request(shunt.addr(), raw).await.unwrap();
        assert_eq!(
            response.status,
            400,
            "{}: {response:?}",
            String::from_utf8_lossy(raw)
        );
    }
    // HTTP/1.0 may leave Host out.
    let old = raw_request(shunt.addr(), b"GET /frontend-audio HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(old.status, 200, "{old:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_1_0_upgrade_is_a_plain_request() {
    let (_backend, shunt) = start().await;
    let lines = upgrade_lines(&[], &[]);
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    let raw = String::from_utf8(request("GET", "/frontend-audio", &lines))
        .unwrap()
        .replacen("HTTP/1.1", "HTTP/1.0", 1);
    let response = raw_request(shunt.addr(), raw.as_bytes()).await.unwrap();
    // RFC 9110 §7.8: Upgrade in an HTTP/1.0 request is ignored.
    assert_eq!(response.status, 200, "{response:?}");
    assert_eq!(response.header("x-backend"), Some("direct-backend"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_answer_431_and_normal_ones_pass() {
    let (_backend, shunt) = start().await;
    let ok_cookie = format!("Cookie: session={}", "a".repeat(8 * 1024));
    let response = send(&shunt, "GET", "/frontend-audio", &[ok_cookie]).await;
    assert_eq!(
        response.status, 200,
        "an 8 KiB cookie is within 16 KiB: {response:?}"
    );

    let huge_cookie = format!("Cookie: session={}", "a".repeat(64 * 1024));
    let response = send(&shunt, "GET", "/frontend-audio", &[huge_cookie]).await;
    assert_eq!(response.status, 431, "{response:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_than_100_header_lines_answer_431() {
    let (_backend, shunt) = start().await;
    let lines = |n: usize| {
        (0..n)
            .map(|i| format!("X-Extra-{i}: {i}"))
            .collect::<Vec<_>>()
    };
    let response = send(&shunt, "GET", "/frontend-audio", &lines(90)).await;
    assert_eq!(response.status, 200, "90 extra lines pass: {response:?}");
    let response = send(&shunt, "GET", "/frontend-audio", &lines(101)).await;
    assert_eq!(response.status, 431, "101 extra lines: {response:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_route_answers_404() {
    let (_backend, shunt) = start().await;
    let response = send(&shunt, "GET", "/elsewhere", &[]).await;
    assert_eq!(response.status, 404, "{response:?}");
    assert_eq!(
        response.header("x-shunt-error"),
        Some("no_route"),
        "{response:?}"
    );
    let response = send(&shunt, "GET", "/elsewhere", &upgrade_lines(&[], &[])).await;
    assert_eq!(
        response.status, 404,
        "upgrade on an unrouted path: {response:?}"
    );
    let response = send(&shunt, "GET", "/frontend-audio/sub", &[]).await;
    assert_eq!(response.status, 200, "/frontend-audio/sub is: {response:?}");
    assert_eq!(
        response.header("x-shunt-error"),
        None,
        "the upstream's answer carries no code: {response:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_finishes_its_head_is_cut_off_at_the_header_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_backend, shunt) = support::direct_shunt(&[("--header-timeout", "300ms")]).await;

    let mut stream = tokio::net::TcpStream::connect(shunt.addr()).await.unwrap();
    stream
        .write_all(b"GET /frontend-audio HTTP/1.1\r\nHost: shunt.test\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(3),
        stream.read_to_end(&mut buf),
    )
    .await;
    let elapsed = started.elapsed();
    assert!(
        read.is_ok(),
        "connection still open 3 s into an unfinished head"
    );
    let answer = String::from_utf8_lossy(&buf);
    assert!(
        buf.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "unexpected answer to an unfinished head: {answer:?}"
    );
    assert!(
        elapsed >= std::time::Duration::from_millis(250),
        "cut off after only {elapsed:?}"
    );
}
