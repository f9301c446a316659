//! Tests of `command`.

use super::*;

fn spec(id: &str, port: u16, weight: u32) -> ReplicaSpec {
    ReplicaSpec {
        id: ReplicaId::new(id).unwrap(),
        address: format!("127.0.0.1:{port}"),
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        weight,
        pool: PoolName::default(),
    }
}

#[test]
fn a_new_resolution_replaces_the_replica_unless_it_drains() {
    let mut state = State::new(Routing::RoundRobin);
    state.apply(Command::Add(spec("a", 1, 3))).unwrap();
    let id = ReplicaId::new("a").unwrap();
    let old_uid = state.replicas()[0].uid;
    let same = SocketAddr::from(([127, 0, 0, 1], 1));
    let moved = SocketAddr::from(([127, 0, 0, 1], 2));
    assert_eq!(
        state.apply(Command::SetAddress {
            id: id.clone(),
            addr: same
        }),
        Ok(Outcome::NoChange)
    );
    assert_eq!(
        state.apply(Command::SetAddress {
            id: id.clone(),
            addr: moved
        }),
        Ok(Outcome::Changed)
    );
    let a = state.get(&id).unwrap();
    assert_eq!((a.addr, a.weight), (moved, 3));
    assert_ne!(
        a.uid, old_uid,
        "the old address's pooled connections must not be reused"
    );
    // An unresolved replica becomes routable once resolved.
    let mut state = State::restore(
        Routing::RoundRobin,
        vec![Replica::unresolved(
            id.clone(),
            "model.internal:8000".into(),
            1,
        )],
    );
    assert!(!state.snapshot().has_routable());
    state
        .apply(Command::SetAddress {
            id: id.clone(),
            addr: moved,
        })
        .unwrap();
    assert!(state.snapshot().has_routable());
    // A draining replica keeps its address.
    state
        .apply(Command::SetState {
            id: id.clone(),
            state: ReplicaState::Draining,
        })
        .unwrap();
    assert_eq!(
        state.apply(Command::SetAddress { id, addr: same }),
        Ok(Outcome::NoChange)
    );
}

#[test]
fn an_address_changed_under_the_same_id_is_replaced() {
    let mut state = State::new(Routing::RoundRobin);
    state.apply(Command::Add(spec("a", 1, 1))).unwrap();
    state.apply(Command::Add(spec("b", 2, 1))).unwrap();
    let old_stats = std::sync::Arc::clone(&state.replicas()[0].stats);
    let desired = [spec("a", 11, 1), spec("b", 2, 1)];
    let commands = state.diff(&desired, SystemTime::UNIX_EPOCH);
    assert_eq!(commands.len(), 2, "{commands:?}");
    for command in commands {
        state.apply(command).unwrap();
    }
    let a = state.get(&ReplicaId::new("a").unwrap()).unwrap();
    assert_eq!(a.addr, SocketAddr::from(([127, 0, 0, 1], 11)));
    assert!(!std::sync::Arc::ptr_eq(&a.stats, &old_stats));
    assert!(state.diff(&desired, SystemTime::UNIX_EPOCH).is_empty());
}

#[test]
fn draining_again_keeps_the_running_drain_unless_it_ends_sooner() {
    let mut state = State::new(Routing::RoundRobin);
    state.apply(Command::Add(spec("a", 1, 1))).unwrap();
    let id = ReplicaId::new("a").unwrap();
    let t0 = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000);
    let later = t0 + std::time::Duration::from_secs(300);
    let drain = |deadline| Command::Drain {
        id: id.clone(),
        deadline,
    };
    assert_eq!(state.apply(drain(t0)), Ok(Outcome::Changed));
    assert_eq!(state.apply(drain(later)), Ok(Outcome::NoChange));
    assert_eq!(state.apply(drain(t0)), Ok(Outcome::NoChange));
    assert_eq!(state.get(&id).unwrap().drain_deadline, Some(t0));
    let sooner = t0 - std::time::Duration::from_secs(1);
    assert_eq!(state.apply(drain(sooner)), Ok(Outcome::Changed));
    assert_eq!(state.get(&id).unwrap().drain_deadline, Some(sooner));
}

