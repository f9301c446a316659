//! `inferlb demo`: two model pools of simulated model servers (OpenAI API,
//! vLLM metrics, a prefix cache) and the proxy in front of them.

use std::net::SocketAddr;

use anyhow::{bail, Context, Result};
use clap::Args;
use inferlb_core::pool::EngineMetrics;
use std::time::Duration;

use inferlb_core::{
    Command, Config, PoolAutoscaling, PoolName, PoolSpec, Provider, ReplicaId, ReplicaSpec,
    Routing, State,
};
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
    /// Add a pool that scales itself: 0 to 3 `inferlb fake-replica`
    /// processes that take 3 s to start, on in-flight requests per replica.
    #[arg(long)]
    autoscale: bool,
}

/// The autoscaled pool of `--autoscale`.
const AUTOSCALED: &str = "mistral-7b";

/// `--autoscale`'s pool: min 0, max 3, replicas started as child processes
/// of this binary with a model's start-up delay.
fn autoscaled_pool() -> Result<PoolSpec> {
    let exe = std::env::current_exe().context("cannot find the inferlb binary")?;
    let command = [
        exe.to_string_lossy().as_ref(),
        "fake-replica",
        "--listen",
        "{host}:{port}",
        "--model",
        "{pool}",
        "--name",
        "{pool}-{index}",
        "--start-delay",
        "3s",
        "--decode-ms-per-token",
        "20",
        "--max-running",
        "4",
    ]
    .map(str::to_owned)
    .to_vec();
    let mut settings = PoolAutoscaling::new(Provider::Exec {
        command,
        env: Vec::new(),
    });
    settings.min = 0;
    settings.max = 3;
    settings.target_in_flight = 4.0;
    settings.scale_out_cooldown = Duration::from_secs(10);
    settings.scale_in_cooldown = Duration::from_secs(20);
    settings.scale_out_period = Duration::from_secs(1);
    settings.scale_out_datapoints = 3;
    settings.scale_in_period = Duration::from_secs(1);
    settings.scale_in_datapoints = 15;
    settings.idle_to_zero = Duration::from_secs(60);
    settings.drain_timeout = Duration::from_secs(30);
    settings.stop_grace = Duration::from_secs(5);
    settings.start_timeout = Duration::from_secs(60);
    // What one fake replica decodes at once: a burst waits for the replicas
    // starting rather than queueing in the first.
    settings.max_in_flight_per_replica = Some(4);
    let mut spec = PoolSpec::named(PoolName::new(AUTOSCALED)?);
    spec.aliases = vec!["mistralai/Mistral-7B-Instruct-v0.3".into()];
    spec.autoscaling = Some(std::sync::Arc::new(settings));
    Ok(spec)
}

/// The LoRA adapter the demo's first pool serves.
const DEMO_ADAPTER: &str = "sql-lora";

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
    // Both ports are checked before anything starts or is printed.
    check_port(args.listen, "the proxy", "--listen", "")?;
    check_port(
        args.admin_listen,
        "the admin API",
        "--admin-listen",
        if args.admin_listen.port() == 9090 {
            " (9090 is also Prometheus' default port)"
        } else {
            ""
        },
    )?;
    let (config, state, handles) = pools(&args)?;
    let (handle, snapshots) = crate::serve::start_proxy(&config, &state)?;
    let at = handle.local_addr();
    let admin = args.admin_listen;
    print_instructions(&args, at, admin);
    let plane = crate::serve::ControlPlane {
        admin_listen: admin,
        admin_listen_given: true,
        token: None,
        protect_probes: false,
        store: None,
        declared: inferlb_control::declared(&config),
        config_path: None,
        tasks: inferlb_control::TaskSettings {
            dns_refresh: None,
            health: config.health.clone(),
            publish: None,
        },
        fleet: None,
    };
    let workers = config.proxy.worker_count();
    crate::serve::run_control_plane(handle, snapshots, state, workers, plane)?;
    drop(handles);
    Ok(())
}

