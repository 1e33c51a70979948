//! The compiled routing table: the data the hot path reads.
//!
//! A [`Table`] is built once from route definitions (off the hot path), published
//! through an `ArcSwap` by the control plane, and then only read. It owns host and
//! path matching, backend sets and balancing. It must never do I/O, never block and
//! never depend on an async runtime: every request of every connection reads it.
//!
//! State that must outlive a table swap (in-flight counts now; health and sticky
//! bindings later) lives in [`BackendRegistry`], keyed by backend identity, so that a
//! change to one route never resets another route's backends.

mod backend;
mod host;
mod route;
mod table;

pub use backend::{
    Backend, BackendDef, BackendKey, BackendRegistry, BackendState, Balance, InflightGuard, Scheme,
};
pub use host::normalize_host;
pub use route::{EntrypointMask, Policy, Route, RouteDef, Sticky};
pub use table::{CompileReport, Table};
