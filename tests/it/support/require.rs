//! The one convention for parts of the test environment that a test needs
//! but `cargo` cannot install: nginx, network namespaces, the browser,
//! tc netem, node, openssl, IPv6 loopback, HAProxy, nginx's stream module,
//! pebble (an ACME server) and Python with PyJWT and websockets.
//!
//! A test that finds its part missing calls [`missing`]. Whether that is a
//! skip or a failure is decided by the environment:
//! - `CI=true`: every part is required, so nothing is skipped in CI;
//! - otherwise `SHUNT_REQUIRE=nginx,netns` (or `all`) requires the named parts.
//!
//! A required part that is missing fails the test with what to install. A
//! part that is not required is skipped with one line
//! `skipped: <test name>: <reason>` written straight to the process's stderr,
//! past libtest's capture, so a plain `cargo test` shows every skip.

use std::io::Write as _;

/// A part of the environment some tests need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Part {
    /// A real nginx binary (the `nginx` upstream).
    Nginx,
    /// Network namespaces, veth pairs and iptables (root).
    Netns,
    /// Chromium, node and `tests/browser/node_modules` (the dashboard tests).
    Browser,
    /// tc's netem qdisc (the `sch_netem` kernel module).
    Netem,
    /// node with its WebSocket client.
    Node,
    /// The openssl command.
    Openssl,
    /// An IPv6 loopback (`::1`).
    Ipv6,
    /// podman with runc, mmdebstrap, podman-compose and containers.conf's limits.
    Podman,
    /// A real HAProxy (`haproxy`), a PROXY protocol sender.
    Haproxy,
    /// nginx with its stream module (`ngx_stream_module.so`).
    NginxStream,
    /// Debian's pebble and pebble-challtestsrv: a real ACME server.
    Pebble,
    /// python3 with PyJWT, cryptography and websockets: an outside token minter and client.
    Python,
}

impl Part {
    /// Every part, in `SHUNT_REQUIRE`'s spelling order.
    pub(crate) const ALL: [Part; 12] = [
        Part::Nginx,
        Part::Netns,
        Part::Browser,
        Part::Netem,
        Part::Node,
        Part::Openssl,
        Part::Ipv6,
        Part::Podman,
        Part::Haproxy,
        Part::NginxStream,
        Part::Pebble,
        Part::Python,
    ];

    /// The name used in `SHUNT_REQUIRE`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Part::Nginx => "nginx",
            Part::Netns => "netns",
            Part::Browser => "browser",
            Part::Netem => "netem",
            Part::Node => "node",
            Part::Openssl => "openssl",
            Part::Ipv6 => "ipv6",
            Part::Podman => "podman",
            Part::Haproxy => "haproxy",
            Part::NginxStream => "nginx-stream",
            Part::Pebble => "pebble",
            Part::Python => "python",
        }
    }

    /// What to do so the part is there.
    pub(crate) fn install(self) -> &'static str {
        match self {
            Part::Nginx => "apt-get install nginx-light (or nginx)",
            Part::Netns => "run the tests as root with iproute2 and iptables installed",
            Part::Browser => {
                "apt-get install chromium fonts-liberation nodejs npm, then npm ci in tests/browser"
            }
            Part::Netem => {
                "run as root on a kernel with the sch_netem module (apt-get install iproute2)"
            }
            Part::Node => "apt-get install nodejs (node 22 or newer)",
            Part::Openssl => "apt-get install openssl",
            Part::Ipv6 => "enable IPv6 on the loopback interface (::1)",
            Part::Podman => {
                "apt-get install -y podman runc mmdebstrap && pip install podman-compose, \
                 and the containers.conf that .ci/run writes"
            }
            Part::Haproxy => "apt-get install haproxy",
            Part::NginxStream => "apt-get install libnginx-mod-stream",
            Part::Pebble => "apt-get install pebble",
            Part::Python => "python3 -m pip install pyjwt cryptography websockets",
        }
    }
}

/// Whether `part` is required, given the values of `CI` and `SHUNT_REQUIRE`
/// (the decision alone, without reading the environment).
pub(crate) fn required_by(part: Part, ci: Option<&str>, require: Option<&str>) -> bool {
    if ci == Some("true") {
        return true;
    }
    require.is_some_and(|list| {
        list.split(',')
            .map(str::trim)
            .any(|name| name == "all" || name == part.name())
    })
}

/// Whether `part` is required here (`CI=true`, or named in `SHUNT_REQUIRE`).
pub(crate) fn required(part: Part) -> bool {
    let ci = std::env::var("CI").ok();
    let require = std::env::var("SHUNT_REQUIRE").ok();
    required_by(part, ci.as_deref(), require.as_deref())
}

/// The current test's name (libtest names each test's thread after it).
pub(crate) fn test_name() -> String {
    std::thread::current()
        .name()
        .unwrap_or("<unnamed test>")
        .to_owned()
}

/// `part` is missing (`why` says how it showed): fails the test when the part
/// is required, else writes `skipped: <test>: <part>: <why>` to stderr,
/// uncaptured. The caller returns afterwards.
pub(crate) fn missing(part: Part, why: impl std::fmt::Display) {
    let test = test_name();
    if required(part) {
        panic!(
            "{test}: {} is required here (CI=true or SHUNT_REQUIRE names it) but missing: {why}; \
             to get it: {}",
            part.name(),
            part.install()
        );
    }
    skipped(&format!(
        "{}: {why} (to run it: {})",
        part.name(),
        part.install()
    ));
}

/// Writes `skipped: <test>: <reason>` straight to the process's stderr (past
/// libtest's capture of `eprintln!`).
pub(crate) fn skipped(reason: &str) {
    let line = format!("skipped: {}: {reason}\n", test_name());
    let _ = std::io::stderr().write_all(line.as_bytes());
}

/// `Ok` passes through; `Err(why)` is [`missing`] for `part` and gives `None`.
pub(crate) fn require<T>(part: Part, found: Result<T, String>) -> Option<T> {
    match found {
        Ok(value) => Some(value),
        Err(why) => {
            missing(part, why);
            None
        }
    }
}
