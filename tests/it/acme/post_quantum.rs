//! Post-quantum key exchange: a client offering only X25519MLKEM768 gets a
//! handshake, `/status` counts it per group, and `--tls-groups` restricts
//! what the listener accepts.

use std::sync::Arc;

use rustls::crypto::SupportedKxGroup;
use rustls::crypto::aws_lc_rs::kx_group;
use rustls::pki_types::pem::PemObject;

use crate::support::tls::{TestPki, tls_in_front, wss_connect};
use crate::support::ws::recv;

/// A client trusting `pki` that offers only `groups`.
fn client_offering(
    pki: &TestPki,
    groups: &[&'static dyn SupportedKxGroup],
) -> Arc<rustls::ClientConfig> {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.kx_groups = groups.to_vec();
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(
        rustls::pki_types::CertificateDer::pem_file_iter(pki.ca_file())
            .unwrap()
            .map(Result::unwrap),
    );
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(provider))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// A wss:// call with a client offering only `groups`; returns the group
/// the client saw negotiated.
async fn call_with(
    addr: std::net::SocketAddr,
    pki: &TestPki,
    groups: &[&'static dyn SupportedKxGroup],
) -> Result<rustls::NamedGroup, crate::support::BoxError> {
    let (tls, _) =
        crate::support::tls::tls_connect(addr, "localhost", client_offering(pki, groups)).await?;
    let group = tls
        .get_ref()
        .1
        .negotiated_key_exchange_group()
        .ok_or("no group negotiated")?
        .name();
    drop(tls);
    let (mut ws, resp, _) = wss_connect(
        addr,
        "localhost",
        "/frontend-audio",
        client_offering(pki, groups),
    )
    .await?;
    assert_eq!(resp.status(), 101);
    let hello = recv(&mut ws).await?;
    assert!(format!("{hello:?}").contains("hello from"), "{hello:?}");
    Ok(group)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_offering_only_x25519mlkem768_gets_it_and_status_counts_it() {
    let (pki, _, _backend, proxy) = tls_in_front("server", &["localhost"], "pq-backend").await;
    let proxy = proxy.start().await;

    let group = call_with(proxy.addr(), &pki, &[kx_group::X25519MLKEM768])
        .await
        .expect("a post-quantum-only client completes the handshake and the call");
    assert_eq!(group, rustls::NamedGroup::X25519MLKEM768);
    let status = proxy.status().await.unwrap();
    assert_eq!(
        status["tls"]["groups"]["X25519MLKEM768"], 2,
        "two handshakes with the hybrid group: {}",
        status["tls"]
    );
    assert_eq!(status["tls"]["groups"]["X25519"], 0);

    let group = call_with(proxy.addr(), &pki, &[kx_group::X25519])
        .await
        .expect("a client offering only X25519 still works");
    assert_eq!(group, rustls::NamedGroup::X25519);
    let status = proxy.status().await.unwrap();
    assert_eq!(status["tls"]["groups"]["X25519"], 2, "{}", status["tls"]);

    // A client offering what browsers offer (the hybrid group first, with its
    // key share, then X25519) gets the hybrid group.
    let group = call_with(
        proxy.addr(),
        &pki,
        &[
            kx_group::X25519MLKEM768,
            kx_group::X25519,
            kx_group::SECP256R1,
        ],
    )
    .await
    .unwrap();
    assert_eq!(group, rustls::NamedGroup::X25519MLKEM768);

    let metrics = proxy.admin_get("/metrics").await.unwrap().1;
    assert!(
        metrics.contains("shunt_tls_handshakes_total{group=\"X25519MLKEM768\",kind=\"full\"} 4"),
        "{metrics}"
    );

    // The debug-level access log names the group of each handshake.
    crate::support::capture_logs();
    let (tls, _) = crate::support::tls::tls_connect(
        proxy.addr(),
        "localhost",
        client_offering(&pki, &[kx_group::X25519MLKEM768]),
    )
    .await
    .unwrap();
    let peer = format!("peer={}", tls.get_ref().0.local_addr().unwrap());
    let logged = crate::support::eventually(std::time::Duration::from_secs(5), async || {
        crate::support::logs().lines().any(|l| {
            l.contains("tls handshake") && l.contains(&peer) && l.contains("X25519MLKEM768")
        })
    })
    .await;
    assert!(logged, "no `tls handshake` line for {peer} with its group");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_groups_restricts_the_listener() {
    let (pki, _, _backend, proxy) = tls_in_front("server", &["localhost"], "pq-backend").await;
    let proxy = proxy.arg("--tls-groups", "x25519,SECP384R1").start().await;
    assert!(
        call_with(proxy.addr(), &pki, &[kx_group::X25519MLKEM768])
            .await
            .is_err(),
        "X25519MLKEM768 is not offered by a listener restricted to X25519 and secp384r1"
    );
    assert_eq!(
        call_with(
            proxy.addr(),
            &pki,
            &[kx_group::SECP384R1, kx_group::X25519MLKEM768]
        )
        .await
        .unwrap(),
        rustls::NamedGroup::secp384r1
    );
}

#[test]
fn an_unknown_tls_group_is_a_clear_error() {
    let e = shunt::Config::from_args(["--tls-groups", "X25519,X448"])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("--tls-groups") && e.contains("X448") && e.contains("X25519MLKEM768"),
        "{e}"
    );
    let file = crate::support::TempFile::new("groups.toml", "tls_groups = [\"secp521r1\"]\n");
    let e = shunt::Config::from_args(["--config", file.path()])
        .unwrap_err()
        .to_string();
    assert!(e.contains("tls_groups") && e.contains("secp521r1"), "{e}");
    let file = crate::support::TempFile::new(
        "groups-ok.toml",
        "tls_groups = [\"X25519\", \"x25519mlkem768\"]\n",
    );
    shunt::Config::from_args(["--config", file.path()]).expect("known names in any case");
}

/// Headless Chromium, which offers X25519MLKEM768 first by default, opens a
/// wss:// call through shunt; `/status` shows the hybrid group negotiated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_negotiates_x25519mlkem768() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let chromium = std::env::var_os("CHROMIUM")
        .map_or_else(|| "/usr/bin/chromium".into(), std::path::PathBuf::from);
    let missing = if !chromium.is_file() {
        Some(format!(
            "{} not found (apt-get install chromium)",
            chromium.display()
        ))
    } else if !dir.join("node_modules/playwright-core").is_dir() {
        Some("tests/browser/node_modules missing (run npm ci in tests/browser)".to_owned())
    } else {
        None
    };
    if crate::support::require(crate::support::Part::Browser, missing.map_or(Ok(()), Err)).is_none()
    {
        return;
    }
    let (_pki, _, _backend, proxy) = tls_in_front("server", &["localhost"], "pq-backend").await;
    let proxy = proxy.start_ready().await;
    let port = proxy.addr().port();
    let plan = serde_json::json!({
        "url": format!("https://localhost:{port}/"),
        "ws": format!("wss://localhost:{port}/frontend-audio"),
    });
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        tokio::process::Command::new("node")
            .arg("wss.js")
            .arg(plan.to_string())
            .env("CHROMIUM", &chromium)
            .current_dir(&dir)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("chromium within 60 s")
    .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("hello from pq-backend"), "{stdout}");
    let status = proxy.status().await.unwrap();
    let groups = &status["tls"]["groups"];
    assert!(
        groups["X25519MLKEM768"].as_u64().unwrap_or(0) >= 1,
        "chromium negotiated X25519MLKEM768: {groups}"
    );
    assert_eq!(groups["X25519"], 0, "{groups}");
}
