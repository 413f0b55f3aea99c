//! `send_proxy_protocol` towards an upstream: a real nginx with
//! `listen … proxy_protocol` in front of the echo backend passes
//! `$proxy_protocol_addr` on as `X-PP-Client`. nginx refuses a connection
//! without the header, so its health probes (`LOCAL` / `PROXY UNKNOWN`)
//! passing shows they carry one too.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Child;

use super::{GET, seen_client};
use crate::support::nginx::{self, nginx_binary};
use crate::support::raw::{Answer, raw_from};
use crate::support::{TempFile, echo_backend, free_port, shunt};

/// nginx reading PROXY headers, in front of `backend`; killed on drop.
struct PpNginx {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Drop for PpNginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn pp_nginx(backend: SocketAddr) -> Option<PpNginx> {
    let binary = nginx_binary()?;
    let port = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let dir = std::env::temp_dir().join(format!("shunt-pp-nginx-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let conf = format!(
        r#"{prelude}
    server {{
        listen {addr} proxy_protocol;
        location / {{
            proxy_pass http://{backend};
            proxy_set_header X-PP-Client $proxy_protocol_addr;
        }}
    }}
}}
"#,
        prelude = nginx::prelude(&dir)
    );
    match nginx::start(&binary, &dir, addr, &conf).await {
        Ok(child) => Some(PpNginx { child, addr, dir }),
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            panic!("nginx with proxy_protocol did not start: {e}");
        }
    }
}

/// What nginx said the PROXY header named.
fn pp_client(a: &Answer) -> String {
    seen_client(a);
    let d: serde_json::Value = serde_json::from_str(a.body()).unwrap();
    crate::support::seen_header(&d, "x-pp-client").join(", ")
}

async fn real_client_sent_upstream(version: &str) {
    let backend = echo_backend().spawn().await;
    let Some(nginx) = pp_nginx(backend.addr()).await else {
        return;
    };
    let config = TempFile::new(
        "shunt.toml",
        &format!(
            "[upstreams.pp]\nurl = \"http://{}\"\nsend_proxy_protocol = \"{version}\"\nhealth = {{ check = \"http:/health\" }}\n\n\
             [[routes]]\npath = \"/\"\nvia = [\"pp\"]\n",
            nginx.addr
        ),
    );
    let s = shunt().arg("--config", config.path()).start().await;
    s.wait_upstream("pp", "up").await;
    // One client after the other: each gets a connection of its own.
    for from in ["127.0.0.2", "127.0.0.3", "127.0.0.2"] {
        let a = raw_from(s.addr(), from, GET).await;
        assert_eq!(pp_client(&a), from, "{version}: {}", a.text);
    }
}

#[tokio::test]
async fn send_proxy_protocol_v2_names_each_client_to_the_upstream() {
    real_client_sent_upstream("v2").await;
}

#[tokio::test]
async fn send_proxy_protocol_v1_names_each_client_to_the_upstream() {
    real_client_sent_upstream("v1").await;
}
