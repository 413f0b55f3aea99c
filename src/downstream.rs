//! Who is on the downstream side of a connection: the one value the accept
//! stage hands to every later stage of the flow.
//!
//! A module of its own (rather than a type in `connection`) so that `proxy`
//! and `forward`, which read it, do not import the stage above them.
//!
//! Behind a load balancer, `peer` is the client the balancer vouched for
//! (a PROXY protocol header, or trusted forwarding headers) and `via` the
//! balancer itself: every per-client feature keys on `peer`.

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;

use crate::policy::balancer::{Balancers, client_from_headers};

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
    /// The client's address: as the listener saw it, or as a trusted
    /// balancer named it (port 0 when taken from `X-Forwarded-For`).
    pub peer: SocketAddr,
    /// The trusted balancer the connection came through, if any.
    pub via: Option<SocketAddr>,
    /// Whether `peer` came from forwarding headers (`trust_forwarded_for`):
    /// the global IP lists then run per request, and `X-Forwarded-For`
    /// already lists the client.
    pub from_headers: bool,
    /// The address the client connected to: shunt's listener, or the
    /// balancer's front as its PROXY header says (sent on in a PROXY
    /// header to an upstream with `send_proxy_protocol`).
    pub local: SocketAddr,
    /// Whether the connection is TLS (sets `X-Forwarded-Proto`).
    pub tls: bool,
}

impl Downstream {
    /// A connection whose peer is the client, to `local`.
    pub(crate) fn direct(peer: SocketAddr, local: SocketAddr) -> Downstream {
        Downstream {
            peer,
            via: None,
            from_headers: false,
            local,
            tls: false,
        }
    }

    /// The address this hop appends to `X-Forwarded-For`: the HTTP peer
    /// (the L7 balancer when the client came from its headers, else the
    /// client: an L4 balancer speaking PROXY protocol is not an HTTP hop).
    pub(crate) fn hop(&self) -> IpAddr {
        match self.via {
            Some(via) if self.from_headers => via.ip(),
            _ => self.peer.ip(),
        }
    }

    /// This request's client: for a peer in `trusted_proxies` with
    /// `trust_forwarded_for`, the right-most untrusted hop its forwarding
    /// headers name (the peer becomes `via`); else the connection's.
    pub(crate) fn for_request(self, headers: &HeaderMap, balancers: &Balancers) -> Downstream {
        if !balancers.forwards_for(self.peer.ip()) {
            return self;
        }
        let client = client_from_headers(headers, self.peer.ip(), balancers);
        Downstream {
            peer: SocketAddr::new(client, 0),
            via: Some(self.peer),
            from_headers: true,
            local: self.local,
            tls: self.tls,
        }
    }
}
