//! WebSocket test client (fastwebsockets `handshake::client`) and a raw-TCP
//! HTTP helper for hand-written requests. Everything is bounded in time.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use fastwebsockets::{Frame, OpCode, Payload, WebSocket, WebSocketError};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::header::{CONNECTION, HOST, UPGRADE};
use hyper::upgrade::Upgraded;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{BoxError, IO_TIMEOUT};

/// The client side of a WebSocket through the proxy.
pub(crate) type Ws = WebSocket<TokioIo<Upgraded>>;

/// One complete data message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Msg {
    Text(String),
    Binary(Vec<u8>),
}

/// How a WebSocket ended, as seen by [`wait_closed`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Closed {
    /// A Close frame arrived (with its code, if any).
    CloseFrame(Option<u16>),
    /// The stream ended or failed without a Close frame.
    Eof(String),
}

/// Performs a WebSocket handshake on `addr` for `path`, with `extra_headers`
/// added to the request. Fails (with the status in the error) on anything but
/// a valid 101. Bounded by [`IO_TIMEOUT`].
pub(crate) async fn ws_connect(
    addr: SocketAddr,
    path: &str,
    extra_headers: &[(&str, &str)],
) -> Result<(Ws, Response<Incoming>), BoxError> {
    tokio::time::timeout(IO_TIMEOUT, ws_connect_inner(addr, path, extra_headers))
        .await
        .map_err(|_| {
            format!("WebSocket handshake to {addr}{path} timed out after {IO_TIMEOUT:?}")
        })?
}

async fn ws_connect_inner(
    addr: SocketAddr,
    path: &str,
    extra_headers: &[(&str, &str)],
) -> Result<(Ws, Response<Incoming>), BoxError> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let mut builder = Request::get(path)
        .header(HOST, addr.to_string())
        .header(UPGRADE, "websocket")
        .header(CONNECTION, "upgrade")
        .header(
            "Sec-WebSocket-Key",
            fastwebsockets::handshake::generate_key(),
        )
        .header("Sec-WebSocket-Version", "13");
    for (name, value) in extra_headers {
        builder = builder.header(*name, *value);
    }
    let request = builder.body(Empty::<Bytes>::new())?;
    let (mut ws, response) =
        fastwebsockets::handshake::client(&TokioExecutor::new(), request, stream)
            .await
            .map_err(|e| match e {
                WebSocketError::InvalidStatusCode(code) => {
                    format!("handshake answered {code}, not 101")
                }
                other => format!("handshake failed: {other}"),
            })?;
    ws.set_max_message_size(super::echo::MAX_MESSAGE_SIZE);
    ws.set_auto_pong(true);
    ws.set_auto_close(true);
    Ok((ws, response))
}

/// The value of `name` in `response`'s headers, or "".
pub(crate) fn header<'a>(response: &'a Response<Incoming>, name: &str) -> &'a str {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// Sends one text message.
pub(crate) async fn send_text(ws: &mut Ws, text: &str) -> Result<(), BoxError> {
    send_frame(ws, Frame::text(Payload::Owned(text.as_bytes().to_vec()))).await
}

/// Sends one binary message.
pub(crate) async fn send_binary(ws: &mut Ws, data: &[u8]) -> Result<(), BoxError> {
    send_frame(ws, Frame::binary(Payload::Owned(data.to_vec()))).await
}

/// Sends one frame, bounded by [`IO_TIMEOUT`].
pub(crate) async fn send_frame(ws: &mut Ws, frame: Frame<'_>) -> Result<(), BoxError> {
    tokio::time::timeout(IO_TIMEOUT, ws.write_frame(frame))
        .await
        .map_err(|_| "WebSocket write timed out")??;
    Ok(())
}

/// Sends `parts` as one fragmented message of kind `opcode` (Text or
/// Binary): a first frame with fin=false, continuation frames, and a last
/// continuation with fin=true.
pub(crate) async fn send_fragmented(
    ws: &mut Ws,
    opcode: OpCode,
    parts: &[&[u8]],
) -> Result<(), BoxError> {
    assert!(
        parts.len() >= 2,
        "a fragmented message needs at least two frames"
    );
    for (i, part) in parts.iter().enumerate() {
        let opcode = if i == 0 { opcode } else { OpCode::Continuation };
        let fin = i + 1 == parts.len();
        send_frame(
            ws,
            Frame::new(fin, opcode, None, Payload::Owned(part.to_vec())),
        )
        .await?;
    }
    Ok(())
}

/// Sends a Ping with `payload`.
pub(crate) async fn send_ping(ws: &mut Ws, payload: &[u8]) -> Result<(), BoxError> {
    send_frame(
        ws,
        Frame::new(true, OpCode::Ping, None, Payload::Owned(payload.to_vec())),
    )
    .await
}

/// Reads the next frame of any kind (pings are answered by auto_pong and not
/// returned), bounded by `limit`.
pub(crate) async fn recv_frame(
    ws: &mut Ws,
    limit: Duration,
) -> Result<(bool, OpCode, Vec<u8>), BoxError> {
    let frame = tokio::time::timeout(limit, ws.read_frame())
        .await
        .map_err(|_| format!("no WebSocket frame within {limit:?}"))??;
    Ok((frame.fin, frame.opcode, frame.payload.to_vec()))
}

/// Reads the next complete data message (reassembling fragments, skipping
/// pongs), bounded by [`IO_TIMEOUT`] overall. A Close is an error.
pub(crate) async fn recv(ws: &mut Ws) -> Result<Msg, BoxError> {
    recv_within(ws, IO_TIMEOUT).await
}

