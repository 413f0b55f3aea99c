//! Runs shunt in-process on `127.0.0.1:0` (proxy and admin listeners) with
//! fast health checks, and talks to its admin API.

use std::net::SocketAddr;
use std::time::Duration;

use hyper::StatusCode;

use super::http::http_get;
use super::{BoxError, eventually, not_yet};

/// How long `wait_ready` / `wait_upstream` poll before failing.
pub const WAIT_LIMIT: Duration = Duration::from_secs(10);

/// Builder returned by [`super::shunt`].
#[derive(Debug, Clone, Default)]
pub struct ShuntBuilder {
    args: Vec<(String, Option<String>)>,
}

/// A running in-process shunt. Dropping it begins a graceful shutdown.
pub struct Shunt {
    running: Option<shunt::app::Running>,
    listen: SocketAddr,
    admin: SocketAddr,
}

/// Starts building a shunt.
pub fn shunt() -> ShuntBuilder {
    ShuntBuilder::default()
}

impl ShuntBuilder {
    /// `--direct URL`.
    pub fn direct(self, url: impl Into<String>) -> Self {
        self.arg("--direct", url)
    }

    /// `--nginx URL`.
    pub fn nginx(self, url: impl Into<String>) -> Self {
        self.arg("--nginx", url)
    }

    /// `--route SPEC` (repeatable).
    pub fn route(self, spec: impl Into<String>) -> Self {
        self.arg("--route", spec)
    }

    /// Any flag with a value, e.g. `.arg("--fall", "1")`. A later value for
    /// the same single-valued flag replaces the earlier one (or the default).
    pub fn arg(mut self, flag: &str, value: impl Into<String>) -> Self {
        let value = value.into();
        if flag != "--route" {
            self.args.retain(|(f, _)| f != flag);
        }
        self.args.push((flag.to_owned(), Some(value)));
        self
    }

    /// Serves TLS with this certificate chain and key.
    pub fn tls(self, cert: &std::path::Path, key: &std::path::Path) -> Self {
        self.arg("--tls-cert", cert.to_str().expect("UTF-8 path"))
            .arg("--tls-key", key.to_str().expect("UTF-8 path"))
    }

    /// Appends command-line words as given (`&["--allow-ip", "a", "--allow-ip", "b"]`),
    /// repeated flags kept.
    pub fn flags(mut self, argv: &[&str]) -> Self {
        self.args
            .extend(argv.iter().map(|word| ((*word).to_owned(), None)));
        self
    }

    /// Adds a flag that takes no value (e.g. `--no-watch`).
    pub fn flag(mut self, flag: &str) -> Self {
        self.args.push((flag.to_owned(), None));
        self
    }

    /// The command-line flags this builder stands for (defaults included).
    pub fn args(&self) -> Vec<String> {
        let mut args: Vec<(String, Option<String>)> = vec![
            ("--listen".into(), Some("127.0.0.1:0".into())),
            ("--admin".into(), Some("127.0.0.1:0".into())),
            ("--health-interval".into(), Some("100ms".into())),
            ("--health-timeout".into(), Some("500ms".into())),
        ];
        args.retain(|(flag, _)| !self.args.iter().any(|(f, _)| f == flag));
        args.extend(self.args.iter().cloned());
        args.into_iter()
            .flat_map(|(flag, value)| std::iter::once(flag).chain(value))
            .collect()
    }

    /// Parses the flags like the CLI and starts shunt.
    pub async fn start(self) -> Shunt {
        let args = self.args();
        let config = shunt::config::Config::from_args(args.iter().map(String::as_str))
            .unwrap_or_else(|e| panic!("shunt config from {args:?}: {e}"));
        let running = shunt::app::start(config)
            .await
            .unwrap_or_else(|e| panic!("shunt start with {args:?}: {e}"));
        let listen = running.listen_addr();
        let admin = running
            .admin_addr()
            .expect("the test harness always enables the admin listener");
        Shunt {
            running: Some(running),
            listen,
            admin,
        }
    }

    /// [`ShuntBuilder::start`], then [`Shunt::wait_ready`].
    pub async fn start_ready(self) -> Shunt {
        let shunt = self.start().await;
        shunt.wait_ready().await;
        shunt
    }
}

impl Shunt {
    /// The proxy listener.
    pub fn addr(&self) -> SocketAddr {
        self.listen
    }

