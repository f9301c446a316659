//! Commands that change the replica list, and the state they apply to.
//!
//! The admin API, the config file (on reload), health checks and the
//! autoscaler all speak [`Command`]; [`State::apply`] runs them one at a time
//! and each change yields the next [`ReplicaSet`] to publish.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use crate::pool::{PoolName, PoolSpec};
use crate::prefix::PrefixTable;
use crate::replica::{Health, Origin, Replica, ReplicaId, ReplicaState};
use crate::replica_set::{PoolEntry, ReplicaSet, Safeguards};
use crate::routing::Routing;
use crate::scaling::{PoolQueue, ScalingSettings};

/// A replica as declared by an operator or a discovery source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaSpec {
    /// Stable id.
    pub id: ReplicaId,
    /// The address as written.
    pub address: String,
    /// The resolved address.
    pub addr: SocketAddr,
    /// Relative share of requests.
    pub weight: u32,
    /// The pool (model) it serves.
    pub pool: PoolName,
}

impl ReplicaSpec {
    /// The declaration that would make `replica` again.
    pub fn of(replica: &Replica) -> Self {
        Self {
            id: replica.id.clone(),
            address: replica.address.clone(),
            addr: replica.addr,
            weight: replica.weight,
            pool: replica.pool.clone(),
        }
    }
}

/// One change to the replica list.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Adds an active replica.
    Add(ReplicaSpec),
    /// A replica the pool's local scaler started passed its checks and
    /// joins the pool. Like `Add`, but the replica is the scaler's: never
    /// persisted, and kept by `diff` (a `PUT` or a reload leaves it alone).
    Admit(ReplicaSpec),
    /// Another instance's local replica (`Origin::Peer`): like `Admit`,
    /// never persisted, kept by `diff`.
    AdmitPeer(ReplicaSpec),
    /// Changes a replica's weight.
    SetWeight { id: ReplicaId, weight: u32 },
    /// Drains a replica (no new requests) or takes a draining one back.
    /// Draining this way sets no deadline; see [`Command::Drain`].
    SetState { id: ReplicaId, state: ReplicaState },
    /// Drains a replica until its in-flight requests finish or `deadline`
    /// passes, whichever is first (an ALB target's deregistration delay).
    Drain { id: ReplicaId, deadline: SystemTime },
    /// Removes a replica from the snapshot at once; drain it first.
    Remove { id: ReplicaId },
    /// Changes the routing rule.
    SetRouting(Routing),
    /// Records an active health-check verdict.
    SetHealth { id: ReplicaId, health: Health },
    /// Changes the slow-start and fail-open settings.
    SetSafeguards(Safeguards),
    /// A replica's host name now resolves to `addr`: when that differs (or
    /// it did not resolve before), the replica is replaced by a fresh one
    /// at the new address under the same id and weight — requests in
    /// flight to the old address finish, new ones go to the new one, which
    /// ramps up under slow start. A draining replica keeps its address.
    SetAddress { id: ReplicaId, addr: SocketAddr },
    /// Declares a pool or changes its declaration (aliases, routing,
    /// settings). Replicas name their pool; a pool they name that is not
    /// declared exists with default settings.
    SetPool(Box<PoolSpec>),
    /// Drops a pool's declaration; its replicas (if any) keep it alive with
    /// default settings until they are gone.
    RemovePool { name: PoolName },
    /// Changes an autoscaling pool's runtime settings (checked by the
    /// caller against the pool's declaration).
    SetScaling {
        pool: PoolName,
        settings: ScalingSettings,
    },
    /// The LoRA adapters a pool's replicas list in `/v1/models` (entries
    /// with a `parent`), learned by the control plane: routed to the pool
    /// like its declared `adapters`. Measurements, never written.
    LearnAdapters {
        pool: PoolName,
        adapters: Vec<String>,
    },
}

