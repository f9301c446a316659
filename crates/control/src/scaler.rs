//! Local autoscaling: a pool with `[pools.autoscaling]` starts and stops its
//! own replicas (child processes, or systemd units), driven once a second
//! by the same engine as `inferlb autoscale simulate`.
//!
//! ```text
//!  shared counters ─▶ in flight + held, per replica in service ─▶ Engine (target tracking,
//!  (data plane)                                                    cooldowns, min/max)
//!                                                                       │ desired
//!  start ─▶ starting ─(health passes)─▶ in service ─(scale-in)─▶ draining ─(drained)─▶ stopped
//!    ▲                                      ▲                        │
//!    └── crash: removed, replaced after a backoff                    └─ scale-out: un-drained
//! ```
//!
//! - **Scale out**: a replica is started; it joins the pool only once its
//!   health check passes (and its engine metrics answer, when the pool
//!   scrapes them), then slow start ramps it in.
//! - **Scale in**: the replica with the fewest requests in flight is
//!   drained (no new requests; those in flight and streams finish, up to
//!   `drain_timeout_s`), then stopped. A scale-out during the drain takes it
//!   back instead of starting another.
//! - **Scale from zero**: with `min = 0` the pool goes to zero replicas
//!   after `idle_to_zero_s` without a request; a request then is held by
//!   the data plane (see the proxy's `hold`) and replicas are started at
//!   once: while none serves, as many as the held requests need at
//!   `target_in_flight` each (at least one).
//!
//! Replicas started here are never written to the state file: a restart
//! begins from nothing and adopts nothing.

pub mod provider;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use inferlb_autoscaler::engine::{Activity, AlarmOverrides, Engine, Metrics};
use inferlb_autoscaler::model::{Suspended, Target, TargetTracking};
use inferlb_core::{
    Command, PoolAutoscaling, PoolName, Provider, ReplicaId, ReplicaSpec, ReplicaState,
    ScalingError, ScalingSettings,
};
use serde::{Deserialize, Serialize};

use crate::writer::Control;
use provider::{Running, Slot};

/// How often the scaler samples the counters and decides.
pub const TICK: Duration = Duration::from_secs(1);
/// Between ticks: how often a held request (scale from zero) and a
/// starting replica's health are looked at, so neither waits for the tick.
const FAST_TICK: Duration = Duration::from_millis(100);
/// Activities kept for `GET /v1/pools/{name}/autoscaling`.
const KEPT_ACTIVITIES: usize = 50;
/// Restart backoff after a crash or a failed start: doubling up to the max.
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// A starting replica's health check must answer within this long.
const HEALTH_TIMEOUT: Duration = Duration::from_millis(500);
/// How often a systemd unit's state is asked for (a process each time).
const UNIT_CHECK: Duration = Duration::from_secs(5);
/// Upper bounds of the cold-start histogram, in seconds.
pub const COLD_START_BOUNDS: [f64; 10] =
    [0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0];

/// A `PATCH /v1/pools/{name}/autoscaling` body.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Change {
    pub min: Option<u32>,
    pub max: Option<u32>,
    /// Also accepted as `target`.
    #[serde(alias = "target")]
    pub target_in_flight: Option<f64>,
    /// Hold the pool as it is: no scaling in either direction.
    pub suspended: Option<bool>,
}

impl Change {
    /// `settings` with this change, checked by the config's rules for a
    /// pool declared as `config`; each problem names its field.
    pub fn applied_to(
        &self,
        settings: ScalingSettings,
        config: &PoolAutoscaling,
    ) -> Result<ScalingSettings, Vec<ScalingError>> {
        let next = ScalingSettings {
            min: self.min.unwrap_or(settings.min),
            max: self.max.unwrap_or(settings.max),
            target_in_flight: self.target_in_flight.unwrap_or(settings.target_in_flight),
            suspended: self.suspended.unwrap_or(settings.suspended),
        };
        next.check(config)?;
        Ok(next)
    }
}

