//! End-to-end ACME: the real `wharf` binary obtains certificates from a real Pebble
//! CA. Pebble validates on Wharf's own entrypoints (HTTP-01 on the plain one,
//! TLS-ALPN-01 on the TLS one), so their ports are chosen before either starts.

// Tests: a failed step should abort the test loudly.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::pebble::*;
use common::tls::AnyCert;
use common::*;

/// Generous: Pebble and Wharf share 2 cores with parallel builds. The measured
/// time is printed (the goal is ≤ 2 s).
const ISSUE_LIMIT: Duration = Duration::from_secs(30);

/// Plain `web` (redirecting to HTTPS) and TLS `websecure` on the given ports, the
/// admin on port 0, Docker off.
fn config(web: u16, websecure: u16) -> String {
    format!(
        "[entrypoints.web]\naddress = \"127.0.0.1:{web}\"\nredirect_https = true\n\n\
         [entrypoints.websecure]\naddress = \"127.0.0.1:{websecure}\"\ntls = true\n\n\
         [admin]\naddress = \"127.0.0.1:0\"\n\n[docker]\nmode = \"off\"\n\n"
    )
}

fn acme_route(host: &str, backend: SocketAddr) -> String {
    format!("[[routes]]\nhost = \"{host}\"\nupstream = \"static:{backend}\"\ntls = \"acme\"\n\n")
}

