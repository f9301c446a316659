//! A fleet of inferlb instances sharing their state in etcd (`[cluster]`).
//!
//! ```text
//! /inferlb/<name>/state                 the record: declared replicas + runtime changes (JSON)
//! /inferlb/<name>/instances/<instance>  each instance's report, under its lease (JSON, 1 s)
//! /inferlb/<name>/election/<singleton>  etcd elections (the autoscaling agent, the publisher)
//! ```
//!
//! The record is the state file's model in one key: the declared replica
//! list and the runtime overlay on top of it. An instance's one writer
//! commits a change as one transaction that compares the record's revision
//! with the one it last applied; a writer that lost the race applies the
//! newer record and tries its commands again on it, so two admins never
//! lose each other's changes, and a change that no longer makes sense
//! (the id was taken meanwhile) is refused with the state it met. Every
//! instance watches the record and converges through its writer.
//!
//! Fail static: when etcd cannot be reached the instance keeps the last
//! state it applied; health checks and routing go on; writes answer 503;
//! reads are marked stale; the watch resumes from its revision (a full read
//! when compacted) once etcd answers again.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Txn, TxnOp, WatchOptions,
};
use inferlb_core::config::Cluster as ClusterConfig;
use inferlb_core::replica::resolve_address;
use inferlb_core::{
    Origin, PoolName, PoolSpec, ReplicaId, ReplicaSpec, ReplicaState, Routing, Safeguards, State,
};
use serde::{Deserialize, Serialize};

use crate::state_file::{Declared, FileChanges, Overlay};

/// The record's format version.
const RECORD_VERSION: u32 = 1;
/// How often an instance reports (in flight, health, the revision it runs).
pub const REPORT_INTERVAL: Duration = Duration::from_secs(1);
/// How long one etcd call may take before it counts as unreachable.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a write is tried again through a member's loss or a leader
/// election before etcd counts as unreachable.
const RETRY_FOR: Duration = Duration::from_secs(5);

/// Why etcd could not be used.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FleetError {
    /// etcd did not answer, or refused the call.
    #[error("etcd is unreachable ({0})")]
    Unreachable(String),
    /// The record in etcd cannot be read by this version.
    #[error("the fleet's record {key} cannot be read: {reason}")]
    Corrupt { key: String, reason: String },
    /// A TLS file for etcd cannot be read.
    #[error("cannot read {path} for TLS to etcd: {reason}")]
    Tls { path: String, reason: String },
}

impl From<etcd_client::Error> for FleetError {
    fn from(e: etcd_client::Error) -> Self {
        Self::Unreachable(e.to_string())
    }
}

/// One declared replica, as the record holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeclaredReplica {
    id: ReplicaId,
    address: String,
    weight: u32,
    #[serde(default)]
    pool: PoolName,
}

/// The fleet's shared state: `/inferlb/<name>/state`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    version: u32,
    /// The declared replica list (from the config file of the instance that
    /// published it last).
    declared: Vec<DeclaredReplica>,
    /// The runtime changes on top of it.
    changes: FileChanges,
    /// The instance that wrote it, and when.
    by: String,
    at_unix_ms: u64,
}

impl Record {
    /// The instance that wrote it.
    pub fn by(&self) -> &str {
        &self.by
    }
}

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

/// Whether this instance can reach etcd, for answers and `/v1/cluster`.
#[derive(Debug, Clone, Default)]
pub struct Link {
    /// `None` while connected; else since when it is not, and why.
    pub down: Option<(SystemTime, String)>,
    /// Since when calls fail, before that counts as down (a member lost or
    /// a leader election is no outage of a cluster that keeps a quorum).
    failing_since: Option<tokio::time::Instant>,
}

/// How long etcd calls may keep failing before etcd counts as unreachable.
const GRACE: Duration = Duration::from_secs(3);

