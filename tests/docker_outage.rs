//! The Docker API goes away and comes back (issue 13, item 3): Wharf reads the
//! Engine through a TCP socket proxy that this test runs itself, and stops and
//! starts again on the same port, cutting every forwarded connection (the event
//! stream too), as a restarted `docker-socket-proxy` does. Meanwhile the routes
//! stay exactly as they were, the outage shows in `/api/errors` and the metrics,
//! and what changed while the API was away is routed within 2 s of its return.
//! Needs the machine's Docker Engine at /var/run/docker.sock.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::docker::{poll_until, try_get, Engine};
use common::*;

const SOCKET: &str = "/var/run/docker.sock";

/// A TCP front for the Docker socket that can be stopped (the port closes and
/// every forwarded connection is cut) and started again on the same port.
struct SocketProxy {
    addr: SocketAddr,
    running: Option<Running>,
}

struct Running {
    stop: Arc<AtomicBool>,
    accept: JoinHandle<()>,
    /// Both ends of every forwarded connection, to cut them on stop.
    conns: Arc<Mutex<Vec<(TcpStream, UnixStream)>>>,
}

impl SocketProxy {
    fn start() -> SocketProxy {
        let mut p = SocketProxy {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            running: None,
        };
        p.resume();
        p
    }

    /// Listens again, on the port of the first start.
    fn resume(&mut self) {
        assert!(self.running.is_none());
        // std sets SO_REUSEADDR on Unix, so the port is free again at once even
        // with the cut connections in TIME_WAIT.
        let listener = TcpListener::bind(self.addr).unwrap();
        self.addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let conns = Arc::new(Mutex::new(Vec::new()));
        let accept = {
            let (stop, conns) = (stop.clone(), conns.clone());
            std::thread::spawn(move || {
                for client in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return; // the listener closes here
                    }
                    let Ok(client) = client else { continue };
                    let Ok(engine) = UnixStream::connect(SOCKET) else {
                        continue;
                    };
                    conns
                        .lock()
                        .unwrap()
                        .push((client.try_clone().unwrap(), engine.try_clone().unwrap()));
                    pump(client.try_clone().unwrap(), engine.try_clone().unwrap());
                    pump(engine, client);
                }
            })
        };
        self.running = Some(Running {
            stop,
            accept,
            conns,
        });
    }

    /// Closes the port, then cuts every connection it forwarded.
    fn stop(&mut self) {
        let r = self.running.take().unwrap();
        r.stop.store(true, Ordering::SeqCst);
        // Wakes the blocking accept, which then returns and drops the listener.
        let _ = TcpStream::connect(self.addr);
        r.accept.join().unwrap();
        for (client, engine) in r.conns.lock().unwrap().drain(..) {
            let _ = client.shutdown(Shutdown::Both);
            let _ = engine.shutdown(Shutdown::Both);
        }
    }

    fn endpoint(&self) -> String {
        format!("tcp://{}", self.addr)
    }
}

impl Drop for SocketProxy {
    fn drop(&mut self) {
        if self.running.is_some() {
            self.stop();
        }
    }
}

/// Copies one direction until either side closes, then closes the other.
fn pump<R, W>(mut from: R, mut to: W)
where
    R: Read + Send + 'static,
    W: Write + Send + 'static + ShutdownWrite,
{
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 || to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        to.shutdown_write();
    });
}

trait ShutdownWrite {
    fn shutdown_write(&self);
}
impl ShutdownWrite for TcpStream {
    fn shutdown_write(&self) {
        let _ = self.shutdown(Shutdown::Write);
    }
}
impl ShutdownWrite for UnixStream {
    fn shutdown_write(&self) {
        let _ = self.shutdown(Shutdown::Write);
    }
}

/// GETs `host` every 20 ms on its own thread and records every answer that is
/// not a 200, until stopped.
struct Prober {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<(usize, Vec<String>)>>,
}

