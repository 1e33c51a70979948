//! Traefik labels → Wharf route keys (SPEC "Traefik labels"), so a service labelled
//! for Traefik v1 or v2/v3 is routed without relabelling. The output is the same
//! route keys `wharf.*` labels give, validated by the same `route::parse_route`.
//!
//! What Traefik means is kept where Wharf can express it (a rule's hosts and path
//! prefix, routers with one rule merged into one route, a ratelimit's `average`
//! per `period` exactly and its `sourceCriterion`, a sticky cookie's name and
//! `maxAge`, no HSTS unless a headers middleware sets it, health checks with
//! GET every 30s, TLS to backends: v1 `protocol` and v2/v3 `server.scheme`, and a
//! `loadbalancer.serverstransport` defined by the service's own
//! `traefik.http.serverstransports.<name>.*` labels onto `backend_tls`); anything
//! else is a Warning naming the key, or an Error when routing would differ (a rule
//! matcher Wharf cannot evaluate) or a security setting would be lost (a servers
//! transport option or reference Wharf cannot honour). Nothing is dropped
//! silently. docs/labels.md has the table.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::labels::{Draft, Label, Pair, Problems};
use crate::route::RateLimit;
use crate::values;

/// `traefik.enable` if set (malformed → Error, reported), else `None`: the
/// caller applies `docker.exposed_by_default`, and while that key is not set a
/// routing rule ([`has_rule`]) enables the service as Traefik v1 did (SPEC);
/// once the operator sets `exposed_by_default = false`, a rule never enables on
/// its own (Traefik v2 semantics; security review M5) and `traefik.enable=true`
/// (or `wharf.enable=true`) is needed whatever the labels.
pub(crate) fn enabled(labels: &[Label], pr: &mut Problems) -> Option<Result<bool, ()>> {
    let l = labels.iter().find(|l| l.key == "traefik.enable")?;
    Some(values::boolean(l.value).map_err(|m| pr.error(l, m)))
}

/// Whether the labels carry a Traefik routing rule: v1 `traefik.frontend.rule`
/// (or `traefik.<name>.frontend.rule`) or v2/v3 `traefik.http.routers.<r>.rule`.
pub(crate) fn has_rule(labels: &[Label]) -> bool {
    labels.iter().any(|l| {
        l.key.ends_with(".frontend.rule")
            || (l.key.starts_with("traefik.http.routers.") && l.key.ends_with(".rule"))
    })
}

const UNSUPPORTED: &str = "not supported by Wharf; ignored";

#[derive(Default)]
struct Router<'a> {
    rule: Option<&'a Label<'a>>,
    tls: Option<&'a Label<'a>>,
    certresolver: Option<&'a Label<'a>>,
    middlewares: Option<&'a Label<'a>>,
    service: Option<&'a Label<'a>>,
    entrypoints: Option<&'a Label<'a>>,
    first: Option<&'a Label<'a>>,
}

/// The backend settings of a v2 service or of v1's `traefik.backend.*`.
#[derive(Default, Clone, Copy)]
struct Backend<'a> {
    first: Option<&'a Label<'a>>,
    port: Option<&'a Label<'a>>,
    scheme: Option<&'a Label<'a>>,
    sticky: Option<&'a Label<'a>>,
    sticky_name: Option<&'a Label<'a>>,
    sticky_secure: Option<&'a Label<'a>>,
    sticky_httponly: Option<&'a Label<'a>>,
    sticky_samesite: Option<&'a Label<'a>>,
    sticky_maxage: Option<&'a Label<'a>>,
    sticky_path: Option<&'a Label<'a>>,
    hc_path: Option<&'a Label<'a>>,
    hc_interval: Option<&'a Label<'a>>,
    hc_timeout: Option<&'a Label<'a>>,
    hc_hostname: Option<&'a Label<'a>>,
    hc_method: Option<&'a Label<'a>>,
    hc_status: Option<&'a Label<'a>>,
    hc_port: Option<&'a Label<'a>>,
    /// v2/v3 `loadbalancer.serverstransport`: the name of a servers transport.
    transport: Option<&'a Label<'a>>,
}

/// A v2/v3 servers transport declared by labels
/// (`traefik.http.serverstransports.<name>.<option>`; Traefik spells it
/// `serversTransports`, keys are lower-cased here).
#[derive(Default)]
struct Transport<'a> {
    first: Option<&'a Label<'a>>,
    insecure: Option<&'a Label<'a>>,
    server_name: Option<&'a Label<'a>>,
    root_cas: Option<&'a Label<'a>>,
    cert_file: Option<&'a Label<'a>>,
    key_file: Option<&'a Label<'a>>,
    /// Options Wharf cannot honour, each with why: an error wherever the
    /// transport is used.
    refused: Vec<(&'a Label<'a>, String)>,
}

#[derive(Default, Clone, Copy)]
struct Middleware<'a> {
    first: Option<&'a Label<'a>>,
    rl_average: Option<&'a Label<'a>>,
    rl_burst: Option<&'a Label<'a>>,
    rl_period: Option<&'a Label<'a>>,
    rl_header: Option<&'a Label<'a>>,
    rl_host: Option<&'a Label<'a>>,
    rl_depth: Option<&'a Label<'a>>,
    rl_excluded: Option<&'a Label<'a>>,
    sts_seconds: Option<&'a Label<'a>>,
    sts_subdomains: Option<&'a Label<'a>>,
    sts_preload: Option<&'a Label<'a>>,
    redirect_scheme: Option<&'a Label<'a>>,
}

/// A middleware's options beyond ratelimit/sts/redirectscheme: the ones Wharf
/// enforces (basicauth, ipallowlist, custom headers) and those it cannot, which
/// make every router using the middleware an error (fail closed, review H1).
#[derive(Default)]
struct MwExtra<'a> {
    ba_users: Option<&'a Label<'a>>,
    ba_realm: Option<&'a Label<'a>>,
    ba_remove: Option<&'a Label<'a>>,
    ip_ranges: Option<&'a Label<'a>>,
    ip_depth: Option<&'a Label<'a>>,
    /// (route key, label, value): header rules, including the security headers
    /// Traefik's `headers` middleware sets from booleans.
    headers: Vec<(String, &'a Label<'a>, String)>,
    refused: Vec<(&'a Label<'a>, String)>,
}

/// What Wharf enforces of Traefik's middlewares, for messages.
const ENFORCED_MIDDLEWARES: &str = "Wharf enforces basicauth (users, realm, removeheader), \
     ipallowlist/ipwhitelist (sourcerange, ipstrategy.depth), headers (customrequestheaders, \
     customresponseheaders, sts*, framedeny, customframeoptionsvalue, contenttypenosniff, \
     browserxssfilter, referrerpolicy, contentsecuritypolicy, permissionspolicy), ratelimit and \
     redirectscheme";

/// Sorts one middleware option into `x`; false when it is not one of these.
fn extra_option<'a>(opt: &str, l: &'a Label<'a>, x: &mut MwExtra<'a>) -> bool {
    let refuse = |x: &mut MwExtra<'a>, why: String| x.refused.push((l, why));
    match opt {
        "basicauth.users" => x.ba_users = Some(l),
        "basicauth.realm" => x.ba_realm = Some(l),
        "basicauth.removeheader" => x.ba_remove = Some(l),
        "basicauth.usersfile" => refuse(
            x,
            "basicauth.usersfile names a file in Traefik's container, which labels cannot give \
             Wharf; list the users in basicauth.users"
                .into(),
        ),
        "ipallowlist.sourcerange" | "ipwhitelist.sourcerange" => x.ip_ranges = Some(l),
        "ipallowlist.ipstrategy.depth" | "ipwhitelist.ipstrategy.depth" => x.ip_depth = Some(l),
        "ipallowlist.rejectstatuscode" if l.value.trim() == "403" => {}
        // Other redirectscheme options keep their warnings (no security setting).
        o if o.starts_with("redirectscheme.") => return false,
        o if o.starts_with("headers.customrequestheaders.") => x.headers.push((
            format!(
                "headers.request.{}",
                &o["headers.customrequestheaders.".len()..]
            ),
            l,
            l.value.to_string(),
        )),
        o if o.starts_with("headers.customresponseheaders.") => x.headers.push((
            format!(
                "headers.response.{}",
                &o["headers.customresponseheaders.".len()..]
            ),
            l,
            l.value.to_string(),
        )),
        "headers.framedeny" | "headers.contenttypenosniff" | "headers.browserxssfilter" => {
            match values::boolean(l.value) {
                Ok(true) => {
                    let (name, value) = match opt {
                        "headers.framedeny" => ("X-Frame-Options", "DENY"),
                        "headers.contenttypenosniff" => ("X-Content-Type-Options", "nosniff"),
                        _ => ("X-XSS-Protection", "1; mode=block"),
                    };
                    x.headers
                        .push((format!("headers.response.{name}"), l, value.into()));
                }
                Ok(false) => {}
                Err(m) => refuse(x, m),
            }
        }
        "headers.customframeoptionsvalue"
        | "headers.referrerpolicy"
        | "headers.contentsecuritypolicy"
        | "headers.permissionspolicy" => {
            let name = match opt {
                "headers.customframeoptionsvalue" => "X-Frame-Options",
                "headers.referrerpolicy" => "Referrer-Policy",
                "headers.contentsecuritypolicy" => "Content-Security-Policy",
                _ => "Permissions-Policy",
            };
            x.headers
                .push((format!("headers.response.{name}"), l, l.value.to_string()));
        }
        o => {
            let kind = o.split('.').next().unwrap_or(o);
            let why = match kind {
                "basicauth" | "ipallowlist" | "ipwhitelist" | "headers" => {
                    format!(
                        "the {kind} option `{}` is not one Wharf can honour",
                        &o[kind.len()..].trim_start_matches('.')
                    )
                }
                _ => format!("the `{kind}` middleware is not enforced by Wharf"),
            };
            refuse(x, format!("{why} ({ENFORCED_MIDDLEWARES})"));
        }
    }
    true
}

/// First words of v1 keys that are not segment names.
const V1_WORDS: &[&str] = &[
    "frontend", "backend", "port", "protocol", "weight", "docker", "http", "tcp", "udp", "tags",
    "enable",
];

/// One Traefik v1 frontend with its backend: the root labels or one segment's.
#[derive(Default, Clone, Copy)]
struct V1<'a> {
    rule: Option<&'a Label<'a>>,
    /// `frontend.auth.basic(.users)`, `.removeheader`, `frontend.whitelist.sourcerange`.
    auth_users: Option<&'a Label<'a>>,
    auth_remove: Option<&'a Label<'a>>,
    whitelist: Option<&'a Label<'a>>,
    entrypoints: Option<&'a Label<'a>>,
    redirect: Option<&'a Label<'a>>,
    sts: Middleware<'a>,
    backend: Backend<'a>,
}

impl<'a> V1<'a> {
    /// The slot for a v1 key without `traefik.` (or `traefik.<segment>.`).
    fn slot(&mut self, opt: &str) -> Option<&mut Option<&'a Label<'a>>> {
        Some(match opt {
            "frontend.rule" => &mut self.rule,
            "frontend.auth.basic" | "frontend.auth.basic.users" => &mut self.auth_users,
            "frontend.auth.basic.removeheader" => &mut self.auth_remove,
            "frontend.whitelist.sourcerange" | "frontend.whitelistsourcerange" => {
                &mut self.whitelist
            }
            "frontend.entrypoints" => &mut self.entrypoints,
            "frontend.redirect.entrypoint" => &mut self.redirect,
            "frontend.headers.stsseconds" => &mut self.sts.sts_seconds,
            "frontend.headers.stsincludesubdomains" => &mut self.sts.sts_subdomains,
            "frontend.headers.stspreload" => &mut self.sts.sts_preload,
            "port" => &mut self.backend.port,
            "protocol" => &mut self.backend.scheme,
            "backend.loadbalancer.stickiness" | "backend.loadbalancer.sticky" => {
                &mut self.backend.sticky
            }
            "backend.loadbalancer.stickiness.cookiename" => &mut self.backend.sticky_name,
            "backend.healthcheck.path" => &mut self.backend.hc_path,
            "backend.healthcheck.interval" => &mut self.backend.hc_interval,
            "backend.healthcheck.timeout" => &mut self.backend.hc_timeout,
            "backend.healthcheck.hostname" => &mut self.backend.hc_hostname,
            "backend.healthcheck.port" => &mut self.backend.hc_port,
            _ => return None,
        })
    }

