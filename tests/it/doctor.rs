//! `shunt doctor`, run as the real binary against real parts on loopback:
//! each diagnosis of the checklist (nginx without Upgrade headers, a stopped
//! backend, certificates, an Origin refused, a backend on all interfaces, a
//! hung backend) and a healthy setup end to end through shunt.

use crate::support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rcgen::{CertificateParams, KeyPair, date_time_ymd};
use support::bin::{Run, run_shunt, run_shunt_with_env};
use support::raw::read_head;
use support::shunt::ShuntBuilder;
use support::tls::{TestPki, tls_in_front};
use support::{EchoBackend, TempFile, echo_backend, nginx, shunt};
use tokio::net::TcpListener;

/// Bound on one doctor run; each check inside is bounded by `--timeout`.
const RUN_LIMIT: Duration = Duration::from_secs(30);

/// `shunt doctor --timeout 3s ARGS` (the default bound, with room for a
/// loaded CI machine: passing runs do not wait on it).
async fn doctor<S: AsRef<str>>(args: &[S]) -> Run {
    let mut all = vec!["doctor", "--timeout", "3s"];
    all.extend(args.iter().map(AsRef::as_ref));
    run_shunt(&all, RUN_LIMIT).await
}

/// Asserts `text` (a finding with its fix) contains `needle`.
fn has(text: &str, needle: impl AsRef<str>) {
    let needle = needle.as_ref();
    assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
}

/// shunt in front of `backend` (`--direct`), with `/frontend-audio` going to it.
fn frontend_shunt(backend: &EchoBackend) -> ShuntBuilder {
    shunt()
        .direct(backend.url())
        .route("/frontend-audio=direct")
}

/// An echo backend and a [`frontend_shunt`] serving TLS in front of it, ready.
struct TlsFrontend {
    backend: EchoBackend,
    proxy: support::Shunt,
    /// The certificate (for localhost) and key shunt serves.
    cert: PathBuf,
    key: PathBuf,
    /// The CA that issued them (its directory lives as long as this).
    pki: TestPki,
}

/// Starts a [`TlsFrontend`].
async fn tls_frontend() -> TlsFrontend {
    let (pki, (cert, key), backend, proxy) =
        tls_in_front("server", &["localhost"], "backend").await;
    let proxy = proxy.route("/frontend-audio=direct").start_ready().await;
    TlsFrontend {
        backend,
        proxy,
        cert,
        key,
        pki,
    }
}

/// Doctor's flags for a shunt on `listen` with its admin API on `admin`,
/// then `rest`.
fn listening_at(listen: SocketAddr, admin: SocketAddr, rest: &[&str]) -> Vec<String> {
    let (listen, admin) = (listen.to_string(), admin.to_string());
    ["--listen", &listen, "--admin", &admin]
        .into_iter()
        .chain(rest.iter().copied())
        .map(str::to_owned)
        .collect()
}

/// The flags of the running `proxy`, with `/frontend-audio` going to `backend`, then `extra`.
fn running_shunt(proxy: &support::Shunt, backend: &EchoBackend, extra: &[&str]) -> Vec<String> {
    let url = backend.url();
    let mut rest = vec!["--direct", &url, "--route", "/frontend-audio=direct"];
    rest.extend_from_slice(extra);
    listening_at(proxy.addr(), proxy.admin_addr(), &rest)
}

/// The flags of a shunt that is not running (nothing on port 0, admin off)
/// with `/frontend-audio` going to `via`.
fn stopped_shunt<'a>(direct: &'a str, via: &'a str) -> Vec<&'a str> {
    vec![
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "off",
        "--direct",
        direct,
        "--route",
        via,
    ]
}

