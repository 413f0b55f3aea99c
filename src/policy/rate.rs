//! Rate and connection limits, and the per-client state they need.
//!
//! - A token bucket per client address limits requests and handshakes
//!   (`--rate N/s --burst N`).
//! - A count per client address limits concurrent tunnels
//!   (`--max-conns-per-ip`); a [`TunnelSlot`] holds one for the tunnel's life.
//! - One global count limits open downstream connections plus tunnels
//!   (`--max-conns`), checked at accept so memory stays bounded; a
//!   [`ConnPermit`] holds one for a connection's life.
//!
//! The [`Gate`] holding this state lives in the runtime, not the snapshot, so
//! a reload keeps the counters; the limits themselves are read from the
//! snapshot at each check. Clients are keyed by IPv4 address or IPv6 /64 (one
//! host usually owns a whole /64). The bucket table is bounded: entries whose
//! bucket has refilled are swept, and past `max_tracked_ips` an arbitrary
//! entry is evicted, so many source addresses cannot exhaust memory.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// A sustained request rate, in requests per second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    per_sec: f64,
}

impl Eq for Rate {}

/// Why a rate was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("expected N/s, N/m or N/h with N > 0 (e.g. 20/s)")]
pub struct RateError;

impl Rate {
    /// `20/s`, `600/m`, `1000/h`, or a bare `20` (per second).
    pub fn parse(text: &str) -> Result<Rate, RateError> {
        let text = text.trim();
        let (n, unit) = text.split_once('/').unwrap_or((text, "s"));
        let n: f64 = n.trim().parse().map_err(|_| RateError)?;
        let secs = match unit.trim() {
            "s" | "sec" | "second" => 1.0,
            "m" | "min" | "minute" => 60.0,
            "h" | "hour" => 3600.0,
            _ => return Err(RateError),
        };
        if !(n.is_finite() && n > 0.0) {
            return Err(RateError);
        }
        Ok(Rate { per_sec: n / secs })
    }

    /// Requests per second.
    pub fn per_sec(self) -> f64 {
        self.per_sec
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/s", self.per_sec)
    }
}

/// The configured limits; `None` means unlimited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimits {
    /// Requests (and handshakes) per client per second; `None`: unlimited.
    pub rate: Option<Rate>,
    /// Bucket size: requests allowed at once after a quiet period.
    pub burst: u32,
    /// Open tunnels per client address (`--max-conns-per-ip`).
    pub max_conns_per_ip: Option<u32>,
    /// Open connections plus tunnels in all (`--max-conns`).
    pub max_conns: Option<usize>,
    /// Most client addresses the rate table tracks.
    pub max_tracked_ips: usize,
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            rate: None,
            burst: 1,
            max_conns_per_ip: None,
            max_conns: None,
            max_tracked_ips: 65_536,
        }
    }
}

/// One client's token bucket.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    /// A full bucket.
    pub(crate) fn full(burst: u32, now: Instant) -> Self {
        Bucket {
            tokens: f64::from(burst),
            last: now,
        }
    }

    fn refill(&mut self, now: Instant, rate: Rate, burst: u32) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate.per_sec).min(f64::from(burst));
        self.last = now;
    }

    /// Take one token, or say how long until one is available.
    pub(crate) fn take(&mut self, now: Instant, rate: Rate, burst: u32) -> Result<(), Duration> {
        self.refill(now, rate, burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - self.tokens) / rate.per_sec;
            Err(Duration::from_secs_f64(wait))
        }
    }

    /// Whether the bucket would be full by `now` (forgetting it changes nothing).
    fn is_idle(&self, now: Instant, rate: Rate, burst: u32) -> bool {
        let mut b = *self;
        b.refill(now, rate, burst);
        b.tokens >= f64::from(burst)
    }
}

/// Who a limit counts: an IPv4 address, or the /64 of an IPv6 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct ClientKey(IpAddr);

impl ClientKey {
    /// The key of `ip`.
    pub(crate) fn of(ip: IpAddr) -> ClientKey {
        match ip.to_canonical() {
            IpAddr::V6(v6) => {
                let bits = u128::from(v6) & (u128::MAX << 64);
                ClientKey(IpAddr::V6(Ipv6Addr::from(bits)))
            }
            v4 => ClientKey(v4),
        }
    }
}

/// A limit was hit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitExceeded {
    /// The client's bucket is empty; a token comes back after `retry_after`.
    #[error("too many requests from this address; retry in {}s", retry_secs(*retry_after))]
    Rate {
        /// When the next token is due (sent as `Retry-After`).
        retry_after: Duration,
    },
    /// The client has `limit` tunnels open already.
    #[error("too many open WebSocket connections from this address (limit {limit})")]
    TunnelsPerIp {
        /// `--max-conns-per-ip`.
        limit: u32,
    },
    /// The process has `limit` connections open already.
    #[error("the proxy is at its connection limit ({limit})")]
    Conns {
        /// `--max-conns`.
        limit: usize,
    },
}

