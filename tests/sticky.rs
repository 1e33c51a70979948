//! End-to-end tests of session affinity (insert and prefix cookies, source
//! bindings) and rate limits: the real binary against real backends on
//! loopback, every port chosen by the kernel, every wait a readiness wait.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::docker::{poll_until, Engine};
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
    // The token names no address: it is not the address in any encoding the
    // 16 characters could hold in clear.
    for b in &bs {
        assert!(!token.contains(&b.addr.port().to_string()), "{token}");
    }
    for _ in 0..30 {
        let r = get_with(
            w.ep("web"),
            "app.test",
            "/",
            &format!("Cookie: app=1; {}; z=2\r\n", pair(sc)),
        );
        assert_eq!(r.text(), pinned);
        // Already pinned there: with a ttl the same cookie is renewed (its
        // Max-Age slides), never another one.
        assert_eq!(set_cookie(&r, "WHARFID").map(pair), Some(pair(sc)));
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

    // The pinned backend dies: the very next request is answered by another
    // one and carries the new cookie (its connect failed and the retry went
    // elsewhere; without health checks the dead backend still counts as up),
    // so the client is not sent back to the dead backend on each request.
    bs.iter_mut().find(|b| b.name == pinned).unwrap().kill();
    let retries = || {
        w.metric("wharf_retries_total{route=\"app\"}")
            .unwrap_or(0.0)
    };
    let before = retries();
    let r = get_with(
        w.ep("web"),
        "app.test",
        "/",
        &format!("Cookie: {cookie}\r\n"),
    );
    assert_eq!(r.status, 200);
    let moved_to = r.header("x-backend").unwrap().to_string();
    assert_ne!(moved_to, pinned);
    let sc = set_cookie(&r, "WHARFID").expect("re-pinned in the first response after the kill");
    let new_cookie = pair(sc).to_string();
    assert_ne!(new_cookie, cookie);
    assert_eq!(
        retries(),
        before + 1.0,
        "one failed attempt, then the retry"
    );
    // The new cookie names the backend that answered: every later request
    // goes there directly (no failed attempt, no retry) and is not re-pinned.
    for _ in 0..20 {
        let r = get_with(
            w.ep("web"),
            "app.test",
            "/",
            &format!("Cookie: {new_cookie}\r\n"),
        );
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-backend"), Some(moved_to.as_str()));
        assert!(set_cookie(&r, "WHARFID").is_none(), "{r:?}");
    }
    assert_eq!(retries(), before + 1.0, "the new pin is served directly");
}

#[test]
fn a_full_pinned_backend_repins_in_the_same_request() {
    let bs = backends(2);
    let cfg = base_config()
        + SECRET
        + &named(
            "mc",
            "mc.test",
            &addrs(&bs),
            "sticky = \"cookie\"\nmaxconn = { limit = 1, queue = 4, timeout = \"10s\" }",
        );
    let w = Wharf::start(&cfg);
    let first = get(w.ep("web"), "mc.test", "/");
    let pinned = first.text();
    let cookie = pair(set_cookie(&first, "WHARFID").unwrap()).to_string();
    let p = bs.iter().find(|b| b.name == pinned).unwrap();
    // Another request of the session holds the pinned backend's only slot.
    let (web, c) = (w.ep("web"), cookie.clone());
    let hold = std::thread::spawn(move || {
        get_with(web, "mc.test", "/stream", &format!("Cookie: {c}\r\n"))
    });
    wait_notified(&p.started());
    // Full: served by the other backend at once, and re-pinned there.
    let r = get_with(
        w.ep("web"),
        "mc.test",
        "/",
        &format!("Cookie: {cookie}\r\n"),
    );
    assert_eq!(r.status, 200);
    let moved_to = r.text();
    assert_ne!(moved_to, pinned);
    let sc = set_cookie(&r, "WHARFID").expect("re-pinned in the response of the full pin");
    let new_cookie = pair(sc).to_string();
    assert_ne!(new_cookie, cookie);
    p.release();
    let held = hold.join().unwrap();
    assert_eq!(
        (held.status, held.header("x-backend")),
        (200, Some(pinned.as_str()))
    );
    // The new pin holds, with room on both backends again.
    for _ in 0..10 {
        let r = get_with(
            w.ep("web"),
            "mc.test",
            "/",
            &format!("Cookie: {new_cookie}\r\n"),
        );
        assert_eq!(r.text(), moved_to);
        assert!(set_cookie(&r, "WHARFID").is_none(), "{r:?}");
    }
}

