//! End-to-end tests of backend health (active checks and passive ejection),
//! retries, `maxconn` and its queue: the real binary against real backends on
//! loopback, every port chosen by the kernel, every wait a readiness wait.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

/// The health check every test here uses unless it says otherwise.
const INTERVAL: Duration = Duration::from_millis(200);
const RISE: u32 = 2;
const FALL: u32 = 2;

fn hc(path: &str) -> String {
    format!(
        "healthcheck = {{ path = \"{path}\", method = \"GET\", interval = \"200ms\", \
         timeout = \"100ms\", rise = {RISE}, fall = {FALL}, expect = \"2xx\" }}"
    )
}

/// A named route (the name is the `route` label of metrics and the API).
fn named(name: &str, host: &str, backends: &[SocketAddr], extra: &str) -> String {
    route(host, "/", backends, &format!("name = \"{name}\"\n{extra}"))
}

/// `x-backend` of one GET (or the status when it is not 200).
fn who(w: &Wharf, host: &str) -> String {
    let r = get(w.ep("web"), host, "/");
    if r.status == 200 {
        r.header("x-backend").unwrap_or("-").to_string()
    } else {
        format!("status {}", r.status)
    }
}

/// Waits until every check task has run at least twice against each backend
/// (so a transition is measured from a running schedule, not a first delay).
fn checks_running(backends: &[&CtlBackend]) {
    wait_until("health checks to run", WAIT, || {
        backends.iter().all(|b| b.health_hits() >= 2)
    });
}

/// The slack over `n × interval` allowed for a transition: one more interval
/// (the first failing check lands anywhere in the period, ±10 % jitter) and
/// scheduling and API polling on a loaded machine.
fn within(n: u32) -> Duration {
    INTERVAL * (n + 1) + Duration::from_millis(400)
}

/// 1. A backend that starts failing its checks is out within fall × interval
///    and back within rise × interval; while out, the other gets every request.
///    Each transition is logged exactly once.
#[test]
fn failing_checks_take_a_backend_out_and_passing_ones_bring_it_back() {
    let a = CtlBackend::start("a");
    let b = CtlBackend::start("b");
    let w =
        Wharf::start(&(base_config() + &named("hc", "hc.test", &[a.addr, b.addr], &hc("/health"))));
    checks_running(&[&a, &b]);
    assert_eq!(w.health_of("hc", a.addr), "up");
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..20 {
        seen.insert(who(&w, "hc.test"));
    }
    assert_eq!(seen.len(), 2, "both backends serve while healthy: {seen:?}");

    // Down within fall × interval.
    a.set_health(500);
    let took = wait_until("a down", WAIT, || w.health_of("hc", a.addr) == "down");
    eprintln!("failing checks -> down in {took:?} (fall {FALL} x {INTERVAL:?})");
    assert!(took <= within(FALL), "down after {took:?}");
    assert_eq!(w.health_of("hc", b.addr), "up");
    let before = a.hits();
    for _ in 0..30 {
        assert_eq!(who(&w, "hc.test"), "b");
    }
    assert_eq!(a.hits(), before, "a got requests while down");
    let down = w.wait_logs_for("backend down", a.addr, 1);
    assert_eq!(down.len(), 1, "one log line per transition: {down:#?}");
    assert_eq!(down[0]["route"], "hc", "{:#}", down[0]);
    assert!(
        down[0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("500")),
        "the reason names the status: {:#}",
        down[0]
    );
    assert!(w.logs_for("backend up", a.addr).is_empty());
    // The API says why, and what the last check saw; the route shows its check.
    let view = w.api_backend("hc", a.addr);
    assert!(
        view["reason"].as_str().is_some_and(|r| r.contains("500")),
        "{view:#}"
    );
    assert_eq!(view["last_check"]["status"], 500, "{view:#}");
    assert!(view["last_check"]["error"].is_string(), "{view:#}");
    assert!(view["last_check"]["time"].is_string(), "{view:#}");
    let route = w.api_routes()[0].clone();
    assert_eq!(route["healthcheck"]["path"], "/health", "{route:#}");
    assert_eq!(route["healthcheck"]["interval_ms"], 200, "{route:#}");
    assert_eq!(
        w.metric(&format!(
            "wharf_backend_up{{backend=\"{}\",route=\"hc\"}}",
            a.addr
        )),
        Some(0.0),
        "{}",
        w.metrics()
    );

    // Back within rise × interval.
    a.set_health(200);
    let took = wait_until("a up", WAIT, || w.health_of("hc", a.addr) == "up");
    eprintln!("passing checks -> up in {took:?} (rise {RISE} x {INTERVAL:?})");
    assert!(took <= within(RISE), "up after {took:?}");
    let before = a.hits();
    for _ in 0..30 {
        who(&w, "hc.test");
    }
    assert!(a.hits() > before, "a gets requests again");
    // Still exactly one line for each transition, a few periods later.
    w.wait_logs_for("backend up", a.addr, 1);
    std::thread::sleep(INTERVAL * 3);
    assert_eq!(w.logs_for("backend down", a.addr).len(), 1);
    assert_eq!(w.logs_for("backend up", a.addr).len(), 1);
    assert!(w.logs_for("backend down", b.addr).is_empty());
    let view = w.api_backend("hc", a.addr);
    assert_eq!(view["reason"], serde_json::Value::Null, "{view:#}");
    assert_eq!(view["last_check"]["status"], 200, "{view:#}");
    assert_eq!(
        view["last_check"]["error"],
        serde_json::Value::Null,
        "{view:#}"
    );
    // The checks are counted, by result.
    let series = |result: &str| {
        format!(
            "wharf_healthcheck_total{{backend=\"{}\",result=\"{result}\",route=\"hc\"}}",
            a.addr
        )
    };
    let failed = w.metric(&series("failure")).unwrap_or(0.0);
    assert!(failed >= f64::from(FALL), "{}", w.metrics());
    assert!(
        w.metric(&series("success")).unwrap_or(0.0) >= 4.0,
        "{}",
        w.metrics()
    );
}

