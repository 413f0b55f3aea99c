//! Security policy: who may connect, and which requests may reach an upstream.
//!
//! Two checkpoints, both before any byte reaches an upstream:
//!
//! - [`admit_connection`], at accept: the global IP lists and `--max-conns`.
//!   A refused connection never reaches hyper (nor, with TLS, the handshake).
//! - [`check`], per request, after the handshake is classified and the route
//!   chosen on the normalized path: request form ([`target`]), the route's IP
//!   lists ([`ip`]), the per-client rate ([`rate`]), the Origin ([`origin`]),
//!   a CORS preflight answered here, authentication ([`auth`]), and for a
//!   WebSocket handshake a per-client tunnel slot.
//!
//! The cheap, credential-free checks come first, so an unauthenticated flood
//! is rate-limited before any HMAC is computed. Refusals are [`Denied`]
//! values; [`crate::response`] turns them into 401/403/405/429 answers.

pub mod auth;
pub mod ip;
pub mod origin;
pub mod rate;
pub mod target;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::{HeaderValue, Request};

use auth::{AuthError, AuthMode, Credentials, TokenSources};
use ip::{IpRefusal, IpRules};
use origin::{OriginRefusal, OriginRule};
use rate::{ConnPermit, Gate, LimitExceeded, RateLimits, TunnelSlot};

/// Settings that apply to the whole listener.
#[derive(Debug, Clone, Default)]
pub struct GlobalPolicy {
    /// Token and JWT secret files, watched for changes.
    pub files: Vec<std::path::PathBuf>,
    /// Checked at accept.
    pub ip: IpRules,
    /// The static tokens and the JWT verifier.
    pub credentials: Credentials,
    /// Where a token is looked for (query parameter and cookie names).
    pub sources: TokenSources,
    /// Per-client rate, connection caps.
    pub limits: RateLimits,
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
}

