//! What a new user hit on a fresh clone (issue 9, items 1–8): each test
//! reproduces one finding with the real binary (or the in-process shunt,
//! where only behaviour through sockets matters) and checks what the user
//! sees: exit codes, the exact text on stderr, `/status` and `/readyz`.

use crate::support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper::StatusCode;
use support::bin::{Run, run_shunt_in};
use support::shunt::ShuntChild;
use support::tls::{TestPki, atomic_write};
use support::{
    EchoBackend, Nginx, Shunt, echo_backend, eventually, free_port, http_get, nginx, shunt, ws,
    ws_connect,
};

/// Runs `shunt ARGS` in `dir`, bounded by 10 s.
async fn run_in(dir: &Path, args: &[&str]) -> Run {
    run_shunt_in(dir, args, Duration::from_secs(10)).await
}

/// A scratch directory for one test (config files, certificates, symlinks),
/// removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("shunt-fresh-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `/status` of an admin listener, parsed.
async fn status(admin: SocketAddr) -> Option<serde_json::Value> {
    let response = http_get(admin, "/status", &[]).await.ok()?;
    serde_json::from_str(&response.text()).ok()
}

/// Waits until `/status` shows generation `generation` with a successful
/// `last_reload`; panics with the last `/status` seen otherwise.
async fn wait_generation(admin: SocketAddr, generation: u64, what: &str) {
    let mut last = serde_json::Value::Null;
    let reached = eventually(Duration::from_secs(10), async || {
        let Some(s) = status(admin).await else {
            return false;
        };
        let done = s["generation"] == generation && s["last_reload"]["ok"] == true;
        last = s;
        done
    })
    .await;
    assert!(
        reached,
        "{what}: generation {generation} with a reload not reached; last /status: {last}"
    );
}

/// `shunt --config CONFIG` run in `dir` (listening on port 0, its admin API
/// on a free port), once it listens: the server, its admin address and the
/// generation `/status` shows first.
async fn serve_config(dir: &Path, config: &str) -> (ShuntChild, SocketAddr, serde_json::Value) {
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let admin_arg = admin.to_string();
    let server = support::shunt()
        .bare()
        .dir(dir)
        .arg("--config", config)
        .arg("--listen", "127.0.0.1:0")
        .arg("--admin", admin_arg)
        .spawn_process();
    server.wait_for_log("shunt listening").await;
    let generation = status(admin).await.expect("/status")["generation"].clone();
    (server, admin, generation)
}

// --- 1. reload with relative paths -------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_reload_with_a_relative_config_a_relative_certificate_and_a_symlinked_dir() {
    let scratch = Scratch::new("relative");
    let pki = TestPki::new();
    let real = scratch.path().join("w");
    std::fs::create_dir_all(&real).unwrap();
    std::os::unix::fs::symlink(&real, scratch.path().join("link")).unwrap();
    let (cert, key) = pki.issue(&["localhost"]);
    std::fs::write(real.join("server.crt"), &cert).unwrap();
    std::fs::write(real.join("server.key"), &key).unwrap();
    let config = |header: &str| {
        format!(
            "header_timeout = \"{header}\"\n[tls]\ncert = \"server.crt\"\nkey = \"server.key\"\n"
        )
    };
    std::fs::write(real.join("a.toml"), config("10s")).unwrap();
    // Relative to the child's working directory, through the symlinked directory.
    let (server, admin, generation) = serve_config(scratch.path(), "link/a.toml").await;
    assert_eq!(generation, 1, "{}", server.log());

    atomic_write(&real.join("a.toml"), &config("11s"));
    wait_generation(admin, 2, "editing link/a.toml").await;

    // `shunt cert --force` style: the certificate is rewritten in place.
    let (cert, key) = pki.issue(&["localhost", "127.0.0.1"]);
    std::fs::write(real.join("server.key"), key).unwrap();
    std::fs::write(real.join("server.crt"), cert).unwrap();
    wait_generation(admin, 3, "rewriting the relative certificate").await;
    assert_eq!(server.terminate().await, Some(0));
}

