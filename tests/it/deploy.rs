//! The deploy files say what the README promises: the Docker image has the
//! system roots and runs as uid 10001, the build context leaves `target/` and
//! `.git/` out, compose and Kubernetes make the key readable by 10001, and the
//! systemd unit reads keys as `shunt` + `ssl-cert`. The certbot deploy hook
//! is run for real against a certbot-shaped lineage and a running shunt:
//! the key becomes group-readable, the reload serves the renewed certificate,
//! and a live call carries on. (`.ci/run` runs `systemd-analyze verify` and
//! the security rating where the tool exists.)

use crate::support;

use std::net::SocketAddr;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::tls::{TestPki, wss_connect};
use support::ws::{recv_text, send_text};
use support::{echo_backend, eventually, http_get};

fn read(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("read {}: {e}", full.display()))
}

/// The lines of `text` that are not comments, trimmed.
fn directives(text: &str) -> Vec<&str> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
}

#[test]
fn the_runtime_image_has_system_roots_and_runs_as_10001() {
    let dockerfile = read("deploy/Dockerfile");
    let lines = directives(&dockerfile);
    let last_from = lines
        .iter()
        .rposition(|l| l.starts_with("FROM "))
        .expect("a FROM line");
    let runtime = lines[last_from..].join("\n");
    assert!(
        runtime.contains("apt-get install") && runtime.contains("ca-certificates"),
        "the runtime stage installs ca-certificates:\n{runtime}"
    );
    assert!(
        runtime.contains("--uid 10001") && runtime.contains("--gid 10001"),
        "the user is 10001:10001:\n{runtime}"
    );
    assert!(
        runtime.contains("\nUSER 10001:10001"),
        "runs as 10001 (numeric):\n{runtime}"
    );
}

#[test]
fn the_build_context_leaves_out_target_and_git() {
    let ignore = read(".dockerignore");
    let lines = directives(&ignore);
    for wanted in ["target/", ".git/"] {
        assert!(
            lines.contains(&wanted),
            ".dockerignore lists {wanted}: {lines:?}"
        );
    }
    // The Dockerfile relies on it: it copies the whole context.
    assert!(directives(&read("deploy/Dockerfile")).contains(&"COPY . ."));
}

