//! Deploys lose no request (issue 13): a 3-replica labelled swarm service is
//! replaced task by task with `docker service update --force` while clients send
//! keep-alive GETs, 512-byte POSTs and slow (1.5 s) GETs and POSTs through Wharf,
//! itself a swarm service on the overlay with host-mode published ports, as
//! deploy/ runs it. Every request is counted; any failure is reported with what
//! it was.
//!
//! The application is this test binary itself, imported into an image with its
//! shared libraries (no registry): run with `ROLLING_APP` set, the `app_main`
//! test serves HTTP/1.1 with keep-alive on port 80, and on SIGTERM either
//! **drains** (stops accepting, finishes what is in flight, closes idle
//! keep-alive connections, exits) or **drops** (exits at once, cutting every
//! connection), as `ROLLING_APP` says. With `ROLLING_WARMUP_MS` it answers 503
//! (and fails its health check) for that long after it starts, like an
//! application loading its caches, so a task that got traffic before it was ready
//! shows up as failed requests.
//!
//! Scenarios, each its own rolling update of every task:
//! - draining application, `stop-first` and `start-first`: 0 failures required;
//! - dropping application, `stop-first` and `start-first`: what is lost is
//!   measured and bounded (only requests that cannot be repeated and were in
//!   flight at the task's SIGTERM; docs/operations.md explains why);
//! - a warming-up application with a Docker HEALTHCHECK, and one with a route
//!   health check label instead (health-gated starts): 0 failures required;
//! - a label update that breaks the labels, rolled out: the last good routes
//!   keep serving the new tasks, 0 failures.
//!
//! The figures (requests sent and failed, time from `service update` to the last
//! old task out of the table) are printed for docs/benchmarks.md.
//! Needs swarm mode: initialised only if inactive and left as found
//! (tests/common/docker.rs); everything is removed on drop.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::docker::{copy_with_libs, docker, free_port, poll_until, try_docker, try_get, Engine};

// ---------------------------------------------------------------------------
// The application (runs inside the task's container).

/// The application's main: a no-op unless `ROLLING_APP` is set (so a normal test
/// run passes it at once).
#[test]
fn app_main() {
    let Ok(mode) = std::env::var("ROLLING_APP") else {
        return;
    };
    let warmup = std::env::var("ROLLING_WARMUP_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(Duration::ZERO, Duration::from_millis);
    // A crashing application: exits with an error this long after it starts.
    if let Some(ms) = std::env::var("ROLLING_CRASH_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(ms));
            std::process::exit(1);
        });
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(app::serve(mode, warmup));
    std::process::exit(0);
}

/// The image's health check command (`docker service create --health-cmd`): exit
/// 0 when the application answers `/health` with 200.
#[test]
fn app_health() {
    if std::env::var("ROLLING_APP").is_err() {
        return;
    }
    let ok = (|| -> std::io::Result<bool> {
        let mut s =
            TcpStream::connect_timeout(&([127, 0, 0, 1], 80).into(), Duration::from_secs(1))?;
        s.set_read_timeout(Some(Duration::from_secs(1)))?;
        s.write_all(b"GET /health HTTP/1.0\r\nHost: health\r\n\r\n")?;
        let mut buf = [0u8; 12];
        s.read_exact(&mut buf)?;
        Ok(&buf[9..12] == b"200")
    })()
    .unwrap_or(false);
    std::process::exit(if ok { 0 } else { 1 });
}

mod app {
    use std::convert::Infallible;
    use std::time::{Duration, Instant};

    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use hyper::body::Incoming;
    use hyper::{Request, Response};
    use hyper_util::rt::TokioIo;
    use tokio::signal::unix::{signal, SignalKind};

