//! Local validation, before any AWS call: each problem names the field.
//!
//! AWS validates too, but one call at a time and after earlier calls have
//! already changed things; checking the whole file first means a bad file
//! changes nothing. These rules are also stricter than emulators such as moto,
//! which accept pairings AWS refuses.

use std::collections::HashSet;

use crate::model::{
    AutoscalingFile, ResourceKind, Step, Target, COMPONENT_DIMENSION, VARIANT_DIMENSION,
};

/// One problem in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The field, e.g. `targets[0].target_tracking[1].predefined_metric`.
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "`{}`: {}", self.field, self.reason)
    }
}

/// Every problem of a file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the autoscaling file is invalid:\n{}", .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
pub struct Invalid(pub Vec<Problem>);

/// Predefined metrics of endpoint variants.
pub const VARIANT_METRICS: [&str; 2] = [
    "SageMakerVariantInvocationsPerInstance",
    "SageMakerVariantConcurrentRequestsPerModelHighResolution",
];
/// Predefined metrics of inference components.
pub const COMPONENT_METRICS: [&str; 2] = [
    "SageMakerInferenceComponentInvocationsPerCopy",
    "SageMakerInferenceComponentConcurrentRequestsPerCopyHighResolution",
];

/// A SageMaker name: 1 to 63 alphanumerics and hyphens, not starting or
/// ending with a hyphen.
fn is_sagemaker_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// What a resource id names, when it is well formed.
pub fn resource_kind(resource_id: &str) -> Option<ResourceKind> {
    let parts: Vec<&str> = resource_id.split('/').collect();
    match parts.as_slice() {
        ["endpoint", ep, "variant", v] if is_sagemaker_name(ep) && is_sagemaker_name(v) => {
            Some(ResourceKind::Variant)
        }
        ["inference-component", ic] if is_sagemaker_name(ic) => {
            Some(ResourceKind::InferenceComponent)
        }
        _ => None,
    }
}

/// Policy and scheduled-action names: 1 to 256 printable characters, no
/// `:`, `/` or `|`, no leading or trailing space (Application Auto Scaling's
/// rules; the ARN uses `:` and `/` as separators).
fn name_problem(name: &str) -> Option<String> {
    if name.is_empty() || name.chars().count() > 256 {
        return Some(format!("{name:?} must be 1 to 256 characters long"));
    }
    if name
        .chars()
        .any(|c| c.is_control() || matches!(c, ':' | '/' | '|'))
    {
        return Some(format!(
            "{name:?} may not contain ':', '/', '|' or control characters"
        ));
    }
    if name.starts_with(' ') || name.ends_with(' ') {
        return Some(format!("{name:?} may not start or end with a space"));
    }
    None
}

fn is_rfc3339(text: &str) -> bool {
    humantime::parse_rfc3339_weak(text).is_ok()
}

/// `at(...)`, `rate(...)` or `cron(...)` as Application Auto Scaling reads them.
pub fn schedule_problem(schedule: &str) -> Option<String> {
    let inner = |prefix: &str| {
        schedule
            .strip_prefix(prefix)
            .and_then(|s| s.strip_suffix(')'))
    };
    if let Some(at) = inner("at(") {
        let ok = at.len() == 19 && at.as_bytes()[10] == b'T' && is_rfc3339(&format!("{at}Z"));
        return (!ok).then(|| format!("{schedule:?}: at() takes yyyy-mm-ddThh:mm:ss"));
    }
    if let Some(rate) = inner("rate(") {
        let mut parts = rate.split_whitespace();
        let (Some(n), Some(unit), None) = (parts.next(), parts.next(), parts.next()) else {
            return Some(format!(
                "{schedule:?}: rate() takes a number and a unit, e.g. rate(5 minutes)"
            ));
        };
        let Ok(n) = n.parse::<u32>() else {
            return Some(format!(
                "{schedule:?}: the rate must be a positive whole number"
            ));
        };
        let expected = match (n, unit) {
            (0, _) => return Some(format!("{schedule:?}: the rate must be above 0")),
            (1, "minute" | "hour" | "day") => true,
            (n, "minutes" | "hours" | "days") if n > 1 => true,
            _ => false,
        };
        return (!expected).then(|| {
            format!("{schedule:?}: the unit must be minute, hour or day (plural above 1), e.g. rate(1 hour), rate(5 minutes)")
        });
    }
    if let Some(cron) = inner("cron(") {
        let fields: Vec<&str> = cron.split_whitespace().collect();
        if fields.len() != 6 {
            return Some(format!(
                "{schedule:?}: cron() takes six fields: minutes hours day-of-month month day-of-week year"
            ));
        }
        let allowed = |f: &str| {
            f.chars()
                .all(|c| c.is_ascii_alphanumeric() || ",-*/?LW#".contains(c))
        };
        if let Some(bad) = fields.iter().find(|f| !allowed(f)) {
            return Some(format!("{schedule:?}: {bad:?} is not a cron field"));
        }
        // Day-of-month and day-of-week cannot both be given; one must be '?'.
        if fields[2] != "?" && fields[4] != "?" {
            return Some(format!(
                "{schedule:?}: one of day-of-month and day-of-week must be '?'"
            ));
        }
        return None;
    }
    Some(format!(
        "{schedule:?} is not at(...), rate(...) or cron(...)"
    ))
}

