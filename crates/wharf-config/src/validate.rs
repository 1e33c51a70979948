//! Raw file types → the validated [`Config`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;
use wharf_table::EntrypointMask;

use crate::file::FileConfig;
use crate::route::{self, RouteSpec, StickyType};
use crate::{env, values, ConfigError, Problem};

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from, if any (SIGHUP re-reads it).
    pub source: Option<PathBuf>,
    pub entrypoints: Vec<Entrypoint>,
    pub admin: AdminConfig,
    pub runtime: RuntimeConfig,
    pub upstream: UpstreamConfig,
    pub tls: Vec<CertPaths>,
    pub acme: AcmeConfig,
    pub docker: DockerConfig,
    pub dns: DnsConfig,
    pub sticky: StickyConfig,
    pub log: LogConfig,
    pub routes: Vec<RouteSpec>,
    /// Things worth a log line that do not stop the config (unknown `WHARF_*`
    /// variables, a missing sticky secret).
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Entrypoint {
    pub name: String,
    pub address: SocketAddr,
    pub tls: bool,
    pub redirect_https: bool,
    /// `Some(trusted sources)` when the PROXY protocol is accepted.
    pub proxy_protocol: Option<Vec<IpNet>>,
    /// Peers whose `X-Forwarded-For` is extended rather than replaced.
    pub forwarded_trusted: Vec<IpNet>,
    /// HTTP/2 from clients (h2c prior knowledge on plain entrypoints).
    pub http2: bool,
    /// Time allowed to read a request head; on HTTP/1.1 it also bounds an idle
    /// keep-alive connection (HAProxy's `timeout http-keep-alive` defaults to its
    /// `timeout http-request` the same way).
    pub header_read_timeout: Duration,
    /// Largest request head accepted; larger gets 431.
    pub max_header_size: usize,
    /// Most header fields accepted; more gets 431.
    pub max_headers: usize,
    /// Client connections served at once (0: unlimited, bounded by
    /// `[runtime] max_connections`); past it, new connections wait in the
    /// kernel's backlog.
    pub max_connections: usize,
    /// A connection on which no request starts for this long is closed
    /// (HTTP/2: GOAWAY; HTTP/1.1 is also bounded by `header_read_timeout`).
    pub idle_timeout: Duration,
    /// A connection is closed gracefully (GOAWAY, `Connection: close`) after
    /// this long; zero: never.
    pub max_connection_age: Duration,
    /// A write to the client that makes no progress for this long (a client
    /// not reading), or a request body that stalls this long, ends the
    /// request (HAProxy `timeout client`).
    pub client_timeout: Duration,
    /// TLS entrypoints: a handshake without SNI, or for a name no certificate
    /// covers, is refused instead of getting the default certificate (HAProxy
    /// `strict-sni`).
    pub strict_sni: bool,
    /// An upgraded connection (WebSocket) with no byte either way for this long
    /// is closed (HAProxy `timeout tunnel`).
    pub tunnel_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    pub address: SocketAddr,
    /// The bearer token every path but `/ping` needs (`token`, `token_file` or
    /// `WHARF_ADMIN_TOKEN`); `None`: no authentication.
    pub token: Option<AdminToken>,
    /// Host names the admin listener answers besides IP literals, `localhost`
    /// and single-label names (normalised: lower case, no trailing dot; `*.` and
    /// `*` allowed).
    pub hosts: Vec<String>,
    /// Time allowed to read a request head, and for a connection's first request.
    pub header_read_timeout: Duration,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout: Duration,
    /// Admin connections served at once; more wait in the kernel's backlog.
    pub max_connections: usize,
}

/// The admin bearer token: compared, never printed (`Debug` shows `***`).
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(String);

impl AdminToken {
    /// The token itself, to compare a request's credentials with.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(***)")
    }
}

/// Shorter tokens get a warning: a bearer token should be a random string an
/// attacker cannot guess.
const SHORT_TOKEN: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeConfig {
    /// 0 = one per CPU.
    pub worker_threads: usize,
    pub shutdown_timeout: Duration,
    /// After SIGTERM, how long to keep accepting (with `/ping` answering 503)
    /// before the listeners close, so an L4 balancer's health check takes this
    /// replica out first (HAProxy `grace`).
    pub accept_grace: Duration,
    /// Client connections served at once over all entrypoints; 0: derived
    /// from the raised `RLIMIT_NOFILE` at start (see `docs/config.md`).
    pub max_connections: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamConfig {
    pub connect_timeout: Duration,
    /// Time from sending a request to receiving the response head (504 after).
    pub response_timeout: Duration,
    /// How long an idle pooled connection to a backend is kept.
    pub idle_timeout: Duration,
    pub max_idle_per_backend: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Challenge {
    Http01,
    TlsAlpn01,
    Dns01,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Storage {
    File(PathBuf),
    Swarm,
}

#[derive(Clone, PartialEq, Eq)]
pub struct AcmeDns {
    pub server: SocketAddr,
    pub zone: String,
    pub key_name: Option<String>,
    /// The TSIG key: never printed (`Debug` shows `***`).
    pub key_secret: Option<String>,
}

impl std::fmt::Debug for AcmeDns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcmeDns")
            .field("server", &self.server)
            .field("zone", &self.zone)
            .field("key_name", &self.key_name)
            .field("key_secret", &self.key_secret.as_ref().map(|_| "***"))
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeConfig {
    /// No email: no certificate is ordered (self-signed meanwhile).
    pub email: Option<String>,
    pub directory: String,
    pub challenge: Challenge,
    pub ca_roots: Vec<PathBuf>,
    pub storage: Storage,
    pub dns: Option<AcmeDns>,
    /// Names ordered for label routes at most (file routes are not counted).
    pub max_names: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DockerMode {
    Auto,
    Swarm,
    Containers,
    Off,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerConfig {
    pub endpoint: String,
    pub mode: DockerMode,
    pub network: String,
    pub exposed_by_default: bool,
    /// `exposed_by_default` was not set: a Traefik routing rule enables its
    /// service as in Traefik v1 (see `LabelOptions::traefik_rules_enable`).
    pub traefik_rules_enable: bool,
    pub traefik_labels: bool,
    /// How often swarm tasks are listed (task changes on other nodes emit no
    /// local event).
    pub poll_interval: Duration,
    /// Host patterns labels may claim (`example.org`, `*.example.org`); empty: any.
    pub allowed_domains: Vec<String>,
    /// Whether labels may claim `*` or `*.domain`.
    pub allow_wildcards: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsConfig {
    pub nameservers: Vec<SocketAddr>,
    pub refresh: Duration,
    pub hold_valid: Duration,
}

#[derive(Clone, PartialEq, Eq)]
pub struct StickyConfig {
    /// The cookie MAC key: never printed (`Debug` shows `***`).
    pub secret: Option<String>,
}

impl std::fmt::Debug for StickyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StickyConfig")
            .field("secret", &self.secret.as_ref().map(|_| "***"))
            .finish()
    }
}

/// `[log]`: the access log (one line per request, written off the request path).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogConfig {
    pub access: AccessLogFormat,
    /// Where the lines go; `None` (an empty `access_file`): standard output.
    pub access_file: Option<PathBuf>,
}

/// `[log] access`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AccessLogFormat {
    /// No access log (the default).
    #[default]
    Off,
    /// Apache's combined format plus Wharf's fields as `key=value`.
    Combined,
    /// One JSON object per line.
    Json,
}

impl Config {
    /// The index of an entrypoint by name (the table's entrypoint id).
    pub fn entrypoint_index(&self, name: &str) -> Option<usize> {
        self.entrypoints.iter().position(|e| e.name == name)
    }

    /// The entrypoint mask of a route.
    pub fn route_mask(&self, route: &RouteSpec) -> EntrypointMask {
        match &route.entrypoints {
            None => EntrypointMask::ALL,
            Some(names) => names
                .iter()
                .filter_map(|n| self.entrypoint_index(n))
                .fold(EntrypointMask::none(), EntrypointMask::with),
        }
    }
}

const DEFAULT_ENTRYPOINTS: &str = r#"
[entrypoints.web]
address = "[::]:80"
redirect_https = true

[entrypoints.websecure]
address = "[::]:443"
tls = true
"#;

/// Collects problems with their key paths while validating.
struct Checker<'a> {
    doc: Option<toml_edit::ImDocument<&'a str>>,
    problems: Vec<Problem>,
}

impl Checker<'_> {
    fn fail(&mut self, key: &str, message: impl Into<String>) {
        let line = self.line_of(key);
        self.problems.push(Problem {
            key: key.to_string(),
            line,
            message: message.into(),
        });
    }

    /// Finds the line of a dotted path like `routes[2].sticky.cookie` (or its
    /// nearest ancestor present in the file).
    fn line_of(&self, key: &str) -> Option<usize> {
        let doc = self.doc.as_ref()?;
        let raw = doc.raw();
        let mut item: Option<&toml_edit::Item> = None;
        let mut best = None;
        for seg in key.split('.') {
            let (name, index) = match seg.split_once('[') {
                Some((n, rest)) => (n, rest.trim_end_matches(']').parse::<usize>().ok()),
                None => (seg, None),
            };
            let next = match item {
                None => doc.as_table().get(name),
                Some(it) => it.get(name),
            };
            let Some(mut next) = next else { break };
            if let Some(i) = index {
                match next.get(i) {
                    Some(n) => next = n,
                    None => break,
                }
            }
            if let Some(span) = next.span() {
                best = Some(span.start);
            } else if let Some(t) = next.as_table().and_then(|t| t.span()) {
                best = Some(t.start);
            }
            item = Some(next);
        }
        best.map(|offset| line_at(raw, offset))
    }

    fn duration(&mut self, key: &str, v: Option<&String>, default: Duration) -> Duration {
        match v.map(|s| values::positive_duration(s)) {
            None => default,
            Some(Ok(d)) => d,
            Some(Err(e)) => {
                self.fail(key, e);
                default
            }
        }
    }

    fn cidrs(&mut self, key: &str, list: &[String]) -> Vec<IpNet> {
        let mut out = Vec::new();
        for (i, c) in list.iter().enumerate() {
            let c = c.trim();
            // A bare address is a /32 or /128, as HAProxy and Traefik accept.
            let parsed = c
                .parse::<IpNet>()
                .or_else(|_| c.parse::<std::net::IpAddr>().map(IpNet::from));
            match parsed {
                Ok(n) => out.push(n),
                Err(_) => self.fail(
                    &format!("{key}[{i}]"),
                    format!("`{c}` is not a CIDR (e.g. 10.0.0.0/8) or an address"),
                ),
            }
        }
        out
    }
}

