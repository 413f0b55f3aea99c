//! The access line: one per request, written straight into the calling
//! thread's batch ([`super::batch`]) rather than through `tracing`.
//!
//! Why: an event through `tracing-subscriber` pays for the dispatch, the
//! filter's per-event check, a field visitor per field, `fmt::Write`
//! adapters and the timestamp's formatting; on plain HTTP that cost about a
//! sixth of the throughput. Here the filter is asked once per request
//! ([`tracing::enabled!`], a cached answer unless `RUST_LOG` has per-span
//! directives), and the line is formatted in place into the thread's buffer:
//! no allocation once the buffer has grown.
//!
//! The line is exactly what `tracing-subscriber` writes for the same event,
//! in both formats (a unit test below holds the two side by side):
//!
//! ```text
//! 2026-01-01T00:00:00.000000Z  INFO shunt::access: request peer=… via=… method=… path=… status=… route=… upstream=… user=… websocket=… ms=…
//! {"timestamp":"…","level":"INFO","message":"request","peer":"…",…,"ms":0,"target":"shunt::access"}
//! ```
//!
//! Coloured pretty lines (stderr a terminal), and a process whose global
//! subscriber is not shunt's own, still go through `tracing`
//! ([`Direct`] is not installed for them).

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::SystemTime;

use tracing_appender::non_blocking::NonBlocking;

use super::ACCESS_TARGET;
use super::batch::Batcher;
use crate::ip_text::{MAX_IP_TEXT, ip_text};

/// One request's access line.
#[derive(Debug)]
pub(crate) struct Access<'a> {
    /// The client (the one a balancer vouched for, behind one).
    pub peer: SocketAddr,
    /// The balancer, if any (`-` in the line).
    pub via: Option<SocketAddr>,
    /// The request method.
    pub method: &'a str,
    /// The target as sent, token redacted.
    pub path: &'a str,
    /// The answer's status code.
    pub status: u16,
    /// The route's label, or `-`.
    pub route: &'a str,
    /// The upstream's name, or `-`.
    pub upstream: &'a str,
    /// The authenticated caller (JWT `sub`), or `-`.
    pub user: &'a str,
    /// Whether the request was a WebSocket handshake.
    pub websocket: bool,
    /// Time to the answer, in milliseconds.
    pub ms: u64,
}

/// The two line formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Form {
    /// `tracing-subscriber`'s full format, without colour.
    Pretty,
    /// `tracing-subscriber`'s JSON format, fields flattened.
    Json,
}

/// Where access lines go when shunt's own subscriber is installed.
#[derive(Debug)]
pub(crate) struct Direct {
    /// The format `--log-format` chose.
    pub(crate) form: Form,
    /// The per-thread batches of access lines.
    pub(crate) batcher: Arc<Batcher<NonBlocking>>,
}

/// Log one request: into the thread's batch when [`Direct`] is installed,
/// else as a `tracing` event; nothing when `RUST_LOG` silences
/// `shunt::access` at `info`.
pub(crate) fn log(line: &Access<'_>) {
    if !tracing::enabled!(target: ACCESS_TARGET, tracing::Level::INFO) {
        return;
    }
    match super::DIRECT.get() {
        Some(direct) => {
            let now = SystemTime::now();
            // A full queue drops and counts; nothing else can fail.
            let _ = direct
                .batcher
                .push(|buf| write(buf, direct.form, now, line));
        }
        None => event(line),
    }
}

/// `line` as a `tracing` event.
fn event(line: &Access<'_>) {
    tracing::info!(
        target: ACCESS_TARGET,
        peer = %line.peer,
        via = %Via(line.via),
        method = %line.method,
        path = %line.path,
        status = line.status,
        route = %line.route,
        upstream = %line.upstream,
        user = %line.user,
        websocket = line.websocket,
        ms = line.ms,
        "request"
    );
}

/// `via` as the line shows it: the address, or `-`.
struct Via(Option<SocketAddr>);

impl std::fmt::Display for Via {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(via) => via.fmt(f),
            None => f.write_str("-"),
        }
    }
}

/// Append `line` to `buf` in `form`, stamped `now`, ending in a newline.
fn write(buf: &mut Vec<u8>, form: Form, now: SystemTime, line: &Access<'_>) {
    // Writes to a Vec cannot fail.
    let _ = match form {
        Form::Pretty => pretty(buf, now, line),
        Form::Json => json(buf, now, line),
    };
}

