//! JWT verification (RFC 7519 / RFC 7515 compact form): HS256 with the
//! shared secret, and RS256/384/512, PS256/384/512, ES256, ES384 and EdDSA
//! with public keys ([`super::keys`]).
//!
//! The order is fixed: the header is read, its `alg` must be one shunt
//! accepts (`none` never is; `--jwt-algorithms` narrows the set), the key is
//! chosen by `kid` among those whose type allows that `alg`, the signature
//! is checked, and only then are the claims read: `exp` is required, `nbf`,
//! `iss` and `aud` are checked with the leeway. The verified claims are
//! returned, for `forward_claims` and the `user=` of the logs. No error
//! ever carries the token.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use ring::hmac;
use serde::Deserialize;

use super::keys::{Alg, KeySet};

/// Why a JWT was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// Not three base64url parts of JSON.
    #[error("not a JWT (expected three base64url parts)")]
    Malformed,
    /// An `alg` that is not accepted (`none` included).
    #[error("alg `{0}` is not accepted")]
    Algorithm(String),
    /// No configured key has the token's `kid` (or allows its `alg`).
    #[error("no key for this token (unknown `kid` or no key of its algorithm)")]
    UnknownKey,
    /// The keys of the JWKS URL are not loaded (the identity provider was
    /// not reached yet): the token cannot be checked.
    #[error("the identity provider's keys are not loaded ({0}); retrying")]
    KeysUnavailable(String),
    /// The signature does not match.
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
    /// `iss` is not one of the configured issuers.
    #[error("wrong issuer (`iss`)")]
    Issuer,
    /// `aud` names none of the configured audiences.
    #[error("wrong audience (`aud`)")]
    Audience,
}

/// The keys fetched from `--jwt-jwks-url`, as a request sees them.
#[derive(Debug, Clone, Copy)]
pub enum Remote<'a> {
    /// No JWKS URL is configured.
    None,
    /// Configured, but no key set was ever loaded: why.
    Unavailable(&'a str),
    /// The last good key set.
    Keys(&'a KeySet),
}

/// The verified claims of a token.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Claims(pub serde_json::Map<String, serde_json::Value>);

impl Claims {
    /// The `sub` claim, if it is a string.
    pub fn sub(&self) -> Option<&str> {
        self.0.get("sub").and_then(|v| v.as_str())
    }

    /// Claim `name` as header text: strings as they are, numbers and
    /// booleans as text; anything else is `None`.
    pub fn text(&self, name: &str) -> Option<String> {
        match self.0.get(name)? {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            serde_json::Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }
}

/// JWT verification with the configured secret, keys and claim expectations.
#[derive(Clone)]
pub struct JwtVerifier {
    secret: Option<hmac::Key>,
    keys: KeySet,
    algorithms: Option<Vec<Alg>>,
    remote: bool,
    /// Accepted `iss` values; empty accepts any.
    pub issuers: Vec<String>,
    /// Accepted `aud` values (one must match); empty accepts any.
    pub audiences: Vec<String>,
    /// Clock-skew allowance for `exp` and `nbf`.
    pub leeway: Duration,
}

impl fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("hs256", &self.secret.is_some())
            .field("keys", &self.keys.len())
            .field("algorithms", &self.algorithms)
            .field("jwks_url", &self.remote)
            .field("issuers", &self.issuers)
            .field("audiences", &self.audiences)
            .field("leeway", &self.leeway)
            .finish()
    }
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    kid: Option<String>,
}

#[derive(Deserialize)]
struct Registered {
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

/// The asymmetric algorithms, which a JWKS URL's keys may use.
const ASYMMETRIC: [Alg; 9] = [
    Alg::RS256,
    Alg::RS384,
    Alg::RS512,
    Alg::PS256,
    Alg::PS384,
    Alg::PS512,
    Alg::ES256,
    Alg::ES384,
    Alg::EdDSA,
];

impl JwtVerifier {
    /// An HS256 verifier for `secret`, with one issuer and audience at most.
    pub fn new(
        secret: &[u8],
        issuer: Option<String>,
        audience: Option<String>,
        leeway: Duration,
    ) -> Self {
        JwtVerifier::keyless(leeway)
            .with_secret(Some(secret))
            .with_issuers(issuer.into_iter().collect())
            .with_audiences(audience.into_iter().collect())
    }

