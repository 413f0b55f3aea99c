//! What a plain keep-alive request costs in heap allocations, end to end
//! through an in-process shunt (issue 12: "no per-request allocation that can
//! be avoided").
//!
//! The test binary counts every allocation with `dhat`'s testing mode, so it
//! holds this one test only. Neither end allocates per request: the origin
//! answers from a static response and the client reads into a fixed buffer,
//! so what is counted is shunt's own work (both of its hyper connections and
//! the request path between them).
//!
//! Its own test binary, not a module of `tests/it`: the `#[global_allocator]`
//! counts the whole process, so no other test may run beside it.
//!
//! Measured with DHAT on the release binary (`--workers 1`): 26.3
//! allocations per request before the lean path, 12.3 after. Of those, 7
//! are hyper's (a fresh 8 KiB read buffer and its shared head on each side,
//! the client dispatch's oneshot, the response body's channel, the header
//! read timer), 5 shunt's: `X-Forwarded-For`, `X-Real-IP`, the `Host`
//! check (http's `Authority` parser copies), and the two boxed bodies.

#[path = "it/support/mod.rs"]
#[allow(dead_code, unused_imports)]
mod support;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

/// What the origin answers to every request.
const ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";

/// Requests counted, after the warm-up.
const COUNTED: u64 = 200;

/// The bound this test holds shunt to (measured: about 12).
const MAX_PER_REQUEST: f64 = 15.0;

/// An HTTP/1.1 origin on loopback that answers every request head with
/// [`ANSWER`], allocating nothing per request.
async fn static_origin() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0; 4096];
                let mut have = 0;
                loop {
                    let Ok(n) = s.read(&mut buf[have..]).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    have += n;
                    if let Some(end) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") {
                        // A GET has no body: the head is the whole request.
                        buf.copy_within(end + 4..have, 0);
                        have -= end + 4;
                        if s.write_all(ANSWER).await.is_err() {
                            return;
                        }
                    } else if have == buf.len() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// One keep-alive GET on `s`; returns once the 5-byte body is in.
async fn get(s: &mut TcpStream, buf: &mut [u8]) {
    s.write_all(b"GET /page?x=1 HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut have = 0;
    loop {
        let n = tokio::time::timeout(support::IO_TIMEOUT, s.read(&mut buf[have..]))
            .await
            .expect("an answer in time")
            .unwrap();
        assert!(n > 0, "shunt closed a keep-alive connection");
        have += n;
        if buf[..have].ends_with(b"\r\n\r\nhello") {
            assert!(buf.starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..have]);
            return;
        }
        assert!(have < buf.len(), "answer too long");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_request_costs_a_dozen_allocations_at_most() {
    let _profiler = dhat::Profiler::builder().testing().build();
    let origin = static_origin().await;
    let shunt = support::shunt()
        .direct(format!("http://{origin}"))
        .arg("--workers", "1")
        .start()
        .await;
    let mut s = TcpStream::connect(shunt.addr()).await.unwrap();
    let mut buf = [0; 4096];
    // Warm-up: the upstream connection, the pool, thread-locals, the log batch.
    for _ in 0..50 {
        get(&mut s, &mut buf).await;
    }
    let before = dhat::HeapStats::get().total_blocks;
    for _ in 0..COUNTED {
        get(&mut s, &mut buf).await;
    }
    let after = dhat::HeapStats::get().total_blocks;
    let per_request = (after - before) as f64 / COUNTED as f64;
    println!("allocations per plain request: {per_request:.1}");
    assert!(
        per_request <= MAX_PER_REQUEST,
        "{per_request:.1} allocations per plain request (bound {MAX_PER_REQUEST})"
    );
    drop(s);
    shunt.stop().await;
}
