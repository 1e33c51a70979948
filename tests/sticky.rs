//! End-to-end tests of session affinity (insert and prefix cookies, source
//! bindings) and rate limits: the real binary against real backends on
//! loopback, every port chosen by the kernel, every wait a readiness wait.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;

const SECRET: &str = "[sticky]\nsecret = \"test-secret-shared-by-replicas\"\n\n";

fn named(name: &str, host: &str, backends: &[SocketAddr], extra: &str) -> String {
    route(host, "/", backends, &format!("name = \"{name}\"\n{extra}"))
}

/// One GET with extra header lines, on a new connection.
fn get_with(addr: SocketAddr, host: &str, path: &str, headers: &str) -> RawResponse {
    raw(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{headers}Connection: close\r\n\r\n")
            .as_bytes(),
    )
}

/// The `NAME=value` part of the first `Set-Cookie` naming `name`.
fn set_cookie<'a>(r: &'a RawResponse, name: &str) -> Option<&'a str> {
    r.headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("set-cookie"))
        .map(|(_, v)| v.as_str())
        .find(|v| v.starts_with(&format!("{name}=")))
}

fn pair(set_cookie: &str) -> &str {
    set_cookie.split(';').next().unwrap()
}

fn backends(n: usize) -> Vec<Backend> {
    (0..n).map(|i| Backend::start(&format!("b{i}"))).collect()
}

fn addrs(bs: &[Backend]) -> Vec<SocketAddr> {
    bs.iter().map(|b| b.addr).collect()
}

fn cookie_seen_by(bs: &[Backend], name: &str) -> Option<String> {
    bs.iter().find(|b| b.name == name).and_then(|b| {
        b.last()
            .headers
            .iter()
            .find(|(k, _)| k == "cookie")
            .map(|(_, v)| v.clone())
    })
}

#[test]
fn insert_cookie_pins_every_request_and_the_application_never_sees_it() {
    let bs = backends(3);
    let cfg = base_config()
        + SECRET
        + &named(
            "app",
            "app.test",
            &addrs(&bs),
            "sticky = { type = \"cookie\", ttl = \"1h\" }",
        );
    let w = Wharf::start(&cfg);
    let first = get(w.ep("web"), "app.test", "/");
    assert_eq!(first.status, 200);
    let pinned = first.text();
    let sc = set_cookie(&first, "WHARFID").expect("a sticky cookie on the first response");
    // Insert mode: HttpOnly, SameSite=Lax, path /, Max-Age from ttl; no Secure
    // on plain HTTP.
    assert!(sc.contains("; Path=/") && sc.contains("; HttpOnly") && sc.contains("; SameSite=Lax"));
    assert!(
        sc.contains("; Max-Age=3600") && !sc.contains("Secure"),
        "{sc}"
    );
    assert_eq!(first.header("cache-control"), Some("private"));
    let token = pair(sc).trim_start_matches("WHARFID=");
    assert_eq!(token.len(), 16);
    // The token names no address.
    for b in &bs {
        assert!(!sc.contains(&b.addr.port().to_string()) || !sc.contains("127.0.0.1"));
    }
    for _ in 0..30 {
        let r = get_with(
            w.ep("web"),
            "app.test",
            "/",
            &format!("Cookie: app=1; {}; z=2\r\n", pair(sc)),
        );
        assert_eq!(r.text(), pinned);
        // Already pinned there: no new cookie.
        assert!(set_cookie(&r, "WHARFID").is_none());
    }
    // The application saw its own cookies, never Wharf's.
    assert_eq!(cookie_seen_by(&bs, &pinned).as_deref(), Some("app=1; z=2"));
    // /api/routes says what is enforced.
    let r = w.api_routes();
    let route = r
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "app")
        .unwrap();
    assert_eq!(route["sticky"], "cookie");
    assert_eq!(route["affinity"]["cookie"], "WHARFID");
    assert_eq!(route["affinity"]["mode"], "insert");
}

