//! The registry of live calls (WebSocket tunnels) and their per-route metrics.
//!
//! A side module: a tunnel opens a [`CallGuard`] when it starts and writes its
//! per-direction and per-leg figures into the [`Call`]'s relaxed atomics as
//! frames pass; `/calls`, `/status` and `/metrics` read them. The registry
//! never reaches into a tunnel, and admin never imports the tunnel.
//!
//! Times inside a call are milliseconds since its start (`u32`), so a
//! direction's figures are a few dozen bytes.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};
use tokio::time::Instant;

use crate::prometheus::escape;

/// Index of the downstream → upstream direction (and of the downstream leg,
/// whose bytes come in on it).
pub(crate) const TO_UPSTREAM: usize = 0;
/// Index of the upstream → downstream direction (and of the upstream leg).
pub(crate) const TO_DOWNSTREAM: usize = 1;
/// Direction names, as in `/calls` and the metrics: the downstream leg is
/// named `client` there and the upstream one `backend`.
pub(crate) const DIRECTIONS: [&str; 2] = ["to_backend", "to_client"];
/// Leg names, as in `/calls` and the metrics; the downstream (`client`)
/// leg's bytes come in on `to_backend`.
pub(crate) const LEGS: [&str; 2] = ["client", "backend"];

/// Bucket bounds of `shunt_frame_gap_seconds`, made for a 20 ms cadence.
pub(crate) const GAP_BUCKETS: &[f64] =
    &[0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0];
/// Bucket bounds of `shunt_ping_rtt_seconds`.
pub(crate) const RTT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];
/// Bucket bounds of `shunt_call_duration_seconds`.
pub(crate) const DURATION_BUCKETS: &[f64] = &[
    1.0, 10.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0,
];

/// Bucket bounds of `shunt_call_reattach_gap_seconds`.
pub(crate) const REATTACH_BUCKETS: &[f64] =
    &[0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// What one reattach came to (`result` of `shunt_call_reattach_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReattachResult {
    /// The call goes on over a new backend connection.
    Ok = 0,
    /// No new backend connection in time, or one that could not continue the call: 1014.
    GaveUp = 1,
    /// The call cannot be reattached (compression with context takeover, a preamble
    /// over `replay_bytes`): counted once per call, when that is known.
    NotReattachable = 2,
}

/// The `result` label values, by [`ReattachResult`] as an index.
const REATTACH_RESULTS: [&str; 3] = ["ok", "gave_up", "not_reattachable"];

/// How a direction's frames are followed (`framing` in `/calls`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Framing {
    /// Headers are parsed; stats, pings and close codes apply.
    Tracked = 0,
    /// The framing could not be followed: a plain byte relay from then on.
    Opaque = 1,
    /// Frame tracking is off for this route (`--frames off`, `frames = false`).
    Off = 2,
}

impl Framing {
    /// The `framing` value in `/calls`.
    fn as_str(self) -> &'static str {
        match self {
            Framing::Tracked => "tracked",
            Framing::Opaque => "opaque",
            Framing::Off => "off",
        }
    }

    /// The inverse of `as u8`, for the atomic in `DirStats::framing`; an
    /// unknown value (none is ever stored) reads as `Off`.
    fn from_u8(v: u8) -> Framing {
        match v {
            0 => Framing::Tracked,
            1 => Framing::Opaque,
            _ => Framing::Off,
        }
    }
}

/// Who ended a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ClosedBy {
    /// The downstream leg closed (or vanished): `client` in `/calls`.
    Downstream,
    /// The upstream leg closed (or vanished): `backend` in `/calls`.
    Upstream,
    /// shunt ended the call (drain, idle timeout, ping timeout).
    Shunt,
}

impl ClosedBy {
    /// `client`, `backend` or `shunt`.
    pub fn as_str(self) -> &'static str {
        match self {
            ClosedBy::Downstream => "client",
            ClosedBy::Upstream => "backend",
            ClosedBy::Shunt => "shunt",
        }
    }
}

/// A Prometheus histogram with fixed bounds, updated with relaxed atomics.
#[derive(Debug)]
pub struct Histogram {
    /// Upper bounds in seconds, ascending (one of the `*_BUCKETS` constants).
    bounds: &'static [f64],
    /// One per bound, plus `+Inf`; not cumulative.
    counts: Box<[AtomicU64]>,
    /// The sum of observations in microseconds, so it can be an integer
    /// atomic; written out in seconds.
    sum_micros: AtomicU64,
}

impl Histogram {
    /// An empty histogram with these bucket bounds.
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
        }
    }

    /// Count one observation.
    pub fn observe(&self, value: Duration) {
        let secs = value.as_secs_f64();
        let i = self
            .bounds
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(self.bounds.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(value.as_micros() as u64, Ordering::Relaxed);
    }

    /// Total observations.
    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// Append the histogram in Prometheus text format: cumulative `_bucket`
    /// lines up to `+Inf`, then `_sum` (seconds) and `_count`. `labels` is
    /// already escaped (`route="/a"`). Nothing is locked: `_sum` may already
    /// include an observation racing the scrape that the buckets do not.
    fn write(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (i, c) in self.counts.iter().enumerate() {
            cumulative += c.load(Ordering::Relaxed);
            let le = self
                .bounds
                .get(i)
                .map_or_else(|| "+Inf".to_owned(), |b| b.to_string());
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
        }
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {cumulative}");
    }
}

