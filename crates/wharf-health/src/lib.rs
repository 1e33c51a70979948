//! Active health checks.
//!
//! The [`Checker`] watches the published table and keeps one background task per
//! checked backend, keyed by (route name, address) with the route's
//! [`HealthCheck`]. Each task probes its backend on a jittered schedule and
//! records the result into the backend's `BackendState`, the same atomics the
//! balancers read; nothing here ever runs on the request path.
//!
//! What it must never do: hold a table generation across an `.await` (it copies
//! the few `Arc`s it needs out of the guard), reset a backend's up/down state
//! (that state belongs to the table's registry and survives swaps and check
//! changes), or let one backend's checks cost more than one small buffer and one
//! connection for at most `timeout`.

mod probe;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::{watch, Semaphore};
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use wharf_table::{BackendState, BackendTls, HealthCheck, LastCheck, Scheme, Table, Transition};

pub use probe::{Probe, MAX_HEAD};

/// The published table, as the control plane shares it.
pub type SharedTable = Arc<ArcSwap<Table>>;

/// The first re-check of a new backend held for its first passing check.
const HELD_RECHECK: Duration = Duration::from_millis(250);

/// Checks in flight at once, across all backends.
pub const MAX_IN_FLIGHT: usize = 64;

/// One checked backend, for [`run_target`]'s log lines and records.
#[derive(Debug, Clone)]
pub struct Target {
    pub route: Arc<str>,
    pub addr: SocketAddr,
    pub hc: Arc<HealthCheck>,
    pub state: Arc<BackendState>,
}

