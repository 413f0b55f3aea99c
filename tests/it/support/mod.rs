//! Test support: an echo backend standing in for the call backend, a real
//! nginx in front of it, shunt itself in-process, and clients (WebSocket,
//! HTTP, raw TCP). Everything binds `127.0.0.1:0`, every wait is bounded,
//! and everything started here is stopped on drop.
//!
//! A module of the one test crate (`tests/it`), so rustc reports a helper
//! no test uses; `tests/allocations.rs` includes it too, with the allows.

pub(crate) mod bin;
pub(crate) mod calls;
pub(crate) mod echo;
pub(crate) mod examples;
pub(crate) mod files;
pub(crate) mod http;
pub(crate) mod logs;
pub(crate) mod nginx;
pub(crate) mod pebble;
pub(crate) mod raw;
pub(crate) mod require;
pub(crate) mod shunt;
pub(crate) mod tls;
pub(crate) mod ws;

use std::net::SocketAddr;
use std::time::Duration;

pub(crate) use self::files::TempFile;
pub(crate) use self::http::{
    ChunkedBody, HttpConn, HttpResponse, http_get, http_post, seen_header,
};
pub(crate) use self::logs::{capture_logs, logs};
pub(crate) use self::nginx::{Nginx, nginx};
pub(crate) use self::require::{Part, require};
pub(crate) use self::shunt::{Shunt, shunt};
pub(crate) use self::ws::{Msg, RawResponse, Ws, raw_request, ws_connect};