    /// `self` with unset keys taken from `root`.
    fn or(&self, root: &V1<'a>) -> V1<'a> {
        let (b, r) = (&self.backend, &root.backend);
        V1 {
            rule: self.rule.or(root.rule),
            auth_users: self.auth_users.or(root.auth_users),
            auth_remove: self.auth_remove.or(root.auth_remove),
            whitelist: self.whitelist.or(root.whitelist),
            entrypoints: self.entrypoints.or(root.entrypoints),
            redirect: self.redirect.or(root.redirect),
            sts: Middleware {
                first: None,
                sts_seconds: self.sts.sts_seconds.or(root.sts.sts_seconds),
                sts_subdomains: self.sts.sts_subdomains.or(root.sts.sts_subdomains),
                sts_preload: self.sts.sts_preload.or(root.sts.sts_preload),
                ..Middleware::default()
            },
            backend: Backend {
                first: None,
                port: b.port.or(r.port),
                scheme: b.scheme.or(r.scheme),
                sticky: b.sticky.or(r.sticky),
                sticky_name: b.sticky_name.or(r.sticky_name),
                // v2/v3 keys: not read from v1 labels.
                sticky_secure: None,
                sticky_httponly: None,
                sticky_samesite: None,
                sticky_maxage: None,
                sticky_path: None,
                hc_path: b.hc_path.or(r.hc_path),
                hc_interval: b.hc_interval.or(r.hc_interval),
                hc_timeout: b.hc_timeout.or(r.hc_timeout),
                hc_hostname: b.hc_hostname.or(r.hc_hostname),
                hc_method: b.hc_method.or(r.hc_method),
                hc_status: b.hc_status.or(r.hc_status),
                hc_port: b.hc_port.or(r.hc_port),
                // v2/v3 only.
                transport: None,
            },
        }
    }

    /// Some label of this frontend, to attach a warning to.
    fn first(&self) -> Option<&'a Label<'a>> {
        let b = &self.backend;
        [
            self.entrypoints,
            self.redirect,
            self.sts.sts_seconds,
            b.port,
            b.scheme,
            b.sticky,
            b.hc_path,
        ]
        .into_iter()
        .flatten()
        .next()
    }
}

/// What a router's middlewares add to its route.
#[derive(Default, Clone)]
struct Effects {
    pairs: Vec<Pair>,
    redirect: Option<Pair>,
    hsts: bool,
}

/// Translates a service's `traefik.*` labels (keys lower-cased) into route drafts.
/// `exposed_ports` are the service's exposed ports, each once, to tell the backend
/// port when no port label names it.
pub(crate) fn translate(
    service: &str,
    labels: &[Label],
    exposed_ports: &[u16],
    pr: &mut Problems,
) -> Vec<Draft> {
    let mut routers: BTreeMap<String, Router> = BTreeMap::new();
    let mut services: BTreeMap<String, Backend> = BTreeMap::new();
    let mut middlewares: BTreeMap<String, Middleware> = BTreeMap::new();
    let mut extras: BTreeMap<String, MwExtra> = BTreeMap::new();
    let mut transports: BTreeMap<String, Transport> = BTreeMap::new();
    // v1: the root frontend (`traefik.frontend.rule`, ...) and segments
    // (`traefik.<segment>.frontend.rule`, ...), whose unset keys fall back to the root.
    let mut v1 = V1::default();
    let mut segments: BTreeMap<String, V1> = BTreeMap::new();
    let mut network = None;

    for l in labels {
        let k = l.key.as_str();
        if let Some(rest) = k.strip_prefix("traefik.http.routers.") {
            let Some((name, opt)) = rest.split_once('.') else {
                pr.warn(l, UNSUPPORTED);
                continue;
            };
            let r = routers.entry(name.to_string()).or_default();
            r.first.get_or_insert(l);
            let slot = match opt {
                "rule" => &mut r.rule,
                "tls" => &mut r.tls,
                "tls.certresolver" => &mut r.certresolver,
                "middlewares" => &mut r.middlewares,
                "service" => &mut r.service,
                "entrypoints" => &mut r.entrypoints,
                _ => {
                    pr.warn(l, UNSUPPORTED);
                    continue;
                }
            };
            *slot = Some(l);
        } else if let Some(rest) = k.strip_prefix("traefik.http.services.") {
            let Some((name, opt)) = rest.split_once('.') else {
                pr.warn(l, UNSUPPORTED);
                continue;
            };
            let s = services.entry(name.to_string()).or_default();
            s.first.get_or_insert(l);
            let slot = match opt.strip_prefix("loadbalancer.").unwrap_or("") {
                "server.port" => &mut s.port,
                "server.scheme" => &mut s.scheme,
                "sticky.cookie" => &mut s.sticky,
                "sticky.cookie.name" => &mut s.sticky_name,
                "sticky.cookie.secure" => &mut s.sticky_secure,
                "sticky.cookie.httponly" => &mut s.sticky_httponly,
                "sticky.cookie.samesite" => &mut s.sticky_samesite,
                "sticky.cookie.maxage" => &mut s.sticky_maxage,
                "sticky.cookie.path" => &mut s.sticky_path,
                "healthcheck.path" => &mut s.hc_path,
                "healthcheck.interval" => &mut s.hc_interval,
                "healthcheck.timeout" => &mut s.hc_timeout,
                "healthcheck.hostname" => &mut s.hc_hostname,
                "healthcheck.method" => &mut s.hc_method,
                "healthcheck.status" => &mut s.hc_status,
                "healthcheck.port" => &mut s.hc_port,
                "serverstransport" => &mut s.transport,
                "passhostheader" => {
                    pass_host_header(l, pr);
                    continue;
                }
                _ => {
                    pr.warn(l, UNSUPPORTED);
                    continue;
                }
            };
            *slot = Some(l);
        } else if let Some(rest) = k.strip_prefix("traefik.http.serverstransports.") {
            let Some((name, opt)) = rest.split_once('.') else {
                pr.warn(l, UNSUPPORTED);
                continue;
            };
            let t = transports.entry(name.to_string()).or_default();
            t.first.get_or_insert(l);
            match opt {
                "insecureskipverify" => t.insecure = Some(l),
                "servername" => t.server_name = Some(l),
                "rootcas" => t.root_cas = Some(l),
                "certificates[0].certfile" => t.cert_file = Some(l),
                "certificates[0].keyfile" => t.key_file = Some(l),
                other => t.refused.push((l, transport_refusal(other))),
            }
        } else if let Some(rest) = k.strip_prefix("traefik.http.middlewares.") {
            let Some((name, opt)) = rest.split_once('.') else {
                pr.warn(l, UNSUPPORTED);
                continue;
            };
            let m = middlewares.entry(name.to_string()).or_default();
            m.first.get_or_insert(l);
            let slot = match opt {
                "ratelimit.average" => &mut m.rl_average,
                "ratelimit.burst" => &mut m.rl_burst,
                "ratelimit.period" => &mut m.rl_period,
                "ratelimit.sourcecriterion.requestheadername" => &mut m.rl_header,
                "ratelimit.sourcecriterion.requesthost" => &mut m.rl_host,
                "ratelimit.sourcecriterion.ipstrategy.depth" => &mut m.rl_depth,
                "ratelimit.sourcecriterion.ipstrategy.excludedips" => &mut m.rl_excluded,
                "headers.stsseconds" => &mut m.sts_seconds,
                "headers.stsincludesubdomains" => &mut m.sts_subdomains,
                "headers.stspreload" => &mut m.sts_preload,
                "redirectscheme.scheme" => &mut m.redirect_scheme,
                "redirectscheme.permanent" => {
                    if values::boolean(l.value) == Ok(false) {
                        pr.warn(l, "Wharf's redirect to https is always permanent (301/308)");
                    }
                    continue;
                }
                o if !o.starts_with("ratelimit.")
                    && extra_option(o, l, extras.entry(name.to_string()).or_default()) =>
                {
                    continue;
                }
                o if o.starts_with("ratelimit.") => {
                    pr.warn(
                        l,
                        format!(
                            "{UNSUPPORTED} (of ratelimit, Wharf supports average, period, burst \
                             and sourcecriterion.requestheadername, .requesthost and \
                             .ipstrategy.depth)"
                        ),
                    );
                    continue;
                }
                _ => {
                    pr.warn(
                        l,
                        format!(
                            "{UNSUPPORTED} (Wharf supports the middlewares ratelimit (average, \
                             period, burst, sourcecriterion), headers (the sts* keys) and \
                             redirectscheme)"
                        ),
                    );
                    continue;
                }
            };
            *slot = Some(l);
        } else {
            match k {
                "traefik.enable" => continue,
                "traefik.docker.network" => {
                    network = Some(l);
                    continue;
                }
                // Backends come from the service itself; the name groups nothing here.
                "traefik.backend" => continue,
                _ => {}
            }
            let opt = &k["traefik.".len()..];
            if opt.ends_with("passhostheader") {
                pass_host_header(l, pr);
                continue;
            }
            if let Some(slot) = v1.slot(opt) {
                *slot = Some(l);
                continue;
            }
            // `traefik.<segment>.<v1 key>`
            if let Some((seg, rest)) = opt.split_once('.') {
                if !V1_WORDS.contains(&seg) {
                    let entry = segments.entry(seg.to_string()).or_default();
                    if rest == "backend" {
                        continue; // a name only, as at the root
                    }
                    if let Some(slot) = entry.slot(rest) {
                        *slot = Some(l);
                        continue;
                    }
                }
            }
            let sub =
                opt.split_once('.').map_or(
                    opt,
                    |(seg, rest)| {
                        if V1_WORDS.contains(&seg) {
                            opt
                        } else {
                            rest
                        }
                    },
                );
            if sub.starts_with("frontend.auth")
                || sub.starts_with("frontend.whitelist")
                || sub.starts_with("frontend.headers.")
            {
                pr.error(
                    l,
                    "a Traefik v1 auth, whitelist or headers option Wharf cannot enforce; the \
                     frontend is not routed (fail closed). Wharf enforces frontend.auth.basic(.users), \
                     .auth.basic.removeheader, frontend.whitelist.sourcerange and the sts headers",
                );
                continue;
            }
            pr.warn(l, UNSUPPORTED);
        }
    }

    let mut common = Vec::new();
    if let Some(l) = network {
        common.push(Pair::new("network", l.written, l.value));
    }
    let mut drafts = Vec::new();

    // Traefik v1: the root frontend, then each segment's.
    let mut frontends = vec![(service.to_string(), &v1)];
    for (seg, f) in &segments {
        frontends.push((format!("{service}/{seg}"), f));
    }
    for (name, f) in frontends {
        let is_root = std::ptr::eq(f, &v1);
        let own_label = f.first();
        let f = if is_root { *f } else { f.or(&v1) };
        let Some(rule) = f.rule else {
            if !is_root {
                if let Some(l) = own_label {
                    pr.warn(
                        l,
                        "this segment has no frontend.rule (Traefik's default rule is not \
                         supported); ignored",
                    );
                }
            }
            continue;
        };
        let terms = match parse_v1_rule(rule.value, &mut |m| pr.warn(rule, m)) {
            Ok(t) => t,
            Err(m) => {
                pr.error(rule, m);
                continue;
            }
        };
        let backend = backend_pairs(&f.backend, true, exposed_ports, pr);
        let mut fx = Effects::default();
        sts_pairs(&f.sts, &mut fx, pr);
        if let Some(l) = f.auth_users {
            fx.pairs
                .push(Pair::new("basicauth.users", l.written, l.value));
            fx.pairs
                .push(Pair::new("basicauth.realm", l.written, "traefik"));
        }
        if let Some(l) = f.auth_remove {
            fx.pairs
                .push(Pair::new("basicauth.remove_header", l.written, l.value));
        }
        if let Some(l) = f.whitelist {
            fx.pairs
                .push(Pair::new("ipallowlist.ranges", l.written, l.value));
        }
        if let Some(l) = f.redirect {
            // v1 redirects to a named entrypoint, in practice the https one.
            fx.redirect = Some(Pair::new("https_redirect", l.written, "true"));
        }
        let groups = group_by_path(terms);
        let many = groups.len() > 1;
        for (i, (path, hosts)) in groups.into_iter().enumerate() {
            let mut pairs = common.clone();
            pairs.extend(host_path_pairs(&hosts, &path, rule, pr));
            pairs.extend(backend.clone());
            pairs.extend(fx.pairs.clone());
            if !fx.hsts {
                pairs.push(Pair::new("hsts.max_age", rule.written, "0"));
            }
            pairs.extend(fx.redirect.clone());
            if let Some(l) = f.entrypoints {
                pairs.push(Pair::new("entrypoints", l.written, l.value));
            }
            drafts.push(Draft {
                name: match (many, is_root) {
                    (false, _) => name.clone(),
                    (true, true) => format!("{name}/{}", i + 1),
                    (true, false) => format!("{name}.{}", i + 1),
                },
                pairs,
                prefix: "wharf.".into(),
                port_label: f
                    .backend
                    .port
                    .map(|l| l.written.to_string())
                    .unwrap_or_else(|| "traefik.port".into()),
            });
        }
    }

    // Traefik v2/v3: routers → services and middlewares declared on the same service.
    struct Piece<'a> {
        router: String,
        rule: &'a Label<'a>,
        hosts: Vec<String>,
        tls: bool,
        fx: Effects,
        svc: Option<String>,
        entrypoints: Option<&'a Label<'a>>,
    }
    let mut groups: Vec<(String, Vec<Piece>)> = Vec::new();
    let mut used_mw: Vec<String> = Vec::new();
    let mut used_svc: Vec<String> = Vec::new();
    for (rname, r) in &routers {
        let Some(rule) = r.rule else {
            if let Some(l) = r.first {
                pr.warn(
                    l,
                    format!(
                        "router `{rname}` has no rule (Traefik's defaultRule is not supported); \
                         it is ignored"
                    ),
                );
            }
            continue;
        };
        let terms = match parse_v2_rule(rule.value) {
            Ok(t) => t,
            Err(m) => {
                pr.error(rule, m);
                continue;
            }
        };
        let svc = match r.service {
            Some(l) => {
                let name = l.value.trim().to_ascii_lowercase();
                let name = name.strip_suffix("@docker").unwrap_or(&name).to_string();
                if name.contains('@') || !services.contains_key(&name) {
                    pr.error(
                        l,
                        format!(
                            "service `{}` is not defined by this service's labels (Wharf routes \
                             a service's routers only to its own tasks)",
                            l.value
                        ),
                    );
                    continue;
                }
                Some(name)
            }
            None => match services.len() {
                0 => None,
                1 => services.keys().next().cloned(),
                _ => {
                    pr.error(
                        rule,
                        format!(
                            "this service defines several Traefik services; set \
                             traefik.http.routers.{rname}.service"
                        ),
                    );
                    continue;
                }
            },
        };
        let mut fx = Effects::default();
        if let Some(l) = r.middlewares {
            for m in values::list(l.value) {
                let lower = m.to_ascii_lowercase();
                let name = lower.strip_suffix("@docker").unwrap_or(&lower);
                match middlewares.get(name) {
                    Some(mw) if !name.contains('@') => {
                        used_mw.push(name.to_string());
                        middleware_effects(mw, &mut fx, pr);
                        if let Some(x) = extras.get(name) {
                            extra_effects(rname, name, x, &mut fx, pr);
                        }
                    }
                    _ => {
                        let why = if name.contains('@') {
                            "comes from another provider, which Wharf does not read (only \
                             `@docker` middlewares defined by this service's own labels)"
                        } else {
                            "is not defined by this service's labels"
                        };
                        pr.error(
                            l,
                            format!(
                                "router `{rname}`: middleware `{m}` {why}, so Wharf cannot \
                                 enforce it; the router is not created (fail closed). Define it \
                                 with traefik.http.middlewares.<name>.* labels on this service, \
                                 or use wharf.* labels"
                            ),
                        )
                    }
                }
            }
        }
        used_svc.extend(svc.clone());
        let tls = r.tls.is_some_and(|l| match values::boolean(l.value) {
            Ok(b) => b,
            Err(m) => {
                pr.error(l, m);
                false
            }
        }) || r.certresolver.is_some();
        for (path, hosts) in group_by_path(terms) {
            let piece = Piece {
                router: rname.clone(),
                rule,
                hosts,
                tls,
                fx: fx.clone(),
                svc: svc.clone(),
                entrypoints: r.entrypoints,
            };
            // Routers with the same rule (typically one on `web`, one on
            // `websecure`) are one Wharf route.
            match groups
                .iter_mut()
                .find(|(p, g)| *p == path && g[0].hosts == piece.hosts)
            {
                Some((_, g)) => g.push(piece),
                None => groups.push((path, vec![piece])),
            }
        }
    }
    for (name, m) in &middlewares {
        if let (false, Some(l)) = (used_mw.contains(name), m.first) {
            pr.warn(
                l,
                format!("middleware `{name}` is not used by any router of this service; ignored"),
            );
        }
    }
    for (name, b) in &services {
        if let (false, Some(l)) = (used_svc.contains(name), b.first) {
            pr.warn(
                l,
                format!("service `{name}` is not used by any router of this service; ignored"),
            );
        }
    }
    let mut per_router: BTreeMap<String, usize> = BTreeMap::new();
    for (_, g) in &groups {
        *per_router.entry(g[0].router.clone()).or_default() += 1;
    }
    let mut index: BTreeMap<String, usize> = BTreeMap::new();
    // Each service's servers transport, resolved once however many routes use it.
    let mut tls_by_svc: BTreeMap<String, Vec<Pair>> = BTreeMap::new();
    let mut used_tr: Vec<String> = Vec::new();
    for (path, g) in groups {
        let first = &g[0];
        if let Some(other) = g.iter().find(|p| p.svc != first.svc) {
            pr.error(
                other.rule,
                format!(
                    "routers `{}` and `{}` have the same rule but different services",
                    first.router, other.router
                ),
            );
            continue;
        }
        let mut pairs = common.clone();
        pairs.extend(host_path_pairs(&first.hosts, &path, first.rule, pr));
        let backend = first.svc.as_ref().and_then(|s| services.get(s));
        if let Some(b) = backend {
            pairs.extend(backend_pairs(b, false, exposed_ports, pr));
        }
        if let (Some(svc), Some(r)) = (&first.svc, backend.and_then(|b| b.transport)) {
            let tls = tls_by_svc
                .entry(svc.clone())
                .or_insert_with(|| transport_pairs(r, &transports, &mut used_tr, pr));
            pairs.extend(tls.iter().cloned());
        }
        let mut fx = Effects::default();
        for p in &g {
            for pair in &p.fx.pairs {
                match fx.pairs.iter().find(|x| x.key == pair.key) {
                    None => fx.pairs.push(pair.clone()),
                    Some(x)
                        if x.value != pair.value
                            && (pair.key.starts_with("basicauth.")
                                || pair.key.starts_with("ipallowlist.")) =>
                    {
                        pr.error(
                            p.rule,
                            format!(
                                "routers `{}` and `{}` have the same rule but different {} \
                                 middlewares; Wharf serves them as one route, so give them the \
                                 same middlewares",
                                first.router,
                                p.router,
                                pair.key.split('.').next().unwrap_or("")
                            ),
                        );
                    }
                    Some(_) => {}
                }
            }
            fx.hsts |= p.fx.hsts;
            if fx.redirect.is_none() {
                fx.redirect = p.fx.redirect.clone();
            }
        }
        pairs.extend(fx.pairs);
        if !fx.hsts {
            pairs.push(Pair::new("hsts.max_age", first.rule.written, "0"));
        }
        let any_tls = g.iter().any(|p| p.tls);
        let any_plain = g.iter().any(|p| !p.tls);
        // A router without `tls` may still be HTTPS in Traefik (TLS set on its
        // entrypoint, which labels do not show), so it keeps Wharf's default of TLS
        // with a redirect; only a plain router beside a TLS one with the same rule
        // and no redirect says "serve plain HTTP too".
        match (&fx.redirect, any_tls) {
            (Some(r), _) => pairs.push(r.clone()),
            (None, true) if any_plain => {
                pairs.push(Pair::new("https_redirect", first.rule.written, "false"))
            }
            _ => {}
        }
        if g.iter().all(|p| p.entrypoints.is_some()) {
            let mut eps: Vec<String> = Vec::new();
            for p in &g {
                if let Some(l) = p.entrypoints {
                    for e in values::list(l.value) {
                        if !eps.contains(&e) {
                            eps.push(e);
                        }
                    }
                }
            }
            if let Some(l) = first.entrypoints {
                pairs.push(Pair::new("entrypoints", l.written, eps.join(",")));
            }
        }
        let name = if per_router[&first.router] > 1 {
            let i = index.entry(first.router.clone()).or_default();
            *i += 1;
            format!("{service}/{}.{i}", first.router)
        } else {
            format!("{service}/{}", first.router)
        };
        let svc_name = first.svc.clone().unwrap_or_else(|| "<name>".into());
        drafts.push(Draft {
            name,
            pairs,
            prefix: "wharf.".into(),
            port_label: format!("traefik.http.services.{svc_name}.loadbalancer.server.port"),
        });
    }
    for (name, t) in &transports {
        if let (false, Some(l)) = (used_tr.contains(name), t.first) {
            pr.warn(
                l,
                format!(
                    "servers transport `{name}` is not used by any routed service of this \
                     service's labels; ignored"
                ),
            );
        }
    }
    drafts
}

/// What Wharf supports of a servers transport, for messages.
const TRANSPORT_OPTIONS: &str = "Wharf supports insecureskipverify, servername, rootcas (one \
     file) and certificates[0].certfile / .keyfile";

/// Why a servers transport option cannot be honoured (`opt` lower-cased, after
/// `traefik.http.serverstransports.<name>.`).
fn transport_refusal(opt: &str) -> String {
    let why = if opt.starts_with("certificates[") {
        "Wharf presents one client certificate to a backend, \
         certificates[0].certfile with certificates[0].keyfile"
            .to_string()
    } else if opt.starts_with("rootcas") {
        "write the CA file as `rootcas=<file>`".to_string()
    } else if opt.starts_with("forwardingtimeouts.") {
        "Wharf's timeouts to backends are the same for every route ([upstream] \
         connect_timeout, response_timeout and idle_timeout in the config file)"
            .to_string()
    } else if opt == "maxidleconnsperhost" {
        "Wharf keeps the same number of idle connections to every backend ([upstream] \
         max_idle_per_backend in the config file)"
            .to_string()
    } else if opt == "disablehttp2" {
        "Wharf offers h2 and http/1.1 to an HTTPS backend (ALPN) and cannot turn HTTP/2 off \
         for one route"
            .to_string()
    } else if opt == "peercerturi" || opt.starts_with("spiffe") {
        "Wharf does not check a backend's SPIFFE or URI identity".to_string()
    } else {
        format!("`{opt}` is not a servers transport option Wharf knows")
    };
    format!(
        "{why}; a servers transport setting Wharf cannot honour is an error, never ignored: \
         remove it ({TRANSPORT_OPTIONS})"
    )
}

