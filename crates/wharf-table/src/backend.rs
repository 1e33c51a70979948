//! Backends, their long-lived state, and the balancers that pick one.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use dashmap::DashMap;

use crate::health::HealthInfo;
use crate::limit::RouteState;
use crate::sticky::{StickyKey, Token};

/// How the proxy talks to a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Scheme {
    #[default]
    Http,
    Https,
    /// HTTP/2 over cleartext with prior knowledge.
    H2c,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
            Scheme::H2c => "h2c",
        }
    }
}

/// The balancing algorithm of a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Balance {
    /// Fewest in-flight requests; ties broken at random.
    #[default]
    LeastConn,
    RoundRobin,
    Random,
    /// Rendezvous hashing of the client address: every replica agrees without shared
    /// state, and a change of the backend set only moves the clients of the backends
    /// that changed.
    Source,
}

impl Balance {
    pub fn as_str(self) -> &'static str {
        match self {
            Balance::LeastConn => "leastconn",
            Balance::RoundRobin => "roundrobin",
            Balance::Random => "random",
            Balance::Source => "source",
        }
    }
}

/// What the control plane asks for: one backend of a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendDef {
    pub addr: SocketAddr,
    pub scheme: Scheme,
    /// Its provider says it is going away (task shutting down, container
    /// unhealthy): requests in flight finish, new ones go elsewhere.
    pub draining: bool,
    /// A name that stays with the backend when its address changes (the swarm
    /// task slot `service.slot`, the container name): sticky tokens are made of
    /// it. `None`: the address.
    pub identity: Option<Arc<str>>,
}

/// Identity of a backend across table generations: the route it serves and its
/// address. Health is a property of (route, address) because health checks are
/// configured per route.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BackendKey {
    pub route: Arc<str>,
    pub addr: SocketAddr,
}

/// State of a backend that must survive table swaps: in-flight count, health
/// (see `health.rs`), and URI parts.
#[derive(Debug)]
pub struct BackendState {
    inflight: AtomicU32,
    /// Healthy by active checks and passive observation (`draining` is the
    /// provider's word and lives in [`Backend`]).
    pub(crate) up: AtomicBool,
    /// A new backend of a checked route that already had a usable backend: held
    /// out of rotation (`up` false) until its first active check passes.
    pub(crate) pending: AtomicBool,
    /// Consecutive passive failures (connect, reset, timeout before a response).
    pub(crate) fails: AtomicU32,
    /// Passive ejections in a row, for the cool-down back-off.
    pub(crate) ejections: AtomicU32,
    pub(crate) checks_ok: AtomicU64,
    pub(crate) checks_failed: AtomicU64,
    /// Active-check counters and the last result; never touched by a request
    /// that succeeds.
    pub(crate) health: Mutex<HealthInfo>,
    /// The last compile that used this backend (mark and sweep in the registry).
    seen: AtomicU64,
    /// `wharf_upstream_duration_seconds`: request sent to response head.
    pub upstream: crate::metrics::Histogram,
    /// URI parts built once per backend identity, so neither the hot path nor a
    /// recompile formats or parses an address.
    uri_scheme: http::uri::Scheme,
    authority: http::uri::Authority,
}

impl BackendState {
    pub(crate) fn new(def: &BackendDef) -> Self {
        let uri_scheme = match def.scheme {
            Scheme::Https => http::uri::Scheme::HTTPS,
            Scheme::Http | Scheme::H2c => http::uri::Scheme::HTTP,
        };
        // A socket address always renders as a valid authority (`1.2.3.4:80`,
        // `[::1]:80`); the fallback is unreachable but keeps this panic-free.
        let authority = http::uri::Authority::try_from(def.addr.to_string())
            .unwrap_or_else(|_| http::uri::Authority::from_static("invalid.invalid"));
        BackendState {
            inflight: AtomicU32::new(0),
            up: AtomicBool::new(true),
            pending: AtomicBool::new(false),
            fails: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            checks_ok: AtomicU64::new(0),
            checks_failed: AtomicU64::new(0),
            health: Mutex::new(HealthInfo::default()),
            seen: AtomicU64::new(0),
            upstream: crate::metrics::Histogram::default(),
            uri_scheme,
            authority,
        }
    }

