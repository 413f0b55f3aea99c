//! Hardening against bad input: slowloris, header limits, request forms,
//! smuggling, and a corpus of hostile requests answered 4xx or closed.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::security::prelude::*;

#[tokio::test]
async fn slowloris_is_closed_while_audio_keeps_flowing() {
    let (_backend, shunt) = start_with_backend(&["--header-timeout", "1s"]).await;
    let a = shunt.addr();
    let (s, ws, _) = ws_open(a, "127.0.0.2", "/frontend-audio", &[]).await;
    assert_eq!(s, Some(101));
    let mut ws = ws.unwrap();
    let mut slow = connect_from(a, "127.0.0.3").await;
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut closed_after = None;
    for i in 0..40 {
        // One header byte at a time, never finishing the head.
        let wrote = slow.write_all(b"X").await;
        echo(&mut ws, &format!("audio frame {i}")).await;
        let mut buf = [0u8; 256];
        let read = tokio::time::timeout(Duration::from_millis(100), slow.read(&mut buf)).await;
        if wrote.is_err()
            || matches!(read, Ok(Ok(0)) | Ok(Err(_)))
            || matches!(read, Ok(Ok(n)) if n > 0)
        {
            closed_after = Some(started.elapsed());
            break;
        }
    }
    let closed_after = closed_after.expect("the slow client is closed");
    assert!(
        closed_after >= Duration::from_millis(800),
        "{closed_after:?}"
    );
    assert!(closed_after < Duration::from_secs(3), "{closed_after:?}");
    // Audio still flows afterwards.
    echo(&mut ws, "after").await;
    drop(ws);
    shunt.stop().await;
}

