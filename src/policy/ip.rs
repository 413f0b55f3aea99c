//! IP allow/deny lists: CIDR blocks matched against the downstream address.
//!
//! The global lists are checked at accept, before a byte of the request is
//! read (and before a TLS handshake); a route's own lists are checked once the
//! request has been routed. Deny wins over allow; an empty allow list allows
//! every address not denied. IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`, as
//! seen by a listener on `[::]`) are matched as the IPv4 address they carry.
//!
//! Deny wins so that an exception can be carved out of an allowed range
//! (`--allow-ip 10.0.0.0/8 --deny-ip 10.0.5.0/24`), which is how firewall
//! rules are usually written; the refusal says which list and entry matched.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A CIDR block: `10.0.0.0/8`, `2001:db8::/32`, or a bare address (`/32`, `/128`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    /// The network address, host bits cleared.
    addr: IpAddr,
    prefix: u8,
}

/// Why a CIDR block was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IpNetError {
    /// Not an IPv4 or IPv6 address.
    #[error("not an IP address")]
    Address,
    /// A prefix length longer than the address.
    #[error("prefix length must be a number from 0 to {max}")]
    Prefix {
        /// The longest prefix for this address family (32 or 128).
        max: u8,
    },
}

impl IpNet {
    /// Parse `ADDR` or `ADDR/PREFIX`; host bits are cleared (`10.1.2.3/8` is `10.0.0.0/8`).
    pub fn parse(text: &str) -> Result<IpNet, IpNetError> {
        let text = text.trim();
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let addr: IpAddr = addr
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .map_err(|_| IpNetError::Address)?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or(IpNetError::Prefix { max })?,
        };
        Ok(IpNet {
            addr: mask(addr, prefix),
            prefix,
        })
    }

    /// Whether `ip` lies in this block.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(_), ip @ IpAddr::V4(_)) | (IpAddr::V6(_), ip @ IpAddr::V6(_)) => {
                mask(ip, self.prefix) == self.addr
            }
            _ => false,
        }
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// `ip` with every bit past `prefix` cleared: both sides of a range check
/// are compared masked.
fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let m = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(bits & m))
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let m = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(bits & m))
        }
    }
}

/// An allow list and a deny list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpRules {
    /// If not empty, only these may connect.
    pub allow: Vec<IpNet>,
    /// These may never connect; checked before `allow`.
    pub deny: Vec<IpNet>,
}

/// Which rule refused an address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpRefusal {
    /// The address is in this denied range.
    #[error("the address is in deny_ip {0}")]
    Denied(IpNet),
    /// There is an allow list and the address is not in it.
    #[error("the address is not in the allow_ip list")]
    NotAllowed,
}

impl IpRules {
    /// Whether there is no rule at all.
    pub fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }

    /// Deny wins; then, if there is an allow list, the address must be in it.
    pub fn check(&self, ip: IpAddr) -> Result<(), IpRefusal> {
        if let Some(net) = self.deny.iter().find(|n| n.contains(ip)) {
            return Err(IpRefusal::Denied(*net));
        }
        if !self.allow.is_empty() && !self.allow.iter().any(|n| n.contains(ip)) {
            return Err(IpRefusal::NotAllowed);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_and_masks() {
        assert_eq!(
            IpNet::parse("10.1.2.3/8").unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(
            IpNet::parse("127.0.0.2").unwrap().to_string(),
            "127.0.0.2/32"
        );
        assert_eq!(
            IpNet::parse("2001:db8::1/32").unwrap().to_string(),
            "2001:db8::/32"
        );
        assert_eq!(IpNet::parse("[::1]").unwrap().to_string(), "::1/128");
        assert_eq!(IpNet::parse("0.0.0.0/0").unwrap().to_string(), "0.0.0.0/0");
        assert_eq!(IpNet::parse("::/0").unwrap().to_string(), "::/0");
        assert_eq!(
            IpNet::parse("10.0.0.0/33"),
            Err(IpNetError::Prefix { max: 32 })
        );
        assert_eq!(IpNet::parse("::/129"), Err(IpNetError::Prefix { max: 128 }));
        assert_eq!(IpNet::parse("10.0.0/8"), Err(IpNetError::Address));
        assert_eq!(IpNet::parse("host.example"), Err(IpNetError::Address));
        assert!(IpNet::parse("10.0.0.0/x").is_err());
    }

    #[test]
    fn contains() {
        let n = IpNet::parse("127.0.0.0/30").unwrap();
        assert!(n.contains(ip("127.0.0.1")));
        assert!(n.contains(ip("127.0.0.3")));
        assert!(!n.contains(ip("127.0.0.4")));
        assert!(!n.contains(ip("::1")));
        // An IPv4-mapped IPv6 peer matches IPv4 rules.
        assert!(n.contains(ip("::ffff:127.0.0.2")));
        let all = IpNet::parse("0.0.0.0/0").unwrap();
        assert!(all.contains(ip("203.0.113.9")));
        assert!(!all.contains(ip("2001:db8::1")));
        let v6 = IpNet::parse("2001:db8::/32").unwrap();
        assert!(v6.contains(ip("2001:db8:ffff::1")));
        assert!(!v6.contains(ip("2001:db9::1")));
        assert!(IpNet::parse("::/0").unwrap().contains(ip("::1")));
    }

    #[test]
    fn deny_wins_and_allow_restricts() {
        let rules = IpRules {
            allow: vec![IpNet::parse("127.0.0.0/8").unwrap()],
            deny: vec![IpNet::parse("127.0.0.3").unwrap()],
        };
        assert_eq!(rules.check(ip("127.0.0.2")), Ok(()));
        assert_eq!(
            rules.check(ip("127.0.0.3")),
            Err(IpRefusal::Denied(IpNet::parse("127.0.0.3").unwrap()))
        );
        assert_eq!(rules.check(ip("10.0.0.1")), Err(IpRefusal::NotAllowed));
        let open = IpRules::default();
        assert!(open.is_empty());
        assert_eq!(open.check(ip("10.0.0.1")), Ok(()));
        let deny_only = IpRules {
            allow: vec![],
            deny: vec![IpNet::parse("10.0.0.0/8").unwrap()],
        };
        assert!(deny_only.check(ip("10.9.9.9")).is_err());
        assert!(deny_only.check(ip("11.0.0.1")).is_ok());
    }
}
