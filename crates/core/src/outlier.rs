//! Passive outlier ejection: a replica that fails N times in a row (connect
//! failures or 5xx) is taken out of rotation for a while, longer each time,
//! but never more than a share of the fleet at once (Envoy's outlier
//! detection; ALB's is health-check only).

use crate::replica_set::ReplicaSet;

/// Outlier-ejection settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ejection {
    /// Failures in a row that eject; 0 turns ejection off.
    pub consecutive_failures: u64,
    /// First ejection length; the n-th lasts n times this.
    pub base_ms: u64,
    /// Longest ejection.
    pub max_ms: u64,
    /// Most replicas ejected at once, percent of the snapshot.
    pub max_percent: u64,
}

impl Default for Ejection {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            base_ms: 30_000,
            max_ms: 300_000,
            max_percent: 50,
        }
    }
}

impl Ejection {
    /// Records a failure of replica `index`; ejects it when the run is long
    /// enough and the cap allows. Returns the ejection length if it ejected.
    pub fn on_failure(&self, set: &ReplicaSet, index: usize, now_ms: u64) -> Option<u64> {
        let replica = set.replicas().get(index)?;
        let run = replica.stats.record_failure();
        if self.consecutive_failures == 0 || run < self.consecutive_failures {
            return None;
        }
        let ejected = set
            .replicas()
            .iter()
            .filter(|r| r.stats.is_ejected(now_ms))
            .count() as u64;
        let allowed = set.replicas().len() as u64 * self.max_percent / 100;
        if ejected + 1 > allowed {
            return None;
        }
        let length = (self.base_ms * (replica.stats.ejections() + 1)).min(self.max_ms);
        replica.stats.eject_until(now_ms + length);
        Some(length)
    }

    /// Records a success of replica `index`.
    pub fn on_success(set: &ReplicaSet, index: usize) {
        if let Some(r) = set.replicas().get(index) {
            r.stats.record_success();
        }
    }
}