#[test]
fn compose_and_kubernetes_make_the_key_readable_by_10001() {
    let compose = read("deploy/docker-compose.yml");
    assert!(
        directives(&compose)
            .iter()
            .any(|l| l.starts_with(r#"user: "10001:10001""#)),
        "compose states the uid:\n{compose}"
    );
    assert!(
        compose.contains("chgrp 10001"),
        "compose says how to own the key"
    );
    let k8s = directives(&read("deploy/kubernetes-sidecar.yaml")).join("\n");
    for wanted in [
        "fsGroup: 10001",
        "runAsUser: 10001",
        "runAsGroup: 10001",
        "runAsNonRoot: true",
        "defaultMode: 0440",
    ] {
        assert!(k8s.contains(wanted), "the Kubernetes manifest has {wanted}");
    }
}

#[test]
fn the_systemd_unit_reads_keys_as_shunt_with_ssl_cert() {
    let unit = read("deploy/shunt.service");
    let lines = directives(&unit);
    for wanted in [
        "User=shunt",
        "Group=shunt",
        "SupplementaryGroups=ssl-cert",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=",
        "SystemCallFilter=@system-service",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
    ] {
        assert!(lines.contains(&wanted), "deploy/shunt.service has {wanted}");
    }
    assert!(
        !lines.iter().any(|l| l.starts_with("DynamicUser=")),
        "no DynamicUser: it cannot read root-owned 0600 keys"
    );
}

/// A shunt process, killed and reaped on drop.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], support::free_port()))
}

/// Writes certificate `n` of the lineage as certbot does: the files in
/// `archive/NAME/` (the key 0600), then the `live/NAME/` symlinks swapped by rename.
fn certbot_issue(root: &Path, pki: &TestPki, n: u32) {
    let (cert, key) = pki.issue(&["localhost"]);
    let archive = root.join("archive/calls.example.com");
    let live = root.join("live/calls.example.com");
    std::fs::create_dir_all(&archive).unwrap();
    std::fs::create_dir_all(&live).unwrap();
    let key_file = archive.join(format!("privkey{n}.pem"));
    std::fs::write(archive.join(format!("fullchain{n}.pem")), cert).unwrap();
    std::fs::write(&key_file, key).unwrap();
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    for (link, target) in [
        ("fullchain.pem", format!("fullchain{n}.pem")),
        ("privkey.pem", format!("privkey{n}.pem")),
    ] {
        let tmp = live.join(format!("{link}.new"));
        symlink(format!("../../archive/calls.example.com/{target}"), &tmp).unwrap();
        std::fs::rename(&tmp, live.join(link)).unwrap();
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// Runs deploy/certbot-deploy-hook.sh as certbot would, with `reload` as the reload command.
fn run_hook(root: &Path, reload: &str) {
    let gid = rustix::process::getgid().as_raw().to_string();
    let output = Command::new("sh")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/deploy/certbot-deploy-hook.sh"
        ))
        .env("RENEWED_LINEAGE", root.join("live/calls.example.com"))
        .env("SHUNT_KEY_GROUP", gid)
        .env("SHUNT_RELOAD", reload)
        .output()
        .expect("run the deploy hook");
    assert!(
        output.status.success(),
        "the deploy hook failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_certbot_hook_opens_the_key_to_its_group_and_reloads_without_dropping_calls() {
    let pki = TestPki::new();
    let root: PathBuf = pki.dir.join("letsencrypt");
    certbot_issue(&root, &pki, 1);
    let backend = echo_backend().spawn().await;
    let (listen, admin) = (free_addr(), free_addr());
    let live = root.join("live/calls.example.com");
    // --no-watch: only the hook's reload can make shunt see the renewal.
    let child = Command::new(env!("CARGO_BIN_EXE_shunt"))
        .args(["run", "--no-watch", "--listen", &listen.to_string()])
        .args(["--admin", &admin.to_string(), "--direct", &backend.url()])
        .arg("--tls-cert")
        .arg(live.join("fullchain.pem"))
        .arg("--tls-key")
        .arg(live.join("privkey.pem"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start shunt");
    let pid = child.id();
    let _shunt = Process(child);
    assert!(
        eventually(Duration::from_secs(10), async || {
            http_get(admin, "/readyz", &[])
                .await
                .is_ok_and(|r| r.status == 200)
        })
        .await,
        "shunt did not become ready"
    );
    let (mut call, _, before) =
        wss_connect(listen, "localhost", "/frontend-audio", pki.client_config())
            .await
            .expect("a call before the renewal");
    assert_eq!(recv_text(&mut call).await.unwrap(), "hello from backend");

    certbot_issue(&root, &pki, 2);
    run_hook(&root, &format!("kill -HUP {pid}"));

    let archive = root.join("archive/calls.example.com");
    for key in ["privkey1.pem", "privkey2.pem"] {
        assert_eq!(mode(&archive.join(key)), 0o640, "{key} is group-readable");
    }
    for dir in [
        root.join("live"),
        live.clone(),
        root.join("archive"),
        archive,
    ] {
        assert_eq!(mode(&dir), 0o750, "{} is group-traversable", dir.display());
    }
    let mut after = before.clone();
    let renewed = eventually(Duration::from_secs(10), async || {
        match wss_connect(listen, "localhost", "/frontend-audio", pki.client_config()).await {
            Ok((_, _, fp)) => {
                after = fp;
                after != before
            }
            Err(_) => false,
        }
    })
    .await;
    assert!(
        renewed,
        "new handshakes still get the old certificate {before}"
    );
    send_text(&mut call, "still here")
        .await
        .expect("the live call survives the reload");
    assert_eq!(recv_text(&mut call).await.unwrap(), "still here");
}

#[test]
fn kubernetes_lets_prometheus_scrape_and_only_prometheus_reach_the_admin_port() {
    let k8s = directives(&read("deploy/kubernetes-sidecar.yaml")).join("\n");
    for wanted in [
        r#"prometheus.io/scrape: "true""#,
        r#"prometheus.io/port: "9901""#,
        "prometheus.io/path: /metrics",
    ] {
        assert!(k8s.contains(wanted), "the Deployment is annotated {wanted}");
    }
    let policy = k8s
        .split("\n---")
        .find(|doc| doc.contains("kind: NetworkPolicy"))
        .expect("the manifest carries a NetworkPolicy");
    // Each ingress rule: its ports, and whether it names who may come in.
    let rules: Vec<&str> = policy.split("- ports:").skip(1).collect();
    let rule_for = |port: &str| {
        rules
            .iter()
            .find(|r| r.contains(&format!("port: {port}")))
            .unwrap_or_else(|| panic!("an ingress rule for {port}:\n{policy}"))
    };
    assert!(!rule_for("8443").contains("from:"), "browsers reach 8443");
    for (port, who) in [("9901", "prometheus"), ("5006", "app: nginx")] {
        let rule = rule_for(port);
        assert!(
            rule.contains("from:") && rule.contains(who),
            "only {who} may reach {port}: {rule}"
        );
    }
}

/// The runtime stage of deploy/Dockerfile (from its last FROM), without comments.
fn runtime_stage() -> String {
    let dockerfile = read("deploy/Dockerfile");
    let lines = directives(&dockerfile);
    let last_from = lines
        .iter()
        .rposition(|l| l.starts_with("FROM "))
        .expect("a FROM line");
    lines[last_from..].join("\n")
}

#[test]
fn the_image_listens_through_a_default_config_a_mounted_one_replaces() {
    let runtime = runtime_stage();
    // Flags and SHUNT_* beat the file: a listener there would beat a mounted config.
    for line in runtime.lines() {
        let carries_listen = (line.starts_with("CMD") || line.starts_with("ENTRYPOINT"))
            && line.contains("--listen")
            || line.starts_with("ENV") && line.contains("SHUNT_LISTEN");
        assert!(!carries_listen, "the default listener is in {line}");
    }
    assert!(
        runtime.contains("COPY deploy/image.toml /etc/shunt/shunt.toml")
            && runtime.contains("ENV SHUNT_CONFIG=/etc/shunt/shunt.toml"),
        "the image's default config:\n{runtime}"
    );
    assert!(
        directives(&read("deploy/image.toml")).contains(&r#"listen = "0.0.0.0:8443""#),
        "the default config listens on 0.0.0.0:8443"
    );
    let healthcheck = runtime
        .lines()
        .find(|l| l.starts_with("HEALTHCHECK"))
        .expect("a HEALTHCHECK");
    assert!(
        healthcheck.contains(r#"["shunt", "healthcheck"]"#) && !healthcheck.contains("--admin"),
        "the health check follows SHUNT_ADMIN: {healthcheck}"
    );
    assert!(runtime.contains("\nSTOPSIGNAL SIGTERM"), "{runtime}");
}

#[test]
fn compose_publishes_the_admin_api_on_loopback_and_mounts_config_and_secrets() {
    let compose = read("deploy/docker-compose.yml");
    let lines = directives(&compose);
    for wanted in [
        r#"- "127.0.0.1:${SHUNT_ADMIN_PORT:-9901}:9901""#,
        "SHUNT_ADMIN: 0.0.0.0:9901",
        "SHUNT_ADMIN_HOSTS: shunt",
        "- ./shunt.toml:/etc/shunt/shunt.toml:ro",
        "read_only: true",
    ] {
        assert!(
            lines.iter().any(|l| l.starts_with(wanted)),
            "compose has {wanted}:\n{compose}"
        );
    }
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.starts_with("restart: unless-stopped"))
            .count(),
        3,
        "every service restarts"
    );
    // The backend is reachable on the compose network only.
    let backend = compose
        .split("\n  nginx:")
        .next()
        .and_then(|s| s.split("\n  backend:").nth(1))
        .expect("a backend service");
    assert!(
        !directives(backend).iter().any(|l| l.starts_with("ports:")),
        "the backend publishes a port:\n{backend}"
    );
    // The security block: commented keys in shunt.toml, the files mounted read-only.
    let config = read("deploy/shunt.toml");
    for key in ["token_file", "jwt_secret_file", "allow_origin", "allow_ip"] {
        assert!(
            config.contains(&format!("#   {key} = ")),
            "deploy/shunt.toml shows {key}"
        );
    }
    assert!(compose.contains("/etc/shunt/secrets/jwt.secret:ro"));
    assert!(
        read("deploy/prometheus.yml").contains(r#"targets: ["127.0.0.1:9901"]"#),
        "Prometheus scrapes the published admin port"
    );
}

#[test]
fn kubernetes_has_a_service_probes_a_drain_order_and_no_fixed_nginx() {
    let k8s = read("deploy/kubernetes-sidecar.yaml");
    let text = directives(&k8s).join("\n");
    assert!(
        !text.contains("nginx.default.svc"),
        "nginx is a value to set"
    );
    assert!(
        text.contains("configMapKeyRef: { name: shunt-config, key: nginx-url }"),
        "SHUNT_NGINX comes from the ConfigMap"
    );
    let service = text
        .split("\n---")
        .find(|doc| doc.contains("kind: Service"))
        .expect("a Service");
    assert!(service.contains("port: 8443") && !service.contains("9901"));
    for wanted in [
        r#"exec: { command: ["sh", "-c", "test ! -e /run/shunt/draining && exec shunt healthcheck"] }"#,
        r#"exec: { command: ["shunt", "healthcheck", "--live"] }"#,
        r#"exec: { command: ["sh", "-c", "touch /run/shunt/draining && sleep 5"] }"#,
        "readOnlyRootFilesystem: true",
        "allowPrivilegeEscalation: false",
        r#"capabilities: { drop: ["ALL"] }"#,
        "requests: { cpu: 100m, memory: 64Mi }",
        "configMap: { name: shunt-config }",
        "secretName: calls-example-com-tls",
        "mountPath: /etc/shunt/config, readOnly: true",
        "mountPath: /etc/shunt/tls, readOnly: true",
    ] {
        assert!(text.contains(wanted), "the manifest has {wanted}");
    }
    // `shunt healthcheck` asks /readyz, `--live` /healthz; both at SHUNT_ADMIN.
    assert!(text.contains(r#"- { name: SHUNT_ADMIN, value: "0.0.0.0:9901" }"#));
    assert!(text.contains("terminationGracePeriodSeconds: 45"));
    assert!(
        text.contains(r#"drain_timeout = "30s""#),
        "45s > 5s preStop + 30s drain"
    );
}
