//! The one way tests start shunt: [`super::shunt`]'s builder, in one of two
//! modes.
//! - In-process ([`ShuntBuilder::start`], [`ShuntBuilder::start_ready`]):
//!   listeners on `127.0.0.1:0`, fast health checks; a [`Shunt`].
//! - The real binary as a child ([`ShuntBuilder::spawn_process`],
//!   [`ShuntBuilder::spawn_process_ready`]): `shunt run` on free ports with
//!   only the flags given, its output collected; a [`ShuntChild`]. For what
//!   needs a process: exit codes, signals, logs on a pipe, workers, rlimits.

use std::net::SocketAddr;
use std::time::Duration;

use hyper::StatusCode;

use super::bin;
use super::http::http_get;
use super::{BoxError, eventually, not_yet};

/// How long `wait_ready` / `wait_upstream` poll before failing.
pub(crate) const WAIT_LIMIT: Duration = Duration::from_secs(10);

/// Builder returned by [`super::shunt`].
#[derive(Debug, Clone, Default)]
pub(crate) struct ShuntBuilder {
    args: Vec<(String, Option<String>)>,
    child: ChildOptions,
}

/// What only the child-process mode uses.
#[derive(Debug, Clone, Default)]
struct ChildOptions {
    env: Vec<(String, String)>,
    dir: Option<std::path::PathBuf>,
    with_stdout: bool,
    nofile: Option<u32>,
    bare: bool,
}

/// A running in-process shunt. Dropping it begins a graceful shutdown.
pub(crate) struct Shunt {
    running: Option<shunt::Running>,
    listen: SocketAddr,
    admin: SocketAddr,
}

/// Starts building a shunt.
pub(crate) fn shunt() -> ShuntBuilder {
    ShuntBuilder::default()
}

impl ShuntBuilder {
    /// `--direct URL`.
    pub(crate) fn direct(self, url: impl Into<String>) -> Self {
        self.arg("--direct", url)
    }

    /// `--nginx URL`.
    pub(crate) fn nginx(self, url: impl Into<String>) -> Self {
        self.arg("--nginx", url)
    }

    /// `--route SPEC` (repeatable).
    pub(crate) fn route(self, spec: impl Into<String>) -> Self {
        self.arg("--route", spec)
    }

    /// Any flag with a value, e.g. `.arg("--fall", "1")`. A later value for
    /// the same single-valued flag replaces the earlier one (or the default).
    pub(crate) fn arg(mut self, flag: &str, value: impl Into<String>) -> Self {
        let value = value.into();
        if flag != "--route" {
            self.args.retain(|(f, _)| f != flag);
        }
        self.args.push((flag.to_owned(), Some(value)));
        self
    }

    /// Serves TLS with this certificate chain and key.
    pub(crate) fn tls(self, cert: &std::path::Path, key: &std::path::Path) -> Self {
        self.arg("--tls-cert", cert.to_str().expect("UTF-8 path"))
            .arg("--tls-key", key.to_str().expect("UTF-8 path"))
    }

    /// Appends command-line words as given (`&["--allow-ip", "a", "--allow-ip", "b"]`),
    /// repeated flags kept.
    pub(crate) fn flags(mut self, argv: &[&str]) -> Self {
        self.args
            .extend(argv.iter().map(|word| ((*word).to_owned(), None)));
        self
    }

    /// Adds a flag that takes no value (e.g. `--no-watch`).
    pub(crate) fn flag(mut self, flag: &str) -> Self {
        self.args.push((flag.to_owned(), None));
        self
    }

