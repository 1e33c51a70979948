//! The order loop: which certificates are wanted, when each is (re)ordered, and what the API shows.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, Order, OrderStatus, RetryPolicy,
};
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use wharf_config::{AcmeConfig, Challenge};

use crate::client::{AcmeHttp, RetrySlot, RETRY_AFTER};
use crate::dns::{DnsUpdater, TxtRecord};
use crate::metrics::Metrics;
use crate::store::{canonical_names, cert_id, CertChange, FileStore, Store, StoredCert};
use crate::{AcmeError, CertSink};

/// Timing and concurrency knobs. The defaults suit Let's Encrypt; tests shorten them.
#[derive(Clone, Debug)]
pub struct Policy {
    /// Orders in flight at once across all certificates (Let's Encrypt rate limits).
    pub max_concurrent_orders: usize,
    /// First retry delay after a failed order; doubles per consecutive failure.
    pub backoff_base: Duration,
    /// Upper bound of the per-certificate retry delay.
    pub backoff_cap: Duration,
    /// How long an order lock is held before other replicas may break it (longer than
    /// `order_timeout`, so a live holder is never broken).
    pub lock_lease: Duration,
    /// When another replica holds the lock: look at the store again after this long. With a
    /// store that reports writes (`swarm`: Docker config events) the certificate is adopted as
    /// soon as it is stored, and this re-check is only the fallback for a lost events stream.
    pub lock_poll: Duration,
    /// First delay when polling an order for readiness (then ×1.5 per poll).
    pub poll_initial: Duration,
    /// Give up on one order after this long.
    pub order_timeout: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            max_concurrent_orders: 4,
            backoff_base: Duration::from_secs(300),
            backoff_cap: Duration::from_secs(12 * 3600),
            lock_lease: Duration::from_secs(180),
            lock_poll: Duration::from_secs(10),
            poll_initial: Duration::from_millis(50),
            order_timeout: Duration::from_secs(120),
        }
    }
}

