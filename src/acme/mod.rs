//! ACME (RFC 8555): one certificate that shunt orders, stores and renews
//! itself, served through the listener's certificate store.
//!
//! A side module beside the flow, started by `app` as one task on the root
//! tracker and token. The task:
//!
//! 1. loads the certificate stored in `state_dir` (`store`) and serves it if
//!    it is valid and covers the configured domains, so a restart orders
//!    nothing while the stored certificate is good;
//! 2. works out when to renew: inside the CA's ARI window (RFC 9773) when the
//!    directory offers `renewalInfo`, else at two thirds of the lifetime;
//! 3. at that time runs one order (`order`; never two at once, since one task
//!    runs them in turn), answering TLS-ALPN-01 through the store's resolver
//!    or HTTP-01 through the `--http-listen` listener (`challenge`);
//! 4. writes the new certificate and key (0600, atomic), then swaps it into
//!    the store: handshakes from then on get it, established calls keep
//!    theirs, and the old one is served until the new one is in hand;
//! 5. on failure retries with exponential backoff (1 min up to 1 h, with
//!    jitter) or after the CA's `Retry-After`; each change of error is
//!    logged once, naming the domains and the challenge type.
//!
//! [`AcmeStatus`] is what `/status`, `/metrics` and the dashboard show.

pub(crate) mod challenge;
pub(crate) mod order;
pub(crate) mod store;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use instant_acme::{Account, CertificateIdentifier};
use tokio_util::sync::CancellationToken;

use crate::config::AcmeSpec;
use crate::error_chain::ErrorChain;
use crate::tls::CertSpec;
use crate::tls::certs::LoadedCert;
use challenge::Http01Tokens;
use order::{Answers, OrderError};
use store::StateDir;

/// Bound on one whole order (account, validation, issuance): a CA that
/// accepts connections and never answers must not hold the task forever.
const ORDER_LIMIT: Duration = Duration::from_secs(300);
/// Bound on restoring the account, and on asking for the ARI window.
const ACCOUNT_LIMIT: Duration = Duration::from_secs(30);
/// The longest wait between two attempts (and after a `rateLimited` problem).
pub(crate) const RETRY_MAX: Duration = Duration::from_secs(3600);
/// The first wait after a failure, in milliseconds (60 s; tests shorten it).
static RETRY_MIN_MS: AtomicU64 = AtomicU64::new(60_000);

/// Shorten the first retry delay of every ACME task in this process (tests
/// only: a real CA must not be hammered).
#[cfg(feature = "test-util")]
pub fn set_retry_min(delay: Duration) {
    RETRY_MIN_MS.store(delay.as_millis() as u64, Ordering::Relaxed);
}

/// What `/status` and `/metrics` show about ACME.
#[derive(Debug, Default)]
pub struct AcmeStatus {
    state: Mutex<State>,
    issued: AtomicU64,
    failed: AtomicU64,
}

#[derive(Debug, Default, Clone)]
struct State {
    renewal_at: Option<SystemTime>,
    last_error: Option<String>,
}

impl AcmeStatus {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// When the next order is due (`None`: one is in flight or due now).
    pub fn renewal_at(&self) -> Option<SystemTime> {
        self.lock().renewal_at
    }

    /// The last order's error, until an order succeeds.
    pub fn last_error(&self) -> Option<String> {
        self.lock().last_error.clone()
    }

    /// `shunt_acme_orders_total{result="issued"|"failed"}`.
    pub fn to_prometheus(&self, out: &mut String) {
        use std::fmt::Write;
        let _ = writeln!(
            out,
            "# HELP shunt_acme_orders_total ACME orders, by result.\n# TYPE shunt_acme_orders_total counter\nshunt_acme_orders_total{{result=\"issued\"}} {}\nshunt_acme_orders_total{{result=\"failed\"}} {}",
            self.issued.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed)
        );
    }
}

/// Everything the ACME task works with.
#[derive(Debug)]
pub(crate) struct Acme {
    spec: AcmeSpec,
    state: StateDir,
    answers: Answers,
    status: Arc<AcmeStatus>,
}

