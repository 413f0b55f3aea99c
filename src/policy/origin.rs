//! The Origin allowlist, and the CORS answers that go with it.
//!
//! A browser always sends `Origin` on a WebSocket handshake and on
//! cross-origin requests, so checking it stops other sites from using a
//! visitor's browser (and cookies) against the backend. Rules are exact
//! `scheme://host[:port]` (the default port may be omitted), or
//! `scheme://*.domain[:port]` for any subdomain of `domain` (not `domain`
//! itself), or `*` for any origin. A missing Origin (a non-browser client) is
//! allowed unless the route sets `require_origin` (WebSocket handshakes only).

use std::fmt;

use http::{HeaderMap, HeaderName, HeaderValue, header};

/// One allowlist entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginRule {
    /// `*`: any origin.
    Any,
    /// `scheme://host:port`, or with `wildcard`, any host ending in `.host`.
    Site {
        /// Lower-case scheme.
        scheme: String,
        /// Lower-case host; without the `*.` of a wildcard.
        host: String,
        /// The port, or the scheme's default.
        port: u16,
        /// `https://*.example.com`: any subdomain (not the bare domain).
        wildcard: bool,
    },
}

/// Why an allowlist entry was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OriginRuleError {
    /// Not `scheme://host[:port]`.
    #[error("expected scheme://host[:port], e.g. https://app.example.com or https://*.example.com")]
    Syntax,
    /// A scheme other than http or https.
    #[error("the scheme must be http or https")]
    Scheme,
}

/// A parsed `Origin` header value: `(scheme, host, port)`, lower-case.
/// Rules compare these parts, never the raw text, so a prefix cannot
/// pass: `https://app.example.com.evil.net` has another host than
/// `https://app.example.com`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Site {
    /// `http` or `https`, lower-case.
    scheme: String,
    /// Lower-case; an IPv6 address keeps its brackets. For a rule, may still
    /// start with `*.` until `OriginRule::parse` takes it off.
    host: String,
    /// As written, or the scheme's default (80, 443), so that
    /// `https://a.example` and `https://a.example:443` are the same site.
    port: u16,
}

/// `scheme://host[:port]` as browsers send it: lower-cased, default port filled in,
/// no path. `None` for anything else (`null`, a path, user info).
///
/// Used on both sides: on the allowlist entries (`OriginRule::parse`) and
/// on the header a request brings, so both normalize the same way. A
/// trailing `/` is tolerated; the opaque `null` Origin (sandboxed frames,
/// `file:` pages) never parses, so it passes an empty list only, not `*`.
fn parse_site(text: &str) -> Option<Site> {
    let (scheme, rest) = text.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "http" => 80,
        "https" => 443,
        _ => return None,
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty() || rest.contains(['/', '?', '#', '@', ' ']) {
        return None;
    }
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (h, after) = v6.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if after.is_empty() => default_port,
            None => return None,
        };
        (format!("[{h}]"), port)
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), p.parse().ok()?),
            None => (rest.to_owned(), default_port),
        }
    };
    if host.is_empty() {
        return None;
    }
    Some(Site {
        scheme,
        host: host.to_ascii_lowercase(),
        port,
    })
}

impl OriginRule {
    /// Parse an allowlist entry.
    pub fn parse(text: &str) -> Result<OriginRule, OriginRuleError> {
        let text = text.trim();
        if text == "*" {
            return Ok(OriginRule::Any);
        }
        let scheme = text.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
        if !matches!(scheme.as_deref(), Some("http" | "https")) {
            return Err(if scheme.is_some() {
                OriginRuleError::Scheme
            } else {
                OriginRuleError::Syntax
            });
        }
        let site = parse_site(text).ok_or(OriginRuleError::Syntax)?;
        let (host, wildcard) = match site.host.strip_prefix("*.") {
            Some(domain) => (domain.to_owned(), true),
            None => (site.host, false),
        };
        if host.contains('*') || host.is_empty() {
            return Err(OriginRuleError::Syntax);
        }
        Ok(OriginRule::Site {
            scheme: site.scheme,
            host,
            port: site.port,
            wildcard,
        })
    }

