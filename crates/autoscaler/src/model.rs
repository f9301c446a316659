//! The declared autoscaling file: scalable targets and their policies, in the
//! vocabulary of Application Auto Scaling.
//!
//! The same types serve the SageMaker agent and, later, the local replica
//! controller and the simulator: a target-tracking policy is a metric, a
//! target value and two cooldowns wherever it is applied.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// The whole file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutoscalingFile {
    /// AWS region. `--region`, then `AWS_REGION`, then the profile's region
    /// win over it; it wins over the instance's (IMDS).
    pub region: Option<String>,
    /// Scalable targets to manage.
    #[serde(default)]
    pub targets: Vec<Target>,
}

/// One scalable target: a SageMaker endpoint variant or inference component.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// `endpoint/<endpoint>/variant/<variant>` or `inference-component/<name>`.
    pub resource_id: String,
    /// Defaults to the dimension of the resource: `sagemaker:variant:DesiredInstanceCount`
    /// or `sagemaker:inference-component:DesiredCopyCount`.
    pub scalable_dimension: Option<String>,
    /// Lowest capacity (instances or copies). 0 only for inference components.
    pub min_capacity: i32,
    /// Highest capacity.
    pub max_capacity: i32,
    /// Who owns min/max after creation: by default the file, unless the
    /// target has scheduled actions (which work by changing min/max, so the
    /// schedule owns them); `enforce` or `ignore_changes` says so outright.
    pub capacity: Option<CapacityMode>,
    /// Suspend scaling activities. Compared only when declared, so an
    /// operator's suspension during an incident is not undone by `run`.
    pub suspended: Option<Suspended>,
    /// Tags of the scalable target. inferlb adds its mark,
    /// `inferlb:managed = "true"`, to every target it registers. Declared
    /// tags are compared (others on the target are left alone); a target
    /// that declares none is not read for tags.
    #[serde(default)]
    pub tags: std::collections::BTreeMap<String, String>,
    /// Target-tracking policies.
    #[serde(default)]
    pub target_tracking: Vec<TargetTracking>,
    /// Step-scaling policies.
    #[serde(default)]
    pub step_scaling: Vec<StepScaling>,
    /// Scheduled actions.
    #[serde(default)]
    pub scheduled: Vec<Scheduled>,
    /// Scale to zero (inference components): the alarm that wakes a
    /// component with no copies.
    pub scale_to_zero: Option<ScaleToZero>,
    /// Scale to zero (asynchronous endpoint variants): the alarm on
    /// `HasBacklogWithoutCapacity` that adds an instance when requests wait
    /// and there is none.
    pub async_scale_to_zero: Option<ScaleToZero>,
}

/// Who owns a target's min/max after it is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CapacityMode {
    /// The file: drift is corrected, even against scheduled actions.
    Enforce,
    /// Set at creation only; never compared afterwards.
    IgnoreChanges,
}

/// `SuspendedState` of a scalable target.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Suspended {
    /// No scale-in by dynamic policies.
    #[serde(default)]
    pub dynamic_scaling_in: bool,
    /// No scale-out by dynamic policies.
    #[serde(default)]
    pub dynamic_scaling_out: bool,
    /// No scheduled actions.
    #[serde(default)]
    pub scheduled_scaling: bool,
}

/// A target-tracking policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetTracking {
    /// Policy name, unique per target.
    pub name: String,
    /// A predefined SageMaker metric (give this or `customized_metric`).
    pub predefined_metric: Option<String>,
    /// A CloudWatch metric of your own.
    pub customized_metric: Option<CustomizedMetric>,
    /// The value the metric is kept at.
    pub target_value: f64,
    /// Seconds after a scale-out before another.
    pub scale_out_cooldown_s: Option<i32>,
    /// Seconds after a scale-in before another.
    pub scale_in_cooldown_s: Option<i32>,
    /// Never scale in through this policy.
    #[serde(default)]
    pub disable_scale_in: bool,
}

/// A customized CloudWatch metric for target tracking.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomizedMetric {
    /// CloudWatch namespace, e.g. `AWS/SageMaker`.
    #[serde(default)]
    pub namespace: String,
    /// Metric name.
    #[serde(default)]
    pub metric_name: String,
    /// `Average`, `Minimum`, `Maximum`, `SampleCount` or `Sum`.
    #[serde(default)]
    pub statistic: String,
    /// Unit, optional.
    pub unit: Option<String>,
    /// Metric dimensions.
    #[serde(default)]
    pub dimensions: Vec<MetricDimension>,
    /// Metric math instead of one metric: queries, exactly one of which
    /// (the result) has `return_data = true`. With `metrics`, leave
    /// `namespace`, `metric_name` and `statistic` empty.
    #[serde(default)]
    pub metrics: Vec<MetricQuery>,
}

