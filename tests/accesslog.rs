//! End-to-end tests of the access log (`[log] access`): the real binary writing
//! JSON or combined lines to a file or standard output, hostile requests, a file
//! that cannot be opened at start, writes that fail later, and log rotation by
//! SIGHUP. Every wait is a readiness wait (a line in a file, a log line, a
//! metric).

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use common::tls::AnyCert;
use common::*;

/// The JSON fields, all present on every line (docs/config.md).
const FIELDS: [&str; 14] = [
    "time",
    "client",
    "host",
    "method",
    "path",
    "protocol",
    "status",
    "bytes",
    "duration_ms",
    "route",
    "backend",
    "tls",
    "referer",
    "user_agent",
];

fn log_section(format: &str, file: &Path) -> String {
    format!(
        "[log]\naccess = \"{format}\"\naccess_file = \"{}\"\n\n",
        file.display()
    )
}

fn named(name: &str, host: &str, backends: &[SocketAddr], extra: &str) -> String {
    route(host, "/", backends, &format!("name = \"{name}\"\n{extra}"))
}

/// Waits until `path` holds at least `n` complete lines; returns them all.
fn wait_lines(path: &Path, n: usize) -> Vec<String> {
    let mut lines = Vec::new();
    wait_until(&format!("{n} lines in {}", path.display()), WAIT, || {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        // Only complete lines: a batch may be half written when read.
        let complete = text.rfind('\n').map_or("", |i| &text[..=i]);
        lines = complete.lines().map(String::from).collect();
        lines.len() >= n
    });
    lines
}

fn parse(line: &str) -> serde_json::Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
}

