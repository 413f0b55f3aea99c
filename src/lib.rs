//! shunt: a sidecar reverse proxy for real-time WebSocket services.
//!
//! It sits beside a backend, terminates the client connection, and for each
//! route picks between the `direct` upstream (the backend) and the `nginx`
//! upstream with health-checked fallback, forwarding plain HTTP/1.1 and
//! joining WebSocket upgrades into tunnels.
//!
//! # Layout
//!
//! One WebSocket request, followed by file names, goes
//! `listener → connection → proxy → upgrade → router → upstream → forward →
//! tunnel`. A stage reaches only *down* the flow or into side modules, never
//! back up (`forward` names no `upstream`, `upgrade` or `proxy` item), and no
//! two modules import each other, directly or round a circle. Side modules
//! are called by the flow and do not call back into it, with these
//! exceptions, each one-way (the stage never imports the side module back):
//! `app` wires every stage; `live` builds the router and the upstreams a
//! snapshot holds; `admin` reads routes and upstream health for `/status` and
//! `/readyz`, and serves its own listener with `listener`'s accept loop.
//! `doctor` imports no stage: it checks the running shunt as a client would,
//! through `dial` and `config` (and fetches the JWKS through `jwks`). That is why shared types sit low: the upstream stream, the pool and `dial::Conn` in `dial` (selection
//! dials, forward sends, the tunnel splices), and the response body type in
//! the leaf `body`. Each stage's error lives with the stage that produces it
//! (`upgrade::UpgradeError`, `upstream::SelectError`, `forward::ForwardError`,
//! `policy::Denied`); `response` sits just below `proxy` and `connection`,
//! imports them all, and is the one place they become status codes.
//!
//! The crate is closed: every module is private. The `shunt` binary uses
//! the facade re-exported below; tests, examples and fuzz targets reach a
//! few internals through `testing` (feature `test-util`).
//!
//! ```text
//! client ─▶ listener ─▶ connection: PROXY header? (proxy_header, from trusted_proxies)
//!        ─▶ admission (checkpoint: IP lists, caps) ─▶ tls? ─▶ hyper http1
//!        ─▶ proxy ─▶ upgrade (a valid WebSocket handshake?) ─▶ router (host + longest prefix)
//!        ─▶ checkpoint (form, IP, rate, Origin, auth) ─▶ upstream (first healthy; connect fallback)
//!        ─▶ forward: request rewrite ─▶ plain HTTP ─or─ 101 ─▶ forward::tunnel
//! side:  app (wiring), cli, workers, config, live, reload, watch, upstream::{health, probe},
//!        tls certificates, handles, shutdown, policy, jwks, dial (upstream streams, pool, probe client),
//!        percent, ip_text, procnet, proxy_header, headers, body, error_chain, response, admin, stats,
//!        calls, prometheus,
//!        keepalive, fdlimit, telemetry (with the rate-limited refusal log), certgen,
//!        acme (certificates ordered and renewed, into the tls store), http_port,
//!        doctor (run on demand)
//! ```
//!
//! The flow, top to bottom:
//!
//! - `listener`: bind, and the accept loop that never dies on transient errors.
//! - `connection`: the accept stage: the PROXY header of a trusted balancer, admission,
//!   refusal, TLS or plain, hyper's HTTP/1.1;
//!   it lends each request a `forward::tunnel::Handoff` and starts the tunnel a 101
//!   left there once hyper lets go of the connection.
//! - `tls`: TLS termination for the listener (certificates, SNI, hot reload, session
//!   tickets (`tls::tickets`), the
//!   ACME certificate and TLS-ALPN-01 answers, key exchange groups: aws-lc-rs with
//!   X25519MLKEM768 first) and the client side for https upstreams.
//! - `downstream`: who the client is, as every later stage sees it.
//! - `proxy`: one request, top-down, ending in one access-log line.
//! - `upgrade`: is this a valid WebSocket handshake (RFC 6455)?
//! - `router`: path normalization and host + longest-prefix matching.
//! - `checkpoint`: the security checkpoint, per connection and per request, over
//!   the route's `policy` values.
//! - `upstream`: upstreams, selection with connect-error fallback, the failover of
//!   a handshake that was not upgraded, health (probes, rise/fall) and what each
//!   exchange means for it.
//! - `forward`: what the upstream is sent (`forward::request`, `headers`),
//!   the exchange, the WebSocket handshake written to the upstream by hand
//!   (`forward::handshake`), and the tunnel after a 101 (`forward::tunnel`:
//!   the tunnel task with its close policy, deadlines and outcome; each direction's
//!   copy, bulk and scan paths; shunt's own control frames and close codes; pipes;
//!   the reattaching upstream leg of `backend_loss = "reattach"`, which redials
//!   through `forward::reattach`).
//!
//! Beside the flow:
//!
//! - `app`: wiring, startup and shutdown; owns the root token, the tracker and the relay.
//! - `cli`: flags (with `SHUNT_*` twins) and subcommands.
//! - `workers`: `--workers`: a current-thread runtime per core, each running
//!   `listener`'s accept loop on its own `SO_REUSEPORT` listener, once no other
//!   process holds the port.
//! - `config`: flags + TOML file → a validated `config::Config`.
//! - `live`: the hot-swappable `live::Snapshot` (router, upstreams, timeouts).
//! - `reload`: rebuild and swap the snapshot, all or nothing.
//! - `watch`: reload when the config, certificate or secret files change on disk.
//! - `handles`: the handles every connection shares, one per role (shutdown, snapshot,
//!   counters, the per-client gate); each stage is given only those it uses.
//! - `shutdown`: the root cancellation token and the task tracker, as one handle.
//! - `policy`: the security values the config parses (IP lists, authentication,
//!   JWTs and their keys, what is forwarded of a credential, Origin rules, rate
//!   and connection limits, the load balancers trusted to name the client) and
//!   their refusals.
//! - `dial`: connections to upstreams: TCP or TLS, hyper's client handshake, the
//!   keep-alive pool (`dial::pool`), and the one-request probe client (`dial::probe`);
//!   used by selection, forward, the tunnel, health probes and the doctor.
//! - `jwks`: the identity provider's keys from `--jwt-jwks-url`, fetched and refreshed
//!   in the background; the last good set kept across failures and reloads.
//! - `percent`: the one percent-decoder (paths and query parameters).
//! - `ip_text`: an IP address as text, by hand (forwarding headers, the access line).
//! - `procnet`: listening sockets and the processes holding them, from `/proc`.
//! - `proxy_header`: the PROXY protocol header (v1, v2): the pure, bounded parser,
//!   reading exactly the header off a socket, and writing one towards an upstream.
//! - `headers`: header token lists, hop-by-hop removal, `X-Forwarded-*`, `x-shunt-route`;
//!   shared by `upgrade`, `forward` and `doctor`, so no stage imports a later one for them.
//! - `body`: the response body type and its builders (a leaf every stage can use).
//! - `error_chain`: how an error and its causes are printed where it is reported.
//! - `response`: the one place the stages' errors become status codes, bodies and
//!   `x-shunt-error` codes.
//! - `doctor`: `shunt doctor`, the troubleshooting checklist, run on demand.
//! - `admin`: `/healthz`, `/readyz`, `/status`, `/metrics`, `/calls`, `POST /reload`.
//! - `stats`: counters for `/status` and `/metrics`.
//! - `calls`: the live calls (WebSocket tunnels) for `/calls`, and their metrics.
//! - `prometheus`: label escaping for the `/metrics` text, shared by stats and calls.
//! - `keepalive`: TCP keepalive on both legs (`--tcp-keepalive`), for peers gone without a FIN.
//! - `fdlimit`: the open-files limit, raised at start, and whether `--max-conns` fits.
//! - `telemetry`: log output, the access lines (formatted straight into per-thread batches), and
//!   the rate-limited log of refused connections (one line per reason per second).
//! - `certgen`: development certificates (`shunt cert`).
//! - `acme`: `[acme]`: one certificate ordered from an ACME CA (instant-acme), kept in
//!   `state_dir`, renewed by a task on the root tracker and swapped into `tls`'s store;
//!   its challenge answers (TLS-ALPN-01 through the store, HTTP-01 through `http_port`).
//! - `http_port`: `--http-listen`: ACME HTTP-01 answers and a 308 to https://, no proxying.

