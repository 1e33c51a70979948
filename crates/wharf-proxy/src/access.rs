//! The access log: one line per request, in Apache's combined format or as JSON,
//! written by a thread of its own so the request path never waits on a disk or a
//! pipe.
//!
//! The request path builds a small [`Record`] (clones of the request's URI and a
//! few header values, which are reference-counted bytes, plus the facts the
//! forwarder already has) and hands it to the writer through a bounded queue with
//! `try_send`. When the queue is full the record is dropped and counted
//! (`wharf_accesslog_dropped_total`); nothing on the request path ever blocks or
//! formats. The writer thread formats each record into a buffer and writes the
//! buffer whenever the queue runs empty (or the buffer passes 64 KiB). After a
//! batch it lingers a millisecond before it parks, so under load the senders
//! rarely have to wake it.
//!
//! A record is sent when the response is over: when the last byte of the body
//! has been handed to the connection, or the body was abandoned (the client went
//! away); `bytes` are the body bytes actually passed on and `duration_ms` runs
//! from the request head to that moment. A request whose handling was cancelled
//! before a response existed (the client closed the connection or reset the
//! stream while Wharf waited for the backend) is logged with status 499, as
//! nginx does.
//!
//! The log is a process-wide singleton: [`AccessLog::start`] leaks its small shared
//! state so the request path holds a plain `&'static` reference (no reference
//! count per request).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::header;
use http::{Method, Request, Uri, Version};
use tracing::{error, info};

use crate::forward::{ConnInfo, Seen};
use crate::pipeline::{self, Head};

/// Records that may wait for the writer; more are dropped and counted.
pub const QUEUE_CAPACITY: usize = 16_384;

/// The buffer is written out once it holds this much, even if more lines wait.
const FLUSH_AT: usize = 64 * 1024;

/// How long the writer waits for more lines after a batch before it parks.
const LINGER: Duration = Duration::from_millis(1);

/// Longest logged path (with query) and `Referer`, in bytes of the request; a
/// longer one is cut and ends in `...`. Bounds the size of a line.
pub const MAX_PATH: usize = 2048;
/// Longest logged `User-Agent`.
pub const MAX_USER_AGENT: usize = 512;
/// Longest logged host.
pub const MAX_HOST: usize = 256;

/// `[log] access`, as the proxy takes it (`off` is no [`AccessLog`] at all).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessFormat {
    /// `%h - - [%t] "%r" %>s %b "%{Referer}i" "%{User-agent}i"` and then
    /// `host="..." route="..." backend=... tls=... duration_ms=...`.
    Combined,
    /// One JSON object per line (field names in docs/config.md).
    Json,
}

/// What the request path and the writer share.
struct Shared {
    tx: SyncSender<Msg>,
    format: AccessFormat,
    /// Records lost: queue full, or a write that failed.
    dropped: AtomicU64,
    reopen: AtomicBool,
    stop: AtomicBool,
}

enum Msg {
    Line(Box<Record>),
    /// Only wakes the writer up to look at its flags (reopen, stop).
    Wake,
}

/// The request path's handle on the access log: a copyable reference.
#[derive(Clone, Copy)]
pub struct AccessSender(&'static Shared);

/// The access log of the process: its writer thread and its counters.
pub struct AccessLog {
    shared: &'static Shared,
    /// Disconnected when the writer thread has ended.
    done: Mutex<Receiver<()>>,
}

/// Where lines go.
enum Output {
    Stdout,
    File { path: PathBuf, file: File },
}

impl Output {
    fn open(path: Option<&Path>) -> io::Result<Output> {
        Ok(match path {
            None => Output::Stdout,
            Some(p) => Output::File {
                path: p.to_path_buf(),
                file: open_append(p)?,
            },
        })
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Output::Stdout => {
                let mut out = io::stdout().lock();
                out.write_all(buf)?;
                out.flush()
            }
            Output::File { file, .. } => file.write_all(buf),
        }
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

impl AccessLog {
    /// Opens `path` for appending (created if missing; `None`: standard output)
    /// and starts the writer thread. An error is the file's: it could not be
    /// opened or created.
    pub fn start(format: AccessFormat, path: Option<&Path>) -> io::Result<AccessLog> {
        let out = Output::open(path)?;
        let (log, rx) = Self::unstarted(format, QUEUE_CAPACITY);
        let (done_tx, done_rx) = mpsc::channel();
        let shared = log.shared;
        std::thread::Builder::new()
            .name("wharf-accesslog".into())
            .spawn(move || {
                Writer::new(shared, out).run(&rx);
                drop(done_tx);
            })?;
        *log.done.lock().unwrap_or_else(|e| e.into_inner()) = done_rx;
        Ok(log)
    }

    /// The shared state and the queue's receiving end, no thread yet.
    fn unstarted(format: AccessFormat, capacity: usize) -> (AccessLog, Receiver<Msg>) {
        let (tx, rx) = mpsc::sync_channel(capacity);
        let shared: &'static Shared = Box::leak(Box::new(Shared {
            tx,
            format,
            dropped: AtomicU64::new(0),
            reopen: AtomicBool::new(false),
            stop: AtomicBool::new(false),
        }));
        // Until a thread is started, `close` has nothing to wait for.
        let (_, done) = mpsc::channel();
        (
            AccessLog {
                shared,
                done: Mutex::new(done),
            },
            rx,
        )
    }

    /// The handle the forwarder sends records with.
    pub fn sender(&self) -> AccessSender {
        AccessSender(self.shared)
    }

    /// Records lost since start (queue full, or a failed write).
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Reopens the file (by its path) before the next batch is written: after
    /// log rotation moved it away (SIGHUP). Nothing for standard output. A file
    /// that cannot be opened then is logged and the previous one stays in use.
    pub fn reopen(&self) {
        self.shared.reopen.store(true, Ordering::Release);
        let _ = self.shared.tx.try_send(Msg::Wake);
    }

    /// Writes what is queued and stops the writer, waiting at most `timeout`
    /// (a stuck standard output must not hold the exit up).
    pub fn close(&self, timeout: Duration) {
        self.shared.stop.store(true, Ordering::Release);
        let _ = self.shared.tx.try_send(Msg::Wake);
        let done = self.done.lock().unwrap_or_else(|e| e.into_inner());
        match done.recv_timeout(timeout) {
            Err(RecvTimeoutError::Disconnected) | Ok(()) => {}
            Err(RecvTimeoutError::Timeout) => {
                error!(
                    "access log: the writer did not finish within {timeout:?}; lines may be lost"
                )
            }
        }
    }
}

