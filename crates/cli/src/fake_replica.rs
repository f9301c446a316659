//! `inferlb fake-replica`: a simulated model server speaking the OpenAI API
//! (see `inferlb_testkit::fake_engine` for its cost model), or with
//! `--protocol grpc` KServe v2's gRPC service and gRPC health checking (see
//! `inferlb_testkit::grpc_replica`), run as its own process so it can be
//! started like a real one.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use inferlb_testkit::EngineConfig;

/// Flags of `inferlb fake-replica`.
#[derive(Debug, Args)]
pub(crate) struct FakeReplicaArgs {
    /// Where it listens.
    #[arg(long)]
    listen: SocketAddr,
    /// What it speaks: `http1` (the OpenAI API, and a Realtime-shaped
    /// WebSocket at /v1/realtime) or `grpc` (KServe v2's
    /// inference.GRPCInferenceService and grpc.health.v1; the cost flags
    /// do not apply).
    #[arg(long, value_enum, default_value_t = Protocol::Http1)]
    protocol: Protocol,
    /// A model name it serves; repeat for aliases (the first is reported).
    #[arg(long = "model", required = true)]
    models: Vec<String>,
    /// Its name in the `X-Replica` response header [default: the address].
    #[arg(long)]
    name: Option<String>,
    /// Prefill time per prompt token not in its prefix cache, µs.
    #[arg(long, default_value_t = 20.0)]
    prefill_us_per_token: f64,
    /// Decode time per output token, ms.
    #[arg(long, default_value_t = 5.0)]
    decode_ms_per_token: f64,
    /// Requests decoding at once.
    #[arg(long, default_value_t = 8)]
    max_running: usize,
    /// Requests queued beyond those; more get 429 with Retry-After.
    #[arg(long, default_value_t = 256)]
    max_waiting: usize,
    /// Prefix-cache size, in tokens.
    #[arg(long, default_value_t = 65_536)]
    cache_tokens: usize,
    /// Output tokens when a request sets no max_tokens.
    #[arg(long, default_value_t = 16)]
    max_tokens: usize,
    /// Wait this long before answering (a model loading), e.g. `3s`.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    start_delay: Duration,
    /// A LoRA adapter it serves under its own model name (vLLM's
    /// `--lora-modules`); repeat for more. `/v1/models` lists it with the
    /// base model as `parent`.
    #[arg(long = "adapter")]
    adapters: Vec<String>,
    /// Adapters served at once (vLLM's `--max-loras`); a request for
    /// another waits for a slot whose adapter has nothing running.
    #[arg(long, default_value_t = 1)]
    max_loras: usize,
    /// Time to put an adapter into a slot, ms.
    #[arg(long, default_value_t = 50.0)]
    adapter_load_ms: f64,
}

impl FakeReplicaArgs {
    pub(crate) fn config(&self) -> EngineConfig {
        EngineConfig {
            models: self.models.clone(),
            name: self.name.clone().unwrap_or_else(|| self.listen.to_string()),
            prefill_us_per_token: self.prefill_us_per_token,
            decode_ms_per_token: self.decode_ms_per_token,
            max_running: self.max_running.max(1),
            max_waiting: self.max_waiting,
            cache_tokens: self.cache_tokens,
            default_max_tokens: self.max_tokens.max(1),
            start_delay: self.start_delay,
            adapters: self.adapters.clone(),
            max_loras: self.max_loras.max(1),
            adapter_load_ms: self.adapter_load_ms.max(0.0),
        }
    }
}

/// `--protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Protocol {
    Http1,
    Grpc,
}

pub(crate) fn run(args: FakeReplicaArgs) -> Result<()> {
    if args.protocol == Protocol::Grpc {
        let config = inferlb_testkit::GrpcReplicaConfig {
            models: args.models.clone(),
            name: args.name.clone().unwrap_or_else(|| args.listen.to_string()),
        };
        tracing::info!(listen = %args.listen, models = ?config.models, "fake gRPC replica");
        let replica = inferlb_testkit::grpc_replica::start(config, args.listen)
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        replica.join();
        return Ok(());
    }
    let config = args.config();
    tracing::info!(listen = %args.listen, models = ?config.models, cost = %config.describe(), "fake replica");
    let engine = inferlb_testkit::fake_engine::start(config, args.listen)
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    // Runs until a signal ends the process.
    engine.join();
    Ok(())
}
