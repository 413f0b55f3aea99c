//! One ACME order, start to finish: the account, a new order for every
//! domain, the challenge of each authorization answered and announced, the
//! wait for the CA's validation, the CSR, and the certificate chain.
//!
//! Challenge answers are put in place just before the CA is told to look,
//! and taken away when the order ends, however it ends. A rejected
//! challenge comes back as [`OrderError::Rejected`] with the CA's problem
//! document (`type`, `detail`) and the domain it was for.

use std::sync::Arc;
use std::time::Duration;

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, CertificateIdentifier, ChallengeType,
    Identifier, NewAccount, NewOrder, OrderStatus, Problem, RetryPolicy,
};

use super::challenge::{ChallengeCertError, Http01Tokens, tls_alpn_certificate};
use super::store::{StateDir, StoreError};
use crate::config::{AcmeChallenge, AcmeSpec};
use crate::tls::CertStore;

/// How long the CA gets to validate the challenges and to issue.
const VALIDATION_LIMIT: Duration = Duration::from_secs(90);

/// Why an order did not end with a certificate.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OrderError {
    /// The state directory cannot be read or written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The stored account does not parse.
    #[error("ACME account file {0} does not parse")]
    AccountFile(String, #[source] serde_json::Error),
    /// A request to the CA failed (unreachable, refused, a problem document).
    /// (The cause is spelled out in the message, problem document included.)
    #[error("{step}: {}", describe(error))]
    Acme {
        /// What shunt was doing.
        step: &'static str,
        /// What instant-acme said.
        error: instant_acme::Error,
    },
    /// The CA offers no challenge of the configured type for a domain.
    #[error("the CA offers no {challenge} challenge for {domain}")]
    NoChallenge {
        /// The domain.
        domain: String,
        /// The configured challenge.
        challenge: &'static str,
    },
    /// The CA tried the challenge and rejected it.
    #[error("the CA rejected the {challenge} challenge for {domain}: {problem}")]
    Rejected {
        /// The domain.
        domain: String,
        /// The challenge type.
        challenge: &'static str,
        /// The CA's problem document, `type: detail`.
        problem: String,
    },
    /// The order ended in a state that is not `valid`.
    #[error("the order ended {0}")]
    Status(String),
    /// The TLS-ALPN-01 certificate could not be made.
    #[error(transparent)]
    ChallengeCert(#[from] ChallengeCertError),
}

impl OrderError {
    /// How long the CA asked to wait (`Retry-After`, or a `rateLimited`
    /// problem), if it did.
    pub(crate) fn retry_after(&self) -> Option<Duration> {
        match self {
            OrderError::Acme {
                error: instant_acme::Error::Timeout(Some(at)),
                ..
            } => Some(at.saturating_duration_since(tokio::time::Instant::now().into_std())),
            OrderError::Acme {
                error: instant_acme::Error::Api(p),
                ..
            } if p
                .r#type
                .as_deref()
                .is_some_and(|t| t.ends_with(":rateLimited")) =>
            {
                Some(super::RETRY_MAX)
            }
            _ => None,
        }
    }
}

/// An error of instant-acme, with the problem document spelled out.
fn describe(e: &instant_acme::Error) -> String {
    match e {
        instant_acme::Error::Api(p) => problem(p),
        other => crate::error_chain::ErrorChain(other).to_string(),
    }
}

/// `type: detail` of a problem document (and its subproblems).
fn problem(p: &Problem) -> String {
    let mut out = format!(
        "{}: {}",
        p.r#type.as_deref().unwrap_or("(no type)"),
        p.detail.as_deref().unwrap_or("(no detail)")
    );
    for sub in &p.subproblems {
        out.push_str(&format!("; {sub}"));
    }
    out
}

/// A step's error, named.
fn at(step: &'static str) -> impl FnOnce(instant_acme::Error) -> OrderError {
    move |error| OrderError::Acme { step, error }
}

/// The account of `spec` from `state`, registered with the CA the first time
/// (and again if the directory changed).
pub(crate) async fn account(spec: &AcmeSpec, state: &StateDir) -> Result<Account, OrderError> {
    let builder = || match &spec.ca_file {
        Some(ca) => Account::builder_with_root(ca),
        None => Account::builder(),
    };
    let path = state.account();
    if let Some(text) = state.read(&path)? {
        let value: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| OrderError::AccountFile(path.display().to_string(), e))?;
        if value["directory"].as_str() == Some(spec.directory.as_str()) {
            let credentials: AccountCredentials = serde_json::from_value(value)
                .map_err(|e| OrderError::AccountFile(path.display().to_string(), e))?;
            return builder()
                .map_err(at("ACME client setup"))?
                .from_credentials(credentials)
                .await
                .map_err(at("cannot reach the ACME directory"));
        }
    }
    let contact: Vec<String> = spec.email.iter().map(|e| format!("mailto:{e}")).collect();
    let contact: Vec<&str> = contact.iter().map(String::as_str).collect();
    let (account, credentials) = builder()
        .map_err(at("ACME client setup"))?
        .create(
            &NewAccount {
                contact: &contact,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            spec.directory.clone(),
            None,
        )
        .await
        .map_err(at("cannot register an ACME account"))?;
    let text = serde_json::to_string(&credentials)
        .map_err(|e| OrderError::AccountFile(path.display().to_string(), e))?;
    state.write(&path, &text)?;
    Ok(account)
}

/// Where the answers to challenges go while an order is in flight.
#[derive(Debug, Clone)]
pub(crate) struct Answers {
    /// TLS-ALPN-01 certificates (the listener's resolver).
    pub certs: Arc<CertStore>,
    /// HTTP-01 tokens (the `--http-listen` listener).
    pub tokens: Arc<Http01Tokens>,
}

/// A certificate chain and its key, both PEM.
#[derive(Debug)]
pub(crate) struct Issued {
    /// Leaf first.
    pub chain_pem: String,
    /// PKCS#8.
    pub key_pem: String,
}

/// Order one certificate for `spec.domains`; `replaces` names the
/// certificate it renews when the CA has ARI.
pub(crate) async fn order(
    account: &Account,
    spec: &AcmeSpec,
    answers: &Answers,
    replaces: Option<CertificateIdentifier<'static>>,
) -> Result<Issued, OrderError> {
    let mut placed = Placed {
        answers: answers.clone(),
        tokens: Vec::new(),
        domains: Vec::new(),
    };
    let result = run(account, spec, &mut placed, replaces).await;
    drop(placed);
    result
}

/// The answers put in place, taken away on drop.
struct Placed {
    answers: Answers,
    tokens: Vec<String>,
    domains: Vec<String>,
}

impl Drop for Placed {
    fn drop(&mut self) {
        for t in &self.tokens {
            self.answers.tokens.remove(t);
        }
        for d in &self.domains {
            self.answers.certs.clear_challenge(d);
        }
    }
}

async fn run(
    account: &Account,
    spec: &AcmeSpec,
    placed: &mut Placed,
    replaces: Option<CertificateIdentifier<'static>>,
) -> Result<Issued, OrderError> {
    let identifiers: Vec<Identifier> = spec
        .domains
        .iter()
        .map(|d| Identifier::Dns(d.clone()))
        .collect();
    let mut new = NewOrder::new(&identifiers);
    if let Some(r) = replaces {
        new = new.replaces(r);
    }
    let mut order = account
        .new_order(&new)
        .await
        .map_err(at("cannot create the order"))?;
    let kind = match spec.challenge {
        AcmeChallenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
        AcmeChallenge::Http01 => ChallengeType::Http01,
    };
    let name = spec.challenge.name();
    let mut authorizations = order.authorizations();
    while let Some(authz) = authorizations.next().await {
        let mut authz = authz.map_err(at("cannot read an authorization"))?;
        let domain = authz.identifier().to_string();
        match authz.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => continue,
            other => return Err(OrderError::Status(format!("{other:?} for {domain}"))),
        }
        let mut challenge = authz
            .challenge(kind.clone())
            .ok_or(OrderError::NoChallenge {
                domain: domain.clone(),
                challenge: name,
            })?;
        let key_auth = challenge.key_authorization();
        match spec.challenge {
            AcmeChallenge::TlsAlpn01 => {
                let cert = tls_alpn_certificate(&domain, key_auth.digest().as_ref())?;
                placed.answers.certs.set_challenge(&domain, cert);
                placed.domains.push(domain.clone());
            }
            AcmeChallenge::Http01 => {
                let token = challenge.token.clone();
                placed.answers.tokens.insert(&token, key_auth.as_str());
                placed.tokens.push(token);
            }
        }
        challenge
            .set_ready()
            .await
            .map_err(at("cannot tell the CA the challenge is ready"))?;
    }
    let retries = RetryPolicy::new().timeout(VALIDATION_LIMIT);
    let status = match order.poll_ready(&retries).await {
        Ok(status) => status,
        // An order-level problem: look for the challenge that caused it first.
        Err(e) => {
            rejected(&mut order, &kind, name).await?;
            return Err(at("the order failed")(e));
        }
    };
    if status != OrderStatus::Ready {
        rejected(&mut order, &kind, name).await?;
        return Err(OrderError::Status(format!("{status:?}")));
    }
    let key_pem = order
        .finalize()
        .await
        .map_err(at("cannot finalize the order"))?;
    let chain_pem = order
        .poll_certificate(&retries)
        .await
        .map_err(at("cannot download the certificate"))?;
    Ok(Issued { chain_pem, key_pem })
}

/// `Err(Rejected)` for the first challenge the CA marked with an error.
async fn rejected(
    order: &mut instant_acme::Order,
    kind: &ChallengeType,
    name: &'static str,
) -> Result<(), OrderError> {
    let mut authorizations = order.authorizations();
    while let Some(authz) = authorizations.next().await {
        let Ok(mut authz) = authz else { continue };
        let Ok(state) = authz.refresh().await else {
            continue;
        };
        let domain = state.identifier().to_string();
        if let Some(p) = state
            .challenges
            .iter()
            .filter(|c| &c.r#type == kind)
            .find_map(|c| c.error.as_ref())
        {
            return Err(OrderError::Rejected {
                domain,
                challenge: name,
                problem: problem(p),
            });
        }
    }
    Ok(())
}
