//! Out of file descriptors: the real binary runs with both the soft and the
//! hard `RLIMIT_NOFILE` set low (it raises soft to hard, so hard must be low
//! too), a flood of idle connections exhausts its descriptors, and then:
//! the live call keeps echoing, and once the flood goes away new calls are
//! accepted again (the accept loop backs off on `EMFILE`, it never dies).

use crate::support;

use std::time::Duration;

use support::shunt::ShuntChild;
use support::{echo_backend, eventually, ws, ws_connect};
use tokio::net::TcpStream;

/// Open-files limit given to the child (soft and hard).
const LIMIT: u32 = 40;

/// The shunt binary under `ulimit -n LIMIT` (only requests touch the
/// upstream: no probe competes for descriptors), once it accepts.
async fn limited_shunt(direct: &str) -> ShuntChild {
    let shunt = support::shunt()
        .bare()
        .nofile_limit(LIMIT)
        .direct(direct)
        .route("/=direct")
        .arg("--health-interval", "1h")
        .arg("--header-timeout", "1h")
        .spawn_process();
    let listen = shunt.addr();
    let up = eventually(Duration::from_secs(10), async || {
        TcpStream::connect(listen).await.is_ok()
    })
    .await;
    assert!(
        up,
        "shunt did not listen on {listen}; log:\n{}",
        shunt.log()
    );
    shunt
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emfile_spares_live_calls_and_accepts_resume_when_descriptors_free_up() {
    let backend = echo_backend().name("direct").spawn().await;
    let shunt = limited_shunt(&backend.url()).await;
    assert!(
        shunt
            .log()
            .contains(&format!("open-files limit (RLIMIT_NOFILE) {LIMIT}")),
        "the limit is logged at start:\n{}",
        shunt.log()
    );

    let (mut call, _) = ws_connect(shunt.addr(), "/audio", &[])
        .await
        .expect("the call before the flood");
    assert_eq!(ws::recv_text(&mut call).await.unwrap(), "hello from direct");

    // More idle connections than descriptors: shunt accepts until EMFILE, the
    // rest wait in the listen backlog.
    let mut flood = Vec::new();
    for _ in 0..2 * LIMIT {
        flood.push(
            TcpStream::connect(shunt.addr())
                .await
                .expect("connect (backlog)"),
        );
    }
    let exhausted = eventually(Duration::from_secs(10), async || {
        shunt.log().contains("accept failed; backing off")
    })
    .await;
    assert!(exhausted, "no EMFILE back-off logged:\n{}", shunt.log());

    // The live call is untouched.
    for i in 0..5 {
        let text = format!("frame {i} during EMFILE");
        ws::send_text(&mut call, &text).await.unwrap();
        assert_eq!(ws::recv_text(&mut call).await.unwrap(), text);
    }

    // Descriptors free up: new calls get in again.
    drop(flood);
    let mut last = String::new();
    let resumed = eventually(Duration::from_secs(20), async || {
        match ws_connect(shunt.addr(), "/audio", &[]).await {
            Ok((mut socket, _)) => ws::recv_text(&mut socket).await.is_ok(),
            Err(e) => support::not_yet(&mut last, e),
        }
    })
    .await;
    assert!(
        resumed,
        "no new call after the flood ended: {last}\n{}",
        shunt.log()
    );
    ws::send_text(&mut call, "after").await.unwrap();
    assert_eq!(ws::recv_text(&mut call).await.unwrap(), "after");
    assert!(!shunt.log().contains("panicked"), "{}", shunt.log());
}
