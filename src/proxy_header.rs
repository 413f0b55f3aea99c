//! The PROXY protocol header (HAProxy's `proxy-protocol.txt`, versions 1
//! and 2): parsing what a load balancer sends first on a connection, and
//! writing it towards an upstream that wants the real client.
//!
//! The parsing core, [`parse`], is pure: it is given the bytes received so
//! far and says whether they are a complete header (and how long it is),
//! the start of one ([`Parsed::Incomplete`]), or not a header at all. It
//! never needs more than the specification's bound ([`MAX_V1`] bytes for
//! the text form, 16 + [`MAX_V2_BODY`] for the binary one), and an
//! incomplete answer means that *every* byte given belongs to the header:
//! so [`read`] can peek at what has arrived, consume exactly the header's
//! bytes, and leave the rest (a TLS ClientHello, a request head) in the
//! socket for the next stage. Bytes may arrive one at a time.
//!
//! A v2 `LOCAL` command (a balancer's own health check), the v2 `UNSPEC`
//! and `UNIX` families and v1's `PROXY UNKNOWN` all carry no client: they
//! are [`Header::Local`], and the connection is served as the balancer's
//! own. v2 TLVs are skipped without being looked at.
//!
//! A side module, below `connection` (which reads the header at accept) and
//! `dial` (which writes it towards upstreams); it imports neither.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The longest v1 header, `PROXY ...\r\n` included.
pub(crate) const MAX_V1: usize = 107;
/// The v2 signature.
const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The v2 fixed part: signature, version and command, family, length.
const V2_FIXED: usize = 16;
/// The longest v2 address block accepted (the size of the UNIX addresses).
pub(crate) const MAX_V2_BODY: usize = 216;
/// The most bytes a header may take, either version.
pub(crate) const MAX_HEADER: usize = V2_FIXED + MAX_V2_BODY;
/// The v1 prefix.
const V1_PREFIX: &[u8] = b"PROXY ";

/// Which versions a listener accepts (`proxy_protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Versions {
    /// The text form only (`"v1"`).
    V1,
    /// The binary form only (`"v2"`).
    V2,
    /// Either (`"any"`).
    Any,
}

impl Versions {
    /// `"v1"`, `"v2"` or `"any"`.
    pub(crate) fn parse(text: &str) -> Option<Versions> {
        match text.trim().to_ascii_lowercase().as_str() {
            "v1" => Some(Versions::V1),
            "v2" => Some(Versions::V2),
            "any" => Some(Versions::Any),
            _ => None,
        }
    }

    /// As written in the config.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Versions::V1 => "v1",
            Versions::V2 => "v2",
            Versions::Any => "any",
        }
    }
}

/// Which version shunt sends to an upstream (`send_proxy_protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// The text form.
    V1,
    /// The binary form.
    V2,
}

impl Version {
    /// `"v1"` or `"v2"`.
    pub(crate) fn parse(text: &str) -> Option<Version> {
        match text.trim().to_ascii_lowercase().as_str() {
            "v1" => Some(Version::V1),
            "v2" => Some(Version::V2),
            _ => None,
        }
    }

    /// As written in the config.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Version::V1 => "v1",
            Version::V2 => "v2",
        }
    }
}

/// What a complete header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// A proxied connection: the client (`source`) and the address it
    /// connected to (`destination`).
    Proxied {
        /// The client's address: who the connection is from.
        source: SocketAddr,
        /// The address the client connected to (the balancer's front).
        destination: SocketAddr,
    },
    /// No client carried (v2 `LOCAL`, `UNSPEC` or `UNIX`; v1 `UNKNOWN`):
    /// the connection is the balancer's own.
    Local,
}

/// What the bytes received so far are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// The start of a header: every byte given belongs to it, more must come.
    Incomplete,
    /// A whole header, `len` bytes long; bytes past `len` are not its.
    Complete {
        /// What it says.
        header: Header,
        /// How many bytes it took.
        len: usize,
    },
}