impl Command {
    /// Whether the command is a runtime change an operator made, to be
    /// written to the state file before it takes effect. Health verdicts,
    /// name resolutions and the local scaler's replicas are not: they are
    /// published, never written, so a full disk cannot stop them.
    pub fn is_durable(&self, state: &State) -> bool {
        let scaler_replica =
            |id: &ReplicaId| state.get(id).is_some_and(|r| r.origin != Origin::Operator);
        match self {
            Command::SetHealth { .. }
            | Command::SetAddress { .. }
            | Command::Admit(_)
            | Command::AdmitPeer(_)
            | Command::LearnAdapters { .. } => false,
            Command::SetWeight { id, .. }
            | Command::SetState { id, .. }
            | Command::Drain { id, .. }
            | Command::Remove { id } => !scaler_replica(id),
            Command::Add(_)
            | Command::SetRouting(_)
            | Command::SetSafeguards(_)
            | Command::SetPool(_)
            | Command::RemovePool { .. }
            | Command::SetScaling { .. } => true,
        }
    }
}

/// Why a command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// No replica has this id.
    #[error("no replica has id {id}")]
    NotFound { id: ReplicaId },
    /// The id is taken.
    #[error("a replica with id {id} already exists")]
    IdExists { id: ReplicaId },
    /// Another replica already has this address.
    #[error("replica {id} already has address {address}")]
    AddressExists { id: ReplicaId, address: String },
    /// No pool has this name.
    #[error("no pool is named {name}")]
    PoolNotFound { name: PoolName },
    /// Another pool already uses this name or alias.
    #[error("model name {alias:?} is already served by pool {pool}")]
    AliasTaken { alias: String, pool: PoolName },
    /// The pool is not declared with `[pools.autoscaling]`.
    #[error("pool {pool} does not autoscale: declare [pools.autoscaling] in the config")]
    NotAutoscaling { pool: PoolName },
}

/// What applying a command did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The replica list changed; a new snapshot should be published.
    Changed,
    /// The command asked for what was already true.
    NoChange,
}

/// The control plane's replica list; the source of every snapshot.
#[derive(Debug, Clone)]
pub struct State {
    generation: u64,
    routing: Routing,
    safeguards: Safeguards,
    replicas: Vec<Replica>,
    pools: Vec<PoolSpec>,
    /// Autoscaling settings changed at runtime, by pool; a pool not here
    /// runs with what its declaration says.
    scaling: BTreeMap<PoolName, ScalingSettings>,
    /// `prefix` routing's tables by pool, kept across snapshots and shared
    /// by every copy of the state.
    tables: Arc<Mutex<HashMap<PoolName, Arc<PrefixTable>>>>,
    /// Autoscaling pools' queues of held requests, kept the same way.
    queues: Arc<Mutex<HashMap<PoolName, Arc<PoolQueue>>>>,
    /// LoRA adapters learned from the replicas' model lists, by pool.
    learned_adapters: BTreeMap<PoolName, Vec<String>>,
}

/// Sets `slot` to `value`: `Changed` when it was something else.
fn replace<T: PartialEq>(slot: &mut T, value: T) -> Outcome {
    if *slot == value {
        Outcome::NoChange
    } else {
        *slot = value;
        Outcome::Changed
    }
}

impl State {
    /// An empty list with a routing rule.
    pub fn new(routing: Routing) -> Self {
        Self {
            generation: 0,
            routing,
            safeguards: Safeguards::default(),
            replicas: Vec::new(),
            pools: Vec::new(),
            scaling: BTreeMap::new(),
            tables: Arc::default(),
            queues: Arc::default(),
            learned_adapters: BTreeMap::new(),
        }
    }

    /// A state restored from disk: replicas as they were, generation 1.
    pub fn restore(routing: Routing, replicas: Vec<Replica>) -> Self {
        Self {
            generation: 1,
            routing,
            safeguards: Safeguards::default(),
            replicas,
            pools: Vec::new(),
            scaling: BTreeMap::new(),
            tables: Arc::default(),
            queues: Arc::default(),
            learned_adapters: BTreeMap::new(),
        }
    }

