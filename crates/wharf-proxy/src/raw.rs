//! The hyper path's body-less GET and HEAD requests (HTTP/2 clients, and
//! HTTP/1.1 heads the engine declined) to plain HTTP/1.1 backends, sent on the
//! engine's raw pooled sockets from the request's own task.
//!
//! hyper's client costs such a request a dispatch channel, a task per backend
//! connection and a `HeaderMap` parse of every response head: ~15k of the 68k
//! instructions an HTTP/2 request took (docs/benchmarks.md, HTTP/2 counted).
//! Here the head is written from the request's map, the response head is
//! parsed once with the engine's parser ([`crate::h1::wire`]) and the body is
//! read with its framing straight from the socket, which goes back to the pool
//! when the body ends. The rules are the engine's and hyper's client's: a
//! reused connection that fails before any response byte is replaced once (a
//! request none of which was written, or a safe one that idled long enough to
//! be stale or has another backend to go to), interim responses are dropped, a
//! malformed head is a 502 counted against the backend.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::StatusCode;
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::error::ProxyError;
use crate::h1::wire::{self, Chunked, Field, Framing, Step};
use crate::h1::Resend;
use crate::pipeline::Failure;
use crate::pool::H1Pool;

/// Reads of a response head start this large.
const HEAD_CHUNK: usize = 4096;
/// Reads of a body bring up to this much.
const BODY_CHUNK: usize = 16 * 1024;

/// A failed attempt, classified as the hyper path classifies its client's.
pub(crate) struct RawFailure {
    pub failure: Failure,
    pub error: ProxyError,
}

enum Exchange {
    Failed(RawFailure),
    /// The connection failed before any response byte.
    Closed {
        written: bool,
    },
}

/// One attempt: `head` out on a pooled (or new) connection to `addr`, the
/// response head in.
pub(crate) async fn send(
    pool: &Arc<H1Pool>,
    addr: SocketAddr,
    head: &[u8],
    is_head: bool,
    resend: Resend,
) -> Result<(http::response::Parts, RawBody), RawFailure> {
    let connect_failed = |error| RawFailure {
        failure: Failure::Connect,
        error,
    };
    let (mut up, reused, stale_risk) = pool.checkout_raw(addr).await.map_err(connect_failed)?;
    let mut buf = BytesMut::new();
    let mut fields = Vec::new();
    match exchange(&mut up, head, &mut buf, &mut fields).await {
        Ok(resp) => Ok(answer(pool, addr, up, buf, &fields, &resp, is_head)),
        Err(Exchange::Failed(f)) => Err(f),
        Err(Exchange::Closed { written }) => {
            if reused && resend.again(written, stale_risk) {
                let mut fresh = pool.connect_raw(addr).await.map_err(connect_failed)?;
                buf.clear();
                return match exchange(&mut fresh, head, &mut buf, &mut fields).await {
                    Ok(resp) => Ok(answer(pool, addr, fresh, buf, &fields, &resp, is_head)),
                    Err(Exchange::Failed(f)) => Err(f),
                    Err(Exchange::Closed { written }) => Err(reset(written, false)),
                };
            }
            Err(reset(written, reused))
        }
    }
}

fn reset(written: bool, stale: bool) -> RawFailure {
    RawFailure {
        failure: Failure::Reset { written, stale },
        error: ProxyError::Upstream("backend closed the connection".into()),
    }
}

/// The request out, the final response head in (at the start of `buf`).
async fn exchange(
    up: &mut TcpStream,
    head: &[u8],
    buf: &mut BytesMut,
    fields: &mut Vec<Field>,
) -> Result<wire::RespHead, Exchange> {
    up.write_all(head)
        .await
        .map_err(|_| Exchange::Closed { written: false })?;
    loop {
        match wire::response_step(buf, fields) {
            Step::Interim(len) => {
                buf.advance(len);
                continue;
            }
            Step::Final(r) => return Ok(r),
            Step::Bad { failure, why } => {
                return Err(Exchange::Failed(RawFailure {
                    failure,
                    error: ProxyError::Upstream(why.into()),
                }))
            }
            Step::More => {}
        }
        buf.reserve(HEAD_CHUNK);
        match up.read_buf(buf).await {
            // Cut inside the head too: as hyper's client reports it (an
            // incomplete message), a reset after the request was written.
            Ok(0) | Err(_) => return Err(Exchange::Closed { written: true }),
            Ok(_) => {}
        }
    }
}

/// The response's head as hyper's client would give it, and its body.
fn answer(
    pool: &Arc<H1Pool>,
    addr: SocketAddr,
    up: TcpStream,
    mut buf: BytesMut,
    fields: &[Field],
    resp: &wire::RespHead,
    is_head: bool,
) -> (http::response::Parts, RawBody) {
    let raw = buf.split_to(resp.len).freeze();
    let mut parts = http::Response::new(()).into_parts().0;
    parts.status = StatusCode::from_u16(resp.code).unwrap_or(StatusCode::BAD_GATEWAY);
    parts.headers = wire::to_map_shared(&raw, fields);
    // hyper's client keeps a reason that is not the canonical one, and its
    // server writes it back (the engine does the same).
    let reason = &raw[resp.reason.0 as usize..resp.reason.1 as usize];
    if parts.status.canonical_reason().map(str::as_bytes) != Some(reason) {
        if let Ok(r) = hyper::ext::ReasonPhrase::try_from(reason) {
            parts.extensions.insert(r);
        }
    }
    let framing = if is_head || resp.code == 204 || resp.code == 304 {
        Framing::None
    } else {
        resp.body
    };
    let state = match framing {
        Framing::None => State::Length(0),
        Framing::Length(n) => State::Length(n),
        Framing::Chunked => State::Chunked(Chunked::plain()),
        Framing::Eof => State::Eof,
    };
    let body = RawBody {
        up: Some(up),
        buf,
        state,
        pool: pool.clone(),
        addr,
        keep: !resp.close && framing != Framing::Eof,
        ended: false,
    };
    (parts, body)
}

