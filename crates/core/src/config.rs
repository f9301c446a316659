//! Configuration: the TOML file form, and the validated form the program uses.
//!
//! [`FileConfig`] mirrors the file one to one (unknown fields are refused so a
//! typo cannot silently fall back to a default); [`Config::try_from`] checks
//! every field and turns milliseconds into `Duration`s. Each error names the
//! field and the reason. Comments name the nginx or ALB setting each field
//! corresponds to.

use std::net::SocketAddr;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::balance::Routing;
use crate::cidr::Cidr;
use crate::command::ReplicaSpec;
use crate::pool::{EngineMetrics, Flavor, LoadWeights, PoolName, PoolSpec, PrefixSettings};
use crate::replica::{check_weight, resolve_address, ReplicaId, DEFAULT_WEIGHT};

/// A configuration that cannot be used, with the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The file is not valid TOML or has a field of the wrong type or name.
    #[error("{0}")]
    Parse(String),
    /// A field has a value the program cannot use.
    #[error("invalid value for `{field}`: {reason}")]
    Invalid { field: String, reason: String },
}

impl ConfigError {
    fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Which monoio driver the workers run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IoDriver {
    /// io_uring, falling back to epoll (said once in the log) when the kernel
    /// or its limits (RLIMIT_MEMLOCK, seccomp) refuse to build a ring.
    #[default]
    Auto,
    /// io_uring only; start-up fails when a ring cannot be built.
    Uring,
    /// The epoll driver.
    Legacy,
}

impl IoDriver {
    /// The name used in the config and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Uring => "uring",
            Self::Legacy => "legacy",
        }
    }
}

impl FromStr for IoDriver {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "uring" | "io_uring" => Ok(Self::Uring),
            "legacy" | "epoll" => Ok(Self::Legacy),
            _ => Err(format!(
                "unknown I/O driver {s:?}: expected auto, uring or legacy"
            )),
        }
    }
}

/// The configuration file, as written.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Address the data plane listens on. Default `0.0.0.0:8080`.
    pub listen: Option<String>,
    /// Worker threads, one per core; 0 or absent means one per available core
    /// (nginx `worker_processes auto`).
    pub workers: Option<usize>,
    /// `auto` (io_uring, epoll where io_uring is unavailable), `uring` or `legacy`.
    pub io_driver: Option<IoDriver>,
    /// Pin worker N to CPU N (nginx `worker_cpu_affinity auto`). Default false.
    pub cpu_pinning: Option<bool>,
    /// The routing rule, `round_robin` (default), `weighted_round_robin`,
    /// `least_outstanding`, `p2c`, `least_load` or `prefix`; or a
    /// `[routing]` table with `rule` and how the model is read.
    pub routing: Option<FileRouting>,
    /// `prefix` routing's defaults for every pool.
    #[serde(default)]
    pub prefix: FilePrefix,
    /// `least_load`'s weights, for every pool.
    #[serde(default)]
    pub least_load: FileLoadWeights,
    /// Engine metrics scraping, for every pool (the default pool included).
    #[serde(default)]
    pub engine_metrics: FileEngineMetrics,
    /// Pools: one model's replicas each.
    #[serde(default)]
    pub pools: Vec<FilePool>,
    /// Peers whose `X-Forwarded-For`, `X-Forwarded-Proto`, `X-Real-IP` and
    /// `Forwarded` headers are believed and appended to, as CIDRs
    /// (`10.0.0.0/8`, `::1/128`, or a bare address). Default empty: nobody
    /// is trusted, as at an edge, and those headers are replaced (nginx
    /// `set_real_ip_from`; Envoy `xff_num_trusted_hops`).
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// Forward request headers whose names contain `_`. Default false: they
    /// are dropped, because a CGI/WSGI backend reads `X_Forwarded_For` and
    /// `X-Forwarded-For` as the same variable (nginx `underscores_in_headers`).
    pub underscores_in_headers: Option<bool>,
    /// Timeouts, in milliseconds.
    #[serde(default)]
    pub timeouts: FileTimeouts,
    /// Limits that protect the proxy from clients.
    #[serde(default)]
    pub limits: FileLimits,
    /// The upstream connection pool.
    #[serde(default)]
    pub upstream: FileUpstream,
    /// The admin API.
    #[serde(default)]
    pub admin: FileAdmin,
    /// Slow start: a new or recovered replica's share ramps up linearly over
    /// this long (ms); 0 or absent is off (ALB `slow_start.duration_seconds`).
    pub slow_start_ms: Option<u64>,
    /// Active health checks.
    #[serde(default)]
    pub health: FileHealth,
    /// Re-resolving replica host names.
    #[serde(default)]
    pub dns: FileDns,
    /// Passive outlier ejection.
    #[serde(default)]
    pub outlier: FileOutlier,
    /// Retries on another replica.
    #[serde(default)]
    pub retries: FileRetries,
    /// The declared replicas; runtime changes from a state file, when one is
    /// used, are applied on top of them.
    #[serde(default)]
    pub replicas: Vec<FileReplica>,
    /// Autoscaling signals the proxy publishes.
    #[serde(default)]
    pub autoscaling: FileAutoscaling,
}

/// `[autoscaling]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAutoscaling {
    /// Publishing the proxy's own concurrency to CloudWatch.
    pub publish: Option<FilePublish>,
}

/// `[autoscaling.publish]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilePublish {
    /// CloudWatch namespace. Default `inferlb`.
    pub namespace: Option<String>,
    /// Seconds between publications: 10 (high-resolution metrics) or 60
    /// (default).
    pub interval_s: Option<u64>,
    /// AWS region; default: aws-config's chain.
    pub region: Option<String>,
    /// Dimensions added to every metric (the pool is always one), e.g.
    /// `[{ name = "EndpointName", value = "chat-llm" }]`.
    #[serde(default)]
    pub dimensions: Vec<FileDimension>,
}

/// A CloudWatch dimension.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDimension {
    pub name: String,
    pub value: String,
}

/// Publishing the proxy's concurrency to CloudWatch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub namespace: String,
    pub interval: Duration,
    pub region: Option<String>,
    /// `(name, value)` pairs added to every metric, after `Pool`.
    pub dimensions: Vec<(String, String)>,
}

/// `routing = "p2c"`, or a `[routing]` table.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum FileRouting {
    /// Just the rule.
    Rule(Routing),
    /// The rule and how a request's model is found.
    Table(FileRoutingTable),
}

/// `[routing]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRoutingTable {
    /// The routing rule. Default `round_robin`.
    pub rule: Option<Routing>,
    /// The header that names the model. Default `X-Model`.
    pub model_header: Option<String>,
    /// JSON bodies up to this size are read for their `"model"` (and for
    /// `prefix` routing, their text) before a replica is picked. Default
    /// 1 MiB; 0 turns body inspection off.
    pub max_inspect_body_bytes: Option<usize>,
}

/// `[prefix]` or `[pools.prefix]`: see [`PrefixSettings`].
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct FilePrefix {
    pub min_match_ratio: Option<f64>,
    pub balance_abs_threshold: Option<f64>,
    pub balance_rel_threshold: Option<f64>,
    pub max_tree_bytes: Option<usize>,
}

impl FilePrefix {
    /// These values over `base`.
    pub fn over(&self, base: PrefixSettings) -> PrefixSettings {
        PrefixSettings {
            min_match_ratio: self.min_match_ratio.unwrap_or(base.min_match_ratio),
            balance_abs_threshold: self
                .balance_abs_threshold
                .unwrap_or(base.balance_abs_threshold),
            balance_rel_threshold: self
                .balance_rel_threshold
                .unwrap_or(base.balance_rel_threshold),
            max_tree_bytes: self.max_tree_bytes.unwrap_or(base.max_tree_bytes),
        }
    }
}

/// `[least_load]` or `[pools.least_load]`: see [`LoadWeights`].
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct FileLoadWeights {
    pub queue: Option<f64>,
    pub running: Option<f64>,
    pub kv_cache: Option<f64>,
    pub in_flight: Option<f64>,
}

impl FileLoadWeights {
    /// These values over `base`.
    pub fn over(&self, base: LoadWeights) -> LoadWeights {
        LoadWeights {
            queue: self.queue.unwrap_or(base.queue),
            running: self.running.unwrap_or(base.running),
            kv_cache: self.kv_cache.unwrap_or(base.kv_cache),
            in_flight: self.in_flight.unwrap_or(base.in_flight),
        }
    }
}

