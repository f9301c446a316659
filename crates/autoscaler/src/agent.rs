//! The agent's operations: plan, apply, destroy, status, and run (apply on
//! an interval, correcting drift).

use std::time::Duration;

use serde::Serialize;

use crate::aws::{Aws, AwsError};
use crate::model::AutoscalingFile;
use crate::plan::{plan_apply_with, plan_destroy, Current, Plan, PlanOptions};
use crate::validate::{validate, Invalid};

/// Why an operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The file failed local validation; nothing was called.
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// An AWS call failed.
    #[error(transparent)]
    Aws(#[from] AwsError),
    /// `destroy` would delete what the file does not name:
    /// DeregisterScalableTarget deletes every policy and scheduled action of
    /// the target (Application Auto Scaling API reference).
    #[error(
        "refused: deregistering the targets would also delete what the file does not name:\n{}\n(pass --force to delete them too)",
        .0.iter().map(|u| format!("  - {u}")).collect::<Vec<_>>().join("\n")
    )]
    WouldDeleteUnmanaged(Vec<String>),
    /// Some targets' changes failed; the others were carried out. Every
    /// error is listed, and every call that was made.
    #[error(
        "{} failed; the other targets' changes were made:\n{}\nwrite calls made ({}):\n{}",
        inferlb_core::text::count(.errors.len() as u64, "change"),
        .errors.iter().map(|e| format!("  - {e}")).collect::<Vec<_>>().join("\n"),
        .calls.len(),
        if .calls.is_empty() { "  (none)".to_owned() } else { .calls.iter().map(|c| format!("  done: {c}")).collect::<Vec<_>>().join("\n") }
    )]
    Failed {
        errors: Vec<AwsError>,
        calls: Vec<String>,
        /// The plan that was carried out in part.
        plan: Box<Plan>,
    },
}

/// What `apply` or `destroy` did.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// The plan it carried out (or would have, with `--dry-run`).
    pub plan: Plan,
    /// The write calls made, in order; empty with `--dry-run` or when
    /// nothing needed to change.
    pub calls: Vec<String>,
    /// Whether this was a dry run.
    pub dry_run: bool,
}

/// One target in `status`.
#[derive(Debug, Clone, Serialize)]
pub struct TargetStatus {
    pub resource_id: String,
    pub registered: bool,
    pub min_capacity: Option<i32>,
    pub max_capacity: Option<i32>,
    pub policies: Vec<String>,
    pub scheduled_actions: Vec<String>,
    pub alarms: Vec<String>,
    /// The alarms Application Auto Scaling created for target tracking.
    pub tracking_alarms: Vec<String>,
    /// Recent scaling activities, with the reasons of those that did not
    /// scale; `None` where the service does not offer them.
    pub activities: Option<Vec<String>>,
}

/// The agent: a validated file and the AWS clients.
#[derive(Debug, Clone)]
pub struct Agent {
    aws: Aws,
    file: AutoscalingFile,
}

impl Agent {
    /// Validates the file; an invalid file makes no agent, so no call.
    pub fn new(aws: Aws, file: AutoscalingFile) -> Result<Self, AgentError> {
        validate(&file)?;
        Ok(Self { aws, file })
    }

    /// The file.
    pub fn file(&self) -> &AutoscalingFile {
        &self.file
    }

    /// What AWS has for the declared resources.
    pub async fn current(&self) -> Result<Current, AgentError> {
        Ok(self.aws.read(&self.file).await?)
    }

    /// What `apply` would do; changes nothing.
    pub async fn plan(&self) -> Result<Plan, AgentError> {
        self.plan_with(PlanOptions::default()).await
    }

    /// [`plan`](Self::plan) with options (`--reset-capacity`). A plan also
    /// lists the targets inferlb marked that the file no longer names.
    pub async fn plan_with(&self, options: PlanOptions) -> Result<Plan, AgentError> {
        let mut current = self.current().await?;
        current.marked_targets = self.aws.marked_targets(&self.file).await?;
        Ok(plan_apply_with(&self.file, &current, options))
    }

    /// Makes AWS match the file. A second run makes no write call.
    pub async fn apply(&self, dry_run: bool) -> Result<Outcome, AgentError> {
        self.apply_with(dry_run, PlanOptions::default()).await
    }

    /// [`apply`](Self::apply) with options (`--reset-capacity`).
    pub async fn apply_with(
        &self,
        dry_run: bool,
        options: PlanOptions,
    ) -> Result<Outcome, AgentError> {
        let mut current = self.current().await?;
        if options.prune {
            current.marked_targets = self.aws.marked_targets(&self.file).await?;
            // Deregistering deletes what a target carries. Once the file no
            // longer names a target, inferlb cannot tell the policies and
            // scheduled actions it made there from anyone else's: like
            // `destroy`, it refuses unless told (`--force`).
            if !options.force {
                let mut carried = Vec::new();
                for (id, dimension) in &current.marked_targets {
                    carried.extend(self.aws.carried_by(id, dimension).await?);
                }
                if !carried.is_empty() {
                    return Err(AgentError::WouldDeleteUnmanaged(carried));
                }
            }
        }
        let plan = plan_apply_with(&self.file, &current, options);
        self.carry_out(plan, &current, dry_run).await
    }

    /// Removes what the file declares: alarms, policies, scheduled actions,
    /// then targets. Deregistering a target also deletes every policy and
    /// scheduled action on it, so when a target has any the file does not
    /// name, `destroy` refuses (listing them) unless `force`.
    pub async fn destroy(&self, dry_run: bool, force: bool) -> Result<Outcome, AgentError> {
        let current = self.current().await?;
        let plan = plan_destroy(&self.file, &current);
        if !force && !plan.unmanaged.is_empty() {
            return Err(AgentError::WouldDeleteUnmanaged(plan.unmanaged));
        }
        self.carry_out(plan, &current, dry_run).await
    }

