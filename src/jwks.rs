//! The identity provider's keys, fetched from `--jwt-jwks-url` and kept
//! fresh, the way a careful client does it.
//!
//! A side module: [`Jwks`] is the shared state (the last good
//! [`KeySet`], when it was fetched, the last error), held by
//! [`crate::handles::Handles`] so it outlives reloads; the request path reads
//! it ([`Jwks::view`]), `/status`, `/readyz` and `/metrics` show it. [`run`]
//! is the background task, tracked and stopped by the root token:
//!
//! - fetch at start, then every `jwt_jwks_refresh`, or the response's
//!   `Cache-Control: max-age` when that is longer;
//! - a token with an unknown `kid` wakes it, at most once per
//!   `jwt_jwks_min_refresh` ([`Jwks::refresh_for_unknown_kid`]), so a flood
//!   of made-up `kid`s cannot hammer the provider;
//! - a failed fetch (unreachable, not 200, over 1 MiB, not a JWKS) keeps the
//!   last good keys, is counted (`shunt_jwks_refresh_failures_total`),
//!   logged once per change of state, and retried with backoff (1s, doubling
//!   up to a minute, never beyond the refresh interval).
//!
//! Until the first fetch succeeds, routes with `auth = "jwt"` answer 503
//! naming the problem: they never fall open.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::{StatusCode, header};
use http_body_util::{BodyExt, Limited};
use rustls::ClientConfig;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{JwksSettings, Scheme};
use crate::dial::{self, ConnectError, probe};
use crate::policy::jwt::Remote;
use crate::policy::keys::{KeyError, KeySet};
use crate::shutdown::Shutdown;

/// The largest JWKS document read.
pub(crate) const MAX_BODY: usize = 1024 * 1024;

