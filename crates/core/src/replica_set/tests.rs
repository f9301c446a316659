//! Tests of `replica_set`.

use std::net::SocketAddr;

use super::*;
use crate::command::{Command, ReplicaSpec, State};
use crate::replica::{EngineLoad, ReplicaId};

fn spec(id: &str, port: u16, pool: &str) -> ReplicaSpec {
    ReplicaSpec {
        id: ReplicaId::new(id).unwrap(),
        address: format!("127.0.0.1:{port}"),
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        weight: 1,
        pool: PoolName::new(pool).unwrap(),
    }
}

fn named(name: &str, aliases: &[&str], routing: Option<Routing>) -> PoolSpec {
    let mut spec = PoolSpec::named(PoolName::new(name).unwrap());
    spec.aliases = aliases.iter().map(|a| a.to_string()).collect();
    spec.routing = routing;
    spec
}

/// A snapshot of pool `spec` (declared) with replicas `ids` (ports 1, 2, ...).
fn pool_of(pool: PoolSpec, ids: &[&str]) -> ReplicaSet {
    let mut state = State::new(Routing::RoundRobin);
    let name = pool.name.to_string();
    state.apply(Command::SetPool(Box::new(pool))).unwrap();
    for (i, id) in ids.iter().enumerate() {
        state
            .apply(Command::Add(spec(id, i as u16 + 1, &name)))
            .unwrap();
    }
    state.snapshot()
}

#[test]
fn the_default_pool_exists_only_when_something_puts_it_there() {
    // Nothing at all: an empty default pool (503, not 404).
    let state = State::new(Routing::RoundRobin);
    assert_eq!(state.snapshot().pool_for(None), Some(0));
    // Only named pools: no default; names and aliases resolve.
    let mut state = State::new(Routing::RoundRobin);
    state
        .apply(Command::SetPool(Box::new(named(
            "llama",
            &["meta/llama"],
            None,
        ))))
        .unwrap();
    state.apply(Command::Add(spec("a", 1, "llama"))).unwrap();
    let set = state.snapshot();
    assert_eq!(set.default_pool(), None);
    assert_eq!(set.pool_for(None), None);
    assert_eq!(set.pool_for(Some("other")), None);
    assert_eq!(set.pool_for(Some("meta/llama")), Some(0));
    assert!(set
        .pick_at(&mut Cursor::default(), &Tried::default(), 0)
        .is_none());
    // A replica in the default pool brings it back.
    state.apply(Command::Add(spec("d", 2, "default"))).unwrap();
    let set = state.snapshot();
    let default = set.default_pool().unwrap();
    assert_eq!(set.pool_for(Some("other")), Some(default));
    let picked = set.pick_at(&mut Cursor::default(), &Tried::default(), 0);
    assert_eq!(set.replicas()[picked.unwrap()].id.as_str(), "d");
}

#[test]
fn a_pool_picks_only_its_own_replicas_with_its_own_rule() {
    let mut state = State::new(Routing::RoundRobin);
    state
        .apply(Command::SetPool(Box::new(named(
            "m",
            &[],
            Some(Routing::LeastLoad),
        ))))
        .unwrap();
    for (id, port, pool) in [("a", 1, "m"), ("b", 2, "m"), ("x", 3, "default")] {
        state.apply(Command::Add(spec(id, port, pool))).unwrap();
    }
    let set = state.snapshot();
    let m = set.pool_for(Some("m")).unwrap();
    assert_eq!(set.pools()[m].routing(), Routing::LeastLoad);
    let now = 1_000;
    // `a` reports a queue: least_load picks `b` every time.
    set.replicas()[0].stats.record_engine(
        EngineLoad {
            waiting: 5.0,
            running: 1.0,
            kv_usage: 0.2,
        },
        now,
        1_000,
    );
    let mut cursor = Cursor::default();
    for _ in 0..10 {
        let i = set
            .pick_in(m, &mut cursor, &Tried::default(), now, None)
            .unwrap();
        assert_eq!(set.replicas()[i].id.as_str(), "b");
    }
    // A stale scrape is ignored: both are picked again.
    let later = now + 5_000;
    let picks: std::collections::HashSet<usize> = (0..10)
        .map(|_| {
            set.pick_in(m, &mut cursor, &Tried::default(), later, None)
                .unwrap()
        })
        .collect();
    assert_eq!(picks.len(), 2);
    assert!(picks
        .iter()
        .all(|&i| set.replicas()[i].pool.as_str() == "m"));
}

