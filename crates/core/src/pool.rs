//! Pools: named groups of replicas serving one model.
//!
//! A request names a model (`X-Model`, or the `"model"` of an OpenAI JSON
//! body); the pool whose name or alias matches serves it. Replicas declared
//! without a pool (top-level `[[replicas]]`, `--replica`) form the
//! [`DEFAULT_POOL`], which serves requests that name no model or one no pool
//! matches. SageMaker's inference components on one endpoint are the same
//! idea.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::routing::Routing;

/// The pool of replicas declared without one.
pub const DEFAULT_POOL: &str = "default";

/// Longest pool name; names appear in URLs, metric labels and logs.
pub const MAX_POOL_NAME_LEN: usize = 128;

/// Longest alias (a model name as clients send it, e.g. a Hugging Face id).
pub const MAX_ALIAS_LEN: usize = 256;

/// Why a pool name or alias was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    /// The name is empty, too long or has characters outside `[A-Za-z0-9._:-]`.
    #[error("pool name {name:?} is not valid: use 1 to {MAX_POOL_NAME_LEN} characters from A-Z a-z 0-9 . _ : - (put names with / in `aliases`)")]
    Name { name: String },
    /// The alias is empty, too long, or has spaces or control characters.
    #[error("alias {alias:?} is not valid: use 1 to {MAX_ALIAS_LEN} visible ASCII characters")]
    Alias { alias: String },
}

/// A pool's name: the model name clients send (`[A-Za-z0-9._:-]{1,128}`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PoolName(Arc<str>);

impl PoolName {
    /// Checks and wraps a name.
    pub fn new(name: &str) -> Result<Self, PoolError> {
        let valid = !name.is_empty()
            && name.len() <= MAX_POOL_NAME_LEN
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b));
        if valid {
            Ok(Self(Arc::from(name)))
        } else {
            Err(PoolError::Name {
                name: name.to_owned(),
            })
        }
    }

    /// The default pool's name.
    pub fn default_pool() -> Self {
        Self(Arc::from(DEFAULT_POOL))
    }

    /// Whether this is the default pool.
    pub fn is_default(&self) -> bool {
        &*self.0 == DEFAULT_POOL
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for PoolName {
    fn default() -> Self {
        Self::default_pool()
    }
}

impl TryFrom<String> for PoolName {
    type Error = PoolError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(&value)
    }
}

impl From<PoolName> for String {
    fn from(name: PoolName) -> Self {
        name.0.to_string()
    }
}

impl fmt::Display for PoolName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for PoolName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

/// Checks an alias: visible ASCII, no spaces, at most [`MAX_ALIAS_LEN`].
pub fn check_alias(alias: &str) -> Result<(), PoolError> {
    let valid = !alias.is_empty()
        && alias.len() <= MAX_ALIAS_LEN
        && alias.bytes().all(|b| b.is_ascii_graphic());
    if valid {
        Ok(())
    } else {
        Err(PoolError::Alias {
            alias: alias.to_owned(),
        })
    }
}

/// `prefix` routing's settings (`[prefix]`, or `[pools.prefix]` per pool).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrefixSettings {
    /// The longest match must cover at least this share of the request's
    /// text for its replica to be chosen; below it, the least loaded
    /// replica serves and then owns the prefix. Default 0.5.
    pub min_match_ratio: f64,
    /// With `balance_rel_threshold`: the matched replica is passed over for
    /// the least loaded one when its load exceeds
    /// `balance_abs_threshold + balance_rel_threshold × least` (the guard
    /// against one replica owning every hot prefix). Default 8.
    pub balance_abs_threshold: f64,
    /// See `balance_abs_threshold`. Default 1.5.
    pub balance_rel_threshold: f64,
    /// Memory the pool's prefix table may use; least recently used entries
    /// are evicted beyond it. One 8-byte entry per 64 bytes (16 tokens) of
    /// prompt per replica holding it: 8 MiB remembers about 16 million
    /// tokens, the KV caches of 8 to 16 large replicas. Default 8 MiB.
    pub max_tree_bytes: usize,
    /// How much of a request's text (its chat roles and contents, or its
    /// prompt) the prefix is matched on; a body is read only until that much
    /// of its text is in (and its model, when no header names it), and the
    /// rest streams unread. Default 32 KiB (about 8 000 tokens).
    pub max_text_bytes: usize,
    /// Where a prefix no replica holds yet goes, among the replicas about
    /// as loaded as the least loaded one.
    pub new_prefix: NewPrefix,
}

/// Where `prefix` routing sends a text no replica holds yet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NewPrefix {
    /// The replica that got the fewest new prefixes from this instance:
    /// the best spread for one balancer (default without `[cluster]`).
    #[default]
    Fewest,
    /// Rendezvous hashing of the text's first block over the replicas'
    /// ids: every instance of a fleet places the same prefix on the same
    /// replica without talking (default with `[cluster]`).
    Hash,
}

