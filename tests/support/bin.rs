//! Runs the real `shunt` binary (`CARGO_BIN_EXE_shunt`) as a child, bounded
//! in time, and captures what it printed.

use std::process::Stdio;
use std::time::Duration;

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
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_shunt"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("SHUNT_") {
            command.env_remove(&name);
        }
    }
    command.envs(env.iter().copied());
    let child = command
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
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
