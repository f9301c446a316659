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

use crate::model::Target;
use crate::plan::epoch_seconds;

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
        SdkError::DispatchFailure(d) => match d.as_connector_error() {
            Some(c) => transport_failure(c),
            None => ("DispatchFailure".to_owned(), format!("{d:?}")),
        },
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

/// Where calls go, for error messages: `--endpoint-url`, or AWS's regional
/// endpoint once the region is known.
static ENDPOINT: std::sync::Mutex<String> = std::sync::Mutex::new(String::new());

fn endpoint() -> String {
    let endpoint = ENDPOINT.lock().map(|e| e.clone()).unwrap_or_default();
    if endpoint.is_empty() {
        "the AWS endpoint".into()
    } else {
        endpoint
    }
}

/// A call that never reached AWS, as one line: no credentials, a refused or
/// failed connection, or the innermost error's own words (the SDK's
/// `Display` nests every layer with its debug dump).
fn transport_failure(err: &(dyn std::error::Error + 'static)) -> (String, String) {
    let chain: Vec<&(dyn std::error::Error + 'static)> =
        std::iter::successors(Some(err), |e| e.source()).collect();
    let said = |text: &str| chain.iter().any(|e| e.to_string().contains(text));
    if said("loading credentials") || said("provided credentials") || said("no credentials") {
        return (
            "NoCredentials".into(),
            "no AWS credentials found (tried the environment's AWS_ACCESS_KEY_ID, the profile in ~/.aws, web identity, ECS and the instance metadata service; with --endpoint-url only the first two): set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE".into(),
        );
    }
    let io = chain
        .iter()
        .find_map(|e| e.downcast_ref::<std::io::Error>());
    if let Some(io) = io {
        let reason = match io.kind() {
            std::io::ErrorKind::ConnectionRefused => "connection refused".to_owned(),
            std::io::ErrorKind::TimedOut => "connection timed out".to_owned(),
            _ => io.to_string(),
        };
        return (
            "ConnectFailed".into(),
            format!("cannot connect to {}: {reason}", endpoint()),
        );
    }
    let innermost = chain.last().map_or_else(String::new, |e| e.to_string());
    ("DispatchFailure".into(), innermost)
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
/// instance's (IMDS, with `imds`).
fn region_chain(
    options: &AwsOptions,
    file_region: Option<&str>,
    imds: bool,
) -> aws_config::meta::region::RegionProviderChain {
    use aws_config::meta::region::RegionProviderChain;
    use aws_config::Region;
    let mut profile = aws_config::profile::ProfileFileRegionProvider::builder();
    if let Some(name) = &options.profile {
        profile = profile.profile_name(name);
    }
    let chain = RegionProviderChain::first_try(options.region.clone().map(Region::new))
        .or_else(aws_config::environment::EnvironmentVariableRegionProvider::new())
        .or_else(profile.build())
        .or_else(file_region.map(|r| Region::new(r.to_owned())));
    if !imds {
        return chain;
    }
    chain.or_else(
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
        if let Some(url) = &options.endpoint_url {
            // An emulator or a private endpoint: credentials from the
            // environment or the profile only, never the instance metadata
            // service (whose timeouts would only delay the real error).
            let mut profile = aws_config::profile::ProfileFileCredentialsProvider::builder()
                .configure(
                    &aws_config::provider_config::ProviderConfig::without_region()
                        .with_http_client(https_client()),
                );
            if let Some(name) = &options.profile {
                profile = profile.profile_name(name);
            }
            let credentials = aws_config::meta::credentials::CredentialsProviderChain::first_try(
                "Environment",
                aws_config::environment::EnvironmentVariableCredentialsProvider::new(),
            )
            .or_else("Profile", profile.build());
            loader = loader
                .endpoint_url(url)
                .credentials_provider(credentials)
                .region(region_chain(options, file_region, false));
        } else {
            loader = loader.region(region_chain(options, file_region, true));
        }
        let config = loader.load().await;
        let endpoint = match (&options.endpoint_url, config.region()) {
            (Some(url), _) => url.clone(),
            (None, Some(region)) => {
                format!("https://application-autoscaling.{region}.amazonaws.com")
            }
            (None, None) => String::new(),
        };
        if let Ok(mut at) = ENDPOINT.lock() {
            *at = endpoint;
        }
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

mod read;
mod write;

#[cfg(test)]
mod tests;
