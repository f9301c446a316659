//! The local scaler's rules on an injected clock, against a simulated pool
//! that carries out each action as the executor would: a started replica
//! passes its checks after `boot`, a drained one leaves the pool once idle.

use std::time::Duration;

use inferlb_core::{PoolAutoscaling, Provider, ScalingSettings};
use proptest::prelude::*;

use super::*;

fn config(min: u32, max: u32) -> PoolAutoscaling {
    let mut c = PoolAutoscaling::new(Provider::Exec {
        command: vec!["model-server".into()],
        env: Vec::new(),
    });
    c.min = min;
    c.max = max;
    c.target_in_flight = 4.0;
    c.scale_out_cooldown = Duration::from_secs(10);
    c.scale_in_cooldown = Duration::from_secs(60);
    c.scale_out_datapoints = 2;
    c.scale_out_period = Duration::from_secs(1);
    c.scale_in_datapoints = 5;
    c.scale_in_period = Duration::from_secs(1);
    c.idle_to_zero = Duration::from_secs(30);
    c.start_timeout = Duration::from_secs(20);
    c
}

fn s(secs: u64) -> Duration {
    Duration::from_secs(secs)
}

/// A pool the way the executor and the data plane make it: processes that
/// pass their checks after `boot`, replicas in the pool, requests spread
/// over the replicas in service.
struct Pool {
    scaler: LocalScaler,
    boot: Duration,
    /// index → (started at, in the pool, draining)
    running: BTreeMap<u32, (Duration, bool, bool)>,
    /// Requests a draining replica still holds, by index.
    draining_load: BTreeMap<u32, u64>,
    requests: u64,
    log: Vec<(Duration, Decision)>,
}

impl Pool {
    fn new(config: PoolAutoscaling, boot: Duration) -> Self {
        let settings = ScalingSettings::declared(&config);
        Self {
            scaler: LocalScaler::new("llama", config, settings, Duration::ZERO),
            boot,
            running: BTreeMap::new(),
            draining_load: BTreeMap::new(),
            requests: 0,
            log: Vec::new(),
        }
    }

    fn in_service(&self) -> u64 {
        self.running
            .values()
            .filter(|(_, pool, drain)| *pool && !drain)
            .count() as u64
    }

    fn observe(&mut self, now: Duration, load: u64, queued: u64) -> Observation {
        self.requests += load;
        let serving = self.in_service();
        let mut in_flight_of = BTreeMap::new();
        for (&index, &(_, pool, drain)) in &self.running {
            if pool && !drain && serving > 0 {
                in_flight_of.insert(index, load / serving);
            }
        }
        for (index, held) in &self.draining_load {
            in_flight_of.insert(*index, *held);
        }
        // A drained replica leaves the pool once idle.
        for (index, (_, pool, drain)) in self.running.iter_mut() {
            if *pool && *drain && self.draining_load.get(index).copied().unwrap_or(0) == 0 {
                *pool = false;
            }
        }
        Observation {
            settings: None,
            in_flight: if serving > 0 { load } else { 0 },
            queued: if serving > 0 { 0 } else { queued.max(load) },
            requests: self.requests,
            in_flight_of,
            in_pool: self
                .running
                .iter()
                .filter(|(_, (_, pool, _))| *pool)
                .map(|(i, _)| *i)
                .collect(),
            exited: Vec::new(),
            passed: self
                .running
                .iter()
                .filter(|(_, (at, pool, _))| !pool && now.saturating_sub(*at) >= self.boot)
                .map(|(i, _)| *i)
                .collect(),
        }
    }

    fn carry_out(&mut self, now: Duration, d: &Decision) {
        for action in &d.actions {
            match *action {
                Action::Start { index } => {
                    self.running.insert(index, (now, false, false));
                }
                Action::Admit { index } => {
                    if let Some(r) = self.running.get_mut(&index) {
                        r.1 = true;
                    }
                }
                Action::Drain { index } => {
                    if let Some(r) = self.running.get_mut(&index) {
                        r.2 = true;
                    }
                }
                Action::Undrain { index } => {
                    if let Some(r) = self.running.get_mut(&index) {
                        r.2 = false;
                    }
                    self.draining_load.remove(&index);
                }
                Action::Stop { index } => {
                    self.running.remove(&index);
                    self.draining_load.remove(&index);
                }
            }
        }
        self.log.push((now, d.clone()));
    }

    /// One tick at `now` with `load` requests in flight.
    fn tick(&mut self, now: Duration, load: u64) -> Decision {
        let seen = self.observe(now, load, 0);
        let d = self.scaler.tick(now, &seen);
        self.carry_out(now, &d);
        d
    }

