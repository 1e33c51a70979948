//! The HTTP/1.1 engine: the common case (client HTTP/1.1 to a plain HTTP/1.1
//! backend) served by one task per client connection, without hyper.
//!
//! Each request head is parsed once ([`wire`]) into offsets into the
//! connection's read buffer; the pipeline's phases run on it (a header map is
//! built only for a route whose features read or rewrite fields: stickiness,
//! authentication, header rules, or a trusted peer's `X-Forwarded-For`); the
//! rewritten head is written into an output buffer and sent on a pooled plain
//! socket from this same task, and the response head comes back the same way.
//! Bodies are streamed with their framing (Content-Length, chunked, or until
//! close, sent on chunked). Buffers belong to the connection and are released
//! whenever it waits for a request with nothing buffered, so an idle
//! connection holds no buffer at all; released buffers are kept per thread
//! for the next busy period ([`spare`]).
//!
//! The decision is taken at each request head, never in the middle of a
//! request: a head the engine does not serve (HTTP/1.0, an upgrade,
//! `Expect`, an unusual target or framing, an error or redirect that Wharf
//! answers itself, a route with TLS or h2c backends, anything malformed) is
//! [`Exit::Handoff`]: hyper takes the connection from that head on, with the
//! bytes as received, and answers or refuses it as it always did.

pub(crate) mod spare;
pub(crate) mod wire;

use std::future::{poll_fn, Future};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use http::header::{self, HeaderMap, HeaderValue};
use http::Method;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::debug;
use wharf_table::metrics::method_index;
use wharf_table::{normalize_host, path_is_clean, InflightGuard, RateKey, Route, StickyPolicy};

use crate::access::Pending;
use crate::affinity::CookieAnswer;
use crate::error::ProxyError;
use crate::forward::{ConnInfo, Forwarder, Seen};
use crate::pipeline::{self, Ctx, Failure, Head, Routed, ACME_CHALLENGE};
use crate::ListenerSettings;
use wire::{Chunked, Field, Framing, Parse, ReqHead, RespHead, Step};

/// A client stream the engine can wait on without holding a buffer.
pub(crate) trait Transport: AsyncRead + AsyncWrite + Unpin + Send {
    /// Ready when the peer may have sent something. The default is always
    /// ready (the read itself waits, into a buffer).
    fn poll_peer(&self, _cx: &mut Context<'_>) -> Poll<()> {
        Poll::Ready(())
    }
}

impl Transport for TcpStream {
    fn poll_peer(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.poll_read_ready(cx).map(|_| ())
    }
}

/// TLS: while rustls holds no decrypted bytes (`wants_read`), only the socket
/// can bring a request, so its readiness is waited on without a buffer of
/// Wharf's.
impl<S: Transport> Transport for tokio_rustls::server::TlsStream<S> {
    fn poll_peer(&self, cx: &mut Context<'_>) -> Poll<()> {
        let (io, conn) = self.get_ref();
        if conn.wants_read() {
            io.poll_peer(cx)
        } else {
            Poll::Ready(())
        }
    }
}

/// How a connection left the engine.
pub(crate) enum Exit {
    Closed,
    /// hyper serves the rest of the connection, starting with these bytes;
    /// `true` when the engine served requests on it before (it is HTTP/1.1
    /// then, never HTTP/2 with prior knowledge).
    Handoff(Vec<u8>, bool),
}

/// Bytes read from a connection before the engine took it (past a PROXY
/// header), boxed: a pointer is all they cost the idle state.
pub(crate) struct Early(pub Vec<u8>);

/// Read buffers start this large; a head that does not fit grows them.
const READ_CHUNK: usize = 4096;
/// Bodies move in pieces of up to this much.
const BODY_CHUNK: usize = 16 * 1024;

/// A read buffer: `data[start..]` waits to be used.
#[derive(Default)]
struct Buf {
    data: Vec<u8>,
    start: usize,
}

impl Buf {
    fn pending(&self) -> &[u8] {
        &self.data[self.start..]
    }

    fn is_empty(&self) -> bool {
        self.start == self.data.len()
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.data.len() {
            self.data.clear();
            self.start = 0;
        }
    }

    /// Forgets what waits in it (a backend connection that is dropped takes
    /// its unread bytes with it).
    fn clear(&mut self) {
        self.data.clear();
        self.start = 0;
    }

    /// Gives the allocation back while nothing waits in it.
    fn release(&mut self) {
        if self.is_empty() {
            spare::give(std::mem::take(&mut self.data));
            self.start = 0;
        }
    }

    fn take(&mut self) -> Vec<u8> {
        let mut v = std::mem::take(&mut self.data);
        v.drain(..std::mem::take(&mut self.start));
        v
    }

    /// Room for a read of about `want` bytes: what was used is dropped first.
    fn make_room(&mut self, want: usize) {
        spare::ensure(&mut self.data);
        if self.data.capacity() - self.data.len() < want / 2 {
            if self.start > 0 {
                self.data.drain(..self.start);
                self.start = 0;
            }
            self.data.reserve(want);
        }
    }

    /// Reads once more from `io`; `Ok(0)` is the end of the stream.
    async fn read_from<R: AsyncRead + Unpin>(
        &mut self,
        io: &mut R,
        want: usize,
    ) -> io::Result<usize> {
        self.make_room(want);
        io.read_buf(&mut self.data).await
    }
}

/// A busy period's buffers and parsed fields (given back when it ends).
#[derive(Default)]
struct State {
    /// From the client.
    rbuf: Buf,
    /// From the backend.
    bbuf: Buf,
    /// To the backend or the client.
    out: Vec<u8>,
    fields: Vec<Field>,
    rfields: Vec<Field>,
}

