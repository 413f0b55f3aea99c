//! The typed, validated values a [`super::Config`] is made of.
//!
//! Nothing here can hold an invalid setting: every value is built by the
//! parsers ([`super::parse`]) during the merge (`config/merge.rs`), so the
//! rest of the proxy reads these types without re-checking them.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::policy::auth::{AuthMode, Credentials, TokenSources};
use crate::policy::balancer::Balancers;
pub(crate) use crate::policy::credential::ClaimHeader;
use crate::policy::ip::IpRules;
use crate::policy::origin::OriginRule;
use crate::policy::rate::RateLimits;
use crate::proxy_header::Version;
use crate::tls::CertSpec;

/// The name of an upstream, as routes refer to it (`direct`, `nginx`, ...).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UpstreamName(pub String);

impl fmt::Display for UpstreamName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Scheme of an upstream URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// Plain TCP.
    Http,
    /// TLS to the upstream (an nginx that only listens with TLS).
    Https,
}

/// Where an upstream listens: `http://host:port` or `https://host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamUrl {
    /// `http` or `https`.
    pub scheme: Scheme,
    /// Host as written (a name or an IP address, without brackets).
    pub host: String,
    /// The port; the scheme's default when the URL has none.
    pub port: u16,
}

impl UpstreamUrl {
    /// `host:port`, bracketing an IPv6 address: what `Host` and `connect` want.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for UpstreamUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self.scheme {
            Scheme::Http => "http",
            Scheme::Https => "https",
        };
        write!(f, "{scheme}://{}", self.authority())
    }
}

/// What an active health probe does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeKind {
    /// A TCP (and, for https, TLS) connect.
    Tcp,
    /// `GET path`, expecting 2xx or 3xx.
    Http(String),
    /// A WebSocket handshake on `path`, expecting 101, then a close 1000.
    Ws(String),
}

impl fmt::Display for ProbeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProbeKind::Tcp => f.write_str("tcp"),
            ProbeKind::Http(p) => write!(f, "http:{p}"),
            ProbeKind::Ws(p) => write!(f, "ws:{p}"),
        }
    }
}

/// Health-check settings of one upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthSpec {
    /// What a probe does.
    pub check: ProbeKind,
    /// Time between the end of one probe and the start of the next.
    pub interval: Duration,
    /// Bound on one probe, connect included.
    pub timeout: Duration,
    /// Consecutive successes that bring a down upstream up (at least 1).
    pub rise: u32,
    /// Consecutive failures that take an up upstream down (at least 1).
    pub fall: u32,
    /// Time between WebSocket checks of the upstream on the paths of the
    /// routes that carry WebSocket through it; `None` when turned off (`0s`).
    pub ws_check_interval: Option<Duration>,
}

/// One named upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamSpec {
    /// How routes refer to it.
    pub name: UpstreamName,
    /// Where it listens.
    pub url: UpstreamUrl,
    /// How it is probed.
    pub health: HealthSpec,
    /// CA file trusted for an `https` upstream; `None` means the system roots.
    pub ca: Option<PathBuf>,
    /// `send_proxy_protocol`: a PROXY header first on each connection to it.
    pub send_proxy_protocol: Option<Version>,
}

/// TLS on the proxy listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSpec {
    /// The first is the default certificate.
    pub certs: Vec<CertSpec>,
    /// Bound on one downstream TLS handshake, so a silent client cannot hold a slot.
    pub handshake_timeout: Duration,
    /// CA file of client certificates (`--tls-client-ca`), if asked for.
    pub client_ca: Option<PathBuf>,
}

/// The ACME challenge shunt answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcmeChallenge {
    /// RFC 8737, on the TLS listener (ALPN `acme-tls/1`).
    TlsAlpn01,
    /// RFC 8555 8.3, on `--http-listen`.
    Http01,
}

impl AcmeChallenge {
    /// `tls-alpn-01` or `http-01`, as the config and the CA spell it.
    pub fn name(self) -> &'static str {
        match self {
            AcmeChallenge::TlsAlpn01 => "tls-alpn-01",
            AcmeChallenge::Http01 => "http-01",
        }
    }
}

/// `[acme]`: one certificate that shunt orders and renews itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeSpec {
    /// The certificate's names, lower case, at least one.
    pub domains: Vec<String>,
    /// Contact e-mail given to the CA.
    pub email: Option<String>,
    /// The CA's directory URL.
    pub directory: String,
    /// The challenge answered.
    pub challenge: AcmeChallenge,
    /// Account key, certificate and key, files 0600.
    pub state_dir: PathBuf,
    /// CA trusted for the ACME server; `None`: the system roots.
    pub ca_file: Option<PathBuf>,
}