    pub async fn serve(mode: String, warmup: Duration) {
        let started = Instant::now();
        let listener = tokio::net::TcpListener::bind("0.0.0.0:80").await.unwrap();
        let mut term = signal(SignalKind::terminate()).unwrap();
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        let host: &'static str = Box::leak(
            std::env::var("HOSTNAME")
                .unwrap_or_default()
                .into_boxed_str(),
        );
        loop {
            tokio::select! {
                _ = term.recv() => break,
                accepted = listener.accept() => {
                    let Ok((io, _)) = accepted else { continue };
                    let _ = io.set_nodelay(true);
                    let svc = hyper::service::service_fn(move |req| handle(req, host, started, warmup));
                    let conn = hyper::server::conn::http1::Builder::new()
                        .keep_alive(true)
                        .serve_connection(TokioIo::new(io), svc);
                    let conn = graceful.watch(conn);
                    tokio::spawn(conn);
                }
            }
        }
        if mode == "drop" {
            // Every connection cut, requests in flight included.
            std::process::exit(0);
        }
        // Drain: no new connection (the listener closes), idle keep-alive
        // connections close, requests in flight finish.
        drop(listener);
        let _ = tokio::time::timeout(Duration::from_secs(20), graceful.shutdown()).await;
    }

    async fn handle(
        req: Request<Incoming>,
        host: &'static str,
        started: Instant,
        warmup: Duration,
    ) -> Result<Response<Full<Bytes>>, Infallible> {
        let warm = started.elapsed() >= warmup;
        let path = req.uri().path().to_string();
        let ms: u64 = req
            .uri()
            .query()
            .and_then(|q| q.strip_prefix("ms="))
            .and_then(|v| v.parse().ok())
            .unwrap_or(1500);
        let post = req.method() == hyper::Method::POST;
        // Read the whole body first, as an application does.
        let body = match req.into_body().collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => Bytes::new(),
        };
        let status = if warm { 200 } else { 503 };
        if path == "/slow" && warm {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        let text = if post {
            format!("{host} got {} bytes\n", body.len())
        } else {
            format!("{host} {path}\n")
        };
        Ok(Response::builder()
            .status(status)
            .header("x-task", host)
            .body(Full::new(Bytes::from(text)))
            .unwrap())
    }
}

// ---------------------------------------------------------------------------
// The load.

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Get,
    Post,
    SlowGet,
    SlowPost,
    /// 4 s: longer than Docker waits between taking a task out of its service
    /// and stopping it.
    LongGet,
    LongPost,
}

#[derive(Default)]
struct Tally {
    sent: AtomicU64,
    failed: Mutex<Vec<(Kind, String)>>,
    per_kind: Mutex<std::collections::BTreeMap<Kind, (u64, u64)>>,
}

impl Tally {
    fn ok(&self, k: Kind) {
        self.sent.fetch_add(1, Ordering::Relaxed);
        self.per_kind.lock().unwrap().entry(k).or_default().0 += 1;
    }

    fn fail(&self, k: Kind, why: String) {
        self.sent.fetch_add(1, Ordering::Relaxed);
        self.per_kind.lock().unwrap().entry(k).or_default().1 += 1;
        self.failed.lock().unwrap().push((k, why));
    }

    /// Reads and counts a response (200: ok; another status, or an error
    /// reading it: failed), and hands the connection back when it may carry
    /// the next request.
    fn read_answer(&self, k: Kind, mut s: TcpStream) -> Option<TcpStream> {
        let r = match common::try_read_response(&mut s) {
            Ok(r) => r,
            Err(e) => {
                self.fail(k, e);
                return None;
            }
        };
        if r.status != 200 {
            self.fail(k, format!("{} {}", r.status, r.text().trim()));
            return None;
        }
        self.ok(k);
        r.header("connection")
            .is_none_or(|c| !c.eq_ignore_ascii_case("close"))
            .then_some(s)
    }

    fn failed(&self) -> Vec<(Kind, String)> {
        self.failed.lock().unwrap().clone()
    }
}

