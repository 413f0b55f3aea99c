//! The validated configuration: what shunt runs with.
//!
//! Sources merge by one rule, field by field: a flag (or its `SHUNT_*`
//! environment twin) wins over the config file, which wins over the built-in
//! default. Upstreams: the file's `[upstreams.*]`, then `--direct` and
//! `--nginx` define or replace `direct` and `nginx`; `direct` always exists
//! (default `http://127.0.0.1:5006`). Routes: the file's `[[routes]]`, then each
//! `--route` (one with the same host and path replaces the file's); with no
//! route at all, the defaults of DESIGN.md apply.
//!
//! Everything is parsed into typed values here, so the rest of the proxy never
//! sees an invalid setting; a reload builds a whole new [`Config`] the same way.

mod admin;
mod policy;
pub mod raw;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use http::Uri;

use crate::cli::RunArgs;
use crate::policy::{GlobalPolicy, RoutePolicy};
use crate::tls::CertSpec;
use raw::{RawConfig, RawHealth};

/// The name of an upstream, as routes refer to it (`direct`, `nginx`, ...).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UpstreamName(pub String);

impl fmt::Display for UpstreamName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a configuration was refused. Each names the field and the value at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid {field} `{value}`: {reason}")]
    Invalid {
        field: String,
        value: String,
        reason: String,
    },
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {}: {source}", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: Box<toml::de::Error>,
    },
    #[error("route {route} names unknown upstream `{upstream}` (known: {known})")]
    UnknownUpstream {
        route: String,
        upstream: String,
        known: String,
    },
    #[error("route {route} is defined twice")]
    DuplicateRoute { route: String },
    #[error("{0}")]
    Args(String),
}

impl ConfigError {
    fn invalid(field: &str, value: impl fmt::Display, reason: impl fmt::Display) -> Self {
        ConfigError::Invalid {
            field: field.to_owned(),
            value: value.to_string(),
            reason: reason.to_string(),
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Pretty,
    Json,
}

/// Scheme of an upstream URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

/// Where an upstream listens: `http://host:port` or `https://host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamUrl {
    pub scheme: Scheme,
    /// Host as written (a name or an IP address, without brackets).
    pub host: String,
    pub port: u16,
}

impl UpstreamUrl {
    /// Parse `http://host[:port][/]`; a path other than `/` is refused, since
    /// shunt forwards the client's path unchanged.
    pub fn parse(field: &str, text: &str) -> Result<Self, ConfigError> {
        let uri: Uri = text
            .parse()
            .map_err(|e| ConfigError::invalid(field, text, e))?;
        let scheme = match uri.scheme_str() {
            Some("http") => Scheme::Http,
            Some("https") => Scheme::Https,
            Some(other) => {
                return Err(ConfigError::invalid(
                    field,
                    text,
                    format!("scheme `{other}` is not supported (use http or https)"),
                ));
            }
            None => {
                return Err(ConfigError::invalid(
                    field,
                    text,
                    "expected a URL like http://127.0.0.1:5006",
                ));
            }
        };
        let authority = uri
            .authority()
            .ok_or_else(|| ConfigError::invalid(field, text, "the URL has no host"))?;
        if authority.as_str().contains('@') {
            return Err(ConfigError::invalid(
                field,
                text,
                "user info is not supported",
            ));
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(ConfigError::invalid(
                field,
                text,
                "an upstream URL cannot have a path or query; the client's path is forwarded as is",
            ));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        if host.is_empty() {
            return Err(ConfigError::invalid(field, text, "the URL has no host"));
        }
        let port = authority.port_u16().unwrap_or(match scheme {
            Scheme::Http => 80,
            Scheme::Https => 443,
        });
        Ok(UpstreamUrl {
            scheme,
            host: host.to_owned(),
            port,
        })
    }

    /// `host:port`, bracketing an IPv6 address: what `Host` and `connect` want.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for UpstreamUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self.scheme {
            Scheme::Http => "http",
            Scheme::Https => "https",
        };
        write!(f, "{scheme}://{}", self.authority())
    }
}

