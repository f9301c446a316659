//! `/metrics`: read at scrape time straight from the shared counters, so the
//! data plane never does more than an atomic add per event.

use std::borrow::Cow;
use std::sync::Arc;

use inferlb_core::{HistogramSnapshot, Replica, StatusClass, WorkerStats};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use inferlb_control::writer::Control;

/// The collector behind `/metrics`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
}

#[derive(Debug)]
struct Source {
    control: Arc<Control>,
    workers: Vec<Arc<WorkerStats>>,
    front: Arc<inferlb_core::FrontEnd>,
}

type Labels<'a> = Vec<(&'static str, Cow<'a, str>)>;
type Result = std::result::Result<(), std::fmt::Error>;

/// A replica's labels: `replica`, then `extra`, then `pool` (last, so
/// queries and dashboards written before pools keep matching).
fn labels<'a>(r: &'a Replica, extra: Option<(&'static str, &'a str)>) -> Labels<'a> {
    let mut labels = vec![("replica", Cow::Borrowed(r.id.as_str()))];
    if let Some((name, value)) = extra {
        labels.push((name, Cow::Borrowed(value)));
    }
    labels.push(("pool", Cow::Borrowed(r.pool.as_str())));
    labels
}

fn id(r: &Replica) -> Labels<'_> {
    labels(r, None)
}

/// A counter with one series per replica.
fn per_replica_counter(
    e: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    replicas: &[Replica],
    value: impl Fn(&Replica) -> u64,
) -> Result {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    for r in replicas {
        m.encode_family(&id(r))?
            .encode_counter::<NoLabelSet, _, u64>(&value(r), None)?;
    }
    Ok(())
}

/// A gauge with one series per replica.
fn per_replica_gauge(
    e: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    replicas: &[Replica],
    value: impl Fn(&Replica) -> i64,
) -> Result {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for r in replicas {
        m.encode_family(&id(r))?.encode_gauge(&value(r))?;
    }
    Ok(())
}

/// A metric with one series per worker.
fn per_worker(
    e: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    kind: MetricType,
    workers: &[Arc<WorkerStats>],
    value: impl Fn(&WorkerStats) -> u64,
) -> Result {
    let mut m = e.encode_descriptor(name, help, None, kind)?;
    for (i, w) in workers.iter().enumerate() {
        let labels: Labels<'_> = vec![("worker", Cow::Owned(i.to_string()))];
        let mut series = m.encode_family(&labels)?;
        if kind == MetricType::Counter {
            series.encode_counter::<NoLabelSet, _, u64>(&value(w), None)?;
        } else {
            series.encode_gauge(&(value(w) as i64))?;
        }
    }
    Ok(())
}

/// A histogram with one series per replica.
fn per_replica_histogram(
    e: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    replicas: &[Replica],
    value: impl Fn(&Replica) -> HistogramSnapshot,
) -> Result {
    let mut m = e.encode_descriptor(name, help, Some(&Unit::Seconds), MetricType::Histogram)?;
    for r in replicas {
        let h = value(r);
        m.encode_family(&id(r))?
            .encode_histogram::<NoLabelSet>(h.sum, h.count, &h.buckets, None)?;
    }
    Ok(())
}

