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
    pub use crate::start;
    pub use crate::support::raw::*;
    pub use crate::support::{IO_TIMEOUT, TempFile, echo_backend, eventually, logs};
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
