//! Key exchange groups: the one crypto provider that serves TLS, and which
//! group each handshake negotiated.
//!
//! shunt's TLS runs on rustls' aws-lc-rs provider, the one that has the
//! hybrid post-quantum group X25519MLKEM768 that Chrome and Firefox offer
//! first. The listener prefers, in order, X25519MLKEM768, X25519, secp256r1
//! and secp384r1; `--tls-groups` / `tls_groups` keeps a subset, in the
//! order given. The upstream TLS client, the doctor and the ACME client use
//! the same provider. [`GroupCounts`] counts the handshakes per negotiated
//! group for `/status` and `/metrics`.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rustls::NamedGroup;
use rustls::crypto::aws_lc_rs::kx_group;
use rustls::crypto::{CryptoProvider, SupportedKxGroup};

/// A key exchange group the listener may offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KxGroup {
    /// Hybrid post-quantum: X25519 with ML-KEM-768.
    X25519Mlkem768,
    /// Classic elliptic-curve Diffie-Hellman on Curve25519.
    X25519,
    /// NIST P-256.
    Secp256r1,
    /// NIST P-384.
    Secp384r1,
}

impl KxGroup {
    /// Every group, in the default order of preference.
    pub(crate) const ALL: [KxGroup; 4] = [
        KxGroup::X25519Mlkem768,
        KxGroup::X25519,
        KxGroup::Secp256r1,
        KxGroup::Secp384r1,
    ];

    /// The name as rustls spells it (and `tls_groups` takes it).
    pub(crate) fn name(self) -> &'static str {
        match self {
            KxGroup::X25519Mlkem768 => "X25519MLKEM768",
            KxGroup::X25519 => "X25519",
            KxGroup::Secp256r1 => "secp256r1",
            KxGroup::Secp384r1 => "secp384r1",
        }
    }

    /// A group by its rustls name, case-insensitive.
    pub(crate) fn parse(text: &str) -> Option<KxGroup> {
        KxGroup::ALL
            .into_iter()
            .find(|g| g.name().eq_ignore_ascii_case(text.trim()))
    }

    fn provider_group(self) -> &'static dyn SupportedKxGroup {
        match self {
            KxGroup::X25519Mlkem768 => kx_group::X25519MLKEM768,
            KxGroup::X25519 => kx_group::X25519,
            KxGroup::Secp256r1 => kx_group::SECP256R1,
            KxGroup::Secp384r1 => kx_group::SECP384R1,
        }
    }

    fn named(self) -> NamedGroup {
        self.provider_group().name()
    }
}

impl fmt::Display for KxGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The provider every TLS connection of shunt uses: aws-lc-rs, with
/// `groups` (empty: [`KxGroup::ALL`]) in that order of preference.
pub(crate) fn provider(groups: &[KxGroup]) -> Arc<CryptoProvider> {
    let groups = if groups.is_empty() {
        &KxGroup::ALL[..]
    } else {
        groups
    };
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.kx_groups = groups.iter().map(|g| g.provider_group()).collect();
    Arc::new(provider)
}

/// The name of a negotiated group (`X25519MLKEM768`, `X25519`, ...).
pub(crate) fn name_of(group: NamedGroup) -> &'static str {
    KxGroup::ALL
        .into_iter()
        .find(|g| g.named() == group)
        .map_or("other", KxGroup::name)
}

/// Handshakes completed on the listener, per negotiated group (TLS 1.2
/// and 1.3 alike); `other` for a group outside [`KxGroup::ALL`].
#[derive(Debug, Default)]
pub struct GroupCounts([AtomicU64; KxGroup::ALL.len() + 1]);

impl GroupCounts {
    /// Count one handshake that negotiated `group`.
    pub(crate) fn record(&self, group: NamedGroup) {
        let i = KxGroup::ALL
            .iter()
            .position(|g| g.named() == group)
            .unwrap_or(KxGroup::ALL.len());
        self.0[i].fetch_add(1, Ordering::Relaxed);
    }

    fn named(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        KxGroup::ALL
            .iter()
            .map(|g| g.name())
            .chain(["other"])
            .zip(self.0.iter().map(|c| c.load(Ordering::Relaxed)))
    }

    /// `{"X25519MLKEM768": 3, "X25519": 1, ...}` for `/status`.
    pub(crate) fn to_json(&self) -> serde_json::Value {
        self.named()
            .map(|(name, n)| (name.to_owned(), n.into()))
            .collect::<serde_json::Map<_, _>>()
            .into()
    }

    /// `shunt_tls_handshakes_total{group}` for `/metrics`.
    pub(crate) fn to_prometheus(&self, out: &mut String) {
        use std::fmt::Write;
        let _ = writeln!(
            out,
            "# HELP shunt_tls_handshakes_total TLS handshakes completed on the listener, by negotiated key exchange group.\n# TYPE shunt_tls_handshakes_total counter"
        );
        for (name, n) in self.named() {
            let _ = writeln!(out, "shunt_tls_handshakes_total{{group=\"{name}\"}} {n}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_case_insensitively() {
        assert_eq!(
            KxGroup::parse("x25519mlkem768"),
            Some(KxGroup::X25519Mlkem768)
        );
        assert_eq!(KxGroup::parse("SECP256R1"), Some(KxGroup::Secp256r1));
        assert_eq!(KxGroup::parse("P-256"), None);
    }

    #[test]
    fn the_provider_keeps_the_order_given() {
        let p = provider(&[KxGroup::X25519, KxGroup::X25519Mlkem768]);
        let names: Vec<_> = p.kx_groups.iter().map(|g| name_of(g.name())).collect();
        assert_eq!(names, ["X25519", "X25519MLKEM768"]);
        let all: Vec<_> = provider(&[])
            .kx_groups
            .iter()
            .map(|g| name_of(g.name()))
            .collect();
        assert_eq!(all, ["X25519MLKEM768", "X25519", "secp256r1", "secp384r1"]);
    }

    #[test]
    fn counts_by_group() {
        let c = GroupCounts::default();
        c.record(NamedGroup::X25519);
        c.record(NamedGroup::X25519);
        c.record(NamedGroup::FFDHE2048);
        let j = c.to_json();
        assert_eq!(j["X25519"], 2);
        assert_eq!(j["other"], 1);
        assert_eq!(j["X25519MLKEM768"], 0);
    }
}
