//! One active check: a fresh TCP connection, one HTTP/1.1 request, the status
//! line, nothing more.
//!
//! Hand-written rather than hyper so that every byte read is bounded: the probe
//! reads at most [`MAX_HEAD`] bytes, stops at the final status line, never reads
//! a body, and drops the connection. A backend that sends garbage, never
//! answers, never closes or streams an endless body costs one small buffer for
//! at most `timeout`.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::Instant;
use wharf_table::{HealthCheck, LastCheck, Scheme};

/// The most of a response the probe reads: a status line (plus any 1xx interim
/// heads before it) longer than this is a failure.
pub const MAX_HEAD: usize = 4096;

/// What to send to one backend, built once per check task.
#[derive(Debug, Clone)]
pub struct Probe {
    addr: SocketAddr,
    /// `None`: a TCP connect is the whole check (see [`Probe::new`]).
    request: Option<Result<Vec<u8>, String>>,
    hc: HealthCheck,
}

impl Probe {
    /// The check of `hc` against one backend. Plain `http` backends get the
    /// HTTP/1.1 request; `https` and `h2c` backends, which do not speak
    /// cleartext HTTP/1.1, get a TCP connect check only.
    pub fn new(addr: SocketAddr, scheme: Scheme, hc: &HealthCheck) -> Self {
        let request = match scheme {
            Scheme::Http => Some(request_bytes(addr, hc)),
            Scheme::Https | Scheme::H2c => None,
        };
        Probe {
            addr,
            request,
            hc: hc.clone(),
        }
    }

    /// Runs one check, bounded as a whole (connect, write, status line) by the
    /// check's `timeout`.
    pub async fn check(&self) -> LastCheck {
        let at = SystemTime::now();
        let started = Instant::now();
        let outcome = tokio::time::timeout(self.hc.timeout, self.attempt()).await;
        let latency = started.elapsed();
        let (status, error) = match outcome {
            Err(_) => (None, Some(format!("timeout after {:?}", self.hc.timeout))),
            Ok(Err(e)) => (None, Some(e)),
            Ok(Ok(None)) => (None, None),
            Ok(Ok(Some(s))) if self.hc.accepts(s) => (Some(s), None),
            Ok(Ok(Some(s))) => (Some(s), Some(format!("status {s}"))),
        };
        LastCheck {
            at,
            status,
            latency,
            error,
        }
    }

    /// The status, or `None` for a connect-only check.
    async fn attempt(&self) -> Result<Option<u16>, String> {
        let request = self
            .request
            .as_ref()
            .map(Result::as_ref)
            .transpose()
            .map_err(String::clone)?;
        let mut stream = TcpStream::connect(self.addr)
            .await
            .map_err(|e| format!("connect: {}", io_text(&e)))?;
        let Some(request) = request else {
            // A connect-only check: connecting was the whole check.
            return Ok(None);
        };
        // One small write; no need to wait for Nagle.
        let _ = stream.set_nodelay(true);
        stream
            .write_all(request)
            .await
            .map_err(|e| format!("write: {}", io_text(&e)))?;
        let mut buf = [0u8; MAX_HEAD];
        let mut len = 0;
        loop {
            let n = stream
                .read(&mut buf[len..])
                .await
                .map_err(|e| format!("read: {}", io_text(&e)))?;
            if n == 0 {
                return Err(if len == 0 {
                    "connection closed without a response".into()
                } else {
                    "connection closed before the status line".into()
                });
            }
            len += n;
            match parse_status(&buf[..len]) {
                Parse::Status(s) => return Ok(Some(s)),
                Parse::Bad => return Err("malformed status line".into()),
                Parse::Need if len == buf.len() => {
                    return Err(format!("no status line in the first {MAX_HEAD} bytes"))
                }
                Parse::Need => {}
            }
        }
        // Dropping the stream here closes it: the body is never read.
    }
}

/// `{method} {path} HTTP/1.1` with Host, User-Agent and `Connection: close`.
/// Values with spaces or control characters are refused rather than sent, so a
/// label can never inject a header.
fn request_bytes(addr: SocketAddr, hc: &HealthCheck) -> Result<Vec<u8>, String> {
    let host = if hc.host.is_empty() {
        addr.to_string()
    } else {
        hc.host.clone()
    };
    for (what, v) in [("method", &hc.method), ("path", &hc.path), ("host", &host)] {
        if v.is_empty() || v.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(format!("invalid check {what} {v:?}"));
        }
    }
    Ok(format!(
        "{} {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: wharf-healthcheck\r\nConnection: close\r\n\r\n",
        hc.method, hc.path
    )
    .into_bytes())
}

