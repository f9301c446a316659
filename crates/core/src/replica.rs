//! A replica: one model server the balancer may send requests to.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use crossbeam::utils::CachePadded;
use serde::{Deserialize, Serialize};

use crate::pool::PoolName;
use crate::stats::Histogram;

/// The largest weight a replica may have. Weights are relative, so 1000 gives
/// finer steps than anyone needs while keeping weighted schedules small.
pub const MAX_WEIGHT: u32 = 1000;

/// The weight a replica gets when none is given (nginx and HAProxy use 1 too).
pub const DEFAULT_WEIGHT: u32 = 1;

/// Longest replica id accepted; ids appear in URLs, metrics labels and logs.
pub const MAX_ID_LEN: usize = 64;

/// Why a replica id, address or weight was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplicaError {
    /// The address is neither `ip:port` nor a resolvable `host:port`.
    #[error("address {address:?} is not valid: {reason}")]
    Address { address: String, reason: String },
    /// The weight is outside `0..=1000`.
    #[error("weight {weight} is out of range: it must be between 0 and {MAX_WEIGHT}")]
    Weight { weight: u64 },
    /// The id is empty, too long or has characters other than `[A-Za-z0-9._-]`.
    #[error("id {id:?} is not valid: use 1 to {MAX_ID_LEN} characters from A-Z a-z 0-9 . _ -")]
    Id { id: String },
}

/// A replica's stable, operator-visible name (`[A-Za-z0-9._-]{1,64}`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ReplicaId(Arc<str>);

impl ReplicaId {
    /// Checks and wraps an id given by an operator.
    pub fn new(id: &str) -> Result<Self, ReplicaError> {
        // `.` and `..` are path segments, not names: in a URL they address
        // another resource (`/v1/replicas/..` is `/v1/`).
        let valid = !id.is_empty()
            && id != "."
            && id != ".."
            && id.len() <= MAX_ID_LEN
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if valid {
            Ok(Self(Arc::from(id)))
        } else {
            Err(ReplicaError::Id { id: id.to_owned() })
        }
    }

    /// The id derived from an address when none is given: stable across restarts
    /// and safe in a URL (`127.0.0.1:9001` becomes `127.0.0.1-9001`).
    pub fn from_address(address: &str) -> Self {
        let mut id = String::with_capacity(address.len());
        for c in address.chars() {
            match c {
                'A'..='Z' | 'a'..='z' | '0'..='9' | '.' | '_' => id.push(c),
                '[' | ']' => {}
                _ => id.push('-'),
            }
        }
        id.truncate(MAX_ID_LEN);
        if id.is_empty() {
            id.push('r');
        }
        Self(Arc::from(id.as_str()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ReplicaId {
    type Error = ReplicaError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(&value)
    }
}

impl From<ReplicaId> for String {
    fn from(id: ReplicaId) -> Self {
        id.0.to_string()
    }
}

impl fmt::Display for ReplicaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ReplicaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

/// Checks the form of `ip:port` (IPv6 in brackets) or `host:port` without
/// resolving anything: `Some` address for an IP literal, `None` for a host
/// name still to resolve. Port 0 is refused: nothing can be reached there.
pub fn parse_address(address: &str) -> Result<Option<SocketAddr>, ReplicaError> {
    let invalid = |reason: &str| ReplicaError::Address {
        address: address.to_owned(),
        reason: reason.to_owned(),
    };
    if let Ok(addr) = address.parse::<SocketAddr>() {
        if addr.port() == 0 {
            return Err(invalid("port 0 cannot be connected to"));
        }
        return Ok(Some(addr));
    }
    let (host, port) = address
        .rsplit_once(':')
        .ok_or_else(|| invalid("expected ip:port or host:port"))?;
    if host.is_empty() || host.contains(':') {
        return Err(invalid("expected ip:port, [ipv6]:port or host:port"));
    }
    match port.parse::<u16>() {
        Ok(0) => Err(invalid("port 0 cannot be connected to")),
        Ok(_) => Ok(None),
        Err(_) => Err(invalid("the port must be a number from 1 to 65535")),
    }
}

/// Resolves `ip:port` (IPv6 in brackets) or `host:port` to one socket address.
///
/// A host name is resolved once, here, when the replica is added: a load
/// balancer that re-resolved per request would put DNS on the request path.
pub fn resolve_address(address: &str) -> Result<SocketAddr, ReplicaError> {
    if let Some(addr) = parse_address(address)? {
        return Ok(addr);
    }
    let invalid = |reason: &str| ReplicaError::Address {
        address: address.to_owned(),
        reason: reason.to_owned(),
    };
    let host = address.rsplit_once(':').map_or(address, |(h, _)| h);
    let addr = address
        .to_socket_addrs()
        .map_err(|e| invalid(&format!("cannot resolve host {host:?}: {e}")))?
        .next()
        .ok_or_else(|| invalid("the host resolved to no address"))?;
    if addr.port() == 0 {
        return Err(invalid("port 0 cannot be connected to"));
    }
    Ok(addr)
}

/// Checks a weight against `0..=MAX_WEIGHT`.
pub fn check_weight(weight: u64) -> Result<u32, ReplicaError> {
    u32::try_from(weight)
        .ok()
        .filter(|w| *w <= MAX_WEIGHT)
        .ok_or(ReplicaError::Weight { weight })
}

/// Whether a replica takes new requests.
///
/// ```text
///   add ──▶ Active ──drain──▶ Draining ──in-flight 0 or timeout──▶ removed
///             ▲                   │
///             └──── undrain ──────┘
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplicaState {
    /// Takes new requests (when its weight is above 0).
    Active,
    /// Takes no new requests; its in-flight requests finish.
    Draining,
}

impl ReplicaState {
    /// The lowercase name used in the API, logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Draining => "draining",
        }
    }
}

/// The response classes counted per replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusClass {
    /// 1xx and 2xx.
    Success,
    /// 3xx.
    Redirect,
    /// 4xx.
    ClientError,
    /// 5xx.
    ServerError,
}

