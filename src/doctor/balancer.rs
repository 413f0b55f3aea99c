//! Check: the load balancer in front of shunt, as the configuration
//! describes it (PROXY protocol, trusted forwarding headers) and as the
//! running shunt has seen it.
//!
//! - PROXY protocol on: the setting is reported; when the admin API
//!   answers, its `shunt_connections_refused_total` says whether trusted
//!   sources connected without a header (the balancer does not send one)
//!   or untrusted sources were refused (`trusted_proxies` misses the
//!   balancer, or its health checker needs `proxy_protocol_optional_from`).
//! - `trust_forwarded_for` without `trusted_proxies`: no peer's headers
//!   are believed, so the setting does nothing; on a public listener that
//!   is worth a warning, since the intent was to believe someone.

use http_body_util::BodyExt;
use tokio::net::TcpStream;

use super::{Context, Finding, Report, dial_addr};

/// The check name of the findings.
const CHECK: &str = "load balancer";

/// Where the balancer settings are documented, for the fixes.
const SETTINGS: &str = "AWS NLB: target group attribute proxy_protocol_v2.enabled = true; \
Kubernetes (AWS): Service annotation service.beta.kubernetes.io/aws-load-balancer-proxy-protocol: \"*\"; \
HAProxy: `server … send-proxy-v2`; nginx stream: `proxy_protocol on;` (README: Behind a load balancer)";

/// Report the balancer settings and what the running shunt saw of them.
pub(crate) async fn check(ctx: &Context, report: &mut Report) {
    let b = &ctx.config.policy.balancers;
    let list = |nets: &[crate::policy::ip::IpNet]| {
        nets.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    if b.trust_forwarded_for && b.trusted.is_empty() {
        let public = !ctx.config.listen.ip().is_loopback();
        report.push(Finding::warn(
            CHECK,
            format!(
                "trust_forwarded_for is on but trusted_proxies is empty: no peer's X-Forwarded-For is believed{}",
                if public {
                    format!(", and {} is reachable from outside", ctx.config.listen)
                } else {
                    String::new()
                }
            ),
            "list the L7 balancer's addresses in trusted_proxies (--trusted-proxy), or turn trust_forwarded_for off",
        ));
    }
    let Some(versions) = b.proxy_protocol else {
        if b.trust_forwarded_for && !b.trusted.is_empty() {
            report.push(Finding::ok(
                CHECK,
                format!(
                    "X-Forwarded-For is believed from trusted_proxies [{}] (right-most untrusted hop); IP rules run per request",
                    list(&b.trusted)
                ),
            ));
        }
        return;
    };
    let optional = if b.optional_from.is_empty() {
        String::new()
    } else {
        format!("; served without a header: [{}]", list(&b.optional_from))
    };
    report.push(Finding::ok(
        CHECK,
        format!(
            "PROXY protocol {} required from trusted_proxies [{}]; other sources are refused{optional}",
            versions.as_str(),
            list(&b.trusted)
        ),
    ));
    let Some(metrics) = fetch_metrics(ctx).await else {
        return;
    };
    let missing = refused(&metrics, "proxy_missing");
    if missing > 0 {
        report.push(Finding::warn(
            CHECK,
            format!(
                "{missing} connection(s) from trusted_proxies came without a PROXY header: the balancer is probably not configured to send one"
            ),
            format!("turn the PROXY protocol on at the balancer: {SETTINGS}"),
        ));
    }
    let untrusted = refused(&metrics, "proxy_untrusted");
    if untrusted > 0 {
        report.push(Finding::warn(
            CHECK,
            format!(
                "{untrusted} connection(s) from sources outside trusted_proxies were refused"
            ),
            "add the balancer's addresses (all of its nodes or its subnet) to trusted_proxies; list a health checker that sends no header in proxy_protocol_optional_from",
        ));
    }
}

/// The running shunt's `/metrics`, when its admin API answers.
async fn fetch_metrics(ctx: &Context) -> Option<String> {
    let addr = dial_addr(ctx.config.admin?);
    let get = async {
        let stream = TcpStream::connect(addr).await.ok()?;
        let request = http::Request::get("/metrics").header(http::header::HOST, addr.to_string());
        let resp = crate::dial::probe::send(stream, request, &ctx.tracker, &ctx.stop)
            .await
            .ok()?;
        let body = resp.into_body().collect().await.ok()?.to_bytes();
        String::from_utf8(body.to_vec()).ok()
    };
    tokio::time::timeout(ctx.timeout, get).await.ok().flatten()
}

/// `shunt_connections_refused_total{reason="REASON"}` in `metrics`, or 0.
fn refused(metrics: &str, reason: &str) -> u64 {
    let needle = format!("shunt_connections_refused_total{{reason=\"{reason}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&needle))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_refusal_counters() {
        let m = "# TYPE shunt_connections_refused_total counter\n\
                 shunt_connections_refused_total{reason=\"proxy_missing\"} 12\n\
                 shunt_connections_refused_total{reason=\"proxy_untrusted\"} 0\n";
        assert_eq!(refused(m, "proxy_missing"), 12);
        assert_eq!(refused(m, "proxy_untrusted"), 0);
        assert_eq!(refused(m, "ip"), 0);
    }
}
