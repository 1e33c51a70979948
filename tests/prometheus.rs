//! Wharf's metrics as Prometheus sees them (issue 10): `promtool check metrics`
//! lints `/metrics` after traffic of every kind, and Debian's `prometheus`
//! scrapes a running Wharf under a short load. The test reads the request counts
//! and latency quantiles back through Prometheus's HTTP API, then evaluates every
//! PromQL expression of the shipped Grafana dashboard (deploy/grafana/wharf.json)
//! against that Prometheus: each must parse and return data.
//!
//! The real binary against real backends on loopback, every port chosen by the
//! kernel, every wait a readiness wait; Prometheus is killed on drop.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::pebble::free_port;
use common::*;

/// The name of the file certificate, its lifetime left at start.
const CERT_NAME: &str = "secure.test";
const CERT_DAYS: u64 = 30;

/// Panics with an install hint when `tool` is not on PATH.
fn require(tool: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "`{tool}` is not installed: `apt-get install prometheus` (tests/run.sh does this)"
    );
}

/// A self-signed certificate for [`CERT_NAME`] valid from yesterday for
/// [`CERT_DAYS`] days from now, as `cert.pem` and `cert.key` in `dir`.
fn write_cert(dir: &Path) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec![CERT_NAME.to_string()]).unwrap();
    params.not_before = epoch + (now - Duration::from_secs(86_400));
    params.not_after = epoch + (now + Duration::from_secs(CERT_DAYS * 86_400));
    let cert = params.self_signed(&key).unwrap();
    let (c, k) = (dir.join("cert.pem"), dir.join("cert.key"));
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    format!(
        "[[tls.certificates]]\ncert = \"{}\"\nkey = \"{}\"\n\n",
        c.display(),
        k.display()
    )
}

/// Wharf with every kind of series the dashboard shows: route `a` (health
/// checked), `b` (rate-limited: 10/s, burst 5), `c` (its one backend refuses
/// connections: 5xx), a file certificate, a TLS entrypoint beside the plain one.
struct Setup {
    w: Wharf,
    config: String,
    _a: Backend,
    _b: Backend,
    _dead: DeadAddr,
    _certs: TempDir,
}

fn setup() -> Setup {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let dead = DeadAddr::new();
    let certs = TempDir::new("prom-cert");
    let config = "[entrypoints.web]\naddress = \"127.0.0.1:0\"\n\n\
                  [entrypoints.websecure]\naddress = \"127.0.0.1:0\"\ntls = true\n\n\
                  [admin]\naddress = \"127.0.0.1:0\"\n\n[docker]\nmode = \"off\"\n\n"
        .to_string()
        + &write_cert(&certs.0)
        + &route(
            "a.test",
            "/",
            &[a.addr],
            "name = \"a\"\nhealthcheck = { path = \"/health\", interval = \"200ms\", timeout = \"150ms\" }",
        )
        + &route(
            "b.test",
            "/",
            &[b.addr],
            "name = \"b\"\nratelimit = { rate = \"10/s\", burst = 5 }",
        )
        + &route("c.test", "/", &[dead.addr], "name = \"c\"");
    let w = Wharf::start(&config);
    Setup {
        w,
        config,
        _a: a,
        _b: b,
        _dead: dead,
        _certs: certs,
    }
}

/// `GET path` on a new connection, or what went wrong (no panic: for polling).
fn try_get(addr: SocketAddr, path: &str) -> Result<RawResponse, String> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .map_err(|e| e.to_string())?;
    try_read_response(&mut s)
}

// ---------------------------------------------------------------------------
// 1. promtool

