//! Round robin: each routable replica in turn, weights ignored.

use super::{rotate, Balancer, Cursor, View};

/// The routable replicas' indices, in snapshot order.
#[derive(Debug, Clone)]
pub struct RoundRobin {
    order: Vec<u32>,
}

impl RoundRobin {
    /// Over the routable replicas' indices.
    pub fn new(order: Vec<u32>) -> Self {
        Self { order }
    }
}

impl Balancer for RoundRobin {
    fn pick(&self, view: &View<'_>, cursor: &mut Cursor) -> Option<usize> {
        rotate(&self.order, view, cursor)
    }
}