impl StatusClass {
    /// The class of an HTTP status code.
    pub fn of(status: u16) -> Self {
        match status {
            0..=299 => Self::Success,
            300..=399 => Self::Redirect,
            400..=499 => Self::ClientError,
            _ => Self::ServerError,
        }
    }
}

/// Counters of one replica, shared by every worker and carried from snapshot
/// to snapshot so that republishing never resets them.
///
/// Each counter sits on its own cache line: workers on different cores bump
/// them concurrently, and false sharing would turn every increment into a
/// cross-core cache miss.
#[derive(Debug, Default)]
pub struct ReplicaStats {
    in_flight: CachePadded<AtomicU64>,
    requests: CachePadded<AtomicU64>,
    responses: [CachePadded<AtomicU64>; 4],
    connect_errors: CachePadded<AtomicU64>,
    bytes_in: CachePadded<AtomicU64>,
    bytes_out: CachePadded<AtomicU64>,
    head_time: Histogram,
    duration: Histogram,
    evicted: AtomicBool,
    /// Peak-EWMA of the time to response head, in microseconds (f64 bits).
    ewma_head_us: AtomicU64,
    /// Until when (clock ms) the replica is avoided after a 429 or a 503
    /// with `Retry-After`.
    penalty_until: AtomicU64,
    /// Until when (clock ms) the replica is ejected as an outlier.
    ejected_until: AtomicU64,
    /// Connect failures and 5xx responses in a row.
    consecutive_failures: AtomicU64,
    /// Times ejected so far.
    ejections: AtomicU64,
    /// The engine's own load, from its metrics.
    engine: EngineCells,
    /// The LoRA adapters the engine is serving, from its metrics (vLLM's
    /// `vllm:lora_requests_info`), fresh as long as the engine load is.
    adapters: arc_swap::ArcSwapOption<Adapters>,
}

/// The LoRA adapters a model server reports: those with requests running
/// or waiting (so loaded, or about to be), and how many it holds at once.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Adapters {
    /// `running_lora_adapters`.
    pub running: Vec<String>,
    /// `waiting_lora_adapters`.
    pub waiting: Vec<String>,
    /// `max_lora`: adapters served at once.
    pub max_lora: u32,
}

impl Adapters {
    /// Whether `name` is running or waiting (its weights are on the
    /// engine, or being put there).
    pub fn has(&self, name: &str) -> bool {
        self.running.iter().chain(&self.waiting).any(|a| a == name)
    }

    /// Whether another adapter fits without evicting one in use.
    pub fn has_free_slot(&self) -> bool {
        let waiting_only = self
            .waiting
            .iter()
            .filter(|w| !self.running.contains(w))
            .count();
        ((self.running.len() + waiting_only) as u32) < self.max_lora
    }
}

