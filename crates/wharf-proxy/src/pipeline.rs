//! The request pipeline: the phases every request passes through, whatever codec
//! carries it (hyper today; a dedicated HTTP/1.1 engine can drive the same phases).
//!
//! ```text
//! admit ──► route ──► limit ──► affinity ──► pick ──► forward ──► respond ──► observe
//!   │          │        │                     ▲          │
//!   └─ answer  └─ answer└─ 429                └─ retry ◄─┘ (once, elsewhere, when safe)
//! ```
//!
//! - [`admit`]: checks that need no route (Host, 421 against SNI) and may answer.
//! - [`route`]: the table lookup, and answers that belong to the route (redirect).
//! - [`limit`]: the route's rate limit (429 with `Retry-After`).
//! - gate ([`crate::middleware::gate`]): the route's allow-list (403) and basic
//!   authentication (401), before any backend is picked (upgrades included).
//!   The request and response header rules run with the forwarding headers and
//!   in [`respond`].
//! - [`affinity`]: the backend a sticky cookie or source binding names.
//! - [`pick`]: a backend for the route (affinity, balancer, health, `maxconn` and
//!   its queue).
//! - forward (the codec's): sends, and reports a failure through [`Ctx::failed`],
//!   which says whether the request may be sent again ([`Ctx::may_retry`]).
//! - [`respond`]: rewrites the response head (HSTS, sticky cookies).
//! - observe: [`Ctx::succeeded`] / [`Ctx::failed`] feed passive health; metrics and
//!   the access log read the same context.
//!
//! Phases work on a borrowed [`Head`] and the per-connection [`ConnInfo`]; state of
//! one request lives in [`Ctx`]. A route that configures nothing pays nothing
//! extra: its policy fields are `None` and every check is a branch on them.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderValue};
use http::Method;
use tracing::{info, warn};
use wharf_table::ratelimit::{retry_after_secs, KeyOf};
use wharf_table::{Backend, BackendState, InflightGuard, RateKey, Route, StickyPolicy, Table};

use crate::affinity::{self, Affinity};
use crate::error::ProxyError;
use crate::forward::ConnInfo;

/// A borrowed view of a request head: what the phases may look at.
pub struct Head<'a> {
    pub method: &'a Method,
    /// Normalised host (lower case, no port).
    pub host: &'a str,
    pub path: &'a str,
    /// The request carries a body (or may: unknown length).
    pub has_body: bool,
    pub headers: &'a HeaderMap,
}

/// One request's state across phases.
pub struct Ctx {
    pub route: Arc<Route>,
    /// The backend of the current attempt and its in-flight slot.
    pub backend: Arc<Backend>,
    pub guard: InflightGuard,
    /// Attempts made so far (1 = the first).
    pub attempts: u8,
    /// What the request said about affinity, on routes with stickiness.
    pub affinity: Option<Box<Affinity>>,
}

/// Why an attempt failed, as the retry and passive-health rules need it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No connection was made: nothing of the request left Wharf.
    Connect,
    /// The connection failed before any response byte; `written` says whether
    /// the request may have (partly) reached the backend. `stale`: it was a
    /// reused keep-alive connection, which the backend may have closed as idle
    /// just as the request went out (RFC 9112 §9.3.1): not counted against it.
    Reset { written: bool, stale: bool },
    /// No response head within `response_timeout`. Counted against the backend
    /// only for a request without a body: with one, a slow client may be why.
    Timeout { counts: bool },
    /// The exchange broke for a reason that says nothing about the backend
    /// (a client body that failed, a request hyper refused to send): not a
    /// health matter.
    Protocol,
    /// The backend's response head was malformed or oversized: a 502, and
    /// counted against the backend (it is up but broken); never repeated, as
    /// the backend may have acted on the request.
    Malformed,
}

/// At most this many attempts per request (one retry, as HAProxy's `redispatch`).
const MAX_ATTEMPTS: u8 = 2;

