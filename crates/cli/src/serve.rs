//! `inferlb serve`: load the config, start the data plane and the control
//! plane (admin API, drain reaper, signals), run until SIGTERM.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Args;
use inferlb_admin::{AppState, DataPlane};
use inferlb_control::cluster::Fleet;
use inferlb_control::{
    declared, starting_state, Control, Declared, StateFile, TaskSettings, Tasks,
};
use inferlb_core::config::{replica_spec, FileReplica};
use inferlb_core::{Config, IoDriver, Routing, Snapshots, State};
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
    /// Worker threads; 0 is one per available core, as in the file
    /// [default: one per available core].
    #[arg(long)]
    pub(crate) workers: Option<usize>,
    /// A replica address (ip:port or host:port); repeat for more. Added to
    /// the config file's replicas.
    #[arg(long = "replica", value_name = "ADDR")]
    pub(crate) replicas: Vec<String>,
    /// The routing rule: round_robin, weighted_round_robin, least_outstanding,
    /// p2c, least_load (the engines' reported load) or prefix (prefix-cache
    /// affinity).
    #[arg(long)]
    pub(crate) routing: Option<Routing>,
    /// auto (io_uring, epoll where unavailable), uring, or legacy (epoll).
    #[arg(long)]
    pub(crate) io_driver: Option<IoDriver>,
    /// Pin worker N to CPU N.
    #[arg(long)]
    pub(crate) cpu_pinning: bool,
    /// Admin API address [default: 127.0.0.1:9090].
    #[arg(long)]
    pub(crate) admin_listen: Option<SocketAddr>,
    /// File holding the admin bearer token (or set INFERLB_ADMIN_TOKEN).
    #[arg(long)]
    pub(crate) admin_token_file: Option<PathBuf>,
    /// Where runtime replica changes persist [default: under systemd,
    /// $STATE_DIRECTORY/inferlb-state.json; otherwise they are kept in
    /// memory only].
    #[arg(long)]
    pub(crate) state_file: Option<PathBuf>,
    /// Write an access log line per request to this file ("-" for stdout),
    /// JSON lines unless `[access_log] format = "text"`; SIGUSR1 reopens it.
    #[arg(long, value_name = "PATH")]
    pub(crate) access_log: Option<String>,
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
        // One plaintext listener, in place of the file's.
        config.proxy.listen_on(listen);
    }
    if let Some(workers) = args.workers {
        anyhow::ensure!(
            workers <= 1024,
            "--workers must be between 0 (one per core) and 1024, got {workers}"
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
    if let Some(listen) = args.admin_listen {
        config.admin.listen = listen;
        config.admin.listen_given = true;
    }
    if let Some(file) = &args.admin_token_file {
        config.admin.token_file = Some(file.clone());
    }
    if let Some(file) = &args.state_file {
        anyhow::ensure!(
            config.cluster.is_none(),
            "--state-file cannot be used with [cluster]: the fleet's runtime changes live in etcd"
        );
        config.admin.state_file = Some(file.clone());
    }
    if let Some(path) = &args.access_log {
        anyhow::ensure!(
            !path.is_empty(),
            "--access-log needs a file, or - for stdout"
        );
        let format = config
            .proxy
            .access_log
            .as_ref()
            .map(|a| a.format)
            .unwrap_or_default();
        config.proxy.access_log = Some(inferlb_core::config::AccessLog {
            path: (path != "-").then(|| PathBuf::from(path)),
            format,
        });
    }
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

/// The admin token: from the configured file, else `INFERLB_ADMIN_TOKEN`.
pub(crate) fn admin_token(token_file: Option<&Path>) -> Result<Option<String>> {
    let token = match token_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the admin token file {}", path.display()))?;
            warn_if_readable_by_others(path);
            Some(text.trim().to_owned())
        }
        None => std::env::var("INFERLB_ADMIN_TOKEN")
            .ok()
            .map(|t| t.trim().to_owned()),
    };
    if token.as_deref() == Some("") {
        bail!("the admin token is empty; put a secret in the token file or INFERLB_ADMIN_TOKEN");
    }
    Ok(token)
}

/// A secret others on the host can read is no secret: say so (as ssh does
/// of a private key), without refusing to start.
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode();
        if mode & 0o044 != 0 {
            tracing::warn!(
                path = %path.display(),
                mode = format!("{:o}", mode & 0o777),
                "the admin token file is readable by its group or by everyone; chmod 600 it"
            );
        }
    }
}

