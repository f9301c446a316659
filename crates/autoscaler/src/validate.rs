//! Local validation, before any AWS call: each problem names the field.
//!
//! AWS validates too, but one call at a time and after earlier calls have
//! already changed things; checking the whole file first means a bad file
//! changes nothing. These rules are also stricter than emulators such as moto,
//! which accept pairings AWS refuses.

use std::collections::HashSet;

pub use crate::model::resource_kind;
use crate::model::{
    AutoscalingFile, CustomizedMetric, ResourceKind, Step, Target, COMPONENT_DIMENSION,
    PROVISIONED_CONCURRENCY_DIMENSION, VARIANT_DIMENSION,
};

mod recipe;
mod rules;

use recipe::check_recipe;
pub use rules::schedule_problem;
use rules::{is_rfc3339, is_time_zone, name_problem, steps_problem};

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

/// Collects problems, each under a field path.
struct Problems<'a>(&'a mut Vec<Problem>);

impl Problems<'_> {
    fn add(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        self.0.push(Problem {
            field: field.into(),
            reason: reason.into(),
        });
    }
}

/// The metric of serverless endpoints' provisioned concurrency.
pub const PROVISIONED_CONCURRENCY_METRIC: &str =
    "SageMakerVariantProvisionedConcurrencyUtilization";

/// The resource id and the dimension; returns what the target scales.
fn check_resource(t: &Target, at: &str, p: &mut Problems<'_>) -> Option<ResourceKind> {
    let kind = resource_kind(&t.resource_id);
    if kind.is_none() {
        p.add(
            format!("{at}.resource_id"),
            format!(
                "{:?} is not endpoint/<endpoint>/variant/<variant> or inference-component/<name> \
                 (names: 1 to 63 letters, digits and hyphens)",
                t.resource_id
            ),
        );
    }
    if let Some(dimension) = &t.scalable_dimension {
        let allowed: &[&str] = match kind {
            Some(ResourceKind::Variant) => &[VARIANT_DIMENSION, PROVISIONED_CONCURRENCY_DIMENSION],
            Some(ResourceKind::InferenceComponent) => &[COMPONENT_DIMENSION],
            None => &[
                VARIANT_DIMENSION,
                PROVISIONED_CONCURRENCY_DIMENSION,
                COMPONENT_DIMENSION,
            ],
        };
        if !allowed.contains(&dimension.as_str()) {
            p.add(
                format!("{at}.scalable_dimension"),
                format!(
                    "{dimension:?} does not match {:?}; it must be {}",
                    t.resource_id,
                    allowed.join(" or ")
                ),
            );
        }
    }
    kind
}

/// Min and max.
///
/// - 0 only where AWS can come back from zero: an inference component with
///   its wake-up alarm (`scale_to_zero`; "Scale an endpoint to zero
///   instances", SageMaker developer guide) or an asynchronous endpoint's
///   variant with its backlog alarm (`async_scale_to_zero`; "Autoscale an
///   asynchronous endpoint"). A real-time variant at 0 instances receives
///   no invocations, so no metric would ever scale it out again.
/// - Provisioned concurrency of a serverless variant: 1 to 200 ("Automatically
///   scale Provisioned Concurrency for a serverless endpoint";
///   `ProvisionedConcurrency` is 1 to 200 in the SageMaker API).
fn check_capacity(t: &Target, at: &str, p: &mut Problems<'_>) {
    if t.min_capacity < 0 {
        p.add(format!("{at}.min_capacity"), "must be 0 or more");
    }
    let provisioned = t.dimension().as_deref() == Some(PROVISIONED_CONCURRENCY_DIMENSION);
    if provisioned {
        if t.min_capacity < 1 {
            p.add(
                format!("{at}.min_capacity"),
                "provisioned concurrency is 1 to 200: min_capacity must be 1 or more",
            );
        }
        if t.max_capacity > MAX_PROVISIONED_CONCURRENCY {
            p.add(
                format!("{at}.max_capacity"),
                format!("provisioned concurrency is 1 to {MAX_PROVISIONED_CONCURRENCY}"),
            );
        }
    } else if t.min_capacity == 0 && t.scale_to_zero.is_none() && t.async_scale_to_zero.is_none() {
        p.add(
            format!("{at}.min_capacity"),
            "0 needs a way back from zero: scale_to_zero (an inference component's wake-up \
             alarm) or async_scale_to_zero (an asynchronous endpoint's backlog alarm); a \
             real-time variant at 0 instances gets no traffic to scale on",
        );
    }
    if t.max_capacity < 1 {
        p.add(format!("{at}.max_capacity"), "must be 1 or more");
    }
    if t.min_capacity > t.max_capacity {
        p.add(
            format!("{at}.min_capacity"),
            format!(
                "{} is above max_capacity {}",
                t.min_capacity, t.max_capacity
            ),
        );
    }
}

