//! Power of two choices: two distinct random replicas, the less loaded wins.
//!
//! Comparing two random candidates avoids the herd that "least loaded of
//! all" can cause when many workers see the same stale counts, and costs two
//! reads instead of a scan. Load is in flight per unit of weight; equal
//! loads are broken by the peak-EWMA of time to response head, so a replica
//! that just slowed down loses ties at once.

use super::least_outstanding::load;
use super::{Balancer, Cursor, View};

/// The routable replicas' indices.
#[derive(Debug, Clone)]
pub struct PowerOfTwoChoices {
    order: Vec<u32>,
}

/// Random draws before falling back to a scan (when most replicas are tried,
/// ejected or penalized, draws rarely hit a usable one).
const DRAWS: usize = 8;

impl PowerOfTwoChoices {
    /// Over the routable replicas' indices.
    pub fn new(order: Vec<u32>) -> Self {
        Self { order }
    }

    fn draw(
        &self,
        view: &View<'_>,
        cursor: &mut Cursor,
        strict: bool,
        other: Option<usize>,
    ) -> Option<usize> {
        let ok = |i: usize| view.usable(i) && !(strict && view.penalized(i)) && Some(i) != other;
        for _ in 0..DRAWS {
            let i = self.order[cursor.below(self.order.len())] as usize;
            // Slow start: a ramping replica is drawn with the probability
            // of its ramp.
            let ramp = view.ramp(i);
            if ok(i) && !(strict && ramp < 1.0 && cursor.unit() >= ramp) {
                return Some(i);
            }
        }
        let start = cursor.below(self.order.len());
        (0..self.order.len())
            .map(|s| self.order[(start + s) % self.order.len()] as usize)
            .find(|&i| ok(i))
    }

    /// Whether `a` is less loaded than `b`.
    fn better(view: &View<'_>, a: usize, b: usize) -> bool {
        let (la, lb) = (load(view, a), load(view, b));
        if la != lb {
            return la < lb;
        }
        view.replicas[a].stats.ewma_head_us() < view.replicas[b].stats.ewma_head_us()
    }

    /// Two distinct candidates (or one when only one is usable).
    pub fn candidates(
        &self,
        view: &View<'_>,
        cursor: &mut Cursor,
    ) -> Option<(usize, Option<usize>)> {
        if self.order.is_empty() {
            return None;
        }
        for strict in [true, false] {
            if let Some(a) = self.draw(view, cursor, strict, None) {
                return Some((a, self.draw(view, cursor, strict, Some(a))));
            }
        }
        None
    }
}

impl Balancer for PowerOfTwoChoices {
    fn pick(&self, view: &View<'_>, cursor: &mut Cursor) -> Option<usize> {
        let (a, b) = self.candidates(view, cursor)?;
        Some(match b {
            Some(b) if Self::better(view, b, a) => b,
            _ => a,
        })
    }
}
