//! Property tests (proptest) of the two parsers every byte from a client
//! passes: the WebSocket frame tracker (`forward::tunnel::frames`) and the
//! path normalizer (`router::normalize_path`). The fuzz targets in `fuzz/`
//! search the same ground for longer; these run in every `cargo test`.

use proptest::prelude::*;
use shunt::testing::frames::{
    FrameError, Header, MAX_CONTROL_PAYLOAD, MAX_HEADER, OP_CLOSE, Tracker, parse, write_header,
};
use shunt::testing::normalize_path;

/// How a frame's length is written: the shortest form, or a longer one
/// (RFC 6455 asks for the shortest, but the tracker must follow any).
#[derive(Debug, Clone, Copy)]
enum Width {
    Shortest,
    Bits16,
    Bits64,
}

/// One generated frame.
#[derive(Debug, Clone)]
struct Spec {
    fin: bool,
    rsv: u8,
    opcode: u8,
    mask: Option<[u8; 4]>,
    len: u64,
    width: Width,
}

impl Spec {
    /// The header the tracker must report for this frame.
    fn header(&self) -> Header {
        let ext = match (self.width, self.len) {
            (Width::Bits64, _) => 8,
            (_, l) if l > 0xFFFF => 8,
            (Width::Bits16, _) => 2,
            (_, l) if l >= 126 => 2,
            _ => 0,
        };
        Header {
            fin: self.fin,
            rsv: self.rsv,
            opcode: self.opcode,
            mask: self.mask,
            len: self.len,
            header_len: 2 + ext + if self.mask.is_some() { 4 } else { 0 },
        }
    }

    /// The header's bytes, written here by hand (not by `write_header`), then
    /// `len` payload bytes.
    fn write(&self, out: &mut Vec<u8>) {
        let h = self.header();
        out.push(u8::from(self.fin) << 7 | self.rsv << 4 | self.opcode);
        let m = if self.mask.is_some() { 0x80 } else { 0 };
        match h.header_len - if self.mask.is_some() { 4 } else { 0 } {
            2 => out.push(m | self.len as u8),
            4 => {
                out.push(m | 126);
                out.extend_from_slice(&(self.len as u16).to_be_bytes());
            }
            _ => {
                out.push(m | 127);
                out.extend_from_slice(&self.len.to_be_bytes());
            }
        }
        out.extend(self.mask.iter().flatten());
        out.extend((0..self.len).map(|i| (i % 251) as u8));
    }
}

/// Payload lengths around every boundary of the length forms, and some others.
fn data_len() -> impl Strategy<Value = u64> {
    prop_oneof![
        prop::sample::select(vec![0u64, 1, 124, 125, 126, 127, 128, 65535, 65536, 65537]),
        0u64..300,
        0u64..70_000,
    ]
}

fn width() -> impl Strategy<Value = Width> {
    prop_oneof![
        4 => Just(Width::Shortest),
        1 => Just(Width::Bits16),
        1 => Just(Width::Bits64),
    ]
}

/// A data frame (continuation, text, binary or a reserved data opcode) or a
/// control frame other than Close (Close ends a stream: see `stream`).
fn spec() -> impl Strategy<Value = Spec> {
    let data = (0u8..8, data_len());
    let control = (9u8..16, 0u64..=125);
    (
        any::<bool>(),
        0u8..8,
        prop_oneof![data, control],
        any::<Option<[u8; 4]>>(),
        width(),
    )
        .prop_map(|(fin, rsv, (opcode, len), mask, width)| {
            // A 16-bit form cannot hold more than 0xFFFF.
            let width = match width {
                Width::Bits16 if len > 0xFFFF => Width::Bits64,
                w => w,
            };
            Spec {
                fin,
                rsv,
                opcode,
                mask,
                len,
                width,
            }
        })
}

/// A few frames, sometimes ended by a Close.
fn stream() -> impl Strategy<Value = Vec<Spec>> {
    (
        prop::collection::vec(spec(), 0..6),
        prop::option::of((any::<Option<[u8; 4]>>(), 0u64..=125)),
    )
        .prop_map(|(mut specs, close)| {
            if let Some((mask, len)) = close {
                specs.push(Spec {
                    fin: true,
                    rsv: 0,
                    opcode: OP_CLOSE,
                    mask,
                    len,
                    width: Width::Shortest,
                });
            }
            specs
        })
}

