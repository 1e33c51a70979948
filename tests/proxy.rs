//! End-to-end tests of the data plane: the real binary against real HTTP backends
//! on loopback, every port chosen by the kernel.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn routes_by_host_wildcard_default_and_longest_path() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let c = Backend::start("c");
    let cfg = base_config()
        + &route("app.test", "/", &[a.addr], "")
        + &route("app.test", "/api", &[b.addr], "")
        + &route("*.wild.test", "/", &[b.addr], "")
        + &route("*", "/only-default", &[c.addr], "");
    let w = Wharf::start(&cfg);
    let web = w.ep("web");
    let who = |host: &str, path: &str| {
        let r = get(web, host, path);
        (r.status, r.header("x-backend").unwrap_or("-").to_string())
    };
    assert_eq!(who("app.test", "/"), (200, "a".into()));
    assert_eq!(who("APP.test:80", "/x"), (200, "a".into()));
    assert_eq!(who("app.test", "/api/v1"), (200, "b".into()));
    assert_eq!(who("x.wild.test", "/"), (200, "b".into()));
    assert_eq!(who("other.test", "/only-default/x"), (200, "c".into()));
    // An unknown host with no matching default path: 404 with a short body.
    let r = get(web, "nobody.test", "/");
    assert_eq!(r.status, 404);
    assert!(r.text().contains("no route"), "{}", r.text());
    // The backend saw the path and query unchanged and the client's Host.
    get(web, "app.test", "/p?q=1&r=%20");
    let seen = a.last();
    assert_eq!(seen.uri, "/p?q=1&r=%20");
    assert_eq!(seen.header("host"), Some("app.test"));
}

#[test]
fn malformed_requests_get_400_and_do_not_disturb_others() {
    let a = Backend::start("a");
    let w = Wharf::start(&(base_config() + &route("app.test", "/", &[a.addr], "")));
    let web = w.ep("web");
    // A keep-alive connection opened before the garbage...
    let mut keep = TcpStream::connect(web).unwrap();
    keep.set_read_timeout(Some(WAIT)).unwrap();
    keep.write_all(b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut keep).status, 200);
    // ...garbage, a missing Host, a bad Host...
    let r = raw(web, b"GARBAGE\r\n\r\n");
    assert_eq!(r.status, 400);
    let r = raw(web, b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n");
    assert_eq!(r.status, 400);
    let r = raw(
        web,
        b"GET / HTTP/1.1\r\nHost: a b\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 400);
    // ...and the first connection still works.
    keep.write_all(b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut keep).status, 200);
}

#[test]
fn oversized_heads_get_431() {
    let a = Backend::start("a");
    let cfg = base_config().replace(
        "address = \"127.0.0.1:0\"\n\n[admin]",
        "address = \"127.0.0.1:0\"\nmax_header_size = 8192\nmax_headers = 20\n\n[admin]",
    ) + &route("app.test", "/", &[a.addr], "");
    let w = Wharf::start(&cfg);
    let web = w.ep("web");
    let big = format!(
        "GET / HTTP/1.1\r\nHost: app.test\r\nX-Big: {}\r\n\r\n",
        "a".repeat(10_000)
    );
    assert_eq!(raw(web, big.as_bytes()).status, 431);
    let mut many = String::from("GET / HTTP/1.1\r\nHost: app.test\r\n");
    for i in 0..30 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    assert_eq!(raw(web, many.as_bytes()).status, 431);
    assert_eq!(get(web, "app.test", "/").status, 200);
}