/// One query of a metric-math customized metric.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricQuery {
    /// Identifier used in expressions (`m1`, `e1`).
    pub id: String,
    /// An expression over other ids, e.g. `m1 / m2` (give this or a metric).
    pub expression: Option<String>,
    /// A metric: namespace.
    pub namespace: Option<String>,
    /// A metric: name.
    pub metric_name: Option<String>,
    /// A metric: dimensions.
    #[serde(default)]
    pub dimensions: Vec<MetricDimension>,
    /// A metric: statistic.
    pub statistic: Option<String>,
    /// A metric: unit.
    pub unit: Option<String>,
    /// Label, optional.
    pub label: Option<String>,
    /// Whether this query is the policy's metric (exactly one is).
    #[serde(default)]
    pub return_data: bool,
}

/// A CloudWatch dimension.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricDimension {
    /// Dimension name.
    pub name: String,
    /// Dimension value.
    pub value: String,
}

/// A step-scaling policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepScaling {
    /// Policy name, unique per target.
    pub name: String,
    /// `ChangeInCapacity`, `ExactCapacity` or `PercentChangeInCapacity`.
    pub adjustment_type: String,
    /// Steps relative to the alarm threshold; they must neither overlap nor
    /// leave gaps.
    pub steps: Vec<Step>,
    /// Seconds after an adjustment before another.
    pub cooldown_s: Option<i32>,
    /// `Average`, `Minimum` or `Maximum`.
    pub metric_aggregation_type: Option<String>,
    /// With `PercentChangeInCapacity`: the smallest change.
    pub min_adjustment_magnitude: Option<i32>,
}

/// One step: when the metric minus the threshold lies in `[lower, upper)`,
/// change capacity by `adjustment`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// Lower bound; absent means minus infinity.
    pub lower_bound: Option<f64>,
    /// Upper bound; absent means plus infinity.
    pub upper_bound: Option<f64>,
    /// Capacity change.
    pub adjustment: i32,
}

/// A scheduled action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scheduled {
    /// Action name, unique per target.
    pub name: String,
    /// `at(yyyy-mm-ddThh:mm:ss)`, `rate(N unit)` or `cron(m h dom mon dow y)`.
    pub schedule: String,
    /// IANA time zone of the schedule, e.g. `Europe/Berlin`; UTC when absent.
    pub timezone: Option<String>,
    /// RFC 3339 start, optional.
    pub start_time: Option<String>,
    /// RFC 3339 end, optional.
    pub end_time: Option<String>,
    /// New minimum capacity.
    pub min_capacity: Option<i32>,
    /// New maximum capacity.
    pub max_capacity: Option<i32>,
}

/// A scale-to-zero recipe: a CloudWatch alarm whose action is a step-scaling
/// policy that adds capacity when requests arrive and there is none. For an
/// inference component (`scale_to_zero`) the alarm watches
/// `NoCapacityInvocationFailures`; for an asynchronous endpoint variant
/// (`async_scale_to_zero`), `HasBacklogWithoutCapacity`. Every alarm field
/// has AWS's recipe as its default and is compared for drift.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScaleToZero {
    /// The step-scaling policy (declared on this target) the alarm triggers.
    pub step_policy: String,
    /// Alarm name; default `inferlb-<component or endpoint>-no-capacity`.
    pub alarm_name: Option<String>,
    /// Alarm period in seconds; default 60.
    pub period_s: Option<i32>,
    /// Periods evaluated; default 1 (async: 2).
    pub evaluation_periods: Option<i32>,
    /// Breaching datapoints that raise the alarm; default 1 (async: 2).
    pub datapoints_to_alarm: Option<i32>,
    /// `Sum` (default) or `Average` (async default), `Maximum`, `Minimum`,
    /// `SampleCount`.
    pub statistic: Option<String>,
    /// Default 1.
    pub threshold: Option<f64>,
    /// Default `GreaterThanOrEqualToThreshold`.
    pub comparison_operator: Option<String>,
    /// `missing` (default), `notBreaching`, `breaching` or `ignore`.
    pub treat_missing_data: Option<String>,
    /// Default true.
    pub actions_enabled: Option<bool>,
}

/// A scale-to-zero alarm with every default filled in.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlarmSpec {
    pub name: String,
    pub metric_name: &'static str,
    pub dimension_name: &'static str,
    pub dimension_value: String,
    pub period_s: i32,
    pub evaluation_periods: i32,
    pub datapoints_to_alarm: i32,
    pub statistic: String,
    pub threshold: f64,
    pub comparison_operator: String,
    pub treat_missing_data: String,
    pub actions_enabled: bool,
    /// The step policy it triggers.
    pub step_policy: String,
}

/// The metric the inference-component recipe watches.
pub const NO_CAPACITY_METRIC: &str = "NoCapacityInvocationFailures";
/// The metric the asynchronous-endpoint recipe watches.
pub const BACKLOG_METRIC: &str = "HasBacklogWithoutCapacity";
/// Every alarm inferlb creates starts with this, so its IAM policy can be
/// limited to them and `--prune` can find them.
pub const ALARM_PREFIX: &str = "inferlb-";
/// The tag inferlb puts on every scalable target it registers.
pub const MANAGED_TAG: (&str, &str) = ("inferlb:managed", "true");

/// Why the file cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// Reading failed.
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// Not valid TOML for this format.
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
}

