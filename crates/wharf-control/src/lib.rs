//! The control plane: compiles the desired state (config routes now; provider
//! snapshots later) into one [`Table`] and publishes it with a single atomic swap.
//!
//! It owns the [`BackendRegistry`], so state keyed by backend identity survives
//! every swap. It never runs on the request path: readers only `load()` the table.

use std::sync::Arc;

use arc_swap::ArcSwap;
use http::HeaderValue;
use wharf_config::route::{StickyType, TlsMode};
use wharf_config::{Config, RouteSpec, Upstream};
use wharf_table::{BackendDef, BackendRegistry, Policy, RouteDef, Sticky, Table};

/// The published table, shared with the proxy and the admin listener.
pub type SharedTable = Arc<ArcSwap<Table>>;

/// What one compile-and-swap did, for logs, the API and metrics.
#[derive(Debug, Default)]
pub struct ApplyReport {
    pub routes: usize,
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Problems that concern one route or host only; everything else was applied.
    pub problems: Vec<String>,
    /// Accepted settings this build does not enforce yet, per route.
    pub not_enforced: Vec<String>,
}

pub struct Control {
    table: SharedTable,
    registry: BackendRegistry,
}

/// The control plane's own metrics (SPEC "Metrics").
#[derive(Clone)]
pub struct ControlMetrics {
    pub reloads: prometheus::IntCounterVec,
    pub errors: prometheus::IntGaugeVec,
    pub routes: prometheus::IntGauge,
}

impl ControlMetrics {
    pub fn register(registry: &prometheus::Registry) -> prometheus::Result<Self> {
        let reloads = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "wharf_config_reloads_total",
                "Configuration reloads by provider and result (success, failure).",
            ),
            &["provider", "result"],
        )?;
        let errors = prometheus::IntGaugeVec::new(
            prometheus::Opts::new(
                "wharf_config_errors",
                "Current configuration errors by provider.",
            ),
            &["provider"],
        )?;
        let routes = prometheus::IntGauge::new("wharf_routes", "Routes in the current table.")?;
        registry.register(Box::new(reloads.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(routes.clone()))?;
        Ok(ControlMetrics {
            reloads,
            errors,
            routes,
        })
    }
}

impl Default for Control {
    fn default() -> Self {
        Self::new()
    }
}

impl Control {
    pub fn new() -> Self {
        Control {
            table: Arc::new(ArcSwap::from_pointee(Table::default())),
            registry: BackendRegistry::new(),
        }
    }

    pub fn table(&self) -> SharedTable {
        self.table.clone()
    }

    /// Compiles `config`'s routes and swaps the table in once.
    pub fn apply(&self, config: &Config) -> ApplyReport {
        let mut report = ApplyReport::default();
        let defs: Vec<RouteDef> = config
            .routes
            .iter()
            .map(|r| {
                report.not_enforced.extend(not_enforced(r));
                route_def(config, r, &mut report.problems)
            })
            .collect();
        let (table, compile) = Table::compile(defs, &self.registry);
        for c in compile.conflicts {
            report.problems.push(format!(
                "host `{}` path `{}` is claimed by routes `{}` and `{}`; `{}` keeps it",
                c.host, c.path, c.kept, c.dropped, c.kept
            ));
        }
        let old = self.table.load();
        let old_names: Vec<&str> = old.routes().iter().map(|r| &*r.name).collect();
        let new_names: Vec<&str> = table.routes().iter().map(|r| &*r.name).collect();
        report.added = new_names
            .iter()
            .filter(|n| !old_names.contains(n))
            .map(|n| n.to_string())
            .collect();
        report.removed = old_names
            .iter()
            .filter(|n| !new_names.contains(n))
            .map(|n| n.to_string())
            .collect();
        report.routes = table.len();
        self.table.store(Arc::new(table));
        report
    }
}

fn route_def(config: &Config, r: &RouteSpec, problems: &mut Vec<String>) -> RouteDef {
    let backends = match &r.upstream {
        Upstream::Static(addrs) => addrs
            .iter()
            .map(|addr| BackendDef {
                addr: *addr,
                scheme: r.scheme,
            })
            .collect(),
        Upstream::Dns { name, port } => {
            problems.push(format!(
                "route `{}`: `dns:{name}:{port}` is resolved by the DNS provider, which this \
                 build does not include yet; the route answers 503 until then",
                r.name
            ));
            Vec::new()
        }
        Upstream::Provided => Vec::new(),
    };
    let hsts = r
        .hsts
        .header_value()
        .and_then(|v| HeaderValue::from_str(&v).ok());
    RouteDef {
        name: r.name.as_str().into(),
        source: "file".into(),
        hosts: r.hosts.clone(),
        path: r.path.clone(),
        entrypoints: config.route_mask(r),
        balance: r.balance,
        backends,
        policy: Policy {
            tls: r.tls == TlsMode::Acme,
            https_redirect: r.https_redirect,
            hsts,
            sticky: match r.sticky.kind {
                StickyType::None => Sticky::None,
                StickyType::Cookie => Sticky::Cookie,
                StickyType::Source => Sticky::Source,
            },
        },
    }
}

/// Settings that are accepted and validated but not enforced by this build, so an
/// operator is told rather than silently ignored.
fn not_enforced(r: &RouteSpec) -> Vec<String> {
    let mut out = Vec::new();
    let mut say = |what: &str| {
        out.push(format!(
            "route `{}`: `{what}` is validated but not enforced by this build yet",
            r.name
        ))
    };
    if r.sticky.kind != StickyType::None {
        say("sticky");
    }
    if r.healthcheck.is_some() {
        say("healthcheck");
    }
    if r.ratelimit.is_some() {
        say("ratelimit");
    }
    if r.maxconn.is_some() {
        say("maxconn");
    }
    if r.scheme == wharf_table::Scheme::Https {
        say("scheme = https (backends answer 502 until TLS to backends lands)");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(routes: &str) -> Config {
        let text = format!("[entrypoints.web]\naddress = \"127.0.0.1:0\"\n{routes}");
        wharf_config::parse(&text, "t", std::iter::empty()).unwrap()
    }

    #[test]
    fn applies_and_reports_diff() {
        let c = Control::new();
        let r1 = c.apply(&config(
            "[[routes]]\nhost = \"a\"\nupstream = \"static:127.0.0.1:1\"\n",
        ));
        assert_eq!(r1.added, vec!["a/"]);
        assert_eq!(c.table().load().len(), 1);
        let r2 = c.apply(&config(
            "[[routes]]\nhost = \"b\"\nupstream = \"static:127.0.0.1:1\"\nsticky = \"cookie\"\n",
        ));
        assert_eq!(r2.added, vec!["b/"]);
        assert_eq!(r2.removed, vec!["a/"]);
        assert_eq!(r2.not_enforced.len(), 1);
        assert!(c.table().load().find("b", "/", 0).is_some());
        assert!(c.table().load().find("a", "/", 0).is_none());
    }

    #[test]
    fn conflicts_are_reported_and_first_wins() {
        let c = Control::new();
        let r = c.apply(&config(
            "[[routes]]\nname=\"one\"\nhost = \"a\"\nupstream = \"static:127.0.0.1:1\"\n[[routes]]\nname=\"two\"\nhost = \"a\"\nupstream = \"static:127.0.0.1:2\"\n",
        ));
        assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
        assert_eq!(&*c.table().load().find("a", "/", 0).unwrap().name, "one");
    }
}
