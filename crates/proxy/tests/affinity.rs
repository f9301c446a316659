//! Session affinity over real sockets: a pool's `affinity` key (a header,
//! a cookie, the JSON `user` field) keeps a session on one replica on top
//! of the pool's rule; a hot session spills to the next replica on the ring
//! (bounded loads) and comes back; a drained replica's sessions move and no
//! other does. Both monoio drivers.

mod support;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use inferlb_core::affinity::{Affinity, AffinityKey};
use inferlb_core::{
    Command, IoDriver, PoolName, PoolSpec, ReplicaId, ReplicaState, Routing, State,
};
use inferlb_testkit::{FakeReplica, Latency, RawClient, RawResponse, ReplicaHandle};
use support::{pool_spec, start_state};

both_drivers!(
    a_header_key_keeps_each_session_on_one_replica,
    a_cookie_or_the_json_user_field_keys_a_session,
    a_hot_session_spills_and_comes_back,
    a_drained_replica_moves_only_its_sessions,
    a_session_keeps_its_replica_over_h2c,
);

/// Pool `m` routing round robin over replicas named `names`, with
/// affinity on `key`.
fn pool_with_affinity(key: &str, names: &[&str], latency: Duration) -> (State, Vec<ReplicaHandle>) {
    let handles: Vec<ReplicaHandle> = names
        .iter()
        .map(|n| {
            FakeReplica::builder()
                .name(n)
                .latency(Latency::Fixed(latency))
                .start()
                .unwrap()
        })
        .collect();
    let mut state = State::new(Routing::RoundRobin);
    let mut spec = PoolSpec::named(PoolName::new("m").unwrap());
    spec.affinity = Some(Affinity {
        key: key.parse::<AffinityKey>().unwrap(),
        epsilon: 0.25,
    });
    state.apply(Command::SetPool(Box::new(spec))).unwrap();
    for (name, h) in names.iter().zip(&handles) {
        state
            .apply(Command::Add(pool_spec(name, h.addr(), "m")))
            .unwrap();
    }
    (state, handles)
}

fn post(client: &mut RawClient, headers: &str, body: &str) -> RawResponse {
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nX-Model: m\r\nContent-Type: application/json\r\n{headers}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    client.send(request.as_bytes()).unwrap();
    let resp = client.read_response().unwrap();
    assert_eq!(resp.status, 200, "{}", resp.text());
    resp
}

fn replica_of(resp: &RawResponse) -> String {
    resp.header("x-replica").unwrap_or("?").to_owned()
}

const BODY: &str = r#"{"messages": [{"role": "user", "content": "hi"}]}"#;

fn a_header_key_keeps_each_session_on_one_replica(driver: IoDriver) {
    let (state, _h) = pool_with_affinity("header:X-Session-ID", &["a", "b", "c"], Duration::ZERO);
    let proxy = start_state(driver, state, |_| {});
    let mut client = RawClient::connect(proxy.addr()).unwrap();
    let mut owners: HashMap<usize, HashSet<String>> = HashMap::new();
    for round in 0..5 {
        for session in 0..12 {
            let resp = post(&mut client, &format!("x-session-id: s-{session}\r\n"), BODY);
            owners.entry(session).or_default().insert(replica_of(&resp));
            let _ = round;
        }
    }
    for (session, replicas) in &owners {
        assert_eq!(replicas.len(), 1, "session {session} went to {replicas:?}");
    }
    let used: HashSet<&String> = owners.values().flatten().collect();
    assert!(used.len() >= 2, "sessions spread over the ring: {owners:?}");
    // Without the key: the pool's rule (round robin).
    let plain: HashSet<String> = (0..6)
        .map(|_| replica_of(&post(&mut client, "", BODY)))
        .collect();
    assert_eq!(plain.len(), 3, "round robin without a key: {plain:?}");
}

