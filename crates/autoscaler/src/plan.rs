//! Plans: what must change so that AWS matches the file. Pure: the current
//! state comes in as data, the plan goes out as data.
//!
//! Only fields the file declares are compared: a cooldown left out of the
//! file is AWS's to choose, so its value on AWS is never drift. That is what
//! keeps `run` from fighting AWS's own defaults.

use serde::Serialize;

use crate::model::{
    AutoscalingFile, CapacityMode, CustomizedMetric, MetricDimension, Scheduled, StepScaling,
    Suspended, Target, TargetTracking,
};

/// The cooldown AWS applies when a target-tracking policy gives none, for
/// SageMaker (Application Auto Scaling's `TargetTrackingScalingPolicyConfiguration`:
/// 300 s for SageMaker endpoint variants). An absent cooldown matches it, so
/// `run` never fights AWS's default, while a cooldown removed from the file
/// (AWS still holds another value) is a change.
pub const DEFAULT_COOLDOWN_S: i32 = 300;

/// A scalable target as AWS has it.
#[derive(Debug, Clone, PartialEq)]
pub struct CurrentTarget {
    pub resource_id: String,
    pub dimension: String,
    pub min_capacity: i32,
    pub max_capacity: i32,
    pub suspended: Suspended,
    /// Its ARN (`ScalableTargetARN`), where the service returns one.
    pub arn: Option<String>,
    /// Its tags, where they could be read (ListTagsForResource).
    pub tags: Option<std::collections::BTreeMap<String, String>>,
}

/// A scaling policy as AWS has it.
#[derive(Debug, Clone, PartialEq)]
pub struct CurrentPolicy {
    pub resource_id: String,
    pub name: String,
    pub arn: String,
    pub policy: PolicyShape,
    /// The CloudWatch alarms AAS created for it (target tracking's two).
    pub alarms: Vec<String>,
}

/// The comparable part of a policy.
#[derive(Debug, Clone, PartialEq)]
pub enum PolicyShape {
    TargetTracking {
        predefined_metric: Option<String>,
        customized_metric: Option<CustomizedMetric>,
        target_value: f64,
        scale_out_cooldown_s: Option<i32>,
        scale_in_cooldown_s: Option<i32>,
        disable_scale_in: bool,
    },
    StepScaling {
        adjustment_type: Option<String>,
        steps: Vec<(Option<f64>, Option<f64>, i32)>,
        cooldown_s: Option<i32>,
        metric_aggregation_type: Option<String>,
        min_adjustment_magnitude: Option<i32>,
    },
}

/// A scheduled action as AWS has it.
#[derive(Debug, Clone, PartialEq)]
pub struct CurrentScheduled {
    pub resource_id: String,
    pub name: String,
    pub schedule: String,
    pub timezone: Option<String>,
    pub start_time: Option<i64>,
    pub end_time: Option<i64>,
    pub min_capacity: Option<i32>,
    pub max_capacity: Option<i32>,
}

/// A CloudWatch alarm as AWS has it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CurrentAlarm {
    pub name: String,
    pub namespace: Option<String>,
    pub metric_name: Option<String>,
    /// Its dimensions, `(name, value)`.
    pub dimensions: Vec<(String, String)>,
    pub period_s: Option<i32>,
    pub evaluation_periods: Option<i32>,
    pub datapoints_to_alarm: Option<i32>,
    pub statistic: Option<String>,
    pub threshold: Option<f64>,
    pub comparison_operator: Option<String>,
    pub treat_missing_data: Option<String>,
    pub actions_enabled: Option<bool>,
    pub actions: Vec<String>,
    pub state: Option<String>,
}

/// What AWS has for the resources a file names.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Current {
    pub targets: Vec<CurrentTarget>,
    pub policies: Vec<CurrentPolicy>,
    pub scheduled: Vec<CurrentScheduled>,
    pub alarms: Vec<CurrentAlarm>,
    /// Every alarm carrying inferlb's mark (`inferlb-` prefix), declared or not.
    pub marked_alarms: Vec<String>,
    /// Scalable targets carrying inferlb's mark that the file does not
    /// declare, `(resource id, dimension)`; read for `plan` and `--prune`.
    pub marked_targets: Vec<(String, String)>,
}

