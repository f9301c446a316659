//! Lock-free counters shared between the data plane (which bumps them) and
//! the control plane (which reads them for the API and metrics).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Upper bounds (seconds) of the latency buckets. Inference spans a 5 ms
/// embedding to a five-minute generation, so the buckets do too.
pub const LATENCY_BUCKETS: [f64; 16] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

/// A fixed-bucket latency histogram that many threads record into without a
/// lock. Buckets hold non-cumulative counts; [`Histogram::snapshot`] makes
/// them cumulative, as Prometheus expects.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_micros: AtomicU64,
    count: AtomicU64,
}

/// A point-in-time copy of a histogram.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// Sum of observations, in seconds.
    pub sum: f64,
    /// Number of observations.
    pub count: u64,
    /// `(upper bound, cumulative count)`, the last bound `+Inf`.
    pub buckets: Vec<(f64, u64)>,
}

impl Histogram {
    /// Records one observation.
    pub fn record(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let index = LATENCY_BUCKETS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[index].fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Cumulative buckets, sum and count.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut cumulative = 0;
        let mut buckets = Vec::with_capacity(self.buckets.len());
        for (i, bucket) in self.buckets.iter().enumerate() {
            cumulative += bucket.load(Ordering::Relaxed);
            let bound = LATENCY_BUCKETS.get(i).copied().unwrap_or(f64::INFINITY);
            buckets.push((bound, cumulative));
        }
        HistogramSnapshot {
            sum: self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
            count: self.count.load(Ordering::Relaxed),
            buckets,
        }
    }
}

/// Counters of one data-plane worker.
#[derive(Debug, Default)]
pub struct WorkerStats {
    open_connections: AtomicU64,
    accepted: AtomicU64,
    refused: AtomicU64,
    access_log_dropped: AtomicU64,
}

impl WorkerStats {
    /// Client connections open now.
    pub fn open_connections(&self) -> u64 {
        self.open_connections.load(Ordering::Relaxed)
    }
    /// Client connections accepted since start.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
    /// Client connections closed at once because the worker was full.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
    /// Access log lines dropped because the logger fell behind (a stalled
    /// disk): the data plane never waits for the log.
    pub fn access_log_dropped(&self) -> u64 {
        self.access_log_dropped.load(Ordering::Relaxed)
    }
    /// Counts access log lines dropped.
    pub fn access_log_lines_dropped(&self, lines: u64) {
        self.access_log_dropped.fetch_add(lines, Ordering::Relaxed);
    }
    /// Counts an accepted connection that is now open.
    pub fn connection_opened(&self) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
        self.open_connections.fetch_add(1, Ordering::Relaxed);
    }
    /// Counts an open connection closing.
    pub fn connection_closed(&self) {
        self.open_connections.fetch_sub(1, Ordering::Relaxed);
    }
    /// Counts a connection refused at the limit.
    pub fn connection_refused(&self) {
        self.accepted.fetch_add(1, Ordering::Relaxed);
        self.refused.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::default();
        h.record(Duration::from_millis(3));
        h.record(Duration::from_millis(30));
        h.record(Duration::from_secs(1000));
        let s = h.snapshot();
        assert_eq!(s.count, 3);
        assert_eq!(s.buckets[0], (0.005, 1));
        assert_eq!(s.buckets[3], (0.05, 2));
        assert_eq!(s.buckets.last(), Some(&(f64::INFINITY, 3)));
        assert!((s.sum - 1000.033).abs() < 1e-6);
    }
}

/// What clients saw, per pool and model, whoever answered: the replicas'
/// responses and the proxy's own (404 `model_not_found`, 503 with no
/// replica, 429 for a full queue, 502, 504, ...), and for streamed
/// responses the time to the first body byte and the gaps between chunks
/// (time to first token and inter-token latency, as vLLM's router exports
/// them). Shared by the workers, which reach it through a per-worker cache
/// of `Arc`s (no lock per request), and read by the admin API.
#[derive(Debug, Default)]
pub struct FrontEnd {
    pools: std::sync::RwLock<std::collections::HashMap<String, Arc<PoolFront>>>,
    /// TLS handshakes and HTTP/2 connections.
    pub edge: Edge,
}

