//! End-to-end tests of the connection limits, timeouts and the upstream pool
//! (security review H3, M1, M2, M3 and the L findings on hosts and headers):
//! the real binary, real sockets, every port chosen by the kernel.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

/// One plain entrypoint `web` with `extra` keys, the admin listener, Docker off.
fn config(extra: &str) -> String {
    format!(
        "[entrypoints.web]\naddress = \"127.0.0.1:0\"\n{extra}\n\n[admin]\naddress = \"127.0.0.1:0\"\n\n[docker]\nmode = \"off\"\n\n"
    )
}

fn send_get(s: &mut TcpStream, host: &str, path: &str) {
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
        .unwrap();
}

#[test]
fn past_max_connections_a_connection_waits_until_one_closes() {
    let a = Backend::start("a");
    let mut w =
        Wharf::start(&(config("max_connections = 2") + &route("app.test", "/", &[a.addr], "")));
    let ep = w.ep("web");
    let mut held: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut s = TcpStream::connect(ep).unwrap();
            s.set_read_timeout(Some(WAIT)).unwrap();
            send_get(&mut s, "app.test", "/");
            assert_eq!(read_response(&mut s).status, 200);
            s
        })
        .collect();
    // The third connects (the kernel's backlog) but is not served.
    let mut third = TcpStream::connect(ep).unwrap();
    send_get(&mut third, "app.test", "/");
    third
        .set_read_timeout(Some(Duration::from_millis(700)))
        .unwrap();
    let mut b = [0u8; 1];
    let r = third.read(&mut b);
    assert!(
        matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut),
        "the third connection was served: {r:?}"
    );
    w.wait_log("connection cap reached").unwrap();
    // One closes: the waiting one is served.
    held.pop();
    third.set_read_timeout(Some(WAIT)).unwrap();
    let t = Instant::now();
    assert_eq!(read_response(&mut third).status, 200);
    assert!(t.elapsed() < Duration::from_secs(5));
    drop(held);
}

/// Eight cores, two entrypoints, and caps below the number of accept loops
/// (8 per entrypoint): a loop waiting for a connection holds no slot, so
/// neither entrypoint is starved by the other's idle loops, nor one of its
/// own loops by the others.
#[test]
fn accept_loops_waiting_for_a_connection_hold_no_slot() {
    let a = Backend::start("a");
    let cfg = "[entrypoints.web]\naddress = \"127.0.0.1:0\"\nmax_connections = 1\n\n\
               [entrypoints.other]\naddress = \"127.0.0.1:0\"\n\n\
               [admin]\naddress = \"127.0.0.1:0\"\n\n\
               [runtime]\nworker_threads = 8\nmax_connections = 2\n\n\
               [docker]\nmode = \"off\"\n\n"
        .to_string()
        + &route("app.test", "/", &[a.addr], "");
    let w = Wharf::start(&cfg);
    for round in 0..3 {
        for ep in ["web", "other"] {
            let mut s = TcpStream::connect(w.ep(ep)).unwrap();
            s.set_read_timeout(Some(WAIT)).unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
                .unwrap();
            assert_eq!(read_response(&mut s).status, 200, "{ep}, round {round}");
        }
    }
}

/// An h2c client (prior knowledge) on its own runtime.
fn h2_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn an_idle_http2_connection_gets_goaway_after_idle_timeout() {
    let a = Backend::start("a");
    let w =
        Wharf::start(&(config("idle_timeout = \"1s\"") + &route("app.test", "/", &[a.addr], "")));
    let ep = w.ep("web");
    h2_runtime().block_on(async move {
        let tcp = tokio::net::TcpStream::connect(ep).await.unwrap();
        let (mut client, conn) = h2::client::handshake(tcp).await.unwrap();
        let conn = tokio::spawn(conn);
        let req = hyper::Request::get("http://app.test/").body(()).unwrap();
        let (resp, _) = client.send_request(req, true).unwrap();
        let resp = resp.await.unwrap();
        assert_eq!(resp.status(), 200);
        let mut body = resp.into_body();
        while let Some(d) = body.data().await {
            let d = d.unwrap();
            let _ = body.flow_control().release_capacity(d.len());
        }
        let idle_from = Instant::now();
        // Idle now: Wharf sends GOAWAY and closes; the connection future ends.
        let ended = tokio::time::timeout(WAIT, conn).await;
        assert!(ended.is_ok(), "the idle connection stayed open");
        let took = idle_from.elapsed();
        assert!(
            took >= Duration::from_millis(700) && took < Duration::from_secs(4),
            "closed after {took:?}"
        );
    });
}

