//! The agent against a real `moto_server` (started by `cargo xtask test`,
//! which sets `INFERLB_MOTO_URL`). Every result is checked with Describe
//! calls of its own, never with the agent's own output alone.
//!
//! moto is looser than AWS (no pairing checks, no cascade on deregister, a
//! pagination loop): these tests show the calls are made and read back; the
//! local validation tests show AWS's rules are kept.

use std::io::{Read, Write};
use std::net::TcpStream;

use aws_config::BehaviorVersion;
use aws_sdk_applicationautoscaling as aas;
use aws_sdk_cloudwatch as cw;
use inferlb_autoscaler::plan::{Kind, Op};
use inferlb_autoscaler::{Agent, AgentError, AutoscalingFile, Aws};

/// moto is one server with one account: tests take turns and reset it.
static MOTO: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn moto_url() -> String {
    std::env::var("INFERLB_MOTO_URL").unwrap_or_else(|_| {
        panic!(
            "INFERLB_MOTO_URL is not set: these tests need moto_server. Run them with `cargo xtask test`, \
             which installs moto[server]==5.2.5 and starts it, or start xtask/moto/serve.py PORT yourself \
             and set INFERLB_MOTO_URL=http://127.0.0.1:PORT"
        )
    })
}

/// `POST /moto-api/reset`, over a plain socket.
fn reset(url: &str) {
    let addr = url.trim_start_matches("http://").trim_end_matches('/');
    let mut stream = TcpStream::connect(addr).expect("moto_server is reachable");
    write!(stream, "POST /moto-api/reset HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(
        response.starts_with("HTTP/1.1 200") || response.starts_with("HTTP/1.0 200"),
        "reset failed: {response}"
    );
}

struct Moto {
    _turn: tokio::sync::MutexGuard<'static, ()>,
    aas: aas::Client,
    cw: cw::Client,
}

async fn moto() -> Moto {
    let turn = MOTO.lock().await;
    let url = moto_url();
    reset(&url);
    let config = aws_config::defaults(BehaviorVersion::latest())
        .http_client(inferlb_autoscaler::aws::https_client())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(&url)
        .credentials_provider(aas::config::Credentials::new(
            "testing", "testing", None, None, "tests",
        ))
        .load()
        .await;
    Moto {
        _turn: turn,
        aas: aas::Client::new(&config),
        cw: cw::Client::new(&config),
    }
}

impl Moto {
    /// Changes a target's min/max behind the agent's back (the console, a
    /// schedule firing).
    async fn set_capacity(&self, resource_id: &str, min: i32, max: i32) {
        let dimension = if resource_id.starts_with("inference-component/") {
            aas::types::ScalableDimension::SageMakerInferenceComponentDesiredCopyCount
        } else {
            aas::types::ScalableDimension::SageMakerVariantDesiredInstanceCount
        };
        self.aas
            .register_scalable_target()
            .service_namespace(aas::types::ServiceNamespace::Sagemaker)
            .resource_id(resource_id)
            .scalable_dimension(dimension)
            .min_capacity(min)
            .max_capacity(max)
            .send()
            .await
            .unwrap();
    }

    fn agent(&self, file: &AutoscalingFile) -> Agent {
        Agent::new(
            Aws::from_clients(self.aas.clone(), self.cw.clone()),
            file.clone(),
        )
        .unwrap()
    }

    async fn target_ids(&self) -> Vec<(String, i32, i32)> {
        let out = self
            .aas
            .describe_scalable_targets()
            .service_namespace(aas::types::ServiceNamespace::Sagemaker)
            .send()
            .await
            .unwrap();
        out.scalable_targets()
            .iter()
            .map(|t| {
                (
                    t.resource_id().to_owned(),
                    t.min_capacity(),
                    t.max_capacity(),
                )
            })
            .collect()
    }

    async fn policy_names(&self) -> Vec<(String, String)> {
        let out = self
            .aas
            .describe_scaling_policies()
            .service_namespace(aas::types::ServiceNamespace::Sagemaker)
            .send()
            .await
            .unwrap();
        let mut names: Vec<_> = out
            .scaling_policies()
            .iter()
            .map(|p| (p.resource_id().to_owned(), p.policy_name().to_owned()))
            .collect();
        names.sort();
        names
    }