#[test]
fn prefix_cookie_round_trip_leaves_the_application_cookie_intact() {
    let bs = backends(3);
    let cfg = base_config()
        + SECRET
        + &named(
            "java",
            "java.test",
            &addrs(&bs),
            "sticky = { type = \"cookie\", cookie = \"JSESSIONID\", mode = \"prefix\" }",
        );
    let w = Wharf::start(&cfg);
    let login = get(
        w.ep("web"),
        "java.test",
        "/login?cookie=JSESSIONID&value=abc123",
    );
    assert_eq!(login.status, 200);
    let pinned = login.text();
    let sc = set_cookie(&login, "JSESSIONID").unwrap();
    // NAME=<token>~value, the application's attributes kept; no cookie of
    // Wharf's own; not cacheable by shared caches.
    let value = pair(sc).trim_start_matches("JSESSIONID=");
    let (token, app) = value.split_once('~').unwrap();
    assert_eq!((token.len(), app), (16, "abc123"));
    assert!(sc.ends_with("; Path=/; HttpOnly"), "{sc}");
    assert!(set_cookie(&login, "WHARFID").is_none());
    assert_eq!(login.header("cache-control"), Some("private"));
    for _ in 0..30 {
        let r = get_with(
            w.ep("web"),
            "java.test",
            "/",
            &format!("Cookie: {}\r\n", pair(sc)),
        );
        assert_eq!(r.text(), pinned);
        assert!(r
            .headers
            .iter()
            .all(|(k, _)| !k.eq_ignore_ascii_case("set-cookie")));
    }
    // The application sees exactly its own value.
    assert_eq!(
        cookie_seen_by(&bs, &pinned).as_deref(),
        Some("JSESSIONID=abc123")
    );
}

#[test]
fn replicas_with_one_secret_agree_and_a_restart_keeps_the_pin() {
    let bs = backends(4);
    let cfg =
        base_config() + SECRET + &named("app", "app.test", &addrs(&bs), "sticky = \"cookie\"");
    let one = Wharf::start(&cfg);
    let first = get(one.ep("web"), "app.test", "/");
    let cookie = pair(set_cookie(&first, "WHARFID").unwrap()).to_string();
    // Another replica (another process) honours the cookie the first set.
    let two = Wharf::start(&cfg);
    for _ in 0..20 {
        let r = get_with(
            two.ep("web"),
            "app.test",
            "/",
            &format!("Cookie: {cookie}\r\n"),
        );
        assert_eq!(r.text(), first.text());
        assert!(set_cookie(&r, "WHARFID").is_none());
    }
    // Without the shared secret, a replica does not know the token: it balances
    // and pins anew (never an error).
    let mut other = Wharf::start(
        &(base_config() + &named("app", "app.test", &addrs(&bs), "sticky = \"cookie\"")),
    );
    // The missing secret is logged.
    other.wait_log("replicas will disagree").unwrap();
    let r = get_with(
        other.ep("web"),
        "app.test",
        "/",
        &format!("Cookie: {cookie}\r\n"),
    );
    assert_eq!(r.status, 200);
    assert_ne!(pair(set_cookie(&r, "WHARFID").unwrap()), cookie);
}

