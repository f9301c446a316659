//! The load balancer's own signal for the scaler: per pool, the requests in
//! flight per routable replica (streams count until their last byte), the
//! requests and 5xx answers of the interval, and the requests held for want
//! of a replica, published to CloudWatch with one PutMetricData call per
//! interval. A target-tracking policy on a customized metric can then scale
//! on the balancer's exact concurrency instead of a one-minute invocation
//! count.
//!
//! The caller samples the shared counters (every second) off the data
//! plane and calls [`Publisher::put`] each interval; a failed call is logged
//! and the next interval tries again.

use std::time::SystemTime;

use aws_sdk_cloudwatch as cw;

use crate::aws::AwsError;

/// One pool's figures for one interval.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PoolSample {
    /// The pool's name (the `Pool` dimension).
    pub pool: String,
    /// Mean over the interval's samples of the pool's requests in flight
    /// (all its replicas together): the figure to track when a replica is
    /// an endpoint URL in front of several instances.
    pub in_flight: f64,
    /// Mean over the interval's samples of (in flight ÷ routable replicas):
    /// in flight per instance only when each replica is one instance (or
    /// one inference component copy).
    pub in_flight_per_replica: f64,
    /// The largest in-flight count of any one replica seen in the interval.
    pub max_in_flight_per_replica: f64,
    /// Requests sent to the pool's replicas during the interval.
    pub requests: f64,
    /// 5xx answers during the interval.
    pub errors_5xx: f64,
    /// Requests held waiting for a replica (scale from zero), at the end.
    pub queued: f64,
}

/// The metric names, as a customized metric names them.
pub const METRICS: [&str; 6] = [
    "InFlightPerReplica",
    "MaxInFlightPerReplica",
    "Requests",
    "Errors5xx",
    "QueuedRequests",
    "InFlight",
];

/// Where and how samples go.
#[derive(Debug, Clone)]
pub struct Publisher {
    cw: cw::Client,
    namespace: String,
    /// 1 for high-resolution (10 s) publication, else 60.
    storage_resolution: i32,
    dimensions: Vec<(String, String)>,
}

impl Publisher {
    /// Credentials and region through aws-config's default chain (`region`
    /// first when given), over rustls with ring.
    pub async fn connect(
        region: Option<String>,
        namespace: String,
        high_resolution: bool,
        dimensions: Vec<(String, String)>,
    ) -> Self {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .http_client(crate::aws::https_client());
        if let Some(region) = region {
            loader = loader.region(aws_config::Region::new(region));
        }
        let config = loader.load().await;
        Self::new(
            cw::Client::new(&config),
            namespace,
            high_resolution,
            dimensions,
        )
    }

    /// A publisher into `namespace`; `high_resolution` for a 10 s interval.
    pub fn new(
        cw: cw::Client,
        namespace: String,
        high_resolution: bool,
        dimensions: Vec<(String, String)>,
    ) -> Self {
        Self {
            cw,
            namespace,
            storage_resolution: if high_resolution { 1 } else { 60 },
            dimensions,
        }
    }

    /// One PutMetricData call with every pool's figures at `at`.
    pub async fn put(&self, at: SystemTime, pools: &[PoolSample]) -> Result<(), AwsError> {
        if pools.is_empty() {
            return Ok(());
        }
        let timestamp = aws_smithy_types::DateTime::from(at);
        let mut request = self.cw.put_metric_data().namespace(&self.namespace);
        for pool in pools {
            let mut dims = vec![cw::types::Dimension::builder()
                .name("Pool")
                .value(&pool.pool)
                .build()];
            dims.extend(
                self.dimensions
                    .iter()
                    .map(|(n, v)| cw::types::Dimension::builder().name(n).value(v).build()),
            );
            let values = [
                (
                    METRICS[0],
                    pool.in_flight_per_replica,
                    cw::types::StandardUnit::Count,
                ),
                (
                    METRICS[1],
                    pool.max_in_flight_per_replica,
                    cw::types::StandardUnit::Count,
                ),
                (METRICS[2], pool.requests, cw::types::StandardUnit::Count),
                (METRICS[3], pool.errors_5xx, cw::types::StandardUnit::Count),
                (METRICS[4], pool.queued, cw::types::StandardUnit::Count),
                (METRICS[5], pool.in_flight, cw::types::StandardUnit::Count),
            ];
            for (name, value, unit) in values {
                request = request.metric_data(
                    cw::types::MetricDatum::builder()
                        .metric_name(name)
                        .set_dimensions(Some(dims.clone()))
                        .value(value)
                        .unit(unit)
                        .timestamp(timestamp)
                        .storage_resolution(self.storage_resolution)
                        .build(),
                );
            }
        }
        request
            .send()
            .await
            .map(drop)
            .map_err(|e| crate::aws::aws_error("PutMetricData", &self.namespace, e))
    }
}