/// Counters of the edge: TLS handshakes by outcome and HTTP/2 connections.
/// Handshake failures are counted here and never logged one by one at info
/// level (a scanner would fill the log).
#[derive(Debug, Default)]
pub struct Edge {
    /// Completed handshakes by version, cipher suite and whether the
    /// session was resumed. A handshake costs far more than this lock.
    handshakes: std::sync::Mutex<std::collections::BTreeMap<Handshake, u64>>,
    /// Failed handshakes by [`HandshakeError`].
    handshake_errors: [AtomicU64; HandshakeError::ALL.len()],
    /// HTTP/2 connections opened, streams served, and connections closed
    /// by the proxy for abuse, by [`H2Abuse`].
    pub h2_connections: AtomicU64,
    pub h2_streams: AtomicU64,
    h2_goaways: [AtomicU64; H2Abuse::ALL.len()],
}

/// Why a TLS handshake failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeError {
    /// Not finished within `timeouts.tls_handshake_timeout_ms`.
    Timeout,
    /// The client closed or reset the connection mid-handshake.
    Closed,
    /// The client's bytes were not a TLS handshake rustls accepts (a
    /// plaintext request on a TLS port, a version or suite mismatch).
    Protocol,
    /// A client certificate was missing or did not verify (mutual TLS).
    ClientCertificate,
    /// No certificate for the name the client asked for (with
    /// `unknown_server_name = "refuse"`).
    UnknownServerName,
    /// No protocol in common (ALPN).
    NoApplicationProtocol,
}

impl HandshakeError {
    pub const ALL: [Self; 6] = [
        Self::Timeout,
        Self::Closed,
        Self::Protocol,
        Self::ClientCertificate,
        Self::UnknownServerName,
        Self::NoApplicationProtocol,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Closed => "closed",
            Self::Protocol => "protocol",
            Self::ClientCertificate => "client_certificate",
            Self::UnknownServerName => "unknown_server_name",
            Self::NoApplicationProtocol => "no_application_protocol",
        }
    }
}

/// Why the proxy closed an HTTP/2 connection with GOAWAY.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum H2Abuse {
    /// More stream resets per second than `http2.max_resets_per_s`.
    RapidReset,
    /// More control frames per second than `http2.max_control_frames_per_s`.
    ControlFlood,
    /// A limit or protocol error the h2 codec found (a header list over its
    /// limit, a CONTINUATION flood, HPACK errors, bad frames).
    Protocol,
}

impl H2Abuse {
    pub const ALL: [Self; 3] = [Self::RapidReset, Self::ControlFlood, Self::Protocol];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::RapidReset => "rapid_reset",
            Self::ControlFlood => "control_flood",
            Self::Protocol => "protocol_error",
        }
    }
}

/// What a completed TLS handshake agreed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Handshake {
    /// `TLSv1.3` or `TLSv1.2`.
    pub version: &'static str,
    /// The cipher suite, e.g. `TLS13_AES_256_GCM_SHA384`.
    pub cipher: &'static str,
    /// The session was resumed (a ticket or the session cache).
    pub resumed: bool,
}

impl Edge {
    /// Counts a completed handshake.
    pub fn handshake(&self, handshake: Handshake) {
        let mut counts = self.handshakes.lock().unwrap_or_else(|e| e.into_inner());
        *counts.entry(handshake).or_default() += 1;
    }

