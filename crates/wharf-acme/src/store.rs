//! Certificate storage: the [`Store`] trait and the `file:DIR` implementation.
//!
//! Layout of `file:DIR` (every write goes to a temporary file in the same directory, then `rename`,
//! so a crash leaves either the old or the new entry, never half of one; files holding a key are
//! created with mode 0600):
//!
//! ```text
//! DIR/accounts/<sha256(directory URL)[..16]>.json   instant-acme credentials (account key), 0600
//! DIR/certs/<first-name>-<sha256(names)[..12]>.json  {"names": [..], "chain_pem": .., "key_pem": ..}, 0600
//! DIR/challenges/<token>                             HTTP-01 key authorizations while an order runs
//! DIR/locks/<cert id>.lock                           per-certificate order lock: "<holder> <expiry unix>"
//! DIR/owners.json                                    host ownership record (wharf-control `Claims`)
//! ```

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::pem::unix;
use crate::AcmeError;

/// One stored certificate: its names, PEM chain (leaf first) and PEM PKCS#8 private key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredCert {
    pub names: Vec<String>,
    pub chain_pem: String,
    pub key_pem: String,
    /// The ACME directory URL that issued it; empty when unknown. A certificate from another
    /// directory (say staging, after switching to production) is not served and is re-ordered.
    #[serde(default)]
    pub directory: String,
}

/// Where the account, certificates, HTTP-01 tokens and order locks live.
///
/// Implementations must make `save_*` atomic (a reader sees the old or the new value) and
/// `try_lock` an atomic create-if-absent, so that several Wharf replicas sharing one store order
/// a given certificate only once.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The stored account credentials (JSON) for this ACME directory URL.
    async fn load_account(&self, directory: &str) -> Result<Option<String>, AcmeError>;
    async fn save_account(&self, directory: &str, credentials_json: &str) -> Result<(), AcmeError>;
    /// Every stored certificate. A corrupt entry is returned as its own `Err` (with the entry's
    /// name) so that the others still load.
    async fn load_certs(&self) -> Result<Vec<Result<StoredCert, AcmeError>>, AcmeError>;
    /// The stored certificate for exactly these names (canonical order), if any.
    async fn load_cert(&self, names: &[String]) -> Result<Option<StoredCert>, AcmeError>;
    async fn save_cert(&self, cert: &StoredCert) -> Result<(), AcmeError>;
    async fn put_challenge(&self, token: &str, key_authorization: &str) -> Result<(), AcmeError>;
    async fn get_challenge(&self, token: &str) -> Result<Option<String>, AcmeError>;
    async fn remove_challenge(&self, token: &str) -> Result<(), AcmeError>;
    /// Every HTTP-01 token in the store with its key authorization, so that a
    /// replica answers any replica's challenge from memory (refreshed
    /// periodically, never per request); `None`: this store cannot list.
    async fn list_challenges(&self) -> Result<Option<Vec<(String, String)>>, AcmeError> {
        Ok(None)
    }
    /// Take the exclusive order lock for a certificate for `lease`; `false` while another holder's
    /// lease runs. An expired lease is broken.
    async fn try_lock(&self, id: &str, holder: &str, lease: Duration) -> Result<bool, AcmeError>;
    async fn unlock(&self, id: &str, holder: &str) -> Result<(), AcmeError>;
    /// The host ownership record (JSON, opaque here): which owner holds each host
    /// labels claim, kept beside the certificates so it survives restarts and is
    /// shared by replicas (docs/discovery.md, "Host ownership").
    async fn load_owners(&self) -> Result<Option<String>, AcmeError>;
    async fn save_owners(&self, json: &str) -> Result<(), AcmeError>;
    /// Certificates stored by anyone (other replicas included), reported as they are written, so
    /// that a replica waiting on another's order lock adopts the certificate at once instead of
    /// at its next `Policy::lock_poll` re-check. The watch ends with `cancel` (or when the
    /// receiver is dropped). `None`: this store cannot watch, and the re-check alone serves.
    fn watch_certs(&self, cancel: CancellationToken) -> Option<mpsc::Receiver<CertChange>> {
        let _ = cancel;
        None
    }
}

/// What [`Store::watch_certs`] reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CertChange {
    /// A certificate was stored for the names whose [`cert_id`] this is.
    Stored(String),
    /// Changes may have been missed (the watch reconnected): re-read every certificate waited for.
    Resync,
}

