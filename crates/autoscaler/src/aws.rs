//! Application Auto Scaling and CloudWatch: reading the current state,
//! making a plan's calls, and turning SDK errors into messages that name the
//! call, the resource and AWS's reason.

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::BehaviorVersion;
use aws_sdk_applicationautoscaling as aas;
use aws_sdk_cloudwatch as cw;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use aws_smithy_types::DateTime;

use crate::model::{
    AutoscalingFile, CustomizedMetric, MetricDimension, MetricQuery, Scheduled, StepScaling,
    Suspended, Target, TargetTracking,
};
use crate::plan::{
    epoch_seconds, Change, Current, CurrentAlarm, CurrentPolicy, CurrentScheduled, CurrentTarget,
    Kind, Op, Plan, PolicyShape, ALARM_NAMESPACE,
};

/// Pages read from one paginated Describe call before giving up: a service
/// (or an emulator) that keeps returning a next token must not hang the agent.
pub const MAX_PAGES: usize = 100;

/// Every API action the agent calls, as IAM names them; the IAM policy in
/// `deploy/iam/inferlb-autoscaler.json` grants exactly these (a test checks).
pub const ACTIONS: [&str; 16] = [
    "cloudwatch:PutMetricData",
    "application-autoscaling:RegisterScalableTarget",
    "application-autoscaling:TagResource",
    "application-autoscaling:ListTagsForResource",
    "application-autoscaling:DeregisterScalableTarget",
    "application-autoscaling:DescribeScalableTargets",
    "application-autoscaling:PutScalingPolicy",
    "application-autoscaling:DeleteScalingPolicy",
    "application-autoscaling:DescribeScalingPolicies",
    "application-autoscaling:PutScheduledAction",
    "application-autoscaling:DeleteScheduledAction",
    "application-autoscaling:DescribeScheduledActions",
    "application-autoscaling:DescribeScalingActivities",
    "cloudwatch:PutMetricAlarm",
    "cloudwatch:DescribeAlarms",
    "cloudwatch:DeleteAlarms",
];

/// Permissions the agent never calls but Application Auto Scaling checks on
/// the caller's behalf when it registers a SageMaker target or scales it:
/// the caller must be allowed to describe and update the endpoint or
/// inference component ("Identity-based policy examples for Application Auto
/// Scaling", permissions required for SageMaker). The IAM policy grants
/// these too.
pub const CHECKED_PERMISSIONS: [&str; 5] = [
    "sagemaker:DescribeEndpoint",
    "sagemaker:DescribeEndpointConfig",
    "sagemaker:UpdateEndpointWeightsAndCapacities",
    "sagemaker:DescribeInferenceComponent",
    "sagemaker:UpdateInferenceComponentRuntimeConfig",
];

/// A failed AWS call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{call} for {resource} failed: {code}: {message}")]
pub struct AwsError {
    /// The API call, e.g. `PutScalingPolicy`.
    pub call: &'static str,
    /// The resource it was about.
    pub resource: String,
    /// AWS's error code (`ValidationException`, `ThrottlingException`, ...)
    /// or the kind of transport failure.
    pub code: String,
    /// AWS's message.
    pub message: String,
}

pub(crate) fn aws_error<E, R>(
    call: &'static str,
    resource: &str,
    err: aws_smithy_runtime_api::client::result::SdkError<E, R>,
) -> AwsError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    use aws_smithy_runtime_api::client::result::SdkError;
    let (code, message) = match &err {
        SdkError::ServiceError(service) => {
            let e = service.err();
            (
                e.code().unwrap_or("ServiceError").to_owned(),
                e.message().unwrap_or("no message").to_owned(),
            )
        }
        SdkError::TimeoutError(_) => ("Timeout".to_owned(), "the call timed out".to_owned()),
        SdkError::DispatchFailure(d) => (
            "DispatchFailure".to_owned(),
            d.as_connector_error()
                .map(|c| {
                    format!(
                        "{}",
                        aws_smithy_types::error::display::DisplayErrorContext(c)
                    )
                })
                .unwrap_or_else(|| format!("{d:?}")),
        ),
        other => (
            "Error".to_owned(),
            format!(
                "{}",
                aws_smithy_types::error::display::DisplayErrorContext(other)
            ),
        ),
    };
    AwsError {
        call,
        resource: resource.to_owned(),
        code,
        message,
    }
}

/// The HTTP client of every AWS call: hyper over rustls with ring, so the
/// build needs no C toolchain for aws-lc. Plain `http://` (an emulator) works
/// through it too.
pub fn https_client() -> aws_smithy_runtime_api::client::http::SharedHttpClient {
    aws_smithy_http_client::Builder::new()
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https()
}

/// How to reach AWS.
#[derive(Debug, Clone, Default)]
pub struct AwsOptions {
    /// Region; else the file's, else the default chain's.
    pub region: Option<String>,
    /// Shared-config profile.
    pub profile: Option<String>,
    /// Endpoint override, e.g. an emulator at `http://127.0.0.1:5000`.
    pub endpoint_url: Option<String>,
    /// Attempts per call, throttling and 5xx included (default 5).
    pub max_attempts: Option<u32>,
}

/// Clients for the two services the agent calls.
#[derive(Debug, Clone)]
pub struct Aws {
    aas: aas::Client,
    cw: cw::Client,
}

