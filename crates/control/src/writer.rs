//! The control plane's single writer: applies commands one at a time,
//! persists the result, then publishes the snapshot workers route with.
//!
//! ```text
//!  admin API ─┐
//!  SIGHUP     ├─▶ Control::apply ─▶ State (clone) ─▶ state file ─▶ Snapshots::publish
//!  drain reaper┘        (one at a time, under a mutex)
//! ```
//!
//! A change is applied to a copy of the state, written to disk, and only then
//! made current and published: an answer of success means the change is
//! durable, and a failed write changes nothing.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use inferlb_core::{
    Command, Outcome, ReplicaId, ReplicaSet, ReplicaSpec, ReplicaState, Snapshots, State,
    StateError,
};
use tokio::sync::Mutex;

use crate::state_file::{Declared, PersistError, StateFile};

/// Why a change was not made.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The command conflicts with the current replicas.
    #[error(transparent)]
    State(#[from] StateError),
    /// The change could not be made durable, so it was not made.
    #[error(transparent)]
    Persist(#[from] PersistError),
}

/// Default drain timeout of a removed replica (ALB's deregistration delay).
pub const DEFAULT_DRAIN: Duration = Duration::from_secs(300);

/// How often draining replicas are checked for completion.
pub const REAP_INTERVAL: Duration = Duration::from_millis(100);
/// A state file save this slow is logged.
const SLOW_SAVE: Duration = Duration::from_millis(500);

/// Owns the replica list.
#[derive(Debug)]
pub struct Control {
    state: Mutex<State>,
    snapshots: Snapshots,
    store: Option<StateFile>,
    /// The declared replicas and pools (config file and flags) the state
    /// was built from; the state file records what differs from them.
    declared: std::sync::Mutex<Declared>,
    /// Replicas the local autoscaler started: never persisted, and left
    /// alone by `PUT /v1/replicas`.
    ephemeral: std::sync::Mutex<std::collections::HashSet<ReplicaId>>,
    /// The autoscaling pools' shared state.
    scalers: crate::scaler::Registry,
}

impl Control {
    /// Takes over `state` (already published in `snapshots`), persisting to
    /// `store` when given.
    pub fn new(state: State, snapshots: Snapshots, store: Option<StateFile>) -> Self {
        Self {
            state: Mutex::new(state),
            snapshots,
            store,
            declared: std::sync::Mutex::default(),
            ephemeral: std::sync::Mutex::default(),
            scalers: crate::scaler::Registry::default(),
        }
    }

    /// The autoscaling pools.
    pub fn scalers(&self) -> &crate::scaler::Registry {
        &self.scalers
    }

    /// Marks a replica as started by the local autoscaler (or no longer).
    pub fn set_ephemeral(&self, id: &ReplicaId, ephemeral: bool) {
        let mut set = self.ephemeral.lock().unwrap_or_else(|e| e.into_inner());
        if ephemeral {
            set.insert(id.clone());
        } else {
            set.remove(id);
        }
    }

    /// Whether the local autoscaler started this replica.
    pub fn is_ephemeral(&self, id: &ReplicaId) -> bool {
        self.ephemeral
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(id)
    }

    /// Records what is declared (at start, and on each reload).
    pub fn set_declared(&self, declared: Declared) {
        *self.declared.lock().unwrap_or_else(|e| e.into_inner()) = declared;
    }

    /// What is declared.
    pub fn declared(&self) -> Declared {
        self.declared
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The snapshot workers route with now.
    pub fn snapshot(&self) -> Arc<ReplicaSet> {
        self.snapshots.load()
    }

    /// Where changes are persisted, if anywhere.
    pub fn store(&self) -> Option<&StateFile> {
        self.store.as_ref()
    }

    /// Applies commands in order, all or none: the first refused command
    /// leaves the state as it was. Persists and publishes once if anything
    /// changed.
    pub async fn apply(&self, commands: Vec<Command>) -> Result<Vec<Outcome>, ControlError> {
        // Health verdicts and name resolutions are not runtime changes:
        // published, never written.
        let durable = commands
            .iter()
            .any(|c| !matches!(c, Command::SetHealth { .. } | Command::SetAddress { .. }));
        let mut state = self.state.lock().await;
        let mut next = state.clone();
        let mut outcomes = Vec::with_capacity(commands.len());
        for command in commands {
            outcomes.push(next.apply(command)?);
        }
        if outcomes.contains(&Outcome::Changed) {
            self.commit(&mut state, next, durable).await?;
        }
        Ok(outcomes)
    }

    /// Makes the replica list match what `plan` asks of the current state:
    /// the desired list (and extra commands, e.g. a routing change). The plan,
    /// the difference and the changes all happen under the lock, in one
    /// step, so a change landing meanwhile is neither lost nor undone.
    /// Returns the commands applied. Replicas no longer desired are drained
    /// until `drain_deadline`.
    pub async fn converge(
        &self,
        drain_deadline: SystemTime,
        plan: impl FnOnce(&State) -> (Vec<ReplicaSpec>, Vec<Command>),
    ) -> Result<Vec<Command>, ControlError> {
        let mut state = self.state.lock().await;
        let (mut desired, extra) = plan(&state);
        // The autoscaler's replicas are its own: a converge keeps them.
        for replica in state.replicas() {
            if self.is_ephemeral(&replica.id) && !desired.iter().any(|d| d.id == replica.id) {
                desired.push(ReplicaSpec::of(replica));
            }
        }
        let mut commands = state.diff(&desired, drain_deadline);
        commands.extend(extra);
        let mut next = state.clone();
        let mut changed = false;
        for command in commands.iter().cloned() {
            changed |= next.apply(command)? == Outcome::Changed;
        }
        if changed {
            self.commit(&mut state, next, true).await?;
        }
        Ok(commands)
    }

    /// Writes the autoscaling settings changed at runtime to the state
    /// file (when one is used).
    pub async fn save_scaling(&self) -> Result<(), ControlError> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        let declared = self.declared();
        let mut changed = std::collections::BTreeMap::new();
        for (pool, shared) in self.scalers.all() {
            let base = declared
                .pools
                .iter()
                .find(|p| p.name == pool)
                .and_then(|p| p.autoscaling.as_ref())
                .map(|a| crate::scaler::Settings::declared(a));
            let now = shared.settings();
            if base != Some(now) {
                changed.insert(pool, now);
            }
        }
        store.set_scaling(changed);
        let mut state = self.state.lock().await;
        let same = state.clone();
        self.commit(&mut state, same, true).await
    }

    /// Applies one command.
    pub async fn apply_one(&self, command: Command) -> Result<Outcome, ControlError> {
        Ok(self
            .apply(vec![command])
            .await?
            .pop()
            .unwrap_or(Outcome::NoChange))
    }

    /// A copy of the current state, for reads that need more than the snapshot.
    pub async fn state(&self) -> State {
        self.state.lock().await.clone()
    }

    async fn commit(
        &self,
        state: &mut State,
        next: State,
        durable: bool,
    ) -> Result<(), ControlError> {
        if let Some(store) = self.store.as_ref().filter(|_| durable) {
            let store = store.clone();
            let mut copy = next.clone();
            // The autoscaler's replicas are not runtime changes to keep.
            let ephemeral: Vec<ReplicaId> = copy
                .replicas()
                .iter()
                .filter(|r| self.is_ephemeral(&r.id))
                .map(|r| r.id.clone())
                .collect();
            for id in ephemeral {
                let _ = copy.apply(Command::Remove { id });
            }
            let declared = self.declared();
            let started = std::time::Instant::now();
            let saved = tokio::task::spawn_blocking(move || store.save(&copy, &declared)).await;
            // The state lock is held across the save: a slow disk stalls
            // every admin change and the drain reaper, which an operator
            // should see named.
            let took = started.elapsed();
            if took >= SLOW_SAVE {
                tracing::warn!(
                    took_ms = took.as_millis() as u64,
                    "saving the state file was slow; admin changes waited for it"
                );
            }
            saved.map_err(|e| PersistError::Io {
                path: self
                    .store
                    .as_ref()
                    .map(|s| s.path().to_path_buf())
                    .unwrap_or_default(),
                source: std::io::Error::other(e),
            })??;
        }
        *state = next;
        self.snapshots.publish(state.snapshot());
        Ok(())
    }

    /// Removes draining replicas whose in-flight requests have finished, and
    /// those whose drain deadline passed (their remaining exchanges are cut).
    /// Returns how many were removed.
    pub async fn reap_drained(&self) -> Result<usize, ControlError> {
        let mut state = self.state.lock().await;
        let now = SystemTime::now();
        let mut next = state.clone();
        let mut removed = 0;
        for replica in state.replicas() {
            if replica.state != ReplicaState::Draining {
                continue;
            }
            let idle = replica.stats.in_flight() == 0;
            let expired = replica.drain_deadline.is_some_and(|d| d <= now);
            if !idle && !expired {
                continue;
            }
            if !idle {
                replica.stats.evict();
                tracing::warn!(
                    id = %replica.id,
                    in_flight = replica.stats.in_flight(),
                    "drain timeout passed; closing the replica's remaining connections"
                );
            } else {
                tracing::info!(id = %replica.id, "drained replica removed");
            }
            next.apply(Command::Remove {
                id: replica.id.clone(),
            })?;
            removed += 1;
        }
        if removed > 0 {
            self.commit(&mut state, next, true).await?;
        }
        Ok(removed)
    }

    /// Reaps drained replicas every [`REAP_INTERVAL`] until the process ends.
    pub async fn run_reaper(self: Arc<Self>) {
        loop {
            tokio::time::sleep(REAP_INTERVAL).await;
            if let Err(e) = self.reap_drained().await {
                tracing::error!(error = %e, "cannot remove drained replicas");
            }
        }
    }
}
