//! Key exchange groups: the one crypto provider that serves TLS, and which
//! group each handshake negotiated.
//!
//! shunt's TLS runs on rustls' aws-lc-rs provider, the one that has the
//! hybrid post-quantum group X25519MLKEM768 that Chrome and Firefox offer
//! first. The listener prefers, in order, X25519MLKEM768, X25519, secp256r1
//! and secp384r1; `--tls-groups` / `tls_groups` keeps a subset, in the
//! order given. The upstream TLS client, the doctor and the ACME client use
//! the same provider. [`HandshakeCounts`] counts the handshakes per negotiated
//! group and kind (full or resumed) for `/status` and `/metrics`.

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
    pub(crate) const fn name(self) -> &'static str {
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
/// and 1.3 alike; `other` for a group outside [`KxGroup::ALL`], `none` for a
/// TLS 1.2 resumption, which exchanges no key) and per kind: `full`, or
/// `resumed` from a session ticket or the session cache.
#[derive(Debug, Default)]
pub struct HandshakeCounts([[AtomicU64; 2]; KxGroup::ALL.len() + 2]);

/// The `group` labels, in the order of [`HandshakeCounts`]' rows.
const GROUP_LABELS: [&str; KxGroup::ALL.len() + 2] = [
    KxGroup::ALL[0].name(),
    KxGroup::ALL[1].name(),
    KxGroup::ALL[2].name(),
    KxGroup::ALL[3].name(),
    "other",
    "none",
];

/// The `kind` labels: index 0 full, 1 resumed.
const KINDS: [&str; 2] = ["full", "resumed"];

impl HandshakeCounts {
    /// Count one handshake that negotiated `group` (`None`: no key
    /// exchange), `resumed` or full.
    pub(crate) fn record(&self, group: Option<NamedGroup>, resumed: bool) {
        let row = match group {
            Some(group) => KxGroup::ALL
                .iter()
                .position(|g| g.named() == group)
                .unwrap_or(KxGroup::ALL.len()),
            None => KxGroup::ALL.len() + 1,
        };
        self.0[row][usize::from(resumed)].fetch_add(1, Ordering::Relaxed);
    }

    fn count(&self, row: usize, kind: usize) -> u64 {
        self.0[row][kind].load(Ordering::Relaxed)
    }

    /// `{"X25519MLKEM768": 3, "X25519": 1, ...}` (both kinds) for `/status`.
    pub(crate) fn groups_json(&self) -> serde_json::Value {
        GROUP_LABELS
            .iter()
            .enumerate()
            .map(|(row, name)| {
                let n = self.count(row, 0) + self.count(row, 1);
                ((*name).to_owned(), n.into())
            })
            .collect::<serde_json::Map<_, _>>()
            .into()
    }

    /// `{"full": 3, "resumed": 5}` (every group) for `/status`.
    pub(crate) fn kinds_json(&self) -> serde_json::Value {
        KINDS
            .iter()
            .enumerate()
            .map(|(kind, name)| {
                let n: u64 = (0..GROUP_LABELS.len())
                    .map(|row| self.count(row, kind))
                    .sum();
                ((*name).to_owned(), n.into())
            })
            .collect::<serde_json::Map<_, _>>()
            .into()
    }

    /// `shunt_tls_handshakes_total{group, kind}` for `/metrics`.
    pub(crate) fn to_prometheus(&self, out: &mut String) {
        use std::fmt::Write;
        let _ = writeln!(
            out,
            "# HELP shunt_tls_handshakes_total TLS handshakes completed on the listener, by negotiated key exchange group and kind (full or resumed).\n# TYPE shunt_tls_handshakes_total counter"
        );
        for (row, group) in GROUP_LABELS.iter().enumerate() {
            for (kind, name) in KINDS.iter().enumerate() {
                let n = self.count(row, kind);
                let _ = writeln!(
                    out,
                    "shunt_tls_handshakes_total{{group=\"{group}\",kind=\"{name}\"}} {n}"
                );
            }
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
    fn counts_by_group_and_kind() {
        let c = HandshakeCounts::default();
        c.record(Some(NamedGroup::X25519), false);
        c.record(Some(NamedGroup::X25519), true);
        c.record(Some(NamedGroup::FFDHE2048), false);
        c.record(None, true);
        let j = c.groups_json();
        assert_eq!(j["X25519"], 2);
        assert_eq!(j["other"], 1);
        assert_eq!(j["none"], 1);
        assert_eq!(j["X25519MLKEM768"], 0);
        let k = c.kinds_json();
        assert_eq!(k["full"], 2);
        assert_eq!(k["resumed"], 2);
        let mut text = String::new();
        c.to_prometheus(&mut text);
        assert!(text.contains("shunt_tls_handshakes_total{group=\"X25519\",kind=\"resumed\"} 1\n"));
        assert!(text.contains("shunt_tls_handshakes_total{group=\"none\",kind=\"resumed\"} 1\n"));
        assert!(text.contains("shunt_tls_handshakes_total{group=\"secp256r1\",kind=\"full\"} 0\n"));
    }
}