#[test]
fn a_client_that_does_not_read_is_cut_after_client_timeout() {
    let a = Backend::start("a");
    let w =
        Wharf::start(&(config("client_timeout = \"1s\"") + &route("app.test", "/", &[a.addr], "")));
    let ep = w.ep("web");
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&ep.into()).unwrap();
    let mut s: TcpStream = sock.into();
    const N: usize = 64 << 20;
    send_get(&mut s, "app.test", &format!("/big?n={N}"));
    // The client reads nothing while Wharf's writes fill the socket buffers.
    std::thread::sleep(Duration::from_secs(4));
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    let ended = loop {
        match s.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
            Err(_) => break false,
        }
    };
    assert!(ended, "the connection was still open after {got} bytes");
    assert!(
        got < N,
        "the whole body arrived: the slow reader was not cut"
    );
}

#[test]
fn a_silent_tunnel_is_closed_after_tunnel_timeout() {
    let a = Backend::start("a");
    let w =
        Wharf::start(&(config("tunnel_timeout = \"1s\"") + &route("app.test", "/", &[a.addr], "")));
    let mut s = TcpStream::connect(w.ep("web")).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(
        b"GET /upgrade HTTP/1.1\r\nHost: app.test\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n",
    )
    .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut b).unwrap(), 1);
        head.push(b[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    s.write_all(b"ping").unwrap();
    let mut echo = [0u8; 4];
    s.read_exact(&mut echo).unwrap();
    assert_eq!(&echo, b"ping");
    // Silence both ways: the tunnel is closed.
    let t = Instant::now();
    let r = s.read(&mut b);
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(700) && took < Duration::from_secs(5),
        "closed after {took:?}"
    );
}

/// A raw HTTP/1.1 backend: a POST is answered 404 at once, before its body
/// (which it then reads and discards, keeping the connection); a GET is
/// answered 200 `ok`, after `delay`. Counts connections.
fn raw_backend(delay: Duration) -> (SocketAddr, Arc<AtomicUsize>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let c = conns.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            c.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                let mut pending = Vec::new();
                loop {
                    let n = match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    pending.extend_from_slice(&buf[..n]);
                    while let Some(i) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&pending[..i]).to_string();
                        pending.drain(..i + 4);
                        let resp: &[u8] = if head.starts_with("POST") {
                            // The body is never parsed again: whatever follows is
                            // read and dropped.
                            pending.clear();
                            b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"
                        } else {
                            std::thread::sleep(delay);
                            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
                        };
                        if s.write_all(resp).is_err() {
                            return;
                        }
                        if head.starts_with("POST") {
                            // Discard the upload forever.
                            while let Ok(n) = s.read(&mut buf) {
                                if n == 0 {
                                    return;
                                }
                            }
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, conns)
}

#[test]
fn an_early_response_to_an_upload_does_not_poison_the_pool() {
    let (backend, _conns) = raw_backend(Duration::ZERO);
    let w = Wharf::start(&(config("") + &route("app.test", "/", &[backend], "")));
    let ep = w.ep("web");
    // A client uploading 100 MB slowly gets the backend's early 404.
    let mut up = TcpStream::connect(ep).unwrap();
    up.set_read_timeout(Some(WAIT)).unwrap();
    up.write_all(b"POST /nope HTTP/1.1\r\nHost: app.test\r\nContent-Length: 100000000\r\n\r\naaaa")
        .unwrap();
    assert_eq!(read_response(&mut up).status, 404);
    up.write_all(b"more").unwrap();
    // The next request is served promptly, not stuck behind the upload.
    for _ in 0..3 {
        let t = Instant::now();
        let r = get(ep, "app.test", "/");
        assert_eq!(r.status, 200);
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "took {:?}",
            t.elapsed()
        );
    }
    drop(up);
}

#[test]
fn rapid_reset_does_not_churn_backend_connections() {
    let (backend, conns) = raw_backend(Duration::from_millis(20));
    let w = Wharf::start(&(config("") + &route("app.test", "/", &[backend], "")));
    let ep = w.ep("web");
    let sent = h2_runtime().block_on(async move {
        let tcp = tokio::net::TcpStream::connect(ep).await.unwrap();
        let (client, conn) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(conn);
        let mut sent = 0;
        for _ in 0..2000 {
            let Ok(mut c) = client.clone().ready().await else {
                break;
            };
            let req = hyper::Request::get("http://app.test/").body(()).unwrap();
            let Ok((_resp, mut stream)) = c.send_request(req, true) else {
                break;
            };
            // Let Wharf write it to the backend (which answers after 20 ms),
            // then cancel: the worst case, a connection mid-exchange each time.
            tokio::time::sleep(Duration::from_millis(3)).await;
            stream.send_reset(h2::Reason::CANCEL);
            sent += 1;
        }
        sent
    });
    let made = conns.load(Ordering::SeqCst);
    eprintln!("rapid reset: {sent} requests reset, {made} backend connections");
    assert!(sent > 0);
    // Each request cancelled after it was written may cost one connection;
    // Wharf closes a client connection past 64 early resets.
    assert!(
        made <= 80,
        "{made} backend connections for {sent} reset requests"
    );
    assert!(sent < 2000, "the abusive connection was never closed");
}