/// The issue's literal case: `shunt --config jwt.toml`, the file in the
/// process's current directory (watched directory `.`), then an edit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_reload_with_a_bare_config_name_in_the_current_dir() {
    let scratch = Scratch::new("bare");
    let config = |header: &str| format!("header_timeout = \"{header}\"\n");
    scratch.write("jwt.toml", &config("10s"));
    let (server, admin, generation) = serve_config(scratch.path(), "jwt.toml").await;
    assert_eq!(generation, 1, "{}", server.log());
    atomic_write(&scratch.path().join("jwt.toml"), &config("11s"));
    wait_generation(admin, 2, "replacing jwt.toml in the current dir").await;
    // An editor that writes in place, too.
    scratch.write("jwt.toml", &config("12s"));
    wait_generation(admin, 3, "editing jwt.toml in place").await;
    assert_eq!(server.terminate().await, Some(0));
}

// --- 2. an nginx that does not forward upgrades ------------------------------

/// Echo backends `direct` and `via-nginx`, an nginx in front of the latter
/// (with the Upgrade headers only if `upgrades`), and shunt in front of both
/// with `routes`, ready. `None` when nginx is missing and not required.
async fn behind_nginx(
    upgrades: bool,
    routes: &[&str],
) -> Option<(EchoBackend, EchoBackend, Nginx, Shunt)> {
    let direct = echo_backend().name("direct").spawn().await;
    let behind = echo_backend().name("via-nginx").spawn().await;
    let mut proxy = nginx(behind.addr());
    if !upgrades {
        proxy = proxy.without_upgrade_headers();
    }
    let nginx = proxy.spawn().await?;
    let mut builder = shunt().direct(direct.url()).nginx(nginx.url());
    for route in routes {
        builder = builder.route(*route);
    }
    Some((direct, behind, nginx, builder.start_ready().await))
}

