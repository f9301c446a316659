//! Balancers: given a snapshot's replicas, pick the one for the next request.
//!
//! A balancer is built once per snapshot, off the hot path, and is immutable
//! afterwards. The only mutable state of a pick lives in the caller's
//! [`Cursor`] (one per worker), so picking takes no lock and touches no cache
//! line shared with another core.

mod round_robin;
mod weighted_round_robin;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use round_robin::RoundRobin;
pub use weighted_round_robin::WeightedRoundRobin;

use crate::replica::Replica;

/// Picks a replica for a request.
pub trait Balancer: Send + Sync + fmt::Debug {
    /// The index (into the snapshot's replicas) of the replica for the next
    /// request, skipping those in `tried`; `None` when no routable replica is
    /// left.
    fn pick(&self, replicas: &[Replica], cursor: &mut Cursor, tried: &Tried) -> Option<usize>;
}

/// The routing rules a snapshot can be built with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Routing {
    /// Each routable replica in turn, weights ignored (nginx's default).
    #[default]
    RoundRobin,
    /// Smooth weighted round robin: weights 5:1 give 5:1, interleaved.
    WeightedRoundRobin,
}

impl Routing {
    /// Every routing rule, by name.
    pub const ALL: [Routing; 2] = [Routing::RoundRobin, Routing::WeightedRoundRobin];

    /// The name used in the config, the CLI and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RoundRobin => "round_robin",
            Self::WeightedRoundRobin => "weighted_round_robin",
        }
    }

    /// Builds this rule's balancer over a snapshot's replicas.
    pub fn build(self, replicas: &[Replica]) -> Box<dyn Balancer> {
        match self {
            Self::RoundRobin => Box::new(RoundRobin::build(replicas)),
            Self::WeightedRoundRobin => Box::new(WeightedRoundRobin::build(replicas)),
        }
    }
}

impl fmt::Display for Routing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Routing {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                format!("unknown routing {s:?}: expected round_robin or weighted_round_robin")
            })
    }
}

/// A worker's position in the balancer's rotation. Each worker owns one, so
/// round robin advances without any shared counter.
#[derive(Debug, Clone, Default)]
pub struct Cursor {
    next: u64,
}

impl Cursor {
    /// A cursor starting at `start`; workers start at their own index so that
    /// the first requests of N workers do not all land on one replica.
    pub fn starting_at(start: u64) -> Self {
        Self { next: start }
    }
}

/// Replicas already tried for one request, by snapshot index: a fixed bitset,
/// so retrying allocates nothing. Indices past its capacity are never marked,
/// which at worst lets a retry land on the same replica; attempts are bounded
/// by the caller either way.
#[derive(Debug, Clone, Default)]
pub struct Tried {
    bits: [u64; 16],
}

impl Tried {
    /// Marks a replica as tried.
    pub fn insert(&mut self, index: usize) {
        if let Some(word) = self.bits.get_mut(index / 64) {
            *word |= 1 << (index % 64);
        }
    }

    /// Whether a replica was tried.
    pub fn contains(&self, index: usize) -> bool {
        self.bits
            .get(index / 64)
            .is_some_and(|word| word & (1 << (index % 64)) != 0)
    }

    /// Forgets every replica, for a new request or a new snapshot.
    pub fn clear(&mut self) {
        self.bits = [0; 16];
    }
}

/// Walks `order` from the cursor and returns the first index not yet tried.
fn next_untried(order: &[u32], cursor: &mut Cursor, tried: &Tried) -> Option<usize> {
    let len = order.len() as u64;
    if len == 0 {
        return None;
    }
    for step in 0..len {
        let at = cursor.next.wrapping_add(step);
        let index = order[(at % len) as usize] as usize;
        if !tried.contains(index) {
            cursor.next = at.wrapping_add(1);
            return Some(index);
        }
    }
    None
}

#[cfg(test)]
mod tests;