#[test]
fn forwarding_headers_and_hop_by_hop() {
    let a = Backend::start("a");
    let w = Wharf::start(&(base_config() + &route("app.test", "/", &[a.addr], "")));
    let r = raw(
        w.ep("web"),
        b"GET / HTTP/1.1\r\nHost: app.test\r\nX-Forwarded-For: 6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\n\
          X-Forwarded-Proto: https\r\nConnection: close, X-Private\r\nX-Private: 1\r\n\
          Keep-Alive: timeout=1\r\nProxy-Connection: keep-alive\r\nTE: gzip\r\nX-App: kept\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    let s = a.last();
    // The client is untrusted: its forwarding headers are replaced, not extended.
    assert_eq!(s.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(s.header("x-real-ip"), Some("127.0.0.1"));
    assert_eq!(s.header("x-forwarded-proto"), Some("http"));
    assert_eq!(s.header("x-forwarded-host"), Some("app.test"));
    assert_eq!(s.header("x-app"), Some("kept"));
    for gone in ["x-private", "keep-alive", "proxy-connection", "te"] {
        assert_eq!(s.header(gone), None, "{gone} reached the backend: {s:?}");
    }
    // Hop-by-hop fields of the response are dropped on the way back too.
    assert_eq!(r.header("x-backend-private"), None);
    assert_eq!(r.header("keep-alive"), None);
}

#[test]
fn trusted_peers_extend_x_forwarded_for() {
    let a = Backend::start("a");
    let cfg = base_config().replace(
        "address = \"127.0.0.1:0\"\n\n[admin]",
        "address = \"127.0.0.1:0\"\nforwarded_trusted = [\"127.0.0.0/8\"]\n\n[admin]",
    ) + &route("app.test", "/", &[a.addr], "");
    let w = Wharf::start(&cfg);
    raw(
        w.ep("web"),
        b"GET / HTTP/1.1\r\nHost: app.test\r\nX-Forwarded-For: 203.0.113.5\r\nX-Forwarded-Proto: https\r\nConnection: close\r\n\r\n",
    );
    let s = a.last();
    assert_eq!(s.header("x-forwarded-for"), Some("203.0.113.5, 127.0.0.1"));
    assert_eq!(s.header("x-forwarded-proto"), Some("https"));
}

#[test]
fn proxy_protocol_from_trusted_sources() {
    let a = Backend::start("a");
    let cfg = base_config().replace(
        "address = \"127.0.0.1:0\"\n\n[admin]",
        "address = \"127.0.0.1:0\"\nproxy_protocol = { trusted = [\"127.0.0.1\"] }\n\n[admin]",
    ) + &route("app.test", "/", &[a.addr], "");
    let w = Wharf::start(&cfg);
    let web = w.ep("web");
    // v1
    let r = raw(
        web,
        b"PROXY TCP4 203.0.113.9 127.0.0.1 40000 80\r\nGET / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    assert_eq!(a.last().header("x-real-ip"), Some("203.0.113.9"));
    // v2, IPv6 source
    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n\x21\x21\x00\x24".to_vec();
    v2.extend_from_slice(
        &"2001:db8::7"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets(),
    );
    v2.extend_from_slice(&[0u8; 16]);
    v2.extend_from_slice(&[0x1f, 0x90, 0, 80]);
    v2.extend_from_slice(b"GET / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n");
    assert_eq!(raw(web, &v2).status, 200);
    assert_eq!(a.last().header("x-forwarded-for"), Some("2001:db8::7"));
    // No header at all from a trusted source is still served.
    assert_eq!(get(web, "app.test", "/").status, 200);
    assert_eq!(a.last().header("x-real-ip"), Some("127.0.0.1"));
    // A broken header closes that connection only.
    let mut s = TcpStream::connect(web).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(b"PROXY TCP4 nonsense\r\nGET / HTTP/1.1\r\n\r\n")
        .unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    assert!(buf.is_empty(), "{}", String::from_utf8_lossy(&buf));
    assert_eq!(get(web, "app.test", "/").status, 200);
}

#[test]
fn request_and_response_bodies_stream() {
    let a = Backend::start("a");
    let w = Wharf::start(&(base_config() + &route("app.test", "/", &[a.addr], "")));
    let web = w.ep("web");
    // A 4 MiB chunked upload reaches the backend whole.
    let mut s = TcpStream::connect(web).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(b"POST /echo-len HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n")
        .unwrap();
    let chunk = vec![b'z'; 64 * 1024];
    for _ in 0..64 {
        s.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
            .unwrap();
        s.write_all(&chunk).unwrap();
        s.write_all(b"\r\n").unwrap();
    }
    s.write_all(b"0\r\n\r\n").unwrap();
    let r = read_response(&mut s);
    assert_eq!(r.text(), (4 << 20).to_string());
    // A large download arrives whole.
    let r = get(web, "app.test", "/big?n=3000000");
    assert_eq!(r.body.len(), 3_000_000);
    // The first chunk of a response reaches the client before the backend has sent
    // the last one: nothing is buffered whole.
    let mut s = TcpStream::connect(web).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(b"GET /stream HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("first;") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed before the first chunk");
        got.extend_from_slice(&buf[..n]);
    }
    assert!(!String::from_utf8_lossy(&got).contains("last"));
    a.release();
    s.read_to_end(&mut got).unwrap();
    assert!(String::from_utf8_lossy(&got).contains("last"));
}

#[test]
fn upgrades_pass_through() {
    let a = Backend::start("a");
    let w = Wharf::start(&(base_config() + &route("app.test", "/", &[a.addr], "")));
    let mut s = TcpStream::connect(w.ep("web")).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(
        b"GET /upgrade HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
    )
    .unwrap();
    let r = read_response(&mut s);
    assert_eq!(r.status, 101);
    assert_eq!(r.header("upgrade"), Some("echo"));
    let seen = a.last();
    assert_eq!(seen.header("upgrade"), Some("echo"));
    for msg in [&b"hello"[..], b"over the tunnel"] {
        s.write_all(msg).unwrap();
        let mut back = vec![0u8; msg.len()];
        s.read_exact(&mut back).unwrap();
        assert_eq!(back, msg);
    }
}

#[test]
fn dead_backend_502_fast_and_slow_backend_504() {
    let a = Backend::start("a");
    let dead = DeadAddr::new();
    let cfg = base_config().replace(
        "[admin]",
        "[upstream]\nconnect_timeout = \"1s\"\nresponse_timeout = \"300ms\"\n\n[admin]",
    ) + &route("dead.test", "/", &[dead.addr], "")
        + &route("slow.test", "/", &[a.addr], "");
    let w = Wharf::start(&cfg);
    let web = w.ep("web");
    let t = Instant::now();
    let r = get(web, "dead.test", "/");
    assert_eq!(r.status, 502);
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert!(!r.text().contains("127.0.0.1"), "the body leaks an address");
    let r = get(web, "slow.test", "/slow?ms=3000");
    assert_eq!(r.status, 504);
    assert_eq!(get(web, "slow.test", "/").status, 200);
}

#[test]
fn balances_over_all_backends() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let w = Wharf::start(
        &(base_config()
            + &route(
                "app.test",
                "/",
                &[a.addr, b.addr],
                "balance = \"roundrobin\"",
            )),
    );
    for _ in 0..10 {
        assert_eq!(get(w.ep("web"), "app.test", "/").status, 200);
    }
    assert_eq!(a.seen().len(), 5);
    assert_eq!(b.seen().len(), 5);
}

#[test]
fn h2c_prior_knowledge_from_clients() {
    let a = Backend::start("a");
    let w = Wharf::start(&(base_config() + &route("app.test", "/", &[a.addr], "")));
    let web = w.ep("web");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (status, backend) = rt.block_on(async {
        let mut send = common::h2c(web).await;
        let req = hyper::Request::get("http://app.test/h2")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        (
            resp.status().as_u16(),
            resp.headers()["x-backend"].to_str().unwrap().to_string(),
        )
    });
    assert_eq!((status, backend.as_str()), (200, "a"));
    // HTTP/2 from the client, HTTP/1.1 to the backend, with the Host restored.
    let s = a.last();
    assert_eq!(s.version, "HTTP/1.1");
    assert_eq!(s.header("host"), Some("app.test"));
}

#[test]
fn h2c_to_backends() {
    let a = Backend::start("a");
    let w = Wharf::start(&(base_config() + &route("app.test", "/", &[a.addr], "scheme = \"h2c\"")));
    assert_eq!(get(w.ep("web"), "app.test", "/").status, 200);
    assert_eq!(a.last().version, "HTTP/2.0");
}

#[test]
fn admin_api_lists_routes_and_backends() {
    let a = Backend::start("a");
    let w = Wharf::start(
        &(base_config()
            + &route("app.test", "/", &[a.addr], "")
            + &route("sticky.test", "/", &[a.addr], "sticky = \"cookie\"")),
    );
    assert_eq!(get(w.admin, "x", "/ping").status, 200);
    let r = get(w.admin, "x", "/api/routes");
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v[0]["hosts"][0], "app.test");
    assert_eq!(v[0]["backends"][0]["address"], a.addr.to_string());
    assert_eq!(v[0]["backends"][0]["health"], "up");
    assert_eq!(v[0]["sticky"], "none");
    assert_eq!(v[1]["sticky"], "cookie");
    assert_eq!(v[0]["tls"], "none");
    let m = get(w.admin, "x", "/metrics").text();
    assert!(m.contains("wharf_routes 2"), "{m}");
    let up = format!(
        "wharf_backend_up{{backend=\"{}\",route=\"app.test/\"}} 1",
        a.addr
    );
    assert!(m.contains(&up), "{m}");
    assert!(m.contains("wharf_backend_inflight{"), "{m}");
}

