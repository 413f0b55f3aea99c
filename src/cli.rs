//! Command-line interface: the `shunt` subcommands and their flags.
//!
//! Every run flag has an environment twin `SHUNT_<FLAG>` so a container can be
//! configured without a shell. Flags are `Option`s without clap defaults: the
//! config layer needs to know whether a flag was *given* to merge it over the
//! config file (flag > file > built-in default); the defaults shown in `--help`
//! are applied in [`crate::config`].
//!
//! `--help` is the reference for every flag; `shunt check` prints what the
//! flags and the file amounted to, after the merge, which is the quickest
//! way to see why a setting is not what one expected.

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
    /// Generate a development CA and a server certificate signed by it.
    Cert(CertArgs),
    /// Run the troubleshooting checklist against the real parts; print the fix for each failure.
    Doctor(DoctorArgs),
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
    /// A Host name the admin listener answers besides IP addresses and localhost (repeatable, comma-separated).
    #[arg(
        long = "admin-host",
        env = "SHUNT_ADMIN_HOSTS",
        value_name = "NAME",
        value_delimiter = ','
    )]
    pub admin_hosts: Vec<String>,
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
    /// Interval between WebSocket checks of the upstreams of WebSocket routes; 0s turns them off [default: 30s].
    #[arg(long, env = "SHUNT_WS_CHECK_INTERVAL", value_name = "DURATION")]
    pub ws_check_interval: Option<String>,
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
    /// Ping a WebSocket leg that has sent nothing for this long; 0 turns pings off [default: 20s].
    #[arg(long, env = "SHUNT_PING_INTERVAL", value_name = "DURATION")]
    pub ping_interval: Option<String>,
    /// A pinged leg that sends nothing for this long is dead; 0 turns pings off [default: 10s].
    #[arg(long, env = "SHUNT_PING_TIMEOUT", value_name = "DURATION")]
    pub ping_timeout: Option<String>,
    /// A call direction that carried 5+ frames/s and goes silent this long is stalled [default: 2s].
    #[arg(long, env = "SHUNT_STALL_AFTER", value_name = "DURATION")]
    pub stall_after: Option<String>,
    /// Follow WebSocket frames in tunnels (pings, close codes, call stats): on or off [default: on].
    #[arg(long, env = "SHUNT_FRAMES", value_name = "on|off")]
    pub frames: Option<String>,
    /// Largest request head accepted, in bytes; larger answers 431 [default: 16384].
    #[arg(long, env = "SHUNT_MAX_HEADER_BYTES", value_name = "BYTES")]
    pub max_header_bytes: Option<usize>,
    /// Log format: pretty or json [default: pretty].
    #[arg(long, env = "SHUNT_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<String>,
    /// PEM certificate chain to serve TLS (wss://) on the listener; needs --tls-key.
    #[arg(
        long,
        env = "SHUNT_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of --tls-cert.
    #[arg(
        long,
        env = "SHUNT_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
    /// PEM CA file: ask TLS clients for a certificate signed by it (optional at the TLS level; `auth = "mtls"` routes require one); re-read on reload.
    #[arg(long, env = "SHUNT_TLS_CLIENT_CA", value_name = "FILE")]
    pub tls_client_ca: Option<PathBuf>,
    /// Time a client has to complete the TLS handshake [default: 10s].
    #[arg(long, env = "SHUNT_TLS_HANDSHAKE_TIMEOUT", value_name = "DURATION")]
    pub tls_handshake_timeout: Option<String>,
    /// Key exchange groups the TLS listener offers, in order, comma-separated
    /// (case-insensitive): X25519MLKEM768, X25519, secp256r1, secp384r1
    /// [default: all four, post-quantum first].
    #[arg(
        long,
        env = "SHUNT_TLS_GROUPS",
        value_name = "GROUPS",
        value_delimiter = ','
    )]
    pub tls_groups: Vec<String>,
    /// How often the TLS session-ticket keys rotate (a ticket resumes for twice
    /// this; between 1m and 6h) [default: 6h].
    #[arg(long, env = "SHUNT_TLS_TICKET_ROTATION", value_name = "DURATION")]
    pub tls_ticket_rotation: Option<String>,
    /// ACME: a name of the one certificate shunt orders and renews itself
    /// (repeatable; turns ACME on).
    #[arg(
        long = "acme-domain",
        env = "SHUNT_ACME_DOMAIN",
        value_name = "NAME",
        value_delimiter = ','
    )]
    pub acme_domains: Vec<String>,
    /// ACME: contact e-mail given to the CA.
    #[arg(long, env = "SHUNT_ACME_EMAIL", value_name = "EMAIL")]
    pub acme_email: Option<String>,
    /// ACME: the CA's directory URL, or `letsencrypt` / `letsencrypt-staging`
    /// [default: letsencrypt].
    #[arg(long, env = "SHUNT_ACME_DIRECTORY", value_name = "URL")]
    pub acme_directory: Option<String>,
    /// ACME: the challenge answered, `tls-alpn-01` (on the listener) or
    /// `http-01` (on --http-listen) [default: tls-alpn-01].
    #[arg(long, env = "SHUNT_ACME_CHALLENGE", value_name = "TYPE")]
    pub acme_challenge: Option<String>,
    /// ACME: where the account key and certificates are kept
    /// [default: /var/lib/shunt/acme].
    #[arg(long, env = "SHUNT_ACME_STATE_DIR", value_name = "DIR")]
    pub acme_state_dir: Option<PathBuf>,
    /// ACME: PEM CA file trusted for the ACME server (a private CA, tests) [default: the system roots].
    #[arg(long, env = "SHUNT_ACME_CA_FILE", value_name = "FILE")]
    pub acme_ca_file: Option<PathBuf>,
    /// A plain HTTP listener that answers ACME HTTP-01 challenges and
    /// redirects everything else to https:// (308) [default: off].
    #[arg(long, env = "SHUNT_HTTP_LISTEN", value_name = "ADDR")]
    pub http_listen: Option<String>,
    /// The port --http-listen redirects to [default: the listener's].
    #[arg(long, env = "SHUNT_HTTPS_PORT", value_name = "PORT")]
    pub https_port: Option<u16>,
    /// Strict-Transport-Security value added to HTTP responses on the TLS
    /// listener (not to a 101), e.g. "max-age=31536000" [default: off].
    #[arg(long, env = "SHUNT_HSTS", value_name = "VALUE")]
    pub hsts: Option<String>,
    /// PEM CA file trusted for https:// upstreams [default: the system roots].
    #[arg(long, env = "SHUNT_UPSTREAM_CA", value_name = "FILE")]
    pub upstream_ca: Option<PathBuf>,
    /// Do not watch the config and certificate files for changes (SIGHUP and POST /reload still work).
    #[arg(long, env = "SHUNT_NO_WATCH")]
    pub no_watch: bool,
    /// Worker threads serving the proxy listener, each with its own runtime,
    /// each with its own SO_REUSEPORT listener [default: the CPUs this process may use].
    #[arg(long, env = "SHUNT_WORKERS", value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub workers: Option<u16>,
    // --- security policy (src/policy/) ---
    /// Allow only these client addresses (CIDR or address; repeatable, comma-separated).
    #[arg(
        long = "allow-ip",
        env = "SHUNT_ALLOW_IP",
        value_name = "CIDR",
        value_delimiter = ','
    )]
    pub allow_ip: Vec<String>,
    /// Refuse these client addresses; wins over --allow-ip (repeatable, comma-separated).
    #[arg(
        long = "deny-ip",
        env = "SHUNT_DENY_IP",
        value_name = "CIDR",
        value_delimiter = ','
    )]
    pub deny_ip: Vec<String>,
    /// Default authentication of routes: none, token, jwt or mtls [default: jwt with --jwt-secret-file, else token with --token-file, else none].
    #[arg(long, env = "SHUNT_AUTH", value_name = "MODE")]
    pub auth: Option<String>,
    /// File of accepted bearer tokens, one per line, `#` comments; re-read on reload.
    #[arg(long, env = "SHUNT_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// File holding the HS256 secret JWTs are signed with; re-read on reload.
    #[arg(long, env = "SHUNT_JWT_SECRET_FILE", value_name = "FILE")]
    pub jwt_secret_file: Option<PathBuf>,
    /// PEM public keys or certificates JWTs may be signed with (RSA, EC P-256/P-384, Ed25519); re-read on reload.
    #[arg(long, env = "SHUNT_JWT_PUBLIC_KEY_FILE", value_name = "FILE")]
    pub jwt_public_key_file: Option<PathBuf>,
    /// JWKS document on disk whose keys JWTs may be signed with; re-read on reload.
    #[arg(long, env = "SHUNT_JWT_JWKS_FILE", value_name = "FILE")]
    pub jwt_jwks_file: Option<PathBuf>,
    /// https:// URL of the identity provider's JWKS, fetched at start and refreshed.
    #[arg(long, env = "SHUNT_JWT_JWKS_URL", value_name = "URL")]
    pub jwt_jwks_url: Option<String>,
    /// Allow an http:// --jwt-jwks-url (a loopback identity provider in tests).
    #[arg(long, env = "SHUNT_JWT_JWKS_INSECURE_HTTP", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub jwt_jwks_insecure_http: Option<bool>,
    /// Time between JWKS refreshes, at least 1s; a longer Cache-Control max-age wins [default: 10m].
    #[arg(long, env = "SHUNT_JWT_JWKS_REFRESH", value_name = "DURATION")]
    pub jwt_jwks_refresh: Option<String>,
    /// Least time between two JWKS refreshes caused by an unknown `kid` [default: 30s].
    #[arg(long, env = "SHUNT_JWT_JWKS_MIN_REFRESH", value_name = "DURATION")]
    pub jwt_jwks_min_refresh: Option<String>,
    /// Accepted JWT algorithms (comma-separated) [default: every one the configured keys allow].
    #[arg(
        long = "jwt-algorithms",
        env = "SHUNT_JWT_ALGORITHMS",
        value_name = "ALG",
        value_delimiter = ','
    )]
    pub jwt_algorithms: Vec<String>,
    /// Accepted `iss` claim of JWTs (repeatable, comma-separated: any one matches).
    #[arg(
        long = "jwt-issuer",
        env = "SHUNT_JWT_ISSUER",
        value_name = "ISS",
        value_delimiter = ','
    )]
    pub jwt_issuer: Vec<String>,
    /// Accepted `aud` claim of JWTs (repeatable, comma-separated: a string or any member of an array matches).
    #[arg(
        long = "jwt-audience",
        env = "SHUNT_JWT_AUDIENCE",
        value_name = "AUD",
        value_delimiter = ','
    )]
    pub jwt_audience: Vec<String>,
    /// Clock-skew allowance for JWT `exp` and `nbf` [default: 30s].
    #[arg(long, env = "SHUNT_JWT_LEEWAY", value_name = "DURATION")]
    pub jwt_leeway: Option<String>,
    /// Query parameter a token may be sent in; removed before forwarding [default: token].
    #[arg(long, env = "SHUNT_TOKEN_QUERY", value_name = "NAME")]
    pub token_query: Option<String>,
    /// Cookie a token may be sent in [default: shunt_token].
    #[arg(long, env = "SHUNT_TOKEN_COOKIE", value_name = "NAME")]
    pub token_cookie: Option<String>,
    /// Accept the token in `Sec-WebSocket-Protocol: NAME, <token>` (e.g. bearer) [default: off].
    #[arg(long, env = "SHUNT_TOKEN_SUBPROTOCOL", value_name = "NAME")]
    pub token_subprotocol: Option<String>,
    /// Allowed Origins: `scheme://host[:port]`, `https://*.example.com` or `*`.
    #[arg(
        help = "Allowed Origin: scheme://host[:port], https://*.example.com or * (repeatable, comma-separated)",
        long = "allow-origin",
        env = "SHUNT_ALLOW_ORIGIN",
        value_name = "ORIGIN",
        value_delimiter = ','
    )]
    pub allow_origin: Vec<String>,
    /// Refuse WebSocket handshakes that carry no Origin header.
    #[arg(long, env = "SHUNT_REQUIRE_ORIGIN", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub require_origin: Option<bool>,
    /// Answer CORS preflights and add Access-Control-Allow-Origin for allowed Origins.
    #[arg(long, env = "SHUNT_CORS", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub cors: Option<bool>,
    /// Requests and handshakes per client address: N/s, N/m or N/h [default: unlimited].
    #[arg(long, env = "SHUNT_RATE", value_name = "N/s")]
    pub rate: Option<String>,
    /// Requests a client may make at once after a quiet period [default: the rate per second, at least 1].
    #[arg(long, env = "SHUNT_BURST", value_name = "N")]
    pub burst: Option<u32>,
    /// Concurrent WebSocket tunnels per client address [default: unlimited].
    #[arg(long, env = "SHUNT_MAX_CONNS_PER_IP", value_name = "N")]
    pub max_conns_per_ip: Option<u32>,
    /// Concurrent downstream connections and tunnels, checked at accept [default: unlimited].
    #[arg(long, env = "SHUNT_MAX_CONNS", value_name = "N")]
    pub max_conns: Option<usize>,
    /// Most client addresses the rate limiter remembers [default: 65536].
    #[arg(long, env = "SHUNT_MAX_TRACKED_IPS", value_name = "N")]
    pub max_tracked_ips: Option<usize>,
    /// Read a PROXY protocol header (v1, v2 or any) first on connections from --trusted-proxy addresses [default: off].
    #[arg(long, env = "SHUNT_PROXY_PROTOCOL", value_name = "VERSION")]
    pub proxy_protocol: Option<String>,
    /// A load balancer's address (CIDR or address; repeatable, comma-separated): it may send a PROXY header or X-Forwarded-For.
    #[arg(
        long = "trusted-proxy",
        env = "SHUNT_TRUSTED_PROXY",
        value_name = "CIDR",
        value_delimiter = ','
    )]
    pub trusted_proxies: Vec<String>,
    /// Sources outside --trusted-proxy served without a PROXY header, e.g. a health checker (repeatable, comma-separated).
    #[arg(
        long = "proxy-protocol-optional-from",
        env = "SHUNT_PROXY_PROTOCOL_OPTIONAL_FROM",
        value_name = "CIDR",
        value_delimiter = ','
    )]
    pub proxy_protocol_optional_from: Vec<String>,
    /// Take the client address from X-Forwarded-For / Forwarded of requests from --trusted-proxy peers (right-most untrusted hop).
    #[arg(long, env = "SHUNT_TRUST_FORWARDED_FOR", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub trust_forwarded_for: Option<bool>,
    // --- end security policy ---
    /// How tunnels move bytes: auto (splice between plain TCP legs if the kernel allows), splice or copy [default: auto].
    #[arg(long, env = "SHUNT_TUNNEL_MODE", value_name = "MODE")]
    pub tunnel_mode: Option<String>,
    /// TCP keepalive on both legs: idle time before probing (1s to 2h), or off; a peer gone without a FIN is found within about twice this [default: off].
    #[arg(long, env = "SHUNT_TCP_KEEPALIVE", value_name = "DURATION")]
    pub tcp_keepalive: Option<String>,
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
    /// Ask /healthz (the process is alive) instead of /readyz (it can serve every route).
    #[arg(long)]
    pub live: bool,
}

