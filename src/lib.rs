//! shunt: a sidecar reverse proxy for real-time WebSocket services.
//!
//! It sits beside a backend, terminates the client connection, and for each
//! route picks between the `direct` upstream (the backend) and the `nginx`
//! upstream with health-checked fallback, forwarding plain HTTP/1.1 and
//! joining WebSocket upgrades into tunnels.
//!
//! # Layout (data flow, top to bottom)
//!
//! ```text
//! client ─▶ listener ─▶ connection (hyper http1) ─▶ proxy
//!        ─▶ handshake (is it a valid WebSocket upgrade?) ─▶ router (host + longest prefix)
//!        ─▶ upstream (first healthy, connect-error fallback)
//!        ─▶ forward: plain HTTP ─or─ 101 ─▶ forward::tunnel
//! side: config, live (ArcSwap snapshot), reload, upstream::health, admin,
//!       stats, telemetry, runtime (shutdown token + tracker), response (errors → status)
//! ```
//!
//! - [`cli`]: flags and subcommands.
//! - [`config`]: flags + TOML file → validated [`config::Config`].
//! - [`live`]: the hot-swappable [`live::Snapshot`] (router, upstreams, timeouts).
//! - [`reload`]: rebuild and swap the snapshot, all or nothing.
//! - [`app`]: wiring, startup and shutdown.
//! - [`runtime`]: handles shared by every connection.
//! - [`listener`]: bind and accept.
//! - [`connection`]: one downstream HTTP/1.1 connection.
//! - [`proxy`]: one request, top-down.
//! - [`handshake`]: WebSocket handshake validation.
//! - [`router`]: path normalization and route matching.
//! - [`upstream`]: upstreams, selection, connecting, health.
//! - [`forward`]: header rewriting, forwarding, tunnels.
//! - [`policy`]: IP lists, authentication, Origin, rate and connection limits.
//! - [`response`]: errors → status codes and bodies.
//! - [`admin`]: `/healthz`, `/readyz`, `/status`, `POST /reload`.
//! - [`stats`]: counters for `/status`.
//! - [`calls`]: live calls (tunnels) for `/calls`, and their metrics.
//! - [`telemetry`]: log output.

#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod calls;
pub mod certgen;
pub mod cli;
pub mod config;
pub mod connection;
pub mod forward;
pub mod handshake;
pub mod listener;
pub mod live;
pub mod policy;
pub mod proxy;
pub mod reload;
pub mod response;
pub mod router;
pub mod runtime;
pub mod stats;
pub mod telemetry;
pub mod tls;
pub mod upstream;
pub mod watch;
