//! Test equipment for inferlb: fake inference replicas with a fluent builder,
//! and raw HTTP/1.1 helpers that send exact bytes and read exact responses.
//! Used by the test suites, by `inferlb demo` and by `cargo xtask bench`.
//!
//! # Layout
//!
//! - [`replica`]: `FakeReplica::builder()`: latency, status, body size, SSE
//!   token streams, framing, failure modes, and counters.
//! - [`client`]: `RawClient`, `send_raw`, `eventually`, `wait_for_port`,
//!   `free_addr`, `fresh_dir` (a [`Scratch`] directory).
//! - [`etcd`]: `EtcdCluster`, a real three-member etcd on loopback whose
//!   members a test can kill and start again.
//! - [`fake_engine`]: a simulated inference engine speaking the OpenAI API, with
//!   a prefix cache, decode slots and vLLM's metrics (`inferlb fake-replica`).
//! - [`grpc_replica`]: a KServe v2 gRPC model server with gRPC health
//!   checking (`inferlb fake-replica --protocol grpc`).

#![forbid(unsafe_code)]

pub mod client;
pub mod etcd;
pub mod fake_engine;
pub mod grpc_replica;
pub mod replica;

pub use client::{
    eventually, free_addr, fresh_dir, send_raw, send_raw_until_close, wait_for_port, RawClient,
    RawResponse, Scratch,
};
pub use etcd::{EtcdCluster, EtcdTls};
pub use fake_engine::{EngineConfig, EngineHandle, EngineStats};
pub use grpc_replica::{GrpcReplicaConfig, GrpcReplicaHandle, GrpcStats};
pub use replica::{
    Counters, Failure, FakeReplica, Framing, Latency, RecordedRequest, ReplicaBuilder,
    ReplicaHandle,
};