/// A replica as the status shows it.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReplicaStatus {
    pub id: String,
    pub index: u32,
    pub address: String,
    /// `starting`, `in_service` or `draining`.
    pub phase: &'static str,
    /// RFC 3339.
    pub started_at: String,
}

/// One scaling activity or replica event, like DescribeScalingActivities.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ActivityStatus {
    /// RFC 3339.
    pub at: String,
    /// `out`, `in`, or `none` (a replica event or a settings change).
    pub direction: &'static str,
    pub from: u32,
    pub to: u32,
    /// `Successful` or `Failed`.
    pub status: &'static str,
    pub cause: String,
}

/// `GET /v1/pools/{name}/autoscaling`.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Status {
    pub pool: String,
    pub provider: &'static str,
    pub min: u32,
    pub max: u32,
    pub target_in_flight: f64,
    pub suspended: bool,
    /// The capacity the engine wants.
    pub desired: u32,
    /// Replicas running: starting, in service and draining.
    pub current: u32,
    pub in_service: u32,
    pub starting: u32,
    pub draining: u32,
    /// Requests held for a first replica.
    pub queued: u64,
    /// The longest any request was held, in milliseconds.
    pub longest_hold_ms: u64,
    /// Requests in flight to the pool's replicas.
    pub in_flight: u64,
    pub replicas: Vec<ReplicaStatus>,
    /// Newest first.
    pub activities: Vec<ActivityStatus>,
}

/// One autoscaling pool's state shared with the admin API and `/metrics`.
#[derive(Debug)]
pub struct Shared {
    /// The settings in force, as the control plane last committed them.
    settings: Mutex<ScalingSettings>,
    status: Mutex<Status>,
    pub scale_outs: AtomicU64,
    pub scale_ins: AtomicU64,
    pub failures: AtomicU64,
    cold_starts: Mutex<(f64, u64, [u64; COLD_START_BOUNDS.len()])>,
}

impl Shared {
    fn new(pool: &PoolName, config: &PoolAutoscaling, settings: ScalingSettings) -> Self {
        Self {
            settings: Mutex::new(settings),
            status: Mutex::new(Status {
                pool: pool.to_string(),
                provider: provider_name(&config.provider),
                min: settings.min,
                max: settings.max,
                target_in_flight: settings.target_in_flight,
                suspended: settings.suspended,
                desired: 0,
                current: 0,
                in_service: 0,
                starting: 0,
                draining: 0,
                queued: 0,
                longest_hold_ms: 0,
                in_flight: 0,
                replicas: Vec::new(),
                activities: Vec::new(),
            }),
            scale_outs: AtomicU64::new(0),
            scale_ins: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            cold_starts: Mutex::new((0.0, 0, [0; COLD_START_BOUNDS.len()])),
        }
    }

    /// The status as of the last tick.
    pub fn status(&self) -> Status {
        lock(&self.status).clone()
    }

    /// The settings in force.
    pub fn settings(&self) -> ScalingSettings {
        *lock(&self.settings)
    }

    /// Publishes the settings the control plane committed; the scaler
    /// applies them on its next tick.
    pub(crate) fn publish_settings(&self, next: ScalingSettings) {
        let mut settings = lock(&self.settings);
        *settings = next;
        let mut status = lock(&self.status);
        status.min = next.min;
        status.max = next.max;
        status.target_in_flight = next.target_in_flight;
        status.suspended = next.suspended;
    }

    /// Cold starts: (sum of seconds, count, count per bucket).
    pub fn cold_starts(&self) -> (f64, u64, [u64; COLD_START_BOUNDS.len()]) {
        *lock(&self.cold_starts)
    }

