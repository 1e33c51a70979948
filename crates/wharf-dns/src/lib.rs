//! The DNS provider: keeps the address sets of a set of names (the `dns:name:port` upstreams of
//! file routes, the `tasks.<service>` names of `endpoint_mode: dnsrr` swarm services) fresh, the
//! way HAProxy's `server-template ... resolvers docker` does.
//!
//! It owns the refresh schedule, the hold of the last good answer while DNS fails, and a global
//! bound on the queries it sends. It must never be driven by requests or by backend health:
//! the only inputs are the set of names ([`DnsProvider::set_names`]) and the clock.
//! See `docs/dns.md` for the behaviour an operator sees.

mod bucket;
mod resolve;
mod watcher;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use crate::bucket::TokenBucket;

/// Settings of the provider: SPEC `[dns]` plus the safety bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsSettings {
    /// Servers asked one at a time, the fastest-answering first (a server that times out is
    /// demoted); UDP first, TCP when an answer is truncated.
    pub nameservers: Vec<SocketAddr>,
    /// Upper bound between two resolutions of a name; a shorter TTL shortens it.
    pub refresh: Duration,
    /// How long the last good answer is kept, counted from the last success, while the name
    /// fails or answers empty/NXDOMAIN.
    pub hold_valid: Duration,
    /// Floor of every interval between two resolutions of one name (TTL 0, failures).
    pub min_refresh: Duration,
    /// Global bound on DNS queries per second over all names (also the burst size).
    pub max_queries_per_second: u32,
    /// Time allowed for one query (one record type), UDP retransmissions and TCP included.
    pub timeout: Duration,
}

impl Default for DnsSettings {
    fn default() -> Self {
        Self {
            nameservers: vec![SocketAddr::new(
                IpAddr::V4(Ipv4Addr::new(127, 0, 0, 11)),
                53,
            )],
            refresh: Duration::from_secs(5),
            hold_valid: Duration::from_secs(300),
            min_refresh: Duration::from_secs(1),
            max_queries_per_second: 50,
            timeout: Duration::from_secs(1),
        }
    }
}

impl DnsSettings {
    fn validate(&self) -> Result<(), DnsError> {
        let invalid = |what: &str| Err(DnsError::InvalidSettings(what.to_owned()));
        if self.nameservers.is_empty() {
            return invalid("nameservers is empty");
        }
        if self.min_refresh.is_zero() {
            return invalid(
                "min_refresh must be greater than 0 (it prevents a busy loop on TTL 0)",
            );
        }
        if self.refresh.is_zero() {
            return invalid("refresh must be greater than 0");
        }
        if self.timeout.is_zero() {
            return invalid("timeout must be greater than 0");
        }
        let per_query = resolve::max_messages(self);
        if self.max_queries_per_second < per_query {
            return Err(DnsError::InvalidSettings(format!(
                "max_queries_per_second must be at least {per_query}: one query to {} \
                 nameserver(s) with a {:?} timeout may send that many messages \
                 (UDP retransmissions, TCP retry)",
                self.nameservers.len(),
                self.timeout
            )));
        }
        Ok(())
    }
}

/// Errors of [`DnsProvider::new`].
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("invalid DNS settings: {0}")]
    InvalidSettings(String),
    #[error("the DNS provider must be created inside a tokio runtime")]
    NoRuntime,
    #[error("cannot build the DNS resolver: {0}")]
    Resolver(String),
}

/// What is known about one watched name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The addresses to use now (IPv4 and IPv6), sorted and deduplicated.
    pub addrs: Vec<IpAddr>,
    pub state: AnswerState,
    /// When the name last resolved to a non-empty set.
    pub last_success: Option<Instant>,
}

impl Answer {
    fn pending() -> Self {
        Self {
            addrs: Vec::new(),
            state: AnswerState::Pending,
            last_success: None,
        }
    }
}