/// The store named by `[acme] storage`, for callers other than the ACME manager
/// (the ownership record is kept there whether or not ACME runs).
pub fn open(storage: &wharf_config::Storage) -> Result<std::sync::Arc<dyn Store>, AcmeError> {
    Ok(match storage {
        wharf_config::Storage::File(dir) => std::sync::Arc::new(FileStore::new(dir.clone())),
        wharf_config::Storage::Swarm => std::sync::Arc::new(crate::SwarmStore::connect_default()?),
    })
}

/// Lowercased, deduplicated, sorted: the identity of a certificate.
pub fn canonical_names(names: &[String]) -> Vec<String> {
    let mut v: Vec<String> = names
        .iter()
        .map(|n| n.trim().trim_end_matches('.').to_ascii_lowercase())
        .filter(|n| !n.is_empty())
        .collect();
    v.sort();
    v.dedup();
    v
}

pub(crate) fn sha256_hex(data: &[u8]) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// A file-system and Docker-config safe identifier for a certificate (names in canonical order).
pub fn cert_id(names: &[String]) -> String {
    let first: String = names
        .first()
        .map(|n| {
            n.chars()
                .map(|c| match c {
                    'a'..='z' | '0'..='9' | '-' | '.' => c,
                    '*' => 'w',
                    _ => '_',
                })
                .take(40)
                .collect()
        })
        .unwrap_or_default();
    format!("{first}-{}", &sha256_hex(names.join("\n").as_bytes())[..12])
}

/// ACME tokens are base64url; anything else is refused so a token never becomes a path.
pub(crate) fn valid_token(token: &str) -> bool {
    !token.is_empty()
        && token.len() <= 128
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// `file:DIR` storage.
pub struct FileStore {
    dir: PathBuf,
}

impl FileStore {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    fn sub(&self, s: &str) -> PathBuf {
        self.dir.join(s)
    }
}

/// Creates `dir` and its missing parents with mode 0700 (review L9): the file
/// names are host names and the files keys, so nobody but Wharf's user lists them.
/// Directories that already exist keep their mode.
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(dir)
}

/// Write `data` to `path` atomically: temporary file in the same directory, fsync, rename.
async fn write_atomic(path: &Path, data: Vec<u8>, secret: bool) -> Result<(), AcmeError> {
    let path = path.to_owned();
    let shown = path.display().to_string();
    tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        use std::io::Write;
        let dir = path.parent().unwrap_or(Path::new("."));
        create_private_dir(dir)?;
        let tmp = dir.join(format!(
            ".{}.tmp{}",
            path.file_name().and_then(|s| s.to_str()).unwrap_or("entry"),
            fastrand::u64(..)
        ));
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(if secret { 0o600 } else { 0o644 });
        }
        #[cfg(not(unix))]
        let _ = secret;
        let result = (|| {
            let mut f = opts.open(&tmp)?;
            f.write_all(&data)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    })
    .await
    .map_err(|e| AcmeError::Storage(e.to_string()))?
    .map_err(|e| AcmeError::Storage(format!("writing {shown}: {e}")))
}

async fn read_opt(path: &Path) -> Result<Option<Vec<u8>>, AcmeError> {
    match tokio::fs::read(path).await {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(AcmeError::Storage(format!(
            "reading {}: {e}",
            path.display()
        ))),
    }
}

/// Parse and check one stored certificate entry.
pub(crate) fn parse_cert(entry: &str, data: &[u8]) -> Result<StoredCert, AcmeError> {
    let corrupt = |reason: String| AcmeError::Corrupt {
        entry: entry.to_owned(),
        reason,
    };
    let c: StoredCert = serde_json::from_slice(data).map_err(|e| corrupt(e.to_string()))?;
    if c.names.is_empty() {
        return Err(corrupt("no names".into()));
    }
    crate::pem::validity(&c.chain_pem).map_err(|e| corrupt(e.to_string()))?;
    crate::pem::check_key(&c.key_pem).map_err(|e| corrupt(e.to_string()))?;
    Ok(StoredCert {
        names: canonical_names(&c.names),
        ..c
    })
}

#[async_trait]
impl Store for FileStore {
    async fn load_account(&self, directory: &str) -> Result<Option<String>, AcmeError> {
        let p = self
            .sub("accounts")
            .join(format!("{}.json", &sha256_hex(directory.as_bytes())[..16]));
        Ok(read_opt(&p)
            .await?
            .map(|b| String::from_utf8_lossy(&b).into_owned()))
    }

