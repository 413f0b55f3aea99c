//! The `shunt` binary's subcommands: `check` (valid and invalid
//! configurations) and `healthcheck` (against a live admin listener).

use crate::support;

use std::path::Path;
use std::time::Duration;

use support::bin::{Run, run_shunt};
use support::{echo_backend, shunt};

/// Runs `shunt ARGS` (bounded by 10 s) from the crate root.
async fn run(args: &[&str]) -> Run {
    run_shunt(args, Duration::from_secs(10)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_prints_the_effective_upstreams_and_routes() {
    let out = run(&[
        "check",
        "--direct",
        "http://127.0.0.1:5006",
        "--nginx",
        "http://127.0.0.1:8081",
        "--route",
        "/frontend-audio=direct,nginx",
    ])
    .await;
    out.succeeded();
    for needle in [
        "direct",
        "nginx",
        "127.0.0.1:5006",
        "127.0.0.1:8081",
        "/frontend-audio",
    ] {
        assert!(
            out.stdout.contains(needle),
            "`shunt check` output lacks {needle:?}:\n{}",
            out.stdout
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_with_defaults_succeeds() {
    let out = run(&["check"]).await;
    out.succeeded();
    assert!(
        out.stdout.contains("127.0.0.1:5006"),
        "default direct upstream missing:\n{}",
        out.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_rejects_a_route_to_an_unknown_upstream_naming_it() {
    let out = run(&["check", "--route", "/frontend-audio=direct,foo"]).await;
    let stderr = out.refused("an unknown upstream");
    assert!(
        stderr.contains("foo"),
        "stderr does not name `foo`:\n{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_rejects_a_bad_duration_naming_it() {
    let out = run(&["check", "--health-interval", "soonish"]).await;
    let stderr = out.refused("a bad duration").to_ascii_lowercase();
    assert!(
        stderr.contains("soonish")
            || stderr.contains("health-interval")
            || stderr.contains("health_interval"),
        "stderr names neither the flag nor the value:\n{}",
        out.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_rejects_a_bad_upstream_url() {
    let out = run(&["check", "--direct", "not a url"]).await;
    let stderr = out.refused("a bad URL");
    assert!(
        stderr.contains("not a url") || stderr.to_ascii_lowercase().contains("direct"),
        "stderr names neither the upstream nor the value:\n{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_accepts_the_example_config_file() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/shunt.toml");
    assert!(
        file.exists(),
        "examples/shunt.toml is the documented example"
    );
    let out = run(&["check", "--config", "examples/shunt.toml"]).await;
    out.succeeded();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_reflects_readiness() {
    let backend = echo_backend().spawn().await;
    let ready = shunt().direct(backend.url()).start_ready().await;
    let out = run(&["healthcheck", "--admin", &ready.admin_addr().to_string()]).await;
    assert_eq!(
        out.code,
        Some(0),
        "healthcheck against a ready shunt; stderr:\n{}",
        out.stderr
    );

    // Not ready: the only upstream is dead.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let unready = shunt().direct(format!("http://{dead}")).start().await;
    unready.wait_upstream("direct", "down").await;
    let out = run(&["healthcheck", "--admin", &unready.admin_addr().to_string()]).await;
    assert_ne!(
        out.code,
        Some(0),
        "healthcheck against an unready shunt succeeded"
    );

    // Nothing listening.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let out = run(&["healthcheck", "--admin", &closed.to_string()]).await;
    assert_ne!(
        out.code,
        Some(0),
        "healthcheck against a closed port succeeded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cert_writes_a_dev_ca_and_server_certificate_and_refuses_to_overwrite() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("shunt-cli-cert-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let out_dir = dir.to_str().unwrap();
    let out = run(&[
        "cert",
        "--out",
        out_dir,
        "--name",
        "localhost",
        "--name",
        "127.0.0.1",
    ])
    .await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(out.stdout.contains("ca.crt"), "{}", out.stdout);
    for name in ["ca.crt", "ca.key", "server.crt", "server.key"] {
        assert!(dir.join(name).exists(), "{name} missing");
    }
    let mode = std::fs::metadata(dir.join("server.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let again = run(&["cert", "--out", out_dir]).await;
    assert_ne!(again.code, Some(0));
    assert!(again.stderr.contains("--force"), "{}", again.stderr);
    // The result is accepted by `shunt check` as a TLS configuration.
    let crt = dir.join("server.crt");
    let key = dir.join("server.key");
    let check = run(&[
        "check",
        "--tls-cert",
        crt.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ])
    .await;
    assert_eq!(check.code, Some(0), "{}", check.stderr);
    std::fs::remove_dir_all(&dir).unwrap();
}