#[tokio::test]
async fn header_limits_answer_431() {
    let (backend, shunt) = start_with_backend(&["--max-header-bytes", "8192"]).await;
    let big = format!("X-Big: {}", "a".repeat(20_000));
    let answer = raw(shunt.addr(), &get("/", &[&big])).await;
    assert_eq!(answer.status, Some(431), "{answer:?}");
    let many: Vec<String> = (0..150).map(|i| format!("X-H{i}: v")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let answer = raw(shunt.addr(), &get("/", &many)).await;
    assert_eq!(answer.status, Some(431), "{answer:?}");
    assert!(backend.seen().is_empty());
    shunt.stop().await;
}

#[tokio::test]
async fn forms_methods_and_smuggling() {
    let (backend, shunt) = start_with_backend(&[]).await;
    let a = shunt.addr();
    let abs = raw(
        a,
        b"GET http://127.0.0.1:1/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(abs.status, Some(400), "{abs:?}");
    let connect = raw(
        a,
        b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\n\r\n",
    )
    .await;
    assert_eq!(connect.status, Some(405), "{connect:?}");
    let trace = raw(
        a,
        b"TRACE / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(trace.status, Some(405), "{trace:?}");
    // CL.TE: the chunked body ends at `0`; whatever follows must never be read as a request.
    let smuggle = raw(
        a,
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 44\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    assert!(smuggle.status.is_none_or(|s| s < 500), "{smuggle:?}");
    // TE.CL
    let smuggle = raw(
        a,
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\nGET /smuggled2 HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    assert!(smuggle.status.is_none_or(|s| s < 500), "{smuggle:?}");
    assert!(
        !backend.seen().iter().any(|t| t.contains("smuggled")),
        "no smuggled request reached the backend: {:?}",
        backend.seen()
    );
    let dup = raw(
        a,
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    )
    .await;
    assert_eq!(dup.status, Some(400));
    shunt.stop().await;
}

/// At least 30 malformed or hostile requests: each 4xx or closed, never 5xx.
#[tokio::test]
async fn hostile_corpus_is_refused_cleanly() {
    let (backend, _files, shunt) = audio_open_rest_token(&["--header-timeout", "2s"]).await;
    let long_path = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(20_000));
    let many_headers = format!(
        "GET / HTTP/1.1\r\nHost: x\r\n{}\r\n",
        (0..200)
            .map(|i| format!("X-{i}: 1\r\n"))
            .collect::<String>()
    );
    let corpus: Vec<(&str, Vec<u8>)> = vec![
        ("CL.TE smuggling", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG".to_vec()),
        ("TE.CL smuggling", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n5c\r\nGPOST / HTTP/1.1\r\n\r\n0\r\n\r\n".to_vec()),
        ("TE obfuscated", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n".to_vec()),
        ("TE with space before colon", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n".to_vec()),
        ("TE on HTTP/1.0", b"POST / HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec()),
        ("TE gzip not chunked", b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n".to_vec()),
        ("duplicate Content-Length", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 5\r\n\r\nabcde".to_vec()),
        ("negative Content-Length", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n".to_vec()),
        ("huge Content-Length", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n".to_vec()),
        ("bad chunk size", b"POST /frontend-audio HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".to_vec()),
        ("bad method chars", b"G\x01T / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("empty method", b" / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("CONNECT", b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\n\r\n".to_vec()),
        ("TRACE", b"TRACE /frontend-audio HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("absolute form", b"GET http://127.0.0.1:22/ HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("asterisk form", b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec()),
        ("HTTP/0.9", b"GET /\r\n\r\n".to_vec()),
        ("version garbage", b"GET / HTTP/9.9\r\nHost: x\r\n\r\n".to_vec()),
        ("CR injection in header", b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\rInjected: 1\r\n\r\n".to_vec()),
        ("NUL in header", b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n".to_vec()),
        ("obs-fold header", b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n".to_vec()),
        ("header without colon", b"GET / HTTP/1.1\r\nHost: x\r\nNoColon\r\n\r\n".to_vec()),
        ("space in header name", b"GET / HTTP/1.1\r\nHost: x\r\nX A: 1\r\n\r\n".to_vec()),
        ("oversized header", format!("GET / HTTP/1.1\r\nHost: x\r\nX: {}\r\n\r\n", "b".repeat(40_000)).into_bytes()),
        ("too many headers", many_headers.into_bytes()),
        ("oversized path", long_path.into_bytes()),
        ("invalid UTF-8 in path", b"GET /frontend-audio/\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("invalid UTF-8 in header", b"GET /frontend-audio HTTP/1.1\r\nHost: x\r\nX-A: \xff\xfe\r\n\r\n".to_vec()),
        ("space in path", b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("dot-dot escape to token route", b"GET /frontend-audio/../private HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("encoded dot-dot", b"GET /frontend-audio/%2e%2e/private HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("encoded slash dot-dot", b"GET /frontend-audio%2f..%2fprivate HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("backslash dot-dot", b"GET /frontend-audio\\..\\private HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("WebSocket bad key", b"GET /frontend-audio HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: short\r\nSec-WebSocket-Version: 13\r\n\r\n".to_vec()),
        ("WebSocket wrong version", b"GET /frontend-audio HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n".to_vec()),
        ("WebSocket POST", b"POST /frontend-audio HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nContent-Length: 0\r\n\r\n".to_vec()),
        ("no credentials on token route", b"GET /private HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("bearer with CRLF-ish junk", b"GET /private HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \x7f\x7f\r\n\r\n".to_vec()),
        ("binary garbage", (0u8..=255).rev().collect()),
        ("only CRLFs", b"\r\n\r\n\r\n\r\n".to_vec()),
        ("truncated head then close", b"GET / HTTP/1.1\r\nHo".to_vec()),
    ];
    assert!(corpus.len() >= 30);
    // All at once: a request that leaves the connection open waits for the
    // header timeout, and shunt must cope with the lot concurrently anyway.
    let addr = shunt.addr();
    let sent: Vec<_> = corpus
        .into_iter()
        .map(|(what, bytes)| tokio::spawn(async move { (what, raw(addr, &bytes).await) }))
        .collect();
    for task in sent {
        let (what, answer) = task.await.unwrap();
        match answer.status {
            None => {}
            Some(s) => assert!((400..500).contains(&s), "{what}: answered {s}: {answer:?}"),
        }
    }
    assert!(
        backend
            .seen()
            .iter()
            .all(|t| t.starts_with("/frontend-audio")),
        "only the open route's requests reached the backend: {:?}",
        backend.seen()
    );
    // Still alive and serving.
    let ok = raw(shunt.addr(), &get("/frontend-audio/ok", &[])).await;
    assert_eq!(ok.status, Some(200));
    shunt.stop().await;
}
