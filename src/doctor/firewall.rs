//! Check 5: the firewall, best effort and never fatal. When `ufw`, `nft` or
//! `iptables` is installed and readable, say whether the public port is
//! allowed and the backend ports closed; when none is, `warn` that it was not
//! checked. Only read-only commands are run (`ufw status`, `nft list
//! ruleset`, `iptables -S`), each bounded by the timeout.

use std::path::PathBuf;
use std::process::Stdio;

use super::{Context, Finding, Report, human};

/// What a rule set says about one TCP port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PortVerdict {
    /// Reachable from outside.
    Allowed,
    /// Dropped or rejected from outside.
    Blocked,
    /// No rule names it and the default is not known.
    Unknown,
}

/// The public port and the backend ports, as one tool sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reading {
    /// `ufw`, `nft` or `iptables`.
    pub tool: &'static str,
    /// Set when the tool says the firewall is off.
    pub inactive: bool,
    /// The public port (`--url`'s).
    pub public_port: u16,
    /// What the rules say about the public port.
    pub public: PortVerdict,
    /// Each backend port and what the rules say about it.
    pub backends: Vec<(u16, PortVerdict)>,
}

/// Read `ufw status` output.
///
/// A rule names a port when its `To` column is that port (with or without
/// `/tcp`, or in a comma list). A `DENY` or `REJECT` rule for the port wins
/// wherever it stands, else an `ALLOW`, else ufw's default incoming policy
/// (deny). ufw itself takes the first match; erring towards `Blocked` makes
/// doctor warn rather than stay quiet. An inactive ufw allows everything.
pub(crate) fn read_ufw(text: &str, public: u16, backends: &[u16]) -> Reading {
    let inactive = text.lines().any(|l| l.trim() == "Status: inactive");
    let verdict = |port: u16| {
        if inactive {
            return PortVerdict::Allowed;
        }
        let mut verdict = PortVerdict::Blocked; // ufw's default incoming policy is deny
        for line in text.lines() {
            let mut words = line.split_whitespace();
            let Some(to) = words.next() else { continue };
            let names_port = to.split('/').next().is_some_and(|p| {
                p == port.to_string() || p.split(',').any(|q| q == port.to_string())
            });
            if !names_port {
                continue;
            }
            let action = line.to_ascii_uppercase();
            if action.contains("DENY") || action.contains("REJECT") {
                return PortVerdict::Blocked;
            }
            if action.contains("ALLOW") {
                verdict = PortVerdict::Allowed;
            }
        }
        verdict
    };
    Reading {
        tool: "ufw",
        inactive,
        public_port: public,
        public: verdict(public),
        backends: backends.iter().map(|&p| (p, verdict(p))).collect(),
    }
}

/// Read `iptables -S` output (the INPUT chain).
///
/// The first `-A INPUT` rule with `--dport PORT` that accepts or drops
/// decides, in chain order as iptables does; an `ACCEPT` limited to `-i lo`
/// does not count as open from outside. Otherwise the chain's policy
/// (`-P INPUT`) decides, `Unknown` if none was printed. Port ranges and
/// multiport sets are not understood, nor interfaces other than `lo`.
pub(crate) fn read_iptables(text: &str, public: u16, backends: &[u16]) -> Reading {
    let policy = text
        .lines()
        .find_map(|l| l.strip_prefix("-P INPUT "))
        .map(str::trim);
    let default = match policy {
        Some("ACCEPT") => PortVerdict::Allowed,
        Some("DROP" | "REJECT") => PortVerdict::Blocked,
        _ => PortVerdict::Unknown,
    };
    let verdict = |port: u16| {
        let needle = format!("--dport {port}");
        for line in text.lines().filter(|l| l.starts_with("-A INPUT")) {
            let names_port = line
                .split(needle.as_str())
                .nth(1)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(' '));
            if !names_port {
                continue;
            }
            if line.contains("-j ACCEPT") && !line.contains("-i lo") {
                return PortVerdict::Allowed;
            }
            if line.contains("-j DROP") || line.contains("-j REJECT") {
                return PortVerdict::Blocked;
            }
        }
        default
    };
    Reading {
        tool: "iptables",
        inactive: policy == Some("ACCEPT") && !text.contains("-A INPUT"),
        public_port: public,
        public: verdict(public),
        backends: backends.iter().map(|&p| (p, verdict(p))).collect(),
    }
}