/// Why shunt refused a connection or a request (the client's fault, or over a limit).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// 403.
    #[error("forbidden: {reason}")]
    Ip {
        /// Which list, and the entry that matched.
        reason: IpRefusal,
    },
    /// 401 with `WWW-Authenticate`.
    #[error("unauthorized")]
    Auth(#[from] AuthError),
    /// 403.
    #[error("forbidden")]
    Origin(#[from] OriginRefusal),
    /// 429 with `Retry-After`.
    #[error(transparent)]
    Limit(#[from] LimitExceeded),
    /// 405: CONNECT (unless the route allows it) and TRACE.
    #[error("method {method} is not allowed here")]
    Method {
        /// The method refused.
        method: String,
    },
    /// 400: `GET http://host/path` (unless the route allows it).
    #[error("absolute-form request targets are not accepted; send the path only")]
    AbsoluteForm,
    /// 400: a header value that is not UTF-8.
    #[error("the value of header {name} is not valid UTF-8")]
    HeaderEncoding {
        /// The header at fault.
        name: String,
    },
}

/// What an admitted request carries on: CORS headers to add, a tunnel slot.
#[derive(Debug, Default)]
pub struct Admission {
    /// The allowed Origin to echo in `Access-Control-Allow-Origin` (CORS routes).
    pub cors_origin: Option<HeaderValue>,
    /// A CORS preflight that shunt answers itself.
    pub preflight: bool,
    /// Held by the tunnel for its life (WebSocket handshakes).
    pub tunnel: Option<TunnelSlot>,
}

/// The accept-time checkpoint: global IP lists, then `--max-conns`.
pub fn admit_connection(
    global: &GlobalPolicy,
    gate: &Arc<Gate>,
    peer: SocketAddr,
) -> Result<ConnPermit, Denied> {
    global
        .ip
        .check(peer.ip())
        .map_err(|reason| Denied::Ip { reason })?;
    Ok(gate.admit_connection(&global.limits)?)
}

/// The per-request checkpoint, for the route chosen on the normalized path.
pub fn check<B>(
    req: &Request<B>,
    websocket: bool,
    route: &RoutePolicy,
    global: &GlobalPolicy,
    peer: IpAddr,
    gate: &Arc<Gate>,
) -> Result<Admission, Denied> {
    target::check_form(req, route)?;
    route
        .ip
        .check(peer)
        .map_err(|reason| Denied::Ip { reason })?;
    gate.take_request(&global.limits, peer, tokio::time::Instant::now())?;
    let require = route.require_origin && websocket;
    let origin = origin::check(req.headers(), &route.origins, require)?;
    let cors_origin = origin.filter(|_| route.cors);
    if cors_origin.is_some() && origin::is_preflight(req.method(), req.headers()) {
        return Ok(Admission {
            cors_origin,
            preflight: true,
            tunnel: None,
        });
    }
    let presented = auth::presented(req.headers(), req.uri().query(), &global.sources);
    auth::authenticate(
        route.auth,
        &global.credentials,
        &global.sources,
        presented.as_deref(),
    )?;
    let tunnel = if websocket {
        Some(gate.open_tunnel(&global.limits, peer)?)
    } else {
        None
    };
    Ok(Admission {
        cors_origin,
        preflight: false,
        tunnel,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ws(uri: &str) -> http::request::Builder {
        Request::get(uri)
            .header("upgrade", "websocket")
            .header("connection", "upgrade")
    }

    fn global() -> GlobalPolicy {
        GlobalPolicy {
            credentials: Credentials {
                tokens: auth::TokenSet::parse("good").map(Arc::new),
                jwt: Some(Arc::new(auth::JwtVerifier::new(
                    b"k",
                    None,
                    None,
                    Duration::from_secs(30),
                ))),
            },
            ..GlobalPolicy::default()
        }
    }

    #[test]
    fn order_of_checks() {
        let gate = Arc::new(Gate::default());
        let g = global();
        let route = RoutePolicy {
            auth: AuthMode::Token,
            origins: vec![OriginRule::parse("https://app.example.com").unwrap()],
            require_origin: true,
            ..RoutePolicy::default()
        };
        let peer: IpAddr = "127.0.0.2".parse().unwrap();
        let missing_origin = ws("/ws?token=good").body(()).unwrap();
        assert_eq!(
            check(&missing_origin, true, &route, &g, peer, &gate).unwrap_err(),
            Denied::Origin(OriginRefusal::Missing)
        );
        // A plain request without Origin is not held to require_origin.
        let plain = Request::get("/ws?token=good").body(()).unwrap();
        assert!(check(&plain, false, &route, &g, peer, &gate).is_ok());
        let no_token = ws("/ws")
            .header("origin", "https://app.example.com")
            .body(())
            .unwrap();
        assert!(matches!(
            check(&no_token, true, &route, &g, peer, &gate),
            Err(Denied::Auth(AuthError::Missing { .. }))
        ));
        let good = ws("/ws?token=good")
            .header("origin", "https://app.example.com")
            .body(())
            .unwrap();
        let a = check(&good, true, &route, &g, peer, &gate).unwrap();
        assert!(a.tunnel.is_some() && a.cors_origin.is_none());
        assert_eq!(gate.open(), 1);
        drop(a);
        assert_eq!(gate.open(), 0);
    }

    #[test]
    fn preflight_skips_auth() {
        let gate = Arc::new(Gate::default());
        let g = global();
        let route = RoutePolicy {
            auth: AuthMode::Jwt,
            origins: vec![OriginRule::parse("https://app.example.com").unwrap()],
            cors: true,
            ..RoutePolicy::default()
        };
        let peer: IpAddr = "127.0.0.1".parse().unwrap();
        let pre = Request::options("/api")
            .header("origin", "https://app.example.com")
            .header("access-control-request-method", "POST")
            .body(())
            .unwrap();
        let a = check(&pre, false, &route, &g, peer, &gate).unwrap();
        assert!(a.preflight && a.cors_origin.is_some());
        let evil = Request::options("/api")
            .header("origin", "https://evil.example.com")
            .header("access-control-request-method", "POST")
            .body(())
            .unwrap();
        assert!(matches!(
            check(&evil, false, &route, &g, peer, &gate),
            Err(Denied::Origin(_))
        ));
    }

    #[test]
    fn route_ip_lists() {
        let gate = Arc::new(Gate::default());
        let route = RoutePolicy {
            ip: IpRules {
                allow: vec![ip::IpNet::parse("127.0.0.2").unwrap()],
                deny: vec![],
            },
            ..RoutePolicy::default()
        };
        let req = Request::get("/").body(()).unwrap();
        let g = GlobalPolicy::default();
        assert!(check(&req, false, &route, &g, "127.0.0.2".parse().unwrap(), &gate).is_ok());
        assert!(matches!(
            check(&req, false, &route, &g, "127.0.0.3".parse().unwrap(), &gate),
            Err(Denied::Ip { .. })
        ));
    }
}