/// The longest wait between two attempts after failures.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Why one fetch of the JWKS failed. Never holds key material or a token.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FetchError {
    /// The provider could not be reached.
    #[error("cannot connect")]
    Connect(#[source] ConnectError),
    /// No TLS client configuration (system roots).
    #[error("TLS client setup")]
    Tls(#[source] crate::tls::client::ClientTlsError),
    /// The exchange failed.
    #[error("request failed")]
    Send(#[source] probe::SendError),
    /// No answer within the response timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// Not a 200.
    #[error("answered HTTP {0}")]
    Status(u16),
    /// The body is over [`MAX_BODY`].
    #[error("the document is over 1 MiB")]
    TooLarge,
    /// The body broke off.
    #[error("the body could not be read")]
    Body,
    /// Not a usable JWKS.
    #[error(transparent)]
    Keys(#[from] KeyError),
}

/// What a fetch brought back.
pub(crate) struct Fetched {
    /// The usable keys.
    pub keys: KeySet,
    /// The keys left out, and why.
    pub skipped: Vec<String>,
    /// `Cache-Control: max-age`, if any.
    pub max_age: Option<Duration>,
}

/// What `/status` shows, and what the request path needs on a miss.
#[derive(Debug, Default)]
struct State {
    url: Option<String>,
    last_success: Option<SystemTime>,
    last_error: Option<String>,
    failing: bool,
    skipped: Vec<String>,
}

/// The JWKS URL's keys and fetch state, shared across reloads.
#[derive(Debug)]
pub(crate) struct Jwks {
    keys: ArcSwapOption<KeySet>,
    state: Mutex<State>,
    wake: Notify,
    fetched: watch::Sender<u64>,
    failures: AtomicU64,
    last_kid_refresh: Mutex<Option<Instant>>,
    running: std::sync::atomic::AtomicBool,
}

impl Default for Jwks {
    fn default() -> Self {
        Jwks {
            keys: ArcSwapOption::empty(),
            state: Mutex::default(),
            wake: Notify::new(),
            fetched: watch::channel(0).0,
            failures: AtomicU64::new(0),
            last_kid_refresh: Mutex::new(None),
            running: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

/// The keys as one request sees them.
#[derive(Debug)]
pub(crate) struct View {
    keys: Option<Arc<KeySet>>,
    error: String,
}

impl View {
    /// The keys for the verifier; `configured`: a JWKS URL is set.
    pub(crate) fn remote(&self, configured: bool) -> Remote<'_> {
        match (&self.keys, configured) {
            (_, false) => Remote::None,
            (Some(keys), true) => Remote::Keys(keys),
            (None, true) => Remote::Unavailable(&self.error),
        }
    }
}

impl Jwks {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The current keys (or why there are none).
    pub(crate) fn view(&self) -> View {
        let keys = self.keys.load_full();
        let error = if keys.is_some() {
            String::new()
        } else {
            self.unavailable()
        };
        View { keys, error }
    }

    /// Why no key set is loaded: the last error, or that none was fetched yet.
    pub(crate) fn unavailable(&self) -> String {
        let state = self.state();
        let url = state.url.as_deref().unwrap_or("the JWKS URL");
        match &state.last_error {
            Some(e) => format!("JWKS {url}: {e}"),
            None => format!("JWKS {url}: not fetched yet"),
        }
    }

    /// Claim the fetcher's slot: `true` if no fetch loop runs (the caller
    /// then starts [`run`]), `false` if one already does.
    pub(crate) fn claim_fetcher(&self) -> bool {
        !self.running.swap(true, Ordering::SeqCst)
    }

    /// Whether a key set is loaded.
    pub(crate) fn loaded(&self) -> bool {
        self.keys.load().is_some()
    }

    /// A token named a `kid` no key has: wake the fetcher, unless it was
    /// woken for this less than `min` ago. `Some` receiver when it was
    /// woken, changed once the fetch is done.
    pub(crate) fn refresh_for_unknown_kid(&self, min: Duration) -> Option<watch::Receiver<u64>> {
        let mut last = self
            .last_kid_refresh
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < min) {
            return None;
        }
        *last = Some(now);
        let rx = self.fetched.subscribe();
        self.wake.notify_one();
        Some(rx)
    }

    /// `/status`'s `jwks`: `{url, keys, last_success, last_error}`.
    pub(crate) fn to_json(&self) -> serde_json::Value {
        let keys = self.keys.load();
        let state = self.state();
        let kids: Vec<serde_json::Value> = keys
            .iter()
            .flat_map(|set| &set.keys)
            .map(|k| {
                serde_json::json!({
                    "kid": k.kid,
                    "type": k.kind(),
                    "algs": k.algs().iter().map(|a| a.name()).collect::<Vec<_>>(),
                })
            })
            .collect();
        serde_json::json!({
            "url": state.url,
            "keys": kids,
            "last_success": state.last_success.map(|t| humantime::format_rfc3339_seconds(t).to_string()),
            "last_error": state.last_error,
            "refresh_failures": self.failures.load(Ordering::Relaxed),
        })
    }

    /// `shunt_jwks_refresh_failures_total`.
    pub(crate) fn to_prometheus(&self, out: &mut String) {
        use std::fmt::Write;
        let _ = writeln!(
            out,
            "# HELP shunt_jwks_refresh_failures_total Failed fetches of the JWKS URL.\n# TYPE shunt_jwks_refresh_failures_total counter\nshunt_jwks_refresh_failures_total {}",
            self.failures.load(Ordering::Relaxed)
        );
    }

    /// Keep a fetched key set; log when it ends a failing state or skips keys.
    fn succeeded(&self, url: &str, fetched: Fetched) {
        let mut state = self.state();
        let first = self.keys.load().is_none();
        if state.failing || first {
            tracing::info!(url, keys = fetched.keys.len(), "JWKS loaded");
        }
        if fetched.skipped != state.skipped {
            for s in &fetched.skipped {
                tracing::warn!(url, "JWKS {s}");
            }
            state.skipped = fetched.skipped;
        }
        state.failing = false;
        state.last_error = None;
        state.last_success = Some(SystemTime::now());
        self.keys.store(Some(Arc::new(fetched.keys)));
    }

    /// Count and record a failed fetch; log when it starts a failing state.
    fn failed(&self, url: &str, error: &FetchError) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        let message = crate::error_chain::ErrorChain(error).to_string();
        let mut state = self.state();
        if !state.failing {
            let kept = self.keys.load().as_ref().map_or(0, |k| k.len());
            tracing::warn!(url, error = %message, kept_keys = kept, "JWKS fetch failed; the last good keys stay in use, retrying");
        }
        state.failing = true;
        state.last_error = Some(message);
    }

    /// A new URL (first start, or a reload changed it): forget the old keys.
    fn switch_to(&self, url: &str) {
        let mut state = self.state();
        if state.url.as_deref() != Some(url) {
            *state = State {
                url: Some(url.to_owned()),
                ..State::default()
            };
            self.keys.store(None);
        }
    }
}

/// What the fetcher reads from the live configuration before each fetch.
pub(crate) struct Settings {
    /// The URL and intervals; `None` once a reload removed the URL.
    pub jwks: Option<JwksSettings>,
    /// Bound on connecting.
    pub connect_timeout: Duration,
    /// Bound on the answer.
    pub response_timeout: Duration,
}

/// The fetch loop: until the root token is cancelled or a reload removes
/// the URL. `settings` reads the live configuration.
pub(crate) async fn run(
    jwks: Arc<Jwks>,
    settings: impl Fn() -> Settings + Send + 'static,
    shutdown: Shutdown,
) {
    /// Frees the fetcher's slot however the loop ends, so a reload that
    /// names a URL again starts a new one.
    struct Release<'a>(&'a Jwks);
    impl Drop for Release<'_> {
        fn drop(&mut self) {
            self.0.running.store(false, Ordering::SeqCst);
        }
    }
    let _release = Release(&jwks);
    let mut backoff = Duration::from_secs(1);
    let mut tls: Option<Arc<ClientConfig>> = None;
    loop {
        let current = settings();
        let Some(s) = current.jwks.as_ref() else {
            return;
        };
        jwks.switch_to(&s.url.text);
        let attempt = fetch(s, &mut tls, &current, shutdown.tracker(), shutdown.token());
        let result = tokio::select! {
            r = attempt => r,
            () = shutdown.token().cancelled() => return,
        };
        let wait = match result {
            Ok(fetched) => {
                backoff = Duration::from_secs(1);
                let wait = next_refresh(s.refresh, fetched.max_age);
                jwks.succeeded(&s.url.text, fetched);
                wait
            }
            Err(e) => {
                jwks.failed(&s.url.text, &e);
                let (wait, next) = retry_after(backoff, s.refresh);
                backoff = next;
                wait
            }
        };
        jwks.fetched.send_modify(|n| *n += 1);
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = jwks.wake.notified() => {}
            () = shutdown.token().cancelled() => return,
        }
    }
}

