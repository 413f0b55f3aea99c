//! The validated configuration: what shunt runs with.
//!
//! Raw sources become typed values, one step per file: [`raw`] mirrors the
//! TOML file (unknown keys are errors); `flags` parses the run flags once
//! into typed overrides; `merge` lays those over the file over the defaults,
//! and [`parse`] turns each winning text of the file into a typed value of
//! [`spec`]; `policy` does the same for the security settings. What comes
//! out, a [`Config`], holds validated values only, so the rest of the proxy
//! never re-checks a setting. A reload builds a whole new [`Config`] the same
//! way, laying the same typed overrides over the re-read file
//! ([`Config::reread`]), and changes nothing if that fails.
//!
//! # Import order
//!
//! The files import one another in one direction only, leaves first:
//!
//! ```text
//! raw, spec            the TOML mirror and the typed values (import no sibling)
//!   → parse            text → one typed value; `field_name` for error messages
//!   → admin, calls     admin host names; the call-layer settings
//!   → flags            the run flags → typed `Overrides`
//!   → policy           the security settings (reads `Overrides`)
//!   → merge            flags over file over defaults → `Config`
//!   → mod.rs           `Config`, `ConfigError`, build, reread, describe
//! ```
//!
//! Every file names `ConfigError` from this one; nothing else here points back up.

mod admin;
pub(crate) mod calls;
mod flags;
mod merge;
pub(crate) mod parse;
mod policy;
pub(crate) mod raw;
pub(crate) mod spec;

use std::fmt::{self, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Parser;

use crate::cli::RunArgs;
use crate::tls::CertSet;
use flags::Overrides;
use raw::RawConfig;

pub use parse::{parse_addr, parse_duration};
pub(crate) use spec::{
    AcmeChallenge, AcmeSpec, BackendLoss, CallSpec, GlobalPolicy, HealthSpec, JwksSettings,
    LogFormat, ProbeKind, ReattachSpec, RoutePolicy, Timeouts, TlsSpec, TunnelMode, TunnelSettings,
    UpstreamName, UpstreamSpec, UpstreamUrl,
};
pub use spec::{RouteSpec, Scheme};

/// Why a configuration was refused. Each names the field and the value at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A value that does not parse or is out of range.
    #[error("invalid {field}: `{value}`: {reason}")]
    Invalid {
        /// The setting, as the user wrote it (`--idle-timeout`, a file key).
        field: String,
        /// The value refused.
        value: String,
        /// What is wrong, and what would be right.
        reason: String,
    },
    /// The config file cannot be read.
    #[error("cannot read config file {}", path.display())]
    Read {
        /// The config file.
        path: PathBuf,
        /// Why it cannot be read.
        #[source]
        source: std::io::Error,
    },
    /// The config file is not valid TOML, or has an unknown key. One line:
    /// where, and what (an unknown key names the one meant when one is close).
    #[error("config file {}, line {line}, column {column}: {message}", path.display())]
    Parse {
        /// The config file.
        path: PathBuf,
        /// Where the problem starts, counted from 1.
        line: usize,
        /// The column on that line, counted from 1.
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// A route names an upstream that is not defined.
    #[error("route {route} names unknown upstream `{upstream}` (known: {known})")]
    UnknownUpstream {
        /// The route, by label.
        route: String,
        /// The name it used.
        upstream: String,
        /// The upstreams that are defined, for the message.
        known: String,
    },
    /// Two routes with the same host and path.
    #[error("route {route} is defined twice")]
    DuplicateRoute {
        /// The route, by label.
        route: String,
    },
    /// The flags themselves do not parse (clap's message).
    #[error("{0}")]
    Args(String),
}

impl ConfigError {
    /// A value refused, naming its field and why.
    pub(crate) fn invalid(
        field: &str,
        value: impl fmt::Display,
        reason: impl fmt::Display,
    ) -> Self {
        ConfigError::Invalid {
            field: field.to_owned(),
            value: value.to_string(),
            reason: reason.to_string(),
        }
    }
}

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the proxy listens (`--listen`).
    pub listen: SocketAddr,
    /// `None` when the admin listener is `off`.
    pub admin: Option<SocketAddr>,
    /// Host names the admin listener answers besides IP addresses and
    /// `localhost` (lowercase, no trailing dot).
    pub admin_hosts: Vec<String>,
    /// Connect, response, header, idle and drain timeouts.
    pub timeouts: Timeouts,
    /// Largest request head accepted; hyper answers 431 past it.
    pub max_header_bytes: usize,
    /// How log lines are written (`--log-format`).
    pub log_format: LogFormat,
    /// How tunnels move bytes; fixed at start.
    pub tunnel: TunnelSettings,
    /// Sorted by name.
    pub upstreams: Vec<UpstreamSpec>,
    /// Every route, in the order given (the router sorts by specificity).
    pub routes: Vec<RouteSpec>,
    /// TLS on the proxy listener, if configured.
    pub tls: Option<TlsSpec>,
    /// Key exchange groups the TLS listener offers, in order (`--tls-groups`);
    /// empty: all, post-quantum first. Fixed at start.
    pub tls_groups: Vec<crate::tls::KxGroup>,
    /// How often the session-ticket keys rotate (`--tls-ticket-rotation`). Fixed at start.
    pub tls_ticket_rotation: std::time::Duration,
    /// `Strict-Transport-Security` added on the TLS listener (`--hsts`); `None`: off.
    pub hsts: Option<http::HeaderValue>,
    /// `[acme]`: a certificate shunt orders and renews itself; fixed at start.
    pub acme: Option<AcmeSpec>,
    /// The plain listener for HTTP-01 and the redirect to https (`--http-listen`).
    pub http_listen: Option<SocketAddr>,
    /// The port that listener redirects to (`--https-port`); `None`: the listener's.
    pub https_port: Option<u16>,
    /// The config file, if any.
    pub file: Option<PathBuf>,
    /// Global security settings (IP lists, credentials, limits).
    pub policy: GlobalPolicy,
    /// Whether file changes trigger a reload (off with `--no-watch`).
    pub watch: bool,
    /// The flags this was built from, typed: a reload re-reads the file and
    /// lays the same overrides over it.
    flags: Arc<Overrides>,
}

