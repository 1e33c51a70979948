//! The certificate store: every certificate Wharf can serve, published as one
//! immutable snapshot. Writers serialise on a mutex, rebuild the snapshot and swap
//! it; the handshake path reads it lock-free.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;
use serde::Serialize;
use tracing::{debug, info};

use crate::pem;
use crate::TlsError;

/// Where a certificate came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CertSource {
    /// `[[tls.certificates]]` in the config file.
    File { cert: PathBuf, key: PathBuf },
    /// Issued by an ACME CA.
    Acme,
    /// A placeholder served for a name while its first ACME order runs.
    SelfSigned,
    /// The certificate for an unknown or missing SNI.
    Default,
}

impl CertSource {
    pub fn as_str(&self) -> &'static str {
        match self {
            CertSource::File { .. } => "file",
            CertSource::Acme => "acme",
            CertSource::SelfSigned => "self_signed",
            CertSource::Default => "default",
        }
    }
}

/// A certificate's state, as `/api/certificates` shows it. `Valid`/`Expired` are
/// computed from `not_after` when listed; ACME sets the others with
/// [`CertStore::set_state`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", content = "reason", rename_all = "snake_case")]
pub enum CertState {
    Valid,
    Expired,
    /// A self-signed placeholder: the first order has not produced a certificate.
    Pending,
    /// A renewal is running; the current certificate keeps serving.
    Renewing,
    /// The last order or renewal failed; the current certificate (if still valid)
    /// keeps serving.
    Failed(String),
}

impl CertState {
    pub fn as_str(&self) -> &'static str {
        match self {
            CertState::Valid => "valid",
            CertState::Expired => "expired",
            CertState::Pending => "pending",
            CertState::Renewing => "renewing",
            CertState::Failed(_) => "failed",
        }
    }
}

/// Identifies a certificate in the store (stable until it is replaced).
pub type CertId = u64;

/// What the API shows of a certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertInfo {
    pub id: CertId,
    /// DNS names from the subjectAltName (`*.example.org` for a wildcard).
    pub names: Vec<String>,
    pub issuer: String,
    /// Expiry, Unix seconds.
    pub not_after: i64,
    pub source: CertSource,
    pub state: CertState,
}

struct Entry {
    info: CertInfo,
    key: Arc<CertifiedKey>,
}

impl Entry {
    /// Which of two certificates for one name is served: a CA-issued one over a
    /// self-signed placeholder, then the one that lives longer.
    fn rank(&self) -> (bool, i64) {
        (
            self.info.source != CertSource::SelfSigned,
            self.info.not_after,
        )
    }
}

/// The published, immutable view the resolver reads.
pub(crate) struct Snapshot {
    exact: HashMap<String, Arc<Entry>>,
    /// `*.example.org` is stored under `example.org`.
    wildcard: HashMap<String, Arc<Entry>>,
    /// TLS-ALPN-01 challenge certificates by name (RFC 8737).
    alpn: HashMap<String, Arc<CertifiedKey>>,
    pub(crate) default: Arc<CertifiedKey>,
}

impl Snapshot {
    fn find(&self, name: &str) -> Option<&Arc<Entry>> {
        if let Some(e) = self.exact.get(name) {
            return Some(e);
        }
        // RFC 6125 §6.4.3: `*` stands for exactly one whole left-most label.
        let (first, rest) = name.split_once('.')?;
        if first.is_empty() || rest.is_empty() {
            return None;
        }
        self.wildcard.get(rest)
    }

    /// The certificate for a ClientHello's server name, or the default one.
    pub(crate) fn resolve(&self, sni: Option<&str>) -> Arc<CertifiedKey> {
        match sni.and_then(|s| self.find(&normalize(s))) {
            Some(e) => e.key.clone(),
            None => self.default.clone(),
        }
    }

    /// Strict SNI: only a certificate that covers the server name, never the
    /// default one.
    pub(crate) fn resolve_strict(&self, sni: &str) -> Option<Arc<CertifiedKey>> {
        self.find(&normalize(sni)).map(|e| e.key.clone())
    }

    pub(crate) fn challenge(&self, sni: &str) -> Option<Arc<CertifiedKey>> {
        self.alpn.get(&normalize(sni)).cloned()
    }
}

struct Inner {
    entries: Vec<Arc<Entry>>,
    alpn: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
    default_info: CertInfo,
    /// The first `[[tls.certificates]]` file: served for unknown or missing SNI
    /// instead of the generated default, as HAProxy serves its first `crt`.
    default_file: Option<PathBuf>,
}

