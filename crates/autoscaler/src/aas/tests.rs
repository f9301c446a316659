//! The engine's rules, each against the AWS page it follows.

use proptest::prelude::*;

use super::*;
use crate::model::AutoscalingFile;

fn target(text: &str) -> Target {
    AutoscalingFile::from_toml(text).unwrap().targets.remove(0)
}

const TRACKING: &str = r#"
[[targets]]
resource_id = "endpoint/ep/variant/v"
min_capacity = 1
max_capacity = 10
[[targets.target_tracking]]
name = "tt"
predefined_metric = "SageMakerVariantInvocationsPerInstance"
target_value = 100.0
scale_out_cooldown_s = 120
scale_in_cooldown_s = 600
"#;

/// Runs `minutes` minutes with the metric `load / in service` per minute;
/// returns the engine and every activity.
fn replay(engine: &mut Engine, loads: &[f64]) -> Vec<Activity> {
    let mut all = Vec::new();
    for (i, load) in loads.iter().enumerate() {
        let metric = load / f64::from(engine.in_service().max(1));
        let minute = Metrics {
            tracking: vec![metric],
            recipe: 0.0,
        };
        all.extend(engine.step(i as i64 * 60, &minute));
    }
    all
}

// "How target tracking scaling for Application Auto Scaling works": scale
// out when the metric stays above the target (3 one-minute datapoints), to
// the capacity that brings it back to the target.
#[test]
fn target_tracking_scales_out_after_three_minutes_in_proportion() {
    let mut engine = Engine::new(&target(TRACKING), 2, 0);
    let acts = replay(&mut engine, &[500.0, 500.0]);
    assert!(acts.is_empty(), "two minutes are not enough");
    let acts = replay(&mut engine, &[500.0]);
    assert_eq!(acts.len(), 1);
    // 2 instances at 250 each, target 100: ceil(2 × 250 / 100) = 5.
    assert_eq!((acts[0].from, acts[0].to), (2, 5));
}

#[test]
fn new_capacity_serves_only_after_the_provisioning_delay() {
    let mut engine = Engine::new(&target(TRACKING), 2, 300);
    replay(&mut engine, &[500.0; 3]);
    assert_eq!((engine.desired(), engine.in_service()), (5, 2));
    engine.step(
        3 * 60 + 300,
        &Metrics {
            tracking: vec![100.0],
            recipe: 0.0,
        },
    );
    assert_eq!(engine.in_service(), 5);
}

// Scale in after 15 minutes below 90% of the target, to a capacity that
// keeps the metric at or below the target.
#[test]
fn target_tracking_scales_in_after_fifteen_quiet_minutes_without_overshooting() {
    let mut engine = Engine::new(&target(TRACKING), 8, 0);
    let acts = replay(&mut engine, &[400.0; 14]);
    assert!(acts.is_empty());
    let acts = replay(&mut engine, &[400.0]);
    assert_eq!(acts.len(), 1);
    // 8 instances at 50 each: ceil(8 × 50 / 100) = 4; then 100 each.
    assert_eq!(acts[0].to, 4);
    assert!(400.0 / f64::from(acts[0].to) <= 100.0);
}

#[test]
fn disable_scale_in_keeps_the_capacity() {
    let text = TRACKING.replace(
        "scale_in_cooldown_s = 600",
        "scale_in_cooldown_s = 600\ndisable_scale_in = true",
    );
    let mut engine = Engine::new(&target(&text), 8, 0);
    assert!(replay(&mut engine, &[10.0; 40]).is_empty());
}

// Cooldowns: no scale-in during the scale-in cooldown; a scale-out during it
// goes ahead at once; during a scale-out cooldown only a larger scale-out.
#[test]
fn cooldowns_hold_with_aas_interaction_rules() {
    let mut engine = Engine::new(&target(TRACKING), 8, 0);
    replay(&mut engine, &[400.0; 15]);
    assert_eq!(engine.desired(), 4);
    // Quiet again right away: the 600 s scale-in cooldown holds.
    let mut quiet = Engine::new(&target(TRACKING), 8, 0);
    let acts = replay(&mut quiet, &[160.0; 15]);
    assert_eq!(acts.last().unwrap().to, 2);
    let acts: Vec<Activity> = (15..24)
        .flat_map(|i| {
            quiet.step(
                i * 60,
                &Metrics {
                    tracking: vec![10.0],
                    recipe: 0.0,
                },
            )
        })
        .collect();
    assert!(acts.is_empty(), "scale-in inside its cooldown: {acts:?}");
    // A surge inside the scale-in cooldown scales out at once.
    let acts: Vec<Activity> = (24..27)
        .flat_map(|i| {
            quiet.step(
                i * 60,
                &Metrics {
                    tracking: vec![300.0],
                    recipe: 0.0,
                },
            )
        })
        .collect();
    assert_eq!(acts.len(), 1, "{acts:?}");
    assert_eq!(acts[0].to, 6);
    // Inside the scale-out cooldown (120 s), the same level does not scale
    // again, but a larger one does.
    let same = quiet.step(
        27 * 60,
        &Metrics {
            tracking: vec![100.0],
            recipe: 0.0,
        },
    );
    assert!(same.is_empty());
    let larger = quiet.step(
        28 * 60,
        &Metrics {
            tracking: vec![200.0],
            recipe: 0.0,
        },
    );
    assert!(
        larger.is_empty(),
        "three datapoints above target are needed"
    );
}

