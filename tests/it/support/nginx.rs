//! A real nginx in front of an upstream, configured like a production nginx
//! that handles WebSocket upgrades (`map $http_upgrade $connection_upgrade`),
//! or, with `without_upgrade_headers()`, like the one of the original outage.
//!
//! nginx runs in the foreground as a single process (`daemon off;
//! master_process off;`) with every path inside a private temp dir, and is
//! killed and reaped on drop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::require::Part;

/// How long nginx gets to accept its first connection.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How many ports to try if nginx loses the race for the one we picked.
const PORT_ATTEMPTS: usize = 5;

/// Builder returned by [`super::nginx`].
pub(crate) struct NginxBuilder {
    upstream: SocketAddr,
    upgrade_headers: bool,
}

/// A running nginx; killed (and waited for) on drop.
pub(crate) struct Nginx {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

/// Starts building an nginx that proxies `location /` to `upstream`.
pub(crate) fn nginx(upstream: SocketAddr) -> NginxBuilder {
    NginxBuilder {
        upstream,
        upgrade_headers: true,
    }
}

impl NginxBuilder {
    /// Leaves out `proxy_http_version 1.1` and the `Upgrade`/`Connection`
    /// headers: the misconfigured nginx of the original outage.
    pub(crate) fn without_upgrade_headers(mut self) -> Self {
        self.upgrade_headers = false;
        self
    }

    /// Starts nginx. Returns `None` (after a visible skip line) when nginx is
    /// not installed, unless it is required here (see [`super::require`]).
    /// Async: waiting for nginx to accept must not block a runtime worker.
    pub(crate) async fn spawn(self) -> Option<Nginx> {
        let binary = nginx_binary()?;
        let dir = temp_dir();
        let mut last_error = String::new();
        for _ in 0..PORT_ATTEMPTS {
            let port = super::free_port();
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let conf = config(&dir, addr, self.upstream, self.upgrade_headers);
            match start(&binary, &dir, addr, &conf).await {
                Ok(child) => return Some(Nginx { child, addr, dir }),
                Err(e) => last_error = e,
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
        panic!("nginx did not start after {PORT_ATTEMPTS} attempts: {last_error}");
    }
}

impl Nginx {
    /// `http://ADDR`.
    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// nginx's error log so far (for failure messages).
    pub(crate) fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The nginx binary, or `None` (after a visible skip line) when it is not
/// installed; fails instead where nginx is required (see [`super::require`]).
pub(crate) fn nginx_binary() -> Option<PathBuf> {
    super::require(
        Part::Nginx,
        find_nginx().ok_or_else(|| "nginx not found on PATH or at /usr/sbin/nginx".to_owned()),
    )
}

fn find_nginx() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("nginx"))
            .find(|p| p.is_file())
    });
    on_path.or_else(|| {
        let sbin = PathBuf::from("/usr/sbin/nginx");
        sbin.is_file().then_some(sbin)
    })
}

fn temp_dir() -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!("shunt-nginx-{}-{n}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create nginx temp dir");
    dir
}

/// A port that was free a moment ago (nginx may lose a race for it; the
/// caller retries).
/// The start of a test nginx's configuration in `dir`: one foreground
/// process, its pid, logs and temporary files in `dir`, and an open `http {`
/// block (access log on) that the caller fills in and closes.
pub(crate) fn prelude(dir: &Path) -> String {
    let d = dir.display();
    format!(
        r#"daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;"#
    )
}

fn config(dir: &Path, listen: SocketAddr, upstream: SocketAddr, upgrade_headers: bool) -> String {
    let prelude = prelude(dir);
    let upgrade = if upgrade_headers {
        "proxy_http_version 1.1;\n            proxy_set_header Upgrade $http_upgrade;\n            proxy_set_header Connection $connection_upgrade;"
    } else {
        ""
    };
    format!(
        r#"{prelude}
    map $http_upgrade $connection_upgrade {{
        default upgrade;
        ''      close;
    }}
    server {{
        listen {listen};
        client_max_body_size 0;
        location / {{
            proxy_pass http://{upstream};
            proxy_set_header Host $http_host;
            {upgrade}
            proxy_read_timeout 3600s;
            proxy_send_timeout 3600s;
            proxy_buffering off;
            proxy_request_buffering off;
        }}
    }}
}}
"#
    )
}

/// Starts nginx with `config` (written to `dir/nginx.conf`) and waits until
/// it accepts a connection on `listen`.
pub(crate) async fn start(
    binary: &Path,
    dir: &Path,
    listen: SocketAddr,
    config: &str,
) -> Result<Child, String> {
    let conf = dir.join("nginx.conf");
    std::fs::write(&conf, config).map_err(|e| format!("write config: {e}"))?;
    let mut child = Command::new(binary)
        .arg("-p")
        .arg(dir)
        .arg("-e")
        .arg(dir.join("error.log"))
        .arg("-c")
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("spawn {}: {e}", binary.display()))?;
    let mut exited = None;
    let accepting = super::eventually(START_TIMEOUT, async || {
        if let Ok(Some(status)) = child.try_wait() {
            exited = Some(status);
            return true;
        }
        let attempt = tokio::net::TcpStream::connect(listen);
        matches!(
            tokio::time::timeout(Duration::from_millis(200), attempt).await,
            Ok(Ok(_))
        )
    })
    .await;
    if let Some(status) = exited {
        let log = std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
        return Err(format!("nginx exited with {status}: {log}"));
    }
    if accepting {
        return Ok(child);
    }
    let _ = child.kill();
    let _ = child.wait();
    Err(format!(
        "nginx did not accept on {listen} within {START_TIMEOUT:?}"
    ))
}
