//! `inferlb serve`: load the config, start the data plane, wait for signals.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use inferlb_core::config::{replica_spec, FileReplica};
use inferlb_core::{Command, Config, IoDriver, Routing, Snapshots, State};
use inferlb_proxy::ProxyHandle;

/// Flags of `inferlb serve`; each overrides the config file.
#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// TOML config file (see deploy/inferlb.toml for every field).
    #[arg(long, short = 'c', env = "INFERLB_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    /// Data-plane listen address [default: 0.0.0.0:8080].
    #[arg(long)]
    pub(crate) listen: Option<SocketAddr>,
    /// Worker threads [default: one per available core].
    #[arg(long)]
    pub(crate) workers: Option<usize>,
    /// A replica address (ip:port or host:port); repeat for more. Added to
    /// the config file's replicas.
    #[arg(long = "replica", value_name = "ADDR")]
    pub(crate) replicas: Vec<String>,
    /// round_robin or weighted_round_robin.
    #[arg(long)]
    pub(crate) routing: Option<Routing>,
    /// auto (io_uring, epoll where unavailable), uring, or legacy (epoll).
    #[arg(long)]
    pub(crate) io_driver: Option<IoDriver>,
    /// Pin worker N to CPU N.
    #[arg(long)]
    pub(crate) cpu_pinning: bool,
}

/// Reads the config file and applies the flags over it.
pub(crate) fn load_config(args: &ServeArgs) -> Result<Config> {
    let mut config = match &args.config {
        Some(path) => {
            Config::load(path).with_context(|| format!("invalid config file {}", path.display()))?
        }
        None => Config::default(),
    };
    if let Some(listen) = args.listen {
        config.proxy.listen = listen;
    }
    if let Some(workers) = args.workers {
        anyhow::ensure!(
            workers > 0 && workers <= 1024,
            "--workers must be between 1 and 1024, got {workers}"
        );
        config.proxy.workers = workers;
    }
    if let Some(routing) = args.routing {
        config.routing = routing;
    }
    if let Some(driver) = args.io_driver {
        config.proxy.io_driver = driver;
    }
    config.proxy.cpu_pinning |= args.cpu_pinning;
    for (i, address) in args.replicas.iter().enumerate() {
        let spec = replica_spec(
            &format!("--replica #{}", i + 1),
            &FileReplica {
                address: address.clone(),
                weight: None,
                id: None,
            },
        )?;
        anyhow::ensure!(
            !config
                .replicas
                .iter()
                .any(|r| r.id == spec.id || r.addr == spec.addr),
            "--replica {address} is given twice"
        );
        config.replicas.push(spec);
    }
    Ok(config)
}

/// Builds the first snapshot from the configured replicas.
pub(crate) fn initial_state(config: &Config) -> Result<State> {
    let mut state = State::new(config.routing);
    for spec in &config.replicas {
        state
            .apply(Command::Add(spec.clone()))
            .with_context(|| format!("cannot add replica {}", spec.address))?;
    }
    Ok(state)
}

/// Starts the data plane and logs what it runs with.
pub(crate) fn start_proxy(config: &Config, state: &State) -> Result<(ProxyHandle, Snapshots)> {
    let snapshots = Snapshots::new(state.snapshot());
    let handle =
        inferlb_proxy::start(&config.proxy, snapshots.clone()).context("cannot start the proxy")?;
    tracing::info!(
        workers = config.proxy.worker_count(),
        pinned = config.proxy.cpu_pinning,
        "workers started"
    );
    tracing::info!(driver = handle.io_driver().as_str(), "I/O driver");
    tracing::info!(listen = %handle.local_addr(), routing = %config.routing, "listening");
    if state.replicas().is_empty() {
        tracing::info!("no replicas yet: every request gets 503 until one is added");
    }
    for r in state.replicas() {
        tracing::info!(id = %r.id, address = %r.address, resolved = %r.addr, weight = r.weight, "replica");
    }
    Ok((handle, snapshots))
}

/// Waits for SIGTERM or SIGINT, then drains; a second signal stops at once.
pub(crate) fn wait_for_shutdown(handle: ProxyHandle) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the control thread")?;
    runtime.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("shutting down: no new connections; in-flight requests finish");
        handle.shutdown();
        let waiter = tokio::task::spawn_blocking(move || handle.wait());
        tokio::select! {
            _ = waiter => {}
            _ = term.recv() => { tracing::warn!("second signal: stopping now"); std::process::exit(0) }
            _ = int.recv() => { tracing::warn!("second signal: stopping now"); std::process::exit(0) }
        }
        tracing::info!("stopped");
        Ok::<_, std::io::Error>(())
    })?;
    Ok(())
}

pub(crate) fn run(args: ServeArgs) -> Result<()> {
    let config = load_config(&args)?;
    let state = initial_state(&config)?;
    let (handle, _snapshots) = start_proxy(&config, &state)?;
    wait_for_shutdown(handle)
}