    /// Counts a failed handshake.
    pub fn handshake_failed(&self, why: HandshakeError) {
        let i = HandshakeError::ALL
            .iter()
            .position(|&e| e == why)
            .unwrap_or(0);
        self.handshake_errors[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a connection closed for abuse.
    pub fn goaway(&self, why: H2Abuse) {
        let i = H2Abuse::ALL.iter().position(|&e| e == why).unwrap_or(0);
        self.h2_goaways[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Completed handshakes by what they agreed.
    pub fn handshakes(&self) -> Vec<(Handshake, u64)> {
        let counts = self.handshakes.lock().unwrap_or_else(|e| e.into_inner());
        counts.iter().map(|(k, v)| (*k, *v)).collect()
    }

    /// Failed handshakes by kind.
    pub fn handshake_errors(&self) -> [(HandshakeError, u64); HandshakeError::ALL.len()] {
        std::array::from_fn(|i| {
            (
                HandshakeError::ALL[i],
                self.handshake_errors[i].load(Ordering::Relaxed),
            )
        })
    }

    /// GOAWAYs for abuse by reason.
    pub fn goaways(&self) -> [(H2Abuse, u64); H2Abuse::ALL.len()] {
        std::array::from_fn(|i| (H2Abuse::ALL[i], self.h2_goaways[i].load(Ordering::Relaxed)))
    }
}

/// One pool's front-end counters (`""` is the default pool, or a request
/// routed nowhere).
#[derive(Debug, Default)]
pub struct PoolFront {
    /// Time from the request to the first body byte of a streamed response.
    pub ttft: Histogram,
    /// Gaps between the body chunks of a streamed response.
    pub itl: Histogram,
    models: std::sync::RwLock<std::collections::HashMap<String, Arc<ClassCounts>>>,
}

/// Responses by status class: 1xx, 2xx, 3xx, 4xx, 5xx.
#[derive(Debug, Default)]
pub struct ClassCounts([AtomicU64; 5]);

impl ClassCounts {
    /// Counts one response.
    pub fn record(&self, status: u16) {
        let i = usize::from(status / 100).clamp(1, 5) - 1;
        self.0[i].fetch_add(1, Ordering::Relaxed);
    }

    /// `(class label, count)` for each class.
    pub fn counts(&self) -> [(&'static str, u64); 5] {
        let labels = ["1xx", "2xx", "3xx", "4xx", "5xx"];
        std::array::from_fn(|i| (labels[i], self.0[i].load(Ordering::Relaxed)))
    }
}

impl FrontEnd {
    /// The counters of `pool`, made on first use.
    pub fn pool(&self, pool: &str) -> Arc<PoolFront> {
        if let Some(found) = self.pools.read().ok().and_then(|p| p.get(pool).cloned()) {
            return found;
        }
        let mut pools = self.pools.write().unwrap_or_else(|e| e.into_inner());
        Arc::clone(pools.entry(pool.to_owned()).or_default())
    }

    /// Every pool's counters, by name.
    pub fn pools(&self) -> Vec<(String, Arc<PoolFront>)> {
        let pools = self.pools.read().unwrap_or_else(|e| e.into_inner());
        let mut list: Vec<_> = pools
            .iter()
            .map(|(k, v)| (k.clone(), Arc::clone(v)))
            .collect();
        list.sort_by(|a, b| a.0.cmp(&b.0));
        list
    }
}

impl PoolFront {
    /// The counters of `model` in this pool, made on first use.
    pub fn model(&self, model: &str) -> Arc<ClassCounts> {
        if let Some(found) = self.models.read().ok().and_then(|m| m.get(model).cloned()) {
            return found;
        }
        let mut models = self.models.write().unwrap_or_else(|e| e.into_inner());
        Arc::clone(models.entry(model.to_owned()).or_default())
    }

    /// Every model's counters, by name.
    pub fn models(&self) -> Vec<(String, Arc<ClassCounts>)> {
        let models = self.models.read().unwrap_or_else(|e| e.into_inner());
        let mut list: Vec<_> = models
            .iter()
            .map(|(k, v)| (k.clone(), Arc::clone(v)))
            .collect();
        list.sort_by(|a, b| a.0.cmp(&b.0));
        list
    }
}