    /// The declared pools, in the order they were declared.
    pub fn pools(&self) -> &[PoolSpec] {
        &self.pools
    }

    /// A declared pool by name.
    pub fn pool(&self, name: &PoolName) -> Option<&PoolSpec> {
        self.pools.iter().find(|p| &p.name == name)
    }

    /// An autoscaling pool's settings in force: changed at runtime, else
    /// declared. `None` when the pool does not autoscale.
    pub fn scaling(&self, pool: &PoolName) -> Option<ScalingSettings> {
        let declared = self.pool(pool)?.autoscaling.as_deref()?;
        Some(
            self.scaling
                .get(pool)
                .copied()
                .unwrap_or_else(|| ScalingSettings::declared(declared)),
        )
    }

    /// The autoscaling settings changed at runtime, by pool.
    pub fn scaling_changes(&self) -> &BTreeMap<PoolName, ScalingSettings> {
        &self.scaling
    }

    /// The names of every pool: declared ones, then those only replicas name.
    pub fn pool_names(&self) -> Vec<PoolName> {
        let mut names: Vec<PoolName> = self.pools.iter().map(|p| p.name.clone()).collect();
        for r in &self.replicas {
            if !names.contains(&r.pool) {
                names.push(r.pool.clone());
            }
        }
        names
    }

    /// Refuses a pool whose name or aliases another pool already uses.
    fn check_names(&self, spec: &PoolSpec) -> Result<(), StateError> {
        for other in self.pools.iter().filter(|p| p.name != spec.name) {
            let taken = std::iter::once(spec.name.as_str())
                .chain(spec.aliases.iter().map(String::as_str))
                .find(|n| other.name.as_str() == *n || other.aliases.iter().any(|a| a == n));
            if let Some(alias) = taken {
                return Err(StateError::AliasTaken {
                    alias: alias.to_owned(),
                    pool: other.name.clone(),
                });
            }
        }
        Ok(())
    }

    /// The replicas, in the order they were added.
    pub fn replicas(&self) -> &[Replica] {
        &self.replicas
    }

    /// The slow-start and fail-open settings.
    pub fn safeguards(&self) -> Safeguards {
        self.safeguards
    }

    /// The routing rule.
    pub fn routing(&self) -> Routing {
        self.routing
    }

    /// The generation of the last change.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// A replica by id.
    pub fn get(&self, id: &ReplicaId) -> Option<&Replica> {
        self.replicas.iter().find(|r| &r.id == id)
    }

    fn position(&self, id: &ReplicaId) -> Result<usize, StateError> {
        self.replicas
            .iter()
            .position(|r| &r.id == id)
            .ok_or_else(|| StateError::NotFound { id: id.clone() })
    }

    /// Applies one command; on `Changed` the generation moves on.
    pub fn apply(&mut self, command: Command) -> Result<Outcome, StateError> {
        let outcome = match command {
            Command::Add(spec) => self.add(spec, Origin::Operator)?,
            Command::Admit(spec) => self.add(spec, Origin::Scaler)?,
            Command::AdmitPeer(spec) => self.add(spec, Origin::Peer)?,
            Command::SetWeight { id, weight } => {
                replace(&mut self.replica_mut(&id)?.weight, weight)
            }
            Command::SetState { id, state } => self.set_state(&id, state)?,
            Command::Drain { id, deadline } => self.drain(&id, deadline)?,
            Command::Remove { id } => self.remove(&id)?,
            Command::SetHealth { id, health } => self.set_health(&id, health)?,
            Command::SetAddress { id, addr } => self.set_address(id, addr)?,
            Command::SetPool(spec) => self.set_pool(*spec)?,
            Command::RemovePool { name } => self.remove_pool(&name)?,
            Command::SetScaling { pool, settings } => self.set_scaling(pool, settings)?,
            Command::SetSafeguards(safeguards) => replace(&mut self.safeguards, safeguards),
            Command::SetRouting(routing) => replace(&mut self.routing, routing),
            Command::LearnAdapters { pool, mut adapters } => {
                adapters.retain(|a| crate::pool::check_alias(a).is_ok());
                adapters.sort();
                adapters.dedup();
                if adapters.is_empty() {
                    match self.learned_adapters.remove(&pool) {
                        Some(_) => Outcome::Changed,
                        None => Outcome::NoChange,
                    }
                } else {
                    replace(self.learned_adapters.entry(pool).or_default(), adapters)
                }
            }
        };
        if outcome == Outcome::Changed {
            self.generation += 1;
        }
        Ok(outcome)
    }

