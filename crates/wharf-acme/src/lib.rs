//! ACME certificates for Wharf (RFC 8555 through instant-acme).
//!
//! Owns: the ACME account, one order loop per certificate (a list of names), renewal at two thirds
//! of the lifetime, per-name backoff, the three challenges (HTTP-01, TLS-ALPN-01, DNS-01 by RFC 2136
//! UPDATE) and certificate storage (`file:DIR` or `swarm`).
//!
//! It never serves TLS itself: every certificate and every TLS-ALPN-01 challenge certificate leaves
//! this crate through [`CertSink`], which the TLS crate implements for its certificate store, and
//! HTTP-01 answers leave through [`AcmeManager::http01`], which the proxy calls for
//! `/.well-known/acme-challenge/<token>`. The hot path must never link this crate.

mod alpn;
mod client;
mod dns;
mod error;
mod manager;
mod metrics;
mod pem;
pub mod store;
mod swarm;

pub use error::AcmeError;
pub use manager::{AcmeCertState, AcmeCertStatus, AcmeManager, Policy};
pub use store::{CertChange, FileStore, Store, StoredCert};
pub use swarm::SwarmStore;

/// Where issued certificates and TLS-ALPN-01 challenge certificates go (the TLS certificate store).
pub trait CertSink: Send + Sync + 'static {
    /// A new or renewed certificate for these names (PEM chain, PEM PKCS#8 key).
    fn publish(&self, names: &[String], chain_pem: &str, key_pem: &str);
    /// TLS-ALPN-01 (RFC 8737): serve this challenge certificate for `name` when ALPN is
    /// `acme-tls/1`; `None` removes it.
    fn set_alpn_challenge(&self, name: &str, cert: Option<(Vec<u8>, Vec<u8>)>);
}
