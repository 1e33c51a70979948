//! Wharf's own HTTP/2 server (RFC 9113): the connection's frames, HPACK and
//! flow control on the connection's one task, each stream's request running
//! as a future that task polls when it is woken. No task per stream, no
//! channel per stream, and no buffer held while the connection is idle
//! (docs/architecture.md, HTTP/2).
//!
//! What it serves: requests with and without bodies, trailers both ways,
//! `Expect: 100-continue`, HEAD, and every route feature (the request goes
//! through [`crate::Forwarder::handle`] like hyper's). What it refuses, as
//! RFC 9113 says: malformed requests (stream reset), protocol and
//! flow-control violations (GOAWAY), streams above the advertised limit
//! (REFUSED_STREAM), header lists above `max_header_size` (431), and a header
//! block past that size plus a margin (GOAWAY, the CONTINUATION flood).
//! Extended CONNECT (RFC 8441) is not offered, and no stream is pushed.

mod hpack;
mod huffman_table;
mod recv;

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, Uri, Version};
use http_body::Body;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};
use tracing::debug;

use crate::body::{InBody, ProxyBody};
use hpack::{Field, Pseudo};
pub use recv::RecvBody;
use recv::{Ready, StreamWaker, Woken};

/// The client connection preface (RFC 9113 §3.4).
pub(crate) const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Frame types (RFC 9113 §6).
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const PRIORITY: u8 = 0x2;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PUSH_PROMISE: u8 = 0x5;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;

/// Flags.
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY_FLAG: u8 = 0x20;

/// Error codes (RFC 9113 §7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub(crate) enum Reason {
    NoError = 0x0,
    Protocol = 0x1,
    Internal = 0x2,
    FlowControl = 0x3,
    StreamClosed = 0x5,
    FrameSize = 0x6,
    RefusedStream = 0x7,
    Compression = 0x9,
    EnhanceYourCalm = 0xb,
}

/// The largest frame payload Wharf accepts (SETTINGS_MAX_FRAME_SIZE left at
/// its initial value).
const MAX_FRAME: usize = 16_384;
/// Streams a client may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS).
pub(crate) const MAX_STREAMS: usize = 256;
/// What a client may send on one stream before Wharf reads it
/// (SETTINGS_INITIAL_WINDOW_SIZE), and on the connection as a whole: the
/// most request body the connection buffers. hyper's server used the same.
const STREAM_WINDOW: usize = 1024 * 1024;
const CONN_WINDOW: usize = 1024 * 1024;
/// The initial window of RFC 9113 §6.9.2, before SETTINGS say otherwise.
const DEFAULT_WINDOW: i64 = 65_535;
const MAX_WINDOW: i64 = (1 << 31) - 1;
/// Output past this is written before more is made (responses, and the
/// answers to a client's PINGs and SETTINGS: a client that does not read
/// stops being read).
const HIGH_WATER: usize = 16 * 1024;
/// A header block (HEADERS and CONTINUATION) may be this much larger than
/// `max_header_size` before the connection is closed instead of answered 431.
const BLOCK_SLACK: usize = 16 * 1024;
/// Reads go into a per-thread buffer of this size; only a frame cut short is
/// kept by the connection.
const READ_CHUNK: usize = 16 * 1024;
/// Keep-alive pings (hyper's settings, which this server replaces).
const PING_EVERY: Duration = Duration::from_secs(30);
const PING_TIMEOUT: Duration = Duration::from_secs(20);

/// What an entrypoint sets for its HTTP/2 connections.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    /// SETTINGS_MAX_HEADER_LIST_SIZE, and the 431 threshold.
    pub max_header_list: usize,
    /// The first request must start within this (`header_read_timeout`).
    pub first_request: Duration,
    /// No request started for this long: GOAWAY (`idle_timeout`).
    pub idle_timeout: Duration,
    /// GOAWAY at this time (`max_connection_age`).
    pub retire_at: Option<Instant>,
}

/// A stream's request, handled.
pub(crate) type Handling = Pin<Box<dyn Future<Output = Response<ProxyBody>> + Send>>;

/// A connection-level failure: the GOAWAY's code, or the transport's error.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnError {
    #[error("HTTP/2 protocol error ({0:?}): {1}")]
    Protocol(Reason, &'static str),
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error("no request within header_read_timeout")]
    NoRequest,
    #[error("a keep-alive ping went unanswered")]
    PingTimeout,
    #[error("the client reset {resets} of {requests} requests before their response")]
    Resets { resets: u64, requests: u64 },
}

/// A connection where at least this many requests, and at least half of all
/// its requests, were reset by the client before their response head is
/// closed (Envoy's premature-reset rule; HTTP/2 "rapid reset", CVE-2023-44487):
/// each such request may have cost a backend connection. A stream reset in
/// the same read as its HEADERS counts too, though its request never started.
const EARLY_RESETS_MAX: u64 = 64;

fn proto(why: &'static str) -> ConnError {
    ConnError::Protocol(Reason::Protocol, why)
}

thread_local! {
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; READ_CHUNK].into_boxed_slice());
}

enum Resp {
    Waiting(Handling),
    Body {
        /// Boxed: a stream's state is kept in a list whose room an idle
        /// connection keeps, and the body is most of it (288 bytes).
        body: Box<ProxyBody>,
        /// Received from the body, not yet framed (the windows were short).
        pending: Bytes,
    },
    Done,
}

struct Stream {
    id: u32,
    waker: Waker,
    resp: Resp,
    /// The request body's state, when the request has a body.
    body: Option<Arc<recv::Shared>>,
    /// The client may still send on this stream (no END_STREAM yet).
    recv_open: bool,
    /// What the client may still send on this stream.
    recv_window: i64,
    /// Read by the body, not yet handed back as WINDOW_UPDATE.
    recv_credit: usize,
    /// `content-length` still to come.
    remaining: Option<u64>,
    send_window: i64,
    /// A HEAD request: the response has no body.
    head: bool,
    /// Waits for window or for output room.
    blocked: bool,
}

/// A header block waiting for its CONTINUATION frames.
struct Block {
    id: u32,
    end_stream: bool,
    bytes: Vec<u8>,
    /// It must be complete by then (`header_read_timeout` from its start).
    by: Instant,
}

#[derive(PartialEq, Eq)]
enum Phase {
    /// Reading the client's preface.
    Preface,
    /// The preface read; the first frame must be SETTINGS.
    FirstSettings,
    Open,
}

