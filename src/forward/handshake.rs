//! The upstream side of a WebSocket handshake, without a hyper client
//! connection: the rewritten request head is written in one go and the
//! answer's head is read with `httparse`.
//!
//! What comes back decides what the connection becomes:
//!
//! - 101: the bare upstream stream, with any bytes read past the head (they
//!   are the upstream's first frames and go to the client first), for the
//!   tunnel;
//! - 4xx: a refusal the client should see, with its body (`Content-Length`,
//!   chunked or close-delimited), read to the end but at most [`MAX_BODY`]
//!   bytes;
//! - anything else: returned as is; the caller treats it as an upgrade that
//!   did not reach a WebSocket server.
//!
//! One task less per handshake than hyper's client (no connection task, no
//! upgrade hand-over), and one write and usually one read on the socket.

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::dial::UpstreamStream;

/// Most bytes of an upstream's answer head.
pub(crate) const MAX_HEAD: usize = 64 * 1024;
/// Most header lines in an upstream's answer head.
const MAX_HEADERS: usize = 100;
/// Most bytes of a refusal's body relayed to the client.
pub(crate) const MAX_BODY: usize = 64 * 1024;

/// The upstream's answer to a handshake.
#[derive(Debug)]
pub(crate) struct Answer {
    /// Status and headers as the upstream sent them.
    pub head: http::response::Parts,
    /// For a 4xx: the body. For a 101: the bytes read past the head.
    pub bytes: Bytes,
    /// The connection, for the tunnel after a 101.
    pub stream: UpstreamStream,
}

/// Send the (already rewritten) head of `req` over `stream` and read the answer.
pub(crate) async fn exchange<B>(
    req: &Request<B>,
    mut stream: UpstreamStream,
) -> Result<Answer, HandshakeError> {
    let sent = async {
        stream.write_all(&encode_head(req)).await?;
        stream.flush().await
    };
    sent.await.map_err(|e| HandshakeError::Dropped(Some(e)))?;
    let mut buf = BytesMut::with_capacity(4096);
    let (head, used) = loop {
        // Nothing of an answer yet: a reset or close now is `Dropped`.
        let read = stream.read_buf(&mut buf).await;
        match read {
            Ok(0) if buf.is_empty() => return Err(HandshakeError::Dropped(None)),
            Ok(0) => return Err(HandshakeError::Closed),
            Err(e) if buf.is_empty() => return Err(HandshakeError::Dropped(Some(e))),
            Err(e) => return Err(e.into()),
            Ok(_) => {}
        }
        if let Some(parsed) = parse_head(&buf)? {
            break parsed;
        }
        if buf.len() >= MAX_HEAD {
            return Err(HandshakeError::TooLarge);
        }
        buf.reserve(4096);
    };
    buf.advance(used);
    let bytes = if head.status.is_client_error() {
        read_body(&head.headers, buf, &mut stream).await?
    } else {
        buf.freeze()
    };
    Ok(Answer {
        head,
        bytes,
        stream,
    })
}

/// The request head as HTTP/1.1 bytes: request line, every header, blank line.
/// A handshake is a GET without a body: framing headers are not sent.
fn encode_head<B>(req: &Request<B>) -> Vec<u8> {
    let target = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let method = req.method().as_str();
    let mut out = Vec::with_capacity(256 + req.headers().len() * 32);
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in req.headers() {
        if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Parse a response head from `buf`: `None` while it is incomplete, else
/// the head and how many bytes it took.
fn parse_head(buf: &[u8]) -> Result<Option<(http::response::Parts, usize)>, HandshakeError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut slots);
    let used = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HandshakeError::TooLarge),
        Err(e) => return Err(e.into()),
    };
    let status = StatusCode::from_u16(parsed.code.unwrap_or(0))
        .map_err(|e| HandshakeError::Header(e.into()))?;
    let mut headers = HeaderMap::with_capacity(parsed.headers.len());
    for h in parsed.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|e| HandshakeError::Header(e.into()))?;
        let value =
            HeaderValue::from_bytes(h.value).map_err(|e| HandshakeError::Header(e.into()))?;
        headers.append(name, value);
    }
    let (mut head, ()) = http::Response::new(()).into_parts();
    head.status = status;
    head.headers = headers;
    Ok(Some((head, used)))
}

/// A refusal's body: `Content-Length` bytes, a chunked body decoded, or
/// everything up to the close; at most [`MAX_BODY`] bytes.
async fn read_body(
    headers: &HeaderMap,
    mut buf: BytesMut,
    stream: &mut UpstreamStream,
) -> Result<Bytes, HandshakeError> {
    let chunked = crate::headers::has_token(headers, header::TRANSFER_ENCODING, "chunked");
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.trim().parse::<usize>().ok());
    if chunked {
        let mut body = BytesMut::new();
        loop {
            match decode_chunks(&mut buf, &mut body)? {
                true => return Ok(body.freeze()),
                false if body.len() + buf.len() > MAX_BODY + 1024 => {
                    return Err(HandshakeError::TooLarge);
                }
                false => fill(stream, &mut buf).await?,
            }
        }
    }
    match length {
        Some(n) if n > MAX_BODY => Err(HandshakeError::TooLarge),
        Some(n) => {
            while buf.len() < n {
                fill(stream, &mut buf).await?;
            }
            buf.truncate(n);
            Ok(buf.freeze())
        }
        // Close-delimited.
        None => loop {
            if buf.len() > MAX_BODY {
                return Err(HandshakeError::TooLarge);
            }
            if stream.read_buf(&mut buf).await? == 0 {
                return Ok(buf.freeze());
            }
        },
    }
}

