//! Starting the control plane: the state the process begins with (the
//! declared list, with the state file's runtime changes on top), the
//! background tasks that feed the one writer, and a config reload.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use inferlb_core::config::{HealthCheck, Publish};
use inferlb_core::{Command, Config, State, StateError};

use crate::state_file::{Declared, PersistError, StateFile};
use crate::writer::{Control, DEFAULT_DRAIN};

/// Why the starting state could not be built.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot declare pool {pool}: {source}")]
    Pool { pool: String, source: StateError },
    #[error("cannot add replica {address}: {source}")]
    Replica { address: String, source: StateError },
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Persist(#[from] PersistError),
}

/// What the config file and flags declare.
pub fn declared(config: &Config) -> Declared {
    Declared {
        replicas: config.replicas.clone(),
        pools: config.pools.clone(),
    }
}

/// The state built from the declared replicas and pools alone.
pub fn initial_state(config: &Config) -> Result<State, StartError> {
    let mut state = State::new(config.routing);
    state.apply(Command::SetSafeguards(config.safeguards))?;
    for pool in &config.pools {
        state
            .apply(Command::SetPool(Box::new(pool.clone())))
            .map_err(|source| StartError::Pool {
                pool: pool.name.to_string(),
                source,
            })?;
    }
    for spec in &config.replicas {
        state
            .apply(Command::Add(spec.clone()))
            .map_err(|source| StartError::Replica {
                address: spec.address.clone(),
                source,
            })?;
    }
    Ok(state)
}

/// The state the process starts with: the declared one, with the state
/// file's runtime changes replayed on top when a state file is used.
pub fn starting_state(config: &Config, store: Option<&StateFile>) -> Result<State, StartError> {
    let loaded = match store {
        Some(store) => store.load(config.routing, &declared(config))?,
        None => None,
    };
    match loaded {
        Some(mut state) => {
            state.apply(Command::SetSafeguards(config.safeguards))?;
            tracing::info!(
                replicas = state.replicas().len(),
                "runtime changes from the state file applied on top of the declared replicas"
            );
            Ok(state)
        }
        None => initial_state(config),
    }
}

/// The background tasks' settings.
#[derive(Debug, Clone)]
pub struct TaskSettings {
    /// How often replica host names are resolved again.
    pub dns_refresh: Option<Duration>,
    /// Active health checks.
    pub health: HealthCheck,
    /// Publishing the proxy's concurrency to CloudWatch.
    pub publish: Option<Publish>,
}

impl TaskSettings {
    /// The settings `config` gives.
    pub fn of(config: &Config) -> Self {
        Self {
            dns_refresh: config.dns_refresh,
            health: config.health.clone(),
            publish: config.publish.clone(),
        }
    }
}

/// The control plane's background tasks, each feeding the one writer: the
/// drain reaper, DNS refreshes, engine-metrics scrapes, health checks, the
/// local scalers, and the CloudWatch publisher.
#[derive(Debug)]
pub struct Tasks {
    stop_scalers: tokio::sync::watch::Sender<bool>,
    scalers: Vec<tokio::task::JoinHandle<()>>,
    others: Vec<tokio::task::JoinHandle<()>>,
}

impl Tasks {
    /// Starts them on the current tokio runtime.
    pub async fn start(control: &Arc<Control>, settings: TaskSettings) -> Self {
        let mut others = vec![tokio::spawn(Arc::clone(control).run_reaper())];
        if let Some(interval) = settings.dns_refresh {
            others.push(tokio::spawn(crate::dns::run(
                Arc::clone(control),
                interval,
                Arc::new(crate::dns::SystemResolver),
            )));
        }
        others.push(tokio::spawn(crate::engine_metrics::run(Arc::clone(
            control,
        ))));
        others.push(tokio::spawn(crate::engine_metrics::learn_adapters(
            Arc::clone(control),
        )));
        let (stop_scalers, scalers_stop) = tokio::sync::watch::channel(false);
        let scalers = crate::scaler::spawn_all(control, &scalers_stop).await;
        if let Some(publish) = settings.publish {
            tracing::info!(namespace = %publish.namespace, interval = ?publish.interval, "publishing per-pool concurrency to CloudWatch");
            others.push(tokio::spawn(crate::cloudwatch::run(
                Arc::clone(control),
                publish,
            )));
        }
        let pool_checks = control
            .declared()
            .pools
            .iter()
            .any(|p| p.health.enabled == Some(true));
        if settings.health.enabled || pool_checks {
            tracing::info!(path = %settings.health.path, interval = ?settings.health.interval, "active health checks");
            others.push(tokio::spawn(crate::health::run(
                Arc::clone(control),
                settings.health,
            )));
        }
        Self {
            stop_scalers,
            scalers,
            others,
        }
    }

    /// Stops the local scalers (their replicas stop once nothing is sent to
    /// them) and waits for them; the other tasks end with the runtime.
    pub async fn stop(self) {
        let _ = self.stop_scalers.send(true);
        for scaler in self.scalers {
            let _ = scaler.await;
        }
        for task in self.others {
            task.abort();
        }
    }
}

/// SIGHUP: re-reads the config file and applies the difference through the
/// one writer. An invalid file is rejected and the running configuration
/// kept; either way the log says which.
pub async fn reload(control: &Control, path: Option<&Path>) {
    let Some(path) = path else {
        tracing::warn!("SIGHUP ignored: inferlb was started without --config");
        return;
    };
    // Loading resolves host names: on the blocking pool, not the control thread.
    let file = path.to_path_buf();
    let loaded = tokio::task::spawn_blocking(move || Config::load(&file)).await;
    let mut config = match loaded {
        Ok(Ok(config)) => config,
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "config reload failed; keeping the running configuration");
            return;
        }
        Ok(Err(e)) => {
            tracing::error!(path = %path.display(), error = %e, "config reload rejected; keeping the running configuration");
            return;
        }
    };
    // In a fleet, the declared list is the fleet's: this file publishes its
    // replicas only when it changed them since this instance last read it,
    // so an instance with an old file cannot undo the fleet's list.
    if let Some(fleet) = control.fleet() {
        let before = fleet.swap_file_replicas(config.replicas.clone());
        if before == config.replicas {
            config.replicas = control.declared().replicas;
        } else {
            tracing::info!(path = %path.display(), replicas = config.replicas.len(), "this file changed the declared replicas: publishing them to the fleet");
        }
    }
    // The new declared list, with the runtime changes made so far on top,
    // diffed and applied under the control lock in one step.
    let old_declared = control.declared();
    control.set_declared(declared(&config));
    let converged = control
        .converge(SystemTime::now() + DEFAULT_DRAIN, |state| {
            let desired = crate::state_file::desired_after_reload(
                state,
                &old_declared.replicas,
                &config.replicas,
            );
            let mut extra = state.diff_pools(&config.pools);
            if config.routing != state.routing() {
                extra.push(Command::SetRouting(config.routing));
            }
            if config.safeguards != state.safeguards() {
                extra.push(Command::SetSafeguards(config.safeguards));
            }
            (desired, extra)
        })
        .await;
    match converged {
        Ok(commands) => {
            tracing::info!(path = %path.display(), changes = commands.len(), "config reloaded (listen, workers, timeouts and limits need a restart)")
        }
        Err(e) => {
            control.set_declared(old_declared);
            tracing::error!(path = %path.display(), error = %e, "config reload rejected; keeping the running configuration")
        }
    }
}
