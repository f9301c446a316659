//! The agent's operations: plan, apply, destroy, status, and run (apply on
//! an interval, correcting drift).

use std::time::Duration;

use serde::Serialize;

use crate::aws::{Aws, AwsError};
use crate::model::AutoscalingFile;
use crate::plan::{plan_apply, plan_destroy, Current, Plan};
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
    /// Recent scaling activities; `None` where the service does not offer them.
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
        let current = self.current().await?;
        Ok(plan_apply(&self.file, &current))
    }

    /// Makes AWS match the file. A second run makes no write call.
    pub async fn apply(&self, dry_run: bool) -> Result<Outcome, AgentError> {
        self.carry_out(plan_apply, dry_run).await
    }

    /// Removes what the file declares: alarms, policies, scheduled actions,
    /// then targets.
    pub async fn destroy(&self, dry_run: bool) -> Result<Outcome, AgentError> {
        self.carry_out(plan_destroy, dry_run).await
    }

    /// Reads the current state, plans with `planner`, and makes the plan's
    /// calls unless it is a dry run or there is nothing to do.
    async fn carry_out(
        &self,
        planner: fn(&AutoscalingFile, &Current) -> Plan,
        dry_run: bool,
    ) -> Result<Outcome, AgentError> {
        let current = self.current().await?;
        let plan = planner(&self.file, &current);
        let calls = if dry_run || plan.is_empty() {
            Vec::new()
        } else {
            self.aws.execute(&self.file, &plan, &current).await?
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
                activities,
            });
        }
        Ok(out)
    }

    /// Applies every `interval` until `stop` resolves. Drift made outside the
    /// agent is logged and corrected; an error is logged and retried at the
    /// next tick. Because only declared fields are compared, a pass right
    /// after a correction finds nothing to do: the agent never fights itself.
    pub async fn run(&self, interval: Duration, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = &mut stop => return,
                _ = ticker.tick() => {}
            }
            match self.apply(false).await {
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
}