    async fn scheduled_names(&self) -> Vec<String> {
        let out = self
            .aas
            .describe_scheduled_actions()
            .service_namespace(aas::types::ServiceNamespace::Sagemaker)
            .send()
            .await
            .unwrap();
        out.scheduled_actions()
            .iter()
            .map(|s| s.scheduled_action_name().to_owned())
            .collect()
    }

    async fn alarms(&self) -> Vec<cw::types::MetricAlarm> {
        self.cw
            .describe_alarms()
            .send()
            .await
            .unwrap()
            .metric_alarms()
            .to_vec()
    }
}

fn example() -> AutoscalingFile {
    AutoscalingFile::from_toml(include_str!("../../../deploy/autoscaling.example.toml")).unwrap()
}

#[tokio::test]
async fn plan_apply_plan_is_idempotent() {
    let moto = moto().await;
    let file = example();
    let agent = moto.agent(&file);

    let plan = agent.plan().await.unwrap();
    assert_eq!(plan.changes.len(), 12, "{plan:?}");
    assert!(plan.changes.iter().all(|c| c.op == Op::Create));
    assert!(moto.target_ids().await.is_empty(), "plan changed something");

    let applied = agent.apply(false).await.unwrap();
    assert_eq!(applied.calls.len(), 12, "{:?}", applied.calls);
    let targets = moto.target_ids().await;
    // A target created while its business-hours schedule is in force
    // (weekdays 08:00-20:00 Berlin) gets the schedule's 2..=8, otherwise
    // the file's 1..=8: the window's bounds, whenever this test runs.
    let chat = file
        .targets
        .iter()
        .find(|t| t.resource_id == "endpoint/chat-llm/variant/AllTraffic")
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let (min, max) = inferlb_autoscaler::aas::bounds_at(chat, now, 400 * 86_400);
    assert!(matches!((min, max), (1, 8) | (2, 8)), "{min}..={max}");
    assert!(
        targets.contains(&("endpoint/chat-llm/variant/AllTraffic".into(), min, max)),
        "{targets:?}"
    );
    assert!(
        targets.contains(&("inference-component/chat-llm-ic".into(), 0, 4)),
        "{targets:?}"
    );
    assert_eq!(moto.policy_names().await.len(), 5);
    assert!(
        targets.contains(&("endpoint/batch-embed/variant/AllTraffic".into(), 0, 4)),
        "an asynchronous endpoint scales to zero: {targets:?}"
    );
    let mut scheduled = moto.scheduled_names().await;
    scheduled.sort();
    assert_eq!(scheduled, ["chat-llm-business-hours", "chat-llm-nights"]);

    let again = agent.plan().await.unwrap();
    assert!(again.is_empty(), "a second plan wants changes: {again:?}");
    let second = agent.apply(false).await.unwrap();
    assert!(
        second.calls.is_empty(),
        "a second apply made write calls: {:?}",
        second.calls
    );
}

#[tokio::test]
async fn scale_to_zero_alarm_triggers_the_step_policy() {
    let moto = moto().await;
    let file = example();
    moto.agent(&file).apply(false).await.unwrap();
    let policies = moto
        .aas
        .describe_scaling_policies()
        .service_namespace(aas::types::ServiceNamespace::Sagemaker)
        .resource_id("inference-component/chat-llm-ic")
        .send()
        .await
        .unwrap();
    let step = policies
        .scaling_policies()
        .iter()
        .find(|p| p.policy_name() == "chat-llm-ic-scale-out-from-zero")
        .expect("the step policy exists");
    assert_eq!(
        step.scalable_dimension().as_str(),
        "sagemaker:inference-component:DesiredCopyCount"
    );
    let alarms = moto.alarms().await;
    let alarm = alarms
        .iter()
        .find(|a| a.alarm_name() == Some("inferlb-chat-llm-ic-no-capacity"))
        .expect("the alarm exists");
    assert_eq!(alarm.namespace(), Some("AWS/SageMaker"));
    assert_eq!(alarm.metric_name(), Some("NoCapacityInvocationFailures"));
    // AWS's recipe ("Scale an endpoint to zero instances"): 60 s, Sum,
    // threshold 1, one evaluation period, one datapoint.
    assert_eq!(alarm.period(), Some(60));
    assert_eq!(alarm.statistic().map(|s| s.as_str()), Some("Sum"));
    assert_eq!(alarm.threshold(), Some(1.0));
    assert_eq!(
        (alarm.evaluation_periods(), alarm.datapoints_to_alarm()),
        (Some(1), Some(1))
    );
    // The async recipe watches HasBacklogWithoutCapacity on the endpoint.
    let backlog = alarms
        .iter()
        .find(|a| a.alarm_name() == Some("inferlb-batch-embed-no-capacity"))
        .expect("the async alarm exists");
    assert_eq!(backlog.metric_name(), Some("HasBacklogWithoutCapacity"));
    assert_eq!(backlog.dimensions()[0].value(), Some("batch-embed"));
    let dimension = &alarm.dimensions()[0];
    assert_eq!(
        (dimension.name(), dimension.value()),
        (Some("InferenceComponentName"), Some("chat-llm-ic"))
    );
    assert_eq!(alarm.alarm_actions(), [step.policy_arn().to_owned()]);
}

