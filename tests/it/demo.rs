//! The README's worked example is `examples/demo.sh`; these tests run it as a
//! user would (with prebuilt debug binaries and free ports) and check what it
//! prints: calls go direct, fall back through nginx to the second backend
//! when the direct one is killed, and return to direct when it is back. The
//! script must also stop everything it started, and fail loudly.
//!
//! Needs nginx: a visible skip when it is missing, or a failure where nginx
//! is required (`CI=true`, `SHUNT_REQUIRE=nginx`; see [`support::require`]).

use crate::support;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Bound on one run of the script (it bounds each of its own waits).
const SCRIPT_LIMIT: Duration = Duration::from_secs(120);

/// What one run of demo.sh did.
struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// The three tests run one at a time: each frees the ports it picked before
/// the script binds them, and a test running beside it could be handed the
/// same ports by the kernel in that moment (seen in CI as "port ... is
/// already in use" naming another test's backend).
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Holds [`SERIAL`] for the rest of a test (a failed test does not poison it
/// for the others).
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The start of every demo test: [`one_at_a_time`] and [`free_ports`].
fn serial_ports() -> (std::sync::MutexGuard<'static, ()>, [u16; 5]) {
    (one_at_a_time(), free_ports())
}

/// Five ports that were free together a moment ago (held until all are picked,
/// so they differ).
fn free_ports() -> [u16; 5] {
    let held: Vec<TcpListener> = (0..5)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0"))
        .collect();
    let ports: Vec<u16> = held
        .iter()
        .map(|l| l.local_addr().expect("local addr").port())
        .collect();
    [ports[0], ports[1], ports[2], ports[3], ports[4]]
}

fn listening(port: u16) -> bool {
    TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .is_ok()
}

/// Runs demo.sh with these ports and the given nginx, bounded by [`SCRIPT_LIMIT`].
fn run_demo(nginx: &Path, ports: [u16; 5]) -> Run {
    support::examples::example_binary("echo_backend");
    support::examples::example_binary("audio_client");
    let bin_dir = PathBuf::from(env!("CARGO_BIN_EXE_shunt"))
        .parent()
        .expect("bin dir")
        .to_owned();
    let out_dir = std::env::temp_dir().join(format!(
        "shunt-demo-test-{}-{}",
        std::process::id(),
        ports[0]
    ));
    std::fs::create_dir_all(&out_dir).expect("create output dir");
    let (stdout_path, stderr_path) = (out_dir.join("stdout"), out_dir.join("stderr"));
    let [direct, nginx_backend, nginx_port, shunt, admin] = ports;
    let mut child = Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/demo.sh"))
        .env("DIRECT_PORT", direct.to_string())
        .env("NGINX_BACKEND_PORT", nginx_backend.to_string())
        .env("NGINX_PORT", nginx_port.to_string())
        .env("SHUNT_PORT", shunt.to_string())
        .env("ADMIN_PORT", admin.to_string())
        .env("CALL_SECONDS", "1")
        .env("BIN_DIR", &bin_dir)
        .env("NGINX", nginx)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout_path).expect("stdout file"))
        .stderr(std::fs::File::create(&stderr_path).expect("stderr file"))
        .spawn()
        .expect("run bash examples/demo.sh");
    let mut exit = None;
    support::eventually_blocking(SCRIPT_LIMIT, || {
        exit = child.try_wait().expect("wait for demo.sh");
        exit.is_some()
    });
    let Some(status) = exit else {
        // SIGTERM lets the script's trap stop what it started.
        let pid = rustix::process::Pid::from_child(&child);
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let _ = child.wait();
        panic!("demo.sh did not finish within {SCRIPT_LIMIT:?}");
    };
    let run = Run {
        ok: status.success(),
        stdout: std::fs::read_to_string(&stdout_path).unwrap_or_default(),
        stderr: std::fs::read_to_string(&stderr_path).unwrap_or_default(),
    };
    let _ = std::fs::remove_dir_all(&out_dir);
    run
}

/// Byte offset of `needle` in `haystack` at or after `from`, or a panic showing the output.
fn find_after(run: &Run, from: usize, needle: &str) -> usize {
    match run.stdout[from..].find(needle) {
        Some(i) => from + i,
        None => panic!(
            "expected {needle:?} in demo.sh's output after byte {from}\n--- stdout\n{}\n--- stderr\n{}",
            run.stdout, run.stderr
        ),
    }
}

/// The run failed with `message` on stderr and left nothing on `ports`.
fn expect_failure(run: &Run, message: &str, ports: &[u16]) {
    assert!(
        !run.ok,
        "demo.sh succeeded:\n{}\n--- stderr\n{}",
        run.stdout, run.stderr
    );
    assert!(run.stderr.contains(message), "stderr: {}", run.stderr);
    for &port in ports {
        assert!(!listening(port), "demo.sh left something on port {port}");
    }
}

#[test]
fn demo_falls_back_through_nginx_and_returns_to_direct() {
    let Some(nginx) = support::nginx::nginx_binary() else {
        return;
    };
    let (_serial, ports) = serial_ports();
    let run = run_demo(&nginx, ports);
    assert!(
        run.ok,
        "demo.sh failed\n--- stdout\n{}\n--- stderr\n{}",
        run.stdout, run.stderr
    );
    // Step 1 direct, step 2 via nginx to the second backend, step 3 direct again.
    let direct = find_after(&run, 0, "upstream: direct  backend: backend");
    let calls = find_after(&run, direct, "calls: completed=2 dropped=0 failed=0");
    let fallback = find_after(&run, calls, "upstream: nginx  backend: via-nginx");
    let calls = find_after(&run, fallback, "calls: completed=2 dropped=0 failed=0");
    let back = find_after(&run, calls, "upstream: direct  backend: backend");
    let status = find_after(
        &run,
        back,
        r#""path":"/frontend-audio","selected":"direct""#,
    );
    find_after(&run, status, "demo: OK");
    // Everything it started is gone.
    for port in ports {
        assert!(
            !listening(port),
            "port {port} still accepts after demo.sh exited"
        );
    }
}

#[test]
fn demo_refuses_a_taken_port_and_starts_nothing() {
    let Some(nginx) = support::nginx::nginx_binary() else {
        return;
    };
    let (_serial, ports) = serial_ports();
    // Someone else holds the shunt port.
    let squatter = TcpListener::bind(("127.0.0.1", ports[3])).expect("hold the shunt port");
    let run = run_demo(&nginx, ports);
    drop(squatter);
    let message = format!("demo: FAILED: port {} is already in use", ports[3]);
    expect_failure(&run, &message, &[ports[0], ports[1], ports[2], ports[4]]);
}

#[test]
fn demo_fails_naming_the_step_and_stops_what_it_started() {
    // An "nginx" that exits at once: the script must fail at the nginx step
    // and stop the two backends it had already started.
    let (_serial, ports) = serial_ports();
    let run = run_demo(Path::new("/bin/false"), ports);
    let message = format!(
        "demo: FAILED: nginx exited before listening on 127.0.0.1:{}",
        ports[2]
    );
    expect_failure(&run, &message, &ports);
    assert!(
        run.stdout.contains("==> backend on"),
        "stdout: {}",
        run.stdout
    );
}