/// Host and TLS-name checks that need no route.
#[inline]
pub fn admit(conn: &ConnInfo, head: &Head<'_>) -> Result<(), ProxyError> {
    // RFC 9110 §15.5.20: a connection is bound to the name it was opened for. An
    // HTTP/2 client may coalesce another host onto it (RFC 9113 §9.1.1); 421
    // makes it open a connection of its own. HTTP/1.1 gets the same rule, which
    // also stops domain fronting.
    if let Some(sni) = &conn.sni {
        if **sni != *head.host {
            return Err(ProxyError::Misdirected);
        }
    }
    Ok(())
}

/// What the route phase decided.
pub enum Routed {
    Forward(Arc<Route>),
    /// Redirect to TLS on this port.
    Redirect(u16),
}

/// The ACME HTTP-01 path, never redirected (RFC 8555 §8.3).
pub const ACME_CHALLENGE: &str = "/.well-known/acme-challenge/";

/// Finds the route; the table guard never outlives this call (STYLE habit 3).
#[inline]
pub fn route(
    table: &Table,
    conn: &ConnInfo,
    head: &Head<'_>,
    https_port: Option<u16>,
) -> Result<Routed, ProxyError> {
    let route = table
        .find(head.host, head.path, conn.entrypoint)
        .ok_or(ProxyError::NoRoute)?;
    if conn.redirect_https
        && route.policy.tls
        && route.policy.https_redirect
        && !head.path.starts_with(ACME_CHALLENGE)
    {
        if let Some(port) = https_port {
            return Ok(Routed::Redirect(port));
        }
    }
    Ok(Routed::Forward(route.clone()))
}

/// The client address that affinity and rate limits key on: the connection's
/// peer (after the PROXY protocol), or, when that peer is in `forwarded_trusted`,
/// the last `X-Forwarded-For` entry, which that trusted peer wrote.
pub fn client_ip(conn: &ConnInfo, head: &Head<'_>) -> IpAddr {
    if conn.info.trusted {
        let last = head
            .headers
            .get_all(&crate::headers::X_FORWARDED_FOR)
            .iter()
            .next_back()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .and_then(|a| parse_forwarded_addr(a.trim()));
        if let Some(ip) = last {
            return ip.to_canonical();
        }
    }
    conn.client.ip()
}

/// An `X-Forwarded-For` entry: an address, `v4:port`, `[v6]` or `[v6]:port`.
pub(crate) fn parse_forwarded_addr(a: &str) -> Option<IpAddr> {
    if let Ok(ip) = a.parse() {
        return Some(ip);
    }
    if let Some(rest) = a.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    a.parse::<SocketAddr>().ok().map(|s| s.ip())
}

/// The route's rate limit, if it has one.
#[inline]
pub fn limit(conn: &ConnInfo, head: &Head<'_>, route: &Route) -> Result<(), ProxyError> {
    let Some(rl) = &route.policy.ratelimit else {
        return Ok(());
    };
    let key = match &rl.key {
        RateKey::Route => KeyOf::Route,
        RateKey::Host => KeyOf::Bytes(head.host.as_bytes()),
        RateKey::Header(name) => match head.headers.get(name) {
            Some(v) => KeyOf::Bytes(v.as_bytes()),
            None => KeyOf::Addr(client_ip(conn, head)),
        },
        RateKey::Source => KeyOf::Addr(client_ip(conn, head)),
    };
    let now = wharf_table::sticky::now_nanos();
    route
        .state
        .rate
        .check(rl, key, now)
        .map_err(|wait| ProxyError::RateLimited {
            retry_after_secs: retry_after_secs(wait),
        })
}