    /// Makes the plan's calls unless it is a dry run or there is nothing to do.
    async fn carry_out(
        &self,
        plan: Plan,
        current: &Current,
        dry_run: bool,
    ) -> Result<Outcome, AgentError> {
        let calls = if dry_run || plan.is_empty() {
            Vec::new()
        } else {
            let executed = self.aws.execute(&self.file, &plan, current).await;
            if !executed.failed.is_empty() {
                return Err(AgentError::Failed {
                    errors: executed.failed,
                    calls: executed.made,
                    plan: Box::new(plan),
                });
            }
            executed.made
        };
        Ok(Outcome {
            plan,
            calls,
            dry_run,
        })
    }

    /// Targets, policies, alarms and recent activities.
    pub async fn status(&self) -> Result<Vec<TargetStatus>, AgentError> {
        let current = self.current().await?;
        let mut out = Vec::new();
        for t in &self.file.targets {
            let registered = current.target(&t.resource_id);
            let alarms = current
                .alarms
                .iter()
                .filter(|a| t.alarm_name().as_deref() == Some(a.name.as_str()))
                .map(|a| format!("{} ({})", a.name, a.state.as_deref().unwrap_or("unknown")))
                .collect();
            let activities = if registered.is_some() {
                self.aws.activities(t, 5).await?
            } else {
                Some(Vec::new())
            };
            out.push(TargetStatus {
                resource_id: t.resource_id.clone(),
                registered: registered.is_some(),
                min_capacity: registered.map(|r| r.min_capacity),
                max_capacity: registered.map(|r| r.max_capacity),
                policies: current
                    .policies
                    .iter()
                    .filter(|p| p.resource_id == t.resource_id)
                    .map(|p| p.name.clone())
                    .collect(),
                scheduled_actions: current
                    .scheduled
                    .iter()
                    .filter(|s| s.resource_id == t.resource_id)
                    .map(|s| format!("{} {}", s.name, s.schedule))
                    .collect(),
                alarms,
                tracking_alarms: current
                    .policies
                    .iter()
                    .filter(|p| p.resource_id == t.resource_id)
                    .flat_map(|p| p.alarms.iter().cloned())
                    .collect(),
                activities,
            });
        }
        Ok(out)
    }

    /// Applies every `interval` until `stop` resolves. Drift made outside the
    /// agent is logged and corrected; an error is logged and retried at the
    /// next tick. Because only declared fields are compared, a pass right
    /// after a correction finds nothing to do: the agent never fights itself.
    ///
    /// A target whose endpoint or inference component no longer exists (a
    /// deployment replaced it) is skipped with a warning, not an error every
    /// tick; and while the hold file (see [`hold_path`]) names a time in the
    /// future, nothing is applied — SageMaker requires deregistering a
    /// variant before changing its instance type, so a deploy window needs
    /// `run` to keep its hands off.
    pub async fn run(
        &self,
        interval: Duration,
        hold: Option<std::path::PathBuf>,
        stop: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(stop);
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = &mut stop => return,
                _ = ticker.tick() => {}
            }
            if let Some(until) = hold.as_deref().and_then(read_hold) {
                tracing::info!(
                    until = %humantime::format_rfc3339_seconds(until),
                    "held: not reconciling until the hold ends (`inferlb autoscale hold --release` ends it now)"
                );
                continue;
            }
            match self.reconcile().await {
                Ok(outcome) if outcome.plan.is_empty() => tracing::debug!("AWS matches the file"),
                Ok(outcome) => {
                    for change in &outcome.plan.changes {
                        tracing::warn!(
                            op = ?change.op,
                            kind = ?change.kind,
                            resource = %change.resource_id,
                            name = %change.name,
                            differences = ?change.differences,
                            "drift corrected"
                        );
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "reconcile failed; retrying at the next interval")
                }
            }
        }
    }

    /// One pass of `run`: apply; a target whose resource is gone (a
    /// deployment replacing it) is skipped with a warning, the others are
    /// applied all the same, and any other failure is the pass's error.
    pub async fn reconcile(&self) -> Result<Outcome, AgentError> {
        match self.apply(false).await {
            Err(AgentError::Failed {
                errors,
                calls,
                plan,
            }) if errors.iter().all(resource_gone) => {
                for e in &errors {
                    tracing::warn!(resource = %e.resource, reason = %e.message, "the resource no longer exists (a deployment?); skipping its target this time");
                }
                Ok(Outcome {
                    plan: *plan,
                    calls,
                    dry_run: false,
                })
            }
            other => other,
        }
    }
}

/// Whether an error says the SageMaker resource behind a target is gone.
fn resource_gone(e: &AwsError) -> bool {
    let message = e.message.to_ascii_lowercase();
    e.code == "ValidationException"
        && (message.contains("does not exist") || message.contains("could not find"))
}

/// The hold file of an autoscaling file: `<file>.hold`, holding the RFC 3339
/// time until which `run` applies nothing. Written by `inferlb autoscale
/// hold`, never read by anything but `run`.
pub fn hold_path(file: &std::path::Path) -> std::path::PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".hold");
    std::path::PathBuf::from(name)
}

/// The end of a hold still in force, if any.
pub fn read_hold(path: &std::path::Path) -> Option<std::time::SystemTime> {
    let text = std::fs::read_to_string(path).ok()?;
    let until = humantime::parse_rfc3339_weak(text.trim()).ok()?;
    (until > std::time::SystemTime::now()).then_some(until)
}