/// A delete whose object is already gone (`ObjectNotFoundException`) did
/// what it was for: success, logged.
fn gone_is_done(e: AwsError) -> Result<(), AwsError> {
    if e.code == "ObjectNotFoundException" {
        tracing::info!(call = e.call, resource = %e.resource, "already gone");
        Ok(())
    } else {
        Err(e)
    }
}

/// The region, in the order the file model documents: `--region`, then
/// `AWS_REGION`, then the profile's, then the file's `region`, then the
/// instance's (IMDS).
fn region_chain(
    options: &AwsOptions,
    file_region: Option<&str>,
) -> aws_config::meta::region::RegionProviderChain {
    use aws_config::meta::region::RegionProviderChain;
    use aws_config::Region;
    let mut profile = aws_config::profile::ProfileFileRegionProvider::builder();
    if let Some(name) = &options.profile {
        profile = profile.profile_name(name);
    }
    RegionProviderChain::first_try(options.region.clone().map(Region::new))
        .or_else(aws_config::environment::EnvironmentVariableRegionProvider::new())
        .or_else(profile.build())
        .or_else(file_region.map(|r| Region::new(r.to_owned())))
        .or_else(
            aws_config::imds::region::ImdsRegionProvider::builder()
                .configure(
                    &aws_config::provider_config::ProviderConfig::without_region()
                        .with_http_client(https_client()),
                )
                .build(),
        )
}

fn namespace() -> aas::types::ServiceNamespace {
    aas::types::ServiceNamespace::Sagemaker
}

fn dimension_of(target: &Target) -> aas::types::ScalableDimension {
    aas::types::ScalableDimension::from(target.dimension().unwrap_or_default().as_str())
}

fn build_err(call: &'static str, resource: &str, e: impl std::fmt::Display) -> AwsError {
    AwsError {
        call,
        resource: resource.to_owned(),
        code: "InvalidInput".into(),
        message: e.to_string(),
    }
}

fn datetime(text: &str) -> Option<DateTime> {
    epoch_seconds(text).map(DateTime::from_secs)
}

impl Aws {
    /// Loads credentials and region through aws-config's default chain
    /// (environment, profile, web identity, ECS, IMDS) with the overrides
    /// given, over rustls with ring, with standard retries and backoff.
    pub async fn connect(options: &AwsOptions, file_region: Option<&str>) -> Self {
        let retry = RetryConfig::standard()
            .with_max_attempts(options.max_attempts.unwrap_or(5).max(1))
            .with_initial_backoff(Duration::from_millis(200));
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .http_client(https_client())
            .retry_config(retry);
        if let Some(profile) = &options.profile {
            loader = loader.profile_name(profile);
        }
        loader = loader.region(region_chain(options, file_region));
        if let Some(url) = &options.endpoint_url {
            loader = loader.endpoint_url(url);
        }
        let config = loader.load().await;
        Self::from_config(&config)
    }

    /// Clients from a loaded config, with [`crate::retry::AAS_ERRORS`] on the Application
    /// Auto Scaling client.
    pub fn from_config(config: &aws_config::SdkConfig) -> Self {
        let aas_config = aas::config::Builder::from(config)
            .retry_classifier(crate::retry::AAS_ERRORS)
            .build();
        Self {
            aas: aas::Client::from_conf(aas_config),
            cw: cw::Client::new(config),
        }
    }

    /// From existing clients (tests).
    pub fn from_clients(aas: aas::Client, cw: cw::Client) -> Self {
        Self { aas, cw }
    }

    /// The Application Auto Scaling client, for callers that need more.
    pub fn autoscaling(&self) -> &aas::Client {
        &self.aas
    }

    /// The CloudWatch client.
    pub fn cloudwatch(&self) -> &cw::Client {
        &self.cw
    }

    /// Reads what AWS has for the resources the file names.
    pub async fn read(&self, file: &AutoscalingFile) -> Result<Current, AwsError> {
        let mut current = Current::default();
        let ids: Vec<String> = file.targets.iter().map(|t| t.resource_id.clone()).collect();
        if ids.is_empty() {
            return Ok(current);
        }
        let targets = all_pages(|token| {
            let request = self
                .aas
                .describe_scalable_targets()
                .service_namespace(namespace())
                .set_resource_ids(Some(ids.clone()))
                .set_next_token(token);
            async {
                let out = request
                    .send()
                    .await
                    .map_err(|e| aws_error("DescribeScalableTargets", &ids.join(", "), e))?;
                Ok((
                    out.scalable_targets().to_vec(),
                    out.next_token().map(str::to_owned),
                ))
            }
        })
        .await?;
        for t in targets {
            if !ids.iter().any(|id| id == t.resource_id())
                || current.target(t.resource_id()).is_some()
            {
                continue;
            }
            let s = t.suspended_state();
            let flag =
                |f: fn(&aas::types::SuspendedState) -> Option<bool>| s.and_then(f).unwrap_or(false);
            let arn = t.scalable_target_arn().map(str::to_owned);
            // Tags are read only for targets that declare some: one call
            // less per target and tick for everyone else.
            let declares_tags = file
                .targets
                .iter()
                .any(|d| d.resource_id == t.resource_id() && !d.tags.is_empty());
            let tags = match &arn {
                Some(arn) if declares_tags => self.tags_of(arn).await?,
                _ => None,
            };
            current.targets.push(CurrentTarget {
                resource_id: t.resource_id().to_owned(),
                dimension: t.scalable_dimension().as_str().to_owned(),
                min_capacity: t.min_capacity(),
                max_capacity: t.max_capacity(),
                arn,
                tags,
                suspended: Suspended {
                    dynamic_scaling_in: flag(
                        aas::types::SuspendedState::dynamic_scaling_in_suspended,
                    ),
                    dynamic_scaling_out: flag(
                        aas::types::SuspendedState::dynamic_scaling_out_suspended,
                    ),
                    scheduled_scaling: flag(
                        aas::types::SuspendedState::scheduled_scaling_suspended,
                    ),
                },
            });
        }
        for target in &file.targets {
            self.read_policies(target, &mut current).await?;
            self.read_scheduled(target, &mut current).await?;
        }
        let alarms: Vec<String> = file.targets.iter().filter_map(Target::alarm_name).collect();
        if !alarms.is_empty() {
            self.read_alarms(&alarms, &mut current).await?;
        }
        current.marked_alarms = self.marked_alarms().await?;
        Ok(current)
    }

