//! `inferlb demo`: two model pools of simulated model servers (OpenAI API,
//! vLLM metrics, a prefix cache) and the proxy in front of them.

use std::net::SocketAddr;

use anyhow::{bail, Context, Result};
use clap::Args;
use inferlb_core::pool::EngineMetrics;
use inferlb_core::{Command, Config, PoolName, PoolSpec, ReplicaId, ReplicaSpec, Routing, State};
use inferlb_testkit::EngineConfig;

/// Flags of `inferlb demo`.
#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Where the proxy listens.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Fake replicas per pool.
    #[arg(long, default_value_t = 2)]
    replicas: usize,
    /// Worker threads [default: one per available core].
    #[arg(long)]
    workers: Option<usize>,
    /// Where the admin API listens.
    #[arg(long, default_value = "127.0.0.1:9090")]
    admin_listen: SocketAddr,
}

/// The demo's pools: (name, alias, routing).
const POOLS: [(&str, &str, Routing); 2] = [
    (
        "llama-3-8b",
        "meta-llama/Meta-Llama-3-8B-Instruct",
        Routing::Prefix,
    ),
    ("qwen2-7b", "Qwen/Qwen2-7B-Instruct", Routing::LeastLoad),
];

pub(crate) fn run(args: DemoArgs) -> Result<()> {
    // The demo takes no token, so, like `serve` without one, it keeps the
    // admin API on loopback.
    if !args.admin_listen.ip().is_loopback() {
        bail!(
            "refusing to serve the admin API on {} without a token: the demo has none; \
             use a loopback address, or `inferlb serve` with --admin-token-file",
            args.admin_listen
        );
    }
    let mut handles = Vec::new();
    let mut config = Config::default();
    config.proxy.listen = args.listen;
    config.proxy.workers = args.workers.unwrap_or(0);
    let mut state = State::new(config.routing);
    for (name, alias, routing) in POOLS {
        let pool = PoolName::new(name)?;
        let mut spec = PoolSpec::named(pool.clone());
        spec.aliases = vec![alias.to_owned()];
        spec.routing = Some(routing);
        spec.engine_metrics = EngineMetrics {
            enabled: true,
            ..EngineMetrics::default()
        };
        state.apply(Command::SetPool(spec.clone()))?;
        config.pools.push(spec);
        for i in 0..args.replicas.max(1) {
            let id = format!("{name}-{}", i + 1);
            let engine = EngineConfig {
                models: vec![name.to_owned(), alias.to_owned()],
                name: id.clone(),
                decode_ms_per_token: 20.0,
                ..EngineConfig::default()
            };
            let replica =
                inferlb_testkit::engine::start(engine, SocketAddr::from(([127, 0, 0, 1], 0)))
                    .with_context(|| format!("cannot start fake replica {id}"))?;
            let addr = replica.addr();
            let spec = ReplicaSpec {
                id: ReplicaId::new(&id)?,
                address: addr.to_string(),
                addr,
                weight: 1,
                pool: pool.clone(),
            };
            config.replicas.push(spec.clone());
            state.apply(Command::Add(spec))?;
            handles.push(replica);
        }
    }
    let (handle, snapshots) = crate::serve::start_proxy(&config, &state)?;
    let at = handle.local_addr();
    let admin = args.admin_listen;
    #[allow(clippy::print_stdout)]
    {
        let (a, b) = (POOLS[0].0, POOLS[1].0);
        println!();
        println!(
            "inferlb demo: pools {a} (prefix routing) and {b} (least_load on engine metrics), {} simulated replicas each, behind http://{at}",
            args.replicas.max(1)
        );
        println!();
        println!("  # the models, as OpenAI's API lists them:");
        println!("  curl -s http://{at}/v1/models");
        println!();
        println!("  # a chat completion; the body's \"model\" picks the pool:");
        println!(
            "  curl -s http://{at}/v1/chat/completions -H 'content-type: application/json' \\"
        );
        println!("       -d '{{\"model\": \"{a}\", \"messages\": [{{\"role\": \"user\", \"content\": \"Hello!\"}}]}}'");
        println!();
        println!("  # a token stream (SSE), relayed event by event; X-Model works too:");
        println!("  curl -N http://{at}/v1/completions -H 'content-type: application/json' -H 'X-Model: {b}' \\");
        println!("       -d '{{\"prompt\": \"hello\", \"max_tokens\": 8, \"stream\": true}}'");
        println!();
        println!("  # the openai SDK (pip install openai), unchanged:");
        println!("  python3 -c 'from openai import OpenAI; c = OpenAI(base_url=\"http://{at}/v1\", api_key=\"none\")");
        println!("  for e in c.chat.completions.create(model=\"{a}\", messages=[{{\"role\": \"user\", \"content\": \"Hi\"}}], stream=True):");
        println!("      print(e.choices[0].delta.content or \"\", end=\"\", flush=True)'");
        println!();
        println!("  # which replica answered, and the pools with their engines' load:");
        println!("  curl -si http://{at}/v1/completions -H 'X-Model: {a}' -H 'content-type: application/json' -d '{{\"prompt\": \"hi\"}}' | grep -i x-replica");
        println!("  curl -s http://{admin}/v1/pools");
        println!();
        println!(
            "  # the admin API: list, add, drain replicas (changes are not persisted in the demo):"
        );
        println!("  cargo run -p inferlb -- replicas list --admin http://{admin}");
        println!("  curl -s http://{admin}/metrics | grep inferlb_replica_requests");
        println!();
        println!("Ctrl-C to stop.");
    }
    let plane = crate::serve::ControlPlane {
        admin_listen: admin,
        admin_listen_given: true,
        token: None,
        protect_probes: false,
        store: None,
        declared: crate::serve::declared(&config),
        dns_refresh: None,
        config_path: None,
        health: config.health.clone(),
        publish: None,
    };
    let workers = config.proxy.worker_count();
    crate::serve::run_control_plane(handle, snapshots, state, workers, plane)?;
    drop(handles);
    Ok(())
}