/// This instance's handle on the fleet.
pub struct Fleet {
    config: ClusterConfig,
    client: Client,
    state_key: String,
    instances_prefix: String,
    overlay: Overlay,
    /// The record revision applied here (changed under the writer's lock).
    revision: Mutex<i64>,
    link: Mutex<Link>,
    /// The last reports read, every live instance's (this one's included).
    reports: Mutex<Vec<Report>>,
    /// The revision at which this instance saw each draining replica
    /// draining: another instance's report counts for its removal only if
    /// it has applied that revision.
    drained_at: Mutex<HashMap<ReplicaId, i64>>,
    /// This instance's config file's replicas: a reload publishes the
    /// declared list only when the file changed it.
    file_replicas: Mutex<Vec<ReplicaSpec>>,
    /// The admin address to report.
    admin: Option<String>,
    /// The lease this instance's report lives under, once granted.
    lease: Mutex<Option<i64>>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("config", &self.config)
            .field("revision", &self.revision())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The options every connection to etcd uses: short timeouts (fail static
/// needs to know soon), keep-alives that notice a dead member, TLS.
fn connect_options(config: &ClusterConfig) -> Result<ConnectOptions, FleetError> {
    let mut options = ConnectOptions::new()
        .with_connect_timeout(CALL_TIMEOUT)
        .with_timeout(CALL_TIMEOUT)
        .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
        .with_keep_alive_while_idle(true);
    if let Some(tls) = &config.tls {
        let read = |path: &std::path::Path| {
            std::fs::read(path).map_err(|e| FleetError::Tls {
                path: path.display().to_string(),
                reason: e.to_string(),
            })
        };
        let mut t = etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(read(&tls.ca)?));
        if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
            t = t.identity(etcd_client::Identity::from_pem(read(cert)?, read(key)?));
        }
        options = options.with_tls(t);
    }
    Ok(options)
}

/// A client of `config`'s etcd (connections are made lazily: an etcd that
/// is down now is no error here).
pub async fn client(config: &ClusterConfig) -> Result<Client, FleetError> {
    Client::connect(&config.etcd, Some(connect_options(config)?))
        .await
        .map_err(FleetError::from)
}

impl Fleet {
    /// This instance's handle; reaches nothing yet.
    pub async fn new(
        config: ClusterConfig,
        file_replicas: Vec<ReplicaSpec>,
        admin: Option<String>,
    ) -> Result<Arc<Self>, FleetError> {
        let client = client(&config).await?;
        let prefix = config.prefix();
        Ok(Arc::new(Self {
            state_key: format!("{prefix}state"),
            instances_prefix: format!("{prefix}instances/"),
            config,
            client,
            overlay: Overlay::default(),
            revision: Mutex::new(0),
            link: Mutex::new(Link {
                down: Some((SystemTime::now(), "not connected yet".to_owned())),
                failing_since: None,
            }),
            reports: Mutex::default(),
            drained_at: Mutex::default(),
            file_replicas: Mutex::new(file_replicas),
            admin,
            lease: Mutex::new(None),
        }))
    }

    /// The `[cluster]` settings.
    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    /// A client for other uses (elections).
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// The record's key.
    pub fn state_key(&self) -> &str {
        &self.state_key
    }

    /// The record revision applied here.
    pub fn revision(&self) -> i64 {
        *lock(&self.revision)
    }

    pub(crate) fn set_revision(&self, revision: i64) {
        *lock(&self.revision) = revision;
    }

    /// Whether etcd is reachable now.
    pub fn link(&self) -> Link {
        lock(&self.link).clone()
    }

    fn up(&self) {
        let mut link = lock(&self.link);
        link.failing_since = None;
        if let Some((since, _)) = link.down.take() {
            let for_s = since.elapsed().unwrap_or_default().as_secs_f64();
            tracing::info!(
                down_for_s = format!("{for_s:.1}"),
                "etcd reachable again: the fleet's state is current"
            );
        }
    }

