//! A pure model of how Application Auto Scaling decides capacity: the same
//! target-tracking, step-scaling and scheduled-action rules, driven by an
//! explicit clock and the metric values it is given. No I/O.
//!
//! `inferlb autoscale simulate` replays a load trace through it; local
//! autoscaling (pools that start their own replicas) uses it too.
//!
//! One call to [`Engine::step`] is one tick (a minute unless
//! [`Engine::with_tick`] says otherwise): the metrics of that tick come in,
//! the decisions (with their reasons) come out. Alarms see one datapoint
//! per period, aligned to the clock, and act when a datapoint completes.
//! The rules, each with the page it follows:
//!
//! - **Target tracking** ("How target tracking scaling for Application Auto
//!   Scaling works"): AAS keeps two alarms per policy. Scale out when the
//!   metric is above the target for `scale_out_datapoints` consecutive
//!   datapoints (3 of one minute); scale in when it is below
//!   `scale_in_ratio` × target (0.9) for `scale_in_datapoints` (15 of one
//!   minute). SageMaker's high-resolution metrics (`...HighResolution`) are
//!   emitted every 10 seconds and scale out on 10-second datapoints, but
//!   scale in "at the same speed as standard metrics" ("Define a scaling
//!   policy", SageMaker developer guide): see [`TrackingAlarms::for_metric`].
//!   The new capacity is
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

use serde::Serialize;

use crate::model::{AlarmSpec, Scheduled, StepScaling, Suspended, Target};

mod alarm;
mod schedule;

use alarm::{Alarm, Tracked};
pub use alarm::{AlarmOverrides, TrackingAlarms};
pub use schedule::{bounds_at, fires, last_firing, model_problem};

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

/// The metric values of one tick.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    /// Each target-tracking policy's metric, in the file's order; NaN for a
    /// tick without a value (it breaches neither alarm).
    pub tracking: Vec<f64>,
    /// The scale-to-zero alarm's metric (requests that found no capacity, or
    /// backlog without capacity), when the target has a recipe.
    pub recipe: f64,
}

/// The model of one scalable target.
#[derive(Debug, Clone)]
pub struct Engine {
    tracking: Vec<Tracked>,
    step: Option<(StepScaling, AlarmSpec, Alarm)>,
    scheduled: Vec<Scheduled>,
    suspended: Suspended,
    tick_s: i64,
    min: i32,
    max: i32,
    desired: i32,
    /// Capacity becoming ready: `(ready at, units)`.
    provisioning: VecDeque<(i64, i32)>,
    in_service: i32,
    provision_delay_s: i64,
    /// End of the scale-out cooldown, and the capacity that scale-out set.
    scale_out_until: i64,
    last_scale_out_to: i32,
    scale_in_until: i64,
    /// The step policy's scale-out cooldown: its end, and the capacity the
    /// scale-out that began it adjusted (a larger step inside the cooldown
    /// adjusts the same capacity, so it adds only the difference).
    step_out_until: i64,
    step_out_base: i32,
    /// The step policy's scale-in cooldown.
    step_in_until: i64,
    assumptions: Assumptions,
    /// The time the last scheduled check covered (exclusive end).
    checked_until: Option<i64>,
}

impl Engine {
    /// A target at `start_capacity` (clamped), all in service, stepped once
    /// a minute, each policy with [`TrackingAlarms::for_metric`].
    pub fn new(target: &Target, start_capacity: i32, provision_delay_s: i64) -> Self {
        let step = target.alarm().and_then(|spec| {
            target
                .step_scaling
                .iter()
                .find(|s| s.name == spec.step_policy)
                .cloned()
                .map(|s| {
                    let alarm = Alarm::new(
                        i64::from(spec.period_s),
                        spec.evaluation_periods.max(1) as usize,
                    );
                    (s, spec, alarm)
                })
        });
        let desired = start_capacity.clamp(target.min_capacity, target.max_capacity);
        Self {
            tracking: target
                .target_tracking
                .iter()
                .map(|p| {
                    Tracked::new(
                        p.clone(),
                        TrackingAlarms::for_metric(p.predefined_metric.as_deref()),
                    )
                })
                .collect(),
            step,
            scheduled: target.scheduled.clone(),
            suspended: target.suspended.unwrap_or_default(),
            tick_s: 60,
            min: target.min_capacity,
            max: target.max_capacity,
            desired,
            provisioning: VecDeque::new(),
            in_service: desired,
            provision_delay_s,
            scale_out_until: i64::MIN,
            last_scale_out_to: 0,
            scale_in_until: i64::MIN,
            step_out_until: i64::MIN,
            step_out_base: 0,
            step_in_until: i64::MIN,
            assumptions: Assumptions::default(),
            checked_until: None,
        }
    }

