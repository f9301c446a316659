//! One pool's executor: observes the pool, asks its `LocalScaler`, and
//! carries out the actions (processes, health checks, commands).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use inferlb_autoscaler::local::{Action, Decision, Event, LocalScaler, Observation, Phase};
use inferlb_core::{
    Command, PoolAutoscaling, PoolName, Provider, ReplicaId, ReplicaSpec, ReplicaState,
};

use super::provider::{self, Running, Slot};
use super::{
    ActivityStatus, ScaledReplica, Shared, FAST_TICK, HEALTH_TIMEOUT, KEPT_ACTIVITIES, TICK,
    UNIT_CHECK,
};
use crate::autoscaling::lock;
use crate::writer::Control;

/// A replica process this pool runs.
#[derive(Debug)]
struct Process {
    id: ReplicaId,
    addr: SocketAddr,
    /// `None` once it was seen to exit.
    running: Option<Running>,
    started: Instant,
    started_at: SystemTime,
}

/// One pool's executor.
#[derive(Debug)]
pub(super) struct Scaler {
    control: Arc<Control>,
    pool: PoolName,
    config: PoolAutoscaling,
    shared: Arc<Shared>,
    /// What to do, decided on the injected clock below.
    decisions: LocalScaler,
    /// The clock's origin: `decisions` sees time since it.
    origin: Instant,
    processes: HashMap<u32, Process>,
    last_unit_check: Instant,
    activities: VecDeque<ActivityStatus>,
    /// The engine-metrics path a starting replica must also answer on,
    /// when the pool scrapes them.
    pub(super) metrics_path: Option<String>,
    /// The pool speaks gRPC: a starting replica is ready when
    /// `grpc.health.v1.Health/Check` says SERVING.
    pub(super) grpc: bool,
    /// Health checks of starting replicas.
    http: crate::http::Client,
}

fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_seconds(at).to_string()
}

/// The pool's replicas in the snapshot, by id, and its held requests.
struct PoolNow {
    snapshot: Arc<inferlb_core::ReplicaSet>,
    queued: u64,
    longest_hold: Duration,
}

impl PoolNow {
    fn of(control: &Control, pool: &PoolName) -> Self {
        let snapshot = control.snapshot();
        let queue = snapshot
            .pools()
            .iter()
            .find(|p| p.name() == pool)
            .and_then(|v| v.queue().cloned());
        Self {
            queued: queue.as_ref().map_or(0, |q| q.held()),
            longest_hold: queue.as_ref().map_or(Duration::ZERO, |q| q.longest_wait()),
            snapshot,
        }
    }