/// Metrics of one route, shared by its calls.
#[derive(Debug)]
pub struct RouteCalls {
    /// The route's label.
    pub route: String,
    /// Durations of ended calls.
    pub duration: Histogram,
    /// Gaps between data frames, per direction.
    pub gaps: [Histogram; 2],
    /// Ping round trips, per leg.
    pub rtt: [Histogram; 2],
    /// Stalls begun.
    pub stalls: AtomicU64,
    /// Reattaches by [`ReattachResult`].
    pub reattach: [AtomicU64; 3],
    /// How long the client waited for each successful reattach.
    pub reattach_gap: Histogram,
}

impl RouteCalls {
    /// Empty metrics for `route`; made by [`CallRegistry::open`] on a route's
    /// first call and kept from then on, so the series survive between calls.
    fn new(route: &str) -> Self {
        RouteCalls {
            route: route.to_owned(),
            duration: Histogram::new(DURATION_BUCKETS),
            gaps: [Histogram::new(GAP_BUCKETS), Histogram::new(GAP_BUCKETS)],
            rtt: [Histogram::new(RTT_BUCKETS), Histogram::new(RTT_BUCKETS)],
            stalls: AtomicU64::new(0),
            reattach: Default::default(),
            reattach_gap: Histogram::new(REATTACH_BUCKETS),
        }
    }
}

/// One second of a direction's data frames per slot: `(second mod 2^16) << 16 | count`.
const FPS_SLOTS: usize = 6;
/// Over how many seconds `frames_per_second` is taken.
const FPS_WINDOW: u64 = 5;

/// Live figures of one direction.
#[derive(Debug, Default)]
pub struct DirStats {
    /// Frames of any kind (shunt's own removed Pongs excluded).
    pub frames: AtomicU64,
    /// Whole data messages (data frames with FIN).
    pub messages: AtomicU64,
    /// Bytes written to the destination.
    pub bytes: AtomicU64,
    /// 1 + milliseconds since the call's start of the last data frame; 0 = none yet.
    pub last_frame: AtomicU32,
    /// Largest gap between data frames, in milliseconds (plus one; 0 = none yet).
    pub largest_gap: AtomicU32,
    /// Stalls begun.
    pub stalls: AtomicU32,
    /// Currently stalled.
    pub stalled: AtomicBool,
    /// [`Framing`] as a `u8`.
    pub framing: AtomicU8,
    /// A ring of per-second data frame counts (see [`FPS_SLOTS`]): one more
    /// slot than the window, so the current second never overwrites the oldest
    /// one still read. A slot's stamp says which second it holds, so a slot left
    /// from 6 s ago reads as 0, with no clearing pass. A count saturates at 65,535.
    fps: [AtomicU32; FPS_SLOTS],
}

impl DirStats {
    /// Count one data frame at `ms` (since the call's start) in its second.
    pub fn count_second(&self, ms: u32) {
        let sec = u64::from(ms / 1000);
        let stamp = (sec as u32 & 0xFFFF) << 16;
        let slot = &self.fps[sec as usize % FPS_SLOTS];
        let v = slot.load(Ordering::Relaxed);
        if v & 0xFFFF_0000 == stamp {
            if v & 0xFFFF != 0xFFFF {
                slot.store(v + 1, Ordering::Relaxed);
            }
        } else {
            slot.store(stamp | 1, Ordering::Relaxed);
        }
    }

    /// Data frames counted in second `sec` (for the last few seconds).
    pub fn in_second(&self, sec: u64) -> u64 {
        let stamp = (sec as u32 & 0xFFFF) << 16;
        let v = self.fps[sec as usize % FPS_SLOTS].load(Ordering::Relaxed);
        if v & 0xFFFF_0000 == stamp {
            u64::from(v & 0xFFFF)
        } else {
            0
        }
    }

    /// Frames per second over the last 5 s (fewer seconds for a younger call).
    pub fn frames_per_second(&self, now_ms: u64) -> f64 {
        let now_sec = now_ms / 1000;
        let first = now_sec.saturating_sub(FPS_WINDOW - 1);
        let frames: u64 = (first..=now_sec).map(|s| self.in_second(s)).sum();
        let span = (now_ms as f64 / 1000.0).clamp(0.001, FPS_WINDOW as f64);
        frames as f64 / span
    }

    /// The framing state.
    pub fn framing(&self) -> Framing {
        Framing::from_u8(self.framing.load(Ordering::Relaxed))
    }

