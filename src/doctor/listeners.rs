//! Check 4: listeners. Who holds the proxy port (this shunt, found through
//! its admin API, or another process, named from `/proc`); a loopback-only
//! `--listen` behind a public `--url`; and backends that are upstreams of
//! shunt but also listen on all interfaces, bypassing it.
//!
//! Listening sockets come from `/proc/net/tcp` and `/proc/net/tcp6`
//! ([`parse_proc_net_tcp`], a pure function); their owners from the
//! `socket:[INODE]` links in `/proc/*/fd`, where permitted.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::{Context, Finding, Report, dial_addr, human};

/// TCP state `LISTEN` in `/proc/net/tcp`.
const TCP_LISTEN: u8 = 0x0A;

/// One socket line of `/proc/net/tcp{,6}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcSocket {
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
    pub fn is_listening(&self) -> bool {
        self.state == TCP_LISTEN
    }
}

/// Parse the text of `/proc/net/tcp` or `/proc/net/tcp6`; lines that do not
/// parse (the header among them) are skipped.
pub fn parse_proc_net_tcp(text: &str) -> Vec<ProcSocket> {
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
fn listening_sockets() -> Option<Vec<ProcSocket>> {
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
fn socket_owner(inode: u64) -> Option<(u32, String)> {
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
fn covers(bound: SocketAddr, wanted: SocketAddr) -> bool {
    bound.port() == wanted.port()
        && (bound.ip() == wanted.ip()
            || bound.ip().is_unspecified()
            || wanted.ip().is_unspecified())
}

/// What the listener check found out about shunt: enough for check 7 to
/// dial it. Only built when a shunt (probably) holds the port.
#[derive(Debug, Clone, Copy)]
pub struct Running {
    /// Where to dial the proxy listener.
    pub addr: SocketAddr,
}

/// Check 4; returns where shunt is running, if it is.
///
/// The socket table is read once and shared by the proxy-port and
/// backend-binding findings, so both describe the same moment.
pub(crate) async fn check(ctx: &Context, report: &mut Report) -> Option<Running> {
    let read =
        tokio::time::timeout(ctx.timeout, tokio::task::spawn_blocking(listening_sockets)).await;
    let sockets = match read {
        Ok(Ok(Some(sockets))) => Ok(sockets),
        Ok(_) => Err("is not readable".to_owned()),
        Err(_) => Err(format!("was not read within {}", human(ctx.timeout))),
    };
    let running = proxy_port(ctx, sockets.as_deref().ok(), report).await;
    scope(ctx, report);
    backend_bindings(ctx, sockets.as_deref(), report);
    running
}

/// Who holds the proxy port. The admin API's `/status` says whether a shunt
/// is behind it (a bound port alone could be anything); `/proc` names any
/// other owner, so "address already in use" comes with the process to stop.
/// Returns where to dial shunt when it (probably) runs. The admin probe, the
/// connect fallback (when `/proc/net/tcp` is unreadable) and the `/proc/*/fd`
/// scan are each bounded by `--timeout`.
async fn proxy_port(
    ctx: &Context,
    sockets: Option<&[ProcSocket]>,
    report: &mut Report,
) -> Option<Running> {
    /// The check name of the proxy port's finding.
    const CHECK: &str = "listener";
    let listen = ctx.config.listen;
    let dial = dial_addr(listen);
    let admin_answers = match ctx.config.admin {
        Some(a) => matches!(
            tokio::time::timeout(
                ctx.timeout,
                crate::admin::get_status(dial_addr(a), "/status")
            )
            .await,
            Ok(Ok(200))
        ),
        None => false,
    };
    let admin = ctx
        .config
        .admin
        .map_or_else(|| "(off)".to_owned(), |a| a.to_string());
    let holder = sockets.and_then(|s| s.iter().find(|s| covers(s.local, listen)).cloned());
    let bound = match sockets {
        Some(_) => holder.is_some(),
        None => matches!(
            tokio::time::timeout(ctx.timeout, tokio::net::TcpStream::connect(dial)).await,
            Ok(Ok(_))
        ),
    };
    let owner = match &holder {
        Some(s) => {
            let inode = s.inode;
            tokio::time::timeout(
                ctx.timeout,
                tokio::task::spawn_blocking(move || socket_owner(inode)),
            )
            .await
            .ok()
            .and_then(Result::ok)
            .flatten()
        }
        None => None,
    };
    let who = owner
        .as_ref()
        .map(|(pid, comm)| format!("{comm} (pid {pid})"));
    let running = Some(Running { addr: dial });
    match (bound, admin_answers) {
        (true, true) => {
            report.push(Finding::ok(
                CHECK,
                format!(
                    "{listen} is bound by this shunt (its admin API {admin} answers /status{})",
                    who.map(|w| format!("; held by {w}")).unwrap_or_default()
                ),
            ));
            running
        }
        (true, false) => match &owner {
            Some((_, comm)) if comm == "shunt" => {
                report.push(Finding::warn(
                    CHECK,
                    format!(
                        "{listen} is bound by shunt ({}), but its admin API {admin} does not answer",
                        who.unwrap_or_default()
                    ),
                    "give doctor the --admin address that shunt runs with (or turn the admin listener on)",
                ));
                running
            }
            Some(_) => {
                report.push(Finding::fail(
                    CHECK,
                    format!(
                        "{listen} is held by another process: {}; shunt cannot bind it",
                        who.unwrap_or_default()
                    ),
                    format!(
                        "stop that process, or move shunt to a free port (--listen); then {}",
                        ctx.run_hint()
                    ),
                ));
                None
            }
            None => {
                report.push(Finding::warn(
                    CHECK,
                    format!(
                        "something listens on {listen}, but the admin API {admin} does not answer, so it may not be this shunt (its owner is not visible in /proc)"
                    ),
                    "run doctor as the user that runs shunt (or as root) to see the owner, and give it the --admin shunt runs with",
                ));
                running
            }
        },
        (false, true) => {
            report.push(Finding::warn(
                CHECK,
                format!(
                    "a shunt answers on admin {admin}, but nothing listens on {listen}: it runs with another configuration"
                ),
                format!(
                    "give doctor the flags shunt runs with, or restart it with this configuration: {}",
                    ctx.run_hint()
                ),
            ));
            None
        }
        (false, false) => {
            report.push(Finding::warn(
                CHECK,
                format!(
                    "shunt is not running: nothing listens on {listen}{}; the end-to-end check is skipped",
                    if ctx.config.admin.is_some() {
                        format!(" and admin {admin} does not answer")
                    } else {
                        String::new()
                    }
                ),
                format!("start it: {}", ctx.run_hint()),
            ));
            None
        }
    }
}

/// `warn` when `--listen` is loopback-only but `--url` names a public host.
///
/// The classic "works on the server, not from the laptop": shunt bound to
/// 127.0.0.1 while DNS sends browsers to the machine's public address.
/// Pure configuration: no I/O.
fn scope(ctx: &Context, report: &mut Report) {
    /// The check name of the scope finding.
    const CHECK: &str = "listener scope";
    let listen = ctx.config.listen;
    if listen.ip().is_loopback() && !ctx.url.is_local() {
        report.push(Finding::warn(
            CHECK,
            format!(
                "--listen {listen} is loopback-only, but --url names {}: browsers on other machines cannot reach it",
                ctx.url.host
            ),
            format!(
                "listen on the public interface: --listen 0.0.0.0:{} (and allow TCP {} in the firewall)",
                listen.port(),
                ctx.url.port
            ),
        ));
    } else {
        report.push(Finding::ok(
            CHECK,
            format!("--listen {listen} can serve {}", ctx.url.host),
        ));
    }
}

/// `warn` for each local backend upstream that also listens on all interfaces.
///
/// A backend on `0.0.0.0:5006` answers anyone who reaches the machine, with
/// none of shunt's TLS, tokens, Origin checks or limits: the proxy is then
/// optional. The fix binds it to loopback, or closes the port with the one
/// ufw or iptables line. Only upstreams on this machine are looked at
/// (the table is local), and not `nginx`, which is meant to be public.
/// `sockets` is the table, or why it is missing (`is not readable`, `was
/// not read within 3s`).
fn backend_bindings(ctx: &Context, sockets: Result<&[ProcSocket], &String>, report: &mut Report) {
    for u in ctx.config.upstreams.iter().filter(|u| is_local_backend(u)) {
        let check = format!("upstream {} binding", u.name);
        let port = u.url.port;
        let sockets = match sockets {
            Ok(sockets) => sockets,
            Err(why) => {
                report.push(Finding::warn(
                    check,
                    format!("port {port}: /proc/net/tcp {why}, bindings not checked"),
                    format!("check by hand: ss -tlnp 'sport = :{port}'"),
                ));
                continue;
            }
        };
        let open: Vec<SocketAddr> = sockets
            .iter()
            .filter(|s| s.local.port() == port && s.local.ip().is_unspecified())
            .map(|s| s.local)
            .collect();
        if open.is_empty() {
            if sockets.iter().any(|s| s.local.port() == port) {
                report.push(Finding::ok(
                    check,
                    format!(
                        "port {port} listens on specific addresses only, not on all interfaces"
                    ),
                ));
            }
            continue;
        }
        let list = open
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        report.push(Finding::warn(
            check,
            format!(
                "port {port} of upstream {} also listens on all interfaces ({list}): clients can bypass shunt and its TLS, tokens and limits",
                u.name
            ),
            format!(
                "bind the backend to 127.0.0.1 (e.g. HOST=127.0.0.1, listen(5006, '127.0.0.1')), or close the port:\n\
                 ufw deny {port}/tcp\n\
                 iptables -A INPUT -p tcp --dport {port} ! -i lo -j DROP"
            ),
        ));
    }
}

/// An upstream on this machine that is a backend (nginx is meant to be public).
fn is_local_backend(u: &crate::config::UpstreamSpec) -> bool {
    let host = &u.url.host;
    u.name.0 != "nginx"
        && (host.eq_ignore_ascii_case("localhost")
            || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback()))
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
