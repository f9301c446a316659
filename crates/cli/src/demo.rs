//! `inferlb demo`: three fake model replicas and the proxy in front of them.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use inferlb_core::{Command, Config, ReplicaId, ReplicaSpec, State};
use inferlb_testkit::{FakeReplica, Latency};

/// Flags of `inferlb demo`.
#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Where the proxy listens.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// How many fake replicas to start.
    #[arg(long, default_value_t = 3)]
    replicas: usize,
    /// Worker threads [default: one per available core].
    #[arg(long)]
    workers: Option<usize>,
    /// Where the admin API listens.
    #[arg(long, default_value = "127.0.0.1:9090")]
    admin_listen: SocketAddr,
}

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
    let mut handles = Vec::with_capacity(args.replicas);
    let mut config = Config::default();
    config.proxy.listen = args.listen;
    config.proxy.workers = args.workers.unwrap_or(0);
    let mut state = State::new(config.routing);
    for i in 0..args.replicas {
        let name = format!("demo-{}", i + 1);
        let replica = FakeReplica::builder()
            .name(&name)
            .completions()
            .latency(Latency::Uniform(
                Duration::from_millis(5),
                Duration::from_millis(30),
            ))
            .start()
            .with_context(|| format!("cannot start fake replica {name}"))?;
        let addr = replica.addr();
        state.apply(Command::Add(ReplicaSpec {
            id: ReplicaId::new(&name)?,
            address: addr.to_string(),
            addr,
            weight: 1,
            pool: Default::default(),
        }))?;
        handles.push(replica);
    }
    let (handle, snapshots) = crate::serve::start_proxy(&config, &state)?;
    let at = handle.local_addr();
    let admin = args.admin_listen;
    #[allow(clippy::print_stdout)]
    {
        println!();
        println!(
            "inferlb demo: {} fake replicas behind http://{at}",
            args.replicas
        );
        println!();
        println!("  # a completion (JSON), answered by the replicas in turn:");
        println!("  curl -s http://{at}/v1/completions -H 'content-type: application/json' \\");
        println!("       -d '{{\"prompt\": \"hello\", \"max_tokens\": 16}}'");
        println!();
        println!("  # a token stream (SSE), relayed event by event:");
        println!("  curl -N http://{at}/v1/completions -H 'content-type: application/json' \\");
        println!("       -d '{{\"prompt\": \"hello\", \"stream\": true}}'");
        println!();
        println!("  # which replica answered:");
        println!("  curl -si http://{at}/v1/completions -d '{{}}' | grep -i x-replica");
        println!();
        println!(
            "  # the admin API: list, add, drain replicas (changes are not persisted in the demo):"
        );
        println!("  curl -s http://{admin}/v1/replicas");
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
        declared: Default::default(),
        dns_refresh: None,
        config_path: None,
        health: config.health.clone(),
    };
    let workers = config.proxy.worker_count();
    crate::serve::run_control_plane(handle, snapshots, state, workers, plane)?;
    drop(handles);
    Ok(())
}