/// The last engine load scraped from a replica's metrics, as f64 bits.
#[derive(Debug, Default)]
struct EngineCells {
    waiting: AtomicU64,
    running: AtomicU64,
    kv_usage: AtomicU64,
    /// When it was scraped (`clock::now_ms`); 0: never.
    at_ms: AtomicU64,
    /// How long it counts as fresh.
    fresh_ms: AtomicU64,
    /// inferlb's own in flight when it was scraped: what was sent (or
    /// finished) since then is not in the engine's numbers yet.
    in_flight_at: AtomicU64,
}

/// A model server's own view of its load, from its Prometheus metrics.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct EngineLoad {
    /// Requests waiting in the engine's queue.
    pub waiting: f64,
    /// Requests being run (decoded) now.
    pub running: f64,
    /// KV-cache usage, 0 to 1.
    pub kv_usage: f64,
}

impl ReplicaStats {
    /// Requests sent to this replica whose response has not finished yet,
    /// across all workers.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Requests this replica was picked for.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Responses received in one class.
    pub fn responses(&self, class: StatusClass) -> u64 {
        self.responses[class as usize].load(Ordering::Relaxed)
    }

    /// Connections to this replica that were refused or timed out.
    pub fn connect_errors(&self) -> u64 {
        self.connect_errors.load(Ordering::Relaxed)
    }

    /// Bytes received from the replica (response heads and bodies).
    pub fn bytes_in(&self) -> u64 {
        self.bytes_in.load(Ordering::Relaxed)
    }

    /// Bytes sent to the replica (request heads and bodies).
    pub fn bytes_out(&self) -> u64 {
        self.bytes_out.load(Ordering::Relaxed)
    }

    /// Time from picking the replica to its response head.
    pub fn head_time(&self) -> &Histogram {
        &self.head_time
    }

    /// Time from picking the replica to the response's last byte.
    pub fn duration(&self) -> &Histogram {
        &self.duration
    }

    /// Whether the replica was removed while requests were still in flight
    /// (a drain that timed out): the data plane closes those connections.
    pub fn is_evicted(&self) -> bool {
        self.evicted.load(Ordering::Relaxed)
    }

    /// Marks the replica removed; its in-flight exchanges are cut.
    pub fn evict(&self) {
        self.evicted.store(true, Ordering::Relaxed);
    }

    /// The peak-EWMA of the time to response head, in microseconds; 0
    /// before the first response.
    pub fn ewma_head_us(&self) -> f64 {
        f64::from_bits(self.ewma_head_us.load(Ordering::Relaxed))
    }

    /// Records a time to response head: the histogram, and the peak-EWMA
    /// (a slower sample is taken at once; faster ones decay it gradually,
    /// so a replica that just stalled is avoided until it proves fast).
    pub fn record_head_time(&self, d: std::time::Duration) {
        self.head_time.record(d);
        let sample = d.as_secs_f64() * 1e6;
        let current = self.ewma_head_us();
        let next = if sample > current || current == 0.0 {
            sample
        } else {
            current + (sample - current) * EWMA_DECAY
        };
        self.ewma_head_us.store(next.to_bits(), Ordering::Relaxed);
    }

    /// Avoids the replica until `until_ms` (a soft penalty: used only when
    /// nothing else is left).
    pub fn penalize_until(&self, until_ms: u64) {
        self.penalty_until.fetch_max(until_ms, Ordering::Relaxed);
    }

    /// Whether the replica is penalized at `now_ms`.
    pub fn is_penalized(&self, now_ms: u64) -> bool {
        self.penalty_until.load(Ordering::Relaxed) > now_ms
    }

    /// Whether the replica is ejected at `now_ms`.
    pub fn is_ejected(&self, now_ms: u64) -> bool {
        self.ejected_until.load(Ordering::Relaxed) > now_ms
    }

    /// Until when the replica is ejected (clock ms; 0 if never).
    pub fn ejected_until(&self) -> u64 {
        self.ejected_until.load(Ordering::Relaxed)
    }

    /// Times the replica has been ejected.
    pub fn ejections(&self) -> u64 {
        self.ejections.load(Ordering::Relaxed)
    }

    /// Counts a success: the run of failures is over.
    pub fn record_success(&self) {
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
    }

