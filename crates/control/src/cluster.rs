//! A fleet of inferlb instances sharing their state in etcd (`[cluster]`):
//! this module holds the handle and its link to etcd; `record` the shared
//! record (commit by revision, watch), `presence` the instances' reports
//! under their leases, `election` the singletons' leaders.
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

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use etcd_client::{Client, ConnectOptions};
use inferlb_core::config::Cluster as ClusterConfig;
use inferlb_core::{ReplicaId, ReplicaSpec, State};

use crate::state_file::{Declared, Overlay};

mod election;
mod presence;
mod record;

pub use election::{lead, Leadership};
pub use presence::{LocalReplica, PoolReport, Report};
pub use record::Record;

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
