//! The run flags, parsed once into typed overrides of the config file.
//!
//! A flag is checked where it is given: `--idle-timeout soon` fails at start
//! naming `--idle-timeout`, whatever the file says. What comes out,
//! [`Overrides`], holds typed values only; [`super::Config`] keeps it so that
//! a reload re-reads the file and lays the same overrides over it
//! ([`super::Config::reread`]), without keeping clap's raw strings around.
//! Paths given as flags are used as given (relative to the working
//! directory), unlike paths in the file, which are relative to the file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::ConfigError;
use super::parse::{
    algorithms, cidrs, origins, parse_acme_challenge, parse_acme_directory, parse_addr,
    parse_admin, parse_auth, parse_duration, parse_host, parse_hsts, parse_keepalive,
    parse_log_format, parse_proxy_versions, parse_rate, parse_route_flag, parse_tls_groups,
    parse_tunnel_settings, token_name,
};
use super::spec::{AcmeChallenge, LogFormat, ProbeKind, RouteSpec, TunnelSettings, UpstreamUrl};
use crate::cli::RunArgs;
use crate::policy::auth::AuthMode;
use crate::policy::ip::IpNet;
use crate::policy::keys::Alg;
use crate::policy::origin::OriginRule;
use crate::policy::rate::Rate;
use crate::proxy_header::Versions;
use crate::tls::KxGroup;
use http::HeaderValue;