/// Steps must cover one contiguous range: sorted, no overlaps, no gaps, at
/// most one open end on each side.
fn steps_problem(steps: &[Step]) -> Option<String> {
    if steps.is_empty() {
        return Some("at least one step is needed".into());
    }
    let mut sorted: Vec<&Step> = steps.iter().collect();
    sorted.sort_by(|a, b| {
        let (a, b) = (
            a.lower_bound.unwrap_or(f64::NEG_INFINITY),
            b.lower_bound.unwrap_or(f64::NEG_INFINITY),
        );
        a.total_cmp(&b)
    });
    for (i, step) in sorted.iter().enumerate() {
        let lower = step.lower_bound.unwrap_or(f64::NEG_INFINITY);
        let upper = step.upper_bound.unwrap_or(f64::INFINITY);
        if step.lower_bound.is_none() && step.upper_bound.is_none() && steps.len() > 1 {
            return Some(
                "a step with neither bound covers everything; it must be the only one".into(),
            );
        }
        if lower >= upper {
            return Some(format!(
                "step [{lower}, {upper}) is empty: the lower bound must be below the upper"
            ));
        }
        if step.lower_bound.is_none() && i > 0 {
            return Some("only one step may omit its lower bound".into());
        }
        if let Some(next) = sorted.get(i + 1) {
            let next_lower = next.lower_bound.unwrap_or(f64::NEG_INFINITY);
            if next_lower < upper {
                return Some(format!(
                    "steps overlap: [{lower}, {upper}) and one from {next_lower}"
                ));
            }
            if next_lower > upper {
                return Some(format!(
                    "steps leave a gap between {upper} and {next_lower}"
                ));
            }
            if step.upper_bound.is_none() {
                return Some("only the last step may omit its upper bound".into());
            }
        }
    }
    None
}