impl AccessSender {
    /// Starts the record of a request (before it is forwarded).
    pub(crate) fn begin<B>(self, conn: &ConnInfo, req: &Request<B>, start: Instant) -> Pending {
        let headers = req.headers();
        // The address rate limits and affinity key on: the peer, or the last
        // `X-Forwarded-For` entry when the peer is trusted to write it.
        let client = if conn.info.trusted {
            pipeline::client_ip(
                conn,
                &Head {
                    method: req.method(),
                    host: "",
                    path: "",
                    has_body: false,
                    headers,
                },
            )
        } else {
            conn.client.ip()
        };
        self.pending(
            conn,
            req.method(),
            req.version(),
            Strings::of(req),
            client,
            start,
        )
    }

    /// A request's record, before anything of its answer is known.
    fn pending(
        self,
        conn: &ConnInfo,
        method: &Method,
        version: Version,
        text: Strings,
        client: IpAddr,
        start: Instant,
    ) -> Pending {
        Pending(Some(Box::new(Record {
            log: self,
            time: UNIX_EPOCH,
            start,
            client,
            method: method.clone(),
            version,
            text,
            tls: conn.tls_version.map(crate::forward::TlsVersion::as_str),
            seen: Seen::default(),
            status: 0,
            bytes: 0,
            duration: Duration::ZERO,
        })))
    }

    /// Starts the record of a request the HTTP/1.1 engine serves, from its
    /// head's bytes (`client`: the address limits key on).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn begin_h1(
        self,
        conn: &ConnInfo,
        method: &Method,
        target: &[u8],
        host: &[u8],
        ua: Option<&[u8]>,
        referer: Option<&[u8]>,
        client: IpAddr,
        start: Instant,
    ) -> Pending {
        let text = Strings::new(target, Some(host), ua, referer);
        self.pending(conn, method, Version::HTTP_11, text, client, start)
    }
}

/// One request's line, before it is formatted (by the writer).
pub(crate) struct Record {
    log: AccessSender,
    /// When the request head was read, on the wall clock: set by the writer
    /// from `start` (one clock read per batch instead of one per request).
    time: SystemTime,
    /// When the request head was read.
    start: Instant,
    client: IpAddr,
    method: Method,
    version: Version,
    /// Path, host, User-Agent and Referer.
    text: Strings,
    tls: Option<&'static str>,
    /// The route and backend, filled in by the forwarder.
    pub(crate) seen: Seen,
    status: u16,
    /// Body bytes passed on to the client so far.
    pub(crate) bytes: u64,
    duration: Duration,
}