/// `[engine_metrics]` or `[pools.engine_metrics]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEngineMetrics {
    /// Scrape each replica's metrics. Default false.
    pub enabled: Option<bool>,
    /// Default `/metrics`.
    pub path: Option<String>,
    /// Default 250.
    pub interval_ms: Option<u64>,
    /// `auto` (default), `vllm`, `sglang` or `tgi`.
    pub flavor: Option<Flavor>,
}

/// `[[pools]]`: a model's replicas.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilePool {
    /// The model name clients send.
    pub name: String,
    /// Other names of the model (e.g. its Hugging Face id).
    #[serde(default)]
    pub aliases: Vec<String>,
    /// The pool's routing rule; default: the top-level one.
    pub routing: Option<Routing>,
    /// The pool's replicas.
    #[serde(default)]
    pub replicas: Vec<FileReplica>,
    /// Overrides of `[prefix]`.
    #[serde(default)]
    pub prefix: FilePrefix,
    /// Overrides of `[least_load]`.
    #[serde(default)]
    pub least_load: FileLoadWeights,
    /// Engine metrics scraping.
    #[serde(default)]
    pub engine_metrics: FileEngineMetrics,
    /// Overrides of `[health]` for this pool's replicas.
    #[serde(default)]
    pub health: FilePoolHealth,
    /// Local autoscaling: the pool starts and stops its own replicas.
    pub autoscaling: Option<FilePoolAutoscaling>,
}

/// `[pools.autoscaling]`: see [`PoolAutoscaling`](crate::scaling::PoolAutoscaling).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilePoolAutoscaling {
    /// Fewest replicas; 0 scales to zero when idle. Default 0.
    pub min: Option<u32>,
    /// Most replicas (required).
    pub max: Option<u32>,
    /// In-flight requests per replica to keep. Default 4.
    pub target_in_flight: Option<f64>,
    /// Default 30.
    pub scale_out_cooldown_s: Option<u64>,
    /// Default 300.
    pub scale_in_cooldown_s: Option<u64>,
    /// With `min = 0`: no request for this long → 0 replicas. Default 600.
    pub idle_to_zero_s: Option<u64>,
    /// Datapoints above target before a scale-out. Default 3.
    pub scale_out_datapoints: Option<u32>,
    /// The scale-out datapoints' period. Default 10.
    pub scale_out_period_s: Option<u64>,
    /// Datapoints below 90 % of the target before a scale-in. Default 15.
    pub scale_in_datapoints: Option<u32>,
    /// The scale-in datapoints' period. Default 60.
    pub scale_in_period_s: Option<u64>,
    /// `exec` (a child process per replica) or `systemd` (a template unit).
    pub provider: Option<String>,
    /// exec: the command and its arguments; `{port}`, `{index}`, `{pool}`
    /// and `{host}` are substituted.
    pub command: Option<Vec<String>>,
    /// exec: extra environment, values substituted like `command`.
    #[serde(default)]
    pub env: std::collections::BTreeMap<String, String>,
    /// exec: the ports `{port}` is taken from, `"20000-20099"`.
    pub ports: Option<String>,
    /// systemd: the template unit, e.g. `"model@{index}.service"`.
    pub unit: Option<String>,
    /// systemd: the port replica `index` listens on, `"{20000 + index}"`.
    pub port: Option<String>,
    /// The address replicas listen on. Default 127.0.0.1.
    pub host: Option<std::net::IpAddr>,
    /// Default 600.
    pub start_timeout_s: Option<u64>,
    /// Default 30.
    pub stop_grace_s: Option<u64>,
    /// How long a scale-in drain may take. Default 300.
    pub drain_timeout_s: Option<u64>,
    /// The path a starting replica must answer 200–399 on; default the
    /// pool's `[pools.health] path`, else `/health`.
    pub health_path: Option<String>,
    /// How long a request may wait for a first replica. Default 60000.
    pub queue_timeout_ms: Option<u64>,
    /// Held requests beyond this many get 503. Default 1000.
    pub max_queued: Option<u32>,
    /// Requests in flight per replica beyond which more are held; default
    /// none (only a pool with no routable replica holds).
    pub max_in_flight_per_replica: Option<u32>,
}

/// `[pools.health]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilePoolHealth {
    /// Check this pool's replicas; default: `[health] enabled`.
    pub enabled: Option<bool>,
    /// The path checked; default: `[health] path`.
    pub path: Option<String>,
}

/// How a request's model is found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSelection {
    /// The header naming the model, lowercase.
    pub header: String,
    /// JSON bodies up to this size are inspected; 0: none.
    pub max_inspect_body_bytes: usize,
}

impl Default for ModelSelection {
    fn default() -> Self {
        Self {
            header: "x-model".into(),
            max_inspect_body_bytes: 1024 * 1024,
        }
    }
}

/// `[timeouts]`: every value in milliseconds, each above 0.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTimeouts {
    /// Time for a client to send a whole request head; then 408 and close.
    /// Default 10 000 (nginx `client_header_timeout`, 60 s there).
    pub client_header_timeout_ms: Option<u64>,
    /// How long an idle keep-alive client connection is kept. Default 60 000
    /// (nginx `keepalive_timeout` 75 s; ALB idle timeout 60 s).
    pub client_keepalive_timeout_ms: Option<u64>,
    /// Time to establish an upstream connection before trying the next
    /// replica. Default 2 000 (nginx `proxy_connect_timeout`, 60 s there).
    pub upstream_connect_timeout_ms: Option<u64>,
    /// Time from the end of the request to the response head. Inference is
    /// slow, so the default is 300 000 (nginx `proxy_read_timeout` 60 s;
    /// SageMaker's invocation timeout is 60 s, longer for streaming).
    pub upstream_response_timeout_ms: Option<u64>,
    /// Longest gap between two reads of a body, from the client or the
    /// replica. Default 300 000 (nginx `client_body_timeout` / `proxy_read_timeout`).
    pub body_read_timeout_ms: Option<u64>,
    /// Longest a write to a replica (the request head or a piece of its
    /// body) may wait for the replica to read; then the exchange ends (504
    /// before any response byte). Default: `body_read_timeout_ms` (nginx
    /// `proxy_send_timeout`, 60 s there).
    pub upstream_write_timeout_ms: Option<u64>,
    /// On SIGTERM, how long in-flight requests and streams may take to finish.
    /// Default 30 000 (ALB deregistration delay is 300 s; Kubernetes gives 30 s).
    pub shutdown_drain_timeout_ms: Option<u64>,
}

/// `[limits]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileLimits {
    /// Largest request head (request line and headers); larger gets 431.
    /// Default 16 384 (nginx `large_client_header_buffers 4 8k`).
    pub max_request_head_bytes: Option<usize>,
    /// Most header fields in a request; more gets 431. Default 100.
    pub max_headers: Option<usize>,
    /// Largest request body; larger gets 413. 0 means no limit, the default:
    /// prompts and uploads to model servers vary widely (nginx
    /// `client_max_body_size`, 1 MiB there).
    pub max_request_body_bytes: Option<u64>,
    /// Client connections one worker holds; past it new ones are closed at
    /// once. Default 16 384 (nginx `worker_connections`).
    pub max_connections_per_worker: Option<usize>,
    /// Replicas tried for one request when connects fail, before 502.
    /// Default 3 (nginx `proxy_next_upstream_tries`). Together with
    /// `retries.max_retries` this bounds the replicas one request touches:
    /// see the README's "Retries and connect attempts".
    pub max_connect_attempts: Option<usize>,
    /// Total bytes of chunk extensions (`;name=value` after a chunk size)
    /// one request may carry; more gets 400 and a close. Extensions also
    /// count toward `max_request_body_bytes`. Default 4 096.
    pub max_chunk_extension_bytes: Option<usize>,
}

/// `[upstream]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileUpstream {
    /// Idle keep-alive connections each worker keeps per replica. Default 64
    /// (nginx `keepalive`).
    pub max_idle_per_replica: Option<usize>,
    /// How long an idle upstream connection is kept. Default 60 000 (nginx
    /// `keepalive_timeout` in an upstream block). Keep it below the model
    /// server's own idle timeout.
    pub idle_timeout_ms: Option<u64>,
}

/// `[dns]`: replica host names are resolved again on an interval, off the
/// control thread; an address that changed is replaced.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDns {
    /// How often replica host names are resolved again. Default 30 000
    /// (nginx's `resolver valid=30s`); 0 turns re-resolution off.
    pub refresh_interval_ms: Option<u64>,
}

