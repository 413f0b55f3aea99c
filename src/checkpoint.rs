//! The security checkpoint: who may connect, and which requests may reach an upstream.
//!
//! Two checkpoints, both before any byte reaches an upstream:
//!
//! - [`admit_connection`], at accept: the global IP lists and `--max-conns`.
//!   A refused connection never reaches hyper (nor, with TLS, the handshake).
//!   Behind a PROXY protocol balancer the lists judge the address its header
//!   carried; behind a trusted L7 balancer (`trust_forwarded_for`) they wait
//!   for each request ([`admit_forwarded`]).
//! - [`check`], per request, after the handshake is classified and the route
//!   chosen on the normalized path: request form ([`check_form`]), the
//!   route's IP lists ([`crate::policy::ip`]), the per-client rate
//!   ([`crate::policy::rate`]), the Origin ([`crate::policy::origin`]), a CORS preflight
//!   answered here, authentication ([`crate::policy::auth`]), and for a WebSocket
//!   handshake a per-client tunnel slot.
//!
//! The cheap, credential-free checks come first, so an unauthenticated flood
//! is rate-limited before any HMAC is computed. Refusals are
//! [`Denied`] values; [`crate::response`] turns them into 401/403/405/429
//! answers.
//!
//! Upstreams behind shunt expect origin-form (`/path?query`), so CONNECT
//! (authority-form), absolute-form (`http://host/path`) and TRACE are refused
//! unless the route opts in. Routing and policy decide on the normalized path
//! ([`crate::router::normalize_path`]); when normalization changed the path,
//! the normalized path is what the upstream receives, so the upstream cannot
//! read `/frontend-audio/%2e%2e/admin` differently from how it was routed.
//! Header values that are not UTF-8 are refused.
//!
//! A stage of the flow, apart from [`crate::policy`]'s value types: the
//! configuration imports those, and this module imports the configuration's
//! [`GlobalPolicy`] and [`RoutePolicy`], never the other way round.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::{HeaderValue, Method, Request};

use crate::config::{GlobalPolicy, RoutePolicy};
use crate::downstream::ClientCert;
use crate::policy::auth::{AuthMode, Identity, Remote};
use crate::policy::rate::{ConnPermit, Gate, TunnelSlot};
use crate::policy::{Denied, auth, origin};

/// What an admitted request carries on: CORS headers to add, a tunnel slot.
#[derive(Debug, Default)]
pub(crate) struct Admission {
    /// The allowed Origin to echo in `Access-Control-Allow-Origin` (CORS routes).
    pub cors_origin: Option<HeaderValue>,
    /// A CORS preflight that shunt answers itself.
    pub preflight: bool,
    /// Held by the tunnel for its life (WebSocket handshakes).
    pub tunnel: Option<TunnelSlot>,
    /// Who the caller is: the verified claims, where the credential was.
    pub identity: Identity,
}

/// The accept-time checkpoint: global IP lists, then `--max-conns`.
pub(crate) fn admit_connection(
    global: &GlobalPolicy,
    gate: &Arc<Gate>,
    peer: SocketAddr,
) -> Result<ConnPermit, Denied> {
    // A trusted L7 balancer names its clients in each request: the IP
    // lists judge those ([`admit_forwarded`]), not the balancer.
    if !global.balancers.forwards_for(peer.ip()) {
        global
            .ip
            .check(peer.ip())
            .map_err(|reason| Denied::Ip { reason })?;
    }
    Ok(gate.admit_connection(&global.limits)?)
}

/// The global IP lists, for a client a trusted balancer named in the
/// request's forwarding headers (`trust_forwarded_for`): checked per
/// request, so a refusal is a 403 rather than a closed connection.
pub(crate) fn admit_forwarded(global: &GlobalPolicy, client: IpAddr) -> Result<(), Denied> {
    global
        .ip
        .check(client)
        .map_err(|reason| Denied::Ip { reason })
}

/// The per-request checkpoint, for the route chosen on the normalized path.
pub(crate) fn check<B>(
    req: &Request<B>,
    websocket: bool,
    route: &RoutePolicy,
    global: &GlobalPolicy,
    peer: IpAddr,
    gate: &Arc<Gate>,
    remote: Remote<'_>,
) -> Result<Admission, Denied> {
    check_form(req, route)?;
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
            identity: Identity::default(),
        });
    }
    // Only a token or JWT route reads a credential out of the request.
    let presented = matches!(route.auth, AuthMode::Token | AuthMode::Jwt)
        .then(|| auth::presented(req.headers(), req.uri().query(), &global.sources))
        .flatten();
    let client_cert = req.extensions().get::<Arc<ClientCert>>().is_some();
    let identity = auth::authenticate(
        route.auth,
        &global.credentials,
        &global.sources,
        presented.as_ref(),
        remote,
        client_cert,
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
        identity,
    })
}