    pub fn inflight(&self) -> u32 {
        self.inflight.load(Ordering::Relaxed)
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Waiting for its first active check (see [`Self::hold_for_first_check`]).
    pub fn is_pending(&self) -> bool {
        self.pending.load(Ordering::Relaxed)
    }

    /// The URI scheme to reach this backend with.
    pub fn uri_scheme(&self) -> &http::uri::Scheme {
        &self.uri_scheme
    }

    /// The backend address as a URI authority.
    pub fn authority(&self) -> &http::uri::Authority {
        &self.authority
    }

    fn authority_scheme_matches(&self, def: &BackendDef) -> bool {
        let https = def.scheme == Scheme::Https;
        (self.uri_scheme == http::uri::Scheme::HTTPS) == https
    }

    /// Marks the backend up or down by hand (tests; checks use `record_check`).
    pub fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::Relaxed);
    }
}

/// Counts one in-flight request against a backend until dropped. The proxy keeps it
/// alive until the response body is finished, so leastconn sees streaming responses.
/// On a `maxconn` route it also wakes the route's queue when the slot frees.
#[derive(Debug)]
pub struct InflightGuard {
    state: Arc<BackendState>,
    queue: Option<Arc<RouteState>>,
    released: bool,
}

impl InflightGuard {
    pub fn new(state: Arc<BackendState>) -> Self {
        state.inflight.fetch_add(1, Ordering::Relaxed);
        InflightGuard {
            state,
            queue: None,
            released: false,
        }
    }

    /// Frees the slot now (the backend's part of the exchange is over, while
    /// the last bytes still go to the client): a client that reads its answer
    /// and sends the next request at once finds the slot free, as it would
    /// after the guard's drop. Dropping it later does nothing more.
    pub fn release(&mut self) {
        if !std::mem::replace(&mut self.released, true) {
            self.free();
        }
    }

    fn free(&self) {
        self.state.inflight.fetch_sub(1, Ordering::SeqCst);
        if let Some(q) = &self.queue {
            q.slot_freed();
        }
    }

    /// Takes one of `limit` slots of the backend, or `None` when all are taken
    /// (another request won the race since the pick looked).
    pub fn try_limited(
        state: &Arc<BackendState>,
        limit: u32,
        queue: &Arc<RouteState>,
    ) -> Option<Self> {
        state
            .inflight
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()?;
        Some(InflightGuard {
            state: state.clone(),
            queue: Some(queue.clone()),
            released: false,
        })
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.release();
    }
}

/// The long-lived per-backend state, keyed by [`BackendKey`]. Compiling a table
/// looks states up here (creating missing ones) and then forgets the keys the new
/// table no longer uses; requests still running against a forgotten backend keep
/// their own `Arc` until they finish.
#[derive(Debug, Default)]
pub struct BackendRegistry {
    /// Keyed by identity; the key's scheme is part of the state, so a scheme change
    /// replaces the state.
    states: DashMap<BackendKey, Arc<BackendState>, ahash::RandomState>,
    /// Per-route state that outlives swaps (queue, retry counter), by route name.
    routes: DashMap<Arc<str>, Arc<RouteState>, ahash::RandomState>,
    generation: AtomicU64,
    /// Keys the sticky tokens; random until the configuration sets a secret.
    sticky_key: Mutex<Option<Arc<StickyKey>>>,
}

