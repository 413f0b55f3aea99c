//! Security tests of issue 4: every protection allowed and refused, from
//! outside, over real loopback sockets (source addresses 127.0.0.2, .3, ...
//! for IP rules), with the echo backend recording what reached it.

use crate::support;

mod auth;
mod hostile;
mod ip;
mod limits;
mod origin;
mod paths;

/// What every security test file uses.
mod prelude {
    pub(super) use crate::security::{
        audio_open_rest_token, routes_config, start, start_with_backend, start_with_file,
    };
    pub(super) use crate::support::raw::*;
    pub(super) use crate::support::{IO_TIMEOUT, TempFile, echo_backend, eventually, logs};
}

/// shunt in front of `backend` with `args`, its logs captured (tests check
/// what it logs) and health probes rare, so the counters under test see the
/// test's traffic only.
pub(crate) async fn start(backend: &support::EchoBackend, args: &[&str]) -> support::Shunt {
    support::capture_logs();
    support::shunt()
        .direct(backend.url())
        .arg("--health-interval", "60s")
        .arg("--drain-timeout", "1s")
        .flags(args)
        .start()
        .await
}

/// An echo backend and [`start`] in front of it with `args`.
pub(crate) async fn start_with_backend(args: &[&str]) -> (support::EchoBackend, support::Shunt) {
    let backend = support::echo_backend().spawn().await;
    let shunt = start(&backend, args).await;
    (backend, shunt)
}

/// [`start_with_backend`] with a file holding `content` passed as `flag`
/// (`--token-file`, `--jwt-secret-file`), then `args`. Keep the file alive
/// as long as shunt.
pub(crate) async fn start_with_file(
    flag: &str,
    content: &str,
    args: &[&str],
) -> (support::EchoBackend, support::TempFile, support::Shunt) {
    let file = support::TempFile::new(flag.trim_start_matches('-'), content);
    let mut argv = vec![flag, file.path()];
    argv.extend_from_slice(args);
    let (backend, shunt) = start_with_backend(&argv).await;
    (backend, file, shunt)
}

/// A config file `routes.toml`: `global` (top-level keys, one a line), then
/// one `[[routes]]` table via `direct` per `(path, keys)`, with `keys` (more
/// lines of the route) after its `via`.
pub(crate) fn routes_config(global: &str, routes: &[(&str, &str)]) -> support::TempFile {
    let mut toml = format!("{global}\n");
    for (path, keys) in routes {
        toml.push_str(&format!(
            "\n[[routes]]\npath = \"{path}\"\nvia = [\"direct\"]\n{keys}\n"
        ));
    }
    support::TempFile::new("routes.toml", &toml)
}

/// The layout of DESIGN.md's call center: `/frontend-audio` open, every
/// other path behind the token `tk`. Keep the files alive as long as shunt.
pub(crate) async fn audio_open_rest_token(
    args: &[&str],
) -> (support::EchoBackend, [support::TempFile; 2], support::Shunt) {
    let backend = support::echo_backend().spawn().await;
    let tokens = support::TempFile::new("tokens", "tk\n");
    let file = routes_config(
        &format!("token_file = \"{}\"", tokens.path()),
        &[
            ("/frontend-audio", "auth = \"none\""),
            ("/", "auth = \"token\""),
        ],
    );
    let mut argv = vec!["--config", file.path()];
    argv.extend_from_slice(args);
    let shunt = start(&backend, &argv).await;
    (backend, [tokens, file], shunt)
}
