//! Scenario files (`benches/scenarios/*.toml`).

use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// What a scenario measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Whole responses, closed or open loop.
    Requests,
    /// SSE token streams: time to first token and inter-token gaps.
    Stream,
    /// Many idle keep-alive connections: memory per connection.
    Connections,
    /// Load while replicas are added and drained through the admin API.
    Churn,
    /// One slow replica of four, per routing rule.
    Skew,
    /// A shared-prefix workload over simulated engines, per routing rule.
    Prefix,
    /// Local autoscaling through a step of load and back.
    Autoscale,
    /// TLS and HTTP/2 from clients (`tls`, `h2`): handshakes, h2load.
    Edge,
    /// A fleet on etcd: how fast an admin change reaches every instance,
    /// and prefix routing's cache hits with two instances against one.
    Cluster,
    /// gRPC calls through a gRPC pool (h2load, unary and server-streaming)
    /// against direct and HAProxy proxying gRPC over h2.
    Grpc,
}

/// The fleet measurements (cluster).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterScenario {
    /// Instances in the fleet the convergence is timed on.
    pub instances: usize,
    /// Admin changes timed (each is seen by every other instance).
    pub changes: usize,
}

/// One load point.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadPoint {
    /// Concurrent connections.
    pub connections: usize,
    /// Requests per second (open loop); absent means closed loop.
    pub rate: Option<f64>,
}

/// A scenario.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    pub description: String,
    pub kind: Kind,
    /// Peers compared, in round order.
    #[serde(default = "default_peers")]
    pub peers: Vec<String>,
    /// Fake replicas.
    #[serde(default = "default_replicas")]
    pub replicas: usize,
    /// Response body size.
    #[serde(default = "default_body")]
    pub body_bytes: usize,
    /// Replica latency before the response head, ms.
    #[serde(default)]
    pub latency_ms: u64,
    /// Tokens per stream (stream).
    #[serde(default)]
    pub tokens: usize,
    /// Gap between tokens, ms (stream).
    #[serde(default)]
    pub token_interval_ms: u64,
    /// Idle connections held open (connections).
    #[serde(default)]
    pub idle_connections: usize,
    /// Time between admin operations, ms (churn).
    #[serde(default)]
    pub churn_interval_ms: u64,
    /// How much slower the slow replica is (skew).
    #[serde(default)]
    pub slow_factor: u64,
    /// Routing rules compared (skew).
    #[serde(default)]
    pub routings: Vec<String>,
    /// Default seconds per measurement.
    #[serde(default = "default_duration")]
    pub duration_s: u64,
    /// Rounds when `--rounds` is not given (3 when neither says).
    #[serde(default)]
    pub rounds: Option<usize>,
    /// Load points.
    #[serde(default)]
    pub load: Vec<LoadPoint>,
    /// The inference workloads and what they are compared with (prefix).
    pub prefix: Option<crate::prefix::PrefixScenario>,
    /// The load steps and the autoscaled pool (autoscale).
    pub autoscale: Option<crate::autoscale::AutoscaleWorkload>,
    /// The fleet (cluster); its prefix workloads are `prefix`'s.
    pub cluster: Option<ClusterScenario>,
}

fn default_peers() -> Vec<String> {
    ["direct", "inferlb", "nginx", "haproxy", "haproxy-tcp"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
}
fn default_replicas() -> usize {
    2
}
fn default_body() -> usize {
    1024
}
fn default_duration() -> u64 {
    5
}

impl Scenario {
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("invalid scenario {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_scenario_file_parses() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let scenario = Scenario::load(&path).unwrap();
            assert!(
                !scenario.load.is_empty()
                    || scenario.prefix.is_some()
                    || scenario.autoscale.is_some(),
                "{}",
                path.display()
            );
            names.push(scenario.name);
        }
        names.sort();
        assert_eq!(
            names,
            [
                "autoscale",
                "churn",
                "cluster",
                "connections",
                "grpc",
                "h2",
                "prefix",
                "rate",
                "scale",
                "skew",
                "small",
                "stream",
                "tls"
            ]
        );
    }
}
