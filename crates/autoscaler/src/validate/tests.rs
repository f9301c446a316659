//! Every validation rule has a failing example.

use super::*;
use crate::model::AutoscalingFile;

const VALID: &str = r#"
[[targets]]
resource_id = "endpoint/ep/variant/AllTraffic"
min_capacity = 1
max_capacity = 4
[[targets.target_tracking]]
name = "tt"
predefined_metric = "SageMakerVariantInvocationsPerInstance"
target_value = 50.0
[[targets.scheduled]]
name = "nightly"
schedule = "cron(0 20 ? * * *)"
min_capacity = 1

[[targets]]
resource_id = "inference-component/ic-1"
min_capacity = 0
max_capacity = 2
[[targets.target_tracking]]
name = "ic-tt"
predefined_metric = "SageMakerInferenceComponentInvocationsPerCopy"
target_value = 5.0
[[targets.step_scaling]]
name = "wake"
adjustment_type = "ChangeInCapacity"
[[targets.step_scaling.steps]]
lower_bound = 0.0
adjustment = 1
[[targets.step_scaling]]
name = "burst"
adjustment_type = "ChangeInCapacity"
[[targets.step_scaling.steps]]
lower_bound = 5.0
adjustment = 1
[targets.scale_to_zero]
step_policy = "wake"
"#;

fn file(text: &str) -> AutoscalingFile {
    AutoscalingFile::from_toml(text).unwrap()
}

/// Applies `edit` to the valid file's text and expects a problem on `field`.
fn expect(edit: impl Fn(&str) -> String, field: &str, needle: &str) {
    let text = edit(VALID);
    let err = validate(&file(&text)).expect_err(&format!("accepted a file with a bad {field}"));
    let found = err.0.iter().find(|p| p.field == field);
    let Some(problem) = found else {
        panic!("no problem on {field}: {err}")
    };
    assert!(
        problem.reason.contains(needle),
        "{field}: {:?} lacks {needle:?}",
        problem.reason
    );
}

#[test]
fn the_valid_file_and_the_example_pass() {
    validate(&file(VALID)).unwrap();
    let example =
        AutoscalingFile::from_toml(include_str!("../../../../deploy/autoscaling.example.toml"))
            .unwrap();
    validate(&example).unwrap();
    assert!(example.targets.iter().any(|t| t.scale_to_zero.is_some()));
    assert!(example
        .targets
        .iter()
        .any(|t| t.resource_id.starts_with("endpoint/") && !t.target_tracking.is_empty()));
}

#[test]
fn resource_ids() {
    for bad in [
        "endpoint/ep",
        "endpoint/ep/variant/",
        "endpoint/-ep/variant/v",
        "inference-component/a/b",
        "table/x",
    ] {
        expect(
            |t| t.replacen("endpoint/ep/variant/AllTraffic", bad, 1),
            "targets[0].resource_id",
            "is not",
        );
    }
    expect(
        |t| {
            t.replacen(
                "inference-component/ic-1",
                "endpoint/ep/variant/AllTraffic",
                1,
            )
        },
        "targets[1].resource_id",
        "declared twice",
    );
}

#[test]
fn dimension_matches_the_resource() {
    expect(
        |t| {
            t.replacen("min_capacity = 1\nmax_capacity = 4", "scalable_dimension = \"sagemaker:inference-component:DesiredCopyCount\"\nmin_capacity = 1\nmax_capacity = 4", 1)
        },
        "targets[0].scalable_dimension",
        "does not match",
    );
}

#[test]
fn metric_matches_the_dimension() {
    expect(
        |t| {
            t.replacen(
                "SageMakerVariantInvocationsPerInstance",
                "SageMakerInferenceComponentInvocationsPerCopy",
                1,
            )
        },
        "targets[0].target_tracking[0].predefined_metric",
        "does not apply",
    );
    expect(
        |t| {
            t.replacen(
                "SageMakerInferenceComponentInvocationsPerCopy",
                "SageMakerVariantInvocationsPerInstance",
                1,
            )
        },
        "targets[1].target_tracking[0].predefined_metric",
        "does not apply",
    );
    expect(
        |t| {
            t.replacen(
                "predefined_metric = \"SageMakerVariantInvocationsPerInstance\"\n",
                "",
                1,
            )
        },
        "targets[0].target_tracking[0].predefined_metric",
        "exactly one",
    );
    expect(
        |t| t.replacen("target_value = 50.0", "target_value = 0.0", 1),
        "targets[0].target_tracking[0].target_value",
        "above 0",
    );
}

