//! The state file: runtime changes on top of the declared list, written
//! atomically, read back, and what it must never do.

use super::*;

#[test]
fn temp_files_are_new_unpredictable_and_never_follow_a_symlink() {
    let dir = temp_dir("temp-names");
    let (a, _) = create_temp(&dir, "state.json").unwrap();
    let (b, _) = create_temp(&dir, "state.json").unwrap();
    assert_ne!(a, b, "two temp files got the same name");
    // A symlink planted where a temp file would go is refused, and
    // what it points to is left alone.
    let target = dir.join("precious");
    fs::write(&target, b"keep").unwrap();
    let planted = dir.join("planted.tmp");
    std::os::unix::fs::symlink(&target, &planted).unwrap();
    let err = create_new(&planted).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
    assert_eq!(fs::read(&target).unwrap(), b"keep");
}
use inferlb_core::{Command, ReplicaSpec};

fn temp_dir(name: &str) -> inferlb_testkit::Scratch {
    inferlb_testkit::fresh_dir(&format!("persist-{name}"))
}

fn decl(replicas: &[ReplicaSpec]) -> Declared {
    Declared {
        replicas: replicas.to_vec(),
        pools: Vec::new(),
    }
}

fn spec(id: &str, port: u16, weight: u32) -> ReplicaSpec {
    ReplicaSpec {
        id: ReplicaId::new(id).unwrap(),
        address: format!("127.0.0.1:{port}"),
        addr: format!("127.0.0.1:{port}").parse().unwrap(),
        weight,
        pool: PoolName::default(),
    }
}

fn ids(state: &State) -> Vec<&str> {
    state.replicas().iter().map(|r| r.id.as_str()).collect()
}

#[test]
fn runtime_changes_are_kept_on_top_of_the_declared_list() {
    let dir = temp_dir("overlay");
    let file = StateFile::new(dir.join("state.json"));
    let declared = vec![spec("a", 9001, 1), spec("b", 9002, 1)];
    assert!(file
        .load(Routing::RoundRobin, &decl(&declared))
        .unwrap()
        .is_none());
    let mut state = State::new(Routing::RoundRobin);
    for s in &declared {
        state.apply(Command::Add(s.clone())).unwrap();
    }
    // At runtime: c added, b removed, a reweighted and draining.
    state.apply(Command::Add(spec("c", 9003, 2))).unwrap();
    state
        .apply(Command::Remove {
            id: ReplicaId::new("b").unwrap(),
        })
        .unwrap();
    state
        .apply(Command::SetWeight {
            id: ReplicaId::new("a").unwrap(),
            weight: 7,
        })
        .unwrap();
    let deadline = UNIX_EPOCH + Duration::from_secs(2_000_000_000);
    state
        .apply(Command::Drain {
            id: ReplicaId::new("a").unwrap(),
            deadline,
        })
        .unwrap();
    file.save(&state, &decl(&declared)).unwrap();
    // No temp file is left behind, and the file holds changes only.
    assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
    let text = fs::read_to_string(file.path()).unwrap();
    assert!(
        text.contains("\"removed\"") && text.contains("\"added\""),
        "{text}"
    );

    let loaded = file
        .load(Routing::RoundRobin, &decl(&declared))
        .unwrap()
        .unwrap();
    assert_eq!(ids(&loaded), ["a", "c"]);
    let a = &loaded.replicas()[0];
    assert_eq!(
        (a.weight, a.state, a.drain_deadline),
        (7, ReplicaState::Draining, Some(deadline))
    );

    // Another declared list: its replicas are served, with the runtime
    // add kept; b (removed at runtime) stays out only while declared.
    let today = vec![spec("d", 9004, 1)];
    let loaded = file
        .load(Routing::RoundRobin, &decl(&today))
        .unwrap()
        .unwrap();
    assert_eq!(ids(&loaded), ["d", "c"]);
}

#[test]
fn a_name_that_does_not_resolve_is_kept_as_unresolved() {
    let dir = temp_dir("unresolved");
    let path = dir.join("state.json");
    fs::write(
        &path,
        r#"{"version":2,"added":[{"id":"m","address":"no-such-host.invalid:8000","weight":2,"state":"active","added_at_unix_ms":0,"drain_deadline_unix_ms":null}]}"#,
    )
    .unwrap();
    let loaded = StateFile::new(&path)
        .load(Routing::RoundRobin, &decl(&[]))
        .unwrap()
        .unwrap();
    let m = &loaded.replicas()[0];
    assert_eq!((m.id.as_str(), m.weight, m.resolved), ("m", 2, false));
    assert_eq!(
        inferlb_core::Routability::of(m, 0),
        inferlb_core::Routability::Unresolved
    );
    assert!(!loaded.snapshot().has_routable());
}

#[test]
fn a_version_1_file_is_read_as_changes() {
    let dir = temp_dir("v1");
    let path = dir.join("state.json");
    fs::write(
        &path,
        r#"{"version":1,"routing":"round_robin","replicas":[{"id":"x","address":"127.0.0.1:9100","weight":3,"state":"active","added_at_unix_ms":0,"drain_deadline_unix_ms":null}]}"#,
    )
    .unwrap();
    let declared = vec![spec("a", 9001, 1)];
    let loaded = StateFile::new(&path)
        .load(Routing::RoundRobin, &decl(&declared))
        .unwrap()
        .unwrap();
    // The old file's list was the whole truth then: a was not in it.
    assert_eq!(ids(&loaded), ["x"]);
}

