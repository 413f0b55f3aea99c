//! Out of file descriptors: the real binary runs with both the soft and the
//! hard `RLIMIT_NOFILE` set low (it raises soft to hard, so hard must be low
//! too), a flood of idle connections exhausts its descriptors, and then:
//! the live call keeps echoing, and once the flood goes away new calls are
//! accepted again (the accept loop backs off on `EMFILE`, it never dies).

use crate::support;

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::{echo_backend, eventually, free_port, ws, ws_connect};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;

/// Open-files limit given to the child (soft and hard).
const LIMIT: u32 = 40;

/// The shunt binary under `ulimit -n LIMIT`, its stderr collected.
struct LimitedShunt {
    _child: tokio::process::Child,
    listen: SocketAddr,
    log: Arc<Mutex<String>>,
}

impl LimitedShunt {
    async fn start(direct: &str) -> LimitedShunt {
        let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let script = format!("ulimit -n {LIMIT} && exec \"$0\" \"$@\"");
        let mut child = tokio::process::Command::new("bash")
            .arg("-c")
            .arg(script)
            .arg(env!("CARGO_BIN_EXE_shunt"))
            .args([
                "--listen",
                &listen.to_string(),
                "--admin",
                &admin.to_string(),
            ])
            .args(["--direct", direct, "--route", "/=direct"])
            // Only requests touch the upstream: no probe competes for descriptors.
            .args(["--health-interval", "1h", "--header-timeout", "1h"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn bash -c 'ulimit -n ..; exec shunt ..'");
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("piped stderr");
        let sink = log.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let shunt = LimitedShunt {
            _child: child,
            listen,
            log,
        };
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

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emfile_spares_live_calls_and_accepts_resume_when_descriptors_free_up() {
    let backend = echo_backend().name("direct").spawn().await;
    let shunt = LimitedShunt::start(&backend.url()).await;
    assert!(
        shunt
            .log()
            .contains(&format!("open-files limit (RLIMIT_NOFILE) {LIMIT}")),
        "the limit is logged at start:\n{}",
        shunt.log()
    );

    let (mut call, _) = ws_connect(shunt.listen, "/audio", &[])
        .await
        .expect("the call before the flood");
    assert_eq!(ws::recv_text(&mut call).await.unwrap(), "hello from direct");

    // More idle connections than descriptors: shunt accepts until EMFILE, the
    // rest wait in the listen backlog.
    let mut flood = Vec::new();
    for _ in 0..2 * LIMIT {
        flood.push(
            TcpStream::connect(shunt.listen)
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
        match ws_connect(shunt.listen, "/audio", &[]).await {
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
