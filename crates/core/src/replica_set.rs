//! The immutable snapshot the data plane routes with, and its publisher.

use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::balance::{Balancer, Cursor, Routing, Tried, View};
use crate::replica::Replica;
use crate::replica::{Health, ReplicaState};

/// One published view of the replicas: what every worker routes with until
/// the next generation is published. Never mutated after it is built.
pub struct ReplicaSet {
    generation: u64,
    routing: Routing,
    policy: Policy,
    replicas: Vec<Replica>,
    balancer: Box<dyn Balancer>,
    failing_open: bool,
}

/// Routing settings every snapshot carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Slow-start ramp of new and recovered replicas, ms; 0 is off.
    pub slow_start_ms: u64,
    /// When every active replica is unhealthy, route to all of them anyway
    /// (ALB's fail-open) rather than answer 503.
    pub fail_open: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            slow_start_ms: 0,
            fail_open: true,
        }
    }
}

impl ReplicaSet {
    /// Builds a snapshot and its balancer with the default policy.
    pub fn new(generation: u64, routing: Routing, replicas: Vec<Replica>) -> Self {
        Self::with_policy(generation, routing, Policy::default(), replicas)
    }

    /// Builds a snapshot and its balancer.
    pub fn with_policy(
        generation: u64,
        routing: Routing,
        policy: Policy,
        replicas: Vec<Replica>,
    ) -> Self {
        // Failing open never reaches a replica whose name does not resolve.
        let active = |r: &Replica| r.state == ReplicaState::Active && r.weight > 0 && r.resolved;
        let mut routable: Vec<bool> = replicas.iter().map(Replica::is_routable).collect();
        let failing_open =
            policy.fail_open && replicas.iter().any(active) && !routable.contains(&true);
        if failing_open {
            // Every active replica failed its checks: the checks are more
            // likely wrong than the whole fleet, so route to all of them.
            routable = replicas
                .iter()
                .map(|r| active(r) && r.health == Health::Unhealthy)
                .collect();
        }
        let balancer = routing.build(&replicas, &routable);
        Self {
            generation,
            routing,
            policy,
            replicas,
            balancer,
            failing_open,
        }
    }

    /// Whether every active replica is unhealthy and routing fails open.
    pub fn failing_open(&self) -> bool {
        self.failing_open
    }

    /// The routing settings.
    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// An empty snapshot (generation 0): every request gets 503.
    pub fn empty(routing: Routing) -> Self {
        Self::new(0, routing, Vec::new())
    }

    /// Increases by one with every published change.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The routing rule the balancer was built with.
    pub fn routing(&self) -> Routing {
        self.routing
    }

    /// Every replica, routable or not, in a stable order.
    pub fn replicas(&self) -> &[Replica] {
        &self.replicas
    }

    /// Whether at least one replica takes new requests.
    pub fn has_routable(&self) -> bool {
        self.failing_open || self.replicas.iter().any(Replica::is_routable)
    }

    /// Picks a replica for the next request, skipping those already tried.
    #[inline]
    pub fn pick(&self, cursor: &mut Cursor, tried: &Tried) -> Option<&Replica> {
        self.pick_index(cursor, tried).map(|i| &self.replicas[i])
    }

    /// Like [`pick`](Self::pick), but returns the index (for [`Tried`]).
    #[inline]
    pub fn pick_index(&self, cursor: &mut Cursor, tried: &Tried) -> Option<usize> {
        self.pick_at(cursor, tried, crate::clock::now_ms())
    }

    /// Picks as of `now_ms` (penalties, ejections and slow start depend on it).
    #[inline]
    pub fn pick_at(&self, cursor: &mut Cursor, tried: &Tried, now_ms: u64) -> Option<usize> {
        let view = View {
            replicas: &self.replicas,
            tried,
            now_ms,
            slow_start_ms: self.policy.slow_start_ms,
        };
        self.balancer.pick(&view, cursor)
    }
}

impl fmt::Debug for ReplicaSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplicaSet")
            .field("generation", &self.generation)
            .field("routing", &self.routing)
            .field("replicas", &self.replicas.len())
            .finish()
    }
}

/// Where the control plane publishes snapshots and workers load them.
///
/// Loading is wait-free for readers (arc-swap), so publishing a new snapshot
/// never stalls a request; a worker sees it from its next pick.
#[derive(Debug, Clone)]
pub struct Snapshots(Arc<ArcSwap<ReplicaSet>>);

impl Snapshots {
    /// Starts with `initial` published.
    pub fn new(initial: ReplicaSet) -> Self {
        Self(Arc::new(ArcSwap::from_pointee(initial)))
    }

    /// The current snapshot.
    pub fn load(&self) -> Arc<ReplicaSet> {
        self.0.load_full()
    }

    /// Publishes a new snapshot for every worker's next pick.
    pub fn publish(&self, set: ReplicaSet) {
        self.0.store(Arc::new(set));
    }

    /// The swap cell itself, for callers that keep an `arc_swap::Cache`.
    pub fn cell(&self) -> &Arc<ArcSwap<ReplicaSet>> {
        &self.0
    }
}
