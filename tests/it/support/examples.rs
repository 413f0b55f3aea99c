//! The example programs (`examples/*.rs`) as a user runs them: built binaries
//! next to the `shunt` binary under test (`target/<profile>/examples/`).

use std::path::PathBuf;
use std::process::Command;

/// The built example `name`, brought up to date first with
/// `cargo build --example NAME` (a no-op after `cargo test` built it).
pub(crate) fn example_binary(name: &str) -> PathBuf {
    let bin_dir = PathBuf::from(env!("CARGO_BIN_EXE_shunt"))
        .parent()
        .expect("the shunt binary has a directory")
        .to_owned();
    let mut build = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    build
        .arg("build")
        .arg("--quiet")
        .arg("--manifest-path")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
        .arg("--example")
        .arg(name);
    if bin_dir.ends_with("release") {
        build.arg("--release");
    }
    let status = build
        .status()
        .unwrap_or_else(|e| panic!("run cargo build --example {name}: {e}"));
    assert!(status.success(), "cargo build --example {name}: {status}");
    let path = bin_dir.join("examples").join(name);
    assert!(path.is_file(), "{} was not built", path.display());
    path
}