/// One HTTP/2 connection, served until it closes.
pub(crate) struct Connection<I, F> {
    io: I,
    call: F,
    cfg: Config,
    phase: Phase,
    /// The start of a frame cut short by the last read.
    rbuf: Vec<u8>,
    /// Frames not yet written; `written` of them are.
    wbuf: Vec<u8>,
    written: usize,
    need_flush: bool,
    decoder: hpack::Decoder,
    block: Option<Block>,
    streams: Vec<Stream>,
    ready: Arc<Ready>,
    woken: Woken,
    /// The highest stream the client opened.
    last_id: u32,
    send_window: i64,
    recv_window: i64,
    recv_credit: usize,
    peer_initial_window: i64,
    peer_max_frame: usize,
    /// GOAWAY was sent (draining, or an error).
    goaway: Option<Reason>,
    /// The client closed its side: nothing more is read or answered.
    peer_done: bool,
    /// The client sent GOAWAY: it opens no more streams.
    peer_goaway: bool,
    /// Requests started, and at the last idle check.
    started: u64,
    /// Requests the client reset before their response head.
    early_resets: u64,
    seen_started: u64,
    quiet_ticks: u8,
    /// Frames read, and at the last ping check.
    frames: u64,
    frames_at_check: u64,
    ping_sent: Option<Instant>,
    timer: Pin<Box<Sleep>>,
    next_idle: Instant,
    next_ping: Instant,
    first_by: Option<Instant>,
}

fn frame_head(out: &mut Vec<u8>, len: usize, ty: u8, flags: u8, id: u32) {
    out.extend_from_slice(&head_bytes(len, ty, flags, id));
}

/// A frame header's nine bytes (RFC 9113 §4.1).
fn head_bytes(len: usize, ty: u8, flags: u8, id: u32) -> [u8; 9] {
    let [_, l0, l1, l2] = (len as u32).to_be_bytes();
    let [i0, i1, i2, i3] = id.to_be_bytes();
    [l0, l1, l2, ty, flags, i0, i1, i2, i3]
}

fn rst(out: &mut Vec<u8>, id: u32, reason: Reason) {
    frame_head(out, 4, RST_STREAM, 0, id);
    out.extend_from_slice(&(reason as u32).to_be_bytes());
}

fn window_update(out: &mut Vec<u8>, id: u32, n: usize) {
    frame_head(out, 4, WINDOW_UPDATE, 0, id);
    out.extend_from_slice(&(n as u32).to_be_bytes());
}

/// A header block as HEADERS and, past `max_frame`, CONTINUATION frames.
fn put_block(
    out: &mut Vec<u8>,
    id: u32,
    end_stream: bool,
    max_frame: usize,
    encode: impl FnOnce(&mut Vec<u8>),
) {
    let es = if end_stream { END_STREAM } else { 0 };
    let start = out.len();
    out.extend_from_slice(&[0; 9]);
    encode(out);
    let len = out.len() - start - 9;
    if len <= max_frame {
        out[start..start + 9].copy_from_slice(&head_bytes(len, HEADERS, es | END_HEADERS, id));
        return;
    }
    let block = out.split_off(start + 9);
    out.truncate(start);
    let mut chunks = block.chunks(max_frame).peekable();
    let mut ty = HEADERS;
    let mut flags = es;
    while let Some(c) = chunks.next() {
        if chunks.peek().is_none() {
            flags |= END_HEADERS;
        }
        frame_head(out, c.len(), ty, flags, id);
        out.extend_from_slice(c);
        (ty, flags) = (CONTINUATION, 0);
    }
}

