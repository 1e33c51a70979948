//! One active check: a fresh connection (TCP, then TLS for `https` backends),
//! one HTTP/1.1 request, the status line, nothing more.
//!
//! Hand-written rather than hyper so that every byte read is bounded: the probe
//! reads at most [`MAX_HEAD`] bytes, stops at the final status line, never reads
//! a body, and drops the connection. A backend that sends garbage, never
//! answers, stalls its handshake, never closes or streams an endless body costs
//! one small buffer for at most `timeout`.
//!
//! `https` backends are checked with the route's own backend TLS policy (its
//! roots or `insecure`, its client certificate, its server name), offering
//! HTTP/1.1 only: a check passes only if a request could have been forwarded.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use wharf_table::{BackendTls, HealthCheck, LastCheck, Scheme};

/// The most of a response the probe reads: a status line (plus any 1xx interim
/// heads before it) longer than this is a failure.
pub const MAX_HEAD: usize = 4096;

/// What to send to one backend, built once per check task.
#[derive(Clone)]
pub struct Probe {
    addr: SocketAddr,
    /// `None`: a TCP connect is the whole check (see [`Probe::new`]).
    request: Option<Result<Vec<u8>, String>>,
    /// The TLS client side of an `https` backend's check.
    tls: Option<(TlsConnector, Arc<BackendTls>)>,
    hc: HealthCheck,
}

impl std::fmt::Debug for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probe")
            .field("addr", &self.addr)
            .field("request", &self.request)
            .field("tls", &self.tls.as_ref().map(|(_, t)| t))
            .field("hc", &self.hc)
            .finish()
    }
}

impl Probe {
    /// The check of `hc` against one backend. Plain `http` backends get the
    /// HTTP/1.1 request; `https` backends get it over TLS with `tls`, the
    /// route's backend TLS policy (its HTTP/1.1-only client config and server
    /// name). `h2c` backends, which do not speak HTTP/1.1, and `https` backends
    /// without a policy get a TCP connect check only.
    pub fn new(
        addr: SocketAddr,
        scheme: Scheme,
        hc: &HealthCheck,
        tls: Option<&Arc<BackendTls>>,
    ) -> Self {
        let (request, tls) = match (scheme, tls) {
            (Scheme::Http, _) => (Some(request_bytes(addr, hc)), None),
            (Scheme::Https, Some(tls)) => (
                Some(request_bytes(addr, hc)),
                Some((TlsConnector::from(tls.config_h1.clone()), tls.clone())),
            ),
            (Scheme::Https, None) | (Scheme::H2c, _) => (None, None),
        };
        Probe {
            addr,
            request,
            tls,
            hc: hc.clone(),
        }
    }

    /// Runs one check, bounded as a whole (connect, TLS handshake, write,
    /// status line) by the check's `timeout`.
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
        let stream = TcpStream::connect(self.addr)
            .await
            .map_err(|e| format!("connect: {}", io_text(&e)))?;
        let Some(request) = request else {
            // A connect-only check: connecting was the whole check.
            return Ok(None);
        };
        // One small write; no need to wait for Nagle.
        let _ = stream.set_nodelay(true);
        match &self.tls {
            None => exchange(stream, request).await.map(Some),
            Some((connector, tls)) => {
                let stream = connector
                    .connect(tls.server_name.clone(), stream)
                    .await
                    .map_err(|e| format!("TLS handshake failed: {}", io_text(&e)))?;
                exchange(stream, request).await.map(Some)
            }
        }
    }
}

/// Writes `request` and reads up to the final status line of the answer.
/// Dropping the stream at the end closes it: the body is never read.
async fn exchange<S>(mut stream: S, request: &[u8]) -> Result<u16, String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    stream
        .write_all(request)
        .await
        .map_err(|e| stream_error("write", &e, true))?;
    let mut buf = [0u8; MAX_HEAD];
    let mut len = 0;
    loop {
        let n = match stream.read(&mut buf[len..]).await {
            Ok(n) => n,
            // A TLS peer that closes without close_notify: closed all the same.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
            Err(e) => return Err(stream_error("read", &e, len == 0)),
        };
        if n == 0 {
            return Err(if len == 0 {
                "connection closed without a response".into()
            } else {
                "connection closed before the status line".into()
            });
        }
        len += n;
        match parse_status(&buf[..len]) {
            Parse::Status(s) => return Ok(s),
            Parse::Bad => return Err("malformed status line".into()),
            Parse::Need if len == buf.len() => {
                return Err(format!("no status line in the first {MAX_HEAD} bytes"))
            }
            Parse::Need => {}
        }
    }
}

