//! Making a plan's calls, one change at a time, in the plan's order.

use aws_sdk_applicationautoscaling as aas;
use aws_sdk_cloudwatch as cw;

use crate::model::{
    AutoscalingFile, CustomizedMetric, MetricDimension, Scheduled, StepScaling, Target,
    TargetTracking,
};
use crate::plan::{Change, Current, Kind, Op, Plan, ALARM_NAMESPACE};

use super::*;

/// What carrying out a plan did.
#[derive(Debug, Default)]
pub struct Executed {
    /// The write calls made, in order.
    pub made: Vec<String>,
    /// The changes that failed, one per target at most (its later changes
    /// were not tried).
    pub failed: Vec<AwsError>,
}

/// How far back a registration looks for the scheduled actions in force.
const SCHEDULE_LOOKBACK_S: i64 = 400 * 86_400;

impl Aws {
    /// Makes a plan's calls in its order, one target at a time: a change
    /// that fails skips the rest of its target's changes (a policy needs its
    /// target, an alarm its policy) and the other targets go on. Returns the
    /// calls made and the errors, all of them.
    pub async fn execute(
        &self,
        file: &AutoscalingFile,
        plan: &Plan,
        current: &Current,
    ) -> Executed {
        let mut out = Executed::default();
        let mut arns: Vec<(String, String, String)> = current
            .policies
            .iter()
            .map(|p| (p.resource_id.clone(), p.name.clone(), p.arn.clone()))
            .collect();
        let mut failed: Vec<&str> = Vec::new();
        for change in &plan.changes {
            // A pruned alarm has no target: its name stands for it.
            let owner = if change.resource_id.is_empty() {
                change.name.as_str()
            } else {
                change.resource_id.as_str()
            };
            if failed.contains(&owner) {
                continue;
            }
            match self.execute_one(file, change, current, &mut arns).await {
                Ok(Some(call)) => out.made.push(call),
                Ok(None) => {}
                Err(e) => {
                    failed.push(owner);
                    out.failed.push(e);
                }
            }
        }
        out
    }

    /// One change of a plan; the call made, for the report.
    async fn execute_one(
        &self,
        file: &AutoscalingFile,
        change: &Change,
        current: &Current,
        arns: &mut Vec<(String, String, String)>,
    ) -> Result<Option<String>, AwsError> {
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
            return Ok(Some(format!(
                "DeregisterScalableTarget {}",
                change.resource_id
            )));
        }
        if change.kind == Kind::Alarm && change.op == Op::Delete && change.resource_id.is_empty() {
            // A pruned alarm: no declared target.
            self.cw
                .delete_alarms()
                .alarm_names(&change.name)
                .send()
                .await
                .map_err(|e| aws_error("DeleteAlarms", &change.name, e))?;
            return Ok(Some(format!("DeleteAlarms {:?}", change.name)));
        }
        let Some(target) = file
            .targets
            .iter()
            .find(|t| t.resource_id == change.resource_id)
        else {
            return Ok(None);
        };
        let call = self.make(change, target, current, arns).await?;
        Ok(Some(format!(
            "{call} {}{}",
            change.resource_id,
            if change.name.is_empty() {
                String::new()
            } else {
                format!(" {:?}", change.name)
            }
        )))
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
                // An update sends only what differs: a field left out is
                // unchanged on AWS (RegisterScalableTarget, API reference),
                // so min/max or a suspension someone set after this pass
                // read them are not written back over.
                let create = change.op == Op::Create;
                let differs =
                    |field: &str| create || change.differences.iter().any(|d| d.starts_with(field));
                let (min, max) = if create {
                    // A target registered again while a schedule is in
                    // force gets the window's min/max, not the file's.
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs() as i64);
                    let (lo, hi) = crate::aas::bounds_at(target, now, SCHEDULE_LOOKBACK_S);
                    (Some(lo), Some(hi))
                } else {
                    (
                        differs("min_capacity").then_some(target.min_capacity),
                        differs("max_capacity").then_some(target.max_capacity),
                    )
                };
                let suspended = match target.suspended {
                    Some(s) if differs("suspended") => Some(s),
                    _ => None,
                };
                let mut request = self
                    .aas
                    .register_scalable_target()
                    .service_namespace(namespace())
                    .resource_id(id)
                    .scalable_dimension(dimension_of(target))
                    .set_min_capacity(min)
                    .set_max_capacity(max);
                if let Some(s) = suspended {
                    request = request.suspended_state(
                        aas::types::SuspendedState::builder()
                            .dynamic_scaling_in_suspended(s.dynamic_scaling_in)
                            .dynamic_scaling_out_suspended(s.dynamic_scaling_out)
                            .scheduled_scaling_suspended(s.scheduled_scaling)
                            .build(),
                    );
                }
                if change.op == Op::Create {
                    for (key, value) in target.desired_tags() {
                        request = request.tags(key, value);
                    }
                }
                request
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
