//! Connections to upstreams: opening a byte stream, bounded by the connect
//! timeout, hyper's client handshake over it, and ([`pool`]) keeping idle
//! ones for reuse.
//!
//! A side module, not a stage: selection ([`crate::upstream`]) dials,
//! [`crate::forward`] sends over what was dialed (and redials when a pooled
//! connection turns out closed), the tunnel splices the bare stream, and the
//! health probes, `shunt doctor` and `shunt healthcheck` dial the same way.
//! Keeping it below all of them is what lets each import it without any of
//! them importing a stage above itself.
//!
//! Plain TCP for `http://` upstreams, TLS (SNI and verification from the URL
//! host) for `https://` ones. Used by forwarding and by health probes alike,
//! so a probe exercises exactly the path a real request takes.
//!
//! [`http1_handshake`] is the one HTTP/1.1 client handshake of the crate
//! (forwarding, health probes, `shunt healthcheck`): the connection task it
//! starts is tracked, allows upgrades, and can react to shutdown.
//!
//! `TCP_NODELAY` is set on every upstream socket for the same reason as on
//! downstream ones: audio frames are small, and Nagle's algorithm would hold
//! each one back for the previous one's ACK.

pub(crate) mod pool;
pub(crate) mod probe;

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::client::conn::http1::SendRequest;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::UpstreamUrl;

/// Why an upstream could not be reached.
///
/// It lives here, with the dialing that produces it; selection wraps it in
/// [`crate::upstream::SelectError`], forwarding in
/// [`crate::forward::ForwardError::Reconnect`], and
/// [`crate::response`] maps it (a timeout is 504, the rest 502).
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The TCP connect failed (refused, unreachable). The OS error *is* the
    /// message, said plainly ([`describe`]), so it is not kept a second
    /// time as a source.
    #[error("{}", describe(.0))]
    Io(io::Error),
    /// No connection within the connect timeout.
    #[error("connect timed out after {0:?}")]
    Timeout(Duration),
    /// The TLS handshake with an https upstream failed.
    #[error("TLS handshake with the upstream failed")]
    Tls(#[source] io::Error),
    /// The URL's host cannot be a TLS server name. rustls's error says no
    /// more than this message does, so it is not kept as a source.
    #[error("`{0}` is not a valid TLS server name")]
    ServerName(String),
}

/// The message for a connect error: "connection refused" is what operators
/// search logs for, so it is said plainly rather than as `os error 111`.
fn describe(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "connection refused".into(),
        _ => e.to_string(),
    }
}

/// A connection to an upstream.
#[derive(Debug)]
pub(crate) enum UpstreamStream {
    /// Plain TCP: kept bare so a tunnel can splice it.
    Plain(TcpStream),
    /// TLS to an https upstream.
    Tls(Box<TlsStream<TcpStream>>),
}

impl UpstreamStream {
    /// The TCP socket underneath (for socket options).
    pub(crate) fn tcp(&self) -> &TcpStream {
        match self {
            UpstreamStream::Plain(s) => s,
            UpstreamStream::Tls(s) => s.get_ref().0,
        }
    }
}

/// A way to reach the chosen upstream, as selection
/// ([`crate::upstream::connect_first`]) hands it to forwarding.
#[derive(Debug)]
pub(crate) enum Conn {
    /// A new TCP connection; hyper's handshake is still to be done.
    Fresh(UpstreamStream),
    /// An idle keep-alive connection from the upstream's pool.
    Pooled(pool::Sender),
}

/// Connect to `url` with `TCP_NODELAY` set; write `proxy_header` first
/// when the upstream wants a PROXY protocol header (before TLS, as the
/// specification has it); with `tls`, run the TLS handshake too.
/// `timeout` bounds all of it.
pub(crate) async fn connect(
    url: &UpstreamUrl,
    tls: Option<&Arc<ClientConfig>>,
    timeout: Duration,
    proxy_header: Option<&[u8]>,
) -> Result<UpstreamStream, ConnectError> {
    let attempt = async {
        let mut stream = TcpStream::connect((url.host.as_str(), url.port))
            .await
            .map_err(ConnectError::Io)?;
        stream.set_nodelay(true).map_err(ConnectError::Io)?;
        if let Some(header) = proxy_header {
            stream.write_all(header).await.map_err(ConnectError::Io)?;
        }
        let Some(tls) = tls else {
            return Ok(UpstreamStream::Plain(stream));
        };
        let name = ServerName::try_from(url.host.clone())
            .map_err(|_| ConnectError::ServerName(url.host.clone()))?;
        // Boxed: a TLS client's state is large, and a plain upstream's
        // connect should not carry (and copy) it.
        let stream = Box::pin(TlsConnector::from(tls.clone()).connect(name, stream))
            .await
            .map_err(ConnectError::Tls)?;
        Ok(UpstreamStream::Tls(Box::new(stream)))
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| ConnectError::Timeout(timeout))?
}

/// hyper's HTTP/1.1 client handshake over `io`. The connection is then
/// driven by a task on `tracker` until it closes or upgrades (upgrades stay
/// possible, for WebSocket handshakes). If `stop` is cancelled first,
/// `on_stop` runs (forwarding empties the upstream's pool there, so idle
/// keep-alive connections end) and the connection may finish what it is doing.
pub(crate) async fn http1_handshake<IO, B>(
    io: IO,
    tracker: &TaskTracker,
    stop: &CancellationToken,
    on_stop: impl FnOnce() + Send + 'static,
) -> hyper::Result<SendRequest<B>>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    let stop = stop.clone();
    tracker.spawn(async move {
        let mut conn = std::pin::pin!(conn.with_upgrades());
        let ended = tokio::select! {
            r = conn.as_mut() => r,
            () = stop.cancelled() => {
                on_stop();
                conn.await
            }
        };
        if let Err(e) = ended {
            tracing::debug!(error = %e, "upstream connection ended with an error");
        }
    });
    Ok(sender)
}

impl AsyncRead for UpstreamStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamStream::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamStream::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_flush(cx),
            UpstreamStream::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamStream::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
