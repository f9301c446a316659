//! Balancers: given a snapshot's replicas, pick the one for the next request.
//!
//! A balancer is built once per snapshot, off the hot path, and is immutable
//! afterwards. The only mutable state of a pick lives in the caller's
//! [`Cursor`] (one per worker), so picking takes no lock and touches no cache
//! line shared with another core.

mod least_outstanding;
mod p2c;
mod round_robin;
mod weighted_round_robin;

pub use least_outstanding::LeastOutstanding;
pub use p2c::PowerOfTwoChoices;
pub use round_robin::RoundRobin;
pub use weighted_round_robin::WeightedRoundRobin;

use crate::pool::LoadWeights;
use crate::replica::Replica;
pub use crate::routing::Routing;

/// What a pick sees: the snapshot's replicas, the ones already tried for
/// this request, and the time (for penalties, ejections and slow start).
#[derive(Debug, Clone, Copy)]
pub struct View<'a> {
    /// The snapshot's replicas.
    pub replicas: &'a [Replica],
    /// Replicas this request already tried.
    pub tried: &'a Tried,
    /// `clock::now_ms()`, or any time in a test.
    pub now_ms: u64,
    /// The slow-start ramp length; 0 is off.
    pub slow_start_ms: u64,
    /// How `least_load` weighs a replica's load.
    pub weights: &'a LoadWeights,
}

impl View<'_> {
    /// Not tried, not ejected.
    #[inline]
    pub(crate) fn usable(&self, i: usize) -> bool {
        !self.tried.contains(i) && !self.replicas[i].stats.is_ejected(self.now_ms)
    }

    /// Recently answered 429 or 503 with `Retry-After`.
    #[inline]
    pub(crate) fn penalized(&self, i: usize) -> bool {
        self.replicas[i].stats.is_penalized(self.now_ms)
    }

    /// A replica's load per unit of weight: the engine's queue, running
    /// requests and KV usage when its metrics are fresh, inferlb's own
    /// in-flight count always (see [`LoadWeights`]).
    #[inline]
    pub fn load(&self, i: usize) -> f64 {
        let r = &self.replicas[i];
        let in_flight = r.stats.in_flight() as f64;
        let w = self.weights;
        let raw = match r.stats.engine(self.now_ms) {
            Some(e) => {
                // The engine's numbers are up to a scrape interval old:
                // requests sent since then count as queued (finished ones
                // come off), so picks between scrapes do not all herd onto
                // the replica that looked idle at the last one.
                let since = r.stats.in_flight_since_scrape() as f64;
                let queued = (e.waiting + since).max(0.0);
                w.queue * queued
                    + w.running * e.running
                    + w.kv_cache * e.kv_usage
                    + w.in_flight * in_flight
            }
            None => in_flight,
        };
        raw / f64::from(r.weight.max(1))
    }

    /// The slow-start ramp alone.
    #[inline]
    fn ramp(&self, i: usize) -> f64 {
        self.replicas[i].ramp(self.now_ms, self.slow_start_ms)
    }
}

/// Picks a replica for a request.
pub trait Balancer: Send + Sync + std::fmt::Debug {
    /// The index (into the snapshot's replicas) of the replica for the next
    /// request: never one already tried or ejected; a penalized one only
    /// when nothing else is left. `None` when no replica can be used.
    fn pick(&self, view: &View<'_>, cursor: &mut Cursor) -> Option<usize>;
}

/// A worker's position in the balancer's rotation. Each worker owns one, so
/// round robin advances without any shared counter.
#[derive(Debug, Clone)]
pub struct Cursor {
    next: u64,
    rng: u64,
}

impl Default for Cursor {
    fn default() -> Self {
        Self::starting_at(0)
    }
}

impl Cursor {
    /// A cursor starting at `start`; workers start at their own index so that
    /// the first requests of N workers do not all land on one replica.
    pub fn starting_at(start: u64) -> Self {
        Self {
            next: start,
            rng: start.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
        }
    }

    /// xorshift64*: cheap, per worker, good enough to spread picks.
    #[inline]
    fn random(&mut self) -> u64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A uniform number in `[0, 1)`.
    #[inline]
    fn unit(&mut self) -> f64 {
        (self.random() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A uniform number in `0..n`.
    #[inline]
    fn below(&mut self, n: usize) -> usize {
        (((self.random() >> 32) * n as u64) >> 32) as usize
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

/// Walks `order` from the cursor and returns the first usable index. The
/// first pass skips penalized replicas and lets a replica in slow start
/// through with the probability of its ramp; the second pass (only when the
/// first found nothing) takes any usable one.
fn rotate(order: &[u32], view: &View<'_>, cursor: &mut Cursor) -> Option<usize> {
    let len = order.len() as u64;
    if len == 0 {
        return None;
    }
    for strict in [true, false] {
        for step in 0..len {
            let at = cursor.next.wrapping_add(step);
            let index = order[(at % len) as usize] as usize;
            if !view.usable(index) {
                continue;
            }
            if strict {
                if view.penalized(index) {
                    continue;
                }
                let ramp = view.ramp(index);
                if ramp < 1.0 && cursor.unit() >= ramp {
                    continue;
                }
            }
            cursor.next = at.wrapping_add(1);
            return Some(index);
        }
    }
    None
}

#[cfg(test)]
mod tests;

impl Routing {
    /// Builds this rule's balancer over a snapshot's replicas; `routable`
    /// says which may take requests (see `ReplicaSet`).
    pub fn build(self, replicas: &[Replica], routable: &[bool]) -> Box<dyn Balancer> {
        let order: Vec<u32> = (0..replicas.len() as u32)
            .filter(|&i| routable[i as usize])
            .collect();
        match self {
            Self::RoundRobin => Box::new(RoundRobin::new(order)),
            Self::WeightedRoundRobin => Box::new(WeightedRoundRobin::build(replicas, &order)),
            Self::LeastOutstanding => Box::new(LeastOutstanding::new(order)),
            Self::P2c => Box::new(PowerOfTwoChoices::new(order)),
            // `prefix` falls back to the least loaded replica when a request
            // has no text to match (see `ReplicaSet::pick_in`).
            Self::LeastLoad | Self::Prefix => Box::new(LeastOutstanding::least_load(order)),
        }
    }
}