    /// The direction as `/calls` shows it; `now_ms` is the call's age, so
    /// the frame rate and ages are taken at one instant for both directions.
    fn to_json(&self, now_ms: u64) -> Value {
        let last = self.last_frame.load(Ordering::Relaxed);
        let gap = self.largest_gap.load(Ordering::Relaxed);
        json!({
            "frames": self.frames.load(Ordering::Relaxed),
            "messages": self.messages.load(Ordering::Relaxed),
            "bytes": self.bytes.load(Ordering::Relaxed),
            "frames_per_second": round3(self.frames_per_second(now_ms)),
            "last_frame_age_seconds": (last > 0)
                .then(|| round3(now_ms.saturating_sub(u64::from(last - 1)) as f64 / 1000.0)),
            "largest_gap_seconds": (gap > 0).then(|| f64::from(gap - 1) / 1000.0),
            "stalls": self.stalls.load(Ordering::Relaxed),
            "stalled": self.stalled.load(Ordering::Relaxed),
            "framing": self.framing().as_str(),
        })
    }
}

/// Round-trip samples kept per leg for the median.
const RTT_SAMPLES: usize = 4;

/// Live figures of one leg's pings.
#[derive(Debug, Default)]
pub struct LegStats {
    /// Pings shunt sent to this leg.
    pub pings_sent: AtomicU32,
    /// Pongs that answered them.
    pub pongs_received: AtomicU32,
    /// The last samples, in microseconds, in a ring indexed by `pongs_received`.
    rtt_us: [AtomicU32; RTT_SAMPLES],
}

impl LegStats {
    /// Record one round trip.
    pub fn record_rtt(&self, rtt: Duration) {
        let n = self.pongs_received.fetch_add(1, Ordering::Relaxed) as usize;
        let us = u32::try_from(rtt.as_micros()).unwrap_or(u32::MAX);
        self.rtt_us[n % RTT_SAMPLES].store(us, Ordering::Relaxed);
    }

    /// The last round trip.
    pub fn rtt_last(&self) -> Option<Duration> {
        let n = self.pongs_received.load(Ordering::Relaxed) as usize;
        (n > 0).then(|| {
            Duration::from_micros(u64::from(
                self.rtt_us[(n - 1) % RTT_SAMPLES].load(Ordering::Relaxed),
            ))
        })
    }

    /// The median of the last (up to 4) round trips.
    pub fn rtt_median(&self) -> Option<Duration> {
        let n = (self.pongs_received.load(Ordering::Relaxed) as usize).min(RTT_SAMPLES);
        if n == 0 {
            return None;
        }
        let mut v: Vec<u32> = self.rtt_us[..n]
            .iter()
            .map(|a| a.load(Ordering::Relaxed))
            .collect();
        v.sort_unstable();
        let median = if n % 2 == 1 {
            u64::from(v[n / 2])
        } else {
            (u64::from(v[n / 2 - 1]) + u64::from(v[n / 2])) / 2
        };
        Some(Duration::from_micros(median))
    }

    /// The leg as `/calls` shows it (round trips in milliseconds).
    /// `frames`: whether the call follows frames (else shunt never pings).
    fn to_json(&self, frames: bool) -> Value {
        let ms = |d: Option<Duration>| d.map(|d| round3(d.as_secs_f64() * 1000.0));
        let pings_sent = self.pings_sent.load(Ordering::Relaxed);
        json!({
            "rtt_last_ms": ms(self.rtt_last()),
            "rtt_median_ms": ms(self.rtt_median()),
            "rtt_status": self.rtt_status(frames, pings_sent),
            "pings_sent": pings_sent,
            "pongs_received": self.pongs_received.load(Ordering::Relaxed),
        })
    }

    /// Why a round trip is or is not known: `measured` (a Pong came back);
    /// `streaming` (the leg has never been silent for the ping interval,
    /// so shunt had no reason to ping it: its own frames show it alive);
    /// `waiting` (pinged, no Pong yet); `off` (frames not followed, no pings).
    fn rtt_status(&self, frames: bool, pings_sent: u32) -> &'static str {
        if self.rtt_last().is_some() {
            "measured"
        } else if !frames {
            "off"
        } else if pings_sent == 0 {
            "streaming"
        } else {
            "waiting"
        }
    }
}

/// Three decimals, so `/calls` shows `0.021` rather than float noise.
fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// What a call is, fixed when it opens.
#[derive(Debug, Clone)]
pub struct CallInfo {
    /// The client's address.
    pub client: SocketAddr,
    /// The request's `Host` header.
    pub host: Option<String>,
    /// Path and query, the token parameter redacted as in the access log.
    pub path: String,
    /// The verified token's `sub` claim, if any.
    pub user: Option<String>,
    /// Route label.
    pub route: String,
    /// Upstream name.
    pub upstream: String,
    /// Configuration generation the call was opened under.
    pub generation: u64,
    /// Whether frames are tracked on this route.
    pub frames: bool,
    /// The route says `backend_loss = "reattach"`: the call keeps reattach figures.
    pub reattach: bool,
}

