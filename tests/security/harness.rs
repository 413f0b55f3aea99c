//! Helpers of the security tests: an in-file backend (HTTP echo + WebSocket
//! echo) that records what reached it, shunt started in-process, and raw
//! clients bound to chosen loopback source addresses.

use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use fastwebsockets::{Frame, OpCode, Payload, Role, WebSocket};
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// Every wait in these tests is bounded by this.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// A backend answering 200 with the request target, and echoing WebSocket frames.
pub struct Backend {
    pub addr: SocketAddr,
    /// Request targets (path and query) that reached the backend.
    pub seen: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Backend {
    pub async fn spawn() -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let record = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let record = record.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| answer(req, record.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades()
                        .await;
                });
            }
        });
        Backend { addr, seen, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

async fn answer(
    mut req: Request<Incoming>,
    record: Arc<Mutex<Vec<String>>>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let target = req
        .uri()
        .path_and_query()
        .map_or("/".to_owned(), |pq| pq.to_string());
    record.lock().unwrap().push(target.clone());
    if fastwebsockets::upgrade::is_upgrade_request(&req) {
        let (resp, fut) = fastwebsockets::upgrade::upgrade(&mut req).unwrap();
        tokio::spawn(async move {
            let Ok(mut ws) = fut.await else { return };
            while let Ok(frame) = ws.read_frame().await {
                match frame.opcode {
                    OpCode::Text | OpCode::Binary => {
                        let echo = Frame::new(true, frame.opcode, None, frame.payload);
                        if ws.write_frame(echo).await.is_err() {
                            return;
                        }
                    }
                    OpCode::Close => return,
                    _ => {}
                }
            }
        });
        return Ok(resp.map(|_| Full::new(Bytes::new())));
    }
    Ok(Response::new(Full::new(Bytes::from(format!(
        "target={target}\n"
    )))))
}

/// A started shunt in front of `backend`, listening on 127.0.0.1.
pub struct Shunt {
    pub running: Option<shunt::app::Running>,
    pub addr: SocketAddr,
    #[allow(dead_code)]
    pub admin: Option<SocketAddr>,
}

impl Shunt {
    pub async fn start(backend: &Backend, args: &[&str]) -> Shunt {
        capture_logs();
        let mut argv: Vec<String> = vec![
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--admin".into(),
            "127.0.0.1:0".into(),
            "--direct".into(),
            backend.url(),
            "--health-interval".into(),
            "60s".into(),
            "--drain-timeout".into(),
            "1s".into(),
        ];
        argv.extend(args.iter().map(|s| (*s).to_owned()));
        let config = shunt::config::Config::from_args(argv).expect("config");
        let running = shunt::app::start(config).await.expect("start");
        Shunt {
            addr: running.listen_addr(),
            admin: running.admin_addr(),
            running: Some(running),
        }
    }

    pub async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown();
            tokio::time::timeout(Duration::from_secs(10), r.stopped())
                .await
                .expect("shunt stops");
        }
    }

    pub async fn reload(&self) -> bool {
        self.running
            .as_ref()
            .unwrap()
            .reloader()
            .reload("test")
            .await
            .is_ok()
    }
}

impl Drop for Shunt {
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown();
        }
    }
}

/// A temporary file with `content`, removed on drop.
pub struct TempFile(pub PathBuf);

impl TempFile {
    pub fn new(name: &str, content: &str) -> TempFile {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("shunt-sec-{}-{n}-{name}", std::process::id()));
        TempFile::write(&path, content);
        TempFile(path)
    }

    pub fn write(path: &PathBuf, content: &str) {
        let mut f = std::fs::File::create(path).unwrap();
        f.write_all(content.as_bytes()).unwrap();
    }

    pub fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Connect to `addr` from loopback source address `from` (e.g. 127.0.0.2).
pub async fn connect_from(addr: SocketAddr, from: &str) -> TcpStream {
    let ip: IpAddr = from.parse().unwrap();
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(ip, 0)).unwrap();
    tokio::time::timeout(IO_TIMEOUT, socket.connect(addr))
        .await
        .expect("connect in time")
        .expect("connect")
}

/// What came back for a raw request.
#[derive(Debug)]
pub struct Answer {
    /// `None` when the connection closed without a status line.
    pub status: Option<u16>,
    pub text: String,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<String> {
        let head = self.text.split("\r\n\r\n").next()?;
        head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    }

