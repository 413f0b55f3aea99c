//! The WebSocket mark of an upstream's health record: an upstream that answers
//! plain HTTP but not upgrades (an nginx without the upgrade headers, or one
//! whose own backend is down) is put last for WebSocket only, so it keeps
//! serving plain requests. The mark remembers the routes whose upgrades saw
//! it fail, so readiness judges only routes that carry WebSocket. It does not
//! last forever: once it is a health interval old (the backoff), upgrades try
//! the upstream in its normal order again, and the probe loop re-tests it with
//! a WebSocket handshake on the path that failed, once per interval. An
//! upgrade, `ws:` probe or re-test through it that succeeds clears the mark.
//! The WebSocket check ([`crate::upstream::websocket_check`]) sets and clears
//! it the same way, before any real upgrade has needed the upstream.
//!
//! The mark's reason is the typed [`UpgradeNotForwarded`] the forward stage
//! returned; its `Display` is what the warning, `/status`'s
//! `websocket_error` and `/readyz`'s `degraded` list show.

use super::{Health, HealthReason};
use crate::forward::UpgradeNotForwarded;

/// Upgrades through the upstream fail while plain HTTP works.
#[derive(Debug)]
pub(super) struct WebSocketMark {
    /// Why (the warning's text); its path is the one the re-test tries.
    reason: UpgradeNotForwarded,
    /// The labels of the routes whose upgrades saw it.
    routes: Vec<String>,
    /// When it was last seen failing (a tokio instant, so tests can pause time).
    since: tokio::time::Instant,
}

impl WebSocketMark {
    /// Why upgrades through the upstream fail.
    pub(super) fn reason(&self) -> UpgradeNotForwarded {
        self.reason.clone()
    }
}

impl Health {
    /// Why WebSocket upgrades through it fail, if they do (see [`Health::record_websocket_failure`]).
    pub fn websocket_error(&self) -> Option<UpgradeNotForwarded> {
        self.lock().websocket.as_ref().map(|m| m.reason())
    }

    /// Whether an upgrade on route `route` (its label) saw the WebSocket failure
    /// that still stands: the route carries WebSocket and this upstream failed it.
    pub fn websocket_failed_on(&self, route: &str) -> bool {
        self.lock()
            .websocket
            .as_ref()
            .is_some_and(|m| m.routes.iter().any(|r| r == route))
    }

    /// Whether upgrades should try it last: it is marked, and the mark is
    /// younger than the backoff. Past the backoff it takes its normal place
    /// again, so a fixed upstream is noticed.
    pub fn websocket_put_last(&self) -> bool {
        self.lock()
            .websocket
            .as_ref()
            .is_some_and(|m| m.since.elapsed() < self.websocket_backoff)
    }

    /// The path to re-test with a WebSocket handshake, once the mark is at
    /// least the backoff old; `None` when not marked or not yet due.
    pub fn websocket_retest_due(&self) -> Option<String> {
        self.lock()
            .websocket
            .as_ref()
            .filter(|m| m.since.elapsed() >= self.websocket_backoff)
            .map(|m| m.reason.path.clone())
    }

    /// The re-test failed too: the mark stands for another backoff (no new warning).
    pub fn websocket_retest_failed(&self, why: &HealthReason) {
        let mut i = self.lock();
        if let Some(m) = i.websocket.as_mut() {
            m.since = tokio::time::Instant::now();
            tracing::debug!(upstream = %self.name, why = %why, "WebSocket re-test failed; still tried last for upgrades");
        }
    }

    /// An upgrade on route `route` (its label) was answered, but not with
    /// 101 or a 4xx (`reason`, which names the path): it does not carry
    /// WebSocket (an nginx without the upgrade headers, or whose backend is
    /// down). Only WebSocket is affected: the state, and so plain HTTP, stay
    /// as they are. Logged once per change of reason.
    pub fn record_websocket_failure(&self, reason: &UpgradeNotForwarded, route: &str) {
        let mut i = self.lock();
        i.last_error = Some(HealthReason::WebSocket(reason.clone()));
        if i.websocket.as_ref().is_none_or(|m| m.reason != *reason) {
            tracing::warn!(upstream = %self.name, reason = %reason, "{reason}");
        }
        let now = tokio::time::Instant::now();
        let mark = i.websocket.get_or_insert_with(|| WebSocketMark {
            reason: reason.clone(),
            routes: Vec::new(),
            since: now,
        });
        mark.reason.clone_from(reason);
        mark.since = now;
        if !mark.routes.iter().any(|r| r == route) {
            mark.routes.push(route.to_owned());
        }
    }

