//! Local autoscaling's settings (`[pools.autoscaling]`) and the one piece of
//! it the data plane shares: a pool's queue of held requests.
//!
//! A pool with these settings starts and stops its own replicas (the
//! control plane's scaler does that); while it has no routable replica, a
//! request is held in the queue until one is, rather than answered 503.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::stats::Histogram;

/// How a pool's replicas are started and stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Provider {
    /// A child process of inferlb, per replica. `{port}`, `{index}` and
    /// `{pool}` are substituted in each argument and environment value.
    Exec {
        command: Vec<String>,
        env: Vec<(String, String)>,
    },
    /// A systemd template unit per replica (`model@{index}.service`),
    /// started and stopped with `systemctl`; the replica listens on
    /// `port_base + index`.
    Systemd { unit: String, port_base: u16 },
}

/// `[pools.autoscaling]`: target tracking on in-flight requests per replica,
/// scale to zero when idle, and how replicas start and stop.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolAutoscaling {
    /// Fewest replicas; 0 scales to zero after `idle_to_zero`.
    pub min: u32,
    /// Most replicas.
    pub max: u32,
    /// In-flight requests per replica to keep (streams count until their
    /// last byte; held requests count too).
    pub target_in_flight: f64,
    pub scale_out_cooldown: Duration,
    pub scale_in_cooldown: Duration,
    /// With `min = 0`: no request for this long scales the pool to zero.
    pub idle_to_zero: Duration,
    /// The scale-out alarm: datapoints above target, and their period.
    pub scale_out_datapoints: u32,
    pub scale_out_period: Duration,
    /// The scale-in alarm: datapoints below 90 % of the target, and their
    /// period.
    pub scale_in_datapoints: u32,
    pub scale_in_period: Duration,
    pub provider: Provider,
    /// Ports handed to `{port}` (exec), first to last.
    pub ports: (u16, u16),
    /// The address replicas listen on (`{host}`); default 127.0.0.1.
    pub host: std::net::IpAddr,
    /// A starting replica's health check must pass within this long, or it
    /// is stopped and the failure logged.
    pub start_timeout: Duration,
    /// SIGTERM, then SIGKILL after this long.
    pub stop_grace: Duration,
    /// How long a scale-in drain may take (ALB's deregistration delay).
    pub drain_timeout: Duration,
    /// The path a starting replica must answer 200–399 on.
    pub health_path: String,
    /// Scale from zero: how long a request may be held for a first replica.
    pub queue_timeout: Duration,
    /// Held requests beyond this many get 503 at once.
    pub max_queued: u32,
    /// A hard limit on requests in flight per routable replica, distinct
    /// from the scaling target: when every replica is at it, a request is
    /// held (as during a scale from zero) until one has room or a new
    /// replica serves. `None`: only a pool with no routable replica holds.
    pub max_in_flight_per_replica: Option<u32>,
}

impl PoolAutoscaling {
    /// Settings with every default, for `provider`.
    pub fn new(provider: Provider) -> Self {
        Self {
            min: 0,
            max: 1,
            target_in_flight: 4.0,
            scale_out_cooldown: Duration::from_secs(30),
            scale_in_cooldown: Duration::from_secs(300),
            idle_to_zero: Duration::from_secs(600),
            scale_out_datapoints: 3,
            scale_out_period: Duration::from_secs(10),
            scale_in_datapoints: 15,
            scale_in_period: Duration::from_secs(60),
            provider,
            ports: (20000, 20099),
            host: std::net::IpAddr::from([127, 0, 0, 1]),
            start_timeout: Duration::from_secs(600),
            stop_grace: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(300),
            health_path: "/health".into(),
            queue_timeout: Duration::from_secs(60),
            max_queued: 1000,
            max_in_flight_per_replica: None,
        }
    }
}

/// Most replicas one pool may scale to.
pub const MAX_REPLICAS: u32 = 1000;
/// The largest `target_in_flight`: more than one replica could ever be
/// asked to hold, so a larger target never scales out and is a typo rather
/// than a setting.
pub const MAX_TARGET_IN_FLIGHT: f64 = 100_000.0;

/// What an operator may change in a pool's autoscaling at runtime (`PATCH
/// /v1/pools/{name}/autoscaling`); the rest stays as the config declares.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ScalingSettings {
    pub min: u32,
    pub max: u32,
    pub target_in_flight: f64,
    /// Hold the pool as it is: no scaling in either direction.
    pub suspended: bool,
}

/// A runtime autoscaling setting refused, with the field it is about.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct ScalingError {
    pub field: &'static str,
    /// What is wrong, naming the field.
    pub reason: String,
}

impl ScalingSettings {
    /// The settings the config declares.
    pub fn declared(config: &PoolAutoscaling) -> Self {
        Self {
            min: config.min,
            max: config.max,
            target_in_flight: config.target_in_flight,
            suspended: false,
        }
    }

