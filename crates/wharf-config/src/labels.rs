//! Docker labels → routes, for one service at a time (SPEC "Labels" and "Traefik
//! labels"). Pure: the Docker provider hands in a service's name, labels and
//! exposed ports; this module hands back the routes it declares and every problem,
//! each naming the service, the label as written and its value.
//!
//! `wharf.*` keys go through the same [`route::parse_route`] as `[[routes]]` in the
//! file, so a label and a file key accept exactly the same values. `traefik.*`
//! labels are translated into the same route keys by [`crate::traefik`].
//!
//! Never panics on a label: any Error means the caller keeps the service's last
//! good routes (STYLE habit 5), and other services are never affected.

use std::collections::BTreeMap;
use std::fmt;

use crate::route::{self, group_alias, FileCheck, RouteSpec, ROUTE_KEYS};
use crate::{traefik, values};

/// The settings that change how labels are read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelOptions {
    /// `docker.exposed_by_default`: a service with no `wharf.enable` is exposed.
    pub exposed_by_default: bool,
    /// `docker.traefik_labels`: also read `traefik.*` labels.
    pub traefik_labels: bool,
    /// A Traefik routing rule (`traefik.frontend.rule`, `traefik.http.routers.*.rule`)
    /// enables its service without `traefik.enable`, as Traefik v1's default
    /// `exposedByDefault` did (SPEC, "Traefik labels"). True only while
    /// `docker.exposed_by_default` is not set: an operator who sets it to `false`
    /// gets Traefik v2's rule, `traefik.enable=true` or `wharf.enable=true` whatever
    /// the labels (security review M5).
    pub traefik_rules_enable: bool,
    /// The configured entrypoints as (name, tls), in configuration order. An
    /// entrypoint a label names must be one of them, or an alias of Traefik's
    /// usual names (see [`resolve_entrypoint`]). Empty: names are not checked
    /// (no configuration at hand).
    pub entrypoints: std::sync::Arc<[(String, bool)]>,
}

/// Traefik's usual entrypoint names, when no entrypoint has that name: v1's
/// `http` and v2's `web` mean the first plain entrypoint, `https` and
/// `websecure` the first TLS one (docs/labels.md, "Entrypoints").
pub fn resolve_entrypoint(name: &str, eps: &[(String, bool)]) -> Result<String, String> {
    if eps.iter().any(|(n, _)| n == name) {
        return Ok(name.to_string());
    }
    let tls = match name.to_ascii_lowercase().as_str() {
        "http" | "web" => Some(false),
        "https" | "websecure" => Some(true),
        _ => None,
    };
    if let Some((n, _)) = tls.and_then(|t| eps.iter().find(|(_, tls)| *tls == t)) {
        return Ok(n.clone());
    }
    let names: Vec<&str> = eps.iter().map(|(n, _)| n.as_str()).collect();
    let hint = values::suggest(name, names.iter().copied())
        .map(|s| format!("; did you mean `{s}`?"))
        .unwrap_or_default();
    Err(format!(
        "no entrypoint named `{name}` (configured: {}){hint}",
        names.join(", ")
    ))
}

impl Default for LabelOptions {
    /// The SPEC defaults: `exposed_by_default = false`, `traefik_labels = true`.
    fn default() -> Self {
        LabelOptions {
            exposed_by_default: false,
            traefik_labels: true,
            traefik_rules_enable: true,
            entrypoints: std::sync::Arc::from(Vec::new()),
        }
    }
}

/// One Docker service (swarm) or container, as the provider sees it.
#[derive(Debug, Clone, Copy)]
pub struct ServiceInput<'a> {
    /// The service (or container) name; routes are named after it.
    pub name: &'a str,
    /// `deploy.labels` of a swarm service, or a container's labels.
    pub labels: &'a BTreeMap<String, String>,
    /// The ports the image or service exposes (TCP), used when no port label is set.
    pub exposed_ports: &'a [u16],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The service's new labels are rejected; its last good routes stay.
    Error,
    /// Worth telling the owner; the routes are still used.
    Warning,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        })
    }
}

/// One problem with one label of one service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelProblem {
    pub service: String,
    /// The label key as written (or the key that is missing, e.g. `wharf.host`).
    pub label: String,
    /// The value as written; empty for a missing label.
    pub value: String,
    pub message: String,
    pub severity: Severity,
}

impl fmt::Display for LabelProblem {
    /// `service web: wharf.helthcheck.path="/": unknown label; did you mean ...`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "service {}: {}={:?}: {}",
            self.service, self.label, self.value, self.message
        )
    }
}

/// `wharf.allow-paths-from=<owner>,...`: other owners that may add paths under
/// this owner's hosts (without the `wharf.` prefix).
pub const OWNER_LABEL: &str = "allow-paths-from";

/// The whole label key of [`OWNER_LABEL`].
pub const ALLOW_PATHS_LABEL: &str = "wharf.allow-paths-from";

/// The owners a workload's `wharf.allow-paths-from` labels name (any case).
pub fn allow_paths_from<'a>(
    labels: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> Vec<String> {
    labels
        .into_iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case(ALLOW_PATHS_LABEL))
        .flat_map(|(_, v)| crate::values::list(v))
        .collect()
}

/// What one service's labels declare.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceRoutes {
    /// Whether the service is exposed at all. A service that is not yields no
    /// routes and no problems. A malformed `wharf.enable`/`traefik.enable` counts as
    /// enabled, with an Error, so that the caller keeps the last good routes.
    pub enabled: bool,
    /// The routes, each with `Upstream::Provided` and a port. Empty when
    /// [`has_errors`](Self::has_errors).
    pub routes: Vec<RouteSpec>,
    /// For each route (same index): the label, as written, that set its hosts and
    /// its value, to name when another service claims the same host and path.
    pub host_labels: Vec<(String, String)>,
    pub problems: Vec<LabelProblem>,
}

impl ServiceRoutes {
    /// True when any problem is an Error: the caller keeps the last good routes.
    pub fn has_errors(&self) -> bool {
        self.problems.iter().any(|p| p.severity == Severity::Error)
    }

    /// True when an Error is on an access-control label (an auth or allow-list
    /// key, a Traefik middleware reference or definition, v1 auth and
    /// whitelists): then the last good routes must not be kept either, since
    /// they lack the protection the new labels ask for (fail closed, security
    /// review H1). Decided by the label key, never by a message's wording.
    pub fn fails_closed(&self) -> bool {
        self.problems
            .iter()
            .any(|p| p.severity == Severity::Error && is_access_control_key(&p.label))
    }
}

/// Label keys that set access control: `wharf.basicauth.*`, `wharf.ipallowlist*`,
/// Traefik middleware references and definitions, v1 auth and whitelists.
fn is_access_control_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    [
        "basicauth",
        "ipallowlist",
        "ipwhitelist",
        "middlewares",
        "auth.",
        "whitelist",
    ]
    .iter()
    .any(|w| k.contains(w))
}

/// One label, its key lower-cased for matching (label keys are case-insensitive,
/// as in Traefik) and the key as written kept for messages.
#[derive(Debug, Clone)]
pub(crate) struct Label<'a> {
    pub key: String,
    pub written: &'a str,
    pub value: &'a str,
}

/// A route key (file spelling) headed for `parse_route`, with the label it came from.
#[derive(Debug, Clone)]
pub(crate) struct Pair {
    pub key: String,
    pub label: String,
    pub value: String,
    /// The label's value as written, shown in problems (a Traefik rule rather
    /// than the hosts taken from it).
    pub shown: String,
    /// For a `ratelimit.rate` pair: the exact rate in requests per second when
    /// `N/s|m|h` cannot state it (Traefik's `average` over an arbitrary
    /// `period`); `value` then holds a placeholder that parses. Kept on the pair,
    /// so that it goes wherever the rate goes: a `wharf.ratelimit` that replaces
    /// the pair replaces it too.
    pub per_second: Option<f64>,
}

impl Pair {
    pub fn new(key: &str, label: &str, value: impl Into<String>) -> Self {
        let value = value.into();
        Pair {
            key: key.to_string(),
            label: label.to_string(),
            shown: value.clone(),
            value,
            per_second: None,
        }
    }

    /// A key derived from a label whose whole value is shown in problems.
    pub fn from_label(key: &str, l: &Label, value: impl Into<String>) -> Self {
        Pair {
            key: key.to_string(),
            label: l.written.to_string(),
            value: value.into(),
            shown: l.value.to_string(),
            per_second: None,
        }
    }
}