fn pretty(buf: &mut Vec<u8>, now: SystemTime, l: &Access<'_>) -> std::io::Result<()> {
    timestamp(buf, now);
    buf.extend_from_slice(b"  INFO shunt::access: request peer=");
    address(buf, Some(l.peer))?;
    buf.extend_from_slice(b" via=");
    address(buf, l.via)?;
    for (key, value) in [(&b" method="[..], l.method), (b" path=", l.path)] {
        buf.extend_from_slice(key);
        text(buf, value);
    }
    buf.extend_from_slice(b" status=");
    number(buf, u64::from(l.status));
    for (key, value) in [
        (&b" route="[..], l.route),
        (b" upstream=", l.upstream),
        (b" user=", l.user),
    ] {
        buf.extend_from_slice(key);
        text(buf, value);
    }
    buf.extend_from_slice(if l.websocket {
        b" websocket=true ms="
    } else {
        b" websocket=false ms="
    });
    number(buf, l.ms);
    buf.push(b'\n');
    Ok(())
}

/// `value` as it is, except control characters, written escaped (`\n`,
/// `\u{1}`): a JWT's `sub` or a path holding a newline cannot forge a line
/// of its own. (tracing's fmt layer wrote them raw.)
fn text(buf: &mut Vec<u8>, value: &str) {
    if !value.chars().any(char::is_control) {
        buf.extend_from_slice(value.as_bytes());
        return;
    }
    for c in value.chars() {
        if c.is_control() {
            buf.extend(c.escape_default().map(|e| e as u8));
        } else {
            let mut utf8 = [0; 4];
            buf.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
        }
    }
}

fn json(buf: &mut Vec<u8>, now: SystemTime, l: &Access<'_>) -> std::io::Result<()> {
    buf.extend_from_slice(b"{\"timestamp\":\"");
    timestamp(buf, now);
    // The addresses need no escaping; every other string does.
    buf.extend_from_slice(b"\",\"level\":\"INFO\",\"message\":\"request\",\"peer\":\"");
    address(buf, Some(l.peer))?;
    buf.extend_from_slice(b"\",\"via\":\"");
    address(buf, l.via)?;
    buf.push(b'"');
    for (key, value) in [(&b",\"method\":"[..], l.method), (b",\"path\":", l.path)] {
        buf.extend_from_slice(key);
        serde_json::to_writer(&mut *buf, value)?;
    }
    buf.extend_from_slice(b",\"status\":");
    number(buf, u64::from(l.status));
    for (key, value) in [
        (&b",\"route\":"[..], l.route),
        (b",\"upstream\":", l.upstream),
        (b",\"user\":", l.user),
    ] {
        buf.extend_from_slice(key);
        serde_json::to_writer(&mut *buf, value)?;
    }
    buf.extend_from_slice(if l.websocket {
        b",\"websocket\":true,\"ms\":"
    } else {
        b",\"websocket\":false,\"ms\":"
    });
    number(buf, l.ms);
    buf.extend_from_slice(b",\"target\":\"shunt::access\"}\n");
    Ok(())
}

/// An address as `Display` writes it, or `-`; IPv4 by hand (`fmt` costs
/// more than the rest of the line).
fn address(buf: &mut Vec<u8>, addr: Option<SocketAddr>) -> std::io::Result<()> {
    match addr {
        None => buf.push(b'-'),
        Some(SocketAddr::V4(v4)) => {
            let mut text = [0; MAX_IP_TEXT];
            buf.extend_from_slice(ip_text(IpAddr::V4(*v4.ip()), &mut text));
            buf.push(b':');
            number(buf, u64::from(v4.port()));
        }
        Some(v6) => write!(buf, "{v6}")?,
    }
    Ok(())
}

/// `n` in decimal.
fn number(buf: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf.extend_from_slice(&digits[at..]);
}

/// `now` as `tracing-subscriber` stamps it: RFC 3339, UTC, microseconds
/// (`2026-01-01T00:00:00.000000Z`).
fn timestamp(buf: &mut Vec<u8>, now: SystemTime) {
    let since = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = since.as_secs();
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let of_day = secs % 86_400;
    let mut out = *b"0000-00-00T00:00:00.000000Z";
    let mut put = |at: usize, width: usize, mut n: u64| {
        for i in (at..at + width).rev() {
            out[i] = b'0' + (n % 10) as u8;
            n /= 10;
        }
    };
    put(0, 4, year.clamp(0, 9999) as u64);
    put(5, 2, month);
    put(8, 2, day);
    put(11, 2, of_day / 3600);
    put(14, 2, of_day / 60 % 60);
    put(17, 2, of_day % 60);
    put(20, 6, u64::from(since.subsec_micros()));
    buf.extend_from_slice(&out);
}

