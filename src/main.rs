//! `shunt`: CLI → config → tracing → start → wait for a signal → drain.
//!
//! Subcommands: `run` (the default), `check` (validate and describe the
//! configuration, loading what a start would load), `healthcheck` (ask a
//! running instance's admin listener, for container health checks) and
//! `cert` (development certificates). Exit codes: 0 on success (also after a
//! graceful drain), 2 on any error, with one `shunt: ...` line on stderr
//! saying what to fix. Only this file uses `anyhow`: everything below it
//! returns typed errors.
//!
//! Standard output goes through [`say`]: a reader that closes the pipe early
//! (`shunt check | head -1`) is not an error, so it neither panics nor changes
//! the exit code.

use std::io::Write as _;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};

use shunt::{CertArgs, Cli, Command, DoctorArgs, HealthcheckArgs, RunArgs};
use shunt::{Config, parse_duration};

/// mimalloc keeps size classes apart, so the small long-lived state of
/// thousands of idle tunnels is not scattered among the buffers freed after
/// each handshake (with glibc malloc that fragmentation roughly doubled the
/// RSS per idle tunnel; see docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Dispatch the subcommand; every error exits 2 with one line on stderr.
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

/// The multi-threaded tokio runtime every subcommand that does I/O runs on.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// `shunt` / `shunt run`: serve until SIGTERM or SIGINT, reload on SIGHUP, then drain.
fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let config = Config::build(&args)?;
    // Held until `run` returns: dropping it flushes the queued log lines.
    let _log = shunt::init_logging(config.log_format);
    let nofile = shunt::raise_open_files_limit();
    shunt::check_open_files(
        nofile,
        config.policy.limits.max_conns,
        config.tunnel.max_pipes,
    );
    // The proxy listener is served by the worker threads (shunt::workers);
    // this runtime only runs signals, probes, admin and the file watcher.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(async {
            let workers = args
                .workers
                .map_or_else(shunt::default_worker_count, usize::from);
            let running = shunt::start_workers(config, workers).await?;
            let mut term = signal(SignalKind::terminate())?;
            let mut int = signal(SignalKind::interrupt())?;
            let mut hup = signal(SignalKind::hangup())?;
            loop {
                tokio::select! {
                    _ = term.recv() => break,
                    _ = int.recv() => break,
                    _ = hup.recv() => {
                        // The outcome is logged and shown in /status by the reloader.
                        let _ = running.reloader().reload(shunt::ReloadTrigger::Signal, "SIGHUP").await;
                    }
                }
            }
            running.shutdown();
            running.stopped().await;
            tracing::info!("stopped");
            Ok(ExitCode::SUCCESS)
        })
}

/// `shunt check`: validate the configuration (and load what a start would load),
/// then print [`Config::describe`]'s report.
fn check(args: &RunArgs) -> anyhow::Result<ExitCode> {
    let config = Config::build(args)?;
    // Load what a start would load, so a bad certificate or CA file fails here too.
    let certs = config
        .tls
        .as_ref()
        .map(|t| shunt::load_cert_set(&t.certs))
        .transpose()?;
    for u in config
        .upstreams
        .iter()
        .filter(|u| u.url.scheme == shunt::Scheme::Https)
    {
        shunt::client_config(u.ca.as_deref()).with_context(|| format!("upstream {}", u.name))?;
    }
    say(&config.describe(certs.as_deref()))?;
    Ok(ExitCode::SUCCESS)
}

/// `shunt healthcheck`: ask a running shunt's admin listener for `/readyz`
/// (or `/healthz` with `--live`); exit 0 if it answers 200, else an error (exit 2).
fn healthcheck(args: &HealthcheckArgs) -> anyhow::Result<ExitCode> {
    let admin = shunt::parse_addr("--admin", &args.admin)?;
    let timeout = parse_duration("--timeout", &args.timeout)?;
    let path = if args.live { "/healthz" } else { "/readyz" };
    runtime()?.block_on(async {
        let status = tokio::time::timeout(timeout, shunt::admin_status(admin, path))
            .await
            .with_context(|| {
                format!(
                    "no answer from {admin} within {}",
                    humantime::format_duration(timeout)
                )
            })?
            .map_err(|e| anyhow::anyhow!("cannot ask {admin} {path}: {e}"))?;
        if status == 200 {
            say(&format!(
                "{} ({path} answered 200)\n",
                if args.live { "alive" } else { "ready" }
            ))?;
            Ok(ExitCode::SUCCESS)
        } else {
            bail!("{path} on {admin} answered {status}; GET it for why")
        }
    })
}

/// `shunt doctor`: run the checklist, print it, exit 1 if a check failed.
fn doctor(args: &DoctorArgs) -> anyhow::Result<ExitCode> {
    let options = shunt::DoctorOptions::from_args(args)?;
    let runtime = runtime()?;
    let report = runtime.block_on(shunt::run_doctor(&args.run, options));
    // A /proc scan or tool still running past its timeout must not hold the exit.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    if args.json {
        say(&format!("{}\n", report.to_json()))?;
    } else {
        say(&report.to_text())?;
    }
    Ok(ExitCode::from(u8::from(report.failed())))
}

/// `shunt cert`: write a development CA and server certificate.
fn cert(args: &CertArgs) -> anyhow::Result<ExitCode> {
    let names = if args.names.is_empty() {
        vec!["localhost".to_owned(), "127.0.0.1".to_owned()]
    } else {
        args.names.clone()
    };
    let certs = shunt::generate_dev_certs(&names)?;
    let written = shunt::write_dev_certs(&certs, &args.out, args.force)?;
    for path in &written {
        say(&format!("wrote {}\n", path.display()))?;
    }
    let dir = args.out.display();
    say(&format!(
        "\nA DEVELOPMENT certificate for {names} (valid 397 days), signed by a new development CA.\n\
         Serve it:   shunt --tls-cert {dir}/server.crt --tls-key {dir}/server.key --listen 127.0.0.1:8443\n\
         Trust the CA on this machine only (never ship {dir}/ca.key):\n\
         \x20 curl:      curl --cacert {dir}/ca.crt https://localhost:8443/\n\
         \x20 Node.js:   NODE_EXTRA_CA_CERTS={dir}/ca.crt node app.js\n\
         \x20 Debian:    cp {dir}/ca.crt /usr/local/share/ca-certificates/shunt-dev.crt && update-ca-certificates\n\
         \x20 Firefox/Chrome: import {dir}/ca.crt as an authority in the browser's certificate settings\n",
        names = names.join(", ")
    ))?;
    Ok(ExitCode::SUCCESS)
}

/// Write `text` to stdout. A closed pipe (the reader has seen enough) is
/// quietly fine; any other write error is reported.
fn say(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(e).context("cannot write to standard output")
        }
        _ => Ok(()),
    }
}
