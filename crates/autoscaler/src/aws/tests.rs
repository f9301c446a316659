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
            region_chain(&options, Some("ap-south-1"))
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

#[test]
fn the_iam_policy_grants_exactly_the_calls_made_and_the_permissions_checked() {
    let policy: serde_json::Value = serde_json::from_str(include_str!(
        "../../../../deploy/iam/inferlb-autoscaler.json"
    ))
    .unwrap();
    let statements = policy["Statement"].as_array().unwrap();
    let actions = |s: &serde_json::Value| -> Vec<String> {
        match &s["Action"] {
            serde_json::Value::String(a) => vec![a.clone()],
            serde_json::Value::Array(list) => list
                .iter()
                .map(|a| a.as_str().unwrap().to_owned())
                .collect(),
            other => panic!("unexpected Action {other}"),
        }
    };
    let mut granted: Vec<String> = Vec::new();
    for statement in statements {
        assert_eq!(statement["Effect"], "Allow");
        granted.extend(actions(statement));
    }
    let mut expected: Vec<String> = ACTIONS
        .iter()
        .chain(CHECKED_PERMISSIONS.iter())
        .map(|a| (*a).to_owned())
        .collect();
    expected.push("iam:CreateServiceLinkedRole".into());
    granted.sort();
    expected.sort();
    assert_eq!(granted, expected);
    // Each call granted is one this module really makes; each permission
    // only checked is one it never calls.
    let source = concat!(
        include_str!("../aws.rs"),
        include_str!("read.rs"),
        include_str!("write.rs"),
        include_str!("../publish.rs")
    );
    for action in ACTIONS {
        let call = action.split(':').nth(1).unwrap();
        assert!(
            source.contains(&format!("(\"{call}\"")),
            "{call} is granted but never called"
        );
    }
    for permission in CHECKED_PERMISSIONS {
        let call = permission.split(':').nth(1).unwrap();
        assert!(
            !source.contains(&format!("(\"{call}\"")),
            "{call} is called: it belongs in ACTIONS"
        );
    }
    let by_sid = |sid: &str| {
        statements
            .iter()
            .find(|s| s["Sid"] == sid)
            .unwrap_or_else(|| panic!("no statement {sid}"))
    };
    // Application Auto Scaling only for SageMaker.
    let aas = by_sid("ApplicationAutoScalingForSageMakerOnly");
    assert_eq!(
        aas["Condition"]["StringEquals"]["application-autoscaling:service-namespace"],
        "sagemaker"
    );
    assert!(actions(aas)
        .iter()
        .all(|a| a.starts_with("application-autoscaling:")));
    // Alarms: only the ones inferlb names.
    let alarms = by_sid("ScaleToZeroAlarmsNamedByInferlb");
    assert_eq!(
        alarms["Resource"].as_str().unwrap(),
        format!(
            "arn:aws:cloudwatch:*:*:alarm:{}*",
            crate::model::ALARM_PREFIX
        )
    );
    // The proxy's metrics: only into its namespace.
    let publish = by_sid("ProxyConcurrencyMetrics");
    assert_eq!(actions(publish), ["cloudwatch:PutMetricData"]);
    assert_eq!(
        publish["Condition"]["StringEquals"]["cloudwatch:namespace"],
        "inferlb"
    );
    let slr = by_sid("SageMakerScalingServiceLinkedRole")["Resource"]
        .as_str()
        .unwrap();
    assert!(slr.ends_with("AWSServiceRoleForApplicationAutoScaling_SageMakerEndpoint"));
}