    /// Other alarm settings than the defaults, for every policy.
    pub fn with_alarms(mut self, overrides: AlarmOverrides) -> Self {
        for tracked in &mut self.tracking {
            *tracked = Tracked::new(tracked.policy.clone(), overrides.apply(tracked.alarms));
        }
        self
    }

    /// Other modelling assumptions than the defaults (see [`Assumptions`]).
    pub fn with_assumptions(mut self, assumptions: Assumptions) -> Self {
        self.assumptions = assumptions;
        self
    }

    /// Steps of `tick_s` seconds instead of a minute. Alarm periods should
    /// be multiples of it; a period shorter than the tick sees one value.
    pub fn with_tick(mut self, tick_s: i64) -> Self {
        self.tick_s = tick_s.max(1);
        self
    }

    /// Each target-tracking policy's name and alarms.
    pub fn tracking_alarms(&self) -> Vec<(String, TrackingAlarms)> {
        self.tracking
            .iter()
            .map(|t| (t.policy.name.clone(), t.alarms))
            .collect()
    }

    /// The shortest alarm period of the target's policies: the tick a
    /// replay needs to see every datapoint.
    pub fn finest_period_s(&self) -> i64 {
        self.tracking
            .iter()
            .flat_map(|t| [t.alarms.scale_out_period_s, t.alarms.scale_in_period_s])
            .chain(self.step.iter().map(|(_, _, alarm)| alarm.period_s))
            .min()
            .unwrap_or(60)
    }

    /// Sets the capacity now, outside any policy (an operator's change):
    /// clamped, provisioned like a scale-out, or removed at once.
    pub fn set_desired(&mut self, now: i64, to: i32, reason: String) -> Vec<Activity> {
        let mut out = Vec::new();
        self.set(now, to, reason, &mut out);
        out
    }

    /// Changes min and max (clamping the capacity into them at once).
    pub fn set_bounds(&mut self, now: i64, min: i32, max: i32, reason: String) -> Vec<Activity> {
        self.min = min;
        self.max = max.max(min);
        let clamped = self.desired.clamp(self.min, self.max);
        self.set_desired(now, clamped, reason)
    }

    /// Changes every target-tracking policy's target value.
    pub fn set_target_value(&mut self, value: f64) {
        for tracked in &mut self.tracking {
            tracked.policy.target_value = value;
        }
    }

    /// The capacity actually serving, as something outside the model (the
    /// local scaler, which starts real replicas) observed it: replaces the
    /// model's provisioning.
    pub fn set_in_service(&mut self, in_service: i32) {
        self.provisioning.clear();
        self.in_service = in_service.max(0);
    }