/// The state of one certificate, for `/api/certificates`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AcmeCertState {
    /// A certificate is stored and served, and no order is due.
    Valid,
    /// No certificate yet; an order is queued or running.
    Pending,
    /// A certificate is served and its renewal is queued or running.
    Renewing,
    /// The last order failed; the next one starts at `retry_at`. A still-valid certificate keeps
    /// being served meanwhile (`not_after` is then set).
    Failed {
        reason: String,
        retry_at: SystemTime,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcmeCertStatus {
    pub names: Vec<String>,
    pub state: AcmeCertState,
    /// Expiry of the certificate being served, if any.
    pub not_after: Option<SystemTime>,
    /// Issuer DN of the certificate being served, e.g. `C=US, O=Let's Encrypt, CN=R11`.
    pub issuer: Option<String>,
}

struct Held {
    cert: Arc<StoredCert>,
    issuer: String,
    not_after: SystemTime,
    renew_at: SystemTime,
}

struct Entry {
    held: Option<Held>,
    running: bool,
    /// Another replica held the order lock at the last attempt and nothing newer was stored yet:
    /// the next attempt first looks for the certificate it stores.
    waiting: bool,
    /// The store reported a write for these names while an attempt ran: look again at once.
    store_changed: bool,
    failures: u32,
    last_error: Option<String>,
    next_attempt: SystemTime,
}

impl Entry {
    fn due_at(&self) -> SystemTime {
        match &self.held {
            None => self.next_attempt,
            Some(h) => h.renew_at.max(self.next_attempt),
        }
    }
}

enum Outcome {
    Issued,
    /// Another replica holds the order lock.
    Busy,
}

struct Inner {
    cfg: AcmeConfig,
    sink: Arc<dyn CertSink>,
    store: Arc<dyn Store>,
    policy: Policy,
    dns: Option<DnsUpdater>,
    http: Mutex<Option<Arc<AcmeHttp>>>,
    account: tokio::sync::Mutex<Option<Account>>,
    http01: Mutex<HashMap<String, String>>,
    /// HTTP-01 tokens of every replica's running orders, as the store listed
    /// them last (see [`AcmeManager::http01`]).
    cluster_http01: Mutex<HashMap<String, String>>,
    /// A miss asks for an early refresh of `cluster_http01`.
    http01_miss: Notify,
    entries: Mutex<HashMap<Vec<String>, Entry>>,
    /// Certificates loaded from the store at start, before `set_names` names them.
    loaded: Mutex<HashMap<Vec<String>, Held>>,
    sem: Semaphore,
    wake: Notify,
    metrics: Metrics,
    holder: String,
    cancel: CancellationToken,
    started: AtomicBool,
}

/// Obtains and renews certificates by ACME. Cheap to clone.
#[derive(Clone)]
pub struct AcmeManager {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Renewal starts at two thirds of the lifetime, minus up to 1/30 of it at random so that many
/// certificates issued together do not all renew in the same minute.
fn renew_at(not_before: SystemTime, not_after: SystemTime) -> SystemTime {
    let life = not_after.duration_since(not_before).unwrap_or_default();
    let jitter = life.mul_f64(fastrand::f64() / 30.0);
    not_before + life.mul_f64(2.0 / 3.0) - jitter
}

/// When to try again after `failures` consecutive failures: `backoff_base` doubled per failure,
/// capped at `backoff_cap`, spread by ±10% (`jitter` in 0..1) so that names and replicas do not
/// retry in step, and never before the CA's `Retry-After`.
fn next_attempt(
    now: SystemTime,
    failures: u32,
    policy: &Policy,
    ca_retry_after: Option<SystemTime>,
    jitter: f64,
) -> SystemTime {
    let exp = failures.saturating_sub(1).min(20);
    let backoff = policy
        .backoff_base
        .saturating_mul(1u32 << exp)
        .min(policy.backoff_cap)
        .mul_f64(0.9 + jitter.clamp(0.0, 1.0) * 0.2);
    let at = now + backoff;
    match ca_retry_after {
        Some(ca) => at.max(ca),
        None => at,
    }
}

fn held(cert: StoredCert) -> Result<Held, AcmeError> {
    let (nb, na, issuer) = crate::pem::validity(&cert.chain_pem)?;
    Ok(Held {
        cert: Arc::new(cert),
        issuer,
        not_after: na,
        renew_at: renew_at(nb, na),
    })
}

impl AcmeManager {
    /// A manager with the store named by `cfg.storage` (`file:DIR` or `swarm`).
    pub fn new(
        cfg: AcmeConfig,
        sink: Arc<dyn CertSink>,
        policy: Policy,
    ) -> Result<Self, AcmeError> {
        let store: Arc<dyn Store> = match &cfg.storage {
            wharf_config::Storage::File(dir) => Arc::new(FileStore::new(dir.clone())),
            wharf_config::Storage::Swarm => Arc::new(crate::SwarmStore::connect_default()?),
        };
        Self::with_store(cfg, sink, store, policy)
    }

    /// A manager with an explicit store (tests, or a swarm store with its own Docker client).
    pub fn with_store(
        cfg: AcmeConfig,
        sink: Arc<dyn CertSink>,
        store: Arc<dyn Store>,
        policy: Policy,
    ) -> Result<Self, AcmeError> {
        let dns = match (&cfg.challenge, &cfg.dns) {
            (Challenge::Dns01, Some(d)) => Some(DnsUpdater::new(d)?),
            (Challenge::Dns01, None) => {
                return Err(AcmeError::Config(
                    "challenge dns-01 needs [acme.dns] server and zone".into(),
                ))
            }
            _ => None,
        };
        let sem = Semaphore::new(policy.max_concurrent_orders.max(1));
        Ok(Self {
            inner: Arc::new(Inner {
                cfg,
                sink,
                store,
                policy,
                dns,
                http: Mutex::new(None),
                account: tokio::sync::Mutex::new(None),
                http01: Mutex::new(HashMap::new()),
                cluster_http01: Mutex::new(HashMap::new()),
                http01_miss: Notify::new(),
                entries: Mutex::new(HashMap::new()),
                loaded: Mutex::new(HashMap::new()),
                sem,
                wake: Notify::new(),
                metrics: Metrics::new(),
                holder: format!("wharf-{:016x}", fastrand::u64(..)),
                cancel: CancellationToken::new(),
                started: AtomicBool::new(false),
            }),
        })
    }

    /// Register `wharf_acme_orders_total{result}`.
    pub fn register_metrics(
        &self,
        registry: &prometheus::Registry,
    ) -> Result<(), prometheus::Error> {
        self.inner.metrics.register(registry)
    }

    /// Orders finished so far: (succeeded, failed).
    pub fn order_counts(&self) -> (u64, u64) {
        let m = &self.inner.metrics.orders;
        (
            m.with_label_values(&["ok"]).get(),
            m.with_label_values(&["error"]).get(),
        )
    }

    /// Load stored certificates, publish those still valid, and start the order loop (once; it
    /// ends with [`AcmeManager::shutdown`]). Returns the stored entries that were ignored (corrupt,
    /// or issued by another ACME directory), each already logged; their names are ordered again once `set_names` asks for them.
    pub async fn start(&self) -> Result<Vec<AcmeError>, AcmeError> {
        let mut ignored = Vec::new();
        for entry in self.inner.store.load_certs().await? {
            let entry = entry.and_then(|c| self.inner.check_directory(c));
            let cert = match entry.and_then(held) {
                Ok(h) => h,
                Err(e) => {
                    warn!(error = %e, "ACME storage: ignoring entry; its names will be ordered again");
                    ignored.push(e);
                    continue;
                }
            };
            if cert.not_after <= SystemTime::now() {
                continue;
            }
            self.inner.publish(&cert);
            lock(&self.inner.loaded).insert(cert.cert.names.clone(), cert);
        }
        if !self.inner.started.swap(true, Ordering::SeqCst) {
            // Watch before the first attempt, so that no write after a busy lock is missed.
            if let Some(rx) = self
                .inner
                .store
                .watch_certs(self.inner.cancel.child_token())
            {
                let inner = self.inner.clone();
                tokio::spawn(async move { inner.follow_store(rx).await });
            }
            let inner = self.inner.clone();
            tokio::spawn(async move { inner.run().await });
            if self.inner.cfg.challenge == Challenge::Http01 {
                let inner = self.inner.clone();
                tokio::spawn(async move { inner.refresh_http01().await });
            }
        }
        Ok(ignored)
    }

    /// Stop the order loop (running orders finish their current step and are dropped).
    pub fn shutdown(&self) {
        self.inner.cancel.cancel();
    }

    /// The certificates wanted now, each a list of names (e.g. the hosts of one route). Returns
    /// an error per refused certificate (a wildcard without dns-01, an invalid name); the others
    /// are ordered. Certificates no longer wanted are forgotten (not unpublished).
    pub fn set_names(&self, desired: Vec<Vec<String>>) -> Vec<AcmeError> {
        let mut errors = Vec::new();
        let mut wanted = Vec::new();
        for names in desired {
            let names = canonical_names(&names);
            if names.is_empty() {
                continue;
            }
            match names.iter().try_for_each(|n| self.check_name(n)) {
                Ok(()) => wanted.push(names),
                Err(e) => errors.push(e),
            }
        }
        {
            let mut entries = lock(&self.inner.entries);
            let mut loaded = lock(&self.inner.loaded);
            entries.retain(|k, _| wanted.contains(k));
            for names in wanted {
                entries.entry(names.clone()).or_insert_with(|| Entry {
                    held: loaded.remove(&names),
                    running: false,
                    waiting: false,
                    store_changed: false,
                    failures: 0,
                    last_error: None,
                    next_attempt: SystemTime::UNIX_EPOCH,
                });
            }
        }
        self.inner.wake.notify_one();
        errors
    }

    fn check_name(&self, name: &str) -> Result<(), AcmeError> {
        let bad = |reason: &str| AcmeError::InvalidName {
            name: name.to_owned(),
            reason: reason.to_owned(),
        };
        let host = match name.strip_prefix("*.") {
            Some(rest) => {
                if self.inner.cfg.challenge != Challenge::Dns01 {
                    return Err(bad(
                        "a wildcard certificate needs challenge = \"dns-01\" (RFC 8555 §7.1.3)",
                    ));
                }
                rest
            }
            None => name,
        };
        if host.len() > 253 || !host.contains('.') {
            return Err(bad("not a fully qualified host name"));
        }
        if host.parse::<std::net::IpAddr>().is_ok() {
            return Err(bad("IP addresses are not ordered; use a host name"));
        }
        let ok = host.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
        if !ok {
            return Err(bad("not a valid DNS name"));
        }
        Ok(())
    }

    /// Per-certificate state for the API, sorted by first name.
    pub fn certificates(&self) -> Vec<AcmeCertStatus> {
        let entries = lock(&self.inner.entries);
        let mut out: Vec<AcmeCertStatus> = entries
            .iter()
            .map(|(names, e)| {
                let state = match (&e.last_error, e.running, &e.held) {
                    (_, true, Some(_)) => AcmeCertState::Renewing,
                    (_, true, None) => AcmeCertState::Pending,
                    (Some(reason), false, _) => AcmeCertState::Failed {
                        reason: reason.clone(),
                        retry_at: e.next_attempt,
                    },
                    (None, false, Some(h)) if h.renew_at > SystemTime::now() => {
                        AcmeCertState::Valid
                    }
                    (None, false, Some(_)) => AcmeCertState::Renewing,
                    (None, false, None) => AcmeCertState::Pending,
                };
                AcmeCertStatus {
                    names: names.clone(),
                    state,
                    not_after: e.held.as_ref().map(|h| h.not_after),
                    issuer: e.held.as_ref().map(|h| h.issuer.clone()),
                }
            })
            .collect();
        out.sort_by(|a, b| a.names.cmp(&b.names));
        out
    }

    /// HTTP-01 without waiting: only the tokens of this replica's own running orders.
    pub fn http01_local(&self, token: &str) -> Option<String> {
        lock(&self.inner.http01).get(token).cloned()
    }

    /// HTTP-01: the key authorization for `token` (served as the body of
    /// `GET /.well-known/acme-challenge/<token>`), from this replica's running
    /// orders or from the tokens of every replica's orders as the store last
    /// listed them. Memory only: a request never reaches the store (a Docker
    /// API call with swarm storage, a file read with file storage), whatever
    /// anyone sends; a miss only asks the refresh loop to list again, at most
    /// every [`HTTP01_MIN_REFRESH`]. Nothing is answered unless the challenge
    /// is `http-01`.
    pub async fn http01(&self, token: &str) -> Option<String> {
        self.http01_now(token)
    }

    fn http01_now(&self, token: &str) -> Option<String> {
        if self.inner.cfg.challenge != Challenge::Http01 || !crate::store::valid_token(token) {
            return None;
        }
        if let Some(k) = lock(&self.inner.http01).get(token) {
            return Some(k.clone());
        }
        if let Some(k) = lock(&self.inner.cluster_http01).get(token) {
            return Some(k.clone());
        }
        self.inner.http01_miss.notify_one();
        None
    }
}

/// How often the HTTP-01 tokens of other replicas' orders are listed from the
/// store, and how soon after a miss it may list again (a flood of misses
/// costs one listing per this long, not one store call per request).
const HTTP01_REFRESH: Duration = Duration::from_secs(2);
const HTTP01_MIN_REFRESH: Duration = Duration::from_secs(1);

/// With a shared store, the replica that orders waits this long after writing
/// its HTTP-01 token before the CA may validate, so every replica has listed it.
const HTTP01_SPREAD: Duration = Duration::from_millis(2_500);

impl Inner {
    /// Lists the store's HTTP-01 tokens every [`HTTP01_REFRESH`], or sooner
    /// after a miss (never more often than [`HTTP01_MIN_REFRESH`]).
    async fn refresh_http01(self: Arc<Self>) {
        loop {
            match self.store.list_challenges().await {
                Ok(Some(list)) => *lock(&self.cluster_http01) = list.into_iter().collect(),
                Ok(None) => return,
                Err(e) => warn!(error = %e, "ACME: listing HTTP-01 tokens from storage"),
            }
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                _ = tokio::time::sleep(HTTP01_MIN_REFRESH) => {}
            }
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                _ = tokio::time::sleep(HTTP01_REFRESH - HTTP01_MIN_REFRESH) => {}
                _ = self.http01_miss.notified() => {}
            }
        }
    }

    fn check_directory(&self, c: StoredCert) -> Result<StoredCert, AcmeError> {
        if c.directory.is_empty() || c.directory == self.cfg.directory {
            Ok(c)
        } else {
            Err(AcmeError::Certificate(format!(
                "stored certificate for {:?} comes from {}, not {}; ordering again",
                c.names, c.directory, self.cfg.directory
            )))
        }
    }

    fn publish(&self, h: &Held) {
        // `wharf_tls_cert_not_after_seconds` is read from the certificate store
        // at scrape time, for ACME and file certificates alike.
        self.sink
            .publish(&h.cert.names, &h.cert.chain_pem, &h.cert.key_pem);
    }

    async fn run(self: Arc<Self>) {
        loop {
            let now = SystemTime::now();
            let mut next = now + Duration::from_secs(3600);
            if self.cfg.email.is_some() {
                let mut entries = lock(&self.entries);
                for (names, e) in entries.iter_mut() {
                    if e.running {
                        continue;
                    }
                    let due = e.due_at();
                    if due <= now {
                        e.running = true;
                        e.store_changed = false;
                        let recheck = e.waiting;
                        let me = self.clone();
                        let names = names.clone();
                        tokio::spawn(async move { me.attempt(names, recheck).await });
                    } else {
                        next = next.min(due);
                    }
                }
            }
            let wait = next.duration_since(now).unwrap_or_default();
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Wakes the entries waiting on another replica's lock when the store reports a write for
    /// them (or may have missed one), so that they adopt the certificate within moments of its
    /// storing rather than at their next `lock_poll` re-check, which stays as the fallback.
    async fn follow_store(self: Arc<Self>, mut rx: tokio::sync::mpsc::Receiver<CertChange>) {
        loop {
            let change = tokio::select! {
                _ = self.cancel.cancelled() => return,
                c = rx.recv() => match c {
                    Some(c) => c,
                    None => return,
                },
            };
            let now = SystemTime::now();
            let mut woke = false;
            for (names, e) in lock(&self.entries).iter_mut() {
                if let CertChange::Stored(id) = &change {
                    if *id != cert_id(names) {
                        continue;
                    }
                }
                if e.running {
                    // Also a first attempt, not yet marked waiting, that may
                    // find the lock held when it ends: it must not miss a write
                    // that lands meanwhile.
                    e.store_changed = true;
                    woke = true;
                } else if e.waiting {
                    e.next_attempt = now;
                    woke = true;
                }
            }
            if woke {
                self.wake.notify_one();
            }
        }
    }

    async fn attempt(self: Arc<Self>, names: Vec<String>, recheck: bool) {
        // Waiting on another replica: look for what it stored before queueing for an order
        // slot, so that adopting never waits behind this replica's own running orders.
        let adopted = if recheck {
            self.adopt_stored(&names).await.ok().flatten()
        } else {
            None
        };
        let result = if let Some(h) = adopted {
            info!(names = ?names, "ACME: using the certificate another replica stored");
            Ok((Outcome::Busy, Some(h)))
        } else {
            let Ok(_permit) = self.sem.acquire().await else {
                return;
            };
            let slot: RetrySlot = Arc::new(Mutex::new(None));
            if self.cancel.is_cancelled() {
                return;
            }
            let r = RETRY_AFTER.scope(slot.clone(), self.order(&names)).await;
            let retry_after = *lock(&slot);
            r.map_err(|e| (e, retry_after))
        };
        let now = SystemTime::now();
        tracing::debug!(names = ?names, ok = result.is_ok(), "ACME: order attempt finished");
        let mut entries = lock(&self.entries);
        let Some(e) = entries.get_mut(&names) else {
            return;
        };
        e.running = false;
        match result {
            Ok((Outcome::Issued, h)) => {
                e.waiting = false;
                e.failures = 0;
                e.last_error = None;
                e.next_attempt = now;
                if let Some(h) = h {
                    e.held = Some(h);
                }
            }
            Ok((Outcome::Busy, h)) => {
                e.waiting = h.is_none();
                if let Some(h) = h {
                    e.held = Some(h);
                }
                // A write reported during this attempt may be what it missed: one more look now
                // (one per write, so this never spins); otherwise the periodic re-check.
                e.next_attempt = if e.waiting && e.store_changed {
                    now
                } else {
                    now + self.policy.lock_poll
                };
            }
            Err((err, retry_after)) => {
                e.waiting = false;
                self.metrics.orders.with_label_values(&["error"]).inc();
                e.failures = e.failures.saturating_add(1);
                let at = next_attempt(now, e.failures, &self.policy, retry_after, fastrand::f64());
                warn!(names = ?names, error = %err, failures = e.failures,
                      retry_in = ?at.duration_since(now).unwrap_or_default(),
                      "ACME order failed; any current certificate stays in service");
                e.last_error = Some(match retry_after {
                    Some(ra) => format!(
                        "{err} (the CA asked to retry in {}s)",
                        ra.duration_since(now).unwrap_or_default().as_secs()
                    ),
                    None => err.to_string(),
                });
                e.next_attempt = at;
            }
        }
        drop(entries);
        self.wake.notify_one();
    }

    /// A newer certificate that another replica (or an earlier run) stored for these names.
    async fn adopt_stored(&self, names: &[String]) -> Result<Option<Held>, AcmeError> {
        let current = lock(&self.entries)
            .get(names)
            .and_then(|e| e.held.as_ref().map(|h| h.not_after));
        let stored = match self.store.load_cert(names).await {
            Ok(Some(c)) => match self.check_directory(c) {
                Ok(c) => held(c)?,
                Err(e) => {
                    info!(error = %e, "ACME: not using the stored certificate");
                    return Ok(None);
                }
            },
            Ok(None) => return Ok(None),
            Err(e) => {
                warn!(error = %e, "ACME storage: ignoring stored certificate; ordering again");
                return Ok(None);
            }
        };
        let now = SystemTime::now();
        if stored.renew_at > now && current.is_none_or(|c| stored.not_after > c) {
            self.publish(&stored);
            return Ok(Some(stored));
        }
        Ok(None)
    }

    async fn order(&self, names: &[String]) -> Result<(Outcome, Option<Held>), AcmeError> {
        let id = cert_id(names);
        if !self
            .store
            .try_lock(&id, &self.holder, self.policy.lock_lease)
            .await?
        {
            // Someone else orders; pick up what they stored once they are done.
            return Ok((Outcome::Busy, self.adopt_stored(names).await?));
        }
        // Shutdown and the order timeout end the order but never skip the unlock below, so a
        // restarted process (or another replica) need not wait for the lease to expire.
        let r = tokio::select! {
            _ = self.cancel.cancelled() => Err(AcmeError::Acme("shutting down".into())),
            r = tokio::time::timeout(self.policy.order_timeout, self.order_locked(names)) => {
                r.unwrap_or_else(|_| Err(AcmeError::Acme(format!(
                    "order did not finish within {:?}", self.policy.order_timeout))))
            }
        };
        if let Err(e) = self.store.unlock(&id, &self.holder).await {
            warn!(error = %e, "ACME storage: releasing order lock");
        }
        r
    }

    async fn order_locked(&self, names: &[String]) -> Result<(Outcome, Option<Held>), AcmeError> {
        if let Some(h) = self.adopt_stored(names).await? {
            info!(names = ?names, "ACME: using the certificate found in storage");
            return Ok((Outcome::Issued, Some(h)));
        }
        let started = std::time::Instant::now();
        let account = self.account().await?;
        let ids: Vec<Identifier> = names.iter().map(|n| Identifier::Dns(n.clone())).collect();
        let mut order = account.new_order(&NewOrder::new(&ids)).await?;
        let mut cleanup = Cleanup::default();
        let r = self.solve_and_finalize(&mut order, &mut cleanup).await;
        self.cleanup(cleanup).await;
        let (chain_pem, key_pem) = r?;
        let cert = StoredCert {
            names: names.to_vec(),
            chain_pem,
            key_pem,
            directory: self.cfg.directory.clone(),
        };
        let h = held(cert)?;
        // Store first so that other replicas (and a restart) find it as soon as it is served;
        // serve it even if storing fails (the next start then orders again).
        let saved = self.store.save_cert(&h.cert).await;
        self.metrics.orders.with_label_values(&["ok"]).inc();
        self.publish(&h);
        info!(names = ?names, elapsed = ?started.elapsed(), "ACME: certificate issued");
        if let Err(e) = saved {
            warn!(names = ?names, error = %e, "ACME storage: the new certificate was not stored");
        }
        Ok((Outcome::Issued, Some(h)))
    }

    async fn solve_and_finalize(
        &self,
        order: &mut Order,
        cleanup: &mut Cleanup,
    ) -> Result<(String, String), AcmeError> {
        let ctype = match self.cfg.challenge {
            Challenge::Http01 => ChallengeType::Http01,
            Challenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
            Challenge::Dns01 => ChallengeType::Dns01,
        };
        // DNS-01 writes every TXT record before the first challenge is declared ready: a wildcard
        // and its base name share one record name, and the CA may look as soon as one is ready.
        let two_pass = ctype == ChallengeType::Dns01;
        let mut ready = Vec::new();
        let mut authzs = order.authorizations();
        while let Some(a) = authzs.next().await {
            let mut a = a?;
            match a.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => {
                    return Err(AcmeError::Challenge {
                        name: a.identifier().to_string(),
                        reason: format!("authorization is {other:?}"),
                    })
                }
            }
            let ident = a.identifier().to_string();
            let mut ch = a
                .challenge(ctype.clone())
                .ok_or_else(|| AcmeError::Challenge {
                    name: ident.clone(),
                    reason: format!("the CA offers no {ctype:?} challenge"),
                })?;
            let ka = ch.key_authorization();
            match ctype {
                ChallengeType::Http01 => {
                    let token = ch.token.clone();
                    lock(&self.http01).insert(token.clone(), ka.as_str().to_owned());
                    cleanup.tokens.push(token.clone());
                    self.store.put_challenge(&token, ka.as_str()).await?;
                    if matches!(self.cfg.storage, wharf_config::Storage::Swarm) {
                        tokio::time::sleep(HTTP01_SPREAD).await;
                    }
                }
                ChallengeType::TlsAlpn01 => {
                    let (cert, key) = crate::alpn::challenge_cert(&ident, ka.digest().as_ref())?;
                    self.sink.set_alpn_challenge(&ident, Some((cert, key)));
                    cleanup.alpn.push(ident.clone());
                }
                _ => {
                    let dns = self
                        .dns
                        .as_ref()
                        .ok_or_else(|| AcmeError::Config("dns-01 without [acme.dns]".into()))?;
                    cleanup
                        .txt
                        .push(dns.add_txt(&ident, &ka.dns_value()).await?);
                }
            }
            if two_pass {
                ready.push(ch.url.clone());
            } else {
                ch.set_ready().await?;
            }
        }
        if two_pass && !ready.is_empty() {
            let mut authzs = order.authorizations();
            while let Some(a) = authzs.next().await {
                let mut a = a?;
                if let Some(mut ch) = a.challenge(ctype.clone()) {
                    if ready.contains(&ch.url) {
                        ch.set_ready().await?;
                    }
                }
            }
        }
        let retry = RetryPolicy::new()
            .initial_delay(self.policy.poll_initial)
            .backoff(1.5)
            .timeout(self.policy.order_timeout);
        let status = order.poll_ready(&retry).await?;
        if status != OrderStatus::Ready {
            return Err(AcmeError::Acme(format!(
                "order is {status:?}: {}",
                self.failure_detail(order).await
            )));
        }
        let mut params = rcgen::CertificateParams::default();
        let mut ids = order.identifiers();
        while let Some(i) = ids.next().await {
            let i = i?.to_string();
            params
                .subject_alt_names
                .push(rcgen::SanType::DnsName(i.try_into().map_err(
                    |e: rcgen::Error| AcmeError::Certificate(e.to_string()),
                )?));
        }
        params.distinguished_name = rcgen::DistinguishedName::new();
        let key = rcgen::KeyPair::generate().map_err(|e| AcmeError::Certificate(e.to_string()))?;
        let csr = params
            .serialize_request(&key)
            .map_err(|e| AcmeError::Certificate(e.to_string()))?;
        order.finalize_csr(csr.der()).await?;
        let chain = order.poll_certificate(&retry).await?;
        Ok((chain, key.serialize_pem()))
    }

    /// Why an order went invalid: the first challenge error the CA reports.
    async fn failure_detail(&self, order: &mut Order) -> String {
        let mut authzs = order.authorizations();
        while let Some(Ok(a)) = authzs.next().await {
            for c in &a.challenges {
                if let Some(p) = &c.error {
                    return format!("{}: {}", a.identifier(), p);
                }
            }
        }
        "no detail from the CA".into()
    }

    async fn cleanup(&self, c: Cleanup) {
        for t in c.tokens {
            lock(&self.http01).remove(&t);
            if let Err(e) = self.store.remove_challenge(&t).await {
                warn!(error = %e, "ACME: removing HTTP-01 token from storage");
            }
        }
        for n in c.alpn {
            self.sink.set_alpn_challenge(&n, None);
        }
        if let Some(dns) = &self.dns {
            for r in c.txt {
                if let Err(e) = dns.remove_txt(&r).await {
                    warn!(error = %e, "ACME: removing DNS-01 TXT record");
                }
            }
        }
    }

    async fn http_client(&self) -> Result<Arc<AcmeHttp>, AcmeError> {
        let mut g = lock(&self.http);
        if let Some(h) = &*g {
            return Ok(h.clone());
        }
        let h = Arc::new(AcmeHttp::new(&self.cfg.ca_roots)?);
        *g = Some(h.clone());
        Ok(h)
    }

    /// The account for this directory: from the store, or created once and stored.
    async fn account(&self) -> Result<Account, AcmeError> {
        let mut g = self.account.lock().await;
        if let Some(a) = &*g {
            return Ok(a.clone());
        }
        let dir = &self.cfg.directory;
        let http = self.http_client().await?;
        let builder =
            || instant_acme::Account::builder_with_http(Box::new(SharedHttp(http.clone())));
        let account = match self.store.load_account(dir).await? {
            Some(json) => match serde_json::from_str::<AccountCredentials>(&json) {
                Ok(creds) => Some(builder().from_credentials(creds).await?),
                Err(e) => {
                    warn!(error = %e, "ACME storage: ignoring corrupt account; creating a new one");
                    None
                }
            },
            None => None,
        };
        let account = match account {
            Some(a) => a,
            None => {
                let email = self.cfg.email.as_deref().ok_or(AcmeError::NoEmail)?;
                let contact = format!("mailto:{email}");
                let (a, creds) = builder()
                    .create(
                        &NewAccount {
                            contact: &[contact.as_str()],
                            terms_of_service_agreed: true,
                            only_return_existing: false,
                        },
                        dir.clone(),
                        None,
                    )
                    .await?;
                let json =
                    serde_json::to_string(&creds).map_err(|e| AcmeError::Storage(e.to_string()))?;
                self.store.save_account(dir, &json).await?;
                info!(directory = %dir, "ACME: account created");
                a
            }
        };
        *g = Some(account.clone());
        Ok(account)
    }
}

/// One HTTPS client (connection pool) shared by every account builder.
struct SharedHttp(Arc<AcmeHttp>);

impl instant_acme::HttpClient for SharedHttp {
    fn request(
        &self,
        req: http::Request<instant_acme::BodyWrapper<bytes::Bytes>>,
    ) -> std::pin::Pin<
        Box<
            dyn std::future::Future<
                    Output = Result<instant_acme::BytesResponse, instant_acme::Error>,
                > + Send,
        >,
    > {
        self.0.request(req)
    }
}

#[derive(Default)]
struct Cleanup {
    tokens: Vec<String>,
    alpn: Vec<String>,
    txt: Vec<TxtRecord>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_is_capped_and_honours_retry_after() {
        let p = Policy::default();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let d = |f: u32, ra: Option<SystemTime>| {
            next_attempt(now, f, &p, ra, 0.5)
                .duration_since(now)
                .unwrap()
        };
        assert_eq!(d(1, None), Duration::from_secs(300));
        assert_eq!(d(2, None), Duration::from_secs(600));
        assert_eq!(d(4, None), Duration::from_secs(2400));
        assert_eq!(d(30, None), Duration::from_secs(12 * 3600));
        // Jitter stays within ±10%.
        let lo = next_attempt(now, 1, &p, None, 0.0)
            .duration_since(now)
            .unwrap();
        let hi = next_attempt(now, 1, &p, None, 1.0)
            .duration_since(now)
            .unwrap();
        assert_eq!(
            (lo, hi),
            (Duration::from_secs(270), Duration::from_secs(330))
        );
        // The CA's Retry-After wins when later, never when earlier.
        let later = now + Duration::from_secs(7200);
        assert_eq!(d(1, Some(later)), Duration::from_secs(7200));
        assert_eq!(
            d(3, Some(now + Duration::from_secs(1))),
            Duration::from_secs(1200)
        );
    }

    #[test]
    fn renewal_is_at_two_thirds_minus_jitter() {
        let nb = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let na = nb + Duration::from_secs(90 * 86400);
        for _ in 0..100 {
            let r = renew_at(nb, na).duration_since(nb).unwrap();
            assert!(r <= Duration::from_secs(60 * 86400));
            assert!(r >= Duration::from_secs(57 * 86400));
        }
    }

    /// A file store that counts the reads a request could cause.
    struct Counting {
        inner: FileStore,
        gets: std::sync::atomic::AtomicUsize,
        lists: std::sync::atomic::AtomicUsize,
    }

    #[async_trait::async_trait]
    impl Store for Counting {
        async fn load_account(&self, d: &str) -> Result<Option<String>, AcmeError> {
            self.inner.load_account(d).await
        }
        async fn save_account(&self, d: &str, c: &str) -> Result<(), AcmeError> {
            self.inner.save_account(d, c).await
        }
        async fn load_certs(&self) -> Result<Vec<Result<StoredCert, AcmeError>>, AcmeError> {
            self.inner.load_certs().await
        }
        async fn load_cert(&self, n: &[String]) -> Result<Option<StoredCert>, AcmeError> {
            self.inner.load_cert(n).await
        }
        async fn save_cert(&self, c: &StoredCert) -> Result<(), AcmeError> {
            self.inner.save_cert(c).await
        }
        async fn put_challenge(&self, t: &str, k: &str) -> Result<(), AcmeError> {
            self.inner.put_challenge(t, k).await
        }
        async fn get_challenge(&self, t: &str) -> Result<Option<String>, AcmeError> {
            self.gets.fetch_add(1, Ordering::SeqCst);
            self.inner.get_challenge(t).await
        }
        async fn list_challenges(&self) -> Result<Option<Vec<(String, String)>>, AcmeError> {
            self.lists.fetch_add(1, Ordering::SeqCst);
            self.inner.list_challenges().await
        }
        async fn remove_challenge(&self, t: &str) -> Result<(), AcmeError> {
            self.inner.remove_challenge(t).await
        }
        async fn try_lock(&self, id: &str, h: &str, l: Duration) -> Result<bool, AcmeError> {
            self.inner.try_lock(id, h, l).await
        }
        async fn unlock(&self, id: &str, h: &str) -> Result<(), AcmeError> {
            self.inner.unlock(id, h).await
        }
        async fn load_owners(&self) -> Result<Option<String>, AcmeError> {
            self.inner.load_owners().await
        }
        async fn save_owners(&self, json: &str) -> Result<(), AcmeError> {
            self.inner.save_owners(json).await
        }
    }

    struct NoSink;
    impl CertSink for NoSink {
        fn publish(&self, _: &[String], _: &str, _: &str) {}
        fn set_alpn_challenge(&self, _: &str, _: Option<(Vec<u8>, Vec<u8>)>) {}
    }

    fn manager(challenge: &str) -> (AcmeManager, Arc<Counting>, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("wharf-http01-{:016x}", fastrand::u64(..)));
        let text = format!(
            "[acme]\nemail = \"ops@example.org\"\nchallenge = \"{challenge}\"\nstorage = \"file:{}\"\n",
            dir.display()
        );
        let cfg = wharf_config::parse(&text, "test", Vec::new()).unwrap().acme;
        let store = Arc::new(Counting {
            inner: FileStore::new(dir.clone()),
            gets: Default::default(),
            lists: Default::default(),
        });
        let m = AcmeManager::with_store(cfg, Arc::new(NoSink), store.clone(), Policy::default())
            .unwrap();
        (m, store, dir)
    }

    #[tokio::test(start_paused = true)]
    async fn http01_is_answered_from_memory_and_a_miss_never_reads_the_store() {
        let (m, store, dir) = manager("http-01");
        // Another replica's token, in the shared store.
        store
            .inner
            .put_challenge("other-replica_TOKEN", "ka.other")
            .await
            .unwrap();
        m.start().await.unwrap();
        // The refresh loop lists once at start.
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(
            m.http01("other-replica_TOKEN").await.as_deref(),
            Some("ka.other")
        );
        let lists = store.lists.load(Ordering::SeqCst);
        // A flood of misses: no store read per request, at most one listing per
        // HTTP01_MIN_REFRESH.
        for i in 0..10_000 {
            assert_eq!(m.http01(&format!("missing{i}")).await, None);
            assert_eq!(m.http01("../../etc/passwd").await, None);
        }
        assert_eq!(store.gets.load(Ordering::SeqCst), 0);
        tokio::time::sleep(Duration::from_secs(10)).await;
        let listed = store.lists.load(Ordering::SeqCst) - lists;
        assert!(listed <= 10, "{listed} listings in 10 s");
        m.shutdown();
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test(start_paused = true)]
    async fn http01_answers_nothing_unless_the_challenge_is_http01() {
        let (m, store, dir) = manager("tls-alpn-01");
        store.inner.put_challenge("tok", "ka").await.unwrap();
        lock(&m.inner.http01).insert("tok".into(), "ka".into());
        m.start().await.unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(m.http01("tok").await, None);
        assert_eq!(store.gets.load(Ordering::SeqCst), 0);
        assert_eq!(store.lists.load(Ordering::SeqCst), 0);
        m.shutdown();
        let _ = std::fs::remove_dir_all(dir);
    }
}