#[test]
fn json_lines_for_routed_unrouted_failed_and_refused_requests() {
    let b = Backend::start("b1");
    let dead = DeadAddr::new();
    let dir = TempDir::new("accesslog-json");
    let file = dir.0.join("access.log");
    let cfg = base_config()
        + &log_section("json", &file)
        + &named("app", "app.test", &[b.addr], "")
        + &named("dead", "dead.test", &[dead.addr], "")
        + &named(
            "limited",
            "limited.test",
            &[b.addr],
            "ratelimit = { rate = \"1/m\", burst = 1 }\n",
        );
    let w = Wharf::start(&cfg);
    let web = w.ep("web");

    let mut bodies = Vec::new();
    let r = raw(
        web,
        b"GET /hello?x=1&y=2 HTTP/1.1\r\nHost: app.test\r\nUser-Agent: test-agent/1.0\r\n\
          Referer: http://ref.test/page\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    bodies.push(("/hello?x=1&y=2", r.body.len()));
    let r = get(web, "nope.test", "/unrouted");
    assert_eq!(r.status, 404);
    bodies.push(("/unrouted", r.body.len()));
    let r = get(web, "dead.test", "/down");
    assert_eq!(r.status, 502);
    bodies.push(("/down", r.body.len()));
    assert_eq!(get(web, "limited.test", "/first").status, 200);
    let r = get(web, "limited.test", "/second");
    assert_eq!(r.status, 429);
    bodies.push(("/second", r.body.len()));
    // A hostile request: quotes in the path and backslashes in the query (which
    // the URI parser lets through; a backslash in the path is refused, 400), a quote, a tab and a byte that is not UTF-8 in the
    // User-Agent, an encoded newline.
    let r = raw(
        web,
        b"GET /a\"b{\"k\":\"v\"}?q=\\c\\x%0A HTTP/1.1\r\nHost: app.test\r\n\
          User-Agent: evil\" 200 0 \"-\" \"x\tz\xff\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 200);

    let lines = wait_lines(&file, 6);
    assert_eq!(lines.len(), 6, "{lines:#?}");
    let all: Vec<serde_json::Value> = lines.iter().map(|l| parse(l)).collect();
    for v in &all {
        let obj = v.as_object().unwrap();
        assert_eq!(obj.len(), FIELDS.len(), "{v}");
        for f in FIELDS {
            assert!(obj.contains_key(f), "no `{f}` in {v}");
        }
        // 2026-11-30T12:34:56.789Z
        let t = v["time"].as_str().unwrap();
        assert_eq!(t.len(), 24, "{t}");
        assert!(
            t.ends_with('Z') && &t[10..11] == "T" && &t[19..20] == ".",
            "{t}"
        );
        assert_eq!(v["client"], "127.0.0.1");
        assert_eq!(v["protocol"], "HTTP/1.1");
        assert_eq!(v["method"], "GET");
        assert!(v["tls"].is_null());
        assert!(v["duration_ms"].as_f64().unwrap() >= 0.0, "{v}");
    }
    let by_path = |p: &str| {
        all.iter()
            .find(|v| v["path"] == p)
            .unwrap_or_else(|| panic!("no line for {p}: {lines:#?}"))
    };
    // Bytes are the body bytes the client got.
    for (path, len) in bodies {
        assert_eq!(by_path(path)["bytes"], len as u64, "{path}");
    }

    let ok = by_path("/hello?x=1&y=2");
    assert_eq!(ok["status"], 200);
    assert_eq!(ok["host"], "app.test");
    assert_eq!(ok["route"], "app");
    assert_eq!(ok["backend"], b.addr.to_string());
    assert_eq!(ok["bytes"], 2);
    assert_eq!(ok["referer"], "http://ref.test/page");
    assert_eq!(ok["user_agent"], "test-agent/1.0");

    let unrouted = by_path("/unrouted");
    assert_eq!(unrouted["status"], 404);
    assert_eq!(unrouted["host"], "nope.test");
    assert!(unrouted["route"].is_null() && unrouted["backend"].is_null());
    assert!(unrouted["referer"].is_null() && unrouted["user_agent"].is_null());

    let failed = by_path("/down");
    assert_eq!(failed["status"], 502);
    assert_eq!(failed["route"], "dead");
    assert_eq!(failed["backend"], dead.addr.to_string());

    let refused = by_path("/second");
    assert_eq!(refused["status"], 429);
    assert_eq!(refused["route"], "limited");
    // Refused before a backend was picked.
    assert!(refused["backend"].is_null());

    let hostile = by_path(r#"/a"b{"k":"v"}?q=\c\x%0A"#);
    assert_eq!(hostile["user_agent"], "evil\" 200 0 \"-\" \"x\tz\u{fffd}");
    // Escaped in the line itself: the quote, the tab, the byte.
    let raw_line = lines.iter().find(|l| l.contains("evil")).unwrap();
    assert!(
        raw_line.contains(r#""user_agent":"evil\" 200 0 \"-\" \"x\u0009z\ufffd""#),
        "{raw_line}"
    );

    assert_eq!(w.metric("wharf_accesslog_dropped_total"), Some(0.0));
}

#[test]
fn combined_lines_have_apaches_shape_and_escape_hostile_values() {
    let b = Backend::start("b1");
    let dir = TempDir::new("accesslog-combined");
    let file = dir.0.join("access.log");
    let cfg =
        base_config() + &log_section("combined", &file) + &named("app", "app.test", &[b.addr], "");
    let w = Wharf::start(&cfg);
    let web = w.ep("web");

    let r = raw(
        web,
        b"GET /x?y=1 HTTP/1.1\r\nHost: app.test\r\nUser-Agent: agent/1\r\n\
          Referer: http://ref.test/\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    let first = wait_lines(&file, 1);
    let r = raw(
        web,
        b"GET /a\"b{\"k\":\"v\"}?q=\\c\\x%0A HTTP/1.1\r\nHost: app.test\r\n\
          User-Agent: evil\" 200 0 \"-\" \"x\tz\xff\r\nReferer: \"\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    let r = get(web, "nope.test", "/");
    assert_eq!(r.status, 404);
    let lines = wait_lines(&file, 3);
    assert_eq!(lines.len(), 3, "{lines:#?}");
    assert_eq!(lines[0], first[0]);

    // 127.0.0.1 - - [30/Nov/2026:12:34:56 +0000] "GET /x?y=1 HTTP/1.1" 200 2
    //   "http://ref.test/" "agent/1" host="app.test" route="app" backend=... tls=- duration_ms=0.123
    let l = &lines[0];
    let rest = l
        .strip_prefix("127.0.0.1 - - [")
        .unwrap_or_else(|| panic!("{l}"));
    let (time, rest) = rest.split_once("] ").unwrap();
    assert_eq!(time.len(), 26, "{time}");
    assert_eq!(&time[2..3], "/");
    assert_eq!(&time[6..7], "/");
    assert!(time.ends_with(" +0000"), "{time}");
    let expected = format!(
        "\"GET /x?y=1 HTTP/1.1\" 200 2 \"http://ref.test/\" \"agent/1\" host=\"app.test\" \
         route=\"app\" backend={} tls=- duration_ms=",
        b.addr
    );
    let ms = rest
        .strip_prefix(&expected)
        .unwrap_or_else(|| panic!("{rest}\nexpected {expected}..."));
    let (whole, frac) = ms.split_once('.').unwrap();
    assert!(whole.parse::<u64>().is_ok() && frac.len() == 3, "{ms}");

    // The hostile request: one line, its quotes, backslashes, tab and byte
    // escaped as Apache does, so no field can be forged.
    let h = &lines[1];
    assert!(h.starts_with("127.0.0.1 - - ["), "{h}");
    assert!(
        h.contains(
            r#"] "GET /a\"b{\"k\":\"v\"}?q=\\c\\x%0A HTTP/1.1" 200 2 "\"" "evil\" 200 0 \"-\" \"x\x09z\xff" host="app.test" route="app" "#
        ),
        "{h}"
    );

    // Unrouted: no route, no backend, the 404 body's length.
    let n = &lines[2];
    assert!(
        n.contains(&format!(
            "\"GET / HTTP/1.1\" 404 {} \"-\" \"-\" host=\"nope.test\" route=- backend=- tls=- ",
            r.body.len()
        )),
        "{n}"
    );
}

/// Starts the binary with its standard output piped; returns it, the `web`
/// address and the lines of its standard output, once it is ready.
fn start_piped(
    config: &str,
    dir: &Path,
) -> (std::process::Child, SocketAddr, mpsc::Receiver<String>) {
    let path = dir.join("wharf.toml");
    std::fs::write(&path, config).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_wharf"))
        .args(["--log-format", "json", "run", "--config"])
        .arg(&path)
        .env("WHARF_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Both pipes are read on threads of their own, so the process never blocks
    // on a full pipe and the test never blocks on a silent one.
    let lines = |r: Box<dyn Read + Send>| {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(r).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        rx
    };
    let stderr = lines(Box::new(child.stderr.take().unwrap()));
    let stdout = lines(Box::new(child.stdout.take().unwrap()));
    let mut web = None;
    loop {
        let l = stderr.recv_timeout(WAIT).expect("wharf did not get ready");
        let v: serde_json::Value = serde_json::from_str(&l).unwrap_or_default();
        if v["message"] == "entrypoint listening" && v["entrypoint"] == "web" {
            web = v["address"].as_str().and_then(|a| a.parse().ok());
        }
        if v["message"] == "wharf is ready" {
            break;
        }
    }
    (child, web.expect("no web entrypoint logged"), stdout)
}

#[test]
fn combined_lines_go_to_standard_output_by_default() {
    let b = Backend::start("b1");
    let dir = TempDir::new("accesslog-stdout");
    let cfg = base_config()
        + "[log]\naccess = \"combined\"\n\n"
        + &named("app", "app.test", &[b.addr], "");
    let (mut child, web, stdout) = start_piped(&cfg, &dir.0);
    assert_eq!(get(web, "app.test", "/out").status, 200);
    // Arrives once the writer flushes (the queue ran empty).
    let line = stdout.recv_timeout(WAIT);
    let _ = child.kill();
    let _ = child.wait();
    let line = line.expect("no access log line on standard output");
    assert!(line.starts_with("127.0.0.1 - - ["), "{line}");
    assert!(
        line.contains("\"GET /out HTTP/1.1\" 200 2 \"-\" \"-\" host=\"app.test\" route=\"app\""),
        "{line}"
    );
}

/// Runs `wharf run` on `config` and returns its exit code and standard error;
/// fails if it is still running after [`WAIT`].
fn run_to_exit(config: &str, dir: &Path) -> (Option<i32>, String) {
    let path = dir.join("wharf.toml");
    std::fs::write(&path, config).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_wharf"))
        .args(["run", "--config"])
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("wharf did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (status.code(), err)
}

#[test]
fn an_access_file_that_cannot_be_opened_stops_the_start_with_exit_2() {
    let dir = TempDir::new("accesslog-bad");
    // A directory, then a file in a directory that does not exist (the tests
    // run as root, so a permission would not stop it).
    let missing = dir.0.join("no-such-dir").join("access.log");
    for (file, why) in [
        (dir.0.clone(), "Is a directory"),
        (missing.clone(), "No such file or directory"),
    ] {
        let cfg = base_config() + &log_section("json", &file);
        let (code, err) = run_to_exit(&cfg, &dir.0);
        assert_eq!(code, Some(2), "{err}");
        let expected = format!("[log] access_file `{}`: cannot open: {why}", file.display());
        assert!(err.contains(&expected), "{err}\nexpected {expected}");
    }
    // Nothing was created meanwhile.
    assert!(!missing.parent().unwrap().exists());
}

#[test]
fn writes_that_fail_later_are_counted_and_logged_once_never_blocking() {
    let b = Backend::start("b1");
    // Opens, but every write fails (ENOSPC).
    let cfg = base_config()
        + &log_section("json", Path::new("/dev/full"))
        + &named("app", "app.test", &[b.addr], "");
    let mut w = Wharf::start(&cfg);
    let web = w.ep("web");
    for i in 0..20 {
        assert_eq!(get(web, "app.test", &format!("/{i}")).status, 200);
    }
    wait_until("20 dropped lines counted", WAIT, || {
        w.metric("wharf_accesslog_dropped_total").unwrap_or(0.0) >= 20.0
    });
    w.wait_log("access log: cannot write to /dev/full").unwrap();
    for i in 0..20 {
        assert_eq!(get(web, "app.test", &format!("/more{i}")).status, 200);
    }
    wait_until("40 dropped lines counted", WAIT, || {
        w.metric("wharf_accesslog_dropped_total").unwrap_or(0.0) >= 40.0
    });
    let errors = w
        .logs()
        .into_iter()
        .filter(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.contains("cannot write"))
        })
        .count();
    assert_eq!(errors, 1, "logged once, not per line or per batch");
}

#[test]
fn sighup_reopens_the_file_after_rotation() {
    let b = Backend::start("b1");
    let dir = TempDir::new("accesslog-rotate");
    let file = dir.0.join("access.log");
    let cfg =
        base_config() + &log_section("json", &file) + &named("app", "app.test", &[b.addr], "");
    let mut w = Wharf::start(&cfg);
    let web = w.ep("web");
    assert_eq!(get(web, "app.test", "/before").status, 200);
    wait_lines(&file, 1);
    // logrotate's way: move the file, then SIGHUP.
    let rotated: PathBuf = dir.0.join("access.log.1");
    std::fs::rename(&file, &rotated).unwrap();
    let before = w.reload(&cfg);
    w.wait_log_after("access log reopened", before).unwrap();
    assert_eq!(get(web, "app.test", "/after").status, 200);
    let new = wait_lines(&file, 1);
    assert_eq!(new.len(), 1);
    assert_eq!(parse(&new[0])["path"], "/after");
    let old = std::fs::read_to_string(&rotated).unwrap();
    assert_eq!(old.lines().count(), 1);
    assert_eq!(parse(old.lines().next().unwrap())["path"], "/before");
}

/// One HTTP/1.1 GET over TLS (any certificate accepted); returns the status.
fn tls_get(addr: SocketAddr, host: &str, path: &str) -> u16 {
    let p = wharf_tls::provider();
    let cfg = rustls::ClientConfig::builder_with_provider(p.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(p)))
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(host.to_string()).unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(cfg), name).unwrap();
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(WAIT)).unwrap();
    let mut s = rustls::StreamOwned::new(conn, tcp);
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = Vec::new();
    // A peer that closes without close_notify is an error here; what was read
    // before it is what counts.
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"))
}

#[test]
fn tls_requests_log_the_tls_version() {
    let b = Backend::start("b1");
    let dir = TempDir::new("accesslog-tls");
    let file = dir.0.join("access.log");
    let cfg = "[entrypoints.websecure]\naddress = \"127.0.0.1:0\"\ntls = true\n\n\
               [admin]\naddress = \"127.0.0.1:0\"\n\n[docker]\nmode = \"off\"\n\n"
        .to_string()
        + &log_section("json", &file)
        + &format!(
            "[[routes]]\nname = \"secure\"\nhost = \"app.test\"\nupstream = \"static:{}\"\n\
             tls = \"acme\"\n\n",
            b.addr
        );
    let w = Wharf::start(&cfg);
    assert_eq!(tls_get(w.ep("websecure"), "app.test", "/s"), 200);
    let lines = wait_lines(&file, 1);
    let v = parse(&lines[0]);
    assert_eq!(v["tls"], "TLSv1.3", "{v}");
    assert_eq!(v["route"], "secure");
    assert_eq!(v["host"], "app.test");
    assert_eq!(v["status"], 200);
}

#[test]
fn a_request_the_client_abandons_before_the_response_is_logged_as_499() {
    let b = Backend::start("b1");
    let dir = TempDir::new("accesslog-499");
    let file = dir.0.join("access.log");
    let cfg =
        base_config() + &log_section("json", &file) + &named("app", "app.test", &[b.addr], "");
    let w = Wharf::start(&cfg);
    let web = w.ep("web");
    let started = b.started();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let lines = rt.block_on(async {
        // HTTP/2 with prior knowledge; the client resets the stream while the
        // backend is still answering.
        let mut send = common::h2c(web).await;
        let req = hyper::Request::get("http://app.test/slow?ms=10000")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        let resp = send.send_request(req);
        tokio::select! {
            _ = resp => panic!("answered before the backend was reached"),
            _ = tokio::time::timeout(WAIT, started.notified()) => {}
        }
        // `resp` is dropped here: RST_STREAM(CANCEL), sent by the connection
        // task, which runs while this waits for the line.
        let file = file.clone();
        tokio::task::spawn_blocking(move || wait_lines(&file, 1))
            .await
            .unwrap()
    });
    let v = parse(&lines[0]);
    assert_eq!(v["status"], 499, "{v}");
    assert_eq!(v["protocol"], "HTTP/2.0");
    assert_eq!(v["path"], "/slow?ms=10000");
    assert_eq!(v["host"], "app.test");
    assert_eq!(v["route"], "app");
    assert_eq!(v["backend"], b.addr.to_string());
    assert_eq!(v["bytes"], 0);
}