/// How [`Answer::addrs`] came about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnswerState {
    /// Not resolved yet (the first query is queued or in flight).
    Pending,
    /// The last resolution succeeded; `addrs` is its answer.
    Resolved,
    /// The last resolution failed or answered empty, and `addrs` is the last good answer, held
    /// because the last success is younger than `hold_valid`.
    Stale {
        since_last_success: Duration,
        error: String,
    },
    /// No usable answer: the name never resolved, or failed for longer than `hold_valid`;
    /// `addrs` is empty.
    Failed { error: String },
}

/// Counters for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DnsStats {
    /// Queries sent (one per record type per resolution, hickory's own retransmissions not
    /// included).
    pub queries: u64,
    /// Resolutions that failed (timeout, SERVFAIL, refused, I/O error).
    pub failures: u64,
    /// Resolutions that answered NXDOMAIN or no address.
    pub empty_answers: u64,
    /// Times a name's address set changed.
    pub changes: u64,
    /// Names currently watched.
    pub names: u64,
}

#[derive(Default)]
struct Counters {
    queries: AtomicU64,
    failures: AtomicU64,
    empty_answers: AtomicU64,
    changes: AtomicU64,
}

/// State shared by the provider and its watcher tasks.
struct Shared {
    settings: DnsSettings,
    resolver: resolve::Lookups,
    bucket: TokenBucket,
    answers: Mutex<BTreeMap<String, Entry>>,
    changed: watch::Sender<u64>,
    counters: Counters,
}

struct Entry {
    /// Tells the entry of a removed and re-added name from the old one, so that a watcher that
    /// was aborted in the middle of an update cannot write into its successor's entry.
    generation: u64,
    answer: Answer,
}

impl Shared {
    fn answers(&self) -> MutexGuard<'_, BTreeMap<String, Entry>> {
        self.answers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Stores the answer of one name; bumps the change counter if its address set changed.
    fn publish(&self, name: &str, generation: u64, answer: Answer) {
        let changed = {
            let mut answers = self.answers();
            let Some(entry) = answers.get_mut(name) else {
                return;
            };
            if entry.generation != generation {
                return;
            }
            let changed = entry.answer.addrs != answer.addrs;
            entry.answer = answer;
            changed
        };
        if changed {
            self.counters.changes.fetch_add(1, Ordering::Relaxed);
            self.changed.send_modify(|version| *version += 1);
        }
    }
}

/// A watcher's task and the bell that asks it to re-resolve early.
type WatcherHandle = (JoinHandle<()>, Arc<Notify>);

struct Inner {
    shared: Arc<Shared>,
    /// Each watched name's task and the bell that asks it to re-resolve early.
    tasks: Mutex<HashMap<String, WatcherHandle>>,
    next_generation: AtomicU64,
    runtime: tokio::runtime::Handle,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let tasks = self
            .tasks
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for (_, (task, _)) in tasks.drain() {
            task.abort();
        }
    }
}

/// Watches a set of names and keeps their address sets. Cheap to clone; the watchers stop when
/// the last clone is dropped.
#[derive(Clone)]
pub struct DnsProvider {
    inner: Arc<Inner>,
}

impl fmt::Debug for DnsProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DnsProvider")
            .field("settings", &self.inner.shared.settings)
            .finish_non_exhaustive()
    }
}

