//! Tests of `aws`.

use super::{region_chain, AwsOptions, ACTIONS, CHECKED_PERMISSIONS};

/// The precedence the file model documents: --region, AWS_REGION, the
/// profile, the file. (One test: it sets process environment.)
#[tokio::test]
async fn the_region_comes_from_the_flag_the_environment_the_profile_then_the_file() {
    let dir = std::env::temp_dir().join(format!("inferlb-region-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let with_profile = dir.join("config");
    std::fs::write(&with_profile, "[default]\nregion = us-west-2\n").unwrap();
    let empty = dir.join("empty");
    std::fs::write(&empty, "").unwrap();
    std::env::set_var("AWS_SHARED_CREDENTIALS_FILE", &empty);
    std::env::remove_var("AWS_PROFILE");
    std::env::remove_var("AWS_DEFAULT_REGION");
    let region = |flag: Option<&str>| {
        let options = AwsOptions {
            region: flag.map(str::to_owned),
            ..AwsOptions::default()
        };
        async move {
            region_chain(&options, Some("ap-south-1"), true)
                .region()
                .await
                .map(|r| r.to_string())
        }
    };
    std::env::set_var("AWS_CONFIG_FILE", &with_profile);
    std::env::set_var("AWS_REGION", "eu-central-1");
    assert_eq!(
        region(Some("eu-west-1")).await.as_deref(),
        Some("eu-west-1")
    );
    assert_eq!(region(None).await.as_deref(), Some("eu-central-1"));
    std::env::remove_var("AWS_REGION");
    assert_eq!(region(None).await.as_deref(), Some("us-west-2"));
    std::env::set_var("AWS_CONFIG_FILE", &empty);
    assert_eq!(region(None).await.as_deref(), Some("ap-south-1"));
    for var in ["AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"] {
        std::env::remove_var(var);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every AWS call in the code, read from its call sites: a method called on
/// the Application Auto Scaling client (`aas`, or `client` in a helper) or
/// the CloudWatch client (`cw`), turned into its IAM action.
fn calls_in_source() -> Vec<String> {
    let source = concat!(
        include_str!("../aws.rs"),
        include_str!("read.rs"),
        include_str!("write.rs"),
        include_str!("../publish.rs")
    );
    let mut calls = Vec::new();
    for (dot, _) in source.match_indices('.') {
        let method: String = source[dot + 1..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || *c == '_')
            .collect();
        if method.is_empty() || !source[dot + 1 + method.len()..].starts_with("()") {
            continue;
        }
        let before = source[..dot].trim_end();
        let receiver = before
            .rsplit(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .next()
            .unwrap_or("");
        let service = match receiver {
            "aas" | "client" => "application-autoscaling",
            "cw" => "cloudwatch",
            _ => continue,
        };
        let action: String = method
            .split('_')
            .map(|w| w[..1].to_ascii_uppercase() + &w[1..])
            .collect();
        calls.push(format!("{service}:{action}"));
    }
    calls.sort();
    calls.dedup();
    calls
}

/// The condition keys in a call's request context, from the Service
/// Authorization Reference ("Actions, resources, and condition keys for
/// Application Auto Scaling" and "... for Amazon CloudWatch"): Application
/// Auto Scaling's `service-namespace` and `scalable-dimension` exist only
/// for the six actions that create, change or delete a target, policy or
/// scheduled action; `cloudwatch:namespace` only for `PutMetricData`.
fn context(action: &str) -> Vec<(&'static str, &'static str)> {
    match action {
        "application-autoscaling:RegisterScalableTarget"
        | "application-autoscaling:DeregisterScalableTarget"
        | "application-autoscaling:PutScalingPolicy"
        | "application-autoscaling:DeleteScalingPolicy"
        | "application-autoscaling:PutScheduledAction"
        | "application-autoscaling:DeleteScheduledAction" => vec![
            ("application-autoscaling:service-namespace", "sagemaker"),
            (
                "application-autoscaling:scalable-dimension",
                "sagemaker:variant:DesiredInstanceCount",
            ),
        ],
        "cloudwatch:PutMetricData" => vec![("cloudwatch:namespace", "inferlb")],
        "iam:CreateServiceLinkedRole" => vec![(
            "iam:AWSServiceName",
            "sagemaker.application-autoscaling.amazonaws.com",
        )],
        _ => Vec::new(),
    }
}

/// The resources a call is authorized against (in one account and region).
fn resources(action: &str) -> Vec<&'static str> {
    match action {
        "application-autoscaling:TagResource" | "application-autoscaling:ListTagsForResource" => {
            vec!["arn:aws:application-autoscaling:us-east-1:123456789012:scalable-target/056a1b2c3d4e5f"]
        }
        // The alarms inferlb names, and those target tracking creates (AWS
        // checks the caller may manage them).
        "cloudwatch:PutMetricAlarm" | "cloudwatch:DeleteAlarms" => vec![
            "arn:aws:cloudwatch:us-east-1:123456789012:alarm:inferlb-ep-AllTraffic-wake",
            "arn:aws:cloudwatch:us-east-1:123456789012:alarm:TargetTracking-endpoint/ep/variant/AllTraffic-AlarmHigh-1a2b",
        ],
        "sagemaker:DescribeEndpoint" | "sagemaker:UpdateEndpointWeightsAndCapacities" => {
            vec!["arn:aws:sagemaker:us-east-1:123456789012:endpoint/ep"]
        }
        "sagemaker:DescribeEndpointConfig" => {
            vec!["arn:aws:sagemaker:us-east-1:123456789012:endpoint-config/ep-config"]
        }
        "sagemaker:DescribeInferenceComponent" | "sagemaker:UpdateInferenceComponentRuntimeConfig" => {
            vec!["arn:aws:sagemaker:us-east-1:123456789012:inference-component/ic"]
        }
        "iam:CreateServiceLinkedRole" => vec!["arn:aws:iam::123456789012:role/aws-service-role/sagemaker.application-autoscaling.amazonaws.com/AWSServiceRoleForApplicationAutoScaling_SageMakerEndpoint"],
        // Describe and list calls (DescribeAlarms by name prefix among them)
        // and the writes on targets not yet registered: `*`.
        _ => vec!["*"],
    }
}

/// `pattern` with `*` wildcards matches `text`.
fn glob(pattern: &str, text: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == text,
        Some((head, rest)) => {
            text.starts_with(head)
                && (0..=text.len() - head.len()).any(|i| glob(rest, &text[head.len() + i..]))
        }
    }
}

fn list(value: &serde_json::Value) -> Vec<String> {
    match value {
        serde_json::Value::String(a) => vec![a.clone()],
        serde_json::Value::Array(items) => items
            .iter()
            .map(|a| a.as_str().unwrap().to_owned())
            .collect(),
        other => panic!("unexpected {other}"),
    }
}

/// Whether the policy allows `action` on `resource` with this request
/// context: an Allow statement whose action and resource match and whose
/// every condition holds (a key absent from the context fails it, as IAM
/// evaluates `StringEquals` and `StringLike`).
fn allows(policy: &serde_json::Value, action: &str, resource: &str) -> bool {
    let context = context(action);
    policy["Statement"].as_array().unwrap().iter().any(|s| {
        s["Effect"] == "Allow"
            && list(&s["Action"]).iter().any(|a| glob(a, action))
            && list(&s["Resource"]).iter().any(|r| {
                if resource == "*" {
                    r == "*"
                } else {
                    glob(r, resource)
                }
            })
            && s["Condition"].as_object().is_none_or(|conditions| {
                conditions.iter().all(|(operator, keys)| {
                    keys.as_object().unwrap().iter().all(|(key, wanted)| {
                        let Some((_, value)) = context.iter().find(|(k, _)| k == key) else {
                            return false;
                        };
                        list(wanted).iter().any(|w| match operator.as_str() {
                            "StringEquals" => w == value,
                            "StringLike" => glob(w, value),
                            other => panic!("operator {other} is not modelled"),
                        })
                    })
                })
            })
    })
}

/// The shipped policy lets every call the code makes succeed, condition keys
/// and resources included, and grants nothing else (Service Authorization
/// Reference for Application Auto Scaling, CloudWatch and SageMaker;
/// "Identity-based policy examples for Application Auto Scaling" for the
/// SageMaker and CloudWatch permissions it checks on the caller's behalf).
#[test]
fn the_iam_policy_allows_every_call_the_code_makes() {
    let policy: serde_json::Value = serde_json::from_str(include_str!(
        "../../../../deploy/iam/inferlb-autoscaler.json"
    ))
    .unwrap();
    let calls = calls_in_source();
    assert!(
        calls.len() >= 15,
        "the call sites were not found: {calls:?}"
    );
    let mut declared: Vec<String> = ACTIONS.iter().map(|a| (*a).to_owned()).collect();
    declared.sort();
    assert_eq!(calls, declared, "ACTIONS must list exactly the calls made");
    let mut needed: Vec<String> = calls.clone();
    needed.extend(CHECKED_PERMISSIONS.iter().map(|a| (*a).to_owned()));
    // AWS checks the caller may manage target tracking's alarms.
    needed.push("cloudwatch:DescribeAlarms".into());
    needed.push("iam:CreateServiceLinkedRole".into());
    for action in &needed {
        for resource in resources(action) {
            assert!(
                allows(&policy, action, resource),
                "{action} on {resource} is denied"
            );
        }
    }
    // Nothing beyond what is needed, and the limits that make it least
    // privilege hold.
    let mut granted: Vec<String> = policy["Statement"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| list(&s["Action"]))
        .collect();
    granted.sort();
    granted.dedup();
    needed.sort();
    needed.dedup();
    assert_eq!(granted, needed);
    let other_namespace =
        "arn:aws:application-autoscaling:us-east-1:123456789012:scalable-target/x";
    assert!(allows(
        &policy,
        "application-autoscaling:TagResource",
        other_namespace
    ));
    assert!(!allows(
        &policy,
        "cloudwatch:PutMetricAlarm",
        "arn:aws:cloudwatch:us-east-1:123456789012:alarm:someone-elses"
    ));
    assert!(!allows(
        &policy,
        "sagemaker:UpdateEndpointWeightsAndCapacities",
        "arn:aws:sagemaker:us-east-1:123456789012:model/m"
    ));
}

/// The evaluator above denies what IAM denies: the old policy's single
/// statement (every Application Auto Scaling action under the
/// `service-namespace` condition) fails the describe calls, whose request
/// context has no such key.
#[test]
fn a_condition_key_the_action_lacks_denies_the_call() {
    let old = serde_json::json!({"Statement": [{
        "Effect": "Allow",
        "Action": ["application-autoscaling:DescribeScalableTargets",
                   "application-autoscaling:RegisterScalableTarget"],
        "Resource": "*",
        "Condition": {"StringEquals": {"application-autoscaling:service-namespace": "sagemaker"}}
    }]});
    assert!(!allows(
        &old,
        "application-autoscaling:DescribeScalableTargets",
        "*"
    ));
    assert!(allows(
        &old,
        "application-autoscaling:RegisterScalableTarget",
        "*"
    ));
    assert!(glob("arn:*:alarm:inferlb-*", "arn:aws:alarm:inferlb-x"));
    assert!(!glob("arn:*:alarm:inferlb-*", "arn:aws:alarm:other"));
}
