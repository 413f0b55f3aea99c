//! `trust_forwarded_for`: the client is the right-most hop of
//! `X-Forwarded-For` (or `Forwarded: for=`) that is not a trusted proxy,
//! and only when the direct peer is one.

use super::seen_client;
use crate::support::raw::{get, raw_from};
use crate::support::{EchoBackend, Shunt, echo_backend, shunt};

/// shunt trusting the forwarding headers of 127.0.0.2 and 10.0.0.0/8,
/// admitting only 203.0.113.0/24 and 127.0.0.3.
async fn behind_l7() -> (EchoBackend, Shunt) {
    let backend = echo_backend().spawn().await;
    let shunt = shunt()
        .direct(backend.url())
        .flag("--trust-forwarded-for")
        .flags(&["--trusted-proxy", "127.0.0.2,10.0.0.0/8"])
        .flags(&["--allow-ip", "203.0.113.0/24,127.0.0.3"])
        .start_ready()
        .await;
    (backend, shunt)
}

#[tokio::test]
async fn the_right_most_untrusted_hop_is_the_client() {
    let (_b, s) = behind_l7().await;
    // A spoofed left-most entry is passed on but not believed.
    let a = raw_from(
        s.addr(),
        "127.0.0.2",
        &get("/x", &["X-Forwarded-For: 6.6.6.6, 203.0.113.7"]),
    )
    .await;
    assert_eq!(
        seen_client(&a),
        (
            "203.0.113.7".into(),
            "6.6.6.6, 203.0.113.7, 127.0.0.2".into()
        )
    );
    // Trusted hops are skipped, right to left.
    let a = raw_from(
        s.addr(),
        "127.0.0.2",
        &get("/x", &["X-Forwarded-For: 203.0.113.9, 10.1.1.1, 10.2.2.2"]),
    )
    .await;
    assert_eq!(seen_client(&a).0, "203.0.113.9");
    // `Forwarded: for=` when there is no X-Forwarded-For.
    let a = raw_from(
        s.addr(),
        "127.0.0.2",
        &get("/x", &["Forwarded: for=6.6.6.6, for=\"203.0.113.5:4711\""]),
    )
    .await;
    assert_eq!(seen_client(&a).0, "203.0.113.5");
}

#[tokio::test]
async fn ip_rules_run_on_the_forwarded_client_and_refuse_with_403() {
    let (_b, s) = behind_l7().await;
    // The client at the right is not allowed, whatever the left says.
    let a = raw_from(
        s.addr(),
        "127.0.0.2",
        &get("/x", &["X-Forwarded-For: 203.0.113.7, 6.6.6.6"]),
    )
    .await;
    assert_eq!(a.status, Some(403), "{}", a.text);
    // No header from the balancer: the balancer itself, not allowed.
    let a = raw_from(s.addr(), "127.0.0.2", &get("/x", &[])).await;
    assert_eq!(a.status, Some(403), "{}", a.text);
}

#[tokio::test]
async fn an_untrusted_peer_cannot_claim_another_address() {
    let (_b, s) = behind_l7().await;
    let a = raw_from(
        s.addr(),
        "127.0.0.3",
        &get(
            "/x",
            &["X-Forwarded-For: 203.0.113.7", "X-Real-IP: 203.0.113.7"],
        ),
    )
    .await;
    assert_eq!(
        seen_client(&a),
        ("127.0.0.3".into(), "203.0.113.7, 127.0.0.3".into())
    );
    // An untrusted, not allowed peer is refused at accept, header or not.
    let a = raw_from(
        s.addr(),
        "127.0.0.4",
        &get("/x", &["X-Forwarded-For: 203.0.113.7"]),
    )
    .await;
    assert_eq!(a.status, Some(403), "{}", a.text);
}
