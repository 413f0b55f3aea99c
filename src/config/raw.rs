//! The TOML config file as written, before validation.
//!
//! A serde mirror of the file with `deny_unknown_fields`, so a typo in a key is
//! an error that names it rather than a setting silently ignored. Values stay
//! strings here; [`super`] parses them into typed values.
//!
//! A duration key takes a string with a unit (`"500ms"`, `"2s"`, `"1m 30s"`)
//! or an integer number of seconds (`header_timeout = 5`), the same rule as the
//! flags, where a bare number is seconds too (`--header-timeout 5`).

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    /// `listen`: as `--listen`.
    pub listen: Option<String>,
    /// `admin`: as `--admin`.
    pub admin: Option<String>,
    /// `admin_hosts`: as `--admin-host`.
    #[serde(default)]
    pub admin_hosts: Vec<String>,
    /// `connect_timeout`: as `--connect-timeout`.
    #[serde(default, deserialize_with = "duration")]
    pub connect_timeout: Option<String>,
    /// `response_timeout`: as `--response-timeout`.
    #[serde(default, deserialize_with = "duration")]
    pub response_timeout: Option<String>,
    /// `header_timeout`: as `--header-timeout`.
    #[serde(default, deserialize_with = "duration")]
    pub header_timeout: Option<String>,
    /// `idle_timeout`: as `--idle-timeout`.
    #[serde(default, deserialize_with = "duration")]
    pub idle_timeout: Option<String>,
    /// `drain_timeout`: as `--drain-timeout`.
    #[serde(default, deserialize_with = "duration")]
    pub drain_timeout: Option<String>,
    /// `ping_interval`: as `--ping-interval` (call layer, `config/calls.rs`).
    #[serde(default, deserialize_with = "duration")]
    pub ping_interval: Option<String>,
    /// `ping_timeout`: as `--ping-timeout`.
    #[serde(default, deserialize_with = "duration")]
    pub ping_timeout: Option<String>,
    /// `stall_after`: as `--stall-after`.
    #[serde(default, deserialize_with = "duration")]
    pub stall_after: Option<String>,
    /// `frames`: as `--frames on|off`.
    pub frames: Option<bool>,
    /// `max_header_bytes`: as `--max-header-bytes`.
    pub max_header_bytes: Option<usize>,
    /// `log_format`: as `--log-format`.
    pub log_format: Option<String>,
    /// CA file trusted for https upstreams (relative paths: to the config file).
    pub upstream_ca: Option<String>,
    /// `tls_groups`: as `--tls-groups`.
    pub tls_groups: Option<Vec<String>>,
    /// `tls_ticket_rotation`: as `--tls-ticket-rotation`.
    #[serde(default, deserialize_with = "duration")]
    pub tls_ticket_rotation: Option<String>,
    /// `hsts`: as `--hsts`.
    pub hsts: Option<String>,
    /// `http_listen`: as `--http-listen`.
    pub http_listen: Option<String>,
    /// `https_port`: as `--https-port`.
    pub https_port: Option<u16>,
    /// `[acme]`: certificates ordered and renewed by shunt.
    pub acme: Option<RawAcme>,
    /// `tls`: as `--tls`.
    pub tls: Option<RawTls>,
    // --- security policy (policy/) ---
    /// `allow_ip`: as `--allow-ip`.
    #[serde(default)]
    pub allow_ip: Vec<String>,
    /// `deny_ip`: as `--deny-ip`.
    #[serde(default)]
    pub deny_ip: Vec<String>,
    /// Default `auth` of routes: none, token or jwt.
    pub auth: Option<String>,
    /// `token_file`: as `--token-file`.
    pub token_file: Option<String>,
    /// `jwt_secret_file`: as `--jwt-secret-file`.
    pub jwt_secret_file: Option<String>,
    /// `jwt_public_key_file`: as `--jwt-public-key-file`.
    pub jwt_public_key_file: Option<String>,
    /// `jwt_jwks_file`: as `--jwt-jwks-file`.
    pub jwt_jwks_file: Option<String>,
    /// `jwt_jwks_url`: as `--jwt-jwks-url`.
    pub jwt_jwks_url: Option<String>,
    /// `jwt_jwks_insecure_http`: as `--jwt-jwks-insecure-http`.
    pub jwt_jwks_insecure_http: Option<bool>,
    /// `jwt_jwks_refresh`: as `--jwt-jwks-refresh`.
    #[serde(default, deserialize_with = "duration")]
    pub jwt_jwks_refresh: Option<String>,
    /// `jwt_jwks_min_refresh`: as `--jwt-jwks-min-refresh`.
    #[serde(default, deserialize_with = "duration")]
    pub jwt_jwks_min_refresh: Option<String>,
    /// `jwt_algorithms`: as `--jwt-algorithms`.
    pub jwt_algorithms: Option<Vec<String>>,
    /// `jwt_issuer`: as `--jwt-issuer` (a string or a list).
    #[serde(default)]
    pub jwt_issuer: OneOrMany,
    /// `jwt_audience`: as `--jwt-audience` (a string or a list).
    #[serde(default)]
    pub jwt_audience: OneOrMany,
    /// `jwt_leeway`: as `--jwt-leeway`.
    #[serde(default, deserialize_with = "duration")]
    pub jwt_leeway: Option<String>,
    /// `token_query`: as `--token-query`.
    pub token_query: Option<String>,
    /// `token_cookie`: as `--token-cookie`.
    pub token_cookie: Option<String>,
    /// `token_subprotocol`: as `--token-subprotocol`.
    pub token_subprotocol: Option<String>,
    /// `forward_claims = { sub = "x-user-id" }`: default of routes.
    pub forward_claims: Option<BTreeMap<String, String>>,
    /// `allow_origin`: as `--allow-origin`.
    #[serde(default)]
    pub allow_origin: Vec<String>,
    /// `require_origin`: as `--require-origin`.
    pub require_origin: Option<bool>,
    /// `cors`: as `--cors`.
    pub cors: Option<bool>,
    /// `rate`: as `--rate`.
    pub rate: Option<String>,
    /// `burst`: as `--burst`.
    pub burst: Option<u32>,
    /// `max_conns_per_ip`: as `--max-conns-per-ip`.
    pub max_conns_per_ip: Option<u32>,
    /// `max_conns`: as `--max-conns`.
    pub max_conns: Option<usize>,
    /// `max_tracked_ips`: as `--max-tracked-ips`.
    pub max_tracked_ips: Option<usize>,
    /// `proxy_protocol`: as `--proxy-protocol` (`v1`, `v2` or `any`).
    pub proxy_protocol: Option<String>,
    /// `trusted_proxies`: as `--trusted-proxy`.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// `proxy_protocol_optional_from`: as `--proxy-protocol-optional-from`.
    #[serde(default)]
    pub proxy_protocol_optional_from: Vec<String>,
    /// `trust_forwarded_for`: as `--trust-forwarded-for`.
    pub trust_forwarded_for: Option<bool>,
    // --- end security policy ---
    /// Health-check defaults for every upstream.
    #[serde(default)]
    pub health: RawHealth,
    /// `[upstreams.NAME]` tables: upstreams besides (or replacing) `direct` and `nginx`.
    #[serde(default)]
    pub upstreams: BTreeMap<String, RawUpstream>,
    /// `[[routes]]`: routes before the `--route` flags (a flag for the same host and path wins).
    #[serde(default)]
    pub routes: Vec<RawRoute>,
}

