//! Replica pick per algorithm at 8 / 64 / 512 replicas, single-threaded and
//! with two threads contending on one snapshot; snapshot rebuild at 1 000
//! replicas; request head parse + rewrite.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
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

/// A second thread picks from the same snapshot (and bumps the same
/// replicas' in-flight counters) while this one is measured: the cost of
/// sharing across cores.
fn pick_contended(c: &mut Criterion) {
    let mut group = c.benchmark_group("pick_two_threads");
    for routing in Routing::ALL {
        for n in [8, 64, 512] {
            let set = Arc::new(state_with(n, routing).snapshot());
            let stop = Arc::new(AtomicBool::new(false));
            let other = {
                let (set, stop) = (Arc::clone(&set), Arc::clone(&stop));
                std::thread::spawn(move || {
                    let mut cursor = Cursor::starting_at(1);
                    let tried = Tried::default();
                    while !stop.load(Ordering::Relaxed) {
                        if let Some(r) = set.pick(&mut cursor, &tried) {
                            drop(r.stats.start_request());
                        }
                    }
                })
            };
            let mut cursor = Cursor::default();
            let tried = Tried::default();
            group.bench_with_input(BenchmarkId::new(routing.as_str(), n), &n, |b, _| {
                b.iter(|| {
                    set.pick(&mut cursor, &tried)
                        .map(|r| drop(r.stats.start_request()))
                })
            });
            stop.store(true, Ordering::Relaxed);
            let _ = other.join();
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

fn head_rewrite(c: &mut Criterion) {
    let head: &[u8] = b"POST /v1/completions HTTP/1.1\r\nHost: models.internal\r\nUser-Agent: bench/1.0\r\n\
        Accept: text/event-stream\r\nContent-Type: application/json\r\nContent-Length: 64\r\n\
        Authorization: Bearer abcdef\r\nX-Forwarded-For: 10.0.0.1\r\nConnection: keep-alive\r\n\r\n";
    let mut group = c.benchmark_group("head");
    group.throughput(Throughput::Bytes(head.len() as u64));
    let mut id = inferlb_proxy::bench_support::RequestIdBuf::default();
    let mut out = Vec::with_capacity(1024);
    group.bench_function("parse_and_rewrite", |b| {
        b.iter(|| inferlb_proxy::bench_support::rewrite_request(head, &mut id, &mut out))
    });
    group.finish();
}

criterion_group!(benches, pick, pick_contended, rebuild, head_rewrite);
criterion_main!(benches);
