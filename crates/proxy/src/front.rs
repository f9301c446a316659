//! A worker's way into the front-end metrics ([`FrontEnd`]): what clients
//! saw per pool and model, whoever answered. The shared counters are
//! atomics behind `Arc`s; each worker keeps its own map of those `Arc`s, so
//! a request takes no lock (only a pool or model seen for the first time
//! does, once).

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use inferlb_core::{ClassCounts, FrontEnd, PoolFront};

use crate::access::Record;

/// One pool's counters and its models', as this worker found them.
type PoolEntry = (Arc<PoolFront>, HashMap<String, Arc<ClassCounts>>);

/// A worker's cache of the front-end counters.
pub(crate) struct FrontCache {
    shared: Arc<FrontEnd>,
    pools: RefCell<HashMap<String, PoolEntry>>,
}

impl FrontCache {
    pub(crate) fn new(shared: Arc<FrontEnd>) -> Self {
        Self {
            shared,
            pools: RefCell::new(HashMap::new()),
        }
    }

    /// The edge's counters (TLS handshakes, HTTP/2 connections).
    pub(crate) fn edge(&self) -> &inferlb_core::Edge {
        &self.shared.edge
    }

    /// Counts a finished request: its status under its pool and model, and
    /// for a streamed response from a replica its time to the first body
    /// byte and the gaps between its chunks.
    pub(crate) fn record(&self, pool: &str, model: &str, record: &Record) {
        let mut pools = self.pools.borrow_mut();
        if !pools.contains_key(pool) {
            pools.insert(pool.to_owned(), (self.shared.pool(pool), HashMap::new()));
        }
        let Some((front, models)) = pools.get_mut(pool) else {
            return;
        };
        if !models.contains_key(model) {
            models.insert(model.to_owned(), front.model(model));
        }
        if let Some(counts) = models.get(model) {
            counts.record(record.status);
        }
        if record.streamed && record.replica.is_some() {
            if let Some(first) = record.first_byte() {
                front.ttft.record(first);
            }
            for &gap in &record.gaps {
                front.itl.record(Duration::from_micros(u64::from(gap)));
            }
        }
    }
}