fn a_cookie_or_the_json_user_field_keys_a_session(driver: IoDriver) {
    let (state, _h) = pool_with_affinity("cookie:sid", &["a", "b", "c"], Duration::ZERO);
    let proxy = start_state(driver, state, |_| {});
    let mut client = RawClient::connect(proxy.addr()).unwrap();
    for session in 0..6 {
        let seen: HashSet<String> = (0..4)
            .map(|_| {
                let cookie = format!("Cookie: theme=dark; sid=\"u{session}\"; lang=en\r\n");
                replica_of(&post(&mut client, &cookie, BODY))
            })
            .collect();
        assert_eq!(seen.len(), 1, "cookie session {session}: {seen:?}");
    }
    drop(proxy);

    let (state, _h) = pool_with_affinity("json:user", &["a", "b", "c"], Duration::ZERO);
    let proxy = start_state(driver, state, |_| {});
    let mut client = RawClient::connect(proxy.addr()).unwrap();
    let mut owners = HashMap::new();
    for session in 0..9 {
        let seen: HashSet<String> = (0..4)
            .map(|i| {
                // The field after nested values, and before them.
                let body = if i % 2 == 0 {
                    format!(r#"{{"messages": [{{"role": "user", "content": "hi", "user": "x"}}], "user": "user-{session}"}}"#)
                } else {
                    format!(r#"{{"user": "user-{session}", "messages": []}}"#)
                };
                replica_of(&post(&mut client, "", &body))
            })
            .collect();
        assert_eq!(seen.len(), 1, "user {session}: {seen:?}");
        owners.insert(session, seen);
    }
    let used: HashSet<&String> = owners.values().flatten().collect();
    assert!(used.len() >= 2, "users spread: {owners:?}");
}

fn a_hot_session_spills_and_comes_back(driver: IoDriver) {
    let (state, _h) = pool_with_affinity(
        "header:X-Session-ID",
        &["a", "b", "c"],
        Duration::from_millis(400),
    );
    let proxy = start_state(driver, state, |_| {});
    let addr = proxy.addr();
    let mut client = RawClient::connect(addr).unwrap();
    let home = replica_of(&post(&mut client, "X-Session-ID: hot\r\n", BODY));
    // Six at once: past ⌈1.25 × (in flight + 1) / 3⌉ on the home replica,
    // the rest go to the next replicas on the ring.
    let threads: Vec<_> = (0..6)
        .map(|_| {
            std::thread::spawn(move || {
                let mut c = RawClient::connect(addr).unwrap();
                replica_of(&post(&mut c, "X-Session-ID: hot\r\n", BODY))
            })
        })
        .collect();
    let spread: Vec<String> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let distinct: HashSet<&String> = spread.iter().collect();
    assert!(
        distinct.len() >= 2,
        "a hot session stays bounded: {spread:?}"
    );
    assert!(
        spread.iter().filter(|r| **r == home).count() <= 3,
        "the home replica took more than its bound: {spread:?}"
    );
    // Idle again: back home.
    for _ in 0..3 {
        assert_eq!(
            replica_of(&post(&mut client, "X-Session-ID: hot\r\n", BODY)),
            home
        );
    }
}

fn a_drained_replica_moves_only_its_sessions(driver: IoDriver) {
    let (state, _h) = pool_with_affinity("header:X-Session-ID", &["a", "b", "c"], Duration::ZERO);
    let mut proxy = start_state(driver, state, |_| {});
    let mut client = RawClient::connect(proxy.addr()).unwrap();
    let owner = |client: &mut RawClient, s: usize| {
        replica_of(&post(client, &format!("X-Session-ID: s{s}\r\n"), BODY))
    };
    let before: Vec<String> = (0..30).map(|s| owner(&mut client, s)).collect();
    let gone = before[0].clone();
    proxy.apply(Command::SetState {
        id: ReplicaId::new(&gone).unwrap(),
        state: ReplicaState::Draining,
    });
    for (s, was) in before.iter().enumerate() {
        let now = owner(&mut client, s);
        if *was == gone {
            assert_ne!(now, gone, "session s{s} stayed on the drained replica");
        } else {
            assert_eq!(&now, was, "session s{s} moved though its replica stayed");
        }
    }
}

/// Over HTTP/2 (h2c with prior knowledge, curl): each stream is a request
/// on the same path, so a session keeps its replica however it comes.
fn a_session_keeps_its_replica_over_h2c(driver: IoDriver) {
    let (state, _h) = pool_with_affinity("header:X-Session-ID", &["a", "b", "c"], Duration::ZERO);
    let proxy = start_state(driver, state, |_| {});
    let url = format!("http://{}/v1/chat/completions", proxy.addr());
    for session in ["s1", "s2", "s3"] {
        let seen: HashSet<String> = (0..3)
            .map(|_| {
                let out = std::process::Command::new("curl")
                    .args([
                        "-s",
                        "-D",
                        "-",
                        "-o",
                        "/dev/null",
                        "--http2-prior-knowledge",
                    ])
                    .args(["-H", "X-Model: m", "-H", "Content-Type: application/json"])
                    .args(["-H", &format!("X-Session-ID: {session}")])
                    .args(["--data", BODY, &url])
                    .output()
                    .expect("curl is needed for the HTTP/2 tests");
                let head = String::from_utf8_lossy(&out.stdout).into_owned();
                assert!(head.starts_with("HTTP/2 200"), "{head}");
                head.lines()
                    .find_map(|l| l.strip_prefix("x-replica: "))
                    .unwrap_or("?")
                    .trim()
                    .to_owned()
            })
            .collect();
        assert_eq!(seen.len(), 1, "{session} over h2: {seen:?}");
    }
}