impl Inner {
    fn default_entry(&self) -> Option<&Arc<Entry>> {
        let first = self.default_file.as_ref()?;
        self.entries
            .iter()
            .find(|e| matches!(&e.info.source, CertSource::File { cert, .. } if cert == first))
    }
}

/// Every certificate Wharf serves. Cheap to share (`Arc<CertStore>`); every
/// method may be called from any thread.
pub struct CertStore {
    snap: ArcSwap<Snapshot>,
    inner: Mutex<Inner>,
    next_id: AtomicU64,
}

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertStore")
            .field("certificates", &self.lock().entries.len())
            .finish()
    }
}

fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// A fresh ECDSA P-256 key and a self-signed certificate for `names`.
fn self_signed(names: Vec<String>, cn: &str) -> Result<(Arc<CertifiedKey>, i64), TlsError> {
    let gen = |e: rcgen::Error| TlsError::Generate(e.to_string());
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(gen)?;
    let mut params = rcgen::CertificateParams::new(names).map_err(gen)?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    let cert = params.self_signed(&key).map_err(gen)?;
    let der = cert.der().clone();
    let not_after = pem::parse(&der, cn)?.not_after;
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    Ok((pem::certified_key(vec![der], key_der, cn)?, not_after))
}

impl CertStore {
    /// A store holding only a freshly generated self-signed default certificate.
    pub fn new() -> Result<CertStore, TlsError> {
        let (default, not_after) =
            self_signed(vec!["wharf.invalid".into()], "Wharf default certificate")?;
        let inner = Inner {
            entries: Vec::new(),
            alpn: HashMap::new(),
            default: default.clone(),
            default_info: CertInfo {
                id: 0,
                names: vec!["wharf.invalid".into()],
                issuer: "CN=Wharf default certificate".into(),
                not_after,
                source: CertSource::Default,
                state: CertState::Valid,
            },
            default_file: None,
        };
        let store = CertStore {
            snap: ArcSwap::from_pointee(build(&inner)),
            inner: Mutex::new(inner),
            next_id: AtomicU64::new(1),
        };
        Ok(store)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave `Inner` half-written: every
        // writer builds its new value first and assigns it whole.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish(&self, inner: &Inner) {
        self.snap.store(Arc::new(build(inner)));
    }

    pub(crate) fn snapshot(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.snap.load()
    }

    fn entry(
        &self,
        source: CertSource,
        chain_pem: &[u8],
        key_pem: &[u8],
    ) -> Result<Entry, TlsError> {
        let what = match &source {
            CertSource::File { cert, .. } => cert.display().to_string(),
            other => format!("{} certificate", other.as_str()),
        };
        let key = pem::certified_key_from_pem(chain_pem, key_pem, &what)?;
        let leaf = key
            .cert
            .first()
            .ok_or(TlsError::NoCertificate { what: what.clone() })?;
        let parsed = pem::parse(leaf, &what)?;
        if parsed.names.is_empty() {
            return Err(TlsError::NoNames { what });
        }
        Ok(Entry {
            info: CertInfo {
                id: self.next_id.fetch_add(1, Ordering::Relaxed),
                names: parsed.names,
                issuer: parsed.issuer,
                not_after: parsed.not_after,
                state: CertState::Valid,
                source,
            },
            key,
        })
    }

    /// Adds a certificate (chain leaf first, PEM) with its private key; the names
    /// served come from the certificate's subjectAltName. It replaces a certificate
    /// of the same file (for `File`) or of the same names (for `Acme`), and drops
    /// the self-signed placeholders of the names it covers.
    pub fn insert_pem(
        &self,
        source: CertSource,
        chain_pem: &[u8],
        key_pem: &[u8],
    ) -> Result<CertInfo, TlsError> {
        let entry = self.entry(source, chain_pem, key_pem)?;
        let info = entry.info.clone();
        let mut inner = self.lock();
        insert(&mut inner.entries, entry);
        self.publish(&inner);
        info!(names = ?info.names, source = info.source.as_str(), not_after = info.not_after, "certificate added");
        Ok(info)
    }

    /// Removes a certificate by id; returns whether it was there.
    pub fn remove(&self, id: CertId) -> bool {
        let mut inner = self.lock();
        let before = inner.entries.len();
        inner.entries.retain(|e| e.info.id != id);
        let removed = inner.entries.len() != before;
        if removed {
            self.publish(&inner);
        }
        removed
    }

    /// Removes every certificate `pred` selects; returns how many.
    pub fn remove_where(&self, pred: impl Fn(&CertInfo) -> bool) -> usize {
        let mut inner = self.lock();
        let before = inner.entries.len();
        inner.entries.retain(|e| !pred(&e.info));
        let n = before - inner.entries.len();
        if n > 0 {
            self.publish(&inner);
        }
        n
    }

