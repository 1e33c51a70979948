//! Guards the pick phase of every request: `BackendSet::pick` per balancer at 3,
//! 100 and 1,000 backends, with and without `maxconn`, and the in-flight slot a
//! `maxconn` route takes (`InflightGuard::try_limited`) against the plain one.
//! Target (issue 8): a pick at 1,000 backends stays well under a microsecond, and
//! a route without maxconn or health checks pays nothing for them.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use wharf_table::{
    BackendDef, BackendRegistry, Balance, EntrypointMask, InflightGuard, MaxConn, Policy, RouteDef,
    Scheme, Table,
};

fn table(n: usize, balance: Balance, maxconn: bool) -> (BackendRegistry, Table) {
    let reg = BackendRegistry::new();
    let def = RouteDef {
        name: "r".into(),
        source: "bench".into(),
        hosts: vec!["h".into()],
        path: "/".into(),
        entrypoints: EntrypointMask::ALL,
        balance,
        backends: (0..n)
            .map(|i| BackendDef {
                addr: SocketAddr::from(([10, 1, (i >> 8) as u8, i as u8], 8080)),
                scheme: Scheme::Http,
                draining: false,
                identity: None,
            })
            .collect(),
        policy: Policy {
            maxconn: maxconn.then_some(MaxConn {
                limit: 100,
                queue: 1024,
                timeout: Duration::from_secs(5),
            }),
            ..Policy::default()
        },
    };
    let (t, _) = Table::compile(vec![def], &reg);
    (reg, t)
}

fn bench(c: &mut Criterion) {
    let client = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    let mut g = c.benchmark_group("pick");
    for n in [3usize, 100, 1000] {
        for (name, balance) in [
            ("leastconn", Balance::LeastConn),
            ("roundrobin", Balance::RoundRobin),
            ("source", Balance::Source),
        ] {
            for maxconn in [false, true] {
                let (_reg, t) = table(n, balance, maxconn);
                let route = t.routes()[0].clone();
                // A little load so leastconn compares real numbers: every third
                // backend has a request in flight.
                let _held: Vec<_> = route
                    .backends
                    .all()
                    .iter()
                    .step_by(3)
                    .map(|b| InflightGuard::new(b.state.clone()))
                    .collect();
                let label = format!(
                    "{name}, {n} backends{}",
                    if maxconn { ", maxconn" } else { "" }
                );
                g.bench_function(&label, |b| {
                    b.iter(|| route.backends.pick(black_box(client)).map(|b| b.addr))
                });
            }
        }
    }
    // The worst case for leastconn: no backend idle, so the whole set is scanned.
    for n in [100usize, 1000] {
        let (_reg, t) = table(n, Balance::LeastConn, false);
        let route = t.routes()[0].clone();
        let _held: Vec<_> = route
            .backends
            .all()
            .iter()
            .map(|b| InflightGuard::new(b.state.clone()))
            .collect();
        g.bench_function(format!("leastconn, {n} backends, all busy"), |b| {
            b.iter(|| route.backends.pick(black_box(client)).map(|b| b.addr))
        });
    }
    let (_reg, t) = table(3, Balance::LeastConn, true);
    let route = t.routes()[0].clone();
    let state = route.backends.all()[0].state.clone();
    g.bench_function("in-flight slot, plain", |b| {
        b.iter(|| InflightGuard::new(black_box(&state).clone()))
    });
    g.bench_function("in-flight slot, maxconn", |b| {
        b.iter(|| InflightGuard::try_limited(black_box(&state), 100, &route.state))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
