//! Authentication of a request: static bearer tokens or JWTs.
//!
//! Browsers cannot set headers on a WebSocket, so the credential is taken from
//! `Authorization: Bearer`, else from `Sec-WebSocket-Protocol: bearer, <token>`
//! (with `token_subprotocol`), else from a query parameter, else from a cookie
//! ([`TokenSources`]). Static tokens are kept only as HMAC tags under a
//! per-process random key and compared with `ring::hmac::verify`, in constant
//! time whatever the length. JWTs are verified by [`super::jwt`]. No error
//! message ever contains the credential.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use http::{HeaderMap, header};
use ring::hmac;

pub(crate) use super::jwt::{Claims, JwtError, JwtVerifier, Remote};
use super::target::query_param;

/// How a route authenticates requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuthMode {
    /// Anyone (subject to IP, Origin and rate rules).
    #[default]
    None,
    /// A token from `--token-file`.
    Token,
    /// A JWT: HS256 with `--jwt-secret-file`, or signed by a public key.
    Jwt,
    /// A TLS client certificate signed by `--tls-client-ca`.
    Mtls,
}

impl AuthMode {
    /// `none`, `token` or `jwt`.
    pub fn parse(text: &str) -> Option<AuthMode> {
        match text.trim() {
            "none" => Some(AuthMode::None),
            "token" => Some(AuthMode::Token),
            "jwt" => Some(AuthMode::Jwt),
            "mtls" => Some(AuthMode::Mtls),
            _ => None,
        }
    }
}

impl fmt::Display for AuthMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AuthMode::None => "none",
            AuthMode::Token => "token",
            AuthMode::Jwt => "jwt",
            AuthMode::Mtls => "mtls",
        })
    }
}

/// Where a credential may be presented.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSources {
    /// Query parameter name (`token` by default); removed before forwarding.
    pub query: String,
    /// Cookie name (`shunt_token` by default).
    pub cookie: String,
    /// `token_subprotocol`: the `Sec-WebSocket-Protocol` value that
    /// announces a token as the next value (`bearer`); off by default.
    pub subprotocol: Option<String>,
}

impl Default for TokenSources {
    fn default() -> Self {
        TokenSources {
            query: "token".into(),
            cookie: "shunt_token".into(),
            subprotocol: None,
        }
    }
}

/// Where a presented credential was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Via {
    /// `Authorization: Bearer`.
    Bearer,
    /// `Sec-WebSocket-Protocol: bearer, <token>`.
    Subprotocol,
    /// The query parameter.
    Query,
    /// The cookie.
    Cookie,
}

/// A credential as the request presents it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Presented<'a> {
    /// The credential itself (never logged).
    pub value: Cow<'a, str>,
    /// Where it was found.
    pub via: Via,
}

/// The values of a comma-separated header (`Sec-WebSocket-Protocol`), trimmed.
pub(crate) fn list_values<'a>(
    headers: &'a HeaderMap,
    name: &header::HeaderName,
) -> impl Iterator<Item = &'a str> + 'a {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// The token offered after `marker` in `Sec-WebSocket-Protocol`.
pub(crate) fn subprotocol_token<'a>(headers: &'a HeaderMap, marker: &str) -> Option<&'a str> {
    let mut values = list_values(headers, &header::SEC_WEBSOCKET_PROTOCOL);
    values.find(|v| *v == marker)?;
    values.next()
}

/// The credential a request presents: bearer header, then the subprotocol
/// (when configured), then query, then cookie.
pub(crate) fn presented<'a>(
    headers: &'a HeaderMap,
    query: Option<&'a str>,
    sources: &TokenSources,
) -> Option<Presented<'a>> {
    let found = |value: Cow<'a, str>, via| Some(Presented { value, via });
    let bearer = headers
        .get_all(header::AUTHORIZATION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| {
            let (scheme, rest) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        });
    if let Some(v) = bearer {
        return found(Cow::Borrowed(v), Via::Bearer);
    }
    if let Some(v) = sources
        .subprotocol
        .as_deref()
        .and_then(|marker| subprotocol_token(headers, marker))
    {
        return found(Cow::Borrowed(v), Via::Subprotocol);
    }
    if let Some(v) = query.and_then(|q| query_param(q, &sources.query)) {
        return found(v, Via::Query);
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k.trim() == sources.cookie).then(|| Cow::Borrowed(v.trim().trim_matches('"')))
        })
        .and_then(|v| found(v, Via::Cookie))
}