impl Current {
    pub fn target(&self, resource_id: &str) -> Option<&CurrentTarget> {
        self.targets.iter().find(|t| t.resource_id == resource_id)
    }
    pub fn policy(&self, resource_id: &str, name: &str) -> Option<&CurrentPolicy> {
        self.policies
            .iter()
            .find(|p| p.resource_id == resource_id && p.name == name)
    }
    pub fn scheduled(&self, resource_id: &str, name: &str) -> Option<&CurrentScheduled> {
        self.scheduled
            .iter()
            .find(|s| s.resource_id == resource_id && s.name == name)
    }
    pub fn alarm(&self, name: &str) -> Option<&CurrentAlarm> {
        self.alarms.iter().find(|a| a.name == name)
    }
}

/// What kind of resource a change is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    ScalableTarget,
    ScalingPolicy,
    ScheduledAction,
    Alarm,
}

/// Create, update or delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    Create,
    Update,
    Delete,
}

/// One change a plan makes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Change {
    pub op: Op,
    pub kind: Kind,
    /// The target's resource id.
    pub resource_id: String,
    /// The policy, action or alarm name; empty for a target.
    pub name: String,
    /// For updates: each field that differs, `field: current -> declared`.
    pub differences: Vec<String>,
}

/// The changes of a plan, in the order they are to be made.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Plan {
    pub changes: Vec<Change>,
    /// Policies and scheduled actions on declared targets that the file does
    /// not name: left alone, reported.
    pub unmanaged: Vec<String>,
    /// What the plan deliberately does not compare, e.g. min/max set by a
    /// schedule.
    pub notes: Vec<String>,
    /// Resources inferlb created (its mark) that the file no longer names:
    /// `apply --prune` deletes them.
    pub prunable: Vec<String>,
}

/// How a plan is made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PlanOptions {
    /// Compare (and re-apply) the file's min/max even where a schedule or
    /// `capacity = "ignore_changes"` owns them: `apply --reset-capacity`.
    pub reset_capacity: bool,
    /// Delete marked resources the file no longer names: `apply --prune`.
    pub prune: bool,
    /// With `prune`: deregister a marked target even when it carries
    /// policies or scheduled actions (`apply --prune --force`).
    pub force: bool,
}

impl Plan {
    /// Whether anything would change.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    fn push(
        &mut self,
        op: Op,
        kind: Kind,
        resource_id: &str,
        name: &str,
        differences: Vec<String>,
    ) {
        self.changes.push(Change {
            op,
            kind,
            resource_id: resource_id.to_owned(),
            name: name.to_owned(),
            differences,
        });
    }
}

/// The namespace of both scale-to-zero alarms' metrics.
pub const ALARM_NAMESPACE: &str = "AWS/SageMaker";

/// What `apply` must do: create what is missing, update what differs.
/// Nothing undeclared is touched; it is listed in `unmanaged`.
pub fn plan_apply(file: &AutoscalingFile, current: &Current) -> Plan {
    plan_apply_with(file, current, PlanOptions::default())
}

/// [`plan_apply`] with options.
///
/// A target's min/max are set when it is created. Afterwards they are the
/// file's to correct only when the file owns them: a scheduled action works
/// by changing min/max, so with scheduled actions declared the schedule owns
/// them and the plan says "set by schedule" instead of undoing it (the
/// `aws_appautoscaling_target` fight terraform users know); `capacity =
/// "enforce"` or `"ignore_changes"` says who owns them outright, and
/// `reset_capacity` re-applies the file's values once.
pub fn plan_apply_with(file: &AutoscalingFile, current: &Current, options: PlanOptions) -> Plan {
    let mut plan = Plan::default();
    plan_targets(&mut plan, file, current, options);
    plan_policies(&mut plan, file, current);
    plan_scheduled(&mut plan, file, current);
    plan_alarms(&mut plan, file, current);
    plan.unmanaged = unmanaged(file, current);
    plan_prune(&mut plan, file, current, options);
    plan
}