#[tokio::test]
async fn drift_is_planned_and_fixed() {
    let moto = moto().await;
    let file = example();
    let agent = moto.agent(&file);
    agent.apply(false).await.unwrap();
    // Someone lowers max capacity by hand, on the asynchronous endpoint (no
    // schedule, so the file owns its min/max): put back.
    moto.set_capacity("endpoint/batch-embed/variant/AllTraffic", 0, 2)
        .await;
    let plan = agent.plan().await.unwrap();
    assert_eq!(plan.changes.len(), 1, "{plan:?}");
    let change = &plan.changes[0];
    assert_eq!((change.op, change.kind), (Op::Update, Kind::ScalableTarget));
    assert!(
        change
            .differences
            .iter()
            .any(|d| d.contains("max_capacity: 2 -> 4")),
        "{:?}",
        change.differences
    );
    agent.apply(false).await.unwrap();
    assert!(moto.target_ids().await.contains(&(
        "endpoint/batch-embed/variant/AllTraffic".into(),
        0,
        4
    )));
    assert!(agent.plan().await.unwrap().is_empty());
    // Raised by hand instead: lowering it again would scale in at once,
    // past cooldowns (RegisterScalableTarget, API reference), so it is
    // reported, and set only with --reset-capacity.
    moto.set_capacity("endpoint/batch-embed/variant/AllTraffic", 0, 20)
        .await;
    let plan = agent.plan().await.unwrap();
    assert!(plan.is_empty(), "{plan:?}");
    assert!(
        plan.notes.iter().any(|n| n.contains("lower max")),
        "{:?}",
        plan.notes
    );
    agent
        .apply_with(
            false,
            inferlb_autoscaler::PlanOptions {
                reset_capacity: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(moto.target_ids().await.contains(&(
        "endpoint/batch-embed/variant/AllTraffic".into(),
        0,
        4
    )));
}

#[tokio::test]
async fn destroy_leaves_nothing_declared_and_spares_the_rest() {
    let moto = moto().await;
    let file = example();
    let agent = moto.agent(&file);
    agent.apply(false).await.unwrap();
    // A policy the file does not name, on a declared target.
    moto.aas
        .put_scaling_policy()
        .service_namespace(aas::types::ServiceNamespace::Sagemaker)
        .resource_id("endpoint/chat-llm/variant/AllTraffic")
        .scalable_dimension(aas::types::ScalableDimension::SageMakerVariantDesiredInstanceCount)
        .policy_name("someone-elses")
        .policy_type(aas::types::PolicyType::TargetTrackingScaling)
        .target_tracking_scaling_policy_configuration(
            aas::types::TargetTrackingScalingPolicyConfiguration::builder()
                .target_value(10.0)
                .predefined_metric_specification(
                    aas::types::PredefinedMetricSpecification::builder()
                        .predefined_metric_type(
                            aas::types::MetricType::SageMakerVariantInvocationsPerInstance,
                        )
                        .build()
                        .unwrap(),
                )
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let plan = agent.plan().await.unwrap();
    assert!(plan.is_empty());
    assert_eq!(
        plan.unmanaged,
        ["scaling policy \"someone-elses\" on endpoint/chat-llm/variant/AllTraffic"]
    );

    // DeregisterScalableTarget deletes every policy and scheduled action of
    // the target (Application Auto Scaling API reference): destroy refuses,
    // naming what it would take with it, and deletes nothing.
    let refused = agent.destroy(false, false).await.unwrap_err();
    let AgentError::WouldDeleteUnmanaged(list) = &refused else {
        panic!("{refused}")
    };
    assert_eq!(
        list,
        &["scaling policy \"someone-elses\" on endpoint/chat-llm/variant/AllTraffic"]
    );
    assert!(refused.to_string().contains("--force"), "{refused}");
    assert_eq!(
        moto.policy_names().await.len(),
        6,
        "a refused destroy deleted something"
    );

    let dry = agent.destroy(true, true).await.unwrap();
    assert!(dry.calls.is_empty());
    assert_eq!(
        moto.policy_names().await.len(),
        6,
        "a dry run deleted something"
    );

    let destroyed = agent.destroy(false, true).await.unwrap();
    assert_eq!(destroyed.calls.len(), 12, "{:?}", destroyed.calls);
    assert!(destroyed.calls[0].starts_with("DeleteAlarms"));
    assert!(destroyed
        .calls
        .last()
        .unwrap()
        .starts_with("DeregisterScalableTarget"));
    assert!(moto.target_ids().await.is_empty());
    assert!(moto.scheduled_names().await.is_empty());
    assert!(moto
        .alarms()
        .await
        .iter()
        .all(|a| !a.alarm_name().unwrap_or_default().starts_with("inferlb-")));
    // moto does not cascade, and the agent never relies on it: only the
    // undeclared policy is left.
    assert_eq!(
        moto.policy_names().await,
        [(
            "endpoint/chat-llm/variant/AllTraffic".to_owned(),
            "someone-elses".to_owned()
        )]
    );
    assert!(agent.destroy(false, true).await.unwrap().calls.is_empty());
}

/// A scheduled action fires by setting min/max ("Scheduled scaling for
/// Application Auto Scaling"): a plan right after it finds nothing to undo,
/// says the schedule set them, and `--reset-capacity` puts the file back.
#[tokio::test]
async fn a_schedule_firing_is_not_drift() {
    let moto = moto().await;
    let file = example();
    let agent = moto.agent(&file);
    agent.apply(false).await.unwrap();
    assert!(agent.plan().await.unwrap().is_empty());
    // "chat-llm-business-hours" fires: min 2, max 8.
    moto.set_capacity("endpoint/chat-llm/variant/AllTraffic", 2, 8)
        .await;
    let plan = agent.plan().await.unwrap();
    assert!(plan.is_empty(), "{}", inferlb_autoscaler::render(&plan));
    assert!(
        plan.notes.iter().any(|n| n.contains("set by schedule")),
        "{plan:?}"
    );
    let reset = agent
        .apply_with(
            false,
            inferlb_autoscaler::PlanOptions {
                reset_capacity: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(reset.calls.len(), 1, "{:?}", reset.calls);
    assert!(moto.target_ids().await.contains(&(
        "endpoint/chat-llm/variant/AllTraffic".into(),
        1,
        8
    )));
}

#[tokio::test]
async fn status_reads_back_what_exists() {
    let moto = moto().await;
    let file = example();
    let agent = moto.agent(&file);
    let before = agent.status().await.unwrap();
    assert!(before.iter().all(|t| !t.registered));
    agent.apply(false).await.unwrap();
    let after = agent.status().await.unwrap();
    let ic = after
        .iter()
        .find(|t| t.resource_id == "inference-component/chat-llm-ic")
        .unwrap();
    assert!(ic.registered);
    assert_eq!((ic.min_capacity, ic.max_capacity), (Some(0), Some(4)));
    assert_eq!(ic.policies.len(), 2);
    assert_eq!(ic.alarms.len(), 1);
}

#[tokio::test]
async fn run_corrects_drift_on_its_interval() {
    let moto = moto().await;
    let file = example();
    let agent = moto.agent(&file);
    agent.apply(false).await.unwrap();
    // Max lowered by hand: `run` puts it back.
    moto.set_capacity("inference-component/chat-llm-ic", 0, 2)
        .await;
    agent
        .run(
            std::time::Duration::from_millis(100),
            None,
            tokio::time::sleep(std::time::Duration::from_millis(700)),
        )
        .await;
    assert!(moto
        .target_ids()
        .await
        .contains(&("inference-component/chat-llm-ic".into(), 0, 4)));
    assert!(agent.plan().await.unwrap().is_empty());
}

/// Resources inferlb made carry its mark (alarm names start with
/// `inferlb-`): one the file no longer names is listed by `plan` and
/// deleted by `apply --prune`; alarms without the mark are never touched.
#[tokio::test]
async fn prune_deletes_only_marked_alarms_the_file_dropped() {
    let moto = moto().await;
    let file = example();
    let agent = moto.agent(&file);
    agent.apply(false).await.unwrap();
    for name in ["inferlb-old-component-no-capacity", "someone-elses-alarm"] {
        moto.cw
            .put_metric_alarm()
            .alarm_name(name)
            .namespace("AWS/SageMaker")
            .metric_name("NoCapacityInvocationFailures")
            .statistic(cw::types::Statistic::Sum)
            .period(60)
            .evaluation_periods(1)
            .threshold(1.0)
            .comparison_operator(cw::types::ComparisonOperator::GreaterThanOrEqualToThreshold)
            .send()
            .await
            .unwrap();
    }
    let plan = agent.plan().await.unwrap();
    assert!(plan.is_empty());
    assert_eq!(
        plan.prunable,
        ["alarm \"inferlb-old-component-no-capacity\""]
    );
    let pruned = agent
        .apply_with(
            false,
            inferlb_autoscaler::PlanOptions {
                prune: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        pruned.calls,
        ["DeleteAlarms \"inferlb-old-component-no-capacity\""]
    );
    let names: Vec<String> = moto
        .alarms()
        .await
        .iter()
        .filter_map(|a| a.alarm_name().map(str::to_owned))
        .collect();
    assert!(names.contains(&"someone-elses-alarm".to_owned()));
    assert!(!names.contains(&"inferlb-old-component-no-capacity".to_owned()));
    assert!(names.contains(&"inferlb-chat-llm-ic-no-capacity".to_owned()));
}

/// The proxy's signal reaches CloudWatch: one PutMetricData per interval,
/// every metric per pool with the `Pool` dimension and the configured ones,
/// readable back (ListMetrics, GetMetricStatistics).
#[tokio::test]
async fn per_pool_concurrency_is_published_to_cloudwatch() {
    use inferlb_autoscaler::publish::{PoolSample, Publisher, METRICS};
    let moto = moto().await;
    let publisher = Publisher::new(
        moto.cw.clone(),
        "inferlb".into(),
        true,
        vec![("EndpointName".into(), "chat-llm".into())],
    );
    let at = std::time::SystemTime::now();
    let sample = PoolSample {
        pool: "llama-3-8b".into(),
        in_flight: 14.0,
        in_flight_per_replica: 3.5,
        max_in_flight_per_replica: 6.0,
        requests: 120.0,
        errors_5xx: 2.0,
        queued: 0.0,
    };
    publisher.put(at, &[sample]).await.unwrap();
    let listed = moto
        .cw
        .list_metrics()
        .namespace("inferlb")
        .send()
        .await
        .unwrap();
    let mut names: Vec<&str> = listed
        .metrics()
        .iter()
        .filter_map(|m| m.metric_name())
        .collect();
    names.sort();
    let mut expected = METRICS.to_vec();
    expected.sort();
    assert_eq!(names, expected);
    let dims = listed.metrics()[0].dimensions();
    assert!(dims
        .iter()
        .any(|d| d.name() == Some("Pool") && d.value() == Some("llama-3-8b")));
    assert!(dims.iter().any(|d| d.name() == Some("EndpointName")));
    let stats = moto
        .cw
        .get_metric_statistics()
        .namespace("inferlb")
        .metric_name("InFlightPerReplica")
        .dimensions(
            cw::types::Dimension::builder()
                .name("Pool")
                .value("llama-3-8b")
                .build(),
        )
        .dimensions(
            cw::types::Dimension::builder()
                .name("EndpointName")
                .value("chat-llm")
                .build(),
        )
        .start_time(aws_smithy_types::DateTime::from(
            at - std::time::Duration::from_secs(600),
        ))
        .end_time(aws_smithy_types::DateTime::from(
            at + std::time::Duration::from_secs(600),
        ))
        .period(60)
        .statistics(cw::types::Statistic::Average)
        .send()
        .await
        .unwrap();
    let points = stats.datapoints();
    assert_eq!(points.len(), 1, "{points:?}");
    assert_eq!(points[0].average(), Some(3.5));
}
