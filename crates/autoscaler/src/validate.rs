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
        // Day-of-month and day-of-week cannot both be given: exactly one
        // of them is '?' (EventBridge cron rules, which AAS follows).
        if (fields[2] == "?") == (fields[4] == "?") {
            return Some(format!(
                "{schedule:?}: exactly one of day-of-month and day-of-week must be '?'"
            ));
        }
        return None;
    }
    Some(format!(
        "{schedule:?} is not at(...), rate(...) or cron(...)"
    ))
}

/// Steps must cover one contiguous range: sorted, no overlaps, no gaps, at
/// most one open end on each side; and the sign rules of Application Auto
/// Scaling's `StepAdjustment` (API reference): a step with neither bound is
/// refused, a negative lower bound needs a step whose lower bound is null,
/// a positive upper bound needs a step whose upper bound is null, and
/// `ExactCapacity` takes no negative adjustment.
fn steps_problem(steps: &[Step], adjustment_type: &str) -> Option<String> {
    if steps.is_empty() {
        return Some("at least one step is needed".into());
    }
    if steps
        .iter()
        .any(|s| s.lower_bound.is_none() && s.upper_bound.is_none())
    {
        return Some(
            "a step needs a lower or an upper bound (relative to the alarm threshold)".into(),
        );
    }
    if steps.iter().any(|s| s.lower_bound.is_some_and(|l| l < 0.0))
        && !steps.iter().any(|s| s.lower_bound.is_none())
    {
        return Some(
            "a negative lower bound needs a step whose lower bound is absent (minus infinity)"
                .into(),
        );
    }
    if steps.iter().any(|s| s.upper_bound.is_some_and(|u| u > 0.0))
        && !steps.iter().any(|s| s.upper_bound.is_none())
    {
        return Some(
            "a positive upper bound needs a step whose upper bound is absent (plus infinity)"
                .into(),
        );
    }
    if adjustment_type == "ExactCapacity" && steps.iter().any(|s| s.adjustment < 0) {
        return Some("ExactCapacity sets a capacity: adjustments cannot be negative".into());
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

/// IANA zone names without a `/` that Application Auto Scaling accepts
/// (canonical or backward-compatible names in the tz database).
const ZONES_WITHOUT_SLASH: [&str; 20] = [
    "UTC",
    "GMT",
    "UCT",
    "Zulu",
    "Universal",
    "Greenwich",
    "CET",
    "EET",
    "MET",
    "WET",
    "EST",
    "MST",
    "HST",
    "EST5EDT",
    "CST6CDT",
    "MST7MDT",
    "PST8PDT",
    "GMT0",
    "Etc",
    "Factory",
];

fn is_time_zone(tz: &str) -> bool {
    let charset = tz
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "/_-+".contains(c));
    charset
        && if tz.contains('/') {
            !tz.starts_with('/') && !tz.ends_with('/')
        } else {
            ZONES_WITHOUT_SLASH.contains(&tz)
        }
}

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

/// Min and max. 0 is allowed for inference components and for endpoint
/// variants (asynchronous endpoints scale to zero: "Autoscale an
/// asynchronous endpoint", SageMaker developer guide).
fn check_capacity(t: &Target, at: &str, p: &mut Problems<'_>) {
    if t.min_capacity < 0 {
        p.add(format!("{at}.min_capacity"), "must be 0 or more");
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

fn check_target_tracking(
    t: &Target,
    kind: Option<ResourceKind>,
    at: &str,
    names: &mut Names,
    p: &mut Problems<'_>,
) {
    for (i, tt) in t.target_tracking.iter().enumerate() {
        let f = format!("{at}.target_tracking[{i}]");
        names.check(format!("{f}.name"), &tt.name, p);
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

/// The scale-to-zero recipes: where each applies, the alarm's fields, and
/// the step policy's shape (ChangeInCapacity, one step from 0 up, +1), as in
/// "Scale an endpoint to zero instances" and "Autoscale an asynchronous
/// endpoint" (SageMaker developer guide).
fn check_recipe(t: &Target, kind: Option<ResourceKind>, at: &str, p: &mut Problems<'_>) {
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