/// `[health]`: active health checks (ALB target-group health checks).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileHealth {
    /// Check replicas at all. Default true.
    pub enabled: Option<bool>,
    /// Path of the HTTP GET. Default `/health` (vLLM, TGI and Triton serve one).
    pub path: Option<String>,
    /// Time between checks of one replica. Default 5 000 (ALB `interval`).
    pub interval_ms: Option<u64>,
    /// A check slower than this fails. Default 2 000 (ALB `timeout`).
    pub timeout_ms: Option<u64>,
    /// Passing checks in a row to become healthy. Default 2 (ALB `healthy_threshold`).
    pub healthy_threshold: Option<u32>,
    /// Failing checks in a row to become unhealthy. Default 2 (ALB `unhealthy_threshold`).
    pub unhealthy_threshold: Option<u32>,
    /// When every replica is unhealthy, route to all anyway. Default true (ALB fails open too).
    pub fail_open: Option<bool>,
}

/// `[outlier]`: passive ejection of replicas that keep failing.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileOutlier {
    /// Connect failures or 5xx responses in a row that eject. Default 5; 0 is off.
    pub consecutive_failures: Option<u64>,
    /// First ejection; the n-th lasts n times this. Default 30 000.
    pub base_ejection_ms: Option<u64>,
    /// Longest ejection. Default 300 000.
    pub max_ejection_ms: Option<u64>,
    /// Most replicas ejected at once, percent. Default 50.
    pub max_ejection_percent: Option<u64>,
}

/// `[retries]`: a request whose replica failed before any response byte is
/// retried on another replica.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRetries {
    /// Retries per request. Default 2 (nginx `proxy_next_upstream_tries` 0 = unlimited).
    pub max_retries: Option<u32>,
    /// Retries allowed as a percentage of requests over the window. Default 20.
    pub budget_percent: Option<u64>,
    /// The budget's window. Default 10 000.
    pub budget_window_ms: Option<u64>,
    /// A body is replayed only when it is at most this large (the proxy keeps
    /// it in memory). Default 65 536.
    pub max_replay_body_bytes: Option<usize>,
    /// Also retry POST and PATCH (not idempotent). Default false.
    pub non_idempotent: Option<bool>,
}

/// Validated `[retries]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retries {
    /// See [`FileRetries::max_retries`].
    pub max_retries: u32,
    /// See [`FileRetries::budget_percent`].
    pub budget_percent: u64,
    /// See [`FileRetries::budget_window_ms`].
    pub budget_window_ms: u64,
    /// See [`FileRetries::max_replay_body_bytes`].
    pub max_replay_body_bytes: usize,
    /// See [`FileRetries::non_idempotent`].
    pub non_idempotent: bool,
}

impl Default for Retries {
    fn default() -> Self {
        Self {
            max_retries: 2,
            budget_percent: 20,
            budget_window_ms: 10_000,
            max_replay_body_bytes: 64 * 1024,
            non_idempotent: false,
        }
    }
}

/// Validated `[health]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// See [`FileHealth::enabled`].
    pub enabled: bool,
    /// See [`FileHealth::path`].
    pub path: String,
    /// See [`FileHealth::interval_ms`].
    pub interval: Duration,
    /// See [`FileHealth::timeout_ms`].
    pub timeout: Duration,
    /// See [`FileHealth::healthy_threshold`].
    pub healthy_threshold: u32,
    /// See [`FileHealth::unhealthy_threshold`].
    pub unhealthy_threshold: u32,
}

impl Default for HealthCheck {
    fn default() -> Self {
        Self {
            enabled: true,
            path: "/health".into(),
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
            healthy_threshold: 2,
            unhealthy_threshold: 2,
        }
    }
}

/// `[admin]`: the admin REST API.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAdmin {
    /// Address of the admin API. Default `127.0.0.1:9090`; a non-loopback
    /// address requires a token.
    pub listen: Option<String>,
    /// File holding the bearer token that protects every `/v1` route
    /// (the `INFERLB_ADMIN_TOKEN` environment variable is the alternative).
    pub token_file: Option<String>,
    /// Require the token for `/healthz`, `/readyz` and `/metrics` too.
    /// Default false: probes and scrapers usually carry no token.
    pub protect_probes: Option<bool>,
    /// Where runtime replica changes are persisted, on top of the declared
    /// replicas. Default `$STATE_DIRECTORY/inferlb-state.json` when systemd
    /// sets `STATE_DIRECTORY`; otherwise none (changes live in memory).
    pub state_file: Option<String>,
}

/// Validated `[admin]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminConfig {
    /// See [`FileAdmin::listen`].
    pub listen: SocketAddr,
    /// See [`FileAdmin::token_file`].
    pub token_file: Option<std::path::PathBuf>,
    /// See [`FileAdmin::protect_probes`].
    pub protect_probes: bool,
    /// See [`FileAdmin::state_file`]; `None` means systemd's location, if any.
    pub state_file: Option<std::path::PathBuf>,
    /// Whether `listen` was set (rather than defaulted).
    pub listen_given: bool,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            token_file: None,
            protect_probes: false,
            state_file: None,
            listen_given: false,
        }
    }
}

/// `[[replicas]]`: one replica.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileReplica {
    /// `ip:port`, `[ipv6]:port` or `host:port` (resolved once, at start).
    pub address: String,
    /// 0 to 1000; 0 takes no new requests. Default 1.
    pub weight: Option<u64>,
    /// Stable id; default derived from the address (`10.0.0.5:8000` → `10.0.0.5-8000`).
    pub id: Option<String>,
}

/// Validated timeouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// See [`FileTimeouts::client_header_timeout_ms`].
    pub client_header: Duration,
    /// See [`FileTimeouts::client_keepalive_timeout_ms`].
    pub client_keepalive: Duration,
    /// See [`FileTimeouts::upstream_connect_timeout_ms`].
    pub upstream_connect: Duration,
    /// See [`FileTimeouts::upstream_response_timeout_ms`].
    pub upstream_response: Duration,
    /// See [`FileTimeouts::body_read_timeout_ms`].
    pub body_read: Duration,
    /// See [`FileTimeouts::upstream_write_timeout_ms`].
    pub upstream_write: Duration,
    /// See [`FileTimeouts::shutdown_drain_timeout_ms`].
    pub shutdown_drain: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            client_header: Duration::from_secs(10),
            client_keepalive: Duration::from_secs(60),
            upstream_connect: Duration::from_secs(2),
            upstream_response: Duration::from_secs(300),
            body_read: Duration::from_secs(300),
            upstream_write: Duration::from_secs(300),
            shutdown_drain: Duration::from_secs(30),
        }
    }
}

/// Validated limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// See [`FileLimits::max_request_head_bytes`].
    pub max_request_head_bytes: usize,
    /// See [`FileLimits::max_headers`].
    pub max_headers: usize,
    /// See [`FileLimits::max_request_body_bytes`]; `None` is no limit.
    pub max_request_body_bytes: Option<u64>,
    /// See [`FileLimits::max_connections_per_worker`].
    pub max_connections_per_worker: usize,
    /// See [`FileLimits::max_connect_attempts`].
    pub max_connect_attempts: usize,
    /// See [`FileLimits::max_chunk_extension_bytes`].
    pub max_chunk_extension_bytes: usize,
}

/// Upper bound on `max_headers`: the parser's header array lives on the
/// stack of every request, so it is sized once, at this many entries.
pub const MAX_HEADERS_CAP: usize = 256;

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_request_head_bytes: 16 * 1024,
            max_headers: 100,
            max_request_body_bytes: None,
            max_connections_per_worker: 16 * 1024,
            max_connect_attempts: 3,
            max_chunk_extension_bytes: 4096,
        }
    }
}

/// Validated upstream pool settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Upstream {
    /// See [`FileUpstream::max_idle_per_replica`].
    pub max_idle_per_replica: usize,
    /// See [`FileUpstream::idle_timeout_ms`].
    pub idle_timeout: Duration,
}