#[test]
fn a_killed_backend_repins_in_the_same_request_and_tampered_cookies_are_ignored() {
    let mut bs: Vec<CtlBackend> = (0..3)
        .map(|i| CtlBackend::start(&format!("c{i}")))
        .collect();
    let list: Vec<SocketAddr> = bs.iter().map(|b| b.addr).collect();
    let cfg = base_config() + SECRET + &named("app", "app.test", &list, "sticky = \"cookie\"");
    let w = Wharf::start(&cfg);
    let first = get(w.ep("web"), "app.test", "/");
    let pinned = first.header("x-backend").unwrap().to_string();
    let cookie = pair(set_cookie(&first, "WHARFID").unwrap()).to_string();

    // Tampered, truncated, foreign or garbage: balanced and re-pinned, 200.
    let flipped = {
        let mut c = cookie.clone().into_bytes();
        let i = c.len() - 3;
        c[i] = if c[i] == b'A' { b'B' } else { b'A' };
        String::from_utf8(c).unwrap()
    };
    for bad in [
        flipped.as_str(),
        &cookie[..cookie.len() - 1],
        "WHARFID=AAAAAAAAAAAAAAAA",
        "WHARFID=%00%ff;;;==",
        "WHARFID=",
    ] {
        let r = get_with(w.ep("web"), "app.test", "/", &format!("Cookie: {bad}\r\n"));
        assert_eq!(r.status, 200, "{bad}");
        assert!(set_cookie(&r, "WHARFID").is_some(), "{bad}: re-pinned");
    }

    // The pinned backend dies: the next request gets another one and a new
    // cookie, with no error; the new cookie then holds.
    bs.iter_mut().find(|b| b.name == pinned).unwrap().kill();
    let mut errors = 0;
    let mut new_cookie = None;
    for _ in 0..20 {
        let c = new_cookie.clone().unwrap_or_else(|| cookie.clone());
        let r = get_with(w.ep("web"), "app.test", "/", &format!("Cookie: {c}\r\n"));
        if r.status != 200 {
            errors += 1;
            continue;
        }
        assert_ne!(r.header("x-backend"), Some(pinned.as_str()));
        if let Some(sc) = set_cookie(&r, "WHARFID") {
            assert!(new_cookie.is_none(), "re-pinned once, then it holds");
            new_cookie = Some(pair(sc).to_string());
        }
    }
    assert_eq!(errors, 0);
    assert!(new_cookie.is_some());
}

/// A connection from a given loopback address (127.0.0.0/8 is all local).
fn get_from(src: IpAddr, addr: SocketAddr, host: &str) -> RawResponse {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.bind(&SocketAddr::new(src, 0).into()).unwrap();
    socket.connect(&addr.into()).unwrap();
    let mut s: TcpStream = socket.into();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes())
        .unwrap();
    read_response(&mut s)
}

#[test]
fn source_stickiness_is_stable_per_client_and_spreads_clients() {
    let bs = backends(4);
    let cfg = base_config()
        + &named(
            "src",
            "src.test",
            &addrs(&bs),
            "sticky = { type = \"source\", ttl = \"3h\" }",
        );
    let w = Wharf::start(&cfg);
    let one: IpAddr = "127.0.0.2".parse().unwrap();
    let first = get_from(one, w.ep("web"), "src.test").text();
    for _ in 0..100 {
        assert_eq!(get_from(one, w.ep("web"), "src.test").text(), first);
    }
    let mut by_client = BTreeMap::new();
    for i in 3..40u8 {
        let ip = IpAddr::from([127, 0, 0, i]);
        by_client.insert(i, get_from(ip, w.ep("web"), "src.test").text());
    }
    let spread: BTreeSet<_> = by_client.values().collect();
    assert!(spread.len() >= 3, "clients reached {spread:?}");
    // Each client stays where it was bound.
    for (i, b) in &by_client {
        assert_eq!(
            &get_from(IpAddr::from([127, 0, 0, *i]), w.ep("web"), "src.test").text(),
            b
        );
    }
    let r = w.api_routes();
    let route = r
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "src")
        .unwrap();
    assert_eq!(route["sticky"], "source");
    assert_eq!(route["affinity"]["bindings"], 38);
    // No cookie on a source route.
    assert!(set_cookie(&get(w.ep("web"), "src.test", "/"), "WHARFID").is_none());
}

