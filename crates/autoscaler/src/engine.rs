//! A pure model of how Application Auto Scaling decides capacity: the same
//! target-tracking, step-scaling and scheduled-action rules, driven by an
//! explicit clock and the metric values it is given. No I/O.
//!
//! `inferlb autoscale simulate` replays a load trace through it; local
//! autoscaling (pools that start their own replicas) uses it too.
//!
//! One call to [`Engine::step`] is one minute: the metrics of that minute
//! come in, the decisions (with their reasons) come out. The rules, each
//! with the page it follows:
//!
//! - **Target tracking** ("How target tracking scaling for Application Auto
//!   Scaling works"): AAS keeps two alarms per policy. Scale out when the
//!   metric is above the target for `scale_out_datapoints` consecutive
//!   minutes (3); scale in when it is below `scale_in_ratio` × target (0.9)
//!   for `scale_in_datapoints` minutes (15). The new capacity is
//!   `ceil(in-service × metric / target)`, which never pushes the metric back
//!   over the target on a scale-in. `DisableScaleIn` stops scale-in. With
//!   several policies the largest capacity wins, and scale-in happens only
//!   when every policy that may scale in wants to.
//! - **Cooldowns**: during a scale-in cooldown no further scale-in, but a
//!   scale-out proceeds at once; during a scale-out cooldown only a larger
//!   scale-out than the last one happens, and no scale-in.
//! - **Step scaling** (the scale-to-zero recipes): the alarm's own period,
//!   evaluation periods, datapoints to alarm and statistic; steps relative to
//!   the threshold; `ChangeInCapacity`, `ExactCapacity`,
//!   `PercentChangeInCapacity` with `MinAdjustmentMagnitude`; the policy
//!   cooldown.
//! - **Scheduled actions** ("Scheduled scaling for Application Auto
//!   Scaling"): `at`, `rate`, `cron` in their time zone, within start and end
//!   time, set min and/or max; capacity is clamped into the new range at once.
//! - **Capacity**: always within [min, max]; the suspended states stop their
//!   kind of activity; new capacity is in service only after the
//!   provisioning delay.

use std::collections::VecDeque;
use std::str::FromStr;

use chrono::{DateTime, TimeZone, Utc};
use serde::Serialize;

use crate::model::{AlarmSpec, Scheduled, StepScaling, Suspended, Target, TargetTracking};

/// Defaults of the alarms AAS creates for a target-tracking policy.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct TrackingAlarms {
    /// Consecutive minutes above target before a scale-out.
    pub scale_out_datapoints: usize,
    /// Consecutive minutes below `scale_in_ratio` × target before a scale-in.
    pub scale_in_datapoints: usize,
    /// The scale-in alarm's threshold as a share of the target.
    pub scale_in_ratio: f64,
}

impl Default for TrackingAlarms {
    fn default() -> Self {
        Self {
            scale_out_datapoints: 3,
            scale_in_datapoints: 15,
            scale_in_ratio: 0.9,
        }
    }
}

/// One scaling activity, as DescribeScalingActivities would show it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Activity {
    /// Seconds since the epoch.
    pub at: i64,
    /// Capacity before and after.
    pub from: i32,
    pub to: i32,
    /// Why: the policy or action and its numbers.
    pub reason: String,
}

/// The metric values of one minute.
#[derive(Debug, Clone, Default)]
pub struct Minute {
    /// Each target-tracking policy's metric, in the file's order; NaN for a
    /// minute without a datapoint (it breaches neither alarm).
    pub tracking: Vec<f64>,
    /// The scale-to-zero alarm's metric (requests that found no capacity, or
    /// backlog without capacity), when the target has a recipe.
    pub recipe: f64,
}

/// A policy's alarm history: one value per minute, newest last.
#[derive(Debug, Clone, Default)]
struct History(VecDeque<f64>);

impl History {
    fn push(&mut self, value: f64, keep: usize) {
        self.0.push_back(value);
        while self.0.len() > keep {
            self.0.pop_front();
        }
    }

    /// Whether the last `n` values all satisfy `breach`.
    fn last_all(&self, n: usize, breach: impl Fn(f64) -> bool) -> bool {
        n > 0 && self.0.len() >= n && self.0.iter().rev().take(n).all(|&v| breach(v))
    }
}