    /// The command-line flags this builder stands for (defaults included).
    pub(crate) fn args(&self) -> Vec<String> {
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
    pub(crate) async fn start(self) -> Shunt {
        let args = self.args();
        let config = shunt::Config::from_args(args.iter().map(String::as_str))
            .unwrap_or_else(|e| panic!("shunt config from {args:?}: {e}"));
        let running = shunt::start(config)
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
    pub(crate) async fn start_ready(self) -> Shunt {
        let shunt = self.start().await;
        shunt.wait_ready().await;
        shunt
    }

    /// Child mode: this environment variable set (`SHUNT_*` ones are
    /// cleared unless set here).
    pub(crate) fn env(mut self, name: &str, value: &str) -> Self {
        self.child.env.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Child mode: the working directory (the test's own by default).
    pub(crate) fn dir(mut self, dir: &std::path::Path) -> Self {
        self.child.dir = Some(dir.to_owned());
        self
    }

    /// Child mode: collect stdout too, into the same log as stderr.
    pub(crate) fn with_stdout(mut self) -> Self {
        self.child.with_stdout = true;
        self
    }

    /// Child mode: run under `ulimit -n LIMIT` (soft and hard open-files limit).
    pub(crate) fn nofile_limit(mut self, limit: u32) -> Self {
        self.child.nofile = Some(limit);
        self
    }

    /// Child mode: `shunt FLAGS` as a user types it, without the `run` word.
    pub(crate) fn bare(mut self) -> Self {
        self.child.bare = true;
        self
    }

    /// Child mode: starts the real binary, `shunt run --listen L --admin A
    /// FLAGS` with only the flags given (none of the in-process defaults);
    /// `L` and `A` are free ports unless `--listen`/`--admin` are given with
    /// `.arg`. Does not wait: see [`ShuntChild::wait_ready`] and
    /// [`ShuntChild::wait_for_log`].
    pub(crate) fn spawn_process(self) -> ShuntChild {
        let given = |flag: &str| {
            self.args
                .iter()
                .find(|(f, _)| f == flag)
                .and_then(|(_, v)| v.clone())
        };
        let (free_listen, free_admin) = bin::free_listen_admin();
        let mut argv: Vec<String> = Vec::new();
        if !self.child.bare {
            argv.push("run".into());
        }
        let listen = match given("--listen") {
            Some(value) => value.parse().unwrap_or(free_listen),
            None => {
                argv.extend(["--listen".into(), free_listen.to_string()]);
                free_listen
            }
        };
        let admin = match given("--admin") {
            Some(value) => value.parse().ok(),
            None => {
                argv.extend(["--admin".into(), free_admin.to_string()]);
                Some(free_admin)
            }
        };
        argv.extend(
            self.args
                .iter()
                .flat_map(|(flag, value)| std::iter::once(flag.clone()).chain(value.clone())),
        );
        let dir = self
            .child
            .dir
            .clone()
            .unwrap_or_else(|| std::env::current_dir().expect("cwd"));
        let env: Vec<(&str, &str)> = self
            .child
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let command = match self.child.nofile {
            None => bin::shunt_command(&dir, &env),
            Some(limit) => {
                let mut command = bin::command("bash", &dir, &env);
                command
                    .arg("-c")
                    .arg(format!("ulimit -n {limit} && exec \"$0\" \"$@\""))
                    .arg(env!("CARGO_BIN_EXE_shunt"));
                command
            }
        };
        let (child, output, mut collectors) =
            bin::spawn_collecting(command, &argv, self.child.with_stdout);
        ShuntChild {
            child,
            listen,
            admin,
            output,
            collector: collectors.remove(0),
        }
    }

    /// [`ShuntBuilder::spawn_process`], then [`ShuntChild::wait_ready`].
    pub(crate) async fn spawn_process_ready(self) -> ShuntChild {
        let child = self.spawn_process();
        child.wait_ready().await;
        child
    }
}

/// The real `shunt` binary running as a child of the test, its stderr (and
/// stdout, `with_stdout`) collected as it comes. Killed on drop.
pub(crate) struct ShuntChild {
    /// The process (for its pid, or a signal of the test's choosing).
    pub child: tokio::process::Child,
    listen: SocketAddr,
    admin: Option<SocketAddr>,
    output: bin::Collected,
    collector: tokio::task::JoinHandle<()>,
}

impl ShuntChild {
    /// The proxy listener (as given: port 0 stays 0).
    pub(crate) fn addr(&self) -> SocketAddr {
        self.listen
    }

    /// The admin listener; panics when it was given as `off`.
    pub(crate) fn admin_addr(&self) -> SocketAddr {
        self.admin.expect("the admin listener is on")
    }

    /// Everything the child wrote so far (stderr, and stdout `with_stdout`).
    pub(crate) fn log(&self) -> String {
        self.output.text()
    }

    /// [`ShuntChild::log`] as bytes.
    pub(crate) fn log_bytes(&self) -> Vec<u8> {
        self.output.bytes()
    }

    /// Waits (10 s at most) until `/readyz` answers 200; panics with the log
    /// if it never does.
    pub(crate) async fn wait_ready(&self) {
        bin::wait_ready(self.admin_addr(), || self.log()).await;
    }

    /// Waits (up to 10 s) until the log contains `needle`; panics with the
    /// log so far if it does not.
    pub(crate) async fn wait_for_log(&self, needle: &str) {
        let limit = Duration::from_secs(10);
        let seen = eventually(limit, async || self.log().contains(needle)).await;
        assert!(
            seen,
            "shunt did not log {needle:?} within {limit:?}; log:\n{}",
            self.log()
        );
    }

    /// GET `path` on the admin listener, as JSON.
    pub(crate) async fn admin_json(&self, path: &str) -> serde_json::Value {
        let r = http_get(self.admin_addr(), path, &[]).await.expect("admin");
        serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// Sends SIGTERM and waits up to `limit` for the exit code; kills the
    /// child and answers `None` past it.
    pub(crate) async fn terminate_within(&mut self, limit: Duration) -> Option<i32> {
        bin::sigterm(&self.child);
        match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(status) => status.ok().and_then(|s| s.code()),
            Err(_) => {
                let _ = self.child.start_kill();
                None
            }
        }
    }

    /// Sends SIGTERM and waits (up to 10 s) for the exit code.
    pub(crate) async fn terminate(self) -> Option<i32> {
        self.stop().await.0
    }

    /// Sends SIGTERM, waits (up to 10 s) for the exit, then reads the output
    /// to its end: the exit code and everything the child wrote.
    pub(crate) async fn stop(mut self) -> (Option<i32>, String) {
        bin::sigterm(&self.child);
        let code = tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .expect("shunt exits within 10 s of SIGTERM")
            .expect("wait for shunt")
            .code();
        let _ = tokio::time::timeout(Duration::from_secs(2), &mut self.collector).await;
        (code, self.log())
    }
}

impl Shunt {
    /// The proxy listener.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.listen
    }

    /// The admin listener.
    pub(crate) fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// `ws://LISTEN/path`.
    pub(crate) fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.listen)
    }

    /// GET on the admin listener: status and body.
    pub(crate) async fn admin_get(&self, path: &str) -> Result<(StatusCode, String), BoxError> {
        let response = http_get(self.admin, path, &[]).await?;
        Ok((response.status, response.text()))
    }

    /// GET on the admin listener: status and body as JSON (panics when the
    /// request fails or the body is not JSON).
    pub(crate) async fn admin_get_json(&self, path: &str) -> (StatusCode, serde_json::Value) {
        let (status, body) = self.admin_get(path).await.expect("admin");
        let value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"));
        (status, value)
    }

    /// GET on the admin listener, the body as JSON.
    pub(crate) async fn admin_json(&self, path: &str) -> serde_json::Value {
        self.admin_get_json(path).await.1
    }

    /// POSTs an empty body to the admin listener (e.g. `/reload`).
    pub(crate) async fn admin_post(&self, path: &str) -> (u16, String) {
        let response = super::http_post(self.admin, path, bytes::Bytes::new())
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}"));
        (response.status.as_u16(), response.text())
    }

