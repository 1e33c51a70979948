//! The control plane: merges what every provider declares (the config file's
//! routes, Docker's services and containers with their labels, DNS answers) into
//! one [`Table`] and publishes it with a single atomic swap — and no swap at all
//! when nothing changed.
//!
//! It owns the [`BackendRegistry`], so state keyed by backend identity survives
//! every swap. It never runs on the request path: readers only `load()` the table.

mod backend_tls;
pub mod owners;

pub use owners::{Claim, Claims, CLAIM_EXPIRY};

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use http::HeaderValue;
use wharf_config::labels::{self, LabelOptions, ServiceInput, Severity};
use wharf_config::route::{StickyMode, StickyType, TlsMode};
use wharf_config::{Config, RouteSpec, Upstream};
use wharf_docker::{Snapshot, Workload};
use wharf_table::{
    BackendDef, BackendRegistry, CookieSticky, HealthCheck, Policy, RateKey, RateLimit, RouteDef,
    StickyKey, StickyPolicy, Table,
};

/// The published table, shared with the proxy and the admin listener.
pub type SharedTable = Arc<ArcSwap<Table>>;

/// Everything the table is compiled from.
pub struct Inputs<'a> {
    pub config: &'a Config,
    /// The Docker provider's latest snapshot; `None` when Docker is off or has not
    /// answered yet.
    pub docker: Option<&'a Snapshot>,
    /// The DNS provider's current address set per name.
    pub dns: &'a BTreeMap<String, Vec<IpAddr>>,
}