/// An echo backend behind an nginx without the Upgrade headers (the outage);
/// `None` when nginx is not installed (and not required).
async fn misconfigured_nginx() -> Option<(EchoBackend, support::Nginx)> {
    let backend = echo_backend().spawn().await;
    let proxy = nginx(backend.addr())
        .without_upgrade_headers()
        .spawn()
        .await?;
    Some((backend, proxy))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_without_upgrade_headers_fails_with_the_location_block() {
    let Some((backend, proxy)) = misconfigured_nginx().await else {
        return;
    };
    let direct = backend.url();
    let nginx_url = proxy.url();
    let mut args = stopped_shunt(&direct, "/frontend-audio=direct,nginx");
    args.extend(["--nginx", &nginx_url]);
    let out = doctor(&args).await;
    assert_eq!(out.code, Some(1), "{}", out.stdout);
    out.finding("ok   websocket /frontend-audio via direct:");
    let fail = out.finding("FAIL websocket /frontend-audio via nginx:");
    let first = fail.lines().next().unwrap_or_default();
    assert!(
        first.contains("nginx does not forward WebSocket upgrades on /frontend-audio"),
        "{fail}"
    );
    for line in [
        "fix: add to nginx's config",
        "map $http_upgrade $connection_upgrade {",
        "location /frontend-audio {",
        "# keep the proxy_pass this location already has",
        "proxy_pass <the address this location already forwards to>;",
        "proxy_http_version 1.1;",
        "proxy_set_header Upgrade $http_upgrade;",
        "proxy_set_header Connection $connection_upgrade;",
    ] {
        assert!(fail.contains(line), "{line:?} missing from:\n{fail}");
    }
    // nginx may front another address or run in another pod: shunt's
    // `direct` URL is never pasted as the location's proxy_pass.
    assert!(
        !fail.contains(&format!("proxy_pass {direct}")),
        "the direct URL is pasted as proxy_pass:\n{fail}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_with_upgrade_headers_is_ok() {
    let backend = echo_backend().spawn().await;
    let Some(proxy) = nginx(backend.addr()).spawn().await else {
        return;
    };
    let direct = backend.url();
    let nginx_url = proxy.url();
    let mut args = stopped_shunt(&direct, "/frontend-audio=nginx,direct");
    args.extend(["--nginx", &nginx_url]);
    let out = doctor(&args).await;
    let line = out.finding("ok   websocket /frontend-audio via nginx:");
    has(&line, "101 in");
    out.finding("ok   websocket /frontend-audio via direct:");
    // Nothing failed: shunt not running is only a warning.
    assert_eq!(out.code, Some(0), "{}", out.stdout);
    out.finding("warn listener: shunt is not running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_backend_is_refused() {
    let mut backend = echo_backend().spawn().await;
    let direct = backend.url();
    backend.stop().await;
    let out = doctor(&stopped_shunt(&direct, "/frontend-audio=direct")).await;
    assert_eq!(out.code, Some(1), "{}", out.stdout);
    let fail = out.finding("FAIL upstream direct:");
    has(&fail, "connection refused");
    has(&fail, "fix: start the backend on");
    out.finding("FAIL websocket /frontend-audio via direct: not tried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_never_answers_is_bounded_by_the_timeout() {
    // Connections complete in the kernel's backlog, but nothing reads them.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let direct = format!("http://{}", silent.local_addr().unwrap());
    let mut args = vec!["doctor", "--timeout", "300ms"];
    args.extend(stopped_shunt(&direct, "/frontend-audio=direct"));
    let out = run_shunt(&args, RUN_LIMIT).await;
    assert_eq!(out.code, Some(1), "{}", out.stdout);
    let fail = out.finding("FAIL websocket /frontend-audio via direct:");
    has(&fail, "no answer within 300ms");
}

/// An expired self-signed certificate for localhost, written into `pki`'s directory.
fn expired_cert(pki: &TestPki) -> (PathBuf, PathBuf) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    params.not_before = date_time_ymd(2020, 1, 1);
    params.not_after = date_time_ymd(2021, 1, 1);
    let cert = params.self_signed(&key).unwrap();
    let (c, k) = (pki.dir.join("expired.crt"), pki.dir.join("expired.key"));
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c, k)
}

/// Doctor for a stopped shunt serving `cert`/`key`, with a live backend and `--url url`.
async fn doctor_tls(cert: &std::path::Path, key: &std::path::Path, url: &str) -> Run {
    let backend = echo_backend().spawn().await;
    let direct = backend.url();
    let mut args = stopped_shunt(&direct, "/frontend-audio=direct");
    args.extend([
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
        "--url",
        url,
    ]);
    doctor(&args).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_certificate_fails() {
    let pki = TestPki::new();
    let (cert, key) = expired_cert(&pki);
    let out = doctor_tls(&cert, &key, "wss://localhost:8443/frontend-audio").await;
    assert_eq!(out.code, Some(1), "{}", out.stdout);
    out.finding("ok   tls key:");
    let fail = out.finding("FAIL tls expiry:");
    assert!(
        fail.contains("EXPIRED") && fail.contains("2021-01-01"),
        "{fail}"
    );
    has(&fail, "fix: renew it");
    out.finding("ok   tls names:");
    // Trusting its CA would not help an expired certificate.
    let trust = out.finding("warn tls trust:");
    has(&trust, "not checked: the certificate is not valid now");
    assert!(!trust.contains("trust the CA"), "{trust}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_not_covering_the_host_fails_and_a_private_ca_warns() {
    let pki = TestPki::new();
    let (cert, key) = pki.write("server", &["localhost", "127.0.0.1"]);
    let out = doctor_tls(&cert, &key, "wss://calls.example.com:8443/frontend-audio").await;
    assert_eq!(out.code, Some(1), "{}", out.stdout);
    let names = out.finding("FAIL tls names:");
    has(&names, "does not cover calls.example.com");
    has(&names, "localhost, 127.0.0.1");
    out.finding("ok   tls expiry:");
    out.finding("ok   tls chain:");
    let trust = out.finding("warn tls trust:");
    assert!(
        trust.contains("private CA") && trust.contains("browsers refuse wss://"),
        "{trust}"
    );
    has(&trust, "https://calls.example.com:8443/");
    // A loopback listener cannot serve a public host.
    let scope = out.finding("warn listener scope:");
    has(&scope, "--listen 0.0.0.0:0");
}

/// A WebSocket backend that answers 403 unless `Origin` is `allowed`.
async fn origin_checking_backend(
    allowed: &'static str,
) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service =
                    service_fn(move |mut req: Request<hyper::body::Incoming>| async move {
                        let origin_ok = req.headers().get("origin").is_some_and(|o| o == allowed);
                        if !origin_ok {
                            let mut resp = Response::new(Full::new(Bytes::from_static(
                                b"origin not allowed\n",
                            )));
                            *resp.status_mut() = StatusCode::FORBIDDEN;
                            return Ok::<_, Infallible>(resp);
                        }
                        match fastwebsockets::upgrade::upgrade(&mut req) {
                            Ok((resp, upgraded)) => {
                                tokio::spawn(async move {
                                    if let Ok(mut ws) = upgraded.await {
                                        let _ = ws.read_frame().await;
                                    }
                                });
                                Ok(resp.map(|_| Full::new(Bytes::new())))
                            }
                            Err(_) => {
                                let mut resp = Response::new(Full::new(Bytes::new()));
                                *resp.status_mut() = StatusCode::BAD_REQUEST;
                                Ok(resp)
                            }
                        }
                    });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_refusing_the_origin_fails_with_the_cors_fix() {
    let (addr, task) = origin_checking_backend("https://app.example.com").await;
    let direct = format!("http://{addr}");
    let mut args = stopped_shunt(&direct, "/frontend-audio=direct");
    args.extend(["--origin", "https://evil.example.com"]);
    let out = doctor(&args).await;
    assert_eq!(out.code, Some(1), "{}", out.stdout);
    let fail = out.finding("FAIL websocket /frontend-audio via direct:");
    has(&fail, "Origin https://evil.example.com: 403 Forbidden in ");
    has(&fail, " ms: the backend refuses that Origin");
    assert!(
        fail.contains("allow_origin") && fail.contains("CORS"),
        "{fail}"
    );

    let mut args = stopped_shunt(&direct, "/frontend-audio=direct");
    args.extend(["--origin", "https://app.example.com"]);
    let out = doctor(&args).await;
    let ok = out.finding("ok   websocket /frontend-audio via direct:");
    has(&ok, "with Origin https://app.example.com: 101");
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_on_all_interfaces_warns_with_the_firewall_lines() {
    let backend = EchoBackend::spawn_on(SocketAddr::from(([0, 0, 0, 0], 0)), "backend").await;
    let port = backend.addr().port();
    let direct = format!("http://127.0.0.1:{port}");
    let out = doctor(&stopped_shunt(&direct, "/frontend-audio=direct")).await;
    let warn = out.finding("warn upstream direct binding:");
    has(&warn, format!("0.0.0.0:{port}"));
    has(&warn, "bypass shunt");
    has(&warn, format!("ufw deny {port}/tcp"));
    has(
        &warn,
        format!("iptables -A INPUT -p tcp --dport {port} ! -i lo -j DROP"),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_setup_is_ok_end_to_end_and_names_the_route() {
    let backend = echo_backend().spawn().await;
    let proxy = frontend_shunt(&backend).start_ready().await;
    let listen = proxy.addr().to_string();
    let args = running_shunt(&proxy, &backend, &[]);
    let out = doctor(&args).await;
    assert_eq!(out.code, Some(0), "{}\n{}", out.stdout, out.stderr);
    for line in out.stdout.lines() {
        assert!(
            line.starts_with("ok   "),
            "not ok: {line}\nin:\n{}",
            out.stdout
        );
    }
    let e2e = out.finding("ok   end to end:");
    has(&e2e, "served by `direct` (x-shunt-route: direct)");
    has(&e2e, "5 × 640-byte frames round trip, median RTT");
    let hint = out.finding("ok   front end:");
    has(
        &hint,
        format!("VITE_WS_AUDIO_URL=ws://{listen}/frontend-audio"),
    );
    has(&hint, "takes the `direct` path");
    out.finding("ok   listener: ");
    out.finding("ok   upstream direct binding:");

    let json_args = running_shunt(&proxy, &backend, &["--json"]);
    let out = doctor(&json_args).await;
    assert_eq!(out.code, Some(0), "{}", out.stdout);
    let findings: serde_json::Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("--json output is not JSON ({e}):\n{}", out.stdout));
    let findings = findings.as_array().expect("a JSON array");
    assert!(findings.len() >= 8, "{findings:?}");
    for f in findings {
        let keys: Vec<&str> = f.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys.len(), 4, "{f}");
        for key in ["check", "status", "detail", "fix"] {
            assert!(keys.contains(&key), "{key} missing in {f}");
        }
        assert_eq!(f["status"], "ok", "{f}");
        assert!(f["fix"].is_null(), "{f}");
    }
    let e2e = findings
        .iter()
        .find(|f| f["check"] == "end to end")
        .expect("an end to end finding");
    assert!(
        e2e["detail"].as_str().unwrap().contains("`direct`"),
        "{e2e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_needing_a_token_says_which_policy_refused_and_how_the_token_travels() {
    let backend = echo_backend().spawn().await;
    let token_file = TempFile::new("tokens", "doctor-s3cret\n");
    let tokens = token_file.path().to_owned();
    let proxy = frontend_shunt(&backend)
        .arg("--token-file", tokens.as_str())
        .start_ready()
        .await;
    let args = running_shunt(&proxy, &backend, &["--token-file", &tokens]);
    let out = doctor(&args).await;
    assert_eq!(out.code, Some(1), "{}", out.stdout);
    let fail = out.finding("FAIL end to end:");
    has(&fail, "401, refused by shunt's authentication");
    has(&fail, "--token");

    let with_token = running_shunt(
        &proxy,
        &backend,
        &["--token-file", &tokens, "--token", "doctor-s3cret"],
    );
    let out = doctor(&with_token).await;
    assert_eq!(out.code, Some(0), "{}", out.stdout);
    let hint = out.finding("ok   front end:");
    has(&hint, "?token=<TOKEN>");
    assert!(
        !out.stdout.contains("doctor-s3cret"),
        "the token is printed:\n{}",
        out.stdout
    );

    // SHUNT_DOCTOR_TOKEN is --token's default.
    let mut from_env = vec!["doctor", "--timeout", "3s"];
    from_env.extend(args.iter().map(String::as_str));
    let out = run_shunt_with_env(
        &from_env,
        &[("SHUNT_DOCTOR_TOKEN", "doctor-s3cret")],
        RUN_LIMIT,
    )
    .await;
    assert_eq!(out.code, Some(0), "{}\n{}", out.stdout, out.stderr);
    out.finding("ok   end to end:");
    assert!(
        !out.stdout.contains("doctor-s3cret"),
        "the token is printed:\n{}",
        out.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_arguments_exit_2() {
    let out = doctor(&["--url", "ftp://x/"]).await;
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(out.stderr.contains("invalid --url"), "{}", out.stderr);
    let out = run_shunt(&["doctor", "--timeout", "soon"], RUN_LIMIT).await;
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(
        out.stderr.contains("invalid --timeout: `soon`"),
        "{}",
        out.stderr
    );
    // Zero would fail every check at once; an hour per check is a hang.
    for timeout in ["0s", "0ms", "1h"] {
        let out = run_shunt(&["doctor", "--timeout", timeout], RUN_LIMIT).await;
        assert_eq!(out.code, Some(2), "--timeout {timeout}: {}", out.stderr);
        has(
            &out.stderr,
            format!("invalid --timeout `{timeout}`: give a duration from 1ms to 60s"),
        );
        assert!(out.stdout.is_empty(), "{}", out.stdout);
    }
    for origin in ["app.example.com", "https://", "https://a\nb"] {
        let out = doctor(&["--origin", origin]).await;
        assert_eq!(out.code, Some(2), "--origin {origin}: {}", out.stderr);
        has(&out.stderr, format!("invalid --origin `{origin}`"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_configuration_fails_first() {
    let out = doctor(&[
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "off",
        "--direct",
        "ftp://x",
    ])
    .await;
    assert_eq!(out.code, Some(1), "{}", out.stdout);
    let fail = out.finding("FAIL configuration:");
    has(&fail, "--direct");
    assert_eq!(
        out.stdout
            .lines()
            .filter(|l| !l.starts_with("     "))
            .count(),
        1,
        "{}",
        out.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_end_to_end_through_shunt_names_the_route() {
    let TlsFrontend {
        backend,
        proxy,
        cert,
        key,
        pki: _pki,
    } = tls_frontend().await;
    let url = format!("wss://localhost:{}/frontend-audio", proxy.addr().port());
    let args = running_shunt(
        &proxy,
        &backend,
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            "--url",
            &url,
        ],
    );
    let out = doctor(&args).await;
    assert_eq!(out.code, Some(0), "{}", out.stdout);
    let e2e = out.finding("ok   end to end:");
    has(
        &e2e,
        format!("{url} at shunt's listener {}: 101", proxy.addr()),
    );
    has(&e2e, "served by `direct`");
    // localhost at the listener's port is the listener: no second dial.
    assert!(
        !out.stdout.contains("end to end (public)"),
        "{}",
        out.stdout
    );
    out.finding("ok   tls names:");
    out.finding("warn tls trust:");
    let hint = out.finding("ok   front end:");
    has(&hint, format!("VITE_WS_AUDIO_URL={url}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_held_by_another_process_is_named() {
    let backend = echo_backend().spawn().await;
    // This test process holds the port; it is not shunt and has no admin API.
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = holder.local_addr().unwrap().to_string();
    let direct = backend.url();
    let out = doctor(&[
        "--listen",
        &listen,
        "--admin",
        "off",
        "--direct",
        &direct,
        "--route",
        "/frontend-audio=direct",
    ])
    .await;
    assert_eq!(out.code, Some(1), "{}", out.stdout);
    let fail = out.finding("FAIL listener:");
    has(&fail, format!("{listen} is held by another process"));
    assert!(
        fail.contains(&format!("(pid {})", std::process::id())),
        "{fail}"
    );
    out.finding("warn end to end: not tried");
}

/// A port shared through `SO_REUSEPORT` by two processes (as an older
/// shunt allowed) is a FAIL that names both: each would take a share of the
/// connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_shared_by_two_processes_is_a_fail_naming_both() {
    use socket2::{Domain, Socket, Type};
    let backend = echo_backend().spawn().await;
    let ours = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    ours.set_reuse_port(true).unwrap();
    ours.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    ours.listen(16).unwrap();
    let listen = ours.local_addr().unwrap().as_socket().unwrap();
    // The second holder: a python3 child joining the same port.
    let script = format!(
        "import socket,sys,time\n\
         s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)\n\
         s.bind(('127.0.0.1',{})); s.listen(1); print('bound', flush=True); time.sleep(30)\n",
        listen.port()
    );
    let mut other = std::process::Command::new("python3")
        .args(["-c", &script])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(other.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "bound");
    let direct = backend.url();
    let out = doctor(&[
        "--listen",
        &listen.to_string(),
        "--admin",
        "off",
        "--direct",
        &direct,
        "--route",
        "/frontend-audio=direct",
    ])
    .await;
    let _ = other.kill();
    let _ = other.wait();
    assert_eq!(out.code, Some(1), "{}", out.stdout);
    let fail = out.finding("FAIL listener:");
    has(&fail, format!("{listen} is held by more than one process"));
    has(&fail, format!("(pid {})", std::process::id()));
    has(&fail, format!("(pid {})", other.id()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_config_file_and_shunt_variables_are_read_as_for_run() {
    let backend = echo_backend().spawn().await;
    let file = TempFile::new(
        "shunt.toml",
        &format!(
            "[upstreams.direct]\nurl = \"{}\"\n\n[[routes]]\npath = \"/calls\"\nvia = [\"direct\"]\n",
            backend.url()
        ),
    );
    let out = run_shunt_with_env(
        &["doctor", "--config", file.path()],
        &[("SHUNT_LISTEN", "127.0.0.1:0"), ("SHUNT_ADMIN", "off")],
        RUN_LIMIT,
    )
    .await;
    let config = out.finding("ok   configuration:");
    has(&config, file.path());
    has(&config, "listen 127.0.0.1:0");
    out.finding(&format!("ok   upstream direct: {}", backend.url()));
    out.finding("ok   websocket /calls via direct:");
    let hint = out.finding("warn front end:");
    has(&hint, "VITE_WS_AUDIO_URL=ws://127.0.0.1:0/calls");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shunt_refusing_the_origin_or_over_its_rate_says_which_policy() {
    let backend = echo_backend().spawn().await;
    let proxy = frontend_shunt(&backend)
        .arg("--allow-origin", "https://app.example.com")
        .start_ready()
        .await;
    let args = running_shunt(
        &proxy,
        &backend,
        &[
            "--allow-origin",
            "https://app.example.com",
            "--origin",
            "https://evil.example.com",
        ],
    );
    let out = doctor(&args).await;
    assert_eq!(out.code, Some(1), "{}", out.stdout);
    // The backend itself takes any Origin; shunt is the one refusing it.
    out.finding("ok   websocket /frontend-audio via direct:");
    let fail = out.finding("FAIL end to end:");
    has(&fail, "403, refused by shunt's Origin policy");
    has(&fail, "--allow-origin https://evil.example.com");

    let limited = frontend_shunt(&backend)
        .arg("--rate", "1/h")
        .arg("--burst", "1")
        .start_ready()
        .await;
    // Spend the one request the burst allows.
    let first = support::http_get(limited.addr(), "/frontend-audio", &[])
        .await
        .expect("GET through shunt");
    assert_eq!(first.status, StatusCode::OK);
    let args = running_shunt(&limited, &backend, &["--rate", "1/h", "--burst", "1"]);
    let out = doctor(&args).await;
    assert_eq!(out.code, Some(1), "{}", out.stdout);
    let fail = out.finding("FAIL end to end:");
    has(&fail, "429, refused by shunt's rate or connection limit");
    has(&fail, "Retry-After");
    has(&fail, "--rate");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_to_end_through_shunt_to_a_misconfigured_nginx_prints_the_location_block() {
    let Some((backend, proxy)) = misconfigured_nginx().await else {
        return;
    };
    let running = shunt()
        .direct(backend.url())
        .nginx(proxy.url())
        .route("/frontend-audio=nginx")
        .start_ready()
        .await;
    let (direct, via_nginx) = (backend.url(), proxy.url());
    let args = listening_at(
        running.addr(),
        running.admin_addr(),
        &[
            "--direct",
            &direct,
            "--nginx",
            &via_nginx,
            "--route",
            "/frontend-audio=nginx",
        ],
    );
    let out = doctor(&args).await;
    assert_eq!(out.code, Some(1), "{}", out.stdout);
    out.finding("FAIL websocket /frontend-audio via nginx:");
    let fail = out.finding("FAIL end to end:");
    has(
        &fail,
        "shunt forwarded to `nginx`, where nginx answered 200 OK instead of 101",
    );
    has(&fail, "proxy_set_header Upgrade $http_upgrade;");
    has(
        &fail,
        "proxy_pass <the address this location already forwards to>;",
    );
    assert!(
        !fail.contains(&format!("proxy_pass {direct}")),
        "the direct URL is pasted as proxy_pass:\n{fail}"
    );
}

/// Asserts the token `s3cret` is nowhere in what doctor printed.
fn token_hidden(out: &Run) {
    for text in [&out.stdout, &out.stderr] {
        assert!(!text.contains("s3cret"), "the token is printed:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_is_never_printed_against_a_tls_port_spoken_to_in_plain() {
    // Doctor is not told about TLS (no --tls-cert), so it sends its plain
    // handshake, ?token= included, to shunt's TLS port.
    let TlsFrontend {
        backend,
        proxy,
        pki: _pki,
        ..
    } = tls_frontend().await;
    for json in [false, true] {
        let mut extra = vec!["--token", "s3cret"];
        if json {
            extra.push("--json");
        }
        let out = doctor(&running_shunt(&proxy, &backend, &extra)).await;
        assert_eq!(out.code, Some(1), "{}\n{}", out.stdout, out.stderr);
        has(&out.stdout, "end to end");
        token_hidden(&out);
    }
}

/// A listener that reads one request head and hangs up without answering.
async fn hanging_up_listener() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let _ = read_head(&mut stream).await;
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_is_never_printed_when_the_connection_breaks_after_the_request() {
    // The admin API of a real shunt answers, so doctor takes the proxy port
    // for shunt's; whatever holds that port reads the handshake (and its
    // ?token=) and hangs up: the error names the request it was sending.
    let backend = echo_backend().spawn().await;
    let proxy = frontend_shunt(&backend).start_ready().await;
    let (listen, task) = hanging_up_listener().await;
    let url = backend.url();
    let args = listening_at(
        listen,
        proxy.admin_addr(),
        &[
            "--direct",
            &url,
            "--route",
            "/frontend-audio=direct",
            "--token",
            "s3cret",
        ],
    );
    let out = doctor(&args).await;
    assert_eq!(out.code, Some(1), "{}\n{}", out.stdout, out.stderr);
    let fail = out.finding("FAIL end to end:");
    has(&fail, "/frontend-audio?token=<TOKEN>");
    token_hidden(&out);
    let mut json = args.to_vec();
    json.push("--json".to_owned());
    let out = doctor(&json).await;
    has(&out.stdout, "token=<TOKEN>");
    token_hidden(&out);
    task.abort();
}

/// A backend that is not nginx, answering by path with a canned reply and
/// hanging up: `/no-ws` 404, `/old` 426, `/bad-accept` a 101 whose
/// `Sec-WebSocket-Accept` does not match the key, `/health` 503.
async fn canned_backend() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    use tokio::io::AsyncWriteExt;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Some(head) = read_head(&mut stream).await else {
                    return;
                };
                let text = String::from_utf8_lossy(&head);
                let path = text.split(' ').nth(1).unwrap_or_default();
                let reply: &[u8] = match path {
                    "/no-ws" => b"HTTP/1.1 404 Not Found\r\nServer: backend\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                    "/old" => b"HTTP/1.1 426 Upgrade Required\r\nServer: backend\r\nSec-WebSocket-Version: 8\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                    "/bad-accept" => b"HTTP/1.1 101 Switching Protocols\r\nServer: backend\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: bm90IHRoZSByaWdodCBrZXk=\r\n\r\n",
                    _ => b"HTTP/1.1 503 Service Unavailable\r\nServer: backend\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                };
                let _ = stream.write_all(reply).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_is_not_nginx_gets_the_404_426_and_bad_accept_diagnoses() {
    let (addr, task) = canned_backend().await;
    let direct = format!("http://{addr}");
    let mut args = stopped_shunt(&direct, "/no-ws=direct");
    args.extend(["--route", "/old=direct", "--route", "/bad-accept=direct"]);
    let out = doctor(&args).await;
    assert_eq!(out.code, Some(1), "{}", out.stdout);
    let not_found = out.finding("FAIL websocket /no-ws via direct:");
    has(&not_found, format!("handshake GET /no-ws on {direct}"));
    has(&not_found, "404 Not Found in ");
    has(&not_found, "no WebSocket endpoint on that path");
    has(&not_found, "--route PATH=direct");
    assert!(!not_found.contains("nginx"), "{not_found}");
    let old = out.finding("FAIL websocket /old via direct:");
    has(&old, "426 Upgrade Required in ");
    has(&old, "WebSocket version mismatch");
    has(&old, "Sec-WebSocket-Version 13");
    let bad = out.finding("FAIL websocket /bad-accept via direct:");
    has(&bad, "101 in ");
    has(
        &bad,
        "without a valid Sec-WebSocket-Accept: a broken intermediary",
    );
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_health_check_get_and_its_status() {
    let backend = echo_backend().spawn().await;
    let direct = backend.url();
    let mut args = stopped_shunt(&direct, "/frontend-audio=direct");
    args.extend(["--health-check", "http:/health"]);
    let out = doctor(&args).await;
    let ok = out.finding("ok   upstream direct health:");
    has(&ok, format!("GET {direct}/health answered 200 OK"));
    assert_eq!(out.code, Some(0), "{}", out.stdout);

    let (addr, task) = canned_backend().await;
    let direct = format!("http://{addr}");
    let mut args = stopped_shunt(&direct, "/frontend-audio=direct");
    args.extend(["--health-check", "http:/health"]);
    let out = doctor(&args).await;
    assert_eq!(out.code, Some(1), "{}", out.stdout);
    let fail = out.finding("FAIL upstream direct health:");
    has(
        &fail,
        format!("GET {direct}/health answered 503 Service Unavailable (expected 2xx or 3xx)"),
    );
    has(&fail, "fix: make the backend answer 2xx on /health");
    task.abort();
}

/// A listener whose accept queue is full (backlog 0, never accepting, one
/// connection queued), so the kernel drops further SYNs as a firewall would;
/// returns it with the connections that fill it.
async fn full_accept_queue() -> (tokio::net::TcpListener, Vec<tokio::net::TcpStream>) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(0).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut queued = Vec::new();
    for _ in 0..16 {
        match tokio::time::timeout(
            Duration::from_millis(300),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            Ok(Ok(stream)) => queued.push(stream),
            Ok(Err(e)) => panic!("connect to the backlog-0 listener: {e}"),
            Err(_) => return (listener, queued),
        }
    }
    panic!("16 connections to a backlog-0 listener all completed: the queue never filled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_connect_that_times_out_names_a_firewall_or_a_wrong_host() {
    let (listener, _queued) = full_accept_queue().await;
    let direct = format!("http://{}", listener.local_addr().unwrap());
    let mut args = vec!["doctor", "--timeout", "300ms"];
    args.extend(stopped_shunt(&direct, "/frontend-audio=direct"));
    let started = std::time::Instant::now();
    let out = run_shunt(&args, RUN_LIMIT).await;
    assert_eq!(out.code, Some(1), "{}", out.stdout);
    let fail = out.finding("FAIL upstream direct:");
    has(
        &fail,
        "no answer within 300ms: a firewall drops the packets, or the host is wrong",
    );
    has(&fail, "fix: check the host of upstream direct");
    out.finding("FAIL websocket /frontend-audio via direct: not tried");
    // Bounded: a dead host ends in seconds, not in the kernel's SYN retries.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

/// Today plus `days` as (year, month, day), from the system clock (civil
/// calendar from days since 1970-01-01, Howard Hinnant's algorithm).
fn date_in(days: i64) -> (i32, u8, u8) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let z = now / 86_400 + days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let year = (yoe + era * 400 + i64::from(month <= 2)) as i32;
    (year, month, day)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_expiring_within_14_days_warns() {
    let pki = TestPki::new();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    params.not_before = date_time_ymd(2020, 1, 1);
    let (y, m, d) = date_in(6);
    params.not_after = date_time_ymd(y, m, d);
    let cert = params.self_signed(&key).unwrap();
    let (c, k) = (pki.dir.join("soon.crt"), pki.dir.join("soon.key"));
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    let out = doctor_tls(&c, &k, "wss://localhost:8443/frontend-audio").await;
    let warn = out.finding("warn tls expiry:");
    // Midnight six days on is five days and a fraction away.
    has(&warn, "expires in 5 day(s)");
    has(&warn, format!("on {y}-{m:02}-{d:02}"));
    has(&warn, "fix: renew it");
    // A warning is not a failure.
    out.finding("ok   tls key:");
    assert!(!out.stdout.contains("FAIL tls"), "{}", out.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_that_does_not_match_the_certificate_fails() {
    let pki = TestPki::new();
    let (cert, _) = pki.write("server", &["localhost"]);
    let (_, other_key) = pki.write("other", &["localhost"]);
    let out = doctor_tls(&cert, &other_key, "wss://localhost:8443/frontend-audio").await;
    assert_eq!(out.code, Some(1), "{}", out.stdout);
    let fail = out.finding("FAIL tls key:");
    has(&fail, "the key cannot be used with certificate");
    has(
        &fail,
        format!("openssl x509 -noout -pubkey -in {}", cert.display()),
    );
    has(
        &fail,
        format!("openssl pkey -pubout -in {}", other_key.display()),
    );
}

/// A root CA, an intermediate it signs and a leaf for localhost the
/// intermediate signs: the PEM of (root, intermediate, leaf) and the leaf's key.
fn three_level_chain() -> (String, String, String, String) {
    use rcgen::{BasicConstraints, DnType, IsCa, Issuer};
    let ca = |name: &str| {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        p
    };
    let root_key = KeyPair::generate().unwrap();
    let root_params = ca("doctor root");
    let root = root_params.self_signed(&root_key).unwrap();
    let root_issuer = Issuer::new(root_params, root_key);
    let mid_key = KeyPair::generate().unwrap();
    let mid_params = ca("doctor intermediate");
    let mid = mid_params.signed_by(&mid_key, &root_issuer).unwrap();
    let mid_issuer = Issuer::new(mid_params, mid_key);
    let leaf_key = KeyPair::generate().unwrap();
    let mut leaf_params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    leaf_params.is_ca = IsCa::ExplicitNoCa;
    let leaf = leaf_params.signed_by(&leaf_key, &mid_issuer).unwrap();
    (root.pem(), mid.pem(), leaf.pem(), leaf_key.serialize_pem())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_in_the_wrong_order_fails() {
    let pki = TestPki::new();
    let (root, mid, leaf, key) = three_level_chain();
    let key_file = pki.dir.join("leaf.key");
    std::fs::write(&key_file, key).unwrap();
    let url = "wss://localhost:8443/frontend-audio";

    // In order: leaf, intermediate, root.
    let good = pki.dir.join("good.crt");
    std::fs::write(&good, format!("{leaf}{mid}{root}")).unwrap();
    let out = doctor_tls(&good, &key_file, url).await;
    let ok = out.finding("ok   tls chain:");
    has(&ok, "3 certificate(s), leaf first, each issued by the next");

    // The leaf first, but the root before the intermediate.
    let swapped = pki.dir.join("swapped.crt");
    std::fs::write(&swapped, format!("{leaf}{root}{mid}")).unwrap();
    let out = doctor_tls(&swapped, &key_file, url).await;
    assert_eq!(out.code, Some(1), "{}", out.stdout);
    out.finding("ok   tls key:");
    let fail = out.finding("FAIL tls chain:");
    has(
        &fail,
        "certificate 1 (CN=localhost) is not issued by the next one (CN=doctor root)",
    );
    has(&fail, "fix: order the PEM file: the leaf first");

    // The CA certificates before the leaf: the key matches a later one.
    let reversed = pki.dir.join("reversed.crt");
    std::fs::write(&reversed, format!("{root}{mid}{leaf}")).unwrap();
    let out = doctor_tls(&reversed, &key_file, url).await;
    assert_eq!(out.code, Some(1), "{}", out.stdout);
    let fail = out.finding("FAIL tls key:");
    has(&fail, "it belongs to certificate 3 of");
    has(&fail, "so the chain is out of order");
    has(&fail, "fix: order the PEM file: the leaf first");
}

/// A TCP port forward from a new loopback port to `target`, as NAT or a
/// router's port forwarding puts in front of shunt.
async fn port_forward(target: SocketAddr) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_on_another_port_is_dialled_as_its_own_finding() {
    let backend = echo_backend().spawn().await;
    let proxy = frontend_shunt(&backend).start_ready().await;

    // The public port forwards to shunt's listener.
    let (public, task) = port_forward(proxy.addr()).await;
    let url = format!("ws://{public}/frontend-audio");
    let out = doctor(&running_shunt(&proxy, &backend, &["--url", &url])).await;
    assert_eq!(out.code, Some(0), "{}", out.stdout);
    let local = out.finding("ok   end to end:");
    has(
        &local,
        format!("{url} at shunt's listener {}: 101", proxy.addr()),
    );
    let via_public = out.finding("ok   end to end (public):");
    has(
        &via_public,
        format!("{url} at its public address {public}: 101 in "),
    );
    has(&via_public, "served by `direct`");
    task.abort();

    // Nothing answers on the public port: a warning naming the way there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ws://{}/frontend-audio", closed.local_addr().unwrap());
    drop(closed);
    let out = doctor(&running_shunt(&proxy, &backend, &["--url", &url])).await;
    assert_eq!(out.code, Some(0), "a warning only:\n{}", out.stdout);
    out.finding("ok   end to end:");
    let warn = out.finding("warn end to end (public):");
    has(&warn, "Connection refused");
    for part in [
        "DNS for 127.0.0.1",
        "firewall",
        "NAT / port forwarding",
        "hairpin",
    ] {
        has(&warn, part);
    }

    // The public port leads to the backend itself, not to shunt.
    let url = format!("ws://{}/frontend-audio", backend.addr());
    let out = doctor(&running_shunt(&proxy, &backend, &["--url", &url])).await;
    assert_eq!(out.code, Some(1), "{}", out.stdout);
    out.finding("ok   end to end:");
    let fail = out.finding("FAIL end to end (public):");
    has(
        &fail,
        "without x-shunt-route: it is not shunt that answered",
    );
    has(&fail, format!("at shunt's --listen {}", proxy.addr()));

    // A name that does not resolve (.invalid never does, RFC 6761).
    let url = "ws://shunt-doctor.invalid:8080/frontend-audio";
    let out = doctor(&running_shunt(&proxy, &backend, &["--url", url])).await;
    let warn = out.finding("warn end to end (public):");
    has(&warn, "not dialled: shunt-doctor.invalid");
    has(&warn, "fix: publish a DNS record");
}
