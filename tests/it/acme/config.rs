//! `[acme]`, its flags and the HTTP port: bad input is a clear error naming
//! the setting; `shunt check` reports what is set.

use crate::support::TempFile;

fn error(args: &[&str]) -> String {
    shunt::Config::from_args(args.iter().copied())
        .map(|_| String::new())
        .unwrap_or_else(|e| e.to_string())
}

#[test]
fn acme_settings_are_checked_where_they_are_given() {
    let e = error(&[
        "--acme-domain",
        "a.example.com",
        "--acme-challenge",
        "dns-01",
    ]);
    assert!(
        e.contains("--acme-challenge") && e.contains("tls-alpn-01 or http-01"),
        "{e}"
    );
    let e = error(&[
        "--acme-domain",
        "a.example.com",
        "--acme-challenge",
        "http-01",
    ]);
    assert!(
        e.contains("--http-listen"),
        "HTTP-01 needs the HTTP port: {e}"
    );
    let e = error(&[
        "--acme-domain",
        "a.example.com",
        "--acme-directory",
        "http://ca/dir",
    ]);
    assert!(
        e.contains("--acme-directory") && e.contains("https://"),
        "{e}"
    );
    let e = error(&["--acme-domain", "10.0.0.1"]);
    assert!(e.contains("not IP addresses"), "{e}");
    let e = error(&["--http-listen", "nowhere"]);
    assert!(e.contains("--http-listen"), "{e}");

    let empty = TempFile::new("acme-empty.toml", "[acme]\nemail = \"ops@example.com\"\n");
    let e = error(&["--config", empty.path()]);
    assert!(e.contains("[acme]") && e.contains("domains"), "{e}");
    let typo = TempFile::new("acme-typo.toml", "[acme]\ndomain = [\"a.example.com\"]\n");
    let e = error(&["--config", typo.path()]);
    assert!(e.contains("domain"), "{e}");

    let ok = TempFile::new(
        "acme-ok.toml",
        "http_listen = \"127.0.0.1:0\"\nhttps_port = 443\n[acme]\ndomains = [\"calls.example.com\"]\nchallenge = \"http-01\"\ndirectory = \"letsencrypt-staging\"\nstate_dir = \"acme\"\n",
    );
    let config = shunt::Config::from_args(["--config", ok.path()]).unwrap();
    let report = config.describe(None);
    assert!(
        report.contains("acme    calls.example.com via http-01 from https://acme-staging-v02.api.letsencrypt.org/directory"),
        "{report}"
    );
    assert!(report.contains("308 to https port 443"), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acme_ca_file_that_does_not_load_fails_the_start() {
    let dir = crate::support::TempFile::new("acme-ca.pem", "not a certificate\n");
    let state = std::env::temp_dir().join(format!("shunt-acme-ca-state-{}", std::process::id()));
    let config = shunt::Config::from_args([
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "off",
        "--acme-domain",
        "calls.example.com",
        "--acme-ca-file",
        dir.path(),
        "--acme-state-dir",
        state.to_str().unwrap(),
    ])
    .unwrap();
    let e = shunt::start(config).await.unwrap_err().to_string();
    assert!(
        e.contains("--acme-ca-file") && e.contains("acme-ca.pem"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&state);
}
