//! The security settings of the configuration: flags and file keys → typed
//! [`GlobalPolicy`] and per-route [`RoutePolicy`].
//!
//! Same merge rule as the rest of the config: a flag wins over the file's
//! top-level key, which wins over the default; a route's own key wins over
//! both. Lists given as flags replace the file's list. The token and JWT
//! secret files are read here, so a reload (which rebuilds the config)
//! re-reads them; an unreadable or empty file is an error naming it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::ConfigError;
use super::flags::Overrides;
use super::parse::{
    algorithms, cidrs, claim_headers, field_name, origins, parse_auth, parse_duration,
    parse_proxy_versions, parse_rate, token_name,
};
use super::raw::{RawConfig, RawRoute};
use super::spec::{ClaimHeader, GlobalPolicy, JwksSettings, JwksUrl, RoutePolicy};
use crate::policy::auth::{AuthMode, Credentials, JwtVerifier, TokenSet, TokenSources};
use crate::policy::balancer::Balancers;
use crate::policy::ip::IpRules;
use crate::policy::keys::KeySet;
use crate::policy::origin::OriginRule;
use crate::policy::rate::RateLimits;

/// What a route inherits when it does not say.
#[derive(Debug, Clone)]
pub(super) struct RouteDefaults {
    /// `--auth` / `auth`, else JWT if a secret file is named, else token if a
    /// token file is, else none.
    auth: AuthMode,
    /// The Origins a route accepts; empty accepts any (see `require_origin`).
    origins: Vec<OriginRule>,
    /// A WebSocket handshake without an `Origin` header is refused (browsers
    /// always send one; other clients may not).
    require_origin: bool,
    /// Answer CORS preflights and add the CORS headers (credentials allowed)
    /// for the origins above.
    cors: bool,
    /// A token file was read: a route may use `auth = "token"`.
    has_tokens: bool,
    /// A JWT secret or key source is configured: a route may use `auth = "jwt"`.
    has_jwt: bool,
    /// The global `forward_claims`.
    forward_claims: Vec<ClaimHeader>,
    /// A client CA is configured: a route may use `auth = "mtls"`.
    has_client_ca: bool,
}

impl RouteDefaults {
    /// Whether `[tls] client_ca` is set (known once the TLS settings are merged).
    pub(super) fn with_client_ca(mut self, has_client_ca: bool) -> Self {
        self.has_client_ca = has_client_ca;
        self
    }

    /// The policy of a route that sets nothing itself (`--route` and default routes).
    pub(super) fn route_policy(&self, label: &str) -> Result<RoutePolicy, ConfigError> {
        let policy = RoutePolicy {
            ip: IpRules::default(),
            auth: self.auth,
            origins: self.origins.clone(),
            require_origin: self.require_origin,
            cors: self.cors,
            allow_connect: false,
            allow_absolute_form: false,
            forward_credential: false,
            forward_claims: self.forward_claims.clone(),
            forward_client_cert: false,
        };
        self.validate(label, &policy)?;
        Ok(policy)
    }

    /// A route's policy must be one shunt can enforce: its auth mode needs its
    /// credential configured, and CORS needs a list of specific origins.
    /// Checked for every route, whether it set these itself or inherited them,
    /// so a config that would refuse (or admit) everyone is refused at start.
    fn validate(&self, label: &str, p: &RoutePolicy) -> Result<(), ConfigError> {
        let field = format!("auth of route {label}");
        match p.auth {
            AuthMode::Token if !self.has_tokens => Err(ConfigError::invalid(
                &field,
                "token",
                "no token file: set --token-file or `token_file`",
            )),
            AuthMode::Mtls if !self.has_client_ca => Err(ConfigError::invalid(
                &field,
                "mtls",
                "no client CA: set --tls-client-ca or `client_ca` in [tls] (with a TLS certificate)",
            )),
            AuthMode::Jwt if !self.has_jwt => Err(ConfigError::invalid(
                &field,
                "jwt",
                "no JWT key: set --jwt-secret-file, --jwt-public-key-file, --jwt-jwks-file or --jwt-jwks-url",
            )),
            _ if p.cors && p.origins.iter().all(|o| *o == OriginRule::Any) => {
                Err(ConfigError::invalid(
                    &format!("cors of route {label}"),
                    "true",
                    "CORS needs an allow_origin list of specific origins (credentials are allowed, so `*` or no list would let any site in)",
                ))
            }
            _ => Ok(()),
        }
    }
}

