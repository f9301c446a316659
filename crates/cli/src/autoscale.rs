//! `inferlb autoscale ...`: make Application Auto Scaling match a file.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use inferlb_autoscaler::simulate::{Options as SimOptions, Trace};
use inferlb_autoscaler::{
    hold_path, render, Agent, AutoscalingFile, Aws, AwsOptions, Outcome, PlanOptions,
};

/// Flags shared by every `autoscale` command.
#[derive(Debug, Args)]
pub(crate) struct AutoscaleArgs {
    #[command(subcommand)]
    command: AutoscaleCommand,
    /// The autoscaling file (see deploy/autoscaling.example.toml).
    #[arg(long, short = 'f', global = true, default_value = "autoscaling.toml")]
    file: PathBuf,
    /// AWS region [default: from the environment, the profile, or the file].
    #[arg(long, global = true)]
    region: Option<String>,
    /// AWS shared-config profile.
    #[arg(long, global = true, env = "AWS_PROFILE")]
    profile: Option<String>,
    /// Endpoint override, e.g. an emulator: http://127.0.0.1:5000.
    #[arg(long, global = true)]
    endpoint_url: Option<String>,
    /// Attempts per AWS call; throttling and 5xx are retried with backoff.
    #[arg(long, global = true, default_value_t = 5)]
    max_attempts: u32,
    /// text (default) or json.
    #[arg(long, global = true, value_enum, default_value_t = Output::Text)]
    output: Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    #[value(alias = "table")]
    Text,
    Json,
}

