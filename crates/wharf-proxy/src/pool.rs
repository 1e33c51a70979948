//! The HTTP/1.1 upstream connection pool of the request path.
//!
//! hyper-util's general-purpose client spawns a task per request to notice when a
//! connection is idle again and keys its pool by a hashed URI; this pool does less:
//! a connection goes back to its backend's idle list when the response body has
//! been read to the end (the body wrapper does that), and checkout pops the most
//! recently used connection that is still open. Measured in docs/benchmarks.md.
//!
//! Backends reached over TLS (`scheme = "https"`) are pooled the same way, keyed by
//! (address, the route's TLS policy), so two routes with different server names or
//! roots never share a connection. ALPN decides the protocol per connection: an
//! HTTP/2 connection is shared by every request to that key (one per key), an
//! HTTP/1.1 one is checked out and released like a plain one. rustls' session
//! cache resumes the TLS session when a connection is made again.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::{debug, warn};
use wharf_table::BackendTls;

use crate::error::ProxyError;
use crate::idle::TimedBody;

/// A request body to a backend: the client's, or none. A request without a body
/// is sent with `Empty`, so a copy of its head can be sent again on a retry.
pub type ReqBody = Either<TimedBody<crate::body::InBody>, Empty<Bytes>>;

/// What sending a request came to: the response head, or an error that
/// hands the request back when none of it was written.
pub type Sent =
    Result<hyper::Response<Incoming>, hyper::client::conn::TrySendError<hyper::Request<ReqBody>>>;

/// A connection's sending half: HTTP/1.1 (one request at a time, pooled) or
/// HTTP/2 (multiplexed, shared), as ALPN decided.
pub enum Tx {
    H1(http1::SendRequest<ReqBody>),
    H2(http2::SendRequest<ReqBody>),
}

impl Tx {
    pub fn is_h2(&self) -> bool {
        matches!(self, Tx::H2(_))
    }

    /// Sends a request shaped for this connection's protocol; when none of it
    /// was written, the error hands it back.
    ///
    /// Not an `async fn`: hyper hands the request to the connection when this
    /// is called, so the future is only hyper's wait for the response, not
    /// also a second copy of the request kept for a first poll.
    pub fn try_send_request(&mut self, req: hyper::Request<ReqBody>) -> impl Future<Output = Sent> {
        match self {
            Tx::H1(t) => tokio_util::either::Either::Left(t.try_send_request(req)),
            Tx::H2(t) => tokio_util::either::Either::Right(t.try_send_request(req)),
        }
    }
}

/// A pool key: the backend and, for TLS, the route's policy (`0`: plain).
type Key = (SocketAddr, u64);

struct Idle {
    tx: http1::SendRequest<ReqBody>,
    since: Instant,
}

/// An idle plain connection of the HTTP/1.1 engine (`h1`): only the socket,
/// no task and no buffer.
struct RawIdle {
    stream: TcpStream,
    since: Instant,
}

type RawShard = Mutex<HashMap<SocketAddr, Vec<RawIdle>, ahash::RandomState>>;

pub struct H1Pool {
    idle: Mutex<HashMap<Key, Vec<Idle>, ahash::RandomState>>,
    /// The HTTP/1.1 engine's idle connections to plain backends, one list per
    /// core ([`crate::cores`]): a socket stays with the core whose reactor
    /// registered it, and each core locks only its own. Each keeps its share
    /// of `max_idle` (rounded up), so the cores together keep about as many
    /// idle sockets, and file descriptors, as one did.
    raw: Box<[RawShard]>,
    /// One shared HTTP/2 connection per key (TLS backends that chose h2).
    h2: Mutex<HashMap<Key, http2::SendRequest<ReqBody>, ahash::RandomState>>,
    /// When a TLS failure was last logged per key, so a broken backend under
    /// load logs once in a while, not per request.
    tls_logged: Mutex<HashMap<Key, Instant, ahash::RandomState>>,
    /// One connection attempt at a time per TLS key until the backend's
    /// protocol is known (see `checkout`).
    connecting: Mutex<HashMap<Key, Arc<tokio::sync::Mutex<()>>, ahash::RandomState>>,
    /// TLS keys whose backend chose HTTP/1.1.
    h1_keys: Mutex<std::collections::HashSet<Key, ahash::RandomState>>,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_idle: usize,
    /// Releases since the last sweep of entries nothing asks for any more (a
    /// backend gone, a route's TLS policy changed).
    releases: std::sync::atomic::AtomicU32,
    /// Backends leaving (draining, or gone from the table): a connection to
    /// one is closed when released instead of pooled, so an application that
    /// waits for its keep-alive connections to close before it exits is not
    /// kept waiting by Wharf. Read without a lock on every release; empty
    /// (one pointer load and a length check) in the common case.
    retired: arc_swap::ArcSwap<std::collections::HashSet<SocketAddr, ahash::RandomState>>,
}