    /// `/status` parsed as JSON.
    pub(crate) async fn status(&self) -> Result<serde_json::Value, BoxError> {
        let (code, body) = self.admin_get("/status").await?;
        if code != StatusCode::OK {
            return Err(format!("/status answered {code}: {body}").into());
        }
        Ok(serde_json::from_str(&body)?)
    }

    /// Upstream `name`'s entry in `/status` (health, last_error, websocket, ...).
    pub(crate) async fn upstream(&self, name: &str) -> Result<serde_json::Value, BoxError> {
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
    pub(crate) async fn upstream_health(&self, name: &str) -> Result<String, BoxError> {
        let upstream = self.upstream(name).await?;
        Ok(upstream["health"].as_str().unwrap_or_default().to_owned())
    }

    /// Polls `/readyz` until it answers 200 (bounded by [`WAIT_LIMIT`]).
    pub(crate) async fn wait_ready(&self) {
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
    pub(crate) async fn wait_upstream(&self, name: &str, health: &str) {
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
    pub(crate) fn shutdown(&self) {
        if let Some(running) = &self.running {
            running.shutdown();
        }
    }

    /// Shuts down and resolves when everything has drained, bounded by
    /// `limit`; returns whether it finished in time.
    pub(crate) async fn stop_within(mut self, limit: Duration) -> bool {
        let running = self.running.take().expect("running until stopped");
        running.shutdown();
        tokio::time::timeout(limit, running.stopped()).await.is_ok()
    }

    /// Shuts down and waits for the drain, failing the test past 10 s.
    pub(crate) async fn stop(self) {
        assert!(
            self.stop_within(Duration::from_secs(10)).await,
            "shunt did not stop within 10 s"
        );
    }

    /// Reloads now (like SIGHUP); whether the reload was applied.
    pub(crate) async fn reload(&self) -> bool {
        let running = self.running.as_ref().expect("running until stopped");
        running
            .reloader()
            .reload(shunt::ReloadTrigger::Api, "test")
            .await
            .is_ok()
    }

    /// Takes the running handle (the caller then owns shutdown).
    pub(crate) fn into_running(mut self) -> shunt::Running {
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