/// The `backend_tls.*` keys of a service's `loadbalancer.serverstransport` (`r`),
/// which must name a transport these labels define: one of another provider
/// (`@file`, `@internal`, ...) or not defined here cannot be honoured, and
/// neither can an option Wharf does not support; each is an error.
fn transport_pairs(
    r: &Label,
    transports: &BTreeMap<String, Transport>,
    used: &mut Vec<String>,
    pr: &mut Problems,
) -> Vec<Pair> {
    let value = r.value.trim();
    if value.is_empty() {
        return Vec::new(); // Traefik: the default transport
    }
    let lower = value.to_ascii_lowercase();
    let (name, provider) = match lower.split_once('@') {
        Some((n, p)) => (n, Some(p)),
        None => (lower.as_str(), None),
    };
    match provider {
        // Labels: Traefik's Docker provider, or v3's Swarm provider.
        None | Some("docker" | "swarm") => {}
        Some("internal") => {
            pr.error(
                r,
                format!(
                    "`{value}` is Traefik's default servers transport, set in Traefik's static \
                     configuration, which Wharf cannot read; remove this label (Wharf verifies \
                     an HTTPS backend against the system roots by default) or set \
                     wharf.backend-tls.* labels"
                ),
            );
            return Vec::new();
        }
        Some(p) => {
            pr.error(
                r,
                format!(
                    "`{value}` is a servers transport of Traefik's `{p}` provider, which Wharf \
                     cannot read; define it on this service with \
                     traefik.http.serverstransports.{name}.<option> labels ({TRANSPORT_OPTIONS}), \
                     or set wharf.backend-tls.* labels"
                ),
            );
            return Vec::new();
        }
    }
    let Some(t) = transports.get(name) else {
        pr.error(
            r,
            format!(
                "servers transport `{name}` is not defined by this service's labels, so Wharf \
                 cannot honour it; define it here with \
                 traefik.http.serverstransports.{name}.<option> labels ({TRANSPORT_OPTIONS}), \
                 or set wharf.backend-tls.* labels"
            ),
        );
        return Vec::new();
    };
    if !used.iter().any(|u| u == name) {
        used.push(name.to_string());
    }
    for (l, why) in &t.refused {
        pr.error(l, why.clone());
    }
    let mut pairs = Vec::new();
    if let Some(l) = t.insecure {
        match values::boolean(l.value) {
            Ok(true) => pairs.push(Pair::from_label("backend_tls.insecure", l, "true")),
            Ok(false) => {} // Traefik's default: verify
            // Reported by the route parser, naming this label.
            Err(_) => pairs.push(Pair::new("backend_tls.insecure", l.written, l.value)),
        }
    }
    if let Some(l) = t.server_name.filter(|l| !l.value.trim().is_empty()) {
        pairs.push(Pair::new("backend_tls.server_name", l.written, l.value));
    }
    if let Some(l) = t.root_cas {
        match values::list(l.value).as_slice() {
            [] => {}
            [one] => pairs.push(Pair::from_label("backend_tls.ca", l, one.clone())),
            many => pr.error(
                l,
                format!(
                    "Wharf trusts one CA file per route and rootcas names {}: put the \
                     certificates into one PEM file and name that",
                    many.len()
                ),
            ),
        }
    }
    for (key, l) in [
        ("backend_tls.client_cert", t.cert_file),
        ("backend_tls.client_key", t.key_file),
    ] {
        if let Some(l) = l.filter(|l| !l.value.trim().is_empty()) {
            pairs.push(Pair::new(key, l.written, l.value));
        }
    }
    pairs
}

fn pass_host_header(l: &Label, pr: &mut Problems) {
    if values::boolean(l.value) != Ok(true) {
        pr.warn(l, "Wharf always passes the client's Host header; ignored");
    }
}

/// A Traefik duration: `10s`, `1m`, or a bare number of seconds.
fn duration(v: &str) -> Result<Duration, String> {
    let v = v.trim();
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        return values::number::<u64>(v, "number of seconds").map(Duration::from_secs);
    }
    values::duration(v)
}

/// A Traefik duration label as a route key; problems show the value as written.
fn duration_pair(
    key: &str,
    l: &Label,
    pairs: &mut Vec<Pair>,
    pr: &mut Problems,
) -> Option<Duration> {
    match duration(l.value) {
        Ok(d) => {
            pairs.push(Pair::from_label(
                key,
                l,
                humantime::format_duration(d).to_string(),
            ));
            Some(d)
        }
        Err(m) => {
            pr.error(l, m);
            None
        }
    }
}

/// Traefik's health check defaults (v1 and v2/v3 alike).
const TRAEFIK_HC_INTERVAL: Duration = Duration::from_secs(30);
const TRAEFIK_HC_TIMEOUT: Duration = Duration::from_secs(5);

fn backend_pairs(b: &Backend, v1: bool, exposed_ports: &[u16], pr: &mut Problems) -> Vec<Pair> {
    let mut pairs = Vec::new();
    if let Some(l) = b.port {
        pairs.push(Pair::new("port", l.written, l.value));
    }
    if let Some(l) = b.scheme {
        pairs.push(Pair::new("scheme", l.written, l.value));
    }
    sticky_pairs(b, v1, &mut pairs, pr);
    match b.hc_path {
        Some(l) => {
            pairs.push(Pair::new("healthcheck.path", l.written, l.value));
            // Traefik's health check: GET, every 30s, 5s timeout, one result
            // flips, any 2xx or 3xx passes (Wharf's default `expect`).
            let method = match b.hc_method {
                Some(m) => Pair::new("healthcheck.method", m.written, m.value),
                None => Pair::from_label("healthcheck.method", l, "GET"),
            };
            pairs.push(method);
            pairs.push(Pair::from_label("healthcheck.rise", l, "1"));
            pairs.push(Pair::from_label("healthcheck.fall", l, "1"));
            let interval = match b.hc_interval {
                Some(i) => duration_pair("healthcheck.interval", i, &mut pairs, pr),
                None => {
                    let d = TRAEFIK_HC_INTERVAL;
                    let shown = humantime::format_duration(d).to_string();
                    pairs.push(Pair::from_label("healthcheck.interval", l, shown));
                    Some(d)
                }
            };
            match b.hc_timeout {
                Some(t) => {
                    duration_pair("healthcheck.timeout", t, &mut pairs, pr);
                }
                None => {
                    // Traefik runs a check with an interval shorter than its 5s
                    // timeout; Wharf ends a check before the next one starts, so a
                    // short interval gets half of itself as the timeout.
                    let (t, from) = match (interval, b.hc_interval) {
                        (Some(i), Some(il)) if i <= TRAEFIK_HC_TIMEOUT => (i / 2, il),
                        _ => (TRAEFIK_HC_TIMEOUT, l),
                    };
                    // A zero interval is reported on its own label.
                    if !t.is_zero() {
                        pairs.push(Pair::from_label(
                            "healthcheck.timeout",
                            from,
                            humantime::format_duration(t).to_string(),
                        ));
                    }
                }
            }
            if let Some(h) = b.hc_hostname {
                pairs.push(Pair::new("healthcheck.host", h.written, h.value));
            }
            if let Some(st) = b.hc_status {
                // Traefik's `status` is the one code that passes.
                match values::number::<u16>(st.value, "status code") {
                    Ok(code) if (100..=599).contains(&code) => pairs.push(Pair::new(
                        "healthcheck.expect",
                        st.written,
                        code.to_string(),
                    )),
                    _ => pr.error(
                        st,
                        format!(
                            "`{}` is not a status code; Traefik's healthcheck.status is one \
                             code from 100 to 599, e.g. `200`",
                            st.value
                        ),
                    ),
                }
            }
            if let Some(p) = b.hc_port {
                hc_port(p, b.port, exposed_ports, pr);
            }
        }
        None => {
            for l in [
                b.hc_interval,
                b.hc_timeout,
                b.hc_hostname,
                b.hc_method,
                b.hc_status,
                b.hc_port,
            ]
            .into_iter()
            .flatten()
            {
                pr.warn(l, "has no effect without a health check path");
            }
        }
    }
    pairs
}

/// A health check port: Wharf checks each backend on the port it sends requests
/// to, so the same port is accepted and any other is an error (checking the wrong
/// port would mark backends up or down on another server's word).
fn hc_port(p: &Label, port: Option<&Label>, exposed_ports: &[u16], pr: &mut Problems) {
    let n = match values::number::<u16>(p.value, "port") {
        Ok(n) if n != 0 => n,
        Ok(_) => return pr.error(p, "port 0 is not a port"),
        Err(m) => return pr.error(p, m),
    };
    let serving = match port {
        Some(l) => values::number::<u16>(l.value, "port").ok(),
        None => match exposed_ports {
            [only] => Some(*only),
            _ => None,
        },
    };
    if serving == Some(n) {
        return; // the port Wharf checks anyway
    }
    let on = serving.map(|s| format!(" ({s})")).unwrap_or_default();
    pr.error(
        p,
        format!(
            "a separate health check port is not supported: Wharf checks each backend on the \
             port it sends requests to{on}; remove this label, or serve the check path on that \
             port"
        ),
    );
}

/// Cookie stickiness: v1 `backend.loadbalancer.stickiness` (+ `.cookiename`),
/// v2/v3 `loadbalancer.sticky.cookie` (+ `.name`, `.secure`, `.httponly`,
/// `.samesite`, `.maxage`, `.path`).
///
/// With no name given, Traefik (v1 and v2/v3 alike) names the cookie after a
/// hash of the backend or service name; Wharf keeps its own default, `WHARFID`
/// ([`crate::route::Sticky::DEFAULT_COOKIE`]): a client's old Traefik cookie is
/// not read either way, so the name only needs to be stable, and Wharf's is.
fn sticky_pairs(b: &Backend, v1: bool, pairs: &mut Vec<Pair>, pr: &mut Problems) {
    let options = [
        b.sticky_name,
        b.sticky_secure,
        b.sticky_httponly,
        b.sticky_samesite,
        b.sticky_maxage,
        b.sticky_path,
    ];
    let sticky = match b.sticky {
        Some(l) => match values::boolean(l.value) {
            Ok(on) => on,
            Err(m) => {
                pr.error(l, m);
                false
            }
        },
        // v2: setting any cookie option enables the sticky cookie.
        None => !v1 && options.iter().any(Option::is_some),
    };
    if !sticky {
        for l in options.into_iter().flatten() {
            pr.warn(l, "has no effect without stickiness enabled");
        }
        return;
    }
    if let Some(l) = b.sticky.or(options.into_iter().flatten().next()) {
        pairs.push(Pair::new("sticky.type", l.written, "cookie"));
    }
    if let Some(l) = b.sticky_name {
        pairs.push(Pair::new("sticky.cookie", l.written, l.value));
    }
    // Wharf's cookie is always HttpOnly and SameSite=Lax, Secure when the client
    // came over TLS, and has Path=/: a setting that asks for the same is
    // accepted silently, any other is a warning naming its key.
    if let Some(l) = b.sticky_secure {
        if values::boolean(l.value) != Ok(true) {
            pr.warn(
                l,
                "Wharf's sticky cookie is Secure whenever the client came over TLS (and only \
                 then); this setting is ignored",
            );
        }
    }
    if let Some(l) = b.sticky_httponly {
        if values::boolean(l.value) != Ok(true) {
            pr.warn(
                l,
                "Wharf's sticky cookie is always HttpOnly; this setting is ignored",
            );
        }
    }
    if let Some(l) = b.sticky_samesite {
        if !l.value.trim().eq_ignore_ascii_case("lax") {
            pr.warn(
                l,
                "Wharf's sticky cookie is always SameSite=Lax; this setting is ignored",
            );
        }
    }
    if let Some(l) = b.sticky_path {
        if l.value.trim() != "/" {
            pr.warn(
                l,
                "Wharf's sticky cookie always has Path=/ (one backend per client for the whole \
                 site); this setting is ignored",
            );
        }
    }
    if let Some(l) = b.sticky_maxage {
        match l.value.trim().parse::<i64>() {
            // Traefik: 0 (the default) sends a session cookie, as Wharf does
            // without sticky.ttl.
            Ok(0) => {}
            Ok(n) if n > 0 => pairs.push(Pair::from_label("sticky.ttl", l, format!("{n}s"))),
            Ok(_) => pr.warn(
                l,
                "a negative maxAge makes Traefik's cookie expire at once (no stickiness); \
                 Wharf ignores it and sends a session cookie",
            ),
            Err(_) => pr.error(
                l,
                format!(
                    "`{}` is not a number of seconds; write e.g. `3600`, or `0` for a session \
                     cookie",
                    l.value
                ),
            ),
        }
    }
}

fn sts_pairs(m: &Middleware, fx: &mut Effects, pr: &mut Problems) {
    if let Some(l) = m.sts_seconds {
        fx.hsts = true;
        fx.pairs.push(Pair::new("hsts.max_age", l.written, l.value));
    }
    for (key, l) in [
        ("hsts.subdomains", m.sts_subdomains),
        ("hsts.preload", m.sts_preload),
    ] {
        if let Some(l) = l {
            if m.sts_seconds.is_none() {
                pr.warn(l, "has no effect without stsSeconds");
            } else {
                fx.pairs.push(Pair::new(key, l.written, l.value));
            }
        }
    }
}

fn middleware_effects(m: &Middleware, fx: &mut Effects, pr: &mut Problems) {
    sts_pairs(m, fx, pr);
    if let Some(l) = m.redirect_scheme {
        if l.value.trim().eq_ignore_ascii_case("https") {
            fx.redirect = Some(Pair::new("https_redirect", l.written, "true"));
        } else {
            pr.warn(l, "Wharf only redirects to https; ignored");
        }
    }
    match m.rl_average {
        Some(avg) => ratelimit_effects(avg, m, fx, pr),
        None => {
            for l in [
                m.rl_burst,
                m.rl_period,
                m.rl_header,
                m.rl_host,
                m.rl_depth,
                m.rl_excluded,
            ]
            .into_iter()
            .flatten()
            {
                pr.warn(l, "has no effect without ratelimit.average");
            }
        }
    }
}

/// A middleware's basicauth, ipallowlist and header options as route keys, or
/// an error per option Wharf cannot honour (the router is then not created).
fn extra_effects(router: &str, name: &str, x: &MwExtra, fx: &mut Effects, pr: &mut Problems) {
    for (l, why) in &x.refused {
        pr.error(
            l,
            format!(
                "router `{router}` uses middleware `{name}`: {why}; the router is not created \
                 (fail closed)"
            ),
        );
    }
    let mut add = |key: &str, l: &Label, value: &str, pr: &mut Problems| {
        if fx.pairs.iter().any(|p| p.key == key) {
            pr.error(
                l,
                format!(
                    "router `{router}`: `{key}` is set by two of its middlewares; Wharf enforces \
                     one per route, so merge them into one middleware"
                ),
            );
            return;
        }
        fx.pairs.push(Pair::from_label(key, l, value));
    };
    if let Some(l) = x.ba_users {
        add("basicauth.users", l, l.value, pr);
        // Traefik's default realm.
        if x.ba_realm.is_none() {
            add("basicauth.realm", l, "traefik", pr);
        }
    }
    for (key, l) in [
        ("basicauth.realm", x.ba_realm),
        ("basicauth.remove_header", x.ba_remove),
        ("ipallowlist.ranges", x.ip_ranges),
        ("ipallowlist.depth", x.ip_depth),
    ] {
        if let Some(l) = l {
            add(key, l, l.value, pr);
        }
    }
    for (key, l, value) in &x.headers {
        add(key, l, value, pr);
    }
}

