//! The worker's share of `limits.inspect_budget_bytes`: the bytes of request
//! bodies it may hold in memory to read their model (and prompt text)
//! before a replica is picked. Each worker gets an equal share, so no
//! worker waits on another; a request that finds none left is routed
//! without reading its body, or refused (503), never allowed to pin memory.

use std::cell::Cell;
use std::rc::Rc;

/// What is left of one worker's share.
#[derive(Debug)]
pub(crate) struct InspectBudget {
    left: Cell<usize>,
}

impl InspectBudget {
    /// A worker's share of `total` bytes among `workers`.
    pub(crate) fn share(total: usize, workers: usize) -> Rc<Self> {
        Rc::new(Self {
            left: Cell::new(total / workers.max(1)),
        })
    }

    /// Bytes not reserved now.
    #[cfg(test)]
    fn left(&self) -> usize {
        self.left.get()
    }
}

/// Bytes one request holds of its worker's budget; given back when the
/// request ends (dropped), whatever way it ends: served, refused, held for
/// a first replica and timed out, or cut off by its client.
#[derive(Debug)]
pub(crate) struct Reserved {
    budget: Rc<InspectBudget>,
    bytes: usize,
}

impl Reserved {
    /// Nothing reserved yet.
    pub(crate) fn none(budget: &Rc<InspectBudget>) -> Self {
        Self {
            budget: Rc::clone(budget),
            bytes: 0,
        }
    }

    /// Holds `bytes` in all (more than now), when the budget has them.
    pub(crate) fn grow_to(&mut self, bytes: usize) -> bool {
        let more = bytes.saturating_sub(self.bytes);
        let left = self.budget.left.get();
        if more > left {
            return false;
        }
        self.budget.left.set(left - more);
        self.bytes += more;
        true
    }
}

impl Drop for Reserved {
    fn drop(&mut self) {
        self.budget.left.set(self.budget.left.get() + self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_come_back_however_a_request_ends() {
        let budget = InspectBudget::share(1000, 2);
        assert_eq!(budget.left(), 500);
        let mut a = Reserved::none(&budget);
        assert!(a.grow_to(300));
        assert!(a.grow_to(200), "already held");
        let mut b = Reserved::none(&budget);
        assert!(!b.grow_to(201), "over what is left");
        assert!(b.grow_to(200));
        assert_eq!(budget.left(), 0);
        drop(a);
        assert_eq!(budget.left(), 300);
        drop(b);
        assert_eq!(budget.left(), 500);
    }
}
