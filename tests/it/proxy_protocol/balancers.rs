//! Real balancers in front of shunt, speaking PROXY protocol: HAProxy
//! (`mode tcp`, `send-proxy-v2` and `send-proxy`) and nginx's stream module
//! (`proxy_protocol on`), each passing TLS through to shunt. Clients
//! connect to the balancer from 127.0.0.2 and 127.0.0.3; shunt must see
//! those, never the balancer's 127.0.0.1.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;
use tokio_rustls::TlsConnector;

use super::{GET, seen_client};
use crate::support::raw::{Answer, parse_answer, raw_from, ws_open};
use crate::support::tls::TestPki;
use crate::support::{
    IO_TIMEOUT, Part, Shunt, echo_backend, eventually, free_port, require, shunt,
};

/// Which balancer, and how it sends the header.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// HAProxy, `server … send-proxy-v2`.
    HaproxyV2,
    /// HAProxy, `server … send-proxy` (v1).
    HaproxyV1,
    /// nginx's stream module, `proxy_protocol on` (v1).
    NginxStream,
}

/// A balancer process in front of one shunt; killed and reaped on drop.
struct Balancer {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Drop for Balancer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The balancer's binary, or `None` after a visible skip line.
fn binary(kind: Kind) -> Option<PathBuf> {
    let found = |p: &str| {
        let p = PathBuf::from(p);
        p.is_file().then_some(p)
    };
    match kind {
        Kind::HaproxyV2 | Kind::HaproxyV1 => require(
            Part::Haproxy,
            found("/usr/sbin/haproxy")
                .ok_or_else(|| "haproxy not found at /usr/sbin/haproxy".to_owned()),
        ),
        Kind::NginxStream => require(
            Part::NginxStream,
            found("/usr/sbin/nginx")
                .filter(|_| Path::new(STREAM_MODULE).is_file())
                .ok_or_else(|| format!("nginx or {STREAM_MODULE} not found")),
        ),
    }
}

/// Debian's `libnginx-mod-stream`.
const STREAM_MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";

/// The balancer's configuration: listen on `listen`, pass to `shunt` with a PROXY header.
fn config(kind: Kind, dir: &Path, listen: SocketAddr, shunt: SocketAddr) -> String {
    let d = dir.display();
    let haproxy = |send: &str| {
        format!(
            "global\n    maxconn 256\ndefaults\n    mode tcp\n    timeout connect 5s\n    timeout client 30s\n    timeout server 30s\n\
             frontend front\n    bind {listen}\n    default_backend shunt\n\
             backend shunt\n    server shunt {shunt} {send}\n"
        )
    };
    match kind {
        Kind::HaproxyV2 => haproxy("send-proxy-v2"),
        Kind::HaproxyV1 => haproxy("send-proxy"),
        Kind::NginxStream => format!(
            "load_module {STREAM_MODULE};\ndaemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
             error_log {d}/error.log info;\nevents {{ worker_connections 256; }}\n\
             stream {{\n    server {{\n        listen {listen};\n        proxy_pass {shunt};\n        proxy_protocol on;\n    }}\n}}\n"
        ),
    }
}

/// Starts `kind` in front of `shunt`, accepting on a free loopback port.
async fn start(kind: Kind, shunt: SocketAddr) -> Option<Balancer> {
    let binary = binary(kind)?;
    let dir = std::env::temp_dir().join(format!(
        "shunt-balancer-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let mut last = String::new();
    for _ in 0..5 {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let conf = dir.join("balancer.conf");
        std::fs::write(&conf, config(kind, &dir, addr, shunt)).unwrap();
        let mut cmd = Command::new(&binary);
        match kind {
            Kind::HaproxyV2 | Kind::HaproxyV1 => cmd.arg("-f").arg(&conf).arg("-db"),
            Kind::NginxStream => cmd
                .arg("-p")
                .arg(&dir)
                .arg("-e")
                .arg(dir.join("error.log"))
                .arg("-c")
                .arg(&conf),
        };
        let log = std::fs::File::create(dir.join("stderr.log")).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", binary.display()));
        let mut balancer = Balancer {
            child,
            addr,
            dir: dir.clone(),
        };
        let mut exited = false;
        let up = eventually(Duration::from_secs(10), async || {
            if let Ok(Some(_)) = balancer.child.try_wait() {
                exited = true;
                return true;
            }
            let attempt = tokio::net::TcpStream::connect(addr);
            matches!(
                tokio::time::timeout(Duration::from_millis(200), attempt).await,
                Ok(Ok(_))
            )
        })
        .await;
        if up && !exited {
            return Some(balancer);
        }
        last = std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default();
        // Keep the directory for the next attempt.
        balancer.dir = PathBuf::new();
    }
    let _ = std::fs::remove_dir_all(&dir);
    panic!("{kind:?} did not start: {last}");
}

/// A TLS `GET /who` to `addr` from loopback source `from`, read to the end;
/// `None` when the handshake fails (the connection was refused).
async fn tls_get_from(
    addr: SocketAddr,
    from: &str,
    tls: Arc<rustls::ClientConfig>,
) -> Option<Answer> {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(from.parse::<IpAddr>().unwrap(), 0))
        .unwrap();
    let tcp = tokio::time::timeout(IO_TIMEOUT, socket.connect(addr))
        .await
        .expect("connect in time")
        .expect("connect");
    let name = ServerName::try_from("localhost").unwrap();
    let mut s = tokio::time::timeout(IO_TIMEOUT, TlsConnector::from(tls).connect(name, tcp))
        .await
        .expect("handshake ends in time")
        .ok()?;
    s.write_all(GET).await.ok()?;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(IO_TIMEOUT, s.read_to_end(&mut buf)).await;
    Some(parse_answer(&buf))
}

/// One balancer kind, two shunts behind two instances of it: one with TLS
/// and `--allow-ip 127.0.0.2`, one plain with a rate of 1 a minute.
async fn real_addresses_through(kind: Kind, versions: &str) {
    let backend = echo_backend().spawn().await;
    let pki = TestPki::new();
    let (cert, key) = pki.write("localhost", &["localhost"]);
    let behind = |extra: &[&str]| {
        shunt()
            .direct(backend.url())
            .arg("--proxy-protocol", versions)
            .arg("--trusted-proxy", "127.0.0.1")
            .flags(extra)
    };

    // allow_ip admits 127.0.0.2 and refuses 127.0.0.3, before TLS.
    let guarded: Shunt = behind(&["--allow-ip", "127.0.0.2"])
        .tls(&cert, &key)
        .start_ready()
        .await;
    let Some(front) = start(kind, guarded.addr()).await else {
        return;
    };
    let a = tls_get_from(front.addr, "127.0.0.2", pki.client_config())
        .await
        .expect("127.0.0.2 is admitted");
    assert_eq!(
        seen_client(&a),
        ("127.0.0.2".into(), "127.0.0.2".into()),
        "{kind:?}"
    );
    let refused = tls_get_from(front.addr, "127.0.0.3", pki.client_config()).await;
    assert!(
        refused.is_none_or(|a| a.status.is_none()),
        "{kind:?}: 127.0.0.3 must be refused"
    );
    super::wait_refused(&guarded, "ip", 1).await;

    // The rate limit counts each client on its own; /calls shows the client.
    let limited = behind(&["--rate", "1/m", "--burst", "1"])
        .start_ready()
        .await;
    let Some(front) = start(kind, limited.addr()).await else {
        return;
    };
    let (status, ws, _) = ws_open(front.addr, "127.0.0.2", "/call", &[]).await;
    assert_eq!(status, Some(101), "{kind:?}");
    let again = raw_from(front.addr, "127.0.0.2", GET).await;
    assert_eq!(again.status, Some(429), "{kind:?}: {}", again.text);
    let other = raw_from(front.addr, "127.0.0.3", GET).await;
    assert_eq!(
        seen_client(&other),
        ("127.0.0.3".into(), "127.0.0.3".into()),
        "{kind:?}"
    );
    let calls = limited.admin_json("/calls").await;
    let clients: Vec<String> = calls["calls"]
        .as_array()
        .map(|c| {
            c.iter()
                .filter_map(|c| c["client"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    assert!(
        clients.len() == 1 && clients[0].starts_with("127.0.0.2:"),
        "{kind:?}: /calls shows the real client: {calls}"
    );
    drop(ws);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_haproxy_send_proxy_v2() {
    real_addresses_through(Kind::HaproxyV2, "v2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_haproxy_send_proxy_v1() {
    real_addresses_through(Kind::HaproxyV1, "v1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_nginx_stream_proxy_protocol() {
    real_addresses_through(Kind::NginxStream, "any").await;
}
