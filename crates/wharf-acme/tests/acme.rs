//! ACME against a real Pebble: HTTP-01 and TLS-ALPN-01 issuance, restart from storage, corrupt
//! storage, a dead CA with backoff, renewal, and 100 certificates at once.
#![allow(clippy::unwrap_used)]

mod pebble;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use pebble::*;
use tokio::net::TcpListener;
use wharf_acme::{AcmeCertState, AcmeManager, FileStore, Policy, Store, StoredCert};
use wharf_config::Challenge;

struct Rig {
    pebble: Pebble,
    sink: Arc<RecordingSink>,
    slot: Arc<Mutex<Option<AcmeManager>>>,
    store: tempfile::TempDir,
}

impl Rig {
    async fn new(validity_secs: Option<u64>) -> Rig {
        let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tls = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut pebble = Pebble::start(PebbleOpts {
            dns_server: None,
            validity_secs,
            http_port: http.local_addr().unwrap().port(),
            tls_port: tls.local_addr().unwrap().port(),
        })
        .await;
        let sink = Arc::new(RecordingSink::default());
        let slot = Arc::new(Mutex::new(None));
        pebble.keep(serve_http01(http, slot.clone()));
        pebble.keep(serve_tls_alpn(tls, sink.clone()));
        Rig {
            pebble,
            sink,
            slot,
            store: tempfile::tempdir().unwrap(),
        }
    }

    /// A started manager on this rig's store, wired to the responders.
    async fn manager(&self, challenge: Challenge, policy: Policy) -> AcmeManager {
        let cfg = self
            .pebble
            .config(challenge, self.store.path().to_owned(), None);
        let m = AcmeManager::new(cfg, self.sink.clone(), policy).unwrap();
        *self.slot.lock().unwrap() = Some(m.clone());
        m
    }
}

