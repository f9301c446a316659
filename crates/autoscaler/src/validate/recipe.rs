//! The scale-to-zero recipes (inference components, asynchronous endpoint
//! variants): their step policy and the alarm that wakes them.

use super::*;

/// The scale-to-zero recipes: where each applies, the alarm's fields, and
/// the step policy's shape (ChangeInCapacity, one step from 0 up, +1), as in
/// "Scale an endpoint to zero instances" and "Autoscale an asynchronous
/// endpoint" (SageMaker developer guide).
pub(super) fn check_recipe(t: &Target, kind: Option<ResourceKind>, at: &str, p: &mut Problems<'_>) {
    let (recipe, f, wanted_kind, what) = match (&t.scale_to_zero, &t.async_scale_to_zero) {
        (Some(_), Some(_)) => {
            p.add(
                format!("{at}.async_scale_to_zero"),
                "give scale_to_zero (inference components) or async_scale_to_zero (asynchronous endpoint variants), not both",
            );
            return;
        }
        (Some(r), None) => (
            r,
            format!("{at}.scale_to_zero"),
            ResourceKind::InferenceComponent,
            "inference components",
        ),
        (None, Some(r)) => (
            r,
            format!("{at}.async_scale_to_zero"),
            ResourceKind::Variant,
            "endpoint variants (asynchronous endpoints)",
        ),
        (None, None) => return,
    };
    if kind.is_some() && kind != Some(wanted_kind) {
        p.add(f.clone(), format!("applies only to {what}"));
    }
    if t.min_capacity != 0 {
        p.add(format!("{at}.min_capacity"), "must be 0 for scale to zero");
    }
    match t.step_scaling.iter().find(|s| s.name == recipe.step_policy) {
        None => p.add(
            format!("{f}.step_policy"),
            format!(
                "no step_scaling policy named {:?} on this target",
                recipe.step_policy
            ),
        ),
        Some(step) => {
            let shape_ok = step.adjustment_type == "ChangeInCapacity"
                && step.steps.len() == 1
                && step.steps[0].lower_bound == Some(0.0)
                && step.steps[0].upper_bound.is_none()
                && step.steps[0].adjustment >= 1;
            if !shape_ok {
                p.add(
                    format!("{f}.step_policy"),
                    format!(
                        "{:?} must be the recipe's shape: adjustment_type ChangeInCapacity and one step with lower_bound = 0, no upper_bound, adjustment 1 (or more)",
                        recipe.step_policy
                    ),
                );
            }
        }
    }
    if wanted_kind == ResourceKind::InferenceComponent && t.target_tracking.is_empty() {
        p.add(
            format!("{at}.target_tracking"),
            "scale to zero needs a target-tracking policy to scale in and out of one copy",
        );
    }
    if let Some(spec) = t.alarm() {
        check_alarm(&spec, &f, p);
    }
}

/// The scale-to-zero alarm's fields, by CloudWatch's rules (under `f`).
fn check_alarm(spec: &crate::model::AlarmSpec, f: &str, p: &mut Problems<'_>) {
    if ![10, 20, 30].contains(&spec.period_s) && (spec.period_s < 60 || spec.period_s % 60 != 0) {
        p.add(
            format!("{f}.period_s"),
            "must be 10, 20, 30 or a multiple of 60",
        );
    }
    if spec.evaluation_periods < 1 {
        p.add(format!("{f}.evaluation_periods"), "must be 1 or more");
    }
    if i64::from(spec.period_s) * i64::from(spec.evaluation_periods) > 86_400 {
        p.add(
            format!("{f}.evaluation_periods"),
            "period_s × evaluation_periods may not exceed one day (86400 s)",
        );
    }
    if !(1..=spec.evaluation_periods.max(1)).contains(&spec.datapoints_to_alarm) {
        p.add(
            format!("{f}.datapoints_to_alarm"),
            "must be 1 to evaluation_periods",
        );
    }
    if !["Average", "Minimum", "Maximum", "SampleCount", "Sum"].contains(&spec.statistic.as_str()) {
        p.add(
            format!("{f}.statistic"),
            format!(
                "{:?} is not Average, Minimum, Maximum, SampleCount or Sum",
                spec.statistic
            ),
        );
    }
    if ![
        "GreaterThanOrEqualToThreshold",
        "GreaterThanThreshold",
        "LessThanThreshold",
        "LessThanOrEqualToThreshold",
    ]
    .contains(&spec.comparison_operator.as_str())
    {
        p.add(
            format!("{f}.comparison_operator"),
            format!(
                "{:?} is not a CloudWatch comparison",
                spec.comparison_operator
            ),
        );
    }
    if !["missing", "notBreaching", "breaching", "ignore"]
        .contains(&spec.treat_missing_data.as_str())
    {
        p.add(
            format!("{f}.treat_missing_data"),
            "must be missing, notBreaching, breaching or ignore",
        );
    }
    if !spec.threshold.is_finite() {
        p.add(format!("{f}.threshold"), "must be a number");
    }
    if spec.name.is_empty() || spec.name.len() > 255 {
        p.add(format!("{f}.alarm_name"), "must be 1 to 255 characters");
    }
    if !spec.name.starts_with(crate::model::ALARM_PREFIX) {
        p.add(
            format!("{f}.alarm_name"),
            format!(
                "{:?} must start with {:?}: the IAM policy lets inferlb touch only the alarms it names",
                spec.name,
                crate::model::ALARM_PREFIX
            ),
        );
    }
}
