//! Parsers for the text of flags and file keys: addresses, durations, URLs,
//! health probes, routes, host names, rates.
//!
//! Each takes the name of the field it parses (`--listen`, "`listen` in the
//! config file", ...) so that an error names the setting to fix, in the
//! words the user wrote it with.
//!
//! Durations take humantime's forms (`500ms`, `2s`, `1h`, `1m 30s`) or a bare
//! number of seconds; addresses take `IP:PORT` or `:PORT` (every IPv4
//! interface); upstream URLs are `http(s)://host[:port]` without a path,
//! since the client's path is forwarded unchanged. Route paths are plain
//! segment prefixes: no query, fragment or dot segment, which could never
//! match a normalized request path.

use crate::proxy_header::{Version, Versions};
use std::net::SocketAddr;
use std::time::Duration;

use http::{HeaderValue, Uri};

use super::ConfigError;
use super::spec::{
    AcmeChallenge, ClaimHeader, JwksUrl, LogFormat, ProbeKind, RoutePolicy, RouteSpec, Scheme,
    TunnelMode, TunnelSettings, UpstreamName, UpstreamUrl,
};
use crate::cli::RunArgs;
use crate::policy::auth::AuthMode;
use crate::policy::ip::IpNet;
use crate::policy::keys::Alg;
use crate::policy::origin::OriginRule;
use crate::policy::rate::Rate;
use crate::tls::KxGroup;

impl UpstreamUrl {
    /// Parse `http://host[:port][/]`; a path other than `/` is refused, since
    /// shunt forwards the client's path unchanged.
    ///
    /// The port defaults to the scheme's (80, 443); an IPv6 host loses its
    /// brackets here (`UpstreamUrl::authority` puts them back for `Host`).
    /// User info (`http://user:pass@host`) is refused rather than silently dropped.
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
}

impl JwksUrl {
    /// Parse the JWKS URL: `https://host[:port]/path`; `http://` only with
    /// `insecure_http` (a loopback identity provider in tests).
    pub fn parse(field: &str, text: &str, insecure_http: bool) -> Result<Self, ConfigError> {
        let uri: Uri = text
            .parse()
            .map_err(|e| ConfigError::invalid(field, text, e))?;
        let base = match (uri.scheme_str(), uri.authority()) {
            (Some(scheme), Some(authority)) => format!("{scheme}://{authority}"),
            _ => {
                return Err(ConfigError::invalid(
                    field,
                    text,
                    "expected a URL like https://idp.example.com/.well-known/jwks.json",
                ));
            }
        };
        let server = UpstreamUrl::parse(field, &base)?;
        if server.scheme == Scheme::Http && !insecure_http {
            return Err(ConfigError::invalid(
                field,
                text,
                "the JWKS must be fetched over https:// (set `jwt_jwks_insecure_http = true` to allow http:// for a test identity provider)",
            ));
        }
        let path = uri
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .to_owned();
        Ok(JwksUrl {
            text: text.to_owned(),
            server,
            path: if path.is_empty() { "/".into() } else { path },
        })
    }
}

/// JWT algorithm names (`RS256`, `ES256`, `EdDSA`, ...); `none` is refused.
pub(super) fn algorithms(field: &str, list: &[String]) -> Result<Vec<Alg>, ConfigError> {
    list.iter()
        .map(|name| {
            Alg::parse(name.trim()).ok_or_else(|| {
                ConfigError::invalid(
                    field,
                    name,
                    "not an accepted algorithm (HS256, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA)",
                )
            })
        })
        .collect()
}

/// `forward_claims = { claim = "header-name" }`: each header name must be
/// valid and not one shunt sets or removes itself.
pub(super) fn claim_headers(
    field: &str,
    map: &std::collections::BTreeMap<String, String>,
) -> Result<Vec<ClaimHeader>, ConfigError> {
    map.iter()
        .map(|(claim, name)| {
            let header = http::HeaderName::from_bytes(name.trim().as_bytes())
                .map_err(|_| ConfigError::invalid(field, name, "not a valid header name"))?;
            const RESERVED: [&str; 13] = [
                "host",
                "connection",
                "upgrade",
                "keep-alive",
                "te",
                "trailer",
                "transfer-encoding",
                "content-length",
                "authorization",
                "cookie",
                "x-real-ip",
                "x-shunt-route",
                "proxy-authorization",
            ];
            let n = header.as_str();
            if RESERVED.contains(&n)
                || n.starts_with("x-forwarded-")
                || n.starts_with("sec-websocket-")
            {
                return Err(ConfigError::invalid(
                    field,
                    name,
                    "this header is set or removed by shunt itself; choose another name (e.g. x-user-id)",
                ));
            }
            Ok(ClaimHeader {
                claim: claim.clone(),
                header,
            })
        })
        .collect()
}

