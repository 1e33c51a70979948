use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::SystemTime;

use wharf_table::{BackendDef, BackendRegistry, Balance, EntrypointMask, Policy, RouteDef, Scheme};

use super::*;

fn hc(rise: u32, fall: u32) -> HealthCheck {
    HealthCheck {
        rise,
        fall,
        ..HealthCheck::default()
    }
}

fn result(ok: bool) -> LastCheck {
    LastCheck {
        at: SystemTime::now(),
        status: Some(if ok { 200 } else { 503 }),
        latency: Duration::from_millis(1),
        error: (!ok).then(|| "status 503".to_string()),
    }
}

fn def(name: &str, addrs: &[SocketAddr], check: Option<HealthCheck>) -> RouteDef {
    RouteDef {
        name: name.into(),
        source: "file".into(),
        hosts: vec![format!("{name}.test")],
        path: "/".into(),
        entrypoints: EntrypointMask::ALL,
        balance: Balance::RoundRobin,
        backends: addrs
            .iter()
            .map(|a| BackendDef {
                addr: *a,
                scheme: Scheme::Http,
                draining: false,
                identity: None,
            })
            .collect(),
        policy: Policy {
            healthcheck: check.map(Arc::new),
            ..Policy::default()
        },
    }
}

/// What the scripted probe saw at each call: when, and whether the backend was
/// up before this call's result was recorded.
type Calls = Arc<Mutex<Vec<(Duration, bool)>>>;

/// Runs `target`'s check loop with a probe that answers `script` (true: pass)
/// and then never again; records when each probe started and whether the
/// backend was up then.
fn scripted(
    target: Target,
    script: impl IntoIterator<Item = bool>,
) -> (tokio::task::JoinHandle<()>, Calls) {
    let script: Arc<Mutex<VecDeque<bool>>> = Arc::new(Mutex::new(script.into_iter().collect()));
    let calls: Calls = Arc::new(Mutex::new(Vec::new()));
    let start = Instant::now();
    let task = {
        let (calls, state) = (calls.clone(), target.state.clone());
        tokio::spawn(async move {
            run_target(&target, || {
                let ok = script.lock().unwrap().pop_front();
                calls.lock().unwrap().push((start.elapsed(), state.is_up()));
                async move {
                    match ok {
                        Some(ok) => result(ok),
                        None => std::future::pending().await,
                    }
                }
            })
            .await
        })
    };
    (task, calls)
}

#[tokio::test(start_paused = true)]
async fn down_after_exactly_fall_checks_and_up_after_exactly_rise() {
    let (rise, fall) = (2, 3);
    let table: SharedTable = Arc::new(ArcSwap::from_pointee(Table::default()));
    let reg = BackendRegistry::new();
    let addr: SocketAddr = "10.0.0.1:80".parse().unwrap();
    table.store(Arc::new(
        Table::compile(vec![def("app", &[addr], Some(hc(rise, fall)))], &reg).0,
    ));
    let state = table.load().routes()[0].backends.all()[0].state.clone();
    let target = Target {
        route: "app".into(),
        addr,
        hc: Arc::new(hc(rise, fall)),
        state: state.clone(),
    };
    // fall failures, then rise + 1 successes.
    let (task, calls) = scripted(
        target,
        std::iter::repeat_n(false, fall as usize)
            .chain(std::iter::repeat_n(true, rise as usize + 1)),
    );
    assert!(state.is_up(), "a newly seen backend is up");
    tokio::time::sleep(Duration::from_secs(120)).await;
    task.abort();

    let calls = calls.lock().unwrap().clone();
    let n = (fall + rise + 2) as usize;
    assert_eq!(calls.len(), n, "{calls:?}");
    let interval = Duration::from_secs(10);
    // The first check within one interval, the next ones 9..=11 s apart.
    assert!(calls[0].0 < interval);
    for w in calls.windows(2) {
        let gap = w[1].0 - w[0].0;
        assert!(
            gap >= interval.mul_f64(0.9) && gap <= interval.mul_f64(1.1),
            "{gap:?}"
        );
    }
    let up: Vec<bool> = calls.iter().map(|c| c.1).collect();
    // Up through the `fall`th failure, down from then on until the `rise`th success.
    let mut want = vec![true; fall as usize];
    want.extend(std::iter::repeat_n(false, rise as usize));
    want.extend([true, true]);
    assert_eq!(up, want);
    assert!(state.is_up());
    assert_eq!(state.check_counts(), (u64::from(rise) + 1, u64::from(fall)));
    let info = state.health_snapshot();
    assert_eq!(info.reason, None);
    assert_eq!(info.last_check.and_then(|c| c.status), Some(200));
}