impl Config {
    /// Build from run flags given as strings, exactly as on the command line
    /// (without the program name). Environment twins are read too.
    pub fn from_args<I, S>(args: I) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = S>,
        S: Into<std::ffi::OsString> + Clone,
    {
        #[derive(Parser)]
        struct Flags {
            #[command(flatten)]
            run: RunArgs,
        }
        let argv = std::iter::once(std::ffi::OsString::from("shunt"))
            .chain(args.into_iter().map(Into::into));
        let flags = Flags::try_parse_from(argv).map_err(|e| ConfigError::Args(e.to_string()))?;
        Config::build(&flags.run)
    }

    /// Read the config file named by `args` (if any) and merge `args` over it.
    pub fn build(args: &RunArgs) -> Result<Config, ConfigError> {
        Config::build_over(&Overrides::parse(args)?)
    }

    /// Read the config file named by `flags` (if any) and lay `flags` over it.
    fn build_over(flags: &Overrides) -> Result<Config, ConfigError> {
        let file = match &flags.config {
            Some(path) => read_file(path)?,
            None => RawConfig::default(),
        };
        let base = flags
            .config
            .as_deref()
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let merged = merge::Merge {
            flags,
            file: &file,
            base: &base,
        };
        merged.config()
    }

    /// Re-read the file and merge the same flags: the candidate for a reload.
    pub fn reread(&self) -> Result<Config, ConfigError> {
        Config::build_over(&self.flags)
    }

    /// The upstream called `name`.
    pub fn upstream(&self, name: &UpstreamName) -> Option<&UpstreamSpec> {
        self.upstreams.iter().find(|u| &u.name == name)
    }