#[test]
fn capacities() {
    expect(
        |t| {
            t.replacen(
                "min_capacity = 1\nmax_capacity = 4",
                "min_capacity = 5\nmax_capacity = 4",
                1,
            )
        },
        "targets[0].min_capacity",
        "above max_capacity",
    );
    // A real-time variant cannot come back from zero: with no invocations
    // no metric scales it out ("Autoscale an asynchronous endpoint" and
    // "Scale an endpoint to zero instances", SageMaker developer guide:
    // only asynchronous endpoints and inference components scale to zero).
    expect(
        |t| {
            t.replacen(
                "min_capacity = 1\nmax_capacity = 4",
                "min_capacity = 0\nmax_capacity = 4",
                1,
            )
        },
        "targets[0].min_capacity",
        "a way back from zero",
    );
    // Nor an inference component without its wake-up alarm.
    expect(
        |t| t.replacen("[targets.scale_to_zero]\nstep_policy = \"wake\"\n", "", 1),
        "targets[1].min_capacity",
        "a way back from zero",
    );
    expect(
        |t| t.replacen("max_capacity = 2", "max_capacity = 0", 1),
        "targets[1].max_capacity",
        "1 or more",
    );
    expect(
        |t| {
            t.replacen(
                "min_capacity = 0\nmax_capacity = 2",
                "min_capacity = 1\nmax_capacity = 2",
                1,
            )
        },
        "targets[1].min_capacity",
        "must be 0 for scale to zero",
    );
}

#[test]
fn steps_neither_overlap_nor_leave_gaps() {
    let two = |lo1: &str, hi1: &str, lo2: &str| {
        let lo2 = lo2.to_owned();
        let (lo1, hi1) = (lo1.to_owned(), hi1.to_owned());
        move |t: &str| {
            t.replacen(
                "lower_bound = 5.0\nadjustment = 1",
                &format!("lower_bound = {lo1}\nupper_bound = {hi1}\nadjustment = 1\n[[targets.step_scaling.steps]]\nlower_bound = {lo2}\nadjustment = 2"),
                1,
            )
        }
    };
    expect(
        two("0.0", "10.0", "5.0"),
        "targets[1].step_scaling[1].steps",
        "overlap",
    );
    expect(
        two("0.0", "10.0", "20.0"),
        "targets[1].step_scaling[1].steps",
        "gap",
    );
    expect(
        two("0.0", "0.0", "0.0"),
        "targets[1].step_scaling[1].steps",
        "empty",
    );
    // Adjacent steps are fine.
    validate(&file(&two("0.0", "10.0", "10.0")(VALID))).unwrap();
    expect(
        |t| {
            t.replacen(
                "adjustment_type = \"ChangeInCapacity\"",
                "adjustment_type = \"Grow\"",
                1,
            )
        },
        "targets[1].step_scaling[0].adjustment_type",
        "is not",
    );
}

#[test]
fn schedules() {
    for (bad, needle) in [
        ("cron(0 20 * * *)", "six fields"),
        ("cron(0 20 1 * MON *)", "'?'"),
        ("rate(5 minute)", "plural"),
        ("rate(0 minutes)", "above 0"),
        ("rate(five minutes)", "whole number"),
        ("at(2027-01-01 00:00:00)", "yyyy-mm-ddThh:mm:ss"),
        ("every day", "is not at"),
    ] {
        expect(
            |t| t.replacen("cron(0 20 ? * * *)", bad, 1),
            "targets[0].scheduled[0].schedule",
            needle,
        );
    }
    for good in [
        "rate(1 hour)",
        "rate(5 minutes)",
        "at(2027-01-01T00:00:00)",
        "cron(*/5 * * * ? *)",
    ] {
        validate(&file(&VALID.replacen("cron(0 20 ? * * *)", good, 1))).unwrap();
    }
    expect(
        |t| t.replacen("min_capacity = 1\n\n", "\n\n", 1),
        "targets[0].scheduled[0]",
        "min_capacity, max_capacity",
    );
}