/// One route: an optional host, a path prefix, upstreams in order of preference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    /// Lower-case host without port; `None` matches any host.
    pub host: Option<String>,
    /// Path prefix, starting with `/`, matched on whole segments.
    pub path: String,
    /// Upstream names in order of preference: the first healthy one is used.
    pub via: Vec<UpstreamName>,
    /// Security policy, with the global defaults applied.
    pub policy: RoutePolicy,
    /// Call-layer settings, with the global defaults applied.
    pub calls: CallSpec,
    /// Declared to carry WebSocket (`websocket = true`): its upstreams are
    /// WebSocket-checked from the start, not only once a 101 was seen.
    pub websocket: bool,
}

impl RouteSpec {
    /// Routing order key: host routes first, then longer prefixes.
    pub fn specificity(&self) -> (bool, usize) {
        (self.host.is_some(), self.path.len())
    }

    /// `host/path` or `path`: how logs and `/status` name the route.
    pub fn label(&self) -> String {
        match &self.host {
            Some(h) => format!("{h}{}", self.path),
            None => self.path.clone(),
        }
    }
}

/// Timeouts applied to downstream and upstream connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Bound on connecting to an upstream (TCP and TLS).
    pub connect: Duration,
    /// Bound on an upstream's response head after the request was sent.
    pub response: Duration,
    /// Bound on a downstream request head (slowloris).
    pub header: Duration,
    /// A tunnel silent both ways this long is closed.
    pub idle: Duration,
    /// At shutdown, how long requests and tunnels get to end on their own.
    pub drain: Duration,
    /// TCP keepalive idle time on both legs (`--tcp-keepalive`); `None`: off.
    pub keepalive: Option<Duration>,
}

/// How tunnels move bytes (`--tunnel-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TunnelMode {
    /// splice(2) between plain TCP legs when the kernel allows it, buffered copy otherwise.
    Auto,
    /// Like `Auto`, but says so if splice is unavailable (still falls back).
    Splice,
    /// Always the buffered copy.
    Copy,
}

/// Tunnel settings, fixed at start (a reload does not change them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TunnelSettings {
    /// Splice, copy, or splice when possible.
    pub mode: TunnelMode,
    /// Capacity asked of each splice pipe.
    pub pipe_size: usize,
    /// Most pipes open at once.
    pub max_pipes: usize,
}

impl RouteSpec {
    /// DESIGN.md's defaults: everything direct, or audio direct-first and the rest via nginx.
    pub fn defaults(with_nginx: bool) -> Vec<RouteSpec> {
        let via = |names: &[&str]| {
            names
                .iter()
                .map(|n| UpstreamName((*n).to_owned()))
                .collect()
        };
        if with_nginx {
            vec![
                RouteSpec {
                    host: None,
                    path: "/frontend-audio".into(),
                    via: via(&["direct", "nginx"]),
                    policy: RoutePolicy::default(),
                    calls: CallSpec::default(),
                    websocket: false,
                },
                RouteSpec {
                    host: None,
                    path: "/".into(),
                    via: via(&["nginx", "direct"]),
                    policy: RoutePolicy::default(),
                    calls: CallSpec::default(),
                    websocket: false,
                },
            ]
        } else {
            vec![RouteSpec {
                host: None,
                path: "/".into(),
                via: via(&["direct"]),
                policy: RoutePolicy::default(),
                calls: CallSpec::default(),
                websocket: false,
            }]
        }
    }
}

/// What the call layer does on one route's tunnels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallSpec {
    /// Follow WebSocket frames (`false`: a pure byte relay, no pings, no close codes).
    pub frames: bool,
    /// Ping a leg silent this long; `None` (`0`): no pings.
    pub ping_interval: Option<Duration>,
    /// A pinged leg silent this long is dead.
    pub ping_timeout: Duration,
    /// A streaming direction silent this long is stalled.
    pub stall_after: Duration,
    /// What a lost backend leg means for the call (`backend_loss`).
    pub backend_loss: BackendLoss,
}

/// `backend_loss`: what shunt does when a call's backend leg is lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendLoss {
    /// Close the client leg with 1014 (the default).
    #[default]
    Close,
    /// Keep the client leg open and reattach it to a new backend connection.
    Reattach(ReattachSpec),
}

