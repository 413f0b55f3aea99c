//! ACME end to end against Debian's pebble: TLS-ALPN-01 on the listener,
//! HTTP-01 on `--http-listen`, a restart that reuses the stored certificate,
//! a rejected challenge, and a renewal while pebble is down that swaps the
//! certificate under a live call once pebble is back.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use crate::support::pebble::Pebble;
use crate::support::tls::{TestPki, wss_connect};
use crate::support::ws::{recv, send_text};
use crate::support::{self, eventually, free_port, shunt};

/// How long an order may take against a local pebble.
const ISSUE_LIMIT: Duration = Duration::from_secs(40);
const DOMAIN: &str = "calls.example.com";

/// The shunt flags of an ACME setup against `pebble`, on fixed ports (pebble
/// validates on them).
fn acme_shunt(
    pebble: &Pebble,
    backend: &support::EchoBackend,
    tls_port: u16,
    state: &std::path::Path,
    domain: &str,
) -> support::shunt::ShuntBuilder {
    // Retries every few hundred ms here, not after a minute.
    ::shunt::testing::set_acme_retry_min(Duration::from_millis(300));
    shunt()
        .direct(backend.url())
        .arg("--listen", format!("127.0.0.1:{tls_port}"))
        .arg("--acme-domain", domain)
        .arg("--acme-email", "ops@example.com")
        .arg("--acme-directory", pebble.directory())
        .arg("--acme-ca-file", pebble.api_ca_file().to_str().unwrap())
        .arg("--acme-state-dir", state.to_str().unwrap())
}