impl ProbeKind {
    /// Parse `tcp`, `http:PATH` or `ws:PATH`.
    ///
    /// The path is sent as given (a query included) with the upstream's
    /// authority as `Host`; it must start with `/`, since a request target
    /// without one is not valid HTTP.
    pub fn parse(field: &str, text: &str) -> Result<Self, ConfigError> {
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

/// An upstream name: letters, digits, `-`, `_` or `.`.
/// Names appear in `/status`, `/metrics` labels and log lines, so they keep
/// to characters that need no quoting anywhere.
pub(super) fn check_name(name: &str) -> Result<(), ConfigError> {
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
///
/// `/audio=direct,nginx` or `calls.example.com/audio=direct`. The policy
/// and call settings are left at their defaults here; the merge then gives
/// the route those of the file route it replaces, or the global defaults.
pub(super) fn parse_route_flag(text: &str) -> Result<RouteSpec, ConfigError> {
    let field = "--route";
    let (target, via) = text
        .split_once('=')
        .ok_or_else(|| ConfigError::invalid(field, text, "expected PATH=UPSTREAM[,UPSTREAM...]"))?;
    if let Some(right) = without_scheme(target) {
        return Err(ConfigError::invalid(
            field,
            text,
            format!("a route is [HOST]/PATH, without a scheme or `//`: write `{right}={via}`"),
        ));
    }
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
        calls: super::CallSpec::default(),
        websocket: false,
    })
}

/// `HOST/PATH` when `target` was written as a URL (`https://HOST/PATH`,
/// `//HOST/PATH`), which would otherwise read as host `https:` and a path
/// starting with `//` that no request matches.
fn without_scheme(target: &str) -> Option<&str> {
    let rest = match target.split_once("://") {
        Some((scheme, rest)) if !scheme.contains('/') => rest,
        _ => target.strip_prefix("//")?,
    };
    Some(rest.trim_start_matches('/'))
}

/// A route path prefix, without a trailing slash (except the root).
///
/// The router matches it on whole segments, so `/audio` covers `/audio`
/// and `/audio/x` but not `/audiox`. A path written as a URL gets an error
/// that shows the `host` and `path` keys to write instead.
pub(super) fn parse_path(field: &str, path: &str) -> Result<String, ConfigError> {
    if let Some(right) = without_scheme(path) {
        let (host, rest) = right.split_once('/').unwrap_or((right, ""));
        return Err(ConfigError::invalid(
            field,
            path,
            format!(
                "a route path is a path, not a URL: write host = \"{host}\" and path = \"/{rest}\""
            ),
        ));
    }
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

/// A host name, lower-cased.
///
/// The router compares it with the request's `Host`, port taken off and
/// case ignored, so it is lower-cased once here. It is never resolved.
pub(super) fn parse_host(field: &str, host: &str) -> Result<String, ConfigError> {
    if let Some(right) = without_scheme(host) {
        return Err(ConfigError::invalid(
            field,
            host,
            format!(
                "a route host has no scheme: write `{}`",
                right.split('/').next().unwrap_or_default()
            ),
        ));
    }
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

/// A route's list of upstream names; at least one.
/// Blank names are skipped (`direct,,nginx`); whether each name exists is
/// checked later by the merge, which knows the upstreams.
pub(super) fn parse_via<'a>(
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
///
/// No host names: a listener binds an address, and resolving one at start
/// would make the bind depend on DNS.
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

/// The longest duration any setting takes: one year. Longer values are
/// mistakes (`100000000h`), and a deadline `now + d` must never overflow.
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// `500ms`, `2s`, `1h`, `1m 30s`; a bare number is seconds; at most 365 days (`MAX_DURATION`).
///
/// `0s` is accepted here; a setting for which zero makes no sense (the
/// health interval) refuses it where it is merged.
pub fn parse_duration(field: &str, text: &str) -> Result<Duration, ConfigError> {
    let t = text.trim();
    let parsed = match t.parse::<u64>() {
        Ok(secs) => Ok(Duration::from_secs(secs)),
        Err(_) => humantime::parse_duration(t),
    };
    let d = parsed
        .map_err(|e| ConfigError::invalid(field, text, format!("{e} (examples: 500ms, 2s, 1h)")))?;
    if d > MAX_DURATION {
        return Err(ConfigError::invalid(
            field,
            text,
            "must be between 0s and 365d (one year)",
        ));
    }
    Ok(d)
}

/// A size in bytes: a bare number, or a number with `B`, `KiB` or `MiB`
/// (`64 KiB`, `1MiB`); at most 1 GiB.
pub(crate) fn parse_size(field: &str, text: &str) -> Result<u64, ConfigError> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let unit = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1024,
        "MiB" => 1024 * 1024,
        _ => {
            return Err(ConfigError::invalid(
                field,
                text,
                "expected bytes, or a number with B, KiB or MiB (examples: 65536, \"64 KiB\")",
            ));
        }
    };
    let n = number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit))
        .filter(|n| *n <= 1 << 30)
        .ok_or_else(|| {
            ConfigError::invalid(field, text, "must be a number of bytes up to 1 GiB")
        })?;
    Ok(n)
}

