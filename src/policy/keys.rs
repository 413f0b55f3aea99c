//! Public keys that verify asymmetric JWTs, as a [`KeySet`], from PEM files
//! (`--jwt-public-key-file`) or JWKS documents (`--jwt-jwks-file`,
//! `--jwt-jwks-url`, RFC 7517).
//!
//! A key's type decides which algorithms it may verify, and nothing else
//! ([`Alg`]): an RSA key RS256/384/512 and PS256/384/512, an EC key the ES
//! algorithm of its curve (P-256: ES256, P-384: ES384), an Ed25519 key
//! EdDSA; a JWK with an `alg` only that one. So an RSA public key can never
//! be used as an HMAC secret (algorithm confusion), and HMAC secrets are not
//! keys of this set at all. RSA keys under 2048 bits are refused when
//! loaded. Verification is `ring::signature`'s.
//!
//! PEM blocks accepted: `PUBLIC KEY` (SPKI), `RSA PUBLIC KEY` (PKCS#1) and
//! `CERTIFICATE` (its subject public key). A JWKS key of an unsupported type
//! or curve, with `use` other than `sig`, or an RSA key that is too small is
//! skipped ([`Skipped`]), so one odd key does not lose the others.

use std::fmt;

use base64::Engine;
use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use serde::Deserialize;
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
    OID_SIG_ED25519,
};
use x509_parser::prelude::{FromDer, SubjectPublicKeyInfo, X509Certificate};
use x509_parser::public_key::RSAPublicKey;

/// The smallest RSA modulus accepted, in bits.
pub(crate) const MIN_RSA_BITS: usize = 2048;

/// A JWS algorithm shunt verifies (RFC 7518 §3.1). `none` is not one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Alg {
    /// HMAC SHA-256 with the shared secret (`--jwt-secret-file`).
    HS256,
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RS256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    RS384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    RS512,
    /// RSASSA-PSS with SHA-256.
    PS256,
    /// RSASSA-PSS with SHA-384.
    PS384,
    /// RSASSA-PSS with SHA-512.
    PS512,
    /// ECDSA P-256 with SHA-256.
    ES256,
    /// ECDSA P-384 with SHA-384.
    ES384,
    /// Ed25519.
    EdDSA,
}

impl Alg {
    /// Every algorithm, in the order `describe` lists them.
    pub const ALL: [Alg; 10] = [
        Alg::HS256,
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

    /// The algorithm named `name` (case-sensitive, as in a JWT header).
    pub fn parse(name: &str) -> Option<Alg> {
        Alg::ALL.into_iter().find(|a| a.name() == name)
    }

    /// Its name in a JWT header.
    pub fn name(self) -> &'static str {
        match self {
            Alg::HS256 => "HS256",
            Alg::RS256 => "RS256",
            Alg::RS384 => "RS384",
            Alg::RS512 => "RS512",
            Alg::PS256 => "PS256",
            Alg::PS384 => "PS384",
            Alg::PS512 => "PS512",
            Alg::ES256 => "ES256",
            Alg::ES384 => "ES384",
            Alg::EdDSA => "EdDSA",
        }
    }
}

impl fmt::Display for Alg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An elliptic curve shunt verifies on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Curve {
    P256,
    P384,
}

impl Curve {
    /// Bytes of one coordinate.
    fn size(self) -> usize {
        match self {
            Curve::P256 => 32,
            Curve::P384 => 48,
        }
    }
}

/// The key itself, by type.
#[derive(Clone, PartialEq, Eq)]
enum Material {
    /// Modulus and exponent, big-endian without leading zeros.
    Rsa { n: Vec<u8>, e: Vec<u8> },
    /// The uncompressed point (`04 || x || y`).
    Ec { curve: Curve, point: Vec<u8> },
    /// The 32-byte public key.
    Ed25519(Vec<u8>),
}

/// One verification key: its type, its `kid` and `alg` if it has them.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    /// `kid` (JWKS keys; PEM keys have none).
    pub kid: Option<String>,
    /// The JWK's `alg`, which restricts the key to that one algorithm.
    pub alg: Option<Alg>,
    material: Material,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublicKey")
            .field("kid", &self.kid)
            .field("type", &self.kind())
            .field("algs", &self.algs())
            .finish()
    }
}

