//! Check 2: each upstream is reachable: a TCP connect (and, for `https`, the
//! TLS handshake), then the `http:` health GET and its status.
//!
//! The connect error says what is wrong: `connection refused` means nothing
//! listens there, a timeout means a firewall dropping packets or a wrong host.

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;
use std::time::Instant;

use http::{Request, header};
use rustls::ClientConfig;
use tokio::net::TcpStream;

use super::{Context, Finding, Report, human, millis};
use crate::config::{ProbeKind, Scheme, UpstreamName, UpstreamSpec};
use crate::dial::probe::send;
use crate::dial::{UpstreamStream, connect};
use crate::error_chain::chain;

/// The TLS client config for an `https` upstream (`None` for `http`): the
/// same roots `run` builds from the upstream's `ca`, so a certificate that
/// would fail in production fails here.
pub(crate) fn client_tls(u: &UpstreamSpec) -> Result<Option<Arc<ClientConfig>>, String> {
    match u.url.scheme {
        Scheme::Http => Ok(None),
        Scheme::Https => crate::tls::client::client_config(u.ca.as_deref())
            .map(Some)
            .map_err(|e| e.to_string()),
    }
}

/// Open a stream to `u` the way forwarding does, bounded by the timeout.
///
/// This is [`connect`], the forwarding code's own (TCP, `TCP_NODELAY`, and
/// TLS for `https`), with `--timeout` as its connect bound.
pub(crate) async fn open(ctx: &Context, u: &UpstreamSpec) -> Result<UpstreamStream, String> {
    let tls = client_tls(u)?;
    let header = u
        .send_proxy_protocol
        .map(|v| crate::proxy_header::encode(v, None));
    connect(&u.url, tls.as_ref(), ctx.timeout, header.as_deref())
        .await
        .map_err(|e| chain(&e))
}

/// Check every upstream; returns which ones accepted a connection.
///
/// Every upstream of the configuration is checked, used by a route or not
/// (an unused one is marked so). The result tells check 3 which upstreams
/// are worth a handshake. Each step is bounded by `--timeout`, so a run
/// with N dead upstreams takes at most N timeouts here.
pub(crate) async fn check(ctx: &Context, report: &mut Report) -> BTreeMap<UpstreamName, bool> {
    let mut reachable = BTreeMap::new();
    for u in &ctx.config.upstreams {
        let ok = tcp(ctx, u, report).await && tls(ctx, u, report).await;
        if let (true, ProbeKind::Http(path)) = (ok, &u.health.check) {
            http_get(ctx, u, path, report).await;
        }
        reachable.insert(u.name.clone(), ok);
    }
    reachable
}

/// A TCP connect to the upstream, bounded by `--timeout`. The two ways it
/// fails mean different things: refused is an answer (nothing listens
/// there: the backend is down or the port is wrong), silence is not (a
/// firewall drops the SYNs, or the host is wrong). Returns whether it
/// connected.
async fn tcp(ctx: &Context, u: &UpstreamSpec, report: &mut Report) -> bool {
    let check = format!("upstream {}", u.name);
    let authority = u.url.authority();
    let started = Instant::now();
    let attempt = tokio::time::timeout(
        ctx.timeout,
        TcpStream::connect((u.url.host.as_str(), u.url.port)),
    )
    .await;
    let used = ctx.config.routes.iter().any(|r| r.via.contains(&u.name));
    let unused = if used { "" } else { " (no route uses it)" };
    let finding = match attempt {
        Ok(Ok(_)) => Finding::ok(
            check,
            format!(
                "{} accepts TCP connections ({}){unused}",
                u.url,
                millis(started.elapsed())
            ),
        ),
        Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => Finding::fail(
            check,
            format!(
                "{}: connection refused: nothing listens on {authority}",
                u.url
            ),
            format!(
                "start the backend on {authority}, or correct the URL of upstream {} (--{} / [upstreams.{}] url)",
                u.name,
                if u.name.0 == "nginx" {
                    "nginx"
                } else {
                    "direct"
                },
                u.name
            ),
        ),
        Ok(Err(e)) => Finding::fail(
            check,
            format!("{}: {e}", u.url),
            format!(
                "check the host and port of upstream {} and that the backend runs",
                u.name
            ),
        ),
        Err(_) => Finding::fail(
            check,
            format!(
                "{}: no answer within {}: a firewall drops the packets, or the host is wrong",
                u.url,
                human(ctx.timeout)
            ),
            format!(
                "check the host of upstream {}, and that the firewall between shunt and {authority} allows TCP {}",
                u.name, u.url.port
            ),
        ),
    };
    let ok = finding.status == super::Status::Ok;
    report.push(finding);
    ok
}

/// For an `https` upstream, the TLS handshake with the CA `run` would use
/// (bounded by `--timeout` inside [`connect`]): a connect that works with a
/// handshake that does not is a CA or certificate problem, not a network one.
async fn tls(ctx: &Context, u: &UpstreamSpec, report: &mut Report) -> bool {
    if u.url.scheme != Scheme::Https {
        return true;
    }
    let check = format!("upstream {} tls", u.name);
    match open(ctx, u).await {
        Ok(_) => {
            report.push(Finding::ok(
                check,
                format!("TLS handshake with {} verifies", u.url),
            ));
            true
        }
        Err(e) => {
            report.push(Finding::fail(
                check,
                format!("{}: {e}", u.url),
                "give the CA that signed the upstream's certificate with --upstream-ca (or `ca` of the upstream), or fix the upstream's certificate",
            ));
            false
        }
    }
}

/// For an `http:PATH` health check, the GET that shunt's prober sends, and
/// its status: a backend that accepts connections but answers 5xx is marked
/// down by shunt and never gets traffic. Bounded by `--timeout` as a whole.
async fn http_get(ctx: &Context, u: &UpstreamSpec, path: &str, report: &mut Report) {
    let check = format!("upstream {} health", u.name);
    let attempt = async {
        let stream = open(ctx, u).await?;
        let request = Request::get(path)
            .header(header::HOST, u.url.authority())
            .header(header::USER_AGENT, "shunt-doctor");
        send(stream, request, &ctx.tracker, &ctx.stop)
            .await
            .map_err(|e| chain(&e))
    };
    let finding = match tokio::time::timeout(ctx.timeout, attempt).await {
        Ok(Ok(resp)) if resp.status().is_success() || resp.status().is_redirection() => {
            Finding::ok(
                check,
                format!("GET {}{path} answered {}", u.url, resp.status()),
            )
        }
        Ok(Ok(resp)) => Finding::fail(
            check,
            format!(
                "GET {}{path} answered {} (expected 2xx or 3xx)",
                u.url,
                resp.status()
            ),
            format!(
                "make the backend answer 2xx on {path}, or change the health check of upstream {} (--health-check)",
                u.name
            ),
        ),
        Ok(Err(e)) => Finding::fail(
            check,
            format!("GET {}{path}: {e}", u.url),
            "check that the upstream speaks HTTP/1.1 on that port",
        ),
        Err(_) => Finding::fail(
            check,
            format!(
                "GET {}{path}: no answer within {}",
                u.url,
                human(ctx.timeout)
            ),
            "the upstream accepts connections but does not answer: check its logs",
        ),
    };
    report.push(finding);
}
