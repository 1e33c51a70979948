//! End-to-end tests of TLS termination: the real binary (or, for the ACME HTTP-01
//! hook, the real listener and forwarder in process), real certificates made with
//! rcgen, and a rustls client that reports which certificate it was served.

// Tests: a failed step should abort the test loudly.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use common::tls::AnyCert;
use common::*;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A TLS connection with `sni` (an IP literal sends no SNI) offering `alpn`.
async fn connect(
    addr: SocketAddr,
    sni: &str,
    alpn: &[&[u8]],
) -> std::io::Result<TlsStream<TcpStream>> {
    connect_over(TcpStream::connect(addr).await?, sni, alpn).await
}

/// Like [`connect`], on a TCP stream the caller already wrote to.
async fn connect_over(
    tcp: TcpStream,
    sni: &str,
    alpn: &[&[u8]],
) -> std::io::Result<TlsStream<TcpStream>> {
    let p = wharf_tls::provider();
    let mut cfg = rustls::ClientConfig::builder_with_provider(p.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(p)))
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from(sni.to_string()).unwrap(), tcp)
        .await
}

fn served_names(s: &TlsStream<TcpStream>) -> Vec<String> {
    let leaf = &s.get_ref().1.peer_certificates().unwrap()[0];
    wharf_tls::names_of(leaf).unwrap()
}

/// Which names the certificate served for `sni` carries.
fn names_for(addr: SocketAddr, sni: &str) -> Vec<String> {
    rt().block_on(async { served_names(&connect(addr, sni, &[]).await.unwrap()) })
}

struct Reply {
    status: u16,
    version: hyper::Version,
    headers: hyper::HeaderMap,
    body: String,
}

