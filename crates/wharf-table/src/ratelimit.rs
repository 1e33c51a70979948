//! Rate limits: the generic cell rate algorithm (GCRA, ITU-T I.371), one
//! atomic "theoretical arrival time" per key.
//!
//! A key may send a request when its theoretical arrival time (TAT) is at most
//! `tolerance` ahead of now; the request then moves the TAT one emission interval
//! (`1 / rate`) further. `tolerance = (burst - 1) × interval`, so an idle key may
//! send `burst` requests at once and then one per interval. The check is a
//! compare-and-swap loop on one `AtomicU64`: exact under concurrency, no lock held
//! across it, and a key whose TAT has passed is indistinguishable from a key never
//! seen, so forgetting it changes no decision.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;

use dashmap::DashMap;
use http::HeaderName;

/// What a route's limit counts requests by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateKey {
    /// The client address (after the PROXY protocol and `forwarded_trusted`).
    Source,
    /// One budget for the whole route.
    Route,
    /// The value of a request header (`header:NAME`); a request without it is
    /// counted by its client address.
    Header(HeaderName),
    /// The requested host (Traefik's `sourceCriterion.requestHost`,
    /// `header:host`).
    Host,
}

/// A route's rate limit, as compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimit {
    /// Nanoseconds between requests at the configured rate.
    pub interval_ns: u64,
    pub burst: u32,
    pub key: RateKey,
    /// `scope = "cluster"`: the rate is shared among the live replicas
    /// ([`set_cluster_replicas`]).
    pub cluster: bool,
    /// The rate as written (`100/s`), for the admin API.
    pub shown: Box<str>,
}

impl RateLimit {
    /// A limit of `per_second` requests per second (fractions allowed: `6/m` is
    /// 0.1).
    pub fn new(per_second: f64, burst: u32, key: RateKey, cluster: bool, shown: &str) -> Self {
        let interval_ns = (1e9 / per_second).round().clamp(1.0, u64::MAX as f64 / 4.0) as u64;
        RateLimit {
            interval_ns,
            burst: burst.max(1),
            key,
            cluster,
            shown: shown.into(),
        }
    }

    /// Interval and tolerance for this replica: with `cluster` scope and `n`
    /// replicas, each enforces `rate / n` with a burst of `ceil(burst / n)`.
    #[inline]
    fn params(&self) -> (u64, u64) {
        let n = if self.cluster {
            u64::from(REPLICAS.load(Ordering::Relaxed).max(1))
        } else {
            1
        };
        // Bounded so that `now + tolerance + interval` cannot overflow (a
        // quarter of u64 nanoseconds is over a century).
        let interval = self.interval_ns.saturating_mul(n).min(u64::MAX / 8);
        let burst = u64::from(self.burst).div_ceil(n).max(1);
        (
            interval,
            interval.saturating_mul(burst - 1).min(u64::MAX / 8),
        )
    }
}

static REPLICAS: AtomicU32 = AtomicU32::new(1);

/// Sets how many Wharf replicas share `scope = "cluster"` limits (the live
/// replicas found through Docker). At least 1.
pub fn set_cluster_replicas(n: u32) {
    REPLICAS.store(n.max(1), Ordering::Relaxed);
}

/// The replica count `cluster` limits are divided by now.
pub fn cluster_replicas() -> u32 {
    REPLICAS.load(Ordering::Relaxed).max(1)
}

/// Keys kept per route at most. An entry is 16 bytes plus the hash table's
/// overhead: at most about 4 MiB per limited route. Past the cap, keys whose
/// budget is full again are forgotten first (exact: they are as good as new),
/// then the quarter closest to full (lenient to those only).
pub const MAX_KEYS: usize = 1 << 17;

/// The limit state of a route; lives in [`crate::RouteState`] so a table swap
/// keeps it.
#[derive(Debug, Default)]
pub struct RateState {
    /// `key = "route"`.
    route: AtomicU64,
    keys: OnceLock<KeyTable>,
    /// Requests refused (`wharf_ratelimited_total`).
    pub limited: AtomicU64,
}

#[derive(Debug, Default)]
struct KeyTable {
    /// Keyed by the already keyed hash of the request's key: hashed once.
    map: DashMap<u64, AtomicU64, std::hash::BuildHasherDefault<Prehashed>>,
    len: AtomicUsize,
    evicting: std::sync::atomic::AtomicBool,
    hasher: ahash::RandomState,
}

/// A hasher for keys that are already hashes (`KeyTable::hasher`'s output): the
/// map uses the value as it is instead of hashing it a second time.
#[derive(Default)]
struct Prehashed(u64);

impl std::hash::Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used (the key is a u64); fold anything else in.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// The key of one request, as the proxy found it.
#[derive(Debug, Clone, Copy)]
pub enum KeyOf<'a> {
    Route,
    Bytes(&'a [u8]),
    Addr(std::net::IpAddr),
}

