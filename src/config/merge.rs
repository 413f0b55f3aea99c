//! Flags over file over defaults: how the sources of a [`Config`] merge.
//!
//! One rule, field by field: a flag (or its `SHUNT_*` environment twin) wins
//! over the config file, which wins over the built-in default. Upstreams: the
//! file's `[upstreams.*]`, then `--direct` and `--nginx` define or replace
//! `direct` and `nginx`; `direct` always exists (default
//! `http://127.0.0.1:5006`). Routes: the file's `[[routes]]`, then each
//! `--route` (one with the same host and path replaces the file's); with no
//! route at all, the defaults of DESIGN.md apply. The security settings
//! follow the same rule in [`super::policy`].
//!
//! Each value is parsed with the name of the source it came from, so an
//! error says `--idle-timeout` or "`idle_timeout` in the config file",
//! whichever the user has to fix.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::flags::Overrides;
use super::parse::{
    check_name, field_name, parse_acme_challenge, parse_acme_directory, parse_addr, parse_admin,
    parse_duration, parse_host, parse_hsts, parse_log_format, parse_path, parse_proxy_version,
    parse_tls_groups, parse_via,
};
use super::raw::{RawConfig, RawHealth};
use super::spec::{
    AcmeChallenge, AcmeSpec, HealthSpec, ProbeKind, RouteSpec, Scheme, Timeouts, TlsSpec,
    UpstreamName, UpstreamSpec, UpstreamUrl,
};
use super::{Config, ConfigError, calls, policy};
use crate::proxy_header::Version;
use crate::tls::CertSpec;

/// Loopback by default: exposing the port is a decision, not an accident.
const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// The admin API stays on loopback unless moved (it can trigger reloads).
const DEFAULT_ADMIN: &str = "127.0.0.1:9901";
/// The call backend of DESIGN.md.
const DEFAULT_DIRECT: &str = "http://127.0.0.1:5006";
/// Where ACME keeps its account and certificates unless told otherwise.
const DEFAULT_ACME_STATE_DIR: &str = "/var/lib/shunt/acme";
/// hyper refuses a read buffer smaller than this.
const MIN_HEADER_BYTES: usize = 8192;
/// More than 1 MiB of request head per connection is a mistake, and memory an attacker could ask for.
const MAX_HEADER_BYTES: usize = 1024 * 1024;

/// Flags over file over defaults, one field at a time.
pub(super) struct Merge<'a> {
    /// The command line (and `SHUNT_*` environment) values that were given;
    /// clap has parsed them already, so they can no longer be wrong in form.
    pub(super) flags: &'a Overrides,
    /// The config file as serde read it (all text, nothing checked yet); the
    /// default, empty one when no `--config` was given.
    pub(super) file: &'a RawConfig,
    /// Directory of the config file: relative paths in the file are relative to it.
    pub(super) base: &'a Path,
}

