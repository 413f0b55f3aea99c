//! A minimal WebSocket echo backend for `examples/bench.sh`: every data frame
//! comes back as it was sent. (The full test echo backend lives on main as
//! `examples/echo_backend.rs`; this one keeps the benchmark self-contained.)
//!
//! Usage: `bench_backend 127.0.0.1:5006`

use std::net::SocketAddr;

use bytes::Bytes;
use fastwebsockets::{Frame, OpCode, WebSocketError, upgrade};
use http::{Request, Response, StatusCode};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:5006".into())
        .parse()
        .expect("usage: bench_backend ADDR");
    let listener = TcpListener::bind(addr).await?;
    eprintln!("bench_backend listening on {}", listener.local_addr()?);
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = service_fn(handle);
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
        });
    }
}

async fn handle(mut req: Request<Incoming>) -> Result<Response<Empty<Bytes>>, WebSocketError> {
    if !upgrade::is_upgrade_request(&req) {
        let mut resp = Response::new(Empty::new());
        *resp.status_mut() = StatusCode::OK;
        return Ok(resp);
    }
    let (resp, fut) = upgrade::upgrade(&mut req)?;
    tokio::spawn(async move {
        if let Err(e) = echo(fut).await {
            let _ = e;
        }
    });
    Ok(resp)
}

async fn echo(fut: upgrade::UpgradeFut) -> Result<(), WebSocketError> {
    let mut ws = fut.await?;
    ws.set_auto_close(true);
    ws.set_auto_pong(true);
    loop {
        let frame = ws.read_frame().await?;
        match frame.opcode {
            OpCode::Close => return Ok(()),
            // A fresh frame: the one read keeps the client's mask, and a server
            // must not mask (RFC 6455 5.1; the Node `ws` client rejects it).
            OpCode::Text | OpCode::Binary | OpCode::Continuation => {
                ws.write_frame(Frame::new(frame.fin, frame.opcode, None, frame.payload))
                    .await?
            }
            _ => {}
        }
    }
}