/// The admin address, or `off` (no admin listener).
pub(super) fn parse_admin(field: &str, v: &str) -> Result<Option<SocketAddr>, ConfigError> {
    if v.eq_ignore_ascii_case("off") {
        Ok(None)
    } else {
        parse_addr(field, v).map(Some)
    }
}

/// `pretty` or `json`.
pub(super) fn parse_log_format(field: &str, v: &str) -> Result<LogFormat, ConfigError> {
    match v {
        "pretty" => Ok(LogFormat::Pretty),
        "json" => Ok(LogFormat::Json),
        _ => Err(ConfigError::invalid(field, v, "expected pretty or json")),
    }
}

/// `v1`, `v2` or `any`: the PROXY protocol versions the listener accepts.
pub(super) fn parse_proxy_versions(field: &str, v: &str) -> Result<Versions, ConfigError> {
    Versions::parse(v).ok_or_else(|| ConfigError::invalid(field, v, "expected v1, v2 or any"))
}

/// `v1` or `v2`: the PROXY protocol version sent to an upstream.
pub(super) fn parse_proxy_version(field: &str, v: &str) -> Result<Version, ConfigError> {
    Version::parse(v).ok_or_else(|| ConfigError::invalid(field, v, "expected v1 or v2"))
}

/// `N/s` or `N/m`: a per-client request rate.
///
/// A bare number is per second; `/h` is accepted too. The rate must be
/// positive and finite: no rate limit is written by leaving it out.
pub(crate) fn parse_rate(field: &str, v: &str) -> Result<Rate, ConfigError> {
    Rate::parse(v).map_err(|e| ConfigError::invalid(field, v, e))
}

/// `--tcp-keepalive`: `off` or an idle time of 1s to 2h (flag only).
///
/// The idle time is how long a connection may be silent before the kernel
/// starts probing it: 1 s up to 2 h, Linux's own default.
pub(super) fn parse_keepalive(v: Option<&str>) -> Result<Option<Duration>, ConfigError> {
    let Some(v) = v.filter(|v| !v.eq_ignore_ascii_case("off")) else {
        return Ok(None);
    };
    let idle = parse_duration("--tcp-keepalive", v)?;
    if !(Duration::from_secs(1)..=Duration::from_secs(7200)).contains(&idle) {
        return Err(ConfigError::invalid(
            "--tcp-keepalive",
            v,
            "must be off or between 1s and 2h",
        ));
    }
    Ok(Some(idle))
}

