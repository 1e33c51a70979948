//! Labels to routes (`wharf_config::service_routes`): what anyone who deploys a
//! stack can write, `wharf.*` and `traefik.*` alike. The input is one label per
//! line, `key=value`.
//!
//! Invariants: a service that is not enabled yields no route and no problem; a
//! service with an error yields no route (its last good routes stay); every route
//! has a port, at least one host, each host already normalised, and a path that
//! starts with `/`; `host_labels` pairs with `routes`; the result is
//! deterministic.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use wharf_config::{service_routes, LabelOptions, ServiceInput};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, text)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let labels: BTreeMap<String, String> = text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let opts = LabelOptions {
        exposed_by_default: flags & 1 != 0,
        traefik_labels: flags & 2 != 0,
        ..LabelOptions::default()
    };
    let ports: &[u16] = match (flags >> 2) & 3 {
        0 => &[],
        1 => &[80],
        _ => &[80, 8080],
    };
    let input = ServiceInput {
        name: "svc",
        labels: &labels,
        exposed_ports: ports,
    };
    let out = service_routes(&input, &opts);
    if !out.enabled {
        assert!(out.routes.is_empty() && out.problems.is_empty(), "{out:?}");
    }
    if out.has_errors() {
        assert!(out.routes.is_empty(), "routes despite an error: {out:?}");
    }
    assert_eq!(out.host_labels.len(), out.routes.len());
    for r in &out.routes {
        assert!(r.port.is_some(), "route without a port: {r:?}");
        assert!(!r.hosts.is_empty(), "route without a host: {r:?}");
        assert!(r.path.starts_with('/'), "path {:?}", r.path);
        for h in &r.hosts {
            assert_eq!(
                wharf_table::normalize_host(h).as_deref(),
                Some(h.as_str()),
                "host {h:?} is not normalised"
            );
        }
    }
    assert_eq!(service_routes(&input, &opts), out, "not deterministic");
});