/// Year, month (1–12) and day (1–31) of a day counted from 1970-01-01
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u64, u64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u64;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u64;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use super::*;

    /// A writer `tracing-subscriber` formats into, for comparison.
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl Write for Capture {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
        type Writer = Capture;
        fn make_writer(&'a self) -> Capture {
            self.clone()
        }
    }

    fn stamp(now: SystemTime) -> String {
        let mut buf = Vec::new();
        timestamp(&mut buf, now);
        String::from_utf8(buf).expect("utf-8")
    }

    /// What `tracing-subscriber` writes for `line`, with its timestamp
    /// (checked to lie between two of ours) replaced by ours of `at`.
    fn reference(form: Form, line: &Access<'_>, at: SystemTime) -> String {
        let capture = Capture::default();
        let builder = tracing_subscriber::fmt()
            .with_writer(capture.clone())
            .with_ansi(false);
        let before = stamp(SystemTime::now());
        match form {
            Form::Pretty => {
                tracing::subscriber::with_default(builder.finish(), || event(line));
            }
            Form::Json => {
                let subscriber = builder.json().flatten_event(true).finish();
                tracing::subscriber::with_default(subscriber, || event(line));
            }
        }
        let after = stamp(SystemTime::now());
        let text = String::from_utf8(capture.0.lock().expect("lock").clone()).expect("utf-8");
        let at_stamp = match form {
            Form::Pretty => 0,
            Form::Json => text.find("\"timestamp\":\"").expect("a timestamp") + 13,
        };
        let theirs = &text[at_stamp..at_stamp + before.len()];
        assert!(
            before.as_str() <= theirs && theirs <= after.as_str(),
            "{before} <= {theirs} <= {after}"
        );
        format!(
            "{}{}{}",
            &text[..at_stamp],
            stamp(at),
            &text[at_stamp + before.len()..]
        )
    }

    fn ours(form: Form, line: &Access<'_>, at: SystemTime) -> String {
        let mut buf = Vec::new();
        write(&mut buf, form, at, line);
        String::from_utf8(buf).expect("utf-8")
    }

    #[test]
    fn lines_are_what_tracing_subscriber_writes() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_micros(1_765_000_000_123_456);
        let plain = Access {
            peer: "127.0.0.1:40000".parse().expect("addr"),
            via: None,
            method: "GET",
            path: "/page?x=1",
            status: 200,
            route: "-",
            upstream: "direct",
            user: "-",
            websocket: false,
            ms: 0,
        };
        let odd = Access {
            peer: "[::1]:0".parse().expect("addr"),
            via: Some("10.0.0.9:443".parse().expect("addr")),
            method: "PATCH",
            path: "/a\"b\\c\u{1}\té\u{7f}?token=REDACTED",
            status: 101,
            route: "calls",
            upstream: "nginx",
            user: "alice \"the\" agent",
            websocket: true,
            ms: 123_456,
        };
        let wide = Access {
            peer: "255.0.10.1:65535".parse().expect("addr"),
            via: Some("[2001:db8::1%7]:8443".parse().expect("addr")),
            status: 503,
            ms: u64::MAX,
            ..plain
        };
        for line in [&plain, &odd, &wide] {
            for form in [Form::Pretty, Form::Json] {
                if form == Form::Pretty && std::ptr::eq(line, &odd) {
                    continue; // control characters: escaped here, raw in tracing
                }
                assert_eq!(ours(form, line, at), reference(form, line, at), "{form:?}");
            }
        }
        // A control character cannot start a line of its own.
        let forged = Access {
            user: "alice\n2026-01-01T00:00:00.000000Z  INFO shunt::access: request peer=forged",
            ..odd
        };
        let pretty = ours(Form::Pretty, &forged, at);
        assert_eq!(pretty.matches('\n').count(), 1, "{pretty}");
        assert!(pretty.ends_with('\n'), "{pretty}");
        assert!(pretty.contains("user=alice\\n2026"), "{pretty}");
        assert!(
            pretty.contains("path=/a\"b\\c\\u{1}\\té\\u{7f}?token=REDACTED"),
            "{pretty}"
        );
        let json: serde_json::Value =
            serde_json::from_str(&ours(Form::Json, &odd, at)).expect("json");
        assert_eq!(json["path"], odd.path);
        assert_eq!(json["ms"], 123_456);
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_microseconds() {
        let at = |micros: u64| stamp(SystemTime::UNIX_EPOCH + Duration::from_micros(micros));
        assert_eq!(at(0), "1970-01-01T00:00:00.000000Z");
        // A leap day, and the last microsecond of a leap year.
        assert_eq!(at(951_782_400_000_001), "2000-02-29T00:00:00.000001Z");
        assert_eq!(at(1_609_459_199_999_999), "2020-12-31T23:59:59.999999Z");
        assert_eq!(at(4_107_542_400_000_000), "2100-03-01T00:00:00.000000Z");
    }
}