/// Why a request was not authenticated. Never carries the credential.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error(
        "no credential: send `Authorization: Bearer <token>`, the `{query}` query parameter or the `{cookie}` cookie"
    )]
    /// No credential where one is looked for (header, query, cookie).
    Missing {
        /// The query parameter looked in.
        query: String,
        /// The cookie looked in.
        cookie: String,
    },
    /// A token that is not in the token file.
    #[error("the token is not valid")]
    UnknownToken,
    /// A JWT that does not verify.
    #[error("the JWT is not valid")]
    Jwt(#[from] JwtError),
    /// An `auth = "mtls"` route reached without a client certificate.
    #[error("this route needs a TLS client certificate signed by the configured CA")]
    NoClientCert,
}

impl AuthError {
    /// Whether the client sent something (RFC 6750 `error="invalid_token"`).
    pub fn is_invalid_token(&self) -> bool {
        !matches!(self, AuthError::Missing { .. } | AuthError::NoClientCert)
    }

    /// Whether the fault is shunt's, not the client's: the JWKS is not loaded (503).
    pub fn keys_unavailable(&self) -> bool {
        matches!(self, AuthError::Jwt(JwtError::KeysUnavailable(_)))
    }

    /// The `reason` label of `shunt_auth_failures_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing { .. } => "missing",
            AuthError::NoClientCert => "no_client_cert",
            AuthError::UnknownToken => "invalid",
            AuthError::Jwt(e) => match e {
                JwtError::Expired => "expired",
                JwtError::Audience => "wrong_audience",
                JwtError::Issuer => "wrong_issuer",
                JwtError::UnknownKey => "unknown_key",
                JwtError::KeysUnavailable(_) => "jwks_unavailable",
                JwtError::Malformed
                | JwtError::Algorithm(_)
                | JwtError::Signature
                | JwtError::Claims
                | JwtError::MissingExp
                | JwtError::NotYetValid => "invalid",
            },
        }
    }
}

/// The configured credentials, loaded from their files.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    /// The static tokens (`--token-file`), if any.
    pub tokens: Option<Arc<TokenSet>>,
    /// The JWT verifier (secret, public keys, JWKS), if any.
    pub jwt: Option<Arc<JwtVerifier>>,
}

/// Who an accepted request comes from.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Identity {
    /// The verified claims (JWTs).
    pub claims: Option<Claims>,
    /// Where the accepted credential was found (`None`: no credential needed).
    pub via: Option<Via>,
}

impl Identity {
    /// The `sub` claim, for `user=` in the logs and `/calls`.
    pub(crate) fn user(&self) -> Option<&str> {
        self.claims.as_ref().and_then(Claims::sub)
    }
}

/// Check `presented` under `mode`; `remote` is the JWKS URL's key set,
/// `client_cert` whether the TLS client showed a certificate the CA signed.
pub(crate) fn authenticate(
    mode: AuthMode,
    credentials: &Credentials,
    sources: &TokenSources,
    presented: Option<&Presented<'_>>,
    remote: Remote<'_>,
    client_cert: bool,
) -> Result<Identity, AuthError> {
    match mode {
        AuthMode::None => return Ok(Identity::default()),
        AuthMode::Mtls if client_cert => return Ok(Identity::default()),
        AuthMode::Mtls => return Err(AuthError::NoClientCert),
        _ => {}
    }
    let Some(presented) = presented.filter(|p| !p.value.is_empty()) else {
        return Err(AuthError::Missing {
            query: sources.query.clone(),
            cookie: sources.cookie.clone(),
        });
    };
    let via = Some(presented.via);
    let value = presented.value.as_ref();
    match mode {
        AuthMode::None | AuthMode::Mtls => Ok(Identity::default()),
        // Validation guarantees the file of the mode is configured; fail closed anyway.
        AuthMode::Token => match &credentials.tokens {
            Some(set) if set.contains(value) => Ok(Identity { claims: None, via }),
            _ => Err(AuthError::UnknownToken),
        },
        AuthMode::Jwt => match &credentials.jwt {
            Some(v) => Ok(Identity {
                claims: Some(v.verify_with(value, SystemTime::now(), remote)?),
                via,
            }),
            None => Err(AuthError::Jwt(JwtError::Malformed)),
        },
    }
}

/// Static tokens, held as HMAC tags so they compare in constant time.
#[derive(Clone)]
pub struct TokenSet {
    key: hmac::Key,
    tags: Vec<hmac::Tag>,
}

impl fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenSet({} tokens)", self.tags.len())
    }
}