/// When to fetch again after a success: the refresh interval, or the
/// answer's `max-age` when that is longer.
fn next_refresh(refresh: Duration, max_age: Option<Duration>) -> Duration {
    refresh.max(max_age.unwrap_or_default())
}

/// After a failure: wait `backoff` (never beyond the refresh interval), and
/// double it for the next failure, up to [`MAX_BACKOFF`].
fn retry_after(backoff: Duration, refresh: Duration) -> (Duration, Duration) {
    (backoff.min(refresh), (backoff * 2).min(MAX_BACKOFF))
}

/// One GET of the JWKS: connect (bounded by the connect timeout), the
/// answer and its body (bounded by the response timeout and [`MAX_BODY`]).
/// `tls` caches the client configuration (system roots) between fetches;
/// `shunt doctor` calls this once.
pub(crate) async fn fetch(
    s: &JwksSettings,
    tls: &mut Option<Arc<ClientConfig>>,
    timeouts: &Settings,
    tracker: &TaskTracker,
    stop: &CancellationToken,
) -> Result<Fetched, FetchError> {
    let server = &s.url.server;
    let tls_config = match server.scheme {
        Scheme::Http => None,
        Scheme::Https => match tls {
            Some(c) => Some(c.clone()),
            None => {
                let c = crate::tls::client::client_config(None).map_err(FetchError::Tls)?;
                *tls = Some(c.clone());
                Some(c)
            }
        },
    };
    let stream = dial::connect(server, tls_config.as_ref(), timeouts.connect_timeout, None)
        .await
        .map_err(FetchError::Connect)?;
    let request = http::Request::get(s.url.path.as_str())
        .header(header::HOST, server.authority())
        .header(header::ACCEPT, "application/json, application/jwk-set+json")
        .header(
            header::USER_AGENT,
            concat!("shunt/", env!("CARGO_PKG_VERSION")),
        );
    let exchange = async {
        let resp = match stream {
            dial::UpstreamStream::Plain(s) => probe::send(s, request, tracker, stop).await,
            dial::UpstreamStream::Tls(s) => probe::send(s, request, tracker, stop).await,
        }
        .map_err(FetchError::Send)?;
        if resp.status() != StatusCode::OK {
            return Err(FetchError::Status(resp.status().as_u16()));
        }
        let max_age = max_age(resp.headers());
        let body = read_body(resp.into_body()).await?;
        let (keys, skipped) = KeySet::from_jwks(&body)?;
        Ok(Fetched {
            keys,
            skipped: skipped.iter().map(ToString::to_string).collect(),
            max_age,
        })
    };
    tokio::time::timeout(timeouts.response_timeout, exchange)
        .await
        .map_err(|_| FetchError::Timeout(timeouts.response_timeout))?
}

