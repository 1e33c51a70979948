//! The admin listener: `/ping`, `/metrics`, `/api/routes`, `/api/certificates`,
//! `/api/errors` and a
//! read-only dashboard at `/`. It reads the same published table as the proxy and
//! never changes anything.

mod certs;
mod server;
pub use certs::CertCollector;
pub use server::{serve, AdminSettings};

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
#[cfg(test)]
use prometheus::{Encoder, TextEncoder};
use serde::Serialize;
use tracing::warn;
use wharf_table::Table;

/// A current configuration problem (SPEC `/api/errors`).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ConfigProblem {
    /// Which provider reported it (`file`, `docker`, ...).
    pub source: String,
    /// The service or route it concerns, if any.
    pub service: Option<String>,
    /// The key or label it concerns, if any.
    pub label: Option<String>,
    pub message: String,
}

/// What the admin listener reads.
#[derive(Clone)]
pub struct AdminState {
    pub table: Arc<ArcSwap<Table>>,
    pub problems: Arc<ArcSwap<Vec<ConfigProblem>>>,
    pub registry: prometheus::Registry,
    pub certificates: Arc<wharf_tls::CertStore>,
    /// Set once the entrypoints are bound and the first table is published:
    /// `/ping` answers 503 until then.
    pub ready: Arc<AtomicBool>,
    /// Who may ask, and how connections are bounded (`[admin]`).
    pub settings: Arc<AdminSettings>,
}

#[derive(Serialize)]
struct CertView {
    names: Vec<String>,
    issuer: String,
    /// RFC 3339, UTC.
    not_after: String,
    not_after_unix: i64,
    /// valid | expired | pending | renewing | failed
    state: &'static str,
    /// Why, when `failed`.
    reason: Option<String>,
    /// file | acme | self_signed | default
    source: &'static str,
    /// The certificate file, for `file`.
    file: Option<String>,
}

fn certificates_json(store: &wharf_tls::CertStore) -> Vec<u8> {
    let list: Vec<CertView> = store
        .certificates()
        .into_iter()
        .map(|c| CertView {
            not_after: rfc3339(c.not_after),
            not_after_unix: c.not_after,
            state: c.state.as_str(),
            reason: match &c.state {
                wharf_tls::CertState::Failed(r) => Some(r.clone()),
                _ => None,
            },
            source: c.source.as_str(),
            file: match &c.source {
                wharf_tls::CertSource::File { cert, .. } => Some(cert.display().to_string()),
                _ => None,
            },
            names: c.names,
            issuer: c.issuer,
        })
        .collect();
    serde_json::to_vec_pretty(&list).unwrap_or_default()
}

/// Unix seconds as `YYYY-MM-DDTHH:MM:SSZ` (proleptic Gregorian, UTC), using the
/// days-to-civil conversion from Howard Hinnant's "chrono-compatible low-level
/// date algorithms".
fn rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[derive(Serialize)]
struct RouteView<'a> {
    name: &'a str,
    source: &'a str,
    hosts: &'a [String],
    path: &'a str,
    balance: &'static str,
    /// `none`, `cookie` or `source`: what is enforced.
    sticky: &'static str,
    /// The cookie (name, `insert` or `prefix`, `max_age`) or the source binding
    /// ttl and count; `null` without stickiness.
    affinity: Option<AffinityView<'a>>,
    /// The rate limit, or `null`.
    ratelimit: Option<RateView<'a>>,
    /// TLS to the backends (`scheme = "https"`): the server name sent and
    /// verified, and whether verification is off; `null` otherwise.
    backend_tls: Option<BackendTlsView>,
    tls: &'static str,
    /// The active check, or `null` (passive observation only).
    healthcheck: Option<CheckView<'a>>,
    /// Requests in flight per backend at most, or `null` (unlimited).
    maxconn: Option<u32>,
    /// Requests waiting for a `maxconn` slot (the route's queue).
    queue: usize,
    /// The client address ranges allowed, or `null` (everyone).
    ipallowlist: Option<AllowView>,
    /// Basic authentication: user names only, never hashes; `null` when off.
    basicauth: Option<AuthView<'a>>,
    /// Header rules: `[name, value]` set, `[name, null]` removed; values of
    /// credential fields shown as `<redacted>`.
    headers: Option<HeadersView<'a>>,
    backends: Vec<BackendView>,
}

#[derive(Serialize)]
struct AllowView {
    ranges: Vec<String>,
    depth: u32,
}

#[derive(Serialize)]
struct AuthView<'a> {
    users: Vec<&'a str>,
    realm: &'a str,
    remove_header: bool,
}

#[derive(Serialize)]
struct HeadersView<'a> {
    request: Vec<(&'a str, Option<&'a str>)>,
    response: Vec<(&'a str, Option<&'a str>)>,
}