impl Drop for State {
    fn drop(&mut self) {
        spare::give(std::mem::take(&mut self.rbuf.data));
        spare::give(std::mem::take(&mut self.bbuf.data));
        spare::give(std::mem::take(&mut self.out));
        spare::give(std::mem::take(&mut self.fields));
        spare::give(std::mem::take(&mut self.rfields));
    }
}

/// What an entrypoint's connections share.
pub(crate) struct EngineCtx {
    pub fwd: std::sync::Arc<Forwarder>,
    pub settings: std::sync::Arc<ListenerSettings>,
    pub cancel: CancellationToken,
}

/// What a connection's requests share: two pointers, so an idle connection
/// does not hold a copy of each handle.
pub(crate) struct Engine<'a> {
    pub ctx: &'a EngineCtx,
    pub conn: &'a ConnInfo,
}

impl std::ops::Deref for Engine<'_> {
    type Target = EngineCtx;
    fn deref(&self) -> &EngineCtx {
        self.ctx
    }
}

enum Next {
    Head(ReqHead),
    /// Nothing buffered after a request: the connection is idle again.
    Idle,
    Closed,
    Decline,
}

/// How a busy period ([`Engine::busy`]) ended.
enum Busy {
    /// Every request answered and nothing buffered: idle again.
    Idle,
    Exit(Exit),
}

/// After a request.
enum Outcome {
    KeepAlive,
    Close,
    /// Close, with the request body left unread: read it away for a while
    /// first ([`linger`]).
    Linger,
    Decline,
}

/// How a request that was answered ends its connection.
fn ending(unread_body: bool, close: bool) -> Outcome {
    match (unread_body, close) {
        (true, _) => Outcome::Linger,
        (false, true) => Outcome::Close,
        (false, false) => Outcome::KeepAlive,
    }
}

/// How long, and how much, a closing connection's unread request body is
/// read away after the answer (nginx's lingering close): closed with bytes
/// unread, the kernel would reset the connection, and the client could lose
/// the answer before it read it.
const LINGER_FOR: std::time::Duration = std::time::Duration::from_secs(2);
const LINGER_BYTES: usize = 1024 * 1024;

