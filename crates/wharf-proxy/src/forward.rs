//! One request: route it, pick a backend, rewrite headers, forward, stream back.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::uri::{PathAndQuery, Uri};
use http::{Request, Response, StatusCode, Version};
use http_body::Body as _;
use http_body_util::{Either, Empty};
use hyper::body::Incoming;

use crate::body::InBody;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio_util::task::TaskTracker;
use tracing::debug;
use wharf_table::metrics::{method_index, RouteMetrics};
use wharf_table::{normalize_host, path_is_clean, Backend, Route, Scheme};

use crate::access::{AccessSender, Pending};
use crate::affinity;
use crate::body::{full, ProxyBody, UpstreamBody};
use crate::error::ProxyError;
use crate::headers::{self, ClientInfo};
use crate::idle::{Inactivity, TimedBody};
use crate::pipeline::{self, Ctx, Failure, Head, Routed, ACME_CHALLENGE, CHUNKED};
use crate::pool::{H1Pool, Pooled, ReqBody};
use crate::{Http01Responder, SharedTable, UpstreamSettings};

type HttpClient = Client<HttpConnector, InBody>;

/// How long a backend gone from the table stays retired (its connections not
/// pooled); after that its address may be anyone's.
pub const RETIRED_FOR: Duration = Duration::from_secs(300);

/// What [`Forwarder::retire_backends`] remembers between swaps.
#[derive(Debug, Default)]
pub struct Retirement {
    /// Every backend address of the last table, draining or not.
    present: HashSet<SocketAddr, ahash::RandomState>,
    gone: std::collections::HashMap<SocketAddr, std::time::Instant, ahash::RandomState>,
}

impl Retirement {
    /// The backends of `table` that take no new request (draining) and those
    /// that left the table within [`RETIRED_FOR`] and do not serve again.
    fn update(
        &mut self,
        table: &wharf_table::Table,
        now: std::time::Instant,
    ) -> HashSet<SocketAddr, ahash::RandomState> {
        let mut serving: HashSet<SocketAddr, ahash::RandomState> = HashSet::default();
        let mut leaving: HashSet<SocketAddr, ahash::RandomState> = HashSet::default();
        for route in table.routes() {
            for b in route.backends.all() {
                if b.draining {
                    leaving.insert(b.addr);
                } else {
                    serving.insert(b.addr);
                }
            }
        }
        // An address that drains in one route and serves in another is kept.
        leaving.retain(|a| !serving.contains(a));
        for a in &self.present {
            if !serving.contains(a) && !leaving.contains(a) {
                self.gone.entry(*a).or_insert(now);
            }
        }
        self.gone
            .retain(|a, since| !serving.contains(a) && now.duration_since(*since) < RETIRED_FOR);
        self.present = serving.union(&leaving).copied().collect();
        leaving.extend(self.gone.keys().copied());
        leaving
    }
}

/// Everything a request needs that does not change per request.
pub struct Forwarder {
    pub(crate) table: SharedTable,
    tunnels: TaskTracker,
    pub(crate) pool: Arc<H1Pool>,
    /// hyper-util's client, for upgrades (the tunnel takes the connection over).
    http1: HttpClient,
    h2c: HttpClient,
    pub(crate) response_timeout: Duration,
    /// Port of the first TLS entrypoint, for redirects; `None` means no TLS is
    /// served, so nothing is redirected.
    pub(crate) https_port: Option<u16>,
    /// ACME HTTP-01 answers, asked before routing on plain entrypoints.
    http01: Arc<dyn Http01Responder>,
    handshake_failures: AtomicU64,
    /// Requests that matched no route.
    pub(crate) unrouted: Arc<RouteMetrics>,
    /// The access log, when `[log] access` is not `off`.
    pub(crate) access: Option<AccessSender>,
    /// Body-less GET and HEAD requests of the hyper path to plain backends go
    /// on raw pooled sockets (`raw.rs`), not through hyper's client.
    raw_backends: bool,
}

/// What forwarding found out about a request, for the observe phase (metrics and
/// the access log): the route it matched and the backend of its last attempt.
#[derive(Default)]
pub(crate) struct Seen {
    pub route: Option<Arc<Route>>,
    pub backend: Option<SocketAddr>,
}

/// A TLS version, in one byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsVersion {
    V1_2,
    V1_3,
    Other,
}

impl TlsVersion {
    /// As the access log writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsVersion::V1_2 => "TLSv1.2",
            TlsVersion::V1_3 => "TLSv1.3",
            TlsVersion::Other => "TLS",
        }
    }
}

/// A timeout in four bytes: milliseconds, rounded up (so a positive timeout
/// stays positive) and saturating at about 49 days. `ConnInfo` is held by every
/// connection, idle ones included (docs/benchmarks.md, memory per idle
/// connection).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Millis(u32);

