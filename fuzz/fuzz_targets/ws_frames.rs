//! The WebSocket frame parser (`forward::tunnel::frames`) on arbitrary bytes.
//!
//! Input: byte 0 gives how many span sizes follow (0 to 15); each next byte
//! is one span size (low 7 bits + 1; the top bit: pass that span's payload
//! with `Tracker::skip`, as a splice would); the rest is the stream, fed to
//! a `Tracker` in those spans (cycled). The same stream walked at once with
//! `parse` gives the reference: the tracker must yield the same headers at
//! the same offsets, fail with the same error, and report `payload_left`,
//! `until_boundary` and `at_boundary` as the reference's frame map says at
//! every byte offset it reaches.
//!
//! The first bytes also drive a round trip: `write_header` and
//! `control_frame` (with `close_payload`) → `parse` → `unmask_into` gives
//! back what was written.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shunt::testing::frames::{
    FrameError, Header, MAX_CONTROL_FRAME, MAX_CONTROL_PAYLOAD, MAX_HEADER, OP_CLOSE, Tracker,
    close_payload, control_frame, header_len, parse, unmask_into, write_header,
};

/// The stream walked at once: each frame's start offset and header, then
/// how the walk ended.
struct Reference {
    frames: Vec<(u128, Header)>,
    /// Offset where an incomplete header begins (the stream ends in it).
    partial: Option<u128>,
    /// The error the walk stopped at, and the offset of the frame it came from.
    error: Option<(u128, FrameError)>,
}

fn reference(stream: &[u8]) -> Reference {
    let mut r = Reference {
        frames: Vec::new(),
        partial: None,
        error: None,
    };
    let mut at: u128 = 0;
    let mut closed = false;
    while at < stream.len() as u128 {
        if closed {
            r.error = Some((at, FrameError::AfterClose));
            break;
        }
        let here = &stream[at as usize..];
        match parse(here) {
            Err(e) => {
                r.error = Some((at, e));
                break;
            }
            Ok(None) => {
                r.partial = Some(at);
                break;
            }
            Ok(Some(h)) => {
                assert_eq!(usize::from(h.header_len), header_len(here[1]));
                assert!(usize::from(h.header_len) <= MAX_HEADER);
                r.frames.push((at, h));
                closed = h.opcode == OP_CLOSE;
                at += u128::from(h.header_len) + u128::from(h.len);
            }
        }
    }
    r
}

/// What the tracker must report after `pos` bytes of `stream`:
/// (payload_left, until_boundary, at_boundary).
fn expected_state(stream: &[u8], r: &Reference, pos: u128) -> (u64, u64, bool) {
    // The frame (or partial header) that `pos` lies in or starts.
    let start = r
        .frames
        .iter()
        .map(|(s, _)| *s)
        .chain(r.partial)
        .chain(r.error.map(|(at, _)| at))
        .rfind(|s| *s <= pos);
    let Some(start) = start else {
        return (0, 0, true);
    };
    if start == pos {
        return (0, 0, true);
    }
    let into = pos - start;
    let hl = match r.frames.iter().find(|(s, _)| *s == start) {
        Some((_, h)) => u128::from(h.header_len),
        None if into >= 2 => header_len(stream[start as usize + 1]) as u128,
        None => 2,
    };
    if into < hl {
        let until = if into == 1 { 1 } else { (hl - into) as u64 };
        return (0, until, false);
    }
    let (_, h) = r.frames.iter().find(|(s, _)| *s == start).expect("a frame");
    let end = start + hl + u128::from(h.len);
    if pos == end {
        return (0, 0, true);
    }
    let left = u64::try_from(end - pos).expect("left fits");
    (left, left, false)
}

fn check_state(t: &Tracker, stream: &[u8], r: &Reference, pos: u128) {
    let (left, until, boundary) = expected_state(stream, r, pos);
    assert_eq!(t.payload_left(), left, "payload_left at {pos}");
    assert_eq!(t.until_boundary(), until, "until_boundary at {pos}");
    assert_eq!(t.at_boundary(), boundary, "at_boundary at {pos}");
}

