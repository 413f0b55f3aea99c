//! RFC 6455 frame headers, read in place as a tunnel's bytes pass.
//!
//! A [`Tracker`] follows one direction of a WebSocket stream over byte spans
//! of any size: it collects a header's bytes (at most [`MAX_HEADER`], even
//! when the header is split across reads at any byte), then counts the
//! payload down without looking at it. It never copies, unmasks or changes a
//! payload; the relay forwards the very bytes it read (or spliced). Only the
//! payload of a small control frame that lies whole in the span at hand is
//! looked at, to recognise the Pong that answers shunt's own Ping and the code
//! of a Close.
//!
//! Framing the tracker cannot follow ([`FrameError`]) turns the direction
//! into an opaque byte relay; the tracker never decides what the endpoints
//! accept.
//!
//! [`control_frame`] builds shunt's own whole control frames (Ping, Close).

/// Longest header: 2 bytes, an 8-byte extended length, a 4-byte mask key.
pub const MAX_HEADER: usize = 14;
/// Longest control-frame payload (RFC 6455 §5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;
/// Room for any control frame shunt writes.
pub const MAX_CONTROL_FRAME: usize = 2 + 4 + MAX_CONTROL_PAYLOAD;

/// Continuation frame.
#[cfg(any(test, feature = "test-util"))]
pub const OP_CONTINUATION: u8 = 0x0;
/// Text frame.
#[cfg(any(test, feature = "test-util"))]
pub const OP_TEXT: u8 = 0x1;
/// Binary frame.
#[cfg(any(test, feature = "test-util"))]
pub const OP_BINARY: u8 = 0x2;
/// Close frame.
pub const OP_CLOSE: u8 = 0x8;
/// Ping frame.
pub const OP_PING: u8 = 0x9;
/// Pong frame.
pub const OP_PONG: u8 = 0xA;

/// One parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Last frame of its message.
    pub fin: bool,
    /// RSV1..3 as the low three bits (RSV1 = 4: permessage-deflate).
    pub rsv: u8,
    /// The 4-bit opcode.
    pub opcode: u8,
    /// The masking key, when the frame is masked (client to server).
    pub mask: Option<[u8; 4]>,
    /// Payload length.
    pub len: u64,
    /// Bytes of the header itself (2 to 14).
    pub header_len: u8,
}

impl Header {
    /// Control frames have the high opcode bit set (Close, Ping, Pong, reserved).
    pub fn is_control(&self) -> bool {
        self.opcode & 0x8 != 0
    }

    /// Data frames: continuation, text, binary (and the reserved non-control opcodes).
    pub fn is_data(&self) -> bool {
        !self.is_control()
    }
}

/// Why a direction's framing cannot be followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A control frame longer than 125 bytes.
    #[error("a control frame of {0} bytes (at most 125 allowed)")]
    ControlTooLong(u64),
    /// A 64-bit length with its most significant bit set.
    #[error("a 64-bit payload length with the top bit set")]
    LengthTopBit,
    /// Bytes after a Close frame.
    #[error("bytes after a Close frame")]
    AfterClose,
}

/// Header length implied by its first two bytes.
pub fn header_len(b1: u8) -> usize {
    let ext = match b1 & 0x7F {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    2 + ext + if b1 & 0x80 != 0 { 4 } else { 0 }
}

/// Parse a complete header from the start of `bytes`; `Ok(None)` if more
/// bytes are needed.
pub fn parse(bytes: &[u8]) -> Result<Option<Header>, FrameError> {
    let [b0, b1, ..] = *bytes else {
        return Ok(None);
    };
    let need = header_len(b1);
    if bytes.len() < need {
        return Ok(None);
    }
    let (len, mut at) = match b1 & 0x7F {
        126 => (u64::from(u16::from_be_bytes([bytes[2], bytes[3]])), 4),
        127 => {
            let mut be = [0; 8];
            be.copy_from_slice(&bytes[2..10]);
            let len = u64::from_be_bytes(be);
            if len >> 63 != 0 {
                return Err(FrameError::LengthTopBit);
            }
            (len, 10)
        }
        n => (u64::from(n), 2),
    };
    let mask = (b1 & 0x80 != 0).then(|| {
        let key = [bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]];
        at += 4;
        key
    });
    let header = Header {
        fin: b0 & 0x80 != 0,
        rsv: (b0 >> 4) & 0x7,
        opcode: b0 & 0x0F,
        mask,
        len,
        header_len: at as u8,
    };
    if header.is_control() && len > MAX_CONTROL_PAYLOAD as u64 {
        return Err(FrameError::ControlTooLong(len));
    }
    Ok(Some(header))
}

