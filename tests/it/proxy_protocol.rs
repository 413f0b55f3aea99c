//! PROXY protocol v1/v2 on the listener, trusted X-Forwarded-For, PROXY towards upstreams (issue 21).
//!
//! - `raw`: headers written by hand on raw sockets (in pieces, too long,
//!   wrong signature, LOCAL, untrusted source, missing, unfinished, IPv6
//!   to an IPv4 listener), and the log flood of missing headers;
//! - `forwarded_for`: the right-most untrusted hop of `X-Forwarded-For`;
//! - `balancers`: HAProxy (v2 and v1, TLS passed through) and nginx's
//!   stream module in front of shunt, clients from 127.0.0.2 and 127.0.0.3;
//! - `upstream`: `send_proxy_protocol` towards an nginx that reads it.

mod balancers;
mod doctor;
mod forwarded_for;
mod raw;
mod upstream;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::raw::{Answer, connect_from, parse_answer};
use crate::support::{IO_TIMEOUT, Shunt};

/// A v1 line for `src` → `dst` (written by hand, not by shunt's encoder).
pub(crate) fn v1(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let proto = if src.is_ipv4() { "TCP4" } else { "TCP6" };
    format!(
        "PROXY {proto} {} {} {} {}\r\n",
        src.ip(),
        dst.ip(),
        src.port(),
        dst.port()
    )
    .into_bytes()
}

/// The v2 signature.
pub(crate) const SIG: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// A v2 PROXY command for `src` → `dst` (same family), with `tlv` appended.
pub(crate) fn v2(src: SocketAddr, dst: SocketAddr, tlv: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    let family = match (src, dst) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            body.extend_from_slice(&s.ip().octets());
            body.extend_from_slice(&d.ip().octets());
            0x11
        }
        (SocketAddr::V6(s), SocketAddr::V6(d)) => {
            body.extend_from_slice(&s.ip().octets());
            body.extend_from_slice(&d.ip().octets());
            0x21
        }
        _ => panic!("one family"),
    };
    body.extend_from_slice(&src.port().to_be_bytes());
    body.extend_from_slice(&dst.port().to_be_bytes());
    body.extend_from_slice(tlv);
    let mut out = SIG.to_vec();
    out.extend_from_slice(&[0x21, family]);
    out.extend_from_slice(&u16::try_from(body.len()).unwrap().to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// `GET /who` closing the connection.
pub(crate) const GET: &[u8] = b"GET /who HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";

/// From `from`, send `header` (one byte per write when `bytewise`), then
/// `request`; read until the peer closes.
pub(crate) async fn send(
    addr: SocketAddr,
    from: &str,
    header: &[u8],
    bytewise: bool,
    request: &[u8],
) -> Answer {
    let mut s = connect_from(addr, from).await;
    if bytewise {
        for b in header {
            let _ = s.write_all(std::slice::from_ref(b)).await;
            let _ = s.flush().await;
        }
    } else {
        let _ = s.write_all(header).await;
    }
    let _ = s.write_all(request).await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(IO_TIMEOUT, s.read_to_end(&mut buf)).await;
    parse_answer(&buf)
}

/// The echo backend's `x-real-ip` and `x-forwarded-for` for an answered request.
pub(crate) fn seen_client(answer: &Answer) -> (String, String) {
    assert_eq!(answer.status, Some(200), "{}", answer.text);
    let d: serde_json::Value = serde_json::from_str(answer.body())
        .unwrap_or_else(|e| panic!("JSON body ({e}): {}", answer.text));
    let one = |name: &str| crate::support::seen_header(&d, name).join(", ");
    (one("x-real-ip"), one("x-forwarded-for"))
}

/// `shunt_connections_refused_total{reason="REASON"}` from `/metrics`.
pub(crate) async fn refused(shunt: &Shunt, reason: &str) -> u64 {
    let (_, text) = shunt.admin_get("/metrics").await.expect("/metrics");
    let needle = format!("shunt_connections_refused_total{{reason=\"{reason}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&needle))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {needle} in /metrics:\n{text}"))
}

/// Waits (bounded) until the refusal counter of `reason` reaches `n`.
pub(crate) async fn wait_refused(shunt: &Shunt, reason: &str, n: u64) {
    let reached = crate::support::eventually(Duration::from_secs(5), async || {
        refused(shunt, reason).await >= n
    })
    .await;
    assert!(
        reached,
        "{reason}: {} refusals, expected {n}",
        refused(shunt, reason).await
    );
}
