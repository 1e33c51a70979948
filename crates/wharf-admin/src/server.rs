//! Serving the admin listener: who may ask (the Host check and the bearer
//! token), how connections are bounded (a slot per connection, the header read,
//! first-request and idle timeouts), and the answer to each path.
//!
//! The admin listener runs on the proxy's runtime, so everything here is bounded
//! so that it cannot take that runtime from the entrypoints. Past
//! `max_connections`, connections wait in the kernel's backlog and the runtime
//! does no work for them. A connection that sends nothing, dribbles its head or
//! idles is closed. Responses that walk the whole table (`/metrics`, `/api/*`) are
//! rendered on blocking threads, [`RENDERS`] at a time, never on a worker.

use std::convert::Infallible;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use prometheus::{Encoder, TextEncoder};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::AdminState;

/// Who may use the admin listener, and how its connections are bounded
/// (`[admin]` in the config).
#[derive(Clone)]
pub struct AdminSettings {
    /// The bearer token every path but `/ping` needs; `None`: no authentication.
    pub token: Option<String>,
    /// Host names answered besides IP literals, `localhost`, `*.localhost` and
    /// single-label names: lower case, without port; `*.domain` (one more
    /// label) and `*` (any) allowed.
    pub hosts: Vec<String>,
    /// Time allowed to read a request head, and for a connection's first request.
    pub header_read_timeout: Duration,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout: Duration,
    /// Connections served at once; more wait in the kernel's backlog.
    pub max_connections: usize,
}

impl Default for AdminSettings {
    fn default() -> Self {
        AdminSettings {
            token: None,
            hosts: Vec::new(),
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 64,
        }
    }
}

impl std::fmt::Debug for AdminSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminSettings")
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("hosts", &self.hosts)
            .field("header_read_timeout", &self.header_read_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("max_connections", &self.max_connections)
            .finish()
    }
}

/// Responses that walk the whole table rendered at once (on blocking threads).
pub(crate) const RENDERS: usize = 2;

/// The largest request head read (a browser on `localhost` may carry many
/// cookies from other local services).
const MAX_HEAD: usize = 64 * 1024;

const TEXT: &str = "text/plain; charset=utf-8";
const JSON: &str = "application/json";
const DASHBOARD: &str = include_str!("dashboard.html");

/// The dashboard runs only its own inline script and style, talks only to this
/// listener, loads nothing else and cannot be framed.
const DASHBOARD_CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; \
    style-src 'unsafe-inline'; connect-src 'self'; img-src data:; base-uri 'none'; \
    form-action 'none'; frame-ancestors 'none'";
const DATA_CSP: &str = "default-src 'none'; frame-ancestors 'none'";

fn respond(status: StatusCode, content_type: &'static str, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(if content_type.starts_with("text/html") {
            DASHBOARD_CSP
        } else {
            DATA_CSP
        }),
    );
    r
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    respond(status, TEXT, body.as_bytes().to_vec())
}

/// Missing and wrong tokens get the same answer: no detail.
fn unauthorized() -> Response<Full<Bytes>> {
    let mut r = text(StatusCode::UNAUTHORIZED, "401 Unauthorized\n");
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    r
}

/// The pages that read the table or the registry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Page {
    Metrics,
    Routes,
    Certificates,
    Errors,
}

pub(crate) fn render(state: &AdminState, page: Page) -> Response<Full<Bytes>> {
    match page {
        Page::Metrics => {
            let mut buf = Vec::new();
            let families = crate::gather(&state.registry, &state.table);
            match TextEncoder::new().encode(&families, &mut buf) {
                Ok(()) => respond(StatusCode::OK, "text/plain; version=0.0.4", buf),
                Err(e) => respond(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    TEXT,
                    e.to_string().into_bytes(),
                ),
            }
        }
        Page::Routes => respond(
            StatusCode::OK,
            JSON,
            crate::routes_json(&state.table.load()),
        ),
        Page::Certificates => respond(
            StatusCode::OK,
            JSON,
            crate::certificates_json(&state.certificates),
        ),
        Page::Errors => respond(
            StatusCode::OK,
            JSON,
            serde_json::to_vec_pretty(&**state.problems.load()).unwrap_or_default(),
        ),
    }
}