/// Refuse request forms the route does not allow.
///
/// The first step of [`check`]: cheap and credential-free. CONNECT
/// (unless `allow_connect`) and TRACE are 405, an absolute-form target
/// (unless `allow_absolute_form`) and a header value that is not UTF-8 are 400.
pub(crate) fn check_form<B>(req: &Request<B>, route: &RoutePolicy) -> Result<(), Denied> {
    let method = req.method();
    if method == Method::CONNECT && !route.allow_connect {
        return Err(Denied::Method {
            method: method.to_string(),
        });
    }
    if method == Method::TRACE {
        return Err(Denied::Method {
            method: method.to_string(),
        });
    }
    if req.uri().scheme().is_some() && !route.allow_absolute_form {
        return Err(Denied::AbsoluteForm);
    }
    // HTTP tolerates obs-text (bytes >= 0x80) in values; upstreams decode it
    // inconsistently, so a value that is not UTF-8 is refused here.
    if let Some((name, _)) = req
        .headers()
        .iter()
        .find(|(_, v)| std::str::from_utf8(v.as_bytes()).is_err())
    {
        return Err(Denied::HeaderEncoding {
            name: name.to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::auth::{self, AuthError, AuthMode, Credentials};
    use crate::policy::ip::{self, IpRules};
    use crate::policy::origin::{OriginRefusal, OriginRule};
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
            check(&missing_origin, true, &route, &g, peer, &gate, Remote::None).unwrap_err(),
            Denied::Origin(OriginRefusal::Missing)
        );
        // A plain request without Origin is not held to require_origin.
        let plain = Request::get("/ws?token=good").body(()).unwrap();
        assert!(check(&plain, false, &route, &g, peer, &gate, Remote::None).is_ok());
        let no_token = ws("/ws")
            .header("origin", "https://app.example.com")
            .body(())
            .unwrap();
        assert!(matches!(
            check(&no_token, true, &route, &g, peer, &gate, Remote::None),
            Err(Denied::Auth(AuthError::Missing { .. }))
        ));
        let good = ws("/ws?token=good")
            .header("origin", "https://app.example.com")
            .body(())
            .unwrap();
        let a = check(&good, true, &route, &g, peer, &gate, Remote::None).unwrap();
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
        let a = check(&pre, false, &route, &g, peer, &gate, Remote::None).unwrap();
        assert!(a.preflight && a.cors_origin.is_some());
        let evil = Request::options("/api")
            .header("origin", "https://evil.example.com")
            .header("access-control-request-method", "POST")
            .body(())
            .unwrap();
        assert!(matches!(
            check(&evil, false, &route, &g, peer, &gate, Remote::None),
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
        assert!(
            check(
                &req,
                false,
                &route,
                &g,
                "127.0.0.2".parse().unwrap(),
                &gate,
                Remote::None
            )
            .is_ok()
        );
        assert!(matches!(
            check(
                &req,
                false,
                &route,
                &g,
                "127.0.0.3".parse().unwrap(),
                &gate,
                Remote::None
            ),
            Err(Denied::Ip { .. })
        ));
    }

    #[test]
    fn forms() {
        let route = RoutePolicy::default();
        let ok = Request::get("/x").body(()).unwrap();
        assert!(check_form(&ok, &route).is_ok());
        let abs = Request::get("http://example.com/x").body(()).unwrap();
        assert!(matches!(
            check_form(&abs, &route),
            Err(Denied::AbsoluteForm)
        ));
        let trace = Request::builder()
            .method("TRACE")
            .uri("/")
            .body(())
            .unwrap();
        assert!(matches!(
            check_form(&trace, &route),
            Err(Denied::Method { .. })
        ));
        let connect = Request::builder()
            .method("CONNECT")
            .uri("example.com:443")
            .body(())
            .unwrap();
        assert!(matches!(
            check_form(&connect, &route),
            Err(Denied::Method { .. })
        ));
        let open = RoutePolicy {
            allow_connect: true,
            allow_absolute_form: true,
            ..RoutePolicy::default()
        };
        assert!(check_form(&connect, &open).is_ok());
        assert!(check_form(&abs, &open).is_ok());
        let mut latin1 = Request::get("/x").body(()).unwrap();
        latin1
            .headers_mut()
            .insert("x-name", http::HeaderValue::from_bytes(b"caf\xe9").unwrap());
        assert!(matches!(
            check_form(&latin1, &route),
            Err(Denied::HeaderEncoding { .. })
        ));
    }
}
