//! The deploy files, run for real under podman (issue 23): the image built
//! from `deploy/Dockerfile`'s shipped runtime stage, the compose stack of
//! `deploy/docker-compose.yml`, and the Kubernetes sidecar pod of
//! `deploy/kubernetes-sidecar.yaml` each carry a wss:// call, and each
//! drains or answers as its file says.
//!
//! Nothing is pulled from a registry. `debian:bookworm-slim` is made here
//! with `mmdebstrap` and `podman import`, and `nginx:1.22` is built on it;
//! both stay cached between runs. The Rust build stage is replaced by the
//! debug binary under test (`--target runtime --build-context build=DIR`).
//! Every other image, container, pod, volume and network a test creates is
//! removed by name when it ends, also on failure ([`Created`]).
//!
//! Traffic goes to loopback only: `--network host`, or ports published on
//! the host and reached at 127.0.0.1, never a podman bridge address.
//!
//! podman here needs `--runtime runc --cgroup-manager cgroupfs` (cgroup v1)
//! and explicit `nofile`/`nproc` limits; `podman-compose` and `kube play`
//! take the limits from `/etc/containers/containers.conf`, which `.ci/run`
//! writes. Where podman, runc, mmdebstrap, podman-compose or that file is
//! missing, a test says why and skips; with `CI=true` it fails instead.

use crate::support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use support::require::Part;
use support::tls::{TestPki, wss_connect};
use support::ws::{self, Closed, Ws, recv_text, send_text};
use support::{echo_backend, eventually, http_get};

/// The tag the shipped Dockerfile's runtime stage starts from.
const BASE_IMAGE: &str = "docker.io/library/debian:bookworm-slim";
/// The tag deploy/docker-compose.yml's nginx service names.
const NGINX_IMAGE: &str = "docker.io/library/nginx:1.22";
/// Within this machine's hard limits; without explicit limits podman's
/// defaults fail with `setrlimit … Operation not permitted`.
const ULIMITS: [&str; 4] = [
    "--ulimit",
    "nofile=10000:10000",
    "--ulimit",
    "nproc=1000:1000",
];
const CONTAINERS_CONF: &str = "/etc/containers/containers.conf";
/// What `.ci/run` installs.
/// The Kubernetes pod `podman kube play` makes of the Deployment.
const POD: &str = "call-dashboard-backend-pod-0";

/// Image builds one at a time: the first makes the base images and fills the
/// layer cache, the others reuse both.
static BUILDS: Mutex<()> = Mutex::new(());

/// podman with the runtime settings this host needs.
fn podman() -> Command {
    let mut cmd = Command::new("podman");
    cmd.args(["--runtime", "runc", "--cgroup-manager", "cgroupfs"]);
    cmd
}

