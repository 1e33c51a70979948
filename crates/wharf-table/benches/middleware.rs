//! Guards the gate and header phases a route may carry (`ipallowlist`,
//! `basicauth`, `headers`): the allow-list check per request (4 and 64 ranges,
//! IPv4 and IPv4-mapped IPv6), the basic-auth check of a credential already
//! verified (the keyed-hash cache that spares a logged-in client bcrypt), and a
//! header rewrite (2 set + 1 removed). A route that configures none of them pays
//! one `Option` check per phase, measured here as `none`.
//! Target: each well under a microsecond; bcrypt itself (cost 5, measured once
//! for reference) is what the cache avoids.

#![allow(clippy::unwrap_used)]

use std::net::IpAddr;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderName, HeaderValue};
use wharf_table::{AuthCache, HeaderRules, IpAllowList};

fn allow_list(n: usize) -> IpAllowList {
    IpAllowList {
        ranges: (0..n)
            .map(|i| format!("10.{}.0.0/16", i % 256).parse().unwrap())
            .collect(),
        depth: 0,
    }
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("middleware");
    let none: Option<IpAllowList> = None;
    g.bench_function("none", |b| b.iter(|| black_box(&none).is_some()));
    for n in [4, 64] {
        let l = allow_list(n);
        // The last range matches: the whole list is scanned.
        let hit: IpAddr = format!("10.{}.1.2", (n - 1) % 256).parse().unwrap();
        let miss: IpAddr = "192.0.2.1".parse().unwrap();
        let mapped: IpAddr = format!("::ffff:10.{}.1.2", (n - 1) % 256).parse().unwrap();
        g.bench_function(format!("allowlist_{n}_hit"), |b| {
            b.iter(|| l.allows(black_box(hit)))
        });
        g.bench_function(format!("allowlist_{n}_miss"), |b| {
            b.iter(|| l.allows(black_box(miss)))
        });
        g.bench_function(format!("allowlist_{n}_mapped_v6"), |b| {
            b.iter(|| l.allows(black_box(mapped)))
        });
    }
    let cache = AuthCache::new();
    let cred = b"YWRtaW46cGFzc3dvcmQ=";
    cache.insert(cred);
    for i in 0..500 {
        cache.insert(format!("other-{i}").as_bytes());
    }
    g.bench_function("basicauth_cached", |b| {
        b.iter(|| cache.contains(black_box(cred)))
    });
    let hash = bcrypt::hash("password", 5).unwrap();
    g.sample_size(10);
    g.bench_function("basicauth_bcrypt_cost5_uncached", |b| {
        b.iter(|| bcrypt::verify(black_box("password"), &hash).unwrap())
    });
    g.sample_size(100);
    let rules = HeaderRules {
        request: vec![
            (
                HeaderName::from_static("x-env"),
                Some(HeaderValue::from_static("prod")),
            ),
            (
                HeaderName::from_static("x-frame-options"),
                Some(HeaderValue::from_static("DENY")),
            ),
            (HeaderName::from_static("x-drop"), None),
        ],
        response: Vec::new(),
    };
    let mut base = HeaderMap::new();
    for (k, v) in [
        ("host", "app.example.org"),
        ("user-agent", "bench"),
        ("accept", "*/*"),
        ("x-drop", "1"),
        ("x-forwarded-for", "192.0.2.1"),
    ] {
        base.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
    }
    g.bench_function("headers_rewrite_3", |b| {
        b.iter_batched_ref(
            || base.clone(),
            |h| HeaderRules::apply(&rules.request, h),
            criterion::BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
