//! Backend health: what an active check asks for, and the up/down state machine
//! that active checks and passive observation both drive.
//!
//! The request path reads one atomic (`up`) and, on a response, writes nothing
//! unless a failure streak was in progress. Transitions take a mutex, but only
//! the checker and the (rare) passive ejection ever reach it: never a request
//! that succeeds.

use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use crate::backend::BackendState;

/// Consecutive connect failures, resets or timeouts before the first response
/// byte that take a backend out (HAProxy's `error-limit` default for
/// `observe layer4`).
pub const PASSIVE_FAILURES: u32 = 10;
/// Without active checks, an ejected backend comes back after this cool-down,
/// doubled on every ejection in a row ...
pub const PASSIVE_COOLDOWN: Duration = Duration::from_secs(1);
/// ... up to this.
pub const PASSIVE_COOLDOWN_MAX: Duration = Duration::from_secs(30);

/// One active health check of a route's backends (SPEC `healthcheck`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HealthCheck {
    pub path: String,
    /// `HEAD` or `GET`.
    pub method: String,
    /// The Host header sent; the route's first host when unset.
    pub host: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
    /// Accepted statuses as inclusive ranges.
    pub expect: Vec<(u16, u16)>,
}

/// SPEC's defaults: `HEAD /` every 10s, 2s timeout, rise 2, fall 3, `2xx,3xx`;
/// an empty host sends the backend address.
impl Default for HealthCheck {
    fn default() -> Self {
        HealthCheck {
            path: "/".into(),
            method: "HEAD".into(),
            host: String::new(),
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(2),
            rise: 2,
            fall: 3,
            expect: vec![(200, 399)],
        }
    }
}

impl HealthCheck {
    pub fn accepts(&self, status: u16) -> bool {
        self.expect
            .iter()
            .any(|(lo, hi)| (*lo..=*hi).contains(&status))
    }
}

/// What the last active check saw, for the admin API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastCheck {
    pub at: SystemTime,
    /// The response status, when one was read.
    pub status: Option<u16>,
    pub latency: Duration,
    /// Why it failed; `None` when it passed.
    pub error: Option<String>,
}

/// The slow-moving part of a backend's health, behind the state's mutex.
#[derive(Debug, Clone, Default)]
pub struct HealthInfo {
    /// Consecutive passing / failing active checks.
    pub successes: u32,
    pub failures: u32,
    pub last_check: Option<LastCheck>,
    /// Why the backend is down (the last transition's reason).
    pub reason: Option<String>,
}

/// A change of a backend's health, returned to the caller so it is logged once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    Up { reason: String },
    Down { reason: String },
}

impl BackendState {
    /// Records one active check result; returns the transition it caused, if any.
    /// Down after `fall` failures in a row, up after `rise` successes in a row.
    pub fn record_check(&self, hc: &HealthCheck, last: LastCheck) -> Option<Transition> {
        let ok = last.error.is_none();
        if ok {
            self.checks_ok.fetch_add(1, Ordering::Relaxed);
        } else {
            self.checks_failed.fetch_add(1, Ordering::Relaxed);
        }
        let mut h = self.health_info();
        let reason = last.error.clone();
        h.last_check = Some(last);
        if self.pending.load(Ordering::Relaxed) {
            // A held new backend comes in on its first passing check (an
            // application still warming up fails a few first); until then it is
            // down, and the first failure is logged.
            if ok {
                self.pending.store(false, Ordering::Relaxed);
                h.failures = 0;
                h.successes = 1;
                h.reason = None;
                drop(h);
                self.up.store(true, Ordering::Relaxed);
                return Some(Transition::Up {
                    reason: "its first passing check".into(),
                });
            }
            h.successes = 0;
            h.failures = h.failures.saturating_add(1);
            let reason = format!(
                "waiting for its first passing check, last: {}",
                reason.unwrap_or_default()
            );
            h.reason = Some(reason.clone());
            return (h.failures == 1).then_some(Transition::Down { reason });
        }
        let up = self.is_up();
        if ok {
            h.failures = 0;
            h.successes = h.successes.saturating_add(1);
            if !up && h.successes >= hc.rise {
                let reason = format!("{} consecutive checks passed", h.successes);
                h.reason = None;
                drop(h);
                self.fails.store(0, Ordering::Relaxed);
                self.ejections.store(0, Ordering::Relaxed);
                self.up.store(true, Ordering::Relaxed);
                return Some(Transition::Up { reason });
            }
        } else {
            h.successes = 0;
            h.failures = h.failures.saturating_add(1);
            if up && h.failures >= hc.fall {
                let reason = format!(
                    "{} consecutive checks failed, last: {}",
                    h.failures,
                    reason.unwrap_or_default()
                );
                h.reason = Some(reason.clone());
                drop(h);
                self.up.store(false, Ordering::Relaxed);
                return Some(Transition::Down { reason });
            }
        }
        None
    }