#[test]
fn aliases_cannot_be_claimed_twice() {
    let mut state = State::new(Routing::RoundRobin);
    state
        .apply(Command::SetPool(Box::new(named("a", &["x"], None))))
        .unwrap();
    let err = state
        .apply(Command::SetPool(Box::new(named("b", &["x"], None))))
        .unwrap_err();
    assert!(
        err.to_string().contains("already served by pool a"),
        "{err}"
    );
    assert!(state
        .apply(Command::SetPool(Box::new(named("x", &[], None))))
        .is_err());
}

#[test]
fn prefix_routing_sticks_to_the_owner_until_it_is_overloaded() {
    let mut state = State::new(Routing::RoundRobin);
    state
        .apply(Command::SetPool(Box::new(named(
            "m",
            &[],
            Some(Routing::Prefix),
        ))))
        .unwrap();
    for (id, port) in [("a", 1), ("b", 2), ("c", 3)] {
        state.apply(Command::Add(spec(id, port, "m"))).unwrap();
    }
    let set = state.snapshot();
    let mut chain = Vec::new();
    let text = "a long shared system prompt ".repeat(100);
    crate::prefix::chain(text.as_bytes(), &mut chain);
    let key = PrefixKey {
        chain: &chain,
        len: text.len(),
    };
    let mut cursor = Cursor::default();
    let first = set
        .pick_in(0, &mut cursor, &Tried::default(), 0, Some(key))
        .unwrap();
    for _ in 0..5 {
        let again = set
            .pick_in(0, &mut cursor, &Tried::default(), 0, Some(key))
            .unwrap();
        assert_eq!(again, first, "the owner keeps its prefix");
    }
    // The owner gets busy past abs 8 + 1.5 × the least loaded's 0.
    let _busy: Vec<_> = (0..9)
        .map(|_| set.replicas()[first].stats.start_request())
        .collect();
    let moved = set
        .pick_in(0, &mut cursor, &Tried::default(), 0, Some(key))
        .unwrap();
    assert_ne!(moved, first, "the balance guard sends it elsewhere");
    // A short match (under min_match_ratio) is not followed: texts that
    // share only their first 200 of 2800 bytes spread out.
    drop(_busy);
    let picks: std::collections::HashSet<usize> = (0..6)
        .map(|i| {
            let other = format!("{}{}", &text[..200], format!("{i}").repeat(2600));
            crate::prefix::chain(other.as_bytes(), &mut chain);
            let key = PrefixKey {
                chain: &chain,
                len: other.len(),
            };
            set.pick_in(0, &mut cursor, &Tried::default(), 0, Some(key))
                .unwrap()
        })
        .collect();
    assert!(
        picks.len() >= 2,
        "a short match goes to the least loaded: {picks:?}"
    );
}

#[test]
fn an_adapter_goes_where_it_is_loaded_then_where_a_slot_is_free() {
    use crate::replica::Adapters;
    let mut pool = named("base", &[], Some(Routing::LeastLoad));
    pool.adapters = vec!["sql".into(), "chat".into()];
    let set = pool_of(pool, &["a", "b", "c"]);
    assert_eq!(
        set.pool_for(Some("sql")),
        Some(0),
        "an adapter names its pool"
    );
    let index = |id: &str| {
        set.replicas()
            .iter()
            .position(|r| r.id.as_str() == id)
            .unwrap()
    };
    let report = |id: &str, running: &[&str], max_lora: u32| {
        let stats = &set.replicas()[index(id)].stats;
        stats.record_engine(EngineLoad::default(), 1_000, 10_000);
        stats.record_adapters(Some(Adapters {
            running: running.iter().map(|s| s.to_string()).collect(),
            waiting: Vec::new(),
            max_lora,
        }));
    };
    report("a", &["other"], 1);
    report("b", &["sql"], 1);
    report("c", &[], 1);
    let mut cursor = Cursor::default();
    let pick = |cursor: &mut Cursor, adapter: &str| {
        let i = set
            .pick_adapter(0, cursor, &Tried::default(), 1_000, adapter)
            .unwrap();
        set.replicas()[i].id.as_str().to_owned()
    };
    for _ in 0..4 {
        assert_eq!(pick(&mut cursor, "sql"), "b", "where it is loaded");
        assert_eq!(pick(&mut cursor, "chat"), "c", "where a slot is free");
    }
    // The loaded replica is busy past the balance guard (8 + 1.5 × 0; its
    // engine is idle, so its load is 0.25 × in flight): the free slot
    // takes it.
    let _busy: Vec<_> = (0..40)
        .map(|_| set.replicas()[index("b")].stats.start_request())
        .collect();
    assert_eq!(pick(&mut cursor, "sql"), "c");
    // Stale metrics: the pool's rule alone.
    let picks: std::collections::HashSet<String> = (0..6)
        .map(|_| {
            let i = set
                .pick_adapter(0, &mut cursor, &Tried::default(), 60_000, "sql")
                .unwrap();
            set.replicas()[i].id.as_str().to_owned()
        })
        .collect();
    assert!(
        !picks.contains("b"),
        "least_load avoids the busy one: {picks:?}"
    );
}

