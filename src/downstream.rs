//! Who is on the downstream side of a connection: the one value the accept
//! stage hands to every later stage of the flow.
//!
//! A module of its own (rather than a type in `connection`) so that `proxy`
//! and `forward`, which read it, do not import the stage above them.

use std::net::SocketAddr;

/// The TLS client's certificate, verified by `[tls] client_ca`: carried
/// as an extension of each request of its connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ClientCert {
    /// The subject's distinguished name (`CN=alice, O=Example`).
    pub subject: String,
    /// SHA-256 of the certificate's DER, as colon-separated hex.
    pub sha256: String,
}

impl ClientCert {
    /// The subject and fingerprint of a DER certificate.
    pub(crate) fn from_der(der: &[u8]) -> ClientCert {
        use x509_parser::prelude::FromDer;
        let subject = x509_parser::certificate::X509Certificate::from_der(der)
            .map(|(_, c)| c.subject().to_string())
            .unwrap_or_default();
        ClientCert {
            subject,
            sha256: crate::tls::certs::fingerprint(der),
        }
    }
}

/// Who is on the downstream side of a connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Downstream {
    /// The client's address as the listener saw it.
    pub peer: SocketAddr,
    /// Whether the connection is TLS (sets `X-Forwarded-Proto`).
    pub tls: bool,
}