#[test]
fn names() {
    expect(
        |t| t.replacen("name = \"tt\"", "name = \"a/b\"", 1),
        "targets[0].target_tracking[0].name",
        "may not contain",
    );
    expect(
        |t| {
            t.replacen(
                "name = \"tt\"",
                &format!("name = \"{}\"", "x".repeat(257)),
                1,
            )
        },
        "targets[0].target_tracking[0].name",
        "1 to 256",
    );
    expect(
        |t| t.replacen("name = \"tt\"", "name = \" tt\"", 1),
        "targets[0].target_tracking[0].name",
        "space",
    );
    expect(
        |t| t.replacen("name = \"nightly\"", "name = \"tt\"", 1),
        "targets[0].scheduled[0].name",
        "used twice",
    );
}

#[test]
fn scale_to_zero_recipe() {
    expect(
        |t| t.replacen("step_policy = \"wake\"", "step_policy = \"sleep\"", 1),
        "targets[1].scale_to_zero.step_policy",
        "no step_scaling policy",
    );
    expect(
        |t| {
            t.replacen("\n[[targets]]\nresource_id = \"inference-component", "[targets.scale_to_zero]\nstep_policy = \"x\"\n\n[[targets]]\nresource_id = \"inference-component", 1)
        },
        "targets[0].scale_to_zero",
        "only to inference components",
    );
}

// Application Auto Scaling API reference, `StepAdjustment`: the bounds'
// signs and the null bounds they require, and no negative ExactCapacity.
#[test]
fn step_bounds_follow_the_api_rules() {
    let steps = |body: &str| {
        let body = body.to_owned();
        move |t: &str| t.replacen("lower_bound = 5.0\nadjustment = 1", &body, 1)
    };
    expect(
        steps("adjustment = 1"),
        "targets[1].step_scaling[1].steps",
        "lower or an upper bound",
    );
    expect(
        steps("lower_bound = -5.0\nupper_bound = 0.0\nadjustment = -1\n[[targets.step_scaling.steps]]\nlower_bound = 0.0\nadjustment = 1"),
        "targets[1].step_scaling[1].steps",
        "negative lower bound",
    );
    expect(
        steps("upper_bound = 5.0\nadjustment = -1\n[[targets.step_scaling.steps]]\nlower_bound = 5.0\nupper_bound = 10.0\nadjustment = 1"),
        "targets[1].step_scaling[1].steps",
        "positive upper bound",
    );
    expect(
        |t| {
            steps("upper_bound = 0.0\nadjustment = -1\n[[targets.step_scaling.steps]]\nlower_bound = 0.0\nadjustment = 2")(t)
                .replacen("name = \"burst\"\nadjustment_type = \"ChangeInCapacity\"", "name = \"burst\"\nadjustment_type = \"ExactCapacity\"", 1)
        },
        "targets[1].step_scaling[1].steps",
        "cannot be negative",
    );
    // Scale in below the threshold, out above it: valid.
    validate(&file(&steps(
        "upper_bound = 0.0\nadjustment = -1\n[[targets.step_scaling.steps]]\nlower_bound = 0.0\nadjustment = 1",
    )(VALID)))
    .unwrap();
}

// "Scale an endpoint to zero instances": the step policy adds capacity from
// the threshold up; CloudWatch limits period × evaluation periods to a day.
#[test]
fn the_recipe_shape_and_alarm_limits() {
    expect(
        |t| t.replacen("step_policy = \"wake\"", "step_policy = \"burst\"", 1),
        "targets[1].scale_to_zero.step_policy",
        "recipe's shape",
    );
    expect(
        |t| format!("{t}period_s = 3600\nevaluation_periods = 25\n"),
        "targets[1].scale_to_zero.evaluation_periods",
        "one day",
    );
    expect(
        |t| format!("{t}evaluation_periods = 2\ndatapoints_to_alarm = 3\n"),
        "targets[1].scale_to_zero.datapoints_to_alarm",
        "1 to evaluation_periods",
    );
    expect(
        |t| format!("{t}treat_missing_data = \"zero\"\n"),
        "targets[1].scale_to_zero.treat_missing_data",
        "notBreaching",
    );
    expect(
        |t| format!("{t}statistic = \"p99\"\n"),
        "targets[1].scale_to_zero.statistic",
        "is not",
    );
}

