//! A client that stops reading while the backend streams: shunt holds no
//! buffer of its own for it, so the backend feels TCP backpressure (its writes
//! stall after the kernel socket buffers fill), and other calls are untouched.
//! (Memory with 200 such clients is measured by `examples/slow_clients.rs`;
//! figures in docs/reliability.md, not in a timed test.)

use crate::support;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use fastwebsockets::{Frame, Payload};
use http_body_util::Empty;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use support::{echo_backend, eventually, shunt, ws, ws_connect};
use tokio::net::TcpListener;

/// Upper bound on what a streaming backend may write to one client that reads
/// nothing: socket buffers on three sockets plus a splice pipe, generously.
const BUFFERED_AT_MOST: u64 = 48 * 1024 * 1024;
/// Where the streamer stops even without backpressure (so the test is bounded).
const STREAM_AT_MOST: u64 = 512 * 1024 * 1024;

/// A backend that, after the upgrade, writes 16 KiB binary frames as fast as
/// it can; `written` counts the bytes its writes have handed to the kernel.
async fn streaming_backend(written: Arc<AtomicU64>) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let written = written.clone();
            let service = service_fn(move |mut req: Request<hyper::body::Incoming>| {
                let written = written.clone();
                async move {
                    let (response, fut) = fastwebsockets::upgrade::upgrade(&mut req).unwrap();
                    tokio::spawn(async move {
                        let mut ws = fut.await.unwrap();
                        let chunk = vec![7u8; 16 * 1024];
                        while written.load(Ordering::Relaxed) < STREAM_AT_MOST {
                            let frame = Frame::binary(Payload::Borrowed(&chunk));
                            if ws.write_frame(frame).await.is_err() {
                                return;
                            }
                            written.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                        }
                    });
                    let (parts, _) = response.into_parts();
                    Ok::<_, Infallible>(Response::from_parts(parts, Empty::<Bytes>::new()))
                }
            });
            tokio::spawn(
                http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades(),
            );
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_backpressures_the_backend_and_spares_other_calls() {
    let written = Arc::new(AtomicU64::new(0));
    let streamer = streaming_backend(written.clone()).await;
    let echo = echo_backend().name("direct").spawn().await;
    let proxy = shunt()
        .direct(echo.url())
        .nginx(format!("http://{streamer}"))
        .route("/stream=nginx")
        .route("/=direct")
        .arg("--health-check", "tcp")
        .start_ready()
        .await;

    // The slow client: handshake, then never read again.
    let (_stalled, _) = ws_connect(proxy.addr(), "/stream", &[])
        .await
        .expect("the streaming call");

    // The backend's writes stall: `written` stops growing, well short of the end.
    let mut last = u64::MAX;
    let stalled = eventually(Duration::from_secs(30), async || {
        let now = written.load(Ordering::Relaxed);
        if now == last && now > 0 {
            return true;
        }
        last = now;
        // Samples 300 ms apart: a stall is "no progress over 300 ms", not 20.
        tokio::time::sleep(Duration::from_millis(300)).await;
        false
    })
    .await;
    let at = written.load(Ordering::Relaxed);
    assert!(
        stalled,
        "the backend never felt backpressure ({at} bytes written)"
    );
    assert!(
        at < BUFFERED_AT_MOST,
        "{at} bytes were taken from the backend for a client that reads nothing"
    );

    // Another call echoes every frame, in order, while the stalled one is held.
    let (mut call, _) = ws_connect(proxy.addr(), "/audio", &[]).await.unwrap();
    assert_eq!(ws::recv_text(&mut call).await.unwrap(), "hello from direct");
    for i in 0..50 {
        let text = format!("frame {i}");
        ws::send_text(&mut call, &text).await.unwrap();
        let echoed = ws::recv_within(&mut call, Duration::from_secs(2)).await;
        assert!(
            matches!(&echoed, Ok(support::Msg::Text(t)) if *t == text),
            "frame {i}: {echoed:?}"
        );
    }
    // Still stalled: shunt did not start buffering meanwhile.
    assert!(written.load(Ordering::Relaxed) < BUFFERED_AT_MOST);
}