/// Span sizes to cut the stream into (cycled), each with whether its
/// payload part is passed by `skip` (as a splice moves it) rather than `feed`.
fn spans() -> impl Strategy<Value = Vec<(usize, bool)>> {
    prop::collection::vec((1usize..400, any::<bool>()), 1..8)
}

/// What tracking a stream gave: each header with its offset, the offsets at
/// which the tracker said it was at a boundary, and how it ended.
#[derive(Debug, Default)]
struct Tracked {
    headers: Vec<(u64, Header)>,
    boundaries: Vec<u64>,
    error: Option<FrameError>,
}

fn track(bytes: &[u8], spans: &[(usize, bool)]) -> Tracked {
    let mut t = Tracker::default();
    let mut out = Tracked::default();
    let mut pos = 0usize;
    let mut i = 0;
    while pos < bytes.len() {
        let (size, splice) = spans[i % spans.len()];
        i += 1;
        let mut span = &bytes[pos..(pos + size).min(bytes.len())];
        while !span.is_empty() {
            if t.at_boundary() {
                out.boundaries.push(pos as u64);
            }
            let left = t.payload_left();
            assert_eq!(t.until_boundary() == left, left > 0 || t.at_boundary());
            let n = if splice && left > 0 {
                let n = left.min(span.len() as u64);
                t.skip(n);
                n as usize
            } else {
                match t.feed(span) {
                    Ok((n, h)) => {
                        assert!(n > 0 && n <= span.len());
                        if let Some(h) = h {
                            out.headers
                                .push(((pos + n) as u64 - u64::from(h.header_len), h));
                            assert_eq!(t.payload_left(), h.len);
                        }
                        n
                    }
                    Err(e) => {
                        out.error = Some(e);
                        return out;
                    }
                }
            };
            span = &span[n..];
            pos += n;
        }
    }
    if t.at_boundary() {
        out.boundaries.push(pos as u64);
    }
    out
}

/// The stream's bytes, each frame's offset and header, and the boundaries.
fn serialise(specs: &[Spec]) -> (Vec<u8>, Vec<(u64, Header)>, Vec<u64>) {
    let mut bytes = Vec::new();
    let mut headers = Vec::new();
    let mut boundaries = vec![0];
    for s in specs {
        headers.push((bytes.len() as u64, s.header()));
        s.write(&mut bytes);
        boundaries.push(bytes.len() as u64);
    }
    (bytes, headers, boundaries)
}

