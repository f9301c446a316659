//! Reading what exists: targets, policies, scheduled actions, alarms, tags
//! and activities, each Describe paginated and bounded.

use aws_sdk_applicationautoscaling as aas;
use aws_smithy_types::DateTime;

use crate::model::{
    AutoscalingFile, CustomizedMetric, MetricDimension, MetricQuery, Suspended, Target,
};
use crate::plan::{
    Current, CurrentAlarm, CurrentPolicy, CurrentScheduled, CurrentTarget, PolicyShape,
};

use super::*;

impl Aws {
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
        let policies = self
            .describe_policies(&target.resource_id, dimension_of(target))
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
        let actions = self
            .describe_actions(&target.resource_id, dimension_of(target))
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

    /// What a target carries besides itself: its scaling policies and
    /// scheduled actions, by name (`scaling policy "x"`, `scheduled action
    /// "y"`). DeregisterScalableTarget deletes them all with it.
    pub async fn carried_by(
        &self,
        resource_id: &str,
        dimension: &str,
    ) -> Result<Vec<String>, AwsError> {
        let dimension = aas::types::ScalableDimension::from(dimension);
        let policies = self
            .describe_policies(resource_id, dimension.clone())
            .await?;
        let actions = self.describe_actions(resource_id, dimension).await?;
        let mut carried: Vec<String> = policies
            .iter()
            .filter(|p| p.resource_id() == resource_id)
            .map(|p| format!("scaling policy {:?} on {resource_id}", p.policy_name()))
            .collect();
        carried.extend(
            actions
                .iter()
                .filter(|a| a.resource_id() == resource_id)
                .map(|a| {
                    format!(
                        "scheduled action {:?} on {resource_id}",
                        a.scheduled_action_name()
                    )
                }),
        );
        Ok(carried)
    }

    /// Every scaling policy of a resource and dimension, all pages.
    async fn describe_policies(
        &self,
        resource_id: &str,
        dimension: aas::types::ScalableDimension,
    ) -> Result<Vec<aas::types::ScalingPolicy>, AwsError> {
        all_pages(|token| {
            let request = self
                .aas
                .describe_scaling_policies()
                .service_namespace(namespace())
                .resource_id(resource_id)
                .scalable_dimension(dimension.clone())
                .set_next_token(token);
            async {
                let out = request
                    .send()
                    .await
                    .map_err(|e| aws_error("DescribeScalingPolicies", resource_id, e))?;
                Ok((
                    out.scaling_policies().to_vec(),
                    out.next_token().map(str::to_owned),
                ))
            }
        })
        .await
    }

    /// Every scheduled action of a resource and dimension, all pages.
    async fn describe_actions(
        &self,
        resource_id: &str,
        dimension: aas::types::ScalableDimension,
    ) -> Result<Vec<aas::types::ScheduledAction>, AwsError> {
        all_pages(|token| {
            let request = self
                .aas
                .describe_scheduled_actions()
                .service_namespace(namespace())
                .resource_id(resource_id)
                .scalable_dimension(dimension.clone())
                .set_next_token(token);
            async {
                let out = request
                    .send()
                    .await
                    .map_err(|e| aws_error("DescribeScheduledActions", resource_id, e))?;
                Ok((
                    out.scheduled_actions().to_vec(),
                    out.next_token().map(str::to_owned),
                ))
            }
        })
        .await
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
