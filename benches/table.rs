//! Guards the routing table's hot path and its compile cost: `Table::find` is run
//! for every request, `Table::compile` on every configuration or discovery change.
//! Targets (issue: the data plane): a lookup at 10,000 hosts stays around 100 ns,
//! compiling 10,000 routes takes well under 20 ms.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion};
use wharf_table::{
    normalize_host, BackendDef, BackendRegistry, Balance, EntrypointMask, Policy, RouteDef, Scheme,
    Table,
};

fn defs(n: usize) -> Vec<RouteDef> {
    (0..n)
        .map(|i| RouteDef {
            name: format!("svc-{i}").into(),
            source: "bench".into(),
            hosts: vec![format!("app-{i}.example.org")],
            path: if i % 4 == 0 {
                "/api".into()
            } else {
                "/".into()
            },
            entrypoints: EntrypointMask::ALL,
            balance: Balance::LeastConn,
            backends: (0..3)
                .map(|b| BackendDef {
                    addr: SocketAddr::from(([10, (i >> 8) as u8, i as u8, b], 8080)),
                    scheme: Scheme::Http,
                    draining: false,
                    identity: None,
                })
                .collect(),
            policy: Policy::default(),
        })
        .chain(std::iter::once(RouteDef {
            name: "wild".into(),
            source: "bench".into(),
            hosts: vec!["*.tenant.example.org".into()],
            path: "/".into(),
            entrypoints: EntrypointMask::ALL,
            balance: Balance::RoundRobin,
            backends: vec![BackendDef {
                addr: SocketAddr::from(([10, 255, 0, 1], 80)),
                scheme: Scheme::Http,
                draining: false,
                identity: None,
            }],
            policy: Policy::default(),
        }))
        .collect()
}

fn bench(c: &mut Criterion) {
    let registry = BackendRegistry::new();
    let (table, _) = Table::compile(defs(10_000), &registry);
    let client = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));

    let mut g = c.benchmark_group("table");
    g.bench_function("find exact host, 10k hosts", |b| {
        b.iter(|| {
            table.find(
                black_box("app-5123.example.org"),
                black_box("/index.html"),
                0,
            )
        })
    });
    g.bench_function("find longest path, 10k hosts", |b| {
        b.iter(|| {
            table.find(
                black_box("app-5124.example.org"),
                black_box("/api/v1/users"),
                0,
            )
        })
    });
    g.bench_function("find wildcard host, 10k hosts", |b| {
        b.iter(|| table.find(black_box("acme.tenant.example.org"), black_box("/"), 0))
    });
    g.bench_function("find unknown host, 10k hosts", |b| {
        b.iter(|| table.find(black_box("nobody.example.net"), black_box("/"), 0))
    });
    g.bench_function("normalize + find + pick leastconn", |b| {
        b.iter(|| {
            let host = normalize_host(black_box("App-5123.Example.org:443"))?;
            let route = table.find(&host, black_box("/"), 0)?;
            route.backends.pick(client).map(|b| b.addr)
        })
    });
    g.sample_size(20);
    g.bench_function("compile 10k routes", |b| {
        b.iter_batched(
            || defs(10_000),
            |d| Table::compile(d, &registry),
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