/// Scalable targets: created, or updated where they differ (min/max only
/// when the file owns them).
fn plan_targets(plan: &mut Plan, file: &AutoscalingFile, current: &Current, options: PlanOptions) {
    for t in &file.targets {
        let id = t.resource_id.as_str();
        match current.target(id) {
            None => plan.push(Op::Create, Kind::ScalableTarget, id, "", vec![]),
            Some(c) => {
                let mut d = Vec::new();
                let drifted = (c.min_capacity, c.max_capacity) != (t.min_capacity, t.max_capacity);
                match capacity_hold(t, c, current) {
                    _ if !drifted => {}
                    None => {
                        differ(&mut d, "min_capacity", &c.min_capacity, &t.min_capacity);
                        differ(&mut d, "max_capacity", &c.max_capacity, &t.max_capacity);
                    }
                    Some(_) if options.reset_capacity => {
                        differ(&mut d, "min_capacity", &c.min_capacity, &t.min_capacity);
                        differ(&mut d, "max_capacity", &c.max_capacity, &t.max_capacity);
                    }
                    Some(why) => plan.notes.push(format!(
                        "{id}: min/max {}..={} {why}; the file says {}..={} (apply --reset-capacity to set them)",
                        c.min_capacity, c.max_capacity, t.min_capacity, t.max_capacity
                    )),
                }
                if let Some(suspended) = &t.suspended {
                    differ(&mut d, "suspended", &c.suspended, suspended);
                }
                // Declared tags (and the mark) must be there; other tags are
                // someone else's and left alone.
                if let Some(tags) = &c.tags {
                    let missing: std::collections::BTreeMap<String, String> = t
                        .desired_tags()
                        .into_iter()
                        .filter(|(k, v)| tags.get(k) != Some(v))
                        .collect();
                    if !missing.is_empty() {
                        d.push(format!("tags: {missing:?} to set"));
                    }
                }
                if !d.is_empty() {
                    plan.push(Op::Update, Kind::ScalableTarget, id, "", d);
                }
            }
        }
    }
}

/// Why a target's min/max are left as AWS has them (reported, changed only
/// with `--reset-capacity`), or `None` when the file's values are applied:
///
/// - a scheduled action owns them — one the file declares, or one on AWS
///   that it does not ("Scheduled scaling": an action sets min/max when it
///   runs, so its values are not drift);
/// - `capacity = "ignore_changes"`;
/// - a suspension flag is set on AWS: RegisterScalableTarget moves the
///   capacity into the new range at once, past a suspended scale-in and
///   past any cooldown (RegisterScalableTarget, API reference), which would
///   undo an operator's hold;
/// - the file's max is lower than AWS's: lowering it scales in at once, to
///   the new max, whatever the load (the current capacity is not read, so
///   any lower max counts).
fn capacity_hold(t: &Target, c: &CurrentTarget, current: &Current) -> Option<&'static str> {
    let scheduled_on_aws = current
        .scheduled
        .iter()
        .any(|s| s.resource_id == t.resource_id);
    match t.capacity {
        Some(CapacityMode::Enforce) => {}
        Some(CapacityMode::IgnoreChanges) => {
            return Some("left as it is (capacity = \"ignore_changes\")")
        }
        None if !t.scheduled.is_empty() || scheduled_on_aws => return Some("set by schedule"),
        None => {}
    }
    let s = c.suspended;
    if s.dynamic_scaling_in || s.dynamic_scaling_out || s.scheduled_scaling {
        return Some("left as they are while scaling is suspended on AWS");
    }
    if t.max_capacity < c.max_capacity {
        return Some("left as they are: a lower max would scale in at once, past cooldowns");
    }
    None
}