impl From<Duration> for Millis {
    fn from(d: Duration) -> Self {
        Millis(u32::try_from(d.as_nanos().div_ceil(1_000_000)).unwrap_or(u32::MAX))
    }
}

impl Millis {
    pub fn get(self) -> Duration {
        Duration::from_millis(u64::from(self.0))
    }
}

/// Per-connection facts.
pub struct ConnInfo {
    pub entrypoint: usize,
    pub tls: bool,
    /// The TLS server name the client sent (lower-case), if any.
    pub sni: Option<Box<str>>,
    /// The TLS version the connection negotiated, for the access log.
    pub tls_version: Option<TlsVersion>,
    pub redirect_https: bool,
    /// The entrypoint's inactivity timeouts (request bodies, tunnels).
    pub client_timeout: Millis,
    pub tunnel_timeout: Millis,
    pub client: SocketAddr,
    pub info: ClientInfo,
    /// When the connection reaches the entrypoint's `max_connection_age`
    /// ([`ConnInfo::aged_at`]); `None` for never.
    pub retire_at: Option<std::time::Instant>,
}

impl ConnInfo {
    /// When a connection accepted `born` reaches `max_age`: `None` for never
    /// (zero, or too far off to represent).
    pub(crate) fn aged_at(
        born: std::time::Instant,
        max_age: Duration,
    ) -> Option<std::time::Instant> {
        if max_age.is_zero() {
            return None;
        }
        born.checked_add(max_age)
    }

    /// Has the connection reached its `max_connection_age`?
    pub(crate) fn aged(&self) -> bool {
        self.retire_at
            .is_some_and(|at| std::time::Instant::now() >= at)
    }
}