impl Default for Upstream {
    fn default() -> Self {
        Self {
            max_idle_per_replica: 64,
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// What the data plane needs to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyConfig {
    /// Data-plane listen address.
    pub listen: SocketAddr,
    /// Worker threads; 0 means one per available core.
    pub workers: usize,
    /// Which monoio driver to run.
    pub io_driver: IoDriver,
    /// Pin worker N to CPU N.
    pub cpu_pinning: bool,
    /// Timeouts.
    pub timeouts: Timeouts,
    /// Limits.
    pub limits: Limits,
    /// Upstream pool.
    pub upstream: Upstream,
    /// Retries on another replica.
    pub retries: Retries,
    /// Passive outlier ejection.
    pub outlier: crate::outlier::Ejection,
    /// See [`FileConfig::trusted_proxies`].
    pub trusted_proxies: Vec<Cidr>,
    /// See [`FileConfig::underscores_in_headers`].
    pub underscores_in_headers: bool,
    /// How a request's model is found.
    pub model: ModelSelection,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            workers: 0,
            io_driver: IoDriver::Auto,
            cpu_pinning: false,
            timeouts: Timeouts::default(),
            limits: Limits::default(),
            upstream: Upstream::default(),
            retries: Retries::default(),
            outlier: crate::outlier::Ejection::default(),
            trusted_proxies: Vec::new(),
            underscores_in_headers: false,
            model: ModelSelection::default(),
        }
    }
}

impl ProxyConfig {
    /// The worker count with 0 resolved to the available cores.
    pub fn worker_count(&self) -> usize {
        if self.workers > 0 {
            self.workers
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    }
}

/// The whole validated configuration.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Config {
    /// The data plane.
    pub proxy: ProxyConfig,
    /// The routing rule.
    pub routing: Routing,
    /// The replicas to start with, every pool's.
    pub replicas: Vec<ReplicaSpec>,
    /// The declared pools.
    pub pools: Vec<PoolSpec>,
    /// The admin API.
    pub admin: AdminConfig,
    /// Active health checks.
    pub health: HealthCheck,
    /// How often replica host names are resolved again; `None` is off.
    pub dns_refresh: Option<Duration>,
    /// Slow start and fail-open.
    pub policy: crate::replica_set::Policy,
    /// Publishing the proxy's concurrency to CloudWatch; `None` is off.
    pub publish: Option<Publish>,
}

impl Config {
    /// Parses and validates a TOML document.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let file: FileConfig =
            toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        Self::try_from(file)
    }

    /// Reads, parses and validates a file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::Parse(format!("cannot read {}: {e}", path.display())))?;
        Self::from_toml(&text).map_err(|e| match e {
            ConfigError::Parse(msg) => ConfigError::Parse(format!("{}: {msg}", path.display())),
            other => other,
        })
    }
}

/// A duration field: present or default, never 0.
fn millis(field: &str, value: Option<u64>, default: Duration) -> Result<Duration, ConfigError> {
    match value {
        None => Ok(default),
        Some(0) => Err(ConfigError::invalid(field, "must be above 0")),
        Some(ms) => Ok(Duration::from_millis(ms)),
    }
}

/// A count field: present or default, within `min..=max`.
fn count(
    field: &str,
    value: Option<usize>,
    default: usize,
    min: usize,
    max: usize,
) -> Result<usize, ConfigError> {
    match value {
        None => Ok(default),
        Some(n) if (min..=max).contains(&n) => Ok(n),
        Some(n) => Err(ConfigError::invalid(
            field,
            format!("{n} is outside {min}..={max}"),
        )),
    }
}

/// Turns a declared replica into a spec, naming the field on failure.
pub fn replica_spec(field: &str, replica: &FileReplica) -> Result<ReplicaSpec, ConfigError> {
    replica_spec_in(field, replica, PoolName::default_pool())
}

/// Like [`replica_spec`], for a replica of `pool`.
pub fn replica_spec_in(
    field: &str,
    replica: &FileReplica,
    pool: PoolName,
) -> Result<ReplicaSpec, ConfigError> {
    let addr = resolve_address(&replica.address)
        .map_err(|e| ConfigError::invalid(format!("{field}.address"), e.to_string()))?;
    let weight = check_weight(replica.weight.unwrap_or(u64::from(DEFAULT_WEIGHT)))
        .map_err(|e| ConfigError::invalid(format!("{field}.weight"), e.to_string()))?;
    let id = match &replica.id {
        Some(id) => ReplicaId::new(id)
            .map_err(|e| ConfigError::invalid(format!("{field}.id"), e.to_string()))?,
        None => ReplicaId::from_address(&replica.address),
    };
    Ok(ReplicaSpec {
        id,
        address: replica.address.clone(),
        addr,
        weight,
        pool,
    })
}

// Each section of the file, validated on its own; `Config::try_from` joins them.

fn timeouts(t: &FileTimeouts) -> Result<Timeouts, ConfigError> {
    let td = Timeouts::default();
    let timeouts = Timeouts {
        client_header: millis(
            "timeouts.client_header_timeout_ms",
            t.client_header_timeout_ms,
            td.client_header,
        )?,
        client_keepalive: millis(
            "timeouts.client_keepalive_timeout_ms",
            t.client_keepalive_timeout_ms,
            td.client_keepalive,
        )?,
        upstream_connect: millis(
            "timeouts.upstream_connect_timeout_ms",
            t.upstream_connect_timeout_ms,
            td.upstream_connect,
        )?,
        upstream_response: millis(
            "timeouts.upstream_response_timeout_ms",
            t.upstream_response_timeout_ms,
            td.upstream_response,
        )?,
        body_read: millis(
            "timeouts.body_read_timeout_ms",
            t.body_read_timeout_ms,
            td.body_read,
        )?,
        upstream_write: millis(
            "timeouts.upstream_write_timeout_ms",
            t.upstream_write_timeout_ms.or(t.body_read_timeout_ms),
            td.upstream_write,
        )?,
        shutdown_drain: millis(
            "timeouts.shutdown_drain_timeout_ms",
            t.shutdown_drain_timeout_ms,
            td.shutdown_drain,
        )?,
    };
    Ok(timeouts)
}

fn limits(l: &FileLimits) -> Result<Limits, ConfigError> {
    let ld = Limits::default();
    let limits = Limits {
        max_request_head_bytes: count(
            "limits.max_request_head_bytes",
            l.max_request_head_bytes,
            ld.max_request_head_bytes,
            1024,
            1024 * 1024,
        )?,
        max_headers: count(
            "limits.max_headers",
            l.max_headers,
            ld.max_headers,
            8,
            MAX_HEADERS_CAP,
        )?,
        max_request_body_bytes: l.max_request_body_bytes.filter(|&n| n > 0),
        max_connections_per_worker: count(
            "limits.max_connections_per_worker",
            l.max_connections_per_worker,
            ld.max_connections_per_worker,
            1,
            10_000_000,
        )?,
        max_connect_attempts: count(
            "limits.max_connect_attempts",
            l.max_connect_attempts,
            ld.max_connect_attempts,
            1,
            16,
        )?,
        max_chunk_extension_bytes: count(
            "limits.max_chunk_extension_bytes",
            l.max_chunk_extension_bytes,
            ld.max_chunk_extension_bytes,
            0,
            1024 * 1024,
        )?,
    };
    Ok(limits)
}

fn upstream(u: &FileUpstream) -> Result<Upstream, ConfigError> {
    let ud = Upstream::default();
    let upstream = Upstream {
        max_idle_per_replica: count(
            "upstream.max_idle_per_replica",
            u.max_idle_per_replica,
            ud.max_idle_per_replica,
            0,
            100_000,
        )?,
        idle_timeout: millis(
            "upstream.idle_timeout_ms",
            u.idle_timeout_ms,
            ud.idle_timeout,
        )?,
    };
    Ok(upstream)
}