/// The demo's pools, each with its simulated replicas started, as the
/// config and the first state.
fn pools(args: &DemoArgs) -> Result<(Config, State, Vec<inferlb_testkit::EngineHandle>)> {
    let mut handles = Vec::new();
    let mut config = Config::default();
    config.proxy.listen_on(args.listen);
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
        // The first pool serves a LoRA adapter; the second keeps sessions
        // on one replica.
        let adapters: Vec<String> = if routing == Routing::Prefix {
            vec![DEMO_ADAPTER.to_owned()]
        } else {
            spec.affinity = Some(inferlb_core::affinity::Affinity {
                key: inferlb_core::affinity::AffinityKey::Header("x-session-id".into()),
                epsilon: inferlb_core::affinity::DEFAULT_EPSILON,
            });
            Vec::new()
        };
        spec.adapters = adapters.clone();
        state.apply(Command::SetPool(Box::new(spec.clone())))?;
        config.pools.push(spec);
        for i in 0..args.replicas.max(1) {
            let id = format!("{name}-{}", i + 1);
            let engine = EngineConfig {
                models: vec![name.to_owned(), alias.to_owned()],
                adapters: adapters.clone(),
                name: id.clone(),
                decode_ms_per_token: 20.0,
                ..EngineConfig::default()
            };
            let replica =
                inferlb_testkit::fake_engine::start(engine, SocketAddr::from(([127, 0, 0, 1], 0)))
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
    if args.autoscale {
        let spec = autoscaled_pool()?;
        state.apply(Command::SetPool(Box::new(spec.clone())))?;
        config.pools.push(spec);
    }
    Ok((config, state, handles))
}

/// Fails, naming the flag that moves it, when `addr` cannot be bound: taken
/// by another process (the proxy's listeners share ports with
/// `SO_REUSEPORT`, so a taken port would otherwise be shared silently).
fn check_port(addr: SocketAddr, what: &str, flag: &str, hint: &str) -> Result<()> {
    match std::net::TcpListener::bind(addr) {
        Ok(listener) => {
            drop(listener);
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => bail!(
            "{addr} is already in use{hint}: choose another address for {what} with {flag}, e.g. {flag} {}:{}",
            addr.ip(),
            addr.port() + 1
        ),
        Err(e) => bail!("cannot listen on {addr} for {what} ({flag}): {e}"),
    }
}

/// How to run this binary again from the current directory: a relative
/// path when it is under it (`./target/release/inferlb`), else the full one.
fn this_binary() -> String {
    let Ok(exe) = std::env::current_exe() else {
        return "inferlb".into();
    };
    let relative = std::env::current_dir().ok().and_then(|cwd| {
        exe.strip_prefix(cwd)
            .ok()
            .map(|p| format!("./{}", p.display()))
    });
    relative.unwrap_or_else(|| exe.display().to_string())
}

/// What to try, printed once the proxy listens.
#[allow(clippy::print_stdout)]
fn print_instructions(args: &DemoArgs, at: SocketAddr, admin: SocketAddr) {
    let (a, b) = (POOLS[0].0, POOLS[1].0);
    let inferlb = this_binary();
    let replicas = args.replicas.max(1);
    let each = if replicas == 1 {
        "1 simulated replica each".to_owned()
    } else {
        format!("{replicas} simulated replicas each")
    };
    println!();
    if args.autoscale {
        println!(
            "inferlb demo: pools {a} (prefix routing) and {b} (least_load on engine metrics), {each}, and {AUTOSCALED} (scales itself, 0 to 3), behind http://{at}"
        );
    } else {
        println!(
            "inferlb demo: pools {a} (prefix routing) and {b} (least_load on engine metrics), {each}, behind http://{at}"
        );
    }
    println!();
    println!("  # the models, as OpenAI's API lists them:");
    println!("  curl -s http://{at}/v1/models");
    println!();
    println!("  # a chat completion; the body's \"model\" picks the pool:");
    println!("  curl -s http://{at}/v1/chat/completions -H 'content-type: application/json' \\");
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
    println!("  # a LoRA adapter of {a} (listed with its parent), sent where it is loaded:");
    println!("  curl -s http://{at}/v1/completions -H 'content-type: application/json' -d '{{\"model\": \"{DEMO_ADAPTER}\", \"prompt\": \"SELECT\"}}'");
    println!();
    println!("  # session affinity on {b}: the same X-Session-ID, the same replica:");
    println!("  for i in 1 2 3; do curl -si http://{at}/v1/completions -H 'X-Model: {b}' -H 'X-Session-ID: alice' -H 'content-type: application/json' -d '{{\"prompt\": \"hi\"}}' | grep -i x-replica; done");
    println!();
    println!("  # which replica answered, and the pools with their engines' load:");
    println!("  curl -si http://{at}/v1/completions -H 'X-Model: {a}' -H 'content-type: application/json' -d '{{\"prompt\": \"hi\"}}' | grep -i x-replica");
    println!("  curl -s http://{admin}/v1/pools");
    println!();
    println!(
        "  # the admin API: list, add, drain replicas (changes are not persisted in the demo):"
    );
    println!("  {inferlb} replicas list --admin {admin}");
    println!("  curl -s http://{admin}/metrics | grep inferlb_replica_requests");
    println!();
    if args.autoscale {
        println!("  # {AUTOSCALED} scales itself: 0 replicas now, up to 3, each a process that takes 3 s to start.");
        println!(
            "  # A burst: the first requests are held while a replica starts, then it scales out:"
        );
        println!("  for i in $(seq 24); do curl -s -o /dev/null -w '%{{http_code}} %{{time_total}}s\\n' http://{at}/v1/chat/completions \\");
        println!("       -H 'content-type: application/json' -d '{{\"model\": \"{AUTOSCALED}\", \"messages\": [{{\"role\": \"user\", \"content\": \"Hi\"}}], \"max_tokens\": 200}}' & done; wait");
        println!("  # replicas appear, then drain and stop after 15 s of quiet, and the pool goes to zero after 60 s idle:");
        println!("  watch -n1 {inferlb} replicas list --admin {admin}");
        println!("  curl -s http://{admin}/v1/pools/{AUTOSCALED}/autoscaling");
        println!();
    }
    println!("Ctrl-C to stop.");
}