impl Acme {
    /// The ACME task's parts; loads and serves a stored certificate that is
    /// still good, so handshakes have it from the first accept.
    pub(crate) fn new(
        spec: AcmeSpec,
        certs: Arc<crate::tls::CertStore>,
        tokens: Arc<Http01Tokens>,
        status: Arc<AcmeStatus>,
    ) -> Result<Acme, store::StoreError> {
        let state = StateDir::open(&spec.state_dir)?;
        let acme = Acme {
            spec,
            state,
            answers: Answers { certs, tokens },
            status,
        };
        if let Some(cert) = acme.stored() {
            tracing::info!(
                domains = %acme.spec.domains.join(","),
                not_after = %humantime::format_rfc3339_seconds(cert.info.not_after),
                "serving the stored ACME certificate"
            );
            acme.answers.certs.store_acme(cert);
        }
        Ok(acme)
    }

    /// The stored certificate, if it loads, is not expired and covers every domain.
    fn stored(&self) -> Option<Arc<LoadedCert>> {
        let spec = CertSpec {
            cert: self.state.cert(),
            key: self.state.key(),
            names: vec![],
        };
        if !spec.cert.exists() {
            return None;
        }
        let cert = match crate::tls::certs::load(&spec, &crate::tls::groups::provider(&[])) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %ErrorChain(&e), "the stored ACME certificate does not load; ordering a new one");
                return None;
            }
        };
        let covers = self.spec.domains.iter().all(|d| {
            cert.info
                .sans
                .iter()
                .any(|s| crate::tls::certs::name_covers(s, d))
        });
        (covers && cert.info.not_after > SystemTime::now()).then(|| Arc::new(cert))
    }

    /// The task: renew when due, forever, until `stop`.
    pub(crate) async fn run(self, stop: CancellationToken) {
        let mut account: Option<Account> = None;
        let mut failures = 0u32;
        loop {
            let current = self.answers.certs.acme();
            if let Some(cert) = &current {
                // ARI needs the account; a CA that is down just means the
                // two-thirds rule this time.
                if account.is_none() {
                    let restore = tokio::time::timeout(
                        ACCOUNT_LIMIT,
                        order::account(&self.spec, &self.state),
                    );
                    tokio::select! {
                        r = restore => if let Ok(Ok(a)) = r { account = Some(a) },
                        () = stop.cancelled() => return,
                    }
                }
                let due = renewal_time(account.as_ref(), cert).await;
                self.status.lock().renewal_at = Some(due);
                let wait = due.duration_since(SystemTime::now()).unwrap_or_default();
                // Sleep in steps of at most an hour, so a clock change or an
                // ARI window moved by the CA is seen.
                let step = wait.min(RETRY_MAX);
                tokio::select! {
                    () = tokio::time::sleep(step) => {}
                    () = stop.cancelled() => return,
                }
                if step < wait {
                    continue;
                }
            }
            self.status.lock().renewal_at = None;
            let result = tokio::select! {
                r = tokio::time::timeout(ORDER_LIMIT, self.order_once(&mut account, current.as_deref())) => {
                    r.unwrap_or(Err(AcmeError::Timeout(ORDER_LIMIT)))
                }
                () = stop.cancelled() => return,
            };
            match result {
                Ok(cert) => {
                    failures = 0;
                    self.succeeded(cert);
                }
                Err(e) => {
                    failures += 1;
                    let delay = e.retry_after().unwrap_or_else(|| backoff(failures));
                    self.failed(&e, delay);
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = stop.cancelled() => return,
                    }
                }
            }
        }
    }

    /// One order: the account (registered or restored), then the order,
    /// then the files, then the certificate loaded as the resolver needs it.
    async fn order_once(
        &self,
        account: &mut Option<Account>,
        current: Option<&LoadedCert>,
    ) -> Result<Arc<LoadedCert>, AcmeError> {
        let acc = match account {
            Some(a) => a.clone(),
            None => {
                let a = order::account(&self.spec, &self.state).await?;
                *account = Some(a.clone());
                a
            }
        };
        let replaces = current.and_then(ari_id);
        // A CA without ARI refuses `replaces`; instant-acme checks that first.
        let issued = match order::order(&acc, &self.spec, &self.answers, replaces.clone()).await {
            Err(OrderError::Acme {
                error: instant_acme::Error::Unsupported(_),
                ..
            }) if replaces.is_some() => order::order(&acc, &self.spec, &self.answers, None).await?,
            other => other?,
        };
        self.state.write(&self.state.key(), &issued.key_pem)?;
        self.state.write(&self.state.cert(), &issued.chain_pem)?;
        let spec = CertSpec {
            cert: self.state.cert(),
            key: self.state.key(),
            names: vec![],
        };
        let cert = crate::tls::certs::load(&spec, &crate::tls::groups::provider(&[]))?;
        Ok(Arc::new(cert))
    }

    fn succeeded(&self, cert: Arc<LoadedCert>) {
        self.status.issued.fetch_add(1, Ordering::Relaxed);
        let recovered = self.status.lock().last_error.take().is_some();
        tracing::info!(
            domains = %self.spec.domains.join(","),
            challenge = self.spec.challenge.name(),
            not_after = %humantime::format_rfc3339_seconds(cert.info.not_after),
            sha256 = %cert.info.fingerprint,
            recovered,
            "ACME certificate issued; new handshakes get it"
        );
        self.answers.certs.store_acme(cert);
    }

    fn failed(&self, e: &AcmeError, retry_in: Duration) {
        self.status.failed.fetch_add(1, Ordering::Relaxed);
        let message = format!(
            "ACME order for {} ({}) failed: {}",
            self.spec.domains.join(", "),
            self.spec.challenge.name(),
            ErrorChain(e)
        );
        let mut state = self.status.lock();
        // Once per change: a CA that stays down is one line, not one per retry.
        if state.last_error.as_deref() != Some(message.as_str()) {
            tracing::warn!(retry_in = ?retry_in, "{message}");
        } else {
            tracing::debug!(retry_in = ?retry_in, "{message}");
        }
        state.last_error = Some(message);
        state.renewal_at = Some(SystemTime::now() + retry_in);
    }
}