impl DnsProvider {
    /// Builds the provider. Must be called inside a tokio runtime; spawns nothing until
    /// [`set_names`](Self::set_names) is called.
    pub fn new(settings: DnsSettings) -> Result<Self, DnsError> {
        settings.validate()?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| DnsError::NoRuntime)?;
        let resolver = resolve::Lookups::new(&settings)?;
        let (changed, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            bucket: TokenBucket::new(settings.max_queries_per_second),
            settings,
            resolver,
            answers: Mutex::new(BTreeMap::new()),
            changed,
            counters: Counters::default(),
        });
        Ok(Self {
            inner: Arc::new(Inner {
                shared,
                tasks: Mutex::new(HashMap::new()),
                next_generation: AtomicU64::new(0),
                runtime,
            }),
        })
    }

    /// Sets the full desired set of names: starts a watcher for each new name and stops (aborts)
    /// the watchers of names no longer in the set. Names are queried as given, as absolute
    /// names (no search domain). An IP literal is answered as itself without a query; a name
    /// that is not a valid DNS name is reported as [`AnswerState::Failed`] and never queried.
    pub fn set_names(&self, names: BTreeSet<String>) {
        let shared = &self.inner.shared;
        let mut tasks = self
            .inner
            .tasks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let bump = {
            let mut answers = shared.answers();
            let before = answers.len();
            answers.retain(|name, _| names.contains(name));
            tasks.retain(|name, (task, _)| {
                let keep = names.contains(name);
                if !keep {
                    task.abort();
                }
                keep
            });
            let mut bump = before != answers.len();
            for name in &names {
                if answers.contains_key(name) {
                    continue;
                }
                let generation = self.inner.next_generation.fetch_add(1, Ordering::Relaxed);
                let answer = match resolve::parse_name(name) {
                    resolve::Target::Literal(ip) => {
                        bump = true;
                        Answer {
                            addrs: vec![ip],
                            state: AnswerState::Resolved,
                            last_success: None,
                        }
                    }
                    resolve::Target::Invalid(error) => Answer {
                        addrs: Vec::new(),
                        state: AnswerState::Failed { error },
                        last_success: None,
                    },
                    resolve::Target::Name(query_name) => {
                        let nudge = Arc::new(Notify::new());
                        let task = watcher::Watcher {
                            shared: shared.clone(),
                            name: name.clone(),
                            query_name,
                            generation,
                            nudge: nudge.clone(),
                        };
                        let handle = self.inner.runtime.spawn(task.run());
                        tasks.insert(name.clone(), (handle, nudge));
                        Answer::pending()
                    }
                };
                answers.insert(name.clone(), Entry { generation, answer });
            }
            bump
        };
        if bump {
            shared.changed.send_modify(|version| *version += 1);
        }
    }

    /// Asks the watchers of `names` to re-resolve now rather than at their next
    /// refresh, because another provider saw their answer change (Docker reports
    /// a task change of a dnsrr service). The floor (`min_refresh` since the last
    /// query) and the global budget still apply: nudges can raise one name's rate
    /// from once per `refresh` up to once per `min_refresh`, never past the global
    /// budget. Unknown names are ignored.
    pub fn nudge<'a>(&self, names: impl IntoIterator<Item = &'a str>) {
        let tasks = self
            .inner
            .tasks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for name in names {
            if let Some((_, bell)) = tasks.get(name) {
                bell.notify_one();
            }
        }
    }

    /// The current state of every watched name.
    pub fn answers(&self) -> BTreeMap<String, Answer> {
        let now = Instant::now();
        self.inner
            .shared
            .answers()
            .iter()
            .map(|(name, entry)| {
                let mut answer = entry.answer.clone();
                if let (
                    AnswerState::Stale {
                        since_last_success, ..
                    },
                    Some(last),
                ) = (&mut answer.state, answer.last_success)
                {
                    *since_last_success = now.saturating_duration_since(last);
                }
                (name.clone(), answer)
            })
            .collect()
    }

    /// A receiver whose value is bumped whenever a name's address set changes (or a name is
    /// added with a literal address, or removed).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.shared.changed.subscribe()
    }

    /// Counters since the provider was created.
    pub fn stats(&self) -> DnsStats {
        let counters = &self.inner.shared.counters;
        DnsStats {
            queries: counters.queries.load(Ordering::Relaxed),
            failures: counters.failures.load(Ordering::Relaxed),
            empty_answers: counters.empty_answers.load(Ordering::Relaxed),
            changes: counters.changes.load(Ordering::Relaxed),
            names: self.inner.shared.answers().len() as u64,
        }
    }

    /// The settings the provider runs with.
    pub fn settings(&self) -> &DnsSettings {
        &self.inner.shared.settings
    }
}
