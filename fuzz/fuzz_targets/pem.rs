//! The PEM loader: an arbitrary certificate file and key file (the input split
//! at the first NUL byte), loaded like `--tls-cert`/`--tls-key`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shunt::testing::CertSpec;

fuzz_target!(|data: &[u8]| {
    let (cert, key) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, data),
    };
    let dir = std::env::temp_dir();
    let id = std::process::id();
    let spec = CertSpec {
        cert: dir.join(format!("shunt-fuzz-{id}.crt")),
        key: dir.join(format!("shunt-fuzz-{id}.key")),
        names: Vec::new(),
    };
    if std::fs::write(&spec.cert, cert).is_err() || std::fs::write(&spec.key, key).is_err() {
        return;
    }
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let _ = shunt::testing::load_certs(&spec, &provider);
});
