//! `prefix` routing's cost per request: hashing a 4 KiB prompt into block
//! hashes, the lookup in the shared prefix table, the pick with its balance
//! guard and the record of the result — alone, and with other threads
//! routing through the same table at once (the table is shared by every
//! worker). Target: ≤ 2 µs per request at 8 workers' contention.
//!
//! The contended case runs `min(7, cores - 1)` background threads, so on a
//! small machine it measures less contention than 8 workers would make:
//! the benchmark's name says how many ran.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use inferlb_core::{Command, Cursor, PoolName, PoolSpec, PrefixKey, ReplicaSet, Routing, Tried};

const PROMPT_BYTES: usize = 4096;

/// 64 system prompts (~3.5 KiB) each followed by a question: 4 KiB texts.
fn prompts() -> Vec<Vec<u8>> {
    (0..256)
        .map(|i| {
            let system = format!("system prompt {} ", i % 64).repeat(3500 / 17);
            let mut text = format!("{system}question {i}: ").into_bytes();
            text.resize(PROMPT_BYTES, b'?');
            text
        })
        .collect()
}

/// One pool `m` routing by prefix over 8 replicas.
fn snapshot() -> ReplicaSet {
    let mut state = inferlb_benches::state_with(8, Routing::RoundRobin);
    let mut pool = PoolSpec::named(PoolName::new("m").expect("valid"));
    pool.routing = Some(Routing::Prefix);
    state.apply(Command::SetPool(Box::new(pool))).expect("pool");
    for r in state.replicas().to_vec() {
        let mut spec = inferlb_benches::spec_of(&r);
        spec.pool = PoolName::new("m").expect("valid");
        state
            .apply(Command::Remove { id: r.id.clone() })
            .expect("remove");
        state.apply(Command::Add(spec)).expect("replica");
    }
    state.snapshot()
}

/// Hash, pick, record: what the proxy does per request.
fn route(set: &ReplicaSet, text: &[u8], chain: &mut Vec<u64>, cursor: &mut Cursor) -> usize {
    inferlb_core::prefix::chain(text, chain);
    let key = PrefixKey {
        chain,
        len: text.len(),
    };
    set.pick_in(0, cursor, &Tried::default(), 1_000, Some(key))
        .unwrap_or(0)
}

fn prefix(c: &mut Criterion) {
    let set = Arc::new(snapshot());
    let texts = Arc::new(prompts());
    let mut group = c.benchmark_group("prefix_route_4KiB");
    group.throughput(Throughput::Bytes(PROMPT_BYTES as u64));
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    for others in [0, 7.min(cores.saturating_sub(1))] {
        let stop = Arc::new(AtomicBool::new(false));
        let threads: Vec<_> = (0..others)
            .map(|t| {
                let (set, texts, stop) = (Arc::clone(&set), Arc::clone(&texts), Arc::clone(&stop));
                std::thread::spawn(move || {
                    let mut chain = Vec::new();
                    let mut cursor = Cursor::starting_at(t as u64 + 1);
                    let mut i = t * 31;
                    while !stop.load(Ordering::Relaxed) {
                        i = (i + 7) % texts.len();
                        route(&set, &texts[i], &mut chain, &mut cursor);
                    }
                })
            })
            .collect();
        let mut chain = Vec::new();
        let mut cursor = Cursor::default();
        let mut i = 0;
        group.bench_with_input(BenchmarkId::new("threads", others + 1), &others, |b, _| {
            b.iter(|| {
                i = (i + 13) % texts.len();
                route(&set, &texts[i], &mut chain, &mut cursor)
            })
        });
        stop.store(true, Ordering::Relaxed);
        for t in threads {
            let _ = t.join();
        }
    }
    group.finish();
    // The hash alone, for scale.
    let mut chain = Vec::new();
    c.bench_function("prefix_chain_4KiB", |b| {
        b.iter(|| inferlb_core::prefix::chain(&texts[3], &mut chain))
    });
}

criterion_group!(benches, prefix);
criterion_main!(benches);