/// The predefined metrics that fit a target's dimension.
fn metrics_for(t: &Target, kind: Option<ResourceKind>) -> &'static [&'static str] {
    match (kind, t.dimension().as_deref()) {
        (_, Some(PROVISIONED_CONCURRENCY_DIMENSION)) => &[PROVISIONED_CONCURRENCY_METRIC],
        (Some(ResourceKind::InferenceComponent), _) => &COMPONENT_METRICS,
        _ => &VARIANT_METRICS,
    }
}

fn check_customized(custom: &CustomizedMetric, f: &str, p: &mut Problems<'_>) {
    const STATISTICS: [&str; 5] = ["Average", "Minimum", "Maximum", "SampleCount", "Sum"];
    if custom.metrics.is_empty() {
        if !STATISTICS.contains(&custom.statistic.as_str()) {
            p.add(
                format!("{f}.customized_metric.statistic"),
                format!(
                    "{:?} is not Average, Minimum, Maximum, SampleCount or Sum",
                    custom.statistic
                ),
            );
        }
        if custom.namespace.is_empty() || custom.metric_name.is_empty() {
            p.add(
                format!("{f}.customized_metric"),
                "namespace and metric_name are required (or metric math in `metrics`)",
            );
        }
        return;
    }
    if !custom.namespace.is_empty() || !custom.metric_name.is_empty() {
        p.add(
            format!("{f}.customized_metric"),
            "give either one metric (namespace, metric_name, statistic) or `metrics`, not both",
        );
    }
    if custom.metrics.iter().filter(|q| q.return_data).count() != 1 {
        p.add(
            format!("{f}.customized_metric.metrics"),
            "exactly one query must have return_data = true (the policy's metric)",
        );
    }
    for (i, q) in custom.metrics.iter().enumerate() {
        let at = format!("{f}.customized_metric.metrics[{i}]");
        let metric = q.namespace.is_some() || q.metric_name.is_some() || q.statistic.is_some();
        match (&q.expression, metric) {
            (Some(_), true) | (None, false) => p.add(
                at.clone(),
                "give an expression, or a metric (namespace, metric_name, statistic)",
            ),
            (None, true)
                if q.namespace.is_none() || q.metric_name.is_none() || q.statistic.is_none() =>
            {
                p.add(
                    at.clone(),
                    "a metric needs namespace, metric_name and statistic",
                )
            }
            _ => {}
        }
        let id_ok = q.id.chars().next().is_some_and(|c| c.is_ascii_lowercase())
            && q.id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !id_ok {
            p.add(
                format!("{at}.id"),
                format!(
                    "{:?} must start with a lowercase letter and use letters, digits and _",
                    q.id
                ),
            );
        }
    }
}

/// Serverless provisioned concurrency's upper bound.
const MAX_PROVISIONED_CONCURRENCY: i32 = 200;

/// Quotas that cannot be raised, or are checked at their default ("Quotas for
/// Application Auto Scaling", Application Auto Scaling user guide).
const MAX_POLICIES_PER_TARGET: usize = 50;
const MAX_SCHEDULED_PER_TARGET: usize = 200;
/// Adjustable, so a larger quota may exist on an account; the file is held
/// to the default.
const MAX_STEPS_PER_POLICY: usize = 20;

