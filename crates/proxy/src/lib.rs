//! The data plane of inferlb: a thread-per-core HTTP/1.1 reverse proxy on
//! monoio and io_uring. Each worker thread has its own runtime, its own
//! `SO_REUSEPORT` listener and its own upstream pool; workers share only the
//! replica snapshot (through arc-swap) and the per-replica counters.
//!
//! # Layout
//!
//! - [`server`]: `start` the workers, `ProxyHandle` to stop them.
//! - `worker`: one thread's accept loop, drain and pool reaping.
//! - `forward`: one client connection, request by request.
//! - `h1`: request and response heads, chunked bodies, header rules.
//! - `upstream`: connecting to replicas and the keep-alive pool.
//! - `error`: hot-path error kinds and the status each maps to.
//! - `sock`: the few socket calls monoio lacks (the crate's only `unsafe`).

mod error;
mod forward;
mod h1;
pub mod server;
mod sock;
mod upstream;
mod worker;

pub use inferlb_core::WorkerStats;
pub use server::{start, ActiveDriver, ProxyHandle};
pub use worker::Phase;
