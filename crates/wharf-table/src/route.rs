//! Routes: what a request is matched against, and the policy applied to it.

use std::sync::Arc;

use http::HeaderValue;

use crate::backend::{BackendDef, BackendSet, Balance};
use crate::health::HealthCheck;
use crate::limit::{MaxConn, RouteState};
use crate::middleware::{BasicAuth, HeaderRules, IpAllowList};
use crate::ratelimit::RateLimit;
use crate::sticky::StickyPolicy;

/// The set of entrypoints (by index in the configuration) a route is served on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntrypointMask(u64);

impl EntrypointMask {
    /// At most this many entrypoints can be named (the mask is one `u64`).
    pub const MAX_ENTRYPOINTS: usize = 64;
    pub const ALL: EntrypointMask = EntrypointMask(u64::MAX);

    pub fn none() -> Self {
        EntrypointMask(0)
    }

    /// Adds entrypoint `index`; indexes past [`Self::MAX_ENTRYPOINTS`] are ignored,
    /// which configuration validation rules out beforehand.
    pub fn with(self, index: usize) -> Self {
        if index < Self::MAX_ENTRYPOINTS {
            EntrypointMask(self.0 | (1 << index))
        } else {
            self
        }
    }

    /// Do two masks share an entrypoint?
    pub fn overlaps(self, other: EntrypointMask) -> bool {
        self.0 & other.0 != 0
    }

    #[inline]
    pub fn contains(self, index: usize) -> bool {
        index < Self::MAX_ENTRYPOINTS && self.0 & (1 << index) != 0
    }
}

/// Per-route behaviour that the proxy applies around forwarding. Values that are
/// sent on the wire are precomputed here so the hot path never formats them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// TLS is wanted for this route (`tls = acme`): a plain entrypoint with
    /// `redirect_https` redirects it.
    pub tls: bool,
    /// `https_redirect`: this route takes part in plain-to-TLS redirects.
    pub https_redirect: bool,
    /// The `Strict-Transport-Security` value, sent on TLS responses only.
    pub hsts: Option<HeaderValue>,
    /// Session affinity; `None`: each request is balanced on its own.
    pub sticky: Option<Arc<StickyPolicy>>,
    pub ratelimit: Option<Arc<RateLimit>>,
    /// TLS to the backends (`scheme = "https"`).
    pub backend_tls: Option<Arc<BackendTls>>,
    /// Active health checks of every backend; `None`: only passive observation,
    /// whose ejections then end after a cool-down.
    pub healthcheck: Option<Arc<HealthCheck>>,
    pub maxconn: Option<MaxConn>,
    /// `ipallowlist`: answered 403 unless the client is in a range.
    pub ipallowlist: Option<Arc<IpAllowList>>,
    /// `basicauth`: answered 401 without valid credentials.
    pub basicauth: Option<Arc<BasicAuth>>,
    /// `headers`: request and response fields set or removed.
    pub headers: Option<Arc<HeaderRules>>,
}

/// How a route's backends are reached over TLS: the rustls client policy (roots
/// or `insecure`, client certificate, ALPN `h2` then `http/1.1`) and the name sent
/// as SNI and verified.
pub struct BackendTls {
    pub config: Arc<rustls::ClientConfig>,
    /// The HTTP/1.1-only twin of `config` (upgrades, health checks).
    pub config_h1: Arc<rustls::ClientConfig>,
    pub server_name: rustls::pki_types::ServerName<'static>,
    pub insecure: bool,
    /// Identifies the settings and the files they were read from: equal keys,
    /// equal policies. Connections are pooled per (backend, key).
    pub key: u64,
}

impl std::fmt::Debug for BackendTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendTls")
            .field("server_name", &self.server_name)
            .field("insecure", &self.insecure)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl PartialEq for BackendTls {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}

impl Eq for BackendTls {}

/// What the control plane compiles into a [`Route`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteDef {
    pub name: Arc<str>,
    /// Which provider declared it (`file`, `docker`, ...), for the API and logs.
    pub source: Arc<str>,
    /// Normalised (lower-case) host names; `*.example.org` matches exactly one more
    /// label; `*` alone is the default route.
    pub hosts: Vec<String>,
    /// Path prefix; plain string prefix as Traefik's `PathPrefix` and HAProxy's
    /// `path_beg`.
    pub path: String,
    pub entrypoints: EntrypointMask,
    pub balance: Balance,
    pub backends: Vec<BackendDef>,
    pub policy: Policy,
}

/// A compiled route.
#[derive(Debug)]
pub struct Route {
    pub name: Arc<str>,
    pub source: Arc<str>,
    pub hosts: Vec<String>,
    pub path: String,
    pub entrypoints: EntrypointMask,
    pub policy: Policy,
    pub backends: BackendSet,
    /// State that survives swaps: the `maxconn` queue, the retry counter.
    pub state: Arc<RouteState>,
}

impl Route {
    pub(crate) fn new(def: RouteDef, backends: BackendSet, state: Arc<RouteState>) -> Self {
        Route {
            state,
            name: def.name,
            source: def.source,
            hosts: def.hosts,
            path: def.path,
            entrypoints: def.entrypoints,
            policy: def.policy,
            backends,
        }
    }

    pub fn balance(&self) -> Balance {
        self.backends.balance()
    }
}

impl RouteDef {
    /// A route `r` for host `h` at `/`, least-connections over `n` plain
    /// backends `127.0.0.1:9000`, `:9001`, ... with `policy`: the fixture the
    /// crates' tests share.
    #[doc(hidden)]
    pub fn local_for_tests(n: u16, policy: Policy) -> RouteDef {
        RouteDef {
            name: "r".into(),
            source: "test".into(),
            hosts: vec!["h".into()],
            path: "/".into(),
            entrypoints: EntrypointMask::ALL,
            balance: crate::Balance::LeastConn,
            backends: (0..n)
                .map(|i| crate::BackendDef {
                    addr: std::net::SocketAddr::from(([127, 0, 0, 1], 9000 + i)),
                    scheme: crate::Scheme::Http,
                    draining: false,
                    identity: None,
                })
                .collect(),
            policy,
        }
    }
}