/// A reattachable call's figures: how often its backend leg was replaced,
/// the gaps, and the upstream it runs over now.
#[derive(Debug)]
pub struct CallReattach {
    /// Successful reattaches.
    pub count: AtomicU32,
    /// Their gaps added up, in milliseconds.
    pub gap_ms: AtomicU64,
    /// Client messages cut by a backend loss whose rest was dropped.
    pub dropped_messages: AtomicU64,
    /// A new backend leg is being dialed now (the gap).
    pub reattaching: AtomicBool,
    /// The upstream the call runs over now.
    upstream: Mutex<Arc<str>>,
}

/// One live call: what it is and its live figures (kept small: there is
/// one per idle tunnel).
#[derive(Debug)]
pub struct Call {
    /// Unique for the process's life.
    pub id: u64,
    /// The client's address.
    pub client: SocketAddr,
    /// The request's `Host`, as in [`CallInfo::host`]; a boxed `str` (two
    /// words, not three) since it never changes.
    host: Option<Box<str>>,
    /// Path and query with the token redacted, as in [`CallInfo::path`],
    /// followed by the caller's `sub` claim ([`CallInfo::user`]): one box,
    /// since most calls have no user and every byte here is per call.
    path_and_user: Box<str>,
    /// Where the path ends in `path_and_user` (`u32::MAX`: no user).
    path_len: u32,
    /// The upstream's name, shared by every call through it (the registry
    /// keeps one copy per name).
    upstream: Arc<str>,
    /// Configuration generation the call was opened under (a `u32`, beside
    /// `frames`, keeps the entry small; past 4 billion reloads it saturates).
    pub generation: u32,
    /// When it started (the clock of its timers).
    pub started: Instant,
    /// Per direction: [`TO_UPSTREAM`], [`TO_DOWNSTREAM`].
    pub dirs: [DirStats; 2],
    /// Per leg: client, backend.
    pub legs: [LegStats; 2],
    /// The route's metrics.
    pub metrics: Arc<RouteCalls>,
    /// On a `backend_loss = "reattach"` route: its reattach figures.
    pub reattach: Option<Box<CallReattach>>,
}

impl Call {
    /// Whether frames are tracked on this call: a call opened with tracking
    /// off is [`Framing::Off`] for good, and a tracked one never becomes it
    /// (derived, not stored: every byte of a call entry is per call).
    pub fn frames(&self) -> bool {
        self.dirs[0].framing.load(Ordering::Relaxed) != Framing::Off as u8
    }

    /// The upstream the call runs over now: the first one, unless a reattach moved it.
    pub fn current_upstream(&self) -> Arc<str> {
        match &self.reattach {
            Some(r) => lock(&r.upstream).clone(),
            None => self.upstream.clone(),
        }
    }

    /// Successful reattaches so far.
    pub fn reattached(&self) -> u32 {
        self.reattach
            .as_ref()
            .map_or(0, |r| r.count.load(Ordering::Relaxed))
    }

    /// Count one reattach result on the route (and, for `ok`, the call's
    /// count, its gap, and the upstream it now runs over).
    pub fn record_reattach(&self, result: ReattachResult, gap: Duration, upstream: Option<&str>) {
        self.metrics.reattach[result as usize].fetch_add(1, Ordering::Relaxed);
        if let Some(r) = &self.reattach {
            r.reattaching.store(false, Ordering::Relaxed);
        }
        if result != ReattachResult::Ok {
            return;
        }
        self.metrics.reattach_gap.observe(gap);
        if let Some(r) = &self.reattach {
            r.count.fetch_add(1, Ordering::Relaxed);
            r.gap_ms
                .fetch_add(gap.as_millis() as u64, Ordering::Relaxed);
            if let Some(name) = upstream {
                *lock(&r.upstream) = name.into();
            }
        }
    }

    /// The route's label.
    pub fn route(&self) -> &str {
        &self.metrics.route
    }

    /// Path and query, the token redacted.
    pub fn path(&self) -> &str {
        match self.path_len {
            u32::MAX => &self.path_and_user,
            n => self.path_and_user.get(..n as usize).unwrap_or_default(),
        }
    }

    /// The caller's `sub` claim, if the call was authenticated by a JWT with one.
    pub fn user(&self) -> Option<&str> {
        match self.path_len {
            u32::MAX => None,
            n => self.path_and_user.get(n as usize..),
        }
    }

    /// The upstream's name.
    pub fn upstream(&self) -> &str {
        &self.upstream
    }

    /// Milliseconds since the call started, as the tunnel's clock reads them.
    pub fn ms(&self, now: Instant) -> u32 {
        u32::try_from(now.saturating_duration_since(self.started).as_millis()).unwrap_or(u32::MAX)
    }

