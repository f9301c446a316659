//! The local scaler's decisions: a pool whose replicas inferlb starts and
//! stops itself (`[pools.autoscaling]`), as a pure state machine from (time,
//! observations) to actions, on the same [`Engine`] as `simulate`. The
//! control plane's executor observes the pool, calls [`LocalScaler::tick`]
//! (or [`LocalScaler::between_ticks`]), carries out the actions (processes,
//! health checks, commands to the one writer) and reports back the few that
//! failed. Time is injected, so every rule is tested without a clock.
//!
//! ```text
//!  Start ─▶ Starting ─(checks pass: Admit)─▶ InService ─(scale-in: Drain)─▶ Draining ─(gone from the pool: Stop)
//!              │                                 ▲                           │
//!              └─ start timeout: Stop, backoff   └──── scale-out: Undrain ───┘
//!  a process that exits: Stop (forgotten), replaced after a doubling backoff
//! ```
//!
//! - **Scale out**: the engine's desired capacity rises; draining replicas
//!   are taken back first, then new ones started at the lowest free index.
//! - **Scale in**: replicas still starting are stopped first, then the one
//!   in service with the fewest requests in flight is drained.
//! - **Scale from zero**: with `min = 0` the pool sleeps after
//!   `idle_to_zero` without a request; a held request wakes it, and while
//!   nothing serves, the held requests size it at `target_in_flight` each.

use std::collections::BTreeMap;
use std::time::Duration;

use inferlb_core::{PoolAutoscaling, ScalingSettings};

use crate::aas::{AlarmOverrides, Assumptions, Engine, Metrics};
use crate::model::{Suspended, Target, TargetTracking};

/// How often the executor calls [`LocalScaler::tick`]: the engine's tick.
pub const TICK: Duration = Duration::from_secs(1);
/// Restart backoff after a crash or a failed start: doubling up to the max.
pub const BACKOFF_MIN: Duration = Duration::from_secs(1);
pub const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// Where a replica the scaler started is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Started; not in the pool until its checks pass.
    Starting,
    /// In the pool, taking requests.
    InService,
    /// In the pool, taking no new requests; stopped once it leaves it.
    Draining,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::InService => "in_service",
            Self::Draining => "draining",
        }
    }
}

/// A replica the scaler started, by its index (`{index}` of the provider).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalReplica {
    pub index: u32,
    pub phase: Phase,
    /// When it was started.
    pub started: Duration,
}

/// What the executor is asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Start a replica process at this index.
    Start { index: u32 },
    /// Its checks passed: add it to the pool.
    Admit { index: u32 },
    /// Drain it (no new requests) for a scale-in.
    Drain { index: u32 },
    /// Take a draining replica back for a scale-out.
    Undrain { index: u32 },
    /// Take it out of the pool if it is there, and stop its process (it may
    /// have exited already). The scaler has forgotten it.
    Stop { index: u32 },
}

/// A scaling activity or replica event, for the status and the log (as
/// DescribeScalingActivities shows them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// `out`, `in`, or `none` (a replica event or a settings change).
    pub direction: &'static str,
    pub from: u32,
    pub to: u32,
    pub failed: bool,
    pub cause: String,
}

/// What one decision asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decision {
    pub actions: Vec<Action>,
    pub events: Vec<Event>,
}

/// The pool as the executor observed it for one tick.
#[derive(Debug, Clone, Default)]
pub struct Observation {
    /// The settings in force (declared, or changed at runtime).
    pub settings: Option<ScalingSettings>,
    /// Requests in flight to the pool's replicas.
    pub in_flight: u64,
    /// Requests held for a first replica (or for room).
    pub queued: u64,
    /// Requests the pool's replicas have taken, ever.
    pub requests: u64,
    /// Requests in flight per replica in the pool, by index.
    pub in_flight_of: BTreeMap<u32, u64>,
    /// Replicas in the pool now, by index (in service or draining there).
    pub in_pool: Vec<u32>,
    /// Processes that exited since the last tick, with why.
    pub exited: Vec<(u32, String)>,
    /// Starting replicas whose checks passed.
    pub passed: Vec<u32>,
}

