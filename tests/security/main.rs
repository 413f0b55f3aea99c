//! Security tests of issue 4: every protection allowed and refused, from
//! outside, over real loopback sockets (source addresses 127.0.0.2, .3, ...
//! for IP rules), with the echo backend recording what reached it.

#[path = "../support/mod.rs"]
mod support;

mod auth;
mod hostile;
mod ip;
mod limits;
mod origin;
mod paths;

/// What every security test file uses.
mod prelude {
    pub use crate::support::raw::*;
    pub use crate::support::{IO_TIMEOUT, TempFile, echo_backend, eventually, logs};
    pub use crate::{audio_open_rest_token, start};
}

/// shunt in front of `backend` with `args`, its logs captured (tests check
/// what it logs) and health probes rare, so the counters under test see the
/// test's traffic only.
pub async fn start(backend: &support::EchoBackend, args: &[&str]) -> support::Shunt {
    support::capture_logs();
    support::shunt()
        .direct(backend.url())
        .arg("--health-interval", "60s")
        .arg("--drain-timeout", "1s")
        .flags(args)
        .start()
        .await
}

/// The layout of DESIGN.md's call center: `/frontend-audio` open, every
/// other path behind the token `tk`. Keep the files alive as long as shunt.
pub async fn audio_open_rest_token(
    args: &[&str],
) -> (support::EchoBackend, [support::TempFile; 2], support::Shunt) {
    let backend = support::echo_backend().spawn().await;
    let tokens = support::TempFile::new("tokens", "tk\n");
    let file = support::TempFile::new(
        "routes.toml",
        &format!(
            r#"
token_file = "{}"

[[routes]]
path = "/frontend-audio"
via = ["direct"]
auth = "none"

[[routes]]
path = "/"
via = ["direct"]
auth = "token"
"#,
            tokens.path()
        ),
    );
    let mut argv = vec!["--config", file.path()];
    argv.extend_from_slice(args);
    let shunt = start(&backend, &argv).await;
    (backend, [tokens, file], shunt)
}