const NOT_FORWARDED: &str = "nginx answered 200 to a WebSocket upgrade on /frontend-audio: it does not forward upgrades (proxy_http_version 1.1, Upgrade/Connection headers)";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_nginx_without_upgrade_headers_is_routed_around_for_websocket_only() {
    support::capture_logs();
    // A path of its own: the log is shared with every test of this process,
    // and the warning names the path.
    const PATH: &str = "/routed-around-audio";
    let not_forwarded = NOT_FORWARDED.replace("/frontend-audio", PATH);
    let route = format!("{PATH}=nginx,direct");
    let routes = [route.as_str(), "/=nginx,direct"];
    let Some((_direct, _behind, _nginx, shunt)) = behind_nginx(false, &routes).await else {
        return;
    };

    for call in 0..2 {
        let (mut socket, response) = ws_connect(shunt.addr(), PATH, &[])
            .await
            .unwrap_or_else(|e| panic!("call {call}: no 101 through the fallback: {e}"));
        assert_eq!(ws::header(&response, "x-shunt-route"), "direct");
        assert_eq!(ws::header(&response, "x-backend"), "direct");
        let hello = ws::recv_text(&mut socket).await.unwrap();
        assert!(hello.contains("direct"), "{hello}");
    }

    // Plain HTTP still goes to nginx, which serves it fine.
    let page = http_get(shunt.addr(), "/", &[]).await.unwrap();
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(page.header("x-shunt-route"), "nginx");

    let (code, body) = shunt.admin_get("/readyz").await.unwrap();
    assert_eq!(code, StatusCode::OK, "{body}");
    let ready: serde_json::Value = serde_json::from_str(&body).unwrap();
    let degraded = ready["degraded"].as_array().expect("a degraded list");
    assert!(
        degraded.iter().any(|d| d["route"] == PATH
            && d["upstream"] == "nginx"
            && d["reason"] == not_forwarded),
        "{body}"
    );

    let up = shunt.upstream("nginx").await.unwrap();
    assert_eq!(up["health"], "up", "{up}");
    assert_eq!(up["websocket"], "broken", "{up}");
    assert_eq!(up["last_error"], not_forwarded, "{up}");
    let logs = support::logs();
    let warnings = logs
        .lines()
        .filter(|l| l.contains("WARN") && l.contains(&not_forwarded))
        .count();
    assert_eq!(warnings, 1, "one warning per state change:\n{logs}");
    shunt.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_not_forwarded_by_the_only_upstream_is_a_502_naming_the_cause() {
    let behind = echo_backend().name("via-nginx").spawn().await;
    let Some(nginx) = nginx(behind.addr()).without_upgrade_headers().spawn().await else {
        return;
    };
    let shunt = shunt()
        .nginx(nginx.url())
        .route("/calls=nginx")
        .start_ready()
        .await;
    let answer = support::raw_request(
        shunt.addr(),
        b"GET /calls HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(answer.status, 502);
    let body = String::from_utf8_lossy(&answer.body_start);
    // (Its own path, so that the other test's count of warnings stays its own.)
    assert!(
        body.contains(&NOT_FORWARDED.replace("/frontend-audio", "/calls")),
        "{body}"
    );
    // No upstream of the route carries WebSocket any more: not ready, and why.
    let (code, body) = shunt.admin_get("/readyz").await.unwrap();
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        body.contains("no upstream forwards WebSocket upgrades"),
        "{body}"
    );
    shunt.stop().await;
}

/// The README's routes (`/frontend-audio=direct,nginx` and `/=nginx`), with
/// `/audio` for the first so that the first test's count of warnings stays
/// its own. direct fails once, the upgrade falls back to the broken nginx,
/// then direct comes back: the WebSocket mark on nginx counts only for the
/// route whose upgrades saw it, so `/readyz` is 200 again, with `/audio`
/// degraded and `/` (plain HTTP through nginx) not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_mark_does_not_make_a_plain_http_route_unready() {
    let routes = ["/audio=direct,nginx", "/=nginx"];
    let Some((mut direct, _behind, _nginx, shunt)) = behind_nginx(false, &routes).await else {
        return;
    };

    direct.stop().await;
    shunt.wait_upstream("direct", "down").await;
    let answer = support::raw_request(shunt.addr(), &support::raw::ws_handshake("/audio", &[]))
        .await
        .unwrap();
    assert_eq!(answer.status, 502);
    let up = shunt.upstream("nginx").await.unwrap();
    assert_eq!(up["websocket"], "broken", "{up}");

    direct.restart().await;
    shunt.wait_upstream("direct", "up").await;
    let mut last = String::new();
    let ready = eventually(Duration::from_secs(10), async || {
        match shunt.admin_get("/readyz").await {
            Ok((StatusCode::OK, body)) => {
                last = body;
                true
            }
            Ok((code, body)) => support::not_yet(&mut last, format!("{code}: {body}")),
            Err(e) => support::not_yet(&mut last, e),
        }
    })
    .await;
    assert!(ready, "/readyz stays unready once direct is back: {last}");
    let ready: serde_json::Value = serde_json::from_str(&last).unwrap();
    assert_eq!(
        ready["degraded"],
        serde_json::json!([{
            "route": "/audio",
            "upstream": "nginx",
            "reason": NOT_FORWARDED.replace("/frontend-audio", "/audio"),
        }]),
        "{last}"
    );
    // Both routes work: upgrades through direct, plain HTTP through nginx.
    let (socket, response) = ws_connect(shunt.addr(), "/audio", &[]).await.unwrap();
    assert_eq!(ws::header(&response, "x-shunt-route"), "direct");
    drop(socket);
    let page = http_get(shunt.addr(), "/", &[]).await.unwrap();
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(page.header("x-shunt-route"), "nginx");
    shunt.stop().await;
}

/// What an nginx whose own backend is down answers to an upgrade, and why.
const BACKEND_DOWN: &str = "nginx answered 502 to a WebSocket upgrade on /live: it failed to serve it (a 5xx: the backend behind it is likely down or failing)";

