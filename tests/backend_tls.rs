//! End-to-end tests of TLS to backends (`scheme = "https"`, issue 14): the real
//! binary against Debian's nginx (HTTP/2 and HTTP/1.1-only listeners, client
//! certificates, several server blocks chosen by SNI) and a Rust TLS backend
//! (WebSocket), all with certificates signed by a test CA made with rcgen, every
//! port chosen by the kernel, every wait a readiness wait, every process killed
//! on drop. nginx's access log says what the backend saw: the protocol, the
//! connection serial (`$connection`), whether the TLS session was resumed, the
//! SNI and the client certificate's subject.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// A test CA the routes trust, and the files of certificates it signs.
struct Pki {
    dir: TempDir,
    ca: TestCa,
    /// The CA's certificate: the routes' `backend_tls.ca`.
    ca_file: PathBuf,
}

/// A certificate and key written to files (nginx and Wharf read files).
struct CertFiles {
    cert: PathBuf,
    key: PathBuf,
}

impl Pki {
    fn new(tag: &str) -> Pki {
        let dir = TempDir::new(tag);
        let ca = TestCa::new(&format!("wharf test CA {tag}"));
        let ca_file = write_file(&dir.0, "ca.pem", &ca.pem());
        Pki { dir, ca, ca_file }
    }

    fn files(&self, stem: &str, c: &CertPem) -> CertFiles {
        CertFiles {
            cert: write_file(&self.dir.0, &format!("{stem}.crt"), &c.cert),
            key: write_file(&self.dir.0, &format!("{stem}.key"), &c.key),
        }
    }

    /// A server certificate for `names`, signed by the test CA.
    fn server(&self, stem: &str, names: &[&str]) -> CertFiles {
        self.files(stem, &self.ca.server(names))
    }

    /// The certificate of another CA, which the routes do not trust.
    fn other_ca(&self) -> PathBuf {
        write_file(
            &self.dir.0,
            "other-ca.pem",
            &TestCa::new("some other CA").pem(),
        )
    }

    fn file(&self, name: &str, text: &str) -> PathBuf {
        write_file(&self.dir.0, name, text)
    }
}

/// An nginx `server` block on `listen` with `cert`, and `body` (locations).
fn server_block(listen: &str, names: &str, cert: &CertFiles, body: &str) -> String {
    format!(
        "server {{\n  listen {listen};\n  server_name {names};\n  ssl_certificate {};\n  \
         ssl_certificate_key {};\n  {body}\n}}\n",
        cert.cert.display(),
        cert.key.display()
    )
}

/// `location /` answering 200 with `text` (nginx variables allowed).
fn answer(text: &str) -> String {
    format!("location / {{ return 200 \"{text}\\n\"; }}")
}

/// A named `scheme = "https"` route with `backend_tls` = `tls` (an inline table's
/// inside, e.g. `ca = "..."`).
fn https_route(name: &str, host: &str, backends: &[SocketAddr], tls: &str) -> String {
    https_route_with(name, host, backends, tls, "")
}

/// [`https_route`] with more route keys.
fn https_route_with(
    name: &str,
    host: &str,
    backends: &[SocketAddr],
    tls: &str,
    extra: &str,
) -> String {
    route(
        host,
        "/",
        backends,
        &format!("name = \"{name}\"\nscheme = \"https\"\nbackend_tls = {{ {tls} }}\n{extra}"),
    )
}

/// `ca = "<path>"`.
fn ca(p: &Path) -> String {
    format!("ca = \"{}\"", p.display())
}

/// Distinct nginx connections among `hits`.
fn connections(hits: &[NginxHit]) -> BTreeSet<u64> {
    hits.iter().map(|h| h.connection).collect()
}

/// `n` GETs of `host` on one keep-alive client connection to `addr`, each
/// answered 200; `path(i)` is the i-th path.
fn keep_alive_gets(addr: SocketAddr, host: &str, n: usize, path: impl Fn(usize) -> String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    for i in 0..n {
        s.write_all(format!("GET {} HTTP/1.1\r\nHost: {host}\r\n\r\n", path(i)).as_bytes())
            .unwrap();
        let r = read_response(&mut s);
        assert_eq!(r.status, 200, "request {i} to {host}: {}", r.text());
    }
}