/// Traefik's rateLimit: `average` requests per `period` (default 1s; an average
/// of 0 is no limit), a bucket of `burst` (default 1, and a smaller one counts as
/// 1), counted per client address unless `sourceCriterion` names a request
/// header or the host (Traefik refuses more than one criterion).
fn ratelimit_effects(avg: &Label, m: &Middleware, fx: &mut Effects, pr: &mut Problems) {
    let average = match values::number::<u64>(avg.value, "average (requests per period)") {
        Ok(a) => a,
        Err(msg) => {
            return pr.error(
                avg,
                format!("{msg}; write a whole number of requests, e.g. `100` (0: no limit)"),
            )
        }
    };
    if average == 0 {
        return; // Traefik: 0 means no rate limit.
    }
    let period = match m.rl_period.map(|p| (p, duration(p.value))) {
        None => Duration::from_secs(1),
        Some((_, Ok(d))) if !d.is_zero() => d,
        Some((p, Ok(_))) => {
            return pr.error(
                p,
                "the period must be longer than zero; write e.g. `1s` (the default) or `1m`",
            )
        }
        Some((p, Err(msg))) => return pr.error(p, msg),
    };
    let per_second = exact_rate(average, period);
    let period_text = humantime::format_duration(period);
    if per_second > RateLimit::MAX_PER_SECOND {
        return pr.error(
            avg,
            format!(
                "{average} requests per {period_text} is more than 1000000 requests per second, \
                 which limits nothing; remove the middleware (or set average to 0) for no limit"
            ),
        );
    }
    if per_second < RateLimit::MIN_PER_SECOND {
        return pr.error(
            m.rl_period.unwrap_or(avg),
            format!(
                "{average} request(s) per {period_text} is less than one request per day, the \
                 slowest rate Wharf keeps; write a shorter period or a larger average"
            ),
        );
    }
    let (text, exact) = rate_text(average, period);
    let mut rate = Pair::from_label("ratelimit.rate", avg, text);
    if !exact {
        rate.per_second = Some(per_second);
    }
    fx.pairs.push(rate);
    let burst = match m.rl_burst {
        Some(b) => match values::number::<u64>(b.value, "burst") {
            Ok(n) => Pair::from_label(
                "ratelimit.burst",
                b,
                n.clamp(1, u32::MAX.into()).to_string(),
            ),
            Err(msg) => {
                return pr.error(
                    b,
                    format!("{msg}; write a whole number of requests, e.g. `50` (default 1)"),
                )
            }
        },
        None => Pair::from_label("ratelimit.burst", avg, "1"),
    };
    fx.pairs.push(burst);

    // sourceCriterion: one of ipStrategy, requestHeaderName, requestHost; none
    // is the client address. An empty header name or requestHost=false is unset,
    // as in Traefik.
    let header = m.rl_header.filter(|l| !l.value.trim().is_empty());
    let host = match m.rl_host.map(|l| (l, values::boolean(l.value))) {
        Some((l, Err(msg))) => return pr.error(l, msg),
        Some((l, Ok(true))) => Some(l),
        _ => None,
    };
    let ip = m.rl_depth.or(m.rl_excluded);
    let chosen: Vec<&Label> = [ip, header, host].into_iter().flatten().collect();
    if let [first, second, ..] = chosen[..] {
        return pr.error(
            second,
            format!(
                "Traefik's sourceCriterion takes one of ipStrategy, requestHeaderName and \
                 requestHost, and refuses this middleware with two (also `{}`); keep one",
                first.written
            ),
        );
    }
    if let Some(l) = header {
        fx.pairs.push(Pair::from_label(
            "ratelimit.key",
            l,
            format!("header:{}", l.value.trim()),
        ));
    }
    if let Some(l) = host {
        fx.pairs
            .push(Pair::from_label("ratelimit.key", l, "header:host"));
    }
    if let Some(l) = m.rl_depth {
        match values::number::<u32>(l.value, "depth") {
            Ok(0) => {}
            Ok(_) => pr.warn(
                l,
                "Wharf counts requests by the client address (from the PROXY protocol, and \
                 X-Forwarded-For only from the entrypoint's forwarded_trusted peers), not by a \
                 position in X-Forwarded-For; this depth is ignored",
            ),
            Err(msg) => return pr.error(l, format!("{msg}; write e.g. `0` or `1`")),
        }
    }
    if let Some(l) = m.rl_excluded {
        pr.warn(
            l,
            format!(
                "{UNSUPPORTED}: Wharf counts requests by the client address (from the PROXY \
                 protocol, and X-Forwarded-For only from the entrypoint's forwarded_trusted \
                 peers)"
            ),
        );
    }
}

/// `average` per `period` in requests per second, rounded once (the quotient of
/// two integers reduced to lowest terms, each exact in an f64 up to 2^53).
fn exact_rate(average: u64, period: Duration) -> f64 {
    let num = u128::from(average) * 1_000_000_000;
    let den = period.as_nanos().max(1);
    let (mut a, mut b) = (num, den);
    while b != 0 {
        (a, b) = (b, a % b);
    }
    (num / a) as f64 / (den / a) as f64
}

/// `average` per `period` as `N/s`, `N/m` or `N/h` when exact; else `1/s` (a
/// placeholder that parses) and false.
fn rate_text(average: u64, period: Duration) -> (String, bool) {
    let ms = period.as_millis();
    if ms == 0 || !period.subsec_nanos().is_multiple_of(1_000_000) {
        return ("1/s".into(), false);
    }
    for (unit, per) in [("s", 1_000u128), ("m", 60_000), ("h", 3_600_000)] {
        let num = u128::from(average) * per;
        if num % ms == 0 {
            let n = num / ms;
            if n > 0 && n <= u128::from(u32::MAX) {
                return (format!("{n}/{unit}"), true);
            }
        }
    }
    ("1/s".into(), false)
}

fn host_path_pairs(hosts: &[String], path: &str, rule: &Label, pr: &mut Problems) -> Vec<Pair> {
    let hosts = if hosts.is_empty() {
        pr.warn(
            rule,
            "matches any host: Wharf serves it as the `*` default route, which a more \
             specific host's route wins over",
        );
        "*".to_string()
    } else {
        hosts.join(",")
    };
    vec![
        Pair::from_label("host", rule, hosts),
        Pair::from_label("path", rule, path),
    ]
}

/// One alternative of a rule in disjunctive normal form: hosts (`None` = any) and
/// a path prefix (`None` = `/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Term {
    pub hosts: Option<Vec<String>>,
    pub path: Option<String>,
}

/// Merges alternatives that share a path prefix: `(path, hosts)`, hosts empty = any.
fn group_by_path(terms: Vec<Term>) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Option<Vec<String>>)> = Vec::new();
    for t in terms {
        let path = t.path.unwrap_or_else(|| "/".into());
        match out.iter_mut().find(|(p, _)| *p == path) {
            Some((_, hosts)) => match (hosts.as_mut(), t.hosts) {
                (Some(h), Some(new)) => {
                    for n in new {
                        if !h.contains(&n) {
                            h.push(n);
                        }
                    }
                }
                _ => *hosts = None,
            },
            None => out.push((path, t.hosts)),
        }
    }
    out.into_iter()
        .map(|(p, h)| (p, h.unwrap_or_default()))
        .collect()
}

/// Most alternatives a rule may expand to; a hostile label cannot blow up memory.
const MAX_TERMS: usize = 64;
/// Deepest parenthesis nesting accepted; a hostile label cannot overflow the stack.
const MAX_DEPTH: usize = 16;

const SUBSET: &str = "Wharf understands Host, PathPrefix, &&, || and parentheses";

/// Traefik v1 `frontend.rule`: matchers separated by `;` (all must match), each
/// `Name:v1,v2` (any value matches). `PathPrefixStrip` routes like `PathPrefix`
/// without stripping, with a warning.
pub fn parse_v1_rule(rule: &str, warn: &mut dyn FnMut(String)) -> Result<Vec<Term>, String> {
    let mut hosts: Option<Vec<String>> = None;
    let mut paths: Option<Vec<String>> = None;
    for part in rule.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, vals) = part
            .split_once(':')
            .ok_or_else(|| format!("`{part}` is not a matcher; write e.g. `Host:example.org`"))?;
        let vals = values::list(vals);
        if vals.is_empty() {
            return Err(format!("`{part}` has no value"));
        }
        match name.trim().to_ascii_lowercase().as_str() {
            "host" => {
                let vals: Vec<String> = vals.iter().map(|v| v.to_ascii_lowercase()).collect();
                hosts = Some(match hosts {
                    None => vals,
                    Some(h) => {
                        let both: Vec<String> =
                            h.into_iter().filter(|x| vals.contains(x)).collect();
                        if both.is_empty() {
                            return Err(
                                "two Host matchers with no host in common never match".into()
                            );
                        }
                        both
                    }
                });
            }
            n @ ("pathprefix" | "pathprefixstrip") => {
                if paths.is_some() {
                    return Err("more than one PathPrefix matcher is not supported".into());
                }
                if n == "pathprefixstrip" {
                    warn(
                        "PathPrefixStrip is routed as PathPrefix: Wharf does not strip the \
                         prefix, so the backend sees the full path"
                            .into(),
                    );
                }
                // Each value becomes one alternative holding the whole host
                // list: bounded like a v2 rule's expansion, so memory stays
                // linear in the label (found by fuzz/traefik_rule).
                if vals.len() > MAX_TERMS {
                    return Err(format!(
                        "more than {MAX_TERMS} PathPrefix values; split the service's routes"
                    ));
                }
                paths = Some(vals);
            }
            _ => {
                return Err(format!(
                    "the `{}` matcher is not supported ({SUBSET}; in v1 syntax Host: and \
                     PathPrefix:)",
                    name.trim()
                ))
            }
        }
    }
    if hosts.is_none() && paths.is_none() {
        return Err("the rule is empty".into());
    }
    Ok(match paths {
        None => vec![Term { hosts, path: None }],
        Some(ps) => ps
            .into_iter()
            .map(|p| Term {
                hosts: hosts.clone(),
                path: Some(p),
            })
            .collect(),
    })
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    LParen,
    RParen,
    Comma,
    And,
    Or,
    Not,
}

fn lex(rule: &str) -> Result<Vec<Tok>, String> {
    let mut out = Vec::new();
    let mut it = rule.char_indices().peekable();
    while let Some((i, c)) = it.next() {
        match c {
            c if c.is_whitespace() => {}
            '(' => out.push(Tok::LParen),
            ')' => out.push(Tok::RParen),
            ',' => out.push(Tok::Comma),
            '!' => out.push(Tok::Not),
            '&' | '|' => {
                if it.next_if(|(_, n)| *n == c).is_none() {
                    return Err(format!("`{c}` at position {i}: write `&&` or `||`"));
                }
                out.push(if c == '&' { Tok::And } else { Tok::Or });
            }
            '`' | '"' => {
                let mut s = String::new();
                loop {
                    match it.next() {
                        None => return Err(format!("unterminated string at position {i}")),
                        Some((_, '\\')) if c == '"' => {
                            if let Some((_, e)) = it.next() {
                                s.push(e);
                            }
                        }
                        Some((_, q)) if q == c => break,
                        Some((_, ch)) => s.push(ch),
                    }
                }
                out.push(Tok::Str(s));
            }
            c if c.is_ascii_alphanumeric() || c == '_' => {
                let mut s = String::from(c);
                while let Some((_, n)) = it.next_if(|(_, n)| n.is_ascii_alphanumeric() || *n == '_')
                {
                    s.push(n);
                }
                out.push(Tok::Ident(s));
            }
            other => return Err(format!("unexpected `{other}` at position {i}")),
        }
    }
    Ok(out)
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }
    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).cloned();
        self.pos += 1;
        t
    }
    fn or(&mut self, depth: usize) -> Result<Vec<Term>, String> {
        let mut terms = self.and(depth)?;
        while self.peek() == Some(&Tok::Or) {
            self.pos += 1;
            terms.extend(self.and(depth)?);
            if terms.len() > MAX_TERMS {
                return Err("the rule is too complex".into());
            }
        }
        Ok(terms)
    }
    fn and(&mut self, depth: usize) -> Result<Vec<Term>, String> {
        let mut terms = self.unary(depth)?;
        while self.peek() == Some(&Tok::And) {
            self.pos += 1;
            let right = self.unary(depth)?;
            let mut out = Vec::new();
            for a in &terms {
                for b in &right {
                    out.push(conjoin(a, b)?);
                    if out.len() > MAX_TERMS {
                        return Err("the rule is too complex".into());
                    }
                }
            }
            terms = out;
        }
        Ok(terms)
    }
    fn unary(&mut self, depth: usize) -> Result<Vec<Term>, String> {
        match self.next() {
            Some(Tok::Not) => Err(format!("negation (`!`) is not supported ({SUBSET})")),
            Some(Tok::LParen) => {
                if depth >= MAX_DEPTH {
                    return Err("parentheses are nested too deeply".into());
                }
                let t = self.or(depth + 1)?;
                match self.next() {
                    Some(Tok::RParen) => Ok(t),
                    _ => Err("a `(` is not closed".into()),
                }
            }
            Some(Tok::Ident(name)) => {
                if self.next() != Some(Tok::LParen) {
                    return Err(format!("`{name}` must be followed by `(`"));
                }
                let mut args = Vec::new();
                loop {
                    match self.next() {
                        Some(Tok::Str(s)) => args.push(s),
                        _ => {
                            return Err(format!(
                                "`{name}(...)` takes quoted values, e.g. {name}(`example.org`)"
                            ))
                        }
                    }
                    match self.next() {
                        Some(Tok::Comma) => continue,
                        Some(Tok::RParen) => break,
                        _ => return Err(format!("`{name}(` is not closed")),
                    }
                }
                matcher(&name, args)
            }
            Some(t) => Err(format!("unexpected {t:?} where a matcher was expected")),
            None => Err("the rule ends where a matcher was expected".into()),
        }
    }
}

fn matcher(name: &str, args: Vec<String>) -> Result<Vec<Term>, String> {
    match name.to_ascii_lowercase().as_str() {
        // v2 allows several hosts in one Host(); v3 takes one. Both read the same.
        "host" => Ok(vec![Term {
            hosts: Some(args.iter().map(|h| h.trim().to_ascii_lowercase()).collect()),
            path: None,
        }]),
        "pathprefix" => args
            .into_iter()
            .map(|p| {
                if p.contains('{') {
                    Err(format!(
                        "PathPrefix(`{p}`) uses a pattern; Wharf matches plain prefixes only"
                    ))
                } else {
                    Ok(Term {
                        hosts: None,
                        path: Some(p),
                    })
                }
            })
            .collect(),
        _ => Err(format!("the `{name}` matcher is not supported ({SUBSET})")),
    }
}

/// `a && b` for two alternatives.
fn conjoin(a: &Term, b: &Term) -> Result<Term, String> {
    let hosts = match (&a.hosts, &b.hosts) {
        (Some(x), Some(y)) => {
            let both: Vec<String> = x.iter().filter(|h| y.contains(h)).cloned().collect();
            if both.is_empty() {
                return Err(format!(
                    "Host({}) && Host({}) never matches",
                    x.join(","),
                    y.join(",")
                ));
            }
            Some(both)
        }
        (x, y) => x.clone().or_else(|| y.clone()),
    };
    let path = match (&a.path, &b.path) {
        (Some(x), Some(y)) if y.starts_with(x.as_str()) => Some(y.clone()),
        (Some(x), Some(y)) if x.starts_with(y.as_str()) => Some(x.clone()),
        (Some(x), Some(y)) => {
            return Err(format!(
                "PathPrefix(`{x}`) && PathPrefix(`{y}`) never matches"
            ))
        }
        (x, y) => x.clone().or_else(|| y.clone()),
    };
    Ok(Term { hosts, path })
}

