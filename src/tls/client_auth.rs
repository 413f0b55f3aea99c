//! Client certificates (mTLS) on the proxy listener: `[tls] client_ca`.
//!
//! The listener asks every TLS client for a certificate signed by the CA;
//! one is optional at the TLS level (`allow_unauthenticated`), so routes
//! without `auth = "mtls"` keep working for clients without one, while a
//! certificate the CA did not sign fails the handshake. [`ClientAuth`] is
//! the verifier the server config holds; it delegates to a rustls
//! `WebPkiClientVerifier` behind an `ArcSwap`, so a reload that re-reads
//! the CA file swaps the verifier for new handshakes without a new config
//! (like the certificates in [`super::CertStore`]). The crypto provider is
//! the one the listener's config was built with.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};

/// Why the client CA file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ClientCaError {
    /// Not readable, or not PEM.
    #[error("cannot read the client CA file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// No certificate rustls accepts as a trust anchor.
    #[error("the client CA file {path} holds no usable CA certificate")]
    Empty {
        /// The file.
        path: PathBuf,
    },
}

/// The CA certificates of `path`, as trust anchors.
pub(crate) fn load_roots(path: &Path) -> Result<Arc<RootCertStore>, ClientCaError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect())
        .map_err(|source| ClientCaError::Read {
            path: path.to_owned(),
            source,
        })?;
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(ClientCaError::Empty {
            path: path.to_owned(),
        });
    }
    Ok(Arc::new(roots))
}

/// The listener's client-certificate verifier, swappable on reload.
#[derive(Debug)]
pub struct ClientAuth {
    provider: Arc<CryptoProvider>,
    current: ArcSwap<Arc<dyn ClientCertVerifier>>,
}

fn build(
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, rustls::Error> {
    WebPkiClientVerifier::builder_with_provider(roots, provider)
        .allow_unauthenticated()
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))
}

impl ClientAuth {
    /// A verifier of certificates signed by `roots`, with `provider`'s algorithms.
    pub(crate) fn new(
        roots: Arc<RootCertStore>,
        provider: Arc<CryptoProvider>,
    ) -> Result<Arc<Self>, rustls::Error> {
        let verifier = build(roots, provider.clone())?;
        Ok(Arc::new(ClientAuth {
            provider,
            current: ArcSwap::from_pointee(verifier),
        }))
    }

    /// Verify new handshakes against `roots` from now on.
    pub(crate) fn store(&self, roots: Arc<RootCertStore>) -> Result<(), rustls::Error> {
        let verifier = build(roots, self.provider.clone())?;
        self.current.store(Arc::new(verifier));
        Ok(())
    }
}

impl ClientCertVerifier for ClientAuth {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    /// No hints: the CA can change on reload, and hints are only a hint.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.current
            .load()
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current
            .load()
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current
            .load()
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.current.load().supported_verify_schemes()
    }
}
