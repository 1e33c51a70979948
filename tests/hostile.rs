//! The hostile-input suite (docs/security.md, "Hostile-input suite"): the real
//! binary on loopback, sent raw bytes a well-behaved client never sends — request
//! smuggling, malformed heads, oversized heads, slowloris, slow bodies, bad HTTP/2
//! pseudo-headers, HTTP/2 rapid reset and CONTINUATION floods.
//!
//! Each case asserts what the client got (a status, or a closed connection), what
//! reached the backend (a backend that records the raw bytes of every request it
//! is sent), and for the attacks that Wharf stays alive, that its RSS stays within
//! [`RSS_GROWTH_KIB`] of what it was before, and that another client's requests
//! keep succeeding, quickly, while the attack runs.
//!
//! Attacks are timed against a normal client, so they take [`SERIAL`] and never
//! run beside one another.

// Test helpers: a failed setup step should abort the test loudly.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

/// Most RSS growth (KiB) allowed during and after an attack, over the RSS
/// measured after warm-up: a few buffers per attacking connection, never
/// memory proportional to the bytes an attacker sends.
const RSS_GROWTH_KIB: u64 = 64 * 1024;

/// Attacks (and the latency they are measured against) one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------
// A backend that records the raw bytes of each request.

/// An HTTP/1.1 backend that keeps, byte for byte, each request it is sent
/// (framed by Content-Length or chunked, as Wharf's client frames them) and
/// answers `200 ok` to each. A request it cannot frame is recorded as it is,
/// with the connection closed after it.
struct RawBackend {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<Vec<u8>>>>,
    connections: Arc<AtomicUsize>,
    _server: ServerThread,
}

impl RawBackend {
    fn start() -> RawBackend {
        let requests = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let (r2, c2) = (requests.clone(), connections.clone());
        let server = ServerThread::start(loopback_listener(), move |l, cancel| async move {
            let serve = async {
                loop {
                    let Ok((s, _)) = l.accept().await else {
                        continue;
                    };
                    c2.fetch_add(1, Ordering::SeqCst);
                    tokio::spawn(raw_conn(s, r2.clone()));
                }
            };
            tokio::select! {
                _ = serve => {}
                _ = cancel.cancelled() => {}
            }
        });
        RawBackend {
            addr: server.addr,
            requests,
            connections,
            _server: server,
        }
    }

    fn requests(&self) -> Vec<String> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .map(|r| String::from_utf8_lossy(r).into_owned())
            .collect()
    }

    fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }
}

async fn raw_conn(s: tokio::net::TcpStream, requests: Arc<Mutex<Vec<Vec<u8>>>>) {
    let (r, mut w) = s.into_split();
    let mut r = tokio::io::BufReader::new(r);
    loop {
        let mut req = Vec::new();
        let framed = read_raw_request(&mut r, &mut req).await;
        if req.is_empty() {
            return;
        }
        requests.lock().unwrap().push(req);
        if !framed {
            return;
        }
        let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nx-backend: raw\r\n\r\nok";
        if w.write_all(resp).await.is_err() {
            return;
        }
    }
}

/// Reads one request into `out`; false when it could not be framed (or the
/// connection ended inside it).
async fn read_raw_request<R: tokio::io::AsyncBufRead + Unpin>(
    r: &mut R,
    out: &mut Vec<u8>,
) -> bool {
    let mut content_length = None;
    let mut chunked = false;
    loop {
        let start = out.len();
        match r.read_until(b'\n', out).await {
            Ok(0) | Err(_) => return false,
            Ok(_) => {}
        }
        let line = String::from_utf8_lossy(&out[start..]).to_ascii_lowercase();
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some(v) = line.strip_prefix("content-length:") {
            content_length = v.trim().parse::<usize>().ok();
        }
        if let Some(v) = line.strip_prefix("transfer-encoding:") {
            chunked = v.trim() == "chunked";
        }
    }
    if chunked {
        loop {
            let start = out.len();
            if !matches!(r.read_until(b'\n', out).await, Ok(n) if n > 0) {
                return false;
            }
            let size_line = String::from_utf8_lossy(&out[start..]).into_owned();
            let Ok(size) = usize::from_str_radix(size_line.trim(), 16) else {
                return false;
            };
            if size == 0 {
                // Trailers, then the blank line.
                loop {
                    let start = out.len();
                    if !matches!(r.read_until(b'\n', out).await, Ok(n) if n > 0) {
                        return false;
                    }
                    if out[start..].trim_ascii().is_empty() {
                        return true;
                    }
                }
            }
            let mut chunk = vec![0; size + 2];
            if r.read_exact(&mut chunk).await.is_err() {
                return false;
            }
            out.extend_from_slice(&chunk);
        }
    }
    if let Some(n) = content_length {
        let mut body = vec![0; n];
        if r.read_exact(&mut body).await.is_err() {
            out.extend_from_slice(&body);
            return false;
        }
        out.extend_from_slice(&body);
    }
    true
}

/// The head of a raw request, lower-cased, split into lines.
fn head_lines(req: &str) -> Vec<String> {
    let head = req.split("\r\n\r\n").next().unwrap_or("");
    head.lines().map(|l| l.to_ascii_lowercase()).collect()
}

fn header_of(req: &str, name: &str) -> Vec<String> {
    let prefix = format!("{name}:");
    head_lines(req)
        .into_iter()
        .skip(1)
        .filter_map(|l| l.strip_prefix(&prefix).map(|v| v.trim().to_string()))
        .collect()
}

