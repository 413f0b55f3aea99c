//! Echo backend: the stand-in for the call backend, used by the integration
//! tests (`support::echo_backend()`) and by `examples/echo_backend.rs`.
//!
//! Behaviour, per request:
//! - WebSocket upgrade on any path: 101 with `x-backend: NAME`, then a text
//!   message `hello from NAME`, then every text/binary message is echoed
//!   (fragmented messages are reassembled first; pings are answered).
//! - `GET /health`: 200 `ok`.
//! - `POST`/`PUT`: 200 with the request body echoed verbatim.
//! - anything else: 200 with a JSON description of the request (method,
//!   path and query, headers) so tests can see what the proxy forwarded.
//!
//! A `delay_ms=N` query parameter delays the answer by N ms (at most 10 s)
//! on any non-upgrade request.
//!
//! Every request target (path and query, upgrades included) is recorded, so
//! tests can see exactly what reached the backend ([`EchoServer::seen`]).
//!
//! Every response carries `x-backend: NAME`. A request with header
//! `x-echo-hop-response: 1` gets hop-by-hop headers in its response
//! (`Connection: x-resp-hop`, `x-resp-hop: 1`, `Keep-Alive: timeout=99`) so
//! tests can check the proxy strips them on the way back. This file is self-contained (it
//! is also compiled into an example through `#[path]`), so it only uses
//! crates from the package's dependencies.
#![allow(dead_code)]

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use fastwebsockets::{FragmentCollector, Frame, OpCode, Payload};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Largest WebSocket frame the backend accepts (the tests send 1 MiB).
pub(crate) const MAX_MESSAGE_SIZE: usize = 64 << 20;
/// Largest request body the backend echoes.
pub(crate) const MAX_BODY_SIZE: usize = 64 << 20;
/// Longest `delay_ms` honoured.
const MAX_DELAY: Duration = Duration::from_secs(10);
/// How long `stop()` waits for connection tasks to finish.
const STOP_WAIT: Duration = Duration::from_secs(5);

/// A running echo backend. `stop()` (or drop) closes the listener and every
/// live connection, HTTP and WebSocket alike.
pub(crate) struct EchoServer {
    addr: SocketAddr,
    name: Arc<str>,
    cancel: CancellationToken,
    tracker: TaskTracker,
    websockets: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<String>>>,
}

/// What every connection task needs.
#[derive(Clone)]
struct Ctx {
    name: Arc<str>,
    peer: SocketAddr,
    cancel: CancellationToken,
    tracker: TaskTracker,
    websockets: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<String>>>,
}

impl EchoServer {
    /// Binds `addr` (port 0 picks a free port) and starts serving.
    pub(crate) async fn bind(addr: SocketAddr, name: &str) -> io::Result<EchoServer> {
        let listener = TcpListener::bind(addr).await?;
        EchoServer::serve(listener, name)
    }

    /// Starts serving on an already bound listener.
    pub(crate) fn serve(listener: TcpListener, name: &str) -> io::Result<EchoServer> {
        let addr = listener.local_addr()?;
        let name: Arc<str> = Arc::from(name);
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        let websockets = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let ctx = Ctx {
            name: name.clone(),
            peer: addr,
            cancel: cancel.clone(),
            tracker: tracker.clone(),
            websockets: websockets.clone(),
            requests: requests.clone(),
            seen: seen.clone(),
        };
        tracker.spawn(accept_loop(listener, ctx));
        Ok(EchoServer {
            addr,
            name,
            cancel,
            tracker,
            websockets,
            requests,
            seen,
        })
    }

    /// The bound address.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The name announced in `x-backend` and in the WebSocket hello.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// How many WebSocket sessions are open right now.
    pub(crate) fn active_websockets(&self) -> usize {
        self.websockets.load(Ordering::SeqCst)
    }

    /// How many plain (non-upgrade) HTTP requests have arrived so far.
    pub(crate) fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// The request targets (path and query) that reached the backend, in order.
    pub(crate) fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Closes the listener and every live connection, and waits (bounded)
    /// until they are all gone, so the port refuses connections afterwards.
    pub(crate) async fn stop(&self) {
        self.cancel.cancel();
        self.tracker.close();
        let _ = tokio::time::timeout(STOP_WAIT, self.tracker.wait()).await;
    }

