//! PROXY headers written by hand on raw sockets.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{GET, SIG, refused, seen_client, send, v1, v2, wait_refused};
use crate::support::raw::connect_from;
use crate::support::{Shunt, echo_backend, shunt};

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// shunt with `--proxy-protocol VERSIONS --trusted-proxy 127.0.0.1` and `extra` flags.
async fn behind(versions: &str, extra: &[&str]) -> (crate::support::EchoBackend, Shunt) {
    let backend = echo_backend().spawn().await;
    let shunt = shunt()
        .direct(backend.url())
        .arg("--proxy-protocol", versions)
        .arg("--trusted-proxy", "127.0.0.1")
        .flags(extra)
        .start_ready()
        .await;
    (backend, shunt)
}

#[tokio::test]
async fn v1_and_v2_headers_arriving_a_byte_at_a_time_name_the_client() {
    let (_b, s) = behind("any", &[]).await;
    let dst = s.addr();
    let a = send(
        dst,
        "127.0.0.1",
        &v1(addr("203.0.113.7:5555"), dst),
        true,
        GET,
    )
    .await;
    assert_eq!(
        seen_client(&a),
        ("203.0.113.7".into(), "203.0.113.7".into())
    );
    // With a TLV after the addresses (skipped).
    let tlv = [0x04, 0x00, 0x02, 0xAB, 0xCD];
    let a = send(
        dst,
        "127.0.0.1",
        &v2(addr("198.51.100.9:1"), dst, &tlv),
        true,
        GET,
    )
    .await;
    assert_eq!(
        seen_client(&a),
        ("198.51.100.9".into(), "198.51.100.9".into())
    );
}

#[tokio::test]
async fn a_v2_header_carrying_ipv6_works_on_an_ipv4_listener() {
    let (_b, s) = behind("v2", &[]).await;
    let h = v2(addr("[2001:db8::7]:443"), addr("[2001:db8::1]:8443"), &[]);
    let a = send(s.addr(), "127.0.0.1", &h, false, GET).await;
    assert_eq!(seen_client(&a).0, "2001:db8::7");
}

#[tokio::test]
async fn allow_ip_judges_the_address_the_header_carries() {
    let (_b, s) = behind("any", &["--allow-ip", "203.0.113.0/24"]).await;
    let dst = s.addr();
    // The balancer (127.0.0.1) is not in allow_ip and needs not be.
    let ok = send(
        dst,
        "127.0.0.1",
        &v1(addr("203.0.113.7:1"), dst),
        false,
        GET,
    )
    .await;
    assert_eq!(seen_client(&ok).0, "203.0.113.7");
    let no = send(
        dst,
        "127.0.0.1",
        &v1(addr("198.51.100.9:1"), dst),
        false,
        GET,
    )
    .await;
    assert_eq!(no.status, Some(403), "{}", no.text);
    wait_refused(&s, "ip", 1).await;
}

#[tokio::test]
async fn a_v2_local_command_is_served_as_the_balancer() {
    let (_b, s) = behind("v2", &[]).await;
    let mut local = SIG.to_vec();
    local.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
    let a = send(s.addr(), "127.0.0.1", &local, true, GET).await;
    assert_eq!(seen_client(&a).0, "127.0.0.1");
}

#[tokio::test]
async fn broken_headers_close_the_connection_without_an_answer() {
    let (_b, s) = behind("any", &[]).await;
    let dst = s.addr();
    // A v1 line past 107 bytes.
    let mut long = b"PROXY TCP4 203.0.113.7 127.0.0.1 1 2".to_vec();
    long.resize(150, b' ');
    long.extend_from_slice(b"\r\n");
    let a = send(dst, "127.0.0.1", &long, false, GET).await;
    assert_eq!(a.status, None, "{}", a.text);
    // A v2 length past 216.
    let mut too_long = SIG.to_vec();
    too_long.extend_from_slice(&[0x21, 0x11, 0x01, 0x00]);
    too_long.extend_from_slice(&[0; 256]);
    let a = send(dst, "127.0.0.1", &too_long, false, GET).await;
    assert_eq!(a.status, None, "{}", a.text);
    wait_refused(&s, "proxy_malformed", 2).await;
    // A wrong v2 signature.
    let mut wrong = v2(addr("203.0.113.7:1"), dst, &[]);
    wrong[6] = b'X';
    let a = send(dst, "127.0.0.1", &wrong, false, GET).await;
    assert_eq!(a.status, None, "{}", a.text);
    // No header at all from a trusted source.
    let a = send(dst, "127.0.0.1", b"", false, GET).await;
    assert_eq!(a.status, None, "{}", a.text);
    wait_refused(&s, "proxy_missing", 2).await;
    // A v1 header to a v2-only listener is refused too.
    let (_b2, only_v2) = behind("v2", &[]).await;
    let a = send(
        only_v2.addr(),
        "127.0.0.1",
        &v1(addr("203.0.113.7:1"), dst),
        false,
        GET,
    )
    .await;
    assert_eq!(a.status, None, "{}", a.text);
    wait_refused(&only_v2, "proxy_malformed", 1).await;
}

#[tokio::test]
async fn an_untrusted_source_is_refused_without_being_read() {
    let (_b, s) = behind("any", &["--proxy-protocol-optional-from", "127.0.0.4"]).await;
    let dst = s.addr();
    let h = v1(addr("203.0.113.7:1"), dst);
    let a = send(dst, "127.0.0.3", &h, false, GET).await;
    assert_eq!(a.status, None, "{}", a.text);
    wait_refused(&s, "proxy_untrusted", 1).await;
    // Listed in proxy_protocol_optional_from: served plain, as itself.
    let a = send(dst, "127.0.0.4", b"", false, GET).await;
    assert_eq!(seen_client(&a).0, "127.0.0.4");
    assert_eq!(refused(&s, "proxy_missing").await, 0);
}

