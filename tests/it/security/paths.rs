//! Property test of path normalization and routing: a deterministic
//! generator of hostile paths (dot segments, encoded dots and slashes,
//! backslashes, repeated slashes), checked against the router directly and
//! end to end through shunt.

use std::sync::Arc;

use shunt::testing::RouteSpec;
use shunt::testing::{Route, Router, normalize_path};

use crate::security::prelude::*;

/// xorshift64*: deterministic, no crate needed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() % items.len() as u64) as usize]
    }
}

const SEGMENTS: &[&str] = &[
    "frontend-audio",
    "admin",
    "private",
    "a",
    "..",
    ".",
    "%2e%2e",
    "%2E%2e",
    "%2e",
    ".%2e",
    "%2e.",
    "",
    "x%2fy",
    "%2f",
    "%5c",
    "..%2f",
    "..%5c",
    "%252e%252e",
    "é",
    "frontend-audiox",
    "...",
];
const SEPARATORS: &[&str] = &["/", "/", "/", "//", "\\", "%2f", "%5C", "/./"];

fn random_path(rng: &mut Rng) -> String {
    let n = 1 + rng.next() % 7;
    let mut p = String::new();
    for _ in 0..n {
        p.push_str(rng.pick(SEPARATORS));
        p.push_str(rng.pick(SEGMENTS));
    }
    if !p.starts_with('/') {
        p.insert(0, '/');
    }
    p
}

fn segment_prefix(prefix: &str, path: &str) -> bool {
    prefix == "/"
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

#[test]
fn normalization_is_idempotent_and_routing_sound() {
    let prefixes = [
        "/",
        "/frontend-audio",
        "/frontend-audio/admin",
        "/admin",
        "/a/private",
    ];
    let router = Router::new(
        prefixes
            .iter()
            .map(|p| {
                Arc::new(Route {
                    spec: RouteSpec {
                        host: None,
                        path: (*p).to_owned(),
                        via: vec![],
                        policy: Default::default(),
                        calls: Default::default(),
                        websocket: false,
                    },
                    label: (*p).to_owned(),
                    via: vec![],
                })
            })
            .collect(),
    );
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    for _ in 0..20_000 {
        let raw = random_path(&mut rng);
        let norm = normalize_path(&raw);
        assert_eq!(normalize_path(&norm), norm, "idempotent for {raw:?}");
        assert!(norm.starts_with('/'), "{raw:?} -> {norm:?}");
        assert!(!norm.contains("//"), "{raw:?} -> {norm:?}");
        assert!(!norm.contains('\\'), "{raw:?} -> {norm:?}");
        for seg in norm.split('/') {
            let lower = seg.to_ascii_lowercase();
            assert!(seg != "." && seg != "..", "{raw:?} -> {norm:?}");
            assert!(
                !lower.contains("%2e") && !lower.contains("%2f") && !lower.contains("%5c"),
                "{raw:?} -> {norm:?}"
            );
        }
        let route = router.route(None, &norm).expect("/ matches everything");
        assert!(
            segment_prefix(&route.spec.path, &norm),
            "{raw:?} -> {norm:?} routed to {}",
            route.spec.path
        );
        // The most specific matching prefix wins.
        let longest = prefixes
            .iter()
            .filter(|p| segment_prefix(p, &norm))
            .max_by_key(|p| p.len())
            .unwrap();
        assert_eq!(&route.spec.path, longest, "{raw:?} -> {norm:?}");
    }
}

/// End to end: `/frontend-audio` is open, everything else needs a token.
/// Without a token, whatever reaches the backend lies under `/frontend-audio`.
#[tokio::test]
async fn no_path_trick_reaches_the_protected_route_unauthenticated() {
    let (backend, _files, shunt) = audio_open_rest_token(&[]).await;
    let mut rng = Rng(0xdead_beef_0042);
    let mut answered = 0;
    for _ in 0..300 {
        let raw_path = random_path(&mut rng).replace('é', "%C3%A9");
        let answer = raw(shunt.addr(), &get(&raw_path, &[])).await;
        let s = answer.status.unwrap_or(0);
        assert!(s == 0 || s < 500, "{raw_path}: {answer:?}");
        if s == 200 {
            answered += 1;
            assert!(
                segment_prefix("/frontend-audio", &normalize_path(&raw_path)),
                "{raw_path}"
            );
        }
    }
    assert!(answered > 0, "some paths did reach the open route");
    for target in backend.seen() {
        let path = target.split('?').next().unwrap();
        assert!(
            segment_prefix("/frontend-audio", path),
            "backend saw {target}"
        );
        assert_eq!(
            normalize_path(path),
            path,
            "the backend sees a normalized path: {target}"
        );
    }
    shunt.stop().await;
}
