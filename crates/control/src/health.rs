//! Active health checks from the control plane: an HTTP GET per replica on
//! an interval (for a gRPC pool, `grpc.health.v1.Health/Check`, see
//! [`crate::grpc_health`]); each replica's results go through a core
//! `Tracker`, and a verdict it flips becomes a `SetHealth` command.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use inferlb_core::config::HealthCheck;
use inferlb_core::{Command, Health, Thresholds, Tracker};

use crate::http::Client;
use crate::writer::Control;

/// Largest health-check body read (to keep the connection for the next
/// check); a longer one still counts by its status.
const MAX_BODY: usize = 64 * 1024;

/// One check: a GET of `path` answered 200–399 within `timeout`.
pub async fn check(client: &Client, addr: SocketAddr, path: &str, timeout: Duration) -> bool {
    client
        .get(addr, path, timeout, MAX_BODY, |_| true)
        .await
        .is_some_and(|answer| (200..400).contains(&answer.status))
}

/// Checks every replica of the current snapshot each interval, forever:
/// those of pools whose checks are on (`[health] enabled`, or the pool's
/// `[pools.health] enabled`), at the pool's path or `[health] path`.
pub async fn run(control: Arc<Control>, config: HealthCheck) {
    let thresholds = Thresholds {
        healthy: config.healthy_threshold,
        unhealthy: config.unhealthy_threshold,
    };
    let client = Client::new("inferlb-health-check");
    let mut grpc = crate::grpc_health::Checker::default();
    let mut trackers: HashMap<u64, Tracker> = HashMap::new();
    let mut ticker = tokio::time::interval(config.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let snapshot = control.snapshot();
        let mut checks = tokio::task::JoinSet::new();
        for pool in snapshot.pools() {
            // A pool's `[pools.health]` overrides the top-level settings.
            let overrides = &pool.spec().health;
            if !overrides.enabled.unwrap_or(config.enabled) {
                continue;
            }
            let path = overrides
                .path
                .clone()
                .unwrap_or_else(|| config.path.clone());
            let is_grpc = pool.spec().protocol == inferlb_core::PoolProtocol::Grpc;
            for &i in pool.members() {
                let r = &snapshot.replicas()[i as usize];
                let (uid, addr, path, timeout) = (r.uid, r.addr, path.clone(), config.timeout);
                if is_grpc {
                    // gRPC replicas answer gRPC's health checking protocol.
                    let Some(channel) = grpc.channel(addr, timeout) else {
                        continue;
                    };
                    checks.spawn(async move {
                        (uid, crate::grpc_health::check(channel, timeout).await)
                    });
                    continue;
                }
                let client = client.clone();
                checks.spawn(async move { (uid, check(&client, addr, &path, timeout).await) });
            }
        }
        grpc.retain(|addr| snapshot.replicas().iter().any(|r| r.addr == addr));
        let mut verdicts = HashMap::new();
        while let Some(Ok((uid, passed))) = checks.join_next().await {
            verdicts.insert(uid, passed);
        }
        trackers.retain(|uid, _| verdicts.contains_key(uid));
        let mut commands = Vec::new();
        for r in snapshot.replicas() {
            let Some(&passed) = verdicts.get(&r.uid) else {
                continue;
            };
            let tracker = trackers.entry(r.uid).or_default();
            let Some(health) = tracker.record(passed, r.health, thresholds) else {
                continue;
            };
            match health {
                Health::Unhealthy => {
                    tracing::warn!(id = %r.id, pool = %r.pool, address = %r.address, "replica failed its health checks: unhealthy");
                }
                Health::Healthy => {
                    tracing::info!(id = %r.id, address = %r.address, "replica passes its health checks again: healthy");
                }
            }
            commands.push(Command::SetHealth {
                id: r.id.clone(),
                health,
            });
        }
        if !commands.is_empty() {
            // A replica removed meanwhile makes its command fail; apply the
            // others one by one.
            for command in commands {
                if let Err(e) = control.apply_one(command).await {
                    tracing::debug!(error = %e, "health verdict not applied");
                }
            }
            let now = control.snapshot();
            if now.failing_open() {
                tracing::warn!("every replica is unhealthy: failing open, routing to all of them");
            }
        }
    }
}