/// 1. Verified HTTPS to an nginx backend with HTTP/2 enabled: ALPN chooses h2,
///    the server name is the route's host by default, the client's host arrives
///    as `:authority`, and every request, sequential or concurrent, rides one
///    shared connection.
#[test]
fn verified_https_to_an_h2_backend_shares_one_connection() {
    let pki = Pki::new("btls-h2");
    let cert = pki.server("h2", &["h2.test"]);
    let ngx = Nginx::start(1, |p| {
        server_block(
            &format!("127.0.0.1:{} ssl http2", p[0]),
            "h2.test",
            &cert,
            &answer("$server_protocol sni=$ssl_server_name host=$host"),
        )
    });
    let backend = ngx.addr(0);
    let w = Wharf::start(
        &(base_config() + &https_route("h2", "h2.test", &[backend], &ca(&pki.ca_file))),
    );
    let web = w.ep("web");
    let r = get(web, "h2.test", "/h2/first");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "HTTP/2.0 sni=h2.test host=h2.test\n");
    for i in 0..19 {
        let r = get(web, "h2.test", &format!("/h2/seq/{i}"));
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let parallel: Vec<_> = (0..10)
        .map(|i| std::thread::spawn(move || get(web, "h2.test", &format!("/h2/par/{i}")).status))
        .collect();
    for t in parallel {
        assert_eq!(t.join().unwrap(), 200);
    }
    let hits = ngx.wait_hits(backend.port(), "/h2/", 30);
    assert_eq!(hits.len(), 30, "{hits:#?}");
    for h in &hits {
        assert_eq!(
            (
                h.protocol.as_str(),
                h.status,
                h.host.as_str(),
                h.sni.as_str()
            ),
            ("HTTP/2.0", 200, "h2.test", "h2.test"),
            "{h:?}"
        );
    }
    let conns = connections(&hits);
    eprintln!("h2: 30 requests over {} connection(s)", conns.len());
    assert_eq!(conns.len(), 1, "one shared HTTP/2 connection: {hits:#?}");

    let route = w.api_route("h2");
    assert_eq!(
        route["backend_tls"],
        serde_json::json!({ "server_name": "h2.test", "insecure": false }),
        "{route:#}"
    );
    assert_eq!(route["backends"][0]["scheme"], "https", "{route:#}");
}

/// 2. An HTTP/1.1-only nginx listener (no `http2`): HTTP/1.1 is used, 50
///    keep-alive requests reuse pooled connections; against a listener that
///    closes every connection after 10 requests, every new connection resumes
///    the TLS session (counted on the backend: `$ssl_session_reused`).
#[test]
fn http11_backend_is_pooled_and_reconnects_resume_the_session() {
    let pki = Pki::new("btls-h1");
    let cert = pki.server("h1", &["h1.test", "short.test"]);
    let ngx = Nginx::start(2, |p| {
        server_block(
            &format!("127.0.0.1:{} ssl", p[0]),
            "h1.test",
            &cert,
            &answer("$server_protocol"),
        ) + &server_block(
            &format!("127.0.0.1:{} ssl", p[1]),
            "short.test",
            &cert,
            &format!("keepalive_requests 10;\n  {}", answer("$server_protocol")),
        )
    });
    let (long, short) = (ngx.addr(0), ngx.addr(1));
    let w = Wharf::start(
        &(base_config()
            + &https_route("h1", "h1.test", &[long], &ca(&pki.ca_file))
            + &https_route("short", "short.test", &[short], &ca(&pki.ca_file))),
    );
    let web = w.ep("web");
    keep_alive_gets(web, "h1.test", 50, |i| format!("/h1/{i}"));
    keep_alive_gets(web, "short.test", 50, |i| format!("/short/{i}"));

    let hits = ngx.wait_hits(long.port(), "/h1/", 50);
    assert!(
        hits.iter()
            .all(|h| h.protocol == "HTTP/1.1" && h.status == 200),
        "{hits:#?}"
    );
    let conns = connections(&hits);
    eprintln!("http/1.1: 50 requests over {} connection(s)", conns.len());
    assert!(conns.len() <= 2, "pooled connections are reused: {conns:?}");

    // nginx closes each connection after 10 requests: 5 connections (one more
    // if a response end and the next checkout ever cross), the first a full
    // handshake, every later one resumed.
    let hits = ngx.wait_hits(short.port(), "/short/", 50);
    assert!(hits.iter().all(|h| h.protocol == "HTTP/1.1"), "{hits:#?}");
    let conns = connections(&hits);
    eprintln!(
        "keepalive_requests 10: 50 requests over {} connection(s)",
        conns.len()
    );
    assert!((5..=6).contains(&conns.len()), "{hits:#?}");
    let first = *conns.iter().next().unwrap();
    for h in &hits {
        assert_eq!(
            h.reused,
            h.connection != first,
            "only the first connection makes a full handshake: {h:?}"
        );
    }
}

