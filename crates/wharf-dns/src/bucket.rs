//! The global query budget shared by every watched name.
//!
//! A reservation-style token bucket: a caller takes its tokens at once (the balance may go
//! negative) and then sleeps until the balance it left behind would have refilled. Waiters are
//! thus served in the order they asked, and over any window `W` the tokens granted never exceed
//! `capacity + rate * W`, however many names are failing (HAProxy issue #2503: a down backend
//! caused 1,500 DNS queries/s; this bound makes that impossible here).

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

pub(crate) struct TokenBucket {
    rate: f64,
    capacity: f64,
    state: Mutex<BucketState>,
}

struct BucketState {
    tokens: f64,
    refilled_at: Instant,
}

impl TokenBucket {
    /// `rate` tokens per second, starting full with one second's worth (`rate` tokens).
    pub(crate) fn new(rate: u32) -> Self {
        let rate = f64::from(rate.max(1));
        Self {
            rate,
            capacity: rate,
            state: Mutex::new(BucketState {
                tokens: rate,
                refilled_at: Instant::now(),
            }),
        }
    }

    /// Takes `n` tokens and returns how long the caller must wait before using them.
    pub(crate) fn reserve(&self, n: u32) -> Duration {
        let now = Instant::now();
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let elapsed = now
            .saturating_duration_since(state.refilled_at)
            .as_secs_f64();
        state.tokens = (state.tokens + elapsed * self.rate).min(self.capacity);
        state.refilled_at = now;
        state.tokens -= f64::from(n);
        if state.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-state.tokens / self.rate)
        }
    }

    /// Takes `n` tokens, waiting until they are available.
    pub(crate) async fn acquire(&self, n: u32) {
        let wait = self.reserve(n);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    /// Charges `n` tokens already spent (datagrams hickory retransmitted on its own) so that
    /// the next callers wait for them; never waits itself.
    pub(crate) fn charge(&self, n: u32) {
        if n > 0 {
            let _ = self.reserve(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn burst_then_steady_rate() {
        let bucket = TokenBucket::new(10);
        // One second's worth is available at once.
        for _ in 0..10 {
            assert_eq!(bucket.reserve(1), Duration::ZERO);
        }
        // The next ones queue up at 1/rate apart.
        assert_eq!(bucket.reserve(1), Duration::from_millis(100));
        assert_eq!(bucket.reserve(1), Duration::from_millis(200));
        assert_eq!(bucket.reserve(2), Duration::from_millis(400));
    }

    #[tokio::test(start_paused = true)]
    async fn grants_within_window_are_bounded() {
        let bucket = std::sync::Arc::new(TokenBucket::new(20));
        let granted = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..200 {
            let (bucket, granted) = (bucket.clone(), granted.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    bucket.acquire(1).await;
                    if start.elapsed() >= Duration::from_secs(3) {
                        break;
                    }
                    granted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        let n = granted.load(std::sync::atomic::Ordering::Relaxed);
        // capacity 20 + 20/s * 3 s, and the bucket is actually used up to that.
        assert!(n <= 80, "{n} grants in 3 s");
        assert!(n >= 75, "{n} grants in 3 s");
    }

    #[tokio::test(start_paused = true)]
    async fn charge_delays_later_callers() {
        let bucket = TokenBucket::new(10);
        bucket.charge(15);
        assert_eq!(bucket.reserve(1), Duration::from_millis(600));
    }
}
