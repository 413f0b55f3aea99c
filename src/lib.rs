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
//! two modules import each other, directly or round a circle. A side module
//! may use a stage (`app` wires them all, `admin` reads upstream health), as
//! long as that stage does not import it back. That is why shared types sit
//! low: the upstream stream, the pool and [`dial::Conn`] in [`dial`] (selection
//! dials, forward sends, the tunnel splices), and the response body type in
//! the leaf [`body`]. Each stage's error lives with the stage that produces it
//! ([`upgrade::UpgradeError`], [`upstream::SelectError`], [`forward::ForwardError`],
//! [`policy::Denied`]); [`response`] sits just below `proxy` and `connection`,
//! imports them all, and is the one place they become status codes.
//!
//! ```text
//! client ─▶ listener ─▶ connection: admission (policy: IP lists, caps) ─▶ tls? ─▶ hyper http1
//!        ─▶ proxy ─▶ upgrade (a valid WebSocket handshake?) ─▶ router (host + longest prefix)
//!        ─▶ policy (form, IP, rate, Origin, auth) ─▶ upstream (first healthy; connect fallback)
//!        ─▶ forward: request rewrite ─▶ plain HTTP ─or─ 101 ─▶ forward::tunnel
//! side:  app (wiring), cli, workers, config, live, reload, watch, upstream::{health, probe},
//!        tls certificates, runtime, policy, dial (upstream streams, pool), percent,
//!        body, error_chain, response, admin, stats, calls, prometheus, keepalive, fdlimit, telemetry,
//!        certgen, doctor (run on demand)
//! ```
//!
//! The flow, top to bottom:
//!
//! - [`listener`]: bind, and the accept loop that never dies on transient errors.
//! - [`connection`]: the accept stage: admission, refusal, TLS or plain, hyper's HTTP/1.1.
//! - [`tls`]: TLS termination for the listener (certificates, SNI, hot reload) and the
//!   client side for https upstreams.
//! - [`downstream`]: who the client is, as every later stage sees it.
//! - [`proxy`]: one request, top-down, ending in one access-log line.
//! - [`upgrade`]: is this a valid WebSocket handshake (RFC 6455)?
//! - [`router`]: path normalization and host + longest-prefix matching.
//! - [`upstream`]: upstreams, selection with connect-error fallback, connecting,
//!   keep-alive pools, health.
//! - [`forward`]: what the upstream is sent ([`forward::request`], [`forward::headers`]),
//!   the exchange, the WebSocket handshake written to the upstream by hand
//!   ([`forward::handshake`]), and the tunnel after a 101 ([`forward::tunnel`]).
//!
//! Beside the flow:
//!
//! - [`app`]: wiring, startup and shutdown; owns the root token, the tracker and the relay.
//! - [`cli`]: flags (with `SHUNT_*` twins) and subcommands.
//! - [`workers`]: `--workers`: a current-thread runtime and `SO_REUSEPORT` listener per
//!   core, each running [`listener`]'s accept loop.
//! - [`config`]: flags + TOML file → a validated [`config::Config`].
//! - [`live`]: the hot-swappable [`live::Snapshot`] (router, upstreams, timeouts).
//! - [`reload`]: rebuild and swap the snapshot, all or nothing.
//! - [`watch`]: reload when the config, certificate or secret files change on disk.
//! - [`runtime`]: handles shared by every connection (snapshot, counters, shutdown).
//! - [`policy`]: the security stage: IP lists, authentication, Origin, rate and
//!   connection limits.
//! - [`dial`]: connections to upstreams: TCP or TLS, hyper's client handshake, the
//!   keep-alive pool ([`dial::pool`]), and the one-request probe client ([`dial::probe`]);
//!   used by selection, forward, the tunnel, health probes and the doctor.
//! - [`percent`]: the one percent-decoder (paths and query parameters).
//! - [`body`]: the response body type and its builders (a leaf every stage can use).
//! - [`error_chain`]: how an error and its causes are printed where it is reported.
//! - [`response`]: the one place the stages' errors become status codes, bodies and
//!   `x-shunt-error` codes.
//! - [`doctor`]: `shunt doctor`, the troubleshooting checklist, run on demand.
//! - [`admin`]: `/healthz`, `/readyz`, `/status`, `/metrics`, `/calls`, `POST /reload`.
//! - [`stats`]: counters for `/status` and `/metrics`.
//! - [`calls`]: the live calls (WebSocket tunnels) for `/calls`, and their metrics.
//! - [`prometheus`]: label escaping for the `/metrics` text, shared by stats and calls.
//! - [`keepalive`]: TCP keepalive on both legs (`--tcp-keepalive`), for peers gone without a FIN.
//! - [`fdlimit`]: the open-files limit, raised at start, and whether `--max-conns` fits.
//! - [`telemetry`]: log output.
//! - [`certgen`]: development certificates (`shunt cert`).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod app;
pub mod body;
pub mod calls;
pub mod certgen;
pub mod cli;
pub mod config;
pub mod connection;
pub mod dial;
pub mod doctor;
pub mod downstream;
pub mod error_chain;
pub mod fdlimit;
pub mod forward;
pub mod keepalive;

pub mod listener;
pub mod live;
pub mod percent;
pub mod policy;
pub mod prometheus;
pub mod proxy;
pub mod reload;
pub mod response;
pub mod router;
pub mod runtime;
pub mod stats;
pub mod telemetry;
pub mod tls;
pub mod upgrade;
pub mod upstream;
pub mod watch;
pub mod workers;