impl Forwarder {
    /// `tunnels` tracks upgraded connections (WebSocket and others) so a drain
    /// waits for them too, up to the shutdown timeout.
    pub fn new(
        table: SharedTable,
        up: &UpstreamSettings,
        https_port: Option<u16>,
        tunnels: TaskTracker,
        http01: Arc<dyn Http01Responder>,
    ) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(up.connect_timeout));
        connector.set_keepalive(Some(Duration::from_secs(60)));
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(up.idle_timeout)
            .pool_max_idle_per_host(up.max_idle_per_backend)
            // We set Host ourselves: the client's Host, not the backend address.
            .set_host(false)
            .http1_writev(false)
            .retry_canceled_requests(true);
        let http1 = builder.build(connector.clone());
        builder.http2_only(true);
        let h2c = builder.build(connector);
        Forwarder {
            table,
            tunnels,
            pool: H1Pool::new(up.connect_timeout, up.idle_timeout, up.max_idle_per_backend),
            http1,
            h2c,
            response_timeout: up.response_timeout,
            https_port,
            http01,
            handshake_failures: AtomicU64::new(0),
            unrouted: Arc::default(),
            access: None,
            raw_backends: true,
        }
    }

    /// `false`: every request of the hyper path goes through hyper's client
    /// (`WHARF_HTTP1_ENGINE=hyper`, to compare the two).
    pub fn with_raw_backends(mut self, on: bool) -> Self {
        self.raw_backends = on;
        self
    }

    /// Writes a line per request to `log` (see `access.rs`).
    pub fn with_access_log(mut self, log: Option<AccessSender>) -> Self {
        self.access = log;
        self
    }

    /// Closes pooled connections to backends that take no new request any more
    /// (draining, or gone from the published table); call it after each swap
    /// with the same `Retirement`. A backend that left the table stays retired
    /// for [`RETIRED_FOR`] (a long request to it may end well after), unless it
    /// serves again.
    pub fn retire_backends(&self, r: &mut Retirement) {
        let leaving = r.update(&self.table.load(), std::time::Instant::now());
        self.pool.retire(leaving);
    }

    /// TLS handshakes that failed or timed out, since start.
    pub fn handshake_failures(&self) -> u64 {
        self.handshake_failures.load(Ordering::Relaxed)
    }

    pub(crate) fn count_handshake_failure(&self) {
        self.handshake_failures.fetch_add(1, Ordering::Relaxed);
    }

    pub async fn handle(&self, conn: &ConnInfo, req: Request<InBody>) -> Response<ProxyBody> {
        let start = std::time::Instant::now();
        let method = method_index(req.method());
        // The access log's record, when it is on (one branch when it is off); what
        // forwarding finds out goes straight into it. Dropped unanswered (the
        // request was cancelled), it is logged as 499.
        let mut pending = self.access.map(|log| log.begin(conn, &req, start));
        let mut own = Seen::default();
        let seen = match pending.as_mut().and_then(Pending::record) {
            Some(rec) => &mut rec.seen,
            None => &mut own,
        };
        let mut resp = match self.forward(conn, req, seen).await {
            Ok(r) => r,
            Err(e) => {
                debug!(error = %e, client = %conn.client, "request failed");
                e.into_response()
            }
        };
        // observe: the route's own counters (atomics it already holds), or the
        // unrouted ones; never a label lookup.
        self.observe(seen.route.as_ref(), resp.status().as_u16(), method, start);
        if let Some(p) = pending {
            p.respond(&mut resp);
        }
        resp
    }

    /// observe: the route's own counters (atomics it already holds), or the
    /// unrouted ones; never a label lookup. Both HTTP/1.1 paths and HTTP/2.
    #[inline]
    pub(crate) fn observe(
        &self,
        route: Option<&Arc<Route>>,
        status: u16,
        method: u8,
        start: std::time::Instant,
    ) {
        if cfg!(not(feature = "no-request-metrics")) {
            let m = route.map_or(&*self.unrouted, |r| &r.state.metrics);
            m.requests.count(status, method);
            m.duration.observe(start.elapsed());
        }
    }

    /// What requests that matched no route recorded (`route=""`).
    pub fn unrouted(&self) -> Arc<RouteMetrics> {
        self.unrouted.clone()
    }

    async fn forward(
        &self,
        conn: &ConnInfo,
        mut req: Request<InBody>,
        seen: &mut Seen,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        // RFC 9112 §3.2: the Host field; an HTTP/2 request carries :authority.
        // Two Host fields are a 400 (§3.2): a backend might read the other one.
        let mut hosts = req.headers().get_all(header::HOST).iter();
        let host_field = hosts.next();
        if host_field.is_some() && hosts.next().is_some() {
            return Err(ProxyError::BadHost);
        }
        let host_value = match req.uri().authority() {
            Some(a) => HeaderValue::from_str(a.as_str()).map_err(|_| ProxyError::BadHost)?,
            None => host_field.cloned().ok_or(ProxyError::BadHost)?,
        };
        let raw = host_value.to_str().map_err(|_| ProxyError::BadHost)?;
        let host = normalize_host(raw).ok_or(ProxyError::BadHost)?;
        // Routed and forwarded byte for byte, so only a path every backend
        // reads as Wharf does (`wharf_table::path_is_clean`).
        if !path_is_clean(req.uri().path(), req.method() == http::Method::OPTIONS) {
            return Err(ProxyError::BadPath);
        }
        let has_body = !req.body().is_end_stream();
        let head = Head {
            method: req.method(),
            host: &host,
            path: req.uri().path(),
            has_body,
            headers: req.headers(),
        };

        // admit
        pipeline::admit(conn, &head)?;
        if !conn.tls && req.method() == http::Method::GET {
            if let Some(token) = head.path.strip_prefix(ACME_CHALLENGE) {
                if let Some(answer) = self.http01.respond(token).await {
                    return Ok(key_authorization(answer));
                }
            }
        }
        // route
        let routed = pipeline::route(&self.table.load(), conn, &head, self.https_port)?;
        let route = match routed {
            Routed::Forward(route) => route,
            Routed::Redirect(port) => return Ok(redirect(&req, &host, port)),
        };
        seen.route = Some(route.clone());
        let safe = pipeline::safe_to_repeat(&head);
        // limit
        pipeline::limit(conn, &head, &route)?;
        // gate: allow-list and basic auth (h1, h2 and upgrades alike)
        match crate::middleware::gate(conn, &head, &route) {
            crate::middleware::Gate::Pass => {}
            crate::middleware::Gate::Refuse(e) => return Err(e),
            // Boxed: only a pointer in this future on routes that never wait.
            pending => Box::pin(pending.finish(&route)).await?,
        }
        // pick, with affinity
        let mut affinity = pipeline::affinity(conn, &head, &route, || {
            crate::affinity::cookies(head.headers)
        });
        let (backend, guard) =
            pipeline::pick(&route, conn.client, None, affinity.as_deref()).await?;
        seen.backend = Some(backend.addr);
        let cookie = affinity.as_mut().and_then(|a| a.cookie.take());
        let mut ctx = Ctx::first(route, (backend, guard), affinity);

        // `Upgrade: h2c` is not tunnelled (an h2c tunnel would carry requests
        // past routing, "h2c smuggling"): the request goes on as a plain one,
        // its upgrade fields dropped with the other hop-by-hop ones.
        let upgrade = req.version() == Version::HTTP_11
            && headers::is_upgrade(req.headers())
            && !headers::is_h2c_upgrade(req.headers_mut());
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));

        let (mut parts, body) = req.into_parts();
        let from_h2 = parts.version == Version::HTTP_2;
        headers::strip_hop_by_hop(&mut parts.headers, upgrade);
        headers::set_forwarded(&mut parts.headers, &conn.info, &host_value);
        affinity::apply_request(&mut parts.headers, cookie);
        crate::middleware::rewrite_request(&ctx.route, &mut parts.headers);
        let path = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));

        if ctx.backend.scheme == Scheme::H2c {
            // The backend address is the :authority here; a Host field that differs
            // from it is forbidden (RFC 9113 §8.3.1), so the client's host travels
            // in X-Forwarded-Host only.
            parts.headers.remove(header::HOST);
            parts.version = Version::HTTP_2;
            parts.uri = absolute_uri(&ctx.backend, path)?;
            let sent = self.h2c.request(Request::from_parts(parts, body));
            let resp = self.observed(
                &ctx,
                has_body,
                std::time::Instant::now(),
                self.with_timeout(sent).await,
            )?;
            return Ok(self.finish(resp, ctx, None, conn));
        }
        // TLS to the backend: the route's policy (the control plane sets one on
        // every `https` route; without it nothing is sent in clear instead).
        let https = ctx.backend.scheme == Scheme::Https;
        if https && ctx.route.policy.backend_tls.is_none() {
            return Err(ProxyError::UnsupportedScheme("https"));
        }

        parts.version = Version::HTTP_11;
        parts.headers.insert(header::HOST, host_value);
        if from_h2 {
            headers::join_cookies(&mut parts.headers);
        }
        // A body of unknown length (h2 without content-length, a chunked GET) must
        // stay chunked: hyper would otherwise send a GET's body as empty.
        if has_body && !parts.headers.contains_key(header::CONTENT_LENGTH) {
            parts.headers.insert(header::TRANSFER_ENCODING, CHUNKED);
        }

        if let Some(client_upgrade) = client_upgrade {
            // The tunnel takes the connection over, so it never comes from or goes
            // back to the pool; it is not retried.
            // The policy is cloned on this rare path only.
            let tls = ctx.route.policy.backend_tls.clone().filter(|_| https);
            let mut resp = match &tls {
                None => {
                    parts.uri = absolute_uri(&ctx.backend, path)?;
                    let sent = self.http1.request(Request::from_parts(parts, body));
                    self.observed(
                        &ctx,
                        has_body,
                        std::time::Instant::now(),
                        self.with_timeout(sent).await,
                    )?
                }
                Some(tls) => {
                    parts.uri = origin_uri(path)?;
                    // Boxed: a TLS connect future is large, and this path is rare; inline it
                    // would grow (and memcpy) every request's future.
                    let body = TimedBody::new(body, conn.client_timeout.get());
                    let sent = Box::pin(self.upgrade_tls(ctx.backend.addr, tls, parts, body));
                    let at = std::time::Instant::now();
                    let r = match tokio::time::timeout(self.response_timeout, sent).await {
                        Ok(r) => r,
                        Err(_) => Err(ProxyError::Timeout),
                    };
                    self.observed(&ctx, has_body, at, r)?
                }
            };
            if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                let backend_upgrade = hyper::upgrade::on(&mut resp);
                let (mut parts, _) = resp.into_parts();
                headers::strip_hop_by_hop(&mut parts.headers, true);
                // Affinity applies to the upgrade request too (WebSocket).
                pipeline::respond(conn, &ctx, &mut parts.headers);
                let guard = ctx.guard;
                let tunnel_timeout = conn.tunnel_timeout.get();
                self.tunnels.spawn(async move {
                    let (Ok(c), Ok(b)) = tokio::join!(client_upgrade, backend_upgrade) else {
                        return;
                    };
                    // Every byte of the tunnel passes the client side, so its
                    // inactivity timer sees both directions.
                    let mut c = Inactivity::both(TokioIo::new(c), tunnel_timeout);
                    let mut b = TokioIo::new(b);
                    // No buffer of its own while the tunnel is idle.
                    let _ = crate::tunnel::relay(&mut c, &mut b).await;
                    drop(guard);
                });
                return Ok(Response::from_parts(parts, full("")));
            }
            return Ok(self.finish(resp, ctx, None, conn));
        }

        // A body-less GET or HEAD to a route whose backends are all plain
        // HTTP/1.1 (an HTTP/2 client's, or a head the engine declined): sent on
        // the engine's raw pooled sockets, not through hyper's client (`raw.rs`).
        if self.raw_backends
            && !has_body
            && ctx.route.backends.all_plain_http()
            && (parts.method == http::Method::GET || parts.method == http::Method::HEAD)
        {
            return Box::pin(self.forward_raw(conn, ctx, parts, path, safe, seen)).await;
        }

        // The common case: pooled HTTP/1.1 in origin form (over TLS, HTTP/2 when
        // the backend chose it: `send_pooled` reshapes the request then).
        parts.uri = origin_uri(path)?;
        // A request without a body goes out with an empty body of our own, and a
        // safe one keeps a copy of its head: it can be sent again if the backend
        // fails after it was written. One with a body goes out once, unless it
        // never left Wharf.
        let body = if has_body {
            Either::Left(TimedBody::new(body, conn.client_timeout.get()))
        } else {
            Either::Right(Empty::new())
        };
        // Only a route with another backend to go to can retry at all; a TLS
        // backend not known to speak HTTP/1.1 may also send GOAWAY, after which a
        // refused request goes once more (`send_pooled`).
        let h2_possible = https
            && !self
                .pool
                .speaks_h1(ctx.backend.addr, ctx.route.policy.backend_tls.as_deref());
        let mut copy = (safe && (ctx.route.backends.all().len() > 1 || h2_possible))
            .then(|| copy_head(&parts));
        let mut req = Request::from_parts(parts, body);
        loop {
            let tls = match ctx.backend.scheme {
                Scheme::Https => ctx.route.policy.backend_tls.as_deref(),
                _ => None,
            };
            let sent = self.send_pooled(ctx.backend.addr, tls, req, copy.as_ref(), safe);
            let sent_at = std::time::Instant::now();
            let failed = match tokio::time::timeout(self.response_timeout, sent).await {
                Ok(Ok((resp, pooled))) => {
                    ctx.succeeded(sent_at);
                    return Ok(self.finish(resp, ctx, Some(pooled), conn));
                }
                Ok(Err(f)) => f,
                Err(_) => SendFailure {
                    failure: Failure::Timeout { counts: !has_body },
                    error: ProxyError::Timeout,
                    unsent: None,
                },
            };
            ctx.failed(failed.failure, &failed.error);
            // The request itself when it never left, else the copy of a safe one.
            let again = failed.unsent.or_else(|| {
                copy.take()
                    .map(|parts| Request::from_parts(parts, Either::Right(Empty::new())))
            });
            let Some(next) = again.filter(|_| ctx.may_retry(failed.failure, safe)) else {
                return Err(failed.error);
            };
            if ctx.redispatch(conn.client).await.is_err() {
                // No other backend can take it: the first failure is the answer.
                return Err(failed.error);
            }
            debug!(route = %ctx.route.name, backend = %ctx.backend.addr, "retrying on another backend");
            seen.backend = Some(ctx.backend.addr);
            req = next;
        }
    }

    /// Passive health for the hyper-util clients (h2c, upgrades), which are not
    /// retried.
    fn observed(
        &self,
        ctx: &Ctx,
        has_body: bool,
        sent_at: std::time::Instant,
        r: Result<Response<Incoming>, ProxyError>,
    ) -> Result<Response<Incoming>, ProxyError> {
        match &r {
            Ok(_) => ctx.succeeded(sent_at),
            Err(e) => {
                // hyper-util's client does not tell a client-body error from a
                // backend failure: only a connect failure, or a body-less
                // request's failure, is the backend's.
                let failure = match e {
                    ProxyError::Connect(_) => Failure::Connect,
                    ProxyError::Timeout => Failure::Timeout { counts: !has_body },
                    _ if has_body => Failure::Protocol,
                    _ => Failure::Reset {
                        written: true,
                        stale: false,
                    },
                };
                ctx.failed(failure, e);
            }
        }
        r
    }

    /// An upgrade request (WebSocket) to a TLS backend, on a connection of its
    /// own.
    async fn upgrade_tls(
        &self,
        addr: SocketAddr,
        tls: &wharf_table::BackendTls,
        parts: http::request::Parts,
        body: TimedBody<InBody>,
    ) -> Result<Response<Incoming>, ProxyError> {
        let mut tx = self.pool.connect_upgrade(addr, tls).await?;
        tx.send_request(Request::from_parts(parts, Either::Left(body)))
            .await
            .map_err(|e| ProxyError::Upstream(error_chain(&e)))
    }

    async fn with_timeout(
        &self,
        sent: hyper_util::client::legacy::ResponseFuture,
    ) -> Result<Response<Incoming>, ProxyError> {
        match tokio::time::timeout(self.response_timeout, sent).await {
            Err(_) => Err(ProxyError::Timeout),
            Ok(Err(e)) if e.is_connect() => Err(ProxyError::Connect(error_chain(&e))),
            Ok(Err(e)) => Err(ProxyError::Upstream(error_chain(&e))),
            Ok(Ok(r)) => Ok(r),
        }
    }

    /// Sends on a pooled connection. A request that a reused connection refused
    /// before anything was written (it closed meanwhile: not the backend's
    /// fault) is sent again on a fresh connection to the same backend. Any other
    /// failure is classified for the retry and passive-health rules, with the
    /// request handed back when none of it was written.
    async fn send_pooled(
        &self,
        addr: std::net::SocketAddr,
        tls: Option<&wharf_table::BackendTls>,
        mut req: Request<ReqBody>,
        copy: Option<&http::request::Parts>,
        safe: bool,
    ) -> Result<(Response<Incoming>, Pooled), SendFailure> {
        let mut pooled = match self.pool.checkout(addr, tls).await {
            Ok(p) => p,
            Err(e) => return Err(SendFailure::connect(e, req)),
        };
        shape_for(&mut req, pooled.is_h2());
        // A connection idle for a while may have been closed by the backend
        // just as this request goes out (RFC 9112 §9.3.1): a safe request keeps
        // a copy of its head then, to go once more on a fresh connection.
        let stale_copy = (safe && copy.is_none() && pooled.stale_risk)
            .then(|| head(req.method(), req.uri(), req.version(), req.headers()));
        let e = match pooled.try_send_request(req).await {
            Ok(resp) => return Ok((resp, pooled)),
            Err(e) => e,
        };
        // Boxed: what a failure needs (a fresh connection, the request again)
        // would otherwise double this future's size, which every request moves
        // and every connection holds (docs/benchmarks.md, memory per idle
        // connection).
        Box::pin(self.send_failed(addr, tls, pooled, e, stale_copy, copy)).await
    }

    /// `send_pooled` after the first attempt failed: the resend on a fresh
    /// connection when the reused one was stale or went away (GOAWAY), and
    /// the failure classified.
    async fn send_failed(
        &self,
        addr: std::net::SocketAddr,
        tls: Option<&wharf_table::BackendTls>,
        mut pooled: Pooled,
        mut e: hyper::client::conn::TrySendError<Request<ReqBody>>,
        mut stale_copy: Option<http::request::Parts>,
        copy: Option<&http::request::Parts>,
    ) -> Result<(Response<Incoming>, Pooled), SendFailure> {
        if pooled.reused {
            let unsent = e.take_message();
            let err = e.error();
            let closed = !(pooled.is_h2() || err.is_parse() || err.is_user() || err.is_timeout());
            let again = unsent.or_else(|| {
                closed
                    .then(|| copy.map(copy_head).or_else(|| stale_copy.take()))
                    .flatten()
                    .map(|p| Request::from_parts(p, Either::Right(Empty::new())))
            });
            if let Some(mut req) = again {
                pooled = match Box::pin(self.pool.connect(addr, tls)).await {
                    Ok(p) => p,
                    Err(err) => return Err(SendFailure::connect(err, req)),
                };
                shape_for(&mut req, pooled.is_h2());
                e = match pooled.try_send_request(req).await {
                    Ok(resp) => return Ok((resp, pooled)),
                    Err(e) => e,
                };
            }
        }
        let mut unsent = e.take_message();
        let error = e.into_error();
        // An HTTP/2 backend that sent GOAWAY (nginx does after
        // `keepalive_requests`) did not process the streams it refused (RFC 9113
        // §8.1.4): the request goes once more on a fresh connection, when it is
        // still at hand or a copy of a body-less one is.
        if pooled.is_h2() && remote_goaway(&error) {
            self.pool.forget_h2(addr, tls);
            let again = unsent.take().or_else(|| {
                copy.map(|p| Request::from_parts(copy_head(p), Either::Right(Empty::new())))
            });
            if let Some(mut req) = again {
                match Box::pin(self.pool.connect(addr, tls)).await {
                    Ok(mut fresh) => {
                        shape_for(&mut req, fresh.is_h2());
                        match fresh.try_send_request(req).await {
                            Ok(resp) => return Ok((resp, fresh)),
                            Err(mut e2) => {
                                let unsent = e2.take_message();
                                return Err(SendFailure {
                                    failure: Failure::Reset {
                                        written: unsent.is_none(),
                                        stale: false,
                                    },
                                    error: ProxyError::Upstream(error_chain(&e2.into_error())),
                                    unsent,
                                });
                            }
                        }
                    }
                    Err(err) => return Err(SendFailure::connect(err, req)),
                }
            }
        }
        let failure = if error.is_parse() {
            Failure::Malformed
        } else if error.is_user() {
            Failure::Protocol
        } else {
            Failure::Reset {
                written: unsent.is_none(),
                stale: pooled.reused,
            }
        };
        Err(SendFailure {
            failure,
            error: ProxyError::Upstream(error_chain(&error)),
            unsent,
        })
    }

    /// [`crate::raw`]'s attempts, retried by the pipeline's rules as the
    /// pooled path's are.
    async fn forward_raw(
        &self,
        conn: &ConnInfo,
        mut ctx: Ctx,
        parts: http::request::Parts,
        path: PathAndQuery,
        safe: bool,
        seen: &mut Seen,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let mut head = Vec::with_capacity(256 + 40 * parts.headers.len());
        crate::h1::wire::write_request_map(
            &mut head,
            parts.method.as_str().as_bytes(),
            path.as_str().as_bytes(),
            &parts.headers,
        );
        let is_head = parts.method == http::Method::HEAD;
        loop {
            let resend = crate::h1::Resend {
                safe,
                elsewhere: ctx.route.backends.all().len() > 1,
            };
            let sent = crate::raw::send(&self.pool, ctx.backend.addr, &head, is_head, resend);
            let sent_at = std::time::Instant::now();
            let failed = match tokio::time::timeout(self.response_timeout, sent).await {
                Ok(Ok((mut parts, body))) => {
                    ctx.succeeded(sent_at);
                    respond_head(conn, &ctx, &mut parts.headers);
                    let body = UpstreamBody::raw(body, ctx.guard);
                    return Ok(Response::from_parts(parts, Either::Left(body)));
                }
                Ok(Err(f)) => f,
                Err(_) => crate::raw::RawFailure {
                    failure: Failure::Timeout { counts: true },
                    error: ProxyError::Timeout,
                },
            };
            ctx.failed(failed.failure, &failed.error);
            if !ctx.may_retry(failed.failure, safe) || ctx.redispatch(conn.client).await.is_err() {
                return Err(failed.error);
            }
            debug!(route = %ctx.route.name, backend = %ctx.backend.addr, "retrying on another backend");
            seen.backend = Some(ctx.backend.addr);
        }
    }

    /// The response on its way back: hop-by-hop fields dropped, the respond
    /// phase, and the body streamed with the in-flight guard (and the pooled
    /// connection) attached.
    fn finish(
        &self,
        resp: Response<Incoming>,
        ctx: Ctx,
        pooled: Option<Pooled>,
        conn: &ConnInfo,
    ) -> Response<ProxyBody> {
        let (mut parts, body) = resp.into_parts();
        respond_head(conn, &ctx, &mut parts.headers);
        Response::from_parts(
            parts,
            http_body_util::Either::Left(UpstreamBody::new(body, ctx.guard, pooled)),
        )
    }
}