/// Runs `cmd`; its stdout if it exits 0, else a message with its stderr.
fn output(cmd: &mut Command) -> Result<String, String> {
    let out: Output = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{cmd:?} exited {}: {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// [`output`] that panics with the message on failure.
fn must(cmd: &mut Command) -> String {
    output(cmd).unwrap_or_else(|e| panic!("{e}"))
}

/// What a test needs beyond podman.
#[derive(Clone, Copy, PartialEq)]
enum Needs {
    Podman,
    Compose,
    KubePlay,
}

/// Why the tools for `needs` are unusable here, if they are.
fn unusable(needs: Needs) -> Option<String> {
    for tool in ["podman", "runc"] {
        if let Err(e) = output(Command::new(tool).arg("--version")) {
            return Some(format!("{tool} is not usable: {e}"));
        }
    }
    if let Err(e) = output(podman().arg("info")) {
        return Some(format!("podman info fails: {e}"));
    }
    if !image_exists(BASE_IMAGE)
        && let Err(e) = output(Command::new("mmdebstrap").arg("--version"))
    {
        return Some(format!(
            "no {BASE_IMAGE}, and mmdebstrap is not usable: {e}"
        ));
    }
    if needs == Needs::Compose
        && let Err(e) = output(Command::new("podman-compose").arg("--version"))
    {
        return Some(format!("podman-compose is not usable: {e}"));
    }
    if needs != Needs::Podman {
        let conf = std::fs::read_to_string(CONTAINERS_CONF).unwrap_or_default();
        if !conf.contains("default_ulimits") {
            return Some(format!(
                "{CONTAINERS_CONF} sets no default_ulimits (kube play and compose take the limits from it)"
            ));
        }
    }
    None
}

/// Whether the test can run; if not, it fails where podman is required
/// (`CI=true`, or `SHUNT_REQUIRE` names `podman`), else says it skipped.
fn usable(needs: Needs) -> bool {
    let Some(reason) = unusable(needs) else {
        return true;
    };
    support::require::missing(Part::Podman, reason);
    false
}

/// Everything a test created in podman, removed by name on drop (also when
/// the test fails), dependents first.
#[derive(Default)]
struct Created {
    containers: Vec<String>,
    pods: Vec<String>,
    volumes: Vec<String>,
    networks: Vec<String>,
    images: Vec<String>,
}

impl Drop for Created {
    fn drop(&mut self) {
        let steps: [(&[&str], &Vec<String>); 5] = [
            (&["rm", "-f", "-t", "0"], &self.containers),
            (&["pod", "rm", "-f", "-t", "0"], &self.pods),
            (&["volume", "rm", "-f"], &self.volumes),
            (&["network", "rm", "-f"], &self.networks),
            (&["rmi", "-f"], &self.images),
        ];
        for (args, names) in steps {
            for name in names {
                let _ = podman()
                    .args(args)
                    .arg(name)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }
}

/// A scratch directory, removed on drop; traversable by the image's uid.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("shunt-containers-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The Debian mirror this machine's apt uses (the base image's apt uses it too).
fn debian_mirror() -> String {
    let mut texts = vec![std::fs::read_to_string("/etc/apt/sources.list").unwrap_or_default()];
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        texts.extend(
            dir.flatten()
                .filter_map(|e| std::fs::read_to_string(e.path()).ok()),
        );
    }
    texts
        .iter()
        .flat_map(|t| t.lines())
        .filter_map(|l| {
            l.strip_prefix("URIs:")
                .or_else(|| l.strip_prefix("deb "))
                .and_then(|rest| rest.split_whitespace().find(|w| w.starts_with("http")))
        })
        .find(|uri| uri.trim_end_matches('/').ends_with("/debian"))
        .unwrap_or("http://deb.debian.org/debian")
        .to_owned()
}

fn image_exists(tag: &str) -> bool {
    podman()
        .args(["image", "exists", tag])
        .status()
        .is_ok_and(|s| s.success())
}

/// Makes the base images the deploy files name, unless they exist: a
/// bookworm minbase root filesystem (documentation left out, as in the slim
/// image) imported as `debian:bookworm-slim`, and nginx on top of it.
fn base_images() {
    let scratch = Scratch::new("base");
    if !image_exists(BASE_IMAGE) {
        let tar = scratch.path().join("bookworm.tar");
        // As in Debian's official images: apt keeps no caches or downloaded
        // packages in a layer, and fetches no translations.
        let apt_conf = scratch.path().join("docker-clean");
        let clean = "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb \
                     /var/cache/apt/*.bin || true";
        std::fs::write(
            &apt_conf,
            format!(
                "DPkg::Post-Invoke {{ \"{clean}\"; }};\n\
                 APT::Update::Post-Invoke {{ \"{clean}\"; }};\n\
                 Dir::Cache::pkgcache \"\";\nDir::Cache::srcpkgcache \"\";\n\
                 Acquire::Languages \"none\";\n"
            ),
        )
        .unwrap();
        must(
            Command::new("mmdebstrap")
                .args(["--variant=minbase", "--mode=root", "--quiet"])
                .arg(format!(
                    "--customize-hook=copy-in {} /etc/apt/apt.conf.d",
                    apt_conf.display()
                ))
                .arg(r#"--customize-hook=rm -f "$1"/var/cache/apt/*.bin"#)
                .args([
                    "--dpkgopt=path-exclude=/usr/share/man/*",
                    "--dpkgopt=path-exclude=/usr/share/locale/*",
                    "--dpkgopt=path-exclude=/usr/share/doc/*",
                    "--dpkgopt=path-include=/usr/share/doc/*/copyright",
                    "bookworm",
                ])
                .arg(&tar)
                .arg(debian_mirror()),
        );
        must(
            podman()
                .args(["import", "--change", r#"CMD ["bash"]"#])
                .arg(&tar)
                .arg(BASE_IMAGE),
        );
    }
    if !image_exists(NGINX_IMAGE) {
        std::fs::write(
            scratch.path().join("Containerfile"),
            format!(
                "FROM {BASE_IMAGE}\n\
                 RUN apt-get update && apt-get install -y --no-install-recommends nginx-light \\\n\
                 \x20   && rm -rf /var/lib/apt/lists/* /etc/nginx/sites-enabled/default \\\n\
                 \x20   && ln -sf /dev/stdout /var/log/nginx/access.log \\\n\
                 \x20   && ln -sf /dev/stderr /var/log/nginx/error.log\n\
                 STOPSIGNAL SIGQUIT\n\
                 CMD [\"nginx\", \"-g\", \"daemon off;\"]\n"
            ),
        )
        .unwrap();
        must(
            podman()
                .args([
                    "build",
                    "--pull=never",
                    "--format",
                    "docker",
                    "-t",
                    NGINX_IMAGE,
                ])
                .arg(scratch.path()),
        );
    }
}

/// A tag of this test run for image `what`.
fn tag(what: &str, test: &str) -> String {
    format!("localhost/shunt-test-{what}:{test}-{}", std::process::id())
}

/// Builds the shipped Dockerfile's runtime stage with the binary under test
/// standing in for the build stage's; returns the image's tag.
fn shunt_image(test: &str, created: &mut Created) -> String {
    let _one_at_a_time = BUILDS.lock().unwrap_or_else(|e| e.into_inner());
    base_images();
    let binary = Scratch::new(&format!("{test}-binary"));
    let release = binary.path().join("src/target/release");
    std::fs::create_dir_all(&release).unwrap();
    std::fs::copy(env!("CARGO_BIN_EXE_shunt"), release.join("shunt")).unwrap();
    let tag = tag("shunt", test);
    created.images.push(tag.clone());
    must(
        podman()
            .args(["build", "--pull=never", "--format", "docker", "--quiet"])
            .args(["-f", "deploy/Dockerfile", "--target", "runtime"])
            .arg("--build-context")
            .arg(format!("build={}", binary.path().display()))
            .args(["-t", &tag, "."])
            .current_dir(env!("CARGO_MANIFEST_DIR")),
    );
    tag
}

/// An image of the echo backend (examples/echo_backend.rs) listening on
/// 0.0.0.0:5006 as `backend`: the call backend of the compose stack and pod.
/// A pod's containers all get SIGTERM at once; like a backend that drains
/// its own calls, this one serves 5 s more (longer than the test's drain),
/// so the live call ends with shunt's 1012, not with the backend gone.
fn echo_image(test: &str, created: &mut Created) -> String {
    let echo = support::examples::example_binary("echo_backend");
    let _one_at_a_time = BUILDS.lock().unwrap_or_else(|e| e.into_inner());
    base_images();
    let dir = Scratch::new(&format!("{test}-echo"));
    std::fs::copy(echo, dir.path().join("echo_backend")).unwrap();
    std::fs::write(
        dir.path().join("Containerfile"),
        format!(
            "FROM {BASE_IMAGE}\n\
             COPY echo_backend /usr/local/bin/echo_backend\n\
             CMD [\"sh\", \"-c\", \"echo_backend --host 0.0.0.0 --port 5006 --name backend & pid=$!; \
             trap 'sleep 5; kill $pid' TERM; wait $pid; wait $pid\"]\n"
        ),
    )
    .unwrap();
    let tag = tag("echo", test);
    created.images.push(tag.clone());
    must(
        podman()
            .args(["build", "--pull=never", "--quiet", "-t", &tag])
            .arg(dir.path()),
    );
    tag
}

/// Writes `cert` and `key` into `dir` as `cert_name`/`key_name`, the key
/// group 10001 and 0640, as the deploy files tell users to.
fn write_tls(dir: &Path, (cert_name, key_name): (&str, &str), pki: &TestPki) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::create_dir_all(dir).unwrap();
    let (cert, key) = pki.issue(&["localhost"]);
    std::fs::write(dir.join(cert_name), cert).unwrap();
    let key_file = dir.join(key_name);
    std::fs::write(&key_file, key).unwrap();
    std::os::unix::fs::chown(&key_file, None, Some(10001)).unwrap();
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o640)).unwrap();
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Waits until `admin` answers /readyz 200; panics with `logs()` if not.
async fn wait_ready(admin: SocketAddr, limit: Duration, logs: impl Fn() -> String) {
    let ready = eventually(limit, async || {
        http_get(admin, "/readyz", &[])
            .await
            .is_ok_and(|r| r.status == 200)
    })
    .await;
    assert!(
        ready,
        "not ready at {admin} within {limit:?}; logs:\n{}",
        logs()
    );
}

fn logs_of(container: &str) -> String {
    podman()
        .args(["logs", container])
        .output()
        .map(|o| {
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            )
        })
        .unwrap_or_else(|e| e.to_string())
}

/// A wss:// call through `addr`: the backend's hello, then one echo.
async fn call(addr: SocketAddr, pki: &TestPki) -> Ws {
    let (mut call, _, _) = wss_connect(addr, "localhost", "/frontend-audio", pki.client_config())
        .await
        .unwrap_or_else(|e| panic!("wss:// call through {addr}: {e}"));
    assert_eq!(recv_text(&mut call).await.unwrap(), "hello from backend");
    send_text(&mut call, "audio").await.unwrap();
    assert_eq!(recv_text(&mut call).await.unwrap(), "audio");
    call
}

/// `podman inspect --format FORMAT NAME`, trimmed.
fn inspect(name: &str, format: &str) -> String {
    must(podman().args(["inspect", "--format", format, name]))
        .trim()
        .to_owned()
}

/// Runs `stop` (a podman command that sends SIGTERM) while `call` is live:
/// the call ends with 1012 and `container` exits 0.
async fn stop_drains(mut call: Ws, mut stop: Command, container: &str) {
    let stopping = tokio::task::spawn_blocking(move || output(&mut stop));
    let closed = ws::wait_closed(&mut call, Duration::from_secs(20)).await;
    assert_eq!(
        closed.as_ref().ok(),
        Some(&Closed::CloseFrame(Some(1012))),
        "the live call at SIGTERM: {closed:?}; logs:\n{}",
        logs_of(container)
    );
    stopping.await.unwrap().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        inspect(container, "{{.State.ExitCode}}"),
        "0",
        "exit code after SIGTERM; logs:\n{}",
        logs_of(container)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_carries_a_call_as_a_read_only_non_root_container_and_drains_on_sigterm() {
    let test = "image";
    if !usable(Needs::Podman) {
        return;
    }
    let mut created = Created::default();
    let image = shunt_image(test, &mut created);

    // Without a mounted config, the image's default file listens on 0.0.0.0:8443.
    let default = must(
        podman()
            .args(["run", "--rm", "--network", "none"])
            .args(ULIMITS)
            .args([&image, "check"]),
    );
    assert!(
        default.contains("listen  0.0.0.0:8443"),
        "the image's default listener:\n{default}"
    );

    let backend = echo_backend().spawn().await;
    let pki = TestPki::new();
    let dir = Scratch::new(test);
    write_tls(
        &dir.path().join("tls"),
        ("fullchain.pem", "privkey.pem"),
        &pki,
    );
    let (listen, admin) = (
        loopback(support::free_port()),
        loopback(support::free_port()),
    );
    let config = dir.path().join("shunt.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"{listen}\"\ndrain_timeout = \"1s\"\n\
             [tls]\ncert = \"/etc/shunt/tls/fullchain.pem\"\nkey = \"/etc/shunt/tls/privkey.pem\"\n\
             [upstreams.direct]\nurl = \"{}\"\n",
            backend.url()
        ),
    )
    .unwrap();
    let name = format!("shunt-test-image-{}", std::process::id());
    created.containers.push(name.clone());
    must(
        podman()
            .args([
                "run",
                "-d",
                "--name",
                &name,
                "--network",
                "host",
                "--read-only",
            ])
            .args(ULIMITS)
            // The timer needs systemd; `podman healthcheck run` below runs it.
            .args(["--health-interval", "disable"])
            .arg("--env")
            .arg(format!("SHUNT_ADMIN={admin}"))
            .arg("--volume")
            .arg(format!("{}:/etc/shunt/shunt.toml:ro", config.display()))
            .arg("--volume")
            .arg(format!(
                "{}:/etc/shunt/tls:ro",
                dir.path().join("tls").display()
            ))
            .arg(&image),
    );
    wait_ready(admin, Duration::from_secs(20), || logs_of(&name)).await;

    // The mounted file's listen won over the image's default.
    let call = call(listen, &pki).await;

    // HEALTHCHECK asks SHUNT_ADMIN's address (not the default 127.0.0.1:9901).
    // Exit 0 only if /readyz at SHUNT_ADMIN (a port of this test's) said 200.
    must(podman().args(["healthcheck", "run", &name]));
    let said = must(podman().args(["exec", &name, "shunt", "healthcheck"]));
    assert!(said.contains("ready"), "{said}");

    // The process runs as uid 10001 on a read-only root filesystem.
    let pid = inspect(&name, "{{.State.Pid}}");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert_eq!(
        uid.split_whitespace().skip(1).collect::<Vec<_>>(),
        ["10001"; 4],
        "{uid}"
    );
    assert_eq!(inspect(&name, "{{.HostConfig.ReadonlyRootfs}}"), "true");
    let write = output(podman().args([
        "exec",
        "--user",
        "0",
        &name,
        "touch",
        "/usr/local/bin/written",
    ]));
    assert!(
        write
            .as_ref()
            .is_err_and(|e| e.contains("Read-only file system")),
        "even root cannot write the root filesystem: {write:?}"
    );
    assert_eq!(
        inspect(&name, "{{.Config.StopSignal}}"),
        "15",
        "STOPSIGNAL SIGTERM"
    );

    let mut stop = podman();
    stop.args(["stop", "-t", "20", &name]);
    stop_drains(call, stop, &name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compose_stack_carries_a_call_and_publishes_only_shunt_with_admin_on_loopback() {
    let test = "compose";
    if !usable(Needs::Compose) {
        return;
    }
    let mut created = Created::default();
    let shunt = shunt_image(test, &mut created);
    let backend = echo_image(test, &mut created);
    let pki = TestPki::new();
    let dir = Scratch::new(test);
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    // The shipped files as they are, next to each other as in deploy/.
    for file in ["docker-compose.yml", "shunt.toml", "nginx.conf"] {
        std::fs::copy(deploy.join(file), dir.path().join(file)).unwrap();
    }
    write_tls(
        &dir.path().join("tls"),
        ("fullchain.pem", "privkey.pem"),
        &pki,
    );
    let project = format!("shunt-test-{}", std::process::id());
    for service in ["backend", "nginx", "shunt"] {
        created.containers.push(format!("{project}_{service}_1"));
    }
    created.networks.push(format!("{project}_default"));
    let (port, admin_port, nginx_port) = (
        support::free_port(),
        support::free_port(),
        support::free_port(),
    );
    let compose = |args: &[&str]| {
        let mut cmd = Command::new("podman-compose");
        cmd.args([
            "--podman-args=--runtime runc --cgroup-manager cgroupfs",
            "-p",
            &project,
        ])
        .args(args)
        .current_dir(dir.path())
        .env("SHUNT_IMAGE", &shunt)
        .env("BACKEND_IMAGE", &backend)
        .env("SHUNT_PORT", port.to_string())
        .env("SHUNT_ADMIN_PORT", admin_port.to_string())
        .env("NGINX_PORT", nginx_port.to_string());
        cmd
    };
    must(&mut compose(&["up", "-d", "--no-build"]));
    let shunt_container = format!("{project}_shunt_1");
    let admin = loopback(admin_port);
    wait_ready(admin, Duration::from_secs(30), || logs_of(&shunt_container)).await;

    let _call = call(loopback(port), &pki).await;

    // The dashboard and /metrics from the host, on 127.0.0.1 only.
    let dashboard = http_get(admin, "/", &[]).await.unwrap();
    assert_eq!(dashboard.status, 200);
    assert!(dashboard.text().contains("<html"), "{}", dashboard.text());
    let metrics = http_get(admin, "/metrics", &[]).await.unwrap();
    assert_eq!(metrics.status, 200);
    assert!(metrics.text().contains("shunt_"), "{}", metrics.text());
    let admin_binding = must(podman().args(["port", &shunt_container, "9901"]));
    assert_eq!(admin_binding.trim(), format!("127.0.0.1:{admin_port}"));

    // The backend publishes nothing: the host cannot reach it.
    let backend_ports = must(podman().args(["port", &format!("{project}_backend_1")]));
    assert_eq!(backend_ports.trim(), "", "the backend is published");
    // nginx, the fallback path, reaches it over the compose network.
    let via_nginx = http_get(loopback(nginx_port), "/", &[]).await.unwrap();
    assert_eq!(via_nginx.status, 200, "{}", via_nginx.text());
    assert_eq!(via_nginx.header("x-backend"), "backend");

    assert_eq!(
        inspect(&shunt_container, "{{.HostConfig.RestartPolicy.Name}}"),
        "unless-stopped"
    );
    assert_eq!(
        inspect(&shunt_container, "{{.HostConfig.ReadonlyRootfs}}"),
        "true"
    );

    must(&mut compose(&["down", "-t", "10"]));
}

/// The JSON-style `command: [...]` on the first line after `after` in `text`.
fn command_after(text: &str, after: &str) -> Vec<String> {
    let from = text
        .find(after)
        .unwrap_or_else(|| panic!("the manifest has {after}"));
    let line = text[from..]
        .lines()
        .find(|l| l.contains("command: ["))
        .unwrap_or_else(|| panic!("a command under {after}"));
    let list = &line[line.find('[').unwrap()..=line.rfind(']').unwrap()];
    serde_json::from_str(list).unwrap_or_else(|e| panic!("{list}: {e}"))
}

/// The number after `key` in `text` (e.g. `terminationGracePeriodSeconds: 45`).
fn number_after(text: &str, key: &str) -> u64 {
    let from = text.find(key).unwrap_or_else(|| panic!("no {key}")) + key.len();
    text[from..]
        .trim_start()
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number after {key}"))
}

/// `text` with `from` replaced by `to`, which must occur.
fn replaced(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "the manifest has {from:?}");
    text.replace(from, to)
}

/// `manifest` with its `secret:` volume source replaced by a `hostPath` of `dir`.
fn secret_to_host_path(manifest: &str, dir: &Path) -> String {
    let mut out = String::new();
    let mut secret_indent = None;
    for line in manifest.lines() {
        let indent = line.len() - line.trim_start().len();
        match secret_indent {
            Some(outer) if indent > outer => continue,
            _ => secret_indent = None,
        }
        if line.trim() == "secret:" {
            secret_indent = Some(indent);
            out.push_str(&format!(
                "{}hostPath: {{ path: {}, type: Directory }}\n",
                &line[..indent],
                dir.display()
            ));
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    assert!(
        out.contains("hostPath:"),
        "the manifest has a secret volume"
    );
    out
}

/// `podman exec` of `command` in `container`: did it exit 0?
fn exec_ok(container: &str, command: &[String]) -> bool {
    podman()
        .args(["exec", container])
        .args(command)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kubernetes_sidecar_pod_carries_a_call_goes_unready_first_and_drains() {
    let test = "kube";
    if !usable(Needs::KubePlay) {
        return;
    }
    let mut created = Created::default();
    let shunt = shunt_image(test, &mut created);
    let backend = echo_image(test, &mut created);
    let pki = TestPki::new();
    let dir = Scratch::new(test);
    let tls = dir.path().join("tls");
    write_tls(&tls, ("tls.crt", "tls.key"), &pki);
    let manifest = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes-sidecar.yaml"),
    )
    .unwrap();

    // The grace period covers the preStop sleep and the drain.
    let grace = number_after(&manifest, "terminationGracePeriodSeconds:");
    let drain = number_after(&manifest, "drain_timeout = \"");
    let pre_stop = command_after(&manifest, "preStop:");
    let sleep = number_after(&pre_stop.join(" "), "sleep");
    assert!(
        grace > drain + sleep,
        "grace {grace}s <= drain {drain}s + preStop {sleep}s"
    );
    let readiness = command_after(&manifest, "readinessProbe:");
    let liveness = command_after(&manifest, "livenessProbe:");

    // The test's values: its images, a loopback host port for 8443, the TLS
    // files from a host directory (podman 4.3 writes a Secret's `data`
    // undecoded), names of its own, and a short drain.
    let port = support::free_port();
    let pid = std::process::id();
    let mut overlay = replaced(&manifest, "image: shunt:latest", &format!("image: {shunt}"));
    for (from, to) in [
        (
            "image: call-dashboard-backend:latest".to_owned(),
            format!("image: {backend}"),
        ),
        // No nginx in this pod: the backend stands in for it.
        (
            "nginx-url: http://nginx.web.svc:80".to_owned(),
            "nginx-url: http://127.0.0.1:5006".to_owned(),
        ),
        (
            "drain_timeout = \"30s\"".to_owned(),
            "drain_timeout = \"2s\"".to_owned(),
        ),
        (
            "{ containerPort: 8443, name: wss }".to_owned(),
            format!("{{ containerPort: 8443, name: wss, hostPort: {port}, hostIP: 127.0.0.1 }}"),
        ),
        // podman 4.3 publishes every containerPort on the host's 0.0.0.0.
        (
            "ports: [{ containerPort: 5006 }]".to_owned(),
            "ports: []".to_owned(),
        ),
        (
            "            - { containerPort: 9901, name: admin }\n".to_owned(),
            String::new(),
        ),
        ("shunt-config".to_owned(), format!("shunt-config-{pid}")),
        ("shunt-run".to_owned(), format!("shunt-run-{pid}")),
    ] {
        overlay = replaced(&overlay, &from, &to);
    }
    let overlay = secret_to_host_path(&overlay, &tls);
    let file = dir.path().join("sidecar.yaml");
    std::fs::write(&file, &overlay).unwrap();

    created.pods.push(POD.to_owned());
    created.volumes.push(format!("shunt-config-{pid}"));
    created.volumes.push(format!("shunt-run-{pid}"));
    // kube play makes podman's default kube network when it is missing.
    let network = "podman-default-kube-network";
    if output(podman().args(["network", "exists", network])).is_err() {
        created.networks.push(network.to_owned());
    }
    must(podman().args(["kube", "play", "--replace"]).arg(&file));
    let container = format!("{POD}-shunt");

    // podman runs no probes: the test runs them as the manifest states them.
    let ready = eventually(Duration::from_secs(30), async || {
        exec_ok(&container, &readiness)
    })
    .await;
    assert!(
        ready,
        "readiness {readiness:?} never passed; logs:\n{}",
        logs_of(&container)
    );
    assert!(exec_ok(&container, &liveness), "liveness {liveness:?}");

    let mut call = call(loopback(port), &pki).await;

    // preStop marks the pod unready while calls go on.
    let hook = {
        let (container, pre_stop) = (container.clone(), pre_stop.clone());
        std::thread::spawn(move || exec_ok(&container, &pre_stop))
    };
    let unready = eventually(Duration::from_secs(sleep), async || {
        !exec_ok(&container, &readiness)
    })
    .await;
    assert!(unready, "the readiness probe still passes during preStop");
    send_text(&mut call, "still here").await.unwrap();
    assert_eq!(recv_text(&mut call).await.unwrap(), "still here");
    assert!(hook.join().unwrap(), "preStop {pre_stop:?} failed");

    // Then the kubelet's stop: SIGTERM to the pod's containers with the
    // grace period, and the sandbox (the network) only after they exited.
    // podman 4.3's `kube down` SIGKILLs at once, and its `pod stop` stops
    // the infra container alongside the others, which takes the pod's
    // network (and the port the call came in on) away mid-drain.
    let grace = grace.to_string();
    let mut stop = podman();
    stop.args(["stop", "-t", &grace, &container, &format!("{POD}-backend")]);
    stop_drains(call, stop, &container).await;
    must(podman().args(["pod", "stop", "-t", &grace, POD]));
    must(podman().args(["kube", "down"]).arg(&file));
}
