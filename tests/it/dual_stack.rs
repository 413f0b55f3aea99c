//! `listen = "[::]:PORT"` is dual-stack: shunt turns `IPV6_V6ONLY` off, so
//! one listener takes IPv4 and IPv6 clients, and the IP lists see an IPv4
//! client as its IPv4 address (not `::ffff:a.b.c.d`).

use crate::support;
use crate::support::Part;

use std::net::{Ipv6Addr, SocketAddr};

use support::{EchoBackend, Shunt, echo_backend, raw_request, shunt, ws_connect};

/// Whether this machine has an IPv6 loopback to test with.
fn has_ipv6_loopback() -> bool {
    std::net::TcpListener::bind((Ipv6Addr::LOCALHOST, 0)).is_ok()
}

/// The same port on `ip`.
fn on(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

/// shunt on `[::]:0` (plus `extra` flags) in front of an echo backend, ready;
/// `None`, after saying why, when the machine has no IPv6 loopback.
async fn dual_stack_shunt(extra: &[(&str, &str)]) -> Option<(EchoBackend, Shunt)> {
    if !has_ipv6_loopback() {
        support::require::missing(
            Part::Ipv6,
            "this machine has no IPv6 loopback (::1), so [::] cannot be bound",
        );
        return None;
    }
    let backend = echo_backend().spawn().await;
    let mut builder = shunt().direct(backend.url()).arg("--listen", "[::]:0");
    for (flag, value) in extra {
        builder = builder.arg(flag, *value);
    }
    let proxy = builder.start_ready().await;
    Some((backend, proxy))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_on_the_ipv6_wildcard_takes_ipv4_and_ipv6() {
    let Some((_backend, proxy)) = dual_stack_shunt(&[]).await else {
        return;
    };
    let port = proxy.addr().port();
    assert!(proxy.addr().is_ipv6(), "listening on {}", proxy.addr());
    for ip in ["127.0.0.1", "::1"] {
        let (_ws, response) = ws_connect(on(ip, port), "/frontend-audio", &[])
            .await
            .unwrap_or_else(|e| panic!("WebSocket call to [::]:{port} via {ip}: {e}"));
        assert_eq!(
            support::ws::header(&response, "x-shunt-route"),
            "direct",
            "via {ip}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_lists_see_ipv4_clients_of_a_dual_stack_listener_as_ipv4() {
    let Some((_backend, proxy)) = dual_stack_shunt(&[("--deny-ip", "127.0.0.1/32")]).await else {
        return;
    };
    let port = proxy.addr().port();
    let denied = raw_request(on("127.0.0.1", port), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("a refusal is an HTTP answer");
    assert_eq!(
        denied.status, 403,
        "127.0.0.1 is denied even when it arrives as ::ffff:127.0.0.1"
    );
    ws_connect(on("::1", port), "/frontend-audio", &[])
        .await
        .expect("::1 is not denied");
}

/// With `net.ipv6.bindv6only = 1` (some hardened hosts set it), a plain
/// `[::]` socket would be IPv6-only. Runs shunt in a network namespace of its
/// own with that setting; skipped (saying why) where namespaces cannot be made.
#[test]
fn dual_stack_does_not_depend_on_bindv6only() {
    let usable = std::process::Command::new("unshare")
        .args(["-n", "true"])
        .status()
        .is_ok_and(|s| s.success());
    if !has_ipv6_loopback() {
        support::require::missing(Part::Ipv6, "no IPv6 loopback (::1)");
        return;
    }
    if !usable {
        support::require::missing(
            Part::Netns,
            "cannot create a network namespace here (unshare -n needs root)",
        );
        return;
    }
    let script = r#"
        set -u
        ip link set lo up || exit 3
        echo 1 > /proc/sys/net/ipv6/bindv6only || exit 3
        "$SHUNT" --listen '[::]:8080' --admin off --direct http://127.0.0.1:9 >/dev/null 2>&1 &
        pid=$!
        for i in $(seq 100); do
            (exec 3<>/dev/tcp/::1/8080) 2>/dev/null && { echo ipv6-ok; break; }
            sleep 0.1
        done
        (exec 3<>/dev/tcp/127.0.0.1/8080) 2>/dev/null && echo ipv4-ok
        kill "$pid"
        wait "$pid"
    "#;
    let output = std::process::Command::new("timeout")
        .args(["30", "unshare", "-n", "bash", "-c", script])
        .env("SHUNT", env!("CARGO_BIN_EXE_shunt"))
        .output()
        .expect("run unshare");
    let stdout = String::from_utf8_lossy(&output.stdout);
    if output.status.code() == Some(3) {
        support::require::missing(
            Part::Netns,
            format!(
                "cannot configure the namespace's loopback or bindv6only: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        );
        return;
    }
    assert!(
        stdout.contains("ipv6-ok"),
        "shunt did not listen on [::]: {stdout}"
    );
    assert!(
        stdout.contains("ipv4-ok"),
        "[::] refused IPv4 with bindv6only=1: {stdout}"
    );
}
