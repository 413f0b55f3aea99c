//! Check: the JWT keys. The JWKS URL is fetched once, as shunt would at
//! start, and its key ids and algorithms reported; keys from files are
//! listed; a token given with `--token` is verified against all of them,
//! and if it does not verify the report says why (expired, wrong `aud`,
//! unknown `kid`, ...). The token itself is never printed: errors of the
//! verifier never carry it, and the report is redacted besides.

use std::time::SystemTime;

use super::{Context, Finding, Report};
use crate::jwks::{self, Settings};
use crate::policy::jwt::Remote;
use crate::policy::keys::KeySet;

/// `kid (RS256, PS256, ...)` for each key, for the report.
fn describe(set: &KeySet) -> String {
    set.keys
        .iter()
        .map(|k| {
            let algs: Vec<&str> = k.algs().iter().map(|a| a.name()).collect();
            format!(
                "{} {} ({})",
                k.kid.as_deref().unwrap_or("(no kid)"),
                k.kind(),
                algs.join(", ")
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Run the check (nothing to report without a JWT verifier).
pub(crate) async fn check(ctx: &Context, report: &mut Report) {
    let policy = &ctx.config.policy;
    let Some(verifier) = &policy.credentials.jwt else {
        return;
    };
    if !verifier.keys().is_empty() {
        report.push(Finding::ok(
            "jwt keys from files",
            format!(
                "{} keys: {}",
                verifier.keys().len(),
                describe(verifier.keys())
            ),
        ));
    }
    let mut remote_keys = None;
    let mut remote_error = String::new();
    if let Some(s) = &policy.jwks {
        let check = format!("jwks {}", s.url.text);
        let settings = Settings {
            jwks: None,
            connect_timeout: ctx.timeout,
            response_timeout: ctx.timeout,
        };
        match jwks::fetch(s, &mut None, &settings, &ctx.tracker, &ctx.stop).await {
            Ok(fetched) => {
                let mut detail =
                    format!("{} keys: {}", fetched.keys.len(), describe(&fetched.keys));
                for skipped in &fetched.skipped {
                    detail.push_str(&format!("; {skipped}"));
                }
                report.push(Finding::ok(check, detail));
                remote_keys = Some(fetched.keys);
            }
            Err(e) => {
                remote_error = crate::error_chain::ErrorChain(&e).to_string();
                report.push(Finding::fail(
                    check,
                    format!("cannot fetch the JWKS: {remote_error}"),
                    "check that the identity provider answers this URL from this host (proxy, DNS, firewall, CA); until it does, routes with auth = \"jwt\" answer 503",
                ));
            }
        }
    }
    let Some(token) = ctx.token.as_deref().filter(|t| t.matches('.').count() == 2) else {
        return;
    };
    let remote = match (&policy.jwks, &remote_keys) {
        (None, _) => Remote::None,
        (Some(_), Some(keys)) => Remote::Keys(keys),
        (Some(_), None) => Remote::Unavailable(&remote_error),
    };
    match verifier.verify_with(token, SystemTime::now(), remote) {
        Ok(claims) => report.push(Finding::ok(
            "jwt --token",
            format!(
                "the token verifies (sub {})",
                claims.sub().unwrap_or("not set")
            ),
        )),
        Err(e) => report.push(Finding::fail(
            "jwt --token",
            format!("the token does not verify: {e}"),
            "mint a fresh token for this audience and issuer (--jwt-audience, --jwt-issuer), signed by a key the JWKS or key files hold",
        )),
    }
}