    /// Sets the state the API shows (ACME: renewing, failed with a reason).
    pub fn set_state(&self, id: CertId, state: CertState) -> bool {
        let mut inner = self.lock();
        let Some(pos) = inner.entries.iter().position(|e| e.info.id == id) else {
            return false;
        };
        let old = &inner.entries[pos];
        let mut info = old.info.clone();
        info.state = state;
        inner.entries[pos] = Arc::new(Entry {
            info,
            key: old.key.clone(),
        });
        self.publish(&inner);
        true
    }

    /// Makes the `[[tls.certificates]]` files the set of file certificates: each
    /// pair is read and checked; file certificates no longer listed are removed.
    /// A pair that fails keeps its previous certificate (if it had one) and its
    /// error is returned; the others are applied. One swap for the whole set.
    pub fn replace_files(&self, files: Vec<(PathBuf, PathBuf)>) -> Vec<TlsError> {
        let mut errors = Vec::new();
        let mut fresh = Vec::new();
        let mut failed = Vec::new();
        let first = files.first().map(|(c, _)| c.clone());
        for (cert, key) in files {
            match read_pair(&cert, &key).and_then(|(c, k)| {
                self.entry(
                    CertSource::File {
                        cert: cert.clone(),
                        key: key.clone(),
                    },
                    &c,
                    &k,
                )
            }) {
                Ok(e) => fresh.push(e),
                Err(e) => {
                    errors.push(e);
                    failed.push(cert);
                }
            }
        }
        let mut inner = self.lock();
        inner.entries.retain(|e| match &e.info.source {
            CertSource::File { cert, .. } => failed.contains(cert),
            _ => true,
        });
        for e in fresh {
            debug!(file = %match &e.info.source { CertSource::File { cert, .. } => cert.display().to_string(), _ => String::new() }, names = ?e.info.names, "file certificate loaded");
            insert(&mut inner.entries, e);
        }
        inner.default_file = first;
        self.publish(&inner);
        errors
    }

    /// For every name that no certificate covers yet, generates a self-signed
    /// placeholder (state `pending`) so TLS works at once; a CA-issued certificate
    /// inserted later replaces it. Returns the names that got one; a name that
    /// cannot be put in a certificate is skipped (the others still get theirs) and
    /// reported in the error.
    pub fn ensure_self_signed(&self, names: &[String]) -> Result<Vec<String>, TlsError> {
        let wanted: Vec<String> = {
            let snap = self.snapshot();
            let mut v: Vec<String> = Vec::new();
            let mut seen = std::collections::HashSet::new();
            for n in names {
                let n = normalize(n);
                if n.is_empty() || n == "*" || snap.find(&n).is_some() || !seen.insert(n.clone()) {
                    continue;
                }
                // A wildcard route is covered only by a wildcard certificate.
                if let Some(rest) = n.strip_prefix("*.") {
                    if snap.wildcard.contains_key(rest) {
                        continue;
                    }
                }
                v.push(n);
            }
            v
        };
        let mut made = Vec::new();
        let mut failed = None;
        let mut done = Vec::new();
        for n in &wanted {
            let (key, not_after) = match self_signed(vec![n.clone()], n) {
                Ok(k) => k,
                Err(e) => {
                    failed = Some(TlsError::Generate(format!("{n}: {e}")));
                    continue;
                }
            };
            done.push(n.clone());
            made.push(Entry {
                info: CertInfo {
                    id: self.next_id.fetch_add(1, Ordering::Relaxed),
                    names: vec![n.clone()],
                    issuer: format!("CN={n} (self-signed)"),
                    not_after,
                    source: CertSource::SelfSigned,
                    state: CertState::Pending,
                },
                key,
            });
        }
        if !made.is_empty() {
            let mut inner = self.lock();
            for e in made {
                // Re-check under the lock: another writer may have covered it.
                let covered = inner.entries.iter().any(|x| x.info.names == e.info.names);
                if !covered {
                    inner.entries.push(Arc::new(e));
                }
            }
            self.publish(&inner);
            info!(names = ?done, "self-signed certificates generated until ACME issues real ones");
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(done),
        }
    }

    /// Sets (or with `None` clears) the TLS-ALPN-01 challenge certificate for a
    /// name (RFC 8737): a ClientHello for that SNI that offers exactly the ALPN
    /// protocol `acme-tls/1` gets it; other handshakes never see it.
    pub fn set_alpn_challenge(&self, name: &str, key: Option<Arc<CertifiedKey>>) {
        let mut inner = self.lock();
        let name = normalize(name);
        match key {
            Some(k) => {
                inner.alpn.insert(name, k);
            }
            None => {
                inner.alpn.remove(&name);
            }
        }
        self.publish(&inner);
    }

