//! Security policy values: IP lists, authentication (tokens, JWTs and their
//! keys: `auth`, `jwt`, `keys`; what is forwarded of an accepted credential:
//! `credential`), Origin rules, rates and connection caps, and the refusals
//! they produce.
//!
//! These are the value types the configuration parses ([`crate::config`]
//! builds them into its `GlobalPolicy` and `RoutePolicy`), each with the
//! check of its own kind. The request checkpoint that runs them in order,
//! per connection and per request, is [`crate::checkpoint`], a stage above
//! `config`, so the request path never dips under the configuration.
//! Refusals are [`Denied`] values; [`crate::response`] turns them into
//! 401/403/405/429 answers.

pub(crate) mod auth;
pub(crate) mod balancer;
pub(crate) mod credential;
pub(crate) mod ip;
pub(crate) mod jwt;
pub(crate) mod keys;
pub(crate) mod origin;
pub(crate) mod rate;
pub(crate) mod target;

use auth::AuthError;
use ip::IpRefusal;
use origin::OriginRefusal;
use rate::LimitExceeded;

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
