//! Request-head checks: WebSocket handshake validation, `Host` and path
//! normalization, on arbitrary heads. Input: first line the request target,
//! then `name: value` lines (invalid ones skipped, as hyper would refuse them).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let target = lines.next().unwrap_or("/");
    let mut builder = http::Request::get(target);
    for line in lines {
        if let Some((name, value)) = line.split_once(':')
            && let (Ok(n), Ok(v)) = (
                http::HeaderName::from_bytes(name.trim().as_bytes()),
                http::HeaderValue::from_bytes(value.trim().as_bytes()),
            )
        {
            builder = builder.header(n, v);
        }
    }
    let normalized = shunt::testing::normalize_path(target);
    assert!(normalized.starts_with('/'), "{target:?} → {normalized:?}");
    assert!(
        !normalized.split('/').any(|s| s == ".." || s == "."),
        "{target:?} → {normalized:?}"
    );
    // Normalizing is idempotent: routing and the forwarded path agree.
    assert_eq!(shunt::testing::normalize_path(&normalized), normalized);
    if let Ok(req) = builder.body(()) {
        let _ = shunt::testing::classify(&req);
    }
});