// Several policies: the largest capacity wins.
#[test]
fn the_largest_capacity_wins() {
    let text = format!(
        "{TRACKING}[[targets.target_tracking]]\nname = \"second\"\npredefined_metric = \"SageMakerVariantInvocationsPerInstance\"\ntarget_value = 50.0\n"
    );
    let mut engine = Engine::new(&target(&text), 2, 0);
    for i in 0..3 {
        engine.step(
            i * 60,
            &Metrics {
                tracking: vec![150.0, 150.0],
                recipe: 0.0,
            },
        );
    }
    // Policy one wants ceil(2 × 1.5) = 3, policy two ceil(2 × 3) = 6.
    assert_eq!(engine.desired(), 6);
}

// "Scheduled scaling for Application Auto Scaling": a cron action in its
// time zone sets min/max; the capacity is clamped into the range at once.
#[test]
fn a_scheduled_action_sets_min_in_its_time_zone() {
    let text = format!(
        "{TRACKING}[[targets.scheduled]]\nname = \"mornings\"\nschedule = \"cron(0 8 ? * MON-FRI *)\"\ntimezone = \"Europe/Berlin\"\nmin_capacity = 4\n"
    );
    let mut engine = Engine::new(&target(&text), 1, 0);
    // Monday 2026-11-30 07:00 UTC = 08:00 in Berlin (CET, UTC+1).
    let monday_0700_utc = 1_796_022_000;
    let before = engine.step(
        monday_0700_utc - 60,
        &Metrics {
            tracking: vec![50.0],
            recipe: 0.0,
        },
    );
    assert!(before.is_empty());
    let acts = engine.step(
        monday_0700_utc,
        &Metrics {
            tracking: vec![50.0],
            recipe: 0.0,
        },
    );
    assert_eq!(engine.bounds(), (4, 10));
    assert_eq!(engine.desired(), 4);
    assert!(acts[0].reason.contains("mornings"), "{acts:?}");
    // Saturday: nothing fires.
    assert!(!fires(
        &target(&text).scheduled[0],
        monday_0700_utc + 5 * 86_400 - 60,
        monday_0700_utc + 5 * 86_400
    ));
}

// "Scale an endpoint to zero instances": with no copy, a request that finds
// none raises the alarm (Sum ≥ 1 in one 60 s period) and the step policy
// adds one.
#[test]
fn the_scale_to_zero_recipe_adds_a_copy_when_a_request_finds_none() {
    let text = r#"
[[targets]]
resource_id = "inference-component/ic"
min_capacity = 0
max_capacity = 4
[[targets.target_tracking]]
name = "tt"
predefined_metric = "SageMakerInferenceComponentInvocationsPerCopy"
target_value = 10.0
[[targets.step_scaling]]
name = "wake"
adjustment_type = "ChangeInCapacity"
[[targets.step_scaling.steps]]
lower_bound = 0.0
adjustment = 1
[targets.scale_to_zero]
step_policy = "wake"
"#;
    let mut engine = Engine::new(&target(text), 0, 0);
    assert!(engine
        .step(
            0,
            &Metrics {
                tracking: vec![0.0],
                recipe: 0.0,
            }
        )
        .is_empty());
    let acts = engine.step(
        60,
        &Metrics {
            tracking: vec![0.0],
            recipe: 3.0,
        },
    );
    assert_eq!((acts[0].from, acts[0].to), (0, 1));
    assert!(acts[0].reason.contains("NoCapacityInvocationFailures"));
}

const HIGH_RESOLUTION: &str = r#"
[[targets]]
resource_id = "endpoint/ep/variant/v"
min_capacity = 1
max_capacity = 10
[[targets.target_tracking]]
name = "concurrency"
predefined_metric = "SageMakerVariantConcurrentRequestsPerModelHighResolution"
target_value = 5.0
scale_out_cooldown_s = 60
scale_in_cooldown_s = 300
"#;