impl Default for PrefixSettings {
    fn default() -> Self {
        Self {
            min_match_ratio: 0.5,
            balance_abs_threshold: 8.0,
            balance_rel_threshold: 1.5,
            max_tree_bytes: 8 * 1024 * 1024,
            max_text_bytes: 32 * 1024,
            new_prefix: NewPrefix::Fewest,
        }
    }
}

impl PrefixSettings {
    /// Checks the ranges, naming the field under `at` (e.g. `prefix`).
    pub fn check(&self, at: &str) -> Result<(), (String, String)> {
        let field = |name: &str| format!("{at}.{name}");
        if !(0.0..=1.0).contains(&self.min_match_ratio) {
            return Err((field("min_match_ratio"), "must be between 0 and 1".into()));
        }
        if !(self.balance_abs_threshold >= 0.0 && self.balance_abs_threshold.is_finite()) {
            return Err((field("balance_abs_threshold"), "must be 0 or more".into()));
        }
        if !(self.balance_rel_threshold >= 1.0 && self.balance_rel_threshold.is_finite()) {
            return Err((field("balance_rel_threshold"), "must be 1 or more".into()));
        }
        if !(64 * 1024..=16 * 1024 * 1024 * 1024).contains(&self.max_tree_bytes) {
            return Err((
                field("max_tree_bytes"),
                "must be between 64 KiB and 16 GiB".into(),
            ));
        }
        if !(crate::prefix::BLOCK..=64 * 1024 * 1024).contains(&self.max_text_bytes) {
            return Err((
                field("max_text_bytes"),
                format!("must be between {} bytes and 64 MiB", crate::prefix::BLOCK),
            ));
        }
        Ok(())
    }
}

/// How `least_load` (and `prefix`'s balance guard) weigh a replica's load:
/// `queue × waiting + running × running + kv_cache × KV usage (0..1) +
/// in_flight × inferlb's own in-flight count`, divided by the replica's
/// weight. Without fresh engine metrics only inferlb's count is used.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoadWeights {
    /// Requests waiting in the engine's queue. Default 1.
    pub queue: f64,
    /// Requests the engine is running. Default 0.5.
    pub running: f64,
    /// KV-cache usage, 0 to 1. Default 2 (a full cache counts like two
    /// queued requests).
    pub kv_cache: f64,
    /// Requests inferlb has in flight to the replica (they are in the
    /// engine's counts too; this term covers the time since the last
    /// scrape). Default 0.25.
    pub in_flight: f64,
}

impl Default for LoadWeights {
    fn default() -> Self {
        Self {
            queue: 1.0,
            running: 0.5,
            kv_cache: 2.0,
            in_flight: 0.25,
        }
    }
}

/// Which model server's metric names to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Flavor {
    /// Whichever of the names below the replica publishes.
    #[default]
    Auto,
    /// `vllm:num_requests_waiting`, `vllm:num_requests_running`,
    /// `vllm:kv_cache_usage_perc` (older: `vllm:gpu_cache_usage_perc`).
    Vllm,
    /// `sglang:num_queue_reqs`, `sglang:num_running_reqs`, `sglang:token_usage`.
    Sglang,
    /// `tgi_queue_size`, `tgi_batch_current_size`.
    Tgi,
}

/// `[pools.engine_metrics]`: scraping each replica's Prometheus metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineMetrics {
    /// Scrape at all. Default false.
    pub enabled: bool,
    /// The metrics path. Default `/metrics`.
    pub path: String,
    /// How often. Default 250 ms.
    pub interval: Duration,
    /// Which names to read. Default `auto`.
    pub flavor: Flavor,
}

impl Default for EngineMetrics {
    fn default() -> Self {
        Self {
            enabled: false,
            path: "/metrics".into(),
            interval: Duration::from_millis(250),
            flavor: Flavor::Auto,
        }
    }
}

/// `[pools.health]`: a pool's overrides of the top-level `[health]` checks.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PoolHealth {
    /// Check this pool's replicas (`None`: as `[health] enabled`).
    pub enabled: Option<bool>,
    /// The path checked (`None`: `[health] path`).
    pub path: Option<String>,
}

/// A pool as declared: its name, the other names clients may use for its
/// model, and how it routes. Its replicas name it.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolSpec {
    /// The model name clients send.
    pub name: PoolName,
    /// Other names of the same model.
    pub aliases: Vec<String>,
    /// The name the replicas serve (`served_model_name`); `None` is the
    /// pool's name. A body that names the pool by another name is
    /// forwarded with its `"model"` set to this one.
    pub served_model_name: Option<String>,
    /// The routing rule; `None` follows the top-level `routing`.
    pub routing: Option<Routing>,
    /// `prefix` routing's settings.
    pub prefix: PrefixSettings,
    /// `least_load`'s weights.
    pub load: LoadWeights,
    /// Engine metrics scraping.
    pub engine_metrics: EngineMetrics,
    /// Overrides of the active health checks.
    pub health: PoolHealth,
    /// Local autoscaling: the pool starts and stops its own replicas.
    pub autoscaling: Option<Arc<crate::scaling::PoolAutoscaling>>,
    /// TLS to the replicas (`[pools.upstream_tls]`); `None` is plaintext.
    pub upstream_tls: Option<Arc<UpstreamTls>>,
    /// Session affinity (`affinity = { key = ... }`); `None` is off.
    pub affinity: Option<crate::affinity::Affinity>,
    /// LoRA adapters its replicas serve under their own model names
    /// (vLLM's `--lora-modules`): a request naming one goes to this pool,
    /// unchanged, preferring a replica that has it loaded.
    pub adapters: Vec<String>,
    /// What the replicas speak: HTTP/1.1, or gRPC over HTTP/2.
    pub protocol: PoolProtocol,
    /// A gRPC pool's services and retry rules.
    pub grpc: GrpcSettings,
}

