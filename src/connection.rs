//! The accept stage: one downstream connection from accept to its end.
//!
//! [`accept`] runs, in order: with `proxy_protocol` on, the PROXY header of
//! a source in `trusted_proxies` (read before anything else, within the
//! header timeout; any other source is closed unread, unless listed in
//! `proxy_protocol_optional_from`), whose address is then the client;
//! admission (the global IP lists and the
//! connection caps, via [`crate::checkpoint::admit_connection`], before a byte is
//! read or a TLS handshake starts), the refusal of a connection that is not
//! admitted (a short plain-HTTP answer, or a bare close on a TLS listener),
//! the TLS handshake when the listener has TLS, then hyper's HTTP/1.1 server
//! ([`serve`]) with upgrades enabled. A handshake that negotiated
//! `acme-tls/1` is an ACME TLS-ALPN-01 validation: it ends there, no HTTP.
//!
//! [`serve`] sets the header read timeout (with a timer, without which hyper
//! silently disables it) and the head size limit (hyper answers 431 past it).
//! At shutdown, an idle keep-alive connection closes at once and one with a
//! request in flight finishes it, within the drain timeout. Each connection
//! lends its requests a [`Handoff`]: a WebSocket handshake answered with 101
//! leaves its tunnel there, and this task starts it once hyper lets go of the
//! connection; the tunnel is then tracked on its own.
//!
//! Why admission comes before TLS: a TLS handshake costs the server a
//! signature, and a refused client should not be able to make shunt pay
//! that. A refused plain-HTTP connection still gets a short answer saying
//! why (403 or 429), written by hand since hyper never sees the connection;
//! the refusals themselves are bounded ([`crate::policy::rate::Gate`]) so a
//! flood of refused connections cannot hold many tasks.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use crate::downstream::{ClientCert, Downstream};
use crate::error_chain::ErrorChain;
use crate::forward::tunnel::Handoff;
use crate::policy::balancer::Arrival;
use crate::proxy::{self, Context};
use crate::proxy_header::{Header, Versions};
use crate::telemetry::refusals::{self, Reason};

/// The TLS handshake timeout when the snapshot has no TLS settings (it
/// always has them when the listener has an acceptor; this is a fallback).
const DEFAULT_TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Admit or refuse one accepted connection, then serve it.
///
/// Admission runs here, synchronously in the accept loop, so the connection
/// caps count this connection before the next one is accepted; the returned
/// future (run on its own tracked task) does the rest. Behind a load
/// balancer speaking PROXY protocol, admission waits for the header, which
/// names the client the IP lists judge ([`receive`]); a source that may
/// not send one is closed without a byte read. `listener` is the address
/// the listener is bound to: the connection's own address unless that is a
/// wildcard (then the socket is asked, one `getsockname`).
pub(crate) fn accept(
    mut stream: TcpStream,
    peer: SocketAddr,
    listener: SocketAddr,
    ctx: &Arc<Context>,
    tls: Option<&TlsAcceptor>,
) -> impl Future<Output = ()> + Send + use<> {
    let (arrival, header_timeout, admitted) = {
        let snapshot = ctx.handles().live().load();
        if let Some(idle) = snapshot.timeouts().keepalive
            && let Err(e) = crate::keepalive::apply(&stream, idle)
        {
            tracing::debug!(peer = %peer, error = %e, "cannot set TCP keepalive");
        }
        let policy = &snapshot.config().policy;
        let arrival = policy.balancers.arrival(peer.ip());
        let admitted = (arrival == Arrival::Plain)
            .then(|| crate::checkpoint::admit_connection(policy, ctx.handles().gate(), peer));
        (arrival, snapshot.timeouts().header, admitted)
    };
    let (ctx, tls) = (ctx.clone(), tls.cloned());
    // The listener's address, for a PROXY header towards an upstream.
    let local = if listener.ip().is_unspecified() {
        stream
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    } else {
        listener
    };
    async move {
        let (downstream, admitted) = match (arrival, admitted) {
            (_, Some(admitted)) => (Downstream::direct(peer, local), admitted),
            (Arrival::Header(versions), None) => {
                let Some(downstream) =
                    receive(&mut stream, (peer, local), versions, header_timeout, &ctx).await
                else {
                    return;
                };
                let admitted = {
                    let snapshot = ctx.handles().live().load();
                    let policy = &snapshot.config().policy;
                    crate::checkpoint::admit_connection(
                        policy,
                        ctx.handles().gate(),
                        downstream.peer,
                    )
                };
                (downstream, admitted)
            }
            _ => {
                refused(
                    &ctx,
                    Reason::ProxyUntrusted,
                    peer,
                    &"not in trusted_proxies",
                );
                return;
            }
        };
        match admitted {
            Ok(permit) => {
                // Boxed: the spawned task stays small (tokio copies a task's
                // future in when it is spawned and its whole stage again when
                // it ends), and the connection's state is built in place.
                match tls {
                    Some(acceptor) => Box::pin(serve_tls(stream, downstream, &acceptor, ctx)).await,
                    None => Box::pin(serve(stream, downstream, None, ctx)).await,
                }
                drop(permit);
            }
            Err(denied) => {
                let reason = match denied {
                    crate::policy::Denied::Ip { .. } => Reason::AcceptIp,
                    _ => Reason::AcceptLimit,
                };
                refused(&ctx, reason, downstream.peer, &ErrorChain(&denied));
                // Plain HTTP gets a short answer; a TLS listener just closes.
                let permit = ctx.handles().gate().refusal_permit();
                let answer = (permit.is_some() && tls.is_none())
                    .then(|| crate::response::raw_refusal(&denied));
                refuse(stream, answer).await;
                drop(permit);
            }
        }
    }
}