/// The model of one scalable target.
#[derive(Debug, Clone)]
pub struct Engine {
    tracking: Vec<TargetTracking>,
    step: Option<(StepScaling, AlarmSpec)>,
    scheduled: Vec<Scheduled>,
    suspended: Suspended,
    alarms: TrackingAlarms,
    min: i32,
    max: i32,
    desired: i32,
    /// Capacity becoming ready: `(ready at, units)`.
    provisioning: VecDeque<(i64, i32)>,
    in_service: i32,
    provision_delay_s: i64,
    histories: Vec<History>,
    recipe_history: History,
    /// End of the scale-out cooldown, and the capacity that scale-out set.
    scale_out_until: i64,
    last_scale_out_to: i32,
    scale_in_until: i64,
    step_until: i64,
    /// The minute the last scheduled check covered (exclusive end).
    checked_until: Option<i64>,
}

/// Parses an RFC 3339 time to seconds since the epoch.
fn epoch(text: &str) -> Option<i64> {
    crate::plan::epoch_seconds(text)
}

impl Engine {
    /// A target at `start_capacity` (clamped), all in service.
    pub fn new(target: &Target, start_capacity: i32, provision_delay_s: i64) -> Self {
        let step = target.alarm().and_then(|spec| {
            target
                .step_scaling
                .iter()
                .find(|s| s.name == spec.step_policy)
                .cloned()
                .map(|s| (s, spec))
        });
        let desired = start_capacity.clamp(target.min_capacity, target.max_capacity);
        Self {
            tracking: target.target_tracking.clone(),
            step,
            scheduled: target.scheduled.clone(),
            suspended: target.suspended.unwrap_or_default(),
            alarms: TrackingAlarms::default(),
            min: target.min_capacity,
            max: target.max_capacity,
            desired,
            provisioning: VecDeque::new(),
            in_service: desired,
            provision_delay_s,
            histories: vec![History::default(); target.target_tracking.len()],
            recipe_history: History::default(),
            scale_out_until: i64::MIN,
            last_scale_out_to: 0,
            scale_in_until: i64::MIN,
            step_until: i64::MIN,
            checked_until: None,
        }
    }

    /// Other alarm settings than AAS's defaults.
    pub fn with_alarms(mut self, alarms: TrackingAlarms) -> Self {
        self.alarms = alarms;
        self
    }

    /// The capacity AAS has set.
    pub fn desired(&self) -> i32 {
        self.desired
    }

    /// Capacity serving requests now.
    pub fn in_service(&self) -> i32 {
        self.in_service
    }

    /// The current min and max.
    pub fn bounds(&self) -> (i32, i32) {
        (self.min, self.max)
    }

    /// Sets the desired capacity, clamped; new units start provisioning,
    /// removed ones leave service at once.
    fn set(&mut self, now: i64, to: i32, reason: String, out: &mut Vec<Activity>) {
        let to = to.clamp(self.min, self.max);
        if to == self.desired {
            return;
        }
        let from = self.desired;
        if to > from {
            self.provisioning
                .push_back((now + self.provision_delay_s, to - from));
        } else {
            // Units still provisioning go first, then in-service ones.
            let mut remove = from - to;
            while remove > 0 {
                match self.provisioning.pop_back() {
                    Some((at, n)) if n > remove => {
                        self.provisioning.push_back((at, n - remove));
                        remove = 0;
                    }
                    Some((_, n)) => remove -= n,
                    None => {
                        self.in_service -= remove;
                        remove = 0;
                    }
                }
            }
        }
        self.desired = to;
        out.push(Activity {
            at: now,
            from,
            to,
            reason,
        });
    }

    /// Moves capacity whose provisioning is done into service.
    fn provision(&mut self, now: i64) {
        while let Some(&(at, n)) = self.provisioning.front() {
            if at > now {
                break;
            }
            self.in_service += n;
            self.provisioning.pop_front();
        }
    }

    /// One minute at `now` (seconds since the epoch): scheduled actions,
    /// then the step alarm, then target tracking.
    pub fn step(&mut self, now: i64, minute: &Minute) -> Vec<Activity> {
        let mut out = Vec::new();
        self.provision(now);
        self.scheduled_actions(now, &mut out);
        self.step_scaling(now, minute, &mut out);
        self.target_tracking(now, minute, &mut out);
        self.provision(now);
        out
    }

    fn scheduled_actions(&mut self, now: i64, out: &mut Vec<Activity>) {
        let from = self.checked_until.unwrap_or(now - 60);
        self.checked_until = Some(now);
        if self.suspended.scheduled_scaling {
            return;
        }
        for action in self.scheduled.clone() {
            if !fires(&action, from, now) {
                continue;
            }
            if let Some(min) = action.min_capacity {
                self.min = min;
            }
            if let Some(max) = action.max_capacity {
                self.max = max;
            }
            if self.min > self.max {
                self.max = self.min;
            }
            let clamped = self.desired.clamp(self.min, self.max);
            let reason = format!(
                "scheduled action {:?} set min/max to {}..={}",
                action.name, self.min, self.max
            );
            if clamped != self.desired {
                self.set(now, clamped, reason, out);
            } else {
                out.push(Activity {
                    at: now,
                    from: self.desired,
                    to: self.desired,
                    reason,
                });
            }
        }
    }

