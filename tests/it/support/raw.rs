//! Raw clients for the security tests: connections from a chosen loopback
//! source address (127.0.0.2, .3, ... for the IP rules and per-client
//! limits), requests written byte for byte, and answers read to the end.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use fastwebsockets::{Frame, OpCode, Payload, Role, WebSocket};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use super::IO_TIMEOUT;

/// Connect to `addr` from loopback source address `from` (e.g. 127.0.0.2).
pub(crate) async fn connect_from(addr: SocketAddr, from: &str) -> TcpStream {
    let ip: IpAddr = from.parse().unwrap();
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(ip, 0)).unwrap();
    tokio::time::timeout(IO_TIMEOUT, socket.connect(addr))
        .await
        .expect("connect in time")
        .expect("connect")
}

/// What came back for a raw request, read to the end.
#[derive(Debug)]
pub(crate) struct Answer {
    /// `None` when the connection closed without a status line.
    pub status: Option<u16>,
    pub text: String,
}

impl Answer {
    /// The first value of header `name` (case-insensitive).
    pub(crate) fn header(&self, name: &str) -> Option<String> {
        let head = self.text.split("\r\n\r\n").next()?;
        head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    }

    /// What followed the head.
    pub(crate) fn body(&self) -> &str {
        self.text.split_once("\r\n\r\n").map_or("", |(_, b)| b)
    }
}

/// Send `bytes` from `from` and read until the peer closes (or [`IO_TIMEOUT`]).
pub(crate) async fn raw_from(addr: SocketAddr, from: &str, bytes: &[u8]) -> Answer {
    let mut stream = connect_from(addr, from).await;
    let _ = stream.write_all(bytes).await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(IO_TIMEOUT, stream.read_to_end(&mut buf)).await;
    parse_answer(&buf)
}

/// [`raw_from`] 127.0.0.1.
pub(crate) async fn raw(addr: SocketAddr, bytes: &[u8]) -> Answer {
    raw_from(addr, "127.0.0.1", bytes).await
}

/// The status (if any) and text of what came back.
pub(crate) fn parse_answer(buf: &[u8]) -> Answer {
    let text = String::from_utf8_lossy(buf).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|s| s.parse().ok());
    Answer { status, text }
}

/// `GET target` with `extra` header lines, `Connection: close`.
pub(crate) fn get(target: &str, extra: &[&str]) -> Vec<u8> {
    let mut s = format!("GET {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for h in extra {
        s.push_str(h);
        s.push_str("\r\n");
    }
    s.push_str("\r\n");
    s.into_bytes()
}

/// A WebSocket handshake for `target` with `extra` header lines.
pub(crate) fn ws_handshake(target: &str, extra: &[&str]) -> Vec<u8> {
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
pub(crate) async fn ws_open(
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
    let head = tokio::time::timeout(IO_TIMEOUT, read_head(&mut stream))
        .await
        .expect("handshake answer in time")
        .unwrap_or_default();
    let mut answer = parse_answer(&head);
    if answer.status == Some(101) {
        let mut ws = WebSocket::after_handshake(stream, Role::Client);
        // The echo backend greets first; take the greeting so callers see their echoes only.
        let hello = tokio::time::timeout(IO_TIMEOUT, ws.read_frame())
            .await
            .expect("backend hello in time")
            .expect("backend hello");
        assert_eq!(
            hello.opcode,
            OpCode::Text,
            "the backend greets with a text message"
        );
        return (answer.status, Some(ws), answer);
    }
    // Refusal: read the rest (body) for the caller.
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.read_to_end(&mut rest)).await;
    answer.text.push_str(&String::from_utf8_lossy(&rest));
    (answer.status, None, answer)
}

/// Send `msg` and expect it echoed, within [`IO_TIMEOUT`].
pub(crate) async fn echo(ws: &mut WebSocket<TcpStream>, msg: &str) {
    ws.write_frame(Frame::text(Payload::Owned(msg.as_bytes().to_vec())))
        .await
        .unwrap();
    let frame = tokio::time::timeout(IO_TIMEOUT, ws.read_frame())
        .await
        .expect("echo in time")
        .expect("echo frame");
    assert_eq!(&frame.payload[..], msg.as_bytes());
}

/// Read an HTTP head byte by byte, so nothing past it (a frame, early tunnel
/// bytes) is consumed; `None` if the peer closes first or it passes 64 KiB.
pub(crate) async fn read_head(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => return None,
        }
        if head.len() > 64 * 1024 {
            return None;
        }
    }
    Some(head)
}

/// Connect to `addr` and upgrade `/ws`, sending `early` in the same write as
/// the handshake; panics unless the answer is 101. The socket is then the
/// client's end of a raw tunnel.
pub(crate) async fn upgrade_with(addr: SocketAddr, early: &[u8]) -> TcpStream {
    let mut s = tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(addr))
        .await
        .expect("connect in time")
        .expect("connect");
    let mut req = ws_handshake("/ws", &[]);
    req.extend_from_slice(early);
    s.write_all(&req).await.expect("send the handshake");
    let head = tokio::time::timeout(IO_TIMEOUT, read_head(&mut s))
        .await
        .expect("response head in time")
        .expect("response head");
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    s
}