    fn replica_mut(&mut self, id: &ReplicaId) -> Result<&mut Replica, StateError> {
        let at = self.position(id)?;
        Ok(&mut self.replicas[at])
    }

    fn set_state(&mut self, id: &ReplicaId, state: ReplicaState) -> Result<Outcome, StateError> {
        let replica = self.replica_mut(id)?;
        if replica.state == state {
            return Ok(Outcome::NoChange);
        }
        replica.state = state;
        replica.drain_deadline = None;
        Ok(Outcome::Changed)
    }

    fn drain(&mut self, id: &ReplicaId, deadline: SystemTime) -> Result<Outcome, StateError> {
        let replica = self.replica_mut(id)?;
        // Draining again keeps the drain that runs: a repeated or concurrent
        // DELETE cannot push its deadline out. Only an earlier deadline
        // (e.g. `drain_timeout_s=0`) moves it.
        if replica.state == ReplicaState::Draining
            && replica.drain_deadline.is_some_and(|d| d <= deadline)
        {
            return Ok(Outcome::NoChange);
        }
        replica.state = ReplicaState::Draining;
        replica.drain_deadline = Some(deadline);
        Ok(Outcome::Changed)
    }

    fn remove(&mut self, id: &ReplicaId) -> Result<Outcome, StateError> {
        let at = self.position(id)?;
        let removed = self.replicas.remove(at);
        if let Some(table) = self.table_of(&removed.pool) {
            table.forget(removed.uid);
        }
        Ok(Outcome::Changed)
    }

    fn set_health(&mut self, id: &ReplicaId, health: Health) -> Result<Outcome, StateError> {
        let replica = self.replica_mut(id)?;
        if replica.health == health {
            return Ok(Outcome::NoChange);
        }
        replica.health = health;
        if health == Health::Healthy {
            // A recovered replica ramps up again.
            replica.ramp_from_ms = crate::clock::now_ms();
        }
        Ok(Outcome::Changed)
    }

    fn set_address(&mut self, id: ReplicaId, addr: SocketAddr) -> Result<Outcome, StateError> {
        let at = self.position(&id)?;
        let replica = &self.replicas[at];
        if (replica.resolved && replica.addr == addr) || replica.state == ReplicaState::Draining {
            return Ok(Outcome::NoChange);
        }
        if let Some(other) = self.replicas.iter().find(|r| r.id != id && r.addr == addr) {
            return Err(StateError::AddressExists {
                id: other.id.clone(),
                address: addr.to_string(),
            });
        }
        let mut fresh = Replica::new(id, replica.address.clone(), addr, replica.weight)
            .in_pool(replica.pool.clone());
        fresh.origin = replica.origin;
        self.replicas[at] = fresh;
        Ok(Outcome::Changed)
    }

    fn set_pool(&mut self, spec: PoolSpec) -> Result<Outcome, StateError> {
        self.check_names(&spec)?;
        if spec.autoscaling.is_none() {
            self.scaling.remove(&spec.name);
        }
        Ok(match self.pools.iter_mut().find(|p| p.name == spec.name) {
            Some(current) => replace(current, spec),
            None => {
                self.pools.push(spec);
                Outcome::Changed
            }
        })
    }

    fn remove_pool(&mut self, name: &PoolName) -> Result<Outcome, StateError> {
        let at = self
            .pools
            .iter()
            .position(|p| &p.name == name)
            .ok_or_else(|| StateError::PoolNotFound { name: name.clone() })?;
        self.pools.remove(at);
        self.scaling.remove(name);
        Ok(Outcome::Changed)
    }