/// When to renew `cert`: a random time in the CA's ARI window if it has
/// one (and the account is at hand), else two thirds into the lifetime.
async fn renewal_time(account: Option<&Account>, cert: &LoadedCert) -> SystemTime {
    if let (Some(account), Some(id)) = (account, ari_id(cert))
        && let Ok(Ok((info, _))) =
            tokio::time::timeout(ACCOUNT_LIMIT, account.renewal_info(&id)).await
    {
        let at = |t: i64| SystemTime::UNIX_EPOCH + Duration::from_secs(t.max(0) as u64);
        let start = at(info.suggested_window.start.unix_timestamp());
        let end = at(info.suggested_window.end.unix_timestamp());
        let span = end.duration_since(start).unwrap_or_default();
        return start + span.mul_f64(random_fraction());
    }
    two_thirds(cert.info.not_before, cert.info.not_after)
}

/// Two thirds of the way from `not_before` to `not_after`.
fn two_thirds(not_before: SystemTime, not_after: SystemTime) -> SystemTime {
    let life = not_after.duration_since(not_before).unwrap_or_default();
    not_before + life * 2 / 3
}

/// The ARI identifier of `cert` (authority key id + serial).
fn ari_id(cert: &LoadedCert) -> Option<CertificateIdentifier<'static>> {
    CertificateIdentifier::try_from(cert.key.cert.first()?)
        .ok()
        .map(CertificateIdentifier::into_owned)
}

/// The wait after the `failures`-th failure in a row: from the minimum
/// (1 min) doubling up to 1 h, then ±20 % jitter so replicas spread out.
fn backoff(failures: u32) -> Duration {
    let min = Duration::from_millis(RETRY_MIN_MS.load(Ordering::Relaxed));
    let base = min
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
        .min(RETRY_MAX);
    base.mul_f64(0.8 + 0.4 * random_fraction())
}

/// A random number in [0, 1).
fn random_fraction() -> f64 {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 8];
    if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
        return 0.5;
    }
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}