#[test]
fn least_load_counts_what_was_sent_since_the_last_scrape() {
    let set = pool_of(named("m", &[], Some(Routing::LeastLoad)), &["a", "b"]);
    let index = |id: &str| {
        set.replicas()
            .iter()
            .position(|r| r.id.as_str() == id)
            .unwrap()
    };
    let (a, b) = (index("a"), index("b"));
    let scrape = |i: usize, waiting: f64| {
        set.replicas()[i].stats.record_engine(
            EngineLoad {
                waiting,
                ..EngineLoad::default()
            },
            1_000,
            10_000,
        )
    };
    // At the scrape a was idle and b had one queued.
    scrape(a, 0.0);
    scrape(b, 1.0);
    let mut cursor = Cursor::default();
    let pick = |cursor: &mut Cursor| {
        set.pick_in(0, cursor, &Tried::default(), 1_000, None)
            .unwrap()
    };
    assert_eq!(pick(&mut cursor), a);
    // Three requests went to a since: they are queued there now, though
    // the engine's numbers do not show them yet.
    let _sent: Vec<_> = (0..3)
        .map(|_| set.replicas()[a].stats.start_request())
        .collect();
    assert_eq!(
        pick(&mut cursor),
        b,
        "no herding onto the replica idle at the scrape"
    );
    // The next scrape sees them: the correction starts from there.
    scrape(a, 3.0);
    assert_eq!(pick(&mut cursor), b);
}

#[test]
fn new_prefixes_on_an_idle_fleet_take_turns() {
    let set = pool_of(
        named("m", &[], Some(Routing::Prefix)),
        &["a", "b", "c", "d"],
    );
    let mut cursor = Cursor::default();
    let mut chain = Vec::new();
    let mut owners = Vec::new();
    // One request at a time (nothing in flight): four prompts, each sent
    // three times, interleaved with picks that advance the rule's cursor.
    for round in 0..3 {
        for p in 0..4 {
            let text = format!("system prompt {p} ").repeat(100);
            crate::prefix::chain(text.as_bytes(), &mut chain);
            let key = PrefixKey {
                chain: &chain,
                len: text.len(),
            };
            let i = set
                .pick_in(0, &mut cursor, &Tried::default(), 0, Some(key))
                .unwrap();
            if round == 0 {
                owners.push(i);
            } else {
                assert_eq!(i, owners[p], "prompt {p} keeps its replica");
            }
            let _ = set.pick_in(0, &mut cursor, &Tried::default(), 0, None);
        }
    }
    let distinct: std::collections::HashSet<usize> = owners.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        4,
        "four new prompts on four idle replicas: {owners:?}"
    );
}

#[test]
fn hashed_new_prefixes_land_alike_on_two_instances() {
    let mut spec = named("m", &[], Some(Routing::Prefix));
    spec.prefix.new_prefix = NewPrefix::Hash;
    // Two instances: separate tables and cursors, replicas listed in
    // different orders.
    let one = pool_of(spec.clone(), &["a", "b", "c", "d"]);
    let two = pool_of(spec, &["d", "c", "b", "a"]);
    let (mut c1, mut c2) = (Cursor::default(), Cursor::default());
    let mut chain = Vec::new();
    let mut used = std::collections::HashSet::new();
    for p in 0..40 {
        // The second instance's cursor is elsewhere in its rotation.
        let _ = two.pick_in(0, &mut c2, &Tried::default(), 0, None);
        let text = format!("conversation {p}: ").repeat(50);
        crate::prefix::chain(text.as_bytes(), &mut chain);
        let key = PrefixKey {
            chain: &chain,
            len: text.len(),
        };
        let i = one
            .pick_in(0, &mut c1, &Tried::default(), 0, Some(key))
            .unwrap();
        let j = two
            .pick_in(0, &mut c2, &Tried::default(), 0, Some(key))
            .unwrap();
        assert_eq!(one.replicas()[i].id, two.replicas()[j].id, "prompt {p}");
        used.insert(one.replicas()[i].id.to_string());
    }
    // And the prefixes spread over the replicas.
    assert_eq!(used.len(), 4, "{used:?}");
}