/// The backend the request's sticky cookie or its client's binding names (and
/// the `Cookie` rewrite), on a route with stickiness. `cookies` iterates the
/// values of the request's `Cookie` fields ([`affinity::cookies`] of a header
/// map).
#[inline]
pub fn affinity<'a, I: Iterator<Item = &'a [u8]>>(
    conn: &ConnInfo,
    head: &Head<'_>,
    route: &Route,
    cookies: impl Fn() -> I,
) -> Option<Box<Affinity>> {
    let sticky = route.policy.sticky.as_deref()?;
    let client = match sticky {
        StickyPolicy::Source { .. } => client_ip(conn, head),
        StickyPolicy::Cookie(_) => conn.client.ip(),
    };
    Some(Box::new(affinity::read_values(
        route, sticky, cookies, client,
    )))
}

/// Picks a backend and takes an in-flight slot on it; `not` excludes the backend
/// of a failed attempt. On a `maxconn` route with every usable backend full, the
/// request waits in the route's bounded queue up to the route's queue timeout.
pub async fn pick(
    route: &Arc<Route>,
    client: SocketAddr,
    not: Option<SocketAddr>,
    aff: Option<&Affinity>,
) -> Result<(Arc<Backend>, InflightGuard), ProxyError> {
    let set = &route.backends;
    let pinned = aff.and_then(|a| a.pinned.as_ref());
    let source = aff.and_then(|a| a.client);
    let choose = || {
        // A pinned backend that is gone, down or full is not an error: the
        // request is balanced and the response re-pins the client.
        if let Some(p) = pinned.filter(|p| Some(p.addr) != not && set.can_take(p)) {
            return Some(p);
        }
        match (source, not) {
            (Some(ip), _) => set.pick_rendezvous(ip, not),
            (None, None) => set.pick(client.ip()),
            (None, Some(a)) => set.pick_other(client.ip(), a),
        }
    };
    let Some(mc) = route.policy.maxconn else {
        let b = choose().ok_or(ProxyError::NoHealthyBackend)?;
        return Ok((b.clone(), InflightGuard::new(b.state.clone())));
    };
    let state = &route.state;
    let take = || -> Option<(Arc<Backend>, InflightGuard)> {
        // A pick sees room that a concurrent request may take first: look again.
        for _ in 0..4 {
            let b = choose()?;
            if let Some(g) = InflightGuard::try_limited(&b.state, mc.limit, state) {
                return Some((b.clone(), g));
            }
        }
        None
    };
    let any_usable = || set.all().iter().any(|b| b.usable() && Some(b.addr) != not);
    // Nobody waiting: take a free slot at once. Otherwise queue behind the
    // waiters, so a newcomer does not overtake them.
    // A retry never queues: it would hold the failed attempt's slot meanwhile.
    if state.queued() == 0 || not.is_some() {
        if let Some(got) = take() {
            return Ok(got);
        }
    }
    if !any_usable() || not.is_some() {
        return Err(ProxyError::NoHealthyBackend);
    }
    let Some(ticket) = state.enter_queue(mc.queue) else {
        // Full queue: a slot freed just now still serves a newcomer.
        return take().ok_or(ProxyError::QueueFull);
    };
    let deadline = tokio::time::Instant::now() + mc.timeout;
    loop {
        let notified = state.slot_notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if let Some(got) = take() {
            return Ok(got);
        }
        if !any_usable() {
            ticket.pass_on();
            return Err(ProxyError::NoHealthyBackend);
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return Err(ProxyError::QueueTimeout);
        }
        // Woken: the loop looks for the slot again. Every waiter can use any
        // freed slot (retries never queue), so a wake-up that finds none means
        // the slot was already taken, and passing it on would only spin.
    }
}

impl Ctx {
    /// The context of a request's first attempt, on the backend `pick` chose.
    pub fn first(
        route: Arc<Route>,
        (backend, guard): (Arc<Backend>, InflightGuard),
        affinity: Option<Box<Affinity>>,
    ) -> Ctx {
        Ctx {
            route,
            backend,
            guard,
            attempts: 1,
            affinity,
        }
    }

