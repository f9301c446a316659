//! Each autoscaling pool's shared state: the settings in force (published
//! by the writer at each commit, as the snapshot is), the status and
//! activities its scaler reports, and the counters `/metrics` renders. The
//! admin API reads it; only the writer and the pool's scaler write it.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use inferlb_core::{PoolAutoscaling, PoolName, Provider, ScalingError, ScalingSettings};
use serde::{Deserialize, Serialize};

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
pub struct ScaledReplica {
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
    pub replicas: Vec<ScaledReplica>,
    /// Newest first.
    pub activities: Vec<ActivityStatus>,
}

/// One autoscaling pool's state shared with the admin API and `/metrics`.
#[derive(Debug)]
pub struct Shared {
    /// The settings in force, as the control plane last committed them.
    settings: Mutex<ScalingSettings>,
    pub(crate) status: Mutex<Status>,
    pub scale_outs: AtomicU64,
    pub scale_ins: AtomicU64,
    pub failures: AtomicU64,
    cold_starts: Mutex<(f64, u64, [u64; COLD_START_BOUNDS.len()])>,
}

impl Shared {
    pub(crate) fn new(
        pool: &PoolName,
        config: &PoolAutoscaling,
        settings: ScalingSettings,
    ) -> Self {
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

    pub(crate) fn record_cold_start(&self, took: Duration) {
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

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn provider_name(provider: &Provider) -> &'static str {
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

    pub(crate) fn insert(&self, pool: PoolName, shared: Arc<Shared>) {
        lock(&self.pools).insert(pool, shared);
    }
}
