//! Certificates from PEM files: the chain, the key, and what `/status` shows.
//!
//! Loading checks everything a handshake would need (the chain parses, the key
//! is RSA, ECDSA or Ed25519 in PKCS#8, PKCS#1 or SEC1, and it matches the leaf),
//! so a reload that would serve a broken certificate is refused before it is
//! swapped in. Uses rustls-pki-types' `PemObject` (rustls-pemfile is
//! unmaintained).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use x509_parser::extensions::GeneralName;

/// One configured certificate: files and the server names it is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSpec {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// SNI names this certificate answers; empty means "the names it covers".
    pub names: Vec<String>,
}

/// Why a certificate could not be loaded. Names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// The file is not valid PEM.
    #[error("{}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What the PEM reader found.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// The certificate file holds no certificate.
    #[error("{}: no certificate in the file", path.display())]
    Empty {
        /// The certificate file.
        path: PathBuf,
    },
    /// The leaf does not parse as X.509.
    #[error("{}: not a valid X.509 certificate: {reason}", path.display())]
    Parse {
        /// The certificate file.
        path: PathBuf,
        /// What the X.509 parser said.
        reason: String,
    },
    /// The key does not load, or does not match the certificate.
    #[error("{}: the key cannot be used with certificate {}", key.display(), cert.display())]
    Key {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What rustls said.
        #[source]
        source: rustls::Error,
    },
    /// TLS is on but no certificate is configured. Config validation already
    /// refuses that; the set is built here too, so it is checked here too.
    #[error("TLS is on but no certificate is configured")]
    NoCertificate,
}

/// What `/status` and the log say about a certificate.
#[derive(Debug, Clone)]
pub struct CertInfo {
    /// The leaf's subject, as text.
    pub subject: String,
    /// DNS names and IP addresses of the leaf.
    pub sans: Vec<String>,
    /// Start of validity (ACME renews at two thirds of the lifetime).
    pub not_before: SystemTime,
    /// End of validity: `/status` shows it so renewals are not missed.
    pub not_after: SystemTime,
    /// SHA-256 of the leaf's DER, upper-case hex pairs joined by `:`.
    pub fingerprint: String,
    /// Where the chain was read from.
    pub cert_file: PathBuf,
    /// Where the key was read from.
    pub key_file: PathBuf,
}

/// A certificate ready to serve.
#[derive(Debug)]
pub struct LoadedCert {
    /// What rustls serves.
    pub key: Arc<CertifiedKey>,
    /// What `/status` and the log say about it.
    pub info: CertInfo,
    /// Names matched against SNI (configured names, else the SANs).
    pub names: Vec<String>,
}

/// Load and check one certificate.
pub fn load(spec: &CertSpec, provider: &CryptoProvider) -> Result<LoadedCert, CertError> {
    let chain = read_chain(&spec.cert)?;
    let key = PrivateKeyDer::from_pem_file(&spec.key).map_err(|source| CertError::Pem {
        path: spec.key.clone(),
        source,
    })?;
    let info = describe(&chain[0], spec)?;
    let certified =
        CertifiedKey::from_der(chain, key, provider).map_err(|source| CertError::Key {
            cert: spec.cert.clone(),
            key: spec.key.clone(),
            source,
        })?;
    let names = if spec.names.is_empty() {
        info.sans.clone()
    } else {
        spec.names.clone()
    };
    Ok(LoadedCert {
        key: Arc::new(certified),
        info,
        names,
    })
}

/// Every certificate of a PEM chain, leaf first.
fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let chain = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|source| CertError::Pem {
            path: path.to_owned(),
            source,
        })?;
    if chain.is_empty() {
        return Err(CertError::Empty {
            path: path.to_owned(),
        });
    }
    Ok(chain)
}

/// What `/status` shows about the leaf: subject, SANs, expiry, fingerprint.
fn describe(leaf: &CertificateDer<'_>, spec: &CertSpec) -> Result<CertInfo, CertError> {
    let parse_err = |reason: String| CertError::Parse {
        path: spec.cert.clone(),
        reason,
    };
    let (_, cert) =
        x509_parser::parse_x509_certificate(leaf).map_err(|e| parse_err(e.to_string()))?;
    let mut sans = Vec::new();
    if let Ok(Some(ext)) = cert.subject_alternative_name() {
        for name in &ext.value.general_names {
            match name {
                GeneralName::DNSName(d) => sans.push(d.to_string()),
                GeneralName::IPAddress(bytes) => {
                    if let Some(ip) = ip_from_bytes(bytes) {
                        sans.push(ip.to_string());
                    }
                }
                _ => {}
            }
        }
    }
    let not_before_secs = cert.validity().not_before.timestamp();
    let not_before = SystemTime::UNIX_EPOCH + Duration::from_secs(not_before_secs.max(0) as u64);
    let not_after_secs = cert.validity().not_after.timestamp();
    let not_after = SystemTime::UNIX_EPOCH + Duration::from_secs(not_after_secs.max(0) as u64);
    Ok(CertInfo {
        subject: cert.subject().to_string(),
        sans,
        not_before,
        not_after,
        fingerprint: fingerprint(leaf),
        cert_file: spec.cert.clone(),
        key_file: spec.key.clone(),
    })
}

/// An IP SAN's raw bytes (4 or 16) as an address.
fn ip_from_bytes(bytes: &[u8]) -> Option<std::net::IpAddr> {
    match bytes.len() {
        4 => Some(std::net::IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?)),
        16 => Some(std::net::IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?)),
        _ => None,
    }
}

/// SHA-256 fingerprint of a DER certificate, as `AB:CD:...`.
pub fn fingerprint(der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    digest
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Whether a certificate name (possibly `*.example.com`) covers `host`.
pub(crate) fn name_covers(pattern: &str, host: &str) -> bool {
    let host = host.trim_end_matches('.');
    if pattern.eq_ignore_ascii_case(host) {
        return true;
    }
    match pattern.strip_prefix("*.") {
        Some(suffix) => host
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest.eq_ignore_ascii_case(suffix)),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_cover_one_label() {
        assert!(name_covers("*.example.com", "calls.example.com"));
        assert!(name_covers("*.example.com", "CALLS.example.com."));
        assert!(!name_covers("*.example.com", "a.b.example.com"));
        assert!(!name_covers("*.example.com", "example.com"));
        assert!(name_covers("localhost", "LOCALHOST"));
        assert!(!name_covers("localhost", "localhost2"));
    }
}