/// One client connection's loop: requests of one kind on a keep-alive connection
/// to Wharf until `stop`; a failed request is counted and the connection made
/// again. Nothing is retried by the client.
fn client(addr: SocketAddr, host: String, kind: Kind, stop: Arc<AtomicBool>, tally: Arc<Tally>) {
    let body = vec![b'x'; 512];
    let (method, path, with_body) = match kind {
        Kind::Get => ("GET", "/", false),
        Kind::Post => ("POST", "/post", true),
        Kind::SlowGet => ("GET", "/slow", false),
        Kind::SlowPost => ("POST", "/slow", true),
        Kind::LongGet => ("GET", "/slow?ms=4000", false),
        Kind::LongPost => ("POST", "/slow?ms=4000", true),
    };
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n");
    if with_body {
        head.push_str(&format!(
            "Content-Type: application/octet-stream\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    head.push_str("\r\n");
    let mut conn: Option<TcpStream> = None;
    while !stop.load(Ordering::Relaxed) {
        let s = match conn.take() {
            Some(s) => s,
            None => match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                Ok(s) => {
                    s.set_nodelay(true).ok();
                    s.set_read_timeout(Some(Duration::from_secs(30))).ok();
                    s
                }
                Err(e) => {
                    tally.fail(kind, format!("connect to Wharf: {e}"));
                    continue;
                }
            },
        };
        let mut s = s;
        let mut req = head.clone().into_bytes();
        if with_body {
            req.extend_from_slice(&body);
        }
        if let Err(e) = s.write_all(&req) {
            tally.fail(kind, format!("write: {e}"));
            continue;
        }
        conn = tally.read_answer(kind, s);
    }
}

struct Load {
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    /// 2 keep-alive GET clients, 1 POST client, 2 slow GET, 1 slow POST, one 4 s
    /// GET and one 4 s POST.
    fn start(addr: SocketAddr, host: &str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Tally::default());
        let kinds = [
            Kind::Get,
            Kind::Get,
            Kind::Post,
            Kind::SlowGet,
            Kind::SlowGet,
            Kind::SlowPost,
            Kind::LongGet,
            Kind::LongPost,
        ];
        let threads = kinds
            .into_iter()
            .map(|k| {
                let (stop, tally, host) = (stop.clone(), tally.clone(), host.to_string());
                std::thread::spawn(move || client(addr, host, k, stop, tally))
            })
            .collect();
        Load {
            stop,
            tally,
            threads,
        }
    }

    fn finish(mut self) -> Arc<Tally> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            t.join().unwrap();
        }
        self.tally.clone()
    }
}

/// Sets its flag when dropped: client threads stop however the test ends.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

// ---------------------------------------------------------------------------
// The swarm.