impl<I, F> Connection<I, F>
where
    I: AsyncRead + AsyncWrite + Unpin,
    F: FnMut(Request<InBody>) -> Handling,
{
    /// `prefix`: bytes already read from `io` (the start of the preface, when
    /// the HTTP/1.1 engine saw it first).
    pub(crate) fn new(io: I, prefix: &[u8], cfg: Config, call: F) -> Self {
        let now = Instant::now();
        let tick = (cfg.idle_timeout / 4).max(Duration::from_millis(10));
        let first_by = now + cfg.first_request;
        let mut c = Connection {
            io,
            call,
            phase: Phase::Preface,
            rbuf: prefix.to_vec(),
            wbuf: Vec::new(),
            written: 0,
            need_flush: false,
            decoder: hpack::Decoder::default(),
            block: None,
            streams: Vec::new(),
            ready: Arc::default(),
            woken: Woken::default(),
            last_id: 0,
            send_window: DEFAULT_WINDOW,
            recv_window: CONN_WINDOW as i64,
            recv_credit: 0,
            peer_initial_window: DEFAULT_WINDOW,
            peer_max_frame: MAX_FRAME,
            goaway: None,
            peer_done: false,
            peer_goaway: false,
            started: 0,
            early_resets: 0,
            seen_started: 0,
            quiet_ticks: 0,
            frames: 0,
            frames_at_check: 0,
            ping_sent: None,
            timer: Box::pin(tokio::time::sleep_until(first_by.min(now + tick))),
            next_idle: now + tick,
            next_ping: now + PING_EVERY,
            first_by: Some(first_by),
            cfg,
        };
        c.server_preface();
        c
    }

    /// SETTINGS, and the connection window raised to [`CONN_WINDOW`].
    fn server_preface(&mut self) {
        let out = &mut self.wbuf;
        let settings: [(u16, u32); 3] = [
            (0x3, MAX_STREAMS as u32),
            (0x4, STREAM_WINDOW as u32),
            (
                0x6,
                u32::try_from(self.cfg.max_header_list).unwrap_or(u32::MAX),
            ),
        ];
        frame_head(out, settings.len() * 6, SETTINGS, 0, 0);
        for (id, v) in settings {
            out.extend_from_slice(&id.to_be_bytes());
            out.extend_from_slice(&v.to_be_bytes());
        }
        window_update(out, 0, CONN_WINDOW - DEFAULT_WINDOW as usize);
    }

    /// Starts a graceful close: GOAWAY, the streams already open finish.
    pub(crate) fn graceful_shutdown(&mut self) {
        self.go_away(Reason::NoError);
    }

    /// GOAWAY with `reason`: once, except that an error after a graceful
    /// GOAWAY sends a second one with the error's code.
    fn go_away(&mut self, reason: Reason) {
        match self.goaway {
            None => {}
            Some(Reason::NoError) if reason != Reason::NoError => {}
            Some(_) => return,
        }
        self.goaway = Some(reason);
        frame_head(&mut self.wbuf, 8, GOAWAY, 0, 0);
        self.wbuf.extend_from_slice(&self.last_id.to_be_bytes());
        self.wbuf.extend_from_slice(&(reason as u32).to_be_bytes());
    }

    fn reading(&self) -> bool {
        !self.peer_done && !matches!(self.goaway, Some(r) if r != Reason::NoError)
    }

    fn poll_conn(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ConnError>> {
        self.ready.register(cx.waker());
        crate::h1::spare::ensure(&mut self.wbuf);
        loop {
            let mut progress = self.poll_write(cx)?;
            if self.reading() && self.wbuf.len() < HIGH_WATER {
                match self.poll_read(cx) {
                    Ok(p) => progress |= p,
                    Err(ConnError::Protocol(reason, why)) => {
                        debug!(?reason, why, "HTTP/2 connection error; GOAWAY");
                        self.go_away(reason);
                        self.drop_streams();
                        progress = true;
                    }
                    Err(e @ ConnError::Resets { .. }) => {
                        // Closed at once: GOAWAY, and the streams dropped.
                        self.go_away(Reason::EnhanceYourCalm);
                        self.drop_streams();
                        return Poll::Ready(Err(e));
                    }
                    Err(e) => return Poll::Ready(Err(e)),
                }
            }
            progress |= self.poll_streams();
            self.give_credit();
            if self.timer.as_mut().poll(cx).is_ready() {
                if let Err(e) = self.tick() {
                    if let ConnError::Protocol(reason, _) = e {
                        // Written by the close (`finish`).
                        self.go_away(reason);
                        self.drop_streams();
                    }
                    return Poll::Ready(Err(e));
                }
                progress = true;
            }
            // A header block left open needs no waiting for: its stream is
            // above the GOAWAY's last one, or already gone.
            let done = self.streams.is_empty()
                && (self.goaway.is_some() || self.peer_done || self.peer_goaway);
            if done && self.written == self.wbuf.len() && !self.need_flush {
                if let Some(reason) = self.goaway.filter(|r| *r != Reason::NoError) {
                    return Poll::Ready(Err(ConnError::Protocol(reason, "GOAWAY sent")));
                }
                return Poll::Ready(Ok(()));
            }
            // Output made after this round's write (credit, a stream's
            // frames) is written now, or waits on the socket's waker.
            if !progress && self.written < self.wbuf.len() {
                progress = self.poll_write(cx)?;
            }
            if !progress {
                // An idle connection keeps no output buffer.
                if self.wbuf.is_empty() {
                    crate::h1::spare::give(std::mem::take(&mut self.wbuf));
                }
                return Poll::Pending;
            }
        }
    }

    /// Writes what is buffered, then flushes; true when anything was written.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Result<bool, io::Error> {
        let mut progress = false;
        while self.written < self.wbuf.len() {
            match Pin::new(&mut self.io).poll_write(cx, &self.wbuf[self.written..]) {
                Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                Poll::Ready(Ok(n)) => {
                    self.written += n;
                    progress = true;
                }
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => return Ok(progress),
            }
        }
        if self.written > 0 {
            self.wbuf.clear();
            self.written = 0;
            self.need_flush = true;
            // Room for more output: streams waiting for it go on (one
            // still short of window waits again).
            for s in &mut self.streams {
                if s.blocked {
                    s.blocked = false;
                    self.woken.streams.push(s.id);
                }
            }
        }
        if self.need_flush {
            match Pin::new(&mut self.io).poll_flush(cx) {
                Poll::Ready(Ok(())) => self.need_flush = false,
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Pending => {}
            }
        }
        Ok(progress)
    }

    /// Reads once and handles every complete frame; true when anything was
    /// read or handled.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Result<bool, ConnError> {
        // Frames left over when output filled up come first.
        if !self.rbuf.is_empty() {
            let used = self.frames_in_rbuf()?;
            if used > 0 {
                return Ok(true);
            }
        }
        SCRATCH.with(|s| {
            let mut s = s.borrow_mut();
            let mut rb = ReadBuf::new(&mut s[..]);
            match Pin::new(&mut self.io).poll_read(cx, &mut rb) {
                Poll::Pending => Ok(false),
                Poll::Ready(Err(e)) => Err(e.into()),
                Poll::Ready(Ok(())) => {
                    let n = rb.filled().len();
                    if n == 0 {
                        // The client closed: nothing more will arrive, and
                        // nobody is left to answer.
                        self.peer_done = true;
                        self.drop_streams();
                        return Ok(true);
                    }
                    if self.rbuf.is_empty() {
                        let used = self.frames_in(&s[..n])?;
                        self.rbuf.extend_from_slice(&s[used..n]);
                    } else {
                        self.rbuf.extend_from_slice(&s[..n]);
                        self.frames_in_rbuf()?;
                    }
                    if self.rbuf.capacity() > 0 && self.rbuf.is_empty() {
                        self.rbuf = Vec::new();
                    }
                    Ok(true)
                }
            }
        })
    }

    /// Handles the complete frames kept in `rbuf`, and drops them from it;
    /// how many bytes.
    fn frames_in_rbuf(&mut self) -> Result<usize, ConnError> {
        let mut buf = std::mem::take(&mut self.rbuf);
        let used = self.frames_in(&buf);
        if let Ok(n) = used {
            buf.drain(..n);
        }
        self.rbuf = buf;
        used
    }

    /// Handles the complete frames at the start of `buf`; how many bytes.
    fn frames_in(&mut self, buf: &[u8]) -> Result<usize, ConnError> {
        let mut pos = 0;
        if self.phase == Phase::Preface {
            let have = buf.len().min(PREFACE.len());
            if buf[..have] != PREFACE[..have] {
                return Err(proto("not an HTTP/2 connection preface"));
            }
            if have < PREFACE.len() {
                return Ok(0);
            }
            pos = PREFACE.len();
            self.phase = Phase::FirstSettings;
        }
        while buf.len() - pos >= 9 && self.reading() && self.wbuf.len() < HIGH_WATER {
            let h = &buf[pos..pos + 9];
            let len = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
            if len > MAX_FRAME {
                return Err(ConnError::Protocol(Reason::FrameSize, "frame too large"));
            }
            if buf.len() - pos < 9 + len {
                break;
            }
            let (ty, flags) = (h[3], h[4]);
            let id = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
            let payload = &buf[pos + 9..pos + 9 + len];
            pos += 9 + len;
            self.frames += 1;
            if self.phase == Phase::FirstSettings {
                if ty != SETTINGS || flags & ACK != 0 {
                    return Err(proto("the preface's SETTINGS frame is missing"));
                }
                self.phase = Phase::Open;
            }
            self.frame(ty, flags, id, payload)?;
        }
        Ok(pos)
    }

    fn frame(&mut self, ty: u8, flags: u8, id: u32, p: &[u8]) -> Result<(), ConnError> {
        if let Some(b) = &self.block {
            if ty != CONTINUATION || id != b.id {
                return Err(proto("a header block was interrupted"));
            }
        }
        match ty {
            DATA => self.data(flags, id, p),
            HEADERS => self.headers(flags, id, p),
            PRIORITY => {
                if id == 0 {
                    return Err(proto("PRIORITY on stream 0"));
                }
                if p.len() != 5 {
                    self.reset_stream(id, Reason::FrameSize)?;
                }
                Ok(())
            }
            RST_STREAM => {
                if id == 0 || id > self.last_id {
                    return Err(proto("RST_STREAM on an idle stream"));
                }
                if p.len() != 4 {
                    return Err(ConnError::Protocol(Reason::FrameSize, "RST_STREAM size"));
                }
                if let Some(i) = self.find(id) {
                    self.remove(i)?;
                }
                Ok(())
            }
            SETTINGS => self.settings(flags, id, p),
            PUSH_PROMISE => Err(proto("a client sent PUSH_PROMISE")),
            PING => {
                if id != 0 {
                    return Err(proto("PING on a stream"));
                }
                if p.len() != 8 {
                    return Err(ConnError::Protocol(Reason::FrameSize, "PING size"));
                }
                if flags & ACK != 0 {
                    self.ping_sent = None;
                } else {
                    frame_head(&mut self.wbuf, 8, PING, ACK, 0);
                    self.wbuf.extend_from_slice(p);
                }
                Ok(())
            }
            GOAWAY => {
                if id != 0 {
                    return Err(proto("GOAWAY on a stream"));
                }
                // Streams it already sent finish; no new ones come.
                self.peer_goaway = true;
                Ok(())
            }
            WINDOW_UPDATE => self.window_update(id, p),
            CONTINUATION => {
                let Some(mut b) = self.block.take() else {
                    return Err(proto("CONTINUATION without HEADERS"));
                };
                if p.is_empty() && flags & END_HEADERS == 0 {
                    // No client needs one; a stream of them costs only us.
                    return Err(ConnError::Protocol(
                        Reason::EnhanceYourCalm,
                        "an empty CONTINUATION frame",
                    ));
                }
                b.bytes.extend_from_slice(p);
                if b.bytes.len() > self.cfg.max_header_list + BLOCK_SLACK {
                    return Err(ConnError::Protocol(
                        Reason::EnhanceYourCalm,
                        "header block too large",
                    ));
                }
                if flags & END_HEADERS == 0 {
                    self.block = Some(b);
                    return Ok(());
                }
                self.header_block(b.id, b.end_stream, &b.bytes)
            }
            // Unknown frame types are ignored (RFC 9113 §4.1).
            _ => Ok(()),
        }
    }

    fn find(&self, id: u32) -> Option<usize> {
        self.streams.iter().position(|s| s.id == id)
    }

    /// The payload without its padding (RFC 9113 §6.1, §6.2).
    fn unpad(flags: u8, p: &[u8]) -> Result<&[u8], ConnError> {
        if flags & PADDED == 0 {
            return Ok(p);
        }
        let pad = usize::from(*p.first().ok_or_else(|| proto("padding missing"))?);
        if pad >= p.len() {
            return Err(proto("padding longer than the frame"));
        }
        Ok(&p[1..p.len() - pad])
    }

    fn data(&mut self, flags: u8, id: u32, p: &[u8]) -> Result<(), ConnError> {
        if id == 0 {
            return Err(proto("DATA on stream 0"));
        }
        let len = p.len();
        self.recv_window -= len as i64;
        if self.recv_window < 0 {
            return Err(ConnError::Protocol(
                Reason::FlowControl,
                "connection window exceeded",
            ));
        }
        let data = Self::unpad(flags, p)?;
        let end = flags & END_STREAM != 0;
        let Some(i) = self.find(id) else {
            if id > self.last_id {
                return Err(proto("DATA on an idle stream"));
            }
            // A stream already closed (reset, or answered): credit and drop.
            self.recv_credit += len;
            return Ok(());
        };
        let s = &mut self.streams[i];
        let shared = match &s.body {
            Some(sh) if s.recv_open => sh.clone(),
            _ => {
                self.recv_credit += len;
                return self.reset_stream(id, Reason::StreamClosed);
            }
        };
        s.recv_window -= len as i64;
        if s.recv_window < 0 {
            self.recv_credit += len;
            return self.reset_stream(id, Reason::FlowControl);
        }
        // Padding is credited at once; the data as it is read.
        let padding = len - data.len();
        s.recv_credit += padding;
        self.recv_credit += padding;
        let over = match &mut s.remaining {
            Some(left) => match left.checked_sub(data.len() as u64) {
                Some(l) => {
                    *left = l;
                    end && l != 0
                }
                None => true,
            },
            None => false,
        };
        if over {
            // RFC 9113 §8.1.1: content-length and DATA disagree.
            self.recv_credit += data.len();
            return self.reset_stream(id, Reason::Protocol);
        }
        if end {
            s.recv_open = false;
        }
        if !shared.push(Bytes::copy_from_slice(data), end) {
            // Nobody reads it any more: credited at once.
            s.recv_credit += data.len();
            self.recv_credit += data.len();
        }
        Ok(())
    }

    fn headers(&mut self, flags: u8, id: u32, p: &[u8]) -> Result<(), ConnError> {
        if id == 0 || id.is_multiple_of(2) {
            return Err(proto("HEADERS on stream 0 or an even stream"));
        }
        let mut p = Self::unpad(flags, p)?;
        if flags & PRIORITY_FLAG != 0 {
            p = p
                .get(5..)
                .ok_or_else(|| proto("HEADERS priority cut short"))?;
        }
        let end_stream = flags & END_STREAM != 0;
        if flags & END_HEADERS == 0 {
            let by = Instant::now() + self.cfg.first_request;
            if by < self.timer.deadline() {
                self.timer.as_mut().reset(by);
            }
            self.block = Some(Block {
                id,
                end_stream,
                bytes: p.to_vec(),
                by,
            });
            return Ok(());
        }
        self.header_block(id, end_stream, p)
    }

    /// A complete header block: a new request, or a request's trailers.
    fn header_block(&mut self, id: u32, end_stream: bool, block: &[u8]) -> Result<(), ConnError> {
        let mut fields = Vec::new();
        let limit = self.cfg.max_header_list;
        let decoded = self
            .decoder
            .decode(block, &mut fields, limit)
            .map_err(|_| ConnError::Protocol(Reason::Compression, "HPACK decoding failed"))?;
        let too_large = decoded.list_size > limit;
        if id <= self.last_id {
            return self.trailers(id, end_stream, fields, too_large);
        }
        self.last_id = id;
        if self.goaway.is_some() {
            // Above the GOAWAY's last stream: not processed (RFC 9113 §6.8).
            return Ok(());
        }
        if self.streams.len() >= MAX_STREAMS {
            rst(&mut self.wbuf, id, Reason::RefusedStream);
            return Ok(());
        }
        if too_large {
            // Answered like an HTTP/1.1 head that is too large.
            let mut h = HeaderMap::new();
            h.insert(
                http::header::CONTENT_LENGTH,
                http::HeaderValue::from_static("0"),
            );
            let max = self.peer_max_frame;
            put_block(&mut self.wbuf, id, true, max, |out| {
                hpack::encode_response(431, &h, None, out);
            });
            if !end_stream {
                rst(&mut self.wbuf, id, Reason::NoError);
            }
            return Ok(());
        }
        let req = match request(fields) {
            Ok(r) => r,
            Err(why) => {
                debug!(stream = id, why, "malformed HTTP/2 request; stream reset");
                rst(&mut self.wbuf, id, Reason::Protocol);
                return Ok(());
            }
        };
        let (parts, remaining, expect) = req;
        let head = parts.method == Method::HEAD;
        let (body, shared) = if end_stream {
            if remaining.is_some_and(|n| n != 0) {
                rst(&mut self.wbuf, id, Reason::Protocol);
                return Ok(());
            }
            (RecvBody::empty(), None)
        } else {
            let sh = recv::Shared::new(id, self.ready.clone());
            (RecvBody::new(sh.clone()), Some(sh))
        };
        if expect && shared.is_some() {
            // RFC 9110 §10.1.1: the client waits for this before the body.
            let max = self.peer_max_frame;
            put_block(&mut self.wbuf, id, false, max, |out| {
                hpack::encode_response(100, &HeaderMap::new(), None, out);
            });
        }
        let handling = (self.call)(Request::from_parts(parts, InBody::H2(body)));
        self.started += 1;
        self.first_by = None;
        let waker = Waker::from(Arc::new(StreamWaker {
            id,
            ready: self.ready.clone(),
        }));
        self.streams.push(Stream {
            id,
            waker,
            resp: Resp::Waiting(handling),
            recv_open: shared.is_some(),
            body: shared,
            recv_window: STREAM_WINDOW as i64,
            recv_credit: 0,
            remaining,
            send_window: self.peer_initial_window,
            head,
            blocked: false,
        });
        self.woken.streams.push(id);
        Ok(())
    }

    fn trailers(
        &mut self,
        id: u32,
        end_stream: bool,
        fields: Vec<Field>,
        too_large: bool,
    ) -> Result<(), ConnError> {
        let Some(i) = self.find(id) else {
            // A stream already closed; its block was decoded for the table.
            return Ok(());
        };
        let s = &mut self.streams[i];
        let shared = match &s.body {
            Some(sh) if s.recv_open => sh.clone(),
            _ => return self.reset_stream(id, Reason::StreamClosed),
        };
        s.recv_open = false;
        let mut map = HeaderMap::new();
        // Trailers past the header list's limit are refused like a request's.
        let mut ok = end_stream && !too_large;
        for f in fields {
            match f {
                Field::Header(n, v) => {
                    map.append(n, v);
                }
                _ => ok = false,
            }
        }
        if !ok || self.streams[i].remaining.is_some_and(|n| n != 0) {
            // The reset closes the body too (`remove`): its reader fails.
            return self.reset_stream(id, Reason::Protocol);
        }
        shared.trailers(map);
        Ok(())
    }

    fn settings(&mut self, flags: u8, id: u32, p: &[u8]) -> Result<(), ConnError> {
        if id != 0 {
            return Err(proto("SETTINGS on a stream"));
        }
        if flags & ACK != 0 {
            if !p.is_empty() {
                return Err(ConnError::Protocol(Reason::FrameSize, "SETTINGS ACK size"));
            }
            return Ok(());
        }
        if !p.len().is_multiple_of(6) {
            return Err(ConnError::Protocol(Reason::FrameSize, "SETTINGS size"));
        }
        let mut window = None;
        for s in p.chunks_exact(6) {
            let key = u16::from_be_bytes([s[0], s[1]]);
            let v = u32::from_be_bytes([s[2], s[3], s[4], s[5]]);
            match key {
                0x2 if v > 1 => return Err(proto("SETTINGS_ENABLE_PUSH not 0 or 1")),
                0x4 => {
                    if i64::from(v) > MAX_WINDOW {
                        return Err(ConnError::Protocol(
                            Reason::FlowControl,
                            "SETTINGS_INITIAL_WINDOW_SIZE too large",
                        ));
                    }
                    // Applied once, after the frame: the last value counts,
                    // and a frame of many costs one walk over the streams.
                    window = Some(i64::from(v));
                }
                0x5 => {
                    if !(MAX_FRAME as u32..=(1 << 24) - 1).contains(&v) {
                        return Err(proto("SETTINGS_MAX_FRAME_SIZE out of range"));
                    }
                    self.peer_max_frame = v as usize;
                }
                // The header table size does not matter to an encoder that
                // never indexes; the rest are advisory or unknown.
                _ => {}
            }
        }
        if let Some(v) = window {
            let delta = v - self.peer_initial_window;
            self.peer_initial_window = v;
            for s in &mut self.streams {
                s.send_window += delta;
                if s.send_window > MAX_WINDOW {
                    return Err(ConnError::Protocol(
                        Reason::FlowControl,
                        "stream window overflow",
                    ));
                }
                if delta > 0 && s.blocked && s.send_window > 0 {
                    s.blocked = false;
                    self.woken.streams.push(s.id);
                }
            }
        }
        frame_head(&mut self.wbuf, 0, SETTINGS, ACK, 0);
        Ok(())
    }

    fn window_update(&mut self, id: u32, p: &[u8]) -> Result<(), ConnError> {
        if p.len() != 4 {
            return Err(ConnError::Protocol(Reason::FrameSize, "WINDOW_UPDATE size"));
        }
        let inc = i64::from(u32::from_be_bytes([p[0], p[1], p[2], p[3]]) & 0x7fff_ffff);
        if id == 0 {
            if inc == 0 {
                return Err(proto("WINDOW_UPDATE of 0"));
            }
            self.send_window += inc;
            if self.send_window > MAX_WINDOW {
                return Err(ConnError::Protocol(
                    Reason::FlowControl,
                    "connection window overflow",
                ));
            }
            for s in &mut self.streams {
                if s.blocked && s.send_window > 0 {
                    s.blocked = false;
                    self.woken.streams.push(s.id);
                }
            }
            return Ok(());
        }
        if id > self.last_id {
            return Err(proto("WINDOW_UPDATE on an idle stream"));
        }
        let Some(i) = self.find(id) else {
            return Ok(());
        };
        if inc == 0 {
            return self.reset_stream(id, Reason::Protocol);
        }
        let s = &mut self.streams[i];
        s.send_window += inc;
        if s.send_window > MAX_WINDOW {
            return self.reset_stream(id, Reason::FlowControl);
        }
        if s.blocked && s.send_window > 0 {
            s.blocked = false;
            self.woken.streams.push(id);
        }
        Ok(())
    }

    /// A stream error: RST_STREAM, and the stream forgotten. A request
    /// reset before its response head counts as an early reset, whoever
    /// made it ("MadeYouReset", CVE-2025-8671: a client can make the server
    /// reset streams with frames that break a stream's rules).
    fn reset_stream(&mut self, id: u32, reason: Reason) -> Result<(), ConnError> {
        rst(&mut self.wbuf, id, reason);
        match self.find(id) {
            Some(i) => self.remove(i),
            None => Ok(()),
        }
    }

    /// Forgets stream `i`: what its request body had queued unread is
    /// credited back, a reader gets an error, and a request that had no
    /// response head yet counts toward the rapid-reset limit.
    fn remove(&mut self, i: usize) -> Result<(), ConnError> {
        let early = matches!(self.streams[i].resp, Resp::Waiting(_));
        self.discard(i);
        if early {
            self.early_resets += 1;
            if self.early_resets >= EARLY_RESETS_MAX && self.early_resets * 2 >= self.started {
                return Err(ConnError::Resets {
                    resets: self.early_resets,
                    requests: self.started,
                });
            }
        }
        Ok(())
    }

    /// Forgets stream `i` without counting it as a reset.
    fn discard(&mut self, i: usize) {
        let s = self.streams.swap_remove(i);
        if let Some(sh) = &s.body {
            self.recv_credit += sh.close();
        }
    }

    /// All streams forgotten (the connection is closing): not counted as
    /// resets.
    fn drop_streams(&mut self) {
        while !self.streams.is_empty() {
            self.discard(0);
        }
        self.block = None;
    }

    /// Polls the streams that woke; true when any of them made output.
    fn poll_streams(&mut self) -> bool {
        let mut woken = Woken::default();
        std::mem::swap(&mut woken.streams, &mut self.woken.streams);
        self.ready.take(&mut woken);
        // Credit first: a stream may be done by the end of this.
        self.recv_credit += self.ready.take_credit();
        for id in woken.released.drain(..) {
            if let Some(i) = self.find(id) {
                let s = &mut self.streams[i];
                if let Some(sh) = &s.body {
                    let n = sh.take_released();
                    if s.recv_open {
                        s.recv_credit += n;
                    }
                }
            }
        }
        let before = self.wbuf.len();
        for id in woken.streams.drain(..) {
            if let Some(i) = self.find(id) {
                self.poll_stream(i);
            }
        }
        // The lists go back empty, keeping their room.
        if self.woken.streams.is_empty() {
            self.woken.streams = woken.streams;
        }
        self.woken.released = woken.released;
        self.wbuf.len() != before
    }

    fn poll_stream(&mut self, i: usize) {
        let waker = self.streams[i].waker.clone();
        let mut cx = Context::from_waker(&waker);
        loop {
            let s = &mut self.streams[i];
            match &mut s.resp {
                Resp::Waiting(fut) => {
                    // A panic in one request's handling ends that stream,
                    // not the connection's others (hyper's server ran each
                    // in a task of its own, where tokio caught it).
                    let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        fut.as_mut().poll(&mut cx)
                    }));
                    match polled {
                        Ok(Poll::Pending) => return,
                        Ok(Poll::Ready(resp)) => self.respond(i, resp),
                        Err(_) => {
                            tracing::error!(
                                stream = s.id,
                                "a request's handling panicked; stream reset"
                            );
                            rst(&mut self.wbuf, s.id, Reason::Internal);
                            s.resp = Resp::Done;
                            self.discard(i);
                            return;
                        }
                    }
                }
                Resp::Body { body, pending } => {
                    if !pending.is_empty() {
                        let room = s.send_window.min(self.send_window).max(0) as usize;
                        let n = pending.len().min(room).min(self.peer_max_frame);
                        if n == 0 || self.wbuf.len() >= HIGH_WATER {
                            s.blocked = true;
                            return;
                        }
                        let chunk = pending.split_to(n);
                        s.send_window -= n as i64;
                        self.send_window -= n as i64;
                        let end = pending.is_empty() && body.is_end_stream();
                        frame_head(
                            &mut self.wbuf,
                            n,
                            DATA,
                            if end { END_STREAM } else { 0 },
                            s.id,
                        );
                        self.wbuf.extend_from_slice(&chunk);
                        if end {
                            s.resp = Resp::Done;
                        }
                        continue;
                    }
                    if self.wbuf.len() >= HIGH_WATER {
                        s.blocked = true;
                        return;
                    }
                    match Pin::new(&mut **body).poll_frame(&mut cx) {
                        Poll::Pending => return,
                        Poll::Ready(None) => {
                            frame_head(&mut self.wbuf, 0, DATA, END_STREAM, s.id);
                            s.resp = Resp::Done;
                        }
                        Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                            Ok(d) if d.is_empty() && !body.is_end_stream() => {}
                            Ok(d) if d.is_empty() => {
                                frame_head(&mut self.wbuf, 0, DATA, END_STREAM, s.id);
                                s.resp = Resp::Done;
                            }
                            Ok(d) => *pending = d,
                            Err(frame) => {
                                let trailers = frame.into_trailers().unwrap_or_default();
                                let (id, max) = (s.id, self.peer_max_frame);
                                s.resp = Resp::Done;
                                put_block(&mut self.wbuf, id, true, max, |out| {
                                    hpack::encode_fields(&trailers, out);
                                });
                            }
                        },
                        Poll::Ready(Some(Err(e))) => {
                            debug!(stream = s.id, error = %e, "response body failed; stream reset");
                            let id = s.id;
                            // A stream with a response head: never an early
                            // reset, so never the limit's error.
                            let _ = self.reset_stream(id, Reason::Internal);
                            return;
                        }
                    }
                }
                Resp::Done => {
                    if s.recv_open {
                        // Answered before the request's body ended: the
                        // client may stop sending it (RFC 9113 §8.1).
                        rst(&mut self.wbuf, s.id, Reason::NoError);
                    }
                    self.discard(i);
                    return;
                }
            }
        }
    }

    /// The response head; the body follows unless there is none.
    fn respond(&mut self, i: usize, resp: Response<ProxyBody>) {
        let (parts, body) = resp.into_parts();
        let s = &mut self.streams[i];
        let status = parts.status.as_u16();
        let bodiless = s.head || status == 204 || status == 304 || body.is_end_stream();
        // As hyper's server: a length only for a body that is sent.
        let length = body.size_hint().exact().filter(|_| !bodiless);
        let (id, max) = (s.id, self.peer_max_frame);
        s.resp = if bodiless {
            Resp::Done
        } else {
            Resp::Body {
                body: Box::new(body),
                pending: Bytes::new(),
            }
        };
        put_block(&mut self.wbuf, id, bodiless, max, |out| {
            hpack::encode_response(status, &parts.headers, length, out);
        });
    }

    /// WINDOW_UPDATEs for what request bodies were read, once a quarter of a
    /// window is owed.
    fn give_credit(&mut self) {
        for s in &mut self.streams {
            if s.recv_credit >= STREAM_WINDOW / 4 && s.recv_open {
                window_update(&mut self.wbuf, s.id, s.recv_credit);
                s.recv_window += s.recv_credit as i64;
                s.recv_credit = 0;
            }
        }
        if self.recv_credit >= CONN_WINDOW / 4 {
            window_update(&mut self.wbuf, 0, self.recv_credit);
            self.recv_window += self.recv_credit as i64;
            self.recv_credit = 0;
        }
    }

    /// The timer: the first request's deadline, idle and age checks, pings.
    fn tick(&mut self) -> Result<(), ConnError> {
        let now = Instant::now();
        if self.block.as_ref().is_some_and(|b| now >= b.by) {
            // A header block left unfinished (CONTINUATION frames trickled
            // in): as an HTTP/1.1 head that takes too long.
            return Err(ConnError::Protocol(
                Reason::EnhanceYourCalm,
                "a header block unfinished within header_read_timeout",
            ));
        }
        if let Some(by) = self.first_by {
            if now >= by {
                return Err(ConnError::NoRequest);
            }
        }
        if now >= self.next_idle {
            if self.started != self.seen_started || !self.streams.is_empty() {
                (self.seen_started, self.quiet_ticks) = (self.started, 0);
            } else {
                self.quiet_ticks = self.quiet_ticks.saturating_add(1);
            }
            if self.quiet_ticks >= 4 {
                debug!("idle_timeout; GOAWAY");
                self.go_away(Reason::NoError);
            }
            self.next_idle = now + (self.cfg.idle_timeout / 4).max(Duration::from_millis(10));
        }
        if self.cfg.retire_at.is_some_and(|at| now >= at) {
            debug!("max_connection_age; GOAWAY");
            self.go_away(Reason::NoError);
            self.cfg.retire_at = None;
        }
        if let Some(sent) = self.ping_sent {
            if self.frames != self.frames_at_check {
                self.ping_sent = None;
            } else if now >= sent + PING_TIMEOUT {
                return Err(ConnError::PingTimeout);
            }
        }
        if now >= self.next_ping {
            if self.frames == self.frames_at_check && self.ping_sent.is_none() {
                frame_head(&mut self.wbuf, 8, PING, 0, 0);
                self.wbuf.extend_from_slice(&[0; 8]);
                self.ping_sent = Some(now);
            }
            self.frames_at_check = self.frames;
            self.next_ping = now + PING_EVERY;
        }
        let mut next = self.next_idle.min(self.next_ping);
        if let Some(at) = self.first_by {
            next = next.min(at);
        }
        if let Some(at) = self.cfg.retire_at {
            next = next.min(at);
        }
        if let Some(sent) = self.ping_sent {
            next = next.min(sent + PING_TIMEOUT);
        }
        if let Some(b) = &self.block {
            next = next.min(b.by);
        }
        self.timer.as_mut().reset(next);
        Ok(())
    }

    /// Sends what is left and closes the transport (the end of a close).
    async fn shutdown(&mut self) {
        use tokio::io::AsyncWriteExt;
        std::future::poll_fn(|cx| loop {
            match self.poll_write(cx) {
                Err(_) => return Poll::Ready(()),
                Ok(_) if self.written == self.wbuf.len() && !self.need_flush => {
                    return Poll::Ready(())
                }
                Ok(true) => {}
                Ok(false) => return Poll::Pending,
            }
        })
        .await;
        let _ = tokio::time::timeout(Duration::from_secs(1), self.io.shutdown()).await;
    }
}