/// `[upstreams.NAME]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawUpstream {
    /// `http://host[:port]` or `https://...`; no path.
    pub url: String,
    /// CA file for this https upstream, overriding `upstream_ca`.
    pub ca: Option<String>,
    /// `health = {...}`: this upstream's own probe settings, over flags and `[health]`.
    #[serde(default)]
    pub health: RawHealth,
    /// `send_proxy_protocol`: `v1` or `v2`, a PROXY header first on each connection.
    pub send_proxy_protocol: Option<String>,
}

/// `health = { check, interval, timeout, rise, fall, ws_check_interval }`,
/// every key optional.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHealth {
    /// `tcp`, `http:PATH` or `ws:PATH` (as `--health-check`).
    pub check: Option<String>,
    /// Time between probes (as `--health-interval`).
    #[serde(default, deserialize_with = "duration")]
    pub interval: Option<String>,
    /// Bound on one probe (as `--health-timeout`).
    #[serde(default, deserialize_with = "duration")]
    pub timeout: Option<String>,
    /// Successes that bring a down upstream up (as `--rise`).
    pub rise: Option<u32>,
    /// Failures that take an up upstream down (as `--fall`).
    pub fall: Option<u32>,
    /// Time between WebSocket checks on the paths of its WebSocket routes
    /// (as `--ws-check-interval`; `0` turns them off).
    #[serde(default, deserialize_with = "duration")]
    pub ws_check_interval: Option<String>,
}

