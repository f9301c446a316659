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
    /// AWS region; `--region`, then the environment and profile, win over it.
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
    /// Suspend scaling activities; all false by default.
    #[serde(default)]
    pub suspended: Suspended,
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
    pub namespace: String,
    /// Metric name.
    pub metric_name: String,
    /// `Average`, `Minimum`, `Maximum`, `SampleCount` or `Sum`.
    pub statistic: String,
    /// Unit, optional.
    pub unit: Option<String>,
    /// Metric dimensions.
    #[serde(default)]
    pub dimensions: Vec<MetricDimension>,
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

/// The scale-to-zero recipe of an inference component: a CloudWatch alarm on
/// `NoCapacityInvocationFailures` whose action is a step-scaling policy that
/// adds a copy when a request arrives and there is none.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScaleToZero {
    /// The step-scaling policy (declared on this target) the alarm triggers.
    pub step_policy: String,
    /// Alarm name; default `<component>-no-capacity`.
    pub alarm_name: Option<String>,
    /// Alarm period in seconds; default 10 (high-resolution).
    pub period_s: Option<i32>,
    /// Periods the condition must hold; default 1.
    pub evaluation_periods: Option<i32>,
}

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
        self.scalable_dimension.clone().or_else(|| {
            crate::validate::resource_kind(&self.resource_id).map(|k| k.dimension().to_owned())
        })
    }

    /// The inference component's name, for `inference-component/<name>`.
    pub fn component_name(&self) -> Option<&str> {
        self.resource_id.strip_prefix("inference-component/")
    }

    /// The scale-to-zero alarm's name.
    pub fn alarm_name(&self) -> Option<String> {
        let recipe = self.scale_to_zero.as_ref()?;
        Some(recipe.alarm_name.clone().unwrap_or_else(|| {
            format!(
                "{}-no-capacity",
                self.component_name().unwrap_or("component")
            )
        }))
    }
}