/// Every request a backend received is framed one way only, and its head never
/// carries what a client smuggled in a body or a malformed field.
fn assert_clean_framing(reqs: &[String]) {
    for r in reqs {
        let cl = header_of(r, "content-length");
        let te = header_of(r, "transfer-encoding");
        assert!(
            cl.len() <= 1 && (cl.is_empty() || te.is_empty()),
            "ambiguous framing reached the backend: {r:?}"
        );
        assert!(te.iter().all(|t| t == "chunked"), "{r:?}");
        let body = r.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        assert!(
            !body.contains("HTTP/1.1"),
            "a request inside a body reached the backend: {r:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// Raw HTTP/1.1 client.

/// What a client got back for some raw bytes.
#[derive(Debug, Default)]
struct Got {
    /// Status codes of the responses, in order.
    statuses: Vec<u16>,
    /// Wharf closed the connection (EOF or reset) before the read timed out.
    closed: bool,
    raw: String,
}

/// Writes `bytes`, then reads until the connection closes or stays silent for
/// `quiet`.
fn exchange(addr: SocketAddr, bytes: &[u8], quiet: Duration) -> Got {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(quiet)).unwrap();
    let _ = s.write_all(bytes);
    let mut buf = Vec::new();
    let mut got = Got::default();
    let mut chunk = [0u8; 16384];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => {
                got.closed = true;
                break;
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
            Err(_) => {
                got.closed = true;
                break;
            }
        }
    }
    got.raw = String::from_utf8_lossy(&buf).into_owned();
    got.statuses = got
        .raw
        .match_indices("HTTP/1.1 ")
        .filter_map(|(i, _)| got.raw.get(i + 9..i + 12)?.parse().ok())
        .collect();
    got
}

// ---------------------------------------------------------------------------
// Liveness, memory and a normal client measured during an attack.

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// What the normal client saw while an attack ran.
#[derive(Debug)]
struct Bystander {
    ok: usize,
    failed: Vec<String>,
    max_latency: Duration,
    peak_rss_kib: u64,
}

/// A normal client sending `GET /` to `host` on new connections, one after
/// another, and sampling Wharf's RSS, until dropped through [`Watch::finish`].
struct Watch {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Bystander>>,
    pid: u32,
    base_rss: u64,
}

impl Watch {
    fn start(w: &Wharf, host: &str) -> Watch {
        let addr = w.ep("web");
        let pid = w.child.id();
        // Warm up (first connections, pools, allocator arenas), then the baseline.
        for _ in 0..20 {
            assert_eq!(get(addr, host, "/").status, 200);
        }
        let base_rss = rss_kib(pid);
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let host = host.to_string();
        let thread = std::thread::spawn(move || {
            let mut b = Bystander {
                ok: 0,
                failed: Vec::new(),
                max_latency: Duration::ZERO,
                peak_rss_kib: 0,
            };
            while !stop2.load(Ordering::SeqCst) {
                let t0 = Instant::now();
                let r = (|| -> Result<u16, String> {
                    let mut s = TcpStream::connect(addr).map_err(|e| e.to_string())?;
                    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                    s.write_all(
                        format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
                            .as_bytes(),
                    )
                    .map_err(|e| e.to_string())?;
                    try_read_response(&mut s).map(|r| r.status)
                })();
                b.max_latency = b.max_latency.max(t0.elapsed());
                match r {
                    Ok(200) => b.ok += 1,
                    Ok(s) => b.failed.push(format!("status {s}")),
                    Err(e) => b.failed.push(e),
                }
                b.peak_rss_kib = b.peak_rss_kib.max(rss_kib(pid));
                std::thread::sleep(Duration::from_millis(20));
            }
            b
        });
        Watch {
            stop,
            thread: Some(thread),
            pid,
            base_rss,
        }
    }

    /// Stops the client and asserts: Wharf alive, RSS within bounds, every
    /// request of the normal client answered 200, none slower than 2 s.
    fn finish(mut self, w: &mut Wharf, what: &str) -> Bystander {
        self.stop.store(true, Ordering::SeqCst);
        let b = self.thread.take().unwrap().join().unwrap();
        assert!(
            w.child.try_wait().unwrap().is_none(),
            "{what}: wharf exited; logs: {:#?}",
            w.logs()
        );
        let after = rss_kib(self.pid);
        eprintln!(
            "{what}: bystander ok={} failed={:?} max_latency={:?}; rss base={} KiB peak={} KiB after={} KiB",
            b.ok, b.failed, b.max_latency, self.base_rss, b.peak_rss_kib, after
        );
        assert!(
            b.peak_rss_kib.max(after) <= self.base_rss + RSS_GROWTH_KIB,
            "{what}: RSS grew from {} KiB to {} KiB",
            self.base_rss,
            b.peak_rss_kib.max(after)
        );
        assert!(
            b.ok >= 5,
            "{what}: the normal client got only {} answers",
            b.ok
        );
        assert!(
            b.failed.is_empty(),
            "{what}: normal requests failed: {:?}",
            b.failed
        );
        assert!(
            b.max_latency < Duration::from_secs(2),
            "{what}: a normal request took {:?}",
            b.max_latency
        );
        b
    }
}

fn config(extra_ep: &str, routes: &str) -> String {
    format!(
        "[entrypoints.web]\naddress = \"127.0.0.1:0\"\n{extra_ep}\n\n[admin]\naddress = \"127.0.0.1:0\"\n\n\
         [docker]\nmode = \"off\"\n\n{routes}"
    )
}

// ---------------------------------------------------------------------------
// HTTP/1.1: smuggling, malformed fields, limits.

/// How a case must end.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// One of these statuses, the connection closed after it (the request's
    /// framing cannot be trusted, so neither can what follows it), and nothing
    /// reached the backend.
    Rejected(&'static [u16]),
    /// This status and nothing reached the backend; the connection may stay
    /// open (the head was read whole, so the next request's start is known).
    Answered(u16),
    /// Answered by the backend, which received exactly this many requests.
    Forwarded(usize),
    /// As `Forwarded`, and then the connection was closed (RFC 9112 §6.1:
    /// after a request with both Content-Length and Transfer-Encoding), so
    /// any bytes after the body were never read as a request.
    ForwardedThenClosed(usize),
}

fn run_cases(w: &Wharf, be: &RawBackend, cases: &[(&str, String, Expect)]) {
    let mut failures = Vec::new();
    for (name, req, expect) in cases {
        let before = be.count();
        let got = exchange(w.ep("web"), req.as_bytes(), Duration::from_secs(3));
        // The backend records a request before it answers it, and the client
        // has the answer (or the close): what the backend got is complete.
        let reqs: Vec<String> = be.requests().split_off(before);
        assert_clean_framing(&reqs);
        let forwarded = |n: usize| {
            got.statuses.len() == n && got.statuses.iter().all(|s| *s == 200) && reqs.len() == n
        };
        let ok = match *expect {
            Expect::Rejected(codes) => {
                got.statuses.len() == 1
                    && codes.contains(&got.statuses[0])
                    && got.closed
                    && reqs.is_empty()
            }
            Expect::Answered(code) => got.statuses == [code] && reqs.is_empty(),
            Expect::Forwarded(n) => forwarded(n),
            Expect::ForwardedThenClosed(n) => forwarded(n) && got.closed,
        };
        eprintln!(
            "case {name}: got {:?} closed={} backend received {} request(s)",
            got.statuses,
            got.closed,
            reqs.len()
        );
        if !ok {
            failures.push(format!(
                "{name}: expected {expect:?}, client got {:?} (closed: {}) {:?}, backend got {reqs:?}",
                got.statuses, got.closed, got.raw
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A malformed chunk is found while the body streams, after the route was
/// chosen: hyper's client fails the request before its head is written, and
/// Wharf answers 502 (a 400 would name the culprit better).
const BAD_BODY: &[u16] = &[400, 502];

fn post(headers: &str, body: &str) -> String {
    format!("POST / HTTP/1.1\r\nHost: app.test\r\n{headers}\r\n{body}")
}

#[test]
fn smuggling_set_is_rejected_or_reframed() {
    let be = RawBackend::start();
    let w = Wharf::start(&config(
        "header_read_timeout = \"1s\"",
        &route("app.test", "/", &[be.addr], ""),
    ));
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: app.test\r\n\r\n";
    let cases = [
        // RFC 9112 §6.1: TE overrides CL, the backend gets the chunked framing
        // only, and the connection is closed after the response, so the bytes
        // after the chunked body (a request, to a CL-framing peer part of the
        // body) are never served.
        (
            "cl-and-te",
            post(
                "Content-Length: 44\r\nTransfer-Encoding: chunked\r\n",
                &format!("0\r\n\r\n{smuggled}"),
            ),
            Expect::ForwardedThenClosed(1),
        ),
        (
            "te-and-cl-reversed",
            post(
                "Transfer-Encoding: chunked\r\nContent-Length: 3\r\n",
                "5\r\nhello\r\n0\r\n\r\n",
            ),
            Expect::ForwardedThenClosed(1),
        ),
        (
            "duplicate-differing-cl",
            post("Content-Length: 5\r\nContent-Length: 6\r\n", "hello!"),
            Expect::Rejected(&[400]),
        ),
        (
            "cl-list-differing",
            post("Content-Length: 5, 6\r\n", "hello!"),
            Expect::Rejected(&[400]),
        ),
        (
            "cl-negative",
            post("Content-Length: -1\r\n", ""),
            Expect::Rejected(&[400]),
        ),
        (
            "cl-plus-sign",
            post("Content-Length: +5\r\n", "hello"),
            Expect::Rejected(&[400]),
        ),
        (
            "te-chunked-identity",
            post("Transfer-Encoding: chunked, identity\r\n", "5\r\nhello\r\n0\r\n\r\n"),
            Expect::Rejected(&[400]),
        ),
        (
            "te-xchunked",
            post("Transfer-Encoding: xchunked\r\n", "5\r\nhello\r\n0\r\n\r\n"),
            Expect::Rejected(&[400]),
        ),
        (
            "te-space-before-colon",
            post("Transfer-Encoding : chunked\r\n", "5\r\nhello\r\n0\r\n\r\n"),
            Expect::Rejected(&[400]),
        ),
        (
            "te-obs-fold",
            post("Transfer-Encoding:\r\n chunked\r\n", "5\r\nhello\r\n0\r\n\r\n"),
            Expect::Rejected(&[400]),
        ),
        (
            "te-leading-space-line",
            post(
                "X-A: b\r\n Transfer-Encoding: chunked\r\n",
                "5\r\nhello\r\n0\r\n\r\n",
            ),
            Expect::Rejected(&[400]),
        ),
        (
            "te-on-http-1.0",
            "POST / HTTP/1.0\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
                .to_string(),
            Expect::Rejected(&[400]),
        ),
        (
            "chunk-size-not-hex",
            post("Transfer-Encoding: chunked\r\n", "zz\r\nhello\r\n0\r\n\r\n"),
            Expect::Rejected(BAD_BODY),
        ),
        (
            "chunk-size-overflow",
            post(
                "Transfer-Encoding: chunked\r\n",
                "ffffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
            ),
            Expect::Rejected(BAD_BODY),
        ),
        (
            "chunk-size-negative",
            post("Transfer-Encoding: chunked\r\n", "-5\r\nhello\r\n0\r\n\r\n"),
            Expect::Rejected(BAD_BODY),
        ),
        (
            "obs-fold",
            "GET / HTTP/1.1\r\nHost: app.test\r\nX-Folded: a\r\n b\r\n\r\n".into(),
            Expect::Rejected(&[400]),
        ),
        (
            "nul-in-value",
            "GET / HTTP/1.1\r\nHost: app.test\r\nX-A: a\0b\r\n\r\n".into(),
            Expect::Rejected(&[400]),
        ),
        (
            "cr-in-value",
            "GET / HTTP/1.1\r\nHost: app.test\r\nX-A: a\rX-B: b\r\n\r\n".into(),
            Expect::Rejected(&[400]),
        ),
        (
            "nul-in-name",
            "GET / HTTP/1.1\r\nHost: app.test\r\nX-\0A: a\r\n\r\n".into(),
            Expect::Rejected(&[400]),
        ),
        (
            "lf-in-name",
            "GET / HTTP/1.1\r\nHost: app.test\r\nX-\nA: a\r\n\r\n".into(),
            Expect::Rejected(&[400]),
        ),
        (
            "space-in-name",
            "GET / HTTP/1.1\r\nHost: app.test\r\nX A: a\r\n\r\n".into(),
            Expect::Rejected(&[400]),
        ),
        (
            "no-host-http-1.1",
            "GET / HTTP/1.1\r\nX-A: a\r\n\r\n".into(),
            Expect::Rejected(&[400]),
        ),
    ];
    run_cases(&w, &be, &cases);
}

/// RFC 9112 §3.2: a request with more than one Host field is answered 400.
#[test]
fn duplicate_host_is_rejected() {
    let be = RawBackend::start();
    let w = Wharf::start(&config("", &route("app.test", "/", &[be.addr], "")));
    let cases = [
        (
            "duplicate-host",
            "GET / HTTP/1.1\r\nHost: app.test\r\nHost: other.test\r\n\r\n".to_string(),
            Expect::Answered(400),
        ),
        (
            "duplicate-host-same",
            "GET / HTTP/1.1\r\nHost: app.test\r\nHost: app.test\r\n\r\n".to_string(),
            Expect::Answered(400),
        ),
    ];
    run_cases(&w, &be, &cases);
}

/// A backend response with both Content-Length and Transfer-Encoding (review
/// L6): RFC 9112 §6.3 says the chunked framing wins; the client gets the whole
/// 20-byte body, and no Content-Length that would truncate it.
#[test]
fn a_response_with_content_length_and_chunked_keeps_only_the_chunked_framing() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let be = l.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && s.read(&mut b).unwrap_or(0) == 1 {
            head.push(b[0]);
        }
        s.write_all(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n\
              14\r\n01234567890123456789\r\n0\r\n\r\n",
        )
        .unwrap();
    });
    let w = Wharf::start(&config("", &route("app.test", "/", &[be], "")));
    let got = exchange(
        w.ep("web"),
        b"GET / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    );
    server.join().unwrap();
    assert_eq!(got.statuses, [200], "{}", got.raw);
    let lower = got.raw.to_ascii_lowercase();
    assert!(!lower.contains("content-length: 5"), "{}", got.raw);
    assert!(got.raw.contains("01234567890123456789"), "{}", got.raw);
}

/// An absolute-form target that names another host than the Host field: the
/// request is either refused or routed by one of them, and then the backend of
/// that route sees that host, never the other (RFC 9112 §3.2.2: the target's
/// authority wins).
#[test]
fn absolute_form_and_host_never_disagree_at_the_backend() {
    let a = RawBackend::start();
    let b = RawBackend::start();
    let w = Wharf::start(&config(
        "",
        &(route("a.test", "/", &[a.addr], "") + &route("b.test", "/", &[b.addr], "")),
    ));
    let got = exchange(
        w.ep("web"),
        b"GET http://a.test/x HTTP/1.1\r\nHost: b.test\r\nConnection: close\r\n\r\n",
        Duration::from_secs(3),
    );
    eprintln!("absolute-form a.test with Host b.test: {:?}", got.statuses);
    for (be, host) in [(&a, "a.test"), (&b, "b.test")] {
        for r in be.requests() {
            let hosts = header_of(&r, "host");
            assert_eq!(hosts, vec![host.to_string()], "{host}'s backend got {r:?}");
            let xfh = header_of(&r, "x-forwarded-host");
            assert!(xfh.iter().all(|h| h == host), "{host}'s backend got {r:?}");
        }
    }
    assert_eq!(got.statuses.len(), 1, "{got:?}");
}

#[test]
fn oversized_heads_are_refused() {
    let be = RawBackend::start();
    let w = Wharf::start(&config(
        "max_header_size = 8192\nmax_headers = 16",
        &route("app.test", "/", &[be.addr], ""),
    ));
    let many: String = (0..17).map(|i| format!("X-H{i}: v\r\n")).collect();
    let cases = [
        (
            "head-over-max_header_size",
            format!(
                "GET / HTTP/1.1\r\nHost: app.test\r\nX-Big: {}\r\n\r\n",
                "a".repeat(9000)
            ),
            Expect::Rejected(&[431]),
        ),
        (
            "more-fields-than-max_headers",
            format!("GET / HTTP/1.1\r\nHost: app.test\r\n{many}\r\n"),
            Expect::Rejected(&[431]),
        ),
        (
            "request-line-over-max_header_size",
            format!(
                "GET /{} HTTP/1.1\r\nHost: app.test\r\n\r\n",
                "a".repeat(9000)
            ),
            Expect::Rejected(&[431]),
        ),
        (
            "just-under-the-limits",
            format!(
                "GET /{} HTTP/1.1\r\nHost: app.test\r\n{}\r\n",
                "a".repeat(4000),
                (0..15)
                    .map(|i| format!("X-H{i}: v\r\n"))
                    .collect::<String>()
            ),
            Expect::Forwarded(1),
        ),
        (
            "bad-method-token",
            "G(T / HTTP/1.1\r\nHost: app.test\r\n\r\n".into(),
            Expect::Rejected(&[400]),
        ),
        (
            "bad-version",
            "GET / HTTP/9.9\r\nHost: app.test\r\n\r\n".into(),
            Expect::Rejected(&[400]),
        ),
    ];
    run_cases(&w, &be, &cases);
}

/// hyper answers 414 only for a target longer than 65534 bytes; with room for
/// one in the head, such a target is 414.
#[test]
fn request_target_over_64k_is_414() {
    let be = RawBackend::start();
    let w = Wharf::start(&config(
        "max_header_size = 262144",
        &route("app.test", "/", &[be.addr], ""),
    ));
    let cases = [(
        "request-target-over-64k",
        format!(
            "GET /{} HTTP/1.1\r\nHost: app.test\r\n\r\n",
            "a".repeat(70_000)
        ),
        Expect::Rejected(&[414]),
    )];
    run_cases(&w, &be, &cases);
}

/// `Upgrade: h2c` is refused: the backend never sees it, the client never gets
/// 101 (h2c upgrade smuggling past the proxy's HTTP/1.1 parsing).
#[test]
fn upgrade_h2c_is_refused() {
    let be = RawBackend::start();
    let w = Wharf::start(&config("", &route("app.test", "/", &[be.addr], "")));
    let got = exchange(
        w.ep("web"),
        b"GET / HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade, HTTP2-Settings\r\n\
          Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n",
        Duration::from_secs(3),
    );
    assert!(!got.statuses.contains(&101), "{got:?}");
    for r in be.requests() {
        assert!(header_of(&r, "upgrade").is_empty(), "backend got {r:?}");
        assert!(
            header_of(&r, "http2-settings").is_empty(),
            "backend got {r:?}"
        );
    }
}

/// A path with dot-segments never reaches the backend of a prefix it climbs
/// out of, and no backend sees a dot-segment.
#[test]
fn dot_segments_do_not_escape_a_prefix() {
    let public = RawBackend::start();
    let other = RawBackend::start();
    let w = Wharf::start(&config(
        "",
        &(route("app.test", "/public", &[public.addr], "")
            + &route("app.test", "/", &[other.addr], "")),
    ));
    for path in [
        "/public/../internal",
        "/public/./../internal",
        "/public/%2e%2e/internal",
        "/public/%2E%2E/internal",
        "/public/.%2e/internal",
    ] {
        let got = exchange(
            w.ep("web"),
            format!("GET {path} HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
                .as_bytes(),
            Duration::from_secs(3),
        );
        eprintln!("{path}: {:?}", got.statuses);
        assert_eq!(got.statuses.len(), 1, "{path}: {got:?}");
    }
    for r in public.requests().iter().chain(other.requests().iter()) {
        let target = head_lines(r)[0].clone();
        assert!(
            !target.contains("/../") && !target.contains("%2e") && !target.contains("/./"),
            "a dot-segment reached a backend: {target}"
        );
    }
    for r in public.requests() {
        assert!(
            !head_lines(&r)[0].contains("internal"),
            "escaped the prefix: {r:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// Slow clients.

/// Slowloris: heads trickled one byte every 200 ms on many connections. Each
/// is closed once `header_read_timeout` (1 s) has passed, without the backend
/// seeing anything, and a normal client is served meanwhile.
#[test]
fn slowloris_heads_are_closed_after_header_read_timeout() {
    let _s = serial();
    let be = RawBackend::start();
    let mut w = Wharf::start(&config(
        "header_read_timeout = \"1s\"",
        &route("app.test", "/", &[be.addr], ""),
    ));
    let watch = Watch::start(&w, "app.test");
    let warm = be.count();
    let addr = w.ep("web");
    let head =
        b"GET / HTTP/1.1\r\nHost: app.test\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let threads: Vec<_> = (0..50)
        .map(|_| {
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(addr).unwrap();
                let t0 = Instant::now();
                for b in head.iter() {
                    if s.write_all(&[*b]).is_err() {
                        return (t0.elapsed(), true);
                    }
                    // Detects a close between bytes without blocking long.
                    s.set_read_timeout(Some(Duration::from_millis(200)))
                        .unwrap();
                    let mut one = [0u8; 1];
                    match s.read(&mut one) {
                        Ok(0) => return (t0.elapsed(), true),
                        Ok(_) => return (t0.elapsed(), false),
                        Err(e)
                            if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                        Err(_) => return (t0.elapsed(), true),
                    }
                }
                (t0.elapsed(), false)
            })
        })
        .collect();
    let results: Vec<(Duration, bool)> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    watch.finish(&mut w, "slowloris x50");
    for (took, closed) in &results {
        assert!(*closed, "a trickled head was not closed ({took:?})");
        assert!(
            *took >= Duration::from_millis(900) && *took < Duration::from_secs(4),
            "closed after {took:?}, not about header_read_timeout (1 s)"
        );
    }
    // The normal client's requests only.
    let reqs = be.requests().split_off(warm);
    assert!(reqs.iter().all(|r| header_of(r, "x-slow").is_empty()));
}

/// Slow bodies: 30 uploads announcing 1 MB and sending a byte every 100 ms.
/// Wharf forwards the head at once and streams the body; a normal client is
/// served meanwhile, and memory does not grow with the bytes announced.
#[test]
fn slow_bodies_do_not_starve_other_clients() {
    let _s = serial();
    let be = RawBackend::start();
    let mut w = Wharf::start(&config(
        "header_read_timeout = \"1s\"",
        &route("app.test", "/", &[be.addr], ""),
    ));
    let watch = Watch::start(&w, "app.test");
    let addr = w.ep("web");
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..30)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(addr).unwrap();
                s.write_all(
                    b"POST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: 1000000\r\n\r\n",
                )
                .unwrap();
                let mut sent = 0;
                while !stop.load(Ordering::SeqCst) {
                    if s.write_all(b"x").is_err() {
                        break;
                    }
                    sent += 1;
                    std::thread::sleep(Duration::from_millis(100));
                }
                sent
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::SeqCst);
    let sent: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    let b = watch.finish(&mut w, "slow bodies x30");
    eprintln!("slow bodies: {sent} body bytes trickled; bystander {b:?}");
}

// ---------------------------------------------------------------------------
// HTTP/2 (h2c prior knowledge) with hand-built frames.

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

fn frame(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, ty, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An HPACK integer with an `n`-bit prefix under `first`'s high bits.
fn hpack_int(out: &mut Vec<u8>, first: u8, n: u32, mut v: usize) {
    let max = (1usize << n) - 1;
    if v < max {
        out.push(first | v as u8);
        return;
    }
    out.push(first | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128 + 128) as u8);
        v /= 128;
    }
    out.push(v as u8);
}

/// A header block of literal fields without indexing (no Huffman), so any
/// name and value can be sent, valid or not.
fn hpack(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (n, v) in fields {
        out.push(0);
        hpack_int(&mut out, 0, 7, n.len());
        out.extend_from_slice(n.as_bytes());
        hpack_int(&mut out, 0, 7, v.len());
        out.extend_from_slice(v.as_bytes());
    }
    out
}

/// What the server said about one stream.
#[derive(Debug, PartialEq)]
enum H2Answer {
    Status(u16),
    Reset(u32),
    GoAway(u32),
    Closed,
}

/// The `:status` of a response header block Wharf's h2 encoder wrote: the
/// first field, indexed (static table 8..14) or a literal with an indexed
/// name, its value plain or Huffman-coded digits.
fn decode_status(block: &[u8]) -> Option<u16> {
    let mut i = 0;
    // Dynamic table size updates first.
    while block.get(i)? & 0xe0 == 0x20 {
        i += 1;
    }
    let b = *block.get(i)?;
    if b & 0x80 != 0 {
        return [200, 204, 206, 304, 400, 404, 500]
            .get(usize::from(b & 0x7f).checked_sub(8)?)
            .copied();
    }
    let idx = if b & 0xc0 == 0x40 { b & 0x3f } else { b & 0x0f };
    if !(8..=14).contains(&idx) {
        return None;
    }
    let lb = *block.get(i + 1)?;
    let len = usize::from(lb & 0x7f);
    let val = block.get(i + 2..i + 2 + len)?;
    if lb & 0x80 == 0 {
        return std::str::from_utf8(val).ok()?.parse().ok();
    }
    // Huffman: digits are 00000..00010 ('0'..'2', 5 bits) and 011001..011111
    // ('3'..'9', 6 bits).
    let bit = |k: usize| (val[k / 8] >> (7 - k % 8)) & 1;
    let (mut k, mut out) = (0, 0u16);
    for _ in 0..3 {
        if k + 5 > val.len() * 8 {
            return None;
        }
        let v5 = (0..5).fold(0u8, |a, j| a << 1 | bit(k + j));
        k += 5;
        let d = if v5 <= 2 {
            v5
        } else {
            let v6 = v5 << 1 | bit(k);
            k += 1;
            v6.checked_sub(22)?
        };
        out = out * 10 + u16::from(d);
    }
    Some(out)
}

/// An h2c connection, the client's preface and SETTINGS sent.
fn h2_connect(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &[]));
    s.write_all(&hello).unwrap();
    s
}

fn read_frame(s: &mut TcpStream) -> Option<(u8, u8, u32, Vec<u8>)> {
    let mut h = [0u8; 9];
    s.read_exact(&mut h).ok()?;
    let len = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
    let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
    let mut p = vec![0; len];
    s.read_exact(&mut p).ok()?;
    Some((h[3], h[4], stream, p))
}

/// Reads frames (acknowledging SETTINGS) until the server answers `stream`.
fn h2_answer(s: &mut TcpStream, stream: u32) -> H2Answer {
    loop {
        let Some((ty, flags, id, p)) = read_frame(s) else {
            return H2Answer::Closed;
        };
        match ty {
            SETTINGS if flags & 1 == 0 => {
                let _ = s.write_all(&frame(SETTINGS, 1, 0, &[]));
            }
            HEADERS if id == stream => {
                return decode_status(&p).map_or(H2Answer::Closed, H2Answer::Status)
            }
            RST_STREAM if id == stream => {
                return H2Answer::Reset(u32::from_be_bytes([p[0], p[1], p[2], p[3]]))
            }
            GOAWAY => return H2Answer::GoAway(u32::from_be_bytes([p[4], p[5], p[6], p[7]])),
            _ => {}
        }
    }
}

fn h2_request(addr: SocketAddr, fields: &[(&str, &str)]) -> H2Answer {
    let mut s = h2_connect(addr);
    s.write_all(&frame(HEADERS, END_STREAM | END_HEADERS, 1, &hpack(fields)))
        .unwrap();
    h2_answer(&mut s, 1)
}

const PROTOCOL_ERROR: u32 = 1;

fn get_fields<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut f = vec![
        (":method", "GET"),
        (":scheme", "http"),
        (":authority", "app.test"),
        (":path", "/"),
    ];
    f.extend_from_slice(extra);
    f
}