/// One GET over a new TLS connection with SNI `sni`, speaking what ALPN chose;
/// `authority` is the Host (HTTP/1.1) or :authority (HTTP/2).
async fn tls_get(
    addr: SocketAddr,
    sni: &str,
    alpn: &[&[u8]],
    authority: &str,
    path: &str,
) -> Reply {
    let s = connect(addr, sni, alpn).await.unwrap();
    let h2 = s.get_ref().1.alpn_protocol() == Some(b"h2");
    let io = TokioIo::new(s);
    let resp = if h2 {
        let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = hyper::Request::get(format!("https://{authority}{path}"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        send.send_request(req).await.unwrap()
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn);
        let req = hyper::Request::get(path)
            .header("host", authority)
            .body(Empty::<Bytes>::new())
            .unwrap();
        send.send_request(req).await.unwrap()
    };
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Reply {
        status: parts.status.as_u16(),
        version: parts.version,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// Writes a self-signed ECDSA P-256 certificate for `names` as `<stem>.pem` and
/// `<stem>.key` in `dir`.
fn write_cert(dir: &Path, stem: &str, names: &[&str]) -> (PathBuf, PathBuf) {
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
    let cert = params.self_signed(&key).unwrap();
    let (c, k) = (
        dir.join(format!("{stem}.pem")),
        dir.join(format!("{stem}.key")),
    );
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c, k)
}

fn cert_entry((c, k): &(PathBuf, PathBuf)) -> String {
    format!(
        "[[tls.certificates]]\ncert = \"{}\"\nkey = \"{}\"\n\n",
        c.display(),
        k.display()
    )
}

/// Plain `web` (redirecting), TLS `websecure`, admin; all on port 0.
fn tls_config() -> String {
    "[entrypoints.web]\naddress = \"127.0.0.1:0\"\nredirect_https = true\n\n\
     [entrypoints.websecure]\naddress = \"127.0.0.1:0\"\ntls = true\n\n\
     [admin]\naddress = \"127.0.0.1:0\"\n\n"
        .to_string()
}

/// A route with TLS on (`tls = "acme"`) and the default HSTS.
fn tls_route(host: &str, backend: SocketAddr) -> String {
    format!("[[routes]]\nhost = \"{host}\"\nupstream = \"static:{backend}\"\ntls = \"acme\"\n\n")
}

#[test]
fn sni_picks_file_certificates_else_the_default() {
    let a = Backend::start("a");
    let certs = TempDir::new("certs");
    let exact = write_cert(&certs.0, "exact", &["a.test"]);
    let wild = write_cert(&certs.0, "wild", &["*.w.test"]);
    let cfg = tls_config()
        + &cert_entry(&wild)
        + &cert_entry(&exact)
        + &route("a.test", "/", &[a.addr], "");
    let w = Wharf::start(&cfg);
    let tls = w.ep("websecure");
    assert_eq!(names_for(tls, "a.test"), ["a.test"]);
    assert_eq!(names_for(tls, "x.w.test"), ["*.w.test"]);
    // Unknown names and no SNI: the first file certificate, as HAProxy does.
    assert_eq!(names_for(tls, "w.test"), ["*.w.test"]);
    assert_eq!(names_for(tls, "unknown.test"), ["*.w.test"]);
    // An IP address as server name: the client sends no SNI.
    assert_eq!(names_for(tls, "127.0.0.1"), ["*.w.test"]);
    // Without file certificates: the generated default.
    let w2 = Wharf::start(&(tls_config() + &route("a.test", "/", &[a.addr], "")));
    assert_eq!(
        names_for(w2.ep("websecure"), "unknown.test"),
        ["wharf.invalid"]
    );
    assert_eq!(
        names_for(w2.ep("websecure"), "127.0.0.1"),
        ["wharf.invalid"]
    );
}

#[test]
fn alpn_selects_http2_or_http11_and_headers_say_https() {
    let a = Backend::start("a");
    let certs = TempDir::new("certs");
    let cfg = tls_config()
        + &cert_entry(&write_cert(&certs.0, "a", &["a.test"]))
        + &tls_route("a.test", a.addr);
    let w = Wharf::start(&cfg);
    let (tls, web) = (w.ep("websecure"), w.ep("web"));
    rt().block_on(async {
        let r = tls_get(tls, "a.test", &[b"h2", b"http/1.1"], "a.test", "/x").await;
        assert_eq!(
            (r.status, r.version, r.body.as_str()),
            (200, hyper::Version::HTTP_2, "a")
        );
        assert_eq!(
            r.headers["strict-transport-security"], "max-age=63072000",
            "HSTS on TLS responses"
        );
        let r = tls_get(tls, "a.test", &[b"http/1.1"], "a.test", "/y").await;
        assert_eq!((r.status, r.version), (200, hyper::Version::HTTP_11));
        assert!(r.headers.contains_key("strict-transport-security"));
        // No ALPN at all: HTTP/1.1.
        let r = tls_get(tls, "a.test", &[], "a.test:443", "/z").await;
        assert_eq!((r.status, r.version), (200, hyper::Version::HTTP_11));
    });
    let seen = a.last();
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
    assert_eq!(seen.version, "HTTP/1.1");
    // The same route on the plain entrypoint: redirected, so ask for the ACME path
    // (never redirected) to see a plain response: no HSTS there.
    let r = get(web, "a.test", "/.well-known/acme-challenge/unknown");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("strict-transport-security"), None);
    assert_eq!(a.last().header("x-forwarded-proto"), Some("http"));
}

#[test]
fn h2_request_for_another_host_gets_421() {
    let a = Backend::start("a");
    let certs = TempDir::new("certs");
    let cfg = tls_config()
        + &cert_entry(&write_cert(&certs.0, "ab", &["a.test", "b.test"]))
        + &route("a.test", "/", &[a.addr], "")
        + &route("b.test", "/", &[a.addr], "");
    let w = Wharf::start(&cfg);
    let tls = w.ep("websecure");
    rt().block_on(async {
        // Coalescing: the certificate covers b.test, but the connection was opened
        // for a.test.
        let r = tls_get(tls, "a.test", &[b"h2"], "b.test", "/").await;
        assert_eq!((r.status, r.version), (421, hyper::Version::HTTP_2));
        let r = tls_get(tls, "a.test", &[b"h2"], "A.test:443", "/").await;
        assert_eq!(r.status, 200);
        // HTTP/1.1 follows the same rule.
        let r = tls_get(tls, "a.test", &[b"http/1.1"], "b.test", "/").await;
        assert_eq!(r.status, 421);
        // Without SNI there is nothing to contradict.
        let r = tls_get(tls, "127.0.0.1", &[b"h2"], "b.test", "/").await;
        assert_eq!(r.status, 200);
    });
}

#[test]
fn plain_entrypoint_redirects_tls_routes_to_https() {
    let a = Backend::start("a");
    let cfg =
        tls_config() + &tls_route("app.test", a.addr) + &route("plain.test", "/", &[a.addr], "");
    let w = Wharf::start(&cfg);
    let (web, tls) = (w.ep("web"), w.ep("websecure"));
    let r = get(web, "App.test:8080", "/p/a?q=1&r=2");
    assert_eq!(r.status, 301);
    assert_eq!(
        r.header("location"),
        Some(format!("https://app.test:{}/p/a?q=1&r=2", tls.port()).as_str())
    );
    let r = raw(
        web,
        b"POST /form HTTP/1.1\r\nHost: app.test\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 308, "the method and body are kept");
    // The ACME path is never redirected.
    let r = get(web, "app.test", "/.well-known/acme-challenge/tok");
    assert_eq!(r.status, 200);
    assert_eq!(a.last().uri, "/.well-known/acme-challenge/tok");
    // A route without TLS is served on the plain entrypoint.
    let r = get(web, "plain.test", "/");
    assert_eq!(r.status, 200);
    // And the TLS route answers on the TLS entrypoint (self-signed until ACME).
    assert_eq!(names_for(tls, "app.test"), ["app.test"]);
}

#[test]
fn sighup_reloads_replaced_certificate_files_and_keeps_the_last_good_one() {
    let a = Backend::start("a");
    let certs = TempDir::new("certs");
    let pair = write_cert(&certs.0, "site", &["a.test"]);
    let cfg = tls_config() + &cert_entry(&pair) + &route("a.test", "/", &[a.addr], "");
    let mut w = Wharf::start(&cfg);
    let tls = w.ep("websecure");
    assert_eq!(names_for(tls, "a.test"), ["a.test"]);

    write_cert(&certs.0, "site", &["a.test", "www.a.test"]);
    let n = w.log_count();
    w.signal("HUP");
    w.wait_log_after("configuration reloaded", n).unwrap();
    assert_eq!(names_for(tls, "a.test"), ["a.test", "www.a.test"]);

    // A broken file: the error names it and the previous certificate stays.
    std::fs::write(&pair.0, "-----BEGIN CERTIFICATE-----\nbroken\n").unwrap();
    let n = w.log_count();
    w.signal("HUP");
    let line = w
        .wait_log_after("the previous certificate stays", n)
        .unwrap();
    assert!(
        line["message"].as_str().unwrap().contains("site.pem"),
        "{line}"
    );
    assert_eq!(names_for(tls, "www.a.test"), ["a.test", "www.a.test"]);
}

#[test]
fn a_bad_certificate_file_stops_check_and_start_with_its_path() {
    let certs = TempDir::new("certs");
    let (c, k) = write_cert(&certs.0, "good", &["a.test"]);
    let (_, other_key) = write_cert(&certs.0, "other", &["a.test"]);
    let cfg = tls_config()
        + &cert_entry(&(c.clone(), other_key))
        + &cert_entry(&(certs.0.join("missing.pem"), k));
    let path = certs.0.join("wharf.toml");
    std::fs::write(&path, &cfg).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wharf"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("good.pem") && text.contains("does not match"),
        "{text}"
    );
    assert!(text.contains("missing.pem"), "{text}");
    let e = Wharf::try_start(&cfg).err().expect("start must fail");
    assert!(e.contains("missing.pem"), "{e}");
}

#[test]
fn garbage_and_old_clients_on_the_tls_port_do_not_hurt_others() {
    let a = Backend::start("a");
    let certs = TempDir::new("certs");
    let cfg = tls_config()
        + &cert_entry(&write_cert(&certs.0, "a", &["a.test"]))
        + &route("a.test", "/", &[a.addr], "");
    let w = Wharf::start(&cfg);
    let tls = w.ep("websecure");
    rt().block_on(async {
        // A silent client holds a connection open meanwhile.
        let _silent = TcpStream::connect(tls).await.unwrap();
        // Plain HTTP on the TLS port: refused, connection closed.
        let mut plain = TcpStream::connect(tls).await.unwrap();
        plain
            .write_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
            .await
            .unwrap();
        let mut buf = Vec::new();
        let _ = plain.read_to_end(&mut buf).await;
        assert!(!buf.starts_with(b"HTTP/"), "{buf:?}");
        // A TLS 1.1-only ClientHello: a fatal alert, no ServerHello.
        let mut old = TcpStream::connect(tls).await.unwrap();
        old.write_all(&tls11_client_hello()).await.unwrap();
        let mut head = [0u8; 7];
        old.read_exact(&mut head).await.unwrap();
        assert_eq!((head[0], head[5]), (0x15, 2), "fatal alert: {head:?}");
        // Everyone else is served.
        let r = tls_get(tls, "a.test", &[b"h2"], "a.test", "/").await;
        assert_eq!(r.status, 200);
    });
    // Both failures are counted (the silent one too, once it has closed).
    let count = || {
        let m = get(w.admin, "admin", "/metrics").text();
        m.lines()
            .find_map(|l| l.strip_prefix("wharf_tls_handshake_failures_total "))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no counter in {m}"))
    };
    // Counted just after the connection closes: wait for it, up to WAIT.
    let deadline = std::time::Instant::now() + WAIT;
    let mut n = count();
    while n < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
        n = count();
    }
    assert!((2..=3).contains(&n), "{n}");
}