fn check_target(t: &Target, at: &str, problems: &mut Vec<Problem>) {
    let mut problem = |field: String, reason: String| problems.push(Problem { field, reason });
    let kind = resource_kind(&t.resource_id);
    if kind.is_none() {
        problem(
            format!("{at}.resource_id"),
            format!(
                "{:?} is not endpoint/<endpoint>/variant/<variant> or inference-component/<name> \
                 (names: 1 to 63 letters, digits and hyphens)",
                t.resource_id
            ),
        );
    }
    if let (Some(kind), Some(dimension)) = (kind, &t.scalable_dimension) {
        if dimension != kind.dimension() {
            problem(
                format!("{at}.scalable_dimension"),
                format!(
                    "{dimension:?} does not match {:?}; it must be {}",
                    t.resource_id,
                    kind.dimension()
                ),
            );
        }
    } else if let Some(dimension) = &t.scalable_dimension {
        if dimension != VARIANT_DIMENSION && dimension != COMPONENT_DIMENSION {
            problem(
                format!("{at}.scalable_dimension"),
                format!("{dimension:?} is not a SageMaker dimension"),
            );
        }
    }
    if t.min_capacity < 0 {
        problem(format!("{at}.min_capacity"), "must be 0 or more".into());
    }
    if t.max_capacity < 1 {
        problem(format!("{at}.max_capacity"), "must be 1 or more".into());
    }
    if t.min_capacity > t.max_capacity {
        problem(
            format!("{at}.min_capacity"),
            format!(
                "{} is above max_capacity {}",
                t.min_capacity, t.max_capacity
            ),
        );
    }
    if t.min_capacity == 0 && kind == Some(ResourceKind::Variant) {
        problem(
            format!("{at}.min_capacity"),
            "0 is allowed only for inference components; an endpoint variant keeps at least 1 instance".into(),
        );
    }

    let mut names = HashSet::new();
    let mut policy_name = |field: String, name: &str, problems: &mut Vec<Problem>| {
        if let Some(reason) = name_problem(name) {
            problems.push(Problem {
                field: field.clone(),
                reason,
            });
        }
        if !names.insert(name.to_owned()) {
            problems.push(Problem {
                field,
                reason: format!("{name:?} is used twice on this target"),
            });
        }
    };
    for (i, p) in t.target_tracking.iter().enumerate() {
        let f = format!("{at}.target_tracking[{i}]");
        policy_name(format!("{f}.name"), &p.name, problems);
        match (&p.predefined_metric, &p.customized_metric) {
            (Some(_), Some(_)) | (None, None) => problems.push(Problem {
                field: format!("{f}.predefined_metric"),
                reason: "give exactly one of predefined_metric and customized_metric".into(),
            }),
            (Some(metric), None) => {
                let (fits, other) = match kind {
                    Some(ResourceKind::Variant) => {
                        (VARIANT_METRICS.contains(&metric.as_str()), &VARIANT_METRICS)
                    }
                    Some(ResourceKind::InferenceComponent) => (
                        COMPONENT_METRICS.contains(&metric.as_str()),
                        &COMPONENT_METRICS,
                    ),
                    None => (true, &VARIANT_METRICS),
                };
                if !fits {
                    problems.push(Problem {
                        field: format!("{f}.predefined_metric"),
                        reason: format!(
                            "{metric:?} does not apply to {:?}; use one of {}",
                            t.resource_id,
                            other.join(", ")
                        ),
                    });
                }
            }
            (None, Some(custom)) => {
                if !["Average", "Minimum", "Maximum", "SampleCount", "Sum"]
                    .contains(&custom.statistic.as_str())
                {
                    problems.push(Problem {
                        field: format!("{f}.customized_metric.statistic"),
                        reason: format!(
                            "{:?} is not Average, Minimum, Maximum, SampleCount or Sum",
                            custom.statistic
                        ),
                    });
                }
                if custom.namespace.is_empty() || custom.metric_name.is_empty() {
                    problems.push(Problem {
                        field: format!("{f}.customized_metric"),
                        reason: "namespace and metric_name are required".into(),
                    });
                }
            }
        }
        if !(p.target_value.is_finite() && p.target_value > 0.0) {
            problems.push(Problem {
                field: format!("{f}.target_value"),
                reason: "must be a number above 0".into(),
            });
        }
        for (field, value) in [
            ("scale_out_cooldown_s", p.scale_out_cooldown_s),
            ("scale_in_cooldown_s", p.scale_in_cooldown_s),
        ] {
            if value.is_some_and(|v| !(0..=86_400).contains(&v)) {
                problems.push(Problem {
                    field: format!("{f}.{field}"),
                    reason: "must be 0 to 86400 seconds".into(),
                });
            }
        }
    }
    for (i, p) in t.step_scaling.iter().enumerate() {
        let f = format!("{at}.step_scaling[{i}]");
        policy_name(format!("{f}.name"), &p.name, problems);
        if ![
            "ChangeInCapacity",
            "ExactCapacity",
            "PercentChangeInCapacity",
        ]
        .contains(&p.adjustment_type.as_str())
        {
            problems.push(Problem {
                field: format!("{f}.adjustment_type"),
                reason: format!(
                    "{:?} is not ChangeInCapacity, ExactCapacity or PercentChangeInCapacity",
                    p.adjustment_type
                ),
            });
        }
        if let Some(agg) = &p.metric_aggregation_type {
            if !["Average", "Minimum", "Maximum"].contains(&agg.as_str()) {
                problems.push(Problem {
                    field: format!("{f}.metric_aggregation_type"),
                    reason: format!("{agg:?} is not Average, Minimum or Maximum"),
                });
            }
        }
        if p.min_adjustment_magnitude.is_some() && p.adjustment_type != "PercentChangeInCapacity" {
            problems.push(Problem {
                field: format!("{f}.min_adjustment_magnitude"),
                reason: "applies only to PercentChangeInCapacity".into(),
            });
        }
        if let Some(reason) = steps_problem(&p.steps) {
            problems.push(Problem {
                field: format!("{f}.steps"),
                reason,
            });
        }
    }
    for (i, s) in t.scheduled.iter().enumerate() {
        let f = format!("{at}.scheduled[{i}]");
        policy_name(format!("{f}.name"), &s.name, problems);
        if let Some(reason) = schedule_problem(&s.schedule) {
            problems.push(Problem {
                field: format!("{f}.schedule"),
                reason,
            });
        }
        if s.min_capacity.is_none() && s.max_capacity.is_none() {
            problems.push(Problem {
                field: f.clone(),
                reason: "give min_capacity, max_capacity or both".into(),
            });
        }
        if let (Some(lo), Some(hi)) = (s.min_capacity, s.max_capacity) {
            if lo > hi {
                problems.push(Problem {
                    field: format!("{f}.min_capacity"),
                    reason: format!("{lo} is above max_capacity {hi}"),
                });
            }
        }
        if s.min_capacity == Some(0) && kind == Some(ResourceKind::Variant) {
            problems.push(Problem {
                field: format!("{f}.min_capacity"),
                reason: "0 is allowed only for inference components".into(),
            });
        }
        for (field, value) in [("start_time", &s.start_time), ("end_time", &s.end_time)] {
            if value.as_deref().is_some_and(|v| !is_rfc3339(v)) {
                problems.push(Problem {
                    field: format!("{f}.{field}"),
                    reason: "must be RFC 3339, e.g. 2026-01-01T00:00:00Z".into(),
                });
            }
        }
        if let Some(tz) = &s.timezone {
            let plausible = tz == "UTC"
                || (tz.contains('/')
                    && tz
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "/_-+".contains(c)));
            if !plausible {
                problems.push(Problem {
                    field: format!("{f}.timezone"),
                    reason: format!("{tz:?} is not an IANA time zone such as Europe/Berlin"),
                });
            }
        }
    }
    if let Some(recipe) = &t.scale_to_zero {
        let f = format!("{at}.scale_to_zero");
        if kind != Some(ResourceKind::InferenceComponent) {
            problems.push(Problem {
                field: f.clone(),
                reason: "applies only to inference components".into(),
            });
        }
        if t.min_capacity != 0 {
            problems.push(Problem {
                field: format!("{at}.min_capacity"),
                reason: "must be 0 for scale to zero".into(),
            });
        }
        if !t.step_scaling.iter().any(|p| p.name == recipe.step_policy) {
            problems.push(Problem {
                field: format!("{f}.step_policy"),
                reason: format!(
                    "no step_scaling policy named {:?} on this target",
                    recipe.step_policy
                ),
            });
        }
        if t.target_tracking.is_empty() {
            problems.push(Problem {
                field: format!("{at}.target_tracking"),
                reason:
                    "scale to zero needs a target-tracking policy to scale in and out of one copy"
                        .into(),
            });
        }
        if recipe
            .period_s
            .is_some_and(|p| ![10, 20, 30].contains(&p) && (p < 60 || p % 60 != 0))
        {
            problems.push(Problem {
                field: format!("{f}.period_s"),
                reason: "must be 10, 20, 30 or a multiple of 60".into(),
            });
        }
        if recipe.evaluation_periods.is_some_and(|p| p < 1) {
            problems.push(Problem {
                field: format!("{f}.evaluation_periods"),
                reason: "must be 1 or more".into(),
            });
        }
        if let Some(name) = &recipe.alarm_name {
            if name.is_empty() || name.len() > 255 {
                problems.push(Problem {
                    field: format!("{f}.alarm_name"),
                    reason: "must be 1 to 255 characters".into(),
                });
            }
        }
    }
}

/// Checks a whole file; every problem is reported, not just the first.
pub fn validate(file: &AutoscalingFile) -> Result<(), Invalid> {
    let mut problems = Vec::new();
    let mut seen = HashSet::new();
    for (i, target) in file.targets.iter().enumerate() {
        let at = format!("targets[{i}]");
        if !seen.insert(target.resource_id.clone()) {
            problems.push(Problem {
                field: format!("{at}.resource_id"),
                reason: format!("{:?} is declared twice", target.resource_id),
            });
        }
        check_target(target, &at, &mut problems);
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Invalid(problems))
    }
}

#[cfg(test)]
mod tests;
