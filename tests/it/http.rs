//! Plain HTTP through shunt: bodies, forwarding headers, hop-by-hop
//! stripping and keep-alive, both straight to the backend (`direct`) and
//! through a real nginx (`nginx`).

use crate::support;

use hyper::{Method, StatusCode};
use support::{
    ChunkedBody, HttpConn, echo_backend, http_get, http_post, seen_header, shunt, shunt_with_nginx,
};

/// 1 MiB of a pattern that is not all the same byte.
fn mib() -> Vec<u8> {
    (0..1024 * 1024u32).map(|i| (i % 251) as u8).collect()
}

/// Headers that a proxy must not forward (plus one that it must).
const HOP_HEADERS: &[(&str, &str)] = &[
    ("connection", "x-hop"),
    ("x-hop", "1"),
    ("keep-alive", "timeout=5"),
    ("te", "trailers"),
    ("proxy-connection", "keep-alive"),
    ("x-custom", "kept"),
];

/// Asserts what the echo backend saw for a GET sent with [`HOP_HEADERS`],
/// `host` and an incoming `x-forwarded-for: 203.0.113.7`.
fn assert_forwarded(description: &serde_json::Value, host: &str) {
    assert_eq!(description["method"], "GET", "{description}");
    assert_eq!(description["uri"], "/api/calls?page=2", "{description}");
    assert_eq!(
        seen_header(description, "host"),
        [host],
        "Host must be preserved: {description}"
    );
    let xff = seen_header(description, "x-forwarded-for").join(", ");
    assert_eq!(
        xff, "203.0.113.7, 127.0.0.1",
        "x-forwarded-for must be appended to: {description}"
    );
    assert_eq!(
        seen_header(description, "x-forwarded-proto"),
        ["http"],
        "{description}"
    );
    assert_eq!(
        seen_header(description, "x-forwarded-host"),
        [host],
        "{description}"
    );
    assert_eq!(
        seen_header(description, "x-real-ip"),
        ["127.0.0.1"],
        "{description}"
    );
    assert_eq!(
        seen_header(description, "x-custom"),
        ["kept"],
        "{description}"
    );
    for hop in ["x-hop", "keep-alive", "te", "proxy-connection", "upgrade"] {
        assert!(
            seen_header(description, hop).is_empty(),
            "hop-by-hop header {hop} reached the backend: {description}"
        );
    }
    for value in seen_header(description, "connection") {
        assert!(
            !value.to_ascii_lowercase().contains("x-hop"),
            "the downstream Connection header reached the backend: {description}"
        );
    }
}

