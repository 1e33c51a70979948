//! The task that keeps one name fresh: its schedule (TTL, refresh, floor, backoff) and the hold
//! of its last good answer. It only ever waits on the clock and on the global budget; nothing
//! outside (requests, backend health) can make it query sooner.

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::proto::rr::{Name, RecordType};
use tokio::time::Instant;

use crate::resolve::{combine, Outcome};
use crate::{Answer, AnswerState, DnsSettings, Shared};

pub(crate) struct Watcher {
    pub(crate) shared: Arc<Shared>,
    pub(crate) name: String,
    pub(crate) query_name: Name,
    pub(crate) generation: u64,
    /// Rung by [`crate::DnsProvider::nudge`]: re-resolve early, but not before the floor.
    pub(crate) nudge: Arc<tokio::sync::Notify>,
}

impl Watcher {
    pub(crate) async fn run(self) {
        let mut state = NameState::default();
        // Log a failure when it starts, not at every retry of a name that stays down.
        let mut previous_error: Option<String> = None;
        loop {
            let outcome = self.resolve().await;
            let now = Instant::now();
            let error = match &outcome {
                Outcome::Addrs { .. } => None,
                Outcome::Empty { error, .. } | Outcome::Failed { error } => Some(error.clone()),
            };
            let repeated = error.is_some() && error == previous_error;
            if previous_error.is_some() && error.is_none() {
                tracing::info!(name = %self.name, "DNS resolves again");
            }
            previous_error = error;
            match &outcome {
                Outcome::Addrs { addrs, ttl } => {
                    tracing::debug!(name = %self.name, ?addrs, ?ttl, "resolved");
                }
                Outcome::Empty { error, .. } => {
                    self.shared
                        .counters
                        .empty_answers
                        .fetch_add(1, Ordering::Relaxed);
                    if !repeated {
                        tracing::info!(name = %self.name, %error, "DNS answered no address");
                    }
                }
                Outcome::Failed { error } => {
                    self.shared
                        .counters
                        .failures
                        .fetch_add(1, Ordering::Relaxed);
                    if !repeated {
                        tracing::warn!(name = %self.name, %error, "DNS resolution failed");
                    }
                }
            }
            let (answer, delay) = state.apply(outcome, now, &self.shared.settings);
            self.shared.publish(&self.name, self.generation, answer);

            let next_query = now + delay;
            if let Some(expiry) = state.hold_expiry(&self.shared.settings) {
                if expiry < next_query {
                    tokio::time::sleep_until(expiry).await;
                    if let Some(answer) = state.expire(Instant::now(), &self.shared.settings) {
                        tracing::warn!(
                            name = %self.name,
                            hold_valid = ?self.shared.settings.hold_valid,
                            "no good DNS answer within hold_valid: the name has no address now"
                        );
                        self.shared.publish(&self.name, self.generation, answer);
                    }
                }
            }
            let floor = now + self.shared.settings.min_refresh;
            tokio::select! {
                _ = tokio::time::sleep_until(next_query) => {}
                _ = self.nudge.notified() => tokio::time::sleep_until(floor.min(next_query)).await,
            }
        }
    }

    /// A, then AAAA unless A already failed; each query waits for the global budget.
    async fn resolve(&self) -> Outcome {
        let mut results = Vec::with_capacity(2);
        for record_type in [RecordType::A, RecordType::AAAA] {
            // Reserve every message this query may send (retransmissions, TCP retry), then
            // give back what it did not send.
            let reserved = self.shared.resolver.max_datagrams();
            self.shared.bucket.acquire(reserved).await;
            self.shared.counters.queries.fetch_add(1, Ordering::Relaxed);
            let result = self
                .shared
                .resolver
                .lookup(&self.query_name, record_type)
                .await;
            self.shared
                .bucket
                .refund(reserved.saturating_sub(result.sent));
            let failed = result.failed();
            results.push(result);
            if failed {
                break;
            }
        }
        combine(results)
    }
}