/// What an active health probe does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeKind {
    /// A TCP (and, for https, TLS) connect.
    Tcp,
    /// `GET path`, expecting 2xx or 3xx.
    Http(String),
    /// A WebSocket handshake on `path`, expecting 101, then a close 1000.
    Ws(String),
}

impl ProbeKind {
    fn parse(field: &str, text: &str) -> Result<Self, ConfigError> {
        let path = |p: &str| -> Result<String, ConfigError> {
            if p.starts_with('/') {
                Ok(p.to_owned())
            } else {
                Err(ConfigError::invalid(
                    field,
                    text,
                    "the path must start with /",
                ))
            }
        };
        match text.split_once(':') {
            None if text == "tcp" => Ok(ProbeKind::Tcp),
            Some(("http", p)) => Ok(ProbeKind::Http(path(p)?)),
            Some(("ws", p)) => Ok(ProbeKind::Ws(path(p)?)),
            _ => Err(ConfigError::invalid(
                field,
                text,
                "expected tcp, http:PATH or ws:PATH",
            )),
        }
    }
}

impl fmt::Display for ProbeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProbeKind::Tcp => f.write_str("tcp"),
            ProbeKind::Http(p) => write!(f, "http:{p}"),
            ProbeKind::Ws(p) => write!(f, "ws:{p}"),
        }
    }
}

/// Health-check settings of one upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthSpec {
    pub check: ProbeKind,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive successes that bring a down upstream up (at least 1).
    pub rise: u32,
    /// Consecutive failures that take an up upstream down (at least 1).
    pub fall: u32,
}

/// One named upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamSpec {
    pub name: UpstreamName,
    pub url: UpstreamUrl,
    pub health: HealthSpec,
    /// CA file trusted for an `https` upstream; `None` means the system roots.
    pub ca: Option<PathBuf>,
}

/// TLS on the proxy listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSpec {
    /// The first is the default certificate.
    pub certs: Vec<CertSpec>,
    pub handshake_timeout: Duration,
}

/// One route: an optional host, a path prefix, upstreams in order of preference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    /// Lower-case host without port; `None` matches any host.
    pub host: Option<String>,
    /// Path prefix, starting with `/`, matched on whole segments.
    pub path: String,
    pub via: Vec<UpstreamName>,
    /// Security policy, with the global defaults applied.
    pub policy: RoutePolicy,
}

impl RouteSpec {
    /// Routing order key: host routes first, then longer prefixes.
    pub fn specificity(&self) -> (bool, usize) {
        (self.host.is_some(), self.path.len())
    }

    /// `host/path` or `path`: how logs and `/status` name the route.
    pub fn label(&self) -> String {
        match &self.host {
            Some(h) => format!("{h}{}", self.path),
            None => self.path.clone(),
        }
    }
}

/// Timeouts applied to downstream and upstream connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub connect: Duration,
    pub response: Duration,
    pub header: Duration,
    pub idle: Duration,
    pub drain: Duration,
}

/// How tunnels move bytes (`--tunnel-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TunnelMode {
    /// splice(2) between plain TCP legs when the kernel allows it, buffered copy otherwise.
    Auto,
    /// Like `Auto`, but says so if splice is unavailable (still falls back).
    Splice,
    /// Always the buffered copy.
    Copy,
}

/// Tunnel settings, fixed at start (a reload does not change them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TunnelSettings {
    pub mode: TunnelMode,
    /// Capacity asked of each splice pipe.
    pub pipe_size: usize,
    /// Most pipes open at once.
    pub max_pipes: usize,
}

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// `None` when the admin listener is `off`.
    pub admin: Option<SocketAddr>,
    /// Host names the admin listener answers besides IP addresses and
    /// `localhost` (lowercase, no trailing dot).
    pub admin_hosts: Vec<String>,
    pub timeouts: Timeouts,
    pub max_header_bytes: usize,
    pub log_format: LogFormat,
    pub tunnel: TunnelSettings,
    /// Sorted by name.
    pub upstreams: Vec<UpstreamSpec>,
    pub routes: Vec<RouteSpec>,
    /// TLS on the proxy listener, if configured.
    pub tls: Option<TlsSpec>,
    /// The config file, if any.
    pub file: Option<PathBuf>,
    /// Global security settings (IP lists, credentials, limits).
    pub policy: GlobalPolicy,
    /// The flags this was built from, kept so a reload re-reads the file and
    /// merges the same flags over it.
    pub args: RunArgs,
}

