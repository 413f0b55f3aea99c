//! Runs the real `shunt` binary (`CARGO_BIN_EXE_shunt`) as a child, bounded
//! in time, and captures what it printed: one-shot runs ([`run_shunt`],
//! [`run_shunt_in`] for a working directory of the test's choosing) and a
//! long-running server ([`serve_in`], and [`serve_shunt`] on free ports,
//! ready) whose stderr is collected as it comes.

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
        command(Path::new(env!("CARGO_MANIFEST_DIR")), env),
        args,
        limit,
    )
    .await
}

/// Like [`run_shunt`], in the working directory `dir` (for relative paths).
pub async fn run_shunt_in(dir: &Path, args: &[&str], limit: Duration) -> Run {
    run(command(dir, &[]), args, limit).await
}

/// `shunt` in `dir`, with `SHUNT_*` variables cleared and `env` set.
fn command(dir: &Path, env: &[(&str, &str)]) -> tokio::process::Command {
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
    use std::net::SocketAddr;
    let listen = SocketAddr::from(([127, 0, 0, 1], super::free_port()));
    let admin = SocketAddr::from(([127, 0, 0, 1], super::free_port()));
    let (listen_text, admin_text) = (listen.to_string(), admin.to_string());
    let mut all = vec!["run", "--listen", &listen_text, "--admin", &admin_text];
    all.extend_from_slice(args);
    let server = serve_in(&std::env::current_dir().expect("cwd"), &all, &[]);
    let up = eventually(Duration::from_secs(10), async || {
        super::http_get(admin, "/readyz", &[])
            .await
            .is_ok_and(|r| r.status == http::StatusCode::OK)
    })
    .await;
    assert!(
        up,
        "shunt run never became ready on {admin}; stderr:\n{}",
        server.stderr()
    );
    Served {
        listen,
        admin,
        server,
    }
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
    stderr: Arc<Mutex<Vec<u8>>>,
    collector: tokio::task::JoinHandle<()>,
}

/// Starts `shunt ARGS` in `dir`, with `env` set and stderr to a pipe.
pub fn serve_in(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Server {
    let mut child = command(dir, env)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn shunt");
    let stderr: Arc<Mutex<Vec<u8>>> = Arc::default();
    let mut pipe = child.stderr.take().expect("piped stderr");
    let sink = stderr.clone();
    let collector = tokio::spawn(async move {
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = pipe.read(&mut buf).await {
            sink.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    Server {
        child,
        stderr,
        collector,
    }
}

impl Server {
    /// Everything the child wrote to stderr so far, as bytes.
    pub fn stderr_bytes(&self) -> Vec<u8> {
        self.stderr.lock().unwrap().clone()
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
        let pid = self.child.id().expect("running").to_string();
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM {pid} failed");
        let code = tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .expect("shunt exits within 10 s of SIGTERM")
            .expect("wait for shunt")
            .code();
        let _ = tokio::time::timeout(Duration::from_secs(2), &mut self.collector).await;
        (code, self.stderr())
    }
}