/// Why bytes are not a PROXY header the listener accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// Neither signature: the peer sent something else first (a request, a ClientHello).
    #[error("the connection does not start with a PROXY protocol header")]
    Missing,
    /// A version the listener is not configured for.
    #[error("a PROXY protocol {got} header, but the listener accepts {accepts} only")]
    Version {
        /// The version received.
        got: &'static str,
        /// What `proxy_protocol` allows.
        accepts: &'static str,
    },
    /// A v1 line longer than 107 bytes, or a v2 length past 216.
    #[error("the PROXY protocol header is longer than the specification allows")]
    TooLong,
    /// A v2 header with a version other than 2 or an unknown command.
    #[error("unknown PROXY protocol v2 version or command byte {0:#04x}")]
    Command(u8),
    /// A v2 header with an unknown address family or transport.
    #[error("unknown PROXY protocol v2 address family byte {0:#04x}")]
    Family(u8),
    /// A v2 address block shorter than its family's addresses.
    #[error("PROXY protocol v2 address block too short for its family")]
    ShortAddresses,
    /// A v1 line that does not read `PROXY TCP4|TCP6|UNKNOWN src dst sport dport`.
    #[error("malformed PROXY protocol v1 line")]
    V1Syntax,
    /// The peer closed the connection inside the header.
    #[error("the connection closed inside the PROXY protocol header")]
    Closed,
    /// The header did not arrive within `--header-timeout`.
    #[error("no complete PROXY protocol header within the header timeout")]
    Timeout,
    /// The socket failed while reading the header.
    #[error("reading the PROXY protocol header failed: {0}")]
    Io(std::io::ErrorKind),
}

impl HeaderError {
    /// Whether the peer sent no header at all (rather than a broken one).
    pub(crate) fn is_missing(self) -> bool {
        matches!(self, HeaderError::Missing)
    }
}

/// Parse the bytes received so far as a header of one of `versions`.
pub fn parse(buf: &[u8], versions: Versions) -> Result<Parsed, HeaderError> {
    let Some(&first) = buf.first() else {
        return Ok(Parsed::Incomplete);
    };
    let (got, v1) = match first {
        b'P' => ("v1", true),
        b'\r' => ("v2", false),
        _ => return Err(HeaderError::Missing),
    };
    let allowed = match versions {
        Versions::Any => true,
        Versions::V1 => v1,
        Versions::V2 => !v1,
    };
    let result = if v1 { parse_v1(buf) } else { parse_v2(buf) };
    // A wrong signature is "missing", whatever the configured version.
    match result {
        Err(HeaderError::Missing) => Err(HeaderError::Missing),
        _ if !allowed => Err(HeaderError::Version {
            got,
            accepts: versions.as_str(),
        }),
        other => other,
    }
}

/// Whether `buf` agrees with `sig` as far as either goes.
fn starts_like(buf: &[u8], sig: &[u8]) -> bool {
    let n = buf.len().min(sig.len());
    buf[..n] == sig[..n]
}

/// The text form: `PROXY TCP4 1.2.3.4 5.6.7.8 1234 443\r\n`.
fn parse_v1(buf: &[u8]) -> Result<Parsed, HeaderError> {
    if !starts_like(buf, V1_PREFIX) {
        return Err(HeaderError::Missing);
    }
    let window = &buf[..buf.len().min(MAX_V1)];
    let Some(lf) = window.iter().position(|&b| b == b'\n') else {
        // A CR must be the last byte seen: CRLF ends the line.
        if window[..window.len().saturating_sub(1)].contains(&b'\r') {
            return Err(HeaderError::V1Syntax);
        }
        return if buf.len() >= MAX_V1 {
            Err(HeaderError::TooLong)
        } else {
            Ok(Parsed::Incomplete)
        };
    };
    let line = window[..lf]
        .strip_suffix(b"\r")
        .ok_or(HeaderError::V1Syntax)?;
    // A CR inside the line is refused here as it is while the line is
    // incomplete, so the verdict never depends on how the bytes arrived
    // (even after UNKNOWN, whose rest is otherwise ignored).
    if line.contains(&b'\r') {
        return Err(HeaderError::V1Syntax);
    }
    let text = std::str::from_utf8(line).map_err(|_| HeaderError::V1Syntax)?;
    let header = v1_fields(text)?;
    Ok(Parsed::Complete {
        header,
        len: lf + 1,
    })
}