    fn step_scaling(&mut self, now: i64, minute: &Minute, out: &mut Vec<Activity>) {
        let Some((policy, alarm)) = self.step.clone() else {
            return;
        };
        let period_min = (alarm.period_s / 60).max(1) as usize;
        let keep = period_min * alarm.evaluation_periods.max(1) as usize;
        self.recipe_history.push(minute.recipe, keep);
        // The alarm's datapoints: one per period, by its statistic.
        let values: Vec<f64> = self.recipe_history.0.iter().copied().collect();
        let points: Vec<f64> = values
            .rchunks(period_min)
            .take(alarm.evaluation_periods.max(1) as usize)
            .map(|chunk| statistic(&alarm.statistic, chunk))
            .collect();
        let breaching = points
            .iter()
            .filter(|&&v| compare(&alarm.comparison_operator, v, alarm.threshold))
            .count();
        if (breaching as i32) < alarm.datapoints_to_alarm || now < self.step_until {
            return;
        }
        let value = points.first().copied().unwrap_or(0.0);
        let delta = value - alarm.threshold;
        let Some(step) = policy.steps.iter().find(|s| {
            s.lower_bound.is_none_or(|l| delta >= l) && s.upper_bound.is_none_or(|u| delta < u)
        }) else {
            return;
        };
        let target = match policy.adjustment_type.as_str() {
            "ExactCapacity" => step.adjustment,
            "PercentChangeInCapacity" => {
                let change = (f64::from(self.desired) * f64::from(step.adjustment) / 100.0) as i32;
                let magnitude = policy.min_adjustment_magnitude.unwrap_or(0);
                let change = if change.abs() < magnitude {
                    magnitude * step.adjustment.signum()
                } else {
                    change
                };
                self.desired + change
            }
            _ => self.desired + step.adjustment,
        };
        let scale_out = target > self.desired;
        if (scale_out && self.suspended.dynamic_scaling_out)
            || (!scale_out && self.suspended.dynamic_scaling_in)
        {
            return;
        }
        let reason = format!(
            "alarm {:?} ({} {} {}) triggered step policy {:?}",
            alarm.name, alarm.metric_name, value, alarm.threshold, policy.name
        );
        let before = self.desired;
        self.set(now, target, reason, out);
        if self.desired != before {
            self.step_until = now + i64::from(policy.cooldown_s.unwrap_or(300));
        }
    }

    fn target_tracking(&mut self, now: i64, minute: &Minute, out: &mut Vec<Activity>) {
        if self.tracking.is_empty() {
            return;
        }
        let keep = self
            .alarms
            .scale_in_datapoints
            .max(self.alarms.scale_out_datapoints);
        let capacity = f64::from(self.in_service.max(1));
        let mut out_wanted: Option<(i32, String)> = None;
        let mut in_proposals: Vec<(i32, String)> = Vec::new();
        let mut all_in = true;
        for (i, policy) in self.tracking.clone().iter().enumerate() {
            let value = minute.tracking.get(i).copied().unwrap_or(0.0);
            self.histories[i].push(value, keep);
            let target = policy.target_value;
            let proposed = (capacity * value / target).ceil() as i32;
            let high = self.histories[i].last_all(self.alarms.scale_out_datapoints, |v| v > target);
            let low_threshold = target * self.alarms.scale_in_ratio;
            let low =
                self.histories[i].last_all(self.alarms.scale_in_datapoints, |v| v < low_threshold);
            if high && proposed > self.desired {
                let reason = format!(
                    "policy {:?}: metric {value:.2} above target {target} for {} minutes",
                    policy.name, self.alarms.scale_out_datapoints
                );
                if out_wanted.as_ref().is_none_or(|(c, _)| proposed > *c) {
                    out_wanted = Some((proposed, reason));
                }
            }
            if policy.disable_scale_in {
                continue;
            }
            if low && proposed < self.desired {
                in_proposals.push((
                    proposed,
                    format!(
                        "policy {:?}: metric {value:.2} below {low_threshold:.2} for {} minutes",
                        policy.name, self.alarms.scale_in_datapoints
                    ),
                ));
            } else {
                all_in = false;
            }
        }
        if let Some((to, reason)) = out_wanted {
            if self.suspended.dynamic_scaling_out {
                return;
            }
            // During a scale-out cooldown only a larger scale-out happens.
            if now < self.scale_out_until && to <= self.last_scale_out_to {
                return;
            }
            let before = self.desired;
            self.set(now, to, reason, out);
            if self.desired > before {
                self.last_scale_out_to = self.desired;
                self.scale_out_until = now + i64::from(self.cooldown_out());
                // A scale-out ends any scale-in cooldown.
                self.scale_in_until = i64::MIN;
            }
            return;
        }
        if all_in && !in_proposals.is_empty() {
            if self.suspended.dynamic_scaling_in
                || now < self.scale_in_until
                || now < self.scale_out_until
            {
                return;
            }
            // The largest capacity wins, for scale-in too.
            let (to, reason) = in_proposals
                .into_iter()
                .max_by_key(|(c, _)| *c)
                .unwrap_or((self.desired, String::new()));
            let before = self.desired;
            self.set(now, to, reason, out);
            if self.desired < before {
                self.scale_in_until = now + i64::from(self.cooldown_in());
            }
        }
    }

