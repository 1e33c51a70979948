//! Shared harness for the end-to-end tests: real HTTP backends on port 0, the real
//! `wharf` binary started on a config written to a temporary directory, and small
//! HTTP clients. Everything started here is stopped on drop.
#![allow(dead_code)]
// Test harness: a failed setup step should abort the test loudly.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;

pub mod docker;
pub mod pebble;
pub mod tls;

pub const WAIT: Duration = Duration::from_secs(15);

pub use wharf_testkit::TempDir;

/// What a backend saw of a request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub version: String,
    pub headers: Vec<(String, String)>,
    pub body_len: usize,
    /// The proxy's address as the backend saw it (one per upstream connection).
    pub peer: SocketAddr,
}

fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Blocks until `n` is notified (a readiness wait), failing after [`WAIT`].
pub fn wait_notified(n: &Notify) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        tokio::time::timeout(WAIT, n.notified())
            .await
            .expect("not notified in time")
    });
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }
}

/// A test server on its own thread and current-thread runtime, serving a
/// listener bound beforehand (so its address is known at once). `serve` gets the
/// listener and a token that is cancelled on [`ServerThread::stop`] or drop; it
/// must return soon after. Stopping joins the thread, so the server is gone then.
pub struct ServerThread {
    pub addr: SocketAddr,
    cancel: tokio_util::sync::CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ServerThread {
    pub fn start<F, Fut>(listener: std::net::TcpListener, serve: F) -> ServerThread
    where
        F: FnOnce(tokio::net::TcpListener, tokio_util::sync::CancellationToken) -> Fut
            + Send
            + 'static,
        Fut: std::future::Future<Output = ()>,
    {
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let cancel = tokio_util::sync::CancellationToken::new();
        let token = cancel.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let l = tokio::net::TcpListener::from_std(listener).unwrap();
                serve(l, token).await;
            });
        });
        ServerThread {
            addr,
            cancel,
            thread: Some(thread),
        }
    }

    /// Cancels the server and waits until its thread (and runtime) has ended.
    pub fn stop(&mut self) {
        self.cancel.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for ServerThread {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A listener on 127.0.0.1, on a port chosen by the kernel.
pub fn loopback_listener() -> std::net::TcpListener {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap()
}

/// A real HTTP/1.1 + h2c backend on 127.0.0.1:0, running on its own runtime thread.
///
/// Paths: `/slow?ms=N` answers after N ms; `/stream` sends one chunk, waits for
/// [`Backend::release`], then sends the last; `/upgrade` answers 101 and echoes
/// bytes; `/big?n=N` answers N bytes; `/login?cookie=NAME&value=V` sets a
/// cookie; anything else answers 200 `name`.
/// Every request is recorded; `x-backend: name` is on every response.
pub struct Backend {
    pub addr: SocketAddr,
    pub name: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    release: Arc<Notify>,
    started: Arc<Notify>,
    /// Stopped (and joined) on drop.
    _server: ServerThread,
}

impl Backend {
    pub fn start(name: &str) -> Backend {
        Self::serve(name, None)
    }

    /// Accepts plain connections, or TLS ones with `tls`, and serves `handle`.
    fn serve(name: &str, tls: Option<tokio_rustls::TlsAcceptor>) -> Backend {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let release = Arc::new(Notify::new());
        let started = Arc::new(Notify::new());
        let (seen2, release2, started2, name2) = (
            seen.clone(),
            release.clone(),
            started.clone(),
            name.to_string(),
        );
        let server = ServerThread::start(loopback_listener(), move |l, cancel| async move {
            let serve = async {
                loop {
                    let (s, peer) = match l.accept().await {
                        Ok(x) => x,
                        Err(_) => continue,
                    };
                    let (seen, release, started, name, tls) = (
                        seen2.clone(),
                        release2.clone(),
                        started2.clone(),
                        name2.clone(),
                        tls.clone(),
                    );
                    tokio::spawn(async move {
                        let svc = hyper::service::service_fn(move |req| {
                            handle(
                                req,
                                peer,
                                seen.clone(),
                                release.clone(),
                                started.clone(),
                                name.clone(),
                            )
                        });
                        let builder =
                            hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                        match tls {
                            None => {
                                let _ = builder
                                    .serve_connection_with_upgrades(TokioIo::new(s), svc)
                                    .await;
                            }
                            Some(acceptor) => {
                                let Ok(s) = acceptor.accept(s).await else {
                                    return;
                                };
                                let _ = builder
                                    .serve_connection_with_upgrades(TokioIo::new(s), svc)
                                    .await;
                            }
                        }
                    });
                }
            };
            tokio::select! {
                _ = serve => {}
                _ = cancel.cancelled() => {}
            }
        });
        Backend {
            addr: server.addr,
            name: name.to_string(),
            seen,
            release,
            started,
            _server: server,
        }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn last(&self) -> Seen {
        self.seen()
            .last()
            .cloned()
            .expect("the backend saw no request")
    }

    /// Lets a `/stream` response send its last chunk.
    pub fn release(&self) {
        self.release.notify_one();
    }

    /// A handle that is notified when a `/slow` or `/stream` request arrives.
    pub fn started(&self) -> Arc<Notify> {
        self.started.clone()
    }
}

type BoxBody = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

async fn handle(
    mut req: Request<Incoming>,
    peer: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    release: Arc<Notify>,
    started: Arc<Notify>,
    name: String,
) -> Result<Response<BoxBody>, std::convert::Infallible> {
    let query: HashMap<String, String> = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let path = req.uri().path().to_string();
    let mut record = Seen {
        method: req.method().to_string(),
        uri: req.uri().to_string(),
        version: format!("{:?}", req.version()),
        headers: req
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
            .collect(),
        body_len: 0,
        peer,
    };
    let on_upgrade = (path == "/upgrade").then(|| hyper::upgrade::on(&mut req));
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    record.body_len = body.len();
    seen.lock().unwrap().push(record);
    let full = |b: Bytes| Full::new(b).boxed();
    let mut resp = match path.as_str() {
        "/slow" => {
            started.notify_one();
            let ms = query.get("ms").and_then(|m| m.parse().ok()).unwrap_or(500);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Response::new(full(Bytes::from("slow done")))
        }
        "/stream" => {
            started.notify_one();
            let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(2);
            tokio::spawn(async move {
                let _ = tx.send(Bytes::from("first;")).await;
                release.notified().await;
                let _ = tx.send(Bytes::from("last")).await;
            });
            Response::new(BodyExt::boxed(ChannelBody(rx)))
        }
        "/upgrade" => {
            if let Some(up) = on_upgrade {
                tokio::spawn(async move {
                    if let Ok(u) = up.await {
                        let mut io = TokioIo::new(u);
                        let mut buf = [0u8; 1024];
                        while let Ok(n) = io.read(&mut buf).await {
                            if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                });
            }
            let mut r = Response::new(full(Bytes::new()));
            *r.status_mut() = hyper::StatusCode::SWITCHING_PROTOCOLS;
            r.headers_mut()
                .insert("connection", "upgrade".parse().unwrap());
            r.headers_mut().insert("upgrade", "echo".parse().unwrap());
            r
        }
        "/big" => {
            let n = query
                .get("n")
                .and_then(|m| m.parse().ok())
                .unwrap_or(1 << 20);
            Response::new(full(Bytes::from(vec![b'x'; n])))
        }
        "/echo-len" => Response::new(full(Bytes::from(body.len().to_string()))),
        // `/login?cookie=NAME&value=V`: the application sets its session cookie.
        "/login" => {
            let mut r = Response::new(full(Bytes::from(name.clone())));
            let cookie = format!(
                "{}={}; Path=/; HttpOnly",
                query.get("cookie").map_or("SESSION", String::as_str),
                query.get("value").map_or("v", String::as_str)
            );
            r.headers_mut()
                .insert("set-cookie", cookie.parse().unwrap());
            r
        }
        _ => {
            let mut r = Response::new(full(Bytes::from(name.clone())));
            // Hop-by-hop fields a proxy must drop on the way back.
            r.headers_mut()
                .insert("keep-alive", "timeout=5".parse().unwrap());
            r.headers_mut()
                .insert("connection", "x-backend-private".parse().unwrap());
            r.headers_mut()
                .insert("x-backend-private", "secret".parse().unwrap());
            r
        }
    };
    resp.headers_mut()
        .insert("x-backend", name.parse().unwrap());
    Ok(resp)
}

/// A response body fed from a channel, so a test controls when each chunk leaves.
struct ChannelBody(tokio::sync::mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

/// The real `wharf` binary, started on a config file; killed on drop.
pub struct Wharf {
    pub child: Child,
    pub dir: TempDir,
    pub config: PathBuf,
    /// Entrypoint name → bound address, from the JSON logs.
    pub entrypoints: HashMap<String, SocketAddr>,
    pub admin: SocketAddr,
    logs: Arc<Mutex<Vec<serde_json::Value>>>,
    log_seen: mpsc::Receiver<()>,
}

/// Writes `config` (with `{port0}` entrypoints already in it) and starts Wharf.
impl Wharf {
    pub fn start(config: &str) -> Wharf {
        Self::try_start(config).unwrap_or_else(|e| panic!("wharf did not start: {e}"))
    }

    pub fn try_start(config: &str) -> Result<Wharf, String> {
        Self::try_start_env(config, &[])
    }

    /// Like [`Self::start`], with extra environment variables.
    pub fn start_env(config: &str, env: &[(&str, &str)]) -> Wharf {
        Self::try_start_env(config, env).unwrap_or_else(|e| panic!("wharf did not start: {e}"))
    }

    pub fn try_start_env(config: &str, env: &[(&str, &str)]) -> Result<Wharf, String> {
        let dir = TempDir::new("wharf");
        let path = dir.0.join("wharf.toml");
        std::fs::write(&path, config).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_wharf"));
        // The certificate storage (and the host ownership record kept there) in
        // the test's directory, never the machine's default /var/lib/wharf/acme.
        if !config.contains("storage =") {
            cmd.env(
                "WHARF_ACME_STORAGE",
                format!("file:{}", dir.0.join("acme").display()),
            );
        }
        let mut child = cmd
            .args(["--log-format", "json", "run", "--config"])
            .arg(&path)
            .env("WHARF_LOG", "info,wharf_proxy=debug")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let logs2 = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let v = serde_json::from_str(&line)
                    .unwrap_or_else(|_| serde_json::json!({ "message": line }));
                logs2.lock().unwrap().push(v);
                let _ = tx.send(());
            }
        });
        let mut w = Wharf {
            child,
            dir,
            config: path,
            entrypoints: HashMap::new(),
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            logs,
            log_seen: rx,
        };
        w.wait_log("wharf is ready")?;
        for l in w.logs() {
            let msg = l["message"].as_str().unwrap_or("");
            let addr = || l["address"].as_str().and_then(|a| a.parse().ok());
            if msg == "entrypoint listening" {
                w.entrypoints.insert(
                    l["entrypoint"].as_str().unwrap().to_string(),
                    addr().unwrap(),
                );
            } else if msg == "admin listening" {
                w.admin = addr().unwrap();
            }
        }
        Ok(w)
    }

    pub fn logs(&self) -> Vec<serde_json::Value> {
        self.logs.lock().unwrap().clone()
    }

    /// Waits for a log line whose message contains `needle` (a readiness wait).
    pub fn wait_log(&mut self, needle: &str) -> Result<serde_json::Value, String> {
        self.wait_log_after(needle, 0)
    }

    /// Like [`Self::wait_log`], ignoring the first `skip` lines.
    pub fn wait_log_after(
        &mut self,
        needle: &str,
        skip: usize,
    ) -> Result<serde_json::Value, String> {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(l) = self
                .logs()
                .into_iter()
                .skip(skip)
                .find(|l| l["message"].as_str().is_some_and(|m| m.contains(needle)))
            {
                return Ok(l);
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("wharf exited ({status}); logs: {:#?}", self.logs()));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!(
                    "no log line with {needle:?}; logs: {:#?}",
                    self.logs()
                ));
            }
            let _ = self
                .log_seen
                .recv_timeout(left.min(Duration::from_millis(200)));
        }
    }

    /// Writes `config` over the running config file, sends SIGHUP and waits for
    /// the reload to be logged. Returns the number of log lines before the
    /// signal, for [`Self::wait_log_after`].
    pub fn reload(&mut self, config: &str) -> usize {
        std::fs::write(&self.config, config).unwrap();
        let before = self.log_count();
        self.signal("HUP");
        self.wait_log_after("configuration reloaded", before)
            .unwrap();
        before
    }

    pub fn log_count(&self) -> usize {
        self.logs.lock().unwrap().len()
    }

    pub fn ep(&self, name: &str) -> SocketAddr {
        self.entrypoints[name]
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Waits for the process to exit and returns its code.
    pub fn wait_exit(&mut self) -> Option<i32> {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return s.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Wharf {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A raw HTTP/1.1 exchange: writes `request` bytes, reads one response.
pub fn raw(addr: SocketAddr, request: &[u8]) -> RawResponse {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(request).unwrap();
    read_response(&mut s)
}

#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Reads one HTTP/1.1 response (content-length, chunked, or until close); panics
/// on a malformed one (see [`try_read_response`]).
pub fn read_response(s: &mut TcpStream) -> RawResponse {
    try_read_response(s).unwrap_or_else(|e| panic!("{e}"))
}

/// `GET path` with a Host header, on a new connection.
pub fn get(addr: SocketAddr, host: &str, path: &str) -> RawResponse {
    raw(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
}

/// An address nothing listens on: bound on port 0, then closed.
/// An HTTP/2 client connection with prior knowledge (h2c) to `addr`, driven by
/// a task on the current runtime.
pub async fn h2c<B>(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<B>
where
    B: hyper::body::Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(s),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    send
}

pub fn dead_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// An address that refuses every connection and that nothing else can take
/// while this lives (unlike [`dead_addr`], whose port the kernel may hand out
/// again): a socket bound, never listening.
pub struct DeadAddr {
    pub addr: SocketAddr,
    _socket: tokio::net::TcpSocket,
}

impl DeadAddr {
    pub fn new() -> DeadAddr {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
        DeadAddr {
            addr: socket.local_addr().unwrap(),
            _socket: socket,
        }
    }
}

/// A config header with one plain entrypoint `web` and the admin listener, both on
/// port 0.
/// Docker is off, so tests never see the engine's containers.
pub fn base_config() -> String {
    "[entrypoints.web]\naddress = \"127.0.0.1:0\"\n\n[admin]\naddress = \"127.0.0.1:0\"\n\n[docker]\nmode = \"off\"\n\n"
        .to_string()
}

pub fn route(host: &str, path: &str, backends: &[SocketAddr], extra: &str) -> String {
    let list: Vec<String> = backends.iter().map(|b| b.to_string()).collect();
    format!(
        "[[routes]]\nhost = \"{host}\"\npath = \"{path}\"\nupstream = \"static:{}\"\ntls = \"none\"\n{extra}\n",
        list.join(",")
    )
}

// ---------------------------------------------------------------------------
// Health, retries and maxconn (tests/health.rs, tests/docker.rs).

/// A backend whose `/health` answer a test sets, and that a test can kill: its
/// listener closed and every open connection reset (RST), as a crashed task.
///
/// HTTP/1.1 only, on its own runtime thread. `/health` answers the status in
/// [`CtlBackend::set_health`] (200 at start); anything else answers 200 `name`.
/// Every response carries `x-backend: name`. Killed on drop.
pub struct CtlBackend {
    pub addr: SocketAddr,
    pub name: String,
    health: Arc<std::sync::atomic::AtomicU16>,
    hits: Arc<AtomicUsize>,
    health_hits: Arc<AtomicUsize>,
    server: ServerThread,
}

impl CtlBackend {
    /// On 127.0.0.1, a port chosen by the kernel.
    pub fn start(name: &str) -> CtlBackend {
        Self::try_start_on(name, SocketAddr::from(([127, 0, 0, 1], 0))).unwrap()
    }

    /// On `bind` (which may name a port that is taken: the error is returned).
    pub fn try_start_on(name: &str, bind: SocketAddr) -> std::io::Result<CtlBackend> {
        let listener = std::net::TcpListener::bind(bind)?;
        let health = Arc::new(std::sync::atomic::AtomicU16::new(200));
        let hits = Arc::new(AtomicUsize::new(0));
        let health_hits = Arc::new(AtomicUsize::new(0));
        let (h2, hits2, hh2, name2) = (
            health.clone(),
            hits.clone(),
            health_hits.clone(),
            name.to_string(),
        );
        let server = ServerThread::start(listener, move |l, cancel| {
            ctl_serve(l, h2, hits2, hh2, cancel, name2)
        });
        Ok(CtlBackend {
            addr: server.addr,
            name: name.to_string(),
            health,
            hits,
            health_hits,
            server,
        })
    }

    /// The status `/health` answers from now on.
    pub fn set_health(&self, status: u16) {
        self.health.store(status, Ordering::SeqCst);
    }

    /// Requests other than `/health` answered so far.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// `/health` requests answered so far.
    pub fn health_hits(&self) -> usize {
        self.health_hits.load(Ordering::SeqCst)
    }

    /// Closes the listener and resets every open connection; returns once done
    /// (also on drop).
    pub fn kill(&mut self) {
        self.server.stop();
    }
}

async fn ctl_serve(
    l: tokio::net::TcpListener,
    health: Arc<std::sync::atomic::AtomicU16>,
    hits: Arc<AtomicUsize>,
    health_hits: Arc<AtomicUsize>,
    cancel: tokio_util::sync::CancellationToken,
    name: String,
) {
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let s = tokio::select! {
            _ = cancel.cancelled() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            r = l.accept() => match r {
                Ok((s, _)) => s,
                Err(_) => continue,
            },
        };
        // A second descriptor of the socket, to set SO_LINGER 0 on at a kill
        // (the connection's own is hyper's).
        let Ok(std_s) = s.into_std() else { continue };
        let Ok(dup) = std_s.try_clone() else { continue };
        let Ok(s) = tokio::net::TcpStream::from_std(std_s) else {
            continue;
        };
        let (health, hits, health_hits, name, cancel) = (
            health.clone(),
            hits.clone(),
            health_hits.clone(),
            name.clone(),
            cancel.clone(),
        );
        conns.spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let (health, hits, health_hits, name) = (
                    health.clone(),
                    hits.clone(),
                    health_hits.clone(),
                    name.clone(),
                );
                async move {
                    let is_health = req.uri().path() == "/health";
                    let _ = req.into_body().collect().await;
                    let mut r = if is_health {
                        health_hits.fetch_add(1, Ordering::SeqCst);
                        let mut r = Response::new(Full::new(Bytes::from("health")));
                        *r.status_mut() =
                            hyper::StatusCode::from_u16(health.load(Ordering::SeqCst))
                                .unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
                        r
                    } else {
                        hits.fetch_add(1, Ordering::SeqCst);
                        Response::new(Full::new(Bytes::from(name.clone())))
                    };
                    r.headers_mut().insert("x-backend", name.parse().unwrap());
                    Ok::<_, std::convert::Infallible>(r)
                }
            });
            let conn =
                hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(s), svc);
            tokio::select! {
                _ = conn => {}
                _ = cancel.cancelled() => {
                    if let Ok(t) = tokio::net::TcpStream::from_std(dup) {
                        let _ = t.set_zero_linger();
                    }
                }
            }
        });
    }
    drop(l);
    while conns.join_next().await.is_some() {}
}

