//! Opening a byte stream to an upstream, bounded by the connect timeout.
//!
//! Used by forwarding and by health probes alike, so a probe exercises exactly
//! the path a real request takes.

use std::io;
use std::time::Duration;

use tokio::net::TcpStream;

use crate::config::UpstreamUrl;

/// Why an upstream could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("{}", describe(.0))]
    Io(#[source] io::Error),
    #[error("connect timed out after {0:?}")]
    Timeout(Duration),
}

fn describe(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "connection refused".into(),
        _ => e.to_string(),
    }
}

/// Connect to `url`'s host and port with `TCP_NODELAY` set.
pub async fn connect(url: &UpstreamUrl, timeout: Duration) -> Result<TcpStream, ConnectError> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect((url.host.as_str(), url.port)))
        .await
        .map_err(|_| ConnectError::Timeout(timeout))?
        .map_err(ConnectError::Io)?;
    stream.set_nodelay(true).map_err(ConnectError::Io)?;
    Ok(stream)
}
