//! Asymmetric JWTs, JWKS (file and URL), the token in Sec-WebSocket-Protocol, forwarded claims and client certificates (issue 20).
//!
//! Keys and tokens are made by PyJWT with `cryptography` (`jwks/mint.py`),
//! never by shunt's own code; the JWKS URL is served by [`Idp`], a small
//! HTTP server that counts its fetches and can fail on command.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

mod mtls;

use crate::support::raw::{get, raw, ws_open};
use crate::support::{self, IO_TIMEOUT, Part, TempFile, eventually};

const ISSUER: &str = "https://idp.test";
const AUDIENCE: &str = "shunt-test";

/// Keys and tokens from `jwks/mint.py`.
struct Minted(Value);

impl Minted {
    /// Run the minter; `None` (after [`support::require`]) without Python.
    fn new() -> Option<Minted> {
        let out = std::process::Command::new("python3")
            .args(["-c", include_str!("jwks/mint.py"), ISSUER, AUDIENCE])
            .output()
            .map_err(|e| format!("python3: {e}"))
            .and_then(|o| {
                if o.status.success() {
                    Ok(o.stdout)
                } else {
                    Err(format!(
                        "mint.py failed: {}",
                        String::from_utf8_lossy(&o.stderr)
                    ))
                }
            });
        let out = support::require(Part::Python, out)?;
        Some(Minted(
            serde_json::from_slice(&out).expect("mint.py prints JSON"),
        ))
    }

    fn token(&self, case: &str) -> String {
        self.0["tokens"][case]
            .as_str()
            .unwrap_or_else(|| panic!("no token {case}"))
            .to_owned()
    }

    fn pem(&self, key: &str) -> String {
        self.0["pem"][key].as_str().unwrap().to_owned()
    }

    /// A JWKS document of the named keys.
    fn jwks(&self, keys: &[&str]) -> String {
        let keys: Vec<&Value> = keys.iter().map(|k| &self.0["jwk"][k]).collect();
        json!({ "keys": keys }).to_string()
    }

    /// Every token this test run made (none may show in a log or a body).
    fn all_tokens(&self) -> Vec<String> {
        self.0["tokens"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    }
}

/// What the test identity provider answers.
#[derive(Debug, Clone)]
enum Mode {
    /// 200 with this JWKS.
    Serve(String),
    /// This status, no keys.
    Status(u16),
    /// 200 with a 2 MiB body.
    Huge,
    /// Close the connection without answering.
    Close,
}

/// A JWKS URL on loopback that counts fetches.
struct Idp {
    addr: SocketAddr,
    mode: Arc<Mutex<Mode>>,
    fetches: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Idp {
    async fn start(mode: Mode) -> Idp {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mode = Arc::new(Mutex::new(mode));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (m, f) = (mode.clone(), fetches.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                f.fetch_add(1, Ordering::SeqCst);
                let mode = m.lock().unwrap().clone();
                tokio::spawn(answer(stream, mode));
            }
        });
        Idp {
            addr,
            mode,
            fetches,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/.well-known/jwks.json", self.addr)
    }

    fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Read a request head (bounded), then answer as `mode` says.
async fn answer(mut stream: TcpStream, mode: Mode) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(IO_TIMEOUT, async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16384 {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
    });
    if read.await.is_err() {
        return;
    }
    let (status, body) = match mode {
        Mode::Close => return,
        Mode::Serve(body) => (200, body.into_bytes()),
        Mode::Status(code) => (code, b"{\"error\": \"down\"}".to_vec()),
        Mode::Huge => (200, vec![b' '; 2 << 20]),
    };
    let head = format!(
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = tokio::time::timeout(IO_TIMEOUT, async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(&body).await?;
        stream.shutdown().await
    })
    .await;
}

/// `GET path` with `Authorization: Bearer token`.
async fn bearer(addr: SocketAddr, path: &str, token: &str) -> support::raw::Answer {
    raw(
        addr,
        &get(path, &[&format!("Authorization: Bearer {token}")]),
    )
    .await
}

/// The `shunt_auth_failures_total` lines of `/metrics`.
async fn auth_failures(shunt: &support::Shunt) -> String {
    let (_, text) = shunt.admin_get("/metrics").await.unwrap();
    text.lines()
        .filter(|l| l.starts_with("shunt_auth_failures_total{"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// shunt in front of `backend`, JWT auth by default, health probes rare.
async fn start(backend: &support::EchoBackend, args: &[&str]) -> support::Shunt {
    support::capture_logs();
    support::shunt()
        .direct(backend.url())
        .arg("--health-interval", "60s")
        .arg("--drain-timeout", "1s")
        .arg("--auth", "jwt")
        .flags(args)
        .start()
        .await
}

#[tokio::test]
async fn pyjwt_tokens_verify_by_algorithm_and_every_forgery_is_refused() {
    let Some(m) = Minted::new() else { return };
    let jwks = TempFile::new("jwks.json", &m.jwks(&["rsa", "ec256", "ec384", "ed"]));
    let backend = support::echo_backend().spawn().await;
    let shunt = start(
        &backend,
        &[
            "--jwt-jwks-file",
            jwks.path(),
            "--jwt-issuer",
            ISSUER,
            "--jwt-audience",
            "another-app",
            "--jwt-audience",
            AUDIENCE,
        ],
    )
    .await;
    let a = shunt.addr();
    for case in [
        "rs256",
        "rs512",
        "ps256",
        "es256",
        "es384",
        "eddsa",
        "no_kid",
        "aud_array",
    ] {
        let ok = bearer(a, "/ok", &m.token(case)).await;
        assert_eq!(ok.status, Some(200), "{case}: {ok:?}");
    }
    for (case, reason) in [
        ("expired", "expired"),
        ("not_yet", "invalid"),
        ("no_exp", "invalid"),
        ("wrong_aud", "wrong_audience"),
        ("wrong_iss", "wrong_issuer"),
        ("wrong_key", "invalid"),
        ("unknown_kid", "unknown_key"),
        ("es_as_rsa", "invalid"),
        ("confusion", "invalid"),
        ("none", "invalid"),
        ("truncated", "invalid"),
        ("rsa2", "unknown_key"),
    ] {
        let token = m.token(case);
        let refused = bearer(a, &format!("/{case}"), &token).await;
        assert_eq!(refused.status, Some(401), "{case}: {refused:?}");
        assert_eq!(
            refused.header("x-shunt-error").as_deref(),
            Some("unauthorized")
        );
        assert!(!refused.text.contains(&token), "{case}: token echoed");
        let metrics = auth_failures(&shunt).await;
        assert!(
            metrics.contains(&format!("reason=\"{reason}\"")),
            "{case} counted as {reason}: {metrics}"
        );
    }
    let missing = raw(a, &get("/none", &[])).await;
    assert_eq!(missing.status, Some(401));
    assert!(auth_failures(&shunt).await.contains("reason=\"missing\""));
    assert!(
        !backend.seen().iter().any(|p| p != "/ok"),
        "refused requests never reach the backend: {:?}",
        backend.seen()
    );
    let logs = support::logs();
    for token in m.all_tokens() {
        assert!(!logs.contains(&token), "a token reached the log");
    }
    shunt.stop().await;
}

#[tokio::test]
async fn public_key_files_certificates_hs256_and_the_refusals_at_load() {
    let Some(m) = Minted::new() else { return };
    let pems = format!(
        "{}{}{}{}",
        m.pem("rsa"),
        m.pem("ec384"),
        m.pem("ed"),
        m.0["cert_pem"].as_str().unwrap()
    );
    let keys = TempFile::new("keys.pem", &pems);
    let secret = TempFile::new("secret", "hs-secret\n");
    let backend = support::echo_backend().spawn().await;
    let shunt = start(
        &backend,
        &[
            "--jwt-public-key-file",
            keys.path(),
            "--jwt-secret-file",
            secret.path(),
        ],
    )
    .await;
    let a = shunt.addr();
    // The PEM keys have no kid: every key of the token's algorithm is tried.
    for case in ["rs256", "ps256", "es256", "es384", "eddsa", "no_kid"] {
        let ok = bearer(a, "/", &m.token(case)).await;
        assert_eq!(ok.status, Some(200), "{case}: {ok:?}");
    }
    // HS256 keeps working next to the keys; the RSA key's PEM is no HMAC secret.
    let hs = shunt::testing::sign_hs256(
        b"hs-secret",
        &json!({"exp": 4_000_000_000u64, "sub": "svc"}),
    );
    assert_eq!(bearer(a, "/", &hs).await.status, Some(200));
    assert_eq!(
        bearer(a, "/", &m.token("confusion")).await.status,
        Some(401)
    );
    assert_eq!(
        bearer(a, "/", &m.token("wrong_key")).await.status,
        Some(401)
    );
    shunt.stop().await;

    // --jwt-algorithms narrows what the keys allow.
    let shunt = start(
        &backend,
        &[
            "--jwt-public-key-file",
            keys.path(),
            "--jwt-algorithms",
            "RS256,EdDSA",
        ],
    )
    .await;
    assert_eq!(
        bearer(shunt.addr(), "/", &m.token("rs256")).await.status,
        Some(200)
    );
    assert_eq!(
        bearer(shunt.addr(), "/", &m.token("eddsa")).await.status,
        Some(200)
    );
    assert_eq!(
        bearer(shunt.addr(), "/", &m.token("ps256")).await.status,
        Some(401)
    );
    assert_eq!(
        bearer(shunt.addr(), "/", &m.token("es256")).await.status,
        Some(401)
    );
    shunt.stop().await;

    let small = TempFile::new("small.pem", m.0["small_pem"].as_str().unwrap());
    let err = shunt::Config::from_args(["--jwt-public-key-file", small.path()])
        .unwrap_err()
        .to_string();
    assert!(err.contains("1024") && err.contains("2048"), "{err}");
    let err = shunt::Config::from_args(["--jwt-jwks-url", "http://127.0.0.1:9/jwks"])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("https") && err.contains("jwt_jwks_insecure_http"),
        "{err}"
    );
    let err = shunt::Config::from_args([
        "--jwt-public-key-file",
        keys.path(),
        "--jwt-algorithms",
        "none",
    ])
    .unwrap_err()
    .to_string();
    assert!(err.contains("--jwt-algorithms"), "{err}");
}

/// `/status`'s `jwks` object.
async fn jwks_status(shunt: &support::Shunt) -> Value {
    shunt.admin_json("/status").await["jwks"].clone()
}

#[tokio::test]
async fn jwks_url_rotation_outages_and_the_last_good_keys() {
    let Some(m) = Minted::new() else { return };
    let idp = Idp::start(Mode::Serve(m.jwks(&["rsa"]))).await;
    let backend = support::echo_backend().spawn().await;
    let url = idp.url();
    let shunt = start(
        &backend,
        &[
            "--jwt-jwks-url",
            &url,
            "--jwt-jwks-insecure-http",
            "--jwt-jwks-refresh",
            "1s",
        ],
    )
    .await;
    shunt.wait_ready().await;
    let a = shunt.addr();
    assert_eq!(bearer(a, "/", &m.token("rs256")).await.status, Some(200));
    let status = jwks_status(&shunt).await;
    assert_eq!(status["url"], url.as_str());
    assert_eq!(status["keys"][0]["kid"], "rsa");
    assert!(status["last_success"].is_string(), "{status}");

    // Rotation: a new kid appears; its first token triggers a refresh and passes.
    idp.set(Mode::Serve(m.jwks(&["rsa", "rsa2"])));
    assert_eq!(bearer(a, "/", &m.token("rsa2")).await.status, Some(200));
    assert_eq!(bearer(a, "/", &m.token("rs256")).await.status, Some(200));
    // The old key is removed: its tokens stop working at the next refresh.
    idp.set(Mode::Serve(m.jwks(&["rsa2"])));
    assert!(
        eventually(Duration::from_secs(10), async || bearer(
            a,
            "/",
            &m.token("rs256")
        )
        .await
        .status
            == Some(401))
        .await
    );

    // Outages: the last good keys stay in use; each failure is shown and counted.
    for (mode, shows) in [
        (Mode::Status(500), "HTTP 500"),
        (Mode::Huge, "1 MiB"),
        (Mode::Serve("<html>".into()), "not a JWKS"),
        (Mode::Close, "request failed"),
    ] {
        idp.set(mode);
        let mut last = String::new();
        let shown = eventually(Duration::from_secs(10), async || {
            let s = jwks_status(&shunt).await;
            last = s.to_string();
            s["last_error"].as_str().is_some_and(|e| e.contains(shows))
        })
        .await;
        assert!(shown, "last_error shows {shows}: {last}");
        assert_eq!(bearer(a, "/", &m.token("rsa2")).await.status, Some(200));
    }
    let (_, metrics) = shunt.admin_get("/metrics").await.unwrap();
    let failures: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("shunt_jwks_refresh_failures_total "))
        .and_then(|n| n.parse().ok())
        .unwrap_or_default();
    assert!(failures >= 4, "{metrics}");
    // Back up: the error clears.
    idp.set(Mode::Serve(m.jwks(&["rsa2"])));
    assert!(
        eventually(Duration::from_secs(10), async || jwks_status(&shunt).await
            ["last_error"]
            .is_null())
        .await
    );
    let logs = support::logs();
    assert!(logs.contains("JWKS fetch failed"), "the failure is logged");
    shunt.stop().await;
}

#[tokio::test]
async fn unknown_kids_fetch_the_jwks_at_most_once_per_min_refresh() {
    let Some(m) = Minted::new() else { return };
    let idp = Idp::start(Mode::Serve(m.jwks(&["rsa"]))).await;
    let backend = support::echo_backend().spawn().await;
    let url = idp.url();
    let shunt = start(
        &backend,
        &["--jwt-jwks-url", &url, "--jwt-jwks-insecure-http=true"],
    )
    .await;
    shunt.wait_ready().await;
    assert_eq!(idp.fetches(), 1);
    // 1,000 tokens with a random kid: the signature and claims of a real token.
    let real = m.token("rs256");
    let (_, rest) = real.split_once('.').unwrap();
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let tokens: Vec<String> = (0..1000)
        .map(|i| {
            let header = json!({"alg": "RS256", "kid": format!("random-{i}-{}", rand_hex())});
            format!("{}.{rest}", b64.encode(header.to_string()))
        })
        .collect();
    let a = shunt.addr();
    let mut tasks = tokio::task::JoinSet::new();
    for chunk in tokens.chunks(125) {
        let chunk = chunk.to_vec();
        tasks.spawn(async move {
            for t in chunk {
                let answer = bearer(a, "/", &t).await;
                assert_eq!(answer.status, Some(401), "{answer:?}");
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    assert!(
        idp.fetches() <= 2,
        "1,000 unknown kids fetched the JWKS {} times (start + at most one)",
        idp.fetches()
    );
    let metrics = auth_failures(&shunt).await;
    assert!(
        metrics.contains("reason=\"unknown_key\"} 1000"),
        "{metrics}"
    );
    shunt.stop().await;
}

fn rand_hex() -> String {
    let mut b = [0u8; 8];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).unwrap();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[tokio::test]
async fn starting_with_the_idp_down_answers_503_then_recovers() {
    let Some(m) = Minted::new() else { return };
    let idp = Idp::start(Mode::Status(503)).await;
    let backend = support::echo_backend().spawn().await;
    let url = idp.url();
    let shunt = start(
        &backend,
        &["--jwt-jwks-url", &url, "--jwt-jwks-insecure-http"],
    )
    .await;
    let a = shunt.addr();
    let token = m.token("rs256");
    let mut last = String::new();
    let refused = eventually(Duration::from_secs(5), async || {
        let r = bearer(a, "/", &token).await;
        last = format!("{r:?}");
        r.status == Some(503) && r.body().contains("HTTP 503")
    })
    .await;
    assert!(refused, "503 naming the JWKS problem: {last}");
    let r = bearer(a, "/", &token).await;
    assert_eq!(
        r.header("x-shunt-error").as_deref(),
        Some("jwks_unavailable")
    );
    assert!(
        r.body().contains("JWKS") && !r.text.contains(&token),
        "{r:?}"
    );
    assert!(
        backend.seen().is_empty(),
        "never open: {:?}",
        backend.seen()
    );
    let (status, ready) = shunt.admin_get("/readyz").await.unwrap();
    assert_eq!(status, 503, "{ready}");
    assert!(ready.contains("JWKS"), "{ready}");
    assert!(
        auth_failures(&shunt)
            .await
            .contains("reason=\"jwks_unavailable\"")
    );
    // The provider comes up: the backoff retries find it.
    idp.set(Mode::Serve(m.jwks(&["rsa"])));
    assert!(
        eventually(Duration::from_secs(10), async || bearer(a, "/", &token)
            .await
            .status
            == Some(200))
        .await
    );
    shunt.wait_ready().await;
    shunt.stop().await;
}

/// A WebSocket backend that records each handshake head, answers 101
/// (selecting no subprotocol) and sends one text message, `ok`.
struct WsRecorder {
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl WsRecorder {
    async fn start() -> WsRecorder {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let heads: Arc<Mutex<Vec<String>>> = Arc::default();
        let h = heads.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(ws_answer(stream, h.clone()));
            }
        });
        WsRecorder { addr, heads, task }
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }
}

impl Drop for WsRecorder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn ws_answer(mut stream: TcpStream, heads: Arc<Mutex<Vec<String>>>) {
    let Ok(Some(head)) =
        tokio::time::timeout(IO_TIMEOUT, support::raw::read_head(&mut stream)).await
    else {
        return;
    };
    let head = String::from_utf8_lossy(&head).into_owned();
    let key = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("sec-websocket-key")
            .then(|| v.trim().to_owned())
    });
    if head.to_ascii_lowercase().contains("x-shunt-probe") {
        let _ = stream
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .await;
        return;
    }
    heads.lock().unwrap().push(head);
    let Some(key) = key else { return };
    let mut sha = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    sha.update(key.as_bytes());
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    let accept = base64::engine::general_purpose::STANDARD.encode(sha.finish());
    let answer = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    let _ = stream.write_all(answer.as_bytes()).await;
    let _ = stream.write_all(b"\x81\x02ok").await;
    // Hold the connection until the client closes (bounded); answer its Close.
    let mut sink = [0u8; 1024];
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(n) = stream.read(&mut sink).await {
            if n == 0 {
                break;
            }
            if sink[0] & 0x0f == 0x8 {
                let _ = stream.write_all(b"\x88\x00").await;
                break;
            }
        }
    })
    .await;
}