// Parsed once per process: the size of `Simulate`'s flags costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum AutoscaleCommand {
    /// Show what apply would change; changes nothing. Exit 2 when changes are pending.
    Plan {
        /// Compare min/max even where a schedule owns them.
        #[arg(long)]
        reset_capacity: bool,
    },
    /// Make AWS match the file. A second apply makes no write call.
    Apply {
        /// Show the plan without making any write call.
        #[arg(long)]
        dry_run: bool,
        /// Put the file's min/max back once, even where scheduled actions
        /// (or `capacity = "ignore_changes"`) own them.
        #[arg(long)]
        reset_capacity: bool,
        /// Also delete what inferlb made (targets tagged inferlb:managed,
        /// alarms named inferlb-*) that the file no longer names. Refuses
        /// (exit 1) when such a target carries policies or scheduled
        /// actions, which deregistering deletes too, unless --force.
        #[arg(long)]
        prune: bool,
        /// With --prune: deregister marked targets even when they carry
        /// policies or scheduled actions.
        #[arg(long, requires = "prune")]
        force: bool,
    },
    /// Show targets, policies, alarms and recent scaling activities.
    Status,
    /// Remove what the file declares: alarms, policies, scheduled actions, targets.
    /// Refuses (exit 1) when a target has policies or actions the file does
    /// not name, which deregistering would delete too, unless --force.
    Destroy {
        /// Show what would be removed without removing it.
        #[arg(long)]
        dry_run: bool,
        /// Deregister even targets with policies or actions not in the file.
        #[arg(long)]
        force: bool,
    },
    /// Replay a load trace through the file's policies, minute by minute:
    /// the capacity AAS would set and the load it would leave unserved.
    /// Makes no AWS call.
    Simulate {
        /// CSV with `time` (RFC 3339 or seconds) and `invocations` (per
        /// minute) or `concurrency`; optionally `metric`.
        #[arg(long)]
        trace: PathBuf,
        /// The target to simulate [default: the file's only, or first, target].
        #[arg(long)]
        target: Option<String>,
        /// What one instance or copy serves (invocations per minute, or
        /// concurrent requests) [default: the first policy's target value;
        /// 1 for provisioned concurrency].
        #[arg(long)]
        capacity_per_instance: Option<f64>,
        /// Time until new capacity serves, e.g. 5m.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "5m")]
        provision_delay: Duration,
        /// Capacity at the start [default: the target's min, at least 1].
        #[arg(long)]
        start_capacity: Option<i32>,
        /// Also plot load, capacity and unserved load to this SVG file.
        #[arg(long)]
        svg: Option<PathBuf>,
        /// Datapoints above target before target tracking scales out [AAS: 3].
        #[arg(long)]
        scale_out_datapoints: Option<usize>,
        /// The scale-out alarm's period, e.g. 10s [AAS: 1m; 10s for a
        /// `...HighResolution` metric].
        #[arg(long, value_parser = humantime::parse_duration)]
        scale_out_period: Option<Duration>,
        /// Datapoints below the scale-in threshold before it scales in [AAS: 15].
        #[arg(long)]
        scale_in_datapoints: Option<usize>,
        /// The scale-in alarm's period [AAS: 1m, high-resolution metrics too].
        #[arg(long, value_parser = humantime::parse_duration)]
        scale_in_period: Option<Duration>,
        /// The scale-in threshold as a share of the target [AAS: 0.9].
        #[arg(long)]
        scale_in_ratio: Option<f64>,
        /// The wall-clock time the trace starts at (RFC 3339), for a trace
        /// of seconds: needed when the target has scheduled actions
        /// [default: the trace's first time, or 2026-01-05T00:00:00Z].
        #[arg(long)]
        start: Option<String>,
        /// An assumption: the most units one target-tracking scale-in
        /// removes (AWS scales in "more gradually" and publishes no
        /// formula) [default: none, straight to the proportional capacity].
        #[arg(long)]
        scale_in_step: Option<i32>,
        /// An assumption with no AWS source: no target-tracking scale-in
        /// while a scale-out cooldown runs [default: off].
        #[arg(long)]
        scale_in_waits_for_scale_out_cooldown: bool,
        /// An assumption: while new capacity provisions, the endpoint is
        /// `Updating` and no dynamic scaling happens [default: true].
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        busy_while_provisioning: bool,
    },
    /// Pause `run` for a deploy window: it applies nothing until the hold
    /// ends (`<file>.hold` holds the end time).
    Hold {
        /// How long, e.g. 30m or 2h.
        #[arg(long = "for", value_parser = humantime::parse_duration, required_unless_present = "release")]
        duration: Option<Duration>,
        /// End the hold now.
        #[arg(long, conflicts_with = "duration")]
        release: bool,
    },
    /// Apply on an interval, correcting drift, until SIGTERM or SIGINT.
    Run {
        /// Time between reconciliations, e.g. 60s or 5m.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        interval: Duration,
        /// Run on one host of several at a time: an inferlb config file
        /// whose `[cluster]` names the etcd cluster, or etcd's client URLs
        /// (comma-separated). Every host runs the same command; one leads
        /// (etcd's election on a lease), the others stand by and take over
        /// within the lease TTL when it is lost.
        #[arg(long, value_name = "CONFIG|URLS")]
        cluster: Option<String>,
        /// With URLs in --cluster: the fleet's name [default: default].
        #[arg(long, requires = "cluster")]
        cluster_name: Option<String>,
        /// With --cluster: this host's name in the election [default: the
        /// host name, or the config's `[cluster] instance`].
        #[arg(long, requires = "cluster")]
        instance: Option<String>,
        /// With URLs in --cluster: the lease TTL, e.g. 10s [default: 10s].
        #[arg(long, requires = "cluster", value_parser = humantime::parse_duration)]
        lease_ttl: Option<Duration>,
    },
}