    /// Does the request's normalized Origin fall under this rule? Scheme and
    /// port must match exactly; a wildcard host needs at least one label
    /// before `.domain` (`a.example.com` and `b.a.example.com` for
    /// `*.example.com`, but not `example.com` or `badexample.com`).
    fn matches(&self, site: &Site) -> bool {
        match self {
            OriginRule::Any => true,
            OriginRule::Site {
                scheme,
                host,
                port,
                wildcard,
            } => {
                let host_ok = if *wildcard {
                    site.host
                        .strip_suffix(host.as_str())
                        .is_some_and(|sub| sub.len() > 1 && sub.ends_with('.'))
                } else {
                    &site.host == host
                };
                *scheme == site.scheme && *port == site.port && host_ok
            }
        }
    }
}

impl fmt::Display for OriginRule {
    /// The normalized form, port always written (`https://app.example.com:443`):
    /// what the rule compares, not what the user typed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OriginRule::Any => f.write_str("*"),
            OriginRule::Site {
                scheme,
                host,
                port,
                wildcard,
            } => {
                let star = if *wildcard { "*." } else { "" };
                write!(f, "{scheme}://{star}{host}:{port}")
            }
        }
    }
}

/// Why an Origin was refused. Names the Origin, never the allowlist.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OriginRefusal {
    /// No `Origin`, where the route requires one.
    #[error("this route requires an Origin header (require_origin)")]
    Missing,
    /// An `Origin` not on the list.
    #[error("Origin `{0}` is not in this route's allow_origin list")]
    NotAllowed(String),
}

/// Check the request's `Origin` against `rules`.
///
/// An empty list allows every Origin. `require` refuses a request without one.
///
/// Returns the Origin to echo in a CORS answer (`None` when there was
/// none). More than one `Origin` header is refused outright, since which
/// one a backend would read is not known. The refusal shows at most 100
/// characters of the Origin, so a long header cannot flood the log.
pub(crate) fn check(
    headers: &HeaderMap,
    rules: &[OriginRule],
    require: bool,
) -> Result<Option<HeaderValue>, OriginRefusal> {
    let mut values = headers.get_all(header::ORIGIN).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return if headers.contains_key(header::ORIGIN) {
            Err(OriginRefusal::NotAllowed("(several Origin headers)".into()))
        } else if require {
            Err(OriginRefusal::Missing)
        } else {
            Ok(None)
        };
    };
    if rules.is_empty() {
        return Ok(Some(value.clone()));
    }
    let text = value.to_str().unwrap_or("");
    let allowed = parse_site(text).is_some_and(|site| rules.iter().any(|r| r.matches(&site)));
    if allowed {
        Ok(Some(value.clone()))
    } else {
        let shown: String = text.chars().take(100).collect();
        Err(OriginRefusal::NotAllowed(shown))
    }
}