    /// A verifier with no secret and no key yet.
    pub fn keyless(leeway: Duration) -> Self {
        JwtVerifier {
            secret: None,
            keys: KeySet::default(),
            algorithms: None,
            remote: false,
            issuers: Vec::new(),
            audiences: Vec::new(),
            leeway,
        }
    }

    /// The HS256 secret, if any.
    pub fn with_secret(mut self, secret: Option<&[u8]>) -> Self {
        self.secret = secret.map(|s| hmac::Key::new(hmac::HMAC_SHA256, s));
        self
    }

    /// Public keys (from PEM and JWKS files).
    pub fn with_keys(mut self, keys: KeySet) -> Self {
        self.keys = keys;
        self
    }

    /// Keys also come from a JWKS URL (passed to [`JwtVerifier::verify_with`]).
    pub fn with_remote(mut self, remote: bool) -> Self {
        self.remote = remote;
        self
    }

    /// The accepted algorithms (`--jwt-algorithms`); `None`: every one the keys allow.
    pub fn with_algorithms(mut self, algorithms: Option<Vec<Alg>>) -> Self {
        self.algorithms = algorithms;
        self
    }

    /// The accepted issuers.
    pub fn with_issuers(mut self, issuers: Vec<String>) -> Self {
        self.issuers = issuers;
        self
    }

    /// The accepted audiences.
    pub fn with_audiences(mut self, audiences: Vec<String>) -> Self {
        self.audiences = audiences;
        self
    }

    /// The public keys read from files.
    pub fn keys(&self) -> &KeySet {
        &self.keys
    }

    /// Whether a JWKS URL is configured.
    pub fn has_remote(&self) -> bool {
        self.remote
    }

    /// Whether an HS256 secret is configured.
    pub fn has_secret(&self) -> bool {
        self.secret.is_some()
    }

    /// Whether `alg` is accepted: listed in `--jwt-algorithms`, or by
    /// default allowed by some configured key (HS256: the secret; any
    /// asymmetric one: a JWKS URL, whose keys may rotate to a new type).
    pub fn accepts(&self, alg: Alg, remote: Remote<'_>) -> bool {
        if let Some(list) = &self.algorithms {
            return list.contains(&alg);
        }
        match alg {
            Alg::HS256 => self.secret.is_some(),
            _ => {
                self.keys.keys.iter().any(|k| k.allows(alg))
                    || (self.remote && ASYMMETRIC.contains(&alg))
                    || matches!(remote, Remote::Keys(set) if set.keys.iter().any(|k| k.allows(alg)))
            }
        }
    }

    /// Verify `token` at `now` with the file keys and the secret only.
    pub fn verify(&self, token: &str, now: SystemTime) -> Result<Claims, JwtError> {
        self.verify_with(token, now, Remote::None)
    }

    /// Verify `token` at `now`: header, key, signature, then the claims.
    pub fn verify_with(
        &self,
        token: &str,
        now: SystemTime,
        remote: Remote<'_>,
    ) -> Result<Claims, JwtError> {
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwtError::Malformed);
        };
        let header: Header = B64
            .decode(h)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(JwtError::Malformed)?;
        let alg = Alg::parse(&header.alg)
            .filter(|a| self.accepts(*a, remote))
            .ok_or_else(|| JwtError::Algorithm(printable(&header.alg)))?;
        let signature = B64.decode(s).map_err(|_| JwtError::Malformed)?;
        let signed = &token.as_bytes()[..h.len() + 1 + p.len()];
        self.check_signature(alg, header.kid.as_deref(), signed, &signature, remote)?;
        let claims: serde_json::Map<String, serde_json::Value> = B64
            .decode(p)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(JwtError::Claims)?;
        let registered: Registered =
            serde_json::from_value(serde_json::Value::Object(claims.clone()))
                .map_err(|_| JwtError::Claims)?;
        self.check_claims(&registered, now)?;
        Ok(Claims(claims))
    }

    /// The signature under the secret (HS256) or a key chosen by `kid`.
    fn check_signature(
        &self,
        alg: Alg,
        kid: Option<&str>,
        signed: &[u8],
        signature: &[u8],
        remote: Remote<'_>,
    ) -> Result<(), JwtError> {
        if alg == Alg::HS256 {
            let key = self
                .secret
                .as_ref()
                .ok_or_else(|| JwtError::Algorithm(alg.to_string()))?;
            return hmac::verify(key, signed, signature).map_err(|_| JwtError::Signature);
        }
        let remote_keys = match remote {
            Remote::Keys(set) => Some(set),
            _ => None,
        };
        let mut tried = 0;
        let mut kid_known = false;
        for key in self
            .keys
            .candidates(alg, kid)
            .chain(remote_keys.into_iter().flat_map(|s| s.candidates(alg, kid)))
        {
            tried += 1;
            kid_known |= kid.is_some() && key.kid.as_deref() == kid;
            if key.verify(alg, signed, signature) {
                return Ok(());
            }
        }
        match remote {
            Remote::Unavailable(why) if tried == 0 || (kid.is_some() && !kid_known) => {
                Err(JwtError::KeysUnavailable(why.to_owned()))
            }
            _ if tried == 0 => Err(JwtError::UnknownKey),
            // A kid that no key has, tried only against keys without one
            // (PEM files): unknown, which may trigger a JWKS refresh.
            Remote::Keys(_) if kid.is_some() && !kid_known => Err(JwtError::UnknownKey),
            _ => Err(JwtError::Signature),
        }
    }

    /// `exp` (required), `nbf`, `iss` and `aud`.
    fn check_claims(&self, claims: &Registered, now: SystemTime) -> Result<(), JwtError> {
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
        if !self.issuers.is_empty()
            && !claims
                .iss
                .as_ref()
                .is_some_and(|iss| self.issuers.contains(iss))
        {
            return Err(JwtError::Issuer);
        }
        if !self.audiences.is_empty() {
            let ok = match &claims.aud {
                Some(Audience::One(a)) => self.audiences.contains(a),
                Some(Audience::Many(list)) => list.iter().any(|a| self.audiences.contains(a)),
                None => false,
            };
            if !ok {
                return Err(JwtError::Audience);
            }
        }
        Ok(())
    }
}