impl Source {
    /// Autoscaling pools: held requests, desired and current replicas,
    /// activities by direction, cold starts.
    fn encode_scaling(
        &self,
        e: &mut DescriptorEncoder<'_>,
        snapshot: &inferlb_core::ReplicaSet,
    ) -> Result {
        let mut m = e.encode_descriptor(
            "inferlb_pool_queued_requests",
            "Requests held while the autoscaling pool has no routable replica.",
            None,
            MetricType::Gauge,
        )?;
        for pool in snapshot.pools() {
            if let Some(queue) = pool.queue() {
                let labels: Labels<'_> = vec![("pool", Cow::Borrowed(pool.name().as_str()))];
                m.encode_family(&labels)?
                    .encode_gauge(&(queue.held() as i64))?;
            }
        }
        let mut m = e.encode_descriptor(
            "inferlb_pool_queue_wait",
            "How long requests were held for the autoscaling pool's first replica (served or not).",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        for pool in snapshot.pools() {
            if let Some(queue) = pool.queue() {
                let labels: Labels<'_> = vec![("pool", Cow::Borrowed(pool.name().as_str()))];
                let h = queue.waited().snapshot();
                m.encode_family(&labels)?
                    .encode_histogram::<NoLabelSet>(h.sum, h.count, &h.buckets, None)?;
            }
        }
        let scalers = self.control.scalers().all();
        let status: Vec<_> = scalers.iter().map(|(p, s)| (p, s, s.status())).collect();
        for (name, help, value) in [
            (
                "inferlb_pool_desired_replicas",
                "Replicas the autoscaler wants for the pool.",
                (|s: &inferlb_control::scaler::Status| s.desired)
                    as fn(&inferlb_control::scaler::Status) -> u32,
            ),
            (
                "inferlb_pool_current_replicas",
                "Replicas the autoscaler runs for the pool: starting, in service and draining.",
                |s| s.current,
            ),
            (
                "inferlb_pool_starting_replicas",
                "Replicas started and not yet passing their health check.",
                |s| s.starting,
            ),
        ] {
            let mut m = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (pool, _, s) in &status {
                let labels: Labels<'_> = vec![("pool", Cow::Borrowed(pool.as_str()))];
                m.encode_family(&labels)?
                    .encode_gauge(&i64::from(value(s)))?;
            }
        }
        let mut m = e.encode_descriptor(
            "inferlb_pool_scaling_activities",
            "Scaling activities of the autoscaling pool, by direction; failures are replica starts that failed or crashes.",
            None,
            MetricType::Counter,
        )?;
        for (pool, shared, _) in &status {
            for (direction, count) in [
                ("out", &shared.scale_outs),
                ("in", &shared.scale_ins),
                ("failed", &shared.failures),
            ] {
                let labels: Labels<'_> = vec![
                    ("pool", Cow::Borrowed(pool.as_str())),
                    ("direction", Cow::Borrowed(direction)),
                ];
                m.encode_family(&labels)?
                    .encode_counter::<NoLabelSet, _, u64>(
                        &count.load(std::sync::atomic::Ordering::Relaxed),
                        None,
                    )?;
            }
        }
        let mut m = e.encode_descriptor(
            "inferlb_pool_cold_start",
            "Time from starting a replica to its health check passing.",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        for (pool, shared, _) in &status {
            let (sum, count, buckets) = shared.cold_starts();
            let mut cumulative: Vec<(f64, u64)> = inferlb_control::scaler::COLD_START_BOUNDS
                .iter()
                .copied()
                .zip(buckets)
                .collect();
            cumulative.push((f64::INFINITY, count));
            let labels: Labels<'_> = vec![("pool", Cow::Borrowed(pool.as_str()))];
            m.encode_family(&labels)?.encode_histogram::<NoLabelSet>(
                sum,
                count,
                &cumulative,
                None,
            )?;
        }
        Ok(())
    }
}

impl Collector for Source {
    fn encode(&self, mut e: DescriptorEncoder<'_>) -> Result {
        let snapshot = self.control.snapshot();
        let replicas = snapshot.replicas();
        encode_traffic(&mut e, replicas)?;
        encode_replica_state(&mut e, replicas)?;
        encode_pools(&mut e, &snapshot)?;
        self.encode_scaling(&mut e, &snapshot)?;
        encode_latency(&mut e, replicas)?;
        encode_workers(&mut e, &self.workers)?;
        encode_front(&mut e, &self.front)?;
        encode_edge(&mut e, &self.front.edge)?;
        encode_process(&mut e, &snapshot)
    }
}

/// Each replica's requests, responses by class, failed connects, bytes and
/// ejections.
fn encode_traffic(e: &mut DescriptorEncoder<'_>, replicas: &[Replica]) -> Result {
    per_replica_counter(
        e,
        "inferlb_replica_requests",
        "Requests sent to the replica.",
        replicas,
        |r| r.stats.requests(),
    )?;
    let mut m = e.encode_descriptor(
        "inferlb_replica_responses",
        "Responses from the replica by status class.",
        None,
        MetricType::Counter,
    )?;
    for r in replicas {
        for (class, name) in [
            (StatusClass::Success, "2xx"),
            (StatusClass::Redirect, "3xx"),
            (StatusClass::ClientError, "4xx"),
            (StatusClass::ServerError, "5xx"),
        ] {
            m.encode_family(&labels(r, Some(("class", name))))?
                .encode_counter::<NoLabelSet, _, u64>(&r.stats.responses(class), None)?;
        }
    }
    per_replica_counter(
        e,
        "inferlb_replica_connect_errors",
        "Refused or timed-out connects to the replica.",
        replicas,
        |r| r.stats.connect_errors(),
    )?;
    per_replica_counter(
        e,
        "inferlb_replica_received_bytes",
        "Bytes received from the replica.",
        replicas,
        |r| r.stats.bytes_in(),
    )?;
    per_replica_counter(
        e,
        "inferlb_replica_sent_bytes",
        "Bytes sent to the replica.",
        replicas,
        |r| r.stats.bytes_out(),
    )?;
    per_replica_counter(
        e,
        "inferlb_replica_ejections",
        "Times the replica was ejected as an outlier.",
        replicas,
        |r| r.stats.ejections(),
    )?;
    Ok(())
}

/// Each replica's requests in flight, weight, state and engine load.
fn encode_replica_state(e: &mut DescriptorEncoder<'_>, replicas: &[Replica]) -> Result {
    per_replica_gauge(
        e,
        "inferlb_replica_in_flight",
        "Requests in flight to the replica, across all workers.",
        replicas,
        |r| r.stats.in_flight() as i64,
    )?;
    per_replica_gauge(
        e,
        "inferlb_replica_weight",
        "The replica's routing weight.",
        replicas,
        |r| i64::from(r.weight),
    )?;
    let mut m = e.encode_descriptor(
        "inferlb_replica_state",
        "1 for the replica's current state (active, draining, unhealthy, ejected).",
        None,
        MetricType::Gauge,
    )?;
    let now = inferlb_core::clock::now_ms();
    for r in replicas {
        let current = inferlb_core::Routability::of(r, now);
        for state in inferlb_core::Routability::ALL {
            m.encode_family(&labels(r, Some(("state", state.as_str()))))?
                .encode_gauge(&i64::from(current == state))?;
        }
    }
    for (name, help, value) in [
        (
            "inferlb_replica_engine_waiting",
            "Requests waiting in the model server's queue, as last scraped.",
            (|l: &inferlb_core::EngineLoad| l.waiting) as fn(&inferlb_core::EngineLoad) -> f64,
        ),
        (
            "inferlb_replica_engine_running",
            "Requests the model server is running, as last scraped.",
            |l| l.running,
        ),
        (
            "inferlb_replica_engine_kv_usage",
            "The model server's KV-cache usage (0 to 1), as last scraped.",
            |l| l.kv_usage,
        ),
    ] {
        let mut m = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
        for r in replicas {
            if let Some((load, _)) = r.stats.engine_last() {
                m.encode_family(&id(r))?.encode_gauge(&value(&load))?;
            }
        }
    }
    Ok(())
}

/// Each pool's routable replicas.
fn encode_pools(e: &mut DescriptorEncoder<'_>, snapshot: &inferlb_core::ReplicaSet) -> Result {
    let replicas = snapshot.replicas();
    let mut m = e.encode_descriptor(
        "inferlb_pool_routable_replicas",
        "Replicas of the pool taking new requests.",
        None,
        MetricType::Gauge,
    )?;
    for pool in snapshot.pools() {
        let labels: Labels<'_> = vec![("pool", Cow::Borrowed(pool.name().as_str()))];
        let routable = pool
            .members()
            .iter()
            .filter(|&&i| replicas[i as usize].is_routable())
            .count();
        m.encode_family(&labels)?.encode_gauge(&(routable as i64))?;
    }
    Ok(())
}

/// Each replica's time to response head and request duration.
fn encode_latency(e: &mut DescriptorEncoder<'_>, replicas: &[Replica]) -> Result {
    per_replica_histogram(
        e,
        "inferlb_replica_response_head",
        "Time from picking the replica to its response head.",
        replicas,
        |r| r.stats.head_time().snapshot(),
    )?;
    per_replica_histogram(
        e,
        "inferlb_replica_request_duration",
        "Time from picking the replica to the last byte of its response.",
        replicas,
        |r| r.stats.duration().snapshot(),
    )?;
    Ok(())
}

/// Each worker's connections.
fn encode_workers(e: &mut DescriptorEncoder<'_>, workers: &[Arc<WorkerStats>]) -> Result {
    per_worker(
        e,
        "inferlb_worker_open_connections",
        "Client connections open on the worker.",
        MetricType::Gauge,
        workers,
        |w| w.open_connections(),
    )?;
    per_worker(
        e,
        "inferlb_worker_accepted_connections",
        "Client connections accepted by the worker.",
        MetricType::Counter,
        workers,
        |w| w.accepted(),
    )?;
    per_worker(
        e,
        "inferlb_worker_refused_connections",
        "Client connections closed at once because the worker was at its limit.",
        MetricType::Counter,
        workers,
        |w| w.refused(),
    )?;
    per_worker(
        e,
        "inferlb_worker_access_log_dropped_lines",
        "Access log lines dropped because the log writer fell behind (a stalled disk).",
        MetricType::Counter,
        workers,
        |w| w.access_log_dropped(),
    )?;
    Ok(())
}

/// What clients saw per pool and model, the proxy's own answers included,
/// and the streams' time to first token and inter-token gaps per pool.
fn encode_front(e: &mut DescriptorEncoder<'_>, front: &inferlb_core::FrontEnd) -> Result {
    let pools = front.pools();
    let mut m = e.encode_descriptor(
        "inferlb_frontend_responses",
        "Responses to clients by pool, model and status class, whoever answered (a replica or the proxy itself: 404 model_not_found, 503, 429, 502, 504, ...). A model no pool serves counts as \"unknown\".",
        None,
        MetricType::Counter,
    )?;
    for (pool, counters) in &pools {
        for (model, counts) in counters.models() {
            for (class, count) in counts.counts() {
                let labels: Labels<'_> = vec![
                    ("pool", Cow::Borrowed(pool.as_str())),
                    ("model", Cow::Owned(model.clone())),
                    ("class", Cow::Borrowed(class)),
                ];
                m.encode_family(&labels)?
                    .encode_counter::<NoLabelSet, _, u64>(&count, None)?;
            }
        }
    }
    for (name, help, pick) in [
        (
            "inferlb_pool_time_to_first_token",
            "Time from a streamed request's arrival to its first body byte (time to first token).",
            (|p: &inferlb_core::PoolFront| p.ttft.snapshot())
                as fn(&inferlb_core::PoolFront) -> HistogramSnapshot,
        ),
        (
            "inferlb_pool_inter_token_latency",
            "Gaps between the body chunks of streamed responses (inter-token latency).",
            |p: &inferlb_core::PoolFront| p.itl.snapshot(),
        ),
    ] {
        let mut m = e.encode_descriptor(name, help, Some(&Unit::Seconds), MetricType::Histogram)?;
        for (pool, counters) in &pools {
            let h = pick(counters);
            let labels: Labels<'_> = vec![("pool", Cow::Borrowed(pool.as_str()))];
            m.encode_family(&labels)?
                .encode_histogram::<NoLabelSet>(h.sum, h.count, &h.buckets, None)?;
        }
    }
    Ok(())
}