impl PublicKey {
    /// `RSA`, `EC P-256`, `EC P-384` or `Ed25519`.
    pub fn kind(&self) -> &'static str {
        match &self.material {
            Material::Rsa { .. } => "RSA",
            Material::Ec {
                curve: Curve::P256, ..
            } => "EC P-256",
            Material::Ec {
                curve: Curve::P384, ..
            } => "EC P-384",
            Material::Ed25519(_) => "Ed25519",
        }
    }

    /// The algorithms this key may verify: those its type allows, narrowed
    /// to its `alg` when it has one.
    pub fn algs(&self) -> Vec<Alg> {
        let by_type: &[Alg] = match &self.material {
            Material::Rsa { .. } => &[
                Alg::RS256,
                Alg::RS384,
                Alg::RS512,
                Alg::PS256,
                Alg::PS384,
                Alg::PS512,
            ],
            Material::Ec {
                curve: Curve::P256, ..
            } => &[Alg::ES256],
            Material::Ec {
                curve: Curve::P384, ..
            } => &[Alg::ES384],
            Material::Ed25519(_) => &[Alg::EdDSA],
        };
        by_type
            .iter()
            .copied()
            .filter(|a| self.alg.is_none_or(|only| only == *a))
            .collect()
    }

    /// Whether this key may verify `alg`.
    pub fn allows(&self, alg: Alg) -> bool {
        self.algs().contains(&alg)
    }

    /// Whether `signature` over `message` verifies under this key with
    /// `alg` (false when the key's type does not allow `alg`).
    pub fn verify(&self, alg: Alg, message: &[u8], sig: &[u8]) -> bool {
        if !self.allows(alg) {
            return false;
        }
        match &self.material {
            Material::Rsa { n, e } => {
                let params: &signature::RsaParameters = match alg {
                    Alg::RS256 => &signature::RSA_PKCS1_2048_8192_SHA256,
                    Alg::RS384 => &signature::RSA_PKCS1_2048_8192_SHA384,
                    Alg::RS512 => &signature::RSA_PKCS1_2048_8192_SHA512,
                    Alg::PS256 => &signature::RSA_PSS_2048_8192_SHA256,
                    Alg::PS384 => &signature::RSA_PSS_2048_8192_SHA384,
                    Alg::PS512 => &signature::RSA_PSS_2048_8192_SHA512,
                    _ => return false,
                };
                RsaPublicKeyComponents { n, e }
                    .verify(params, message, sig)
                    .is_ok()
            }
            Material::Ec { curve, point } => {
                let algorithm = match curve {
                    Curve::P256 => &signature::ECDSA_P256_SHA256_FIXED,
                    Curve::P384 => &signature::ECDSA_P384_SHA384_FIXED,
                };
                UnparsedPublicKey::new(algorithm, point)
                    .verify(message, sig)
                    .is_ok()
            }
            Material::Ed25519(key) => UnparsedPublicKey::new(&signature::ED25519, key)
                .verify(message, sig)
                .is_ok(),
        }
    }
}

/// Why a key file or JWKS document could not be used. Never carries key bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The PEM text holds no block shunt reads.
    #[error(
        "no public key found (expected PEM blocks `PUBLIC KEY`, `RSA PUBLIC KEY` or `CERTIFICATE`)"
    )]
    NoKey,
    /// A PEM block that does not parse.
    #[error("PEM block {index} (`{label}`) is not a valid {label}")]
    BadPem {
        /// Its position, from 1.
        index: usize,
        /// Its label.
        label: String,
    },
    /// A key of a type shunt does not verify with.
    #[error("PEM block {index}: {what} keys are not supported (RSA, EC P-256/P-384, Ed25519 are)")]
    Unsupported {
        /// Its position, from 1.
        index: usize,
        /// What it is.
        what: String,
    },
    /// An RSA key under 2048 bits.
    #[error("PEM block {index}: RSA key of {bits} bits refused (at least 2048 are needed)")]
    WeakRsa {
        /// Its position, from 1.
        index: usize,
        /// Its size.
        bits: usize,
    },
    /// Not a JSON object with a `keys` array.
    #[error("not a JWKS document (a JSON object with a `keys` array): {0}")]
    NotJwks(String),
    /// A JWKS document with no usable key.
    #[error("the JWKS holds no usable key{}", skipped_note(.0))]
    NoUsableKey(Vec<Skipped>),
}