/// Read `nft list ruleset` output (rules with `dport N`, the input hook's policy).
///
/// A line naming `dport PORT` (alone or in a `{ }` set) that accepts or
/// drops decides; else the input hook's policy (`drop`, else accept);
/// `Unknown` when no table hooks input. Read line by line, not parsed: a
/// rule's other matches (source address, interface) are not weighed.
pub(crate) fn read_nft(text: &str, public: u16, backends: &[u16]) -> Reading {
    let default = if text.contains("hook input") && text.contains("policy drop") {
        PortVerdict::Blocked
    } else if text.contains("hook input") {
        PortVerdict::Allowed
    } else {
        PortVerdict::Unknown
    };
    let verdict = |port: u16| {
        for line in text.lines() {
            let names_port = line
                .split_whitespace()
                .collect::<Vec<_>>()
                .windows(2)
                .any(|w| {
                    w[0] == "dport"
                        && w[1].trim_matches(|c| c == '{' || c == '}' || c == ',')
                            == port.to_string()
                });
            if !names_port {
                continue;
            }
            if line.contains("accept") {
                return PortVerdict::Allowed;
            }
            if line.contains("drop") || line.contains("reject") {
                return PortVerdict::Blocked;
            }
        }
        default
    };
    Reading {
        tool: "nft",
        inactive: !text.contains("hook input"),
        public_port: public,
        public: verdict(public),
        backends: backends.iter().map(|&p| (p, verdict(p))).collect(),
    }
}

/// A parser of one tool's output: (text, public port, backend ports).
/// [`read_ufw`], [`read_nft`] and [`read_iptables`] share it, so `check`
/// tries the tools from one table.
type ReadRules = fn(&str, u16, &[u16]) -> Reading;

/// Where an admin tool may be installed: `PATH`, then the sbin directories
/// a non-root `PATH` often lacks. Presence only; nothing is run here.
fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Run a read-only command, bounded by the timeout; its stdout, or why not.
///
/// The arguments are fixed by the caller (`status`, `list ruleset`, `-S
/// INPUT`): doctor never changes a rule. stdin is closed so a tool cannot
/// wait on a prompt, and the child is killed if the timeout passes.
async fn read_only(ctx: &Context, tool: &PathBuf, args: &[&str]) -> Result<String, String> {
    let child = tokio::process::Command::new(tool)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| e.to_string())?;
    let output = tokio::time::timeout(ctx.timeout, child.wait_with_output())
        .await
        .map_err(|_| format!("no answer within {}", human(ctx.timeout)))?
        .map_err(|e| e.to_string())?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        let err = String::from_utf8_lossy(&output.stderr);
        Err(err.lines().next().unwrap_or("failed").to_owned())
    }
}

/// Check 5: read the first tool that answers (ufw, then nft, then
/// iptables) and judge the public port and the backend ports from its rules.
///
/// Skipped (`ok`) when both the listener and `--url` are loopback-only:
/// no packet from another machine is involved. Never `FAIL`: a rule set
/// read from here does not show a cloud provider's firewall, so the finding
/// is advice. Each tool gets `--timeout` and is killed past it
/// (`kill_on_drop`); reading iptables or nft needs root, and a tool that
/// refuses is named in the `warn`.
pub(crate) async fn check(ctx: &Context, report: &mut Report) {
    /// The check name of every finding here.
    const CHECK: &str = "firewall";
    let public = ctx.url.port;
    let backends: Vec<u16> = ctx
        .config
        .upstreams
        .iter()
        .filter(|u| u.name.0 != "nginx")
        .map(|u| u.url.port)
        .collect();
    if ctx.config.listen.ip().is_loopback() && ctx.url.is_local() {
        report.push(Finding::ok(
            CHECK,
            format!(
                "not needed for shunt: its listener {} and the --url host {} are loopback-only",
                ctx.config.listen, ctx.url.host
            ),
        ));
        return;
    }
    let tools: [(&str, &[&str], ReadRules); 3] = [
        ("ufw", &["status"], read_ufw),
        ("nft", &["list", "ruleset"], read_nft),
        ("iptables", &["-S", "INPUT"], read_iptables),
    ];
    let mut found = Vec::new();
    for (name, args, read) in tools {
        let Some(path) = find_tool(name) else {
            continue;
        };
        match read_only(ctx, &path, args).await {
            Ok(text) => {
                report.push(judge(read(&text, public, &backends)));
                return;
            }
            Err(e) => found.push(format!("{name}: {e}")),
        }
    }
    let detail = if found.is_empty() {
        "not checked: no ufw, nft or iptables found".to_owned()
    } else {
        format!("not checked: {}", found.join("; "))
    };
    let ports = backends
        .iter()
        .map(|p| format!("{p}/tcp"))
        .collect::<Vec<_>>()
        .join(", ");
    report.push(Finding::warn(
        CHECK,
        detail,
        format!(
            "check the host's (or the cloud provider's) firewall by hand: allow TCP {public} and close {ports} from outside (run doctor as root to read iptables/nft)"
        ),
    ));
}