    /// A target's tags; `None` where the service (or an emulator) does not
    /// offer tags.
    async fn tags_of(
        &self,
        arn: &str,
    ) -> Result<Option<std::collections::BTreeMap<String, String>>, AwsError> {
        // One attempt: an emulator without tags answers 500, and a reading
        // of tags is not worth a run of backoffs; `run` tries again next tick.
        let once = aas::config::Builder::default()
            .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(1));
        match self
            .aas
            .list_tags_for_resource()
            .resource_arn(arn)
            .customize()
            .config_override(once)
            .send()
            .await
        {
            Ok(out) => Ok(Some(
                out.tags()
                    .map(|t| t.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                    .unwrap_or_default(),
            )),
            Err(e) => {
                let err = aws_error("ListTagsForResource", arn, e);
                let unsupported = err.code.contains("NotImplemented")
                    || err.code == "Error"
                    || err.code == "ServiceError"
                    || err.code == "UnknownOperationException";
                if unsupported {
                    Ok(None)
                } else {
                    Err(err)
                }
            }
        }
    }

    async fn read_policies(&self, target: &Target, current: &mut Current) -> Result<(), AwsError> {
        let policies = all_pages(|token| {
            let request = self
                .aas
                .describe_scaling_policies()
                .service_namespace(namespace())
                .resource_id(&target.resource_id)
                .scalable_dimension(dimension_of(target))
                .set_next_token(token);
            async {
                let out = request
                    .send()
                    .await
                    .map_err(|e| aws_error("DescribeScalingPolicies", &target.resource_id, e))?;
                Ok((
                    out.scaling_policies().to_vec(),
                    out.next_token().map(str::to_owned),
                ))
            }
        })
        .await?;
        for p in policies {
            if p.resource_id() != target.resource_id
                || current.policy(p.resource_id(), p.policy_name()).is_some()
            {
                continue;
            }
            let policy = if let Some(tt) = p.target_tracking_scaling_policy_configuration() {
                PolicyShape::TargetTracking {
                    predefined_metric: tt
                        .predefined_metric_specification()
                        .map(|m| m.predefined_metric_type().as_str().to_owned()),
                    customized_metric: tt.customized_metric_specification().map(customized_of),
                    target_value: tt.target_value(),
                    scale_out_cooldown_s: tt.scale_out_cooldown(),
                    scale_in_cooldown_s: tt.scale_in_cooldown(),
                    disable_scale_in: tt.disable_scale_in().unwrap_or(false),
                }
            } else {
                let step = p.step_scaling_policy_configuration();
                PolicyShape::StepScaling {
                    adjustment_type: step
                        .and_then(|s| s.adjustment_type())
                        .map(|a| a.as_str().to_owned()),
                    steps: step
                        .map(|s| {
                            s.step_adjustments()
                                .iter()
                                .map(|a| {
                                    (
                                        a.metric_interval_lower_bound(),
                                        a.metric_interval_upper_bound(),
                                        a.scaling_adjustment(),
                                    )
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                    cooldown_s: step.and_then(|s| s.cooldown()),
                    metric_aggregation_type: step
                        .and_then(|s| s.metric_aggregation_type())
                        .map(|m| m.as_str().to_owned()),
                    min_adjustment_magnitude: step.and_then(|s| s.min_adjustment_magnitude()),
                }
            };
            current.policies.push(CurrentPolicy {
                resource_id: p.resource_id().to_owned(),
                name: p.policy_name().to_owned(),
                arn: p.policy_arn().to_owned(),
                policy,
                alarms: p
                    .alarms()
                    .iter()
                    .map(|a| a.alarm_name().to_owned())
                    .collect(),
            });
        }
        Ok(())
    }

    async fn read_scheduled(&self, target: &Target, current: &mut Current) -> Result<(), AwsError> {
        let actions = all_pages(|token| {
            let request = self
                .aas
                .describe_scheduled_actions()
                .service_namespace(namespace())
                .resource_id(&target.resource_id)
                .scalable_dimension(dimension_of(target))
                .set_next_token(token);
            async {
                let out = request
                    .send()
                    .await
                    .map_err(|e| aws_error("DescribeScheduledActions", &target.resource_id, e))?;
                Ok((
                    out.scheduled_actions().to_vec(),
                    out.next_token().map(str::to_owned),
                ))
            }
        })
        .await?;
        for s in actions {
            if s.resource_id() != target.resource_id
                || current
                    .scheduled(s.resource_id(), s.scheduled_action_name())
                    .is_some()
            {
                continue;
            }
            let action = s.scalable_target_action();
            current.scheduled.push(CurrentScheduled {
                resource_id: s.resource_id().to_owned(),
                name: s.scheduled_action_name().to_owned(),
                schedule: s.schedule().to_owned(),
                timezone: s.timezone().map(str::to_owned),
                start_time: s.start_time().map(DateTime::secs),
                end_time: s.end_time().map(DateTime::secs),
                min_capacity: action.and_then(|a| a.min_capacity()),
                max_capacity: action.and_then(|a| a.max_capacity()),
            });
        }
        Ok(())
    }

    async fn read_alarms(&self, names: &[String], current: &mut Current) -> Result<(), AwsError> {
        let alarms = all_pages(|token| {
            let request = self
                .cw
                .describe_alarms()
                .set_alarm_names(Some(names.to_vec()))
                .set_next_token(token);
            async {
                let out = request
                    .send()
                    .await
                    .map_err(|e| aws_error("DescribeAlarms", &names.join(", "), e))?;
                Ok((
                    out.metric_alarms().to_vec(),
                    out.next_token().map(str::to_owned),
                ))
            }
        })
        .await?;
        for a in alarms {
            let name = a.alarm_name().unwrap_or_default();
            if !names.iter().any(|n| n == name) || current.alarm(name).is_some() {
                continue;
            }
            current.alarms.push(CurrentAlarm {
                name: name.to_owned(),
                namespace: a.namespace().map(str::to_owned),
                metric_name: a.metric_name().map(str::to_owned),
                dimensions: a
                    .dimensions()
                    .iter()
                    .map(|d| {
                        (
                            d.name().unwrap_or_default().to_owned(),
                            d.value().unwrap_or_default().to_owned(),
                        )
                    })
                    .collect(),
                period_s: a.period(),
                evaluation_periods: a.evaluation_periods(),
                datapoints_to_alarm: a.datapoints_to_alarm(),
                statistic: a.statistic().map(|s| s.as_str().to_owned()),
                threshold: a.threshold(),
                comparison_operator: a.comparison_operator().map(|c| c.as_str().to_owned()),
                treat_missing_data: a.treat_missing_data().map(str::to_owned),
                actions_enabled: a.actions_enabled(),
                actions: a.alarm_actions().to_vec(),
                state: a.state_value().map(|s| s.as_str().to_owned()),
            });
        }
        Ok(())
    }

    /// Every SageMaker scalable target carrying inferlb's mark (the
    /// `inferlb:managed` tag) that `file` does not declare: `(resource id,
    /// dimension)`. Targets whose tags cannot be read count as unmarked.
    pub async fn marked_targets(
        &self,
        file: &AutoscalingFile,
    ) -> Result<Vec<(String, String)>, AwsError> {
        let all = all_pages(|token| {
            let request = self
                .aas
                .describe_scalable_targets()
                .service_namespace(namespace())
                .set_next_token(token);
            async {
                let out = request
                    .send()
                    .await
                    .map_err(|e| aws_error("DescribeScalableTargets", "sagemaker", e))?;
                Ok((
                    out.scalable_targets().to_vec(),
                    out.next_token().map(str::to_owned),
                ))
            }
        })
        .await?;
        let mut marked = Vec::new();
        for t in all {
            if file
                .targets
                .iter()
                .any(|d| d.resource_id == t.resource_id())
            {
                continue;
            }
            let Some(arn) = t.scalable_target_arn() else {
                continue;
            };
            let (key, value) = crate::model::MANAGED_TAG;
            let tags = self.tags_of(arn).await?.unwrap_or_default();
            if tags.get(key).map(String::as_str) == Some(value) {
                marked.push((
                    t.resource_id().to_owned(),
                    t.scalable_dimension().as_str().to_owned(),
                ));
            }
        }
        Ok(marked)
    }

    /// The names of every alarm carrying inferlb's mark.
    async fn marked_alarms(&self) -> Result<Vec<String>, AwsError> {
        let prefix = crate::model::ALARM_PREFIX;
        let alarms = all_pages(|token| {
            let request = self
                .cw
                .describe_alarms()
                .alarm_name_prefix(prefix)
                .set_next_token(token);
            async {
                let out = request
                    .send()
                    .await
                    .map_err(|e| aws_error("DescribeAlarms", &format!("{prefix}*"), e))?;
                Ok((
                    out.metric_alarms().to_vec(),
                    out.next_token().map(str::to_owned),
                ))
            }
        })
        .await?;
        Ok(alarms
            .iter()
            .filter_map(|a| a.alarm_name())
            .filter(|n| n.starts_with(prefix))
            .map(str::to_owned)
            .collect())
    }

    /// Makes a plan's calls in its order. Returns the calls made.
    pub async fn execute(
        &self,
        file: &AutoscalingFile,
        plan: &Plan,
        current: &Current,
    ) -> Result<Vec<String>, AwsError> {
        let mut made = Vec::new();
        let mut arns: Vec<(String, String, String)> = current
            .policies
            .iter()
            .map(|p| (p.resource_id.clone(), p.name.clone(), p.arn.clone()))
            .collect();
        for change in &plan.changes {
            if change.kind == Kind::ScalableTarget
                && change.op == Op::Delete
                && !file
                    .targets
                    .iter()
                    .any(|t| t.resource_id == change.resource_id)
            {
                // A pruned target (marked, no longer in the file): its
                // dimension is in the change's name.
                self.aas
                    .deregister_scalable_target()
                    .service_namespace(namespace())
                    .resource_id(&change.resource_id)
                    .scalable_dimension(aas::types::ScalableDimension::from(change.name.as_str()))
                    .send()
                    .await
                    .map(drop)
                    .map_err(|e| aws_error("DeregisterScalableTarget", &change.resource_id, e))
                    .or_else(gone_is_done)?;
                made.push(format!("DeregisterScalableTarget {}", change.resource_id));
                continue;
            }
            if change.kind == Kind::Alarm
                && change.op == Op::Delete
                && change.resource_id.is_empty()
            {
                // A pruned alarm: no declared target.
                self.cw
                    .delete_alarms()
                    .alarm_names(&change.name)
                    .send()
                    .await
                    .map_err(|e| aws_error("DeleteAlarms", &change.name, e))?;
                made.push(format!("DeleteAlarms {:?}", change.name));
                continue;
            }
            let target = file
                .targets
                .iter()
                .find(|t| t.resource_id == change.resource_id);
            let Some(target) = target else { continue };
            let call = self.make(change, target, current, &mut arns).await?;
            made.push(format!(
                "{call} {}{}",
                change.resource_id,
                if change.name.is_empty() {
                    String::new()
                } else {
                    format!(" {:?}", change.name)
                }
            ));
        }
        Ok(made)
    }

    /// Makes one change with the call (or calls) it needs; returns their
    /// names for the report.
    async fn make(
        &self,
        change: &Change,
        target: &Target,
        current: &Current,
        arns: &mut Vec<(String, String, String)>,
    ) -> Result<&'static str, AwsError> {
        match change.kind {
            Kind::ScalableTarget => self.make_target(change, target, current).await,
            Kind::ScalingPolicy => self.make_policy(change, target, arns).await,
            Kind::ScheduledAction => self.make_scheduled(change, target).await,
            Kind::Alarm => self.make_alarm(change, target, arns).await,
        }
    }

    /// Sets a scalable target's tags to the file's (TagResource).
    async fn tag(&self, arn: &str, target: &Target) -> Result<(), AwsError> {
        self.aas
            .tag_resource()
            .resource_arn(arn)
            .set_tags(Some(target.desired_tags().into_iter().collect()))
            .send()
            .await
            .map(drop)
            .map_err(|e| aws_error("TagResource", &target.resource_id, e))
    }

    async fn make_target(
        &self,
        change: &Change,
        target: &Target,
        current: &Current,
    ) -> Result<&'static str, AwsError> {
        let id = target.resource_id.as_str();
        let retag = change.differences.iter().any(|d| d.starts_with("tags"));
        match change.op {
            Op::Update if change.differences.iter().all(|d| d.starts_with("tags")) => {
                // Only tags: TagResource (RegisterScalableTarget applies
                // tags only when it creates the target).
                let arn = current
                    .target(id)
                    .and_then(|t| t.arn.clone())
                    .ok_or_else(|| build_err("TagResource", id, "the target's ARN is unknown"))?;
                self.tag(&arn, target).await?;
                Ok("TagResource")
            }
            Op::Create | Op::Update => {
                // An update that does not change min/max (a schedule owns
                // them, say) registers the values AWS has now.
                let changes_capacity = change.op == Op::Create
                    || change
                        .differences
                        .iter()
                        .any(|d| d.starts_with("min_capacity") || d.starts_with("max_capacity"));
                let (min, max) = match current.target(id) {
                    Some(c) if !changes_capacity => (c.min_capacity, c.max_capacity),
                    _ => (target.min_capacity, target.max_capacity),
                };
                let s = target
                    .suspended
                    .or_else(|| current.target(id).map(|c| c.suspended))
                    .unwrap_or_default();
                let mut request = self
                    .aas
                    .register_scalable_target()
                    .service_namespace(namespace())
                    .resource_id(id)
                    .scalable_dimension(dimension_of(target))
                    .min_capacity(min)
                    .max_capacity(max);
                if change.op == Op::Create {
                    for (key, value) in target.desired_tags() {
                        request = request.tags(key, value);
                    }
                }
                request
                    .suspended_state(
                        aas::types::SuspendedState::builder()
                            .dynamic_scaling_in_suspended(s.dynamic_scaling_in)
                            .dynamic_scaling_out_suspended(s.dynamic_scaling_out)
                            .scheduled_scaling_suspended(s.scheduled_scaling)
                            .build(),
                    )
                    .send()
                    .await
                    .map_err(|e| aws_error("RegisterScalableTarget", id, e))?;
                let arn = current.target(id).and_then(|t| t.arn.clone());
                if let (Op::Update, true, Some(arn)) = (change.op, retag, arn) {
                    self.tag(&arn, target).await?;
                    return Ok("RegisterScalableTarget, TagResource");
                }
                Ok("RegisterScalableTarget")
            }
            Op::Delete => {
                self.aas
                    .deregister_scalable_target()
                    .service_namespace(namespace())
                    .resource_id(id)
                    .scalable_dimension(dimension_of(target))
                    .send()
                    .await
                    .map(drop)
                    .map_err(|e| aws_error("DeregisterScalableTarget", id, e))
                    .or_else(gone_is_done)?;
                Ok("DeregisterScalableTarget")
            }
        }
    }

    async fn make_policy(
        &self,
        change: &Change,
        target: &Target,
        arns: &mut Vec<(String, String, String)>,
    ) -> Result<&'static str, AwsError> {
        let id = target.resource_id.as_str();
        match change.op {
            Op::Create | Op::Update => {
                let resource = format!("{id} policy {:?}", change.name);
                let request = self
                    .aas
                    .put_scaling_policy()
                    .service_namespace(namespace())
                    .resource_id(id)
                    .scalable_dimension(dimension_of(target))
                    .policy_name(&change.name);
                let request = if let Some(tt) = target
                    .target_tracking
                    .iter()
                    .find(|p| p.name == change.name)
                {
                    request
                        .policy_type(aas::types::PolicyType::TargetTrackingScaling)
                        .target_tracking_scaling_policy_configuration(target_tracking_config(
                            tt, &resource,
                        )?)
                } else if let Some(step) =
                    target.step_scaling.iter().find(|p| p.name == change.name)
                {
                    request
                        .policy_type(aas::types::PolicyType::StepScaling)
                        .step_scaling_policy_configuration(step_config(step, &resource)?)
                } else {
                    return Err(build_err(
                        "PutScalingPolicy",
                        &resource,
                        "the policy is not in the file",
                    ));
                };
                let out = request
                    .customize()
                    .config_override(crate::retry::not_found_yet())
                    .send()
                    .await
                    .map_err(|e| aws_error("PutScalingPolicy", &resource, e))?;
                arns.retain(|(r, n, _)| !(r == id && n == &change.name));
                arns.push((
                    id.to_owned(),
                    change.name.clone(),
                    out.policy_arn().to_owned(),
                ));
                Ok("PutScalingPolicy")
            }
            Op::Delete => {
                let resource = format!("{id} policy {:?}", change.name);
                self.aas
                    .delete_scaling_policy()
                    .service_namespace(namespace())
                    .resource_id(id)
                    .scalable_dimension(dimension_of(target))
                    .policy_name(&change.name)
                    .send()
                    .await
                    .map(drop)
                    .map_err(|e| aws_error("DeleteScalingPolicy", &resource, e))
                    .or_else(gone_is_done)?;
                Ok("DeleteScalingPolicy")
            }
        }
    }

    async fn make_scheduled(
        &self,
        change: &Change,
        target: &Target,
    ) -> Result<&'static str, AwsError> {
        let id = target.resource_id.as_str();
        match change.op {
            Op::Create | Op::Update => {
                let resource = format!("{id} scheduled action {:?}", change.name);
                let Some(s) = target.scheduled.iter().find(|s| s.name == change.name) else {
                    return Err(build_err(
                        "PutScheduledAction",
                        &resource,
                        "the action is not in the file",
                    ));
                };
                put_scheduled(&self.aas, target, s)
                    .customize()
                    .config_override(crate::retry::not_found_yet())
                    .send()
                    .await
                    .map_err(|e| aws_error("PutScheduledAction", &resource, e))?;
                Ok("PutScheduledAction")
            }
            Op::Delete => {
                let resource = format!("{id} scheduled action {:?}", change.name);
                self.aas
                    .delete_scheduled_action()
                    .service_namespace(namespace())
                    .resource_id(id)
                    .scalable_dimension(dimension_of(target))
                    .scheduled_action_name(&change.name)
                    .send()
                    .await
                    .map(drop)
                    .map_err(|e| aws_error("DeleteScheduledAction", &resource, e))
                    .or_else(gone_is_done)?;
                Ok("DeleteScheduledAction")
            }
        }
    }