const PY_CLIENT: &str = r#"
import asyncio, sys, websockets
async def main():
    async with websockets.connect(sys.argv[1], subprotocols=["bearer", sys.argv[2]], open_timeout=5) as ws:
        print(ws.subprotocol)
        print(await asyncio.wait_for(ws.recv(), 5))
asyncio.run(main())
"#;

#[tokio::test]
async fn token_in_sec_websocket_protocol_with_python_websockets() {
    let Some(m) = Minted::new() else { return };
    let jwks = TempFile::new("jwks.json", &m.jwks(&["rsa"]));
    let tokens = TempFile::new("tokens", "static-s3cret\n");
    let backend = WsRecorder::start().await;
    let config = TempFile::new(
        "shunt.toml",
        &format!(
            "token_subprotocol = \"bearer\"\njwt_jwks_file = \"{}\"\ntoken_file = \"{}\"\nforward_claims = {{ sub = \"x-user-id\", tenant = \"x-tenant\", level = \"x-level\" }}\n\n[[routes]]\npath = \"/audio\"\nvia = [\"direct\"]\nauth = \"jwt\"\n\n[[routes]]\npath = \"/static\"\nvia = [\"direct\"]\nauth = \"token\"\n",
            jwks.path(),
            tokens.path()
        ),
    );
    support::capture_logs();
    let shunt = support::shunt()
        .direct(format!("http://{}", backend.addr))
        .arg("--health-interval", "60s")
        .arg("--drain-timeout", "1s")
        .arg("--config", config.path())
        .start()
        .await;
    let token = m.token("rs256");
    let url = format!("ws://{}/audio", shunt.addr());
    // tokio's Command: the in-process shunt runs on this test's runtime.
    let out = tokio::time::timeout(
        Duration::from_secs(20),
        tokio::process::Command::new("python3")
            .args(["-c", PY_CLIENT, &url, &token])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the python client ends in time")
    .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "python websockets: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // shunt selected `bearer` (the backend selected nothing), and the message came through.
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        ["bearer", "ok"],
        "{stdout}"
    );
    let heads = backend.heads();
    let head = heads.last().expect("the backend saw the handshake");
    assert!(!head.contains(&token), "the backend saw the token: {head}");
    assert!(
        !head.to_ascii_lowercase().contains("sec-websocket-protocol"),
        "{head}"
    );
    assert!(
        head.contains("x-user-id: alice") && head.contains("x-tenant: acme"),
        "{head}"
    );
    assert!(head.contains("x-level: 7"), "{head}");

    // Another protocol offered: it alone is forwarded, the 101 stays the backend's.
    let (status, ws, answer) = ws_open(
        shunt.addr(),
        "127.0.0.1",
        "/audio",
        &[
            &format!("Sec-WebSocket-Protocol: chat.v1, bearer, {token}"),
            "x-user-id: mallory",
        ],
    )
    .await;
    assert_eq!(status, Some(101), "{answer:?}");
    assert_eq!(answer.header("sec-websocket-protocol"), None, "{answer:?}");
    let head = backend.heads().last().unwrap().clone();
    assert!(
        head.contains("sec-websocket-protocol: chat.v1\r\n"),
        "{head}"
    );
    assert!(
        !head.contains("mallory") && head.contains("x-user-id: alice"),
        "{head}"
    );
    // The live call shows who it is.
    let calls = shunt.admin_json("/calls").await;
    assert!(
        calls["calls"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["user"] == "alice"),
        "{calls}"
    );
    drop(ws);

    // A static token works the same way; a client's copy of a claim header goes.
    let (status, ws, answer) = ws_open(
        shunt.addr(),
        "127.0.0.1",
        "/static",
        &[
            "Sec-WebSocket-Protocol: bearer, static-s3cret",
            "x-user-id: mallory",
        ],
    )
    .await;
    assert_eq!(status, Some(101), "{answer:?}");
    assert_eq!(
        answer.header("sec-websocket-protocol").as_deref(),
        Some("bearer")
    );
    let head = backend.heads().last().unwrap().clone();
    assert!(
        !head.contains("static-s3cret") && !head.contains("mallory"),
        "{head}"
    );
    drop(ws);
    let (status, _, _) = ws_open(
        shunt.addr(),
        "127.0.0.1",
        "/audio",
        &["Sec-WebSocket-Protocol: bearer, not-a-jwt"],
    )
    .await;
    assert_eq!(status, Some(401));
    let logs = support::logs();
    assert!(!logs.contains(&token) && !logs.contains("static-s3cret"));
    assert!(logs.contains("user=alice"), "the access log names the user");
    shunt.stop().await;
}

