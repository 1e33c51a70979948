//! The HTTP/1.1 upstream connection pool of the request path.
//!
//! hyper-util's general-purpose client spawns a task per request to notice when a
//! connection is idle again and keys its pool by a hashed URI; this pool does less:
//! a connection goes back to its backend's idle list when the response body has
//! been read to the end (the body wrapper does that), and checkout pops the most
//! recently used connection that is still open. Measured in docs/benchmarks.md.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::debug;

use crate::error::ProxyError;

/// A request body to a backend: the client's, or none. A request without a body
/// is sent with `Empty`, so a copy of its head can be sent again on a retry.
pub type ReqBody = Either<Incoming, Empty<Bytes>>;

type Sender = http1::SendRequest<ReqBody>;

struct Idle {
    tx: Sender,
    since: Instant,
}

pub struct H1Pool {
    idle: Mutex<HashMap<SocketAddr, Vec<Idle>, ahash::RandomState>>,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_idle: usize,
}

/// A connection checked out of the pool; [`H1Pool::release`] puts it back.
pub struct Pooled {
    pub tx: Sender,
    addr: SocketAddr,
    pool: Arc<H1Pool>,
    /// Reused from the idle list (a failure before sending may be retried on a
    /// fresh connection).
    pub reused: bool,
}

impl H1Pool {
    pub fn new(connect_timeout: Duration, idle_timeout: Duration, max_idle: usize) -> Arc<Self> {
        Arc::new(H1Pool {
            idle: Mutex::new(HashMap::default()),
            connect_timeout,
            idle_timeout,
            max_idle,
        })
    }

    fn pop(&self, addr: SocketAddr) -> Option<Idle> {
        // A poisoned lock only means another request panicked mid-push; the list
        // itself is still a valid Vec.
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.get_mut(&addr).and_then(Vec::pop)
    }

    /// An idle connection to `addr` that is still open, else a new one.
    pub async fn checkout(self: &Arc<Self>, addr: SocketAddr) -> Result<Pooled, ProxyError> {
        while let Some(mut c) = self.pop(addr) {
            if c.tx.is_closed() || c.since.elapsed() >= self.idle_timeout {
                continue;
            }
            // Released at the end of the body, the connection may need a moment
            // to finish the exchange before it wants the next request.
            if c.tx.is_ready() || c.tx.ready().await.is_ok() {
                return Ok(Pooled {
                    tx: c.tx,
                    addr,
                    pool: self.clone(),
                    reused: true,
                });
            }
        }
        self.connect(addr).await
    }

    /// A new connection, bypassing the idle list.
    pub async fn connect(self: &Arc<Self>, addr: SocketAddr) -> Result<Pooled, ProxyError> {
        let stream =
            match tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return Err(ProxyError::Connect(e.to_string())),
                Err(_) => return Err(ProxyError::Connect("connect timeout".into())),
            };
        let _ = stream.set_nodelay(true);
        let (tx, conn) = http1::Builder::new()
            // One flat buffer per write: cheaper than writev for small messages.
            .writev(false)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ProxyError::Connect(e.to_string()))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                debug!(backend = %addr, error = %e, "upstream connection ended");
            }
        });
        Ok(Pooled {
            tx,
            addr,
            pool: self.clone(),
            reused: false,
        })
    }

    fn release(&self, conn: Pooled) {
        if conn.tx.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.entry(conn.addr).or_default();
        if list.len() >= self.max_idle {
            // Keep the most recently used; the oldest is likeliest to be closed.
            list.remove(0);
        }
        list.push(Idle {
            tx: conn.tx,
            since: Instant::now(),
        });
    }
}

impl Pooled {
    /// Returns the connection to the pool (call when the response has been read to
    /// its end).
    pub fn release(self) {
        let pool = self.pool.clone();
        pool.release(self);
    }
}
