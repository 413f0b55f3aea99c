//! TLS termination for the proxy listener (`wss://`, `https://`).
//!
//! Sits between the listener and the connection in the flow. The rustls
//! server config is built once and reads certificates through [`CertStore`],
//! so renewing a certificate is a store, not a new config. A client that
//! speaks plain HTTP to the TLS port gets a 400 saying so; other garbage is
//! closed. Every handshake is bounded by the TLS handshake timeout.

pub(crate) mod certs;
pub(crate) mod client;
pub(crate) mod client_auth;
pub(crate) mod groups;
pub(crate) mod resolver;
pub(crate) mod stream;
pub(crate) mod tickets;

use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

pub(crate) use certs::CertError;
pub use certs::CertSpec;
pub(crate) use groups::KxGroup;
pub(crate) use resolver::{ACME_TLS_ALPN, CertSet, CertStore};
pub(crate) use stream::TlsStream;

/// TLS record type of a handshake: the first byte a TLS client sends.
const HANDSHAKE_RECORD: u8 = 0x16;

/// Why a downstream TLS connection did not come up.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AcceptError {
    /// The client sent a plain HTTP request to the TLS port (answered 400).
    #[error("plain HTTP sent to the TLS port")]
    PlainHttp,
    /// The first byte is not a TLS handshake record.
    #[error("not a TLS client hello")]
    NotTls,
    /// The handshake failed (no shared cipher, bad SNI, a reset).
    #[error("TLS handshake failed")]
    Handshake(#[source] std::io::Error),
    /// The client did not finish the handshake in time.
    #[error("TLS handshake timed out after {0:?}")]
    Timeout(Duration),
}

/// Load every configured certificate; all must load.
pub fn load_cert_set(specs: &[CertSpec]) -> Result<Arc<CertSet>, CertError> {
    let provider = groups::provider(&[]);
    let loaded = specs
        .iter()
        .map(|s| certs::load(s, &provider))
        .collect::<Result<Vec<_>, _>>()?;
    let set = CertSet::new(loaded).ok_or(CertError::NoCertificate)?;
    Ok(Arc::new(set))
}

/// The acceptor for the proxy listener: TLS 1.2 and 1.3, ALPN `http/1.1`
/// (and `http/1.0`, which `curl --http1.0` offers alone), session tickets,
/// the key exchange `groups` in that order (empty: every group, post-quantum first),
/// ticket keys rotated every `ticket_rotation` ([`tickets`]).
/// With `acme_tls_alpn`, `acme-tls/1` comes first, so a validation that offers
/// it negotiates it (and the resolver gives it the challenge certificate).
///
/// With `client_ca` (`[tls] client_ca`), clients are asked for a certificate
/// signed by it ([`client_auth`]); the verifier is returned too, for reloads.
pub(crate) fn acceptor(
    store: Arc<CertStore>,
    groups: &[KxGroup],
    ticket_rotation: Duration,
    acme_tls_alpn: bool,
    client_ca: Option<Arc<rustls::RootCertStore>>,
) -> Result<(TlsAcceptor, Option<Arc<client_auth::ClientAuth>>), rustls::Error> {
    let provider = groups::provider(groups);
    let client_auth = client_ca
        .map(|roots| client_auth::ClientAuth::new(roots, provider.clone()))
        .transpose()?;
    let builder =
        ServerConfig::builder_with_provider(provider).with_safe_default_protocol_versions()?;
    let builder = match &client_auth {
        Some(verifier) => builder.with_client_cert_verifier(verifier.clone()),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(store);
    config.alpn_protocols = vec![b"http/1.1".to_vec(), b"http/1.0".to_vec()];
    if acme_tls_alpn {
        config.alpn_protocols.insert(0, ACME_TLS_ALPN.to_vec());
    }
    // Stateless session tickets: a returning client resumes without a
    // certificate signature, and the server keeps no per-session state.
    // This config, and so its ticketer, lives as long as the process:
    // reloads swap the certificates and the client CA under it. The default
    // `session_storage` (an in-memory cache) stays for TLS 1.2 clients that
    // resume by session ID.
    config.ticketer = tickets::ticketer(ticket_rotation)?;
    Ok((TlsAcceptor::from(Arc::new(config)), client_auth))
}

/// Run the server side of the handshake on `stream` within `timeout`.
pub(crate) async fn accept(
    acceptor: &TlsAcceptor,
    mut stream: TcpStream,
    timeout: Duration,
) -> Result<TlsStream, AcceptError> {
    let handshake = async {
        let mut first = [0u8; 1];
        let n = stream
            .peek(&mut first)
            .await
            .map_err(AcceptError::Handshake)?;
        if n == 1 && first[0] != HANDSHAKE_RECORD {
            if first[0].is_ascii_uppercase() {
                let _ = stream.write_all(PLAIN_HTTP_ANSWER).await;
                let _ = stream.shutdown().await;
                return Err(AcceptError::PlainHttp);
            }
            return Err(AcceptError::NotTls);
        }
        TlsStream::accept(stream, acceptor.config().clone())
            .await
            .map_err(AcceptError::Handshake)
    };
    tokio::time::timeout(timeout, handshake)
        .await
        .map_err(|_| AcceptError::Timeout(timeout))?
}

/// What a plain-HTTP client on the TLS port is told, instead of a silent
/// close; like every answer shunt makes itself, it names its kind in
/// `x-shunt-error` ([`crate::response::X_SHUNT_ERROR`]).
const PLAIN_HTTP_ANSWER: &[u8] = b"HTTP/1.1 400 Bad Request\r\n\
content-type: text/plain; charset=utf-8\r\n\
x-shunt-error: plain_http_on_tls\r\n\
connection: close\r\n\
content-length: 59\r\n\
\r\n\
This port speaks TLS: use https:// or wss:// to reach it.\r\n";

#[cfg(test)]
mod tests {
    #[test]
    fn plain_http_answer_has_the_right_length() {
        let text = std::str::from_utf8(super::PLAIN_HTTP_ANSWER).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())));
    }
}
