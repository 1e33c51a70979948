//! PEM and X.509 reading: a chain and a key into a rustls `CertifiedKey`, and the
//! facts the API shows (names, issuer, expiry).

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use x509_parser::extensions::GeneralName;

use crate::TlsError;

/// What the store records about a leaf certificate.
pub(crate) struct Parsed {
    pub names: Vec<String>,
    pub issuer: String,
    pub not_after: i64,
}

/// Builds a `CertifiedKey` from a PEM chain (leaf first) and a PEM private key,
/// checking that the key matches the leaf. `what` names the input in errors (a
/// file path, or a host name for ACME). ACME can use it for TLS-ALPN-01 challenge
/// certificates too.
pub fn certified_key_from_pem(
    chain_pem: &[u8],
    key_pem: &[u8],
    what: &str,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::BadCertificate {
            what: what.into(),
            message: format!("malformed PEM: {e}"),
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate { what: what.into() });
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoKey { what: what.into() },
        e => TlsError::BadKey {
            what: what.into(),
            message: format!("malformed PEM: {e}"),
        },
    })?;
    certified_key(chain, key, what)
}

pub(crate) fn certified_key(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    what: &str,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let provider = crate::provider();
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| TlsError::BadKey {
            what: what.into(),
            message: e.to_string(),
        })?;
    let ck = CertifiedKey::new(chain, signing);
    match ck.keys_match() {
        Ok(()) => {}
        // A key type whose public key rustls cannot derive: nothing to compare.
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(_)) => {
            return Err(TlsError::KeyMismatch { what: what.into() })
        }
        Err(e) => {
            return Err(TlsError::BadCertificate {
                what: what.into(),
                message: e.to_string(),
            })
        }
    }
    Ok(Arc::new(ck))
}

/// The DNS names of a DER certificate's subjectAltName, lower-cased.
pub fn names_of(der: &[u8]) -> Result<Vec<String>, TlsError> {
    parse(der, "certificate").map(|p| p.names)
}

pub(crate) fn parse(der: &[u8], what: &str) -> Result<Parsed, TlsError> {
    let bad = |message: String| TlsError::BadCertificate {
        what: what.into(),
        message,
    };
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| bad(format!("not an X.509 certificate: {e}")))?;
    let mut names = Vec::new();
    let san = cert
        .subject_alternative_name()
        .map_err(|e| bad(format!("bad subjectAltName: {e}")))?;
    if let Some(san) = san {
        for n in &san.value.general_names {
            if let GeneralName::DNSName(d) = n {
                let d = d.trim_end_matches('.').to_ascii_lowercase();
                if !d.is_empty() && !names.contains(&d) {
                    names.push(d);
                }
            }
        }
    }
    Ok(Parsed {
        names,
        issuer: cert.issuer().to_string(),
        not_after: cert.validity().not_after.timestamp(),
    })
}
