//! TLS session resumption on the listener: TLS 1.3 tickets, TLS 1.2
//! tickets and session IDs, counted as `kind="full|resumed"`; one ticketer
//! for every worker; tickets that outlive a certificate reload.

use crate::support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::{Resumption, Tls12Resumption};
use rustls::pki_types::ServerName;
use rustls::{HandshakeKind, ProtocolVersion};
use support::tls::{TestPki, atomic_write, tls_in_front};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// A client trusting `pki`, speaking only `version` (or both: `None`),
/// resuming TLS 1.2 as `tls12` allows; its session store lives in the config.
fn client(
    pki: &TestPki,
    version: Option<&'static rustls::SupportedProtocolVersion>,
    tls12: Tls12Resumption,
) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(pki.ca_file()).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider);
    let builder = match version {
        Some(v) => builder.with_protocol_versions(&[v]),
        None => builder.with_safe_default_protocol_versions(),
    };
    let mut config = builder
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.resumption = Resumption::in_memory_sessions(32).tls12_resumption(tls12);
    Arc::new(config)
}

/// One HTTP request over a fresh TLS connection; returns how the handshake
/// went and the protocol version. Reading the answer to its end also reads
/// the TLS 1.3 tickets the server sent after the handshake.
async fn exchange(
    addr: SocketAddr,
    config: &Arc<rustls::ClientConfig>,
) -> (HandshakeKind, ProtocolVersion) {
    let exchange = async {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let mut tls = TlsConnector::from(config.clone())
            .connect(name, tcp)
            .await
            .unwrap();
        let (_, conn) = tls.get_ref();
        let seen = (
            conn.handshake_kind().unwrap(),
            conn.protocol_version().unwrap(),
        );
        tls.write_all(b"GET /r HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        tls.read_to_end(&mut answer).await.unwrap();
        assert!(
            answer.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&answer)
        );
        seen
    };
    tokio::time::timeout(support::IO_TIMEOUT, exchange)
        .await
        .expect("TLS exchange timed out")
}

/// `/status` `tls.handshakes` as (full, resumed).
fn kinds(status: &serde_json::Value) -> (u64, u64) {
    let h = &status["tls"]["handshakes"];
    (
        h["full"].as_u64().unwrap_or_else(|| panic!("{status}")),
        h["resumed"].as_u64().unwrap_or_else(|| panic!("{status}")),
    )
}

