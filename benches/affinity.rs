//! Guards what stickiness and rate limits add to a request (issue 9): verifying
//! a sticky token (parse the cookie form, look it up in the route's token map,
//! compare the MAC) and one GCRA rate-limit check per key kind, at 3 and 1,000
//! backends and with 1 or 100,000 live keys. Target: each well under 200 ns.

#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use wharf_table::ratelimit::KeyOf;
use wharf_table::sticky::now_nanos;
use wharf_table::{
    BackendDef, BackendRegistry, Balance, CookieSticky, EntrypointMask, Policy, RateKey, RateLimit,
    RouteDef, Scheme, StickyKey, StickyPolicy, Table, Token,
};

fn table(n: usize) -> (BackendRegistry, Table) {
    let reg = BackendRegistry::new();
    reg.set_sticky_key(StickyKey::new(b"bench-secret"));
    let def = RouteDef {
        name: "r".into(),
        source: "bench".into(),
        hosts: vec!["h".into()],
        path: "/".into(),
        entrypoints: EntrypointMask::ALL,
        balance: Balance::LeastConn,
        backends: (0..n)
            .map(|i| BackendDef {
                addr: SocketAddr::from(([10, 1, (i >> 8) as u8, i as u8], 8080)),
                scheme: Scheme::Http,
                draining: false,
                identity: Some(format!("web.{i}").into()),
            })
            .collect(),
        policy: Policy {
            sticky: Some(Arc::new(StickyPolicy::Cookie(CookieSticky {
                name: "WHARFID".into(),
                prefix: false,
                max_age: None,
            }))),
            ..Policy::default()
        },
    };
    let (t, _) = Table::compile(vec![def], &reg);
    (reg, t)
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("sticky");
    for n in [3usize, 1000] {
        let (_reg, t) = table(n);
        let route = t.routes()[0].clone();
        let text = route.backends.all()[n / 2].token.unwrap().text();
        g.bench_function(format!("verify_token/{n}"), |b| {
            b.iter(|| {
                let t = Token::parse(black_box(&text)).unwrap();
                black_box(route.backends.by_token(&t).map(|b| b.addr))
            })
        });
        let mut forged = text;
        forged[5] ^= 1;
        g.bench_function(format!("reject_forged/{n}"), |b| {
            b.iter(|| {
                black_box(
                    Token::parse(black_box(&forged))
                        .and_then(|t| route.backends.by_token(&t).map(|b| b.addr)),
                )
            })
        });
    }
    let (_reg, t) = table(1000);
    let route = t.routes()[0].clone();
    let client = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    route
        .state
        .bindings()
        .bind(client, 7, std::time::Duration::from_secs(3600), 100);
    g.bench_function("source_binding_lookup", |b| {
        b.iter(|| {
            black_box(route.state.bindings().get(
                black_box(client),
                std::time::Duration::from_secs(3600),
                100,
            ))
        })
    });
    g.finish();

    let mut g = c.benchmark_group("ratelimit");
    // A rate no request reaches, so every check admits (the common case).
    let rl = RateLimit::new(1e9, 1_000_000, RateKey::Source, false, "1000000000/s");
    for live in [1u32, 100_000] {
        let (_reg, t) = table(3);
        let state = &t.routes()[0].state.rate;
        let now = now_nanos();
        for i in 0..live {
            let _ = state.check(
                &rl,
                KeyOf::Addr(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i))),
                now,
            );
        }
        g.bench_function(format!("source_key/{live}_keys"), |b| {
            b.iter(|| black_box(state.check(&rl, KeyOf::Addr(black_box(client)), now_nanos())))
        });
        g.bench_function(format!("header_key/{live}_keys"), |b| {
            b.iter(|| {
                black_box(state.check(
                    &rl,
                    KeyOf::Bytes(black_box(b"api-key-0123456789")),
                    now_nanos(),
                ))
            })
        });
    }
    let (_reg, t) = table(3);
    let state = &t.routes()[0].state.rate;
    g.bench_function("route_key", |b| {
        b.iter(|| black_box(state.check(&rl, KeyOf::Route, now_nanos())))
    });
    g.bench_function("clock", |b| b.iter(|| black_box(now_nanos())));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
