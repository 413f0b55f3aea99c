//! `shunt doctor`: the troubleshooting checklist, run against the real parts,
//! with the concrete fix for each failure.
//!
//! A side module, run on demand: it reads the same [`Config`] as `run`, dials
//! the upstreams and shunt's own listener, and reads `/proc` and the firewall
//! tools (read-only). Nothing in the proxy flow imports it. The checks run in
//! a fixed order ([`run`]); each adds one or more [`Finding`]s, and every
//! network or process step is bounded by `--timeout`.
//!
//! - [`upstreams`]: each upstream accepts TCP (and TLS), and its `http:` health GET.
//! - [`websocket`]: a real handshake on each WebSocket route through each
//!   upstream, and the diagnosis of a non-101 (nginx without Upgrade headers, ...).
//! - [`listeners`]: who holds the proxy port, loopback-only listeners, backends
//!   bound on all interfaces (`/proc/net/tcp{,6}`).
//! - [`firewall`]: ufw / nft / iptables, when present and readable.
//! - [`tls`]: the listener's certificates (key, chain, expiry, names, trust).
//! - [`jwt`]: the JWKS URL's keys (ids and algorithms), and whether `--token` verifies.
//! - [`balancer`]: the PROXY protocol and trusted forwarding headers, and
//!   whether the running shunt saw trusted sources send no header.
//! - [`acme`]: with `[acme]`, each domain resolves, the challenge port
//!   answers, and the stored certificate's validity and renewal time.
//! - [`end_to_end`]: a handshake through shunt itself, `x-shunt-route`, and
//!   640-byte round trips.

pub(crate) mod acme;
pub(crate) mod balancer;
pub(crate) mod end_to_end;
pub(crate) mod firewall;
pub(crate) mod jwt;
pub(crate) mod listeners;
pub(crate) mod public_url;
pub(crate) mod tls;
pub(crate) mod upstreams;
pub(crate) mod websocket;

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cli::{DoctorArgs, RunArgs};
use crate::config::{Config, ConfigError, RouteSpec, parse_duration};
use crate::policy::auth::AuthMode;
pub(crate) use public_url::{PublicUrl, UrlError};

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Status {
    /// Checked and fine.
    #[serde(rename = "ok")]
    Ok,
    /// Works, but something will bite (or could not be checked).
    #[serde(rename = "warn")]
    Warn,
    /// Broken: the exit code is 1.
    #[serde(rename = "FAIL")]
    Fail,
}

/// How a status is printed.
impl Status {
    /// `ok`, `warn` or `FAIL`, as printed.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
        }
    }
}

/// One line of the report: what was checked against what, and the fix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Which check, e.g. `upstream direct` or `websocket /frontend-audio via nginx`.
    pub check: String,
    /// `ok`, `warn` or `FAIL`.
    pub status: Status,
    /// What was looked at and what was found.
    pub detail: String,
    /// The concrete action, for `warn` and `FAIL` (may span lines).
    pub fix: Option<String>,
}

/// Constructors: a `warn` or `FAIL` always carries its fix.
impl Finding {
    /// A passed check.
    pub fn ok(check: impl Into<String>, detail: impl Into<String>) -> Finding {
        Finding {
            check: check.into(),
            status: Status::Ok,
            detail: detail.into(),
            fix: None,
        }
    }

    /// A check that passed with a caveat.
    pub fn warn(
        check: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Finding {
        Finding::with_fix(Status::Warn, check.into(), detail.into(), fix.into())
    }

    /// A failed check.
    pub fn fail(
        check: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Finding {
        Finding::with_fix(Status::Fail, check.into(), detail.into(), fix.into())
    }

    /// A finding that needs action, with the action.
    fn with_fix(status: Status, check: String, detail: String, fix: String) -> Finding {
        Finding {
            check,
            status,
            detail,
            fix: Some(fix),
        }
    }
}

/// Every finding, in check order.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(transparent)]
pub struct Report {
    /// The findings, in the order the checks ran.
    pub findings: Vec<Finding>,
}

/// Building and printing the report.
impl Report {
    /// Add a finding after the ones before it (the order is the check order).
    fn push(&mut self, finding: Finding) {
        self.findings.push(finding);
    }

    /// Whether any check failed (exit code 1).
    pub fn failed(&self) -> bool {
        self.findings.iter().any(|f| f.status == Status::Fail)
    }

    /// One line per finding, `fix:` lines under `warn` and `FAIL`.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for f in &self.findings {
            let _ = writeln!(out, "{:<4} {}: {}", f.status.as_str(), f.check, f.detail);
            if let Some(fix) = &f.fix {
                let mut lines = fix.lines();
                if let Some(first) = lines.next() {
                    let _ = writeln!(out, "     fix: {first}");
                }
                for line in lines {
                    let _ = writeln!(out, "          {line}");
                }
            }
        }
        out
    }

