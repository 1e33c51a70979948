//! End-to-end tests of the process lifecycle: config validation at start, `wharf
//! check`, SIGHUP reload (bad file rejected, good file swapped without dropping a
//! connection) and SIGTERM drain.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::*;

fn wharf() -> Command {
    Command::new(env!("CARGO_BIN_EXE_wharf"))
}

#[test]
fn version_prints() {
    let out = wharf().arg("version").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("wharf "));
}

#[test]
fn invalid_config_exits_2_naming_file_line_and_key() {
    let dir = TempDir::new("bad");
    let path = dir.0.join("bad.toml");
    std::fs::write(
        &path,
        "[entrypoints.web]\naddress = \"127.0.0.1:0\"\n\n[[routes]]\nhost = \"a.test\"\nupstream = \"static:127.0.0.1:1\"\nhelthcheck = { path = \"/\" }\n",
    )
    .unwrap();
    let out = wharf()
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml:7:"), "{err}");
    assert!(err.contains("routes[0].helthcheck.path"), "{err}");
    assert!(err.contains("did you mean `healthcheck.path`"), "{err}");
}

#[test]
fn unreadable_config_exits_2() {
    let out = wharf()
        .args(["run", "--config", "/nonexistent/wharf.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));
}

#[test]
fn check_reports_and_sets_exit_code() {
    let dir = TempDir::new("check");
    let good = dir.0.join("good.toml");
    std::fs::write(
        &good,
        base_config() + &route("a.test", "/", &[dead_addr()], ""),
    )
    .unwrap();
    let out = wharf()
        .args(["check", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 route(s)"));
    let bad = dir.0.join("bad.toml");
    std::fs::write(&bad, "[runtime]\nshutdown_timeout = \"soon\"\n").unwrap();
    let out = wharf()
        .args(["check", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("bad.toml:2: runtime.shutdown_timeout"),
        "{text}"
    );
}

#[test]
fn env_overrides_config_keys() {
    let a = Backend::start("a");
    let dir = TempDir::new("env");
    let path = dir.0.join("w.toml");
    // The file's entrypoint address is unusable; the environment fixes it.
    std::fs::write(
        &path,
        "[entrypoints.web]\naddress = \"bogus\"\n[admin]\naddress = \"127.0.0.1:0\"\n".to_string()
            + &route("a.test", "/", &[a.addr], ""),
    )
    .unwrap();
    let out = wharf()
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let out = wharf()
        .args(["check", "--config"])
        .arg(&path)
        .env("WHARF_ENTRYPOINTS_WEB_ADDRESS", "127.0.0.1:0")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn sighup_rejects_a_bad_file_and_swaps_a_good_one_without_dropping_connections() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let mut w = Wharf::start(&(base_config() + &route("a.test", "/", &[a.addr], "")));
    let web = w.ep("web");
    let mut keep = TcpStream::connect(web).unwrap();
    keep.set_read_timeout(Some(WAIT)).unwrap();
    let ask = |s: &mut TcpStream, host: &str| {
        s.write_all(format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
            .unwrap();
        read_response(s).status
    };
    assert_eq!(ask(&mut keep, "a.test"), 200);

    // A broken file: rejected, nothing changes.
    std::fs::write(&w.config, "[[routes]]\nhost = \n").unwrap();
    let before = w.log_count();
    w.signal("HUP");
    let l = w.wait_log_after("reload rejected", before).unwrap();
    assert!(
        l["message"].as_str().unwrap().contains("wharf.toml:2"),
        "{l}"
    );
    assert_eq!(get(web, "a.test", "/").status, 200);
    assert_eq!(ask(&mut keep, "a.test"), 200);

    // A file with a bad route value: also rejected whole.
    std::fs::write(
        &w.config,
        base_config() + &route("a.test", "/", &[a.addr], "balance = \"fastest\""),
    )
    .unwrap();
    let before = w.log_count();
    w.signal("HUP");
    w.wait_log_after("reload rejected", before).unwrap();
    assert_eq!(get(web, "a.test", "/").status, 200);

    // A good file: swapped in; the open connection keeps working.
    w.reload(&(base_config() + &route("b.test", "/", &[b.addr], "")));
    assert_eq!(get(web, "b.test", "/").status, 200);
    assert_eq!(get(web, "a.test", "/").status, 404);
    assert_eq!(ask(&mut keep, "b.test"), 200);

    let m = get(w.admin, "x", "/metrics").text();
    assert!(
        m.contains("wharf_config_reloads_total{provider=\"file\",result=\"failure\"} 2"),
        "{m}"
    );
    assert!(
        m.contains("wharf_config_reloads_total{provider=\"file\",result=\"success\"} 1"),
        "{m}"
    );
}

/// Wharf with one route to `a` and the given `shutdown_timeout`.
fn start_with_shutdown_timeout(a: &Backend, timeout: &str) -> Wharf {
    Wharf::start(
        &(base_config().replace(
            "[admin]",
            &format!("[runtime]\nshutdown_timeout = \"{timeout}\"\n\n[admin]"),
        ) + &route("a.test", "/", &[a.addr], "")),
    )
}

#[test]
fn sigterm_drains_the_request_in_flight_then_exits_0() {
    let a = Backend::start("a");
    let mut w = start_with_shutdown_timeout(&a, "10s");
    let web = w.ep("web");
    let inflight = std::thread::spawn(move || get(web, "a.test", "/slow?ms=700"));
    // Wait until the backend has the request, then ask Wharf to stop.
    wait_notified(&a.started());
    let t = Instant::now();
    w.signal("TERM");
    w.wait_log("draining").unwrap();
    // New connections are refused while the old request finishes.
    let deadline = Instant::now() + WAIT;
    while TcpStream::connect(web).is_ok() {
        assert!(Instant::now() < deadline, "still accepting after SIGTERM");
        std::thread::sleep(Duration::from_millis(10));
    }
    let r = inflight.join().unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "slow done");
    assert_eq!(w.wait_exit(), Some(0));
    assert!(t.elapsed() < Duration::from_secs(5));
    w.wait_log("drained; exiting").unwrap();
}

#[test]
fn sigterm_gives_up_after_shutdown_timeout() {
    let a = Backend::start("a");
    let mut w = start_with_shutdown_timeout(&a, "300ms");
    let web = w.ep("web");
    let cut = std::thread::spawn(move || {
        let mut s = TcpStream::connect(web).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        let _ = s.write_all(b"GET /slow?ms=10000 HTTP/1.1\r\nHost: a.test\r\n\r\n");
        let mut buf = Vec::new();
        let _ = std::io::Read::read_to_end(&mut s, &mut buf);
        buf
    });
    wait_notified(&a.started());
    let t = Instant::now();
    w.signal("TERM");
    assert_eq!(w.wait_exit(), Some(0));
    let took = t.elapsed();
    assert!(took >= Duration::from_millis(300), "{took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    w.wait_log("shutdown_timeout").unwrap();
    // The request that outlived the timeout got no response: its connection was cut.
    assert!(cut.join().unwrap().is_empty());
}

#[test]
fn sighup_adding_an_entrypoint_never_moves_routes_onto_another_listener() {
    let a = Backend::start("a");
    let mut w = Wharf::start(
        &(base_config() + &route("a.test", "/", &[a.addr], "entrypoints = [\"web\"]")),
    );
    let web = w.ep("web");
    // `aaa` sorts before `web`: a naive reload would give it web's index.
    let next = "[entrypoints.aaa]\naddress = \"127.0.0.1:0\"\n\n".to_string()
        + &base_config()
        + &route("a.test", "/", &[a.addr], "entrypoints = [\"web\"]")
        + &route("internal.test", "/", &[a.addr], "entrypoints = [\"aaa\"]");
    let before = w.reload(&next);
    w.wait_log_after("not running until the next restart", before)
        .unwrap();
    assert_eq!(get(web, "a.test", "/").status, 200);
    assert_eq!(get(web, "internal.test", "/").status, 404);
}

/// Many table swaps while clients send requests on keep-alive connections: the
/// swapped route's backend set changes and other routes come and go, and not one
/// request fails (readers hold the old table until their lookup is done).
#[test]
fn swaps_under_load_fail_no_request() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;

    let b1 = Backend::start("b1");
    let b2 = Backend::start("b2");
    let config = |i: usize| {
        let backends: &[std::net::SocketAddr] = if i.is_multiple_of(2) {
            &[b1.addr]
        } else {
            &[b1.addr, b2.addr]
        };
        base_config()
            + &route("load.test", "/", backends, "")
            + &route(&format!("other-{i}.test"), "/", &[b2.addr], "")
    };
    let mut w = Wharf::start(&config(0));
    let web = w.ep("web");
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(web).unwrap();
                s.set_read_timeout(Some(WAIT)).unwrap();
                while !stop.load(Ordering::Relaxed) {
                    s.write_all(b"GET / HTTP/1.1\r\nHost: load.test\r\n\r\n")
                        .unwrap();
                    let r = read_response(&mut s);
                    if r.status == 200 {
                        ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failed.lock().unwrap().push(r.status);
                    }
                }
            })
        })
        .collect();
    let swaps = 30;
    for i in 1..=swaps {
        w.reload(&config(i));
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let swapped = w
        .logs()
        .iter()
        .filter(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("routing table swapped"))
        })
        .count();
    assert!(swapped > swaps, "{swapped} swaps logged");
    let failed = failed.lock().unwrap();
    assert!(failed.is_empty(), "failed: {failed:?}");
    assert!(ok.load(Ordering::Relaxed) > 0);
    eprintln!(
        "{} requests during {swapped} swaps, {} failed",
        ok.load(Ordering::Relaxed),
        failed.len()
    );
}
