//! A small HTTP/1.1 client for requests through the proxy (hyper client
//! connection, one TCP connection per [`HttpConn`]). Bounded in time.

use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper::header::HOST;
use hyper::{HeaderMap, Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::{BoxError, IO_TIMEOUT};

/// A response, fully read.
#[derive(Debug, Clone)]
pub(crate) struct HttpResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl HttpResponse {
    /// The value of header `name`, or "".
    pub(crate) fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// The body as (lossy) UTF-8.
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON (the echo backend's request description).
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.text()))
    }
}

/// The values the echo backend saw for request header `name` (from its
/// JSON description).
pub(crate) fn seen_header(description: &serde_json::Value, name: &str) -> Vec<String> {
    description["headers"][name]
        .as_array()
        .map(|values| {
            values
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// A request body sent in `chunks` pieces with no length, so it goes out
/// with `Transfer-Encoding: chunked` (streamed, not buffered).
pub(crate) struct ChunkedBody {
    chunks: std::vec::IntoIter<Bytes>,
}

impl ChunkedBody {
    /// Splits `data` into pieces of `chunk_size` bytes.
    pub(crate) fn new(data: &[u8], chunk_size: usize) -> ChunkedBody {
        let chunks: Vec<Bytes> = data
            .chunks(chunk_size)
            .map(Bytes::copy_from_slice)
            .collect();
        ChunkedBody {
            chunks: chunks.into_iter(),
        }
    }
}

impl Body for ChunkedBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Poll::Ready(self.chunks.next().map(|chunk| Ok(Frame::data(chunk))))
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// One downstream HTTP/1.1 connection; several requests can go over it
/// (keep-alive).
pub(crate) struct HttpConn {
    addr: SocketAddr,
    sender: SendRequest<http_body_util::combinators::BoxBody<Bytes, BoxError>>,
}

impl HttpConn {
    /// Connects to `addr`.
    pub(crate) async fn connect(addr: SocketAddr) -> Result<HttpConn, BoxError> {
        let stream = tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| format!("connect to {addr} timed out"))??;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(HttpConn { addr, sender })
    }

    /// Whether the server has closed this connection.
    pub(crate) fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }

    /// Sends a request with `headers` (a `Host` of the proxy's address is
    /// added unless given) and reads the whole response.
    pub(crate) async fn send<B>(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: B,
    ) -> Result<HttpResponse, BoxError>
    where
        B: Body<Data = Bytes> + Send + Sync + 'static,
        B::Error: Into<BoxError>,
    {
        let mut builder = Request::builder().method(method).uri(path);
        if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
            builder = builder.header(HOST, self.addr.to_string());
        }
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let request = builder.body(body.map_err(Into::into).boxed())?;
        let exchange = async {
            self.sender.ready().await?;
            let response = self.sender.send_request(request).await?;
            let (parts, body) = response.into_parts();
            let body = body.collect().await?.to_bytes();
            Ok::<_, BoxError>(HttpResponse {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(IO_TIMEOUT, exchange)
            .await
            .map_err(|_| {
                format!(
                    "HTTP exchange with {} timed out after {IO_TIMEOUT:?}",
                    self.addr
                )
            })?
    }

    /// GET `path` with `headers`.
    pub(crate) async fn get(
        &mut self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<HttpResponse, BoxError> {
        self.send(Method::GET, path, headers, Full::new(Bytes::new()))
            .await
    }
}

/// GET on a new connection.
pub(crate) async fn http_get(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<HttpResponse, BoxError> {
    HttpConn::connect(addr).await?.get(path, headers).await
}

/// POST `body` (with a Content-Length) on a new connection.
pub(crate) async fn http_post(
    addr: SocketAddr,
    path: &str,
    body: impl Into<Bytes>,
) -> Result<HttpResponse, BoxError> {
    HttpConn::connect(addr)
        .await?
        .send(Method::POST, path, &[], Full::new(body.into()))
        .await
}