#[test]
fn a_burst_over_the_rate_gets_429_with_retry_after_and_refills() {
    let bs = backends(1);
    let cfg = base_config()
        + &named(
            "rl",
            "rl.test",
            &addrs(&bs),
            "ratelimit = { rate = \"5/s\", burst = 5 }",
        )
        + &named(
            "keyed",
            "keyed.test",
            &addrs(&bs),
            "ratelimit = { rate = \"1/m\", burst = 1, key = \"header:X-Api-Key\" }",
        );
    let w = Wharf::start(&cfg);
    let started = Instant::now();
    let statuses: Vec<RawResponse> = (0..20).map(|_| get(w.ep("web"), "rl.test", "/")).collect();
    let ok = statuses.iter().filter(|r| r.status == 200).count();
    // 5 at once, plus one more if the burst took longer than 200 ms.
    let extra = (started.elapsed().as_millis() / 200) as usize;
    assert!((5..=5 + extra).contains(&ok), "{ok} passed");
    for r in statuses.iter().filter(|r| r.status != 200) {
        assert_eq!(r.status, 429);
        let after: u64 = r.header("retry-after").unwrap().parse().unwrap();
        assert_eq!(after, 1);
        assert!(r.text().contains("429"));
    }
    let limited = (20 - ok) as f64;
    assert_eq!(
        w.metric("wharf_ratelimited_total{route=\"rl\"}"),
        Some(limited)
    );
    // Refused requests do not spend the budget: within about a second one passes.
    let waited = wait_until("the bucket to refill", Duration::from_secs(3), || {
        get(w.ep("web"), "rl.test", "/").status == 200
    });
    assert!(waited <= Duration::from_millis(1200), "{waited:?}");

    // header:NAME keys: each value has its own budget.
    let key = |k: &str| {
        get_with(
            w.ep("web"),
            "keyed.test",
            "/",
            &format!("X-Api-Key: {k}\r\n"),
        )
    };
    assert_eq!(key("a").status, 200);
    let refused = key("a");
    assert_eq!(refused.status, 429);
    assert_eq!(refused.header("retry-after"), Some("60"));
    assert_eq!(key("b").status, 200);
    let r = w.api_routes();
    let route = r
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "keyed")
        .unwrap();
    assert_eq!(route["ratelimit"]["rate"], "1/m");
    assert_eq!(route["ratelimit"]["key"], "header:x-api-key");
    assert_eq!(route["ratelimit"]["scope"], "replica");
}

#[test]
fn websocket_upgrades_and_h2_streams_are_pinned() {
    let bs = backends(3);
    let cfg = base_config() + SECRET + &named("ws", "ws.test", &addrs(&bs), "sticky = \"cookie\"");
    let w = Wharf::start(&cfg);
    let first = get(w.ep("web"), "ws.test", "/");
    let cookie = pair(set_cookie(&first, "WHARFID").unwrap()).to_string();
    let pinned = first.text();
    // The upgrade request goes to the pinned backend.
    let mut s = TcpStream::connect(w.ep("web")).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(
        format!(
            "GET /upgrade HTTP/1.1\r\nHost: ws.test\r\nConnection: upgrade\r\nUpgrade: echo\r\n\
             Cookie: {cookie}\r\n\r\n"
        )
        .as_bytes(),
    )
    .unwrap();
    let r = read_response(&mut s);
    assert_eq!(r.status, 101);
    assert_eq!(r.header("x-backend"), Some(pinned.as_str()));
    // An upgrade without a cookie is pinned by its 101.
    let mut s = TcpStream::connect(w.ep("web")).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(
        b"GET /upgrade HTTP/1.1\r\nHost: ws.test\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n",
    )
    .unwrap();
    let r = read_response(&mut s);
    assert_eq!(r.status, 101);
    assert!(set_cookie(&r, "WHARFID").is_some());

    // h2c: every stream of one connection carries the cookie and is pinned.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let seen: Vec<String> = rt.block_on(async {
        let io = tokio::net::TcpStream::connect(w.ep("web")).await.unwrap();
        let (mut send, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(io),
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        let mut out = Vec::new();
        for _ in 0..10 {
            let req = hyper::Request::get("http://ws.test/")
                .header("cookie", cookie.as_str())
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap();
            let resp = send.send_request(req).await.unwrap();
            assert!(resp.headers().get("set-cookie").is_none());
            out.push(resp.headers()["x-backend"].to_str().unwrap().to_string());
        }
        out
    });
    assert!(seen.iter().all(|b| *b == pinned), "{seen:?}");
}