fn metrics(value: f64) -> Metrics {
    Metrics {
        tracking: vec![value],
        recipe: 0.0,
    }
}

// "Define a scaling policy" (SageMaker developer guide, high-resolution
// predefined metrics): ConcurrentRequestsPerModel is emitted every 10
// seconds, so the policy scales out much faster than on a standard metric,
// but scales in at the same speed as one.
#[test]
fn a_high_resolution_metric_scales_out_on_ten_second_datapoints() {
    let target = target(HIGH_RESOLUTION);
    assert_eq!(
        TrackingAlarms::for_metric(target.target_tracking[0].predefined_metric.as_deref()),
        TrackingAlarms {
            scale_out_period_s: 10,
            ..TrackingAlarms::default()
        }
    );
    let mut engine = Engine::new(&target, 2, 0).with_tick(10);
    assert_eq!(engine.finest_period_s(), 10);
    let mut acts = Vec::new();
    for i in 0..3 {
        acts.extend(engine.step(i * 10, &metrics(10.0)));
    }
    // Three 10-second datapoints at 10 per model, target 5: 2 → 4 after 30 s.
    assert_eq!(acts.len(), 1, "{acts:?}");
    assert_eq!((acts[0].at, acts[0].from, acts[0].to), (20, 2, 4));
    assert!(acts[0].reason.contains("of 10 s"), "{acts:?}");
}

#[test]
fn a_high_resolution_metric_scales_in_on_one_minute_datapoints() {
    let mut engine = Engine::new(&target(HIGH_RESOLUTION), 8, 0).with_tick(10);
    let mut first = None;
    for i in 0..(20 * 6) {
        let acts = engine.step(i * 10, &metrics(1.0));
        if first.is_none() && !acts.is_empty() {
            first = Some((i * 10, acts[0].to));
        }
    }
    // 15 one-minute datapoints below 4.5: the first scale-in ends minute 15.
    let (at, to) = first.expect("it scales in");
    assert_eq!(at, 15 * 60 - 10);
    // 8 models at 1 each: ceil(8 × 1 / 5) = 2.
    assert_eq!(to, 2);
}

// The overrides `simulate` takes change only what they name.
#[test]
fn alarm_overrides_change_only_what_they_name() {
    let engine = Engine::new(&target(TRACKING), 2, 0).with_alarms(AlarmOverrides {
        scale_out_period_s: Some(30),
        ..AlarmOverrides::default()
    });
    assert_eq!(engine.finest_period_s(), 30);
    let alarms = engine.tracking[0].alarms;
    assert_eq!(
        (alarms.scale_out_datapoints, alarms.scale_in_period_s),
        (3, 60)
    );
}

proptest! {
    // Capacity never leaves [min, max], and never scales in while the
    // metric is above the target.
    #[test]
    fn capacity_stays_in_bounds_and_never_drops_under_load(loads in proptest::collection::vec(0.0f64..2000.0, 1..120)) {
        let mut engine = Engine::new(&target(TRACKING), 3, 120);
        for (i, load) in loads.iter().enumerate() {
            let metric = load / f64::from(engine.in_service().max(1));
            let before = engine.desired();
            let acts = engine.step(i as i64 * 60, &Metrics { tracking: vec![metric], recipe: 0.0 });
            let (min, max) = engine.bounds();
            prop_assert!((min..=max).contains(&engine.desired()));
            if metric > 100.0 {
                prop_assert!(engine.desired() >= before, "scaled in at metric {metric}: {acts:?}");
            }
        }
    }

    // A constant load above the target converges and then stays put: no
    // flapping.
    #[test]
    fn a_constant_load_converges_and_stays(load in 150.0f64..900.0) {
        let mut engine = Engine::new(&target(TRACKING), 1, 60);
        let mut last_change = 0;
        for i in 0..240i64 {
            let metric = load / f64::from(engine.in_service().max(1));
            if !engine.step(i * 60, &Metrics { tracking: vec![metric], recipe: 0.0 }).is_empty() {
                last_change = i;
            }
        }
        prop_assert!(last_change < 60, "still changing at minute {last_change}");
        let per_instance = load / f64::from(engine.in_service());
        prop_assert!(per_instance <= 100.0 + 1e-9);
        prop_assert!(per_instance > 100.0 * 0.9 * f64::from(engine.in_service() - 1) / f64::from(engine.in_service()) - 1e-9 || engine.in_service() == 1);
    }
}