/// Starts the data plane and logs what it runs with.
pub(crate) fn start_proxy(config: &Config, state: &State) -> Result<(ProxyHandle, Snapshots)> {
    let snapshots = Snapshots::new(state.snapshot());
    // A pool's CA that cannot be read stops the start, as a bad listener
    // certificate does.
    if let Some(problem) = inferlb_proxy::check_upstream_tls(&config.pools).first() {
        anyhow::bail!("cannot start the proxy: {problem}");
    }
    let handle =
        inferlb_proxy::start(&config.proxy, snapshots.clone()).context("cannot start the proxy")?;
    tracing::info!(
        workers = config.proxy.worker_count(),
        pinned = config.proxy.cpu_pinning,
        "workers started"
    );
    tracing::info!(driver = handle.io_driver().as_str(), "I/O driver");
    for (addr, listener) in handle.local_addrs().iter().zip(&config.proxy.listeners) {
        let protocols: Vec<&str> = listener
            .alpn
            .iter()
            .map(|p| std::str::from_utf8(p.alpn_id()).unwrap_or("?"))
            .collect();
        tracing::info!(
            listen = %addr,
            tls = listener.tls.is_some(),
            protocols = %protocols.join(","),
            routing = %state.routing(),
            "listening"
        );
    }
    if state.replicas().is_empty() {
        if state.pools().iter().any(|p| p.autoscaling.is_some()) {
            tracing::info!("no replicas yet: autoscaling pools start theirs on demand; others answer 503 until one is added");
        } else {
            tracing::info!("no replicas yet: every request gets 503 until one is added");
        }
    }
    for r in state.replicas() {
        tracing::info!(id = %r.id, pool = %r.pool, address = %r.address, resolved = %r.addr, weight = r.weight, state = r.state.as_str(), "replica");
    }
    Ok((handle, snapshots))
}

/// What the control plane needs beside the running data plane.
pub(crate) struct ControlPlane {
    pub(crate) admin_listen: SocketAddr,
    /// The admin address was chosen by the operator (not the default): a
    /// failure to bind it stops start-up. A defaulted one already in use
    /// (another inferlb on this host) only disables the admin API, loudly.
    pub(crate) admin_listen_given: bool,
    pub(crate) token: Option<String>,
    pub(crate) protect_probes: bool,
    pub(crate) store: Option<StateFile>,
    /// The declared replicas and pools (config file and flags).
    pub(crate) declared: Declared,
    /// Re-read on SIGHUP.
    pub(crate) config_path: Option<PathBuf>,
    /// The control plane's background tasks.
    pub(crate) tasks: TaskSettings,
    /// In a fleet: the shared record in etcd, and the runtime its client
    /// was made on (the control plane runs on it).
    pub(crate) fleet: Option<(Arc<Fleet>, tokio::runtime::Runtime)>,
}

