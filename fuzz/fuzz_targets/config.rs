//! The TOML config file (`wharf_config::parse`: serde types, then validation).
//! Operators write it, but SIGHUP re-reads it in a running proxy, so a file must
//! never panic it.
//!
//! Invariants: what validates holds the bounds validation promises (head size
//! 8 KiB..1 MiB, 8..10000 fields, a non-zero head timeout, distinct entrypoint
//! names), and every static route has a host and a path starting with `/`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(cfg) = wharf_config::parse(text, "fuzz", std::iter::empty()) else {
        return;
    };
    for (i, ep) in cfg.entrypoints.iter().enumerate() {
        assert!((8192..=1024 * 1024).contains(&ep.max_header_size), "{ep:?}");
        assert!((8..=10_000).contains(&ep.max_headers), "{ep:?}");
        assert!(!ep.header_read_timeout.is_zero(), "{ep:?}");
        assert!(
            cfg.entrypoints[..i].iter().all(|o| o.name != ep.name),
            "entrypoint {:?} twice",
            ep.name
        );
    }
    for r in &cfg.routes {
        assert!(!r.hosts.is_empty(), "{r:?}");
        assert!(r.path.starts_with('/'), "{r:?}");
    }
});