fn check_quotas(t: &Target, at: &str, p: &mut Problems<'_>) {
    let policies = t.target_tracking.len() + t.step_scaling.len();
    if policies > MAX_POLICIES_PER_TARGET {
        p.add(
            format!("{at}.target_tracking"),
            format!(
                "{policies} scaling policies: Application Auto Scaling allows {MAX_POLICIES_PER_TARGET} per target (target tracking and step scaling together)"
            ),
        );
    }
    if t.scheduled.len() > MAX_SCHEDULED_PER_TARGET {
        p.add(
            format!("{at}.scheduled"),
            format!(
                "{} scheduled actions: Application Auto Scaling allows {MAX_SCHEDULED_PER_TARGET} per target",
                t.scheduled.len()
            ),
        );
    }
    for (i, sp) in t.step_scaling.iter().enumerate() {
        if sp.steps.len() > MAX_STEPS_PER_POLICY {
            p.add(
                format!("{at}.step_scaling[{i}].steps"),
                format!(
                    "{} step adjustments: the default quota is {MAX_STEPS_PER_POLICY} per policy",
                    sp.steps.len()
                ),
            );
        }
    }
}

fn check_target_tracking(
    t: &Target,
    kind: Option<ResourceKind>,
    at: &str,
    names: &mut Names,
    p: &mut Problems<'_>,
) {
    // "You can have multiple target tracking scaling policies for a scalable
    // target, provided that each of them uses a different metric" (Target
    // tracking scaling policies, Application Auto Scaling user guide).
    let mut metrics: Vec<String> = Vec::new();
    for (i, tt) in t.target_tracking.iter().enumerate() {
        let f = format!("{at}.target_tracking[{i}]");
        names.check(format!("{f}.name"), &tt.name, p);
        let metric = match (&tt.predefined_metric, &tt.customized_metric) {
            (Some(name), _) => format!("predefined {name}"),
            (None, Some(custom)) => format!("customized {:?}", serde_json::to_string(custom).ok()),
            (None, None) => String::new(),
        };
        if !metric.is_empty() {
            if let Some(first) = metrics.iter().position(|m| *m == metric) {
                p.add(
                    format!("{f}.predefined_metric"),
                    format!(
                        "uses the same metric as target_tracking[{first}]: each target-tracking policy of a target needs its own metric"
                    ),
                );
            }
            metrics.push(metric);
        }
        match (&tt.predefined_metric, &tt.customized_metric) {
            (Some(_), Some(_)) | (None, None) => p.add(
                format!("{f}.predefined_metric"),
                "give exactly one of predefined_metric and customized_metric",
            ),
            (Some(metric), None) => {
                let fits = metrics_for(t, kind);
                if !fits.contains(&metric.as_str()) {
                    p.add(
                        format!("{f}.predefined_metric"),
                        format!(
                            "{metric:?} does not apply to {:?} ({}); use one of {}",
                            t.resource_id,
                            t.dimension().unwrap_or_default(),
                            fits.join(", ")
                        ),
                    );
                }
            }
            (None, Some(custom)) => check_customized(custom, &f, p),
        }
        if !(tt.target_value.is_finite() && tt.target_value > 0.0) {
            p.add(format!("{f}.target_value"), "must be a number above 0");
        }
        for (field, value) in [
            ("scale_out_cooldown_s", tt.scale_out_cooldown_s),
            ("scale_in_cooldown_s", tt.scale_in_cooldown_s),
        ] {
            if value.is_some_and(|v| !(0..=86_400).contains(&v)) {
                p.add(format!("{f}.{field}"), "must be 0 to 86400 seconds");
            }
        }
    }
}

fn check_step_scaling(t: &Target, at: &str, names: &mut Names, p: &mut Problems<'_>) {
    for (i, sp) in t.step_scaling.iter().enumerate() {
        let f = format!("{at}.step_scaling[{i}]");
        names.check(format!("{f}.name"), &sp.name, p);
        if ![
            "ChangeInCapacity",
            "ExactCapacity",
            "PercentChangeInCapacity",
        ]
        .contains(&sp.adjustment_type.as_str())
        {
            p.add(
                format!("{f}.adjustment_type"),
                format!(
                    "{:?} is not ChangeInCapacity, ExactCapacity or PercentChangeInCapacity",
                    sp.adjustment_type
                ),
            );
        }
        if let Some(agg) = &sp.metric_aggregation_type {
            if !["Average", "Minimum", "Maximum"].contains(&agg.as_str()) {
                p.add(
                    format!("{f}.metric_aggregation_type"),
                    format!("{agg:?} is not Average, Minimum or Maximum"),
                );
            }
        }
        if sp.min_adjustment_magnitude.is_some() && sp.adjustment_type != "PercentChangeInCapacity"
        {
            p.add(
                format!("{f}.min_adjustment_magnitude"),
                "applies only to PercentChangeInCapacity",
            );
        }
        if let Some(reason) = steps_problem(&sp.steps, &sp.adjustment_type) {
            p.add(format!("{f}.steps"), reason);
        }
    }
}