/// Flags over file over defaults, for the global settings: one step per setting.
///
/// Returns the process-wide policy (IP lists, credentials, where tokens are
/// looked for, rate and connection limits) and what each route inherits.
/// Reads the token and JWT secret files, and lists them in
/// [`GlobalPolicy`]'s `files` so `--watch` reloads when they change.
pub(super) fn global(
    a: &Overrides,
    f: &RawConfig,
    base: &Path,
) -> Result<(GlobalPolicy, RouteDefaults), ConfigError> {
    let ip = IpRules {
        allow: flag_or_file(&a.allow_ip, &f.allow_ip, "allow_ip", cidrs)?,
        deny: flag_or_file(&a.deny_ip, &f.deny_ip, "deny_ip", cidrs)?,
    };
    let token_file = path(
        &a.token_file,
        &f.token_file,
        "token-file",
        "token_file",
        base,
    );
    let tokens = token_set(token_file.as_ref())?;
    let key_sources = KeySources::read(a, f, base)?;
    let jwt = jwt_verifier(a, f, &key_sources)?;
    let defaults = RouteDefaults {
        auth: default_auth(a, f, jwt.is_some(), tokens.is_some())?,
        origins: flag_or_file(&a.allow_origin, &f.allow_origin, "allow_origin", origins)?,
        require_origin: a.require_origin.or(f.require_origin).unwrap_or(false),
        cors: a.cors.or(f.cors).unwrap_or(false),
        has_tokens: tokens.is_some(),
        has_jwt: jwt.is_some(),
        forward_claims: match &f.forward_claims {
            Some(map) => claim_headers("`forward_claims` in the config file", map)?,
            None => Vec::new(),
        },
        has_client_ca: false,
    };
    // The secret files are watched: a change on disk reloads them.
    let files = token_file
        .iter()
        .map(|(_, p)| p)
        .chain(key_sources.files())
        .cloned()
        .collect();
    let policy = GlobalPolicy {
        files,
        ip,
        credentials: Credentials { tokens, jwt },
        sources: token_sources(a, f)?,
        jwks: key_sources.jwks,
        limits: limits(a, f)?,
        balancers: balancers(a, f)?,
    };
    Ok((policy, defaults))
}

/// The token file's tokens (`--token-file`), if one is named; it must hold one.
fn token_set(file: Option<&(String, PathBuf)>) -> Result<Option<Arc<TokenSet>>, ConfigError> {
    let Some((field, p)) = file else {
        return Ok(None);
    };
    let text = read_secret(field, p)?;
    let set = TokenSet::parse(&text)
        .ok_or_else(|| ConfigError::invalid(field, p.display(), "the file holds no token"))?;
    Ok(Some(Arc::new(set)))
}

/// The files and URL JWT keys come from, as named by flags or the file.
struct KeySources {
    secret: Option<(String, PathBuf)>,
    public_keys: Option<(String, PathBuf)>,
    jwks_file: Option<(String, PathBuf)>,
    jwks: Option<JwksSettings>,
}