    async fn make_alarm(
        &self,
        change: &Change,
        target: &Target,
        arns: &[(String, String, String)],
    ) -> Result<&'static str, AwsError> {
        let id = target.resource_id.as_str();
        match change.op {
            Op::Create | Op::Update => {
                let resource = format!("alarm {:?} of {id}", change.name);
                let spec = target.alarm().ok_or_else(|| {
                    build_err(
                        "PutMetricAlarm",
                        &resource,
                        "no scale-to-zero recipe in the file",
                    )
                })?;
                let arn = arns
                    .iter()
                    .find(|(r, n, _)| r == id && n == &spec.step_policy)
                    .map(|(_, _, arn)| arn.clone())
                    .ok_or_else(|| {
                        build_err(
                            "PutMetricAlarm",
                            &resource,
                            "the step policy has no ARN yet",
                        )
                    })?;
                let dimension = cw::types::Dimension::builder()
                    .name(spec.dimension_name)
                    .value(&spec.dimension_value)
                    .build();
                self.cw
                    .put_metric_alarm()
                    .alarm_name(&change.name)
                    .alarm_description(format!(
                        "Managed by inferlb: adds capacity to {id} when requests find none (scale to zero)."
                    ))
                    .namespace(ALARM_NAMESPACE)
                    .metric_name(spec.metric_name)
                    .dimensions(dimension)
                    .statistic(cw::types::Statistic::from(spec.statistic.as_str()))
                    .period(spec.period_s)
                    .evaluation_periods(spec.evaluation_periods)
                    .datapoints_to_alarm(spec.datapoints_to_alarm)
                    .threshold(spec.threshold)
                    .comparison_operator(cw::types::ComparisonOperator::from(
                        spec.comparison_operator.as_str(),
                    ))
                    .treat_missing_data(&spec.treat_missing_data)
                    .actions_enabled(spec.actions_enabled)
                    .alarm_actions(arn)
                    .send()
                    .await
                    .map_err(|e| aws_error("PutMetricAlarm", &resource, e))?;
                Ok("PutMetricAlarm")
            }
            Op::Delete => {
                let resource = format!("alarm {:?} of {id}", change.name);
                self.cw
                    .delete_alarms()
                    .alarm_names(&change.name)
                    .send()
                    .await
                    .map_err(|e| aws_error("DeleteAlarms", &resource, e))?;
                Ok("DeleteAlarms")
            }
        }
    }

    /// Recent scaling activities of a target, newest first; `Ok(None)` where
    /// the service (or an emulator) does not offer them.
    pub async fn activities(
        &self,
        target: &Target,
        max: i32,
    ) -> Result<Option<Vec<String>>, AwsError> {
        let result = self
            .aas
            .describe_scaling_activities()
            .service_namespace(namespace())
            .resource_id(&target.resource_id)
            .scalable_dimension(dimension_of(target))
            .max_results(max)
            // Also the evaluations that did not scale, with AAS's reasons
            // (e.g. "AlreadyAtMaxCapacity"): what an operator asks first.
            .include_not_scaled_activities(true)
            .send()
            .await;
        match result {
            Ok(out) => Ok(Some(
                out.scaling_activities()
                    .iter()
                    .map(|a| {
                        let reasons: Vec<String> = a
                            .not_scaled_reasons()
                            .iter()
                            .map(|r| r.code().to_owned())
                            .collect();
                        let mut line = format!(
                            "{} {}: {}",
                            a.start_time(),
                            a.status_code().as_str(),
                            a.description()
                        );
                        if !reasons.is_empty() {
                            line.push_str(&format!(" (not scaled: {})", reasons.join(", ")));
                        }
                        line
                    })
                    .collect(),
            )),
            Err(e) => {
                let err = aws_error("DescribeScalingActivities", &target.resource_id, e);
                let unsupported = err.code.contains("NotImplemented")
                    || err.message.contains("not yet been implemented")
                    || err.code == "Error"
                    || err.code == "ServiceError";
                if unsupported {
                    Ok(None)
                } else {
                    Err(err)
                }
            }
        }
    }
}