#[test]
fn dual_stack_listener_serves_ipv4_and_ipv6_and_trusts_mapped_ipv4() {
    let a = Backend::start("a");
    let cfg = "[entrypoints.web]\naddress = \"[::]:0\"\nproxy_protocol = { trusted = [\"127.0.0.1\"] }\n\n[admin]\naddress = \"127.0.0.1:0\"\n\n".to_string()
        + &route("app.test", "/", &[a.addr], "");
    let w = Wharf::start(&cfg);
    let port = w.ep("web").port();
    let v4 = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    // IPv4 on the [::] listener arrives as ::ffff:127.0.0.1 and must match the
    // IPv4 trust list.
    let r = raw(
        v4,
        b"PROXY TCP4 198.51.100.4 127.0.0.1 1234 80\r\nGET / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    assert_eq!(a.last().header("x-real-ip"), Some("198.51.100.4"));
    // IPv6 loopback, where the machine has it.
    let v6 = std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port));
    if TcpStream::connect(v6).is_ok() {
        assert_eq!(get(v6, "app.test", "/").status, 200);
        assert_eq!(a.last().header("x-real-ip"), Some("::1"));
    }
}

#[test]
fn silent_and_idle_connections_are_closed_after_the_head_timeout() {
    let a = Backend::start("a");
    let cfg = base_config().replace(
        "address = \"127.0.0.1:0\"\n\n[admin]",
        "address = \"127.0.0.1:0\"\nheader_read_timeout = \"300ms\"\n\n[admin]",
    ) + &route("app.test", "/", &[a.addr], "");
    let w = Wharf::start(&cfg);
    let web = w.ep("web");
    let closed_within = |s: &mut TcpStream| {
        let t = Instant::now();
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        t.elapsed()
    };
    // Connects and says nothing.
    let mut silent = TcpStream::connect(web).unwrap();
    silent.set_read_timeout(Some(WAIT)).unwrap();
    assert!(closed_within(&mut silent) < Duration::from_secs(5));
    // One request, then idle on keep-alive.
    let mut idle = TcpStream::connect(web).unwrap();
    idle.set_read_timeout(Some(WAIT)).unwrap();
    idle.write_all(b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut idle).status, 200);
    assert!(closed_within(&mut idle) < Duration::from_secs(5));
}

