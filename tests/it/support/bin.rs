//! Runs the real `shunt` binary (`CARGO_BIN_EXE_shunt`) as a child, bounded
//! in time, and captures what it printed: one-shot runs ([`run_shunt`],
//! [`run_shunt_in`] for a working directory of the test's choosing) and a
//! long-running server ([`serve_in`], and [`serve_shunt`] on free ports,
//! ready) whose stderr is collected as it comes. The pieces of a launch
//! (the command with `SHUNT_*` cleared, output collection, free ports and
//! the `/readyz` wait, SIGTERM) are public so every child-process helper
//! (e.g. `calls::ShuntProcess`) is built from these, not written again.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncReadExt as _;

use super::eventually;

/// Output of one run of the binary.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Asserts the run succeeded; its stdout.
    pub fn succeeded(&self) -> &str {
        assert_eq!(
            self.code,
            Some(0),
            "stdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        &self.stdout
    }

    /// Asserts the run failed (it should have refused `what`); its stderr.
    pub fn refused(&self, what: &str) -> &str {
        assert_ne!(
            self.code,
            Some(0),
            "accepted {what}; stdout:\n{}",
            self.stdout
        );
        &self.stderr
    }

    /// The stdout line starting with `prefix` (e.g. `FAIL websocket /a via nginx:`),
    /// followed by its indented `fix:` lines; panics with the whole output if absent.
    pub fn finding(&self, prefix: &str) -> String {
        let mut lines = self.stdout.lines().skip_while(|l| !l.starts_with(prefix));
        let Some(first) = lines.next() else {
            panic!(
                "no line starting {prefix:?} in:\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            );
        };
        std::iter::once(first)
            .chain(lines.take_while(|l| l.starts_with("     ")))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Runs `shunt ARGS` from the crate root with `SHUNT_*` variables cleared,
/// bounded by `limit`.
pub async fn run_shunt(args: &[&str], limit: Duration) -> Run {
    run_shunt_with_env(args, &[], limit).await
}

/// Like [`run_shunt`], with these environment variables set.
pub async fn run_shunt_with_env(args: &[&str], env: &[(&str, &str)], limit: Duration) -> Run {
    run(
        shunt_command(Path::new(env!("CARGO_MANIFEST_DIR")), env),
        args,
        limit,
    )
    .await
}

/// Like [`run_shunt`], in the working directory `dir` (for relative paths).
pub async fn run_shunt_in(dir: &Path, args: &[&str], limit: Duration) -> Run {
    run(shunt_command(dir, &[]), args, limit).await
}

/// `shunt` in `dir`, with `SHUNT_*` variables cleared and `env` set (the
/// command every launcher here starts from).
pub fn shunt_command(dir: &Path, env: &[(&str, &str)]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_shunt"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("SHUNT_") {
            command.env_remove(&name);
        }
    }
    command
        .envs(env.iter().copied())
        .current_dir(dir)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    command
}

async fn run(mut command: tokio::process::Command, args: &[&str], limit: Duration) -> Run {
    let child = command
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn shunt");
    let output = tokio::time::timeout(limit, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("shunt {args:?} did not finish within {limit:?}"))
        .expect("wait for shunt");
    Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// A `shunt run` child serving on `listen` with its admin listener on
/// `admin` (a [`Server`] on free ports, ready when returned).
pub struct Served {
    pub listen: std::net::SocketAddr,
    pub admin: std::net::SocketAddr,
    server: Server,
}

/// Start `shunt run --listen ... --admin ... ARGS` on free ports and wait
/// until `/readyz` answers 200 (panics with its stderr if it never does).
pub async fn serve_shunt(args: &[&str]) -> Served {
    let (listen, admin) = free_listen_admin();
    let server = serve_in(
        &std::env::current_dir().expect("cwd"),
        &run_args(listen, admin, args),
        &[],
    );
    wait_ready(admin, || server.stderr()).await;
    Served {
        listen,
        admin,
        server,
    }
}

/// [`serve_shunt`] in front of `direct` with a short drain
/// (`--drain-timeout 500ms`) and fast probes (`--health-interval 100ms`),
/// then `extra`: the setup of the tests that SIGTERM the binary mid-tunnel.
pub async fn serve_draining(direct: &str, extra: &[&str]) -> Served {
    let mut args = vec![
        "--direct",
        direct,
        "--drain-timeout",
        "500ms",
        "--health-interval",
        "100ms",
    ];
    args.extend_from_slice(extra);
    serve_shunt(&args).await
}

/// A data listener and an admin listener address on 127.0.0.1, free a moment ago.
pub fn free_listen_admin() -> (SocketAddr, SocketAddr) {
    let on = |port| SocketAddr::from(([127, 0, 0, 1], port));
    (on(super::free_port()), on(super::free_port()))
}

/// `run --listen LISTEN --admin ADMIN ARGS`.
pub fn run_args(listen: SocketAddr, admin: SocketAddr, args: &[&str]) -> Vec<String> {
    let mut all = vec![
        "run".to_owned(),
        "--listen".to_owned(),
        listen.to_string(),
        "--admin".to_owned(),
        admin.to_string(),
    ];
    all.extend(args.iter().map(|a| (*a).to_owned()));
    all
}

/// Waits (10 s at most) until the admin listener's `/readyz` answers 200;
/// panics with `output()` (what the child wrote) if it never does.
pub async fn wait_ready(admin: SocketAddr, output: impl Fn() -> String) {
    let up = eventually(Duration::from_secs(10), async || {
        super::http_get(admin, "/readyz", &[])
            .await
            .is_ok_and(|r| r.status == http::StatusCode::OK)
    })
    .await;
    assert!(
        up,
        "shunt run never became ready on {admin}; output:\n{}",
        output()
    );
}

impl Served {
    /// Everything the child wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.server.stderr()
    }

    /// Send SIGTERM and wait (10 s at most) for the exit; its code and all of stderr.
    pub async fn terminate(self) -> (Option<i32>, String) {
        self.server.stop().await
    }
}

/// A running `shunt` child; its stderr (a pipe, not a terminal) is
/// collected as it comes. Killed on drop.
pub struct Server {
    child: tokio::process::Child,
    stderr: Collected,
    collector: tokio::task::JoinHandle<()>,
}

/// Starts `shunt ARGS` in `dir`, with `env` set and stderr to a pipe.
pub fn serve_in<S: AsRef<std::ffi::OsStr>>(dir: &Path, args: &[S], env: &[(&str, &str)]) -> Server {
    let (child, stderr, mut collectors) = spawn_collecting(shunt_command(dir, env), args, false);
    Server {
        child,
        stderr,
        collector: collectors.remove(0),
    }
}

/// What a child has written so far, collected by background tasks as it comes.
#[derive(Clone, Default)]
pub struct Collected(Arc<Mutex<Vec<u8>>>);

impl Collected {
    /// Everything so far, as bytes.
    pub fn bytes(&self) -> Vec<u8> {
        self.0.lock().unwrap().clone()
    }

    /// Everything so far, as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes()).into_owned()
    }

    /// Appends what `pipe` yields until it ends, on a task.
    fn drain(
        &self,
        mut pipe: impl tokio::io::AsyncRead + Unpin + Send + 'static,
    ) -> tokio::task::JoinHandle<()> {
        let sink = self.0.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = pipe.read(&mut buf).await {
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        })
    }
}