/// An `alg` value as an error may show it: short, printable ASCII only.
fn printable(alg: &str) -> String {
    alg.chars()
        .filter(|c| c.is_ascii_graphic())
        .take(16)
        .collect()
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
    use ring::signature::{Ed25519KeyPair, KeyPair};
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

    fn ok(r: Result<Claims, JwtError>) -> Result<(), JwtError> {
        r.map(|_| ())
    }

    #[test]
    fn jwt_valid_and_claims() {
        let v = verifier();
        let good = json!({"exp": 2000, "nbf": 1000, "iss": "issuer", "aud": "shunt", "sub": "u1"});
        let claims = v.verify(&sign_hs256(SECRET, &good), at(1500)).unwrap();
        assert_eq!(claims.sub(), Some("u1"));
        assert_eq!(claims.text("exp").as_deref(), Some("2000"));
        assert_eq!(claims.text("aud").as_deref(), Some("shunt"));
        let many = json!({"exp": 2000, "iss": "issuer", "aud": ["x", "shunt"]});
        assert_eq!(ok(v.verify(&sign_hs256(SECRET, &many), at(1500))), Ok(()));
        // Skew allowance on both ends.
        assert_eq!(ok(v.verify(&sign_hs256(SECRET, &good), at(2020))), Ok(()));
        assert_eq!(ok(v.verify(&sign_hs256(SECRET, &good), at(980))), Ok(()));
        assert_eq!(
            ok(v.verify(&sign_hs256(SECRET, &good), at(2031))),
            Err(JwtError::Expired)
        );
        assert_eq!(
            ok(v.verify(&sign_hs256(SECRET, &good), at(900))),
            Err(JwtError::NotYetValid)
        );
        let no_exp = json!({"iss": "issuer", "aud": "shunt"});
        assert_eq!(
            ok(v.verify(&sign_hs256(SECRET, &no_exp), at(1500))),
            Err(JwtError::MissingExp)
        );
        let wrong_iss = json!({"exp": 2000, "iss": "other", "aud": "shunt"});
        assert_eq!(
            ok(v.verify(&sign_hs256(SECRET, &wrong_iss), at(1500))),
            Err(JwtError::Issuer)
        );
        let wrong_aud = json!({"exp": 2000, "iss": "issuer", "aud": ["x"]});
        assert_eq!(
            ok(v.verify(&sign_hs256(SECRET, &wrong_aud), at(1500))),
            Err(JwtError::Audience)
        );
        // Repeatable issuers and audiences: any one matches.
        let v = verifier()
            .with_issuers(vec!["a".into(), "issuer".into()])
            .with_audiences(vec!["y".into(), "x".into()]);
        assert_eq!(
            ok(v.verify(&sign_hs256(SECRET, &wrong_aud), at(1500))),
            Ok(())
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
            ok(v.verify(&sign_hs256(b"other", &json!({"exp": 2000})), at(1500))),
            Err(JwtError::Signature)
        );
        // Payload swapped, signature kept.
        let parts: Vec<&str> = good.split('.').collect();
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let forged =
            b64.encode(json!({"exp": 9999999999u64, "iss": "issuer", "aud": "shunt"}).to_string());
        let tampered = format!("{}.{}.{}", parts[0], forged, parts[2]);
        assert_eq!(ok(v.verify(&tampered, at(1500))), Err(JwtError::Signature));
        // alg none.
        let none = format!("{}.{}.", b64.encode(br#"{"alg":"none"}"#), parts[1]);
        assert_eq!(
            ok(v.verify(&none, at(1500))),
            Err(JwtError::Algorithm("none".into()))
        );
        let hs512 = format!(
            "{}.{}.{}",
            b64.encode(br#"{"alg":"HS512"}"#),
            parts[1],
            parts[2]
        );
        assert!(matches!(
            v.verify(&hs512, at(1500)),
            Err(JwtError::Algorithm(_))
        ));
        // An RS256 header with no public key configured.
        let rs = format!(
            "{}.{}.{}",
            b64.encode(br#"{"alg":"RS256"}"#),
            parts[1],
            parts[2]
        );
        assert!(matches!(
            v.verify(&rs, at(1500)),
            Err(JwtError::Algorithm(_))
        ));
        assert_eq!(ok(v.verify("abc", at(1500))), Err(JwtError::Malformed));
        assert_eq!(ok(v.verify("a.b.c.d", at(1500))), Err(JwtError::Malformed));
        assert_eq!(ok(v.verify("!!.??.**", at(1500))), Err(JwtError::Malformed));
    }

    /// Sign with an Ed25519 key made here; the JWKS carries its public half.
    fn eddsa_token(pair: &Ed25519KeyPair, kid: &str, claims: &serde_json::Value) -> String {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let header = b64.encode(json!({"alg": "EdDSA", "kid": kid}).to_string());
        let input = format!("{header}.{}", b64.encode(claims.to_string()));
        let sig = b64.encode(pair.sign(input.as_bytes()).as_ref());
        format!("{input}.{sig}")
    }

    #[test]
    fn keys_by_kid_remote_and_typing() {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let jwks = json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "k1",
            "x": b64.encode(pair.public_key().as_ref())}]});
        let (set, _) = KeySet::from_jwks(jwks.to_string().as_bytes()).unwrap();
        let claims = json!({"exp": 2000, "sub": "alice"});
        let token = eddsa_token(&pair, "k1", &claims);
        let file = JwtVerifier::keyless(Duration::ZERO).with_keys(set.clone());
        assert_eq!(file.verify(&token, at(1500)).unwrap().sub(), Some("alice"));
        assert_eq!(
            ok(file.verify(&eddsa_token(&pair, "k2", &claims), at(1500))),
            Err(JwtError::UnknownKey)
        );
        // The same key from a JWKS URL: unavailable until loaded.
        let url = JwtVerifier::keyless(Duration::ZERO).with_remote(true);
        assert_eq!(
            ok(url.verify_with(&token, at(1500), Remote::Unavailable("down"))),
            Err(JwtError::KeysUnavailable("down".into()))
        );
        assert_eq!(
            ok(url.verify_with(&token, at(1500), Remote::Keys(&set))),
            Ok(())
        );
        // HS256 is not accepted by a verifier without a secret.
        assert!(matches!(
            url.verify_with(&sign_hs256(SECRET, &claims), at(1500), Remote::Keys(&set)),
            Err(JwtError::Algorithm(_))
        ));
        // --jwt-algorithms narrows.
        let narrow = file.clone().with_algorithms(Some(vec![Alg::ES256]));
        assert!(matches!(
            narrow.verify(&token, at(1500)),
            Err(JwtError::Algorithm(_))
        ));
        // A truncated signature.
        let cut = &token[..token.len() - 4];
        assert!(matches!(
            file.verify(cut, at(1500)),
            Err(JwtError::Signature | JwtError::Malformed)
        ));
        let (input, sig) = token.rsplit_once('.').unwrap();
        let sig = b64.decode(sig).unwrap();
        let cut = format!("{input}.{}", b64.encode(&sig[..sig.len() - 1]));
        assert_eq!(ok(file.verify(&cut, at(1500))), Err(JwtError::Signature));
    }
}