/// The protocol a pool's replicas speak (`protocol` in the file).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolProtocol {
    /// HTTP/1.1 with keep-alive (the default; clients may still come over
    /// HTTP/2).
    #[default]
    Http1,
    /// gRPC: HTTP/2 (h2c, or h2 over `upstream_tls`) to the replicas, and
    /// only gRPC calls are routed to the pool.
    Grpc,
}

impl PoolProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http1 => "http1",
            Self::Grpc => "grpc",
        }
    }
}

/// `grpc = { services = [...], idempotent_methods = [...] }` of a gRPC pool.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GrpcSettings {
    /// Fully qualified services (`inference.GRPCInferenceService`): a call
    /// to one of them without the model key comes to this pool.
    pub services: Vec<String>,
    /// Methods (`/package.Service/Method`, or `/package.Service/*`) safe to
    /// send again when a replica failed before any response frame.
    pub idempotent_methods: Vec<String>,
}

impl GrpcSettings {
    /// Whether `path` (`/package.Service/Method`) is one of
    /// `idempotent_methods`.
    pub fn is_idempotent(&self, path: &str) -> bool {
        self.idempotent_methods
            .iter()
            .any(|m| match m.strip_suffix('*') {
                Some(service) => path.starts_with(service),
                None => m == path,
            })
    }

    /// Whether `path`'s service is one of `services`.
    pub fn serves(&self, path: &str) -> bool {
        let service = path.trim_start_matches('/').split('/').next().unwrap_or("");
        self.services.iter().any(|s| s == service)
    }
}

/// How the proxy speaks TLS to a pool's replicas.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UpstreamTls {
    /// CA certificates (PEM); `None`: the system's roots.
    pub ca: Option<std::path::PathBuf>,
    /// The name verified and sent as SNI; `None`: the replica's host.
    pub server_name: Option<String>,
    /// Verify the replicas' certificates.
    pub verify: bool,
}

impl PoolSpec {
    /// A pool with default settings.
    pub fn named(name: PoolName) -> Self {
        Self {
            name,
            aliases: Vec::new(),
            served_model_name: None,
            upstream_tls: None,
            affinity: None,
            adapters: Vec::new(),
            protocol: PoolProtocol::Http1,
            grpc: GrpcSettings::default(),
            routing: None,
            prefix: PrefixSettings::default(),
            load: LoadWeights::default(),
            engine_metrics: EngineMetrics::default(),
            health: PoolHealth::default(),
            autoscaling: None,
        }
    }

    /// Whether `model` is one of its LoRA adapters.
    pub fn is_adapter(&self, model: &str) -> bool {
        self.adapters.iter().any(|a| a == model)
    }

    /// The model name the pool's replicas serve: `served_model_name`, or
    /// the pool's name.
    pub fn served_name(&self) -> &str {
        self.served_model_name
            .as_deref()
            .unwrap_or(self.name.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_aliases_are_checked() {
        assert!(PoolName::new("llama-3-8b").is_ok());
        assert!(PoolName::new("llama3:8b").is_ok());
        assert!(PoolName::new("meta-llama/Llama").is_err());
        assert!(PoolName::new("").is_err());
        assert!(PoolName::new("a b").is_err());
        assert!(check_alias("meta-llama/Meta-Llama-3-8B-Instruct").is_ok());
        assert!(check_alias("has space").is_err());
        assert!(check_alias("").is_err());
        assert!(PoolName::default().is_default());
    }

    #[test]
    fn prefix_settings_are_range_checked() {
        assert!(PrefixSettings::default().check("prefix").is_ok());
        let bad = PrefixSettings {
            min_match_ratio: 1.5,
            ..PrefixSettings::default()
        };
        assert_eq!(
            bad.check("pools[0].prefix").unwrap_err().0,
            "pools[0].prefix.min_match_ratio"
        );
        let bad = PrefixSettings {
            balance_rel_threshold: 0.5,
            ..PrefixSettings::default()
        };
        assert!(bad.check("prefix").is_err());
        let bad = PrefixSettings {
            max_text_bytes: 10,
            ..PrefixSettings::default()
        };
        assert_eq!(bad.check("prefix").unwrap_err().0, "prefix.max_text_bytes");
    }
}