/// A read or write error. A TLS error before any response byte is the server
/// refusing the session: with TLS 1.3 the client's side of the handshake ends
/// before the server has checked the client's certificate, so a refused (or
/// missing) client certificate shows up here as an alert, and is reported as
/// the handshake failure it is.
fn stream_error(what: &str, e: &std::io::Error, before_response: bool) -> String {
    let tls = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<tokio_rustls::rustls::Error>());
    match tls {
        Some(t) if before_response => format!("TLS handshake failed: {t}"),
        Some(t) => format!("{what}: TLS: {t}"),
        None => format!("{what}: {}", io_text(e)),
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
        Probe::new(addr, scheme, &hc(ANY2XX3XX.to_vec(), "GET"), None)
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
        let r = Probe::new(addr, Scheme::Http, &c, None).check().await;
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
        assert!(ok(Probe::new(a204, Scheme::Http, &list, None)).await);
        assert!(!ok(Probe::new(a301, Scheme::Http, &list, None)).await);
        assert!(ok(Probe::new(a301, Scheme::Http, &ranges, None)).await);
        assert!(ok(Probe::new(a204, Scheme::Http, &ranges, None)).await);
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
        // Connect-only checks for h2c backends and https ones without a policy.
        let r = check(dead, Scheme::Https).await;
        assert_eq!(r.error.as_deref(), Some("connect: Connection refused"));
        let r = check(addr, Scheme::H2c).await;
        assert_eq!((r.status, r.error), (None, None));
    }

    #[tokio::test]
    async fn header_injection_is_refused() {
        let mut c = hc(ANY2XX3XX.to_vec(), "GET");
        c.host = "a\r\nX-Evil: 1".into();
        let r = Probe::new("127.0.0.1:1".parse().unwrap(), Scheme::Http, &c, None)
            .check()
            .await;
        assert!(r.error.unwrap().starts_with("invalid check host"));
    }

    /// TLS backends: real tokio-rustls servers on 127.0.0.1:0 with rcgen
    /// certificates, checked with the client policy the control plane builds.
    mod tls {
        use super::*;
        use std::path::PathBuf;
        use std::sync::atomic::{AtomicU32, Ordering};
        use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
        use tokio_rustls::rustls::server::WebPkiClientVerifier;
        use tokio_rustls::rustls::{RootCertStore, ServerConfig};
        use tokio_rustls::TlsAcceptor;

        const NAME: &str = "backend.test";

        /// A self-signed certificate (its own CA) and its key, as DER and PEM.
        struct Cert {
            der: CertificateDer<'static>,
            key: PrivateKeyDer<'static>,
            pem: String,
            key_pem: String,
        }

        /// Each with its own subject, so that one is never taken for another's
        /// issuer.
        fn cert(name: &str) -> Cert {
            static N: AtomicU32 = AtomicU32::new(0);
            let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
            params.distinguished_name.push(
                rcgen::DnType::CommonName,
                format!("{name} #{}", N.fetch_add(1, Ordering::Relaxed)),
            );
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = params.self_signed(&key).unwrap();
            Cert {
                der: cert.der().clone(),
                key: PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
                pem: cert.pem(),
                key_pem: key.serialize_pem(),
            }
        }

        /// A file holding `contents`, removed on drop.
        struct TempFile(PathBuf);

        impl TempFile {
            fn new(contents: &str) -> Self {
                static N: AtomicU32 = AtomicU32::new(0);
                let path = std::env::temp_dir().join(format!(
                    "wharf-health-{}-{}.pem",
                    std::process::id(),
                    N.fetch_add(1, Ordering::Relaxed)
                ));
                std::fs::write(&path, contents).unwrap();
                TempFile(path)
            }
        }

        impl Drop for TempFile {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }

        /// A route's backend TLS policy as the control plane compiles it:
        /// trusting `ca` (or nothing, with `insecure`), presenting `client`.
        fn policy(ca: Option<&Cert>, insecure: bool, client: Option<&Cert>) -> Arc<BackendTls> {
            let ca = ca.map(|c| TempFile::new(&c.pem));
            let client = client.map(|c| (TempFile::new(&c.pem), TempFile::new(&c.key_pem)));
            let config = wharf_tls::backend_client_config(&wharf_tls::BackendTlsSpec {
                ca: ca.as_ref().map(|f| f.0.clone()),
                insecure,
                client_cert: client.as_ref().map(|(c, _)| c.0.clone()),
                client_key: client.as_ref().map(|(_, k)| k.0.clone()),
            })
            .unwrap();
            Arc::new(BackendTls {
                config_h1: wharf_tls::http11_only(&config),
                config,
                server_name: ServerName::try_from(NAME).unwrap(),
                insecure,
                key: 1,
            })
        }

        /// What the server saw of one connection.
        #[derive(Debug)]
        struct Seen {
            sni: Option<String>,
            alpn: Option<Vec<u8>>,
            head: String,
        }

        /// A TLS backend presenting `cert`, requiring a client certificate
        /// issued by `client_ca` if set, offering h2 and http/1.1. It reads one
        /// request head, reports it, answers `answer` and closes. A failed
        /// handshake is reported as `Err` (and the connection drained, so the
        /// client reads the alert rather than a reset).
        async fn tls_backend(
            cert: &Cert,
            client_ca: Option<&Cert>,
            answer: &'static [u8],
        ) -> (
            SocketAddr,
            tokio::sync::mpsc::UnboundedReceiver<Result<Seen, String>>,
        ) {
            let provider = wharf_tls::provider();
            let builder = ServerConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .unwrap();
            let builder = match client_ca {
                None => builder.with_no_client_auth(),
                Some(ca) => {
                    let mut roots = RootCertStore::empty();
                    roots.add(ca.der.clone()).unwrap();
                    let verifier =
                        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                            .build()
                            .unwrap();
                    builder.with_client_cert_verifier(verifier)
                }
            };
            let mut config = builder
                .with_single_cert(vec![cert.der.clone()], cert.key.clone_key())
                .unwrap();
            config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            let acceptor = TlsAcceptor::from(Arc::new(config));
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            tokio::spawn(async move {
                loop {
                    let (s, _) = listener.accept().await.unwrap();
                    let (acceptor, tx) = (acceptor.clone(), tx.clone());
                    tokio::spawn(async move {
                        let mut s = match acceptor.accept(s).into_fallible().await {
                            Ok(s) => s,
                            Err((e, mut io)) => {
                                let _ = tx.send(Err(e.to_string()));
                                let mut b = [0u8; 1024];
                                while matches!(io.read(&mut b).await, Ok(n) if n > 0) {}
                                return;
                            }
                        };
                        let (_, conn) = s.get_ref();
                        let sni = conn.server_name().map(str::to_string);
                        let alpn = conn.alpn_protocol().map(<[u8]>::to_vec);
                        let mut head = Vec::new();
                        let mut b = [0u8; 1024];
                        while !head.ends_with(b"\r\n\r\n") {
                            match s.read(&mut b).await {
                                Ok(n) if n > 0 => head.extend_from_slice(&b[..n]),
                                Ok(_) => return,
                                Err(e) => {
                                    let _ = tx.send(Err(e.to_string()));
                                    return;
                                }
                            }
                        }
                        let head = String::from_utf8_lossy(&head).into_owned();
                        let _ = tx.send(Ok(Seen { sni, alpn, head }));
                        let _ = s.write_all(answer).await;
                        let _ = s.shutdown().await;
                    });
                }
            });
            (addr, rx)
        }

        async fn tls_check(addr: SocketAddr, tls: &Arc<BackendTls>) -> LastCheck {
            Probe::new(
                addr,
                Scheme::Https,
                &hc(ANY2XX3XX.to_vec(), "GET"),
                Some(tls),
            )
            .check()
            .await
        }

        #[tokio::test]
        async fn status_decides_over_tls_with_sni_and_http11() {
            let c = cert(NAME);
            let tls = policy(Some(&c), false, None);
            let (ok, mut seen) = tls_backend(&c, None, b"HTTP/1.1 200 OK\r\n\r\nok").await;
            let r = tls_check(ok, &tls).await;
            assert_eq!((r.status, r.error), (Some(200), None));
            let seen = seen.recv().await.unwrap().unwrap();
            assert_eq!(seen.sni.as_deref(), Some(NAME));
            // The HTTP/1.1-only policy: a backend offering h2 does not get it.
            assert_eq!(seen.alpn.as_deref(), Some(&b"http/1.1"[..]));
            assert_eq!(
                seen.head,
                "GET /health HTTP/1.1\r\nHost: app.test\r\nUser-Agent: wharf-healthcheck\r\nConnection: close\r\n\r\n"
            );

            let (failing, _rx) =
                tls_backend(&c, None, b"HTTP/1.1 503 Service Unavailable\r\n\r\n").await;
            let r = tls_check(failing, &tls).await;
            assert_eq!(r.status, Some(503));
            assert_eq!(r.error.as_deref(), Some("status 503"));
        }

        #[tokio::test]
        async fn untrusted_or_misnamed_certificate_fails_the_handshake() {
            let trusted = cert(NAME);
            let tls = policy(Some(&trusted), false, None);

            // Same name, another key: not issued by the trusted CA.
            let (addr, mut seen) = tls_backend(&cert(NAME), None, b"HTTP/1.1 200 OK\r\n\r\n").await;
            let r = tls_check(addr, &tls).await;
            assert_eq!(r.status, None);
            let e = r.error.unwrap();
            assert!(e.starts_with("TLS handshake failed: "), "{e}");
            assert!(e.contains("UnknownIssuer"), "{e}");
            assert!(seen.recv().await.unwrap().is_err(), "no request was sent");

            // Trusted, but for another name.
            let other = cert("other.test");
            let (addr, _rx) = tls_backend(&other, None, b"HTTP/1.1 200 OK\r\n\r\n").await;
            let r = tls_check(addr, &policy(Some(&other), false, None)).await;
            let e = r.error.unwrap();
            assert!(e.starts_with("TLS handshake failed: "), "{e}");
            assert!(e.contains("not valid for name \"backend.test\""), "{e}");

            // `insecure` accepts either.
            let r = tls_check(addr, &policy(None, true, None)).await;
            assert_eq!((r.status, r.error), (Some(200), None));
        }

        #[tokio::test]
        async fn client_certificate_is_presented_or_its_absence_reported() {
            let server = cert(NAME);
            let client = cert("client.test");
            let (addr, mut seen) =
                tls_backend(&server, Some(&client), b"HTTP/1.1 200 OK\r\n\r\n").await;

            let r = tls_check(addr, &policy(Some(&server), false, Some(&client))).await;
            assert_eq!((r.status, r.error), (Some(200), None));
            assert!(seen.recv().await.unwrap().is_ok());

            // Without one, the server refuses the session (after the client's
            // side of a TLS 1.3 handshake is done): still a handshake failure.
            let r = tls_check(addr, &policy(Some(&server), false, None)).await;
            assert_eq!(r.status, None);
            let e = r.error.unwrap();
            assert!(e.starts_with("TLS handshake failed: "), "{e}");
            assert!(e.contains("alert"), "{e}");
            assert!(seen.recv().await.unwrap().is_err());
        }

        #[tokio::test]
        async fn a_stalled_handshake_is_bounded_by_the_timeout() {
            // Accepts TCP, never says a word.
            let (addr, _rx) = backend(b"", None, true).await;
            let mut c = hc(ANY2XX3XX.to_vec(), "GET");
            c.timeout = Duration::from_millis(100);
            let tls = policy(None, true, None);
            let r = Probe::new(addr, Scheme::Https, &c, Some(&tls))
                .check()
                .await;
            assert_eq!(r.error.as_deref(), Some("timeout after 100ms"));
            assert!(r.latency < Duration::from_secs(2));
        }

        #[tokio::test]
        async fn https_without_a_policy_is_connect_only() {
            let c = cert(NAME);
            let (addr, _rx) = tls_backend(&c, None, b"HTTP/1.1 503 No\r\n\r\n").await;
            let r = check(addr, Scheme::Https).await;
            assert_eq!((r.status, r.error), (None, None));
        }
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