/// Every this many releases, closed and expired idle entries are swept.
const SWEEP_EVERY: u32 = 4096;

/// A connection checked out of the pool. Dropped, it goes back to the idle
/// list when its exchange is complete ([`Pooled::release`]: the response read
/// to its end) or when no request was handed to it (the client reset the
/// request before it was written: HTTP/2 rapid reset must not cost a backend
/// connection each time); dropped mid-exchange, it closes.
pub struct Pooled {
    tx: Option<Tx>,
    key: Key,
    pool: Arc<H1Pool>,
    /// Reused from the idle list (a failure before sending may be retried on a
    /// fresh connection).
    pub reused: bool,
    /// Reused after at least [`STALE_RISK`] idle: the backend may have closed
    /// it just as the request went out, so a safe request keeps a copy.
    pub stale_risk: bool,
    /// A request was handed to the connection.
    dispatched: bool,
    /// The response was read to its end.
    finished: bool,
}

/// An idle connection reused after this long may have been closed by the
/// backend meanwhile (RFC 9112 §9.3.1).
const STALE_RISK: Duration = Duration::from_secs(1);

/// How long a connection released at the end of its response may take to
/// want the next request (the request body still being written, or hyper's
/// dispatcher not yet past the response) before it is closed instead of
/// pooled. An early response (404, 413) to a body the client is still
/// uploading would otherwise hand a busy connection to the next request.
const READY_WAIT: Duration = Duration::from_secs(1);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned lock only means another request panicked mid-push; the map
    // itself is still valid.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// An idle socket is still open and the backend sent nothing unasked: no