/// The frame state of one direction: 24 bytes, a bound the unit test
/// `an_idle_call_stays_small` holds, since every idle tunnel has two.
#[derive(Debug, Clone, Default)]
pub struct Tracker {
    /// Header bytes collected so far (only while a header is incomplete).
    head: [u8; MAX_HEADER],
    /// How many of `head` are filled.
    have: u8,
    /// Payload bytes of the current frame not yet passed.
    left: u64,
    /// A Close frame has passed: any further byte is a framing error.
    closed: bool,
}

impl Tracker {
    /// At a frame boundary: no header begun, no payload left.
    pub fn at_boundary(&self) -> bool {
        self.have == 0 && self.left == 0
    }

    /// Payload bytes left in the current frame (0 between frames or inside a header).
    pub fn payload_left(&self) -> u64 {
        self.left
    }

    /// Whether a Close frame has passed.
    pub fn closed(&self) -> bool {
        self.closed
    }

    /// The most bytes that can be read without crossing the next frame
    /// boundary: the payload left, or the header bytes still needed (2 until
    /// the length byte is known). 0 at a boundary (no limit is known).
    pub fn until_boundary(&self) -> u64 {
        if self.left > 0 {
            return self.left;
        }
        match self.have {
            0 => 0,
            1 => 1,
            n => (header_len(self.head[1]) - usize::from(n)) as u64,
        }
    }

    /// Take bytes from the start of `bytes`: payload (counted down), or
    /// header bytes. Returns how many were taken and, when a header has just
    /// been completed, that header (its payload follows). Call again with the
    /// rest until all is taken.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<(usize, Option<Header>), FrameError> {
        if bytes.is_empty() {
            return Ok((0, None));
        }
        if self.left > 0 {
            let n = self.left.min(bytes.len() as u64);
            self.left -= n;
            return Ok((n as usize, None));
        }
        if self.closed {
            return Err(FrameError::AfterClose);
        }
        if self.have == 0 {
            // The common case: the whole header is in this span; parse in place.
            if let Some(h) = parse(bytes)? {
                self.begin(&h);
                return Ok((usize::from(h.header_len), Some(h)));
            }
        }
        // Collect a header split across spans.
        let have = usize::from(self.have);
        let need = if have + bytes.len() >= 2 || have >= 2 {
            let b1 = if have >= 2 {
                self.head[1]
            } else {
                bytes[1 - have]
            };
            header_len(b1)
        } else {
            2
        };
        let take = (need - have).min(bytes.len());
        self.head[have..have + take].copy_from_slice(&bytes[..take]);
        self.have += take as u8;
        if usize::from(self.have) < need {
            return Ok((take, None));
        }
        self.have = 0;
        match parse(&self.head[..need])? {
            Some(h) => {
                self.begin(&h);
                Ok((take, Some(h)))
            }
            // Unreachable: `need` bytes always make a header.
            None => Ok((take, None)),
        }
    }

    fn begin(&mut self, h: &Header) {
        self.left = h.len;
        if h.opcode == OP_CLOSE {
            self.closed = true;
        }
    }

    /// Count `n` payload bytes moved without being read (spliced).
    pub fn skip(&mut self, n: u64) {
        self.left = self.left.saturating_sub(n);
    }
}

/// Unmask (if needed) up to `out.len()` bytes of a payload into `out`.
pub fn unmask_into(payload: &[u8], mask: Option<[u8; 4]>, out: &mut [u8]) -> usize {
    let n = payload.len().min(out.len());
    for (i, (o, p)) in out.iter_mut().zip(payload).take(n).enumerate() {
        *o = match mask {
            Some(k) => p ^ k[i % 4],
            None => *p,
        };
    }
    n
}

