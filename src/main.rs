//! `shunt`: CLI → config → tracing → start → wait for a signal → drain.

use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};

use shunt::cli::{CertArgs, Cli, Command, DoctorArgs, HealthcheckArgs, RunArgs};
use shunt::config::{Config, parse_duration};

/// mimalloc keeps size classes apart, so the small long-lived state of
/// thousands of idle tunnels is not scattered among the buffers freed after
/// each handshake (with glibc malloc that fragmentation roughly doubled the
/// RSS per idle tunnel; see docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        None => run(cli.run),
        Some(Command::Run(args)) => run(args),
        Some(Command::Check(args)) => check(&args),
        Some(Command::Healthcheck(args)) => healthcheck(&args),
        Some(Command::Cert(args)) => cert(&args),
        Some(Command::Doctor(args)) => doctor(&args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("shunt: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let config = Config::build(&args)?;
    shunt::telemetry::init(config.log_format);
    runtime()?.block_on(async {
        let running = shunt::app::start(config).await?;
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut hup = signal(SignalKind::hangup())?;
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = hup.recv() => {
                    // The outcome is logged and shown in /status by the reloader.
                    let _ = running.reloader().reload("SIGHUP").await;
                }
            }
        }
        running.shutdown();
        running.stopped().await;
        tracing::info!("stopped");
        Ok(ExitCode::SUCCESS)
    })
}

fn check(args: &RunArgs) -> anyhow::Result<ExitCode> {
    let config = Config::build(args)?;
    // Load what a start would load, so a bad certificate or CA file fails here too.
    let certs = config
        .tls
        .as_ref()
        .map(|t| shunt::tls::load_cert_set(&t.certs))
        .transpose()?;
    for u in config
        .upstreams
        .iter()
        .filter(|u| u.url.scheme == shunt::config::Scheme::Https)
    {
        shunt::tls::client::client_config(u.ca.as_deref())
            .with_context(|| format!("upstream {}", u.name))?;
    }
    println!("configuration OK");
    println!("listen  {}", config.listen);
    match config.admin {
        Some(a) => println!("admin   {a}"),
        None => println!("admin   off"),
    }
    println!("upstreams:");
    for u in &config.upstreams {
        let h = &u.health;
        let used = config.routes.iter().any(|r| r.via.contains(&u.name));
        println!(
            "  {:<12} {:<28} check {} every {} timeout {} rise {} fall {}{}",
            u.name.0,
            u.url.to_string(),
            h.check,
            humantime::format_duration(h.interval),
            humantime::format_duration(h.timeout),
            h.rise,
            h.fall,
            if used {
                ""
            } else {
                "  (unused: no route names it)"
            }
        );
    }
    println!("routes (most specific first):");
    let mut routes = config.routes.clone();
    routes.sort_by_key(|r| std::cmp::Reverse(r.specificity()));
    for r in &routes {
        let via: Vec<_> = r.via.iter().map(|n| n.0.as_str()).collect();
        println!("  {:<28} -> {}", r.label(), via.join(", "));
        let p = &r.policy;
        println!(
            "  {:<28}    auth {}, origins [{}]{}{}, ip allow {} deny {}",
            "",
            p.auth,
            p.origins
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            if p.require_origin { " required" } else { "" },
            if p.cors { ", cors" } else { "" },
            p.ip.allow.len(),
            p.ip.deny.len(),
        );
    }
    if let Some(set) = &certs {
        println!("tls certificates (the first is the default):");
        for c in set.certs() {
            println!(
                "  {} ({}) names {} not after {} sha256 {}",
                c.info.cert_file.display(),
                c.info.subject,
                c.names.join(", "),
                humantime::format_rfc3339_seconds(c.info.not_after),
                c.info.fingerprint
            );
        }
        for warning in set.warnings() {
            println!("warning: {warning}");
        }
    }
    let g = &config.policy;
    let limit = |v: Option<String>| v.unwrap_or_else(|| "unlimited".into());
    println!(
        "security: ip allow [{}] deny [{}]; tokens {}; jwt {}; rate {} burst {}; max-conns-per-ip {}; max-conns {}",
        g.ip.allow
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        g.ip.deny
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        g.credentials.tokens.as_ref().map_or(0, |t| t.len()),
        if g.credentials.jwt.is_some() {
            "on"
        } else {
            "off"
        },
        limit(g.limits.rate.map(|r| r.to_string())),
        g.limits.burst,
        limit(g.limits.max_conns_per_ip.map(|n| n.to_string())),
        limit(g.limits.max_conns.map(|n| n.to_string())),
    );
    let t = &config.timeouts;
    println!(
        "timeouts: connect {} response {} header {} idle {} drain {}",
        humantime::format_duration(t.connect),
        humantime::format_duration(t.response),
        humantime::format_duration(t.header),
        humantime::format_duration(t.idle),
        humantime::format_duration(t.drain),
    );
    Ok(ExitCode::SUCCESS)
}

fn healthcheck(args: &HealthcheckArgs) -> anyhow::Result<ExitCode> {
    let admin = shunt::config::parse_addr("--admin", &args.admin)?;
    let timeout = parse_duration("--timeout", &args.timeout)?;
    let path = if args.live { "/healthz" } else { "/readyz" };
    runtime()?.block_on(async {
        let status = tokio::time::timeout(timeout, shunt::admin::get_status(admin, path))
            .await
            .with_context(|| {
                format!(
                    "no answer from {admin} within {}",
                    humantime::format_duration(timeout)
                )
            })?
            .map_err(|e| anyhow::anyhow!("cannot ask {admin} {path}: {e}"))?;
        if status == 200 {
            println!(
                "{} ({path} answered 200)",
                if args.live { "alive" } else { "ready" }
            );
            Ok(ExitCode::SUCCESS)
        } else {
            bail!("{path} on {admin} answered {status}; GET it for why")
        }
    })
}

fn doctor(args: &DoctorArgs) -> anyhow::Result<ExitCode> {
    let options = shunt::doctor::Options::from_args(args)?;
    let runtime = runtime()?;
    let report = runtime.block_on(shunt::doctor::run(&args.run, options));
    // A /proc scan or tool still running past its timeout must not hold the exit.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    if args.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_text());
    }
    Ok(ExitCode::from(u8::from(report.failed())))
}

fn cert(args: &CertArgs) -> anyhow::Result<ExitCode> {
    let names = if args.names.is_empty() {
        vec!["localhost".to_owned(), "127.0.0.1".to_owned()]
    } else {
        args.names.clone()
    };
    let certs = shunt::certgen::generate(&names)?;
    let written = shunt::certgen::write(&certs, &args.out, args.force)?;
    for path in &written {
        println!("wrote {}", path.display());
    }
    let dir = args.out.display();
    println!(
        "\nA DEVELOPMENT certificate for {names} (valid 397 days), signed by a new development CA.\n\
         Serve it:   shunt --tls-cert {dir}/server.crt --tls-key {dir}/server.key --listen 127.0.0.1:8443\n\
         Trust the CA on this machine only (never ship {dir}/ca.key):\n\
         \x20 curl:      curl --cacert {dir}/ca.crt https://localhost:8443/\n\
         \x20 Node.js:   NODE_EXTRA_CA_CERTS={dir}/ca.crt node app.js\n\
         \x20 Debian:    cp {dir}/ca.crt /usr/local/share/ca-certificates/shunt-dev.crt && update-ca-certificates\n\
         \x20 Firefox/Chrome: import {dir}/ca.crt as an authority in the browser's certificate settings",
        names = names.join(", ")
    );
    Ok(ExitCode::SUCCESS)
}