/// One pool's scaler.
#[derive(Debug)]
pub struct LocalScaler {
    /// Replica `index` is named `{prefix}-{index}`.
    prefix: String,
    config: PoolAutoscaling,
    engine: Engine,
    applied: ScalingSettings,
    replicas: Vec<LocalReplica>,
    /// `min = 0` and scaled to zero: the next request wakes the pool.
    asleep: bool,
    last_busy: Duration,
    last_requests: u64,
    backoff: Duration,
    next_start: Duration,
}

impl LocalScaler {
    /// A scaler for the pool `pool`, declared as `config`, running with
    /// `settings`, at time `now`.
    pub fn new(
        pool: &str,
        config: PoolAutoscaling,
        settings: ScalingSettings,
        now: Duration,
    ) -> Self {
        Self {
            // `:` is allowed in pool names, not in replica ids.
            prefix: pool.replace(':', "-"),
            engine: engine_for(&config, &settings, now),
            asleep: settings.min == 0,
            config,
            applied: settings,
            replicas: Vec::new(),
            last_busy: now,
            last_requests: 0,
            backoff: BACKOFF_MIN,
            next_start: now,
        }
    }

    /// The id of replica `index`: `{pool}-{index}`.
    pub fn name(&self, index: u32) -> String {
        format!("{}-{index}", self.prefix)
    }

    /// The replicas it runs.
    pub fn replicas(&self) -> &[LocalReplica] {
        &self.replicas
    }

    /// The capacity the engine wants.
    pub fn desired(&self) -> u32 {
        self.engine.desired().max(0) as u32
    }

    /// The settings it runs with.
    pub fn settings(&self) -> ScalingSettings {
        self.applied
    }

    /// Whether the pool is scaled to zero, waiting for a request.
    pub fn asleep(&self) -> bool {
        self.asleep
    }

    /// One tick: settings, replicas gone or ready, the engine's decision on
    /// in-flight (and held) requests per replica in service, scale from
    /// and to zero, then the actions that make the replicas match.
    pub fn tick(&mut self, now: Duration, seen: &Observation) -> Decision {
        let mut d = Decision::default();
        if seen.in_flight > 0 || seen.queued > 0 || seen.requests != self.last_requests {
            self.last_busy = now;
            self.last_requests = seen.requests;
        }
        if let Some(settings) = seen.settings {
            self.apply_settings(now, settings, &mut d);
        }
        self.forget_gone(now, seen, &mut d);
        self.admit_ready(now, seen, &mut d);
        let serving = self.count(Phase::InService) as i32;
        self.engine.set_in_service(serving);
        let metric = if serving == 0 {
            f64::NAN
        } else {
            (seen.in_flight + seen.queued) as f64 / f64::from(serving)
        };
        let acts = self.engine.step(
            secs(now),
            &Metrics {
                tracking: vec![metric],
                recipe: 0.0,
            },
        );
        record_engine(acts, &mut d);
        if !self.applied.suspended {
            if self.asleep && (seen.queued > 0 || seen.in_flight > 0) {
                self.wake(now, seen.queued, &mut d);
                self.size_cold_start(now, seen.queued, &mut d);
            } else if serving == 0 && seen.queued > 0 && !self.asleep {
                self.size_cold_start(now, seen.queued, &mut d);
            } else if self.applied.min == 0
                && !self.asleep
                && now.saturating_sub(self.last_busy) >= self.config.idle_to_zero
            {
                self.asleep = true;
                let max = self.applied.max as i32;
                self.engine.set_bounds(secs(now), 0, max, String::new());
                let acts = self.engine.set_desired(
                    secs(now),
                    0,
                    format!(
                        "no request for {}: scaling to zero",
                        humantime::format_duration(self.config.idle_to_zero)
                    ),
                );
                record_engine(acts, &mut d);
            }
        }
        self.converge(now, &seen.in_flight_of, &mut d);
        d
    }

    /// Between ticks (every 100 ms or so): a held request wakes a pool that
    /// serves nothing at once, and a starting replica whose checks passed
    /// joins at once, rather than at the next tick.
    pub fn between_ticks(&mut self, now: Duration, seen: &Observation) -> Decision {
        let mut d = Decision::default();
        self.admit_ready(now, seen, &mut d);
        let cold = self.asleep || self.count(Phase::InService) == 0;
        if cold && !self.applied.suspended && seen.queued > 0 {
            if self.asleep {
                self.wake(now, seen.queued, &mut d);
            }
            self.size_cold_start(now, seen.queued, &mut d);
            self.converge(now, &BTreeMap::new(), &mut d);
        }
        d
    }