    /// A JSON array of `{check, status, detail, fix}`.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|_| "[]".to_owned())
    }
}

/// Why `shunt doctor` was given bad arguments (exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum DoctorError {
    /// `--url` is not a ws:// or wss:// URL.
    #[error(transparent)]
    Url(#[from] UrlError),
    /// `--timeout` is not a duration.
    #[error(transparent)]
    Timeout(ConfigError),
    /// `--timeout` is zero (every check would fail at once) or absurdly long.
    #[error(
        "invalid --timeout `{0}`: give a duration from 1ms to 60s (the bound on each check, e.g. 3s)"
    )]
    TimeoutRange(String),
    /// `--origin` is not `scheme://host[:port]`.
    #[error("invalid --origin `{0}`: expected scheme://host[:port], e.g. https://app.example.com")]
    Origin(String),
}

/// The longest `--timeout` taken: a run has about a dozen bounded steps, and
/// one that waits minutes on each is a hang to the person running it.
pub(crate) const MAX_TIMEOUT: Duration = Duration::from_secs(60);

/// What only the person running doctor knows, parsed from [`DoctorArgs`].
/// Its `Debug` hides the token.
#[derive(Clone)]
pub struct Options {
    /// `--url`; `None` builds it from `--listen` and the first WebSocket route.
    pub url: Option<PublicUrl>,
    /// `--origin`, sent as `Origin`.
    pub origin: Option<String>,
    /// `--token` (or `SHUNT_DOCTOR_TOKEN`), sent in the token query parameter.
    pub token: Option<String>,
    /// `--timeout`: the bound on each check.
    pub timeout: Duration,
}

/// `Debug` without the credential: `token: Some("<TOKEN>")`.
impl std::fmt::Debug for Options {
    /// Write the options, the token masked.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("url", &self.url)
            .field("origin", &self.origin)
            .field("token", &self.token.as_ref().map(|_| TOKEN_MARK))
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Parsing the doctor-only flags; every refusal here exits 2.
impl Options {
    /// Parse `--url`, `--origin`, `--token` and `--timeout`.
    pub fn from_args(args: &DoctorArgs) -> Result<Options, DoctorError> {
        let url = args.url.as_deref().map(PublicUrl::parse).transpose()?;
        let timeout = parse_duration("--timeout", &args.timeout).map_err(DoctorError::Timeout)?;
        if timeout.is_zero() || timeout > MAX_TIMEOUT {
            return Err(DoctorError::TimeoutRange(args.timeout.clone()));
        }
        if let Some(origin) = &args.origin {
            let ok = origin
                .split_once("://")
                .is_some_and(|(scheme, rest)| !scheme.is_empty() && !rest.is_empty());
            if !ok || http::HeaderValue::from_str(origin).is_err() {
                return Err(DoctorError::Origin(origin.clone()));
            }
        }
        Ok(Options {
            url,
            origin: args.origin.clone(),
            token: args.token.clone().filter(|t| !t.is_empty()),
            timeout,
        })
    }
}

/// Everything the checks share.
pub(crate) struct Context {
    /// The configuration `run` would use, validated by check 1.
    pub config: Config,
    /// `--url`, or the default built from `--listen` and the first WebSocket route.
    pub url: PublicUrl,
    /// Whether `--url` was given.
    pub url_given: bool,
    /// `--origin`, sent as `Origin` on every handshake.
    pub origin: Option<String>,
    /// `--token` or `SHUNT_DOCTOR_TOKEN`, sent as `?token=` end to end and
    /// never printed ([`Context::redact`]).
    pub token: Option<String>,
    /// `--timeout`: the bound on each network or process step.
    pub timeout: Duration,
    /// Connection tasks of the HTTP clients.
    pub tracker: TaskTracker,
    /// Cancelled when the run ends, so those connections wind down.
    pub stop: CancellationToken,
}

/// What the checks ask of the shared state.
impl Context {
    /// The routes whose handshakes are checked: every route with a specific
    /// path, and the one `--url` names; the catch-all alone if there is no other.
    pub(crate) fn websocket_routes(&self) -> Vec<&RouteSpec> {
        let named = self.url_given.then(|| self.route_for_url()).flatten();
        let routes: Vec<&RouteSpec> = self
            .config
            .routes
            .iter()
            .filter(|r| r.path != "/" || named.is_some_and(|n| std::ptr::eq(n, *r)))
            .collect();
        if routes.is_empty() {
            self.config.routes.iter().collect()
        } else {
            routes
        }
    }