    /// A request could not reach the backend (connect failure, reset or timeout
    /// before any response byte). Returns `Some(n)` when this failure ejected it,
    /// `n` being the number of ejections in a row (for the cool-down back-off).
    pub fn passive_failure(&self, what: &dyn std::fmt::Display) -> Option<u32> {
        let n = self.fails.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        if n < PASSIVE_FAILURES || !self.up.swap(false, Ordering::Relaxed) {
            return None;
        }
        let ejections = self
            .ejections
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        let mut h = self.health_info();
        h.successes = 0;
        h.reason = Some(format!("{n} consecutive requests failed, last: {what}"));
        Some(ejections)
    }

    /// A response head arrived: a failure streak, if any, is over. Costs two
    /// loads and no store on the healthy path.
    #[inline]
    pub fn passive_success(&self) {
        if self.fails.load(Ordering::Relaxed) != 0 {
            self.fails.store(0, Ordering::Relaxed);
        }
        if self.ejections.load(Ordering::Relaxed) != 0 {
            self.ejections.store(0, Ordering::Relaxed);
        }
    }

    /// Ends a passive ejection's cool-down (routes without active checks): the
    /// backend is back on probation, so its next failure ejects it again, for
    /// twice as long.
    pub fn readmit(&self) -> bool {
        self.pending.store(false, Ordering::Relaxed);
        self.fails
            .store(PASSIVE_FAILURES.saturating_sub(1), Ordering::Relaxed);
        let was_down = !self.up.swap(true, Ordering::Relaxed);
        if was_down {
            self.health_info().reason = None;
        }
        was_down
    }

    /// Holds a new backend out of rotation until its first active check passes
    /// (see `Table::compile`).
    pub(crate) fn hold_for_first_check(&self) {
        self.health_info().reason = Some("waiting for its first health check".into());
        self.pending.store(true, Ordering::Relaxed);
        self.up.store(false, Ordering::Relaxed);
    }

    /// Lets a held backend in (its route lost its health check); a backend not
    /// held is left as it is.
    pub(crate) fn release_hold(&self) {
        if self.pending.swap(false, Ordering::Relaxed) {
            self.health_info().reason = None;
            self.up.store(true, Ordering::Relaxed);
        }
    }

    /// The cool-down after the `n`th ejection in a row.
    pub fn cooldown(n: u32) -> Duration {
        let shift = n.saturating_sub(1).min(16);
        PASSIVE_COOLDOWN
            .saturating_mul(1 << shift)
            .min(PASSIVE_COOLDOWN_MAX)
    }

    /// A copy of the slow-moving health facts, for the admin API.
    pub fn health_snapshot(&self) -> HealthInfo {
        self.health_info().clone()
    }

    /// Active checks passed and failed since this backend was first seen.
    pub fn check_counts(&self) -> (u64, u64) {
        (
            self.checks_ok.load(Ordering::Relaxed),
            self.checks_failed.load(Ordering::Relaxed),
        )
    }

