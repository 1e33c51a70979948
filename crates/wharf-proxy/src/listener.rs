//! Listeners: bind (dual-stack), accept, optional PROXY header, the TLS handshake on
//! TLS entrypoints, then hyper serves HTTP/1.1 and HTTP/2 on the connection until it
//! closes or the proxy drains.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use socket2::{Domain, Socket, Type};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::body::InBody;
use crate::forward::{ConnInfo, Forwarder};
use crate::headers::ClientInfo;
use crate::idle::Inactivity;
use crate::proxy_protocol::{self, Prefixed};
use crate::ListenerSettings;

/// Binds a listening socket. An unspecified IPv6 address (`[::]`) also accepts
/// IPv4 (dual-stack, IPV6_V6ONLY off), whatever the host's sysctl default.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    if addr.is_ipv6() {
        socket.set_only_v6(!addr.ip().is_unspecified())?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nodelay(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    socket.set_nonblocking(true)?;
    TcpListener::from_std(socket.into())
}

/// A bound entrypoint, ready to serve.
pub struct Entrypoint {
    pub index: usize,
    pub settings: Arc<ListenerSettings>,
    pub listener: TcpListener,
    /// The TLS server config when `settings.tls` (see `wharf_tls::server_config`).
    pub tls: Option<Arc<ServerConfig>>,
}

/// hyper's connection builders: `auto` for plain connections (HTTP/1.1, or h2c with
/// prior knowledge), and one per ALPN outcome on TLS, so a connection speaks the
/// protocol it negotiated and nothing else.
struct Builders {
    plain: auto::Builder<TokioExecutor>,
    h1: auto::Builder<TokioExecutor>,
    h2: auto::Builder<TokioExecutor>,
}

fn builder(s: &ListenerSettings) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(s.header_read_timeout)
        // One flat buffer per write: `send` is cheaper than `writev` for the
        // small heads and bodies that dominate (measured, docs/benchmarks.md).
        .writev(false)
        .max_buf_size(s.max_header_size)
        .max_headers(s.max_headers);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(s.max_header_size).unwrap_or(u32::MAX))
        .max_concurrent_streams(256)
        // Find dead HTTP/2 peers: ping every 30 s, give up after 20 s.
        .keep_alive_interval(std::time::Duration::from_secs(30))
        .keep_alive_timeout(std::time::Duration::from_secs(20));
    builder
}