    fn live(&self) -> usize {
        self.scaler.live()
    }
}

fn starts(d: &Decision) -> usize {
    d.actions
        .iter()
        .filter(|a| matches!(a, Action::Start { .. }))
        .count()
}

#[test]
fn a_pool_starts_at_min_and_admits_replicas_once_their_checks_pass() {
    let mut pool = Pool::new(config(2, 5), s(3));
    let first = pool.tick(s(0), 0);
    assert_eq!(starts(&first), 2);
    for t in 1..3 {
        assert!(pool.tick(s(t), 0).actions.is_empty(), "at {t} s");
    }
    let ready = pool.tick(s(3), 0);
    assert_eq!(
        ready.actions,
        vec![Action::Admit { index: 0 }, Action::Admit { index: 1 }]
    );
    assert_eq!(
        pool.scaler
            .replicas()
            .iter()
            .filter(|r| r.phase == Phase::InService)
            .count(),
        2
    );
}

#[test]
fn held_requests_always_lead_to_a_start_sized_by_the_target() {
    // Asleep at zero: a held request between ticks starts replicas at once,
    // as many as the held requests need at 4 per replica.
    let mut pool = Pool::new(config(0, 5), s(3));
    assert!(
        pool.tick(s(0), 0).actions.is_empty(),
        "min 0 starts nothing"
    );
    assert!(pool.scaler.asleep());
    let seen = pool.observe(s(0) + Duration::from_millis(300), 0, 9);
    let d = pool
        .scaler
        .between_ticks(s(0) + Duration::from_millis(300), &seen);
    assert_eq!(starts(&d), 3, "{d:?}");
    assert!(d.events.iter().any(|e| e.cause.contains("scale from zero")));
    // Suspended, nothing starts.
    let mut suspended = Pool::new(config(0, 5), s(3));
    let mut seen = suspended.observe(s(1), 0, 9);
    let mut settings = suspended.scaler.settings();
    settings.suspended = true;
    seen.settings = Some(settings);
    assert_eq!(starts(&suspended.scaler.tick(s(1), &seen)), 0);
}

#[test]
fn an_idle_pool_goes_to_zero_and_comes_back() {
    let mut pool = Pool::new(config(0, 3), s(1));
    let seen = pool.observe(s(0), 0, 1);
    let d = pool.scaler.between_ticks(s(0), &seen);
    pool.carry_out(s(0), &d);
    for t in 1..=2 {
        pool.tick(s(t), 1);
    }
    assert_eq!(pool.in_service(), 1);
    // 30 s without a request: drained and stopped.
    let mut stopped = false;
    for t in 3..=40 {
        let d = pool.tick(s(t), 0);
        stopped |= d.actions.iter().any(|a| matches!(a, Action::Drain { .. }));
    }
    assert!(stopped, "an idle pool kept its replica");
    assert!(pool.scaler.asleep());
    pool.tick(s(41), 0);
    assert!(pool.running.is_empty(), "{:?}", pool.running);
}

#[test]
fn a_scale_out_during_a_drain_takes_the_draining_replica_back() {
    let mut pool = Pool::new(config(1, 4), s(1));
    pool.tick(s(0), 0);
    pool.tick(s(1), 0);
    // Load for two: scale out to 2.
    let mut t = 2;
    while pool.in_service() < 2 {
        pool.tick(s(t), 12);
        t += 1;
        assert!(t < 60, "never scaled out");
    }
    // The load goes; the scale-in drains one, which keeps a long stream.
    let draining = loop {
        let d = pool.tick(s(t), 0);
        t += 1;
        if let Some(Action::Drain { index }) = d.actions.first() {
            break *index;
        }
        assert!(t < 300, "never scaled in");
    };
    pool.draining_load.insert(draining, 1);
    // Load again, past the scale-out cooldown: the draining replica comes
    // back instead of a new one starting.
    let mut undrained = false;
    for _ in 0..30 {
        let d = pool.tick(s(t), 12);
        t += 1;
        if d.actions.contains(&Action::Undrain { index: draining }) {
            assert_eq!(
                d.actions.first(),
                Some(&Action::Undrain { index: draining }),
                "started before taking the draining replica back: {d:?}"
            );
            undrained = true;
            break;
        }
        assert_eq!(starts(&d), 0, "started while a replica drains: {d:?}");
    }
    assert!(undrained);
}