/// The state and the render budget every connection shares.
pub(crate) struct Admin {
    pub(crate) state: AdminState,
    pub(crate) renders: Arc<Semaphore>,
}

impl Admin {
    pub(crate) fn new(state: AdminState) -> Self {
        Admin {
            state,
            renders: Arc::new(Semaphore::new(RENDERS)),
        }
    }

    /// The answer to one request. In order: `/ping` (open to anyone; 503 until
    /// the proxy is ready), the Host, the token, the method, then the path, so
    /// nothing but `/ping` tells an unauthenticated client anything.
    pub(crate) async fn answer<B>(&self, req: &Request<B>) -> Response<Full<Bytes>> {
        let settings = &self.state.settings;
        let read_only = req.method() == Method::GET || req.method() == Method::HEAD;
        let path = req.uri().path();
        if path == "/ping" {
            return if !read_only {
                text(StatusCode::METHOD_NOT_ALLOWED, "read-only\n")
            } else if self.state.ready.load(Ordering::Acquire) {
                text(StatusCode::OK, "OK")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
            };
        }
        if !host_allowed(req, &settings.hosts) {
            return text(
                StatusCode::MISDIRECTED_REQUEST,
                "421 Misdirected Request: not a host name of this admin listener\n",
            );
        }
        if let Some(token) = &settings.token {
            if !authorized(req, token, path == "/") {
                return unauthorized();
            }
        }
        if !read_only {
            return text(
                StatusCode::METHOD_NOT_ALLOWED,
                "the admin listener is read-only\n",
            );
        }
        let page = match path {
            "/" => {
                return respond(
                    StatusCode::OK,
                    "text/html; charset=utf-8",
                    DASHBOARD.as_bytes().to_vec(),
                )
            }
            "/metrics" => Page::Metrics,
            "/api/routes" => Page::Routes,
            "/api/certificates" => Page::Certificates,
            "/api/errors" => Page::Errors,
            _ => return text(StatusCode::NOT_FOUND, "404 not found\n"),
        };
        // Held until the render ends: a flood of scrapes queues here.
        let Ok(_permit) = self.renders.clone().acquire_owned().await else {
            return text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n");
        };
        let state = self.state.clone();
        match tokio::task::spawn_blocking(move || render(&state, page)).await {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, ?page, "admin page failed");
                text(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n")
            }
        }
    }
}

/// Whether every host the request names (its `Host` header and, in HTTP/2 or
/// absolute form, its URI authority) is one this listener answers. A page that
/// DNS rebinding points at a loopback admin port carries its own host name,
/// which is refused here. Two `Host` fields are refused too.
pub(crate) fn host_allowed<B>(req: &Request<B>, hosts: &[String]) -> bool {
    let mut fields = req.headers().get_all(header::HOST).iter();
    let field = fields.next();
    if fields.next().is_some() {
        return false;
    }
    let field = match field.map(|v| v.to_str()) {
        None => None,
        Some(Ok(s)) => Some(s),
        Some(Err(_)) => return false,
    };
    let authority = req.uri().authority().map(|a| a.as_str());
    [authority, field]
        .into_iter()
        .flatten()
        .all(|h| host_value_allowed(h, hosts))
}

/// One host value (`name`, `name:port`, `192.0.2.1:8082`, `[::1]:8082`): an IP
/// literal, `localhost` or a name under `.localhost` (browsers resolve those to
/// loopback themselves), a single-label name (`wharf`, a swarm service name:
/// no public DNS answers those, so a rebinding attacker cannot own one), or a
/// configured name. An empty value names no host and is allowed (no browser
/// sends one).
pub(crate) fn host_value_allowed(value: &str, hosts: &[String]) -> bool {
    let value = value.trim();
    if value.is_empty() {
        return true;
    }
    if value.contains('@') {
        return false;
    }
    let Ok(authority) = value.parse::<http::uri::Authority>() else {
        return false;
    };
    let host = authority.host();
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return v6.parse::<Ipv6Addr>().is_ok();
    }
    let name = host.trim_end_matches('.').to_ascii_lowercase();
    if name.is_empty() {
        return false;
    }
    if name.parse::<Ipv4Addr>().is_ok()
        || name == "localhost"
        || name.ends_with(".localhost")
        || !name.contains('.')
    {
        return true;
    }
    hosts.iter().any(|p| {
        p == "*"
            || *p == name
            || p.strip_prefix("*.").is_some_and(|parent| {
                name.strip_suffix(parent)
                    .and_then(|rest| rest.strip_suffix('.'))
                    .is_some_and(|label| !label.is_empty() && !label.contains('.'))
            })
    })
}