/// Every item of a paginated Describe call. `page` makes one call with the
/// given token and returns that page's items and the next token. At most
/// [`MAX_PAGES`] pages are read, and a repeated token ends the listing.
async fn all_pages<T, F, Fut>(mut page: F) -> Result<Vec<T>, AwsError>
where
    F: FnMut(Option<String>) -> Fut,
    Fut: std::future::Future<Output = Result<(Vec<T>, Option<String>), AwsError>>,
{
    let mut items = Vec::new();
    let mut token = None;
    let mut seen = Vec::new();
    for _ in 0..MAX_PAGES {
        let (mut page_items, next) = page(token.take()).await?;
        items.append(&mut page_items);
        token = next_token(next.as_deref(), &mut seen);
        if token.is_none() {
            break;
        }
    }
    Ok(items)
}

/// The next page token, or `None` when the listing is done or a token
/// repeats (some emulators return the same token forever).
fn next_token(token: Option<&str>, seen: &mut Vec<String>) -> Option<String> {
    let token = token.filter(|t| !t.is_empty())?;
    if seen.iter().any(|s| s == token) {
        tracing::warn!(
            token,
            "a Describe call returned a page token again; stopping there"
        );
        return None;
    }
    seen.push(token.to_owned());
    Some(token.to_owned())
}