/// Traefik v2/v3 `rule`: `Host(...)`, `PathPrefix(...)`, `&&`, `||`, parentheses;
/// returned as alternatives (an OR of ANDs).
pub fn parse_v2_rule(rule: &str) -> Result<Vec<Term>, String> {
    let mut p = Parser {
        toks: lex(rule)?,
        pos: 0,
    };
    let terms = p.or(0)?;
    if let Some(t) = p.toks.get(p.pos) {
        return Err(format!("unexpected {t:?} after a complete rule"));
    }
    Ok(terms)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use wharf_table::Scheme;

    use super::*;
    use crate::labels::tests::{errors, run_with, warnings};
    use crate::labels::{LabelOptions, ServiceRoutes};

    /// Traefik-labelled services as under `exposed_by_default = true`, where a
    /// rule without `traefik.enable` routes (a rule alone never enables: see
    /// [`enabled`] and `rules_never_enable_on_their_own`).
    fn run(labels: &[(&str, &str)], ports: &[u16]) -> ServiceRoutes {
        run_with(
            labels,
            ports,
            LabelOptions {
                exposed_by_default: true,
                ..LabelOptions::default()
            },
        )
    }
    use crate::route::{StickyType, TlsMode};

    fn names(r: &ServiceRoutes) -> Vec<&str> {
        r.routes.iter().map(|r| r.name.as_str()).collect()
    }

    #[test]
    fn v1_the_context_example() {
        // CONTEXT.md setup 1: three labels on a swarm service.
        let r = run(
            &[
                ("traefik.backend", "test"),
                ("traefik.frontend.rule", "Host:saas.example.org"),
                ("traefik.port", "80"),
            ],
            &[80, 443],
        );
        assert!(r.enabled, "a frontend rule enables the service");
        assert!(r.problems.is_empty(), "{:#?}", r.problems);
        let s = &r.routes[0];
        assert_eq!(names(&r), ["shop_web"]);
        assert_eq!(s.hosts, vec!["saas.example.org"]);
        assert_eq!((s.path.as_str(), s.port), ("/", Some(80)));
        assert_eq!(s.tls, TlsMode::Acme);
        assert!(s.https_redirect);
        assert_eq!(
            s.hsts.header_value(),
            None,
            "Traefik sends no HSTS unless told"
        );
        assert_eq!(r.host_labels[0].0, "traefik.frontend.rule");
    }

    #[test]
    fn v1_rules_with_paths_and_several_hosts() {
        let r = run(
            &[(
                "traefik.frontend.rule",
                "Host:a.example.org,B.example.org;PathPrefix:/x,/y",
            )],
            &[8080],
        );
        assert!(!r.has_errors(), "{:#?}", r.problems);
        assert_eq!(names(&r), ["shop_web/1", "shop_web/2"]);
        for (route, path) in r.routes.iter().zip(["/x", "/y"]) {
            assert_eq!(route.hosts, vec!["a.example.org", "b.example.org"]);
            assert_eq!(route.path, path);
            assert_eq!(route.port, Some(8080));
        }
        let r = run(
            &[(
                "traefik.frontend.rule",
                "Host:a.example.org;PathPrefixStrip:/api",
            )],
            &[80],
        );
        assert!(!r.has_errors());
        assert_eq!(r.routes[0].path, "/api");
        assert!(warnings(&r)[0].message.contains("does not strip"));

        for bad in [
            "Path:/x",
            "HostRegexp:{a:.+}.example.org",
            "Host:",
            "Host:a.org;Host:b.org",
            "garbage",
            "Method:GET",
        ] {
            let r = run(&[("traefik.frontend.rule", bad)], &[80]);
            let e = errors(&r);
            assert_eq!(e.len(), 1, "{bad}: {:#?}", r.problems);
            assert_eq!(
                (e[0].label.as_str(), e[0].value.as_str()),
                ("traefik.frontend.rule", bad)
            );
        }
        let e = run(&[("traefik.frontend.rule", "Path:/x")], &[80]);
        assert!(errors(&e)[0]
            .message
            .contains("`Path` matcher is not supported"));
    }

    #[test]
    fn v1_backend_settings() {
        let r = run(
            &[
                ("traefik.enable", "true"),
                ("traefik.frontend.rule", "Host:a.example.org"),
                ("traefik.backend.loadbalancer.stickiness", "true"),
                (
                    "traefik.backend.loadbalancer.stickiness.cookieName",
                    "JSESSIONID",
                ),
                ("traefik.backend.healthcheck.path", "/health"),
                ("traefik.backend.healthcheck.interval", "15s"),
                ("traefik.protocol", "https"),
                ("traefik.frontend.entryPoints", "web,websecure"),
                ("traefik.frontend.headers.STSSeconds", "31536000"),
                ("traefik.frontend.headers.STSIncludeSubdomains", "true"),
                ("traefik.docker.network", "wharf-public"),
            ],
            &[8443],
        );
        assert!(r.problems.is_empty(), "{:#?}", r.problems);
        let s = &r.routes[0];
        assert_eq!(s.sticky.kind, StickyType::Cookie);
        assert_eq!(s.sticky.cookie, "JSESSIONID");
        let hc = s.healthcheck.as_ref().unwrap();
        assert_eq!((hc.path.as_str(), hc.method.as_str()), ("/health", "GET"));
        assert_eq!(hc.interval, Duration::from_secs(15));
        assert_eq!((hc.rise, hc.fall), (1, 1));
        assert_eq!(s.scheme, Scheme::Https);
        assert_eq!(s.entrypoints, Some(vec!["web".into(), "websecure".into()]));
        assert_eq!(
            s.hsts.header_value().unwrap(),
            "max-age=31536000; includeSubDomains"
        );
        assert_eq!(s.network.as_deref(), Some("wharf-public"));

        let r = run(
            &[
                ("traefik.frontend.rule", "Host:a.example.org"),
                ("traefik.backend.healthcheck.path", "/h"),
            ],
            &[80],
        );
        let hc = r.routes[0].healthcheck.as_ref().unwrap();
        assert_eq!(
            hc.interval,
            Duration::from_secs(30),
            "Traefik's default interval"
        );
        assert_eq!(hc.timeout, Duration::from_secs(5));
    }

    const SVC: &str = "traefik.http.services.s.loadbalancer";

    /// A v2 router with a service `s` on port 8080 and the given service keys
    /// (after `loadbalancer.`).
    fn v2_with(keys: &[(&str, &str)]) -> ServiceRoutes {
        let owned: Vec<(String, String)> = keys
            .iter()
            .map(|(k, v)| (format!("{SVC}.{k}"), v.to_string()))
            .collect();
        let mut labels: Vec<(&str, &str)> = vec![
            ("traefik.http.routers.r.rule", "Host(`a.org`)"),
            ("traefik.http.services.s.loadbalancer.server.port", "8080"),
        ];
        labels.extend(owned.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        run(&labels, &[8080, 9000])
    }

    fn hc_of(r: &ServiceRoutes) -> crate::route::HealthCheck {
        assert!(!r.has_errors(), "{:#?}", r.problems);
        r.routes[0].healthcheck.clone().unwrap()
    }

    #[test]
    fn healthcheck_timeout_follows_a_short_interval() {
        // Traefik's defaults: GET, 30s, 5s, one result flips, 2xx/3xx pass.
        let hc = hc_of(&v2_with(&[("healthcheck.path", "/h")]));
        assert_eq!(hc.method, "GET");
        assert_eq!(
            (hc.interval, hc.timeout),
            (Duration::from_secs(30), Duration::from_secs(5))
        );
        assert_eq!((hc.rise, hc.fall), (1, 1));
        assert_eq!(hc.expect, vec![(200, 399)]);
        // An interval of 5s or less and no timeout: half the interval.
        for (interval, timeout) in [("2s", 1000), ("5", 2500), ("500ms", 250), ("6s", 5000)] {
            let hc = hc_of(&v2_with(&[
                ("healthcheck.path", "/h"),
                ("healthcheck.interval", interval),
            ]));
            assert_eq!(hc.timeout, Duration::from_millis(timeout), "{interval}");
        }
        // v1 alike, and v1's timeout key.
        let r = run(
            &[
                ("traefik.frontend.rule", "Host:a.org"),
                ("traefik.backend.healthcheck.path", "/h"),
                ("traefik.backend.healthcheck.interval", "1s"),
            ],
            &[80],
        );
        assert_eq!(hc_of(&r).timeout, Duration::from_millis(500));
        let r = run(
            &[
                ("traefik.frontend.rule", "Host:a.org"),
                ("traefik.backend.healthcheck.path", "/h"),
                ("traefik.backend.healthcheck.interval", "10s"),
                ("traefik.backend.healthcheck.timeout", "3s"),
            ],
            &[80],
        );
        assert_eq!(hc_of(&r).timeout, Duration::from_secs(3));
    }

    #[test]
    fn healthcheck_bad_timing_is_an_error_on_the_label_as_written() {
        let r = v2_with(&[
            ("healthcheck.path", "/h"),
            ("healthcheck.interval", "2s"),
            ("healthcheck.timeout", "2"),
        ]);
        let e = errors(&r);
        assert_eq!(e.len(), 1, "{e:#?}");
        assert_eq!(
            e[0].to_string(),
            "service shop_web: traefik.http.services.s.loadbalancer.healthcheck.timeout=\"2\": \
             `2s` is not shorter than the check interval `2s`: a check must end before the next \
             one starts; set a timeout below the interval (e.g. `1s`) or a longer interval"
        );
        assert!(r.routes.is_empty());
        // A timeout given beside Traefik's default interval.
        let r = v2_with(&[("healthcheck.path", "/h"), ("healthcheck.timeout", "1m")]);
        let e = errors(&r);
        assert_eq!(e.len(), 1, "{e:#?}");
        assert_eq!(e[0].label, format!("{SVC}.healthcheck.timeout"));
        assert!(e[0].message.contains("`30s`"), "{e:#?}");
        // Too short an interval, and v1 too.
        let r = v2_with(&[("healthcheck.path", "/h"), ("healthcheck.interval", "50ms")]);
        let e = errors(&r);
        assert_eq!(e.len(), 1, "{e:#?}");
        assert_eq!(e[0].label, format!("{SVC}.healthcheck.interval"));
        assert!(e[0].message.contains("shortest check interval, 100ms"));
        let r = run(
            &[
                ("traefik.frontend.rule", "Host:a.org"),
                ("traefik.backend.healthcheck.path", "/h"),
                ("traefik.backend.healthcheck.interval", "5s"),
                ("traefik.backend.healthcheck.timeout", "5s"),
            ],
            &[80],
        );
        let e = errors(&r);
        assert_eq!(e.len(), 1, "{e:#?}");
        assert_eq!(e[0].label, "traefik.backend.healthcheck.timeout");
    }

    #[test]
    fn healthcheck_method_hostname_and_status() {
        let hc = hc_of(&v2_with(&[
            ("healthcheck.path", "/h"),
            ("healthcheck.method", "HEAD"),
            ("healthcheck.hostname", "probe.a.org"),
            ("healthcheck.status", "204"),
        ]));
        assert_eq!(hc.method, "HEAD");
        assert_eq!(hc.host.as_deref(), Some("probe.a.org"));
        assert_eq!(hc.expect, vec![(204, 204)]);

        let r = v2_with(&[("healthcheck.path", "/h"), ("healthcheck.method", "POST")]);
        let e = errors(&r);
        assert_eq!(e.len(), 1, "{e:#?}");
        assert_eq!(e[0].label, format!("{SVC}.healthcheck.method"));
        assert!(e[0].message.contains("use HEAD or GET"), "{e:#?}");
        for bad in ["2xx", "999", "ok"] {
            let r = v2_with(&[("healthcheck.path", "/h"), ("healthcheck.status", bad)]);
            let e = errors(&r);
            assert_eq!(e.len(), 1, "{bad}: {e:#?}");
            assert_eq!(e[0].label, format!("{SVC}.healthcheck.status"));
            assert!(e[0].message.contains("one code from 100 to 599"), "{e:#?}");
        }
        // Without a path, every other key is a warning that names it.
        let r = v2_with(&[
            ("healthcheck.interval", "5s"),
            ("healthcheck.method", "HEAD"),
            ("healthcheck.status", "200"),
            ("healthcheck.port", "9000"),
        ]);
        assert!(!r.has_errors(), "{:#?}", r.problems);
        assert!(r.routes[0].healthcheck.is_none());
        let w = warnings(&r);
        assert_eq!(w.len(), 4, "{w:#?}");
        assert!(w
            .iter()
            .all(|p| p.message == "has no effect without a health check path"));
    }

    #[test]
    fn healthcheck_port_is_the_serving_port_or_an_error() {
        // The port traffic goes to: accepted, nothing to change.
        let r = v2_with(&[("healthcheck.path", "/h"), ("healthcheck.port", "8080")]);
        assert!(r.problems.is_empty(), "{:#?}", r.problems);
        assert!(r.routes[0].healthcheck.is_some());
        // Another port: an error naming the label, never ignored.
        let r = v2_with(&[("healthcheck.path", "/h"), ("healthcheck.port", "9000")]);
        let e = errors(&r);
        assert_eq!(e.len(), 1, "{e:#?}");
        assert_eq!(
            e[0].to_string(),
            "service shop_web: traefik.http.services.s.loadbalancer.healthcheck.port=\"9000\": \
             a separate health check port is not supported: Wharf checks each backend on the \
             port it sends requests to (8080); remove this label, or serve the check path on \
             that port"
        );
        // v1: the only exposed port is the serving port.
        let v1 = |port: &'static str| {
            run(
                &[
                    ("traefik.frontend.rule", "Host:a.org"),
                    ("traefik.backend.healthcheck.path", "/h"),
                    ("traefik.backend.healthcheck.port", port),
                ],
                &[3000],
            )
        };
        assert!(v1("3000").problems.is_empty(), "{:#?}", v1("3000").problems);
        let r = v1("3001");
        assert_eq!(errors(&r)[0].label, "traefik.backend.healthcheck.port");
        let r = v1("x");
        assert!(errors(&r)[0].message.contains("not a valid port"));
    }

    #[test]
    fn v1_segments_are_frontends_of_their_own() {
        // Two ports of one container under two names, the root as their default.
        let r = run(
            &[
                ("traefik.enable", "true"),
                ("traefik.protocol", "h2c"),
                ("traefik.frontend.headers.STSSeconds", "600"),
                ("traefik.first.port", "80"),
                ("traefik.first.backend", "first"),
                ("traefik.first.frontend.rule", "Host:web1.example.com"),
                ("traefik.second.port", "8080"),
                ("traefik.second.protocol", "http"),
                (
                    "traefik.second.frontend.rule",
                    "Host:web2.example.com;PathPrefix:/a,/b",
                ),
                ("traefik.third.port", "9000"),
            ],
            &[80, 8080, 9000],
        );
        assert!(!r.has_errors(), "{:#?}", r.problems);
        assert_eq!(
            names(&r),
            ["shop_web/first", "shop_web/second.1", "shop_web/second.2"]
        );
        let (first, second) = (&r.routes[0], &r.routes[1]);
        assert_eq!(
            (first.hosts[0].as_str(), first.port),
            ("web1.example.com", Some(80))
        );
        assert_eq!(first.scheme, Scheme::H2c, "from the root");
        assert_eq!(first.hsts.max_age, 600, "from the root");
        assert_eq!((second.port, second.scheme), (Some(8080), Scheme::Http));
        assert_eq!(second.path, "/a");
        // A segment without a rule has no route, and says so.
        let w = warnings(&r);
        assert_eq!(w.len(), 1, "{w:#?}");
        assert_eq!(w[0].label, "traefik.third.port");

        // A segment's port error names the segment's key... or the root's.
        let r = run(
            &[
                ("traefik.a.frontend.rule", "Host:a.org"),
                ("traefik.b.frontend.rule", "Host:b.org"),
            ],
            &[80, 81],
        );
        assert_eq!(errors(&r)[0].label, "traefik.port");
        // A segment's basic auth is enforced: a plain-text password is refused
        // (an error, the value redacted), never dropped with a warning.
        let r = run(
            &[
                ("traefik.a.frontend.rule", "Host:a.org"),
                ("traefik.a.frontend.auth.basic", "u:p"),
            ],
            &[80],
        );
        assert!(r.routes.is_empty());
        let e = errors(&r);
        assert_eq!(e[0].label, "traefik.a.frontend.auth.basic", "{e:#?}");
        assert_eq!(e[0].value, crate::labels::REDACTED);
        assert!(e[0].message.contains("plain text"), "{}", e[0].message);
        // Unknown segment keys are warnings.
        let r = run(
            &[
                ("traefik.a.frontend.rule", "Host:a.org"),
                ("traefik.a.frontend.priority", "3"),
            ],
            &[80],
        );
        assert_eq!(warnings(&r)[0].label, "traefik.a.frontend.priority");
    }

    #[test]
    fn v1_port_is_required_with_several_exposed_ports() {
        let r = run(
            &[("traefik.frontend.rule", "Host:a.example.org")],
            &[80, 443],
        );
        let e = errors(&r);
        assert_eq!(e[0].label, "traefik.port");
        assert!(e[0].message.contains("exposes 2 ports (80, 443)"));
    }

    #[test]
    fn v2_rules() {
        // (rule, [(hosts, path) of each route])
        type Case<'a> = (&'a str, &'a [(&'a [&'a str], &'a str)]);
        let cases: &[Case] = &[
            ("Host(`a.example.org`)", &[(&["a.example.org"], "/")]),
            (
                "Host(`a.example.org`, `b.example.org`)",
                &[(&["a.example.org", "b.example.org"], "/")],
            ),
            (
                "Host(\"a.example.org\") || Host(`b.example.org`)",
                &[(&["a.example.org", "b.example.org"], "/")],
            ),
            (
                "Host(`a.example.org`) && PathPrefix(`/api`)",
                &[(&["a.example.org"], "/api")],
            ),
            (
                "(Host(`a.example.org`) || Host(`b.example.org`)) && PathPrefix(`/api`)",
                &[(&["a.example.org", "b.example.org"], "/api")],
            ),
            (
                "Host(`a.example.org`) && (PathPrefix(`/x`) || PathPrefix(`/y`))",
                &[(&["a.example.org"], "/x"), (&["a.example.org"], "/y")],
            ),
            (
                "Host(`a.example.org`) && PathPrefix(`/api`) || Host(`b.example.org`)",
                &[(&["a.example.org"], "/api"), (&["b.example.org"], "/")],
            ),
            (
                "PathPrefix(`/a`) && PathPrefix(`/a/b`) && Host(`a.example.org`)",
                &[(&["a.example.org"], "/a/b")],
            ),
        ];
        for (rule, want) in cases {
            let r = run(&[("traefik.http.routers.app.rule", rule)], &[80]);
            assert!(!r.has_errors(), "{rule}: {:#?}", r.problems);
            let got: Vec<(Vec<&str>, &str)> = r
                .routes
                .iter()
                .map(|s| {
                    (
                        s.hosts.iter().map(String::as_str).collect(),
                        s.path.as_str(),
                    )
                })
                .collect();
            let want: Vec<(Vec<&str>, &str)> = want.iter().map(|(h, p)| (h.to_vec(), *p)).collect();
            assert_eq!(got, want, "{rule}");
        }
        let r = run(
            &[(
                "traefik.http.routers.app.rule",
                "Host(`a.example.org`) && (PathPrefix(`/x`) || PathPrefix(`/y`))",
            )],
            &[80],
        );
        assert_eq!(names(&r), ["shop_web/app.1", "shop_web/app.2"]);
        let r = run(
            &[("traefik.http.routers.app.rule", "PathPrefix(`/x`)")],
            &[80],
        );
        assert_eq!(r.routes[0].hosts, vec!["*"]);
        assert!(warnings(&r)[0].message.contains("any host"));
    }

    #[test]
    fn v2_rules_wharf_cannot_evaluate_are_errors_naming_the_rule() {
        let deep = format!("{}Host(`a.org`){}", "(".repeat(100), ")".repeat(100));
        let wide = vec!["Host(`a.org`)"; 200].join(" || ");
        let product = vec!["(PathPrefix(`/a`) || PathPrefix(`/a`))"; 20].join(" && ");
        for rule in [
            "HostRegexp(`{sub:[a-z]+}.example.org`)",
            "Host(`a.org`) && Headers(`X`, `y`)",
            "Path(`/exact`)",
            "!Host(`a.org`)",
            "Host(`a.org`) && Host(`b.org`)",
            "PathPrefix(`/a`) && PathPrefix(`/b`)",
            "PathPrefix(`/{id:[0-9]+}`)",
            "Host(`a.org`",
            "Host(a.org)",
            "Host(`a.org`) &",
            "Host(`a.org`) Host(`b.org`)",
            "Host(`unterminated)",
            "",
            "Host(`a.org`) ||",
            "Host(`a b`)",
            deep.as_str(),
            wide.as_str(),
            product.as_str(),
        ] {
            let r = run(&[("traefik.http.routers.app.rule", rule)], &[80]);
            let e = errors(&r);
            assert!(!e.is_empty(), "{rule:?} should be an error");
            assert_eq!(e[0].label, "traefik.http.routers.app.rule", "{rule:?}");
            assert_eq!(e[0].value, rule);
            assert!(r.routes.is_empty());
        }
        let r = run(
            &[("traefik.http.routers.app.rule", "HostRegexp(`x`)")],
            &[80],
        );
        assert!(errors(&r)[0]
            .message
            .contains("`HostRegexp` matcher is not supported"));
    }

    #[test]
    fn v2_a_typical_stack() {
        let r = run(
            &[
                ("traefik.enable", "true"),
                ("traefik.http.routers.shop.rule", "Host(`shop.example.org`)"),
                ("traefik.http.routers.shop.entrypoints", "web"),
                ("traefik.http.routers.shop.middlewares", "to-https@docker"),
                (
                    "traefik.http.routers.shop-secure.rule",
                    "Host(`shop.example.org`)",
                ),
                ("traefik.http.routers.shop-secure.entrypoints", "websecure"),
                ("traefik.http.routers.shop-secure.tls", "true"),
                ("traefik.http.routers.shop-secure.tls.certresolver", "le"),
                ("traefik.http.routers.shop-secure.middlewares", "hsts,limit"),
                (
                    "traefik.http.middlewares.to-https.redirectscheme.scheme",
                    "https",
                ),
                (
                    "traefik.http.middlewares.to-https.redirectscheme.permanent",
                    "true",
                ),
                (
                    "traefik.http.middlewares.hsts.headers.stsseconds",
                    "31536000",
                ),
                (
                    "traefik.http.middlewares.hsts.headers.stsincludesubdomains",
                    "true",
                ),
                ("traefik.http.middlewares.hsts.headers.stspreload", "true"),
                ("traefik.http.middlewares.limit.ratelimit.average", "100"),
                ("traefik.http.middlewares.limit.ratelimit.burst", "50"),
                (
                    "traefik.http.services.shop.loadbalancer.server.port",
                    "8080",
                ),
                (
                    "traefik.http.services.shop.loadbalancer.server.scheme",
                    "h2c",
                ),
                (
                    "traefik.http.services.shop.loadbalancer.sticky.cookie",
                    "true",
                ),
                (
                    "traefik.http.services.shop.loadbalancer.sticky.cookie.name",
                    "SHOPID",
                ),
                (
                    "traefik.http.services.shop.loadbalancer.healthcheck.path",
                    "/ping",
                ),
                (
                    "traefik.http.services.shop.loadbalancer.healthcheck.interval",
                    "10s",
                ),
                (
                    "traefik.http.services.shop.loadbalancer.healthcheck.timeout",
                    "3",
                ),
            ],
            &[8080, 9100],
        );
        assert!(r.problems.is_empty(), "{:#?}", r.problems);
        assert_eq!(
            names(&r),
            ["shop_web/shop"],
            "two routers, one rule: one route"
        );
        let s = &r.routes[0];
        assert_eq!(s.hosts, vec!["shop.example.org"]);
        assert_eq!(s.port, Some(8080));
        assert_eq!(s.scheme, Scheme::H2c);
        assert_eq!(s.tls, TlsMode::Acme);
        assert!(s.https_redirect);
        assert_eq!(s.entrypoints, Some(vec!["web".into(), "websecure".into()]));
        assert_eq!(
            s.hsts.header_value().unwrap(),
            "max-age=31536000; includeSubDomains; preload"
        );
        let rl = s.ratelimit.as_ref().unwrap();
        assert_eq!((rl.per_second, rl.burst), (100.0, 50));
        assert_eq!(
            (s.sticky.kind, s.sticky.cookie.as_str()),
            (StickyType::Cookie, "SHOPID")
        );
        let hc = s.healthcheck.as_ref().unwrap();
        assert_eq!(
            (hc.interval, hc.timeout),
            (Duration::from_secs(10), Duration::from_secs(3))
        );
    }

    #[test]
    fn v2_tls_per_router() {
        // No TLS router: TLS may come from Traefik's entrypoint, so Wharf's default.
        let r = run(&[("traefik.http.routers.a.rule", "Host(`a.org`)")], &[80]);
        assert_eq!(r.routes[0].tls, TlsMode::Acme);
        assert!(r.routes[0].https_redirect);
        // ... which a service-level wharf.tls overrides.
        let r = run(
            &[
                ("traefik.http.routers.a.rule", "Host(`a.org`)"),
                ("wharf.tls", "none"),
            ],
            &[80],
        );
        assert_eq!(r.routes[0].tls, TlsMode::None);
        // TLS only: Wharf's default redirect from plain HTTP.
        let r = run(
            &[
                ("traefik.http.routers.a.rule", "Host(`a.org`)"),
                ("traefik.http.routers.a.tls", "true"),
            ],
            &[80],
        );
        assert_eq!(r.routes[0].tls, TlsMode::Acme);
        assert!(r.routes[0].https_redirect);
        // A plain and a TLS router without a redirect: both are served.
        let r = run(
            &[
                ("traefik.http.routers.a.rule", "Host(`a.org`)"),
                ("traefik.http.routers.b.rule", "Host(`a.org`)"),
                ("traefik.http.routers.b.tls.certresolver", "le"),
            ],
            &[80],
        );
        assert_eq!(names(&r), ["shop_web/a"]);
        assert_eq!(r.routes[0].tls, TlsMode::Acme);
        assert!(!r.routes[0].https_redirect);
        let r = run(
            &[
                ("traefik.http.routers.a.rule", "Host(`a.org`)"),
                ("traefik.http.routers.a.tls", "maybe"),
            ],
            &[80],
        );
        assert_eq!(errors(&r)[0].label, "traefik.http.routers.a.tls");
    }

    #[test]
    fn v2_ratelimit_follows_average_per_period() {
        let rl = |avg: &str, period: Option<&str>| {
            let mut labels = vec![
                ("traefik.http.routers.a.rule", "Host(`a.org`)"),
                ("traefik.http.routers.a.middlewares", "rl"),
                ("traefik.http.middlewares.rl.ratelimit.average", avg),
            ];
            if let Some(p) = period {
                labels.push(("traefik.http.middlewares.rl.ratelimit.period", p));
            }
            let r = run(&labels, &[80]);
            assert!(!r.has_errors(), "{:#?}", r.problems);
            r.routes[0].ratelimit.clone()
        };
        let r = rl("100", None).unwrap();
        assert_eq!(
            (r.per_second, r.burst),
            (100.0, 1),
            "period 1s, burst 1 by default"
        );
        assert_eq!(rl("6", Some("1m")).unwrap().per_second, 0.1);
        assert_eq!(rl("10", Some("500ms")).unwrap().per_second, 20.0);
        assert!((rl("10", Some("3s")).unwrap().per_second - 10.0 / 3.0).abs() < 1e-9);
        assert_eq!(rl("5", Some("7")).unwrap().per_second, 5.0 / 7.0 * 1.0);
        assert_eq!(rl("0", None), None, "average 0 means no limit");
        assert_eq!(rl("1", Some("100us")).unwrap().per_second, 10_000.0);
        let r = run(
            &[
                ("traefik.http.routers.a.rule", "Host(`a.org`)"),
                ("traefik.http.routers.a.middlewares", "rl"),
                ("traefik.http.middlewares.rl.ratelimit.average", "many"),
            ],
            &[80],
        );
        assert_eq!(
            errors(&r)[0].label,
            "traefik.http.middlewares.rl.ratelimit.average"
        );
    }

    #[test]
    fn v1_stickiness_keeps_wharfs_cookie_name_unless_one_is_given() {
        let r = run(
            &[
                ("traefik.frontend.rule", "Host:a.org"),
                ("traefik.backend.loadbalancer.stickiness", "true"),
            ],
            &[80],
        );
        assert!(r.problems.is_empty(), "{:#?}", r.problems);
        let s = &r.routes[0].sticky;
        assert_eq!(
            (s.kind, s.cookie.as_str(), s.ttl),
            (StickyType::Cookie, "WHARFID", None)
        );
        // A name without stickiness enabled does nothing, as in Traefik.
        let r = run(
            &[
                ("traefik.frontend.rule", "Host:a.org"),
                ("traefik.backend.loadbalancer.stickiness", "false"),
                ("traefik.backend.loadbalancer.stickiness.cookieName", "SID"),
            ],
            &[80],
        );
        assert_eq!(r.routes[0].sticky.kind, StickyType::None);
        assert_eq!(
            warnings(&r)[0].label,
            "traefik.backend.loadbalancer.stickiness.cookieName"
        );
        // A bad name is an error on the label as written.
        let r = run(
            &[
                ("traefik.frontend.rule", "Host:a.org"),
                ("traefik.backend.loadbalancer.stickiness", "true"),
                (
                    "traefik.backend.loadbalancer.stickiness.cookieName",
                    "my id",
                ),
            ],
            &[80],
        );
        let e = errors(&r);
        assert_eq!(e.len(), 1, "{e:#?}");
        assert_eq!(
            e[0].label,
            "traefik.backend.loadbalancer.stickiness.cookieName"
        );
        assert!(e[0].message.contains("a space is not allowed"), "{e:#?}");
    }

    #[test]
    fn v2_sticky_cookie_options() {
        // Options that ask for what Wharf does anyway are accepted silently; any
        // option alone enables the cookie, as in Traefik.
        let r = v2_with(&[
            ("sticky.cookie.httpOnly", "true"),
            ("sticky.cookie.secure", "true"),
            ("sticky.cookie.sameSite", "Lax"),
            ("sticky.cookie.path", "/"),
            ("sticky.cookie.maxAge", "3600"),
        ]);
        assert!(r.problems.is_empty(), "{:#?}", r.problems);
        let s = &r.routes[0].sticky;
        assert_eq!((s.kind, s.cookie.as_str()), (StickyType::Cookie, "WHARFID"));
        assert_eq!(
            s.ttl,
            Some(Duration::from_secs(3600)),
            "maxAge is the cookie's Max-Age"
        );

        let r = v2_with(&[("sticky.cookie", "true"), ("sticky.cookie.maxage", "0")]);
        assert!(r.problems.is_empty(), "{:#?}", r.problems);
        assert_eq!(r.routes[0].sticky.ttl, None, "0: a session cookie");

        // Anything else is a warning naming the key; the route is still used.
        let r = v2_with(&[
            ("sticky.cookie.name", "SID"),
            ("sticky.cookie.httponly", "false"),
            ("sticky.cookie.secure", "false"),
            ("sticky.cookie.samesite", "strict"),
            ("sticky.cookie.path", "/app"),
            ("sticky.cookie.maxage", "-1"),
        ]);
        assert!(!r.has_errors(), "{:#?}", r.problems);
        let s = &r.routes[0].sticky;
        assert_eq!(
            (s.kind, s.cookie.as_str(), s.ttl),
            (StickyType::Cookie, "SID", None)
        );
        let w = warnings(&r);
        for (key, needle) in [
            ("httponly", "always HttpOnly"),
            ("secure", "Secure whenever the client came over TLS"),
            ("samesite", "always SameSite=Lax"),
            ("path", "always has Path=/"),
            ("maxage", "negative maxAge"),
        ] {
            let label = format!("{SVC}.sticky.cookie.{key}");
            let p = w.iter().find(|p| p.label == label);
            assert!(
                p.is_some_and(|p| p.message.contains(needle)),
                "{label}: {w:#?}"
            );
        }
        assert_eq!(w.len(), 5, "{w:#?}");

        let r = v2_with(&[("sticky.cookie.maxage", "1h")]);
        let e = errors(&r);
        assert_eq!(e.len(), 1, "{e:#?}");
        assert_eq!(e[0].label, format!("{SVC}.sticky.cookie.maxage"));
        assert!(e[0].message.contains("not a number of seconds"), "{e:#?}");
        // Options of a cookie turned off do nothing.
        let r = v2_with(&[("sticky.cookie", "false"), ("sticky.cookie.maxage", "60")]);
        assert_eq!(r.routes[0].sticky.kind, StickyType::None);
        assert!(warnings(&r)[0].message.contains("without stickiness"));
    }

    /// A router `a` with middleware `rl` made of `keys` (after `ratelimit.`).
    fn rl_with(keys: &[(&str, &str)]) -> ServiceRoutes {
        let owned: Vec<(String, String)> = keys
            .iter()
            .map(|(k, v)| {
                (
                    format!("traefik.http.middlewares.rl.ratelimit.{k}"),
                    v.to_string(),
                )
            })
            .collect();
        let mut labels: Vec<(&str, &str)> = vec![
            ("traefik.http.routers.a.rule", "Host(`a.org`)"),
            ("traefik.http.routers.a.middlewares", "rl"),
        ];
        labels.extend(owned.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        run(&labels, &[80])
    }

    #[test]
    fn v2_ratelimit_source_criterion() {
        use crate::route::RateKey;
        let key = |keys: &[(&str, &str)]| {
            let mut all = vec![("average", "10")];
            all.extend_from_slice(keys);
            let r = rl_with(&all);
            assert!(r.problems.is_empty(), "{keys:?}: {:#?}", r.problems);
            r.routes[0].ratelimit.clone().unwrap().key
        };
        assert_eq!(key(&[]), RateKey::Source, "the client address by default");
        assert_eq!(
            key(&[("sourceCriterion.requestHeaderName", "X-Api-Key")]),
            RateKey::Header("x-api-key".into())
        );
        assert_eq!(
            key(&[("sourcecriterion.requesthost", "true")]),
            RateKey::Header("host".into())
        );
        assert_eq!(
            key(&[("sourcecriterion.requesthost", "false")]),
            RateKey::Source
        );
        assert_eq!(
            key(&[("sourcecriterion.requestheadername", "")]),
            RateKey::Source
        );
        assert_eq!(
            key(&[("sourcecriterion.ipstrategy.depth", "0")]),
            RateKey::Source
        );

        let one_warning = |keys: &[(&str, &str)], label: &str, needle: &str| {
            let mut all = vec![("average", "10")];
            all.extend_from_slice(keys);
            let r = rl_with(&all);
            assert!(!r.has_errors(), "{:#?}", r.problems);
            assert_eq!(r.routes[0].ratelimit.as_ref().unwrap().key, RateKey::Source);
            let w = warnings(&r);
            assert_eq!(w.len(), 1, "{w:#?}");
            assert_eq!(
                w[0].label,
                format!("traefik.http.middlewares.rl.ratelimit.{label}")
            );
            assert!(w[0].message.contains(needle), "{w:#?}");
        };
        one_warning(
            &[("sourcecriterion.ipstrategy.depth", "2")],
            "sourcecriterion.ipstrategy.depth",
            "not by a position in X-Forwarded-For",
        );
        one_warning(
            &[("sourcecriterion.ipstrategy.excludedips", "10.0.0.0/8")],
            "sourcecriterion.ipstrategy.excludedips",
            "not supported",
        );
        one_warning(
            &[("sourcecriterion.ipstrategy.ipv6subnet", "64")],
            "sourcecriterion.ipstrategy.ipv6subnet",
            "of ratelimit, Wharf supports average, period, burst",
        );

        for (keys, label, needle) in [
            (
                vec![
                    ("sourcecriterion.ipstrategy.depth", "1"),
                    ("sourcecriterion.requestheadername", "X-Key"),
                ],
                "sourcecriterion.requestheadername",
                "takes one of ipStrategy, requestHeaderName and requestHost",
            ),
            (
                vec![
                    ("sourcecriterion.requestheadername", "X-Key"),
                    ("sourcecriterion.requesthost", "true"),
                ],
                "sourcecriterion.requesthost",
                "also `traefik.http.middlewares.rl.ratelimit.sourcecriterion.requestheadername`",
            ),
            (
                vec![("sourcecriterion.requestheadername", "X Key")],
                "sourcecriterion.requestheadername",
                "not a valid header name: a space is not allowed",
            ),
            (
                vec![("sourcecriterion.requesthost", "yes")],
                "sourcecriterion.requesthost",
                "not a boolean",
            ),
            (
                vec![("sourcecriterion.ipstrategy.depth", "-1")],
                "sourcecriterion.ipstrategy.depth",
                "not a valid depth",
            ),
        ] {
            let mut all = vec![("average", "10")];
            all.extend_from_slice(&keys);
            let r = rl_with(&all);
            let e = errors(&r);
            assert_eq!(e.len(), 1, "{keys:?}: {e:#?}");
            assert_eq!(
                e[0].label,
                format!("traefik.http.middlewares.rl.ratelimit.{label}")
            );
            assert!(e[0].message.contains(needle), "{keys:?}: {e:#?}");
            assert!(r.routes.is_empty());
        }

        // Without an average the criterion does nothing.
        let r = rl_with(&[("sourcecriterion.requesthost", "true")]);
        assert!(r.routes[0].ratelimit.is_none());
        assert!(warnings(&r)
            .iter()
            .any(|p| p.message.contains("without ratelimit.average")));
    }

    #[test]
    fn v2_ratelimit_is_exact_and_bounded() {
        let rate = |avg: &str, period: &str| {
            let r = rl_with(&[("average", avg), ("period", period)]);
            assert!(r.problems.is_empty(), "{avg}/{period}: {:#?}", r.problems);
            r.routes[0].ratelimit.clone().unwrap().per_second
        };
        // Not a whole number of seconds, minutes or hours: still exact.
        assert_eq!(rate("7", "1300ms"), 7000.0 / 1300.0);
        assert_eq!(rate("3", "1500us"), 2000.0, "sub-millisecond periods count");
        assert_eq!(rate("1", "7s"), 1.0 / 7.0);
        assert_eq!(rate("100", "24h"), 100.0 / 86_400.0);
        assert_eq!(rate("1", "24h"), RateLimit::MIN_PER_SECOND);
        assert_eq!(rate("1000000", "1s"), RateLimit::MAX_PER_SECOND);
        assert_eq!(exact_rate(3, Duration::from_millis(9)), 1000.0 / 3.0);

        // Too fast or too slow: an error on the label that makes it so.
        let r = rl_with(&[("average", "2000001")]);
        let e = errors(&r);
        assert_eq!(e[0].label, "traefik.http.middlewares.rl.ratelimit.average");
        assert_eq!(e[0].value, "2000001");
        assert!(
            e[0].message
                .contains("more than 1000000 requests per second"),
            "{e:#?}"
        );
        let r = rl_with(&[("average", "1"), ("period", "48h")]);
        let e = errors(&r);
        assert_eq!(e[0].label, "traefik.http.middlewares.rl.ratelimit.period");
        assert!(
            e[0].message.contains("less than one request per day"),
            "{e:#?}"
        );
        let r = rl_with(&[("average", "5"), ("period", "0s")]);
        assert_eq!(
            errors(&r)[0].label,
            "traefik.http.middlewares.rl.ratelimit.period"
        );

        // A service-level wharf.ratelimit replaces the Traefik rate, exact or not.
        let r = run(
            &[
                ("traefik.http.routers.a.rule", "Host(`a.org`)"),
                ("traefik.http.routers.a.middlewares", "rl"),
                ("traefik.http.middlewares.rl.ratelimit.average", "7"),
                ("traefik.http.middlewares.rl.ratelimit.period", "1300ms"),
                ("wharf.ratelimit", "5/s"),
            ],
            &[80],
        );
        assert!(!r.has_errors(), "{:#?}", r.problems);
        let rl = r.routes[0].ratelimit.clone().unwrap();
        assert_eq!((rl.per_second, rl.burst), (5.0, 1));

        // Two routers with one rule: the first router's limit, and its rate.
        let r = run(
            &[
                ("traefik.http.routers.a.rule", "Host(`a.org`)"),
                ("traefik.http.routers.a.middlewares", "whole"),
                ("traefik.http.routers.b.rule", "Host(`a.org`)"),
                ("traefik.http.routers.b.middlewares", "odd"),
                ("traefik.http.middlewares.whole.ratelimit.average", "10"),
                ("traefik.http.middlewares.odd.ratelimit.average", "7"),
                ("traefik.http.middlewares.odd.ratelimit.period", "1300ms"),
            ],
            &[80],
        );
        assert!(!r.has_errors(), "{:#?}", r.problems);
        assert_eq!(r.routes[0].ratelimit.as_ref().unwrap().per_second, 10.0);
    }

    #[test]
    fn unsupported_keys_are_warnings_naming_the_key() {
        // Keys that change no security setting: warnings, the route served.
        let r = run(
            &[
                ("traefik.http.routers.a.rule", "Host(`a.org`)"),
                ("traefik.http.routers.a.priority", "10"),
                (
                    "traefik.http.services.a.loadbalancer.responseforwarding.flushinterval",
                    "1s",
                ),
                ("traefik.tcp.routers.db.rule", "HostSNI(`*`)"),
                ("traefik.frontend.priority", "5"),
                ("traefik.http.routers.a.middlewares", "r"),
                ("traefik.http.middlewares.r.redirectscheme.scheme", "http"),
            ],
            &[80],
        );
        assert!(!r.has_errors(), "{:#?}", r.problems);
        let w: Vec<&str> = warnings(&r).iter().map(|p| p.label.as_str()).collect();
        for key in [
            "traefik.http.routers.a.priority",
            "traefik.http.services.a.loadbalancer.responseforwarding.flushinterval",
            "traefik.tcp.routers.db.rule",
            "traefik.frontend.priority",
            "traefik.http.middlewares.r.redirectscheme.scheme",
        ] {
            assert!(w.contains(&key), "{key} missing from {w:?}");
        }
        assert_eq!(r.routes.len(), 1);
    }

    /// The service's errors as (label, value, message).
    fn refused(labels: &[(&str, &str)]) -> Vec<(String, String, String)> {
        let r = run(labels, &[80]);
        assert!(r.routes.is_empty(), "{:#?}", r.routes);
        errors(&r)
            .into_iter()
            .map(|p| (p.label.clone(), p.value.clone(), p.message.clone()))
            .collect()
    }

    const BCRYPT: &str = "admin:$2y$05$Tx6oWiW5cBWFUx.zUhnBqeWwzqxeVePcGjEjVO4jNz.sWtV7tPTwm";

    #[test]
    fn middlewares_wharf_cannot_enforce_are_errors_for_the_router() {
        let base = [
            ("traefik.http.routers.adm.rule", "Host(`admin.example.com`)"),
            ("traefik.http.services.adm.loadbalancer.server.port", "80"),
        ];
        let with = |extra: &[(&'static str, &'static str)]| {
            let mut v = base.to_vec();
            v.extend_from_slice(extra);
            refused(&v)
        };
        // A middleware from another provider, or not defined at all.
        for m in ["auth@file", "authelia@docker", "nope", "auth@kubernetescrd"] {
            let e = with(&[("traefik.http.routers.adm.middlewares", m)]);
            assert_eq!(e.len(), 1, "{e:#?}");
            assert_eq!(e[0].0, "traefik.http.routers.adm.middlewares");
            assert!(e[0].2.contains(&format!("middleware `{m}`")), "{}", e[0].2);
            assert!(e[0].2.contains("router `adm`"), "{}", e[0].2);
            assert!(e[0].2.contains("fail closed"), "{}", e[0].2);
        }
        // Middlewares and options Wharf cannot honour: the option's key is named.
        for (key, value, needle) in [
            (
                "traefik.http.middlewares.m.digestauth.users",
                "u:r:h",
                "`digestauth` middleware",
            ),
            (
                "traefik.http.middlewares.m.forwardauth.address",
                "http://authelia",
                "`forwardauth`",
            ),
            (
                "traefik.http.middlewares.m.chain.middlewares",
                "a,b",
                "`chain`",
            ),
            (
                "traefik.http.middlewares.m.stripprefix.prefixes",
                "/x",
                "`stripprefix`",
            ),
            (
                "traefik.http.middlewares.m.redirectregex.regex",
                "^x",
                "`redirectregex`",
            ),
            (
                "traefik.http.middlewares.m.ipallowlist.ipstrategy.excludedips",
                "10.0.0.1",
                "ipallowlist option `ipstrategy.excludedips`",
            ),
            (
                "traefik.http.middlewares.m.basicauth.usersfile",
                "/etc/users",
                "usersfile",
            ),
            (
                "traefik.http.middlewares.m.headers.accesscontrolalloworigin",
                "*",
                "headers option",
            ),
        ] {
            let e = with(&[("traefik.http.routers.adm.middlewares", "m"), (key, value)]);
            assert!(
                e.iter().any(|(l, _, m)| l == key
                    && m.contains(needle)
                    && m.contains("router `adm` uses middleware `m`")
                    && m.contains("not created")),
                "{key}: {e:#?}"
            );
        }
        // The same middleware unused by any router: a warning, nothing exposed.
        let r = run(
            &[
                ("traefik.http.routers.adm.rule", "Host(`admin.example.com`)"),
                ("traefik.http.middlewares.m.forwardauth.address", "http://a"),
            ],
            &[80],
        );
        assert!(!r.has_errors(), "{:#?}", r.problems);
        // v1 auth and whitelist options Wharf cannot enforce.
        for key in [
            "traefik.frontend.auth.forward.address",
            "traefik.frontend.auth.digest.users",
            "traefik.frontend.whitelist.usexforwardedfor",
            "traefik.frontend.headers.customrequestheaders",
        ] {
            let e = refused(&[("traefik.frontend.rule", "Host:a.org"), (key, "x")]);
            assert_eq!(e[0].0, key, "{e:#?}");
        }
    }

    #[test]
    fn basicauth_ipallowlist_and_headers_map_from_v2_and_v3() {
        for kind in ["ipallowlist", "ipwhitelist"] {
            let src = format!("traefik.http.middlewares.ip.{kind}.sourcerange");
            let depth = format!("traefik.http.middlewares.ip.{kind}.ipstrategy.depth");
            let r = run(
                &[
                    ("traefik.http.routers.adm.rule", "Host(`admin.example.com`)"),
                    ("traefik.http.routers.adm.middlewares", "auth@docker,ip,hdr"),
                    ("traefik.http.middlewares.auth.basicauth.users", BCRYPT),
                    (
                        "traefik.http.middlewares.auth.basicauth.removeheader",
                        "true",
                    ),
                    (&src, "10.0.0.0/8, 192.168.1.7"),
                    (&depth, "1"),
                    (
                        "traefik.http.middlewares.hdr.headers.customrequestheaders.X-Env",
                        "prod",
                    ),
                    (
                        "traefik.http.middlewares.hdr.headers.customrequestheaders.X-Drop",
                        "",
                    ),
                    (
                        "traefik.http.middlewares.hdr.headers.customresponseheaders.Server",
                        "",
                    ),
                    ("traefik.http.middlewares.hdr.headers.framedeny", "true"),
                ],
                &[80],
            );
            assert!(!r.has_errors(), "{:#?}", r.problems);
            let s = &r.routes[0];
            let ba = s.basicauth.as_ref().unwrap();
            assert_eq!(ba.users[0].0, "admin");
            assert!(matches!(
                ba.users[0].1,
                crate::route::PasswordHash::Bcrypt(_)
            ));
            assert_eq!(ba.realm, "traefik", "Traefik's default realm");
            assert!(ba.remove_header);
            let ip = s.ipallowlist.as_ref().unwrap();
            assert_eq!(ip.depth, 1);
            assert_eq!(
                ip.ranges,
                vec![
                    "10.0.0.0/8".parse().unwrap(),
                    "192.168.1.7/32".parse().unwrap()
                ]
            );
            let h = s.headers.as_ref().unwrap();
            let req: Vec<_> = h
                .request
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_ref().map(|v| v.to_str().unwrap())))
                .collect();
            assert_eq!(req, [("x-drop", None), ("x-env", Some("prod"))]);
            let resp: Vec<_> = h
                .response
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_ref().map(|v| v.to_str().unwrap())))
                .collect();
            assert_eq!(resp, [("server", None), ("x-frame-options", Some("DENY"))]);
        }
        // Two basicauth middlewares on one router: Wharf enforces one, so an error.
        let e = refused(&[
            ("traefik.http.routers.adm.rule", "Host(`admin.example.com`)"),
            ("traefik.http.routers.adm.middlewares", "a,b"),
            ("traefik.http.middlewares.a.basicauth.users", BCRYPT),
            ("traefik.http.middlewares.b.basicauth.users", BCRYPT),
        ]);
        assert!(e[0].2.contains("set by two of its middlewares"), "{e:#?}");
        // A plain-text password or a bad range: errors naming the key; the users'
        // value is never shown.
        let e = refused(&[
            ("traefik.http.routers.adm.rule", "Host(`admin.example.com`)"),
            ("traefik.http.routers.adm.middlewares", "a"),
            ("traefik.http.middlewares.a.basicauth.users", "admin:secret"),
        ]);
        assert_eq!(e[0].0, "traefik.http.middlewares.a.basicauth.users");
        assert_eq!(e[0].1, crate::labels::REDACTED);
        assert!(!e[0].2.contains("secret"), "{}", e[0].2);
        let e = refused(&[
            ("traefik.http.routers.adm.rule", "Host(`admin.example.com`)"),
            ("traefik.http.routers.adm.middlewares", "a"),
            (
                "traefik.http.middlewares.a.ipallowlist.sourcerange",
                "10.0.0.0/33",
            ),
        ]);
        assert!(e[0].2.contains("not an address range"), "{e:#?}");
    }

    #[test]
    fn v1_basic_auth_and_whitelist_map() {
        let r = run(
            &[
                ("traefik.frontend.rule", "Host:a.org"),
                ("traefik.frontend.auth.basic.users", BCRYPT),
                ("traefik.frontend.auth.basic.removeHeader", "true"),
                ("traefik.frontend.whiteList.sourceRange", "10.0.0.0/8"),
            ],
            &[80],
        );
        assert!(!r.has_errors(), "{:#?}", r.problems);
        let s = &r.routes[0];
        assert!(s.basicauth.as_ref().unwrap().remove_header);
        assert_eq!(s.ipallowlist.as_ref().unwrap().depth, 0);
        let r = run(
            &[
                ("traefik.frontend.rule", "Host:a.org"),
                ("traefik.frontend.auth.basic", BCRYPT),
            ],
            &[80],
        );
        assert!(!r.has_errors(), "{:#?}", r.problems);
        assert_eq!(r.routes[0].basicauth.as_ref().unwrap().users.len(), 1);
    }

    #[test]
    fn entrypoint_names_must_exist_or_be_traefiks_usual_aliases() {
        let opts = |eps: &[(&str, bool)]| LabelOptions {
            exposed_by_default: true,
            entrypoints: eps.iter().map(|(n, t)| (n.to_string(), *t)).collect(),
            ..LabelOptions::default()
        };
        let ours = opts(&[("plain", false), ("secure", true), ("admin-tls", true)]);
        let eps = |labels: &[(&str, &str)]| {
            let r = run_with(labels, &[80], ours.clone());
            assert!(!r.has_errors(), "{:#?}", r.problems);
            r.routes[0].entrypoints.clone().unwrap()
        };
        // v1 http/https, v2 web/websecure: the first plain and first TLS ones.
        assert_eq!(
            eps(&[
                ("traefik.frontend.rule", "Host:a.org"),
                ("traefik.frontend.entryPoints", "http,https"),
            ]),
            ["plain", "secure"]
        );
        assert_eq!(
            eps(&[
                ("traefik.http.routers.a.rule", "Host(`a.org`)"),
                ("traefik.http.routers.a.entrypoints", "websecure"),
            ]),
            ["secure"]
        );
        assert_eq!(
            eps(&[
                ("wharf.host", "a.org"),
                ("wharf.entrypoints", "admin-tls,web")
            ]),
            ["admin-tls", "plain"]
        );
        // A name that is neither: an error with a hint, on the label as written.
        for (key, labels) in [
            (
                "wharf.entrypoints",
                vec![("wharf.host", "a.org"), ("wharf.entrypoints", "secur")],
            ),
            (
                "traefik.http.routers.a.entrypoints",
                vec![
                    ("traefik.http.routers.a.rule", "Host(`a.org`)"),
                    ("traefik.http.routers.a.entrypoints", "secur"),
                ],
            ),
            (
                "traefik.frontend.entryPoints",
                vec![
                    ("traefik.frontend.rule", "Host:a.org"),
                    ("traefik.frontend.entryPoints", "secur"),
                ],
            ),
        ] {
            let r = run_with(&labels, &[80], ours.clone());
            assert!(r.routes.is_empty());
            let e = errors(&r);
            assert_eq!(e[0].label, key, "{e:#?}");
            assert_eq!(
                e[0].message,
                "no entrypoint named `secur` (configured: plain, secure, admin-tls); did you \
                 mean `secure`?"
            );
        }
        // An alias with no entrypoint of that kind is an error too.
        let plain_only = opts(&[("plain", false)]);
        let r = run_with(
            &[("wharf.host", "a.org"), ("wharf.entrypoints", "https")],
            &[80],
            plain_only,
        );
        assert!(errors(&r)[0]
            .message
            .contains("no entrypoint named `https`"));
    }

    #[test]
    fn rules_never_enable_on_their_own() {
        // exposed_by_default = false: traefik.enable=true (or wharf.enable=true)
        // is needed, v1 or v2 (security review M5).
        let strict = LabelOptions {
            exposed_by_default: false,
            traefik_rules_enable: false,
            ..LabelOptions::default()
        };
        for rule in [
            ("traefik.frontend.rule", "Host:a.org"),
            ("traefik.http.routers.a.rule", "Host(`a.org`)"),
        ] {
            let r = run_with(&[rule], &[80], strict.clone());
            assert!(!r.enabled && r.routes.is_empty() && r.problems.is_empty());
            let r = run_with(&[rule, ("traefik.enable", "true")], &[80], strict.clone());
            assert_eq!(r.routes.len(), 1, "{:#?}", r.problems);
            let r = run_with(&[rule, ("wharf.enable", "true")], &[80], strict.clone());
            assert_eq!(r.routes.len(), 1, "{:#?}", r.problems);
            // exposed_by_default = true: the rule routes as it always did.
            assert_eq!(run(&[rule], &[80]).routes.len(), 1);
            // exposed_by_default not set (the built-in defaults): a rule enables,
            // as Traefik v1's default did (SPEC), unless traefik.enable=false.
            let r = run_with(&[rule], &[80], LabelOptions::default());
            assert_eq!(r.routes.len(), 1, "{:#?}", r.problems);
            let r = run_with(
                &[rule, ("traefik.enable", "false")],
                &[80],
                LabelOptions::default(),
            );
            assert!(!r.enabled && r.routes.is_empty());
        }
    }

    #[test]
    fn v2_services() {
        // Several services: each router must say which.
        let two = [
            ("traefik.http.routers.a.rule", "Host(`a.org`)"),
            ("traefik.http.services.x.loadbalancer.server.port", "80"),
            ("traefik.http.services.y.loadbalancer.server.port", "81"),
        ];
        let r = run(&two, &[80, 81]);
        assert!(errors(&r)[0]
            .message
            .contains("traefik.http.routers.a.service"));
        let mut named = two.to_vec();
        named.push(("traefik.http.routers.a.service", "y@docker"));
        named.push(("traefik.http.routers.b.rule", "Host(`b.org`)"));
        named.push(("traefik.http.routers.b.service", "x"));
        let r = run(&named, &[80, 81]);
        assert!(!r.has_errors(), "{:#?}", r.problems);
        assert_eq!(r.routes[0].port, Some(81));
        assert_eq!(r.routes[1].port, Some(80));
        // A service that is not on this container cannot be routed to.
        let r = run(
            &[
                ("traefik.http.routers.a.rule", "Host(`a.org`)"),
                ("traefik.http.routers.a.service", "api@internal"),
            ],
            &[80],
        );
        assert_eq!(errors(&r)[0].label, "traefik.http.routers.a.service");
        // No port anywhere and two exposed: the error names the Traefik key.
        let r = run(
            &[
                ("traefik.http.routers.a.rule", "Host(`a.org`)"),
                ("traefik.http.services.s.loadbalancer.sticky.cookie", "true"),
            ],
            &[80, 81],
        );
        assert_eq!(
            errors(&r)[0].label,
            "traefik.http.services.s.loadbalancer.server.port"
        );
    }

    #[test]
    fn enabling_and_precedence() {
        // traefik.enable=false wins over a rule.
        let r = run(
            &[
                ("traefik.enable", "false"),
                ("traefik.http.routers.a.rule", "Host(`a.org`)"),
            ],
            &[80],
        );
        assert!(!r.enabled && r.problems.is_empty());
        // wharf.enable wins over traefik.enable.
        let r = run(
            &[
                ("wharf.enable", "true"),
                ("traefik.enable", "false"),
                ("traefik.http.routers.a.rule", "Host(`a.org`)"),
            ],
            &[80],
        );
        assert!(r.enabled);
        assert_eq!(r.routes.len(), 1);
        let r = run(
            &[
                ("traefik.enable", "nope"),
                ("traefik.frontend.rule", "Host:a.org"),
            ],
            &[80],
        );
        assert!(r.enabled && r.has_errors() && r.routes.is_empty());
        assert_eq!(errors(&r)[0].label, "traefik.enable");
        // traefik_labels = false: Traefik labels mean nothing.
        let off = LabelOptions {
            exposed_by_default: false,
            traefik_labels: false,
            traefik_rules_enable: true,
            ..LabelOptions::default()
        };
        let r = run_with(
            &[("traefik.http.routers.a.rule", "Host(`a.org`)")],
            &[80],
            off,
        );
        assert!(!r.enabled && r.problems.is_empty());
        // traefik.enable=true but no rule (Traefik's defaultRule): an error.
        let r = run(&[("traefik.enable", "true")], &[80]);
        assert_eq!(errors(&r)[0].label, "wharf.host");
        assert!(errors(&r)[0].message.contains("defaultRule"));
        // Only TCP routing: Wharf does not serve it, and that is no mistake.
        let r = run(
            &[
                ("traefik.enable", "true"),
                ("traefik.tcp.routers.db.rule", "HostSNI(`*`)"),
            ],
            &[5432],
        );
        assert!(!r.has_errors(), "{:#?}", r.problems);
        assert!(warnings(&r).iter().any(|p| p.message.contains("TCP/UDP")));
        assert!(r.routes.is_empty());
        let r = run(
            &[
                ("traefik.enable", "true"),
                ("traefik.http.services.s.loadbalancer.server.port", "80"),
            ],
            &[80],
        );
        assert!(r.has_errors());
        let r = run(
            &[
                ("traefik.enable", "true"),
                ("traefik.http.routers.a.tls", "true"),
            ],
            &[80],
        );
        assert!(warnings(&r)
            .iter()
            .any(|p| p.message.contains("has no rule")));
        assert!(r.has_errors());

        // wharf.* routes win; the Traefik labels are ignored with one warning.
        let r = run(
            &[
                ("wharf.enable", "true"),
                ("wharf.host", "w.org"),
                ("traefik.enable", "true"),
                ("traefik.http.routers.a.rule", "Host(`t.org`)"),
                ("traefik.http.routers.a.tls", "true"),
            ],
            &[80],
        );
        assert!(!r.has_errors());
        assert_eq!(r.routes.len(), 1);
        assert_eq!(r.routes[0].hosts, vec!["w.org"]);
        let w = warnings(&r);
        assert_eq!(w.len(), 1);
        assert!(w[0].message.contains("wharf.* wins"));

        // Service-level wharf.* keys refine a Traefik route.
        let r = run(
            &[
                ("traefik.frontend.rule", "Host:a.org"),
                ("wharf.sticky", "source"),
                ("wharf.hsts", "600"),
            ],
            &[80],
        );
        assert!(!r.has_errors(), "{:#?}", r.problems);
        assert_eq!(r.routes[0].sticky.kind, StickyType::Source);
        assert_eq!(r.routes[0].hsts.max_age, 600);
    }

    #[test]
    fn random_rules_never_panic() {
        // Rules stitched from the grammar's pieces, some valid, most not: each must
        // parse or be refused, never panic or expand past the term limit.
        const PIECES: &[&str] = &[
            "Host(`a.org`)",
            "Host(`b.org`,`c.org`)",
            "PathPrefix(`/x`)",
            "PathPrefix(`/x/y`)",
            "&&",
            "||",
            "(",
            ")",
            "!",
            "Host(",
            "`",
            "\"",
            ",",
            "HostRegexp(`.*`)",
            " ",
            "é",
            "&",
        ];
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        let (mut ok, mut err) = (0, 0);
        for _ in 0..5000 {
            let mut rule = String::new();
            for _ in 0..(seed % 12) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                rule.push_str(PIECES[(seed % PIECES.len() as u64) as usize]);
            }
            seed = seed.wrapping_add(1);
            match parse_v2_rule(&rule) {
                Ok(t) => {
                    assert!(!t.is_empty() && t.len() <= MAX_TERMS, "{rule}");
                    ok += 1;
                }
                Err(m) => {
                    assert!(!m.is_empty());
                    err += 1;
                }
            }
            let _ = parse_v1_rule(&rule, &mut |_| {});
        }
        assert!(ok > 0 && err > 0, "ok {ok}, err {err}");
    }

    #[test]
    fn a_v1_rule_expands_to_at_most_max_terms() {
        // fuzz/traefik_rule: each PathPrefix value copied the whole host list,
        // 3,000 x 3,000 from a 12 KB label.
        let hosts = vec!["a.org"; 1000].join(",");
        let paths = |n: usize| vec!["/x"; n].join(",");
        let ok = parse_v1_rule(
            &format!("Host:{hosts};PathPrefix:{}", paths(MAX_TERMS)),
            &mut |_| {},
        );
        assert_eq!(ok.unwrap().len(), MAX_TERMS);
        let err = parse_v1_rule(
            &format!("Host:{hosts};PathPrefix:{}", paths(MAX_TERMS + 1)),
            &mut |_| {},
        )
        .unwrap_err();
        assert!(err.contains("more than 64 PathPrefix values"), "{err}");
    }

    #[test]
    fn rule_parser_directly() {
        let t = parse_v2_rule("host(`A.org`) && pathprefix(`/x`)").unwrap();
        assert_eq!(
            t,
            vec![Term {
                hosts: Some(vec!["a.org".into()]),
                path: Some("/x".into())
            }]
        );
        let mut warned = Vec::new();
        let t =
            parse_v1_rule("Host: a.org ; PathPrefixStrip: /x", &mut |m| warned.push(m)).unwrap();
        assert_eq!(t[0].path.as_deref(), Some("/x"));
        assert_eq!(warned.len(), 1);
    }

    /// The labels of a v2 service `shop` on port 8443 over https, plus `extra`.
    fn https_service(extra: &[(&str, &str)]) -> ServiceRoutes {
        let mut labels = vec![
            ("traefik.http.routers.shop.rule", "Host(`shop.example.org`)"),
            (
                "traefik.http.services.shop.loadbalancer.server.port",
                "8443",
            ),
            (
                "traefik.http.services.shop.loadbalancer.server.scheme",
                "https",
            ),
        ];
        labels.extend_from_slice(extra);
        run(&labels, &[8443])
    }

    #[test]
    fn https_backends_from_v1_protocol_and_v2_scheme() {
        let r = run(
            &[
                ("traefik.frontend.rule", "Host:a.example.org"),
                ("traefik.protocol", "https"),
            ],
            &[443],
        );
        assert!(!r.has_errors(), "{:#?}", r.problems);
        assert_eq!(r.routes[0].scheme, Scheme::Https);
        assert!(
            r.routes[0].backend_tls.is_default(),
            "verified, system roots"
        );
        let r = https_service(&[]);
        assert!(!r.has_errors(), "{:#?}", r.problems);
        assert_eq!(r.routes[0].scheme, Scheme::Https);
        assert!(r.routes[0].backend_tls.is_default());
    }

    #[test]
    fn servers_transport_defined_by_labels_maps_to_backend_tls() {
        let dir = crate::route::tests::Scratch::new("traefik-transport");
        let (ca, cert, key) = (dir.file("ca.pem"), dir.file("c.pem"), dir.file("k.pem"));
        // As Traefik's docs spell it (the WebSocket guide: serversTransports /
        // loadBalancer.serversTransport); keys are case-insensitive.
        let r = https_service(&[
            (
                "traefik.http.serversTransports.insecureTransport.insecureSkipVerify",
                "true",
            ),
            (
                "traefik.http.services.shop.loadBalancer.serversTransport",
                "insecureTransport",
            ),
        ]);
        assert!(r.problems.is_empty(), "{:#?}", r.problems);
        let t = &r.routes[0].backend_tls;
        assert!(t.insecure);
        assert_eq!((t.ca.as_ref(), t.server_name.as_ref()), (None, None));

        // Every supported option, referenced with the Docker (or Swarm) provider.
        for reference in ["internal-ca", "internal-ca@docker", "Internal-CA@swarm"] {
            let r = https_service(&[
                (
                    "traefik.http.serverstransports.internal-ca.servername",
                    "App.Internal",
                ),
                ("traefik.http.serverstransports.internal-ca.rootcas", &ca),
                (
                    "traefik.http.serverstransports.internal-ca.insecureskipverify",
                    "false",
                ),
                (
                    "traefik.http.serverstransports.internal-ca.certificates[0].certfile",
                    &cert,
                ),
                (
                    "traefik.http.serverstransports.internal-ca.certificates[0].keyfile",
                    &key,
                ),
                (
                    "traefik.http.services.shop.loadbalancer.serverstransport",
                    reference,
                ),
            ]);
            assert!(r.problems.is_empty(), "{reference}: {:#?}", r.problems);
            assert_eq!(
                r.routes[0].backend_tls,
                crate::BackendTls {
                    server_name: Some("app.internal".into()),
                    ca: Some(ca.clone().into()),
                    insecure: false,
                    client_cert: Some(cert.clone().into()),
                    client_key: Some(key.clone().into()),
                }
            );
        }
        // Two routers on one service share its transport; its problems are told once.
        let r = https_service(&[
            (
                "traefik.http.routers.admin.rule",
                "Host(`admin.example.org`)",
            ),
            ("traefik.http.routers.admin.service", "shop"),
            ("traefik.http.routers.shop.service", "shop"),
            (
                "traefik.http.serverstransports.t.insecureskipverify",
                "true",
            ),
            ("traefik.http.serverstransports.t.disablehttp2", "true"),
            (
                "traefik.http.services.shop.loadbalancer.serverstransport",
                "t",
            ),
        ]);
        assert_eq!(errors(&r).len(), 1, "{:#?}", r.problems);
        // An empty reference is Traefik's default transport: verify.
        let r = https_service(&[(
            "traefik.http.services.shop.loadbalancer.serverstransport",
            "",
        )]);
        assert!(r.problems.is_empty(), "{:#?}", r.problems);
        assert!(r.routes[0].backend_tls.is_default());
        // Service-level wharf.* labels refine it.
        let r = https_service(&[
            (
                "traefik.http.serverstransports.t.insecureskipverify",
                "true",
            ),
            (
                "traefik.http.services.shop.loadbalancer.serverstransport",
                "t",
            ),
            ("wharf.backend-tls.insecure", "false"),
        ]);
        assert!(!r.has_errors(), "{:#?}", r.problems);
        assert!(!r.routes[0].backend_tls.insecure);
    }

    #[test]
    fn servers_transport_wharf_cannot_honour_is_an_error() {
        let dir = crate::route::tests::Scratch::new("traefik-transport-bad");
        let (ca, ca2) = (dir.file("ca.pem"), dir.file("ca2.pem"));
        let reference = (
            "traefik.http.services.shop.loadbalancer.serverstransport",
            "t",
        );
        // Options Wharf cannot honour: an error on the option's label.
        for (opt, value, needle) in [
            ("maxidleconnsperhost", "10", "max_idle_per_backend"),
            ("forwardingtimeouts.dialtimeout", "30s", "connect_timeout"),
            (
                "forwardingtimeouts.responseheadertimeout",
                "10s",
                "response_timeout",
            ),
            ("disablehttp2", "true", "cannot turn HTTP/2 off"),
            (
                "peercerturi",
                "spiffe://example.org/x",
                "SPIFFE or URI identity",
            ),
            (
                "spiffe.ids",
                "spiffe://example.org/id1",
                "SPIFFE or URI identity",
            ),
            (
                "spiffe.trustdomain",
                "example.org",
                "SPIFFE or URI identity",
            ),
            (
                "certificates[1].certfile",
                "/c2.pem",
                "one client certificate",
            ),
            ("rootcas[0]", "/ca.pem", "`rootcas=<file>`"),
            (
                "cipherSuites",
                "x",
                "`ciphersuites` is not a servers transport option",
            ),
        ] {
            let label = format!("traefik.http.serverstransports.t.{opt}");
            let r = https_service(&[
                (
                    "traefik.http.serverstransports.t.insecureskipverify",
                    "true",
                ),
                (label.as_str(), value),
                reference,
            ]);
            assert!(r.routes.is_empty(), "{opt}");
            let e = errors(&r);
            assert_eq!(e.len(), 1, "{opt}: {e:#?}");
            assert_eq!(e[0].label, label);
            assert_eq!(e[0].value, value);
            assert!(e[0].message.contains(needle), "{opt}: {}", e[0].message);
            assert!(
                e[0].message.contains("is an error, never ignored"),
                "{}",
                e[0].message
            );
        }
        // References Wharf cannot follow: an error on the reference.
        for (value, needle) in [
            ("t@file", "a servers transport of Traefik's `file` provider"),
            ("t@kubernetescrd", "Traefik's `kubernetescrd` provider"),
            ("default@internal", "Traefik's default servers transport"),
            ("elsewhere", "servers transport `elsewhere` is not defined"),
        ] {
            let r = https_service(&[
                (
                    "traefik.http.serverstransports.t.insecureskipverify",
                    "true",
                ),
                (reference.0, value),
            ]);
            assert!(r.routes.is_empty(), "{value}");
            let e = errors(&r);
            assert_eq!(e.len(), 1, "{value}: {e:#?}");
            assert_eq!(e[0].label, reference.0);
            assert_eq!(e[0].value, value);
            assert!(e[0].message.contains(needle), "{value}: {}", e[0].message);
            assert!(
                e[0].message.contains("wharf.backend-tls.*"),
                "{}",
                e[0].message
            );
            // The transport it did not reach is unused, which is said too.
            assert_eq!(warnings(&r).len(), 1, "{:#?}", r.problems);
        }
        // More than one CA file.
        let cas = format!("{ca},{ca2}");
        let r = https_service(&[
            ("traefik.http.serverstransports.t.rootcas", &cas),
            reference,
        ]);
        let e = errors(&r);
        assert_eq!(e.len(), 1, "{e:#?}");
        assert_eq!(e[0].label, "traefik.http.serverstransports.t.rootcas");
        assert!(e[0]
            .message
            .contains("one CA file per route and rootcas names 2"));
        // Route-key checks name the Traefik label: insecure with a CA, a
        // certificate without its key, a missing file, a bad server name.
        for (extra, label, needle) in [
            (
                vec![
                    (
                        "traefik.http.serverstransports.t.insecureskipverify",
                        "true",
                    ),
                    ("traefik.http.serverstransports.t.rootcas", ca.as_str()),
                ],
                "traefik.http.serverstransports.t.insecureskipverify",
                "insecure skips verification, so a ca would be ignored; remove one",
            ),
            (
                vec![(
                    "traefik.http.serverstransports.t.certificates[0].certfile",
                    ca.as_str(),
                )],
                "traefik.http.serverstransports.t.certificates[0].certfile",
                "set `backend_tls.client_key` too",
            ),
            (
                vec![(
                    "traefik.http.serverstransports.t.rootcas",
                    "/nonexistent/ca.pem",
                )],
                "traefik.http.serverstransports.t.rootcas",
                "cannot open the CA file `/nonexistent/ca.pem`",
            ),
            (
                vec![(
                    "traefik.http.serverstransports.t.servername",
                    "app.internal:8443",
                )],
                "traefik.http.serverstransports.t.servername",
                "without a port",
            ),
            (
                vec![(
                    "traefik.http.serverstransports.t.insecureskipverify",
                    "sure",
                )],
                "traefik.http.serverstransports.t.insecureskipverify",
                "`sure` is not a boolean",
            ),
        ] {
            let mut labels = extra.clone();
            labels.push(reference);
            let r = https_service(&labels);
            let e = errors(&r);
            assert_eq!(e.len(), 1, "{extra:?}: {e:#?}");
            assert_eq!(e[0].label, label, "{extra:?}");
            assert!(e[0].message.contains(needle), "{extra:?}: {}", e[0].message);
        }
        // A transport on a service whose scheme is not https.
        let r = run(
            &[
                ("traefik.http.routers.shop.rule", "Host(`shop.example.org`)"),
                (
                    "traefik.http.serverstransports.t.insecureskipverify",
                    "true",
                ),
                (reference.0, "t"),
            ],
            &[80],
        );
        let e = errors(&r);
        assert_eq!(e.len(), 1, "{e:#?}");
        assert_eq!(
            e[0].label,
            "traefik.http.serverstransports.t.insecureskipverify"
        );
        assert!(e[0]
            .message
            .starts_with("only used with scheme = \"https\""));
    }

    #[test]
    fn unused_servers_transports_are_warnings() {
        let r = https_service(&[
            (
                "traefik.http.serverstransports.spare.insecureskipverify",
                "true",
            ),
            (
                "traefik.http.serverstransports.spare.maxidleconnsperhost",
                "5",
            ),
        ]);
        assert!(!r.has_errors(), "{:#?}", r.problems);
        let w = warnings(&r);
        assert_eq!(w.len(), 1, "{w:#?}");
        assert!(w[0]
            .message
            .contains("servers transport `spare` is not used"));
        assert!(r.routes[0].backend_tls.is_default());
    }
}