    /// Resolves once `stop()` has been called.
    pub(crate) async fn stopped(&self) {
        self.cancel.cancelled().await;
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

async fn accept_loop(listener: TcpListener, ctx: Ctx) {
    loop {
        let accepted = tokio::select! {
            _ = ctx.cancel.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let ctx = Ctx {
                    peer,
                    ..ctx.clone()
                };
                ctx.tracker.clone().spawn(serve_connection(stream, ctx));
            }
            // Transient (e.g. EMFILE): back off a little and go on.
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

async fn serve_connection(stream: TcpStream, ctx: Ctx) {
    let _ = stream.set_nodelay(true);
    let cancel = ctx.cancel.clone();
    let service = service_fn(move |req| handle(req, ctx.clone()));
    let conn = http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::select! {
        _ = cancel.cancelled() => {}
        _ = conn => {}
    }
}

async fn handle(mut req: Request<Incoming>, ctx: Ctx) -> Result<Response<Full<Bytes>>, Infallible> {
    let target = req
        .uri()
        .path_and_query()
        .map_or_else(|| "/".to_owned(), ToString::to_string);
    ctx.seen
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(target);
    if fastwebsockets::upgrade::is_upgrade_request(&req) {
        return Ok(upgrade(&mut req, ctx));
    }
    ctx.requests.fetch_add(1, Ordering::SeqCst);
    let hop_response = req
        .headers()
        .get("x-echo-hop-response")
        .is_some_and(|v| v == "1");
    if let Some(delay) = requested_delay(&req) {
        tokio::time::sleep(delay).await;
    }
    let mut response = match (req.method(), req.uri().path()) {
        (&Method::GET, "/health") => reply(
            &ctx,
            StatusCode::OK,
            "text/plain",
            Bytes::from_static(b"ok"),
        ),
        (&Method::POST | &Method::PUT, _) => {
            match Limited::new(req.into_body(), MAX_BODY_SIZE).collect().await {
                Ok(body) => reply(
                    &ctx,
                    StatusCode::OK,
                    "application/octet-stream",
                    body.to_bytes(),
                ),
                Err(e) => reply(
                    &ctx,
                    StatusCode::BAD_REQUEST,
                    "text/plain",
                    Bytes::from(format!("body: {e}\n")),
                ),
            }
        }
        _ => reply(
            &ctx,
            StatusCode::OK,
            "application/json",
            describe(&req, &ctx),
        ),
    };
    if hop_response {
        add_hop_headers(&mut response);
    }
    Ok(response)
}

/// The `delay_ms=N` query parameter (capped at [`MAX_DELAY`]), if any.
fn requested_delay(req: &Request<Incoming>) -> Option<Duration> {
    let query = req.uri().query()?;
    let ms = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("delay_ms="))?
        .parse::<u64>()
        .ok()?;
    Some(Duration::from_millis(ms).min(MAX_DELAY))
}

/// Adds hop-by-hop headers to `response` (see the module docs).
fn add_hop_headers(response: &mut Response<Full<Bytes>>) {
    let headers = response.headers_mut();
    headers.insert(
        "connection",
        hyper::header::HeaderValue::from_static("x-resp-hop"),
    );
    headers.insert("x-resp-hop", hyper::header::HeaderValue::from_static("1"));
    headers.insert(
        "keep-alive",
        hyper::header::HeaderValue::from_static("timeout=99"),
    );
}

fn reply(ctx: &Ctx, status: StatusCode, content_type: &str, body: Bytes) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("x-backend", &*ctx.name)
        .header("content-type", content_type)
        .body(Full::new(body))
        .expect("static response parts are valid")
}

/// JSON describing the request as the backend saw it.
fn describe(req: &Request<Incoming>, ctx: &Ctx) -> Bytes {
    let mut headers = serde_json::Map::new();
    for (name, value) in req.headers() {
        let entry = headers
            .entry(name.as_str().to_owned())
            .or_insert_with(|| serde_json::Value::Array(Vec::new()));
        if let serde_json::Value::Array(values) = entry {
            values.push(
                String::from_utf8_lossy(value.as_bytes())
                    .into_owned()
                    .into(),
            );
        }
    }
    let body = serde_json::json!({
        "backend": &*ctx.name,
        "peer": ctx.peer.to_string(),
        "method": req.method().as_str(),
        "uri": req.uri().to_string(),
        "path": req.uri().path(),
        "query": req.uri().query(),
        "version": format!("{:?}", req.version()),
        "headers": headers,
    });
    Bytes::from(body.to_string())
}

fn upgrade(req: &mut Request<Incoming>, ctx: Ctx) -> Response<Full<Bytes>> {
    match fastwebsockets::upgrade::upgrade(&mut *req) {
        Ok((response, fut)) => {
            let name = ctx.name.clone();
            let cancel = ctx.cancel.clone();
            let websockets = ctx.websockets.clone();
            ctx.tracker.spawn(async move {
                tokio::select! {
                    _ = cancel.cancelled() => {}
                    _ = echo_messages(fut, &name, &websockets) => {}
                }
            });
            let (mut parts, _) = response.into_parts();
            parts.headers.insert(
                "x-backend",
                ctx.name
                    .parse()
                    .unwrap_or_else(|_| hyper::header::HeaderValue::from_static("invalid")),
            );
            Response::from_parts(parts, Full::new(Bytes::new()))
        }
        Err(e) => reply(
            &ctx,
            StatusCode::BAD_REQUEST,
            "text/plain",
            Bytes::from(format!("upgrade: {e}\n")),
        ),
    }
}

/// Sends the hello, then echoes every data message until close or error.
async fn echo_messages(
    fut: fastwebsockets::upgrade::UpgradeFut,
    name: &str,
    websockets: &Arc<AtomicUsize>,
) {
    let Ok(mut ws) = fut.await else { return };
    let _session = Session::open(websockets);
    ws.set_max_message_size(MAX_MESSAGE_SIZE);
    ws.set_auto_pong(true);
    ws.set_auto_close(true);
    let mut ws = FragmentCollector::new(ws);
    let hello = format!("hello from {name}").into_bytes();
    if ws
        .write_frame(Frame::text(Payload::Owned(hello)))
        .await
        .is_err()
    {
        return;
    }
    loop {
        let frame = match ws.read_frame().await {
            Ok(frame) => frame,
            Err(_) => return,
        };
        match frame.opcode {
            OpCode::Text | OpCode::Binary => {
                let echo = Frame::new(true, frame.opcode, None, frame.payload);
                if ws.write_frame(echo).await.is_err() {
                    return;
                }
            }
            // auto_close has already answered the Close.
            OpCode::Close => return,
            _ => {}
        }
    }
}

/// Counts a WebSocket session as open for as long as it lives.
struct Session<'a>(&'a AtomicUsize);

impl<'a> Session<'a> {
    fn open(counter: &'a AtomicUsize) -> Session<'a> {
        counter.fetch_add(1, Ordering::SeqCst);
        Session(counter)
    }
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}
