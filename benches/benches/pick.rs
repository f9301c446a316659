//! Replica pick per algorithm at 8 / 64 / 512 replicas, and snapshot rebuild
//! at 1 000 replicas.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use inferlb_benches::state_with;
use inferlb_core::{Cursor, Routing, Tried};

fn pick(c: &mut Criterion) {
    let mut group = c.benchmark_group("pick");
    for routing in Routing::ALL {
        for n in [8, 64, 512] {
            let set = state_with(n, routing).snapshot();
            let mut cursor = Cursor::default();
            let tried = Tried::default();
            group.bench_with_input(BenchmarkId::new(routing.as_str(), n), &n, |b, _| {
                b.iter(|| set.pick_index(&mut cursor, &tried))
            });
        }
    }
    group.finish();
}

fn rebuild(c: &mut Criterion) {
    let mut group = c.benchmark_group("snapshot_rebuild");
    for routing in Routing::ALL {
        let state = state_with(1000, routing);
        group.bench_function(BenchmarkId::new(routing.as_str(), 1000), |b| {
            b.iter(|| state.snapshot())
        });
    }
    group.finish();
}

criterion_group!(benches, pick, rebuild);
criterion_main!(benches);
