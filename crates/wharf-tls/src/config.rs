//! The rustls server policy and the SNI resolver.
//!
//! Policy: TLS 1.3 and 1.2 only; ECDHE key exchange with AEAD ciphers only (every
//! TLS 1.3 suite; for 1.2 the ECDHE-ECDSA/RSA AES-GCM and ChaCha20-Poly1305 suites,
//! the server's order preferred); no 0-RTT; resumption through stateless tickets
//! (keys rotated by the provider's ticketer) and a bounded session-ID cache.

use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert, ServerSessionMemoryCache};
use rustls::sign::CertifiedKey;
use rustls::{CipherSuite, ServerConfig, SupportedCipherSuite};

use crate::store::CertStore;
use crate::TlsError;

/// ALPN protocol ids (RFC 7301, RFC 8737).
pub const ALPN_H2: &[u8] = b"h2";
pub const ALPN_HTTP11: &[u8] = b"http/1.1";
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// TLS 1.2 session-ID cache entries kept per process (TLS 1.3 and ticket-capable
/// 1.2 clients resume statelessly).
const SESSION_CACHE: usize = 8192;

/// Picks the certificate for each handshake from the store's current snapshot.
/// With `strict_sni` (HAProxy's `strict-sni`), a handshake without a server name,
/// or for a name no certificate covers, is refused instead of getting the
/// default certificate (review L1: without SNI there is no Host/SNI check).
#[derive(Debug)]
pub(crate) struct Resolver {
    pub store: Arc<CertStore>,
    pub strict_sni: bool,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let snap = self.store.snapshot();
        // RFC 8737 §3: a validation handshake offers exactly `acme-tls/1` and an
        // SNI; it gets the challenge certificate or nothing (handshake refused).
        let mut offered = hello.alpn().into_iter().flatten();
        if let (Some(only), None) = (offered.next(), offered.next()) {
            if only == ACME_TLS_ALPN {
                return hello.server_name().and_then(|n| snap.challenge(n));
            }
        }
        if self.strict_sni {
            return hello.server_name().and_then(|n| snap.resolve_strict(n));
        }
        Some(snap.resolve(hello.server_name()))
    }
}

fn allowed(suite: &SupportedCipherSuite) -> bool {
    match suite {
        SupportedCipherSuite::Tls13(_) => true,
        SupportedCipherSuite::Tls12(_) => matches!(
            suite.suite(),
            CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
                | CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
                | CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
                | CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
                | CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384
                | CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
        ),
    }
}

/// The server config of a TLS entrypoint serving `store`'s certificates. With
/// `http2` false only `http/1.1` is offered. `acme-tls/1` is always accepted, but
/// the resolver answers it with a challenge certificate only.
pub fn server_config(store: Arc<CertStore>, http2: bool) -> Result<Arc<ServerConfig>, TlsError> {
    server_config_with(store, http2, false)
}

/// [`server_config`], with `strict_sni`: handshakes without SNI, or for a name
/// no certificate covers, fail (`[entrypoints.*] strict_sni`).
pub fn server_config_with(
    store: Arc<CertStore>,
    http2: bool,
    strict_sni: bool,
) -> Result<Arc<ServerConfig>, TlsError> {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.cipher_suites.retain(allowed);
    let cfg_err = |e: rustls::Error| TlsError::Config(e.to_string());
    let mut cfg = ServerConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(cfg_err)?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Resolver { store, strict_sni }));
    let mut alpn = Vec::new();
    if http2 {
        alpn.push(ALPN_H2.to_vec());
    }
    alpn.push(ALPN_HTTP11.to_vec());
    alpn.push(ACME_TLS_ALPN.to_vec());
    cfg.alpn_protocols = alpn;
    cfg.ignore_client_order = true;
    cfg.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new().map_err(cfg_err)?;
    cfg.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE);
    Ok(Arc::new(cfg))
}
