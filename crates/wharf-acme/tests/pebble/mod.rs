//! Shared harness for the ACME integration tests: a real Pebble CA (Debian's `pebble` and
//! `pebble-challtestsrv`), a CertSink that records what it receives, an HTTP-01 responder backed by
//! `AcmeManager::http01`, a TLS-ALPN-01 responder backed by the sink, and chain verification
//! against Pebble's root.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, SanType};
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;
use wharf_acme::{AcmeManager, CertSink};
use wharf_config::{AcmeConfig, AcmeDns, Challenge, Storage};

pub fn require(tool: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "`{tool}` is not installed: `apt-get install pebble bind9 bind9-utils` (.ci/run does this)"
    );
}

/// A port that was free a moment ago (bind 0, read, release) for a program that wants a number.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn free_udp_port() -> u16 {
    // DNS servers listen on UDP and TCP; take a port free for both.
    loop {
        let t = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let p = t.local_addr().unwrap().port();
        if std::net::UdpSocket::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
}

/// Spawn a child (killed on drop) and wait until a line containing `ready` appears on its
/// stdout or stderr.
pub async fn spawn_ready(cmd: Command, ready: &str, what: &str) -> Child {
    spawn_logged(cmd, ready, what).await.0
}

/// Like [`spawn_ready`], also returning every output line so far and to come.
pub async fn spawn_logged(
    mut cmd: Command,
    ready: &str,
    what: &str,
) -> (Child, Arc<Mutex<Vec<String>>>) {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("starting {what}: {e}"));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let out = child.stdout.take().unwrap();
    let err = child.stderr.take().unwrap();
    for r in [
        Box::new(out) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
        Box::new(err),
    ] {
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(r).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                if std::env::var_os("ACME_TEST_VERBOSE").is_some() {
                    eprintln!("{l}");
                }
                let _ = tx.send(l);
            }
        });
    }
    drop(tx);
    let mut seen = Vec::new();
    let found = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(l) = rx.recv().await {
            let hit = l.contains(ready);
            seen.push(l);
            if hit {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    assert!(found, "{what} did not become ready:\n{}", seen.join("\n"));
    // Keep draining so the child never blocks on a full pipe.
    let lines = Arc::new(Mutex::new(seen));
    let kept = lines.clone();
    tokio::spawn(async move {
        while let Some(l) = rx.recv().await {
            kept.lock().unwrap().push(l);
        }
    });
    (child, lines)
}

/// A TLS-ALPN-01 challenge certificate: (certificate DER, PKCS#8 key DER).
pub type AlpnCert = (Vec<u8>, Vec<u8>);

/// A DNS server answers on `addr` (UDP): a query for an A record gets a reply with its ID.
pub async fn dns_answers(addr: SocketAddr) -> Result<(), String> {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    // ID 0x5742, recursion desired, one question: probe.example.test. IN A.
    let mut q = vec![0x57, 0x42, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in ["probe", "example", "test"] {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    for _ in 0..20 {
        sock.send_to(&q, addr).await.map_err(|e| e.to_string())?;
        let mut buf = [0u8; 512];
        if let Ok(Ok((n, _))) =
            tokio::time::timeout(Duration::from_millis(250), sock.recv_from(&mut buf)).await
        {
            if n >= 2 && buf[..2] == q[..2] {
                return Ok(());
            }
        }
    }
    Err(format!("no DNS answer from {addr}"))
}

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

/// Pebble and its DNS server, with our own HTTPS certificate for Pebble.
pub struct Pebble {
    pub dir: tempfile::TempDir,
    pub directory: String,
    /// PEM file of the CA that signed Pebble's HTTPS certificate (for `ca_roots`).
    pub https_ca: PathBuf,
    pub mgmt: SocketAddr,
    pub acme: SocketAddr,
    children: Vec<Child>,
    _servers: Vec<TaskGuard>,
}

pub struct PebbleOpts {
    /// Use this DNS server instead of starting pebble-challtestsrv.
    pub dns_server: Option<SocketAddr>,
    /// Certificate validity in seconds (Pebble's default is 5 years).
    pub validity_secs: Option<u64>,
    /// Where Pebble sends HTTP-01 and TLS-ALPN-01 validations (our test responders' ports).
    pub http_port: u16,
    pub tls_port: u16,
}

/// An HTTPS certificate for 127.0.0.1/localhost, signed by a throwaway CA; returns the CA's PEM.
fn https_cert(dir: &std::path::Path) -> PathBuf {
    let mut ca = CertificateParams::default();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "wharf test CA for pebble");
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let mut leaf = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    leaf.subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
    let key = KeyPair::generate().unwrap();
    let cert = leaf.signed_by(&key, &ca).unwrap();
    std::fs::write(dir.join("pebble-cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("pebble-key.pem"), key.serialize_pem()).unwrap();
    let ca_path = dir.join("pebble-ca.pem");
    std::fs::write(&ca_path, ca.pem()).unwrap();
    ca_path
}

impl Pebble {
    /// Starts Pebble (and pebble-challtestsrv unless `opts.dns_server` is given) on ports
    /// picked just before. Another process may take such a port between the pick and the bind
    /// (tests run in parallel, and other test binaries on the machine pick ports the same way);
    /// Pebble then logs its "ready" line and exits, while the port answers as someone else's
    /// server. So a start only counts once the child still runs and its API answers with the
    /// certificate of this run's own CA; otherwise it is retried on fresh ports.
    pub async fn start(opts: PebbleOpts) -> Pebble {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
            )
            .with_test_writer()
            .try_init();
        require("pebble");
        require("pebble-challtestsrv");
        let mut errors = Vec::new();
        for _ in 0..5 {
            match Self::try_start(&opts).await {
                Ok(p) => return p,
                Err(e) => errors.push(e),
            }
        }
        panic!("pebble did not start:\n{}", errors.join("\n"));
    }

    async fn try_start(opts: &PebbleOpts) -> Result<Pebble, String> {
        let dir = tempfile::tempdir().unwrap();
        let https_ca = https_cert(dir.path());
        let mut children = Vec::new();
        let dns = match opts.dns_server {
            Some(d) => d,
            None => {
                let port = free_udp_port();
                let mut cmd = Command::new("pebble-challtestsrv");
                cmd.args([
                    "-defaultIPv6",
                    "",
                    "-defaultIPv4",
                    "127.0.0.1",
                    "-http01",
                    "",
                    "-https01",
                    "",
                    "-tlsalpn01",
                    "",
                    "-dns01",
                    &format!("127.0.0.1:{port}"),
                    "-management",
                    &format!("127.0.0.1:{}", free_port()),
                ]);
                let (mut child, lines) =
                    spawn_logged(cmd, "Starting management server", "pebble-challtestsrv").await;
                let addr = SocketAddr::from(([127, 0, 0, 1], port));
                // It does not exit when a port is taken: it logs the bind error and runs on,
                // and the port may answer as another test's DNS server.
                dns_answers(addr).await?;
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(format!("pebble-challtestsrv exited ({status}) on {addr}"));
                }
                if let Some(l) = lines.lock().unwrap().iter().find(|l| l.contains("in use")) {
                    return Err(format!("pebble-challtestsrv: {l}"));
                }
                children.push(child);
                addr
            }
        };
        let (http_port, tls_port) = (opts.http_port, opts.tls_port);
        let acme = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mgmt = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut cfg = serde_json::json!({"pebble": {
            "listenAddress": acme.to_string(),
            "managementListenAddress": mgmt.to_string(),
            "certificate": dir.path().join("pebble-cert.pem"),
            "privateKey": dir.path().join("pebble-key.pem"),
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        }});
        if let Some(v) = opts.validity_secs {
            cfg["pebble"]["certificateValidityPeriod"] = v.into();
        }
        let cfg_path = dir.path().join("pebble.json");
        std::fs::write(&cfg_path, cfg.to_string()).unwrap();
        let mut cmd = Command::new("pebble");
        cmd.arg("-config")
            .arg(&cfg_path)
            .arg("-dnsserver")
            .arg(dns.to_string())
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0");
        children.push(spawn_ready(cmd, "ACME directory available at", "pebble").await);
        let mut pebble = Pebble {
            directory: format!("https://{acme}/dir"),
            dir,
            https_ca,
            mgmt,
            acme,
            children,
            _servers: Vec::new(),
        };
        // Pebble logs "ready" before it binds: wait until both APIs answer as this Pebble.
        for (addr, path) in [(acme, "/dir"), (mgmt, "/roots/0")] {
            tokio::time::timeout(Duration::from_secs(10), async {
                loop {
                    if let Some(Ok(Some(status))) = pebble.children.last_mut().map(|c| c.try_wait())
                    {
                        return Err(format!("pebble exited ({status}); {addr} was taken"));
                    }
                    match pebble.try_get(addr, path).await {
                        Ok(_) => return Ok(()),
                        Err(e) if e.contains("certificate") => {
                            return Err(format!("{addr} is another server: {e}"))
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                    }
                }
            })
            .await
            .map_err(|_| format!("pebble's {addr} did not answer"))??;
        }
        Ok(pebble)
    }

    pub fn keep(&mut self, g: TaskGuard) {
        self._servers.push(g);
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
        self.try_get(self.mgmt, path)
            .await
            .unwrap_or_else(|e| panic!("pebble {path}: {e}"))
    }

    /// GET over HTTPS from `addr`, trusting only this run's CA (so only this Pebble passes).
    async fn try_get(&self, addr: SocketAddr, path: &str) -> Result<String, String> {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(&self.https_ca).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let conn = tokio_rustls::TlsConnector::from(Arc::new(cfg));
        let exchange = async {
            let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
            let mut tls = conn
                .connect(ServerName::try_from("localhost").unwrap(), tcp)
                .await
                .map_err(|e| e.to_string())?;
            tls.write_all(
                format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await
            .map_err(|e| e.to_string())?;
            let mut out = Vec::new();
            let _ = tls.read_to_end(&mut out).await;
            Ok::<_, String>(out)
        };
        let out = tokio::time::timeout(Duration::from_secs(5), exchange)
            .await
            .map_err(|_| format!("{addr} did not answer in 5 s"))??;
        let text = String::from_utf8_lossy(&out).into_owned();
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| format!("no HTTP response from {addr}: {text:?}"))?;
        if !head.starts_with("HTTP/1.1 200") {
            return Err(format!("{addr}{path}: {head}"));
        }
        Ok(
            if head
                .to_ascii_lowercase()
                .contains("transfer-encoding: chunked")
            {
                dechunk(body)
            } else {
                body.to_owned()
            },
        )
    }

    /// Pebble's root for this run (regenerated at every start).
    pub async fn root_pem(&self) -> String {
        self.mgmt_get("/roots/0").await
    }
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((len, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(len.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
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
