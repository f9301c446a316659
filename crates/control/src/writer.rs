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
    Command, Origin, Outcome, PoolName, ReplicaId, ReplicaSet, ReplicaSpec, ReplicaState,
    ReplicaStats, ScalingSettings, Snapshots, State, StateError,
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
    /// In a fleet, etcd cannot be reached: nothing was changed.
    #[error(
        "the change was not made: {0}; this instance serves its last state until etcd is back"
    )]
    Unavailable(crate::cluster::FleetError),
    /// In a fleet, other instances kept changing the state while this one
    /// tried to commit: nothing was changed.
    #[error("the fleet's state kept changing under this change ({0} attempts); try again")]
    Contended(usize),
}

/// How many times a change is tried on a newer fleet record before giving
/// up (each after a short random pause, so that an instance with a queue of
/// changes does not win every race against another's).
const FLEET_ATTEMPTS: usize = 50;

/// What a commit met.
enum Commit {
    Done,
    /// The fleet's record moved on: apply it and try again.
    Behind(Box<crate::cluster::Record>, i64),
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
    /// The autoscaling pools' shared state; their settings are published
    /// here from the state at each commit, as the snapshot is.
    scalers: crate::autoscaling::Registry,
    /// The drain reaper's last error, so a stuck disk is logged once in a
    /// while rather than ten times a second.
    reap_errors: crate::repeats::Repeats,
    /// In a fleet (`[cluster]`), the shared record in etcd, in place of a
    /// state file.
    fleet: Option<Arc<crate::cluster::Fleet>>,
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
            scalers: crate::autoscaling::Registry::default(),
            reap_errors: crate::repeats::Repeats::default(),
            fleet: None,
        }
    }

    /// Commits to the fleet's record in etcd: a member of a fleet.
    pub fn in_fleet(mut self, fleet: Arc<crate::cluster::Fleet>) -> Self {
        self.fleet = Some(fleet);
        self
    }

    /// The fleet this instance is a member of, if any.
    pub fn fleet(&self) -> Option<&Arc<crate::cluster::Fleet>> {
        self.fleet.as_ref()
    }

    /// The autoscaling pools.
    pub fn scalers(&self) -> &crate::autoscaling::Registry {
        &self.scalers
    }

    /// An autoscaling pool's settings in force (declared, or changed at
    /// runtime), as last committed.
    pub async fn scaling(&self, pool: &PoolName) -> Option<ScalingSettings> {
        self.state.lock().await.scaling(pool)
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
    /// leaves the state as it was. Draining replicas that are idle (or past
    /// their deadline) afterwards are removed in the same step, so a drain
    /// of an idle replica and its removal are one change. Makes the result
    /// durable when it holds an operator's change, then publishes it once.
    pub async fn apply(&self, commands: Vec<Command>) -> Result<Vec<Outcome>, ControlError> {
        let mut state = self.state.lock().await;
        self.apply_locked(&mut state, commands).await
    }

    /// Like [`Control::apply`], with the commands planned from the current
    /// state under the lock, so that a change made meanwhile is neither lost
    /// nor overwritten (e.g. two `PATCH`es of different fields). A plan that
    /// refuses changes nothing and its error is returned inside.
    pub async fn apply_planned<E>(
        &self,
        plan: impl Fn(&State) -> Result<Vec<Command>, E>,
    ) -> Result<Result<Vec<Outcome>, E>, ControlError> {
        let mut state = self.state.lock().await;
        for _ in 0..FLEET_ATTEMPTS {
            let commands = match plan(&state) {
                Ok(commands) => commands,
                Err(e) => return Ok(Err(e)),
            };
            match self.try_apply(&mut state, commands).await? {
                (Commit::Done, outcomes) => return Ok(Ok(outcomes)),
                (Commit::Behind(record, revision), _) => {
                    self.adopt_locked(&mut state, *record, revision).await;
                    lost_race().await;
                }
            }
        }
        Err(ControlError::Contended(FLEET_ATTEMPTS))
    }

    async fn apply_locked(
        &self,
        state: &mut State,
        commands: Vec<Command>,
    ) -> Result<Vec<Outcome>, ControlError> {
        for _ in 0..FLEET_ATTEMPTS {
            match self.try_apply(state, commands.clone()).await? {
                (Commit::Done, outcomes) => return Ok(outcomes),
                // Another instance changed the fleet's state first: the
                // commands are checked and applied again on the newer one.
                (Commit::Behind(record, revision), _) => {
                    self.adopt_locked(state, *record, revision).await;
                    lost_race().await;
                }
            }
        }
        Err(ControlError::Contended(FLEET_ATTEMPTS))
    }

    async fn try_apply(
        &self,
        state: &mut State,
        commands: Vec<Command>,
    ) -> Result<(Commit, Vec<Outcome>), ControlError> {
        let mut next = state.clone();
        let mut outcomes = Vec::with_capacity(commands.len());
        let mut durable = false;
        for command in commands {
            durable |= command.is_durable(&next);
            outcomes.push(next.apply(command)?);
        }
        let reaped = self.reap_into(&mut next)?;
        durable |= reaped.durable;
        if outcomes.contains(&Outcome::Changed) || !reaped.removed.is_empty() {
            if let behind @ Commit::Behind(..) = self.commit(state, next, durable).await? {
                return Ok((behind, outcomes));
            }
            reaped.committed();
        }
        Ok((Commit::Done, outcomes))
    }

    /// Makes the other instances' local replicas (`Origin::Peer`) those
    /// given, with whether each drains: new ones join, drained ones stop
    /// taking requests, those no longer reported (their instance scaled
    /// them in, or is gone with its lease) leave. Never written.
    pub async fn sync_peers(&self, peers: Vec<(ReplicaSpec, bool)>) {
        let current: Vec<(ReplicaId, String, ReplicaState)> = self
            .state
            .lock()
            .await
            .replicas()
            .iter()
            .filter(|r| r.origin == Origin::Peer)
            .map(|r| (r.id.clone(), r.address.clone(), r.state))
            .collect();
        let mut commands = Vec::new();
        for (id, address, _) in &current {
            if !peers
                .iter()
                .any(|(p, _)| &p.id == id && &p.address == address)
            {
                commands.push(Command::Remove { id: id.clone() });
            }
        }
        for (spec, draining) in peers {
            let wanted = if draining {
                ReplicaState::Draining
            } else {
                ReplicaState::Active
            };
            match current
                .iter()
                .find(|(id, address, _)| id == &spec.id && address == &spec.address)
            {
                None => {
                    let id = spec.id.clone();
                    commands.push(Command::AdmitPeer(spec));
                    if draining {
                        commands.push(Command::SetState { id, state: wanted });
                    }
                }
                Some((id, _, state)) if *state != wanted => commands.push(Command::SetState {
                    id: id.clone(),
                    state: wanted,
                }),
                Some(_) => {}
            }
        }
        for command in commands {
            if let Err(error) = self.apply_one(command.clone()).await {
                tracing::warn!(?command, %error, "another instance's local replica cannot be routed here");
            }
        }
    }

    /// Writes the current state as the fleet's record (when etcd lost it);
    /// a record another instance wrote meanwhile is applied instead.
    pub async fn rewrite_fleet_record(&self) {
        let Some(fleet) = &self.fleet else { return };
        let mut state = self.state.lock().await;
        match fleet.commit(&state, &self.declared()).await {
            Ok(Ok(revision)) => fleet.set_revision(revision),
            Ok(Err((record, revision))) => self.adopt_locked(&mut state, record, revision).await,
            Err(error) => tracing::warn!(%error, "cannot write the fleet's record back"),
        }
    }

    /// Applies the fleet's record at `revision` (another instance's change),
    /// unless this instance has applied it already.
    pub async fn adopt(&self, record: crate::cluster::Record, revision: i64) {
        let mut state = self.state.lock().await;
        self.adopt_locked(&mut state, record, revision).await;
    }

    async fn adopt_locked(&self, state: &mut State, record: crate::cluster::Record, revision: i64) {
        let Some(fleet) = &self.fleet else { return };
        if revision <= fleet.revision() {
            return;
        }
        let pools = self.declared().pools;
        // Host names in the record are resolved off the control thread.
        let (routing, safeguards) = (state.routing(), state.safeguards());
        let by = record_by(&record);
        let reader = Arc::clone(fleet);
        let target = tokio::task::spawn_blocking(move || {
            reader.state_of(&record, routing, safeguards, &pools)
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        let (target, declared) = match target {
            Ok(found) => found,
            Err(reason) => {
                tracing::error!(revision, %reason, "the fleet's record cannot be applied; keeping the last state");
                return;
            }
        };
        let mut next = state.clone();
        let mut changes = 0;
        for command in state.converge_to(&target) {
            match next.apply(command.clone()) {
                Ok(Outcome::Changed) => changes += 1,
                Ok(Outcome::NoChange) => {}
                Err(error) => {
                    tracing::error!(revision, ?command, %error, "a change from the fleet cannot be applied here; skipped")
                }
            }
        }
        self.set_declared(declared);
        fleet.set_revision(revision);
        fleet.note_drains(&next, revision);
        if changes > 0 {
            tracing::info!(revision, changes, by, "the fleet's state changed");
            self.publish(state, next);
        }
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
        plan: impl Fn(&State) -> (Vec<ReplicaSpec>, Vec<Command>),
    ) -> Result<Vec<Command>, ControlError> {
        let mut state = self.state.lock().await;
        for _ in 0..FLEET_ATTEMPTS {
            let (desired, extra) = plan(&state);
            // `diff` keeps the local scaler's replicas: they are its own.
            let mut commands = state.diff(&desired, drain_deadline);
            commands.extend(extra);
            let mut next = state.clone();
            let mut changed = false;
            for command in commands.iter().cloned() {
                changed |= next.apply(command)? == Outcome::Changed;
            }
            let reaped = self.reap_into(&mut next)?;
            if changed || !reaped.removed.is_empty() {
                if let Commit::Behind(record, revision) =
                    self.commit(&mut state, next, true).await?
                {
                    self.adopt_locked(&mut state, *record, revision).await;
                    lost_race().await;
                    continue;
                }
                reaped.committed();
            }
            return Ok(commands);
        }
        Err(ControlError::Contended(FLEET_ATTEMPTS))
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

    /// Makes `next` durable (when `durable` and a state file is used), then
    /// current, then published: a failed write changes nothing.
    async fn commit(
        &self,
        state: &mut State,
        next: State,
        durable: bool,
    ) -> Result<Commit, ControlError> {
        if let Some(fleet) = self.fleet.as_ref().filter(|_| durable) {
            match fleet.commit(&next, &self.declared()).await {
                Ok(Ok(revision)) => {
                    fleet.set_revision(revision);
                    fleet.note_drains(&next, revision);
                }
                Ok(Err((record, revision))) => {
                    return Ok(Commit::Behind(Box::new(record), revision))
                }
                Err(error) => return Err(ControlError::Unavailable(error)),
            }
        }
        if let Some(store) = self.store.as_ref().filter(|_| durable) {
            let store = store.clone();
            let copy = next.clone();
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
        self.publish(state, next);
        Ok(Commit::Done)
    }

    /// Makes `next` current and publishes it.
    fn publish(&self, state: &mut State, next: State) {
        *state = next;
        self.snapshots.publish(state.snapshot());
        for (pool, shared) in self.scalers.all() {
            if let Some(settings) = state.scaling(&pool) {
                shared.publish_settings(settings);
            }
        }
    }

    /// Removes draining replicas whose in-flight requests have finished, and
    /// those whose drain deadline passed (their remaining exchanges are cut).
    /// Returns how many were removed.
    pub async fn reap_drained(&self) -> Result<usize, ControlError> {
        let mut state = self.state.lock().await;
        let mut next = state.clone();
        let reaped = self.reap_into(&mut next)?;
        if !reaped.removed.is_empty() {
            match self.commit(&mut state, next, reaped.durable).await? {
                Commit::Done => reaped.committed(),
                // Another instance changed the state: the next round sees it.
                Commit::Behind(record, revision) => {
                    self.adopt_locked(&mut state, *record, revision).await;
                    return Ok(0);
                }
            }
        }
        Ok(reaped.removed.len())
    }

    /// [`reap_into`], where a fleet's replica counts as idle only when no
    /// other instance has requests in flight to it either.
    fn reap_into(&self, state: &mut State) -> Result<Reaped, StateError> {
        reap_into(state, &|replica: &inferlb_core::Replica| {
            replica.origin != Origin::Operator
                || self
                    .fleet
                    .as_ref()
                    .is_none_or(|fleet| fleet.idle_elsewhere(&replica.id))
        })
    }

    /// Reaps drained replicas every [`REAP_INTERVAL`] until the process ends.
    pub async fn run_reaper(self: Arc<Self>) {
        loop {
            tokio::time::sleep(REAP_INTERVAL).await;
            match self.reap_drained().await {
                Ok(_) => self.reap_errors.clear(),
                Err(e) => self.reap_errors.error(&e, "cannot remove drained replicas"),
            }
        }
    }
}

/// What reaping removed.
#[derive(Debug, Default)]
struct Reaped {
    /// Each removed replica, with its counters when it ran out of time (its
    /// remaining exchanges are cut once the removal is committed).
    removed: Vec<(ReplicaId, Option<Arc<ReplicaStats>>)>,
    /// An operator's replica was among them: the removal is a runtime
    /// change to write.
    durable: bool,
}

impl Reaped {
    /// Once the removal is committed and published: cuts what still flows
    /// to the replicas out of time, and says what was removed. Never
    /// earlier: a removal that is not committed (etcd unreachable, another
    /// instance first) leaves the replica routed, and cutting it then
    /// would fail requests it still takes.
    fn committed(&self) {
        for (id, cut) in &self.removed {
            match cut {
                None => tracing::info!(%id, "drained replica removed"),
                Some(stats) => {
                    stats.evict();
                    tracing::warn!(%id, "drain timeout passed; the replica's remaining connections were closed");
                }
            }
        }
    }
}

/// Removes from `state` the draining replicas that are idle or past their
/// deadline; those past it are to have their remaining exchanges cut
/// ([`Reaped::committed`]).
fn reap_into(
    state: &mut State,
    idle_elsewhere: &dyn Fn(&inferlb_core::Replica) -> bool,
) -> Result<Reaped, StateError> {
    let now = SystemTime::now();
    let mut reaped = Reaped::default();
    let done: Vec<(ReplicaId, Option<Arc<ReplicaStats>>, bool)> = state
        .replicas()
        .iter()
        // Another instance's replica drains and leaves as it reports.
        .filter(|r| r.state == ReplicaState::Draining && r.origin != Origin::Peer)
        .filter_map(|replica| {
            let idle = replica.stats.in_flight() == 0 && idle_elsewhere(replica);
            let expired = replica.drain_deadline.is_some_and(|d| d <= now);
            if !idle && !expired {
                return None;
            }
            let cut = (!idle).then(|| Arc::clone(&replica.stats));
            let operator = replica.origin == Origin::Operator;
            Some((replica.id.clone(), cut, operator))
        })
        .collect();
    for (id, cut, operator) in done {
        state.apply(Command::Remove { id: id.clone() })?;
        reaped.removed.push((id, cut));
        reaped.durable |= operator;
    }
    Ok(reaped)
}

/// A pause of 1–10 ms after losing a commit race to another instance.
async fn lost_race() {
    tokio::time::sleep(Duration::from_micros(fastrand::u64(1_000..10_000))).await;
}

fn record_by(record: &crate::cluster::Record) -> String {
    record.by().to_owned()
}
