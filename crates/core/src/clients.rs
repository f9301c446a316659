//! Connections per client address, counted across threads: the data
//! plane's `limits.max_connections_per_client` (across its workers) and the
//! admin server's per-address cap. One client address may not hold more, so
//! one host cannot take every connection. Counted on accept and close only,
//! never per request.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Shards of the count, so workers accepting at once seldom meet.
const SHARDS: usize = 16;

/// Open connections by client address.
#[derive(Debug)]
pub struct ClientCounts {
    max: usize,
    hasher: RandomState,
    shards: [Mutex<HashMap<IpAddr, usize>>; SHARDS],
}

/// One connection counted; uncounted when dropped (the connection ended).
#[derive(Debug)]
pub struct Counted {
    counts: Arc<ClientCounts>,
    ip: IpAddr,
}

impl ClientCounts {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            hasher: RandomState::new(),
            shards: std::array::from_fn(|_| Mutex::default()),
        })
    }

    fn shard(&self, ip: &IpAddr) -> &Mutex<HashMap<IpAddr, usize>> {
        &self.shards[self.hasher.hash_one(ip) as usize % SHARDS]
    }

    /// Counts a connection from `ip`, unless it holds the most already.
    pub fn enter(self: &Arc<Self>, ip: IpAddr) -> Option<Counted> {
        let mut open = self.shard(&ip).lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(ip).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(Counted {
            counts: Arc::clone(self),
            ip,
        })
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        let shard = self.counts.shard(&self.ip);
        let mut open = shard.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_address_holds_at_most_max() {
        let counts = ClientCounts::new(2);
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let first = counts.enter(a).unwrap();
        let _second = counts.enter(a).unwrap();
        assert!(counts.enter(a).is_none());
        assert!(counts.enter(b).is_some(), "another address has its own");
        drop(first);
        assert!(
            counts.enter(a).is_some(),
            "a closed connection frees its place"
        );
    }
}