/// [`recv`] with an explicit bound.
pub(crate) async fn recv_within(ws: &mut Ws, limit: Duration) -> Result<Msg, BoxError> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut kind: Option<OpCode> = None;
    let mut data = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let (fin, opcode, payload) = recv_frame(ws, left).await?;
        match opcode {
            OpCode::Text | OpCode::Binary if kind.is_none() => {
                kind = Some(opcode);
                data = payload;
            }
            OpCode::Continuation if kind.is_some() => data.extend_from_slice(&payload),
            OpCode::Pong | OpCode::Ping => continue,
            OpCode::Close => {
                return Err(format!("WebSocket closed: {}", describe_close(&payload)).into());
            }
            other => {
                return Err(
                    format!("unexpected frame {other:?} (message started: {kind:?})").into(),
                );
            }
        }
        if fin {
            return match kind {
                Some(OpCode::Text) => Ok(Msg::Text(String::from_utf8(data)?)),
                _ => Ok(Msg::Binary(data)),
            };
        }
    }
}

/// Reads the next text message.
pub(crate) async fn recv_text(ws: &mut Ws) -> Result<String, BoxError> {
    match recv(ws).await? {
        Msg::Text(text) => Ok(text),
        Msg::Binary(data) => Err(format!("expected text, got {} binary bytes", data.len()).into()),
    }
}

/// Reads the next binary message.
pub(crate) async fn recv_binary(ws: &mut Ws) -> Result<Vec<u8>, BoxError> {
    match recv(ws).await? {
        Msg::Binary(data) => Ok(data),
        Msg::Text(text) => Err(format!("expected binary, got text {text:?}").into()),
    }
}

/// Reads until the WebSocket ends (Close frame, EOF or error), discarding
/// data; fails if it is still open after `limit`.
pub(crate) async fn wait_closed(ws: &mut Ws, limit: Duration) -> Result<Closed, BoxError> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let frame = match tokio::time::timeout(left, ws.read_frame()).await {
            Err(_) => return Err(format!("WebSocket still open after {limit:?}").into()),
            Ok(Err(e)) => return Ok(Closed::Eof(e.to_string())),
            Ok(Ok(frame)) => frame,
        };
        if frame.opcode == OpCode::Close {
            let code = (frame.payload.len() >= 2)
                .then(|| u16::from_be_bytes([frame.payload[0], frame.payload[1]]));
            return Ok(Closed::CloseFrame(code));
        }
    }
}

fn describe_close(payload: &[u8]) -> String {
    if payload.len() >= 2 {
        let code = u16::from_be_bytes([payload[0], payload[1]]);
        format!("code {code} {:?}", String::from_utf8_lossy(&payload[2..]))
    } else {
        "no code".to_owned()
    }
}

/// Status line and headers of a response read off a raw socket.
#[derive(Clone)]
pub(crate) struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// Whatever body bytes arrived with the head (not necessarily all).
    pub body_start: Vec<u8>,
}

impl std::fmt::Debug for RawResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawResponse")
            .field("status", &self.status)
            .field("headers", &self.headers)
            .field("body_start", &String::from_utf8_lossy(&self.body_start))
            .finish()
    }
}

impl RawResponse {
    /// The first value of header `name` (case-insensitive).
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Sends `request` verbatim on a new connection to `addr` and reads the
/// response head. Reads while writing, so a server that answers early (and
/// stops reading) is still heard. Bounded by [`IO_TIMEOUT`].
pub(crate) async fn raw_request(addr: SocketAddr, request: &[u8]) -> Result<RawResponse, BoxError> {
    tokio::time::timeout(IO_TIMEOUT, raw_request_inner(addr, request.to_vec()))
        .await
        .map_err(|_| format!("no response head from {addr} within {IO_TIMEOUT:?}"))?
}

async fn raw_request_inner(addr: SocketAddr, request: Vec<u8>) -> Result<RawResponse, BoxError> {
    const MAX_HEAD: usize = 64 * 1024;
    let stream = TcpStream::connect(addr).await?;
    let (mut read, mut write) = stream.into_split();
    let writer = tokio::spawn(async move {
        // Errors are expected when the server answers early and closes.
        let _ = write.write_all(&request).await;
        let _ = write.flush().await;
        write
    });
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos;
        }
        if buf.len() > MAX_HEAD {
            return Err("response head larger than 64 KiB".into());
        }
        let n = read
            .read(&mut chunk)
            .await
            .map_err(|e| format!("reading response head ({} bytes so far): {e}", buf.len()))?;
        if n == 0 {
            return Err(format!(
                "connection closed before a full response head; got {:?}",
                String::from_utf8_lossy(&buf)
            )
            .into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    writer.abort();
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Ok(RawResponse {
        status,
        headers,
        body_start: buf[head_end + 4..].to_vec(),
    })
}

/// A call on `path` through shunt at `addr` that must open, its hello read:
/// the client WebSocket and the `x-shunt-route` it was answered with.
pub(crate) async fn open_call(addr: SocketAddr, path: &str) -> (Ws, String) {
    let (mut socket, response) = super::ws_connect(addr, path, &[])
        .await
        .unwrap_or_else(|e| panic!("call on {path}: {e}"));
    let route = header(&response, "x-shunt-route").to_owned();
    recv_text(&mut socket).await.expect("hello");
    (socket, route)
}

/// `Sec-WebSocket-Accept` for `key`, computed by fastwebsockets itself.
pub(crate) fn accept_key(key: &str) -> String {
    let mut request = hyper::Request::get("/")
        .header("sec-websocket-key", key)
        .header("sec-websocket-version", "13")
        .body(())
        .unwrap();
    let (response, _) = fastwebsockets::upgrade::upgrade(&mut request).unwrap();
    response.headers()["sec-websocket-accept"]
        .to_str()
        .unwrap()
        .to_owned()
}
