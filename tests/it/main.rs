//! shunt's integration tests, one test binary: each module is one area
//! (a former `tests/*.rs` file), and [`support`] starts everything they
//! talk to (shunt in-process or as a child, echo backends, nginx, clients).
//!
//! All tests share one process, so nothing here may change process-wide
//! state that another test could see: no environment variables set at run
//! time, no working-directory change, no signal sent to this process. Every
//! listener binds port 0 and every temporary path is unique per test.
//!
//! Adding a test file: put it at `tests/it/NAME.rs` with a `//!` saying what
//! it covers and `use crate::support;`, and add `mod NAME;` below. A test
//! that must have a process of its own (a `#[global_allocator]`, say) stays
//! a `tests/NAME.rs` of its own, with the reason in its `//!`.
//!
//! Parts of the environment cargo cannot install (nginx, network
//! namespaces, the browser, ...) are required or skipped by one convention:
//! see [`support::require`].

mod support;

mod access_log;
mod acme;
mod admin;
mod audio_client;
mod bench_client;
mod calls;
mod cli;
mod containers;
mod dashboard;
mod demo;
mod deploy;
mod doctor;
mod dual_stack;
mod fallback;
mod fdlimit;
mod fresh_clone;
mod grafana;
mod handshake;
mod harness;
mod health;
mod http;
mod jwks;
mod log_flood;
mod netns;
mod operator_input;
mod properties;
mod proxy_protocol;
mod readme;
mod reattach;
mod recovery;
mod reload;
mod security;
mod shutdown;
mod slow_client;
mod tls;
mod tls_resumption;
mod tunnel;
mod websocket;
mod workers;