/// The value of one `/metrics` sample line, by its name and labels.
fn sample(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{metrics}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls13_tickets_resume_and_are_counted_full_then_resumed() {
    let (pki, _, _backend, proxy) = tls_in_front("server", &["localhost"], "b").await;
    let proxy = proxy.start().await;
    let config = client(
        &pki,
        Some(&rustls::version::TLS13),
        Tls12Resumption::Disabled,
    );

    let first = exchange(proxy.addr(), &config).await;
    assert_eq!(first, (HandshakeKind::Full, ProtocolVersion::TLSv1_3));
    assert_eq!(kinds(&proxy.status().await.unwrap()), (1, 0));

    let second = exchange(proxy.addr(), &config).await;
    assert_eq!(second, (HandshakeKind::Resumed, ProtocolVersion::TLSv1_3));
    let status = proxy.status().await.unwrap();
    assert_eq!(kinds(&status), (1, 1));
    // The groups still count every handshake; a TLS 1.3 resumption runs a key exchange.
    assert_eq!(status["tls"]["groups"]["X25519"], 2, "{status}");

    // A client with no session (another browser) handshakes in full.
    let other = client(
        &pki,
        Some(&rustls::version::TLS13),
        Tls12Resumption::Disabled,
    );
    assert_eq!(exchange(proxy.addr(), &other).await.0, HandshakeKind::Full);

    let metrics = proxy.admin_get("/metrics").await.unwrap().1;
    let g = "group=\"X25519\"";
    assert_eq!(
        sample(
            &metrics,
            &format!("shunt_tls_handshakes_total{{{g},kind=\"full\"}}")
        ),
        2
    );
    assert_eq!(
        sample(
            &metrics,
            &format!("shunt_tls_handshakes_total{{{g},kind=\"resumed\"}}")
        ),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls12_resumes_by_ticket_and_by_session_id() {
    let (pki, _, _backend, proxy) = tls_in_front("server", &["localhost"], "b").await;
    let proxy = proxy.start().await;
    let tls12 = Some(&rustls::version::TLS12);

    // Session tickets (RFC 5077), the stateless path.
    let tickets = client(&pki, tls12, Tls12Resumption::SessionIdOrTickets);
    assert_eq!(
        exchange(proxy.addr(), &tickets).await,
        (HandshakeKind::Full, ProtocolVersion::TLSv1_2)
    );
    assert_eq!(
        exchange(proxy.addr(), &tickets).await,
        (HandshakeKind::Resumed, ProtocolVersion::TLSv1_2)
    );
    // Session IDs: the in-memory cache, the fallback for clients without tickets.
    let ids = client(&pki, tls12, Tls12Resumption::SessionIdOnly);
    assert_eq!(exchange(proxy.addr(), &ids).await.0, HandshakeKind::Full);
    assert_eq!(exchange(proxy.addr(), &ids).await.0, HandshakeKind::Resumed);

    let status = proxy.status().await.unwrap();
    assert_eq!(kinds(&status), (2, 2));
    // A TLS 1.2 resumption exchanges no key: it counts under `none`.
    let metrics = proxy.admin_get("/metrics").await.unwrap().1;
    assert_eq!(
        sample(
            &metrics,
            "shunt_tls_handshakes_total{group=\"none\",kind=\"resumed\"}"
        ),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tickets_survive_a_certificate_reload() {
    let (pki, (cert, key), _backend, proxy) = tls_in_front("server", &["localhost"], "b").await;
    let proxy = proxy.flag("--no-watch").start().await;
    let config = client(&pki, None, Tls12Resumption::SessionIdOrTickets);
    assert_eq!(exchange(proxy.addr(), &config).await.0, HandshakeKind::Full);
    let old = proxy.status().await.unwrap()["certificates"][0]["sha256"].clone();

    let (new_cert, new_key) = pki.issue(&["localhost"]);
    atomic_write(&key, &new_key);
    atomic_write(&cert, &new_cert);
    let (code, body) = proxy.admin_post("/reload").await;
    assert_eq!(code, 200, "{body}");
    let status = proxy.status().await.unwrap();
    assert_ne!(status["certificates"][0]["sha256"], old, "{status}");

    // The session from before the reload still resumes...
    assert_eq!(
        exchange(proxy.addr(), &config).await.0,
        HandshakeKind::Resumed
    );
    // ...and a new client gets the new certificate, in full.
    let fresh = client(&pki, None, Tls12Resumption::SessionIdOrTickets);
    let (tls, fp) = support::tls::tls_connect(proxy.addr(), "localhost", fresh)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.handshake_kind(), Some(HandshakeKind::Full));
    assert_eq!(status["certificates"][0]["sha256"], fp.as_str());
    assert_eq!(kinds(&proxy.status().await.unwrap()), (2, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_worker_resumes_the_tickets_of_the_others() {
    let pki = TestPki::new();
    let (cert, key) = pki.write("server", &["localhost"]);
    let backend = support::echo_backend().name("b").spawn().await;
    let served = support::shunt()
        .direct(backend.url())
        .tls(&cert, &key)
        .flags(&["--workers", "2", "--no-watch"])
        .spawn_process_ready()
        .await;
    let config = client(
        &pki,
        Some(&rustls::version::TLS13),
        Tls12Resumption::Disabled,
    );
    assert_eq!(
        exchange(served.addr(), &config).await.0,
        HandshakeKind::Full
    );
    // Each connection comes from a new port, so the kernel spreads them
    // over both workers; each one resumes a ticket from the one before.
    for i in 0..16 {
        let kind = exchange(served.addr(), &config).await.0;
        assert_eq!(kind, HandshakeKind::Resumed, "connection {i}");
    }
    let status = served.admin_json("/status").await;
    assert_eq!(kinds(&status), (1, 16));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_ticket_rotation_out_of_bounds_is_refused() {
    let run = |args: Vec<String>| async move {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        support::bin::run_shunt(&args, Duration::from_secs(10)).await
    };
    for (value, ok) in [("30s", false), ("7h", false), ("1m", true), ("6h", true)] {
        let out = run(vec![
            "check".into(),
            "--tls-ticket-rotation".into(),
            value.into(),
        ])
        .await;
        if ok {
            out.succeeded();
        } else {
            let stderr = out.refused(value);
            assert!(stderr.contains("tls_ticket_rotation"), "{value}: {stderr}");
            assert!(stderr.contains("between 1m and 6h"), "{value}: {stderr}");
        }
    }
    let file = support::TempFile::new("rotation.toml", "tls_ticket_rotation = \"0s\"\n");
    let out = run(vec![
        "check".into(),
        "--config".into(),
        file.path().to_owned(),
    ])
    .await;
    assert!(
        out.refused("0s").contains("tls_ticket_rotation"),
        "{}",
        out.stderr
    );
    let file = support::TempFile::new("rotation.toml", "tls_ticket_rotation = \"2h\"\n");
    run(vec![
        "check".into(),
        "--config".into(),
        file.path().to_owned(),
    ])
    .await
    .succeeded();
}
