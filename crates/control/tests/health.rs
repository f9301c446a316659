//! Active health checks against real fake replicas: a replica that starts
//! failing its checks turns unhealthy and stops taking traffic; it turns
//! healthy again when it passes; when all fail, routing fails open.

use std::sync::Arc;
use std::time::Duration;

use inferlb_control::Control;
use inferlb_core::config::HealthCheck;
use inferlb_core::{Command, Health, ReplicaId, ReplicaSpec, Routing, Snapshots, State};
use inferlb_testkit::FakeReplica;

fn spec(id: &str, addr: std::net::SocketAddr) -> ReplicaSpec {
    ReplicaSpec {
        id: ReplicaId::new(id).unwrap(),
        address: addr.to_string(),
        addr,
        weight: 1,
        pool: Default::default(),
    }
}

fn fast_checks() -> HealthCheck {
    HealthCheck {
        enabled: true,
        path: "/health".into(),
        interval: Duration::from_millis(100),
        timeout: Duration::from_millis(80),
        healthy_threshold: 2,
        unhealthy_threshold: 2,
    }
}

async fn wait_for(control: &Control, id: &str, health: Health) -> bool {
    for _ in 0..50 {
        let snapshot = control.snapshot();
        if snapshot
            .replicas()
            .iter()
            .any(|r| r.id.as_str() == id && r.health == health)
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_flip_health_both_ways_and_fail_open() {
    let good = FakeReplica::builder().start().unwrap();
    let bad = FakeReplica::builder().status(503).start().unwrap();
    let bad_addr = bad.addr();
    let mut state = State::new(Routing::RoundRobin);
    state
        .apply(Command::Add(spec("good", good.addr())))
        .unwrap();
    state.apply(Command::Add(spec("bad", bad_addr))).unwrap();
    let snapshots = Snapshots::new(state.snapshot());
    let control = Arc::new(Control::new(state, snapshots, None));
    let checker = tokio::spawn(inferlb_control::health::run(
        Arc::clone(&control),
        fast_checks(),
    ));

    assert!(
        wait_for(&control, "bad", Health::Unhealthy).await,
        "a 503 on /health never made it unhealthy"
    );
    let snapshot = control.snapshot();
    assert!(!snapshot.failing_open());
    let mut cursor = inferlb_core::Cursor::default();
    for _ in 0..10 {
        let picked = snapshot
            .pick(&mut cursor, &inferlb_core::Tried::default())
            .unwrap();
        assert_eq!(picked.id.as_str(), "good");
    }
    assert_eq!(
        inferlb_core::Routability::of(&snapshot.replicas()[1], 0),
        inferlb_core::Routability::Unhealthy
    );

    // The good one stops answering: every replica is unhealthy, and routing
    // fails open rather than refusing everything.
    good.stop();
    assert!(wait_for(&control, "good", Health::Unhealthy).await);
    assert!(control.snapshot().failing_open());
    assert!(control.snapshot().has_routable());

    // The bad one heals: it is healthy again after two passes.
    bad.stop();
    let healed = FakeReplica::builder().bind(bad_addr).start().unwrap();
    assert!(
        wait_for(&control, "bad", Health::Healthy).await,
        "a passing replica never came back"
    );
    assert!(!control.snapshot().failing_open());
    assert!(
        healed.counters().requests() >= 2,
        "the checks did not reach the replica"
    );
    assert_eq!(healed.counters().last_request().unwrap().path, "/health");
    checker.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_can_turn_its_checks_off_or_check_another_path() {
    // Both answer 503 everywhere: only checked replicas turn unhealthy.
    let skipped = FakeReplica::builder().status(503).start().unwrap();
    let custom = FakeReplica::builder().status(503).start().unwrap();
    let mut state = State::new(Routing::RoundRobin);
    for (name, enabled, path) in [("quiet", Some(false), None), ("loud", None, Some("/ready"))] {
        let mut pool = inferlb_core::PoolSpec::named(inferlb_core::PoolName::new(name).unwrap());
        pool.health = inferlb_core::pool::PoolHealth {
            enabled,
            path: path.map(str::to_owned),
        };
        state.apply(Command::SetPool(Box::new(pool))).unwrap();
    }
    let mut quiet = spec("q1", skipped.addr());
    quiet.pool = inferlb_core::PoolName::new("quiet").unwrap();
    let mut loud = spec("l1", custom.addr());
    loud.pool = inferlb_core::PoolName::new("loud").unwrap();
    state.apply(Command::Add(quiet)).unwrap();
    state.apply(Command::Add(loud)).unwrap();
    let snapshots = Snapshots::new(state.snapshot());
    let control = Arc::new(Control::new(state, snapshots, None));
    let checker = tokio::spawn(inferlb_control::health::run(
        Arc::clone(&control),
        fast_checks(),
    ));
    assert!(wait_for(&control, "l1", Health::Unhealthy).await);
    assert_eq!(custom.counters().last_request().unwrap().path, "/ready");
    assert_eq!(
        skipped.counters().requests(),
        0,
        "checks are off for its pool"
    );
    assert!(wait_for(&control, "q1", Health::Healthy).await);
    checker.abort();
}
