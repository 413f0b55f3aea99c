//! Listening TCP sockets and the processes that hold them, read from
//! `/proc`: the sockets from `/proc/net/tcp` and `/proc/net/tcp6`
//! ([`parse_proc_net_tcp`], a pure function), their owners from the
//! `socket:[INODE]` links in `/proc/*/fd`, where permitted.
//!
//! Used where a port's holder must be named: a start that cannot bind
//! (`address in use` says by whom) and `shunt doctor`'s listener check. All
//! of it is blocking file I/O, proportional to the host's open files; async
//! callers run it on the blocking pool under a timeout.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// TCP state `LISTEN` in `/proc/net/tcp`.
const TCP_LISTEN: u8 = 0x0A;

/// One socket line of `/proc/net/tcp{,6}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProcSocket {
    /// The local address and port.
    pub local: SocketAddr,
    /// Kernel TCP state (`0x0A` = LISTEN).
    pub state: u8,
    /// The socket's inode, as in `/proc/PID/fd/N -> socket:[INODE]`.
    pub inode: u64,
}

/// What the kernel's socket table says about one socket.
impl ProcSocket {
    /// Whether the socket is listening.
    pub(crate) fn is_listening(&self) -> bool {
        self.state == TCP_LISTEN
    }
}

/// Parse the text of `/proc/net/tcp` or `/proc/net/tcp6`; lines that do not
/// parse (the header among them) are skipped.
pub(crate) fn parse_proc_net_tcp(text: &str) -> Vec<ProcSocket> {
    text.lines().filter_map(parse_line).collect()
}

/// One line of `/proc/net/tcp{,6}`: `sl: ADDR:PORT REM:PORT ST ... INODE`,
/// addresses and ports in hex; `None` for the header and anything malformed.
fn parse_line(line: &str) -> Option<ProcSocket> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    // sl local_address rem_address st tx:rx tr:tm retrnsmt uid timeout inode
    if fields.len() < 10 || !fields[0].ends_with(':') {
        return None;
    }
    let (addr, port) = fields[1].split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let ip = parse_hex_ip(addr)?;
    let state = u8::from_str_radix(fields[3], 16).ok()?;
    let inode = fields[9].parse().ok()?;
    Some(ProcSocket {
        local: SocketAddr::new(ip, port),
        state,
        inode,
    })
}

/// The kernel prints each 32-bit word of the address in host byte order.
fn parse_hex_ip(hex: &str) -> Option<IpAddr> {
    let word = |chunk: &str| u32::from_str_radix(chunk, 16).ok().map(u32::to_ne_bytes);
    match hex.len() {
        8 => Some(IpAddr::V4(Ipv4Addr::from(word(hex)?))),
        32 => {
            let mut bytes = [0u8; 16];
            for (i, out) in bytes.chunks_mut(4).enumerate() {
                out.copy_from_slice(&word(hex.get(i * 8..i * 8 + 8)?)?);
            }
            Some(IpAddr::V6(Ipv6Addr::from(bytes)))
        }
        _ => None,
    }
}

/// Every listening TCP socket, or `None` when `/proc/net/tcp` is unreadable.
///
/// Blocking file reads: the caller runs it on the blocking pool under
/// `--timeout`, since on a busy host the kernel's table can be large.
pub(crate) fn listening_sockets() -> Option<Vec<ProcSocket>> {
    let v4 = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let v6 = std::fs::read_to_string("/proc/net/tcp6").unwrap_or_default();
    Some(
        parse_proc_net_tcp(&v4)
            .into_iter()
            .chain(parse_proc_net_tcp(&v6))
            .filter(ProcSocket::is_listening)
            .collect(),
    )
}

/// The process owning socket `inode`: (pid, command name), if `/proc` lets us see it.
///
/// A walk over every `/proc/PID/fd`: as another user only our own
/// processes are readable, as root all are. Blocking and proportional to
/// the open files on the host, so it too runs under `--timeout`.
pub(crate) fn socket_owner(inode: u64) -> Option<(u32, String)> {
    let target = format!("socket:[{inode}]");
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        let owns = fds.flatten().any(|fd| {
            std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == target.as_str())
        });
        if owns {
            let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            return Some((pid, comm.trim().to_owned()));
        }
    }
    None
}

