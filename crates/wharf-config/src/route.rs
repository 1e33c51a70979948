//! Route keys: one parser for `[[routes]]` in the file and for `wharf.*` labels, so
//! both accept exactly the same keys and values (SPEC: "Route keys in the file are
//! the label keys below without `wharf.`").
//!
//! Input is a flat list of `(key, value)` pairs with keys in file spelling
//! (`https_redirect`, `sticky.cookie`); label keys are mapped to it by replacing
//! `-` with `_`. Output is a [`RouteSpec`] or the list of problems, each naming its
//! key, so that one bad key is reported precisely and never affects another route.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use wharf_table::{Balance, Scheme};

use crate::values;

/// Every route key, in file spelling. A group set directly (`sticky = "cookie"`) is
/// an alias of the group's first key (see [`group_alias`]).
pub const ROUTE_KEYS: &[&str] = &[
    "name",
    "enable",
    "host",
    "hosts",
    "path",
    "port",
    "scheme",
    "network",
    "upstream",
    "balance",
    "entrypoints",
    "sticky.type",
    "sticky.cookie",
    "sticky.mode",
    "sticky.ttl",
    "healthcheck.path",
    "healthcheck.method",
    "healthcheck.host",
    "healthcheck.interval",
    "healthcheck.timeout",
    "healthcheck.rise",
    "healthcheck.fall",
    "healthcheck.expect",
    "tls",
    "https_redirect",
    "hsts.max_age",
    "hsts.subdomains",
    "hsts.preload",
    "ratelimit.rate",
    "ratelimit.burst",
    "ratelimit.key",
    "ratelimit.scope",
    "maxconn.limit",
    "maxconn.queue",
    "maxconn.timeout",
    "backend_tls.server_name",
    "backend_tls.ca",
    "backend_tls.insecure",
    "backend_tls.client_cert",
    "backend_tls.client_key",
    "ipallowlist.ranges",
    "ipallowlist.depth",
    "basicauth.users",
    "basicauth.realm",
    "basicauth.remove_header",
];

/// Route keys under which the rest of the key is a header name:
/// `headers.request.X-Env`, `headers.response.X-Frame-Options`.
pub const HEADER_KEY_PREFIXES: [&str; 2] = ["headers.request.", "headers.response."];

/// `sticky` → `sticky.type`, `hsts` → `hsts.max_age`, `ratelimit` → `ratelimit.rate`.
pub fn group_alias(key: &str) -> &str {
    match key {
        "sticky" => "sticky.type",
        "hsts" => "hsts.max_age",
        "ratelimit" => "ratelimit.rate",
        "maxconn" => "maxconn.limit",
        "ipallowlist" => "ipallowlist.ranges",
        "basicauth" => "basicauth.users",
        "hosts" => "host",
        other => other,
    }
}