fn target_tracking_config(
    p: &TargetTracking,
    resource: &str,
) -> Result<aas::types::TargetTrackingScalingPolicyConfiguration, AwsError> {
    let mut config = aas::types::TargetTrackingScalingPolicyConfiguration::builder()
        .target_value(p.target_value)
        .disable_scale_in(p.disable_scale_in)
        .set_scale_out_cooldown(p.scale_out_cooldown_s)
        .set_scale_in_cooldown(p.scale_in_cooldown_s);
    if let Some(metric) = &p.predefined_metric {
        config = config.predefined_metric_specification(
            aas::types::PredefinedMetricSpecification::builder()
                .predefined_metric_type(aas::types::MetricType::from(metric.as_str()))
                .build()
                .map_err(|e| build_err("PutScalingPolicy", resource, e))?,
        );
    }
    if let Some(custom) = &p.customized_metric {
        config = config.customized_metric_specification(customized_spec(custom, resource)?);
    }
    config
        .build()
        .map_err(|e| build_err("PutScalingPolicy", resource, e))
}

/// A declared customized metric in the SDK's shape: one metric, or metric
/// math queries.
fn customized_spec(
    custom: &CustomizedMetric,
    resource: &str,
) -> Result<aas::types::CustomizedMetricSpecification, AwsError> {
    let dimension = |d: &MetricDimension| {
        aas::types::MetricDimension::builder()
            .name(&d.name)
            .value(&d.value)
            .build()
            .map_err(|e| build_err("PutScalingPolicy", resource, e))
    };
    let mut spec = aas::types::CustomizedMetricSpecification::builder();
    if custom.metrics.is_empty() {
        spec = spec
            .namespace(&custom.namespace)
            .metric_name(&custom.metric_name)
            .statistic(aas::types::MetricStatistic::from(custom.statistic.as_str()))
            .set_unit(custom.unit.clone());
        for d in &custom.dimensions {
            spec = spec.dimensions(dimension(d)?);
        }
    }
    for q in &custom.metrics {
        let mut query = aas::types::TargetTrackingMetricDataQuery::builder()
            .id(&q.id)
            .set_expression(q.expression.clone())
            .set_label(q.label.clone())
            .return_data(q.return_data);
        if let (Some(namespace), Some(name), Some(statistic)) =
            (&q.namespace, &q.metric_name, &q.statistic)
        {
            let mut metric = aas::types::TargetTrackingMetric::builder()
                .namespace(namespace)
                .metric_name(name);
            for d in &q.dimensions {
                metric = metric.dimensions(
                    aas::types::TargetTrackingMetricDimension::builder()
                        .name(&d.name)
                        .value(&d.value)
                        .build()
                        .map_err(|e| build_err("PutScalingPolicy", resource, e))?,
                );
            }
            query = query.metric_stat(
                aas::types::TargetTrackingMetricStat::builder()
                    .metric(metric.build())
                    .stat(statistic)
                    .set_unit(q.unit.clone())
                    .build()
                    .map_err(|e| build_err("PutScalingPolicy", resource, e))?,
            );
        }
        spec = spec.metrics(
            query
                .build()
                .map_err(|e| build_err("PutScalingPolicy", resource, e))?,
        );
    }
    Ok(spec.build())
}

