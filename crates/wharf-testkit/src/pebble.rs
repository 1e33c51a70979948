//! A real Pebble ACME CA (Debian's `pebble`) with its DNS server (`pebble-challtestsrv`,
//! answering every name with 127.0.0.1) or a DNS server of the caller's, and our own HTTPS
//! certificate for Pebble's API. Everything started here is killed on drop.
//!
//! Pebble validates HTTP-01 and TLS-ALPN-01 on fixed ports of the address a name resolves to,
//! so the caller picks those ports first (its responders, or Wharf's entrypoints) and hands
//! them over in [`PebbleOpts`].

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, SanType};

use crate::ports::{free_port, free_udp_port};
use crate::proc::Proc;
use crate::tls::{roots_from_pem, tls_connect_within, try_get_over, verifying_client};
use crate::{require, TempDir};

/// How Pebble is started.
#[derive(Debug, Clone)]
pub struct PebbleOpts {
    /// Use this DNS server instead of starting pebble-challtestsrv.
    pub dns_server: Option<SocketAddr>,
    /// Certificate validity in seconds (Pebble's default is 5 years).
    pub validity_secs: Option<u64>,
    /// Where Pebble sends HTTP-01 and TLS-ALPN-01 validations, on 127.0.0.1.
    pub http_port: u16,
    pub tls_port: u16,
}

impl PebbleOpts {
    /// Validations on these ports, names resolved by pebble-challtestsrv, Pebble's validity.
    pub fn new(http_port: u16, tls_port: u16) -> PebbleOpts {
        PebbleOpts {
            dns_server: None,
            validity_secs: None,
            http_port,
            tls_port,
        }
    }
}

/// Pebble with its DNS server and our own HTTPS certificate for Pebble's API.
pub struct Pebble {
    pub dir: TempDir,
    /// The ACME directory URL.
    pub directory: String,
    /// PEM file of the CA that signed Pebble's HTTPS certificate (for `ca_roots`).
    pub https_ca: PathBuf,
    /// Pebble's ACME API.
    pub acme: SocketAddr,
    /// Pebble's management API (roots, intermediates).
    pub mgmt: SocketAddr,
    pub pebble: Proc,
    /// pebble-challtestsrv, unless the caller brought a DNS server.
    _dns: Option<Proc>,
}

impl Pebble {
    /// Starts Pebble validating HTTP-01 on `http_port` and TLS-ALPN-01 on `tls_port` of
    /// 127.0.0.1 (the address pebble-challtestsrv resolves every name to).
    pub fn start(http_port: u16, tls_port: u16) -> Pebble {
        Self::start_with(PebbleOpts::new(http_port, tls_port))
    }

    /// Starts Pebble (and pebble-challtestsrv unless `opts.dns_server` is given) on ports
    /// picked just before. Another process may take such a port between the pick and the
    /// bind (tests run in parallel, and other test binaries pick ports the same way): Pebble
    /// then logs "ready" and exits, the port answering as someone else's server, and
    /// pebble-challtestsrv logs the bind error and runs on. So a start counts only when both
    /// still run and Pebble's APIs answer with this run's certificate; otherwise it is
    /// retried on fresh ports. Blocks for as long as that takes (use `spawn_blocking` from
    /// async code).
    pub fn start_with(opts: PebbleOpts) -> Pebble {
        require("pebble");
        if opts.dns_server.is_none() {
            require("pebble-challtestsrv");
        }
        let mut errors = Vec::new();
        for _ in 0..5 {
            match Self::try_start(&opts) {
                Ok(p) => return p,
                Err(e) => errors.push(e),
            }
        }
        panic!("pebble did not start:\n{}", errors.join("\n"));
    }

    fn try_start(opts: &PebbleOpts) -> Result<Pebble, String> {
        let dir = TempDir::new("pebble");
        let https_ca = https_cert(dir.path());
        let (dns, dns_proc) = match opts.dns_server {
            Some(d) => (d, None),
            None => {
                let (addr, p) = start_challtestsrv()?;
                (addr, Some(p))
            }
        };
        let acme = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mgmt = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut cfg = serde_json::json!({"pebble": {
            "listenAddress": acme.to_string(),
            "managementListenAddress": mgmt.to_string(),
            "certificate": dir.path().join("pebble-cert.pem"),
            "privateKey": dir.path().join("pebble-key.pem"),
            "httpPort": opts.http_port,
            "tlsPort": opts.tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        }});
        if let Some(v) = opts.validity_secs {
            cfg["pebble"]["certificateValidityPeriod"] = v.into();
        }
        let cfg_path = dir.path().join("pebble.json");
        std::fs::write(&cfg_path, cfg.to_string()).unwrap();
        let pebble = Proc::spawn(
            Command::new("pebble")
                .arg("-config")
                .arg(&cfg_path)
                .arg("-dnsserver")
                .arg(dns.to_string())
                // No random validation delay, no random nonce rejection, no reuse of
                // authorizations between orders: every order is validated for real.
                .env("PEBBLE_VA_NOSLEEP", "1")
                .env("PEBBLE_WFE_NONCEREJECT", "0")
                .env("PEBBLE_AUTHZREUSE", "0"),
            "ACME directory available at",
            "pebble",
        );
        let mut p = Pebble {
            directory: format!("https://{acme}/dir"),
            dir,
            https_ca,
            acme,
            mgmt,
            pebble,
            _dns: dns_proc,
        };
        // Pebble logs "ready" before it binds: wait until both APIs answer as this Pebble
        // (only it has the key of this run's certificate).
        for (addr, path) in [(acme, "/dir"), (mgmt, "/roots/0")] {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if p.pebble.exited() {
                    return Err(format!("pebble exited: {}", p.pebble.output()));
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

    /// `GET path` over HTTPS from `addr`, trusting only this run's CA (so only this Pebble
    /// passes); (status, body).
    pub fn try_get(&self, addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
        let roots = roots_from_pem(&std::fs::read_to_string(&self.https_ca).unwrap());
        // Short: a port taken by a silent server must not hold up the retry.
        let mut s = tls_connect_within(
            addr,
            "localhost",
            verifying_client(roots),
            Duration::from_secs(2),
        )?;
        try_get_over(&mut s, "localhost", path)
    }

    /// `GET path` over HTTPS from Pebble's management port; panics unless it is a 200.
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

/// pebble-challtestsrv answering A queries with 127.0.0.1 (and nothing else) on a fresh
/// port; an error when the port turned out to be someone else's.
fn start_challtestsrv() -> Result<(SocketAddr, Proc), String> {
    let port = free_udp_port();
    let mut dns = Proc::spawn(
        Command::new("pebble-challtestsrv").args([
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
        ]),
        "Starting management server",
        "pebble-challtestsrv",
    );
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    // It does not exit when a port is taken: it logs the bind error and runs on, and the
    // port may answer as another test's DNS server.
    dns_answers(addr)?;
    if dns.exited() || dns.count("in use") > 0 {
        return Err(format!("pebble-challtestsrv on {addr}: {}", dns.output()));
    }
    Ok((addr, dns))
}

/// A DNS server answers on `addr` (UDP): an A query gets a reply with its ID.
pub fn dns_answers(addr: SocketAddr) -> Result<(), String> {
    let sock = UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
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

/// An HTTPS certificate for localhost/127.0.0.1 signed by a throwaway CA, written into
/// `dir`; returns the CA's PEM path.
fn https_cert(dir: &Path) -> PathBuf {
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
