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
    expect(
        |t| {
            t.replacen(
                "min_capacity = 1\nmax_capacity = 4",
                "min_capacity = 0\nmax_capacity = 4",
                1,
            )
        },
        "targets[0].min_capacity",
        "only for inference components",
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
                "lower_bound = 0.0\nadjustment = 1",
                &format!("lower_bound = {lo1}\nupper_bound = {hi1}\nadjustment = 1\n[[targets.step_scaling.steps]]\nlower_bound = {lo2}\nadjustment = 2"),
                1,
            )
        }
    };
    expect(
        two("0.0", "10.0", "5.0"),
        "targets[1].step_scaling[0].steps",
        "overlap",
    );
    expect(
        two("0.0", "10.0", "20.0"),
        "targets[1].step_scaling[0].steps",
        "gap",
    );
    expect(
        two("0.0", "0.0", "0.0"),
        "targets[1].step_scaling[0].steps",
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
