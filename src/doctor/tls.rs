//! Check 6: the listener's TLS certificates, when configured: the key
//! matches, the chain is in order, days to expiry (`warn` under 14 days,
//! `FAIL` when expired), the names cover `--url`'s host, and the chain
//! verifies against the system roots (a private CA or a self-signed
//! certificate gets a `warn`: browsers refuse `wss://` to it silently).
//!
//! Loading reuses [`crate::tls::certs::load`], the code a start or reload runs.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, RootCertStore};
use x509_parser::certificate::X509Certificate;

use super::{Context, Finding, Report};
use crate::tls::CertSpec;
use crate::tls::certs::{CertError, LoadedCert, load, name_covers};

/// `warn` when a certificate expires within this many days.
const EXPIRY_WARN_DAYS: i64 = 14;
/// Seconds in a day, for the days-to-expiry arithmetic.
const DAY: i64 = 86_400;

/// How a PEM chain must be ordered (what browsers and rustls expect).
const CHAIN_ORDER_FIX: &str = "order the PEM file: the leaf first, then the CA certificate that issued it, then that one's issuer";

/// One certificate that loaded: what it serves and its chain (the PEM
/// file's certificates, in file order, as the server sends them).
struct Served {
    /// What [`load`] made of it: the key, the names it serves and its summary.
    loaded: LoadedCert,
    /// Never empty: `key` skips a file it cannot read a certificate from.
    chain: Vec<CertificateDer<'static>>,
}

/// Check 6: for each certificate of the listener, the key, the chain order
/// and the expiry; then, for the one that would serve `--url`'s host (SNI),
/// the names and the trust.
///
/// A `wss://` `--url` with no certificate, or a `ws://` one with a TLS
/// listener, gets a `warn` first: browsers would speak the other protocol.
/// Files and the system store only: nothing here waits on the network.
pub(crate) fn check(ctx: &Context, report: &mut Report) {
    let Some(tls) = &ctx.config.tls else {
        if ctx.config.acme.is_some() {
            report.push(Finding::ok(
                "tls",
                "certificates from ACME only (the acme checks follow)",
            ));
            return;
        }
        if ctx.url.secure {
            report.push(Finding::warn(
                "tls",
                format!(
                    "--url {} is wss://, but the listener has no certificate (it speaks ws://)",
                    ctx.url
                ),
                "give --tls-cert and --tls-key, unless something in front of shunt terminates TLS",
            ));
        } else {
            report.push(Finding::ok(
                "tls",
                "not configured: the listener speaks plain ws://",
            ));
        }
        return;
    };
    if !ctx.url.secure {
        report.push(Finding::warn(
            "tls",
            format!("--url {} is ws://, but the listener speaks TLS", ctx.url),
            format!(
                "browsers must use wss://{}{}",
                ctx.url.host_header(),
                ctx.url.path_and_query
            ),
        ));
    }
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let mut served = Vec::new();
    for spec in &tls.certs {
        if let Some(s) = key(spec, &provider, report) {
            chain_order(spec, &s.chain, report);
            expiry(spec, &s.chain[0], report);
            served.push(s);
        }
    }
    let host = &ctx.url.host;
    let chosen = served
        .iter()
        .find(|s| s.loaded.names.iter().any(|n| name_covers(n, host)))
        .or(served.first());
    if let Some(s) = chosen {
        names(ctx, s, report);
        trust(ctx, s, &provider, report);
    }
}

/// The certificate and its key load together, with the code a start or a
/// reload runs ([`load`]), so this fails exactly when `run` would. A key that
/// belongs to another certificate of the file means the chain is out of
/// order, and says so. Returns what loaded, for the other checks. No network.
fn key(
    spec: &CertSpec,
    provider: &rustls::crypto::CryptoProvider,
    report: &mut Report,
) -> Option<Served> {
    let files = format!("{} + {}", spec.cert.display(), spec.key.display());
    match load(spec, provider) {
        Ok(loaded) => {
            let chain = CertificateDer::pem_file_iter(&spec.cert)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .unwrap_or_default();
            if chain.is_empty() {
                return None;
            }
            report.push(Finding::ok(
                "tls key",
                format!(
                    "{files}: the key matches the certificate ({})",
                    loaded.info.subject
                ),
            ));
            Some(Served { loaded, chain })
        }
        Err(e @ CertError::Key { .. }) => {
            if let Some(n) = key_owner(spec, provider).filter(|&n| n > 1) {
                report.push(Finding::fail(
                    "tls key",
                    format!(
                        "{e}: it belongs to certificate {n} of {}, so the chain is out of order",
                        spec.cert.display()
                    ),
                    CHAIN_ORDER_FIX,
                ));
                return None;
            }
            report.push(Finding::fail(
                "tls key",
                e.to_string(),
                format!(
                    "give the key that belongs to the certificate: compare `openssl x509 -noout -pubkey -in {}` with `openssl pkey -pubout -in {}`",
                    spec.cert.display(),
                    spec.key.display()
                ),
            ));
            None
        }
        Err(e) => {
            report.push(Finding::fail(
                "tls key",
                e.to_string(),
                "give PEM files: the certificate chain (leaf first) and its private key",
            ));
            None
        }
    }
}

