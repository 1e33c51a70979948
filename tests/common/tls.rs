//! TLS client helpers shared by the end-to-end tests (one copy, in `wharf-testkit`).
// Each test binary uses a different part of the re-exports.
#![allow(unused_imports)]

pub use wharf_testkit::tls::AnyCert;