#[test]
fn h2_malformed_requests_are_reset_before_the_backend() {
    let be = RawBackend::start();
    let w = Wharf::start(&config("", &route("app.test", "/", &[be.addr], "")));
    let addr = w.ep("web");
    // The well-formed request first, so the frame helpers are known good.
    assert_eq!(h2_request(addr, &get_fields(&[])), H2Answer::Status(200));
    assert_eq!(be.count(), 1);
    let without = |name: &str| -> Vec<(&str, &str)> {
        get_fields(&[])
            .into_iter()
            .filter(|(n, _)| *n != name)
            .collect()
    };
    let cases: Vec<(&str, Vec<(&str, &str)>)> = vec![
        ("missing-method", without(":method")),
        ("missing-scheme", without(":scheme")),
        ("missing-path", without(":path")),
        ("empty-path", {
            let mut f = without(":path");
            f.push((":path", ""));
            f
        }),
        ("unknown-pseudo-header", get_fields(&[(":foo", "bar")])),
        ("pseudo-after-regular", {
            let mut f = without(":path");
            f.push(("x-a", "b"));
            f.push((":path", "/"));
            f
        }),
        ("duplicate-method", get_fields(&[(":method", "POST")])),
        ("uppercase-name", get_fields(&[("X-Upper", "a")])),
        (
            "connection-header",
            get_fields(&[("connection", "keep-alive")]),
        ),
        (
            "keep-alive-header",
            get_fields(&[("keep-alive", "timeout=5")]),
        ),
        (
            "transfer-encoding",
            get_fields(&[("transfer-encoding", "chunked")]),
        ),
        ("upgrade-header", get_fields(&[("upgrade", "websocket")])),
        ("te-not-trailers", get_fields(&[("te", "gzip")])),
        ("cr-in-value", get_fields(&[("x-a", "a\r\nx-b: b")])),
        ("nul-in-value", get_fields(&[("x-a", "a\0b")])),
        ("space-in-name", get_fields(&[("x a", "b")])),
    ];
    let mut failures = Vec::new();
    for (name, fields) in &cases {
        let before = be.count();
        let got = h2_request(addr, fields);
        eprintln!("h2 case {name}: {got:?}");
        let refused = matches!(
            got,
            H2Answer::Reset(PROTOCOL_ERROR)
                | H2Answer::GoAway(PROTOCOL_ERROR)
                | H2Answer::Status(400)
        );
        if !refused || be.count() != before {
            failures.push(format!(
                "{name}: {got:?}, backend got {:?}",
                &be.requests()[before..]
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// RFC 9113 §8.3.1: `:path` is `/`-rooted (or `*` for OPTIONS); anything else
/// is refused before routing: 400, or the stream reset with PROTOCOL_ERROR
/// (§8.1.1, a malformed request) where the h2 layer catches it first.
#[test]
fn h2_path_not_starting_with_slash_is_refused() {
    let be = RawBackend::start();
    let w = Wharf::start(&config("", &route("*", "/", &[be.addr], "")));
    for path in ["x", "app.test/", "http://app.test/"] {
        let mut f = get_fields(&[]);
        f.retain(|(n, _)| *n != ":path");
        f.push((":path", path));
        let got = h2_request(w.ep("web"), &f);
        eprintln!(":path {path:?}: {got:?}");
        assert!(
            matches!(got, H2Answer::Status(400) | H2Answer::Reset(PROTOCOL_ERROR)),
            ":path {path:?}: {got:?}"
        );
    }
    assert_eq!(be.count(), 0, "{:?}", be.requests());
}

/// How long each attack runs while the normal client is measured.
const ATTACK: Duration = Duration::from_secs(3);

/// What the server did to one attacking h2 connection.
#[derive(Debug, Default)]
struct H2Seen {
    goaway: Option<u32>,
    responses: usize,
    resets: usize,
}

/// Drains (and acknowledges SETTINGS on) an attacking h2 connection, so the
/// server never blocks on a full socket, and says what it sent.
fn h2_drain(mut r: TcpStream) -> std::thread::JoinHandle<H2Seen> {
    std::thread::spawn(move || {
        let mut seen = H2Seen::default();
        while let Some((ty, flags, _, p)) = read_frame(&mut r) {
            match ty {
                SETTINGS if flags & 1 == 0 => {
                    let _ = r.write_all(&frame(SETTINGS, 1, 0, &[]));
                }
                HEADERS => seen.responses += 1,
                RST_STREAM => seen.resets += 1,
                GOAWAY => seen.goaway = Some(u32::from_be_bytes([p[4], p[5], p[6], p[7]])),
                _ => {}
            }
        }
        seen
    })
}

/// GOAWAY codes (None: closed without one) and how many connections ended so.
fn tally(codes: &[Option<u32>]) -> Vec<(Option<u32>, usize)> {
    let mut out: Vec<(Option<u32>, usize)> = Vec::new();
    for c in codes {
        match out.iter_mut().find(|(k, _)| k == c) {
            Some((_, n)) => *n += 1,
            None => out.push((*c, 1)),
        }
    }
    out
}

/// Rapid reset (CVE-2023-44487): HEADERS, each followed at once by RST_STREAM,
/// 100 streams per write, on one connection (a new one whenever Wharf closes
/// it) for [`ATTACK`]. Wharf stays up, its memory bounded, and a normal client
/// is served meanwhile.
#[test]
fn h2_rapid_reset_is_survived() {
    let _s = serial();
    let be = RawBackend::start();
    let mut w = Wharf::start(&config("", &route("app.test", "/", &[be.addr], "")));
    let watch = Watch::start(&w, "app.test");
    let (conns0, reqs0) = (be.connections.load(Ordering::SeqCst), be.count());
    let block = hpack(&get_fields(&[]));
    let t0 = Instant::now();
    let (mut streams, mut goaways, mut responses) = (0u64, Vec::new(), 0);
    while t0.elapsed() < ATTACK {
        let mut s = h2_connect(w.ep("web"));
        let reader = h2_drain(s.try_clone().unwrap());
        let mut id = 1u32;
        while t0.elapsed() < ATTACK && id < (1 << 30) {
            let mut buf = Vec::new();
            for _ in 0..100 {
                buf.extend(frame(HEADERS, END_STREAM | END_HEADERS, id, &block));
                buf.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes()));
                id += 2;
            }
            if s.write_all(&buf).is_err() {
                break;
            }
            streams += 100;
        }
        let _ = s.shutdown(std::net::Shutdown::Write);
        let seen = reader.join().unwrap();
        goaways.push(seen.goaway);
        responses += seen.responses;
    }
    let bystander = watch.finish(&mut w, "h2 rapid reset");
    eprintln!(
        "rapid reset: {streams} streams opened and reset on {} connection(s) in {:?}; \
         (GOAWAY code, connections): {:?}; {responses} responses; backend: {} new \
         connections, {} requests of the attack",
        goaways.len(),
        t0.elapsed(),
        tally(&goaways),
        be.connections.load(Ordering::SeqCst) - conns0,
        be.count() - reqs0 - bystander.ok
    );
}

/// CONTINUATION flood: a HEADERS frame without END_HEADERS, then CONTINUATION
/// frames of header bytes that never end, for [`ATTACK`] (a new connection
/// whenever Wharf closes one). Wharf ends every connection itself with a
/// GOAWAY (h2 counts the header block against `max_header_size` and answers
/// ENHANCE_YOUR_CALM), its memory stays flat however many bytes are written
/// (at most [`FLOOD_CAP`] per connection here), and the request never reaches
/// the backend.
#[test]
fn h2_continuation_flood_is_cut_off() {
    let _s = serial();
    let be = RawBackend::start();
    let mut w = Wharf::start(&config("", &route("app.test", "/", &[be.addr], "")));
    let watch = Watch::start(&w, "app.test");
    let reqs0 = be.count();
    // Each CONTINUATION holds one whole literal field of ~16 KB.
    let value = "v".repeat(16_000);
    let cont = frame(CONTINUATION, 0, 1, &hpack(&[("x-flood", &value)]));
    let t0 = Instant::now();
    let (mut goaways, mut max_sent) = (Vec::new(), 0);
    while t0.elapsed() < ATTACK {
        let mut s = h2_connect(w.ep("web"));
        s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
        let ended = Arc::new(AtomicBool::new(false));
        let (mut r, ended2) = (s.try_clone().unwrap(), ended.clone());
        let reader = std::thread::spawn(move || {
            let mut goaway = None;
            while let Some((ty, flags, _, p)) = read_frame(&mut r) {
                if ty == SETTINGS && flags & 1 == 0 {
                    let _ = r.write_all(&frame(SETTINGS, 1, 0, &[]));
                }
                if ty == GOAWAY {
                    goaway = Some(u32::from_be_bytes([p[4], p[5], p[6], p[7]]));
                    ended2.store(true, Ordering::SeqCst);
                }
            }
            ended2.store(true, Ordering::SeqCst);
            goaway
        });
        let _ = s.write_all(&frame(HEADERS, END_STREAM, 1, &hpack(&get_fields(&[]))));
        let mut sent = 0usize;
        while sent < FLOOD_CAP && !ended.load(Ordering::SeqCst) && s.write_all(&cont).is_ok() {
            sent += cont.len();
        }
        max_sent = max_sent.max(sent);
        let _ = s.shutdown(std::net::Shutdown::Write);
        goaways.push(reader.join().unwrap());
    }
    watch.finish(&mut w, "h2 continuation flood");
    eprintln!(
        "continuation flood: {} connection(s); (GOAWAY code, connections): {:?}; at most \
         {max_sent} bytes written into one before its GOAWAY was read",
        goaways.len(),
        tally(&goaways)
    );
    assert!(
        goaways.iter().all(Option::is_some),
        "connections Wharf did not end with a GOAWAY: {:?}",
        tally(&goaways)
    );
    let flooded = be.requests().split_off(reqs0);
    assert!(
        flooded.iter().all(|r| header_of(r, "x-flood").is_empty()),
        "the flooded request reached the backend"
    );
}

/// Most bytes written into one flooded connection: 64 times the default 64 KiB
/// head limit (loopback socket buffers alone take megabytes, so what the
/// attacker manages to write says little about what Wharf read; its memory
/// does).
const FLOOD_CAP: usize = 64 * 64 * 1024;

// ---------------------------------------------------------------------------
// Connection limits and h2 idle (behaviour being added alongside this suite).

/// With `max_connections = 8`, 200 idle connections leave Wharf holding at
/// most 8 of them (the rest wait in the kernel's backlog), and the next
/// client is served once they are gone.
#[test]
fn connection_limit_bounds_open_connections() {
    let _s = serial();
    let be = RawBackend::start();
    let w = Wharf::start(&config(
        "max_connections = 8\nheader_read_timeout = \"30s\"",
        &route("app.test", "/", &[be.addr], ""),
    ));
    let pid = w.child.id();
    assert_eq!(get(w.ep("web"), "app.test", "/").status, 200);
    let fds0 = fd_count(pid);
    let idle: Vec<TcpStream> = (0..200)
        .map(|_| TcpStream::connect(w.ep("web")).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let fds = fd_count(pid);
    eprintln!("200 idle connections: wharf fds {fds0} -> {fds}");
    assert!(fds <= fds0 + 8 + 2, "wharf holds {} more fds", fds - fds0);
    drop(idle);
    wait_until("a request after the flood", WAIT, || {
        exchange(
            w.ep("web"),
            b"GET / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n",
            Duration::from_secs(2),
        )
        .statuses
            == [200]
    });
}

/// An HTTP/2 connection with no stream for `idle_timeout` gets GOAWAY and is
/// closed, though it answers every PING.
#[test]
fn h2_idle_connection_is_closed() {
    let be = RawBackend::start();
    let w = Wharf::start(&config(
        "idle_timeout = \"1s\"",
        &route("app.test", "/", &[be.addr], ""),
    ));
    let mut s = h2_connect(w.ep("web"));
    s.write_all(&frame(
        HEADERS,
        END_STREAM | END_HEADERS,
        1,
        &hpack(&get_fields(&[])),
    ))
    .unwrap();
    assert_eq!(h2_answer(&mut s, 1), H2Answer::Status(200));
    let t0 = Instant::now();
    let mut goaway = false;
    while let Some((ty, _, _, p)) = read_frame(&mut s) {
        if ty == 0x6 {
            // PING: answer it, as every h2 stack does.
            let _ = s.write_all(&frame(0x6, 1, 0, &p));
        }
        goaway |= ty == GOAWAY;
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "still open after 10 s"
        );
    }
    assert!(goaway, "closed without GOAWAY");
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "closed after {:?}",
        t0.elapsed()
    );
}

#[test]
fn suite_helpers_decode_what_they_encode() {
    // The status decoder against the encodings h2 uses.
    assert_eq!(decode_status(&[0x88]), Some(200));
    assert_eq!(decode_status(&[0x8c]), Some(400));
    assert_eq!(decode_status(&[0x48, 0x03, b'4', b'2', b'1']), Some(421));
    // "502" Huffman: 011011 00000 00010 + padding 1s.
    assert_eq!(
        decode_status(&[0x48, 0x82, 0b0110_1100, 0b0000_0010]),
        Some(502)
    );
    let mut v = Vec::new();
    hpack_int(&mut v, 0, 7, 300);
    assert_eq!(v, [127, 173, 1]);
}