    /// Observe: a response head arrived from the backend, `sent_at` after
    /// the attempt started (the upstream-time metric and passive health).
    #[inline]
    pub fn succeeded(&self, sent_at: std::time::Instant) {
        if cfg!(not(feature = "no-request-metrics")) {
            self.backend.state.upstream.observe(sent_at.elapsed());
        }
        self.backend.state.passive_success();
    }

    /// Observe: the attempt failed. Counts it against the backend when it says
    /// something about the backend's health (HAProxy's `observe layer4`).
    pub fn failed(&self, failure: Failure, detail: &dyn std::fmt::Display) {
        if matches!(
            failure,
            Failure::Protocol
                | Failure::Reset { stale: true, .. }
                | Failure::Timeout { counts: false }
        ) {
            return;
        }
        let state = &self.backend.state;
        if let Some(n) = state.passive_failure(detail) {
            let route = &self.route;
            let addr = self.backend.addr;
            if route.policy.healthcheck.is_some() {
                warn!(
                    route = %route.name, backend = %addr, reason = %detail,
                    "backend down: {} consecutive requests failed; back when its health checks pass",
                    wharf_table::PASSIVE_FAILURES
                );
            } else {
                let cooldown = BackendState::cooldown(n);
                warn!(
                    route = %route.name, backend = %addr, reason = %detail,
                    "backend down: {} consecutive requests failed; retried in {:?}",
                    wharf_table::PASSIVE_FAILURES, cooldown
                );
                readmit_after(state.clone(), route.name.clone(), addr, cooldown);
            }
        }
    }

    /// May the request be sent again, to another backend? Once, and only if
    /// nothing of it can have reached the backend, or it is `safe` to repeat
    /// ([`safe_to_repeat`]). The caller must also still hold the request or a
    /// copy of it.
    pub fn may_retry(&self, failure: Failure, safe: bool) -> bool {
        if self.attempts >= MAX_ATTEMPTS {
            return false;
        }
        match failure {
            Failure::Connect | Failure::Reset { written: false, .. } => true,
            Failure::Reset { written: true, .. } => safe,
            Failure::Timeout { .. } | Failure::Protocol | Failure::Malformed => false,
        }
    }

    /// Takes a slot on another backend for the next attempt; the failed
    /// attempt's slot is released once the new one is held.
    pub async fn redispatch(&mut self, client: SocketAddr) -> Result<(), ProxyError> {
        let failed = self.backend.addr;
        let (backend, guard) =
            pick(&self.route, client, Some(failed), self.affinity.as_deref()).await?;
        self.route.state.count_retry();
        self.backend = backend;
        self.guard = guard;
        self.attempts += 1;
        Ok(())
    }
}

/// A request that may be sent twice: a safe method, no body.
pub fn safe_to_repeat(head: &Head<'_>) -> bool {
    !head.has_body
        && (head.method == Method::GET
            || head.method == Method::HEAD
            || head.method == Method::OPTIONS)
}

fn readmit_after(state: Arc<BackendState>, route: Arc<str>, addr: SocketAddr, after: Duration) {
    tokio::spawn(async move {
        tokio::time::sleep(after).await;
        if state.readmit() {
            info!(route = %route, backend = %addr, "backend up: cool-down over, on probation");
        }
    });
}

/// Respond: the response head on its way to the client.
#[inline]
pub fn respond(conn: &ConnInfo, ctx: &Ctx, headers: &mut HeaderMap) {
    let route = &ctx.route;
    if conn.tls {
        if let Some(hsts) = &route.policy.hsts {
            headers.insert(header::STRICT_TRANSPORT_SECURITY, hsts.clone());
        }
    }
    if let (Some(sticky), Some(aff)) = (route.policy.sticky.as_deref(), ctx.affinity.as_deref()) {
        affinity::respond(route, sticky, aff, &ctx.backend, conn.tls, headers);
    }
    crate::middleware::rewrite_response(route, headers);
}

