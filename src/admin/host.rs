//! Which `Host` the admin listener answers: the guard against DNS rebinding.
//!
//! A web page on any site can make the operator's browser send requests to
//! `127.0.0.1:9901` under a name the attacker controls (DNS rebinding). The
//! browser then sends that name in `Host`. So the admin listener serves only
//! requests whose `Host` is an IP literal, `localhost`, or a name the operator
//! listed in `admin_hosts`; everything else gets 403 before any handler runs.
//! Programs that talk to the API (`shunt healthcheck`, probes, Prometheus)
//! send an IP literal and are not affected.

use std::net::IpAddr;

/// Whether a request with this `Host` value (absent: `None`) may be served.
///
/// A request without `Host` is served: browsers always send one, so it cannot
/// come from a rebinding page.
pub(crate) fn allowed(host: Option<&str>, admin_hosts: &[String]) -> bool {
    let Some(host) = host else {
        return true;
    };
    let name = strip_port(host.trim());
    if name.is_empty() {
        return false;
    }
    if name.parse::<IpAddr>().is_ok() {
        return true;
    }
    let name = name.strip_suffix('.').unwrap_or(name);
    name.eq_ignore_ascii_case("localhost")
        || admin_hosts.iter().any(|allowed| {
            let allowed = allowed.strip_suffix('.').unwrap_or(allowed);
            allowed.eq_ignore_ascii_case(name)
        })
}

/// Whether a request that changes state (`POST /reload`) comes from a page on
/// another site, and must be refused.
///
/// The `Host` guard stops a rebinding page from *reading* the API, but a
/// page on any site can still make the browser send a simple cross-origin
/// `POST` to `http://127.0.0.1:9901/reload` (the browser only hides the
/// answer). Browsers say where such a request comes from: `Sec-Fetch-Site`
/// (`cross-site`, `same-site`) and `Origin`. A request naming another origin
/// than the one it was sent to is refused; one without either header (curl,
/// scripts, `shunt healthcheck`) is not a browser's and is served.
pub(crate) fn foreign_origin(
    origin: Option<&str>,
    fetch_site: Option<&str>,
    host: Option<&str>,
) -> bool {
    if let Some(site) = fetch_site
        && matches!(site.trim(), "cross-site" | "same-site")
    {
        return true;
    }
    let Some(origin) = origin.map(str::trim) else {
        return false;
    };
    let Some((scheme, authority)) = origin.split_once("://") else {
        // `Origin: null` (a sandboxed frame, a redirect) or garbage.
        return true;
    };
    let Some(host) = host.map(str::trim) else {
        return true;
    };
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "http" => "80",
        "https" => "443",
        _ => return true,
    };
    let with_port = |a: &str| {
        if strip_port(a).len() == a.len() {
            format!("{a}:{default_port}")
        } else {
            a.to_owned()
        }
    };
    !with_port(authority).eq_ignore_ascii_case(&with_port(host))
}

/// `host` without its `:port`; `[v6]` without brackets. A bare IPv6
/// address (not valid in `Host`, but unambiguous) is kept whole.
fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((addr, tail))
                if tail.is_empty() || tail.strip_prefix(':').is_some_and(is_port) =>
            {
                addr
            }
            // Not `[addr]` or `[addr]:port`: keep it whole so it matches nothing.
            _ => host,
        };
    }
    match host.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') && is_port(port) => name,
        _ => host,
    }
}

/// 1 to 5 digits.
fn is_port(p: &str) -> bool {
    !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(host: &str) -> bool {
        allowed(Some(host), &["dash.internal".to_owned()])
    }

    #[test]
    fn ip_literals_with_and_without_port() {
        for host in [
            "127.0.0.1",
            "127.0.0.1:9901",
            "10.1.2.3:80",
            "[::1]",
            "[::1]:9901",
            "::1",
            "[fe80::1]:9901",
        ] {
            assert!(ok(host), "{host} should be allowed");
        }
    }

    #[test]
    fn localhost_and_listed_names() {
        for host in [
            "localhost",
            "localhost:9901",
            "LocalHost",
            "localhost.",
            "dash.internal",
            "DASH.internal:9901",
        ] {
            assert!(ok(host), "{host} should be allowed");
        }
    }

    #[test]
    fn other_names_are_refused() {
        for host in [
            "attacker.example",
            "attacker.example:9901",
            "localhost.attacker.example",
            "127.0.0.1.attacker.example",
            "dash.internal.attacker.example",
            "",
            ":9901",
            "[::1]x",
            "[attacker.example]:9901",
            "localhost:99999999",
        ] {
            assert!(!ok(host), "{host:?} should be refused");
        }
    }

    #[test]
    fn cross_site_posts_are_foreign_and_scripts_are_not() {
        let h = Some("127.0.0.1:9901");
        // curl, shunt healthcheck, scripts: no browser headers.
        assert!(!foreign_origin(None, None, h));
        // The dashboard itself (same origin), with and without the default port.
        assert!(!foreign_origin(
            Some("http://127.0.0.1:9901"),
            Some("same-origin"),
            h
        ));
        assert!(!foreign_origin(
            Some("http://localhost"),
            None,
            Some("localhost:80")
        ));
        assert!(!foreign_origin(None, Some("none"), h));
        for (origin, site) in [
            (Some("https://attacker.example"), None),
            (Some("http://127.0.0.1:8080"), None),
            (Some("null"), None),
            (None, Some("cross-site")),
            (None, Some("same-site")),
            (Some("http://127.0.0.1:9901"), Some("cross-site")),
        ] {
            assert!(foreign_origin(origin, site, h), "{origin:?} {site:?}");
        }
        assert!(foreign_origin(Some("http://127.0.0.1:9901"), None, None));
    }

    #[test]
    fn no_host_is_served() {
        assert!(allowed(None, &[]));
    }
}
