//! What a reattachable call (`backend_loss = "reattach"`) needs from this
//! stage: whether the first 101 allows a reattach at all, and how to redial.
//!
//! A new backend leg is the original request sent again (same path and
//! query, the same forwarded headers) with a fresh `Sec-WebSocket-Key` and
//! `x-shunt-reattach: <call id>; attempt=<n>`, to the route's upstreams in
//! order. Its 101 must select the same subprotocol and the same extensions
//! as the first. A call that negotiated permessage-deflate with context
//! takeover is not reattachable: a fresh backend cannot continue the old
//! compression context. The tunnel's [`tunnel::ReattachPlan`] carries the
//! redial; the tunnel decides when to use it.

use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, StatusCode};
use rustls::ClientConfig;

use super::{handshake, tunnel};
use crate::calls::{Call, ReattachResult};
use crate::config::{ReattachSpec, Timeouts, UpstreamName, UpstreamUrl};
use crate::dial;

/// The header a new backend leg's handshake carries: `<call id>; attempt=<n>`.
pub(crate) const X_SHUNT_REATTACH: HeaderName = HeaderName::from_static("x-shunt-reattach");

/// One of the route's upstreams, as a reattach dials it (owned: the call
/// outlives the snapshot its request saw).
#[derive(Debug, Clone)]
pub(crate) struct Candidate {
    /// Its name.
    pub name: UpstreamName,
    /// Where it listens.
    pub url: UpstreamUrl,
    /// TLS towards an `https` upstream.
    pub tls: Option<Arc<ClientConfig>>,
    /// The PROXY header naming the call's client, first on the connection
    /// (an upstream with `send_proxy_protocol`).
    pub proxy_header: Option<Box<[u8]>>,
}

/// The plan for a call whose first 101 is `answer`, or `None` (counted and
/// logged) when that 101 makes it not reattachable. `req` is the request as
/// it was sent upstream; `to` the route's upstreams in order.
pub(super) fn plan<B>(
    spec: ReattachSpec,
    req: &Request<B>,
    answer: &HeaderMap,
    to: &Arc<[Candidate]>,
    timeouts: &Timeouts,
    call: &Call,
) -> Option<Box<tunnel::ReattachPlan>> {
    if let Some(reason) = deflate_with_takeover(answer) {
        call.record_reattach(ReattachResult::NotReattachable, Duration::ZERO, None);
        tracing::warn!(
            tunnel = call.id,
            route = call.route(),
            upstream = call.upstream(),
            "call not reattachable: {reason}; a backend loss closes it with 1014"
        );
        return None;
    }
    let mut head = Request::new(());
    *head.method_mut() = req.method().clone();
    *head.uri_mut() = req.uri().clone();
    *head.headers_mut() = req.headers().clone();
    let expect = Selected::of(answer);
    let redial = Redial {
        head: Arc::new(head),
        to: to.clone(),
        expect: Arc::new(expect),
        connect: timeouts.connect,
        response: timeouts.response,
        call_id: call.id,
    };
    let redial: tunnel::Redial = Arc::new(move |attempt| Box::pin(redial.clone().pass(attempt)));
    Some(Box::new(tunnel::ReattachPlan { spec, redial }))
}

/// Why the extensions in a 101 make a call not reattachable: permessage-deflate
/// with context takeover in either direction.
fn deflate_with_takeover(answer: &HeaderMap) -> Option<&'static str> {
    for value in answer.get_all(header::SEC_WEBSOCKET_EXTENSIONS) {
        let text = value.to_str().unwrap_or_default();
        for ext in text.split(',') {
            let mut params = ext.split(';').map(str::trim);
            if !params
                .next()
                .is_some_and(|n| n.eq_ignore_ascii_case("permessage-deflate"))
            {
                continue;
            }
            let params: Vec<&str> = params
                .map(|p| p.split('=').next().unwrap_or_default().trim())
                .collect();
            let has = |name: &str| params.iter().any(|p| p.eq_ignore_ascii_case(name));
            if !(has("server_no_context_takeover") && has("client_no_context_takeover")) {
                return Some("permessage-deflate with context takeover");
            }
        }
    }
    None
}

/// The subprotocol and extensions a 101 selected, normalized for comparison.
#[derive(Debug, PartialEq, Eq)]
struct Selected {
    protocol: Option<String>,
    extensions: Option<String>,
}

impl Selected {
    fn of(headers: &HeaderMap) -> Selected {
        let joined = |name: HeaderName| {
            let parts: Vec<String> = headers
                .get_all(name)
                .iter()
                .flat_map(|v| v.to_str().unwrap_or_default().split(','))
                .map(|p| p.split(';').map(str::trim).collect::<Vec<_>>().join(";"))
                .filter(|p| !p.is_empty())
                .collect();
            (!parts.is_empty()).then(|| parts.join(", "))
        };
        Selected {
            protocol: joined(header::SEC_WEBSOCKET_PROTOCOL),
            extensions: joined(header::SEC_WEBSOCKET_EXTENSIONS),
        }
    }
}

/// Everything one pass needs, shared by the passes of a call.
#[derive(Debug, Clone)]
struct Redial {
    /// The request as first sent upstream (its key is replaced each time).
    head: Arc<Request<()>>,
    /// The route's upstreams, in order.
    to: Arc<[Candidate]>,
    /// What the first 101 selected.
    expect: Arc<Selected>,
    connect: Duration,
    response: Duration,
    call_id: u64,
}

