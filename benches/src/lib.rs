//! inferlb's benchmarks: fixtures for the criterion micro-benchmarks
//! (`cargo bench -p inferlb-benches`) and the load-test runner behind
//! `cargo xtask bench` (the `inferlb-bench` binary).
//!
//! # Layout
//!
//! - [`loadgen`]: the load generator: closed and open loop, SSE streams,
//!   HdrHistogram percentiles, errors by kind.
//! - [`scenario`]: the scenario files in benches/scenarios.
//! - [`peers`]: starting inferlb, nginx, HAProxy (or none: direct) pinned.
//! - [`edge`]: TLS handshakes, h2load runs and idle TLS / h2 connections
//!   (`tls`, `h2`).
//! - [`h2codec`]: the `h2` crate answering by itself, the codec's floor in `h2`.
//! - [`prefix`]: the shared-prefix workload of the `prefix` scenario.
//! - [`autoscale`]: local autoscaling through a step of load (`autoscale`).
//! - [`procstat`]: CPU seconds and memory of a process tree, machine facts.
//! - [`report`]: medians, the table, the JSON record, the SVG chart.

#![forbid(unsafe_code)]

pub mod autoscale;
pub mod edge;
pub mod h2codec;
pub mod loadgen;
pub mod peers;
pub mod prefix;
pub mod procstat;
pub mod report;
pub mod scenario;

use std::net::SocketAddr;

use inferlb_core::{Command, ReplicaId, ReplicaSpec, Routing, State};

/// A state with `n` replicas of weights 1..=10, built through commands as
/// the control plane would.
pub fn state_with(n: usize, routing: Routing) -> State {
    let mut state = State::new(routing);
    for i in 0..n {
        let port = 10_000 + i as u16;
        let addr = SocketAddr::from(([10, 0, (i / 250) as u8, (i % 250) as u8 + 1], port));
        let spec = ReplicaSpec {
            id: ReplicaId::new(&format!("r{i}")).expect("valid id"),
            address: addr.to_string(),
            addr,
            weight: 1 + (i % 10) as u32,
            pool: Default::default(),
        };
        state.apply(Command::Add(spec)).expect("distinct replicas");
    }
    state
}

/// The spec a replica was added with (weight and pool included).
pub fn spec_of(r: &inferlb_core::Replica) -> ReplicaSpec {
    ReplicaSpec {
        id: r.id.clone(),
        address: r.address.clone(),
        addr: r.addr,
        weight: r.weight,
        pool: r.pool.clone(),
    }
}