#[test]
fn the_async_recipe_applies_to_variants() {
    let with_async = VALID.replacen(
        "min_capacity = 1\nmax_capacity = 4",
        "min_capacity = 0\nmax_capacity = 4",
        1,
    ) + "";
    let text = with_async.replacen(
        "[[targets.scheduled]]",
        "[[targets.step_scaling]]\nname = \"backlog\"\nadjustment_type = \"ChangeInCapacity\"\n[[targets.step_scaling.steps]]\nlower_bound = 0.0\nadjustment = 1\n[targets.async_scale_to_zero]\nstep_policy = \"backlog\"\n[[targets.scheduled]]",
        1,
    );
    let f = file(&text);
    validate(&f).unwrap();
    let spec = f.targets[0].alarm().unwrap();
    assert_eq!(spec.metric_name, "HasBacklogWithoutCapacity");
    assert_eq!(
        (spec.dimension_name, spec.dimension_value.as_str()),
        ("EndpointName", "ep")
    );
    assert_eq!(
        (
            spec.statistic.as_str(),
            spec.evaluation_periods,
            spec.datapoints_to_alarm
        ),
        ("Average", 2, 2)
    );
    assert!(spec.name.starts_with("inferlb-"));
    // Not on a component, and not with min_capacity above 0.
    let bad = text.replacen(
        "min_capacity = 0\nmax_capacity = 4",
        "min_capacity = 1\nmax_capacity = 4",
        1,
    );
    let err = validate(&file(&bad)).unwrap_err();
    assert!(
        err.0.iter().any(|p| p.field == "targets[0].min_capacity"),
        "{err}"
    );
}

#[test]
fn serverless_provisioned_concurrency_pairs_its_dimension_and_metric() {
    let text = VALID.replacen(
        "min_capacity = 1\nmax_capacity = 4",
        "scalable_dimension = \"sagemaker:variant:DesiredProvisionedConcurrency\"\nmin_capacity = 1\nmax_capacity = 4",
        1,
    );
    expect(
        |_| text.clone(),
        "targets[0].target_tracking[0].predefined_metric",
        "SageMakerVariantProvisionedConcurrencyUtilization",
    );
    validate(&file(&text.replacen(
        "SageMakerVariantInvocationsPerInstance",
        "SageMakerVariantProvisionedConcurrencyUtilization",
        1,
    )))
    .unwrap();
}

#[test]
fn cron_question_marks_and_zones_without_a_slash() {
    expect(
        |t| t.replacen("cron(0 20 ? * * *)", "cron(0 20 ? * ? *)", 1),
        "targets[0].scheduled[0].schedule",
        "exactly one",
    );
    for zone in [
        "UTC",
        "GMT",
        "Europe/Berlin",
        "America/Argentina/Buenos_Aires",
        "EST5EDT",
    ] {
        let text = VALID.replacen(
            "min_capacity = 1\n\n",
            &format!("min_capacity = 1\ntimezone = \"{zone}\"\n\n"),
            1,
        );
        validate(&file(&text)).unwrap_or_else(|e| panic!("{zone}: {e}"));
    }
    expect(
        |t| {
            t.replacen(
                "min_capacity = 1\n\n",
                "min_capacity = 1\ntimezone = \"Berlin\"\n\n",
                1,
            )
        },
        "targets[0].scheduled[0].timezone",
        "IANA",
    );
}

#[test]
fn metric_math_needs_one_result() {
    let math = r#"
[[targets.target_tracking]]
name = "math"
target_value = 3.0
[targets.target_tracking.customized_metric]
[[targets.target_tracking.customized_metric.metrics]]
id = "m1"
namespace = "inferlb"
metric_name = "InFlight"
statistic = "Sum"
[[targets.target_tracking.customized_metric.metrics]]
id = "e1"
expression = "m1 / 4"
return_data = true
"#;
    let text = VALID.replacen(
        "[[targets.scheduled]]",
        &format!("{math}[[targets.scheduled]]"),
        1,
    );
    validate(&file(&text)).unwrap();
    expect(
        |_| text.replacen("return_data = true", "return_data = false", 1),
        "targets[0].target_tracking[1].customized_metric.metrics",
        "exactly one",
    );
    expect(
        |_| text.replacen("expression = \"m1 / 4\"", "", 1),
        "targets[0].target_tracking[1].customized_metric.metrics[1]",
        "expression",
    );
}

#[test]
fn alarm_names_carry_the_prefix_the_iam_policy_allows() {
    expect(
        |t| format!("{t}alarm_name = \"my-alarm\"\n"),
        "targets[1].scale_to_zero.alarm_name",
        "inferlb-",
    );
    validate(&file(&format!(
        "{VALID}alarm_name = \"inferlb-my-alarm\"\n"
    )))
    .unwrap();
}