    /// Files whose change on disk should trigger a reload: the config file,
    /// certificates and keys, upstream CA files, token and JWT secret files.
    pub fn watched_files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = self.file.iter().cloned().collect();
        for c in self.tls.iter().flat_map(|t| &t.certs) {
            files.push(c.cert.clone());
            files.push(c.key.clone());
        }
        files.extend(self.tls.iter().filter_map(|t| t.client_ca.clone()));
        files.extend(self.upstreams.iter().filter_map(|u| u.ca.clone()));
        files.extend(self.policy.files.iter().cloned());
        files.sort();
        files.dedup();
        files
    }

    /// The report of `shunt check`: listeners, upstreams, routes with their
    /// policy, certificates (`certs`, loaded by the caller as a start would),
    /// security settings and timeouts. One line per fact, for people to read.
    pub fn describe(&self, certs: Option<&CertSet>) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = self.write_report(&mut out, certs);
        out
    }

    fn write_report(&self, out: &mut String, certs: Option<&CertSet>) -> fmt::Result {
        writeln!(out, "configuration OK")?;
        writeln!(out, "listen  {}", self.listen)?;
        match self.admin {
            Some(a) => writeln!(out, "admin   {a}")?,
            None => writeln!(out, "admin   off")?,
        }
        if !self.admin_hosts.is_empty() {
            writeln!(out, "admin hosts {}", self.admin_hosts.join(", "))?;
        }
        self.write_upstreams(out)?;
        self.write_routes(out)?;
        if let Some(set) = certs {
            write_certs(out, set)?;
        }
        self.write_tls_extras(out)?;
        self.write_security(out)?;
        let t = &self.timeouts;
        writeln!(
            out,
            "timeouts: connect {} response {} header {} idle {} drain {}",
            humantime::format_duration(t.connect),
            humantime::format_duration(t.response),
            humantime::format_duration(t.header),
            humantime::format_duration(t.idle),
            humantime::format_duration(t.drain),
        )
    }

    /// ACME, the HTTP port, key exchange groups and HSTS, when set.
    fn write_tls_extras(&self, out: &mut String) -> fmt::Result {
        if let Some(a) = &self.acme {
            writeln!(
                out,
                "acme    {} via {} from {} (state {})",
                a.domains.join(", "),
                a.challenge.name(),
                a.directory,
                a.state_dir.display()
            )?;
        }
        if let Some(addr) = self.http_listen {
            let port = self.https_port.unwrap_or(self.listen.port());
            writeln!(
                out,
                "http    {addr} (ACME http-01, 308 to https port {port})"
            )?;
        }
        if !self.tls_groups.is_empty() {
            writeln!(out, "tls groups {}", join(&self.tls_groups))?;
        }
        if let Some(h) = &self.hsts {
            writeln!(out, "hsts    {}", String::from_utf8_lossy(h.as_bytes()))?;
        }
        Ok(())
    }

    fn write_upstreams(&self, out: &mut String) -> fmt::Result {
        writeln!(out, "upstreams:")?;
        for u in &self.upstreams {
            let h = &u.health;
            let used = self.routes.iter().any(|r| r.via.contains(&u.name));
            let ws_check = h.ws_check_interval.map_or_else(
                || "off".to_owned(),
                |d| humantime::format_duration(d).to_string(),
            );
            writeln!(
                out,
                "  {:<12} {:<28} check {} every {} timeout {} rise {} fall {}, ws check {}{}{}",
                u.name.0,
                u.url.to_string(),
                h.check,
                humantime::format_duration(h.interval),
                humantime::format_duration(h.timeout),
                h.rise,
                h.fall,
                ws_check,
                u.send_proxy_protocol
                    .map(|v| format!(", sends PROXY {}", v.as_str()))
                    .unwrap_or_default(),
                if used {
                    ""
                } else {
                    "  (unused: no route names it)"
                }
            )?;
        }
        Ok(())
    }

    fn write_routes(&self, out: &mut String) -> fmt::Result {
        writeln!(out, "routes (most specific first):")?;
        let mut routes: Vec<&RouteSpec> = self.routes.iter().collect();
        routes.sort_by_key(|r| std::cmp::Reverse(r.specificity()));
        for r in routes {
            let via: Vec<_> = r.via.iter().map(|n| n.0.as_str()).collect();
            let websocket = if r.websocket { "  (websocket)" } else { "" };
            writeln!(out, "  {:<28} -> {}{websocket}", r.label(), via.join(", "))?;
            let p = &r.policy;
            writeln!(
                out,
                "  {:<28}    auth {}, origins [{}]{}{}, ip allow {} deny {}",
                "",
                p.auth,
                join(&p.origins),
                if p.require_origin { " required" } else { "" },
                if p.cors { ", cors" } else { "" },
                p.ip.allow.len(),
                p.ip.deny.len(),
            )?;
            let mut forwards: Vec<String> = p
                .forward_claims
                .iter()
                .map(|c| format!("{} as {}", c.claim, c.header))
                .collect();
            if p.forward_credential {
                forwards.push("the credential".into());
            }
            if p.forward_client_cert {
                forwards.push("the client certificate".into());
            }
            if !forwards.is_empty() {
                writeln!(out, "  {:<28}    forwards: {}", "", forwards.join(", "))?;
            }
            writeln!(out, "  {:<28}    calls: {}", "", r.calls)?;
        }
        Ok(())
    }

    fn write_security(&self, out: &mut String) -> fmt::Result {
        let g = &self.policy;
        let limit = |v: Option<String>| v.unwrap_or_else(|| "unlimited".into());
        writeln!(
            out,
            "security: ip allow [{}] deny [{}]; tokens {}; jwt {}; rate {} burst {}; max-conns-per-ip {}; max-conns {}",
            join(&g.ip.allow),
            join(&g.ip.deny),
            g.credentials.tokens.as_ref().map_or(0, |t| t.len()),
            g.credentials
                .jwt
                .as_ref()
                .map_or_else(|| "off".to_owned(), |v| describe_jwt(v, g.jwks.as_ref())),
            limit(g.limits.rate.map(|r| r.to_string())),
            g.limits.burst,
            limit(g.limits.max_conns_per_ip.map(|n| n.to_string())),
            limit(g.limits.max_conns.map(|n| n.to_string())),
        )?;
        let b = &g.balancers;
        writeln!(
            out,
            "load balancers: proxy_protocol {}; trusted_proxies [{}]; proxy_protocol_optional_from [{}]; trust_forwarded_for {}",
            b.proxy_protocol.map_or("off", |v| v.as_str()),
            join(&b.trusted),
            join(&b.optional_from),
            if b.trust_forwarded_for { "on" } else { "off" },
        )
    }
}