    /// A background call failed: down once calls have failed for [`GRACE`].
    fn trouble(&self, error: &FleetError) {
        let now = tokio::time::Instant::now();
        let since = *lock(&self.link).failing_since.get_or_insert(now);
        if now.duration_since(since) >= GRACE {
            self.down(error);
        } else {
            tracing::debug!(%error, "etcd call failed");
        }
    }

    fn down(&self, error: &FleetError) {
        let mut link = lock(&self.link);
        match &mut link.down {
            Some((_, why)) => *why = error.to_string(),
            None => {
                tracing::warn!(%error, "etcd unreachable: serving the last state (fail static); admin writes answer 503 until it is back");
                link.down = Some((SystemTime::now(), error.to_string()));
            }
        }
    }

    /// The last reports of every live instance.
    pub fn reports(&self) -> Vec<Report> {
        lock(&self.reports).clone()
    }

    /// This instance's config file's replicas, and records new ones.
    pub(crate) fn swap_file_replicas(&self, replicas: Vec<ReplicaSpec>) -> Vec<ReplicaSpec> {
        std::mem::replace(&mut lock(&self.file_replicas), replicas)
    }

    /// Reads the record: `None` when the fleet has none yet.
    pub async fn load(&self) -> Result<Option<(Record, i64)>, FleetError> {
        Ok(self.read().await?.0)
    }

    /// Reads the record, and the store's revision at that read (every
    /// change up to it is in what was read).
    async fn read(&self) -> Result<(Option<(Record, i64)>, i64), FleetError> {
        let mut kv = self.client.kv_client();
        let response = kv.get(self.state_key.as_str(), None).await;
        let response = response.map_err(|e| {
            let e = FleetError::from(e);
            self.trouble(&e);
            e
        })?;
        let read_at = response.header().map_or(0, |h| h.revision());
        let Some(kv) = response.kvs().first() else {
            return Ok((None, read_at));
        };
        let record: Record =
            serde_json::from_slice(kv.value()).map_err(|e| FleetError::Corrupt {
                key: self.state_key.clone(),
                reason: e.to_string(),
            })?;
        if record.version != RECORD_VERSION {
            return Err(FleetError::Corrupt {
                key: self.state_key.clone(),
                reason: format!("format version {} is not {RECORD_VERSION}", record.version),
            });
        }
        Ok((Some((record, kv.mod_revision())), read_at))
    }

    /// The fleet's record, created from `declared` when there is none yet
    /// (the first instance of a fleet publishes its config's replicas).
    pub async fn bootstrap(&self, declared: &Declared) -> Result<(Record, i64), FleetError> {
        loop {
            if let Some(found) = self.load().await? {
                let ours = declared_of(&declared.replicas);
                if found.0.declared != ours {
                    tracing::warn!(
                        key = %self.state_key,
                        "this config file's replicas differ from the fleet's declared list; the fleet's is used (SIGHUP after changing the file publishes it)"
                    );
                }
                self.up();
                return Ok(found);
            }
            let record = self.record(&State::new(Routing::default()), declared, true);
            let text = serde_json::to_vec(&record).map_err(|e| FleetError::Corrupt {
                key: self.state_key.clone(),
                reason: e.to_string(),
            })?;
            let txn = Txn::new()
                .when([Compare::create_revision(
                    self.state_key.as_str(),
                    CompareOp::Equal,
                    0,
                )])
                .and_then([TxnOp::put(self.state_key.as_str(), text, None)]);
            let response = self.txn(txn).await?;
            if response.succeeded() {
                let revision = response.header().map_or(0, |h| h.revision());
                tracing::info!(key = %self.state_key, replicas = declared.replicas.len(), "the fleet's record created from this config");
                self.up();
                return Ok((record, revision));
            }
            // Another instance created it meanwhile: read theirs.
        }
    }

