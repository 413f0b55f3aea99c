//! Tests of the test harness itself: [`crate::support::require`]'s decision, and
//! that a missing part is a visible skip, or a failure where it is required.
//! (Here, not in `support`: `tests/allocations.rs` includes `support` and
//! must hold its one test only.)

use crate::support::require::{Part, missing, required_by};

#[test]
fn ci_requires_every_part_and_shunt_require_the_named_ones() {
    for part in Part::ALL {
        assert!(
            required_by(part, Some("true"), None),
            "{part:?} under CI=true"
        );
        assert!(required_by(part, None, Some("all")), "{part:?} under all");
        assert!(!required_by(part, None, None), "{part:?} by default");
        assert!(
            !required_by(part, Some("false"), None),
            "{part:?} under CI=false"
        );
    }
    let list = Some("netns, browser");
    assert!(required_by(Part::Netns, None, list));
    assert!(required_by(Part::Browser, Some("1"), list));
    assert!(!required_by(Part::Nginx, None, list));
    assert!(!required_by(Part::Netem, None, Some("")));
}

/// The child of [`a_missing_part_fails_where_required_and_is_a_visible_skip_elsewhere`]:
/// nginx reported missing.
#[test]
#[ignore = "a child process of a_missing_part_fails_where_required_and_is_a_visible_skip_elsewhere"]
fn child_reports_nginx_missing() {
    missing(Part::Nginx, "reported missing by the test");
}

/// Runs this test binary's [`child_reports_nginx_missing`] with `env`
/// (`CI` and `SHUNT_REQUIRE` cleared first); whether it passed, and what it
/// wrote to stdout and stderr.
fn run_child(env: &[(&str, &str)]) -> (bool, String) {
    let name = "harness::child_reports_nginx_missing";
    let out = std::process::Command::new(std::env::current_exe().expect("the test binary"))
        .args([name, "--exact", "--ignored", "--test-threads", "1"])
        .env_remove("CI")
        .env_remove("SHUNT_REQUIRE")
        .envs(env.iter().copied())
        .output()
        .expect("run the test binary");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn a_missing_part_fails_where_required_and_is_a_visible_skip_elsewhere() {
    let (passed, out) = run_child(&[]);
    assert!(passed, "not required: a skip, not a failure:\n{out}");
    assert!(
        out.contains("skipped: harness::child_reports_nginx_missing: nginx: reported missing"),
        "the skip line, uncaptured:\n{out}"
    );
    for env in [[("CI", "true")], [("SHUNT_REQUIRE", "netns,nginx")]] {
        let (passed, out) = run_child(&env);
        assert!(!passed, "{env:?}: a missing part fails:\n{out}");
        assert!(
            out.contains("nginx is required here") && out.contains("apt-get install nginx"),
            "{env:?}: the failure says what to install:\n{out}"
        );
        assert!(!out.contains("skipped:"), "{env:?}: no skip:\n{out}");
    }
}