/// 3. A backend certificate from a CA the route does not trust: 502, the reason
///    (UnknownIssuer) in the log once, nothing sent to the backend (in clear or
///    otherwise), and each failure counted by passive health: the tenth in a row
///    takes the backend down.
#[test]
fn untrusted_certificate_is_a_502_with_the_reason_and_counts_as_a_failure() {
    let pki = Pki::new("btls-wrongca");
    let cert = pki.server("bad", &["bad.test"]);
    let other = pki.other_ca();
    let ngx = Nginx::start(1, |p| {
        server_block(
            &format!("127.0.0.1:{} ssl http2", p[0]),
            "bad.test",
            &cert,
            &answer("reached"),
        )
    });
    let backend = ngx.addr(0);
    let w =
        Wharf::start(&(base_config() + &https_route("bad", "bad.test", &[backend], &ca(&other))));
    let web = w.ep("web");
    for i in 1..=9 {
        let r = get(web, "bad.test", "/");
        assert_eq!(r.status, 502, "request {i}: {}", r.text());
        assert!(!r.text().contains("127.0.0.1"), "no address revealed");
    }
    let line = w.wait_logs_for("backend TLS: no connection", backend, 1)[0].clone();
    let error = line["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("TLS handshake failed") && error.contains("UnknownIssuer"),
        "{line:#}"
    );
    assert!(
        line["server_name"]
            .as_str()
            .is_some_and(|s| s.contains("bad.test")),
        "{line:#}"
    );
    // Nine failures: still up. The tenth ejects it.
    assert_eq!(w.health_of("bad", backend), "up");
    assert_eq!(get(web, "bad.test", "/").status, 502);
    assert_eq!(w.health_of("bad", backend), "down");
    let view = w.api_backend("bad", backend);
    assert!(
        view["reason"].as_str().is_some_and(
            |r| r.contains("10 consecutive requests failed") && r.contains("UnknownIssuer")
        ),
        "{view:#}"
    );
    let down = w.wait_logs_for("backend down", backend, 1);
    assert_eq!(down[0]["route"], "bad", "{:#}", down[0]);
    // The handshake warning is rate-limited: one line for ten failures.
    assert_eq!(w.logs_for("backend TLS: no connection", backend).len(), 1);
    // No request reached nginx: not over TLS, and not in clear (nginx logs a
    // plain request on its TLS port as a 400).
    assert!(ngx.hits().is_empty(), "{:#?}", ngx.hits());
}

/// 4. `insecure = true`: an untrusted certificate for another name is accepted,
///    `/api/routes` shows it, and the log says so once per route, not again on
///    a reload.
#[test]
fn insecure_accepts_any_certificate_and_says_so_once() {
    let pki = Pki::new("btls-insecure");
    // Signed by a CA nobody trusts, for a name the route does not use.
    let stranger = TestCa::new("stranger");
    let cert = pki.files("elsewhere", &stranger.server(&["elsewhere.internal"]));
    let ngx = Nginx::start(1, |p| {
        server_block(
            &format!("127.0.0.1:{} ssl http2", p[0]),
            "elsewhere.internal",
            &cert,
            &answer("insecure sni=$ssl_server_name"),
        )
    });
    let backend = ngx.addr(0);
    let config =
        base_config() + &https_route("insecure", "insecure.test", &[backend], "insecure = true");
    let mut w = Wharf::start(&config);
    let r = get(w.ep("web"), "insecure.test", "/");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "insecure sni=insecure.test\n");
    let route = w.api_route("insecure");
    assert_eq!(
        route["backend_tls"],
        serde_json::json!({ "server_name": "insecure.test", "insecure": true }),
        "{route:#}"
    );
    let said = |w: &Wharf| -> Vec<serde_json::Value> {
        w.logs()
            .into_iter()
            .filter(|l| {
                l["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("backend_tls.insecure = true"))
            })
            .collect()
    };
    let lines = said(&w);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert_eq!(lines[0]["route"], "insecure", "{:#}", lines[0]);
    assert!(
        lines[0]["message"]
            .as_str()
            .unwrap()
            .contains("not verified"),
        "{:#}",
        lines[0]
    );
    w.reload(&config);
    assert_eq!(get(w.ep("web"), "insecure.test", "/").status, 200);
    assert_eq!(said(&w).len(), 1, "logged once per route: {:#?}", said(&w));
}

