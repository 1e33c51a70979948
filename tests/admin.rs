//! End-to-end tests of the admin listener (issue 10): the bearer token, the Host
//! check, `/ping` readiness, a flood on the admin port next to proxied traffic,
//! and the dashboard rendered by a real headless Chromium.
// Test helpers: a failed setup step should abort the test loudly.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::docker::Engine;
use common::*;

const TOKEN: &str = "e2e-admin-token-5f1c0a9d7b3e";

/// Held by the tests that time requests or load the machine (Chromium), so
/// they do not run at the same time.
static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn heavy() -> std::sync::MutexGuard<'static, ()> {
    HEAVY
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `GET path` on `addr` with `host`, and `Authorization: Bearer <token>` when
/// given.
fn admin_get(addr: SocketAddr, host: &str, path: &str, token: Option<&str>) -> RawResponse {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    raw(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{auth}Connection: close\r\n\r\n")
            .as_bytes(),
    )
}

/// The base config with the admin token read from a file (as from a swarm
/// secret) and one extra admin host name.
fn with_token(dir: &Path, extra_admin: &str) -> String {
    let file = dir.join("admin-token");
    std::fs::write(&file, format!("{TOKEN}\n")).unwrap();
    base_config().replace(
        "[admin]\naddress = \"127.0.0.1:0\"\n",
        &format!(
            "[admin]\naddress = \"127.0.0.1:0\"\ntoken_file = \"{}\"\n\
             hosts = [\"wharf.example.org\"]\n{extra_admin}",
            file.display()
        ),
    )
}

#[test]
fn token_is_required_for_everything_but_ping() {
    let a = Backend::start("a");
    let secrets = TempDir::new("secret");
    let cfg = with_token(&secrets.0, "") + &route("app.test", "/", &[a.addr], "");
    let w = Wharf::start(&cfg);
    let host = "127.0.0.1";
    // Ready once started, with or without credentials.
    let r = admin_get(w.admin, host, "/ping", None);
    assert_eq!((r.status, r.text().as_str()), (200, "OK"));
    for path in [
        "/",
        "/metrics",
        "/api/routes",
        "/api/certificates",
        "/api/errors",
    ] {
        let missing = admin_get(w.admin, host, path, None);
        let wrong = admin_get(w.admin, host, path, Some("e2e-admin-token-5f1c0a9d7b3f"));
        for r in [&missing, &wrong] {
            assert_eq!(r.status, 401, "{path}: {}", r.text());
            assert_eq!(r.header("www-authenticate"), Some("Bearer"), "{path}");
        }
        // No detail: a missing and a wrong token read the same.
        assert_eq!(missing.body, wrong.body, "{path}");
        assert_eq!(missing.text(), "401 Unauthorized\n");
        let ok = admin_get(w.admin, host, path, Some(TOKEN));
        assert_eq!(ok.status, 200, "{path}: {}", ok.text());
    }
    let routes = admin_get(w.admin, host, "/api/routes", Some(TOKEN));
    let v: serde_json::Value = serde_json::from_slice(&routes.body).unwrap();
    assert_eq!(v[0]["hosts"][0], "app.test", "{v:#}");
    // The dashboard page takes the token from its URL (a browser opening it
    // cannot send a header); the API does not.
    let page = admin_get(w.admin, host, &format!("/?token={TOKEN}"), None);
    assert_eq!(page.status, 200);
    assert!(page
        .header("content-type")
        .is_some_and(|c| c.starts_with("text/html")));
    assert!(page
        .header("content-security-policy")
        .is_some_and(|c| c.contains("frame-ancestors 'none'")));
    let api = admin_get(w.admin, host, &format!("/api/routes?token={TOKEN}"), None);
    assert_eq!(api.status, 401);
    // HTTP/2 with the token too (prior knowledge, as Prometheus does not, but
    // a client may).
    let status = rt().block_on(async {
        let mut send = common::h2c(w.admin).await;
        let req = |auth: Option<&str>| {
            let mut b = hyper::Request::get(format!("http://{}/api/errors", w.admin));
            if let Some(t) = auth {
                b = b.header("authorization", format!("Bearer {t}"));
            }
            b.body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap()
        };
        let without = send.send_request(req(None)).await.unwrap().status();
        let with = send.send_request(req(Some(TOKEN))).await.unwrap().status();
        (without.as_u16(), with.as_u16())
    });
    assert_eq!(status, (401, 200));
    // Proxied traffic never needs the admin token.
    assert_eq!(get(w.ep("web"), "app.test", "/").status, 200);
}

