//! Runs the real `shunt` binary (`CARGO_BIN_EXE_shunt`) as a child, bounded
//! in time, and captures what it printed: one-shot runs ([`run_shunt`],
//! [`run_shunt_in`] for a working directory of the test's choosing). A
//! long-running shunt child is the builder's child mode
//! ([`super::shunt::ShuntBuilder::spawn_process`]), built from the launch
//! pieces here: the command with `SHUNT_*` cleared, output collection, free
//! ports, the `/readyz` wait, SIGTERM.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncReadExt as _;

use super::eventually;

/// Output of one run of the binary.
#[derive(Debug)]
pub(crate) struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Asserts the run succeeded; its stdout.
    pub(crate) fn succeeded(&self) -> &str {
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
    pub(crate) fn refused(&self, what: &str) -> &str {
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
    pub(crate) fn finding(&self, prefix: &str) -> String {
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
pub(crate) async fn run_shunt(args: &[&str], limit: Duration) -> Run {
    run_shunt_with_env(args, &[], limit).await
}

/// Like [`run_shunt`], with these environment variables set.
pub(crate) async fn run_shunt_with_env(
    args: &[&str],
    env: &[(&str, &str)],
    limit: Duration,
) -> Run {
    run(
        shunt_command(Path::new(env!("CARGO_MANIFEST_DIR")), env),
        args,
        limit,
    )
    .await
}

/// Like [`run_shunt`], in the working directory `dir` (for relative paths).
pub(crate) async fn run_shunt_in(dir: &Path, args: &[&str], limit: Duration) -> Run {
    run(shunt_command(dir, &[]), args, limit).await
}

/// `shunt` in `dir`, with `SHUNT_*` variables cleared and `env` set (the
/// command every launcher here starts from).
pub(crate) fn shunt_command(dir: &Path, env: &[(&str, &str)]) -> tokio::process::Command {
    command(env!("CARGO_BIN_EXE_shunt"), dir, env)
}

/// `program` in `dir`, with `SHUNT_*` variables cleared and `env` set.
pub(crate) fn command(program: &str, dir: &Path, env: &[(&str, &str)]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(program);
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

/// A data listener and an admin listener address on 127.0.0.1, free a moment ago.
pub(crate) fn free_listen_admin() -> (SocketAddr, SocketAddr) {
    let on = |port| SocketAddr::from(([127, 0, 0, 1], port));
    (on(super::free_port()), on(super::free_port()))
}

/// Waits (10 s at most) until the admin listener's `/readyz` answers 200;
/// panics with `output()` (what the child wrote) if it never does.
pub(crate) async fn wait_ready(admin: SocketAddr, output: impl Fn() -> String) {
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

/// What a child has written so far, collected by background tasks as it comes.
#[derive(Clone, Default)]
pub(crate) struct Collected(Arc<Mutex<Vec<u8>>>);

impl Collected {
    /// Everything so far, as bytes.
    pub(crate) fn bytes(&self) -> Vec<u8> {
        self.0.lock().unwrap().clone()
    }

    /// Everything so far, as text.
    pub(crate) fn text(&self) -> String {
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
pub(crate) fn spawn_collecting<S: AsRef<std::ffi::OsStr>>(
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
pub(crate) fn sigterm(child: &tokio::process::Child) {
    let pid = child.id().expect("running").to_string();
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("run kill");
    assert!(sent.success(), "kill -TERM {pid} failed");
}
