//! The dashboard at `/` of the admin listener, and the admin listener's
//! hardening: the `Host` guard against DNS rebinding, the page's
//! Content-Security-Policy, no CORS headers.
//!
//! The browser tests drive Debian's `chromium` with `playwright-core`
//! (tests/browser/dashboard.js). They skip, visibly, when node, chromium or
//! `tests/browser/node_modules` are missing, or fail where the browser is
//! required (`CI=true`, `SHUNT_REQUIRE=browser`; see [`support::require`]).
//! Screenshots go to `target/dashboard-test/`.

use crate::support;
use crate::support::Part;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use http_body_util::combinators::BoxBody;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use support::ws::{self, Ws};
use support::{HttpConn, echo_backend, http_get, nginx, shunt};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// How long one browser run may take, start to exit.
const BROWSER_LIMIT: Duration = Duration::from_secs(90);

// ---- the Host guard, CSP and CORS (no browser needed) ----------------------

/// `METHOD PATH` with `headers` and an empty body on the admin listener.
async fn admin_send(
    admin: SocketAddr,
    method: hyper::Method,
    path: &str,
    headers: &[(&str, &str)],
) -> support::HttpResponse {
    HttpConn::connect(admin)
        .await
        .expect("connect to the admin listener")
        .send(method.clone(), path, headers, Full::new(Bytes::new()))
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

async fn admin_get_with_host(admin: SocketAddr, path: &str, host: &str) -> support::HttpResponse {
    HttpConn::connect(admin)
        .await
        .expect("connect to the admin listener")
        .get(path, &[("host", host)])
        .await
        .unwrap_or_else(|e| panic!("GET {path} with Host {host}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_refuses_a_rebinding_host_and_serves_ip_and_localhost() {
    let proxy = shunt().start().await;
    let admin = proxy.admin_addr();
    for path in [
        "/",
        "/status",
        "/readyz",
        "/metrics",
        "/healthz",
        "/dashboard.js",
    ] {
        for host in [
            "attacker.example",
            "attacker.example:9901",
            "localhost.attacker.example",
        ] {
            let resp = admin_get_with_host(admin, path, host).await;
            assert_eq!(
                resp.status,
                StatusCode::FORBIDDEN,
                "GET {path} with Host {host}"
            );
            assert!(resp.text().contains("admin_hosts"), "{}", resp.text());
        }
    }
    // A POST /reload from a rebinding page is refused too.
    let resp = admin_send(
        admin,
        hyper::Method::POST,
        "/reload",
        &[("host", "attacker.example")],
    )
    .await;
    assert_eq!(resp.status, StatusCode::FORBIDDEN);

    let port = admin.port();
    for host in [
        format!("127.0.0.1:{port}"),
        "127.0.0.1".to_owned(),
        "localhost".to_owned(),
        format!("localhost:{port}"),
        format!("[::1]:{port}"),
    ] {
        let resp = admin_get_with_host(admin, "/healthz", &host).await;
        assert_eq!(resp.status, StatusCode::OK, "GET /healthz with Host {host}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cross_site_post_reload_is_refused_and_a_script_s_is_served() {
    let proxy = shunt().start().await;
    let admin = proxy.admin_addr();
    let host = admin.to_string();
    let post = |headers: Vec<(&'static str, String)>| async move {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        admin_send(admin, hyper::Method::POST, "/reload", &headers).await
    };
    let generation = || async {
        let status = http_get(admin, "/status", &[]).await.unwrap().json();
        status["generation"].as_u64().expect("generation")
    };
    // What a page on any site sends when it submits a form to 127.0.0.1:9901:
    // the Host is an IP literal, so only the Origin gives it away.
    let attacks = [
        vec![
            ("host", host.clone()),
            ("origin", "https://attacker.example".to_owned()),
        ],
        vec![("host", host.clone()), ("origin", "null".to_owned())],
        vec![
            ("host", host.clone()),
            ("sec-fetch-site", "cross-site".to_owned()),
        ],
    ];
    for headers in attacks {
        let resp = post(headers.clone()).await;
        assert_eq!(resp.status, StatusCode::FORBIDDEN, "{headers:?}");
        assert!(resp.text().contains("another site"), "{}", resp.text());
    }
    assert_eq!(generation().await, 1, "no refused POST reloaded");
    // curl and scripts (no Origin), and a same-origin page, still reload.
    let resp = post(vec![("host", host.clone())]).await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    let resp = post(vec![
        ("host", host.clone()),
        ("origin", format!("http://{host}")),
        ("sec-fetch-site", "same-origin".to_owned()),
    ])
    .await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    assert_eq!(generation().await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_hosts_lists_extra_names() {
    let proxy = shunt()
        .flags(&[
            "--admin-host",
            "shunt.internal",
            "--admin-host",
            "dash.internal",
        ])
        .start()
        .await;
    let admin = proxy.admin_addr();
    for host in ["shunt.internal", "dash.internal:9901", "SHUNT.internal"] {
        let resp = admin_get_with_host(admin, "/status", host).await;
        assert_eq!(resp.status, StatusCode::OK, "GET /status with Host {host}");
    }
    let resp = admin_get_with_host(admin, "/status", "other.internal").await;
    assert_eq!(resp.status, StatusCode::FORBIDDEN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_and_assets_send_csp_and_no_cors_headers() {
    let proxy = shunt().start().await;
    let admin = proxy.admin_addr();
    for (path, content_type) in [
        ("/", "text/html"),
        ("/dashboard.js", "text/javascript"),
        ("/dashboard.css", "text/css"),
    ] {
        let resp = http_get(admin, path, &[("origin", "https://attacker.example")])
            .await
            .unwrap();
        assert_eq!(resp.status, StatusCode::OK, "GET {path}");
        assert_eq!(
            resp.header("content-security-policy"),
            "default-src 'self'",
            "GET {path}"
        );
        assert!(
            resp.header("content-type").starts_with(content_type),
            "GET {path}"
        );
        assert_eq!(resp.header("x-content-type-options"), "nosniff");
    }
    let page = http_get(admin, "/", &[]).await.unwrap().text();
    assert!(page.contains("<script src=\"/dashboard.js\""), "{page}");
    // The close-codes caption says what the README says: shunt keeps the hour.
    assert!(
        page.contains("Counted by shunt per minute over the last 60 minutes")
            && !page.contains("Counted by this page"),
        "{page}"
    );
    // The API answers a cross-origin request without any CORS permission.
    for path in ["/", "/status", "/readyz", "/metrics", "/calls"] {
        let resp = http_get(admin, path, &[("origin", "https://attacker.example")])
            .await
            .unwrap();
        for (name, _) in resp.headers.iter() {
            assert!(
                !name.as_str().starts_with("access-control-"),
                "GET {path} sent {name}"
            );
        }
    }
    let resp = admin_send(
        admin,
        hyper::Method::OPTIONS,
        "/status",
        &[
            ("origin", "https://attacker.example"),
            ("access-control-request-method", "POST"),
        ],
    )
    .await;
    assert!(resp.header("access-control-allow-origin").is_empty());
    assert_ne!(resp.status, StatusCode::OK, "a preflight must not succeed");
}

// ---- the browser --------------------------------------------------------------

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// `target/dashboard-test/NAME`, emptied.
fn out_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("target dir")
        .join("dashboard-test")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the screenshot dir");
    dir
}

fn chromium() -> PathBuf {
    std::env::var_os("CHROMIUM").map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from)
}

/// Whether the browser tests can run; a visible skip when they cannot, or
/// a failure where the browser is required (see [`support::require`]).
fn browser_available() -> bool {
    let missing = if !chromium().is_file() {
        Some(format!(
            "{} not found (apt-get install chromium)",
            chromium().display()
        ))
    } else if std::process::Command::new("node")
        .arg("--version")
        .output()
        .map_or(true, |o| !o.status.success())
    {
        Some("node not found (apt-get install nodejs)".to_owned())
    } else if !browser_dir().join("node_modules/playwright-core").is_dir() {
        Some("tests/browser/node_modules missing (run npm ci in tests/browser)".to_owned())
    } else {
        None
    };
    support::require(Part::Browser, missing.map_or(Ok(()), Err)).is_some()
}

/// Runs tests/browser/dashboard.js with `plan`; at each `{"host": NAME}` step
/// calls `on_step(NAME)` and then lets the script go on. Returns the script's
/// output; panics with it when the script fails.
async fn run_browser(plan: Value, mut on_step: impl AsyncFnMut(&str)) -> String {
    let mut child = tokio::process::Command::new("node")
        .arg("dashboard.js")
        .arg(plan.to_string())
        .env("CHROMIUM", chromium())
        .current_dir(browser_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start node");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut stderr = child.stderr.take().expect("stderr");
    let mut output = String::new();
    let drive = async {
        while let Some(line) = lines.next_line().await.expect("read the script's output") {
            output.push_str(&line);
            output.push('\n');
            if let Some(step) = line.strip_prefix("STEP ") {
                on_step(step).await;
                stdin.write_all(b"ok\n").await.expect("answer the script");
                stdin.flush().await.expect("answer the script");
            }
        }
        let mut err = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut err)
            .await
            .expect("read the script's errors");
        (child.wait().await.expect("wait for node"), err)
    };
    let (status, err) = tokio::time::timeout(BROWSER_LIMIT, drive)
        .await
        .unwrap_or_else(|_| panic!("the browser script ran over {BROWSER_LIMIT:?}"));
    assert!(
        status.success(),
        "the browser script failed ({status}):\n{err}\n--- output ---\n{output}"
    );
    println!("{output}");
    output
}

/// A TCP forwarder in front of the direct backend. `cut()` closes its
/// listener, so new connections are refused (health checks fail, new calls
/// fall back) while the calls already through it go on.
struct Cuttable {
    addr: SocketAddr,
    cut: tokio_util::sync::CancellationToken,
}

impl Cuttable {
    async fn spawn(target: SocketAddr) -> Cuttable {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the forwarder");
        let addr = listener.local_addr().expect("forwarder addr");
        let cut = tokio_util::sync::CancellationToken::new();
        let stop = cut.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    () = stop.cancelled() => return,
                    a = listener.accept() => a,
                };
                let Ok((mut downstream, _)) = accepted else {
                    continue;
                };
                tokio::spawn(async move {
                    if let Ok(mut upstream) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut downstream, &mut upstream).await;
                    }
                });
            }
        });
        Cuttable { addr, cut }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn cut(&self) {
        self.cut.cancel();
    }
}

/// Sends a 160-byte binary frame every 20 ms (50 frames/s, audio-like) and
/// reads the echoes, for `streaming`; then keeps the call open, silent,
/// until `stop` (so a tracked direction stalls). Bounded by `limit`.
fn stream_frames(
    mut ws: Ws,
    streaming: Duration,
    stop: tokio_util::sync::CancellationToken,
    limit: Duration,
) -> tokio::task::JoinHandle<Ws> {
    tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + limit;
        let until = tokio::time::Instant::now() + streaming.min(limit);
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        while tokio::time::Instant::now() < until && !stop.is_cancelled() {
            tick.tick().await;
            if ws::send_binary(&mut ws, &[7; 160]).await.is_err() {
                return ws;
            }
            if ws::recv_within(&mut ws, Duration::from_secs(2))
                .await
                .is_err()
            {
                return ws;
            }
        }
        let _ = tokio::time::timeout_at(deadline, stop.cancelled()).await;
        ws
    })
}