impl AutoscalingFile {
    /// Parses TOML text.
    pub fn from_toml(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Reads and parses a file.
    pub fn load(path: &Path) -> Result<Self, FileError> {
        let text = std::fs::read_to_string(path).map_err(|source| FileError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml(&text).map_err(|message| FileError::Parse {
            path: path.display().to_string(),
            message,
        })
    }
}

/// What a resource id names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResourceKind {
    /// `endpoint/<ep>/variant/<v>`.
    Variant,
    /// `inference-component/<ic>`.
    InferenceComponent,
}

/// The dimension of endpoint variants.
pub const VARIANT_DIMENSION: &str = "sagemaker:variant:DesiredInstanceCount";
/// The dimension of inference components.
pub const COMPONENT_DIMENSION: &str = "sagemaker:inference-component:DesiredCopyCount";
/// The dimension of serverless endpoint variants' provisioned concurrency.
pub const PROVISIONED_CONCURRENCY_DIMENSION: &str =
    "sagemaker:variant:DesiredProvisionedConcurrency";

impl ResourceKind {
    /// The scalable dimension of this kind of resource.
    pub fn dimension(self) -> &'static str {
        match self {
            Self::Variant => VARIANT_DIMENSION,
            Self::InferenceComponent => COMPONENT_DIMENSION,
        }
    }
}

impl Target {
    /// The dimension, declared or inferred; `None` for an invalid resource id.
    pub fn dimension(&self) -> Option<String> {
        self.scalable_dimension
            .clone()
            .or_else(|| resource_kind(&self.resource_id).map(|k| k.dimension().to_owned()))
    }

    /// The inference component's name, for `inference-component/<name>`.
    pub fn component_name(&self) -> Option<&str> {
        self.resource_id.strip_prefix("inference-component/")
    }

    /// The endpoint's name, for `endpoint/<name>/variant/<variant>`.
    pub fn endpoint_name(&self) -> Option<&str> {
        self.resource_id
            .strip_prefix("endpoint/")
            .and_then(|rest| rest.split('/').next())
    }

    /// The scale-to-zero alarm's name.
    pub fn alarm_name(&self) -> Option<String> {
        self.alarm().map(|a| a.name)
    }

    /// The scale-to-zero alarm, either recipe, with AWS's defaults filled in
    /// (see "Scale an endpoint to zero instances" and "Autoscale an
    /// asynchronous endpoint" in the SageMaker developer guide).
    pub fn alarm(&self) -> Option<AlarmSpec> {
        let (recipe, metric, dimension, value, default_periods, default_statistic) =
            match (&self.scale_to_zero, &self.async_scale_to_zero) {
                (Some(r), _) => (
                    r,
                    NO_CAPACITY_METRIC,
                    "InferenceComponentName",
                    self.component_name().unwrap_or("component"),
                    1,
                    "Sum",
                ),
                (None, Some(r)) => (
                    r,
                    BACKLOG_METRIC,
                    "EndpointName",
                    self.endpoint_name().unwrap_or("endpoint"),
                    2,
                    "Average",
                ),
                (None, None) => return None,
            };
        Some(AlarmSpec {
            name: recipe
                .alarm_name
                .clone()
                .unwrap_or_else(|| format!("{ALARM_PREFIX}{value}-no-capacity")),
            metric_name: metric,
            dimension_name: dimension,
            dimension_value: value.to_owned(),
            period_s: recipe.period_s.unwrap_or(60),
            evaluation_periods: recipe.evaluation_periods.unwrap_or(default_periods),
            datapoints_to_alarm: recipe.datapoints_to_alarm.unwrap_or(default_periods),
            statistic: recipe
                .statistic
                .clone()
                .unwrap_or_else(|| default_statistic.to_owned()),
            threshold: recipe.threshold.unwrap_or(1.0),
            // The SageMaker page's command says GreaterThanThreshold with a
            // threshold of 1, which needs two failed requests in a minute to
            // wake a component: a deliberate deviation (README).
            comparison_operator: recipe
                .comparison_operator
                .clone()
                .unwrap_or_else(|| "GreaterThanOrEqualToThreshold".to_owned()),
            treat_missing_data: recipe
                .treat_missing_data
                .clone()
                .unwrap_or_else(|| "missing".to_owned()),
            actions_enabled: recipe.actions_enabled.unwrap_or(true),
            step_policy: recipe.step_policy.clone(),
        })
    }

    /// The tags a registered target should carry: the file's and the mark.
    pub fn desired_tags(&self) -> std::collections::BTreeMap<String, String> {
        let mut tags = self.tags.clone();
        tags.insert(MANAGED_TAG.0.to_owned(), MANAGED_TAG.1.to_owned());
        tags
    }

    /// Whether min/max are compared for drift: not when the schedule owns
    /// them (scheduled actions declared, no `capacity = "enforce"`), nor
    /// with `capacity = "ignore_changes"`.
    pub fn capacity_owned_by_file(&self) -> bool {
        match self.capacity {
            Some(CapacityMode::Enforce) => true,
            Some(CapacityMode::IgnoreChanges) => false,
            None => self.scheduled.is_empty(),
        }
    }
}

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