/// A ClientHello that offers TLS 1.1 only (no supported_versions extension).
fn tls11_client_hello() -> Vec<u8> {
    let mut body = vec![0x03, 0x02];
    body.extend_from_slice(&[7u8; 32]);
    // Empty session id; ECDHE-RSA-AES128-SHA and AES128-SHA; null compression.
    body.extend_from_slice(&[0x00, 0x00, 0x04, 0xc0, 0x13, 0x00, 0x2f, 0x01, 0x00]);
    let mut hs = vec![0x01, 0x00, 0x00, u8::try_from(body.len()).unwrap()];
    hs.extend_from_slice(&body);
    let mut rec = vec![0x16, 0x03, 0x02, 0x00, u8::try_from(hs.len()).unwrap()];
    rec.extend_from_slice(&hs);
    rec
}

#[test]
fn api_certificates_lists_names_issuer_expiry_state_and_source() {
    let a = Backend::start("a");
    let certs = TempDir::new("certs");
    let cfg = tls_config()
        + &cert_entry(&write_cert(&certs.0, "site", &["a.test", "*.a.test"]))
        + &tls_route("new.test", a.addr);
    let w = Wharf::start(&cfg);
    let r = get(w.admin, "admin", "/api/certificates");
    assert_eq!(r.status, 200);
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let list = v.as_array().unwrap();
    let by_source = |s: &str| {
        list.iter()
            .find(|c| c["source"] == s)
            .unwrap_or_else(|| panic!("no {s} certificate in {v:#}"))
    };
    let file = by_source("file");
    assert_eq!(file["names"], serde_json::json!(["a.test", "*.a.test"]));
    assert_eq!(file["state"], "valid");
    assert!(file["file"].as_str().unwrap().ends_with("site.pem"));
    assert!(file["issuer"].as_str().is_some());
    let not_after = file["not_after"].as_str().unwrap();
    assert!(
        not_after.ends_with('Z') && not_after.len() == 20,
        "{not_after}"
    );
    let unix = file["not_after_unix"].as_i64().unwrap();
    assert!(unix > 0);
    // The file certificate's expiry is a metric per name; the placeholder's is not.
    for name in ["a.test", "*.a.test"] {
        let series = format!("wharf_tls_cert_not_after_seconds{{name=\"{name}\"}}");
        assert_eq!(w.metric(&series), Some(unix as f64), "{series}");
    }
    assert!(w
        .metric("wharf_tls_cert_not_after_seconds{name=\"new.test\"}")
        .is_none());
    let placeholder = by_source("self_signed");
    assert_eq!(placeholder["names"], serde_json::json!(["new.test"]));
    assert_eq!(placeholder["state"], "pending");
    // The first file certificate is the default one; the generated one is unused.
    assert!(list.iter().all(|c| c["source"] != "default"), "{v:#}");
    let w2 = Wharf::start(&(tls_config() + &tls_route("new.test", a.addr)));
    let v: serde_json::Value =
        serde_json::from_slice(&get(w2.admin, "admin", "/api/certificates").body).unwrap();
    assert_eq!(v[0]["source"], "default");
    assert_eq!(v[0]["names"], serde_json::json!(["wharf.invalid"]));
}