    /// The record `state` makes against `declared`.
    fn record(&self, state: &State, declared: &Declared, empty: bool) -> Record {
        Record {
            version: RECORD_VERSION,
            declared: declared_of(&declared.replicas),
            changes: if empty {
                FileChanges::default()
            } else {
                self.overlay.changes(state, declared)
            },
            by: self.config.instance.clone(),
            at_unix_ms: unix_ms(SystemTime::now()),
        }
    }

    /// The state `record` describes, with this instance's pools (each
    /// instance's config declares them), routing and safeguards; and the
    /// declared list it holds.
    pub fn state_of(
        &self,
        record: &Record,
        routing: Routing,
        safeguards: Safeguards,
        pools: &[PoolSpec],
    ) -> Result<(State, Declared), String> {
        let mut replicas = Vec::with_capacity(record.declared.len());
        for d in &record.declared {
            match resolve_address(&d.address) {
                Ok(addr) => replicas.push(ReplicaSpec {
                    id: d.id.clone(),
                    address: d.address.clone(),
                    addr,
                    weight: d.weight,
                    pool: d.pool.clone(),
                }),
                Err(error) => {
                    tracing::warn!(id = %d.id, address = %d.address, %error, "a replica the fleet declares does not resolve here; skipped until the record changes")
                }
            }
        }
        let declared = Declared {
            replicas,
            pools: pools.to_vec(),
        };
        let mut state =
            self.overlay
                .apply(routing, &declared, record.changes.clone(), &self.state_key)?;
        state
            .apply(inferlb_core::Command::SetSafeguards(safeguards))
            .map_err(|e| e.to_string())?;
        Ok((state, declared))
    }

