//! The certificate store read by every TLS handshake.
//!
//! A [`CertSet`] is swapped in whole behind `ArcSwap`: a handshake that started
//! keeps the certificate it was given, established connections are untouched,
//! and new handshakes see a renewed certificate as soon as a reload stores it.
//! SNI picks the first certificate whose names cover the requested host; the
//! first certificate is the default.
//!
//! With ACME on, the store also holds the ACME certificate (swapped in the
//! same way when a renewal lands) and the TLS-ALPN-01 challenge certificates.
//! A name covered by a file certificate uses it; other names, and a client
//! without SNI, get the ACME certificate. A handshake offering `acme-tls/1`
//! gets the challenge certificate of its SNI name or nothing at all.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::certs::{LoadedCert, name_covers};

/// The certificates served at one time; never empty.
#[derive(Debug)]
pub struct CertSet {
    certs: Vec<LoadedCert>,
}

impl CertSet {
    /// A set from loaded certificates; `None` if there are none.
    pub fn new(certs: Vec<LoadedCert>) -> Option<Self> {
        (!certs.is_empty()).then_some(CertSet { certs })
    }

    /// The certificates, default first.
    pub fn certs(&self) -> &[LoadedCert] {
        &self.certs
    }

    /// `shunt_certificate_expiry_seconds{name, source="file"}` of each file
    /// certificate (see [`expiry_line`]).
    pub fn expiry_to_prometheus(&self, out: &mut String, now: std::time::SystemTime) {
        for cert in &self.certs {
            expiry_line(out, cert, "file", now);
        }
    }

    /// The file certificate whose names cover `host`.
    fn find(&self, host: &str) -> Option<&LoadedCert> {
        self.certs
            .iter()
            .find(|c| c.names.iter().any(|n| name_covers(n, host)))
    }

    /// The certificate for `sni`, or the default.
    pub fn pick(&self, sni: Option<&str>) -> &Arc<CertifiedKey> {
        let chosen = sni.and_then(|host| {
            self.certs
                .iter()
                .find(|c| c.names.iter().any(|n| name_covers(n, host)))
        });
        &chosen.unwrap_or(&self.certs[0]).key
    }

    /// Things an operator should know: expiry within 14 days, names not covered.
    pub fn warnings(&self) -> Vec<String> {
        let soon = SystemTime::now() + Duration::from_secs(14 * 24 * 3600);
        let mut out = Vec::new();
        for c in &self.certs {
            let file = c.info.cert_file.display();
            if c.info.not_after <= SystemTime::now() {
                out.push(format!("certificate {file} has expired"));
            } else if c.info.not_after <= soon {
                out.push(format!(
                    "certificate {file} expires on {}",
                    humantime::format_rfc3339_seconds(c.info.not_after)
                ));
            }
            for name in &c.names {
                let covered = c
                    .info
                    .sans
                    .iter()
                    .any(|san| name_covers(san, name) || san.eq_ignore_ascii_case(name));
                if !covered {
                    out.push(format!(
                        "certificate {file} does not cover the configured name {name}"
                    ));
                }
            }
        }
        out
    }
}

/// The `# HELP`/`# TYPE` lines of `shunt_certificate_expiry_seconds`.
pub(crate) fn expiry_header(out: &mut String) {
    use std::fmt::Write;
    let _ = writeln!(
        out,
        "# HELP shunt_certificate_expiry_seconds Seconds until the served certificate's not_after (negative once expired).\n# TYPE shunt_certificate_expiry_seconds gauge"
    );
}

/// `shunt_certificate_expiry_seconds{name, source}`: seconds from `now`
/// until `cert`'s `not_after` (negative once expired), labelled with its
/// first name and where it comes from (`file` or `acme`), so an alert can
/// fire weeks ahead.
pub(crate) fn expiry_line(out: &mut String, cert: &LoadedCert, source: &str, now: SystemTime) {
    use std::fmt::Write;
    let left = match cert.info.not_after.duration_since(now) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    };
    let name = cert
        .names
        .first()
        .map_or(cert.info.subject.as_str(), String::as_str);
    let _ = writeln!(
        out,
        "shunt_certificate_expiry_seconds{{name=\"{}\",source=\"{source}\"}} {left:.0}",
        crate::prometheus::escape(name)
    );
}

/// The ALPN protocol of a TLS-ALPN-01 validation (RFC 8737).
pub(crate) const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// `ResolvesServerCert` over the swappable file certificates ([`CertSet`]),
/// the ACME certificate and the TLS-ALPN-01 challenge certificates.
#[derive(Debug, Default)]
pub struct CertStore {
    /// The file certificates (`None`: ACME only).
    current: ArcSwapOption<CertSet>,
    /// The ACME certificate, once there is one.
    acme: ArcSwapOption<LoadedCert>,
    /// TLS-ALPN-01 challenge certificates by lower-case domain, while an order is in flight.
    challenges: Mutex<HashMap<String, Arc<CertifiedKey>>>,
}

impl CertStore {
    /// A store serving `set` (file certificates, if any).
    pub fn new(set: Option<Arc<CertSet>>) -> Arc<Self> {
        let store = CertStore::default();
        store.current.store(set);
        Arc::new(store)
    }

    /// Serve `set` to new handshakes from now on.
    pub fn store(&self, set: Arc<CertSet>) {
        self.current.store(Some(set));
    }

    /// Serve `cert` as the ACME certificate to new handshakes from now on;
    /// established connections keep theirs.
    pub fn store_acme(&self, cert: Arc<LoadedCert>) {
        self.acme.store(Some(cert));
    }

    /// The ACME certificate served now.
    pub fn acme(&self) -> Option<Arc<LoadedCert>> {
        self.acme.load_full()
    }

    /// Answer TLS-ALPN-01 for `domain` with `cert` until [`CertStore::clear_challenge`].
    pub fn set_challenge(&self, domain: &str, cert: Arc<CertifiedKey>) {
        lock(&self.challenges).insert(domain.to_ascii_lowercase(), cert);
    }

    /// Stop answering TLS-ALPN-01 for `domain`.
    pub fn clear_challenge(&self, domain: &str) {
        lock(&self.challenges).remove(&domain.to_ascii_lowercase());
    }

    fn challenge(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let name = sni?.trim_end_matches('.').to_ascii_lowercase();
        lock(&self.challenges).get(&name).cloned()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let sni = hello.server_name();
        if hello
            .alpn()
            .is_some_and(|mut offered| offered.any(|p| p == ACME_TLS_ALPN))
        {
            return self.challenge(sni);
        }
        let files = self.current.load();
        let acme = self.acme.load();
        if let Some(host) = sni {
            if let Some(c) = files.as_ref().and_then(|set| set.find(host)) {
                return Some(c.key.clone());
            }
            if let Some(a) = acme
                .as_ref()
                .filter(|a| a.names.iter().any(|n| name_covers(n, host)))
            {
                return Some(a.key.clone());
            }
        }
        match (&*acme, &*files) {
            (Some(a), _) => Some(a.key.clone()),
            (None, Some(set)) => Some(set.pick(sni).clone()),
            (None, None) => None,
        }
    }
}