    pub fn body(&self) -> &str {
        self.text.split_once("\r\n\r\n").map_or("", |(_, b)| b)
    }
}

/// Send `bytes` from `from` and read until the peer closes (or [`IO_TIMEOUT`]).
pub async fn raw_from(addr: SocketAddr, from: &str, bytes: &[u8]) -> Answer {
    let mut stream = connect_from(addr, from).await;
    let _ = stream.write_all(bytes).await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(IO_TIMEOUT, stream.read_to_end(&mut buf)).await;
    parse_answer(&buf)
}

/// [`raw_from`] 127.0.0.1.
pub async fn raw(addr: SocketAddr, bytes: &[u8]) -> Answer {
    raw_from(addr, "127.0.0.1", bytes).await
}

pub fn parse_answer(buf: &[u8]) -> Answer {
    let text = String::from_utf8_lossy(buf).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|s| s.parse().ok());
    Answer { status, text }
}

/// `GET target` with `extra` header lines, `Connection: close`.
pub fn get(target: &str, extra: &[&str]) -> Vec<u8> {
    let mut s = format!("GET {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for h in extra {
        s.push_str(h);
        s.push_str("\r\n");
    }
    s.push_str("\r\n");
    s.into_bytes()
}

/// A WebSocket handshake for `target` with `extra` header lines.
pub fn ws_handshake(target: &str, extra: &[&str]) -> Vec<u8> {
    let mut s = format!(
        "GET {target} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    );
    for h in extra {
        s.push_str(h);
        s.push_str("\r\n");
    }
    s.push_str("\r\n");
    s.into_bytes()
}

/// Send a WebSocket handshake from `from`; the status, and on 101 a client
/// WebSocket ready to use.
pub async fn ws_open(
    addr: SocketAddr,
    from: &str,
    target: &str,
    extra: &[&str],
) -> (Option<u16>, Option<WebSocket<TcpStream>>, Answer) {
    let mut stream = connect_from(addr, from).await;
    stream
        .write_all(&ws_handshake(target, extra))
        .await
        .unwrap();
    // Read the head byte by byte so no frame byte is swallowed.
    let mut head = Vec::new();
    let read = tokio::time::timeout(IO_TIMEOUT, async {
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && head.len() < 16 * 1024 {
            match stream.read(&mut b).await {
                Ok(1) => head.push(b[0]),
                _ => break,
            }
        }
    })
    .await;
    assert!(read.is_ok(), "handshake answer in time");
    let mut answer = parse_answer(&head);
    if answer.status == Some(101) {
        let ws = WebSocket::after_handshake(stream, Role::Client);
        return (answer.status, Some(ws), answer);
    }
    // Refusal: read the rest (body) for the caller.
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.read_to_end(&mut rest)).await;
    answer.text.push_str(&String::from_utf8_lossy(&rest));
    (answer.status, None, answer)
}

/// Send `msg` and expect it echoed, within [`IO_TIMEOUT`].
pub async fn echo(ws: &mut WebSocket<TcpStream>, msg: &str) {
    ws.write_frame(Frame::text(Payload::Owned(msg.as_bytes().to_vec())))
        .await
        .unwrap();
    let frame = tokio::time::timeout(IO_TIMEOUT, ws.read_frame())
        .await
        .expect("echo in time")
        .expect("echo frame");
    assert_eq!(&frame.payload[..], msg.as_bytes());
}

/// Poll `cond` every 50 ms for up to [`IO_TIMEOUT`].
pub async fn eventually<F, Fut>(mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + IO_TIMEOUT;
    while tokio::time::Instant::now() < deadline {
        if cond().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Every log line of the test binary, captured (installed by [`Shunt::start`]).
static LOGS: std::sync::OnceLock<Arc<Mutex<Vec<u8>>>> = std::sync::OnceLock::new();

#[derive(Clone)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Install the capturing subscriber once.
pub fn capture_logs() {
    LOGS.get_or_init(|| {
        let buf: Arc<Mutex<Vec<u8>>> = Arc::default();
        let sink = Capture(buf.clone());
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || sink.clone())
            .finish();
        let _ = tracing::subscriber::set_global_default(subscriber);
        buf
    });
}

/// The captured log text so far.
pub fn logs() -> String {
    capture_logs();
    String::from_utf8_lossy(&LOGS.get().unwrap().lock().unwrap()).into_owned()
}