proptest! {
    /// Any frame sequence cut anywhere: the tracker reports exactly the
    /// headers written, at their offsets, and a boundary exactly between frames.
    #[test]
    fn tracker_follows_any_frames_cut_anywhere(specs in stream(), spans in spans()) {
        let (bytes, headers, mut boundaries) = serialise(&specs);
        let got = track(&bytes, &spans);
        prop_assert_eq!(got.error, None);
        prop_assert_eq!(got.headers, headers);
        // The tracker is asked at every span start: each boundary it reports is
        // a real one, and it always reports the end of the stream.
        prop_assert!(got.boundaries.iter().all(|b| boundaries.contains(b)), "{:?}", got.boundaries);
        prop_assert_eq!(got.boundaries.last(), boundaries.last());
        // Cut at every boundary, the tracker sees each of them.
        if !bytes.is_empty() {
            let cut: Vec<(usize, bool)> = boundaries
                .windows(2)
                .map(|w| ((w[1] - w[0]) as usize, false))
                .collect();
            let mut whole = Tracker::default();
            let mut seen = vec![0];
            let mut pos = 0usize;
            for (size, _) in cut {
                let mut span = &bytes[pos..pos + size];
                while !span.is_empty() {
                    let (n, _) = whole.feed(span).expect("valid framing");
                    span = &span[n..];
                }
                pos += size;
                prop_assert!(whole.at_boundary());
                seen.push(pos as u64);
            }
            boundaries.dedup();
            seen.dedup();
            prop_assert_eq!(seen, boundaries);
        }
    }

    /// A control frame longer than 125 bytes, after valid frames, is the
    /// error `ControlTooLong`, however the bytes are cut.
    #[test]
    fn long_control_frame_is_an_error(
        before in prop::collection::vec(spec(), 0..3),
        opcode in 8u8..16,
        len in prop_oneof![126u64..=0xFFFF, 0x1_0000u64..(1 << 40), Just(u64::MAX >> 1)],
        mask in any::<Option<[u8; 4]>>(),
        wide in any::<bool>(),
        tail in prop::collection::vec(any::<u8>(), 0..20),
        spans in spans(),
    ) {
        let (mut bytes, headers, _) = serialise(&before);
        let m = if mask.is_some() { 0x80 } else { 0 };
        bytes.push(0x80 | opcode);
        if len <= 0xFFFF && !wide {
            bytes.push(m | 126);
            bytes.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            bytes.push(m | 127);
            bytes.extend_from_slice(&len.to_be_bytes());
        }
        bytes.extend(mask.iter().flatten());
        bytes.extend(tail);
        let got = track(&bytes, &spans);
        prop_assert_eq!(got.headers, headers);
        prop_assert_eq!(got.error, Some(FrameError::ControlTooLong(len)));
    }

    /// A 64-bit length with the top bit set is the error `LengthTopBit`.
    #[test]
    fn length_top_bit_is_an_error(
        before in prop::collection::vec(spec(), 0..3),
        b0 in any::<u8>(),
        low in any::<u64>(),
        mask in any::<Option<[u8; 4]>>(),
        spans in spans(),
    ) {
        let (mut bytes, headers, _) = serialise(&before);
        bytes.push(b0);
        bytes.push(if mask.is_some() { 0x80 | 127 } else { 127 });
        bytes.extend_from_slice(&(low | 1 << 63).to_be_bytes());
        bytes.extend(mask.iter().flatten());
        let got = track(&bytes, &spans);
        prop_assert_eq!(got.headers, headers);
        prop_assert_eq!(got.error, Some(FrameError::LengthTopBit));
    }

    /// `write_header` writes the shortest form, and `parse` reads back what it
    /// wrote (or refuses what RFC 6455 does not allow).
    #[test]
    fn written_headers_parse_back(
        b0 in any::<u8>(),
        len in prop_oneof![data_len(), any::<u64>()],
        mask in any::<Option<[u8; 4]>>(),
    ) {
        let mut head = [0; MAX_HEADER];
        let n = write_header(&mut head, b0, len, mask);
        let want = Spec {
            fin: b0 & 0x80 != 0,
            rsv: (b0 >> 4) & 0x7,
            opcode: b0 & 0x0F,
            mask,
            len,
            width: Width::Shortest,
        }
        .header();
        prop_assert_eq!(n, usize::from(want.header_len));
        let expect = if len >> 63 != 0 {
            Err(FrameError::LengthTopBit)
        } else if want.is_control() && len > MAX_CONTROL_PAYLOAD as u64 {
            Err(FrameError::ControlTooLong(len))
        } else {
            Ok(Some(want))
        };
        prop_assert_eq!(parse(&head[..n]), expect);
    }

    /// Any byte after a Close frame is the error `AfterClose`.
    #[test]
    fn bytes_after_close_are_an_error(
        specs in stream(),
        close_len in 0u64..=125,
        after in prop::collection::vec(any::<u8>(), 1..20),
        spans in spans(),
    ) {
        let mut specs: Vec<Spec> = specs.into_iter().filter(|s| s.opcode != OP_CLOSE).collect();
        specs.push(Spec { fin: true, rsv: 0, opcode: OP_CLOSE, mask: None, len: close_len, width: Width::Shortest });
        let (mut bytes, headers, _) = serialise(&specs);
        bytes.extend(after);
        let got = track(&bytes, &spans);
        prop_assert_eq!(got.headers, headers);
        prop_assert_eq!(got.error, Some(FrameError::AfterClose));
    }
}

/// Pieces of a path: what `normalize_path` treats specially, and ordinary text.
fn path_piece() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "/", "/", "/", ".", ".", "..", "\\", "%2e", "%2E", "%2f", "%2F", "%5c", "%5C", "%", "%2",
        "%25", "%41", "%7e", "%zz", "a", "b", "é", "~", "-", "_", "?", "%2e%2e", "...",
    ])
}