#[test]
fn add_refuses_duplicate_ids_and_addresses() {
    let mut state = State::new(Routing::RoundRobin);
    assert_eq!(
        state.apply(Command::Add(spec("a", 1, 1))),
        Ok(Outcome::Changed)
    );
    assert!(matches!(
        state.apply(Command::Add(spec("a", 2, 1))),
        Err(StateError::IdExists { .. })
    ));
    assert!(matches!(
        state.apply(Command::Add(spec("b", 1, 1))),
        Err(StateError::AddressExists { .. })
    ));
    assert_eq!(state.generation(), 1);
}

#[test]
fn no_change_keeps_the_generation() {
    let mut state = State::new(Routing::RoundRobin);
    state.apply(Command::Add(spec("a", 1, 1))).unwrap();
    let id = ReplicaId::new("a").unwrap();
    assert_eq!(
        state.apply(Command::SetWeight {
            id: id.clone(),
            weight: 1
        }),
        Ok(Outcome::NoChange)
    );
    assert_eq!(state.generation(), 1);
    assert_eq!(
        state.apply(Command::SetWeight { id, weight: 3 }),
        Ok(Outcome::Changed)
    );
    assert_eq!(state.generation(), 2);
}

#[test]
fn counters_survive_republishing() {
    let mut state = State::new(Routing::RoundRobin);
    state.apply(Command::Add(spec("a", 1, 1))).unwrap();
    let before = state.snapshot();
    let _guard = before.replicas()[0].stats.start_request();
    state
        .apply(Command::SetWeight {
            id: ReplicaId::new("a").unwrap(),
            weight: 7,
        })
        .unwrap();
    let after = state.snapshot();
    assert_eq!(after.replicas()[0].stats.in_flight(), 1);
    assert_eq!(after.generation(), before.generation() + 1);
}

#[test]
fn diff_adds_reweights_and_drains() {
    let mut state = State::new(Routing::RoundRobin);
    state.apply(Command::Add(spec("a", 1, 1))).unwrap();
    state.apply(Command::Add(spec("b", 2, 1))).unwrap();
    let deadline = SystemTime::UNIX_EPOCH;
    let commands = state.diff(&[spec("a", 1, 5), spec("c", 3, 1)], deadline);
    assert_eq!(
        commands,
        vec![
            Command::SetWeight {
                id: ReplicaId::new("a").unwrap(),
                weight: 5
            },
            Command::Add(spec("c", 3, 1)),
            Command::Drain {
                id: ReplicaId::new("b").unwrap(),
                deadline
            },
        ]
    );
    for command in commands {
        state.apply(command).unwrap();
    }
    assert!(state
        .diff(&[spec("a", 1, 5), spec("c", 3, 1)], deadline)
        .is_empty());
}

#[test]
fn converge_to_makes_another_instances_state_exactly() {
    let deadline = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(2_000_000_000);
    let mut here = State::new(Routing::RoundRobin);
    here.apply(Command::Add(spec("a", 9001, 1))).unwrap();
    here.apply(Command::Add(spec("b", 9002, 1))).unwrap();
    here.apply(Command::Add(spec("gone", 9003, 1))).unwrap();
    let stats = Arc::clone(&here.get(&ReplicaId::new("a").unwrap()).unwrap().stats);
    let mut there = State::new(Routing::RoundRobin);
    there.apply(Command::Add(spec("a", 9001, 5))).unwrap();
    there.apply(Command::Add(spec("b", 9002, 1))).unwrap();
    there
        .apply(Command::Drain {
            id: ReplicaId::new("b").unwrap(),
            deadline,
        })
        .unwrap();
    there.apply(Command::Add(spec("new", 9004, 2))).unwrap();
    for command in here.converge_to(&there) {
        here.apply(command).unwrap();
    }
    let view = |s: &State| {
        let mut v: Vec<_> = s
            .replicas()
            .iter()
            .map(|r| (r.id.to_string(), r.weight, r.state, r.drain_deadline))
            .collect();
        v.sort_by(|x, y| x.0.cmp(&y.0));
        v
    };
    assert_eq!(view(&here), view(&there));
    // The replica that stayed keeps its counters.
    assert!(Arc::ptr_eq(
        &stats,
        &here.get(&ReplicaId::new("a").unwrap()).unwrap().stats
    ));
    assert!(here.converge_to(&there).is_empty());
}