    /// Checks these settings by the rules the config file's are checked
    /// by, for a pool declared as `config`: every problem, each with its
    /// field.
    pub fn check(&self, config: &PoolAutoscaling) -> Result<(), Vec<ScalingError>> {
        let mut problems = Vec::new();
        let mut refuse = |field, reason: String| problems.push(ScalingError { field, reason });
        if !(1..=MAX_REPLICAS).contains(&self.max) {
            refuse(
                "max",
                format!("max must be between 1 and {MAX_REPLICAS}, got {}", self.max),
            );
        }
        if self.min > self.max {
            refuse(
                "min",
                format!("min ({}) is above max ({})", self.min, self.max),
            );
        }
        if !(self.target_in_flight > 0.0 && self.target_in_flight <= MAX_TARGET_IN_FLIGHT) {
            refuse(
                "target_in_flight",
                format!(
                    "target_in_flight must be above 0 and at most {MAX_TARGET_IN_FLIGHT}, got {}",
                    self.target_in_flight
                ),
            );
        }
        if let Some(ports) = config.port_count() {
            if ports < self.max && self.max <= MAX_REPLICAS {
                refuse(
                    "max",
                    format!(
                        "max ({}) is more replicas than the pool has ports for ({ports}: {})",
                        self.max,
                        config.port_text()
                    ),
                );
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}

impl PoolAutoscaling {
    /// How many replicas the provider has ports for: the `ports` range of
    /// `exec`, what is left above `port_base` for `systemd`.
    pub fn port_count(&self) -> Option<u32> {
        match &self.provider {
            Provider::Exec { .. } => Some(u32::from(self.ports.1 - self.ports.0) + 1),
            Provider::Systemd { port_base, .. } => Some(u32::from(u16::MAX - port_base) + 1),
        }
    }

    fn port_text(&self) -> String {
        match &self.provider {
            Provider::Exec { .. } => format!("ports {}-{}", self.ports.0, self.ports.1),
            Provider::Systemd { port_base, .. } => format!("port_base {port_base} up to 65535"),
        }
    }
}

/// A pool's held requests: shared by every snapshot and worker, read by the
/// scaler (held requests are load) and the metrics.
#[derive(Debug, Default)]
pub struct PoolQueue {
    held: AtomicU64,
    /// Requests ever held, and those that gave up (timeout, full, client
    /// gone).
    total: AtomicU64,
    dropped: AtomicU64,
    /// How long held requests waited, and the longest wait.
    waited: Histogram,
    longest_us: AtomicU64,
}

/// Why a request could not be held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueFull;

impl PoolQueue {
    /// Holds one request, unless `max` are held already. The returned
    /// guard releases its place when dropped.
    pub fn enter(&self, max: u32) -> Result<Held<'_>, QueueFull> {
        let mut now = self.held.load(Ordering::Relaxed);
        loop {
            if now >= u64::from(max) {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                return Err(QueueFull);
            }
            match self.held.compare_exchange_weak(
                now,
                now + 1,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(actual) => now = actual,
            }
        }
        self.total.fetch_add(1, Ordering::Relaxed);
        Ok(Held {
            queue: self,
            served: false,
            since: Instant::now(),
        })
    }

    /// Requests held now.
    pub fn held(&self) -> u64 {
        self.held.load(Ordering::Relaxed)
    }

    /// Requests ever held.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Requests that were refused or left the queue without a replica.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// How long held requests waited, served or not.
    pub fn waited(&self) -> &Histogram {
        &self.waited
    }

    /// The longest any request was held.
    pub fn longest_wait(&self) -> Duration {
        Duration::from_micros(self.longest_us.load(Ordering::Relaxed))
    }
}

/// One held request's place in its pool's queue.
#[derive(Debug)]
pub struct Held<'a> {
    queue: &'a PoolQueue,
    served: bool,
    since: Instant,
}

impl Held<'_> {
    /// A replica became routable: the request leaves the queue to be sent.
    pub fn served(mut self) {
        self.served = true;
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        let waited = self.since.elapsed();
        self.queue.waited.record(waited);
        self.queue
            .longest_us
            .fetch_max(waited.as_micros() as u64, Ordering::Relaxed);
        self.queue.held.fetch_sub(1, Ordering::Relaxed);
        if !self.served {
            self.queue.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_queue_counts_and_refuses_beyond_its_limit() {
        let queue = PoolQueue::default();
        let a = queue.enter(2).unwrap();
        let b = queue.enter(2).unwrap();
        assert_eq!(queue.enter(2).unwrap_err(), QueueFull);
        assert_eq!((queue.held(), queue.total(), queue.dropped()), (2, 2, 1));
        a.served();
        drop(b);
        assert_eq!((queue.held(), queue.dropped()), (0, 2));
    }
}
