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

    /// Whether the process has exited.
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
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

/// A DNS server answers on `addr` (UDP): an A query gets a reply with its ID.
pub fn dns_answers(addr: SocketAddr) -> Result<(), String> {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(Duration::from_millis(250)))
        .unwrap();
    // ID 0x5742, recursion desired, one question: probe.example.test. IN A.
    let mut q = vec![0x57, 0x42, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in ["probe", "example", "test"] {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    for _ in 0..20 {
        sock.send_to(&q, addr).map_err(|e| e.to_string())?;
        let mut buf = [0u8; 512];
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            if n >= 2 && buf[..2] == q[..2] {
                return Ok(());
            }
        }
    }
    Err(format!("no DNS answer from {addr}"))
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
    ///
    /// Its own ports are picked just before it binds them, so another process may
    /// take one in between: Pebble then logs "ready" and exits (the port answering
    /// as someone else), and pebble-challtestsrv logs the bind error and runs on.
    /// A start counts only when both run and Pebble's API answers with this run's
    /// certificate; otherwise it is retried on fresh ports.
    pub fn start(http_port: u16, tls_port: u16) -> Pebble {
        require("pebble");
        require("pebble-challtestsrv");
        let mut errors = Vec::new();
        for _ in 0..5 {
            match Self::try_start(http_port, tls_port) {
                Ok(p) => return p,
                Err(e) => errors.push(e),
            }
        }
        panic!("pebble did not start:\n{}", errors.join("\n"));
    }

    fn try_start(http_port: u16, tls_port: u16) -> Result<Pebble, String> {
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
        let mut dns = Proc::spawn(cmd, "Starting management server", "pebble-challtestsrv");
        dns_answers(SocketAddr::from(([127, 0, 0, 1], dns_port)))?;
        if dns.exited() || dns.count("in use") > 0 {
            return Err(format!(
                "pebble-challtestsrv on {dns_port}: {}",
                dns.lines.lock().unwrap().join("\n")
            ));
        }
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
        let mut p = Pebble {
            directory: format!("https://{acme}/dir"),
            dir,
            https_ca,
            mgmt,
            pebble,
            _dns: dns,
        };
        // Pebble logs "ready" before it binds: wait until both APIs answer as this
        // Pebble (only it has the key of this run's certificate).
        for (addr, path) in [(acme, "/dir"), (mgmt, "/roots/0")] {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if p.pebble.exited() {
                    return Err(format!(
                        "pebble exited: {}",
                        p.pebble.lines.lock().unwrap().join("\n")
                    ));
                }
                match p.try_get(addr, path) {
                    Ok(_) => break,
                    Err(e) if e.contains("certificate") => {
                        return Err(format!("{addr} is another server: {e}"))
                    }
                    Err(e) if Instant::now() > deadline => {
                        return Err(format!("pebble's {addr}: {e}"))
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        }
        Ok(p)
    }

    /// GET over HTTPS from `addr`, trusting only this run's CA.
    fn try_get(&self, addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
        let roots = roots_from_pem(&std::fs::read_to_string(&self.https_ca).unwrap());
        // Short: a port taken by a silent server must not hold up the retry.
        let mut s = tls_connect_within(
            addr,
            "localhost",
            verifying_client(roots),
            Duration::from_secs(2),
        )?;
        Ok(get_over(&mut s, "localhost", path))
    }

    /// The `[acme]` section pointing Wharf at this Pebble.
    pub fn acme_section(&self, challenge: &str, storage: &std::path::Path) -> String {
        acme_section(&self.directory, &self.https_ca, challenge, storage)
    }

    /// `GET path` over HTTPS from Pebble's management port.
    pub fn mgmt_get(&self, path: &str) -> String {
        let (status, body) = self
            .try_get(self.mgmt, path)
            .unwrap_or_else(|e| panic!("pebble {path}: {e}"));
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
    tls_connect_within(addr, sni, cfg, WAIT)
}

/// Like [`tls_connect`], giving up on a silent peer after `timeout` per read.
pub fn tls_connect_within(
    addr: SocketAddr,
    sni: &str,
    cfg: Arc<rustls::ClientConfig>,
    timeout: Duration,
) -> Result<rustls::StreamOwned<rustls::ClientConnection, TcpStream>, String> {
    let mut tcp = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(timeout)).unwrap();
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
