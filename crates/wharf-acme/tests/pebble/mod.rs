//! Harness for the ACME integration tests: a CertSink that records what it receives, an
//! HTTP-01 responder backed by `AcmeManager::http01`, a TLS-ALPN-01 responder backed by the
//! sink, chain verification against Pebble's root, and a real Pebble CA from `wharf-testkit`
//! (shared with the end-to-end tests) with what only these tests add: the responders it keeps
//! alive and the `AcmeConfig` pointing at it.
// Each test binary uses a different part of this module and of its re-exports.
#![allow(dead_code, unused_imports, clippy::unwrap_used)]

use std::collections::HashMap;
use std::ops::Deref;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use wharf_acme::{AcmeManager, CertSink};
use wharf_config::{AcmeConfig, AcmeDns, Challenge, Storage};
pub use wharf_testkit::pebble::PebbleOpts;
pub use wharf_testkit::ports::{free_port, free_udp_port};
pub use wharf_testkit::proc::Proc;
pub use wharf_testkit::require;

/// A TLS-ALPN-01 challenge certificate: (certificate DER, PKCS#8 key DER).
pub type AlpnCert = (Vec<u8>, Vec<u8>);

/// What a CertSink received.
#[derive(Default)]
pub struct RecordingSink {
    pub published: Mutex<Vec<(Vec<String>, String, String)>>,
    pub alpn: Mutex<HashMap<String, AlpnCert>>,
    pub alpn_sets: Mutex<usize>,
    pub changed: tokio::sync::Notify,
}

impl CertSink for RecordingSink {
    fn publish(&self, names: &[String], chain_pem: &str, key_pem: &str) {
        self.published.lock().unwrap().push((
            names.to_vec(),
            chain_pem.to_owned(),
            key_pem.to_owned(),
        ));
        self.changed.notify_waiters();
    }

    fn set_alpn_challenge(&self, name: &str, cert: Option<(Vec<u8>, Vec<u8>)>) {
        let mut m = self.alpn.lock().unwrap();
        match cert {
            Some(c) => {
                *self.alpn_sets.lock().unwrap() += 1;
                m.insert(name.to_owned(), c);
            }
            None => {
                m.remove(name);
            }
        }
    }
}

impl RecordingSink {
    pub fn count(&self) -> usize {
        self.published.lock().unwrap().len()
    }

    /// The latest certificate published for exactly these names.
    pub fn latest(&self, names: &[&str]) -> Option<(String, String)> {
        let mut want: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        want.sort();
        self.published
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|(n, _, _)| *n == want)
            .map(|(_, c, k)| (c.clone(), k.clone()))
    }

    /// Wait until `pred` holds (checked after every publish), at most `limit`.
    pub async fn wait_for(&self, limit: Duration, pred: impl Fn(&Self) -> bool) {
        assert!(
            self.wait_until(limit, pred).await,
            "condition not reached in time"
        );
    }

    /// Like [`Self::wait_for`]; false when `limit` passed first.
    pub async fn wait_until(&self, limit: Duration, pred: impl Fn(&Self) -> bool) -> bool {
        tokio::time::timeout(limit, async {
            loop {
                let n = self.changed.notified();
                tokio::pin!(n);
                n.as_mut().enable();
                if pred(self) {
                    return;
                }
                n.await;
            }
        })
        .await
        .is_ok()
    }
}

/// Wait until `pred(manager)` holds, polling the manager's state every 20 ms (the manager has
/// no change notification of its own), at most `limit`.
pub async fn wait_state(m: &AcmeManager, limit: Duration, pred: impl Fn(&AcmeManager) -> bool) {
    tokio::time::timeout(limit, async {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        loop {
            tick.tick().await;
            if pred(m) {
                return;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("state not reached in time: {:?}", m.certificates()));
}

/// Aborts a spawned server when dropped.
pub struct TaskGuard(pub JoinHandle<()>);
impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A minimal HTTP/1.1 server answering `/.well-known/acme-challenge/<token>` from the manager.
pub fn serve_http01(listener: TcpListener, manager: Arc<Mutex<Option<AcmeManager>>>) -> TaskGuard {
    TaskGuard(tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let manager = manager.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16384 {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let req = String::from_utf8_lossy(&buf);
                let path = req.split_whitespace().nth(1).unwrap_or("");
                let m = manager.lock().unwrap().clone();
                let answer = match (path.strip_prefix("/.well-known/acme-challenge/"), m) {
                    (Some(token), Some(m)) => m.http01(token).await,
                    _ => None,
                };
                let rsp = match answer {
                    Some(body) => format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    ),
                    None => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into(),
                };
                let _ = s.write_all(rsp.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    }))
}

#[derive(Debug)]
struct AlpnResolver(Arc<RecordingSink>);

impl rustls::server::ResolvesServerCert for AlpnResolver {
    fn resolve(
        &self,
        hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        let name = hello.server_name()?.to_owned();
        let (cert, key) = self.0.alpn.lock().unwrap().get(&name).cloned()?;
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        let key = provider
            .key_provider
            .load_private_key(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key)))
            .ok()?;
        Some(Arc::new(rustls::sign::CertifiedKey::new(
            vec![CertificateDer::from(cert)],
            key,
        )))
    }
}

