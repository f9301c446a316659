//! A drain that runs out of time cuts what still flows to its replica only
//! once the removal is committed: a removal that could not be written
//! leaves the replica routed, and its requests whole.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use inferlb_control::{Control, ControlError, StateFile};
use inferlb_core::{Command, PoolName, ReplicaId, ReplicaSpec, Routing, Snapshots, State};

fn spec(id: &str) -> ReplicaSpec {
    let addr: SocketAddr = "127.0.0.1:9001".parse().unwrap();
    ReplicaSpec {
        id: ReplicaId::new(id).unwrap(),
        address: addr.to_string(),
        addr,
        weight: 1,
        pool: PoolName::default(),
    }
}

#[tokio::test]
async fn an_uncommitted_removal_cuts_nothing() {
    let dir = inferlb_testkit::fresh_dir("drain-uncommitted");
    let path = dir.join("state.json");
    let state = State::new(Routing::RoundRobin);
    let snapshots = Snapshots::new(state.snapshot());
    let control = Control::new(state, snapshots, Some(StateFile::new(&path)));
    control.apply_one(Command::Add(spec("m"))).await.unwrap();
    let stats = Arc::clone(&control.snapshot().replicas()[0].stats);
    let _request = stats.start_request();

    // The state file cannot be replaced (a directory stands in its way):
    // the drain, and the removal past its deadline, are not committed.
    std::fs::remove_file(&path).unwrap();
    std::fs::create_dir(&path).unwrap();
    std::fs::write(path.join("keep"), b"").unwrap();
    let drain = Command::Drain {
        id: ReplicaId::new("m").unwrap(),
        deadline: SystemTime::now(),
    };
    let refused = control.apply_one(drain.clone()).await;
    assert!(
        matches!(refused, Err(ControlError::Persist(_))),
        "{refused:?}"
    );
    let snapshot = control.snapshot();
    assert_eq!(snapshot.replicas().len(), 1, "the replica is still routed");
    assert!(!stats.is_evicted(), "its request was cut all the same");

    // Committed: removed, and what still flows to it is cut.
    std::fs::remove_dir_all(&path).unwrap();
    control.apply_one(drain).await.unwrap();
    assert!(control.snapshot().replicas().is_empty());
    assert!(stats.is_evicted());
}