/// Read the PROXY header a trusted balancer (`peer`) sends first, within
/// the header timeout: who the client is. `None` when the connection was
/// refused (no header, a broken one): it is closed.
async fn receive(
    stream: &mut TcpStream,
    (peer, local): (SocketAddr, SocketAddr),
    versions: Versions,
    timeout: Duration,
    ctx: &Context,
) -> Option<Downstream> {
    match crate::proxy_header::read(stream, versions, timeout).await {
        Ok(Header::Proxied {
            source,
            destination,
        }) => Some(Downstream {
            via: Some(peer),
            ..Downstream::direct(source, destination)
        }),
        // The balancer's own connection (a health check): served as its own.
        Ok(Header::Local) => Some(Downstream::direct(peer, local)),
        Err(e) => {
            let reason = if e.is_missing() {
                Reason::ProxyMissing
            } else {
                Reason::ProxyMalformed
            };
            refused(ctx, reason, peer, &e);
            None
        }
    }
}

/// Count a connection refused for `reason` (`shunt_connections_refused_total`)
/// and log it, rate-limited.
fn refused(ctx: &Context, reason: Reason, peer: SocketAddr, detail: &dyn std::fmt::Display) {
    ctx.handles().stats().refused(reason);
    refusals::refused(reason, peer, detail);
}

/// The TLS handshake (bounded by the TLS handshake timeout), then HTTP.
async fn serve_tls(
    stream: TcpStream,
    downstream: Downstream,
    acceptor: &TlsAcceptor,
    ctx: Arc<Context>,
) {
    let timeout = ctx
        .handles()
        .live()
        .load()
        .config()
        .tls
        .as_ref()
        .map_or(DEFAULT_TLS_HANDSHAKE_TIMEOUT, |t| t.handshake_timeout);
    match crate::tls::accept(acceptor, stream, timeout).await {
        Ok(tls) => {
            let group = tls.key_exchange_group();
            let resumed = tls.resumed();
            ctx.handles().stats().tls_handshakes.record(group, resumed);
            tracing::debug!(
                target: crate::telemetry::ACCESS_TARGET,
                peer = %downstream.peer,
                version = ?tls.protocol_version(),
                group = group.map_or("-", crate::tls::groups::name_of),
                resumed,
                "tls handshake"
            );
            if tls.alpn_protocol() == Some(crate::tls::ACME_TLS_ALPN) {
                // A TLS-ALPN-01 validation: the handshake was the answer; never HTTP.
                let mut tls = tls;
                let _ = tokio::time::timeout(timeout, tls.shutdown()).await;
                tracing::debug!(peer = %downstream.peer, "answered an ACME tls-alpn-01 validation");
                return;
            }
            let cert = tls
                .peer_certificate()
                .map(|der| Arc::new(ClientCert::from_der(der)));
            let downstream = Downstream {
                tls: true,
                ..downstream
            };
            serve(tls, downstream, cert, ctx).await;
        }
        Err(e) => refused(&ctx, Reason::TlsHandshake, downstream.peer, &ErrorChain(&e)),
    }
}