/// An nginx with the upgrade headers whose backend is down answers 502:
/// that is named as its own cause (not "does not forward upgrades"), the
/// handshake goes on to direct, and the mark does not outlive the fault.
/// Once the backend is back, the re-test after the backoff (one health
/// interval, 100 ms in the harness) clears it and the `degraded` entry,
/// with no call through nginx needed, and upgrades go to nginx first again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5xx_to_an_upgrade_names_the_backend_and_the_mark_clears_once_it_is_back() {
    support::capture_logs();
    let routes = ["/live=nginx,direct"];
    let Some((_direct, mut behind, _nginx, shunt)) = behind_nginx(true, &routes).await else {
        return;
    };
    behind.stop().await;

    let (socket, response) = ws_connect(shunt.addr(), "/live", &[])
        .await
        .expect("the handshake retried on direct");
    assert_eq!(ws::header(&response, "x-shunt-route"), "direct");
    drop(socket);
    let (code, body) = shunt.admin_get("/readyz").await.unwrap();
    assert_eq!(code, StatusCode::OK, "{body}");
    let ready: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        ready["degraded"],
        serde_json::json!([{"route": "/live", "upstream": "nginx", "reason": BACKEND_DOWN}]),
        "{body}"
    );
    let up = shunt.upstream("nginx").await.unwrap();
    assert_eq!(up["health"], "up", "{up}");
    assert_eq!(up["websocket"], "broken", "{up}");

    behind.restart().await;
    let mut last = String::new();
    let cleared = eventually(Duration::from_secs(10), async || {
        match shunt.admin_get("/readyz").await {
            Ok((StatusCode::OK, body))
                if serde_json::from_str::<serde_json::Value>(&body).ok()
                    == Some(serde_json::json!({"ready": true})) =>
            {
                true
            }
            Ok((code, body)) => support::not_yet(&mut last, format!("{code}: {body}")),
            Err(e) => support::not_yet(&mut last, e),
        }
    })
    .await;
    assert!(cleared, "the mark outlived the fault: {last}");
    let up = shunt.upstream("nginx").await.unwrap();
    assert_eq!(up["websocket"], "ok", "{up}");
    let logs = support::logs();
    assert!(
        logs.lines()
            .any(|l| l.contains("WARN") && l.contains(BACKEND_DOWN)),
        "{logs}"
    );
    assert!(
        logs.contains("upstream nginx forwards WebSocket upgrades again"),
        "{logs}"
    );
    let (socket, response) = ws_connect(shunt.addr(), "/live", &[]).await.unwrap();
    assert_eq!(ws::header(&response, "x-shunt-route"), "nginx");
    drop(socket);
    shunt.stop().await;
}

/// An upstream that refuses every request with `answer`, on purpose, then closes.
async fn refuser(answer: &'static [u8]) -> String {
    let refuser = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let refuser_url = format!("http://{}", refuser.local_addr().unwrap());
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        while let Ok((mut stream, _)) = refuser.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                let _ = stream.write_all(answer).await;
            });
        }
    });
    refuser_url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_4xx_answer_to_an_upgrade_is_relayed_not_retried() {
    // The refusal's body in each HTTP/1.1 framing: length, chunked, close-delimited.
    let refusals: [&[u8]; 3] = [
        b"HTTP/1.1 403 Forbidden\r\nContent-Length: 6\r\nConnection: close\r\n\r\nno way",
        b"HTTP/1.1 403 Forbidden\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nno\r\n4\r\n way\r\n0\r\n\r\n",
        b"HTTP/1.1 403 Forbidden\r\nConnection: close\r\n\r\nno way",
    ];
    for refusal in refusals {
        let direct = echo_backend().name("direct").spawn().await;
        let shunt = shunt()
            .direct(direct.url())
            .nginx(refuser(refusal).await)
            .route("/frontend-audio=nginx,direct")
            .start_ready()
            .await;
        // `close` as well: the answer is read to the end of the connection.
        let request = String::from_utf8(support::raw::ws_handshake("/frontend-audio", &[]))
            .unwrap()
            .replace("Connection: Upgrade", "Connection: Upgrade, close");
        let answer = support::raw::raw(shunt.addr(), request.as_bytes()).await;
        assert_eq!(answer.status, Some(403), "{}", answer.text);
        assert_eq!(answer.body(), "no way", "{}", answer.text);
        assert_eq!(answer.header("x-shunt-route").as_deref(), Some("nginx"));
        assert_eq!(direct.active_websockets(), 0);
        let up = shunt.upstream("nginx").await.unwrap();
        assert_eq!(up["websocket"], "ok", "{up}");
        let (code, body) = shunt.admin_get("/readyz").await.unwrap();
        assert_eq!(code, StatusCode::OK, "{body}");
        let ready: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            ready,
            serde_json::json!({"ready": true}),
            "nothing degraded"
        );
        shunt.stop().await;
    }
}

// --- 3. the admin API during the drain ---------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_answers_while_a_live_call_drains() {
    let backend = echo_backend().name("direct").spawn().await;
    let shunt = shunt().direct(backend.url()).start_ready().await;
    let (_call, _) = ws_connect(shunt.addr(), "/frontend-audio", &[])
        .await
        .unwrap();
    shunt.shutdown();

    // The drain is on (the call is live): the admin API still answers.
    let mut last = String::new();
    let draining = eventually(Duration::from_secs(5), async || {
        match shunt.status().await {
            Ok(s) if s["draining"] == true && s["active_tunnels"] == 1 => true,
            Ok(s) => support::not_yet(&mut last, s),
            Err(e) => support::not_yet(&mut last, e),
        }
    })
    .await;
    assert!(draining, "/status during the drain: {last}");
    let (code, body) = shunt.admin_get("/readyz").await.unwrap();
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let (code, _) = shunt.admin_get("/healthz").await.unwrap();
    assert_eq!(code, StatusCode::OK);
    drop(_call);
    shunt.stop().await;
}

