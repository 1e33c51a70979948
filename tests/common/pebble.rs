//! A real Pebble ACME CA (Debian's `pebble` and `pebble-challtestsrv`) for the
//! end-to-end ACME tests of the binary. Pebble validates HTTP-01 and TLS-ALPN-01 on
//! fixed ports, so the test picks Wharf's entrypoint ports first and hands them to
//! both. pebble-challtestsrv answers every name with 127.0.0.1. Everything started
//! here is killed on drop.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, SanType};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

use super::{TempDir, WAIT};

/// Panics with an install hint when `tool` is not on PATH (CI installs it).
pub fn require(tool: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "`{tool}` is not installed: `apt-get install pebble` (.ci/run does this)"
    );
}

/// A TCP port that was free a moment ago (bind 0, read, release), for programs
/// that must be told a number before they start.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A port free for both UDP and TCP (a DNS server listens on both).
pub fn free_udp_port() -> u16 {
    loop {
        let t = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let p = t.local_addr().unwrap().port();
        if std::net::UdpSocket::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
}

/// A child process killed on drop, whose output lines are kept.
pub struct Proc {
    child: Child,
    pub lines: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    /// Starts `cmd` and waits until a line containing `ready` appears.
    fn spawn(mut cmd: Command, ready: &str, what: &str) -> Proc {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {what}: {e}"));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel::<()>();
        let out: Box<dyn Read + Send> = Box::new(child.stdout.take().unwrap());
        let err: Box<dyn Read + Send> = Box::new(child.stderr.take().unwrap());
        for r in [out, err] {
            let (lines, tx) = (lines.clone(), tx.clone());
            std::thread::spawn(move || {
                for l in BufReader::new(r).lines().map_while(Result::ok) {
                    if std::env::var_os("ACME_TEST_VERBOSE").is_some() {
                        eprintln!("{l}");
                    }
                    lines.lock().unwrap().push(l);
                    let _ = tx.send(());
                }
            });
        }
        let p = Proc { child, lines };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !p.lines.lock().unwrap().iter().any(|l| l.contains(ready)) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "{what} did not become ready:\n{}",
                p.lines.lock().unwrap().join("\n")
            );
            let _ = rx.recv_timeout(left.min(Duration::from_millis(100)));
        }
        p
    }

    pub fn count(&self, needle: &str) -> usize {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until something accepts TCP connections on `addr`.
pub fn wait_listening(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {addr}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Pebble with its DNS server and our own HTTPS certificate for Pebble's API.
pub struct Pebble {
    pub dir: TempDir,
    /// The ACME directory URL.
    pub directory: String,
    /// PEM of the CA that signed Pebble's HTTPS certificate (for `ca_roots`).
    pub https_ca: PathBuf,
    pub mgmt: SocketAddr,
    pub pebble: Proc,
    _dns: Proc,
}

/// An HTTPS certificate for localhost/127.0.0.1 signed by a throwaway CA, written
/// into `dir`; returns the CA's PEM path.
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
    /// Starts Pebble validating HTTP-01 on `http_port` and TLS-ALPN-01 on
    /// `tls_port` of 127.0.0.1 (the address every name resolves to).
    pub fn start(http_port: u16, tls_port: u16) -> Pebble {
        require("pebble");
        require("pebble-challtestsrv");
        let dir = TempDir::new("pebble");
        let https_ca = https_cert(&dir.0);
        let dns_port = free_udp_port();
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
            &format!("127.0.0.1:{dns_port}"),
            "-management",
            &format!("127.0.0.1:{}", free_port()),
        ]);
        let dns = Proc::spawn(cmd, "Starting management server", "pebble-challtestsrv");
        let acme = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mgmt = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let cfg = serde_json::json!({"pebble": {
            "listenAddress": acme.to_string(),
            "managementListenAddress": mgmt.to_string(),
            "certificate": dir.0.join("pebble-cert.pem"),
            "privateKey": dir.0.join("pebble-key.pem"),
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        }});
        let cfg_path = dir.0.join("pebble.json");
        std::fs::write(&cfg_path, cfg.to_string()).unwrap();
        let mut cmd = Command::new("pebble");
        cmd.arg("-config")
            .arg(&cfg_path)
            .arg("-dnsserver")
            .arg(format!("127.0.0.1:{dns_port}"))
            // No random validation delay, no random nonce rejection, no reuse of
            // authorizations between orders: every order is validated for real.
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0");
        let pebble = Proc::spawn(cmd, "ACME directory available at", "pebble");
        // Pebble logs its addresses just before it listens: wait for the sockets.
        wait_listening(acme);
        wait_listening(mgmt);
        Pebble {
            directory: format!("https://{acme}/dir"),
            dir,
            https_ca,
            mgmt,
            pebble,
            _dns: dns,
        }
    }

    /// The `[acme]` section pointing Wharf at this Pebble.
    pub fn acme_section(&self, challenge: &str, storage: &std::path::Path) -> String {
        acme_section(&self.directory, &self.https_ca, challenge, storage)
    }

    /// `GET path` over HTTPS from Pebble's management port.
    pub fn mgmt_get(&self, path: &str) -> String {
        let roots = roots_from_pem(&std::fs::read_to_string(&self.https_ca).unwrap());
        let (status, body) = https_get(self.mgmt, "localhost", roots, path, "localhost");
        assert_eq!(status, 200, "pebble {path}: {body}");
        body
    }

    /// Pebble's root for this run (a new one at every start).
    pub fn root_pem(&self) -> String {
        self.mgmt_get("/roots/0")
    }

    /// New orders Pebble has received so far (from its log).
    pub fn orders(&self) -> usize {
        self.pebble.count("Added order")
    }
}