/// Every run flag, typed; `None` (or an empty list) where the flag was not
/// given, so the file or the default decides.
#[derive(Debug, Clone)]
pub(super) struct Overrides {
    /// `--config`.
    pub config: Option<PathBuf>,
    /// `--listen`.
    pub listen: Option<SocketAddr>,
    /// `--admin`; `Some(None)` is `--admin off`.
    pub admin: Option<Option<SocketAddr>>,
    /// `--admin-host`, if given (it then replaces the file's list).
    pub admin_hosts: Option<Vec<String>>,
    /// `--direct`.
    pub direct: Option<UpstreamUrl>,
    /// `--nginx`.
    pub nginx: Option<UpstreamUrl>,
    /// Each `--route`, in order, with the default policy (the merge applies the real one).
    pub routes: Vec<RouteSpec>,
    /// `--connect-timeout`.
    pub connect_timeout: Option<Duration>,
    /// `--response-timeout`.
    pub response_timeout: Option<Duration>,
    /// `--header-timeout`.
    pub header_timeout: Option<Duration>,
    /// `--idle-timeout`.
    pub idle_timeout: Option<Duration>,
    /// `--drain-timeout`.
    pub drain_timeout: Option<Duration>,
    /// `--health-check`.
    pub health_check: Option<ProbeKind>,
    /// `--health-interval`.
    pub health_interval: Option<Duration>,
    /// `--health-timeout`.
    pub health_timeout: Option<Duration>,
    /// `--ws-check-interval` (`0s`: off).
    pub ws_check_interval: Option<Duration>,
    /// `--rise` (checked to be at least 1 in the merge).
    pub rise: Option<u32>,
    /// `--fall` (checked to be at least 1 in the merge).
    pub fall: Option<u32>,
    /// `--max-header-bytes` (checked against hyper's minimum in the merge).
    pub max_header_bytes: Option<usize>,
    /// `--log-format`.
    pub log_format: Option<LogFormat>,
    /// `--tls-cert`.
    pub tls_cert: Option<PathBuf>,
    /// `--tls-key`.
    pub tls_key: Option<PathBuf>,
    /// `--tls-client-ca`.
    pub tls_client_ca: Option<PathBuf>,
    /// `--tls-handshake-timeout`.
    pub tls_handshake_timeout: Option<Duration>,
    /// `--tls-groups`, if given (it then replaces the file's list).
    pub tls_groups: Option<Vec<KxGroup>>,
    /// `--tls-ticket-rotation`.
    pub tls_ticket_rotation: Option<Duration>,
    /// `--hsts`.
    pub hsts: Option<HeaderValue>,
    /// `--acme-domain` (each), if given (they then replace the file's `domains`).
    pub acme_domains: Option<Vec<String>>,
    /// `--acme-email`.
    pub acme_email: Option<String>,
    /// `--acme-directory`.
    pub acme_directory: Option<String>,
    /// `--acme-challenge`.
    pub acme_challenge: Option<AcmeChallenge>,
    /// `--acme-state-dir`.
    pub acme_state_dir: Option<PathBuf>,
    /// `--acme-ca-file`.
    pub acme_ca_file: Option<PathBuf>,
    /// `--http-listen`.
    pub http_listen: Option<SocketAddr>,
    /// `--https-port`.
    pub https_port: Option<u16>,
    /// `--upstream-ca`.
    pub upstream_ca: Option<PathBuf>,
    /// Not `--no-watch`.
    pub watch: bool,
    /// `--allow-ip`, if given (it then replaces the file's list).
    pub allow_ip: Option<Vec<IpNet>>,
    /// `--deny-ip`, if given (it then replaces the file's list).
    pub deny_ip: Option<Vec<IpNet>>,
    /// `--auth`.
    pub auth: Option<AuthMode>,
    /// `--token-file`.
    pub token_file: Option<PathBuf>,
    /// `--jwt-secret-file`.
    pub jwt_secret_file: Option<PathBuf>,
    /// `--jwt-public-key-file`.
    pub jwt_public_key_file: Option<PathBuf>,
    /// `--jwt-jwks-file`.
    pub jwt_jwks_file: Option<PathBuf>,
    /// `--jwt-jwks-url` (checked in the merge, with `--jwt-jwks-insecure-http`).
    pub jwt_jwks_url: Option<String>,
    /// `--jwt-jwks-insecure-http`.
    pub jwt_jwks_insecure_http: Option<bool>,
    /// `--jwt-jwks-refresh` (checked to be at least 1s in the merge).
    pub jwt_jwks_refresh: Option<Duration>,
    /// `--jwt-jwks-min-refresh`.
    pub jwt_jwks_min_refresh: Option<Duration>,
    /// `--jwt-algorithms`, if given (it then replaces the file's list).
    pub jwt_algorithms: Option<Vec<Alg>>,
    /// `--jwt-issuer`, if given (it then replaces the file's list).
    pub jwt_issuer: Option<Vec<String>>,
    /// `--jwt-audience`, if given (it then replaces the file's list).
    pub jwt_audience: Option<Vec<String>>,
    /// `--jwt-leeway`.
    pub jwt_leeway: Option<Duration>,
    /// `--token-query`.
    pub token_query: Option<String>,
    /// `--token-cookie`.
    pub token_cookie: Option<String>,
    /// `--token-subprotocol`.
    pub token_subprotocol: Option<String>,
    /// `--allow-origin`, if given (it then replaces the file's list).
    pub allow_origin: Option<Vec<OriginRule>>,
    /// `--require-origin`.
    pub require_origin: Option<bool>,
    /// `--cors`.
    pub cors: Option<bool>,
    /// `--rate`.
    pub rate: Option<Rate>,
    /// `--burst` (checked to be at least 1 in the merge).
    pub burst: Option<u32>,
    /// `--max-conns-per-ip` (checked to be at least 1 in the merge).
    pub max_conns_per_ip: Option<u32>,
    /// `--max-conns` (checked to be at least 1 in the merge).
    pub max_conns: Option<usize>,
    /// `--max-tracked-ips` (checked to be at least 1 in the merge).
    pub max_tracked_ips: Option<usize>,
    /// `--proxy-protocol`.
    pub proxy_protocol: Option<Versions>,
    /// `--trusted-proxy`, if given (it then replaces the file's list).
    pub trusted_proxies: Option<Vec<IpNet>>,
    /// `--proxy-protocol-optional-from`, if given (it then replaces the file's list).
    pub proxy_protocol_optional_from: Option<Vec<IpNet>>,
    /// `--trust-forwarded-for`.
    pub trust_forwarded_for: Option<bool>,
    /// `--tunnel-mode`, `--pipe-size`, `--max-pipes` (flags only, with their defaults).
    pub tunnel: TunnelSettings,
    /// `--frames`, `--ping-interval`, `--ping-timeout`, `--stall-after`.
    pub calls: super::calls::CallFlags,
    /// `--tcp-keepalive` (flag only; `None`: off).
    pub tcp_keepalive: Option<Duration>,
}