/// A route before `parse_route`: its name and its keys.
#[derive(Debug, Clone)]
pub(crate) struct Draft {
    pub name: String,
    pub pairs: Vec<Pair>,
    /// Label prefix used to name a key that is missing (`wharf.`, `wharf.routes.api.`;
    /// `wharf.` for Traefik routes, which service-level wharf.* labels refine).
    pub prefix: String,
    /// The label that would set the backend port, named when it is required.
    pub port_label: String,
}

/// Collects problems for one service.
pub(crate) struct Problems<'a> {
    pub service: &'a str,
    pub list: Vec<LabelProblem>,
}

impl Problems<'_> {
    pub fn push(&mut self, severity: Severity, label: &str, value: &str, message: String) {
        // Secrets (basic-auth users, credential headers) are named, never shown:
        // problems reach the log, /api/errors and `wharf check`.
        let value = if values::is_secret_key(label) && !value.is_empty() {
            REDACTED
        } else {
            value
        };
        self.list.push(LabelProblem {
            service: self.service.to_string(),
            label: label.to_string(),
            value: value.to_string(),
            message,
            severity,
        });
    }
    pub fn error(&mut self, l: &Label, message: impl Into<String>) {
        self.push(Severity::Error, l.written, l.value, message.into());
    }
    pub fn warn(&mut self, l: &Label, message: impl Into<String>) {
        self.push(Severity::Warning, l.written, l.value, message.into());
    }
    fn has_errors(&self) -> bool {
        self.list.iter().any(|p| p.severity == Severity::Error)
    }
}

/// What a problem shows instead of the value of a secret-bearing label.
pub use wharf_table::middleware::REDACTED;

/// Route keys that are not labels: a labelled route is named after its service and
/// gets its backends from Docker.
const NOT_LABELS: &[&str] = &["name", "upstream"];

/// File key → label spelling: `https_redirect` → `https-redirect`.
fn label_spelling(file_key: &str) -> String {
    file_key.replace('_', "-")
}

/// Every `wharf.*` key a label may have after `wharf.` (or `wharf.routes.<n>.`),
/// in label spelling, for "did you mean".
fn label_candidates() -> Vec<String> {
    let mut v: Vec<String> = ROUTE_KEYS
        .iter()
        .filter(|k| !NOT_LABELS.contains(k) && **k != "hosts")
        .map(|k| label_spelling(k))
        .collect();
    v.extend(
        [
            "sticky",
            "hsts",
            "ratelimit",
            "maxconn",
            "ipallowlist",
            "basicauth",
            "headers.request.<name>",
            "headers.response.<name>",
            "routes.<name>.host",
        ]
        .map(String::from),
    );
    v
}

/// Reads one service's labels. See the module docs and docs/labels.md. Files the
/// labels name (`wharf.backend-tls.ca`, ...) must open here ([`FileCheck::Open`]):
/// this runs where Wharf runs.
pub fn service_routes(input: &ServiceInput, opts: &LabelOptions) -> ServiceRoutes {
    service_routes_with(input, opts, FileCheck::Open)
}