#[test]
fn only_its_own_host_names_are_answered() {
    let a = Backend::start("a");
    let secrets = TempDir::new("secret");
    let cfg = with_token(&secrets.0, "") + &route("app.test", "/", &[a.addr], "");
    let w = Wharf::start(&cfg);
    let port = w.admin.port();
    for (host, status) in [
        (format!("127.0.0.1:{port}"), 200),
        (format!("localhost:{port}"), 200),
        (format!("wharf.example.org:{port}"), 200),
        // A swarm service name (a single label: no public DNS answers it).
        (format!("wharf:{port}"), 200),
        // DNS rebinding: the attacker's name, now resolving to 127.0.0.1.
        (format!("rebind.attacker.example:{port}"), 421),
        (format!("127.0.0.1.nip.io:{port}"), 421),
    ] {
        let r = admin_get(w.admin, &host, "/api/routes", Some(TOKEN));
        assert_eq!(r.status, status, "{host}: {}", r.text());
    }
    // Even without a token: the page of a rebinding attacker gets nothing.
    let open = Wharf::start(&(base_config() + &route("app.test", "/", &[a.addr], "")));
    let r = admin_get(open.admin, "rebind.attacker.example", "/api/routes", None);
    assert_eq!(r.status, 421);
    assert!(!r.text().contains("app.test"));
    let r = admin_get(open.admin, "localhost", "/api/routes", None);
    assert_eq!(r.status, 200);
    // /ping answers whatever the host (a load balancer's probe).
    let r = admin_get(open.admin, "lb-probe.example.net", "/ping", None);
    assert_eq!(r.status, 200);
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// One keep-alive HTTP/1.1 exchange on `s`; returns the status and the time it took.
fn timed_get(s: &mut TcpStream, host: &str) -> (u16, Duration) {
    let t0 = Instant::now();
    s.write_all(format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
        .unwrap();
    let r = read_response(s);
    (r.status, t0.elapsed())
}

#[test]
fn a_flood_on_the_admin_port_does_not_slow_proxied_requests() {
    let _heavy = heavy();
    let a = Backend::start("a");
    // One worker thread: anything the admin listener did for the flood would be
    // time the proxy could not use.
    let cfg = base_config().replace(
        "[admin]\naddress = \"127.0.0.1:0\"\n",
        "[admin]\naddress = \"127.0.0.1:0\"\nheader_read_timeout = \"1s\"\n\
         idle_timeout = \"2s\"\nmax_connections = 8\n\n[runtime]\nworker_threads = 1\n",
    ) + &route("app.test", "/", &[a.addr], "");
    let w = Wharf::start(&cfg);
    let web = w.ep("web");
    let mut client = TcpStream::connect(web).unwrap();
    client.set_read_timeout(Some(WAIT)).unwrap();
    // One request on the kept-alive connection, one on a new connection (the
    // entrypoint's accept loop shares the runtime too).
    let mut pair = |out: &mut Vec<Duration>| {
        let (status, took) = timed_get(&mut client, "app.test");
        assert_eq!(status, 200);
        out.push(took);
        let t = Instant::now();
        assert_eq!(get(web, "app.test", "/").status, 200);
        out.push(t.elapsed());
    };
    let mut before = Vec::new();
    for _ in 0..50 {
        pair(&mut before);
    }
    // The flood: 300 connections that never finish a head (slowloris), each
    // dribbling a byte now and then, and as many that say nothing at all.
    let stop = Arc::new(AtomicBool::new(false));
    let admin = w.admin;
    let flooder = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut conns: Vec<TcpStream> = Vec::new();
            for i in 0..600 {
                let Ok(mut s) = TcpStream::connect(admin) else {
                    continue;
                };
                if i % 2 == 0 {
                    let _ = s.write_all(b"GET /api/routes HTTP/1.1\r\nHost: localhost\r\nX-A: ");
                }
                conns.push(s);
            }
            let mut closed_by_wharf = 0;
            while !stop.load(Ordering::Relaxed) {
                for s in &mut conns {
                    let _ = s.write_all(b"a");
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            for s in &mut conns {
                s.set_nonblocking(true).unwrap();
                let mut b = [0u8; 64];
                match s.read(&mut b) {
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Ok(n) if n > 0 => {}
                    _ => closed_by_wharf += 1,
                }
            }
            closed_by_wharf
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    // While the flood lasts (past the admin's header_read_timeout, so its slots
    // turn over), proxied requests take what they took before.
    let mut during = Vec::new();
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(3) {
        pair(&mut during);
        std::thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::Relaxed);
    let closed = flooder.join().unwrap();
    before.sort();
    during.sort();
    let p = |v: &[Duration], q: f64| v[((v.len() - 1) as f64 * q) as usize];
    let (b50, b99) = (p(&before, 0.5), p(&before, 0.99));
    let (d50, d99) = (p(&during, 0.5), p(&during, 0.99));
    eprintln!(
        "proxied: before p50 {b50:?} p99 {b99:?}; during the admin flood p50 {d50:?} \
         p99 {d99:?} max {:?} ({} requests); flood connections closed by wharf: {closed}",
        during[during.len() - 1],
        during.len()
    );
    // Generous for a loaded CI machine; an admin listener that held the only
    // worker (for a head, a render or an accept storm) shows as seconds.
    assert!(
        d99 < Duration::from_millis(500),
        "proxied requests slowed by an admin flood: p99 {d99:?}"
    );
    // The slots were given back: timed-out flood connections were closed, and
    // the admin listener answers again.
    assert!(closed > 0, "no flood connection was ever closed");
    wait_until("the admin listener answers again", WAIT, || {
        admin_get(w.admin, "localhost", "/api/routes", None).status == 200
    });
}

// ---------------------------------------------------------------------------
// The dashboard in a real browser.

/// Debian's Chromium, installed when missing (as tests/run.sh, which `.ci/run`
/// calls, does). The dashboard test is part of the suite: without Chromium it
/// fails, it does not pass unrendered.
fn chromium() -> PathBuf {
    let find = || {
        ["chromium", "chromium-browser"].iter().find_map(|c| {
            let out = Command::new("sh")
                .args(["-c", &format!("command -v {c}")])
                .output()
                .ok()?;
            let p = String::from_utf8_lossy(&out.stdout).trim().to_string();
            (out.status.success() && !p.is_empty()).then(|| PathBuf::from(p))
        })
    };
    if let Some(p) = find() {
        return p;
    }
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0"));
    let sudo: &[&str] = if root { &[] } else { &["sudo", "-n"] };
    for args in [
        &["apt-get", "update", "-q"][..],
        &[
            "apt-get",
            "install",
            "-y",
            "-q",
            "-o",
            "DPkg::Lock::Timeout=300",
            "chromium",
        ][..],
    ] {
        let all: Vec<&str> = sudo.iter().chain(args).copied().collect();
        let _ = Command::new(all[0]).args(&all[1..]).status();
    }
    find().unwrap_or_else(|| {
        panic!(
            "Chromium is not installed and could not be installed here (no root, no \
             `sudo -n`, or apt failed): the dashboard test needs it. Run the suite with \
             tests/run.sh, which installs it, or `apt-get install chromium`."
        )
    })
}

/// Runs headless Chromium on `url` with `args`, letting the page's scripts and
/// fetches run for a few (virtual) seconds first; returns its stdout.
fn headless(chromium: &Path, profile: &Path, url: &str, args: &[&str]) -> String {
    let out = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
            "--virtual-time-budget=4000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Writes a self-signed certificate for `names` that expires in `days` days
/// (at midnight UTC), as `<stem>.pem` and `<stem>.key` in `dir`.
fn write_cert(dir: &Path, stem: &str, names: &[&str], days: i64) -> (PathBuf, PathBuf) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let (y, m, d) = civil(now.div_euclid(86_400) + days);
    params.not_after = rcgen::date_time_ymd(y as i32, m as u8, d as u8);
    let cert = params.self_signed(&key).unwrap();
    let (c, k) = (
        dir.join(format!("{stem}.pem")),
        dir.join(format!("{stem}.key")),
    );
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (c, k)
}

/// Days since 1970-01-01 as (year, month, day), Howard Hinnant's algorithm.
fn civil(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// The text of the element whose opening tag contains `marker`, tags stripped
/// (enough for the DOM Chromium dumps: the elements looked at do not nest in
/// their own kind).
fn text_after(dom: &str, marker: &str) -> String {
    let at = dom
        .find(marker)
        .unwrap_or_else(|| panic!("no {marker} in the DOM:\n{dom}"));
    let start = dom[..at].rfind('<').unwrap();
    let rest = &dom[start..];
    let open = rest.find('>').unwrap() + 1;
    let tag = rest[1..].split([' ', '>']).next().unwrap();
    let close = rest.find(&format!("</{tag}>")).unwrap_or(rest.len());
    strip_tags(&rest[open..close])
}

fn strip_tags(html: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => {
                in_tag = true;
                out.push(' ');
            }
            '>' => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[test]
fn the_dashboard_renders_routes_health_certificates_errors_and_rates_in_chromium() {
    let chromium = chromium();
    let _heavy = heavy();
    // Docker: a labelled container that is routed and one whose labels have a
    // typo, a label error the dashboard must show.
    let e = Engine::new("dash");
    let net = e.bridge("net");
    let image = e.backend_image();
    let app_host = format!("{}.test", e.name("app"));
    let live = Backend::start("live");
    let dead = DeadAddr::new();
    let certs = TempDir::new("certs");
    let (cert, key) = write_cert(&certs.0, "shop", &["shop.example.org"], 45);
    let secrets = TempDir::new("secret");
    let hc = "healthcheck = { path = \"/health\", interval = \"200ms\", timeout = \"100ms\", \
              rise = 1, fall = 1 }";
    let cfg = with_token(&secrets.0, "").replace(
        "[docker]\nmode = \"off\"\n",
        &format!(
            "[docker]\nmode = \"containers\"\nnetwork = \"{net}\"\npoll_interval = \"500ms\"\n"
        ),
    ) + &format!(
        "[[tls.certificates]]\ncert = \"{}\"\nkey = \"{}\"\n\n",
        cert.display(),
        key.display()
    ) + &route(
        "shop.example.org",
        "/",
        &[live.addr, dead.addr],
        &format!("name = \"shop\"\n{hc}"),
    )
        // Two file routes claiming the same host and path: a conflict.
        + &route("dup.example.org", "/", &[live.addr], "name = \"dup-first\"")
        + &route("dup.example.org", "/", &[live.addr], "name = \"dup-second\"");
    let mut w = Wharf::start(&cfg);
    w.wait_log("docker: connected and listed").unwrap();
    e.run(
        "app",
        &[
            "--network",
            &net,
            "--label",
            "wharf.enable=true",
            "--label",
            &format!("wharf.host={app_host}"),
            &image,
        ],
    );
    let typo = e.run(
        "typo",
        &[
            "--network",
            &net,
            "--label",
            "wharf.enable=true",
            "--label",
            &format!("wharf.hots=typo.{app_host}"),
            &image,
        ],
    );
    let admin = |path: &str| -> serde_json::Value {
        let r = admin_get(w.admin, "127.0.0.1", path, Some(TOKEN));
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        serde_json::from_slice(&r.body).unwrap()
    };
    wait_until("the dead backend is marked down", WAIT, || {
        let routes = admin("/api/routes");
        routes
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["name"] == "shop")
            .flat_map(|r| r["backends"].as_array().cloned().unwrap_or_default())
            .any(|b| b["health"] == "down")
    });
    let docker_wait = Duration::from_secs(15);
    wait_until("the labelled container routed", docker_wait, || {
        admin("/api/routes").to_string().contains(&app_host)
    });
    wait_until("the label error in /api/errors", docker_wait, || {
        admin("/api/errors").to_string().contains(&typo)
    });
    let routes = admin("/api/routes");
    let app_route = routes
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["hosts"].to_string().contains(&app_host))
        .unwrap_or_else(|| panic!("no route for {app_host}: {routes:#}"))["name"]
        .as_str()
        .unwrap()
        .to_string();
    let errors = admin("/api/errors");
    let label_error = errors
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e.to_string().contains(&typo))
        .unwrap_or_else(|| panic!("no label error in /api/errors: {errors:#}"))
        .clone();
    assert!(
        label_error.to_string().contains("wharf.hots"),
        "{label_error}"
    );
    let label_message = label_error["message"].as_str().unwrap().to_string();
    let conflict = errors
        .as_array()
        .unwrap()
        .iter()
        .find_map(|e| {
            e["message"]
                .as_str()
                .filter(|m| m.contains("dup.example.org"))
        })
        .unwrap_or_else(|| panic!("no conflict in /api/errors: {errors:#}"))
        .to_string();
    let cert_view = admin("/api/certificates");
    let not_after = cert_view
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["names"][0] == "shop.example.org")
        .unwrap_or_else(|| panic!("no shop certificate: {cert_view:#}"))["not_after_unix"]
        .as_i64()
        .unwrap();

    // Traffic while the page loads, so requests/s has something to count.
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let (stop, web) = (stop.clone(), w.ep("web"));
        std::thread::spawn(move || {
            let mut s = TcpStream::connect(web).unwrap();
            s.set_read_timeout(Some(WAIT)).unwrap();
            while !stop.load(Ordering::Relaxed) {
                let (status, _) = timed_get(&mut s, "dup.example.org");
                assert_eq!(status, 200);
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    let profile = TempDir::new("chromium");
    let url = format!("http://127.0.0.1:{}/?token={TOKEN}", w.admin.port());
    let dom = headless(&chromium, &profile.0, &url, &["--dump-dom"]);
    let shot = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/dashboard.png");
    std::fs::create_dir_all(shot.parent().unwrap()).unwrap();
    let _ = std::fs::remove_file(&shot);
    headless(
        &chromium,
        &profile.0,
        &url,
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1280,900",
        ],
    );
    stop.store(true, Ordering::Relaxed);
    traffic.join().unwrap();

    // The banner (fetch failures, a refused token) stays hidden.
    assert!(dom.contains("id=\"banner\" hidden"), "{dom}");
    // Routes: host, both backends with their health.
    let shop = text_after(&dom, "data-route=\"shop\"");
    assert!(shop.contains("shop.example.org"), "{shop}");
    assert!(
        shop.contains(&format!("{} up", live.addr)),
        "live backend not shown up: {shop}"
    );
    assert!(
        shop.contains(&format!("{} down", dead.addr)),
        "dead backend not shown down: {shop}"
    );
    assert!(dom.contains("data-route=\"dup-first\""), "{dom}");
    // The route from the labelled container.
    let app = text_after(&dom, &format!("data-route=\"{app_route}\""));
    assert!(app.contains(&app_host), "{app}");
    // Requests/s per route, from two scrapes of wharf_requests_total.
    let rps = text_after(&dom, "data-rps=\"dup-first\"");
    assert!(
        rps.parse::<f64>().is_ok(),
        "requests/s of dup-first is not a number: {rps:?}"
    );
    let total = text_after(&dom, "id=\"t-rps\"");
    assert!(total.parse::<f64>().is_ok(), "total requests/s: {total:?}");
    // Certificates with days left (as the page computes them, give or take the
    // seconds between the two clocks).
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let days = (not_after - now).div_euclid(86_400);
    let certs_text = text_after(&dom, "id=\"certs\"");
    assert!(certs_text.contains("shop.example.org"), "{certs_text}");
    assert!(
        [days, days + 1]
            .iter()
            .any(|d| certs_text.contains(&format!("{d} days"))),
        "no '{days} days' left in: {certs_text}"
    );
    assert!((43..=45).contains(&days), "{days}");
    // The self-signed placeholder of a route still waiting for ACME shows no
    // date and no days (its certificate is valid for millennia).
    let words: Vec<&str> = certs_text.split_whitespace().collect();
    for w in words.windows(2) {
        if w[1].starts_with("day") {
            if let Ok(n) = w[0].parse::<i64>() {
                assert!(n <= 400, "{n} days left on the dashboard: {certs_text}");
            }
        }
    }
    // Errors: the conflict and the label error, as /api/errors words them.
    let errors_text = text_after(&dom, "id=\"errors\"");
    assert!(
        errors_text.contains(&conflict),
        "{conflict:?} not in: {errors_text}"
    );
    for (what, needle) in [
        ("label error", label_message.as_str()),
        ("label", "wharf.hots"),
        ("container", typo.as_str()),
    ] {
        assert!(
            errors_text.contains(needle),
            "the {what} {needle:?} is not on the dashboard: {errors_text}"
        );
    }
    let count = errors.as_array().unwrap().len();
    assert_eq!(count, 2, "a conflict and a label error: {errors:#}");
    assert_eq!(
        text_after(&dom, "id=\"t-errors\""),
        count.to_string(),
        "{dom}"
    );
    // The screenshot.
    let png = std::fs::read(&shot).unwrap_or_else(|e| panic!("{}: {e}", shot.display()));
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    eprintln!("dashboard screenshot: {}", shot.display());

    // Without the token, the page loads nothing.
    let denied = headless(
        &chromium,
        &profile.0,
        &format!("http://127.0.0.1:{}/", w.admin.port()),
        &["--dump-dom"],
    );
    assert!(!denied.contains("shop.example.org"), "{denied}");
}
