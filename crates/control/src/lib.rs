//! inferlb's control plane. Every runtime change to the replicas and pools is
//! a core `Command` applied by one writer, [`Control`]; the admin API, SIGHUP,
//! health checks, DNS refreshes, engine-metrics scrapes and the local scaler
//! all go through it, and the data plane only ever sees the snapshots it
//! publishes.
//!
//! # Layout
//!
//! - [`writer`]: `Control`, the single writer: apply, make durable, publish,
//!   reap drained replicas.
//! - [`state_file`]: the state file (runtime changes on top of the declared
//!   list), written atomically and durably.
//! - [`cluster`]: a fleet of instances sharing the state in etcd: the
//!   record, the watch, presence reports, fail static.
//! - [`plane`]: starting the control plane's tasks, and a config reload.
//! - [`http`]: the one HTTP client of the control plane's GETs.
//! - [`health`]: active health checks, turned into `SetHealth` commands.
//! - [`dns`]: replica host names resolved again on an interval, off the
//!   control thread.
//! - [`engine_metrics`]: model servers' queue and KV-cache load, scraped.
//! - [`autoscaling`]: each autoscaling pool's settings in force and status,
//!   shared with the admin API.
//! - [`scaler`]: local autoscaling's executor: pools that start and stop
//!   their own replicas; `scaler::provider` holds the crate's only `unsafe`
//!   (the child's parent-death signal, and signalling its process group).
//! - [`cloudwatch`]: the proxy's per-pool concurrency, published.
//! - [`repeats`]: rate-limited logging of errors that repeat every tick.

#![deny(unsafe_code)]

pub mod autoscaling;
pub mod cloudwatch;
pub mod cluster;
pub mod dns;
pub mod engine_metrics;
pub mod grpc_health;
pub mod health;
pub mod http;
pub mod plane;
pub mod repeats;
pub mod scaler;
pub mod state_file;
pub mod writer;

pub use plane::{declared, initial_state, reload, starting_state, TaskSettings, Tasks};
pub use state_file::{desired_after_reload, Declared, PersistError, StateFile};
pub use writer::{Control, ControlError, DEFAULT_DRAIN};