/// The loaded certificates, the default first, and what is wrong with them.
fn write_certs(out: &mut String, set: &CertSet) -> fmt::Result {
    writeln!(out, "tls certificates (the first is the default):")?;
    for c in set.certs() {
        writeln!(
            out,
            "  {} ({}) names {} not after {} sha256 {}",
            c.info.cert_file.display(),
            c.info.subject,
            c.names.join(", "),
            humantime::format_rfc3339_seconds(c.info.not_after),
            c.info.fingerprint
        )?;
    }
    for warning in set.warnings() {
        writeln!(out, "warning: {warning}")?;
    }
    Ok(())
}

/// `a, b, c`: a list as the report shows it.
fn join<T: fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Read and parse the config file; unknown keys are errors ([`raw`]).
fn read_file(path: &Path) -> Result<RawConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| {
        let (line, column) = e
            .span()
            .map_or((1, 1), |span| line_and_column(&text, span.start));
        ConfigError::Parse {
            path: path.to_owned(),
            line,
            column,
            message: explain_toml_error(e.message()),
        }
    })
}

/// The 1-based line and column of byte `offset` in `text`.
fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit('\n')
        .next()
        .map_or(1, |l| l.chars().count() + 1);
    (line, column)
}

/// What `shunt check` says of the JWT verifier: its secret, keys and JWKS URL.
fn describe_jwt(v: &crate::policy::auth::JwtVerifier, jwks: Option<&JwksSettings>) -> String {
    let mut parts = Vec::new();
    if v.has_secret() {
        parts.push("HS256 secret".to_owned());
    }
    if !v.keys().is_empty() {
        parts.push(format!("{} public keys", v.keys().len()));
    }
    if let Some(j) = jwks {
        parts.push(format!(
            "JWKS {} (refresh {})",
            j.url.text,
            humantime::format_duration(j.refresh)
        ));
    }
    parts.join(" + ")
}