/// `--tunnel-mode`, `--pipe-size`, `--max-pipes` (flags only).
///
/// Defaults: `auto`, 256 KiB pipes, at most 512 of them; a pipe is 4 KiB
/// (a page) to 64 MiB. Whether splice really works is probed later, once,
/// by [`crate::forward::tunnel::Relay::start`].
pub(super) fn parse_tunnel_settings(a: &RunArgs) -> Result<TunnelSettings, ConfigError> {
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

/// The name of a setting as a user would write it: the flag if it came from
/// one, the file key otherwise.
pub(super) fn field_name(from_flag: bool, flag: &str, key: &str) -> String {
    if from_flag {
        format!("--{flag}")
    } else {
        format!("`{key}` in the config file")
    }
}

/// CIDR ranges (`10.0.0.0/8`, a bare address is a /32 or /128), blaming `field`.
pub(super) fn cidrs(list: (String, &[String])) -> Result<Vec<IpNet>, ConfigError> {
    parse_list(list, IpNet::parse)
}

/// Origin rules (`https://app.example.com`, `https://*.example.com`, `*`), blaming `field`.
pub(super) fn origins(list: (String, &[String])) -> Result<Vec<OriginRule>, ConfigError> {
    parse_list(list, OriginRule::parse)
}

/// Each entry of a list setting through `parse`, blaming `field`. Blank
/// entries are skipped, so a trailing comma in a flag is harmless.
fn parse_list<T, E: std::fmt::Display>(
    (field, items): (String, &[String]),
    parse: impl Fn(&str) -> Result<T, E>,
) -> Result<Vec<T>, ConfigError> {
    items
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .map(|s| parse(s).map_err(|e| ConfigError::invalid(&field, s, e)))
        .collect()
}

/// `none`, `token` or `jwt`.
pub(super) fn parse_auth(field: &str, v: &str) -> Result<AuthMode, ConfigError> {
    AuthMode::parse(v).ok_or_else(|| ConfigError::invalid(field, v, "expected none, token or jwt"))
}

/// A query parameter or cookie name: kept to a safe alphabet, since it is
/// matched in requests and written into log lines.
pub(super) fn token_name(field: &str, v: String) -> Result<String, ConfigError> {
    let ok = !v.is_empty()
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(v)
    } else {
        Err(ConfigError::invalid(
            field,
            v,
            "use letters, digits, '_', '-' or '.'",
        ))
    }
}

/// Let's Encrypt's production directory, the default.
const LETSENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";
/// Let's Encrypt's staging directory.
const LETSENCRYPT_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";

/// An ACME directory: `letsencrypt` (the default), `letsencrypt-staging` or an https:// URL.
pub(super) fn parse_acme_directory(field: &str, v: &str) -> Result<String, ConfigError> {
    match v.trim() {
        "" | "letsencrypt" => Ok(LETSENCRYPT.to_owned()),
        "letsencrypt-staging" => Ok(LETSENCRYPT_STAGING.to_owned()),
        url => match url.parse::<Uri>() {
            Ok(u) if u.scheme_str() == Some("https") && u.host().is_some() => Ok(url.to_owned()),
            _ => Err(ConfigError::invalid(
                field,
                v,
                "expected an https:// directory URL, letsencrypt or letsencrypt-staging",
            )),
        },
    }
}

/// `tls-alpn-01` or `http-01`.
pub(super) fn parse_acme_challenge(field: &str, v: &str) -> Result<AcmeChallenge, ConfigError> {
    match v.trim().to_ascii_lowercase().as_str() {
        "tls-alpn-01" => Ok(AcmeChallenge::TlsAlpn01),
        "http-01" => Ok(AcmeChallenge::Http01),
        _ => Err(ConfigError::invalid(
            field,
            v,
            "expected tls-alpn-01 or http-01",
        )),
    }
}

/// `--tls-groups` / `tls_groups`: key exchange group names as rustls spells
/// them (case-insensitive), in order of preference; no duplicates, not empty.
pub(super) fn parse_tls_groups(field: &str, items: &[String]) -> Result<Vec<KxGroup>, ConfigError> {
    let known = || {
        KxGroup::ALL
            .iter()
            .map(|g| g.name())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let groups = parse_list((field.to_owned(), items), |s| {
        KxGroup::parse(s).ok_or_else(|| format!("unknown key exchange group; known: {}", known()))
    })?;
    if groups.is_empty() {
        return Err(ConfigError::invalid(
            field,
            "",
            format!("name at least one group: {}", known()),
        ));
    }
    for (i, g) in groups.iter().enumerate() {
        if groups[..i].contains(g) {
            return Err(ConfigError::invalid(field, g, "named twice"));
        }
    }
    Ok(groups)
}

/// `--hsts` / `hsts`: a `Strict-Transport-Security` value with a
/// `max-age=SECONDS` directive (`includeSubDomains` and `preload` may follow).
pub(super) fn parse_hsts(field: &str, v: &str) -> Result<HeaderValue, ConfigError> {
    let has_max_age = v.split(';').any(|d| {
        d.trim().split_once('=').is_some_and(|(k, n)| {
            k.trim().eq_ignore_ascii_case("max-age")
                && n.trim().trim_matches('"').parse::<u64>().is_ok()
        })
    });
    if !has_max_age {
        return Err(ConfigError::invalid(
            field,
            v,
            "expected a Strict-Transport-Security value with max-age=SECONDS, e.g. \"max-age=31536000\"",
        ));
    }
    HeaderValue::from_str(v.trim())
        .map_err(|_| ConfigError::invalid(field, v, "not a valid header value"))
}
