//! Command-line interface: the `shunt` subcommands and their flags.
//!
//! Every run flag has an environment twin `SHUNT_<FLAG>` so a container can be
//! configured without a shell. Flags are `Option`s without clap defaults: the
//! config layer needs to know whether a flag was *given* to merge it over the
//! config file (flag > file > built-in default); the defaults shown in `--help`
//! are applied in [`crate::config`].

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// `shunt`: a sidecar reverse proxy for real-time WebSocket services.
#[derive(Debug, Parser)]
#[command(name = "shunt", version, about, args_conflicts_with_subcommands = true)]
pub struct Cli {
    /// What to do; without a subcommand, `run`.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Flags for the implicit `run`.
    #[command(flatten)]
    pub run: RunArgs,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy (the default).
    Run(RunArgs),
    /// Parse and validate the configuration, print the effective upstreams and routes.
    Check(RunArgs),
    /// Exit 0 iff the admin listener's /readyz answers 200 (for a container HEALTHCHECK).
    Healthcheck(HealthcheckArgs),
}

/// Flags of `shunt run` and `shunt check`.
#[derive(Debug, Clone, Default, Args)]
pub struct RunArgs {
    /// Address of the proxy listener [default: 127.0.0.1:8080].
    #[arg(long, env = "SHUNT_LISTEN", value_name = "ADDR")]
    pub listen: Option<String>,
    /// Address of the admin listener, or `off` [default: 127.0.0.1:9901].
    #[arg(long, env = "SHUNT_ADMIN", value_name = "ADDR")]
    pub admin: Option<String>,
    /// URL of the `direct` upstream, the backend itself [default: http://127.0.0.1:5006].
    #[arg(long, env = "SHUNT_DIRECT", value_name = "URL")]
    pub direct: Option<String>,
    /// URL of the `nginx` upstream; with it, `/` goes via nginx by default.
    #[arg(long, env = "SHUNT_NGINX", value_name = "URL")]
    pub nginx: Option<String>,
    /// A route: PATH=UPSTREAM[,UPSTREAM...], optionally HOST/PATH=...; repeatable.
    #[arg(
        long = "route",
        env = "SHUNT_ROUTE",
        value_name = "PATH=UP[,UP...]",
        value_delimiter = ';'
    )]
    pub routes: Vec<String>,
    /// TOML config file; flags given on the command line override it.
    #[arg(long, env = "SHUNT_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Timeout for connecting to an upstream [default: 2s].
    #[arg(long, env = "SHUNT_CONNECT_TIMEOUT", value_name = "DURATION")]
    pub connect_timeout: Option<String>,
    /// Timeout for an upstream's response head [default: 60s].
    #[arg(long, env = "SHUNT_RESPONSE_TIMEOUT", value_name = "DURATION")]
    pub response_timeout: Option<String>,
    /// Interval between health probes [default: 2s].
    #[arg(long, env = "SHUNT_HEALTH_INTERVAL", value_name = "DURATION")]
    pub health_interval: Option<String>,
    /// Timeout of one health probe [default: 1s].
    #[arg(long, env = "SHUNT_HEALTH_TIMEOUT", value_name = "DURATION")]
    pub health_timeout: Option<String>,
    /// Health probe kind: tcp, http:PATH or ws:PATH [default: tcp].
    #[arg(long, env = "SHUNT_HEALTH_CHECK", value_name = "KIND")]
    pub health_check: Option<String>,
    /// Consecutive successful probes to mark an upstream up [default: 1].
    #[arg(long, env = "SHUNT_RISE", value_name = "N")]
    pub rise: Option<u32>,
    /// Consecutive failures to mark an upstream down [default: 1].
    #[arg(long, env = "SHUNT_FALL", value_name = "N")]
    pub fall: Option<u32>,
    /// Time a client has to send a complete request head [default: 10s].
    #[arg(long, env = "SHUNT_HEADER_TIMEOUT", value_name = "DURATION")]
    pub header_timeout: Option<String>,
    /// Close a tunnel after this long without a byte either way [default: 1h].
    #[arg(long, env = "SHUNT_IDLE_TIMEOUT", value_name = "DURATION")]
    pub idle_timeout: Option<String>,
    /// On shutdown, how long live tunnels may run before they are closed [default: 30s].
    #[arg(long, env = "SHUNT_DRAIN_TIMEOUT", value_name = "DURATION")]
    pub drain_timeout: Option<String>,
    /// Largest request head accepted, in bytes; larger answers 431 [default: 16384].
    #[arg(long, env = "SHUNT_MAX_HEADER_BYTES", value_name = "BYTES")]
    pub max_header_bytes: Option<usize>,
    /// Log format: pretty or json [default: pretty].
    #[arg(long, env = "SHUNT_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<String>,
    /// How tunnels move bytes: auto (splice between plain TCP legs if the kernel allows), splice or copy [default: auto].
    #[arg(long, env = "SHUNT_TUNNEL_MODE", value_name = "MODE")]
    pub tunnel_mode: Option<String>,
    /// Capacity of each splice pipe, in bytes [default: 262144].
    #[arg(long, env = "SHUNT_PIPE_SIZE", value_name = "BYTES")]
    pub pipe_size: Option<usize>,
    /// Most splice pipes open at once; bursts beyond it are copied [default: 512].
    #[arg(long, env = "SHUNT_MAX_PIPES", value_name = "N")]
    pub max_pipes: Option<usize>,
}

/// Flags of `shunt healthcheck`.
#[derive(Debug, Clone, Args)]
pub struct HealthcheckArgs {
    /// Admin listener to ask.
    #[arg(
        long,
        env = "SHUNT_ADMIN",
        default_value = "127.0.0.1:9901",
        value_name = "ADDR"
    )]
    pub admin: String,
    /// How long to wait for the answer.
    #[arg(long, default_value = "3s", value_name = "DURATION")]
    pub timeout: String,
}