/// Where a route's backends come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upstream {
    /// Fixed addresses (`static:10.0.0.5:80,10.0.0.6:80`).
    Static(Vec<SocketAddr>),
    /// A DNS name re-resolved by the DNS provider (`dns:legacy-app:8080`).
    Dns { name: String, port: u16 },
    /// Filled in by a provider (Docker) rather than written in the route.
    Provided,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StickyType {
    #[default]
    None,
    Cookie,
    Source,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StickyMode {
    #[default]
    Insert,
    Prefix,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Sticky {
    pub kind: StickyType,
    /// The cookie's name (`sticky.cookie`), an RFC 6265 token.
    pub cookie: String,
    pub mode: StickyMode,
    /// `sticky.ttl` as written, `None` when it is not. Cookie stickiness: the
    /// cookie's `Max-Age` (`None`: a session cookie). Source stickiness: how long
    /// an idle binding lasts (see [`Sticky::source_ttl`]).
    pub ttl: Option<Duration>,
}

impl Sticky {
    /// The cookie name when `sticky.cookie` is not set.
    pub const DEFAULT_COOKIE: &'static str = "WHARFID";
    /// How long an idle `source` binding lasts when `sticky.ttl` is not set
    /// (SPEC "Labels": `wharf.sticky.ttl`, default `3h`).
    pub const DEFAULT_SOURCE_TTL: Duration = Duration::from_secs(3 * 3600);

    /// How long an idle `source` binding lasts: `sticky.ttl`, else 3h.
    pub fn source_ttl(&self) -> Duration {
        self.ttl.unwrap_or(Self::DEFAULT_SOURCE_TTL)
    }
}

impl Default for Sticky {
    fn default() -> Self {
        Sticky {
            kind: StickyType::None,
            cookie: Self::DEFAULT_COOKIE.into(),
            mode: StickyMode::Insert,
            ttl: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheck {
    pub path: String,
    pub method: String,
    pub host: Option<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
    pub expect: Vec<(u16, u16)>,
}

impl HealthCheck {
    pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
    /// The timeout when none is given, unless the interval is this short or
    /// shorter: then the timeout is half the interval (a check ends before the
    /// next one starts).
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
    /// Checks more often than this load the backend more than they tell.
    pub const MIN_INTERVAL: Duration = Duration::from_millis(100);
    /// Checks rarer than this would leave a dead backend in rotation for days.
    pub const MAX_INTERVAL: Duration = Duration::from_secs(24 * 3600);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsMode {
    #[default]
    Acme,
    None,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hsts {
    pub max_age: u64,
    pub subdomains: bool,
    pub preload: bool,
}

impl Default for Hsts {
    fn default() -> Self {
        // As the HAProxy setup Wharf replaces sets it (CONTEXT.md, setup 2).
        Hsts {
            max_age: 63_072_000,
            subdomains: false,
            preload: false,
        }
    }
}

impl Hsts {
    /// The header value (RFC 6797 §6.1), or `None` when disabled by `max_age = 0`.
    pub fn header_value(&self) -> Option<String> {
        if self.max_age == 0 {
            return None;
        }
        let mut v = format!("max-age={}", self.max_age);
        if self.subdomains {
            v.push_str("; includeSubDomains");
        }
        if self.preload {
            v.push_str("; preload");
        }
        Some(v)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateKey {
    Source,
    Route,
    Header(String),
}

/// Where a rate limit's buckets live (`ratelimit.scope`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RateScope {
    /// Each Wharf replica counts on its own.
    #[default]
    Replica,
    /// The replicas of a swarm share the limit.
    Cluster,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RateLimit {
    /// Requests per second, from [`RateLimit::MIN_PER_SECOND`] to
    /// [`RateLimit::MAX_PER_SECOND`].
    pub per_second: f64,
    pub burst: u32,
    pub key: RateKey,
    pub scope: RateScope,
}

impl RateLimit {
    /// A larger rate limits nothing a proxy could serve.
    pub const MAX_PER_SECOND: f64 = values::MAX_RATE;
    /// One request per day. `N/s|m|h` cannot go below 1/h; a Traefik `average`
    /// over a long `period` can, and a bucket refilling more slowly than this
    /// would hold its state (and a client's `Retry-After`) for days.
    pub const MIN_PER_SECOND: f64 = 1.0 / 86_400.0;
}

/// TLS to the backends of a `scheme = "https"` route (`backend_tls.*`; labels
/// `wharf.backend-tls.server-name` and so on). The default verifies each
/// backend's certificate against the system roots, with the route's first
/// non-wildcard host as the server name (the proxy picks it), and presents no
/// client certificate.
///
/// Parsing checks that the files exist and can be opened; their contents (PEM)
/// are read by the proxy, which reports a file it cannot use for its route.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct BackendTls {
    /// `server_name`: sent as SNI and the name the backend's certificate must be
    /// valid for; a DNS name or an IP address, as `rustls` accepts it (lower-cased).
    /// `None`: the proxy uses the route's first non-wildcard host.
    pub server_name: Option<String>,
    /// `ca`: a PEM file of CA certificates trusted in addition to the system roots.
    pub ca: Option<PathBuf>,
    /// `insecure = true`: the backend's certificate is not verified at all
    /// (Traefik's `insecureSkipVerify`). Never set together with `ca`.
    pub insecure: bool,
    /// `client_cert`: a PEM certificate (chain) presented to the backend (mutual
    /// TLS). Set exactly when `client_key` is.
    pub client_cert: Option<PathBuf>,
    /// `client_key`: the PEM private key of `client_cert`.
    pub client_key: Option<PathBuf>,
}

impl BackendTls {
    /// True when nothing is set (the default: verify against the system roots).
    pub fn is_default(&self) -> bool {
        *self == BackendTls::default()
    }
}

/// A validated route: the desired state one provider declares.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteSpec {
    pub name: String,
    /// `enable` as written, if it was (`false` drops a file route; labels use it
    /// for `exposed_by_default`).
    pub enable: Option<bool>,
    pub hosts: Vec<String>,
    pub path: String,
    pub upstream: Upstream,
    pub port: Option<u16>,
    pub scheme: Scheme,
    pub network: Option<String>,
    pub balance: Balance,
    pub entrypoints: Option<Vec<String>>,
    pub sticky: Sticky,
    pub healthcheck: Option<HealthCheck>,
    pub tls: TlsMode,
    pub https_redirect: bool,
    pub hsts: Hsts,
    pub ratelimit: Option<RateLimit>,
    pub maxconn: Option<MaxConn>,
    /// TLS to the backends; only set (non-default) when `scheme` is `https`.
    pub backend_tls: BackendTls,
    /// `ipallowlist.*`: only these client addresses.
    pub ipallowlist: Option<IpAllowList>,
    /// `basicauth.*`: HTTP Basic authentication.
    pub basicauth: Option<BasicAuthSpec>,
    /// `headers.request.<Name>` / `headers.response.<Name>`; `None` when no rule.
    pub headers: Option<HeaderRules>,
}

pub use wharf_table::{HeaderRules, IpAllowList, PasswordHash};

/// `basicauth.*` as validated: users with parsed hashes.
#[derive(Clone, PartialEq, Eq)]
pub struct BasicAuthSpec {
    pub users: Vec<(String, PasswordHash)>,
    pub realm: String,
    pub remove_header: bool,
}

impl std::fmt::Debug for BasicAuthSpec {
    /// User names only: hashes stay out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BasicAuthSpec")
            .field(
                "users",
                &self.users.iter().map(|(u, _)| u).collect::<Vec<_>>(),
            )
            .field("realm", &self.realm)
            .field("remove_header", &self.remove_header)
            .finish()
    }
}

impl BasicAuthSpec {
    /// Traefik's default realm is `traefik`; Wharf's is its own name.
    pub const DEFAULT_REALM: &'static str = "wharf";
}

/// The deepest `X-Forwarded-For` entry `ipallowlist.depth` may name.
pub const MAX_XFF_DEPTH: u32 = 32;

impl RouteSpec {
    /// Settings of this route that are accepted and validated but not enforced by
    /// this build, one line each, so an operator is told (by the log and by
    /// `wharf check`) rather than left to think they work.
    pub fn not_enforced(&self) -> Vec<String> {
        // Every setting of this build is enforced; a future one that is parsed
        // before it is enforced says so here, one line per setting:
        // "route `NAME`: `SETTING` is validated but not enforced by this build yet".
        Vec::new()
    }

    /// Why `key` (file spelling, as given for this route) has no effect with the
    /// rest of the route, if it has none; for a warning, as the setting is valid
    /// on its own: `sticky.cookie` or `sticky.mode` when sticky is not `cookie`,
    /// `sticky.ttl` when sticky is `none`.
    pub fn without_effect(&self, key: &str) -> Option<String> {
        let kind = self.sticky.kind;
        match group_alias(key) {
            "sticky.cookie" | "sticky.mode" if kind == StickyType::Source => Some(
                "has no effect: sticky is `source`, which binds by client address; the cookie \
                 name and mode are for sticky `cookie`"
                    .into(),
            ),
            "sticky.ttl"
                if kind == StickyType::Cookie && self.sticky.mode == StickyMode::Prefix =>
            {
                Some(
                    "has no effect in prefix mode: the application's own cookie carries the \
                     token, so its lifetime is the one the application sets"
                        .into(),
                )
            }
            "sticky.cookie" | "sticky.mode" | "sticky.ttl" if kind == StickyType::None => Some(
                "has no effect: sticky is `none`; set sticky to `cookie` (or `source`) to use it"
                    .into(),
            ),
            _ => None,
        }
    }
}

/// `maxconn`: the table's own type, so a parsed route hands it over as it is.
pub use wharf_table::MaxConn;

/// Defaults and bounds of the `maxconn.*` keys.
pub mod maxconn {
    use std::time::Duration;

    /// Waiting requests per route when `maxconn.queue` is unset.
    pub const DEFAULT_QUEUE: u32 = 1024;
    /// HAProxy's `timeout queue` falls back to `timeout connect`, commonly 5s.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
    /// A larger per-backend limit limits nothing (leave `maxconn` unset).
    pub const MAX_LIMIT: u32 = 1_000_000;
    /// Every waiting request holds a client connection and its buffers.
    pub const MAX_QUEUE: u32 = 1_000_000;
    /// Longer than any client waits for a response head.
    pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);
}

/// One problem with one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyProblem {
    /// The key as the user wrote it.
    pub key: String,
    pub message: String,
}

/// Whether [`parse_route_with`] opens the files a route names (`backend_tls.ca`,
/// `.client_cert`, `.client_key`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FileCheck {
    /// Each file must exist and open for reading, here and now: for the file
    /// and the Docker provider, which run where Wharf runs.
    #[default]
    Open,
    /// Paths are only checked for shape: the files live on another machine (in
    /// Wharf's container), as for `wharf check --compose`.
    Skip,
}

/// Parses route keys. `upstream_required` is true for the file (labels get their
/// backends from Docker). Every problem is collected, not just the first. Files
/// named by `backend_tls.*` must open ([`FileCheck::Open`]).
pub fn parse_route(
    default_name: &str,
    pairs: &[(String, String)],
    upstream_required: bool,
) -> Result<RouteSpec, Vec<KeyProblem>> {
    parse_route_with(default_name, pairs, upstream_required, FileCheck::Open)
}

/// [`parse_route`], saying whether the files a route names are opened.
pub fn parse_route_with(
    default_name: &str,
    pairs: &[(String, String)],
    upstream_required: bool,
    files: FileCheck,
) -> Result<RouteSpec, Vec<KeyProblem>> {
    let mut problems = Vec::new();
    let mut get = std::collections::BTreeMap::<&str, (&str, &str)>::new();
    let mut header_pairs: Vec<(&str, &str)> = Vec::new();
    for (key, value) in pairs {
        let canon = group_alias(key);
        if HEADER_KEY_PREFIXES.iter().any(|p| key.starts_with(p)) {
            header_pairs.push((key.as_str(), value.as_str()));
            continue;
        }
        if !ROUTE_KEYS.contains(&canon) {
            let hint = values::suggest(key, ROUTE_KEYS.iter().copied())
                .map(|s| format!("; did you mean `{s}`?"))
                .unwrap_or_default();
            problems.push(KeyProblem {
                key: key.clone(),
                message: format!("unknown key{hint}"),
            });
            continue;
        }
        if let Some((first, _)) = get.insert(canon, (key.as_str(), value.as_str())) {
            problems.push(KeyProblem {
                key: key.clone(),
                message: format!("set twice (also as `{first}`)"),
            });
        }
    }

    // Small helpers that record a problem under the user's key and yield None.
    let mut field = |canon: &str, parse: &mut dyn FnMut(&str) -> Result<(), String>| {
        if let Some((key, value)) = get.get(canon) {
            if let Err(message) = parse(value) {
                problems.push(KeyProblem {
                    key: (*key).to_string(),
                    message,
                });
            }
        }
    };

    let mut spec = RouteSpec {
        name: default_name.to_string(),
        enable: None,
        hosts: Vec::new(),
        path: "/".into(),
        upstream: Upstream::Provided,
        port: None,
        scheme: Scheme::Http,
        network: None,
        balance: Balance::LeastConn,
        entrypoints: None,
        sticky: Sticky::default(),
        healthcheck: None,
        tls: TlsMode::Acme,
        https_redirect: true,
        hsts: Hsts::default(),
        ratelimit: None,
        maxconn: None,
        backend_tls: BackendTls::default(),
        ipallowlist: None,
        basicauth: None,
        headers: None,
    };

    field("name", &mut |v| {
        if v.trim().is_empty() {
            return Err("a route name cannot be empty".into());
        }
        spec.name = v.trim().to_string();
        Ok(())
    });
    field("enable", &mut |v| {
        spec.enable = Some(values::boolean(v)?);
        Ok(())
    });
    field("host", &mut |v| {
        let mut hosts = Vec::new();
        for h in values::list(v) {
            hosts.push(values::host_pattern(&h)?);
        }
        if hosts.is_empty() {
            return Err("no host name given".into());
        }
        spec.hosts = hosts;
        Ok(())
    });
    field("path", &mut |v| {
        if !v.starts_with('/') || v.bytes().any(|b| b.is_ascii_control() || b == b' ') {
            return Err(format!(
                "`{v}` is not a path prefix (it must start with `/`)"
            ));
        }
        spec.path = v.to_string();
        Ok(())
    });
    field("port", &mut |v| {
        let p: u16 = values::number(v, "port")?;
        if p == 0 {
            return Err("port 0 is not a backend port".into());
        }
        spec.port = Some(p);
        Ok(())
    });
    let mut scheme_parsed = false;
    field("scheme", &mut |v| {
        spec.scheme = match v.trim().to_ascii_lowercase().as_str() {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            "h2c" => Scheme::H2c,
            _ => return Err(format!("`{v}` is not a scheme; use http, https or h2c")),
        };
        scheme_parsed = true;
        Ok(())
    });
    field("network", &mut |v| {
        spec.network = Some(v.trim().to_string());
        Ok(())
    });
    field("upstream", &mut |v| {
        spec.upstream = parse_upstream(v)?;
        Ok(())
    });
    field("balance", &mut |v| {
        spec.balance = match v.trim().to_ascii_lowercase().as_str() {
            "leastconn" => Balance::LeastConn,
            "roundrobin" => Balance::RoundRobin,
            "random" => Balance::Random,
            "source" => Balance::Source,
            _ => {
                return Err(format!(
                    "`{v}` is not a balance; use leastconn, roundrobin, random or source"
                ))
            }
        };
        Ok(())
    });
    field("entrypoints", &mut |v| {
        let eps = values::list(v);
        if eps.is_empty() {
            return Err("the entrypoint list is empty".into());
        }
        spec.entrypoints = Some(eps);
        Ok(())
    });
    field("sticky.type", &mut |v| {
        spec.sticky.kind = match v.trim().to_ascii_lowercase().as_str() {
            "none" => StickyType::None,
            "cookie" => StickyType::Cookie,
            "source" => StickyType::Source,
            _ => {
                return Err(format!(
                    "`{v}` is not a sticky type; use none, cookie or source"
                ))
            }
        };
        Ok(())
    });
    field("sticky.cookie", &mut |v| {
        // RFC 6265 §4.1.1: a cookie name is an RFC 7230 token.
        let name = v.trim();
        if name.is_empty() {
            return Err(format!(
                "an empty cookie name; write e.g. `{}` (the default) or `JSESSIONID`",
                Sticky::DEFAULT_COOKIE
            ));
        }
        if let Some(bad) = not_token(name) {
            return Err(format!(
                "`{}` is not a valid cookie name: {bad} is not allowed ({TOKEN_CHARS}), e.g. \
                 `{}`",
                v.escape_debug(),
                Sticky::DEFAULT_COOKIE
            ));
        }
        spec.sticky.cookie = name.to_string();
        Ok(())
    });
    field("sticky.mode", &mut |v| {
        spec.sticky.mode = match v.trim().to_ascii_lowercase().as_str() {
            "insert" => StickyMode::Insert,
            "prefix" => StickyMode::Prefix,
            _ => return Err(format!("`{v}` is not a sticky mode; use insert or prefix")),
        };
        Ok(())
    });
    field("sticky.ttl", &mut |v| {
        let d = values::positive_duration(v).map_err(|e| {
            format!(
                "{e}; leave sticky.ttl unset for a session cookie (sticky `cookie`) or 3h \
                 (sticky `source`)"
            )
        })?;
        spec.sticky.ttl = Some(d);
        Ok(())
    });

    let mut hc = HealthCheck {
        path: String::new(),
        method: "HEAD".into(),
        host: None,
        interval: HealthCheck::DEFAULT_INTERVAL,
        timeout: HealthCheck::DEFAULT_TIMEOUT,
        rise: 2,
        fall: 3,
        expect: vec![(200, 399)],
    };
    // Whether interval and timeout parsed, for the check across the two.
    let (mut hc_interval_ok, mut hc_timeout_ok) = (false, false);
    field("healthcheck.path", &mut |v| {
        if !v.starts_with('/') {
            return Err(format!(
                "`{v}` is not a path (it must start with `/`, e.g. `/health`)"
            ));
        }
        if v.bytes().any(|b| b.is_ascii_control() || b == b' ') {
            return Err(format!(
                "`{}` contains a space or a control character; percent-encode it (a space is `%20`)",
                v.escape_debug()
            ));
        }
        hc.path = v.to_string();
        Ok(())
    });
    field("healthcheck.method", &mut |v| {
        hc.method = match v.trim().to_ascii_uppercase().as_str() {
            m @ ("HEAD" | "GET") => m.to_string(),
            _ => {
                return Err(format!(
                    "`{v}` is not a health check method; use HEAD or GET"
                ))
            }
        };
        Ok(())
    });
    field("healthcheck.host", &mut |v| {
        let h = values::host_pattern(v)?;
        if h.contains('*') {
            return Err(format!(
                "`{v}` is a pattern; a check sends one Host header, so name one host \
                 (e.g. `www.example.org`)"
            ));
        }
        hc.host = Some(h);
        Ok(())
    });
    field("healthcheck.interval", &mut |v| {
        let d = values::positive_duration(v)?;
        if d < HealthCheck::MIN_INTERVAL {
            return Err(format!(
                "`{v}` is shorter than the shortest check interval, 100ms; write e.g. `1s` \
                 (HAProxy's `inter` is 2s by default)"
            ));
        }
        if d > HealthCheck::MAX_INTERVAL {
            return Err(format!(
                "`{v}` is longer than the longest check interval, 24h: a dead backend would \
                 stay in rotation for `fall` times that; write e.g. `10s`"
            ));
        }
        hc.interval = d;
        hc_interval_ok = true;
        Ok(())
    });
    field("healthcheck.timeout", &mut |v| {
        hc.timeout = values::positive_duration(v)?;
        hc_timeout_ok = true;
        Ok(())
    });
    field("healthcheck.rise", &mut |v| {
        hc.rise = at_least_one(v, "rise")?;
        Ok(())
    });
    field("healthcheck.fall", &mut |v| {
        hc.fall = at_least_one(v, "fall")?;
        Ok(())
    });
    field("healthcheck.expect", &mut |v| {
        hc.expect = values::status_list(v)?;
        Ok(())
    });

    field("tls", &mut |v| {
        spec.tls = match v.trim().to_ascii_lowercase().as_str() {
            "acme" => TlsMode::Acme,
            "none" => TlsMode::None,
            _ => return Err(format!("`{v}` is not a TLS mode; use acme or none")),
        };
        Ok(())
    });
    field("https_redirect", &mut |v| {
        spec.https_redirect = values::boolean(v)?;
        Ok(())
    });
    field("hsts.max_age", &mut |v| {
        spec.hsts.max_age = values::number(v, "max-age in seconds")?;
        Ok(())
    });
    field("hsts.subdomains", &mut |v| {
        spec.hsts.subdomains = values::boolean(v)?;
        Ok(())
    });
    field("hsts.preload", &mut |v| {
        spec.hsts.preload = values::boolean(v)?;
        Ok(())
    });

    let mut rl_rate = None;
    let mut rl_burst = None;
    let mut rl_key = RateKey::Source;
    let mut rl_scope = RateScope::Replica;
    field("ratelimit.rate", &mut |v| {
        rl_rate = Some(values::rate(v)?);
        Ok(())
    });
    field("ratelimit.burst", &mut |v| {
        let n: u32 = values::number(v, "burst (a whole number of requests)")?;
        if n == 0 {
            return Err(
                "burst must be at least 1: a bucket of 0 lets no request through; leave it \
                 unset for the per-second rate (at least 1)"
                    .into(),
            );
        }
        rl_burst = Some(n);
        Ok(())
    });
    field("ratelimit.key", &mut |v| {
        let v = v.trim();
        rl_key = match v.to_ascii_lowercase().as_str() {
            "source" => RateKey::Source,
            "route" => RateKey::Route,
            lower => match lower.strip_prefix("header:").map(str::trim) {
                Some("") => {
                    return Err(format!(
                        "`{v}` names no header; write e.g. `header:X-Api-Key`"
                    ))
                }
                Some(name) => match not_token(name) {
                    None => RateKey::Header(name.to_string()),
                    Some(bad) => {
                        return Err(format!(
                            "`{}` is not a valid header name: {bad} is not allowed \
                             ({TOKEN_CHARS}), e.g. `header:X-Api-Key`",
                            v.escape_debug()
                        ))
                    }
                },
                None => {
                    return Err(format!(
                        "`{}` is not a rate-limit key; use source, route or header:NAME",
                        v.escape_debug()
                    ))
                }
            },
        };
        Ok(())
    });
    field("ratelimit.scope", &mut |v| {
        rl_scope = match v.trim().to_ascii_lowercase().as_str() {
            "replica" => RateScope::Replica,
            "cluster" => RateScope::Cluster,
            _ => {
                return Err(format!(
                    "`{}` is not a rate-limit scope; use replica or cluster",
                    v.escape_debug()
                ))
            }
        };
        Ok(())
    });
    let mut mc_limit = None;
    let mut mc_queue = maxconn::DEFAULT_QUEUE;
    let mut mc_timeout = maxconn::DEFAULT_TIMEOUT;
    field("maxconn.limit", &mut |v| {
        let n = at_least_one(v, "maxconn (requests in flight per backend)")?;
        if n > maxconn::MAX_LIMIT {
            return Err(format!(
                "`{v}` is more than 1000000 requests in flight per backend, which limits \
                 nothing; leave maxconn unset for no limit"
            ));
        }
        mc_limit = Some(n);
        Ok(())
    });
    field("maxconn.queue", &mut |v| {
        let n: u32 = values::number(
            v,
            "queue length (a whole number; 0: no queue, the excess gets 503 at once)",
        )?;
        if n > maxconn::MAX_QUEUE {
            return Err(format!(
                "`{v}` is more waiting requests than a queue may hold: at most 1000000, as each \
                 holds a client connection (the default is 1024)"
            ));
        }
        mc_queue = n;
        Ok(())
    });
    field("maxconn.timeout", &mut |v| {
        let d = values::positive_duration(v)
            .map_err(|e| format!("{e} (use `maxconn.queue = 0` for no waiting at all)"))?;
        if d > maxconn::MAX_TIMEOUT {
            return Err(format!(
                "`{v}` is longer than a request may wait in the queue, 1h; write e.g. `5s` \
                 (HAProxy's `timeout queue`)"
            ));
        }
        mc_timeout = d;
        Ok(())
    });
    // backend_tls: only with scheme = "https" (a scheme that did not parse is
    // reported on its own, and the keys are then checked as for https). An empty
    // value is unset, as in `client_cert = ""`.
    let wrong_scheme = (spec.scheme != Scheme::Https
        && (scheme_parsed || !get.contains_key("scheme")))
    .then(|| {
        format!(
            "only used with scheme = \"https\" (this route's scheme is {}): set the scheme to \
             https, or remove this key",
            spec.scheme.as_str()
        )
    });
    let mut tls = BackendTls::default();
    let mut tls_field = |canon: &str, parse: &mut dyn FnMut(&str) -> Result<(), String>| {
        field(canon, &mut |v| {
            if v.trim().is_empty() {
                return Ok(());
            }
            match &wrong_scheme {
                Some(m) => Err(m.clone()),
                None => parse(v),
            }
        })
    };
    tls_field("backend_tls.server_name", &mut |v| {
        tls.server_name = Some(server_name(v)?);
        Ok(())
    });
    tls_field("backend_tls.ca", &mut |v| {
        tls.ca = Some(readable_file(v, "CA", files)?);
        Ok(())
    });
    tls_field("backend_tls.insecure", &mut |v| {
        tls.insecure = values::boolean(v)?;
        Ok(())
    });
    tls_field("backend_tls.client_cert", &mut |v| {
        tls.client_cert = Some(readable_file(v, "client certificate", files)?);
        Ok(())
    });
    tls_field("backend_tls.client_key", &mut |v| {
        tls.client_key = Some(readable_file(v, "client key", files)?);
        Ok(())
    });
    // Checks across keys, each only between keys that parsed (a key that did
    // not is reported on its own).
    let tls_key = |canon: &str| {
        get.get(canon)
            .filter(|(_, v)| !v.trim().is_empty())
            .map(|(key, _)| (*key).to_string())
    };
    if wrong_scheme.is_none() {
        if tls.insecure && tls.ca.is_some() {
            if let Some(key) = tls_key("backend_tls.insecure") {
                problems.push(KeyProblem {
                    key,
                    message: "insecure skips verification, so a ca would be ignored; remove one \
                              (keep the ca to verify the backend against it)"
                        .into(),
                });
            }
        }
        for (have, have_key, missing) in [
            (
                tls.client_cert.is_some(),
                "backend_tls.client_cert",
                "backend_tls.client_key",
            ),
            (
                tls.client_key.is_some(),
                "backend_tls.client_key",
                "backend_tls.client_cert",
            ),
        ] {
            if have && tls_key(missing).is_none() {
                if let Some(key) = tls_key(have_key) {
                    let (what, other) = if have_key.ends_with("cert") {
                        ("a client certificate", "its private key")
                    } else {
                        ("a client key", "its certificate")
                    };
                    problems.push(KeyProblem {
                        key,
                        message: format!(
                            "{what} is presented only with {other}: set `{missing}` too \
                             (both are PEM files), or remove this key"
                        ),
                    });
                }
            }
        }
    }
    spec.backend_tls = tls;

    match mc_limit {
        Some(limit) => {
            spec.maxconn = Some(MaxConn {
                limit,
                queue: mc_queue,
                timeout: mc_timeout,
            })
        }
        // A limit that did not parse is reported on its own.
        None if !get.contains_key("maxconn.limit")
            && get.keys().any(|k| k.starts_with("maxconn.")) =>
        {
            problems.push(KeyProblem {
                key: "maxconn".into(),
                message: "queue settings given without `maxconn` (the limit), which enables them"
                    .into(),
            })
        }
        None => {}
    }

    // A check must end before the next one starts. With no timeout given, a
    // short interval shortens the default timeout rather than being an error.
    match get.get("healthcheck.timeout") {
        None if hc.interval <= HealthCheck::DEFAULT_TIMEOUT => hc.timeout = hc.interval / 2,
        Some((key, written)) if hc_timeout_ok && hc.timeout >= hc.interval => {
            let interval = match get.get("healthcheck.interval") {
                Some((_, i)) if hc_interval_ok => format!("`{}`", i.trim()),
                Some(_) => String::new(),
                None => format!(
                    "`{}` (the default)",
                    humantime::format_duration(hc.interval)
                ),
            };
            // An interval that did not parse is reported on its own.
            if !interval.is_empty() {
                problems.push(KeyProblem {
                    key: (*key).to_string(),
                    message: format!(
                        "`{}` is not shorter than the check interval {interval}: a check must \
                         end before the next one starts; set a timeout below the interval \
                         (e.g. `{}`) or a longer interval",
                        written.trim(),
                        humantime::format_duration(hc.interval / 2),
                    ),
                });
            }
        }
        _ => {}
    }
    if !hc.path.is_empty() {
        spec.healthcheck = Some(hc);
    } else if !get.contains_key("healthcheck.path")
        && get.keys().any(|k| k.starts_with("healthcheck."))
    {
        problems.push(KeyProblem {
            key: "healthcheck.path".into(),
            message: "health check settings given without `healthcheck.path`, which enables them"
                .into(),
        });
    }
    match rl_rate {
        Some(per_second) => {
            spec.ratelimit = Some(RateLimit {
                per_second,
                burst: rl_burst.unwrap_or_else(|| (per_second.ceil() as u32).max(1)),
                key: rl_key,
                scope: rl_scope,
            })
        }
        // A rate that did not parse is reported on its own.
        None if !get.contains_key("ratelimit.rate")
            && get.keys().any(|k| k.starts_with("ratelimit.")) =>
        {
            problems.push(KeyProblem {
                key: "ratelimit".into(),
                message: "rate-limit settings given without a rate".into(),
            })
        }
        None => {}
    }
    middleware_keys(&get, &header_pairs, &mut spec, &mut problems);
    if spec.hosts.is_empty() && !get.contains_key("host") {
        problems.push(KeyProblem {
            key: "host".into(),
            message: "required: the host name(s) this route answers".into(),
        });
    }
    if upstream_required && spec.upstream == Upstream::Provided && !get.contains_key("upstream") {
        problems.push(KeyProblem {
            key: "upstream".into(),
            message: "required: `static:ADDR:PORT,...` or `dns:NAME:PORT`".into(),
        });
    }
    if problems.is_empty() {
        Ok(spec)
    } else {
        Err(problems)
    }
}

/// `ipallowlist.*`, `basicauth.*` and `headers.*`: each key checked on its own,
/// every problem named under the key as written (values of secret keys are never
/// echoed in messages).
fn middleware_keys(
    get: &std::collections::BTreeMap<&str, (&str, &str)>,
    header_pairs: &[(&str, &str)],
    spec: &mut RouteSpec,
    problems: &mut Vec<KeyProblem>,
) {
    let mut fail = |key: &str, message: String| {
        problems.push(KeyProblem {
            key: key.to_string(),
            message,
        })
    };
    // ipallowlist
    if let Some((key, v)) = get.get("ipallowlist.ranges") {
        let mut ranges = Vec::new();
        let mut ok = true;
        for r in values::list(v) {
            match parse_range(&r) {
                Ok(n) => ranges.push(n),
                Err(m) => {
                    fail(key, m);
                    ok = false;
                }
            }
        }
        if ok && ranges.is_empty() {
            fail(
                key,
                "no address range given; write e.g. `10.0.0.0/8,192.168.0.0/16` (an empty \
                 allow-list would refuse everyone)"
                    .into(),
            );
            ok = false;
        }
        let mut depth = 0;
        if let Some((dkey, dv)) = get.get("ipallowlist.depth") {
            match values::number::<u32>(dv, "depth (a whole number)") {
                Ok(d) if d <= MAX_XFF_DEPTH => depth = d,
                Ok(_) => {
                    fail(
                        dkey,
                        format!(
                            "`{}` is deeper than {MAX_XFF_DEPTH} proxies; write e.g. `1`",
                            dv.trim()
                        ),
                    );
                    ok = false;
                }
                Err(m) => {
                    fail(dkey, m);
                    ok = false;
                }
            }
        }
        if ok {
            spec.ipallowlist = Some(IpAllowList { ranges, depth });
        }
    } else if let Some((key, _)) = get.get("ipallowlist.depth") {
        fail(
            key,
            "ipallowlist settings given without `ipallowlist` (the ranges), which enables them"
                .into(),
        );
    }
    // basicauth
    if let Some((key, v)) = get.get("basicauth.users") {
        let mut users: Vec<(String, PasswordHash)> = Vec::new();
        let mut ok = true;
        for line in values::list(v) {
            match parse_htpasswd(&line) {
                Ok((user, hash)) => {
                    if users.iter().any(|(u, _)| *u == user) {
                        fail(key, format!("user `{user}` is listed twice"));
                        ok = false;
                    } else {
                        users.push((user, hash));
                    }
                }
                Err(m) => {
                    fail(key, m);
                    ok = false;
                }
            }
        }
        if ok && users.is_empty() {
            fail(
                key,
                "no user given; write `user:hash` lines (e.g. from `htpasswd -nbB user \
                 password`), comma-separated"
                    .into(),
            );
            ok = false;
        }
        let mut realm = BasicAuthSpec::DEFAULT_REALM.to_string();
        if let Some((rkey, rv)) = get.get("basicauth.realm") {
            let r = rv.trim();
            if r.is_empty()
                || r.len() > 128
                || r.chars()
                    .any(|c| c == '"' || c == '\\' || !(' '..='~').contains(&c))
            {
                fail(
                    rkey,
                    format!(
                        "`{}` is not a realm: 1 to 128 printable ASCII characters without `\"` \
                         or `\\`, e.g. `wharf`",
                        rv.escape_debug()
                    ),
                );
                ok = false;
            } else {
                realm = r.to_string();
            }
        }
        let mut remove_header = false;
        if let Some((rkey, rv)) = get.get("basicauth.remove_header") {
            match values::boolean(rv) {
                Ok(b) => remove_header = b,
                Err(m) => {
                    fail(rkey, m);
                    ok = false;
                }
            }
        }
        if ok {
            spec.basicauth = Some(BasicAuthSpec {
                users,
                realm,
                remove_header,
            });
        }
    } else {
        for k in ["basicauth.realm", "basicauth.remove_header"] {
            if let Some((key, _)) = get.get(k) {
                fail(
                    key,
                    "basicauth settings given without `basicauth.users`, which enables them".into(),
                );
            }
        }
    }
    // headers
    let mut rules = HeaderRules::default();
    for (key, value) in header_pairs {
        let (side, name) = match key.strip_prefix(HEADER_KEY_PREFIXES[0]) {
            Some(n) => (&mut rules.request, n),
            None => (
                &mut rules.response,
                key.strip_prefix(HEADER_KEY_PREFIXES[1]).unwrap_or_default(),
            ),
        };
        match header_rule(name, value) {
            Ok((n, v)) => {
                if side.iter().any(|(have, _)| *have == n) {
                    fail(key, format!("header `{n}` is set twice"));
                } else {
                    side.push((n, v));
                }
            }
            Err(m) => fail(key, m),
        }
    }
    if !rules.request.is_empty() || !rules.response.is_empty() {
        spec.headers = Some(rules);
    }
}

/// A CIDR range or a single address (`10.0.0.1` is `10.0.0.1/32`), made
/// canonical: an IPv4-mapped IPv6 range is written as the IPv4 range.
fn parse_range(r: &str) -> Result<ipnet::IpNet, String> {
    let r = r.trim();
    let net: ipnet::IpNet = match r.parse::<ipnet::IpNet>() {
        Ok(n) => n,
        Err(_) => match r.parse::<std::net::IpAddr>() {
            Ok(ip) => ipnet::IpNet::from(ip),
            Err(_) => {
                return Err(format!(
                    "`{}` is not an address range; write CIDR such as `10.0.0.0/8`, \
                     `2001:db8::/32` or a single address",
                    r.escape_debug()
                ))
            }
        },
    };
    if let ipnet::IpNet::V6(v6) = net {
        if let Some(v4) = v6.addr().to_ipv4_mapped() {
            if v6.prefix_len() >= 96 {
                return ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96)
                    .map(|n| ipnet::IpNet::V4(n.trunc()))
                    .map_err(|e| e.to_string());
            }
        }
    }
    Ok(net.trunc())
}

/// One htpasswd line, `user:hash`, with a hash Traefik accepts: bcrypt
/// (`$2y$`, `$2b$`, `$2a$`), `{SHA}` or `$apr1$`. Plain text is refused (Traefik
/// would take it as a crypt(3) hash that nothing matches). Messages name the user,
/// never the hash.
pub fn parse_htpasswd(line: &str) -> Result<(String, PasswordHash), String> {
    let line = line.trim();
    let Some((user, hash)) = line.split_once(':') else {
        return Err(
            "an entry is not `user:hash`; write lines as `htpasswd -nbB user password` prints \
             them"
                .into(),
        );
    };
    if user.is_empty() || user.chars().any(|c| c.is_control() || c == ' ') {
        return Err(
            "an entry has an empty user name or one with spaces or control characters".into(),
        );
    }
    let bad = |what: &str| {
        Err(format!(
            "user `{user}`: {what}; use a bcrypt (`htpasswd -nbB`), SHA1 (`htpasswd -nbs`) or \
             apr1 (`htpasswd -nbm`) hash, never the password itself"
        ))
    };
    let b64 = |c: char| c.is_ascii_alphanumeric() || c == '.' || c == '/';
    if let Some(rest) = ["$2y$", "$2b$", "$2a$"]
        .iter()
        .find_map(|p| hash.strip_prefix(p))
    {
        // cost (2 digits) `$` 22 salt + 31 hash characters.
        let ok = rest.len() == 56
            && rest.as_bytes()[2] == b'$'
            && rest[..2]
                .parse::<u32>()
                .is_ok_and(|c| (4..=31).contains(&c))
            && rest[3..].chars().all(b64);
        return if ok {
            Ok((user.to_string(), PasswordHash::Bcrypt(hash.to_string())))
        } else {
            bad("the bcrypt hash is malformed")
        };
    }
    if let Some(rest) = hash.strip_prefix("{SHA}") {
        use base64::Engine as _;
        return match base64::engine::general_purpose::STANDARD.decode(rest) {
            Ok(d) if d.len() == 20 => {
                let mut out = [0u8; 20];
                out.copy_from_slice(&d);
                Ok((user.to_string(), PasswordHash::Sha1(out)))
            }
            _ => bad("the {SHA} hash is not base64 of 20 bytes"),
        };
    }
    if let Some(rest) = hash.strip_prefix("$apr1$") {
        return match rest.split_once('$') {
            Some((salt, h))
                if !salt.is_empty()
                    && salt.len() <= 8
                    && salt.chars().all(b64)
                    && h.len() == 22
                    && h.chars().all(b64) =>
            {
                Ok((
                    user.to_string(),
                    PasswordHash::Apr1 {
                        salt: salt.to_string(),
                        hash: h.to_string(),
                    },
                ))
            }
            _ => bad("the $apr1$ hash is malformed"),
        };
    }
    bad("the hash is plain text or of a kind Wharf does not verify")
}

/// Framing and hop-by-hop fields a header rule may not touch: setting them would
/// desynchronise the proxy and the backend (request smuggling).
const RESERVED_HEADERS: &[&str] = &[
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "proxy-connection",
    "host",
];

/// `headers.request.<name> = value`: a valid field name and value; an empty value
/// removes the field (as Traefik does).
fn header_rule(
    name: &str,
    value: &str,
) -> Result<(http::HeaderName, Option<http::HeaderValue>), String> {
    let n = http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
        format!(
            "`{}` is not a header name ({TOKEN_CHARS})",
            name.escape_debug()
        )
    })?;
    if RESERVED_HEADERS.contains(&n.as_str()) {
        return Err(format!(
            "`{n}` is a framing or hop-by-hop field the proxy manages; it cannot be set or removed"
        ));
    }
    let v = value.trim();
    if v.is_empty() {
        return Ok((n, None));
    }
    let hv = http::HeaderValue::from_str(v).map_err(|_| {
        "the value has a control character or a non-ASCII byte; a header value is visible \
         ASCII, spaces and tabs"
            .to_string()
    })?;
    Ok((n, Some(hv)))
}

