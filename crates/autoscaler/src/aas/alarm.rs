//! The CloudWatch alarms the model keeps: target tracking's pair per policy
//! (with their datapoints and ratio) and a step policy's own alarm, each a
//! view of a metric one datapoint per period.

use std::collections::VecDeque;

use serde::Serialize;

use crate::model::TargetTracking;

/// The two alarms AAS creates for a target-tracking policy.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct TrackingAlarms {
    /// Consecutive datapoints above target before a scale-out.
    pub scale_out_datapoints: usize,
    /// The scale-out alarm's period.
    pub scale_out_period_s: i64,
    /// Consecutive datapoints below `scale_in_ratio` × target before a
    /// scale-in.
    pub scale_in_datapoints: usize,
    /// The scale-in alarm's period.
    pub scale_in_period_s: i64,
    /// The scale-in alarm's threshold as a share of the target.
    pub scale_in_ratio: f64,
}

impl Default for TrackingAlarms {
    /// A one-minute metric: 3 datapoints to scale out, 15 to scale in.
    fn default() -> Self {
        Self {
            scale_out_datapoints: 3,
            scale_out_period_s: 60,
            scale_in_datapoints: 15,
            scale_in_period_s: 60,
            scale_in_ratio: 0.9,
        }
    }
}

impl TrackingAlarms {
    /// The alarms for a policy on `metric` (a predefined metric type, or
    /// `None` for a customized one). SageMaker's `...HighResolution`
    /// metrics are emitted every 10 seconds; a policy on them scales out
    /// faster but scales in at the speed of standard metrics ("Define a
    /// scaling policy", SageMaker developer guide). The 10-second scale-out
    /// alarm keeps the standard datapoint count: AWS does not document it,
    /// so it is a setting (`--scale-out-datapoints`).
    pub fn for_metric(metric: Option<&str>) -> Self {
        let standard = Self::default();
        match metric {
            Some(name) if name.ends_with("HighResolution") => Self {
                scale_out_period_s: 10,
                ..standard
            },
            _ => standard,
        }
    }
}

/// Changes to the alarms' defaults (what `simulate`'s flags set).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct AlarmOverrides {
    pub scale_out_datapoints: Option<usize>,
    pub scale_out_period_s: Option<i64>,
    pub scale_in_datapoints: Option<usize>,
    pub scale_in_period_s: Option<i64>,
    pub scale_in_ratio: Option<f64>,
}

impl AlarmOverrides {
    /// `alarms` with these changes.
    pub fn apply(&self, alarms: TrackingAlarms) -> TrackingAlarms {
        TrackingAlarms {
            scale_out_datapoints: self
                .scale_out_datapoints
                .unwrap_or(alarms.scale_out_datapoints)
                .max(1),
            scale_out_period_s: self
                .scale_out_period_s
                .unwrap_or(alarms.scale_out_period_s)
                .max(1),
            scale_in_datapoints: self
                .scale_in_datapoints
                .unwrap_or(alarms.scale_in_datapoints)
                .max(1),
            scale_in_period_s: self
                .scale_in_period_s
                .unwrap_or(alarms.scale_in_period_s)
                .max(1),
            scale_in_ratio: self.scale_in_ratio.unwrap_or(alarms.scale_in_ratio),
        }
    }
}

/// One CloudWatch alarm's view of a metric: the values of the period under
/// way, and the datapoints of the periods before it, newest last.
#[derive(Debug, Clone)]
pub(super) struct Alarm {
    pub(super) period_s: i64,
    pub(super) keep: usize,
    pub(super) current: Vec<f64>,
    pub(super) points: VecDeque<f64>,
}

impl Alarm {
    pub(super) fn new(period_s: i64, keep: usize) -> Self {
        Self {
            period_s: period_s.max(1),
            keep: keep.max(1),
            current: Vec::new(),
            points: VecDeque::new(),
        }
    }

