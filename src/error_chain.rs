//! How an error is printed where it is reported: its message, then each
//! cause, joined by `: ` (what `{:#}` prints for an `anyhow` chain).
//!
//! The crate's errors follow one convention: a variant that keeps its cause
//! as `#[source]` (or `#[from]`) does not repeat the cause in its own
//! message. So `Display` alone says what failed at this level, and whoever
//! reports the error (a log line, a response body, `/status`, the doctor's
//! report) prints the whole chain with [`ErrorChain`] or [`chain`], each
//! cause once. A leaf: it imports nothing of the crate, so every module can
//! report through it.

use std::error::Error;
use std::fmt;

/// Displays an error and its causes, once each: `error = %ErrorChain(&e)`
/// in a tracing field, `format!("{}", ErrorChain(&e))` in a body.
///
/// A [`hyper::Error`] ends the chain: it is shown by its description, as
/// hyper's own `Display` shows it, without the inner cause it may carry
/// (its I/O error), so what reaches bodies, logs and `/status` reads as it
/// always has.
#[derive(Clone, Copy)]
pub(crate) struct ErrorChain<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut current = self.0;
        write!(f, "{current}")?;
        while !current.is::<hyper::Error>() {
            let Some(cause) = current.source() else {
                break;
            };
            write!(f, ": {cause}")?;
            current = cause;
        }
        Ok(())
    }
}

impl fmt::Debug for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// [`ErrorChain`] as a `String`, for messages that leave the process as
/// text (a failed reload in `/status`, a refusal's body).
pub(crate) fn chain(e: &(dyn Error + 'static)) -> String {
    ErrorChain(e).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] Inner);

    #[derive(Debug, thiserror::Error)]
    #[error("inner")]
    struct Inner(#[source] std::io::Error);

    /// Each cause once, in order, joined by `: `.
    #[test]
    fn prints_every_cause_once() {
        let e = Outer(Inner(std::io::Error::other("leaf")));
        assert_eq!(chain(&e), "outer: inner: leaf");
        assert_eq!(format!("{}", ErrorChain(&e.0)), "inner: leaf");
    }
}