/// Whether `req` is a CORS preflight: `OPTIONS` with `Origin` and `Access-Control-Request-Method`.
pub(crate) fn is_preflight(method: &http::Method, headers: &HeaderMap) -> bool {
    method == http::Method::OPTIONS
        && headers.contains_key(header::ORIGIN)
        && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// The headers of a CORS answer for an allowed `origin`: on every response of
/// a CORS route, and on a preflight with the allowed methods and headers.
///
/// `Access-Control-Allow-Credentials: true` is why a CORS route must list
/// specific origins (config refuses `*`): the echoed Origin with credentials
/// would otherwise let any site act with a visitor's cookies. `Vary: Origin`
/// keeps caches from serving one site's answer to another. A preflight's
/// answer is cached by the browser for 600 s.
pub(crate) fn cors_headers(
    origin: &HeaderValue,
    preflight_of: Option<&HeaderMap>,
) -> Vec<(HeaderName, HeaderValue)> {
    let mut out = vec![
        (header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone()),
        (header::VARY, HeaderValue::from_static("Origin")),
        (
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        ),
    ];
    if let Some(req) = preflight_of {
        out.push((
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
        ));
        if let Some(h) = req.get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
            out.push((header::ACCESS_CONTROL_ALLOW_HEADERS, h.clone()));
        }
        out.push((
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(list: &[&str]) -> Vec<OriginRule> {
        list.iter().map(|r| OriginRule::parse(r).unwrap()).collect()
    }

    fn with_origin(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ORIGIN, v.parse().unwrap());
        h
    }

    #[test]
    fn parse_rules() {
        assert_eq!(
            OriginRule::parse("https://App.Example.com")
                .unwrap()
                .to_string(),
            "https://app.example.com:443"
        );
        assert_eq!(
            OriginRule::parse("http://localhost:5173/")
                .unwrap()
                .to_string(),
            "http://localhost:5173"
        );
        assert_eq!(
            OriginRule::parse("https://*.example.com")
                .unwrap()
                .to_string(),
            "https://*.example.com:443"
        );
        assert_eq!(OriginRule::parse("*").unwrap(), OriginRule::Any);
        assert_eq!(
            OriginRule::parse("example.com"),
            Err(OriginRuleError::Syntax)
        );
        assert_eq!(OriginRule::parse("ftp://x"), Err(OriginRuleError::Scheme));
        assert_eq!(
            OriginRule::parse("https://a/b"),
            Err(OriginRuleError::Syntax)
        );
        assert_eq!(
            OriginRule::parse("https://a.*.com"),
            Err(OriginRuleError::Syntax)
        );
        assert_eq!(
            OriginRule::parse("https://x:99999"),
            Err(OriginRuleError::Syntax)
        );
    }

    #[test]
    fn exact_and_wildcard_matching() {
        let r = rules(&[
            "https://app.example.com",
            "https://*.calls.example.com:8443",
        ]);
        let ok = |o: &str| check(&with_origin(o), &r, false).is_ok();
        assert!(ok("https://app.example.com"));
        assert!(ok("https://APP.example.com:443"));
        assert!(!ok("http://app.example.com"));
        assert!(!ok("https://app.example.com:8443"));
        assert!(!ok("https://app.example.com.evil.com"));
        assert!(!ok("https://evilapp.example.com"));
        assert!(ok("https://a.calls.example.com:8443"));
        assert!(ok("https://a.b.calls.example.com:8443"));
        assert!(!ok("https://calls.example.com:8443"));
        assert!(!ok("https://xcalls.example.com:8443"));
        assert!(!ok("https://a.calls.example.com"));
        assert!(!ok("null"));
        assert!(!ok(""));
    }

    #[test]
    fn missing_and_required() {
        let r = rules(&["https://app.example.com"]);
        assert_eq!(check(&HeaderMap::new(), &r, false), Ok(None));
        assert_eq!(
            check(&HeaderMap::new(), &r, true),
            Err(OriginRefusal::Missing)
        );
        assert!(check(&with_origin("https://x.org"), &[], false).is_ok());
        let err = check(&with_origin("https://evil.org"), &r, false).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("evil.org") && !msg.contains("app.example.com"),
            "{msg}"
        );
        let mut two = with_origin("https://app.example.com");
        two.append(header::ORIGIN, "https://evil.org".parse().unwrap());
        assert!(check(&two, &r, false).is_err());
        let any = rules(&["*"]);
        assert!(check(&with_origin("https://whatever.net:1"), &any, false).is_ok());
    }

    #[test]
    fn preflight_headers() {
        let mut h = with_origin("https://app.example.com");
        assert!(!is_preflight(&http::Method::OPTIONS, &h));
        h.insert(
            header::ACCESS_CONTROL_REQUEST_METHOD,
            "POST".parse().unwrap(),
        );
        h.insert(
            header::ACCESS_CONTROL_REQUEST_HEADERS,
            "authorization".parse().unwrap(),
        );
        assert!(is_preflight(&http::Method::OPTIONS, &h));
        assert!(!is_preflight(&http::Method::GET, &h));
        let origin = h[header::ORIGIN].clone();
        let out = cors_headers(&origin, Some(&h));
        assert!(
            out.iter()
                .any(|(k, v)| k == header::ACCESS_CONTROL_ALLOW_HEADERS && v == "authorization")
        );
        assert!(out.iter().any(|(k, v)| k == header::VARY && v == "Origin"));
    }
}