/// What a watcher remembers between two resolutions.
#[derive(Debug, Default)]
pub(crate) struct NameState {
    /// The last good (non-empty) answer, while it is held.
    held: Vec<IpAddr>,
    last_success: Option<Instant>,
    /// Consecutive failed resolutions, for the backoff.
    failures: u32,
    /// Why the held answer is stale, if it is.
    stale_error: Option<String>,
}

impl NameState {
    /// Takes one resolution's outcome; returns the answer to publish and the delay before the
    /// next resolution.
    pub(crate) fn apply(
        &mut self,
        outcome: Outcome,
        now: Instant,
        settings: &DnsSettings,
    ) -> (Answer, Duration) {
        let floor = settings.min_refresh;
        let refresh = settings.refresh.max(floor);
        match outcome {
            Outcome::Addrs { addrs, ttl } => {
                self.held = addrs;
                self.last_success = Some(now);
                self.failures = 0;
                self.stale_error = None;
                let answer = Answer {
                    addrs: self.held.clone(),
                    state: AnswerState::Resolved,
                    last_success: Some(now.into_std()),
                };
                (answer, ttl.min(refresh).max(floor))
            }
            Outcome::Empty { error, ttl } => {
                // An answer, not a failure: no backoff, the record's own schedule.
                self.failures = 0;
                let delay = ttl.unwrap_or(refresh).min(refresh).max(floor);
                (self.without_answer(error, now, settings), delay)
            }
            Outcome::Failed { error } => {
                self.failures = self.failures.saturating_add(1);
                (
                    self.without_answer(error, now, settings),
                    backoff(self.failures, floor, refresh),
                )
            }
        }
    }

    /// When the held answer stops being valid, if one is held.
    pub(crate) fn hold_expiry(&self, settings: &DnsSettings) -> Option<Instant> {
        if self.stale_error.is_none() || self.held.is_empty() {
            return None;
        }
        self.last_success.map(|last| last + settings.hold_valid)
    }

    /// Drops the held answer if `hold_valid` has passed; returns the answer to publish then.
    pub(crate) fn expire(&mut self, now: Instant, settings: &DnsSettings) -> Option<Answer> {
        let expiry = self.hold_expiry(settings)?;
        if now < expiry {
            return None;
        }
        let error = self.stale_error.clone().unwrap_or_default();
        Some(self.without_answer(error, now, settings))
    }

    fn without_answer(&mut self, error: String, now: Instant, settings: &DnsSettings) -> Answer {
        let last_success = self.last_success.map(Instant::into_std);
        let holding = !self.held.is_empty()
            && self
                .last_success
                .is_some_and(|last| now.saturating_duration_since(last) < settings.hold_valid);
        if holding {
            let since_last_success = self
                .last_success
                .map_or(Duration::ZERO, |last| now.saturating_duration_since(last));
            self.stale_error = Some(error.clone());
            Answer {
                addrs: self.held.clone(),
                state: AnswerState::Stale {
                    since_last_success,
                    error,
                },
                last_success,
            }
        } else {
            self.held.clear();
            self.stale_error = None;
            Answer {
                addrs: Vec::new(),
                state: AnswerState::Failed { error },
                last_success,
            }
        }
    }
}

