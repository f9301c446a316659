//! Round robin: each routable replica in turn, weights ignored.

use super::{next_untried, Balancer, Cursor, Tried};
use crate::replica::Replica;

/// The routable replicas' indices, in snapshot order.
#[derive(Debug, Clone)]
pub struct RoundRobin {
    order: Vec<u32>,
}

impl RoundRobin {
    /// Keeps the replicas that take new requests: active, weight above 0.
    pub fn build(replicas: &[Replica]) -> Self {
        let order = (0..replicas.len() as u32)
            .filter(|&i| replicas[i as usize].is_routable())
            .collect();
        Self { order }
    }
}

impl Balancer for RoundRobin {
    fn pick(&self, _replicas: &[Replica], cursor: &mut Cursor, tried: &Tried) -> Option<usize> {
        next_untried(&self.order, cursor, tried)
    }
}