/// The ACME HTTP-01 hook, on the real listener and forwarder in process (the
/// binary has no ACME client yet): a known token is answered before routing on a
/// plain entrypoint; an unknown one is routed as usual; TLS never answers it.
#[test]
fn http01_hook_answers_known_tokens_on_plain_entrypoints() {
    struct Tokens;
    impl wharf_proxy::Http01Responder for Tokens {
        fn respond<'a>(&'a self, token: &'a str) -> wharf_proxy::Http01Answer<'a> {
            Box::pin(std::future::ready(
                (token == "tok123").then(|| "tok123.thumbprint".to_string()),
            ))
        }
    }
    let a = Backend::start("a");
    let cfg = wharf_config::parse(
        &(tls_config() + &tls_route("app.test", a.addr)),
        "test",
        Vec::<(String, String)>::new(),
    )
    .unwrap();
    let control = wharf_control::Control::new();
    control.apply(&cfg);
    let store = Arc::new(wharf_tls::CertStore::new().unwrap());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let cancel = tokio_util::sync::CancellationToken::new();
    let tracker = tokio_util::task::TaskTracker::new();
    let (web, tls) = rt.block_on(async {
        let up = wharf_proxy::UpstreamSettings {
            connect_timeout: std::time::Duration::from_secs(5),
            response_timeout: std::time::Duration::from_secs(5),
            idle_timeout: std::time::Duration::from_secs(5),
            max_idle_per_backend: 4,
        };
        let mut addrs = Vec::new();
        let mut eps = Vec::new();
        for (index, ep) in cfg.entrypoints.iter().enumerate() {
            let listener = wharf_proxy::bind(ep.address).unwrap();
            addrs.push(listener.local_addr().unwrap());
            let settings = wharf_proxy::ListenerSettings {
                name: ep.name.clone(),
                address: ep.address,
                tls: ep.tls,
                redirect_https: ep.redirect_https,
                proxy_protocol: None,
                forwarded_trusted: Vec::new(),
                http2: true,
                header_read_timeout: std::time::Duration::from_secs(5),
                max_header_size: 65536,
                max_headers: 100,
                open: Default::default(),
                own_slots: None,
                global_slots: None,
                idle_timeout: std::time::Duration::from_secs(60),
                max_connection_age: std::time::Duration::ZERO,
                client_timeout: std::time::Duration::from_secs(60),
                tunnel_timeout: std::time::Duration::from_secs(60),
                h1_engine: true,
                h2_engine: true,
            };
            let tls = ep
                .tls
                .then(|| wharf_tls::server_config(store.clone(), true).unwrap());
            eps.push(wharf_proxy::Entrypoint {
                index,
                settings: Arc::new(settings),
                listener,
                tls,
            });
        }
        let https_port = addrs[1].port();
        let fwd = Arc::new(wharf_proxy::Forwarder::new(
            control.table(),
            &up,
            Some(https_port),
            tracker.clone(),
            Arc::new(Tokens),
        ));
        for e in eps {
            tokio::spawn(e.serve(fwd.clone(), cancel.clone(), tracker.clone()));
        }
        (addrs[0], addrs[1])
    });
    let r = get(web, "anything.test", "/.well-known/acme-challenge/tok123");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "tok123.thumbprint");
    assert_eq!(r.header("content-type"), Some("text/plain"));
    assert!(a.seen().is_empty(), "answered before routing");
    // Unknown token: routed (the ACME path is never redirected).
    let r = get(web, "app.test", "/.well-known/acme-challenge/other");
    assert_eq!((r.status, r.text().as_str()), (200, "a"));
    // Other paths of a TLS route: redirected to the TLS entrypoint's port.
    let r = get(web, "app.test", "/x");
    assert_eq!(
        r.header("location"),
        Some(format!("https://app.test:{}/x", tls.port()).as_str())
    );
    // On TLS the token is not answered by the hook.
    store.ensure_self_signed(&["app.test".into()]).unwrap();
    let r = rt.block_on(tls_get(
        tls,
        "app.test",
        &[b"http/1.1"],
        "app.test",
        "/.well-known/acme-challenge/tok123",
    ));
    assert_eq!((r.status, r.body.as_str()), (200, "a"));
    cancel.cancel();
}