/// Whether the request carries `token`: `Authorization: Bearer <token>` (the
/// scheme in any case), or, when `query_too` (the dashboard page, which a
/// browser opens without a header), `?token=<token>`. Compared in constant time.
pub(crate) fn authorized<B>(req: &Request<B>, token: &str, query_too: bool) -> bool {
    let mut ok = false;
    for v in req.headers().get_all(header::AUTHORIZATION) {
        if let Some(given) = v.to_str().ok().and_then(bearer) {
            ok |= same(given.as_bytes(), token.as_bytes());
        }
    }
    if query_too {
        if let Some(given) = query_token(req.uri().query()) {
            ok |= same(&given, token.as_bytes());
        }
    }
    ok
}

fn bearer(v: &str) -> Option<&str> {
    let (scheme, rest) = v.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(rest.trim_start())
}

/// The `token` parameter of a query string, percent-decoded.
fn query_token(query: Option<&str>) -> Option<Vec<u8>> {
    let raw = query?.split('&').find_map(|kv| kv.strip_prefix("token="))?;
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                let v = hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0);
                out.push(u8::try_from(v).unwrap_or(0));
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    Some(out)
}

/// Constant-time equality: the time taken depends on the length of `given`
/// alone, never on where it first differs from `secret`.
pub(crate) fn same(given: &[u8], secret: &[u8]) -> bool {
    if secret.is_empty() {
        return false;
    }
    let mut diff = u8::from(given.len() != secret.len());
    for (i, g) in given.iter().enumerate() {
        diff |= g ^ secret[i % secret.len()];
    }
    std::hint::black_box(diff) == 0
}

/// Requests in flight on one connection and when the last one ended, for the
/// first-request and idle timers.
struct Activity {
    started: AtomicBool,
    inflight: AtomicUsize,
    last: Mutex<Instant>,
}

impl Activity {
    fn new() -> Self {
        Activity {
            started: AtomicBool::new(false),
            inflight: AtomicUsize::new(0),
            last: Mutex::new(Instant::now()),
        }
    }

    fn last(&self) -> Instant {
        *self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// One request in flight; its end is the connection's latest activity.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn enter(a: Arc<Activity>) -> Self {
        a.started.store(true, Ordering::Relaxed);
        a.inflight.fetch_add(1, Ordering::AcqRel);
        InFlight(a)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        *self
            .0
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Instant::now();
        self.0.inflight.fetch_sub(1, Ordering::AcqRel);
    }
}

fn builder(s: &AdminSettings) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(s.header_read_timeout)
        .max_buf_size(MAX_HEAD)
        .max_headers(100);
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(MAX_HEAD).unwrap_or(u32::MAX))
        .max_concurrent_streams(8)
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20));
    b
}

