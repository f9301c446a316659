//! Plans: what must change so that AWS matches the file. Pure: the current
//! state comes in as data, the plan goes out as data.
//!
//! Only fields the file declares are compared: a cooldown left out of the
//! file is AWS's to choose, so its value on AWS is never drift. That is what
//! keeps `run` from fighting AWS's own defaults.

use serde::Serialize;

use crate::model::{
    AutoscalingFile, CustomizedMetric, MetricDimension, Scheduled, StepScaling, Suspended, Target,
    TargetTracking,
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

fn differ<T: PartialEq + std::fmt::Debug>(
    out: &mut Vec<String>,
    field: &str,
    current: &T,
    declared: &T,
) {
    if current != declared {
        out.push(format!("{field}: {current:?} -> {declared:?}"));
    }
}

/// Compares a declared optional field only when declared.
fn differ_declared<T: PartialEq + std::fmt::Debug>(
    out: &mut Vec<String>,
    field: &str,
    current: &Option<T>,
    declared: &Option<T>,
) {
    if declared.is_some() && current != declared {
        out.push(format!("{field}: {current:?} -> {declared:?}"));
    }
}

/// A cooldown: a declared one must match; an absent one matches nothing
/// set or AWS's default, and anything else (one removed from the file) is a
/// change.
fn differ_cooldown(
    out: &mut Vec<String>,
    field: &str,
    current: Option<i32>,
    declared: Option<i32>,
) {
    let same = match declared {
        Some(_) => current == declared,
        None => current.is_none_or(|c| c == DEFAULT_COOLDOWN_S),
    };
    if !same {
        out.push(format!("{field}: {current:?} -> {declared:?}"));
    }
}

/// A customized metric in a comparable form: dimensions in a fixed order.
fn normalized(metric: &CustomizedMetric) -> CustomizedMetric {
    let mut m = metric.clone();
    let sort = |dims: &mut Vec<MetricDimension>| {
        dims.sort_by(|a, b| (&a.name, &a.value).cmp(&(&b.name, &b.value)))
    };
    sort(&mut m.dimensions);
    for q in &mut m.metrics {
        sort(&mut q.dimensions);
    }
    m
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

fn target_tracking_differences(declared: &TargetTracking, current: &PolicyShape) -> Vec<String> {
    let mut d = Vec::new();
    let PolicyShape::TargetTracking {
        predefined_metric,
        customized_metric,
        target_value,
        scale_out_cooldown_s,
        scale_in_cooldown_s,
        disable_scale_in,
    } = current
    else {
        return vec!["policy type: StepScaling -> TargetTrackingScaling".into()];
    };
    differ(
        &mut d,
        "predefined_metric",
        predefined_metric,
        &declared.predefined_metric,
    );
    differ(
        &mut d,
        "customized_metric",
        &customized_metric.as_ref().map(normalized),
        &declared.customized_metric.as_ref().map(normalized),
    );
    if !close(*target_value, declared.target_value) {
        d.push(format!(
            "target_value: {target_value} -> {}",
            declared.target_value
        ));
    }
    differ_cooldown(
        &mut d,
        "scale_out_cooldown_s",
        *scale_out_cooldown_s,
        declared.scale_out_cooldown_s,
    );
    differ_cooldown(
        &mut d,
        "scale_in_cooldown_s",
        *scale_in_cooldown_s,
        declared.scale_in_cooldown_s,
    );
    differ(
        &mut d,
        "disable_scale_in",
        disable_scale_in,
        &declared.disable_scale_in,
    );
    d
}

/// The steps of a declared policy in the shape AWS returns them.
pub fn step_shape(policy: &StepScaling) -> Vec<(Option<f64>, Option<f64>, i32)> {
    let mut steps: Vec<_> = policy
        .steps
        .iter()
        .map(|s| (s.lower_bound, s.upper_bound, s.adjustment))
        .collect();
    steps.sort_by(|a, b| {
        a.0.unwrap_or(f64::NEG_INFINITY)
            .total_cmp(&b.0.unwrap_or(f64::NEG_INFINITY))
    });
    steps
}

fn step_scaling_differences(declared: &StepScaling, current: &PolicyShape) -> Vec<String> {
    let mut d = Vec::new();
    let PolicyShape::StepScaling {
        adjustment_type,
        steps,
        cooldown_s,
        metric_aggregation_type,
        min_adjustment_magnitude,
    } = current
    else {
        return vec!["policy type: TargetTrackingScaling -> StepScaling".into()];
    };
    differ(
        &mut d,
        "adjustment_type",
        adjustment_type,
        &Some(declared.adjustment_type.clone()),
    );
    let mut current_steps = steps.clone();
    current_steps.sort_by(|a, b| {
        a.0.unwrap_or(f64::NEG_INFINITY)
            .total_cmp(&b.0.unwrap_or(f64::NEG_INFINITY))
    });
    differ(&mut d, "steps", &current_steps, &step_shape(declared));
    differ_declared(&mut d, "cooldown_s", cooldown_s, &declared.cooldown_s);
    differ_declared(
        &mut d,
        "metric_aggregation_type",
        metric_aggregation_type,
        &declared.metric_aggregation_type,
    );
    differ_declared(
        &mut d,
        "min_adjustment_magnitude",
        min_adjustment_magnitude,
        &declared.min_adjustment_magnitude,
    );
    d
}

/// Seconds since the epoch of an RFC 3339 time (validated earlier).
pub fn epoch_seconds(text: &str) -> Option<i64> {
    humantime::parse_rfc3339_weak(text)
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs() as i64)
}

fn scheduled_differences(declared: &Scheduled, current: &CurrentScheduled) -> Vec<String> {
    let mut d = Vec::new();
    differ(&mut d, "schedule", &current.schedule, &declared.schedule);
    // No time zone is UTC; removing one from the file is a change.
    let zone = |z: &Option<String>| z.clone().unwrap_or_else(|| "UTC".to_owned());
    differ(
        &mut d,
        "timezone",
        &zone(&current.timezone),
        &zone(&declared.timezone),
    );
    differ(
        &mut d,
        "start_time",
        &current.start_time,
        &declared.start_time.as_deref().and_then(epoch_seconds),
    );
    differ(
        &mut d,
        "end_time",
        &current.end_time,
        &declared.end_time.as_deref().and_then(epoch_seconds),
    );
    differ(
        &mut d,
        "min_capacity",
        &current.min_capacity,
        &declared.min_capacity,
    );
    differ(
        &mut d,
        "max_capacity",
        &current.max_capacity,
        &declared.max_capacity,
    );
    d
}

/// The namespace of both scale-to-zero alarms' metrics.
pub const ALARM_NAMESPACE: &str = "AWS/SageMaker";

/// Every field of the scale-to-zero alarm, compared with the declared one
/// (AWS's recipe where the file leaves a field out).
fn alarm_differences(
    target: &Target,
    current: &CurrentAlarm,
    policy_arn: Option<&str>,
) -> Vec<String> {
    let mut d = Vec::new();
    let Some(spec) = target.alarm() else {
        return d;
    };
    differ(
        &mut d,
        "namespace",
        &current.namespace.as_deref(),
        &Some(ALARM_NAMESPACE),
    );
    differ(
        &mut d,
        "metric_name",
        &current.metric_name.as_deref(),
        &Some(spec.metric_name),
    );
    differ(
        &mut d,
        "dimensions",
        &current.dimensions,
        &vec![(spec.dimension_name.to_owned(), spec.dimension_value.clone())],
    );
    differ(&mut d, "period_s", &current.period_s, &Some(spec.period_s));
    differ(
        &mut d,
        "evaluation_periods",
        &current.evaluation_periods,
        &Some(spec.evaluation_periods),
    );
    differ(
        &mut d,
        "datapoints_to_alarm",
        &current.datapoints_to_alarm.or(current.evaluation_periods),
        &Some(spec.datapoints_to_alarm),
    );
    differ(
        &mut d,
        "statistic",
        &current.statistic,
        &Some(spec.statistic.clone()),
    );
    if !current.threshold.is_some_and(|t| close(t, spec.threshold)) {
        d.push(format!(
            "threshold: {:?} -> Some({})",
            current.threshold, spec.threshold
        ));
    }
    differ(
        &mut d,
        "comparison_operator",
        &current.comparison_operator,
        &Some(spec.comparison_operator.clone()),
    );
    differ(
        &mut d,
        "treat_missing_data",
        &current
            .treat_missing_data
            .clone()
            .or_else(|| Some("missing".into())),
        &Some(spec.treat_missing_data.clone()),
    );
    differ(
        &mut d,
        "actions_enabled",
        &current.actions_enabled.unwrap_or(true),
        &spec.actions_enabled,
    );
    match policy_arn {
        Some(arn) if current.actions.iter().any(|a| a == arn) => {}
        Some(arn) => d.push(format!("alarm_actions: {:?} -> [{arn:?}]", current.actions)),
        // The policy is about to be created; its ARN is not known yet.
        None => d.push("alarm_actions: -> the new step policy".into()),
    }
    d
}

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
    for t in &file.targets {
        let id = t.resource_id.as_str();
        match current.target(id) {
            None => plan.push(Op::Create, Kind::ScalableTarget, id, "", vec![]),
            Some(c) => {
                let mut d = Vec::new();
                if t.capacity_owned_by_file() || options.reset_capacity {
                    differ(&mut d, "min_capacity", &c.min_capacity, &t.min_capacity);
                    differ(&mut d, "max_capacity", &c.max_capacity, &t.max_capacity);
                } else if (c.min_capacity, c.max_capacity) != (t.min_capacity, t.max_capacity) {
                    let owner = if t.scheduled.is_empty() {
                        "left as it is (capacity = \"ignore_changes\")"
                    } else {
                        "set by schedule"
                    };
                    plan.notes.push(format!(
                        "{id}: min/max {}..={} {owner}; the file says {}..={} (apply --reset-capacity to set them)",
                        c.min_capacity, c.max_capacity, t.min_capacity, t.max_capacity
                    ));
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
    plan.unmanaged = unmanaged(file, current);
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
    plan
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

#[cfg(test)]
mod tests;