/// Header rules for the API, credential values redacted.
fn header_view(
    rules: &[(http::HeaderName, Option<http::HeaderValue>)],
) -> Vec<(&str, Option<&str>)> {
    rules
        .iter()
        .map(|(n, v)| {
            let name = n.as_str();
            let secret = wharf_table::middleware::is_secret_header(name);
            let value = v.as_ref().map(|v| {
                if secret {
                    wharf_table::middleware::REDACTED
                } else {
                    v.to_str().unwrap_or("<binary>")
                }
            });
            (name, value)
        })
        .collect()
}

#[derive(Serialize)]
struct AffinityView<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    cookie: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mode: Option<&'static str>,
    /// Cookie `Max-Age` (absent: a session cookie).
    #[serde(skip_serializing_if = "Option::is_none")]
    max_age_s: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ttl_s: Option<u64>,
    /// Source bindings held now.
    #[serde(skip_serializing_if = "Option::is_none")]
    bindings: Option<usize>,
}

#[derive(Serialize)]
struct BackendTlsView {
    server_name: String,
    /// `insecure = true`: the backend's certificate is not verified.
    insecure: bool,
}

#[derive(Serialize)]
struct RateView<'a> {
    rate: &'a str,
    burst: u32,
    /// `source`, `route`, `host` or `header:NAME`.
    key: String,
    /// `replica` or `cluster`.
    scope: &'static str,
    /// Replicas a `cluster` limit is divided among now (1 for `replica`).
    replicas: u32,
    /// Keys tracked now.
    keys: usize,
    /// Requests refused so far.
    limited: u64,
}

#[derive(Serialize)]
struct CheckView<'a> {
    method: &'a str,
    path: &'a str,
    interval_ms: u128,
    timeout_ms: u128,
    rise: u32,
    fall: u32,
}

#[derive(Serialize)]
struct BackendView {
    address: String,
    scheme: &'static str,
    /// up | down | draining
    health: &'static str,
    /// Why it is down (a failed check streak or passive ejection); `null` otherwise.
    reason: Option<String>,
    inflight: u32,
    /// The route's queue: a queued request takes whichever backend frees first.
    queue: usize,
    last_check: Option<LastCheckView>,
}

#[derive(Serialize)]
struct LastCheckView {
    /// When the check started, RFC 3339, UTC, whole seconds.
    time: String,
    /// The response status, `null` when none was read (or a connect-only check).
    status: Option<u16>,
    /// Milliseconds, microsecond resolution (SPEC names it `latency`).
    latency: f64,
    /// Why it failed; `null` when it passed.
    error: Option<String>,
}

impl LastCheckView {
    fn new(c: wharf_table::LastCheck) -> Self {
        let secs = match c.at.duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
        };
        LastCheckView {
            time: rfc3339(secs),
            status: c.status,
            // Microsecond resolution: local checks take well under a millisecond.
            latency: c.latency.as_micros() as f64 / 1000.0,
            error: c.error,
        }
    }
}