/// The `source = "acme"` entry of `/status` `certificates[]`.
async fn acme_entry(proxy: &support::Shunt) -> serde_json::Value {
    let status = proxy.status().await.unwrap();
    status["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["source"] == "acme")
        .cloned()
        .unwrap_or_else(|| panic!("no acme certificate in /status: {status}"))
}

/// Waits until the ACME certificate's fingerprint is set and differs from
/// `old`; returns it.
async fn wait_issued(proxy: &support::Shunt, old: Option<&str>) -> String {
    let mut last = serde_json::Value::Null;
    let issued = eventually(ISSUE_LIMIT, async || {
        last = acme_entry(proxy).await;
        last["sha256"].as_str().is_some_and(|s| Some(s) != old)
    })
    .await;
    assert!(issued, "no new ACME certificate in {ISSUE_LIMIT:?}: {last}");
    last["sha256"].as_str().unwrap().to_owned()
}

/// A wss:// call to `addr` as `DOMAIN`, trusting `client`; asserts the echo.
async fn call(
    addr: SocketAddr,
    client: std::sync::Arc<rustls::ClientConfig>,
) -> (support::Ws, String) {
    let (mut ws, resp, fp) = wss_connect(addr, DOMAIN, "/frontend-audio", client)
        .await
        .expect("wss:// with the issued certificate");
    assert_eq!(resp.status(), 101);
    let hello = recv(&mut ws).await.unwrap();
    assert!(format!("{hello:?}").contains("hello from"), "{hello:?}");
    (ws, fp)
}

async fn echo(ws: &mut support::Ws, text: &str) {
    send_text(ws, text).await.unwrap();
    let back = recv(ws).await.unwrap();
    assert!(format!("{back:?}").contains(text), "{back:?}");
}

async fn metric(proxy: &support::Shunt, line_start: &str) -> Option<f64> {
    let text = proxy.admin_get("/metrics").await.unwrap().1;
    text.lines()
        .find_map(|l| l.strip_prefix(line_start))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn_01_issues_a_trusted_certificate_and_a_restart_reuses_it() {
    let (tls_port, http_port) = (free_port(), free_port());
    let Some(pebble) = Pebble::start(http_port, tls_port).await else {
        return;
    };
    let backend = support::echo_backend().name("acme-backend").spawn().await;
    let state = pebble.dir().join("state-alpn");
    let builder = acme_shunt(&pebble, &backend, tls_port, &state, DOMAIN);
    let proxy = builder.clone().start().await;

    let fp = wait_issued(&proxy, None).await;
    let client = pebble.client_config().await;
    let (mut ws, served) = call(proxy.addr(), client.clone()).await;
    assert_eq!(served, fp);
    echo(&mut ws, "over the issued certificate").await;
    let entry = acme_entry(&proxy).await;
    assert_eq!(entry["names"][0], DOMAIN);
    assert_eq!(entry["challenge"], "tls-alpn-01");
    assert!(entry["last_error"].is_null(), "{entry}");
    assert!(entry["renewal_at"].is_string(), "{entry}");
    assert_eq!(
        metric(&proxy, "shunt_acme_orders_total{result=\"issued\"}").await,
        Some(1.0)
    );
    let expiry = metric(
        &proxy,
        "shunt_certificate_expiry_seconds{name=\"calls.example.com\",source=\"acme\"}",
    )
    .await
    .expect("the expiry metric of the ACME certificate");
    assert!(expiry > 86400.0, "{expiry}");
    for file in ["account.json", "cert.pem", "key.pem"] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(state.join(file))
            .unwrap_or_else(|e| panic!("{file}: {e}"))
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{file}");
    }
    let orders = pebble.orders();
    assert_eq!(orders, 1, "pebble saw one order:\n{}", pebble.all_output());

    // A restart serves the stored certificate and orders nothing.
    drop(ws);
    proxy.stop().await;
    let proxy = builder.start().await;
    let (mut ws, served) = call(proxy.addr(), client).await;
    assert_eq!(
        served, fp,
        "the stored certificate is served after a restart"
    );
    echo(&mut ws, "after the restart").await;
    let entry = acme_entry(&proxy).await;
    assert_eq!(entry["sha256"], fp.as_str());
    assert_eq!(
        metric(&proxy, "shunt_acme_orders_total{result=\"issued\"}").await,
        Some(0.0)
    );
    assert_eq!(pebble.orders(), orders, "pebble saw no new order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acme_tls_1_never_reaches_http() {
    let (tls_port, http_port) = (free_port(), free_port());
    let Some(pebble) = Pebble::start(http_port, tls_port).await else {
        return;
    };
    let backend = support::echo_backend().name("acme-backend").spawn().await;
    let state = pebble.dir().join("state-alpn-only");
    let proxy = acme_shunt(&pebble, &backend, tls_port, &state, DOMAIN)
        .start()
        .await;
    wait_issued(&proxy, None).await;
    let requests = backend.requests();

    // Offering acme-tls/1 with no validation in flight: no certificate, no handshake.
    let mut config = (*::shunt::testing::unverified_config().unwrap()).clone();
    config.alpn_protocols = vec![b"acme-tls/1".to_vec()];
    let config = std::sync::Arc::new(config);
    assert!(
        crate::support::tls::tls_connect(proxy.addr(), DOMAIN, config.clone())
            .await
            .is_err(),
        "acme-tls/1 gets the challenge certificate or nothing"
    );
    // Offering acme-tls/1 beside http/1.1: still the challenge path, never HTTP.
    let mut both = (*config).clone();
    both.alpn_protocols = vec![b"http/1.1".to_vec(), b"acme-tls/1".to_vec()];
    if let Ok((mut tls, _)) =
        crate::support::tls::tls_connect(proxy.addr(), DOMAIN, std::sync::Arc::new(both)).await
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let _ = tls
            .write_all(b"GET / HTTP/1.1\r\nHost: calls.example.com\r\n\r\n")
            .await;
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(2), tls.read_to_end(&mut buf)).await;
        assert!(buf.is_empty(), "{:?}", String::from_utf8_lossy(&buf));
    }
    assert_eq!(backend.requests(), requests, "nothing reached the backend");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_01_issues_through_the_http_port_which_only_redirects() {
    let (tls_port, http_port) = (free_port(), free_port());
    let Some(pebble) = Pebble::start(http_port, tls_port).await else {
        return;
    };
    let backend = support::echo_backend().name("acme-backend").spawn().await;
    let state = pebble.dir().join("state-http");
    let proxy = acme_shunt(&pebble, &backend, tls_port, &state, DOMAIN)
        .arg("--acme-challenge", "http-01")
        .arg("--http-listen", format!("127.0.0.1:{http_port}"))
        .start()
        .await;
    wait_issued(&proxy, None).await;
    assert_eq!(acme_entry(&proxy).await["challenge"], "http-01");
    let (mut ws, _) = call(proxy.addr(), pebble.client_config().await).await;
    echo(&mut ws, "issued over http-01").await;

    let requests = backend.requests();
    let http: SocketAddr = ([127, 0, 0, 1], http_port).into();
    let resp = support::http_get(http, "/app/page?x=1", &[("host", "calls.example.com")])
        .await
        .unwrap();
    assert_eq!(resp.status, 308);
    assert_eq!(
        resp.header("location"),
        format!("https://calls.example.com:{tls_port}/app/page?x=1")
    );
    let resp = support::http_get(http, "/.well-known/acme-challenge/no-such-token", &[])
        .await
        .unwrap();
    assert_eq!(resp.status, 404);
    let resp = support::http_get(http, "/frontend-audio", &[("host", "calls.example.com:80")])
        .await
        .unwrap();
    assert_eq!(resp.status, 308);
    assert_eq!(backend.requests(), requests, "the HTTP port never forwards");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_challenge_names_the_domain_and_the_challenge() {
    let (tls_port, http_port) = (free_port(), free_port());
    let Some(pebble) = Pebble::start(http_port, tls_port).await else {
        return;
    };
    pebble.add_a("elsewhere.example.com", "127.0.0.99").await;
    let backend = support::echo_backend().name("acme-backend").spawn().await;
    let state = pebble.dir().join("state-rejected");
    let proxy = acme_shunt(&pebble, &backend, tls_port, &state, "elsewhere.example.com")
        .start()
        .await;
    let mut last = serde_json::Value::Null;
    let failed = eventually(ISSUE_LIMIT, async || {
        last = acme_entry(&proxy).await;
        last["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("rejected"))
    })
    .await;
    assert!(failed, "no rejection in /status: {last}");
    let error = last["last_error"].as_str().unwrap();
    assert!(
        error.contains("elsewhere.example.com") && error.contains("tls-alpn-01"),
        "{error}"
    );
    assert!(
        error.contains("urn:ietf:params:acme:error:"),
        "the CA's problem type: {error}"
    );
    assert!(last["sha256"].is_null());
    assert!(
        metric(&proxy, "shunt_acme_orders_total{result=\"failed\"}")
            .await
            .is_some_and(|n| n >= 1.0)
    );
}

/// Days since 1970-01-01 → (year, month, day) (Howard Hinnant's civil_from_days).
pub(super) fn civil(days: i64) -> (i32, u8, u8) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let y = (yoe + era * 400 + i64::from(m <= 2)) as i32;
    (y, m, d)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_waits_out_a_ca_outage_and_swaps_under_a_live_call() {
    let (tls_port, http_port) = (free_port(), free_port());
    let Some(mut pebble) = Pebble::start(http_port, tls_port).await else {
        return;
    };
    // A stored certificate two thirds through its life: due for renewal now.
    let old_pki = TestPki::new();
    let today = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        / 86400;
    let (cert, key) = old_pki.issue_dated(&[DOMAIN], civil(today - 80), civil(today + 10));
    let state = pebble.dir().join("state-renew");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("cert.pem"), cert).unwrap();
    std::fs::write(state.join("key.pem"), key).unwrap();

    pebble.stop().await;
    support::capture_logs();
    let backend = support::echo_backend().name("acme-backend").spawn().await;
    let proxy = acme_shunt(&pebble, &backend, tls_port, &state, DOMAIN)
        .start()
        .await;
    let old = acme_entry(&proxy).await["sha256"]
        .as_str()
        .expect("the stored certificate is served")
        .to_owned();
    // The CA is down: the error shows, the old certificate keeps serving.
    let mut last = serde_json::Value::Null;
    let failing = eventually(ISSUE_LIMIT, async || {
        last = acme_entry(&proxy).await;
        last["last_error"].is_string()
    })
    .await;
    assert!(failing, "{last}");
    let error = last["last_error"].as_str().unwrap();
    assert!(
        error.contains(DOMAIN) && error.contains("tls-alpn-01"),
        "{error}"
    );
    assert!(
        metric(&proxy, "shunt_acme_orders_total{result=\"failed\"}")
            .await
            .is_some_and(|n| n >= 1.0)
    );
    let (mut live, served) = call(proxy.addr(), old_pki.client_config()).await;
    assert_eq!(served, old);
    echo(&mut live, "before the renewal").await;
    // Retried with backoff, logged once: the same failure is one WARN line.
    let retried = eventually(ISSUE_LIMIT, async || {
        metric(&proxy, "shunt_acme_orders_total{result=\"failed\"}")
            .await
            .is_some_and(|n| n >= 3.0)
    })
    .await;
    assert!(retried, "three failed attempts while the CA is down");
    let warned = support::logs()
        .lines()
        .filter(|l| {
            l.contains("WARN")
                && l.contains("ACME order for calls.example.com (tls-alpn-01) failed")
        })
        .count();
    assert_eq!(warned, 1, "one warning for one state:\n{}", support::logs());

    // The live call keeps sending numbered messages through the swap; each
    // must come back, in order.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let talking = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && n < 100_000 {
                let text = format!("seq {n}");
                send_text(&mut live, &text).await?;
                let back = format!("{:?}", recv(&mut live).await?);
                if !back.contains(&format!("{text}\"")) {
                    return Err(format!("sent {text}, got {back}").into());
                }
                n += 1;
            }
            Ok::<_, crate::support::BoxError>((live, n))
        })
    };

    // The CA comes back: the next retry renews; new handshakes get the new one.
    pebble.restart().await;
    let new = wait_issued(&proxy, Some(&old)).await;
    let (mut fresh, served) = call(proxy.addr(), pebble.client_config().await).await;
    assert_eq!(served, new);
    echo(&mut fresh, "after the renewal").await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut live, sent) = talking
        .await
        .unwrap()
        .expect("every message of the live call came back, in order, across the swap");
    assert!(sent > 0, "the live call talked during the renewal");
    echo(&mut live, "the old call is still up").await;
    let entry = acme_entry(&proxy).await;
    assert!(entry["last_error"].is_null(), "{entry}");
    assert!(
        metric(&proxy, "shunt_acme_orders_total{result=\"issued\"}")
            .await
            .is_some_and(|n| n == 1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_and_acme_certificates_combine_by_sni() {
    let (tls_port, http_port) = (free_port(), free_port());
    let Some(pebble) = Pebble::start(http_port, tls_port).await else {
        return;
    };
    let files = TestPki::new();
    let (cert, key) = files.write("files", &["files.example.com"]);
    let backend = support::echo_backend().name("acme-backend").spawn().await;
    let state = pebble.dir().join("state-combined");
    let proxy = acme_shunt(&pebble, &backend, tls_port, &state, DOMAIN)
        .tls(&cert, &key)
        .start()
        .await;
    let acme = wait_issued(&proxy, None).await;
    let status = proxy.status().await.unwrap();
    let sources: Vec<_> = status["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["source"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(sources, ["file", "acme"]);
    let file_fp = status["certificates"][0]["sha256"]
        .as_str()
        .unwrap()
        .to_owned();

    let any = ::shunt::testing::unverified_config().unwrap();
    let tls = crate::support::tls::tls_connect;
    let (_, fp) = tls(proxy.addr(), "files.example.com", files.client_config())
        .await
        .unwrap();
    assert_eq!(fp, file_fp, "a name the file certificate covers gets it");
    let (_, fp) = tls(proxy.addr(), DOMAIN, pebble.client_config().await)
        .await
        .unwrap();
    assert_eq!(fp, acme, "the ACME name gets the ACME certificate");
    let (_, fp) = tls(proxy.addr(), "other.example.com", any.clone())
        .await
        .unwrap();
    assert_eq!(fp, acme, "another name gets the ACME certificate");
    // An IP address as the server name: rustls sends no SNI.
    let (_, fp) = tls(proxy.addr(), "127.0.0.1", any).await.unwrap();
    assert_eq!(fp, acme, "no SNI gets the ACME certificate");
}

/// The dashboard's certificate card shows the ACME certificate: its source,
/// days left, and the error of a failed order (headless Chromium).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_card_shows_acme_state() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let chromium = std::env::var_os("CHROMIUM")
        .map_or_else(|| "/usr/bin/chromium".into(), std::path::PathBuf::from);
    let missing = (!chromium.is_file() || !dir.join("node_modules/playwright-core").is_dir())
        .then(|| "chromium or tests/browser/node_modules missing (apt-get install chromium; npm ci in tests/browser)".to_owned());
    if support::require(support::Part::Browser, missing.map_or(Ok(()), Err)).is_none() {
        return;
    }
    let (tls_port, http_port) = (free_port(), free_port());
    let Some(pebble) = Pebble::start(http_port, tls_port).await else {
        return;
    };
    let backend = support::echo_backend().name("acme-backend").spawn().await;
    let proxy = acme_shunt(
        &pebble,
        &backend,
        tls_port,
        &pebble.dir().join("state-card"),
        DOMAIN,
    )
    .start()
    .await;
    wait_issued(&proxy, None).await;
    let entry = acme_entry(&proxy).await;
    let not_after = humantime::parse_rfc3339(entry["not_after"].as_str().unwrap()).unwrap();
    let days = not_after
        .duration_since(SystemTime::now())
        .unwrap()
        .as_secs()
        / 86400;
    let out_dir = std::env::temp_dir().join(format!("shunt-acme-card-{}", std::process::id()));
    let plan = serde_json::json!({
        "url": format!("http://{}/", proxy.admin_addr()),
        "out_dir": out_dir,
        "steps": [
            {"check": "certificate", "cert": DOMAIN, "days": days, "red": false,
             "source": "ACME (tls-alpn-01)", "error": "—"},
        ],
    });
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new("node")
            .arg("dashboard.js")
            .arg(plan.to_string())
            .env("CHROMIUM", &chromium)
            .current_dir(&dir)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("chromium within 60 s")
    .expect("run node");
    let _ = std::fs::remove_dir_all(&out_dir);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