    fn set_scaling(
        &mut self,
        pool: PoolName,
        settings: ScalingSettings,
    ) -> Result<Outcome, StateError> {
        let current = self
            .scaling(&pool)
            .ok_or_else(|| StateError::NotAutoscaling { pool: pool.clone() })?;
        if current == settings {
            return Ok(Outcome::NoChange);
        }
        self.scaling.insert(pool, settings);
        Ok(Outcome::Changed)
    }

    fn add(&mut self, spec: ReplicaSpec, origin: Origin) -> Result<Outcome, StateError> {
        if self.get(&spec.id).is_some() {
            return Err(StateError::IdExists { id: spec.id });
        }
        if let Some(other) = self.replicas.iter().find(|r| r.addr == spec.addr) {
            return Err(StateError::AddressExists {
                id: other.id.clone(),
                address: spec.address,
            });
        }
        let mut replica =
            Replica::new(spec.id, spec.address, spec.addr, spec.weight).in_pool(spec.pool);
        replica.origin = origin;
        self.replicas.push(replica);
        Ok(Outcome::Changed)
    }

    fn table_of(&self, pool: &PoolName) -> Option<Arc<PrefixTable>> {
        let tables = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        tables.get(pool).cloned()
    }

    /// The snapshot of the current list, for the workers. A pool that routes
    /// by prefix keeps its table from one snapshot to the next.
    pub fn snapshot(&self) -> ReplicaSet {
        let mut tables = self.tables.lock().unwrap_or_else(|e| e.into_inner());
        let mut entries = Vec::new();
        for name in self.pool_names() {
            let mut spec = self
                .pool(&name)
                .cloned()
                .unwrap_or_else(|| PoolSpec::named(name.clone()));
            for adapter in self.learned_adapters.get(&name).into_iter().flatten() {
                if !spec.is_adapter(adapter) {
                    spec.adapters.push(adapter.clone());
                }
            }
            let table = (spec.routing.unwrap_or(self.routing) == Routing::Prefix).then(|| {
                let table = tables
                    .entry(name.clone())
                    .or_insert_with(|| Arc::new(PrefixTable::new(spec.prefix.max_tree_bytes)));
                Arc::clone(table)
            });
            let queue = spec.autoscaling.is_some().then(|| {
                let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
                Arc::clone(queues.entry(name.clone()).or_default())
            });
            entries.push(PoolEntry { spec, table, queue });
        }
        // Tables of pools gone or no longer routing by prefix are dropped.
        tables.retain(|name, _| {
            entries
                .iter()
                .any(|e| &e.spec.name == name && e.table.is_some())
        });
        ReplicaSet::with_pools(
            self.generation,
            self.routing,
            self.safeguards,
            self.replicas.clone(),
            &entries,
        )
    }

    /// The commands that make the declared pools `desired`: each new or
    /// changed declaration set, each declaration no longer wanted removed.
    pub fn diff_pools(&self, desired: &[PoolSpec]) -> Vec<Command> {
        let mut commands: Vec<Command> = self
            .pools
            .iter()
            .filter(|p| !desired.iter().any(|d| d.name == p.name))
            .map(|p| Command::RemovePool {
                name: p.name.clone(),
            })
            .collect();
        for spec in desired {
            if self.pool(&spec.name) != Some(spec) {
                commands.push(Command::SetPool(Box::new(spec.clone())));
            }
        }
        commands
    }