fn routes_json(table: &Table) -> Vec<u8> {
    let routes: Vec<RouteView<'_>> = table
        .routes()
        .iter()
        .map(|r| {
            let queue = r.state.queued();
            RouteView {
                name: &r.name,
                source: &r.source,
                hosts: &r.hosts,
                path: &r.path,
                balance: r.balance().as_str(),
                sticky: r.policy.sticky.as_deref().map_or("none", |s| s.as_str()),
                affinity: r.policy.sticky.as_deref().map(|s| match s {
                    wharf_table::StickyPolicy::Cookie(c) => AffinityView {
                        cookie: Some(&c.name),
                        mode: Some(if c.prefix { "prefix" } else { "insert" }),
                        max_age_s: c.max_age,
                        ttl_s: None,
                        bindings: None,
                    },
                    wharf_table::StickyPolicy::Source { ttl } => AffinityView {
                        cookie: None,
                        mode: None,
                        max_age_s: None,
                        ttl_s: Some(ttl.as_secs()),
                        bindings: Some(r.state.bindings_len()),
                    },
                }),
                backend_tls: r.policy.backend_tls.as_deref().map(|t| BackendTlsView {
                    server_name: match &t.server_name {
                        rustls::pki_types::ServerName::DnsName(n) => n.as_ref().to_string(),
                        rustls::pki_types::ServerName::IpAddress(ip) => {
                            std::net::IpAddr::from(*ip).to_string()
                        }
                        other => format!("{other:?}"),
                    },
                    insecure: t.insecure,
                }),
                ratelimit: r.policy.ratelimit.as_deref().map(|rl| RateView {
                    rate: &rl.shown,
                    burst: rl.burst,
                    key: match &rl.key {
                        wharf_table::RateKey::Source => "source".into(),
                        wharf_table::RateKey::Route => "route".into(),
                        // As written (SPEC: source, route or header:NAME).
                        wharf_table::RateKey::Host => "header:host".into(),
                        wharf_table::RateKey::Header(h) => format!("header:{h}"),
                    },
                    scope: if rl.cluster { "cluster" } else { "replica" },
                    replicas: if rl.cluster {
                        wharf_table::ratelimit::cluster_replicas()
                    } else {
                        1
                    },
                    keys: r.state.rate.keys(),
                    limited: r.state.rate.limited.load(Ordering::Relaxed),
                }),
                tls: if r.policy.tls { "acme" } else { "none" },
                healthcheck: r.policy.healthcheck.as_deref().map(|hc| CheckView {
                    method: &hc.method,
                    path: &hc.path,
                    interval_ms: hc.interval.as_millis(),
                    timeout_ms: hc.timeout.as_millis(),
                    rise: hc.rise,
                    fall: hc.fall,
                }),
                maxconn: r.policy.maxconn.map(|m| m.limit),
                queue,
                ipallowlist: r.policy.ipallowlist.as_deref().map(|a| AllowView {
                    ranges: a.ranges.iter().map(ToString::to_string).collect(),
                    depth: a.depth,
                }),
                basicauth: r.policy.basicauth.as_deref().map(|b| AuthView {
                    users: b.users.iter().map(|(u, _)| u.as_str()).collect(),
                    realm: &b.realm,
                    remove_header: b.remove_header,
                }),
                headers: r.policy.headers.as_deref().map(|h| HeadersView {
                    request: header_view(&h.request),
                    response: header_view(&h.response),
                }),
                backends: r
                    .backends
                    .all()
                    .iter()
                    .map(|b| {
                        let info = b.state.health_snapshot();
                        let health = b.health();
                        BackendView {
                            address: b.addr.to_string(),
                            scheme: b.scheme.as_str(),
                            health,
                            reason: if health == "down" { info.reason } else { None },
                            inflight: b.state.inflight(),
                            queue,
                            last_check: info.last_check.map(LastCheckView::new),
                        }
                    })
                    .collect(),
            }
        })
        .collect();
    serde_json::to_vec_pretty(&routes).unwrap_or_default()
}

thread_local! {
    /// The table generation the scrape running on this thread reads, keyed by
    /// the handle it was loaded from (see [`gather`]).
    static PINNED: RefCell<Option<(usize, Arc<Table>)>> = const { RefCell::new(None) };
}

fn handle_key(handle: &Arc<ArcSwap<Table>>) -> usize {
    Arc::as_ptr(handle) as usize
}

/// Clears the pin when the scrape ends, even if a collector panics.
struct Unpin;

impl Drop for Unpin {
    fn drop(&mut self) {
        PINNED.with(|p| p.borrow_mut().take());
    }
}

/// The table a collector reads: the scrape's pinned generation when this
/// thread is inside [`gather`] for the same handle, else the current one.
fn scrape_table(handle: &Arc<ArcSwap<Table>>) -> Arc<Table> {
    let key = handle_key(handle);
    PINNED
        .with(|p| match &*p.borrow() {
            Some((k, t)) if *k == key => Some(t.clone()),
            _ => None,
        })
        .unwrap_or_else(|| handle.load_full())
}

/// Gathers `registry` as one consistent snapshot: the table is loaded once,
/// and every table-derived family (the backend, request and duration families
/// and `wharf_routes`) is built from that one generation, so a scrape that
/// races a swap never mixes two tables (the proxy stores a new table, then
/// sets `wharf_routes`; here the gauge is taken from the pinned table itself).
pub fn gather(
    registry: &prometheus::Registry,
    table: &Arc<ArcSwap<Table>>,
) -> Vec<prometheus::proto::MetricFamily> {
    let snapshot = table.load_full();
    let routes = snapshot.len() as f64;
    PINNED.with(|p| *p.borrow_mut() = Some((handle_key(table), snapshot)));
    let unpin = Unpin;
    let mut families = registry.gather();
    drop(unpin);
    for f in &mut families {
        if f.name() == ROUTES_GAUGE {
            for m in f.mut_metric().iter_mut() {
                let mut g = prometheus::proto::Gauge::default();
                g.set_value(routes);
                m.set_gauge(g);
            }
        }
    }
    families
}

/// The routes gauge the control plane registers (`wharf-control`).
const ROUTES_GAUGE: &str = "wharf_routes";

/// `wharf_backend_up{route,backend}`, `wharf_backend_inflight{route,backend}`,
/// `wharf_healthcheck_total{route,backend,result}`, `wharf_retries_total{route}`
/// and `wharf_ratelimited_total{route}`,
/// read from the published table at scrape time, so the request path pays nothing
/// for them. The counters live in the table's long-lived backend and route
/// state, so they survive swaps; they restart from 0 only when a backend or
/// route goes away and comes back.
pub struct BackendCollector {
    table: Arc<ArcSwap<Table>>,
    descs: Vec<prometheus::core::Desc>,
}