/// Serves the admin listener until `cancel`.
pub async fn serve(listener: TcpListener, state: AdminState, cancel: CancellationToken) {
    let settings = state.settings.clone();
    let builder = Arc::new(builder(&settings));
    let admin = Arc::new(Admin::new(state));
    let slots = Arc::new(Semaphore::new(settings.max_connections.max(1)));
    loop {
        // A slot first, then accept: past `max_connections`, connections wait in
        // the kernel's backlog and cost the runtime nothing.
        let slot = tokio::select! {
            _ = cancel.cancelled() => return,
            s = slots.clone().acquire_owned() => match s {
                Ok(s) => s,
                Err(_) => return,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = cancel.cancelled() => return,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection(
            builder.clone(),
            admin.clone(),
            stream,
            peer,
            cancel.clone(),
            slot,
        ));
    }
}

/// One connection, holding its slot until it ends. It is closed when no
/// request starts within `header_read_timeout` (hyper's own head timer starts
/// only once it knows the protocol), when no request has been in flight for
/// `idle_timeout` (HTTP/2 has no idle timer of its own), and at shutdown; a
/// peer that does not let it close within `header_read_timeout` after that
/// (a response it does not read) is dropped.
async fn connection(
    builder: Arc<auto::Builder<TokioExecutor>>,
    admin: Arc<Admin>,
    stream: TcpStream,
    peer: SocketAddr,
    cancel: CancellationToken,
    _slot: OwnedSemaphorePermit,
) {
    let s = admin.state.settings.clone();
    let activity = Arc::new(Activity::new());
    let svc = {
        let activity = activity.clone();
        service_fn(move |req: Request<Incoming>| {
            let admin = admin.clone();
            let inflight = InFlight::enter(activity.clone());
            async move {
                let r = admin.answer(&req).await;
                drop(inflight);
                Ok::<_, Infallible>(r)
            }
        })
    };
    let mut conn = pin!(builder.serve_connection(TokioIo::new(stream), svc));
    let mut first = pin!(tokio::time::sleep(s.header_read_timeout));
    let mut idle = pin!(tokio::time::sleep(s.idle_timeout));
    let mut grace = pin!(tokio::time::sleep(s.header_read_timeout));
    let mut waiting_first = true;
    let mut closing = false;
    let result = loop {
        tokio::select! {
            r = conn.as_mut() => break r,
            _ = &mut first, if waiting_first => {
                waiting_first = false;
                if !activity.started.load(Ordering::Relaxed) {
                    debug!(%peer, "admin: no request within header_read_timeout; closing");
                    return;
                }
            }
            _ = &mut idle, if !closing => {
                let now = Instant::now();
                let since = activity.last();
                if activity.inflight.load(Ordering::Acquire) > 0 {
                    idle.as_mut().reset(now + s.idle_timeout);
                } else if now.duration_since(since) < s.idle_timeout {
                    idle.as_mut().reset(since + s.idle_timeout);
                } else {
                    debug!(%peer, "admin: idle for idle_timeout; closing");
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                    grace.as_mut().reset(now + s.header_read_timeout);
                }
            }
            _ = cancel.cancelled(), if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
                grace.as_mut().reset(Instant::now() + s.header_read_timeout);
            }
            _ = &mut grace, if closing => {
                debug!(%peer, "admin: connection did not close in time; dropped");
                return;
            }
        }
    };
    if let Err(e) = result {
        debug!(%peer, error = %e, "admin connection error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arc_swap::ArcSwap;
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use wharf_table::Table;

    const TOKEN: &str = "s3cret-token-0123456789";

    fn state(settings: AdminSettings) -> AdminState {
        AdminState {
            table: Arc::new(ArcSwap::from_pointee(Table::default())),
            problems: Arc::new(ArcSwap::from_pointee(Vec::new())),
            registry: prometheus::Registry::new(),
            certificates: Arc::new(wharf_tls::CertStore::new().unwrap()),
            ready: Arc::new(AtomicBool::new(false)),
            settings: Arc::new(settings),
        }
    }

    fn with_token() -> AdminSettings {
        AdminSettings {
            token: Some(TOKEN.into()),
            hosts: vec!["wharf.example.org".into(), "*.ops.example.org".into()],
            ..AdminSettings::default()
        }
    }

    fn req(path: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::get(path);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    async fn body(r: Response<Full<Bytes>>) -> String {
        let b = r.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8_lossy(&b).into_owned()
    }

    #[tokio::test]
    async fn ping_is_503_until_ready_then_200_and_needs_no_token() {
        let admin = Admin::new(state(with_token()));
        // Not ready: neither token nor Host matter, and the answer says so.
        let r = admin
            .answer(&req("/ping", &[("host", "evil.example")]))
            .await;
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        admin.state.ready.store(true, Ordering::Release);
        let r = admin.answer(&req("/ping", &[])).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(body(r).await, "OK");
        let post = Request::post("/ping").body(()).unwrap();
        assert_eq!(
            admin.answer(&post).await.status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
    }

    #[tokio::test]
    async fn token_required_for_everything_else_no_detail_either_way() {
        let admin = Admin::new(state(with_token()));
        let host = ("host", "127.0.0.1:8082");
        for path in [
            "/",
            "/metrics",
            "/api/routes",
            "/api/certificates",
            "/api/errors",
            "/nope",
        ] {
            let missing = admin.answer(&req(path, &[host])).await;
            let wrong = admin
                .answer(&req(
                    path,
                    &[host, ("authorization", "Bearer s3cret-token")],
                ))
                .await;
            let longer = admin
                .answer(&req(
                    path,
                    &[host, ("authorization", "Bearer s3cret-token-0123456789x")],
                ))
                .await;
            let basic = admin
                .answer(&req(path, &[host, ("authorization", "Basic czNjcmV0")]))
                .await;
            let mut bodies = Vec::new();
            for r in [missing, wrong, longer, basic] {
                assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{path}");
                assert_eq!(r.headers()[header::WWW_AUTHENTICATE], "Bearer");
                bodies.push(body(r).await);
            }
            assert!(
                bodies.iter().all(|b| b == "401 Unauthorized\n"),
                "{bodies:?}"
            );
            let ok = admin
                .answer(&req(
                    path,
                    &[host, ("authorization", &format!("bearer {TOKEN}"))],
                ))
                .await;
            let want = if path == "/nope" {
                StatusCode::NOT_FOUND
            } else {
                StatusCode::OK
            };
            assert_eq!(ok.status(), want, "{path}");
        }
        // The page (only) takes the token from its URL, percent-encoded or not.
        let r = admin
            .answer(&req(&format!("/?x=1&token={TOKEN}"), &[host]))
            .await;
        assert_eq!(r.status(), StatusCode::OK);
        let csp = r.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap();
        assert!(csp.contains("connect-src 'self'") && csp.contains("frame-ancestors 'none'"));
        let encoded = TOKEN.replace('-', "%2D");
        let r = admin
            .answer(&req(&format!("/?token={encoded}"), &[host]))
            .await;
        assert_eq!(r.status(), StatusCode::OK);
        let r = admin
            .answer(&req(&format!("/api/routes?token={TOKEN}"), &[host]))
            .await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        // Write methods: refused, but only after the token.
        let post = |auth: bool| {
            let mut b = Request::post("/api/routes").header("host", "localhost");
            if auth {
                b = b.header("authorization", format!("Bearer {TOKEN}"));
            }
            b.body(()).unwrap()
        };
        assert_eq!(
            admin.answer(&post(false)).await.status(),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            admin.answer(&post(true)).await.status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
    }

    #[tokio::test]
    async fn without_a_token_everything_is_open() {
        let admin = Admin::new(state(AdminSettings::default()));
        let r = admin
            .answer(&req("/api/errors", &[("host", "localhost")]))
            .await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(body(r).await, "[]");
        let r = admin.answer(&req("/metrics", &[])).await;
        assert_eq!(r.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn only_own_host_names_are_answered() {
        let admin = Admin::new(state(with_token()));
        let auth = ("authorization", "Bearer s3cret-token-0123456789");
        for (host, ok) in [
            ("127.0.0.1:8082", true),
            ("127.0.0.1", true),
            ("10.0.0.7:8082", true),
            ("[::1]:8082", true),
            ("localhost:8082", true),
            ("LOCALHOST.", true),
            ("dash.localhost:8082", true),
            ("wharf:8082", true),
            ("wharf.example.org:8082", true),
            ("Wharf.Example.Org.", true),
            ("a.ops.example.org", true),
            ("rebind.attacker.example:8082", false),
            ("127.0.0.1.nip.io:8082", false),
            ("ops.example.org", false),
            ("a.b.ops.example.org", false),
            ("localhost.attacker.example", false),
            ("user@localhost", false),
            ("[::1", false),
            ("a b", false),
        ] {
            let r = admin
                .answer(&req("/api/errors", &[("host", host), auth]))
                .await;
            let want = if ok {
                StatusCode::OK
            } else {
                StatusCode::MISDIRECTED_REQUEST
            };
            assert_eq!(r.status(), want, "{host}");
        }
        // HTTP/2 (and absolute form) name the host in the URI.
        let r = admin
            .answer(&req(
                "http://rebind.attacker.example:8082/api/errors",
                &[auth],
            ))
            .await;
        assert_eq!(r.status(), StatusCode::MISDIRECTED_REQUEST);
        let r = admin
            .answer(&req("http://127.0.0.1:8082/api/errors", &[auth]))
            .await;
        assert_eq!(r.status(), StatusCode::OK);
        // Two Host fields: refused.
        let r = admin
            .answer(&req(
                "/api/errors",
                &[("host", "localhost"), ("host", "evil.example"), auth],
            ))
            .await;
        assert_eq!(r.status(), StatusCode::MISDIRECTED_REQUEST);
        // `*` answers any name.
        let any = Admin::new(state(AdminSettings {
            hosts: vec!["*".into()],
            ..AdminSettings::default()
        }));
        let r = any
            .answer(&req("/api/errors", &[("host", "anything.example")]))
            .await;
        assert_eq!(r.status(), StatusCode::OK);
    }

    #[test]
    fn constant_time_equality_is_equality() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abd", b"abc"));
        assert!(!same(b"ab", b"abc"));
        assert!(!same(b"abcabc", b"abc"));
        assert!(!same(b"", b"abc"));
        assert!(!same(b"", b""));
        assert_eq!(query_token(Some("a=1&token=x%41y")), Some(b"xAy".to_vec()));
        assert_eq!(query_token(Some("token=%4")), Some(b"%4".to_vec()));
        assert_eq!(query_token(Some("tokens=1")), None);
        assert_eq!(bearer("Bearer  abc"), Some("abc"));
        assert_eq!(bearer("Bearerabc"), None);
    }

    fn quick() -> AdminSettings {
        AdminSettings {
            header_read_timeout: Duration::from_millis(300),
            idle_timeout: Duration::from_millis(500),
            max_connections: 1,
            ..AdminSettings::default()
        }
    }

    async fn start(settings: AdminSettings) -> (SocketAddr, CancellationToken) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let st = state(settings);
        st.ready.store(true, Ordering::Release);
        let cancel = CancellationToken::new();
        tokio::spawn(serve(l, st, cancel.clone()));
        (addr, cancel)
    }

    /// Reads until the peer closes; returns what it sent and how long it took.
    async fn until_closed(s: &mut TcpStream) -> (Vec<u8>, Duration) {
        let t0 = Instant::now();
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return (all, t0.elapsed()),
                Ok(Ok(n)) => all.extend_from_slice(&buf[..n]),
                Err(_) => panic!("the admin listener kept the connection open"),
            }
        }
    }

    #[tokio::test]
    async fn silent_and_slow_peers_are_closed_and_free_their_slot() {
        let (addr, cancel) = start(quick()).await;
        // The only slot: a peer that says nothing.
        let mut silent = TcpStream::connect(addr).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        // Waits in the backlog until the silent one is closed.
        let t0 = Instant::now();
        let mut next = TcpStream::connect(addr).await.unwrap();
        next.write_all(b"GET /ping HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let (_, took) = until_closed(&mut silent).await;
        assert!(took < Duration::from_secs(2), "{took:?}");
        let (resp, _) = until_closed(&mut next).await;
        let resp = String::from_utf8_lossy(&resp);
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
        assert!(
            t0.elapsed() >= Duration::from_millis(200),
            "{:?}",
            t0.elapsed()
        );

        // A head dribbled byte by byte is cut at header_read_timeout.
        let mut slow = TcpStream::connect(addr).await.unwrap();
        let t0 = Instant::now();
        let dribble = async {
            for b in b"GET /ping HTTP/1.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaa" {
                if slow.write_all(&[*b]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), dribble)
            .await
            .unwrap();
        let _ = until_closed(&mut slow).await;
        assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
        cancel.cancel();
    }

    #[tokio::test]
    async fn idle_http2_connections_are_closed() {
        let (addr, cancel) = start(quick()).await;
        let stream = TcpStream::connect(addr).await.unwrap();
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .unwrap();
        let t0 = Instant::now();
        let driver = tokio::spawn(conn);
        let r = send
            .send_request(
                Request::get("http://127.0.0.1/ping")
                    .body(http_body_util::Empty::<Bytes>::new())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        // Past the first request, only the idle timer can end it.
        let ended = tokio::time::timeout(Duration::from_secs(5), driver).await;
        assert!(ended.is_ok(), "an idle HTTP/2 connection stayed open");
        assert!(
            t0.elapsed() >= Duration::from_millis(450),
            "{:?}",
            t0.elapsed()
        );
        cancel.cancel();
    }
}