/// Write a frame header (first byte `b0`: FIN, RSV, opcode) for a payload
/// of `len` bytes into `out`, in the shortest length form, with the masking
/// key if given. Returns the header's length.
pub fn write_header(out: &mut [u8; MAX_HEADER], b0: u8, len: u64, mask: Option<[u8; 4]>) -> usize {
    let m = if mask.is_some() { 0x80 } else { 0 };
    out[0] = b0;
    let mut at = 2;
    if len < 126 {
        out[1] = m | len as u8;
    } else if len <= 0xFFFF {
        out[1] = m | 126;
        out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        at = 4;
    } else {
        out[1] = m | 127;
        out[2..10].copy_from_slice(&len.to_be_bytes());
        at = 10;
    }
    if let Some(k) = mask {
        out[at..at + 4].copy_from_slice(&k);
        at += 4;
    }
    at
}

/// Write a whole control frame (FIN set) into `out`: masked with `mask` when
/// given (towards a server), unmasked otherwise. `payload` is cut at 125 bytes.
/// Returns the frame's length.
pub fn control_frame(
    out: &mut [u8; MAX_CONTROL_FRAME],
    opcode: u8,
    payload: &[u8],
    mask: Option<[u8; 4]>,
) -> usize {
    let payload = &payload[..payload.len().min(MAX_CONTROL_PAYLOAD)];
    let mut head = [0; MAX_HEADER];
    let at = write_header(
        &mut head,
        0x80 | (opcode & 0x0F),
        payload.len() as u64,
        mask,
    );
    out[..at].copy_from_slice(&head[..at]);
    for (i, b) in payload.iter().enumerate() {
        out[at + i] = match mask {
            Some(k) => b ^ k[i % 4],
            None => *b,
        };
    }
    at + payload.len()
}

