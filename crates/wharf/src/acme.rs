//! ACME wiring: the certificate store is the ACME manager's sink, HTTP-01 tokens
//! are answered on plain entrypoints, and per-certificate ACME states are copied
//! into the store so `/api/certificates` shows them.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};
use wharf_acme::{AcmeCertState, AcmeManager, CertSink, Policy};
use wharf_config::Config;
use wharf_proxy::{Http01Answer, Http01Responder, NoHttp01};
use wharf_tls::{CertSource, CertState, CertStore};

/// The certificate store as the ACME manager sees it.
struct Sink(Arc<CertStore>);

impl CertSink for Sink {
    fn publish(&self, names: &[String], chain_pem: &str, key_pem: &str) {
        match self
            .0
            .insert_pem(CertSource::Acme, chain_pem.as_bytes(), key_pem.as_bytes())
        {
            Ok(info) => {
                info!(names = ?info.names, not_after = info.not_after, "acme: certificate installed")
            }
            Err(e) => error!(names = ?names, "acme: the issued certificate cannot be served: {e}"),
        }
    }

    fn set_alpn_challenge(&self, name: &str, cert: Option<(Vec<u8>, Vec<u8>)>) {
        let key = match cert {
            None => None,
            Some((cert, key)) => {
                let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key));
                match wharf_tls::provider().key_provider.load_private_key(der) {
                    Ok(signing) => Some(Arc::new(CertifiedKey::new(
                        vec![CertificateDer::from(cert)],
                        signing,
                    ))),
                    Err(e) => {
                        error!(name, "acme: TLS-ALPN-01 challenge key unusable: {e}");
                        return;
                    }
                }
            }
        };
        self.0.set_alpn_challenge(name, key);
    }
}

/// Answers HTTP-01 from the manager (and, with `swarm` storage, from the store,
/// so any replica answers a challenge another one started).
struct Http01(AcmeManager);

impl Http01Responder for Http01 {
    fn respond<'a>(&'a self, token: &'a str) -> Http01Answer<'a> {
        Box::pin(self.0.http01(token))
    }
}

pub fn http01_responder(acme: Option<&AcmeManager>) -> Arc<dyn Http01Responder> {
    match acme {
        Some(m) => Arc::new(Http01(m.clone())),
        None => Arc::new(NoHttp01),
    }
}

/// Starts ACME when `[acme] email` is set: stored certificates are published at
/// once, before any listener opens. Without an email, no certificate is ordered
/// and routes are served with self-signed certificates (SPEC). `Err` says why ACME
/// could not start (for `/api/errors`); routes keep their placeholders.
pub async fn start(
    cfg: &Config,
    certs: &Arc<CertStore>,
    registry: &prometheus::Registry,
    cancel: &CancellationToken,
) -> Result<Option<AcmeManager>, String> {
    if cfg
        .acme
        .email
        .as_deref()
        .is_none_or(|e| e.trim().is_empty())
    {
        info!("acme: no [acme] email; no certificate is ordered (self-signed certificates are served)");
        return Ok(None);
    }
    let sink: Arc<dyn CertSink> = Arc::new(Sink(certs.clone()));
    let manager = match AcmeManager::new(cfg.acme.clone(), sink, Policy::default()) {
        Ok(m) => m,
        Err(e) => {
            error!("acme: cannot start, no certificate will be ordered: {e}");
            return Err(format!(
                "ACME cannot start, no certificate is ordered until a restart: {e}"
            ));
        }
    };
    if let Err(e) = manager.register_metrics(registry) {
        warn!("acme: metrics not registered: {e}");
    }
    match manager.start().await {
        Ok(ignored) => {
            for e in ignored {
                warn!("acme: stored entry ignored (it will be ordered again): {e}");
            }
        }
        Err(e) => {
            error!("acme: cannot start, no certificate will be ordered: {e}");
            return Err(format!(
                "ACME cannot start, no certificate is ordered until a restart: {e}"
            ));
        }
    }
    tokio::spawn(sync_states(manager.clone(), certs.clone(), cancel.clone()));
    Ok(Some(manager))
}

/// Copies each ACME certificate's state (pending, renewing, failed with reason)
/// onto the store's entry serving its names, for `/api/certificates`.
async fn sync_states(manager: AcmeManager, certs: Arc<CertStore>, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        for status in manager.certificates() {
            let state = match &status.state {
                AcmeCertState::Valid => CertState::Valid,
                AcmeCertState::Pending => CertState::Pending,
                AcmeCertState::Renewing => CertState::Renewing,
                AcmeCertState::Failed { reason, retry_at } => {
                    let retry = humantime::format_rfc3339_seconds(*retry_at);
                    CertState::Failed(format!("{reason} (next attempt {retry})"))
                }
            };
            for name in &status.names {
                if let Some(info) = certs.lookup(name) {
                    let ours = matches!(info.source, CertSource::Acme | CertSource::SelfSigned);
                    if ours && info.state != state {
                        certs.set_state(info.id, state.clone());
                    }
                }
            }
        }
    }
}