    /// The route `--url` lands on: host routes first, then the longest
    /// whole-segment prefix.
    pub(crate) fn route_for_url(&self) -> Option<&RouteSpec> {
        let path = self.url.path();
        self.config
            .routes
            .iter()
            .filter(|r| {
                r.host
                    .as_deref()
                    .is_none_or(|h| h.eq_ignore_ascii_case(&self.url.host))
            })
            .filter(|r| {
                r.path == "/"
                    || path == r.path
                    || path
                        .strip_prefix(r.path.trim_end_matches('/'))
                        .is_some_and(|rest| rest.starts_with('/'))
            })
            .max_by_key(|r| r.specificity())
    }

    /// The path a handshake on `route` asks for: `--url`'s when it lands on
    /// that route, else the route's prefix.
    pub(crate) fn handshake_path(&self, route: &RouteSpec) -> String {
        match self.route_for_url() {
            Some(r) if r == route => self.url.path().to_owned(),
            _ => route.path.clone(),
        }
    }

    /// `text` with the token replaced by [`TOKEN_MARK`] (see [`redact`]).
    pub(crate) fn redact(&self, text: &str) -> String {
        redact(
            text,
            &self.config.policy.sources.query,
            self.token.as_deref(),
        )
    }

    /// The flags to give `run` so it uses this configuration.
    pub(crate) fn run_hint(&self) -> String {
        match &self.config.file {
            Some(f) => format!("shunt run --config {}", f.display()),
            None => "shunt run with the same flags".to_owned(),
        }
    }
}

/// What the report prints where the token was.
pub(crate) const TOKEN_MARK: &str = "<TOKEN>";

/// Shortest token also hidden where it stands alone; a shorter one is hidden
/// only as `NAME=VALUE`, so that masking it cannot eat ordinary words.
const BARE_TOKEN_MIN: usize = 4;

/// `text` without the token: `query=ENCODED` (how it travels in a request
/// target, the form an error naming the request holds) becomes
/// `query=<TOKEN>`, and the token alone, raw or percent-encoded, becomes
/// `<TOKEN>` when it is at least `BARE_TOKEN_MIN` (4) bytes long.
///
/// The report is printed to terminals and CI logs, so the credential given
/// with `--token` must never appear in it, whatever a check formats.
pub(crate) fn redact(text: &str, query: &str, token: Option<&str>) -> String {
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        return text.to_owned();
    };
    let encoded = crate::percent::encode(token);
    let mut out = text.replace(
        &format!("{query}={encoded}"),
        &format!("{query}={TOKEN_MARK}"),
    );
    if token.len() >= BARE_TOKEN_MIN {
        out = out.replace(&encoded, TOKEN_MARK).replace(token, TOKEN_MARK);
    }
    out
}

/// Where to dial a listener bound to `addr`: a wildcard becomes loopback.
pub(crate) fn dial_addr(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::from((Ipv4Addr::LOCALHOST, addr.port()))
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::from((Ipv6Addr::LOCALHOST, addr.port()))
        }
        _ => addr,
    }
}