/// How long a refused connection is given to receive its answer and leave.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);

/// Close a connection refused at accept, first writing `answer` (plain HTTP)
/// and reading what the client sent for a moment, so the answer is not lost
/// to a reset. Bounded in time; the request is never parsed.
async fn refuse(mut stream: TcpStream, answer: Option<Vec<u8>>) {
    let Some(answer) = answer else {
        return;
    };
    let _ = tokio::time::timeout(REFUSAL_LINGER, async {
        stream.write_all(&answer).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 4096];
        let mut total = 0;
        while total < 64 * 1024 {
            match stream.read(&mut sink).await? {
                0 => break,
                n => total += n,
            }
        }
        Ok::<(), io::Error>(())
    })
    .await;
}

/// Serve HTTP/1.1 on `io` until the client leaves, the connection upgrades, or shutdown.
/// `client_cert` (a verified TLS client certificate) goes with each request.
pub(crate) async fn serve<IO>(
    io: IO,
    downstream: Downstream,
    client_cert: Option<Arc<ClientCert>>,
    ctx: Arc<Context>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let snapshot = ctx.handles().live().load();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(snapshot.timeouts().header)
        .max_buf_size(snapshot.max_header_bytes())
        // No `max_headers`: hyper's own limit is 100 header lines (more
        // answer 431), and setting one, even 100, makes hyper fill two
        // 100-slot arrays for every request head.
        .keep_alive(true);
    let drain = snapshot.timeouts().drain;
    drop(snapshot);
    let lifetime = ctx.handles().shutdown().clone();

    // Where a WebSocket handshake leaves its tunnel, started below from this
    // task once hyper lets go of the connection.
    let handoff = Handoff::default();
    let service = {
        let (ctx, handoff) = (&ctx, &handoff);
        service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            if let Some(cert) = &client_cert {
                req.extensions_mut().insert(cert.clone());
            }
            // Boxed here, built in place: hyper would otherwise copy the
            // request's whole state (tens of KiB) into its own slot.
            Box::pin(proxy::handle(req, downstream, ctx.clone(), handoff))
        })
    };
    let conn = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    let shutdown = lifetime.token().clone();
    let http = async move {
        let mut conn = std::pin::pin!(conn);
        tokio::select! {
            r = conn.as_mut() => Some(r),
            () = shutdown.cancelled() => {
                conn.as_mut().graceful_shutdown();
                let drained = tokio::time::timeout(drain, conn.as_mut()).await;
                if drained.is_err() {
                    tracing::debug!(peer = %downstream.peer, "connection still busy at the end of the drain; closing it");
                }
                drained.ok()
            }
        }
    };
    let result = http.await;
    // A handshake answered with 101 left its tunnel here: start it on this task.
    handoff
        .start(ctx.relay(), lifetime.token(), lifetime.tracker())
        .await;
    if let Some(Err(e)) = result {
        log_connection_error(&ctx, &e, downstream);
    }
}

/// Log a connection's end once, at the task boundary; client disconnects are
/// routine. Timeouts and malformed heads go through the rate-limited
/// [`refusals`] log: a flood of them writes a line a second.
fn log_connection_error(ctx: &Context, e: &hyper::Error, downstream: Downstream) {
    if e.is_timeout() {
        refused(ctx, Reason::HeaderTimeout, downstream.peer, e);
    } else if e.is_parse() || e.is_parse_too_large() {
        refused(ctx, Reason::MalformedRequest, downstream.peer, e);
    } else {
        tracing::debug!(peer = %downstream.peer, error = %e, "connection ended with an error");
    }
}