const BACKEND_LABELS: [&str; 2] = ["route", "backend"];
const CHECK_LABELS: [&str; 3] = ["route", "backend", "result"];
const ROUTE_LABELS: [&str; 1] = ["route"];
const UP: (&str, &str) = ("wharf_backend_up", "1 when the backend takes requests.");
const INFLIGHT: (&str, &str) = (
    "wharf_backend_inflight",
    "Requests in flight to the backend (until the response body ends).",
);
const CHECKS: (&str, &str) = (
    "wharf_healthcheck_total",
    "Active health checks of the backend, by result (success or failure).",
);
const RETRIES: (&str, &str) = (
    "wharf_retries_total",
    "Requests sent again to another backend after the first could not be reached.",
);
const RATELIMITED: (&str, &str) = (
    "wharf_ratelimited_total",
    "Requests refused with 429 by the route's rate limit.",
);

fn opts((name, help): (&str, &str), labels: &[&str]) -> prometheus::Opts {
    prometheus::Opts::new(name, help)
        .variable_labels(labels.iter().map(|s| s.to_string()).collect())
}

/// The families one scrape returns.
struct Families {
    up: prometheus::IntGaugeVec,
    inflight: prometheus::IntGaugeVec,
    checks: prometheus::IntCounterVec,
    retries: prometheus::IntCounterVec,
    limited: prometheus::IntCounterVec,
}

impl BackendCollector {
    pub fn new(table: Arc<ArcSwap<Table>>) -> prometheus::Result<Self> {
        use prometheus::core::Describer as _;
        Ok(BackendCollector {
            table,
            descs: vec![
                opts(UP, &BACKEND_LABELS).describe()?,
                opts(INFLIGHT, &BACKEND_LABELS).describe()?,
                opts(CHECKS, &CHECK_LABELS).describe()?,
                opts(RETRIES, &ROUTE_LABELS).describe()?,
                opts(RATELIMITED, &ROUTE_LABELS).describe()?,
            ],
        })
    }

    fn families(&self) -> prometheus::Result<Families> {
        let f = Families {
            up: prometheus::IntGaugeVec::new(opts(UP, &[]), &BACKEND_LABELS)?,
            inflight: prometheus::IntGaugeVec::new(opts(INFLIGHT, &[]), &BACKEND_LABELS)?,
            checks: prometheus::IntCounterVec::new(opts(CHECKS, &[]), &CHECK_LABELS)?,
            retries: prometheus::IntCounterVec::new(opts(RETRIES, &[]), &ROUTE_LABELS)?,
            limited: prometheus::IntCounterVec::new(opts(RATELIMITED, &[]), &ROUTE_LABELS)?,
        };
        let table = scrape_table(&self.table);
        for route in table.routes() {
            f.retries
                .with_label_values(&[&*route.name])
                .inc_by(route.state.retries.load(Ordering::Relaxed));
            if route.policy.ratelimit.is_some() {
                f.limited
                    .with_label_values(&[&*route.name])
                    .inc_by(route.state.rate.limited.load(Ordering::Relaxed));
            }
            let checked = route.policy.healthcheck.is_some();
            for b in route.backends.all() {
                let addr = b.addr.to_string();
                let labels = [&*route.name, addr.as_str()];
                f.up.with_label_values(&labels).set(i64::from(b.usable()));
                f.inflight
                    .with_label_values(&labels)
                    .set(i64::from(b.state.inflight()));
                if checked {
                    let (ok, failed) = b.state.check_counts();
                    f.checks
                        .with_label_values(&[&*route.name, addr.as_str(), "success"])
                        .inc_by(ok);
                    f.checks
                        .with_label_values(&[&*route.name, addr.as_str(), "failure"])
                        .inc_by(failed);
                }
            }
        }
        Ok(f)
    }
}

impl prometheus::core::Collector for BackendCollector {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        match self.families() {
            Ok(f) => {
                let mut out = f.up.collect();
                out.extend(f.inflight.collect());
                out.extend(f.checks.collect());
                out.extend(f.retries.collect());
                out.extend(f.limited.collect());
                out
            }
            Err(e) => {
                warn!(error = %e, "backend metrics unavailable");
                Vec::new()
            }
        }
    }
}