#[test]
fn proxy_headers_from_untrusted_peers_are_refused() {
    let a = Backend::start("a");
    let cfg = base_config().replace(
        "address = \"127.0.0.1:0\"\n\n[admin]",
        "address = \"127.0.0.1:0\"\nproxy_protocol = { trusted = [\"10.0.0.0/8\"] }\n\n[admin]",
    ) + &route("app.test", "/", &[a.addr], "");
    let w = Wharf::start(&cfg);
    let r = raw(
        w.ep("web"),
        b"PROXY TCP4 203.0.113.9 127.0.0.1 40000 80\r\nGET / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 400);
    assert!(a.seen().is_empty(), "a spoofed request reached the backend");
}

/// `worker_threads = 3`: three cores, each accepting from the one socket. A
/// burst of keep-alive connections is shared out among them (however many one
/// core accepted), and each core keeps its own backend connections: requests
/// made one after another over every client connection reach the backend over
/// exactly one connection per core.
#[test]
fn connections_are_shared_out_among_the_cores() {
    let a = Backend::start("a");
    let cfg = base_config()
        + "[runtime]\nworker_threads = 3\n\n"
        + &route("app.test", "/", &[a.addr], "");
    let w = Wharf::start(&cfg);
    let mut clients: Vec<TcpStream> = (0..30)
        .map(|_| TcpStream::connect(w.ep("web")).unwrap())
        .collect();
    for round in 0..2 {
        for c in &mut clients {
            c.write_all(b"GET / HTTP/1.1\r\nHost: app.test\r\n\r\n")
                .unwrap();
            assert_eq!(read_response(c).status, 200, "round {round}");
        }
    }
    let peers: std::collections::HashSet<_> = a.seen().iter().map(|s| s.peer).collect();
    assert_eq!(peers.len(), 3, "{peers:?}");
}

#[test]
fn upstream_connections_are_reused() {
    let a = Backend::start("a");
    // One core: each core keeps its own idle list (see
    // `connections_are_shared_out_among_the_cores`).
    let cfg = base_config() + "[runtime]\nworker_threads = 1\n\n";
    let w = Wharf::start(&(cfg + &route("app.test", "/", &[a.addr], "")));
    for _ in 0..20 {
        assert_eq!(get(w.ep("web"), "app.test", "/").status, 200);
    }
    // Sequential requests from fresh client connections share one pooled
    // upstream connection.
    let peers: std::collections::HashSet<_> = a.seen().iter().map(|s| s.peer).collect();
    assert_eq!(peers.len(), 1, "{peers:?}");
    // A response read only partly is not reused: its connection is dropped.
    let mut s = TcpStream::connect(w.ep("web")).unwrap();
    s.write_all(b"GET /big?n=10000000 HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 1024];
    s.read_exact(&mut buf).unwrap();
    drop(s);
    assert_eq!(get(w.ep("web"), "app.test", "/").status, 200);
    let last = a.last();
    assert_eq!(last.uri, "/");
}