impl Prober {
    fn start(addr: SocketAddr, host: String) -> Prober {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let (mut sent, mut bad) = (0, Vec::new());
            let t0 = Instant::now();
            while !s.load(Ordering::SeqCst) {
                sent += 1;
                match try_get(addr, &host, "/") {
                    Ok(r) if r.status == 200 => {}
                    Ok(r) => bad.push(format!("{:?}: {}", t0.elapsed(), r.status)),
                    Err(e) => bad.push(format!("{:?}: {e}", t0.elapsed())),
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            (sent, bad)
        });
        Prober {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops and returns (requests sent, the failures).
    fn finish(mut self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn swaps(w: &Wharf) -> Vec<String> {
    w.logs()
        .iter()
        .filter_map(|l| l["message"].as_str())
        .filter(|m| m.starts_with("routing table swapped"))
        .map(str::to_string)
        .collect()
}

/// The provider's and the reconciler's log lines, for failure messages.
fn docker_logs(w: &Wharf) -> Vec<String> {
    w.logs()
        .iter()
        .filter(|l| {
            let m = l["message"].as_str().unwrap_or_default();
            m.contains("ocker") || m.starts_with("routing table")
        })
        .map(|l| l.to_string())
        .collect()
}

fn unreachable_error(w: &Wharf) -> Option<String> {
    w.api("/api/errors")
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["source"] == "docker")
        .filter_map(|p| p["message"].as_str())
        .find(|m| m.starts_with("Docker is unreachable"))
        .map(str::to_string)
}

/// Route names, hosts and backend addresses: what an outage must not change.
fn table(w: &Wharf) -> Vec<String> {
    let routes = w.api_routes();
    let mut out: Vec<String> = routes
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let backends: Vec<&str> = r["backends"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|b| b["address"].as_str())
                .collect();
            format!("{} {} {:?}", r["name"], r["hosts"], backends)
        })
        .collect();
    out.sort();
    out
}

const ERRORS: &str = "wharf_config_errors{provider=\"docker\"}";
const DEGRADED: &str = "wharf_provider_degraded{provider=\"docker\"}";
const FAILURES: &str = "wharf_config_reloads_total{provider=\"docker\",result=\"failure\"}";
const RELOADS: &str = "wharf_config_reloads_total{provider=\"docker\",result=\"success\"}";

/// How long each outage lasts: long enough for several reconnect attempts
/// against the closed port (one every 0.5 to 1 s).
const OUTAGE: Duration = Duration::from_secs(3);

#[test]
fn docker_outage_keeps_routes_and_resyncs_within_two_seconds() {
    let e = Engine::new("outage");
    let net = e.bridge("net");
    let image = e.backend_image();
    let mut proxy = SocketProxy::start();

    let host_a = format!("{}.test", e.name("a"));
    let host_b = format!("{}.test", e.name("b"));
    let labelled = |what: &str, host: &str| {
        e.run(
            what,
            &[
                "--network",
                &net,
                "--label",
                "wharf.enable=true",
                "--label",
                &format!("wharf.host={host}"),
                &image,
            ],
        )
    };
    labelled("a", &host_a);

    let config = base_config().replace(
        "[docker]\nmode = \"off\"\n",
        &format!(
            "[docker]\nmode = \"containers\"\nnetwork = \"{net}\"\nendpoint = \"{}\"\n",
            proxy.endpoint()
        ),
    );
    let mut w = Wharf::start(&config);
    w.wait_log("docker: connected and listed").unwrap();
    let web = w.ep("web");
    poll_until(web, &host_a, "/", Duration::from_secs(10), |r| {
        r.status == 200
    })
    .unwrap();
    let prober = Prober::start(web, host_a.clone());
    let mut before = table(&w);
    let mut swapped = swaps(&w).len();
    let reloads = w.metric(RELOADS).unwrap();
    assert_eq!(w.metric(ERRORS), Some(0.0));
    assert_eq!(w.metric(DEGRADED), Some(0.0));
    assert_eq!(w.metric(FAILURES), Some(0.0));

    // 1. The API goes away, the event stream with it.
    let mut resync = Vec::new();
    for round in 1..=2 {
        let logs = w.log_count();
        let down = Instant::now();
        proxy.stop();
        wait_until("the outage in /api/errors", Duration::from_secs(5), || {
            unreachable_error(&w).is_some()
        });
        let msg = unreachable_error(&w).unwrap();
        assert!(msg.contains(" since 20"), "{msg}");
        assert!(msg.contains("serving the last known routes"), "{msg}");
        assert_eq!(w.metric(ERRORS), Some(1.0), "round {round}");
        assert_eq!(w.metric(DEGRADED), Some(1.0), "round {round}");
        assert_eq!(w.metric(FAILURES), Some(f64::from(round)), "round {round}");
        w.wait_log_after("docker: unreachable", logs).unwrap();

        // 2. Something changes while it is away (the first round only): Wharf
        //    cannot know; nothing it serves changes.
        if round == 1 {
            labelled("b", &host_b);
            assert_eq!(try_get(web, &host_b, "/").unwrap().status, 404);
        }
        std::thread::sleep(OUTAGE.saturating_sub(down.elapsed()));
        assert_eq!(table(&w), before, "round {round}: the table changed");
        assert_eq!(swaps(&w).len(), swapped, "round {round}: a swap while down");
        assert!(unreachable_error(&w).is_some());

        // 3. The API is back: routed within 2 s.
        let logs = w.log_count();
        proxy.resume();
        let up = Instant::now();
        let took = if round == 1 {
            let (_, at) = poll_until(web, &host_b, "/", Duration::from_secs(10), |r| {
                r.status == 200
            })
            .unwrap();
            at - up
        } else {
            w.wait_log_after("docker: connected and listed", logs)
                .unwrap();
            up.elapsed()
        };
        eprintln!(
            "round {round}: API back -> {} in {took:?} (outage {:?})",
            if round == 1 {
                "the new container routed"
            } else {
                "re-listed"
            },
            up - down
        );
        resync.push(took);
        assert!(
            took < Duration::from_secs(2),
            "round {round}: took {took:?}"
        );
        wait_until("/api/errors clear", Duration::from_secs(2), || {
            unreachable_error(&w).is_none()
        });
        assert_eq!(
            w.metric(ERRORS),
            Some(0.0),
            "round {round}: {:?}; {:#?}",
            w.api("/api/errors"),
            docker_logs(&w)
        );
        assert_eq!(w.metric(DEGRADED), Some(0.0), "round {round}");
        let listed = w
            .wait_log_after("docker: connected and listed", logs)
            .unwrap();
        eprintln!(
            "round {round}: listing took {} ms, outage logged as {} ms",
            listed["elapsed_ms"], listed["down_ms"]
        );
        if round == 1 {
            // One swap, adding b and touching nothing else.
            let new = swaps(&w);
            assert_eq!(new.len(), swapped + 1, "{new:#?}");
            let line = &new[swapped];
            assert!(line.contains("added:"), "{line}");
            assert!(!line.contains("removed:"), "{line}");
            assert!(!line.contains("changed:"), "{line}");
            assert_eq!(w.metric(RELOADS), Some(reloads + 1.0));
            swapped += 1;
            before = table(&w);
            assert_ne!(before.len(), 0);
        } else {
            // An unchanged listing after the outage: no swap, no reload.
            assert_eq!(swaps(&w).len(), swapped, "{:#?}", swaps(&w));
            assert_eq!(w.metric(RELOADS), Some(reloads + 1.0));
            assert_eq!(table(&w), before);
        }
    }
    // The first route answered 200 throughout: never withdrawn, never flapping.
    let (sent, bad) = prober.finish();
    eprintln!("{sent} probes of the first route, {} failed", bad.len());
    assert!(sent > 100, "only {sent} probes");
    assert!(bad.is_empty(), "failed probes: {bad:#?}");
    assert_eq!(w.metric(FAILURES), Some(2.0));
    eprintln!("re-sync times: {resync:?}");
}
