//! DNS-01 against a real Pebble and a real BIND (`named`) that accepts TSIG-signed RFC 2136
//! updates: a plain host, a wildcard, a CNAME into a delegated zone, and an unsigned update refused.
#![allow(clippy::unwrap_used)]

mod pebble;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use pebble::*;
use tokio::process::Command;
use wharf_acme::{AcmeCertState, AcmeManager, Policy};
use wharf_config::{AcmeDns, Challenge};

const KEY_NAME: &str = "wharf-acme";

struct Named {
    _dir: tempfile::TempDir,
    addr: SocketAddr,
    secret: String,
    _child: Proc,
}

async fn start_named() -> Named {
    require("named");
    require("dig");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let port = free_udp_port();
    let secret = base64::engine::general_purpose::STANDARD
        .encode((0..32).map(|_| fastrand::u8(..)).collect::<Vec<u8>>());
    let soa = |zone: &str| {
        format!(
            "$TTL 60\n@ IN SOA ns.{zone}. hostmaster.{zone}. 1 60 60 600 60\n@ IN NS ns.{zone}.\nns IN A 127.0.0.1\n"
        )
    };
    std::fs::write(
        dir.path().join("example.test.zone"),
        soa("example.test") + "_acme-challenge.delegated IN CNAME delegated.acme-zone.test.\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("acme-zone.test.zone"),
        soa("acme-zone.test"),
    )
    .unwrap();
    let zone = |z: &str| {
        format!(
            "zone \"{z}\" {{ type primary; file \"{d}/{z}.zone\"; update-policy {{ grant {KEY_NAME} zonesub TXT; }}; }};\n"
        )
    };
    let conf = format!(
        "options {{ directory \"{d}\"; pid-file \"{d}/named.pid\"; session-keyfile \"{d}/session.key\";\n\
         managed-keys-directory \"{d}\"; listen-on port {port} {{ 127.0.0.1; }}; listen-on-v6 {{ none; }};\n\
         recursion no; dnssec-validation no; allow-query {{ any; }}; notify no; }};\n\
         key \"{KEY_NAME}\" {{ algorithm hmac-sha256; secret \"{secret}\"; }};\n{}{}",
        zone("example.test"),
        zone("acme-zone.test")
    );
    let conf_path = dir.path().join("named.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let child = Proc::spawn(
        std::process::Command::new("named")
            .args(["-g", "-n", "1", "-c"])
            .arg(&conf_path),
        "running",
        "named",
    );
    Named {
        _dir: dir,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        secret,
        _child: child,
    }
}

/// A recursive resolver (what a CA validates through) that forwards both test zones to the
/// authoritative server and keeps nothing cached for long, so each order sees fresh records.
async fn start_resolver(auth: &Named) -> (tempfile::TempDir, SocketAddr, Proc) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let port = free_udp_port();
    let ap = auth.addr.port();
    let fwd = |z: &str| {
        format!("zone \"{z}\" {{ type forward; forward only; forwarders {{ 127.0.0.1 port {ap}; }}; }};\n")
    };
    let conf = format!(
        "options {{ directory \"{d}\"; pid-file \"{d}/named.pid\"; session-keyfile \"{d}/session.key\";\n\
         managed-keys-directory \"{d}\"; listen-on port {port} {{ 127.0.0.1; }}; listen-on-v6 {{ none; }};\n\
         recursion yes; allow-recursion {{ any; }}; dnssec-validation no; max-cache-ttl 1; max-ncache-ttl 1; }};\n{}{}",
        fwd("example.test"),
        fwd("acme-zone.test")
    );
    let conf_path = dir.path().join("named.conf");
    std::fs::write(&conf_path, conf).unwrap();
    let child = Proc::spawn(
        std::process::Command::new("named")
            .args(["-g", "-n", "1", "-c"])
            .arg(&conf_path),
        "running",
        "named (resolver)",
    );
    (dir, SocketAddr::from(([127, 0, 0, 1], port)), child)
}

