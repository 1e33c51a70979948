//! Test support for Wharf, one copy for every test binary: the crate tests (wharf-acme,
//! wharf-tls) and the end-to-end tests in `tests/` use it as a dev-dependency. It starts real
//! programs (Pebble, pebble-challtestsrv, anything with a readiness line), picks free ports,
//! makes TLS clients and guards swarm mode; it never links Wharf's own crates, so any of them
//! can use it without a dependency cycle.
//!
//! Everything here is blocking (std threads and sockets), so it serves synchronous tests and,
//! through `spawn_blocking`, asynchronous ones alike. A failed setup step panics: in a test
//! that is the failure report.
#![allow(clippy::unwrap_used)]

pub mod docker;
pub mod pebble;
pub mod ports;
pub mod proc;
pub mod tls;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Panics with an install hint when `tool` is not on PATH (CI installs it).
pub fn require(tool: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "`{tool}` is not installed: `apt-get install pebble bind9 bind9-dnsutils` \
         (.ci/run does this)"
    );
}

/// A scratch directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "wharf-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