#[tokio::test(start_paused = true)]
async fn a_held_new_backend_is_checked_at_once_then_soon_until_it_passes() {
    let table: SharedTable = Arc::new(ArcSwap::from_pointee(Table::default()));
    let reg = BackendRegistry::new();
    let (a, b): (SocketAddr, SocketAddr) = (
        "10.0.0.1:80".parse().unwrap(),
        "10.0.0.2:80".parse().unwrap(),
    );
    Table::compile(vec![def("app", &[a], Some(hc(2, 3)))], &reg);
    // B joins a route that serves: held for its first passing check.
    table.store(Arc::new(
        Table::compile(vec![def("app", &[a, b], Some(hc(2, 3)))], &reg).0,
    ));
    let state = table.load().routes()[0].backends.all()[1].state.clone();
    assert!(state.is_pending() && !state.is_up());
    let target = Target {
        route: "app".into(),
        addr: b,
        hc: Arc::new(hc(2, 3)),
        state: state.clone(),
    };
    // The application listens after about 1 s: three checks fail first.
    let (task, calls) = scripted(target, [false, false, false, true]);
    tokio::time::sleep(Duration::from_secs(5)).await;
    task.abort();
    let at: Vec<u128> = calls
        .lock()
        .unwrap()
        .iter()
        .map(|c| c.0.as_millis())
        .collect();
    // At once, then 250, 500 and 1000 ms apart (not the 10 s interval).
    assert_eq!(at, [0, 250, 750, 1750], "{at:?}");
    assert!(state.is_up() && !state.is_pending());
}

#[tokio::test(start_paused = true)]
async fn reason_is_kept_while_down() {
    let reg = BackendRegistry::new();
    let addr: SocketAddr = "10.0.0.1:80".parse().unwrap();
    let t = Table::compile(vec![def("app", &[addr], Some(hc(1, 1)))], &reg).0;
    let state = t.routes()[0].backends.all()[0].state.clone();
    let target = Target {
        route: "app".into(),
        addr,
        hc: Arc::new(hc(1, 1)),
        state: state.clone(),
    };
    let task = tokio::spawn(async move { run_target(&target, || async { result(false) }).await });
    tokio::time::sleep(Duration::from_secs(11)).await;
    task.abort();
    assert!(!state.is_up());
    let reason = state.health_snapshot().reason.unwrap_or_default();
    assert!(reason.contains("status 503"), "{reason}");
}

#[tokio::test]
async fn reconcile_follows_the_table() {
    let reg = BackendRegistry::new();
    let a: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let b: SocketAddr = "127.0.0.1:10".parse().unwrap();
    let table: SharedTable = Arc::new(ArcSwap::from_pointee(
        Table::compile(
            vec![
                def("checked", &[a, b], Some(hc(2, 3))),
                def("plain", &[a], None),
            ],
            &reg,
        )
        .0,
    ));
    let cancel = CancellationToken::new();
    let mut c = Checker::new(table.clone(), 4, cancel.clone());
    c.reconcile();
    assert_eq!(c.len(), 2, "only the checked route's backends");
    let ids: Vec<_> = {
        let mut v: Vec<_> = c.running.values().map(|r| r.abort.id()).collect();
        v.sort();
        v
    };

    // An unrelated swap keeps the same tasks.
    table.store(Arc::new(
        Table::compile(
            vec![
                def("checked", &[a, b], Some(hc(2, 3))),
                def("plain", &[a, b], None),
            ],
            &reg,
        )
        .0,
    ));
    c.reconcile();
    let mut again: Vec<_> = c.running.values().map(|r| r.abort.id()).collect();
    again.sort();
    assert_eq!(ids, again);

    // A gone backend's task stops; a changed check restarts the rest, and the
    // up/down state stays as it was.
    let state_a = table.load().routes()[0].backends.all()[0].state.clone();
    state_a.set_up(false);
    let mut changed = hc(2, 3);
    changed.path = "/ready".into();
    table.store(Arc::new(
        Table::compile(vec![def("checked", &[a], Some(changed))], &reg).0,
    ));
    c.reconcile();
    assert_eq!(c.len(), 1);
    assert!(!ids.contains(&c.running.values().next().unwrap().abort.id()));
    assert!(!state_a.is_up());

    // No check any more: every task stops, and a backend the check held down
    // takes requests again (nothing else would ever bring it back).
    table.store(Arc::new(
        Table::compile(vec![def("checked", &[a], None)], &reg).0,
    ));
    c.reconcile();
    assert!(c.is_empty());
    assert!(table.load().routes()[0].backends.all()[0].state.is_up());
    cancel.cancel();
}

