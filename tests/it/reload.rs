//! Reload of routes and upstreams: new connections follow the new table, live
//! tunnels keep the upstream they were opened on; SIGHUP, POST /reload and
//! file changes; a hundred reloads under two hundred streaming calls.

use crate::support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use support::ws::{header, recv_binary, recv_text, send_binary, send_text};
use support::{echo_backend, eventually, shunt, ws_connect};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(10);

/// Two echo backends, `a` and `b`, and a config file routing
/// `/frontend-audio` to one of them; the directory goes when it drops.
struct Routes {
    a: support::EchoBackend,
    b: support::EchoBackend,
    dir: PathBuf,
    config: PathBuf,
}

impl Routes {
    /// Backends `a` and `b`; the config routes audio to `a`.
    async fn new(tag: &str) -> Routes {
        let dir = std::env::temp_dir().join(format!(
            "shunt-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let routes = Routes {
            a: echo_backend().name("a").spawn().await,
            b: echo_backend().name("b").spawn().await,
            config: dir.join("shunt.toml"),
            dir,
        };
        routes.route_audio(&["a"]);
        routes
    }

    fn config_arg(&self) -> &str {
        self.config.to_str().unwrap()
    }

    /// shunt on this config file, reloaded only when told (`--no-watch`).
    async fn shunt_without_watch(&self) -> support::Shunt {
        shunt()
            .arg("--config", self.config_arg())
            .flag("--no-watch")
            .start()
            .await
    }

    /// Rewrite the config file in place.
    fn route_audio(&self, via: &[&str]) {
        self.write(&self.config, via);
    }

    /// Write a config routing audio `via` these upstreams to `path`.
    fn write(&self, path: &Path, via: &[&str]) {
        let via = via
            .iter()
            .map(|u| format!("\"{u}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let (a, b) = (self.a.url(), self.b.url());
        let text = format!(
            "[upstreams.a]\nurl = \"{a}\"\n\n[upstreams.b]\nurl = \"{b}\"\n\n\
             [[routes]]\npath = \"/frontend-audio\"\nvia = [{via}]\n"
        );
        std::fs::write(path, text).unwrap();
    }
}

impl Drop for Routes {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn hello_of(addr: std::net::SocketAddr) -> String {
    let (mut ws, _) = ws_connect(addr, "/frontend-audio", &[]).await.unwrap();
    recv_text(&mut ws).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_reload_moves_new_connections_and_keeps_old_tunnels() {
    let routes = Routes::new("post-reload").await;
    let proxy = routes.shunt_without_watch().await;

    let (mut old, resp) = ws_connect(proxy.addr(), "/frontend-audio", &[])
        .await
        .unwrap();
    assert_eq!(header(&resp, "x-shunt-route"), "a");
    assert_eq!(recv_text(&mut old).await.unwrap(), "hello from a");

    routes.route_audio(&["b"]);
    let (code, body) = proxy.admin_post("/reload").await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"routes_changed\": true"), "{body}");
    assert_eq!(hello_of(proxy.addr()).await, "hello from b");

    send_text(&mut old, "still on a").await.unwrap();
    assert_eq!(recv_text(&mut old).await.unwrap(), "still on a");
    let status = proxy.status().await.unwrap();
    assert_eq!(status["generation"], 2);
    assert_eq!(status["last_reload"]["ok"], true);

    // A config that does not validate changes nothing and says why.
    std::fs::write(
        &routes.config,
        "[[routes]]\npath = \"/x\"\nvia = [\"nowhere\"]\n",
    )
    .unwrap();
    let (code, body) = proxy.admin_post("/reload").await;
    assert_eq!(code, 422, "{body}");
    assert!(body.contains("nowhere"), "{body}");
    assert_eq!(hello_of(proxy.addr()).await, "hello from b");
    assert_eq!(proxy.status().await.unwrap()["generation"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_file_change_reloads_by_itself_and_keeps_health() {
    let routes = Routes::new("watch").await;
    let proxy = shunt().arg("--config", routes.config_arg()).start().await;
    proxy.wait_upstream("a", "up").await;

    // Editors and deploy tools replace the file by rename.
    let tmp = routes.dir.join("shunt.toml.new");
    routes.write(&tmp, &["b", "a"]);
    std::fs::rename(&tmp, &routes.config).unwrap();
    let moved = eventually(WAIT, async || {
        hello_of(proxy.addr()).await == "hello from b"
    })
    .await;
    assert!(moved, "the file change was not picked up");
    // `a` did not change, so it was not reset to "unknown".
    assert_eq!(proxy.upstream_health("a").await.unwrap(), "up");
}

struct Child_(Child);

impl Drop for Child_ {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_binary_without_dropping_a_call() {
    let routes = Routes::new("sighup").await;
    let (port, admin) = (support::free_port(), support::free_port());
    let mut child = Child_(
        Command::new(env!("CARGO_BIN_EXE_shunt"))
            .args(["run", "--config", routes.config_arg(), "--no-watch"])
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--admin",
                &format!("127.0.0.1:{admin}"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let up = eventually(WAIT, async || TcpStream::connect(addr).await.is_ok()).await;
    assert!(up, "shunt did not start listening");

    let (mut call, _) = ws_connect(addr, "/frontend-audio", &[]).await.unwrap();
    assert_eq!(recv_text(&mut call).await.unwrap(), "hello from a");
    routes.route_audio(&["b"]);
    signal(&child.0, "-HUP");
    let moved = eventually(WAIT, async || hello_of(addr).await == "hello from b").await;
    assert!(moved, "SIGHUP did not reload");
    send_binary(&mut call, &[1, 2, 3]).await.unwrap();
    assert_eq!(recv_binary(&mut call).await.unwrap(), vec![1, 2, 3]);
    drop(call);

    signal(&child.0, "-TERM");
    let mut code = None;
    let exited = eventually(WAIT, async || {
        code = child.0.try_wait().unwrap();
        code.is_some()
    })
    .await;
    assert!(exited, "shunt did not exit after SIGTERM");
    assert_eq!(code.unwrap().code(), Some(0));
}

/// 200 calls streaming 640-byte frames every 20 ms while the routing table is
/// reloaded 100 times: no call dropped, no frame lost or out of order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_reloads_under_two_hundred_streaming_calls() {
    const CALLS: usize = 200;
    const RELOADS: usize = 100;
    let routes = Routes::new("soak").await;
    let proxy = routes.shunt_without_watch().await;

    let stop = Arc::new(AtomicBool::new(false));
    let frames = Arc::new(AtomicU64::new(0));
    let mut calls = Vec::new();
    for _ in 0..CALLS {
        let (mut ws, _) = ws_connect(proxy.addr(), "/frontend-audio", &[])
            .await
            .unwrap();
        assert_eq!(recv_text(&mut ws).await.unwrap(), "hello from a");
        let (stop, frames) = (stop.clone(), frames.clone());
        calls.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut seq: u64 = 0;
            // Bounded: the test stops the calls after the reloads, at most ~60 s.
            while !stop.load(Ordering::Relaxed) && seq < 3000 {
                tick.tick().await;
                let mut frame = vec![0u8; 640];
                frame[..8].copy_from_slice(&seq.to_be_bytes());
                send_binary(&mut ws, &frame)
                    .await
                    .map_err(|e| format!("send {seq}: {e}"))?;
                let echoed = recv_binary(&mut ws)
                    .await
                    .map_err(|e| format!("recv {seq}: {e}"))?;
                if echoed != frame {
                    return Err(format!("frame {seq} came back as frame {:?}", &echoed[..8]));
                }
                seq += 1;
                frames.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<u64, String>(seq)
        }));
    }

    for i in 0..RELOADS {
        routes.route_audio(if i % 2 == 0 { &["b"] } else { &["a"] });
        let (code, body) = proxy.admin_post("/reload").await;
        assert_eq!(code, 200, "reload {i}: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Every call goes on after the last reload: wait for a few more frames each.
    let after_reloads = frames.load(Ordering::Relaxed);
    let progressed = eventually(Duration::from_secs(10), async || {
        frames.load(Ordering::Relaxed) >= after_reloads + (CALLS * 10) as u64
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    assert!(progressed, "the calls stalled after the reloads");

    let mut dropped = Vec::new();
    for call in calls {
        match call.await.unwrap() {
            Ok(sent) => assert!(sent > 20, "a call made too little progress: {sent} frames"),
            Err(e) => dropped.push(e),
        }
    }
    assert!(
        dropped.is_empty(),
        "{} calls failed: {:?}",
        dropped.len(),
        &dropped[..dropped.len().min(5)]
    );
    let status = proxy.status().await.unwrap();
    assert_eq!(status["generation"], (RELOADS + 1) as u64);
    // The calls all stayed on `a`, where they were opened.
    let tunnels = status["tunnels"].as_array().unwrap();
    assert!(tunnels.iter().all(|t| t["upstream"] == "a"), "{tunnels:?}");
    assert!(frames.load(Ordering::Relaxed) >= (CALLS * 20) as u64);
}

/// A setting only a restart applies stays pending in `/status` and in every
/// later reload's answer, whichever reload saw the change first (here the
/// file watcher, before `POST /reload`); the log line of a reload says what
/// it changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_restart_stays_reported_after_the_watcher_applied_it() {
    let routes = Routes::new("pending-restart").await;
    support::capture_logs();
    let proxy = shunt().arg("--config", routes.config_arg()).start().await;
    assert_eq!(
        proxy.status().await.unwrap()["restart_required"],
        serde_json::json!([])
    );
    let (a, b) = (routes.a.url(), routes.b.url());
    let text = format!(
        "log_format = \"json\"\n\n[upstreams.a]\nurl = \"{a}\"\n\n[upstreams.b]\nurl = \"{b}\"\n\n\
         [[routes]]\npath = \"/frontend-audio\"\nvia = [\"b\"]\n\n\
         [[routes]]\npath = \"/other\"\nvia = [\"a\"]\n"
    );
    let tmp = routes.dir.join("shunt.toml.new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, &routes.config).unwrap();
    let applied = eventually(WAIT, async || {
        proxy.status().await.unwrap()["generation"] == 2
    })
    .await;
    assert!(applied, "the watcher did not apply the change");
    let status = proxy.status().await.unwrap();
    assert_eq!(
        status["restart_required"],
        serde_json::json!(["log_format"])
    );

    // The watcher applied it already: nothing changes now, the restart is still due.
    let (code, body) = proxy.admin_post("/reload").await;
    assert_eq!(code, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["changed"]["routes_changed"], false, "{body}");
    assert_eq!(
        answer["restart_required"],
        serde_json::json!(["log_format"])
    );
    assert_eq!(
        proxy.status().await.unwrap()["restart_required"],
        serde_json::json!(["log_format"])
    );
    let lines = support::logs();
    assert!(
        lines.contains("routes added /other") && lines.contains("routes changed /frontend-audio"),
        "the reload line says what changed:\n{lines}"
    );
    assert_eq!(
        lines
            .matches("log_format changed in the configuration")
            .count(),
        1,
        "warned once, not at every reload:\n{lines}"
    );
}

/// `shunt_reloads_total{result, trigger}` and `shunt_last_reload_success`
/// follow reloads; `shunt_certificate_expiry_seconds{name, source}` counts down to
/// the served certificate's `not_after`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_and_certificate_expiry_are_metrics() {
    let routes = Routes::new("reload-metrics").await;
    let pki = support::tls::TestPki::new();
    let (cert, key) = pki.write("localhost", &["localhost"]);
    let proxy = shunt()
        .arg("--config", routes.config_arg())
        .flag("--no-watch")
        .tls(&cert, &key)
        .start()
        .await;
    let metrics = async || proxy.admin_get("/metrics").await.unwrap().1;
    let m = metrics().await;
    assert!(m.lines().any(|l| l == "shunt_last_reload_success 1"), "{m}");
    let expiry: f64 = m
        .lines()
        .find_map(|l| {
            l.strip_prefix("shunt_certificate_expiry_seconds{name=\"localhost\",source=\"file\"} ")
        })
        .unwrap_or_else(|| panic!("no expiry for localhost in\n{m}"))
        .parse()
        .unwrap();
    let status = proxy.status().await.unwrap();
    let not_after =
        humantime::parse_rfc3339(status["certificates"][0]["not_after"].as_str().unwrap()).unwrap();
    let left = not_after
        .duration_since(std::time::SystemTime::now())
        .unwrap()
        .as_secs_f64();
    assert!((expiry - left).abs() < 120.0, "{expiry} against {left}");

    assert_eq!(proxy.admin_post("/reload").await.0, 200);
    std::fs::write(
        &routes.config,
        "[[routes]]\npath = \"/x\"\nvia = [\"nowhere\"]\n",
    )
    .unwrap();
    assert_eq!(proxy.admin_post("/reload").await.0, 422);
    let m = metrics().await;
    for line in [
        "shunt_reloads_total{result=\"ok\",trigger=\"api\"} 1",
        "shunt_reloads_total{result=\"failed\",trigger=\"api\"} 1",
        "shunt_last_reload_success 0",
    ] {
        assert!(m.lines().any(|l| l == line), "no {line:?} in\n{m}");
    }
    routes.route_audio(&["b"]);
    assert_eq!(proxy.admin_post("/reload").await.0, 200);
    let m = metrics().await;
    for line in [
        "shunt_reloads_total{result=\"ok\",trigger=\"api\"} 2",
        "shunt_last_reload_success 1",
    ] {
        assert!(m.lines().any(|l| l == line), "no {line:?} in\n{m}");
    }
}
