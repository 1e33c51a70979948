//! TLS termination: the certificate store, the SNI resolver that reads it on every
//! handshake, and the rustls server policy (protocols, cipher suites, ALPN,
//! session resumption).
//!
//! The store is published with arc-swap: writers (file reloads, ACME, self-signed
//! placeholders) build a new immutable snapshot and swap it once; the handshake
//! path only `load()`s. Nothing here orders certificates: ACME (another crate)
//! plugs in through [`CertStore::insert_pem`], [`CertStore::set_alpn_challenge`],
//! [`CertStore::set_state`] and the [`Http01Responder`] trait.

mod client;
mod config;
mod pem;
mod store;

pub use client::{
    backend_client_config, http11_only, server_name, BackendTlsError, BackendTlsSpec,
};
pub use config::{server_config, server_config_with, ACME_TLS_ALPN, ALPN_H2, ALPN_HTTP11};
pub use pem::{certified_key_from_pem, names_of};
pub use store::{check_files, CertId, CertInfo, CertSource, CertState, CertStore};

use std::path::PathBuf;

/// The crypto provider used everywhere in Wharf (rustls, tokio-rustls, rcgen and
/// instant-acme): aws-lc-rs, rustls' default, the faster one for ECDSA P-256
/// handshakes and the one with a FIPS-validated build.
pub fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Answers ACME HTTP-01 challenges (RFC 8555 §8.3): given the token from
/// `GET /.well-known/acme-challenge/<token>`, the key authorization to send back,
/// or `None` when the token is unknown (the request is then routed as usual).
///
/// Called on the request path of plain entrypoints. It is asynchronous because
/// with shared (`swarm`) storage the answer may have to be read from the store
/// when another replica started the order.
pub trait Http01Responder: Send + Sync + 'static {
    fn respond<'a>(&'a self, token: &'a str) -> Http01Answer<'a>;
}

/// What [`Http01Responder::respond`] returns.
pub type Http01Answer<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Option<String>> + Send + 'a>>;

/// The responder used until ACME is wired in: knows no token.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoHttp01;

impl Http01Responder for NoHttp01 {
    fn respond<'a>(&'a self, _token: &'a str) -> Http01Answer<'a> {
        Box::pin(std::future::ready(None))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what}: no PEM certificate found")]
    NoCertificate { what: String },
    #[error("{what}: no usable PEM private key found (PKCS#8, PKCS#1 or SEC1)")]
    NoKey { what: String },
    #[error("{what}: {message}")]
    BadCertificate { what: String, message: String },
    #[error("{what}: the private key does not match the certificate")]
    KeyMismatch { what: String },
    #[error("{what}: unsupported private key: {message}")]
    BadKey { what: String, message: String },
    #[error("{what}: the certificate names no DNS host (subjectAltName)")]
    NoNames { what: String },
    #[error("generating a self-signed certificate: {0}")]
    Generate(String),
    #[error("TLS configuration: {0}")]
    Config(String),
}

#[cfg(test)]
mod tests;
