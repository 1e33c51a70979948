//! `swarm` storage against the machine's Docker Engine in swarm mode and a real Pebble: two
//! replicas want the same certificate, exactly one order runs, both publish it, and a third
//! replica that orders nothing answers the HTTP-01 challenge from the swarm store.
#![allow(clippy::unwrap_used)]

mod pebble;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use pebble::*;
use tokio::net::TcpListener;
use wharf_acme::{AcmeCertState, AcmeManager, Policy, SwarmStore};
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
    use wharf_acme::Store;
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