/// Reads one HTTP/1.1 response (content-length, chunked, or until close), or
/// says what was wrong with it.
pub fn try_read_response(s: &mut TcpStream) -> Result<RawResponse, String> {
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line)
        .map_err(|e| format!("status line: {e}"))?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status line: {line:?}"))?;
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).map_err(|e| format!("header: {e}"))?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h
            .split_once(':')
            .ok_or_else(|| format!("bad header {h:?}"))?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let mut body = Vec::new();
    let e = |e: std::io::Error| format!("body: {e}");
    if status == 101 || status == 304 || status == 204 {
    } else if let Some(len) = get("content-length") {
        body.resize(len.parse().map_err(|_| "bad content-length")?, 0);
        r.read_exact(&mut body).map_err(e)?;
    } else if get("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
        loop {
            let mut size = String::new();
            r.read_line(&mut size).map_err(e)?;
            let n = usize::from_str_radix(size.trim(), 16).map_err(|_| "bad chunk size")?;
            let mut chunk = vec![0; n + 2];
            r.read_exact(&mut chunk).map_err(e)?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else {
        r.read_to_end(&mut body).map_err(e)?;
    }
    Ok(RawResponse {
        status,
        headers,
        body,
    })
}

/// Polls `cond` every 10 ms until it holds; panics with `what` after `within`.
/// Returns how long it took.
pub fn wait_until(what: &str, within: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    loop {
        if cond() {
            return t0.elapsed();
        }
        assert!(
            t0.elapsed() < within,
            "timed out after {within:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

impl Wharf {
    /// `GET path` on the admin listener, which must answer 200 with JSON, parsed.
    pub fn api(&self, path: &str) -> serde_json::Value {
        let r = get(self.admin, "admin", path);
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        serde_json::from_slice(&r.body).unwrap()
    }

    /// `GET /api/routes` on the admin listener, parsed.
    pub fn api_routes(&self) -> serde_json::Value {
        self.api("/api/routes")
    }

    /// The `/api/routes` entry of route `name`.
    pub fn api_route(&self, name: &str) -> serde_json::Value {
        let routes = self.api_routes();
        routes
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no route {name}: {routes:#}"))
    }

    /// The `/api/routes` entry of backend `addr` in route `route`.
    pub fn api_backend(&self, route: &str, addr: SocketAddr) -> serde_json::Value {
        let r = self.api_route(route);
        let addr = addr.to_string();
        r["backends"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|b| b["address"] == addr.as_str())
            .cloned()
            .unwrap_or_else(|| panic!("no backend {addr} in route {route}: {r:#}"))
    }

    /// The `health` of backend `addr` in route `route` (`up`, `down`, `draining`).
    pub fn health_of(&self, route: &str, addr: SocketAddr) -> String {
        self.api_backend(route, addr)["health"]
            .as_str()
            .unwrap_or("?")
            .to_string()
    }

    /// `GET /metrics` on the admin listener.
    pub fn metrics(&self) -> String {
        get(self.admin, "admin", "/metrics").text()
    }

    /// The value of the metric line starting with `series` (name and labels
    /// exactly as exposed), if any.
    pub fn metric(&self, series: &str) -> Option<f64> {
        self.metrics().lines().find_map(|l| {
            l.strip_prefix(series)
                .filter(|rest| rest.starts_with(' '))
                .and_then(|rest| rest.trim().parse().ok())
        })
    }

    /// Log lines whose message contains `needle` and whose `backend` field is
    /// `backend`.
    pub fn logs_for(&self, needle: &str, backend: SocketAddr) -> Vec<serde_json::Value> {
        let b = backend.to_string();
        self.logs()
            .into_iter()
            .filter(|l| {
                l["message"].as_str().is_some_and(|m| m.contains(needle))
                    && l["backend"].as_str() == Some(b.as_str())
            })
            .collect()
    }

    /// Waits until `n` log lines contain `needle` with `backend` = `backend`
    /// (the log reader runs behind the process), then returns them.
    pub fn wait_logs_for(
        &self,
        needle: &str,
        backend: SocketAddr,
        n: usize,
    ) -> Vec<serde_json::Value> {
        wait_until(
            &format!("{n} log lines {needle:?} for {backend}"),
            WAIT,
            || self.logs_for(needle, backend).len() >= n,
        );
        self.logs_for(needle, backend)
    }
}

// ---------------------------------------------------------------------------
// TLS to backends (tests/backend_tls.rs): a test CA, Debian's nginx as a real
// HTTPS backend, and a TLS variant of [`Backend`].

/// A throwaway certificate authority (rcgen) that signs server and client
/// certificates.
pub struct TestCa {
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

/// A certificate and its private key, both PEM.
#[derive(Debug, Clone)]
pub struct CertPem {
    pub cert: String,
    pub key: String,
}

impl TestCa {
    pub fn new(cn: &str) -> TestCa {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
        let mut p = CertificateParams::default();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(DnType::CommonName, cn);
        TestCa {
            issuer: rcgen::CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    /// The CA's own certificate (what a `ca` file holds).
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    fn sign(&self, mut p: rcgen::CertificateParams, cn: &str) -> CertPem {
        p.is_ca = rcgen::IsCa::ExplicitNoCa;
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        p.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        p.use_authority_key_identifier_extension = true;
        let key = rcgen::KeyPair::generate().unwrap();
        CertPem {
            cert: p.signed_by(&key, &self.issuer).unwrap().pem(),
            key: key.serialize_pem(),
        }
    }

    /// A server certificate (CA:FALSE, serverAuth) for `names` (its subject
    /// alternative names), signed by this CA.
    pub fn server(&self, names: &[&str]) -> CertPem {
        let mut p =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(p, names[0])
    }

    /// A client certificate (CA:FALSE, clientAuth) with subject `CN=cn`.
    pub fn client(&self, cn: &str) -> CertPem {
        let mut p = rcgen::CertificateParams::default();
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(p, cn)
    }
}

/// Writes `text` to `dir/name`; returns the path.
pub fn write_file(dir: &std::path::Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// One line of [`Nginx`]'s access log.
#[derive(Debug, Clone)]
pub struct NginxHit {
    /// The port of the listener that took the request.
    pub port: u16,
    /// `HTTP/1.1` or `HTTP/2.0`.
    pub protocol: String,
    /// nginx's connection serial number (one per TCP connection).
    pub connection: u64,
    /// The TLS session was resumed (`$ssl_session_reused`).
    pub reused: bool,
    pub status: u16,
    pub uri: String,
    /// `$host`: the Host field or `:authority`.
    pub host: String,
    /// The SNI the client sent (`$ssl_server_name`), `-` for none.
    pub sni: String,
    /// The client certificate's subject (`$ssl_client_s_dn`), `-` for none.
    pub client_dn: String,
}

/// Debian's nginx as a real HTTPS backend: single-process mode (one process,
/// killed on drop), its config, logs and temp files in a scratch directory, on
/// 127.0.0.1 ports picked free just before it starts (a port another process
/// takes in between makes it retry on fresh ones).
///
/// Its access log has one [`NginxHit`] per request; the readiness probe's own
/// requests (`/wharf-probe`) are left out.
pub struct Nginx {
    child: Child,
    pub dir: TempDir,
    pub ports: Vec<u16>,
}

const NGINX_PROBE: &str = "/wharf-probe";

/// A program found on PATH or in the sbin directories (where Debian puts
/// daemons such as nginx and haproxy); panics naming the package to install.
pub fn sbin(name: &str) -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/sbin".into(), "/usr/local/sbin".into()]);
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("{name} is not installed: `apt-get install {name}` (tests/run.sh does this)")
        })
}

fn nginx_bin() -> PathBuf {
    sbin("nginx")
}

impl Nginx {
    /// Starts nginx with `n` ports; `servers(ports)` returns the `server { ... }`
    /// blocks of its `http` context, listening on `127.0.0.1:ports[i]`.
    pub fn start(n: usize, servers: impl Fn(&[u16]) -> String) -> Nginx {
        let bin = nginx_bin();
        let mut last = String::new();
        for _ in 0..5 {
            // Held together so the kernel hands out n distinct ports.
            let held: Vec<_> = (0..n).map(|_| loopback_listener()).collect();
            let ports: Vec<u16> = held
                .iter()
                .map(|l| l.local_addr().unwrap().port())
                .collect();
            drop(held);
            match Self::try_start(&bin, ports, &servers) {
                Ok(nginx) => return nginx,
                Err(e) => last = e,
            }
        }
        panic!("nginx did not start on free ports: {last}");
    }

    fn try_start(
        bin: &std::path::Path,
        ports: Vec<u16>,
        servers: &impl Fn(&[u16]) -> String,
    ) -> Result<Nginx, String> {
        let dir = TempDir::new("nginx");
        let d = dir.0.display().to_string();
        let conf = format!(
            "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n\
             default_type text/plain;\n\
             log_format wharf '$server_port|$server_protocol|$connection|$ssl_session_reused|\
             $status|$request_uri|$host|$ssl_server_name|$ssl_client_s_dn';\n\
             access_log {d}/access.log wharf;\n\
             client_body_temp_path {d}/body;\nproxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fastcgi;\nuwsgi_temp_path {d}/uwsgi;\nscgi_temp_path {d}/scgi;\n\
             {}\n}}\n",
            servers(&ports)
        );
        let conf_path = write_file(&dir.0, "nginx.conf", &conf);
        let child = Command::new(bin)
            .arg("-p")
            .arg(format!("{d}/"))
            .arg("-e")
            .arg(format!("{d}/error.log"))
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting {}: {e}", bin.display()))?;
        let mut nginx = Nginx { child, dir, ports };
        let mut ready = vec![false; nginx.ports.len()];
        let deadline = Instant::now() + WAIT;
        loop {
            let errors = nginx.error_log();
            if errors.contains("Address already in use") {
                // Dropping it kills it; the caller retries on fresh ports.
                return Err(errors);
            }
            if let Ok(Some(status)) = nginx.child.try_wait() {
                panic!("nginx exited ({status}):\n{errors}\nconfig:\n{conf}");
            }
            for (i, port) in nginx.ports.iter().enumerate() {
                ready[i] = ready[i] || nginx_answers(*port);
            }
            if ready.iter().all(|r| *r) {
                return Ok(nginx);
            }
            assert!(
                Instant::now() < deadline,
                "nginx did not answer on {:?}:\n{errors}",
                nginx.ports
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn addr(&self, i: usize) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.ports[i]))
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("error.log")).unwrap_or_default()
    }

    /// Every request logged so far, but the readiness probes.
    pub fn hits(&self) -> Vec<NginxHit> {
        let text = std::fs::read_to_string(self.dir.0.join("access.log")).unwrap_or_default();
        text.lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split('|').collect();
                if f.len() != 9 {
                    return None;
                }
                Some(NginxHit {
                    port: f[0].parse().ok()?,
                    protocol: f[1].to_string(),
                    connection: f[2].parse().ok()?,
                    reused: f[3] == "r",
                    status: f[4].parse().ok()?,
                    uri: f[5].to_string(),
                    host: f[6].to_string(),
                    sni: f[7].to_string(),
                    client_dn: f[8].to_string(),
                })
            })
            .filter(|h| h.uri != NGINX_PROBE)
            .collect()
    }

    /// The requests on port `port` whose URI starts with `prefix`, once there
    /// are `n` of them (nginx writes its log line after the response).
    pub fn wait_hits(&self, port: u16, prefix: &str, n: usize) -> Vec<NginxHit> {
        let get = || -> Vec<NginxHit> {
            self.hits()
                .into_iter()
                .filter(|h| h.port == port && h.uri.starts_with(prefix))
                .collect()
        };
        wait_until(
            &format!("{n} nginx log lines for {prefix} on port {port}"),
            WAIT,
            || get().len() >= n,
        );
        get()
    }
}

/// Whether nginx answers a plain HTTP request on `port` (a TLS port answers it
/// with 400 "The plain HTTP request was sent to HTTPS port").
fn nginx_answers(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(format!("GET {NGINX_PROBE} HTTP/1.0\r\n\r\n").as_bytes())
        .is_err()
    {
        return false;
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out)
        .to_ascii_lowercase()
        .contains("\r\nserver: nginx")
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Backend {
    /// Like [`Backend::start`], over TLS with `tls`'s certificate and key,
    /// offering ALPN `h2` then `http/1.1` (so `Seen::version` says which the
    /// client chose).
    pub fn start_tls(name: &str, tls: &CertPem) -> Backend {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let chain = CertificateDer::pem_slice_iter(tls.cert.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_slice(tls.key.as_bytes()).unwrap();
        let mut cfg = rustls::ServerConfig::builder_with_provider(wharf_tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Self::serve(name, Some(tokio_rustls::TlsAcceptor::from(Arc::new(cfg))))
    }
}