/// The fields of a v1 line without its CRLF.
fn v1_fields(text: &str) -> Result<Header, HeaderError> {
    let mut fields = text.split(' ');
    let (Some("PROXY"), Some(proto)) = (fields.next(), fields.next()) else {
        return Err(HeaderError::V1Syntax);
    };
    if proto == "UNKNOWN" {
        // Whatever follows UNKNOWN is to be ignored.
        return Ok(Header::Local);
    }
    let parts: Vec<&str> = fields.collect();
    let [src, dst, sport, dport] = parts.as_slice() else {
        return Err(HeaderError::V1Syntax);
    };
    let (src, dst): (IpAddr, IpAddr) = match proto {
        "TCP4" => (
            src.parse::<Ipv4Addr>()
                .map_err(|_| HeaderError::V1Syntax)?
                .into(),
            dst.parse::<Ipv4Addr>()
                .map_err(|_| HeaderError::V1Syntax)?
                .into(),
        ),
        "TCP6" => (
            src.parse::<Ipv6Addr>()
                .map_err(|_| HeaderError::V1Syntax)?
                .into(),
            dst.parse::<Ipv6Addr>()
                .map_err(|_| HeaderError::V1Syntax)?
                .into(),
        ),
        _ => return Err(HeaderError::V1Syntax),
    };
    Ok(Header::Proxied {
        source: SocketAddr::new(src, v1_port(sport)?),
        destination: SocketAddr::new(dst, v1_port(dport)?),
    })
}

/// A v1 port: decimal digits only (no sign), 0 to 65535.
fn v1_port(text: &str) -> Result<u16, HeaderError> {
    if text.is_empty() || text.len() > 5 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(HeaderError::V1Syntax);
    }
    text.parse().map_err(|_| HeaderError::V1Syntax)
}

/// The binary form: signature, version/command, family, length, addresses, TLVs.
fn parse_v2(buf: &[u8]) -> Result<Parsed, HeaderError> {
    if !starts_like(buf, &SIGNATURE) {
        return Err(HeaderError::Missing);
    }
    let command = match buf.get(12) {
        None => return Ok(Parsed::Incomplete),
        Some(&b) if b == 0x20 || b == 0x21 => b,
        Some(&b) => return Err(HeaderError::Command(b)),
    };
    let family = match buf.get(13) {
        None => return Ok(Parsed::Incomplete),
        // Family 0-3 (UNSPEC, INET, INET6, UNIX), transport 0-2 (UNSPEC, STREAM, DGRAM).
        Some(&b) if b >> 4 <= 3 && b & 0x0f <= 2 => b,
        Some(&b) => return Err(HeaderError::Family(b)),
    };
    let Some(len) = buf.get(14..16) else {
        return Ok(Parsed::Incomplete);
    };
    let body_len = usize::from(u16::from_be_bytes([len[0], len[1]]));
    if body_len > MAX_V2_BODY {
        return Err(HeaderError::TooLong);
    }
    let Some(body) = buf.get(V2_FIXED..V2_FIXED + body_len) else {
        return Ok(Parsed::Incomplete);
    };
    let header = if command == 0x20 {
        Header::Local
    } else {
        v2_addresses(family >> 4, body)?
    };
    Ok(Parsed::Complete {
        header,
        len: V2_FIXED + body_len,
    })
}

