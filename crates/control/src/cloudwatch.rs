//! Samples the proxy's shared counters every second, off the data plane,
//! and publishes them per pool each interval (`[autoscaling.publish]`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::writer::Control;
use inferlb_autoscaler::publish::{PoolSample, Publisher};
use inferlb_core::config::Publish;
use inferlb_core::StatusClass;

/// The interval's running figures of one pool.
#[derive(Debug, Default)]
struct Acc {
    /// Sums over the interval's samples of the pool's requests in flight,
    /// and of that divided by its routable replicas.
    total_sum: f64,
    ratio_sum: f64,
    samples: u32,
    max: u64,
}

/// Runs until the process ends. In a fleet, one instance publishes at a
/// time (etcd's election), with the fleet's figures: every instance's
/// requests in flight, requests and 5xx, from their reports.
pub async fn run(control: Arc<Control>, config: Publish) {
    let publisher = Publisher::connect(
        config.region.clone(),
        config.namespace.clone(),
        config.interval <= Duration::from_secs(10),
        config.dimensions.clone(),
    )
    .await;
    let Some(fleet) = control.fleet().cloned() else {
        return publish(&control, &config, &publisher).await;
    };
    loop {
        let leadership = match crate::cluster::lead(fleet.config(), "cloudwatch-publisher").await {
            Ok(leadership) => leadership,
            Err(error) => {
                tracing::debug!(%error, "cannot campaign to publish to CloudWatch; trying again");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        tracing::info!("this instance publishes the fleet's figures to CloudWatch");
        let mut lost = leadership.lost.clone();
        tokio::select! {
            _ = lost.changed() => {
                tracing::warn!("no longer the fleet's CloudWatch publisher; campaigning again");
            }
            _ = publish(&control, &config, &publisher) => {}
        }
    }
}

/// The other instances' figures, from their last reports.
#[derive(Debug, Default)]
struct Others {
    /// Requests in flight per replica id.
    in_flight: HashMap<String, u64>,
    /// Per instance and pool: requests and 5xx since it started.
    counters: HashMap<(String, String), (u64, u64)>,
}

fn others(control: &Control) -> Others {
    let mut others = Others::default();
    let Some(fleet) = control.fleet() else {
        return others;
    };
    let me = &fleet.config().instance;
    for report in fleet.reports().into_iter().filter(|r| &r.instance != me) {
        for (id, n) in &report.in_flight {
            *others.in_flight.entry(id.to_string()).or_default() += n;
        }
        for (pool, p) in &report.pools {
            others.counters.insert(
                (report.instance.clone(), pool.to_string()),
                (p.requests, p.errors_5xx),
            );
        }
    }
    others
}

async fn publish(control: &Control, config: &Publish, publisher: &Publisher) {
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut acc: HashMap<String, Acc> = HashMap::new();
    // Each replica's request and 5xx counters at the last publication.
    let mut last: HashMap<u64, (u64, u64)> = HashMap::new();
    // The other instances' counters at the last publication; at the first
    // one, what they counted before this instance published is left out
    // (it was another publisher's to count), as this instance's own is
    // counted from its start.
    let mut last_elsewhere: HashMap<(String, String), (u64, u64)> = HashMap::new();
    let mut fleet_started = false;
    let mut due = Instant::now() + config.interval;
    loop {
        ticker.tick().await;
        let snapshot = control.snapshot();
        let elsewhere = others(control);
        for pool in snapshot.pools() {
            let routable: Vec<u64> = pool
                .members()
                .iter()
                .map(|&i| &snapshot.replicas()[i as usize])
                .filter(|r| r.is_routable())
                .map(|r| {
                    r.stats.in_flight()
                        + elsewhere.in_flight.get(r.id.as_str()).copied().unwrap_or(0)
                })
                .collect();
            let entry = acc.entry(pool.name().to_string()).or_default();
            let total = routable.iter().sum::<u64>() as f64;
            entry.total_sum += total;
            if !routable.is_empty() {
                entry.ratio_sum += total / routable.len() as f64;
            }
            entry.samples += 1;
            entry.max = entry.max.max(routable.iter().copied().max().unwrap_or(0));
        }
        if Instant::now() < due {
            continue;
        }
        due += config.interval;
        let mut samples = Vec::new();
        let mut seen = HashMap::new();
        for pool in snapshot.pools() {
            let (mut requests, mut errors) = (0u64, 0u64);
            for &i in pool.members() {
                let r = &snapshot.replicas()[i as usize];
                let now = (
                    r.stats.requests(),
                    r.stats.responses(StatusClass::ServerError),
                );
                let before = last.get(&r.uid).copied().unwrap_or((0, 0));
                requests += now.0.saturating_sub(before.0);
                errors += now.1.saturating_sub(before.1);
                seen.insert(r.uid, now);
            }
            // The other instances' requests and 5xx since the last
            // publication (a counter that went back restarted from 0).
            for ((instance, name), &now) in &elsewhere.counters {
                if name != pool.name().as_str() {
                    continue;
                }
                let before = last_elsewhere
                    .get(&(instance.clone(), name.clone()))
                    .copied();
                let (r0, e0) = before
                    .filter(|b| b.0 <= now.0 && b.1 <= now.1)
                    .unwrap_or((0, 0));
                if before.is_some() || fleet_started {
                    requests += now.0 - r0;
                    errors += now.1 - e0;
                }
            }
            let a = acc.remove(pool.name().as_str()).unwrap_or_default();
            samples.push(PoolSample {
                pool: pool.name().to_string(),
                in_flight: a.total_sum / f64::from(a.samples.max(1)),
                in_flight_per_replica: a.ratio_sum / f64::from(a.samples.max(1)),
                max_in_flight_per_replica: a.max as f64,
                requests: requests as f64,
                errors_5xx: errors as f64,
                // Requests held for an autoscaling pool's first replica.
                queued: pool.queue().map_or(0.0, |q| q.held() as f64),
            });
        }
        last = seen;
        last_elsewhere = elsewhere.counters;
        fleet_started = true;
        acc.clear();
        let publisher = publisher.clone();
        // Off this loop: a slow call delays nothing, and a failure is only
        // logged; the next interval publishes again.
        tokio::spawn(async move {
            match tokio::time::timeout(
                Duration::from_secs(30),
                publisher.put(SystemTime::now(), &samples),
            )
            .await
            {
                Ok(Ok(())) => tracing::debug!(pools = samples.len(), "published to CloudWatch"),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "publishing to CloudWatch failed; next interval tries again")
                }
                Err(_) => {
                    tracing::warn!("publishing to CloudWatch timed out; next interval tries again")
                }
            }
        });
    }
}
