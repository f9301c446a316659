//! Tests of `plan`.

use super::*;

fn file() -> AutoscalingFile {
    AutoscalingFile::from_toml(include_str!("../../../../deploy/autoscaling.example.toml")).unwrap()
}

#[test]
fn an_empty_account_gets_everything_created_in_order() {
    let plan = plan_apply(&file(), &Current::default());
    assert!(plan.changes.iter().all(|c| c.op == Op::Create));
    let kinds: Vec<Kind> = plan.changes.iter().map(|c| c.kind).collect();
    let first_policy = kinds
        .iter()
        .position(|k| *k == Kind::ScalingPolicy)
        .unwrap();
    let last_target = kinds
        .iter()
        .rposition(|k| *k == Kind::ScalableTarget)
        .unwrap();
    assert!(
        last_target < first_policy,
        "a policy before its target: {kinds:?}"
    );
    assert_eq!(kinds.last(), Some(&Kind::Alarm));
    assert_eq!(
        kinds.iter().filter(|k| **k == Kind::ScalableTarget).count(),
        3
    );
    assert!(
        render(&plan).contains("Plan: 12 to create, 0 to change, 0 to delete."),
        "{}",
        render(&plan)
    );
}

#[test]
fn undeclared_fields_are_not_drift() {
    let f = file();
    let t = &f.targets[1];
    let p = &t.target_tracking[0];
    let current = Current {
        targets: vec![CurrentTarget {
            resource_id: t.resource_id.clone(),
            dimension: t.dimension().unwrap(),
            min_capacity: 0,
            max_capacity: 4,
            suspended: Suspended::default(),
            arn: None,
            tags: None,
        }],
        policies: vec![CurrentPolicy {
            resource_id: t.resource_id.clone(),
            name: p.name.clone(),
            arn: "arn:p".into(),
            alarms: vec![],
            policy: PolicyShape::TargetTracking {
                predefined_metric: p.predefined_metric.clone(),
                customized_metric: None,
                target_value: 5.0,
                scale_out_cooldown_s: Some(60),
                scale_in_cooldown_s: Some(300),
                disable_scale_in: false,
            },
        }],
        ..Current::default()
    };
    let plan = plan_apply(&f, &current);
    assert!(!plan.changes.iter().any(|c| c.name == p.name), "{plan:?}");
    assert!(!plan
        .changes
        .iter()
        .any(|c| c.kind == Kind::ScalableTarget && c.resource_id == t.resource_id));
}

#[test]
fn destroy_goes_alarms_policies_actions_targets() {
    let f = file();
    let created = plan_apply(&f, &Current::default());
    // Pretend everything exists.
    let mut current = Current::default();
    for c in &created.changes {
        match c.kind {
            Kind::ScalableTarget => current.targets.push(CurrentTarget {
                resource_id: c.resource_id.clone(),
                dimension: String::new(),
                min_capacity: 0,
                max_capacity: 1,
                suspended: Suspended::default(),
                arn: None,
                tags: None,
            }),
            Kind::ScalingPolicy => current.policies.push(CurrentPolicy {
                resource_id: c.resource_id.clone(),
                name: c.name.clone(),
                arn: String::new(),
                alarms: vec![],
                policy: PolicyShape::StepScaling {
                    adjustment_type: None,
                    steps: vec![],
                    cooldown_s: None,
                    metric_aggregation_type: None,
                    min_adjustment_magnitude: None,
                },
            }),
            Kind::ScheduledAction => current.scheduled.push(CurrentScheduled {
                resource_id: c.resource_id.clone(),
                name: c.name.clone(),
                schedule: String::new(),
                timezone: None,
                start_time: None,
                end_time: None,
                min_capacity: None,
                max_capacity: None,
            }),
            Kind::Alarm => current.alarms.push(CurrentAlarm {
                name: c.name.clone(),
                ..CurrentAlarm::default()
            }),
        }
    }
    let plan = plan_destroy(&f, &current);
    let kinds: Vec<Kind> = plan.changes.iter().map(|c| c.kind).collect();
    let mut sorted = kinds.clone();
    sorted.sort_by_key(|k| match k {
        Kind::Alarm => 0,
        Kind::ScalingPolicy => 1,
        Kind::ScheduledAction => 2,
        Kind::ScalableTarget => 3,
    });
    assert_eq!(kinds, sorted);
    assert_eq!(kinds.len(), created.changes.len());
    assert!(plan.changes.iter().all(|c| c.op == Op::Delete));
}