    /// A `Start` failed (no free port, the command could not run): it is
    /// forgotten and retried after the backoff.
    pub fn start_failed(&mut self, now: Duration, index: u32, cause: String) -> Event {
        self.replicas.retain(|r| r.index != index);
        self.back_off(now);
        let live = self.live() as u32;
        failure(live, live, cause)
    }

    /// After a failure: no start before the backoff has passed, and the next
    /// failure waits twice as long (up to [`BACKOFF_MAX`]). Returns the wait.
    fn back_off(&mut self, now: Duration) -> Duration {
        let wait = self.backoff;
        self.next_start = now + wait;
        self.backoff = (wait * 2).min(BACKOFF_MAX);
        wait
    }

    /// A `Start` not attempted (an earlier one of the same decision failed):
    /// forgotten, without another backoff.
    pub fn forget(&mut self, index: u32) {
        self.replicas.retain(|r| r.index != index);
    }

    /// An `Admit`, `Drain` or `Undrain` was refused by the control plane:
    /// the replica stays where it was.
    pub fn refused(&mut self, action: &Action) {
        let (index, back) = match *action {
            Action::Admit { index } => (index, Phase::Starting),
            Action::Drain { index } => (index, Phase::InService),
            Action::Undrain { index } => (index, Phase::Draining),
            Action::Start { .. } | Action::Stop { .. } => return,
        };
        if let Some(r) = self.replicas.iter_mut().find(|r| r.index == index) {
            r.phase = back;
        }
    }

    fn count(&self, phase: Phase) -> usize {
        self.replicas.iter().filter(|r| r.phase == phase).count()
    }

    /// Replicas starting or in service.
    fn live(&self) -> usize {
        self.replicas
            .iter()
            .filter(|r| r.phase != Phase::Draining)
            .count()
    }

    /// Applies settings changed since the last tick.
    fn apply_settings(&mut self, now: Duration, wanted: ScalingSettings, d: &mut Decision) {
        if wanted == self.applied {
            return;
        }
        let floor = if self.asleep { 0 } else { wanted.min.max(1) };
        let cause = format!(
            "settings changed: min {} max {} target_in_flight {} suspended {}",
            wanted.min, wanted.max, wanted.target_in_flight, wanted.suspended
        );
        let desired = self.desired();
        d.events
            .push(event("none", desired, desired, cause.clone()));
        let acts = self
            .engine
            .set_bounds(secs(now), floor as i32, wanted.max as i32, cause);
        record_engine(acts, d);
        if wanted.min > 0 && self.asleep {
            self.asleep = false;
            let acts = self.engine.set_bounds(
                secs(now),
                wanted.min as i32,
                wanted.max as i32,
                format!("min raised to {}", wanted.min),
            );
            record_engine(acts, d);
        }
        self.engine.set_target_value(wanted.target_in_flight);
        self.engine.set_suspended(Suspended {
            dynamic_scaling_in: wanted.suspended,
            dynamic_scaling_out: wanted.suspended,
            scheduled_scaling: wanted.suspended,
        });
        self.applied = wanted;
    }

    /// Replicas whose process exited (replaced after a backoff unless they
    /// were draining), and those gone from the pool (drained and removed,
    /// or removed by an operator): forgotten, and stopped.
    fn forget_gone(&mut self, now: Duration, seen: &Observation, d: &mut Decision) {
        for (index, reason) in &seen.exited {
            let Some(at) = self.replicas.iter().position(|r| r.index == *index) else {
                continue;
            };
            let replica = self.replicas.remove(at);
            d.actions.push(Action::Stop { index: *index });
            if replica.phase != Phase::Draining {
                let wait = self.back_off(now);
                let cause = format!(
                    "replica {} {reason}; replacing it in {}",
                    self.name(*index),
                    humantime::format_duration(wait)
                );
                let live = self.live() as u32;
                d.events.push(failure(live + 1, live, cause));
            }
        }
        let mut i = 0;
        while i < self.replicas.len() {
            let r = self.replicas[i];
            if r.phase != Phase::Starting && !seen.in_pool.contains(&r.index) {
                self.replicas.remove(i);
                d.actions.push(Action::Stop { index: r.index });
                continue;
            }
            i += 1;
        }
    }