impl Record {
    /// The response is over: timed and queued for the writer.
    pub(crate) fn finish(mut self: Box<Self>) {
        self.duration = self.start.elapsed();
        let shared = self.log.0;
        match shared.tx.try_send(Msg::Line(self)) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                shared.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// A request's record from its arrival until its response exists. Dropped
/// without [`Pending::respond`] (the request's handling was cancelled), it is
/// logged with status 499.
pub(crate) struct Pending(Option<Box<Record>>);

impl Pending {
    /// Where the forwarder notes the route and backend it chose.
    pub(crate) fn record(&mut self) -> Option<&mut Record> {
        self.0.as_deref_mut()
    }

    /// The response head is known: the record goes with the body, which sends it
    /// when it ends (see `body.rs`); a body of Wharf's own is sent whole at once,
    /// so its length is logged now.
    pub(crate) fn respond(mut self, resp: &mut http::Response<crate::ProxyBody>) {
        let Some(mut rec) = self.0.take() else {
            return;
        };
        rec.status = resp.status().as_u16();
        match resp.body_mut() {
            http_body_util::Either::Left(upstream) => upstream.log_on_end(rec),
            http_body_util::Either::Right(full) => {
                rec.bytes = http_body::Body::size_hint(full).exact().unwrap_or(0);
                rec.finish();
            }
        }
    }
}

impl Pending {
    /// The response is over (the HTTP/1.1 engine): `bytes` of body passed on.
    pub(crate) fn finish_with(mut self, status: u16, bytes: u64) {
        if let Some(mut rec) = self.0.take() {
            rec.status = status;
            rec.bytes = bytes;
            rec.finish();
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(mut rec) = self.0.take() {
            rec.status = 499;
            rec.finish();
        }
    }
}

/// The writer thread's state.
struct Writer {
    shared: &'static Shared,
    out: Output,
    buf: Vec<u8>,
    /// Lines in `buf`, counted as dropped if writing it fails.
    lines: u64,
    /// The last write failed (logged once until one succeeds again).
    failing: bool,
    clock: Clock,
    /// The wall clock and the monotonic clock read together, once per batch.
    anchor: (SystemTime, Instant),
    /// The last client and backend addresses, formatted: a busy log has few.
    addrs: Addrs,
}

#[derive(Default)]
struct Addrs {
    client: Option<(IpAddr, Vec<u8>)>,
    backend: Option<(SocketAddr, Vec<u8>)>,
}

impl Addrs {
    fn client(&mut self, out: &mut Vec<u8>, ip: IpAddr) {
        match &mut self.client {
            Some((last, text)) if *last == ip => out.extend_from_slice(text),
            slot => {
                let mut text = Vec::with_capacity(16);
                push_ip(&mut text, ip);
                out.extend_from_slice(&text);
                *slot = Some((ip, text));
            }
        }
    }

    fn backend(&mut self, out: &mut Vec<u8>, addr: SocketAddr) {
        match &mut self.backend {
            Some((last, text)) if *last == addr => out.extend_from_slice(text),
            slot => {
                let mut text = Vec::with_capacity(24);
                push_addr(&mut text, addr);
                out.extend_from_slice(&text);
                *slot = Some((addr, text));
            }
        }
    }
}

impl Writer {
    fn new(shared: &'static Shared, out: Output) -> Writer {
        Writer {
            shared,
            out,
            buf: Vec::with_capacity(FLUSH_AT + 8 * 1024),
            lines: 0,
            failing: false,
            clock: Clock::new(),
            anchor: (SystemTime::now(), Instant::now()),
            addrs: Addrs::default(),
        }
    }

    fn run(mut self, rx: &Receiver<Msg>) {
        loop {
            // Parked until a line (or a wake-up) arrives.
            let Ok(first) = rx.recv() else {
                return;
            };
            self.anchor = (SystemTime::now(), Instant::now());
            self.take(first);
            loop {
                loop {
                    match rx.try_recv() {
                        Ok(m) => self.take(m),
                        Err(TryRecvError::Empty) => break,
                        Err(TryRecvError::Disconnected) => {
                            self.flush();
                            return;
                        }
                    }
                    if self.buf.len() >= FLUSH_AT {
                        self.flush();
                    }
                }
                // The queue is empty: out with the batch.
                self.flush();
                if self.shared.stop.load(Ordering::Acquire) {
                    return;
                }
                // Linger: under load more lines arrive meanwhile, and their
                // senders need not wake a parked thread.
                std::thread::sleep(LINGER);
                self.anchor = (SystemTime::now(), Instant::now());
                match rx.try_recv() {
                    Ok(m) => self.take(m),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => return,
                }
            }
            if self.shared.stop.load(Ordering::Acquire) {
                return;
            }
        }
    }

    fn take(&mut self, m: Msg) {
        if let Msg::Line(mut rec) = m {
            let (wall, mono) = self.anchor;
            rec.time = match mono.checked_duration_since(rec.start) {
                Some(ago) => wall.checked_sub(ago).unwrap_or(wall),
                None => wall
                    .checked_add(rec.start.duration_since(mono))
                    .unwrap_or(wall),
            };
            match self.shared.format {
                AccessFormat::Combined => {
                    combined(&mut self.buf, &mut self.clock, &mut self.addrs, &rec)
                }
                AccessFormat::Json => json(&mut self.buf, &mut self.clock, &mut self.addrs, &rec),
            }
            self.lines += 1;
        }
    }

    fn flush(&mut self) {
        // Reopen first: lines still buffered when the file was rotated go to
        // the new file.
        if self.shared.reopen.swap(false, Ordering::AcqRel) {
            self.reopen();
        }
        if !self.buf.is_empty() {
            match self.out.write_all(&self.buf) {
                Ok(()) => {
                    if self.failing {
                        self.failing = false;
                        info!("access log: writing again");
                    }
                }
                Err(e) => {
                    self.shared.dropped.fetch_add(self.lines, Ordering::Relaxed);
                    if !self.failing {
                        self.failing = true;
                        let to = match &self.out {
                            Output::Stdout => "standard output".to_string(),
                            Output::File { path, .. } => path.display().to_string(),
                        };
                        error!(
                            "access log: cannot write to {to}: {e}; lines are dropped and counted \
                             in wharf_accesslog_dropped_total until a write succeeds"
                        );
                    }
                }
            }
            self.buf.clear();
            self.lines = 0;
        }
    }

    fn reopen(&mut self) {
        if let Output::File { path, file } = &mut self.out {
            match open_append(path) {
                Ok(f) => {
                    *file = f;
                    info!(file = %path.display(), "access log reopened");
                }
                Err(e) => error!(
                    file = %path.display(),
                    "access log: cannot reopen: {e}; writing on to the file already open"
                ),
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Formatting (on the writer thread).

fn protocol(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP",
    }
}

fn path_of(uri: &Uri) -> &[u8] {
    match uri.path_and_query() {
        Some(p) => p.as_str().as_bytes(),
        // `CONNECT host:port`: the authority is the target.
        None => uri.authority().map_or(b"/", |a| a.as_str().as_bytes()),
    }
}

/// The request's strings, copied (and cut to their limits) into one buffer: a
/// queued record must not hold on to the connection's read buffer, which
/// reference-counted header values would.
struct Strings {
    /// The values when they fit (the common case: no allocation of their own).
    inline: [u8; INLINE],
    /// The values when they do not fit `inline`.
    heap: Vec<u8>,
    /// Where each value ends, or `None` when the request had none.
    ends: [Option<u16>; 4],
}

/// Bytes of path, host, User-Agent and Referer kept in the record itself.
const INLINE: usize = 160;

const PATH: usize = 0;
const HOST: usize = 1;
const USER_AGENT: usize = 2;
const REFERER: usize = 3;
const LIMITS: [usize; 4] = [MAX_PATH, MAX_HOST, MAX_USER_AGENT, MAX_PATH];

impl Strings {
    fn of<B>(req: &Request<B>) -> Strings {
        // One pass over the fields (a name compare each) instead of three
        // hashed lookups.
        let (mut host, mut ua, mut referer) = (None, None, None);
        for (name, value) in req.headers() {
            if *name == header::HOST {
                host = host.or(Some(value.as_bytes()));
            } else if *name == header::USER_AGENT {
                ua = ua.or(Some(value.as_bytes()));
            } else if *name == header::REFERER {
                referer = referer.or(Some(value.as_bytes()));
            }
        }
        let uri = req.uri();
        let host = uri.authority().map(|a| a.as_str().as_bytes()).or(host);
        Strings::new(path_of(uri), host, ua, referer)
    }

    fn new(path: &[u8], host: Option<&[u8]>, ua: Option<&[u8]>, referer: Option<&[u8]>) -> Self {
        let values = [Some(path), host, ua, referer];
        let size: usize = values
            .iter()
            .zip(LIMITS)
            .map(|(v, max)| v.map_or(0, |v| v.len().min(max + 3)))
            .sum();
        let mut s = Strings {
            inline: [0; INLINE],
            heap: Vec::new(),
            ends: [None; 4],
        };
        let inline = size <= INLINE;
        if !inline {
            s.heap.reserve_exact(size);
        }
        let mut at = 0;
        for (i, (v, max)) in values.into_iter().zip(LIMITS).enumerate() {
            if let Some(v) = v {
                // A value cut to its limit ends in `...`.
                if v.len() > max {
                    s.put(&mut at, inline, &v[..max]);
                    s.put(&mut at, inline, b"...");
                } else {
                    s.put(&mut at, inline, v);
                }
                s.ends[i] = u16::try_from(at).ok();
            }
        }
        s
    }

    fn put(&mut self, at: &mut usize, inline: bool, b: &[u8]) {
        if inline {
            self.inline[*at..*at + b.len()].copy_from_slice(b);
        } else {
            self.heap.extend_from_slice(b);
        }
        *at += b.len();
    }

    fn bytes(&self) -> &[u8] {
        if self.heap.is_empty() {
            &self.inline
        } else {
            &self.heap
        }
    }

    fn get(&self, i: usize) -> Option<&[u8]> {
        let end = usize::from(self.ends[i]?);
        let start = self.ends[..i]
            .iter()
            .rev()
            .find_map(|e| *e)
            .map_or(0, usize::from);
        self.bytes().get(start..end)
    }
}

/// Civil date and time (UTC) of a Unix time: (year, month, day, h, m, s).
fn civil(secs: u64) -> (i64, u32, u32, u32, u32, u32) {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's days_from_civil, inverted.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        y,
        m,
        d,
        (rem / 3600) as u32,
        (rem % 3600 / 60) as u32,
        (rem % 60) as u32,
    )
}

/// Unsigned decimal, without `core::fmt`.
fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

/// `n` as exactly `width` digits (`n` < 10^width).
fn push_padded(out: &mut Vec<u8>, n: u64, width: usize) {
    let mut buf = [b'0'; 20];
    let mut n = n;
    for i in (20 - width..20).rev() {
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    out.extend_from_slice(&buf[20 - width..]);
}

fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            push_u64(out, a.into());
            for o in [b, c, d] {
                out.push(b'.');
                push_u64(out, o.into());
            }
        }
        // Rare enough for `core::fmt`.
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// `IP:PORT`, or `[IPv6]:PORT`.
fn push_addr(out: &mut Vec<u8>, a: SocketAddr) {
    match a {
        SocketAddr::V4(v4) => push_ip(out, IpAddr::V4(*v4.ip())),
        SocketAddr::V6(v6) => {
            let _ = write!(out, "[{}]", v6.ip());
        }
    }
    out.push(b':');
    push_u64(out, a.port().into());
}

/// Milliseconds with microseconds: `12.345`.
fn millis(out: &mut Vec<u8>, d: Duration) {
    let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
    push_u64(out, us / 1000);
    out.push(b'.');
    push_padded(out, us % 1000, 3);
}

const MONTHS: [&[u8; 3]; 12] = [
    b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec",
];

/// The formatted second of the last line: a busy log formats each second once.
struct Clock {
    sec: Option<u64>,
    /// `2026-11-30T12:34:56.` (the milliseconds and `Z` follow).
    rfc3339: Vec<u8>,
    /// `30/Nov/2026:12:34:56 +0000`
    clf: Vec<u8>,
}

impl Clock {
    fn new() -> Clock {
        Clock {
            sec: None,
            rfc3339: Vec::with_capacity(24),
            clf: Vec::with_capacity(32),
        }
    }

    fn at(&mut self, t: SystemTime) -> Duration {
        let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
        let sec = d.as_secs();
        if self.sec != Some(sec) {
            self.sec = Some(sec);
            let (y, mo, da, h, mi, s) = civil(sec);
            let y = u64::try_from(y).unwrap_or(0) % 10_000;
            let (mo, da, h, mi, s) = (
                u64::from(mo),
                u64::from(da),
                u64::from(h),
                u64::from(mi),
                u64::from(s),
            );
            let r = &mut self.rfc3339;
            r.clear();
            push_padded(r, y, 4);
            r.push(b'-');
            push_padded(r, mo, 2);
            r.push(b'-');
            push_padded(r, da, 2);
            r.push(b'T');
            push_padded(r, h, 2);
            r.push(b':');
            push_padded(r, mi, 2);
            r.push(b':');
            push_padded(r, s, 2);
            r.push(b'.');
            let c = &mut self.clf;
            c.clear();
            push_padded(c, da, 2);
            c.push(b'/');
            c.extend_from_slice(MONTHS[(mo as usize + 11) % 12]);
            c.push(b'/');
            push_padded(c, y, 4);
            c.push(b':');
            push_padded(c, h, 2);
            c.push(b':');
            push_padded(c, mi, 2);
            c.push(b':');
            push_padded(c, s, 2);
            c.extend_from_slice(b" +0000");
        }
        d
    }

    /// `2026-11-30T12:34:56.789Z`
    fn rfc3339_ms(&mut self, out: &mut Vec<u8>, t: SystemTime) {
        let d = self.at(t);
        out.extend_from_slice(&self.rfc3339);
        push_padded(out, u64::from(d.subsec_millis()), 3);
        out.push(b'Z');
    }

    /// Apache's `%t`: `30/Nov/2026:12:34:56 +0000`.
    fn clf(&mut self, out: &mut Vec<u8>, t: SystemTime) {
        self.at(t);
        out.extend_from_slice(&self.clf);
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// A value not copied into [`Strings`] (a route name, a method), cut the same way.
fn cut(v: &[u8], max: usize) -> &[u8] {
    &v[..v.len().min(max)]
}

/// Printable ASCII that needs no escape in either format.
#[inline]
fn plain(b: u8) -> bool {
    PLAIN[usize::from(b)]
}

static PLAIN: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0x20;
    while b <= 0x7e {
        t[b] = b != b'"' as usize && b != b'\\' as usize;
        b += 1;
    }
    t
};

/// Inside a quoted field of the combined format, as Apache escapes: `"` and `\`
/// with a backslash, anything else outside printable ASCII as `\xhh`.
fn clf_escaped(out: &mut Vec<u8>, mut v: &[u8]) {
    while !v.is_empty() {
        // Runs of plain bytes are copied whole.
        let n = v.iter().position(|&b| !plain(b)).unwrap_or(v.len());
        out.extend_from_slice(&v[..n]);
        let Some(&b) = v.get(n) else {
            break;
        };
        if b == b'"' || b == b'\\' {
            out.extend_from_slice(&[b'\\', b]);
        } else {
            out.extend_from_slice(&[
                b'\\',
                b'x',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 15)],
            ]);
        }
        v = &v[n + 1..];
    }
}

/// A JSON string (with its quotes). UTF-8 is kept; bytes that are not UTF-8
/// become U+FFFD; control characters (C0, DEL, C1) and the Unicode line and
/// paragraph separators are `\u` escapes, so no value can end a line.
fn json_str(out: &mut Vec<u8>, v: &[u8]) {
    out.push(b'"');
    // The common case, printable ASCII throughout, is copied whole.
    let n = v.iter().position(|&b| !plain(b)).unwrap_or(v.len());
    out.extend_from_slice(&v[..n]);
    if n < v.len() {
        json_escaped(out, &v[n..]);
    }
    out.push(b'"');
}

fn json_escaped(out: &mut Vec<u8>, v: &[u8]) {
    for chunk in v.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '"' => out.extend_from_slice(b"\\\""),
                '\\' => out.extend_from_slice(b"\\\\"),
                '\u{0}'..='\u{1f}' | '\u{7f}'..='\u{9f}' | '\u{2028}' | '\u{2029}' => {
                    let u = u32::from(c);
                    out.extend_from_slice(b"\\u");
                    for shift in [12, 8, 4, 0] {
                        out.push(HEX[((u >> shift) & 15) as usize]);
                    }
                }
                c => {
                    let mut b = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
                }
            }
        }
        if !chunk.invalid().is_empty() {
            out.extend_from_slice(b"\\ufffd");
        }
    }
}

fn json_opt(out: &mut Vec<u8>, v: Option<&[u8]>) {
    match v {
        Some(v) => json_str(out, v),
        None => out.extend_from_slice(b"null"),
    }
}

/// `%h - - [%t] "%r" %>s %b "%{Referer}i" "%{User-agent}i"` then Wharf's fields.
fn combined(out: &mut Vec<u8>, clock: &mut Clock, addrs: &mut Addrs, r: &Record) {
    addrs.client(out, r.client);
    out.extend_from_slice(b" - - [");
    clock.clf(out, r.time);
    out.extend_from_slice(b"] \"");
    clf_escaped(out, cut(r.method.as_str().as_bytes(), 64));
    out.push(b' ');
    clf_escaped(out, r.text.get(PATH).unwrap_or(b"/"));
    out.push(b' ');
    out.extend_from_slice(protocol(r.version).as_bytes());
    out.extend_from_slice(b"\" ");
    push_padded(out, r.status.into(), 3);
    out.push(b' ');
    if r.bytes == 0 {
        out.push(b'-');
    } else {
        push_u64(out, r.bytes);
    }
    out.extend_from_slice(b" \"");
    match r.text.get(REFERER) {
        Some(v) => clf_escaped(out, v),
        None => out.push(b'-'),
    }
    out.extend_from_slice(b"\" \"");
    match r.text.get(USER_AGENT) {
        Some(v) => clf_escaped(out, v),
        None => out.push(b'-'),
    }
    out.extend_from_slice(b"\" host=");
    match r.text.get(HOST) {
        Some(h) => {
            out.push(b'"');
            clf_escaped(out, h);
            out.push(b'"');
        }
        None => out.push(b'-'),
    }
    out.extend_from_slice(b" route=");
    match &r.seen.route {
        Some(route) => {
            out.push(b'"');
            clf_escaped(out, cut(route.name.as_bytes(), MAX_HOST));
            out.push(b'"');
        }
        None => out.push(b'-'),
    }
    out.extend_from_slice(b" backend=");
    match r.seen.backend {
        Some(b) => addrs.backend(out, b),
        None => out.push(b'-'),
    }
    out.extend_from_slice(b" tls=");
    out.extend_from_slice(r.tls.unwrap_or("-").as_bytes());
    out.extend_from_slice(b" duration_ms=");
    millis(out, r.duration);
    out.push(b'\n');
}

/// One JSON object; the field names are part of the interface (docs/config.md).
fn json(out: &mut Vec<u8>, clock: &mut Clock, addrs: &mut Addrs, r: &Record) {
    out.extend_from_slice(b"{\"time\":\"");
    clock.rfc3339_ms(out, r.time);
    out.extend_from_slice(b"\",\"client\":\"");
    addrs.client(out, r.client);
    out.extend_from_slice(b"\",\"host\":");
    json_opt(out, r.text.get(HOST));
    out.extend_from_slice(b",\"method\":");
    json_str(out, cut(r.method.as_str().as_bytes(), 64));
    out.extend_from_slice(b",\"path\":");
    json_str(out, r.text.get(PATH).unwrap_or(b"/"));
    out.extend_from_slice(b",\"protocol\":\"");
    out.extend_from_slice(protocol(r.version).as_bytes());
    out.extend_from_slice(b"\",\"status\":");
    push_padded(out, r.status.into(), 3);
    out.extend_from_slice(b",\"bytes\":");
    push_u64(out, r.bytes);
    out.extend_from_slice(b",\"duration_ms\":");
    millis(out, r.duration);
    out.extend_from_slice(b",\"route\":");
    json_opt(
        out,
        r.seen
            .route
            .as_ref()
            .map(|r| cut(r.name.as_bytes(), MAX_HOST)),
    );
    match r.seen.backend {
        Some(b) => {
            out.extend_from_slice(b",\"backend\":\"");
            addrs.backend(out, b);
            out.push(b'"');
        }
        None => out.extend_from_slice(b",\"backend\":null"),
    }
    match r.tls {
        Some(v) => {
            out.extend_from_slice(b",\"tls\":\"");
            out.extend_from_slice(v.as_bytes());
            out.push(b'"');
        }
        None => out.extend_from_slice(b",\"tls\":null"),
    }
    out.extend_from_slice(b",\"referer\":");
    json_opt(out, r.text.get(REFERER));
    out.extend_from_slice(b",\"user_agent\":");
    json_opt(out, r.text.get(USER_AGENT));
    out.extend_from_slice(b"}\n");
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::headers::ClientInfo;
    use http::HeaderValue;

    fn conn(tls: Option<crate::forward::TlsVersion>) -> ConnInfo {
        ConnInfo {
            entrypoint: 0,
            tls: tls.is_some(),
            sni: None,
            tls_version: tls,
            redirect_https: false,
            client_timeout: Duration::from_secs(60).into(),
            tunnel_timeout: Duration::from_secs(60).into(),
            client: "192.0.2.7:5000".parse().unwrap(),
            retire_at: None,
            info: ClientInfo {
                ip: crate::headers::IpText::new("192.0.2.7".parse().unwrap()),
                trusted: false,
                https: false,
            },
        }
    }

    /// A finished record as the writer gets it.
    fn record(log: AccessSender, req: Request<()>, status: u16, bytes: u64) -> Box<Record> {
        let mut p = log.begin(
            &conn(Some(crate::forward::TlsVersion::V1_3)),
            &req,
            Instant::now(),
        );
        let mut rec = p.0.take().unwrap();
        // 2026-11-30T12:34:56.789Z
        rec.time = UNIX_EPOCH + Duration::from_millis(1_796_042_096_789);
        rec.status = status;
        rec.bytes = bytes;
        rec.duration = Duration::from_micros(12_345);
        rec.seen.backend = Some("10.0.1.5:8080".parse().unwrap());
        rec
    }

    fn req(path: &str) -> Request<()> {
        Request::builder()
            .uri(path)
            .header("host", "app.example.org")
            .header("user-agent", "curl/8.0")
            .body(())
            .unwrap()
    }

    #[test]
    fn times_are_utc_civil_dates() {
        assert_eq!(civil(0), (1970, 1, 1, 0, 0, 0));
        assert_eq!(civil(951_782_400), (2000, 2, 29, 0, 0, 0));
        assert_eq!(civil(1_796_042_096), (2026, 11, 30, 12, 34, 56));
        let mut clock = Clock::new();
        let mut out = Vec::new();
        let t = UNIX_EPOCH + Duration::from_millis(1_796_042_096_789);
        clock.rfc3339_ms(&mut out, t);
        assert_eq!(out, b"2026-11-30T12:34:56.789Z");
        out.clear();
        clock.clf(&mut out, t);
        assert_eq!(out, b"30/Nov/2026:12:34:56 +0000");
        // The next second, then others: the cache follows.
        out.clear();
        clock.rfc3339_ms(&mut out, t + Duration::from_millis(1_211));
        assert_eq!(out, b"2026-11-30T12:34:58.000Z");
        out.clear();
        clock.clf(&mut out, UNIX_EPOCH + Duration::from_secs(951_782_400));
        assert_eq!(out, b"29/Feb/2000:00:00:00 +0000");
        out.clear();
        clock.rfc3339_ms(&mut out, UNIX_EPOCH + Duration::from_millis(5));
        assert_eq!(out, b"1970-01-01T00:00:00.005Z");
        // Numbers and addresses without core::fmt.
        out.clear();
        for n in [0, 7, 10, 65_535, u64::MAX] {
            push_u64(&mut out, n);
            out.push(b' ');
        }
        push_addr(&mut out, "10.0.1.5:8080".parse().unwrap());
        out.push(b' ');
        push_addr(&mut out, "[2001:db8::1]:443".parse().unwrap());
        out.push(b' ');
        push_ip(&mut out, "2001:db8::2".parse().unwrap());
        out.push(b' ');
        millis(&mut out, Duration::from_micros(1_000_007));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "0 7 10 65535 18446744073709551615 10.0.1.5:8080 [2001:db8::1]:443 2001:db8::2 \
             1000.007"
        );
    }

