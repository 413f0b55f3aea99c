//! An IP address as text, written by hand: both the `X-Forwarded-For` and
//! `X-Real-IP` values of every request and the access line's `peer` need it,
//! and `Display` costs about twenty times as much for an IPv4 address.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};

/// Longest text of an IP address (an IPv4-mapped IPv6 address is 45 bytes).
pub(crate) const MAX_IP_TEXT: usize = 48;

/// `ip` written into `buf`, as the bytes written (empty if it did not fit,
/// which no address does).
pub(crate) fn ip_text(ip: IpAddr, buf: &mut [u8; MAX_IP_TEXT]) -> &[u8] {
    let v6 = match ip {
        IpAddr::V4(v4) => return ipv4_text(v4, buf),
        IpAddr::V6(v6) => v6,
    };
    let mut cursor = &mut buf[..];
    match write!(cursor, "{v6}") {
        Ok(()) => {
            let len = MAX_IP_TEXT - cursor.len();
            &buf[..len]
        }
        Err(_) => &[],
    }
}

/// `ip` in dotted decimal, written into `buf`.
fn ipv4_text(ip: Ipv4Addr, buf: &mut [u8; MAX_IP_TEXT]) -> &[u8] {
    let mut len = 0;
    for (i, octet) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            buf[len] = b'.';
            len += 1;
        }
        if octet >= 100 {
            buf[len] = b'0' + octet / 100;
            len += 1;
        }
        if octet >= 10 {
            buf[len] = b'0' + octet / 10 % 10;
            len += 1;
        }
        buf[len] = b'0' + octet % 10;
        len += 1;
    }
    &buf[..len]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_display() {
        let mut buf = [0; MAX_IP_TEXT];
        for octet in 0..=255u8 {
            for ip in [
                IpAddr::from([octet, 0, 9, 255]),
                IpAddr::from([1, octet, 100, 10]),
                IpAddr::from([99, 199, octet, 200]),
                IpAddr::from([255, 254, 10, octet]),
            ] {
                assert_eq!(ip_text(ip, &mut buf), ip.to_string().as_bytes());
            }
        }
        for ip in [
            "::1",
            "2001:db8::7",
            "::ffff:255.255.255.255",
            "fe80::1:2:3:4:5",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_text(ip, &mut buf), ip.to_string().as_bytes());
        }
    }
}