/// Retries a verified handshake until the served certificate chains to `root`
/// (the self-signed placeholder fails verification until then).
fn wait_verified(
    addr: SocketAddr,
    sni: &str,
    root: &str,
    limit: Duration,
) -> rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream> {
    let client = verifying_client(roots_from_pem(root));
    let deadline = Instant::now() + limit;
    loop {
        match tls_connect(addr, sni, client.clone()) {
            Ok(s) => return s,
            Err(e) if Instant::now() >= deadline => {
                panic!("no certificate for {sni} chaining to Pebble's root after {limit:?}: {e}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// The `/api/certificates` entry whose names include `name`, once `pred` holds
/// for it (the ACME state is copied into the API every second).
fn wait_api_entry(
    w: &Wharf,
    name: &str,
    limit: Duration,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + limit;
    loop {
        let r = get(w.admin, "admin", "/api/certificates");
        assert_eq!(r.status, 200);
        let list: Vec<serde_json::Value> = serde_json::from_slice(&r.body).unwrap();
        let entry = list.into_iter().find(|c| {
            c["names"]
                .as_array()
                .is_some_and(|n| n.iter().any(|n| n == name))
                && pred(c)
        });
        if let Some(e) = entry {
            return e;
        }
        assert!(
            Instant::now() < deadline,
            "/api/certificates never showed the expected entry for {name}: {}",
            r.text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The value of one sample line of `/metrics`, 0 when the series is absent.
fn metric(w: &Wharf, series: &str) -> f64 {
    w.metric(series).unwrap_or(0.0)
}

/// Wharf on fresh entrypoint ports, with Pebble validating on them.
struct Rig {
    web: u16,
    websecure: u16,
    pebble: Pebble,
    root: String,
    store: TempDir,
    backend: Backend,
}

impl Rig {
    fn new() -> Rig {
        let (web, websecure) = (free_port(), free_port());
        let pebble = Pebble::start(web, websecure);
        let root = pebble.root_pem();
        Rig {
            web,
            websecure,
            pebble,
            root,
            store: TempDir::new("acme-store"),
            backend: Backend::start("app"),
        }
    }

    fn config(&self, challenge: &str, host: &str) -> String {
        config(self.web, self.websecure)
            + &self.pebble.acme_section(challenge, &self.store.0)
            + &acme_route(host, self.backend.addr)
    }
}

/// Wharf on a config whose entrypoint ports were picked before it started; when
/// another process took one meanwhile, everything is set up again on fresh ports.
fn start_on_fresh_ports<T>(mut setup: impl FnMut() -> (T, String)) -> (T, Wharf, Instant) {
    let mut errors = Vec::new();
    for _ in 0..3 {
        let (t, config) = setup();
        let t0 = Instant::now();
        match Wharf::try_start(&config) {
            Ok(w) => return (t, w, t0),
            Err(e) if e.contains("cannot listen") => errors.push(e),
            Err(e) => panic!("wharf did not start: {e}"),
        }
    }
    panic!("wharf did not start: {errors:#?}");
}

/// Issuance end to end: time from start to a certificate that verifies, the
/// request reaching the backend over it, and what the API says.
fn issue(challenge: &str, host: &str) -> (Rig, Wharf) {
    let (rig, w, t0) = start_on_fresh_ports(|| {
        let rig = Rig::new();
        let config = rig.config(challenge, host);
        (rig, config)
    });
    let ready = t0.elapsed();
    let mut s = wait_verified(w.ep("websecure"), host, &rig.root, ISSUE_LIMIT);
    let took = t0.elapsed();
    eprintln!(
        "BENCH {challenge}: wharf start to a Pebble certificate served: {took:?} \
         (wharf ready after {ready:?})"
    );
    assert!(took < ISSUE_LIMIT, "{took:?}");
    let (status, body) = get_over(&mut s, host, "/over-tls");
    assert_eq!((status, body.as_str()), (200, "app"));
    let seen = rig.backend.last();
    assert_eq!(seen.uri, "/over-tls");
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));

    let entry = wait_api_entry(&w, host, Duration::from_secs(10), |c| {
        c["source"] == "acme" && c["state"] == "valid"
    });
    let issuer = entry["issuer"].as_str().unwrap();
    assert!(issuer.contains("Pebble"), "{entry}");
    assert!(entry["reason"].is_null(), "{entry}");
    assert_eq!(metric(&w, "wharf_acme_orders_total{result=\"ok\"}"), 1.0);
    assert_eq!(metric(&w, "wharf_acme_orders_total{result=\"error\"}"), 0.0);
    (rig, w)
}

#[test]
fn http01_through_the_plain_entrypoint() {
    let (rig, mut w) = issue("http-01", "app.example.test");
    // Pebble fetched the token through `web`, which redirects everything else.
    let r = get(w.ep("web"), "app.example.test", "/page");
    assert_eq!(r.status, 301);
    assert_eq!(
        r.header("location"),
        Some(format!("https://app.example.test:{}/page", rig.websecure).as_str())
    );
    assert_eq!(rig.pebble.orders(), 1);
    w.signal("TERM");
    assert_eq!(w.wait_exit(), Some(0));
}

#[test]
fn tls_alpn01_through_the_tls_entrypoint() {
    let (rig, _w) = issue("tls-alpn-01", "alpn.example.test");
    assert_eq!(rig.pebble.orders(), 1);
    // No challenge certificate is left behind: an acme-tls/1 hello now gets
    // nothing (the entrypoint offers no such protocol outside an order).
    let mut cfg = (*verifying_client(roots_from_pem(&rig.root))).clone();
    cfg.alpn_protocols = vec![b"acme-tls/1".to_vec()];
    let r = tls_connect(
        SocketAddr::from(([127, 0, 0, 1], rig.websecure)),
        "alpn.example.test",
        Arc::new(cfg),
    );
    assert!(
        r.is_err(),
        "an acme-tls/1 handshake succeeded after the order"
    );
}

#[test]
fn restart_serves_the_stored_certificate_without_ordering() {
    let (rig, mut w) = issue("http-01", "keep.example.test");
    let first = leaf(&wait_verified(
        w.ep("websecure"),
        "keep.example.test",
        &rig.root,
        Duration::ZERO,
    ));
    w.signal("TERM");
    assert_eq!(w.wait_exit(), Some(0));
    drop(w);
    let orders = rig.pebble.orders();

    let w = Wharf::start(&rig.config("http-01", "keep.example.test"));
    // Right after start, no retry: the stored certificate is already served.
    let client = verifying_client(roots_from_pem(&rig.root));
    let s = tls_connect(w.ep("websecure"), "keep.example.test", client)
        .unwrap_or_else(|e| panic!("the stored certificate is not served at start: {e}"));
    assert_eq!(leaf(&s), first, "the same certificate (same serial)");
    wait_api_entry(&w, "keep.example.test", Duration::from_secs(10), |c| {
        c["source"] == "acme" && c["state"] == "valid"
    });
    assert_eq!(rig.pebble.orders(), orders, "Pebble got a new order");
    assert_eq!(metric(&w, "wharf_acme_orders_total{result=\"ok\"}"), 0.0);
}

fn any_cert_client() -> Arc<rustls::ClientConfig> {
    let p = wharf_tls::provider();
    Arc::new(
        rustls::ClientConfig::builder_with_provider(p.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCert(p)))
            .with_no_client_auth(),
    )
}

/// `[acme]` pointing at a port nothing listens on.
/// A config whose ACME directory is at `dead`, an address that refuses
/// connections (a [`DeadAddr`], so no other listener can take its port while
/// the test runs).
fn dead_ca_config(store: &TempDir, backend: SocketAddr, host: &str, dead: SocketAddr) -> String {
    let (web, websecure) = (free_port(), free_port());
    config(web, websecure)
        + &format!(
            "[acme]\nemail = \"ops@example.org\"\ndirectory = \"https://{dead}/dir\"\n\
             storage = \"file:{}\"\n\n",
            store.0.display()
        )
        + &acme_route(host, backend)
}

#[test]
fn dead_acme_server_serves_the_placeholder_and_reports_failure() {
    let backend = Backend::start("app");
    let store = TempDir::new("acme-store");
    let (_dead, mut w, _) = start_on_fresh_ports(|| {
        let dead = DeadAddr::new();
        let config = dead_ca_config(&store, backend.addr, "down.example.test", dead.addr);
        (dead, config)
    });

    let entry = wait_api_entry(&w, "down.example.test", Duration::from_secs(15), |c| {
        c["state"] == "failed"
    });
    eprintln!("dead CA, /api/certificates entry: {entry}");
    assert_eq!(entry["source"], "self_signed", "{entry}");
    let reason = entry["reason"].as_str().unwrap_or("");
    // The cause, not only "client error (Connect)", and when it is tried again.
    assert!(
        reason.contains("refused") && reason.contains("next attempt"),
        "no useful reason: {entry}"
    );
    assert!(
        metric(&w, "wharf_acme_orders_total{result=\"error\"}") >= 1.0,
        "{}",
        get(w.admin, "admin", "/metrics").text()
    );

    // The route is served over TLS with the placeholder.
    let mut s = tls_connect(w.ep("websecure"), "down.example.test", any_cert_client()).unwrap();
    let names = wharf_tls::names_of(&leaf(&s)).unwrap();
    assert_eq!(names, vec!["down.example.test".to_string()]);
    let (status, body) = get_over(&mut s, "down.example.test", "/still-up");
    assert_eq!((status, body.as_str()), (200, "app"));
    assert_eq!(backend.last().uri, "/still-up");

    assert!(w.child.try_wait().unwrap().is_none(), "wharf exited");
    assert_eq!(get(w.admin, "admin", "/ping").status, 200);
    let errors: Vec<_> = w
        .logs()
        .into_iter()
        .filter(|l| l["message"].as_str().unwrap_or("").contains("panicked"))
        .collect();
    assert!(errors.is_empty(), "{errors:?}");
    w.signal("TERM");
    assert_eq!(w.wait_exit(), Some(0));
}

#[test]
fn unknown_challenge_token_is_routed_not_redirected() {
    let backend = Backend::start("app");
    let store = TempDir::new("acme-store");
    let (_dead, w, _) = start_on_fresh_ports(|| {
        let dead = DeadAddr::new();
        let config = dead_ca_config(&store, backend.addr, "plain.example.test", dead.addr);
        (dead, config)
    });
    let r = get(
        w.ep("web"),
        "plain.example.test",
        "/.well-known/acme-challenge/unknown",
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("location"), None);
    assert_eq!(r.text(), "app");
    assert_eq!(backend.last().uri, "/.well-known/acme-challenge/unknown");
    // Any other path on the same entrypoint is redirected.
    assert_eq!(get(w.ep("web"), "plain.example.test", "/x").status, 301);
}

#[test]
fn a_route_added_by_sighup_gets_its_certificate() {
    let (rig, w) = issue("http-01", "first.example.test");
    let second = Backend::start("second");
    let config = rig.config("http-01", "first.example.test")
        + &acme_route("second.example.test", second.addr);
    std::fs::write(&w.config, config).unwrap();
    w.signal("HUP");
    let mut s = wait_verified(
        w.ep("websecure"),
        "second.example.test",
        &rig.root,
        ISSUE_LIMIT,
    );
    let (status, body) = get_over(&mut s, "second.example.test", "/");
    assert_eq!((status, body.as_str()), (200, "second"));
    // The first certificate is kept, not ordered again.
    wait_api_entry(&w, "second.example.test", Duration::from_secs(10), |c| {
        c["source"] == "acme" && c["state"] == "valid"
    });
    assert_eq!(rig.pebble.orders(), 2);
    assert_eq!(metric(&w, "wharf_acme_orders_total{result=\"ok\"}"), 2.0);
}