    async fn save_account(&self, directory: &str, json: &str) -> Result<(), AcmeError> {
        let p = self
            .sub("accounts")
            .join(format!("{}.json", &sha256_hex(directory.as_bytes())[..16]));
        write_atomic(&p, json.as_bytes().to_vec(), true).await
    }

    async fn load_certs(&self) -> Result<Vec<Result<StoredCert, AcmeError>>, AcmeError> {
        let dir = self.sub("certs");
        let mut rd = match tokio::fs::read_dir(&dir).await {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(AcmeError::Storage(format!("{}: {e}", dir.display()))),
        };
        let mut out = Vec::new();
        while let Some(ent) = rd.next_entry().await? {
            let name = ent.file_name().to_string_lossy().into_owned();
            if !name.ends_with(".json") || name.starts_with('.') {
                continue;
            }
            let path = ent.path();
            let entry = path.display().to_string();
            out.push(match tokio::fs::read(&path).await {
                Ok(data) => parse_cert(&entry, &data),
                Err(e) => Err(AcmeError::Corrupt {
                    entry,
                    reason: e.to_string(),
                }),
            });
        }
        Ok(out)
    }

    async fn load_cert(&self, names: &[String]) -> Result<Option<StoredCert>, AcmeError> {
        let p = self
            .sub("certs")
            .join(format!("{}.json", cert_id(&canonical_names(names))));
        match read_opt(&p).await? {
            Some(data) => parse_cert(&p.display().to_string(), &data).map(Some),
            None => Ok(None),
        }
    }

    async fn load_owners(&self) -> Result<Option<String>, AcmeError> {
        Ok(read_opt(&self.sub("owners.json"))
            .await?
            .map(|b| String::from_utf8_lossy(&b).into_owned()))
    }

    async fn save_owners(&self, json: &str) -> Result<(), AcmeError> {
        write_atomic(&self.sub("owners.json"), json.as_bytes().to_vec(), false).await
    }

    async fn save_cert(&self, cert: &StoredCert) -> Result<(), AcmeError> {
        let names = canonical_names(&cert.names);
        let p = self.sub("certs").join(format!("{}.json", cert_id(&names)));
        let data =
            serde_json::to_vec_pretty(cert).map_err(|e| AcmeError::Storage(e.to_string()))?;
        write_atomic(&p, data, true).await
    }

    async fn put_challenge(&self, token: &str, key_auth: &str) -> Result<(), AcmeError> {
        if !valid_token(token) {
            return Err(AcmeError::Storage(format!("refusing token `{token}`")));
        }
        write_atomic(
            &self.sub("challenges").join(token),
            key_auth.as_bytes().to_vec(),
            false,
        )
        .await
    }

    async fn get_challenge(&self, token: &str) -> Result<Option<String>, AcmeError> {
        if !valid_token(token) {
            return Ok(None);
        }
        Ok(read_opt(&self.sub("challenges").join(token))
            .await?
            .map(|b| String::from_utf8_lossy(&b).into_owned()))
    }