/// A target as AWS has it after `apply` of the declared one.
fn as_applied(t: &Target) -> CurrentTarget {
    CurrentTarget {
        resource_id: t.resource_id.clone(),
        dimension: t.dimension().unwrap(),
        min_capacity: t.min_capacity,
        max_capacity: t.max_capacity,
        suspended: t.suspended.unwrap_or_default(),
        arn: None,
        tags: None,
    }
}

const SCHEDULED: &str = r#"
[[targets]]
resource_id = "endpoint/ep/variant/v"
min_capacity = 1
max_capacity = 4
[[targets.scheduled]]
name = "mornings"
schedule = "cron(0 8 ? * MON-FRI *)"
min_capacity = 3
"#;

// "Scheduled scaling for Application Auto Scaling": an action sets the
// target's min/max when it runs; terraform's aws_appautoscaling_target
// users hit the same fight between the target and its schedule.
#[test]
fn min_and_max_set_by_a_schedule_are_not_drift() {
    let f = AutoscalingFile::from_toml(SCHEDULED).unwrap();
    let mut fired = as_applied(&f.targets[0]);
    fired.min_capacity = 3;
    let current = Current {
        targets: vec![fired],
        scheduled: vec![CurrentScheduled {
            resource_id: "endpoint/ep/variant/v".into(),
            name: "mornings".into(),
            schedule: "cron(0 8 ? * MON-FRI *)".into(),
            timezone: None,
            start_time: None,
            end_time: None,
            min_capacity: Some(3),
            max_capacity: None,
        }],
        ..Current::default()
    };
    let plan = plan_apply(&f, &current);
    assert!(plan.is_empty(), "{}", render(&plan));
    assert!(
        render(&plan).contains("set by schedule"),
        "{}",
        render(&plan)
    );
    // --reset-capacity puts the file's values back, once.
    let reset = plan_apply_with(
        &f,
        &current,
        PlanOptions {
            reset_capacity: true,
            ..PlanOptions::default()
        },
    );
    assert_eq!(reset.changes.len(), 1);
    assert_eq!(reset.changes[0].differences, ["min_capacity: 3 -> 1"]);
    // `capacity = "enforce"` makes the file own them again.
    let enforced = AutoscalingFile::from_toml(&SCHEDULED.replacen(
        "max_capacity = 4\n",
        "max_capacity = 4\ncapacity = \"enforce\"\n",
        1,
    ))
    .unwrap();
    assert_eq!(plan_apply(&enforced, &current).changes.len(), 1);
    // `ignore_changes` without any schedule: never compared.
    let ignored = AutoscalingFile::from_toml(
        "[[targets]]\nresource_id = \"endpoint/ep/variant/v\"\nmin_capacity = 1\nmax_capacity = 4\ncapacity = \"ignore_changes\"\n",
    )
    .unwrap();
    let mut moved = as_applied(&ignored.targets[0]);
    moved.max_capacity = 9;
    let plan = plan_apply(
        &ignored,
        &Current {
            targets: vec![moved],
            ..Current::default()
        },
    );
    assert!(plan.is_empty());
}

#[test]
fn a_suspension_is_compared_only_when_declared() {
    let f = AutoscalingFile::from_toml(SCHEDULED).unwrap();
    let mut suspended = as_applied(&f.targets[0]);
    suspended.suspended.dynamic_scaling_in = true;
    let current = Current {
        targets: vec![suspended],
        scheduled: vec![],
        ..Current::default()
    };
    let plan = plan_apply(&f, &current);
    assert!(
        !plan.changes.iter().any(|c| c.kind == Kind::ScalableTarget),
        "an operator's suspension is left alone: {plan:?}"
    );
    let declared = AutoscalingFile::from_toml(&format!(
        "{SCHEDULED}[targets.suspended]\ndynamic_scaling_in = false\n"
    ))
    .unwrap();
    let plan = plan_apply(&declared, &current);
    assert!(plan.changes.iter().any(|c| c.kind == Kind::ScalableTarget));
}

