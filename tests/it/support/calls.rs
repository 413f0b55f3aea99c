//! Helpers for the call-layer tests: a WebSocket backend that hands each
//! accepted connection to the test (to stream, stop reading or record
//! frames), a raw WebSocket client that speaks frames by hand (it can go
//! silent, never pong, send fragments with pings between them or bytes that
//! are not framing at all), and shunt as a child process with its log.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use fastwebsockets::WebSocket;
use http_body_util::Empty;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::upgrade::Upgraded;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::{BoxError, IO_TIMEOUT};

/// The backend side of one WebSocket call.
pub(crate) type BackendWs = WebSocket<TokioIo<Upgraded>>;

/// A backend that upgrades every request and hands the WebSocket over.
pub(crate) struct WsBackend {
    pub addr: SocketAddr,
    accepted: mpsc::Receiver<BackendWs>,
    task: tokio::task::JoinHandle<()>,
}

impl WsBackend {
    /// Binds `127.0.0.1:0` and serves until dropped.
    pub(crate) async fn spawn() -> WsBackend {
        WsBackend::spawn_negotiating(&[]).await.0
    }

    /// `http://ADDR`.
    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The next accepted WebSocket, bounded by [`IO_TIMEOUT`].
    pub(crate) async fn accept(&mut self) -> BackendWs {
        tokio::time::timeout(IO_TIMEOUT, self.accepted.recv())
            .await
            .expect("no WebSocket reached the backend in time")
            .expect("backend stopped")
    }
}

impl Drop for WsBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A byte stream a [`RawWs`] can run over (TCP or TLS).
pub(crate) trait RawIo: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> RawIo for T {}

/// Read frames on the backend side until a Close and return its code;
/// panics if none comes within `limit`.
pub(crate) async fn next_close(ws: &mut BackendWs, limit: Duration) -> u16 {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let frame = tokio::time::timeout_at(deadline, ws.read_frame())
            .await
            .unwrap_or_else(|_| panic!("no Close reached the backend within {limit:?}"))
            .expect("a frame");
        if frame.opcode == fastwebsockets::OpCode::Close {
            return u16::from_be_bytes([frame.payload[0], frame.payload[1]]);
        }
    }
}

/// The backend side again as a WebSocket, after the test wrote raw bytes on
/// its stream (auto-close off, as [`WsBackend`] hands it over).
pub(crate) fn backend_ws(raw: TokioIo<Upgraded>) -> BackendWs {
    let mut ws = WebSocket::after_handshake(raw, fastwebsockets::Role::Server);
    ws.set_auto_close(false);
    ws
}

/// Read exactly `len` bytes from `raw` within `limit`; panics otherwise.
pub(crate) async fn read_exactly(
    raw: &mut (impl tokio::io::AsyncRead + Unpin),
    len: usize,
    limit: Duration,
) -> Vec<u8> {
    let mut got = vec![0; len];
    tokio::time::timeout(limit, raw.read_exact(&mut got))
        .await
        .unwrap_or_else(|_| panic!("{len} bytes not read within {limit:?}"))
        .expect("read");
    got
}

/// A WebSocket client that writes and reads frames by hand over a raw socket.
pub(crate) struct RawWs {
    pub stream: Box<dyn RawIo>,
    /// Bytes read past the 101 head, not yet taken.
    pub pending: Vec<u8>,
}

/// One frame as [`RawWs::read_frame`] returns it (unmasked payload).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RawFrame {
    pub fin: bool,
    pub rsv: u8,
    pub opcode: u8,
    pub masked: bool,
    pub payload: Vec<u8>,
}

impl RawFrame {
    /// The code of a Close frame.
    pub(crate) fn close_code(&self) -> Option<u16> {
        (self.opcode == 8 && self.payload.len() >= 2)
            .then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }
}

/// Encode one frame; masked with a fixed key when `mask` (client to server).
pub(crate) fn encode(fin: bool, rsv: u8, opcode: u8, payload: &[u8], mask: bool) -> Vec<u8> {
    use shunt::testing::frames;
    let key = [0x12, 0x34, 0x56, 0x78];
    let b0 = (u8::from(fin) << 7) | (rsv << 4) | opcode;
    let mut head = [0; frames::MAX_HEADER];
    let n = frames::write_header(&mut head, b0, payload.len() as u64, mask.then_some(key));
    let mut v = head[..n].to_vec();
    if mask {
        v.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        v.extend_from_slice(payload);
    }
    v
}

