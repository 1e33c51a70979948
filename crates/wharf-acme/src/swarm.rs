//! `swarm` storage: the account, certificates, HTTP-01 tokens and order locks live as Docker
//! configs in the swarm's Raft store, so every manager-connected replica sees the same state.
//!
//! Configs are immutable, so a value is versioned by name: `<prefix>-<kind>-<hash>-v<N>`, with the
//! labels `wharf.acme.store=<prefix>`, `wharf.acme.kind` (account | cert | challenge | lock),
//! `wharf.acme.name` (what the entry is for) and `wharf.acme.version=N`. A write creates version
//! N+1 (a name conflict means another replica wrote concurrently: try the next number), then
//! removes the older versions. Readers take the highest version.
//!
//! The order lock is `<prefix>-lock-<hash>`: creating it is the swarm's atomic create-if-absent
//! (a second create fails with 409). Its labels carry the holder and the lease's expiry; an
//! expired lease is broken by removing that exact config (by ID, so a lock re-created meanwhile
//! by someone else is never removed) and creating it again.
//!
//! Replicas waiting on another's order lock learn of a stored certificate from the engine's config
//! events ([`Store::watch_certs`]): the event names the config, and only this store's
//! `<prefix>-cert-` configs are looked at (inspected for their `wharf.acme.name`). When the
//! events stream fails it is opened again with a growing delay, and a resync is reported, since
//! writes may have been missed meanwhile; the manager's periodic re-check covers the gap.
//!
//! Security: config data is readable by anyone with access to the manager API and by every
//! service the config is attached to (Wharf attaches none). See docs/acme.md.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use base64::Engine;
use bollard::models::{Config, ConfigSpec, EventMessage};
use bollard::query_parameters::{EventsOptions, ListConfigsOptions};
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::pem::unix;
use crate::store::{
    canonical_names, cert_id, parse_cert, sha256_hex, valid_token, CertChange, Store, StoredCert,
};
use crate::AcmeError;

const L_STORE: &str = "wharf.acme.store";
const L_KIND: &str = "wharf.acme.kind";
const L_NAME: &str = "wharf.acme.name";
const L_VERSION: &str = "wharf.acme.version";
const L_HOLDER: &str = "wharf.acme.holder";
const L_EXPIRES: &str = "wharf.acme.expires";

/// Delay before opening the config events stream again after it failed; doubles per failure up
/// to [`WATCH_BACKOFF_MAX`] (±25%), and starts over once a stream has lasted [`WATCH_HEALTHY`].
const WATCH_BACKOFF_MIN: Duration = Duration::from_secs(1);
const WATCH_BACKOFF_MAX: Duration = Duration::from_secs(60);
const WATCH_HEALTHY: Duration = Duration::from_secs(30);

pub struct SwarmStore {
    docker: bollard::Docker,
    prefix: String,
}

fn derr(e: bollard::errors::Error) -> AcmeError {
    AcmeError::Storage(format!("docker: {e}"))
}