    /// Counts a failure; returns the length of the current run.
    pub fn record_failure(&self) -> u64 {
        self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Ejects the replica until `until_ms` and starts a new run.
    pub fn eject_until(&self, until_ms: u64) {
        self.ejected_until.store(until_ms, Ordering::Relaxed);
        self.ejections.fetch_add(1, Ordering::Relaxed);
        self.consecutive_failures.store(0, Ordering::Relaxed);
    }

    /// Records a scrape of the replica's engine metrics, fresh for `fresh_ms`.
    pub fn record_engine(&self, load: EngineLoad, now_ms: u64, fresh_ms: u64) {
        let e = &self.engine;
        e.waiting.store(load.waiting.to_bits(), Ordering::Relaxed);
        e.running.store(load.running.to_bits(), Ordering::Relaxed);
        e.kv_usage.store(load.kv_usage.to_bits(), Ordering::Relaxed);
        e.fresh_ms.store(fresh_ms, Ordering::Relaxed);
        e.in_flight_at.store(self.in_flight(), Ordering::Relaxed);
        e.at_ms.store(now_ms.max(1), Ordering::Relaxed);
    }

    /// Records the adapters the engine reports (`None`: it reports none).
    pub fn record_adapters(&self, adapters: Option<Adapters>) {
        self.adapters.store(adapters.map(std::sync::Arc::new));
    }

    /// What `f` says of the adapters the engine reported, when its metrics
    /// are fresh at `now_ms` (read in place: no reference count touched).
    pub fn with_adapters<R>(&self, now_ms: u64, f: impl FnOnce(&Adapters) -> R) -> Option<R> {
        self.engine(now_ms)?;
        self.adapters.load().as_deref().map(f)
    }

    /// The last adapters reported, fresh or not (for the API).
    pub fn adapters_last(&self) -> Option<std::sync::Arc<Adapters>> {
        self.adapters.load_full()
    }

    /// The last scraped engine load and when it was scraped, fresh or not.
    pub fn engine_last(&self) -> Option<(EngineLoad, u64)> {
        let e = &self.engine;
        let at = e.at_ms.load(Ordering::Relaxed);
        (at != 0).then(|| {
            let f = |cell: &AtomicU64| f64::from_bits(cell.load(Ordering::Relaxed));
            let load = EngineLoad {
                waiting: f(&e.waiting),
                running: f(&e.running),
                kv_usage: f(&e.kv_usage),
            };
            (load, at)
        })
    }

    /// The engine load when it is fresh at `now_ms`; `None` when it was
    /// never scraped or its last scrape is too old to route on.
    #[inline]
    pub fn engine(&self, now_ms: u64) -> Option<EngineLoad> {
        let at = self.engine.at_ms.load(Ordering::Relaxed);
        if at == 0 || now_ms.saturating_sub(at) > self.engine.fresh_ms.load(Ordering::Relaxed) {
            return None;
        }
        self.engine_last().map(|(load, _)| load)
    }

    /// Requests inferlb started (positive) or finished (negative) on this
    /// replica since its engine metrics were scraped.
    pub fn in_flight_since_scrape(&self) -> i64 {
        self.in_flight() as i64 - self.engine.in_flight_at.load(Ordering::Relaxed) as i64
    }

    /// Marks the last engine load stale at once (a scrape failed): routing
    /// falls back to inferlb's own count; the values stay visible.
    pub fn expire_engine(&self) {
        self.engine.fresh_ms.store(0, Ordering::Relaxed);
    }

    /// Counts a request as started; the returned guard counts it as finished
    /// when dropped, on every path out of the request.
    pub fn start_request(self: &Arc<Self>) -> InFlight {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(Arc::clone(self))
    }

    /// Counts one response by its status.
    pub fn record_response(&self, status: u16) {
        self.responses[StatusClass::of(status) as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a refused or timed-out connect.
    pub fn record_connect_error(&self) {
        self.connect_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts bytes received from the replica.
    pub fn add_bytes_in(&self, n: usize) {
        self.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Counts bytes sent to the replica.
    pub fn add_bytes_out(&self, n: usize) {
        self.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// Weight of a faster sample in the peak-EWMA (a slower one replaces it).
const EWMA_DECAY: f64 = 0.3;

/// One in-flight request; decrements the replica's in-flight count on drop.
#[derive(Debug)]
pub struct InFlight(Arc<ReplicaStats>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The share a replica in slow start gets at first: small, not zero, so a
/// new replica starts warming up at once.
const SLOW_START_FLOOR: f64 = 0.05;

/// Hands out process-unique numbers for replicas, so that an upstream pool can
/// tell a re-added address from the replica it replaced.
static NEXT_UID: AtomicU64 = AtomicU64::new(1);

/// One replica as seen in a snapshot. Cheap to clone: the stats are shared.
#[derive(Debug, Clone)]
pub struct Replica {
    /// Process-unique number, never reused; keys per-worker connection pools.
    pub uid: u64,
    /// Stable operator-visible id.
    pub id: ReplicaId,
    /// The address as the operator wrote it (`host:port` stays a host name).
    pub address: String,
    /// Where connections go.
    pub addr: SocketAddr,
    /// Relative share of new requests; 0 takes none.
    pub weight: u32,
    /// Active or draining.
    pub state: ReplicaState,
    /// When the replica was added.
    pub added_at: SystemTime,
    /// While draining: when it is removed even with requests in flight.
    pub drain_deadline: Option<SystemTime>,
    /// Counters shared by every snapshot that holds this replica.
    pub stats: Arc<ReplicaStats>,
    /// What the active health checks say.
    pub health: Health,
    /// When (clock ms) the replica joined or recovered, for slow start.
    pub ramp_from_ms: u64,
    /// Its host name resolved: false for a replica restored from the state
    /// file whose name did not resolve at start. It takes no traffic (its
    /// `addr` is a placeholder) and is retried by the resolver.
    pub resolved: bool,
    /// The pool (model) the replica serves.
    pub pool: PoolName,
    /// Who made it: an operator (config, flags, admin API) or the local
    /// scaler, whose replicas are never persisted and which `PUT` and a
    /// config reload leave alone.
    pub origin: Origin,
}

/// Who made a replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Origin {
    /// Declared in the config or flags, or added through the admin API.
    #[default]
    Operator,
    /// Started and admitted by the pool's local scaler.
    Scaler,
    /// Another instance of the fleet's local scaler's replica, which that
    /// instance registers in etcd: routed here too, never written, and
    /// gone with that instance's lease.
    Peer,
}

/// Active health-check verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// Passing (or not checked yet).
    Healthy,
    /// Failed the unhealthy threshold of checks in a row.
    Unhealthy,
}

impl Replica {
    /// A new active replica with fresh counters.
    pub fn new(id: ReplicaId, address: String, addr: SocketAddr, weight: u32) -> Self {
        Self {
            uid: NEXT_UID.fetch_add(1, Ordering::Relaxed),
            id,
            address,
            addr,
            weight,
            state: ReplicaState::Active,
            added_at: SystemTime::now(),
            drain_deadline: None,
            stats: Arc::default(),
            health: Health::Healthy,
            ramp_from_ms: crate::clock::now_ms(),
            resolved: true,
            pool: PoolName::default_pool(),
            origin: Origin::Operator,
        }
    }

    /// The same replica in `pool`.
    pub fn in_pool(mut self, pool: PoolName) -> Self {
        self.pool = pool;
        self
    }

    /// A replica whose host name does not resolve yet: kept, shown, retried,
    /// never routed to.
    pub fn unresolved(id: ReplicaId, address: String, weight: u32) -> Self {
        Self {
            resolved: false,
            ..Self::new(id, address, SocketAddr::from(([0, 0, 0, 0], 0)), weight)
        }
    }

    /// Whether the balancer may send it new requests (before dynamic
    /// penalties and ejections, and before failing open).
    pub fn is_routable(&self) -> bool {
        self.state == ReplicaState::Active
            && self.weight > 0
            && self.health == Health::Healthy
            && self.resolved
    }

    /// The weight multiplier of slow start at `now_ms`: ramps linearly from a
    /// small floor to 1 over `slow_start_ms` after the replica joined,
    /// recovered its health, or came back from an ejection; 1 when slow
    /// start is off.
    pub fn ramp(&self, now_ms: u64, slow_start_ms: u64) -> f64 {
        if slow_start_ms == 0 {
            return 1.0;
        }
        // An ejection ending is a recovery too: the ramp starts again there.
        let from = self.ramp_from_ms.max(self.stats.ejected_until());
        let elapsed = now_ms.saturating_sub(from) as f64;
        (elapsed / slow_start_ms as f64).clamp(SLOW_START_FLOOR, 1.0)
    }
}

#[cfg(test)]
mod tests;