#[tokio::test]
async fn accepted_credentials_are_stripped_unless_forward_credential() {
    let Some(m) = Minted::new() else { return };
    let jwks = TempFile::new("jwks.json", &m.jwks(&["rsa"]));
    let backend = support::echo_backend().spawn().await;
    let config = TempFile::new(
        "shunt.toml",
        &format!(
            "jwt_jwks_file = \"{}\"\nauth = \"jwt\"\n\n[[routes]]\npath = \"/strip\"\nvia = [\"direct\"]\nforward_claims = {{ sub = \"x-user-id\" }}\n\n[[routes]]\npath = \"/keep\"\nvia = [\"direct\"]\nforward_credential = true\n",
            jwks.path()
        ),
    );
    support::capture_logs();
    let shunt = support::shunt()
        .direct(backend.url())
        .arg("--health-interval", "60s")
        .arg("--config", config.path())
        .start()
        .await;
    let a = shunt.addr();
    let token = m.token("rs256");
    let seen = |answer: &support::raw::Answer| -> Value {
        serde_json::from_str(answer.body()).unwrap_or_else(|_| panic!("{answer:?}"))
    };
    let header = support::seen_header;
    let r = raw(
        a,
        &get(
            "/strip/a?x=1",
            &[
                &format!("Authorization: Bearer {token}"),
                &format!("Cookie: theme=dark; shunt_token={token}"),
                "X-User-Id: mallory",
            ],
        ),
    )
    .await;
    assert_eq!(r.status, Some(200), "{r:?}");
    let v = seen(&r);
    assert!(!v.to_string().contains(&token), "{v}");
    assert!(header(&v, "authorization").is_empty(), "{v}");
    assert_eq!(header(&v, "cookie"), ["theme=dark"], "{v}");
    assert_eq!(header(&v, "x-user-id"), ["alice"], "{v}");
    let r = raw(a, &get(&format!("/strip/b?token={token}&y=2"), &[])).await;
    assert_eq!(r.status, Some(200), "{r:?}");
    assert!(!r.body().contains(&token), "{r:?}");
    // forward_credential keeps them for a backend that checks them again.
    let r = raw(
        a,
        &get("/keep", &[&format!("Authorization: Bearer {token}")]),
    )
    .await;
    let v = seen(&r);
    assert_eq!(
        header(&v, "authorization"),
        [format!("Bearer {token}")],
        "{v}"
    );
    shunt.stop().await;
}

