//! TLS towards `https://` upstreams (an nginx that only listens with TLS).
//!
//! Trusts the CA file given by `--upstream-ca` (or `ca` of the upstream), or
//! else the system's roots; SNI and certificate verification use the URL host.
//!
//! The client config is built per upstream when a snapshot is built, so a
//! CA file that fails to load fails the reload (the old snapshot stays), and a
//! renewed CA file is picked up by the next reload. ALPN is `http/1.1` only:
//! a WebSocket upgrade needs HTTP/1.1 on the upstream leg too.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ClientConfig;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// Why an upstream TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientTlsError {
    /// The CA file is not valid PEM.
    #[error("upstream CA file {}", path.display())]
    Ca {
        /// The CA file.
        path: PathBuf,
        /// What the PEM reader found.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// The CA file holds no certificate.
    #[error("upstream CA file {}: no usable CA certificate", path.display())]
    NoCa {
        /// The CA file.
        path: PathBuf,
    },
    /// No CA file and no system roots to verify the upstream with.
    #[error("no system root certificates found; give --upstream-ca")]
    NoSystemRoots,
    /// rustls refused the client configuration.
    #[error("TLS client setup")]
    Rustls(#[from] rustls::Error),
}

/// A client config trusting `ca` (PEM), or the system roots when `None`.
pub fn client_config(ca: Option<&Path>) -> Result<Arc<ClientConfig>, ClientTlsError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(path) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect())
                .map_err(|source| ClientTlsError::Ca {
                    path: path.to_owned(),
                    source,
                })?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(ClientTlsError::NoCa {
                    path: path.to_owned(),
                });
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(ClientTlsError::NoSystemRoots);
            }
        }
    }
    let provider = super::groups::provider(&[]);
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A client config that accepts any server certificate (ALPN `http/1.1`):
/// for `shunt doctor`'s end-to-end check, which judges the certificate in a
/// check of its own, and `audio_client --insecure`. Never used for upstreams.
pub fn unverified_config() -> Result<Arc<ClientConfig>, rustls::Error> {
    let provider = super::groups::provider(&[]);
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Accepts the server's certificate unverified; the handshake signatures are
/// still checked, so the server must hold the key of the certificate it sent.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
