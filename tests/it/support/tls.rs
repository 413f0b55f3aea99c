//! Test PKI made with rcgen at test time, and a `wss://` client that trusts it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Empty;
use hyper::Request;
use hyper::body::Incoming;
use hyper::header::{CONNECTION, HOST, UPGRADE};
use hyper_util::rt::TokioExecutor;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::ws::Ws;
use super::{BoxError, IO_TIMEOUT};

/// A test CA that issues server certificates into a temporary directory.
pub(crate) struct TestPki {
    issuer: Issuer<'static, KeyPair>,
    ca_der: CertificateDer<'static>,
    pub dir: PathBuf,
}

impl TestPki {
    /// A new CA and an empty directory for its certificates.
    pub(crate) fn new() -> TestPki {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "shunt test CA");
        let cert = params.self_signed(&key).unwrap();
        let dir = std::env::temp_dir().join(format!(
            "shunt-pki-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("ca.crt"), cert.pem()).unwrap();
        TestPki {
            ca_der: cert.der().clone(),
            issuer: Issuer::new(params, key),
            dir,
        }
    }

    /// The CA certificate file.
    pub(crate) fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// Issue a certificate for `names` (CN = first name); returns (cert PEM, key PEM).
    pub(crate) fn issue(&self, names: &[&str]) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(DnType::CommonName, names[0]);
        params.is_ca = IsCa::ExplicitNoCa;
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// Like [`TestPki::issue`], valid from `not_before` to `not_after`
    /// (year, month, day; midnight UTC).
    pub(crate) fn issue_dated(
        &self,
        names: &[&str],
        not_before: (i32, u8, u8),
        not_after: (i32, u8, u8),
    ) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(DnType::CommonName, names[0]);
        params.is_ca = IsCa::ExplicitNoCa;
        params.not_before = rcgen::date_time_ymd(not_before.0, not_before.1, not_before.2);
        params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// Issue into `<stem>.crt` / `<stem>.key` in the directory; returns their paths.
    pub(crate) fn write(&self, stem: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let (cert, key) = self.issue(names);
        let (c, k) = (
            self.dir.join(format!("{stem}.crt")),
            self.dir.join(format!("{stem}.key")),
        );
        std::fs::write(&c, cert).unwrap();
        std::fs::write(&k, key).unwrap();
        (c, k)
    }

    /// A rustls client config trusting only this CA.
    pub(crate) fn client_config(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        Arc::new(
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    }
}

impl Drop for TestPki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    h.finish()
}

/// Write `text` to `path` atomically (temporary file + rename), as certbot does.
pub(crate) fn atomic_write(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp-rename");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// TLS handshake to `addr` with SNI `server_name`; returns the stream and the
/// SHA-256 fingerprint (hex pairs, upper case) of the certificate presented.
pub(crate) async fn tls_connect(
    addr: SocketAddr,
    server_name: &str,
    config: Arc<rustls::ClientConfig>,
) -> Result<(tokio_rustls::client::TlsStream<TcpStream>, String), BoxError> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(server_name.to_owned())?;
    let tls = tokio::time::timeout(IO_TIMEOUT, TlsConnector::from(config).connect(name, tcp))
        .await
        .map_err(|_| "TLS handshake timed out")??;
    let leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or("no peer certificate")?;
    let fp = shunt::testing::fingerprint(leaf);
    Ok((tls, fp))
}

/// A `wss://` handshake through `addr` for `path`; returns the socket, the 101
/// and the fingerprint of the certificate the server presented.
pub(crate) async fn wss_connect(
    addr: SocketAddr,
    server_name: &str,
    path: &str,
    config: Arc<rustls::ClientConfig>,
) -> Result<(Ws, hyper::Response<Incoming>, String), BoxError> {
    let (tls, fp) = tls_connect(addr, server_name, config).await?;
    let request = Request::get(path)
        .header(HOST, server_name)
        .header(UPGRADE, "websocket")
        .header(CONNECTION, "upgrade")
        .header(
            "Sec-WebSocket-Key",
            fastwebsockets::handshake::generate_key(),
        )
        .header("Sec-WebSocket-Version", "13")
        .body(Empty::<Bytes>::new())?;
    let (ws, resp) = tokio::time::timeout(
        IO_TIMEOUT,
        fastwebsockets::handshake::client(&TokioExecutor::new(), request, tls),
    )
    .await
    .map_err(|_| "wss handshake timed out")??;
    Ok((ws, resp, fp))
}

/// A test CA with a certificate `stem` for `names` (its files returned too),
/// an echo backend named `backend`, and a shunt builder serving that
/// certificate in front of it.
pub(crate) async fn tls_in_front(
    stem: &str,
    names: &[&str],
    backend: &str,
) -> (
    TestPki,
    (PathBuf, PathBuf),
    super::EchoBackend,
    super::shunt::ShuntBuilder,
) {
    let pki = TestPki::new();
    let (cert, key) = pki.write(stem, names);
    let backend = super::echo_backend().name(backend).spawn().await;
    let builder = super::shunt().direct(backend.url()).tls(&cert, &key);
    (pki, (cert, key), backend, builder)
}
