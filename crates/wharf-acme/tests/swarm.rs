//! `swarm` storage against the machine's Docker Engine in swarm mode and a real Pebble: two
//! replicas want the same certificate, exactly one order runs, both publish it, and a third
//! replica that orders nothing answers the HTTP-01 challenge from the swarm store; replicas
//! waiting on another's order lock adopt its certificate within a second of its storing (config
//! events), not at their 10 s re-check.
#![allow(clippy::unwrap_used)]

mod pebble;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use pebble::*;
use tokio::net::TcpListener;
use wharf_acme::{
    AcmeCertState, AcmeError, AcmeManager, CertSink, Policy, Store, StoredCert, SwarmStore,
};
use wharf_config::Challenge;
use wharf_testkit::docker::{docker, try_docker, Swarm};

/// Swarm mode for this test, put back as found after the last test of this binary.
fn swarm() -> Swarm {
    require("docker");
    Swarm::join().unwrap_or_else(|e| panic!("swarm storage needs a swarm manager: {e}"))
}

/// Removes every config carrying this test's store label, also when the test fails.
struct ConfigsGuard(String);

impl Drop for ConfigsGuard {
    fn drop(&mut self) {
        let label = format!("label=wharf.acme.store={}", self.0);
        if let Ok(out) = try_docker(&["config", "ls", "-q", "--filter", &label]) {
            for id in out.split_whitespace() {
                let _ = try_docker(&["config", "rm", id]);
            }
        }
    }
}