impl RawWs {
    /// Handshake on `addr` for `path`; the 101 head is read and checked.
    pub(crate) async fn connect(addr: SocketAddr, path: &str) -> Result<RawWs, BoxError> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        RawWs::handshake(Box::new(stream), path).await
    }

    /// Handshake over an open stream (TLS, say) for `path`.
    pub(crate) async fn handshake(stream: Box<dyn RawIo>, path: &str) -> Result<RawWs, BoxError> {
        Ok(RawWs::handshake_with(stream, path, &[]).await?.0)
    }

    /// [`RawWs::handshake`] with `extra` request header lines; also returns
    /// the 101 head.
    async fn handshake_with(
        mut stream: Box<dyn RawIo>,
        path: &str,
        extra: &[&str],
    ) -> Result<(RawWs, String), BoxError> {
        stream
            .write_all(&super::raw::ws_handshake(path, extra))
            .await?;
        // A TLS stream may keep the last record until flushed.
        stream.flush().await?;
        let mut buf = Vec::new();
        let end = loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            let mut chunk = [0; 4096];
            let n = tokio::time::timeout(IO_TIMEOUT, stream.read(&mut chunk)).await??;
            if n == 0 {
                return Err("closed before the 101".into());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        if !head.starts_with("HTTP/1.1 101") {
            return Err(format!("not a 101: {}", String::from_utf8_lossy(&buf)).into());
        }
        let ws = RawWs {
            stream,
            pending: buf[end..].to_vec(),
        };
        Ok((ws, head))
    }

    /// Write bytes as they are.
    /// Flushed: a TLS stream (tokio-rustls) may otherwise keep the last
    /// record in its buffer when the socket was full at the final write.
    pub(crate) async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), BoxError> {
        tokio::time::timeout(IO_TIMEOUT, async {
            self.stream.write_all(bytes).await?;
            self.stream.flush().await
        })
        .await??;
        Ok(())
    }

    /// Write one masked frame.
    pub(crate) async fn send(
        &mut self,
        fin: bool,
        opcode: u8,
        payload: &[u8],
    ) -> Result<(), BoxError> {
        self.send_raw(&encode(fin, 0, opcode, payload, true)).await
    }

    /// Write a masked Close with `code` (answering one, as a browser does).
    pub(crate) async fn send_close(&mut self, code: u16) -> Result<(), BoxError> {
        self.send(true, 8, &code.to_be_bytes()).await
    }

    async fn fill(&mut self, want: usize, limit: Duration) -> Result<(), BoxError> {
        let deadline = tokio::time::Instant::now() + limit;
        while self.pending.len() < want {
            let mut chunk = vec![0; 64 * 1024];
            let n = tokio::time::timeout_at(deadline, self.stream.read(&mut chunk))
                .await
                .map_err(|_| format!("no frame within {limit:?}"))??;
            if n == 0 {
                return Err("EOF".into());
            }
            self.pending.extend_from_slice(&chunk[..n]);
        }
        Ok(())
    }

    /// Read one frame, bounded by `limit`.
    pub(crate) async fn read_frame(&mut self, limit: Duration) -> Result<RawFrame, BoxError> {
        self.fill(2, limit).await?;
        let b1 = self.pending[1];
        let ext = match b1 & 0x7F {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let masked = b1 & 0x80 != 0;
        let head = 2 + ext + if masked { 4 } else { 0 };
        self.fill(head, limit).await?;
        let len = match b1 & 0x7F {
            126 => u16::from_be_bytes([self.pending[2], self.pending[3]]) as usize,
            127 => u64::from_be_bytes(self.pending[2..10].try_into()?) as usize,
            n => n as usize,
        };
        self.fill(head + len, limit).await?;
        let b0 = self.pending[0];
        let mut payload = self.pending[head..head + len].to_vec();
        if masked {
            let key = &self.pending[2 + ext..head];
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= key[i % 4];
            }
        }
        self.pending.drain(..head + len);
        Ok(RawFrame {
            fin: b0 & 0x80 != 0,
            rsv: (b0 >> 4) & 7,
            opcode: b0 & 0x0F,
            masked,
            payload,
        })
    }

    /// Read frames until a Close, answering Pings as a browser does;
    /// returns the frames before it (Pings included) and the Close.
    pub(crate) async fn read_until_close(
        &mut self,
        limit: Duration,
    ) -> Result<(Vec<RawFrame>, RawFrame), BoxError> {
        let mut frames: Vec<RawFrame> = self
            .timed_frames_until_close(limit)
            .await?
            .into_iter()
            .map(|(frame, _)| frame)
            .collect();
        let close = frames.pop().expect("the Close ends the frames");
        Ok((frames, close))
    }

    /// Whether the peer has closed the socket (EOF or reset) within `limit`,
    /// discarding anything that arrives first.
    pub(crate) async fn closed_within(&mut self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let mut chunk = [0; 4096];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => return false,
                Ok(Ok(0) | Err(_)) => return true,
                Ok(Ok(_)) => {}
            }
        }
    }
}