/// The 1-based position of the certificate in `spec.cert` that the key
/// belongs to, if any: a key that matches a later certificate means the file
/// is out of order rather than the wrong key.
fn key_owner(spec: &CertSpec, provider: &rustls::crypto::CryptoProvider) -> Option<usize> {
    let chain = CertificateDer::pem_file_iter(&spec.cert)
        .ok()?
        .collect::<Result<Vec<_>, _>>()
        .ok()?;
    let key = PrivateKeyDer::from_pem_file(&spec.key).ok()?;
    chain
        .iter()
        .position(|c| CertifiedKey::from_der(vec![c.clone()], key.clone_key(), provider).is_ok())
        .map(|i| i + 1)
}

/// Parse one certificate; `None` when it is not valid X.509.
fn parse<'a>(der: &'a CertificateDer<'_>) -> Option<X509Certificate<'a>> {
    x509_parser::parse_x509_certificate(der)
        .ok()
        .map(|(_, c)| c)
}

/// Each certificate of the file is issued by the next, leaf first: the order
/// a TLS server must send. rustls serves a misordered file without
/// complaint, and browsers then fail to build the path (often only some of
/// them, which makes it hard to find by hand).
fn chain_order(spec: &CertSpec, chain: &[CertificateDer<'static>], report: &mut Report) {
    let file = spec.cert.display();
    let parsed: Vec<_> = chain.iter().filter_map(parse).collect();
    if parsed.len() != chain.len() {
        report.push(Finding::fail(
            "tls chain",
            format!("{file}: a certificate in the chain does not parse"),
            "replace the file with the chain your CA issued, in PEM",
        ));
        return;
    }
    for (i, pair) in parsed.windows(2).enumerate() {
        if pair[0].issuer().as_raw() != pair[1].subject().as_raw() {
            report.push(Finding::fail(
                "tls chain",
                format!(
                    "{file}: certificate {} ({}) is not issued by the next one ({})",
                    i + 1,
                    pair[0].subject(),
                    pair[1].subject()
                ),
                CHAIN_ORDER_FIX,
            ));
            return;
        }
    }
    if parsed[0].is_ca() {
        report.push(Finding::warn(
            "tls chain",
            format!("{file}: the first certificate is a CA certificate, not a server certificate"),
            "put the server (leaf) certificate first in the file",
        ));
        return;
    }
    report.push(Finding::ok(
        "tls chain",
        format!(
            "{file}: {} certificate(s), leaf first, each issued by the next",
            parsed.len()
        ),
    ));
}

/// Days to expiry of the leaf, against this machine's clock: `FAIL` when
/// expired or not valid yet, `warn` under [`EXPIRY_WARN_DAYS`] (time to renew
/// before browsers start refusing), `ok` otherwise.
fn expiry(spec: &CertSpec, leaf: &CertificateDer<'_>, report: &mut Report) {
    let file = spec.cert.display();
    let Some(cert) = parse(leaf) else { return };
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let validity = cert.validity();
    let not_after = validity.not_after.timestamp();
    let date = humantime::format_rfc3339_seconds(
        SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(not_after.max(0)).unwrap_or(0)),
    );
    let renew =
        "renew it (certbot renew, or your CA) and replace the file; shunt reloads it on change";
    if validity.not_before.timestamp() > now {
        report.push(Finding::fail(
            "tls expiry",
            format!("{file}: not valid yet (from {})", validity.not_before),
            "check the clock of this machine, or use a certificate valid now",
        ));
    } else if not_after <= now {
        report.push(Finding::fail(
            "tls expiry",
            format!(
                "{file}: EXPIRED {} day(s) ago, on {date}",
                (now - not_after) / DAY
            ),
            renew,
        ));
    } else if not_after - now < EXPIRY_WARN_DAYS * DAY {
        report.push(Finding::warn(
            "tls expiry",
            format!(
                "{file}: expires in {} day(s), on {date}",
                (not_after - now) / DAY
            ),
            renew,
        ));
    } else {
        report.push(Finding::ok(
            "tls expiry",
            format!(
                "{file}: valid for {} more days (until {date})",
                (not_after - now) / DAY
            ),
        ));
    }
}