impl<I, F> Future for Connection<I, F>
where
    I: AsyncRead + AsyncWrite + Unpin,
    F: FnMut(Request<InBody>) -> Handling + Unpin,
{
    type Output = Result<(), ConnError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.get_mut().poll_conn(cx)
    }
}

/// Serves `io` until the connection closes, then closes the transport.
pub(crate) async fn finish<I, F>(
    conn: &mut Connection<I, F>,
    r: Result<(), ConnError>,
    client: &std::net::SocketAddr,
    entrypoint: &str,
) where
    I: AsyncRead + AsyncWrite + Unpin,
    F: FnMut(Request<InBody>) -> Handling + Unpin,
{
    match &r {
        Ok(()) => {}
        Err(ConnError::Protocol(reason, why)) => {
            debug!(%client, ?reason, why, "HTTP/2 connection closed");
        }
        Err(e @ ConnError::Resets { .. }) => {
            tracing::warn!(
                %client,
                entrypoint,
                error = %e,
                "closing a connection whose client reset most requests before their response"
            );
        }
        Err(e) => debug!(%client, error = %e, "HTTP/2 connection ended"),
    }
    if !matches!(r, Err(ConnError::Io(_))) {
        conn.shutdown().await;
    }
}

/// A request's parts from its decoded fields, with its `content-length` and
/// whether it expects 100-continue; the reason when it is malformed (RFC 9113
/// §8.1.1, §8.2, §8.3.1).
fn request(fields: Vec<Field>) -> Result<(http::request::Parts, Option<u64>, bool), &'static str> {
    let mut method = None;
    let mut scheme = None;
    let mut authority = None;
    let mut path = None;
    let mut headers = HeaderMap::with_capacity(fields.len());
    let mut regular = false;
    let mut length: Option<u64> = None;
    let mut expect = false;
    for f in fields {
        match f {
            Field::Pseudo(p, v) => {
                if regular {
                    return Err("pseudo-header after a regular field");
                }
                let slot = match p {
                    Pseudo::Method => &mut method,
                    Pseudo::Scheme => &mut scheme,
                    Pseudo::Authority => &mut authority,
                    Pseudo::Path => &mut path,
                    Pseudo::Protocol => return Err(":protocol without extended CONNECT"),
                    Pseudo::Status => return Err(":status in a request"),
                };
                if slot.replace(v).is_some() {
                    return Err("a pseudo-header twice");
                }
            }
            Field::Header(n, v) => {
                regular = true;
                if hpack::connection_specific(&n) {
                    return Err("a connection-specific field");
                }
                if n == http::header::TE && v.as_bytes() != b"trailers" {
                    return Err("TE other than trailers");
                }
                if n == http::header::CONTENT_LENGTH {
                    let parsed = std::str::from_utf8(v.as_bytes())
                        .ok()
                        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                        .and_then(|s| s.parse::<u64>().ok())
                        .ok_or("an invalid content-length")?;
                    if length.is_some_and(|l| l != parsed) {
                        return Err("content-length values differ");
                    }
                    length = Some(parsed);
                }
                if n == http::header::EXPECT && v.as_bytes().eq_ignore_ascii_case(b"100-continue") {
                    expect = true;
                }
                headers.append(n, v);
            }
            Field::Bad { .. } => return Err("a forbidden field name or value"),
        }
    }
    let method = method.ok_or("no :method")?;
    let method = Method::from_bytes(&method).map_err(|_| "an invalid :method")?;
    let mut uri = http::uri::Parts::default();
    if method == Method::CONNECT {
        if scheme.is_some() || path.is_some() {
            return Err("CONNECT with :scheme or :path");
        }
    } else {
        let s = scheme.ok_or("no :scheme")?;
        let p = path.ok_or("no :path")?;
        if p.is_empty() {
            return Err("an empty :path");
        }
        uri.scheme = Some(http::uri::Scheme::try_from(&s[..]).map_err(|_| "an invalid :scheme")?);
        uri.path_and_query =
            Some(http::uri::PathAndQuery::from_maybe_shared(p).map_err(|_| "an invalid :path")?);
    }
    match authority {
        Some(a) => {
            uri.authority = Some(
                http::uri::Authority::from_maybe_shared(a).map_err(|_| "an invalid :authority")?,
            );
        }
        None if method == Method::CONNECT => return Err("CONNECT without :authority"),
        None => {}
    }
    let uri = if uri.authority.is_none() {
        // Origin form, as hyper's server gives a request without :authority.
        let pq = uri.path_and_query.take().ok_or("no :path")?;
        Uri::from(pq)
    } else {
        Uri::from_parts(uri).map_err(|_| "an invalid request target")?
    };
    let mut req = Request::new(());
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_2;
    *req.headers_mut() = headers;
    let (parts, ()) = req.into_parts();
    Ok((parts, length, expect))
}