fn skipped_note(skipped: &[Skipped]) -> String {
    if skipped.is_empty() {
        String::new()
    } else {
        let list: Vec<String> = skipped.iter().map(ToString::to_string).collect();
        format!(" ({})", list.join("; "))
    }
}

/// A JWKS key left out, and why (logged once, naming the `kid`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// Its `kid`, if any.
    pub kid: Option<String>,
    /// Why it was left out.
    pub reason: String,
}

impl fmt::Display for Skipped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "key {} skipped: {}",
            self.kid.as_deref().unwrap_or("without kid"),
            self.reason
        )
    }
}

/// Keys that verify asymmetric JWTs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeySet {
    /// The keys, in the order they were read.
    pub keys: Vec<PublicKey>,
}

impl KeySet {
    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// How many keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Every algorithm some key of the set allows.
    pub fn algs(&self) -> Vec<Alg> {
        Alg::ALL
            .into_iter()
            .filter(|a| self.keys.iter().any(|k| k.allows(*a)))
            .collect()
    }

    /// The keys with `kid` (any key when `kid` is `None`, and keys without
    /// a `kid` whatever it is) that allow `alg`.
    pub fn candidates<'a>(
        &'a self,
        alg: Alg,
        kid: Option<&'a str>,
    ) -> impl Iterator<Item = &'a PublicKey> + 'a {
        self.keys.iter().filter(move |k| {
            k.allows(alg)
                && match (kid, &k.kid) {
                    (Some(want), Some(have)) => want == have,
                    _ => true,
                }
        })
    }

    /// Whether some key has `kid`.
    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }

    /// Read every public key of a PEM text (one or several blocks).
    pub fn from_pem(text: &[u8]) -> Result<KeySet, KeyError> {
        let mut keys = Vec::new();
        for (i, block) in x509_parser::pem::Pem::iter_from_buffer(text).enumerate() {
            let index = i + 1;
            let Ok(block) = block else {
                if keys.is_empty() && i == 0 {
                    return Err(KeyError::NoKey);
                }
                break;
            };
            let bad = || KeyError::BadPem {
                index,
                label: block.label.clone(),
            };
            let material = match block.label.as_str() {
                "PUBLIC KEY" => {
                    let (_, spki) =
                        SubjectPublicKeyInfo::from_der(&block.contents).map_err(|_| bad())?;
                    from_spki(&spki, index)?
                }
                "RSA PUBLIC KEY" => {
                    let (_, rsa) = RSAPublicKey::from_der(&block.contents).map_err(|_| bad())?;
                    rsa_material(rsa.modulus, rsa.exponent)
                        .map_err(|bits| KeyError::WeakRsa { index, bits })?
                }
                "CERTIFICATE" => {
                    let (_, cert) =
                        X509Certificate::from_der(&block.contents).map_err(|_| bad())?;
                    from_spki(cert.public_key(), index)?
                }
                _ => continue,
            };
            keys.push(PublicKey {
                kid: None,
                alg: None,
                material,
            });
        }
        if keys.is_empty() {
            return Err(KeyError::NoKey);
        }
        Ok(KeySet { keys })
    }

    /// Read a JWKS document: the usable keys, and those skipped.
    /// A document whose every key is skipped is an error.
    pub fn from_jwks(body: &[u8]) -> Result<(KeySet, Vec<Skipped>), KeyError> {
        #[derive(Deserialize)]
        struct Doc {
            keys: Vec<serde_json::Value>,
        }
        let doc: Doc =
            serde_json::from_slice(body).map_err(|e| KeyError::NotJwks(e.to_string()))?;
        let mut keys = Vec::new();
        let mut skipped = Vec::new();
        for value in doc.keys {
            match from_jwk(&value) {
                Ok(key) => keys.push(key),
                Err(s) => skipped.push(s),
            }
        }
        if keys.is_empty() {
            return Err(KeyError::NoUsableKey(skipped));
        }
        Ok((KeySet { keys }, skipped))
    }

    /// Both sets' keys.
    pub fn merged(mut self, other: &KeySet) -> KeySet {
        self.keys.extend(other.keys.iter().cloned());
        self
    }
}