/// Whole seconds for `Retry-After`, at least 1.
pub(crate) fn retry_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0).max(u64::from(d.is_zero()))
}

/// Most refused connections answered at once; beyond, they are just closed.
const MAX_REFUSALS: usize = 256;

/// How often the bucket table is swept of idle entries.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug)]
struct Buckets {
    map: HashMap<ClientKey, Bucket>,
    last_sweep: Instant,
}

/// The per-client and global counters behind every limit.
#[derive(Debug)]
pub struct Gate {
    buckets: Mutex<Buckets>,
    tunnels: Mutex<HashMap<ClientKey, u32>>,
    /// Open downstream connections plus live tunnels.
    open: AtomicUsize,
    /// Bounds the connections being refused with a short answer at once.
    refusals: Arc<tokio::sync::Semaphore>,
}

impl Default for Gate {
    fn default() -> Self {
        Gate {
            buckets: Mutex::new(Buckets {
                map: HashMap::new(),
                last_sweep: Instant::now(),
            }),
            tunnels: Mutex::new(HashMap::new()),
            open: AtomicUsize::new(0),
            refusals: Arc::new(tokio::sync::Semaphore::new(MAX_REFUSALS)),
        }
    }
}

impl Gate {
    /// Admit a new downstream connection under `--max-conns`.
    pub fn admit_connection(
        self: &Arc<Self>,
        limits: &RateLimits,
    ) -> Result<ConnPermit, LimitExceeded> {
        let previous = self.open.fetch_add(1, Ordering::AcqRel);
        let permit = ConnPermit { gate: self.clone() };
        match limits.max_conns {
            Some(limit) if previous >= limit => Err(LimitExceeded::Conns { limit }),
            _ => Ok(permit),
        }
    }

    /// Count one request from `ip` against `--rate`.
    pub fn take_request(
        &self,
        limits: &RateLimits,
        ip: IpAddr,
        now: Instant,
    ) -> Result<(), LimitExceeded> {
        let Some(rate) = limits.rate else {
            return Ok(());
        };
        let burst = limits.burst.max(1);
        let key = ClientKey::of(ip);
        let mut table = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let due = now.saturating_duration_since(table.last_sweep) >= SWEEP_EVERY;
        let full = table.map.len() >= limits.max_tracked_ips.max(1);
        if (due || full) && !table.map.contains_key(&key) {
            table.map.retain(|_, b| !b.is_idle(now, rate, burst));
            table.last_sweep = now;
            while table.map.len() >= limits.max_tracked_ips.max(1) {
                let Some(victim) = table.map.keys().next().copied() else {
                    break;
                };
                table.map.remove(&victim);
            }
        }
        let bucket = table
            .map
            .entry(key)
            .or_insert_with(|| Bucket::full(burst, now));
        bucket
            .take(now, rate, burst)
            .map_err(|retry_after| LimitExceeded::Rate { retry_after })
    }

    /// Open a tunnel slot for `ip` under `--max-conns-per-ip` (and count it in `--max-conns`).
    pub fn open_tunnel(
        self: &Arc<Self>,
        limits: &RateLimits,
        ip: IpAddr,
    ) -> Result<TunnelSlot, LimitExceeded> {
        let key = ClientKey::of(ip);
        {
            let mut map = self.tunnels.lock().unwrap_or_else(|p| p.into_inner());
            let count = map.entry(key).or_insert(0);
            if let Some(limit) = limits.max_conns_per_ip
                && *count >= limit
            {
                if *count == 0 {
                    map.remove(&key);
                }
                return Err(LimitExceeded::TunnelsPerIp { limit });
            }
            *count += 1;
        }
        self.open.fetch_add(1, Ordering::AcqRel);
        Ok(TunnelSlot {
            _held: Arc::new(SlotInner {
                gate: self.clone(),
                key,
            }),
        })
    }

    /// Permission to spend a little time answering a refused connection, if
    /// not too many are being answered already.
    pub fn refusal_permit(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.refusals.clone().try_acquire_owned().ok()
    }

    /// Open connections plus live tunnels.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Addresses with a live tunnel, and addresses with a rate bucket.
    pub fn tracked(&self) -> (usize, usize) {
        let tunnels = self.tunnels.lock().unwrap_or_else(|p| p.into_inner()).len();
        let buckets = self
            .buckets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map
            .len();
        (tunnels, buckets)
    }
}