/// 5. A backend that requires a client certificate (nginx `ssl_verify_client
///    on`): with `client_cert`/`client_key` the request passes and nginx sees
///    the certificate's subject. Without one, nginx completes the TLS handshake
///    and refuses at the HTTP level with its own `400 No required SSL
///    certificate was sent`, which Wharf passes on as it is (a response from the
///    backend, not a connection failure).
#[test]
fn client_certificate_required_by_the_backend_is_presented() {
    let pki = Pki::new("btls-mtls");
    let cert = pki.server("srv", &["nocert.test", "mtls.test"]);
    let client = pki.files("client", &pki.ca.client("wharf-client"));
    let ca_file = pki.ca_file.clone();
    let ngx = Nginx::start(1, |p| {
        server_block(
            &format!("127.0.0.1:{} ssl http2", p[0]),
            "nocert.test mtls.test",
            &cert,
            &format!(
                "ssl_verify_client on;\n  ssl_client_certificate {};\n  {}",
                ca_file.display(),
                answer("dn=$ssl_client_s_dn")
            ),
        )
    });
    let backend = ngx.addr(0);
    let config = base_config()
        + &https_route("nocert", "nocert.test", &[backend], &ca(&pki.ca_file))
        + &https_route(
            "mtls",
            "mtls.test",
            &[backend],
            &format!(
                "{}, client_cert = \"{}\", client_key = \"{}\"",
                ca(&pki.ca_file),
                client.cert.display(),
                client.key.display()
            ),
        );
    let mut w = Wharf::start(&config);
    let web = w.ep("web");
    let r = get(web, "mtls.test", "/mtls/with");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "dn=CN=wharf-client\n");
    let r = get(web, "nocert.test", "/mtls/without");
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(
        r.text().contains("No required SSL certificate was sent"),
        "{}",
        r.text()
    );
    let hits = ngx.wait_hits(backend.port(), "/mtls/", 2);
    let by_uri = |u: &str| hits.iter().find(|h| h.uri == u).unwrap().clone();
    assert_eq!(by_uri("/mtls/with").client_dn, "CN=wharf-client");
    assert_eq!(by_uri("/mtls/with").status, 200);
    assert_eq!(by_uri("/mtls/without").client_dn, "-");
    assert_eq!(by_uri("/mtls/without").status, 400);

    // A renewed client certificate in the same files is presented after SIGHUP
    // (on a new connection: the policy changed with the files).
    pki.files("client", &pki.ca.client("wharf-client-renewed"));
    w.reload(&config);
    let r = get(web, "mtls.test", "/mtls/renewed");
    assert_eq!(
        (r.status, r.text()),
        (200, "dn=CN=wharf-client-renewed\n".into())
    );
}