    fn members(&self, pool: &PoolName) -> HashMap<&ReplicaId, &inferlb_core::Replica> {
        self.snapshot
            .pools()
            .iter()
            .find(|p| p.name() == pool)
            .map(|v| {
                v.members()
                    .iter()
                    .map(|&i| {
                        let r = &self.snapshot.replicas()[i as usize];
                        (&r.id, r)
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Scaler {
    pub(super) fn new(
        control: Arc<Control>,
        pool: PoolName,
        config: PoolAutoscaling,
        shared: Arc<Shared>,
    ) -> Self {
        let now = Instant::now();
        let decisions = LocalScaler::new(
            pool.as_str(),
            config.clone(),
            shared.settings(),
            Duration::ZERO,
        );
        Self {
            control,
            pool,
            config,
            shared,
            decisions,
            origin: now,
            processes: HashMap::new(),
            last_unit_check: now,
            activities: VecDeque::new(),
            metrics_path: None,
            grpc: false,
            http: crate::http::Client::new("inferlb-health-check"),
        }
    }

    /// The decisions' clock.
    fn clock(&self) -> Duration {
        self.origin.elapsed()
    }

    pub(super) async fn run(mut self, mut stop: tokio::sync::watch::Receiver<bool>) {
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
        for (_, mut process) in self.processes.drain() {
            if let Some(running) = process.running.take() {
                tracing::info!(pool = %self.pool, replica = %process.id, "stopping replica: inferlb is shutting down");
                stops.spawn(provider::stop(running, grace));
            }
        }
        while stops.join_next().await.is_some() {}
    }

    /// Observes the pool, decides, acts, and publishes the status.
    async fn tick(&mut self) {
        let now = PoolNow::of(&self.control, &self.pool);
        let members = now.members(&self.pool);
        let in_flight: u64 = members.values().map(|r| r.stats.in_flight()).sum();
        let mut seen = Observation {
            settings: Some(self.shared.settings()),
            in_flight,
            queued: now.queued,
            requests: members.values().map(|r| r.stats.requests()).sum(),
            ..Observation::default()
        };
        for (&index, process) in &self.processes {
            if let Some(replica) = members.get(&process.id) {
                seen.in_pool.push(index);
                seen.in_flight_of.insert(index, replica.stats.in_flight());
            }
        }
        drop(members);
        seen.exited = self.exited().await;
        seen.passed = self.checks_passed().await;
        let decision = self.decisions.tick(self.clock(), &seen);
        self.carry_out(decision).await;
        self.publish(now.queued, in_flight, now.longest_hold);
    }

    /// Between ticks: a held request wakes a pool that serves nothing at
    /// once, and a started replica joins as soon as its checks pass.
    async fn between_ticks(&mut self) {
        let starting = self
            .decisions
            .replicas()
            .iter()
            .any(|r| r.phase == Phase::Starting);
        let cold = self.decisions.asleep()
            || !self
                .decisions
                .replicas()
                .iter()
                .any(|r| r.phase == Phase::InService);
        if !starting && !cold {
            return;
        }
        let queued = if cold {
            PoolNow::of(&self.control, &self.pool).queued
        } else {
            0
        };
        if !starting && queued == 0 {
            return;
        }
        let seen = Observation {
            queued,
            passed: self.checks_passed().await,
            ..Observation::default()
        };
        let decision = self.decisions.between_ticks(self.clock(), &seen);
        self.carry_out(decision).await;
    }

    /// Processes that exited since the last look (a systemd unit is asked
    /// only every few seconds: each ask is a process).
    async fn exited(&mut self) -> Vec<(u32, String)> {
        let check_units = self.last_unit_check.elapsed() >= UNIT_CHECK;
        if check_units {
            self.last_unit_check = Instant::now();
        }
        let mut exited = Vec::new();
        for (&index, process) in &mut self.processes {
            let reason = match process.running.as_mut() {
                Some(running @ Running::Child { .. }) => provider::exited(running).await,
                Some(running @ Running::Unit { .. }) if check_units => {
                    provider::exited(running).await
                }
                _ => None,
            };
            if let Some(reason) = reason {
                process.running = None;
                exited.push((index, reason));
            }
        }
        exited
    }

    /// The starting replicas whose health check passes (and whose engine
    /// metrics answer, when the pool scrapes them: a replica whose load
    /// cannot be read would be routed blind), all checked at once.
    async fn checks_passed(&self) -> Vec<u32> {
        let mut checks = tokio::task::JoinSet::new();
        for replica in self.decisions.replicas() {
            if replica.phase != Phase::Starting {
                continue;
            }
            let Some(process) = self.processes.get(&replica.index) else {
                continue;
            };
            let (index, addr) = (replica.index, process.addr);
            let path = self.config.health_path.clone();
            let metrics_path = self.metrics_path.clone();
            let client = self.http.clone();
            let grpc = self.grpc;
            checks.spawn(async move {
                if grpc {
                    let channel =
                        crate::grpc_health::Checker::default().channel(addr, HEALTH_TIMEOUT);
                    let ready = match channel {
                        Some(channel) => crate::grpc_health::check(channel, HEALTH_TIMEOUT).await,
                        None => false,
                    };
                    return (index, ready);
                }
                let mut ready = crate::health::check(&client, addr, &path, HEALTH_TIMEOUT).await;
                if let (true, Some(metrics)) = (ready, metrics_path) {
                    ready = crate::health::check(&client, addr, &metrics, HEALTH_TIMEOUT).await;
                }
                (index, ready)
            });
        }
        let mut passed = Vec::new();
        while let Some(Ok((index, ok))) = checks.join_next().await {
            if ok {
                passed.push(index);
            }
        }
        passed
    }

    /// Carries out a decision, in order, telling the decisions what failed.
    async fn carry_out(&mut self, decision: Decision) {
        for event in decision.events {
            self.record(event);
        }
        let mut start_failed = false;
        for action in decision.actions {
            match action {
                Action::Start { index } if start_failed => self.decisions.forget(index),
                Action::Start { index } => {
                    if let Err(cause) = self.start(index).await {
                        let event = self.decisions.start_failed(self.clock(), index, cause);
                        self.record(event);
                        start_failed = true;
                    }
                }
                Action::Admit { index } => self.admit(&action, index).await,
                Action::Drain { index } => {
                    let deadline = SystemTime::now() + self.config.drain_timeout;
                    let id = self.id_of(index);
                    if let Err(e) = self
                        .control
                        .apply_one(Command::Drain {
                            id: id.clone(),
                            deadline,
                        })
                        .await
                    {
                        tracing::warn!(pool = %self.pool, replica = %id, error = %e, "cannot drain replica");
                        self.decisions.refused(&action);
                    }
                }
                Action::Undrain { index } => {
                    let id = self.id_of(index);
                    let undrain = Command::SetState {
                        id,
                        state: ReplicaState::Active,
                    };
                    if self.control.apply_one(undrain).await.is_err() {
                        self.decisions.refused(&action);
                    }
                }
                Action::Stop { index } => self.stop(index).await,
            }
        }
    }

    fn id_of(&self, index: u32) -> ReplicaId {
        match self.processes.get(&index) {
            Some(p) => p.id.clone(),
            None => ReplicaId::from_address(&self.decisions.name(index)),
        }
    }

    /// Starts replica `index` on the provider's port for it.
    async fn start(&mut self, index: u32) -> Result<(), String> {
        let host = self.config.host;
        let port = match &self.config.provider {
            Provider::Systemd { port_base, .. } => u16::try_from(index)
                .ok()
                .and_then(|i| port_base.checked_add(i))
                .ok_or_else(|| format!("port {port_base} + {index} is out of range"))?,
            Provider::Exec { .. } => {
                let (lo, hi) = self.config.ports;
                (lo..=hi)
                    .find(|p| {
                        !self.processes.values().any(|i| i.addr.port() == *p)
                            && std::net::TcpListener::bind((host, *p)).is_ok()
                    })
                    .ok_or_else(|| format!("no free port in {lo}-{hi} for a new replica"))?
            }
        };
        let id = ReplicaId::new(&self.decisions.name(index)).map_err(|e| e.to_string())?;
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
        self.processes.insert(
            index,
            Process {
                id,
                addr: SocketAddr::new(host, port),
                running: Some(running),
                started: Instant::now(),
                started_at: SystemTime::now(),
            },
        );
        Ok(())
    }

    /// Its checks passed: the replica joins the pool, as the scaler's own.
    async fn admit(&mut self, action: &Action, index: u32) {
        let Some(process) = self.processes.get(&index) else {
            self.decisions.refused(action);
            return;
        };
        let spec = ReplicaSpec {
            id: process.id.clone(),
            address: process.addr.to_string(),
            addr: process.addr,
            weight: 1,
            pool: self.pool.clone(),
        };
        match self.control.apply_one(Command::Admit(spec)).await {
            Ok(_) => {
                let took = process.started.elapsed();
                self.shared.record_cold_start(took);
                let live = self.live() as u32;
                let cause = format!(
                    "replica {} at {} in service after {:.1} s",
                    process.id,
                    process.addr,
                    took.as_secs_f64()
                );
                self.record(Event {
                    direction: "none",
                    from: live,
                    to: live,
                    failed: false,
                    cause,
                });
            }
            Err(e) => {
                tracing::error!(pool = %self.pool, error = %e, "cannot add the started replica");
                self.decisions.refused(action);
            }
        }
    }

    /// Takes the replica out of the pool (when it is there) and stops its
    /// process (when it still runs).
    async fn stop(&mut self, index: u32) {
        let Some(process) = self.processes.remove(&index) else {
            return;
        };
        let in_pool = self
            .control
            .snapshot()
            .replicas()
            .iter()
            .any(|r| r.id == process.id);
        if in_pool {
            let _ = self
                .control
                .apply_one(Command::Remove {
                    id: process.id.clone(),
                })
                .await;
        }
        if let Some(running) = process.running {
            tracing::info!(pool = %self.pool, replica = %process.id, "stopping replica");
            tokio::spawn(provider::stop(running, self.config.stop_grace));
        }
    }

    /// Replicas starting or in service.
    fn live(&self) -> usize {
        self.decisions
            .replicas()
            .iter()
            .filter(|r| r.phase != Phase::Draining)
            .count()
    }

    fn record(&mut self, event: Event) {
        match event.direction {
            "out" => self.shared.scale_outs.fetch_add(1, Ordering::Relaxed),
            "in" => self.shared.scale_ins.fetch_add(1, Ordering::Relaxed),
            _ => 0,
        };
        let Event {
            direction,
            from,
            to,
            failed,
            cause,
        } = event;
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

    fn publish(&self, queued: u64, in_flight: u64, longest_hold: Duration) {
        let replicas = self.decisions.replicas();
        let count = |phase: Phase| replicas.iter().filter(|r| r.phase == phase).count() as u32;
        let mut status = lock(&self.shared.status);
        status.desired = self.decisions.desired();
        status.current = replicas.len() as u32;
        status.in_service = count(Phase::InService);
        status.starting = count(Phase::Starting);
        status.draining = count(Phase::Draining);
        status.queued = queued;
        status.in_flight = in_flight;
        status.longest_hold_ms = longest_hold.as_millis() as u64;
        status.replicas = replicas
            .iter()
            .filter_map(|r| {
                let p = self.processes.get(&r.index)?;
                Some(ScaledReplica {
                    id: p.id.to_string(),
                    index: r.index,
                    address: p.addr.to_string(),
                    phase: r.phase.as_str(),
                    started_at: rfc3339(p.started_at),
                })
            })
            .collect();
        status.activities = self.activities.iter().cloned().collect();
    }
}