/// TLS handshakes by version and outcome, and HTTP/2 connections.
fn encode_edge(e: &mut DescriptorEncoder<'_>, edge: &inferlb_core::Edge) -> Result {
    let mut m = e.encode_descriptor(
        "inferlb_tls_handshakes",
        "Completed TLS handshakes by version, cipher suite, and whether the session was resumed (ticket or cache).",
        None,
        MetricType::Counter,
    )?;
    for (handshake, count) in edge.handshakes() {
        let labels: Labels<'_> = vec![
            ("version", Cow::Borrowed(handshake.version)),
            ("cipher", Cow::Borrowed(handshake.cipher)),
            (
                "resumed",
                Cow::Borrowed(if handshake.resumed { "true" } else { "false" }),
            ),
        ];
        m.encode_family(&labels)?
            .encode_counter::<NoLabelSet, _, u64>(&count, None)?;
    }
    let mut m = e.encode_descriptor(
        "inferlb_tls_handshake_errors",
        "Failed TLS handshakes by kind: timeout, closed, protocol, client_certificate, unknown_server_name, no_application_protocol.",
        None,
        MetricType::Counter,
    )?;
    for (kind, count) in edge.handshake_errors() {
        let labels: Labels<'_> = vec![("kind", Cow::Borrowed(kind.label()))];
        m.encode_family(&labels)?
            .encode_counter::<NoLabelSet, _, u64>(&count, None)?;
    }
    let relaxed = std::sync::atomic::Ordering::Relaxed;
    for (name, help, value) in [
        (
            "inferlb_http2_connections",
            "HTTP/2 connections from clients (TLS with ALPN h2, or h2c).",
            edge.h2_connections.load(relaxed),
        ),
        (
            "inferlb_http2_streams",
            "HTTP/2 streams from clients, each one request.",
            edge.h2_streams.load(relaxed),
        ),
    ] {
        let mut m = e.encode_descriptor(name, help, None, MetricType::Counter)?;
        m.encode_counter::<NoLabelSet, _, u64>(&value, None)?;
    }
    let mut m = e.encode_descriptor(
        "inferlb_http2_goaways",
        "HTTP/2 connections the proxy closed with an error GOAWAY, by reason: rapid_reset, control_flood, protocol_error.",
        None,
        MetricType::Counter,
    )?;
    for (why, count) in edge.goaways() {
        let labels: Labels<'_> = vec![("reason", Cow::Borrowed(why.label()))];
        m.encode_family(&labels)?
            .encode_counter::<NoLabelSet, _, u64>(&count, None)?;
    }
    Ok(())
}

/// The snapshot generation and the build.
fn encode_process(e: &mut DescriptorEncoder<'_>, snapshot: &inferlb_core::ReplicaSet) -> Result {
    let mut m = e.encode_descriptor(
        "inferlb_snapshot_generation",
        "Generation of the replica snapshot the workers route with.",
        None,
        MetricType::Gauge,
    )?;
    m.encode_gauge(&(snapshot.generation() as i64))?;
    let mut m = e.encode_descriptor(
        "inferlb_build_info",
        "Build information; the value is always 1.",
        None,
        MetricType::Gauge,
    )?;
    let labels: Labels<'_> = vec![("version", Cow::Borrowed(env!("CARGO_PKG_VERSION")))];
    m.encode_family(&labels)?.encode_gauge(&1i64)?;
    Ok(())
}

impl Metrics {
    /// Metrics over the control plane's snapshot and the workers' counters.
    pub fn new(
        control: Arc<Control>,
        workers: Vec<Arc<WorkerStats>>,
        front: Arc<inferlb_core::FrontEnd>,
    ) -> Self {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Source {
            control,
            workers,
            front,
        }));
        Self { registry }
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> std::result::Result<String, std::fmt::Error> {
        let mut out = String::with_capacity(16 * 1024);
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}