async fn get_with_hop_headers(addr: std::net::SocketAddr, host: &str) -> support::HttpResponse {
    let mut headers = vec![("host", host), ("x-forwarded-for", "203.0.113.7")];
    headers.extend_from_slice(HOP_HEADERS);
    let response = http_get(addr, "/api/calls?page=2", &headers)
        .await
        .expect("GET through shunt");
    assert_eq!(response.status, StatusCode::OK, "body: {}", response.text());
    response
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_direct_forwards_client_headers_and_strips_hop_by_hop() {
    let (_backend, shunt) = support::direct_shunt(&[]).await;

    let response = get_with_hop_headers(shunt.addr(), "calls.example.test").await;
    assert_eq!(response.header("x-shunt-route"), "direct");
    assert_eq!(response.header("x-backend"), "direct-backend");
    assert_forwarded(&response.json(), "calls.example.test");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_via_nginx_forwards_client_headers_and_strips_hop_by_hop() {
    // With --nginx, `/` goes nginx first.
    let Some((_direct, _behind_nginx, nginx, shunt)) =
        shunt_with_nginx(("direct-backend", "nginx-backend"), &[]).await
    else {
        return;
    };

    let response = get_with_hop_headers(shunt.addr(), "calls.example.test").await;
    assert_eq!(response.header("x-shunt-route"), "nginx");
    assert_eq!(
        response.header("x-backend"),
        "nginx-backend",
        "nginx log: {}",
        nginx.error_log()
    );
    assert_forwarded(&response.json(), "calls.example.test");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_bodies_come_back_verbatim_direct() {
    let (_backend, shunt) = support::direct_shunt(&[]).await;
    post_suite(shunt.addr(), "direct").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_bodies_come_back_verbatim_via_nginx() {
    let Some((_direct, _behind_nginx, _nginx, shunt)) =
        shunt_with_nginx(("direct-backend", "nginx-backend"), &[]).await
    else {
        return;
    };
    post_suite(shunt.addr(), "nginx").await;
}

/// Small POST with a length, 1 MiB POST with a length, 1 MiB PUT streamed
/// chunked: each body comes back byte for byte via `route`.
async fn post_suite(addr: std::net::SocketAddr, route: &str) {
    let small = http_post(addr, "/upload", "hello body")
        .await
        .expect("small POST");
    assert_eq!(small.status, StatusCode::OK, "{}", small.text());
    assert_eq!(small.header("x-shunt-route"), route);
    assert_eq!(small.text(), "hello body");

    let data = mib();
    let big = http_post(addr, "/upload", data.clone())
        .await
        .expect("1 MiB POST");
    assert_eq!(big.status, StatusCode::OK);
    assert_eq!(big.header("x-shunt-route"), route);
    assert_eq!(big.body.len(), data.len(), "1 MiB POST echo length");
    assert!(big.body == data, "1 MiB POST echo differs");

    let mut conn = HttpConn::connect(addr).await.expect("connect");
    let streamed = conn
        .send(
            Method::PUT,
            "/upload",
            &[],
            ChunkedBody::new(&data, 64 * 1024),
        )
        .await
        .expect("1 MiB chunked PUT");
    assert_eq!(streamed.status, StatusCode::OK);
    assert_eq!(streamed.header("x-shunt-route"), route);
    assert_eq!(streamed.body.len(), data.len(), "chunked PUT echo length");
    assert!(streamed.body == data, "chunked PUT echo differs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_serves_several_requests_on_one_downstream_connection() {
    let (_backend, shunt) = support::direct_shunt(&[]).await;

    let mut conn = HttpConn::connect(shunt.addr()).await.expect("connect");
    let first = conn.get("/first", &[]).await.expect("first GET");
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.json()["path"], "/first");
    assert!(
        !conn.is_closed(),
        "shunt closed the connection after one request"
    );
    let second = conn
        .send(
            Method::POST,
            "/second",
            &[],
            http_body_util::Full::new(bytes::Bytes::from_static(b"two")),
        )
        .await
        .expect("second request on the same connection");
    assert_eq!(second.status, StatusCode::OK);
    assert_eq!(second.text(), "two");
    let third = conn
        .get("/third", &[])
        .await
        .expect("third GET on the same connection");
    assert_eq!(third.json()["path"], "/third");
    assert_eq!(third.header("x-shunt-route"), "direct");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_hop_by_hop_headers_do_not_reach_the_client() {
    let (_backend, shunt) = support::direct_shunt(&[]).await;
    let response = http_get(shunt.addr(), "/plain", &[("x-echo-hop-response", "1")])
        .await
        .expect("GET");
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(response.header("x-backend"), "direct-backend");
    assert_eq!(response.header("x-shunt-route"), "direct");
    assert!(
        response.headers.get("x-resp-hop").is_none(),
        "{:?}",
        response.headers
    );
    assert_ne!(
        response.header("keep-alive"),
        "timeout=99",
        "{:?}",
        response.headers
    );
    assert!(
        !response.header("connection").contains("x-resp-hop"),
        "{:?}",
        response.headers
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_forwarded_for_keeps_every_incoming_hop() {
    let (_backend, shunt) = support::direct_shunt(&[]).await;
    // Two header lines are one list (RFC 9110 5.3): both hops must survive.
    let response = http_get(
        shunt.addr(),
        "/xff",
        &[
            ("x-forwarded-for", "198.51.100.1"),
            ("x-forwarded-for", "198.51.100.2"),
        ],
    )
    .await
    .expect("GET");
    assert_eq!(response.status, StatusCode::OK);
    let description = response.json();
    assert_eq!(
        seen_header(&description, "x-forwarded-for").join(", "),
        "198.51.100.1, 198.51.100.2, 127.0.0.1",
        "{description}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_client_identity_headers_are_replaced() {
    let (_backend, shunt) = support::direct_shunt(&[]).await;
    let response = http_get(
        shunt.addr(),
        "/who",
        &[
            ("host", "calls.example.test"),
            ("x-real-ip", "203.0.113.66"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.example"),
        ],
    )
    .await
    .expect("GET");
    let description = response.json();
    assert_eq!(
        seen_header(&description, "x-real-ip"),
        ["127.0.0.1"],
        "{description}"
    );
    assert_eq!(
        seen_header(&description, "x-forwarded-proto"),
        ["http"],
        "{description}"
    );
    assert_eq!(
        seen_header(&description, "x-forwarded-host"),
        ["calls.example.test"],
        "{description}"
    );
}

/// With a route that accepts absolute-form targets, the target's host decides
/// the route and is the Host the upstream sees (RFC 9112 §3.2.2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absolute_form_target_routes_and_forwards_on_its_own_host() {
    let public = echo_backend().name("public").spawn().await;
    let admin = echo_backend().name("admin").spawn().await;
    let dir = std::env::temp_dir().join(format!("shunt-absform-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("shunt.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[upstreams.public]
url = "{}"
[upstreams.admin]
url = "{}"

[[routes]]
path = "/"
via = ["public"]
allow_absolute_form = true

[[routes]]
host = "admin.test"
path = "/"
via = ["admin"]
allow_absolute_form = true
"#,
            public.url(),
            admin.url()
        ),
    )
    .unwrap();
    let proxy = shunt()
        .arg("--config", config.to_str().unwrap())
        .start()
        .await;
    let raw = b"GET http://admin.test/x HTTP/1.1\r\nHost: public.test\r\nConnection: close\r\n\r\n";
    let mut s = tokio::net::TcpStream::connect(proxy.addr()).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut s, raw)
        .await
        .unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(5),
        tokio::io::AsyncReadExt::read_to_end(&mut s, &mut buf),
    )
    .await
    .unwrap()
    .unwrap();
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("x-shunt-route: admin"), "{text}");
    let body = &text[text.find("\r\n\r\n").unwrap() + 4..];
    let seen: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(seen_header(&seen, "host"), vec!["admin.test"], "{seen}");
    let _ = std::fs::remove_dir_all(dir);
}
