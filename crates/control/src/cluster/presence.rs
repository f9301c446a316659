//! Presence: each instance's report under its lease, what drains across
//! the fleet read from the reports, other instances' local replicas, and
//! leaving the fleet.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use etcd_client::GetOptions;
use inferlb_core::replica::resolve_address;
use inferlb_core::{Origin, PoolName, ReplicaId, ReplicaSpec, ReplicaState, State};
use serde::{Deserialize, Serialize};

use super::{lock, unix_ms, Fleet, FleetError, CALL_TIMEOUT, REPORT_INTERVAL};

/// What an instance publishes under its lease every [`REPORT_INTERVAL`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The instance's name.
    pub instance: String,
    /// Its admin API address, when it serves one.
    pub admin: Option<String>,
    /// The record revision it has applied.
    pub revision: i64,
    /// When it reported (Unix ms).
    pub reported_at_unix_ms: u64,
    /// Requests in flight per replica (absent: none).
    pub in_flight: BTreeMap<ReplicaId, u64>,
    /// Requests in flight per pool, over its routable replicas.
    pub pools: BTreeMap<PoolName, PoolReport>,
    /// Its health verdict per replica, where it checks health.
    pub health: BTreeMap<ReplicaId, String>,
    /// The replicas its local scalers run (`[pools.autoscaling]`), for
    /// every instance to route to.
    #[serde(default)]
    pub local: Vec<LocalReplica>,
}

/// A replica an instance's local scaler runs, as it reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LocalReplica {
    pub id: ReplicaId,
    pub address: String,
    pub pool: PoolName,
    pub weight: u32,
    pub draining: bool,
}

/// One pool's figures in a report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PoolReport {
    /// Requests in flight to its routable replicas.
    pub in_flight: u64,
    /// Routable replicas.
    pub routable: u64,
    /// Requests and 5xx answers since the instance started (counters).
    pub requests: u64,
    pub errors_5xx: u64,
}

impl Fleet {
    /// Records at which revision draining replicas were seen draining.
    pub(crate) fn note_drains(&self, state: &State, revision: i64) {
        let mut drained = lock(&self.drained_at);
        let draining: Vec<&ReplicaId> = state
            .replicas()
            .iter()
            .filter(|r| r.state == ReplicaState::Draining && r.origin == Origin::Operator)
            .map(|r| &r.id)
            .collect();
        drained.retain(|id, _| draining.contains(&id));
        for id in draining {
            drained.entry(id.clone()).or_insert(revision);
        }
    }

    /// Whether every other live instance has seen `id` draining and has
    /// nothing in flight to it (this instance's own count is the caller's).
    /// Unknown while etcd cannot be reached.
    pub(crate) fn idle_elsewhere(&self, id: &ReplicaId) -> bool {
        if self.link().down.is_some() {
            return false;
        }
        let Some(&since) = lock(&self.drained_at).get(id) else {
            return false;
        };
        lock(&self.reports)
            .iter()
            .filter(|r| r.instance != self.config.instance)
            .all(|r| r.revision >= since && r.in_flight.get(id).copied().unwrap_or(0) == 0)
    }

    /// The figures this instance reports, from its snapshot.
    fn report(&self, snapshot: &inferlb_core::ReplicaSet) -> Report {
        let mut in_flight = BTreeMap::new();
        let mut health = BTreeMap::new();
        for r in snapshot.replicas() {
            let n = r.stats.in_flight();
            if n > 0 {
                in_flight.insert(r.id.clone(), n);
            }
            let verdict = match r.health {
                inferlb_core::Health::Healthy => "healthy",
                inferlb_core::Health::Unhealthy => "unhealthy",
            };
            health.insert(r.id.clone(), verdict.to_owned());
        }
        let mut pools = BTreeMap::new();
        for pool in snapshot.pools() {
            let mut p = PoolReport::default();
            for &i in pool.members() {
                let r = &snapshot.replicas()[i as usize];
                p.requests += r.stats.requests();
                p.errors_5xx += r.stats.responses(inferlb_core::StatusClass::ServerError);
                if r.is_routable() {
                    p.in_flight += r.stats.in_flight();
                    p.routable += 1;
                }
            }
            pools.insert(pool.name().clone(), p);
        }
        let local = snapshot
            .replicas()
            .iter()
            .filter(|r| r.origin == Origin::Scaler)
            .map(|r| LocalReplica {
                id: r.id.clone(),
                address: r.address.clone(),
                pool: r.pool.clone(),
                weight: r.weight,
                draining: r.state == ReplicaState::Draining,
            })
            .collect();
        Report {
            instance: self.config.instance.clone(),
            admin: self.admin.clone(),
            revision: self.revision(),
            reported_at_unix_ms: unix_ms(SystemTime::now()),
            in_flight,
            pools,
            health,
            local,
        }
    }