/// The upgrade requests' headers a [`WsBackend::spawn_negotiating`] backend saw.
pub(crate) type SeenHeaders = Arc<Mutex<Vec<hyper::HeaderMap>>>;

impl WsBackend {
    /// Like [`WsBackend::spawn`], but it records every upgrade request's
    /// headers and answers each 101 with `extra` headers too (the extension
    /// and subprotocol it "negotiated"); `spawn` is this with none.
    pub(crate) async fn spawn_negotiating(
        extra: &[(&'static str, &'static str)],
    ) -> (WsBackend, SeenHeaders) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        WsBackend::serve(listener, extra)
    }

    /// [`WsBackend::spawn_negotiating`] on `addr`: a backend restarted on the
    /// port of one that was dropped (binding is retried for up to 5 s while
    /// the old listener goes away).
    pub(crate) async fn spawn_on(
        addr: SocketAddr,
        extra: &[(&'static str, &'static str)],
    ) -> (WsBackend, SeenHeaders) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let listener = loop {
            match TcpListener::bind(addr).await {
                Ok(l) => break l,
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    panic!("bind {addr} again: {e}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        WsBackend::serve(listener, extra)
    }

    /// Serve WebSocket upgrades on `listener` (see [`WsBackend::spawn_negotiating`]).
    fn serve(
        listener: TcpListener,
        extra: &[(&'static str, &'static str)],
    ) -> (WsBackend, SeenHeaders) {
        let addr = listener.local_addr().expect("addr");
        let (tx, accepted) = mpsc::channel(64);
        let seen = SeenHeaders::default();
        let extra = extra.to_vec();
        let recorded = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (tx, extra, recorded) = (tx.clone(), extra.clone(), recorded.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |mut req: Request<hyper::body::Incoming>| {
                        let (tx, extra) = (tx.clone(), extra.clone());
                        // shunt's WebSocket check (`X-Shunt-Probe: 1`) is
                        // answered but is not a call: never handed to the test.
                        let probe = req.headers().contains_key("x-shunt-probe");
                        if !probe {
                            recorded.lock().unwrap().push(req.headers().clone());
                        }
                        async move {
                            let (mut resp, fut) = fastwebsockets::upgrade::upgrade(&mut req)?;
                            for (name, value) in extra {
                                resp.headers_mut()
                                    .insert(name, hyper::header::HeaderValue::from_static(value));
                            }
                            tokio::spawn(async move {
                                if probe {
                                    return;
                                }
                                if let Ok(mut ws) = fut.await {
                                    ws.set_auto_close(false);
                                    ws.set_max_message_size(64 << 20);
                                    let _ = tx.send(ws).await;
                                }
                            });
                            Ok::<Response<Empty<Bytes>>, fastwebsockets::WebSocketError>(resp)
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades()
                        .await;
                });
            }
        });
        let backend = WsBackend {
            addr,
            accepted,
            task,
        };
        (backend, seen)
    }
}

impl RawWs {
    /// Like [`RawWs::connect`], with `extra` request header lines
    /// (`"Sec-WebSocket-Protocol: audio.v1"`); also returns the 101 head.
    pub(crate) async fn connect_with(
        addr: SocketAddr,
        path: &str,
        extra: &[&str],
    ) -> Result<(RawWs, String), BoxError> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        RawWs::handshake_with(Box::new(stream), path, extra).await
    }

    /// Read frames until a Close, answering Pings as a browser does; each
    /// frame with the time it was read (the Close last).
    pub(crate) async fn timed_frames_until_close(
        &mut self,
        limit: Duration,
    ) -> Result<Vec<(RawFrame, tokio::time::Instant)>, BoxError> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut frames = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let f = self.read_frame(left).await?;
            let at = tokio::time::Instant::now();
            let opcode = f.opcode;
            if opcode == 9 {
                self.send_raw(&encode(true, 0, 10, &f.payload, true))
                    .await?;
            }
            frames.push((f, at));
            if opcode == 8 {
                return Ok(frames);
            }
        }
    }
}