#[test]
fn a_crash_is_replaced_after_a_doubling_backoff() {
    let mut pool = Pool::new(config(1, 2), s(1));
    pool.tick(s(0), 0);
    pool.tick(s(1), 0);
    let crash = |pool: &mut Pool, now| {
        let mut seen = pool.observe(now, 0, 0);
        seen.exited = vec![(0, "exited with status 1".into())];
        let d = pool.scaler.tick(now, &seen);
        pool.carry_out(now, &d);
        d
    };
    let d = crash(&mut pool, s(2));
    assert!(d.actions.contains(&Action::Stop { index: 0 }));
    assert!(d.events.iter().any(|e| e.failed
        && e.cause
            .contains("replica llama-0 exited with status 1; replacing it in 1s")));
    assert_eq!(starts(&d), 0, "replaced before the backoff");
    assert_eq!(starts(&pool.tick(s(3), 0)), 1);
    // It crashes again before passing its checks: the backoff doubles.
    let d = crash(&mut pool, s(3) + Duration::from_millis(500));
    assert!(
        d.events
            .iter()
            .any(|e| e.cause.contains("replacing it in 2s")),
        "{d:?}"
    );
}

#[test]
fn a_replica_that_never_passes_its_checks_is_stopped_and_retried() {
    let mut pool = Pool::new(config(1, 2), s(1000));
    assert_eq!(starts(&pool.tick(s(0), 0)), 1);
    let d = pool.tick(s(20), 0);
    assert!(d.actions.contains(&Action::Stop { index: 0 }), "{d:?}");
    assert!(d
        .events
        .iter()
        .any(|e| e.failed && e.cause.contains("within 20s")));
    assert_eq!(starts(&pool.tick(s(21), 0)), 1);
}

#[test]
fn refused_actions_leave_the_replica_where_it_was() {
    let mut pool = Pool::new(config(1, 2), s(0));
    pool.tick(s(0), 0);
    let d = pool.tick(s(1), 0);
    assert_eq!(d.actions, vec![Action::Admit { index: 0 }]);
    pool.scaler.refused(&d.actions[0]);
    assert_eq!(pool.scaler.replicas()[0].phase, Phase::Starting);
    let event = pool.scaler.start_failed(s(1), 0, "no free port".into());
    assert!(event.failed);
    assert!(pool.scaler.replicas().is_empty());
}

/// Ticks through `loads` (one per second); returns the pool.
fn run(min: u32, max: u32, loads: &[u64]) -> Pool {
    let mut pool = Pool::new(config(min, max), s(2));
    for (t, load) in loads.iter().enumerate() {
        pool.tick(s(t as u64), *load);
        let live = pool.live();
        assert!(live <= max as usize, "{live} live above max {max} at {t} s");
        if min > 0 && t > 0 {
            assert!(live >= min as usize, "{live} live below min {min} at {t} s");
        }
    }
    pool
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Never above max, never below min (min ≥ 1: no scale from zero), and
    /// at most one scale-in per scale-in cooldown, unless a scale-out came
    /// between them (a scale-out ends the scale-in cooldown, as AWS's target
    /// tracking does: "Define cooldown periods", Application Auto Scaling
    /// User Guide).
    #[test]
    fn bounds_hold_and_scale_ins_keep_their_cooldown(
        min in 1u32..3,
        extra in 0u32..5,
        loads in proptest::collection::vec(0u64..60, 1..400),
    ) {
        let max = min + extra;
        let pool = run(min, max, &loads);
        let cooldown = config(min, max).scale_in_cooldown;
        let mut last_in: Option<Duration> = None;
        for (at, d) in &pool.log {
            if d.events.iter().any(|e| e.direction == "out") {
                last_in = None;
            }
            if d.events.iter().any(|e| e.direction == "in") {
                if let Some(before) = last_in {
                    prop_assert!(
                        *at - before >= cooldown,
                        "scale-ins at {:?} and {:?} with no scale-out between",
                        before,
                        at
                    );
                }
                last_in = Some(*at);
            }
        }
    }

    /// Every tick with held requests and nothing live starts a replica.
    #[test]
    fn held_requests_start_a_replica_whenever_nothing_is_live(
        held in 1u64..50,
        idle in 0u64..100,
    ) {
        let mut pool = Pool::new(config(0, 4), s(2));
        for t in 0..idle {
            pool.tick(s(t), 0);
        }
        let seen = pool.observe(s(idle), 0, held);
        let d = pool.scaler.tick(s(idle), &seen);
        prop_assert!(starts(&d) >= 1, "{:?}", d);
        prop_assert!(starts(&d) <= 4);
    }
}
