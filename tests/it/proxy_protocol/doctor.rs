//! `shunt doctor` behind a PROXY protocol balancer: it reports the setting,
//! warns when trusted sources connected without a header, and reaches
//! shunt end to end by sending a `LOCAL` header itself.

use std::time::Duration;

use super::{GET, send, wait_refused};
use crate::support::bin::run_shunt;
use crate::support::{echo_backend, shunt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_reports_the_setting_and_a_balancer_sending_no_header() {
    let backend = echo_backend().spawn().await;
    let proxy = shunt()
        .direct(backend.url())
        .route("/frontend-audio=direct")
        .arg("--proxy-protocol", "v2")
        .arg("--trusted-proxy", "127.0.0.1")
        .start_ready()
        .await;
    // A balancer that does not send the header.
    for _ in 0..2 {
        send(proxy.addr(), "127.0.0.1", b"", false, GET).await;
    }
    wait_refused(&proxy, "proxy_missing", 2).await;
    let (listen, admin, direct) = (
        proxy.addr().to_string(),
        proxy.admin_addr().to_string(),
        backend.url(),
    );
    let args = [
        "doctor",
        "--timeout",
        "3s",
        "--listen",
        &listen,
        "--admin",
        &admin,
        "--direct",
        &direct,
        "--route",
        "/frontend-audio=direct",
        "--proxy-protocol",
        "v2",
        "--trusted-proxy",
        "127.0.0.1",
    ];
    let out = run_shunt(&args, Duration::from_secs(30)).await;
    let setting = out.finding("ok   load balancer:");
    assert!(
        setting.contains("PROXY protocol v2 required from trusted_proxies [127.0.0.1/32]"),
        "{setting}"
    );
    let missing = out.finding("warn load balancer:");
    assert!(
        missing.contains("2 connection(s) from trusted_proxies came without a PROXY header"),
        "{missing}"
    );
    assert!(missing.contains("proxy_protocol_v2.enabled"), "{missing}");
    // End to end through shunt, with a LOCAL header the doctor sent.
    out.finding("ok   end to end:");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_warns_about_trust_forwarded_for_without_trusted_proxies() {
    let backend = echo_backend().spawn().await;
    let direct = backend.url();
    let args = [
        "doctor",
        "--timeout",
        "3s",
        "--listen",
        "0.0.0.0:0",
        "--admin",
        "off",
        "--direct",
        &direct,
        "--trust-forwarded-for",
    ];
    let out = run_shunt(&args, Duration::from_secs(30)).await;
    let warn = out.finding("warn load balancer:");
    assert!(
        warn.contains("trust_forwarded_for is on but trusted_proxies is empty")
            && warn.contains("reachable from outside")
            && warn.contains("--trusted-proxy"),
        "{warn}"
    );
}