/// The certificate's SANs cover `--url`'s host (the name browsers check;
/// the CN is not), with the wildcard rules of [`name_covers`]. The fix lists
/// the names the certificate has.
fn names(ctx: &Context, s: &Served, report: &mut Report) {
    let host = &ctx.url.host;
    let file = s.loaded.info.cert_file.display();
    let sans = s.loaded.info.sans.join(", ");
    if s.loaded.info.sans.iter().any(|n| name_covers(n, host)) {
        report.push(Finding::ok(
            "tls names",
            format!("{file} covers {host} (names: {sans})"),
        ));
    } else {
        report.push(Finding::fail(
            "tls names",
            format!("{file} does not cover {host}: it names {sans}"),
            format!(
                "use --url with one of {sans}, or get a certificate whose names include {host}"
            ),
        ));
    }
}

/// The chain verifies against the system roots, as a browser's would. A
/// private CA or a self-signed certificate gets a `warn`: browsers refuse
/// `wss://` to it without a prompt (only a page load shows the warning), so
/// the fix is a public certificate, or trusting the CA in development. A
/// certificate outside its validity is left to `tls expiry`. Reads the
/// system store only, no network.
fn trust(
    ctx: &Context,
    s: &Served,
    provider: &rustls::crypto::CryptoProvider,
    report: &mut Report,
) {
    let host = &ctx.url.host;
    let file = s.loaded.info.cert_file.display();
    if !parse(&s.chain[0]).is_some_and(|c| c.validity().is_valid()) {
        // Browsers refuse it for its dates first; trusting its CA would not help.
        report.push(Finding::warn(
            "tls trust",
            format!("{file}: not checked: the certificate is not valid now (see `tls expiry`)"),
            "renew the certificate first (see `tls expiry`), then run doctor again to check its trust",
        ));
        return;
    }
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    let dev_fix = format!(
        "a certificate from a public CA (e.g. Let's Encrypt) for {host}; in development, open https://{}/ once in the browser and trust the CA (`shunt cert` prints how)",
        ctx.url.host_header()
    );
    if roots.is_empty() {
        report.push(Finding::warn(
            "tls trust",
            format!("{file}: no system root certificates found to verify against"),
            "install the system CA bundle (ca-certificates)",
        ));
        return;
    }
    let Ok(name) = ServerName::try_from(host.clone()) else {
        return;
    };
    let verifier = match WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(provider.clone()),
    )
    .build()
    {
        Ok(v) => v,
        Err(e) => {
            report.push(Finding::warn(
                "tls trust",
                format!("{file}: not checked: {e}"),
                "install the system CA bundle (ca-certificates)",
            ));
            return;
        }
    };
    let result =
        verifier.verify_server_cert(&s.chain[0], &s.chain[1..], &name, &[], UnixTime::now());
    let self_signed =
        parse(&s.chain[0]).is_some_and(|c| c.issuer().as_raw() == c.subject().as_raw());
    match result {
        Ok(_) => report.push(Finding::ok(
            "tls trust",
            format!("{file}: the chain verifies against the system roots"),
        )),
        Err(rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        )) => report.push(Finding::ok(
            "tls trust",
            format!("{file}: the chain verifies against the system roots (for its own names)"),
        )),
        Err(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)) => {
            report.push(Finding::warn(
                "tls trust",
                format!(
                    "{file}: {} is not trusted by the system roots: browsers refuse wss:// to it silently",
                    if self_signed { "a self-signed certificate" } else { "a certificate from a private CA" }
                ),
                dev_fix,
            ));
        }
        Err(e) => report.push(Finding::warn(
            "tls trust",
            format!("{file}: does not verify against the system roots: {e}"),
            dev_fix,
        )),
    }
}
