//! The dashboard at `GET /` of the admin listener: one HTML page, its script
//! and its style sheet, embedded in the binary.
//!
//! The page is read-only and fetches `/status`, `/calls` and `/readyz` from
//! the same origin. Every response here carries
//! `Content-Security-Policy: default-src 'self'`, which is why the script and
//! the style sheet are separate same-origin responses rather than inline: the
//! policy blocks inline scripts and styles, so a value that slipped into the
//! page as markup could still not run.

use http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue, X_CONTENT_TYPE_OPTIONS};
use http::{Response, StatusCode};

use crate::body::{Body, full};

/// The policy sent with the page and its assets.
pub(crate) const CSP: &str = "default-src 'self'";

const HTML: &str = include_str!("dashboard.html");
const JS: &str = include_str!("dashboard.js");
const CSS: &str = include_str!("dashboard.css");

/// The embedded file served at `path`, if any: `/`, `/dashboard.js`, `/dashboard.css`.
pub fn asset(path: &str) -> Option<Response<Body>> {
    let (body, content_type) = match path {
        "/" => (HTML, "text/html; charset=utf-8"),
        "/dashboard.js" => (JS, "text/javascript; charset=utf-8"),
        "/dashboard.css" => (CSS, "text/css; charset=utf-8"),
        _ => return None,
    };
    let mut resp = Response::new(full(body));
    *resp.status_mut() = StatusCode::OK;
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        http::header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(
        http::header::X_FRAME_OPTIONS,
        HeaderValue::from_static("DENY"),
    );
    headers.insert(
        http::header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Some(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_and_assets_carry_the_policy() {
        for path in ["/", "/dashboard.js", "/dashboard.css"] {
            let resp = asset(path).expect(path);
            assert_eq!(resp.status(), StatusCode::OK);
            assert_eq!(resp.headers()["content-security-policy"], CSP);
            assert!(resp.headers().get("access-control-allow-origin").is_none());
        }
        assert!(asset("/other").is_none());
    }

    #[test]
    fn page_has_no_inline_script_or_style() {
        // The CSP would block them: everything must come from the two assets.
        assert!(
            !HTML.contains("<script>"),
            "inline <script> in dashboard.html"
        );
        assert!(!HTML.contains("<style"), "inline <style> in dashboard.html");
        assert!(
            !HTML.contains("style=\""),
            "inline style= in dashboard.html"
        );
        for (i, _) in HTML.match_indices(" on") {
            let name: String = HTML[i + 1..]
                .chars()
                .take_while(char::is_ascii_alphabetic)
                .collect();
            let after = &HTML[i + 1 + name.len()..];
            assert!(
                !after.starts_with('='),
                "inline event handler {name}= in dashboard.html"
            );
        }
        assert!(HTML.contains("src=\"/dashboard.js\""));
        assert!(HTML.contains("href=\"/dashboard.css\""));
    }

    #[test]
    fn script_never_parses_data_as_markup() {
        for sink in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
        ] {
            assert!(!JS.contains(sink), "dashboard.js uses {sink}");
        }
    }
}
