//! The JWT verifier and the key parsers on arbitrary input: the token with
//! an HS256 secret (with and without issuer/audience) and with public keys
//! from a fixed JWKS, the JWKS parser and the PEM public-key parser.
#![no_main]

use std::time::{Duration, SystemTime};

use libfuzzer_sys::fuzz_target;
use shunt::testing::{JwtVerifier, KeySet, Remote};

/// A JWKS with one key of each supported type (public halves only; no token
/// will verify, so the fuzzer explores the header, kid and algorithm paths).
const JWKS: &str = r#"{"keys": [
 {"kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
 {"kty": "EC", "crv": "P-256", "kid": "ec", "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}
]}"#;

fuzz_target!(|data: &[u8]| {
    let token = String::from_utf8_lossy(data);
    let plain = JwtVerifier::new(b"fuzz-secret", None, None, Duration::from_secs(30));
    let strict = JwtVerifier::new(
        b"fuzz-secret",
        Some("iss".into()),
        Some("aud".into()),
        Duration::from_secs(365 * 24 * 3600),
    );
    let (keys, _) = KeySet::from_jwks(JWKS.as_bytes()).expect("the fixed JWKS parses");
    let with_keys = JwtVerifier::keyless(Duration::from_secs(30))
        .with_keys(keys.clone())
        .with_remote(true);
    for now in [SystemTime::UNIX_EPOCH, SystemTime::now()] {
        let _ = plain.verify(&token, now);
        let _ = strict.verify(&token, now);
        let _ = with_keys.verify_with(&token, now, Remote::Keys(&keys));
        let _ = with_keys.verify_with(&token, now, Remote::Unavailable("down"));
    }
    // The same bytes as a JWKS document and as PEM public keys.
    if let Ok((set, _)) = KeySet::from_jwks(data) {
        assert!(!set.is_empty());
        let _ = JwtVerifier::keyless(Duration::ZERO)
            .with_keys(set)
            .verify(&token, SystemTime::now());
    }
    if let Ok(set) = KeySet::from_pem(data) {
        assert!(!set.is_empty());
    }
});