impl BackendRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts a compile: states not marked with the returned generation before
    /// [`Self::sweep`] are forgotten.
    pub(crate) fn begin(&self) -> u64 {
        self.generation.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// The state of a backend, created on first use, marked as used by `generation`;
    /// `true` with it when this call created it.
    pub(crate) fn mark(
        &self,
        key: BackendKey,
        def: &BackendDef,
        generation: u64,
    ) -> (Arc<BackendState>, bool) {
        let fresh = |s: &Arc<BackendState>| s.authority_scheme_matches(def);
        let mut created = false;
        let state = match self.states.get(&key) {
            Some(s) if fresh(&s) => s.clone(),
            _ => self
                .states
                .entry(key)
                .and_modify(|s| {
                    if !fresh(s) {
                        *s = Arc::new(BackendState::new(def));
                        created = true;
                    }
                })
                .or_insert_with(|| {
                    created = true;
                    Arc::new(BackendState::new(def))
                })
                .clone(),
        };
        state.seen.store(generation, Ordering::Relaxed);
        (state, created)
    }

    /// The state of a route, created on first use, marked as used by `generation`.
    pub(crate) fn mark_route(&self, name: &Arc<str>, generation: u64) -> Arc<RouteState> {
        let state = match self.routes.get(name) {
            Some(s) => s.clone(),
            None => self
                .routes
                .entry(name.clone())
                .or_insert_with(|| Arc::new(RouteState::default()))
                .clone(),
        };
        state.seen.store(generation, Ordering::Relaxed);
        state
    }

    pub(crate) fn sweep(&self, generation: u64) {
        self.states
            .retain(|_, s| s.seen.load(Ordering::Relaxed) == generation);
        self.routes
            .retain(|_, s| s.seen.load(Ordering::Relaxed) == generation);
    }

    /// Keys sticky tokens from now on (the next compile uses it).
    pub fn set_sticky_key(&self, key: StickyKey) {
        *lock(&self.sticky_key) = Some(Arc::new(key));
    }

    /// The key of sticky tokens: the configured one, else one made at random
    /// for this process.
    pub fn sticky_key(&self) -> Arc<StickyKey> {
        lock(&self.sticky_key)
            .get_or_insert_with(|| Arc::new(StickyKey::random()))
            .clone()
    }

    pub fn len(&self) -> usize {
        self.states.len()
    }

    pub fn is_empty(&self) -> bool {
        self.states.is_empty()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One compiled backend.
pub struct Backend {
    pub addr: SocketAddr,
    pub scheme: Scheme,
    pub draining: bool,
    pub state: Arc<BackendState>,
    /// The backend's half of its rendezvous score, computed once at compile.
    hash: u64,
    /// Its sticky token, on routes with stickiness.
    pub token: Option<Token>,
    /// `Set-Cookie` values naming this backend (insert mode), built at compile:
    /// `[plain, secure]`.
    pub set_cookie: Option<Box<[http::HeaderValue; 2]>>,
}

impl fmt::Debug for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Backend")
            .field("addr", &self.addr)
            .field("scheme", &self.scheme)
            .field("inflight", &self.state.inflight())
            .field("up", &self.state.is_up())
            .field("draining", &self.draining)
            .finish()
    }
}

impl Backend {
    pub(crate) fn new(def: &BackendDef, state: Arc<BackendState>) -> Self {
        Backend {
            addr: def.addr,
            scheme: def.scheme,
            draining: def.draining,
            state,
            hash: backend_hash(def.addr),
            token: None,
            set_cookie: None,
        }
    }

    /// May receive new requests: up and not draining.
    #[inline]
    pub fn usable(&self) -> bool {
        !self.draining && self.state.is_up()
    }

    /// `up`, `down` or `draining`, for the admin API.
    pub fn health(&self) -> &'static str {
        if self.draining {
            "draining"
        } else if self.state.is_up() {
            "up"
        } else {
            "down"
        }
    }
}

/// A fixed, fully specified hash for rendezvous scoring, so that every replica,
/// whatever its build, version or CPU, ranks backends the same way for a client:
/// FNV-1a over the address octets, then the splitmix64 finaliser for spread. The
/// client's and each backend's halves are hashed apart (the backend's once, at
/// compile), and a score is one finaliser over both: a pick at 1,000 backends
/// costs a thousand multiplications, not a thousand hashes of addresses.
fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

