//! The routing rules a pool can be routed by, by name (the config, the CLI
//! and the API); each rule's balancer lives in `balance`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The routing rules a snapshot can be built with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Routing {
    /// Each routable replica in turn, weights ignored (nginx's default).
    #[default]
    RoundRobin,
    /// Smooth weighted round robin: weights 5:1 give 5:1, interleaved.
    WeightedRoundRobin,
    /// The fewest requests in flight across all workers (per unit of weight),
    /// ties broken round robin.
    LeastOutstanding,
    /// Power of two choices: two distinct random replicas, the less loaded
    /// wins (in flight, then peak-EWMA of time to response head).
    P2c,
    /// The lowest load as the model server reports it (queue, running
    /// requests, KV-cache usage) plus inferlb's own in-flight count; only
    /// the in-flight count where engine metrics are off or stale.
    LeastLoad,
    /// Prefix-cache affinity: the replica that served the longest matching
    /// prompt prefix, unless it is overloaded; `least_load` otherwise.
    Prefix,
}

impl Routing {
    /// Every routing rule, by name.
    pub const ALL: [Routing; 6] = [
        Routing::RoundRobin,
        Routing::WeightedRoundRobin,
        Routing::LeastOutstanding,
        Routing::P2c,
        Routing::LeastLoad,
        Routing::Prefix,
    ];

    /// The name used in the config, the CLI and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RoundRobin => "round_robin",
            Self::WeightedRoundRobin => "weighted_round_robin",
            Self::LeastOutstanding => "least_outstanding",
            Self::P2c => "p2c",
            Self::LeastLoad => "least_load",
            Self::Prefix => "prefix",
        }
    }
}

impl fmt::Display for Routing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Routing {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                format!("unknown routing {s:?}: expected round_robin, weighted_round_robin, least_outstanding, p2c, least_load or prefix")
            })
    }
}
