//! `/metrics`: read at scrape time straight from the shared counters, so the
//! data plane never does more than an atomic add per event.

use std::borrow::Cow;
use std::sync::Arc;

use inferlb_core::{HistogramSnapshot, StatusClass, WorkerStats};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::control::Control;

/// The collector behind `/metrics`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
}

#[derive(Debug)]
struct Source {
    control: Arc<Control>,
    workers: Vec<Arc<WorkerStats>>,
}

type Labels<'a> = Vec<(&'static str, Cow<'a, str>)>;

fn histogram(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    series: &[(Labels<'_>, HistogramSnapshot)],
) -> Result<(), std::fmt::Error> {
    let mut metric =
        encoder.encode_descriptor(name, help, Some(&Unit::Seconds), MetricType::Histogram)?;
    for (labels, h) in series {
        metric
            .encode_family(labels)?
            .encode_histogram::<NoLabelSet>(h.sum, h.count, &h.buckets, None)?;
    }
    Ok(())
}

impl Collector for Source {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let snapshot = self.control.snapshot();
        let replicas = snapshot.replicas();
        fn id(r: &inferlb_core::Replica) -> Labels<'_> {
            vec![("replica", Cow::Borrowed(r.id.as_str()))]
        }

        let mut m = encoder.encode_descriptor(
            "inferlb_replica_requests",
            "Requests sent to the replica.",
            None,
            MetricType::Counter,
        )?;
        for r in replicas {
            m.encode_family(&id(r))?
                .encode_counter::<NoLabelSet, _, u64>(&r.stats.requests(), None)?;
        }
        let mut m = encoder.encode_descriptor(
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
                let mut labels = id(r);
                labels.push(("class", Cow::Borrowed(name)));
                m.encode_family(&labels)?
                    .encode_counter::<NoLabelSet, _, u64>(&r.stats.responses(class), None)?;
            }
        }
        let mut m = encoder.encode_descriptor(
            "inferlb_replica_connect_errors",
            "Refused or timed-out connects to the replica.",
            None,
            MetricType::Counter,
        )?;
        for r in replicas {
            m.encode_family(&id(r))?
                .encode_counter::<NoLabelSet, _, u64>(&r.stats.connect_errors(), None)?;
        }
        let mut m = encoder.encode_descriptor(
            "inferlb_replica_received_bytes",
            "Bytes received from the replica.",
            None,
            MetricType::Counter,
        )?;
        for r in replicas {
            m.encode_family(&id(r))?
                .encode_counter::<NoLabelSet, _, u64>(&r.stats.bytes_in(), None)?;
        }
        let mut m = encoder.encode_descriptor(
            "inferlb_replica_sent_bytes",
            "Bytes sent to the replica.",
            None,
            MetricType::Counter,
        )?;
        for r in replicas {
            m.encode_family(&id(r))?
                .encode_counter::<NoLabelSet, _, u64>(&r.stats.bytes_out(), None)?;
        }
        let mut m = encoder.encode_descriptor(
            "inferlb_replica_in_flight",
            "Requests in flight to the replica, across all workers.",
            None,
            MetricType::Gauge,
        )?;
        for r in replicas {
            m.encode_family(&id(r))?
                .encode_gauge(&(r.stats.in_flight() as i64))?;
        }
        let mut m = encoder.encode_descriptor(
            "inferlb_replica_weight",
            "The replica's routing weight.",
            None,
            MetricType::Gauge,
        )?;
        for r in replicas {
            m.encode_family(&id(r))?
                .encode_gauge(&i64::from(r.weight))?;
        }
        let mut m = encoder.encode_descriptor(
            "inferlb_replica_state",
            "1 for the replica's current state (active, draining, unhealthy, ejected).",
            None,
            MetricType::Gauge,
        )?;
        for r in replicas {
            let current = crate::health::effective_state(r, inferlb_core::clock::now_ms());
            for state in ["active", "draining", "unhealthy", "ejected"] {
                let mut labels = id(r);
                labels.push(("state", Cow::Borrowed(state)));
                m.encode_family(&labels)?
                    .encode_gauge(&i64::from(current == state))?;
            }
        }
        let mut m = encoder.encode_descriptor(
            "inferlb_replica_ejections",
            "Times the replica was ejected as an outlier.",
            None,
            MetricType::Counter,
        )?;
        for r in replicas {
            m.encode_family(&id(r))?
                .encode_counter::<NoLabelSet, _, u64>(&r.stats.ejections(), None)?;
        }
        let heads: Vec<_> = replicas
            .iter()
            .map(|r| (id(r), r.stats.head_time().snapshot()))
            .collect();
        histogram(
            &mut encoder,
            "inferlb_replica_response_head",
            "Time from picking the replica to its response head.",
            &heads,
        )?;
        let totals: Vec<_> = replicas
            .iter()
            .map(|r| (id(r), r.stats.duration().snapshot()))
            .collect();
        histogram(
            &mut encoder,
            "inferlb_replica_request_duration",
            "Time from picking the replica to the last byte of its response.",
            &totals,
        )?;

        let mut m = encoder.encode_descriptor(
            "inferlb_worker_open_connections",
            "Client connections open on the worker.",
            None,
            MetricType::Gauge,
        )?;
        for (i, w) in self.workers.iter().enumerate() {
            let labels: Labels<'_> = vec![("worker", Cow::Owned(i.to_string()))];
            m.encode_family(&labels)?
                .encode_gauge(&(w.open_connections() as i64))?;
        }
        let mut m = encoder.encode_descriptor(
            "inferlb_worker_accepted_connections",
            "Client connections accepted by the worker.",
            None,
            MetricType::Counter,
        )?;
        for (i, w) in self.workers.iter().enumerate() {
            let labels: Labels<'_> = vec![("worker", Cow::Owned(i.to_string()))];
            m.encode_family(&labels)?
                .encode_counter::<NoLabelSet, _, u64>(&w.accepted(), None)?;
        }
        let mut m = encoder.encode_descriptor(
            "inferlb_worker_refused_connections",
            "Client connections closed at once because the worker was at its limit.",
            None,
            MetricType::Counter,
        )?;
        for (i, w) in self.workers.iter().enumerate() {
            let labels: Labels<'_> = vec![("worker", Cow::Owned(i.to_string()))];
            m.encode_family(&labels)?
                .encode_counter::<NoLabelSet, _, u64>(&w.refused(), None)?;
        }
        let generation = snapshot.generation() as i64;
        let mut m = encoder.encode_descriptor(
            "inferlb_snapshot_generation",
            "Generation of the replica snapshot the workers route with.",
            None,
            MetricType::Gauge,
        )?;
        m.encode_gauge(&generation)?;
        let mut m = encoder.encode_descriptor(
            "inferlb_build_info",
            "Build information; the value is always 1.",
            None,
            MetricType::Gauge,
        )?;
        let labels: Labels<'_> = vec![("version", Cow::Borrowed(env!("CARGO_PKG_VERSION")))];
        m.encode_family(&labels)?.encode_gauge(&1i64)?;
        Ok(())
    }
}

impl Metrics {
    /// Metrics over the control plane's snapshot and the workers' counters.
    pub fn new(control: Arc<Control>, workers: Vec<Arc<WorkerStats>>) -> Self {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Source { control, workers }));
        Self { registry }
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::with_capacity(16 * 1024);
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}