fn names(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn fast_policy() -> Policy {
    Policy {
        backoff_base: Duration::from_millis(200),
        backoff_cap: Duration::from_secs(2),
        ..Policy::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http01_issues_then_restart_serves_stored_cert_without_ordering() {
    let rig = Rig::new(None).await;
    let root = rig.pebble.root_pem().await;
    let m = rig.manager(Challenge::Http01, fast_policy()).await;
    let registry = prometheus::Registry::new();
    m.register_metrics(&registry).unwrap();
    assert!(m.start().await.unwrap().is_empty());

    let t0 = Instant::now();
    assert!(m
        .set_names(vec![names(&["www.site.example.test", "site.example.test"])])
        .is_empty());
    rig.sink
        .wait_for(Duration::from_secs(30), |s| s.count() >= 1)
        .await;
    let first = t0.elapsed();
    eprintln!("BENCH http01 time to first valid certificate: {first:?}");

    let (chain, key) = rig
        .sink
        .latest(&["site.example.test", "www.site.example.test"])
        .expect("published under its canonical names");
    verify_chain(&chain, &root, "www.site.example.test");
    verify_chain(&chain, &root, "site.example.test");
    check_cert(
        &chain,
        &key,
        &["site.example.test", "www.site.example.test"],
    );
    wait_state(&m, Duration::from_secs(5), |m| {
        m.certificates()
            .first()
            .is_some_and(|c| c.state == AcmeCertState::Valid && c.not_after.is_some())
    })
    .await;
    let issuer = m.certificates()[0].issuer.clone().unwrap();
    assert!(issuer.contains("Pebble Intermediate"), "{issuer}");
    assert_eq!(m.order_counts(), (1, 0));

    // The metrics the admin endpoint will expose.
    let text = {
        let mut buf = Vec::new();
        use prometheus::Encoder;
        prometheus::TextEncoder::new()
            .encode(&registry.gather(), &mut buf)
            .unwrap();
        String::from_utf8(buf).unwrap()
    };
    assert!(
        text.contains("wharf_acme_orders_total{result=\"ok\"} 1"),
        "{text}"
    );
    // `wharf_tls_cert_not_after_seconds` comes from the certificate store
    // (wharf-admin's CertCollector, tested with the binary in tests/tls.rs).
    assert!(m.certificates()[0].not_after.is_some());

    // Keys on disk are private.
    let certs = std::fs::read_dir(rig.store.path().join("certs")).unwrap();
    for e in certs {
        use std::os::unix::fs::PermissionsExt;
        let mode = e.unwrap().metadata().unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    m.shutdown();

    // Restart: the stored certificate is published by start() alone, before any name is set.
    let before = rig.sink.count();
    let m2 = rig.manager(Challenge::Http01, fast_policy()).await;
    assert!(m2.start().await.unwrap().is_empty());
    assert_eq!(rig.sink.count(), before + 1);
    let (chain2, _) = rig
        .sink
        .latest(&["site.example.test", "www.site.example.test"])
        .unwrap();
    assert_eq!(chain2, chain, "the stored chain, not a new one");
    m2.set_names(vec![
        names(&["site.example.test", "www.site.example.test"]),
        names(&["other.example.test"]),
    ]);
    // The new name needs an order; the stored one must not get one.
    rig.sink
        .wait_for(Duration::from_secs(30), |s| {
            s.latest(&["other.example.test"]).is_some()
        })
        .await;
    wait_state(&m2, Duration::from_secs(5), |m| {
        m.certificates()
            .iter()
            .all(|c| c.state == AcmeCertState::Valid)
    })
    .await;
    assert_eq!(
        m2.order_counts(),
        (1, 0),
        "only other.example.test was ordered"
    );
    m2.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn01_issues() {
    let rig = Rig::new(None).await;
    let root = rig.pebble.root_pem().await;
    let m = rig.manager(Challenge::TlsAlpn01, fast_policy()).await;
    m.start().await.unwrap();
    m.set_names(vec![names(&["alpn.example.test"])]);
    rig.sink
        .wait_for(Duration::from_secs(30), |s| s.count() >= 1)
        .await;
    let (chain, key) = rig.sink.latest(&["alpn.example.test"]).unwrap();
    verify_chain(&chain, &root, "alpn.example.test");
    check_cert(&chain, &key, &["alpn.example.test"]);
    assert!(
        *rig.sink.alpn_sets.lock().unwrap() >= 1,
        "challenge cert was published"
    );
    assert!(
        rig.sink.alpn.lock().unwrap().is_empty(),
        "challenge certs are removed after validation"
    );
    m.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_storage_entry_is_ignored_and_reordered() {
    let rig = Rig::new(None).await;
    let m = rig.manager(Challenge::Http01, fast_policy()).await;
    m.start().await.unwrap();
    m.set_names(vec![
        names(&["good.example.test"]),
        names(&["bad.example.test"]),
    ]);
    rig.sink
        .wait_for(Duration::from_secs(30), |s| s.count() >= 2)
        .await;
    m.shutdown();

    // Damage one entry.
    let store = FileStore::new(rig.store.path());
    let bad = store
        .load_certs()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.unwrap())
        .find(|c| c.names == names(&["bad.example.test"]))
        .unwrap();
    let bad_file = std::fs::read_dir(rig.store.path().join("certs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            std::fs::read_to_string(p)
                .unwrap()
                .contains("bad.example.test")
        })
        .unwrap();
    std::fs::write(&bad_file, &bad.chain_pem[..bad.chain_pem.len() / 2]).unwrap();

    let before = rig.sink.count();
    let m2 = rig.manager(Challenge::Http01, fast_policy()).await;
    let ignored = m2.start().await.unwrap();
    assert_eq!(ignored.len(), 1, "{ignored:?}");
    let msg = ignored[0].to_string();
    assert!(
        msg.contains(&bad_file.display().to_string()) && msg.contains("corrupt"),
        "{msg}"
    );
    assert_eq!(rig.sink.count(), before + 1, "the good one was published");
    m2.set_names(vec![
        names(&["good.example.test"]),
        names(&["bad.example.test"]),
    ]);
    wait_state(&m2, Duration::from_secs(30), |_| {
        rig.sink.count() >= before + 2
    })
    .await;
    wait_state(&m2, Duration::from_secs(5), |m| {
        m.certificates()
            .iter()
            .all(|c| c.state == AcmeCertState::Valid)
    })
    .await;
    assert_eq!(
        m2.order_counts(),
        (1, 0),
        "only the corrupt one was ordered"
    );
    // And it is stored properly again.
    assert!(store.load_certs().await.unwrap().iter().all(|r| r.is_ok()));
    m2.shutdown();
}

/// A certificate two thirds through its life, so it is due for renewal.
fn aging_cert(name: &str) -> StoredCert {
    let mut p = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
    let now = time_now();
    p.not_before = now - time::Duration::days(80);
    p.not_after = now + time::Duration::days(10);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = p.self_signed(&key).unwrap();
    StoredCert {
        names: vec![name.to_owned()],
        chain_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        directory: String::new(),
    }
}

fn time_now() -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64,
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_ca_fails_visibly_backs_off_and_keeps_the_certificate() {
    let store_dir = tempfile::tempdir().unwrap();
    let store = FileStore::new(store_dir.path());
    let old = aging_cert("kept.example.test");
    store.save_cert(&old).await.unwrap();

    // Nothing listens on this port: the CA is down.
    let dead = free_port();
    let cfg = wharf_config::AcmeConfig {
        email: Some("ops@example.org".into()),
        directory: format!("https://127.0.0.1:{dead}/dir"),
        challenge: Challenge::Http01,
        ca_roots: vec![],
        storage: wharf_config::Storage::File(store_dir.path().to_owned()),
        dns: None,
        max_names: 500,
    };
    let sink = Arc::new(RecordingSink::default());
    let m = AcmeManager::new(cfg, sink.clone(), fast_policy()).unwrap();
    m.start().await.unwrap();
    assert_eq!(sink.count(), 1, "the stored certificate is served at once");
    m.set_names(vec![names(&["kept.example.test"])]);

    // Three failures, each visible with its reason; the retry delay grows.
    let mut retry_ats = Vec::new();
    for n in 1..=3u64 {
        wait_state(&m, Duration::from_secs(20), |m| m.order_counts().1 >= n).await;
        let c = &m.certificates()[0];
        match &c.state {
            AcmeCertState::Failed { reason, retry_at } => {
                assert!(reason.contains("ACME"), "{reason}");
                retry_ats.push((*retry_at, SystemTime::now()));
            }
            other => panic!("expected Failed, got {other:?}"),
        }
        assert!(c.not_after.is_some(), "the valid certificate is still held");
    }
    let delay = |i: usize| {
        retry_ats[i]
            .0
            .duration_since(retry_ats[i].1)
            .unwrap_or_default()
    };
    eprintln!("retry delays: {:?} {:?} {:?}", delay(0), delay(1), delay(2));
    assert!(delay(2) > delay(0), "backoff grows: {retry_ats:?}");
    assert!(delay(2) <= Duration::from_millis(2300), "capped");
    assert_eq!(sink.count(), 1, "never replaced or dropped");
    assert_eq!(m.order_counts().0, 0);
    m.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renews_at_two_thirds_of_lifetime() {
    // 9 s certificates: renewal is due after ~6 s.
    let rig = Rig::new(Some(9)).await;
    let m = rig.manager(Challenge::Http01, fast_policy()).await;
    m.start().await.unwrap();
    m.set_names(vec![names(&["renew.example.test"])]);
    rig.sink
        .wait_for(Duration::from_secs(30), |s| s.count() >= 1)
        .await;
    let t_first = Instant::now();
    rig.sink
        .wait_for(Duration::from_secs(30), |s| s.count() >= 2)
        .await;
    let gap = t_first.elapsed();
    assert!(
        gap >= Duration::from_secs(4) && gap <= Duration::from_secs(9),
        "renewed after {gap:?}"
    );
    assert_eq!(m.order_counts(), (2, 0));
    m.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_certificates_concurrently() {
    let rig = Rig::new(None).await;
    let root = rig.pebble.root_pem().await;
    let m = rig.manager(Challenge::Http01, fast_policy()).await;
    m.start().await.unwrap();
    let want: Vec<Vec<String>> = (0..100)
        .map(|i| vec![format!("n{i}.many.example.test")])
        .collect();
    let t0 = Instant::now();
    assert!(m.set_names(want).is_empty());
    // On a stall, say which certificates are stuck and why rather than only "not in time".
    let done = rig
        .sink
        .wait_until(Duration::from_secs(180), |s| s.count() >= 100)
        .await;
    if !done {
        let stuck: Vec<_> = m
            .certificates()
            .into_iter()
            .filter(|c| c.state != AcmeCertState::Valid)
            .take(5)
            .collect();
        panic!(
            "{} of 100 published after {:?}, orders (ok, error) {:?}; not valid: {stuck:?}",
            rig.sink.count(),
            t0.elapsed(),
            m.order_counts()
        );
    }
    eprintln!(
        "BENCH 100 certificates (max {} concurrent orders): {:?}",
        Policy::default().max_concurrent_orders,
        t0.elapsed()
    );
    assert_eq!(m.order_counts(), (100, 0));
    let (chain, _) = rig.sink.latest(&["n57.many.example.test"]).unwrap();
    verify_chain(&chain, &root, "n57.many.example.test");
    m.shutdown();
}

#[tokio::test]
async fn wildcard_needs_dns01() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = wharf_config::AcmeConfig {
        email: Some("ops@example.org".into()),
        directory: "https://127.0.0.1:1/dir".into(),
        challenge: Challenge::Http01,
        ca_roots: vec![],
        storage: wharf_config::Storage::File(dir.path().to_owned()),
        dns: None,
        max_names: 500,
    };
    let m = AcmeManager::new(cfg, Arc::new(RecordingSink::default()), Policy::default()).unwrap();
    let errs = m.set_names(vec![
        names(&["*.example.test"]),
        names(&["ok.example.test"]),
        names(&["bad_name!.example.test"]),
    ]);
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert!(errs[0].to_string().contains("dns-01"), "{}", errs[0]);
    assert_eq!(m.certificates().len(), 1);
}