/// Errors of the helpers: anything, with a message.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Bound on one network exchange (connect, handshake, request, message).
pub(crate) const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// The one polling helper: calls `check` every 20 ms until it returns true
/// or `limit` has passed; returns whether it did. Tests wait on a state
/// with it, never with a bare sleep.
pub(crate) async fn eventually(limit: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// [`eventually`] for a synchronous test: blocks the calling thread (never
/// call it on an async worker) on a small runtime of its own while `check`
/// is polled every 20 ms, at most `limit`; returns whether it turned true.
pub(crate) fn eventually_blocking(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a current-thread runtime")
        .block_on(eventually(limit, async || check()))
}

/// A port on 127.0.0.1 that was free a moment ago (for a process that must
/// be told its port up front, like nginx, or a restart on the same port).
pub(crate) fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

/// Inside an [`eventually`] check: remember `seen` as the last state (for the
/// failure message) and answer "not yet".
pub(crate) fn not_yet(last: &mut String, seen: impl std::fmt::Display) -> bool {
    *last = seen.to_string();
    false
}

/// The preamble most single-backend tests share: an echo backend named
/// `direct-backend`, and shunt in front of it (`--direct` to it, then each
/// `(flag, value)` of `flags`), ready. Keep the backend alive as long as the
/// test needs it: dropping it stops it.
pub(crate) async fn direct_shunt(flags: &[(&str, &str)]) -> (EchoBackend, Shunt) {
    let backend = echo_backend().name("direct-backend").spawn().await;
    let mut builder = shunt().direct(backend.url());
    for (flag, value) in flags {
        builder = builder.arg(flag, *value);
    }
    let shunt = builder.start_ready().await;
    (backend, shunt)
}

/// Builder returned by [`echo_backend`].
#[derive(Debug, Clone)]
pub(crate) struct EchoBuilder {
    name: String,
}

/// Starts building an echo backend (named `backend` unless `.name(..)`).
pub(crate) fn echo_backend() -> EchoBuilder {
    EchoBuilder {
        name: "backend".to_owned(),
    }
}

impl EchoBuilder {
    /// The name announced in `x-backend` and the WebSocket hello.
    pub(crate) fn name(mut self, name: &str) -> Self {
        self.name = name.to_owned();
        self
    }

    /// Binds `127.0.0.1:0` and starts serving.
    pub(crate) async fn spawn(self) -> EchoBackend {
        EchoBackend::spawn_on(SocketAddr::from(([127, 0, 0, 1], 0)), &self.name).await
    }
}

/// A running echo backend (see `echo.rs` for its behaviour).
pub(crate) struct EchoBackend {
    server: Option<echo::EchoServer>,
    addr: SocketAddr,
    name: String,
}

impl EchoBackend {
    /// Binds `addr` (a port of 0 picks one; a given port is retried for a
    /// while in case it is still held) and starts serving.
    pub(crate) async fn spawn_on(addr: SocketAddr, name: &str) -> EchoBackend {
        let (mut bound, mut last) = (None, String::new());
        eventually(Duration::from_secs(5), async || {
            match echo::EchoServer::bind(addr, name).await {
                Ok(server) => bound = Some(server),
                Err(e) => last = e.to_string(),
            }
            bound.is_some()
        })
        .await;
        let Some(server) = bound else {
            panic!("echo backend {name}: bind {addr}: {last}");
        };
        EchoBackend {
            addr: server.addr(),
            name: name.to_owned(),
            server: Some(server),
        }
    }

    /// The bound address (stable across `stop`/`restart`).
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`.
    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// How many WebSocket sessions the backend has open (0 when stopped).
    pub(crate) fn active_websockets(&self) -> usize {
        self.server.as_ref().map_or(0, |s| s.active_websockets())
    }

    /// How many plain HTTP requests the backend has received (since its
    /// last start).
    pub(crate) fn requests(&self) -> usize {
        self.server.as_ref().map_or(0, |s| s.requests())
    }

    /// The request targets that reached the backend since its last start.
    pub(crate) fn seen(&self) -> Vec<String> {
        self.server.as_ref().map_or_else(Vec::new, |s| s.seen())
    }

    /// Closes the listener and every live connection: the port refuses
    /// connections afterwards.
    pub(crate) async fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.stop().await;
        }
    }

    /// Serves again on the same address after `stop`.
    pub(crate) async fn restart(&mut self) {
        self.stop().await;
        let again = EchoBackend::spawn_on(self.addr, &self.name).await;
        *self = again;
    }
}

/// The builder of the tests that SIGTERM the binary mid-tunnel: the child
/// mode's `shunt run` in front of `direct` with a short drain
/// (`--drain-timeout 500ms`) and fast probes (`--health-interval 100ms`);
/// add flags, then [`shunt::ShuntBuilder::spawn_process_ready`].
pub(crate) fn draining_child(direct: &str) -> shunt::ShuntBuilder {
    self::shunt::shunt()
        .direct(direct)
        .arg("--drain-timeout", "500ms")
        .arg("--health-interval", "100ms")
}

/// DESIGN.md's two upstreams: an echo backend named `direct_name` reached
/// directly, and one named `nginx_name` behind a real nginx (returned too).
/// `None` when nginx is missing and not required (see [`nginx::NginxBuilder::spawn`]).
pub(crate) async fn direct_and_nginx(
    direct_name: &str,
    nginx_name: &str,
) -> Option<(EchoBackend, EchoBackend, Nginx)> {
    let direct = echo_backend().name(direct_name).spawn().await;
    let behind_nginx = echo_backend().name(nginx_name).spawn().await;
    let nginx = nginx(behind_nginx.addr()).spawn().await?;
    Some((direct, behind_nginx, nginx))
}

/// [`direct_and_nginx`], then shunt in front of both (`--direct`, `--nginx`
/// and `flags`), ready. `None` when nginx is missing and not required.
pub(crate) async fn shunt_with_nginx(
    (direct_name, nginx_name): (&str, &str),
    flags: &[&str],
) -> Option<(EchoBackend, EchoBackend, Nginx, Shunt)> {
    let (direct, behind_nginx, nginx) = direct_and_nginx(direct_name, nginx_name).await?;
    let shunt = shunt()
        .direct(direct.url())
        .nginx(nginx.url())
        .flags(flags)
        .start_ready()
        .await;
    Some((direct, behind_nginx, nginx, shunt))
}