/// `[[routes]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRoute {
    /// Path prefix, matched on whole segments.
    pub path: String,
    /// Upstream names, in order of preference.
    pub via: Vec<String>,
    /// Host the route is for (any host when absent).
    pub host: Option<String>,
    // --- security policy (policy/): each overrides the global default ---
    /// The route's own allow list, checked besides the global one.
    #[serde(default)]
    pub allow_ip: Vec<String>,
    /// The route's own deny list, checked besides the global one.
    #[serde(default)]
    pub deny_ip: Vec<String>,
    /// `none`, `token` or `jwt`; the global `auth` when absent.
    pub auth: Option<String>,
    /// Replaces the global allow_origin list for this route.
    pub allow_origin: Option<Vec<String>>,
    /// Refuse a WebSocket handshake without `Origin`.
    pub require_origin: Option<bool>,
    /// Answer CORS preflights and add `Access-Control-Allow-Origin`.
    pub cors: Option<bool>,
    /// Accept CONNECT on this route (off by default).
    pub allow_connect: Option<bool>,
    /// Accept absolute-form targets on this route (off by default).
    pub allow_absolute_form: Option<bool>,
    /// `true`: the accepted credential is forwarded too (off by default).
    pub forward_credential: Option<bool>,
    /// `true`: the client certificate's subject and SHA-256 go to the upstream.
    pub forward_client_cert: Option<bool>,
    /// Claims of the verified JWT passed as request headers, over the global table.
    pub forward_claims: Option<BTreeMap<String, String>>,
    /// This route's ping interval, over the global one (`0`: no pings).
    #[serde(default, deserialize_with = "duration")]
    pub ping_interval: Option<String>,
    /// This route's ping timeout, over the global one.
    #[serde(default, deserialize_with = "duration")]
    pub ping_timeout: Option<String>,
    /// `false`: a pure byte relay on this route (no frames tracked).
    pub frames: Option<bool>,
    /// `true`: the route carries WebSocket, so its upstreams get the
    /// WebSocket check from the start, before any call (default `false`:
    /// learned from the first 101).
    pub websocket: Option<bool>,
    // --- backend loss (forward/tunnel/reattach.rs) ---
    /// `close` (default: 1014 to the client) or `reattach`.
    pub backend_loss: Option<String>,
    /// How long a reattach keeps trying (default 10s).
    #[serde(default, deserialize_with = "duration")]
    pub reattach_within: Option<String>,
    /// How many first client messages are replayed to each new backend connection (default 1).
    pub replay_messages: Option<u32>,
    /// Most bytes of those messages (default 64 KiB).
    #[serde(default, deserialize_with = "size")]
    pub replay_bytes: Option<String>,
    /// Most client bytes held while the backend leg is replaced (default 256 KiB).
    #[serde(default, deserialize_with = "size")]
    pub reattach_buffer: Option<String>,
}

/// `[tls]`: one certificate (`cert`, `key`) and/or several (`[[tls.certs]]`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTls {
    /// The default certificate's PEM chain (as `--tls-cert`).
    pub cert: Option<String>,
    /// Its private key (as `--tls-key`).
    pub key: Option<String>,
    /// Bound on one TLS handshake (as `--tls-handshake-timeout`).
    #[serde(default, deserialize_with = "duration")]
    pub handshake_timeout: Option<String>,
    /// More certificates, picked by SNI.
    #[serde(default)]
    pub certs: Vec<RawCert>,
    /// CA whose client certificates are asked for (as `--tls-client-ca`).
    pub client_ca: Option<String>,
}

/// `[acme]`: one certificate for `domains`, from an ACME CA.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAcme {
    /// The names of the certificate (as `--acme-domain`).
    #[serde(default)]
    pub domains: Vec<String>,
    /// Contact e-mail (as `--acme-email`).
    pub email: Option<String>,
    /// Directory URL or shorthand (as `--acme-directory`).
    pub directory: Option<String>,
    /// `tls-alpn-01` or `http-01` (as `--acme-challenge`).
    pub challenge: Option<String>,
    /// Account key and certificates (as `--acme-state-dir`).
    pub state_dir: Option<String>,
    /// CA trusted for the ACME server (as `--acme-ca-file`).
    pub ca_file: Option<String>,
}

/// `[[tls.certs]]`: a certificate for the SNI names listed (default: its own names).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCert {
    /// PEM chain, relative to the config file's directory.
    pub cert: String,
    /// Its private key.
    pub key: String,
    /// SNI names it serves; its own DNS names when empty.
    #[serde(default)]
    pub names: Vec<String>,
}

/// A key that takes one string or a list of them.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum OneOrMany {
    /// Not set.
    #[default]
    None,
    /// One value.
    One(String),
    /// Several.
    Many(Vec<String>),
}

impl OneOrMany {
    /// The values, in order.
    pub(crate) fn to_vec(&self) -> Vec<String> {
        match self {
            OneOrMany::None => Vec::new(),
            OneOrMany::One(v) => vec![v.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

/// A key given as a string or as a whole number, kept as text for the
/// flags' parser; a fraction or a negative number is refused with `forms`,
/// the forms that work.
struct NumberOrText(&'static str);

impl serde::de::Visitor<'_> for NumberOrText {
    type Value = Option<String>;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Some(v.to_owned()))
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Some(v.to_string()))
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
        u64::try_from(v)
            .map(|v| Some(v.to_string()))
            .map_err(|_| E::invalid_value(serde::de::Unexpected::Signed(v), &self))
    }
}

/// A duration key: a string (parsed later with the flags' rule) or an
/// integer number of seconds, kept as its text.
fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    d.deserialize_any(NumberOrText(
        "a duration: whole seconds (5) or a string with a unit (\"500ms\", \"2s\", \"1m 30s\")",
    ))
}

/// A size: an integer number of bytes (`65536`) or a string with a unit (`"64 KiB"`).
fn size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    d.deserialize_any(NumberOrText(
        "a size: bytes (65536) or a string with a unit (\"64 KiB\", \"1 MiB\")",
    ))
}
