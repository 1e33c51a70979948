//! The compiled routing table: the data the hot path reads.
//!
//! A [`Table`] is built once from route definitions (off the hot path), published
//! through an `ArcSwap` by the control plane, and then only read. It owns host and
//! path matching, backend sets and balancing. It must never do I/O, never block and
//! never depend on an async runtime: every request of every connection reads it.
//!
//! State that must outlive a table swap (in-flight counts, health; per route the
//! `maxconn` queue and retry counter) lives in [`BackendRegistry`], keyed by backend
//! identity or route name, so that a change to one route never resets another
//! route's backends.
//!
//! The only runtime piece is `tokio::sync::Notify` for the `maxconn` queue, which
//! needs no runtime to exist; waiting with a deadline is the proxy's business.

mod backend;
mod health;
mod host;
mod limit;
pub mod metrics;
pub mod middleware;
mod path;
pub mod ratelimit;
mod route;
pub mod sticky;
mod table;

pub use backend::{
    Backend, BackendDef, BackendKey, BackendRegistry, BackendState, Balance, InflightGuard, Scheme,
};
pub use health::{
    HealthCheck, HealthInfo, LastCheck, Transition, PASSIVE_COOLDOWN, PASSIVE_COOLDOWN_MAX,
    PASSIVE_FAILURES,
};
pub use host::normalize_host;
pub use limit::{MaxConn, QueueTicket, RouteState};
pub use middleware::{AuthCache, BasicAuth, HeaderRules, IpAllowList, PasswordHash};
pub use path::{path_is_clean, prefix_matches};
pub use ratelimit::{RateKey, RateLimit};
pub use route::{BackendTls, EntrypointMask, Policy, Route, RouteDef};
pub use sticky::{CookieSticky, StickyKey, StickyPolicy, Token};
pub use table::{CompileReport, Table};