#[test]
fn metrics_pass_promtool_check_metrics() {
    require("promtool");
    let mut s = setup();
    // A reload, so that wharf_config_reloads_total has a series to lint.
    let config = s.config.clone();
    s.w.reload(&config);
    let web = s.w.ep("web");
    for i in 0..10 {
        let path = if i == 0 { "/slow?ms=30" } else { "/" };
        assert_eq!(get(web, "a.test", path).status, 200);
    }
    // A burst over the rate limit.
    let burst: Vec<u16> = (0..10).map(|_| get(web, "b.test", "/").status).collect();
    assert!(burst.contains(&200) && burst.contains(&429), "{burst:?}");
    for _ in 0..3 {
        assert_eq!(get(web, "nowhere.test", "/").status, 404);
        let r = get(web, "c.test", "/");
        assert!(r.status >= 500, "{r:?}");
    }

    let body = s.w.metrics();
    // Every kind of series is in what promtool lints.
    for series in [
        "wharf_requests_total{route=\"a\",code=\"200\",method=\"GET\"}",
        "wharf_requests_total{route=\"\",code=\"404\",method=\"GET\"}",
        "wharf_requests_total{route=\"b\",code=\"429\",method=\"GET\"}",
        "wharf_request_duration_seconds_bucket{",
        "wharf_upstream_duration_seconds_bucket{",
        "wharf_backend_up{",
        "wharf_backend_inflight{",
        "wharf_open_connections{",
        "wharf_ratelimited_total{route=\"b\"}",
        "wharf_tls_cert_not_after_seconds{name=\"secure.test\"}",
        "wharf_config_reloads_total{",
        "wharf_config_errors{",
        "wharf_routes ",
        "wharf_healthcheck_total{",
        "wharf_retries_total{",
        "process_cpu_seconds_total ",
    ] {
        assert!(body.contains(series), "no {series} in /metrics:\n{body}");
    }

    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}\nstdout:\n{}\nstderr:\n{}\n/metrics:\n{body}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------------------
// 2. Prometheus

/// Debian's `prometheus`, scraping one target every second; killed on drop.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
    _dir: TempDir,
}

/// One element of an instant vector (or a scalar, without labels).
#[derive(Debug, Clone)]
struct Sample {
    labels: BTreeMap<String, String>,
    value: f64,
}

impl Prometheus {
    /// Its port is picked just before it binds it, so another process may take
    /// it in between: Prometheus then exits, and is started again on another.
    fn start(target: SocketAddr) -> Prometheus {
        require("prometheus");
        let mut errors = Vec::new();
        for _ in 0..5 {
            match Self::try_start(target) {
                Ok(p) => return p,
                Err(e) => errors.push(e),
            }
        }
        panic!("prometheus did not start:\n{}", errors.join("\n"));
    }

