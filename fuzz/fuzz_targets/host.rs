//! Host normalisation (`wharf_table::normalize_host`), which both the routing
//! table and the hot path use to spell a host the same way.
//!
//! Invariants: a normalised host is normal (normalising it again changes
//! nothing), is lower case, non-empty, at most 253 bytes, and has no byte that
//! could split a header or a log line (controls, spaces, `/`, `@`, `%`, `\`).
//! (This target found `a..` -> `a.` -> `a`; fixed: a second trailing dot is
//! refused. docs/security.md, "Fuzzing".)
#![no_main]

use libfuzzer_sys::fuzz_target;
use wharf_table::normalize_host;

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let Some(h) = normalize_host(raw) else {
        return;
    };
    assert!(!h.is_empty(), "{raw:?} normalised to empty");
    assert!(h.len() <= 253, "{raw:?} normalised to {} bytes", h.len());
    assert!(
        !h.bytes().any(|b| b.is_ascii_uppercase()),
        "{raw:?} -> {h:?} not lower case"
    );
    assert!(
        !h.bytes().any(|b| b.is_ascii_control()
            || b >= 0x80
            || matches!(b, b' ' | b'/' | b'@' | b'%' | b'\\' | b'?' | b'#')),
        "{raw:?} -> {h:?} keeps a byte that is never part of a host"
    );
    let again = normalize_host(&h);
    assert_eq!(
        again.as_deref(),
        Some(&*h),
        "not idempotent: {raw:?} -> {h:?} -> {again:?}"
    );
});