/// The most hostile path a real request can carry: `<` and `>` are refused
/// by the HTTP parser (the stub test below covers them), but `"`, `{` and `}`
/// pass, enough to break out of an attribute built by string concatenation.
const HOSTILE_PATH: &str = "/lobby/\"onmouseover=\"window.__shunt_xss=1\"{x}";

/// The README's call center for the browser tests: shunt with `direct` at
/// `direct_url` and an echo backend `via-nginx` behind a real nginx, the
/// routes `/frontend-audio=direct,nginx` and `/=nginx,direct`, `--fall 1`,
/// `--ping-timeout 30s`, and `--stall-after`/`--ping-interval` as given;
/// ready. `None` when nginx is missing and not required.
async fn call_center(
    direct_url: &str,
    stall_after: &str,
    ping_interval: &str,
) -> Option<(support::EchoBackend, support::Nginx, support::Shunt)> {
    let via_nginx = echo_backend().name("via-nginx").spawn().await;
    let nginx = nginx(via_nginx.addr()).spawn().await?;
    let proxy = shunt()
        .direct(direct_url)
        .nginx(nginx.url())
        .route("/frontend-audio=direct,nginx")
        .route("/=nginx,direct")
        .arg("--fall", "1")
        .arg("--stall-after", stall_after)
        .arg("--ping-interval", ping_interval)
        .arg("--ping-timeout", "30s")
        .start_ready()
        .await;
    Some((via_nginx, nginx, proxy))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_shows_live_calls_and_follows_a_backend_kill() {
    if !browser_available() {
        return;
    }
    let mut direct = echo_backend().name("direct").spawn().await;
    let Some((_via_nginx, _nginx, proxy)) = call_center(&direct.url(), "500ms", "5s").await else {
        return;
    };
    let (_direct_call, route) = ws::open_call(proxy.addr(), "/frontend-audio/agent-7").await;
    assert_eq!(route, "direct");
    let (nginx_call, route) = ws::open_call(proxy.addr(), "/lobby/agent-9").await;
    assert_eq!(route, "nginx");
    // 50 frames/s for 1.5 s, then silence: a stall.
    let stop = tokio_util::sync::CancellationToken::new();
    let stalling = stream_frames(
        nginx_call,
        Duration::from_millis(1500),
        stop.clone(),
        BROWSER_LIMIT,
    );
    let (_hostile, route) = ws::open_call(proxy.addr(), HOSTILE_PATH).await;
    assert_eq!(route, "nginx");

    let out = out_dir("live");
    let plan = json!({
        "url": format!("http://{}/", proxy.admin_addr()),
        "out_dir": out,
        "steps": [
            {"check": "page"},
            {"check": "calls", "calls": [
                {"path": "/frontend-audio/agent-7", "upstream": "direct"},
                {"path": "/lobby/agent-9", "upstream": "via nginx"},
                {"path": HOSTILE_PATH, "upstream": "via nginx"},
            ]},
            {"check": "text", "path": HOSTILE_PATH},
            {"check": "stalled", "path": "/lobby/agent-9"},
            {"check": "route", "name": "route before", "route": "/frontend-audio",
             "using": "direct", "upstream": "direct", "health": "up"},
            {"screenshot": "before-kill.png"},
            {"host": "kill-direct"},
            {"check": "route", "name": "route after kill", "route": "/frontend-audio",
             "using": "via nginx", "upstream": "direct", "health": "down", "within_ms": 5000},
            {"check": "readiness", "name": "degraded after kill", "badge": "degraded",
             "contains": ["/frontend-audio (direct)", "upstream down"], "within_ms": 5000},
            {"screenshot": "after-kill.png"},
        ],
    });
    let output = run_browser(plan, async |step| {
        assert_eq!(step, "kill-direct");
        direct.stop().await;
    })
    .await;
    stop.cancel();
    let _ = stalling.await;
    assert!(output.contains("PASS route after kill"), "{output}");
    assert!(output.contains("PASS degraded after kill"), "{output}");
    assert!(output.contains("PASS stalled"), "{output}");
    assert!(out.join("after-kill.png").is_file());
}

/// Writes docs/dashboard.png: a few calls, one stalled, the direct path cut
/// for new calls so /frontend-audio falls back to nginx. Run by hand:
/// `cargo test --test it dashboard::docs_screenshot -- --ignored`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "writes docs/dashboard.png; run by hand with --ignored"]
async fn docs_screenshot() {
    if !browser_available() {
        return;
    }
    let backend = echo_backend().name("direct").spawn().await;
    let forwarder = Cuttable::spawn(backend.addr()).await;
    let Some((_via_nginx, _nginx, proxy)) = call_center(&forwarder.url(), "2s", "1s").await else {
        return;
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let limit = Duration::from_secs(120);
    let mut tasks = Vec::new();
    // Calls that end while the page is open, for the close codes of the last hour.
    let mut ending = Vec::new();
    for i in 0..3 {
        ending.push(
            ws::open_call(proxy.addr(), &format!("/frontend-audio/agent-{}", 20 + i))
                .await
                .0,
        );
    }
    for path in ["/frontend-audio/agent-7", "/frontend-audio/agent-12"] {
        let (ws, route) = ws::open_call(proxy.addr(), path).await;
        assert_eq!(route, "direct");
        tasks.push(stream_frames(ws, limit, stop.clone(), limit));
    }
    // The direct path breaks for new connections: fallback to nginx.
    forwarder.cut();
    proxy.wait_upstream("direct", "down").await;
    let (ws, route) = ws::open_call(proxy.addr(), "/frontend-audio/agent-9").await;
    assert_eq!(route, "nginx");
    tasks.push(stream_frames(ws, limit, stop.clone(), limit));
    let (ws, route) = ws::open_call(proxy.addr(), "/frontend-audio/agent-4").await;
    assert_eq!(route, "nginx");
    tasks.push(stream_frames(
        ws,
        Duration::from_secs(12),
        stop.clone(),
        limit,
    ));
    let (lobby, _) = ws::open_call(proxy.addr(), "/lobby/supervisor").await;

    let out = out_dir("docs");
    let plan = json!({
        "url": format!("http://{}/", proxy.admin_addr()),
        "out_dir": out,
        "steps": [
            {"check": "page"},
            {"host": "end-calls"},
            {"check": "stalled", "path": "/frontend-audio/agent-4", "within_ms": 30000},
            {"refreshes": 2},
            {"screenshot": "dashboard.png", "width": 1280},
        ],
    });
    run_browser(plan, async |_| {
        // Two hang up, one browser tab goes away.
        for (ws, code) in ending.iter_mut().zip([1000, 1000, 1001]) {
            ws::send_frame(ws, fastwebsockets::Frame::close(code, b""))
                .await
                .expect("close");
            let _ = ws::wait_closed(ws, Duration::from_secs(5)).await;
        }
    })
    .await;
    stop.cancel();
    for t in tasks {
        let _ = t.await;
    }
    drop(lobby);
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
    std::fs::create_dir_all(&docs).expect("docs/");
    std::fs::copy(out.join("dashboard.png"), docs.join("dashboard.png")).expect("copy");
}

// ---- a stub /calls, for rendering checks with values no real request carries ----

/// A script and an element in a path: what a hostile client could put there
/// if a path reached the page unescaped.
const XSS_PATH: &str = "/frontend-audio/<script>window.__shunt_xss=1</script><img src=x onerror=\"window.__shunt_xss=2\">";

/// `/calls` as the call layer answers it, with three calls: direct, via
/// nginx and stalled, and one whose path carries markup. `tick` moves the
/// rates so the sparklines have a shape.
fn stub_calls(tick: u64) -> Value {
    let wave = (tick % 10) as f64;
    let dir = |fps: f64, stalled: bool, stalls: u64| {
        json!({
            "frames": 1200 + tick * 100, "messages": 1200 + tick * 100, "bytes": 768_000 + tick * 64_000,
            "frames_per_second": if stalled { 0.0 } else { fps },
            "last_frame_age_seconds": if stalled { 3.4 } else { 0.02 },
            "largest_gap_seconds": if stalled { 3.4 } else { 0.06 },
            "stalls": stalls, "stalled": stalled, "framing": "tracked",
        })
    };
    let leg = |rtt: f64| json!({"rtt_last_ms": rtt, "rtt_median_ms": rtt, "pings_sent": 4, "pongs_received": 4});
    let call = |id: u64, client: &str, path: &str, upstream: &str, age: f64, stalled: bool| {
        json!({
            "id": id, "client": client, "host": "calls.example.com", "path": path,
            "route": "/frontend-audio", "upstream": upstream, "generation": 1,
            "started": "2026-12-02T01:00:00Z", "age_seconds": age, "frames": true,
            "directions": {
                "to_backend": dir(50.0, false, 0),
                "to_client": dir(48.0 + wave, stalled, u64::from(stalled)),
            },
            "legs": {"client": leg(18.0 + wave), "backend": leg(0.4)},
        })
    };
    let calls = vec![
        call(
            1,
            "203.0.113.7:51544",
            "/frontend-audio/agent-7",
            "direct",
            312.0,
            false,
        ),
        call(
            2,
            "198.51.100.23:40112",
            "/frontend-audio/agent-9",
            "nginx",
            95.0,
            true,
        ),
        call(3, "192.0.2.99:33001", XSS_PATH, "direct", 12.0, false),
    ];
    json!({"total": calls.len(), "limit": 1000, "sort": "age", "calls": calls})
}

/// Serves the dashboard's files and a stub `/calls`; forwards every other GET
/// to the real admin listener at `admin`.
async fn stub_front(admin: SocketAddr) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the stub");
    let addr = listener.local_addr().expect("stub addr");
    let ticks = Arc::new(AtomicU64::new(0));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let ticks = ticks.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let ticks = ticks.clone();
                    async move { Ok::<_, Infallible>(stub_answer(req, admin, &ticks).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

async fn stub_answer(
    req: Request<hyper::body::Incoming>,
    admin: SocketAddr,
    ticks: &AtomicU64,
) -> Response<BoxBody<Bytes, hyper::Error>> {
    let path = req.uri().path();
    if let Some(asset) = ::shunt::testing::dashboard_asset(path) {
        return asset;
    }
    let (status, content_type, body) = if path == "/calls" {
        let tick = ticks.fetch_add(1, Ordering::Relaxed);
        (
            StatusCode::OK,
            "application/json".to_owned(),
            stub_calls(tick).to_string().into(),
        )
    } else {
        let target = req.uri().path_and_query().map_or(path, |p| p.as_str());
        match http_get(admin, target, &[]).await {
            Ok(r) => (r.status, r.header("content-type").to_owned(), r.body),
            Err(e) => (
                StatusCode::BAD_GATEWAY,
                "text/plain".to_owned(),
                e.to_string().into(),
            ),
        }
    };
    let mut resp = Response::new(::shunt::testing::full(body));
    *resp.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    resp
}

/// A self-signed certificate for `localhost` that expires in `days` days;
/// returns the directory holding `cert.pem` and `key.pem`.
fn expiring_certificate(days: u64) -> PathBuf {
    let today = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let ymd: Vec<u32> = today[..10]
        .split('-')
        .map(|p| p.parse().expect("date"))
        .collect();
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
    params.is_ca = rcgen::IsCa::ExplicitNoCa;
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    // `days` and a half from now: the page's whole days left is `days`.
    let since_midnight = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        % 86_400;
    params.not_after = rcgen::date_time_ymd(ymd[0] as i32, ymd[1] as u8, ymd[2] as u8)
        + Duration::from_secs(since_midnight + days * 86_400 + 12 * 3600);
    let cert = params.self_signed(&key).expect("self-signed");
    let dir = out_dir("cert");
    std::fs::write(dir.join("cert.pem"), cert.pem()).expect("write cert");
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).expect("write key");
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_renders_call_values_as_text_highlights_stalls_and_sorts() {
    if !browser_available() {
        return;
    }
    let backend = echo_backend().name("direct").spawn().await;
    let certs = expiring_certificate(9);
    let proxy = shunt()
        .direct(backend.url())
        .tls(&certs.join("cert.pem"), &certs.join("key.pem"))
        .start_ready()
        .await;
    let front = stub_front(proxy.admin_addr()).await;
    let out = out_dir("stub");
    let plan = json!({
        "url": format!("http://{front}/"),
        "out_dir": out,
        "steps": [
            {"check": "page"},
            {"check": "calls", "calls": [
                {"path": "/frontend-audio/agent-7", "upstream": "direct"},
                {"path": "/frontend-audio/agent-9", "upstream": "via nginx"},
            ]},
            {"check": "text", "path": XSS_PATH},
            {"check": "stalled", "path": "/frontend-audio/agent-9"},
            {"check": "certificate", "cert": "localhost", "days": 9, "red": true},
            {"check": "sort", "key": "age", "first_path": "/frontend-audio/agent-7"},
            {"check": "sort", "name": "sort by stalls", "key": "stalls", "first_path": "/frontend-audio/agent-9"},
            {"screenshot": "calls.png"},
            {"check": "narrow", "width": 400, "screenshot": "narrow.png"},
        ],
    });
    let output = run_browser(plan, async |step| panic!("unexpected step {step}")).await;
    assert!(output.contains("PASS stalled"), "{output}");
    assert!(out.join("calls.png").is_file());
}