impl TokenSet {
    /// Parse a token file: one token per line, blank lines and `#` comments ignored.
    /// `None` when it holds no token.
    pub fn parse(text: &str) -> Option<TokenSet> {
        let rng = ring::rand::SystemRandom::new();
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &rng).ok()?;
        let tags: Vec<hmac::Tag> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|t| hmac::sign(&key, t.as_bytes()))
            .collect();
        (!tags.is_empty()).then_some(TokenSet { key, tags })
    }

    /// How many tokens are configured.
    pub fn len(&self) -> usize {
        self.tags.len()
    }

    /// Whether the set is empty (never, once parsed).
    pub fn is_empty(&self) -> bool {
        self.tags.is_empty()
    }

    /// Whether `token` is one of the set; every tag is checked, in constant time.
    pub fn contains(&self, token: &str) -> bool {
        self.tags.iter().fold(false, |found, tag| {
            hmac::verify(&self.key, token.as_bytes(), tag.as_ref()).is_ok() | found
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        let set = TokenSet::parse("# comment\n\n alpha \nbeta\n").unwrap();
        assert_eq!(set.len(), 2);
        assert!(set.contains("alpha"));
        assert!(set.contains("beta"));
        assert!(!set.contains("alph"));
        assert!(!set.contains("alphaa"));
        assert!(!set.contains("# comment"));
        assert!(!set.contains(""));
        assert!(TokenSet::parse("# only a comment\n\n").is_none());
        assert!(!format!("{set:?}").contains("alpha"));
    }

    fn value<'a>(p: Option<Presented<'a>>) -> Option<(String, Via)> {
        p.map(|p| (p.value.into_owned(), p.via))
    }

    #[test]
    fn credential_sources() {
        let mut sources = TokenSources::default();
        let mut h = HeaderMap::new();
        assert_eq!(presented(&h, None, &sources), None);
        h.insert(
            header::COOKIE,
            "a=1; shunt_token=fromcookie".parse().unwrap(),
        );
        assert_eq!(
            value(presented(&h, None, &sources)),
            Some(("fromcookie".into(), Via::Cookie))
        );
        assert_eq!(
            value(presented(&h, Some("x=1&token=fromquery"), &sources)),
            Some(("fromquery".into(), Via::Query))
        );
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            "chat, bearer, fromproto".parse().unwrap(),
        );
        // Off by default.
        assert_eq!(
            value(presented(&h, Some("token=q"), &sources)),
            Some(("q".into(), Via::Query))
        );
        sources.subprotocol = Some("bearer".into());
        assert_eq!(
            value(presented(&h, Some("token=q"), &sources)),
            Some(("fromproto".into(), Via::Subprotocol))
        );
        h.insert(header::AUTHORIZATION, "bearer fromheader".parse().unwrap());
        assert_eq!(
            value(presented(&h, Some("token=fromquery"), &sources)),
            Some(("fromheader".into(), Via::Bearer))
        );
        h.insert(header::AUTHORIZATION, "Basic dXNlcjpwYXNz".parse().unwrap());
        h.remove(header::SEC_WEBSOCKET_PROTOCOL);
        assert_eq!(
            value(presented(&h, Some("token=q"), &sources)),
            Some(("q".into(), Via::Query))
        );
        // `bearer` as the last value carries no token.
        h.insert(header::SEC_WEBSOCKET_PROTOCOL, "bearer".parse().unwrap());
        assert_eq!(subprotocol_token(&h, "bearer"), None);
    }

    #[test]
    fn authenticate_modes() {
        let creds = Credentials {
            tokens: TokenSet::parse("alpha").map(Arc::new),
            jwt: None,
        };
        let s = TokenSources::default();
        let p = |v: &'static str| Presented {
            value: Cow::Borrowed(v),
            via: Via::Query,
        };
        let auth = |mode, presented: Option<&Presented<'_>>| {
            authenticate(mode, &creds, &s, presented, Remote::None, false)
        };
        assert_eq!(auth(AuthMode::None, None), Ok(Identity::default()));
        let missing = auth(AuthMode::Token, None).unwrap_err();
        assert!(matches!(missing, AuthError::Missing { .. }));
        assert_eq!(missing.reason(), "missing");
        assert_eq!(
            auth(AuthMode::Token, Some(&p("beta"))),
            Err(AuthError::UnknownToken)
        );
        assert_eq!(
            auth(AuthMode::Token, Some(&p("alpha"))).unwrap().via,
            Some(Via::Query)
        );
        assert_eq!(auth(AuthMode::Mtls, None), Err(AuthError::NoClientCert));
        assert_eq!(
            authenticate(AuthMode::Mtls, &creds, &s, None, Remote::None, true),
            Ok(Identity::default())
        );
        // JWT mode without a verifier fails closed.
        assert!(auth(AuthMode::Jwt, Some(&p("x.y.z"))).is_err());
        let msg = auth(AuthMode::Token, Some(&p("sekrit")))
            .unwrap_err()
            .to_string();
        assert!(!msg.contains("sekrit"));
    }
}
