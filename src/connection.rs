//! One downstream connection: hyper's HTTP/1.1 server with upgrades enabled.
//!
//! Sets the header read timeout (with a timer, without which hyper silently
//! disables it) and the head size limit (hyper answers 431 past it). At
//! shutdown, an idle keep-alive connection closes at once and one with a
//! request in flight finishes it, within the drain timeout. An upgraded
//! connection leaves this task: its tunnel is tracked on its own.

use std::sync::Arc;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::proxy::{self, Context};
use crate::runtime::Downstream;

/// Most header lines accepted in one request head.
const MAX_HEADERS: usize = 100;

/// Serve HTTP/1.1 on `io` until the client leaves, the connection upgrades, or shutdown.
pub async fn serve<IO>(io: IO, downstream: Downstream, ctx: Arc<Context>)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let rt = ctx.rt.clone();
    let snapshot = rt.live.load();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(snapshot.timeouts.header)
        .max_buf_size(snapshot.max_header_bytes)
        .max_headers(MAX_HEADERS)
        .keep_alive(true);
    let drain = snapshot.timeouts.drain;
    drop(snapshot);

    let service = service_fn(move |req| proxy::handle(req, downstream, ctx.clone()));
    let conn = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    let mut conn = std::pin::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = rt.shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            match tokio::time::timeout(drain, conn.as_mut()).await {
                Ok(r) => r,
                Err(_) => {
                    tracing::debug!(peer = %downstream.peer, "connection still busy at the end of the drain; closing it");
                    return;
                }
            }
        }
    };
    if let Err(e) = result {
        log_connection_error(&e, downstream);
    }
}

/// Log a connection's end once, at the task boundary; client disconnects are routine.
fn log_connection_error(e: &hyper::Error, downstream: Downstream) {
    if e.is_timeout() {
        tracing::info!(peer = %downstream.peer, "closed a connection that did not send a request head in time");
    } else if e.is_parse() || e.is_parse_too_large() {
        tracing::info!(peer = %downstream.peer, error = %e, "closed a connection after a malformed request");
    } else {
        tracing::debug!(peer = %downstream.peer, error = %e, "connection ended with an error");
    }
}