impl KeySources {
    fn read(a: &Overrides, f: &RawConfig, base: &Path) -> Result<KeySources, ConfigError> {
        let insecure = a
            .jwt_jwks_insecure_http
            .or(f.jwt_jwks_insecure_http)
            .unwrap_or(false);
        let url = match (&a.jwt_jwks_url, &f.jwt_jwks_url) {
            (Some(u), _) => Some(JwksUrl::parse("--jwt-jwks-url", u, insecure)?),
            (None, Some(u)) => Some(JwksUrl::parse(
                "`jwt_jwks_url` in the config file",
                u,
                insecure,
            )?),
            (None, None) => None,
        };
        let refresh = duration_setting(
            a.jwt_jwks_refresh,
            &f.jwt_jwks_refresh,
            "jwt_jwks_refresh",
            Duration::from_secs(600),
        )?;
        if refresh < Duration::from_secs(1) {
            return Err(ConfigError::invalid(
                "--jwt-jwks-refresh / `jwt_jwks_refresh`",
                format!("{refresh:?}"),
                "must be at least 1s",
            ));
        }
        let min_refresh = duration_setting(
            a.jwt_jwks_min_refresh,
            &f.jwt_jwks_min_refresh,
            "jwt_jwks_min_refresh",
            Duration::from_secs(30),
        )?;
        Ok(KeySources {
            secret: path(
                &a.jwt_secret_file,
                &f.jwt_secret_file,
                "jwt-secret-file",
                "jwt_secret_file",
                base,
            ),
            public_keys: path(
                &a.jwt_public_key_file,
                &f.jwt_public_key_file,
                "jwt-public-key-file",
                "jwt_public_key_file",
                base,
            ),
            jwks_file: path(
                &a.jwt_jwks_file,
                &f.jwt_jwks_file,
                "jwt-jwks-file",
                "jwt_jwks_file",
                base,
            ),
            jwks: url.map(|url| JwksSettings {
                url,
                refresh,
                min_refresh,
            }),
        })
    }

    /// The files to watch.
    fn files(&self) -> impl Iterator<Item = &PathBuf> {
        [&self.secret, &self.public_keys, &self.jwks_file]
            .into_iter()
            .flatten()
            .map(|(_, p)| p)
    }
}

/// A duration from its flag, else its file key, else `default`.
fn duration_setting(
    flag: Option<Duration>,
    file: &Option<String>,
    key: &str,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match (flag, file) {
        (Some(d), _) => Ok(d),
        (None, Some(v)) => parse_duration(&format!("`{key}` in the config file"), v),
        (None, None) => Ok(default),
    }
}

/// The JWT verifier: the HS256 secret, the public keys of the PEM and JWKS
/// files, whether a JWKS URL adds keys, the accepted algorithms, issuers,
/// audiences and leeway. `None` when no key source is configured.
fn jwt_verifier(
    a: &Overrides,
    f: &RawConfig,
    sources: &KeySources,
) -> Result<Option<Arc<JwtVerifier>>, ConfigError> {
    let leeway = duration_setting(
        a.jwt_leeway,
        &f.jwt_leeway,
        "jwt_leeway",
        Duration::from_secs(30),
    )?;
    let algorithms = match (&a.jwt_algorithms, &f.jwt_algorithms) {
        (Some(list), _) => Some(list.clone()),
        (None, Some(list)) => Some(algorithms("`jwt_algorithms` in the config file", list)?),
        (None, None) => None,
    };
    if sources.secret.is_none()
        && sources.public_keys.is_none()
        && sources.jwks_file.is_none()
        && sources.jwks.is_none()
    {
        return Ok(None);
    }
    let secret = match &sources.secret {
        Some((field, p)) => {
            let secret = read_secret(field, p)?;
            let secret = secret.trim().to_owned();
            if secret.is_empty() {
                return Err(ConfigError::invalid(
                    field,
                    p.display(),
                    "the file is empty",
                ));
            }
            Some(secret)
        }
        None => None,
    };
    let mut keys = KeySet::default();
    if let Some((field, p)) = &sources.public_keys {
        let text = read_bytes(field, p)?;
        let set =
            KeySet::from_pem(&text).map_err(|e| ConfigError::invalid(field, p.display(), e))?;
        keys = keys.merged(&set);
    }
    if let Some((field, p)) = &sources.jwks_file {
        let text = read_bytes(field, p)?;
        let (set, skipped) =
            KeySet::from_jwks(&text).map_err(|e| ConfigError::invalid(field, p.display(), e))?;
        for s in skipped {
            tracing::warn!(file = %p.display(), "JWKS {s}");
        }
        keys = keys.merged(&set);
    }
    let verifier = JwtVerifier::keyless(leeway)
        .with_secret(secret.as_deref().map(str::as_bytes))
        .with_keys(keys)
        .with_remote(sources.jwks.is_some())
        .with_algorithms(algorithms)
        .with_issuers(
            a.jwt_issuer
                .clone()
                .unwrap_or_else(|| f.jwt_issuer.to_vec()),
        )
        .with_audiences(
            a.jwt_audience
                .clone()
                .unwrap_or_else(|| f.jwt_audience.to_vec()),
        );
    Ok(Some(Arc::new(verifier)))
}

