//! Check 4: listeners. Who holds the proxy port (this shunt, found through
//! its admin API, or another process, named from `/proc` by
//! [`crate::procnet`]); a loopback-only `--listen` behind a public `--url`;
//! and backends that are upstreams of shunt but also listen on all
//! interfaces, bypassing it.

use std::net::{IpAddr, SocketAddr};

use crate::procnet::{ProcSocket, covers, listening_sockets, socket_owner};

use super::{Context, Finding, Report, dial_addr, human};

/// What the listener check found out about shunt: enough for check 7 to
/// dial it. Only built when a shunt (probably) holds the port.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Running {
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
    if bound && let Some(shared) = shared_port(ctx, listen).await {
        report.push(Finding::fail(
            CHECK,
            format!("{listen} is held by more than one process: {shared}; each takes a share of the connections"),
            format!(
                "stop every process but the shunt you mean to run (an older shunt may have bound the port with SO_REUSEPORT); then {}",
                ctx.run_hint()
            ),
        ));
        return running;
    }
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

/// The processes holding `listen`, listed, when there is more than one:
/// a port shared through `SO_REUSEPORT` (shunt refuses to start on a held port, but an
/// older shunt or another program may have). `None` when one process or
/// none is visible, or `/proc` is not read within `--timeout`.
async fn shared_port(ctx: &Context, listen: SocketAddr) -> Option<String> {
    let holders = tokio::time::timeout(
        ctx.timeout,
        tokio::task::spawn_blocking(move || crate::procnet::holders(listen)),
    )
    .await
    .ok()?
    .ok()?;
    (holders.len() > 1).then(|| {
        holders
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    })
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
