//! Which Application Auto Scaling errors are retried, on top of the SDK's
//! standard classifiers (throttling, 5xx, timeouts):
//!
//! - `ConcurrentUpdateException` ("concurrent updates caused an exception")
//!   and `FailedResourceAccessException` (AAS could not reach the resource,
//!   e.g. "Rate exceeded" when SageMaker throttles AAS) are transient: retried
//!   with backoff, on every call ([`AAS_ERRORS`]);
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
    decide: fn(&str) -> RetryAction,
}

/// On every Application Auto Scaling call.
pub const AAS_ERRORS: CodeRetry = CodeRetry {
    name: "inferlb: Application Auto Scaling errors",
    decide: |code| match code {
        "LimitExceededException" => RetryAction::RetryForbidden,
        "ConcurrentUpdateException" | "FailedResourceAccessException" => {
            RetryAction::transient_error()
        }
        _ => RetryAction::NoActionIndicated,
    },
};

/// On PutScalingPolicy and PutScheduledAction: a target registered a moment
/// ago may not be visible yet.
pub const NOT_FOUND_YET: CodeRetry = CodeRetry {
    name: "inferlb: a target registered a moment ago",
    decide: |code| match code {
        "ObjectNotFoundException" => RetryAction::transient_error(),
        _ => RetryAction::NoActionIndicated,
    },
};

/// The config override that adds [`NOT_FOUND_YET`] to one call.
pub fn not_found_yet() -> aas::config::Builder {
    aas::config::Builder::default().retry_classifier(NOT_FOUND_YET)
}

/// The error code (`x-amzn-ErrorType`, or the body's `__type`) of an
/// attempt that failed.
fn attempt_error(ctx: &InterceptorContext) -> Option<String> {
    let response = ctx.response()?;
    if response.status().as_u16() < 400 {
        return None;
    }
    let from_header = response
        .headers()
        .get("x-amzn-errortype")
        .map(|v| v.split(':').next().unwrap_or(v).to_owned());
    let from_body = || {
        let body = response.body().bytes()?;
        let json: serde_json::Value = serde_json::from_slice(body).ok()?;
        let code = json.get("__type")?.as_str()?;
        Some(code.rsplit('#').next().unwrap_or(code).to_owned())
    };
    from_header.or_else(from_body)
}

impl ClassifyRetry for CodeRetry {
    fn classify_retry(&self, ctx: &InterceptorContext) -> RetryAction {
        attempt_error(ctx).map_or(RetryAction::NoActionIndicated, |code| (self.decide)(&code))
    }

    fn name(&self) -> &'static str {
        self.name
    }

    /// After the SDK's own classifiers, so its verdict can be overridden.
    fn priority(&self) -> RetryClassifierPriority {
        RetryClassifierPriority::run_after(RetryClassifierPriority::transient_error_classifier())
    }
}