/// The respond phase without a header map, for a route whose stickiness
/// writes no field: binds the client to the backend that answered.
#[inline]
pub fn bind_client(ctx: &Ctx) {
    if let (Some(StickyPolicy::Source { ttl }), Some(aff)) =
        (ctx.route.policy.sticky.as_deref(), ctx.affinity.as_deref())
    {
        affinity::bind_source(&ctx.route, *ttl, aff, &ctx.backend);
    }
}

/// A constant for the chunked re-framing of bodies of unknown length.
pub const CHUNKED: HeaderValue = HeaderValue::from_static("chunked");

#[cfg(test)]
mod tests {
    use super::*;
    use wharf_table::{BackendRegistry, MaxConn, Policy, RouteDef};

    const CLIENT: SocketAddr = SocketAddr::new(
        std::net::IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1)),
        5000,
    );

    fn route(n: u16, maxconn: Option<MaxConn>) -> (Table, Arc<Route>) {
        let reg = BackendRegistry::new();
        let policy = Policy {
            maxconn,
            ..Policy::default()
        };
        let (t, _) = Table::compile(vec![RouteDef::local_for_tests(n, policy)], &reg);
        let r = t.routes()[0].clone();
        (t, r)
    }

    fn mc(limit: u32, queue: u32, ms: u64) -> Option<MaxConn> {
        Some(MaxConn {
            limit,
            queue,
            timeout: Duration::from_millis(ms),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_queued_request_gets_the_freed_slot() {
        let (_t, r) = route(1, mc(1, 4, 5_000));
        let (_, first) = pick(&r, CLIENT, None, None).await.unwrap();
        let r2 = r.clone();
        let waiter =
            tokio::spawn(async move { pick(&r2, CLIENT, None, None).await.map(|(b, _)| b.addr) });
        // The waiter is in the queue, not served.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(r.state.queued(), 1);
        assert!(!waiter.is_finished());
        drop(first);
        assert_eq!(waiter.await.unwrap().unwrap().port(), 9000);
        assert_eq!(r.state.queued(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_queue_answers_at_once_and_a_queued_request_times_out() {
        let (_t, r) = route(1, mc(1, 1, 300));
        let _held = pick(&r, CLIENT, None, None).await.unwrap();
        let r2 = r.clone();
        let started = tokio::time::Instant::now();
        let waiter = tokio::spawn(async move { pick(&r2, CLIENT, None, None).await.map(|_| ()) });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(matches!(
            pick(&r, CLIENT, None, None).await,
            Err(ProxyError::QueueFull)
        ));
        assert!(matches!(
            waiter.await.unwrap(),
            Err(ProxyError::QueueTimeout)
        ));
        assert_eq!(started.elapsed(), Duration::from_millis(300));
        assert_eq!(r.state.queued(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn no_usable_backend_is_503_without_queueing() {
        let (_t, r) = route(2, mc(1, 4, 5_000));
        for b in r.backends.all() {
            b.state.set_up(false);
        }
        assert!(matches!(
            pick(&r, CLIENT, None, None).await,
            Err(ProxyError::NoHealthyBackend)
        ));
        let (_t, r) = route(2, None);
        for b in r.backends.all() {
            b.state.set_up(false);
        }
        assert!(matches!(
            pick(&r, CLIENT, None, None).await,
            Err(ProxyError::NoHealthyBackend)
        ));
    }

    #[tokio::test]
    async fn leastconn_never_picks_a_full_backend_while_another_has_room() {
        let (_t, r) = route(3, mc(1, 4, 5_000));
        let (a, _ga) = pick(&r, CLIENT, None, None).await.unwrap();
        let (b, _gb) = pick(&r, CLIENT, None, None).await.unwrap();
        assert_ne!(a.addr, b.addr);
        for _ in 0..50 {
            let (c, g) = pick(&r, CLIENT, None, None).await.unwrap();
            assert!(c.addr != a.addr && c.addr != b.addr);
            drop(g);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn passive_ejection_without_checks_ends_after_the_cooldown() {
        let (_t, r) = route(2, None);
        let (backend, guard) = pick(&r, CLIENT, None, None).await.unwrap();
        let ctx = Ctx {
            route: r.clone(),
            backend: backend.clone(),
            guard,
            attempts: 1,
            affinity: None,
        };
        for _ in 0..wharf_table::PASSIVE_FAILURES {
            ctx.failed(Failure::Connect, &"refused");
        }
        assert!(!backend.state.is_up());
        // Every pick now avoids it.
        for _ in 0..20 {
            assert_ne!(
                pick(&r, CLIENT, None, None).await.unwrap().0.addr,
                backend.addr
            );
        }
        tokio::time::sleep(wharf_table::PASSIVE_COOLDOWN + Duration::from_millis(1)).await;
        assert!(backend.state.is_up());
        // A protocol error says nothing about reachability; a stale keep-alive
        // connection or a timeout while a client uploaded a body say nothing
        // about the backend.
        for _ in 0..2 * wharf_table::PASSIVE_FAILURES {
            ctx.failed(Failure::Protocol, &"garbage");
            ctx.failed(
                Failure::Reset {
                    written: true,
                    stale: true,
                },
                &"closed",
            );
            ctx.failed(Failure::Timeout { counts: false }, &"slow upload");
        }
        assert!(backend.state.is_up());
    }

    /// A route of three backends with insert-cookie stickiness, and a request
    /// pinned by its cookie to the second.
    fn sticky_route(maxconn: Option<MaxConn>) -> (Table, Arc<Route>, StickyPolicy, Affinity) {
        use wharf_table::{CookieSticky, StickyKey};
        let reg = BackendRegistry::new();
        reg.set_sticky_key(StickyKey::new(b"k"));
        let sticky = StickyPolicy::Cookie(CookieSticky {
            name: "WHARFID".into(),
            prefix: false,
            max_age: None,
        });
        let def = RouteDef::local_for_tests(
            3,
            Policy {
                sticky: Some(Arc::new(sticky.clone())),
                maxconn,
                ..Policy::default()
            },
        );
        let (t, _) = Table::compile(vec![def], &reg);
        let r = t.routes()[0].clone();
        let text = r.backends.all()[1].token.unwrap().text();
        let mut cookie = HeaderMap::new();
        cookie.insert(
            header::COOKIE,
            HeaderValue::from_bytes(&[&b"WHARFID="[..], &text].concat()).unwrap(),
        );
        let aff = affinity::read(&r, &sticky, &cookie, CLIENT.ip());
        (t, r, sticky, aff)
    }

    /// The `WHARFID=<token>` pair the response sets, if any.
    fn pins(r: &Route, sticky: &StickyPolicy, aff: &Affinity, b: &Backend) -> Option<String> {
        let mut h = HeaderMap::new();
        affinity::respond(r, sticky, aff, b, false, &mut h);
        let v = h.get(header::SET_COOKIE)?.to_str().unwrap();
        Some(v.split(';').next().unwrap().to_string())
    }

    fn cookie_of(b: &Backend) -> String {
        format!(
            "WHARFID={}",
            std::str::from_utf8(&b.token.unwrap().text()).unwrap()
        )
    }

    #[tokio::test]
    async fn a_retry_away_from_a_failed_pin_repins_in_the_same_response() {
        let (_t, r, sticky, aff) = sticky_route(None);
        let pinned = r.backends.all()[1].clone();
        let (backend, guard) = pick(&r, CLIENT, None, Some(&aff)).await.unwrap();
        assert_eq!(backend.addr, pinned.addr);
        assert_eq!(pins(&r, &sticky, &aff, &backend), None);
        let mut ctx = Ctx {
            route: r.clone(),
            backend,
            guard,
            attempts: 1,
            affinity: Some(Box::new(aff)),
        };
        // One failed connect: the pinned backend is still up (passive health
        // needs more), yet the backend that answers the retry re-pins.
        ctx.failed(Failure::Connect, &"refused");
        assert!(pinned.usable());
        ctx.redispatch(CLIENT).await.unwrap();
        assert_ne!(ctx.backend.addr, pinned.addr);
        let aff = ctx.affinity.as_deref().unwrap();
        assert_eq!(
            pins(&r, &sticky, aff, &ctx.backend),
            Some(cookie_of(&ctx.backend))
        );
    }

    #[tokio::test]
    async fn a_full_pin_is_served_elsewhere_and_repinned() {
        let (_t, r, sticky, aff) = sticky_route(mc(1, 4, 5_000));
        let pinned = r.backends.all()[1].clone();
        // Another client holds the pinned backend's only slot.
        let held = InflightGuard::try_limited(&pinned.state, 1, &r.state).unwrap();
        let (b, _g) = pick(&r, CLIENT, None, Some(&aff)).await.unwrap();
        assert_ne!(b.addr, pinned.addr, "a full pin is not waited for");
        assert_eq!(pins(&r, &sticky, &aff, &b), Some(cookie_of(&b)));
        // With room again, a client still pinned there goes there, unmoved.
        drop(held);
        let (b, _g) = pick(&r, CLIENT, None, Some(&aff)).await.unwrap();
        assert_eq!(b.addr, pinned.addr);
        assert_eq!(pins(&r, &sticky, &aff, &b), None);
    }

    #[test]
    fn forwarded_entries_with_ports_and_brackets() {
        for (entry, ip) in [
            ("192.0.2.9", "192.0.2.9"),
            ("192.0.2.9:5678", "192.0.2.9"),
            ("2001:db8::1", "2001:db8::1"),
            ("[2001:db8::1]", "2001:db8::1"),
            ("[2001:db8::1]:443", "2001:db8::1"),
        ] {
            assert_eq!(
                parse_forwarded_addr(entry),
                Some(ip.parse().unwrap()),
                "{entry}"
            );
        }
        assert_eq!(parse_forwarded_addr("unknown"), None);
        assert_eq!(parse_forwarded_addr("_hidden"), None);
    }

    #[tokio::test]
    async fn retry_rules() {
        let (_t, r) = route(2, None);
        let (backend, guard) = pick(&r, CLIENT, None, None).await.unwrap();
        let mut ctx = Ctx {
            route: r.clone(),
            backend,
            guard,
            attempts: 1,
            affinity: None,
        };
        // Nothing sent: any request may go elsewhere.
        let reset = |written| Failure::Reset {
            written,
            stale: false,
        };
        assert!(ctx.may_retry(Failure::Connect, false));
        assert!(ctx.may_retry(reset(false), false));
        // Written: only a safe, body-less request.
        assert!(!ctx.may_retry(reset(true), false));
        assert!(ctx.may_retry(reset(true), true));
        // A timeout or a protocol error is never repeated.
        assert!(!ctx.may_retry(Failure::Timeout { counts: true }, true));
        assert!(!ctx.may_retry(Failure::Protocol, true));
        assert!(!ctx.may_retry(Failure::Malformed, true));
        let first = ctx.backend.addr;
        ctx.redispatch(CLIENT).await.unwrap();
        assert_ne!(ctx.backend.addr, first);
        assert_eq!(
            r.state.retries.load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        // Once only.
        assert!(!ctx.may_retry(Failure::Connect, true));
        let get = Method::GET;
        let post = Method::POST;
        let empty = HeaderMap::new();
        let head = |method, has_body| Head {
            method,
            host: "h",
            path: "/",
            has_body,
            headers: &empty,
        };
        assert!(safe_to_repeat(&head(&get, false)));
        assert!(!safe_to_repeat(&head(&get, true)));
        assert!(!safe_to_repeat(&head(&post, false)));
    }
}
