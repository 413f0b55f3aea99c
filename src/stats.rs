//! Counters shown by `/status`: requests and upgrades by status class, and
//! live tunnels by route and upstream.
//!
//! Updated from the request path with relaxed atomics (one add per request);
//! the tunnel gauge is a small map looked up once when a tunnel opens; its
//! guard updates that entry's atomics when it closes.
//!
//! The counters outlive reloads (they live in the runtime, not the
//! snapshot), so `/metrics` never goes backwards when the configuration
//! changes. A closed tunnel adds its bytes to the totals of its route and
//! upstream when its guard drops, so the totals are exact without the tunnel
//! touching a shared counter per read.

use crate::prometheus::escape;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use http::StatusCode;

use crate::calls::CallRegistry;
use crate::config::UpstreamName;
use crate::telemetry::refusals::Reason;
use crate::tls::groups::HandshakeCounts;

/// Process-wide counters.
#[derive(Debug, Default)]
pub struct Stats {
    requests: ByClass,
    upgrades: ByClass,
    tunnels: Mutex<BTreeMap<(String, UpstreamName), Arc<TunnelCounts>>>,
    /// Refused authentications by route and reason (`shunt_auth_failures_total`).
    auth_failures: Mutex<BTreeMap<(String, &'static str), u64>>,
    refused: [AtomicU64; Reason::ALL.len()],
    /// Live calls (WebSocket tunnels) and their metrics, for `/calls`.
    pub calls: Arc<CallRegistry>,
    /// TLS handshakes on the listener per negotiated key exchange group and kind.
    pub tls_handshakes: HandshakeCounts,
}

/// Counts of one kind of exchange by status class (1xx..5xx).
#[derive(Debug, Default)]
struct ByClass([AtomicU64; 5]);

impl ByClass {
    fn add(&self, status: StatusCode) {
        let class = (status.as_u16() / 100).clamp(1, 5) as usize - 1;
        self.0[class].fetch_add(1, Ordering::Relaxed);
    }

    fn counts(&self) -> [u64; 5] {
        std::array::from_fn(|i| self.0[i].load(Ordering::Relaxed))
    }

    fn to_json(&self) -> serde_json::Value {
        let mut map = serde_json::Map::new();
        for (i, c) in self.0.iter().enumerate() {
            map.insert(format!("{}xx", i + 1), c.load(Ordering::Relaxed).into());
        }
        serde_json::Value::Object(map)
    }
}

/// Live and total tunnels of one route and upstream, with bytes relayed;
/// shared by the guards of its tunnels (one pointer each, no key per tunnel).
#[derive(Debug, Default)]
pub(crate) struct TunnelCounts {
    /// Tunnels open now.
    pub active: AtomicU64,
    /// Tunnels opened since start.
    pub total: AtomicU64,
    /// Bytes the closed tunnels carried from client to backend.
    pub bytes_downstream_to_upstream: AtomicU64,
    /// Bytes the closed tunnels carried from backend to client.
    pub bytes_upstream_to_downstream: AtomicU64,
}

impl Stats {
    /// Count one refused authentication on `route` for `reason`.
    pub fn auth_failure(&self, route: &str, reason: &'static str) {
        let mut map = self
            .auth_failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *map.entry((route.to_owned(), reason)).or_default() += 1;
    }

    /// Count one answered request; `upgrade` for WebSocket handshakes.
    pub fn record(&self, status: StatusCode, upgrade: bool) {
        if upgrade {
            self.upgrades.add(status);
        } else {
            self.requests.add(status);
        }
    }