/// Checks one backend forever: the first check after a random delay in
/// `[0, interval)` (at once for a backend waiting for its first check), then one every `interval` ± 10 %, so that backends added
/// together do not fire together. Each result goes to `record_check`; a
/// transition is logged once, here. Ends only when its task is aborted or
/// cancelled.
pub async fn run_target<F, Fut>(t: &Target, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = LastCheck>,
{
    let interval = t.hc.interval;
    let mut held = HELD_RECHECK;
    // A backend held out until its first check (a new task) is checked at once.
    if !t.state.is_pending() {
        tokio::time::sleep(interval.mul_f64(fastrand::f64())).await;
    }
    loop {
        let started = Instant::now();
        let last = probe().await;
        match t.state.record_check(&t.hc, last) {
            Some(Transition::Down { reason }) => {
                warn!(route = %t.route, backend = %t.addr, reason = %reason, "backend down");
            }
            Some(Transition::Up { reason }) => {
                info!(route = %t.route, backend = %t.addr, reason = %reason, "backend up");
            }
            None => {}
        }
        // From the start of this check, so a slow check does not stretch the
        // period; a check slower than the period (only when waiting for a slot)
        // is followed at once. A new backend still held for its first passing
        // check (an application still starting) is checked again sooner: 250 ms,
        // doubling, up to the interval.
        let next = if t.state.is_pending() {
            let wait = held.min(interval);
            held = held.saturating_mul(2);
            wait
        } else {
            probe::jittered(interval)
        };
        tokio::time::sleep_until(started + next).await;
    }
}

/// A backend the table wants checked: what the task needs, its scheme and its
/// route's backend TLS policy.
type Wanted = (Target, Scheme, Option<Arc<BackendTls>>);

struct Running {
    hc: Arc<HealthCheck>,
    state: Arc<BackendState>,
    /// The route's backend TLS policy the probe was built with (`https` only).
    tls: Option<Arc<BackendTls>>,
    abort: AbortHandle,
}

/// Reconciles the check tasks with the published table.
pub struct Checker {
    table: SharedTable,
    slots: Arc<Semaphore>,
    cancel: CancellationToken,
    running: HashMap<(Arc<str>, SocketAddr), Running>,
    tasks: JoinSet<()>,
}

impl Checker {
    /// `max_in_flight` bounds the checks running at once across all backends.
    pub fn new(table: SharedTable, max_in_flight: usize, cancel: CancellationToken) -> Self {
        Checker {
            table,
            slots: Arc::new(Semaphore::new(max_in_flight.max(1))),
            cancel,
            running: HashMap::new(),
            tasks: JoinSet::new(),
        }
    }

    /// Backends being checked now.
    pub fn len(&self) -> usize {
        self.running.len()
    }

    pub fn is_empty(&self) -> bool {
        self.running.is_empty()
    }

    /// Starts tasks for newly checked backends and stops those of backends that
    /// are gone or whose route's check or backend TLS policy changed (a changed
    /// check starts afresh; the backend's up/down state is left as it is).
    pub fn reconcile(&mut self) {
        self.reap();
        // The scheme and TLS policy ride along so that a probe is built only for
        // a task that starts, not for every checked backend on every swap.
        let mut wanted: HashMap<(Arc<str>, SocketAddr), Wanted> = HashMap::new();
        {
            let table = self.table.load();
            for route in table.routes() {
                let Some(hc) = &route.policy.healthcheck else {
                    continue;
                };
                for b in route.backends.all() {
                    // Only `https` backends speak TLS; the policy of a route with
                    // other backends must not restart their checks.
                    let tls = match b.scheme {
                        Scheme::Https => route.policy.backend_tls.clone(),
                        Scheme::Http | Scheme::H2c => None,
                    };
                    let target = Target {
                        route: route.name.clone(),
                        addr: b.addr,
                        hc: hc.clone(),
                        state: b.state.clone(),
                    };
                    wanted.insert((route.name.clone(), b.addr), (target, b.scheme, tls));
                }
            }
        }
        self.running.retain(|key, r| {
            let keep = wanted.get(key).is_some_and(|(t, _, tls)| {
                (Arc::ptr_eq(&r.hc, &t.hc) || *r.hc == *t.hc)
                    && Arc::ptr_eq(&r.state, &t.state)
                    // BackendTls compares by key: equal keys, equal policies.
                    && r.tls == *tls
            });
            if !keep {
                debug!(route = %key.0, backend = %key.1, "health check stopped");
                r.abort.abort();
                // No check any more for a backend that is still served: what
                // held it down is gone, so it takes requests again (on
                // probation: passive health still watches it).
                if !wanted.contains_key(key) && r.state.readmit() {
                    info!(
                        route = %key.0, backend = %key.1,
                        "backend up: its route no longer has a health check"
                    );
                }
            }
            keep
        });
        for (key, (target, scheme, tls)) in wanted {
            if self.running.contains_key(&key) {
                continue;
            }
            let probe = Probe::new(target.addr, scheme, &target.hc, tls.as_ref());
            debug!(route = %key.0, backend = %key.1, "health check started");
            let running = Running {
                hc: target.hc.clone(),
                state: target.state.clone(),
                tls,
                abort: self.spawn(target, probe),
            };
            self.running.insert(key, running);
        }
    }

    fn spawn(&mut self, target: Target, probe: Probe) -> AbortHandle {
        let slots = self.slots.clone();
        let cancel = self.cancel.clone();
        let probe = Arc::new(probe);
        self.tasks.spawn(async move {
            let checks = run_target(&target, || {
                let slots = slots.clone();
                let probe = probe.clone();
                async move {
                    // The timeout starts once a slot is had: waiting for one is
                    // not the backend's fault. The semaphore is never closed.
                    let _slot = slots.acquire().await.ok();
                    probe.check().await
                }
            });
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = checks => {}
            }
        })
    }

    /// Forgets finished tasks; a task that panicked loses its entry, so the
    /// next reconcile starts it again.
    fn reap(&mut self) {
        while let Some(done) = self.tasks.try_join_next_with_id() {
            if let Err(e) = done {
                if e.is_panic() {
                    let id = e.id();
                    warn!("a health check task panicked; it restarts");
                    self.running.retain(|_, r| r.abort.id() != id);
                }
            }
        }
    }

    /// Reconciles now and after every change signalled on `changes` (the binary
    /// sends one after each table swap), until the cancellation token fires.
    pub async fn run<T: Send + Sync>(mut self, mut changes: watch::Receiver<T>) {
        let cancel = self.cancel.clone();
        let mut watching = true;
        loop {
            self.reconcile();
            tokio::select! {
                _ = cancel.cancelled() => break,
                r = changes.changed(), if watching => {
                    // The sender is gone: the table no longer changes; keep checking.
                    watching = r.is_ok();
                }
                // Reap panicked tasks now and then even when nothing changes.
                _ = tokio::time::sleep(Duration::from_secs(60)) => {}
            }
        }
        self.tasks.shutdown().await;
    }
}

/// Starts the checker on the current runtime: it reconciles at once and after
/// every change on `changes`, and ends (with all its tasks) on `cancel`.
pub fn spawn<T: Send + Sync + 'static>(
    table: SharedTable,
    changes: watch::Receiver<T>,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(Checker::new(table, MAX_IN_FLIGHT, cancel).run(changes))
}

#[cfg(test)]
mod tests;