    fn record_cold_start(&self, took: Duration) {
        let mut h = lock(&self.cold_starts);
        h.0 += took.as_secs_f64();
        h.1 += 1;
        for (i, bound) in COLD_START_BOUNDS.iter().enumerate() {
            if took.as_secs_f64() <= *bound {
                h.2[i] += 1;
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn provider_name(provider: &Provider) -> &'static str {
    match provider {
        Provider::Exec { .. } => "exec",
        Provider::Systemd { .. } => "systemd",
    }
}

/// Every autoscaling pool's shared state, by pool.
#[derive(Debug, Default)]
pub struct Registry {
    pools: Mutex<BTreeMap<PoolName, Arc<Shared>>>,
}

impl Registry {
    /// The pool's shared state, when it autoscales here.
    pub fn get(&self, pool: &PoolName) -> Option<Arc<Shared>> {
        lock(&self.pools).get(pool).cloned()
    }

    /// Every autoscaling pool.
    pub fn all(&self) -> Vec<(PoolName, Arc<Shared>)> {
        lock(&self.pools)
            .iter()
            .map(|(k, v)| (k.clone(), Arc::clone(v)))
            .collect()
    }

    fn insert(&self, pool: PoolName, shared: Arc<Shared>) {
        lock(&self.pools).insert(pool, shared);
    }
}

/// Starts a scaler for every pool of `control` that declares autoscaling.
/// Each runs until `stop` turns true, then stops its replicas; await the
/// handles to know they are gone.
pub async fn spawn_all(
    control: &Arc<Control>,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let declared = control.declared();
    let mut handles = Vec::new();
    for spec in declared.pools {
        let Some(config) = spec.autoscaling.clone() else {
            continue;
        };
        // A runtime change kept in the state file wins over the config.
        let settings = control
            .scaling(&spec.name)
            .await
            .unwrap_or_else(|| ScalingSettings::declared(&config));
        let shared = Arc::new(Shared::new(&spec.name, &config, settings));
        control
            .scalers()
            .insert(spec.name.clone(), Arc::clone(&shared));
        tracing::info!(pool = %spec.name, provider = provider_name(&config.provider), min = config.min, max = config.max, target_in_flight = config.target_in_flight, "local autoscaling");
        let mut scaler = Scaler::new(Arc::clone(control), spec.name, (*config).clone(), shared);
        scaler.metrics_path = spec
            .engine_metrics
            .enabled
            .then(|| spec.engine_metrics.path.clone());
        handles.push(tokio::spawn(scaler.run(stop.clone())));
    }
    handles
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Starting,
    InService,
    Draining,
}

impl Phase {
    fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::InService => "in_service",
            Self::Draining => "draining",
        }
    }
}

#[derive(Debug)]
struct Instance {
    id: ReplicaId,
    index: u32,
    addr: SocketAddr,
    phase: Phase,
    running: Option<Running>,
    started: Instant,
    started_at: SystemTime,
}

/// One pool's control loop.
#[derive(Debug)]
struct Scaler {
    control: Arc<Control>,
    pool: PoolName,
    config: PoolAutoscaling,
    shared: Arc<Shared>,
    engine: Engine,
    applied: ScalingSettings,
    instances: Vec<Instance>,
    /// `min = 0` and scaled to zero: the next request wakes the pool.
    asleep: bool,
    last_busy: Instant,
    last_requests: u64,
    backoff: Duration,
    next_start: Instant,
    last_unit_check: Instant,
    activities: VecDeque<ActivityStatus>,
    /// The engine-metrics path a starting replica must also answer on,
    /// when the pool scrapes them.
    metrics_path: Option<String>,
    /// Health checks of starting replicas.
    http: crate::http::Client,
}

fn epoch_now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_seconds(at).to_string()
}