/// readiness since its last read (no system call), or a read that would block.
fn alive(s: &TcpStream) -> bool {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match s.poll_read_ready(&mut cx) {
        std::task::Poll::Pending => true,
        std::task::Poll::Ready(Err(_)) => false,
        std::task::Poll::Ready(Ok(())) => matches!(
            s.try_read(&mut [0u8; 1]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
        ),
    }
}

/// Logged at most this often per backend and TLS policy.
const TLS_LOG_EVERY: Duration = Duration::from_secs(10);

impl H1Pool {
    pub fn new(connect_timeout: Duration, idle_timeout: Duration, max_idle: usize) -> Arc<Self> {
        Arc::new(H1Pool {
            idle: Mutex::new(HashMap::default()),
            raw: (0..crate::cores::count())
                .map(|_| Mutex::new(HashMap::default()))
                .collect(),
            h2: Mutex::new(HashMap::default()),
            tls_logged: Mutex::new(HashMap::default()),
            connecting: Mutex::new(HashMap::default()),
            h1_keys: Mutex::new(Default::default()),
            connect_timeout,
            idle_timeout,
            max_idle,
            releases: std::sync::atomic::AtomicU32::new(0),
            retired: Default::default(),
        })
    }

    /// Backends no new request goes to (draining, or no longer in any route):
    /// their idle connections, HTTP/1.1 and shared HTTP/2, close now, and
    /// connections still busy with a request close when it ends. The set
    /// replaces the previous one (a backend that serves again is pooled again).
    pub fn retire(&self, leaving: std::collections::HashSet<SocketAddr, ahash::RandomState>) {
        if leaving.is_empty() && self.retired.load().is_empty() {
            return;
        }
        // The set first: a release racing this call either sees it (and closes
        // its connection) or pooled before the sweep below (which closes it).
        let leaving = Arc::new(leaving);
        self.retired.store(leaving.clone());
        // Dropped outside the lock: closing a connection is not free.
        let mut closed = Vec::new();
        lock(&self.idle).retain(|(addr, _), list| {
            let keep = !leaving.contains(addr);
            if !keep {
                closed.append(list);
            }
            keep
        });
        let mut raw = Vec::new();
        for shard in self.raw.iter() {
            lock(shard).retain(|addr, list| {
                let keep = !leaving.contains(addr);
                if !keep {
                    raw.append(list);
                }
                keep
            });
        }
        let mut shared = Vec::new();
        lock(&self.h2).retain(|(addr, _), tx| {
            let keep = !leaving.contains(addr);
            if !keep {
                shared.push(tx.clone());
            }
            keep
        });
        drop(closed);
        drop(raw);
        drop(shared);
    }

    fn is_retired(&self, addr: SocketAddr) -> bool {
        let retired = self.retired.load();
        !retired.is_empty() && retired.contains(&addr)
    }

    fn pop(&self, key: Key) -> Option<Idle> {
        lock(&self.idle).get_mut(&key).and_then(Vec::pop)
    }

    /// An idle connection to `addr` (over TLS with `tls`) that is still open,
    /// else a new one.
    pub async fn checkout(
        self: &Arc<Self>,
        addr: SocketAddr,
        tls: Option<&BackendTls>,
    ) -> Result<Pooled, ProxyError> {
        let key = (addr, tls.map_or(0, |t| t.key));
        // While a TLS backend may speak HTTP/2, one request at a time makes the
        // connection and the others wait for it and share it, instead of a
        // burst opening a connection each. Once the backend chose HTTP/1.1,
        // connections are made in parallel as usual.
        let mut _single = None;
        if tls.is_some() {
            if let Some(shared) = self.shared_h2(key) {
                return Ok(shared);
            }
            if !lock(&self.h1_keys).contains(&key) {
                let gate = lock(&self.connecting).entry(key).or_default().clone();
                _single = Some(gate.lock_owned().await);
                if let Some(shared) = self.shared_h2(key) {
                    return Ok(shared);
                }
            }
        }
        while let Some(c) = self.pop(key) {
            let idle = c.since.elapsed();
            // Only connections that wanted a request are pooled, so one that
            // does not now is closed or broken: skipped, never waited for.
            if c.tx.is_closed() || !c.tx.is_ready() || idle >= self.idle_timeout {
                continue;
            }
            let mut p = self.pooled(Tx::H1(c.tx), key, true);
            p.stale_risk = idle >= STALE_RISK;
            return Ok(p);
        }
        // Boxed: the connect future (TCP, TLS and HTTP/2 handshakes) is large
        // and needed only when no pooled connection is; inline it would be
        // part of, and copied with, every request's future.
        Box::pin(self.connect(addr, tls)).await
    }

    /// The shared HTTP/2 connection of `key`, if one is open.
    fn shared_h2(self: &Arc<Self>, key: Key) -> Option<Pooled> {
        let shared = lock(&self.h2).get(&key).cloned()?;
        if shared.is_closed() {
            lock(&self.h2).remove(&key);
            return None;
        }
        Some(self.pooled(Tx::H2(shared), key, true))
    }

    /// The backend (over TLS with `tls`) is known to have chosen HTTP/1.1, so it
    /// never sends an HTTP/2 GOAWAY.
    pub fn speaks_h1(&self, addr: SocketAddr, tls: Option<&BackendTls>) -> bool {
        lock(&self.h1_keys).contains(&(addr, tls.map_or(0, |t| t.key)))
    }

    /// Forgets the shared HTTP/2 connection of a backend (it sent GOAWAY).
    pub fn forget_h2(&self, addr: SocketAddr, tls: Option<&BackendTls>) {
        lock(&self.h2).remove(&(addr, tls.map_or(0, |t| t.key)));
    }

    fn pooled(self: &Arc<Self>, tx: Tx, key: Key, reused: bool) -> Pooled {
        Pooled {
            tx: Some(tx),
            key,
            pool: self.clone(),
            reused,
            stale_risk: false,
            dispatched: false,
            finished: false,
        }
    }

    async fn tcp(&self, addr: SocketAddr) -> Result<TcpStream, ProxyError> {
        let stream =
            match tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return Err(ProxyError::Connect(e.to_string())),
                Err(_) => return Err(ProxyError::Connect("connect timeout".into())),
            };
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    /// The TLS handshake, bounded by the connect timeout too (a backend that
    /// stalls its handshake costs no more than one that does not answer).
    async fn handshake(
        &self,
        addr: SocketAddr,
        tls: &BackendTls,
        config: Arc<tokio_rustls::rustls::ClientConfig>,
        stream: TcpStream,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, ProxyError> {
        let connector = tokio_rustls::TlsConnector::from(config);
        let done = tokio::time::timeout(
            self.connect_timeout,
            connector.connect(tls.server_name.clone(), stream),
        )
        .await;
        let error = match done {
            Ok(Ok(s)) => return Ok(s),
            Ok(Err(e)) => format!("TLS handshake failed: {e}"),
            Err(_) => "TLS handshake timed out".to_string(),
        };
        let key = (addr, tls.key);
        let now = Instant::now();
        let log = {
            let mut logged = lock(&self.tls_logged);
            let due = logged
                .get(&key)
                .is_none_or(|t| now.duration_since(*t) >= TLS_LOG_EVERY);
            if due {
                logged.insert(key, now);
            }
            due
        };
        if log {
            warn!(
                backend = %addr,
                server_name = ?tls.server_name,
                error = %error,
                "backend TLS: no connection (502; logged at most every 10s per backend)"
            );
        }
        Err(ProxyError::Connect(error))
    }

    /// A new connection, bypassing the idle list.
    pub async fn connect(
        self: &Arc<Self>,
        addr: SocketAddr,
        tls: Option<&BackendTls>,
    ) -> Result<Pooled, ProxyError> {
        let stream = self.tcp(addr).await?;
        let Some(tls) = tls else {
            let tx = h1_handshake(addr, TokioIo::new(stream), false).await?;
            return Ok(self.pooled(Tx::H1(tx), (addr, 0), false));
        };
        let key = (addr, tls.key);
        let stream = self
            .handshake(addr, tls, tls.config.clone(), stream)
            .await?;
        let h2 = stream.get_ref().1.alpn_protocol() == Some(wharf_tls::ALPN_H2);
        if !h2 {
            lock(&self.h1_keys).insert(key);
            let tx = h1_handshake(addr, TokioIo::new(stream), false).await?;
            return Ok(self.pooled(Tx::H1(tx), key, false));
        }
        let (tx, conn) = http2::Builder::new(TokioExecutor::new())
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ProxyError::Connect(format!("HTTP/2 handshake failed: {e}")))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(backend = %addr, error = %e, "upstream h2 connection ended");
            }
        });
        lock(&self.h2).insert(key, tx.clone());
        Ok(self.pooled(Tx::H2(tx), key, false))
    }

    /// A new HTTP/1.1 connection for an upgrade (WebSocket), never pooled: the
    /// tunnel takes it over. Over TLS it offers `http/1.1` only.
    pub async fn connect_upgrade(
        &self,
        addr: SocketAddr,
        tls: &BackendTls,
    ) -> Result<http1::SendRequest<ReqBody>, ProxyError> {
        let stream = self.tcp(addr).await?;
        let stream = self
            .handshake(addr, tls, tls.config_h1.clone(), stream)
            .await?;
        h1_handshake(addr, TokioIo::new(stream), true).await
    }

    /// Drops idle connections that are closed or past the idle timeout, and
    /// closed HTTP/2 connections, under keys nobody checks out any more.
    fn sweep(&self) {
        let idle_timeout = self.idle_timeout;
        lock(&self.idle).retain(|_, list| {
            list.retain(|c| !c.tx.is_closed() && c.since.elapsed() < idle_timeout);
            !list.is_empty()
        });
        for shard in self.raw.iter() {
            lock(shard).retain(|_, list| {
                list.retain(|c| c.since.elapsed() < idle_timeout && alive(&c.stream));
                !list.is_empty()
            });
        }
        lock(&self.h2).retain(|_, tx| !tx.is_closed());
        lock(&self.tls_logged).retain(|_, t| t.elapsed() < TLS_LOG_EVERY);
        // Gates nobody holds or waits for.
        lock(&self.connecting).retain(|_, g| Arc::strong_count(g) > 1);
    }

    /// Puts an HTTP/1.1 connection back on its idle list once it wants the
    /// next request: at once when it does, else after waiting up to
    /// [`READY_WAIT`] off the request path; one that does not by then is
    /// closed.
    fn put_back(self: &Arc<Self>, key: Key, mut tx: http1::SendRequest<ReqBody>) {
        if tx.is_closed() {
            return;
        }
        if tx.is_ready() {
            self.push(key, tx);
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let pool = self.clone();
        rt.spawn(async move {
            if let Ok(Ok(())) = tokio::time::timeout(READY_WAIT, tx.ready()).await {
                pool.push(key, tx);
            }
        });
    }

    /// Counts a release and sweeps every [`SWEEP_EVERY`] of them.
    fn count_release(&self) {
        if self
            .releases
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            % SWEEP_EVERY
            == SWEEP_EVERY - 1
        {
            self.sweep();
        }
    }

    /// This core's idle list of engine connections.
    fn raw_shard(&self) -> &RawShard {
        match &*self.raw {
            [one] => one,
            shards => &shards[crate::cores::current() % shards.len()],
        }
    }

    /// A plain connection to `addr` for the HTTP/1.1 engine: the most recently
    /// used idle one that is still open, else a new one. Says whether it was
    /// reused, and whether it idled long enough that the backend may have
    /// closed it just as the request goes out (see [`STALE_RISK`]).
    pub(crate) async fn checkout_raw(
        &self,
        addr: SocketAddr,
    ) -> Result<(TcpStream, bool, bool), ProxyError> {
        loop {
            let Some(c) = lock(self.raw_shard()).get_mut(&addr).and_then(Vec::pop) else {
                break;
            };
            let idle = c.since.elapsed();
            if idle < self.idle_timeout && alive(&c.stream) {
                return Ok((c.stream, true, idle >= STALE_RISK));
            }
        }
        // Boxed: only a pointer in the request's future while a pooled
        // connection serves.
        Ok((Box::pin(self.tcp(addr)).await?, false, false))
    }

    /// A new plain connection to `addr` (a pooled one went stale).
    pub(crate) async fn connect_raw(&self, addr: SocketAddr) -> Result<TcpStream, ProxyError> {
        Box::pin(self.tcp(addr)).await
    }

    /// Pools an engine connection whose exchange ended cleanly.
    pub(crate) fn release_raw(&self, addr: SocketAddr, stream: TcpStream) {
        let item = RawIdle {
            stream,
            since: Instant::now(),
        };
        let max = self.max_idle.div_ceil(self.raw.len());
        self.pool_idle(self.raw_shard(), max, addr, addr, item);
    }

    /// Counts a release and puts `item` on `key`'s idle list, unless pooling
    /// is off or the backend `addr` is retired; a full list drops its oldest.
    fn pool_idle<K: std::hash::Hash + Eq, T>(
        &self,
        map: &Mutex<HashMap<K, Vec<T>, ahash::RandomState>>,
        max: usize,
        key: K,
        addr: SocketAddr,
        item: T,
    ) {
        self.count_release();
        if max == 0 {
            return;
        }
        let mut idle = lock(map);
        // Checked under the lock `retire` sweeps with (see there).
        if self.is_retired(addr) {
            return;
        }
        let list = idle.entry(key).or_default();
        if list.len() >= max {
            // Keep the most recently used; the oldest is likeliest to be closed.
            list.remove(0);
        }
        list.push(item);
    }

    fn push(&self, key: Key, tx: http1::SendRequest<ReqBody>) {
        let item = Idle {
            tx,
            since: Instant::now(),
        };
        self.pool_idle(&self.idle, self.max_idle, key, key.0, item);
    }

    /// Idle connections pooled for `addr` (tests).
    #[cfg(test)]
    fn idle_count(&self, addr: SocketAddr) -> usize {
        lock(&self.idle).get(&(addr, 0)).map_or(0, Vec::len)
    }
}

