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

/// A request body to a backend: the client's, or none. A request without a body
/// is sent with `Empty`, so a copy of its head can be sent again on a retry.
pub type ReqBody = Either<Incoming, Empty<Bytes>>;

/// A connection's sending half: HTTP/1.1 (one request at a time, pooled) or
/// HTTP/2 (multiplexed, shared), as ALPN decided.
pub enum Tx {
    H1(http1::SendRequest<ReqBody>),
    H2(http2::SendRequest<ReqBody>),
}

impl Tx {
    pub fn is_closed(&self) -> bool {
        match self {
            Tx::H1(t) => t.is_closed(),
            Tx::H2(t) => t.is_closed(),
        }
    }

    pub fn is_h2(&self) -> bool {
        matches!(self, Tx::H2(_))
    }

    async fn ready(&mut self) -> bool {
        match self {
            Tx::H1(t) => t.is_ready() || t.ready().await.is_ok(),
            Tx::H2(t) => t.is_ready() || t.ready().await.is_ok(),
        }
    }

    /// Sends a request shaped for this connection's protocol; when none of it
    /// was written, the error hands it back.
    pub async fn try_send_request(
        &mut self,
        req: hyper::Request<ReqBody>,
    ) -> Result<hyper::Response<Incoming>, hyper::client::conn::TrySendError<hyper::Request<ReqBody>>>
    {
        match self {
            Tx::H1(t) => t.try_send_request(req).await,
            Tx::H2(t) => t.try_send_request(req).await,
        }
    }
}

/// A pool key: the backend and, for TLS, the route's policy (`0`: plain).
type Key = (SocketAddr, u64);

struct Idle {
    tx: http1::SendRequest<ReqBody>,
    since: Instant,
}

pub struct H1Pool {
    idle: Mutex<HashMap<Key, Vec<Idle>, ahash::RandomState>>,
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
}

/// Every this many releases, closed and expired idle entries are swept.
const SWEEP_EVERY: u32 = 4096;

/// A connection checked out of the pool; [`H1Pool::release`] puts it back.
pub struct Pooled {
    pub tx: Tx,
    key: Key,
    pool: Arc<H1Pool>,
    /// Reused from the idle list (a failure before sending may be retried on a
    /// fresh connection).
    pub reused: bool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned lock only means another request panicked mid-push; the map
    // itself is still valid.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Logged at most this often per backend and TLS policy.
const TLS_LOG_EVERY: Duration = Duration::from_secs(10);

impl H1Pool {
    pub fn new(connect_timeout: Duration, idle_timeout: Duration, max_idle: usize) -> Arc<Self> {
        Arc::new(H1Pool {
            idle: Mutex::new(HashMap::default()),
            h2: Mutex::new(HashMap::default()),
            tls_logged: Mutex::new(HashMap::default()),
            connecting: Mutex::new(HashMap::default()),
            h1_keys: Mutex::new(Default::default()),
            connect_timeout,
            idle_timeout,
            max_idle,
            releases: std::sync::atomic::AtomicU32::new(0),
        })
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
            if c.tx.is_closed() || c.since.elapsed() >= self.idle_timeout {
                continue;
            }
            // Released at the end of the body, the connection may need a moment
            // to finish the exchange before it wants the next request.
            let mut tx = Tx::H1(c.tx);
            if tx.ready().await {
                return Ok(self.pooled(tx, key, true));
            }
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
            tx,
            key,
            pool: self.clone(),
            reused,
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
        lock(&self.h2).retain(|_, tx| !tx.is_closed());
        lock(&self.tls_logged).retain(|_, t| t.elapsed() < TLS_LOG_EVERY);
        // Gates nobody holds or waits for.
        lock(&self.connecting).retain(|_, g| Arc::strong_count(g) > 1);
    }

    fn release(&self, conn: Pooled) {
        let Tx::H1(tx) = conn.tx else {
            // HTTP/2: shared, never checked out exclusively.
            return;
        };
        if self
            .releases
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            % SWEEP_EVERY
            == SWEEP_EVERY - 1
        {
            self.sweep();
        }
        if tx.is_closed() {
            return;
        }
        let mut idle = lock(&self.idle);
        let list = idle.entry(conn.key).or_default();
        if list.len() >= self.max_idle {
            // Keep the most recently used; the oldest is likeliest to be closed.
            list.remove(0);
        }
        list.push(Idle {
            tx,
            since: Instant::now(),
        });
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
    /// Returns the connection to the pool (call when the response has been read to
    /// its end).
    pub fn release(self) {
        let pool = self.pool.clone();
        pool.release(self);
    }
}