/// `backend_tls.server_name`: a DNS name or an IP address, exactly as
/// `rustls_pki_types::ServerName::try_from` accepts it (the proxy hands it to
/// rustls), lower-cased.
fn server_name(v: &str) -> Result<String, String> {
    let name = v.trim();
    if rustls_pki_types::ServerName::try_from(name).is_ok() {
        return Ok(name.to_ascii_lowercase());
    }
    let shown = v.escape_debug();
    let why = if name.contains("://") {
        "write the name alone, without a scheme".to_string()
    } else if name.contains('*') {
        "a pattern names no one server; write the one name the backend's certificate is for"
            .to_string()
    } else if name.contains('/') {
        "write the name alone, without a path".to_string()
    } else if name.starts_with('[')
        || name.rsplit_once(':').is_some_and(|(h, p)| {
            !h.contains(':') && !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())
        })
    {
        "write the name alone, without a port or brackets (the port is the route's `port`)"
            .to_string()
    } else if name.split('.').any(|l| l.len() > 63) || name.len() > 253 {
        "a DNS name has labels of at most 63 characters and at most 253 in all".to_string()
    } else {
        "a DNS name is letters, digits, `-` and `_` in labels separated by `.`, none starting \
         or ending with `-` (or write an IP address)"
            .to_string()
    };
    Err(format!(
        "`{shown}` is not a valid server name: {why}; e.g. `app.internal`"
    ))
}

