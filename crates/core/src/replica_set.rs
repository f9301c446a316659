//! The immutable snapshot the data plane routes with, and its publisher.

use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::balance::{Balancer, Cursor, Routing, Tried};
use crate::replica::Replica;

/// One published view of the replicas: what every worker routes with until
/// the next generation is published. Never mutated after it is built.
pub struct ReplicaSet {
    generation: u64,
    routing: Routing,
    replicas: Vec<Replica>,
    balancer: Box<dyn Balancer>,
}

impl ReplicaSet {
    /// Builds a snapshot and its balancer.
    pub fn new(generation: u64, routing: Routing, replicas: Vec<Replica>) -> Self {
        let balancer = routing.build(&replicas);
        Self {
            generation,
            routing,
            replicas,
            balancer,
        }
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
        self.replicas.iter().any(Replica::is_routable)
    }

    /// Picks a replica for the next request, skipping those already tried.
    #[inline]
    pub fn pick(&self, cursor: &mut Cursor, tried: &Tried) -> Option<&Replica> {
        self.balancer
            .pick(&self.replicas, cursor, tried)
            .map(|i| &self.replicas[i])
    }

    /// Like [`pick`](Self::pick), but returns the index (for [`Tried`]).
    #[inline]
    pub fn pick_index(&self, cursor: &mut Cursor, tried: &Tried) -> Option<usize> {
        self.balancer.pick(&self.replicas, cursor, tried)
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