enum State {
    Length(u64),
    Chunked(Chunked),
    /// Until the backend closes.
    Eof,
}

/// A response body read from the backend's socket with its framing; the
/// socket goes back to the pool when the body has been read to its end (a
/// half-read connection is never reused, nor one that sent bytes past it).
pub(crate) struct RawBody {
    up: Option<TcpStream>,
    /// Read but not yet passed on. Frames are split off it, so they share
    /// its blocks instead of each holding a read's whole allocation.
    buf: BytesMut,
    state: State,
    pool: Arc<H1Pool>,
    addr: SocketAddr,
    /// The connection may be reused once the body ends.
    keep: bool,
    ended: bool,
}

impl RawBody {
    fn end(&mut self) {
        self.ended = true;
        if let Some(up) = self.up.take() {
            // Bytes past the body were never asked for.
            if self.keep && self.buf.is_empty() {
                self.pool.release_raw(self.addr, up);
            }
        }
        self.buf = BytesMut::new();
    }

    /// A chunked body's end, after its last data frame: the trailer fields
    /// as a frame of their own (as hyper's client passes them on; an HTTP/2
    /// client gets them as trailing HEADERS), or the end.
    fn finish_chunked(&mut self) -> Option<Frame<Bytes>> {
        let trailers = match &mut self.state {
            State::Chunked(dec) => std::mem::take(&mut dec.trailers),
            _ => Vec::new(),
        };
        self.end();
        wire::trailer_map(&trailers).map(Frame::trailers)
    }

    /// The next frame from what is buffered, if any; `None` asks for a read.
    fn frame(&mut self) -> Option<Result<Option<Frame<Bytes>>, io::Error>> {
        match &mut self.state {
            State::Length(0) => {
                self.end();
                Some(Ok(None))
            }
            State::Length(left) => {
                if self.buf.is_empty() {
                    return None;
                }
                let n = self
                    .buf
                    .len()
                    .min(usize::try_from(*left).unwrap_or(usize::MAX));
                let data = self.buf.split_to(n).freeze();
                *left -= n as u64;
                if *left == 0 {
                    self.end();
                }
                Some(Ok(Some(Frame::data(data))))
            }
            State::Eof => {
                if self.buf.is_empty() {
                    return None;
                }
                Some(Ok(Some(Frame::data(self.buf.split().freeze()))))
            }
            State::Chunked(dec) => {
                if dec.is_done() {
                    return Some(Ok(self.finish_chunked()));
                }
                if self.buf.is_empty() {
                    return None;
                }
                let mut out = Vec::new();
                let decoded = dec.decode(&self.buf, &mut out);
                let done = dec.is_done();
                let used = match decoded {
                    Ok(n) => n,
                    Err(e) => {
                        return Some(Err(io::Error::new(io::ErrorKind::InvalidData, e.0)));
                    }
                };
                self.buf.advance(used);
                if !out.is_empty() {
                    return Some(Ok(Some(Frame::data(Bytes::from(out)))));
                }
                if done {
                    return Some(Ok(self.finish_chunked()));
                }
                None
            }
        }
    }
}

impl Drop for RawBody {
    fn drop(&mut self) {
        // A body known to be empty may never be polled.
        if !self.ended && matches!(self.state, State::Length(0)) {
            self.end();
        }
    }
}

impl Body for RawBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        loop {
            if this.ended {
                return Poll::Ready(None);
            }
            match this.frame() {
                Some(Ok(Some(frame))) => return Poll::Ready(Some(Ok(frame))),
                Some(Ok(None)) => return Poll::Ready(None),
                Some(Err(e)) => {
                    this.keep = false;
                    this.end();
                    return Poll::Ready(Some(Err(e)));
                }
                None => {}
            }
            let Some(up) = this.up.as_mut() else {
                return Poll::Ready(None);
            };
            // A known remainder is read into room of its size, not 16 KiB.
            let room = match this.state {
                State::Length(left) => {
                    usize::try_from(left).map_or(BODY_CHUNK, |l| l.min(BODY_CHUNK))
                }
                _ => BODY_CHUNK,
            };
            this.buf.reserve(room);
            match up.try_read_buf(&mut this.buf) {
                Ok(0) => {
                    this.keep = false;
                    if matches!(this.state, State::Eof) {
                        this.end();
                        return Poll::Ready(None);
                    }
                    this.end();
                    return Poll::Ready(Some(Err(io::ErrorKind::UnexpectedEof.into())));
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if let Err(e) = ready!(up.poll_read_ready(cx)) {
                        this.keep = false;
                        this.end();
                        return Poll::Ready(Some(Err(e)));
                    }
                }
                Err(e) => {
                    this.keep = false;
                    this.end();
                    return Poll::Ready(Some(Err(e)));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended || matches!(self.state, State::Length(0))
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            State::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}