const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
const DEFAULT_ADMIN: &str = "127.0.0.1:9901";
const DEFAULT_DIRECT: &str = "http://127.0.0.1:5006";
/// hyper refuses a read buffer smaller than this.
const MIN_HEADER_BYTES: usize = 8192;

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
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => RawConfig::default(),
        };
        let base = args
            .config
            .as_deref()
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let merged = Merge {
            args,
            file: &file,
            base: &base,
        };
        merged.config()
    }

    /// Re-read the file and merge the same flags: the candidate for a reload.
    pub fn reread(&self) -> Result<Config, ConfigError> {
        Config::build(&self.args)
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
        files.extend(self.upstreams.iter().filter_map(|u| u.ca.clone()));
        files.extend(self.policy.files.iter().cloned());
        files.sort();
        files.dedup();
        files
    }
}

fn read_file(path: &Path) -> Result<RawConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|source| ConfigError::Parse {
        path: path.to_owned(),
        source: Box::new(source),
    })
}

/// `--tunnel-mode`, `--pipe-size`, `--max-pipes` (flags only).
fn tunnel_settings(a: &RunArgs) -> Result<TunnelSettings, ConfigError> {
    let mode = match a.tunnel_mode.as_deref().unwrap_or("auto") {
        "auto" => TunnelMode::Auto,
        "splice" => TunnelMode::Splice,
        "copy" => TunnelMode::Copy,
        other => {
            return Err(ConfigError::invalid(
                "--tunnel-mode",
                other,
                "expected auto, splice or copy",
            ));
        }
    };
    let pipe_size = a.pipe_size.unwrap_or(256 * 1024);
    if !(4096..=64 * 1024 * 1024).contains(&pipe_size) {
        return Err(ConfigError::invalid(
            "--pipe-size",
            pipe_size,
            "must be between 4096 and 67108864",
        ));
    }
    let max_pipes = a.max_pipes.unwrap_or(512);
    if max_pipes == 0 {
        return Err(ConfigError::invalid(
            "--max-pipes",
            max_pipes,
            "must be at least 1 (use --tunnel-mode copy to switch splice off)",
        ));
    }
    Ok(TunnelSettings {
        mode,
        pipe_size,
        max_pipes,
    })
}

/// Flags over file over defaults, one field at a time.
struct Merge<'a> {
    args: &'a RunArgs,
    file: &'a RawConfig,
    /// Directory of the config file: relative paths in the file are relative to it.
    base: &'a Path,
}

/// The name of a setting as a user would write it: the flag if it came from
/// one, the file key otherwise.
fn field_name(from_flag: bool, flag: &str, key: &str) -> String {
    if from_flag {
        format!("--{flag}")
    } else {
        format!("`{key}` in the config file")
    }
}

