//! The fleet's record: reading it, creating it, the state it describes,
//! committing by revision, and watching it.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use etcd_client::{Compare, CompareOp, EventType, Txn, TxnOp, WatchOptions};
use inferlb_core::replica::resolve_address;
use inferlb_core::{PoolName, PoolSpec, ReplicaId, ReplicaSpec, Routing, Safeguards, State};
use serde::{Deserialize, Serialize};

use super::{unix_ms, Fleet, FleetError, RETRY_FOR};
use crate::state_file::{Declared, FileChanges};

/// The record's format version.
const RECORD_VERSION: u32 = 1;

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

impl Fleet {
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