/// 6. SNI: two routes to the same nginx port with different `server_name`s
///    reach two server blocks with different certificates (both signed by the
///    test CA, each valid for its own name only), each its own block, over
///    connections of their own.
#[test]
fn server_name_picks_the_backend_server_block() {
    let pki = Pki::new("btls-sni");
    let a = pki.server("a", &["a.internal"]);
    let b = pki.server("b", &["b.internal"]);
    let ngx = Nginx::start(1, |p| {
        let listen = format!("127.0.0.1:{} ssl http2", p[0]);
        server_block(
            &listen,
            "a.internal one.test",
            &a,
            &answer("A sni=$ssl_server_name"),
        ) + &server_block(
            &listen,
            "b.internal two.test",
            &b,
            &answer("B sni=$ssl_server_name"),
        )
    });
    let backend = ngx.addr(0);
    let tls = |name: &str| format!("server_name = \"{name}\", {}", ca(&pki.ca_file));
    let w = Wharf::start(
        &(base_config()
            + &https_route("one", "one.test", &[backend], &tls("a.internal"))
            + &https_route("two", "two.test", &[backend], &tls("b.internal"))),
    );
    let web = w.ep("web");
    for _ in 0..3 {
        let r = get(web, "one.test", "/sni/one");
        assert_eq!((r.status, r.text()), (200, "A sni=a.internal\n".into()));
        let r = get(web, "two.test", "/sni/two");
        assert_eq!((r.status, r.text()), (200, "B sni=b.internal\n".into()));
    }
    assert_eq!(
        w.api_route("one")["backend_tls"]["server_name"],
        "a.internal"
    );
    assert_eq!(
        w.api_route("two")["backend_tls"]["server_name"],
        "b.internal"
    );
    // Pooled per (backend, policy): the two routes never share a connection.
    let hits = ngx.wait_hits(backend.port(), "/sni/", 6);
    let of = |u: &str| -> Vec<NginxHit> { hits.iter().filter(|h| h.uri == u).cloned().collect() };
    let (one, two) = (connections(&of("/sni/one")), connections(&of("/sni/two")));
    assert!(one.is_disjoint(&two), "{hits:#?}");
}

/// 7. WebSocket (Upgrade) over an HTTPS backend that offers h2: requests go as
///    HTTP/2, the upgrade goes on a TLS connection of its own as HTTP/1.1, 101,
///    and bytes are echoed through the tunnel.
#[test]
fn websocket_upgrade_over_an_https_backend() {
    let pki = Pki::new("btls-ws");
    let b = Backend::start_tls("tlsb", &pki.ca.server(&["ws.internal"]));
    let w = Wharf::start(
        &(base_config()
            + &https_route(
                "ws",
                "ws.test",
                &[b.addr],
                &format!("server_name = \"ws.internal\", {}", ca(&pki.ca_file)),
            )),
    );
    let r = get(w.ep("web"), "ws.test", "/plain");
    assert_eq!((r.status, r.text()), (200, "tlsb".into()));
    let seen = b.last();
    assert_eq!(
        (seen.uri.as_str(), seen.version.as_str()),
        ("https://ws.test/plain", "HTTP/2.0"),
        "{seen:?}"
    );

    let mut s = TcpStream::connect(w.ep("web")).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(
        b"GET /upgrade HTTP/1.1\r\nHost: ws.test\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
    )
    .unwrap();
    let r = read_response(&mut s);
    assert_eq!(r.status, 101, "{}", r.text());
    assert_eq!(r.header("upgrade"), Some("echo"));
    let seen = b.last();
    assert_eq!(
        (seen.uri.as_str(), seen.version.as_str()),
        ("/upgrade", "HTTP/1.1"),
        "{seen:?}"
    );
    assert_eq!(seen.header("upgrade"), Some("echo"));
    assert_eq!(seen.header("host"), Some("ws.test"));
    for msg in [&b"hello over TLS"[..], b"and again"] {
        s.write_all(msg).unwrap();
        let mut back = vec![0u8; msg.len()];
        s.read_exact(&mut back).unwrap();
        assert_eq!(back, msg);
    }
}