/// The addresses of a v2 `PROXY` command; what follows them (TLVs) is skipped.
fn v2_addresses(family: u8, body: &[u8]) -> Result<Header, HeaderError> {
    let (src, dst, ports): (IpAddr, IpAddr, &[u8]) = match family {
        1 => {
            let a = body.get(..12).ok_or(HeaderError::ShortAddresses)?;
            let ip = |r: std::ops::Range<usize>| {
                let b: [u8; 4] = a[r].try_into().unwrap_or_default();
                IpAddr::from(b)
            };
            (ip(0..4), ip(4..8), &a[8..12])
        }
        2 => {
            let a = body.get(..36).ok_or(HeaderError::ShortAddresses)?;
            let ip = |r: std::ops::Range<usize>| {
                let b: [u8; 16] = a[r].try_into().unwrap_or_default();
                IpAddr::from(b)
            };
            (ip(0..16), ip(16..32), &a[32..36])
        }
        // UNSPEC and UNIX carry no IP client: served as the balancer's own.
        _ => return Ok(Header::Local),
    };
    let port = |i: usize| u16::from_be_bytes([ports[i], ports[i + 1]]);
    Ok(Header::Proxied {
        source: SocketAddr::new(src, port(0)),
        destination: SocketAddr::new(dst, port(2)),
    })
}

/// Read a header from `stream`, within `timeout`, consuming exactly its
/// bytes: what follows stays in the socket.
///
/// Peeks at what has arrived; as long as the parser says "incomplete",
/// every byte peeked belongs to the header and is consumed; once it says
/// "complete", only the rest of the header is. So a peer sending one byte
/// at a time is read correctly, and no peek returns the same bytes twice.
pub(crate) async fn read(
    stream: &mut TcpStream,
    versions: Versions,
    timeout: Duration,
) -> Result<Header, HeaderError> {
    let mut buf = [0u8; MAX_HEADER];
    let mut have = 0;
    let mut peeked = [0u8; MAX_HEADER];
    let read = async {
        loop {
            let n = stream
                .peek(&mut peeked[..MAX_HEADER - have])
                .await
                .map_err(|e| HeaderError::Io(e.kind()))?;
            if n == 0 {
                return Err(if have == 0 {
                    HeaderError::Missing
                } else {
                    HeaderError::Closed
                });
            }
            buf[have..have + n].copy_from_slice(&peeked[..n]);
            match parse(&buf[..have + n], versions)? {
                Parsed::Incomplete => {
                    consume(stream, n).await?;
                    have += n;
                    if have == MAX_HEADER {
                        return Err(HeaderError::TooLong);
                    }
                }
                Parsed::Complete { header, len } => {
                    consume(stream, len - have).await?;
                    return Ok(header);
                }
            }
        }
    };
    let result = tokio::time::timeout(timeout, read).await;
    match result {
        Ok(r) => r,
        // Silence from a trusted source: a balancer not sending the header
        // to a client that waits for the server (or a port scan).
        Err(_) if have == 0 => Err(HeaderError::Missing),
        Err(_) => Err(HeaderError::Timeout),
    }
}

/// Read and drop `n` bytes already peeked (so they are in the socket).
async fn consume(stream: &mut TcpStream, n: usize) -> Result<(), HeaderError> {
    let mut sink = [0u8; MAX_HEADER];
    stream
        .read_exact(&mut sink[..n])
        .await
        .map(drop)
        .map_err(|e| HeaderError::Io(e.kind()))
}

/// The header of `version` for `addrs` (`None`: a health probe's `LOCAL` /
/// `PROXY UNKNOWN`).
pub(crate) fn encode(version: Version, addrs: Option<(SocketAddr, SocketAddr)>) -> Vec<u8> {
    match version {
        Version::V1 => encode_v1(addrs),
        Version::V2 => encode_v2(addrs),
    }
}

/// The v1 line shunt sends to an upstream for the client `source`, which
/// connected to `destination`; `None` sends `PROXY UNKNOWN` (health probes).
/// An IPv4 address beside an IPv6 one is sent IPv4-mapped, as TCP6.
pub(crate) fn encode_v1(addrs: Option<(SocketAddr, SocketAddr)>) -> Vec<u8> {
    let Some((src, dst)) = addrs else {
        return b"PROXY UNKNOWN\r\n".to_vec();
    };
    let line = match same_family(src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => format!("PROXY TCP4 {s} {d}"),
        (s, d) => format!("PROXY TCP6 {s} {d}"),
    };
    format!("{line} {} {}\r\n", src.port(), dst.port()).into_bytes()
}

