//! The answers to an ACME CA's challenges while an order is in flight.
//!
//! HTTP-01: the key authorization of each token, served by the plain HTTP
//! listener (`http_port`) at `/.well-known/acme-challenge/TOKEN`.
//! TLS-ALPN-01 (RFC 8737): a self-signed certificate for the domain with the
//! critical `acmeIdentifier` extension holding the SHA-256 of the key
//! authorization, served by the listener's resolver to a handshake that
//! offers `acme-tls/1`. Both are removed when the order ends.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rcgen::{CertificateParams, CustomExtension, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;

/// HTTP-01 key authorizations by token.
#[derive(Debug, Default)]
pub(crate) struct Http01Tokens(Mutex<HashMap<String, String>>);

impl Http01Tokens {
    /// Serve `key_authorization` for `token` until [`Http01Tokens::remove`].
    pub(crate) fn insert(&self, token: &str, key_authorization: &str) {
        self.lock()
            .insert(token.to_owned(), key_authorization.to_owned());
    }

    /// Stop serving `token`.
    pub(crate) fn remove(&self, token: &str) {
        self.lock().remove(token);
    }

    /// The key authorization for `token`, if an order is waiting on it.
    pub(crate) fn get(&self, token: &str) -> Option<String> {
        self.lock().get(token).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Why a TLS-ALPN-01 certificate could not be made.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ChallengeCertError {
    /// rcgen refused the parameters.
    #[error("cannot make the tls-alpn-01 certificate")]
    Rcgen(#[from] rcgen::Error),
    /// rustls refused the key.
    #[error("cannot load the tls-alpn-01 certificate")]
    Rustls(#[from] rustls::Error),
}

/// The TLS-ALPN-01 certificate for `domain`: self-signed, the domain as its
/// only SAN, `acmeIdentifier` = `digest` (SHA-256 of the key authorization).
pub(crate) fn tls_alpn_certificate(
    domain: &str,
    digest: &[u8],
) -> Result<Arc<CertifiedKey>, ChallengeCertError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec![domain.to_owned()])?;
    params.custom_extensions = vec![CustomExtension::new_acme_identifier(digest)];
    let cert = params.self_signed(&key)?;
    let chain: Vec<CertificateDer<'static>> = vec![cert.der().clone()];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let provider = crate::tls::groups::provider(&[]);
    // Not `from_der`: its key check parses the leaf with webpki, which
    // refuses the critical acmeIdentifier extension. The key is ours.
    let signing_key = provider.key_provider.load_private_key(key)?;
    Ok(Arc::new(CertifiedKey::new(chain, signing_key)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_challenge_certificate_carries_the_digest_in_a_critical_extension() {
        let digest = [7u8; 32];
        let ck = tls_alpn_certificate("calls.example.com", &digest).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&ck.cert[0]).unwrap();
        let ext = cert
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .expect("acmeIdentifier extension");
        assert!(ext.critical);
        // An OCTET STRING of 32 bytes.
        assert_eq!(&ext.value[..2], &[0x04, 0x20]);
        assert_eq!(&ext.value[2..], &digest);
    }

    #[test]
    fn tokens_come_and_go() {
        let t = Http01Tokens::default();
        t.insert("abc", "abc.thumb");
        assert_eq!(t.get("abc").as_deref(), Some("abc.thumb"));
        t.remove("abc");
        assert_eq!(t.get("abc"), None);
    }
}