/// The engine's model of the pool: one target-tracking policy on in-flight
/// requests per replica, AAS's cooldown rules, min/max.
fn engine_for(config: &PoolAutoscaling, settings: &ScalingSettings) -> Engine {
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
    let start = if settings.min == 0 {
        0
    } else {
        settings.min as i32
    };
    let mut engine = Engine::new(&target, start, 0)
        .with_tick(TICK.as_secs() as i64)
        .with_alarms(AlarmOverrides {
            scale_out_datapoints: Some(config.scale_out_datapoints as usize),
            scale_out_period_s: Some(config.scale_out_period.as_secs() as i64),
            scale_in_datapoints: Some(config.scale_in_datapoints as usize),
            scale_in_period_s: Some(config.scale_in_period.as_secs() as i64),
            scale_in_ratio: None,
        });
    if settings.min == 0 {
        // Asleep until the first request.
        engine.set_bounds(epoch_now(), 0, settings.max as i32, String::new());
        engine.set_desired(epoch_now(), 0, String::new());
    }
    engine
}

impl Scaler {
    fn new(
        control: Arc<Control>,
        pool: PoolName,
        config: PoolAutoscaling,
        shared: Arc<Shared>,
    ) -> Self {
        let applied = shared.settings();
        let now = Instant::now();
        Self {
            engine: engine_for(&config, &applied),
            asleep: applied.min == 0,
            control,
            pool,
            config,
            shared,
            applied,
            instances: Vec::new(),
            last_busy: now,
            last_requests: 0,
            backoff: BACKOFF_MIN,
            next_start: now,
            last_unit_check: now,
            activities: VecDeque::new(),
            metrics_path: None,
            http: crate::http::Client::new("inferlb-health-check"),
        }
    }