    /// The admin listener.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// `ws://LISTEN/path`.
    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.listen)
    }

    /// `http://LISTEN/path`.
    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.listen)
    }

    /// GET on the admin listener: status and body.
    pub async fn admin_get(&self, path: &str) -> Result<(StatusCode, String), BoxError> {
        let response = http_get(self.admin, path, &[]).await?;
        Ok((response.status, response.text()))
    }

    /// POSTs an empty body to the admin listener (e.g. `/reload`).
    pub async fn admin_post(&self, path: &str) -> (u16, String) {
        let response = super::http_post(self.admin, path, bytes::Bytes::new())
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        (response.status.as_u16(), response.text())
    }

    /// `/status` parsed as JSON.
    pub async fn status(&self) -> Result<serde_json::Value, BoxError> {
        let (code, body) = self.admin_get("/status").await?;
        if code != StatusCode::OK {
            return Err(format!("/status answered {code}: {body}").into());
        }
        Ok(serde_json::from_str(&body)?)
    }

    /// Upstream `name`'s entry in `/status` (health, last_error, websocket, ...).
    pub async fn upstream(&self, name: &str) -> Result<serde_json::Value, BoxError> {
        let status = self.status().await?;
        let upstreams = status["upstreams"]
            .as_array()
            .ok_or_else(|| format!("/status has no upstreams array: {status}"))?;
        let upstream = upstreams
            .iter()
            .find(|u| u["name"] == name)
            .ok_or_else(|| format!("/status has no upstream {name:?}: {status}"))?;
        Ok(upstream.clone())
    }

    /// The `health` of upstream `name` in `/status`.
    pub async fn upstream_health(&self, name: &str) -> Result<String, BoxError> {
        let upstream = self.upstream(name).await?;
        Ok(upstream["health"].as_str().unwrap_or_default().to_owned())
    }

    /// Polls `/readyz` until it answers 200 (bounded by [`WAIT_LIMIT`]).
    pub async fn wait_ready(&self) {
        let mut last = String::new();
        let ready = eventually(WAIT_LIMIT, async || match self.admin_get("/readyz").await {
            Ok((StatusCode::OK, _)) => true,
            Ok((code, body)) => not_yet(&mut last, format!("{code}: {body}")),
            Err(e) => not_yet(&mut last, e),
        })
        .await;
        assert!(
            ready,
            "/readyz not 200 within {WAIT_LIMIT:?}; last answer {last}"
        );
    }

    /// Polls `/status` until upstream `name` has health `health` ("up",
    /// "down", ...), bounded by [`WAIT_LIMIT`].
    pub async fn wait_upstream(&self, name: &str, health: &str) {
        let mut last = String::new();
        let reached = eventually(WAIT_LIMIT, async || {
            match self.upstream_health(name).await {
                Ok(h) if h == health => true,
                Ok(h) => not_yet(&mut last, h),
                Err(e) => not_yet(&mut last, e),
            }
        })
        .await;
        assert!(
            reached,
            "upstream {name} not {health} within {WAIT_LIMIT:?}; last seen {last}"
        );
    }

    /// Begins a graceful shutdown (like SIGTERM).
    pub fn shutdown(&self) {
        if let Some(running) = &self.running {
            running.shutdown();
        }
    }

    /// Shuts down and resolves when everything has drained, bounded by
    /// `limit`; returns whether it finished in time.
    pub async fn stop_within(mut self, limit: Duration) -> bool {
        let running = self.running.take().expect("running until stopped");
        running.shutdown();
        tokio::time::timeout(limit, running.stopped()).await.is_ok()
    }

    /// Shuts down and waits for the drain, failing the test past 10 s.
    pub async fn stop(self) {
        assert!(
            self.stop_within(Duration::from_secs(10)).await,
            "shunt did not stop within 10 s"
        );
    }

    /// Reloads now (like SIGHUP); whether the reload was applied.
    pub async fn reload(&self) -> bool {
        let running = self.running.as_ref().expect("running until stopped");
        running.reloader().reload("test").await.is_ok()
    }

    /// Takes the running handle (the caller then owns shutdown).
    pub fn into_running(mut self) -> shunt::app::Running {
        self.running.take().expect("running until stopped")
    }
}

impl Drop for Shunt {
    fn drop(&mut self) {
        if let Some(running) = &self.running {
            running.shutdown();
        }
    }
}