    fn health_info(&self) -> std::sync::MutexGuard<'_, HealthInfo> {
        // A poisoned lock only means a panic elsewhere mid-update of plain counters.
        self.health
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{BackendDef, Scheme};

    fn hc(rise: u32, fall: u32) -> HealthCheck {
        HealthCheck {
            rise,
            fall,
            ..HealthCheck::default()
        }
    }

    fn result(ok: bool) -> LastCheck {
        LastCheck {
            at: SystemTime::now(),
            status: Some(if ok { 200 } else { 500 }),
            latency: Duration::from_millis(1),
            error: (!ok).then(|| "status 500".to_string()),
        }
    }

    fn state() -> BackendState {
        BackendState::new(&BackendDef {
            addr: "127.0.0.1:1".parse().unwrap(),
            scheme: Scheme::Http,
            draining: false,
            identity: None,
        })
    }

    #[test]
    fn down_after_fall_up_after_rise_exactly() {
        let s = state();
        let hc = hc(2, 3);
        assert!(
            s.is_up(),
            "a new backend is up until a check says otherwise"
        );
        assert_eq!(s.record_check(&hc, result(false)), None);
        assert_eq!(s.record_check(&hc, result(false)), None);
        // A success in between restarts the count.
        assert_eq!(s.record_check(&hc, result(true)), None);
        assert_eq!(s.record_check(&hc, result(false)), None);
        assert_eq!(s.record_check(&hc, result(false)), None);
        assert!(s.is_up());
        assert!(matches!(
            s.record_check(&hc, result(false)),
            Some(Transition::Down { .. })
        ));
        assert!(!s.is_up());
        assert_eq!(s.record_check(&hc, result(false)), None);
        assert_eq!(s.record_check(&hc, result(true)), None);
        assert!(!s.is_up());
        assert!(matches!(
            s.record_check(&hc, result(true)),
            Some(Transition::Up { .. })
        ));
        assert!(s.is_up());
        assert_eq!(s.check_counts(), (3, 6));
        let info = s.health_snapshot();
        assert_eq!(info.last_check.unwrap().status, Some(200));
    }

    #[test]
    fn passive_ejects_after_the_limit_and_probation_reejects_at_once() {
        let s = state();
        for _ in 1..PASSIVE_FAILURES {
            assert_eq!(s.passive_failure(&"refused"), None);
        }
        assert_eq!(s.passive_failure(&"refused"), Some(1));
        assert!(!s.is_up());
        // Further failures while out do not eject again.
        assert_eq!(s.passive_failure(&"refused"), None);
        assert!(s.readmit());
        assert!(s.is_up());
        assert_eq!(s.passive_failure(&"refused"), Some(2));
        assert_eq!(BackendState::cooldown(1), PASSIVE_COOLDOWN);
        assert_eq!(BackendState::cooldown(2), PASSIVE_COOLDOWN * 2);
        assert_eq!(BackendState::cooldown(40), PASSIVE_COOLDOWN_MAX);
        // A success resets the streak and the back-off.
        s.readmit();
        s.passive_success();
        for _ in 1..PASSIVE_FAILURES {
            assert_eq!(s.passive_failure(&"reset"), None);
        }
        assert_eq!(s.passive_failure(&"reset"), Some(1));
    }

    #[test]
    fn a_passively_ejected_backend_needs_rise_checks() {
        let s = state();
        let hc = hc(2, 3);
        for _ in 0..PASSIVE_FAILURES {
            s.passive_failure(&"refused");
        }
        assert!(!s.is_up());
        assert_eq!(s.record_check(&hc, result(true)), None);
        assert!(matches!(
            s.record_check(&hc, result(true)),
            Some(Transition::Up { .. })
        ));
    }

    #[test]
    fn expect_ranges() {
        let mut c = hc(1, 1);
        c.expect = vec![(200, 299), (304, 304)];
        assert!(c.accepts(204) && c.accepts(304));
        assert!(!c.accepts(301) && !c.accepts(500));
    }
}
