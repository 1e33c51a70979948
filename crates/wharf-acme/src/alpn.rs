//! TLS-ALPN-01 challenge certificates (RFC 8737 §3).

use rcgen::{CertificateParams, CustomExtension, DistinguishedName, KeyPair, SanType};

use crate::AcmeError;

/// A self-signed certificate for `name` carrying the critical acmeIdentifier extension
/// (id-pe-acmeIdentifier, 1.3.6.1.5.5.7.1.31) with the SHA-256 digest of the key authorization.
/// Returns (certificate DER, PKCS#8 key DER).
pub(crate) fn challenge_cert(
    name: &str,
    key_auth_sha256: &[u8],
) -> Result<(Vec<u8>, Vec<u8>), AcmeError> {
    let err = |e: rcgen::Error| AcmeError::Challenge {
        name: name.to_owned(),
        reason: e.to_string(),
    };
    if key_auth_sha256.len() != 32 {
        return Err(AcmeError::Challenge {
            name: name.to_owned(),
            reason: "key authorization digest is not SHA-256".into(),
        });
    }
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![SanType::DnsName(name.try_into().map_err(err)?)];
    params
        .custom_extensions
        .push(CustomExtension::new_acme_identifier(key_auth_sha256));
    let key = KeyPair::generate().map_err(err)?;
    let cert = params.self_signed(&key).map_err(err)?;
    Ok((cert.der().to_vec(), key.serialize_der()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extension_is_critical_and_holds_digest() {
        let digest = [7u8; 32];
        let (der, _) = challenge_cert("a.example.org", &digest).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let ext = cert
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .expect("acmeIdentifier present");
        assert!(ext.critical);
        // OCTET STRING (0x04), length 32, digest.
        assert_eq!(&ext.value[..2], &[0x04, 32]);
        assert_eq!(&ext.value[2..], &digest);
    }
}