/// The admin token from `token` or `token_file` (never both). A file (a swarm
/// secret, `/run/secrets/...`) is read once here, surrounding whitespace trimmed.
/// An empty `token` means none; a token must be visible ASCII, so a client can
/// send it as written.
fn admin_token(ck: &mut Checker<'_>, a: &crate::file::FileAdmin) -> Option<AdminToken> {
    let inline = a.token.as_deref().filter(|t| !t.is_empty());
    let file = a.token_file.as_deref().filter(|f| !f.trim().is_empty());
    let (key, token) = match (inline, file) {
        (Some(_), Some(_)) => {
            ck.fail(
                "admin.token_file",
                "set either `token` or `token_file`, not both",
            );
            return None;
        }
        (Some(t), None) => ("admin.token", t.trim().to_string()),
        (None, Some(path)) => match std::fs::read_to_string(path.trim()) {
            Ok(text) => {
                let t = text.trim().to_string();
                if t.is_empty() {
                    ck.fail(
                        "admin.token_file",
                        format!("`{}` is empty; it must hold the token", path.trim()),
                    );
                    return None;
                }
                ("admin.token_file", t)
            }
            Err(e) => {
                ck.fail(
                    "admin.token_file",
                    format!("cannot read `{}`: {e}", path.trim()),
                );
                return None;
            }
        },
        (None, None) => return None,
    };
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        ck.fail(
            key,
            "the token must be printable ASCII without spaces (e.g. `openssl rand -hex 32`)",
        );
        return None;
    }
    Some(AdminToken(token))
}

/// `[admin] hosts`: host names (no port), `*.domain` or `*`.
fn admin_hosts(ck: &mut Checker<'_>, list: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for (i, h) in list.iter().enumerate() {
        match values::host_pattern(h) {
            Ok(h) => out.push(h),
            Err(e) => ck.fail(
                &format!("admin.hosts[{i}]"),
                format!("{e}; write the name without scheme or port"),
            ),
        }
    }
    out
}

/// `[docker] allowed_domains`: `example.org` or `*.example.org` (a bare `*`
/// would allow anything: leave the list empty for that).
fn allowed_domains(ck: &mut Checker<'_>, list: Vec<String>) -> Vec<String> {
    let mut out = Vec::new();
    for (i, d) in list.iter().enumerate() {
        match values::host_pattern(d) {
            Ok(h) if h == "*" => ck.fail(
                &format!("docker.allowed_domains[{i}]"),
                "`*` allows every host; leave the list empty for that",
            ),
            Ok(h) => out.push(h),
            Err(e) => ck.fail(&format!("docker.allowed_domains[{i}]"), e),
        }
    }
    out
}

/// `[::]:80`, `0.0.0.0:80`, `127.0.0.1:8082`, or `:80` (all interfaces, dual-stack).
fn socket_addr(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    let full = if s.starts_with(':') {
        format!("[::]{s}")
    } else {
        s.to_string()
    };
    full.parse().map_err(|_| {
        format!("`{s}` is not a listen address; write IP:PORT, e.g. `[::]:80` or `127.0.0.1:8082`")
    })
}

/// Flattens a route table into `(key, value)` pairs for the shared route parser.
fn flatten(prefix: &str, t: &toml::Table, out: &mut Vec<(String, String)>) -> Result<(), String> {
    for (k, v) in t {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        let scalar = |v: &toml::Value| -> Result<String, String> {
            match v {
                toml::Value::String(s) => Ok(s.clone()),
                toml::Value::Integer(i) => Ok(i.to_string()),
                toml::Value::Boolean(b) => Ok(b.to_string()),
                other => Err(format!(
                    "`{key}`: expected a string, number or boolean, found a {}",
                    other.type_str()
                )),
            }
        };
        match v {
            toml::Value::Table(inner) => flatten(&key, inner, out)?,
            toml::Value::Array(items) => {
                let parts: Result<Vec<_>, _> = items.iter().map(scalar).collect();
                out.push((key.clone(), parts?.join(",")));
            }
            other => out.push((key.clone(), scalar(other)?)),
        }
    }
    Ok(())
}

