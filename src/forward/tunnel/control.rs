//! shunt's own control frames inside a tunnel, and the close codes it sends.
//!
//! A tracked call ([`super::frames`]) carries three frames of shunt's own,
//! written into a direction at a frame boundary:
//!
//! - a Ping to a leg that has been silent for the ping interval, whose
//!   payload is [`PING_TAG`] and the send time, so the Pong that answers it
//!   is recognised, cut out of the stream (it answers shunt, not the other
//!   endpoint) and gives the round-trip time;
//! - a Close, with a [`CloseCode`] saying why, when shunt ends a call itself.
//!
//! Frames towards the upstream are masked, as a client's must be (RFC 6455
//! §5.3); frames towards the downstream are not.

use super::frames::{self, MAX_CONTROL_FRAME, MAX_CONTROL_PAYLOAD};

/// The payload of shunt's Ping starts with this; 8 bytes of send time follow.
pub(super) const PING_TAG: &[u8; 5] = b"shunt";
/// The length of shunt's Ping payload, and so of the Pong that answers it.
pub(super) const PING_LEN: usize = PING_TAG.len() + 8;

/// The one table of WebSocket close codes shunt sends itself (RFC 6455
/// §7.4.1; 1012 and 1014 from the IANA registry). Which leg gets which code
/// when shunt ends a call is `task::close`'s decision.
///
/// shunt sends nothing else: an endpoint's own Close, whatever its code
/// (1000, 1008 policy, 1011 server error...), passes through untouched, and
/// `/calls` records it as the endpoint's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub(super) enum CloseCode {
    /// 1001 Going Away: shunt is closing the call and the leg should not
    /// expect it back (idle timeout; drain, towards the upstream; the
    /// downstream left, towards the upstream).
    GoingAway = 1001,
    /// 1012 Service Restart: shunt is shutting down and the drain time ran
    /// out; the client may reconnect at once (towards the downstream).
    ServiceRestart = 1012,
    /// 1014 Bad Gateway: the upstream was lost (it ended without a Close,
    /// failed, or did not answer a Ping), towards the downstream.
    BadGateway = 1014,
}

impl CloseCode {
    /// The code on the wire, and in `/calls` and metrics.
    pub(super) fn code(self) -> u16 {
        self as u16
    }

    /// The short reason shunt writes after the code.
    pub(super) fn reason(self) -> &'static str {
        match self {
            CloseCode::GoingAway => "going away",
            CloseCode::ServiceRestart => "service restart",
            CloseCode::BadGateway => "bad gateway",
        }
    }
}

/// Append shunt's Ping, stamped with `sent_us` (µs since the call's start),
/// to `out`; masked when `mask`.
pub(super) fn queue_ping(out: &mut Vec<u8>, sent_us: u64, mask: bool) {
    let mut payload = [0; PING_LEN];
    payload[..PING_TAG.len()].copy_from_slice(PING_TAG);
    payload[PING_TAG.len()..].copy_from_slice(&sent_us.to_be_bytes());
    queue_control(out, frames::OP_PING, &payload, mask);
}

/// Append shunt's Close with `code` and its reason to `out`; masked when `mask`.
pub(super) fn queue_close(out: &mut Vec<u8>, code: CloseCode, mask: bool) {
    let mut payload = [0; MAX_CONTROL_PAYLOAD];
    let n = frames::close_payload(code.code(), code.reason(), &mut payload);
    queue_control(out, frames::OP_CLOSE, &payload[..n], mask);
}

/// Append a whole control frame to `out`, with a fresh key when `mask`.
fn queue_control(out: &mut Vec<u8>, opcode: u8, payload: &[u8], mask: bool) {
    let mut frame = [0; MAX_CONTROL_FRAME];
    let n = frames::control_frame(&mut frame, opcode, payload, mask.then(mask_key));
    out.extend_from_slice(&frame[..n]);
}

/// Whether `bytes`, at a frame boundary, are the start but not the whole
/// of a frame that may be shunt's Pong: FIN and Pong, a payload of
/// [`PING_LEN`], its first payload bytes (unmasked, once the key is there)
/// matching [`PING_TAG`]. At most 18 bytes (a masked Pong is 19).
pub(super) fn split_shunt_pong(bytes: &[u8]) -> bool {
    if bytes.first() != Some(&(0x80 | frames::OP_PONG)) {
        return false;
    }
    let Some(&b1) = bytes.get(1) else {
        return true;
    };
    if usize::from(b1 & 0x7F) != PING_LEN {
        return false;
    }
    let head = if b1 & 0x80 != 0 { 6 } else { 2 };
    if bytes.len() >= head + PING_LEN {
        return false;
    }
    let Some(payload) = bytes.get(head..) else {
        return true;
    };
    let key = (head == 6).then(|| [bytes[2], bytes[3], bytes[4], bytes[5]]);
    let mut plain = [0; PING_LEN];
    let n = frames::unmask_into(payload, key, &mut plain);
    let n = n.min(PING_TAG.len());
    plain[..n] == PING_TAG[..n]
}

/// The send time in a Pong that answers shunt's Ping, if it is one.
pub(super) fn shunt_pong(payload: &[u8], mask: Option<[u8; 4]>) -> Option<u64> {
    if payload.len() != PING_LEN {
        return None;
    }
    let mut plain = [0; PING_LEN];
    frames::unmask_into(payload, mask, &mut plain);
    if &plain[..PING_TAG.len()] != PING_TAG {
        return None;
    }
    let mut be = [0; 8];
    be.copy_from_slice(&plain[PING_TAG.len()..]);
    Some(u64::from_be_bytes(be))
}

/// A fresh random masking key for a frame towards the upstream.
fn mask_key() -> [u8; 4] {
    use ring::rand::SecureRandom;
    let mut key = [0; 4];
    if ring::rand::SystemRandom::new().fill(&mut key).is_err() {
        // Never seen; the key then still changes with every frame.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        key = t.to_le_bytes();
    }
    key
}