/// An image holding this test binary, its shared libraries and busybox's `sh`
/// (for the health check command), entrypoint `app_main`.
fn app_image(e: &Engine) -> String {
    let root = e.dir().join("app");
    copy_with_libs(&std::env::current_exe().unwrap(), &root, "app");
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("busybox is missing: apt-get install busybox-static");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::copy(busybox, root.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", root.join("bin/sh")).unwrap();
    e.import_tree(
        &root,
        &[
            "EXPOSE 80",
            r#"ENTRYPOINT ["/app","--exact","app_main","--nocapture","--test-threads=1"]"#,
        ],
        "app",
    )
}

struct Rig {
    e: Engine,
    net: String,
    app_image: String,
    web: SocketAddr,
    admin: SocketAddr,
    wharf: String,
}

impl Rig {
    fn start() -> Rig {
        let e = Engine::new("roll");
        if let Err(err) = e.ensure_swarm() {
            panic!("docker swarm init failed on this engine: {err}");
        }
        let net = e.overlay("net");
        let app_image = app_image(&e);
        let wharf_image = e.wharf_image();
        let cfg_dir = e.dir().join("etc");
        std::fs::create_dir_all(&cfg_dir).unwrap();
        // As deploy/wharf.toml, with the defaults for discovery (poll_interval 1 s).
        std::fs::write(
            cfg_dir.join("wharf.toml"),
            format!(
                "[entrypoints.web]\naddress = \"0.0.0.0:8080\"\n\n\
                 [admin]\naddress = \"0.0.0.0:8082\"\n\n\
                 [docker]\nmode = \"swarm\"\nnetwork = \"{net}\"\n"
            ),
        )
        .unwrap();
        let (web_port, admin_port) = (free_port(), free_port());
        let wharf = e.service(
            "wharf",
            &[
                "--network",
                &net,
                "--publish",
                &format!("mode=host,target=8080,published={web_port}"),
                "--publish",
                &format!("mode=host,target=8082,published={admin_port}"),
                "--mount",
                "type=bind,src=/var/run/docker.sock,dst=/var/run/docker.sock",
                "--mount",
                &format!(
                    "type=bind,src={},dst=/etc/wharf,readonly",
                    cfg_dir.display()
                ),
                "--env",
                "WHARF_LOG=info",
                &wharf_image,
                "--log-format",
                "json",
                "run",
                "--config",
                "/etc/wharf/wharf.toml",
            ],
        );
        let web = SocketAddr::from(([127, 0, 0, 1], web_port));
        let admin = SocketAddr::from(([127, 0, 0, 1], admin_port));
        let rig = Rig {
            e,
            net,
            app_image,
            web,
            admin,
            wharf,
        };
        poll_until(admin, "admin", "/ping", Duration::from_secs(60), |r| {
            r.status == 200
        })
        .unwrap_or_else(|err| panic!("{err}\n{}", rig.logs()));
        rig
    }

    fn logs(&self) -> String {
        let out = Command::new("docker")
            .args(["service", "logs", "--raw", &self.wharf])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    /// The route's backends as /api/routes shows them: (address, health).
    fn backends(&self, host: &str) -> Vec<(String, String)> {
        let Ok(r) = try_get(self.admin, "admin", "/api/routes") else {
            return Vec::new();
        };
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&r.body) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for route in v.as_array().into_iter().flatten() {
            let hosts = route["hosts"].as_array().cloned().unwrap_or_default();
            if !hosts.iter().any(|h| h.as_str() == Some(host)) {
                continue;
            }
            for b in route["backends"].as_array().into_iter().flatten() {
                out.push((
                    b["address"].as_str().unwrap_or_default().to_string(),
                    b["health"].as_str().unwrap_or_default().to_string(),
                ));
            }
        }
        out
    }

    /// A 3-replica labelled service of the application.
    fn app(&self, what: &str, order: &str, env: &[&str], extra: &[&str]) -> (String, String) {
        let host = format!("{}.test", self.e.name(what));
        let mut args: Vec<String> = vec![
            "--network".into(),
            self.net.clone(),
            "--replicas".into(),
            "3".into(),
            "--update-order".into(),
            order.into(),
            "--stop-grace-period".into(),
            "10s".into(),
            "--label".into(),
            "wharf.enable=true".into(),
            "--label".into(),
            format!("wharf.host={host}"),
            "--label".into(),
            "wharf.port=80".into(),
        ];
        for e in env {
            args.push("--env".into());
            args.push((*e).into());
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        args.push(self.app_image.clone());
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let svc = self.e.service(what, &refs);
        // Routed, all three tasks up.
        let t0 = Instant::now();
        loop {
            let b = self.backends(&host);
            if b.len() == 3 && b.iter().all(|(_, h)| h == "up") {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "{svc}: not routed to 3 tasks: {b:?}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        poll_until(self.web, &host, "/", Duration::from_secs(10), |r| {
            r.status == 200
        })
        .unwrap_or_else(|err| panic!("{err}\n{}", self.logs()));
        (svc, host)
    }

    /// `docker service update --force` (plus `extra`) under load; returns the
    /// tally and the time from the update to the last old task leaving the table.
    fn roll(&self, svc: &str, host: &str, extra: &[&str]) -> (Arc<Tally>, Duration, Duration) {
        let old: BTreeSet<String> = self.backends(host).into_iter().map(|(a, _)| a).collect();
        assert_eq!(old.len(), 3, "{svc}: {old:?}");
        let load = Load::start(self.web, host);
        // Let every client have a request in flight first.
        std::thread::sleep(Duration::from_millis(500));
        let t0 = Instant::now();
        let mut args = vec![
            "service",
            "update",
            "--quiet",
            "--force",
            "--no-resolve-image",
        ];
        args.extend_from_slice(extra);
        args.push(svc);
        let updater = std::thread::spawn({
            let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
            move || {
                // Attached: returns when the update converged (or failed).
                let refs: Vec<&str> = args.iter().map(String::as_str).collect();
                try_docker(&refs)
            }
        });
        let mut old_out = None;
        loop {
            let now: BTreeSet<String> = self.backends(host).into_iter().map(|(a, _)| a).collect();
            if old_out.is_none() && !now.is_empty() && now.is_disjoint(&old) {
                old_out = Some(t0.elapsed());
            }
            if old_out.is_some() && updater.is_finished() {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(120),
                "{svc}: update did not finish: {now:?} (old {old:?})\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let took = t0.elapsed();
        updater
            .join()
            .unwrap()
            .unwrap_or_else(|err| panic!("update {svc}: {err}"));
        // Traffic after the update too, on the new tasks only.
        std::thread::sleep(Duration::from_millis(500));
        let tally = load.finish();
        (tally, old_out.unwrap(), took)
    }
}

fn report(what: &str, tally: &Tally, old_out: Duration, took: Duration) {
    let per = tally.per_kind.lock().unwrap().clone();
    eprintln!(
        "ROLLING {what}: sent {} failed {} | old tasks out of the table after {:.2} s, update converged after {:.2} s | per kind (ok, failed): {per:?}",
        tally.sent.load(Ordering::Relaxed),
        tally.failed().len(),
        old_out.as_secs_f64(),
        took.as_secs_f64(),
    );
}

fn assert_none_failed(rig: &Rig, what: &str, tally: &Tally) {
    let failed = tally.failed();
    assert!(
        failed.is_empty(),
        "{what}: {} of {} requests failed: {:?}\n{}",
        failed.len(),
        tally.sent.load(Ordering::Relaxed),
        &failed[..failed.len().min(20)],
        rig.logs()
    );
}

/// A draining application loses nothing, stop-first or start-first; a dropping
/// one loses only requests that cannot be repeated and were in flight at its
/// SIGTERM.
#[test]
fn rolling_updates_lose_no_request() {
    let rig = Rig::start();

    for order in ["stop-first", "start-first"] {
        let (svc, host) = rig.app(
            &format!("drain-{order}"),
            order,
            &["ROLLING_APP=drain"],
            &[],
        );
        let (tally, out, took) = rig.roll(&svc, &host, &[]);
        report(&format!("drain {order}"), &tally, out, took);
        assert!(tally.sent.load(Ordering::Relaxed) > 100);
        assert_none_failed(&rig, &format!("draining app, {order}"), &tally);
        docker(&["service", "rm", &svc]);
    }

    for order in ["stop-first", "start-first"] {
        let (svc, host) = rig.app(&format!("drop-{order}"), order, &["ROLLING_APP=drop"], &[]);
        let (tally, out, took) = rig.roll(&svc, &host, &[]);
        report(&format!("drop {order}"), &tally, out, took);
        // What Wharf cannot save: a request still in flight when the task
        // exits. Docker takes a task out of its service 2 s before it stops it,
        // and Wharf stops sending it new requests well within that; so only a
        // request longer than that (the 4 s ones) can be cut, each long client
        // at most once per task. A GET cut with no response byte sent is
        // repeated on another task; a POST that never reached the task goes
        // elsewhere too.
        // A long GET is repeated once, and the repeat may land on another task
        // of the old set that is replaced before it ends.
        for (k, why) in tally.failed() {
            assert!(
                matches!(k, Kind::LongGet | Kind::LongPost),
                "dropping app, {order}: a {k:?} failed ({why}); only a 4 s request may"
            );
            assert!(why.starts_with("502"), "dropping app, {order}: {k:?} {why}");
        }
        assert!(
            tally.failed().len() <= 6,
            "dropping app, {order}: {} failures: {:?}",
            tally.failed().len(),
            tally.failed()
        );
        docker(&["service", "rm", &svc]);
    }
}

/// A new task takes traffic only once it is ready: when Docker reports it
/// healthy (its image or service has a HEALTHCHECK), or when its route's first
/// active check passed. The application answers 503 for 2 s after it starts, so
/// any request routed to it early fails.
#[test]
fn health_gated_starts_lose_no_request() {
    let rig = Rig::start();
    let warm = ["ROLLING_APP=drain", "ROLLING_WARMUP_MS=2000"];

    // Docker's health check.
    let (svc, host) = rig.app(
        "gate-docker",
        "start-first",
        &warm,
        &[
            "--health-cmd",
            "/app --exact app_health --test-threads=1 --quiet",
            "--health-interval",
            "250ms",
            "--health-start-period",
            "10s",
        ],
    );
    let (tally, out, took) = rig.roll(&svc, &host, &[]);
    report(
        "gated by docker healthcheck, start-first",
        &tally,
        out,
        took,
    );
    assert_none_failed(&rig, "docker healthcheck", &tally);
    docker(&["service", "rm", &svc]);

    // Wharf's own active check on the route (no Docker health check).
    let (svc, host) = rig.app(
        "gate-wharf",
        "start-first",
        &warm,
        &[
            "--label",
            "wharf.healthcheck.path=/health",
            "--label",
            "wharf.healthcheck.interval=500ms",
            // Swarm does not wait for Wharf's check: an update delay as long
            // as the warm-up (docs/health.md).
            "--update-delay",
            "2s",
        ],
    );
    let (tally, out, took) = rig.roll(&svc, &host, &[]);
    report(
        "gated by the route's health check, start-first",
        &tally,
        out,
        took,
    );
    assert_none_failed(&rig, "route health check", &tally);

    // A label update that breaks the labels, rolled out to every task: the last
    // good routes keep serving, with the new tasks' addresses.
    let (tally, out, took) = rig.roll(&svc, &host, &["--label-add", "wharf.port=eighty"]);
    report("broken label update, start-first", &tally, out, took);
    assert_none_failed(&rig, "broken label update", &tally);
    let errors = try_get(rig.admin, "admin", "/api/errors").unwrap().text();
    assert!(errors.contains("last good"), "{errors}");
    docker(&["service", "rm", &svc]);
}

/// The lines of Wharf's log (JSON) whose message starts with `prefix`, logged
/// before `until` (RFC 3339 UTC, as the log's `timestamp` is written: such
/// strings order as their times).
fn count_logs_until(rig: &Rig, prefix: &str, until: &str) -> usize {
    let out = Command::new("docker")
        .args(["service", "logs", "--raw", &rig.wharf])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .chain(String::from_utf8_lossy(&out.stderr).lines())
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["message"].as_str().is_some_and(|m| m.starts_with(prefix)))
        .filter(|v| v["timestamp"].as_str().is_some_and(|t| t < until))
        .count()
}

/// Container starts of one swarm service, from `docker events` streamed from
/// before the service exists. (Querying past events afterwards is not enough:
/// the Engine keeps only its last 256 events, and tests running beside this one
/// push the early starts out: 3 starts were listed for 11 swaps.)
struct StartWatch {
    child: std::process::Child,
    times: std::sync::Arc<std::sync::Mutex<Vec<u128>>>,
}

impl StartWatch {
    fn open(service: &str) -> StartWatch {
        use std::io::BufRead;
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            - 1;
        let mut child = Command::new("docker")
            .args([
                "events",
                "--since",
                &since.to_string(),
                "--filter",
                "type=container",
                "--filter",
                "event=start",
                "--filter",
                &format!("label=com.docker.swarm.service.name={service}"),
                "--format",
                "{{.TimeNano}}",
            ])
            .stdout(std::process::Stdio::piped())
            // A failing `docker events` shows in the test's output, not as
            // "0 starts".
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .unwrap();
        let times = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let out = child.stdout.take().unwrap();
        let sink = times.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(t) = line.trim().parse::<u128>() {
                    sink.lock().unwrap().push(t);
                }
            }
        });
        StartWatch { child, times }
    }

    /// Starts stamped before `until`.
    fn count_before(&self, until: std::time::SystemTime) -> usize {
        let until = until
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        self.times
            .lock()
            .unwrap()
            .iter()
            .filter(|&&t| t < until)
            .count()
    }
}

