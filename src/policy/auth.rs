//! Authentication of a request: static bearer tokens or HS256 JWTs.
//!
//! Browsers cannot set headers on a WebSocket, so the credential is taken from
//! `Authorization: Bearer`, else from a query parameter, else from a cookie
//! ([`TokenSources`]). Static tokens are kept only as HMAC tags under a
//! per-process random key and compared with `ring::hmac::verify`, in constant
//! time whatever the length. JWTs are HS256 only (`alg` is pinned, so `none`
//! and algorithm confusion are refused); `exp` is required, `nbf`, `iss` and
//! `aud` checked, with a small clock-skew allowance. No error message ever
//! contains the credential.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use http::{HeaderMap, header};
use ring::hmac;
use serde::Deserialize;

use super::target::query_param;

/// How a route authenticates requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuthMode {
    /// Anyone (subject to IP, Origin and rate rules).
    #[default]
    None,
    /// A token from `--token-file`.
    Token,
    /// An HS256 JWT signed with `--jwt-secret-file`.
    Jwt,
}

impl AuthMode {
    /// `none`, `token` or `jwt`.
    pub fn parse(text: &str) -> Option<AuthMode> {
        match text.trim() {
            "none" => Some(AuthMode::None),
            "token" => Some(AuthMode::Token),
            "jwt" => Some(AuthMode::Jwt),
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
}

impl Default for TokenSources {
    fn default() -> Self {
        TokenSources {
            query: "token".into(),
            cookie: "shunt_token".into(),
        }
    }
}

/// The credential a request presents: bearer header, then query, then cookie.
pub(crate) fn presented<'a>(
    headers: &'a HeaderMap,
    query: Option<&'a str>,
    sources: &TokenSources,
) -> Option<Cow<'a, str>> {
    let bearer = headers
        .get_all(header::AUTHORIZATION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| {
            let (scheme, rest) = v.trim().split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| Cow::Borrowed(rest.trim()))
        });
    if bearer.is_some() {
        return bearer;
    }
    if let Some(v) = query.and_then(|q| query_param(q, &sources.query)) {
        return Some(v);
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
}

impl AuthError {
    /// Whether the client sent something (RFC 6750 `error="invalid_token"`).
    pub fn is_invalid_token(&self) -> bool {
        !matches!(self, AuthError::Missing { .. })
    }
}

/// The configured credentials, loaded from their files.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    /// The static tokens (`--token-file`), if any.
    pub tokens: Option<Arc<TokenSet>>,
    /// The JWT verifier (`--jwt-secret-file`), if any.
    pub jwt: Option<Arc<JwtVerifier>>,
}