/// `shunt doctor` (the real binary) with the JWKS URL and `--token`.
async fn doctor(url: &str, backend: &str, token: &str) -> support::bin::Run {
    support::bin::run_shunt(
        &[
            "doctor",
            "--timeout",
            "3s",
            "--direct",
            backend,
            "--listen",
            "127.0.0.1:1",
            "--jwt-jwks-url",
            url,
            "--jwt-jwks-insecure-http",
            "--jwt-issuer",
            ISSUER,
            "--jwt-audience",
            AUDIENCE,
            "--token",
            token,
        ],
        Duration::from_secs(30),
    )
    .await
}

#[tokio::test]
async fn doctor_reports_the_jwks_keys_and_why_a_token_fails() {
    let Some(m) = Minted::new() else { return };
    let idp = Idp::start(Mode::Serve(m.jwks(&["rsa", "ed"]))).await;
    let backend = support::echo_backend().spawn().await;
    let url = idp.url();
    let good = m.token("rs256");
    let run = doctor(&url, &backend.url(), &good).await;
    let out = format!("{}{}", run.stdout, run.stderr);
    assert!(
        out.contains(&format!("ok   jwks {url}: 2 keys: rsa RSA (RS256")),
        "{out}"
    );
    assert!(out.contains("ed Ed25519 (EdDSA)"), "{out}");
    assert!(
        out.contains("ok   jwt --token: the token verifies (sub alice)"),
        "{out}"
    );
    assert!(!out.contains(&good), "the token is never printed");
    for (case, why) in [
        ("expired", "expired"),
        ("wrong_aud", "wrong audience"),
        ("unknown_kid", "no key for this token"),
    ] {
        let token = m.token(case);
        let run = doctor(&url, &backend.url(), &token).await;
        let out = format!("{}{}", run.stdout, run.stderr);
        assert!(
            out.contains("FAIL jwt --token: the token does not verify"),
            "{out}"
        );
        assert!(out.contains(why), "{case}: {out}");
        assert!(!out.contains(&token), "the token is never printed");
    }
    idp.set(Mode::Status(500));
    let run = doctor(&url, &backend.url(), &good).await;
    assert!(
        run.stdout.contains("FAIL jwks") && run.stdout.contains("HTTP 500"),
        "{}",
        run.stdout
    );
}