/// "Quotas for Application Auto Scaling" (user guide): 50 scaling policies
/// and 200 scheduled actions per scalable target, 20 step adjustments per
/// step scaling policy (the default).
#[test]
fn quotas_are_checked() {
    let many_policies = |t: &str| {
        let mut text = t.to_owned();
        for i in 0..50 {
            text.push_str(&format!(
                "[[targets.step_scaling]]\nname = \"s{i}\"\nadjustment_type = \"ChangeInCapacity\"\n[[targets.step_scaling.steps]]\nlower_bound = 0.0\nadjustment = 1\n"
            ));
        }
        text
    };
    expect(many_policies, "targets[1].target_tracking", "50 per target");
    let many_actions = |t: &str| {
        let mut text = t.to_owned();
        for i in 0..201 {
            text.push_str(&format!(
                "[[targets.scheduled]]\nname = \"a{i}\"\nschedule = \"cron(0 20 ? * * *)\"\nmin_capacity = 0\n"
            ));
        }
        text
    };
    expect(many_actions, "targets[1].scheduled", "200 per target");
    let many_steps = |t: &str| {
        let mut text = t.to_owned();
        text.push_str(
            "[[targets.step_scaling]]\nname = \"many\"\nadjustment_type = \"ChangeInCapacity\"\n",
        );
        for i in 0..21 {
            let upper = if i == 20 {
                String::new()
            } else {
                format!("upper_bound = {}.0\n", i + 1)
            };
            text.push_str(&format!(
                "[[targets.step_scaling.steps]]\nlower_bound = {i}.0\n{upper}adjustment = 1\n"
            ));
        }
        text
    };
    expect(
        many_steps,
        "targets[1].step_scaling[2].steps",
        "20 per policy",
    );
}

/// "Target tracking scaling policies" (user guide): several target-tracking
/// policies on one target must each use a different metric.
#[test]
fn two_target_tracking_policies_need_two_metrics() {
    expect(
        |t| {
            t.replacen(
                "[[targets.scheduled]]",
                "[[targets.target_tracking]]\nname = \"tt2\"\npredefined_metric = \"SageMakerVariantInvocationsPerInstance\"\ntarget_value = 80.0\n[[targets.scheduled]]",
                1,
            )
        },
        "targets[0].target_tracking[1].predefined_metric",
        "same metric",
    );
}

/// Serverless provisioned concurrency is 1 to 200.
#[test]
fn provisioned_concurrency_is_1_to_200() {
    let serverless = |min: i32, max: i32| {
        format!(
            "[[targets]]\nresource_id = \"endpoint/sl/variant/AllTraffic\"\nscalable_dimension = \"sagemaker:variant:DesiredProvisionedConcurrency\"\nmin_capacity = {min}\nmax_capacity = {max}\n"
        )
    };
    validate(&file(&serverless(1, 200))).unwrap();
    for (min, max, field) in [(0, 10, "min_capacity"), (1, 201, "max_capacity")] {
        let err = validate(&file(&serverless(min, max))).unwrap_err();
        assert!(
            err.0
                .iter()
                .any(|p| p.field == format!("targets[0].{field}") && p.reason.contains("1 to 200")),
            "{min}..{max}: {err}"
        );
    }
}

/// "Scheduled scaling" (Application Auto Scaling user guide): the time zone
/// is an IANA name; a misspelt one is refused, not read as UTC. A min-only
/// action above the target's max would put min above max when it runs.
#[test]
fn schedule_zones_are_iana_names_and_min_only_actions_fit_under_max() {
    for bad in ["Europe/Berlinn", "Mars/Olympus", "PST"] {
        expect(
            |t| {
                t.replacen(
                    "min_capacity = 1\n\n",
                    &format!("min_capacity = 1\ntimezone = \"{bad}\"\n\n"),
                    1,
                )
            },
            "targets[0].scheduled[0].timezone",
            "IANA",
        );
    }
    validate(&file(&VALID.replacen(
        "min_capacity = 1\n\n",
        "min_capacity = 1\ntimezone = \"America/Argentina/Buenos_Aires\"\n\n",
        1,
    )))
    .unwrap();
    expect(
        |t| {
            t.replacen(
                "schedule = \"cron(0 20 ? * * *)\"\nmin_capacity = 1",
                "schedule = \"cron(0 20 ? * * *)\"\nmin_capacity = 5",
                1,
            )
        },
        "targets[0].scheduled[0].min_capacity",
        "above the target's max_capacity 4",
    );
}