/// 8. Health checks of an https route use its TLS settings: with the right CA
///    the check passes (HTTP/1.1, the route's server name); with the wrong one
///    it fails with the TLS reason and the backend goes down.
#[test]
fn health_checks_go_over_tls_with_the_route_policy() {
    let pki = Pki::new("btls-hc");
    let cert = pki.server("hc", &["hc.test", "hcbad.test"]);
    let other = pki.other_ca();
    let ngx = Nginx::start(1, |p| {
        server_block(
            &format!("127.0.0.1:{} ssl http2", p[0]),
            "hc.test hcbad.test",
            &cert,
            &format!(
                "location /health {{ return 200 \"ok\\n\"; }}\n  {}",
                answer("app")
            ),
        )
    });
    let backend = ngx.addr(0);
    let hc = "healthcheck = { path = \"/health\", interval = \"200ms\", timeout = \"100ms\" }";
    let w = Wharf::start(
        &(base_config()
            + &https_route_with("hc", "hc.test", &[backend], &ca(&pki.ca_file), hc)
            + &https_route_with("hcbad", "hcbad.test", &[backend], &ca(&other), hc)),
    );
    wait_until("a passing check over TLS", WAIT, || {
        w.api_backend("hc", backend)["last_check"]["status"] == 200
    });
    wait_until("a failing check over TLS", WAIT, || {
        w.api_backend("hcbad", backend)["last_check"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("TLS handshake failed"))
    });
    let bad = w.api_backend("hcbad", backend);
    assert!(
        bad["last_check"]["error"]
            .as_str()
            .unwrap()
            .contains("UnknownIssuer"),
        "{bad:#}"
    );
    wait_until("hcbad down", WAIT, || {
        w.health_of("hcbad", backend) == "down"
    });
    assert_eq!(w.health_of("hc", backend), "up");
    let hits = ngx.wait_hits(backend.port(), "/health", 1);
    assert!(
        hits.iter()
            .all(|h| h.protocol == "HTTP/1.1" && h.sni == "hc.test" && h.status == 200),
        "{hits:#?}"
    );
    assert_eq!(get(w.ep("web"), "hc.test", "/").status, 200);
}

/// 9. Bad input. A `ca` file that is not PEM: that route's problem is in
///    `/api/errors` under its key, the route answers 502 without contacting the
///    backend (never plain HTTP instead), other routes keep working. A `ca` file
///    that does not exist: `wharf check` names the key and the path, and `wharf
///    run` refuses to start.
#[test]
fn bad_ca_files_are_reported_for_their_route() {
    let pki = Pki::new("btls-bad");
    let not_pem = pki.file("not-a-ca.pem", "this is not a certificate\n");
    // A plain HTTP backend: it would record anything sent in clear.
    let plain = Backend::start("plain");
    let w = Wharf::start(
        &(base_config()
            + &https_route("badca", "badca.test", &[plain.addr], &ca(&not_pem))
            + &route("good.test", "/", &[plain.addr], "name = \"good\"")),
    );
    let web = w.ep("web");
    let r = get(web, "badca.test", "/");
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(plain.seen().is_empty(), "{:#?}", plain.seen());
    let r = get(web, "good.test", "/");
    assert_eq!((r.status, r.text()), (200, "plain".into()));
    let errors = w.api("/api/errors");
    let problem = errors
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["label"] == "backend_tls.ca")
        .unwrap_or_else(|| panic!("no backend_tls.ca problem: {errors:#}"));
    assert_eq!(problem["service"], "route badca", "{problem:#}");
    assert_eq!(problem["source"], "file", "{problem:#}");
    assert!(
        problem["message"]
            .as_str()
            .is_some_and(|m| m.contains(&not_pem.display().to_string())),
        "{problem:#}"
    );
    assert_eq!(errors.as_array().unwrap().len(), 1, "{errors:#}");
    assert!(w.api_route("badca")["backend_tls"].is_null());
    // `wharf check` reads the file as `wharf run` does: not PEM is an error.
    let config = base_config() + &https_route("badca", "badca.test", &[plain.addr], &ca(&not_pem));
    let path = write_file(&pki.dir.0, "bad.toml", &config);
    let out = Command::new(env!("CARGO_BIN_EXE_wharf"))
        .env_remove("WHARF_CONFIG")
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("error: route `badca`: backend_tls.ca:")),
        "{text}"
    );

    // A missing file: an error of the configuration, with the key and the path.
    let missing = pki.dir.0.join("missing-ca.pem");
    let config = base_config() + &https_route("gone", "gone.test", &[plain.addr], &ca(&missing));
    let path = write_file(&pki.dir.0, "wharf.toml", &config);
    let out = Command::new(env!("CARGO_BIN_EXE_wharf"))
        .env_remove("WHARF_CONFIG")
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let line = text
        .lines()
        .find(|l| l.starts_with("error:") && l.contains("backend_tls.ca"))
        .unwrap_or_else(|| panic!("no backend_tls.ca error in {text}"));
    assert!(line.contains(&missing.display().to_string()), "{line}");
    // `wharf run` refuses the configuration: exit 2, the key in the error.
    // (Run here rather than through `Wharf::try_start`, whose error may be
    // written before its log reader has read the last lines.)
    let mut run = Command::new(env!("CARGO_BIN_EXE_wharf"))
        .env_remove("WHARF_CONFIG")
        .args(["run", "--config"])
        .arg(&path)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = run.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = run.kill();
            let _ = run.wait();
            panic!("wharf run started with a missing ca file");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut err = String::new();
    run.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(
        err.contains("backend_tls.ca") && err.contains(&missing.display().to_string()),
        "{err}"
    );
}