fn path() -> impl Strategy<Value = String> {
    prop::collection::vec(path_piece(), 0..16).prop_map(|p| p.concat())
}

/// One segment of a path given as segments.
#[derive(Debug, Clone)]
enum Seg {
    /// A name (never `.` or `..`), kept as written.
    Name(String),
    /// `.`, or an escaped form of it.
    Dot(&'static str),
    /// `..`, or an escaped form of it.
    DotDot(&'static str),
    /// Nothing between two slashes.
    Empty,
}

fn seg() -> impl Strategy<Value = Seg> {
    let name = prop::collection::vec(
        prop::sample::select(vec![
            "a", "B", "0", "~", "-", "_", "é", "%41", "%7E", "%25", ".", "%zz",
        ]),
        1..4,
    )
    .prop_filter_map("a dot segment is not a name", |p| {
        let n = p.concat();
        (n != "." && n != "..").then_some(Seg::Name(n))
    });
    prop_oneof![
        4 => name,
        1 => prop::sample::select(vec![".", "%2e", "%2E"]).prop_map(Seg::Dot),
        1 => prop::sample::select(vec!["..", "%2e%2e", ".%2E", "%2E."]).prop_map(Seg::DotDot),
        1 => Just(Seg::Empty),
    ]
}

/// A separator, as written: a slash, a backslash or an escape of either.
fn separator() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        4 => Just("/"),
        1 => prop::sample::select(vec!["\\", "%2f", "%2F", "%5c", "%5C"]),
    ]
}

proptest! {
    /// What `normalize_path` promises for any input: rooted, no dot segment,
    /// no empty segment (`//`), no backslash, no escaped dot or separator
    /// left, and normalizing again changes nothing.
    #[test]
    fn normalized_paths_are_clean_and_stable(raw in path()) {
        let norm = normalize_path(&raw);
        prop_assert!(norm.starts_with('/'), "{:?} -> {:?}", raw, norm);
        prop_assert!(!norm.contains("//"), "{:?} -> {:?}", raw, norm);
        prop_assert!(!norm.contains('\\'), "{:?} -> {:?}", raw, norm);
        for s in norm.split('/') {
            prop_assert!(s != "." && s != "..", "{:?} -> {:?}", raw, norm);
            let lower = s.to_ascii_lowercase();
            prop_assert!(
                !lower.contains("%2e") && !lower.contains("%2f") && !lower.contains("%5c"),
                "{:?} -> {:?}", raw, norm
            );
        }
        prop_assert_eq!(normalize_path(&norm), norm.clone(), "{:?}", raw);
    }

    /// Segments resolve as a stack: a name is pushed, `.` and empty segments
    /// vanish, `..` pops (never above the root); a trailing slash is kept
    /// when anything is left. Escaped dots and separators (`%2e`, `%2f`,
    /// `%5c`, any case, and `\`) count as the plain ones; every other escape
    /// (`%41`, `%25`, …) and every other byte is kept as sent.
    #[test]
    fn segments_resolve_as_a_stack(
        segs in prop::collection::vec((separator(), seg()), 0..10),
        trailing in prop::option::of(separator()),
    ) {
        let mut raw = String::new();
        let mut stack: Vec<&str> = Vec::new();
        for (sep, seg) in &segs {
            raw.push_str(sep);
            match seg {
                Seg::Name(n) => {
                    raw.push_str(n);
                    stack.push(n);
                }
                Seg::Dot(d) => raw.push_str(d),
                Seg::DotDot(d) => {
                    raw.push_str(d);
                    stack.pop();
                }
                Seg::Empty => {}
            }
        }
        // The last segment decides the trailing slash: one after it, or an
        // empty (or dot) last segment written as `.../`.
        let ends_in_separator = match (trailing, segs.last()) {
            (Some(sep), _) => {
                raw.push_str(sep);
                true
            }
            (None, Some((_, Seg::Empty))) => true,
            _ => false,
        };
        let mut want: String = stack.iter().map(|n| format!("/{n}")).collect();
        if want.is_empty() || ends_in_separator {
            want.push('/');
        }
        prop_assert_eq!(normalize_path(&raw), want, "{:?}", raw);
    }
}