#![forbid(unsafe_code)]
#![warn(missing_docs)]
// `unreachable_pub` (Cargo.toml's [lints]) judges reachability with the
// `test-util` facade on, as every test and clippy run builds it; without
// it, the items only `testing` exports would count as unreachable.
#![cfg_attr(not(feature = "test-util"), allow(unreachable_pub))]

// The facade: every module is private; these are the names the `shunt`
// binary uses. Tests, examples and fuzz targets reach a few internals
// through [`testing`], behind the `test-util` feature.
pub use admin::get_status as admin_status;
pub use app::{Running, StartError, start, start_workers};
pub use certgen::{
    CertGenError, DevCerts, generate as generate_dev_certs, write as write_dev_certs,
};
pub use cli::{CertArgs, Cli, Command, DoctorArgs, HealthcheckArgs, RunArgs};
pub use config::{Config, ConfigError, Scheme, parse_addr, parse_duration};
pub use doctor::{Options as DoctorOptions, Report as DoctorReport, run as run_doctor};
pub use fdlimit::{NoFile, check as check_open_files, raise_to_hard as raise_open_files_limit};
pub use reload::Trigger as ReloadTrigger;
pub use telemetry::{LogGuard, init as init_logging};
pub use tls::client::client_config;
pub use tls::load_cert_set;
pub use workers::default_count as default_worker_count;

/// Internals that tests, examples and fuzz targets exercise directly: the
/// frame tracker, the path normalizer and router, the request classifier,
/// certificate loading, the JWT verifier and the dashboard's assets.
#[cfg(feature = "test-util")]
pub mod testing {
    pub use crate::acme::set_retry_min as set_acme_retry_min;
    pub use crate::admin::dashboard::asset as dashboard_asset;
    pub use crate::body::full;
    pub use crate::config::RouteSpec;
    pub use crate::forward::tunnel::frames;
    pub use crate::policy::jwt::{JwtVerifier, Remote, sign_hs256};
    pub use crate::policy::keys::KeySet;
    pub use crate::proxy_header::{
        Header as ProxyHeader, Parsed as ProxyParsed, Versions as ProxyVersions,
        parse as parse_proxy_header,
    };
    pub use crate::router::{Route, Router, normalize_path};
    pub use crate::tls::CertSpec;
    pub use crate::tls::certs::{fingerprint, load as load_certs};
    pub use crate::tls::client::unverified_config;
    pub use crate::upgrade::classify;
}

mod acme;
mod admin;
mod app;
mod body;
mod calls;
mod certgen;
mod checkpoint;
mod cli;
mod config;
mod connection;
mod dial;
mod doctor;
mod downstream;
mod error_chain;
mod fdlimit;
mod forward;
mod handles;
mod headers;
mod http_port;
mod ip_text;
mod jwks;
mod keepalive;
mod listener;
mod live;
mod percent;
mod policy;
mod procnet;
mod prometheus;
mod proxy;
mod proxy_header;
mod reload;
mod response;
mod router;
mod shutdown;
mod stats;
mod telemetry;
mod tls;
mod upgrade;
mod upstream;
mod watch;
mod workers;