/// Ends a connection whose answer is out but whose client may still be
/// sending: half-closes it, then reads and drops what comes, within
/// [`LINGER_FOR`] and [`LINGER_BYTES`].
async fn linger<I: Transport>(io: &mut I, st: &mut State) {
    let _ = io.shutdown().await;
    let drain = async {
        let mut n = 0;
        while n < LINGER_BYTES {
            st.rbuf.clear();
            match st.rbuf.read_from(io, BODY_CHUNK).await {
                Ok(0) | Err(_) => break,
                Ok(k) => n += k,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER_FOR, drain).await;
}

/// Why an attempt at the backend failed.
enum Fail {
    /// The client went away while its body was relayed.
    Client,
    /// The client's body stalled for `client_timeout`: 502 and close, as the
    /// hyper path's timed body fails the request.
    ClientStalled,
    /// The client's chunked body is malformed: 502 and close, as on the
    /// hyper path (its client fails the request), not held against the
    /// backend.
    BadBody,
    Backend {
        failure: Failure,
        error: ProxyError,
        /// Nothing of the request reached the backend.
        unsent: bool,
    },
}

impl Engine<'_> {
    /// Serves requests until the connection closes or a head goes to hyper.
    ///
    /// An idle connection waits here holding only a timer and a cancellation
    /// waiter (memory per idle connection, docs/benchmarks.md): its buffers and
    /// per-request state live in [`Engine::busy`]'s future, boxed, from the
    /// moment the client sends until nothing is left to answer. Not an
    /// `async fn`, which would hold its arguments twice (see the listener).
    #[allow(clippy::manual_async_fn)] // see the doc above
    pub(crate) fn serve<'a, I: Transport>(
        &'a self,
        io: &'a mut I,
        mut prefix: Option<Box<Early>>,
    ) -> impl Future<Output = Exit> + 'a {
        async move {
            let s = &*self.settings;
            // One timer and one cancellation waiter for the connection's life,
            // re-armed per head: a timer made per request with the earliest
            // deadline would wake the runtime's driver (an eventfd write and an
            // extra epoll_wait per request).
            let deadline = tokio::time::sleep_until(self.head_by(s.header_read_timeout));
            tokio::pin!(deadline);
            let cancelled = self.cancel.cancelled();
            tokio::pin!(cancelled);
            let mut served = false;
            loop {
                // Bytes read before the engine started (past a PROXY header)
                // start a busy period at once.
                if prefix.is_none() {
                    // Polled by hand: `select!` would add its own state.
                    let woke = poll_fn(|cx| {
                        if io.poll_peer(cx).is_ready() {
                            Poll::Ready(true)
                        } else if cancelled.as_mut().poll(cx).is_ready() {
                            Poll::Ready(false)
                        } else if deadline.as_mut().poll(cx).is_ready() {
                            debug!(client = %self.conn.client, "idle past the head timeout or max_connection_age; closing");
                            Poll::Ready(false)
                        } else {
                            Poll::Pending
                        }
                    })
                    .await;
                    if !woke {
                        return Exit::Closed;
                    }
                }
                let prefix = prefix.take().map(|p| p.0).unwrap_or_default();
                match Box::pin(self.busy(io, deadline.as_mut(), served, prefix)).await {
                    Busy::Idle => served = true,
                    Busy::Exit(exit) => return exit,
                }
            }
        }
    }

    /// When the next head must have arrived: `within` from now, or at the
    /// connection's `max_connection_age` if that comes first. A connection
    /// without a whole head then is closed, as hyper's graceful close closes
    /// one that has not finished reading a head.
    fn head_by(&self, within: std::time::Duration) -> tokio::time::Instant {
        let by = tokio::time::Instant::now() + within;
        match self.conn.retire_at {
            Some(aged) => by.min(aged.into()),
            None => by,
        }
    }

    /// From the first byte of a request to the moment nothing is left to
    /// answer (pipelined requests included): reads heads and answers them.
    async fn busy<I: Transport>(
        &self,
        io: &mut I,
        mut deadline: Pin<&mut tokio::time::Sleep>,
        mut served: bool,
        prefix: Vec<u8>,
    ) -> Busy {
        // hyper's HTTP/1.1 `header_read_timeout` bounds the wait for each
        // head, from the end of the previous response (docs/config.md).
        let s = &*self.settings;
        let mut st = State::default();
        st.rbuf.data = prefix;
        spare::ensure(&mut st.fields);
        let mut first = true;
        loop {
            let next = tokio::select! {
                biased;
                next = self.read_head(io, &mut st, first) => next,
                () = deadline.as_mut() => {
                    debug!(client = %self.conn.client, "no request head in time, or max_connection_age; closing");
                    return Busy::Exit(Exit::Closed);
                }
            };
            first = false;
            let head = match next {
                Next::Idle => return Busy::Idle,
                Next::Closed => return Busy::Exit(Exit::Closed),
                Next::Decline => return Busy::Exit(Exit::Handoff(st.rbuf.take(), served)),
                Next::Head(h) => h,
            };
            let exit = match self.request(io, &mut st, head).await {
                Outcome::KeepAlive => {
                    served = true;
                    let between = s.header_read_timeout.min(s.idle_timeout);
                    deadline.as_mut().reset(self.head_by(between));
                    continue;
                }
                Outcome::Linger => {
                    // Boxed: rare, and its timer would otherwise widen
                    // every request's future.
                    Box::pin(linger(io, &mut st)).await;
                    Exit::Closed
                }
                Outcome::Close => {
                    let _ = io.shutdown().await;
                    Exit::Closed
                }
                Outcome::Decline => Exit::Handoff(st.rbuf.take(), served),
            };
            return Busy::Exit(exit);
        }
    }

    /// The next head; `first`: the busy period starts, the peer has sent
    /// something (else an empty buffer means the connection is idle again).
    /// A drain does not cut a head the client has started: the head timeout
    /// bounds it.
    async fn read_head<I: Transport>(&self, io: &mut I, st: &mut State, first: bool) -> Next {
        loop {
            if st.rbuf.is_empty() {
                if !first {
                    return Next::Idle;
                }
            } else {
                match wire::parse_request(
                    st.rbuf.pending(),
                    &mut st.fields,
                    self.settings.max_headers,
                ) {
                    // A head over the limit that one read completed: hyper
                    // answers it (431), as it would have.
                    Parse::Done(h) if h.len > self.settings.max_header_size => {
                        return Next::Decline
                    }
                    Parse::Done(h) => return Next::Head(h),
                    Parse::Decline(why) => {
                        debug!(client = %self.conn.client, why, "request head left to hyper");
                        return Next::Decline;
                    }
                    Parse::Partial if st.rbuf.pending().len() >= self.settings.max_header_size => {
                        return Next::Decline;
                    }
                    Parse::Partial => {}
                }
            }
            match st.rbuf.read_from(io, READ_CHUNK).await {
                Ok(0) | Err(_) => return Next::Closed,
                Ok(_) => {}
            }
        }
    }

    /// One request, from its parsed head to the end of its response.
    async fn request<I: Transport>(&self, io: &mut I, st: &mut State, h: ReqHead) -> Outcome {
        let start = Instant::now();
        let (fwd, conn) = (&*self.fwd, self.conn);
        let raw = &st.rbuf.pending()[..h.len];
        let part = |(a, b): (u32, u32)| &raw[a as usize..b as usize];
        let Ok(method) = Method::from_bytes(part(h.method)) else {
            return Outcome::Decline;
        };
        let target = part(h.target);
        let path_end = target
            .iter()
            .position(|b| *b == b'?')
            .unwrap_or(target.len());
        let (Ok(path), Ok(raw_host)) = (
            std::str::from_utf8(&target[..path_end]),
            std::str::from_utf8(part(h.host)),
        ) else {
            return Outcome::Decline;
        };
        let Some(host) = normalize_host(raw_host) else {
            return Outcome::Decline;
        };
        if !path_is_clean(path, method == Method::OPTIONS) {
            return Outcome::Decline;
        }
        let has_body = h.body != Framing::None;
        let empty = HeaderMap::new();
        let mut head = Head {
            method: &method,
            host: &host,
            path,
            has_body,
            headers: &empty,
        };
        // admit and route; whatever Wharf answers itself here (421, 404, a
        // redirect, an ACME challenge) is hyper's, with no phase run twice.
        if pipeline::admit(conn, &head).is_err()
            || (!conn.tls && method == Method::GET && path.starts_with(ACME_CHALLENGE))
        {
            return Outcome::Decline;
        }
        let route = match pipeline::route(&fwd.table.load(), conn, &head, fwd.https_port) {
            Ok(Routed::Forward(r)) => r,
            _ => return Outcome::Decline,
        };
        if !route.backends.all_plain_http() {
            return Outcome::Decline;
        }
        // Served here from now on.
        let map =
            needs_map(&route, conn, fwd.access.is_some()).then(|| wire::to_map(raw, &st.fields));
        if let Some(m) = &map {
            head.headers = m;
        }
        let mut pending = fwd.access.map(|log| {
            let (mut ua, mut referer) = (None, None);
            for f in &st.fields {
                match f.kind {
                    wire::Kind::UserAgent => ua = ua.or(Some(f.value(raw))),
                    wire::Kind::Referer => referer = referer.or(Some(f.value(raw))),
                    _ => {}
                }
            }
            let client = if conn.info.trusted {
                pipeline::client_ip(conn, &head)
            } else {
                conn.client.ip()
            };
            log.begin_h1(
                conn,
                &method,
                target,
                part(h.host),
                ua,
                referer,
                client,
                start,
            )
        });
        let mut own = Seen::default();
        let seen = match pending.as_mut().and_then(Pending::record) {
            Some(rec) => &mut rec.seen,
            None => &mut own,
        };
        seen.route = Some(route.clone());
        let is_head = method == Method::HEAD;
        let safe = pipeline::safe_to_repeat(&head);
        let cookies = || wire::values_of(raw, &st.fields, b"cookie");
        let phases = self.phases(&head, &route, cookies).await;
        let (backend, guard, mut affinity) = match phases {
            Ok(p) => p,
            Err(e) => {
                st.rbuf.consume(h.len);
                // A body not read leaves the connection's framing unknown.
                let close = has_body || h.close;
                let (status, bytes) = self.answer(io, st, e, close).await;
                self.fwd
                    .observe(Some(&route), status, method_index(&method), start);
                if let Some(p) = pending {
                    p.finish_with(status, bytes);
                }
                return ending(has_body, close);
            }
        };
        seen.backend = Some(backend.addr);
        let cookie = affinity.as_mut().and_then(|a| a.cookie.take());
        // The head for the backend.
        spare::ensure(&mut st.out);
        st.out.clear();
        match map {
            None => {
                let rules = route
                    .policy
                    .headers
                    .as_ref()
                    .map_or(&[][..], |r| &r.request[..]);
                wire::write_request(
                    &mut st.out,
                    raw,
                    &h,
                    &st.fields,
                    &conn.info,
                    rules,
                    cookie.as_ref().map(HeaderValue::as_bytes),
                );
            }
            Some(mut map) => {
                let host_value =
                    HeaderValue::from_bytes(part(h.host)).unwrap_or(HeaderValue::from_static(""));
                crate::headers::strip_hop_by_hop(&mut map, false);
                crate::headers::set_forwarded(&mut map, &conn.info, &host_value);
                crate::affinity::apply_request(&mut map, cookie);
                crate::middleware::rewrite_request(&route, &mut map);
                map.insert(header::HOST, host_value);
                if h.body == Framing::Chunked {
                    map.insert(header::TRANSFER_ENCODING, pipeline::CHUNKED);
                }
                wire::write_request_map(&mut st.out, part(h.method), target, &map);
            }
        }
        st.rbuf.consume(h.len);
        let resend = Resend {
            safe,
            elsewhere: route.backends.all().len() > 1,
        };
        let mut ctx = Ctx::first(route, (backend, guard), affinity);
        // forward, once more elsewhere when the rules allow
        let (up, resp, body_done) = loop {
            let sent_at = Instant::now();
            let tried = tokio::time::timeout(
                fwd.response_timeout,
                self.attempt(io, st, ctx.backend.addr, h.body, resend),
            )
            .await;
            let (failure, error, unsent) = match tried {
                Ok(Ok(got)) => {
                    ctx.succeeded(sent_at);
                    break got;
                }
                Ok(Err(Fail::Client)) => {
                    // The client stopped sending its body: nothing to answer.
                    return Outcome::Close;
                }
                Ok(Err(f @ (Fail::BadBody | Fail::ClientStalled))) => {
                    let e = ProxyError::Upstream(match f {
                        Fail::BadBody => "malformed chunked request body".into(),
                        _ => "the client's request body stalled".into(),
                    });
                    let (status, bytes) = self.answer(io, st, e, true).await;
                    self.fwd
                        .observe(Some(&ctx.route), status, method_index(&method), start);
                    if let Some(p) = pending {
                        p.finish_with(status, bytes);
                    }
                    return Outcome::Close;
                }
                Ok(Err(Fail::Backend {
                    failure,
                    error,
                    unsent,
                })) => (failure, error, unsent),
                Err(_) => (
                    Failure::Timeout { counts: !has_body },
                    ProxyError::Timeout,
                    false,
                ),
            };
            ctx.failed(failure, &error);
            let again = unsent || !has_body;
            let retried =
                again && ctx.may_retry(failure, safe) && ctx.redispatch(conn.client).await.is_ok();
            if !retried {
                debug!(error = %error, client = %conn.client, "request failed");
                // A body not relayed whole (or not at all: the backend
                // could not be reached) leaves the client's framing unknown.
                let close = has_body || h.close;
                let (status, bytes) = self.answer(io, st, error, close).await;
                self.fwd
                    .observe(Some(&ctx.route), status, method_index(&method), start);
                if let Some(p) = pending {
                    p.finish_with(status, bytes);
                }
                return ending(has_body, close);
            }
            debug!(route = %ctx.route.name, backend = %ctx.backend.addr, "retrying on another backend");
            if let Some(rec) = pending.as_mut().and_then(Pending::record) {
                rec.seen.backend = Some(ctx.backend.addr);
            }
        };
        let close = h.close || !body_done || self.cancel.is_cancelled() || self.conn.aged();
        // Timed at the response head, as on the hyper path.
        self.fwd
            .observe(Some(&ctx.route), resp.code, method_index(&method), start);
        let up = (up, body_done);
        let (status, relayed) = self
            .respond(
                io,
                st,
                &mut ctx,
                up,
                resp,
                is_head,
                h.accepts_trailers,
                close,
            )
            .await;
        if let Some(p) = pending {
            p.finish_with(status, relayed.bytes);
        }
        drop(ctx);
        ending(!body_done, close || !relayed.clean)
    }

    /// limit, gate, affinity and pick: the phases between the route and the
    /// backend.
    async fn phases<'a, C: Iterator<Item = &'a [u8]>>(
        &self,
        head: &Head<'_>,
        route: &std::sync::Arc<Route>,
        cookies: impl Fn() -> C,
    ) -> Result<
        (
            std::sync::Arc<wharf_table::Backend>,
            wharf_table::InflightGuard,
            Option<Box<crate::affinity::Affinity>>,
        ),
        ProxyError,
    > {
        let conn = self.conn;
        pipeline::limit(conn, head, route)?;
        match crate::middleware::gate(conn, head, route) {
            crate::middleware::Gate::Pass => {}
            crate::middleware::Gate::Refuse(e) => return Err(e),
            pending => Box::pin(pending.finish(route)).await?,
        }
        let affinity = pipeline::affinity(conn, head, route, cookies);
        let (backend, guard) =
            pipeline::pick(route, conn.client, None, affinity.as_deref()).await?;
        Ok((backend, guard, affinity))
    }

    /// Sends the request (in `st.out`, with its body from the client) on a
    /// pooled connection to `addr` and reads the response head. A reused
    /// connection that fails before any response byte (the backend closed it
    /// as idle, RFC 9112 §9.3.1) is replaced by a fresh one once, for a
    /// request without a body, under the hyper path's rule ([`Resend`]).
    async fn attempt<I: Transport>(
        &self,
        io: &mut I,
        st: &mut State,
        addr: SocketAddr,
        body: Framing,
        resend: Resend,
    ) -> Result<(TcpStream, RespHead, bool), Fail> {
        let connect_failed = |error| Fail::Backend {
            failure: Failure::Connect,
            error,
            unsent: true,
        };
        let pool = &self.fwd.pool;
        let (mut up, reused, stale_risk) = pool.checkout_raw(addr).await.map_err(connect_failed)?;
        match self.exchange(io, st, &mut up, body).await {
            Ok((resp, done)) => Ok((up, resp, done)),
            Err(Exchange::Failed(f)) => Err(f),
            Err(Exchange::Closed { written }) => {
                if reused && body == Framing::None && resend.again(written, stale_risk) {
                    let mut fresh = pool.connect_raw(addr).await.map_err(connect_failed)?;
                    return match self.exchange(io, st, &mut fresh, body).await {
                        Ok((resp, done)) => Ok((fresh, resp, done)),
                        Err(Exchange::Failed(f)) => Err(f),
                        Err(Exchange::Closed { written }) => Err(reset(written, false)),
                    };
                }
                Err(reset(written, reused))
            }
        }
    }

    /// The request out, the response head in; says whether the request body
    /// was sent whole (a backend may answer early, before it read it all:
    /// the rest is not waited for, and both connections close after the
    /// response).
    async fn exchange<I: Transport>(
        &self,
        io: &mut I,
        st: &mut State,
        up: &mut TcpStream,
        body: Framing,
    ) -> Result<(RespHead, bool), Exchange> {
        let written = |ok: bool| Exchange::Closed { written: ok };
        // Nothing of another connection's bytes may be read as this answer.
        st.bbuf.clear();
        spare::ensure(&mut st.rfields);
        let mut done = true;
        match body {
            Framing::None | Framing::Eof => {
                up.write_all(&st.out).await.map_err(|_| written(false))?;
            }
            Framing::Length(n) => {
                // The head and what is already here of the body, in one write.
                let mut out = std::mem::take(&mut st.out);
                let have = st
                    .rbuf
                    .pending()
                    .len()
                    .min(usize::try_from(n).unwrap_or(usize::MAX));
                let head_len = out.len();
                out.extend_from_slice(&st.rbuf.pending()[..have]);
                st.rbuf.consume(have);
                let sent = Self::send_body(&mut st.bbuf, &mut st.rfields, up, &out).await;
                out.truncate(head_len);
                st.out = out;
                done = sent?;
                let mut left = n - have as u64;
                while left > 0 && done {
                    if !self.read_client(io, st, up).await? {
                        done = false;
                        break;
                    }
                    let take = st
                        .rbuf
                        .pending()
                        .len()
                        .min(usize::try_from(left).unwrap_or(usize::MAX));
                    let data = &st.rbuf.pending()[..take];
                    done = Self::send_body(&mut st.bbuf, &mut st.rfields, up, data).await?;
                    st.rbuf.consume(take);
                    left -= take as u64;
                }
            }
            Framing::Chunked => {
                let mut out = std::mem::take(&mut st.out);
                let head_len = out.len();
                let mut chunked = Chunked::default();
                let r = loop {
                    let used = match chunked.decode(st.rbuf.pending(), &mut out) {
                        Ok(n) => n,
                        Err(e) => {
                            debug!(client = %self.conn.client, error = e.0, "malformed chunked request body");
                            break Err(Exchange::Failed(Fail::BadBody));
                        }
                    };
                    st.rbuf.consume(used);
                    // What the client sent so far goes on before waiting for
                    // more (a streamed upload is not held back); once body
                    // bytes were consumed, a failure is never a clean resend.
                    if !out.is_empty() {
                        match Self::send_body(&mut st.bbuf, &mut st.rfields, up, &out).await {
                            Ok(true) => out.clear(),
                            Ok(false) => {
                                done = false;
                                break Ok(());
                            }
                            Err(e) => break Err(e),
                        }
                    }
                    if chunked.is_done() {
                        break Ok(());
                    }
                    match self.read_client(io, st, up).await {
                        Ok(true) => {}
                        Ok(false) => {
                            done = false;
                            break Ok(());
                        }
                        Err(e) => break Err(e),
                    }
                };
                out.truncate(head_len.min(out.len()));
                st.out = out;
                r?;
            }
        }
        // The response head; interim (1xx) responses are dropped, as the
        // hyper path's client does.
        loop {
            match wire::response_step(st.bbuf.pending(), &mut st.rfields) {
                Step::Interim(len) => {
                    st.bbuf.consume(len);
                    continue;
                }
                Step::Final(r) => return Ok((r, done)),
                Step::Bad { failure, why } => return Err(bad(failure, why)),
                Step::More => {}
            }
            match st.bbuf.read_from(up, BODY_CHUNK).await {
                Ok(0) | Err(_) if st.bbuf.is_empty() => return Err(written(true)),
                Ok(0) | Err(_) => {
                    return Err(bad(
                        Failure::Malformed,
                        "connection closed inside the response head",
                    ))
                }
                Ok(_) => {}
            }
        }
    }

    /// More of the request body from the client (into `st.rbuf`), within
    /// `client_timeout`; `false` when the backend started its final answer
    /// first. Interim (1xx) responses that arrive meanwhile are dropped and
    /// the body goes on.
    async fn read_client<I: Transport>(
        &self,
        io: &mut I,
        st: &mut State,
        up: &mut TcpStream,
    ) -> Result<bool, Exchange> {
        let limit = self.conn.client_timeout.get();
        loop {
            let read = async {
                tokio::select! {
                    biased;
                    r = st.rbuf.read_from(io, BODY_CHUNK) => Some(r),
                    _ = up.readable() => None,
                }
            };
            let r = if limit.is_zero() {
                read.await
            } else {
                match tokio::time::timeout(limit, read).await {
                    Ok(r) => r,
                    Err(_) => return Err(Exchange::Failed(Fail::ClientStalled)),
                }
            };
            match r {
                Some(Ok(0) | Err(_)) => return Err(Exchange::Failed(Fail::Client)),
                Some(Ok(_)) => return Ok(true),
                None if backend_answered(&mut st.bbuf, &mut st.rfields, up) => return Ok(false),
                None => {}
            }
        }
    }

    /// Writes request body bytes to the backend, watching it meanwhile: `false`
    /// when it started its final answer (an early 413 to an upload it does not
    /// read) instead of waiting for it to read the rest.
    async fn send_body(
        bbuf: &mut Buf,
        rfields: &mut Vec<Field>,
        up: &TcpStream,
        mut data: &[u8],
    ) -> Result<bool, Exchange> {
        while !data.is_empty() {
            tokio::select! {
                biased;
                w = up.writable() => {
                    if w.is_err() {
                        return Err(sent_body_failed());
                    }
                    match up.try_write(data) {
                        Ok(n) => data = &data[n..],
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(_) => return Err(sent_body_failed()),
                    }
                }
                _ = up.readable() => {
                    if backend_answered(bbuf, rfields, up) {
                        return Ok(false);
                    }
                }
            }
        }
        Ok(true)
    }

    /// Writes Wharf's own answer for `e`; returns its status.
    async fn answer<I: Transport>(
        &self,
        io: &mut I,
        st: &mut State,
        e: ProxyError,
        close: bool,
    ) -> (u16, u64) {
        // A failed exchange's bytes are not kept on the connection.
        st.bbuf.clear();
        st.bbuf.release();
        let body = e.body();
        let resp = e.into_response();
        let status = resp.status().as_u16();
        let out = &mut st.out;
        out.clear();
        wire::write_status(out, status, None);
        wire::write_map(out, resp.headers());
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
        out.extend_from_slice(b"\r\n");
        wire::put_date(out);
        if close {
            out.extend_from_slice(b"connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(body.as_bytes());
        let _ = io.write_all(out).await;
        (status, body.len() as u64)
    }

    /// The respond phase and the body: the head rewritten for the client, the
    /// body relayed in its framing, the backend connection pooled when its
    /// exchange ended cleanly.
    #[allow(clippy::too_many_arguments)]
    async fn respond<I: Transport>(
        &self,
        io: &mut I,
        st: &mut State,
        ctx: &mut Ctx,
        (mut up, sent_whole): (TcpStream, bool),
        resp: RespHead,
        is_head: bool,
        accepts_trailers: bool,
        close: bool,
    ) -> (u16, Relayed) {
        let conn = self.conn;
        let route = &ctx.route;
        let no_body = is_head || resp.code == 204 || resp.code == 304;
        let framing = if no_body { Framing::None } else { resp.body };
        let raw = &st.bbuf.pending()[..resp.len];
        let out = &mut st.out;
        out.clear();
        // The head and the body's first bytes, which leave with it.
        out.reserve(st.bbuf.pending().len() + wire::ADDED);
        wire::write_status(
            out,
            resp.code,
            Some(&raw[resp.reason.0 as usize..resp.reason.1 as usize]),
        );
        let rules = route
            .policy
            .headers
            .as_ref()
            .map_or(&[][..], |r| &r.response[..]);
        // A sticky cookie is added on the borrowed fields; a response whose
        // own fields it changes takes the header map.
        let sticky = match (route.policy.sticky.as_deref(), ctx.affinity.as_deref()) {
            (Some(StickyPolicy::Cookie(c)), Some(aff)) => crate::affinity::respond_values(
                c,
                aff,
                &ctx.backend,
                conn.tls,
                wire::values_of(raw, &st.rfields, b"set-cookie"),
                wire::values_of(raw, &st.rfields, b"cache-control"),
            ),
            _ => CookieAnswer::Nothing,
        };
        let fast = !resp.listed
            && sticky != CookieAnswer::Rewrite
            && (rules.is_empty() || wire::plain_rules(rules));
        // Trailer fields reach a client that takes them, if the response as
        // sent declares them (as hyper's server sends them).
        let wants_trailers = accepts_trailers && framing == Framing::Chunked;
        let mut trailers = None;
        let date = if fast {
            let hsts = route.policy.hsts.as_ref().filter(|_| conn.tls);
            if wants_trailers {
                trailers = Some(wire::declared_trailers(raw, &st.rfields));
            }
            pipeline::bind_client(ctx);
            let cookie: &[(&[u8], &[u8])] = match sticky {
                CookieAnswer::Add {
                    set_cookie,
                    private,
                } => &[
                    (&b"set-cookie"[..], set_cookie.as_bytes()),
                    (&b"cache-control"[..], &b"private"[..]),
                ][..if private { 2 } else { 1 }],
                _ => &[],
            };
            wire::write_response_fields(out, raw, &st.rfields, &resp, hsts, cookie, rules)
        } else {
            let mut map = wire::to_map(raw, &st.rfields);
            crate::headers::strip_hop_by_hop(&mut map, false);
            pipeline::respond(conn, ctx, &mut map);
            // The framing is the engine's to write, whatever `Connection`
            // named or a header rule set: the length as parsed (none on a
            // 204), chunked below.
            map.remove(header::CONTENT_LENGTH);
            map.remove(header::TRANSFER_ENCODING);
            if wants_trailers {
                trailers = Some(wire::list_names(
                    map.get_all(header::TRAILER).iter().map(|v| v.as_bytes()),
                ));
            }
            wire::write_map(out, &map);
            if let Framing::Length(n) = resp.body {
                if resp.code != 204 {
                    out.extend_from_slice(b"content-length: ");
                    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
                    out.extend_from_slice(b"\r\n");
                }
            }
            map.contains_key(header::DATE)
        };
        if !date {
            wire::put_date(out);
        }
        if matches!(framing, Framing::Chunked | Framing::Eof) {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        }
        if close {
            out.extend_from_slice(b"connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        st.bbuf.consume(resp.len);
        let status = resp.code;
        let relayed = self
            .relay(
                io,
                st,
                &mut up,
                framing,
                trailers.as_deref().unwrap_or_default(),
                &mut ctx.guard,
            )
            .await;
        if relayed.clean
            && sent_whole
            && !resp.close
            && framing != Framing::Eof
            && st.bbuf.is_empty()
        {
            self.fwd.pool.release_raw(ctx.backend.addr, up);
        }
        // Bytes the backend sent past its answer go with its connection.
        st.bbuf.clear();
        st.bbuf.release();
        (status, relayed)
    }

    /// Relays the response body behind the head in `st.out`.
    async fn relay<I: Transport>(
        &self,
        io: &mut I,
        st: &mut State,
        up: &mut TcpStream,
        framing: Framing,
        trailers: &[http::HeaderName],
        guard: &mut InflightGuard,
    ) -> Relayed {
        let mut r = Relayed {
            bytes: 0,
            clean: false,
        };
        match framing {
            // The backend's slot is freed as soon as its part is over,
            // before the last write to the client (see `InflightGuard::release`).
            Framing::None => {
                guard.release();
                r.clean = io.write_all(&st.out).await.is_ok();
            }
            Framing::Length(n) => {
                // The head and the body's first bytes in one write.
                let have = st
                    .bbuf
                    .pending()
                    .len()
                    .min(usize::try_from(n).unwrap_or(usize::MAX));
                st.out.extend_from_slice(&st.bbuf.pending()[..have]);
                st.bbuf.consume(have);
                if have as u64 == n {
                    guard.release();
                }
                if io.write_all(&st.out).await.is_err() {
                    return r;
                }
                r.bytes = have as u64;
                while r.bytes < n {
                    match st.bbuf.read_from(up, BODY_CHUNK).await {
                        Ok(0) | Err(_) => {
                            debug!(client = %self.conn.client, "backend closed inside a response body");
                            return r;
                        }
                        Ok(_) => {}
                    }
                    let left = usize::try_from(n - r.bytes).unwrap_or(usize::MAX);
                    let take = st.bbuf.pending().len().min(left);
                    if take == left {
                        guard.release();
                    }
                    if io.write_all(&st.bbuf.pending()[..take]).await.is_err() {
                        return r;
                    }
                    st.bbuf.consume(take);
                    r.bytes += take as u64;
                }
                r.clean = true;
            }
            Framing::Chunked => {
                let mut chunked = if trailers.is_empty() {
                    Chunked::default()
                } else {
                    Chunked::keeping_trailers()
                };
                loop {
                    let before = st.out.len();
                    match chunked.decode(st.bbuf.pending(), &mut st.out) {
                        Ok(used) => st.bbuf.consume(used),
                        Err(e) => {
                            debug!(client = %self.conn.client, error = e.0, "malformed chunked response body");
                            let _ = io.write_all(&st.out[..before]).await;
                            return r;
                        }
                    }
                    if chunked.is_done() || st.bbuf.is_empty() || st.out.len() >= BODY_CHUNK {
                        if chunked.is_done() {
                            guard.release();
                            if !trailers.is_empty() {
                                wire::write_last_chunk(&mut st.out, &chunked.trailers, trailers);
                            }
                        }
                        if io.write_all(&st.out).await.is_err() {
                            return r;
                        }
                        st.out.clear();
                        r.bytes = chunked.data;
                        if chunked.is_done() {
                            r.clean = true;
                            return r;
                        }
                    }
                    match st.bbuf.read_from(up, BODY_CHUNK).await {
                        Ok(0) | Err(_) => return r,
                        Ok(_) => {}
                    }
                }
            }
            Framing::Eof => {
                r.bytes = st.bbuf.pending().len() as u64;
                wire::put_chunk(&mut st.out, st.bbuf.pending());
                st.bbuf.consume(st.bbuf.pending().len());
                loop {
                    if io.write_all(&st.out).await.is_err() {
                        return r;
                    }
                    st.out.clear();
                    match st.bbuf.read_from(up, BODY_CHUNK).await {
                        Ok(0) => {
                            guard.release();
                            r.clean = io.write_all(b"0\r\n\r\n").await.is_ok();
                            return r;
                        }
                        Err(_) => return r,
                        Ok(n) => {
                            r.bytes += n as u64;
                            wire::put_chunk(&mut st.out, st.bbuf.pending());
                            st.bbuf.consume(n);
                        }
                    }
                }
            }
        }
        r
    }
}

/// How a response body went.
struct Relayed {
    /// Body bytes passed on (chunked: without the framing).
    bytes: u64,
    /// Both sides are at a message boundary.
    clean: bool,
}

/// The backend is readable while the request body goes out: reads what it
/// sent (without waiting: a readiness can be stale) and says whether that is
/// the start of a final answer (or a close). Interim (1xx) responses are
/// dropped and the upload goes on.
fn backend_answered(bbuf: &mut Buf, rfields: &mut Vec<Field>, up: &TcpStream) -> bool {
    bbuf.make_room(BODY_CHUNK);
    match up.try_read_buf(&mut bbuf.data) {
        Ok(0) => return true,
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
        Err(_) => return true,
    }
    loop {
        let pending = bbuf.pending();
        match wire::parse_response(pending, rfields) {
            Parse::Done(r) if (100..200).contains(&r.code) && r.code != 101 => {
                bbuf.consume(r.len);
            }
            _ if bbuf.is_empty() => return false,
            // `HTTP/1.x 1..`, or too short to tell: an interim head may be
            // on its way.
            Parse::Partial if pending.len() < 10 || pending[9] == b'1' => return false,
            _ => return true,
        }
    }
}

/// When a request on a reused connection that closed without an answer goes
/// once more, on a fresh connection (`Forwarder::send_failed`'s rule), for
/// both raw clients (the engine and [`crate::raw`]).
#[derive(Clone, Copy)]
pub(crate) struct Resend {
    /// Safe to repeat (a GET, HEAD or OPTIONS without a body).
    pub safe: bool,
    /// The route has another backend (the hyper path keeps a copy then).
    pub elsewhere: bool,
}

impl Resend {
    /// A request none of which was `written` goes again; a written one only
    /// when safe and either at risk of a stale connection (idle long enough)
    /// or on a route that could retry it elsewhere anyway.
    pub(crate) fn again(self, written: bool, stale_risk: bool) -> bool {
        !written || (self.safe && (stale_risk || self.elsewhere))
    }
}

/// An exchange that did not bring a response head.
enum Exchange {
    Failed(Fail),
    /// The backend closed (or reset) before any response byte; `written`:
    /// the whole head went out.
    Closed {
        written: bool,
    },
}

fn reset(written: bool, stale: bool) -> Fail {
    Fail::Backend {
        failure: Failure::Reset { written, stale },
        error: ProxyError::Upstream("connection closed before the response".into()),
        unsent: !written,
    }
}

fn sent_body_failed() -> Exchange {
    Exchange::Failed(Fail::Backend {
        failure: Failure::Reset {
            written: true,
            stale: false,
        },
        error: ProxyError::Upstream("connection closed while the request body was sent".into()),
        unsent: false,
    })
}

/// A response head the engine does not take ([`wire::response_step`]).
fn bad(failure: Failure, why: &'static str) -> Exchange {
    Exchange::Failed(Fail::Backend {
        failure,
        error: ProxyError::Upstream(why.into()),
        unsent: false,
    })
}

/// Does the route need the request's fields as a header map? Only for the
/// features that read or rewrite fields; a route without them pays nothing.
fn needs_map(route: &Route, conn: &ConnInfo, access_log: bool) -> bool {
    let p = &route.policy;
    let rl_header = p
        .ratelimit
        .as_deref()
        .is_some_and(|rl| matches!(rl.key, RateKey::Header(_)));
    p.basicauth.is_some()
        // Rules on fields Wharf passes through apply to the borrowed fields.
        || p.headers.as_ref().is_some_and(|r| !wire::plain_rules(&r.request))
        || rl_header
        || (conn.info.trusted
            && (p.ratelimit.is_some()
                || p.ipallowlist.is_some()
                // The client of a source binding is the forwarded one; a
                // cookie names its backend whoever the client is.
                || matches!(p.sticky.as_deref(), Some(StickyPolicy::Source { .. }))
                || access_log))
}