impl Merge<'_> {
    fn config(&self) -> Result<Config, ConfigError> {
        let a = self.args;
        let f = self.file;
        let listen = self.pick(
            &a.listen,
            &f.listen,
            "listen",
            "listen",
            DEFAULT_LISTEN,
            parse_addr,
        )?;
        let admin = self.pick(
            &a.admin,
            &f.admin,
            "admin",
            "admin",
            DEFAULT_ADMIN,
            |field, v| {
                if v.eq_ignore_ascii_case("off") {
                    Ok(None)
                } else {
                    parse_addr(field, v).map(Some)
                }
            },
        )?;
        let admin_hosts = admin::admin_hosts(a, f)?;
        let timeouts = Timeouts {
            connect: self.duration(
                &a.connect_timeout,
                &f.connect_timeout,
                "connect-timeout",
                "2s",
            )?,
            response: self.duration(
                &a.response_timeout,
                &f.response_timeout,
                "response-timeout",
                "60s",
            )?,
            header: self.duration(
                &a.header_timeout,
                &f.header_timeout,
                "header-timeout",
                "10s",
            )?,
            idle: self.duration(&a.idle_timeout, &f.idle_timeout, "idle-timeout", "1h")?,
            drain: self.duration(&a.drain_timeout, &f.drain_timeout, "drain-timeout", "30s")?,
        };
        let max_header_bytes = a
            .max_header_bytes
            .or(f.max_header_bytes)
            .unwrap_or(16 * 1024);
        if max_header_bytes < MIN_HEADER_BYTES {
            let field = field_name(
                a.max_header_bytes.is_some(),
                "max-header-bytes",
                "max_header_bytes",
            );
            return Err(ConfigError::invalid(
                &field,
                max_header_bytes,
                format!("must be at least {MIN_HEADER_BYTES}"),
            ));
        }
        let log_format = self.pick(
            &a.log_format,
            &f.log_format,
            "log-format",
            "log_format",
            "pretty",
            |field, v| match v {
                "pretty" => Ok(LogFormat::Pretty),
                "json" => Ok(LogFormat::Json),
                _ => Err(ConfigError::invalid(field, v, "expected pretty or json")),
            },
        )?;
        let (policy, route_defaults) = policy::global(a, f, self.base)?;
        let tunnel = tunnel_settings(a)?;
        let upstreams = self.upstreams()?;
        let routes = self.routes(&upstreams, &route_defaults)?;
        let tls = self.tls()?;
        Ok(Config {
            listen,
            admin,
            admin_hosts,
            timeouts,
            max_header_bytes,
            log_format,
            tunnel,
            upstreams,
            routes,
            tls,
            file: a.config.clone(),
            policy,
            args: a.clone(),
        })
    }

    /// A path written in the config file, made relative to the file's directory.
    fn file_path(&self, text: &str) -> PathBuf {
        self.base.join(text)
    }

    /// `--tls-cert/--tls-key` replace the file's `[tls]` certificates.
    fn tls(&self) -> Result<Option<TlsSpec>, ConfigError> {
        let raw = self.file.tls.as_ref();
        let timeout_text = raw.and_then(|t| t.handshake_timeout.clone());
        let handshake_timeout = self.duration(
            &self.args.tls_handshake_timeout,
            &timeout_text,
            "tls-handshake-timeout",
            "10s",
        )?;
        let certs = match (&self.args.tls_cert, &self.args.tls_key) {
            (Some(cert), Some(key)) => vec![CertSpec {
                cert: cert.clone(),
                key: key.clone(),
                names: vec![],
            }],
            (None, None) => {
                let Some(raw) = raw else { return Ok(None) };
                let mut certs = Vec::new();
                match (&raw.cert, &raw.key) {
                    (Some(cert), Some(key)) => certs.push(CertSpec {
                        cert: self.file_path(cert),
                        key: self.file_path(key),
                        names: vec![],
                    }),
                    (None, None) => {}
                    _ => {
                        return Err(ConfigError::invalid(
                            "[tls] in the config file",
                            "cert/key",
                            "give both `cert` and `key`, or neither",
                        ));
                    }
                }
                for c in &raw.certs {
                    certs.push(CertSpec {
                        cert: self.file_path(&c.cert),
                        key: self.file_path(&c.key),
                        names: c
                            .names
                            .iter()
                            .map(|n| parse_host("names of [[tls.certs]]", n))
                            .collect::<Result<_, _>>()?,
                    });
                }
                if certs.is_empty() {
                    return Err(ConfigError::invalid(
                        "[tls] in the config file",
                        "",
                        "no certificate: give `cert` and `key`, or [[tls.certs]]",
                    ));
                }
                certs
            }
            _ => {
                return Err(ConfigError::invalid(
                    "--tls-cert/--tls-key",
                    "",
                    "give both --tls-cert and --tls-key",
                ));
            }
        };
        Ok(Some(TlsSpec {
            certs,
            handshake_timeout,
        }))
    }

    /// Flag, else file, else default; parsed with the name of its source.
    fn pick<T>(
        &self,
        flag: &Option<String>,
        file: &Option<String>,
        flag_name: &str,
        key: &str,
        default: &str,
        parse: impl Fn(&str, &str) -> Result<T, ConfigError>,
    ) -> Result<T, ConfigError> {
        match (flag, file) {
            (Some(v), _) => parse(&field_name(true, flag_name, key), v),
            (None, Some(v)) => parse(&field_name(false, flag_name, key), v),
            (None, None) => parse(&format!("default of --{flag_name}"), default),
        }
    }

    fn duration(
        &self,
        flag: &Option<String>,
        file: &Option<String>,
        flag_name: &str,
        default: &str,
    ) -> Result<Duration, ConfigError> {
        let key = flag_name.replace('-', "_");
        self.pick(flag, file, flag_name, &key, default, parse_duration)
    }

    /// Health settings: flags, then the file's `[health]`, then the upstream's own table.
    fn health(&self, own: &RawHealth, upstream: &str) -> Result<HealthSpec, ConfigError> {
        let a = self.args;
        let g = &self.file.health;
        let key = |k: &str| format!("`{k}` of upstream {upstream}");
        // The upstream's own table is the most specific and wins over flags.
        let text = |own: &Option<String>,
                    flag: &Option<String>,
                    global: &Option<String>,
                    flag_name: &str,
                    k: &str,
                    default: &str|
         -> (String, String) {
            match (own, flag, global) {
                (Some(v), _, _) => (key(k), v.clone()),
                (None, Some(v), _) => (format!("--{flag_name}"), v.clone()),
                (None, None, Some(v)) => (format!("`health.{k}` in the config file"), v.clone()),
                (None, None, None) => (format!("default of --{flag_name}"), default.to_owned()),
            }
        };
        let (field, v) = text(
            &own.check,
            &a.health_check,
            &g.check,
            "health-check",
            "check",
            "tcp",
        );
        let check = ProbeKind::parse(&field, &v)?;
        let (field, v) = text(
            &own.interval,
            &a.health_interval,
            &g.interval,
            "health-interval",
            "interval",
            "2s",
        );
        let interval = parse_duration(&field, &v)?;
        let (field, v) = text(
            &own.timeout,
            &a.health_timeout,
            &g.timeout,
            "health-timeout",
            "timeout",
            "1s",
        );
        let timeout = parse_duration(&field, &v)?;
        let count = |own: Option<u32>, flag: Option<u32>, global: Option<u32>, name: &str| {
            let n = own.or(flag).or(global).unwrap_or(1);
            if n == 0 {
                Err(ConfigError::invalid(
                    &format!("--{name} / `{name}`"),
                    n,
                    "must be at least 1",
                ))
            } else {
                Ok(n)
            }
        };
        Ok(HealthSpec {
            check,
            interval,
            timeout,
            rise: count(own.rise, a.rise, g.rise, "rise")?,
            fall: count(own.fall, a.fall, g.fall, "fall")?,
        })
    }

    fn upstreams(&self) -> Result<Vec<UpstreamSpec>, ConfigError> {
        let mut urls: BTreeMap<String, (String, String, RawHealth)> = BTreeMap::new();
        for (name, up) in &self.file.upstreams {
            check_name(name)?;
            urls.insert(
                name.clone(),
                (
                    format!("`url` of upstream {name}"),
                    up.url.clone(),
                    up.health.clone(),
                ),
            );
        }
        let global_ca = match (&self.args.upstream_ca, &self.file.upstream_ca) {
            (Some(flag), _) => Some(flag.clone()),
            (None, Some(file)) => Some(self.file_path(file)),
            (None, None) => None,
        };
        let ca_of = |name: &str| {
            self.file
                .upstreams
                .get(name)
                .and_then(|u| u.ca.as_deref())
                .map(|c| self.file_path(c))
                .or_else(|| global_ca.clone())
        };
        let own_health = |urls: &BTreeMap<String, (String, String, RawHealth)>, name: &str| {
            urls.get(name).map(|u| u.2.clone()).unwrap_or_default()
        };
        if let Some(url) = &self.args.direct {
            let h = own_health(&urls, "direct");
            urls.insert("direct".into(), ("--direct".into(), url.clone(), h));
        }
        if let Some(url) = &self.args.nginx {
            let h = own_health(&urls, "nginx");
            urls.insert("nginx".into(), ("--nginx".into(), url.clone(), h));
        }
        urls.entry("direct".into()).or_insert_with(|| {
            (
                "default of --direct".into(),
                DEFAULT_DIRECT.into(),
                RawHealth::default(),
            )
        });
        urls.into_iter()
            .map(|(name, (field, url, health))| {
                let url = UpstreamUrl::parse(&field, &url)?;
                Ok(UpstreamSpec {
                    ca: (url.scheme == Scheme::Https)
                        .then(|| ca_of(&name))
                        .flatten(),
                    url,
                    health: self.health(&health, &name)?,
                    name: UpstreamName(name),
                })
            })
            .collect()
    }

    fn routes(
        &self,
        upstreams: &[UpstreamSpec],
        defaults: &policy::RouteDefaults,
    ) -> Result<Vec<RouteSpec>, ConfigError> {
        let mut routes: Vec<RouteSpec> = Vec::new();
        for (i, r) in self.file.routes.iter().enumerate() {
            let field = format!("route #{} in the config file", i + 1);
            let host = r
                .host
                .as_deref()
                .map(|h| parse_host(&field, h))
                .transpose()?;
            let path = parse_path(&field, &r.path)?;
            let label = match &host {
                Some(h) => format!("{h}{path}"),
                None => path.clone(),
            };
            let route = RouteSpec {
                policy: policy::route(r, defaults, &label)?,
                host,
                path,
                via: parse_via(&field, r.via.iter().map(String::as_str))?,
            };
            if routes
                .iter()
                .any(|o| o.host == route.host && o.path == route.path)
            {
                return Err(ConfigError::DuplicateRoute {
                    route: route.label(),
                });
            }
            routes.push(route);
        }
        for text in &self.args.routes {
            let mut route = parse_route_flag(text)?;
            // A flag replaces a file route's upstreams; the file's policy for it stays.
            route.policy = match routes
                .iter()
                .position(|o| o.host == route.host && o.path == route.path)
            {
                Some(i) => routes.remove(i).policy,
                None => defaults.route_policy(&route.label())?,
            };
            routes.push(route);
        }
        if routes.is_empty() {
            routes = default_routes(
                self.args.nginx.is_some() || self.file.upstreams.contains_key("nginx"),
            );
            for route in &mut routes {
                route.policy = defaults.route_policy(&route.label())?;
            }
        }
        let known = upstreams
            .iter()
            .map(|u| u.name.0.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        for route in &routes {
            for name in &route.via {
                if !upstreams.iter().any(|u| &u.name == name) {
                    return Err(ConfigError::UnknownUpstream {
                        route: route.label(),
                        upstream: name.0.clone(),
                        known,
                    });
                }
            }
        }
        Ok(routes)
    }
}