    /// Count a connection refused or closed before it carried a request.
    pub(crate) fn refused(&self, reason: Reason) {
        self.refused[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Count a tunnel as open until the returned guard is dropped.
    pub fn open_tunnel(&self, route: &str, upstream: &UpstreamName) -> TunnelGuard {
        let counts = {
            let mut map = self.lock_tunnels();
            let found = map
                .iter()
                .find(|((r, u), _)| r == route && u == upstream)
                .map(|(_, c)| c.clone());
            found.unwrap_or_else(|| {
                let c = Arc::<TunnelCounts>::default();
                map.insert((route.to_owned(), upstream.clone()), c.clone());
                c
            })
        };
        counts.active.fetch_add(1, Ordering::Relaxed);
        counts.total.fetch_add(1, Ordering::Relaxed);
        TunnelGuard {
            counts,
            to_upstream: 0,
            to_downstream: 0,
        }
    }

    fn lock_tunnels(
        &self,
    ) -> std::sync::MutexGuard<'_, BTreeMap<(String, UpstreamName), Arc<TunnelCounts>>> {
        self.tunnels.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Total live tunnels.
    pub fn active_tunnels(&self) -> u64 {
        self.lock_tunnels()
            .values()
            .map(|c| c.active.load(Ordering::Relaxed))
            .sum()
    }

    /// `{"requests": {...}, "upgrades": {...}, "tunnels": [...]}` parts of `/status`.
    pub fn to_json(&self) -> (serde_json::Value, serde_json::Value, serde_json::Value) {
        let tunnels = self
            .lock_tunnels()
            .iter()
            .map(|((route, upstream), c)| {
                serde_json::json!({
                    "route": route,
                    "upstream": upstream.0,
                    "active": c.active.load(Ordering::Relaxed),
                    "total": c.total.load(Ordering::Relaxed),
                    "bytes_downstream_to_upstream": c.bytes_downstream_to_upstream.load(Ordering::Relaxed),
                    "bytes_upstream_to_downstream": c.bytes_upstream_to_downstream.load(Ordering::Relaxed),
                })
            })
            .collect();
        (
            self.requests.to_json(),
            self.upgrades.to_json(),
            serde_json::Value::Array(tunnels),
        )
    }
}

impl Stats {
    /// Prometheus text exposition of the counters (the `/metrics` body, without health).
    pub fn to_prometheus(&self, out: &mut String) {
        use std::fmt::Write;
        for (name, help, by) in [
            (
                "shunt_requests_total",
                "Plain HTTP requests answered, by status class.",
                &self.requests,
            ),
            (
                "shunt_upgrades_total",
                "WebSocket handshakes answered, by status class.",
                &self.upgrades,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (i, n) in by.counts().iter().enumerate() {
                let _ = writeln!(out, "{name}{{class=\"{}xx\"}} {n}", i + 1);
            }
        }
        let _ = writeln!(
            out,
            "# HELP shunt_auth_failures_total Refused authentications by route and reason.\n# TYPE shunt_auth_failures_total counter"
        );
        for ((route, reason), n) in self
            .auth_failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
        {
            let _ = writeln!(
                out,
                "shunt_auth_failures_total{{route=\"{}\",reason=\"{reason}\"}} {n}",
                escape(route)
            );
        }
        let _ = writeln!(
            out,
            "# HELP shunt_connections_refused_total Connections refused or closed before a request, by reason.\n# TYPE shunt_connections_refused_total counter"
        );
        for reason in Reason::ALL {
            let n = self.refused[reason.index()].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "shunt_connections_refused_total{{reason=\"{}\"}} {n}",
                reason.as_str()
            );
        }
        let tunnels = self.lock_tunnels();
        let _ = writeln!(
            out,
            "# HELP shunt_tunnels_active Open tunnels by route and upstream.\n# TYPE shunt_tunnels_active gauge"
        );
        for ((route, upstream), c) in tunnels.iter() {
            let _ = writeln!(
                out,
                "shunt_tunnels_active{{route=\"{}\",upstream=\"{}\"}} {}",
                escape(route),
                escape(&upstream.0),
                c.active.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP shunt_tunnel_bytes_total Bytes relayed by closed tunnels.\n# TYPE shunt_tunnel_bytes_total counter"
        );
        for ((route, upstream), c) in tunnels.iter() {
            for (direction, n) in [
                ("to_upstream", &c.bytes_downstream_to_upstream),
                ("to_downstream", &c.bytes_upstream_to_downstream),
            ] {
                let n = n.load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "shunt_tunnel_bytes_total{{route=\"{}\",upstream=\"{}\",direction=\"{direction}\"}} {n}",
                    escape(route),
                    escape(&upstream.0)
                );
            }
        }
    }
}

/// Holds one tunnel in the gauge; dropping it records the close and its bytes.
#[derive(Debug)]
pub struct TunnelGuard {
    counts: Arc<TunnelCounts>,
    to_upstream: u64,
    to_downstream: u64,
}

impl TunnelGuard {
    /// Record bytes relayed each way; added to the totals when the guard drops.
    pub fn add_bytes(&mut self, to_upstream: u64, to_downstream: u64) {
        self.to_upstream += to_upstream;
        self.to_downstream += to_downstream;
    }
}

impl Drop for TunnelGuard {
    fn drop(&mut self) {
        let c = &self.counts;
        c.bytes_downstream_to_upstream
            .fetch_add(self.to_upstream, Ordering::Relaxed);
        c.bytes_upstream_to_downstream
            .fetch_add(self.to_downstream, Ordering::Relaxed);
        c.active.fetch_sub(1, Ordering::Relaxed);
    }
}
