//! TLS termination: wss:// echo, certificate swap while a call streams, a bad
//! certificate refused on reload, SNI, garbage on the TLS port, https upstreams.

use crate::support;
use crate::support::Part;

use std::path::PathBuf;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;

use support::tls::{TestPki, atomic_write, tls_connect, tls_in_front, wss_connect};
use support::ws::{header, recv_binary, recv_text, send_binary, send_text};
use support::{echo_backend, eventually, shunt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(10);

/// A wss:// call through `proxy` on `/a`, past the backend's hello; with the
/// fingerprint of the certificate it was served.
async fn open_tls_call(proxy: &support::Shunt, pki: &TestPki) -> (support::Ws, String) {
    let (mut call, _, fp) = wss_connect(proxy.addr(), "localhost", "/a", pki.client_config())
        .await
        .unwrap();
    recv_text(&mut call).await.unwrap();
    (call, fp)
}

/// A wss:// handshake on `path` through shunt at `addr` that must succeed;
/// the client WebSocket and the `x-shunt-route` it was answered with.
async fn wss_ok(addr: std::net::SocketAddr, path: &str, pki: &TestPki) -> (support::Ws, String) {
    let (ws, resp, _) = wss_connect(addr, "localhost", path, pki.client_config())
        .await
        .unwrap_or_else(|e| panic!("wss:// handshake on {path}: {e}"));
    (ws, header(&resp, "x-shunt-route").to_owned())
}

async fn echo_once(ws: &mut support::Ws, text: &str) {
    send_text(ws, text).await.unwrap();
    assert_eq!(recv_text(ws).await.unwrap(), text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_echo_through_shunt() {
    let (pki, _, _backend, proxy) =
        tls_in_front("server", &["localhost", "127.0.0.1"], "direct-backend").await;
    let proxy = proxy.start().await;
    let (mut ws, route) = wss_ok(proxy.addr(), "/frontend-audio", &pki).await;
    assert_eq!(route, "direct");
    assert_eq!(
        recv_text(&mut ws).await.unwrap(),
        "hello from direct-backend"
    );
    echo_once(&mut ws, "over tls").await;
    let audio = vec![7u8; 640];
    send_binary(&mut ws, &audio).await.unwrap();
    assert_eq!(recv_binary(&mut ws).await.unwrap(), audio);

    // The backend is told the client came over TLS.
    let (tls, _) = tls_connect(proxy.addr(), "127.0.0.1", pki.client_config())
        .await
        .unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::get("/info")
        .header("host", "localhost")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    let seen: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        support::seen_header(&seen, "x-forwarded-proto"),
        vec!["https"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_renewed_by_atomic_rename_while_a_call_streams() {
    let (pki, (cert, key), _backend, proxy) = tls_in_front("server", &["localhost"], "b").await;
    let proxy = proxy.start().await;
    let (mut call, old_fp) = open_tls_call(&proxy, &pki).await;
    echo_once(&mut call, "before renewal").await;

    // certbot-style renewal: new files renamed over the old ones.
    let (new_cert, new_key) = pki.issue(&["localhost"]);
    atomic_write(&key, &new_key);
    atomic_write(&cert, &new_cert);

    let mut seen = String::new();
    let renewed = eventually(WAIT, async || {
        match tls_connect(proxy.addr(), "localhost", pki.client_config()).await {
            Ok((_, fp)) => {
                seen = fp;
                seen != old_fp
            }
            Err(_) => false,
        }
    })
    .await;
    assert!(renewed, "new handshakes still get {seen}");
    let status = proxy.status().await.unwrap();
    assert_eq!(status["certificates"][0]["sha256"], seen.as_str());
    assert_eq!(status["last_reload"]["ok"], true, "{status}");

    // The call opened before the renewal is untouched.
    for i in 0..5 {
        echo_once(&mut call, &format!("after renewal {i}")).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_certificate_or_mismatched_key_leaves_the_old_one_served() {
    let (pki, (cert, key), _backend, proxy) =
        tls_in_front("server", &["localhost"], "backend").await;
    let proxy = proxy.flag("--no-watch").start().await;
    let (_, fp) = tls_connect(proxy.addr(), "localhost", pki.client_config())
        .await
        .unwrap();
    let good_cert = std::fs::read_to_string(&cert).unwrap();

    // Garbage in the certificate file.
    atomic_write(
        &cert,
        "-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n",
    );
    let (code, body) = proxy.admin_post("/reload").await;
    assert_eq!(code, 422, "{body}");
    assert!(
        body.contains("server.crt"),
        "the error names the file: {body}"
    );
    let status = proxy.status().await.unwrap();
    assert_eq!(status["last_reload"]["ok"], false, "{status}");
    assert!(
        status["last_reload"]["error"]
            .as_str()
            .unwrap()
            .contains("server.crt")
    );
    let (_, still) = tls_connect(proxy.addr(), "localhost", pki.client_config())
        .await
        .unwrap();
    assert_eq!(still, fp);

    // A valid certificate with somebody else's key.
    atomic_write(&cert, &good_cert);
    let (_, other_key) = pki.issue(&["localhost"]);
    atomic_write(&key, &other_key);
    let (code, body) = proxy.admin_post("/reload").await;
    assert_eq!(code, 422, "{body}");
    assert!(body.contains("server.key"), "{body}");
    let (_, still) = tls_connect(proxy.addr(), "localhost", pki.client_config())
        .await
        .unwrap();
    assert_eq!(still, fp);
    assert_eq!(proxy.status().await.unwrap()["generation"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_picks_the_certificate() {
    let pki = TestPki::new();
    pki.write("default", &["localhost"]);
    pki.write("calls", &["calls.test"]);
    pki.write("wild", &["*.example.test"]);
    let config = pki.dir.join("shunt.toml");
    std::fs::write(
        &config,
        r#"
[[tls.certs]]
cert = "default.crt"
key = "default.key"

[[tls.certs]]
cert = "calls.crt"
key = "calls.key"
names = ["calls.test"]

[[tls.certs]]
cert = "wild.crt"
key = "wild.key"
"#,
    )
    .unwrap();
    let backend = echo_backend().spawn().await;
    let proxy = shunt()
        .direct(backend.url())
        .arg("--config", config.to_str().unwrap())
        .start()
        .await;
    let status = proxy.status().await.unwrap();
    let fp_of = |file: &str| {
        status["certificates"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["cert_file"].as_str().unwrap().ends_with(file))
            .unwrap()["sha256"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let cfg = pki.client_config();
    let (_, fp) = tls_connect(proxy.addr(), "calls.test", cfg.clone())
        .await
        .unwrap();
    assert_eq!(fp, fp_of("calls.crt"));
    let (_, fp) = tls_connect(proxy.addr(), "a.example.test", cfg.clone())
        .await
        .unwrap();
    assert_eq!(fp, fp_of("wild.crt"));
    let (_, fp) = tls_connect(proxy.addr(), "localhost", cfg.clone())
        .await
        .unwrap();
    assert_eq!(fp, fp_of("default.crt"));
    // An unknown name gets the default certificate (and so fails verification).
    assert!(
        tls_connect(proxy.addr(), "unknown.test", cfg)
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_plain_http_on_the_tls_port_are_closed_cleanly() {
    let (pki, _, _backend, proxy) = tls_in_front("server", &["localhost"], "backend").await;
    let proxy = proxy.start().await;
    let (mut call, _) = open_tls_call(&proxy, &pki).await;

    // Plain HTTP: a 400 that says what to do, then close.
    let mut plain = TcpStream::connect(proxy.addr()).await.unwrap();
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let answer = read_to_close(&mut plain).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("https://"), "{answer}");

    // Binary garbage, and a TLS record header with junk after it: closed.
    for junk in [
        &[0u8, 1, 2, 3, 255, 254][..],
        &[0x16, 3, 1, 0, 5, 1, 2, 3, 4, 5][..],
    ] {
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        s.write_all(junk).await.unwrap();
        let answer = read_to_close(&mut s).await;
        assert!(!answer.contains("HTTP/1.1 2"), "{answer}");
    }

    // A client that connects and says nothing does not hold anything up.
    let _silent = TcpStream::connect(proxy.addr()).await.unwrap();
    echo_once(&mut call, "still here").await;
    let (_, _) = tls_connect(proxy.addr(), "localhost", pki.client_config())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_upstream_with_a_private_ca() {
    // A TLS-only "nginx": another shunt terminating TLS in front of the backend.
    let (pki, (cert, _), backend, tls_front) =
        tls_in_front("nginx", &["127.0.0.1"], "behind-tls").await;
    let tls_front = tls_front.start().await;
    let proxy = shunt()
        .direct(backend.url())
        .nginx(format!("https://127.0.0.1:{}", tls_front.addr().port()))
        .route("/=nginx")
        .arg("--upstream-ca", pki.ca_file().to_str().unwrap())
        .arg("--health-check", "ws:/probe")
        .start()
        .await;
    proxy.wait_upstream("nginx", "up").await;
    let (mut ws, resp) = support::ws_connect(proxy.addr(), "/frontend-audio", &[])
        .await
        .unwrap();
    assert_eq!(header(&resp, "x-shunt-route"), "nginx");
    assert_eq!(recv_text(&mut ws).await.unwrap(), "hello from behind-tls");
    echo_once(&mut ws, "through two proxies").await;

    // Without the CA the upstream is not trusted: the route has no healthy upstream.
    let untrusting = shunt()
        .nginx(format!("https://127.0.0.1:{}", tls_front.addr().port()))
        .route("/=nginx")
        .arg("--upstream-ca", cert.to_str().unwrap())
        .start()
        .await;
    untrusting.wait_upstream("nginx", "down").await;
    let status = untrusting.status().await.unwrap();
    let err = status["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == "nginx")
        .unwrap()["last_error"]
        .to_string();
    assert!(err.contains("TLS"), "{err}");
}

async fn read_to_close(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .expect("the server closed the connection");
    String::from_utf8_lossy(&buf).into_owned()
}

/// One kubelet-style generation of a secret volume: directory `name` in
/// `volume` with a fresh `tls.crt` and `tls.key` for localhost.
fn secret_generation(pki: &TestPki, volume: &std::path::Path, name: &str) -> PathBuf {
    let dir = volume.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = pki.issue(&["localhost"]);
    std::fs::write(dir.join("tls.crt"), cert).unwrap();
    std::fs::write(dir.join("tls.key"), key).unwrap();
    dir
}

/// A Kubernetes secret volume: `tls.crt -> ..data/tls.crt`, `..data -> ..<timestamp>`;
/// an update writes a new timestamped directory and swaps `..data` by rename.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_secret_symlink_swap_reloads_the_certificate() {
    use std::os::unix::fs::symlink;
    let pki = TestPki::new();
    let volume = pki.dir.join("secret");
    let first = secret_generation(&pki, &volume, "..2026_11_25_first");
    symlink("..2026_11_25_first", volume.join("..data")).unwrap();
    symlink("..data/tls.crt", volume.join("tls.crt")).unwrap();
    symlink("..data/tls.key", volume.join("tls.key")).unwrap();

    let backend = echo_backend().spawn().await;
    let proxy = shunt()
        .direct(backend.url())
        .arg("--tls-cert", volume.join("tls.crt").to_str().unwrap())
        .arg("--tls-key", volume.join("tls.key").to_str().unwrap())
        .start()
        .await;
    let (_, old_fp) = tls_connect(proxy.addr(), "localhost", pki.client_config())
        .await
        .unwrap();

    // What the kubelet does on a secret update.
    secret_generation(&pki, &volume, "..2026_11_25_second");
    symlink("..2026_11_25_second", volume.join("..data_tmp")).unwrap();
    std::fs::rename(volume.join("..data_tmp"), volume.join("..data")).unwrap();
    std::fs::remove_dir_all(&first).unwrap();

    let mut seen = old_fp.clone();
    let swapped = eventually(WAIT, async || {
        if let Ok((_, fp)) = tls_connect(proxy.addr(), "localhost", pki.client_config()).await {
            seen = fp;
        }
        seen != old_fp
    })
    .await;
    assert!(swapped, "the ..data swap was not picked up");
    assert_eq!(proxy.status().await.unwrap()["last_reload"]["ok"], true);
}

/// Runs `openssl ARGS` for the key kind `name`; panics with its stderr
/// unless it succeeds.
fn openssl(name: &str, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// RSA (PKCS#1 and PKCS#8), ECDSA (SEC1) and Ed25519 (PKCS#8) keys made by
/// openssl all serve TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsa_ecdsa_and_ed25519_keys_in_every_pem_form() {
    if std::process::Command::new("openssl")
        .arg("version")
        .output()
        .is_err()
    {
        support::require::missing(Part::Openssl, "openssl is not installed");
        return;
    }
    let pki = TestPki::new();
    let backend = echo_backend().spawn().await;
    let kinds: [(&str, &[&str], &str); 4] = [
        (
            "rsa-pkcs1",
            &["genrsa", "-traditional", "-out", "{out}", "2048"],
            "BEGIN RSA PRIVATE KEY",
        ),
        (
            "rsa-pkcs8",
            &[
                "genpkey",
                "-algorithm",
                "rsa",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
                "{out}",
            ],
            "BEGIN PRIVATE KEY",
        ),
        (
            "ec-sec1",
            &[
                "ecparam",
                "-name",
                "prime256v1",
                "-genkey",
                "-noout",
                "-out",
                "{out}",
            ],
            "BEGIN EC PRIVATE KEY",
        ),
        (
            "ed25519",
            &["genpkey", "-algorithm", "ed25519", "-out", "{out}"],
            "BEGIN PRIVATE KEY",
        ),
    ];
    for (name, genkey, marker) in kinds {
        let key = pki.dir.join(format!("{name}.key"));
        let cert = pki.dir.join(format!("{name}.crt"));
        let key_arg = key.to_str().unwrap();
        let genkey: Vec<&str> = genkey
            .iter()
            .map(|a| if *a == "{out}" { key_arg } else { a })
            .collect();
        openssl(name, &genkey);
        assert!(
            std::fs::read_to_string(&key).unwrap().contains(marker),
            "{name} is not in the expected form"
        );
        let cert_arg = cert.to_str().unwrap();
        openssl(
            name,
            &[
                "req",
                "-new",
                "-x509",
                "-days",
                "30",
                "-subj",
                "/CN=localhost",
                "-addext",
                "subjectAltName=DNS:localhost",
                "-addext",
                "basicConstraints=critical,CA:FALSE",
                "-key",
                key_arg,
                "-out",
                cert_arg,
            ],
        );

        let proxy = shunt().direct(backend.url()).tls(&cert, &key).start().await;
        let mut roots = rustls::RootCertStore::empty();
        let pem = std::fs::read(&cert).unwrap();
        for der in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
            roots.add(der.unwrap()).unwrap();
        }
        let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let (mut ws, _, _) =
            wss_connect(proxy.addr(), "localhost", "/a", std::sync::Arc::new(client))
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        recv_text(&mut ws).await.unwrap();
        echo_once(&mut ws, name).await;
    }
}

/// The security policy holds on wss:// too: a denied address is closed before
/// the TLS handshake, a handshake without its token gets 401.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_lists_and_tokens_apply_on_wss() {
    let (pki, _, _backend, tls_front) = tls_in_front("server", &["localhost"], "backend").await;
    let tokens = pki.dir.join("tokens");
    std::fs::write(&tokens, "# call dashboard\ns3cret-token\n").unwrap();

    let denied = tls_front
        .clone()
        .arg("--deny-ip", "127.0.0.1/32")
        .start()
        .await;
    let mut s = TcpStream::connect(denied.addr()).await.unwrap();
    let answer = read_to_close(&mut s).await;
    assert!(
        answer.is_empty(),
        "a denied TLS client gets no plain-text answer: {answer:?}"
    );
    assert!(
        tls_connect(denied.addr(), "localhost", pki.client_config())
            .await
            .is_err()
    );

    let guarded = tls_front
        .clone()
        .arg("--allow-ip", "127.0.0.0/8")
        .arg("--token-file", tokens.to_str().unwrap())
        .start()
        .await;
    let refused = wss_connect(
        guarded.addr(),
        "localhost",
        "/frontend-audio",
        pki.client_config(),
    )
    .await;
    let err = refused
        .err()
        .expect("a handshake without a token is refused")
        .to_string();
    assert!(err.contains("401"), "{err}");
    let (mut ws, route) = wss_ok(guarded.addr(), "/frontend-audio?token=s3cret-token", &pki).await;
    assert_eq!(route, "direct");
    recv_text(&mut ws).await.unwrap();
    echo_once(&mut ws, "authenticated over tls").await;
}

/// `curl --http1.0` offers ALPN `http/1.0` alone; `http/1.1` clients get `http/1.1`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpn_selects_http_1_1_or_http_1_0() {
    let (pki, _, _backend, proxy) = tls_in_front("server", &["localhost"], "backend").await;
    let proxy = proxy.start().await;
    for (offer, want) in [
        (vec![b"h2".to_vec(), b"http/1.1".to_vec()], "http/1.1"),
        (vec![b"http/1.0".to_vec()], "http/1.0"),
    ] {
        let mut config = (*pki.client_config()).clone();
        config.alpn_protocols = offer;
        let (tls, _) = tls_connect(proxy.addr(), "localhost", std::sync::Arc::new(config))
            .await
            .unwrap();
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(want.as_bytes()));
    }
}

/// A client that opens the TLS port and never finishes its handshake is
/// closed at `--tls-handshake-timeout`, while a call keeps streaming.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_tls_handshake_is_closed_at_the_timeout() {
    let (pki, _, _backend, proxy) = tls_in_front("server", &["localhost"], "backend").await;
    let proxy = proxy.arg("--tls-handshake-timeout", "300ms").start().await;
    let (mut call, _) = open_tls_call(&proxy, &pki).await;

    // Silent, and a TLS record header that never gets its body.
    let mut silent = TcpStream::connect(proxy.addr()).await.unwrap();
    let mut partial = TcpStream::connect(proxy.addr()).await.unwrap();
    partial.write_all(&[0x16, 3, 1, 0x02, 0x00]).await.unwrap();
    let started = std::time::Instant::now();
    read_to_close(&mut silent).await;
    read_to_close(&mut partial).await;
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(200) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    echo_once(&mut call, "unaffected").await;
}