    async fn run(mut self, mut stop: tokio::sync::watch::Receiver<bool>) {
        if let Provider::Systemd { unit, .. } = &self.config.provider {
            provider::stop_leftover_units(unit, self.config.max * 2).await;
        }
        let mut ticker = tokio::time::interval(TICK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut fast = tokio::time::interval(FAST_TICK);
        fast.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = stop.changed() => break,
                _ = ticker.tick() => self.tick().await,
                _ = fast.tick() => self.between_ticks().await,
            }
        }
        self.shutdown().await;
    }

    /// Stops every replica, all at once.
    async fn shutdown(&mut self) {
        let grace = self.config.stop_grace;
        let mut stops = tokio::task::JoinSet::new();
        for mut instance in self.instances.drain(..) {
            if let Some(running) = instance.running.take() {
                tracing::info!(pool = %self.pool, replica = %instance.id, "stopping replica: inferlb is shutting down");
                stops.spawn(provider::stop(running, grace));
            }
        }
        while stops.join_next().await.is_some() {}
    }

    fn record(&mut self, direction: &'static str, from: u32, to: u32, failed: bool, cause: String) {
        match direction {
            "out" => self.shared.scale_outs.fetch_add(1, Ordering::Relaxed),
            "in" => self.shared.scale_ins.fetch_add(1, Ordering::Relaxed),
            _ => 0,
        };
        if failed {
            self.shared.failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(pool = %self.pool, "{cause}");
        } else {
            tracing::info!(pool = %self.pool, from, to, "{cause}");
        }
        self.activities.push_front(ActivityStatus {
            at: rfc3339(SystemTime::now()),
            direction,
            from,
            to,
            status: if failed { "Failed" } else { "Successful" },
            cause,
        });
        self.activities.truncate(KEPT_ACTIVITIES);
    }

    fn record_engine(&mut self, activities: Vec<Activity>) {
        for a in activities {
            let direction = match a.to.cmp(&a.from) {
                std::cmp::Ordering::Greater => "out",
                std::cmp::Ordering::Less => "in",
                std::cmp::Ordering::Equal => "none",
            };
            self.record(direction, a.from as u32, a.to as u32, false, a.reason);
        }
    }

    async fn tick(&mut self) {
        let now = Instant::now();
        let epoch = epoch_now();
        let snapshot = self.control.snapshot();
        let view = snapshot.pools().iter().find(|p| p.name() == &self.pool);
        let queued = view.and_then(|v| v.queue()).map_or(0, |q| q.held());
        let longest_hold = view
            .and_then(|v| v.queue())
            .map_or(Duration::ZERO, |q| q.longest_wait());
        let members: HashMap<&ReplicaId, &inferlb_core::Replica> = view
            .map(|v| {
                v.members()
                    .iter()
                    .map(|&i| {
                        let r = &snapshot.replicas()[i as usize];
                        (&r.id, r)
                    })
                    .collect()
            })
            .unwrap_or_default();
        let in_flight: u64 = members.values().map(|r| r.stats.in_flight()).sum();
        let requests: u64 = members.values().map(|r| r.stats.requests()).sum();
        if in_flight > 0 || queued > 0 || requests != self.last_requests {
            self.last_busy = now;
            self.last_requests = requests;
        }

        self.apply_settings(epoch);
        self.reap(now, &members).await;
        self.check_starting(now).await;

        // Decide.
        let serving = self
            .instances
            .iter()
            .filter(|i| i.phase == Phase::InService)
            .count() as i32;
        self.engine.set_in_service(serving);
        let metric = if serving == 0 {
            f64::NAN
        } else {
            (in_flight + queued) as f64 / f64::from(serving)
        };
        let acts = self.engine.step(
            epoch,
            &Metrics {
                tracking: vec![metric],
                recipe: 0.0,
            },
        );
        self.record_engine(acts);
        if !self.applied.suspended {
            if self.asleep && (queued > 0 || in_flight > 0) {
                self.wake(queued);
                self.size_cold_start(queued);
            } else if serving == 0 && queued > 0 && !self.asleep {
                self.size_cold_start(queued);
            } else if self.applied.min == 0
                && !self.asleep
                && now.duration_since(self.last_busy) >= self.config.idle_to_zero
            {
                self.asleep = true;
                let max = self.applied.max as i32;
                self.engine.set_bounds(epoch, 0, max, String::new());
                let acts = self.engine.set_desired(
                    epoch,
                    0,
                    format!(
                        "no request for {}: scaling to zero",
                        humantime::format_duration(self.config.idle_to_zero)
                    ),
                );
                self.record_engine(acts);
            }
        }
        self.converge(now, &members).await;
        self.publish(queued, in_flight);
        lock(&self.shared.status).longest_hold_ms = longest_hold.as_millis() as u64;
    }

    /// Wakes a pool scaled to zero as soon as a request is held, and puts
    /// a started replica in service as soon as its health check passes.
    async fn between_ticks(&mut self) {
        let now = Instant::now();
        let cold = self.asleep || !self.instances.iter().any(|i| i.phase == Phase::InService);
        if cold && !self.applied.suspended {
            let snapshot = self.control.snapshot();
            let held = snapshot
                .pools()
                .iter()
                .find(|p| p.name() == &self.pool)
                .and_then(|v| v.queue())
                .map_or(0, |q| q.held());
            if held > 0 {
                if self.asleep {
                    self.wake(held);
                }
                self.size_cold_start(held);
                let members = HashMap::new();
                self.converge(now, &members).await;
            }
        }
        if self.instances.iter().any(|i| i.phase == Phase::Starting) {
            self.check_starting(now).await;
        }
    }

    /// While nothing serves yet, the held requests are the only measure of
    /// load (a per-replica metric has no value): enough replicas for them
    /// at `target_in_flight` each start at once, rather than one, then the
    /// rest after the target-tracking alarm has seen the first serve.
    fn size_cold_start(&mut self, held: u64) {
        let target = self.applied.target_in_flight.max(f64::MIN_POSITIVE);
        let want = ((held as f64 / target).ceil() as i32).clamp(1, self.applied.max as i32);
        if want > self.engine.desired() {
            let acts = self.engine.set_desired(
                epoch_now(),
                want,
                format!("nothing in service yet: {held} requests held at {target} per replica"),
            );
            self.record_engine(acts);
        }
    }

    /// Scale from zero: the first replica, at once.
    fn wake(&mut self, held: u64) {
        self.asleep = false;
        self.last_busy = Instant::now();
        let acts = self.engine.set_bounds(
            epoch_now(),
            self.applied.min.max(1) as i32,
            self.applied.max as i32,
            format!("scale from zero: {held} requests held for a first replica"),
        );
        self.record_engine(acts);
    }

    /// Applies a `PATCH` made since the last tick.
    fn apply_settings(&mut self, epoch: i64) {
        let wanted = self.shared.settings();
        if wanted == self.applied {
            return;
        }
        let floor = if self.asleep { 0 } else { wanted.min.max(1) };
        let cause = format!(
            "settings changed: min {} max {} target_in_flight {} suspended {}",
            wanted.min, wanted.max, wanted.target_in_flight, wanted.suspended
        );
        let desired = self.engine.desired() as u32;
        self.record("none", desired, desired, false, cause.clone());
        let acts = self
            .engine
            .set_bounds(epoch, floor as i32, wanted.max as i32, cause);
        self.record_engine(acts);
        if wanted.min > 0 && self.asleep {
            self.asleep = false;
            let acts = self.engine.set_bounds(
                epoch,
                wanted.min as i32,
                wanted.max as i32,
                format!("min raised to {}", wanted.min),
            );
            self.record_engine(acts);
        }
        self.engine.set_target_value(wanted.target_in_flight);
        self.engine.set_suspended(Suspended {
            dynamic_scaling_in: wanted.suspended,
            dynamic_scaling_out: wanted.suspended,
            scheduled_scaling: wanted.suspended,
        });
        self.applied = wanted;
    }

    /// Replicas that exited, and those gone from the pool (drained and
    /// removed, or removed by an operator).
    async fn reap(&mut self, now: Instant, members: &HashMap<&ReplicaId, &inferlb_core::Replica>) {
        let check_units = now.duration_since(self.last_unit_check) >= UNIT_CHECK;
        if check_units {
            self.last_unit_check = now;
        }
        let mut i = 0;
        while i < self.instances.len() {
            let instance = &mut self.instances[i];
            let exited = match instance.running.as_mut() {
                Some(running @ Running::Child { .. }) => provider::exited(running).await,
                Some(running @ Running::Unit { .. }) if check_units => {
                    provider::exited(running).await
                }
                _ => None,
            };
            let in_pool = members.contains_key(&instance.id);
            if let Some(reason) = exited {
                let instance = self.instances.remove(i);
                if in_pool {
                    let _ = self
                        .control
                        .apply_one(Command::Remove {
                            id: instance.id.clone(),
                        })
                        .await;
                }
                let expected = instance.phase == Phase::Draining;
                if !expected {
                    self.next_start = now + self.backoff;
                    let cause = format!(
                        "replica {} {reason}; replacing it in {}",
                        instance.id,
                        humantime::format_duration(self.backoff)
                    );
                    self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
                    let live = self.live() as u32;
                    self.record("none", live + 1, live, true, cause);
                }
                continue;
            }
            if instance.phase != Phase::Starting && !in_pool {
                let instance = self.instances.remove(i);
                let why = if instance.phase == Phase::Draining {
                    "drained"
                } else {
                    "removed from the pool"
                };
                tracing::info!(pool = %self.pool, replica = %instance.id, "replica {why}: stopping it");
                if let Some(running) = instance.running {
                    tokio::spawn(provider::stop(running, self.config.stop_grace));
                }
                continue;
            }
            i += 1;
        }
    }

    /// Starting replicas whose health check passes join the pool; those
    /// past `start_timeout_s` are stopped.
    async fn check_starting(&mut self, now: Instant) {
        let path = self.config.health_path.clone();
        // With engine metrics scraped, the metrics must answer too: a
        // replica whose load cannot be read would be routed blind.
        let metrics_path = self.metrics_path.clone();
        // Every starting replica checked at once.
        let mut checks = tokio::task::JoinSet::new();
        let client = self.http.clone();
        for instance in self.instances.iter().filter(|i| i.phase == Phase::Starting) {
            let (id, addr, path) = (instance.id.clone(), instance.addr, path.clone());
            let metrics_path = metrics_path.clone();
            let client = client.clone();
            checks.spawn(async move {
                let mut ready = crate::health::check(&client, addr, &path, HEALTH_TIMEOUT).await;
                if let (true, Some(metrics)) = (ready, metrics_path) {
                    ready = crate::health::check(&client, addr, &metrics, HEALTH_TIMEOUT).await;
                }
                (id, ready)
            });
        }
        let mut passed = std::collections::HashSet::new();
        while let Some(Ok((id, ok))) = checks.join_next().await {
            if ok {
                passed.insert(id);
            }
        }
        let mut i = 0;
        while i < self.instances.len() {
            let instance = &self.instances[i];
            if instance.phase != Phase::Starting {
                i += 1;
                continue;
            }
            if passed.contains(&instance.id) {
                let spec = ReplicaSpec {
                    id: instance.id.clone(),
                    address: instance.addr.to_string(),
                    addr: instance.addr,
                    weight: 1,
                    pool: self.pool.clone(),
                };
                match self.control.apply_one(Command::Admit(spec)).await {
                    Ok(_) => {
                        let took = instance.started.elapsed();
                        self.shared.record_cold_start(took);
                        self.backoff = BACKOFF_MIN;
                        self.instances[i].phase = Phase::InService;
                        let live = self.live() as u32;
                        let cause = format!(
                            "replica {} at {} in service after {:.1} s",
                            self.instances[i].id,
                            self.instances[i].addr,
                            took.as_secs_f64()
                        );
                        self.record("none", live, live, false, cause);
                    }
                    Err(e) => {
                        tracing::error!(pool = %self.pool, error = %e, "cannot add the started replica");
                    }
                }
                i += 1;
                continue;
            }
            if now.duration_since(instance.started) >= self.config.start_timeout {
                let instance = self.instances.remove(i);
                self.next_start = now + self.backoff;
                let cause = format!(
                    "replica {} did not pass its health check ({}) within {}: stopped; retrying in {}",
                    instance.id,
                    path,
                    humantime::format_duration(self.config.start_timeout),
                    humantime::format_duration(self.backoff)
                );
                self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
                if let Some(running) = instance.running {
                    tokio::spawn(provider::stop(running, self.config.stop_grace));
                }
                let live = self.live() as u32;
                self.record("none", live + 1, live, true, cause);
                continue;
            }
            i += 1;
        }
    }

    /// Replicas starting or in service.
    fn live(&self) -> usize {
        self.instances
            .iter()
            .filter(|i| i.phase != Phase::Draining)
            .count()
    }

    /// Starts, un-drains, stops or drains replicas until as many are live
    /// as the engine wants.
    async fn converge(
        &mut self,
        now: Instant,
        members: &HashMap<&ReplicaId, &inferlb_core::Replica>,
    ) {
        let desired = self.engine.desired().max(0) as usize;
        let mut live = self.live();
        // A scale-out takes draining replicas back first.
        while live < desired {
            let Some(i) = self
                .instances
                .iter()
                .rposition(|i| i.phase == Phase::Draining)
            else {
                break;
            };
            let id = self.instances[i].id.clone();
            match self
                .control
                .apply_one(Command::SetState {
                    id: id.clone(),
                    state: ReplicaState::Active,
                })
                .await
            {
                Ok(_) => {
                    self.instances[i].phase = Phase::InService;
                    live += 1;
                    let n = live as u32;
                    self.record(
                        "none",
                        n,
                        n,
                        false,
                        format!("replica {id} taken back from draining for the scale-out"),
                    );
                }
                Err(_) => break,
            }
        }
        while live < desired && now >= self.next_start {
            match self.start_one().await {
                Ok(()) => live += 1,
                Err(cause) => {
                    self.next_start = now + self.backoff;
                    self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
                    let live = live as u32;
                    self.record("none", live, live, true, cause);
                    break;
                }
            }
        }
        // A scale-in stops replicas still starting first, then drains the
        // one with the fewest requests in flight.
        while live > desired {
            if let Some(i) = self
                .instances
                .iter()
                .rposition(|i| i.phase == Phase::Starting)
            {
                let instance = self.instances.remove(i);
                tracing::info!(pool = %self.pool, replica = %instance.id, "stopping a replica still starting: scale-in");
                if let Some(running) = instance.running {
                    tokio::spawn(provider::stop(running, self.config.stop_grace));
                }
                live -= 1;
                continue;
            }
            let Some(i) = self
                .instances
                .iter()
                .enumerate()
                .filter(|(_, i)| i.phase == Phase::InService)
                .min_by_key(|(_, i)| members.get(&i.id).map_or(0, |r| r.stats.in_flight()))
                .map(|(at, _)| at)
            else {
                break;
            };
            let id = self.instances[i].id.clone();
            let deadline = SystemTime::now() + self.config.drain_timeout;
            match self
                .control
                .apply_one(Command::Drain {
                    id: id.clone(),
                    deadline,
                })
                .await
            {
                Ok(_) => {
                    self.instances[i].phase = Phase::Draining;
                    let n = live as u32;
                    self.record(
                        "none",
                        n,
                        n,
                        false,
                        format!(
                            "replica {id} draining for the scale-in (fewest in flight), then stopped"
                        ),
                    );
                }
                Err(e) => {
                    tracing::warn!(pool = %self.pool, replica = %id, error = %e, "cannot drain replica");
                }
            }
            live -= 1;
        }
    }

    /// Starts one replica in the lowest free index and port.
    async fn start_one(&mut self) -> Result<(), String> {
        let index = (0..)
            .find(|n| !self.instances.iter().any(|i| i.index == *n))
            .unwrap_or(0);
        let host = self.config.host;
        let port = match &self.config.provider {
            Provider::Systemd { port_base, .. } => port_base
                .checked_add(index as u16)
                .ok_or_else(|| format!("port {port_base} + {index} is out of range"))?,
            Provider::Exec { .. } => {
                let (lo, hi) = self.config.ports;
                (lo..=hi)
                    .find(|p| {
                        !self.instances.iter().any(|i| i.addr.port() == *p)
                            && std::net::TcpListener::bind((host, *p)).is_ok()
                    })
                    .ok_or_else(|| format!("no free port in {lo}-{hi} for a new replica"))?
            }
        };
        let id = ReplicaId::new(&format!("{}-{index}", self.pool.as_str().replace(':', "-")))
            .map_err(|e| e.to_string())?;
        let slot = Slot {
            pool: self.pool.as_str(),
            index,
            port,
            host,
        };
        let running = provider::start(&self.config.provider, &slot, &id)
            .await
            .map_err(|e| format!("cannot start replica {id}: {e}"))?;
        tracing::info!(pool = %self.pool, replica = %id, port, index, "starting replica");
        self.instances.push(Instance {
            id,
            index,
            addr: SocketAddr::new(host, port),
            phase: Phase::Starting,
            running: Some(running),
            started: Instant::now(),
            started_at: SystemTime::now(),
        });
        Ok(())
    }

    fn publish(&self, queued: u64, in_flight: u64) {
        let count =
            |phase: Phase| self.instances.iter().filter(|i| i.phase == phase).count() as u32;
        let mut status = lock(&self.shared.status);
        status.desired = self.engine.desired().max(0) as u32;
        status.current = self.instances.len() as u32;
        status.in_service = count(Phase::InService);
        status.starting = count(Phase::Starting);
        status.draining = count(Phase::Draining);
        status.queued = queued;
        status.in_flight = in_flight;
        status.replicas = self
            .instances
            .iter()
            .map(|i| ReplicaStatus {
                id: i.id.to_string(),
                index: i.index,
                address: i.addr.to_string(),
                phase: i.phase.as_str(),
                started_at: rfc3339(i.started_at),
            })
            .collect();
        status.activities = self.activities.iter().cloned().collect();
    }
}