/// One open downstream connection, counted until dropped.
#[derive(Debug)]
pub struct ConnPermit {
    gate: Arc<Gate>,
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        self.gate.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One tunnel of one client, counted until the last clone is dropped.
///
/// Held in the exchange ([`crate::forward::Exchange::tunnel`]) until the
/// tunnel takes it for its life; an upgrade the upstream does not answer
/// leaves it there for the next upstream tried, so one handshake counts once.
#[derive(Debug, Clone)]
pub struct TunnelSlot {
    _held: Arc<SlotInner>,
}

#[derive(Debug)]
struct SlotInner {
    gate: Arc<Gate>,
    key: ClientKey,
}

impl Drop for SlotInner {
    fn drop(&mut self) {
        self.gate.open.fetch_sub(1, Ordering::AcqRel);
        let mut map = self.gate.tunnels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = map.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                map.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn limits(rate: &str, burst: u32) -> RateLimits {
        RateLimits {
            rate: Some(Rate::parse(rate).unwrap()),
            burst,
            ..RateLimits::default()
        }
    }

    #[test]
    fn rates_parse() {
        assert_eq!(Rate::parse("20/s").unwrap().per_sec(), 20.0);
        assert_eq!(Rate::parse("60/m").unwrap().per_sec(), 1.0);
        assert_eq!(Rate::parse("5").unwrap().per_sec(), 5.0);
        assert!(Rate::parse("0/s").is_err());
        assert!(Rate::parse("-1/s").is_err());
        assert!(Rate::parse("x/s").is_err());
        assert!(Rate::parse("5/fortnight").is_err());
    }

    #[test]
    fn bucket_bursts_then_refills() {
        let t0 = Instant::now();
        let rate = Rate::parse("2/s").unwrap();
        let mut b = Bucket::full(3, t0);
        for _ in 0..3 {
            assert!(b.take(t0, rate, 3).is_ok());
        }
        let wait = b.take(t0, rate, 3).unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
        assert!(b.take(t0 + Duration::from_millis(499), rate, 3).is_err());
        assert!(b.take(t0 + Duration::from_millis(1000), rate, 3).is_ok());
        // Never more than the burst, however long the quiet.
        let later = t0 + Duration::from_secs(3600);
        for _ in 0..3 {
            assert!(b.take(later, rate, 3).is_ok());
        }
        assert!(b.take(later, rate, 3).is_err());
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_secs(Duration::from_millis(1500)), 2);
        assert_eq!(retry_secs(Duration::from_secs(3)), 3);
        assert_eq!(retry_secs(Duration::ZERO), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn per_ip_rate_with_paused_time() {
        let gate = Gate::default();
        let l = limits("1/s", 2);
        let a = ip("127.0.0.2");
        let b = ip("127.0.0.3");
        assert!(gate.take_request(&l, a, Instant::now()).is_ok());
        assert!(gate.take_request(&l, a, Instant::now()).is_ok());
        assert!(matches!(
            gate.take_request(&l, a, Instant::now()),
            Err(LimitExceeded::Rate { .. })
        ));
        // Another address has its own bucket.
        assert!(gate.take_request(&l, b, Instant::now()).is_ok());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(gate.take_request(&l, a, Instant::now()).is_ok());
        // No rate: never limited.
        assert!(
            gate.take_request(&RateLimits::default(), a, Instant::now())
                .is_ok()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn bucket_table_is_bounded() {
        let gate = Gate::default();
        let l = RateLimits {
            max_tracked_ips: 100,
            ..limits("1/s", 1)
        };
        for i in 0..1000u32 {
            let addr = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            let _ = gate.take_request(&l, addr, Instant::now());
            assert!(gate.tracked().1 <= 100);
        }
        // Idle entries are swept once their buckets have refilled.
        tokio::time::advance(Duration::from_secs(11)).await;
        let _ = gate.take_request(&l, ip("10.255.0.1"), Instant::now());
        assert_eq!(gate.tracked().1, 1);
    }

    #[test]
    fn ipv6_keyed_by_slash_64() {
        assert_eq!(
            ClientKey::of(ip("2001:db8::1")),
            ClientKey::of(ip("2001:db8::ffff:1"))
        );
        assert_ne!(
            ClientKey::of(ip("2001:db8:0:1::1")),
            ClientKey::of(ip("2001:db8::1"))
        );
        assert_eq!(
            ClientKey::of(ip("::ffff:127.0.0.2")),
            ClientKey::of(ip("127.0.0.2"))
        );
    }

    #[test]
    fn tunnel_slots_and_global_cap() {
        let gate = Arc::new(Gate::default());
        let l = RateLimits {
            max_conns_per_ip: Some(2),
            max_conns: Some(3),
            ..RateLimits::default()
        };
        let a = ip("127.0.0.2");
        let s1 = gate.open_tunnel(&l, a).unwrap();
        let s2 = gate.open_tunnel(&l, a).unwrap();
        assert_eq!(
            gate.open_tunnel(&l, a).unwrap_err(),
            LimitExceeded::TunnelsPerIp { limit: 2 }
        );
        let clone = s1.clone();
        drop(s1);
        assert!(
            gate.open_tunnel(&l, a).is_err(),
            "a clone still holds the slot"
        );
        drop(clone);
        let s3 = gate.open_tunnel(&l, a).unwrap();
        assert_eq!(gate.open(), 2);
        let c1 = gate.admit_connection(&l).unwrap();
        assert_eq!(
            gate.admit_connection(&l).unwrap_err(),
            LimitExceeded::Conns { limit: 3 }
        );
        assert_eq!(gate.open(), 3, "a refused admission gives its count back");
        drop((s2, s3, c1));
        assert_eq!(gate.open(), 0);
        assert_eq!(gate.tracked().0, 0);
    }
}