    fn try_start(target: SocketAddr) -> Result<Prometheus, String> {
        let dir = TempDir::new("prometheus");
        let config = dir.0.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: wharf\n    static_configs:\n      - targets: [\"{target}\"]\n"
            ),
        )
        .unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.0.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting prometheus: {e}"))?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let (stderr, log2) = (child.stderr.take().unwrap(), log.clone());
        std::thread::spawn(move || {
            for l in BufReader::new(stderr).lines().map_while(Result::ok) {
                log2.lock().unwrap().push(l);
            }
        });
        let mut p = Prometheus {
            child,
            addr,
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = p.child.try_wait() {
                return Err(format!("prometheus exited ({status}):\n{}", p.logs()));
            }
            if try_get(addr, "/-/ready").is_ok_and(|r| r.status == 200) {
                return Ok(p);
            }
            if Instant::now() > deadline {
                return Err(format!("prometheus not ready in 30 s:\n{}", p.logs()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn logs(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// An instant query now: its samples, or Prometheus's error (a warning is one
    /// too).
    fn query(&self, q: &str) -> Result<Vec<Sample>, String> {
        let r = try_get(self.addr, &format!("/api/v1/query?query={}", urlencode(q)))?;
        let v: serde_json::Value = serde_json::from_slice(&r.body)
            .map_err(|e| format!("HTTP {}: {e}: {}", r.status, r.text()))?;
        if v["status"] != "success" {
            return Err(format!("{}: {}", v["errorType"], v["error"]));
        }
        if let Some(w) = v["warnings"].as_array().filter(|w| !w.is_empty()) {
            return Err(format!("warnings: {w:?}"));
        }
        let sample = |labels: &serde_json::Value, value: &serde_json::Value| Sample {
            labels: labels
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                .collect(),
            value: value[1]
                .as_str()
                .and_then(|s| s.parse().ok())
                .unwrap_or(f64::NAN),
        };
        let data = &v["data"];
        match data["resultType"].as_str() {
            Some("vector") => Ok(data["result"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|s| sample(&s["metric"], &s["value"]))
                .collect()),
            Some("scalar") => Ok(vec![sample(&serde_json::Value::Null, &data["result"])]),
            other => Err(format!("result type {other:?}: {data}")),
        }
    }

    /// The value of a query that must return exactly one sample.
    fn scalar(&self, q: &str) -> f64 {
        match self.query(q) {
            Ok(s) if s.len() == 1 => s[0].value,
            other => panic!("{q}: {other:?}"),
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The value of the sample whose `label` is `value`.
fn by(samples: &[Sample], label: &str, value: &str) -> Option<f64> {
    samples
        .iter()
        .find(|s| s.labels.get(label).map(String::as_str) == Some(value))
        .map(|s| s.value)
}

/// How long the load lasts: a few scrapes, so that rates see it rise.
const LOAD: Duration = Duration::from_secs(3);
/// Requests of the load: route `a` (every tenth `/slow?ms=100`), route `b`
/// (rate-limited), a host no route matches, route `c` (no backend answers).
const A: usize = 240;
const B: usize = 60;
const UNROUTED: usize = 20;
const C: usize = 10;

/// The load, spread evenly over [`LOAD`] with the four kinds interleaved, sent
/// by 8 clients (one request per connection). Returns (host, status) per request.
fn load(web: SocketAddr) -> Vec<(&'static str, u16)> {
    let mut jobs: Vec<(f64, &'static str, &'static str)> = Vec::new();
    for (host, n) in [
        ("a.test", A),
        ("b.test", B),
        ("nowhere.test", UNROUTED),
        ("c.test", C),
    ] {
        for k in 0..n {
            let path = if host == "a.test" && k % 10 == 9 {
                "/slow?ms=100"
            } else {
                "/"
            };
            jobs.push(((k as f64 + 0.5) / n as f64, host, path));
        }
    }
    jobs.sort_by(|x, y| x.0.total_cmp(&y.0));
    let jobs = Arc::new(jobs);
    let next = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let (jobs, next) = (jobs.clone(), next.clone());
            std::thread::spawn(move || {
                let mut out = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&(at, host, path)) = jobs.get(i) else {
                        return out;
                    };
                    // Pacing (not a wait for readiness): each request at its time.
                    let due = t0 + LOAD.mul_f64(at);
                    if let Some(d) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(d);
                    }
                    out.push((host, get(web, host, path).status));
                }
            })
        })
        .collect();
    workers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect()
}

#[test]
fn prometheus_scrapes_the_load_and_every_dashboard_query_returns_data() {
    let t0 = Instant::now();
    let mut s = setup();
    let prom = Prometheus::start(s.w.admin);
    let instance = s.w.admin.to_string();
    // Scraped before the load, so that every series has a sample before it.
    let waited = Instant::now();
    while !prom
        .query("up{job=\"wharf\"} == 1 and on (instance) wharf_routes == 3")
        .is_ok_and(|r| r.len() == 1)
    {
        assert!(
            waited.elapsed() < WAIT,
            "Wharf not scraped: {:?}\n{}",
            prom.query("up"),
            prom.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // A reload (SIGHUP), for wharf_config_reloads_total.
    let config = s.config.clone();
    s.w.reload(&config);

    let started = Instant::now();
    let sent = load(s.w.ep("web"));
    let took = started.elapsed();
    let count = |host: &str, ok: &dyn Fn(u16) -> bool| {
        sent.iter().filter(|(h, st)| *h == host && ok(*st)).count()
    };
    assert_eq!(count("a.test", &|st| st == 200), A, "{sent:?}");
    assert_eq!(count("nowhere.test", &|st| st == 404), UNROUTED, "{sent:?}");
    assert_eq!(count("c.test", &|st| st >= 500), C, "{sent:?}");
    let limited = count("b.test", &|st| st == 429);
    assert_eq!(count("b.test", &|st| st == 200) + limited, B, "{sent:?}");
    assert!((1..B).contains(&limited), "{limited} of {B} rate-limited");

    // Wait for a scrape after the load: then the counts are exact.
    let expected: Vec<(String, f64)> = vec![
        ("sum(wharf_requests_total{route=\"a\"})".into(), A as f64),
        (
            "sum(wharf_requests_total{route=\"a\",code=\"200\",method=\"GET\"})".into(),
            A as f64,
        ),
        (
            "sum(wharf_request_duration_seconds_count{route=\"a\"})".into(),
            A as f64,
        ),
        ("sum(wharf_requests_total{route=\"b\"})".into(), B as f64),
        (
            "sum(wharf_requests_total{route=\"b\",code=\"429\"})".into(),
            limited as f64,
        ),
        (
            "sum(wharf_ratelimited_total{route=\"b\"})".into(),
            limited as f64,
        ),
        (
            "sum(wharf_requests_total{route=\"\",code=\"404\"})".into(),
            UNROUTED as f64,
        ),
        (
            "sum(wharf_requests_total{route=\"c\",code=~\"5..\"})".into(),
            C as f64,
        ),
    ];
    let values = || -> Vec<Option<f64>> {
        expected
            .iter()
            .map(|(q, _)| {
                prom.query(q)
                    .ok()
                    .filter(|r| r.len() == 1)
                    .map(|r| r[0].value)
            })
            .collect()
    };
    let waited = Instant::now();
    loop {
        let got = values();
        if got.iter().zip(&expected).all(|(g, (_, e))| *g == Some(*e)) {
            break;
        }
        assert!(
            waited.elapsed() < WAIT,
            "Prometheus's counts after the load:\n{}",
            got.iter()
                .zip(&expected)
                .map(|(g, (q, e))| format!("  {q} = {g:?}, expected {e}"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let scraped = waited.elapsed();

    // Latency: one request in ten to `a` took 100 ms, the rest a few.
    let p99 = prom.scalar(
        "histogram_quantile(0.99, sum by (le) (rate(wharf_request_duration_seconds_bucket{route=\"a\"}[1m])))",
    );
    let p50 = prom.scalar(
        "histogram_quantile(0.5, sum by (le) (rate(wharf_request_duration_seconds_bucket{route=\"a\"}[1m])))",
    );
    let up99 = prom.scalar(
        "histogram_quantile(0.99, sum by (le) (rate(wharf_upstream_duration_seconds_bucket{route=\"a\"}[1m])))",
    );
    assert!((0.1..=1.0).contains(&p99), "p99 of route a: {p99}");
    assert!(
        (0.1..=1.0).contains(&up99),
        "upstream p99 of route a: {up99}"
    );
    assert!(p50.is_finite() && p50 < 0.1, "p50 of route a: {p50}");
    let rps = prom.scalar("sum(rate(wharf_requests_total{route=\"a\"}[1m]))");
    assert!(rps > 0.0 && rps.is_finite(), "rate of route a: {rps}");

    dashboard_queries(&prom, &instance);
    eprintln!(
        "load {took:?} (a {A}, b {B} of which {limited} limited, unrouted {UNROUTED}, c {C}); \
         scraped {scraped:?} later; p50 {p50:.4} s, p99 {p99:.4} s; test {:?}",
        t0.elapsed()
    );
}

// ---------------------------------------------------------------------------
// The Grafana dashboard

fn dashboard() -> serde_json::Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana/wharf.json");
    let text = std::fs::read_to_string(path).unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every panel, those nested in rows included.
fn panels(dash: &serde_json::Value) -> Vec<&serde_json::Value> {
    fn walk<'a>(ps: &'a serde_json::Value, out: &mut Vec<&'a serde_json::Value>) {
        for p in ps.as_array().into_iter().flatten() {
            out.push(p);
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dash["panels"], &mut out);
    out
}

/// Every `expr` anywhere in `v`, with the title of the panel holding it.
fn exprs(v: &serde_json::Value, title: &str, out: &mut Vec<(String, String)>) {
    match v {
        serde_json::Value::Object(m) => {
            let title = m.get("title").and_then(|t| t.as_str()).unwrap_or(title);
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("expr", serde_json::Value::String(e)) => {
                        out.push((title.to_string(), e.clone()))
                    }
                    _ => exprs(x, title, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| exprs(x, title, out)),
        _ => {}
    }
}

/// Replaces every template variable (`$name`, `${name}`, `${name:format}`,
/// `[[name]]`) by its test value, or says which is left without one.
fn substitute(expr: &str, vars: &[(String, String)]) -> Result<String, String> {
    let mut out = expr.to_string();
    let mut vars = vars.to_vec();
    // Longest first: `$__interval_ms` before `$__interval`.
    vars.sort_by_key(|(n, _)| std::cmp::Reverse(n.len()));
    for (name, value) in &vars {
        out = out
            .replace(&format!("${{{name}}}"), value)
            .replace(&format!("[[{name}]]"), value);
        while let Some(i) = out.find(&format!("${{{name}:")) {
            let end = i + out[i..].find('}').unwrap();
            out.replace_range(i..=end, value);
        }
        out = out.replace(&format!("${name}"), value);
    }
    if out.contains('$') || out.contains("[[") {
        return Err(format!("a variable without a test value: {out}"));
    }
    Ok(out)
}

/// The dashboard is one Grafana can import as is, each panel on the
/// `datasource` variable's Prometheus, and it shows what issue 10 asks for.
fn check_shape(dash: &serde_json::Value) {
    assert!(
        dash["schemaVersion"].as_u64().unwrap() >= 36,
        "schemaVersion"
    );
    assert!(dash["title"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(dash["uid"].as_str().is_some_and(|t| !t.is_empty()));
    let vars = dash["templating"]["list"].as_array().unwrap();
    let ds = vars.iter().find(|v| v["name"] == "datasource").unwrap();
    assert_eq!(ds["type"], "datasource");
    assert_eq!(ds["query"], "prometheus");
    let mut ids = std::collections::HashSet::new();
    for p in panels(dash) {
        let title = p["title"].as_str().unwrap();
        assert!(
            ids.insert(p["id"].as_u64().unwrap()),
            "duplicate id: {title}"
        );
        for k in ["h", "w", "x", "y"] {
            assert!(p["gridPos"][k].is_u64(), "{title}: gridPos.{k}");
        }
        assert!(
            p["gridPos"]["x"].as_u64().unwrap() + p["gridPos"]["w"].as_u64().unwrap() <= 24,
            "{title}: wider than the grid"
        );
        if p["type"] == "row" {
            continue;
        }
        assert!(
            [
                "timeseries",
                "stat",
                "bargauge",
                "gauge",
                "table",
                "state-timeline"
            ]
            .contains(&p["type"].as_str().unwrap()),
            "{title}: panel type {}",
            p["type"]
        );
        assert_eq!(p["datasource"]["type"], "prometheus", "{title}");
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}");
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title}: no query");
        for t in targets {
            assert!(t["refId"].is_string(), "{title}: refId");
            assert!(t["expr"].is_string(), "{title}: expr");
            assert_eq!(t["datasource"]["uid"], "${datasource}", "{title}");
        }
    }
    let mut all = Vec::new();
    exprs(dash, "", &mut all);
    for metric in [
        "wharf_requests_total",
        "wharf_request_duration_seconds_bucket",
        "wharf_upstream_duration_seconds_bucket",
        "wharf_backend_up",
        "wharf_backend_inflight",
        "wharf_open_connections",
        "wharf_ratelimited_total",
        "wharf_tls_cert_not_after_seconds",
        "wharf_config_errors",
        "wharf_config_reloads_total",
    ] {
        assert!(
            all.iter().any(|(_, e)| e.contains(metric)),
            "no panel shows {metric}"
        );
    }
}

/// Every expression of the dashboard, with test values for its variables,
/// evaluated against `prom`: each parses and returns at least one finite value.
/// Its template queries (`label_values`) list the routes and this Wharf; a few
/// panels also show the values the load implies.
fn dashboard_queries(prom: &Prometheus, instance: &str) {
    let dash = dashboard();
    check_shape(&dash);
    let mut vars: Vec<(String, String)> = [
        ("__rate_interval", "1m"),
        ("__interval", "15s"),
        ("__interval_ms", "15000"),
        ("__range", "5m"),
        ("__range_s", "300"),
        ("__range_ms", "300000"),
    ]
    .iter()
    .map(|(n, v)| (n.to_string(), v.to_string()))
    .collect();
    let test_value = |name: &str| match name {
        "datasource" => "prometheus".to_string(),
        "instance" => instance.to_string(),
        "route" => "a|b|c".to_string(),
        other => panic!("no test value for the dashboard variable {other:?}"),
    };
    let list = dash["templating"]["list"].as_array().unwrap();
    for v in list {
        let name = v["name"].as_str().unwrap();
        vars.push((name.to_string(), test_value(name)));
    }

    let mut failures = Vec::new();
    // Template queries: label_values(selector, label) lists `label` of the
    // selector's series.
    for v in list.iter().filter(|v| v["type"] == "query") {
        let name = v["name"].as_str().unwrap();
        let q = v["query"]["query"]
            .as_str()
            .or(v["query"].as_str())
            .unwrap_or_else(|| panic!("variable {name}: no query"));
        let inner = q
            .trim()
            .strip_prefix("label_values(")
            .and_then(|r| r.strip_suffix(')'))
            .unwrap_or_else(|| panic!("variable {name}: not label_values(…): {q}"));
        let (selector, label) = inner
            .rsplit_once(',')
            .unwrap_or_else(|| panic!("variable {name}: label_values without a metric: {q}"));
        let (selector, label) = match substitute(selector.trim(), &vars) {
            Ok(s) => (s, label.trim()),
            Err(e) => {
                failures.push(format!("variable {name}: {e}"));
                continue;
            }
        };
        match prom.query(&selector) {
            Ok(r) => {
                let values: Vec<&str> = r
                    .iter()
                    .filter_map(|s| s.labels.get(label).map(String::as_str))
                    .collect();
                let want: &[&str] = match name {
                    "route" => &["a", "b", "c"],
                    "instance" => &[instance],
                    _ => &[],
                };
                if values.is_empty() || !want.iter().all(|w| values.contains(w)) {
                    failures.push(format!(
                        "variable {name}: {selector} gives {label} values {values:?}, not {want:?}"
                    ));
                }
            }
            Err(e) => failures.push(format!("variable {name}: {selector}: {e}")),
        }
    }

    // Every `expr` of the file: panels' targets, and annotations' if any.
    let mut all = Vec::new();
    exprs(&dash, "", &mut all);
    assert!(all.len() >= 10, "{all:?}");
    let mut results: BTreeMap<String, Vec<Sample>> = BTreeMap::new();
    for (title, expr) in &all {
        let q = match substitute(expr, &vars) {
            Ok(q) => q,
            Err(e) => {
                failures.push(format!("{title}: {e}"));
                continue;
            }
        };
        match prom.query(&q) {
            Ok(r) if r.iter().any(|s| s.value.is_finite()) => {
                results.entry(title.clone()).or_insert(r);
            }
            Ok(r) => failures.push(format!("{title}: {q}\n    no data: {r:?}")),
            Err(e) => failures.push(format!("{title}: {q}\n    {e}")),
        }
    }
    assert!(
        failures.is_empty(),
        "dashboard queries that fail or return no data:\n  {}",
        failures.join("\n  ")
    );

    // What a few panels show after this load.
    let panel = |title: &str| {
        results
            .get(title)
            .unwrap_or_else(|| panic!("no panel {title:?}"))
            .as_slice()
    };
    let rps = panel("Requests/s per route");
    for r in ["a", "b", "c"] {
        assert!(by(rps, "route", r).is_some_and(|v| v > 0.0), "{r}: {rps:?}");
    }
    let errors = panel("Error ratio (5xx / all) per route");
    assert_eq!(by(errors, "route", "a"), Some(0.0), "{errors:?}");
    assert_eq!(by(errors, "route", "c"), Some(1.0), "{errors:?}");
    let limited = panel("Rate-limited/s per route");
    assert!(
        by(limited, "route", "b").is_some_and(|v| v > 0.0),
        "{limited:?}"
    );
    let p99 = panel("p99 latency per route");
    assert!(
        by(p99, "route", "a").is_some_and(|v| (0.1..=1.0).contains(&v)),
        "{p99:?}"
    );
    let days = panel("Certificate days left");
    let left = by(days, "name", CERT_NAME);
    assert!(
        left.is_some_and(|d| d > CERT_DAYS as f64 - 1.0 && d <= CERT_DAYS as f64),
        "{days:?}"
    );
    let errors = panel("Config errors");
    assert!(errors.iter().all(|s| s.value == 0.0), "{errors:?}");
}