/// TXT records at `name` as the server has them now.
async fn txt(named: &Named, name: &str) -> String {
    let out = Command::new("dig")
        .args([
            "@127.0.0.1",
            "-p",
            &named.addr.port().to_string(),
            "+short",
            "TXT",
            name,
        ])
        .output()
        .await
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn names(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn policy() -> Policy {
    Policy {
        backoff_base: Duration::from_millis(200),
        backoff_cap: Duration::from_secs(2),
        ..Policy::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns01_with_tsig_wildcard_and_cname_delegation() {
    let named = start_named().await;
    // Pebble resolves through a recursive resolver, as a real CA does: an authoritative-only
    // server does not follow the CNAME into the delegated zone.
    let (_resolver_dir, resolver, _resolver) = start_resolver(&named).await;
    let pebble = Pebble::start(PebbleOpts {
        dns_server: Some(resolver),
        validity_secs: None,
        http_port: free_port(),
        tls_port: free_port(),
    })
    .await;
    let root = pebble.root_pem().await;
    let store = tempfile::tempdir().unwrap();
    let dns = AcmeDns {
        server: named.addr,
        zone: "example.test".into(),
        key_name: Some(KEY_NAME.into()),
        key_secret: Some(named.secret.clone()),
    };
    let sink = Arc::new(RecordingSink::default());
    let m = AcmeManager::new(
        pebble.config(Challenge::Dns01, store.path().to_owned(), Some(dns)),
        sink.clone(),
        policy(),
    )
    .unwrap();
    m.start().await.unwrap();
    let t0 = Instant::now();
    let errs = m.set_names(vec![
        names(&["plain.example.test"]),
        names(&["*.wild.example.test", "wild.example.test"]),
        names(&["delegated.example.test"]),
    ]);
    assert!(errs.is_empty(), "{errs:?}");
    wait_state(&m, Duration::from_secs(60), |m| {
        m.certificates()
            .iter()
            .all(|c| c.state == AcmeCertState::Valid)
    })
    .await;
    eprintln!("BENCH dns01 three certificates: {:?}", t0.elapsed());

    let (chain, key) = sink.latest(&["plain.example.test"]).unwrap();
    verify_chain(&chain, &root, "plain.example.test");
    check_cert(&chain, &key, &["plain.example.test"]);
    let (chain, key) = sink
        .latest(&["*.wild.example.test", "wild.example.test"])
        .unwrap();
    verify_chain(&chain, &root, "any.wild.example.test");
    verify_chain(&chain, &root, "wild.example.test");
    check_cert(&chain, &key, &["*.wild.example.test", "wild.example.test"]);
    // Validation of this name can only succeed through the TXT written at the CNAME target (an
    // update at a CNAME owner is ignored by the server, RFC 2136 §3.4.2.2).
    let (chain, _) = sink.latest(&["delegated.example.test"]).unwrap();
    verify_chain(&chain, &root, "delegated.example.test");

    // Every challenge record is gone again.
    for n in [
        "_acme-challenge.plain.example.test",
        "_acme-challenge.wild.example.test",
        "delegated.acme-zone.test",
    ] {
        assert_eq!(txt(&named, n).await, "", "{n} still has TXT records");
    }
    assert_eq!(m.order_counts(), (3, 0));
    m.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns01_unsigned_update_is_refused_with_a_clear_error() {
    let named = start_named().await;
    let pebble = Pebble::start(PebbleOpts {
        dns_server: Some(named.addr),
        validity_secs: None,
        http_port: free_port(),
        tls_port: free_port(),
    })
    .await;
    let store = tempfile::tempdir().unwrap();
    let dns = AcmeDns {
        server: named.addr,
        zone: "example.test".into(),
        key_name: None,
        key_secret: None,
    };
    let sink = Arc::new(RecordingSink::default());
    let m = AcmeManager::new(
        pebble.config(Challenge::Dns01, store.path().to_owned(), Some(dns)),
        sink.clone(),
        policy(),
    )
    .unwrap();
    m.start().await.unwrap();
    m.set_names(vec![names(&["nokey.example.test"])]);
    wait_state(&m, Duration::from_secs(30), |m| m.order_counts().1 >= 1).await;
    match &m.certificates()[0].state {
        AcmeCertState::Failed { reason, .. } => {
            assert!(reason.contains("refused the update"), "{reason}");
            assert!(reason.contains("no TSIG key"), "{reason}");
        }
        other => panic!("expected Failed, got {other:?}"),
    }
    assert_eq!(sink.count(), 0);
    m.shutdown();
}