#[inline]
fn mix(mut h: u64) -> u64 {
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

fn client_hash(client: IpAddr) -> u64 {
    mix(match client.to_canonical() {
        IpAddr::V4(a) => fnv(FNV_OFFSET, &a.octets()),
        IpAddr::V6(a) => fnv(FNV_OFFSET, &a.octets()),
    })
}

fn backend_hash(backend: SocketAddr) -> u64 {
    let h = match backend.ip() {
        IpAddr::V4(a) => fnv(FNV_OFFSET, &a.octets()),
        IpAddr::V6(a) => fnv(FNV_OFFSET, &a.octets()),
    };
    mix(fnv(h, &backend.port().to_be_bytes()))
}

#[inline]
fn score(client: u64, backend: u64) -> u64 {
    // Rotating one half keeps score(a, b) != score(b, a) for equal inputs.
    mix(client ^ backend.rotate_left(29))
}

#[cfg(test)]
fn rendezvous_score(client: IpAddr, backend: SocketAddr) -> u64 {
    score(client_hash(client), backend_hash(backend))
}

/// The backends of one route and how to choose among them.
#[derive(Debug)]
pub struct BackendSet {
    backends: Box<[Arc<Backend>]>,
    balance: Balance,
    next: AtomicUsize,
    /// `maxconn` per backend; 0 = unlimited. A full backend is not picked.
    limit: u32,
    /// Token id → index, on routes with stickiness.
    by_token: HashMap<u64, u32, ahash::RandomState>,
    /// Every backend is plain `http` (the HTTP/1.1 engine serves the route).
    plain_http: bool,
}

impl BackendSet {
    pub(crate) fn new(backends: Vec<Arc<Backend>>, balance: Balance, limit: u32) -> Self {
        BackendSet {
            plain_http: backends.iter().all(|b| b.scheme == Scheme::Http),
            backends: backends.into_boxed_slice(),
            balance,
            next: AtomicUsize::new(fastrand::usize(..usize::MAX / 2)),
            limit,
            by_token: HashMap::default(),
        }
    }

    /// Indexes the backends by their tokens (routes with stickiness). Two
    /// backends with one identity (a task slot during a start-first update) share
    /// a token; the one not draining is indexed.
    pub(crate) fn index_tokens(&mut self) {
        for (i, b) in self.backends.iter().enumerate() {
            let Some(t) = b.token else { continue };
            match self.by_token.entry(t.id()) {
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(i as u32);
                }
                std::collections::hash_map::Entry::Occupied(mut e) => {
                    if self.backends[*e.get() as usize].draining && !b.draining {
                        e.insert(i as u32);
                    }
                }
            }
        }
    }

    /// The backend a token names, if it is in this set.
    #[inline]
    pub fn by_token(&self, token: &Token) -> Option<&Arc<Backend>> {
        self.by_id(token.id())
            .filter(|b| b.token.as_ref() == Some(token))
    }

    /// The backend whose token has this id (a source binding), preferring a
    /// usable one of the same identity.
    #[inline]
    pub fn by_id(&self, id: u64) -> Option<&Arc<Backend>> {
        let i = *self.by_token.get(&id)?;
        let b = self.backends.get(i as usize)?;
        let token = b.token.as_ref()?;
        if b.usable() {
            return Some(b);
        }
        // Another backend of the same identity may be up (a task slot being
        // replaced): rare, so a scan.
        self.backends
            .iter()
            .find(|o| o.token.as_ref() == Some(token) && o.usable())
            .or(Some(b))
    }

    /// May a pinned backend take this request: usable, and with room on a
    /// `maxconn` route?
    #[inline]
    pub fn can_take(&self, b: &Backend) -> bool {
        b.usable() && (self.limit == 0 || b.state.inflight() < self.limit)
    }

    /// [`Self::can_take`] as the balancers use it, never choosing `not`.
    #[inline]
    fn takes(&self, b: &Backend, not: Option<SocketAddr>) -> bool {
        self.can_take(b) && Some(b.addr) != not
    }

    /// A rendezvous pick by client address whatever the route's balance
    /// (`sticky = source` with no binding yet), never choosing `not`.
    pub fn pick_rendezvous(
        &self,
        client: IpAddr,
        not: Option<SocketAddr>,
    ) -> Option<&Arc<Backend>> {
        self.rendezvous(client, |b: &Backend| self.takes(b, not))
    }

    pub fn all(&self) -> &[Arc<Backend>] {
        &self.backends
    }

    /// Every backend is plain `http`, decided when the table was compiled.
    pub fn all_plain_http(&self) -> bool {
        self.plain_http
    }

    pub fn balance(&self) -> Balance {
        self.balance
    }

    /// Picks a backend that is up (and, on a `maxconn` route, has room), or
    /// `None` when none is.
    #[inline]
    pub fn pick(&self, client: IpAddr) -> Option<&Arc<Backend>> {
        self.pick_where(client, |_| true)
    }

    /// Like [`Self::pick`], never choosing `not` (a retry goes elsewhere).
    pub fn pick_other(&self, client: IpAddr, not: SocketAddr) -> Option<&Arc<Backend>> {
        self.pick_where(client, |b| b.addr != not)
    }

    #[inline]
    fn pick_where(&self, client: IpAddr, ok: impl Fn(&Backend) -> bool) -> Option<&Arc<Backend>> {
        let ok = |b: &Backend| self.can_take(b) && ok(b);
        let n = self.backends.len();
        match n {
            0 => return None,
            1 => return self.backends.first().filter(|b| ok(b)),
            _ => {}
        }
        match self.balance {
            Balance::LeastConn => self.least_conn(ok),
            Balance::RoundRobin => {
                let start = self.next.fetch_add(1, Ordering::Relaxed);
                self.first_from(start, ok)
            }
            Balance::Random => self.first_from(fastrand::usize(..n), ok),
            Balance::Source => self.rendezvous(client, ok),
        }
    }

    fn first_from(&self, start: usize, ok: impl Fn(&Backend) -> bool) -> Option<&Arc<Backend>> {
        let n = self.backends.len();
        (0..n)
            .map(|i| &self.backends[(start + i) % n])
            .find(|b| ok(b))
    }

    /// The usable backend with the fewest requests in flight, ties at random:
    /// the scan starts at a random place and keeps the first of the least
    /// loaded, and it stops at the first idle backend (nothing is fewer than
    /// zero), so a large set with idle backends costs a few steps; only a set
    /// whose every backend is busy is scanned whole.
    fn least_conn(&self, ok: impl Fn(&Backend) -> bool) -> Option<&Arc<Backend>> {
        let n = self.backends.len();
        let start = fastrand::usize(..n);
        let (tail, head) = self.backends.split_at(start);
        let mut best: Option<&Arc<Backend>> = None;
        let mut best_load = u32::MAX;
        for b in head.iter().chain(tail) {
            if !ok(b) {
                continue;
            }
            let load = b.state.inflight();
            if load < best_load {
                if load == 0 {
                    return Some(b);
                }
                best = Some(b);
                best_load = load;
            }
        }
        best
    }

    fn rendezvous(&self, client: IpAddr, ok: impl Fn(&Backend) -> bool) -> Option<&Arc<Backend>> {
        let c = client_hash(client);
        self.backends
            .iter()
            .filter(|b| ok(b))
            .max_by_key(|b| score(c, b.hash))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(n: u16, balance: Balance) -> BackendSet {
        let reg = BackendRegistry::new();
        let backends = (0..n)
            .map(|i| {
                let def = BackendDef {
                    addr: SocketAddr::from(([10, 0, 0, 1], 8000 + i)),
                    scheme: Scheme::Http,
                    draining: false,
                    identity: None,
                };
                let key = BackendKey {
                    route: "r".into(),
                    addr: def.addr,
                };
                Arc::new(Backend::new(&def, reg.mark(key, &def, 1).0))
            })
            .collect();
        BackendSet::new(backends, balance, 0)
    }

    // Changed deliberately once (2026-11-30) when the halves were split for speed;
    // replicas must run builds that agree on it.
    const GOLDEN: u64 = 1_848_201_295_870_585_941;
    const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));

    #[test]
    fn round_robin_cycles_and_skips_down() {
        let s = set(3, Balance::RoundRobin);
        let picks: Vec<_> = (0..6)
            .map(|_| s.pick(CLIENT).unwrap().addr.port())
            .collect();
        let mut first3 = picks[..3].to_vec();
        first3.sort();
        assert_eq!(first3, vec![8000, 8001, 8002]);
        assert_eq!(picks[..3], picks[3..]);
        s.all()[1].state.set_up(false);
        assert!((0..10).all(|_| s.pick(CLIENT).unwrap().addr.port() != 8001));
    }

    #[test]
    fn least_conn_prefers_idle() {
        let s = set(3, Balance::LeastConn);
        let _g0 = InflightGuard::new(s.all()[0].state.clone());
        let _g1 = InflightGuard::new(s.all()[1].state.clone());
        for _ in 0..20 {
            assert_eq!(s.pick(CLIENT).unwrap().addr.port(), 8002);
        }
        drop(_g0);
        // Now 8000 and 8002 tie at 0: both must be chosen sometimes.
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            seen.insert(s.pick(CLIENT).unwrap().addr.port());
        }
        assert_eq!(seen, [8000, 8002].into_iter().collect());
    }

    #[test]
    fn inflight_guard_counts() {
        let s = set(1, Balance::LeastConn);
        let st = s.all()[0].state.clone();
        let g = InflightGuard::new(st.clone());
        assert_eq!(st.inflight(), 1);
        drop(g);
        assert_eq!(st.inflight(), 0);
        // Released early, then dropped: counted down once.
        let _other = InflightGuard::new(st.clone());
        let mut g = InflightGuard::new(st.clone());
        g.release();
        assert_eq!(st.inflight(), 1);
        g.release();
        drop(g);
        assert_eq!(st.inflight(), 1);
    }

    #[test]
    fn none_when_all_down() {
        for n in [0, 1, 3] {
            let s = set(n, Balance::LeastConn);
            s.all().iter().for_each(|b| b.state.set_up(false));
            assert!(s.pick(CLIENT).is_none());
        }
    }

    #[test]
    fn rendezvous_score_is_a_fixed_function() {
        // Golden values: a change here breaks agreement between replicas running
        // different builds, so it must be deliberate.
        let c: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(
            rendezvous_score(c, "10.0.0.1:8080".parse().unwrap()),
            rendezvous_score(
                "::ffff:192.0.2.1".parse().unwrap(),
                "10.0.0.1:8080".parse().unwrap()
            )
        );
        assert_eq!(
            rendezvous_score(c, "10.0.0.1:8080".parse().unwrap()),
            GOLDEN
        );
    }

    #[test]
    fn source_is_stable_and_moves_only_lost_clients() {
        let s = set(5, Balance::Source);
        let clients: Vec<IpAddr> = (0..500u32)
            .map(|i| IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i)))
            .collect();
        let before: Vec<u16> = clients
            .iter()
            .map(|c| s.pick(*c).unwrap().addr.port())
            .collect();
        let again: Vec<u16> = clients
            .iter()
            .map(|c| s.pick(*c).unwrap().addr.port())
            .collect();
        assert_eq!(before, again);
        s.all()[2].state.set_up(false);
        for (c, b) in clients.iter().zip(&before) {
            let now = s.pick(*c).unwrap().addr.port();
            if *b != 8002 {
                assert_eq!(now, *b, "a client of a healthy backend moved");
            } else {
                assert_ne!(now, 8002);
            }
        }
        // Spread: every backend gets a share.
        for p in 8000..8005 {
            assert!(before.iter().filter(|x| **x == p).count() > 50);
        }
    }
}
