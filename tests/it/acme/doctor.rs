//! `shunt doctor` with `[acme]`: each domain resolves (or not, and the fix),
//! the challenge port, and the stored certificate's validity and renewal.

use std::time::{Duration, SystemTime};

use crate::support::bin::run_shunt;
use crate::support::tls::TestPki;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_checks_dns_the_challenge_port_and_the_stored_certificate() {
    let backend = crate::support::echo_backend()
        .name("doctor-backend")
        .spawn()
        .await;
    let proxy = crate::support::shunt().direct(backend.url()).start().await;
    let pki = TestPki::new();
    let state = pki.dir.join("acme-state");
    std::fs::create_dir_all(&state).unwrap();
    let today = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        / 86400;
    let (cert, key) = pki.issue_dated(
        &["localhost"],
        super::pebble::civil(today - 30),
        super::pebble::civil(today + 60),
    );
    std::fs::write(state.join("cert.pem"), cert).unwrap();
    std::fs::write(state.join("key.pem"), key).unwrap();
    let listen = proxy.addr().to_string();
    let out = run_shunt(
        &[
            "doctor",
            "--timeout",
            "3s",
            "--listen",
            &listen,
            "--acme-domain",
            "localhost",
            "--acme-domain",
            "nothing-here.invalid",
            "--acme-state-dir",
            state.to_str().unwrap(),
        ],
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(out.code, Some(1), "{}\n{}", out.stdout, out.stderr);
    let dns = out.finding("ok   acme dns localhost:");
    assert!(dns.contains("127.0.0.1"), "{dns}");
    let bad = out.finding("FAIL acme dns nothing-here.invalid:");
    assert!(
        bad.contains("does not resolve") && bad.contains("A (and AAAA) record"),
        "{bad}"
    );
    let port = out.finding("warn acme tls-alpn-01 port:");
    assert!(port.contains("port 443"), "{port}");
    out.finding("ok   acme tls-alpn-01 port:");
    let stored = out.finding("warn acme certificate:");
    assert!(
        stored.contains("does not cover nothing-here.invalid"),
        "{stored}"
    );

    // Only the name it covers: valid, and when it renews.
    let out = run_shunt(
        &[
            "doctor",
            "--timeout",
            "3s",
            "--listen",
            &listen,
            "--acme-domain",
            "localhost",
            "--acme-state-dir",
            state.to_str().unwrap(),
        ],
        Duration::from_secs(30),
    )
    .await;
    let stored = out.finding("ok   acme certificate:");
    assert!(
        stored.contains("valid until") && stored.contains("renews around"),
        "{stored}"
    );
}
