//! Parsing of stored PEM material: validity window of the leaf and a sanity check of the key.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::AcmeError;

/// notBefore, notAfter and issuer of the first certificate of a PEM chain.
pub(crate) fn validity(chain_pem: &str) -> Result<(SystemTime, SystemTime, String), AcmeError> {
    let first = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .next()
        .ok_or_else(|| AcmeError::Certificate("no certificate in PEM chain".into()))?
        .map_err(|e| AcmeError::Certificate(format!("bad PEM: {e}")))?;
    let (_, cert) = x509_parser::parse_x509_certificate(first.as_ref())
        .map_err(|e| AcmeError::Certificate(format!("bad X.509: {e}")))?;
    let v = cert.validity();
    let to_sys = |t: i64| UNIX_EPOCH + Duration::from_secs(t.max(0) as u64);
    Ok((
        to_sys(v.not_before.timestamp()),
        to_sys(v.not_after.timestamp()),
        cert.issuer().to_string(),
    ))
}

/// The key parses as a PKCS#8/SEC1/PKCS#1 private key.
pub(crate) fn check_key(key_pem: &str) -> Result<(), AcmeError> {
    PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map(|_| ())
        .map_err(|e| AcmeError::Certificate(format!("bad private key PEM: {e}")))
}

pub(crate) fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