fn trusted_proxies(list: &[String]) -> Result<Vec<Cidr>, ConfigError> {
    let trusted_proxies = list
        .iter()
        .enumerate()
        .map(|(i, text)| {
            text.parse::<Cidr>()
                .map_err(|reason| ConfigError::invalid(format!("trusted_proxies[{i}]"), reason))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(trusted_proxies)
}

fn replicas(file: &FileConfig) -> Result<Vec<ReplicaSpec>, ConfigError> {
    let mut listed = Vec::new();
    for (i, replica) in file.replicas.iter().enumerate() {
        listed.push((format!("replicas[{i}]"), replica, PoolName::default_pool()));
    }
    for (p, pool) in file.pools.iter().enumerate() {
        let name = PoolName::new(&pool.name)
            .map_err(|e| ConfigError::invalid(format!("pools[{p}].name"), e.to_string()))?;
        for (i, replica) in pool.replicas.iter().enumerate() {
            listed.push((format!("pools[{p}].replicas[{i}]"), replica, name.clone()));
        }
    }
    let mut replicas: Vec<ReplicaSpec> = Vec::with_capacity(listed.len());
    for (field, replica, pool) in listed {
        let spec = replica_spec_in(&field, replica, pool)?;
        if replicas.iter().any(|r| r.id == spec.id) {
            return Err(ConfigError::invalid(
                format!("{field}.id"),
                format!("id {} is used twice", spec.id),
            ));
        }
        if replicas.iter().any(|r| r.addr == spec.addr) {
            return Err(ConfigError::invalid(
                format!("{field}.address"),
                format!("address {} is used twice", spec.address),
            ));
        }
        replicas.push(spec);
    }
    Ok(replicas)
}

fn pools(file: &FileConfig) -> Result<Vec<PoolSpec>, ConfigError> {
    let invalid = |(field, reason): (String, String)| ConfigError::invalid(field, reason);
    let base_prefix = file.prefix.over(PrefixSettings::default());
    base_prefix.check("prefix").map_err(invalid)?;
    let base_load = file.least_load.over(LoadWeights::default());
    check_weights("least_load", &base_load).map_err(invalid)?;
    let base_engine = engine_metrics(
        "engine_metrics",
        &file.engine_metrics,
        &EngineMetrics::default(),
    )?;
    let mut pools: Vec<PoolSpec> = Vec::with_capacity(file.pools.len());
    let mut names: Vec<(String, String)> = Vec::new();
    for (p, pool) in file.pools.iter().enumerate() {
        let at = format!("pools[{p}]");
        let name = PoolName::new(&pool.name)
            .map_err(|e| ConfigError::invalid(format!("{at}.name"), e.to_string()))?;
        for (i, alias) in pool.aliases.iter().enumerate() {
            crate::pool::check_alias(alias)
                .map_err(|e| ConfigError::invalid(format!("{at}.aliases[{i}]"), e.to_string()))?;
        }
        let fields = std::iter::once((format!("{at}.name"), pool.name.clone())).chain(
            pool.aliases
                .iter()
                .enumerate()
                .map(|(i, a)| (format!("{at}.aliases[{i}]"), a.clone())),
        );
        for (field, model) in fields {
            if let Some((first, _)) = names.iter().find(|(_, m)| *m == model) {
                return Err(ConfigError::invalid(
                    field,
                    format!("model name {model:?} is already used by {first}"),
                ));
            }
            names.push((field, model));
        }
        let prefix = pool.prefix.over(base_prefix);
        prefix.check(&format!("{at}.prefix")).map_err(invalid)?;
        let load = pool.least_load.over(base_load);
        check_weights(&format!("{at}.least_load"), &load).map_err(invalid)?;
        let engine_metrics = engine_metrics(
            &format!("{at}.engine_metrics"),
            &pool.engine_metrics,
            &base_engine,
        )?;
        if let Some(path) = pool.health.path.as_ref().filter(|p| !p.starts_with('/')) {
            return Err(ConfigError::invalid(
                format!("{at}.health.path"),
                format!("{path:?} must start with /"),
            ));
        }
        let autoscaling = pool
            .autoscaling
            .as_ref()
            .map(|a| {
                autoscaling(
                    &format!("{at}.autoscaling"),
                    a,
                    pool,
                    file.health.path.as_deref(),
                )
                .map(std::sync::Arc::new)
            })
            .transpose()?;
        pools.push(PoolSpec {
            autoscaling,
            name,
            aliases: pool.aliases.clone(),
            routing: pool.routing,
            prefix,
            load,
            engine_metrics,
            health: crate::pool::PoolHealth {
                enabled: pool.health.enabled,
                path: pool.health.path.clone(),
            },
        });
    }
    // The default pool gets the top-level settings too: declared when it
    // has replicas in the file, or when no named pool is (its replicas may
    // come from `--replica` flags).
    let default_wanted = !file.replicas.is_empty() || file.pools.is_empty();
    if default_wanted && !pools.iter().any(|p| p.name.is_default()) {
        let mut default = PoolSpec::named(PoolName::default_pool());
        default.prefix = base_prefix;
        default.load = base_load;
        default.engine_metrics = base_engine;
        if default != PoolSpec::named(PoolName::default_pool()) {
            pools.push(default);
        }
    }
    Ok(pools)
}

/// `[pools.autoscaling]`, checked under `at`.
fn autoscaling(
    at: &str,
    a: &FilePoolAutoscaling,
    pool: &FilePool,
    health_path: Option<&str>,
) -> Result<crate::scaling::PoolAutoscaling, ConfigError> {
    use crate::scaling::{PoolAutoscaling, Provider};
    let field = |name: &str| format!("{at}.{name}");
    if !pool.replicas.is_empty() {
        return Err(ConfigError::invalid(
            at,
            "a pool that autoscales starts its own replicas: remove its `replicas`",
        ));
    }
    let provider = scaling_provider(&field, a)?;
    let mut settings = PoolAutoscaling::new(provider);
    let max = a
        .max
        .ok_or_else(|| ConfigError::invalid(field("max"), "required"))?;
    if !(1..=1000).contains(&max) {
        return Err(ConfigError::invalid(
            field("max"),
            "must be between 1 and 1000",
        ));
    }
    let min = a.min.unwrap_or(0);
    if min > max {
        return Err(ConfigError::invalid(
            field("min"),
            format!("{min} is above max ({max})"),
        ));
    }
    settings.min = min;
    settings.max = max;
    if let Some(target) = a.target_in_flight {
        if !(target > 0.0 && target.is_finite()) {
            return Err(ConfigError::invalid(
                field("target_in_flight"),
                "must be above 0",
            ));
        }
        settings.target_in_flight = target;
    }
    scaling_timing(&field, a, &mut settings)?;
    if let Some(text) = &a.ports {
        settings.ports = port_range(text).ok_or_else(|| {
            ConfigError::invalid(
                field("ports"),
                format!("{text:?} is not a range like \"20000-20099\""),
            )
        })?;
    }
    if matches!(settings.provider, Provider::Exec { .. })
        && u32::from(settings.ports.1 - settings.ports.0) + 1 < max
    {
        return Err(ConfigError::invalid(
            field("ports"),
            format!(
                "{}-{} has fewer ports than max ({max})",
                settings.ports.0, settings.ports.1
            ),
        ));
    }
    if let Some(host) = a.host {
        settings.host = host;
    }
    settings.start_timeout = positive_seconds(
        field("start_timeout_s"),
        a.start_timeout_s,
        settings.start_timeout,
    )?;
    settings.stop_grace = match a.stop_grace_s {
        Some(s) => Duration::from_secs(s),
        None => settings.stop_grace,
    };
    settings.drain_timeout = match a.drain_timeout_s {
        Some(s) if s > 3600 => {
            return Err(ConfigError::invalid(
                field("drain_timeout_s"),
                "must be at most 3600",
            ))
        }
        Some(s) => Duration::from_secs(s),
        None => settings.drain_timeout,
    };
    let path = a
        .health_path
        .clone()
        .or_else(|| pool.health.path.clone())
        .or_else(|| health_path.map(str::to_owned));
    if let Some(path) = path {
        if !path.starts_with('/') {
            return Err(ConfigError::invalid(
                field("health_path"),
                format!("{path:?} must start with /"),
            ));
        }
        settings.health_path = path;
    }
    settings.queue_timeout = millis(
        &field("queue_timeout_ms"),
        a.queue_timeout_ms,
        settings.queue_timeout,
    )?;
    if let Some(n) = a.max_queued {
        settings.max_queued = n;
    }
    match a.max_in_flight_per_replica {
        Some(0) => {
            return Err(ConfigError::invalid(
                field("max_in_flight_per_replica"),
                "must be above 0 (leave it out for no limit)",
            ))
        }
        n => settings.max_in_flight_per_replica = n,
    }
    Ok(settings)
}

/// Whole seconds above 0, or `default` when left out.
fn positive_seconds(
    field: String,
    value: Option<u64>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match value {
        None => Ok(default),
        Some(0) => Err(ConfigError::invalid(field, "must be above 0")),
        Some(s) => Ok(Duration::from_secs(s)),
    }
}

/// The cooldowns, the idle time before zero and the alarm datapoints of
/// `[pools.autoscaling]`, over `settings`' defaults.
fn scaling_timing(
    field: &dyn Fn(&str) -> String,
    a: &FilePoolAutoscaling,
    settings: &mut crate::scaling::PoolAutoscaling,
) -> Result<(), ConfigError> {
    settings.scale_out_cooldown = match a.scale_out_cooldown_s {
        Some(s) => Duration::from_secs(s),
        None => settings.scale_out_cooldown,
    };
    settings.scale_in_cooldown = match a.scale_in_cooldown_s {
        Some(s) => Duration::from_secs(s),
        None => settings.scale_in_cooldown,
    };
    settings.idle_to_zero = positive_seconds(
        field("idle_to_zero_s"),
        a.idle_to_zero_s,
        settings.idle_to_zero,
    )?;
    for (name, value, into) in [
        (
            "scale_out_datapoints",
            a.scale_out_datapoints,
            &mut settings.scale_out_datapoints,
        ),
        (
            "scale_in_datapoints",
            a.scale_in_datapoints,
            &mut settings.scale_in_datapoints,
        ),
    ] {
        match value {
            Some(0) => return Err(ConfigError::invalid(field(name), "must be above 0")),
            Some(n) => *into = n,
            None => {}
        }
    }
    settings.scale_out_period = positive_seconds(
        field("scale_out_period_s"),
        a.scale_out_period_s,
        settings.scale_out_period,
    )?;
    settings.scale_in_period = positive_seconds(
        field("scale_in_period_s"),
        a.scale_in_period_s,
        settings.scale_in_period,
    )?;
    Ok(())
}

/// The replica provider of `[pools.autoscaling]`: `exec` with its command,
/// or `systemd` with its template unit and port.
fn scaling_provider(
    field: &dyn Fn(&str) -> String,
    a: &FilePoolAutoscaling,
) -> Result<crate::scaling::Provider, ConfigError> {
    use crate::scaling::Provider;
    Ok(match a.provider.as_deref() {
        Some("exec") => {
            let command = a.command.clone().unwrap_or_default();
            if command.first().is_none_or(|c| c.is_empty()) {
                return Err(ConfigError::invalid(
                    field("command"),
                    "the exec provider needs a command, e.g. [\"/opt/models/serve\", \"--port\", \"{port}\"]",
                ));
            }
            Provider::Exec {
                command,
                env: a.env.clone().into_iter().collect(),
            }
        }
        Some("systemd") => {
            let unit = a.unit.clone().unwrap_or_default();
            if !unit.contains("{index}") || !unit.contains('@') {
                return Err(ConfigError::invalid(
                    field("unit"),
                    "the systemd provider needs a template unit with {index}, e.g. \"model@{index}.service\"",
                ));
            }
            let text = a.port.as_deref().unwrap_or("");
            let base = port_base(text).ok_or_else(|| {
                ConfigError::invalid(
                    field("port"),
                    format!("{text:?} is not of the form \"{{20000 + index}}\""),
                )
            })?;
            Provider::Systemd {
                unit,
                port_base: base,
            }
        }
        Some(other) => {
            return Err(ConfigError::invalid(
                field("provider"),
                format!("{other:?} is not a provider: use \"exec\" or \"systemd\""),
            ))
        }
        None => {
            return Err(ConfigError::invalid(
                field("provider"),
                "required: \"exec\" or \"systemd\"",
            ))
        }
    })
}

/// `"{20000 + index}"`: the base of a systemd replica's port.
fn port_base(text: &str) -> Option<u16> {
    text.trim()
        .strip_prefix('{')
        .and_then(|t| t.strip_suffix('}'))
        .and_then(|t| t.split_once('+'))
        .filter(|(_, index)| index.trim() == "index")
        .and_then(|(base, _)| base.trim().parse::<u16>().ok())
}

/// `"20000-20099"`: an inclusive range of ports, not starting at 0.
fn port_range(text: &str) -> Option<(u16, u16)> {
    text.split_once('-')
        .and_then(|(lo, hi)| {
            Some((
                lo.trim().parse::<u16>().ok()?,
                hi.trim().parse::<u16>().ok()?,
            ))
        })
        .filter(|(lo, hi)| *lo > 0 && lo <= hi)
}

/// `[engine_metrics]` fields over `base`, checked under `at`.
fn engine_metrics(
    at: &str,
    m: &FileEngineMetrics,
    base: &EngineMetrics,
) -> Result<EngineMetrics, ConfigError> {
    let metrics = EngineMetrics {
        enabled: m.enabled.unwrap_or(base.enabled),
        path: m.path.clone().unwrap_or_else(|| base.path.clone()),
        interval: millis(&format!("{at}.interval_ms"), m.interval_ms, base.interval)?,
        flavor: m.flavor.unwrap_or(base.flavor),
    };
    if !metrics.path.starts_with('/') {
        return Err(ConfigError::invalid(
            format!("{at}.path"),
            "must start with /",
        ));
    }
    Ok(metrics)
}

fn check_weights(at: &str, w: &LoadWeights) -> Result<(), (String, String)> {
    for (name, value) in [
        ("queue", w.queue),
        ("running", w.running),
        ("kv_cache", w.kv_cache),
        ("in_flight", w.in_flight),
    ] {
        if !(value >= 0.0 && value.is_finite()) {
            return Err((format!("{at}.{name}"), "must be 0 or more".into()));
        }
    }
    Ok(())
}

fn model_selection(routing: Option<&FileRouting>) -> Result<ModelSelection, ConfigError> {
    let defaults = ModelSelection::default();
    let Some(FileRouting::Table(t)) = routing else {
        return Ok(defaults);
    };
    let header = match &t.model_header {
        None => defaults.header,
        Some(h) if !h.is_empty() && h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') => {
            h.to_ascii_lowercase()
        }
        Some(h) => {
            return Err(ConfigError::invalid(
                "routing.model_header",
                format!("{h:?} is not a header name (letters, digits and -)"),
            ))
        }
    };
    Ok(ModelSelection {
        header,
        max_inspect_body_bytes: count(
            "routing.max_inspect_body_bytes",
            t.max_inspect_body_bytes,
            defaults.max_inspect_body_bytes,
            0,
            64 * 1024 * 1024,
        )?,
    })
}

fn publish(a: &FileAutoscaling) -> Result<Option<Publish>, ConfigError> {
    let Some(p) = &a.publish else {
        return Ok(None);
    };
    let namespace = p.namespace.clone().unwrap_or_else(|| "inferlb".to_owned());
    if namespace.is_empty() || namespace.len() > 255 || namespace.starts_with("AWS/") {
        return Err(ConfigError::invalid(
            "autoscaling.publish.namespace",
            "1 to 255 characters, and not an AWS/ namespace",
        ));
    }
    let interval = match p.interval_s.unwrap_or(60) {
        s @ (10 | 60) => Duration::from_secs(s),
        other => {
            return Err(ConfigError::invalid(
                "autoscaling.publish.interval_s",
                format!("{other} is not 10 (high-resolution metrics) or 60"),
            ))
        }
    };
    // CloudWatch allows 30 dimensions per metric; the pool is one.
    if p.dimensions.len() > 29 {
        return Err(ConfigError::invalid(
            "autoscaling.publish.dimensions",
            "at most 29 (the pool is the 30th)",
        ));
    }
    for (i, d) in p.dimensions.iter().enumerate() {
        if d.name.is_empty() || d.value.is_empty() || d.name == "Pool" {
            return Err(ConfigError::invalid(
                format!("autoscaling.publish.dimensions[{i}]"),
                "name and value must not be empty, and Pool is inferlb's own",
            ));
        }
    }
    Ok(Some(Publish {
        namespace,
        interval,
        region: p.region.clone(),
        dimensions: p
            .dimensions
            .iter()
            .map(|d| (d.name.clone(), d.value.clone()))
            .collect(),
    }))
}

fn admin(a: &FileAdmin) -> Result<AdminConfig, ConfigError> {
    let admin_listen = match &a.listen {
        None => AdminConfig::default().listen,
        Some(text) => text.parse().map_err(|_| {
            ConfigError::invalid(
                "admin.listen",
                format!("{text:?} is not ip:port (e.g. 127.0.0.1:9090)"),
            )
        })?,
    };
    let admin = AdminConfig {
        listen: admin_listen,
        token_file: a.token_file.as_ref().map(std::path::PathBuf::from),
        protect_probes: a.protect_probes.unwrap_or(false),
        state_file: a.state_file.as_ref().map(std::path::PathBuf::from),
        listen_given: a.listen.is_some(),
    };
    Ok(admin)
}

fn health(h: &FileHealth) -> Result<HealthCheck, ConfigError> {
    let hd = HealthCheck::default();
    let path = h.path.clone().unwrap_or(hd.path.clone());
    if !path.starts_with('/')
        || path
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return Err(ConfigError::invalid(
            "health.path",
            format!("{path:?} must start with '/' and have no spaces"),
        ));
    }
    let health = HealthCheck {
        enabled: h.enabled.unwrap_or(true),
        path,
        interval: millis("health.interval_ms", h.interval_ms, hd.interval)?,
        timeout: millis("health.timeout_ms", h.timeout_ms, hd.timeout)?,
        healthy_threshold: count(
            "health.healthy_threshold",
            h.healthy_threshold.map(|v| v as usize),
            2,
            1,
            10,
        )? as u32,
        unhealthy_threshold: count(
            "health.unhealthy_threshold",
            h.unhealthy_threshold.map(|v| v as usize),
            2,
            1,
            10,
        )? as u32,
    };
    if health.timeout >= health.interval {
        return Err(ConfigError::invalid(
            "health.timeout_ms",
            "must be below health.interval_ms",
        ));
    }
    Ok(health)
}