    /// An upgrade, a `ws:` probe, a re-test or the WebSocket checks through
    /// it succeeded: WebSocket works again.
    pub fn record_websocket_success(&self) {
        let mut i = self.lock();
        if i.websocket.take().is_some() {
            tracing::info!(upstream = %self.name, "upstream {} forwards WebSocket upgrades again", self.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::UpstreamName;
    use crate::upstream::health::State;
    use http::StatusCode;
    use std::time::Duration;

    use crate::upstream::health::tests::health;

    /// `upstream` answered `status` to an upgrade on `path`.
    fn not_forwarded(upstream: &str, status: u16, path: &str) -> UpgradeNotForwarded {
        UpgradeNotForwarded {
            upstream: UpstreamName(upstream.into()),
            status: StatusCode::from_u16(status).unwrap(),
            path: path.into(),
        }
    }

    /// A failed upgrade marks WebSocket only: the state stays `Up`, a plain
    /// probe does not clear the mark, a WebSocket success does.
    #[test]
    fn a_websocket_failure_leaves_the_state_and_clears_on_success() {
        let h = health(1, 1);
        h.record_success();
        h.record_websocket_failure(&not_forwarded("nginx", 200, "/a"), "/a");
        let v = h.view();
        assert_eq!(v.state, State::Up, "plain HTTP keeps the upstream");
        let shown = v.websocket_error.as_ref().map(ToString::to_string);
        assert_eq!(
            shown.as_deref(),
            Some(
                "nginx answered 200 to a WebSocket upgrade on /a: it does not forward upgrades (proxy_http_version 1.1, Upgrade/Connection headers)"
            )
        );
        assert_eq!(v.last_error.map(|r| r.to_string()), shown);
        h.record_success();
        assert!(
            h.websocket_error().is_some(),
            "a tcp/http probe says nothing about upgrades"
        );
        h.record_websocket_success();
        assert_eq!(h.websocket_error(), None);
        assert_eq!(h.state(), State::Up);
    }

    /// The mark lists the routes that saw it, puts the upstream last for one
    /// interval, then asks for a re-test; a failed re-test starts a new interval.
    #[tokio::test(start_paused = true)]
    async fn a_websocket_mark_names_its_routes_and_backs_off_for_one_interval() {
        let h = health(1, 1); // interval 1 s: the backoff
        h.record_success();
        assert!(!h.websocket_put_last());
        assert_eq!(h.websocket_retest_due(), None);
        h.record_websocket_failure(&not_forwarded("x", 502, "/audio/room"), "/audio");
        assert!(h.websocket_failed_on("/audio"));
        assert!(
            !h.websocket_failed_on("/"),
            "only routes whose upgrades saw it"
        );
        assert!(h.websocket_put_last());
        assert_eq!(h.websocket_retest_due(), None, "not before the backoff");

        tokio::time::advance(Duration::from_millis(999)).await;
        assert!(h.websocket_put_last());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(!h.websocket_put_last(), "back in its normal order");
        assert_eq!(h.websocket_retest_due().as_deref(), Some("/audio/room"));

        // A failed re-test keeps the mark (and its routes) for another backoff.
        h.websocket_retest_failed(&HealthReason::WebSocket(not_forwarded(
            "x",
            502,
            "/audio/room",
        )));
        assert!(h.websocket_put_last());
        assert_eq!(h.websocket_retest_due(), None);
        assert!(h.websocket_failed_on("/audio"));

        // Another route's failure adds it; a new reason replaces the old one.
        h.record_websocket_failure(&not_forwarded("x", 200, "/other"), "/other");
        assert!(h.websocket_failed_on("/audio") && h.websocket_failed_on("/other"));
        assert_eq!(h.websocket_error(), Some(not_forwarded("x", 200, "/other")));

        h.record_websocket_success();
        assert!(!h.websocket_failed_on("/audio"));
        assert!(!h.websocket_put_last());
        assert_eq!(h.websocket_retest_due(), None);
    }
}