#[tokio::test]
async fn the_jwks_file_and_a_new_jwks_url_take_effect_on_reload() {
    let Some(m) = Minted::new() else { return };
    let jwks = TempFile::new("jwks.json", &m.jwks(&["rsa"]));
    let backend = support::echo_backend().spawn().await;
    let config = TempFile::new(
        "shunt.toml",
        &format!("auth = \"jwt\"\njwt_jwks_file = \"{}\"\n", jwks.path()),
    );
    support::capture_logs();
    let shunt = support::shunt()
        .direct(backend.url())
        .arg("--health-interval", "60s")
        .arg("--config", config.path())
        .flag("--no-watch")
        .start()
        .await;
    let a = shunt.addr();
    assert_eq!(bearer(a, "/", &m.token("rs256")).await.status, Some(200));
    assert_eq!(bearer(a, "/", &m.token("rsa2")).await.status, Some(401));
    TempFile::write(&jwks.0, &m.jwks(&["rsa2"]));
    assert!(shunt.reload().await);
    assert_eq!(bearer(a, "/", &m.token("rsa2")).await.status, Some(200));
    assert_eq!(bearer(a, "/", &m.token("rs256")).await.status, Some(401));

    // A JWKS URL named by a reload starts being fetched.
    let idp = Idp::start(Mode::Serve(m.jwks(&["ec256"]))).await;
    TempFile::write(
        &config.0,
        &format!(
            "auth = \"jwt\"\njwt_jwks_url = \"{}\"\njwt_jwks_insecure_http = true\n",
            idp.url()
        ),
    );
    assert!(shunt.reload().await);
    let token = m.token("es256");
    assert!(
        eventually(Duration::from_secs(5), async || bearer(a, "/", &token)
            .await
            .status
            == Some(200))
        .await
    );
    assert!(idp.fetches() >= 1);
    assert_eq!(bearer(a, "/", &m.token("rsa2")).await.status, Some(401));
    shunt.stop().await;
}