/// Where a token is looked for: the query parameter and cookie names.
fn token_sources(a: &Overrides, f: &RawConfig) -> Result<TokenSources, ConfigError> {
    let mut sources = TokenSources::default();
    match (&a.token_query, &f.token_query) {
        (Some(q), _) => sources.query = q.clone(),
        (None, Some(q)) => sources.query = token_name("--token-query / `token_query`", q.clone())?,
        (None, None) => {}
    }
    match (&a.token_cookie, &f.token_cookie) {
        (Some(c), _) => sources.cookie = c.clone(),
        (None, Some(c)) => {
            sources.cookie = token_name("--token-cookie / `token_cookie`", c.clone())?
        }
        (None, None) => {}
    }
    sources.subprotocol = match (&a.token_subprotocol, &f.token_subprotocol) {
        (Some(p), _) => Some(p.clone()),
        (None, Some(p)) => Some(token_name(
            "--token-subprotocol / `token_subprotocol`",
            p.clone(),
        )?),
        (None, None) => None,
    };
    Ok(sources)
}

/// The routes' default authentication: as set, else whichever credential is
/// configured (JWT first), else none.
fn default_auth(
    a: &Overrides,
    f: &RawConfig,
    has_jwt: bool,
    has_tokens: bool,
) -> Result<AuthMode, ConfigError> {
    Ok(match (&a.auth, &f.auth) {
        (Some(mode), _) => *mode,
        (None, Some(v)) => parse_auth("`auth` in the config file", v)?,
        (None, None) if has_jwt => AuthMode::Jwt,
        (None, None) if has_tokens => AuthMode::Token,
        (None, None) => AuthMode::None,
    })
}

/// The per-client rate (burst defaulting to one second of it) and the
/// connection caps; a cap of 0 is refused (leaving it out means no limit).
fn limits(a: &Overrides, f: &RawConfig) -> Result<RateLimits, ConfigError> {
    let rate = match (&a.rate, &f.rate) {
        (Some(r), _) => Some(*r),
        (None, Some(v)) => Some(parse_rate("`rate` in the config file", v)?),
        (None, None) => None,
    };
    let burst = a.burst.or(f.burst).unwrap_or_else(|| {
        rate.map_or(1, |r| {
            r.per_sec().ceil().clamp(1.0, f64::from(u32::MAX)) as u32
        })
    });
    if burst == 0 {
        return Err(ConfigError::invalid(
            "--burst / `burst`",
            0,
            "must be at least 1",
        ));
    }
    let positive = |v: Option<usize>, flag: &str, key: &str, from_flag: bool| match v {
        Some(0) => Err(ConfigError::invalid(
            &field_name(from_flag, flag, key),
            0,
            "must be at least 1 (leave it out for no limit)",
        )),
        other => Ok(other),
    };
    Ok(RateLimits {
        rate,
        burst,
        max_conns_per_ip: positive(
            a.max_conns_per_ip
                .or(f.max_conns_per_ip)
                .map(|n| n as usize),
            "max-conns-per-ip",
            "max_conns_per_ip",
            a.max_conns_per_ip.is_some(),
        )?
        .map(|n| n as u32),
        max_conns: positive(
            a.max_conns.or(f.max_conns),
            "max-conns",
            "max_conns",
            a.max_conns.is_some(),
        )?,
        max_tracked_ips: positive(
            a.max_tracked_ips.or(f.max_tracked_ips),
            "max-tracked-ips",
            "max_tracked_ips",
            a.max_tracked_ips.is_some(),
        )?
        .unwrap_or(RateLimits::default().max_tracked_ips),
    })
}