#[tokio::test]
async fn a_header_that_never_finishes_is_closed_at_the_header_timeout() {
    let (_b, s) = behind("any", &["--header-timeout", "1s"]).await;
    let started = Instant::now();
    let mut c = connect_from(s.addr(), "127.0.0.1").await;
    c.write_all(b"PROXY TCP4 203.0.113.7 ").await.unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut buf)).await;
    let took = started.elapsed();
    assert!(read.is_ok(), "closed within 5 s");
    assert!(buf.is_empty(), "no answer: {buf:?}");
    assert!(took >= Duration::from_millis(900), "closed after {took:?}");
    wait_refused(&s, "proxy_malformed", 1).await;
}

/// 500 connections from a trusted source without a header: a line a
/// second at most, and the counts add up to every refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_missing_headers_take_a_line_a_second() {
    const MESSAGE: &str = "a trusted proxy sent no PROXY protocol header";
    let backend = echo_backend().spawn().await;
    let served = shunt()
        .flags(&["--direct", &backend.url()])
        .flags(&["--proxy-protocol", "v2", "--trusted-proxy", "127.0.0.1"])
        .spawn_process_ready()
        .await;
    let started = Instant::now();
    for _ in 0..500 {
        let mut c = tokio::net::TcpStream::connect(served.addr()).await.unwrap();
        let _ = c.write_all(GET).await;
        let mut sink = [0u8; 512];
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while c.read(&mut sink).await.is_ok_and(|n| n > 0) {}
        })
        .await;
    }
    let secs = started.elapsed().as_secs() + 1;
    let accounted = |log: &str| {
        let lines: Vec<&str> = log.lines().filter(|l| l.contains(MESSAGE)).collect();
        let counted: u64 = lines
            .iter()
            .map(|l| match l.split("suppressed=").nth(1) {
                Some(rest) => rest
                    .split(|c: char| !c.is_ascii_digit())
                    .next()
                    .and_then(|n| n.parse().ok())
                    .expect("a count after suppressed="),
                None => 1,
            })
            .sum();
        (lines.len() as u64, counted)
    };
    let complete = crate::support::eventually(Duration::from_secs(10), async || {
        accounted(&served.log()).1 >= 500
    })
    .await;
    let log = served.log();
    let (lines, counted) = accounted(&log);
    assert!(
        complete && counted == 500,
        "{counted} of 500 accounted for:\n{log}"
    );
    assert!(
        lines <= secs + 2,
        "{lines} lines for 500 refusals in {secs}s:\n{log}"
    );
    assert!(log.contains("reason=proxy_missing"), "{log}");
}

/// The reverse of the case above: a v2 header carrying IPv4 to a listener
/// on `[::1]`, from a balancer on `::1`.
#[tokio::test]
async fn a_v2_header_carrying_ipv4_works_on_an_ipv6_listener() {
    if std::net::TcpListener::bind((std::net::Ipv6Addr::LOCALHOST, 0)).is_err() {
        crate::support::require::missing(
            crate::support::Part::Ipv6,
            "no IPv6 loopback (::1) to listen on",
        );
        return;
    }
    let backend = echo_backend().spawn().await;
    let s = shunt()
        .direct(backend.url())
        .arg("--listen", "[::1]:0")
        .arg("--proxy-protocol", "v2")
        .arg("--trusted-proxy", "::1")
        .start_ready()
        .await;
    let mut c = tokio::net::TcpStream::connect(s.addr()).await.unwrap();
    c.write_all(&v2(addr("203.0.113.7:4000"), addr("192.0.2.1:443"), &[]))
        .await
        .unwrap();
    c.write_all(GET).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut buf)).await;
    let a = crate::support::raw::parse_answer(&buf);
    assert_eq!(
        seen_client(&a),
        ("203.0.113.7".into(), "203.0.113.7".into())
    );
}

/// A reload turns the PROXY protocol on (and a bad one is refused, the old
/// settings kept): the next connection is read with the new settings.
#[tokio::test]
async fn a_reload_turns_the_proxy_protocol_on() {
    let backend = echo_backend().spawn().await;
    let plain = format!("[upstreams.direct]\nurl = \"{}\"\n", backend.url());
    let file = crate::support::TempFile::new("pp-reload.toml", &plain);
    let s = shunt()
        .arg("--config", file.path())
        .flag("--no-watch")
        .start_ready()
        .await;
    let a = send(s.addr(), "127.0.0.1", b"", false, GET).await;
    assert_eq!(seen_client(&a).0, "127.0.0.1");
    // Without trusted_proxies: refused, nothing changes.
    crate::support::TempFile::write(&file.0, &format!("proxy_protocol = \"v2\"\n{plain}"));
    assert!(
        !s.reload().await,
        "proxy_protocol without trusted_proxies must not load"
    );
    let a = send(s.addr(), "127.0.0.1", b"", false, GET).await;
    assert_eq!(seen_client(&a).0, "127.0.0.1");
    crate::support::TempFile::write(
        &file.0,
        &format!("proxy_protocol = \"v2\"\ntrusted_proxies = [\"127.0.0.1\"]\n{plain}"),
    );
    assert!(s.reload().await);
    let a = send(s.addr(), "127.0.0.1", b"", false, GET).await;
    assert_eq!(a.status, None, "no header after the reload: {}", a.text);
    let h = v2(addr("203.0.113.7:1"), s.addr(), &[]);
    let a = send(s.addr(), "127.0.0.1", &h, false, GET).await;
    assert_eq!(seen_client(&a).0, "203.0.113.7");
}
