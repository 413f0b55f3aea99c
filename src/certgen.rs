//! `shunt cert`: a development CA and a server certificate signed by it.
//!
//! For local `wss://` testing only: the CA key is written next to the
//! certificates, so anyone holding the directory can mint certificates that
//! a machine trusting the CA accepts. Production certificates come from a
//! real CA (ACME/certbot, a company PKI); see `certs/README.md`.
//!
//! The CA is valid for ten years and the server certificate for 397 days (the
//! longest browsers accept), both
//! ECDSA P-256 via rcgen; keys are written owner-only. Names given with
//! `--name` become the server certificate's SANs (DNS names or IP addresses).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// A generated CA and server certificate, PEM-encoded.
#[derive(Debug)]
pub struct DevCerts {
    /// The development CA's certificate: what clients are told to trust.
    pub ca_cert: String,
    /// The CA's private key; only needed to issue more certificates.
    pub ca_key: String,
    /// The server certificate, signed by the CA, for the names asked for.
    pub server_cert: String,
    /// The server certificate's private key.
    pub server_key: String,
}

/// Why certificates could not be generated or written.
#[derive(Debug, thiserror::Error)]
pub enum CertGenError {
    /// rcgen could not make a key or sign a certificate.
    #[error("certificate generation")]
    Rcgen(#[from] rcgen::Error),
    /// A file could not be written.
    #[error("{}", path.display())]
    Write {
        /// The file that could not be written.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is there already and `--force` was not given.
    #[error("{} already exists; pass --force to overwrite", .0.display())]
    Exists(PathBuf),
    /// A `--name` that is neither a DNS name nor an IP address.
    #[error("`{0}` is not a DNS name or IP address")]
    BadName(String),
}

/// Server certificates are kept under the 398 days browsers accept.
const SERVER_DAYS: u64 = 397;
/// Ten years: a development CA should outlive the projects that trust it.
const CA_DAYS: u64 = 3650;

/// Generate a CA (`shunt development CA`) and a server certificate for `names`.
pub fn generate(names: &[String]) -> Result<DevCerts, CertGenError> {
    for n in names {
        let ok = n.parse::<IpAddr>().is_ok()
            || (!n.is_empty()
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '*')));
        if !ok {
            return Err(CertGenError::BadName(n.clone()));
        }
    }
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name
        .push(DnType::CommonName, "shunt development CA");
    ca.distinguished_name
        .push(DnType::OrganizationName, "shunt (development only)");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let [(y, m, d), (y2, m2, d2)] = validity(CA_DAYS);
    (ca.not_before, ca.not_after) = (
        rcgen::date_time_ymd(y, m, d),
        rcgen::date_time_ymd(y2, m2, d2),
    );
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, &ca_key);

    let server_key = KeyPair::generate()?;
    let mut server = CertificateParams::new(names.to_vec())?;
    server.is_ca = IsCa::ExplicitNoCa;
    server.distinguished_name.push(
        DnType::CommonName,
        names.first().map_or("localhost", String::as_str),
    );
    server.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let [(y, m, d), (y2, m2, d2)] = validity(SERVER_DAYS);
    (server.not_before, server.not_after) = (
        rcgen::date_time_ymd(y, m, d),
        rcgen::date_time_ymd(y2, m2, d2),
    );
    let server_cert = server.signed_by(&server_key, &issuer)?;

    Ok(DevCerts {
        ca_cert: ca_cert.pem(),
        ca_key: ca_key.serialize_pem(),
        server_cert: server_cert.pem(),
        server_key: server_key.serialize_pem(),
    })
}

/// `t` as an rcgen date (day granularity).
fn date(t: SystemTime) -> (i32, u8, u8) {
    let text = humantime::format_rfc3339_seconds(t).to_string();
    let num = |r: std::ops::Range<usize>| text[r].parse::<i32>().unwrap_or(1);
    (num(0..4), num(5..7) as u8, num(8..10) as u8)
}

/// Yesterday (for clock skew) and `days` from now.
fn validity(days: u64) -> [(i32, u8, u8); 2] {
    let day = Duration::from_secs(24 * 3600);
    let now = SystemTime::now();
    [date(now - day), date(now + day * days as u32)]
}

/// Write `ca.crt`, `ca.key`, `server.crt`, `server.key` into `dir` (keys mode 0600).
pub fn write(certs: &DevCerts, dir: &Path, force: bool) -> Result<Vec<PathBuf>, CertGenError> {
    let files = [
        ("ca.crt", &certs.ca_cert, false),
        ("ca.key", &certs.ca_key, true),
        ("server.crt", &certs.server_cert, false),
        ("server.key", &certs.server_key, true),
    ];
    if !force {
        for (name, _, _) in &files {
            let path = dir.join(name);
            if path.exists() {
                return Err(CertGenError::Exists(path));
            }
        }
    }
    std::fs::create_dir_all(dir).map_err(|source| CertGenError::Write {
        path: dir.to_owned(),
        source,
    })?;
    let mut written = Vec::new();
    for (name, pem, secret) in files {
        let path = dir.join(name);
        write_file(&path, pem, secret).map_err(|source| CertGenError::Write {
            path: path.clone(),
            source,
        })?;
        written.push(path);
    }
    Ok(written)
}

/// Write `text` to `path`; a new private key file (`secret`) is created
/// owner-only (0600), so the key is never readable by others, even briefly.
fn write_file(path: &Path, text: &str, secret: bool) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(path)?;
    file.write_all(text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_server_cert_loads_and_names_its_sans() {
        let certs = generate(&["localhost".into(), "127.0.0.1".into()]).unwrap();
        let dir = std::env::temp_dir().join(format!("shunt-certgen-{}", std::process::id()));
        write(&certs, &dir, true).unwrap();
        let spec = crate::tls::CertSpec {
            cert: dir.join("server.crt"),
            key: dir.join("server.key"),
            names: vec![],
        };
        let loaded =
            crate::tls::certs::load(&spec, &rustls::crypto::aws_lc_rs::default_provider()).unwrap();
        assert_eq!(
            loaded.info.sans,
            vec!["localhost".to_string(), "127.0.0.1".to_string()]
        );
        assert!(loaded.info.not_after > SystemTime::now() + Duration::from_secs(300 * 24 * 3600));
        assert!(matches!(
            write(&certs, &dir, false),
            Err(CertGenError::Exists(_))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn refuses_bad_names() {
        assert!(matches!(
            generate(&["a b".into()]),
            Err(CertGenError::BadName(_))
        ));
    }
}