/// Whether a socket bound to `bound` takes connections meant for `wanted`
/// (same port, same address or either one a wildcard).
pub(crate) fn covers(bound: SocketAddr, wanted: SocketAddr) -> bool {
    bound.port() == wanted.port()
        && (bound.ip() == wanted.ip()
            || bound.ip().is_unspecified()
            || wanted.ip().is_unspecified())
}

/// A process holding a listening socket, as `/proc` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// Its process id.
    pub pid: u32,
    /// Its command name (`/proc/PID/comm`).
    pub command: String,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (pid {})", self.command, self.pid)
    }
}

/// Every process that holds a listening socket taking connections meant for
/// `addr`, each named once; empty when none is visible (nothing listens, or
/// `/proc` does not show the owner to this user).
pub(crate) fn holders(addr: SocketAddr) -> Vec<Holder> {
    let mut found: Vec<Holder> = Vec::new();
    for socket in listening_sockets()
        .unwrap_or_default()
        .iter()
        .filter(|s| covers(s.local, addr))
    {
        if let Some((pid, command)) = socket_owner(socket.inode)
            && !found.iter().any(|h| h.pid == pid)
        {
            found.push(Holder { pid, command });
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    // Real lines from a little-endian host (x86_64), header included.
    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 41234 1 0000000000000000 100 0 0 10 0
   1: 00000000:138E 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 41240 1 0000000000000000 100 0 0 10 0
   2: 0100007F:1F90 0100007F:D2A4 01 00000000:00000000 00:00000000 00000000     0        0 0 1 0000000000000000 20 4 30 10 -1
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:138E 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 51000 1 0000000000000000 100 0 0 10 0
   1: 00000000000000000000000001000000:20FB 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 51001 1 0000000000000000 100 0 0 10 0
";

    #[test]
    #[cfg(target_endian = "little")]
    fn parses_ipv4_lines() {
        let sockets = parse_proc_net_tcp(TCP);
        assert_eq!(sockets.len(), 3);
        assert_eq!(sockets[0].local, "127.0.0.1:8080".parse().unwrap());
        assert!(sockets[0].is_listening());
        assert_eq!(sockets[0].inode, 41234);
        assert_eq!(sockets[1].local, "0.0.0.0:5006".parse().unwrap());
        assert!(!sockets[2].is_listening());
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn parses_ipv6_lines() {
        let sockets = parse_proc_net_tcp(TCP6);
        assert_eq!(sockets[0].local, "[::]:5006".parse().unwrap());
        assert_eq!(sockets[1].local, "[::1]:8443".parse().unwrap());
        assert_eq!(sockets[1].inode, 51001);
    }

    #[test]
    fn skips_garbage() {
        assert!(parse_proc_net_tcp("").is_empty());
        assert!(parse_proc_net_tcp("0: zz:1 0 0A a b c d e f\nnot a line\n").is_empty());
    }

    #[test]
    fn wildcards_cover_specific_addresses() {
        let any: SocketAddr = "0.0.0.0:80".parse().unwrap();
        let lo: SocketAddr = "127.0.0.1:80".parse().unwrap();
        assert!(covers(any, lo));
        assert!(covers(lo, any));
        assert!(!covers(lo, "127.0.0.2:80".parse().unwrap()));
        assert!(!covers(any, "127.0.0.1:81".parse().unwrap()));
    }

    #[test]
    fn this_process_socket_is_found_in_proc() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let Some(sockets) = listening_sockets() else {
            eprintln!("skipping: /proc/net/tcp is not readable here");
            return;
        };
        let found = sockets
            .iter()
            .find(|s| s.local == addr)
            .expect("our listener");
        let (pid, _) = socket_owner(found.inode).expect("our own fds are readable");
        assert_eq!(pid, std::process::id());
    }
}