/// An I/O error without the `(os error N)` suffix: "Connection refused".
fn io_text(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Parse {
    /// The final status (1xx interim responses skipped, except 101).
    Status(u16),
    /// More bytes needed.
    Need,
    Bad,
}

const PREFIX: &[u8] = b"HTTP/1.";

/// Reads the status of `HTTP/1.x NNN reason` (RFC 9112 §4) from the start of a
/// response. Interim 1xx responses (RFC 9110 §15.2) are skipped to the final
/// one; garbage is refused as soon as the first bytes show it.
fn parse_status(buf: &[u8]) -> Parse {
    let mut rest = buf;
    loop {
        let head = &rest[..rest.len().min(PREFIX.len())];
        if head != &PREFIX[..head.len()] {
            return Parse::Bad;
        }
        let Some(eol) = rest.iter().position(|b| *b == b'\n') else {
            return Parse::Need;
        };
        let line = rest[..eol].strip_suffix(b"\r").unwrap_or(&rest[..eol]);
        // "HTTP/1." digit SP 3DIGIT [SP reason]
        let status = match line {
            [_, _, _, _, _, _, _, v, b' ', a, b, c, tail @ ..]
                if v.is_ascii_digit()
                    && [a, b, c].iter().all(|d| d.is_ascii_digit())
                    && (tail.is_empty() || tail[0] == b' ') =>
            {
                u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0')
            }
            _ => return Parse::Bad,
        };
        if !(100..200).contains(&status) || status == 101 {
            return Parse::Status(status);
        }
        // An interim response: its header block ends with an empty line.
        let after = &rest[eol + 1..];
        let mut pos = 0;
        let end = loop {
            let Some(nl) = after[pos..].iter().position(|b| *b == b'\n') else {
                return Parse::Need;
            };
            let field = &after[pos..pos + nl];
            pos += nl + 1;
            if field.is_empty() || field == b"\r" {
                break pos;
            }
        };
        rest = &after[end..];
    }
}

/// The wait between two checks: `interval` ± 10 %.
pub(crate) fn jittered(interval: Duration) -> Duration {
    interval.mul_f64(0.9 + 0.2 * fastrand::f64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[test]
    fn status_lines() {
        assert_eq!(parse_status(b"HTTP/1.1 200 OK\r\n"), Parse::Status(200));
        assert_eq!(parse_status(b"HTTP/1.0 503\r\n"), Parse::Status(503));
        assert_eq!(
            parse_status(b"HTTP/1.1 204 No Content\n"),
            Parse::Status(204)
        );
        assert_eq!(parse_status(b"HTTP/1.1 200 O"), Parse::Need);
        assert_eq!(parse_status(b"HTT"), Parse::Need);
        assert_eq!(parse_status(b""), Parse::Need);
        assert_eq!(parse_status(b"SSH-2.0-OpenSSH\r\n"), Parse::Bad);
        assert_eq!(parse_status(b"\x16\x03\x01"), Parse::Bad);
        assert_eq!(parse_status(b"HTTP/1.1 2000 OK\r\n"), Parse::Bad);
        assert_eq!(parse_status(b"HTTP/1.1 20x OK\r\n"), Parse::Bad);
        assert_eq!(parse_status(b"HTTP/2 200\r\n"), Parse::Bad);
        // Interim responses are skipped; 101 is final.
        assert_eq!(
            parse_status(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n"),
            Parse::Status(200)
        );
        assert_eq!(
            parse_status(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 404 NF\r\n"),
            Parse::Status(404)
        );
        assert_eq!(
            parse_status(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n"),
            Parse::Need
        );
        assert_eq!(
            parse_status(b"HTTP/1.1 101 Switching\r\n"),
            Parse::Status(101)
        );
    }

    fn hc(expect: Vec<(u16, u16)>, method: &str) -> HealthCheck {
        HealthCheck {
            path: "/health".into(),
            method: method.into(),
            host: "app.test".into(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(300),
            rise: 1,
            fall: 1,
            expect,
        }
    }

    /// A backend that reads one request head, hands it to the test, and then
    /// writes `answer`, then `forever` (if set) in a loop, then closes (unless `hold`).
    async fn backend(
        answer: &'static [u8],
        forever: Option<&'static [u8]>,
        hold: bool,
    ) -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut b = [0u8; 1024];
                    while !head.ends_with(b"\r\n\r\n") {
                        let n = s.read(&mut b).await.unwrap();
                        if n == 0 {
                            return;
                        }
                        head.extend_from_slice(&b[..n]);
                    }
                    let _ = tx.send(String::from_utf8_lossy(&head).into_owned());
                    if s.write_all(answer).await.is_err() {
                        return;
                    }
                    if let Some(chunk) = forever {
                        while s.write_all(chunk).await.is_ok() {}
                        return;
                    }
                    if hold {
                        std::future::pending::<()>().await;
                    }
                });
            }
        });
        (addr, rx)
    }

    const ANY2XX3XX: [(u16, u16); 2] = [(200, 299), (300, 399)];

    /// One `GET /health` check of `addr` over `scheme`, expecting 2xx or 3xx.
    async fn check(addr: SocketAddr, scheme: Scheme) -> LastCheck {
        Probe::new(addr, scheme, &hc(ANY2XX3XX.to_vec(), "GET"))
            .check()
            .await
    }

    #[tokio::test]
    async fn ok_sends_the_request_and_reads_only_the_status() {
        let (addr, mut rx) = backend(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            None,
            false,
        )
        .await;
        let r = check(addr, Scheme::Http).await;
        assert_eq!(r.error, None);
        assert_eq!(r.status, Some(200));
        assert!(r.latency < Duration::from_millis(300));
        let head = rx.recv().await.unwrap();
        assert_eq!(
            head,
            "GET /health HTTP/1.1\r\nHost: app.test\r\nUser-Agent: wharf-healthcheck\r\nConnection: close\r\n\r\n"
        );
    }

    #[tokio::test]
    async fn head_works_and_an_empty_host_sends_the_address() {
        let (addr, mut rx) = backend(
            b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n",
            None,
            true,
        )
        .await;
        let mut c = hc(ANY2XX3XX.to_vec(), "HEAD");
        c.host = String::new();
        let r = Probe::new(addr, Scheme::Http, &c).check().await;
        // The backend holds the connection open: the probe must not wait for it.
        assert_eq!((r.status, r.error), (Some(200), None));
        let head = rx.recv().await.unwrap();
        assert!(
            head.starts_with(&format!("HEAD /health HTTP/1.1\r\nHost: {addr}\r\n")),
            "{head}"
        );
    }

    #[tokio::test]
    async fn a_500_fails_with_its_status() {
        let (addr, _rx) = backend(b"HTTP/1.1 500 Internal Server Error\r\n\r\n", None, false).await;
        let r = check(addr, Scheme::Http).await;
        assert_eq!(r.status, Some(500));
        assert_eq!(r.error.as_deref(), Some("status 500"));
    }

    #[tokio::test]
    async fn expect_lists() {
        let (a204, _r1) = backend(b"HTTP/1.1 204 No Content\r\n\r\n", None, false).await;
        let (a301, _r2) = backend(b"HTTP/1.1 301 Moved\r\n\r\n", None, false).await;
        let list = hc(vec![(200, 200), (204, 204)], "GET");
        let ranges = hc(ANY2XX3XX.to_vec(), "GET");
        let ok = |p: Probe| async move { p.check().await.error.is_none() };
        assert!(ok(Probe::new(a204, Scheme::Http, &list)).await);
        assert!(!ok(Probe::new(a301, Scheme::Http, &list)).await);
        assert!(ok(Probe::new(a301, Scheme::Http, &ranges)).await);
        assert!(ok(Probe::new(a204, Scheme::Http, &ranges)).await);
    }

    #[tokio::test]
    async fn garbage_is_malformed_at_once() {
        let (addr, _rx) = backend(b"SSH-2.0-OpenSSH_9.6\r\n", None, true).await;
        let r = check(addr, Scheme::Http).await;
        assert_eq!(r.error.as_deref(), Some("malformed status line"));
        assert!(
            r.latency < Duration::from_millis(300),
            "did not wait for the timeout"
        );
    }

    #[tokio::test]
    async fn endless_status_line_fails_without_growing() {
        // "HTTP/1.1 200 " then reason-phrase bytes forever, never a newline.
        let (addr, _rx) = backend(b"HTTP/1.1 200 ", Some(b"xxxxxxxxxxxxxxxx"), false).await;
        let r = check(addr, Scheme::Http).await;
        assert_eq!(
            r.error.as_deref(),
            Some("no status line in the first 4096 bytes")
        );
    }

    #[tokio::test]
    async fn endless_body_passes_on_the_status_alone() {
        let (addr, _rx) = backend(b"HTTP/1.1 200 OK\r\n\r\n", Some(&[b'x'; 8192]), false).await;
        let r = check(addr, Scheme::Http).await;
        assert_eq!((r.status, r.error), (Some(200), None));
    }

    #[tokio::test]
    async fn silent_backend_times_out() {
        let (addr, _rx) = backend(b"", None, true).await;
        let r = check(addr, Scheme::Http).await;
        assert_eq!(r.error.as_deref(), Some("timeout after 300ms"));
        assert!(r.latency >= Duration::from_millis(300));
        assert!(r.latency < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn closed_without_answer_and_refused() {
        let (addr, _rx) = backend(b"", None, false).await;
        let r = check(addr, Scheme::Http).await;
        assert_eq!(
            r.error.as_deref(),
            Some("connection closed without a response")
        );
        // A port nobody listens on.
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dead = l.local_addr().unwrap();
        drop(l);
        let r = check(dead, Scheme::Http).await;
        assert_eq!(r.error.as_deref(), Some("connect: Connection refused"));
        // Connect-only checks for https backends.
        let r = check(dead, Scheme::Https).await;
        assert_eq!(r.error.as_deref(), Some("connect: Connection refused"));
        let r = check(addr, Scheme::H2c).await;
        assert_eq!((r.status, r.error), (None, None));
    }

    #[tokio::test]
    async fn header_injection_is_refused() {
        let mut c = hc(ANY2XX3XX.to_vec(), "GET");
        c.host = "a\r\nX-Evil: 1".into();
        let r = Probe::new("127.0.0.1:1".parse().unwrap(), Scheme::Http, &c)
            .check()
            .await;
        assert!(r.error.unwrap().starts_with("invalid check host"));
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        let i = Duration::from_secs(10);
        for _ in 0..1000 {
            let j = jittered(i);
            assert!(j >= Duration::from_secs(9) && j <= Duration::from_secs(11));
        }
    }
}