/// Why an ACME round did not end with a certificate served.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AcmeError {
    /// The order failed.
    #[error(transparent)]
    Order(#[from] OrderError),
    /// The certificate could not be stored.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// The issued certificate does not load.
    #[error("the issued certificate")]
    Certificate(#[from] crate::tls::CertError),
    /// The CA did not finish in time.
    #[error("the order did not finish within {0:?}")]
    Timeout(Duration),
}

impl AcmeError {
    fn retry_after(&self) -> Option<Duration> {
        match self {
            AcmeError::Order(e) => e.retry_after(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_a_minute_to_an_hour_with_jitter() {
        for (failures, base) in [(1, 60), (2, 120), (3, 240), (7, 3600), (30, 3600)] {
            let d = backoff(failures).as_secs_f64();
            let base = base as f64;
            assert!(d >= base * 0.8 && d <= base * 1.2, "{failures}: {d}");
        }
    }

    /// A CA that answers only its directory (with `renewalInfo`) and ARI
    /// lookups, with a window 10 to 11 days from now.
    struct AriCa;

    impl instant_acme::HttpClient for AriCa {
        fn request(
            &self,
            req: http::Request<instant_acme::BodyWrapper<bytes::Bytes>>,
        ) -> std::pin::Pin<
            Box<
                dyn std::future::Future<
                        Output = Result<instant_acme::BytesResponse, instant_acme::Error>,
                    > + Send,
            >,
        > {
            let path = req.uri().path().to_owned();
            Box::pin(async move {
                let day = Duration::from_secs(86400);
                let now = SystemTime::now();
                let t = |d| humantime::format_rfc3339_seconds(now + d).to_string();
                let body = if path == "/dir" {
                    serde_json::json!({
                        "newNonce": "https://ca.test/nonce",
                        "newAccount": "https://ca.test/account",
                        "newOrder": "https://ca.test/order",
                        "renewalInfo": "https://ca.test/ari",
                    })
                } else {
                    assert!(path.starts_with("/ari/"), "{path}");
                    serde_json::json!({"suggestedWindow": {"start": t(day * 10), "end": t(day * 11)}})
                };
                let resp = http::Response::builder()
                    .status(200)
                    .header("retry-after", "21600")
                    .body(http_body_util::Full::new(bytes::Bytes::from(
                        body.to_string(),
                    )))
                    .unwrap();
                Ok(instant_acme::BytesResponse::from(resp))
            })
        }
    }

    /// A leaf with an Authority Key Identifier (what ARI names it by), valid
    /// for 90 days from 80 days ago, loaded as the resolver would.
    fn leaf_with_aki(dir: &std::path::Path) -> LoadedCert {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().unwrap();
        let mut leaf = CertificateParams::new(vec!["calls.example.com".to_owned()]).unwrap();
        leaf.use_authority_key_identifier_extension = true;
        let day = Duration::from_secs(86400);
        leaf.not_before = (SystemTime::now() - day * 80).into();
        leaf.not_after = (SystemTime::now() + day * 10).into();
        let cert = leaf.signed_by(&key, &issuer).unwrap();
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
        std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
        let spec = CertSpec {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            names: vec![],
        };
        crate::tls::certs::load(&spec, &crate::tls::groups::provider(&[])).unwrap()
    }

    #[tokio::test]
    async fn renewal_follows_the_ari_window_when_the_ca_has_one() {
        use base64::Engine;
        let dir = std::env::temp_dir().join(format!("shunt-ari-{}", std::process::id()));
        let cert = leaf_with_aki(&dir);
        let key = rcgen::KeyPair::generate().unwrap();
        let credentials: instant_acme::AccountCredentials = serde_json::from_value(serde_json::json!({
            "id": "https://ca.test/account/1",
            "key_pkcs8": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key.serialize_der()),
            "directory": "https://ca.test/dir",
        }))
        .unwrap();
        let account = Account::builder_with_http(Box::new(AriCa))
            .from_credentials(credentials)
            .await
            .unwrap();
        let day = Duration::from_secs(86400);
        let now = SystemTime::now();
        let at = renewal_time(Some(&account), &cert).await;
        assert!(
            at >= now + day * 10 - Duration::from_secs(5)
                && at <= now + day * 11 + Duration::from_secs(5),
            "inside the window: {at:?}"
        );
        // Without the CA (or without ARI): two thirds into the lifetime, 20 days ago.
        let at = renewal_time(None, &cert).await;
        assert!(at < now - day * 19 && at > now - day * 21, "{at:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn renewal_is_two_thirds_into_the_lifetime() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let end = start + Duration::from_secs(90 * 24 * 3600);
        assert_eq!(
            two_thirds(start, end),
            start + Duration::from_secs(60 * 24 * 3600)
        );
    }
}
