//! The Prometheus text exposition format, as far as shunt writes it.
//!
//! A leaf side module: [`crate::stats`] (tunnels, requests) and
//! [`crate::calls`] (per-route call figures) both write `/metrics` lines, and
//! both need the same label escaping. Keeping it here rather than in either
//! of them means neither imports the other for it.

/// Escape a Prometheus label value: backslash, double quote and newline are
/// the only characters the text format requires escaping inside `"…"`.
pub(crate) fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn escapes_what_the_text_format_requires() {
        assert_eq!(escape(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape("x\ny"), "x\\ny");
        assert_eq!(escape("/ws route"), "/ws route");
    }
}
