//! Local autoscaling's executor: a pool with `[pools.autoscaling]` starts
//! and stops its own replicas (child processes, or systemd units). What to do
//! is decided by `inferlb_autoscaler::local::LocalScaler` (pure, on the same
//! engine as `inferlb autoscale simulate`); this module observes the pool,
//! asks it once a second (and every 100 ms while nothing serves or a replica
//! starts), and carries out its actions: processes through the provider,
//! health checks, and commands through the one writer.
//!
//! ```text
//!  snapshot, queue, processes, health checks ─▶ Observation ─▶ LocalScaler::tick ─▶ actions
//!        ▲                                                                             │
//!        └──────── Start (provider) · Admit / Drain / Undrain / Remove (Control) ◀─────┘
//! ```
//!
//! Replicas started here join the pool with `Command::Admit`: they live in
//! the same state as every other replica, but are never written to the state
//! file, so a restart begins from nothing and adopts nothing.

mod executor;
pub mod provider;

use std::sync::Arc;
use std::time::Duration;

use inferlb_core::ScalingSettings;

pub use crate::autoscaling::{
    ActivityStatus, Change, Registry, ScaledReplica, Shared, Status, COLD_START_BOUNDS,
};
use crate::writer::Control;
use executor::Scaler;

/// How often the scaler samples the counters and decides.
pub const TICK: Duration = inferlb_autoscaler::local::TICK;
/// Between ticks: how often a held request (scale from zero) and a
/// starting replica's health are looked at, so neither waits for the tick.
const FAST_TICK: Duration = Duration::from_millis(100);
/// Activities kept for `GET /v1/pools/{name}/autoscaling`.
const KEPT_ACTIVITIES: usize = 50;
/// A starting replica's health check must answer within this long.
const HEALTH_TIMEOUT: Duration = Duration::from_millis(500);
/// How often a systemd unit's state is asked for (a process each time).
const UNIT_CHECK: Duration = Duration::from_secs(5);
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
        tracing::info!(pool = %spec.name, provider = crate::autoscaling::provider_name(&config.provider), min = config.min, max = config.max, target_in_flight = config.target_in_flight, "local autoscaling");
        let mut scaler = Scaler::new(Arc::clone(control), spec.name, (*config).clone(), shared);
        scaler.metrics_path = spec
            .engine_metrics
            .enabled
            .then(|| spec.engine_metrics.path.clone());
        scaler.grpc = spec.protocol == inferlb_core::PoolProtocol::Grpc;
        handles.push(tokio::spawn(scaler.run(stop.clone())));
    }
    handles
}
