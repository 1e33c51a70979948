//! The global query budget shared by every watched name.
//!
//! A token bucket whose balance never goes below zero: a query first takes the tokens for every
//! message it may send, and gives back afterwards those it did not send. Over any window `W`
//! the messages sent therefore never exceed `capacity + rate * W`, however many names are
//! failing (HAProxy issue #2503: a down backend caused 1,500 DNS queries/s; this bound makes
//! that impossible here).

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

    fn state(&self) -> std::sync::MutexGuard<'_, BucketState> {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = Instant::now();
        let elapsed = now
            .saturating_duration_since(state.refilled_at)
            .as_secs_f64();
        state.tokens = (state.tokens + elapsed * self.rate).min(self.capacity);
        state.refilled_at = now;
        state
    }

    /// Takes `n` tokens if available; otherwise says how long until they could be.
    pub(crate) fn try_take(&self, n: u32) -> Result<(), Duration> {
        // More than the capacity could never be granted; `DnsSettings::validate` rules it out.
        let n = f64::from(n).min(self.capacity);
        let mut state = self.state();
        if state.tokens >= n {
            state.tokens -= n;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((n - state.tokens) / self.rate))
        }
    }

    /// Takes `n` tokens, waiting until they are available.
    pub(crate) async fn acquire(&self, n: u32) {
        // Waiters re-check after sleeping: a refund may have served another waiter first.
        while let Err(wait) = self.try_take(n) {
            tokio::time::sleep(wait.max(Duration::from_millis(1))).await;
        }
    }

    /// Gives back `n` tokens taken but not used, up to the capacity.
    pub(crate) fn refund(&self, n: u32) {
        if n > 0 {
            let mut state = self.state();
            state.tokens = (state.tokens + f64::from(n)).min(self.capacity);
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
            assert_eq!(bucket.try_take(1), Ok(()));
        }
        assert_eq!(bucket.try_take(1), Err(Duration::from_millis(100)));
        assert_eq!(bucket.try_take(2), Err(Duration::from_millis(200)));
        tokio::time::advance(Duration::from_millis(200)).await;
        assert_eq!(bucket.try_take(2), Ok(()));
        assert_eq!(bucket.try_take(1), Err(Duration::from_millis(100)));
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
    async fn refund_returns_unused_tokens_up_to_capacity() {
        let bucket = TokenBucket::new(10);
        assert_eq!(bucket.try_take(4), Ok(()));
        bucket.refund(3);
        for _ in 0..9 {
            assert_eq!(bucket.try_take(1), Ok(()));
        }
        assert!(bucket.try_take(1).is_err());
        bucket.refund(100);
        assert_eq!(bucket.try_take(10), Ok(()));
        assert!(bucket.try_take(1).is_err());
    }
}
