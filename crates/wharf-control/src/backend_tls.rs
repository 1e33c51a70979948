//! The TLS policies of routes with `scheme = "https"`: rustls client configs
//! built from the route's `backend_tls` settings, cached by the settings and the
//! files' size and modification time, so a recompile (every Docker change) reads
//! nothing and a changed CA or client certificate is picked up by the next
//! compile after it changed (SIGHUP, or any provider change).

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use wharf_config::RouteSpec;
use wharf_table::BackendTls;
use wharf_tls::{BackendTlsError, BackendTlsSpec};

type Stamp = Option<(u64, SystemTime)>;

#[derive(Default)]
pub struct TlsPolicies {
    cache: Mutex<HashMap<(BackendTlsSpec, [Stamp; 3]), Built>>,
    /// Routes already logged for `insecure = true`.
    insecure_logged: Mutex<HashSet<String>>,
}

#[derive(Clone)]
struct Built(Result<(Arc<rustls::ClientConfig>, Arc<rustls::ClientConfig>), BackendTlsError>);

fn stamp(p: Option<&Path>) -> Stamp {
    let m = std::fs::metadata(p?).ok()?;
    Some((m.len(), m.modified().ok()?))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl TlsPolicies {
    /// The policy of an `https` route, or why it cannot have one (the key at
    /// fault and the message).
    pub fn policy(&self, r: &RouteSpec) -> Result<Arc<BackendTls>, (String, String)> {
        let t = &r.backend_tls;
        let name = match &t.server_name {
            Some(n) => n.clone(),
            None => r
                .hosts
                .iter()
                .find(|h| !h.starts_with('*'))
                .cloned()
                .ok_or_else(|| {
                    (
                        "backend_tls.server_name".to_string(),
                        "the route's hosts are all wildcards, so there is no name to send and \
                         verify: set backend_tls.server_name (label wharf.backend-tls.server-name)"
                            .to_string(),
                    )
                })?,
        };
        let server_name = wharf_tls::server_name(&name).ok_or_else(|| {
            (
                "backend_tls.server_name".to_string(),
                format!("`{name}` is not a DNS name or an IP address"),
            )
        })?;
        let spec = BackendTlsSpec {
            ca: t.ca.clone(),
            insecure: t.insecure,
            client_cert: t.client_cert.clone(),
            client_key: t.client_key.clone(),
        };
        let stamps = [
            stamp(spec.ca.as_deref()),
            stamp(spec.client_cert.as_deref()),
            stamp(spec.client_key.as_deref()),
        ];
        let cache_key = (spec, stamps);
        let built = {
            let cached = lock(&self.cache).get(&cache_key).cloned();
            match cached {
                Some(b) => b,
                None => {
                    let b = Built(wharf_tls::backend_client_config(&cache_key.0).map(|c| {
                        let h1 = wharf_tls::http11_only(&c);
                        (c, h1)
                    }));
                    let mut cache = lock(&self.cache);
                    // Old stamps of changed files are never asked for again.
                    if cache.len() > 1024 {
                        cache.clear();
                    }
                    cache.insert(cache_key.clone(), b.clone());
                    b
                }
            }
        };
        let (config, config_h1) = built
            .0
            .map_err(|e| (format!("backend_tls.{}", e.key), e.message))?;
        if t.insecure && lock(&self.insecure_logged).insert(r.name.clone()) {
            tracing::warn!(
                route = %r.name,
                "backend_tls.insecure = true: the backends' certificates are not verified; \
                 anyone on the path to them can read and change the traffic"
            );
        }
        let mut h = std::collections::hash_map::DefaultHasher::new();
        cache_key.hash(&mut h);
        name.hash(&mut h);
        Ok(Arc::new(BackendTls {
            config,
            config_h1,
            server_name,
            insecure: t.insecure,
            // Never 0, which the pool keeps for plain connections.
            key: h.finish() | 1,
        }))
    }
}
