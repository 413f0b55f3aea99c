//! The TOML config file as written, before validation.
//!
//! A serde mirror of the file with `deny_unknown_fields`, so a typo in a key is
//! an error that names it rather than a setting silently ignored. Values stay
//! strings here; [`super`] parses them into typed values.

use std::collections::BTreeMap;

use serde::Deserialize;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub listen: Option<String>,
    pub admin: Option<String>,
    pub connect_timeout: Option<String>,
    pub response_timeout: Option<String>,
    pub header_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub drain_timeout: Option<String>,
    pub max_header_bytes: Option<usize>,
    pub log_format: Option<String>,
    /// CA file trusted for https upstreams (relative paths: to the config file).
    pub upstream_ca: Option<String>,
    pub tls: Option<RawTls>,
    /// Health-check defaults for every upstream.
    #[serde(default)]
    pub health: RawHealth,
    #[serde(default)]
    pub upstreams: BTreeMap<String, RawUpstream>,
    #[serde(default)]
    pub routes: Vec<RawRoute>,
}

/// `[upstreams.NAME]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub url: String,
    /// CA file for this https upstream, overriding `upstream_ca`.
    pub ca: Option<String>,
    #[serde(default)]
    pub health: RawHealth,
}

/// `health = { check, interval, timeout, rise, fall }`, every key optional.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    pub check: Option<String>,
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub rise: Option<u32>,
    pub fall: Option<u32>,
}

/// `[[routes]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub path: String,
    pub via: Vec<String>,
    pub host: Option<String>,
}

/// `[tls]`: one certificate (`cert`, `key`) and/or several (`[[tls.certs]]`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert: Option<String>,
    pub key: Option<String>,
    pub handshake_timeout: Option<String>,
    #[serde(default)]
    pub certs: Vec<RawCert>,
}

/// `[[tls.certs]]`: a certificate for the SNI names listed (default: its own names).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCert {
    pub cert: String,
    pub key: String,
    #[serde(default)]
    pub names: Vec<String>,
}