    /// The call as `/calls` shows it.
    pub fn to_json(&self) -> Value {
        let age = self.started.elapsed();
        let now_ms = age.as_millis() as u64;
        let started_at = SystemTime::now()
            .checked_sub(age)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        json!({
            "id": self.id,
            "client": self.client.to_string(),
            "host": self.host,
            "path": self.path(),
            "user": self.user(),
            "route": self.route(),
            "upstream": &*self.current_upstream(),
            "reattached": self.reattached(),
            "reattaching": self
                .reattach
                .as_ref()
                .is_some_and(|r| r.reattaching.load(Ordering::Relaxed)),
            "generation": self.generation,
            "started": humantime::format_rfc3339_millis(started_at).to_string(),
            "age_seconds": round3(age.as_secs_f64()),
            "frames": self.frames(),
            "directions": {
                "to_backend": self.dirs[TO_UPSTREAM].to_json(now_ms),
                "to_client": self.dirs[TO_DOWNSTREAM].to_json(now_ms),
            },
            "legs": {
                "client": self.legs[0].to_json(self.frames()),
                "backend": self.legs[1].to_json(self.frames()),
            },
        })
    }

    /// Stalls begun in both directions, for `sort=stalls`.
    fn stalls(&self) -> u32 {
        self.dirs
            .iter()
            .map(|d| d.stalls.load(Ordering::Relaxed))
            .sum()
    }

    /// Either direction is stalled now, for the `stalled` count in `/status`.
    fn stalled(&self) -> bool {
        self.dirs.iter().any(|d| d.stalled.load(Ordering::Relaxed))
    }
}

/// How `/calls` orders calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sort {
    /// Oldest first.
    Age,
    /// Most stalls first.
    Stalls,
    /// Highest client round trip (median) first; calls without one last.
    Rtt,
}

impl Sort {
    /// `age`, `stalls` or `rtt`.
    pub fn parse(text: &str) -> Option<Sort> {
        match text {
            "age" => Some(Sort::Age),
            "stalls" => Some(Sort::Stalls),
            "rtt" => Some(Sort::Rtt),
            _ => None,
        }
    }

    /// The `sort` value echoed in the `/calls` body.
    fn as_str(self) -> &'static str {
        match self {
            Sort::Age => "age",
            Sort::Stalls => "stalls",
            Sort::Rtt => "rtt",
        }
    }
}

/// Count of ended calls by route, who closed, and close code.
type CloseKey = (String, ClosedBy, Option<u16>);

/// Minutes a close stays in [`CloseCount::last_hour`].
const CLOSE_WINDOW_MINUTES: u64 = 60;

/// Ended calls of one [`CloseKey`]: the total since start, and counts per
/// minute over the last hour, so `/status` can say what happened lately
/// however long ago the dashboard was opened.
#[derive(Debug, Default)]
struct CloseCount {
    /// Since the registry was made (the `count` in `/status`, the counter in `/metrics`).
    total: u64,
    /// `(minute, count)`, oldest first, at most [`CLOSE_WINDOW_MINUTES`]
    /// entries; `minute` counts whole minutes since the registry's epoch.
    minutes: VecDeque<(u64, u32)>,
}

impl CloseCount {
    /// Count one close in `minute`, and drop the minutes that fell out of the
    /// hour: minutes only grow, so the deque stays at most an hour long.
    fn add(&mut self, minute: u64) {
        self.total += 1;
        match self.minutes.back_mut() {
            Some((m, n)) if *m == minute => *n = n.saturating_add(1),
            _ => self.minutes.push_back((minute, 1)),
        }
        while self
            .minutes
            .front()
            .is_some_and(|(m, _)| m + CLOSE_WINDOW_MINUTES <= minute)
        {
            self.minutes.pop_front();
        }
    }

    /// Closes in this minute and the 59 before it.
    fn last_hour(&self, minute: u64) -> u64 {
        self.minutes
            .iter()
            .filter(|(m, _)| m + CLOSE_WINDOW_MINUTES > minute)
            .map(|(_, n)| u64::from(*n))
            .sum()
    }
}

/// When the registry was made: the origin of [`CloseCount`]'s minutes.
#[derive(Debug)]
struct Epoch(Instant);

impl Default for Epoch {
    fn default() -> Self {
        Epoch(Instant::now())
    }
}

impl Epoch {
    /// Whole minutes from the epoch to `now` (0 before it).
    fn minute(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.0).as_secs() / 60
    }
}

/// Every live call, and the metrics of calls by route.
#[derive(Debug, Default)]
pub struct CallRegistry {
    /// The last id handed out: ids start at 1 and are never reused.
    next_id: AtomicU64,
    /// The open calls by id, which is also start order (`sort=age`). A call
    /// is inserted by `open` and removed when its [`CallGuard`] drops.
    live: Mutex<BTreeMap<u64, Arc<Call>>>,
    /// Per route label, made on the route's first call and never removed, so
    /// a route's histograms keep counting across calls and reloads.
    routes: Mutex<BTreeMap<String, Arc<RouteCalls>>>,
    /// Upstream names, shared by their calls.
    upstreams: Mutex<BTreeMap<String, Arc<str>>>,
    /// Ended calls by route, who closed and code: `closes` in `/status`,
    /// `shunt_tunnel_closes_total` in `/metrics`.
    closes: Mutex<BTreeMap<CloseKey, CloseCount>>,
    /// The origin of the close counts' minutes.
    epoch: Epoch,
}