    /// Publishes this instance's report under its lease every
    /// [`REPORT_INTERVAL`] and reads everyone's, until the process ends.
    /// A lease that expired (etcd was away longer than its TTL) is granted
    /// again.
    pub async fn run_presence(self: Arc<Self>, control: Arc<crate::Control>) {
        let key = format!("{}{}", self.instances_prefix, self.config.instance);
        let ttl = self.config.lease_ttl.as_secs() as i64;
        let mut lease: Option<i64> = None;
        let mut ticker = tokio::time::interval(REPORT_INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let report = self.report(&control.snapshot());
            match self.present(&key, ttl, &mut lease, &report).await {
                Ok(reports) => {
                    let peers = self.peers(&reports);
                    *lock(&self.reports) = reports;
                    control.sync_peers(peers).await;
                }
                Err(error) => self.trouble(&error),
            }
        }
    }

    async fn present(
        &self,
        key: &str,
        ttl: i64,
        lease: &mut Option<i64>,
        report: &Report,
    ) -> Result<Vec<Report>, FleetError> {
        let mut client = self.client.clone();
        let id = match *lease {
            Some(id) => {
                let alive = client.lease_time_to_live(id, None).await?.ttl() > 0;
                if alive {
                    let (mut keeper, mut stream) = client.lease_keep_alive(id).await?;
                    keeper.keep_alive().await?;
                    let _ = stream.message().await?;
                    id
                } else {
                    tracing::warn!(
                        instance = %self.config.instance,
                        "this instance's lease expired while etcd was away; taking a new one"
                    );
                    client.lease_grant(ttl, None).await?.id()
                }
            }
            None => client.lease_grant(ttl, None).await?.id(),
        };
        *lease = Some(id);
        *lock(&self.lease) = Some(id);
        let text = serde_json::to_vec(report).unwrap_or_default();
        client
            .put(
                key,
                text,
                Some(etcd_client::PutOptions::new().with_lease(id)),
            )
            .await?;
        let listed = client
            .get(
                self.instances_prefix.as_str(),
                Some(GetOptions::new().with_prefix()),
            )
            .await?;
        self.up();
        let mut reports: Vec<Report> = listed
            .kvs()
            .iter()
            .filter_map(|kv| serde_json::from_slice(kv.value()).ok())
            .collect();
        reports.sort_by(|a, b| a.instance.cmp(&b.instance));
        Ok(reports)
    }

    /// The other instances' local replicas, as this instance routes to
    /// them: id `<instance>.<id>` (each host numbers its own), and whether
    /// their instance drains them.
    fn peers(&self, reports: &[Report]) -> Vec<(ReplicaSpec, bool)> {
        let mut peers = Vec::new();
        for report in reports
            .iter()
            .filter(|r| r.instance != self.config.instance)
        {
            for local in &report.local {
                let id = ReplicaId::new(&format!("{}.{}", report.instance, local.id));
                let Ok(id) = id else { continue };
                let Ok(addr) = resolve_address(&local.address) else {
                    continue;
                };
                let spec = ReplicaSpec {
                    id,
                    address: local.address.clone(),
                    addr,
                    weight: local.weight,
                    pool: local.pool.clone(),
                };
                peers.push((spec, local.draining));
            }
        }
        peers
    }

    /// Leaves the fleet at a graceful stop: the lease is revoked, so this
    /// instance's report (and its local replicas) go at once rather than
    /// when the lease expires, and no drain waits for it.
    pub async fn leave(&self) {
        let lease = *lock(&self.lease);
        if let Some(id) = lease {
            let mut client = self.client.clone();
            match tokio::time::timeout(CALL_TIMEOUT, client.lease_revoke(id)).await {
                Ok(Ok(_)) => tracing::info!(instance = %self.config.instance, "left the fleet"),
                _ => tracing::warn!(
                    "could not leave the fleet; this instance's report expires with its lease"
                ),
            }
        }
    }
}