// --- 4. routes written as URLs -----------------------------------------------

#[tokio::test]
async fn a_route_written_as_a_url_is_refused_with_the_right_form() {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    for route in [
        "https://calls.example.com/frontend-audio=direct",
        "//calls.example.com/frontend-audio=direct",
    ] {
        let run = run_in(here, &["check", "--route", route]).await;
        assert_eq!(run.code, Some(2), "{run:?}");
        assert!(
            run.stderr
                .contains("write `calls.example.com/frontend-audio=direct`"),
            "{route}: {}",
            run.stderr
        );
    }
    let scratch = Scratch::new("url-route");
    for (route, right) in [
        (
            "path = \"//calls.example.com/frontend-audio\"",
            r#"write host = "calls.example.com" and path = "/frontend-audio""#,
        ),
        (
            "host = \"https://calls.example.com\"\npath = \"/frontend-audio\"",
            "write `calls.example.com`",
        ),
    ] {
        let file = scratch.write(
            "routes.toml",
            &format!("[[routes]]\n{route}\nvia = [\"direct\"]\n"),
        );
        let run = run_in(
            scratch.path(),
            &["check", "--config", file.to_str().unwrap()],
        )
        .await;
        assert_eq!(run.code, Some(2), "{run:?}");
        assert!(run.stderr.contains(right), "{route}: {}", run.stderr);
    }
}

// --- 5. a closed stdout ------------------------------------------------------