/// A connection from a given loopback address (127.0.0.0/8 is all local).
fn get_from(src: IpAddr, addr: SocketAddr, host: &str) -> RawResponse {
    get_path_from(src, addr, host, "/")
}

fn get_path_from(src: IpAddr, addr: SocketAddr, host: &str, path: &str) -> RawResponse {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.bind(&SocketAddr::new(src, 0).into()).unwrap();
    socket.connect(&addr.into()).unwrap();
    let mut s: TcpStream = socket.into();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .unwrap();
    read_response(&mut s)
}

/// The same binding when the response needs no header rewriting: the
/// engine writes it from the borrowed fields (the backend's `/` lists a field
/// in `Connection`, which takes the header-map path; `/slow` does not).
#[test]
fn source_stickiness_binds_on_the_engine_fast_path() {
    let bs = backends(4);
    let w = source_sticky(&bs);
    for i in 2..12u8 {
        let ip = IpAddr::from([127, 0, 0, i]);
        let r = get_path_from(ip, w.ep("web"), "src.test", "/slow?ms=0");
        assert_eq!(r.status, 200);
    }
    assert_eq!(w.api_route("src")["affinity"]["bindings"], 10);
}

/// Wharf with one route `src` (host `src.test`) over `bs`, sticky by client address.
fn source_sticky(bs: &[Backend]) -> Wharf {
    Wharf::start(
        &(base_config()
            + &named(
                "src",
                "src.test",
                &addrs(bs),
                "sticky = { type = \"source\", ttl = \"3h\" }",
            )),
    )
}

#[test]
fn source_stickiness_is_stable_per_client_and_spreads_clients() {
    let bs = backends(4);
    let w = source_sticky(&bs);
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
    let route = w.api_route("src");
    assert_eq!(route["sticky"], "source");
    assert_eq!(route["affinity"]["bindings"], 38);
    // No cookie on a source route.
    assert!(set_cookie(&get(w.ep("web"), "src.test", "/"), "WHARFID").is_none());
}

