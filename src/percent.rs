//! Percent-coding (RFC 3986 §2.1): the one decoder behind routing's path
//! normalization and the policy's query parameters, and the encoder
//! `shunt doctor` puts a token into a query with.
//!
//! Decoding is lenient on purpose: an escape that is not `%` and two hex
//! digits is kept as sent, and so is the whole text when the decoded bytes
//! are not UTF-8. A proxy that rejected such input would refuse requests the
//! upstream accepts; one that guessed would route differently from it.

use std::borrow::Cow;

/// Decode every `%XX` escape; an invalid escape or a non-UTF-8 result is kept as sent.
pub(crate) fn decode(text: &str) -> Cow<'_, str> {
    decode_where(text, |_| true)
}

/// Decode only the escapes whose byte `wanted` accepts; the others stay as
/// sent. Routing uses it to reveal the dots and separators an escape could
/// hide, without decoding anything else of the path.
pub(crate) fn decode_where(text: &str, wanted: impl Fn(u8) -> bool) -> Cow<'_, str> {
    if !text.contains('%') {
        return Cow::Borrowed(text);
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = |b: u8| (b as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                // Two hex digits are at most 0xff: the cast cannot truncate.
                let byte = (h * 16 + l) as u8;
                if wanted(byte) {
                    out.push(byte);
                    i += 3;
                    continue;
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    match String::from_utf8(out) {
        Ok(s) => Cow::Owned(s),
        Err(_) => Cow::Borrowed(text),
    }
}

/// Encode every byte but the RFC 3986 unreserved characters, for a query value.
pub(crate) fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_round_trips_through_decode() {
        let value = "a b/c?d=é&~";
        assert_eq!(encode(value), "a%20b%2Fc%3Fd%3D%C3%A9%26~");
        assert_eq!(decode(&encode(value)), value);
    }

    #[test]
    fn decoding() {
        assert_eq!(decode("a%20b"), "a b");
        assert_eq!(decode("100%"), "100%");
        assert_eq!(decode("%zz"), "%zz");
        assert_eq!(decode("%ff"), "%ff");
    }

    #[test]
    fn decoding_only_wanted_bytes() {
        let dots = |b: u8| b == b'.';
        assert_eq!(decode_where("/a/%2e%2E/%41", dots), "/a/../%41");
        assert_eq!(decode_where("/plain", dots), "/plain");
    }
}