fn track(spans: &[u8], stream: &[u8]) {
    let r = reference(stream);
    let mut t = Tracker::default();
    let mut got: Vec<(u128, Header)> = Vec::new();
    let mut pos: u128 = 0;
    let mut i = 0;
    let mut error = None;
    'outer: while pos < stream.len() as u128 {
        let s = spans.get(i % spans.len().max(1)).copied().unwrap_or(0xFF);
        i += 1;
        let size = usize::from(s & 0x7F) + 1;
        let splice = s & 0x80 != 0;
        let begin = pos as usize;
        let mut span = &stream[begin..(begin + size).min(stream.len())];
        while !span.is_empty() {
            check_state(&t, stream, &r, pos);
            let left = t.payload_left();
            if splice && left > 0 {
                let n = left.min(span.len() as u64);
                t.skip(n);
                span = &span[n as usize..];
                pos += u128::from(n);
                continue;
            }
            match t.feed(span) {
                Err(e) => {
                    error = Some(e);
                    break 'outer;
                }
                Ok((n, h)) => {
                    assert!(n > 0 && n <= span.len(), "feed took {n} of {}", span.len());
                    if left > 0 {
                        assert_eq!(n as u64, left.min(span.len() as u64));
                        assert!(h.is_none());
                    }
                    pos += n as u128;
                    span = &span[n..];
                    if let Some(h) = h {
                        got.push((pos - u128::from(h.header_len), h));
                    }
                }
            }
        }
    }
    assert_eq!(got, r.frames, "headers");
    match (error, r.error) {
        (None, None) => {
            assert_eq!(pos, stream.len() as u128);
            check_state(&t, stream, &r, pos);
        }
        (Some(e), Some((at, want))) => {
            assert_eq!(e, want);
            // The tracker fails on the bytes of the frame the walk failed at.
            assert!(pos >= at, "failed at {pos}, before the bad frame at {at}");
        }
        (e, want) => panic!("tracker {e:?}, reference {want:?}"),
    }
    // A Close frame among the headers marks the tracker closed.
    if r.error.is_none() {
        assert_eq!(
            t.closed(),
            r.frames.iter().any(|(_, h)| h.opcode == OP_CLOSE)
        );
    }
}

fn round_trip(data: &[u8]) {
    let mut p = [0u8; 15];
    let n = data.len().min(p.len());
    p[..n].copy_from_slice(&data[..n]);
    let b0 = p[0];
    // Favour short lengths and the 126/127 boundaries: the flag byte picks
    // the width of the length.
    let raw = u64::from_be_bytes([p[1], p[2], p[3], p[4], p[5], p[6], p[7], p[8]]);
    let len = match p[13] & 0x3 {
        0 => raw & 0x7F,
        1 => raw & 0x1FFFF,
        _ => raw,
    };
    let mask = (p[13] & 0x4 != 0).then_some([p[9], p[10], p[11], p[12]]);
    let mut head = [0; MAX_HEADER];
    let at = write_header(&mut head, b0, len, mask);
    let short = if len < 126 {
        2
    } else if len <= 0xFFFF {
        4
    } else {
        10
    };
    assert_eq!(at, short + if mask.is_some() { 4 } else { 0 });
    let want = Header {
        fin: b0 & 0x80 != 0,
        rsv: (b0 >> 4) & 0x7,
        opcode: b0 & 0x0F,
        mask,
        len,
        header_len: at as u8,
    };
    let parsed = parse(&head[..at]);
    if len >> 63 != 0 {
        assert_eq!(parsed, Err(FrameError::LengthTopBit));
    } else if want.is_control() && len > MAX_CONTROL_PAYLOAD as u64 {
        assert_eq!(parsed, Err(FrameError::ControlTooLong(len)));
    } else {
        assert_eq!(parsed, Ok(Some(want)));
    }
    for cut in 0..at {
        assert_eq!(parse(&head[..cut]), Ok(None), "cut {cut}");
    }

    // A whole control frame of the input's bytes, and a Close of a code and reason.
    let payload = data.get(14..).unwrap_or(&[]);
    let mut close = [0; MAX_CONTROL_PAYLOAD];
    let reason = String::from_utf8_lossy(payload);
    let code = u16::from_be_bytes([p[1], p[2]]);
    let clen = close_payload(code, &reason, &mut close);
    assert!((2..=MAX_CONTROL_PAYLOAD).contains(&clen));
    assert_eq!(close[..2], code.to_be_bytes());
    let cut = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
    assert_eq!(&close[2..clen], &reason.as_bytes()[..cut]);
    for (body, opcode) in [(payload, b0), (&close[..clen], OP_CLOSE)] {
        let mut out = [0; MAX_CONTROL_FRAME];
        let n = control_frame(&mut out, opcode, body, mask);
        let h = parse(&out[..n])
            .expect("a control frame parses")
            .expect("whole");
        let kept = body.len().min(MAX_CONTROL_PAYLOAD);
        assert!(h.fin);
        assert_eq!(h.opcode, opcode & 0x0F);
        assert_eq!(h.rsv, 0);
        assert_eq!(h.mask, mask);
        assert_eq!(h.len as usize, kept);
        assert_eq!(usize::from(h.header_len) + kept, n);
        let mut plain = [0; MAX_CONTROL_PAYLOAD];
        let m = unmask_into(&out[usize::from(h.header_len)..n], h.mask, &mut plain);
        assert_eq!(&plain[..m], &body[..kept]);
        // A short output takes only what fits.
        let mut small = [0; 3];
        assert_eq!(
            unmask_into(&out[usize::from(h.header_len)..n], h.mask, &mut small),
            kept.min(3)
        );
    }
}

fuzz_target!(|data: &[u8]| {
    round_trip(data);
    let Some((&count, rest)) = data.split_first() else {
        return;
    };
    let count = usize::from(count & 0x0F).min(rest.len());
    let (spans, stream) = rest.split_at(count);
    track(spans, stream);
});