/// The client address that rate limits and source stickiness key on comes from
/// `X-Forwarded-For` only when the peer is in `forwarded_trusted`, and from the
/// PROXY protocol header (which is also what `forwarded_trusted` is tested
/// against).
#[test]
fn limits_and_bindings_key_on_the_forwarded_or_proxied_client_address() {
    let bs = backends(4);
    // `web` trusts loopback's X-Forwarded-For; `direct` trusts nobody; `pp`
    // takes PROXY headers from loopback and trusts X-Forwarded-For from the
    // balancers of 10.0.0.0/8 that the PROXY header names.
    let cfg = base_config().replace(
        "[admin]",
        "forwarded_trusted = [\"127.0.0.0/8\"]\n\n[entrypoints.direct]\naddress = \
         \"127.0.0.1:0\"\n\n[entrypoints.pp]\naddress = \"127.0.0.1:0\"\n\
         proxy_protocol = { trusted = [\"127.0.0.1\"] }\nforwarded_trusted = [\"10.0.0.0/8\"]\n\n\
         [admin]",
    ) + &named(
        "rl",
        "rl.test",
        &addrs(&bs[..1]),
        "ratelimit = { rate = \"1/m\", burst = 1 }",
    ) + &named(
        "src",
        "src.test",
        &addrs(&bs),
        "sticky = { type = \"source\", ttl = \"3h\" }",
    );
    let w = Wharf::start(&cfg);
    let xff = |ep: &str, host: &str, client: &str| {
        get_with(
            w.ep(ep),
            host,
            "/",
            &format!("X-Forwarded-For: {client}\r\n"),
        )
    };
    let proxied = |host: &str, src: &str, headers: &str| {
        raw(
            w.ep("pp"),
            format!(
                "PROXY TCP4 {src} 127.0.0.1 40000 80\r\nGET / HTTP/1.1\r\nHost: {host}\r\n\
                 {headers}Connection: close\r\n\r\n"
            )
            .as_bytes(),
        )
    };

    // A trusted peer: each forwarded client has its own budget of one, though
    // every request comes from 127.0.0.1.
    assert_eq!(xff("web", "rl.test", "198.51.100.1").status, 200);
    let refused = xff("web", "rl.test", "198.51.100.1");
    assert_eq!(refused.status, 429);
    assert_eq!(refused.header("retry-after"), Some("60"));
    assert_eq!(xff("web", "rl.test", "198.51.100.2").status, 200);
    // Only the last entry counts: the one the trusted peer wrote.
    assert_eq!(
        xff("web", "rl.test", "203.0.113.50, 198.51.100.3").status,
        200
    );
    assert_eq!(xff("web", "rl.test", "198.51.100.3").status, 429);
    assert_eq!(
        xff("web", "rl.test", "198.51.100.3, 203.0.113.50").status,
        200
    );

    // An untrusted peer's X-Forwarded-For is ignored: 127.0.0.1 itself is the
    // client, whatever the header says.
    assert_eq!(xff("direct", "rl.test", "198.51.100.9").status, 200);
    assert_eq!(xff("direct", "rl.test", "198.51.100.10").status, 429);

    // PROXY protocol: the address in the header is the client.
    assert_eq!(proxied("rl.test", "192.0.2.77", "").status, 200);
    assert_eq!(proxied("rl.test", "192.0.2.77", "").status, 429);
    // Its X-Forwarded-For is not trusted: 192.0.2.77 is no balancer of 10/8.
    assert_eq!(
        proxied(
            "rl.test",
            "192.0.2.77",
            "X-Forwarded-For: 198.51.100.20\r\n"
        )
        .status,
        429
    );
    // A balancer of 10/8 named by the PROXY header is trusted: the forwarded
    // client counts.
    let lb = "X-Forwarded-For: 198.51.100.20\r\n";
    assert_eq!(proxied("rl.test", "10.1.2.3", lb).status, 200);
    assert_eq!(proxied("rl.test", "10.9.9.9", lb).status, 429);
    assert_eq!(w.metric("wharf_ratelimited_total{route=\"rl\"}"), Some(6.0));

    // Source stickiness binds the same addresses: twenty forwarded clients of
    // one trusted peer are twenty bindings, spread, and each stays put.
    let mut by_client = BTreeMap::new();
    for i in 1..=20 {
        let c = format!("198.51.100.{i}");
        by_client.insert(c.clone(), xff("web", "src.test", &c).text());
    }
    let spread: BTreeSet<_> = by_client.values().collect();
    assert!(spread.len() >= 2, "forwarded clients reached {spread:?}");
    for (c, b) in &by_client {
        for _ in 0..3 {
            assert_eq!(&xff("web", "src.test", c).text(), b);
        }
    }
    // Through PROXY: two more clients, and the untrusted peer is one more.
    let pp1 = proxied("src.test", "192.0.2.77", "").text();
    assert_eq!(proxied("src.test", "192.0.2.77", "").text(), pp1);
    proxied("src.test", "10.1.2.3", "X-Forwarded-For: 203.0.113.7\r\n");
    xff("direct", "src.test", "198.51.100.1");
    let r = w.api_routes();
    let route = r
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "src")
        .unwrap();
    assert_eq!(route["affinity"]["bindings"], 23, "{route:#}");
}