/// The 1-based line of a byte offset.
fn line_at(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

fn toml_problem(origin: &str, text: &str, e: &toml::de::Error, key: &str) -> ConfigError {
    let line = e.span().map(|s| line_at(text, s.start));
    ConfigError::Invalid {
        origin: origin.to_string(),
        problems: vec![Problem {
            key: key.to_string(),
            line,
            message: e.message().trim().to_string(),
        }],
    }
}

pub(crate) fn parse(
    text: &str,
    origin: &str,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, ConfigError> {
    // Pass 1, on the text alone: syntax and unknown keys, with exact lines.
    let mut raw: toml::Table = text
        .parse()
        .map_err(|e| toml_problem(origin, text, &e, "(syntax)"))?;
    toml::from_str::<FileConfig>(text).map_err(|e| toml_problem(origin, text, &e, "(schema)"))?;

    // Built-in entrypoints when the file names none (SPEC: "With no config file at
    // all, `wharf run` listens on `[::]:80` and `[::]:443`"); added before the
    // overrides so `WHARF_ENTRYPOINTS_WEB_ADDRESS` adjusts a default.
    if !raw.contains_key("entrypoints") {
        let defaults: toml::Table = DEFAULT_ENTRYPOINTS
            .parse()
            .map_err(|e| toml_problem("defaults", DEFAULT_ENTRYPOINTS, &e, "(syntax)"))?;
        raw.extend(defaults);
    }

    // Pass 2: environment overrides on top, checked by the same types.
    let env_report = env::apply(&mut raw, vars).map_err(|message| ConfigError::Invalid {
        origin: origin.to_string(),
        problems: vec![Problem {
            key: "(environment)".into(),
            line: None,
            message,
        }],
    })?;
    let file = FileConfig::deserialize(raw).map_err(|e| ConfigError::Invalid {
        origin: origin.to_string(),
        problems: vec![Problem {
            key: "(environment)".into(),
            line: None,
            message: format!(
                "after overrides from {}: {}",
                env_report
                    .applied
                    .iter()
                    .map(|(v, _)| v.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                e.message().trim()
            ),
        }],
    })?;

    let mut ck = Checker {
        doc: toml_edit::ImDocument::parse(text).ok(),
        problems: Vec::new(),
    };
    let mut warnings: Vec<String> = env_report
        .unknown
        .iter()
        .map(|v| format!("environment variable {v} names no config key; ignored"))
        .collect();

    // Entrypoints.
    let file_eps = file.entrypoints;
    if file_eps.len() > EntrypointMask::MAX_ENTRYPOINTS {
        ck.fail(
            "entrypoints",
            format!(
                "at most {} entrypoints are supported",
                EntrypointMask::MAX_ENTRYPOINTS
            ),
        );
    }
    let mut entrypoints = Vec::new();
    for (name, ep) in &file_eps {
        let k = |s: &str| format!("entrypoints.{name}.{s}");
        let address = match ep.address.as_deref().map(socket_addr) {
            Some(Ok(a)) => a,
            Some(Err(e)) => {
                ck.fail(&k("address"), e);
                continue;
            }
            None => {
                ck.fail(&k("address"), "required");
                continue;
            }
        };
        let tls = ep.tls.unwrap_or(false);
        let redirect_https = ep.redirect_https.unwrap_or(false);
        if tls && redirect_https {
            ck.fail(
                &k("redirect_https"),
                "a TLS entrypoint cannot redirect to HTTPS",
            );
        }
        let proxy_protocol = ep
            .proxy_protocol
            .as_ref()
            .map(|p| ck.cidrs(&k("proxy_protocol.trusted"), &p.trusted));
        let forwarded_trusted = ck.cidrs(
            &k("forwarded_trusted"),
            ep.forwarded_trusted.as_deref().unwrap_or(&[]),
        );
        let header_read_timeout = ck.duration(
            &k("header_read_timeout"),
            ep.header_read_timeout.as_ref(),
            Duration::from_secs(30),
        );
        let max_header_size = ep.max_header_size.unwrap_or(64 * 1024);
        if !(8192..=1024 * 1024).contains(&max_header_size) {
            ck.fail(
                &k("max_header_size"),
                "must be between 8192 and 1048576 bytes",
            );
        }
        let max_headers = ep.max_headers.unwrap_or(100);
        if !(8..=10_000).contains(&max_headers) {
            ck.fail(&k("max_headers"), "must be between 8 and 10000");
        }
        let max_connections = ep.max_connections.unwrap_or(0);
        if max_connections > 10_000_000 {
            ck.fail(&k("max_connections"), "at most 10000000 (0: unlimited)");
        }
        let idle_timeout = ck.duration(
            &k("idle_timeout"),
            ep.idle_timeout.as_ref(),
            Duration::from_secs(60),
        );
        let max_connection_age = match ep.max_connection_age.as_deref().map(values::duration) {
            None => Duration::from_secs(3600),
            Some(Ok(d)) => d,
            Some(Err(e)) => {
                ck.fail(&k("max_connection_age"), e);
                Duration::ZERO
            }
        };
        let client_timeout = ck.duration(
            &k("client_timeout"),
            ep.client_timeout.as_ref(),
            Duration::from_secs(60),
        );
        let tunnel_timeout = ck.duration(
            &k("tunnel_timeout"),
            ep.tunnel_timeout.as_ref(),
            Duration::from_secs(3600),
        );
        entrypoints.push(Entrypoint {
            name: name.clone(),
            address,
            tls,
            redirect_https,
            proxy_protocol,
            forwarded_trusted,
            http2: ep.http2.unwrap_or(true),
            header_read_timeout,
            max_header_size,
            max_headers,
            max_connections,
            idle_timeout,
            max_connection_age,
            client_timeout,
            tunnel_timeout,
            strict_sni: match ep.strict_sni {
                Some(true) if !tls => {
                    ck.fail(
                        &k("strict_sni"),
                        "strict_sni needs a TLS entrypoint (tls = true)",
                    );
                    false
                }
                s => s.unwrap_or(false),
            },
        });
    }
    for (i, a) in entrypoints.iter().enumerate() {
        // Port 0 asks the kernel for a free port, so it never collides.
        let clash = |b: &&Entrypoint| b.address == a.address && a.address.port() != 0;
        if let Some(b) = entrypoints[..i].iter().find(clash) {
            let msg = format!(
                "{} is also the address of entrypoint `{}`",
                a.address, b.name
            );
            ck.fail(&format!("entrypoints.{}.address", a.name), msg);
        }
    }

    let fadmin = file.admin.unwrap_or_default();
    let admin = AdminConfig {
        address: match fadmin.address.as_deref().map(socket_addr) {
            None => SocketAddr::from(([127, 0, 0, 1], 8082)),
            Some(Ok(a)) => a,
            Some(Err(e)) => {
                ck.fail("admin.address", e);
                SocketAddr::from(([127, 0, 0, 1], 8082))
            }
        },
        token: admin_token(&mut ck, &fadmin),
        hosts: admin_hosts(&mut ck, fadmin.hosts.as_deref().unwrap_or(&[])),
        header_read_timeout: ck.duration(
            "admin.header_read_timeout",
            fadmin.header_read_timeout.as_ref(),
            Duration::from_secs(10),
        ),
        idle_timeout: ck.duration(
            "admin.idle_timeout",
            fadmin.idle_timeout.as_ref(),
            Duration::from_secs(60),
        ),
        max_connections: fadmin.max_connections.unwrap_or(64),
    };
    if !(1..=4096).contains(&admin.max_connections) {
        ck.fail("admin.max_connections", "must be between 1 and 4096");
    }
    if let Some(t) = &admin.token {
        if t.expose().len() < SHORT_TOKEN {
            warnings.push(format!(
                "[admin] token is shorter than {SHORT_TOKEN} characters; use a long random \
                 string (e.g. `openssl rand -hex 32`)"
            ));
        }
    } else if !admin.address.ip().is_loopback() {
        warnings.push(format!(
            "the admin listener on {} is reachable from other hosts and has no [admin] token: \
             anyone who can reach it reads the routes, backends and errors; set a token \
             (token, token_file or WHARF_ADMIN_TOKEN) or bind it to 127.0.0.1",
            admin.address
        ));
    }
    let clash = |e: &&Entrypoint| e.address == admin.address && admin.address.port() != 0;
    if let Some(ep) = entrypoints.iter().find(clash) {
        let msg = format!(
            "{} is also the address of entrypoint `{}`",
            admin.address, ep.name
        );
        ck.fail("admin.address", msg);
    }

    let rt = file.runtime.unwrap_or_default();
    let runtime = RuntimeConfig {
        worker_threads: rt.worker_threads.unwrap_or(0),
        shutdown_timeout: match rt.shutdown_timeout.as_deref().map(values::duration) {
            None => Duration::from_secs(30),
            Some(Ok(d)) => d,
            Some(Err(e)) => {
                ck.fail("runtime.shutdown_timeout", e);
                Duration::from_secs(30)
            }
        },
        accept_grace: match rt.accept_grace.as_deref().map(values::duration) {
            None => Duration::ZERO,
            Some(Ok(d)) if d <= Duration::from_secs(300) => d,
            Some(Ok(_)) => {
                ck.fail("runtime.accept_grace", "at most 300s");
                Duration::ZERO
            }
            Some(Err(e)) => {
                ck.fail("runtime.accept_grace", e);
                Duration::ZERO
            }
        },
        max_connections: rt.max_connections.unwrap_or(0),
    };
    if runtime.worker_threads > 1024 {
        ck.fail("runtime.worker_threads", "at most 1024");
    }

    let up = file.upstream.unwrap_or_default();
    let upstream = UpstreamConfig {
        connect_timeout: ck.duration(
            "upstream.connect_timeout",
            up.connect_timeout.as_ref(),
            Duration::from_secs(5),
        ),
        response_timeout: ck.duration(
            "upstream.response_timeout",
            up.response_timeout.as_ref(),
            Duration::from_secs(60),
        ),
        idle_timeout: ck.duration(
            "upstream.idle_timeout",
            up.idle_timeout.as_ref(),
            // Below the shortest common backend keep-alive (Node.js and Apache
            // close idle connections after 5 s), so a pooled connection is
            // dropped here before the backend closes it under a request.
            Duration::from_secs(4),
        ),
        max_idle_per_backend: up.max_idle_per_backend.unwrap_or(256),
    };

    let tls = file
        .tls
        .unwrap_or_default()
        .certificates
        .into_iter()
        .map(|c| CertPaths {
            cert: c.cert.into(),
            key: c.key.into(),
        })
        .collect();

    let fa = file.acme.unwrap_or_default();
    let challenge = match fa.challenge.as_deref().unwrap_or("http-01") {
        "http-01" => Challenge::Http01,
        "tls-alpn-01" => Challenge::TlsAlpn01,
        "dns-01" => Challenge::Dns01,
        other => {
            ck.fail(
                "acme.challenge",
                format!("`{other}` is not a challenge; use http-01, tls-alpn-01 or dns-01"),
            );
            Challenge::Http01
        }
    };
    let storage = match fa.storage.as_deref().unwrap_or("file:/var/lib/wharf/acme") {
        "swarm" => Storage::Swarm,
        s => match s.strip_prefix("file:") {
            Some(dir) if !dir.is_empty() => Storage::File(dir.into()),
            _ => {
                ck.fail(
                    "acme.storage",
                    format!("`{s}` is not a storage; use `file:DIR` or `swarm`"),
                );
                Storage::File("/var/lib/wharf/acme".into())
            }
        },
    };
    let dns01 = fa.dns.map(|d| {
        let server = match d.server.as_deref().map(socket_addr) {
            Some(Ok(a)) => a,
            Some(Err(e)) => {
                ck.fail("acme.dns.server", e);
                SocketAddr::from(([127, 0, 0, 1], 53))
            }
            None => {
                ck.fail("acme.dns.server", "required for DNS-01");
                SocketAddr::from(([127, 0, 0, 1], 53))
            }
        };
        AcmeDns {
            server,
            zone: d.zone.unwrap_or_default(),
            key_name: d.key_name,
            key_secret: d.key_secret,
        }
    });
    if dns01.as_ref().is_some_and(|d| d.zone.trim().is_empty()) {
        ck.fail(
            "acme.dns.zone",
            "required: the zone that receives the TXT records",
        );
    }
    if challenge == Challenge::Dns01 && dns01.is_none() {
        ck.fail(
            "acme.dns",
            "challenge = \"dns-01\" needs [acme.dns] server and zone",
        );
    }
    // Empty (also from `WHARF_ACME_EMAIL=""`) means none: no ACME.
    if let Some(email) = fa.email.as_ref().filter(|e| !e.is_empty()) {
        if !email.contains('@') {
            ck.fail("acme.email", format!("`{email}` is not an email address"));
        }
    }
    let acme = AcmeConfig {
        email: fa.email.filter(|e| !e.is_empty()),
        directory: fa
            .directory
            .unwrap_or_else(|| "https://acme-v02.api.letsencrypt.org/directory".into()),
        challenge,
        ca_roots: fa
            .ca_roots
            .unwrap_or_default()
            .into_iter()
            .map(PathBuf::from)
            .collect(),
        storage,
        dns: dns01,
        max_names: fa.max_names.unwrap_or(500),
    };

    let fd = file.docker.unwrap_or_default();
    let docker = DockerConfig {
        endpoint: fd
            .endpoint
            .unwrap_or_else(|| "unix:///var/run/docker.sock".into()),
        mode: match fd.mode.as_deref().unwrap_or("auto") {
            "auto" => DockerMode::Auto,
            "swarm" => DockerMode::Swarm,
            "containers" => DockerMode::Containers,
            "off" => DockerMode::Off,
            other => {
                ck.fail(
                    "docker.mode",
                    format!("`{other}` is not a mode; use auto, swarm, containers or off"),
                );
                DockerMode::Auto
            }
        },
        network: fd.network.unwrap_or_else(|| "wharf-public".into()),
        exposed_by_default: fd.exposed_by_default.unwrap_or(false),
        traefik_rules_enable: fd.exposed_by_default.is_none(),
        traefik_labels: fd.traefik_labels.unwrap_or(true),
        poll_interval: ck.duration(
            "docker.poll_interval",
            fd.poll_interval.as_ref(),
            Duration::from_secs(1),
        ),
        allowed_domains: allowed_domains(&mut ck, fd.allowed_domains.unwrap_or_default()),
        allow_wildcards: fd.allow_wildcards.unwrap_or(false),
    };

    let fdns = file.dns.unwrap_or_default();
    let mut nameservers = Vec::new();
    for (i, ns) in fdns
        .nameservers
        .unwrap_or_else(|| vec!["127.0.0.11:53".into()])
        .iter()
        .enumerate()
    {
        // A bare address means port 53.
        let parsed = socket_addr(ns).or_else(|e| {
            ns.trim()
                .parse::<std::net::IpAddr>()
                .map(|ip| SocketAddr::new(ip, 53))
                .map_err(|_| e)
        });
        match parsed {
            Ok(a) => nameservers.push(a),
            Err(e) => ck.fail(&format!("dns.nameservers[{i}]"), e),
        }
    }
    let dns = DnsConfig {
        nameservers,
        refresh: ck.duration("dns.refresh", fdns.refresh.as_ref(), Duration::from_secs(5)),
        hold_valid: ck.duration(
            "dns.hold_valid",
            fdns.hold_valid.as_ref(),
            Duration::from_secs(300),
        ),
    };

    let sticky = StickyConfig {
        secret: file.sticky.and_then(|s| s.secret).filter(|s| !s.is_empty()),
    };

    // The access log. Whether `access_file` can be opened is found out by `wharf
    // run`, which opens it at start (exit 2 when it cannot); checking it here
    // would create the file.
    let flog = file.log.unwrap_or_default();
    let access = match flog.access.as_deref().map(str::trim).unwrap_or("off") {
        "off" => AccessLogFormat::Off,
        "combined" => AccessLogFormat::Combined,
        "json" => AccessLogFormat::Json,
        other => {
            ck.fail(
                "log.access",
                format!("`{other}` is not an access log format; use off, combined or json"),
            );
            AccessLogFormat::Off
        }
    };
    let access_file = flog
        .access_file
        .filter(|f| !f.trim().is_empty())
        .map(PathBuf::from);
    if access == AccessLogFormat::Off && access_file.is_some() {
        warnings
            .push("[log] access_file is set but access = \"off\": no access log is written".into());
    }
    let log = LogConfig {
        access,
        access_file,
    };

    // Routes, through the same parser as labels.
    let mut routes: Vec<RouteSpec> = Vec::new();
    for (i, table) in file.routes.iter().enumerate() {
        let base = format!("routes[{i}]");
        let mut pairs = Vec::new();
        if let Err(e) = flatten("", table, &mut pairs) {
            ck.fail(&base, e);
            continue;
        }
        let placeholder = format!("\u{0}{i}");
        match route::parse_route(&placeholder, &pairs, true) {
            Ok(mut spec) => {
                if spec.name == placeholder {
                    spec.name = format!("{}{}", spec.hosts[0], spec.path);
                }
                if let Some(eps) = &spec.entrypoints {
                    for ep in eps {
                        if !entrypoints.iter().any(|e| &e.name == ep) {
                            let names: Vec<_> =
                                entrypoints.iter().map(|e| e.name.as_str()).collect();
                            ck.fail(
                                &format!("{base}.entrypoints"),
                                format!("no entrypoint named `{ep}` (have: {})", names.join(", ")),
                            );
                        }
                    }
                }
                if spec.enable == Some(false) {
                    continue;
                }
                for (key, _) in &pairs {
                    if let Some(why) = spec.without_effect(key) {
                        warnings.push(format!("route `{}`: `{key}` {why}", spec.name));
                    }
                }
                if let Some(other) = routes.iter().find(|r| r.name == spec.name) {
                    let msg = format!(
                        "route name `{}` is used twice; give one a distinct `name`",
                        other.name
                    );
                    ck.fail(&format!("{base}.name"), msg);
                }
                routes.push(spec);
            }
            Err(problems) => {
                for p in problems {
                    ck.fail(&format!("{base}.{}", p.key), p.message);
                }
            }
        }
    }

    // So `wharf check` says so too (`wharf run` logs the same line once).
    for r in &routes {
        warnings.extend(r.not_enforced());
    }
    if sticky.secret.is_none() && routes.iter().any(|r| r.sticky.kind == StickyType::Cookie) {
        warnings.push(
            "[sticky] secret is not set: sticky cookies use a random per-process key and will \
             not agree across replicas or restarts"
                .into(),
        );
    }

    if !ck.problems.is_empty() {
        return Err(ConfigError::Invalid {
            origin: origin.to_string(),
            problems: ck.problems,
        });
    }
    Ok(Config {
        source: None,
        entrypoints,
        admin,
        runtime,
        upstream,
        tls,
        acme,
        docker,
        dns,
        sticky,
        log,
        routes,
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_ok(text: &str) -> Config {
        crate::parse(text, "test.toml", std::iter::empty()).unwrap()
    }

    fn parse_err(text: &str) -> Vec<Problem> {
        match crate::parse(text, "test.toml", std::iter::empty()) {
            Err(ConfigError::Invalid { problems, .. }) => problems,
            other => panic!("expected problems, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_valid() {
        // SPEC: "With no config file at all" (the binary parses "" plus overrides).
        let c = parse_ok("");
        assert_eq!(c.entrypoints.len(), 2);
        assert_eq!(c.entrypoints[0].name, "web");
        assert_eq!(c.entrypoints[0].address, "[::]:80".parse().unwrap());
        assert!(c.entrypoints[0].redirect_https);
        assert!(c.entrypoints[1].tls);
        assert_eq!(c.admin.address, "127.0.0.1:8082".parse().unwrap());
        assert_eq!(c.runtime.shutdown_timeout, Duration::from_secs(30));
        assert_eq!(c.dns.nameservers, vec!["127.0.0.11:53".parse().unwrap()]);
        assert!(c.acme.email.is_none());
    }

    #[test]
    fn the_spec_example_parses() {
        let text = include_str!("../../../config/example.toml");
        let c = parse_ok(text);
        assert_eq!(c.routes.len(), 1);
        let r = &c.routes[0];
        assert_eq!(r.hosts, vec!["legacy.example.org"]);
        assert_eq!(r.maxconn.map(|m| m.limit), Some(100));
        assert_eq!(c.entrypoints.len(), 2);
        let ws = c
            .entrypoints
            .iter()
            .find(|e| e.name == "websecure")
            .unwrap();
        assert_eq!(ws.proxy_protocol.as_ref().unwrap().len(), 1);
    }

    #[test]
    fn shipped_configs_parse() {
        let q = parse_ok(include_str!("../../../config/quickstart.toml"));
        assert_eq!(q.routes[0].hosts, vec!["*"]);
        let d = parse_ok(include_str!("../../../deploy/wharf.toml"));
        assert_eq!(d.entrypoints.len(), 2);
    }

    #[test]
    fn accept_grace_is_a_bounded_duration() {
        assert_eq!(parse_ok("").runtime.accept_grace, Duration::ZERO);
        let c = parse_ok("[runtime]\naccept_grace = \"2s\"\n");
        assert_eq!(c.runtime.accept_grace, Duration::from_secs(2));
        let p = parse_err("[runtime]\naccept_grace = \"10m\"\n");
        assert!(p[0].message.contains("at most 300s"), "{p:?}");
        let p = parse_err("[runtime]\naccept_grace = \"soon\"\n");
        assert!(p[0].message.contains("not a duration"), "{p:?}");
    }

    #[test]
    fn unknown_key_names_line() {
        let p = parse_err("[admin]\naddress = \"127.0.0.1:1\"\n\n[runtime]\nworkers = 2\n");
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].line, Some(5), "{p:?}");
        assert!(p[0].message.contains("workers"), "{p:?}");
    }

    #[test]
    fn syntax_error_names_line() {
        let p = parse_err("[admin]\naddress = \n");
        assert_eq!(p[0].line, Some(2), "{p:?}");
    }

    #[test]
    fn bad_values_name_key_and_line() {
        let p = parse_err(
            "[entrypoints.web]\naddress = \"nowhere\"\n\n[[routes]]\nhost = \"a.example\"\nupstream = \"static:10.0.0.1:80\"\n\n[[routes]]\nhost = \"b.example\"\nbalance = \"fast\"\nupstream = \"static:10.0.0.1:80\"\n",
        );
        let addr = p
            .iter()
            .find(|p| p.key == "entrypoints.web.address")
            .unwrap();
        assert_eq!(addr.line, Some(2));
        let bal = p.iter().find(|p| p.key == "routes[1].balance").unwrap();
        assert_eq!(bal.line, Some(10), "{p:?}");
    }

    #[test]
    fn disabled_file_routes_are_dropped() {
        let c = parse_ok(
            "[[routes]]\nhost = \"a\"\nupstream = \"static:10.0.0.1:80\"\nenable = false\n[[routes]]\nhost = \"b\"\nupstream = \"static:10.0.0.1:80\"\n",
        );
        assert_eq!(c.routes.len(), 1);
        assert_eq!(c.routes[0].hosts, vec!["b"]);
    }

    #[test]
    fn route_entrypoints_must_exist_and_names_be_unique() {
        let p = parse_err(
            "[entrypoints.web]\naddress = \":80\"\n[[routes]]\nhost = \"a\"\nupstream = \"static:10.0.0.1:80\"\nentrypoints = [\"nope\"]\n[[routes]]\nhost = \"a\"\nupstream = \"static:10.0.0.1:80\"\n",
        );
        assert!(p.iter().any(|p| p.key == "routes[0].entrypoints"));
        assert!(p.iter().any(|p| p.key == "routes[1].name"));
    }

    /// One route with the given extra lines, beside a good route.
    fn route_with(extra: &str) -> String {
        format!(
            "[[routes]]\nhost = \"ok.example\"\nupstream = \"static:10.0.0.1:80\"\n\n\
             [[routes]]\nhost = \"a.example\"\nupstream = \"static:10.0.0.1:80\"\n{extra}"
        )
    }

    /// The problems of `extra` in the second route: each names that route's key.
    fn route_problems(extra: &str) -> Vec<Problem> {
        let p = parse_err(&route_with(extra));
        assert!(
            p.iter().all(|p| p.key.starts_with("routes[1].")),
            "only the bad route is named: {p:?}"
        );
        p
    }

    #[test]
    fn healthcheck_bad_input_names_route_key_value_and_hint() {
        let p = route_problems("healthcheck = { path = \"/h\", interval = \"50ms\" }\n");
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].key, "routes[1].healthcheck.interval");
        assert_eq!(p[0].line, Some(8));
        assert_eq!(
            p[0].message,
            "`50ms` is shorter than the shortest check interval, 100ms; write e.g. `1s` \
             (HAProxy's `inter` is 2s by default)"
        );

        let p = route_problems(
            "healthcheck = { path = \"/h\", interval = \"1s\", timeout = \"1s\" }\n",
        );
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].key, "routes[1].healthcheck.timeout");
        assert_eq!(
            p[0].message,
            "`1s` is not shorter than the check interval `1s`: a check must end before the next \
             one starts; set a timeout below the interval (e.g. `500ms`) or a longer interval"
        );
        // Against the default interval, said so.
        let p = route_problems("healthcheck = { path = \"/h\", timeout = \"30s\" }\n");
        assert_eq!(p[0].key, "routes[1].healthcheck.timeout");
        assert!(p[0].message.contains("`10s` (the default)"), "{p:?}");

        // The existing checks, each on its key.
        for (extra, key, needle) in [
            (
                "healthcheck.path = \"health\"\n",
                "healthcheck.path",
                "must start with `/`",
            ),
            (
                "healthcheck = { path = \"/h\", rise = 0 }\n",
                "healthcheck.rise",
                "rise must be at least 1",
            ),
            (
                "healthcheck = { path = \"/h\", fall = 0 }\n",
                "healthcheck.fall",
                "fall must be at least 1",
            ),
            (
                "healthcheck = { path = \"/h\", method = \"POST\" }\n",
                "healthcheck.method",
                "use HEAD or GET",
            ),
            (
                "healthcheck = { path = \"/h\", expect = \"2xx,ok\" }\n",
                "healthcheck.expect",
                "`ok` is not a status, class or range",
            ),
            (
                "healthcheck = { interval = \"5s\" }\n",
                "healthcheck.path",
                "without `healthcheck.path`",
            ),
        ] {
            let p = route_problems(extra);
            assert_eq!(p.len(), 1, "{extra}: {p:?}");
            assert_eq!(p[0].key, format!("routes[1].{key}"), "{extra}");
            assert!(p[0].message.contains(needle), "{extra}: {p:?}");
        }
    }

    #[test]
    fn healthcheck_defaults_limits_and_ranges_through_the_file() {
        let c = parse_ok(&route_with(
            "healthcheck = { path = \"/h\", interval = \"100ms\", expect = \"200-399,404\" }\n",
        ));
        let hc = c.routes[1].healthcheck.as_ref().unwrap();
        assert_eq!(hc.interval, Duration::from_millis(100));
        assert_eq!(
            hc.timeout,
            Duration::from_millis(50),
            "no timeout given and a short interval: half of it"
        );
        assert_eq!(hc.expect, vec![(200, 399), (404, 404)]);
        let c = parse_ok(&route_with("healthcheck.path = \"/h\"\n"));
        let hc = c.routes[1].healthcheck.as_ref().unwrap();
        assert_eq!(
            (
                hc.method.as_str(),
                hc.interval,
                hc.timeout,
                hc.rise,
                hc.fall
            ),
            (
                "HEAD",
                Duration::from_secs(10),
                Duration::from_secs(2),
                2,
                3
            )
        );
        let c = parse_ok(&route_with(
            "healthcheck = { path = \"/h\", interval = \"3s\" }\n",
        ));
        assert_eq!(
            c.routes[1].healthcheck.as_ref().unwrap().timeout,
            Duration::from_secs(2),
            "the default timeout stays while it is shorter than the interval"
        );
    }

    #[test]
    fn maxconn_group_through_the_file() {
        let c = parse_ok(&route_with("maxconn = 10\n"));
        let m = c.routes[1].maxconn.unwrap();
        assert_eq!(
            (m.limit, m.queue, m.timeout),
            (10, 1024, Duration::from_secs(5))
        );
        let c = parse_ok(&route_with(
            "maxconn = { limit = 2, queue = 0, timeout = \"250ms\" }\n",
        ));
        let m = c.routes[1].maxconn.unwrap();
        assert_eq!(
            (m.limit, m.queue, m.timeout),
            (2, 0, Duration::from_millis(250))
        );

        for (extra, key, message) in [
            (
                "maxconn = 0\n",
                "maxconn",
                "maxconn (requests in flight per backend) must be at least 1",
            ),
            (
                "maxconn = 2000000\n",
                "maxconn",
                "`2000000` is more than 1000000 requests in flight per backend, which limits \
                 nothing; leave maxconn unset for no limit",
            ),
            (
                "maxconn = { limit = 2, queue = -1 }\n",
                "maxconn.queue",
                "`-1` is not a valid queue length (a whole number; 0: no queue, the excess gets \
                 503 at once)",
            ),
            (
                "maxconn = { limit = 2, queue = 5000000 }\n",
                "maxconn.queue",
                "`5000000` is more waiting requests than a queue may hold: at most 1000000, as \
                 each holds a client connection (the default is 1024)",
            ),
            (
                "maxconn = { limit = 2, timeout = \"0s\" }\n",
                "maxconn.timeout",
                "`0s` must be longer than zero (use `maxconn.queue = 0` for no waiting at all)",
            ),
            (
                "maxconn = { limit = 2, timeout = \"2h\" }\n",
                "maxconn.timeout",
                "`2h` is longer than a request may wait in the queue, 1h; write e.g. `5s` \
                 (HAProxy's `timeout queue`)",
            ),
            (
                "maxconn = { queue = 5 }\n",
                "maxconn",
                "queue settings given without `maxconn` (the limit), which enables them",
            ),
        ] {
            let p = route_problems(extra);
            assert_eq!(p.len(), 1, "{extra}: {p:?}");
            assert_eq!(p[0].key, format!("routes[1].{key}"), "{extra}");
            assert_eq!(p[0].message, message, "{extra}");
        }
    }

    #[test]
    fn settings_not_enforced_yet_are_warnings() {
        let not_enforced = |extra: &str| -> Vec<String> {
            parse_ok(&route_with(extra))
                .warnings
                .into_iter()
                .filter(|w| w.contains("not enforced"))
                .collect()
        };
        // Sticky sessions, rate limits, maxconn and checks are enforced.
        assert_eq!(
            not_enforced(
                "sticky = \"cookie\"\nratelimit = \"5/s\"\nmaxconn = 3\nhealthcheck.path = \"/h\"\n"
            ),
            Vec::<String>::new()
        );
        assert_eq!(not_enforced("scheme = \"https\"\n"), Vec::<String>::new());
    }

    #[test]
    fn ratelimit_and_sticky_through_the_file() {
        let c = parse_ok(&route_with(
            "ratelimit = { rate = \"100/s\", burst = 200, key = \"source\", scope = \"cluster\" }\n\
             sticky = { type = \"cookie\", cookie = \"SID\", ttl = \"1h\" }\n",
        ));
        let r = &c.routes[1];
        let rl = r.ratelimit.as_ref().unwrap();
        assert_eq!(
            (rl.per_second, rl.burst, &rl.key, rl.scope),
            (
                100.0,
                200,
                &crate::route::RateKey::Source,
                crate::route::RateScope::Cluster
            )
        );
        assert_eq!(r.sticky.ttl, Some(Duration::from_secs(3600)));
        assert_eq!(c.routes[0].sticky.ttl, None);

        let p = route_problems("ratelimit = { rate = \"5/s\", scope = \"world\" }\n");
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].key, "routes[1].ratelimit.scope");
        assert_eq!(
            p[0].message,
            "`world` is not a rate-limit scope; use replica or cluster"
        );

        // A key the sticky type ignores is a warning naming route and key.
        let c = parse_ok(&route_with(
            "sticky = { type = \"source\", cookie = \"SID\" }\n",
        ));
        let w: Vec<&String> = c
            .warnings
            .iter()
            .filter(|w| w.contains("no effect"))
            .collect();
        assert_eq!(w.len(), 1, "{:?}", c.warnings);
        assert!(
            w[0].starts_with(
                "route `a.example/`: `sticky.cookie` has no effect: sticky is `source`"
            ),
            "{w:?}"
        );
    }

    #[test]
    fn env_overrides_apply_and_are_validated() {
        let c = crate::parse(
            "",
            "t",
            vec![
                (
                    "WHARF_ADMIN_ADDRESS".to_string(),
                    "127.0.0.1:9999".to_string(),
                ),
                (
                    "WHARF_ENTRYPOINTS_WEB_ADDRESS".to_string(),
                    "127.0.0.1:8080".to_string(),
                ),
            ],
        )
        .unwrap();
        assert_eq!(c.admin.address, "127.0.0.1:9999".parse().unwrap());
        assert_eq!(c.entrypoints[0].address, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.entrypoints[1].name, "websecure");
        let e = crate::parse(
            "",
            "t",
            vec![("WHARF_ADMIN_ADDRESS".to_string(), "bogus".to_string())],
        )
        .unwrap_err();
        assert!(e.to_string().contains("admin.address"), "{e}");
    }

    #[test]
    fn backend_tls_through_the_file() {
        let dir = crate::route::tests::Scratch::new("validate-tls");
        let (ca, cert, key) = (dir.file("ca.pem"), dir.file("c.pem"), dir.file("k.pem"));
        // The SPEC's line, with empty client_cert/client_key meaning unset.
        let c = parse_ok(&route_with(&format!(
            "scheme = \"https\"\nbackend_tls = {{ server_name = \"app.internal\", ca = \"{ca}\", \
             insecure = false, client_cert = \"\", client_key = \"\" }}\n"
        )));
        let t = &c.routes[1].backend_tls;
        assert_eq!(t.server_name.as_deref(), Some("app.internal"));
        assert_eq!(t.ca, Some(PathBuf::from(&ca)));
        assert!(!t.insecure && t.client_cert.is_none() && t.client_key.is_none());
        assert!(c.routes[0].backend_tls.is_default());
        // As a table of its own, with a client certificate.
        let c = parse_ok(&route_with(&format!(
            "scheme = \"https\"\n[routes.backend_tls]\nclient_cert = \"{cert}\"\n\
             client_key = \"{key}\"\ninsecure = true\n"
        )));
        let t = &c.routes[1].backend_tls;
        assert!(t.insecure);
        assert_eq!(t.client_key, Some(PathBuf::from(&key)));

        // Problems: each on its key and line, for that route alone.
        let missing = dir.missing("gone.pem");
        for (extra, key, needle) in [
            (
                "backend_tls = { insecure = true }\n".to_string(),
                "backend_tls.insecure",
                "only used with scheme = \"https\" (this route's scheme is http)".to_string(),
            ),
            (
                "scheme = \"h2c\"\nbackend_tls.server_name = \"app.internal\"\n".to_string(),
                "backend_tls.server_name",
                "this route's scheme is h2c".to_string(),
            ),
            (
                "scheme = \"https\"\nbackend_tls = { server_name = \"*.internal\" }\n".to_string(),
                "backend_tls.server_name",
                "`*.internal` is not a valid server name".to_string(),
            ),
            (
                format!("scheme = \"https\"\nbackend_tls = {{ ca = \"{missing}\" }}\n"),
                "backend_tls.ca",
                format!("cannot open the CA file `{missing}`: No such file or directory"),
            ),
            (
                format!("scheme = \"https\"\nbackend_tls = {{ client_key = \"{key}\" }}\n"),
                "backend_tls.client_key",
                "a client key is presented only with its certificate".to_string(),
            ),
            (
                format!("scheme = \"https\"\nbackend_tls = {{ insecure = true, ca = \"{ca}\" }}\n"),
                "backend_tls.insecure",
                "insecure skips verification, so a ca would be ignored; remove one".to_string(),
            ),
            (
                "scheme = \"https\"\nbackend_tls = { cafile = \"x\" }\n".to_string(),
                "backend_tls.cafile",
                "unknown key".to_string(),
            ),
        ] {
            let p = route_problems(&extra);
            assert_eq!(p.len(), 1, "{extra}: {p:?}");
            assert_eq!(p[0].key, format!("routes[1].{key}"), "{extra}");
            assert!(p[0].line.is_some(), "{p:?}");
            assert!(p[0].message.contains(&needle), "{extra}: {p:?}");
        }
    }

    fn env(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn admin_defaults_no_token_loopback_no_warning() {
        let c = parse_ok("");
        assert_eq!(c.admin.token, None);
        assert!(c.admin.hosts.is_empty());
        assert_eq!(c.admin.header_read_timeout, Duration::from_secs(10));
        assert_eq!(c.admin.idle_timeout, Duration::from_secs(60));
        assert_eq!(c.admin.max_connections, 64);
        assert!(
            !c.warnings.iter().any(|w| w.contains("admin")),
            "{:?}",
            c.warnings
        );
    }

    #[test]
    fn strict_sni_is_for_tls_entrypoints() {
        let c = parse_ok(
            "[entrypoints.websecure]\naddress = \":443\"\ntls = true\nstrict_sni = true\n",
        );
        assert!(c.entrypoints[0].strict_sni);
        let p = parse_err("[entrypoints.web]\naddress = \":80\"\nstrict_sni = true\n");
        assert_eq!(p[0].key, "entrypoints.web.strict_sni");
    }

    #[test]
    fn secrets_never_reach_debug_output() {
        let c = parse_ok(
            "[sticky]\nsecret = \"sticky-secret-value\"\n\
             [acme.dns]\nserver = \"127.0.0.1:53\"\nzone = \"example.org\"\n\
             key_name = \"k\"\nkey_secret = \"dHNpZy1zZWNyZXQtdmFsdWU=\"\n\
             [admin]\ntoken = \"admin-token-value-0123456789\"\n",
        );
        let shown = format!("{c:?}");
        for secret in [
            "sticky-secret-value",
            "dHNpZy1zZWNyZXQtdmFsdWU=",
            "admin-token-value-0123456789",
        ] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(shown.contains("***"));
    }

    #[test]
    fn admin_token_inline_file_and_environment() {
        let long = "0123456789abcdef0123456789abcdef";
        let c = parse_ok(&format!(
            "[admin]\naddress = \"[::]:8082\"\ntoken = \"{long}\"\nhosts = [\"Wharf.Example.org.\", \"*.ops.example.org\"]\n\
             header_read_timeout = \"2s\"\nidle_timeout = \"5s\"\nmax_connections = 8\n"
        ));
        assert_eq!(c.admin.token.as_ref().map(AdminToken::expose), Some(long));
        assert_eq!(c.admin.hosts, ["wharf.example.org", "*.ops.example.org"]);
        assert_eq!(c.admin.header_read_timeout, Duration::from_secs(2));
        assert_eq!(c.admin.idle_timeout, Duration::from_secs(5));
        assert_eq!(c.admin.max_connections, 8);
        // A token on a public address: no warning.
        assert!(
            !c.warnings.iter().any(|w| w.contains("admin")),
            "{:?}",
            c.warnings
        );
        // Never printed.
        let dbg = format!("{:?}", c.admin);
        assert!(!dbg.contains(long) && dbg.contains("***"), "{dbg}");

        // A swarm secret: read once, trailing newline trimmed.
        let dir = crate::route::tests::Scratch::new("admin-token");
        let path = dir.0.join("token");
        std::fs::write(&path, format!("{long}\n")).unwrap();
        let c = parse_ok(&format!("[admin]\ntoken_file = \"{}\"\n", path.display()));
        assert_eq!(c.admin.token.as_ref().map(AdminToken::expose), Some(long));

        // WHARF_ADMIN_TOKEN, WHARF_ADMIN_TOKEN_FILE and WHARF_ADMIN_HOSTS.
        let c = crate::parse(
            "",
            "t",
            env(&[
                ("WHARF_ADMIN_TOKEN", long),
                ("WHARF_ADMIN_HOSTS", "a.example.org, b.example.org"),
            ]),
        )
        .unwrap();
        assert_eq!(c.admin.token.as_ref().map(AdminToken::expose), Some(long));
        assert_eq!(c.admin.hosts, ["a.example.org", "b.example.org"]);
        let c = crate::parse(
            "",
            "t",
            env(&[("WHARF_ADMIN_TOKEN_FILE", &path.display().to_string())]),
        )
        .unwrap();
        assert_eq!(c.admin.token.as_ref().map(AdminToken::expose), Some(long));

        // An empty token is none.
        assert_eq!(parse_ok("[admin]\ntoken = \"\"\n").admin.token, None);
    }

    #[test]
    fn admin_bad_input_names_the_key() {
        let dir = crate::route::tests::Scratch::new("admin-bad");
        let empty = dir.0.join("empty");
        std::fs::write(&empty, "\n").unwrap();
        let missing = dir.missing("nope");
        for (text, key, needle) in [
            (
                format!("[admin]\ntoken = \"abc\"\ntoken_file = \"{missing}\"\n"),
                "admin.token_file",
                "not both",
            ),
            (
                format!("[admin]\ntoken_file = \"{missing}\"\n"),
                "admin.token_file",
                "cannot read",
            ),
            (
                format!("[admin]\ntoken_file = \"{}\"\n", empty.display()),
                "admin.token_file",
                "is empty",
            ),
            (
                "[admin]\ntoken = \"two words\"\n".to_string(),
                "admin.token",
                "printable ASCII",
            ),
            (
                "[admin]\nhosts = [\"https://wharf.example.org:8082\"]\n".to_string(),
                "admin.hosts[0]",
                "without scheme or port",
            ),
            (
                "[admin]\nidle_timeout = \"0s\"\n".to_string(),
                "admin.idle_timeout",
                "longer than zero",
            ),
            (
                "[admin]\nmax_connections = 0\n".to_string(),
                "admin.max_connections",
                "between 1 and 4096",
            ),
        ] {
            let p = parse_err(&text);
            assert_eq!(p.len(), 1, "{text}: {p:?}");
            assert_eq!(p[0].key, key, "{text}: {p:?}");
            assert!(p[0].message.contains(needle), "{text}: {p:?}");
            assert!(p[0].line.is_some(), "{text}: {p:?}");
        }
    }

    #[test]
    fn admin_without_token_off_loopback_is_a_warning() {
        let c = parse_ok("[admin]\naddress = \"0.0.0.0:8082\"\n");
        assert!(c.admin.token.is_none());
        assert!(
            c.warnings
                .iter()
                .any(|w| w.contains("no [admin] token") && w.contains("0.0.0.0:8082")),
            "{:?}",
            c.warnings
        );
        let c = parse_ok("[admin]\naddress = \"[::1]:8082\"\n");
        assert!(!c.warnings.iter().any(|w| w.contains("admin")));
        let c = parse_ok("[admin]\ntoken = \"short\"\n");
        assert!(
            c.warnings.iter().any(|w| w.contains("shorter than 16")),
            "{:?}",
            c.warnings
        );
    }
    #[test]
    fn log_section_through_the_file_and_the_environment() {
        // Off by default, to standard output.
        let c = parse_ok("");
        assert_eq!(c.log, LogConfig::default());
        assert_eq!(c.log.access, AccessLogFormat::Off);
        let c = parse_ok("[log]\naccess = \"json\"\naccess_file = \"/var/log/wharf/access.log\"\n");
        assert_eq!(c.log.access, AccessLogFormat::Json);
        assert_eq!(
            c.log.access_file,
            Some(PathBuf::from("/var/log/wharf/access.log"))
        );
        // An empty file means standard output.
        let c = parse_ok("[log]\naccess = \"combined\"\naccess_file = \"\"\n");
        assert_eq!(c.log.access, AccessLogFormat::Combined);
        assert_eq!(c.log.access_file, None);
        // A file without a format logs nothing: said so.
        let c = parse_ok("[log]\naccess_file = \"/tmp/a.log\"\n");
        assert!(
            c.warnings.iter().any(|w| w.contains("access = \"off\"")),
            "{:?}",
            c.warnings
        );
        // Problems name the key and the line.
        let p = parse_err("[log]\naccess = \"common\"\n");
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].key, "log.access");
        assert_eq!(p[0].line, Some(2));
        assert!(p[0].message.contains("use off, combined or json"), "{p:?}");
        let p = parse_err("[log]\nformat = \"json\"\n");
        assert_eq!(p[0].line, Some(2), "{p:?}");
        // WHARF_LOG_ACCESS / WHARF_LOG_ACCESS_FILE override the file; WHARF_LOG
        // stays the binary's log filter.
        let c = crate::parse(
            "[log]\naccess = \"combined\"\n",
            "t",
            vec![
                ("WHARF_LOG_ACCESS".to_string(), "json".to_string()),
                (
                    "WHARF_LOG_ACCESS_FILE".to_string(),
                    "/tmp/x.log".to_string(),
                ),
                ("WHARF_LOG".to_string(), "debug".to_string()),
            ],
        )
        .unwrap();
        assert_eq!(c.log.access, AccessLogFormat::Json);
        assert_eq!(c.log.access_file, Some(PathBuf::from("/tmp/x.log")));
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        let e = crate::parse(
            "",
            "t",
            vec![("WHARF_LOG_ACCESS".to_string(), "yes".to_string())],
        )
        .unwrap_err();
        assert!(e.to_string().contains("log.access"), "{e}");
    }
}
