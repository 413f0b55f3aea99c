//! The live, hot-swappable state: one immutable [`Snapshot`] behind `ArcSwap`.
//!
//! A request loads the snapshot once and uses it to the end, so a reload never
//! changes a request (or a tunnel) halfway. Building a snapshot reuses every
//! upstream whose settings did not change, keeping its health state and probe
//! task, so a reload does not make healthy upstreams flap to "unknown".

use std::collections::BTreeMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, Timeouts, UpstreamName};
use crate::router::{Route, Router};
use crate::upstream::Upstream;

/// Everything a request needs that a reload may change.
#[derive(Debug)]
pub struct Snapshot {
    /// Increases by one with every successful reload; 1 at start.
    pub generation: u64,
    pub router: Router,
    pub upstreams: BTreeMap<UpstreamName, Arc<Upstream>>,
    pub timeouts: Timeouts,
    pub max_header_bytes: usize,
    /// The configuration it was built from.
    pub config: Arc<Config>,
}

impl Snapshot {
    /// Build from a validated config, reusing unchanged upstreams of `previous`.
    pub fn build(
        config: Config,
        previous: Option<&Snapshot>,
        root: &CancellationToken,
        tracker: &TaskTracker,
    ) -> Snapshot {
        let used = |name: &UpstreamName| config.routes.iter().any(|r| r.via.contains(name));
        let upstreams: BTreeMap<UpstreamName, Arc<Upstream>> = config
            .upstreams
            .iter()
            .map(|spec| {
                let probed = used(&spec.name);
                let reused = previous
                    .and_then(|p| p.upstreams.get(&spec.name))
                    .filter(|old| old.spec == *spec && old.probed == probed)
                    .cloned();
                let upstream =
                    reused.unwrap_or_else(|| Upstream::start(spec.clone(), probed, root, tracker));
                (spec.name.clone(), upstream)
            })
            .collect();
        let routes = config
            .routes
            .iter()
            .map(|spec| {
                Arc::new(Route {
                    label: spec.label(),
                    // Validation guarantees every name resolves.
                    via: spec
                        .via
                        .iter()
                        .filter_map(|n| upstreams.get(n).cloned())
                        .collect(),
                    spec: spec.clone(),
                })
            })
            .collect();
        Snapshot {
            generation: previous.map_or(1, |p| p.generation + 1),
            router: Router::new(routes),
            upstreams,
            timeouts: config.timeouts,
            max_header_bytes: config.max_header_bytes,
            config: Arc::new(config),
        }
    }
}

/// The current snapshot; cheap to load from any task.
pub type Live = ArcSwap<Snapshot>;
