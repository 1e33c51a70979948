//! The response body type: the backend's body streamed through (never buffered),
//! holding the backend's in-flight count until the last byte, or a small body of
//! our own.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use wharf_table::InflightGuard;

use crate::access::Record;
use crate::pool::Pooled;
use crate::raw::RawBody;

/// Where a backend's body comes from: hyper's client, or the raw pooled
/// socket of a request the hyper path sent itself ([`crate::raw`]).
enum Source {
    Hyper(Incoming),
    Raw(RawBody),
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub type ProxyBody = Either<UpstreamBody, Full<Bytes>>;

/// A backend's response body plus the guard that counts it as in flight and, for
/// pooled HTTP/1.1, the connection, which goes back to the pool only once the
/// body has been read to its end (a half-read connection is never reused).
///
/// With the access log on it also carries the request's record, counts the body
/// bytes passed on and sends the record when the body is dropped: after its last
/// frame, or abandoned when the client went away.
pub struct UpstreamBody {
    inner: Source,
    _guard: InflightGuard,
    conn: Option<Pooled>,
    done: bool,
    log: Option<Box<Record>>,
}

impl UpstreamBody {
    pub fn new(inner: Incoming, guard: InflightGuard, conn: Option<Pooled>) -> Self {
        let done = inner.is_end_stream();
        UpstreamBody {
            inner: Source::Hyper(inner),
            _guard: guard,
            conn,
            done,
            log: None,
        }
    }

    /// A body read from a raw pooled socket, which it returns to the pool
    /// itself at its end.
    pub(crate) fn raw(inner: RawBody, guard: InflightGuard) -> Self {
        UpstreamBody {
            inner: Source::Raw(inner),
            _guard: guard,
            conn: None,
            done: false,
            log: None,
        }
    }

    /// Sends `rec` to the access log when the body ends (see `access.rs`).
    pub(crate) fn log_on_end(&mut self, rec: Box<Record>) {
        self.log = Some(rec);
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        if self.done {
            if let Some(c) = self.conn.take() {
                c.release();
            }
        }
        if let Some(rec) = self.log.take() {
            rec.finish();
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    #[inline]
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = match &mut self.inner {
            Source::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(BoxError::from),
            Source::Raw(b) => Pin::new(b).poll_frame(cx).map_err(BoxError::from),
        };
        match &polled {
            Poll::Ready(None) => self.done = true,
            Poll::Ready(Some(Ok(frame))) => {
                self.done = self.is_end_stream();
                if let (Some(rec), Some(data)) = (self.log.as_deref_mut(), frame.data_ref()) {
                    rec.bytes += data.len() as u64;
                }
            }
            _ => {}
        }
        polled
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Source::Hyper(b) => b.is_end_stream(),
            Source::Raw(b) => b.is_end_stream(),
        }
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Source::Hyper(b) => b.size_hint(),
            Source::Raw(b) => b.size_hint(),
        }
    }
}

/// A client's request body: hyper's (HTTP/1.1 the engine declined, h2c
/// upgrades) or Wharf's own HTTP/2 server's ([`crate::http2`]).
#[derive(Debug)]
pub enum InBody {
    Hyper(Incoming),
    H2(crate::http2::RecvBody),
}

impl Body for InBody {
    type Data = Bytes;
    type Error = BoxError;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            InBody::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(BoxError::from),
            InBody::H2(b) => Pin::new(b).poll_frame(cx).map_err(BoxError::from),
        }
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        match self {
            InBody::Hyper(b) => b.is_end_stream(),
            InBody::H2(b) => b.is_end_stream(),
        }
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        match self {
            InBody::Hyper(b) => b.size_hint(),
            InBody::H2(b) => b.size_hint(),
        }
    }
}

/// A small body of our own (redirects, errors).
pub fn full(b: impl Into<Bytes>) -> ProxyBody {
    Either::Right(Full::new(b.into()))
}