/// Reads one entrypoint's open connections: `(protocol, count)`.
pub type OpenCounts = Arc<dyn Fn() -> [(&'static str, i64); 3] + Send + Sync>;

/// `wharf_requests_total{route,code,method}`,
/// `wharf_request_duration_seconds{route}`,
/// `wharf_upstream_duration_seconds{route,backend}` and
/// `wharf_open_connections{entrypoint,protocol}`: built at scrape time from the
/// atomics the request path bumps in the table's route and backend state (see
/// `wharf_table::metrics`), so a route that goes away takes its series with it,
/// and recording takes no lock and hashes no label.
pub struct TrafficCollector {
    table: Arc<ArcSwap<Table>>,
    unrouted: Arc<wharf_table::metrics::RouteMetrics>,
    open: Vec<(String, OpenCounts)>,
    descs: Vec<prometheus::core::Desc>,
}

const REQUESTS: (&str, &str) = (
    "wharf_requests_total",
    "Requests answered, by route (\"\" when none matched), status code and method.",
);
const DURATION: (&str, &str) = (
    "wharf_request_duration_seconds",
    "Time from the request head to the response head leaving Wharf, by route.",
);
const UPSTREAM: (&str, &str) = (
    "wharf_upstream_duration_seconds",
    "Time from sending a request to the backend to its response head, by route and backend.",
);
const OPEN: (&str, &str) = (
    "wharf_open_connections",
    "Client connections open now, by entrypoint and protocol (http: plain HTTP/1.1 or h2c; \
     https: TLS HTTP/1.1; h2: TLS HTTP/2).",
);

fn histogram(
    labels: &[(&str, &str)],
    h: &wharf_table::metrics::Histogram,
) -> prometheus::proto::Metric {
    use prometheus::proto;
    let (cum, count, sum) = h.snapshot();
    let mut hist = proto::Histogram::default();
    hist.set_sample_count(count);
    hist.set_sample_sum(sum);
    let buckets = wharf_table::metrics::BUCKETS
        .iter()
        .zip(cum)
        .map(|(bound, c)| {
            let mut b = proto::Bucket::default();
            b.set_upper_bound(*bound);
            b.set_cumulative_count(c);
            b
        })
        .collect();
    hist.set_bucket(buckets);
    let mut m = proto::Metric::default();
    m.set_label(label_pairs(labels));
    m.set_histogram(hist);
    m
}

fn label_pairs(labels: &[(&str, &str)]) -> Vec<prometheus::proto::LabelPair> {
    labels
        .iter()
        .map(|(k, v)| {
            let mut l = prometheus::proto::LabelPair::default();
            l.set_name((*k).to_string());
            l.set_value((*v).to_string());
            l
        })
        .collect()
}

fn family(
    (name, help): (&str, &str),
    kind: prometheus::proto::MetricType,
    metrics: Vec<prometheus::proto::Metric>,
) -> prometheus::proto::MetricFamily {
    let mut f = prometheus::proto::MetricFamily::default();
    f.set_name(name.to_string());
    f.set_help(help.to_string());
    f.set_field_type(kind);
    f.set_metric(metrics);
    f
}

impl TrafficCollector {
    pub fn new(
        table: Arc<ArcSwap<Table>>,
        unrouted: Arc<wharf_table::metrics::RouteMetrics>,
        open: Vec<(String, OpenCounts)>,
    ) -> prometheus::Result<Self> {
        use prometheus::core::Describer as _;
        let desc = |(name, help): (&str, &str), labels: &[&str]| {
            prometheus::Opts::new(name, help)
                .variable_labels(labels.iter().map(|s| s.to_string()).collect())
                .describe()
        };
        Ok(TrafficCollector {
            table,
            unrouted,
            open,
            descs: vec![
                desc(REQUESTS, &["route", "code", "method"])?,
                desc(DURATION, &["route"])?,
                desc(UPSTREAM, &["route", "backend"])?,
                desc(OPEN, &["entrypoint", "protocol"])?,
            ],
        })
    }

    fn families(&self) -> Vec<prometheus::proto::MetricFamily> {
        use prometheus::proto::{self, MetricType};
        let table = scrape_table(&self.table);
        let mut requests = Vec::new();
        let mut durations = Vec::new();
        let mut upstream = Vec::new();
        let routes = table
            .routes()
            .iter()
            .map(|r| (&*r.name, &r.state.metrics))
            .chain(std::iter::once(("", &*self.unrouted)));
        for (name, m) in routes {
            for (status, method, n) in m.requests.snapshot() {
                let code = status.to_string();
                let method = wharf_table::metrics::METHODS[usize::from(method)];
                let mut c = proto::Counter::default();
                c.set_value(n as f64);
                let mut metric = proto::Metric::default();
                metric.set_label(label_pairs(&[
                    ("route", name),
                    ("code", &code),
                    ("method", method),
                ]));
                metric.set_counter(c);
                requests.push(metric);
            }
            durations.push(histogram(&[("route", name)], &m.duration));
        }
        for r in table.routes() {
            for b in r.backends.all() {
                let addr = b.addr.to_string();
                upstream.push(histogram(
                    &[("route", &r.name), ("backend", &addr)],
                    &b.state.upstream,
                ));
            }
        }
        let mut open = Vec::new();
        for (ep, read) in &self.open {
            for (protocol, n) in read() {
                let mut g = proto::Gauge::default();
                g.set_value(n as f64);
                let mut metric = proto::Metric::default();
                metric.set_label(label_pairs(&[("entrypoint", ep), ("protocol", protocol)]));
                metric.set_gauge(g);
                open.push(metric);
            }
        }
        vec![
            family(REQUESTS, MetricType::COUNTER, requests),
            family(DURATION, MetricType::HISTOGRAM, durations),
            family(UPSTREAM, MetricType::HISTOGRAM, upstream),
            family(OPEN, MetricType::GAUGE, open),
        ]
        .into_iter()
        .filter(|f| !f.get_metric().is_empty())
        .collect()
    }
}

impl prometheus::core::Collector for TrafficCollector {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.families()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};
    use wharf_table::{
        BackendDef, BackendRegistry, Balance, EntrypointMask, HealthCheck, LastCheck, MaxConn,
        Policy, RouteDef, Scheme,
    };

    fn def(name: &str, check: bool, maxconn: bool) -> RouteDef {
        RouteDef {
            name: name.into(),
            source: "file".into(),
            hosts: vec![format!("{name}.test")],
            path: "/".into(),
            entrypoints: EntrypointMask::ALL,
            balance: Balance::LeastConn,
            backends: ["10.0.0.1:80", "10.0.0.2:80"]
                .iter()
                .map(|a| BackendDef {
                    addr: a.parse().unwrap(),
                    scheme: Scheme::Http,
                    draining: false,
                    identity: None,
                })
                .collect(),
            policy: Policy {
                healthcheck: check.then(|| {
                    Arc::new(HealthCheck {
                        path: "/health".into(),
                        fall: 1,
                        ..HealthCheck::default()
                    })
                }),
                maxconn: maxconn.then_some(MaxConn {
                    limit: 5,
                    queue: 10,
                    timeout: Duration::from_secs(1),
                }),
                ..Policy::default()
            },
        }
    }

    fn table() -> Table {
        let reg = BackendRegistry::new();
        let t = Table::compile(
            vec![def("checked", true, true), def("plain", false, false)],
            &reg,
        )
        .0;
        let r = &t.routes()[0];
        let hc = r.policy.healthcheck.clone().unwrap();
        let b = &r.backends.all()[0].state;
        let ok = LastCheck {
            at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_798_761_599),
            status: Some(200),
            latency: Duration::from_micros(1500),
            error: None,
        };
        b.record_check(&hc, ok);
        let failed = LastCheck {
            at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_798_761_599),
            status: Some(503),
            latency: Duration::from_millis(3),
            error: Some("status 503".into()),
        };
        b.record_check(&hc, failed);
        r.state.count_retry();
        r.state.count_retry();
        t
    }

    #[test]
    fn routes_show_checks_queue_and_last_check() {
        let t = table();
        let _ticket = t.routes()[0].state.enter_queue(10).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&routes_json(&t)).unwrap();
        let r = &v[0];
        assert_eq!(
            r["healthcheck"],
            serde_json::json!({"method": "HEAD", "path": "/health", "interval_ms": 10000,
                "timeout_ms": 2000, "rise": 2, "fall": 1})
        );
        assert_eq!(r["maxconn"], 5);
        assert_eq!(r["queue"], 1);
        let b = &r["backends"][0];
        assert_eq!(b["health"], "down");
        assert_eq!(b["queue"], 1);
        assert_eq!(b["reason"], "1 consecutive checks failed, last: status 503");
        assert_eq!(
            b["last_check"],
            serde_json::json!({"time": "2026-12-31T23:59:59Z", "status": 503,
                "latency": 3.0, "error": "status 503"})
        );
        let other = &r["backends"][1];
        assert_eq!(other["health"], "up");
        assert_eq!(other["reason"], serde_json::Value::Null);
        assert_eq!(other["last_check"], serde_json::Value::Null);
        let plain = &v[1];
        assert_eq!(plain["healthcheck"], serde_json::Value::Null);
        assert_eq!(plain["maxconn"], serde_json::Value::Null);
        assert_eq!(plain["queue"], 0);
    }

    #[test]
    fn metrics_derive_checks_and_retries_at_scrape_time() {
        let shared = Arc::new(ArcSwap::from_pointee(table()));
        let registry = prometheus::Registry::new();
        registry
            .register(Box::new(BackendCollector::new(shared.clone()).unwrap()))
            .unwrap();
        let text = || {
            let mut buf = Vec::new();
            TextEncoder::new()
                .encode(&registry.gather(), &mut buf)
                .unwrap();
            String::from_utf8(buf).unwrap()
        };
        let m = text();
        for line in [
            "wharf_healthcheck_total{backend=\"10.0.0.1:80\",result=\"success\",route=\"checked\"} 1",
            "wharf_healthcheck_total{backend=\"10.0.0.1:80\",result=\"failure\",route=\"checked\"} 1",
            "wharf_healthcheck_total{backend=\"10.0.0.2:80\",result=\"success\",route=\"checked\"} 0",
            "wharf_retries_total{route=\"checked\"} 2",
            "wharf_retries_total{route=\"plain\"} 0",
            "wharf_backend_up{backend=\"10.0.0.1:80\",route=\"checked\"} 0",
            "# TYPE wharf_healthcheck_total counter",
            "# TYPE wharf_retries_total counter",
        ] {
            assert!(m.contains(line), "missing {line} in\n{m}");
        }
        assert!(
            !m.contains("wharf_healthcheck_total{backend=\"10.0.0.1:80\",result=\"success\",route=\"plain\""),
            "only checked routes have check counts:\n{m}"
        );
        // Without any route: no check family, and the scrape still works.
        shared.store(Arc::new(Table::default()));
        assert!(!text().contains("wharf_healthcheck_total"));
    }

    /// A route with one backend, `10.1.x.y:80` from `i`.
    fn one(name: &str, i: usize) -> RouteDef {
        RouteDef {
            name: name.into(),
            source: "file".into(),
            hosts: vec![format!("{name}.test")],
            path: "/".into(),
            entrypoints: EntrypointMask::ALL,
            balance: Balance::RoundRobin,
            backends: vec![BackendDef {
                addr: format!("10.1.{}.{}:80", i / 250, i % 250 + 1)
                    .parse()
                    .unwrap(),
                scheme: Scheme::Http,
                draining: false,
                identity: None,
            }],
            policy: Policy::default(),
        }
    }

    /// Records one request on every route, as the request path does.
    fn traffic(t: &Table) {
        for r in t.routes() {
            let get = wharf_table::metrics::method_index(&http::Method::GET);
            r.state.metrics.requests.count(200, get);
            r.state.metrics.duration.observe(Duration::from_millis(2));
            for b in r.backends.all() {
                b.state.upstream.observe(Duration::from_millis(1));
            }
        }
    }

    /// What the proxy registers: the two table collectors and the control
    /// plane's `wharf_routes` gauge.
    fn admin(shared: &Arc<ArcSwap<Table>>) -> (AdminState, prometheus::IntGauge) {
        let registry = prometheus::Registry::new();
        registry
            .register(Box::new(BackendCollector::new(shared.clone()).unwrap()))
            .unwrap();
        let unrouted = Arc::new(wharf_table::metrics::RouteMetrics::default());
        registry
            .register(Box::new(
                TrafficCollector::new(shared.clone(), unrouted, Vec::new()).unwrap(),
            ))
            .unwrap();
        let routes =
            prometheus::IntGauge::new("wharf_routes", "Routes in the current table.").unwrap();
        registry.register(Box::new(routes.clone())).unwrap();
        let state = AdminState {
            table: shared.clone(),
            problems: Arc::new(ArcSwap::from_pointee(Vec::new())),
            registry,
            certificates: Arc::new(wharf_tls::CertStore::new().unwrap()),
            ready: Arc::new(AtomicBool::new(true)),
            settings: Arc::new(AdminSettings::default()),
        };
        (state, routes)
    }

    /// The `/metrics` body, as the admin listener serves it.
    fn scrape(state: &AdminState) -> String {
        let r = server::render(state, server::Page::Metrics);
        assert_eq!(r.status(), http::StatusCode::OK);
        let body = r.into_body();
        let bytes = futures_body(body);
        String::from_utf8(bytes).unwrap()
    }

    fn futures_body(body: http_body_util::Full<bytes::Bytes>) -> Vec<u8> {
        use http_body_util::BodyExt as _;
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(body.collect()).unwrap().to_bytes().to_vec()
    }

    /// `family -> routes` of every sample carrying a `route` label, and the
    /// `wharf_routes` value.
    fn routes_by_family(
        text: &str,
    ) -> (
        std::collections::HashMap<String, std::collections::HashSet<String>>,
        Option<usize>,
    ) {
        let mut out: std::collections::HashMap<String, std::collections::HashSet<String>> =
            std::collections::HashMap::new();
        let mut count = None;
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            if let Some(v) = line.strip_prefix("wharf_routes ") {
                count = Some(v.trim().parse().unwrap());
                continue;
            }
            let Some((name, rest)) = line.split_once('{') else {
                continue;
            };
            let Some(start) = rest.find("route=\"") else {
                continue;
            };
            let value = &rest[start + 7..];
            let route = &value[..value.find('"').unwrap()];
            out.entry(name.to_string())
                .or_default()
                .insert(route.to_string());
        }
        (out, count)
    }

    #[test]
    fn a_scrape_during_a_10k_route_swap_reads_one_table() {
        use std::collections::HashSet;
        use std::sync::atomic::AtomicU64;
        let reg = BackendRegistry::new();
        let names = |prefix: &str, n: usize| -> Vec<String> {
            (0..n).map(|i| format!("{prefix}{i}")).collect()
        };
        // Two different tables, of different sizes so `wharf_routes` tells
        // them apart too.
        let (a_names, b_names) = (names("a", 10_000), names("b", 9_000));
        let compile = |names: &[String]| {
            let defs = names.iter().enumerate().map(|(i, n)| one(n, i)).collect();
            Arc::new(Table::compile(defs, &reg).0)
        };
        let (a, b) = (compile(&a_names), compile(&b_names));
        traffic(&a);
        traffic(&b);
        let a_set: HashSet<String> = a_names.into_iter().collect();
        let b_set: HashSet<String> = b_names.into_iter().collect();
        let shared = Arc::new(ArcSwap::new(a.clone()));
        let (state, gauge) = admin(&shared);
        gauge.set(a.len() as i64);

        let stop = Arc::new(AtomicBool::new(false));
        let swaps = Arc::new(AtomicU64::new(0));
        let swapper = {
            let (shared, stop, swaps) = (shared.clone(), stop.clone(), swaps.clone());
            std::thread::spawn(move || {
                let mut next = [b, a].into_iter().cycle();
                while !stop.load(Ordering::Relaxed) {
                    let t = next.next().unwrap();
                    // As the proxy does: store the table, then set the gauge.
                    shared.store(t.clone());
                    std::thread::yield_now();
                    gauge.set(t.len() as i64);
                    swaps.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_micros(200));
                }
            })
        };
        let families = [
            "wharf_requests_total",
            "wharf_request_duration_seconds_count",
            "wharf_request_duration_seconds_bucket",
            "wharf_upstream_duration_seconds_count",
            "wharf_backend_up",
            "wharf_backend_inflight",
            "wharf_retries_total",
        ];
        let mut raced = 0;
        for _ in 0..6 {
            let before = swaps.load(Ordering::Relaxed);
            let body = scrape(&state);
            if swaps.load(Ordering::Relaxed) != before {
                raced += 1;
            }
            let (mut by_family, count) = routes_by_family(&body);
            let count = count.expect("wharf_routes in the scrape");
            let expected = if count == a_set.len() { &a_set } else { &b_set };
            assert_eq!(count, expected.len(), "wharf_routes is neither table's");
            for family in families {
                let mut got = by_family.remove(family).unwrap_or_default();
                // Requests that matched no route have their own series.
                got.remove("");
                assert!(
                    got == *expected,
                    "{family}: {} routes, {} not in the table wharf_routes = {count} says",
                    got.len(),
                    got.difference(expected).count()
                );
            }
        }
        stop.store(true, Ordering::Relaxed);
        swapper.join().unwrap();
        assert!(raced > 0, "no scrape overlapped a swap");
    }

    #[test]
    fn a_removed_route_takes_its_request_series_with_it() {
        let reg = BackendRegistry::new();
        let both = Table::compile(vec![one("keep", 1), one("gone", 2)], &reg).0;
        traffic(&both);
        let shared = Arc::new(ArcSwap::from_pointee(both));
        let (state, _) = admin(&shared);
        let families = [
            "wharf_requests_total{",
            "wharf_request_duration_seconds_bucket{",
            "wharf_request_duration_seconds_count{",
            "wharf_request_duration_seconds_sum{",
            "wharf_upstream_duration_seconds_bucket{",
            "wharf_upstream_duration_seconds_count{",
            "wharf_upstream_duration_seconds_sum{",
        ];
        let has = |text: &str, family: &str, route: &str| {
            text.lines()
                .any(|l| l.starts_with(family) && l.contains(&format!("route=\"{route}\"")))
        };
        let before = scrape(&state);
        for f in families {
            assert!(has(&before, f, "gone"), "{f} for `gone` before:\n{before}");
            assert!(has(&before, f, "keep"), "{f} for `keep` before:\n{before}");
        }
        shared.store(Arc::new(Table::compile(vec![one("keep", 1)], &reg).0));
        let after = scrape(&state);
        for f in families {
            assert!(
                !has(&after, f, "gone"),
                "{f} for `gone` after removal:\n{after}"
            );
            assert!(has(&after, f, "keep"), "{f} for `keep` after:\n{after}");
        }
        assert!(
            after.contains("wharf_requests_total{route=\"keep\",code=\"200\",method=\"GET\"} 1"),
            "the kept route's count survives the swap:\n{after}"
        );
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_798_761_599), "2026-12-31T23:59:59Z");
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59Z");
    }
}
