//! The data plane of inferlb: a thread-per-core HTTP/1.1 reverse proxy on
//! monoio and io_uring. Each worker thread has its own runtime, its own
//! `SO_REUSEPORT` listener and its own upstream pool; workers share only the
//! replica snapshot (through arc-swap) and the per-replica counters.
//!
//! # Layout
//!
//! - [`server`]: `start` the workers, `ProxyHandle` to stop them.
//! - `worker`: one thread's state, its sweep of clocks, tables and pools.
//! - `connection`: the accept loop and drain, and a client connection
//!   between requests, owning no buffer.
//! - `handler`: the tasks a worker reuses to serve requests.
//! - `deadlines`: coarse deadlines swept per worker, instead of timers.
//! - `forward`: one request, top to bottom: classify, pick, connect,
//!   exchange, retry decision, stream. Start reading here.
//! - `hold`: scale from zero: a request for an autoscaling pool with no
//!   routable replica waits here for its first.
//! - `exchange`: one attempt of a request on one upstream connection.
//! - `model_name`: a request's model name, held without allocating.
//! - `client`: the client side: buffers, heads, error responses, linger.
//! - `io`: the client's transport: TCP, TLS, or one HTTP/2 stream.
//! - `tls`: TLS termination: certificates by SNI, resumption, reload.
//! - `h2`: HTTP/2 from clients, each stream bridged onto the HTTP/1.1
//!   request path, and the limits against HTTP/2 abuse.
//! - `watch`: upstream I/O that gives up when the client leaves, the replica
//!   is evicted or time runs out.
//! - `h1`: request and response heads, the body framer, header rules.
//! - `upstream`: connecting to replicas and the keep-alive pool.
//! - `buffers`: the worker's pool of I/O buffers.
//! - `budget`: the worker's share of the bytes bodies may hold for inspection.
//! - `retry_budget`: how many retries a worker may make.
//! - `error`: hot-path error kinds and the status each maps to.
//! - `sock`: the few socket calls monoio lacks (the crate's only `unsafe`).

mod access;
mod budget;
mod buffers;
mod client;
mod connection;
mod cors;
mod deadlines;
mod error;
mod exchange;
mod forward;
mod front;
mod grpc;
mod h1;
mod h2;
mod handler;
mod hold;
mod inspect;
mod io;
mod model_name;
mod models;
mod retry_budget;
pub mod server;
mod sock;
mod tls;
mod tunnel;
mod upstream;
mod watch;
mod worker;

pub use inferlb_core::WorkerStats;

/// Sets up TLS to the replicas of every pool with `[pools.upstream_tls]`
/// (its CA file read); each problem under its pool's field.
pub fn check_upstream_tls(pools: &[inferlb_core::PoolSpec]) -> Vec<inferlb_core::config::Problem> {
    pools
        .iter()
        .enumerate()
        .filter_map(|(i, pool)| {
            let settings = pool.upstream_tls.as_deref()?;
            upstream::tls::build(settings)
                .err()
                .map(|reason| inferlb_core::config::Problem {
                    field: format!("pools[{i}].upstream_tls"),
                    reason,
                })
        })
        .collect()
}

/// Reads every TLS listener's certificates, keys and client CA as a start
/// would; each problem under its listener's field (`inferlb check`).
pub fn check_certificates(
    config: &inferlb_core::ProxyConfig,
) -> Vec<inferlb_core::config::Problem> {
    config
        .listeners
        .iter()
        .enumerate()
        .filter_map(|(i, listener)| {
            tls::Terminator::new(i, listener)
                .err()
                .map(|reason| inferlb_core::config::Problem {
                    field: format!("listeners[{i}].tls"),
                    reason,
                })
        })
        .collect()
}
pub use server::{start, ActiveDriver, ProxyHandle};

/// Entry points for the micro-benchmarks in `benches/`; not a stable API.
#[doc(hidden)]
pub mod bench_support {
    use crate::h1::request::{parse_and_rewrite, Forwarding};
    use crate::h1::RequestId;

    /// Parses a complete request head and writes the rewritten head into
    /// `out`, as the hot path does; returns whether it was accepted.
    pub fn rewrite_request(head: &[u8], request_id: &mut RequestIdBuf, out: &mut Vec<u8>) -> bool {
        parse_and_rewrite(
            head,
            100,
            &Forwarding {
                client_ip: b"192.0.2.1",
                https: false,
                trusted: false,
                underscores: false,
                keep_claims: false,
                model_header: b"x-model",
                health_path: None,
                upgrades: &[],
            },
            &mut request_id.0,
            out,
        )
        .is_ok()
    }

    /// A certificate verifier that accepts any certificate (and still
    /// checks signatures), as `upstream_tls.verify = false` does: for the
    /// load generator's TLS client against a self-signed certificate.
    pub fn accept_any_certificate(
        provider: std::sync::Arc<rustls::crypto::CryptoProvider>,
    ) -> std::sync::Arc<dyn rustls::client::danger::ServerCertVerifier> {
        std::sync::Arc::new(crate::upstream::tls::AcceptAny(provider))
    }

    /// The request-id buffer the hot path reuses per connection.
    #[derive(Debug)]
    pub struct RequestIdBuf(RequestId);

    impl Default for RequestIdBuf {
        fn default() -> Self {
            Self(RequestId::new())
        }
    }
}
pub use worker::Phase;
