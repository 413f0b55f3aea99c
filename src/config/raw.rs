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
    /// Host names the admin listener answers besides IP addresses and localhost.
    #[serde(default)]
    pub admin_hosts: Vec<String>,
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
    // --- security policy (policy/) ---
    #[serde(default)]
    pub allow_ip: Vec<String>,
    #[serde(default)]
    pub deny_ip: Vec<String>,
    /// Default `auth` of routes: none, token or jwt.
    pub auth: Option<String>,
    pub token_file: Option<String>,
    pub jwt_secret_file: Option<String>,
    pub jwt_issuer: Option<String>,
    pub jwt_audience: Option<String>,
    pub jwt_leeway: Option<String>,
    pub token_query: Option<String>,
    pub token_cookie: Option<String>,
    #[serde(default)]
    pub allow_origin: Vec<String>,
    pub require_origin: Option<bool>,
    pub cors: Option<bool>,
    pub rate: Option<String>,
    pub burst: Option<u32>,
    pub max_conns_per_ip: Option<u32>,
    pub max_conns: Option<usize>,
    pub max_tracked_ips: Option<usize>,
    // --- end security policy ---
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
    // --- security policy (policy/): each overrides the global default ---
    #[serde(default)]
    pub allow_ip: Vec<String>,
    #[serde(default)]
    pub deny_ip: Vec<String>,
    pub auth: Option<String>,
    /// Replaces the global allow_origin list for this route.
    pub allow_origin: Option<Vec<String>>,
    pub require_origin: Option<bool>,
    pub cors: Option<bool>,
    pub allow_connect: Option<bool>,
    pub allow_absolute_form: Option<bool>,
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