    fn cooldown_out(&self) -> i32 {
        self.tracking
            .iter()
            .filter_map(|p| p.scale_out_cooldown_s)
            .max()
            .unwrap_or(crate::plan::DEFAULT_COOLDOWN_S)
    }

    fn cooldown_in(&self) -> i32 {
        self.tracking
            .iter()
            .filter_map(|p| p.scale_in_cooldown_s)
            .max()
            .unwrap_or(crate::plan::DEFAULT_COOLDOWN_S)
    }
}

/// A statistic over one period's minutes.
fn statistic(name: &str, values: &[f64]) -> f64 {
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

fn compare(operator: &str, value: f64, threshold: f64) -> bool {
    match operator {
        "GreaterThanThreshold" => value > threshold,
        "LessThanThreshold" => value < threshold,
        "LessThanOrEqualToThreshold" => value <= threshold,
        _ => value >= threshold,
    }
}

/// Whether a scheduled action fires in `(from, to]` (seconds since the
/// epoch), in its time zone and within its start and end time.
pub fn fires(action: &Scheduled, from: i64, to: i64) -> bool {
    let start = action.start_time.as_deref().and_then(epoch);
    let end = action.end_time.as_deref().and_then(epoch);
    let zone: chrono_tz::Tz = action
        .timezone
        .as_deref()
        .and_then(|z| z.parse().ok())
        .unwrap_or(chrono_tz::UTC);
    let inner = |prefix: &str| {
        action
            .schedule
            .strip_prefix(prefix)
            .and_then(|s| s.strip_suffix(')'))
    };
    let in_window = |t: i64| start.is_none_or(|s| t >= s) && end.is_none_or(|e| t <= e);
    if let Some(at) = inner("at(") {
        let Ok(local) = chrono::NaiveDateTime::parse_from_str(at, "%Y-%m-%dT%H:%M:%S") else {
            return false;
        };
        let Some(t) = zone.from_local_datetime(&local).earliest() else {
            return false;
        };
        let t = t.timestamp();
        return t > from && t <= to && in_window(t);
    }
    if let Some(rate) = inner("rate(") {
        let mut parts = rate.split_whitespace();
        let (Some(n), Some(unit)) = (parts.next(), parts.next()) else {
            return false;
        };
        let Ok(n) = n.parse::<i64>() else {
            return false;
        };
        let every = n * match unit.trim_end_matches('s') {
            "minute" => 60,
            "hour" => 3600,
            "day" => 86_400,
            _ => return false,
        };
        // From the start time, or the epoch when there is none.
        let origin = start.unwrap_or(0);
        if every <= 0 || to < origin {
            return false;
        }
        let k = (to - origin) / every;
        let t = origin + k * every;
        return t > from && in_window(t);
    }
    if let Some(cron) = inner("cron(") {
        // AAS's six fields (minutes hours day-of-month month day-of-week
        // year) with a seconds field in front, as the cron crate reads them.
        let Ok(schedule) = cron::Schedule::from_str(&format!("0 {cron}")) else {
            return false;
        };
        let Some(after) = DateTime::<Utc>::from_timestamp(from, 0) else {
            return false;
        };
        let after = after.with_timezone(&zone);
        return schedule
            .after(&after)
            .next()
            .map(|t| t.timestamp())
            .is_some_and(|t| t <= to && in_window(t));
    }
    false
}

#[cfg(test)]
mod tests;
