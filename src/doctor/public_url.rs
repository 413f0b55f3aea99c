//! The public address browsers use (`--url`), e.g.
//! `wss://calls.example.com:8443/frontend-audio`: what the end-to-end check
//! dials (Host, SNI, path) and what the front end is told to use.

use std::fmt;
use std::net::IpAddr;

use http::Uri;

/// Why `--url` was refused: the text given and what is wrong with it
/// (doctor exits 2 with this message).
#[derive(Debug, thiserror::Error)]
#[error("invalid --url `{url}`: {reason}")]
pub struct UrlError {
    url: String,
    reason: String,
}

/// A parsed `ws://` or `wss://` URL (`http`/`https` are taken as their
/// WebSocket twins).
///
/// Kept as parts rather than a `Uri`: the end-to-end check needs the host
/// alone (SNI, certificate names, DNS), the port alone (the public dial,
/// the firewall), and the path and query as the request target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicUrl {
    /// `wss://` (TLS) rather than `ws://`.
    pub secure: bool,
    /// Host as written, without brackets.
    pub host: String,
    /// The port, 443 or 80 when not written.
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path_and_query: String,
}

/// Parsing `--url` and deriving what a browser sends from it.
impl PublicUrl {
    /// Parse `ws[s]://host[:port][/path][?query]`.
    ///
    /// User info (`user:pass@`) is refused rather than dropped: browsers do
    /// not send it on a WebSocket, so a URL with it is a mistake to point
    /// out, and it must not end up printed in the report.
    pub fn parse(text: &str) -> Result<PublicUrl, UrlError> {
        let err = |reason: &str| UrlError {
            url: text.to_owned(),
            reason: reason.to_owned(),
        };
        let uri: Uri = text
            .parse()
            .map_err(|e: http::uri::InvalidUri| err(&e.to_string()))?;
        let secure = match uri.scheme_str() {
            Some("wss" | "https") => true,
            Some("ws" | "http") => false,
            Some(_) => return Err(err("the scheme must be ws:// or wss://")),
            None => {
                return Err(err(
                    "expected a URL like wss://calls.example.com:8443/frontend-audio",
                ));
            }
        };
        let authority = uri.authority().ok_or_else(|| err("the URL has no host"))?;
        if authority.as_str().contains('@') {
            return Err(err("user info is not supported"));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        if host.is_empty() {
            return Err(err("the URL has no host"));
        }
        let port = authority
            .port_u16()
            .unwrap_or(if secure { 443 } else { 80 });
        let path_and_query = uri
            .path_and_query()
            .map(|p| p.as_str())
            .filter(|p| p.starts_with('/'))
            .unwrap_or("/")
            .to_owned();
        Ok(PublicUrl {
            secure,
            host: host.to_owned(),
            port,
            path_and_query,
        })
    }

    /// The path without the query.
    pub fn path(&self) -> &str {
        self.path_and_query
            .split_once('?')
            .map_or(self.path_and_query.as_str(), |(p, _)| p)
    }

    /// What a browser sends as `Host`: the host, and the port unless it is the default.
    pub fn host_header(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == if self.secure { 443 } else { 80 } {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }

    /// Whether the host is this machine only (`localhost` or a loopback address).
    ///
    /// Decided from the text, without DNS: it drives the listener-scope and
    /// firewall checks, which must not wait on a resolver.
    pub fn is_local(&self) -> bool {
        self.host.eq_ignore_ascii_case("localhost")
            || self.host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
    }

    /// The request target with `name=value` added to the query, the value
    /// percent-encoded as a browser's `URLSearchParams` would.
    ///
    /// The result holds the credential: it goes on the wire only, and any
    /// text built from it passes [`crate::doctor::redact`] before printing.
    pub fn with_query(&self, name: &str, value: &str) -> String {
        let sep = if self.path_and_query.contains('?') {
            '&'
        } else {
            '?'
        };
        format!(
            "{}{sep}{name}={}",
            self.path_and_query,
            crate::percent::encode(value)
        )
    }
}

/// `ws[s]://HOST[:PORT]/PATH?QUERY`, the default port left out, as a
/// browser's address bar shows it.
impl fmt::Display for PublicUrl {
    /// Write the URL.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.secure { "wss" } else { "ws" };
        write!(
            f,
            "{scheme}://{}{}",
            self.host_header(),
            self.path_and_query
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_story_url() {
        let u = PublicUrl::parse("wss://calls.example.com:8443/frontend-audio").unwrap();
        assert!(u.secure);
        assert_eq!(u.host, "calls.example.com");
        assert_eq!(u.port, 8443);
        assert_eq!(u.path(), "/frontend-audio");
        assert!(!u.is_local());
        assert_eq!(u.to_string(), "wss://calls.example.com:8443/frontend-audio");
    }

    #[test]
    fn defaults_and_local_hosts() {
        let u = PublicUrl::parse("ws://[::1]/a?x=1").unwrap();
        assert_eq!((u.port, u.host.as_str()), (80, "::1"));
        assert!(u.is_local());
        assert_eq!(u.host_header(), "[::1]");
        assert_eq!(u.with_query("token", "a b/c"), "/a?x=1&token=a%20b%2Fc");
        assert_eq!(
            PublicUrl::parse("wss://localhost").unwrap().path_and_query,
            "/"
        );
    }

    #[test]
    fn refuses_other_schemes_and_missing_hosts() {
        assert!(PublicUrl::parse("ftp://x/").is_err());
        assert!(PublicUrl::parse("/frontend-audio").is_err());
        assert!(PublicUrl::parse("not a url").is_err());
    }
}
