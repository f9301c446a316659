//! The runtime-free domain of inferlb, shared by the data plane and the
//! control plane: what a replica is, the snapshot workers route with, the
//! balancers, the commands that change the replica list, and the config.
//! Nothing here does I/O beyond resolving a host name when a replica is added.
//!
//! # Layout
//!
//! - [`replica`]: a replica, its id, state and shared counters.
//! - [`replica_set`]: the immutable snapshot and the arc-swap publisher.
//! - [`routing`]: the routing rules by name.
//! - [`balance`]: the balancer trait and each rule's algorithm.
//! - [`affinity`]: session affinity, consistent hashing with bounded loads.
//! - [`command`]: `Command`, `State::apply` and `State::diff`.
//! - [`config`]: the TOML file form and its validated form.
//! - [`stats`]: lock-free histograms and worker counters.
//! - [`clock`]: the process-wide millisecond clock of deadlines.
//! - [`outlier`]: passive outlier ejection.
//! - [`penalty`]: the back-off a 429 or `Retry-After` asks for.
//! - [`cidr`]: address ranges, for `trusted_proxies`.
//! - [`clients`]: connections per client address, across threads.
//! - [`health`]: the health-check verdict machine and the replica status.
//! - [`pool`]: pools (one model's replicas) and their settings.
//! - [`prefix`]: the shared prefix table of `prefix` routing.
//! - [`scaling`]: local autoscaling's settings and a pool's held requests.

#![forbid(unsafe_code)]

pub mod affinity;
pub mod balance;
pub mod cidr;
pub mod clients;
pub mod clock;
pub mod command;
pub mod config;
pub mod health;
pub mod outlier;
pub mod penalty;
pub mod pool;
pub mod prefix;
pub mod replica;
pub mod replica_set;
pub mod routing;
pub mod scaling;
pub mod stats;
pub mod text;

pub use balance::{Balancer, Cursor, Routing, Tried};
pub use cidr::Cidr;
pub use command::{Command, Outcome, ReplicaSpec, State, StateError};
pub use config::{
    AdminConfig, Config, ConfigError, IoDriver, Limits, ProxyConfig, Timeouts, Upstream,
};
pub use health::{Routability, Thresholds, Tracker};
pub use pool::{GrpcSettings, NewPrefix, PoolName, PoolProtocol, PoolSpec, DEFAULT_POOL};
pub use replica::{
    EngineLoad, Health, Origin, Replica, ReplicaError, ReplicaId, ReplicaState, ReplicaStats,
    StatusClass,
};
pub use replica_set::{PoolView, PrefixKey, ReplicaSet, Safeguards, Snapshots};
pub use scaling::{PoolAutoscaling, PoolQueue, Provider, ScalingError, ScalingSettings};
pub use stats::{
    ClassCounts, Edge, FrontEnd, H2Abuse, Handshake, HandshakeError, Histogram, HistogramSnapshot,
    PoolFront, WorkerStats,
};
