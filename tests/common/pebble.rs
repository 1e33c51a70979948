//! A real Pebble ACME CA for the end-to-end ACME tests of the binary, from `wharf-testkit`
//! (shared with the crate tests): Pebble validates HTTP-01 and TLS-ALPN-01 on fixed ports, so
//! the test picks Wharf's entrypoint ports first and hands them to both, and
//! pebble-challtestsrv answers every name with 127.0.0.1. Everything started here is killed
//! on drop. What only these tests add: the `[acme]` section pointing Wharf at it, and a TLS
//! handshake bounded by [`WAIT`].
// Each test binary uses a different part of the re-exports.
#![allow(unused_imports)]

use std::net::SocketAddr;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

pub use wharf_testkit::pebble::dns_answers;
pub use wharf_testkit::ports::{free_port, free_udp_port};
pub use wharf_testkit::proc::Proc;
pub use wharf_testkit::require;
pub use wharf_testkit::tls::{
    get_over, leaf, roots_from_pem, tls_connect_within, verifying_client,
};

use super::WAIT;

/// The testkit's Pebble (its fields and calls through `Deref`), with the `[acme]` section
/// for Wharf.
pub struct Pebble(wharf_testkit::pebble::Pebble);

impl Deref for Pebble {
    type Target = wharf_testkit::pebble::Pebble;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl DerefMut for Pebble {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Pebble {
    /// Starts Pebble validating HTTP-01 on `http_port` and TLS-ALPN-01 on
    /// `tls_port` of 127.0.0.1 (the address every name resolves to); retried on
    /// fresh ports of its own when another process takes one first.
    pub fn start(http_port: u16, tls_port: u16) -> Pebble {
        Pebble(wharf_testkit::pebble::Pebble::start(http_port, tls_port))
    }

    /// The `[acme]` section pointing Wharf at this Pebble.
    pub fn acme_section(&self, challenge: &str, storage: &std::path::Path) -> String {
        acme_section(&self.directory, &self.https_ca, challenge, storage)
    }
}

/// An `[acme]` section; `ca_roots` trusts the CA of the ACME server's HTTPS.
pub fn acme_section(
    directory: &str,
    ca: &std::path::Path,
    challenge: &str,
    storage: &std::path::Path,
) -> String {
    format!(
        "[acme]\nemail = \"ops@example.org\"\ndirectory = \"{directory}\"\nchallenge = \"{challenge}\"\n\
         ca_roots = [\"{}\"]\nstorage = \"file:{}\"\n\n",
        ca.display(),
        storage.display()
    )
}

/// A finished TLS handshake with `sni` on `addr` using `cfg`: the stream, or the
/// handshake error (for instance an untrusted certificate).
pub fn tls_connect(
    addr: SocketAddr,
    sni: &str,
    cfg: Arc<rustls::ClientConfig>,
) -> Result<rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>, String> {
    tls_connect_within(addr, sni, cfg, WAIT)
}