/// A file named by a route key (`backend_tls.ca`, ...): with [`FileCheck::Open`]
/// it must open for reading and not be a directory. `what` names it in messages.
fn readable_file(v: &str, what: &str, check: FileCheck) -> Result<PathBuf, String> {
    let path = v.trim();
    if path.starts_with("-----BEGIN") || path.contains("\n-----") {
        return Err(format!(
            "the {what} is given as PEM text; Wharf reads it from a file: write its path \
             (e.g. `/etc/wharf/backend-ca.pem`)"
        ));
    }
    if path.bytes().any(|b| b.is_ascii_control()) {
        return Err(format!(
            "`{}` contains a control character; write the {what} file's path",
            v.escape_debug()
        ));
    }
    if check == FileCheck::Open {
        open_check(Path::new(path), what)?;
    }
    Ok(PathBuf::from(path))
}

/// Opens `path` for reading: the error names the path and the OS error, with a hint.
fn open_check(path: &Path, what: &str) -> Result<(), String> {
    let shown = path.display();
    let file = std::fs::File::open(path).map_err(|e| {
        let hint = match e.kind() {
            std::io::ErrorKind::NotFound => format!(
                "check the path: the {what} file must be on the machine (or in the container) \
                 Wharf runs in, e.g. a mounted Docker secret"
            ),
            std::io::ErrorKind::PermissionDenied => {
                "make it readable by the user Wharf runs as".to_string()
            }
            _ => format!("Wharf reads the {what} from this file"),
        };
        format!("cannot open the {what} file `{shown}`: {e}; {hint}")
    })?;
    match file.metadata() {
        Ok(m) if m.is_dir() => Err(format!(
            "`{shown}` is a directory; name the {what} file (PEM) in it"
        )),
        Ok(_) => Ok(()),
        Err(e) => Err(format!("cannot read the {what} file `{shown}`: {e}")),
    }
}

