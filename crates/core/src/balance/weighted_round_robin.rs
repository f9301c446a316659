//! Smooth weighted round robin, precomputed into one cycle of picks.
//!
//! nginx's smooth algorithm spreads a 5:1 split as `a a b a a a` rather than
//! `a a a a a b`. The same smoothness comes from earliest-deadline-first
//! ordering: replica `i`'s `k`-th pick is due at `(k + ½) / wᵢ`, and a cycle
//! holds each replica `wᵢ / g` times (`g` the weights' gcd). The cycle is built
//! here with a heap in `O(W log n)`, so a pick is one array read: that keeps
//! the hot path lock-free and identical for every worker, each walking the
//! table with its own cursor.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use super::{rotate, Balancer, Cursor, View};
use crate::replica::Replica;

/// One cycle of picks in smooth order.
#[derive(Debug, Clone)]
pub struct WeightedRoundRobin {
    schedule: Vec<u32>,
}

/// The next pick of one replica: due at `(2k + 1) / (2w)`.
#[derive(Debug, PartialEq, Eq)]
struct Due {
    index: u32,
    picks: u64,
    weight: u64,
}

impl Ord for Due {
    fn cmp(&self, other: &Self) -> Ordering {
        // Reversed so that the max-heap yields the earliest deadline; ties go
        // to the lower index so the schedule is deterministic.
        let mine = u128::from(2 * self.picks + 1) * u128::from(other.weight);
        let theirs = u128::from(2 * other.picks + 1) * u128::from(self.weight);
        theirs.cmp(&mine).then_with(|| other.index.cmp(&self.index))
    }
}

impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

impl WeightedRoundRobin {
    /// Builds one cycle over the routable replicas (`order`).
    pub fn build(replicas: &[Replica], order: &[u32]) -> Self {
        let routable: Vec<(u32, u64)> = order
            .iter()
            .map(|&i| (i, u64::from(replicas[i as usize].weight.max(1))))
            .collect();
        let g = routable.iter().fold(0, |g, &(_, w)| gcd(g, w)).max(1);
        let cycle: u64 = routable.iter().map(|&(_, w)| w / g).sum();
        let mut heap: BinaryHeap<Due> = routable
            .iter()
            .map(|&(index, w)| Due {
                index,
                picks: 0,
                weight: w / g,
            })
            .collect();
        let mut schedule = Vec::with_capacity(cycle as usize);
        for _ in 0..cycle {
            let Some(mut due) = heap.pop() else { break };
            schedule.push(due.index);
            due.picks += 1;
            heap.push(due);
        }
        Self { schedule }
    }

    /// The picks of one cycle, as snapshot indices.
    pub fn schedule(&self) -> &[u32] {
        &self.schedule
    }
}

impl Balancer for WeightedRoundRobin {
    fn pick(&self, view: &View<'_>, cursor: &mut Cursor) -> Option<usize> {
        rotate(&self.schedule, view, cursor)
    }
}