/// One GET over a new TLS connection (any certificate accepted) offering
/// `alpn`, with a `Cookie` field when `cookie` is not empty: the HTTP version
/// spoken and the response's `Set-Cookie` fields.
fn tls_get_cookies(
    addr: SocketAddr,
    host: &str,
    alpn: &[u8],
    cookie: &str,
) -> (hyper::Version, Vec<String>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let p = wharf_tls::provider();
        let mut cfg = rustls::ClientConfig::builder_with_provider(p.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(std::sync::Arc::new(common::tls::AnyCert(p)))
            .with_no_client_auth();
        cfg.alpn_protocols = vec![alpn.to_vec()];
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let s = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
            .connect(
                rustls::pki_types::ServerName::try_from(host.to_string()).unwrap(),
                tcp,
            )
            .await
            .unwrap();
        let io = hyper_util::rt::TokioIo::new(s);
        let mut req = hyper::Request::get(format!("https://{host}/"));
        if !cookie.is_empty() {
            req = req.header("cookie", cookie);
        }
        let resp = if alpn == b"h2" {
            let (mut send, conn) =
                hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                    .await
                    .unwrap();
            tokio::spawn(conn);
            let req = req
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap();
            send.send_request(req).await.unwrap()
        } else {
            let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(conn);
            let req = req
                .uri("/")
                .header("host", host)
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap();
            send.send_request(req).await.unwrap()
        };
        assert_eq!(resp.status(), 200);
        let set = resp
            .headers()
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect();
        (resp.version(), set)
    })
}

