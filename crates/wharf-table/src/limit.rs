//! Per-route state that outlives table swaps: the `maxconn` queue and the retry
//! counter. Keyed by route name in the [`crate::BackendRegistry`], so a request
//! queued under one table generation is woken by a slot freed under the next.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use tokio::sync::Notify;

use crate::ratelimit::RateState;
use crate::sticky::Bindings;

/// `maxconn` of a route: at most `limit` requests in flight per backend; the
/// excess waits (at most `queue` requests, each at most `timeout`, as HAProxy's
/// `maxqueue` and `timeout queue`), then gets 503.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxConn {
    pub limit: u32,
    pub queue: u32,
    pub timeout: Duration,
}

#[derive(Debug, Default)]
pub struct RouteState {
    /// Requests sent again to another backend (`wharf_retries_total`).
    pub retries: AtomicU64,
    /// Requests waiting for a slot.
    queued: AtomicUsize,
    /// Woken once per freed slot while someone waits.
    notify: Notify,
    pub(crate) seen: AtomicU64,
    /// The rate limit's per-key state and refusal counter.
    pub rate: RateState,
    /// `wharf_requests_total` and `wharf_request_duration_seconds` of the route.
    pub metrics: crate::metrics::RouteMetrics,
    /// `sticky = source` bindings, made on first use.
    bindings: OnceLock<Bindings>,
}

/// A place in a route's queue; leaving it (drop) makes room for another.
#[derive(Debug)]
pub struct QueueTicket<'a> {
    route: &'a RouteState,
}

impl RouteState {
    /// Requests waiting for a slot now.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Joins the queue unless `max` requests already wait.
    pub fn enter_queue(&self, max: u32) -> Option<QueueTicket<'_>> {
        self.queued
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < max as usize).then_some(n + 1)
            })
            .ok()?;
        Some(QueueTicket { route: self })
    }

    /// Resolves when a slot may have been freed. Create it (and `enable` it)
    /// before looking for a slot, so a slot freed in between is not missed.
    pub fn slot_notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.notify.notified()
    }

    /// Called when a request of a `maxconn` route ends.
    #[inline]
    pub(crate) fn slot_freed(&self) {
        // SeqCst with the in-flight decrement before it and the waiter's queue
        // entry and in-flight read: neither side may read the other's stale value.
        if self.queued.load(Ordering::SeqCst) != 0 {
            self.notify.notify_one();
        }
    }

    /// The `sticky = source` bindings of the route.
    pub fn bindings(&self) -> &Bindings {
        self.bindings.get_or_init(Bindings::default)
    }

    /// Bindings held now, without creating the table.
    pub fn bindings_len(&self) -> usize {
        self.bindings.get().map_or(0, Bindings::len)
    }

    pub fn count_retry(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }
}

impl QueueTicket<'_> {
    /// Passes a wake-up on when this waiter leaves without using it (timed out
    /// right as it was woken, or found the slot taken by a backend it cannot use).
    pub fn pass_on(&self) {
        self.route.notify.notify_one();
    }
}

impl Drop for QueueTicket<'_> {
    fn drop(&mut self) {
        self.route.queued.fetch_sub(1, Ordering::AcqRel);
    }
}
