//! Error paths, through a fault-injecting HTTP server that answers each AWS
//! call with a scripted response: throttling then success, a validation
//! error, a missing object. Each error must name the call, the resource and
//! AWS's message.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_sdk_applicationautoscaling as aas;
use inferlb_autoscaler::{Agent, AgentError, AutoscalingFile, Aws};

/// Decides the answer to one call: `(status, JSON body)`.
type Script = dyn Fn(&str, usize) -> (u16, String) + Send + Sync;

struct FaultServer {
    addr: SocketAddr,
    calls: Arc<Mutex<Vec<String>>>,
    /// Each call's operation and request body.
    bodies: Arc<Mutex<Vec<(String, String)>>>,
}

/// The operation name of an awsJson request (`X-Amz-Target: Service.Operation`).
fn operation(head: &str) -> String {
    head.lines()
        .find(|l| l.to_ascii_lowercase().starts_with("x-amz-target:"))
        .and_then(|l| l.split('.').next_back())
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

fn serve(script: Arc<Script>) -> FaultServer {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let calls = Arc::new(Mutex::new(Vec::new()));
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let (seen, kept) = (Arc::clone(&calls), Arc::clone(&bodies));
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let (script, seen, kept) = (Arc::clone(&script), Arc::clone(&seen), Arc::clone(&kept));
            thread::spawn(move || handle(stream, &*script, &seen, &kept));
        }
    });
    FaultServer {
        addr,
        calls,
        bodies,
    }
}

fn handle(
    mut stream: TcpStream,
    script: &Script,
    seen: &Mutex<Vec<String>>,
    kept: &Mutex<Vec<(String, String)>>,
) {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    loop {
        let mut buf = Vec::new();
        let mut byte = [0u8; 1];
        while !buf.ends_with(b"\r\n\r\n") {
            match stream.read(&mut byte) {
                Ok(1) => buf.push(byte[0]),
                _ => return,
            }
        }
        let head = String::from_utf8_lossy(&buf).into_owned();
        let length: usize = head
            .lines()
            .find(|l| l.to_ascii_lowercase().starts_with("content-length:"))
            .and_then(|l| l.split(':').nth(1))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; length];
        if stream.read_exact(&mut body).is_err() {
            return;
        }
        let op = operation(&head);
        kept.lock()
            .unwrap()
            .push((op.clone(), String::from_utf8_lossy(&body).into_owned()));
        let n = {
            let mut calls = seen.lock().unwrap();
            calls.push(op.clone());
            calls.iter().filter(|c| **c == op).count()
        };
        // CloudWatch speaks awsQuery (no X-Amz-Target): its only read, the
        // listing of inferlb's marked alarms, finds none.
        let (content_type, status, json) = if op.is_empty() {
            (
                "text/xml",
                200,
                r#"<DescribeAlarmsResponse xmlns="http://monitoring.amazonaws.com/doc/2010-08-01/"><DescribeAlarmsResult><MetricAlarms></MetricAlarms><CompositeAlarms></CompositeAlarms></DescribeAlarmsResult></DescribeAlarmsResponse>"#.to_owned(),
            )
        } else {
            let (status, json) = script(&op, n);
            ("application/x-amz-json-1.1", status, json)
        };
        let reply = format!(
            "HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{json}",
            json.len()
        );
        if stream.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}

async fn agent(server: &FaultServer, file: &AutoscalingFile) -> Agent {
    let config = aws_config::defaults(BehaviorVersion::latest())
        .http_client(inferlb_autoscaler::aws::https_client())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(format!("http://{}", server.addr))
        .credentials_provider(aas::config::Credentials::new(
            "testing", "testing", None, None, "tests",
        ))
        .retry_config(
            aws_config::retry::RetryConfig::standard()
                .with_max_attempts(4)
                .with_initial_backoff(Duration::from_millis(10)),
        )
        .load()
        .await;
    Agent::new(Aws::from_config(&config), file.clone()).unwrap()
}

fn variant_only() -> AutoscalingFile {
    AutoscalingFile::from_toml(
        r#"
[[targets]]
resource_id = "endpoint/ep/variant/AllTraffic"
min_capacity = 1
max_capacity = 3
[[targets.target_tracking]]
name = "tt"
predefined_metric = "SageMakerVariantInvocationsPerInstance"
target_value = 10.0
"#,
    )
    .unwrap()
}