/// The body, refused beyond [`MAX_BODY`].
async fn read_body(body: hyper::body::Incoming) -> Result<Bytes, FetchError> {
    match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(FetchError::TooLarge),
        Err(_) => Err(FetchError::Body),
    }
}

/// `Cache-Control: max-age=N`, if any.
fn max_age(headers: &http::HeaderMap) -> Option<Duration> {
    crate::policy::auth::list_values(headers, &header::CACHE_CONTROL).find_map(|d| {
        let (name, value) = d.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("max-age")
            .then(|| value.trim().trim_matches('"').parse().ok())
            .flatten()
            .map(Duration::from_secs)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_control_max_age() {
        let mut h = http::HeaderMap::new();
        assert_eq!(max_age(&h), None);
        h.insert(
            header::CACHE_CONTROL,
            "public, max-age=3600".parse().unwrap(),
        );
        assert_eq!(max_age(&h), Some(Duration::from_secs(3600)));
        h.insert(header::CACHE_CONTROL, "no-cache".parse().unwrap());
        assert_eq!(max_age(&h), None);
    }

    #[test]
    fn refresh_and_backoff() {
        let s = Duration::from_secs;
        assert_eq!(next_refresh(s(600), None), s(600));
        assert_eq!(next_refresh(s(600), Some(s(3600))), s(3600));
        assert_eq!(next_refresh(s(600), Some(s(60))), s(600));
        let mut backoff = s(1);
        let mut waits = Vec::new();
        for _ in 0..9 {
            let (wait, next) = retry_after(backoff, s(600));
            waits.push(wait.as_secs());
            backoff = next;
        }
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(retry_after(s(8), s(5)).0, s(5));
    }

    #[tokio::test(start_paused = true)]
    async fn unknown_kid_refresh_is_rate_limited() {
        let jwks = Jwks::default();
        let min = Duration::from_secs(30);
        assert!(jwks.refresh_for_unknown_kid(min).is_some());
        for _ in 0..1000 {
            assert!(jwks.refresh_for_unknown_kid(min).is_none());
        }
        tokio::time::advance(min).await;
        assert!(jwks.refresh_for_unknown_kid(min).is_some());
    }

    #[test]
    fn unavailable_names_the_problem() {
        let jwks = Jwks::default();
        jwks.switch_to("https://idp.example/jwks");
        assert!(jwks.unavailable().contains("not fetched yet"));
        jwks.failed("u", &FetchError::Status(500));
        assert!(
            jwks.unavailable().contains("HTTP 500"),
            "{}",
            jwks.unavailable()
        );
        assert!(matches!(jwks.view().remote(true), Remote::Unavailable(_)));
        assert!(matches!(jwks.view().remote(false), Remote::None));
        assert_eq!(jwks.to_json()["refresh_failures"], 1);
    }
}