/// DESIGN.md's defaults: everything direct, or audio direct-first and the rest via nginx.
fn default_routes(with_nginx: bool) -> Vec<RouteSpec> {
    let via = |names: &[&str]| {
        names
            .iter()
            .map(|n| UpstreamName((*n).to_owned()))
            .collect()
    };
    if with_nginx {
        vec![
            RouteSpec {
                host: None,
                path: "/frontend-audio".into(),
                via: via(&["direct", "nginx"]),
                policy: RoutePolicy::default(),
            },
            RouteSpec {
                host: None,
                path: "/".into(),
                via: via(&["nginx", "direct"]),
                policy: RoutePolicy::default(),
            },
        ]
    } else {
        vec![RouteSpec {
            host: None,
            path: "/".into(),
            via: via(&["direct"]),
            policy: RoutePolicy::default(),
        }]
    }
}

fn check_name(name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
    if ok {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            "upstream name",
            name,
            "use letters, digits, '-', '_' or '.'",
        ))
    }
}

/// `--route [HOST]/PATH=UP[,UP...]`.
fn parse_route_flag(text: &str) -> Result<RouteSpec, ConfigError> {
    let field = "--route";
    let (target, via) = text
        .split_once('=')
        .ok_or_else(|| ConfigError::invalid(field, text, "expected PATH=UPSTREAM[,UPSTREAM...]"))?;
    let (host, path) = match target.find('/') {
        Some(0) => (None, target),
        Some(i) => (Some(parse_host(field, &target[..i])?), &target[i..]),
        None => {
            return Err(ConfigError::invalid(
                field,
                text,
                "the path must start with /",
            ));
        }
    };
    Ok(RouteSpec {
        host,
        path: parse_path(field, path)?,
        via: parse_via(field, via.split(','))?,
        policy: RoutePolicy::default(),
    })
}

