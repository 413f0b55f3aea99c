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

/// A reload applies a new `hsts` at once; `tls_groups` and `[acme]` need a
/// restart, and the reload says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_applies_hsts_and_flags_tls_groups_and_acme_for_a_restart() {
    let (pki, (cert, key), backend, _) =
        tls_in_front("server", &["localhost"], "hsts-backend").await;
    let file = |extra: &str| {
        format!(
            "{extra}\n[tls]\ncert = \"{}\"\nkey = \"{}\"\n[upstreams.direct]\nurl = \"{}\"\n",
            cert.display(),
            key.display(),
            backend.url()
        )
    };
    let config = pki.dir.join("shunt.toml");
    std::fs::write(&config, file("hsts = \"max-age=60\"")).unwrap();
    let proxy = crate::support::shunt()
        .arg("--config", config.to_str().unwrap())
        .flag("--no-watch")
        .start_ready()
        .await;
    let answer = https_get(proxy.addr(), pki.client_config(), "/page").await;
    assert!(
        answer.contains("strict-transport-security: max-age=60"),
        "{answer}"
    );

    let acme_dir = pki.dir.join("acme");
    std::fs::write(
        &config,
        file(&format!(
            "hsts = \"max-age=120\"\ntls_groups = [\"X25519\"]\n[acme]\ndomains = [\"calls.example.com\"]\nstate_dir = \"{}\"",
            acme_dir.display()
        )),
    )
    .unwrap();
    assert!(proxy.reload().await);
    let answer = https_get(proxy.addr(), pki.client_config(), "/page").await;
    assert!(
        answer.contains("strict-transport-security: max-age=120"),
        "{answer}"
    );
    let status = proxy.status().await.unwrap();
    let pending: Vec<&str> = status["restart_required"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert!(
        pending.contains(&"tls_groups") && pending.contains(&"acme") && !pending.contains(&"tls"),
        "{pending:?}"
    );
}