/// A backend's response head on its way back, from either backend client:
/// hop-by-hop fields dropped, then the respond phase. RFC 9112 §6.3: with
/// Transfer-Encoding, Content-Length is ignored, and must not travel on next
/// to a re-framed body.
fn respond_head(conn: &ConnInfo, ctx: &Ctx, headers: &mut http::HeaderMap) {
    if headers::strip_hop_by_hop(headers, false) {
        headers.remove(header::CONTENT_LENGTH);
    }
    pipeline::respond(conn, ctx, headers);
}

/// The backend closed its HTTP/2 connection with GOAWAY.
fn remote_goaway(e: &hyper::Error) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(c) = cur {
        if let Some(h) = c.downcast_ref::<h2::Error>() {
            return h.is_go_away() && h.is_remote();
        }
        cur = c.source();
    }
    false
}

/// A request in origin form (`/path?query`).
fn origin_uri(path: PathAndQuery) -> Result<Uri, ProxyError> {
    let mut uri = http::uri::Parts::default();
    uri.path_and_query = Some(path);
    Uri::from_parts(uri).map_err(|e| ProxyError::Upstream(e.to_string()))
}

/// Shapes a request for the connection it goes out on. HTTP/1.1: origin form and
/// a `Host` field. HTTP/2 (a TLS backend that chose it by ALPN): the client's host
/// as `:authority` of an absolute `https` URI, no `Host` field (RFC 9113 §8.3.1)
/// and no `Transfer-Encoding` (§8.2.2). Either way round, so a retry that lands on
/// a connection of the other kind is reshaped again.
fn shape_for(req: &mut Request<ReqBody>, h2: bool) {
    let is_h2 = req.version() == Version::HTTP_2;
    if h2 == is_h2 {
        return;
    }
    let path = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    if h2 {
        let host = req.headers_mut().remove(header::HOST);
        req.headers_mut().remove(header::TRANSFER_ENCODING);
        let authority = host
            .as_ref()
            .and_then(|h| h.to_str().ok())
            .and_then(|h| http::uri::Authority::try_from(h).ok());
        let mut uri = http::uri::Parts::default();
        uri.scheme = Some(http::uri::Scheme::HTTPS);
        uri.authority = authority;
        uri.path_and_query = Some(path);
        if let Ok(u) = Uri::from_parts(uri) {
            *req.uri_mut() = u;
        }
        *req.version_mut() = Version::HTTP_2;
    } else {
        if let Some(a) = req.uri().authority() {
            if let Ok(v) = HeaderValue::from_str(a.as_str()) {
                req.headers_mut().insert(header::HOST, v);
            }
        }
        if let Ok(u) = origin_uri(path) {
            *req.uri_mut() = u;
        }
        *req.version_mut() = Version::HTTP_11;
    }
}