impl Entrypoint {
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accepts until `cancel`; each connection runs on `tracker`, so the caller can
    /// wait for in-flight requests to finish (drain).
    pub async fn serve(self, fwd: Arc<Forwarder>, cancel: CancellationToken, tracker: TaskTracker) {
        let s = &self.settings;
        let plain = if s.http2 {
            builder(s)
        } else {
            builder(s).http1_only()
        };
        // One context per entrypoint, shared by its connections: a connection
        // holds one pointer to it, not a copy of each handle.
        let ep = Arc::new(Ep {
            index: self.index,
            ctx: crate::h1::EngineCtx {
                settings: self.settings.clone(),
                fwd,
                cancel: cancel.clone(),
            },
            builders: Builders {
                plain,
                h1: builder(s).http1_only(),
                h2: builder(s).http2_only(),
            },
        });
        let tls = self.tls.clone().map(TlsAcceptor::from);
        let mut cap_logged: Option<tokio::time::Instant> = None;
        loop {
            // A free slot under each cap first, then accept (HAProxy's
            // maxconn): at the cap, new connections wait in the kernel's
            // backlog and cost nothing here. The slot is taken only once a
            // connection is accepted: a loop waiting in accept holds none, so
            // the loops of many cores and entrypoints cannot hold the cap
            // between them while idle.
            // Checked before waiting: a select on the drain token registers
            // and removes a waiter (~300 instructions per connection).
            if caps_full(&ep) {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    () = slots_free(&ep, &mut cap_logged) => {}
                }
            }
            let (stream, peer) = tokio::select! {
                _ = cancel.cancelled() => break,
                accepted = self.listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        warn!(entrypoint = %s.name, error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            // Another loop may have taken the free slot meanwhile: then
            // this one connection waits here for the next. Held from here
            // on; a drain gives the slots back by dropping it.
            let mut adm = match try_slots(&ep) {
                Some(adm) => adm,
                None => tokio::select! {
                    _ = cancel.cancelled() => break,
                    adm = take_slots(&ep, &mut cap_logged) => adm,
                },
            };
            let _ = stream.set_nodelay(true);
            if let Some((core, elsewhere)) = crate::cores::steer() {
                adm.core = core;
                if let Some(rt) = elsewhere {
                    hand_over(rt, &tracker, tls.as_ref(), adm, stream, peer);
                    continue;
                }
            }
            // One task type per kind of entrypoint: a TLS connection's state
            // (handshake, then rustls beside hyper) is twice a plain one's, and
            // a task is allocated at the size of the largest state its future
            // can reach (docs/benchmarks.md, memory per idle connection). The
            // async fns are spawned as they are: a wrapping block would hold
            // a second copy of their arguments.
            match &tls {
                None => tracker.spawn(run_plain(Box::new((adm, stream, peer)))),
                Some(acceptor) => tracker.spawn(run_tls(adm, acceptor.clone(), stream, peer)),
            };
        }
        debug!(entrypoint = %s.name, "stopped accepting");
    }
}

/// Serves an accepted connection on another core's runtime `rt`: its socket
/// leaves this core's reactor and joins that core's.
fn hand_over(
    rt: &tokio::runtime::Handle,
    tracker: &TaskTracker,
    tls: Option<&TlsAcceptor>,
    adm: Admitted,
    stream: TcpStream,
    peer: SocketAddr,
) {
    let Ok(socket) = stream.into_std() else {
        return;
    };
    match tls {
        None => rt.spawn(tracker.track_future(async move {
            if let Ok(stream) = TcpStream::from_std(socket) {
                run_plain(Box::new((adm, stream, peer))).await;
            }
        })),
        Some(acceptor) => {
            let acceptor = acceptor.clone();
            rt.spawn(tracker.track_future(async move {
                if let Ok(stream) = TcpStream::from_std(socket) {
                    run_tls(adm, acceptor, stream, peer).await;
                }
            }))
        }
    };
}

/// A connection's slots under the caps: [`OWN_SLOT`] (the entrypoint's
/// `max_connections`) and [`GLOBAL_SLOT`] (the process's), taken as bits and
/// given back by [`Admitted`]'s drop (a permit per cap would cost each
/// connection 32 bytes).
type Slots = u8;
const OWN_SLOT: Slots = 1;
const GLOBAL_SLOT: Slots = 2;
/// The bit of each cap of [`caps`].
const SLOT_BITS: [Slots; 2] = [OWN_SLOT, GLOBAL_SLOT];

/// An accepted connection, holding its slots until it is dropped.
struct Admitted {
    ep: Arc<Ep>,
    slots: Slots,
    /// The core that counts the connection ([`crate::cores::steer`]), or
    /// `usize::MAX` when no cores run.
    core: usize,
}

impl Admitted {
    /// No slot yet, counted on no core.
    fn new(ep: &Arc<Ep>) -> Self {
        Admitted {
            ep: ep.clone(),
            slots: 0,
            core: usize::MAX,
        }
    }
}

impl std::ops::Deref for Admitted {
    type Target = Ep;
    fn deref(&self) -> &Ep {
        &self.ep
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if self.core != usize::MAX {
            crate::cores::left(self.core);
        }
        if self.slots & OWN_SLOT != 0 {
            if let Some(sem) = &self.ep.settings.own_slots {
                sem.add_permits(1);
            }
        }
        if self.slots & GLOBAL_SLOT != 0 {
            if let Some(sem) = &self.ep.settings.global_slots {
                sem.add_permits(1);
            }
        }
    }
}

/// The caps of `ep`, each with the key that sets it, in the order of
/// [`SLOT_BITS`].
fn caps(ep: &Ep) -> [(Option<&tokio::sync::Semaphore>, &'static str); 2] {
    [
        (
            ep.settings.own_slots.as_deref(),
            "entrypoints.max_connections",
        ),
        (
            ep.settings.global_slots.as_deref(),
            "runtime.max_connections",
        ),
    ]
}

/// A cap of `ep` has no slot free now.
fn caps_full(ep: &Ep) -> bool {
    caps(ep)
        .into_iter()
        .any(|(sem, _)| sem.is_some_and(|s| s.available_permits() == 0))
}

/// Waits until each cap of `ep` has a slot free, without taking it; a wait
/// is logged as in [`take_slots`].
async fn slots_free(ep: &Ep, logged: &mut Option<tokio::time::Instant>) {
    for (sem, which) in caps(ep) {
        if let Some(sem) = sem.filter(|s| s.available_permits() == 0) {
            log_cap(&ep.settings, which, logged);
            // Taken and given back at once: only a sign that one is free.
            drop(sem.acquire().await);
        }
    }
}

/// Says a cap is reached, at most every [`CAP_LOG_EVERY`] per accept loop.
fn log_cap(s: &ListenerSettings, which: &str, logged: &mut Option<tokio::time::Instant>) {
    let now = tokio::time::Instant::now();
    if logged.is_none_or(|t| now.duration_since(t) >= CAP_LOG_EVERY) {
        *logged = Some(now);
        warn!(
            entrypoint = %s.name,
            cap = which,
            "connection cap reached: new connections wait in the kernel backlog \
             (logged at most every 10s)"
        );
    }
}

/// How often reaching a connection cap is logged, at most.
const CAP_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// A slot under each cap of `ep` if every cap has one free now, without
/// waiting (and without the drain token's waiter a wait needs); `None`
/// gives back what it took.
fn try_slots(ep: &Arc<Ep>) -> Option<Admitted> {
    let mut adm = Admitted::new(ep);
    for ((sem, _), bit) in caps(ep).into_iter().zip(SLOT_BITS) {
        if let Some(sem) = sem {
            sem.try_acquire().ok()?.forget();
            adm.slots |= bit;
        }
    }
    Some(adm)
}

/// Takes a slot under each cap, waiting when one is full; a wait is counted
/// and logged (at most every [`CAP_LOG_EVERY`]). Each slot is held by the
/// returned guard from the moment it is taken, so a wait cut short (a drain)
/// gives back the one already taken.
async fn take_slots(ep: &Arc<Ep>, logged: &mut Option<tokio::time::Instant>) -> Admitted {
    let mut adm = Admitted::new(ep);
    for ((sem, which), bit) in caps(ep).into_iter().zip(SLOT_BITS) {
        let Some(sem) = sem else { continue };
        let permit = match sem.try_acquire() {
            Ok(p) => p,
            Err(_) => {
                log_cap(&ep.settings, which, logged);
                // Never closed, so this only fails if the semaphore were.
                let Ok(p) = sem.acquire().await else { continue };
                p
            }
        };
        permit.forget();
        adm.slots |= bit;
    }
    adm
}

/// An entrypoint's serving context, shared by its connections.
struct Ep {
    index: usize,
    builders: Builders,
    /// The settings, forwarder and drain token the engine needs too.
    ctx: crate::h1::EngineCtx,
}

impl std::ops::Deref for Ep {
    type Target = crate::h1::EngineCtx;
    fn deref(&self) -> &crate::h1::EngineCtx {
        &self.ctx
    }
}

/// Per-connection state shared with the request futures: one allocation per
/// connection, holding what its task would otherwise carry by value.
struct Shared {
    ep: Admitted,
    info: ConnInfo,
    /// Requests started on this connection.
    started: AtomicU32,
    /// Requests whose handling is under way (until the response head).
    in_flight: AtomicU32,
    /// Requests cancelled by the client before their response head (HTTP/2
    /// RST_STREAM); too many of them close the connection.
    early_resets: AtomicU32,
    /// Woken when `early_resets` crosses the limit.
    abuse: tokio::sync::Notify,
    /// Which `open` gauge counts the connection, until it is dropped.
    open: Open,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Open {
    Http,
    Https,
    H2,
}

impl Shared {
    fn new(ep: Admitted, client: SocketAddr, tls: Option<Negotiated>) -> Self {
        let s = &*ep.settings;
        let open = match &tls {
            None => Open::Http,
            Some(n) if n.h2 => Open::H2,
            Some(_) => Open::Https,
        };
        gauge(&s.open, open).fetch_add(1, Ordering::Relaxed);
        let ip = client.ip().to_canonical();
        let info = ConnInfo {
            entrypoint: ep.index,
            tls: tls.is_some(),
            tls_version: tls.as_ref().and_then(|n| n.version),
            sni: tls.and_then(|n| n.sni),
            redirect_https: s.redirect_https,
            client_timeout: s.client_timeout.into(),
            tunnel_timeout: s.tunnel_timeout.into(),
            client: SocketAddr::new(ip, client.port()),
            retire_at: ConnInfo::aged_at(std::time::Instant::now(), s.max_connection_age),
            info: ClientInfo {
                ip: crate::headers::IpText::new(ip),
                trusted: s.forwarded_trusted.iter().any(|n| n.contains(&ip)),
                https: open != Open::Http,
            },
        };
        Shared {
            ep,
            info,
            started: AtomicU32::new(0),
            in_flight: AtomicU32::new(0),
            early_resets: AtomicU32::new(0),
            abuse: tokio::sync::Notify::new(),
            open,
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        gauge(&self.ep.settings.open, self.open).fetch_sub(1, Ordering::Relaxed);
    }
}

fn gauge(open: &crate::OpenConnections, which: Open) -> &std::sync::atomic::AtomicI64 {
    match which {
        Open::Http => &open.http,
        Open::Https => &open.https,
        Open::H2 => &open.h2,
    }
}

/// A connection where at least this many requests, and at least half of all
/// its requests, were reset by the client before their response head is
/// closed (Envoy's premature-reset rule; HTTP/2 "rapid reset", CVE-2023-44487):
/// each such request may have cost a backend connection.
const EARLY_RESETS_MAX: u32 = 64;

/// Counts a request as in flight; dropped before [`Stream::done`], it was reset.
struct Stream(Arc<Shared>, bool);

impl Drop for Stream {
    fn drop(&mut self) {
        let s = &self.0;
        s.in_flight.fetch_sub(1, Ordering::Relaxed);
        if self.1 {
            return;
        }
        let resets = s.early_resets.fetch_add(1, Ordering::Relaxed) + 1;
        if resets >= EARLY_RESETS_MAX
            && resets.saturating_mul(2) >= s.started.load(Ordering::Relaxed)
        {
            s.abuse.notify_one();
        }
    }
}

/// What the TLS handshake settled.
struct Negotiated {
    sni: Option<Box<str>>,
    h2: bool,
    /// `TLSv1.3` or `TLSv1.2`, for the access log.
    version: Option<crate::forward::TlsVersion>,
}

/// A plain entrypoint's connection: the PROXY header when the peer is a
/// trusted balancer, then HTTP.
///
/// These futures are what an idle connection's task holds, so they are
/// shaped for size (docs/benchmarks.md, memory per idle connection): what an
/// async function or block takes by value keeps its slot for the future's
/// whole life, even once moved on, and an `async fn` holds each argument
/// twice (the argument and the local it is moved into). So the accepted
/// connection arrives boxed (one pointer; its parts become locals that end
/// when moved on), and [`serve`] and the engine's `serve` are functions
/// returning an `async move` block, which holds what it captures once.
#[allow(clippy::manual_async_fn)] // the point, above
fn run_plain(accepted: Box<(Admitted, TcpStream, SocketAddr)>) -> impl Future<Output = ()> {
    // The inner block's value is awaited: its locals end before that await,
    // where locals of the outer scope would stay beside serve's state.
    async move {
        {
            let (ep, mut stream, peer) = *accepted;
            let Some((rest, client)) = proxy_header(&ep.settings, &mut stream, peer).await else {
                return;
            };
            let shared = Arc::new(Shared::new(ep, client, None));
            // Bytes read past a PROXY header go to the engine (or hyper) as a
            // prefix: one type of connection either way.
            let prefix = rest
                .filter(|r| !r.is_empty())
                .map(|r| Box::new(crate::h1::Early(Vec::from(r))));
            serve(shared, stream, prefix, None)
        }
        .await;
    }
}

/// A TLS entrypoint's connection: the PROXY header when the peer is a
/// trusted balancer, the handshake, then HTTP.
async fn run_tls(ep: Admitted, acceptor: TlsAcceptor, mut stream: TcpStream, peer: SocketAddr) {
    let Some((rest, client)) = proxy_header(&ep.settings, &mut stream, peer).await else {
        return;
    };
    match rest {
        None => tls(ep, acceptor, stream, client).await,
        Some(rest) => tls(ep, acceptor, Prefixed::new(rest, stream), client).await,
    }
}

/// The client's address, and the bytes read past a PROXY header when one
/// was read (the peer is a trusted balancer); `None` closes the connection
/// (a malformed header, or none in time).
async fn proxy_header(
    s: &ListenerSettings,
    stream: &mut TcpStream,
    peer: SocketAddr,
) -> Option<(Option<bytes::BytesMut>, SocketAddr)> {
    // On a dual-stack `[::]` listener an IPv4 peer arrives as `::ffff:a.b.c.d`;
    // compare its canonical form so IPv4 CIDRs match.
    let peer_ip = peer.ip().to_canonical();
    let trusted_pp = s
        .proxy_protocol
        .as_ref()
        .is_some_and(|nets| nets.iter().any(|n| n.contains(&peer_ip)));
    if !trusted_pp {
        return Some((None, peer));
    }
    let read =
        tokio::time::timeout(s.header_read_timeout, proxy_protocol::read_header(stream)).await;
    match read {
        Ok(Ok(h)) => Some((Some(h.rest), h.source.unwrap_or(peer))),
        Ok(Err(e)) => {
            debug!(%peer, error = %e, "PROXY header rejected; closing");
            None
        }
        Err(_) => {
            debug!(%peer, "no PROXY header in time; closing");
            None
        }
    }
}

/// On a TLS entrypoint, the handshake (bounded by `header_read_timeout`),
/// then HTTP on the decrypted stream.
async fn tls<I>(ep: Admitted, acceptor: TlsAcceptor, io: I, client: SocketAddr)
where
    I: crate::h1::Transport + 'static,
{
    // The stream comes out of its own future and goes straight into
    // serve's: held across no await here, it takes no second slot in this
    // future beside serve's (1.2 KiB per TLS connection).
    let Some((stream, negotiated)) = accept(&ep, acceptor, io, client).await else {
        return;
    };
    let h2 = negotiated.h2;
    let shared = Arc::new(Shared::new(ep, client, Some(negotiated)));
    serve(shared, stream, None, Some(h2)).await;
}

/// The TLS handshake, bounded by `header_read_timeout`; `None` when it
/// failed, or when it was all the client wanted (ACME TLS-ALPN-01).
async fn accept<I>(
    ep: &Ep,
    acceptor: TlsAcceptor,
    io: I,
    client: SocketAddr,
) -> Option<(tokio_rustls::server::TlsStream<I>, Negotiated)>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let s = &*ep.settings;
    let accept = tokio::time::timeout(s.header_read_timeout, acceptor.accept(io));
    let mut stream = match accept.await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            ep.fwd.count_handshake_failure();
            debug!(%client, entrypoint = %s.name, error = %e, "TLS handshake failed");
            return None;
        }
        Err(_) => {
            ep.fwd.count_handshake_failure();
            debug!(%client, entrypoint = %s.name, "TLS handshake timed out");
            return None;
        }
    };
    let (_, conn) = stream.get_ref();
    let alpn = conn.alpn_protocol();
    if alpn == Some(wharf_tls::ACME_TLS_ALPN) {
        // RFC 8737 §3: the handshake itself was the answer; no data follows.
        let _ = stream.shutdown().await;
        return None;
    }
    let negotiated = Negotiated {
        h2: alpn == Some(wharf_tls::ALPN_H2),
        version: conn.protocol_version().map(|v| match v {
            tokio_rustls::rustls::ProtocolVersion::TLSv1_3 => crate::forward::TlsVersion::V1_3,
            tokio_rustls::rustls::ProtocolVersion::TLSv1_2 => crate::forward::TlsVersion::V1_2,
            _ => crate::forward::TlsVersion::Other,
        }),
        sni: conn.server_name().map(|n| {
            n.trim_end_matches('.')
                .to_ascii_lowercase()
                .into_boxed_str()
        }),
    };
    Some((stream, negotiated))
}

/// HTTP on an accepted connection: the HTTP/1.1 engine first (unless ALPN
/// chose HTTP/2), hyper from the first head the engine declines; `prefix`:
/// bytes already read from `io` (past a PROXY header); `alpn_h2`: whether
/// ALPN chose HTTP/2, on TLS.
#[allow(clippy::manual_async_fn)] // see run_plain
fn serve<I>(
    shared: Arc<Shared>,
    io: I,
    prefix: Option<Box<crate::h1::Early>>,
    alpn_h2: Option<bool>,
) -> impl Future<Output = ()>
where
    I: crate::h1::Transport + 'static,
{
    let mut io = Inactivity::writes(io, shared.ep.settings.client_timeout);
    async move {
        let ep = &*shared.ep;
        let s = &*ep.settings;
        if s.h1_engine && alpn_h2 != Some(true) {
            // Scoped, and the hand-off's bytes copied out before hyper's
            // await: a local alive across two awaits widens every state.
            // h2c with prior knowledge: the engine saw the preface's start.
            // Decided inside the scope: `rest` borrowed out here would keep
            // a slot in this future past the awaits below (32 bytes more per
            // idle HTTP/1.1 connection, docs/benchmarks.md).
            let (rest, served, h2c) = {
                let engine = crate::h1::Engine {
                    ctx: &ep.ctx,
                    conn: &shared.info,
                };
                match engine.serve(&mut io, prefix).await {
                    crate::h1::Exit::Closed => return,
                    crate::h1::Exit::Handoff(rest, served) => {
                        let h2c = !served
                            && s.h2_engine
                            && s.http2
                            && rest.starts_with(b"PRI * HTTP/2.0");
                        (bytes::BytesMut::from(&rest[..]), served, h2c)
                    }
                }
            };
            if h2c {
                Box::pin(own_h2(shared, io, rest)).await;
                return;
            }
            // Boxed: hyper's connection state is large and rarely needed on
            // a connection the engine serves.
            let io = Prefixed::new(rest, io.into_inner());
            // After requests the engine served, HTTP/1.1 only: a preface now
            // is not a protocol switch to allow.
            let proto = if served { Some(false) } else { alpn_h2 };
            Box::pin(hyper(shared, io, proto)).await;
            return;
        }
        if s.h2_engine && alpn_h2 == Some(true) {
            let rest = prefix
                .map(|p| bytes::BytesMut::from(&p.0[..]))
                .unwrap_or_default();
            Box::pin(own_h2(shared, io, rest)).await;
            return;
        }
        // Boxed, once per connection: the task of a connection the engine
        // serves is then only as large as the engine's state.
        let io = Prefixed::new(
            prefix
                .map(|p| bytes::BytesMut::from(&p.0[..]))
                .unwrap_or_default(),
            io.into_inner(),
        );
        Box::pin(hyper(shared.clone(), io, alpn_h2)).await;
    }
}

/// Wharf's own HTTP/2 server serves the connection ([`crate::http2`]);
/// `prefix`: what was read of it already.
async fn own_h2<I>(shared: Arc<Shared>, io: I, prefix: bytes::BytesMut)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let ep = &*shared.ep;
    let s = &*ep.settings;
    let cfg = crate::http2::Config {
        max_header_list: s.max_header_size,
        first_request: s.header_read_timeout,
        idle_timeout: s.idle_timeout,
        retire_at: shared.info.retire_at.map(Into::into),
    };
    // The connection counts its streams and their early resets itself.
    let for_streams = shared.clone();
    let call = move |req: http::Request<InBody>| -> crate::http2::Handling {
        let c = for_streams.clone();
        Box::pin(async move { c.ep.fwd.handle(&c.info, req).await })
    };
    let mut conn = crate::http2::Connection::new(io, &prefix, cfg, call);
    drop(prefix);
    let cancelled = ep.cancel.cancelled();
    tokio::pin!(cancelled);
    let mut draining = false;
    let r = loop {
        tokio::select! {
            biased;
            r = &mut conn => break r,
            _ = &mut cancelled, if !draining => {
                // Finish the streams in flight, then close (drain).
                draining = true;
                conn.graceful_shutdown();
            }
        }
    };
    crate::http2::finish(&mut conn, r, &shared.info.client, &s.name).await;
}