#[test]
fn removing_an_optional_field_is_a_change() {
    let f = AutoscalingFile::from_toml(SCHEDULED).unwrap();
    let action = |timezone: Option<&str>, start: Option<i64>| CurrentScheduled {
        resource_id: "endpoint/ep/variant/v".into(),
        name: "mornings".into(),
        schedule: "cron(0 8 ? * MON-FRI *)".into(),
        timezone: timezone.map(str::to_owned),
        start_time: start,
        end_time: None,
        min_capacity: Some(3),
        max_capacity: None,
    };
    let plan_for = |a: CurrentScheduled| {
        plan_apply(
            &f,
            &Current {
                targets: vec![as_applied(&f.targets[0])],
                scheduled: vec![a],
                ..Current::default()
            },
        )
    };
    assert!(
        plan_for(action(Some("UTC"), None)).is_empty(),
        "UTC is no zone"
    );
    let plan = plan_for(action(Some("Europe/Berlin"), Some(1_800_000_000)));
    let d = &plan.changes[0].differences;
    assert!(d.iter().any(|x| x.starts_with("timezone")), "{d:?}");
    assert!(d.iter().any(|x| x.starts_with("start_time")), "{d:?}");
    // A cooldown removed from the file: AWS's default matches, another
    // value is a change.
    let tt = crate::model::TargetTracking {
        name: "p".into(),
        predefined_metric: Some("SageMakerVariantInvocationsPerInstance".into()),
        customized_metric: None,
        target_value: 10.0,
        scale_out_cooldown_s: None,
        scale_in_cooldown_s: None,
        disable_scale_in: false,
    };
    let shape = |out: Option<i32>| PolicyShape::TargetTracking {
        predefined_metric: tt.predefined_metric.clone(),
        customized_metric: None,
        target_value: 10.0,
        scale_out_cooldown_s: out,
        scale_in_cooldown_s: None,
        disable_scale_in: false,
    };
    assert!(target_tracking_differences(&tt, &shape(None)).is_empty());
    assert!(target_tracking_differences(&tt, &shape(Some(DEFAULT_COOLDOWN_S))).is_empty());
    assert_eq!(target_tracking_differences(&tt, &shape(Some(60))).len(), 1);
}

#[test]
fn customized_metric_dimensions_and_unit_are_compared() {
    let metric = |unit: Option<&str>, value: &str| CustomizedMetric {
        namespace: "inferlb".into(),
        metric_name: "InFlightPerReplica".into(),
        statistic: "Average".into(),
        unit: unit.map(str::to_owned),
        dimensions: vec![
            MetricDimension {
                name: "Pool".into(),
                value: value.into(),
            },
            MetricDimension {
                name: "EndpointName".into(),
                value: "ep".into(),
            },
        ],
        metrics: vec![],
    };
    let tt = crate::model::TargetTracking {
        name: "p".into(),
        predefined_metric: None,
        customized_metric: Some(metric(Some("Count"), "llama")),
        target_value: 4.0,
        scale_out_cooldown_s: None,
        scale_in_cooldown_s: None,
        disable_scale_in: false,
    };
    let shape = |m: CustomizedMetric| PolicyShape::TargetTracking {
        predefined_metric: None,
        customized_metric: Some(m),
        target_value: 4.0,
        scale_out_cooldown_s: None,
        scale_in_cooldown_s: None,
        disable_scale_in: false,
    };
    let mut reordered = metric(Some("Count"), "llama");
    reordered.dimensions.reverse();
    assert!(target_tracking_differences(&tt, &shape(reordered)).is_empty());
    assert_eq!(
        target_tracking_differences(&tt, &shape(metric(None, "llama"))).len(),
        1
    );
    assert_eq!(
        target_tracking_differences(&tt, &shape(metric(Some("Count"), "qwen"))).len(),
        1
    );
}