impl Merge<'_> {
    /// The whole configuration, one field at a time.
    ///
    /// Scalars first, then the security policy (whose route defaults every
    /// route starts from), the upstreams, the routes (which must name known
    /// upstreams) and TLS. The first error ends the merge: nothing of a bad
    /// config is kept, which is what lets a reload leave the old one in place.
    pub(super) fn config(&self) -> Result<Config, ConfigError> {
        let a = self.flags;
        let f = self.file;
        let listen = pick(
            a.listen,
            &f.listen,
            "listen",
            "listen",
            DEFAULT_LISTEN,
            parse_addr,
        )?;
        let admin = pick(
            a.admin,
            &f.admin,
            "admin",
            "admin",
            DEFAULT_ADMIN,
            parse_admin,
        )?;
        let admin_hosts = super::admin::admin_hosts(a.admin_hosts.as_deref(), &f.admin_hosts)?;
        let timeouts = Timeouts {
            connect: duration(
                a.connect_timeout,
                &f.connect_timeout,
                "connect-timeout",
                "2s",
            )?,
            response: duration(
                a.response_timeout,
                &f.response_timeout,
                "response-timeout",
                "60s",
            )?,
            header: duration(a.header_timeout, &f.header_timeout, "header-timeout", "10s")?,
            idle: duration(a.idle_timeout, &f.idle_timeout, "idle-timeout", "1h")?,
            drain: duration(a.drain_timeout, &f.drain_timeout, "drain-timeout", "30s")?,
            keepalive: a.tcp_keepalive,
        };
        let max_header_bytes = a
            .max_header_bytes
            .or(f.max_header_bytes)
            .unwrap_or(16 * 1024);
        if !(MIN_HEADER_BYTES..=MAX_HEADER_BYTES).contains(&max_header_bytes) {
            let field = field_name(
                a.max_header_bytes.is_some(),
                "max-header-bytes",
                "max_header_bytes",
            );
            return Err(ConfigError::invalid(
                &field,
                max_header_bytes,
                format!("must be between {MIN_HEADER_BYTES} and {MAX_HEADER_BYTES}"),
            ));
        }
        let log_format = pick(
            a.log_format,
            &f.log_format,
            "log-format",
            "log_format",
            "pretty",
            parse_log_format,
        )?;
        let tls = self.tls()?;
        let (policy, route_defaults) = policy::global(a, f, self.base)?;
        let route_defaults =
            route_defaults.with_client_ca(tls.as_ref().is_some_and(|t| t.client_ca.is_some()));
        let upstreams = self.upstreams()?;
        let routes = self.routes(&upstreams, &route_defaults)?;
        let tls_groups = match (&a.tls_groups, &f.tls_groups) {
            (Some(flag), _) => flag.clone(),
            (None, Some(list)) => parse_tls_groups("`tls_groups` in the config file", list)?,
            (None, None) => Vec::new(),
        };
        let tls_ticket_rotation = self.tls_ticket_rotation()?;
        let hsts = match (&a.hsts, &f.hsts) {
            (Some(flag), _) => Some(flag.clone()),
            (None, Some(v)) => Some(parse_hsts("`hsts` in the config file", v)?),
            (None, None) => None,
        };
        let acme = self.acme()?;
        let http_listen = match (a.http_listen, &f.http_listen) {
            (Some(addr), _) => Some(addr),
            (None, Some(v)) => Some(parse_addr("`http_listen` in the config file", v)?),
            (None, None) => None,
        };
        let https_port = a.https_port.or(f.https_port);
        if https_port == Some(0) {
            return Err(ConfigError::invalid(
                "--https-port / `https_port`",
                0,
                "must be a port between 1 and 65535",
            ));
        }
        if let Some(acme) = &acme
            && acme.challenge == AcmeChallenge::Http01
            && http_listen.is_none()
        {
            return Err(ConfigError::invalid(
                "--acme-challenge / `challenge` of [acme]",
                "http-01",
                "HTTP-01 is answered on --http-listen / `http_listen`: give it (e.g. 0.0.0.0:80)",
            ));
        }
        Ok(Config {
            listen,
            admin,
            admin_hosts,
            timeouts,
            max_header_bytes,
            log_format,
            tunnel: a.tunnel,
            upstreams,
            routes,
            tls,
            tls_groups,
            tls_ticket_rotation,
            hsts,
            acme,
            http_listen,
            https_port,
            file: a.config.clone(),
            policy,
            watch: a.watch,
            flags: Arc::new(a.clone()),
        })
    }

    /// A path written in the config file, made relative to the file's directory.
    /// Paths from flags are left as given (relative to the working directory,
    /// as a shell user expects); an absolute path in the file stays absolute.
    fn file_path(&self, text: &str) -> PathBuf {
        self.base.join(text)
    }

    /// `--tls-cert/--tls-key` replace the file's `[tls]` certificates.
    ///
    /// `None`: plain HTTP on the listener. Both flags or neither: one without
    /// the other is an error rather than a silent fallback to the file's pair.
    /// The file's `[tls]` gives a default `cert`/`key` pair and any number of
    /// `[[tls.certs]]` chosen by SNI name; a `[tls]` table with no certificate
    /// at all is an error. `handshake_timeout` defaults to 10 s either way.
    fn tls(&self) -> Result<Option<TlsSpec>, ConfigError> {
        let raw = self.file.tls.as_ref();
        let timeout_text = raw.and_then(|t| t.handshake_timeout.clone());
        let handshake_timeout = duration(
            self.flags.tls_handshake_timeout,
            &timeout_text,
            "tls-handshake-timeout",
            "10s",
        )?;
        let certs = match (&self.flags.tls_cert, &self.flags.tls_key) {
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
        let client_ca = match (
            &self.flags.tls_client_ca,
            raw.and_then(|t| t.client_ca.as_ref()),
        ) {
            (Some(p), _) => Some(p.clone()),
            (None, Some(p)) => Some(self.file_path(p)),
            (None, None) => None,
        };
        Ok(Some(TlsSpec {
            certs,
            handshake_timeout,
            client_ca,
        }))
    }

    /// `--tls-ticket-rotation` / `tls_ticket_rotation`, default 6 h, between
    /// 1 minute and 6 hours ([`crate::tls::tickets`] says why).
    fn tls_ticket_rotation(&self) -> Result<Duration, ConfigError> {
        use crate::tls::tickets::{MAX_ROTATION, MIN_ROTATION};
        let d = duration(
            self.flags.tls_ticket_rotation,
            &self.file.tls_ticket_rotation,
            "tls-ticket-rotation",
            "6h",
        )?;
        if !(MIN_ROTATION..=MAX_ROTATION).contains(&d) {
            return Err(ConfigError::invalid(
                "--tls-ticket-rotation / `tls_ticket_rotation`",
                humantime::format_duration(d),
                "must be between 1m and 6h",
            ));
        }
        Ok(d)
    }

    /// `[acme]` and the `--acme-*` flags: `None` unless a domain is named.
    /// The directory defaults to Let's Encrypt, the challenge to TLS-ALPN-01,
    /// the state directory to `/var/lib/shunt/acme`.
    fn acme(&self) -> Result<Option<AcmeSpec>, ConfigError> {
        let a = self.flags;
        let raw = self.file.acme.as_ref();
        let domains = match (&a.acme_domains, raw) {
            (Some(flag), _) => flag.clone(),
            (None, Some(r)) => r
                .domains
                .iter()
                .map(|d| parse_host("`domains` of [acme]", d))
                .collect::<Result<_, _>>()?,
            (None, None) => Vec::new(),
        };
        if domains.is_empty() {
            if raw.is_some() {
                return Err(ConfigError::invalid(
                    "[acme] in the config file",
                    "",
                    "name the certificate's `domains` (at least one)",
                ));
            }
            return Ok(None);
        }
        if let Some(d) = domains
            .iter()
            .find(|d| d.parse::<std::net::IpAddr>().is_ok())
        {
            return Err(ConfigError::invalid(
                "--acme-domain / `domains` of [acme]",
                d,
                "ACME certificates here are for DNS names, not IP addresses",
            ));
        }
        let directory = match (&a.acme_directory, raw.and_then(|r| r.directory.as_ref())) {
            (Some(d), _) => d.clone(),
            (None, Some(d)) => parse_acme_directory("`directory` of [acme]", d)?,
            (None, None) => parse_acme_directory("default of --acme-directory", "letsencrypt")?,
        };
        let challenge = match (a.acme_challenge, raw.and_then(|r| r.challenge.as_ref())) {
            (Some(c), _) => c,
            (None, Some(c)) => parse_acme_challenge("`challenge` of [acme]", c)?,
            (None, None) => AcmeChallenge::TlsAlpn01,
        };
        let state_dir = match (&a.acme_state_dir, raw.and_then(|r| r.state_dir.as_ref())) {
            (Some(d), _) => d.clone(),
            (None, Some(d)) => self.file_path(d),
            (None, None) => PathBuf::from(DEFAULT_ACME_STATE_DIR),
        };
        let ca_file = match (&a.acme_ca_file, raw.and_then(|r| r.ca_file.as_ref())) {
            (Some(f), _) => Some(f.clone()),
            (None, Some(f)) => Some(self.file_path(f)),
            (None, None) => None,
        };
        Ok(Some(AcmeSpec {
            domains,
            email: a
                .acme_email
                .clone()
                .or_else(|| raw.and_then(|r| r.email.clone())),
            directory,
            challenge,
            state_dir,
            ca_file,
        }))
    }

    /// Health settings: flags, then the file's `[health]`, then the upstream's own table.
    ///
    /// Precedence, per field: the upstream's own table, then the flag, then the
    /// file's `[health]`, then the default (`tcp`, every 2 s, 1 s timeout, rise
    /// and fall 1, a WebSocket check every 30 s). A zero interval or a zero
    /// rise/fall count is refused here; a zero `ws_check_interval` turns the
    /// WebSocket check off.
    fn health(&self, own: &RawHealth, upstream: &str) -> Result<HealthSpec, ConfigError> {
        let a = self.flags;
        let g = &self.file.health;
        // The upstream's own table is the most specific and wins over flags;
        // the file's `[health]` comes after them.
        let text =
            |own: &Option<String>, global: &Option<String>, k: &str, flag: &str, def: &str| match (
                own, global,
            ) {
                (Some(v), _) => (format!("`{k}` of upstream {upstream}"), v.clone()),
                (None, Some(v)) => (format!("`health.{k}` in the config file"), v.clone()),
                (None, None) => (format!("default of --{flag}"), def.to_owned()),
            };
        let check = match (&own.check, &a.health_check) {
            (None, Some(flag)) => flag.clone(),
            _ => {
                let (field, v) = text(&own.check, &g.check, "check", "health-check", "tcp");
                ProbeKind::parse(&field, &v)?
            }
        };
        let interval = match (&own.interval, a.health_interval) {
            (None, Some(flag)) => flag,
            _ => {
                let (field, v) = text(
                    &own.interval,
                    &g.interval,
                    "interval",
                    "health-interval",
                    "2s",
                );
                parse_duration(&field, &v)?
            }
        };
        if interval.is_zero() {
            // A zero interval would probe in a busy loop.
            return Err(ConfigError::invalid(
                "--health-interval / `interval`",
                "0s",
                "must be between 1ms and 365d",
            ));
        }
        let timeout = match (&own.timeout, a.health_timeout) {
            (None, Some(flag)) => flag,
            _ => {
                let (field, v) = text(&own.timeout, &g.timeout, "timeout", "health-timeout", "1s");
                parse_duration(&field, &v)?
            }
        };
        // Longer than the probe's on purpose: each check opens a real
        // WebSocket session on the backend, which may count its agents.
        let ws_check_interval = match (&own.ws_check_interval, a.ws_check_interval) {
            (None, Some(flag)) => flag,
            _ => {
                let (field, v) = text(
                    &own.ws_check_interval,
                    &g.ws_check_interval,
                    "ws_check_interval",
                    "ws-check-interval",
                    "30s",
                );
                parse_duration(&field, &v)?
            }
        };
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
            ws_check_interval: (!ws_check_interval.is_zero()).then_some(ws_check_interval),
        })
    }

    /// Every upstream, sorted by name (a `BTreeMap`), each with its URL, its
    /// health settings and, for an `https` URL only, the CA to trust: its own
    /// `ca`, else `--upstream-ca` / `upstream_ca`, else the system roots.
    fn upstreams(&self) -> Result<Vec<UpstreamSpec>, ConfigError> {
        let mut urls: BTreeMap<String, (Url, RawHealth)> = BTreeMap::new();
        for (name, up) in &self.file.upstreams {
            check_name(name)?;
            let url = Url::Text(format!("`url` of upstream {name}"), up.url.clone());
            urls.insert(name.clone(), (url, up.health.clone()));
        }
        let global_ca = match (&self.flags.upstream_ca, &self.file.upstream_ca) {
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
        // `--direct` and `--nginx` replace the file's URL and keep its health table.
        for (name, flag) in [("direct", &self.flags.direct), ("nginx", &self.flags.nginx)] {
            if let Some(url) = flag {
                let health = urls.remove(name).map(|u| u.1).unwrap_or_default();
                urls.insert(name.into(), (Url::Flag(url.clone()), health));
            }
        }
        urls.entry("direct".into()).or_insert_with(|| {
            let url = Url::Text("default of --direct".into(), DEFAULT_DIRECT.into());
            (url, RawHealth::default())
        });
        urls.into_iter()
            .map(|(name, (url, health))| {
                let url = match url {
                    Url::Flag(url) => url,
                    Url::Text(field, text) => UpstreamUrl::parse(&field, &text)?,
                };
                Ok(UpstreamSpec {
                    ca: (url.scheme == Scheme::Https)
                        .then(|| ca_of(&name))
                        .flatten(),
                    url,
                    health: self.health(&health, &name)?,
                    send_proxy_protocol: self.send_proxy_protocol(&name)?,
                    name: UpstreamName(name),
                })
            })
            .collect()
    }

    /// `send_proxy_protocol` of the file's upstream `name`, if it sets one.
    fn send_proxy_protocol(&self, name: &str) -> Result<Option<Version>, ConfigError> {
        self.file
            .upstreams
            .get(name)
            .and_then(|u| u.send_proxy_protocol.as_deref())
            .map(|v| parse_proxy_version(&format!("`send_proxy_protocol` of upstream {name}"), v))
            .transpose()
    }

    /// The file's routes in order, then the `--route` flags (a flag for the
    /// same host and path takes the file route's place, keeping its policy and
    /// call settings), else DESIGN.md's defaults. Errors: two file routes with
    /// the same host and path, or a route naming an upstream that does not exist
    /// (the message lists the known ones).
    fn routes(
        &self,
        upstreams: &[UpstreamSpec],
        defaults: &policy::RouteDefaults,
    ) -> Result<Vec<RouteSpec>, ConfigError> {
        let mut routes: Vec<RouteSpec> = Vec::new();
        let call_defaults = calls::global(&self.flags.calls, self.file)?;
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
                calls: calls::route(r, &call_defaults, &label)?,
                host,
                path,
                via: parse_via(&field, r.via.iter().map(String::as_str))?,
                websocket: r.websocket.unwrap_or(false),
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
        for flag in &self.flags.routes {
            let mut route = flag.clone();
            // A flag replaces a file route's upstreams; the file's policy,
            // call settings and `websocket` stay.
            (route.policy, route.calls, route.websocket) = match routes
                .iter()
                .position(|o| o.host == route.host && o.path == route.path)
            {
                Some(i) => {
                    let old = routes.remove(i);
                    (old.policy, old.calls, old.websocket)
                }
                None => (defaults.route_policy(&route.label())?, call_defaults, false),
            };
            routes.push(route);
        }
        if routes.is_empty() {
            routes = RouteSpec::defaults(
                self.flags.nginx.is_some() || self.file.upstreams.contains_key("nginx"),
            );
            for route in &mut routes {
                route.policy = defaults.route_policy(&route.label())?;
                route.calls = call_defaults;
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

/// An upstream URL from a flag (parsed already) or as text still to parse
/// (the file's, or the default), with the field to blame.
enum Url {
    /// From `--direct` or `--nginx`: clap parsed it already.
    Flag(UpstreamUrl),
    /// The field to blame in an error, and the text to parse.
    Text(String, String),
}

/// Flag, else file, else default; the file's or the default's text is parsed
/// with the name of its source.
/// A flag value is already typed (clap parsed it), so only the file's or
/// the default's text can fail here; a failing default is a bug in shunt.
fn pick<T>(
    flag: Option<T>,
    file: &Option<String>,
    flag_name: &str,
    key: &str,
    default: &str,
    parse: impl Fn(&str, &str) -> Result<T, ConfigError>,
) -> Result<T, ConfigError> {
    match (flag, file) {
        (Some(v), _) => Ok(v),
        (None, Some(v)) => parse(&field_name(false, flag_name, key), v),
        (None, None) => parse(&format!("default of --{flag_name}"), default),
    }
}

/// [`pick`] for a duration whose file key is the flag's name with underscores.
fn duration(
    flag: Option<Duration>,
    file: &Option<String>,
    flag_name: &str,
    default: &str,
) -> Result<Duration, ConfigError> {
    let key = flag_name.replace('-', "_");
    pick(flag, file, flag_name, &key, default, parse_duration)
}
