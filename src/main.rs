//! `shunt`: CLI → config → tracing → start → wait for a signal → drain.

use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};

use shunt::cli::{Cli, Command, HealthcheckArgs, RunArgs};
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
    routes.sort_by_key(|r| std::cmp::Reverse((r.host.is_some(), r.path.len())));
    for r in &routes {
        let via: Vec<_> = r.via.iter().map(|n| n.0.as_str()).collect();
        println!("  {:<28} -> {}", r.label(), via.join(", "));
    }
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
    runtime()?.block_on(async {
        let status = tokio::time::timeout(timeout, shunt::admin::get_status(admin, "/readyz"))
            .await
            .with_context(|| {
                format!(
                    "no answer from {admin} within {}",
                    humantime::format_duration(timeout)
                )
            })?
            .map_err(|e| anyhow::anyhow!("cannot ask {admin} /readyz: {e}"))?;
        if status == 200 {
            println!("ready");
            Ok(ExitCode::SUCCESS)
        } else {
            bail!("not ready: /readyz answered {status} (see GET /readyz on {admin} for why)")
        }
    })
}
