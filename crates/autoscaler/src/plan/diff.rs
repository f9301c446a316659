//! How a declared resource differs from what AWS has: one line per field
//! that differs, as the plan shows it.

use super::*;

pub(super) fn differ<T: PartialEq + std::fmt::Debug>(
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
pub(super) fn differ_declared<T: PartialEq + std::fmt::Debug>(
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
pub(super) fn differ_cooldown(
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
pub(super) fn normalized(metric: &CustomizedMetric) -> CustomizedMetric {
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

pub(super) fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

pub(super) fn target_tracking_differences(
    declared: &TargetTracking,
    current: &PolicyShape,
) -> Vec<String> {
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

pub(super) fn step_scaling_differences(
    declared: &StepScaling,
    current: &PolicyShape,
) -> Vec<String> {
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

pub(super) fn scheduled_differences(
    declared: &Scheduled,
    current: &CurrentScheduled,
) -> Vec<String> {
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

/// Every field of the scale-to-zero alarm, compared with the declared one
/// (AWS's recipe where the file leaves a field out).
pub(super) fn alarm_differences(
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
