//! Debian's pebble (a real ACME server) and pebble-challtestsrv (its DNS),
//! started and stopped by PID for the ACME tests.
//!
//! Pebble's own HTTPS listener gets a certificate made here with rcgen (for
//! `127.0.0.1`), so shunt trusts it through `--acme-ca-file`. Pebble
//! validates challenges on the ports shunt listens on (`httpPort`,
//! `tlsPort` in its config), resolving every name through challtestsrv,
//! which answers 127.0.0.1 unless told otherwise ([`Pebble::add_a`]).
//! `PEBBLE_VA_NOSLEEP=1` and `PEBBLE_WFE_NONCEREJECT=0` keep it fast and
//! deterministic. The roots pebble issues under are read from its
//! management API ([`Pebble::root_pem`]); pebble makes new ones each start,
//! so a restarted pebble ([`Pebble::restart`]) keeps the same data only
//! while it runs.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::bin::{Collected, command, spawn_collecting};
use super::tls::{TestPki, tls_connect};
use super::{Part, eventually, free_port, require};

/// A running pebble and challtestsrv; both killed (by PID) on drop.
pub(crate) struct Pebble {
    pki: TestPki,
    config: PathBuf,
    dns: SocketAddr,
    acme: SocketAddr,
    management: SocketAddr,
    challtestsrv_management: SocketAddr,
    pebble: Option<tokio::process::Child>,
    challtestsrv: tokio::process::Child,
    /// Everything pebble wrote, across restarts.
    pub output: Collected,
    /// Pebble's output of each start, in order (for [`Pebble::orders`]).
    outputs: Vec<Collected>,
}

/// Whether `program` is on PATH (`Err` says which is missing).
fn found(program: &str) -> Result<(), String> {
    std::process::Command::new(program)
        .arg("-h")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map(|_| ())
        .map_err(|e| format!("{program}: {e}"))
}

impl Pebble {
    /// Start challtestsrv and pebble, validating HTTP-01 on `http_port` and
    /// TLS-ALPN-01 on `tls_port`; `None` (after [`require`]'s skip line) when
    /// pebble is not installed and not required.
    pub(crate) async fn start(http_port: u16, tls_port: u16) -> Option<Pebble> {
        require(
            Part::Pebble,
            found("pebble").and_then(|()| found("pebble-challtestsrv")),
        )?;
        let pki = TestPki::new();
        let (cert, key) = pki.write("pebble", &["127.0.0.1", "localhost"]);
        let on = |port| SocketAddr::from(([127, 0, 0, 1], port));
        let (acme, management) = (on(free_port()), on(free_port()));
        let (dns, challtestsrv_management) = (on(free_port()), on(free_port()));
        let config = pki.dir.join("pebble-config.json");
        let json = serde_json::json!({
            "pebble": {
                "listenAddress": acme.to_string(),
                "managementListenAddress": management.to_string(),
                "certificate": cert,
                "privateKey": key,
                "httpPort": http_port,
                "tlsPort": tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false,
            }
        });
        std::fs::write(&config, json.to_string()).unwrap();
        let args = [
            "-defaultIPv4".to_owned(),
            "127.0.0.1".to_owned(),
            "-defaultIPv6".to_owned(),
            String::new(),
            "-dns01".to_owned(),
            dns.to_string(),
            "-http01".to_owned(),
            String::new(),
            "-https01".to_owned(),
            String::new(),
            "-tlsalpn01".to_owned(),
            String::new(),
            "-management".to_owned(),
            challtestsrv_management.to_string(),
        ];
        let (challtestsrv, _, _) =
            spawn_collecting(command("pebble-challtestsrv", &pki.dir, &[]), &args, true);
        let mut pebble = Pebble {
            pki,
            config,
            dns,
            acme,
            management,
            challtestsrv_management,
            pebble: None,
            challtestsrv,
            output: Collected::default(),
            outputs: Vec::new(),
        };
        pebble.wait_tcp(challtestsrv_management).await;
        pebble.restart().await;
        Some(pebble)
    }

