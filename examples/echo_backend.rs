//! A runnable stand-in for the call backend: WebSocket echo on any path
//! (with a `hello from NAME` greeting), `GET /health`, and an HTTP echo.
//!
//! ```text
//! cargo run --example echo_backend -- --port 5006 --name backend
//! ```
//!
//! The behaviour is the integration tests' echo backend (`tests/it/support/echo.rs`),
//! compiled in here so the two cannot drift apart.

#[path = "../tests/it/support/echo.rs"]
mod echo;

use std::net::{IpAddr, SocketAddr};

use clap::Parser;

/// Echo backend for trying shunt by hand.
#[derive(Debug, Parser)]
struct Args {
    /// Port to listen on.
    #[arg(long, default_value_t = 5006)]
    port: u16,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// Name announced in `x-backend` and in the WebSocket hello.
    #[arg(long, default_value = "backend")]
    name: String,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let server = echo::EchoServer::bind(SocketAddr::new(args.host, args.port), &args.name).await?;
    println!(
        "echo backend {:?} listening on http://{}",
        server.name(),
        server.addr()
    );
    wait_for_signal().await?;
    println!("stopping");
    server.stop().await;
    Ok(())
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
async fn wait_for_signal() -> std::io::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r,
        _ = term.recv() => Ok(()),
    }
}