fn parse_path(field: &str, path: &str) -> Result<String, ConfigError> {
    if !path.starts_with('/') {
        return Err(ConfigError::invalid(
            field,
            path,
            "the path must start with /",
        ));
    }
    if path.contains(['?', '#', ' ']) || path.split('/').any(|s| s == "." || s == "..") {
        return Err(ConfigError::invalid(
            field,
            path,
            "a route path is a plain prefix: no query, fragment, spaces or dot segments",
        ));
    }
    // `/a/` and `/a` name the same segment prefix.
    let trimmed = path.trim_end_matches('/');
    Ok(if trimmed.is_empty() {
        "/".into()
    } else {
        trimmed.into()
    })
}

fn parse_host(field: &str, host: &str) -> Result<String, ConfigError> {
    let host = host.trim().to_ascii_lowercase();
    let ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '[' | ']' | ':'));
    if ok {
        Ok(host)
    } else {
        Err(ConfigError::invalid(field, host, "not a host name"))
    }
}

fn parse_via<'a>(
    field: &str,
    names: impl Iterator<Item = &'a str>,
) -> Result<Vec<UpstreamName>, ConfigError> {
    let via: Vec<UpstreamName> = names
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(|n| UpstreamName(n.to_owned()))
        .collect();
    if via.is_empty() {
        return Err(ConfigError::invalid(
            field,
            "",
            "a route needs at least one upstream",
        ));
    }
    Ok(via)
}

/// `127.0.0.1:8080`, `[::1]:8443`, or `:8443` for every IPv4 interface.
pub fn parse_addr(field: &str, text: &str) -> Result<SocketAddr, ConfigError> {
    let full = match text.strip_prefix(':') {
        Some(port) => format!("0.0.0.0:{port}"),
        None => text.to_owned(),
    };
    full.parse().map_err(|_| {
        ConfigError::invalid(
            field,
            text,
            "expected IP:PORT, e.g. 127.0.0.1:8080 or [::1]:8443",
        )
    })
}

/// `500ms`, `2s`, `1h`, `1m 30s`; a bare number is seconds.
pub fn parse_duration(field: &str, text: &str) -> Result<Duration, ConfigError> {
    let t = text.trim();
    let parsed = match t.parse::<u64>() {
        Ok(secs) => Ok(Duration::from_secs(secs)),
        Err(_) => humantime::parse_duration(t),
    };
    parsed.map_err(|e| ConfigError::invalid(field, text, format!("{e} (examples: 500ms, 2s, 1h)")))
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn admin_off() {
        let c = Config::from_args(["--admin", "off"]).unwrap();
        assert!(c.admin.is_none());
    }
}
