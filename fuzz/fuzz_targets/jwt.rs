//! The JWT verifier on arbitrary tokens (with and without issuer/audience).
#![no_main]

use std::time::{Duration, SystemTime};

use libfuzzer_sys::fuzz_target;
use shunt::testing::JwtVerifier;

fuzz_target!(|data: &[u8]| {
    let token = String::from_utf8_lossy(data);
    let plain = JwtVerifier::new(b"fuzz-secret", None, None, Duration::from_secs(30));
    let strict = JwtVerifier::new(
        b"fuzz-secret",
        Some("iss".into()),
        Some("aud".into()),
        Duration::from_secs(365 * 24 * 3600),
    );
    for now in [SystemTime::UNIX_EPOCH, SystemTime::now()] {
        let _ = plain.verify(&token, now);
        let _ = strict.verify(&token, now);
    }
});