/// The v2 header shunt sends to an upstream; `None` sends the `LOCAL`
/// command (health probes).
pub(crate) fn encode_v2(addrs: Option<(SocketAddr, SocketAddr)>) -> Vec<u8> {
    let mut out = SIGNATURE.to_vec();
    let Some((src, dst)) = addrs else {
        out.extend_from_slice(&[0x20, 0x00, 0, 0]);
        return out;
    };
    let ports = [src.port().to_be_bytes(), dst.port().to_be_bytes()].concat();
    match same_family(src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out.extend_from_slice(&[0x21, 0x11, 0, 12]);
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
        }
        (s, d) => {
            out.extend_from_slice(&[0x21, 0x21, 0, 36]);
            out.extend_from_slice(&v6(s).octets());
            out.extend_from_slice(&v6(d).octets());
        }
    }
    out.extend_from_slice(&ports);
    out
}

/// Both addresses in one family: IPv4 (mapped ones unmapped) when both
/// are, else both IPv6 (IPv4 mapped).
fn same_family(a: IpAddr, b: IpAddr) -> (IpAddr, IpAddr) {
    match (a.to_canonical(), b.to_canonical()) {
        (a @ IpAddr::V4(_), b @ IpAddr::V4(_)) => (a, b),
        (a, b) => (IpAddr::V6(v6(a)), IpAddr::V6(v6(b))),
    }
}