#[test]
fn path_prefixes_match_on_segment_boundaries() {
    let a = Backend::start("a");
    let w = Wharf::start(&(config("") + &route("app.test", "/api", &[a.addr], "")));
    let ep = w.ep("web");
    assert_eq!(get(ep, "app.test", "/api").status, 200);
    assert_eq!(get(ep, "app.test", "/api/").status, 200);
    assert_eq!(get(ep, "app.test", "/api/x").status, 200);
    assert_eq!(get(ep, "app.test", "/apix").status, 404);
}

#[test]
fn dot_segments_and_encoded_separators_are_400_and_never_forwarded() {
    let a = Backend::start("a");
    let w = Wharf::start(&(config("") + &route("app.test", "/public", &[a.addr], "")));
    let ep = w.ep("web");
    for p in [
        "/public/../internal",
        "/public/./x",
        "/public/..",
        "/public/%2e%2e/internal",
        "/public/..;/actuator/env",
        "/public%2finternal",
        "/public%5cinternal",
        "/public//x",
        "/%70ublic/x",
    ] {
        assert_eq!(get(ep, "app.test", p).status, 400, "{p}");
    }
    assert!(a.seen().is_empty(), "a refused path reached the backend");
    assert_eq!(get(ep, "app.test", "/public/a.b/c%20d").status, 200);
}

#[test]
fn hosts_that_could_be_read_two_ways_are_400() {
    let a = Backend::start("a");
    let w = Wharf::start(&(config("") + &route("app.test", "/", &[a.addr], "")));
    let ep = w.ep("web");
    let twice = raw(
        ep,
        b"GET / HTTP/1.1\r\nHost: app.test\r\nHost: evil.test\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(twice.status, 400);
    assert_eq!(get(ep, "app.test:80:81", "/").status, 400);
    assert_eq!(get(ep, "[::1]junk", "/").status, 400);
    assert_eq!(get(ep, "app.test:8080", "/").status, 200);
}

#[test]
fn an_h2c_upgrade_is_forwarded_as_a_plain_request() {
    let a = Backend::start("a");
    let w = Wharf::start(&(config("") + &route("app.test", "/", &[a.addr], "")));
    let r = raw(
        w.ep("web"),
        b"GET / HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    let seen = a.last();
    assert!(seen.header("upgrade").is_none());
    assert!(seen.header("http2-settings").is_none());
}

/// `max_connection_age` closes an idle keep-alive connection once the
/// connection is that old, on the engine and on the hyper path alike, and a
/// request in progress at that moment is answered first, with `Connection: close`.
#[test]
fn max_connection_age_closes_idle_and_busy_http1_connections() {
    let a = Backend::start("a");
    for env in [&[][..], &[("WHARF_HTTP1_ENGINE", "hyper")][..]] {
        let w = Wharf::start_env(
            &(config("max_connection_age = \"1s\"") + &route("app.test", "/", &[a.addr], "")),
            env,
        );
        let ep = w.ep("web");
        // Idle after one request: closed at the age, not at the head timeout
        // between requests (30 s).
        let born = Instant::now();
        let mut s = TcpStream::connect(ep).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        send_get(&mut s, "app.test", "/");
        let first = read_response(&mut s);
        assert_eq!(first.status, 200);
        assert_eq!(first.header("connection"), None, "{env:?}");
        let mut b = [0u8; 1];
        assert_eq!(
            s.read(&mut b).unwrap(),
            0,
            "{env:?}: the connection stayed open"
        );
        let took = born.elapsed();
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(5),
            "{env:?}: closed after {took:?}"
        );
        // Busy at the age: the response in progress comes first, marked close.
        let mut s = TcpStream::connect(ep).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        send_get(&mut s, "app.test", "/slow?ms=1500");
        let held = read_response(&mut s);
        assert_eq!(held.status, 200, "{env:?}");
        assert_eq!(held.header("connection"), Some("close"), "{env:?}");
        assert_eq!(s.read(&mut b).unwrap(), 0, "{env:?}");
    }
}
