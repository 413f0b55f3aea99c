//! The `shunt` binary as a child process, for what only the real binary
//! shows: exit codes, stdout and stderr text, the working directory it runs
//! in, and signals. One-shot runs ([`run_in`]) and a long-running server
//! ([`serve_in`]) whose stderr is collected as it comes; each is bounded in
//! time and killed on drop.

use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncReadExt as _;

use super::eventually;

/// How long a one-shot run may take.
const RUN_LIMIT: Duration = Duration::from_secs(10);

/// Output of one run of the binary.
#[derive(Debug)]
pub struct Run {
    /// The exit code (`None` if killed by a signal).
    pub code: Option<i32>,
    /// Everything written to stdout.
    pub stdout: String,
    /// Everything written to stderr.
    pub stderr: String,
}

/// Runs `shunt ARGS` in `dir` (bounded by 10 s) with stdout and stderr piped.
pub async fn run_in(dir: &Path, args: &[&str]) -> Run {
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_shunt"))
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn shunt");
    let output = tokio::time::timeout(RUN_LIMIT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("shunt {args:?} did not finish within {RUN_LIMIT:?}"))
        .expect("wait for shunt");
    Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// A running `shunt` child; its stderr (a pipe, not a terminal) is
/// collected as it comes. Killed on drop.
pub struct Server {
    child: tokio::process::Child,
    stderr: Arc<Mutex<Vec<u8>>>,
}

/// Starts `shunt ARGS` in `dir`, with `env` set and stderr to a pipe.
pub fn serve_in(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Server {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_shunt"))
        .args(args)
        .envs(env.iter().copied())
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn shunt");
    let stderr: Arc<Mutex<Vec<u8>>> = Arc::default();
    let mut pipe = child.stderr.take().expect("piped stderr");
    let sink = stderr.clone();
    tokio::spawn(async move {
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = pipe.read(&mut buf).await {
            sink.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    Server { child, stderr }
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
        let seen = eventually(RUN_LIMIT, async || self.stderr().contains(needle)).await;
        assert!(
            seen,
            "shunt did not log {needle:?} within {RUN_LIMIT:?}; stderr:\n{}",
            self.stderr()
        );
    }

    /// Sends SIGTERM and waits (up to 10 s) for the exit code.
    pub async fn terminate(mut self) -> Option<i32> {
        let pid = self.child.id().expect("running").to_string();
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM {pid} failed");
        tokio::time::timeout(RUN_LIMIT, self.child.wait())
            .await
            .expect("shunt exits within 10 s of SIGTERM")
            .expect("wait for shunt")
            .code()
    }
}
