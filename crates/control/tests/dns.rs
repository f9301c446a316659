//! Re-resolving replica names with a resolver the test controls: a changed
//! address replaces the replica, an unresolved one becomes routable, and a
//! resolver that hangs holds up nothing else.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use inferlb_control::dns::{refresh, Resolve};
use inferlb_control::Control;
use inferlb_core::{Command, Replica, ReplicaId, Routing, Snapshots, State};

/// Answers from a table the test edits; a name marked `hang` never answers
/// in time.
#[derive(Default)]
struct Table {
    answers: Mutex<HashMap<String, SocketAddr>>,
    hang: Mutex<HashSet<String>>,
}

impl Resolve for Table {
    fn resolve(&self, address: &str) -> std::io::Result<SocketAddr> {
        if self.hang.lock().unwrap().contains(address) {
            std::thread::sleep(Duration::from_secs(3));
        }
        self.answers
            .lock()
            .unwrap()
            .get(address)
            .copied()
            .ok_or_else(|| std::io::Error::other("no such host"))
    }
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn control_with(replicas: Vec<Replica>) -> Control {
    let state = State::restore(Routing::RoundRobin, replicas);
    let snapshots = Snapshots::new(state.snapshot());
    Control::new(state, snapshots, None)
}

#[tokio::test]
async fn a_changed_address_replaces_the_replica() {
    let id = ReplicaId::new("m").unwrap();
    let control = control_with(vec![Replica::new(
        id.clone(),
        "model.test:8000".into(),
        addr(9001),
        1,
    )]);
    let table = Arc::new(Table::default());
    table
        .answers
        .lock()
        .unwrap()
        .insert("model.test:8000".into(), addr(9001));
    let resolver: Arc<dyn Resolve> = table.clone();
    let outstanding = Arc::default();
    assert_eq!(
        refresh(&control, &resolver, &outstanding, Duration::from_secs(1)).await,
        0
    );
    let old_uid = control.snapshot().replicas()[0].uid;
    table
        .answers
        .lock()
        .unwrap()
        .insert("model.test:8000".into(), addr(9002));
    assert_eq!(
        refresh(&control, &resolver, &outstanding, Duration::from_secs(1)).await,
        1
    );
    let now = control.snapshot();
    let m = &now.replicas()[0];
    assert_eq!((m.id.as_str(), m.addr), ("m", addr(9002)));
    assert_ne!(m.uid, old_uid);
}

#[tokio::test]
async fn an_unresolved_replica_becomes_routable_when_its_name_resolves() {
    let id = ReplicaId::new("m").unwrap();
    let control = control_with(vec![Replica::unresolved(id, "later.test:8000".into(), 1)]);
    assert!(!control.snapshot().has_routable());
    let table = Arc::new(Table::default());
    let resolver: Arc<dyn Resolve> = table.clone();
    let outstanding = Arc::default();
    assert_eq!(
        refresh(&control, &resolver, &outstanding, Duration::from_secs(1)).await,
        0
    );
    assert!(!control.snapshot().has_routable());
    table
        .answers
        .lock()
        .unwrap()
        .insert("later.test:8000".into(), addr(9003));
    assert_eq!(
        refresh(&control, &resolver, &outstanding, Duration::from_secs(1)).await,
        1
    );
    assert!(control.snapshot().has_routable());
}

#[tokio::test(flavor = "current_thread")]
async fn a_hanging_resolver_holds_up_nothing_else() {
    let id = ReplicaId::new("m").unwrap();
    let control = Arc::new(control_with(vec![Replica::new(
        id,
        "stuck.test:8000".into(),
        addr(9001),
        1,
    )]));
    let table = Arc::new(Table::default());
    table.hang.lock().unwrap().insert("stuck.test:8000".into());
    let resolver: Arc<dyn Resolve> = table.clone();
    let outstanding: Arc<Mutex<HashSet<String>>> = Arc::default();
    let round = {
        let (control, resolver, outstanding) = (
            Arc::clone(&control),
            Arc::clone(&resolver),
            Arc::clone(&outstanding),
        );
        tokio::spawn(async move {
            refresh(
                &control,
                &resolver,
                &outstanding,
                Duration::from_millis(300),
            )
            .await
        })
    };
    // Once the lookup is out, the control thread (this one) keeps applying
    // changes while it hangs: the change lands before the round ends.
    while !outstanding.lock().unwrap().contains("stuck.test:8000") {
        tokio::task::yield_now().await;
    }
    control
        .apply_one(Command::SetWeight {
            id: ReplicaId::new("m").unwrap(),
            weight: 4,
        })
        .await
        .unwrap();
    assert!(!round.is_finished(), "a change waited for a hung lookup");
    // The round gives up on the lookup and changes nothing.
    assert_eq!(round.await.unwrap(), 0);
    assert_eq!(control.snapshot().replicas()[0].addr, addr(9001));
    // While the lookup is still out, the name is not asked again.
    assert!(outstanding.lock().unwrap().contains("stuck.test:8000"));
    let again = refresh(
        &control,
        &resolver,
        &outstanding,
        Duration::from_millis(300),
    )
    .await;
    assert_eq!(again, 0);
}