/// [`service_routes`], saying whether the files the labels name are opened
/// (`wharf check --compose` runs away from Wharf's container: [`FileCheck::Skip`]).
pub(crate) fn service_routes_with(
    input: &ServiceInput,
    opts: &LabelOptions,
    files: FileCheck,
) -> ServiceRoutes {
    let mut pr = Problems {
        service: input.name,
        list: Vec::new(),
    };
    // The exposed ports, each once: with exactly one, it is the backend port.
    let mut ports: Vec<u16> = Vec::new();
    for p in input.exposed_ports {
        if !ports.contains(p) {
            ports.push(*p);
        }
    }
    // Keys differing only in case are the same key: keep the first, report the rest
    // (once the service is known to be enabled).
    let mut seen: BTreeMap<String, &str> = BTreeMap::new();
    let mut dups = Vec::new();
    let mut oversize: Vec<(String, String)> = Vec::new();
    let mut wharf = Vec::new();
    let mut traefik_labels = Vec::new();
    for (k, v) in input.labels {
        let key = k.trim().to_ascii_lowercase();
        let is_wharf = key.starts_with("wharf.");
        let is_traefik = opts.traefik_labels && key.starts_with("traefik.");
        if !is_wharf && !is_traefik {
            continue;
        }
        // Caps before anything else looks at the label (review M7): a huge key or
        // value is refused whole, and shown cut short.
        if k.len() > values::MAX_LABEL_KEY || v.len() > values::MAX_LABEL_VALUE {
            let cut: String = k.chars().take(64).collect();
            let (what, len, max) = if k.len() > values::MAX_LABEL_KEY {
                ("key", k.len(), values::MAX_LABEL_KEY)
            } else {
                ("value", v.len(), values::MAX_LABEL_VALUE)
            };
            oversize.push((
                if cut.len() < k.len() {
                    format!("{cut}...")
                } else {
                    cut
                },
                format!(
                    "the label's {what} is {len} bytes, more than the {max} bytes Wharf accepts \
                     (docs/labels.md, \"Limits\"); the label is ignored and the service's new \
                     labels are refused"
                ),
            ));
            continue;
        }
        let l = Label {
            key: key.clone(),
            written: k.as_str(),
            value: v.as_str(),
        };
        if let Some(first) = seen.get(&key) {
            dups.push((l, format!("set twice (also as `{first}`)")));
            continue;
        }
        seen.insert(key, k.as_str());
        if is_wharf {
            wharf.push(l);
        } else {
            traefik_labels.push(l);
        }
    }

    let no_routes = |enabled, problems| ServiceRoutes {
        enabled,
        routes: Vec::new(),
        host_labels: Vec::new(),
        problems,
    };
    // A malformed enable label says neither yes nor no: report `enabled` with the
    // error, so that the caller keeps the last good routes rather than dropping them.
    let enabled = match wharf.iter().find(|l| l.key == "wharf.enable") {
        Some(l) => match values::boolean(l.value) {
            Ok(b) => b,
            Err(m) => {
                pr.error(l, m);
                return no_routes(true, pr.list);
            }
        },
        None => match traefik::enabled(&traefik_labels, &mut pr) {
            Some(Ok(b)) => b,
            Some(Err(())) => return no_routes(true, pr.list),
            None => {
                opts.exposed_by_default
                    || (opts.traefik_rules_enable && traefik::has_rule(&traefik_labels))
            }
        },
    };
    if !enabled {
        return no_routes(false, Vec::new());
    }
    for (l, m) in &dups {
        pr.error(l, m.clone());
    }
    for (label, m) in oversize {
        pr.push(Severity::Error, &label, "", m);
    }

    // wharf.* keys: service level and wharf.routes.<name>.<key>.
    let mut service_pairs: Vec<Pair> = Vec::new();
    let mut named: BTreeMap<String, (String, Vec<Pair>)> = BTreeMap::new();
    let mut any_wharf_key = false;
    for l in &wharf {
        let rest = &l.key["wharf.".len()..];
        // `allow-paths-from` is about the host's owner, not a route: the control
        // plane reads it (docs/discovery.md, "Host ownership").
        if rest == "enable" || rest == OWNER_LABEL {
            continue;
        }
        any_wharf_key = true;
        if let Some(r) = rest.strip_prefix("routes.") {
            match r.split_once('.') {
                Some((name, key)) if valid_route_name(name) && !key.is_empty() => {
                    let entry = named
                        .entry(name.to_string())
                        .or_insert_with(|| (format!("wharf.routes.{name}."), Vec::new()));
                    add_pair(&mut entry.1, key, l, true, &entry.0, &mut pr);
                }
                _ => pr.error(
                    l,
                    "write `wharf.routes.<name>.<key>`, where <name> is letters, digits, `-` \
                     or `_` (e.g. `wharf.routes.api.host`)",
                ),
            }
        } else if rest == "routes" {
            pr.error(
                l,
                "write `wharf.routes.<name>.<key>` (e.g. `wharf.routes.api.host`)",
            );
        } else {
            add_pair(&mut service_pairs, rest, l, false, "wharf.", &mut pr);
        }
    }
    // A route whose every key was refused is already reported; it is no route.
    named.retain(|_, (_, pairs)| !pairs.is_empty());
    let has_host = |pairs: &[Pair]| pairs.iter().any(|p| group_alias(&p.key) == "host");
    let wharf_routes = has_host(&service_pairs) || !named.is_empty();

    let mut drafts = Vec::new();
    if wharf_routes {
        // wharf.* wins: a service being moved from Traefik may carry both.
        if let Some(l) = traefik_labels.iter().find(|l| l.key != "traefik.enable") {
            let n = traefik_labels
                .iter()
                .filter(|l| l.key != "traefik.enable")
                .count();
            pr.warn(
                l,
                format!(
                    "this and the service's other traefik.* labels ({n} in all) are ignored: \
                     its wharf.* labels define its routes, and wharf.* wins"
                ),
            );
        }
        if has_host(&service_pairs) {
            drafts.push(Draft {
                name: input.name.to_string(),
                pairs: service_pairs.clone(),
                prefix: "wharf.".into(),
                port_label: "wharf.port".into(),
            });
        }
        for (name, (prefix, pairs)) in &named {
            drafts.push(Draft {
                name: format!("{}/{name}", input.name),
                pairs: overlay(&service_pairs, pairs),
                prefix: prefix.clone(),
                port_label: format!("{prefix}port"),
            });
        }
    } else if !traefik_labels.is_empty() {
        for mut d in traefik::translate(input.name, &traefik_labels, &ports, &mut pr) {
            // Service-level wharf.* keys refine Traefik-defined routes.
            d.pairs = overlay(&d.pairs, &service_pairs);
            drafts.push(d);
        }
    }

    if drafts.is_empty() && !pr.has_errors() {
        let non_http = |k: &str| {
            k.starts_with("traefik.tcp.") || k.starts_with("traefik.udp.") || k == "traefik.enable"
        };
        let traefik_http = traefik_labels.iter().any(|l| !non_http(&l.key));
        let traefik_other = traefik_labels
            .iter()
            .any(|l| l.key.starts_with("traefik.tcp.") || l.key.starts_with("traefik.udp."));
        let explicit = any_wharf_key || wharf.iter().any(|l| l.key == "wharf.enable");
        let (severity, message) = if explicit || traefik_http {
            (
                Severity::Error,
                "required: the host name(s) this service answers (or a Traefik rule, \
                 `traefik.http.routers.<name>.rule`)",
            )
        } else if traefik_other {
            // A TCP/UDP service routed by Traefik: not Wharf's business, not a mistake.
            (
                Severity::Warning,
                "only Traefik TCP/UDP routing, which Wharf does not serve (HTTP only): not routed",
            )
        } else if !traefik_labels.is_empty() {
            (
                Severity::Error,
                "required: traefik.enable=true alone routes nothing in Wharf (Traefik's \
                 defaultRule is not supported); set wharf.host or a Traefik rule",
            )
        } else {
            (
                Severity::Warning,
                "exposed by default (docker.exposed_by_default) but has no wharf.host: not routed",
            )
        };
        pr.push(severity, "wharf.host", "", message.into());
    }

    let mut routes: Vec<(RouteSpec, (String, String))> = Vec::new();
    let mut port_reported = false;
    for mut d in drafts {
        // Entrypoint names: configured ones, or Traefik's usual aliases.
        if !opts.entrypoints.is_empty() {
            let mut bad = false;
            for p in d.pairs.iter_mut().filter(|p| p.key == "entrypoints") {
                let mut names = Vec::new();
                for e in values::list(&p.value) {
                    match resolve_entrypoint(&e, &opts.entrypoints) {
                        Ok(n) if names.contains(&n) => {}
                        Ok(n) => names.push(n),
                        Err(m) => {
                            pr.push(Severity::Error, &p.label, &p.shown, m);
                            bad = true;
                        }
                    }
                }
                p.value = names.join(",");
            }
            if bad {
                continue;
            }
        }
        let kv: Vec<(String, String)> = d
            .pairs
            .iter()
            .map(|p| (p.key.clone(), p.value.clone()))
            .collect();
        match route::parse_route_with(&d.name, &kv, false, files) {
            Ok(mut spec) => {
                if spec.enable == Some(false) {
                    continue;
                }
                spec.name = d.name.clone();
                let exact = d
                    .pairs
                    .iter()
                    .find(|p| group_alias(&p.key) == "ratelimit.rate")
                    .and_then(|p| p.per_second);
                if let (Some(r), Some(rl)) = (exact, spec.ratelimit.as_mut()) {
                    rl.per_second = r;
                }
                for p in &d.pairs {
                    if let Some(why) = spec.without_effect(&p.key) {
                        let message = format!("{why} (route `{}`)", spec.name);
                        pr.push(Severity::Warning, &p.label, &p.shown, message);
                    }
                }
                if spec.port.is_none() {
                    match ports.as_slice() {
                        [p] => spec.port = Some(*p),
                        _ if port_reported => {}
                        _ => {
                            port_reported = true;
                            let exposes = match ports.len() {
                                0 => "exposes no port".to_string(),
                                n => format!(
                                    "exposes {n} ports ({})",
                                    ports
                                        .iter()
                                        .map(u16::to_string)
                                        .collect::<Vec<_>>()
                                        .join(", ")
                                ),
                            };
                            pr.push(
                                Severity::Error,
                                &d.port_label,
                                "",
                                format!("{} is required: the service {exposes}", d.port_label),
                            );
                        }
                    }
                }
                let host_label = d
                    .pairs
                    .iter()
                    .find(|p| group_alias(&p.key) == "host")
                    .map(|p| (p.label.clone(), p.shown.clone()))
                    .unwrap_or_else(|| (format!("{}host", d.prefix), String::new()));
                routes.push((spec, host_label));
            }
            Err(problems) => {
                for p in problems {
                    match d.pairs.iter().find(|x| x.key == p.key) {
                        Some(x) => pr.push(Severity::Error, &x.label, &x.shown, p.message),
                        None => pr.push(
                            Severity::Error,
                            &format!("{}{}", d.prefix, label_spelling(&p.key)),
                            "",
                            p.message,
                        ),
                    }
                }
            }
        }
    }

    // One service cannot claim a host and path twice (across services the caller
    // decides who keeps it).
    for i in 0..routes.len() {
        for j in 0..i {
            let (a, (label, value)) = &routes[i];
            let b = &routes[j].0;
            if a.path != b.path || !crate::compose::overlap(&a.entrypoints, &b.entrypoints) {
                continue;
            }
            if let Some(h) = a.hosts.iter().find(|h| b.hosts.contains(h)) {
                pr.push(
                    Severity::Error,
                    label,
                    value,
                    format!(
                        "host `{h}` with path `{}` is also claimed by route `{}` of this service",
                        a.path, b.name
                    ),
                );
            }
        }
    }

    if pr.has_errors() {
        routes.clear();
    }
    let (routes, host_labels) = routes.into_iter().unzip();
    ServiceRoutes {
        enabled: true,
        routes,
        host_labels,
        problems: pr.list,
    }
}

fn valid_route_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Checks one `wharf.*` key (lower-cased, without `wharf.`/`wharf.routes.<n>.`)
/// and adds it to `dst` in file spelling.
fn add_pair(
    dst: &mut Vec<Pair>,
    key: &str,
    l: &Label,
    in_named_route: bool,
    prefix: &str,
    pr: &mut Problems,
) {
    // A header rule's name keeps its `-` (`headers.request.x-env`).
    let file = match route::HEADER_KEY_PREFIXES
        .iter()
        .find(|p| key.starts_with(&p.replace('_', "-")) || key.starts_with(*p))
    {
        Some(p) => format!("{p}{}", &key[p.len()..]),
        None => key.replace('-', "_"),
    };
    let canon = group_alias(&file);
    let is_header_rule = route::HEADER_KEY_PREFIXES
        .iter()
        .any(|p| canon.starts_with(p) && canon.len() > p.len());
    if canon == "upstream" {
        pr.error(
            l,
            "not a label: a labelled service's backends are its Docker tasks (pick the port \
             with wharf.port); static and dns: upstreams belong in [[routes]] of the config file",
        );
        return;
    }
    if canon == "name" {
        pr.error(
            l,
            "not a label: labelled routes are named after their service \
             (`<service>`, `<service>/<route>`)",
        );
        return;
    }
    if canon == "enable" && !in_named_route {
        return; // handled by the caller
    }
    if !is_header_rule && (!ROUTE_KEYS.contains(&canon) || NOT_LABELS.contains(&canon)) {
        let hint = if let Some(r) = key.strip_prefix("route.") {
            format!("; did you mean `wharf.routes.{r}`?")
        } else {
            let cands = label_candidates();
            values::suggest(key, cands.iter().map(String::as_str))
                .map(|s| format!("; did you mean `{prefix}{s}`?"))
                .unwrap_or_default()
        };
        pr.error(l, format!("unknown label{hint}"));
        return;
    }
    if let Some(other) = dst.iter().find(|p| group_alias(&p.key) == canon) {
        pr.error(l, format!("set twice (also as `{}`)", other.label));
        return;
    }
    dst.push(Pair::new(&file, l.written, l.value));
}

