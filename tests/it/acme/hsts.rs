//! `--hsts`: `Strict-Transport-Security` on HTTP answers of the TLS listener,
//! never on the 101 of a WebSocket handshake, never on plain HTTP.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::tls::{tls_in_front, wss_connect};

const HSTS: &str = "max-age=31536000; includeSubDomains";

/// `GET path` over TLS with `Connection: close`; the whole answer as text.
async fn https_get(
    addr: std::net::SocketAddr,
    config: std::sync::Arc<rustls::ClientConfig>,
    path: &str,
) -> String {
    let (mut tls, _) = crate::support::tls::tls_connect(addr, "localhost", config)
        .await
        .unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(crate::support::IO_TIMEOUT, tls.read_to_end(&mut buf))
        .await
        .expect("the answer ends");
    String::from_utf8_lossy(&buf).to_lowercase()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hsts_is_added_to_https_answers_only() {
    let (pki, _, backend, proxy) = tls_in_front("server", &["localhost"], "hsts-backend").await;
    let proxy = proxy.arg("--hsts", HSTS).start_ready().await;

    let answer = https_get(proxy.addr(), pki.client_config(), "/status-page").await;
    assert!(answer.starts_with("http/1.1 200"), "{answer}");
    assert!(
        answer.contains(&format!(
            "strict-transport-security: {}",
            HSTS.to_lowercase()
        )),
        "a proxied answer on the TLS listener carries HSTS: {answer}"
    );
    let (_ws, resp, _) = wss_connect(
        proxy.addr(),
        "localhost",
        "/frontend-audio",
        pki.client_config(),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 101);
    assert!(
        resp.headers().get("strict-transport-security").is_none(),
        "never on the 101: {:?}",
        resp.headers()
    );

    // The same flag on a plain listener adds nothing.
    let plain = crate::support::shunt()
        .direct(backend.url())
        .arg("--hsts", HSTS)
        .start_ready()
        .await;
    let resp = crate::support::http_get(plain.addr(), "/status-page", &[])
        .await
        .unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("strict-transport-security"), "");
}

#[test]
fn a_bad_hsts_value_is_a_clear_error() {
    let e = shunt::Config::from_args(["--hsts", "31536000"])
        .unwrap_err()
        .to_string();
    assert!(e.contains("--hsts") && e.contains("max-age"), "{e}");
    let file = crate::support::TempFile::new("hsts.toml", "hsts = \"includeSubDomains\"\n");
    let e = shunt::Config::from_args(["--config", file.path()])
        .unwrap_err()
        .to_string();
    assert!(e.contains("`hsts`"), "{e}");
}