/// A route with one `http` and one `https` backend and the TLS policy `key`.
fn mixed(http: SocketAddr, https: SocketAddr, key: u64) -> RouteDef {
    let mut d = def("mixed", &[http, https], Some(hc(1, 1)));
    d.backends[1].scheme = Scheme::Https;
    let config = wharf_tls::backend_client_config(&wharf_tls::BackendTlsSpec {
        insecure: true,
        ..Default::default()
    })
    .unwrap();
    d.policy.backend_tls = Some(Arc::new(BackendTls {
        config_h1: wharf_tls::http11_only(&config),
        config,
        server_name: tokio_rustls::rustls::pki_types::ServerName::try_from("mixed.test").unwrap(),
        insecure: true,
        key,
    }));
    d
}

#[tokio::test]
async fn reconcile_restarts_https_checks_when_the_tls_policy_changes() {
    let reg = BackendRegistry::new();
    let http: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let https: SocketAddr = "127.0.0.1:10".parse().unwrap();
    let table: SharedTable = Arc::new(ArcSwap::from_pointee(
        Table::compile(vec![mixed(http, https, 1)], &reg).0,
    ));
    let cancel = CancellationToken::new();
    let mut c = Checker::new(table.clone(), 4, cancel.clone());
    c.reconcile();
    let id = |c: &Checker, a: SocketAddr| c.running[&(Arc::from("mixed"), a)].abort.id();
    let (http_id, https_id) = (id(&c, http), id(&c, https));
    assert!(c.running[&(Arc::from("mixed"), http)].tls.is_none());
    assert_eq!(
        c.running[&(Arc::from("mixed"), https)]
            .tls
            .as_ref()
            .map(|t| t.key),
        Some(1)
    );

    // The same policy rebuilt (a new Arc, the same key): nothing restarts.
    table.store(Arc::new(
        Table::compile(vec![mixed(http, https, 1)], &reg).0,
    ));
    c.reconcile();
    assert_eq!((id(&c, http), id(&c, https)), (http_id, https_id));

    // Another policy (say a CA file re-read): the https check restarts with it,
    // the http one is left alone.
    table.store(Arc::new(
        Table::compile(vec![mixed(http, https, 2)], &reg).0,
    ));
    c.reconcile();
    assert_eq!(id(&c, http), http_id);
    assert_ne!(id(&c, https), https_id);
    assert_eq!(
        c.running[&(Arc::from("mixed"), https)]
            .tls
            .as_ref()
            .map(|t| t.key),
        Some(2)
    );
    cancel.cancel();
}

/// End to end on real sockets with short intervals: a backend that starts
/// failing goes down, then comes back, through the spawned checker.
#[tokio::test]
async fn spawned_checker_marks_a_failing_backend_down_and_up_again() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let healthy = Arc::new(std::sync::atomic::AtomicBool::new(true));
    {
        let healthy = healthy.clone();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                let ok = healthy.load(std::sync::atomic::Ordering::Relaxed);
                tokio::spawn(async move {
                    let mut b = [0u8; 512];
                    let _ = s.read(&mut b).await;
                    let answer: &[u8] = if ok {
                        b"HTTP/1.1 200 OK\r\n\r\n"
                    } else {
                        b"HTTP/1.1 503 Unavailable\r\n\r\n"
                    };
                    let _ = s.write_all(answer).await;
                });
            }
        });
    }
    let mut check = hc(2, 2);
    check.interval = Duration::from_millis(100);
    check.timeout = Duration::from_millis(50);
    let reg = BackendRegistry::new();
    let table: SharedTable = Arc::new(ArcSwap::from_pointee(
        Table::compile(vec![def("app", &[addr], Some(check))], &reg).0,
    ));
    let (tx, rx) = watch::channel(());
    let cancel = CancellationToken::new();
    let handle = spawn(table.clone(), rx, cancel.clone());
    let state = table.load().routes()[0].backends.all()[0].state.clone();

    async fn wait_for(state: &BackendState, up: bool) -> Duration {
        let t = Instant::now();
        while state.is_up() != up {
            assert!(t.elapsed() < Duration::from_secs(5), "never became up={up}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        t.elapsed()
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(state.is_up());
    assert!(state.check_counts().0 >= 2);
    healthy.store(false, std::sync::atomic::Ordering::Relaxed);
    // fall × interval, plus one interval of phase and the jitter.
    let took = wait_for(&state, false).await;
    assert!(took < Duration::from_millis(600), "{took:?}");
    assert_eq!(
        state.health_snapshot().last_check.and_then(|c| c.error),
        Some("status 503".into())
    );
    healthy.store(true, std::sync::atomic::Ordering::Relaxed);
    let took = wait_for(&state, true).await;
    assert!(took < Duration::from_millis(600), "{took:?}");

    // The route loses its check on a swap: checks stop.
    table.store(Arc::new(
        Table::compile(vec![def("app", &[addr], None)], &reg).0,
    ));
    tx.send_replace(());
    tokio::time::sleep(Duration::from_millis(50)).await;
    let before = state.check_counts();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(state.check_counts(), before);

    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(1), handle)
        .await
        .unwrap()
        .unwrap();
}
