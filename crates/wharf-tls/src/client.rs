//! TLS to backends (`scheme = "https"`): the rustls client policy of a route.
//!
//! Verification is on by default, against the system's roots (read once per
//! process) plus the route's `ca` file; `insecure` turns it off and says so. ALPN
//! offers `h2` then `http/1.1`, so a backend that speaks HTTP/2 gets it. rustls'
//! in-memory session cache is on: a reconnect resumes instead of a full
//! handshake.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::config::{ALPN_H2, ALPN_HTTP11};

/// What a route asks of its TLS connections to backends.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct BackendTlsSpec {
    /// Verify against these roots too (PEM, one or more certificates).
    pub ca: Option<PathBuf>,
    /// Do not verify the backend's certificate at all.
    pub insecure: bool,
    /// Present this certificate chain and key (mutual TLS).
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

/// Why a route's backend TLS settings cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendTlsError {
    /// The setting at fault (`ca`, `client_cert`, `client_key`).
    pub key: &'static str,
    pub message: String,
}

impl fmt::Display for BackendTlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "backend_tls.{}: {}", self.key, self.message)
    }
}

fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, BackendTlsError> {
    std::fs::read(path).map_err(|e| BackendTlsError {
        key,
        message: format!("{}: cannot read: {e}", path.display()),
    })
}

fn certs(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, BackendTlsError> {
    let pem = read(key, path)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| BackendTlsError {
            key,
            message: format!("{}: not a PEM certificate file: {e}", path.display()),
        })?;
    if certs.is_empty() {
        return Err(BackendTlsError {
            key,
            message: format!("{}: no PEM certificate in it", path.display()),
        });
    }
    Ok(certs)
}

/// The system's trusted roots, read once (rustls-native-certs: the OS store,
/// `SSL_CERT_FILE`/`SSL_CERT_DIR` honoured).
fn system_roots() -> &'static RootCertStore {
    static ROOTS: OnceLock<RootCertStore> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        for e in &found.errors {
            tracing::warn!(error = %e, "backend TLS: a system root certificate store could not be read");
        }
        let mut roots = RootCertStore::empty();
        let (added, ignored) = roots.add_parsable_certificates(found.certs);
        tracing::debug!(added, ignored, "backend TLS: system roots loaded");
        roots
    })
}

/// Builds the client policy of a route's backend connections.
pub fn backend_client_config(spec: &BackendTlsSpec) -> Result<Arc<ClientConfig>, BackendTlsError> {
    let provider = crate::provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| BackendTlsError {
            key: "insecure",
            message: e.to_string(),
        })?;
    let builder = if spec.insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
    } else {
        let mut roots = system_roots().clone();
        if let Some(ca) = &spec.ca {
            for c in certs("ca", ca)? {
                roots.add(c).map_err(|e| BackendTlsError {
                    key: "ca",
                    message: format!("{}: not a usable CA certificate: {e}", ca.display()),
                })?;
            }
        }
        builder.with_root_certificates(roots)
    };
    let mut config = match (&spec.client_cert, &spec.client_key) {
        (Some(cert), Some(key)) => {
            let chain = certs("client_cert", cert)?;
            let pem = read("client_key", key)?;
            let key_der = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| BackendTlsError {
                key: "client_key",
                message: format!("{}: not a PEM private key: {e}", key.display()),
            })?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| BackendTlsError {
                    key: "client_key",
                    message: format!("does not match the client certificate or is not usable: {e}"),
                })?
        }
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP11.to_vec()];
    Ok(Arc::new(config))
}

/// The same policy offering HTTP/1.1 only (the health checker speaks it).
pub fn http11_only(config: &ClientConfig) -> Arc<ClientConfig> {
    let mut c = config.clone();
    c.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    Arc::new(c)
}

/// The server name to send (SNI) and verify: the route's `server_name`, else its
/// host.
pub fn server_name(name: &str) -> Option<ServerName<'static>> {
    ServerName::try_from(name.to_string()).ok()
}

/// `insecure = true`: any certificate is accepted; signatures are still checked
/// so the handshake itself stays sound.
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_setting_and_the_file() {
        let missing = BackendTlsSpec {
            ca: Some("/nonexistent/ca.pem".into()),
            ..BackendTlsSpec::default()
        };
        let e = backend_client_config(&missing).unwrap_err();
        assert_eq!(e.key, "ca");
        assert!(e.message.contains("/nonexistent/ca.pem"), "{e}");

        let dir = std::env::temp_dir().join(format!("wharf-client-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let junk = dir.join("junk.pem");
        std::fs::write(&junk, "not pem").unwrap();
        let e = backend_client_config(&BackendTlsSpec {
            ca: Some(junk.clone()),
            ..BackendTlsSpec::default()
        })
        .unwrap_err();
        assert!(e.message.contains("no PEM certificate"), "{e}");

        let ck = rcgen::generate_simple_self_signed(vec!["client".into()]).unwrap();
        let cert = dir.join("client.pem");
        std::fs::write(&cert, ck.cert.pem()).unwrap();
        let e = backend_client_config(&BackendTlsSpec {
            client_cert: Some(cert.clone()),
            client_key: Some(junk),
            ..BackendTlsSpec::default()
        })
        .unwrap_err();
        assert_eq!(e.key, "client_key");
        let key = dir.join("client.key");
        std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
        let ok = backend_client_config(&BackendTlsSpec {
            ca: Some(cert.clone()),
            client_cert: Some(cert),
            client_key: Some(key),
            insecure: false,
        })
        .unwrap();
        assert_eq!(
            ok.alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );
        assert_eq!(http11_only(&ok).alpn_protocols, vec![b"http/1.1".to_vec()]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