/// Read more into `buf`; the end of the stream here is a body cut short.
async fn fill(stream: &mut UpstreamStream, buf: &mut BytesMut) -> Result<(), HandshakeError> {
    buf.reserve(4096);
    match stream.read_buf(buf).await? {
        0 => Err(HandshakeError::Closed),
        _ => Ok(()),
    }
}

/// Move every whole chunk from `buf` into `body`; `true` once the last
/// chunk (and the trailer section) has been consumed.
fn decode_chunks(buf: &mut BytesMut, body: &mut BytesMut) -> Result<bool, HandshakeError> {
    loop {
        let Some(line_end) = find_crlf(buf) else {
            return Ok(false);
        };
        let line = &buf[..line_end];
        let size_text = line.split(|b| *b == b';').next().unwrap_or_default();
        let size = std::str::from_utf8(size_text)
            .ok()
            .and_then(|s| usize::from_str_radix(s.trim(), 16).ok())
            .ok_or(HandshakeError::Chunked)?;
        if size > MAX_BODY {
            return Err(HandshakeError::TooLarge);
        }
        if size == 0 {
            // Trailer lines up to an empty line.
            let mut at = line_end + 2;
            loop {
                let Some(end) = find_crlf(&buf[at..]) else {
                    return Ok(false);
                };
                if end == 0 {
                    buf.advance(at + 2);
                    return Ok(true);
                }
                at += end + 2;
            }
        }
        let need = line_end + 2 + size + 2;
        if buf.len() < need {
            return Ok(false);
        }
        if &buf[need - 2..need] != b"\r\n" {
            return Err(HandshakeError::Chunked);
        }
        body.extend_from_slice(&buf[line_end + 2..line_end + 2 + size]);
        buf.advance(need);
    }
}

/// Where the first `\r\n` in `buf` starts.
fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

/// Why the upstream's answer to a WebSocket handshake could not be read;
/// always the upstream's fault (502). Produced here and carried up inside
/// [`super::ForwardError::Handshake`]; a cause is a `#[source]`, printed by
/// whoever reports the error ([`crate::error_chain`]).
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The upstream closed or reset the connection before any byte of an
    /// answer (a backend going down, or restarting, after accepting): the
    /// handshake (a GET without a body) can go to the route's next upstream.
    #[error("the connection was closed before any answer to the WebSocket handshake")]
    Dropped(#[source] Option<std::io::Error>),
    /// Writing the request or reading the answer failed.
    #[error("connection failed during the WebSocket handshake")]
    Io(#[from] std::io::Error),
    /// The connection closed before a whole answer head (or body) arrived.
    #[error("the connection closed before the answer was complete")]
    Closed,
    /// The answer is not HTTP/1.x.
    #[error("malformed answer to the WebSocket handshake")]
    Parse(#[from] httparse::Error),
    /// A header or status that `http` cannot represent.
    #[error("malformed answer to the WebSocket handshake")]
    Header(#[from] http::Error),
    /// The head or the refusal's body is larger than shunt relays.
    #[error("the answer to the WebSocket handshake is too large")]
    TooLarge,
    /// A chunked body that does not follow RFC 9112 §7.1.
    #[error("malformed chunked body in the answer to the WebSocket handshake")]
    Chunked,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_the_head_without_framing() {
        let req = Request::get("/ws?x=1")
            .header("host", "h")
            .header("upgrade", "websocket")
            .header("content-length", "0")
            .body(())
            .unwrap();
        assert_eq!(
            encode_head(&req),
            b"GET /ws?x=1 HTTP/1.1\r\nhost: h\r\nupgrade: websocket\r\n\r\n"
        );
    }

    #[test]
    fn parses_a_head_and_leaves_the_rest() {
        let text = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: a\r\n\r\n\x81\x00";
        assert!(parse_head(&text[..20]).unwrap().is_none());
        let (head, used) = parse_head(text).unwrap().unwrap();
        assert_eq!(head.status, StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(head.headers["sec-websocket-accept"], "a");
        assert_eq!(&text[used..], b"\x81\x00");
        assert!(parse_head(b"SSH-2.0\r\n\r\n").is_err());
    }

    #[test]
    fn decodes_chunks() {
        let mut body = BytesMut::new();
        let mut buf = BytesMut::from(&b"4;x=y\r\nWiki\r\n5\r\npedia\r\n0\r\n"[..]);
        assert!(!decode_chunks(&mut buf, &mut body).unwrap());
        assert_eq!(&body[..], b"Wikipedia");
        buf.extend_from_slice(b"T: 1\r\n\r\n");
        assert!(decode_chunks(&mut buf, &mut body).unwrap());
        assert_eq!(&body[..], b"Wikipedia");
        let mut buf = BytesMut::from(&b"zz\r\n"[..]);
        assert!(decode_chunks(&mut buf, &mut body).is_err());
    }
}