/// `base` with every key that `top` sets replaced by `top`'s.
pub(crate) fn overlay(base: &[Pair], top: &[Pair]) -> Vec<Pair> {
    let mut out: Vec<Pair> = base
        .iter()
        .filter(|b| {
            !top.iter()
                .any(|t| group_alias(&t.key) == group_alias(&b.key))
        })
        .cloned()
        .collect();
    out.extend(top.iter().cloned());
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::Duration;

    use wharf_table::{Balance, Scheme};

    use super::*;
    use crate::route::{RateKey, RateScope, StickyMode, StickyType, TlsMode};
    use crate::Upstream;

    pub(crate) fn run_with(
        labels: &[(&str, &str)],
        ports: &[u16],
        opts: LabelOptions,
    ) -> ServiceRoutes {
        let map: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        service_routes(
            &ServiceInput {
                name: "shop_web",
                labels: &map,
                exposed_ports: ports,
            },
            &opts,
        )
    }

    pub(crate) fn run(labels: &[(&str, &str)], ports: &[u16]) -> ServiceRoutes {
        run_with(labels, ports, LabelOptions::default())
    }

    pub(crate) fn errors(r: &ServiceRoutes) -> Vec<&LabelProblem> {
        r.problems
            .iter()
            .filter(|p| p.severity == Severity::Error)
            .collect()
    }

    pub(crate) fn warnings(r: &ServiceRoutes) -> Vec<&LabelProblem> {
        r.problems
            .iter()
            .filter(|p| p.severity == Severity::Warning)
            .collect()
    }

    fn only_route(r: &ServiceRoutes) -> &RouteSpec {
        assert!(!r.has_errors(), "{:#?}", r.problems);
        assert_eq!(r.routes.len(), 1, "{:#?}", r.routes);
        &r.routes[0]
    }

    #[test]
    fn every_spec_label() {
        let r = run(
            &[
                ("wharf.enable", "true"),
                ("wharf.host", "shop.example.org, *.shop.example.org"),
                ("wharf.path", "/api"),
                ("wharf.port", "8080"),
                ("wharf.scheme", "h2c"),
                ("wharf.network", "backend-net"),
                ("wharf.balance", "source"),
                ("wharf.entrypoints", "websecure"),
                ("wharf.sticky", "cookie"),
                ("wharf.sticky.cookie", "JSESSIONID"),
                ("wharf.sticky.mode", "prefix"),
                ("wharf.sticky.ttl", "1h"),
                ("wharf.healthcheck.path", "/health"),
                ("wharf.healthcheck.method", "GET"),
                ("wharf.healthcheck.host", "probe.example.org"),
                ("wharf.healthcheck.interval", "5s"),
                ("wharf.healthcheck.timeout", "1s"),
                ("wharf.healthcheck.rise", "4"),
                ("wharf.healthcheck.fall", "5"),
                ("wharf.healthcheck.expect", "200,204"),
                ("wharf.tls", "none"),
                ("wharf.https-redirect", "false"),
                ("wharf.hsts", "300"),
                ("wharf.hsts.subdomains", "true"),
                ("wharf.hsts.preload", "true"),
                ("wharf.ratelimit", "60/m"),
                ("wharf.ratelimit.burst", "7"),
                ("wharf.ratelimit.key", "header:X-Api-Key"),
                ("wharf.ratelimit.scope", "cluster"),
                ("wharf.maxconn", "25"),
            ],
            &[80, 8080],
        );
        assert!(r.enabled);
        let s = only_route(&r);
        assert_eq!(s.name, "shop_web");
        assert_eq!(s.hosts, vec!["shop.example.org", "*.shop.example.org"]);
        assert_eq!(s.path, "/api");
        assert_eq!(s.port, Some(8080));
        assert_eq!(s.upstream, Upstream::Provided);
        assert_eq!(s.scheme, Scheme::H2c);
        assert_eq!(s.network.as_deref(), Some("backend-net"));
        assert_eq!(s.balance, Balance::Source);
        assert_eq!(s.entrypoints, Some(vec!["websecure".to_string()]));
        assert_eq!(s.sticky.kind, StickyType::Cookie);
        assert_eq!(s.sticky.cookie, "JSESSIONID");
        assert_eq!(s.sticky.mode, StickyMode::Prefix);
        assert_eq!(s.sticky.ttl, Some(Duration::from_secs(3600)));
        let hc = s.healthcheck.as_ref().unwrap();
        assert_eq!(hc.path, "/health");
        assert_eq!(hc.method, "GET");
        assert_eq!(hc.host.as_deref(), Some("probe.example.org"));
        assert_eq!(hc.interval, Duration::from_secs(5));
        assert_eq!(hc.timeout, Duration::from_secs(1));
        assert_eq!((hc.rise, hc.fall), (4, 5));
        assert_eq!(hc.expect, vec![(200, 200), (204, 204)]);
        assert_eq!(s.tls, TlsMode::None);
        assert!(!s.https_redirect);
        assert_eq!(
            s.hsts.header_value().unwrap(),
            "max-age=300; includeSubDomains; preload"
        );
        let rl = s.ratelimit.as_ref().unwrap();
        assert_eq!((rl.per_second, rl.burst), (1.0, 7));
        assert_eq!(rl.key, RateKey::Header("x-api-key".into()));
        assert_eq!(rl.scope, RateScope::Cluster);
        assert_eq!(s.maxconn.map(|m| m.limit), Some(25));
        assert_eq!(
            r.host_labels,
            vec![(
                "wharf.host".to_string(),
                "shop.example.org, *.shop.example.org".to_string()
            )]
        );
    }

    #[test]
    fn defaults_of_a_minimal_service() {
        let r = run(
            &[("wharf.enable", "true"), ("wharf.host", "a.example.org")],
            &[3000],
        );
        let s = only_route(&r);
        assert_eq!(s.path, "/");
        assert_eq!(s.port, Some(3000), "the only exposed port");
        assert_eq!(s.balance, Balance::LeastConn);
        assert_eq!(s.sticky.kind, StickyType::None);
        assert_eq!(s.sticky.cookie, "WHARFID");
        assert_eq!(s.sticky.ttl, None);
        assert_eq!(s.tls, TlsMode::Acme);
        assert!(s.https_redirect);
        assert_eq!(s.hsts.header_value().unwrap(), "max-age=63072000");
        assert!(s.healthcheck.is_none() && s.ratelimit.is_none() && s.maxconn.is_none());
        assert!(r.problems.is_empty());
    }

    #[test]
    fn group_keys_and_their_aliases() {
        let r = run(
            &[
                ("wharf.enable", "true"),
                ("wharf.host", "a.example.org"),
                ("wharf.sticky.type", "source"),
                ("wharf.hsts.max-age", "0"),
                ("wharf.ratelimit.rate", "10/s"),
            ],
            &[80],
        );
        let s = only_route(&r);
        assert_eq!(s.sticky.kind, StickyType::Source);
        assert_eq!(s.hsts.header_value(), None);
        assert_eq!(s.ratelimit.as_ref().unwrap().burst, 10);

        let r = run(
            &[
                ("wharf.enable", "true"),
                ("wharf.host", "a.example.org"),
                ("wharf.sticky", "cookie"),
                ("wharf.sticky.type", "source"),
            ],
            &[80],
        );
        let e = errors(&r);
        assert_eq!(e.len(), 1, "{e:#?}");
        assert!(e[0].message.contains("set twice"), "{e:#?}");
        assert!(r.routes.is_empty());
    }

    #[test]
    fn keys_are_case_insensitive() {
        let r = run(
            &[
                ("Wharf.Enable", "TRUE"),
                ("WHARF.HOST", "A.Example.org"),
                ("wharf.HTTPS-Redirect", "false"),
                ("wharf.Routes.API.Path", "/api"),
            ],
            &[80],
        );
        assert!(!r.has_errors(), "{:#?}", r.problems);
        assert_eq!(r.routes.len(), 2);
        assert_eq!(r.routes[0].hosts, vec!["a.example.org"]);
        assert!(!r.routes[0].https_redirect);
        assert_eq!(r.routes[1].name, "shop_web/api");

        let r = run(
            &[
                ("wharf.enable", "true"),
                ("wharf.host", "a.example.org"),
                ("wharf.Host", "b.example.org"),
            ],
            &[80],
        );
        let e = errors(&r);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].label, "wharf.host");
        assert!(
            e[0].message.contains("set twice (also as `wharf.Host`)"),
            "{e:#?}"
        );
    }

    #[test]
    fn unknown_keys_get_a_hint_naming_service_label_and_value() {
        let r = run(
            &[
                ("wharf.enable", "true"),
                ("wharf.host", "a.example.org"),
                ("wharf.helthcheck.path", "/health"),
                ("wharf.https_redirekt", "false"),
                ("wharf.route.api.host", "b.example.org"),
                ("wharf.frobnicate-everything", "1"),
            ],
            &[80],
        );
        let e = errors(&r);
        assert_eq!(e.len(), 4, "{e:#?}");
        let hc = e
            .iter()
            .find(|p| p.label == "wharf.helthcheck.path")
            .unwrap();
        assert_eq!(hc.service, "shop_web");
        assert_eq!(hc.value, "/health");
        assert!(
            hc.message
                .contains("did you mean `wharf.healthcheck.path`?"),
            "{hc:?}"
        );
        let hr = e
            .iter()
            .find(|p| p.label == "wharf.https_redirekt")
            .unwrap();
        assert!(
            hr.message.contains("did you mean `wharf.https-redirect`?"),
            "{hr:?}"
        );
        let rt = e
            .iter()
            .find(|p| p.label == "wharf.route.api.host")
            .unwrap();
        assert!(
            rt.message.contains("did you mean `wharf.routes.api.host`?"),
            "{rt:?}"
        );
        let fr = e
            .iter()
            .find(|p| p.label == "wharf.frobnicate-everything")
            .unwrap();
        assert_eq!(fr.message, "unknown label");
        assert!(r.routes.is_empty(), "an error keeps the last good routes");
        assert_eq!(
            hc.to_string(),
            "service shop_web: wharf.helthcheck.path=\"/health\": unknown label; did you mean `wharf.healthcheck.path`?"
        );
    }

    #[test]
    fn a_typo_in_a_named_route_is_reported_with_its_prefix() {
        let r = run(
            &[
                ("wharf.enable", "true"),
                ("wharf.routes.api.hots", "a.example.org"),
            ],
            &[80],
        );
        let e = errors(&r);
        assert_eq!(e.len(), 1, "only the typo, not a consequence of it: {e:#?}");
        let t = e[0];
        assert_eq!(t.label, "wharf.routes.api.hots");
        let r2 = run(
            &[
                ("wharf.enable", "true"),
                ("wharf.host", "a.example.org"),
                ("wharf.routes.api.hots", "a.example.org"),
            ],
            &[80],
        );
        assert_eq!(errors(&r2).len(), 1, "{:#?}", r2.problems);
        assert!(
            t.message.contains("did you mean `wharf.routes.api.host`?"),
            "{t:?}"
        );
    }

    #[test]
    fn bad_values_name_the_label_as_written() {
        let r = run(
            &[
                ("wharf.enable", "true"),
                ("wharf.host", "a.example.org"),
                ("wharf.Port", "http"),
                ("wharf.balance", "fastest"),
                ("wharf.routes.api.path", "api"),
            ],
            &[80],
        );
        let e = errors(&r);
        let port = e.iter().find(|p| p.label == "wharf.Port").unwrap();
        assert_eq!(port.value, "http");
        assert!(port.message.contains("not a valid port"));
        assert!(e
            .iter()
            .any(|p| p.label == "wharf.balance" && p.value == "fastest"));
        assert!(e
            .iter()
            .any(|p| p.label == "wharf.routes.api.path" && p.value == "api"));
        assert!(r.routes.is_empty());
    }

    #[test]
    fn named_routes_fall_back_to_service_keys() {
        let r = run(
            &[
                ("wharf.enable", "true"),
                ("wharf.host", "shop.example.org"),
                ("wharf.sticky", "cookie"),
                ("wharf.port", "8080"),
                ("wharf.routes.api.path", "/api"),
                ("wharf.routes.api.port", "9090"),
                ("wharf.routes.api.sticky", "none"),
                ("wharf.routes.admin.host", "admin.example.org"),
            ],
            &[8080, 9090],
        );
        assert!(!r.has_errors(), "{:#?}", r.problems);
        let names: Vec<_> = r.routes.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["shop_web", "shop_web/admin", "shop_web/api"]);
        let admin = &r.routes[1];
        assert_eq!(admin.hosts, vec!["admin.example.org"]);
        assert_eq!(admin.port, Some(8080));
        assert_eq!(admin.sticky.kind, StickyType::Cookie);
        let api = &r.routes[2];
        assert_eq!(api.hosts, vec!["shop.example.org"]);
        assert_eq!((api.path.as_str(), api.port), ("/api", Some(9090)));
        assert_eq!(api.sticky.kind, StickyType::None);
        assert_eq!(r.host_labels[1].0, "wharf.routes.admin.host");
        assert_eq!(r.host_labels[2].0, "wharf.host");
    }

    #[test]
    fn without_a_service_host_only_named_routes_exist() {
        let r = run(
            &[
                ("wharf.enable", "true"),
                ("wharf.port", "80"),
                ("wharf.routes.a.host", "a.example.org"),
                ("wharf.routes.b.host", "b.example.org"),
                ("wharf.routes.off.host", "c.example.org"),
                ("wharf.routes.off.enable", "false"),
            ],
            &[],
        );
        assert!(!r.has_errors(), "{:#?}", r.problems);
        let names: Vec<_> = r.routes.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["shop_web/a", "shop_web/b"]);

        let r = run(
            &[("wharf.enable", "true"), ("wharf.routes.a.path", "/a")],
            &[80],
        );
        let e = errors(&r);
        assert_eq!(e.len(), 1, "{e:#?}");
        assert_eq!(e[0].label, "wharf.routes.a.host");
        assert!(e[0].message.contains("required"));
    }

    #[test]
    fn malformed_route_names() {
        for key in [
            "wharf.routes",
            "wharf.routes.api",
            "wharf.routes..host",
            "wharf.routes.a/b.host",
        ] {
            let r = run(
                &[
                    ("wharf.enable", "true"),
                    ("wharf.host", "a.example.org"),
                    (key, "x"),
                ],
                &[80],
            );
            let e = errors(&r);
            assert_eq!(e.len(), 1, "{key}: {e:#?}");
            assert_eq!(e[0].label, key);
            assert!(e[0].message.contains("wharf.routes.<name>.<key>"), "{e:#?}");
        }
    }

    #[test]
    fn port_defaults_to_the_only_exposed_port() {
        let base = [("wharf.enable", "true"), ("wharf.host", "a.example.org")];
        assert_eq!(only_route(&run(&base, &[3000, 3000])).port, Some(3000));

        let r = run(&base, &[80, 443]);
        let e = errors(&r);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].label, "wharf.port");
        assert_eq!(
            e[0].message,
            "wharf.port is required: the service exposes 2 ports (80, 443)"
        );
        let r = run(&base, &[]);
        assert_eq!(
            errors(&r)[0].message,
            "wharf.port is required: the service exposes no port"
        );
        let mut with_port = base.to_vec();
        with_port.push(("wharf.port", "443"));
        assert_eq!(only_route(&run(&with_port, &[80, 443])).port, Some(443));
        // Reported once per service, not once per route.
        let r = run(
            &[
                ("wharf.enable", "true"),
                ("wharf.routes.a.host", "a.example.org"),
                ("wharf.routes.b.host", "b.example.org"),
            ],
            &[],
        );
        assert_eq!(errors(&r).len(), 1);
    }

    #[test]
    fn enable_and_exposed_by_default() {
        // Not enabled: no routes, and no nagging about its other labels.
        let r = run(
            &[("wharf.host", "a.example.org"), ("wharf.helthcheck", "/")],
            &[80],
        );
        assert!(!r.enabled && r.routes.is_empty() && r.problems.is_empty());
        let r = run(
            &[("wharf.enable", "false"), ("wharf.host", "a.example.org")],
            &[80],
        );
        assert!(!r.enabled && r.problems.is_empty());

        // A malformed wharf.enable is an error.
        let r = run(
            &[("wharf.enable", "yes"), ("wharf.host", "a.example.org")],
            &[80],
        );
        // Enabled-with-an-error: the caller keeps the last good routes.
        assert!(r.enabled && r.has_errors() && r.routes.is_empty());
        assert_eq!(errors(&r)[0].label, "wharf.enable");
        assert_eq!(errors(&r)[0].value, "yes");

        let exposed = LabelOptions {
            exposed_by_default: true,
            traefik_labels: true,
            ..LabelOptions::default()
        };
        let r = run_with(&[("wharf.host", "a.example.org")], &[80], exposed.clone());
        assert!(r.enabled);
        assert_eq!(only_route(&r).hosts, vec!["a.example.org"]);
        let r = run_with(
            &[("wharf.enable", "false"), ("wharf.host", "a.example.org")],
            &[80],
            exposed.clone(),
        );
        assert!(!r.enabled && r.routes.is_empty());
        // A service with no labels at all (a database) is only a warning.
        let r = run_with(&[], &[5432], exposed.clone());
        assert!(!r.has_errors());
        assert_eq!(warnings(&r)[0].label, "wharf.host");
        // But an explicitly enabled service without a host is an error.
        let r = run(&[("wharf.enable", "true")], &[80]);
        assert_eq!(errors(&r)[0].label, "wharf.host");
        assert!(errors(&r)[0].message.starts_with("required"));
        let r = run_with(&[("wharf.port", "80")], &[80], exposed.clone());
        assert_eq!(errors(&r)[0].label, "wharf.host");
    }

    #[test]
    fn upstream_is_not_a_label() {
        let r = run(
            &[
                ("wharf.enable", "true"),
                ("wharf.host", "a.example.org"),
                ("wharf.upstream", "static:10.0.0.1:80"),
                ("wharf.name", "x"),
            ],
            &[80],
        );
        let e = errors(&r);
        assert_eq!(e.len(), 2);
        let up = e.iter().find(|p| p.label == "wharf.upstream").unwrap();
        assert!(up.message.contains("[[routes]]"), "{e:#?}");
        let name = e.iter().find(|p| p.label == "wharf.name").unwrap();
        assert!(
            name.message.contains("named after their service"),
            "{name:?}"
        );
    }

    #[test]
    fn one_service_cannot_claim_a_host_and_path_twice() {
        let r = run(
            &[
                ("wharf.enable", "true"),
                ("wharf.host", "a.example.org"),
                ("wharf.routes.x.host", "b.example.org,a.example.org"),
            ],
            &[80],
        );
        let e = errors(&r);
        assert_eq!(e.len(), 1, "{e:#?}");
        assert_eq!(e[0].label, "wharf.routes.x.host");
        assert!(e[0].message.contains("also claimed by route `shop_web`"));
        assert!(r.routes.is_empty());
    }

    const BCRYPT: &str = "u1:$2y$05$Tx6oWiW5cBWFUx.zUhnBqeWwzqxeVePcGjEjVO4jNz.sWtV7tPTwm";
    const SHA: &str = "u2:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=";
    const APR1: &str = "u3:$apr1$H6uskkkW$IgXLP6ewTrSuBkTrqE8wj/";

    #[test]
    fn middleware_labels_service_level_and_per_route() {
        let users = format!("{BCRYPT},{SHA}, {APR1}");
        let r = run(
            &[
                ("wharf.enable", "true"),
                ("wharf.host", "a.example.org"),
                (
                    "wharf.ipallowlist",
                    "10.0.0.0/8,192.168.0.0/16,::ffff:172.16.0.0/108",
                ),
                ("wharf.ipallowlist.depth", "1"),
                ("wharf.basicauth.users", &users),
                ("wharf.basicauth.realm", "staff"),
                ("wharf.basicauth.remove-header", "true"),
                ("wharf.headers.request.X-Env", "prod"),
                ("wharf.headers.response.X-Frame-Options", "DENY"),
                ("wharf.headers.response.Server", ""),
                ("wharf.routes.api.host", "api.example.org"),
                ("wharf.routes.api.headers.request.X-Api", "1"),
            ],
            &[80],
        );
        assert!(!r.has_errors(), "{:#?}", r.problems);
        assert_eq!(r.routes.len(), 2);
        let s = &r.routes[0];
        let ip = s.ipallowlist.as_ref().unwrap();
        assert_eq!(ip.depth, 1);
        // The mapped range is canonical IPv4.
        assert_eq!(ip.ranges[2], "172.16.0.0/12".parse().unwrap());
        let ba = s.basicauth.as_ref().unwrap();
        let names: Vec<&str> = ba.users.iter().map(|(u, _)| u.as_str()).collect();
        assert_eq!(names, ["u1", "u2", "u3"]);
        assert!(matches!(ba.users[1].1, route::PasswordHash::Sha1(_)));
        assert!(matches!(ba.users[2].1, route::PasswordHash::Apr1 { .. }));
        assert_eq!(ba.realm, "staff");
        assert!(ba.remove_header);
        assert!(!format!("{ba:?}").contains('$'), "no hash in Debug");
        let h = s.headers.as_ref().unwrap();
        assert_eq!(h.request[0].0.as_str(), "x-env");
        assert_eq!(h.response.len(), 2);
        // The named route inherits and adds.
        let api = &r.routes[1];
        assert!(api.basicauth.is_some());
        let names: Vec<&str> = api
            .headers
            .as_ref()
            .unwrap()
            .request
            .iter()
            .map(|(n, _)| n.as_str())
            .collect();
        assert_eq!(names, ["x-env", "x-api"]);
    }

    #[test]
    fn middleware_label_errors() {
        for (key, value, needle) in [
            ("wharf.ipallowlist", "10.0.0.0/40", "not an address range"),
            ("wharf.ipallowlist", " , ", "no address range"),
            ("wharf.basicauth.users", "admin:secret", "plain text"),
            (
                "wharf.basicauth.users",
                "admin:{SHA}abc",
                "not base64 of 20 bytes",
            ),
            (
                "wharf.basicauth.users",
                "admin:$2y$05$short",
                "bcrypt hash is malformed",
            ),
            ("wharf.basicauth.users", "justaname", "not `user:hash`"),
            ("wharf.headers.request.Bad Name", "x", "not a header name"),
            ("wharf.headers.request.X-A", "a\u{7}b", "control character"),
            (
                "wharf.headers.request.Content-Length",
                "5",
                "framing or hop-by-hop",
            ),
            (
                "wharf.headers.response.Transfer-Encoding",
                "chunked",
                "framing",
            ),
        ] {
            let e = one_error(&[(key, value)]);
            assert_eq!(e.label, key);
            assert!(e.message.contains(needle), "{key}={value}: {}", e.message);
            if key.contains("basicauth.users") {
                assert_eq!(e.value, REDACTED);
                assert!(!e.message.contains("secret"));
            }
        }
        let e = one_error(&[
            ("wharf.basicauth.users", BCRYPT),
            ("wharf.basicauth.realm", "a\"b"),
        ]);
        assert!(e.message.contains("not a realm"), "{}", e.message);
        let e = one_error(&[("wharf.basicauth.realm", "x")]);
        assert!(
            e.message.contains("without `basicauth.users`"),
            "{}",
            e.message
        );
        let e = one_error(&[("wharf.ipallowlist.depth", "1")]);
        assert!(e.message.contains("without `ipallowlist`"), "{}", e.message);
        // A credential header's value is redacted too.
        let e = one_error(&[("wharf.headers.request.Authorization", "Bearer \u{1}x")]);
        assert_eq!(e.value, REDACTED);
    }

    #[test]
    fn label_caps_come_before_anything_else() {
        let key = format!("wharf.{}", "a".repeat(2_000_000));
        let started = std::time::Instant::now();
        let r = run(
            &[
                ("wharf.enable", "true"),
                ("wharf.host", "a.org"),
                (&key, "1"),
            ],
            &[80],
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        let e = errors(&r);
        assert_eq!(e.len(), 1, "{e:#?}");
        assert!(e[0].label.len() < 80, "the key is cut short");
        assert!(
            e[0].message.contains("more than the 256 bytes"),
            "{}",
            e[0].message
        );
        let big = "x".repeat(values::MAX_LABEL_VALUE + 1);
        let r = run(
            &[
                ("wharf.enable", "true"),
                ("wharf.host", "a.org"),
                ("wharf.path", &big),
            ],
            &[80],
        );
        let e = errors(&r);
        assert_eq!(e[0].label, "wharf.path");
        assert_eq!(e[0].value, "");
        assert!(e[0].message.contains("4096 bytes"), "{}", e[0].message);
        // At the caps: accepted (and no suggestion work for a long unknown key).
        let key = format!("wharf.{}", "b".repeat(values::MAX_LABEL_KEY - 6));
        let r = run(
            &[
                ("wharf.enable", "true"),
                ("wharf.host", "a.org"),
                (&key, "1"),
            ],
            &[80],
        );
        assert_eq!(errors(&r)[0].message, "unknown label");
    }

    #[test]
    fn hostile_values_are_errors_not_panics() {
        // Long, but under the value cap (values::MAX_LABEL_VALUE).
        let long = "a".repeat(4_000);
        let r = run(
            &[
                ("wharf.enable", "true"),
                ("wharf.host", &long),
                ("wharf.path", "/\u{0}"),
                ("wharf.ratelimit", "99999999999/s"),
                ("wharf.healthcheck.interval", "-1s"),
                ("wharf.port", "0"),
            ],
            &[80],
        );
        assert!(r.has_errors());
        assert!(errors(&r).len() >= 4, "{:#?}", r.problems);
    }

    /// The one error of a service with `wharf.host` and `extra` labels.
    fn one_error(extra: &[(&str, &str)]) -> LabelProblem {
        let mut labels = vec![("wharf.enable", "true"), ("wharf.host", "a.example.org")];
        labels.extend_from_slice(extra);
        let r = run(&labels, &[80]);
        let e = errors(&r);
        assert_eq!(e.len(), 1, "{extra:?}: {e:#?}");
        assert!(r.routes.is_empty(), "an error keeps the last good routes");
        e[0].clone()
    }

    #[test]
    fn healthcheck_bad_input_names_label_value_and_hint() {
        let e = one_error(&[
            ("wharf.healthcheck.path", "/health"),
            ("wharf.healthcheck.interval", "10ms"),
        ]);
        assert_eq!(
            e.to_string(),
            "service shop_web: wharf.healthcheck.interval=\"10ms\": `10ms` is shorter than the \
             shortest check interval, 100ms; write e.g. `1s` (HAProxy's `inter` is 2s by default)"
        );
        let e = one_error(&[
            ("wharf.healthcheck.path", "/health"),
            ("wharf.healthcheck.interval", "2s"),
            ("wharf.healthcheck.timeout", "3s"),
        ]);
        assert_eq!(
            e.to_string(),
            "service shop_web: wharf.healthcheck.timeout=\"3s\": `3s` is not shorter than the \
             check interval `2s`: a check must end before the next one starts; set a timeout \
             below the interval (e.g. `1s`) or a longer interval"
        );
        // In a named route, on the key as written there.
        let r = run(
            &[
                ("wharf.enable", "true"),
                ("wharf.host", "a.example.org"),
                ("wharf.routes.api.path", "/api"),
                ("wharf.routes.api.healthcheck.path", "/h"),
                ("wharf.routes.api.healthcheck.timeout", "20s"),
            ],
            &[80],
        );
        let e = errors(&r);
        assert_eq!(e.len(), 1, "{e:#?}");
        assert_eq!(e[0].label, "wharf.routes.api.healthcheck.timeout");
        assert!(e[0].message.contains("`10s` (the default)"), "{e:#?}");

        for (label, value, needle) in [
            ("wharf.healthcheck.path", "health", "must start with `/`"),
            ("wharf.healthcheck.path", "/a b", "percent-encode"),
            ("wharf.healthcheck.rise", "0", "rise must be at least 1"),
            ("wharf.healthcheck.fall", "0", "fall must be at least 1"),
            ("wharf.healthcheck.method", "OPTIONS", "use HEAD or GET"),
            (
                "wharf.healthcheck.expect",
                "2xx,oops",
                "`oops` is not a status",
            ),
            ("wharf.healthcheck.host", "*.example.org", "name one host"),
            (
                "wharf.healthcheck.interval",
                "48h",
                "longest check interval, 24h",
            ),
        ] {
            let mut labels = vec![(label, value)];
            if label != "wharf.healthcheck.path" {
                labels.push(("wharf.healthcheck.path", "/h"));
            }
            let e = one_error(&labels);
            assert_eq!((e.label.as_str(), e.value.as_str()), (label, value));
            assert!(e.message.contains(needle), "{label}={value}: {e}");
        }
        let e = one_error(&[("wharf.healthcheck.interval", "5s")]);
        assert_eq!(e.label, "wharf.healthcheck.path");
        assert!(e.message.contains("without `healthcheck.path`"), "{e}");
    }

    #[test]
    fn healthcheck_short_interval_without_timeout_halves_it() {
        let r = run(
            &[
                ("wharf.enable", "true"),
                ("wharf.host", "a.example.org"),
                ("wharf.healthcheck.path", "/h"),
                ("wharf.healthcheck.interval", "1s"),
                ("wharf.healthcheck.expect", "200-299"),
            ],
            &[80],
        );
        let hc = only_route(&r).healthcheck.clone().unwrap();
        assert_eq!(
            (hc.interval, hc.timeout),
            (Duration::from_secs(1), Duration::from_millis(500))
        );
        assert_eq!(hc.expect, vec![(200, 299)]);
    }

    #[test]
    fn maxconn_group_as_labels() {
        let r = run(
            &[
                ("wharf.enable", "true"),
                ("wharf.host", "a.example.org"),
                ("wharf.maxconn", "3"),
                ("wharf.maxconn.queue", "0"),
                ("wharf.maxconn.timeout", "1s"),
            ],
            &[80],
        );
        let m = only_route(&r).maxconn.unwrap();
        assert_eq!(
            (m.limit, m.queue, m.timeout),
            (3, 0, Duration::from_secs(1))
        );
        let r = run(
            &[
                ("wharf.enable", "true"),
                ("wharf.host", "a.example.org"),
                ("wharf.maxconn.limit", "3"),
            ],
            &[80],
        );
        let m = only_route(&r).maxconn.unwrap();
        assert_eq!(
            (m.limit, m.queue, m.timeout),
            (3, 1024, Duration::from_secs(5))
        );

        for (extra, label, needle) in [
            (
                vec![("wharf.maxconn", "0")],
                "wharf.maxconn",
                "must be at least 1",
            ),
            (
                vec![("wharf.maxconn", "many")],
                "wharf.maxconn",
                "`many` is not a valid maxconn",
            ),
            (
                vec![("wharf.maxconn", "5"), ("wharf.maxconn.queue", "99999999")],
                "wharf.maxconn.queue",
                "at most",
            ),
            (
                vec![("wharf.maxconn", "5"), ("wharf.maxconn.timeout", "5")],
                "wharf.maxconn.timeout",
                "not a duration",
            ),
            (
                vec![("wharf.maxconn", "5"), ("wharf.maxconn.timeout", "1d")],
                "wharf.maxconn.timeout",
                "1h",
            ),
            (
                vec![("wharf.maxconn.queue", "5")],
                "wharf.maxconn",
                "without `maxconn`",
            ),
            (
                vec![("wharf.maxconn", "5"), ("wharf.maxconn.limit", "6")],
                "wharf.maxconn.limit",
                "set twice",
            ),
        ] {
            let e = one_error(&extra);
            assert_eq!(e.label, label, "{extra:?}: {e}");
            assert!(e.message.contains(needle), "{extra:?}: {e}");
        }
        // A hint for a misspelt group key.
        let e = one_error(&[("wharf.maxcon", "5")]);
        assert!(e.message.contains("did you mean `wharf.maxconn`?"), "{e}");
    }

    #[test]
    fn sticky_and_ratelimit_bad_input_is_an_error_for_that_service_alone() {
        for (label, value, needle) in [
            ("wharf.sticky", "yes", "use none, cookie or source"),
            ("wharf.sticky.mode", "append", "use insert or prefix"),
            ("wharf.sticky.cookie", "", "an empty cookie name"),
            ("wharf.sticky.cookie", "a,b", "`,` is not allowed"),
            ("wharf.ratelimit", "0/s", "a rate of zero"),
            ("wharf.ratelimit", "5/x", "`x` is not a unit"),
            ("wharf.ratelimit.key", "header:", "names no header"),
            (
                "wharf.ratelimit.scope",
                "everywhere",
                "use replica or cluster",
            ),
        ] {
            let mut labels = vec![(label, value)];
            if label.starts_with("wharf.sticky.") {
                labels.push(("wharf.sticky", "cookie"));
            }
            if label.starts_with("wharf.ratelimit.") {
                labels.push(("wharf.ratelimit", "5/s"));
            }
            let e = one_error(&labels);
            assert_eq!((e.label.as_str(), e.value.as_str()), (label, value));
            assert!(e.message.contains(needle), "{label}={value}: {e}");
        }
        // Another service is not affected.
        let ok = run(
            &[
                ("wharf.enable", "true"),
                ("wharf.host", "b.example.org"),
                ("wharf.ratelimit", "5/s"),
            ],
            &[80],
        );
        assert!(!ok.has_errors() && ok.routes.len() == 1);
    }

    #[test]
    fn sticky_keys_the_type_ignores_are_warnings() {
        let r = run(
            &[
                ("wharf.enable", "true"),
                ("wharf.host", "a.example.org"),
                ("wharf.sticky", "source"),
                ("wharf.sticky.cookie", "SID"),
                ("wharf.sticky.ttl", "10m"),
            ],
            &[80],
        );
        let s = only_route(&r);
        assert_eq!(s.sticky.source_ttl(), Duration::from_secs(600));
        let w = warnings(&r);
        assert_eq!(w.len(), 1, "{w:#?}");
        assert_eq!(
            (w[0].label.as_str(), w[0].value.as_str()),
            ("wharf.sticky.cookie", "SID")
        );
        assert!(
            w[0].message.contains("sticky is `source`") && w[0].message.contains("`shop_web`"),
            "{w:#?}"
        );

        // A named route that turns stickiness off: the service's cookie name has
        // no effect there, and the warning says where.
        let r = run(
            &[
                ("wharf.enable", "true"),
                ("wharf.host", "a.example.org"),
                ("wharf.sticky", "cookie"),
                ("wharf.sticky.mode", "prefix"),
                ("wharf.routes.api.path", "/api"),
                ("wharf.routes.api.sticky", "none"),
            ],
            &[80],
        );
        assert!(!r.has_errors(), "{:#?}", r.problems);
        let w = warnings(&r);
        assert_eq!(w.len(), 1, "{w:#?}");
        assert_eq!(w[0].label, "wharf.sticky.mode");
        assert!(w[0].message.contains("route `shop_web/api`"), "{w:#?}");
    }

    #[test]
    fn unrelated_labels_are_ignored() {
        let r = run(
            &[
                ("wharf.enable", "true"),
                ("wharf.host", "a.example.org"),
                ("com.docker.stack.namespace", "shop"),
                ("wharfish", "x"),
            ],
            &[80],
        );
        assert!(r.problems.is_empty());
        assert_eq!(r.routes.len(), 1);
    }

    #[test]
    fn backend_tls_labels_map_dashes_in_group_and_key() {
        let dir = crate::route::tests::Scratch::new("labels-tls");
        let (ca, cert, key) = (dir.file("ca.pem"), dir.file("c.pem"), dir.file("k.pem"));
        let r = run(
            &[
                ("wharf.enable", "true"),
                ("wharf.host", "a.example.org"),
                ("wharf.scheme", "https"),
                ("wharf.backend-tls.server-name", "App.Internal"),
                ("wharf.backend-tls.ca", &ca),
                ("wharf.backend-tls.client-cert", &cert),
                ("wharf.Backend-TLS.Client-Key", &key),
                ("wharf.routes.admin.host", "admin.example.org"),
                ("wharf.routes.admin.backend-tls.insecure", "true"),
                ("wharf.routes.admin.backend-tls.ca", ""),
            ],
            &[8443],
        );
        assert!(!r.has_errors(), "{:#?}", r.problems);
        assert!(r.problems.is_empty(), "{:#?}", r.problems);
        let s = &r.routes[0];
        assert_eq!(s.scheme, Scheme::Https);
        assert_eq!(s.backend_tls.server_name.as_deref(), Some("app.internal"));
        assert_eq!(s.backend_tls.ca, Some(ca.clone().into()));
        assert_eq!(s.backend_tls.client_cert, Some(cert.into()));
        assert_eq!(s.backend_tls.client_key, Some(key.into()));
        assert!(!s.backend_tls.insecure);
        // A named route inherits the service's keys unless it sets them: the
        // empty `ca` unsets it, so `insecure` stands alone.
        let a = &r.routes[1];
        assert_eq!(a.name, "shop_web/admin");
        assert!(a.backend_tls.insecure);
        assert_eq!(a.backend_tls.ca, None);
        assert_eq!(a.backend_tls.server_name.as_deref(), Some("app.internal"));
        // The spelling with `_` works too, as for every key.
        let r = run(
            &[
                ("wharf.host", "a.example.org"),
                ("wharf.enable", "true"),
                ("wharf.scheme", "https"),
                ("wharf.backend_tls.insecure", "true"),
            ],
            &[8443],
        );
        assert!(only_route(&r).backend_tls.insecure);
    }

    #[test]
    fn backend_tls_bad_labels_name_label_value_and_hint() {
        let dir = crate::route::tests::Scratch::new("labels-tls-bad");
        let cert = dir.file("c.pem");
        let missing = dir.missing("ca.pem");
        let base = [("wharf.enable", "true"), ("wharf.host", "a.example.org")];
        let one = |extra: &[(&str, &str)]| {
            let mut labels = base.to_vec();
            labels.extend_from_slice(extra);
            let r = run(&labels, &[443]);
            assert!(r.routes.is_empty(), "an error drops the service's routes");
            let e = errors(&r);
            assert_eq!(e.len(), 1, "{extra:?}: {e:#?}");
            e[0].clone()
        };
        let e = one(&[("wharf.backend-tls.insecure", "true")]);
        assert_eq!(
            e.to_string(),
            "service shop_web: wharf.backend-tls.insecure=\"true\": only used with scheme = \
             \"https\" (this route's scheme is http): set the scheme to https, or remove this key"
        );
        let e = one(&[
            ("wharf.scheme", "https"),
            ("wharf.backend-tls.server-name", "*.internal"),
        ]);
        assert_eq!(e.label, "wharf.backend-tls.server-name");
        assert_eq!(e.value, "*.internal");
        assert!(e.message.contains("not a valid server name"), "{e}");
        let e = one(&[
            ("wharf.scheme", "https"),
            ("wharf.backend-tls.ca", &missing),
        ]);
        assert_eq!(e.label, "wharf.backend-tls.ca");
        assert!(e.message.contains(&format!("`{missing}`")), "{e}");
        assert!(e.message.contains("No such file or directory"), "{e}");
        let e = one(&[
            ("wharf.scheme", "https"),
            ("wharf.backend-tls.client-cert", &cert),
        ]);
        assert_eq!(e.label, "wharf.backend-tls.client-cert");
        assert!(
            e.message.contains("set `backend_tls.client_key` too"),
            "{e}"
        );
        let e = one(&[
            ("wharf.scheme", "https"),
            ("wharf.backend-tls.insecure", "true"),
            ("wharf.backend-tls.ca", &cert),
        ]);
        assert_eq!(e.label, "wharf.backend-tls.insecure");
        assert!(e.message.starts_with("insecure skips verification"), "{e}");
        let e = one(&[("wharf.backend-tls.servername", "x")]);
        assert!(
            e.message
                .contains("did you mean `wharf.backend-tls.server-name`?"),
            "{e}"
        );
        let e = one(&[("wharf.routes.api.backend-tls.client-crt", "x")]);
        assert!(
            e.message
                .contains("did you mean `wharf.routes.api.backend-tls.client-cert`?"),
            "{e}"
        );
    }
}
