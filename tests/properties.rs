//! Property tests with a fixed-seed generator (no extra crate): path
//! normalization and the request-head checks over many generated inputs.
//! Failures print the input, so a case can be turned into a unit test.

use shunt::router::normalize_path;

/// xorshift64*: small, deterministic, good enough to spread test inputs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() % items.len() as u64) as usize]
    }
}

/// Pieces that matter to a normalizer: separators, dots (plain, escaped, in
/// either case), backslashes, stray percent signs, ordinary segments.
const PIECES: &[&str] = &[
    "/", "//", ".", "..", "%2e", "%2E", "%2f", "%2F", "%5c", "\\", "%", "%2", "%25", "a", "b",
    "audio", "é", "%00", ";", "..%2f", ".%2e",
];

fn path(rng: &mut Rng) -> String {
    let len = rng.next() % 12;
    let mut p = String::from(if rng.next().is_multiple_of(4) {
        ""
    } else {
        "/"
    });
    for _ in 0..len {
        p.push_str(rng.pick(PIECES));
    }
    p
}

#[test]
fn normalized_paths_are_rooted_dot_free_single_slashed_and_stable() {
    let mut rng = Rng(0x5eed_0013);
    for _ in 0..20_000 {
        let input = path(&mut rng);
        let out = normalize_path(&input);
        assert!(out.starts_with('/'), "{input:?} → {out:?}");
        assert!(!out.contains("//"), "{input:?} → {out:?}");
        assert!(
            !out.split('/').any(|s| s == "." || s == ".."),
            "{input:?} → {out:?}"
        );
        assert!(!out.contains('\\'), "{input:?} → {out:?}");
        assert_eq!(normalize_path(&out), out, "not idempotent for {input:?}");
    }
}

#[test]
fn a_path_never_climbs_out_of_its_prefix_by_dots() {
    // Whatever follows `/safe/`, dot segments cannot leave it for `/admin`
    // unless they climb explicitly past `safe`; count the climbs.
    let mut rng = Rng(42);
    for _ in 0..5_000 {
        let tail: String = (0..rng.next() % 6)
            .map(|_| rng.pick(&["a/", "b/", "./", "%2e/"]))
            .collect();
        let out = normalize_path(&format!("/safe/{tail}x"));
        assert!(out.starts_with("/safe/"), "/safe/{tail}x → {out:?}");
    }
}