const THROTTLED: &str = r#"{"__type":"ThrottlingException","message":"Rate exceeded"}"#;

#[tokio::test]
async fn throttling_is_retried_until_it_succeeds() {
    let script: Arc<Script> = Arc::new(|op: &str, n: usize| match (op, n) {
        ("DescribeScalableTargets", 1 | 2) => (400, THROTTLED.to_owned()),
        _ => (200, "{}".to_owned()),
    });
    let server = serve(script);
    let plan = agent(&server, &variant_only()).await.plan().await.unwrap();
    assert_eq!(plan.changes.len(), 2);
    let calls = server.calls.lock().unwrap().clone();
    // Three for the declared targets (two throttled), one for the listing
    // of targets inferlb marked.
    assert_eq!(
        calls
            .iter()
            .filter(|c| *c == "DescribeScalableTargets")
            .count(),
        4,
        "{calls:?}"
    );
}

#[tokio::test]
async fn throttling_past_the_attempt_limit_is_reported() {
    let script: Arc<Script> = Arc::new(|_: &str, _| (400, THROTTLED.to_owned()));
    let server = serve(script);
    let err = agent(&server, &variant_only())
        .await
        .plan()
        .await
        .unwrap_err();
    let AgentError::Aws(e) = &err else {
        panic!("{err}")
    };
    assert_eq!(e.call, "DescribeScalableTargets");
    assert_eq!(e.code, "ThrottlingException");
    assert_eq!(
        server.calls.lock().unwrap().len(),
        4,
        "attempts are bounded by max_attempts"
    );
    assert!(err.to_string().contains("Rate exceeded"), "{err}");
}

