//! Client certificates: `[tls] client_ca`, `auth = "mtls"`, `forward_client_cert`,
//! a certificate from another CA, and the CA file hot-reloaded. Certificates
//! are made by rcgen ([`TestPki`]); the client is rustls.

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::tls::{TestPki, atomic_write, tls_connect};
use crate::support::{self, BoxError, IO_TIMEOUT, TempFile};

/// A rustls client trusting `server_ca`, presenting `cert` (PEM cert and key) if given.
fn client(server_ca: &TestPki, cert: Option<&(String, String)>) -> Arc<rustls::ClientConfig> {
    let Some((cert, key)) = cert else {
        return server_ca.client_config();
    };
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(server_ca.ca_file()).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let chain = vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()];
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .unwrap(),
    )
}

/// `GET path` over TLS with `extra` header lines; the whole answer as text.
async fn https_get(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    path: &str,
    extra: &str,
) -> Result<String, BoxError> {
    let (mut tls, _) = tls_connect(addr, "localhost", config).await?;
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{extra}\r\n");
    tls.write_all(request.as_bytes()).await?;
    let mut out = Vec::new();
    tokio::time::timeout(IO_TIMEOUT, tls.read_to_end(&mut out))
        .await
        .map_err(|_| "no answer in time")??;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

fn status(answer: &str) -> Option<u16> {
    answer.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

fn seen(answer: &str) -> Value {
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    serde_json::from_str(body).unwrap_or_else(|_| panic!("{answer}"))
}

#[tokio::test]
async fn client_certificates_required_per_route_forwarded_and_hot_reloaded() {
    let pki = TestPki::new();
    let (server_cert, server_key) = pki.write("server", &["localhost"]);
    let client_ca = TempFile::new(
        "client-ca.pem",
        &std::fs::read_to_string(pki.ca_file()).unwrap(),
    );
    let other = TestPki::new();
    let alice = pki.issue(&["alice"]);
    let mallory = other.issue(&["mallory"]);
    let backend = support::echo_backend().spawn().await;
    let config = TempFile::new(
        "shunt.toml",
        &format!(
            "[tls]\ncert = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\n\n[[routes]]\npath = \"/mtls\"\nvia = [\"direct\"]\nauth = \"mtls\"\nforward_client_cert = true\n\n[[routes]]\npath = \"/open\"\nvia = [\"direct\"]\n",
            server_cert.display(),
            server_key.display(),
            client_ca.path()
        ),
    );
    support::capture_logs();
    let shunt = support::shunt()
        .direct(backend.url())
        .arg("--health-interval", "60s")
        .arg("--config", config.path())
        .flag("--no-watch")
        .start()
        .await;
    let a = shunt.addr();

    // A certificate the CA signed: the route admits it and forwards who it is.
    let answer = https_get(
        a,
        client(&pki, Some(&alice)),
        "/mtls/x",
        "x-client-cert-subject: CN=admin\r\n",
    )
    .await
    .unwrap();
    assert_eq!(status(&answer), Some(200), "{answer}");
    let v = seen(&answer);
    assert_eq!(
        support::seen_header(&v, "x-client-cert-subject"),
        ["CN=alice"],
        "{v}"
    );
    let der = CertificateDer::from_pem_slice(alice.0.as_bytes()).unwrap();
    assert_eq!(
        support::seen_header(&v, "x-client-cert-sha256"),
        [shunt::testing::fingerprint(&der)]
    );

    // No certificate: the TLS handshake passes, the mtls route answers 401.
    let answer = https_get(a, client(&pki, None), "/mtls/x", "")
        .await
        .unwrap();
    assert_eq!(status(&answer), Some(401), "{answer}");
    assert!(answer.contains("client certificate"), "{answer}");
    let answer = https_get(a, client(&pki, None), "/open", "").await.unwrap();
    assert_eq!(status(&answer), Some(200), "{answer}");
    let (_, metrics) = shunt.admin_get("/metrics").await.unwrap();
    assert!(
        metrics.contains("reason=\"no_client_cert\"} 1"),
        "{metrics}"
    );

    // A certificate from another CA never completes the handshake.
    let refused = https_get(a, client(&pki, Some(&mallory)), "/open", "").await;
    assert!(
        refused.as_ref().map_or(true, |t| status(t).is_none()),
        "{refused:?}"
    );

    // The CA file is re-read on reload: now the other CA's clients are in.
    atomic_write(
        std::path::Path::new(client_ca.path()),
        &std::fs::read_to_string(other.ca_file()).unwrap(),
    );
    assert!(shunt.reload().await);
    let answer = https_get(a, client(&pki, Some(&mallory)), "/mtls/y", "")
        .await
        .unwrap();
    assert_eq!(status(&answer), Some(200), "{answer}");
    assert_eq!(
        support::seen_header(&seen(&answer), "x-client-cert-subject"),
        ["CN=mallory"]
    );
    let refused = https_get(a, client(&pki, Some(&alice)), "/mtls/y", "").await;
    assert!(
        refused.as_ref().map_or(true, |t| status(t).is_none()),
        "{refused:?}"
    );
    shunt.stop().await;

    let err = shunt::Config::from_args(["--auth", "mtls"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("client CA"), "{err}");
}