/// One finding from a tool's reading, worst first: a public port that is
/// blocked (browsers cannot connect), then backend ports open from outside
/// (clients can bypass shunt), then a public port no rule names. Each fix is
/// the one command for that tool.
fn judge(r: Reading) -> Finding {
    /// The check name of every finding here.
    const CHECK: &str = "firewall";
    let public = |p: u16| format!("{p}/tcp");
    let open_backends: Vec<u16> = r
        .backends
        .iter()
        .filter(|(_, v)| *v == PortVerdict::Allowed)
        .map(|(p, _)| *p)
        .collect();
    let port = r.public_port;
    if r.public == PortVerdict::Blocked {
        return Finding::warn(
            CHECK,
            format!(
                "{}: the public port {} is not allowed",
                r.tool,
                public(port)
            ),
            match r.tool {
                "ufw" => format!("ufw allow {port}/tcp"),
                "nft" => format!("nft add rule inet filter input tcp dport {port} accept"),
                _ => format!("iptables -I INPUT -p tcp --dport {port} -j ACCEPT"),
            },
        );
    }
    if !open_backends.is_empty() {
        let first = open_backends[0];
        let list = open_backends
            .iter()
            .map(|p| public(*p))
            .collect::<Vec<_>>()
            .join(", ");
        return Finding::warn(
            CHECK,
            format!(
                "{}{}: backend port {list} is open from outside, so clients can bypass shunt",
                r.tool,
                if r.inactive { " (inactive)" } else { "" }
            ),
            match r.tool {
                "ufw" => format!("ufw deny {first}/tcp"),
                "nft" => format!("nft add rule inet filter input iif != lo tcp dport {first} drop"),
                _ => format!("iptables -A INPUT -p tcp --dport {first} ! -i lo -j DROP"),
            },
        );
    }
    if r.public == PortVerdict::Unknown {
        return Finding::warn(
            CHECK,
            format!("{}: no rule names {}", r.tool, public(port)),
            format!("make sure TCP {port} is allowed in front of this host"),
        );
    }
    Finding::ok(
        CHECK,
        format!(
            "{}: {} allowed, backend ports closed from outside",
            r.tool,
            public(port)
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ufw: an allowed public port with the backend under the default deny is
    /// `ok`; a rule that opens only the backend, and an inactive ufw, are not.
    #[test]
    fn ufw_allows_the_public_port_and_denies_by_default() {
        let text = "Status: active\n\nTo                         Action      From\n--                         ------      ----\n8443/tcp                   ALLOW       Anywhere\n22/tcp                     ALLOW       Anywhere\n8443/tcp (v6)              ALLOW       Anywhere (v6)\n";
        let r = read_ufw(text, 8443, &[5006]);
        assert_eq!(r.public, PortVerdict::Allowed);
        assert_eq!(r.backends, vec![(5006, PortVerdict::Blocked)]);
        assert_eq!(judge(r).status, super::super::Status::Ok);
        let open = read_ufw(
            "Status: active\n5006                       ALLOW       Anywhere\n",
            8443,
            &[5006],
        );
        assert_eq!(open.public, PortVerdict::Blocked);
        assert_eq!(open.backends[0].1, PortVerdict::Allowed);
        let off = read_ufw("Status: inactive\n", 8443, &[5006]);
        assert!(off.inactive);
        let finding = judge(off);
        assert_eq!(finding.fix.as_deref(), Some("ufw deny 5006/tcp"));
    }

    /// iptables: a loopback-only accept and a rule for another port (50060)
    /// leave the backend to the DROP policy; an ACCEPT policy opens it.
    #[test]
    fn iptables_rules_and_policy() {
        let text = "-P INPUT DROP\n-A INPUT -i lo -j ACCEPT\n-A INPUT -p tcp -m tcp --dport 8443 -j ACCEPT\n-A INPUT -p tcp -m tcp --dport 50060 -j ACCEPT\n";
        let r = read_iptables(text, 8443, &[5006]);
        assert_eq!(r.public, PortVerdict::Allowed);
        assert_eq!(r.backends, vec![(5006, PortVerdict::Blocked)]);
        let open = read_iptables("-P INPUT ACCEPT\n", 8443, &[5006]);
        assert_eq!(open.backends[0].1, PortVerdict::Allowed);
        assert!(
            judge(open)
                .fix
                .unwrap()
                .contains("--dport 5006 ! -i lo -j DROP")
        );
    }

    /// nft: a `dport` accept opens the public port; the input hook's `policy
    /// drop` keeps the backend closed.
    #[test]
    fn nft_dport_rules() {
        let text = "table inet filter {\n chain input {\n  type filter hook input priority 0; policy drop;\n  tcp dport 8443 accept\n }\n}\n";
        let r = read_nft(text, 8443, &[5006]);
        assert_eq!(r.public, PortVerdict::Allowed);
        assert_eq!(r.backends, vec![(5006, PortVerdict::Blocked)]);
    }
}