    /// Commits `state` (against `declared`) if the record is still the
    /// revision applied here. `Ok(Err(..))`: it is not; the newer record
    /// is returned to apply before trying again.
    pub(crate) async fn commit(
        &self,
        state: &State,
        declared: &Declared,
    ) -> Result<Result<i64, (Record, i64)>, FleetError> {
        let record = self.record(state, declared, false);
        let text = serde_json::to_vec(&record).map_err(|e| FleetError::Corrupt {
            key: self.state_key.clone(),
            reason: e.to_string(),
        })?;
        let key = self.state_key.as_str();
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key,
                CompareOp::Equal,
                self.revision(),
            )])
            .and_then([TxnOp::put(key, text, None)])
            .or_else([TxnOp::get(key, None)]);
        let response = self.txn(txn).await?;
        if response.succeeded() {
            return Ok(Ok(response.header().map_or(0, |h| h.revision())));
        }
        for op in response.op_responses() {
            if let etcd_client::TxnOpResponse::Get(get) = op {
                if let Some(kv) = get.kvs().first() {
                    let newer: Record =
                        serde_json::from_slice(kv.value()).map_err(|e| FleetError::Corrupt {
                            key: self.state_key.clone(),
                            reason: e.to_string(),
                        })?;
                    return Ok(Err((newer, kv.mod_revision())));
                }
            }
        }
        Err(FleetError::Corrupt {
            key: self.state_key.clone(),
            reason: "the record was deleted".to_owned(),
        })
    }

    /// Runs `txn`, trying again for a while when etcd fails it while it
    /// was reachable (a member lost, a leader election): a fleet that
    /// keeps a quorum notices nothing. Fails at once while etcd is known
    /// to be unreachable.
    async fn txn(&self, txn: Txn) -> Result<etcd_client::TxnResponse, FleetError> {
        let deadline = tokio::time::Instant::now() + RETRY_FOR;
        loop {
            match self.client.kv_client().txn(txn.clone()).await {
                Ok(response) => {
                    self.up();
                    return Ok(response);
                }
                Err(error) => {
                    let error = FleetError::from(error);
                    if self.link().down.is_some() || tokio::time::Instant::now() >= deadline {
                        self.down(&error);
                        return Err(error);
                    }
                    tracing::debug!(%error, "etcd call failed; trying again");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

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

    /// Watches the record and applies every change another instance makes,
    /// until the process ends: from the revision applied here after a
    /// reconnection, with a full read when etcd compacted it away.
    pub async fn run_watch(self: Arc<Self>, control: Arc<crate::Control>) {
        let mut backoff = Duration::from_millis(200);
        loop {
            match self.watch_once(&control).await {
                Ok(()) => backoff = Duration::from_millis(200),
                Err(error) => {
                    self.trouble(&error);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// One watch: a read of the record first (catching up on what happened
    /// while not watching), then its events until the stream ends.
    async fn watch_once(&self, control: &crate::Control) -> Result<(), FleetError> {
        let (found, read_at) = self.read().await?;
        match found {
            Some((record, revision)) => control.adopt(record, revision).await,
            // etcd lost its data (a new cluster, a restore): this
            // instance's state becomes the fleet's record again.
            None => {
                tracing::warn!(key = %self.state_key, "the fleet's record is gone from etcd; writing this instance's state back");
                self.set_revision(0);
                control.rewrite_fleet_record().await;
            }
        }
        // From just after the read: the record's own revision may be older
        // than what etcd has compacted since (other keys move the store's
        // revision), and a watch from there would be refused again and again.
        let start = read_at.max(self.revision()) + 1;
        let mut client = self.client.clone();
        let mut stream = client
            .watch(
                self.state_key.as_str(),
                Some(
                    WatchOptions::new()
                        .with_start_revision(start)
                        .with_progress_notify(),
                ),
            )
            .await?;
        self.up();
        while let Some(response) = stream.message().await? {
            if response.canceled() {
                if response.compact_revision() > 0 {
                    tracing::info!(
                        compacted_to = response.compact_revision(),
                        "the fleet's history was compacted past this instance's revision; reading the record again"
                    );
                }
                return Ok(());
            }
            for event in response.events() {
                let Some(kv) = event.kv() else { continue };
                if event.event_type() != EventType::Put {
                    tracing::error!(key = %self.state_key, "the fleet's record was deleted; keeping the last state (an admin change writes it again)");
                    continue;
                }
                match serde_json::from_slice::<Record>(kv.value()) {
                    Ok(record) => control.adopt(record, kv.mod_revision()).await,
                    Err(error) => {
                        tracing::error!(key = %self.state_key, %error, "the fleet's record cannot be read; keeping the last state")
                    }
                }
            }
        }
        Err(FleetError::Unreachable("the watch ended".to_owned()))
    }
}

fn declared_of(replicas: &[ReplicaSpec]) -> Vec<DeclaredReplica> {
    replicas
        .iter()
        .map(|r| DeclaredReplica {
            id: r.id.clone(),
            address: r.address.clone(),
            weight: r.weight,
            pool: r.pool.clone(),
        })
        .collect()
}

/// When a `[cluster]` config's fleet has a record, the state it describes;
/// else the config's own declared state (and the record is created from
/// it). `Err` only for a record this version cannot read.
pub async fn starting_state(
    fleet: &Fleet,
    config: &inferlb_core::Config,
) -> Result<(State, Declared), FleetError> {
    let declared = crate::plane::declared(config);
    let attempt = tokio::time::timeout(CALL_TIMEOUT * 2, fleet.bootstrap(&declared)).await;
    let (record, revision) = match attempt {
        Ok(Ok(found)) => found,
        Ok(Err(e @ FleetError::Corrupt { .. })) => return Err(e),
        Ok(Err(error)) => {
            fleet.down(&error);
            return Ok(starting_alone(config, declared));
        }
        Err(_) => {
            fleet.down(&FleetError::Unreachable("no answer at start".to_owned()));
            return Ok(starting_alone(config, declared));
        }
    };
    let (state, declared) = fleet
        .state_of(&record, config.routing, config.safeguards, &config.pools)
        .map_err(|reason| FleetError::Corrupt {
            key: fleet.state_key.clone(),
            reason,
        })?;
    fleet.set_revision(revision);
    fleet.note_drains(&state, revision);
    tracing::info!(
        key = %fleet.state_key,
        revision,
        replicas = state.replicas().len(),
        "the fleet's state applied"
    );
    Ok((state, declared))
}

fn starting_alone(config: &inferlb_core::Config, declared: Declared) -> (State, Declared) {
    tracing::warn!(
        "etcd is unreachable at start: serving the config's replicas until it answers, then the fleet's"
    );
    let state = crate::plane::initial_state(config).unwrap_or_else(|_| State::new(config.routing));
    (state, declared)
}

/// This instance leads a singleton of the fleet (etcd's election API on a
/// lease): it runs while `lost` has not fired.
pub struct Leadership {
    /// Fires when leadership may be lost: the lease could not be kept alive
    /// for two thirds of its TTL (stepping down before etcd could expire
    /// it, so two leaders never overlap), or it expired.
    pub lost: tokio::sync::watch::Receiver<bool>,
    keeper: tokio::task::JoinHandle<()>,
    client: Client,
    lease: i64,
}

impl Leadership {
    /// Gives leadership up at once (the lease is revoked, so a standby
    /// takes over without waiting for the TTL).
    pub async fn resign(mut self) {
        self.keeper.abort();
        let _ = tokio::time::timeout(CALL_TIMEOUT, self.client.lease_revoke(self.lease)).await;
    }
}

impl std::fmt::Debug for Leadership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leadership")
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        self.keeper.abort();
    }
}

/// Campaigns for `singleton` (e.g. `autoscale-agent`) in `config`'s fleet
/// and returns once this instance leads. Standing by is logged with the
/// current leader's name.
pub async fn lead(config: &ClusterConfig, singleton: &str) -> Result<Leadership, FleetError> {
    let mut client = client(config).await?;
    let name = format!("{}election/{singleton}", config.prefix());
    let ttl = config.lease_ttl;
    let lease = client.lease_grant(ttl.as_secs() as i64, None).await?.id();
    // The lease is kept alive while campaigning too.
    let (lost_tx, lost) = tokio::sync::watch::channel(false);
    let keeper = tokio::spawn(keep_alive(client.clone(), lease, ttl, lost_tx));
    if let Ok(current) = client.leader(name.as_str()).await {
        if let Some(kv) = current.kv() {
            tracing::info!(
                singleton,
                leader = %String::from_utf8_lossy(kv.value()),
                "standing by: another instance leads"
            );
        }
    }
    let campaign = client.campaign(name.as_str(), config.instance.as_str(), lease);
    let mut watch = lost.clone();
    tokio::select! {
        won = campaign => { won?; }
        _ = watch.changed() => {
            keeper.abort();
            return Err(FleetError::Unreachable("the lease was lost while campaigning".to_owned()));
        }
    }
    tracing::info!(singleton, instance = %config.instance, "this instance leads");
    Ok(Leadership {
        lost,
        keeper,
        client,
        lease,
    })
}

async fn keep_alive(
    mut client: Client,
    lease: i64,
    ttl: Duration,
    lost: tokio::sync::watch::Sender<bool>,
) {
    let mut last_ok = tokio::time::Instant::now();
    let margin = ttl * 2 / 3;
    loop {
        tokio::time::sleep(ttl / 3).await;
        let kept = tokio::time::timeout(CALL_TIMEOUT, client.lease_keep_alive(lease)).await;
        match kept {
            Ok(Ok(_)) => last_ok = tokio::time::Instant::now(),
            Ok(Err(etcd_client::Error::LeaseKeepAliveError(why))) => {
                tracing::warn!(%why, "the leadership lease expired");
                let _ = lost.send(true);
                return;
            }
            _ if last_ok.elapsed() >= margin => {
                tracing::warn!(
                    "the leadership lease could not be kept alive for two thirds of its TTL; stepping down"
                );
                let _ = lost.send(true);
                return;
            }
            _ => {}
        }
    }
}