/// Flags of `shunt cert`.
#[derive(Debug, Clone, Args)]
pub struct CertArgs {
    /// A DNS name or IP address the certificate must cover; repeatable [default: localhost, 127.0.0.1].
    #[arg(long = "name", value_name = "NAME")]
    pub names: Vec<String>,
    /// Directory to write ca.crt, ca.key, server.crt and server.key into.
    #[arg(long, default_value = "certs", value_name = "DIR")]
    pub out: PathBuf,
    /// Overwrite existing files.
    #[arg(long)]
    pub force: bool,
}

/// Flags of `shunt doctor`: the run flags (same configuration as `run`) and
/// what only a browser knows.
#[derive(Debug, Clone, Args)]
pub struct DoctorArgs {
    /// The configuration to check, exactly as `run` takes it.
    #[command(flatten)]
    pub run: RunArgs,
    /// Public address browsers use, e.g. wss://calls.example.com:8443/frontend-audio [default: from --listen and the first WebSocket route].
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// Page origin of the front end, sent as `Origin`, e.g. `https://app.example.com`.
    #[arg(long, value_name = "ORIGIN")]
    pub origin: Option<String>,
    /// Credential for routes that require one (sent as `?token=`, like a browser).
    #[arg(
        long,
        env = "SHUNT_DOCTOR_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// Print the results as a JSON array of {check, status, detail, fix}.
    #[arg(long)]
    pub json: bool,
    /// Bound on each check.
    #[arg(long, default_value = "3s", value_name = "DURATION")]
    pub timeout: String,
}
