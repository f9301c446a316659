//! Property tests of the balancers' invariants.

use std::net::SocketAddr;

use proptest::prelude::*;

use super::*;
use crate::replica::{Replica, ReplicaId, ReplicaState};

fn replicas(specs: &[(u32, bool)]) -> Vec<Replica> {
    specs
        .iter()
        .enumerate()
        .map(|(i, &(weight, draining))| {
            let port = 1000 + i as u16;
            let mut r = Replica::new(
                ReplicaId::new(&format!("r{i}")).unwrap(),
                format!("127.0.0.1:{port}"),
                SocketAddr::from(([127, 0, 0, 1], port)),
                weight,
            );
            if draining {
                r.state = ReplicaState::Draining;
            }
            r
        })
        .collect()
}

fn picks(routing: Routing, set: &[Replica], start: u64, n: usize) -> Vec<usize> {
    let balancer = routing.build(set);
    let mut cursor = Cursor::starting_at(start);
    (0..n)
        .map(|_| balancer.pick(set, &mut cursor, &Tried::default()).unwrap())
        .collect()
}

fn specs() -> impl Strategy<Value = Vec<(u32, bool)>> {
    prop::collection::vec((0u32..=20, prop::bool::weighted(0.2)), 1..12)
        .prop_filter("needs a routable replica", |s| {
            s.iter().any(|&(w, d)| w > 0 && !d)
        })
}

proptest! {
    #[test]
    fn round_robin_gives_equal_shares_and_skips_unroutable(specs in specs(), start in 0u64..1000, cycles in 1usize..5) {
        let set = replicas(&specs);
        let routable: Vec<usize> = (0..set.len()).filter(|&i| set[i].is_routable()).collect();
        let picked = picks(Routing::RoundRobin, &set, start, routable.len() * cycles);
        for &i in &routable {
            prop_assert_eq!(picked.iter().filter(|&&p| p == i).count(), cycles);
        }
        prop_assert!(picked.iter().all(|&p| set[p].is_routable()));
    }

    #[test]
    fn weighted_shares_are_exact_per_cycle_and_never_burst(specs in specs(), start in 0u64..1000) {
        let set = replicas(&specs);
        let total: u64 = set.iter().filter(|r| r.is_routable()).map(|r| u64::from(r.weight)).sum();
        let n = (total * 3) as usize;
        let picked = picks(Routing::WeightedRoundRobin, &set, start, n);
        prop_assert!(picked.iter().all(|&p| set[p].is_routable()));
        let balancer = WeightedRoundRobin::build(&set);
        let cycle = balancer.schedule().len();
        // Whole cycles give exact shares (weights reduced by their gcd).
        for (i, r) in set.iter().enumerate().filter(|(_, r)| r.is_routable()) {
            let count = balancer.schedule().iter().filter(|&&p| p as usize == i).count() as u64;
            prop_assert_eq!(count * total, u64::from(r.weight) * cycle as u64);
        }
        // Any run of picks stays close to the ideal share: no bursts.
        let mut counts = vec![0u64; set.len()];
        for (k, &p) in picked.iter().enumerate() {
            counts[p] += 1;
            for (i, r) in set.iter().enumerate().filter(|(_, r)| r.is_routable()) {
                let ideal = (k as f64 + 1.0) * f64::from(r.weight) / total as f64;
                // Earliest-deadline order keeps every prefix within a pick
                // or so of the ideal (a little over one with many replicas);
                // a burst would break this bound.
                let bound = 2.0;
                prop_assert!((counts[i] as f64 - ideal).abs() <= bound + 1e-9,
                    "replica {} has {} picks after {}, ideal {}", i, counts[i], k + 1, ideal);
            }
        }
    }

    #[test]
    fn tried_replicas_are_skipped(specs in specs(), start in 0u64..100) {
        let set = replicas(&specs);
        for routing in Routing::ALL {
            let balancer = routing.build(&set);
            let mut cursor = Cursor::starting_at(start);
            let mut tried = Tried::default();
            let routable = set.iter().filter(|r| r.is_routable()).count();
            for _ in 0..routable {
                let p = balancer.pick(&set, &mut cursor, &tried).unwrap();
                prop_assert!(!tried.contains(p));
                tried.insert(p);
            }
            prop_assert!(balancer.pick(&set, &mut cursor, &tried).is_none());
        }
    }
}

#[test]
fn five_to_one_is_interleaved() {
    let set = replicas(&[(5, false), (1, false)]);
    let picked = picks(Routing::WeightedRoundRobin, &set, 0, 12);
    assert_eq!(picked, vec![0, 0, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0]);
}

#[test]
fn nothing_routable_picks_nothing() {
    let set = replicas(&[(0, false), (3, true)]);
    for routing in Routing::ALL {
        let balancer = routing.build(&set);
        assert!(balancer
            .pick(&set, &mut Cursor::default(), &Tried::default())
            .is_none());
    }
}

#[test]
fn routing_names_round_trip() {
    for routing in Routing::ALL {
        assert_eq!(routing.as_str().parse::<Routing>(), Ok(routing));
    }
    assert!("random".parse::<Routing>().is_err());
}