/// The load balancers in front: `proxy_protocol` needs `trusted_proxies`
/// (the addresses a header is believed from), or it would refuse every
/// connection.
fn balancers(a: &Overrides, f: &RawConfig) -> Result<Balancers, ConfigError> {
    let proxy_protocol = match (a.proxy_protocol, &f.proxy_protocol) {
        (Some(v), _) => Some(v),
        (None, Some(v)) => Some(parse_proxy_versions(
            "`proxy_protocol` in the config file",
            v,
        )?),
        (None, None) => None,
    };
    let trusted = flag_or_file(
        &a.trusted_proxies,
        &f.trusted_proxies,
        "trusted_proxies",
        cidrs,
    )?;
    if let Some(v) = proxy_protocol
        && trusted.is_empty()
    {
        return Err(ConfigError::invalid(
            &field_name(
                a.proxy_protocol.is_some(),
                "proxy-protocol",
                "proxy_protocol",
            ),
            v.as_str(),
            "the PROXY protocol needs trusted_proxies (--trusted-proxy): the load balancers' addresses, the only sources whose header is believed",
        ));
    }
    Ok(Balancers {
        proxy_protocol,
        trusted,
        optional_from: flag_or_file(
            &a.proxy_protocol_optional_from,
            &f.proxy_protocol_optional_from,
            "proxy_protocol_optional_from",
            cidrs,
        )?,
        trust_forwarded_for: a
            .trust_forwarded_for
            .or(f.trust_forwarded_for)
            .unwrap_or(false),
    })
}

/// A file route's policy: its own keys over the defaults.
/// The route's `allow_ip` / `deny_ip` are its own, checked after the global
/// lists, not a replacement for them; `allow_connect` and
/// `allow_absolute_form` are off unless the route turns them on.
pub(super) fn route(
    r: &RawRoute,
    defaults: &RouteDefaults,
    label: &str,
) -> Result<RoutePolicy, ConfigError> {
    let field = |k: &str| format!("`{k}` of route {label}");
    let ip = IpRules {
        allow: cidrs((field("allow_ip"), &r.allow_ip))?,
        deny: cidrs((field("deny_ip"), &r.deny_ip))?,
    };
    let auth = match &r.auth {
        Some(v) => parse_auth(&field("auth"), v)?,
        None => defaults.auth,
    };
    let origins = match &r.allow_origin {
        Some(list) => origins((field("allow_origin"), list))?,
        None => defaults.origins.clone(),
    };
    let policy = RoutePolicy {
        ip,
        auth,
        origins,
        require_origin: r.require_origin.unwrap_or(defaults.require_origin),
        cors: r.cors.unwrap_or(defaults.cors),
        allow_connect: r.allow_connect.unwrap_or(false),
        allow_absolute_form: r.allow_absolute_form.unwrap_or(false),
        forward_credential: r.forward_credential.unwrap_or(false),
        forward_claims: match &r.forward_claims {
            Some(map) => claim_headers(&field("forward_claims"), map)?,
            None => defaults.forward_claims.clone(),
        },
        forward_client_cert: r.forward_client_cert.unwrap_or(false),
    };
    defaults.validate(label, &policy)?;
    Ok(policy)
}

/// The flag's list if given (already parsed), else the file's, parsed and
/// blamed on the file key.
fn flag_or_file<T: Clone>(
    flag: &Option<Vec<T>>,
    file: &[String],
    key: &str,
    parse: impl Fn((String, &[String])) -> Result<Vec<T>, ConfigError>,
) -> Result<Vec<T>, ConfigError> {
    match flag {
        Some(items) => Ok(items.clone()),
        None => parse((format!("`{key}` in the config file"), file)),
    }
}

/// A file named by a flag, or by the config file (relative to the config file's directory).
fn path(
    flag: &Option<PathBuf>,
    file: &Option<String>,
    flag_name: &str,
    key: &str,
    base: &Path,
) -> Option<(String, PathBuf)> {
    match (flag, file) {
        (Some(p), _) => Some((field_name(true, flag_name, key), p.clone())),
        (None, Some(p)) => Some((field_name(false, flag_name, key), base.join(p))),
        (None, None) => None,
    }
}

/// Read a key file; the error names the setting.
fn read_bytes(field: &str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|e| {
        ConfigError::invalid(field, path.display(), format!("cannot read the file: {e}"))
    })
}

/// Read a token or JWT secret file; the error names the setting, never the content.
fn read_secret(field: &str, path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| {
        ConfigError::invalid(field, path.display(), format!("cannot read the file: {e}"))
    })
}
