//! Who is on the downstream side of a connection: the one value the accept
//! stage hands to every later stage of the flow.
//!
//! A module of its own (rather than a type in `connection`) so that `proxy`
//! and `forward`, which read it, do not import the stage above them.

use std::net::SocketAddr;

/// Who is on the downstream side of a connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Downstream {
    /// The client's address as the listener saw it.
    pub peer: SocketAddr,
    /// Whether the connection is TLS (sets `X-Forwarded-Proto`).
    pub tls: bool,
}