/// Fuzzing: decodes `data` as a run of header blocks on one decoder (each
/// block's length in the byte before it), and checks that the table stays
/// within its size, and that the fields decoded encode and decode again to
/// themselves.
pub fn fuzz_hpack(data: &[u8]) {
    let mut d = hpack::Decoder::default();
    let mut rest = data;
    while let Some((&len, tail)) = rest.split_first() {
        let (block, next) = tail.split_at(usize::from(len).min(tail.len()));
        rest = next;
        let mut fields = Vec::new();
        let Ok(decoded) = d.decode(block, &mut fields, usize::MAX) else {
            // A decoding error closes the connection: the decoder's state
            // no longer matters.
            return;
        };
        assert!(d.table_size() <= hpack::TABLE_SIZE);
        assert_eq!(
            decoded.list_size,
            fields.iter().map(Field::size).sum::<usize>()
        );
        let mut map = HeaderMap::new();
        for f in &fields {
            if let Field::Header(n, v) = f {
                if !hpack::connection_specific(n) && n != http::header::TE {
                    map.append(n.clone(), v.clone());
                }
            }
        }
        let mut out = Vec::new();
        hpack::encode_fields(&map, &mut out);
        let mut again = Vec::new();
        hpack::Decoder::default()
            .decode(&out, &mut again, usize::MAX)
            .expect("what the encoder writes decodes");
        let again: Vec<_> = again
            .into_iter()
            .map(|f| match f {
                Field::Header(n, v) => (n, v),
                f => panic!("the encoder wrote {f:?}"),
            })
            .collect();
        let before: Vec<_> = map.iter().map(|(n, v)| (n.clone(), v.clone())).collect();
        assert_eq!(again, before);
    }
}