impl std::fmt::Debug for RecordingSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RecordingSink")
    }
}

/// A TLS server that only speaks `acme-tls/1`, with the challenge certificates the sink holds.
pub fn serve_tls_alpn(listener: TcpListener, sink: Arc<RecordingSink>) -> TaskGuard {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .unwrap()
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(AlpnResolver(sink)));
    cfg.alpn_protocols = vec![b"acme-tls/1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    TaskGuard(tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(s).await {
                    let _ = tls.shutdown().await;
                }
            });
        }
    }))
}

/// The testkit's Pebble (its fields and blocking calls through `Deref`), with the responders
/// a test hands it to keep alive as long as it runs.
pub struct Pebble {
    kit: Arc<wharf_testkit::pebble::Pebble>,
    servers: Vec<TaskGuard>,
}

impl Deref for Pebble {
    type Target = wharf_testkit::pebble::Pebble;
    fn deref(&self) -> &Self::Target {
        &self.kit
    }
}

/// Runs blocking testkit code off the runtime's threads, passing its panic on.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(f).await {
        Ok(v) => v,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

impl Pebble {
    /// Starts Pebble as [`wharf_testkit::pebble::Pebble::start_with`] does, logging the
    /// manager's tracing at `RUST_LOG` (default warn).
    pub async fn start(opts: PebbleOpts) -> Pebble {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
            )
            .with_test_writer()
            .try_init();
        let kit = blocking(move || wharf_testkit::pebble::Pebble::start_with(opts)).await;
        Pebble {
            kit: Arc::new(kit),
            servers: Vec::new(),
        }
    }

    pub fn keep(&mut self, g: TaskGuard) {
        self.servers.push(g);
    }

    pub fn config(
        &self,
        challenge: Challenge,
        storage: PathBuf,
        dns: Option<AcmeDns>,
    ) -> AcmeConfig {
        AcmeConfig {
            email: Some("ops@example.org".into()),
            directory: self.directory.clone(),
            challenge,
            ca_roots: vec![self.https_ca.clone()],
            storage: Storage::File(storage),
            dns,
            max_names: 500,
        }
    }

    /// GET over HTTPS from Pebble's management port, trusting our test CA.
    pub async fn mgmt_get(&self, path: &str) -> String {
        let (kit, path) = (self.kit.clone(), path.to_owned());
        blocking(move || kit.mgmt_get(&path)).await
    }

    /// Pebble's root for this run (regenerated at every start).
    pub async fn root_pem(&self) -> String {
        self.mgmt_get("/roots/0").await
    }
}

/// Verify a PEM chain (leaf first) for `name` against `root_pem`, as a TLS client would.
pub fn verify_chain(chain_pem: &str, root_pem: &str, name: &str) {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(root_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .map(|c| c.unwrap())
        .collect();
    assert!(!chain.is_empty(), "empty chain");
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .unwrap();
    verifier
        .verify_server_cert(
            &chain[0],
            &chain[1..],
            &ServerName::try_from(name.to_owned()).unwrap(),
            &[],
            UnixTime::now(),
        )
        .unwrap_or_else(|e| panic!("chain for {name} does not verify: {e}"));
}

/// Key and leaf belong together: the key parses and the leaf carries every name.
pub fn check_cert(chain_pem: &str, key_pem: &str, names: &[&str]) {
    PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("key parses");
    let leaf = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .next()
        .unwrap()
        .unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).unwrap();
    let san = cert.subject_alternative_name().unwrap().unwrap();
    let dns: Vec<String> = san
        .value
        .general_names
        .iter()
        .filter_map(|g| match g {
            x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
            _ => None,
        })
        .collect();
    for n in names {
        assert!(dns.iter().any(|d| d == n), "{n} missing from {dns:?}");
    }
}