impl Redial {
    /// One pass over the upstreams, in order: the first to answer 101 wins.
    async fn pass(self, attempt: u32) -> Result<tunnel::Redialed, tunnel::RedialError> {
        let mut last = String::from("the route has no upstream");
        for c in self.to.iter() {
            match self.one(c, attempt).await {
                Ok(new) => return Ok(new),
                Err(tunnel::RedialError::Unavailable(e)) => last = e,
                Err(e) => return Err(e),
            }
        }
        Err(tunnel::RedialError::Unavailable(last))
    }

    /// Dial `c` and send it the handshake.
    async fn one(
        &self,
        c: &Candidate,
        attempt: u32,
    ) -> Result<tunnel::Redialed, tunnel::RedialError> {
        let unavailable =
            |what: String| tunnel::RedialError::Unavailable(format!("{}: {what}", c.name));
        let stream = dial::connect(
            &c.url,
            c.tls.as_ref(),
            self.connect,
            c.proxy_header.as_deref(),
        )
        .await
        .map_err(|e| unavailable(crate::error_chain::ErrorChain(&e).to_string()))?;
        let key = fresh_key();
        let mut req = Request::new(());
        *req.method_mut() = self.head.method().clone();
        *req.uri_mut() = self.head.uri().clone();
        *req.headers_mut() = self.head.headers().clone();
        let headers = req.headers_mut();
        headers.insert(header::SEC_WEBSOCKET_KEY, key.clone());
        let value = format!("{}; attempt={attempt}", self.call_id);
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(X_SHUNT_REATTACH, v);
        }
        let answer = tokio::time::timeout(self.response, handshake::exchange(&req, stream))
            .await
            .map_err(|_| unavailable("no answer within the response timeout".to_owned()))?
            .map_err(|e| unavailable(crate::error_chain::ErrorChain(&e).to_string()))?;
        if answer.head.status != StatusCode::SWITCHING_PROTOCOLS {
            return Err(unavailable(format!("answered {}", answer.head.status)));
        }
        let accept = dial::probe::accept_key(key.to_str().unwrap_or_default());
        if answer
            .head
            .headers
            .get(header::SEC_WEBSOCKET_ACCEPT)
            .is_none_or(|v| v.as_bytes() != accept.as_bytes())
        {
            return Err(unavailable(
                "a 101 with a wrong Sec-WebSocket-Accept".to_owned(),
            ));
        }
        let got = Selected::of(&answer.head.headers);
        if got != *self.expect {
            return Err(tunnel::RedialError::Mismatch(format!(
                "{} selected {} where the call has {}",
                c.name,
                describe(&got),
                describe(&self.expect)
            )));
        }
        Ok(tunnel::Redialed {
            stream: answer.stream,
            early: answer.bytes,
            upstream: c.name.0.as_str().into(),
        })
    }
}

/// `subprotocol "x", extensions "y"` for a mismatch's message.
fn describe(s: &Selected) -> String {
    format!(
        "subprotocol {}, extensions {}",
        s.protocol
            .as_deref()
            .map_or("none".to_owned(), |p| format!("\"{p}\"")),
        s.extensions
            .as_deref()
            .map_or("none".to_owned(), |e| format!("\"{e}\""))
    )
}

/// A fresh `Sec-WebSocket-Key`: 16 random bytes, base64.
fn fresh_key() -> HeaderValue {
    use base64::Engine;
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        bytes = t.to_le_bytes();
    }
    let text = base64::engine::general_purpose::STANDARD.encode(bytes);
    HeaderValue::from_str(&text).unwrap_or(HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn deflate_needs_no_context_takeover_both_ways() {
        let plain = headers(&[]);
        assert_eq!(deflate_with_takeover(&plain), None);
        let takeover = headers(&[(
            "sec-websocket-extensions",
            "permessage-deflate; client_max_window_bits",
        )]);
        assert!(deflate_with_takeover(&takeover).is_some());
        let half = headers(&[(
            "sec-websocket-extensions",
            "permessage-deflate; server_no_context_takeover",
        )]);
        assert!(deflate_with_takeover(&half).is_some());
        let none = headers(&[(
            "sec-websocket-extensions",
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
        )]);
        assert_eq!(deflate_with_takeover(&none), None);
    }

    #[test]
    fn selected_compares_normalized() {
        let a = Selected::of(&headers(&[
            ("sec-websocket-protocol", "audio.v2"),
            ("sec-websocket-extensions", "x-ext; a=1"),
        ]));
        let b = Selected::of(&headers(&[
            ("sec-websocket-protocol", "audio.v2"),
            ("sec-websocket-extensions", "x-ext;a=1"),
        ]));
        assert_eq!(a, b);
        let c = Selected::of(&headers(&[("sec-websocket-protocol", "audio.v1")]));
        assert_ne!(a, c);
        assert_eq!(
            Selected::of(&headers(&[])),
            Selected {
                protocol: None,
                extensions: None
            }
        );
    }

    #[test]
    fn keys_are_fresh() {
        let (a, b) = (fresh_key(), fresh_key());
        assert_ne!(a, b);
        assert_eq!(a.len(), 24);
    }
}