    /// The commands that turn this list into `desired`: adds, weight changes,
    /// drains of replicas no longer declared, and un-drains of replicas
    /// declared again. A replica whose address changed under the same id is
    /// taken out and added again at the new address (`Remove` then `Add`):
    /// requests in flight to the old address finish, new ones go to the new
    /// one, and its counters start afresh. Drains get `drain_deadline`. The
    /// local scaler's replicas are its own: they are kept.
    pub fn diff(&self, desired: &[ReplicaSpec], drain_deadline: SystemTime) -> Vec<Command> {
        let mut commands = Vec::new();
        for spec in desired {
            match self.get(&spec.id) {
                None => commands.push(Command::Add(spec.clone())),
                Some(current)
                    if current.addr != spec.addr
                        || current.address != spec.address
                        || current.pool != spec.pool =>
                {
                    commands.push(Command::Remove {
                        id: spec.id.clone(),
                    });
                    commands.push(Command::Add(spec.clone()));
                }
                Some(current) => {
                    if current.weight != spec.weight {
                        commands.push(Command::SetWeight {
                            id: spec.id.clone(),
                            weight: spec.weight,
                        });
                    }
                    if current.state == ReplicaState::Draining {
                        commands.push(Command::SetState {
                            id: spec.id.clone(),
                            state: ReplicaState::Active,
                        });
                    }
                }
            }
        }
        for current in &self.replicas {
            let declared = desired.iter().any(|s| s.id == current.id);
            if !declared
                && current.state != ReplicaState::Draining
                && current.origin == Origin::Operator
            {
                commands.push(Command::Drain {
                    id: current.id.clone(),
                    deadline: drain_deadline,
                });
            }
        }
        commands
    }

    /// The commands that make this state's operator replicas, pools and
    /// runtime autoscaling settings those of `target`: what an instance of
    /// a fleet applies when another instance changed the shared state.
    /// Unlike [`State::diff`] it is exact: a replica `target` no longer has
    /// is removed at once (the fleet removes a replica only once it is
    /// drained everywhere, or past its deadline), and drains keep
    /// `target`'s deadline. A replica is the same one while its address as
    /// written and its pool are: each instance resolves names itself. The
    /// local scaler's replicas and health verdicts are this instance's own
    /// and are kept.
    pub fn converge_to(&self, target: &State) -> Vec<Command> {
        let mut commands = Vec::new();
        let operators = |s: &State| -> Vec<Replica> {
            s.replicas
                .iter()
                .filter(|r| r.origin == Origin::Operator)
                .cloned()
                .collect()
        };
        let wanted = operators(target);
        for current in operators(self) {
            let kept = wanted.iter().any(|w| {
                w.id == current.id && w.address == current.address && w.pool == current.pool
            });
            if !kept {
                commands.push(Command::Remove {
                    id: current.id.clone(),
                });
            }
        }
        for want in &wanted {
            let current = self
                .get(&want.id)
                .filter(|c| c.address == want.address && c.pool == want.pool);
            let Some(current) = current else {
                commands.push(Command::Add(ReplicaSpec::of(want)));
                if want.state == ReplicaState::Draining {
                    commands.push(drain_as(want));
                }
                continue;
            };
            if current.weight != want.weight {
                commands.push(Command::SetWeight {
                    id: want.id.clone(),
                    weight: want.weight,
                });
            }
            if current.state != want.state || current.drain_deadline != want.drain_deadline {
                commands.push(match want.state {
                    ReplicaState::Draining => drain_as(want),
                    ReplicaState::Active => Command::SetState {
                        id: want.id.clone(),
                        state: ReplicaState::Active,
                    },
                });
            }
        }
        commands.extend(self.diff_pools(target.pools()));
        for (pool, settings) in target.scaling_changes() {
            if self.scaling_changes().get(pool) != Some(settings) {
                commands.push(Command::SetScaling {
                    pool: pool.clone(),
                    settings: *settings,
                });
            }
        }
        commands
    }
}

/// The command that drains a replica as `want` is drained: until its
/// deadline, or without one.
fn drain_as(want: &Replica) -> Command {
    match want.drain_deadline {
        Some(deadline) => Command::Drain {
            id: want.id.clone(),
            deadline,
        },
        None => Command::SetState {
            id: want.id.clone(),
            state: ReplicaState::Draining,
        },
    }
}

#[cfg(test)]
mod tests;