/// toml's message, with an unknown key's list of every valid key replaced
/// by the one meant, when one is close (`unknown key `alow_ip`; did you mean
/// `allow_ip`?`); the list stays when none is.
fn explain_toml_error(message: &str) -> String {
    let message = message.trim();
    let Some(rest) = message.strip_prefix("unknown field `") else {
        return message.to_owned();
    };
    let Some((key, expected)) = rest.split_once('`') else {
        return message.to_owned();
    };
    let known: Vec<&str> = expected
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|k| !k.is_empty())
        .collect();
    match closest(key, &known) {
        Some(meant) => format!("unknown key `{key}`; did you mean `{meant}`?"),
        None if known.is_empty() => format!("unknown key `{key}`"),
        None => format!(
            "unknown key `{key}` (known here: {})",
            known
                .iter()
                .map(|k| format!("`{k}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// The key in `known` closest to `key` by edit distance, if it is close
/// enough to be a typo (at most a third of the key's length, and 3).
fn closest<'a>(key: &str, known: &[&'a str]) -> Option<&'a str> {
    let limit = (key.chars().count() / 3).clamp(1, 3);
    known
        .iter()
        .map(|k| (strsim::damerau_levenshtein(key, k), *k))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

#[cfg(test)]
mod tests {
    use super::parse::{parse_duration, parse_route_flag};
    use super::*;
    use std::time::Duration;

    #[test]
    fn an_unknown_key_names_the_one_meant_when_one_is_close() {
        let message =
            "unknown field `alow_ip`, expected one of `listen`, `admin`, `allow_ip`, `deny_ip`";
        assert_eq!(
            explain_toml_error(message),
            "unknown key `alow_ip`; did you mean `allow_ip`?"
        );
        assert_eq!(
            explain_toml_error("unknown field `zzzzzz`, expected one of `listen`, `admin`"),
            "unknown key `zzzzzz` (known here: `listen`, `admin`)"
        );
        assert_eq!(
            explain_toml_error("unknown field `x`, expected `url`"),
            "unknown key `x` (known here: `url`)"
        );
        assert_eq!(explain_toml_error("invalid string\n"), "invalid string");
    }

    #[test]
    fn a_parse_error_is_one_line_with_its_position() {
        let dir = std::env::temp_dir().join(format!("shunt-parse-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("t.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:0\"\n  alow_ip = [\"10.0.0.0/8\"]\n",
        )
        .unwrap();
        let e = read_file(&file).unwrap_err().to_string();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(!e.contains('\n'), "{e}");
        assert!(
            e.ends_with(", line 2, column 3: unknown key `alow_ip`; did you mean `allow_ip`?"),
            "{e}"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(
            parse_duration("x", "500ms").unwrap(),
            Duration::from_millis(500)
        );
        assert_eq!(parse_duration("x", "2s").unwrap(), Duration::from_secs(2));
        assert_eq!(
            parse_duration("x", "1h").unwrap(),
            Duration::from_secs(3600)
        );
        assert_eq!(parse_duration("x", "7").unwrap(), Duration::from_secs(7));
        let err = parse_duration("--idle-timeout", "soon")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--idle-timeout") && err.contains("soon"),
            "{err}"
        );
    }

    #[test]
    fn upstream_urls() {
        let u = UpstreamUrl::parse("x", "http://127.0.0.1:5006").unwrap();
        assert_eq!(
            (u.scheme, u.host.as_str(), u.port),
            (Scheme::Http, "127.0.0.1", 5006)
        );
        let u = UpstreamUrl::parse("x", "https://[::1]/").unwrap();
        assert_eq!(
            (u.scheme, u.host.as_str(), u.port),
            (Scheme::Https, "::1", 443)
        );
        assert_eq!(u.authority(), "[::1]:443");
        assert!(UpstreamUrl::parse("x", "ftp://a").is_err());
        assert!(UpstreamUrl::parse("x", "http://a/b").is_err());
        assert!(UpstreamUrl::parse("x", "127.0.0.1:5006").is_err());
    }

    #[test]
    fn route_flags() {
        let r = parse_route_flag("/frontend-audio=direct,nginx").unwrap();
        assert_eq!(r.path, "/frontend-audio");
        assert_eq!(
            r.via,
            vec![UpstreamName("direct".into()), UpstreamName("nginx".into())]
        );
        let r = parse_route_flag("Calls.Example.com/a/=nginx").unwrap();
        assert_eq!(
            (r.host.as_deref(), r.path.as_str()),
            (Some("calls.example.com"), "/a")
        );
        assert!(parse_route_flag("frontend=direct").is_err());
        assert!(parse_route_flag("/x=").is_err());
        assert!(parse_route_flag("/a/../b=direct").is_err());
    }

    #[test]
    fn defaults_without_and_with_nginx() {
        let c = Config::from_args(Vec::<String>::new()).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.routes.len(), 1);
        assert_eq!(c.routes[0].via, vec![UpstreamName("direct".into())]);
        let c = Config::from_args(["--nginx", "http://127.0.0.1:80"]).unwrap();
        let labels: Vec<_> = c
            .routes
            .iter()
            .map(|r| (r.path.as_str(), r.via.len()))
            .collect();
        assert_eq!(labels, vec![("/frontend-audio", 2), ("/", 2)]);
    }

    #[test]
    fn unknown_upstream_is_named() {
        let err = Config::from_args(["--route", "/a=direct,elsewhere"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("elsewhere") && err.contains("/a"), "{err}");
    }

    #[test]
    fn proxy_protocol_needs_trusted_proxies() {
        let err = Config::from_args(["--proxy-protocol", "v2"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--proxy-protocol") && err.contains("trusted_proxies"),
            "{err}"
        );
        let err = Config::from_args(["--proxy-protocol", "v3", "--trusted-proxy", "10.0.0.1"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("expected v1, v2 or any"), "{err}");
        let c = Config::from_args([
            "--proxy-protocol",
            "any",
            "--trusted-proxy",
            "10.0.0.0/8,192.0.2.1",
            "--trust-forwarded-for",
        ])
        .unwrap();
        let b = &c.policy.balancers;
        assert_eq!(b.trusted.len(), 2);
        assert!(b.trust_forwarded_for);
        assert!(c.describe(None).contains("proxy_protocol any"));
    }

    #[test]
    fn admin_off() {
        let c = Config::from_args(["--admin", "off"]).unwrap();
        assert!(c.admin.is_none());
    }

    /// `ws_check_interval`: 30 s by default; an upstream's own table over
    /// the flag over the file's `[health]`; `0` turns it off. A route's
    /// `websocket = true` stays when a `--route` flag replaces its upstreams.
    #[test]
    fn ws_check_interval_and_a_websocket_route() {
        let ws_check = |c: &Config, name: &str| {
            c.upstreams
                .iter()
                .find(|u| u.name.0 == name)
                .map(|u| u.health.ws_check_interval)
        };
        let websocket = |c: &Config, path: &str| {
            c.routes
                .iter()
                .find(|r| r.path == path)
                .map(|r| r.websocket)
        };
        let c = Config::from_args(Vec::<String>::new()).unwrap();
        assert_eq!(ws_check(&c, "direct"), Some(Some(Duration::from_secs(30))));
        assert_eq!(websocket(&c, "/"), Some(false));

        let dir = std::env::temp_dir().join(format!("shunt-ws-check-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("t.toml");
        std::fs::write(
            &file,
            "[health]\nws_check_interval = \"10s\"\n\
             [upstreams.nginx]\nurl = \"http://127.0.0.1:81\"\nhealth = { ws_check_interval = 0 }\n\
             [[routes]]\npath = \"/a\"\nvia = [\"direct\", \"nginx\"]\nwebsocket = true\n\
             [[routes]]\npath = \"/\"\nvia = [\"nginx\"]\n",
        )
        .unwrap();
        let path = file.to_str().unwrap();
        let from_file = Config::from_args(["--config", path]);
        let flagged = Config::from_args([
            "--config",
            path,
            "--ws-check-interval",
            "5s",
            "--route",
            "/a=nginx",
        ]);
        let zero = Config::from_args(["--ws-check-interval", "0s"]);
        std::fs::remove_dir_all(&dir).unwrap();

        let c = from_file.unwrap();
        assert_eq!(ws_check(&c, "direct"), Some(Some(Duration::from_secs(10))));
        assert_eq!(ws_check(&c, "nginx"), Some(None), "0 turns it off");
        assert_eq!(websocket(&c, "/a"), Some(true));
        assert_eq!(websocket(&c, "/"), Some(false));
        let c = flagged.unwrap();
        assert_eq!(ws_check(&c, "direct"), Some(Some(Duration::from_secs(5))));
        assert_eq!(ws_check(&c, "nginx"), Some(None), "its own table wins");
        assert_eq!(websocket(&c, "/a"), Some(true), "kept under --route");
        assert_eq!(ws_check(&zero.unwrap(), "direct"), Some(None));
    }
}