/// A subject public key's material; `index` names the PEM block in errors.
fn from_spki(spki: &SubjectPublicKeyInfo<'_>, index: usize) -> Result<Material, KeyError> {
    let oid = &spki.algorithm.algorithm;
    let key = spki.subject_public_key.data.as_ref();
    if *oid == OID_PKCS1_RSAENCRYPTION {
        let (_, rsa) = RSAPublicKey::from_der(key).map_err(|_| KeyError::BadPem {
            index,
            label: "RSA key".into(),
        })?;
        return rsa_material(rsa.modulus, rsa.exponent)
            .map_err(|bits| KeyError::WeakRsa { index, bits });
    }
    if *oid == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve_oid = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        let curve = match curve_oid {
            Some(c) if c == OID_EC_P256 => Curve::P256,
            Some(c) if c == OID_NIST_EC_P384 => Curve::P384,
            other => {
                return Err(KeyError::Unsupported {
                    index,
                    what: format!(
                        "EC curve {}",
                        other.map_or_else(|| "unknown".to_owned(), |o| o.to_id_string())
                    ),
                });
            }
        };
        if key.len() != 1 + 2 * curve.size() || key[0] != 4 {
            return Err(KeyError::BadPem {
                index,
                label: "EC key".into(),
            });
        }
        return Ok(Material::Ec {
            curve,
            point: key.to_vec(),
        });
    }
    if *oid == OID_SIG_ED25519 {
        if key.len() != 32 {
            return Err(KeyError::BadPem {
                index,
                label: "Ed25519 key".into(),
            });
        }
        return Ok(Material::Ed25519(key.to_vec()));
    }
    Err(KeyError::Unsupported {
        index,
        what: oid.to_id_string(),
    })
}

/// RSA material from big-endian modulus and exponent; `Err(bits)` when the
/// modulus is under [`MIN_RSA_BITS`].
fn rsa_material(n: &[u8], e: &[u8]) -> Result<Material, usize> {
    let n = trim_zeros(n);
    let e = trim_zeros(e);
    let bits = n
        .first()
        .map_or(0, |b| n.len() * 8 - b.leading_zeros() as usize);
    if bits < MIN_RSA_BITS || e.is_empty() {
        return Err(bits);
    }
    Ok(Material::Rsa {
        n: n.to_vec(),
        e: e.to_vec(),
    })
}

fn trim_zeros(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|&x| x != 0).unwrap_or(b.len());
    &b[start..]
}

/// base64url without padding, as JWK members are encoded (padding tolerated).
const B64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

