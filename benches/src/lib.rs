//! Fixtures shared by inferlb's criterion micro-benchmarks (`cargo bench -p
//! inferlb-benches`). The end-to-end load scenarios live in `cargo xtask bench`.

#![forbid(unsafe_code)]

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
        };
        state.apply(Command::Add(spec)).expect("distinct replicas");
    }
    state
}