/// Fuzzing: serves `data` as what a client sends after its preface and
/// SETTINGS, with every request answered by its body's length, until the
/// connection ends (the client's end of input ends it); the server must
/// neither panic nor hang.
pub fn fuzz_connection(data: &[u8]) {
    use tokio::io::AsyncWriteExt;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime");
    rt.block_on(async {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let answer = |req: Request<InBody>| -> Handling {
            Box::pin(async move {
                use http_body_util::BodyExt;
                let n = match req.into_body().collect().await {
                    Ok(b) => b.to_bytes().len(),
                    Err(_) => 0,
                };
                Response::new(crate::body::full(n.to_string()))
            })
        };
        let cfg = Config {
            max_header_list: 8192,
            first_request: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(5),
            retire_at: None,
        };
        let mut conn = Connection::new(server, b"", cfg, answer);
        let mut input = PREFACE.to_vec();
        frame_head(&mut input, 0, SETTINGS, 0, 0);
        input.extend_from_slice(data);
        let (mut read, mut write) = tokio::io::split(&mut client);
        let feed = async {
            let _ = write.write_all(&input).await;
            let _ = write.shutdown().await;
        };
        let drain = async {
            let _ = tokio::io::copy(&mut read, &mut tokio::io::sink()).await;
        };
        let serve = async {
            let r = (&mut conn).await;
            conn.shutdown().await;
            r
        };
        let all = async { tokio::join!(feed, drain, serve) };
        // The client's end of input ends the connection; the timers are
        // only a backstop.
        let (_, _, _ended) = tokio::time::timeout(Duration::from_secs(10), all)
            .await
            .expect("the connection ends");
    });
}

#[cfg(test)]
mod tests;