fn status(e: &bollard::errors::Error) -> Option<u16> {
    match e {
        bollard::errors::Error::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

impl SwarmStore {
    /// Connect with `DOCKER_HOST` or the default socket; configs are named `wharf-acme-…`.
    pub fn connect_default() -> Result<Self, AcmeError> {
        let docker = bollard::Docker::connect_with_defaults().map_err(derr)?;
        Ok(Self::new(docker, "wharf-acme"))
    }

    /// `prefix` names and labels every config (letters, digits, `-`); replicas that share a store
    /// use the same prefix.
    pub fn new(docker: bollard::Docker, prefix: &str) -> Self {
        Self {
            docker,
            prefix: prefix.to_owned(),
        }
    }

    fn base_name(&self, kind: &str, name: &str) -> String {
        format!(
            "{}-{kind}-{}",
            self.prefix,
            &sha256_hex(name.as_bytes())[..16]
        )
    }

    async fn list(&self, kind: &str, name: Option<&str>) -> Result<Vec<Config>, AcmeError> {
        let mut labels = vec![
            format!("{L_STORE}={}", self.prefix),
            format!("{L_KIND}={kind}"),
        ];
        if let Some(n) = name {
            labels.push(format!("{L_NAME}={n}"));
        }
        let filters = HashMap::from([("label".to_string(), labels)]);
        self.docker
            .list_configs(Some(ListConfigsOptions {
                filters: Some(filters),
            }))
            .await
            .map_err(derr)
    }

    /// The newest version of every entry of `kind` (or of one entry), with its data.
    async fn newest(
        &self,
        kind: &str,
        name: Option<&str>,
    ) -> Result<Vec<(String, u64, Config)>, AcmeError> {
        let mut best: HashMap<String, (u64, Config)> = HashMap::new();
        for c in self.list(kind, name).await? {
            let Some(labels) = c.spec.as_ref().and_then(|s| s.labels.as_ref()) else {
                continue;
            };
            let (Some(n), Some(v)) = (
                labels.get(L_NAME).cloned(),
                labels.get(L_VERSION).and_then(|v| v.parse::<u64>().ok()),
            ) else {
                continue;
            };
            if best.get(&n).is_none_or(|(bv, _)| v > *bv) {
                best.insert(n, (v, c));
            }
        }
        Ok(best.into_iter().map(|(n, (v, c))| (n, v, c)).collect())
    }

    fn data(c: &Config) -> Result<Vec<u8>, String> {
        let d = c
            .spec
            .as_ref()
            .and_then(|s| s.data.as_deref())
            .ok_or("config has no data")?;
        b64().decode(d).map_err(|e| e.to_string())
    }

    fn config_name(c: &Config) -> String {
        c.spec
            .as_ref()
            .and_then(|s| s.name.clone())
            .unwrap_or_default()
    }

    /// Write a new version of (kind, name) and remove the older ones.
    async fn put(
        &self,
        kind: &str,
        name: &str,
        data: &[u8],
        extra: &[(&str, String)],
    ) -> Result<(), AcmeError> {
        let existing = self.list(kind, Some(name)).await?;
        let mut version = existing
            .iter()
            .filter_map(|c| {
                c.spec
                    .as_ref()?
                    .labels
                    .as_ref()?
                    .get(L_VERSION)?
                    .parse::<u64>()
                    .ok()
            })
            .max()
            .unwrap_or(0);
        let base = self.base_name(kind, name);
        let created = loop {
            version += 1;
            let mut labels = HashMap::from([
                (L_STORE.to_string(), self.prefix.clone()),
                (L_KIND.to_string(), kind.to_string()),
                (L_NAME.to_string(), name.to_string()),
                (L_VERSION.to_string(), version.to_string()),
            ]);
            for (k, v) in extra {
                labels.insert(k.to_string(), v.clone());
            }
            let spec = ConfigSpec {
                name: Some(format!("{base}-v{version}")),
                labels: Some(labels),
                data: Some(b64().encode(data)),
                templating: None,
            };
            match self.docker.create_config(spec).await {
                Ok(r) => break r.id,
                // Someone wrote this version concurrently; ours goes on top.
                Err(e) if status(&e) == Some(409) && version < 1_000_000 => continue,
                Err(e) => return Err(derr(e)),
            }
        };
        for c in existing {
            if let Some(id) = c.id.filter(|id| *id != created) {
                if let Err(e) = self.docker.delete_config(&id).await {
                    if status(&e) != Some(404) {
                        tracing::warn!(error = %e, "ACME swarm storage: removing an old version");
                    }
                }
            }
        }
        Ok(())
    }

    async fn remove_all(&self, kind: &str, name: &str) -> Result<(), AcmeError> {
        for c in self.list(kind, Some(name)).await? {
            if let Some(id) = c.id {
                match self.docker.delete_config(&id).await {
                    Err(e) if status(&e) != Some(404) => return Err(derr(e)),
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// Remove every config of this store (tests and decommissioning).
    pub async fn purge(&self) -> Result<(), AcmeError> {
        let filters = HashMap::from([(
            "label".to_string(),
            vec![format!("{L_STORE}={}", self.prefix)],
        )]);
        for c in self
            .docker
            .list_configs(Some(ListConfigsOptions {
                filters: Some(filters),
            }))
            .await
            .map_err(derr)?
        {
            if let Some(id) = c.id {
                let _ = self.docker.delete_config(&id).await;
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Store for SwarmStore {
    async fn load_account(&self, directory: &str) -> Result<Option<String>, AcmeError> {
        let key = sha256_hex(directory.as_bytes())[..16].to_string();
        match self.newest("account", Some(&key)).await?.into_iter().next() {
            Some((_, _, c)) => Self::data(&c)
                .map(|d| Some(String::from_utf8_lossy(&d).into_owned()))
                .map_err(|e| AcmeError::Corrupt {
                    entry: Self::config_name(&c),
                    reason: e,
                }),
            None => Ok(None),
        }
    }

    async fn save_account(&self, directory: &str, json: &str) -> Result<(), AcmeError> {
        let key = sha256_hex(directory.as_bytes())[..16].to_string();
        self.put("account", &key, json.as_bytes(), &[]).await
    }

    async fn load_owners(&self) -> Result<Option<String>, AcmeError> {
        match self
            .newest("owners", Some("hosts"))
            .await?
            .into_iter()
            .next()
        {
            Some((_, _, c)) => Self::data(&c)
                .map(|d| Some(String::from_utf8_lossy(&d).into_owned()))
                .map_err(|e| AcmeError::Corrupt {
                    entry: Self::config_name(&c),
                    reason: e,
                }),
            None => Ok(None),
        }
    }

    async fn save_owners(&self, json: &str) -> Result<(), AcmeError> {
        // A new config version, then the old ones go: atomic for readers.
        self.put("owners", "hosts", json.as_bytes(), &[]).await
    }

    async fn load_certs(&self) -> Result<Vec<Result<StoredCert, AcmeError>>, AcmeError> {
        Ok(self
            .newest("cert", None)
            .await?
            .into_iter()
            .map(|(_, _, c)| {
                let entry = Self::config_name(&c);
                Self::data(&c)
                    .map_err(|reason| AcmeError::Corrupt {
                        entry: entry.clone(),
                        reason,
                    })
                    .and_then(|d| parse_cert(&entry, &d))
            })
            .collect())
    }

    async fn load_cert(&self, names: &[String]) -> Result<Option<StoredCert>, AcmeError> {
        let id = cert_id(&canonical_names(names));
        match self.newest("cert", Some(&id)).await?.into_iter().next() {
            Some((_, _, c)) => {
                let entry = Self::config_name(&c);
                let d = Self::data(&c).map_err(|reason| AcmeError::Corrupt {
                    entry: entry.clone(),
                    reason,
                })?;
                parse_cert(&entry, &d).map(Some)
            }
            None => Ok(None),
        }
    }

    async fn save_cert(&self, cert: &StoredCert) -> Result<(), AcmeError> {
        let id = cert_id(&canonical_names(&cert.names));
        let data = serde_json::to_vec(cert).map_err(|e| AcmeError::Storage(e.to_string()))?;
        self.put("cert", &id, &data, &[]).await
    }

    async fn put_challenge(&self, token: &str, key_auth: &str) -> Result<(), AcmeError> {
        if !valid_token(token) {
            return Err(AcmeError::Storage(format!("refusing token `{token}`")));
        }
        self.put("challenge", token, key_auth.as_bytes(), &[]).await
    }

    async fn get_challenge(&self, token: &str) -> Result<Option<String>, AcmeError> {
        if !valid_token(token) {
            return Ok(None);
        }
        Ok(self
            .newest("challenge", Some(token))
            .await?
            .into_iter()
            .next()
            .and_then(|(_, _, c)| Self::data(&c).ok())
            .map(|d| String::from_utf8_lossy(&d).into_owned()))
    }

    async fn list_challenges(&self) -> Result<Option<Vec<(String, String)>>, AcmeError> {
        Ok(Some(
            self.newest("challenge", None)
                .await?
                .into_iter()
                .filter_map(|(token, _, c)| {
                    let d = Self::data(&c).ok()?;
                    Some((token, String::from_utf8_lossy(&d).into_owned()))
                })
                .collect(),
        ))
    }

    async fn remove_challenge(&self, token: &str) -> Result<(), AcmeError> {
        if !valid_token(token) {
            return Ok(());
        }
        self.remove_all("challenge", token).await
    }

    async fn try_lock(&self, id: &str, holder: &str, lease: Duration) -> Result<bool, AcmeError> {
        let name = self.base_name("lock", id);
        for _ in 0..2 {
            let labels = HashMap::from([
                (L_STORE.to_string(), self.prefix.clone()),
                (L_KIND.to_string(), "lock".to_string()),
                (L_NAME.to_string(), id.to_string()),
                (L_HOLDER.to_string(), holder.to_string()),
                (
                    L_EXPIRES.to_string(),
                    unix(SystemTime::now() + lease).to_string(),
                ),
            ]);
            let spec = ConfigSpec {
                name: Some(name.clone()),
                labels: Some(labels),
                data: Some(b64().encode(holder)),
                templating: None,
            };
            match self.docker.create_config(spec).await {
                Ok(_) => return Ok(true),
                Err(e) if status(&e) == Some(409) => {}
                Err(e) => return Err(derr(e)),
            }
            let cur = match self.docker.inspect_config(&name).await {
                Ok(c) => c,
                Err(e) if status(&e) == Some(404) => continue, // released meanwhile
                Err(e) => return Err(derr(e)),
            };
            let labels = cur
                .spec
                .as_ref()
                .and_then(|s| s.labels.clone())
                .unwrap_or_default();
            if labels.get(L_HOLDER).map(String::as_str) == Some(holder) {
                return Ok(true);
            }
            let expires = labels
                .get(L_EXPIRES)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
            if expires > unix(SystemTime::now()) {
                return Ok(false);
            }
            // Expired lease: remove exactly that config, then race to create a fresh one.
            if let Some(cid) = cur.id {
                match self.docker.delete_config(&cid).await {
                    Err(e) if status(&e) != Some(404) => return Err(derr(e)),
                    _ => {}
                }
            }
        }
        Ok(false)
    }

    fn watch_certs(&self, cancel: CancellationToken) -> Option<mpsc::Receiver<CertChange>> {
        let (tx, rx) = mpsc::channel(64);
        let watcher = CertWatcher {
            docker: self.docker.clone(),
            prefix: self.prefix.clone(),
            tx,
        };
        tokio::spawn(watcher.run(cancel));
        Some(rx)
    }

    async fn unlock(&self, id: &str, holder: &str) -> Result<(), AcmeError> {
        let name = self.base_name("lock", id);
        let cur = match self.docker.inspect_config(&name).await {
            Ok(c) => c,
            Err(e) if status(&e) == Some(404) => return Ok(()),
            Err(e) => return Err(derr(e)),
        };
        let mine = cur
            .spec
            .as_ref()
            .and_then(|s| s.labels.as_ref())
            .and_then(|l| l.get(L_HOLDER))
            .is_some_and(|h| h == holder);
        if let (true, Some(cid)) = (mine, cur.id) {
            match self.docker.delete_config(&cid).await {
                Err(e) if status(&e) != Some(404) => return Err(derr(e)),
                _ => {}
            }
        }
        Ok(())
    }
}

/// Follows the engine's config events and reports this store's certificate writes.
struct CertWatcher {
    docker: bollard::Docker,
    prefix: String,
    tx: mpsc::Sender<CertChange>,
}

impl CertWatcher {
    /// Ends with `cancel` or when the receiver is dropped; never otherwise, and never spins: a
    /// stream that fails (at once or later) is opened again after [`WATCH_BACKOFF_MIN`], doubling.
    async fn run(self, cancel: CancellationToken) {
        let mut backoff = WATCH_BACKOFF_MIN;
        let mut reconnect = false;
        loop {
            let opened = tokio::time::Instant::now();
            let why = tokio::select! {
                _ = cancel.cancelled() => return,
                _ = self.tx.closed() => return,
                r = self.follow(reconnect) => match r {
                    Ok(()) => "the stream ended".to_owned(),
                    Err(e) => e,
                },
            };
            reconnect = true;
            if opened.elapsed() >= WATCH_HEALTHY {
                backoff = WATCH_BACKOFF_MIN;
            }
            let wait = backoff.mul_f64(0.75 + fastrand::f64() * 0.5);
            backoff = (backoff * 2).min(WATCH_BACKOFF_MAX);
            tracing::warn!(error = %why, retry_in = ?wait,
                "ACME swarm storage: config events lost; stored certificates are re-checked periodically meanwhile");
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = self.tx.closed() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// One events stream, until it fails. After a reconnect a resync is reported first: writes
    /// made while no stream was open were not seen.
    async fn follow(&self, resync: bool) -> Result<(), String> {
        let filters = HashMap::from([
            ("type".to_string(), vec!["config".to_string()]),
            (
                "event".to_string(),
                vec!["create".to_string(), "update".to_string()],
            ),
        ]);
        let mut events = self.docker.events(Some(EventsOptions {
            filters: Some(filters),
            ..Default::default()
        }));
        if resync {
            self.send(CertChange::Resync).await?;
        }
        let cert_prefix = format!("{}-cert-", self.prefix);
        while let Some(ev) = events.next().await {
            let ev = ev.map_err(|e| e.to_string())?;
            let Some(id) = cert_config(&ev, &cert_prefix) else {
                continue;
            };
            match self.docker.inspect_config(id).await {
                Ok(c) => {
                    let labels = c.spec.and_then(|s| s.labels).unwrap_or_default();
                    let ours = labels.get(L_STORE) == Some(&self.prefix)
                        && labels.get(L_KIND).map(String::as_str) == Some("cert");
                    if let (true, Some(name)) = (ours, labels.get(L_NAME)) {
                        self.send(CertChange::Stored(name.clone())).await?;
                    }
                }
                // Replaced already: the newer version has its own event.
                Err(e) if status(&e) == Some(404) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "ACME swarm storage: inspecting a new certificate config");
                    self.send(CertChange::Resync).await?;
                }
            }
        }
        Ok(())
    }

    async fn send(&self, c: CertChange) -> Result<(), String> {
        self.tx
            .send(c)
            .await
            .map_err(|_| "the manager stopped".to_owned())
    }
}

/// The config ID of a create or update event for one of this store's certificate configs (its
/// name starts with `cert_prefix`); the name alone decides, so other configs cost no API call.
fn cert_config<'a>(ev: &'a EventMessage, cert_prefix: &str) -> Option<&'a str> {
    if !matches!(ev.action.as_deref(), Some("create" | "update")) {
        return None;
    }
    let actor = ev.actor.as_ref()?;
    let name = actor.attributes.as_ref()?.get("name")?;
    if !name.starts_with(cert_prefix) {
        return None;
    }
    actor.id.as_deref()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::EventActor;

    fn ev(action: &str, name: &str) -> EventMessage {
        EventMessage {
            action: Some(action.to_owned()),
            actor: Some(EventActor {
                id: Some("cfg-id".to_owned()),
                attributes: Some(HashMap::from([("name".to_owned(), name.to_owned())])),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn only_this_stores_certificate_writes_are_looked_at() {
        let p = "wharf-acme-cert-";
        assert_eq!(
            cert_config(&ev("create", "wharf-acme-cert-0123456789abcdef-v2"), p),
            Some("cfg-id")
        );
        assert_eq!(
            cert_config(&ev("update", "wharf-acme-cert-0123-v1"), p),
            Some("cfg-id")
        );
        // Removals are the older versions a write replaces; other kinds, other stores and
        // other configs never cost an inspect.
        assert_eq!(
            cert_config(&ev("remove", "wharf-acme-cert-0123-v1"), p),
            None
        );
        assert_eq!(cert_config(&ev("create", "wharf-acme-lock-0123"), p), None);
        assert_eq!(
            cert_config(&ev("create", "wharf-acme-challenge-0123-v1"), p),
            None
        );
        assert_eq!(
            cert_config(&ev("create", "wharf-acme-test-1-cert-0123-v1"), p),
            None
        );
        assert_eq!(cert_config(&ev("create", "nginx.conf"), p), None);
        assert_eq!(cert_config(&EventMessage::default(), p), None);
    }

    /// An engine that cannot be reached: the watch retries with a growing delay (each retry
    /// reports a resync), never in a tight loop, and ends when the manager drops the receiver.
    #[tokio::test(start_paused = true)]
    async fn a_failing_events_stream_is_retried_with_backoff_never_spinning() {
        // A socket file nobody listens on any more: every connection is refused.
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("docker.sock");
        drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
        let docker = bollard::Docker::connect_with_unix(
            sock.to_str().unwrap(),
            5,
            bollard::API_DEFAULT_VERSION,
        )
        .unwrap();
        let store = SwarmStore::new(docker, "wharf-acme-test");
        let cancel = CancellationToken::new();
        let mut rx = store.watch_certs(cancel.clone()).unwrap();
        let started = tokio::time::Instant::now();
        let mut resyncs = 0;
        while started.elapsed() < Duration::from_secs(600) && resyncs <= 100 {
            match tokio::time::timeout(Duration::from_secs(600), rx.recv()).await {
                Ok(Some(CertChange::Resync)) => resyncs += 1,
                other => panic!("{other:?}"),
            }
        }
        // 1, 2, 4 .. 32 s, then every 60 s (±25%): about 14 retries in ten minutes.
        assert!((8..=20).contains(&resyncs), "{resyncs} retries in 10 min");
        drop(rx);
        cancel.cancel();
    }
}