/// Milliseconds with one decimal, as the report prints durations.
pub(crate) fn millis(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// `3s`, as the report prints the timeout.
pub(crate) fn human(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// Run every check in order and return the report.
///
/// The order is the checklist, and later checks use what earlier
/// ones found: which upstreams connect (so a dead one gets no handshake),
/// whether shunt runs (so end to end is tried), and what served the
/// handshake (the front-end hint). Checks never abort the run, except a
/// configuration that does not build. Each network or process step is
/// bounded by `--timeout`, so a run against dead hosts ends in seconds, and
/// the HTTP connection tasks get one more `--timeout` to wind down.
pub async fn run(args: &RunArgs, options: Options) -> Report {
    let mut report = Report::default();
    let Some(config) = configuration(args, &mut report) else {
        return report;
    };
    let url_given = options.url.is_some();
    let url = options.url.unwrap_or_else(|| default_url(&config));
    let ctx = Context {
        config,
        url,
        url_given,
        origin: options.origin,
        token: options.token,
        timeout: options.timeout,
        tracker: TaskTracker::new(),
        stop: CancellationToken::new(),
    };
    let reachable = upstreams::check(&ctx, &mut report).await;
    websocket::check(&ctx, &reachable, &mut report).await;
    let running = listeners::check(&ctx, &mut report).await;
    firewall::check(&ctx, &mut report).await;
    tls::check(&ctx, &mut report);
    jwt::check(&ctx, &mut report).await;
    balancer::check(&ctx, &mut report).await;
    acme::check(&ctx, &mut report).await;
    let served = end_to_end::check(&ctx, running, &mut report).await;
    front_end(&ctx, served.as_ref(), &mut report);
    // A safety net under the checks' own care: no line may carry the token.
    for f in &mut report.findings {
        f.detail = ctx.redact(&f.detail);
        f.fix = f.fix.as_deref().map(|fix| ctx.redact(fix));
    }
    ctx.stop.cancel();
    ctx.tracker.close();
    let _ = tokio::time::timeout(ctx.timeout, ctx.tracker.wait()).await;
    report
}

/// Check 1: the configuration parses and validates, as `shunt check` does.
///
/// Nothing else can run on a configuration that does not build, so a
/// failure here is the only finding. An `https` upstream's CA file is loaded
/// too: `run` would refuse it at start. No I/O beyond reading the files.
fn configuration(args: &RunArgs, report: &mut Report) -> Option<Config> {
    /// The check name of the configuration finding.
    const CHECK: &str = "configuration";
    let source = args.config.as_ref().map_or_else(
        || "flags and SHUNT_* variables".to_owned(),
        |f| format!("{} with flags over it", f.display()),
    );
    let config = match Config::build(args) {
        Ok(c) => c,
        Err(e) => {
            report.push(Finding::fail(
                CHECK,
                format!("{source}: {e}"),
                "correct the value named above (`shunt check` shows the effective configuration); no other check can run",
            ));
            return None;
        }
    };
    for u in config
        .upstreams
        .iter()
        .filter(|u| u.url.scheme == crate::config::Scheme::Https)
    {
        if let Err(e) = crate::tls::client::client_config(u.ca.as_deref()) {
            report.push(Finding::fail(
                CHECK,
                format!("upstream {}: {e}", u.name),
                "give a readable PEM CA file with --upstream-ca (or `ca` of the upstream)",
            ));
            return None;
        }
    }
    report.push(Finding::ok(
        CHECK,
        format!(
            "{source} parse and validate: listen {}, {} upstream(s), {} route(s)",
            config.listen,
            config.upstreams.len(),
            config.routes.len()
        ),
    ));
    Some(config)
}

/// `ws[s]://LISTEN/ROUTE`: the listener (a wildcard as loopback) and the
/// first WebSocket route.
fn default_url(config: &Config) -> PublicUrl {
    let addr = dial_addr(config.listen);
    let path = config
        .routes
        .iter()
        .find(|r| r.path != "/")
        .or(config.routes.first())
        .map_or_else(|| "/".to_owned(), |r| r.path.clone());
    PublicUrl {
        secure: config.tls.is_some() || config.acme.is_some(),
        host: addr.ip().to_string(),
        port: addr.port(),
        path_and_query: path,
    }
}

/// Check 8: what to put in `VITE_WS_AUDIO_URL`.
///
/// The front end is built with the URL its audio connects to; this says
/// which one, verified end to end when the handshake through shunt worked
/// (`ok`), or only derived from `--url` (`warn`). Browsers cannot set
/// headers on a WebSocket, so a route that needs a token shows it in the
/// query, as `<TOKEN>`.
fn front_end(ctx: &Context, served: Option<&end_to_end::Served>, report: &mut Report) {
    /// The check name of the hint.
    const CHECK: &str = "front end";
    let auth = ctx
        .route_for_url()
        .is_some_and(|r| r.policy.auth != AuthMode::None);
    let token_note = if auth {
        let sep = if ctx.url.path_and_query.contains('?') {
            '&'
        } else {
            '?'
        };
        format!(
            "; the token travels in the query: {}{sep}{}={TOKEN_MARK} (browsers cannot set headers on a WebSocket)",
            ctx.url, ctx.config.policy.sources.query
        )
    } else {
        String::new()
    };
    match served {
        Some(s) => report.push(Finding::ok(
            CHECK,
            format!(
                "VITE_WS_AUDIO_URL={} (the browser's audio takes the `{}` path){token_note}",
                ctx.url, s.upstream
            ),
        )),
        None => report.push(Finding::warn(
            CHECK,
            format!(
                "VITE_WS_AUDIO_URL={} once shunt answers it (not verified end to end){token_note}",
                ctx.url
            ),
            "fix the failures above, then run `shunt doctor` again",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_puts_fix_lines_under_the_finding() {
        let report = Report {
            findings: vec![
                Finding::ok("a", "fine"),
                Finding::fail("b", "broken", "do x\nthen y"),
            ],
        };
        assert_eq!(
            report.to_text(),
            "ok   a: fine\nFAIL b: broken\n     fix: do x\n          then y\n"
        );
        assert!(report.failed());
        let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        assert_eq!(json[1]["status"], "FAIL");
        assert_eq!(json[0]["fix"], serde_json::Value::Null);
    }

    fn context(url: Option<&str>) -> Context {
        let config = Config::from_args([
            "--nginx",
            "http://127.0.0.1:8081",
            "--route",
            "/frontend-audio=direct,nginx",
            "--route",
            "/=nginx,direct",
            "--listen",
            "0.0.0.0:8443",
        ])
        .unwrap();
        let parsed = url.map(|u| PublicUrl::parse(u).unwrap());
        Context {
            url: parsed.clone().unwrap_or_else(|| default_url(&config)),
            url_given: parsed.is_some(),
            config,
            origin: None,
            token: None,
            timeout: Duration::from_secs(1),
            tracker: TaskTracker::new(),
            stop: CancellationToken::new(),
        }
    }

    fn labels(routes: Vec<&RouteSpec>) -> Vec<String> {
        routes.iter().map(|r| r.label()).collect()
    }

    #[test]
    fn the_default_url_is_the_listener_and_the_first_websocket_route() {
        let ctx = context(None);
        assert_eq!(ctx.url.to_string(), "ws://127.0.0.1:8443/frontend-audio");
        assert_eq!(labels(ctx.websocket_routes()), ["/frontend-audio"]);
    }

    #[test]
    fn the_url_picks_its_route_by_longest_whole_segment_prefix() {
        let ctx = context(Some("wss://calls.example.com/frontend-audio/room1"));
        assert_eq!(ctx.route_for_url().unwrap().path, "/frontend-audio");
        let route = ctx.route_for_url().unwrap();
        assert_eq!(ctx.handshake_path(route), "/frontend-audio/room1");
        let ctx = context(Some("wss://calls.example.com/frontend-audiox"));
        assert_eq!(ctx.route_for_url().unwrap().path, "/");
        // The catch-all is checked too once --url lands on it.
        assert_eq!(labels(ctx.websocket_routes()), ["/frontend-audio", "/"]);
    }

    #[test]
    fn the_token_is_redacted_in_any_form() {
        let err = "GET /a?x=1&token=s3%2Fcret: connection closed";
        assert_eq!(
            redact(err, "token", Some("s3/cret")),
            "GET /a?x=1&token=<TOKEN>: connection closed"
        );
        assert_eq!(
            redact("raw s3/cret", "token", Some("s3/cret")),
            "raw <TOKEN>"
        );
        // A short token is hidden only where it is the parameter's value.
        assert_eq!(
            redact("ok ?token=ok", "token", Some("ok")),
            "ok ?token=<TOKEN>"
        );
        assert_eq!(redact("?token=abc", "token", None), "?token=abc");
    }

    #[test]
    fn wildcards_are_dialled_on_loopback() {
        assert_eq!(
            dial_addr("0.0.0.0:8443".parse().unwrap()),
            "127.0.0.1:8443".parse().unwrap()
        );
        assert_eq!(
            dial_addr("[::]:1".parse().unwrap()),
            "[::1]:1".parse().unwrap()
        );
    }
}