// "Scale an endpoint to zero instances" (SageMaker developer guide): the
// alarm on NoCapacityInvocationFailures, period 60, Sum, threshold 1,
// one evaluation period and one datapoint.
#[test]
fn every_alarm_field_is_compared_against_the_recipe() {
    let f = file();
    let t = f
        .targets
        .iter()
        .find(|t| t.scale_to_zero.is_some())
        .unwrap();
    let spec = t.alarm().unwrap();
    assert_eq!(
        (
            spec.period_s,
            spec.statistic.as_str(),
            spec.threshold,
            spec.evaluation_periods,
            spec.datapoints_to_alarm
        ),
        (60, "Sum", 1.0, 1, 1)
    );
    let good = CurrentAlarm {
        name: spec.name.clone(),
        namespace: Some(ALARM_NAMESPACE.into()),
        metric_name: Some(spec.metric_name.into()),
        dimensions: vec![(spec.dimension_name.into(), spec.dimension_value.clone())],
        period_s: Some(60),
        evaluation_periods: Some(1),
        datapoints_to_alarm: Some(1),
        statistic: Some("Sum".into()),
        threshold: Some(1.0),
        comparison_operator: Some("GreaterThanOrEqualToThreshold".into()),
        treat_missing_data: Some("missing".into()),
        actions_enabled: Some(true),
        actions: vec!["arn:step".into()],
        state: None,
    };
    assert!(alarm_differences(t, &good, Some("arn:step")).is_empty());
    type Edit = fn(&mut CurrentAlarm);
    let edits: [(&str, Edit); 8] = [
        ("statistic", |a| a.statistic = Some("Maximum".into())),
        ("threshold", |a| a.threshold = Some(2.0)),
        ("comparison_operator", |a| {
            a.comparison_operator = Some("GreaterThanThreshold".into())
        }),
        ("treat_missing_data", |a| {
            a.treat_missing_data = Some("breaching".into())
        }),
        ("datapoints_to_alarm", |a| a.datapoints_to_alarm = Some(3)),
        ("actions_enabled", |a| a.actions_enabled = Some(false)),
        ("period_s", |a| a.period_s = Some(10)),
        ("dimensions", |a| a.dimensions.clear()),
    ];
    for (field, edit) in edits {
        let mut drifted = good.clone();
        edit(&mut drifted);
        let d = alarm_differences(t, &drifted, Some("arn:step"));
        assert!(d.iter().any(|x| x.starts_with(field)), "{field}: {d:?}");
    }
}

/// `run` and `apply` never undo others' changes to min/max: a scheduled
/// action on AWS the file does not declare owns them ("Scheduled scaling
/// for Application Auto Scaling"); while a suspension flag is set, or when
/// the file's max is lower, RegisterScalableTarget would move capacity at
/// once past the suspension and any cooldown (RegisterScalableTarget, API
/// reference). Reported; `--reset-capacity` applies them.
#[test]
fn min_and_max_are_not_corrected_where_that_would_undo_someone() {
    let plain = AutoscalingFile::from_toml(
        "[[targets]]\nresource_id = \"endpoint/ep/variant/v\"\nmin_capacity = 1\nmax_capacity = 4\n",
    )
    .unwrap();
    let t = &plain.targets[0];
    let reset = PlanOptions {
        reset_capacity: true,
        ..PlanOptions::default()
    };
    let updates = |plan: &Plan| {
        plan.changes
            .iter()
            .filter(|c| c.kind == Kind::ScalableTarget)
            .count()
    };
    // Someone else's scheduled action moved min.
    let mut moved = as_applied(t);
    moved.min_capacity = 2;
    let theirs = Current {
        targets: vec![moved.clone()],
        scheduled: vec![CurrentScheduled {
            resource_id: t.resource_id.clone(),
            name: "someone-elses".into(),
            schedule: "cron(0 8 * * ? *)".into(),
            timezone: None,
            start_time: None,
            end_time: None,
            min_capacity: Some(2),
            max_capacity: None,
        }],
        ..Current::default()
    };
    let plan = plan_apply(&plain, &theirs);
    assert_eq!(updates(&plan), 0, "{}", render(&plan));
    assert!(render(&plan).contains("set by schedule"));
    assert_eq!(updates(&plan_apply_with(&plain, &theirs, reset)), 1);
    // A suspension on AWS.
    let mut held = moved.clone();
    held.suspended.dynamic_scaling_in = true;
    let suspended = Current {
        targets: vec![held],
        ..Current::default()
    };
    let plan = plan_apply(&plain, &suspended);
    assert_eq!(updates(&plan), 0, "{}", render(&plan));
    assert!(render(&plan).contains("suspended"), "{}", render(&plan));
    // A max above the file's: lowering it would scale in at once.
    let mut raised = as_applied(t);
    raised.max_capacity = 9;
    let plan = plan_apply(
        &plain,
        &Current {
            targets: vec![raised.clone()],
            ..Current::default()
        },
    );
    assert_eq!(updates(&plan), 0, "{}", render(&plan));
    assert!(render(&plan).contains("lower max"), "{}", render(&plan));
    let plan = plan_apply_with(
        &plain,
        &Current {
            targets: vec![raised],
            ..Current::default()
        },
        reset,
    );
    assert_eq!(plan.changes[0].differences, ["max_capacity: 9 -> 4"]);
    // A max below the file's, or a min moved with no schedule: corrected.
    let mut lowered = as_applied(t);
    lowered.max_capacity = 2;
    lowered.min_capacity = 2;
    let plan = plan_apply(
        &plain,
        &Current {
            targets: vec![lowered],
            ..Current::default()
        },
    );
    assert_eq!(updates(&plan), 1, "{}", render(&plan));
}
