//! Tokens and JWTs via header, query and cookie; refusals; reload; redaction.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::json;
use shunt::testing::sign_hs256;

use crate::security::prelude::*;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn static_tokens_from_header_query_and_cookie() {
    let tokens = "# operators\nalpha-s3cret-token\n\nbeta-token\n";
    let (backend, _tokens, shunt) = start_with_file("--token-file", tokens, &[]).await;
    let a = shunt.addr();
    let ok = raw(a, &get("/h", &["Authorization: Bearer alpha-s3cret-token"])).await;
    assert_eq!(ok.status, Some(200), "{ok:?}");
    let ok = raw(a, &get("/q?x=1&token=alpha-s3cret-token&y=2", &[])).await;
    assert_eq!(ok.status, Some(200), "{ok:?}");
    let ok = raw(
        a,
        &get("/c", &["Cookie: theme=dark; shunt_token=beta-token"]),
    )
    .await;
    assert_eq!(ok.status, Some(200), "{ok:?}");
    // The token parameter never reaches the backend.
    assert!(
        backend.seen().contains(&"/q?x=1&y=2".to_owned()),
        "{:?}",
        backend.seen()
    );

    let missing = raw(a, &get("/m", &[])).await;
    assert_eq!(missing.status, Some(401));
    assert_eq!(
        missing.header("x-shunt-error").as_deref(),
        Some("unauthorized"),
        "{missing:?}"
    );
    assert_eq!(ok.header("x-shunt-error"), None, "{ok:?}");
    assert_eq!(
        missing.header("www-authenticate").as_deref(),
        Some(r#"Bearer realm="shunt""#)
    );
    assert!(
        missing.body().contains("Authorization: Bearer"),
        "{missing:?}"
    );
    let wrong = raw(a, &get("/w?token=alpha-s3cret-tokeN", &[])).await;
    assert_eq!(wrong.status, Some(401));
    assert!(
        wrong
            .header("www-authenticate")
            .unwrap()
            .contains("invalid_token")
    );
    let wrong = raw(a, &get("/w", &["Authorization: Bearer alpha"])).await;
    assert_eq!(wrong.status, Some(401));
    let wrong = raw(a, &get("/w", &["Cookie: shunt_token=nope"])).await;
    assert_eq!(wrong.status, Some(401));

    // WebSocket: the token in the query, as a browser sends it.
    let (status, ws, _) = ws_open(a, "127.0.0.1", "/audio?token=alpha-s3cret-token", &[]).await;
    assert_eq!(status, Some(101));
    echo(&mut ws.unwrap(), "frame").await;
    let (status, _, refused) = ws_open(a, "127.0.0.1", "/audio", &[]).await;
    assert_eq!(status, Some(401), "{refused:?}");
    assert!(!backend.seen().iter().any(|s| s.contains("s3cret")));
    assert!(
        !backend.seen().contains(&"/m".to_owned()),
        "refused requests never reach the backend"
    );

    let logs = logs();
    assert!(logs.contains("token=REDACTED"), "query logged redacted");
    assert!(
        !logs.contains("alpha-s3cret-token"),
        "the token never appears in logs"
    );
    shunt.stop().await;
}

#[tokio::test]
async fn token_file_is_reread_on_reload() {
    let (_backend, tokens, shunt) =
        start_with_file("--token-file", "first\n", &["--auth", "token"]).await;
    assert_eq!(
        raw(shunt.addr(), &get("/?token=first", &[])).await.status,
        Some(200)
    );
    TempFile::write(&tokens.0, "second\n");
    assert!(shunt.reload().await);
    assert_eq!(
        raw(shunt.addr(), &get("/?token=first", &[])).await.status,
        Some(401)
    );
    assert_eq!(
        raw(shunt.addr(), &get("/?token=second", &[])).await.status,
        Some(200)
    );
    // An empty file fails the reload; the running tokens stay.
    TempFile::write(&tokens.0, "# nothing\n");
    assert!(!shunt.reload().await);
    assert_eq!(
        raw(shunt.addr(), &get("/?token=second", &[])).await.status,
        Some(200)
    );
    shunt.stop().await;
}

#[test]
fn unreadable_or_empty_credential_files_are_named() {
    let err = shunt::Config::from_args(["--token-file", "/nonexistent/tokens"])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("/nonexistent/tokens") && err.contains("--token-file"),
        "{err}"
    );
    let empty = TempFile::new("empty", "\n  \n");
    let err = shunt::Config::from_args(["--jwt-secret-file", empty.path()])
        .unwrap_err()
        .to_string();
    assert!(err.contains(empty.path()), "{err}");
    let err = shunt::Config::from_args(["--auth", "token"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("token file"), "{err}");
}

#[tokio::test]
async fn jwt_valid_expired_tampered_and_claims() {
    let (_backend, _secret, shunt) = start_with_file(
        "--jwt-secret-file",
        "hunter2-jwt-secret\n",
        &["--jwt-issuer", "calls", "--jwt-audience", "shunt"],
    )
    .await;
    let key = b"hunter2-jwt-secret";
    let t = now();
    let good = sign_hs256(
        key,
        &json!({"exp": t + 300, "iss": "calls", "aud": "shunt"}),
    );
    let a = shunt.addr();
    let status = |r: Answer| r.status;
    assert_eq!(
        status(raw(a, &get("/", &[&format!("Authorization: Bearer {good}")])).await),
        Some(200)
    );
    assert_eq!(
        status(raw(a, &get(&format!("/?token={good}"), &[])).await),
        Some(200)
    );
    assert_eq!(
        status(raw(a, &get("/", &[&format!("Cookie: shunt_token={good}")])).await),
        Some(200)
    );
    let (s, ws, _) = ws_open(a, "127.0.0.1", &format!("/ws?token={good}"), &[]).await;
    assert_eq!(s, Some(101));
    echo(&mut ws.unwrap(), "jwt audio").await;

    let refused = |claims: serde_json::Value, k: &'static [u8]| sign_hs256(k, &claims);
    let cases = [
        (
            "expired",
            refused(json!({"exp": t - 120, "iss": "calls", "aud": "shunt"}), key),
        ),
        (
            "not valid yet",
            refused(
                json!({"exp": t + 300, "nbf": t + 120, "iss": "calls", "aud": "shunt"}),
                key,
            ),
        ),
        (
            "wrong issuer",
            refused(json!({"exp": t + 300, "iss": "other", "aud": "shunt"}), key),
        ),
        (
            "wrong audience",
            refused(json!({"exp": t + 300, "iss": "calls", "aud": "x"}), key),
        ),
        (
            "no exp",
            refused(json!({"iss": "calls", "aud": "shunt"}), key),
        ),
        (
            "wrong key",
            refused(
                json!({"exp": t + 300, "iss": "calls", "aud": "shunt"}),
                b"guess",
            ),
        ),
        ("tampered", {
            let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
            let forged = sign_hs256(
                key,
                &json!({"exp": t + 99999, "iss": "calls", "aud": "shunt", "admin": true}),
            );
            parts[1] = forged.split('.').nth(1).unwrap().to_owned();
            parts.join(".")
        }),
        ("alg none", {
            let parts: Vec<&str> = good.split('.').collect();
            format!("eyJhbGciOiJub25lIn0.{}.", parts[1])
        }),
        ("garbage", "not-a-jwt".to_owned()),
    ];
    for (what, token) in &cases {
        let via_header = raw(a, &get("/", &[&format!("Authorization: Bearer {token}")])).await;
        assert_eq!(via_header.status, Some(401), "{what}: {via_header:?}");
        assert!(
            via_header
                .header("www-authenticate")
                .unwrap()
                .contains("invalid_token"),
            "{what}"
        );
        let via_query = raw(a, &get(&format!("/?token={token}"), &[])).await;
        assert_eq!(via_query.status, Some(401), "{what}");
        let via_cookie = raw(a, &get("/", &[&format!("Cookie: shunt_token={token}")])).await;
        assert_eq!(via_cookie.status, Some(401), "{what}");
        let (s, _, _) = ws_open(a, "127.0.0.1", &format!("/ws?token={token}"), &[]).await;
        assert_eq!(s, Some(401), "{what}");
    }
    let expired = raw(
        a,
        &get("/", &[&format!("Authorization: Bearer {}", cases[0].1)]),
    )
    .await;
    assert!(expired.body().contains("expired"), "{expired:?}");
    assert_eq!(raw(a, &get("/", &[])).await.status, Some(401));
    shunt.stop().await;
}

#[tokio::test]
async fn per_route_auth_and_custom_sources() {
    let backend = echo_backend().spawn().await;
    let tokens = TempFile::new("tokens", "t0k\n");
    let global = format!(
        "token_file = \"{}\"\nauth = \"token\"\ntoken_query = \"access_token\"\ntoken_cookie = \"sess\"",
        tokens.path()
    );
    let file = routes_config(&global, &[("/public", "auth = \"none\""), ("/", "")]);
    let shunt = start(&backend, &["--config", file.path()]).await;
    let a = shunt.addr();
    assert_eq!(raw(a, &get("/public/x", &[])).await.status, Some(200));
    assert_eq!(raw(a, &get("/private", &[])).await.status, Some(401));
    assert_eq!(
        raw(a, &get("/private?token=t0k", &[])).await.status,
        Some(401)
    );
    assert_eq!(
        raw(a, &get("/private?access_token=t0k", &[])).await.status,
        Some(200)
    );
    assert_eq!(
        raw(a, &get("/private", &["Cookie: sess=t0k"])).await.status,
        Some(200)
    );
    // Dot segments cannot borrow /public's auth = none.
    assert_eq!(
        raw(a, &get("/public/../private", &[])).await.status,
        Some(401)
    );
    assert_eq!(
        raw(a, &get("/public/%2e%2e/private", &[])).await.status,
        Some(401)
    );
    shunt.stop().await;
}