/// Spawns `command ARGS` (killed on drop) with stderr collected, and stdout
/// too (into the same [`Collected`]) when `with_stdout`, else discarded.
/// Returns the child, its output and the collecting tasks (stderr's first).
pub fn spawn_collecting<S: AsRef<std::ffi::OsStr>>(
    mut command: tokio::process::Command,
    args: &[S],
    with_stdout: bool,
) -> (
    tokio::process::Child,
    Collected,
    Vec<tokio::task::JoinHandle<()>>,
) {
    let stdout = if with_stdout {
        Stdio::piped()
    } else {
        Stdio::null()
    };
    let mut child = command
        .args(args)
        .stdout(stdout)
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn shunt");
    let output = Collected::default();
    let mut collectors = vec![output.drain(child.stderr.take().expect("piped stderr"))];
    if let Some(pipe) = child.stdout.take() {
        collectors.push(output.drain(pipe));
    }
    (child, output, collectors)
}

/// Sends SIGTERM to `child` (panics if it has exited or `kill` fails).
pub fn sigterm(child: &tokio::process::Child) {
    let pid = child.id().expect("running").to_string();
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("run kill");
    assert!(sent.success(), "kill -TERM {pid} failed");
}

impl Server {
    /// Everything the child wrote to stderr so far, as bytes.
    pub fn stderr_bytes(&self) -> Vec<u8> {
        self.stderr.bytes()
    }

    /// Everything the child wrote to stderr so far.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr_bytes()).into_owned()
    }

    /// Waits (up to 10 s) until stderr contains `needle`; panics with the
    /// stderr so far if it does not.
    pub async fn wait_for_log(&self, needle: &str) {
        let limit = Duration::from_secs(10);
        let seen = eventually(limit, async || self.stderr().contains(needle)).await;
        assert!(
            seen,
            "shunt did not log {needle:?} within {limit:?}; stderr:\n{}",
            self.stderr()
        );
    }

    /// Sends SIGTERM and waits (up to 10 s) for the exit code.
    pub async fn terminate(self) -> Option<i32> {
        self.stop().await.0
    }

    /// Sends SIGTERM, waits (up to 10 s) for the exit, then reads stderr to
    /// its end: the exit code and everything the child wrote.
    pub async fn stop(mut self) -> (Option<i32>, String) {
        sigterm(&self.child);
        let code = tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .expect("shunt exits within 10 s of SIGTERM")
            .expect("wait for shunt")
            .code();
        let _ = tokio::time::timeout(Duration::from_secs(2), &mut self.collector).await;
        (code, self.stderr())
    }
}