/// `--cluster`: an inferlb config's `[cluster]`, or etcd URLs with the
/// other flags.
fn fleet_of(
    cluster: &str,
    name: Option<String>,
    instance: Option<String>,
    lease_ttl: Option<Duration>,
) -> Result<inferlb_core::config::Cluster> {
    use inferlb_core::config::{host_name, valid_key_segment, Cluster, DEFAULT_LEASE_TTL};
    let urls = cluster.starts_with("http://") || cluster.starts_with("https://");
    let mut fleet = if urls {
        anyhow::ensure!(
            name.as_deref().is_none_or(valid_key_segment),
            "--cluster-name: use letters, digits, '.', '_' or '-'"
        );
        let ttl = lease_ttl.unwrap_or(DEFAULT_LEASE_TTL);
        anyhow::ensure!(
            (2..=600).contains(&ttl.as_secs()),
            "--lease-ttl must be between 2s and 10m"
        );
        Cluster {
            etcd: cluster.split(',').map(str::to_owned).collect(),
            name: name.unwrap_or_else(|| "default".to_owned()),
            instance: host_name(),
            lease_ttl: ttl,
            tls: None,
        }
    } else {
        anyhow::ensure!(
            name.is_none() && lease_ttl.is_none(),
            "--cluster-name and --lease-ttl go with etcd URLs; the config file's [cluster] sets them"
        );
        let config = inferlb_core::Config::check(std::path::Path::new(cluster))
            .with_context(|| format!("invalid config file {cluster}"))?;
        config
            .cluster
            .with_context(|| format!("{cluster} has no [cluster] section"))?
    };
    if let Some(instance) = instance {
        anyhow::ensure!(
            valid_key_segment(&instance),
            "--instance: use letters, digits, '.', '_' or '-'"
        );
        fleet.instance = instance;
    }
    Ok(fleet)
}

/// `run --cluster`: reconciles only while this host leads; campaigns again
/// when leadership is lost, until `stop`.
async fn run_leading(
    agent: &Agent,
    fleet: &inferlb_core::config::Cluster,
    interval: Duration,
    hold: Option<PathBuf>,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    loop {
        let leadership = tokio::select! {
            _ = &mut stop => return,
            led = inferlb_control::cluster::lead(fleet, "autoscale-agent") => led,
        };
        let leadership = match leadership {
            Ok(leadership) => leadership,
            Err(error) => {
                tracing::warn!(%error, "cannot campaign for the autoscaling agent; trying again");
                tokio::select! {
                    _ = &mut stop => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        let mut lost = leadership.lost.clone();
        tokio::select! {
            _ = &mut stop => {
                leadership.resign().await;
                return;
            }
            _ = lost.changed() => {
                tracing::warn!("leadership lost: this host stops reconciling and campaigns again");
            }
            _ = agent.run(interval, hold.clone(), std::future::pending::<()>()) => {}
        }
    }
}

#[allow(clippy::print_stdout)]
fn print_outcome(outcome: &Outcome, output: Output, verb: &str) -> Result<()> {
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(outcome)?);
        return Ok(());
    }
    print!("{}", render(&outcome.plan));
    if outcome.dry_run {
        println!("Dry run: no call was made.");
    } else if outcome.calls.is_empty() {
        println!("Nothing to {verb}: no write call was made.");
    } else {
        for call in &outcome.calls {
            println!("done: {call}");
        }
        println!("{} write calls made.", outcome.calls.len());
    }
    Ok(())
}

#[allow(clippy::print_stdout)]
pub(crate) fn run(args: AutoscaleArgs) -> Result<ExitCode> {
    if let AutoscaleCommand::Hold { duration, release } = &args.command {
        return hold(&args.file, *duration, *release);
    }
    let file = AutoscalingFile::load(&args.file)?;
    if matches!(args.command, AutoscaleCommand::Simulate { .. }) {
        return simulate(&file, &args.command, args.output);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let options = AwsOptions {
            region: args.region.clone(),
            profile: args.profile.clone(),
            endpoint_url: args.endpoint_url.clone(),
            max_attempts: Some(args.max_attempts),
        };
        // Validate before building clients: an invalid file makes no call.
        inferlb_autoscaler::validate(&file)?;
        let aws = Aws::connect(&options, file.region.as_deref()).await;
        let agent = Agent::new(aws, file)?;
        match args.command {
            AutoscaleCommand::Hold { .. } | AutoscaleCommand::Simulate { .. } => {
                unreachable!("handled before any AWS client is made")
            }
            AutoscaleCommand::Plan { reset_capacity } => {
                let plan = agent
                    .plan_with(PlanOptions {
                        reset_capacity,
                        ..PlanOptions::default()
                    })
                    .await?;
                if args.output == Output::Json {
                    println!("{}", serde_json::to_string_pretty(&plan)?);
                } else {
                    print!("{}", render(&plan));
                }
                Ok(if plan.is_empty() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(2)
                })
            }
            AutoscaleCommand::Apply {
                dry_run,
                reset_capacity,
                prune,
                force,
            } => {
                let outcome = agent
                    .apply_with(
                        dry_run,
                        PlanOptions {
                            reset_capacity,
                            prune,
                            force,
                        },
                    )
                    .await?;
                print_outcome(&outcome, args.output, "apply")?;
                Ok(ExitCode::SUCCESS)
            }
            AutoscaleCommand::Destroy { dry_run, force } => {
                let outcome = agent.destroy(dry_run, force).await?;
                print_outcome(&outcome, args.output, "destroy")?;
                Ok(ExitCode::SUCCESS)
            }
            AutoscaleCommand::Status => {
                let status = agent.status().await?;
                if args.output == Output::Json {
                    println!("{}", serde_json::to_string_pretty(&status)?);
                    return Ok(ExitCode::SUCCESS);
                }
                print_status(&status);
                Ok(ExitCode::SUCCESS)
            }
            AutoscaleCommand::Run {
                interval,
                cluster,
                cluster_name,
                instance,
                lease_ttl,
            } => {
                tracing::info!(?interval, "reconciling on an interval");
                let fleet = cluster
                    .map(|c| fleet_of(&c, cluster_name, instance, lease_ttl))
                    .transpose()?;
                let stop = async {
                    use tokio::signal::unix::{signal, SignalKind};
                    let (Ok(mut term), Ok(mut int)) = (
                        signal(SignalKind::terminate()),
                        signal(SignalKind::interrupt()),
                    ) else {
                        return std::future::pending().await;
                    };
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = int.recv() => {}
                    }
                };
                if let Some(until) = inferlb_autoscaler::read_hold(&hold_path(&args.file)) {
                    tracing::warn!(until = %humantime::format_rfc3339_seconds(until), "a hold is in force; nothing is applied until it ends");
                }
                let hold = Some(hold_path(&args.file));
                match fleet {
                    None => agent.run(interval, hold, stop).await,
                    Some(fleet) => run_leading(&agent, &fleet, interval, hold, stop).await,
                }
                Ok(ExitCode::SUCCESS)
            }
        }
    })
}