/// Check `presented` under `mode`.
pub(crate) fn authenticate(
    mode: AuthMode,
    credentials: &Credentials,
    sources: &TokenSources,
    presented: Option<&str>,
) -> Result<(), AuthError> {
    if mode == AuthMode::None {
        return Ok(());
    }
    let Some(presented) = presented.filter(|p| !p.is_empty()) else {
        return Err(AuthError::Missing {
            query: sources.query.clone(),
            cookie: sources.cookie.clone(),
        });
    };
    match mode {
        AuthMode::None => Ok(()),
        // Validation guarantees the file of the mode is configured; fail closed anyway.
        AuthMode::Token => match &credentials.tokens {
            Some(set) if set.contains(presented) => Ok(()),
            _ => Err(AuthError::UnknownToken),
        },
        AuthMode::Jwt => match &credentials.jwt {
            Some(v) => Ok(v.verify(presented, SystemTime::now())?),
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

/// Why a JWT was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// Not three base64url parts of JSON.
    #[error("not a JWT (expected three base64url parts)")]
    Malformed,
    /// An `alg` other than HS256 (`none` included).
    #[error("only alg HS256 is accepted")]
    Algorithm,
    /// The signature does not match the secret.
    #[error("bad signature")]
    Signature,
    /// The claims are not a JSON object of the expected types.
    #[error("the claims are not a JSON object")]
    Claims,
    /// No `exp`: a token that never expires is refused.
    #[error("no `exp` claim")]
    MissingExp,
    /// `exp` is past (beyond the leeway).
    #[error("expired")]
    Expired,
    /// `nbf` is in the future (beyond the leeway).
    #[error("not valid yet (`nbf`)")]
    NotYetValid,
    /// `iss` is not the configured issuer.
    #[error("wrong issuer (`iss`)")]
    Issuer,
    /// `aud` does not name the configured audience.
    #[error("wrong audience (`aud`)")]
    Audience,
}

/// HS256 verification with the configured secret and claim expectations.
#[derive(Clone)]
pub struct JwtVerifier {
    key: hmac::Key,
    /// Required `iss`, if set.
    pub issuer: Option<String>,
    /// Required `aud`, if set.
    pub audience: Option<String>,
    /// Clock-skew allowance for `exp` and `nbf`.
    pub leeway: Duration,
}

impl fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("leeway", &self.leeway)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct JwtHeader {
    alg: String,
}

#[derive(Deserialize)]
struct Claims {
    exp: Option<f64>,
    nbf: Option<f64>,
    iss: Option<String>,
    aud: Option<Audience>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

/// base64url, as JWTs are encoded (RFC 7515 §2); padding is accepted but not
/// required, since the RFC omits it and some issuers add it anyway.
const B64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

impl JwtVerifier {
    /// A verifier for `secret` (the HS256 key bytes).
    pub fn new(
        secret: &[u8],
        issuer: Option<String>,
        audience: Option<String>,
        leeway: Duration,
    ) -> Self {
        JwtVerifier {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
            issuer,
            audience,
            leeway,
        }
    }

    /// Verify `token` at `now`: signature first, then the claims.
    pub fn verify(&self, token: &str, now: SystemTime) -> Result<(), JwtError> {
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwtError::Malformed);
        };
        let header: JwtHeader = B64
            .decode(h)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(JwtError::Malformed)?;
        if header.alg != "HS256" {
            return Err(JwtError::Algorithm);
        }
        let signature = B64.decode(s).map_err(|_| JwtError::Malformed)?;
        let signed_len = h.len() + 1 + p.len();
        hmac::verify(&self.key, &token.as_bytes()[..signed_len], &signature)
            .map_err(|_| JwtError::Signature)?;
        let claims: Claims = B64
            .decode(p)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(JwtError::Claims)?;
        let now = now
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        let leeway = self.leeway.as_secs_f64();
        let exp = claims.exp.ok_or(JwtError::MissingExp)?;
        if now > exp + leeway {
            return Err(JwtError::Expired);
        }
        if claims.nbf.is_some_and(|nbf| now + leeway < nbf) {
            return Err(JwtError::NotYetValid);
        }
        if let Some(want) = &self.issuer
            && claims.iss.as_ref() != Some(want)
        {
            return Err(JwtError::Issuer);
        }
        if let Some(want) = &self.audience {
            let ok = match &claims.aud {
                Some(Audience::One(a)) => a == want,
                Some(Audience::Many(list)) => list.contains(want),
                None => false,
            };
            if !ok {
                return Err(JwtError::Audience);
            }
        }
        Ok(())
    }
}

/// Sign `claims` (a JSON object) as an HS256 JWT; for tests and tooling.
#[cfg(any(test, feature = "test-util"))]
pub fn sign_hs256(secret: &[u8], claims: &serde_json::Value) -> String {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = b64.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = b64.encode(claims.to_string());
    let signing_input = format!("{header}.{payload}");
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let sig = b64.encode(hmac::sign(&key, signing_input.as_bytes()).as_ref());
    format!("{signing_input}.{sig}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SECRET: &[u8] = b"test-secret";

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn verifier() -> JwtVerifier {
        JwtVerifier::new(
            SECRET,
            Some("issuer".into()),
            Some("shunt".into()),
            Duration::from_secs(30),
        )
    }

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

    #[test]
    fn jwt_valid_and_claims() {
        let v = verifier();
        let good = json!({"exp": 2000, "nbf": 1000, "iss": "issuer", "aud": "shunt"});
        assert_eq!(v.verify(&sign_hs256(SECRET, &good), at(1500)), Ok(()));
        let many = json!({"exp": 2000, "iss": "issuer", "aud": ["x", "shunt"]});
        assert_eq!(v.verify(&sign_hs256(SECRET, &many), at(1500)), Ok(()));
        // Skew allowance on both ends.
        assert_eq!(v.verify(&sign_hs256(SECRET, &good), at(2020)), Ok(()));
        assert_eq!(v.verify(&sign_hs256(SECRET, &good), at(980)), Ok(()));
        assert_eq!(
            v.verify(&sign_hs256(SECRET, &good), at(2031)),
            Err(JwtError::Expired)
        );
        assert_eq!(
            v.verify(&sign_hs256(SECRET, &good), at(900)),
            Err(JwtError::NotYetValid)
        );
        let no_exp = json!({"iss": "issuer", "aud": "shunt"});
        assert_eq!(
            v.verify(&sign_hs256(SECRET, &no_exp), at(1500)),
            Err(JwtError::MissingExp)
        );
        let wrong_iss = json!({"exp": 2000, "iss": "other", "aud": "shunt"});
        assert_eq!(
            v.verify(&sign_hs256(SECRET, &wrong_iss), at(1500)),
            Err(JwtError::Issuer)
        );
        let wrong_aud = json!({"exp": 2000, "iss": "issuer", "aud": ["x"]});
        assert_eq!(
            v.verify(&sign_hs256(SECRET, &wrong_aud), at(1500)),
            Err(JwtError::Audience)
        );
    }

    #[test]
    fn jwt_tampering() {
        let v = verifier();
        let good = sign_hs256(
            SECRET,
            &json!({"exp": 2000, "iss": "issuer", "aud": "shunt"}),
        );
        assert_eq!(
            v.verify(&sign_hs256(b"other", &json!({"exp": 2000})), at(1500)),
            Err(JwtError::Signature)
        );
        // Payload swapped, signature kept.
        let parts: Vec<&str> = good.split('.').collect();
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let forged =
            b64.encode(json!({"exp": 9999999999u64, "iss": "issuer", "aud": "shunt"}).to_string());
        let tampered = format!("{}.{}.{}", parts[0], forged, parts[2]);
        assert_eq!(v.verify(&tampered, at(1500)), Err(JwtError::Signature));
        // alg none.
        let none = format!("{}.{}.", b64.encode(br#"{"alg":"none"}"#), parts[1]);
        assert_eq!(v.verify(&none, at(1500)), Err(JwtError::Algorithm));
        let hs512 = format!(
            "{}.{}.{}",
            b64.encode(br#"{"alg":"HS512"}"#),
            parts[1],
            parts[2]
        );
        assert_eq!(v.verify(&hs512, at(1500)), Err(JwtError::Algorithm));
        assert_eq!(v.verify("abc", at(1500)), Err(JwtError::Malformed));
        assert_eq!(v.verify("a.b.c.d", at(1500)), Err(JwtError::Malformed));
        assert_eq!(v.verify("!!.??.**", at(1500)), Err(JwtError::Malformed));
    }

    #[test]
    fn credential_sources() {
        let sources = TokenSources::default();
        let mut h = HeaderMap::new();
        assert_eq!(presented(&h, None, &sources), None);
        h.insert(
            header::COOKIE,
            "a=1; shunt_token=fromcookie".parse().unwrap(),
        );
        assert_eq!(presented(&h, None, &sources).as_deref(), Some("fromcookie"));
        assert_eq!(
            presented(&h, Some("x=1&token=fromquery"), &sources).as_deref(),
            Some("fromquery")
        );
        h.insert(header::AUTHORIZATION, "bearer fromheader".parse().unwrap());
        assert_eq!(
            presented(&h, Some("token=fromquery"), &sources).as_deref(),
            Some("fromheader")
        );
        h.insert(header::AUTHORIZATION, "Basic dXNlcjpwYXNz".parse().unwrap());
        assert_eq!(
            presented(&h, Some("token=q"), &sources).as_deref(),
            Some("q")
        );
    }

    #[test]
    fn authenticate_modes() {
        let creds = Credentials {
            tokens: TokenSet::parse("alpha").map(Arc::new),
            jwt: None,
        };
        let s = TokenSources::default();
        assert_eq!(authenticate(AuthMode::None, &creds, &s, None), Ok(()));
        assert!(matches!(
            authenticate(AuthMode::Token, &creds, &s, None),
            Err(AuthError::Missing { .. })
        ));
        assert_eq!(
            authenticate(AuthMode::Token, &creds, &s, Some("beta")),
            Err(AuthError::UnknownToken)
        );
        assert_eq!(
            authenticate(AuthMode::Token, &creds, &s, Some("alpha")),
            Ok(())
        );
        // JWT mode without a verifier fails closed.
        assert!(authenticate(AuthMode::Jwt, &creds, &s, Some("x.y.z")).is_err());
        let msg = authenticate(AuthMode::Token, &creds, &s, Some("sekrit"))
            .unwrap_err()
            .to_string();
        assert!(!msg.contains("sekrit"));
    }
}