/// Lock `m` whatever a panicking holder left: each map is valid between
/// operations, so a poisoned lock must not take `/calls` down with it.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl CallRegistry {
    /// Register a call; it is listed until the guard drops.
    pub fn open(self: &Arc<Self>, info: CallInfo) -> CallGuard {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let metrics = lock(&self.routes)
            .entry(info.route.clone())
            .or_insert_with(|| Arc::new(RouteCalls::new(&info.route)))
            .clone();
        let framing = if info.frames {
            Framing::Tracked
        } else {
            Framing::Off
        };
        let upstream = lock(&self.upstreams)
            .entry(info.upstream.clone())
            .or_insert_with(|| info.upstream.as_str().into())
            .clone();
        let call = Arc::new(Call {
            id,
            client: info.client,
            host: info.host.map(String::into_boxed_str),
            path_len: if info.user.is_some() {
                u32::try_from(info.path.len()).unwrap_or(u32::MAX)
            } else {
                u32::MAX
            },
            path_and_user: match info.user {
                Some(user) => format!("{}{user}", info.path).into_boxed_str(),
                None => info.path.into_boxed_str(),
            },
            generation: u32::try_from(info.generation).unwrap_or(u32::MAX),
            started: Instant::now(),
            dirs: Default::default(),
            legs: Default::default(),
            metrics,
            reattach: info.reattach.then(|| {
                Box::new(CallReattach {
                    count: AtomicU32::new(0),
                    gap_ms: AtomicU64::new(0),
                    dropped_messages: AtomicU64::new(0),
                    reattaching: AtomicBool::new(false),
                    upstream: Mutex::new(upstream.clone()),
                })
            }),
            upstream,
        });
        for d in &call.dirs {
            d.framing.store(framing as u8, Ordering::Relaxed);
        }
        lock(&self.live).insert(id, call.clone());
        CallGuard {
            call,
            registry: self.clone(),
        }
    }

    /// Count an ended call's close.
    pub fn record_close(&self, route: &str, by: ClosedBy, code: Option<u16>) {
        self.record_close_at(route, by, code, Instant::now());
    }

    /// [`CallRegistry::record_close`] at a given instant, for tests of the hour window.
    fn record_close_at(&self, route: &str, by: ClosedBy, code: Option<u16>, now: Instant) {
        let minute = self.epoch.minute(now);
        lock(&self.closes)
            .entry((route.to_owned(), by, code))
            .or_default()
            .add(minute);
    }

    /// Live calls.
    pub fn active(&self) -> usize {
        lock(&self.live).len()
    }

    /// One live call.
    pub fn get(&self, id: u64) -> Option<Arc<Call>> {
        lock(&self.live).get(&id).cloned()
    }

    /// The `/calls` body: at most `limit` calls in `sort` order.
    pub fn list_json(&self, limit: usize, sort: Sort) -> Value {
        let mut calls: Vec<Arc<Call>> = lock(&self.live).values().cloned().collect();
        let total = calls.len();
        match sort {
            // The map is in id order, which is start order.
            Sort::Age => {}
            Sort::Stalls => calls.sort_by_key(|c| std::cmp::Reverse(c.stalls())),
            Sort::Rtt => calls.sort_by_key(|c| std::cmp::Reverse(c.legs[0].rtt_median())),
        }
        calls.truncate(limit);
        json!({
            "total": total,
            "limit": limit,
            "sort": sort.as_str(),
            "calls": calls.iter().map(|c| c.to_json()).collect::<Vec<_>>(),
        })
    }

    /// The `calls` part of `/status`.
    pub fn status_json(&self) -> Value {
        self.status_json_at(Instant::now())
    }

    /// [`CallRegistry::status_json`] at a given instant, for tests of the hour window.
    fn status_json_at(&self, now: Instant) -> Value {
        let minute = self.epoch.minute(now);
        let (active, stalled) = {
            let live = lock(&self.live);
            (live.len(), live.values().filter(|c| c.stalled()).count())
        };
        let stalls_total: u64 = lock(&self.routes)
            .values()
            .map(|r| r.stalls.load(Ordering::Relaxed))
            .sum();
        let mut reattach = [0u64; 3];
        for r in lock(&self.routes).values() {
            for (sum, n) in reattach.iter_mut().zip(&r.reattach) {
                *sum += n.load(Ordering::Relaxed);
            }
        }
        let closes: Vec<Value> = lock(&self.closes)
            .iter()
            .map(|((route, by, code), n)| {
                json!({
                    "route": route,
                    "closed_by": by.as_str(),
                    "code": code,
                    "count": n.total,
                    "last_hour": n.last_hour(minute),
                })
            })
            .collect();
        json!({
            "active": active,
            "stalled": stalled,
            "stalls_total": stalls_total,
            "reattach": {
                "ok": reattach[0],
                "gave_up": reattach[1],
                "not_reattachable": reattach[2],
            },
            "closes": closes,
        })
    }

    /// The call metrics in Prometheus text.
    pub fn to_prometheus(&self, out: &mut String) {
        let mut active: BTreeMap<(String, String), u64> = BTreeMap::new();
        for c in lock(&self.live).values() {
            *active
                .entry((c.route().to_owned(), c.upstream().to_owned()))
                .or_default() += 1;
        }
        let _ = writeln!(
            out,
            "# HELP shunt_calls_active Live calls (WebSocket tunnels) by route and upstream.\n# TYPE shunt_calls_active gauge"
        );
        for ((route, upstream), n) in &active {
            let _ = writeln!(
                out,
                "shunt_calls_active{{route=\"{}\",upstream=\"{}\"}} {n}",
                escape(route),
                escape(upstream)
            );
        }
        let routes: Vec<Arc<RouteCalls>> = lock(&self.routes).values().cloned().collect();
        let _ = writeln!(
            out,
            "# HELP shunt_call_duration_seconds Duration of ended calls.\n# TYPE shunt_call_duration_seconds histogram"
        );
        for r in &routes {
            let labels = format!("route=\"{}\"", escape(&r.route));
            r.duration
                .write(out, "shunt_call_duration_seconds", &labels);
        }
        let _ = writeln!(
            out,
            "# HELP shunt_frame_gap_seconds Gaps between data frames, by route and direction.\n# TYPE shunt_frame_gap_seconds histogram"
        );
        for r in &routes {
            for (d, h) in DIRECTIONS.iter().zip(&r.gaps) {
                let labels = format!("route=\"{}\",direction=\"{d}\"", escape(&r.route));
                h.write(out, "shunt_frame_gap_seconds", &labels);
            }
        }
        let _ = writeln!(
            out,
            "# HELP shunt_call_stalls_total Streaming directions that went silent for stall_after.\n# TYPE shunt_call_stalls_total counter"
        );
        for r in &routes {
            let _ = writeln!(
                out,
                "shunt_call_stalls_total{{route=\"{}\"}} {}",
                escape(&r.route),
                r.stalls.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP shunt_ping_rtt_seconds Round trips of shunt's pings, by route and leg.\n# TYPE shunt_ping_rtt_seconds histogram"
        );
        for r in &routes {
            for (leg, h) in LEGS.iter().zip(&r.rtt) {
                let labels = format!("route=\"{}\",leg=\"{leg}\"", escape(&r.route));
                h.write(out, "shunt_ping_rtt_seconds", &labels);
            }
        }
        let _ = writeln!(
            out,
            "# HELP shunt_call_reattach_total Backend legs replaced under live calls, by route and result.\n# TYPE shunt_call_reattach_total counter"
        );
        for r in &routes {
            for (result, n) in REATTACH_RESULTS.iter().zip(&r.reattach) {
                let _ = writeln!(
                    out,
                    "shunt_call_reattach_total{{route=\"{}\",result=\"{result}\"}} {}",
                    escape(&r.route),
                    n.load(Ordering::Relaxed)
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP shunt_call_reattach_gap_seconds How long a call waited for its new backend leg.\n# TYPE shunt_call_reattach_gap_seconds histogram"
        );
        for r in &routes {
            let labels = format!("route=\"{}\"", escape(&r.route));
            r.reattach_gap
                .write(out, "shunt_call_reattach_gap_seconds", &labels);
        }
        let _ = writeln!(
            out,
            "# HELP shunt_tunnel_closes_total Ended calls by route, who closed, and close code.\n# TYPE shunt_tunnel_closes_total counter"
        );
        for ((route, by, code), n) in lock(&self.closes).iter() {
            let n = n.total;
            let code = code.map_or_else(|| "none".to_owned(), |c| c.to_string());
            let _ = writeln!(
                out,
                "shunt_tunnel_closes_total{{route=\"{}\",closed_by=\"{}\",code=\"{code}\"}} {n}",
                escape(route),
                by.as_str()
            );
        }
    }
}

/// Keeps a call listed; dropping it removes the call.
#[derive(Debug)]
pub struct CallGuard {
    /// The call's shared figures.
    pub call: Arc<Call>,
    /// Where the call is listed, to take it out on drop.
    registry: Arc<CallRegistry>,
}

impl CallGuard {
    /// Record how the call ended (its close and duration).
    pub fn record_end(&self, by: ClosedBy, code: Option<u16>) {
        let call = &self.call;
        self.registry.record_close(call.route(), by, code);
        call.metrics.duration.observe(call.started.elapsed());
    }
}

impl Drop for CallGuard {
    /// The call leaves `/calls` (and `shunt_calls_active`) as its tunnel
    /// task ends, however it ends; its close is recorded by `record_end`.
    fn drop(&mut self) {
        lock(&self.registry.live).remove(&self.call.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> CallInfo {
        CallInfo {
            user: None,
            client: "127.0.0.1:5555".parse().unwrap(),
            host: Some("example.test".into()),
            path: "/audio?token=REDACTED".into(),
            route: "/audio".into(),
            upstream: "direct".into(),
            generation: 1,
            frames: true,
            reattach: false,
        }
    }

    #[test]
    fn path_and_user_share_one_box() {
        let registry = Arc::new(CallRegistry::default());
        let plain = registry.open(info());
        assert_eq!(plain.call.path(), "/audio?token=REDACTED");
        assert_eq!(plain.call.user(), None);
        let with_user = registry.open(CallInfo {
            user: Some("alice".into()),
            ..info()
        });
        assert_eq!(with_user.call.path(), "/audio?token=REDACTED");
        assert_eq!(with_user.call.user(), Some("alice"));
        assert_eq!(with_user.call.to_json()["user"], "alice");
    }

    #[test]
    fn calls_are_listed_while_open_and_closes_are_counted() {
        let reg = Arc::new(CallRegistry::default());
        let a = reg.open(info());
        let b = reg.open(info());
        b.call.dirs[0].stalls.store(2, Ordering::Relaxed);
        b.call.legs[0].record_rtt(Duration::from_millis(30));
        assert_eq!(reg.active(), 2);
        let list = reg.list_json(1, Sort::Stalls);
        assert_eq!(list["total"], 2);
        assert_eq!(list["calls"].as_array().unwrap().len(), 1);
        assert_eq!(list["calls"][0]["id"], b.call.id);
        assert_eq!(list["calls"][0]["legs"]["client"]["rtt_last_ms"], 30.0);
        let by_age = reg.list_json(10, Sort::Age);
        assert_eq!(by_age["calls"][0]["id"], a.call.id);
        a.record_end(ClosedBy::Shunt, Some(1012));
        drop(a);
        assert_eq!(reg.active(), 1);
        let status = reg.status_json();
        assert_eq!(status["closes"][0]["code"], 1012);
        assert_eq!(status["closes"][0]["closed_by"], "shunt");
        let mut text = String::new();
        reg.to_prometheus(&mut text);
        assert!(text.contains(
            "shunt_tunnel_closes_total{route=\"/audio\",closed_by=\"shunt\",code=\"1012\"} 1"
        ));
        assert!(text.contains("shunt_calls_active{route=\"/audio\",upstream=\"direct\"} 1"));
        assert!(text.contains(
            "shunt_frame_gap_seconds_bucket{route=\"/audio\",direction=\"to_client\",le=\"0.02\"} 0"
        ));
    }

    #[test]
    fn closes_of_the_last_hour_are_counted_by_minute() {
        let reg = CallRegistry::default();
        let t0 = reg.epoch.0;
        let at = |mins: u64| t0 + Duration::from_secs(mins * 60 + 1);
        reg.record_close_at("/a", ClosedBy::Upstream, Some(1000), at(0));
        reg.record_close_at("/a", ClosedBy::Upstream, Some(1000), at(0));
        reg.record_close_at("/a", ClosedBy::Upstream, Some(1000), at(30));
        let closes = |now| reg.status_json_at(now)["closes"][0].clone();
        assert_eq!(closes(at(30))["last_hour"], 3);
        assert_eq!(closes(at(59))["last_hour"], 3);
        // The two closes of minute 0 leave the window at minute 60.
        assert_eq!(closes(at(60))["last_hour"], 1);
        assert_eq!(closes(at(90))["last_hour"], 0);
        assert_eq!(closes(at(90))["count"], 3);
        // A close two hours on drops every older minute from the ring.
        reg.record_close_at("/a", ClosedBy::Upstream, Some(1000), at(120));
        let len = lock(&reg.closes).values().next().unwrap().minutes.len();
        assert_eq!(len, 1);
        assert_eq!(closes(at(120))["last_hour"], 1);
        assert_eq!(closes(at(120))["count"], 4);
    }

    #[test]
    fn rtt_median_and_fps_window() {
        let leg = LegStats::default();
        for ms in [10, 50, 20] {
            leg.record_rtt(Duration::from_millis(ms));
        }
        assert_eq!(leg.rtt_median(), Some(Duration::from_millis(20)));
        assert_eq!(leg.rtt_last(), Some(Duration::from_millis(20)));
        let d = DirStats::default();
        for i in 0..250u32 {
            d.count_second(i * 20); // 50 frames/s for 5 s
        }
        assert_eq!(d.in_second(2), 50);
        assert!((d.frames_per_second(4_999) - 50.0).abs() < 1.0);
        assert_eq!(d.frames_per_second(20_000), 0.0);
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::new(GAP_BUCKETS);
        h.observe(Duration::from_millis(20));
        h.observe(Duration::from_millis(3000));
        let mut out = String::new();
        h.write(&mut out, "g", "route=\"r\"");
        assert!(out.contains("g_bucket{route=\"r\",le=\"0.02\"} 1"));
        assert!(out.contains("g_bucket{route=\"r\",le=\"5\"} 2"));
        assert!(out.contains("g_count{route=\"r\"} 2"));
    }
}