#[test]
fn output_into_a_closed_pipe_is_quiet() {
    let scratch = Scratch::new("pipe");
    let out = scratch.path().join("certs");
    let out = out.to_str().unwrap();
    // `doctor` exits 1 when a check fails (no upstream listens here): either is fine, a panic is not.
    for (args, codes) in [
        (vec!["check"], &[0][..]),
        (vec!["cert", "--out", out], &[0]),
        (vec!["doctor"], &[0, 1]),
        (vec!["doctor", "--json"], &[0, 1]),
    ] {
        let (reader, writer) = std::io::pipe().unwrap();
        // The reader has seen enough before shunt writes anything (`| head -0`).
        drop(reader);
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_shunt"))
            .args(&args)
            .current_dir(scratch.path())
            .stdin(std::process::Stdio::null())
            .stdout(writer)
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        let code = output.status.code();
        assert!(
            code.is_some_and(|c| codes.contains(&c)),
            "{args:?}: exit {code:?}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

// --- 6. each cause once ------------------------------------------------------

/// What a refused run printed after its startup log lines (the open-files
/// limit is logged before the listeners bind): the `shunt: ...` error.
fn refusal(run: &Run) -> String {
    assert_eq!(run.code, Some(2), "{run:?}");
    let is_log_line = |l: &str| {
        l.len() > 20 && l.as_bytes()[..4].iter().all(u8::is_ascii_digit) && l.as_bytes()[4] == b'-'
    };
    let mut text = String::new();
    for line in run.stderr.lines().skip_while(|l| is_log_line(l)) {
        text.push_str(line);
        text.push('\n');
    }
    text
}

#[tokio::test]
async fn error_messages_say_each_cause_once() {
    let scratch = Scratch::new("messages");
    let dir = scratch.path();

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let listen = format!("127.0.0.1:{port}");
    let run = run_in(dir, &["--listen", &listen, "--admin", "off"]).await;
    // The holder is named, from /proc: here this test process.
    let comm = std::fs::read_to_string("/proc/self/comm").unwrap();
    assert_eq!(
        refusal(&run),
        format!(
            "shunt: cannot bind proxy listener on {listen} (held by {} (pid {}); `shunt doctor` checks the listeners): Address already in use (os error 98)\n",
            comm.trim(),
            std::process::id()
        )
    );

    scratch.write("bad.toml", "listen = \"127.0.0.1:0\"\n\n\n\nzzz\n");
    let run = run_in(dir, &["check", "--config", "bad.toml"]).await;
    let text = refusal(&run);
    assert!(
        text.starts_with("shunt: config file bad.toml, line 5, column 4: "),
        "{text}"
    );
    assert_eq!(text.lines().count(), 1, "one line: {text}");
    assert_eq!(text.matches("key with no value").count(), 1, "{text}");

    let run = run_in(
        dir,
        &[
            "check",
            "--tls-cert",
            "missing.crt",
            "--tls-key",
            "missing.key",
        ],
    )
    .await;
    assert_eq!(
        refusal(&run),
        "shunt: missing.crt: I/O error: No such file or directory (os error 2)\n"
    );

    scratch.write("timeout.toml", "header_timeout = \"5x\"\n");
    let run = run_in(dir, &["check", "--config", "timeout.toml"]).await;
    let text = refusal(&run);
    assert!(
        text.starts_with(
            "shunt: invalid `header_timeout` in the config file: `5x`: unknown time unit"
        ),
        "{text}"
    );
    assert_eq!(text.lines().count(), 1, "{text}");
}

// --- 7. logs to a pipe -------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_to_a_pipe_have_no_colour_and_say_admin_off() {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let server = support::shunt()
        .bare()
        .dir(here)
        .arg("--listen", "127.0.0.1:0")
        .arg("--admin", "off")
        .env("RUST_LOG", "info")
        .spawn_process();
    server.wait_for_log("shunt listening").await;
    let text = server.log();
    let line = text
        .lines()
        .find(|l| l.contains("shunt listening"))
        .unwrap()
        .to_owned();
    assert!(line.contains("admin=off"), "{line}");
    assert!(!line.contains("None") && !line.contains("Some("), "{line}");
    assert!(
        !server.log_bytes().contains(&0x1b),
        "ANSI escape in: {text:?}"
    );
    assert_eq!(server.terminate().await, Some(0));

    let admin = SocketAddr::from(([127, 0, 0, 1], free_port())).to_string();
    let server = support::shunt()
        .bare()
        .dir(here)
        .arg("--listen", "127.0.0.1:0")
        .arg("--admin", admin.clone())
        .spawn_process();
    server.wait_for_log("shunt listening").await;
    assert!(
        server.log().contains(&format!("admin={admin}")),
        "{}",
        server.log()
    );
    assert_eq!(server.terminate().await, Some(0));
}

// --- 8. durations: one rule --------------------------------------------------

#[tokio::test]
async fn a_bare_number_is_seconds_in_the_file_and_in_flags() {
    let scratch = Scratch::new("durations");
    let dir = scratch.path();
    scratch.write(
        "int.toml",
        "header_timeout = 5\nidle_timeout = \"7\"\n[health]\ninterval = 2\n",
    );
    let run = run_in(dir, &["check", "--config", "int.toml"]).await;
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(run.stdout.contains("header 5s idle 7s"), "{}", run.stdout);
    assert!(run.stdout.contains("every 2s"), "{}", run.stdout);

    // The call layer's durations too, globally and in a route.
    scratch.write(
        "calls.toml",
        "ping_interval = 30\nping_timeout = 9\nstall_after = 3\n\
         [[routes]]\npath = \"/a\"\nvia = [\"direct\"]\nping_interval = 15\nping_timeout = 5\n\
         [[routes]]\npath = \"/b\"\nvia = [\"direct\"]\nping_interval = 0\n\
         [[routes]]\npath = \"/c\"\nvia = [\"direct\"]\n",
    );
    let run = run_in(dir, &["check", "--config", "calls.toml"]).await;
    assert_eq!(run.code, Some(0), "{run:?}");
    for line in [
        "calls: frames on, ping 15s timeout 5s, stall 3s",
        "calls: frames on, pings off, stall 3s",
        "calls: frames on, ping 30s timeout 9s, stall 3s",
    ] {
        assert!(run.stdout.contains(line), "{line}: {}", run.stdout);
    }

    let run = run_in(
        dir,
        &["check", "--header-timeout", "5", "--idle-timeout", "7s"],
    )
    .await;
    assert!(run.stdout.contains("header 5s idle 7s"), "{run:?}");

    scratch.write("float.toml", "header_timeout = 1.5\n");
    let run = run_in(dir, &["check", "--config", "float.toml"]).await;
    let text = refusal(&run);
    assert!(
        text.contains("expected a duration: whole seconds (5) or a string with a unit"),
        "{text}"
    );
}
