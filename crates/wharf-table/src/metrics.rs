//! Per-request metrics, recorded with atomics in state the table already holds
//! (per route and per backend, surviving swaps), and turned into Prometheus
//! families only at scrape time: a request takes no lock and hashes no label.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;

/// Upper bounds of the duration buckets, in seconds: 100 µs to 30 s.
pub const BUCKETS: [f64; 17] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

const BUCKETS_NS: [u64; 17] = [
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
    30_000_000_000,
];

/// A duration histogram: one counter per bucket (not cumulative; the scrape
/// sums), the sum in nanoseconds and the count.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; 18],
    sum_ns: AtomicU64,
}

impl Histogram {
    #[inline]
    pub fn observe(&self, d: std::time::Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let i = BUCKETS_NS.partition_point(|b| *b < ns);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Cumulative counts per bucket of [`BUCKETS`] (then +Inf = count), and the
    /// sum in seconds.
    pub fn snapshot(&self) -> ([u64; 17], u64, f64) {
        let mut cum = [0u64; 17];
        let mut total = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            total += b.load(Ordering::Relaxed);
            if i < 17 {
                cum[i] = total;
            }
        }
        let sum = self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        (cum, total, sum)
    }
}

/// The methods `wharf_requests_total` names; anything else is `other`, so a
/// client cannot create series.
pub const METHODS: [&str; 10] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "other",
];

/// The index of a method in [`METHODS`].
#[inline]
pub fn method_index(m: &http::Method) -> u8 {
    match *m {
        http::Method::GET => 0,
        http::Method::HEAD => 1,
        http::Method::POST => 2,
        http::Method::PUT => 3,
        http::Method::DELETE => 4,
        http::Method::CONNECT => 5,
        http::Method::OPTIONS => 6,
        http::Method::TRACE => 7,
        http::Method::PATCH => 8,
        _ => 9,
    }
}

const SLOTS: usize = 64;

/// Requests by (status, method): a fixed open-addressing table of 64 slots,
/// claimed with a compare-and-swap, so counting takes no lock. The (rare)
/// combinations past 64 go to a locked overflow map.
#[derive(Debug)]
pub struct RequestCounts {
    /// `status << 8 | method + 1`; 0 = free.
    keys: [AtomicU32; SLOTS],
    counts: [AtomicU64; SLOTS],
    overflow: Mutex<Vec<(u32, u64)>>,
}

impl Default for RequestCounts {
    fn default() -> Self {
        RequestCounts {
            keys: std::array::from_fn(|_| AtomicU32::new(0)),
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            overflow: Mutex::new(Vec::new()),
        }
    }
}

impl RequestCounts {
    #[inline]
    pub fn count(&self, status: u16, method: u8) {
        let key = u32::from(status) << 8 | (u32::from(method) + 1);
        let start = (u32::from(status) * 31 + u32::from(method)) as usize % SLOTS;
        for i in 0..SLOTS {
            let slot = (start + i) % SLOTS;
            let k = self.keys[slot].load(Ordering::Acquire);
            if k == key {
                self.counts[slot].fetch_add(1, Ordering::Relaxed);
                return;
            }
            if k == 0 {
                match self.keys[slot].compare_exchange(0, key, Ordering::AcqRel, Ordering::Acquire)
                {
                    Ok(_) => {
                        self.counts[slot].fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    Err(k) if k == key => {
                        self.counts[slot].fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    Err(_) => continue,
                }
            }
        }
        let mut o = self.overflow.lock().unwrap_or_else(|e| e.into_inner());
        match o.iter_mut().find(|(k, _)| *k == key) {
            Some((_, n)) => *n += 1,
            None => o.push((key, 1)),
        }
    }

    /// Every (status, method index, count) seen.
    pub fn snapshot(&self) -> Vec<(u16, u8, u64)> {
        let split = |k: u32| ((k >> 8) as u16, ((k & 0xff) - 1) as u8);
        let mut out: Vec<(u16, u8, u64)> = self
            .keys
            .iter()
            .zip(&self.counts)
            .filter_map(|(k, c)| {
                let k = k.load(Ordering::Acquire);
                (k != 0).then(|| {
                    let (s, m) = split(k);
                    (s, m, c.load(Ordering::Relaxed))
                })
            })
            .collect();
        let o = self.overflow.lock().unwrap_or_else(|e| e.into_inner());
        for (k, n) in o.iter() {
            let (s, m) = split(*k);
            out.push((s, m, *n));
        }
        out
    }
}

/// What a route records per request.
#[derive(Debug, Default)]
pub struct RouteMetrics {
    pub requests: RequestCounts,
    /// From the request head to the response head leaving Wharf.
    pub duration: Histogram,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(50));
        h.observe(Duration::from_micros(100));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(60));
        let (cum, count, sum) = h.snapshot();
        assert_eq!(count, 4);
        assert_eq!(cum[0], 2, "<= 100 µs, the bound included");
        assert_eq!(cum[5], 3, "<= 5 ms");
        assert_eq!(cum[16], 3, "60 s is past 30 s: only in +Inf");
        assert!((sum - 60.00315).abs() < 1e-6, "{sum}");
    }

    #[test]
    fn request_counts_by_status_and_method_without_a_lock() {
        let c = std::sync::Arc::new(RequestCounts::default());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let c = c.clone();
                std::thread::spawn(move || {
                    for i in 0..1000u16 {
                        c.count(200 + (i % 3), (t % 2) as u8);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let mut s = c.snapshot();
        s.sort();
        let total: u64 = s.iter().map(|x| x.2).sum();
        assert_eq!(total, 4000);
        assert_eq!(s.len(), 6);
        // More combinations than slots: still counted.
        let c = RequestCounts::default();
        for status in 100..600u16 {
            c.count(status, 9);
        }
        assert_eq!(c.snapshot().len(), 500);
        assert_eq!(method_index(&http::Method::from_bytes(b"BREW").unwrap()), 9);
    }
}