fn check_scheduled(t: &Target, at: &str, names: &mut Names, p: &mut Problems<'_>) {
    for (i, s) in t.scheduled.iter().enumerate() {
        let f = format!("{at}.scheduled[{i}]");
        names.check(format!("{f}.name"), &s.name, p);
        if let Some(reason) = schedule_problem(&s.schedule) {
            p.add(format!("{f}.schedule"), reason);
        }
        if s.min_capacity.is_none() && s.max_capacity.is_none() {
            p.add(f.clone(), "give min_capacity, max_capacity or both");
        }
        if let (Some(lo), Some(hi)) = (s.min_capacity, s.max_capacity) {
            if lo > hi {
                p.add(
                    format!("{f}.min_capacity"),
                    format!("{lo} is above max_capacity {hi}"),
                );
            }
        }
        if s.min_capacity.is_some_and(|m| m < 0) {
            p.add(format!("{f}.min_capacity"), "must be 0 or more");
        }
        // A min-only action above the target's max would leave min above
        // max when it runs; AWS refuses it.
        if let (Some(lo), None) = (s.min_capacity, s.max_capacity) {
            if lo > t.max_capacity {
                p.add(
                    format!("{f}.min_capacity"),
                    format!(
                        "{lo} is above the target's max_capacity {}: give max_capacity too",
                        t.max_capacity
                    ),
                );
            }
        }
        for (field, value) in [("start_time", &s.start_time), ("end_time", &s.end_time)] {
            if value.as_deref().is_some_and(|v| !is_rfc3339(v)) {
                p.add(
                    format!("{f}.{field}"),
                    "must be RFC 3339, e.g. 2026-01-01T00:00:00Z",
                );
            }
        }
        if let Some(tz) = &s.timezone {
            if !is_time_zone(tz) {
                p.add(
                    format!("{f}.timezone"),
                    format!("{tz:?} is not an IANA time zone such as Europe/Berlin or UTC"),
                );
            }
        }
    }
}

/// Policy and action names of one target: valid and unique.
#[derive(Default)]
struct Names(HashSet<String>);

impl Names {
    fn check(&mut self, field: String, name: &str, p: &mut Problems<'_>) {
        if let Some(reason) = name_problem(name) {
            p.add(field.clone(), reason);
        }
        if !self.0.insert(name.to_owned()) {
            p.add(field, format!("{name:?} is used twice on this target"));
        }
    }
}

/// Tags as Application Auto Scaling takes them (TagResource): at most 50,
/// keys 1 to 128 characters not starting with `aws:`, values up to 256.
fn check_tags(t: &Target, at: &str, p: &mut Problems<'_>) {
    if t.tags.len() > 49 {
        p.add(
            format!("{at}.tags"),
            "at most 49 tags (inferlb adds its own, 50 in all)",
        );
    }
    for (key, value) in &t.tags {
        if key.is_empty() || key.chars().count() > 128 || key.starts_with("aws:") {
            p.add(
                format!("{at}.tags.{key}"),
                "a key is 1 to 128 characters and may not start with aws:",
            );
        }
        if key == crate::model::MANAGED_TAG.0 {
            p.add(format!("{at}.tags.{key}"), "this key is inferlb's own mark");
        }
        if value.chars().count() > 256 {
            p.add(
                format!("{at}.tags.{key}"),
                "a value is at most 256 characters",
            );
        }
    }
}

fn check_target(t: &Target, at: &str, problems: &mut Vec<Problem>) {
    let mut p = Problems(problems);
    let kind = check_resource(t, at, &mut p);
    check_capacity(t, at, &mut p);
    check_quotas(t, at, &mut p);
    check_tags(t, at, &mut p);
    let mut names = Names::default();
    check_target_tracking(t, kind, at, &mut names, &mut p);
    check_step_scaling(t, at, &mut names, &mut p);
    check_scheduled(t, at, &mut names, &mut p);
    check_recipe(t, kind, at, &mut p);
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