    #[test]
    fn combined_line_shape() {
        let (log, _rx) = AccessLog::unstarted(AccessFormat::Combined, 4);
        let rec = record(log.sender(), req("/a/b?x=1"), 200, 1234);
        let mut out = Vec::new();
        combined(&mut out, &mut Clock::new(), &mut Addrs::default(), &rec);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "192.0.2.7 - - [30/Nov/2026:12:34:56 +0000] \"GET /a/b?x=1 HTTP/1.1\" 200 1234 \"-\" \
             \"curl/8.0\" host=\"app.example.org\" route=- backend=10.0.1.5:8080 tls=TLSv1.3 \
             duration_ms=12.345\n"
        );
    }

    #[test]
    fn json_line_fields() {
        let (log, _rx) = AccessLog::unstarted(AccessFormat::Json, 4);
        let rec = record(log.sender(), req("/a?q=%22"), 404, 0);
        let mut out = Vec::new();
        json(&mut out, &mut Clock::new(), &mut Addrs::default(), &rec);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"time\":\"2026-11-30T12:34:56.789Z\",\"client\":\"192.0.2.7\",\
             \"host\":\"app.example.org\",\"method\":\"GET\",\"path\":\"/a?q=%22\",\
             \"protocol\":\"HTTP/1.1\",\"status\":404,\"bytes\":0,\"duration_ms\":12.345,\
             \"route\":null,\"backend\":\"10.0.1.5:8080\",\"tls\":\"TLSv1.3\",\"referer\":null,\
             \"user_agent\":\"curl/8.0\"}\n"
        );
    }

    #[test]
    fn hostile_values_cannot_forge_lines_or_fields() {
        // What a client can put in a header value: quotes, backslashes, a tab,
        // bytes that are not UTF-8, a C1 "next line"; and quotes in the path.
        let ua = HeaderValue::from_bytes(b"x\" \\ \t\xff\xc2\x85 \"forged=1").unwrap();
        let mut r = req(r#"/a"b\c{"k":"v"}?q=\x"#);
        r.headers_mut().insert("user-agent", ua);
        let (log, _rx) = AccessLog::unstarted(AccessFormat::Json, 4);
        let rec = record(log.sender(), r, 200, 5);

        let mut out = Vec::new();
        combined(&mut out, &mut Clock::new(), &mut Addrs::default(), &rec);
        let line = String::from_utf8(out).unwrap();
        assert_eq!(line.matches('\n').count(), 1);
        assert!(
            line.contains(r#""GET /a\"b\\c{\"k\":\"v\"}?q=\\x HTTP/1.1""#),
            "{line}"
        );
        assert!(
            line.contains(r#" "x\" \\ \x09\xff\xc2\x85 \"forged=1" "#),
            "{line}"
        );

        let mut out = Vec::new();
        json(&mut out, &mut Clock::new(), &mut Addrs::default(), &rec);
        let line = String::from_utf8(out).unwrap();
        assert_eq!(line.matches('\n').count(), 1);
        assert!(
            line.contains(r#""path":"/a\"b\\c{\"k\":\"v\"}?q=\\x""#),
            "{line}"
        );
        assert!(
            line.contains(r#""user_agent":"x\" \\ \u0009\ufffd\u0085 \"forged=1""#),
            "{line}"
        );
    }

    #[test]
    fn strings_keep_absent_values_apart_from_empty_ones() {
        let t = Strings::new(b"/p", None, Some(b"ua"), Some(b""));
        assert_eq!(t.get(PATH), Some(&b"/p"[..]));
        assert_eq!(t.get(HOST), None);
        assert_eq!(t.get(USER_AGENT), Some(&b"ua"[..]));
        assert_eq!(t.get(REFERER), Some(&b""[..]));
        // At the inline size and one past it.
        for n in [INLINE - 4, INLINE - 3] {
            let path = vec![b'p'; n];
            let t = Strings::new(&path, Some(b"h"), None, Some(b"ref"));
            assert_eq!(t.heap.is_empty(), n + 4 <= INLINE);
            assert_eq!(t.get(PATH), Some(&path[..]));
            assert_eq!(t.get(HOST), Some(&b"h"[..]));
            assert_eq!(t.get(USER_AGENT), None);
            assert_eq!(t.get(REFERER), Some(&b"ref"[..]));
        }
        let long = vec![b'h'; 1000];
        let t = Strings::new(b"/", Some(&long), None, None);
        assert_eq!(t.get(HOST).unwrap().len(), MAX_HOST + 3);
        assert!(t.get(HOST).unwrap().ends_with(b"h..."));
    }

    #[test]
    fn long_values_are_cut() {
        let long = format!("/{}", "a".repeat(10_000));
        let (log, _rx) = AccessLog::unstarted(AccessFormat::Json, 4);
        let rec = record(log.sender(), req(&long), 200, 0);
        let mut out = Vec::new();
        json(&mut out, &mut Clock::new(), &mut Addrs::default(), &rec);
        assert!(out.len() < MAX_PATH + 600, "{}", out.len());
        assert!(String::from_utf8(out).unwrap().contains("aaa...\""));
        let mut out = Vec::new();
        combined(&mut out, &mut Clock::new(), &mut Addrs::default(), &rec);
        assert!(out.len() < MAX_PATH + 400, "{}", out.len());
    }

    #[test]
    fn a_full_queue_drops_and_counts_without_blocking() {
        // No writer: nothing drains the queue.
        let (log, rx) = AccessLog::unstarted(AccessFormat::Json, 8);
        let sender = log.sender();
        let t0 = Instant::now();
        for _ in 0..1000 {
            sender
                .begin(&conn(None), &req("/"), Instant::now())
                .respond(&mut http::Response::new(crate::body::full("hello")));
        }
        assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
        assert_eq!(log.dropped(), 992);
        assert_eq!(rx.try_iter().count(), 8);
        // A record dropped before its response: 499, sent all the same.
        drop(sender.begin(&conn(None), &req("/gone"), Instant::now()));
        match rx.try_recv() {
            Ok(Msg::Line(rec)) => {
                assert_eq!(rec.status, 499);
                assert_eq!(rec.bytes, 0);
            }
            _ => panic!("no record for the cancelled request"),
        }
    }

    #[test]
    fn writer_appends_batches_and_reopens() {
        let dir = std::env::temp_dir().join(format!("wharf-access-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("access.log");
        let _ = std::fs::remove_file(&path);
        let log = AccessLog::start(AccessFormat::Json, Some(&path)).unwrap();
        let send = |path: &str, status| {
            let mut resp = http::Response::new(crate::body::full("12345"));
            *resp.status_mut() = http::StatusCode::from_u16(status).unwrap();
            log.sender()
                .begin(&conn(None), &req(path), Instant::now())
                .respond(&mut resp);
        };
        for i in 0..100 {
            send(&format!("/{i}"), 200);
        }
        // Rotation: the file moves away, SIGHUP reopens by path.
        let wait_lines = |p: &Path, n: usize| {
            let t0 = Instant::now();
            loop {
                let text = std::fs::read_to_string(p).unwrap_or_default();
                if text.lines().count() >= n {
                    return text;
                }
                assert!(t0.elapsed() < Duration::from_secs(10), "{n} lines in {p:?}");
                std::thread::sleep(Duration::from_millis(5));
            }
        };
        let date = |t| {
            let mut out = Vec::new();
            Clock::new().rfc3339_ms(&mut out, t);
            String::from_utf8(out).unwrap()[..16].to_string()
        };
        let before = date(SystemTime::now());
        let first = wait_lines(&path, 100);
        // The wall-clock time the writer derived from the request's instant.
        let after = date(SystemTime::now());
        assert!(
            first
                .lines()
                .all(|l| l.contains(&format!("{{\"time\":\"{before}"))
                    || l.contains(&format!("{{\"time\":\"{after}"))),
            "not between {before} and {after}: {first}"
        );
        assert!(first.lines().all(|l| l.contains("\"bytes\":5,")), "{first}");
        let rotated = dir.join("access.log.1");
        std::fs::rename(&path, &rotated).unwrap();
        log.reopen();
        let t0 = Instant::now();
        while !path.exists() {
            assert!(t0.elapsed() < Duration::from_secs(10), "not reopened");
            std::thread::sleep(Duration::from_millis(5));
        }
        send("/after", 404);
        log.close(Duration::from_secs(5));
        let second = std::fs::read_to_string(&path).unwrap();
        assert_eq!(second.lines().count(), 1, "{second}");
        assert!(second.contains("\"path\":\"/after\",") && second.contains("\"status\":404,"));
        assert_eq!(
            std::fs::read_to_string(&rotated).unwrap().lines().count(),
            100
        );
        assert_eq!(log.dropped(), 0);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_file_that_cannot_be_opened_is_an_error_at_start() {
        let e = AccessLog::start(
            AccessFormat::Json,
            Some(Path::new("/nonexistent-dir/wharf/access.log")),
        )
        .err()
        .unwrap();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }
}
