//! Which Application Auto Scaling errors are retried, on top of the SDK's
//! standard classifiers (throttling, 5xx, timeouts):
//!
//! - `ConcurrentUpdateException` ("concurrent updates caused an exception")
//!   and `FailedResourceAccessException` (AAS could not reach the resource,
//!   e.g. "Rate exceeded" when SageMaker throttles AAS) are transient: retried
//!   with backoff, on every call ([`AAS_ERRORS`]) — except a
//!   `FailedResourceAccessException` that names a permission ("... is not
//!   authorized to perform: sagemaker:DescribeEndpoint"), which no retry
//!   fixes: reported at once;
//! - `ObjectNotFoundException` from `PutScalingPolicy` or `PutScheduledAction`
//!   right after `RegisterScalableTarget` is eventual consistency (the
//!   Application Auto Scaling API reference says to retry): retried on those
//!   two calls only ([`not_found_yet`]);
//! - `LimitExceededException` is a quota, not throttling (the SDK's default
//!   list treats it as throttling): never retried, reported at once.

use aws_sdk_applicationautoscaling as aas;
use aws_smithy_runtime_api::client::interceptors::context::InterceptorContext;
use aws_smithy_runtime_api::client::retries::classifiers::{
    ClassifyRetry, RetryAction, RetryClassifierPriority,
};

/// Retries decided by the error code alone.
#[derive(Debug, Clone, Copy)]
pub struct CodeRetry {
    name: &'static str,
    /// From the error's code and message.
    decide: fn(&str, &str) -> RetryAction,
}

/// On every Application Auto Scaling call.
pub const AAS_ERRORS: CodeRetry = CodeRetry {
    name: "inferlb: Application Auto Scaling errors",
    decide: |code, message| match code {
        "LimitExceededException" => RetryAction::RetryForbidden,
        "FailedResourceAccessException" if names_a_permission(message) => {
            RetryAction::RetryForbidden
        }
        "ConcurrentUpdateException" | "FailedResourceAccessException" => {
            RetryAction::transient_error()
        }
        _ => RetryAction::NoActionIndicated,
    },
};

/// An error message about a missing permission rather than a busy resource.
fn names_a_permission(message: &str) -> bool {
    let message = message.to_ascii_lowercase();
    [
        "not authorized",
        "accessdenied",
        "access denied",
        "permission",
    ]
    .iter()
    .any(|needle| message.contains(needle))
}

/// On PutScalingPolicy and PutScheduledAction: a target registered a moment
/// ago may not be visible yet.
pub const NOT_FOUND_YET: CodeRetry = CodeRetry {
    name: "inferlb: a target registered a moment ago",
    decide: |code, _| match code {
        "ObjectNotFoundException" => RetryAction::transient_error(),
        _ => RetryAction::NoActionIndicated,
    },
};

/// The config override that adds [`NOT_FOUND_YET`] to one call.
pub fn not_found_yet() -> aas::config::Builder {
    aas::config::Builder::default().retry_classifier(NOT_FOUND_YET)
}

/// The error code (`x-amzn-ErrorType`, or the body's `__type`) and message
/// of an attempt that failed.
fn attempt_error(ctx: &InterceptorContext) -> Option<(String, String)> {
    let response = ctx.response()?;
    if response.status().as_u16() < 400 {
        return None;
    }
    let json: Option<serde_json::Value> = response
        .body()
        .bytes()
        .and_then(|body| serde_json::from_slice(body).ok());
    let from_header = response
        .headers()
        .get("x-amzn-errortype")
        .map(|v| v.split(':').next().unwrap_or(v).to_owned());
    let from_body = || {
        let code = json.as_ref()?.get("__type")?.as_str()?;
        Some(code.rsplit('#').next().unwrap_or(code).to_owned())
    };
    let code = from_header.or_else(from_body)?;
    let message = json
        .as_ref()
        .and_then(|j| j.get("message").or_else(|| j.get("Message")))
        .and_then(|m| m.as_str())
        .unwrap_or_default()
        .to_owned();
    Some((code, message))
}

impl ClassifyRetry for CodeRetry {
    fn classify_retry(&self, ctx: &InterceptorContext) -> RetryAction {
        attempt_error(ctx).map_or(RetryAction::NoActionIndicated, |(code, message)| {
            (self.decide)(&code, &message)
        })
    }

    fn name(&self) -> &'static str {
        self.name
    }

    /// After the SDK's own classifiers, so its verdict can be overridden.
    fn priority(&self) -> RetryClassifierPriority {
        RetryClassifierPriority::run_after(RetryClassifierPriority::transient_error_classifier())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A FailedResourceAccessException is transient when SageMaker throttled
    /// Application Auto Scaling, and final when the caller lacks a
    /// permission (Application Auto Scaling API reference, Common Errors and
    /// RegisterScalableTarget's errors: "Failed access to resources caused an
    /// exception ... the resource ... or the IAM permissions").
    #[test]
    fn a_missing_permission_is_not_retried_as_throttling() {
        let decide = AAS_ERRORS.decide;
        assert_eq!(
            decide("FailedResourceAccessException", "Rate exceeded"),
            RetryAction::transient_error()
        );
        for message in [
            "User: arn:aws:iam::123456789012:user/x is not authorized to perform: sagemaker:DescribeEndpoint",
            "AccessDeniedException: no permission to update the endpoint",
        ] {
            assert_eq!(
                decide("FailedResourceAccessException", message),
                RetryAction::RetryForbidden,
                "{message}"
            );
        }
        assert_eq!(
            decide("LimitExceededException", ""),
            RetryAction::RetryForbidden
        );
        assert_eq!(
            decide("ConcurrentUpdateException", ""),
            RetryAction::transient_error()
        );
    }
}