/// 10. A backend that accepts the connection and never answers the TLS
///     handshake costs no more than `connect_timeout`: 502, and the log says the
///     handshake timed out.
#[test]
fn a_stalled_handshake_is_bounded_by_the_connect_timeout() {
    let pki = Pki::new("btls-stall");
    // Listening, never accepting: the kernel completes the TCP handshake and
    // the ClientHello is never answered.
    let silent = loopback_listener();
    let addr = silent.local_addr().unwrap();
    let w = Wharf::start(
        &(base_config().replace(
            "[admin]",
            "[upstream]\nconnect_timeout = \"300ms\"\n\n[admin]",
        ) + &https_route("stall", "stall.test", &[addr], &ca(&pki.ca_file))),
    );
    let t0 = Instant::now();
    let r = get(w.ep("web"), "stall.test", "/");
    let took = t0.elapsed();
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(2),
        "{took:?}"
    );
    let line = w.wait_logs_for("backend TLS: no connection", addr, 1)[0].clone();
    assert_eq!(line["error"], "TLS handshake timed out", "{line:#}");
    drop(silent);
}

/// 12. An HTTP/2 backend that ends its connection gracefully (GOAWAY with
///     NO_ERROR: nginx does so after `keepalive_requests` requests, 1000 by
///     default, HTTP/2 included) costs no request: streams the backend did not
///     process (above its last stream id) are safe to send again (RFC 9113
///     §8.1.4): Wharf forgets the connection and sends such a request once
///     more on a fresh one (before the fix, about 1 request in 700 answered 502
///     against nginx's defaults under 8 concurrent clients).
#[test]
fn h2_goaway_from_the_backend_fails_no_request() {
    let pki = Pki::new("btls-goaway");
    let cert = pki.server("h2", &["goaway.test"]);
    let ngx = Nginx::start(1, |p| {
        server_block(
            &format!("127.0.0.1:{} ssl http2", p[0]),
            "goaway.test",
            &cert,
            &format!("keepalive_requests 5;\n  {}", answer("ok")),
        )
    });
    let backend = ngx.addr(0);
    let w = Wharf::start(
        &(base_config() + &https_route("goaway", "goaway.test", &[backend], &ca(&pki.ca_file))),
    );
    let web = w.ep("web");
    let clients: Vec<_> = (0..8)
        .map(|t| {
            std::thread::spawn(move || {
                (0..40)
                    .map(|i| get(web, "goaway.test", &format!("/goaway/{t}/{i}")))
                    .filter(|r| r.status != 200)
                    .map(|r| format!("{} {}", r.status, r.text()))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let failed: Vec<String> = clients
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    assert!(
        failed.is_empty(),
        "{} of 320 failed, e.g. {:?}",
        failed.len(),
        failed.first()
    );
}

// ---------------------------------------------------------------------------
// Docker (tests/common/docker.rs rules: no registry, `--dns 127.0.0.1`, traffic
// only to loopback and our own containers' bridge addresses).

/// 11. A Traefik-labelled HTTPS service on a container: Wharf on the host in
///     `[docker] mode = "containers"` with Traefik labels maps
///     `loadbalancer.server.scheme=https` and a servers transport with
///     `insecureskipverify=true` onto `scheme = "https"` + `insecure`, and
///     reaches it over TLS. There is no TLS-capable server image without a
///     registry, so the HTTPS service is a second Wharf (the image built from the
///     binary under test) with a TLS entrypoint on 8443 only and a self-signed
///     certificate, in front of a busybox web server: a 200 through both proves
///     the hop went over TLS.
#[test]
fn traefik_labelled_https_container_is_reached_over_tls() {
    use common::docker::{ip_on, Engine};
    let e = Engine::new("btls");
    let net = e.bridge("net");
    let backend_image = e.backend_image();
    let wharf_image = e.wharf_image();
    let app = e.run("app", &["--network", &net, &backend_image]);
    let app_ip = ip_on(&net, &app);
    let host = format!("x.{}.test", e.prefix);

    // The HTTPS service: Wharf terminating TLS on 8443 with a file certificate
    // nobody trusts, routing to the busybox container.
    let cfg = e.dir().join("front");
    std::fs::create_dir_all(&cfg).unwrap();
    let cert = TestCa::new("front CA").server(&[&host]);
    write_file(&cfg, "front.crt", &cert.cert);
    write_file(&cfg, "front.key", &cert.key);
    write_file(
        &cfg,
        "wharf.toml",
        &format!(
            "[entrypoints.websecure]\naddress = \"0.0.0.0:8443\"\ntls = true\n\n\
             [admin]\naddress = \"127.0.0.1:8082\"\n\n[docker]\nmode = \"off\"\n\n\
             [[tls.certificates]]\ncert = \"/cfg/front.crt\"\nkey = \"/cfg/front.key\"\n\n\
             [[routes]]\nhost = \"{host}\"\nupstream = \"static:{app_ip}:80\"\n"
        ),
    );
    let mut w = Wharf::start(&base_config().replace(
        "[docker]\nmode = \"off\"\n",
        &format!(
            "[docker]\nmode = \"containers\"\nnetwork = \"{net}\"\npoll_interval = \"500ms\"\n\
             traefik_labels = true\n"
        ),
    ));
    w.wait_log("docker: connected and listed").unwrap();
    let front = e.run(
        "front",
        &[
            "--network",
            &net,
            "-v",
            &format!("{}:/cfg:ro", cfg.display()),
            "--label",
            "traefik.enable=true",
            "--label",
            &format!("traefik.http.routers.r.rule=Host(`{host}`)"),
            "--label",
            "traefik.http.services.s.loadbalancer.server.port=8443",
            "--label",
            "traefik.http.services.s.loadbalancer.server.scheme=https",
            "--label",
            "traefik.http.services.s.loadbalancer.serverstransport=t",
            "--label",
            "traefik.http.serverstransports.t.insecureskipverify=true",
            &wharf_image,
            "run",
            "--config",
            "/cfg/wharf.toml",
        ],
    );
    let front_addr: SocketAddr = format!("{}:8443", ip_on(&net, &front)).parse().unwrap();
    // Readiness: the front Wharf accepts connections, and Wharf lists the route.
    wait_until("the front Wharf to listen", WAIT, || {
        TcpStream::connect_timeout(&front_addr, Duration::from_millis(200)).is_ok()
    });
    let route = || {
        w.api_routes()
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| {
                r["hosts"]
                    .as_array()
                    .is_some_and(|h| h.iter().any(|x| x == host.as_str()))
            })
            .cloned()
    };
    wait_until(&format!("{host} in /api/routes"), WAIT, || {
        route().is_some_and(|r| r["backends"][0]["address"] == front_addr.to_string())
    });
    let r = route().unwrap();
    assert_eq!(
        r["backend_tls"],
        serde_json::json!({ "server_name": host, "insecure": true }),
        "{r:#}"
    );
    assert_eq!(r["backends"][0]["scheme"], "https", "{r:#}");
    let resp = get(w.ep("web"), &host, "/");
    assert_eq!(
        resp.status,
        200,
        "{}; the front Wharf's log:\n{}",
        resp.text(),
        common::docker::try_docker(&["logs", &front]).unwrap_or_default()
    );
    assert_eq!(resp.text(), "hello from busybox\n");
    let insecure = w
        .logs()
        .into_iter()
        .filter(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.contains("backend_tls.insecure = true"))
        })
        .count();
    assert_eq!(insecure, 1, "verification off is logged once");
}