fn configs(prefix: &str, kind: &str) -> Vec<String> {
    docker(&[
        "config",
        "ls",
        "--format",
        "{{.Name}}",
        "--filter",
        &format!("label=wharf.acme.store={prefix}"),
        "--filter",
        &format!("label=wharf.acme.kind={kind}"),
    ])
    .split_whitespace()
    .map(str::to_owned)
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_one_order_both_publish() {
    let _swarm = swarm();
    let prefix = format!("wharf-acme-test-{:08x}", fastrand::u32(..));
    let _configs = ConfigsGuard(prefix.clone());

    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut pebble = Pebble::start(PebbleOpts {
        dns_server: None,
        validity_secs: None,
        http_port: http.local_addr().unwrap().port(),
        tls_port: free_port(),
    })
    .await;
    let root = pebble.root_pem().await;
    let policy = Policy {
        backoff_base: Duration::from_millis(200),
        backoff_cap: Duration::from_secs(2),
        lock_poll: Duration::from_millis(200),
        ..Policy::default()
    };
    let mut base_cfg = pebble.config(Challenge::Http01, "/nonexistent".into(), None);
    base_cfg.storage = wharf_config::Storage::Swarm;
    let replica = |sink: Arc<RecordingSink>| {
        let store = SwarmStore::new(bollard::Docker::connect_with_defaults().unwrap(), &prefix);
        let cfg = base_cfg.clone();
        AcmeManager::with_store(cfg, sink, Arc::new(store), policy.clone()).unwrap()
    };
    let (sink_a, sink_b) = (
        Arc::new(RecordingSink::default()),
        Arc::new(RecordingSink::default()),
    );
    let a = replica(sink_a.clone());
    let b = replica(sink_b.clone());
    // The CA's validation goes to a third replica that orders nothing: it can only answer from
    // the swarm store.
    let c = replica(Arc::new(RecordingSink::default()));
    pebble.keep(serve_http01(http, Arc::new(Mutex::new(Some(c.clone())))));

    a.start().await.unwrap();
    b.start().await.unwrap();
    c.start().await.unwrap();
    let want = vec![vec!["shared.example.test".to_string()]];
    a.set_names(want.clone());
    b.set_names(want);
    for (m, sink) in [(&a, &sink_a), (&b, &sink_b)] {
        sink.wait_for(Duration::from_secs(60), |s| s.count() >= 1)
            .await;
        wait_state(m, Duration::from_secs(10), |m| {
            m.certificates()[0].state == AcmeCertState::Valid
        })
        .await;
    }
    let (ca, _) = sink_a.latest(&["shared.example.test"]).unwrap();
    let (cb, _) = sink_b.latest(&["shared.example.test"]).unwrap();
    assert_eq!(ca, cb, "both replicas serve the same certificate");
    verify_chain(&ca, &root, "shared.example.test");
    let orders = a.order_counts().0 + b.order_counts().0;
    assert_eq!(orders, 1, "exactly one replica ordered");
    assert_eq!(a.order_counts().1 + b.order_counts().1, 0);

    // What is left in the store: one account, one certificate version, no token, no lock.
    assert_eq!(configs(&prefix, "account").len(), 1);
    assert_eq!(
        configs(&prefix, "cert").len(),
        1,
        "old versions are removed"
    );
    assert!(configs(&prefix, "challenge").is_empty());
    assert!(configs(&prefix, "lock").is_empty());

    // A restarted replica serves the stored certificate at once.
    let sink_d = Arc::new(RecordingSink::default());
    let d = replica(sink_d.clone());
    d.start().await.unwrap();
    assert_eq!(sink_d.latest(&["shared.example.test"]).unwrap().0, ca);
    for m in [a, b, c, d] {
        m.shutdown();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swarm_lock_is_exclusive_and_expired_lease_is_broken() {
    let _swarm = swarm();
    let prefix = format!("wharf-acme-test-{:08x}", fastrand::u32(..));
    let _configs = ConfigsGuard(prefix.clone());
    let s = SwarmStore::new(bollard::Docker::connect_with_defaults().unwrap(), &prefix);
    assert!(s
        .try_lock("x", "one", Duration::from_secs(60))
        .await
        .unwrap());
    assert!(!s
        .try_lock("x", "two", Duration::from_secs(60))
        .await
        .unwrap());
    s.unlock("x", "two").await.unwrap(); // not the holder: no effect
    assert!(!s
        .try_lock("x", "two", Duration::from_secs(60))
        .await
        .unwrap());
    s.unlock("x", "one").await.unwrap();
    assert!(s.try_lock("x", "two", Duration::ZERO).await.unwrap());
    // "two" holds an already expired lease: "three" breaks it.
    assert!(s
        .try_lock("x", "three", Duration::from_secs(60))
        .await
        .unwrap());
    assert!(!s
        .try_lock("x", "two", Duration::from_secs(60))
        .await
        .unwrap());

    // Versions: each save is a new config, older ones removed.
    s.save_account("dir", "{\"v\":1}").await.unwrap();
    s.save_account("dir", "{\"v\":2}").await.unwrap();
    assert_eq!(s.load_account("dir").await.unwrap().unwrap(), "{\"v\":2}");
    let accounts = configs(&prefix, "account");
    assert_eq!(accounts.len(), 1);
    assert!(accounts[0].ends_with("-v2"), "{accounts:?}");
    s.purge().await.unwrap();
    assert!(configs(&prefix, "lock").is_empty());
}

/// A [`RecordingSink`] that also notes when the first certificate arrived.
#[derive(Default)]
struct TimedSink {
    rec: RecordingSink,
    first: Mutex<Option<SystemTime>>,
}

impl CertSink for TimedSink {
    fn publish(&self, names: &[String], chain_pem: &str, key_pem: &str) {
        self.first
            .lock()
            .unwrap()
            .get_or_insert_with(SystemTime::now);
        self.rec.publish(names, chain_pem, key_pem);
    }

    fn set_alpn_challenge(&self, name: &str, cert: Option<(Vec<u8>, Vec<u8>)>) {
        self.rec.set_alpn_challenge(name, cert);
    }
}

/// The swarm store without its config events: only the periodic re-check is left (what a
/// replica falls back on while the events stream is lost).
struct NoEvents(SwarmStore);

#[async_trait::async_trait]
impl Store for NoEvents {
    async fn load_account(&self, d: &str) -> Result<Option<String>, AcmeError> {
        self.0.load_account(d).await
    }
    async fn save_account(&self, d: &str, c: &str) -> Result<(), AcmeError> {
        self.0.save_account(d, c).await
    }
    async fn load_certs(&self) -> Result<Vec<Result<StoredCert, AcmeError>>, AcmeError> {
        self.0.load_certs().await
    }
    async fn load_cert(&self, n: &[String]) -> Result<Option<StoredCert>, AcmeError> {
        self.0.load_cert(n).await
    }
    async fn save_cert(&self, c: &StoredCert) -> Result<(), AcmeError> {
        self.0.save_cert(c).await
    }
    async fn put_challenge(&self, t: &str, k: &str) -> Result<(), AcmeError> {
        self.0.put_challenge(t, k).await
    }
    async fn get_challenge(&self, t: &str) -> Result<Option<String>, AcmeError> {
        self.0.get_challenge(t).await
    }
    async fn list_challenges(&self) -> Result<Option<Vec<(String, String)>>, AcmeError> {
        self.0.list_challenges().await
    }
    async fn remove_challenge(&self, t: &str) -> Result<(), AcmeError> {
        self.0.remove_challenge(t).await
    }
    async fn try_lock(&self, id: &str, h: &str, l: Duration) -> Result<bool, AcmeError> {
        self.0.try_lock(id, h, l).await
    }
    async fn unlock(&self, id: &str, h: &str) -> Result<(), AcmeError> {
        self.0.unlock(id, h).await
    }
    async fn load_owners(&self) -> Result<Option<String>, AcmeError> {
        self.0.load_owners().await
    }
    async fn save_owners(&self, json: &str) -> Result<(), AcmeError> {
        self.0.save_owners(json).await
    }
}

/// Three replicas want one certificate and start together: exactly one orders, and the others,
/// finding the lock held, adopt what it stores. Returns, per replica that adopted, how long after
/// the store write (the certificate config's creation in the swarm store) it served the
/// certificate, in ms.
async fn three_replicas_one_order(events: bool, lock_poll: Duration) -> Vec<f64> {
    let _swarm = swarm();
    let prefix = format!("wharf-acme-test-{:08x}", fastrand::u32(..));
    let _configs = ConfigsGuard(prefix.clone());

    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut pebble = Pebble::start(PebbleOpts {
        dns_server: None,
        validity_secs: None,
        http_port: http.local_addr().unwrap().port(),
        tls_port: free_port(),
    })
    .await;
    let root = pebble.root_pem().await;
    let policy = Policy {
        lock_poll,
        ..Policy::default()
    };
    let mut cfg = pebble.config(Challenge::Http01, "/nonexistent".into(), None);
    cfg.storage = wharf_config::Storage::Swarm;
    let replicas: Vec<(AcmeManager, Arc<TimedSink>)> = (0..3)
        .map(|_| {
            let sink = Arc::new(TimedSink::default());
            let store = SwarmStore::new(bollard::Docker::connect_with_defaults().unwrap(), &prefix);
            let store: Arc<dyn Store> = if events {
                Arc::new(store)
            } else {
                Arc::new(NoEvents(store))
            };
            let m =
                AcmeManager::with_store(cfg.clone(), sink.clone(), store, policy.clone()).unwrap();
            (m, sink)
        })
        .collect();
    // Whichever replica orders, the CA's validation reaches the first one: from its own order or
    // from the swarm store's token listing.
    pebble.keep(serve_http01(
        http,
        Arc::new(Mutex::new(Some(replicas[0].0.clone()))),
    ));
    for (m, _) in &replicas {
        m.start().await.unwrap();
    }
    let name = "adopt.example.test";
    for (m, _) in &replicas {
        m.set_names(vec![vec![name.to_string()]]);
    }
    for (_, sink) in &replicas {
        sink.rec
            .wait_for(Duration::from_secs(60) + lock_poll, |s| s.count() >= 1)
            .await;
    }

    let ordered: Vec<usize> = (0..3)
        .filter(|&i| replicas[i].0.order_counts().0 > 0)
        .collect();
    let failed: u64 = replicas.iter().map(|(m, _)| m.order_counts().1).sum();
    assert_eq!(ordered.len(), 1, "exactly one replica ordered: {ordered:?}");
    assert_eq!(replicas[ordered[0]].0.order_counts().0, 1);
    assert_eq!(failed, 0);

    let certs = configs(&prefix, "cert");
    assert_eq!(certs.len(), 1, "{certs:?}");
    let stored_ns: u64 = docker(&[
        "config",
        "inspect",
        "--format",
        "{{.CreatedAt.UnixNano}}",
        &certs[0],
    ])
    .trim()
    .parse()
    .unwrap();
    let stored = SystemTime::UNIX_EPOCH + Duration::from_nanos(stored_ns);
    let (chain, _) = replicas[ordered[0]].1.rec.latest(&[name]).unwrap();
    verify_chain(&chain, &root, name);
    let mut adopted = Vec::new();
    for (i, (m, sink)) in replicas.iter().enumerate() {
        assert_eq!(sink.rec.latest(&[name]).unwrap().0, chain, "replica {i}");
        let at = sink.first.lock().unwrap().unwrap();
        // The engine's clock and ours are the same host's.
        let after = at
            .duration_since(stored)
            .map(|d| d.as_secs_f64() * 1000.0)
            .unwrap_or_else(|e| -(e.duration().as_secs_f64() * 1000.0));
        let role = if i == ordered[0] {
            "ordered"
        } else {
            "adopted"
        };
        eprintln!("replica {i} {role}: serving {after:.1} ms after the certificate was stored");
        if i != ordered[0] {
            adopted.push(after);
            wait_state(m, Duration::from_secs(5), |m| {
                m.certificates()[0].state == AcmeCertState::Valid
            })
            .await;
        }
    }
    for (m, _) in replicas {
        m.shutdown();
    }
    adopted
}

/// Issue 13 item 5: the replicas waiting on the lock adopt the certificate within 1 s of its
/// storing, with the periodic re-check at its default 10 s so that only the config events can
/// explain a prompt adoption.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_replicas_adopt_the_stored_certificate_within_a_second() {
    let adopted = three_replicas_one_order(true, Duration::from_secs(10)).await;
    assert_eq!(adopted.len(), 2);
    for ms in adopted {
        assert!(
            (0.0..1000.0).contains(&ms),
            "adopted {ms:.1} ms after the store write"
        );
    }
}

/// Without config events (a lost stream) the periodic re-check still adopts, one `lock_poll`
/// at most after the write, and still nobody orders twice. `WHARF_TEST_LOCK_POLL_MS` sets the
/// re-check (default 2000; 10000 measures the old behaviour for docs/benchmarks.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_events_the_periodic_recheck_adopts() {
    let poll = std::env::var("WHARF_TEST_LOCK_POLL_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(Duration::from_secs(2), Duration::from_millis);
    let adopted = three_replicas_one_order(false, poll).await;
    assert_eq!(adopted.len(), 2);
    let limit = poll.as_secs_f64() * 1000.0 + 1000.0;
    for ms in adopted {
        assert!(
            (0.0..limit).contains(&ms),
            "adopted {ms:.1} ms after the store write (re-check every {poll:?})"
        );
    }
}