/// GETs from `threads` keep-alive clients until `total` are done; backend `kill`
/// is killed once `kill_after` have been answered. Returns the failures.
fn load_while_killing(
    w: &Wharf,
    host: &str,
    total: usize,
    kill_after: usize,
    kill: &mut CtlBackend,
) -> Vec<String> {
    let threads = 3;
    let done = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(Mutex::new(Vec::new()));
    let web = w.ep("web");
    let clients: Vec<_> = (0..threads)
        .map(|_| {
            let (done, errors, host) = (done.clone(), errors.clone(), host.to_string());
            std::thread::spawn(move || {
                let mut conn: Option<TcpStream> = None;
                while done.load(Ordering::SeqCst) < total {
                    let s = match conn.as_mut() {
                        Some(s) => s,
                        None => {
                            let s = TcpStream::connect(web).unwrap();
                            s.set_read_timeout(Some(WAIT)).unwrap();
                            conn.insert(s)
                        }
                    };
                    let req = format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n");
                    let r = s
                        .write_all(req.as_bytes())
                        .map_err(|e| e.to_string())
                        .and_then(|()| try_read_response(s));
                    match r {
                        Ok(r) if r.status == 200 => {}
                        Ok(r) => {
                            errors
                                .lock()
                                .unwrap()
                                .push(format!("{} {}", r.status, r.text()));
                        }
                        Err(e) => {
                            errors.lock().unwrap().push(e);
                            conn = None;
                        }
                    }
                    done.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    wait_until("the first requests", WAIT, || {
        done.load(Ordering::SeqCst) >= kill_after
    });
    kill.kill();
    for c in clients {
        c.join().unwrap();
    }
    let e = errors.lock().unwrap().clone();
    e
}

/// 2. A backend killed (listener closed, connections reset) under a steady GET
///    load costs the clients nothing: retries on another backend, then passive
///    ejection (and, with checks, the checker) keep it out.
fn killed_backend_under_load(with_checks: bool) {
    let a = CtlBackend::start("a");
    let b = CtlBackend::start("b");
    let mut c = CtlBackend::start("c");
    let extra = if with_checks {
        hc("/health")
    } else {
        String::new()
    };
    let w = Wharf::start(
        &(base_config() + &named("load", "load.test", &[a.addr, b.addr, c.addr], &extra)),
    );
    if with_checks {
        checks_running(&[&a, &b, &c]);
    }
    let t0 = Instant::now();
    let errors = load_while_killing(&w, "load.test", 300, 100, &mut c);
    eprintln!(
        "300 GETs, c killed after 100 (checks: {with_checks}): {:?}, a {} b {} c {} requests",
        t0.elapsed(),
        a.hits(),
        b.hits(),
        c.hits()
    );
    assert!(errors.is_empty(), "{} failed: {errors:?}", errors.len());
    assert!(c.hits() > 0, "c served before it was killed");
    // It is out now, and said so once.
    // (Without checks a cool-down readmits it on probation; the next request
    // that tries it ejects it again, and is retried.)
    wait_until("c down", WAIT, || {
        assert_eq!(get(w.ep("web"), "load.test", "/").status, 200);
        w.health_of("load", c.addr) == "down"
    });
    let down = w.wait_logs_for("backend down", c.addr, 1);
    assert!(!down.is_empty(), "the ejection is logged");
    assert!(
        w.metric("wharf_retries_total{route=\"load\"}")
            .is_some_and(|n| n >= 1.0),
        "retries are counted:\n{}",
        w.metrics()
    );
    for _ in 0..20 {
        assert_eq!(get(w.ep("web"), "load.test", "/").status, 200);
    }
}

#[test]
fn killed_backend_under_load_gives_no_error_passive_only() {
    killed_backend_under_load(false);
}

#[test]
fn killed_backend_under_load_gives_no_error_with_checks() {
    killed_backend_under_load(true);
}

/// What a [`ResetBackend`] read before it reset the connection.
#[derive(Debug, Clone)]
struct Got {
    method: String,
    id: String,
    body_len: usize,
}

/// A backend that reads one whole request (head and Content-Length body), then
/// resets the connection without a byte of answer. Stopped on drop.
struct ResetBackend {
    addr: SocketAddr,
    got: Arc<Mutex<Vec<Got>>>,
    _server: ServerThread,
}

impl ResetBackend {
    fn start() -> ResetBackend {
        let got = Arc::new(Mutex::new(Vec::new()));
        let got2 = got.clone();
        let server = ServerThread::start(loopback_listener(), move |l, cancel| async move {
            use tokio::io::{AsyncBufReadExt, AsyncReadExt};
            let mut tasks = tokio::task::JoinSet::new();
            loop {
                let s = tokio::select! {
                    _ = cancel.cancelled() => break,
                    r = l.accept() => match r {
                        Ok((s, _)) => s,
                        Err(_) => continue,
                    },
                };
                let got = got2.clone();
                tasks.spawn(async move {
                    let mut r = tokio::io::BufReader::new(s);
                    let mut head = Vec::new();
                    loop {
                        let mut line = String::new();
                        match r.read_line(&mut line).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        }
                        if line == "\r\n" {
                            break;
                        }
                        head.push(line.trim_end().to_string());
                    }
                    let header = |n: &str| {
                        head.iter().find_map(|h| {
                            let (k, v) = h.split_once(':')?;
                            k.trim()
                                .eq_ignore_ascii_case(n)
                                .then(|| v.trim().to_string())
                        })
                    };
                    let len: usize = header("content-length")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    let mut body = vec![0; len];
                    if r.read_exact(&mut body).await.is_err() {
                        return;
                    }
                    got.lock().unwrap().push(Got {
                        method: head[0].split(' ').next().unwrap_or("").to_string(),
                        id: header("x-req").unwrap_or_default(),
                        body_len: len,
                    });
                    let s = r.into_inner();
                    let _ = s.set_zero_linger();
                    drop(s);
                });
            }
            tasks.shutdown().await;
        });
        ResetBackend {
            addr: server.addr,
            got,
            _server: server,
        }
    }

    fn got(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }
}

/// 3. A POST with a body that reached a backend which then failed is answered
///    502, never sent again; a GET in the same situation is retried elsewhere and
///    counted in `wharf_retries_total`.
#[test]
fn a_post_is_never_sent_twice_and_a_get_is_retried() {
    let bad = ResetBackend::start();
    let good = Backend::start("good");
    // Round robin alternates, so the failing backend gets its turn at once.
    let w = Wharf::start(
        &(base_config()
            + &named(
                "rst",
                "rst.test",
                &[bad.addr, good.addr],
                "balance = \"roundrobin\"",
            )),
    );
    let web = w.ep("web");
    let body = "x".repeat(1000);
    let seen_by_good = |id: &str| {
        good.seen()
            .iter()
            .filter(|s| s.header("x-req") == Some(id))
            .count()
    };
    let seen_by_bad = |id: &str| bad.got().iter().filter(|g| g.id == id).count();

    let mut failed_posts = 0;
    for i in 0..4 {
        let id = format!("post-{i}");
        let r = raw(
            web,
            format!(
                "POST /form HTTP/1.1\r\nHost: rst.test\r\nX-Req: {id}\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
        if seen_by_bad(&id) > 0 {
            failed_posts += 1;
            assert_eq!(r.status, 502, "{id}: {}", r.text());
            assert_eq!(seen_by_bad(&id), 1, "{id} reached the failing backend once");
            assert_eq!(
                seen_by_good(&id),
                0,
                "{id} was sent again: {:?}",
                good.seen()
            );
            let g = bad.got().into_iter().find(|g| g.id == id).unwrap();
            assert_eq!((g.method.as_str(), g.body_len), ("POST", body.len()));
        } else {
            assert_eq!(r.status, 200, "{id}: {}", r.text());
            assert_eq!(seen_by_good(&id), 1);
        }
    }
    assert!(failed_posts >= 1, "no POST went to the failing backend");

    let retries_before = w
        .metric("wharf_retries_total{route=\"rst\"}")
        .unwrap_or(0.0);
    let mut retried_gets = 0;
    for i in 0..4 {
        let id = format!("get-{i}");
        let r = raw(
            web,
            format!(
                "GET /page HTTP/1.1\r\nHost: rst.test\r\nX-Req: {id}\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        );
        assert_eq!(r.status, 200, "{id}: {}", r.text());
        assert_eq!(r.header("x-backend"), Some("good"));
        assert_eq!(seen_by_good(&id), 1, "{id}");
        if seen_by_bad(&id) > 0 {
            assert_eq!(seen_by_bad(&id), 1);
            retried_gets += 1;
        }
    }
    assert!(retried_gets >= 1, "no GET went to the failing backend");
    let retries = w
        .metric("wharf_retries_total{route=\"rst\"}")
        .unwrap_or_else(|| panic!("no wharf_retries_total:\n{}", w.metrics()));
    assert_eq!(
        retries - retries_before,
        retried_gets as f64,
        "{}",
        w.metrics()
    );
}

/// Sends one GET on its own thread; the result comes with when it arrived.
fn spawn_get(w: &Wharf, host: &str, path: &str) -> std::thread::JoinHandle<(RawResponse, Instant)> {
    let (web, host, path) = (w.ep("web"), host.to_string(), path.to_string());
    std::thread::spawn(move || {
        let r = get(web, &host, &path);
        (r, Instant::now())
    })
}

/// The `queue` of route `route` as the API shows it on its backends (the
/// largest).
fn queued(w: &Wharf, route: &str) -> u64 {
    w.api_routes()
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["name"] == route)
        .flat_map(|r| r["backends"].as_array().cloned().unwrap_or_default())
        .filter_map(|b| b["queue"].as_u64())
        .max()
        .unwrap_or(0)
}

/// 4. `maxconn = 1`: the first request runs, the second waits in the queue and
///    is served when the first completes, a third finds the queue (of 1) full and
///    gets 503 + Retry-After at once; a queued request gets 503 after the queue
///    timeout.
#[test]
fn maxconn_queues_then_503s() {
    let a = Backend::start("a");
    let t = Backend::start("t");
    let w = Wharf::start(
        &(base_config()
            + &named(
                "mc",
                "mc.test",
                &[a.addr],
                "maxconn = { limit = 1, queue = 1, timeout = \"10s\" }",
            )
            + &named(
                "mt",
                "mt.test",
                &[t.addr],
                "maxconn = { limit = 1, queue = 1, timeout = \"300ms\" }",
            )),
    );

    // First: runs, and holds its slot until released.
    let first = spawn_get(&w, "mc.test", "/stream");
    wait_notified(&a.started());
    // Second: waits.
    let second = spawn_get(&w, "mc.test", "/stream");
    wait_until("the second request queued", WAIT, || queued(&w, "mc") > 0);
    assert_eq!(a.seen().len(), 1, "the second was not sent yet");
    // Third: the queue is full, 503 at once.
    let t0 = Instant::now();
    let r = get(w.ep("web"), "mc.test", "/");
    let took = t0.elapsed();
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.header("retry-after").is_some(), "{:?}", r.headers);
    assert!(
        took < Duration::from_millis(500),
        "a full queue answered after {took:?}"
    );
    assert!(r.body.len() < 200, "a short body: {}", r.text());
    assert_eq!(a.seen().len(), 1);

    // The first completes; the second is sent then, and completes too.
    a.release();
    let (r1, _) = first.join().unwrap();
    assert_eq!((r1.status, r1.text().as_str()), (200, "first;last"));
    wait_notified(&a.started());
    assert_eq!(a.seen().len(), 2);
    a.release();
    let (r2, _) = second.join().unwrap();
    assert_eq!((r2.status, r2.text().as_str()), (200, "first;last"));
    assert_eq!(queued(&w, "mc"), 0);

    // Queue timeout: a queued request gets 503 + Retry-After after ~300 ms.
    let hold = spawn_get(&w, "mt.test", "/stream");
    wait_notified(&t.started());
    let t0 = Instant::now();
    let r = get(w.ep("web"), "mt.test", "/");
    let took = t0.elapsed();
    eprintln!("queue timeout 300ms -> 503 after {took:?}");
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.header("retry-after").is_some(), "{:?}", r.headers);
    assert!(
        took >= Duration::from_millis(280) && took < Duration::from_millis(1500),
        "answered after {took:?}"
    );
    assert_eq!(t.seen().len(), 1, "the timed-out request never reached t");
    t.release();
    assert_eq!(hold.join().unwrap().0.status, 200);
}

/// Polls GETs until one is 503; every answer must come quickly.
fn until_503(w: &Wharf, host: &str, max: usize) -> RawResponse {
    for _ in 0..max {
        let t0 = Instant::now();
        let r = get(w.ep("web"), host, "/");
        let took = t0.elapsed();
        assert!(took < Duration::from_secs(1), "an answer took {took:?}");
        assert!(
            r.status == 502 || r.status == 503,
            "{} {}",
            r.status,
            r.text()
        );
        if r.status == 503 {
            return r;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("no 503 after {max} requests")
}

fn assert_unavailable(r: &RawResponse) {
    assert_eq!(r.status, 503);
    assert!(r.header("retry-after").is_some(), "{:?}", r.headers);
    assert!(
        !r.body.is_empty() && r.body.len() < 200,
        "a short body: {:?}",
        r.text()
    );
    assert!(!r.text().contains("127.0.0.1"), "no address revealed");
}

/// 5. No healthy backend: 503 with Retry-After and a short body, fast; by
///    active checks (dead addresses, or live backends failing their checks) and
///    by passive ejection alone.
#[test]
fn all_backends_down_is_a_fast_503() {
    let sick1 = CtlBackend::start("sick1");
    let sick2 = CtlBackend::start("sick2");
    sick1.set_health(503);
    sick2.set_health(404);
    let dead: Vec<DeadAddr> = (0..4).map(|_| DeadAddr::new()).collect();
    let w = Wharf::start(
        &(base_config()
            + &named(
                "dead",
                "dead.test",
                &[dead[0].addr, dead[1].addr],
                &hc("/health"),
            )
            + &named(
                "sick",
                "sick.test",
                &[sick1.addr, sick2.addr],
                &hc("/health"),
            )
            + &named("passive", "passive.test", &[dead[2].addr, dead[3].addr], "")),
    );
    assert_unavailable(&until_503(&w, "dead.test", 200));
    wait_until("sick backends down", WAIT, || {
        w.health_of("sick", sick1.addr) == "down" && w.health_of("sick", sick2.addr) == "down"
    });
    let (h1, h2) = (sick1.hits(), sick2.hits());
    for host in ["dead.test", "sick.test"] {
        for _ in 0..10 {
            let t0 = Instant::now();
            let r = get(w.ep("web"), host, "/");
            assert!(
                t0.elapsed() < Duration::from_millis(500),
                "{host}: {:?}",
                t0.elapsed()
            );
            assert_unavailable(&r);
        }
    }
    assert_eq!(
        (sick1.hits(), sick2.hits()),
        (h1, h2),
        "down backends got requests"
    );
    // Passive only: ten failures in a row eject each backend (a request tries two).
    assert_unavailable(&until_503(&w, "passive.test", 40));
}

/// 6. Health state survives table swaps: 20 SIGHUP reloads that add and remove
///    another route leave a down backend down and an up one up, with no
///    transition logged in between.
#[test]
fn health_state_survives_20_reloads() {
    let good = CtlBackend::start("good");
    let bad = CtlBackend::start("bad");
    bad.set_health(500);
    let other = Backend::start("other");
    let checked = named("hc", "hc.test", &[good.addr, bad.addr], &hc("/health"));
    let mut w = Wharf::start(&(base_config() + &checked));
    wait_until("bad down", WAIT, || w.health_of("hc", bad.addr) == "down");
    let t0 = Instant::now();
    for i in 0..20 {
        let cfg = if i % 2 == 0 {
            base_config() + &checked + &named(&format!("x{i}"), "x.test", &[other.addr], "")
        } else {
            base_config() + &checked
        };
        w.reload(&cfg);
        assert_eq!(w.health_of("hc", bad.addr), "down", "after reload {i}");
        assert_eq!(w.health_of("hc", good.addr), "up", "after reload {i}");
        assert_eq!(who(&w, "hc.test"), "good", "after reload {i}");
        let x = get(w.ep("web"), "x.test", "/").status;
        assert_eq!(x, if i % 2 == 0 { 200 } else { 404 }, "after reload {i}");
    }
    eprintln!("20 reloads in {:?}", t0.elapsed());
    assert_eq!(bad.hits(), 0, "the down backend got requests");
    assert_eq!(w.wait_logs_for("backend down", bad.addr, 1).len(), 1);
    assert!(w.logs_for("backend up", bad.addr).is_empty());
    assert!(w.logs_for("backend down", good.addr).is_empty());
    // The checker still runs after the swaps: bad comes back when it passes.
    bad.set_health(200);
    wait_until("bad up", WAIT, || w.health_of("hc", bad.addr) == "up");
    assert_eq!(w.wait_logs_for("backend up", bad.addr, 1).len(), 1);
}

/// A minimal authoritative DNS server on 127.0.0.1 (UDP): `A` queries for the
/// names given get their addresses (TTL 1), other types of those names an empty
/// answer, other names NXDOMAIN. Stopped on drop.
struct TinyDns {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TinyDns {
    fn start(zone: Vec<(String, Vec<[u8; 4]>)>) -> TinyDns {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let addr = sock.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !stop2.load(Ordering::SeqCst) {
                let Ok((n, peer)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                if let Some(reply) = dns_answer(&buf[..n], &zone) {
                    let _ = sock.send_to(&reply, peer);
                }
            }
        });
        TinyDns {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for TinyDns {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// RFC 1035 §4.1: one question in, the same question and its answers out.
fn dns_answer(q: &[u8], zone: &[(String, Vec<[u8; 4]>)]) -> Option<Vec<u8>> {
    if q.len() < 12 || u16::from_be_bytes([q[4], q[5]]) != 1 {
        return None;
    }
    let mut i = 12;
    let mut labels = Vec::new();
    loop {
        let len = usize::from(*q.get(i)?);
        i += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(q.get(i..i + len)?).to_ascii_lowercase());
        i += len;
    }
    let qtype = u16::from_be_bytes([*q.get(i)?, *q.get(i + 1)?]);
    let question = &q[12..i + 4];
    let name = labels.join(".");
    let found = zone.iter().find(|(n, _)| *n == name).map(|(_, a)| a);
    let addrs: &[[u8; 4]] = match (found, qtype) {
        (Some(a), 1) => a,
        _ => &[],
    };
    let rd = q[2] & 0x01;
    let rcode = if found.is_some() { 0 } else { 3 };
    let mut r = Vec::with_capacity(512);
    r.extend_from_slice(&q[0..2]);
    r.push(0x84 | rd); // QR, AA, RD as asked
    r.push(0x80 | rcode); // RA
    r.extend_from_slice(&1u16.to_be_bytes());
    r.extend_from_slice(&(addrs.len() as u16).to_be_bytes());
    r.extend_from_slice(&[0, 0, 0, 0]);
    r.extend_from_slice(question);
    for a in addrs {
        r.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 1, 0, 4]);
        r.extend_from_slice(a);
    }
    Some(r)
}

/// 7. A `dns:` upstream resolving to two addresses: when one dies, its checks
///    take it out within fall × interval, although DNS still names it, and the
///    other gets every request.
#[test]
fn dns_upstream_address_that_dies_is_dropped_by_checks() {
    // Two backends on the same port of 127.0.0.2 and 127.0.0.3.
    let (two, mut three) = (0..50)
        .find_map(|_| {
            let two = CtlBackend::try_start_on("two", "127.0.0.2:0".parse().unwrap()).ok()?;
            let port = two.addr.port();
            let three =
                CtlBackend::try_start_on("three", SocketAddr::from(([127, 0, 0, 3], port))).ok()?;
            Some((two, three))
        })
        .expect("no port free on both 127.0.0.2 and 127.0.0.3");
    let port = two.addr.port();
    let dns = TinyDns::start(vec![(
        "app.wharf.test".to_string(),
        vec![[127, 0, 0, 2], [127, 0, 0, 3]],
    )]);
    let cfg = base_config()
        + &format!(
            "[dns]\nnameservers = [\"{}\"]\nrefresh = \"1s\"\n\n",
            dns.addr
        )
        + &format!(
            "[[routes]]\nname = \"dns\"\nhost = \"dns.test\"\npath = \"/\"\n\
             upstream = \"dns:app.wharf.test:{port}\"\ntls = \"none\"\n{}\n",
            hc("/health")
        );
    let w = Wharf::start(&cfg);
    wait_until("both addresses resolved and serving", WAIT, || {
        who(&w, "dns.test");
        two.hits() > 0 && three.hits() > 0
    });
    checks_running(&[&two, &three]);
    let dead = three.addr;
    let t0 = Instant::now();
    three.kill();
    let took = wait_until("127.0.0.3 down", WAIT, || {
        w.health_of("dns", dead) == "down"
    });
    eprintln!("dns: address killed -> down in {took:?} (fall {FALL} x {INTERVAL:?})");
    assert!(took <= within(FALL), "down after {took:?}");
    // DNS still answers both: the route keeps the address, down.
    assert_eq!(w.api_backend("dns", dead)["health"], "down");
    let before = two.hits();
    for _ in 0..30 {
        assert_eq!(who(&w, "dns.test"), "two");
    }
    assert_eq!(
        two.hits() - before,
        30,
        "every request went to the live one"
    );
    assert!(t0.elapsed() < WAIT);
}

/// A backend that answers every request with bytes that are not HTTP.
fn garbage_backend() -> ServerThread {
    ServerThread::start(loopback_listener(), |l, cancel| async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        loop {
            let (mut s, _) = tokio::select! {
                _ = cancel.cancelled() => return,
                a = l.accept() => a.unwrap(),
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(b"SPDY/9 banana\r\n\r\n").await.is_err() {
                        return;
                    }
                }
            });
        }
    })
}

/// A backend whose response head is malformed gets a 502 per request and,
/// after [`wharf_table::PASSIVE_FAILURES`] of them in a row, is taken out by
/// passive health, on both HTTP/1.1 paths: it is up, but broken.
#[test]
fn a_malformed_response_is_502_and_counted_by_passive_health() {
    for env in [&[][..], &[("WHARF_HTTP1_ENGINE", "hyper")][..]] {
        let bad = garbage_backend();
        let good = Backend::start("good");
        let w = Wharf::start_env(
            &(base_config()
                + &named(
                    "garbage",
                    "g.test",
                    &[bad.addr, good.addr],
                    "balance = \"roundrobin\"",
                )),
            env,
        );
        let mut bad_answers = 0;
        let mut streak_after = None;
        for i in 0..200 {
            let r = get(w.ep("web"), "g.test", "/");
            if r.status == 502 {
                bad_answers += 1;
                streak_after = None;
            } else {
                assert_eq!(r.status, 200, "{env:?}");
                assert_eq!(r.header("x-backend"), Some("good"));
                let since = streak_after.get_or_insert(i);
                if i - *since >= 20 {
                    break;
                }
            }
        }
        // Ten failures in a row take it out (round robin sends it every other
        // request, and a 200 from the other backend does not reset its count).
        assert_eq!(bad_answers, 10, "{env:?}");
        assert!(streak_after.is_some(), "{env:?}: still failing");
        assert!(
            w.logs().iter().any(|l| l["message"]
                .as_str()
                .is_some_and(|m| m.contains("backend down"))),
            "{env:?}: no backend-down log"
        );
    }
}