    async fn list_challenges(&self) -> Result<Option<Vec<(String, String)>>, AcmeError> {
        let mut out = Vec::new();
        let mut dir = match tokio::fs::read_dir(self.sub("challenges")).await {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Some(out)),
            Err(e) => return Err(e.into()),
        };
        while let Some(e) = dir.next_entry().await? {
            let Some(token) = e.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if !valid_token(&token) {
                continue;
            }
            if let Some(b) = read_opt(&e.path()).await? {
                out.push((token, String::from_utf8_lossy(&b).into_owned()));
            }
        }
        Ok(Some(out))
    }

    async fn remove_challenge(&self, token: &str) -> Result<(), AcmeError> {
        if !valid_token(token) {
            return Ok(());
        }
        match tokio::fs::remove_file(self.sub("challenges").join(token)).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    async fn try_lock(&self, id: &str, holder: &str, lease: Duration) -> Result<bool, AcmeError> {
        let dir = self.sub("locks");
        let d = dir.clone();
        tokio::task::spawn_blocking(move || create_private_dir(&d))
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))??;
        let path = dir.join(format!("{id}.lock"));
        let content = format!("{holder} {}", unix(SystemTime::now() + lease));
        for _ in 0..2 {
            let p = path.clone();
            let c = content.clone();
            let created = tokio::task::spawn_blocking(move || {
                use std::io::Write;
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&p)?;
                f.write_all(c.as_bytes())
            })
            .await
            .map_err(|e| AcmeError::Storage(e.to_string()))?;
            match created {
                Ok(()) => return Ok(true),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let cur = read_opt(&path).await?.unwrap_or_default();
                    let cur = String::from_utf8_lossy(&cur);
                    let mut it = cur.split_whitespace();
                    let (who, until) = (it.next(), it.next().and_then(|s| s.parse::<u64>().ok()));
                    if who == Some(holder) {
                        write_atomic(&path, content.into_bytes(), false).await?;
                        return Ok(true);
                    }
                    if until.is_some_and(|u| u > unix(SystemTime::now())) {
                        return Ok(false);
                    }
                    // Expired (or unreadable) lease: break it and try once more.
                    let _ = tokio::fs::remove_file(&path).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(false)
    }

    async fn unlock(&self, id: &str, holder: &str) -> Result<(), AcmeError> {
        let path = self.sub("locks").join(format!("{id}.lock"));
        if let Some(cur) = read_opt(&path).await? {
            if String::from_utf8_lossy(&cur).split_whitespace().next() == Some(holder) {
                let _ = tokio::fs::remove_file(&path).await;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn owners_record_round_trips_and_replaces_whole() {
        let dir = tempfile::tempdir().unwrap();
        let s = FileStore::new(dir.path().join("acme"));
        assert_eq!(s.load_owners().await.unwrap(), None);
        s.save_owners("{\"v\":1}").await.unwrap();
        s.save_owners("{\"v\":2}").await.unwrap();
        assert_eq!(s.load_owners().await.unwrap().as_deref(), Some("{\"v\":2}"));
        // Only the record: no temporary file is left beside it.
        let entries: Vec<_> = std::fs::read_dir(dir.path().join("acme"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(entries, ["owners.json"]);
    }

    #[tokio::test]
    async fn file_lock_is_exclusive_and_expired_lease_is_broken() {
        let dir = tempfile::tempdir().unwrap();
        let s = FileStore::new(dir.path());
        let lease = Duration::from_secs(60);
        assert!(s.try_lock("c", "one", lease).await.unwrap());
        assert!(!s.try_lock("c", "two", lease).await.unwrap());
        s.unlock("c", "two").await.unwrap();
        assert!(!s.try_lock("c", "two", lease).await.unwrap());
        s.unlock("c", "one").await.unwrap();
        assert!(s.try_lock("c", "two", Duration::ZERO).await.unwrap());
        assert!(s.try_lock("c", "three", lease).await.unwrap());
    }

    #[tokio::test]
    async fn account_is_private_and_tokens_never_become_paths() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let s = FileStore::new(dir.path());
        s.save_account("https://ca/dir", "{}").await.unwrap();
        s.save_account("https://ca/dir", "{\"a\":1}").await.unwrap();
        assert_eq!(
            s.load_account("https://ca/dir").await.unwrap().unwrap(),
            "{\"a\":1}"
        );
        let files: Vec<_> = std::fs::read_dir(dir.path().join("accounts"))
            .unwrap()
            .map(|e| e.unwrap())
            .collect();
        assert_eq!(files.len(), 1, "no temporary file left behind");
        let mode = files[0].metadata().unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // The directories Wharf creates are private too (the names are hosts).
        let dmode = std::fs::metadata(dir.path().join("accounts"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dmode, 0o700);
        assert!(s.put_challenge("../../etc/passwd", "x").await.is_err());
        assert_eq!(s.get_challenge("../x").await.unwrap(), None);
        s.put_challenge("tok-EN_1", "ka").await.unwrap();
        assert_eq!(s.get_challenge("tok-EN_1").await.unwrap().unwrap(), "ka");
        s.remove_challenge("tok-EN_1").await.unwrap();
        assert_eq!(s.get_challenge("tok-EN_1").await.unwrap(), None);
    }

    #[test]
    fn cert_ids_are_stable_and_safe() {
        let a = cert_id(&canonical_names(&[
            "B.example.org".into(),
            "a.example.org".into(),
        ]));
        let b = cert_id(&canonical_names(&[
            "a.example.org".into(),
            "b.example.org.".into(),
        ]));
        assert_eq!(a, b);
        assert!(a.starts_with("a.example.org-"));
        let w = cert_id(&["*.example.org".to_string()]);
        assert!(
            w.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c)),
            "{w}"
        );
    }
}
