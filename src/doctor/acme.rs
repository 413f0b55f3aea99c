//! Check 6b: ACME (`[acme]`): each domain resolves (and to what), the
//! challenge port is reachable on this host, and the certificate stored in
//! `state_dir` is valid and when it renews.
//!
//! DNS and TCP steps are bounded by `--timeout`; the state directory is read
//! with the code `run` uses to load it.

use std::net::SocketAddr;
use std::time::SystemTime;

use super::{Context, Finding, Report, dial_addr};
use crate::config::{AcmeChallenge, AcmeSpec};
use crate::tls::CertSpec;

/// Every ACME check, when `[acme]` is configured.
pub(crate) async fn check(ctx: &Context, report: &mut Report) {
    let Some(acme) = &ctx.config.acme else {
        return;
    };
    for domain in &acme.domains {
        resolves(ctx, domain, report).await;
    }
    challenge_port(ctx, acme, report).await;
    stored(acme, report);
}

/// The domain resolves; the report names the addresses.
async fn resolves(ctx: &Context, domain: &str, report: &mut Report) {
    let check = format!("acme dns {domain}");
    let found = tokio::time::timeout(ctx.timeout, tokio::net::lookup_host((domain, 443))).await;
    match found {
        Ok(Ok(addrs)) => {
            let mut ips: Vec<String> = addrs.map(|a| a.ip().to_string()).collect();
            ips.sort();
            ips.dedup();
            if ips.is_empty() {
                report.push(no_address(check, domain, "no address"));
            } else {
                report.push(Finding::ok(
                    check,
                    format!(
                        "{domain} resolves to {}: the CA connects there",
                        ips.join(", ")
                    ),
                ));
            }
        }
        Ok(Err(e)) => report.push(no_address(check, domain, &e.to_string())),
        Err(_) => report.push(no_address(
            check,
            domain,
            &format!("no answer in {}", super::human(ctx.timeout)),
        )),
    }
}

fn no_address(check: String, domain: &str, why: &str) -> Finding {
    Finding::fail(
        check,
        format!("{domain} does not resolve: {why}"),
        format!("point an A (and AAAA) record for {domain} at this host's public address"),
    )
}

/// The port the CA validates on (443 for TLS-ALPN-01, 80 for HTTP-01)
/// is the one shunt answers on, and something accepts there now.
async fn challenge_port(ctx: &Context, acme: &AcmeSpec, report: &mut Report) {
    let (addr, ca_port, what) = match acme.challenge {
        AcmeChallenge::TlsAlpn01 => (Some(ctx.config.listen), 443, "--listen"),
        AcmeChallenge::Http01 => (ctx.config.http_listen, 80, "--http-listen"),
    };
    let name = acme.challenge.name();
    let check = format!("acme {name} port");
    let Some(addr) = addr else {
        report.push(Finding::fail(
            check,
            format!("{name} is answered on {what}, which is not set"),
            format!("give {what} 0.0.0.0:{ca_port}"),
        ));
        return;
    };
    if addr.port() != ca_port {
        report.push(Finding::warn(
            check.clone(),
            format!(
                "the CA validates {name} on port {ca_port}; {what} is {addr}"
            ),
            format!(
                "listen on port {ca_port}, or forward port {ca_port} to {addr} (a firewall redirect, or nginx's `location /.well-known/acme-challenge/` for http-01)"
            ),
        ));
    }
    let dial: SocketAddr = dial_addr(addr);
    match tokio::time::timeout(ctx.timeout, tokio::net::TcpStream::connect(dial)).await {
        Ok(Ok(_)) => report.push(Finding::ok(
            check,
            format!("{dial} accepts connections on this host"),
        )),
        _ => report.push(Finding::fail(
            check,
            format!("nothing accepts on {dial}: the CA's {name} validation would fail"),
            format!("start shunt ({})", ctx.run_hint()),
        )),
    }
}

/// The certificate in `state_dir`: loads, covers the domains, not expired;
/// and when it renews (two thirds into its life, or earlier in the CA's
/// ARI window).
fn stored(acme: &AcmeSpec, report: &mut Report) {
    let check = "acme certificate";
    let spec = CertSpec {
        cert: acme.state_dir.join("cert.pem"),
        key: acme.state_dir.join("key.pem"),
        names: vec![],
    };
    if !spec.cert.exists() {
        let writable = acme.state_dir.exists()
            || acme
                .state_dir
                .ancestors()
                .skip(1)
                .find(|p| p.exists())
                .is_some_and(|p| !p.metadata().is_ok_and(|m| m.permissions().readonly()));
        report.push(Finding::warn(
            check,
            format!(
                "no certificate in {} yet: shunt orders one when it starts",
                acme.state_dir.display()
            ),
            if writable {
                "start shunt and watch `/status` certificates[] (source acme) for last_error"
                    .to_owned()
            } else {
                format!(
                    "create {} writable by shunt's user (mode 0700)",
                    acme.state_dir.display()
                )
            },
        ));
        return;
    }
    let cert = match crate::tls::certs::load(&spec, &crate::tls::groups::provider(&[])) {
        Ok(c) => c,
        Err(e) => {
            report.push(Finding::fail(
                check,
                format!("{}", crate::error_chain::ErrorChain(&e)),
                format!(
                    "remove {} and {}: shunt orders a new certificate",
                    spec.cert.display(),
                    spec.key.display()
                ),
            ));
            return;
        }
    };
    let now = SystemTime::now();
    let life = cert
        .info
        .not_after
        .duration_since(cert.info.not_before)
        .unwrap_or_default();
    let renews = cert.info.not_before + life * 2 / 3;
    let time = |t| humantime::format_rfc3339_seconds(t).to_string();
    let missing: Vec<&String> = acme
        .domains
        .iter()
        .filter(|d| {
            !cert
                .info
                .sans
                .iter()
                .any(|s| crate::tls::certs::name_covers(s, d))
        })
        .collect();
    if cert.info.not_after <= now {
        report.push(Finding::fail(
            check,
            format!(
                "the stored certificate expired on {}",
                time(cert.info.not_after)
            ),
            "start shunt: it orders a new one at once; if it fails, /status shows why",
        ));
    } else if !missing.is_empty() {
        report.push(Finding::warn(
            check,
            format!(
                "the stored certificate does not cover {}: shunt orders a new one at start",
                missing
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            "nothing to do if the CA can reach this host",
        ));
    } else {
        report.push(Finding::ok(
            check,
            format!(
                "valid until {}; renews around {} (earlier if the CA's ARI window says so)",
                time(cert.info.not_after),
                time(renews)
            ),
        ));
    }
}