    /// Every certificate, for `/api/certificates`; the generated default one first
    /// when it is in use (no `[[tls.certificates]]` file loaded).
    pub fn certificates(&self) -> Vec<CertInfo> {
        let inner = self.lock();
        let t = now();
        let mut out = Vec::new();
        if inner.default_entry().is_none() {
            out.push(inner.default_info.clone());
        }
        for e in &inner.entries {
            let mut info = e.info.clone();
            if info.state == CertState::Valid && info.not_after <= t {
                info.state = CertState::Expired;
            }
            out.push(info);
        }
        out
    }

    /// Whether a certificate other than the default one is served for `host`
    /// (a self-signed placeholder counts; see [`CertStore::lookup`]).
    pub fn covers(&self, host: &str) -> bool {
        self.snapshot().find(&normalize(host)).is_some()
    }

    /// The certificate served for `host`, if any besides the default one.
    pub fn lookup(&self, host: &str) -> Option<CertInfo> {
        self.snapshot()
            .find(&normalize(host))
            .map(|e| e.info.clone())
    }

    /// The key the resolver picks for a server name (the default for `None` or an
    /// unknown name), as a handshake would.
    pub fn resolve(&self, sni: Option<&str>) -> Arc<CertifiedKey> {
        self.snapshot().resolve(sni)
    }
}

/// Adds `e`, replacing what it supersedes.
fn insert(entries: &mut Vec<Arc<Entry>>, e: Entry) {
    let mut sorted = e.info.names.clone();
    sorted.sort();
    entries.retain(|old| match (&old.info.source, &e.info.source) {
        (CertSource::File { cert: a, .. }, CertSource::File { cert: b, .. }) => a != b,
        (CertSource::SelfSigned, _) if e.info.source != CertSource::SelfSigned => {
            !old.info.names.iter().all(|n| covers_name(&e.info.names, n))
        }
        (CertSource::Acme, CertSource::Acme) => {
            let mut o = old.info.names.clone();
            o.sort();
            o != sorted
        }
        _ => true,
    });
    entries.push(Arc::new(e));
}

/// Whether a certificate for `names` serves `host` (exact, or one-label wildcard).
fn covers_name(names: &[String], host: &str) -> bool {
    names.iter().any(|n| {
        n == host
            || n.strip_prefix("*.").is_some_and(|suffix| {
                host.split_once('.')
                    .is_some_and(|(first, rest)| !first.is_empty() && rest == suffix)
            })
    })
}

fn build(inner: &Inner) -> Snapshot {
    let mut exact: HashMap<String, Arc<Entry>> = HashMap::new();
    let mut wildcard: HashMap<String, Arc<Entry>> = HashMap::new();
    for e in &inner.entries {
        for n in &e.info.names {
            let (map, key) = match n.strip_prefix("*.") {
                Some(rest) => (&mut wildcard, rest),
                None => (&mut exact, n.as_str()),
            };
            match map.get(key) {
                Some(cur) if cur.rank() >= e.rank() => {}
                _ => {
                    map.insert(key.to_string(), e.clone());
                }
            }
        }
    }
    Snapshot {
        exact,
        wildcard,
        alpn: inner.alpn.clone(),
        default: inner
            .default_entry()
            .map_or_else(|| inner.default.clone(), |e| e.key.clone()),
    }
}

fn read_pair(cert: &PathBuf, key: &PathBuf) -> Result<(Vec<u8>, Vec<u8>), TlsError> {
    let read = |p: &PathBuf| {
        std::fs::read(p).map_err(|source| TlsError::Read {
            path: p.clone(),
            source,
        })
    };
    let pair = (read(cert)?, read(key)?);
    warn_if_readable_by_others(key);
    Ok(pair)
}

/// A private key that other users may read is a warning (review L9), as
/// OpenSSH refuses such keys; Wharf still loads it, since the file may be a
/// secret mounted by an orchestrator with a mode the operator cannot change.
fn warn_if_readable_by_others(key: &std::path::Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(m) = std::fs::metadata(key) {
            let mode = m.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                tracing::warn!(
                    file = %key.display(),
                    mode = %format!("{mode:o}"),
                    "TLS private key is readable by group or others; chmod 600 it"
                );
            }
        }
    }
}

/// Checks `[[tls.certificates]]` pairs without a store (for `wharf check`).
pub fn check_files(files: &[(PathBuf, PathBuf)]) -> Vec<TlsError> {
    let Ok(store) = CertStore::new() else {
        return Vec::new();
    };
    store.replace_files(files.to_vec())
}