/// A Close frame's payload: the code, then the reason (cut to fit).
pub fn close_payload(code: u16, reason: &str, out: &mut [u8; MAX_CONTROL_PAYLOAD]) -> usize {
    out[..2].copy_from_slice(&code.to_be_bytes());
    let r = &reason.as_bytes()[..reason.len().min(MAX_CONTROL_PAYLOAD - 2)];
    out[2..2 + r.len()].copy_from_slice(r);
    2 + r.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame with `len` payload bytes (not masked: only headers matter here).
    fn frame(b0: u8, len: usize, mask: Option<[u8; 4]>) -> Vec<u8> {
        let mut head = [0; MAX_HEADER];
        let n = write_header(&mut head, b0, len as u64, mask);
        let mut v = head[..n].to_vec();
        v.extend((0..len).map(|i| (i % 251) as u8));
        v
    }

    /// Feed `bytes` in spans of the given sizes (cycled); collect the headers.
    fn track(bytes: &[u8], spans: &[usize]) -> Result<Vec<Header>, FrameError> {
        let mut t = Tracker::default();
        let mut headers = Vec::new();
        let mut at = 0;
        let mut i = 0;
        while at < bytes.len() {
            let end = (at + spans[i % spans.len()]).min(bytes.len());
            let mut span = &bytes[at..end];
            while !span.is_empty() {
                let (n, h) = t.feed(span)?;
                assert!(n > 0, "feed must make progress");
                span = &span[n..];
                headers.extend(h);
            }
            at = end;
            i += 1;
        }
        assert!(t.at_boundary());
        Ok(headers)
    }

    const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    #[test]
    fn parses_every_length_form_masked_and_unmasked() {
        for len in [0usize, 1, 125, 126, 127, 65535, 65536, 70000] {
            for mask in [None, Some(KEY)] {
                let f = frame(0x82, len, mask);
                let h = parse(&f).unwrap().unwrap();
                assert_eq!(h.len, len as u64, "len {len}");
                assert_eq!(h.mask, mask);
                assert!(h.fin);
                assert_eq!(h.opcode, OP_BINARY);
                let ext = if len < 126 {
                    0
                } else if len <= 0xFFFF {
                    2
                } else {
                    8
                };
                let expect = 2 + ext + if mask.is_some() { 4 } else { 0 };
                assert_eq!(usize::from(h.header_len), expect);
                // Any shorter prefix of the header is incomplete.
                for cut in 0..expect {
                    assert_eq!(parse(&f[..cut]).unwrap(), None, "len {len} cut {cut}");
                }
            }
        }
    }

    #[test]
    fn headers_split_across_reads_at_every_byte() {
        for len in [0usize, 5, 125, 126, 65535, 65536] {
            for mask in [None, Some(KEY)] {
                let mut stream = frame(0x01, len, mask); // text, not FIN
                stream.extend(frame(0x89, 4, mask)); // a ping between fragments
                stream.extend(frame(0x80, 3, mask)); // final continuation
                let whole = track(&stream, &[stream.len()]).unwrap();
                assert_eq!(whole.len(), 3);
                for split in 1..=16 {
                    // A first span that ends at every byte of the first header, then the rest.
                    let got = track(&stream, &[split, stream.len()]).unwrap();
                    assert_eq!(got, whole, "len {len} split {split}");
                }
                // And one byte at a time throughout.
                assert_eq!(track(&stream, &[1]).unwrap(), whole);
                assert_eq!(track(&stream, &[3, 7, 2]).unwrap(), whole);
            }
        }
    }

    #[test]
    fn flags_and_rsv_are_read() {
        let f = frame(0x41 | 0x80, 3, None); // FIN, RSV1 (deflate), text
        let h = parse(&f).unwrap().unwrap();
        assert_eq!(h.rsv, 4);
        assert!(h.fin && h.is_data());
        let c = parse(&frame(0x88, 2, None)).unwrap().unwrap();
        assert!(c.is_control() && c.opcode == OP_CLOSE);
    }

    #[test]
    fn unparsable_framing_is_an_error() {
        assert_eq!(
            parse(&frame(0x89, 126, None)),
            Err(FrameError::ControlTooLong(126))
        );
        let mut top = vec![0x82, 127];
        top.extend_from_slice(&(1u64 << 63).to_be_bytes());
        assert_eq!(parse(&top), Err(FrameError::LengthTopBit));
        let mut after = frame(0x88, 2, None);
        after.extend(frame(0x82, 1, None));
        assert_eq!(track(&after, &[100]), Err(FrameError::AfterClose));
    }

    #[test]
    fn until_boundary_and_skip() {
        let f = frame(0x82, 70000, Some(KEY));
        let mut t = Tracker::default();
        assert_eq!(t.until_boundary(), 0);
        assert_eq!(t.feed(&f[..1]).unwrap(), (1, None));
        assert_eq!(t.until_boundary(), 1);
        assert_eq!(t.feed(&f[1..2]).unwrap(), (1, None));
        assert_eq!(t.until_boundary(), 12); // 8-byte length + mask
        let (n, h) = t.feed(&f[2..]).unwrap();
        assert_eq!(n, 12);
        assert_eq!(h.unwrap().len, 70000);
        assert_eq!(t.until_boundary(), 70000);
        t.skip(69999);
        assert_eq!(t.payload_left(), 1);
        assert_eq!(t.feed(&f[f.len() - 1..]).unwrap(), (1, None));
        assert!(t.at_boundary());
    }

    #[test]
    fn control_frames_round_trip() {
        let mut out = [0; MAX_CONTROL_FRAME];
        let mut payload = [0; MAX_CONTROL_PAYLOAD];
        let plen = close_payload(1012, "service restart", &mut payload);
        for mask in [None, Some(KEY)] {
            let n = control_frame(&mut out, OP_CLOSE, &payload[..plen], mask);
            let h = parse(&out[..n]).unwrap().unwrap();
            assert_eq!(h.opcode, OP_CLOSE);
            assert_eq!(h.len as usize, plen);
            let body = &out[usize::from(h.header_len)..n];
            let mut plain = [0; 32];
            let m = unmask_into(body, h.mask, &mut plain);
            assert_eq!(&plain[..2], &1012u16.to_be_bytes());
            assert_eq!(&plain[2..m], b"service restart");
        }
    }
}