/// Target-tracking and step-scaling policies.
fn plan_policies(plan: &mut Plan, file: &AutoscalingFile, current: &Current) {
    for t in &file.targets {
        let id = t.resource_id.as_str();
        for p in &t.target_tracking {
            match current.policy(id, &p.name) {
                None => plan.push(Op::Create, Kind::ScalingPolicy, id, &p.name, vec![]),
                Some(c) => {
                    let d = target_tracking_differences(p, &c.policy);
                    if !d.is_empty() {
                        plan.push(Op::Update, Kind::ScalingPolicy, id, &p.name, d);
                    }
                }
            }
        }
        for p in &t.step_scaling {
            match current.policy(id, &p.name) {
                None => plan.push(Op::Create, Kind::ScalingPolicy, id, &p.name, vec![]),
                Some(c) => {
                    let d = step_scaling_differences(p, &c.policy);
                    if !d.is_empty() {
                        plan.push(Op::Update, Kind::ScalingPolicy, id, &p.name, d);
                    }
                }
            }
        }
    }
}

/// Scheduled actions.
fn plan_scheduled(plan: &mut Plan, file: &AutoscalingFile, current: &Current) {
    for t in &file.targets {
        let id = t.resource_id.as_str();
        for s in &t.scheduled {
            match current.scheduled(id, &s.name) {
                None => plan.push(Op::Create, Kind::ScheduledAction, id, &s.name, vec![]),
                Some(c) => {
                    let d = scheduled_differences(s, c);
                    if !d.is_empty() {
                        plan.push(Op::Update, Kind::ScheduledAction, id, &s.name, d);
                    }
                }
            }
        }
    }
}

/// The scale-to-zero alarms (pointing at their step policy's ARN).
fn plan_alarms(plan: &mut Plan, file: &AutoscalingFile, current: &Current) {
    for t in &file.targets {
        let Some(spec) = t.alarm() else {
            continue;
        };
        let alarm = spec.name;
        let arn = current
            .policy(&t.resource_id, &spec.step_policy)
            .map(|p| p.arn.as_str());
        match current.alarm(&alarm) {
            None => plan.push(Op::Create, Kind::Alarm, &t.resource_id, &alarm, vec![]),
            Some(c) => {
                let d = alarm_differences(t, c, arn);
                if !d.is_empty() {
                    plan.push(Op::Update, Kind::Alarm, &t.resource_id, &alarm, d);
                }
            }
        }
    }
}

/// What inferlb made and the file no longer declares: deleted with
/// `--prune`, else listed.
fn plan_prune(plan: &mut Plan, file: &AutoscalingFile, current: &Current, options: PlanOptions) {
    let declared: Vec<String> = file.targets.iter().filter_map(Target::alarm_name).collect();
    for name in &current.marked_alarms {
        if declared.contains(name) {
            continue;
        }
        if options.prune {
            plan.push(Op::Delete, Kind::Alarm, "", name, vec![]);
        } else {
            plan.prunable.push(format!("alarm {name:?}"));
        }
    }
    // A marked target goes last, after its alarms; deregistering it deletes
    // its policies and scheduled actions, which inferlb made with it.
    for (id, dimension) in &current.marked_targets {
        if options.prune {
            plan.push(Op::Delete, Kind::ScalableTarget, id, dimension, vec![]);
        } else {
            plan.prunable.push(format!("scalable target {id}"));
        }
    }
}

/// Policies and scheduled actions on declared targets that the file does not name.
fn unmanaged(file: &AutoscalingFile, current: &Current) -> Vec<String> {
    let mut out = Vec::new();
    for t in &file.targets {
        for p in current
            .policies
            .iter()
            .filter(|p| p.resource_id == t.resource_id)
        {
            let declared = t.target_tracking.iter().any(|d| d.name == p.name)
                || t.step_scaling.iter().any(|d| d.name == p.name);
            if !declared {
                out.push(format!("scaling policy {:?} on {}", p.name, t.resource_id));
            }
        }
        for s in current
            .scheduled
            .iter()
            .filter(|s| s.resource_id == t.resource_id)
        {
            if !t.scheduled.iter().any(|d| d.name == s.name) {
                out.push(format!(
                    "scheduled action {:?} on {}",
                    s.name, t.resource_id
                ));
            }
        }
    }
    out
}