#[test]
fn the_insert_cookie_is_secure_over_tls_only() {
    let bs = backends(3);
    let cfg = base_config().replace(
        "[admin]",
        "[entrypoints.websecure]\naddress = \"127.0.0.1:0\"\ntls = true\n\n[admin]",
    ) + SECRET
        + &named("app", "app.test", &addrs(&bs), "sticky = \"cookie\"");
    let w = Wharf::start(&cfg);
    let tls = w.ep("websecure");
    for (alpn, version) in [
        (&b"http/1.1"[..], hyper::Version::HTTP_11),
        (&b"h2"[..], hyper::Version::HTTP_2),
    ] {
        let (v, set) = tls_get_cookies(tls, "app.test", alpn, "");
        assert_eq!(v, version);
        let [sc] = &set[..] else {
            panic!("one Set-Cookie: {set:?}")
        };
        assert!(sc.starts_with("WHARFID="), "{sc}");
        assert!(
            sc.ends_with("; Path=/; HttpOnly; SameSite=Lax; Secure"),
            "{version:?}: {sc}"
        );
        // Pinned: no new cookie over TLS either.
        let (_, again) = tls_get_cookies(tls, "app.test", alpn, pair(sc));
        assert!(again.is_empty(), "{again:?}");
    }
    // The same route over plain HTTP: the same cookie, without Secure.
    let plain = get(w.ep("web"), "app.test", "/");
    let sc = set_cookie(&plain, "WHARFID").unwrap();
    assert!(
        sc.ends_with("; SameSite=Lax") && !sc.contains("Secure"),
        "{sc}"
    );
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
        let mut send = common::h2c(w.ep("web")).await;
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

// ---------------------------------------------------------------------------
// Traefik labels on real containers (issue 9): Wharf on the host in
// `[docker] mode = "containers"`, labelled busybox containers on a user-defined
// bridge network (tests/common/docker.rs: no registry, `--dns 127.0.0.1`, only
// loopback and our own containers' bridge addresses receive traffic).
//
// One container is one Wharf workload with its own hosts: several containers
// behind one route is issue 11, so each sticky route here has one backend, and
// the test checks the cookie itself (name, attributes, kept, replaced when
// tampered, never seen by the application) rather than the spread.

/// `[docker] mode = "containers"` on `net`, Traefik labels read, and a sticky
/// secret.
fn traefik_containers_config(net: &str) -> String {
    base_config().replace(
        "[docker]\nmode = \"off\"\n",
        &format!(
            "[docker]\nmode = \"containers\"\nnetwork = \"{net}\"\npoll_interval = \"500ms\"\n\
             traefik_labels = true\n"
        ),
    ) + SECRET
}

/// The `/api/routes` entry whose hosts include `host`.
fn route_with_host(w: &Wharf, host: &str) -> Option<serde_json::Value> {
    w.api_routes()
        .as_array()?
        .iter()
        .find(|r| {
            r["hosts"]
                .as_array()
                .is_some_and(|h| h.iter().any(|x| x == host))
        })
        .cloned()
}

/// `container`'s address on `net`, port 80 (busybox httpd).
fn bridge_addr(net: &str, container: &str) -> SocketAddr {
    let ip = common::docker::docker(&[
        "inspect",
        "--format",
        &format!("{{{{(index .NetworkSettings.Networks \"{net}\").IPAddress}}}}"),
        container,
    ]);
    format!("{ip}:80").parse().unwrap()
}

/// Readiness without spending a rate limit's budget: the container's httpd
/// answers on its bridge address (`/`: busybox passes a CGI's bare-LF headers
/// through, which `try_get` does not parse), then Wharf lists the route with its one
/// backend (at that address).
fn wait_routed(w: &Wharf, net: &str, container: &str, host: &str) -> serde_json::Value {
    let addr = bridge_addr(net, container);
    poll_until(addr, host, "/", Duration::from_secs(10), |r| {
        r.status == 200
    })
    .unwrap();
    wait_until(
        &format!("{host} in /api/routes"),
        Duration::from_secs(10),
        || {
            route_with_host(w, host).is_some_and(|r| {
                r["backends"].as_array().map_or(0, |b| b.len()) == 1
                    && r["backends"][0]["address"] == addr.to_string()
            })
        },
    );
    route_with_host(w, host).unwrap()
}

#[test]
fn traefik_sticky_and_ratelimit_labels_are_enforced_on_containers() {
    let t0 = Instant::now();
    let e = Engine::new("tkst");
    let net = e.bridge("net");
    let image = e.backend_image();
    let mut w = Wharf::start(&traefik_containers_config(&net));
    w.wait_log("docker: connected and listed").unwrap();
    let web = w.ep("web");
    let h1 = format!("v1.{}.test", e.prefix);
    let h2 = format!("v2.{}.test", e.prefix);
    let hk = format!("k.{}.test", e.prefix);

    // All three at once; each is waited for before it is used.
    let v1 = e.run(
        "v1",
        &[
            "--network",
            &net,
            "--hostname",
            "backend-v1",
            "--label",
            "traefik.enable=true",
            "--label",
            &format!("traefik.frontend.rule=Host:{h1}"),
            "--label",
            "traefik.port=80",
            "--label",
            "traefik.backend.loadbalancer.stickiness=true",
            "--label",
            "traefik.backend.loadbalancer.stickiness.cookieName=V1ID",
            &image,
        ],
    );
    let v2 = e.run(
        "v2",
        &[
            "--network",
            &net,
            "--hostname",
            "backend-v2",
            "--label",
            "traefik.enable=true",
            "--label",
            &format!("traefik.http.routers.r.rule=Host(`{h2}`)"),
            "--label",
            "traefik.http.routers.r.middlewares=rl",
            "--label",
            "traefik.http.services.s.loadbalancer.server.port=80",
            "--label",
            "traefik.http.services.s.loadbalancer.sticky.cookie.name=V2ID",
            "--label",
            "traefik.http.services.s.loadbalancer.sticky.cookie.maxage=600",
            "--label",
            "traefik.http.middlewares.rl.ratelimit.average=5",
            "--label",
            "traefik.http.middlewares.rl.ratelimit.burst=5",
            "--label",
            "traefik.http.middlewares.rl.ratelimit.period=1s",
            &image,
        ],
    );
    let k = e.run(
        "k",
        &[
            "--network",
            &net,
            "--hostname",
            "backend-k",
            "--label",
            "traefik.enable=true",
            "--label",
            &format!("traefik.http.routers.k.rule=Host(`{hk}`)"),
            "--label",
            "traefik.http.routers.k.middlewares=k",
            "--label",
            "traefik.http.services.ks.loadbalancer.server.port=80",
            "--label",
            "traefik.http.middlewares.k.ratelimit.average=1",
            "--label",
            "traefik.http.middlewares.k.ratelimit.period=1m",
            "--label",
            "traefik.http.middlewares.k.ratelimit.sourcecriterion.requestheadername=X-Key",
            &image,
        ],
    );

    // --- v1: the stickiness cookie, named by the label.
    // A CGI that shows the Cookie header the application received.
    common::docker::docker(&[
        "exec",
        &v1,
        "/bin/busybox",
        "sh",
        "-c",
        r#"printf '%s\n' '#!/bin/sh' 'echo Content-Type: text/plain' 'echo' 'echo "cookie=$HTTP_COOKIE"' > /www/cgi-bin/cookie && /bin/busybox chmod 755 /www/cgi-bin/cookie"#,
    ]);
    let r1 = wait_routed(&w, &net, &v1, &h1);
    assert_eq!(r1["sticky"], "cookie", "{r1:#}");
    assert_eq!(r1["affinity"]["cookie"], "V1ID", "{r1:#}");
    assert_eq!(r1["affinity"]["mode"], "insert", "{r1:#}");
    assert!(r1["ratelimit"].is_null(), "{r1:#}");
    let first = get(web, &h1, "/cgi-bin/id");
    assert_eq!(first.status, 200);
    assert_eq!(first.text().trim(), "backend-v1");
    let sc = set_cookie(&first, "V1ID").expect("a V1ID cookie on the first response");
    assert!(
        sc.contains("; Path=/") && sc.contains("; HttpOnly") && sc.contains("; SameSite=Lax"),
        "{sc}"
    );
    // No maxAge label: a session cookie; plain HTTP: not Secure.
    assert!(!sc.contains("Max-Age") && !sc.contains("Secure"), "{sc}");
    let cookie = pair(sc).to_string();
    assert_eq!(cookie.trim_start_matches("V1ID=").len(), 16, "{cookie}");
    for _ in 0..20 {
        let r = get_with(
            web,
            &h1,
            "/cgi-bin/id",
            &format!("Cookie: app=1; {cookie}\r\n"),
        );
        assert_eq!(r.status, 200);
        assert_eq!(r.text().trim(), "backend-v1");
        assert!(set_cookie(&r, "V1ID").is_none(), "already pinned: {r:?}");
    }
    // The application sees its own cookie, never Wharf's.
    let seen = get_with(
        web,
        &h1,
        "/cgi-bin/cookie",
        &format!("Cookie: app=1; {cookie}; z=2\r\n"),
    );
    assert_eq!(seen.text().trim(), "cookie=app=1; z=2");
    // Tampered: balanced and pinned anew (200, a new Set-Cookie), to the same
    // backend identity, so to the same token.
    let mut bad = cookie.clone().into_bytes();
    let i = bad.len() - 2;
    bad[i] = if bad[i] == b'A' { b'B' } else { b'A' };
    let bad = String::from_utf8(bad).unwrap();
    let r = get_with(web, &h1, "/cgi-bin/id", &format!("Cookie: {bad}\r\n"));
    assert_eq!(r.status, 200);
    assert_eq!(r.text().trim(), "backend-v1");
    let renewed = set_cookie(&r, "V1ID").expect("a tampered cookie is replaced");
    assert_eq!(pair(renewed), cookie, "one backend, one token");

    // --- v2: sticky cookie with maxAge, and a ratelimit middleware.
    let r2 = wait_routed(&w, &net, &v2, &h2);
    let route2 = r2["name"].as_str().unwrap().to_string();
    let started = Instant::now();
    let burst: Vec<RawResponse> = (0..20).map(|_| get(web, &h2, "/cgi-bin/id")).collect();
    let took = started.elapsed();
    let ok: Vec<&RawResponse> = burst.iter().filter(|r| r.status == 200).collect();
    // 5 at once, plus one more per 200 ms the burst took.
    let extra = (took.as_millis() / 200) as usize;
    assert!(
        (5..=5 + extra).contains(&ok.len()),
        "{} passed in {took:?}",
        ok.len()
    );
    for r in &ok {
        assert_eq!(r.text().trim(), "backend-v2");
        let sc = set_cookie(r, "V2ID").expect("a V2ID cookie");
        assert!(
            sc.contains("; Max-Age=600")
                && sc.contains("; HttpOnly")
                && sc.contains("; SameSite=Lax"),
            "{sc}"
        );
        assert_eq!(pair(sc).trim_start_matches("V2ID=").len(), 16, "{sc}");
    }
    for r in burst.iter().filter(|r| r.status != 200) {
        assert_eq!(r.status, 429, "{r:?}");
        assert_eq!(r.header("retry-after"), Some("1"), "{r:?}");
    }
    let limited = 20 - ok.len();
    let r2 = route_with_host(&w, &h2).unwrap();
    assert_eq!(r2["sticky"], "cookie", "{r2:#}");
    assert_eq!(r2["affinity"]["cookie"], "V2ID", "{r2:#}");
    assert_eq!(r2["affinity"]["max_age_s"], 600, "{r2:#}");
    assert_eq!(r2["ratelimit"]["rate"], "5/s", "{r2:#}");
    assert_eq!(r2["ratelimit"]["burst"], 5, "{r2:#}");
    assert_eq!(r2["ratelimit"]["key"], "source", "{r2:#}");
    assert_eq!(r2["ratelimit"]["scope"], "replica", "{r2:#}");
    assert_eq!(r2["ratelimit"]["limited"], limited, "{r2:#}");
    assert_eq!(
        w.metric(&format!("wharf_ratelimited_total{{route=\"{route2}\"}}")),
        Some(limited as f64)
    );
    // Within about a second the bucket has room again; the cookie then holds.
    let v2_cookie = pair(set_cookie(ok[0], "V2ID").unwrap()).to_string();
    let mut after = None;
    let waited = wait_until("the v2 bucket to refill", Duration::from_secs(3), || {
        let r = get_with(web, &h2, "/cgi-bin/id", &format!("Cookie: {v2_cookie}\r\n"));
        let pass = r.status == 200;
        after = Some(r);
        pass
    });
    assert!(waited <= Duration::from_millis(1200), "{waited:?}");
    let after = after.unwrap();
    assert_eq!(after.text().trim(), "backend-v2");
    // maxage: the same cookie renewed, never another one.
    assert_eq!(
        set_cookie(&after, "V2ID").map(pair),
        Some(v2_cookie.as_str()),
        "{after:?}"
    );

    // --- sourceCriterion.requestHeaderName: one budget per header value.
    let rk = wait_routed(&w, &net, &k, &hk);
    assert_eq!(rk["ratelimit"]["rate"], "1/m", "{rk:#}");
    assert_eq!(rk["ratelimit"]["burst"], 1, "{rk:#}");
    assert_eq!(rk["ratelimit"]["key"], "header:x-key", "{rk:#}");
    assert_eq!(rk["sticky"], "none", "{rk:#}");
    let key = |v: &str| get_with(web, &hk, "/", &format!("X-Key: {v}\r\n"));
    assert_eq!(key("a").status, 200);
    let refused = key("a");
    assert_eq!(refused.status, 429);
    assert_eq!(refused.header("retry-after"), Some("60"));
    assert_eq!(key("b").status, 200);

    // These labels are all supported: no warning or error names the containers.
    let errs = w.api("/api/errors");
    for err in errs.as_array().into_iter().flatten() {
        let text = err.to_string();
        assert!(
            ![&v1, &v2, &k].iter().any(|c| text.contains(c.as_str())),
            "{err:#}"
        );
    }
    eprintln!(
        "traefik sticky/ratelimit labels on containers: {:?}",
        t0.elapsed()
    );
}