impl RateState {
    /// Admits one request at `now` (nanoseconds on [`crate::sticky::now_nanos`]'s
    /// clock), or says in how many nanoseconds one would be admitted.
    #[inline]
    pub fn check(&self, rl: &RateLimit, key: KeyOf<'_>, now: u64) -> Result<(), u64> {
        let (interval, tolerance) = rl.params();
        let r = match key {
            KeyOf::Route => gcra(&self.route, interval, tolerance, now),
            KeyOf::Bytes(b) => self.keyed(|h| h.hash_one(b), interval, tolerance, now),
            KeyOf::Addr(ip) => {
                // An IPv6 client is its /64, as for source stickiness.
                let ip = crate::sticky::client_key(ip);
                self.keyed(|h| h.hash_one(ip), interval, tolerance, now)
            }
        };
        if r.is_err() {
            self.limited.fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    #[inline]
    fn keyed(
        &self,
        hash: impl Fn(&ahash::RandomState) -> u64,
        interval: u64,
        tolerance: u64,
        now: u64,
    ) -> Result<(), u64> {
        let t = self.keys.get_or_init(KeyTable::default);
        let k = hash(&t.hasher);
        if let Some(cell) = t.map.get(&k) {
            return gcra(&cell, interval, tolerance, now);
        }
        if t.len.load(Ordering::Relaxed) >= MAX_KEYS {
            t.evict(now);
        }
        let cell = t.map.entry(k).or_insert_with(|| {
            t.len.fetch_add(1, Ordering::Relaxed);
            AtomicU64::new(0)
        });
        gcra(&cell, interval, tolerance, now)
    }

    /// Keys held now.
    pub fn keys(&self) -> usize {
        self.keys.get().map_or(0, |t| t.len.load(Ordering::Relaxed))
    }

    /// Bytes the key table holds now (entries and control bytes of its capacity).
    pub fn approx_bytes(&self) -> usize {
        self.keys.get().map_or(0, |t| {
            t.map.capacity() * (std::mem::size_of::<(u64, AtomicU64)>() + 1)
        })
    }
}

impl KeyTable {
    fn evict(&self, now: u64) {
        // One sweep at a time; the others insert meanwhile.
        if self.evicting.swap(true, Ordering::Acquire) {
            return;
        }
        // Exact first: a key whose TAT has passed is as good as a new one.
        let mut cutoff = now;
        let sample: Vec<u64> = self
            .map
            .iter()
            .step_by((MAX_KEYS / 256).max(1))
            .map(|c| c.load(Ordering::Relaxed))
            .filter(|tat| *tat > now)
            .collect();
        // Most keys still active: forget the quarter closest to a full budget.
        if sample.len() * 4 > 256 * 3 {
            let mut sample = sample;
            sample.sort_unstable();
            if let Some(q) = sample.get(sample.len() / 4) {
                cutoff = *q;
            }
        }
        self.map.retain(|_, c| c.load(Ordering::Relaxed) > cutoff);
        self.len.store(self.map.len(), Ordering::Relaxed);
        self.evicting.store(false, Ordering::Release);
    }
}

#[inline]
fn gcra(cell: &AtomicU64, interval: u64, tolerance: u64, now: u64) -> Result<(), u64> {
    let mut tat = cell.load(Ordering::Relaxed);
    // A TAT left by stricter settings (a reload, fewer cluster replicas) is held
    // to what the current ones allow: one interval past the tolerance.
    let ceiling = now.saturating_add(tolerance).saturating_add(interval);
    loop {
        let base = tat.max(now).min(ceiling);
        if base - now > tolerance {
            if tat > ceiling {
                // Store the held value, so the debt ends one interval from now.
                let _ = cell.compare_exchange(tat, ceiling, Ordering::Relaxed, Ordering::Relaxed);
            }
            return Err(base - now - tolerance);
        }
        match cell.compare_exchange_weak(
            tat,
            base.saturating_add(interval),
            Ordering::Relaxed,
            Ordering::Relaxed,
        ) {
            Ok(_) => return Ok(()),
            Err(seen) => tat = seen,
        }
    }
}

/// Whole seconds until a request would pass (`Retry-After`), at least 1.
pub fn retry_after_secs(wait_ns: u64) -> u64 {
    wait_ns.div_ceil(1_000_000_000).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const S: u64 = 1_000_000_000;

    fn rl(per_second: f64, burst: u32) -> RateLimit {
        RateLimit::new(per_second, burst, RateKey::Source, false, "t")
    }

    #[test]
    fn burst_then_rate_then_refill() {
        let st = RateState::default();
        let l = rl(5.0, 5);
        let key = KeyOf::Bytes(b"a");
        let now = 10 * S;
        let passed = (0..20).filter(|_| st.check(&l, key, now).is_ok()).count();
        assert_eq!(passed, 5);
        assert_eq!(st.limited.load(Ordering::Relaxed), 15);
        // The next one passes 200 ms later: Retry-After rounds up to 1 s.
        let wait = st.check(&l, key, now).unwrap_err();
        assert_eq!(wait, S / 5);
        assert_eq!(retry_after_secs(wait), 1);
        assert!(st.check(&l, key, now + S / 5).is_ok());
        // Another key has its own budget.
        assert!(st.check(&l, KeyOf::Bytes(b"b"), now).is_ok());
        // A second later the burst is back (one was used at +200 ms).
        let later = now + S + S / 5;
        assert_eq!(
            (0..20).filter(|_| st.check(&l, key, later).is_ok()).count(),
            5
        );
        // A slow rate: 6/m is one every 10 s, Retry-After in whole seconds.
        let st = RateState::default();
        let l = rl(0.1, 1);
        assert!(st.check(&l, KeyOf::Route, now).is_ok());
        assert_eq!(
            retry_after_secs(st.check(&l, KeyOf::Route, now + 1).unwrap_err()),
            10
        );
    }

    #[test]
    fn a_looser_limit_applies_at_once_and_nothing_overflows() {
        let st = RateState::default();
        let strict = rl(1.0 / 3600.0, 1);
        let now = 10 * S;
        assert!(st.check(&strict, KeyOf::Route, now).is_ok());
        assert!(st.check(&strict, KeyOf::Route, now).unwrap_err() > 3000 * S);
        // Reloaded as 100/s: the old hour-long debt is not carried over.
        let loose = rl(100.0, 1);
        let wait = st.check(&loose, KeyOf::Route, now).unwrap_err();
        assert!(wait <= S / 100, "{wait}");
        assert!(st.check(&loose, KeyOf::Route, now + S / 100).is_ok());
        // The largest settings: no overflow, no panic.
        let huge = RateLimit::new(1.0 / 86_400.0, u32::MAX, RateKey::Route, false, "t");
        let st = RateState::default();
        for i in 0..1000 {
            let _ = st.check(&huge, KeyOf::Route, now + i);
        }
        assert!(st.check(&huge, KeyOf::Route, u64::MAX - 1).is_ok());
    }

    #[test]
    fn an_ipv6_client_is_its_64() {
        let st = RateState::default();
        let l = rl(1.0, 1);
        let a: std::net::IpAddr = "2001:db8:0:1::1".parse().unwrap();
        let b: std::net::IpAddr = "2001:db8:0:1:dead:beef::2".parse().unwrap();
        assert!(st.check(&l, KeyOf::Addr(a), S).is_ok());
        assert!(st.check(&l, KeyOf::Addr(b), S).is_err());
        assert!(st
            .check(&l, KeyOf::Addr("2001:db8:0:2::1".parse().unwrap()), S)
            .is_ok());
    }

    #[test]
    fn exact_under_concurrency() {
        let st = Arc::new(RateState::default());
        let l = Arc::new(rl(1.0, 1000));
        let now = 100 * S;
        let passed: usize = (0..8)
            .map(|_| {
                let (st, l) = (st.clone(), l.clone());
                std::thread::spawn(move || {
                    (0..1000)
                        .filter(|_| st.check(&l, KeyOf::Route, now).is_ok())
                        .count()
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .sum();
        assert_eq!(passed, 1000);
    }

    #[test]
    fn cluster_scope_divides_rate_and_burst() {
        let l = RateLimit::new(10.0, 10, RateKey::Route, true, "10/s");
        set_cluster_replicas(2);
        assert_eq!(l.params(), (S / 5, 4 * S / 5));
        set_cluster_replicas(1);
        assert_eq!(l.params(), (S / 10, 9 * S / 10));
        let replica = RateLimit::new(10.0, 10, RateKey::Route, false, "10/s");
        set_cluster_replicas(3);
        assert_eq!(replica.params(), (S / 10, 9 * S / 10));
        set_cluster_replicas(1);
    }

    #[test]
    fn a_million_keys_stay_under_the_cap() {
        let st = RateState::default();
        let l = rl(1.0, 2);
        let mut now = 10 * S;
        for i in 0u32..1_000_000 {
            // Every key stays active (its TAT is a second ahead) for a while.
            now += 100;
            let _ = st.check(&l, KeyOf::Bytes(&i.to_le_bytes()), now);
            assert!(st.keys() <= MAX_KEYS);
        }
        assert!(st.approx_bytes() <= 5 << 20, "{} bytes", st.approx_bytes());
        // A recent key still has its state: its second request is refused.
        let recent = 999_999u32.to_le_bytes();
        assert!(st.check(&l, KeyOf::Bytes(&recent), now).is_ok());
        assert!(st.check(&l, KeyOf::Bytes(&recent), now).is_err());
    }
}