/// A failed attempt on the pooled path.
struct SendFailure {
    failure: Failure,
    error: ProxyError,
    /// The request, when none of it was written.
    unsent: Option<Request<ReqBody>>,
}

impl SendFailure {
    /// No connection to the backend: the request is handed back whole.
    fn connect(error: ProxyError, req: Request<ReqBody>) -> Self {
        SendFailure {
            failure: Failure::Connect,
            error,
            unsent: Some(req),
        }
    }
}

/// A copy of a body-less request head, kept for one retry.
fn copy_head(parts: &http::request::Parts) -> http::request::Parts {
    head(&parts.method, &parts.uri, parts.version, &parts.headers)
}

/// A body-less request head with these fields.
fn head(
    method: &http::Method,
    uri: &Uri,
    version: http::Version,
    headers: &http::HeaderMap,
) -> http::request::Parts {
    let mut p = Request::new(()).into_parts().0;
    p.method = method.clone();
    p.uri = uri.clone();
    p.version = version;
    p.headers = headers.clone();
    p
}

fn absolute_uri(backend: &Backend, path: PathAndQuery) -> Result<Uri, ProxyError> {
    let mut uri = http::uri::Parts::default();
    uri.scheme = Some(backend.state.uri_scheme().clone());
    uri.authority = Some(backend.state.authority().clone());
    uri.path_and_query = Some(path);
    Uri::from_parts(uri).map_err(|e| ProxyError::Upstream(e.to_string()))
}