/// `items` if the flag was given at all (it then replaces the file's list).
fn given(items: &[String]) -> Option<&[String]> {
    (!items.is_empty()).then_some(items)
}

impl Overrides {
    /// Parse every flag of `a`, naming the flag in any error.
    pub(super) fn parse(a: &RunArgs) -> Result<Overrides, ConfigError> {
        let duration = |flag: &str, v: &Option<String>| {
            v.as_deref()
                .map(|v| parse_duration(&format!("--{flag}"), v))
                .transpose()
        };
        let url = |flag: &str, v: &Option<String>| {
            v.as_deref()
                .map(|v| UpstreamUrl::parse(&format!("--{flag}"), v))
                .transpose()
        };
        Ok(Overrides {
            config: a.config.clone(),
            listen: a
                .listen
                .as_deref()
                .map(|v| parse_addr("--listen", v))
                .transpose()?,
            admin: a
                .admin
                .as_deref()
                .map(|v| parse_admin("--admin", v))
                .transpose()?,
            admin_hosts: given(&a.admin_hosts)
                .map(|l| super::admin::host_names("--admin-host", l))
                .transpose()?,
            direct: url("direct", &a.direct)?,
            nginx: url("nginx", &a.nginx)?,
            routes: a
                .routes
                .iter()
                .map(|r| parse_route_flag(r))
                .collect::<Result<_, _>>()?,
            connect_timeout: duration("connect-timeout", &a.connect_timeout)?,
            response_timeout: duration("response-timeout", &a.response_timeout)?,
            header_timeout: duration("header-timeout", &a.header_timeout)?,
            idle_timeout: duration("idle-timeout", &a.idle_timeout)?,
            drain_timeout: duration("drain-timeout", &a.drain_timeout)?,
            health_check: a
                .health_check
                .as_deref()
                .map(|v| ProbeKind::parse("--health-check", v))
                .transpose()?,
            health_interval: duration("health-interval", &a.health_interval)?,
            health_timeout: duration("health-timeout", &a.health_timeout)?,
            ws_check_interval: duration("ws-check-interval", &a.ws_check_interval)?,
            rise: a.rise,
            fall: a.fall,
            max_header_bytes: a.max_header_bytes,
            log_format: a
                .log_format
                .as_deref()
                .map(|v| parse_log_format("--log-format", v))
                .transpose()?,
            tls_cert: a.tls_cert.clone(),
            tls_key: a.tls_key.clone(),
            tls_client_ca: a.tls_client_ca.clone(),
            tls_handshake_timeout: duration("tls-handshake-timeout", &a.tls_handshake_timeout)?,
            tls_groups: given(&a.tls_groups)
                .map(|l| parse_tls_groups("--tls-groups", l))
                .transpose()?,
            tls_ticket_rotation: duration("tls-ticket-rotation", &a.tls_ticket_rotation)?,
            hsts: a
                .hsts
                .as_deref()
                .map(|v| parse_hsts("--hsts", v))
                .transpose()?,
            acme_domains: given(&a.acme_domains)
                .map(|l| {
                    l.iter()
                        .map(|d| parse_host("--acme-domain", d))
                        .collect::<Result<Vec<_>, _>>()
                })
                .transpose()?,
            acme_email: a.acme_email.clone(),
            acme_directory: a
                .acme_directory
                .as_deref()
                .map(|v| parse_acme_directory("--acme-directory", v))
                .transpose()?,
            acme_challenge: a
                .acme_challenge
                .as_deref()
                .map(|v| parse_acme_challenge("--acme-challenge", v))
                .transpose()?,
            acme_state_dir: a.acme_state_dir.clone(),
            acme_ca_file: a.acme_ca_file.clone(),
            http_listen: a
                .http_listen
                .as_deref()
                .map(|v| parse_addr("--http-listen", v))
                .transpose()?,
            https_port: a.https_port,
            upstream_ca: a.upstream_ca.clone(),
            watch: !a.no_watch,
            allow_ip: given(&a.allow_ip)
                .map(|l| cidrs(("--allow-ip".into(), l)))
                .transpose()?,
            deny_ip: given(&a.deny_ip)
                .map(|l| cidrs(("--deny-ip".into(), l)))
                .transpose()?,
            auth: a
                .auth
                .as_deref()
                .map(|v| parse_auth("--auth", v))
                .transpose()?,
            token_file: a.token_file.clone(),
            jwt_secret_file: a.jwt_secret_file.clone(),
            jwt_public_key_file: a.jwt_public_key_file.clone(),
            jwt_jwks_file: a.jwt_jwks_file.clone(),
            jwt_jwks_url: a.jwt_jwks_url.clone(),
            jwt_jwks_insecure_http: a.jwt_jwks_insecure_http,
            jwt_jwks_refresh: duration("jwt-jwks-refresh", &a.jwt_jwks_refresh)?,
            jwt_jwks_min_refresh: duration("jwt-jwks-min-refresh", &a.jwt_jwks_min_refresh)?,
            jwt_algorithms: given(&a.jwt_algorithms)
                .map(|l| algorithms("--jwt-algorithms", l))
                .transpose()?,
            jwt_issuer: given(&a.jwt_issuer).map(<[String]>::to_vec),
            jwt_audience: given(&a.jwt_audience).map(<[String]>::to_vec),
            jwt_leeway: duration("jwt-leeway", &a.jwt_leeway)?,
            token_query: a
                .token_query
                .clone()
                .map(|q| token_name("--token-query / `token_query`", q))
                .transpose()?,
            token_cookie: a
                .token_cookie
                .clone()
                .map(|c| token_name("--token-cookie / `token_cookie`", c))
                .transpose()?,
            token_subprotocol: a
                .token_subprotocol
                .clone()
                .map(|c| token_name("--token-subprotocol / `token_subprotocol`", c))
                .transpose()?,
            allow_origin: given(&a.allow_origin)
                .map(|l| origins(("--allow-origin".into(), l)))
                .transpose()?,
            require_origin: a.require_origin,
            cors: a.cors,
            rate: a
                .rate
                .as_deref()
                .map(|v| parse_rate("--rate", v))
                .transpose()?,
            burst: a.burst,
            max_conns_per_ip: a.max_conns_per_ip,
            max_conns: a.max_conns,
            max_tracked_ips: a.max_tracked_ips,
            proxy_protocol: a
                .proxy_protocol
                .as_deref()
                .map(|v| parse_proxy_versions("--proxy-protocol", v))
                .transpose()?,
            trusted_proxies: given(&a.trusted_proxies)
                .map(|l| cidrs(("--trusted-proxy".into(), l)))
                .transpose()?,
            proxy_protocol_optional_from: given(&a.proxy_protocol_optional_from)
                .map(|l| cidrs(("--proxy-protocol-optional-from".into(), l)))
                .transpose()?,
            trust_forwarded_for: a.trust_forwarded_for,
            tunnel: parse_tunnel_settings(a)?,
            calls: super::calls::CallFlags::parse(a)?,
            tcp_keepalive: parse_keepalive(a.tcp_keepalive.as_deref())?,
        })
    }
}
