//! Session tickets: stateless TLS resumption with keys on a schedule.
//!
//! One ticketer serves the listener's one `ServerConfig`, which every worker
//! shares; a certificate or client-CA reload swaps what the config reads,
//! never the config, so tickets survive it. A restart makes new keys: every
//! client's next handshake after one is full. Keys rotate every
//! `tls_ticket_rotation`; a ticket is accepted for twice that, so one
//! issued just before a rotation still resumes. Clients without ticket
//! support resume TLS 1.2 from rustls' in-memory session cache, the fallback.

use std::sync::Arc;
use std::time::Duration;

use rustls::server::ProducesTickets;

/// Shortest rotation: keys younger than a minute buy nothing.
pub(crate) const MIN_ROTATION: Duration = Duration::from_secs(60);

/// Longest rotation: each generation of keys comes from aws-lc-rs'
/// recommended ticketer, which makes fresh keys of its own every 6 hours
/// and keeps the previous ones for 6 more; a longer rotation would be
/// promised for tickets that key rollover already refused.
pub(crate) const MAX_ROTATION: Duration = Duration::from_secs(6 * 3600);

/// The listener's ticketer: a fresh generation of keys every `rotation`
/// (clamped to [`MIN_ROTATION`]..=[`MAX_ROTATION`]; the config refuses
/// anything outside), tickets of the previous generation still accepted.
pub(crate) fn ticketer(rotation: Duration) -> Result<Arc<dyn ProducesTickets>, rustls::Error> {
    let secs = rotation.clamp(MIN_ROTATION, MAX_ROTATION).as_secs();
    let secs = u32::try_from(secs).unwrap_or(u32::MAX);
    Ok(Arc::new(rustls::TicketRotator::new(secs, generation)?))
}

/// One generation of keys: aws-lc-rs' RFC 5077 ticketer, which rustls
/// offers only behind an `Arc` (the generator must return a `Box`).
fn generation() -> Result<Box<dyn ProducesTickets>, rustls::crypto::GetRandomFailed> {
    let inner =
        rustls::crypto::aws_lc_rs::Ticketer::new().map_err(|_| rustls::crypto::GetRandomFailed)?;
    Ok(Box::new(Generation(inner)))
}

/// [`ProducesTickets`] by delegation to the shared ticketer it holds.
#[derive(Debug)]
struct Generation(Arc<dyn ProducesTickets>);

impl ProducesTickets for Generation {
    fn enabled(&self) -> bool {
        self.0.enabled()
    }

    fn lifetime(&self) -> u32 {
        self.0.lifetime()
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.0.encrypt(plain)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        self.0.decrypt(cipher)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tickets_round_trip_and_live_twice_the_rotation() {
        let t = ticketer(Duration::from_secs(600)).unwrap();
        assert!(t.enabled());
        assert_eq!(t.lifetime(), 1200);
        let sealed = t.encrypt(b"session state").unwrap();
        assert_eq!(t.decrypt(&sealed).unwrap(), b"session state");
        assert!(t.decrypt(b"forged ticket bytes, long enough").is_none());
    }

    #[test]
    fn another_ticketer_refuses_the_tickets() {
        let a = ticketer(MAX_ROTATION).unwrap();
        let b = ticketer(MAX_ROTATION).unwrap();
        let sealed = a.encrypt(b"state").unwrap();
        assert!(b.decrypt(&sealed).is_none());
    }

    #[test]
    fn the_rotation_is_clamped() {
        assert_eq!(ticketer(Duration::ZERO).unwrap().lifetime(), 120);
        assert_eq!(
            ticketer(Duration::from_secs(86400)).unwrap().lifetime(),
            12 * 3600
        );
    }
}