    /// Suspends or resumes dynamic scaling in both directions.
    pub fn set_suspended(&mut self, suspended: Suspended) {
        self.suspended = suspended;
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

    /// Capacity is provisioning and the target counts as busy meanwhile
    /// (a SageMaker endpoint is `Updating`): dynamic scaling waits.
    fn busy(&self) -> bool {
        self.assumptions.busy_while_provisioning && !self.provisioning.is_empty()
    }

    /// A scale-out happened: scale-in cooldowns end at once ("if another
    /// alarm triggers a scale-out activity during the cooldown period after
    /// a scale-in activity, Application Auto Scaling scales out the target
    /// immediately", StepScalingPolicyConfiguration and
    /// TargetTrackingScalingPolicyConfiguration, API reference).
    fn scaled_out(&mut self) {
        self.scale_in_until = i64::MIN;
        self.step_in_until = i64::MIN;
    }

    /// One tick starting at `now` (seconds since the epoch): scheduled
    /// actions, then the step alarm, then target tracking.
    pub fn step(&mut self, now: i64, metrics: &Metrics) -> Vec<Activity> {
        let mut out = Vec::new();
        self.provision(now);
        self.scheduled_actions(now, &mut out);
        self.step_scaling(now, metrics, &mut out);
        self.target_tracking(now, metrics, &mut out);
        self.provision(now);
        out
    }

    fn scheduled_actions(&mut self, now: i64, out: &mut Vec<Activity>) {
        let from = self.checked_until.unwrap_or(now - self.tick_s);
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

    fn step_scaling(&mut self, now: i64, metrics: &Metrics, out: &mut Vec<Activity>) {
        let tick_s = self.tick_s;
        let Some((policy, spec, alarm)) = self.step.as_mut() else {
            return;
        };
        if !alarm.observe(now, tick_s, metrics.recipe, &spec.statistic) {
            return;
        }
        let breaching = alarm.breaching(
            &spec.comparison_operator,
            spec.threshold,
            &spec.treat_missing_data,
        );
        if breaching.is_none_or(|n| (n as i32) < spec.datapoints_to_alarm) {
            return;
        }
        // The breach size: the alarm's datapoints aggregated as the policy
        // says (Average when it says nothing).
        let aggregation = policy
            .metric_aggregation_type
            .as_deref()
            .unwrap_or("Average");
        let value = alarm.aggregate(aggregation).unwrap_or(spec.threshold);
        let (policy, spec) = (policy.clone(), spec.clone());
        let Some(step) = step_for(&policy.steps, value - spec.threshold) else {
            return;
        };
        // Inside a scale-out cooldown the capacity that scale-out adjusted
        // is adjusted again, so a larger step adds only the difference;
        // otherwise the current capacity (in service, not what is still
        // provisioning).
        let in_out_cooldown = now < self.step_out_until;
        let base = if in_out_cooldown {
            self.step_out_base
        } else {
            self.in_service
        };
        let target = match policy.adjustment_type.as_str() {
            "ExactCapacity" => step.adjustment,
            "PercentChangeInCapacity" => {
                base + percent_change(
                    base,
                    step.adjustment,
                    policy.min_adjustment_magnitude.unwrap_or(0),
                )
            }
            _ => base + step.adjustment,
        };
        let scale_out = target > self.desired;
        if target == self.desired
            || (scale_out && self.suspended.dynamic_scaling_out)
            || (!scale_out && self.suspended.dynamic_scaling_in)
            || (!scale_out && now < self.step_in_until)
            || self.busy()
        {
            return;
        }
        let reason = format!(
            "alarm {:?} ({} {} {}) triggered step policy {:?}",
            spec.name, spec.metric_name, value, spec.threshold, policy.name
        );
        let before = self.desired;
        self.set(now, target, reason, out);
        let cooldown = i64::from(policy.cooldown_s.unwrap_or(crate::plan::DEFAULT_COOLDOWN_S));
        if self.desired > before {
            if !in_out_cooldown {
                self.step_out_base = base;
            }
            self.step_out_until = now + cooldown;
            self.scaled_out();
        } else if self.desired < before {
            self.step_in_until = now + cooldown;
        }
    }

    fn target_tracking(&mut self, now: i64, metrics: &Metrics, out: &mut Vec<Activity>) {
        if self.tracking.is_empty() {
            return;
        }
        let capacity = f64::from(self.in_service.max(1));
        let mut out_wanted: Option<(i32, String)> = None;
        let mut in_proposals: Vec<(i32, String)> = Vec::new();
        let mut all_in = true;
        let mut fresh_in = false;
        for (i, tracked) in self.tracking.iter_mut().enumerate() {
            let value = metrics.tracking.get(i).copied().unwrap_or(0.0);
            let fresh_out = tracked.high.observe(now, self.tick_s, value, "Average");
            fresh_in |= tracked.low.observe(now, self.tick_s, value, "Average");
            let (policy, alarms) = (&tracked.policy, tracked.alarms);
            let target = policy.target_value;
            let high = tracked
                .high
                .last_all(alarms.scale_out_datapoints, |v| v > target);
            let high_value = tracked.high.latest();
            let proposed = (capacity * high_value / target).ceil() as i32;
            if fresh_out && high && proposed > self.desired {
                let reason = format!(
                    "policy {:?}: metric {high_value:.2} above target {target} for {} datapoints of {} s",
                    policy.name, alarms.scale_out_datapoints, alarms.scale_out_period_s
                );
                if out_wanted.as_ref().is_none_or(|(c, _)| proposed > *c) {
                    out_wanted = Some((proposed, reason));
                }
            }
            if policy.disable_scale_in {
                continue;
            }
            let low_threshold = target * alarms.scale_in_ratio;
            let low = tracked
                .low
                .last_all(alarms.scale_in_datapoints, |v| v < low_threshold);
            let low_value = tracked.low.latest();
            let proposed = (capacity * low_value / target).ceil() as i32;
            if low && proposed < self.desired {
                in_proposals.push((
                    proposed,
                    format!(
                        "policy {:?}: metric {low_value:.2} below {low_threshold:.2} for {} datapoints of {} s",
                        policy.name, alarms.scale_in_datapoints, alarms.scale_in_period_s
                    ),
                ));
            } else {
                all_in = false;
            }
        }
        if let Some((to, reason)) = out_wanted {
            if self.suspended.dynamic_scaling_out || self.busy() {
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
                self.scaled_out();
            }
            return;
        }
        if fresh_in && all_in && !in_proposals.is_empty() {
            let waits_for_out = self.assumptions.scale_in_waits_for_scale_out_cooldown
                && now < self.scale_out_until;
            if self.suspended.dynamic_scaling_in
                || now < self.scale_in_until
                || waits_for_out
                || self.busy()
            {
                return;
            }
            // The largest capacity wins, for scale-in too.
            let (mut to, reason) = in_proposals
                .into_iter()
                .max_by_key(|(c, _)| *c)
                .unwrap_or((self.desired, String::new()));
            if let Some(step) = self.assumptions.scale_in_step {
                to = to.max(self.desired - step.max(1));
            }
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
            .filter_map(|t| t.policy.scale_out_cooldown_s)
            .max()
            .unwrap_or(crate::plan::DEFAULT_COOLDOWN_S)
    }

    fn cooldown_in(&self) -> i32 {
        self.tracking
            .iter()
            .filter_map(|t| t.policy.scale_in_cooldown_s)
            .max()
            .unwrap_or(crate::plan::DEFAULT_COOLDOWN_S)
    }
}

/// What the model assumes where AWS publishes no rule; `simulate` prints
/// them with its results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Assumptions {
    /// The most units one target-tracking scale-in removes. AWS says target
    /// tracking scales in "more gradually" than out and gives no formula;
    /// `None` goes straight to the proportional capacity
    /// (`ceil(in service × metric ÷ target)`), the fastest AWS could be.
    pub scale_in_step: Option<i32>,
    /// No target-tracking scale-in while a scale-out cooldown runs. No AWS
    /// page states it (the cooldown pages only hold back further
    /// scale-outs), so it is off unless asked for.
    pub scale_in_waits_for_scale_out_cooldown: bool,
    /// While new capacity provisions the target is busy and no dynamic
    /// scaling happens: a SageMaker endpoint is `Updating` then and rejects
    /// another update. On by default; local pools, whose replicas start in
    /// seconds, turn it off.
    pub busy_while_provisioning: bool,
}

impl Default for Assumptions {
    fn default() -> Self {
        Self {
            scale_in_step: None,
            scale_in_waits_for_scale_out_cooldown: false,
            busy_while_provisioning: true,
        }
    }
}

/// The step whose bounds hold `delta` (the metric minus the alarm's
/// threshold). At or above the threshold a step's lower bound is inclusive
/// and its upper bound exclusive; below it the lower bound is exclusive and
/// the upper bound inclusive (StepAdjustment, Application Auto Scaling API
/// reference: a lower bound of -10 and an upper bound of 0 hold a metric
/// "greater than 40 and less than or equal to 50" for a threshold of 50).
pub(crate) fn step_for(steps: &[crate::model::Step], delta: f64) -> Option<&crate::model::Step> {
    steps.iter().find(|s| {
        if delta >= 0.0 {
            s.lower_bound.is_none_or(|l| delta >= l) && s.upper_bound.is_none_or(|u| delta < u)
        } else {
            s.lower_bound.is_none_or(|l| delta > l) && s.upper_bound.is_none_or(|u| delta <= u)
        }
    })
}

/// A `PercentChangeInCapacity` step's change to `capacity`: a result between
/// -1 and 1 (not 0) counts as ±1, any other is rounded toward zero, and
/// `min_magnitude` is the least change (the rounding rule of "Step scaling
/// policies for Application Auto Scaling", user guide; `MinAdjustmentMagnitude`
/// in StepScalingPolicyConfiguration, API reference).
pub(crate) fn percent_change(capacity: i32, percent: i32, min_magnitude: i32) -> i32 {
    let raw = f64::from(capacity) * f64::from(percent) / 100.0;
    let change = if raw != 0.0 && raw.abs() < 1.0 {
        raw.signum() as i32
    } else {
        raw.trunc() as i32
    };
    if change.abs() < min_magnitude {
        min_magnitude * percent.signum()
    } else {
        change
    }
}

#[cfg(test)]
mod tests;