    /// (Re)start pebble itself on the same ports and config.
    pub(crate) async fn restart(&mut self) {
        let env = [("PEBBLE_VA_NOSLEEP", "1"), ("PEBBLE_WFE_NONCEREJECT", "0")];
        let args = [
            "-config".to_owned(),
            self.config.display().to_string(),
            "-dnsserver".to_owned(),
            self.dns.to_string(),
        ];
        let (child, output, _) =
            spawn_collecting(command("pebble", &self.pki.dir, &env), &args, true);
        self.pebble = Some(child);
        self.outputs.push(output.clone());
        self.output = output;
        self.wait_tcp(self.acme).await;
        self.wait_tcp(self.management).await;
    }

    /// Stop pebble (kill by PID and reap); challtestsrv keeps running.
    pub(crate) async fn stop(&mut self) {
        if let Some(mut child) = self.pebble.take() {
            let _ = child.start_kill();
            let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
        }
    }

    async fn wait_tcp(&self, addr: SocketAddr) {
        let up = eventually(Duration::from_secs(10), async || {
            tokio::net::TcpStream::connect(addr).await.is_ok()
        })
        .await;
        assert!(
            up,
            "{addr} never listened; pebble said:\n{}",
            self.all_output()
        );
    }

    /// Pebble's output since the first start.
    pub(crate) fn all_output(&self) -> String {
        self.outputs.iter().map(Collected::text).collect()
    }

    /// How many orders pebble has been asked for (new-order requests in its log).
    pub(crate) fn orders(&self) -> usize {
        self.all_output().matches("order-plz").count()
    }

    /// The directory URL shunt is given.
    pub(crate) fn directory(&self) -> String {
        format!("https://{}/dir", self.acme)
    }

    /// The CA that signed pebble's own HTTPS certificate (`--acme-ca-file`).
    pub(crate) fn api_ca_file(&self) -> PathBuf {
        self.pki.ca_file()
    }

    /// A scratch directory that lives as long as this pebble.
    pub(crate) fn dir(&self) -> &Path {
        &self.pki.dir
    }

    /// The root pebble issues under now, from its management API.
    pub(crate) async fn root_pem(&self) -> String {
        let (mut tls, _) = tls_connect(self.management, "127.0.0.1", self.pki.client_config())
            .await
            .expect("pebble's management API");
        tls.write_all(b"GET /roots/0 HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut buf)).await;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let start = text.find("-----BEGIN CERTIFICATE-----").unwrap_or_else(|| {
            panic!("no root in pebble's answer: {text}");
        });
        text[start..].to_owned()
    }

    /// A rustls client config trusting pebble's current root only.
    pub(crate) async fn client_config(&self) -> std::sync::Arc<rustls::ClientConfig> {
        use rustls::pki_types::pem::PemObject;
        let pem = self.root_pem().await;
        let mut roots = rustls::RootCertStore::empty();
        for der in rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()) {
            roots.add(der.unwrap()).unwrap();
        }
        std::sync::Arc::new(
            rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
                rustls::crypto::aws_lc_rs::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
        )
    }

    /// Make challtestsrv answer `ip` for `host` (a domain that resolves elsewhere).
    pub(crate) async fn add_a(&self, host: &str, ip: &str) {
        let body = serde_json::json!({"host": host, "addresses": [ip]}).to_string();
        let mut conn = super::HttpConn::connect(self.challtestsrv_management)
            .await
            .expect("challtestsrv's management API");
        let resp = conn
            .send(
                http::Method::POST,
                "/add-a",
                &[("content-type", "application/json")],
                http_body_util::Full::new(bytes::Bytes::from(body)),
            )
            .await
            .expect("add-a");
        assert_eq!(resp.status, 200, "add-a: {}", resp.text());
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        if let Some(child) = self.pebble.as_mut() {
            let _ = child.start_kill();
        }
        let _ = self.challtestsrv.start_kill();
    }
}
