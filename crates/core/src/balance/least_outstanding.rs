//! Least outstanding requests: the replica with the fewest requests in
//! flight across all workers, per unit of weight.
//!
//! Inference requests differ by orders of magnitude (a 50 ms embedding, a
//! 30 s generation); counting what is in flight sends new work where it will
//! wait least. The count is the global one every worker updates, not one
//! worker's view. Ties go round robin, so an idle fleet is still spread.

use super::{Balancer, Cursor, View};

/// The routable replicas' indices.
#[derive(Debug, Clone)]
pub struct LeastOutstanding {
    order: Vec<u32>,
    /// Score by [`View::load`] (`least_load`) rather than in flight alone.
    engine: bool,
}

impl LeastOutstanding {
    /// Over the routable replicas' indices.
    pub fn new(order: Vec<u32>) -> Self {
        Self {
            order,
            engine: false,
        }
    }

    /// `least_load`: scored by the engine's own load where it is known.
    pub fn least_load(order: Vec<u32>) -> Self {
        Self {
            order,
            engine: true,
        }
    }
}

/// In flight per unit of weight.
pub(super) fn load(view: &View<'_>, i: usize) -> f64 {
    view.replicas[i].stats.in_flight() as f64 / f64::from(view.replicas[i].weight.max(1))
}

impl Balancer for LeastOutstanding {
    fn pick(&self, view: &View<'_>, cursor: &mut Cursor) -> Option<usize> {
        let len = self.order.len() as u64;
        if len == 0 {
            return None;
        }
        let start = cursor.next;
        cursor.next = cursor.next.wrapping_add(1);
        for strict in [true, false] {
            let mut best: Option<(f64, usize)> = None;
            for step in 0..len {
                let i = self.order[(start.wrapping_add(step) % len) as usize] as usize;
                if !view.usable(i) || (strict && view.penalized(i)) {
                    continue;
                }
                // Slow start: a ramping replica takes part with the
                // probability of its ramp.
                if strict {
                    let ramp = view.ramp(i);
                    if ramp < 1.0 && cursor.unit() >= ramp {
                        continue;
                    }
                }
                let score = if self.engine {
                    view.load(i)
                } else {
                    load(view, i)
                };
                if best.is_none_or(|(b, _)| score < b) {
                    best = Some((score, i));
                }
            }
            if let Some((_, i)) = best {
                return Some(i);
            }
        }
        None
    }
}