    /// Starting replicas whose checks passed are admitted; those past
    /// `start_timeout` are stopped and retried after the backoff.
    fn admit_ready(&mut self, now: Duration, seen: &Observation, d: &mut Decision) {
        let mut i = 0;
        while i < self.replicas.len() {
            let r = self.replicas[i];
            if r.phase != Phase::Starting {
                i += 1;
                continue;
            }
            if seen.passed.contains(&r.index) {
                self.replicas[i].phase = Phase::InService;
                self.backoff = BACKOFF_MIN;
                d.actions.push(Action::Admit { index: r.index });
                i += 1;
                continue;
            }
            if now.saturating_sub(r.started) >= self.config.start_timeout {
                self.replicas.remove(i);
                let wait = self.back_off(now);
                let cause = format!(
                    "replica {} did not pass its health check ({}) within {}: stopped; retrying in {}",
                    self.name(r.index),
                    self.config.health_path,
                    humantime::format_duration(self.config.start_timeout),
                    humantime::format_duration(wait)
                );
                d.actions.push(Action::Stop { index: r.index });
                let live = self.live() as u32;
                d.events.push(failure(live + 1, live, cause));
                continue;
            }
            i += 1;
        }
    }

    /// While nothing serves yet, the held requests are the only measure of
    /// load (a per-replica metric has no value): enough replicas for them
    /// at `target_in_flight` each start at once, rather than one.
    fn size_cold_start(&mut self, now: Duration, held: u64, d: &mut Decision) {
        let target = self.applied.target_in_flight.max(f64::MIN_POSITIVE);
        let want = ((held as f64 / target).ceil() as i32).clamp(1, self.applied.max as i32);
        if want > self.engine.desired() {
            let acts = self.engine.set_desired(
                secs(now),
                want,
                format!(
                    "nothing in service yet: {} held at {target} per replica",
                    inferlb_core::text::count(held, "request")
                ),
            );
            record_engine(acts, d);
        }
    }

    /// Scale from zero: the first replica, at once.
    fn wake(&mut self, now: Duration, held: u64, d: &mut Decision) {
        self.asleep = false;
        self.last_busy = now;
        let acts = self.engine.set_bounds(
            secs(now),
            self.applied.min.max(1) as i32,
            self.applied.max as i32,
            format!(
                "scale from zero: {} held for a first replica",
                inferlb_core::text::count(held, "request")
            ),
        );
        record_engine(acts, d);
    }

    /// Takes back, starts, stops or drains replicas until as many are live
    /// as the engine wants.
    fn converge(&mut self, now: Duration, in_flight_of: &BTreeMap<u32, u64>, d: &mut Decision) {
        let desired = self.desired() as usize;
        let mut live = self.live();
        // A scale-out takes draining replicas back first, newest first.
        while live < desired {
            let Some(at) = self
                .replicas
                .iter()
                .rposition(|r| r.phase == Phase::Draining)
            else {
                break;
            };
            self.replicas[at].phase = Phase::InService;
            let index = self.replicas[at].index;
            live += 1;
            d.actions.push(Action::Undrain { index });
            let n = live as u32;
            d.events.push(event(
                "none",
                n,
                n,
                format!(
                    "replica {} taken back from draining for the scale-out",
                    self.name(index)
                ),
            ));
        }
        if live < desired && now >= self.next_start {
            while live < desired {
                let index = (0..)
                    .find(|n| !self.replicas.iter().any(|r| r.index == *n))
                    .unwrap_or(0);
                self.replicas.push(LocalReplica {
                    index,
                    phase: Phase::Starting,
                    started: now,
                });
                d.actions.push(Action::Start { index });
                live += 1;
            }
        }
        // A scale-in stops replicas still starting first (newest first),
        // then drains the one in service with the fewest requests in flight.
        while live > desired {
            if let Some(at) = self
                .replicas
                .iter()
                .rposition(|r| r.phase == Phase::Starting)
            {
                let r = self.replicas.remove(at);
                d.actions.push(Action::Stop { index: r.index });
                live -= 1;
                continue;
            }
            let Some(at) = self
                .replicas
                .iter()
                .enumerate()
                .filter(|(_, r)| r.phase == Phase::InService)
                .min_by_key(|(_, r)| in_flight_of.get(&r.index).copied().unwrap_or(0))
                .map(|(at, _)| at)
            else {
                break;
            };
            self.replicas[at].phase = Phase::Draining;
            let index = self.replicas[at].index;
            d.actions.push(Action::Drain { index });
            let n = live as u32;
            d.events.push(event(
                "none",
                n,
                n,
                format!(
                    "replica {} draining for the scale-in (fewest in flight), then stopped",
                    self.name(index)
                ),
            ));
            live -= 1;
        }
    }
}