/// The settings of `backend_loss = "reattach"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReattachSpec {
    /// How long shunt keeps trying before it gives up with 1014 (`reattach_within`).
    pub within: Duration,
    /// How many first complete client messages are replayed (`replay_messages`).
    pub replay_messages: u32,
    /// Most bytes of those messages; a larger preamble makes the call not
    /// reattachable (`replay_bytes`).
    pub replay_bytes: u32,
    /// Most client bytes held while the backend leg is replaced (`reattach_buffer`).
    pub buffer: u32,
}

impl Default for ReattachSpec {
    fn default() -> Self {
        ReattachSpec {
            within: Duration::from_secs(10),
            replay_messages: 1,
            replay_bytes: 64 * 1024,
            buffer: 256 * 1024,
        }
    }
}

impl std::fmt::Display for CallSpec {
    /// `frames on, ping 20s timeout 10s, stall 2s` (as `shunt check` prints it).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if !self.frames {
            return f.write_str("frames off (byte relay)");
        }
        let d = humantime::format_duration;
        match self.ping_interval {
            Some(i) => write!(
                f,
                "frames on, ping {} timeout {}",
                d(i),
                d(self.ping_timeout)
            )?,
            None => f.write_str("frames on, pings off")?,
        }
        write!(f, ", stall {}", d(self.stall_after))?;
        if let BackendLoss::Reattach(r) = self.backend_loss {
            write!(
                f,
                ", reattach within {} (replay {} message(s), {} B; buffer {} B)",
                d(r.within),
                r.replay_messages,
                r.replay_bytes,
                r.buffer
            )?;
        }
        Ok(())
    }
}

impl Default for CallSpec {
    fn default() -> Self {
        CallSpec {
            frames: true,
            ping_interval: Some(Duration::from_secs(20)),
            ping_timeout: Duration::from_secs(10),
            stall_after: Duration::from_secs(2),
            backend_loss: BackendLoss::Close,
        }
    }
}

/// Where the identity provider's JWKS is fetched from (`--jwt-jwks-url`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksUrl {
    /// The URL as written (shown in `/status` and logs).
    pub text: String,
    /// The server to connect to.
    pub server: UpstreamUrl,
    /// Path and query sent.
    pub path: String,
}

/// The JWKS URL and how it is refreshed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksSettings {
    /// Where.
    pub url: JwksUrl,
    /// Time between refreshes (`jwt_jwks_refresh`); a longer `max-age` wins.
    pub refresh: Duration,
    /// Least time between refreshes an unknown `kid` causes (`jwt_jwks_min_refresh`).
    pub min_refresh: Duration,
}

/// Settings that apply to the whole listener.
#[derive(Debug, Clone, Default)]
pub struct GlobalPolicy {
    /// Token and JWT secret files, watched for changes.
    pub files: Vec<PathBuf>,
    /// Checked at accept.
    pub ip: IpRules,
    /// The static tokens and the JWT verifier.
    pub credentials: Credentials,
    /// Where a token is looked for (query parameter and cookie names).
    pub sources: TokenSources,
    /// The JWKS URL, if one is configured.
    pub jwks: Option<JwksSettings>,
    /// Per-client rate, connection caps.
    pub limits: RateLimits,
    /// Load balancers in front: PROXY protocol and trusted forwarding headers.
    pub balancers: Balancers,
}

/// One route's policy, with the global defaults already applied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoutePolicy {
    /// The route's own lists, checked in addition to the global ones.
    pub ip: IpRules,
    /// What credential the route requires.
    pub auth: AuthMode,
    /// The route's list, or the global one; empty allows any Origin.
    pub origins: Vec<OriginRule>,
    /// Refuse a WebSocket handshake without `Origin`.
    pub require_origin: bool,
    /// Answer CORS preflights and add `Access-Control-Allow-Origin`.
    pub cors: bool,
    /// Accept CONNECT (authority-form) requests.
    pub allow_connect: bool,
    /// Accept absolute-form targets (`GET http://host/path`).
    pub allow_absolute_form: bool,
    /// Forward the accepted credential too (`forward_credential`).
    pub forward_credential: bool,
    /// Verified claims passed as request headers (`forward_claims`).
    pub forward_claims: Vec<ClaimHeader>,
    /// Pass the client certificate's subject and fingerprint (`forward_client_cert`).
    pub forward_client_cert: bool,
}