#[test]
fn proxy_protocol_header_is_read_before_the_handshake() {
    let a = Backend::start("a");
    let certs = TempDir::new("certs");
    let cfg = "[entrypoints.websecure]\naddress = \"127.0.0.1:0\"\ntls = true\n\
               proxy_protocol = { trusted = [\"127.0.0.1/32\"] }\n\n\
               [admin]\naddress = \"127.0.0.1:0\"\n\n"
        .to_string()
        + &cert_entry(&write_cert(&certs.0, "a", &["a.test"]))
        + &route("a.test", "/", &[a.addr], "");
    let w = Wharf::start(&cfg);
    let tls = w.ep("websecure");
    rt().block_on(async {
        let mut tcp = TcpStream::connect(tls).await.unwrap();
        tcp.write_all(b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 443\r\n")
            .await
            .unwrap();
        let s = connect_over(tcp, "a.test", &[b"http/1.1"]).await.unwrap();
        assert_eq!(served_names(&s), ["a.test"]);
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = hyper::Request::get("/pp")
            .header("host", "a.test")
            .body(Empty::<Bytes>::new())
            .unwrap();
        assert_eq!(send.send_request(req).await.unwrap().status(), 200);
    });
    let seen = a.last();
    assert_eq!(seen.header("x-real-ip"), Some("192.0.2.7"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
}