#[tokio::test]
async fn a_validation_error_names_the_call_and_the_resource() {
    let script: Arc<Script> = Arc::new(|op: &str, _| {
        match op {
        "PutScalingPolicy" => (
            400,
            r#"{"__type":"ValidationException","message":"Target value is out of range for this metric"}"#.to_owned(),
        ),
        "RegisterScalableTarget" => (200, r#"{"ScalableTargetARN":"arn:aws:application-autoscaling:x"}"#.to_owned()),
        _ => (200, "{}".to_owned()),
    }
    });
    let server = serve(script);
    let err = agent(&server, &variant_only())
        .await
        .apply(false)
        .await
        .unwrap_err();
    let text = err.to_string();
    for needle in [
        "PutScalingPolicy",
        "endpoint/ep/variant/AllTraffic",
        "\"tt\"",
        "ValidationException",
        "out of range",
    ] {
        assert!(text.contains(needle), "{text:?} lacks {needle:?}");
    }
    // The target was registered before its policy, and nothing was retried.
    let calls = server.calls.lock().unwrap().clone();
    let register = calls
        .iter()
        .position(|c| c == "RegisterScalableTarget")
        .unwrap();
    let put = calls.iter().position(|c| c == "PutScalingPolicy").unwrap();
    assert!(register < put);
    assert_eq!(calls.iter().filter(|c| *c == "PutScalingPolicy").count(), 1);
}

const REGISTERED: &str = r#"{"ScalableTargets":[{"ServiceNamespace":"sagemaker","ResourceId":"endpoint/ep/variant/AllTraffic","ScalableDimension":"sagemaker:variant:DesiredInstanceCount","MinCapacity":1,"MaxCapacity":3,"RoleARN":"arn:r","CreationTime":1700000000}]}"#;

/// Calls of one operation.
fn count(server: &FaultServer, op: &str) -> usize {
    server
        .calls
        .lock()
        .unwrap()
        .iter()
        .filter(|c| *c == op)
        .count()
}

// Application Auto Scaling API reference, DeregisterScalableTarget and
// DeleteScalingPolicy errors: ObjectNotFoundException means it is gone.
#[tokio::test]
async fn a_delete_of_something_already_gone_succeeds() {
    let script: Arc<Script> = Arc::new(|op: &str, _| {
        match op {
        "DescribeScalableTargets" => (200, REGISTERED.to_owned()),
        "DeregisterScalableTarget" => (
            400,
            r#"{"__type":"ObjectNotFoundException","message":"No scalable target registered for service namespace: sagemaker"}"#
                .to_owned(),
        ),
        _ => (200, "{}".to_owned()),
    }
    });
    let server = serve(script);
    let outcome = agent(&server, &variant_only())
        .await
        .destroy(false, false)
        .await
        .unwrap();
    assert_eq!(outcome.calls.len(), 1);
    assert_eq!(count(&server, "DeregisterScalableTarget"), 1, "not retried");
}

// "ConcurrentUpdateException: concurrent updates caused an exception" and
// FailedResourceAccessException (SageMaker throttling AAS: "Rate exceeded")
// are transient (Application Auto Scaling API reference, common errors).
#[tokio::test]
async fn concurrent_updates_and_failed_resource_access_are_retried() {
    for code in ["ConcurrentUpdateException", "FailedResourceAccessException"] {
        let script: Arc<Script> = Arc::new(move |op: &str, n| match (op, n) {
            ("RegisterScalableTarget", 1) => (
                400,
                format!(r#"{{"__type":"{code}","message":"Rate exceeded"}}"#),
            ),
            ("RegisterScalableTarget", _) => (200, r#"{"ScalableTargetARN":"arn:t"}"#.to_owned()),
            ("PutScalingPolicy", _) => (200, r#"{"PolicyARN":"arn:p","Alarms":[]}"#.to_owned()),
            _ => (200, "{}".to_owned()),
        });
        let server = serve(script);
        let outcome = agent(&server, &variant_only())
            .await
            .apply(false)
            .await
            .unwrap_or_else(|e| panic!("{code}: {e}"));
        assert_eq!(outcome.calls.len(), 2, "{code}");
        assert_eq!(count(&server, "RegisterScalableTarget"), 2, "{code}");
    }
}

// PutScalingPolicy right after RegisterScalableTarget may not find the new
// target yet (eventual consistency); the API reference says to retry.
#[tokio::test]
async fn a_policy_put_right_after_registering_is_retried_when_the_target_is_not_found_yet() {
    let script: Arc<Script> = Arc::new(|op: &str, n| match (op, n) {
        ("RegisterScalableTarget", _) => (200, r#"{"ScalableTargetARN":"arn:t"}"#.to_owned()),
        ("PutScalingPolicy", 1) => (
            400,
            r#"{"__type":"ObjectNotFoundException","message":"No scalable target registered"}"#
                .to_owned(),
        ),
        ("PutScalingPolicy", _) => (200, r#"{"PolicyARN":"arn:p","Alarms":[]}"#.to_owned()),
        _ => (200, "{}".to_owned()),
    });
    let server = serve(script);
    agent(&server, &variant_only())
        .await
        .apply(false)
        .await
        .unwrap();
    assert_eq!(count(&server, "PutScalingPolicy"), 2);
}

// LimitExceededException is a quota ("a per-account resource limit is
// exceeded"), not throttling: reported at once, not retried.
#[tokio::test]
async fn a_limit_exceeded_is_reported_not_retried() {
    let script: Arc<Script> = Arc::new(|op: &str, _| {
        match op {
        "RegisterScalableTarget" => (
            400,
            r#"{"__type":"LimitExceededException","message":"You have reached the maximum number of scalable targets"}"#
                .to_owned(),
        ),
        _ => (200, "{}".to_owned()),
    }
    });
    let server = serve(script);
    let err = agent(&server, &variant_only())
        .await
        .apply(false)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("LimitExceededException"), "{err}");
    assert!(err.to_string().contains("maximum number"), "{err}");
    assert_eq!(count(&server, "RegisterScalableTarget"), 1);
}

#[tokio::test]
async fn a_next_token_that_repeats_does_not_loop_forever() {
    let script: Arc<Script> = Arc::new(|op: &str, _| match op {
        "DescribeScalableTargets" => (
            200,
            r#"{"ScalableTargets":[],"NextToken":"same"}"#.to_owned(),
        ),
        _ => (200, "{}".to_owned()),
    });
    let server = serve(script);
    agent(&server, &variant_only()).await.plan().await.unwrap();
    let calls = server.calls.lock().unwrap().clone();
    // Two pages each for the declared targets and the marked-target listing.
    assert_eq!(
        calls
            .iter()
            .filter(|c| *c == "DescribeScalableTargets")
            .count(),
        4,
        "{calls:?}"
    );
}

// SageMaker requires deregistering a variant before changing its instance
// type ("Prerequisites", SageMaker autoscaling guide), so deployments replace
// resources under a running agent: a target whose resource is gone is
// skipped, the others reconciled.
#[tokio::test]
async fn run_skips_a_target_whose_resource_is_gone() {
    let file = AutoscalingFile::from_toml(
        r#"
[[targets]]
resource_id = "endpoint/gone/variant/AllTraffic"
min_capacity = 1
max_capacity = 3

[[targets]]
resource_id = "endpoint/ep/variant/AllTraffic"
min_capacity = 1
max_capacity = 3
"#,
    )
    .unwrap();
    // Registrations go in file order: the gone endpoint's first, then the
    // other's, in `apply` (calls 1 and 2) and in `run`'s pass (3 and 4).
    let script: Arc<Script> = Arc::new(move |op: &str, n| match (op, n) {
        ("RegisterScalableTarget", 1 | 3) => (
            400,
            r#"{"__type":"ValidationException","message":"The endpoint gone does not exist."}"#
                .to_owned(),
        ),
        ("RegisterScalableTarget", _) => (200, r#"{"ScalableTargetARN":"arn:t"}"#.to_owned()),
        _ => (200, "{}".to_owned()),
    });
    let server = serve(script);
    let agent = agent(&server, &file).await;
    // `apply` reports it, and registers the other target all the same...
    let err = agent.apply(false).await.unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");
    let AgentError::Failed { calls, errors, .. } = &err else {
        panic!("{err}")
    };
    assert_eq!(errors.len(), 1);
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert!(calls[0].contains("endpoint/ep/variant/AllTraffic"));
    // ...`run`'s pass skips it with a warning and reconciles the rest.
    let outcome = agent.reconcile().await.unwrap();
    assert_eq!(outcome.calls.len(), 1, "{:?}", outcome.calls);
    assert!(outcome.calls[0].contains("endpoint/ep/variant/AllTraffic"));
}

/// A validation error on one target does not stop the others: each
/// target's changes are made in order, a failure skips the rest of that
/// target's, and every error is listed with the calls that were made.
#[tokio::test]
async fn one_failing_target_does_not_stop_the_others() {
    let file = AutoscalingFile::from_toml(
        r#"
[[targets]]
resource_id = "endpoint/bad/variant/AllTraffic"
min_capacity = 1
max_capacity = 3
[[targets.target_tracking]]
name = "tt"
predefined_metric = "SageMakerVariantInvocationsPerInstance"
target_value = 10.0

[[targets]]
resource_id = "endpoint/ep/variant/AllTraffic"
min_capacity = 1
max_capacity = 3
[[targets.target_tracking]]
name = "tt"
predefined_metric = "SageMakerVariantInvocationsPerInstance"
target_value = 10.0

[[targets]]
resource_id = "endpoint/updating/variant/AllTraffic"
min_capacity = 1
max_capacity = 3
"#,
    )
    .unwrap();
    // Registrations in file order: the first fails validation, the third
    // finds its endpoint Updating.
    let script: Arc<Script> = Arc::new(|op: &str, n| {
        match (op, n) {
        ("RegisterScalableTarget", 1) => (
            400,
            r#"{"__type":"ValidationException","message":"Maximum capacity is above the account's quota"}"#.to_owned(),
        ),
        ("RegisterScalableTarget", 3) => (
            400,
            r#"{"__type":"ValidationException","message":"Endpoint updating is in Updating status"}"#.to_owned(),
        ),
        ("RegisterScalableTarget", _) => (200, r#"{"ScalableTargetARN":"arn:t"}"#.to_owned()),
        _ => (200, "{}".to_owned()),
    }
    });
    let server = serve(script);
    let err = agent(&server, &file).await.apply(false).await.unwrap_err();
    let AgentError::Failed { errors, calls, .. } = &err else {
        panic!("{err}")
    };
    assert_eq!(errors.len(), 2, "{err}");
    let text = err.to_string();
    for needle in [
        "endpoint/bad",
        "quota",
        "endpoint/updating",
        "Updating status",
    ] {
        assert!(text.contains(needle), "{text}");
    }
    assert_eq!(
        calls,
        &[
            "RegisterScalableTarget endpoint/ep/variant/AllTraffic".to_owned(),
            "PutScalingPolicy endpoint/ep/variant/AllTraffic \"tt\"".to_owned(),
        ],
        "the bad target's policy is not tried"
    );
    assert_eq!(count(&server, "PutScalingPolicy"), 1);
}

const REGISTERED_WITH_ARN: &str = r#"{"ScalableTargets":[{"ServiceNamespace":"sagemaker","ResourceId":"endpoint/ep/variant/AllTraffic","ScalableDimension":"sagemaker:variant:DesiredInstanceCount","MinCapacity":1,"MaxCapacity":3,"RoleARN":"arn:r","CreationTime":1700000000,"ScalableTargetARN":"arn:aws:application-autoscaling:us-east-1:1:scalable-target/abc"}]}"#;

// RegisterScalableTarget takes `Tags` only when it creates a target;
// afterwards tags change through TagResource (Application Auto Scaling API
// reference, "Tagging your resources"). moto 5.2.5 serves no tags, so the
// fault server plays the service.
#[tokio::test]
async fn declared_tags_and_the_mark_are_set_without_touching_capacity() {
    let file = AutoscalingFile::from_toml(
        r#"
[[targets]]
resource_id = "endpoint/ep/variant/AllTraffic"
min_capacity = 1
max_capacity = 3
tags = { team = "ml", cost-center = "42" }
"#,
    )
    .unwrap();
    let script: Arc<Script> = Arc::new(|op: &str, _| match op {
        "DescribeScalableTargets" => (200, REGISTERED_WITH_ARN.to_owned()),
        "ListTagsForResource" => (
            200,
            r#"{"Tags":{"team":"old","owner":"someone"}}"#.to_owned(),
        ),
        _ => (200, "{}".to_owned()),
    });
    let server = serve(script);
    let tagging = agent(&server, &file).await;
    let plan = tagging.plan().await.unwrap();
    assert_eq!(plan.changes.len(), 1, "{plan:?}");
    let tags = &plan.changes[0].differences[0];
    for needle in ["team", "cost-center", "inferlb:managed"] {
        assert!(tags.contains(needle), "{tags}");
    }
    assert!(
        !tags.contains("owner"),
        "someone else's tag is left alone: {tags}"
    );
    let outcome = tagging.apply(false).await.unwrap();
    assert_eq!(outcome.calls.len(), 1, "{:?}", outcome.calls);
    assert!(outcome.calls[0].starts_with("TagResource"));
    assert_eq!(
        count(&server, "RegisterScalableTarget"),
        0,
        "capacity untouched"
    );

    // A new target is registered with its tags and the mark.
    let script: Arc<Script> = Arc::new(|op: &str, _| match op {
        "RegisterScalableTarget" => (200, r#"{"ScalableTargetARN":"arn:t"}"#.to_owned()),
        _ => (200, "{}".to_owned()),
    });
    let server = serve(script);
    agent(&server, &file).await.apply(false).await.unwrap();
    let body = server
        .bodies
        .lock()
        .unwrap()
        .iter()
        .find(|(op, _)| op == "RegisterScalableTarget")
        .map(|(_, b)| b.clone())
        .unwrap();
    for needle in [
        "\"Tags\"",
        "\"team\":\"ml\"",
        "\"inferlb:managed\":\"true\"",
    ] {
        assert!(body.contains(needle), "{body}");
    }
}

/// A target inferlb registered (its `inferlb:managed` tag) and the file no
/// longer names is listed by `plan` and deregistered by `apply --prune`; an
/// unmarked one is never touched.
#[tokio::test]
async fn prune_deregisters_only_marked_targets_the_file_dropped() {
    const TARGETS: &str = r#"{"ScalableTargets":[
        {"ServiceNamespace":"sagemaker","ResourceId":"endpoint/old/variant/AllTraffic","ScalableDimension":"sagemaker:variant:DesiredInstanceCount","MinCapacity":1,"MaxCapacity":3,"RoleARN":"arn:r","CreationTime":1700000000,"ScalableTargetARN":"arn:aws:application-autoscaling:us-east-1:1:scalable-target/old"},
        {"ServiceNamespace":"sagemaker","ResourceId":"endpoint/theirs/variant/AllTraffic","ScalableDimension":"sagemaker:variant:DesiredInstanceCount","MinCapacity":1,"MaxCapacity":3,"RoleARN":"arn:r","CreationTime":1700000000,"ScalableTargetARN":"arn:aws:application-autoscaling:us-east-1:1:scalable-target/theirs"}]}"#;
    let script: Arc<Script> = Arc::new(|op: &str, n| match (op, n) {
        ("DescribeScalableTargets", _) => (200, TARGETS.to_owned()),
        // Tags are read in listing order: the old target's first.
        ("ListTagsForResource", n) if n % 2 == 1 => {
            (200, r#"{"Tags":{"inferlb:managed":"true"}}"#.to_owned())
        }
        ("ListTagsForResource", _) => (200, r#"{"Tags":{"team":"other"}}"#.to_owned()),
        ("RegisterScalableTarget", _) => (200, r#"{"ScalableTargetARN":"arn:t"}"#.to_owned()),
        ("PutScalingPolicy", _) => (200, r#"{"PolicyARN":"arn:p","Alarms":[]}"#.to_owned()),
        _ => (200, "{}".to_owned()),
    });
    let server = serve(script);
    let pruning = agent(&server, &variant_only()).await;
    let plan = pruning.plan().await.unwrap();
    assert_eq!(
        plan.prunable,
        ["scalable target endpoint/old/variant/AllTraffic"]
    );
    let outcome = pruning
        .apply_with(
            false,
            inferlb_autoscaler::PlanOptions {
                prune: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(
        outcome
            .calls
            .contains(&"DeregisterScalableTarget endpoint/old/variant/AllTraffic".to_owned()),
        "{:?}",
        outcome.calls
    );
    assert_eq!(count(&server, "DeregisterScalableTarget"), 1);
}

/// An update sends only the fields that differ (RegisterScalableTarget
/// leaves out what it is not given, API reference): a raised max goes
/// alone, never with min or a suspension state read earlier in the pass.
#[tokio::test]
async fn an_update_sends_only_what_differs() {
    let file = AutoscalingFile::from_toml(
        "[[targets]]\nresource_id = \"endpoint/ep/variant/AllTraffic\"\nmin_capacity = 1\nmax_capacity = 5\n",
    )
    .unwrap();
    let script: Arc<Script> = Arc::new(|op: &str, _| match op {
        "DescribeScalableTargets" => (200, REGISTERED.to_owned()),
        "RegisterScalableTarget" => (200, r#"{"ScalableTargetARN":"arn:t"}"#.to_owned()),
        _ => (200, "{}".to_owned()),
    });
    let server = serve(script);
    let outcome = agent(&server, &file).await.apply(false).await.unwrap();
    assert_eq!(outcome.calls.len(), 1, "{:?}", outcome.calls);
    let body = server
        .bodies
        .lock()
        .unwrap()
        .iter()
        .find(|(op, _)| op == "RegisterScalableTarget")
        .map(|(_, b)| b.clone())
        .unwrap();
    assert!(body.contains("\"MaxCapacity\":5"), "{body}");
    for absent in ["MinCapacity", "SuspendedState", "Tags"] {
        assert!(!body.contains(absent), "{absent} in {body}");
    }
}

/// A marked target the file dropped that still carries a scaling policy
/// or a scheduled action: `apply --prune` refuses (deregistering would
/// delete them, and inferlb cannot tell its own from anyone else's once
/// the file no longer names them) and makes no write call; `--force`
/// deregisters it.
#[tokio::test]
async fn prune_refuses_a_target_carrying_policies_unless_forced() {
    const TARGETS: &str = r#"{"ScalableTargets":[
        {"ServiceNamespace":"sagemaker","ResourceId":"endpoint/old/variant/AllTraffic","ScalableDimension":"sagemaker:variant:DesiredInstanceCount","MinCapacity":1,"MaxCapacity":3,"RoleARN":"arn:r","CreationTime":1700000000,"ScalableTargetARN":"arn:aws:application-autoscaling:us-east-1:1:scalable-target/old"}]}"#;
    let script: Arc<Script> = Arc::new(|op: &str, _| {
        match op {
        "DescribeScalableTargets" => (200, TARGETS.to_owned()),
        "ListTagsForResource" => (200, r#"{"Tags":{"inferlb:managed":"true"}}"#.to_owned()),
        "DescribeScheduledActions" => (
            200,
            r#"{"ScheduledActions":[{"ScheduledActionName":"someone-elses","ScheduledActionARN":"arn:s","ServiceNamespace":"sagemaker","Schedule":"cron(0 8 * * ? *)","ResourceId":"endpoint/old/variant/AllTraffic","ScalableDimension":"sagemaker:variant:DesiredInstanceCount","CreationTime":1700000000}]}"#
                .to_owned(),
        ),
        _ => (200, "{}".to_owned()),
    }
    });
    let server = serve(script);
    let file = AutoscalingFile::from_toml("").unwrap();
    let pruning = agent(&server, &file).await;
    let prune = |force| inferlb_autoscaler::PlanOptions {
        prune: true,
        force,
        ..Default::default()
    };
    let err = pruning.apply_with(false, prune(false)).await.unwrap_err();
    let AgentError::WouldDeleteUnmanaged(list) = &err else {
        panic!("{err}")
    };
    assert_eq!(
        list,
        &["scheduled action \"someone-elses\" on endpoint/old/variant/AllTraffic".to_owned()]
    );
    assert!(err.to_string().contains("--force"), "{err}");
    assert_eq!(count(&server, "DeregisterScalableTarget"), 0);
    let outcome = pruning.apply_with(false, prune(true)).await.unwrap();
    assert_eq!(
        outcome.calls,
        ["DeregisterScalableTarget endpoint/old/variant/AllTraffic"]
    );
}

/// `status` shows the alarms Application Auto Scaling made for target
/// tracking and asks for the activities that did not scale, with their
/// reasons (DescribeScalingActivities `IncludeNotScaledActivities`).
#[tokio::test]
async fn status_shows_tracking_alarms_and_why_nothing_scaled() {
    let script: Arc<Script> = Arc::new(|op: &str, _| {
        match op {
        "DescribeScalableTargets" => (200, REGISTERED.to_owned()),
        "DescribeScalingPolicies" => (
            200,
            r#"{"ScalingPolicies":[{"PolicyARN":"arn:p","PolicyName":"tt","ServiceNamespace":"sagemaker","ResourceId":"endpoint/ep/variant/AllTraffic","ScalableDimension":"sagemaker:variant:DesiredInstanceCount","PolicyType":"TargetTrackingScaling","TargetTrackingScalingPolicyConfiguration":{"TargetValue":10.0,"PredefinedMetricSpecification":{"PredefinedMetricType":"SageMakerVariantInvocationsPerInstance"}},"Alarms":[{"AlarmName":"TargetTracking-endpoint/ep/variant/AllTraffic-AlarmHigh-1","AlarmARN":"arn:a"}],"CreationTime":1700000000}]}"#
                .to_owned(),
        ),
        "DescribeScalingActivities" => (
            200,
            r#"{"ScalingActivities":[{"ActivityId":"a1","ServiceNamespace":"sagemaker","ResourceId":"endpoint/ep/variant/AllTraffic","ScalableDimension":"sagemaker:variant:DesiredInstanceCount","Description":"Attempting to set desired capacity","Cause":"monitor alarm","StartTime":1700000000,"StatusCode":"Successful","NotScaledReasons":[{"Code":"AlreadyAtMaxCapacity","MaxCapacity":3}]}]}"#
                .to_owned(),
        ),
        _ => (200, "{}".to_owned()),
    }
    });
    let server = serve(script);
    let status = agent(&server, &variant_only())
        .await
        .status()
        .await
        .unwrap();
    assert_eq!(
        status[0].tracking_alarms,
        ["TargetTracking-endpoint/ep/variant/AllTraffic-AlarmHigh-1"]
    );
    let activities = status[0].activities.as_ref().unwrap();
    assert!(
        activities[0].contains("not scaled: AlreadyAtMaxCapacity"),
        "{activities:?}"
    );
    let body = server
        .bodies
        .lock()
        .unwrap()
        .iter()
        .find(|(op, _)| op == "DescribeScalingActivities")
        .map(|(_, b)| b.clone())
        .unwrap();
    assert!(
        body.contains("\"IncludeNotScaledActivities\":true"),
        "{body}"
    );
}
