//! The data plane: listeners, the PROXY protocol, the hyper server and pooled
//! client, forwarding headers, and the one error-to-status function.
//!
//! It reads the routing table and nothing else of the control plane: it must never
//! link Docker, ACME or DNS clients, and never block or lock on the request path.
//! TLS entrypoints take a ready rustls `ServerConfig` (its resolver reads the
//! certificate store); ACME reaches the request path only through the
//! [`Http01Responder`] hook.

mod access;
mod affinity;
mod body;
mod cores;
mod error;
mod forward;
mod h1;
mod headers;
mod http2;
mod idle;
mod listener;
mod middleware;
mod pipeline;
mod pool;
pub mod proxy_protocol;
mod raw;
mod tunnel;

/// The HTTP/1.1 engine's wire functions and the HTTP/2 server's HPACK and
/// frames, for the fuzz targets only.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::h1::wire::fuzz_chunked as chunked;
    pub use crate::h1::wire::fuzz_request_round_trip as request_round_trip;
    pub use crate::h1::wire::fuzz_response_round_trip as response_round_trip;
    pub use crate::http2::fuzz_connection as h2_connection;
    pub use crate::http2::fuzz_hpack as hpack;
}

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use ipnet::IpNet;

pub use access::{AccessFormat, AccessLog, AccessSender};
pub use body::ProxyBody;
pub use cores::Cores;
pub use error::ProxyError;
pub use forward::{Forwarder, Retirement};
pub use listener::{bind, Entrypoint};
pub use wharf_tls::{Http01Answer, Http01Responder, NoHttp01};

pub type SharedTable = Arc<ArcSwap<wharf_table::Table>>;

/// An entrypoint's settings, as the proxy needs them.
#[derive(Debug, Clone)]
pub struct ListenerSettings {
    pub name: String,
    pub address: SocketAddr,
    pub tls: bool,
    pub redirect_https: bool,
    pub proxy_protocol: Option<Vec<IpNet>>,
    pub forwarded_trusted: Vec<IpNet>,
    pub http2: bool,
    pub header_read_timeout: Duration,
    pub max_header_size: usize,
    pub max_headers: usize,
    /// Connections open now, by protocol (`wharf_open_connections`).
    pub open: Arc<OpenConnections>,
    /// The slots of this entrypoint's connection cap (`max_connections`;
    /// `None`: no cap), shared by every core's accept loop, and the
    /// process-wide slots shared by every entrypoint (`[runtime]
    /// max_connections`); a connection is accepted only with a slot of each.
    pub own_slots: Option<Arc<tokio::sync::Semaphore>>,
    pub global_slots: Option<Arc<tokio::sync::Semaphore>>,
    /// No request started for this long: close (GOAWAY on HTTP/2).
    pub idle_timeout: Duration,
    /// Close gracefully after this long (zero: never).
    pub max_connection_age: Duration,
    /// A write to the client, or a request body, stalled this long ends it.
    pub client_timeout: Duration,
    /// An upgraded connection silent both ways this long is closed.
    pub tunnel_timeout: Duration,
    /// HTTP/1.1 requests go through Wharf's own engine (`h1`) where it serves
    /// them; off, hyper serves every request (`WHARF_HTTP1_ENGINE=hyper`, for
    /// comparisons).
    pub h1_engine: bool,
    /// HTTP/2 clients are served by Wharf's own HTTP/2 server (`http2`);
    /// off, by hyper's (`WHARF_HTTP2_ENGINE=hyper`, for comparisons).
    pub h2_engine: bool,
}

/// Open client connections of one entrypoint, by protocol: `http` (plain:
/// HTTP/1.1 or h2c), `https` (TLS, HTTP/1.1) and `h2` (TLS, HTTP/2 by ALPN).
#[derive(Debug, Default)]
pub struct OpenConnections {
    pub http: std::sync::atomic::AtomicI64,
    pub https: std::sync::atomic::AtomicI64,
    pub h2: std::sync::atomic::AtomicI64,
}

impl OpenConnections {
    /// `(protocol, open now)` for each protocol.
    pub fn snapshot(&self) -> [(&'static str, i64); 3] {
        use std::sync::atomic::Ordering::Relaxed;
        [
            ("http", self.http.load(Relaxed)),
            ("https", self.https.load(Relaxed)),
            ("h2", self.h2.load(Relaxed)),
        ]
    }
}

/// How the proxy talks to backends.
#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_idle_per_backend: usize,
}