/// An address as IPv6 (IPv4-mapped if it is IPv4).
fn v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// Feed `bytes` one at a time: incomplete until the last, then complete.
    fn bytewise(bytes: &[u8], versions: Versions) -> Header {
        for n in 1..bytes.len() {
            assert_eq!(
                parse(&bytes[..n], versions),
                Ok(Parsed::Incomplete),
                "after {n} bytes"
            );
        }
        match parse(bytes, versions).unwrap() {
            Parsed::Complete { header, len } => {
                assert_eq!(len, bytes.len());
                header
            }
            Parsed::Incomplete => panic!("complete header read as incomplete"),
        }
    }

    #[test]
    fn v1_tcp4_and_tcp6_byte_by_byte() {
        let h = bytewise(
            b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 443\r\n",
            Versions::V1,
        );
        assert_eq!(
            h,
            Header::Proxied {
                source: addr("192.0.2.7:56324"),
                destination: addr("198.51.100.1:443")
            }
        );
        let h = bytewise(b"PROXY TCP6 2001:db8::1 ::1 1 65535\r\n", Versions::Any);
        assert_eq!(
            h,
            Header::Proxied {
                source: addr("[2001:db8::1]:1"),
                destination: addr("[::1]:65535")
            }
        );
        assert_eq!(bytewise(b"PROXY UNKNOWN\r\n", Versions::Any), Header::Local);
        assert_eq!(
            bytewise(b"PROXY UNKNOWN ffff::1 ::2 1 2\r\n", Versions::Any),
            Header::Local
        );
    }

    #[test]
    fn v1_stops_at_its_line() {
        let mut bytes = b"PROXY TCP4 10.0.0.1 10.0.0.2 1000 80\r\n".to_vec();
        let len = bytes.len();
        bytes.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        assert!(matches!(
            parse(&bytes, Versions::Any),
            Ok(Parsed::Complete { len: l, .. }) if l == len
        ));
    }

    #[test]
    fn v1_malformed_lines() {
        for bad in [
            &b"PROXY TCP4 10.0.0.1 10.0.0.2 1000\r\n"[..],
            b"PROXY TCP4 10.0.0.1 10.0.0.2 1000 80 9\r\n",
            b"PROXY TCP4 ::1 10.0.0.2 1000 80\r\n",
            b"PROXY TCP6 10.0.0.1 ::1 1000 80\r\n",
            b"PROXY TCP4 10.0.0.1 10.0.0.2 +1 80\r\n",
            b"PROXY TCP4 10.0.0.1 10.0.0.2 65536 80\r\n",
            b"PROXY UDP4 10.0.0.1 10.0.0.2 1 80\r\n",
            b"PROXY TCP4 10.0.0.1 10.0.0.2 1 80\n",
            b"PROXY TCP4 10.0.0.1\r10.0.0.2 1 80\r\n",
            b"PROXY  TCP4 10.0.0.1 10.0.0.2 1 80\r\n",
            // Found by the fuzz target: a CR inside an UNKNOWN line.
            b"PROXY UNKNOWN :: 553 516\r\x0e\r\n",
        ] {
            assert_eq!(
                parse(bad, Versions::Any),
                Err(HeaderError::V1Syntax),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn v1_past_the_bound() {
        let mut long = b"PROXY UNKNOWN ".to_vec();
        long.resize(MAX_V1 - 1, b'x');
        assert_eq!(parse(&long, Versions::Any), Ok(Parsed::Incomplete));
        long.push(b'x');
        assert_eq!(parse(&long, Versions::Any), Err(HeaderError::TooLong));
        // A line of exactly 107 bytes is fine.
        let mut max = b"PROXY UNKNOWN ".to_vec();
        max.resize(MAX_V1 - 2, b'x');
        max.extend_from_slice(b"\r\n");
        assert_eq!(
            parse(&max, Versions::Any),
            Ok(Parsed::Complete {
                header: Header::Local,
                len: MAX_V1
            })
        );
    }

    #[test]
    fn v2_round_trips_byte_by_byte() {
        for (s, d) in [
            ("192.0.2.7:56324", "198.51.100.1:443"),
            ("[2001:db8::7]:1", "[::1]:8443"),
        ] {
            let bytes = encode_v2(Some((addr(s), addr(d))));
            assert_eq!(
                bytewise(&bytes, Versions::V2),
                Header::Proxied {
                    source: addr(s),
                    destination: addr(d)
                }
            );
            let line = encode_v1(Some((addr(s), addr(d))));
            assert_eq!(
                bytewise(&line, Versions::V1),
                Header::Proxied {
                    source: addr(s),
                    destination: addr(d)
                }
            );
        }
        assert_eq!(bytewise(&encode_v2(None), Versions::Any), Header::Local);
        assert_eq!(bytewise(&encode_v1(None), Versions::Any), Header::Local);
    }

    #[test]
    fn mixed_families_are_sent_as_ipv6() {
        let bytes = encode_v2(Some((addr("10.0.0.1:5"), addr("[::1]:80"))));
        assert_eq!(
            bytewise(&bytes, Versions::Any),
            Header::Proxied {
                source: addr("[::ffff:10.0.0.1]:5"),
                destination: addr("[::1]:80")
            }
        );
        assert_eq!(
            encode_v1(Some((addr("[::ffff:10.0.0.1]:5"), addr("10.0.0.2:80")))),
            b"PROXY TCP4 10.0.0.1 10.0.0.2 5 80\r\n"
        );
    }

    /// A v2 header by hand: command, family, body.
    fn v2(command: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut out = SIGNATURE.to_vec();
        out.push(command);
        out.push(family);
        out.extend_from_slice(&u16::try_from(body.len()).unwrap().to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn v2_local_unspec_unix_and_tlvs() {
        // LOCAL with an address block (ignored).
        assert_eq!(
            bytewise(&v2(0x20, 0x11, &[1; 12]), Versions::V2),
            Header::Local
        );
        assert_eq!(bytewise(&v2(0x21, 0x00, &[]), Versions::V2), Header::Local);
        assert_eq!(
            bytewise(&v2(0x21, 0x31, &[7; 216]), Versions::V2),
            Header::Local
        );
        // INET with TLVs after the addresses: skipped.
        let mut body = vec![10, 0, 0, 9, 10, 0, 0, 1, 0x1f, 0x90, 0, 80];
        body.extend_from_slice(&[0x04, 0x00, 0x03, b'a', b'b', b'c', 0xEE, 0xFF]);
        assert_eq!(
            bytewise(&v2(0x21, 0x11, &body), Versions::Any),
            Header::Proxied {
                source: addr("10.0.0.9:8080"),
                destination: addr("10.0.0.1:80")
            }
        );
    }

    #[test]
    fn v2_refusals() {
        let mut wrong = v2(0x21, 0x11, &[0; 12]);
        wrong[5] = b'X';
        assert_eq!(parse(&wrong, Versions::Any), Err(HeaderError::Missing));
        assert_eq!(parse(&wrong[..6], Versions::Any), Err(HeaderError::Missing));
        assert_eq!(
            parse(&v2(0x11, 0x11, &[0; 12]), Versions::Any),
            Err(HeaderError::Command(0x11))
        );
        assert_eq!(
            parse(&v2(0x22, 0x11, &[0; 12]), Versions::Any),
            Err(HeaderError::Command(0x22))
        );
        assert_eq!(
            parse(&v2(0x21, 0x41, &[0; 12]), Versions::Any),
            Err(HeaderError::Family(0x41))
        );
        assert_eq!(
            parse(&v2(0x21, 0x11, &[0; 11]), Versions::Any),
            Err(HeaderError::ShortAddresses)
        );
        assert_eq!(
            parse(&v2(0x21, 0x21, &[0; 12]), Versions::Any),
            Err(HeaderError::ShortAddresses)
        );
        // A length past the bound is refused as soon as the length is known.
        let long = v2(0x21, 0x11, &[0; 217]);
        assert_eq!(parse(&long[..16], Versions::Any), Err(HeaderError::TooLong));
    }

    #[test]
    fn versions_and_other_protocols() {
        let v1 = b"PROXY UNKNOWN\r\n";
        let v2 = encode_v2(None);
        assert!(matches!(
            parse(v1, Versions::V2),
            Err(HeaderError::Version { got: "v1", .. })
        ));
        assert!(matches!(
            parse(&v2, Versions::V1),
            Err(HeaderError::Version { got: "v2", .. })
        ));
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\n", Versions::Any),
            Err(HeaderError::Missing)
        );
        assert_eq!(
            parse(b"PRI * HTTP", Versions::Any),
            Err(HeaderError::Missing)
        );
        // A TLS ClientHello.
        assert_eq!(
            parse(&[0x16, 3, 1], Versions::Any),
            Err(HeaderError::Missing)
        );
        assert_eq!(parse(b"", Versions::Any), Ok(Parsed::Incomplete));
    }

    proptest::proptest! {
        #[test]
        fn never_panics_and_stays_in_bounds(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            for versions in [Versions::V1, Versions::V2, Versions::Any] {
                if let Ok(Parsed::Complete { len, .. }) = parse(&bytes, versions) {
                    proptest::prop_assert!(len <= bytes.len() && len <= MAX_HEADER);
                }
                if let Ok(Parsed::Incomplete) = parse(&bytes, versions) {
                    proptest::prop_assert!(bytes.len() < MAX_HEADER);
                }
            }
        }

        #[test]
        fn an_error_stays_an_error_as_bytes_arrive(
            words in proptest::collection::vec(proptest::sample::select(vec![
                "UNKNOWN ", "TCP4 ", "1.2.3.4 ", "\r", "\n", "x",
            ]), 0..8),
            tail in proptest::collection::vec(proptest::sample::select(vec!["\r\n", "x"]), 0..3),
        ) {
            let mut bytes = format!("PROXY {}", words.concat()).into_bytes();
            if parse(&bytes, Versions::Any).is_err() {
                bytes.extend_from_slice(tail.concat().as_bytes());
                proptest::prop_assert!(parse(&bytes, Versions::Any).is_err());
            }
        }

        #[test]
        fn prefixes_of_a_header_are_incomplete(
            src in proptest::prelude::any::<std::net::SocketAddr>(),
            dst in proptest::prelude::any::<std::net::SocketAddr>(),
            tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40),
        ) {
            for bytes in [encode_v1(Some((src, dst))), encode_v2(Some((src, dst)))] {
                for n in 0..bytes.len() {
                    proptest::prop_assert_eq!(parse(&bytes[..n], Versions::Any), Ok(Parsed::Incomplete));
                }
                let mut whole = bytes.clone();
                whole.extend_from_slice(&tail);
                let complete = matches!(parse(&whole, Versions::Any), Ok(Parsed::Complete { len, .. }) if len == bytes.len());
                proptest::prop_assert!(complete);
            }
        }
    }
}