#[test]
fn a_reload_keeps_runtime_changes() {
    let old = vec![spec("a", 9001, 1), spec("b", 9002, 1)];
    let mut state = State::new(Routing::RoundRobin);
    state.apply(Command::Add(spec("a", 9001, 1))).unwrap();
    state.apply(Command::Add(spec("c", 9003, 1))).unwrap();
    // b was removed at runtime, c added; the new file declares a, b, e.
    let new = vec![spec("a", 9001, 1), spec("b", 9002, 1), spec("e", 9005, 1)];
    let desired = desired_after_reload(&state, &old, &new);
    let ids: Vec<&str> = desired.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["a", "e", "c"]);
}

#[test]
fn a_corrupt_file_is_an_error_and_left_alone() {
    let dir = temp_dir("corrupt");
    let path = dir.join("state.json");
    fs::write(&path, "{ not json").unwrap();
    let err = StateFile::new(&path)
        .load(Routing::RoundRobin, &decl(&[]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("corrupt"), "{err}");
    assert_eq!(fs::read_to_string(&path).unwrap(), "{ not json");
}

#[test]
fn temp_files_an_interrupted_save_left_are_removed_at_start() {
    let dir = temp_dir("stale-temps");
    let path = dir.join("state.json");
    let stale = dir.join(".state.json.0123456789abcdef.tmp");
    fs::write(&stale, b"half a file").unwrap();
    // Not ours: another file's temp, and a name that only looks alike.
    let other = dir.join(".other.json.0123456789abcdef.tmp");
    let lookalike = dir.join(".state.json.notrandom.tmp");
    fs::write(&other, b"x").unwrap();
    fs::write(&lookalike, b"x").unwrap();
    let loaded = StateFile::new(&path)
        .load(Routing::RoundRobin, &decl(&[]))
        .unwrap();
    assert!(loaded.is_none(), "no state file yet");
    assert!(!stale.exists(), "the stale temp file was kept");
    assert!(
        other.exists() && lookalike.exists(),
        "another file was removed"
    );
}

fn autoscaling_pool(name: &str) -> PoolSpec {
    let mut spec = PoolSpec::named(PoolName::new(name).unwrap());
    let mut scaling = inferlb_core::PoolAutoscaling::new(inferlb_core::Provider::Exec {
        command: vec!["true".into()],
        env: Vec::new(),
    });
    scaling.max = 4;
    spec.autoscaling = Some(std::sync::Arc::new(scaling));
    spec
}

#[test]
fn scaler_replicas_are_never_written_and_scaling_changes_are() {
    let dir = temp_dir("scaler");
    let store = StateFile::new(dir.join("state.json"));
    let auto = autoscaling_pool("auto");
    let declared = Declared {
        replicas: vec![spec("a", 9001, 1)],
        pools: vec![auto.clone()],
    };
    let mut state = State::new(Routing::RoundRobin);
    state
        .apply(Command::SetPool(Box::new(auto.clone())))
        .unwrap();
    state.apply(Command::Add(spec("a", 9001, 1))).unwrap();
    let mut started = spec("auto-0", 20000, 1);
    started.pool = auto.name.clone();
    state.apply(Command::Admit(started)).unwrap();
    let settings = ScalingSettings {
        min: 1,
        max: 3,
        target_in_flight: 2.0,
        suspended: true,
    };
    state
        .apply(Command::SetScaling {
            pool: auto.name.clone(),
            settings,
        })
        .unwrap();
    store.save(&state, &declared).unwrap();
    let text = fs::read_to_string(store.path()).unwrap();
    assert!(
        !text.contains("auto-0"),
        "a scaler replica was written: {text}"
    );
    let loaded = store.load(Routing::RoundRobin, &declared).unwrap().unwrap();
    assert_eq!(ids(&loaded), ["a"]);
    assert_eq!(loaded.scaling(&auto.name), Some(settings));
}

#[test]
fn stored_scaling_the_declaration_no_longer_allows_is_ignored() {
    let dir = temp_dir("scaling-invalid");
    let path = dir.join("state.json");
    // max 50 was allowed by an earlier config; the pool now has 4 ports.
    fs::write(
        &path,
        r#"{"version": 2, "scaling": {"auto": {"min": 0, "max": 50, "target_in_flight": 2.0, "suspended": false}}}"#,
    )
    .unwrap();
    let mut auto = autoscaling_pool("auto");
    if let Some(a) = auto.autoscaling.as_mut() {
        std::sync::Arc::make_mut(a).ports = (20000, 20003);
    }
    let declared = Declared {
        replicas: Vec::new(),
        pools: vec![auto.clone()],
    };
    let loaded = StateFile::new(&path)
        .load(Routing::RoundRobin, &declared)
        .unwrap()
        .unwrap();
    assert_eq!(loaded.scaling(&auto.name).map(|s| s.max), Some(4));
}

#[test]
fn a_stored_pool_list_never_drops_a_declared_autoscaling_pool() {
    let dir = temp_dir("pools-override");
    let path = dir.join("state.json");
    // Written by a PUT with `"pools": []` before such PUTs were refused.
    fs::write(&path, r#"{"version": 2, "pools": []}"#).unwrap();
    let auto = autoscaling_pool("auto");
    let plain = PoolSpec::named(PoolName::new("plain").unwrap());
    let declared = Declared {
        replicas: Vec::new(),
        pools: vec![auto.clone(), plain.clone()],
    };
    let loaded = StateFile::new(&path)
        .load(Routing::RoundRobin, &declared)
        .unwrap()
        .unwrap();
    assert!(
        loaded.pool(&auto.name).is_some(),
        "the autoscaling pool was dropped"
    );
    assert!(
        loaded.pool(&plain.name).is_none(),
        "a plain pool removed at runtime stays removed"
    );
}