fn at_least_one(v: &str, what: &str) -> Result<u32, String> {
    match values::number::<u32>(v, what)? {
        0 => Err(format!("{what} must be at least 1")),
        n => Ok(n),
    }
}

/// What an RFC 7230 token (a header name, an RFC 6265 cookie name) may hold.
const TOKEN_CHARS: &str = "letters, digits and !#$%&'*+-.^_`|~ only";

/// The first character of `s` that may not be in an RFC 7230 token, described
/// for a message (`` `;` ``, `a space`), or `None` when `s` is a token.
fn not_token(s: &str) -> Option<String> {
    let c = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(*c)))?;
    Some(match c {
        ' ' => "a space".into(),
        c if c.is_control() => format!("the control character U+{:04X}", c as u32),
        c => format!("`{c}`"),
    })
}

/// `static:10.0.0.5:80,[2001:db8::1]:80` or `dns:name:port`.
pub fn parse_upstream(v: &str) -> Result<Upstream, String> {
    let v = v.trim();
    if let Some(list) = v.strip_prefix("static:") {
        let mut addrs = Vec::new();
        for a in values::list(list) {
            addrs.push(a.parse::<SocketAddr>().map_err(|_| {
                format!("`{a}` is not an address with a port (e.g. 10.0.0.5:80 or [::1]:80)")
            })?);
        }
        if addrs.is_empty() {
            return Err("`static:` needs at least one address".into());
        }
        Ok(Upstream::Static(addrs))
    } else if let Some(rest) = v.strip_prefix("dns:") {
        let (name, port) = rest
            .rsplit_once(':')
            .ok_or_else(|| format!("`{v}` needs a port: `dns:NAME:PORT`"))?;
        let port: u16 = values::number(port, "port")?;
        let name = values::host_pattern(name)?;
        if name.contains('*') || port == 0 {
            return Err(format!("`{v}` is not a resolvable name and port"));
        }
        Ok(Upstream::Dns { name, port })
    } else {
        Err(format!(
            "`{v}` is not an upstream; write `static:ADDR:PORT,...` or `dns:NAME:PORT`"
        ))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn kv(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn full_route() {
        let r = parse_route(
            "r",
            &kv(&[
                ("host", "a.example.org, B.example.org"),
                ("path", "/api"),
                ("upstream", "static:10.0.0.5:80,[::1]:81"),
                ("balance", "roundrobin"),
                ("sticky", "cookie"),
                ("sticky.cookie", "JSESSIONID"),
                ("sticky.mode", "prefix"),
                ("healthcheck.path", "/health"),
                ("healthcheck.rise", "3"),
                ("hsts", "0"),
                ("ratelimit", "100/s"),
                ("ratelimit.key", "header:X-Api-Key"),
                ("maxconn", "100"),
                ("https_redirect", "false"),
            ]),
            true,
        )
        .unwrap();
        assert_eq!(r.hosts, vec!["a.example.org", "b.example.org"]);
        assert_eq!(r.path, "/api");
        assert_eq!(
            r.upstream,
            Upstream::Static(vec![
                "10.0.0.5:80".parse().unwrap(),
                "[::1]:81".parse().unwrap()
            ])
        );
        assert_eq!(r.balance, Balance::RoundRobin);
        assert_eq!(r.sticky.kind, StickyType::Cookie);
        assert_eq!(r.sticky.mode, StickyMode::Prefix);
        assert_eq!(r.healthcheck.as_ref().unwrap().rise, 3);
        assert_eq!(r.healthcheck.as_ref().unwrap().fall, 3);
        assert_eq!(r.hsts.header_value(), None);
        let rl = r.ratelimit.unwrap();
        assert_eq!((rl.per_second, rl.burst), (100.0, 100));
        assert_eq!(rl.key, RateKey::Header("x-api-key".into()));
        assert_eq!(r.maxconn.map(|m| m.limit), Some(100));
        assert!(!r.https_redirect);
    }

    #[test]
    fn defaults() {
        let r = parse_route(
            "r",
            &kv(&[("host", "h.example"), ("upstream", "dns:app:8080")]),
            true,
        )
        .unwrap();
        assert_eq!(r.path, "/");
        assert_eq!(r.balance, Balance::LeastConn);
        assert_eq!(r.tls, TlsMode::Acme);
        assert_eq!(r.hsts.header_value().unwrap(), "max-age=63072000");
        assert_eq!(
            r.upstream,
            Upstream::Dns {
                name: "app".into(),
                port: 8080
            }
        );
    }

    #[test]
    fn collects_every_problem_with_hints() {
        let e = parse_route(
            "r",
            &kv(&[
                ("host", "a b"),
                ("helthcheck.path", "/"),
                ("port", "99999"),
                ("balance", "fastest"),
            ]),
            true,
        )
        .unwrap_err();
        let keys: Vec<_> = e.iter().map(|p| p.key.as_str()).collect();
        assert!(keys.contains(&"host"), "{e:?}");
        assert!(keys.contains(&"port"));
        assert!(keys.contains(&"balance"));
        assert!(keys.contains(&"upstream"));
        let hint = e.iter().find(|p| p.key == "helthcheck.path").unwrap();
        assert!(hint.message.contains("did you mean `healthcheck.path`"));
    }

    fn route(extra: &[(&str, &str)]) -> Result<RouteSpec, Vec<KeyProblem>> {
        let mut pairs = vec![("host", "h.example"), ("upstream", "dns:app:8080")];
        pairs.extend_from_slice(extra);
        parse_route("r", &kv(&pairs), true)
    }

    /// The one problem of a route with `extra`.
    fn problem(extra: &[(&str, &str)]) -> KeyProblem {
        let e = route(extra).unwrap_err();
        assert_eq!(e.len(), 1, "{extra:?}: {e:#?}");
        e[0].clone()
    }

    #[test]
    fn sticky_ttl_is_none_unless_written() {
        let r = route(&[("sticky", "cookie")]).unwrap();
        assert_eq!(r.sticky.ttl, None, "a session cookie");
        assert_eq!(r.sticky.cookie, Sticky::DEFAULT_COOKIE);
        assert_eq!(r.sticky.source_ttl(), Duration::from_secs(3 * 3600));
        let r = route(&[("sticky", "cookie"), ("sticky.ttl", "30m")]).unwrap();
        assert_eq!(r.sticky.ttl, Some(Duration::from_secs(1800)), "Max-Age");
        let r = route(&[("sticky", "source"), ("sticky.ttl", "1h30m")]).unwrap();
        assert_eq!(r.sticky.source_ttl(), Duration::from_secs(5400));
        let r = route(&[("sticky", "source")]).unwrap();
        assert_eq!(r.sticky.source_ttl(), Sticky::DEFAULT_SOURCE_TTL);
        assert_eq!(Sticky::default().ttl, None);
        // A cookie name is trimmed as other values are.
        let r = route(&[("sticky", "cookie"), ("sticky.cookie", " SID ")]).unwrap();
        assert_eq!(r.sticky.cookie, "SID");
    }

    #[test]
    fn ratelimit_scope() {
        let rl = |extra: &[(&str, &str)]| {
            let mut pairs = vec![("ratelimit", "10/s")];
            pairs.extend_from_slice(extra);
            route(&pairs).unwrap().ratelimit.unwrap()
        };
        assert_eq!(rl(&[]).scope, RateScope::Replica, "the default");
        assert_eq!(RateScope::default(), RateScope::Replica);
        assert_eq!(
            rl(&[("ratelimit.scope", "cluster")]).scope,
            RateScope::Cluster
        );
        assert_eq!(
            rl(&[("ratelimit.scope", " Replica ")]).scope,
            RateScope::Replica
        );
        let r = rl(&[("ratelimit.key", "header: X-Api-Key")]);
        assert_eq!(r.key, RateKey::Header("x-api-key".into()));
        assert_eq!((r.per_second, r.burst), (10.0, 10));
        let r = rl(&[("ratelimit.key", "route"), ("ratelimit.burst", "1")]);
        assert_eq!((r.key, r.burst), (RateKey::Route, 1));
        // The largest rate, and its default burst.
        let r = route(&[("ratelimit", "1000000/s")])
            .unwrap()
            .ratelimit
            .unwrap();
        assert_eq!(
            (r.per_second, r.burst),
            (RateLimit::MAX_PER_SECOND, 1_000_000)
        );
        let r = route(&[("ratelimit", "1/h")]).unwrap().ratelimit.unwrap();
        assert!(r.per_second >= RateLimit::MIN_PER_SECOND);
        assert_eq!(r.burst, 1);
    }

    #[test]
    fn sticky_and_ratelimit_bad_input_names_key_value_and_hint() {
        for (extra, key, needle) in [
            (
                vec![("sticky", "sometimes")],
                "sticky",
                "`sometimes` is not a sticky type; use none, cookie or source",
            ),
            (
                vec![("sticky.type", "ip")],
                "sticky.type",
                "`ip` is not a sticky type; use none, cookie or source",
            ),
            (
                vec![("sticky", "cookie"), ("sticky.mode", "rewrite")],
                "sticky.mode",
                "`rewrite` is not a sticky mode; use insert or prefix",
            ),
            (
                vec![("sticky", "cookie"), ("sticky.cookie", "")],
                "sticky.cookie",
                "an empty cookie name; write e.g. `WHARFID`",
            ),
            (
                vec![("sticky", "cookie"), ("sticky.cookie", "  ")],
                "sticky.cookie",
                "an empty cookie name",
            ),
            (
                vec![("sticky", "cookie"), ("sticky.cookie", "my cookie")],
                "sticky.cookie",
                "`my cookie` is not a valid cookie name: a space is not allowed (letters, \
                 digits and !#$%&'*+-.^_`|~ only)",
            ),
            (
                vec![("sticky", "cookie"), ("sticky.cookie", "SID;Path=/")],
                "sticky.cookie",
                "`SID;Path=/` is not a valid cookie name: `;` is not allowed",
            ),
            (
                vec![("sticky", "cookie"), ("sticky.cookie", "a=b")],
                "sticky.cookie",
                "`=` is not allowed",
            ),
            (
                vec![("sticky", "cookie"), ("sticky.cookie", "s\u{7f}d")],
                "sticky.cookie",
                "the control character U+007F is not allowed",
            ),
            (
                vec![("sticky", "cookie"), ("sticky.cookie", "sé")],
                "sticky.cookie",
                "`é` is not allowed",
            ),
            (
                vec![("sticky", "source"), ("sticky.ttl", "0s")],
                "sticky.ttl",
                "must be longer than zero; leave sticky.ttl unset",
            ),
            (
                vec![("sticky", "source"), ("sticky.ttl", "long")],
                "sticky.ttl",
                "`long` is not a duration",
            ),
            (
                vec![("ratelimit", "0/s")],
                "ratelimit",
                "`0/s` is a rate of zero",
            ),
            (
                vec![("ratelimit", "abc")],
                "ratelimit",
                "`abc` is not a rate; write",
            ),
            (
                vec![("ratelimit.rate", "5/x")],
                "ratelimit.rate",
                "`x` is not a unit (s, m or h)",
            ),
            (
                vec![("ratelimit", "5/s/2")],
                "ratelimit",
                "`5/s/2` is not a rate",
            ),
            (
                vec![("ratelimit", "2000000/s")],
                "ratelimit",
                "more than 1000000 requests per second, which limits nothing; leave the rate \
                 limit unset for no limit",
            ),
            (
                vec![("ratelimit", "5/s"), ("ratelimit.burst", "0")],
                "ratelimit.burst",
                "burst must be at least 1: a bucket of 0 lets no request through",
            ),
            (
                vec![("ratelimit", "5/s"), ("ratelimit.burst", "-1")],
                "ratelimit.burst",
                "`-1` is not a valid burst",
            ),
            (
                vec![("ratelimit", "5/s"), ("ratelimit.key", "header:")],
                "ratelimit.key",
                "`header:` names no header; write e.g. `header:X-Api-Key`",
            ),
            (
                vec![("ratelimit", "5/s"), ("ratelimit.key", "header:X Api")],
                "ratelimit.key",
                "`header:X Api` is not a valid header name: a space is not allowed",
            ),
            (
                vec![("ratelimit", "5/s"), ("ratelimit.key", "header:x-api:key")],
                "ratelimit.key",
                "`:` is not allowed",
            ),
            (
                vec![("ratelimit", "5/s"), ("ratelimit.key", "ip")],
                "ratelimit.key",
                "`ip` is not a rate-limit key; use source, route or header:NAME",
            ),
            (
                vec![("ratelimit", "5/s"), ("ratelimit.scope", "global")],
                "ratelimit.scope",
                "`global` is not a rate-limit scope; use replica or cluster",
            ),
            (
                vec![("ratelimit.scope", "cluster")],
                "ratelimit",
                "rate-limit settings given without a rate",
            ),
        ] {
            let p = problem(&extra);
            assert_eq!(p.key, key, "{extra:?}: {p:?}");
            assert!(p.message.contains(needle), "{extra:?}: {}", p.message);
        }
        // A rate that does not parse is the only problem, not also "without a rate".
        let p = problem(&[("ratelimit", "fast"), ("ratelimit.burst", "5")]);
        assert_eq!(p.key, "ratelimit");
        assert!(p.message.contains("`fast` is not a rate"), "{p:?}");
    }

    #[test]
    fn without_effect_names_sticky_keys_the_type_ignores() {
        let r = route(&[("sticky", "source"), ("sticky.cookie", "SID")]).unwrap();
        let why = r.without_effect("sticky.cookie").unwrap();
        assert!(why.contains("sticky is `source`"), "{why}");
        assert!(r.without_effect("sticky.mode").is_some());
        assert_eq!(
            r.without_effect("sticky.ttl"),
            None,
            "the binding's idle time"
        );
        assert_eq!(r.without_effect("sticky"), None);
        let r = route(&[("sticky.ttl", "1h")]).unwrap();
        assert!(r
            .without_effect("sticky.ttl")
            .unwrap()
            .contains("sticky is `none`"));
        assert!(r.without_effect("sticky.cookie").is_some());
        let r = route(&[("sticky", "cookie")]).unwrap();
        for key in ["sticky.cookie", "sticky.mode", "sticky.ttl", "host"] {
            assert_eq!(r.without_effect(key), None, "{key}");
        }
        // Prefix mode: the application's cookie has the application's lifetime.
        let r = route(&[("sticky", "cookie"), ("sticky.mode", "prefix")]).unwrap();
        assert!(r
            .without_effect("sticky.ttl")
            .unwrap()
            .contains("prefix mode"));
    }

    #[test]
    fn not_enforced_leaves_out_sticky_and_ratelimit() {
        let r = route(&[
            ("sticky", "cookie"),
            ("ratelimit", "5/s"),
            ("ratelimit.scope", "cluster"),
            ("maxconn", "3"),
        ])
        .unwrap();
        assert_eq!(r.not_enforced(), Vec::<String>::new());
        let r = route(&[("scheme", "https")]).unwrap();
        assert_eq!(r.not_enforced(), Vec::<String>::new());
    }

    /// A fresh directory for one test's files, removed when dropped.
    pub(crate) struct Scratch(pub PathBuf);

    impl Scratch {
        pub(crate) fn new(test: &str) -> Self {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            let dir = std::env::temp_dir().join(format!(
                "wharf-config-{test}-{}-{nanos}",
                std::process::id()
            ));
            std::fs::create_dir_all(&dir).expect("scratch dir");
            Scratch(dir)
        }

        /// Writes `name` with PEM-looking text and returns its path as text.
        pub(crate) fn file(&self, name: &str) -> String {
            let p = self.0.join(name);
            std::fs::write(
                &p,
                "-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n",
            )
            .expect("scratch file");
            p.display().to_string()
        }

        /// A path in the directory that does not exist.
        pub(crate) fn missing(&self, name: &str) -> String {
            self.0.join(name).display().to_string()
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn backend_tls_defaults_and_every_key() {
        let r = route(&[]).unwrap();
        assert_eq!(r.backend_tls, BackendTls::default());
        assert!(r.backend_tls.is_default());
        let r = route(&[("scheme", "https")]).unwrap();
        assert!(
            r.backend_tls.is_default(),
            "verify against the system roots"
        );
        assert_eq!(r.backend_tls.server_name, None, "the proxy picks the host");

        let dir = Scratch::new("tls-keys");
        let (ca, cert, key) = (dir.file("ca.pem"), dir.file("c.pem"), dir.file("k.pem"));
        let r = route(&[
            ("scheme", "https"),
            ("backend_tls.server_name", " App.Internal "),
            ("backend_tls.ca", &ca),
            ("backend_tls.insecure", "false"),
            ("backend_tls.client_cert", &cert),
            ("backend_tls.client_key", &key),
        ])
        .unwrap();
        assert_eq!(
            r.backend_tls,
            BackendTls {
                server_name: Some("app.internal".into()),
                ca: Some(PathBuf::from(&ca)),
                insecure: false,
                client_cert: Some(PathBuf::from(&cert)),
                client_key: Some(PathBuf::from(&key)),
            }
        );
        assert!(!r.backend_tls.is_default());
        let r = route(&[("scheme", "HTTPS"), ("backend_tls.insecure", "true")]).unwrap();
        assert!(r.backend_tls.insecure);
        assert_eq!(r.not_enforced(), Vec::<String>::new());
    }

    #[test]
    fn backend_tls_empty_values_are_unset() {
        // The SPEC's example line: `client_cert = ""`, `client_key = ""`.
        for scheme in ["https", "http"] {
            let r = route(&[
                ("scheme", scheme),
                ("backend_tls.server_name", ""),
                ("backend_tls.ca", " "),
                ("backend_tls.insecure", ""),
                ("backend_tls.client_cert", ""),
                ("backend_tls.client_key", ""),
            ])
            .unwrap();
            assert!(r.backend_tls.is_default(), "{scheme}");
        }
    }

    #[test]
    fn backend_tls_only_with_https() {
        let dir = Scratch::new("tls-scheme");
        let ca = dir.file("ca.pem");
        for scheme in [None, Some("http"), Some("h2c")] {
            for (key, value) in [
                ("backend_tls.server_name", "app.internal"),
                ("backend_tls.ca", ca.as_str()),
                ("backend_tls.insecure", "false"),
                ("backend_tls.client_cert", ca.as_str()),
                ("backend_tls.client_key", ca.as_str()),
            ] {
                let mut extra = vec![(key, value)];
                extra.extend(scheme.map(|s| ("scheme", s)));
                let p = problem(&extra);
                assert_eq!(p.key, key, "{extra:?}");
                let shown = scheme.unwrap_or("http");
                assert_eq!(
                    p.message,
                    format!(
                        "only used with scheme = \"https\" (this route's scheme is {shown}): set \
                         the scheme to https, or remove this key"
                    )
                );
            }
        }
        // Every key is named, not just the first.
        let e = route(&[
            ("backend_tls.insecure", "true"),
            ("backend_tls.server_name", "app.internal"),
        ])
        .unwrap_err();
        assert_eq!(e.len(), 2, "{e:?}");
        // A scheme that does not parse is the problem, and the keys are checked
        // as for https.
        let e = route(&[("scheme", "tls"), ("backend_tls.insecure", "true")]).unwrap_err();
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].key, "scheme");
        let e = route(&[("scheme", "tls"), ("backend_tls.insecure", "maybe")]).unwrap_err();
        let keys: Vec<_> = e.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["scheme", "backend_tls.insecure"]);
    }

    #[test]
    fn backend_tls_server_name_is_what_rustls_accepts() {
        let name = |v: &str| {
            route(&[("scheme", "https"), ("backend_tls.server_name", v)])
                .map(|r| r.backend_tls.server_name.unwrap())
        };
        for (v, want) in [
            ("app.internal", "app.internal"),
            ("App.Internal.", "app.internal."),
            ("localhost", "localhost"),
            ("_svc.internal", "_svc.internal"),
            ("xn--bcher-kva.example", "xn--bcher-kva.example"),
            ("10.0.0.5", "10.0.0.5"),
            ("2001:DB8::1", "2001:db8::1"),
            ("::1", "::1"),
        ] {
            assert_eq!(name(v).unwrap(), want, "{v}");
        }
        let long = format!("{}.example", "a".repeat(64));
        for (v, needle) in [
            ("*.example.org", "a pattern names no one server"),
            ("https://app.internal", "without a scheme"),
            ("app.internal/x", "without a path"),
            ("app.internal:8443", "without a port"),
            ("[::1]", "without a port or brackets"),
            ("a..b", "a DNS name is letters"),
            ("-app.internal", "none starting or ending with `-`"),
            ("app-.internal", "a DNS name is letters"),
            ("app internal", "a DNS name is letters"),
            ("bücher.example", "a DNS name is letters"),
            (long.as_str(), "at most 63 characters"),
        ] {
            let p = problem(&[("scheme", "https"), ("backend_tls.server_name", v)]);
            assert_eq!(p.key, "backend_tls.server_name");
            assert!(
                p.message
                    .starts_with(&format!("`{v}` is not a valid server name: ")),
                "{v}: {}",
                p.message
            );
            assert!(p.message.contains(needle), "{v}: {}", p.message);
            assert!(p.message.ends_with("e.g. `app.internal`"), "{}", p.message);
            // The same verdict as rustls.
            assert!(rustls_pki_types::ServerName::try_from(v).is_err(), "{v}");
        }
    }

    #[test]
    fn backend_tls_files_must_open() {
        let dir = Scratch::new("tls-files");
        let missing = dir.missing("nope.pem");
        for key in [
            "backend_tls.ca",
            "backend_tls.client_cert",
            "backend_tls.client_key",
        ] {
            let other = match key {
                "backend_tls.client_cert" => Some(("backend_tls.client_key", dir.file("k.pem"))),
                "backend_tls.client_key" => Some(("backend_tls.client_cert", dir.file("c.pem"))),
                _ => None,
            };
            let with = |v: &str| {
                let mut extra = vec![("scheme", "https"), (key, v)];
                if let Some((k, f)) = &other {
                    extra.push((k, f.as_str()));
                }
                problem(&extra)
            };
            let what = match key {
                "backend_tls.ca" => "CA",
                "backend_tls.client_cert" => "client certificate",
                _ => "client key",
            };
            let p = with(&missing);
            assert_eq!(p.key, key);
            assert!(
                p.message.starts_with(&format!(
                    "cannot open the {what} file `{missing}`: No such file or directory (os \
                     error 2); check the path"
                )),
                "{}",
                p.message
            );
            let d = dir.0.display().to_string();
            let p = with(&d);
            assert_eq!(
                p.message,
                format!("`{d}` is a directory; name the {what} file (PEM) in it")
            );
            let p = with("-----BEGIN CERTIFICATE-----\nMIIB...");
            assert!(p.message.contains("given as PEM text"), "{}", p.message);
        }
        // Unreadable (unless the tests run as root, who reads anything).
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let locked = dir.file("locked.pem");
            std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();
            if std::fs::File::open(&locked).is_err() {
                let p = problem(&[("scheme", "https"), ("backend_tls.ca", &locked)]);
                assert!(p.message.contains("Permission denied"), "{}", p.message);
                assert!(p.message.contains("readable by the user Wharf runs as"));
            }
        }
        // Not opened when the files are elsewhere (`wharf check --compose`).
        let pairs = kv(&[
            ("host", "h.example"),
            ("upstream", "dns:app:8080"),
            ("scheme", "https"),
            ("backend_tls.ca", &missing),
        ]);
        let r = parse_route_with("r", &pairs, true, FileCheck::Skip).unwrap();
        assert_eq!(r.backend_tls.ca, Some(PathBuf::from(&missing)));
        assert!(parse_route("r", &pairs, true).is_err());
    }

    #[test]
    fn backend_tls_client_cert_and_key_go_together() {
        let dir = Scratch::new("tls-pair");
        let (cert, key) = (dir.file("c.pem"), dir.file("k.pem"));
        let p = problem(&[("scheme", "https"), ("backend_tls.client_cert", &cert)]);
        assert_eq!(p.key, "backend_tls.client_cert");
        assert_eq!(
            p.message,
            "a client certificate is presented only with its private key: set \
             `backend_tls.client_key` too (both are PEM files), or remove this key"
        );
        let p = problem(&[
            ("scheme", "https"),
            ("backend_tls.client_key", &key),
            ("backend_tls.client_cert", ""),
        ]);
        assert_eq!(p.key, "backend_tls.client_key");
        assert!(p
            .message
            .starts_with("a client key is presented only with its certificate"));
        // A key that does not open is its own problem, not also "missing".
        let p = problem(&[
            ("scheme", "https"),
            ("backend_tls.client_cert", &cert),
            ("backend_tls.client_key", &dir.missing("k2.pem")),
        ]);
        assert_eq!(p.key, "backend_tls.client_key");
        assert!(p.message.starts_with("cannot open"), "{}", p.message);
    }

    #[test]
    fn backend_tls_insecure_with_a_ca_is_refused() {
        let dir = Scratch::new("tls-insecure");
        let ca = dir.file("ca.pem");
        let p = problem(&[
            ("scheme", "https"),
            ("backend_tls.insecure", "true"),
            ("backend_tls.ca", &ca),
        ]);
        assert_eq!(p.key, "backend_tls.insecure");
        assert!(
            p.message
                .starts_with("insecure skips verification, so a ca would be ignored; remove one"),
            "{}",
            p.message
        );
        let r = route(&[
            ("scheme", "https"),
            ("backend_tls.insecure", "false"),
            ("backend_tls.ca", &ca),
        ])
        .unwrap();
        assert!(!r.backend_tls.insecure);
        // Insecure with a client certificate is allowed (mutual TLS without
        // verifying the backend), and with a server name (still the SNI).
        let r = route(&[
            ("scheme", "https"),
            ("backend_tls.insecure", "true"),
            ("backend_tls.server_name", "app.internal"),
            ("backend_tls.client_cert", &ca),
            ("backend_tls.client_key", &ca),
        ])
        .unwrap();
        assert!(r.backend_tls.insecure);
        let p = problem(&[("scheme", "https"), ("backend_tls.insecure", "sometimes")]);
        assert_eq!(p.key, "backend_tls.insecure");
    }

    #[test]
    fn bad_upstreams() {
        assert!(parse_upstream("10.0.0.1:80").is_err());
        assert!(parse_upstream("static:").is_err());
        assert!(parse_upstream("static:host:80").is_err());
        assert!(parse_upstream("dns:app").is_err());
        assert!(parse_upstream("dns:*.app:80").is_err());
    }
}