/// What `destroy` must do: delete what the file declares and AWS has, in
/// the order that never leaves a dangling reference: alarms, policies,
/// scheduled actions, then targets. Nothing is left to a cascade.
pub fn plan_destroy(file: &AutoscalingFile, current: &Current) -> Plan {
    let mut plan = Plan::default();
    for t in &file.targets {
        if let Some(alarm) = t.alarm_name() {
            if current.alarm(&alarm).is_some() {
                plan.push(Op::Delete, Kind::Alarm, &t.resource_id, &alarm, vec![]);
            }
        }
    }
    for t in &file.targets {
        let names = t
            .target_tracking
            .iter()
            .map(|p| &p.name)
            .chain(t.step_scaling.iter().map(|p| &p.name));
        for name in names {
            if current.policy(&t.resource_id, name).is_some() {
                plan.push(
                    Op::Delete,
                    Kind::ScalingPolicy,
                    &t.resource_id,
                    name,
                    vec![],
                );
            }
        }
    }
    for t in &file.targets {
        for s in &t.scheduled {
            if current.scheduled(&t.resource_id, &s.name).is_some() {
                plan.push(
                    Op::Delete,
                    Kind::ScheduledAction,
                    &t.resource_id,
                    &s.name,
                    vec![],
                );
            }
        }
    }
    for t in &file.targets {
        if current.target(&t.resource_id).is_some() {
            plan.push(Op::Delete, Kind::ScalableTarget, &t.resource_id, "", vec![]);
        }
    }
    plan.unmanaged = unmanaged(file, current);
    plan
}

/// A plan as text, one line per change, as `terraform plan` prints it.
pub fn render(plan: &Plan) -> String {
    let mut out = String::new();
    for c in &plan.changes {
        let sign = match c.op {
            Op::Create => "+",
            Op::Update => "~",
            Op::Delete => "-",
        };
        let what = match c.kind {
            Kind::ScalableTarget => format!("scalable target {}", c.resource_id),
            Kind::ScalingPolicy => format!("scaling policy {:?} on {}", c.name, c.resource_id),
            Kind::ScheduledAction => format!("scheduled action {:?} on {}", c.name, c.resource_id),
            Kind::Alarm if c.resource_id.is_empty() => format!("alarm {:?}", c.name),
            Kind::Alarm => format!("alarm {:?} for {}", c.name, c.resource_id),
        };
        let op = match c.op {
            Op::Create => "create",
            Op::Update => "update",
            Op::Delete => "delete",
        };
        out.push_str(&format!("{sign} {op} {what}\n"));
        for d in &c.differences {
            out.push_str(&format!("    {d}\n"));
        }
    }
    for u in &plan.unmanaged {
        out.push_str(&format!("  (left alone, not in the file: {u})\n"));
    }
    for n in &plan.notes {
        out.push_str(&format!("  (not compared: {n})\n"));
    }
    for p in &plan.prunable {
        out.push_str(&format!(
            "  (made by inferlb, no longer in the file: {p}; apply --prune deletes it)\n"
        ));
    }
    let (creates, updates, deletes) = plan.changes.iter().fold((0, 0, 0), |(c, u, d), ch| match ch
        .op
    {
        Op::Create => (c + 1, u, d),
        Op::Update => (c, u + 1, d),
        Op::Delete => (c, u, d + 1),
    });
    if plan.is_empty() {
        out.push_str("No changes: AWS matches the file.\n");
    } else {
        out.push_str(&format!(
            "Plan: {creates} to create, {updates} to change, {deletes} to delete.\n"
        ));
    }
    out
}

mod diff;

use diff::{
    alarm_differences, differ, scheduled_differences, step_scaling_differences,
    target_tracking_differences,
};
pub use diff::{epoch_seconds, step_shape};

#[cfg(test)]
mod tests;
