//! The cost of a discovery change: a Docker snapshot of 10,000 labelled services
//! (3 tasks each) turned into routes — labels parsed, backends resolved, the table
//! compiled and swapped — by the same `Control::apply_inputs` the binary runs on
//! every snapshot. Issue 3 asks for this figure; Traefik re-reads its providers on
//! every change too, so the whole pipeline is what is measured, not the compile alone.

use std::collections::BTreeMap;
use std::net::IpAddr;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use wharf_control::{Control, Inputs};
use wharf_docker::{Endpoint, Kind, Snapshot, Workload};

// The binary's allocator, so the figure is the binary's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const NETWORK: &str = "wharf-public";

fn snapshot(n: usize, variant: u8) -> Snapshot {
    let workloads = (0..n)
        .map(|i| {
            let name = format!("stack{}_web{i}", i % 50);
            let mut labels = BTreeMap::new();
            labels.insert("wharf.enable".to_string(), "true".to_string());
            labels.insert("wharf.host".to_string(), format!("app-{i}.example.org"));
            if i % 3 == 0 {
                labels.insert("wharf.sticky".to_string(), "cookie".to_string());
            }
            if i % 5 == 0 {
                labels.insert("wharf.healthcheck.path".to_string(), "/health".to_string());
            }
            let endpoints = (0..3u8)
                .map(|t| {
                    let mut addrs = BTreeMap::new();
                    let last = if i == 0 { t.wrapping_add(variant) } else { t };
                    addrs.insert(
                        NETWORK.to_string(),
                        IpAddr::from([10, (i >> 8) as u8, i as u8, last]),
                    );
                    Endpoint {
                        id: format!("task{i}.{t}"),
                        addrs,
                        draining: false,
                        identity: format!("svc{i}.{t}"),
                    }
                })
                .collect();
            Workload {
                kind: Kind::Service,
                id: format!("svc{i}"),
                name,
                created: format!("{i:020}"),
                labels,
                exposed_ports: vec![8080],
                dnsrr: false,
                endpoints,
            }
        })
        .collect();
    Snapshot { workloads }
}

fn bench(c: &mut Criterion) {
    let config = wharf_config::parse(
        "[docker]\nnetwork = \"wharf-public\"\n",
        "bench",
        std::iter::empty(),
    )
    .expect("bench config parses");
    let dns = BTreeMap::new();
    let a = snapshot(10_000, 0);
    let b = snapshot(10_000, 100);

    let mut g = c.benchmark_group("control");
    g.sample_size(10);
    g.bench_function("first apply of a 10k-service snapshot", |bench| {
        bench.iter_batched(
            Control::new,
            |control| {
                let r = control.apply_inputs(&Inputs {
                    config: &config,
                    docker: Some(&a),
                    dns: &dns,
                });
                assert_eq!(r.routes, 10_000);
                control
            },
            BatchSize::PerIteration,
        )
    });
    // One task of one service moved: everything is re-read, one route differs.
    let control = Control::new();
    let mut flip = false;
    g.bench_function("10k-service snapshot, one task changed", |bench| {
        bench.iter(|| {
            flip = !flip;
            let r = control.apply_inputs(&Inputs {
                config: &config,
                docker: Some(if flip { &b } else { &a }),
                dns: &dns,
            });
            assert!(r.swapped);
        })
    });
    g.bench_function("10k-service snapshot, unchanged (no swap)", |bench| {
        bench.iter(|| {
            let r = control.apply_inputs(&Inputs {
                config: &config,
                docker: Some(&a),
                dns: &dns,
            });
            assert!(!r.swapped || r.routes == 10_000);
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