impl Drop for StartWatch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A service whose tasks crash a moment after they start (swarm restarts them
/// every half second) costs at most one table swap per task start or stop, is
/// not routed to once its task has failed, and leaves another service's route
/// alone.
#[test]
fn flapping_tasks_swap_once_per_change() {
    let rig = Rig::start();
    let (good, good_host) = rig.app("steady", "stop-first", &["ROLLING_APP=drain"], &[]);
    let host = format!("{}.test", rig.e.name("flap"));
    // Swaps are counted over the service's whole life, task starts too: the
    // starts from a stream of the Engine's events opened before the service
    // exists.
    let started = StartWatch::open(&rig.e.name("flap"));
    let flap = rig.e.service(
        "flap",
        &[
            "--network",
            &rig.net,
            "--env",
            "ROLLING_APP=drain",
            "--env",
            "ROLLING_CRASH_MS=700",
            "--restart-delay",
            "500ms",
            "--restart-max-attempts",
            "0",
            "--label",
            "wharf.enable=true",
            "--label",
            &format!("wharf.host={host}"),
            "--label",
            "wharf.port=80",
            &rig.app_image,
        ],
    );
    // Listed (its route exists, with or without a running task) before the
    // window starts.
    poll_until(rig.web, &host, "/", Duration::from_secs(30), |r| {
        r.status != 404
    })
    .unwrap_or_else(|err| panic!("{flap} never routed: {err}\n{}", rig.logs()));
    let load = Load::start(rig.web, &good_host);
    let t0 = Instant::now();
    let (mut statuses, mut routed_after_exit) = (std::collections::BTreeMap::new(), 0);
    while t0.elapsed() < Duration::from_secs(8) {
        let r = try_get(rig.web, &host, "/");
        let key = r
            .as_ref()
            .map_or_else(|e| e.clone(), |r| r.status.to_string());
        *statuses.entry(key).or_insert(0u32) += 1;
        // A 502 means Wharf sent a request to a task whose process was gone.
        if r.is_ok_and(|r| r.status == 502) {
            routed_after_exit += 1;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let tally = load.finish();
    // Both counts up to one instant: the tasks go on flapping meanwhile.
    let until = std::time::SystemTime::now();
    let until_rfc = humantime::format_rfc3339_micros(until).to_string();
    let swaps = ["changed", "added", "removed"]
        .iter()
        .map(|what| {
            count_logs_until(
                &rig,
                &format!("routing table swapped; {what}: {flap}@"),
                &until_rfc,
            )
        })
        .sum::<usize>();

    let starts = started.count_before(until);
    eprintln!(
        "ROLLING flapping: {starts} task starts in 8 s, {swaps} table swaps, answers {statuses:?}, {routed_after_exit} 502"
    );
    assert!(starts >= 3, "the tasks did not flap: {starts} starts");
    // The route stays while its tasks come and go: 503 between tasks, never 404.
    assert!(
        !statuses.contains_key("404"),
        "the flapping service's route was withdrawn: {statuses:?}"
    );
    // The route's creation (no task yet: 503), then for each task one swap
    // when it runs and one when it fails. One task of slack: a start at the
    // window's very edge can reach the event stream after it is read.
    assert!(
        swaps <= 2 * (starts + 1) + 1,
        "{swaps} swaps for {starts} task starts\n{}",
        rig.logs()
    );
    assert_none_failed(&rig, "a service beside a flapping one", &tally);
    docker(&["service", "rm", &flap]);
    docker(&["service", "rm", &good]);
}

/// Wharf's own update on one node, as deploy/ runs it (host-mode ports, so the
/// new task can bind only once the old one is gone): `docker service update
/// --force` of Wharf under load. Requests Wharf accepted finish (it drains on
/// SIGTERM); what is lost is connections refused while no Wharf task has the
/// port, for the time measured here (docs/operations.md).
#[test]
fn wharf_own_update_on_one_node_refuses_only_new_connections() {
    let rig = Rig::start();
    let (svc, host) = rig.app("own", "stop-first", &["ROLLING_APP=drain"], &[]);
    let refused = Arc::new(Mutex::new(Vec::<Instant>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    // Clients that, as browsers and curl do, send a request again on a new
    // connection when a reused keep-alive connection closes before any
    // response byte (the server closed it as the request went out); a refused
    // connection is recorded, not retried.
    let clients: Vec<_> = (0..4)
        .map(|i| {
            let (stop, tally, refused, host) =
                (stop.clone(), tally.clone(), refused.clone(), host.clone());
            let web = rig.web;
            std::thread::spawn(move || {
                let path = if i == 3 { "/slow" } else { "/" };
                let kind = if i == 3 { Kind::SlowGet } else { Kind::Get };
                let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n");
                let mut conn: Option<TcpStream> = None;
                while !stop.load(Ordering::Relaxed) {
                    let reused = conn.is_some();
                    let mut s = match conn.take() {
                        Some(s) => s,
                        None => match TcpStream::connect_timeout(&web, Duration::from_secs(2)) {
                            Ok(s) => s,
                            Err(_) => {
                                refused.lock().unwrap().push(Instant::now());
                                std::thread::sleep(Duration::from_millis(5));
                                continue;
                            }
                        },
                    };
                    s.set_read_timeout(Some(Duration::from_secs(30))).ok();
                    let sent = s.write_all(req.as_bytes());
                    // Closed or reset before any response byte, or not
                    // accepted: on a reused connection the server closed it
                    // as the request went out (sent again); on a new one no
                    // Wharf listens (Docker's userland proxy accepted it for
                    // the host-mode port and found no task to pass it to),
                    // the outage, not a request Wharf took. Anything after
                    // the first byte, or no byte in 30 s, is a failure.
                    let mut first = [0u8; 1];
                    let began = match sent.and_then(|()| s.peek(&mut first)) {
                        Ok(n) => n > 0,
                        Err(e)
                            if matches!(
                                e.kind(),
                                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                            ) =>
                        {
                            tally.fail(kind, "no response in 30 s".into());
                            continue;
                        }
                        Err(_) => false,
                    };
                    if !began {
                        if !reused {
                            refused.lock().unwrap().push(Instant::now());
                            std::thread::sleep(Duration::from_millis(5));
                        }
                        continue;
                    }
                    conn = tally.read_answer(kind, s);
                }
            })
        })
        .collect();
    // The clients stop when the test ends, by panic too.
    let _stop = StopOnDrop(stop.clone());
    common::wait_until(
        "the clients' first answers",
        Duration::from_secs(30),
        || tally.sent.load(Ordering::Relaxed) >= 4,
    );
    let t0 = Instant::now();
    docker(&[
        "service",
        "update",
        "--quiet",
        "--force",
        "--no-resolve-image",
        &rig.wharf,
    ]);
    // Back: the new task answers.
    poll_until(rig.admin, "admin", "/ping", Duration::from_secs(60), |r| {
        r.status == 200
    })
    .unwrap_or_else(|err| panic!("{err}\n{}", rig.logs()));
    poll_until(rig.web, &host, "/", Duration::from_secs(30), |r| {
        r.status == 200
    })
    .unwrap_or_else(|err| panic!("{err}\n{}", rig.logs()));
    let back = t0.elapsed();
    // Some requests through the new task before the clients stop.
    let sent = tally.sent.load(Ordering::Relaxed);
    common::wait_until("requests after the update", Duration::from_secs(30), || {
        tally.sent.load(Ordering::Relaxed) >= sent + 8
    });
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let refused = refused.lock().unwrap().clone();
    let window = match (refused.first(), refused.last()) {
        (Some(a), Some(b)) => *b - *a,
        _ => Duration::ZERO,
    };
    eprintln!(
        "ROLLING wharf's own update, one node: {} requests, {} failed, {} connections refused or reset unanswered over {:.2} s, docker service update (which waits for the update to converge) returned and the route answered {:.2} s after it began",
        tally.sent.load(Ordering::Relaxed),
        tally.failed().len(),
        refused.len(),
        window.as_secs_f64(),
        back.as_secs_f64()
    );
    assert_none_failed(&rig, "requests accepted by the old Wharf", &tally);
    assert!(window < Duration::from_secs(30), "refused for {window:?}");
    docker(&["service", "rm", &svc]);
}