/// hyper serves the connection (HTTP/2, and HTTP/1.1 from the first head
/// the engine declines); `tls`: whether ALPN chose HTTP/2, on TLS.
async fn hyper<I>(shared: Arc<Shared>, io: I, tls: Option<bool>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let ep = &*shared.ep;
    let s = &*ep.settings;
    let client = shared.info.client;
    let builder = match tls {
        None => &ep.builders.plain,
        Some(true) => &ep.builders.h2,
        Some(false) => &ep.builders.h1,
    };
    let for_svc = shared.clone();
    let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let c = for_svc.clone();
        c.started.fetch_add(1, Ordering::Relaxed);
        c.in_flight.fetch_add(1, Ordering::Relaxed);
        // Boxed: the future is 3.8 KiB. HTTP/2 spawns a task per stream,
        // and hyper and tokio move the stream's future (and write the task's
        // stage, the future's size) about eight times over its life: 3.4k
        // instructions per request unboxed, one copy into the box boxed
        // (docs/benchmarks.md, HTTP/2 counted). HTTP/1.1 here is only what
        // the engine declined, which pays that one copy.
        Box::pin(async move {
            let mut stream = Stream(c, false);
            let c = &stream.0;
            let resp = c.ep.fwd.handle(&c.info, req.map(InBody::Hyper)).await;
            stream.1 = true;
            Ok::<_, Infallible>(resp)
        })
    });
    let io = Inactivity::writes(io, s.client_timeout);
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
    tokio::pin!(conn);
    // hyper's head timer starts only once it knows the protocol; a peer that
    // connects and sends nothing (or half an HTTP/2 preface) would hold a file
    // descriptor forever. Close it if no request starts within the head timeout.
    let first = tokio::time::sleep(s.header_read_timeout);
    tokio::pin!(first);
    let mut waiting_first = true;
    // hyper has no idle timer for HTTP/2 (and PINGs keep a connection
    // alive): a connection on which no request started for `idle_timeout`
    // is closed gracefully (GOAWAY), checked every quarter of it.
    let idle_tick = s.idle_timeout / 4;
    let idle = tokio::time::sleep(idle_tick);
    tokio::pin!(idle);
    let (mut seen, mut quiet_ticks) = (0u32, 0u8);
    // `max_connection_age`: a graceful close, so clients spread over
    // replicas again and a long-lived connection cannot pin one forever.
    // From the connection's start: the engine may have served it before.
    let aged_at = shared.info.retire_at;
    let age = match aged_at {
        Some(at) => tokio::time::sleep_until(at.into()),
        None => tokio::time::sleep(std::time::Duration::MAX),
    };
    tokio::pin!(age);
    let mut closing = false;
    // Made once: a `Notified` made per wake-up would lock the waiter list
    // twice each time the connection is polled.
    let abuse = shared.abuse.notified();
    tokio::pin!(abuse);
    let result = loop {
        tokio::select! {
            // The connection first, and no random branch order: this loop
            // runs at every wake-up of a keep-alive connection.
            biased;
            r = conn.as_mut() => break r,
            _ = &mut first, if waiting_first => {
                waiting_first = false;
                if shared.started.load(Ordering::Relaxed) == 0 {
                    debug!(%client, "no request within header_read_timeout; closing");
                    return;
                }
            }
            _ = &mut idle, if !closing => {
                let now = shared.started.load(Ordering::Relaxed);
                if now != seen || shared.in_flight.load(Ordering::Relaxed) > 0 {
                    (seen, quiet_ticks) = (now, 0);
                } else {
                    quiet_ticks += 1;
                }
                if quiet_ticks >= 4 {
                    debug!(%client, "idle_timeout; closing");
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                } else {
                    idle.as_mut().reset(tokio::time::Instant::now() + idle_tick);
                }
            }
            _ = &mut age, if !closing && aged_at.is_some() => {
                debug!(%client, "max_connection_age; closing");
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = &mut abuse => {
                warn!(
                    %client,
                    entrypoint = %s.name,
                    resets = shared.early_resets.load(Ordering::Relaxed),
                    requests = shared.started.load(Ordering::Relaxed),
                    "closing a connection whose client reset most requests before their response"
                );
                return;
            }
            _ = ep.cancel.cancelled() => {
                // Finish the request in flight, then close (drain).
                conn.as_mut().graceful_shutdown();
                break conn.await;
            }
        }
    };
    if let Err(e) = result {
        debug!(%client, error = %e, "connection ended with an error");
    }
}