fn outlier(o: &FileOutlier) -> Result<crate::outlier::Ejection, ConfigError> {
    let od = crate::outlier::Ejection::default();
    let outlier = crate::outlier::Ejection {
        consecutive_failures: o.consecutive_failures.unwrap_or(od.consecutive_failures),
        base_ms: millis(
            "outlier.base_ejection_ms",
            o.base_ejection_ms,
            Duration::from_millis(od.base_ms),
        )?
        .as_millis() as u64,
        max_ms: millis(
            "outlier.max_ejection_ms",
            o.max_ejection_ms,
            Duration::from_millis(od.max_ms),
        )?
        .as_millis() as u64,
        max_percent: count(
            "outlier.max_ejection_percent",
            o.max_ejection_percent.map(|v| v as usize),
            od.max_percent as usize,
            0,
            100,
        )? as u64,
    };
    Ok(outlier)
}

fn retries(r: &FileRetries) -> Result<Retries, ConfigError> {
    let rd = Retries::default();
    let retries = Retries {
        max_retries: count(
            "retries.max_retries",
            r.max_retries.map(|v| v as usize),
            rd.max_retries as usize,
            0,
            10,
        )? as u32,
        budget_percent: count(
            "retries.budget_percent",
            r.budget_percent.map(|v| v as usize),
            rd.budget_percent as usize,
            0,
            100,
        )? as u64,
        budget_window_ms: millis(
            "retries.budget_window_ms",
            r.budget_window_ms,
            Duration::from_millis(rd.budget_window_ms),
        )?
        .as_millis() as u64,
        max_replay_body_bytes: count(
            "retries.max_replay_body_bytes",
            r.max_replay_body_bytes,
            rd.max_replay_body_bytes,
            0,
            16 * 1024 * 1024,
        )?,
        non_idempotent: r.non_idempotent.unwrap_or(false),
    };
    Ok(retries)
}

