//! deploy/grafana/shunt.json queries only metrics that shunt exports: every
//! `shunt_*` name in the dashboard must appear as a sample in a real
//! `/metrics` answer, during and after a call that exercises the call layer
//! (frames, pings, a close). deploy/grafana/alerts.yml's rules likewise use
//! only metrics that a shunt with TLS exports after a reload.

use crate::support;

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value;
use support::ws::{self, Msg};
use support::{echo_backend, eventually, shunt, ws_connect};

fn dashboard() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana/shunt.json");
    let text = std::fs::read_to_string(path).expect("read deploy/grafana/shunt.json");
    serde_json::from_str(&text).expect("deploy/grafana/shunt.json is JSON")
}

/// Every string in `value`, depth first.
fn strings<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
    match value {
        Value::String(s) => out.push(s),
        Value::Array(items) => items.iter().for_each(|v| strings(v, out)),
        Value::Object(map) => map.values().for_each(|v| strings(v, out)),
        _ => {}
    }
}

/// The `shunt_*` identifiers in a query.
fn metric_names(query: &str) -> impl Iterator<Item = &str> {
    query
        .match_indices("shunt_")
        .filter(move |(i, _)| {
            !query[..*i]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        })
        .map(move |(i, _)| {
            let rest = &query[i..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
}

/// Whether `/metrics` text has a sample of `name` (`name{...} v` or `name v`).
fn has_sample(metrics: &str, name: &str) -> bool {
    metrics.lines().any(|line| {
        line.strip_prefix(name)
            .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
    })
}

#[test]
fn dashboard_is_importable_and_covers_the_issue() {
    let d = dashboard();
    assert!(d["uid"].is_string() && d["title"].is_string());
    assert_eq!(d["__inputs"][0]["pluginId"], "prometheus");
    let panels = d["panels"].as_array().expect("panels");
    let exprs: Vec<&str> = panels
        .iter()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .filter_map(|t| t["expr"].as_str())
        .collect();
    for metric in [
        "shunt_calls_active",
        "shunt_frame_gap_seconds_bucket",
        "shunt_call_stalls_total",
        "shunt_ping_rtt_seconds_bucket",
        "shunt_tunnel_closes_total",
        "shunt_upstream_up",
        "shunt_upgrades_total",
    ] {
        assert!(
            exprs.iter().any(|e| metric_names(e).any(|n| n == metric)),
            "no panel queries {metric}"
        );
    }
    let heatmap = panels
        .iter()
        .find(|p| p["type"] == "heatmap")
        .expect("a heatmap panel");
    let target = &heatmap["targets"][0];
    assert_eq!(target["format"], "heatmap");
    assert!(
        target["expr"]
            .as_str()
            .is_some_and(|e| e.contains("shunt_frame_gap_seconds_bucket")),
        "{target}"
    );
    let mut ids = BTreeSet::new();
    for p in panels {
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "duplicate id in {p}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_queries_is_exported() {
    let dashboard = dashboard();
    let mut all = Vec::new();
    strings(&dashboard, &mut all);
    let wanted: BTreeSet<&str> = all.iter().flat_map(|s| metric_names(s)).collect();
    assert!(wanted.len() >= 8, "too few metrics found: {wanted:?}");

    let backend = echo_backend().name("direct").spawn().await;
    let proxy = shunt()
        .direct(backend.url())
        .route("/frontend-audio=direct")
        .arg("--ping-interval", "100ms")
        .arg("--ping-timeout", "2s")
        .start_ready()
        .await;
    // A call with frames both ways, long enough for a ping and its pong.
    let (mut call, _) = ws_connect(proxy.addr(), "/frontend-audio", &[])
        .await
        .expect("call");
    ws::recv_text(&mut call).await.expect("hello");
    for i in 0..20 {
        ws::send_binary(&mut call, &[i; 160]).await.expect("send");
        match ws::recv(&mut call).await.expect("echo") {
            Msg::Binary(b) => assert_eq!(b, vec![i; 160]),
            other => panic!("expected binary echo, got {other:?}"),
        }
    }
    // Gauges of live calls are sampled now; histograms of ended calls later.
    let mut during = String::new();
    let pinged = eventually(Duration::from_secs(5), async || {
        let (_, metrics) = proxy.admin_get("/metrics").await.expect("/metrics");
        during = metrics;
        during.lines().any(|l| {
            l.starts_with("shunt_ping_rtt_seconds_count{")
                && l.rsplit(' ')
                    .next()
                    .and_then(|v| v.parse::<f64>().ok())
                    .is_some_and(|n| n > 0.0)
        })
    })
    .await;
    assert!(pinged, "no ping RTT recorded within 5 s:\n{during}");
    ws::send_frame(&mut call, fastwebsockets::Frame::close(1000, b"bye"))
        .await
        .expect("close");
    let _ = ws::wait_closed(&mut call, Duration::from_secs(5)).await;

    let mut missing = Vec::new();
    let closed = eventually(Duration::from_secs(5), async || {
        let (_, metrics) = proxy.admin_get("/metrics").await.expect("/metrics");
        missing = wanted
            .iter()
            .filter(|name| !has_sample(&metrics, name) && !has_sample(&during, name))
            .map(|n| (*n).to_owned())
            .collect();
        missing.is_empty()
    })
    .await;
    assert!(
        closed,
        "metrics queried by deploy/grafana/shunt.json but not in /metrics: {missing:?}"
    );
}

#[test]
fn metric_names_are_found_in_queries() {
    let names: Vec<_> = metric_names(
        r#"histogram_quantile(0.5, sum by (le) (rate(shunt_ping_rtt_seconds_bucket{route=~"$route"}[5m]))) / shunt_x"#,
    )
    .collect();
    assert_eq!(names, ["shunt_ping_rtt_seconds_bucket", "shunt_x"]);
    assert_eq!(metric_names("my_shunt_thing").count(), 0);
    assert!(has_sample("a_b{x=\"1\"} 2\n", "a_b"));
    assert!(!has_sample("a_bc 2\n", "a_b"));
}

/// deploy/grafana/alerts.yml: the two alerts exist, with their thresholds,
/// and every metric their expressions use is exported by a TLS shunt after
/// a reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_alert_rules_use_is_exported() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana/alerts.yml");
    let rules = std::fs::read_to_string(path).expect("read deploy/grafana/alerts.yml");
    let exprs: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("expr:"))
        .map(str::trim)
        .collect();
    assert_eq!(
        exprs,
        [
            "shunt_certificate_expiry_seconds < 14 * 24 * 3600",
            "shunt_last_reload_success == 0"
        ]
    );
    for alert in ["ShuntCertificateExpiresSoon", "ShuntReloadFailed"] {
        assert!(rules.contains(&format!("alert: {alert}")), "{alert}");
    }

    let backend = echo_backend().name("direct").spawn().await;
    let pki = support::tls::TestPki::new();
    let (cert, key) = pki.write("localhost", &["localhost"]);
    let proxy = shunt()
        .direct(backend.url())
        .tls(&cert, &key)
        .start_ready()
        .await;
    assert_eq!(proxy.admin_post("/reload").await.0, 200);
    let (_, metrics) = proxy.admin_get("/metrics").await.expect("/metrics");
    for name in exprs.iter().flat_map(|e| metric_names(e)) {
        assert!(
            has_sample(&metrics, name),
            "{name} not in /metrics:\n{metrics}"
        );
    }
    assert!(
        has_sample(&metrics, "shunt_reloads_total"),
        "shunt_reloads_total not in /metrics:\n{metrics}"
    );
}