/// "Step scaling policies for Application Auto Scaling" (user guide): percent
/// changes between -1 and 1 count as ±1, others are rounded toward zero,
/// and `MinAdjustmentMagnitude` is the least change.
#[test]
fn percent_changes_round_as_aws_rounds_them() {
    use crate::aas::percent_change;
    assert_eq!(percent_change(1, 10, 0), 1, "0.1 counts as 1");
    assert_eq!(percent_change(3, -10, 0), -1, "-0.3 counts as -1");
    assert_eq!(percent_change(10, 25, 0), 2, "2.5 rounds down");
    assert_eq!(percent_change(10, -25, 0), -2, "-2.5 rounds up");
    assert_eq!(percent_change(0, 50, 0), 0);
    assert_eq!(
        percent_change(10, 10, 3),
        3,
        "at least the minimum magnitude"
    );
}

/// The same page: at or above the threshold a step is `[lower, upper)`,
/// below it `(lower, upper]`.
#[test]
fn step_bounds_are_exclusive_below_the_threshold_on_the_lower_side() {
    use crate::aas::step_for;
    use crate::model::Step;
    let steps = [
        Step {
            lower_bound: None,
            upper_bound: Some(-10.0),
            adjustment: -2,
        },
        Step {
            lower_bound: Some(-10.0),
            upper_bound: Some(0.0),
            adjustment: -1,
        },
        Step {
            lower_bound: Some(0.0),
            upper_bound: Some(10.0),
            adjustment: 1,
        },
        Step {
            lower_bound: Some(10.0),
            upper_bound: None,
            adjustment: 2,
        },
    ];
    let adjustment = |delta: f64| step_for(&steps, delta).map(|s| s.adjustment);
    assert_eq!(adjustment(-10.0), Some(-2), "below: upper bound inclusive");
    assert_eq!(adjustment(-9.5), Some(-1));
    assert_eq!(
        adjustment(0.0),
        Some(1),
        "at the threshold: lower inclusive"
    );
    assert_eq!(adjustment(10.0), Some(2));
    assert_eq!(adjustment(9.99), Some(1));
}

/// A step policy the recipe's alarm drives: +1 for a breach under 5 over the
/// threshold (1), +3 from 5 over; `extra` adds TOML to the recipe.
fn stepped(extra: &str, aggregation: &str) -> Target {
    target(&format!(
        r#"
[[targets]]
resource_id = "inference-component/ic"
min_capacity = 0
max_capacity = 10
[[targets.step_scaling]]
name = "wake"
adjustment_type = "ChangeInCapacity"
cooldown_s = 300
metric_aggregation_type = "{aggregation}"
[[targets.step_scaling.steps]]
lower_bound = 0.0
upper_bound = 5.0
adjustment = 1
[[targets.step_scaling.steps]]
lower_bound = 5.0
adjustment = 3
[targets.scale_to_zero]
step_policy = "wake"
threshold = 1.0
comparison_operator = "GreaterThanOrEqualToThreshold"
{extra}
"#
    ))
}

fn recipe(value: f64) -> Metrics {
    Metrics {
        tracking: Vec::new(),
        recipe: value,
    }
}

/// StepScalingPolicyConfiguration (API reference), `Cooldown`: inside a
/// scale-out cooldown a larger step counts the previous scale-out as part
/// of the capacity, so only the difference is added; the same step again
/// adds nothing; after the cooldown, steps apply to the capacity in service.
#[test]
fn a_larger_step_inside_the_cooldown_adds_only_the_difference() {
    let mut engine = Engine::new(&stepped("", "Average"), 0, 0);
    let first = engine.step(60, &recipe(2.0));
    assert_eq!((first[0].from, first[0].to), (0, 1));
    let larger = engine.step(120, &recipe(10.0));
    assert_eq!((larger[0].from, larger[0].to), (1, 3), "0 + 3, not 1 + 3");
    assert!(
        engine.step(180, &recipe(10.0)).is_empty(),
        "the same step again"
    );
    let after = engine.step(480, &recipe(10.0));
    assert_eq!(
        (after[0].from, after[0].to),
        (3, 6),
        "after the cooldown: 3 + 3"
    );
}

/// TreatMissingData (PutMetricAlarm, CloudWatch API reference): `breaching`
/// counts a period without data as a breach, `notBreaching` does not.
#[test]
fn missing_data_is_treated_as_the_alarm_says() {
    let mut breaching = Engine::new(
        &stepped("treat_missing_data = \"breaching\"", "Average"),
        0,
        0,
    );
    let acts = breaching.step(60, &recipe(f64::NAN));
    assert_eq!(acts.len(), 1, "{acts:?}");
    let mut not = Engine::new(
        &stepped("treat_missing_data = \"notBreaching\"", "Average"),
        0,
        0,
    );
    assert!(not.step(60, &recipe(f64::NAN)).is_empty());
}