/// Runs the control plane on this thread (tokio, current-thread): the admin
/// API, the drain reaper and the signals. Returns after SIGTERM or SIGINT
/// once the workers have drained; a second signal exits at once.
pub(crate) fn run_control_plane(
    handle: ProxyHandle,
    snapshots: Snapshots,
    state: State,
    workers: usize,
    plane: ControlPlane,
) -> Result<()> {
    let (fleet, runtime) = match plane.fleet {
        Some((fleet, runtime)) => (Some(fleet), runtime),
        None => (None, control_runtime()?),
    };
    runtime.block_on(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut hup = signal(SignalKind::hangup())?;
        let mut usr1 = signal(SignalKind::user_defined1())?;

        let listener = match tokio::net::TcpListener::bind(plane.admin_listen).await {
            Ok(listener) => Some(listener),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && !plane.admin_listen_given => {
                tracing::warn!(
                    listen = %plane.admin_listen,
                    "the default admin address is in use (another inferlb?): running WITHOUT the admin API; \
                     set --admin-listen to choose another address"
                );
                None
            }
            Err(e) => {
                return Err(anyhow::Error::new(e)
                    .context(format!("cannot listen on {} for the admin API", plane.admin_listen)))
            }
        };
        let mut control = Control::new(state, snapshots, plane.store.clone());
        if let Some(fleet) = &fleet {
            control = control.in_fleet(Arc::clone(fleet));
        }
        let control = Arc::new(control);
        control.set_declared(plane.declared.clone());
        let data_plane = DataPlane {
            workers,
            io_driver: handle.io_driver().as_str().to_owned(),
            worker_stats: handle.worker_stats().to_vec(),
            front: Arc::clone(handle.front_end()),
        };
        let app = AppState::new(Arc::clone(&control), data_plane, plane.token.clone(), plane.protect_probes);
        let (stop_admin, admin_stopped) = tokio::sync::oneshot::channel::<()>();
        let admin = listener.map(|listener| {
            tracing::info!(listen = %plane.admin_listen, auth = plane.token.is_some(), "admin API");
            let limits = inferlb_admin::ServeLimits {
                token: plane.token.as_deref().map(Arc::from),
                ..inferlb_admin::ServeLimits::default()
            };
            tokio::spawn(inferlb_admin::serve_with_limits(listener, inferlb_admin::router(app), async move {
                let _ = admin_stopped.await;
            }, limits))
        });
        let mut fleet_tasks = Vec::new();
        if let Some(fleet) = &fleet {
            let config = fleet.config();
            tracing::info!(cluster = %config.name, instance = %config.instance, etcd = %config.etcd.join(","), "fleet member: the state lives in etcd");
            fleet_tasks.push(tokio::spawn(Arc::clone(fleet).run_watch(Arc::clone(&control))));
            fleet_tasks.push(tokio::spawn(Arc::clone(fleet).run_presence(Arc::clone(&control))));
        }
        match &plane.store {
            _ if fleet.is_some() => {}
            Some(store) => tracing::info!(path = %store.path().display(), "state file: runtime changes persist on top of the declared replicas"),
            None => tracing::info!("runtime changes are kept in memory only: pass --state-file (or run under systemd, which sets $STATE_DIRECTORY) to keep them across restarts"),
        }
        let tasks = Tasks::start(&control, plane.tasks).await;

        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = hup.recv() => {
                    inferlb_control::reload(&control, plane.config_path.as_deref()).await;
                    // New handshakes use the new certificates; a bad file
                    // keeps the old ones.
                    for error in handle.reload_certificates() {
                        tracing::error!(%error, "certificates not reloaded; the old ones stay in use");
                    }
                }
                // logrotate moved the access log: write a new one.
                _ = usr1.recv() => handle.reopen_access_log(),
            }
        }
        tracing::info!("shutting down: no new connections; in-flight requests finish");
        handle.shutdown();
        let waiter = tokio::task::spawn_blocking(move || handle.wait());
        tokio::select! {
            _ = waiter => {}
            _ = term.recv() => { tracing::warn!("second signal: stopping now"); std::process::exit(0) }
            _ = int.recv() => { tracing::warn!("second signal: stopping now"); std::process::exit(0) }
        }
        // The autoscaled replicas stop once nothing is sent to them.
        tasks.stop().await;
        if let Some(fleet) = &fleet {
            for task in fleet_tasks {
                task.abort();
            }
            fleet.leave().await;
        }
        let _ = stop_admin.send(());
        if let Some(admin) = admin {
            let _ = admin.await;
        }
        tracing::info!("stopped");
        Ok::<_, anyhow::Error>(())
    })
}

pub(crate) fn run(args: ServeArgs) -> Result<()> {
    let config = load_config(&args)?;
    // What `inferlb check` finds beyond the file's own rules stops start-up too.
    let problems = crate::check::commands(&config);
    if !problems.is_empty() {
        bail!(
            "invalid config: {}",
            inferlb_core::ConfigError::Invalid(problems)
        );
    }
    let token = admin_token(config.admin.token_file.as_deref())?;
    if !config.admin.listen.ip().is_loopback() && token.is_none() {
        bail!(
            "refusing to serve the admin API on {} without a token: set --admin-token-file or INFERLB_ADMIN_TOKEN, \
             or listen on a loopback address",
            config.admin.listen
        );
    }
    // Persistence is asked for (a flag or the config), or given by systemd;
    // nothing an earlier run left in the working directory is read. A
    // fleet's state lives in etcd instead.
    let store = config
        .admin
        .state_file
        .clone()
        .or_else(StateFile::systemd_path)
        .filter(|_| config.cluster.is_none())
        .map(StateFile::new);
    let (state, declared, fleet) = match &config.cluster {
        None => (
            starting_state(&config, store.as_ref())?,
            declared(&config),
            None,
        ),
        Some(cluster) => {
            let runtime = control_runtime()?;
            let admin = Some(config.admin.listen.to_string());
            let (fleet, state, declared) = runtime.block_on(async {
                let fleet = Fleet::new(cluster.clone(), config.replicas.clone(), admin).await?;
                let (state, declared) =
                    inferlb_control::cluster::starting_state(&fleet, &config).await?;
                Ok::<_, inferlb_control::cluster::FleetError>((fleet, state, declared))
            })?;
            (state, declared, Some((fleet, runtime)))
        }
    };
    let (handle, snapshots) = start_proxy(&config, &state)?;
    let plane = ControlPlane {
        admin_listen: config.admin.listen,
        admin_listen_given: config.admin.listen_given,
        token,
        protect_probes: config.admin.protect_probes,
        store,
        declared,
        config_path: args.config.clone(),
        tasks: TaskSettings::of(&config),
        fleet,
    };
    run_control_plane(handle, snapshots, state, config.proxy.worker_count(), plane)
}

/// The control plane's runtime: one thread (tokio, current-thread).
fn control_runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the control thread")
}