    /// Adds the value of the tick `[now, now + tick_s)`; when the tick ends
    /// a period, the period's datapoint (its `statistic` over the values it
    /// has, NaN when none) is added and `true` returned.
    pub(super) fn observe(
        &mut self,
        now: i64,
        tick_s: i64,
        value: f64,
        statistic_name: &str,
    ) -> bool {
        if value.is_finite() {
            self.current.push(value);
        }
        if (now + tick_s).div_euclid(self.period_s) == now.div_euclid(self.period_s) {
            return false;
        }
        let point = if self.current.is_empty() {
            f64::NAN
        } else {
            statistic(statistic_name, &self.current)
        };
        self.current.clear();
        self.points.push_back(point);
        while self.points.len() > self.keep {
            self.points.pop_front();
        }
        true
    }

    /// Whether the last `n` datapoints all satisfy `breach`.
    pub(super) fn last_all(&self, n: usize, breach: impl Fn(f64) -> bool) -> bool {
        n > 0 && self.points.len() >= n && self.points.iter().rev().take(n).all(|&v| breach(v))
    }

    /// How many of the kept datapoints breach, a missing one (NaN) counted
    /// as `treat_missing_data` says: `breaching`, `notBreaching`, or (for
    /// `ignore` and `missing`) left out; `None` when only missing ones are
    /// left (CloudWatch's INSUFFICIENT_DATA, or the state kept).
    pub(super) fn breaching(
        &self,
        operator: &str,
        threshold: f64,
        treat_missing: &str,
    ) -> Option<usize> {
        let mut present = 0;
        let mut count = 0;
        for &v in &self.points {
            if v.is_nan() {
                match treat_missing {
                    "breaching" => count += 1,
                    "notBreaching" => {}
                    _ => continue,
                }
                present += 1;
                continue;
            }
            present += 1;
            count += usize::from(compare(operator, v, threshold));
        }
        (present > 0).then_some(count)
    }

    /// The kept datapoints aggregated (`Average`, `Minimum` or `Maximum`),
    /// missing ones left out; `None` when all are missing.
    pub(super) fn aggregate(&self, aggregation: &str) -> Option<f64> {
        let values: Vec<f64> = self
            .points
            .iter()
            .copied()
            .filter(|v| !v.is_nan())
            .collect();
        (!values.is_empty()).then(|| statistic(aggregation, &values))
    }

    /// The newest datapoint (NaN before the first).
    pub(super) fn latest(&self) -> f64 {
        self.points.back().copied().unwrap_or(f64::NAN)
    }
}

/// A target-tracking policy's two alarms.
#[derive(Debug, Clone)]
pub(super) struct Tracked {
    pub(super) policy: TargetTracking,
    pub(super) alarms: TrackingAlarms,
    pub(super) high: Alarm,
    pub(super) low: Alarm,
}

impl Tracked {
    pub(super) fn new(policy: TargetTracking, alarms: TrackingAlarms) -> Self {
        Self {
            high: Alarm::new(alarms.scale_out_period_s, alarms.scale_out_datapoints),
            low: Alarm::new(alarms.scale_in_period_s, alarms.scale_in_datapoints),
            policy,
            alarms,
        }
    }
}

/// A statistic over one period's values.
pub(super) fn statistic(name: &str, values: &[f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    match name {
        "Sum" => values.iter().sum(),
        "Maximum" => values.iter().copied().fold(f64::MIN, f64::max),
        "Minimum" => values.iter().copied().fold(f64::MAX, f64::min),
        "SampleCount" => values.len() as f64,
        _ => values.iter().sum::<f64>() / values.len() as f64,
    }
}

pub(super) fn compare(operator: &str, value: f64, threshold: f64) -> bool {
    match operator {
        "GreaterThanThreshold" => value > threshold,
        "LessThanThreshold" => value < threshold,
        "LessThanOrEqualToThreshold" => value <= threshold,
        _ => value >= threshold,
    }
}