/// A customized metric as AWS returns it, in the file's vocabulary.
fn customized_of(m: &aas::types::CustomizedMetricSpecification) -> CustomizedMetric {
    let dims = |list: &[aas::types::MetricDimension]| {
        list.iter()
            .map(|d| MetricDimension {
                name: d.name().to_owned(),
                value: d.value().to_owned(),
            })
            .collect()
    };
    CustomizedMetric {
        namespace: m.namespace().unwrap_or_default().to_owned(),
        metric_name: m.metric_name().unwrap_or_default().to_owned(),
        statistic: m
            .statistic()
            .map(|s| s.as_str().to_owned())
            .unwrap_or_default(),
        unit: m.unit().map(str::to_owned),
        dimensions: dims(m.dimensions()),
        metrics: m
            .metrics()
            .iter()
            .map(|q| {
                let stat = q.metric_stat();
                let metric = stat.and_then(|s| s.metric());
                MetricQuery {
                    id: q.id().to_owned(),
                    expression: q.expression().map(str::to_owned),
                    namespace: metric.and_then(|m| m.namespace()).map(str::to_owned),
                    metric_name: metric.and_then(|m| m.metric_name()).map(str::to_owned),
                    dimensions: metric
                        .map(|m| {
                            m.dimensions()
                                .iter()
                                .map(|d| MetricDimension {
                                    name: d.name().to_owned(),
                                    value: d.value().to_owned(),
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                    statistic: stat.map(|s| s.stat().to_owned()),
                    unit: stat.and_then(|s| s.unit()).map(str::to_owned),
                    label: q.label().map(str::to_owned),
                    return_data: q.return_data().unwrap_or(false),
                }
            })
            .collect(),
    }
}

fn step_config(
    p: &StepScaling,
    resource: &str,
) -> Result<aas::types::StepScalingPolicyConfiguration, AwsError> {
    let mut config = aas::types::StepScalingPolicyConfiguration::builder()
        .adjustment_type(aas::types::AdjustmentType::from(p.adjustment_type.as_str()))
        .set_cooldown(p.cooldown_s)
        .set_min_adjustment_magnitude(p.min_adjustment_magnitude)
        .set_metric_aggregation_type(
            p.metric_aggregation_type
                .as_deref()
                .map(aas::types::MetricAggregationType::from),
        );
    for step in &p.steps {
        config = config.step_adjustments(
            aas::types::StepAdjustment::builder()
                .set_metric_interval_lower_bound(step.lower_bound)
                .set_metric_interval_upper_bound(step.upper_bound)
                .scaling_adjustment(step.adjustment)
                .build()
                .map_err(|e| build_err("PutScalingPolicy", resource, e))?,
        );
    }
    Ok(config.build())
}

fn put_scheduled(
    client: &aas::Client,
    target: &Target,
    s: &Scheduled,
) -> aas::operation::put_scheduled_action::builders::PutScheduledActionFluentBuilder {
    client
        .put_scheduled_action()
        .service_namespace(namespace())
        .resource_id(&target.resource_id)
        .scalable_dimension(dimension_of(target))
        .scheduled_action_name(&s.name)
        .schedule(&s.schedule)
        .set_timezone(s.timezone.clone())
        .set_start_time(s.start_time.as_deref().and_then(datetime))
        .set_end_time(s.end_time.as_deref().and_then(datetime))
        .scalable_target_action(
            aas::types::ScalableTargetAction::builder()
                .set_min_capacity(s.min_capacity)
                .set_max_capacity(s.max_capacity)
                .build(),
        )
}

#[cfg(test)]
mod tests;
