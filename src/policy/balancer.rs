//! Load balancers in front of shunt: who may say who the client is.
//!
//! Behind an L4 balancer every connection comes from the balancer's
//! address. Two ways give shunt the browser's address back, and both are
//! believed only from `trusted_proxies`:
//!
//! - the PROXY protocol (`proxy_protocol`): a connection from a trusted
//!   proxy must start with a header ([`crate::proxy_header`]); one from
//!   any other address is refused without being read, unless it is listed
//!   in `proxy_protocol_optional_from` (served as a plain connection);
//! - `X-Forwarded-For` / `Forwarded: for=` (`trust_forwarded_for`), from
//!   an L7 balancer: the client is the right-most address of the chain that
//!   is not itself a trusted proxy ([`client_from_headers`]), never the
//!   left-most, which the client writes.

use std::net::IpAddr;

use http::HeaderMap;
use http::header::FORWARDED;

use super::ip::IpNet;
use crate::proxy_header::Versions;

/// The balancer settings of the listener.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Balancers {
    /// `proxy_protocol`: the versions a trusted proxy's header may use; `None`: off.
    pub proxy_protocol: Option<Versions>,
    /// `trusted_proxies`: the balancers' addresses.
    pub trusted: Vec<IpNet>,
    /// `proxy_protocol_optional_from`: sources served without a header.
    pub optional_from: Vec<IpNet>,
    /// `trust_forwarded_for`: take the client from forwarding headers of a trusted peer.
    pub trust_forwarded_for: bool,
}

/// What the accept stage does with a new connection from some address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Arrival {
    /// Serve it as it is: the peer is the client.
    Plain,
    /// Read a PROXY header of these versions first.
    Header(Versions),
    /// Close it without reading: PROXY protocol is on and the source may not send a header.
    Untrusted,
}

impl Balancers {
    /// Whether `ip` is one of `trusted_proxies`.
    pub(crate) fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|n| n.contains(ip))
    }

    /// How a connection from `ip` is received.
    pub(crate) fn arrival(&self, ip: IpAddr) -> Arrival {
        match self.proxy_protocol {
            None => Arrival::Plain,
            Some(v) if self.is_trusted(ip) => Arrival::Header(v),
            Some(_) if self.optional_from.iter().any(|n| n.contains(ip)) => Arrival::Plain,
            Some(_) => Arrival::Untrusted,
        }
    }

    /// Whether requests from the direct peer `ip` name their client in
    /// forwarding headers (so IP rules wait for the request head).
    pub(crate) fn forwards_for(&self, ip: IpAddr) -> bool {
        self.trust_forwarded_for && self.is_trusted(ip)
    }
}

/// The client of a request from the trusted peer `peer`: the right-most
/// address of `X-Forwarded-For` (or, without it, of `Forwarded: for=`)
/// that is not itself a trusted proxy. When every hop is trusted, the
/// left-most one; without a usable header, `peer`. An entry that is not an
/// address (`unknown`, an obfuscated name) ends the walk there: what lies
/// left of it cannot be vouched for, so that entry's right neighbour (or
/// `peer`) is the client.
pub(crate) fn client_from_headers(headers: &HeaderMap, peer: IpAddr, b: &Balancers) -> IpAddr {
    let xff: Vec<&str> = list(headers, "x-forwarded-for").collect();
    let hops: Vec<&str> = if xff.is_empty() {
        list(headers, FORWARDED.as_str())
            .filter_map(forwarded_for)
            .collect()
    } else {
        xff
    };
    let mut client = peer;
    for hop in hops.iter().rev() {
        let Some(ip) = parse_hop(hop) else {
            break;
        };
        client = ip;
        if !b.is_trusted(ip) {
            break;
        }
    }
    client
}

/// The comma-separated entries of every line of header `name`.
fn list<'a>(headers: &'a HeaderMap, name: &str) -> impl Iterator<Item = &'a str> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

/// The `for=` value of one `Forwarded` element (RFC 7239), unquoted.
fn forwarded_for(element: &str) -> Option<&str> {
    element.split(';').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("for")
            .then(|| v.trim().trim_matches('"'))
    })
}

/// An address as a hop writes it: `1.2.3.4`, `1.2.3.4:5`, `2001:db8::1`, `[2001:db8::1]:5`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Ok(sa) = hop.parse::<std::net::SocketAddr>() {
        return Some(sa.ip().to_canonical());
    }
    let bracketed = hop.strip_prefix('[')?.split(']').next()?;
    bracketed.parse::<IpAddr>().ok().map(|ip| ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn balancers(trusted: &[&str]) -> Balancers {
        Balancers {
            trusted: trusted.iter().map(|t| IpNet::parse(t).unwrap()).collect(),
            trust_forwarded_for: true,
            ..Balancers::default()
        }
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn right_most_untrusted_hop() {
        let b = balancers(&["10.0.0.0/8"]);
        let peer = ip("10.0.0.1");
        // A spoofed left-most entry is never taken.
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 203.0.113.7, 10.0.0.9")]);
        assert_eq!(client_from_headers(&h, peer, &b), ip("203.0.113.7"));
        // Several header lines are one list.
        let h = headers(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-for", "203.0.113.7"),
        ]);
        assert_eq!(client_from_headers(&h, peer, &b), ip("203.0.113.7"));
        // Every hop trusted: the left-most.
        let h = headers(&[("x-forwarded-for", "10.1.1.1, 10.2.2.2")]);
        assert_eq!(client_from_headers(&h, peer, &b), ip("10.1.1.1"));
        // Garbage stops the walk.
        let h = headers(&[("x-forwarded-for", "203.0.113.7, unknown, 10.2.2.2")]);
        assert_eq!(client_from_headers(&h, peer, &b), ip("10.2.2.2"));
        // No header: the peer.
        assert_eq!(client_from_headers(&HeaderMap::new(), peer, &b), peer);
    }

    #[test]
    fn forwarded_header() {
        let b = balancers(&["10.0.0.0/8"]);
        let h = headers(&[(
            "forwarded",
            r#"for=6.6.6.6, for="[2001:db8::7]:4711";proto=https, for=10.0.0.3"#,
        )]);
        assert_eq!(
            client_from_headers(&h, ip("10.0.0.1"), &b),
            ip("2001:db8::7")
        );
        let h = headers(&[("forwarded", "for=198.51.100.2:80;by=10.0.0.1")]);
        assert_eq!(
            client_from_headers(&h, ip("10.0.0.1"), &b),
            ip("198.51.100.2")
        );
    }

    #[test]
    fn arrivals() {
        let mut b = balancers(&["10.0.0.0/8"]);
        assert_eq!(b.arrival(ip("1.2.3.4")), Arrival::Plain);
        b.proxy_protocol = Some(Versions::Any);
        b.optional_from = vec![IpNet::parse("192.168.1.1").unwrap()];
        assert_eq!(b.arrival(ip("10.0.0.5")), Arrival::Header(Versions::Any));
        assert_eq!(
            b.arrival(ip("::ffff:10.0.0.5")),
            Arrival::Header(Versions::Any)
        );
        assert_eq!(b.arrival(ip("192.168.1.1")), Arrival::Plain);
        assert_eq!(b.arrival(ip("1.2.3.4")), Arrival::Untrusted);
        assert!(b.forwards_for(ip("10.9.9.9")));
        assert!(!b.forwards_for(ip("1.2.3.4")));
    }
}