impl TryFrom<FileConfig> for Config {
    type Error = ConfigError;

    fn try_from(file: FileConfig) -> Result<Self, Self::Error> {
        let defaults = ProxyConfig::default();
        let listen = match &file.listen {
            None => defaults.listen,
            Some(text) => text.parse().map_err(|_| {
                ConfigError::invalid(
                    "listen",
                    format!("{text:?} is not ip:port (e.g. 0.0.0.0:8080 or [::]:8080)"),
                )
            })?,
        };
        let workers = count("workers", file.workers, 0, 0, 1024)?;
        let health = health(&file.health)?;
        let policy = crate::replica_set::Policy {
            slow_start_ms: file.slow_start_ms.unwrap_or(0),
            fail_open: file.health.fail_open.unwrap_or(true),
        };
        let dns_refresh = match file.dns.refresh_interval_ms {
            None => Some(Duration::from_secs(30)),
            Some(0) => None,
            Some(ms) => Some(Duration::from_millis(ms)),
        };
        Ok(Self {
            health,
            dns_refresh,
            policy,
            admin: admin(&file.admin)?,
            proxy: ProxyConfig {
                listen,
                workers,
                io_driver: file.io_driver.unwrap_or_default(),
                cpu_pinning: file.cpu_pinning.unwrap_or(false),
                timeouts: timeouts(&file.timeouts)?,
                limits: limits(&file.limits)?,
                upstream: upstream(&file.upstream)?,
                retries: retries(&file.retries)?,
                outlier: outlier(&file.outlier)?,
                trusted_proxies: trusted_proxies(&file.trusted_proxies)?,
                underscores_in_headers: file.underscores_in_headers.unwrap_or(false),
                model: model_selection(file.routing.as_ref())?,
            },
            routing: match &file.routing {
                None => Routing::default(),
                Some(FileRouting::Rule(rule)) => *rule,
                Some(FileRouting::Table(t)) => t.rule.unwrap_or_default(),
            },
            replicas: replicas(&file)?,
            pools: pools(&file)?,
            publish: publish(&file.autoscaling)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        let config = Config::from_toml("").unwrap();
        assert_eq!(config.proxy, ProxyConfig::default());
        assert_eq!(config.routing, Routing::RoundRobin);
        assert!(config.replicas.is_empty());
    }

    #[test]
    fn the_write_timeout_follows_the_body_timeout_unless_given() {
        let config = Config::from_toml("[timeouts]\nbody_read_timeout_ms = 7000").unwrap();
        assert_eq!(config.proxy.timeouts.upstream_write, Duration::from_secs(7));
        let config = Config::from_toml(
            "[timeouts]\nbody_read_timeout_ms = 7000\nupstream_write_timeout_ms = 500",
        )
        .unwrap();
        assert_eq!(
            config.proxy.timeouts.upstream_write,
            Duration::from_millis(500)
        );
        let err = Config::from_toml("[timeouts]\nupstream_write_timeout_ms = 0").unwrap_err();
        assert!(err
            .to_string()
            .contains("timeouts.upstream_write_timeout_ms"));
    }

    #[test]
    fn trusted_proxies_are_parsed_and_a_bad_one_is_named() {
        let config = Config::from_toml(r#"trusted_proxies = ["10.0.0.0/8", "::1"]"#).unwrap();
        assert_eq!(config.proxy.trusted_proxies.len(), 2);
        assert!(!config.proxy.underscores_in_headers);
        let err = Config::from_toml(r#"trusted_proxies = ["10.0.0.0/8", "10.0.0.0/40"]"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("trusted_proxies[1]"), "{err}");
        assert!(err.contains("prefix length"), "{err}");
    }

    #[test]
    fn pool_autoscaling_is_read_with_defaults_and_checked_by_field() {
        use crate::scaling::Provider;
        let config = Config::from_toml(
            r#"
[[pools]]
name = "llama"
[pools.autoscaling]
max = 4
provider = "exec"
command = ["/opt/serve", "--port", "{port}"]
env = { CUDA_VISIBLE_DEVICES = "{index}" }
"#,
        )
        .unwrap();
        let a = config.pools[0].autoscaling.as_deref().unwrap();
        assert_eq!((a.min, a.max, a.target_in_flight), (0, 4, 4.0));
        assert_eq!(a.ports, (20000, 20099));
        assert_eq!(a.queue_timeout, Duration::from_secs(60));
        assert!(
            matches!(&a.provider, Provider::Exec { env, .. } if env[0].0 == "CUDA_VISIBLE_DEVICES")
        );
        let systemd = Config::from_toml(
            "[[pools]]\nname = \"m\"\n[pools.autoscaling]\nmax = 2\nprovider = \"systemd\"\nunit = \"model@{index}.service\"\nport = \"{20000 + index}\"\n",
        )
        .unwrap();
        assert_eq!(
            systemd.pools[0].autoscaling.as_deref().unwrap().provider,
            Provider::Systemd {
                unit: "model@{index}.service".into(),
                port_base: 20000
            }
        );
        for (body, field) in [
            ("max = 2", "pools[0].autoscaling.provider"),
            (
                "provider = \"exec\"\ncommand = [\"x\"]",
                "pools[0].autoscaling.max",
            ),
            (
                "max = 2\nmin = 3\nprovider = \"exec\"\ncommand = [\"x\"]",
                "pools[0].autoscaling.min",
            ),
            (
                "max = 2\nprovider = \"exec\"",
                "pools[0].autoscaling.command",
            ),
            (
                "max = 2\nprovider = \"docker\"",
                "pools[0].autoscaling.provider",
            ),
            (
                "max = 2\nprovider = \"systemd\"\nunit = \"model.service\"",
                "pools[0].autoscaling.unit",
            ),
            (
                "max = 2\nprovider = \"systemd\"\nunit = \"m@{index}.service\"\nport = \"20000\"",
                "pools[0].autoscaling.port",
            ),
            (
                "max = 5\nprovider = \"exec\"\ncommand = [\"x\"]\nports = \"20000-20001\"",
                "pools[0].autoscaling.ports",
            ),
            (
                "max = 2\nprovider = \"exec\"\ncommand = [\"x\"]\nports = \"high\"",
                "pools[0].autoscaling.ports",
            ),
            (
                "max = 2\nprovider = \"exec\"\ncommand = [\"x\"]\ntarget_in_flight = 0",
                "pools[0].autoscaling.target_in_flight",
            ),
            (
                "max = 2\nprovider = \"exec\"\ncommand = [\"x\"]\nqueue_timeout_ms = 0",
                "pools[0].autoscaling.queue_timeout_ms",
            ),
            (
                "max = 2\nprovider = \"exec\"\ncommand = [\"x\"]\nhealth_path = \"health\"",
                "pools[0].autoscaling.health_path",
            ),
            (
                "max = 2\nprovider = \"exec\"\ncommand = [\"x\"]\nmax_in_flight_per_replica = 0",
                "pools[0].autoscaling.max_in_flight_per_replica",
            ),
        ] {
            let err = Config::from_toml(&format!(
                "[[pools]]\nname = \"m\"\n[pools.autoscaling]\n{body}\n"
            ))
            .unwrap_err()
            .to_string();
            assert!(err.contains(field), "{body}: {err}");
        }
        let err = Config::from_toml(
            "[[pools]]\nname = \"m\"\nreplicas = [{ address = \"127.0.0.1:1\" }]\n[pools.autoscaling]\nmax = 1\nprovider = \"exec\"\ncommand = [\"x\"]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("starts its own replicas"), "{err}");
    }

    #[test]
    fn the_example_config_is_valid() {
        let text = include_str!("../../../deploy/inferlb.toml");
        let config = Config::from_toml(text).unwrap();
        assert!(!config.replicas.is_empty());
    }

    #[test]
    fn unknown_fields_are_refused_with_their_name() {
        let err = Config::from_toml("listen = \"0.0.0.0:1\"\nworkerz = 2\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("workerz"), "{err}");
        let err = Config::from_toml("[timeouts]\nconnect_ms = 5\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("connect_ms"), "{err}");
    }

    #[test]
    fn invalid_values_name_the_field_and_reason() {
        let cases = [
            ("listen = \"nowhere\"", "listen"),
            (
                "[timeouts]\nupstream_connect_timeout_ms = 0",
                "timeouts.upstream_connect_timeout_ms",
            ),
            ("[limits]\nmax_headers = 100000", "limits.max_headers"),
            (
                "[[replicas]]\naddress = \"127.0.0.1:0\"",
                "replicas[0].address",
            ),
            (
                "[[replicas]]\naddress = \"127.0.0.1:1\"\nweight = 1001",
                "replicas[0].weight",
            ),
            (
                "[[replicas]]\naddress = \"127.0.0.1:1\"\nid = \"a b\"",
                "replicas[0].id",
            ),
            (
                "[[replicas]]\naddress = \"127.0.0.1:1\"\n[[replicas]]\naddress = \"127.0.0.1:1\"",
                "replicas[1].id",
            ),
        ];
        for (text, field) in cases {
            let err = Config::from_toml(text).unwrap_err();
            match &err {
                ConfigError::Invalid { field: f, .. } => assert_eq!(f, field, "{text}"),
                other => panic!("{text}: expected an invalid field, got {other}"),
            }
            assert!(err.to_string().contains(field));
        }
    }

    #[test]
    fn pools_are_read_with_their_replicas_and_settings() {
        let config = Config::from_toml(
            r#"
            routing = "p2c"
            [prefix]
            min_match_ratio = 0.6
            [[replicas]]
            address = "127.0.0.1:9000"
            [[pools]]
            name = "llama-3-8b"
            aliases = ["meta-llama/Meta-Llama-3-8B-Instruct"]
            routing = "prefix"
            replicas = [{ address = "127.0.0.1:9001" }, { address = "127.0.0.1:9002", weight = 2 }]
            [pools.prefix]
            balance_abs_threshold = 8
            [pools.engine_metrics]
            enabled = true
            interval_ms = 500
            flavor = "vllm"
            "#,
        )
        .unwrap();
        assert_eq!(config.routing, Routing::P2c);
        assert_eq!(config.replicas.len(), 3);
        assert!(config.replicas[0].pool.is_default());
        assert_eq!(config.replicas[2].pool.as_str(), "llama-3-8b");
        assert_eq!(config.replicas[2].weight, 2);
        let pool = config.pools.iter().find(|p| !p.name.is_default()).unwrap();
        assert_eq!(pool.routing, Some(Routing::Prefix));
        assert_eq!(pool.prefix.min_match_ratio, 0.6, "inherited from [prefix]");
        assert_eq!(pool.prefix.balance_abs_threshold, 8.0);
        assert!(pool.engine_metrics.enabled);
        assert_eq!(pool.engine_metrics.interval, Duration::from_millis(500));
        assert_eq!(pool.engine_metrics.flavor, crate::pool::Flavor::Vllm);
        // The table form of `routing`.
        let config = Config::from_toml(
            "[routing]\nrule = \"least_load\"\nmodel_header = \"X-Target-Model\"\nmax_inspect_body_bytes = 4096",
        )
        .unwrap();
        assert_eq!(config.routing, Routing::LeastLoad);
        assert_eq!(config.proxy.model.header, "x-target-model");
        assert_eq!(config.proxy.model.max_inspect_body_bytes, 4096);
        assert_eq!(Config::from_toml("").unwrap().proxy.model.header, "x-model");
    }

    #[test]
    fn bad_pools_name_the_field() {
        let cases = [
            ("[[pools]]\nname = \"a/b\"", "pools[0].name"),
            (
                "[[pools]]\nname = \"a\"\naliases = [\"x y\"]",
                "pools[0].aliases[0]",
            ),
            (
                "[[pools]]\nname = \"a\"\n[[pools]]\nname = \"b\"\naliases = [\"a\"]",
                "pools[1].aliases[0]",
            ),
            (
                "[[pools]]\nname = \"a\"\nreplicas = [{ address = \"127.0.0.1:0\" }]",
                "pools[0].replicas[0].address",
            ),
            (
                "[[pools]]\nname = \"a\"\n[pools.prefix]\nmin_match_ratio = 2.0",
                "pools[0].prefix.min_match_ratio",
            ),
            (
                "[[pools]]\nname = \"a\"\n[pools.engine_metrics]\npath = \"metrics\"",
                "pools[0].engine_metrics.path",
            ),
            (
                "[routing]\nmodel_header = \"x model\"",
                "routing.model_header",
            ),
            ("[least_load]\nqueue = -1.0", "least_load.queue"),
        ];
        for (text, field) in cases {
            match Config::from_toml(text) {
                Err(ConfigError::Invalid { field: f, .. }) => assert_eq!(f, field, "{text}"),
                other => panic!("{text}: expected an invalid {field}, got {other:?}"),
            }
        }
    }

    #[test]
    fn publishing_is_off_by_default_and_checked_when_on() {
        assert_eq!(Config::from_toml("").unwrap().publish, None);
        let config = Config::from_toml(
            "[autoscaling.publish]\ninterval_s = 10\ndimensions = [{ name = \"EndpointName\", value = \"ep\" }]",
        )
        .unwrap();
        let publish = config.publish.unwrap();
        assert_eq!(publish.namespace, "inferlb");
        assert_eq!(publish.interval, Duration::from_secs(10));
        assert_eq!(
            publish.dimensions,
            [("EndpointName".to_owned(), "ep".to_owned())]
        );
        for (text, field) in [
            (
                "[autoscaling.publish]\ninterval_s = 30",
                "autoscaling.publish.interval_s",
            ),
            (
                "[autoscaling.publish]\nnamespace = \"AWS/SageMaker\"",
                "autoscaling.publish.namespace",
            ),
            (
                "[autoscaling.publish]\ndimensions = [{ name = \"Pool\", value = \"x\" }]",
                "autoscaling.publish.dimensions[0]",
            ),
        ] {
            match Config::from_toml(text) {
                Err(ConfigError::Invalid { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{text}: {other:?}"),
            }
        }
    }

    #[test]
    fn milliseconds_become_durations() {
        let config = Config::from_toml("[timeouts]\nclient_header_timeout_ms = 1500").unwrap();
        assert_eq!(
            config.proxy.timeouts.client_header,
            Duration::from_millis(1500)
        );
        let config = Config::from_toml("[limits]\nmax_request_body_bytes = 0").unwrap();
        assert_eq!(config.proxy.limits.max_request_body_bytes, None);
    }
}