/// Delay before retrying after `failures` consecutive failures: the floor, doubling, capped at
/// the refresh interval. Never below the floor, so a failing name can never spin.
pub(crate) fn backoff(failures: u32, floor: Duration, refresh: Duration) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    floor.saturating_mul(1 << doublings).min(refresh).max(floor)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn settings() -> DnsSettings {
        DnsSettings {
            refresh: Duration::from_secs(5),
            hold_valid: Duration::from_secs(60),
            min_refresh: Duration::from_secs(1),
            ..DnsSettings::default()
        }
    }

    fn addrs(n: u8) -> Vec<IpAddr> {
        (1..=n)
            .map(|i| IpAddr::V4(Ipv4Addr::new(10, 0, 0, i)))
            .collect()
    }

    fn ok(n: u8, ttl: u64) -> Outcome {
        Outcome::Addrs {
            addrs: addrs(n),
            ttl: Duration::from_secs(ttl),
        }
    }

    fn failed() -> Outcome {
        Outcome::Failed {
            error: "A query failed: request timed out".into(),
        }
    }

    #[test]
    fn schedule_is_min_of_ttl_and_refresh_with_a_floor() {
        let s = settings();
        let now = Instant::now();
        let mut state = NameState::default();
        assert_eq!(state.apply(ok(1, 600), now, &s).1, Duration::from_secs(5));
        assert_eq!(state.apply(ok(1, 2), now, &s).1, Duration::from_secs(2));
        assert_eq!(state.apply(ok(1, 0), now, &s).1, Duration::from_secs(1));
        // A refresh below the floor is raised to it.
        let tiny = DnsSettings {
            refresh: Duration::from_millis(10),
            ..settings()
        };
        assert_eq!(
            state.apply(ok(1, 600), now, &tiny).1,
            Duration::from_secs(1)
        );
    }

    #[test]
    fn backoff_doubles_from_floor_up_to_refresh() {
        let (floor, refresh) = (Duration::from_secs(1), Duration::from_secs(5));
        let delays: Vec<_> = (1..=5)
            .map(|n| backoff(n, floor, refresh).as_secs())
            .collect();
        assert_eq!(delays, [1, 2, 4, 5, 5]);
        assert_eq!(backoff(u32::MAX, floor, refresh), refresh);
    }

    #[test]
    fn failure_holds_last_answer_until_hold_valid() {
        let s = settings();
        let t0 = Instant::now();
        let mut state = NameState::default();
        state.apply(ok(2, 600), t0, &s);

        let (answer, _) = state.apply(failed(), t0 + Duration::from_secs(10), &s);
        assert_eq!(answer.addrs, addrs(2));
        assert!(
            matches!(answer.state, AnswerState::Stale { since_last_success, .. }
            if since_last_success == Duration::from_secs(10))
        );
        assert_eq!(state.hold_expiry(&s), Some(t0 + Duration::from_secs(60)));
        assert_eq!(state.expire(t0 + Duration::from_secs(59), &s), None);

        let expired = state.expire(t0 + Duration::from_secs(60), &s).unwrap();
        assert!(expired.addrs.is_empty());
        assert!(matches!(expired.state, AnswerState::Failed { .. }));
        assert_eq!(expired.last_success, Some(t0.into_std()));
        assert_eq!(state.hold_expiry(&s), None);
    }

    #[test]
    fn empty_answer_is_held_like_a_failure_but_not_backed_off() {
        let s = settings();
        let t0 = Instant::now();
        let mut state = NameState::default();
        state.apply(ok(1, 600), t0, &s);
        let (answer, delay) = state.apply(
            Outcome::Empty {
                error: "no such name (NXDOMAIN)".into(),
                ttl: None,
            },
            t0 + Duration::from_secs(5),
            &s,
        );
        assert_eq!(answer.addrs, addrs(1));
        assert!(matches!(answer.state, AnswerState::Stale { .. }));
        assert_eq!(delay, Duration::from_secs(5));
    }

    #[test]
    fn never_resolved_name_is_simply_empty() {
        let s = settings();
        let mut state = NameState::default();
        let (answer, delay) = state.apply(failed(), Instant::now(), &s);
        assert!(answer.addrs.is_empty());
        assert!(matches!(answer.state, AnswerState::Failed { .. }));
        assert_eq!(answer.last_success, None);
        assert_eq!(delay, Duration::from_secs(1));
        assert_eq!(state.hold_expiry(&s), None);
    }
}