async fn h1_handshake<I>(
    addr: SocketAddr,
    io: TokioIo<I>,
    upgrades: bool,
) -> Result<http1::SendRequest<ReqBody>, ProxyError>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (tx, conn) = http1::Builder::new()
        // One flat buffer per write: cheaper than writev for small messages.
        .writev(false)
        .handshake(io)
        .await
        .map_err(|e| ProxyError::Connect(e.to_string()))?;
    tokio::spawn(async move {
        let r = if upgrades {
            conn.with_upgrades().await
        } else {
            conn.await
        };
        if let Err(e) = r {
            debug!(backend = %addr, error = %e, "upstream connection ended");
        }
    });
    Ok(tx)
}

impl Pooled {
    /// The connection's sending half (present until dropped).
    fn tx(&mut self) -> &mut Tx {
        // Invariant: `tx` is taken only in `drop`.
        self.tx
            .as_mut()
            .expect("a Pooled holds its connection until dropped")
    }

    pub fn is_h2(&self) -> bool {
        self.tx.as_ref().is_some_and(Tx::is_h2)
    }

    /// Sends a request (see [`Tx::try_send_request`]); from here on the
    /// connection is mid-exchange until [`Pooled::release`].
    pub fn try_send_request(
        &mut self,
        req: hyper::Request<ReqBody>,
    ) -> impl Future<Output = Sent> + '_ {
        self.dispatched = true;
        let sent = self.tx().try_send_request(req);
        async move {
            let r = sent.await;
            if let Err(e) = &r {
                if e.message().is_some() {
                    // Refused before any of it was written: still unused.
                    self.dispatched = false;
                }
            }
            r
        }
    }

    /// The response has been read to its end: the connection may be reused.
    pub fn release(mut self) {
        self.finished = true;
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if self.dispatched && !self.finished {
            // Mid-exchange (a half-read response, a cancelled request): the
            // connection closes with its sending half.
            return;
        }
        // HTTP/2: shared, never checked out exclusively.
        if let Some(Tx::H1(tx)) = self.tx.take() {
            self.pool.put_back(self.key, tx);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A backend that counts connections and answers every request head with
    /// an empty 200 (ignoring any body).
    async fn backend() -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let conns = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let c = conns.clone();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 65536];
                    let mut seen = Vec::new();
                    loop {
                        let n = match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        seen.extend_from_slice(&buf[..n]);
                        while let Some(i) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                            seen.drain(..i + 4);
                            let resp = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
                            if s.write_all(resp).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        (addr, conns)
    }

    #[tokio::test]
    async fn an_unsent_checkout_goes_back_to_the_pool() {
        let (addr, conns) = backend().await;
        let pool = H1Pool::new(Duration::from_secs(1), Duration::from_secs(4), 8);
        // One full exchange pools the connection.
        let mut p = pool.checkout(addr, None).await.unwrap();
        let req = hyper::Request::get("/")
            .header("host", "x")
            .body(Either::Right(Empty::new()))
            .unwrap();
        let resp = p.try_send_request(req).await.unwrap();
        assert!(http_body::Body::is_end_stream(resp.body()));
        p.release();
        tokio::task::yield_now().await;
        let settle = tokio::time::Instant::now();
        while pool.idle_count(addr) == 0 && settle.elapsed() < Duration::from_secs(2) {
            tokio::task::yield_now().await;
        }
        assert_eq!(pool.idle_count(addr), 1);
        // Checked out and dropped before a request was written (a client
        // reset): back in the pool, no new connection.
        for _ in 0..100 {
            let p = pool.checkout(addr, None).await.unwrap();
            assert!(p.reused);
            drop(p);
        }
        assert_eq!(pool.idle_count(addr), 1);
        assert_eq!(conns.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    /// One exchange on a checked-out connection, released at its end.
    async fn exchange(p: &mut Pooled) {
        let req = hyper::Request::get("/")
            .header("host", "x")
            .body(Either::Right(Empty::new()))
            .unwrap();
        let resp = p.try_send_request(req).await.unwrap();
        assert!(http_body::Body::is_end_stream(resp.body()));
    }

    async fn settle(pool: &H1Pool, addr: SocketAddr, want: usize) {
        let started = tokio::time::Instant::now();
        while pool.idle_count(addr) != want && started.elapsed() < Duration::from_secs(2) {
            tokio::task::yield_now().await;
        }
        assert_eq!(pool.idle_count(addr), want);
    }

    #[tokio::test]
    async fn a_retired_backend_keeps_no_idle_connection() {
        let (addr, conns) = backend().await;
        let pool = H1Pool::new(Duration::from_secs(1), Duration::from_secs(4), 8);
        let mut idle = pool.checkout(addr, None).await.unwrap();
        let mut busy = pool.checkout(addr, None).await.unwrap();
        exchange(&mut idle).await;
        idle.release();
        settle(&pool, addr, 1).await;
        // The backend drains while one request is still on its way.
        exchange(&mut busy).await;
        pool.retire([addr].into_iter().collect());
        assert_eq!(pool.idle_count(addr), 0);
        busy.release();
        tokio::task::yield_now().await;
        assert_eq!(pool.idle_count(addr), 0);
        // Serving again (the set replaced): pooled as before.
        pool.retire(Default::default());
        let mut p = pool.checkout(addr, None).await.unwrap();
        assert!(!p.reused);
        exchange(&mut p).await;
        p.release();
        settle(&pool, addr, 1).await;
        assert_eq!(conns.load(std::sync::atomic::Ordering::SeqCst), 3);
    }
}