/// One JWK (RFC 7517 §4, RFC 7518 §6, RFC 8037 §2) as a key, or why it is skipped.
fn from_jwk(value: &serde_json::Value) -> Result<PublicKey, Skipped> {
    let text = |name: &str| value.get(name).and_then(|v| v.as_str());
    let kid = text("kid").map(str::to_owned);
    let skip = |reason: String| Skipped {
        kid: kid.clone(),
        reason,
    };
    if let Some(u) = text("use")
        && u != "sig"
    {
        return Err(skip(format!("`use` is `{u}`, not `sig`")));
    }
    let bytes = |name: &str| -> Result<Vec<u8>, Skipped> {
        let v = text(name).ok_or_else(|| skip(format!("no `{name}`")))?;
        B64.decode(v)
            .map_err(|_| skip(format!("`{name}` is not base64url")))
    };
    let kty = text("kty").unwrap_or("");
    let material = match kty {
        "RSA" => rsa_material(&bytes("n")?, &bytes("e")?)
            .map_err(|bits| skip(format!("RSA key of {bits} bits (at least 2048 are needed)")))?,
        "EC" => {
            let curve = match text("crv") {
                Some("P-256") => Curve::P256,
                Some("P-384") => Curve::P384,
                other => {
                    return Err(skip(format!(
                        "EC curve `{}` is not supported",
                        other.unwrap_or("?")
                    )));
                }
            };
            let (x, y) = (bytes("x")?, bytes("y")?);
            if x.len() != curve.size() || y.len() != curve.size() {
                return Err(skip("EC coordinates of the wrong length".into()));
            }
            let mut point = vec![4];
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            Material::Ec { curve, point }
        }
        "OKP" => {
            if text("crv") != Some("Ed25519") {
                return Err(skip(format!(
                    "OKP curve `{}` is not supported",
                    text("crv").unwrap_or("?")
                )));
            }
            let x = bytes("x")?;
            if x.len() != 32 {
                return Err(skip("Ed25519 key of the wrong length".into()));
            }
            Material::Ed25519(x)
        }
        other => return Err(skip(format!("key type `{other}` is not supported"))),
    };
    let alg = match text("alg") {
        None => None,
        Some(name) => match Alg::parse(name) {
            Some(a) => Some(a),
            None => return Err(skip(format!("`alg` `{name}` is not supported"))),
        },
    };
    let key = PublicKey {
        kid: kid.clone(),
        alg,
        material,
    };
    if key.algs().is_empty() {
        return Err(skip(format!(
            "`alg` `{}` does not fit a {} key",
            alg.map_or("?", Alg::name),
            key.kind()
        )));
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn b64(b: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    }

    #[test]
    fn jwk_types_and_skips() {
        let n = {
            let mut n = vec![0xc5u8; 256];
            n[255] |= 1;
            n
        };
        let doc = json!({"keys": [
            {"kty": "RSA", "kid": "r", "n": b64(&n), "e": "AQAB"},
            {"kty": "RSA", "kid": "small", "n": b64(&n[..128]), "e": "AQAB"},
            {"kty": "RSA", "kid": "enc", "use": "enc", "n": b64(&n), "e": "AQAB"},
            {"kty": "EC", "kid": "e", "crv": "P-256", "x": b64(&[1; 32]), "y": b64(&[2; 32])},
            {"kty": "EC", "kid": "k", "crv": "secp256k1", "x": b64(&[1; 32]), "y": b64(&[2; 32])},
            {"kty": "OKP", "kid": "o", "crv": "Ed25519", "x": b64(&[3; 32]), "alg": "EdDSA"},
            {"kty": "oct", "kid": "h", "k": "c2VjcmV0"},
            {"kty": "RSA", "kid": "ra", "alg": "PS256", "n": b64(&n), "e": "AQAB"},
            {"kty": "RSA", "kid": "bad-alg", "alg": "ES256", "n": b64(&n), "e": "AQAB"},
        ]});
        let (set, skipped) = KeySet::from_jwks(doc.to_string().as_bytes()).unwrap();
        let kids: Vec<_> = set.keys.iter().map(|k| k.kid.clone().unwrap()).collect();
        assert_eq!(kids, ["r", "e", "o", "ra"]);
        let skipped: Vec<_> = skipped.iter().map(|s| s.kid.clone().unwrap()).collect();
        assert_eq!(skipped, ["small", "enc", "k", "h", "bad-alg"]);
        assert_eq!(set.keys[0].algs().len(), 6);
        assert_eq!(set.keys[1].algs(), [Alg::ES256]);
        assert_eq!(set.keys[2].algs(), [Alg::EdDSA]);
        assert_eq!(set.keys[3].algs(), [Alg::PS256]);
        assert!(!set.keys[0].allows(Alg::HS256));
        assert_eq!(set.candidates(Alg::ES256, Some("e")).count(), 1);
        assert_eq!(set.candidates(Alg::ES256, Some("r")).count(), 0);
        assert_eq!(set.candidates(Alg::RS256, None).count(), 1);
        assert!(matches!(
            KeySet::from_jwks(br#"{"keys": [{"kty": "oct"}]}"#),
            Err(KeyError::NoUsableKey(_))
        ));
        assert!(matches!(
            KeySet::from_jwks(b"<html>"),
            Err(KeyError::NotJwks(_))
        ));
    }

    #[test]
    fn pem_without_keys() {
        assert_eq!(KeySet::from_pem(b""), Err(KeyError::NoKey));
        assert_eq!(KeySet::from_pem(b"not pem"), Err(KeyError::NoKey));
        let bogus = b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n";
        assert!(matches!(
            KeySet::from_pem(bogus),
            Err(KeyError::BadPem { index: 1, .. })
        ));
    }

    #[test]
    fn algorithm_names() {
        for a in Alg::ALL {
            assert_eq!(Alg::parse(a.name()), Some(a));
        }
        assert_eq!(Alg::parse("none"), None);
        assert_eq!(Alg::parse("hs256"), None);
    }
}