/// RFC 8555 §8.3: the body of a HTTP-01 answer is the key authorization.
fn key_authorization(answer: String) -> Response<ProxyBody> {
    let mut resp = Response::new(full(answer));
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    resp
}

/// 301 for GET/HEAD, 308 otherwise so the method and body are kept (RFC 9110
/// §15.4.9).
fn redirect<B>(req: &Request<B>, host: &str, port: u16) -> Response<ProxyBody> {
    let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let location = if port == 443 {
        format!("https://{host}{pq}")
    } else {
        format!("https://{host}:{port}{pq}")
    };
    let status = if req.method() == http::Method::GET || req.method() == http::Method::HEAD {
        StatusCode::MOVED_PERMANENTLY
    } else {
        StatusCode::PERMANENT_REDIRECT
    };
    let mut resp = Response::new(full(""));
    *resp.status_mut() = status;
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use wharf_table::{BackendDef, BackendRegistry, Policy, RouteDef, Table};

    /// A timeout kept in milliseconds stays what it was: zero (never) stays
    /// zero, a positive one never rounds down to zero, a huge one saturates.
    #[test]
    fn millis_keep_a_timeout_meaning() {
        assert_eq!(Millis::from(Duration::ZERO).get(), Duration::ZERO);
        assert_eq!(
            Millis::from(Duration::from_nanos(1)).get(),
            Duration::from_millis(1)
        );
        assert_eq!(
            Millis::from(Duration::from_secs(60)).get(),
            Duration::from_secs(60)
        );
        assert_eq!(
            Millis::from(Duration::from_secs(u64::MAX)).get(),
            Duration::from_millis(u64::from(u32::MAX))
        );
    }

    #[test]
    fn retirement_remembers_backends_that_left_until_they_serve_again() {
        let reg = BackendRegistry::new();
        let table = |backends: &[(u16, bool)]| {
            let mut def = RouteDef::local_for_tests(0, Policy::default());
            def.backends = backends
                .iter()
                .map(|(port, draining)| BackendDef {
                    addr: SocketAddr::from(([10, 0, 0, 1], *port)),
                    scheme: wharf_table::Scheme::Http,
                    draining: *draining,
                    identity: None,
                })
                .collect();
            Table::compile(vec![def], &reg).0
        };
        let sorted = |s: HashSet<SocketAddr, ahash::RandomState>| {
            let mut v: Vec<u16> = s.into_iter().map(|a| a.port()).collect();
            v.sort_unstable();
            v
        };
        let t0 = std::time::Instant::now();
        let mut r = Retirement::default();
        assert!(r.update(&table(&[(1, false), (2, false)]), t0).is_empty());
        // 2 drains, then leaves; 1 leaves without draining.
        assert_eq!(sorted(r.update(&table(&[(1, false), (2, true)]), t0)), [2]);
        assert_eq!(sorted(r.update(&table(&[(1, false)]), t0)), [2]);
        assert_eq!(sorted(r.update(&table(&[(3, false)]), t0)), [1, 2]);
        // Still retired at later swaps ...
        assert_eq!(sorted(r.update(&table(&[(3, false)]), t0)), [1, 2]);
        // ... until one serves again, or RETIRED_FOR has passed.
        assert_eq!(sorted(r.update(&table(&[(1, false), (3, false)]), t0)), [2]);
        assert!(r
            .update(&table(&[(1, false), (3, false)]), t0 + RETIRED_FOR)
            .is_empty());
    }
}
