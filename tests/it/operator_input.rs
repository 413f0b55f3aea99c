//! Operator input never panics: every numeric flag of `shunt check` fed
//! extreme values (zero, negative, huge, overflowing, garbage) gets either a
//! clean success or exit 2 with one line naming the flag, never a panic
//! (exit 101). And a shunt started with every duration at its upper bound
//! (one year) serves a call and shuts down: no `Instant + Duration` overflow.

use crate::support;

use std::time::Duration;

use support::bin::run_shunt;
use support::{echo_backend, shunt, ws, ws_connect};

/// Every flag of `shunt run`/`check` that takes a number, a duration or a size.
const DURATION_FLAGS: &[&str] = &[
    "--connect-timeout",
    "--response-timeout",
    "--health-interval",
    "--health-timeout",
    "--ws-check-interval",
    "--header-timeout",
    "--idle-timeout",
    "--drain-timeout",
    "--tls-handshake-timeout",
    "--jwt-leeway",
];
const COUNT_FLAGS: &[&str] = &[
    "--rise",
    "--fall",
    "--max-header-bytes",
    "--burst",
    "--max-conns-per-ip",
    "--max-conns",
    "--max-tracked-ips",
    "--pipe-size",
    "--max-pipes",
];
const EXTREMES: &[&str] = &[
    "0",
    "-1",
    "1",
    "4294967295",
    "4294967296",
    "18446744073709551615",
    "18446744073709551616",
    "99999999999999999999999999",
    "100000000h",
    "9999999999999999d",
    "584942417355y",
    "1e309",
    "NaN",
    "",
    " ",
    "1.5",
    "0x10",
    "1s 1s 1s",
    "\u{1F600}",
];

/// `shunt check FLAG VALUE` (plus what a flag needs to be meaningful): exit code and stderr.
async fn check(flag: &str, value: &str) -> (Option<i32>, String) {
    let run = run_shunt(&["check", flag, value], Duration::from_secs(10)).await;
    (run.code, run.stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_numeric_flag_takes_extreme_values_without_panicking() {
    let mut failures = Vec::new();
    for flag in DURATION_FLAGS.iter().chain(COUNT_FLAGS) {
        for value in EXTREMES {
            let (code, stderr) = check(flag, value).await;
            let fine = match code {
                Some(0) => true,
                Some(2) => {
                    let line = stderr.trim();
                    !line.is_empty() && !line.contains("panicked") && line.len() < 2000
                }
                _ => false,
            };
            if !fine {
                failures.push(format!("{flag} {value:?}: exit {code:?}: {stderr}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_duration_is_refused_naming_the_flag_and_the_range() {
    for flag in DURATION_FLAGS {
        let (code, stderr) = check(flag, "100000000h").await;
        assert_eq!(code, Some(2), "{flag}: {stderr}");
        assert!(
            stderr.contains(flag) && stderr.contains("365d"),
            "{flag}: the error names the flag and the range: {stderr}"
        );
    }
    let (code, stderr) = check("--max-header-bytes", "1000000000").await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("--max-header-bytes") && stderr.contains("1048576"),
        "{stderr}"
    );
    let (code, stderr) = check("--health-interval", "0").await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--health-interval"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_duration_at_its_upper_bound_still_serves_and_drains() {
    let backend = echo_backend().name("direct").spawn().await;
    let mut builder = shunt().direct(backend.url()).route("/=direct");
    for flag in DURATION_FLAGS {
        if *flag != "--jwt-leeway" && *flag != "--health-interval" {
            builder = builder.arg(flag, "365d");
        }
    }
    let shunt = builder
        .arg("--health-interval", "365d")
        .arg("--max-header-bytes", "1048576")
        .start_ready()
        .await;
    let (mut call, _) = ws_connect(shunt.addr(), "/audio", &[]).await.expect("call");
    assert_eq!(ws::recv_text(&mut call).await.unwrap(), "hello from direct");
    ws::send_text(&mut call, "a year of silence allowed")
        .await
        .unwrap();
    assert_eq!(
        ws::recv_text(&mut call).await.unwrap(),
        "a year of silence allowed"
    );
}