/// Whether headless Chromium can be driven (see `tests/it/dashboard.rs`);
/// a visible skip, or a failure where the browser is required.
fn browser_available() -> bool {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let chromium = std::env::var_os("CHROMIUM")
        .map_or_else(|| "/usr/bin/chromium".into(), std::path::PathBuf::from);
    let missing = if !chromium.is_file() {
        Some(format!(
            "{} not found (apt-get install chromium)",
            chromium.display()
        ))
    } else if !dir.join("node_modules/playwright-core").is_dir() {
        Some("tests/browser/node_modules missing (run npm ci in tests/browser)".to_owned())
    } else {
        None
    };
    support::require(Part::Browser, missing.map_or(Ok(()), Err)).is_some()
}

#[tokio::test]
async fn chromium_sends_the_token_as_a_subprotocol_and_the_backend_never_sees_it() {
    if !browser_available() {
        return;
    }
    let Some(m) = Minted::new() else { return };
    let jwks = TempFile::new("jwks.json", &m.jwks(&["ec256"]));
    let backend = WsRecorder::start().await;
    let shunt = support::shunt()
        .direct(format!("http://{}", backend.addr))
        .arg("--health-interval", "60s")
        .arg("--drain-timeout", "1s")
        .arg("--jwt-jwks-file", jwks.path())
        .arg("--token-subprotocol", "bearer")
        .arg("--route", "/audio=direct")
        .start()
        .await;
    let token = m.token("es256");
    let plan = json!({"url": format!("ws://{}/audio", shunt.addr()), "token": token});
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new("node")
            .arg("subprotocol.js")
            .arg(plan.to_string())
            .current_dir(dir)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the browser script ends in time")
    .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: Value = stdout
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .and_then(|r| serde_json::from_str(r).ok())
        .unwrap_or_else(|| panic!("no RESULT: {stdout}"));
    assert_eq!(result, json!({"protocol": "bearer", "message": "ok"}));
    let heads = backend.heads();
    let head = heads.last().expect("the backend saw the handshake");
    assert!(!head.contains(&token), "the backend saw the token: {head}");
    assert!(
        !head.to_ascii_lowercase().contains("sec-websocket-protocol"),
        "{head}"
    );
    shunt.stop().await;
}