/// `simulate`: replays a trace through the engine for one declared target;
/// no AWS call.
#[allow(clippy::print_stdout)]
fn simulate(
    file: &AutoscalingFile,
    command: &AutoscaleCommand,
    output: Output,
) -> Result<ExitCode> {
    let AutoscaleCommand::Simulate {
        trace,
        target,
        capacity_per_instance,
        provision_delay,
        start_capacity,
        svg,
        scale_out_datapoints,
        scale_out_period,
        scale_in_datapoints,
        scale_in_period,
        scale_in_ratio,
        start,
        scale_in_step,
        scale_in_waits_for_scale_out_cooldown,
        busy_while_provisioning,
    } = command
    else {
        unreachable!("called for simulate only");
    };
    inferlb_autoscaler::validate(file)?;
    let target = match target {
        Some(id) => file
            .targets
            .iter()
            .find(|t| &t.resource_id == id)
            .with_context(|| format!("the file declares no target {id}"))?,
        None => file
            .targets
            .first()
            .context("the file declares no target")?,
    };
    let mut trace = Trace::load(trace)?;
    if let Some(start) = start {
        trace.start_epoch = inferlb_autoscaler::plan::epoch_seconds(start)
            .with_context(|| format!("--start {start:?} is not an RFC 3339 time"))?;
        trace.absolute = true;
    }
    if let Some(problem) = inferlb_autoscaler::simulate::replay_problem(target, &trace) {
        anyhow::bail!(problem);
    }
    // One unit of provisioned concurrency serves one concurrent invocation.
    let provisioned = target.dimension().as_deref()
        == Some(inferlb_autoscaler::model::PROVISIONED_CONCURRENCY_DIMENSION);
    let capacity = capacity_per_instance
        .or(provisioned.then_some(1.0))
        .or_else(|| target.target_tracking.first().map(|p| p.target_value))
        .context("give --capacity-per-instance (the target has no target-tracking policy to take it from)")?;
    let options = SimOptions {
        capacity_per_instance: capacity,
        provision_delay_s: provision_delay.as_secs() as i64,
        start_capacity: start_capacity.unwrap_or(target.min_capacity.max(1)),
        alarms: inferlb_autoscaler::aas::AlarmOverrides {
            scale_out_datapoints: *scale_out_datapoints,
            scale_out_period_s: scale_out_period.map(|d| d.as_secs() as i64),
            scale_in_datapoints: *scale_in_datapoints,
            scale_in_period_s: scale_in_period.map(|d| d.as_secs() as i64),
            scale_in_ratio: *scale_in_ratio,
        },
        assumptions: inferlb_autoscaler::aas::Assumptions {
            scale_in_step: *scale_in_step,
            scale_in_waits_for_scale_out_cooldown: *scale_in_waits_for_scale_out_cooldown,
            busy_while_provisioning: *busy_while_provisioning,
        },
    };
    if scale_in_step.is_some_and(|n| n < 1) {
        anyhow::bail!("--scale-in-step must be 1 or more");
    }
    let simulation = inferlb_autoscaler::simulate::run(target, &trace, options);
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&simulation)?);
    } else {
        println!("{}", target.resource_id);
        let started = humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + Duration::from_secs(trace.start_epoch.max(0) as u64),
        );
        let how = if trace.absolute {
            ""
        } else {
            " (fixed: the trace gives seconds; --start sets it)"
        };
        println!("start: {started}{how}");
        print!("{}", options.describe(target));
        println!();
        print!("{}", inferlb_autoscaler::simulate::render(&simulation));
    }
    if let Some(path) = svg {
        let unit = if provisioned {
            "concurrent invocations"
        } else {
            "the policy metric's units, whole endpoint"
        };
        crate::plot::simulation(path, &target.resource_id, &simulation, capacity, unit)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `status` as text: each target, its policies, scheduled actions, alarms
/// and recent activities.
#[allow(clippy::print_stdout)]
fn print_status(status: &[inferlb_autoscaler::TargetStatus]) {
    for t in status {
        match (t.registered, t.min_capacity, t.max_capacity) {
            (true, Some(min), Some(max)) => {
                println!("{}: registered, capacity {min}..={max}", t.resource_id)
            }
            _ => println!("{}: not registered", t.resource_id),
        }
        for p in &t.policies {
            println!("  policy {p}");
        }
        for s in &t.scheduled_actions {
            println!("  scheduled {s}");
        }
        for a in &t.alarms {
            println!("  alarm {a}");
        }
        for a in &t.tracking_alarms {
            println!("  target-tracking alarm {a} (created by Application Auto Scaling)");
        }
        match &t.activities {
            None => println!("  activities: not offered by this endpoint"),
            Some(list) if list.is_empty() => println!("  activities: none recently"),
            Some(list) => {
                for a in list {
                    println!("  activity {a}");
                }
            }
        }
    }
}

/// `hold --for D` writes the end time next to the file; `--release` removes it.
#[allow(clippy::print_stdout)]
fn hold(file: &std::path::Path, duration: Option<Duration>, release: bool) -> Result<ExitCode> {
    let path = hold_path(file);
    if release {
        match std::fs::remove_file(&path) {
            Ok(()) => println!("hold released: `run` applies again from its next interval"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => println!("no hold was in force"),
            Err(e) => return Err(e).with_context(|| format!("cannot remove {}", path.display())),
        }
        return Ok(ExitCode::SUCCESS);
    }
    let until = std::time::SystemTime::now() + duration.unwrap_or_default();
    let text = humantime::format_rfc3339_seconds(until).to_string();
    std::fs::write(&path, format!("{text}\n"))
        .with_context(|| format!("cannot write the hold file {}", path.display()))?;
    println!(
        "held until {text} ({}): `run` applies nothing until then",
        path.display()
    );
    Ok(ExitCode::SUCCESS)
}