/// The engine's model of the pool: one target-tracking policy on in-flight
/// requests per replica, AAS's cooldown rules, min/max.
fn engine_for(config: &PoolAutoscaling, settings: &ScalingSettings, now: Duration) -> Engine {
    let target = Target {
        resource_id: "pool".into(),
        scalable_dimension: None,
        min_capacity: settings.min.max(1) as i32,
        max_capacity: settings.max as i32,
        capacity: None,
        suspended: None,
        tags: BTreeMap::new(),
        target_tracking: vec![TargetTracking {
            name: "in-flight-per-replica".into(),
            predefined_metric: None,
            customized_metric: None,
            target_value: settings.target_in_flight,
            scale_out_cooldown_s: Some(config.scale_out_cooldown.as_secs() as i32),
            scale_in_cooldown_s: Some(config.scale_in_cooldown.as_secs() as i32),
            disable_scale_in: false,
        }],
        step_scaling: Vec::new(),
        scheduled: Vec::new(),
        scale_to_zero: None,
        async_scale_to_zero: None,
    };
    let start = settings.min as i32;
    let mut engine = Engine::new(&target, start, 0)
        .with_tick(TICK.as_secs() as i64)
        .with_alarms(AlarmOverrides {
            scale_out_datapoints: Some(config.scale_out_datapoints as usize),
            scale_out_period_s: Some(config.scale_out_period.as_secs() as i64),
            scale_in_datapoints: Some(config.scale_in_datapoints as usize),
            scale_in_period_s: Some(config.scale_in_period.as_secs() as i64),
            scale_in_ratio: None,
        })
        // Local replicas start in seconds and nothing rejects a change
        // meanwhile; a scale-in waits out a scale-out's cooldown, so a pool
        // does not stop a replica it has just started.
        .with_assumptions(Assumptions {
            scale_in_step: None,
            scale_in_waits_for_scale_out_cooldown: true,
            busy_while_provisioning: false,
        });
    engine.set_suspended(Suspended {
        dynamic_scaling_in: settings.suspended,
        dynamic_scaling_out: settings.suspended,
        scheduled_scaling: settings.suspended,
    });
    if settings.min == 0 {
        // Asleep until the first request.
        engine.set_bounds(secs(now), 0, settings.max as i32, String::new());
        engine.set_desired(secs(now), 0, String::new());
    }
    engine
}

/// The engine's time: whole seconds of the injected clock.
fn secs(now: Duration) -> i64 {
    now.as_secs() as i64
}

fn event(direction: &'static str, from: u32, to: u32, cause: String) -> Event {
    Event {
        direction,
        from,
        to,
        failed: false,
        cause,
    }
}

fn failure(from: u32, to: u32, cause: String) -> Event {
    Event {
        direction: "none",
        from,
        to,
        failed: true,
        cause,
    }
}

fn record_engine(activities: Vec<crate::aas::Activity>, d: &mut Decision) {
    for a in activities {
        let direction = match a.to.cmp(&a.from) {
            std::cmp::Ordering::Greater => "out",
            std::cmp::Ordering::Less => "in",
            std::cmp::Ordering::Equal => "none",
        };
        d.events.push(event(
            direction,
            a.from.max(0) as u32,
            a.to.max(0) as u32,
            a.reason,
        ));
    }
}

#[cfg(test)]
mod tests;