/// `MetricAggregationType` (StepScalingPolicyConfiguration): the breach
/// size is the alarm's datapoints aggregated, Average when unset.
#[test]
fn the_step_is_chosen_from_the_aggregated_datapoints() {
    let window = "evaluation_periods = 3\ndatapoints_to_alarm = 1";
    let mut low = Engine::new(&stepped(window, "Average"), 0, 0);
    for (t, v) in [(60, 1.0), (120, 1.0), (480, 12.0)] {
        low.step(t, &recipe(v));
    }
    let mut high = Engine::new(&stepped(window, "Maximum"), 0, 0);
    for (t, v) in [(60, 1.0), (120, 1.0), (480, 12.0)] {
        high.step(t, &recipe(v));
    }
    // (1 + 1 + 12) / 3 - 1 = 3.67 over: the +1 step; Maximum 11 over: +3.
    assert!(
        high.desired() > low.desired(),
        "{} vs {}",
        high.desired(),
        low.desired()
    );
}

/// The assumption that a SageMaker endpoint is busy while capacity
/// provisions: a surge during provisioning waits; without it, it scales.
#[test]
fn while_capacity_provisions_the_target_is_busy() {
    let loads = [400.0, 400.0, 400.0, 1500.0, 1500.0, 1500.0, 1500.0];
    let mut busy = Engine::new(&target(TRACKING), 1, 600);
    replay(&mut busy, &loads);
    assert_eq!(busy.desired(), 4, "only the first scale-out");
    let mut free = Engine::new(&target(TRACKING), 1, 600).with_assumptions(Assumptions {
        busy_while_provisioning: false,
        ..Assumptions::default()
    });
    replay(&mut free, &loads);
    assert!(free.desired() > 4, "{}", free.desired());
}

/// `scale_in_step` caps what one scale-in removes.
#[test]
fn scale_in_step_limits_each_scale_in() {
    let mut loads = vec![900.0; 5];
    loads.extend([10.0; 20]);
    let mut proportional = Engine::new(&target(TRACKING), 1, 0);
    let acts = replay(&mut proportional, &loads);
    let first_in = acts.iter().find(|a| a.to < a.from).unwrap();
    assert_eq!(first_in.to, 1, "straight to the proportional capacity");
    let mut gradual = Engine::new(&target(TRACKING), 1, 0).with_assumptions(Assumptions {
        scale_in_step: Some(2),
        ..Assumptions::default()
    });
    let acts = replay(&mut gradual, &loads);
    let first_in = acts.iter().find(|a| a.to < a.from).unwrap();
    assert_eq!(first_in.from - first_in.to, 2, "{first_in:?}");
}

/// When actions fire, looking back: the last firing, the min/max in force
/// (what a re-registered target and a replay start with), a cron action's
/// start time, and the expressions the model cannot replay.
#[test]
fn the_schedule_in_force_is_found_from_the_last_firings() {
    let text = r#"
[[targets]]
resource_id = "endpoint/ep/variant/v"
min_capacity = 1
max_capacity = 4
[[targets.scheduled]]
name = "day"
schedule = "cron(0 8 * * ? *)"
min_capacity = 3
max_capacity = 8
[[targets.scheduled]]
name = "night"
schedule = "cron(0 20 * * ? *)"
min_capacity = 1
max_capacity = 4
"#;
    let t = target(text);
    let day = |h: i64| 20_000 * 86_400 + h * 3600; // some day, at h:00 UTC
    assert_eq!(
        last_firing(&t.scheduled[0], day(9), 8 * 86_400),
        Some(day(8))
    );
    assert_eq!(
        last_firing(&t.scheduled[1], day(9), 8 * 86_400),
        Some(day(-4))
    );
    assert_eq!(bounds_at(&t, day(9), 8 * 86_400), (3, 8), "the morning's");
    assert_eq!(bounds_at(&t, day(21), 8 * 86_400), (1, 4), "the evening's");
    // A cron action with a start time also runs at its start.
    let mut started = t.scheduled[0].clone();
    started.start_time = Some("2024-10-04T10:30:00Z".into());
    let start = crate::plan::epoch_seconds("2024-10-04T10:30:00Z").unwrap();
    assert!(fires(&started, start - 60, start));
    // L, W and # are refused by the model, not silently never fired.
    let mut last_day = t.scheduled[0].clone();
    last_day.schedule = "cron(0 8 L * ? *)".into();
    assert!(model_problem(&last_day).is_some());
    assert!(model_problem(&t.scheduled[0]).is_none());
}
