//! The certificate store read by every TLS handshake.
//!
//! A [`CertSet`] is swapped in whole behind `ArcSwap`: a handshake that started
//! keeps the certificate it was given, established connections are untouched,
//! and new handshakes see a renewed certificate as soon as a reload stores it.
//! SNI picks the first certificate whose names cover the requested host; the
//! first certificate is the default.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
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

    /// `shunt_certificate_expiry_seconds{name}`: seconds from `now` until
    /// each served certificate's `not_after` (negative once expired),
    /// labelled with its first name, so an alert can fire weeks ahead.
    pub fn expiry_to_prometheus(&self, out: &mut String, now: std::time::SystemTime) {
        use std::fmt::Write;
        let _ = writeln!(
            out,
            "# HELP shunt_certificate_expiry_seconds Seconds until the served certificate's not_after (negative once expired).\n# TYPE shunt_certificate_expiry_seconds gauge"
        );
        for cert in &self.certs {
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
                "shunt_certificate_expiry_seconds{{name=\"{}\"}} {left:.0}",
                crate::prometheus::escape(name)
            );
        }
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

/// `ResolvesServerCert` over a swappable [`CertSet`].
#[derive(Debug)]
pub struct CertStore {
    current: ArcSwap<CertSet>,
}

impl CertStore {
    /// A store serving `set`.
    pub fn new(set: Arc<CertSet>) -> Arc<Self> {
        Arc::new(CertStore {
            current: ArcSwap::new(set),
        })
    }

    /// Serve `set` to new handshakes from now on.
    pub fn store(&self, set: Arc<CertSet>) {
        self.current.store(set);
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load().pick(hello.server_name()).clone())
    }
}