/// One problem, attributed as precisely as the API can show it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Problem {
    /// `file`, `docker` or `dns`.
    pub source: &'static str,
    /// The service, container or route it concerns.
    pub service: Option<String>,
    /// The label or key it concerns.
    pub label: Option<String>,
    pub message: String,
    /// An error rejected something; a warning did not.
    pub error: bool,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.source)?;
        if let Some(s) = &self.service {
            write!(f, ": {s}")?;
        }
        if let Some(l) = &self.label {
            write!(f, ": {l}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// What one apply did, for logs, the API and metrics.
#[derive(Debug, Default)]
pub struct ApplyReport {
    /// False when the compiled routes equal the published ones (no swap).
    pub swapped: bool,
    pub routes: usize,
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Routes whose hosts, path, policy or backends changed.
    pub changed: Vec<String>,
    /// Problems that concern one route, service or host only; everything else was
    /// applied.
    pub problems: Vec<Problem>,
    /// Accepted settings this build does not enforce yet, per route.
    pub not_enforced: Vec<String>,
    /// Names the DNS provider must watch (`dns:` upstreams, dnsrr services).
    pub dns_names: BTreeSet<String>,
}

impl ApplyReport {
    /// `added: a, b; removed: c; changed: d` (empty when nothing changed).
    pub fn diff_line(&self) -> String {
        let mut parts = Vec::new();
        for (what, list) in [
            ("added", &self.added),
            ("removed", &self.removed),
            ("changed", &self.changed),
        ] {
            if !list.is_empty() {
                parts.push(format!("{what}: {}", list.join(", ")));
            }
        }
        parts.join("; ")
    }

    pub fn errors(&self, source: &str) -> usize {
        self.problems
            .iter()
            .filter(|p| p.error && p.source == source)
            .count()
    }
}

/// What a workload's labels last declared without error, so that a bad edit
/// keeps the service online.
#[derive(Debug, Clone)]
struct LastGood {
    routes: Arc<labels::ServiceRoutes>,
}

/// A workload's labels as last parsed: most snapshots change a task address, not
/// labels, so parsing 10,000 services' labels again would be wasted work.
struct Parsed {
    name: String,
    labels: BTreeMap<String, String>,
    ports: Vec<u16>,
    routes: Arc<labels::ServiceRoutes>,
}

#[derive(Default)]
struct ParseCache {
    /// The options the cache was filled with; other options empty it.
    opts: Option<LabelOptions>,
    by_id: HashMap<String, Parsed>,
}

pub struct Control {
    table: SharedTable,
    registry: BackendRegistry,
    /// Route definitions of the published table, to skip no-op swaps and diff.
    published: Mutex<Vec<RouteDef>>,
    /// The conflicts the published table was compiled with.
    conflicts: Mutex<Vec<Problem>>,
    last_good: Mutex<HashMap<String, LastGood>>,
    parsed: Mutex<ParseCache>,
    /// The `[sticky] secret` the registry's key was made from (`Some(None)`: none
    /// configured, a random key).
    sticky_secret: Mutex<Option<Option<String>>>,
    /// rustls client configs of `https` routes, by settings and file stamps.
    tls: backend_tls::TlsPolicies,
    /// Who owns each label host (persisted by the caller: [`Control::claims`]).
    claims: Mutex<Claims>,
}

/// The control plane's own metrics (SPEC "Metrics").
#[derive(Clone)]
pub struct ControlMetrics {
    pub reloads: prometheus::IntCounterVec,
    pub errors: prometheus::IntGaugeVec,
    pub routes: prometheus::IntGauge,
    /// Host names from labels past `[acme] max_names` (no certificate ordered).
    pub acme_names_capped: prometheus::IntGauge,
    /// 1 while a provider cannot reach its source (Docker's API) and the last
    /// good routes are served.
    pub degraded: prometheus::IntGaugeVec,
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
        let acme_names_capped = prometheus::IntGauge::new(
            "wharf_acme_names_capped",
            "Host names from labels past [acme] max_names, for which no certificate is ordered.",
        )?;
        let degraded = prometheus::IntGaugeVec::new(
            prometheus::Opts::new(
                "wharf_provider_degraded",
                "1 while a provider cannot reach its source and the last known routes are served.",
            ),
            &["provider"],
        )?;
        registry.register(Box::new(acme_names_capped.clone()))?;
        registry.register(Box::new(degraded.clone()))?;
        registry.register(Box::new(reloads.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(routes.clone()))?;
        Ok(ControlMetrics {
            reloads,
            errors,
            routes,
            acme_names_capped,
            degraded,
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
            published: Mutex::new(Vec::new()),
            conflicts: Mutex::new(Vec::new()),
            last_good: Mutex::new(HashMap::new()),
            parsed: Mutex::new(ParseCache::default()),
            sticky_secret: Mutex::new(None),
            tls: backend_tls::TlsPolicies::default(),
            claims: Mutex::new(Claims::default()),
        }
    }

    /// The host ownership record as it stands, for the caller to persist.
    pub fn claims(&self) -> Claims {
        self.claims
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Restores the ownership record read at start (before the first apply
    /// with Docker), so owners survive a restart.
    pub fn load_claims(&self, claims: Claims) {
        *self
            .claims
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = claims;
    }

    /// Says once (per key) that cookie tokens come from a random key when a
    /// route with cookie stickiness is served without `[sticky] secret`: labels
    /// can add such a route long after the file was read.
    fn warn_random_sticky_key(&self, table: &Table) {
        let cookie = |r: &&Arc<wharf_table::Route>| {
            matches!(r.policy.sticky.as_deref(), Some(StickyPolicy::Cookie(_)))
        };
        let Some(route) = table.routes().iter().find(cookie) else {
            return;
        };
        let key = self.registry.sticky_key();
        if key.generated && !key.warned.swap(true, std::sync::atomic::Ordering::Relaxed) {
            tracing::warn!(
                route = %route.name,
                "[sticky] secret is not set: sticky cookies are keyed by a random per-process \
                 key, so replicas will disagree and a restart re-pins every client; set the \
                 same secret on every replica"
            );
        }
    }

    /// Keys sticky tokens with the configured secret; says whether it changed
    /// (every token changes with it, so the table must be compiled again).
    fn use_sticky_secret(&self, secret: Option<&str>) -> bool {
        let mut current = self
            .sticky_secret
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if current.as_ref().is_some_and(|c| c.as_deref() == secret) {
            return false;
        }
        match secret {
            Some(s) => self.registry.set_sticky_key(StickyKey::new(s.as_bytes())),
            None if current.is_some() => self.registry.set_sticky_key(StickyKey::random()),
            // The first config has none: the registry makes a random key.
            None => {}
        }
        let first = current.is_none();
        *current = Some(secret.map(str::to_string));
        !first
    }

    pub fn table(&self) -> SharedTable {
        self.table.clone()
    }

    /// Compiles the file's routes alone (no providers) and swaps.
    pub fn apply(&self, config: &Config) -> ApplyReport {
        self.apply_inputs(&Inputs {
            config,
            docker: None,
            dns: &BTreeMap::new(),
        })
    }

    /// Compiles every provider's routes and swaps the table in once, unless the
    /// result equals what is published.
    pub fn apply_inputs(&self, inputs: &Inputs) -> ApplyReport {
        let mut report = ApplyReport::default();
        let config = inputs.config;
        let mut defs: Vec<RouteDef> = Vec::new();
        for r in &config.routes {
            report.not_enforced.extend(r.not_enforced());
            defs.push(route_def(
                config,
                r,
                "file",
                inputs.dns,
                &self.tls,
                &mut report,
            ));
        }
        if let Some(snap) = inputs.docker {
            let first_label = defs.len();
            let mut metas = Vec::new();
            self.docker_defs(config, snap, inputs.dns, &mut defs, &mut metas, &mut report);
            owners::merge_backend_groups(&mut defs, &mut metas, first_label);
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let mut claims = self
                .claims
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            owners::settle(
                &mut defs,
                &mut metas,
                first_label,
                &mut claims,
                &owners::Rules {
                    hosts: &wharf_config::compose::HostRules {
                        allowed_domains: config.docker.allowed_domains.clone(),
                        allow_wildcards: config.docker.allow_wildcards,
                    },
                    now,
                },
                &mut report,
            );
        }

        let mut published = self
            .published
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Conflicts are found by compiling; compile even when unchanged would be
        // wasted work, so only the report of a real compile carries them — keep
        // the last ones for an unchanged input.
        let mut last_conflicts = self
            .conflicts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let rekeyed = self.use_sticky_secret(config.sticky.secret.as_deref());
        if *published == defs && !rekeyed {
            report.routes = self.table.load().len();
            report.problems.extend(last_conflicts.iter().cloned());
            return report;
        }
        diff(&published, &defs, &mut report);
        let (table, compile) = Table::compile(defs.clone(), &self.registry);
        self.warn_random_sticky_key(&table);
        let mut conflicts = Vec::new();
        for c in compile.conflicts {
            conflicts.push(Problem {
                source: source_of(&defs, &c.dropped),
                service: Some(c.dropped.to_string()),
                label: None,
                message: format!(
                    "host `{}` path `{}` is claimed by `{}` and `{}`; `{}` keeps it",
                    c.host, c.path, c.kept, c.dropped, c.kept
                ),
                error: true,
            });
        }
        report.problems.extend(conflicts.iter().cloned());
        report.routes = table.len();
        report.swapped = true;
        self.table.store(Arc::new(table));
        *published = defs;
        *last_conflicts = conflicts;
        report
    }

    fn docker_defs(
        &self,
        config: &Config,
        snap: &Snapshot,
        dns: &BTreeMap<String, Vec<IpAddr>>,
        defs: &mut Vec<RouteDef>,
        metas: &mut Vec<owners::Meta>,
        report: &mut ApplyReport,
    ) {
        let opts = LabelOptions {
            exposed_by_default: config.docker.exposed_by_default,
            traefik_labels: config.docker.traefik_labels,
            traefik_rules_enable: config.docker.traefik_rules_enable,
            entrypoints: config
                .entrypoints
                .iter()
                .map(|e| (e.name.clone(), e.tls))
                .collect(),
        };
        let mut last_good = self
            .last_good
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut parsed = self
            .parsed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if parsed.opts.as_ref() != Some(&opts) {
            parsed.opts = Some(opts.clone());
            parsed.by_id.clear();
        }
        let parsed = &mut parsed.by_id;
        let mut seen: std::collections::HashSet<&str> =
            std::collections::HashSet::with_capacity(snap.workloads.len());
        for w in &snap.workloads {
            seen.insert(&w.id);
            let declared = match parsed.get(&w.id) {
                Some(p)
                    if p.name == w.name && p.labels == w.labels && p.ports == w.exposed_ports =>
                {
                    p.routes.clone()
                }
                _ => {
                    let declared = Arc::new(labels::service_routes(
                        &ServiceInput {
                            name: &w.name,
                            labels: &w.labels,
                            exposed_ports: &w.exposed_ports,
                        },
                        &opts,
                    ));
                    parsed.insert(
                        w.id.clone(),
                        Parsed {
                            name: w.name.clone(),
                            labels: w.labels.clone(),
                            ports: w.exposed_ports.clone(),
                            routes: declared.clone(),
                        },
                    );
                    declared
                }
            };
            for p in &declared.problems {
                report.problems.push(Problem {
                    source: "docker",
                    service: Some(format!("{} {}", w.kind.as_str(), p.service)),
                    label: Some(format!("{}={}", p.label, p.value)),
                    message: p.message.clone(),
                    error: p.severity == Severity::Error,
                });
            }
            if !declared.enabled {
                last_good.remove(&w.id);
                continue;
            }
            let good = if declared.fails_closed() {
                // An auth or allow-list label that cannot be applied: the old
                // routes lack what it asks for, so none is kept (fail closed).
                if last_good.remove(&w.id).is_some() {
                    report.problems.push(Problem {
                        source: "docker",
                        service: Some(format!("{} {}", w.kind.as_str(), w.name)),
                        label: None,
                        message: "its new access-control labels cannot be applied; its routes \
                                  are withdrawn, not kept (fail closed)"
                            .into(),
                        error: true,
                    });
                }
                continue;
            } else if declared.has_errors() {
                match last_good.get(&w.id) {
                    Some(good) => {
                        report.problems.push(Problem {
                            source: "docker",
                            service: Some(format!("{} {}", w.kind.as_str(), w.name)),
                            label: None,
                            message: "its new labels are rejected; it keeps its last good routes"
                                .into(),
                            error: false,
                        });
                        good.routes.clone()
                    }
                    None => continue,
                }
            } else {
                match last_good.get_mut(w.id.as_str()) {
                    Some(g) if Arc::ptr_eq(&g.routes, &declared) => {}
                    Some(g) => g.routes = declared.clone(),
                    None => {
                        last_good.insert(
                            w.id.clone(),
                            LastGood {
                                routes: declared.clone(),
                            },
                        );
                    }
                }
                declared
            };
            let owner = owner_of(w, opts.traefik_labels);
            let allow = wharf_config::labels::allow_paths_from(&w.labels);
            let backend_group = opts
                .traefik_labels
                .then(|| w.labels.get("traefik.backend").cloned())
                .flatten();
            for (i, r) in good.routes.iter().enumerate() {
                report.not_enforced.extend(r.not_enforced());
                let mut def = route_def(config, r, "docker", dns, &self.tls, report);
                def.name = format!("{}@docker", r.name).into();
                def.backends = workload_backends(config, w, r, dns, report);
                defs.push(def);
                metas.push(owners::Meta {
                    owner: owner.clone(),
                    service: format!("{} {}", w.kind.as_str(), w.name),
                    host_label: good.host_labels.get(i).map(|(l, v)| format!("{l}={v}")),
                    allow: allow.clone(),
                    backend_group: backend_group.clone(),
                });
            }
        }
        last_good.retain(|id, _| seen.contains(id.as_str()));
        parsed.retain(|id, _| seen.contains(id.as_str()));
    }
}

/// The owner of a workload's hosts: its stack or compose project, its Traefik v1
/// backend group, else the service or container itself (docs/discovery.md,
/// "Host ownership").
fn owner_of(w: &Workload, traefik_labels: bool) -> String {
    let label = |k: &str| w.labels.get(k).filter(|v| !v.is_empty());
    if let Some(ns) = label("com.docker.stack.namespace") {
        return format!("stack:{ns}");
    }
    if let Some(p) = label("com.docker.compose.project") {
        return format!("compose:{p}");
    }
    if let Some(b) = label("traefik.backend").filter(|_| traefik_labels) {
        return format!("backend:{b}");
    }
    format!("{}:{}", w.kind.as_str(), w.name)
}

/// The backends of one route of a workload: its endpoints' addresses on the
/// route's network, or, for `endpoint_mode: dnsrr`, Docker's DNS answer for
/// `tasks.<service>`.
fn workload_backends(
    config: &Config,
    w: &Workload,
    r: &RouteSpec,
    dns: &BTreeMap<String, Vec<IpAddr>>,
    report: &mut ApplyReport,
) -> Vec<BackendDef> {
    let Some(port) = r.port else {
        // The label layer always sets a port or reports an error.
        return Vec::new();
    };
    if w.dnsrr {
        let name = format!("tasks.{}", w.name);
        report.dns_names.insert(name.clone());
        // Docker knows first when a service has no running task: the DNS answer
        // (held through failures for `hold_valid`) must not keep dead addresses.
        if w.endpoints.is_empty() {
            return Vec::new();
        }
        let addrs = dns.get(&name).cloned().unwrap_or_default();
        return addrs
            .into_iter()
            .map(|ip| {
                let task = |e: &&wharf_docker::Endpoint| e.addrs.values().any(|a| *a == ip);
                BackendDef {
                    addr: SocketAddr::new(ip, port),
                    scheme: r.scheme,
                    // A task Docker reports shutting down or unhealthy drains here too.
                    draining: w.endpoints.iter().filter(task).any(|e| e.draining),
                    identity: w
                        .endpoints
                        .iter()
                        .find(task)
                        .map(|e| e.identity.as_str().into()),
                }
            })
            .collect();
    }
    let network = r.network.as_deref().unwrap_or(&config.docker.network);
    let mut out = Vec::new();
    let mut elsewhere = BTreeSet::new();
    for e in &w.endpoints {
        let ip = match e.addrs.get(network) {
            Some(ip) => Some(*ip),
            // Attached to one network only: that is the one to use (as Traefik
            // does when no network is named).
            None if e.addrs.len() == 1 && r.network.is_none() => e.addrs.values().next().copied(),
            None => None,
        };
        match ip {
            Some(ip) => out.push(BackendDef {
                addr: SocketAddr::new(ip, port),
                scheme: r.scheme,
                draining: e.draining,
                identity: Some(e.identity.as_str().into()),
            }),
            None => elsewhere.extend(e.addrs.keys().cloned()),
        }
    }
    if out.is_empty() && !w.endpoints.is_empty() {
        report.problems.push(Problem {
            source: "docker",
            service: Some(format!("{} {}", w.kind.as_str(), w.name)),
            label: Some("wharf.network".into()),
            message: format!(
                "not attached to network `{network}` (attached to: {}); it has no reachable backend",
                elsewhere.into_iter().collect::<Vec<_>>().join(", ")
            ),
            error: true,
        });
    }
    out.sort_by_key(|b| b.addr);
    out
}

fn source_of(defs: &[RouteDef], name: &str) -> &'static str {
    match defs.iter().find(|d| &*d.name == name).map(|d| &*d.source) {
        Some("docker") => "docker",
        _ => "file",
    }
}

/// Route names added, removed and changed between two definition lists.
fn diff(old: &[RouteDef], new: &[RouteDef], report: &mut ApplyReport) {
    let old_by: HashMap<&str, &RouteDef> = old.iter().map(|d| (&*d.name, d)).collect();
    let new_by: HashMap<&str, &RouteDef> = new.iter().map(|d| (&*d.name, d)).collect();
    for d in new {
        match old_by.get(&*d.name) {
            None => report.added.push(d.name.to_string()),
            Some(o) if *o != d => report.changed.push(d.name.to_string()),
            Some(_) => {}
        }
    }
    for d in old {
        if !new_by.contains_key(&*d.name) {
            report.removed.push(d.name.to_string());
        }
    }
}

fn route_def(
    config: &Config,
    r: &RouteSpec,
    source: &str,
    dns: &BTreeMap<String, Vec<IpAddr>>,
    tls: &backend_tls::TlsPolicies,
    report: &mut ApplyReport,
) -> RouteDef {
    // TLS to the backends. A policy that cannot be built is an error for this
    // route alone; the route then answers 502 (never plain HTTP instead).
    let backend_tls = match r.scheme {
        wharf_table::Scheme::Https => match tls.policy(r) {
            Ok(p) => Some(p),
            Err((key, message)) => {
                report.problems.push(Problem {
                    source: if source == "docker" { "docker" } else { "file" },
                    service: Some(format!("route {}", r.name)),
                    label: Some(key),
                    message,
                    error: true,
                });
                None
            }
        },
        _ => None,
    };
    let backends = match &r.upstream {
        Upstream::Static(addrs) => addrs
            .iter()
            .map(|addr| BackendDef {
                addr: *addr,
                scheme: r.scheme,
                draining: false,
                identity: None,
            })
            .collect(),
        Upstream::Dns { name, port } => {
            report.dns_names.insert(name.clone());
            let mut v: Vec<BackendDef> = dns
                .get(name)
                .into_iter()
                .flatten()
                .map(|ip| BackendDef {
                    addr: SocketAddr::new(*ip, *port),
                    scheme: r.scheme,
                    draining: false,
                    identity: None,
                })
                .collect();
            v.sort_by_key(|b| b.addr);
            v
        }
        Upstream::Provided => Vec::new(),
    };
    let hsts = r
        .hsts
        .header_value()
        .and_then(|v| HeaderValue::from_str(&v).ok());
    RouteDef {
        name: r.name.as_str().into(),
        source: source.into(),
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
                StickyType::None => None,
                StickyType::Cookie => Some(Arc::new(StickyPolicy::Cookie(CookieSticky {
                    name: r.sticky.cookie.as_str().into(),
                    prefix: r.sticky.mode == StickyMode::Prefix,
                    // Prefix mode: the application's cookie keeps its own lifetime.
                    max_age: r
                        .sticky
                        .ttl
                        .filter(|_| r.sticky.mode != StickyMode::Prefix)
                        .map(|d| d.as_secs().max(1)),
                }))),
                StickyType::Source => Some(Arc::new(StickyPolicy::Source {
                    ttl: r.sticky.source_ttl(),
                })),
            },
            ratelimit: r.ratelimit.as_ref().map(|rl| {
                Arc::new(RateLimit::new(
                    rl.per_second,
                    rl.burst,
                    match &rl.key {
                        wharf_config::route::RateKey::Source => RateKey::Source,
                        wharf_config::route::RateKey::Route => RateKey::Route,
                        wharf_config::route::RateKey::Header(h)
                            if h.eq_ignore_ascii_case("host") =>
                        {
                            RateKey::Host
                        }
                        wharf_config::route::RateKey::Header(h) => {
                            // The config layer accepts only valid header names.
                            match http::HeaderName::from_bytes(h.as_bytes()) {
                                Ok(name) => RateKey::Header(name),
                                Err(_) => RateKey::Source,
                            }
                        }
                    },
                    rl.scope == wharf_config::route::RateScope::Cluster,
                    &shown_rate(rl.per_second),
                ))
            }),
            healthcheck: r.healthcheck.as_ref().map(|hc| {
                Arc::new(HealthCheck {
                    path: hc.path.clone(),
                    method: hc.method.clone(),
                    // SPEC: the first host by default; a wildcard names no host,
                    // so the checker then sends the backend address.
                    host: hc
                        .host
                        .clone()
                        .or_else(|| r.hosts.iter().find(|h| !h.starts_with('*')).cloned())
                        .unwrap_or_default(),
                    interval: hc.interval,
                    timeout: hc.timeout,
                    rise: hc.rise,
                    fall: hc.fall,
                    expect: hc.expect.clone(),
                })
            }),
            maxconn: r.maxconn,
            backend_tls,
            ipallowlist: r.ipallowlist.clone().map(Arc::new),
            basicauth: r.basicauth.as_ref().map(|b| {
                Arc::new(wharf_table::BasicAuth::new(
                    b.users.clone(),
                    &b.realm,
                    b.remove_header,
                ))
            }),
            headers: r.headers.clone().map(Arc::new),
        },
    }
}

/// A rate as an operator writes it: per second when that is a whole number,
/// else per minute, else per hour.
fn shown_rate(per_second: f64) -> String {
    let whole = |x: f64| (x - x.round()).abs() < 1e-6 && x.round() >= 1.0;
    if whole(per_second) {
        format!("{}/s", per_second.round())
    } else if whole(per_second * 60.0) {
        format!("{}/m", (per_second * 60.0).round())
    } else {
        format!("{}/h", (per_second * 3600.0).round().max(1.0))
    }
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
            "[[routes]]\nhost = \"b\"\nupstream = \"static:127.0.0.1:1\"\nscheme = \"https\"\n",
        ));
        assert_eq!(r2.added, vec!["b/"]);
        assert_eq!(r2.removed, vec!["a/"]);
        assert_eq!(r2.not_enforced, Vec::<String>::new());
        assert!(c.table().load().find("b", "/", 0).is_some());
        assert!(c.table().load().find("a", "/", 0).is_none());
    }

    #[test]
    fn sticky_tokens_follow_the_secret_and_agree_across_controls() {
        let routes = "[[routes]]\nhost = \"a\"\nupstream = \"static:127.0.0.1:1,127.0.0.1:2\"\n\
                      sticky = \"cookie\"\nratelimit = \"6/m\"\n";
        let with = |secret: &str| config(&format!("[sticky]\nsecret = \"{secret}\"\n{routes}"));
        let tokens = |c: &Control| -> Vec<Option<wharf_table::Token>> {
            let t = c.table().load();
            t.routes()[0]
                .backends
                .all()
                .iter()
                .map(|b| b.token)
                .collect()
        };
        let (one, two) = (Control::new(), Control::new());
        one.apply(&with("s1"));
        two.apply(&with("s1"));
        let t1 = tokens(&one);
        assert!(t1.iter().all(Option::is_some));
        assert_ne!(t1[0], t1[1]);
        // Another replica (another process) with the same secret agrees.
        assert_eq!(t1, tokens(&two));
        // Same routes, new secret: compiled again, new tokens.
        one.apply(&with("s2"));
        assert_ne!(tokens(&one), t1);
        // No secret: a random key, unlike any configured one.
        let three = Control::new();
        three.apply(&config(routes));
        assert_ne!(tokens(&three), t1);
        let t = one.table().load();
        let rl = t.routes()[0].policy.ratelimit.clone().unwrap();
        assert_eq!(&*rl.shown, "6/m");
        assert_eq!(rl.interval_ns, 10_000_000_000);
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

    fn workload(name: &str, labels: &[(&str, &str)], ips: &[(&str, [u8; 4], bool)]) -> Workload {
        Workload {
            kind: wharf_docker::Kind::Service,
            id: format!("id-{name}"),
            name: name.into(),
            created: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            exposed_ports: vec![80],
            dnsrr: false,
            endpoints: ips
                .iter()
                .enumerate()
                .map(|(i, (net, ip, draining))| wharf_docker::Endpoint {
                    id: format!("{name}.{i}"),
                    addrs: [(net.to_string(), IpAddr::from(*ip))].into_iter().collect(),
                    draining: *draining,
                    identity: format!("{name}.{}", i + 1),
                })
                .collect(),
        }
    }

    fn apply_docker(c: &Control, cfg: &Config, ws: Vec<Workload>) -> ApplyReport {
        let snap = Snapshot { workloads: ws };
        c.apply_inputs(&Inputs {
            config: cfg,
            docker: Some(&snap),
            dns: &BTreeMap::new(),
        })
    }

    const ON: (&str, &str) = ("wharf.enable", "true");

    #[test]
    fn docker_workloads_become_routes_and_unchanged_snapshots_do_not_swap() {
        let c = Control::new();
        let cfg = config("[docker]\nnetwork = \"pub\"\n");
        let web = || {
            workload(
                "web",
                &[ON, ("wharf.host", "web.test")],
                &[("pub", [10, 0, 0, 2], false), ("pub", [10, 0, 0, 3], true)],
            )
        };
        let r = apply_docker(&c, &cfg, vec![web()]);
        assert!(r.swapped);
        assert_eq!(r.added, vec!["web@docker"]);
        let t = c.table().load();
        let route = t.find("web.test", "/", 0).unwrap();
        let health: Vec<&str> = route.backends.all().iter().map(|b| b.health()).collect();
        assert_eq!(health, vec!["up", "draining"]);
        assert_eq!(
            route
                .backends
                .pick(IpAddr::from([1, 1, 1, 1]))
                .unwrap()
                .addr,
            "10.0.0.2:80".parse().unwrap()
        );
        let again = apply_docker(&c, &cfg, vec![web()]);
        assert!(!again.swapped, "an unchanged snapshot must not swap");
        assert!(Arc::ptr_eq(&t, &c.table().load()));
    }

    #[test]
    fn bad_new_labels_keep_the_last_good_routes_and_other_services_unaffected() {
        let c = Control::new();
        let cfg = config("[docker]\nnetwork = \"pub\"\n");
        let good = workload(
            "a",
            &[ON, ("wharf.host", "a.test")],
            &[("pub", [10, 0, 0, 2], false)],
        );
        let other = workload(
            "b",
            &[ON, ("wharf.host", "b.test")],
            &[("pub", [10, 0, 0, 9], false)],
        );
        apply_docker(&c, &cfg, vec![good, other.clone()]);
        let bad = workload(
            "a",
            &[ON, ("wharf.host", "a.test"), ("wharf.prot", "80")],
            &[("pub", [10, 0, 0, 4], false)],
        );
        let r = apply_docker(&c, &cfg, vec![bad, other]);
        assert!(r.problems.iter().any(|p| p.error
            && p.label
                .as_deref()
                .is_some_and(|l| l.starts_with("wharf.prot"))));
        assert!(r.problems.iter().any(|p| p.message.contains("last good")));
        let t = c.table().load();
        // The last good routes, with the current task addresses.
        let a = t.find("a.test", "/", 0).unwrap();
        assert_eq!(a.backends.all()[0].addr, "10.0.0.4:80".parse().unwrap());
        assert!(t.find("b.test", "/", 0).is_some());
        // A service that never had good labels has no route.
        let never = workload("n", &[ON, ("wharf.hots", "n.test")], &[]);
        let r = apply_docker(&c, &cfg, vec![never]);
        assert_eq!(r.errors("docker"), 1, "{:?}", r.problems);
        assert!(c.table().load().is_empty());
    }

    #[test]
    fn an_access_control_label_that_cannot_be_applied_withdraws_the_last_good_routes() {
        // Security review H1 by way of an update: a router that served without
        // auth gains a middleware Wharf cannot enforce, or a malformed allow-list.
        // Keeping the old, unprotected routes would fail open.
        let c = Control::new();
        let cfg = config("[docker]\nnetwork = \"pub\"\nexposed_by_default = true\n");
        let at = |labels: &[(&str, &str)]| workload("a", labels, &[("pub", [10, 0, 0, 2], false)]);
        let open = [("traefik.http.routers.r.rule", "Host(`a.test`)")];
        apply_docker(&c, &cfg, vec![at(&open)]);
        assert!(c.table().load().find("a.test", "/", 0).is_some());
        let forward = [
            ("traefik.http.routers.r.rule", "Host(`a.test`)"),
            ("traefik.http.routers.r.middlewares", "fa"),
            (
                "traefik.http.middlewares.fa.forwardauth.address",
                "http://auth",
            ),
        ];
        let r = apply_docker(&c, &cfg, vec![at(&forward)]);
        assert!(
            r.problems.iter().any(|p| p.message.contains("withdrawn")),
            "{:?}",
            r.problems
        );
        assert!(c.table().load().find("a.test", "/", 0).is_none());
        // The same with a wharf.* allow-list that does not parse.
        apply_docker(&c, &cfg, vec![at(&[ON, ("wharf.host", "a.test")])]);
        assert!(c.table().load().find("a.test", "/", 0).is_some());
        apply_docker(
            &c,
            &cfg,
            vec![at(&[
                ON,
                ("wharf.host", "a.test"),
                ("wharf.ipallowlist", "10.0.0.0/33"),
            ])],
        );
        assert!(c.table().load().find("a.test", "/", 0).is_none());
    }

    #[test]
    fn network_choice_and_host_conflicts_name_both_claimants() {
        let c = Control::new();
        let cfg = config("[docker]\nnetwork = \"pub\"\n");
        let first = workload(
            "first",
            &[ON, ("wharf.host", "x.test")],
            &[("pub", [10, 0, 0, 2], false)],
        );
        // Attached to one other network only: used as Traefik would.
        let only = workload(
            "only",
            &[ON, ("wharf.host", "o.test")],
            &[("private", [10, 1, 0, 2], false)],
        );
        // Attached elsewhere while a network is named: an error.
        let named = workload(
            "named",
            &[ON, ("wharf.host", "n.test"), ("wharf.network", "pub")],
            &[("private", [10, 1, 0, 3], false)],
        );
        let second = workload(
            "second",
            &[ON, ("wharf.host", "x.test")],
            &[("pub", [10, 0, 0, 3], false)],
        );
        let r = apply_docker(&c, &cfg, vec![first, only, named, second]);
        let t = c.table().load();
        assert_eq!(&*t.find("x.test", "/", 0).unwrap().name, "first@docker");
        assert_eq!(
            t.find("o.test", "/", 0).unwrap().backends.all()[0].addr,
            "10.1.0.2:80".parse().unwrap()
        );
        // Another owner: refused, naming the owner that keeps the host.
        let conflict = r
            .problems
            .iter()
            .find(|p| p.message.contains("claimed it first"))
            .unwrap();
        assert!(
            conflict.message.contains("service:first")
                && conflict.message.contains("second@docker")
        );
        assert!(r
            .problems
            .iter()
            .any(|p| p.message.contains("not attached to network `pub`")));
    }

    #[test]
    fn dnsrr_services_and_dns_upstreams_use_dns_answers() {
        let c = Control::new();
        let cfg = config(
            "[docker]\nnetwork = \"pub\"\n[[routes]]\nhost = \"legacy.test\"\nupstream = \"dns:legacy:8080\"\n",
        );
        let mut w = workload(
            "rr",
            &[ON, ("wharf.host", "rr.test")],
            &[("pub", [10, 0, 0, 7], false)],
        );
        w.dnsrr = true;
        let snap = Snapshot { workloads: vec![w] };
        let mut dns = BTreeMap::new();
        let r = c.apply_inputs(&Inputs {
            config: &cfg,
            docker: Some(&snap),
            dns: &dns,
        });
        assert_eq!(
            r.dns_names.iter().map(String::as_str).collect::<Vec<_>>(),
            vec!["legacy", "tasks.rr"]
        );
        dns.insert("tasks.rr".to_string(), vec![IpAddr::from([10, 0, 0, 7])]);
        dns.insert("legacy".to_string(), vec![IpAddr::from([192, 0, 2, 1])]);
        let r = c.apply_inputs(&Inputs {
            config: &cfg,
            docker: Some(&snap),
            dns: &dns,
        });
        assert_eq!(r.changed.len(), 2, "{r:?}");
        let t = c.table().load();
        assert_eq!(
            t.find("rr.test", "/", 0).unwrap().backends.all()[0].addr,
            "10.0.0.7:80".parse().unwrap()
        );
        assert_eq!(
            t.find("legacy.test", "/", 0).unwrap().backends.all()[0].addr,
            "192.0.2.1:8080".parse().unwrap()
        );
    }

    fn owned(name: &str, created: &str, labels: &[(&str, &str)], ip: [u8; 4]) -> Workload {
        let mut w = workload(name, labels, &[("pub", ip, false)]);
        w.created = created.into();
        w
    }

    fn refusals(r: &ApplyReport) -> Vec<&Problem> {
        r.problems.iter().filter(|p| p.error).collect()
    }

    #[test]
    fn another_owner_cannot_take_a_path_under_a_host_unless_allowed() {
        let c = Control::new();
        let cfg = config("[docker]\nnetwork = \"pub\"\n");
        let shop = owned(
            "shop",
            "1",
            &[ON, ("wharf.host", "shop.test")],
            [10, 0, 0, 2],
        );
        let evil = owned(
            "evil",
            "2",
            &[ON, ("wharf.host", "shop.test"), ("wharf.path", "/login")],
            [10, 0, 0, 3],
        );
        let r = apply_docker(&c, &cfg, vec![shop.clone(), evil.clone()]);
        let e = refusals(&r);
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].service.as_deref(), Some("service evil"));
        assert_eq!(e[0].label.as_deref(), Some("wharf.host=shop.test"));
        assert!(
            e[0].message.contains("belongs to `service:shop`"),
            "{}",
            e[0].message
        );
        let t = c.table().load();
        assert_eq!(
            &*t.find("shop.test", "/login", 0).unwrap().name,
            "shop@docker"
        );
        assert_eq!(t.len(), 1, "the refused route is gone");

        // The owner lets it in: a longer path is fine, the owner's own path is not.
        let mut shop2 = shop.clone();
        shop2
            .labels
            .insert("wharf.allow-paths-from".into(), "service:evil".into());
        let mut evil_root = evil.clone();
        evil_root.labels.remove("wharf.path");
        let r = apply_docker(&c, &cfg, vec![shop2.clone(), evil.clone()]);
        assert!(refusals(&r).is_empty(), "{:?}", r.problems);
        let t = c.table().load();
        assert_eq!(
            &*t.find("shop.test", "/login", 0).unwrap().name,
            "evil@docker"
        );
        assert_eq!(&*t.find("shop.test", "/", 0).unwrap().name, "shop@docker");
        let r = apply_docker(&c, &cfg, vec![shop2, evil_root]);
        assert_eq!(refusals(&r).len(), 1, "{:?}", r.problems);
        assert_eq!(
            &*c.table().load().find("shop.test", "/", 0).unwrap().name,
            "shop@docker"
        );
    }

    #[test]
    fn services_of_one_stack_share_hosts_and_file_routes_always_win() {
        let c = Control::new();
        let cfg = config(
            "[docker]\nnetwork = \"pub\"\n[[routes]]\nname = \"ops\"\nhost = \"shop.test\"\n\
             path = \"/ops\"\nupstream = \"static:127.0.0.1:1\"\n",
        );
        let stack = ("com.docker.stack.namespace", "shop");
        let web = owned(
            "shop_web",
            "1",
            &[ON, stack, ("wharf.host", "shop.test")],
            [10, 0, 0, 2],
        );
        let api = owned(
            "shop_api",
            "2",
            &[
                ON,
                stack,
                ("wharf.host", "shop.test"),
                ("wharf.path", "/api"),
            ],
            [10, 0, 0, 3],
        );
        let ops = owned(
            "shop_ops",
            "3",
            &[
                ON,
                stack,
                ("wharf.host", "shop.test"),
                ("wharf.path", "/ops"),
            ],
            [10, 0, 0, 4],
        );
        // A longer path under the file's `/ops` would take its requests (and
        // skip its auth): refused as well.
        let deeper = owned(
            "shop_deeper",
            "4",
            &[
                ON,
                stack,
                ("wharf.host", "shop.test"),
                ("wharf.path", "/ops/admin"),
            ],
            [10, 0, 0, 5],
        );
        let r = apply_docker(&c, &cfg, vec![web, api, ops, deeper]);
        let e = refusals(&r);
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(
            e[0].message.contains("config file's route `ops`"),
            "{}",
            e[0].message
        );
        let t = c.table().load();
        assert_eq!(
            &*t.find("shop.test", "/api/x", 0).unwrap().name,
            "shop_api@docker"
        );
        assert_eq!(&*t.find("shop.test", "/ops", 0).unwrap().name, "ops");
        assert_eq!(&*t.find("shop.test", "/ops/admin", 0).unwrap().name, "ops");
        assert_eq!(
            &*t.find("shop.test", "/", 0).unwrap().name,
            "shop_web@docker"
        );
    }

    #[test]
    fn wildcards_and_hosts_outside_allowed_domains_are_refused() {
        let c = Control::new();
        let cfg = config("[docker]\nnetwork = \"pub\"\nallowed_domains = [\"example.org\", \"*.apps.example.org\"]\n");
        let ws = vec![
            owned("star", "1", &[ON, ("wharf.host", "*")], [10, 0, 0, 2]),
            owned(
                "wild",
                "2",
                &[ON, ("wharf.host", "*.apps.example.org")],
                [10, 0, 0, 3],
            ),
            owned(
                "ok",
                "3",
                &[ON, ("wharf.host", "a.apps.example.org,example.org")],
                [10, 0, 0, 4],
            ),
            owned(
                "out",
                "4",
                &[ON, ("wharf.host", "bank.test,b.apps.example.org")],
                [10, 0, 0, 5],
            ),
            // A Traefik v2 rule with no Host() is `*`.
            owned(
                "tr",
                "5",
                &[
                    ("traefik.enable", "true"),
                    ("traefik.http.routers.r.rule", "PathPrefix(`/x`)"),
                ],
                [10, 0, 0, 6],
            ),
        ];
        let r = apply_docker(&c, &cfg, ws.clone());
        let e = refusals(&r);
        let who: Vec<&str> = e.iter().filter_map(|p| p.service.as_deref()).collect();
        assert_eq!(
            who,
            ["service star", "service wild", "service out", "service tr"],
            "{e:?}"
        );
        assert!(e[0].message.contains("allow_wildcards"));
        assert!(e[2].message.contains("allowed_domains"));
        assert!(e[3]
            .label
            .as_deref()
            .unwrap()
            .starts_with("traefik.http.routers.r.rule"));
        let t = c.table().load();
        assert!(t.find("other.test", "/", 0).is_none());
        assert!(t.find("bank.test", "/", 0).is_none());
        assert_eq!(
            &*t.find("b.apps.example.org", "/", 0).unwrap().name,
            "out@docker"
        );
        assert_eq!(&*t.find("example.org", "/", 0).unwrap().name, "ok@docker");

        let open = config("[docker]\nnetwork = \"pub\"\nallow_wildcards = true\n");
        let r = apply_docker(&c, &open, ws);
        // Allowed now, `*` is a host like any other: `star` claimed it first.
        let e = refusals(&r);
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].message.contains("belongs to `service:star`"));
        assert_eq!(
            &*c.table().load().find("other.test", "/", 0).unwrap().name,
            "star@docker"
        );
    }

    #[test]
    fn the_remembered_owner_wins_over_an_older_squatter_after_a_restart() {
        let cfg = config("[docker]\nnetwork = \"pub\"\n");
        let shop = |created: &str| {
            owned(
                "shop",
                created,
                &[ON, ("wharf.host", "shop.test")],
                [10, 0, 0, 2],
            )
        };
        let evil = owned(
            "evil",
            "1",
            &[ON, ("wharf.host", "shop.test")],
            [10, 0, 0, 9],
        );
        let first = Control::new();
        apply_docker(&first, &cfg, vec![shop("5")]);
        let record = first.claims().to_json();
        assert!(record.contains("service:shop"), "{record}");

        // Restart: the squatter is older than the redeployed owner.
        let second = Control::new();
        second.load_claims(Claims::from_json(&record).unwrap());
        let r = apply_docker(&second, &cfg, vec![evil.clone(), shop("9")]);
        assert_eq!(refusals(&r).len(), 1, "{:?}", r.problems);
        assert_eq!(
            &*second
                .table()
                .load()
                .find("shop.test", "/", 0)
                .unwrap()
                .name,
            "shop@docker"
        );
        // While the owner is away the host stays reserved.
        let r = apply_docker(&second, &cfg, vec![evil.clone()]);
        assert!(refusals(&r)[0].message.contains("gone"), "{:?}", r.problems);
        assert!(second.table().load().is_empty());
        assert!(second.claims().hosts["shop.test"].gone_since.is_some());
        // Without the record, creation time decides: the squatter would win.
        let fresh = Control::new();
        apply_docker(&fresh, &cfg, vec![evil, shop("9")]);
        assert_eq!(
            &*fresh.table().load().find("shop.test", "/", 0).unwrap().name,
            "evil@docker"
        );
    }

    #[test]
    fn traefik_backend_groups_merge_their_servers() {
        let c = Control::new();
        let cfg = config("[docker]\nnetwork = \"pub\"\n");
        let v1 = |name: &str, ip: [u8; 4]| {
            let mut w = owned(
                name,
                name,
                &[
                    ("traefik.enable", "true"),
                    ("traefik.frontend.rule", "Host:legacy.test"),
                    ("traefik.backend", "legacy"),
                    ("traefik.port", "80"),
                ],
                ip,
            );
            w.kind = wharf_docker::Kind::Container;
            w
        };
        let r = apply_docker(
            &c,
            &cfg,
            vec![v1("a", [10, 0, 0, 2]), v1("b", [10, 0, 0, 3])],
        );
        assert!(refusals(&r).is_empty(), "{:?}", r.problems);
        let t = c.table().load();
        assert_eq!(t.len(), 1);
        let addrs: Vec<String> = t.routes()[0]
            .backends
            .all()
            .iter()
            .map(|b| b.addr.to_string())
            .collect();
        assert_eq!(addrs, ["10.0.0.2:80", "10.0.0.3:80"]);
    }
}