/// An `[acme]` section; `ca_roots` trusts the CA of the ACME server's HTTPS.
pub fn acme_section(
    directory: &str,
    ca: &std::path::Path,
    challenge: &str,
    storage: &std::path::Path,
) -> String {
    format!(
        "[acme]\nemail = \"ops@example.org\"\ndirectory = \"{directory}\"\nchallenge = \"{challenge}\"\n\
         ca_roots = [\"{}\"]\nstorage = \"file:{}\"\n\n",
        ca.display(),
        storage.display()
    )
}

pub fn roots_from_pem(pem: &str) -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    roots
}

/// A TLS client that verifies the server's chain against `roots` (as a browser
/// would against its store).
pub fn verifying_client(roots: rustls::RootCertStore) -> Arc<rustls::ClientConfig> {
    Arc::new(
        rustls::ClientConfig::builder_with_provider(wharf_tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// A finished TLS handshake with `sni` on `addr` using `cfg`: the stream, or the
/// handshake error (for instance an untrusted certificate).
pub fn tls_connect(
    addr: SocketAddr,
    sni: &str,
    cfg: Arc<rustls::ClientConfig>,
) -> Result<rustls::StreamOwned<rustls::ClientConnection, TcpStream>, String> {
    let mut tcp = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(WAIT)).unwrap();
    let name = ServerName::try_from(sni.to_string()).unwrap();
    let mut conn = rustls::ClientConnection::new(cfg, name).map_err(|e| e.to_string())?;
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp).map_err(|e| e.to_string())?;
    }
    Ok(rustls::StreamOwned::new(conn, tcp))
}

/// The leaf certificate the server presented.
pub fn leaf(s: &rustls::StreamOwned<rustls::ClientConnection, TcpStream>) -> Vec<u8> {
    s.conn.peer_certificates().unwrap()[0].to_vec()
}

/// One `GET path` (Host `host`) on an established TLS stream; (status, body).
pub fn get_over(
    s: &mut rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    host: &str,
    path: &str,
) -> (u16, String) {
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .unwrap();
    let mut out = Vec::new();
    // A peer that closes without close_notify ends the read with an error; what
    // was read before it is the response.
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP response: {text:?}"));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {head:?}"));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    (status, body)
}

/// `GET path` over a new verified TLS connection.
pub fn https_get(
    addr: SocketAddr,
    sni: &str,
    roots: rustls::RootCertStore,
    path: &str,
    host: &str,
) -> (u16, String) {
    let mut s = tls_connect(addr, sni, verifying_client(roots))
        .unwrap_or_else(|e| panic!("TLS to {addr} ({sni}): {e}"));
    get_over(&mut s, host, path)
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
