//! The active health probe of one upstream: the loop that probes it every
//! interval, and one probe of each kind (`tcp`, `http`, `ws`).
//!
//! Results go to the upstream's [`Health`] record; a failure is a typed
//! [`ProbeError`], kept as the record's [`HealthReason`], whose `Display`
//! is what logs and `/status` show. The request itself is sent by the
//! shared client in [`crate::dial::probe`], which `shunt doctor` uses too.

use std::sync::Arc;

use fastwebsockets::{Frame, OpCode, Role, WebSocket};
use http::{Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::health::{Health, HealthReason};
use crate::config::{HealthSpec, ProbeKind, UpstreamUrl};
use crate::dial::probe::{SendError, send, ws_upgrade};
use crate::dial::{ConnectError, connect};

/// Why one probe failed. Upstream's by definition: the probe is shunt's own
/// request. Each message names the request, as logs and `/status` show it.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The upstream could not be reached.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The request got no response head.
    #[error(transparent)]
    Send(#[from] SendError),
    /// `http`: the GET answered something other than 2xx or 3xx.
    #[error("GET {path} answered {status}")]
    Status {
        /// The probed path.
        path: String,
        /// What it answered.
        status: StatusCode,
    },
    /// `ws`: the handshake answered something other than 101.
    #[error("websocket handshake on {path} answered {status}")]
    NotUpgraded {
        /// The probed path.
        path: String,
        /// What it answered.
        status: StatusCode,
    },
    /// `ws`: a 101 whose connection could not be taken over.
    #[error("websocket handshake on {path}")]
    Upgrade {
        /// The probed path.
        path: String,
        /// What hyper saw.
        #[source]
        source: hyper::Error,
    },
    /// `ws`: the closing frame could not be sent.
    #[error("websocket close on {path}")]
    Close {
        /// The probed path.
        path: String,
        /// What the WebSocket layer saw.
        #[source]
        source: fastwebsockets::WebSocketError,
    },
}

/// Probe `url` every `spec.interval` until `stop` is cancelled.
///
/// Started by [`super::Upstream::start`] for an upstream a route uses, and
/// stopped through `stop` when that upstream is dropped (a reload that
/// removes or changes it) or at shutdown. Each probe, connect included, is
/// bounded by `spec.timeout`; a timeout counts as a failure. While a
/// WebSocket mark is due, a re-test on its path follows the probe.
/// `tracker` tracks the probe connections' hyper tasks.
pub(crate) async fn probe_loop(
    url: UpstreamUrl,
    tls: Option<Arc<ClientConfig>>,
    spec: HealthSpec,
    health: Arc<Health>,
    stop: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let result = tokio::select! {
            r = tokio::time::timeout(spec.timeout, probe(&url, tls.as_ref(), &spec, &tracker, &stop)) => r,
            () = stop.cancelled() => return,
        };
        match result {
            Ok(Ok(())) => {
                health.record_success();
                if matches!(spec.check, ProbeKind::Ws(_)) {
                    health.record_websocket_success();
                }
            }
            Ok(Err(e)) => health.record_failure(HealthReason::Probe(Arc::new(e))),
            Err(_) => health.record_failure(HealthReason::ProbeTimeout(spec.timeout)),
        }
        if let Some(path) = health.websocket_retest_due() {
            let retest = HealthSpec {
                check: ProbeKind::Ws(path),
                ..spec.clone()
            };
            let result = tokio::select! {
                r = tokio::time::timeout(spec.timeout, probe(&url, tls.as_ref(), &retest, &tracker, &stop)) => r,
                () = stop.cancelled() => return,
            };
            match result {
                Ok(Ok(())) => health.record_websocket_success(),
                Ok(Err(e)) => health.websocket_retest_failed(&HealthReason::Probe(Arc::new(e))),
                Err(_) => health.websocket_retest_failed(&HealthReason::ProbeTimeout(spec.timeout)),
            }
        }
        tokio::select! {
            () = tokio::time::sleep(spec.interval) => {}
            () = stop.cancelled() => return,
        }
    }
}

/// The `User-Agent` of every probe: a backend that counts connected agents
/// (or logs handshakes) can tell shunt's probes from browsers.
pub(crate) const PROBE_USER_AGENT: &str = concat!("shunt-health/", env!("CARGO_PKG_VERSION"));

/// Sent with value `1` on every probe, for a backend that filters on a header.
pub(crate) const PROBE_HEADER: &str = "x-shunt-probe";

/// One probe.
/// `tcp`: the connect is the check. `http`: `GET path` must answer 2xx or
/// 3xx. `ws`: the upgrade must be answered 101, then shunt sends a Close
/// (1000) and waits for the answer or the socket's end, so the backend
/// sees a clean close rather than a reset.
async fn probe(
    url: &UpstreamUrl,
    tls: Option<&Arc<ClientConfig>>,
    spec: &HealthSpec,
    tracker: &TaskTracker,
    stop: &CancellationToken,
) -> Result<(), ProbeError> {
    let stream = connect(url, tls, spec.timeout).await?;
    let request = |path: &str| {
        Request::get(path)
            .header(header::HOST, url.authority())
            .header(header::USER_AGENT, PROBE_USER_AGENT)
            .header(PROBE_HEADER, "1")
    };
    match &spec.check {
        ProbeKind::Tcp => Ok(()),
        ProbeKind::Http(path) => {
            let resp = send(stream, request(path), tracker, stop).await?;
            let status = resp.status();
            if status.is_success() || status.is_redirection() {
                Ok(())
            } else {
                Err(ProbeError::Status {
                    path: path.clone(),
                    status,
                })
            }
        }
        ProbeKind::Ws(path) => {
            let key = fastwebsockets::handshake::generate_key();
            let handshake = ws_upgrade(request(path), &key);
            let mut resp = send(stream, handshake, tracker, stop).await?;
            if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
                return Err(ProbeError::NotUpgraded {
                    path: path.clone(),
                    status: resp.status(),
                });
            }
            let upgraded =
                hyper::upgrade::on(&mut resp)
                    .await
                    .map_err(|source| ProbeError::Upgrade {
                        path: path.clone(),
                        source,
                    })?;
            let mut ws = WebSocket::after_handshake(TokioIo::new(upgraded), Role::Client);
            ws.write_frame(Frame::close(1000, b""))
                .await
                .map_err(|source| ProbeError::Close {
                    path: path.clone(),
                    source,
                })?;
            // Read until the upstream answers the close (a hello may come first);
            // a peer that just closes the socket after our Close is fine too.
            while let Ok(frame) = ws.read_frame().await {
                if frame.opcode == OpCode::Close {
                    break;
                }
            }
            Ok(())
        }
    }
}
