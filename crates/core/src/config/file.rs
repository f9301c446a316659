//! The configuration file as written: one serde type per section, unknown
//! fields refused so a typo cannot silently fall back to a default. Each
//! field's comment names its default and its nginx or ALB equivalent.

use serde::{Deserialize, Serialize};

use super::IoDriver;
use crate::pool::{Flavor, LoadWeights, PrefixSettings};
use crate::routing::Routing;

/// The configuration file, as written.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Address the data plane listens on. Default `0.0.0.0:8080`.
    pub listen: Option<String>,
    /// Several listeners (instead of `listen`): every worker binds each.
    #[serde(default)]
    pub listeners: Vec<FileListener>,
    /// HTTP/2 from clients.
    #[serde(default)]
    pub http2: FileHttp2,
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
    /// Keep `X-Forwarded-Host`, `X-Forwarded-Port`, `X-Forwarded-Prefix` and
    /// `X-Forwarded-Server` from clients that are not `trusted_proxies`.
    /// Default false: they are dropped, since a replica that builds URLs or
    /// redirects from them would believe any client (Traefik's
    /// `forwardedHeaders.insecure`).
    pub keep_untrusted_forwarded_headers: Option<bool>,
    /// Protocols a client may switch to with `Upgrade` on HTTP/1.1 (and
    /// with HTTP/2's extended CONNECT, RFC 8441): the request goes to the
    /// replica with its `Upgrade`, and a replica's `101 Switching Protocols`
    /// turns the connection into a tunnel. Default `["websocket"]`; `[]`
    /// strips `Upgrade` as a hop-by-hop header (nginx needs
    /// `proxy_set_header Upgrade` for the same).
    pub upgrades: Option<Vec<String>>,
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
    /// One line per request, written off the data plane.
    #[serde(default)]
    pub access_log: FileAccessLog,
    /// `[cors]`: answers browsers' preflights and allows their origins.
    pub cors: Option<FileCors>,
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
    /// `[cluster]`: share the replicas and runtime changes with other
    /// instances through etcd.
    pub cluster: Option<FileCluster>,
}

/// `[cluster]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileCluster {
    /// etcd's client URLs, e.g. `["http://10.0.0.1:2379", ...]`.
    #[serde(default)]
    pub etcd: Vec<String>,
    /// The fleet's name; its keys live under `/inferlb/<name>/`. Default
    /// `default`.
    pub name: Option<String>,
    /// This instance's name in the fleet. Default: the host name.
    pub instance: Option<String>,
    /// The lease TTL in seconds (presence, leadership). Default 10.
    pub lease_ttl_s: Option<u64>,
    /// TLS to etcd.
    pub tls: Option<FileClusterTls>,
}

/// `[cluster.tls]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileClusterTls {
    /// PEM CA bundle that signs etcd's certificates.
    pub ca: String,
    /// PEM client certificate (etcd `--client-cert-auth`).
    pub cert: Option<String>,
    /// Its PEM key.
    pub key: Option<String>,
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

/// `routing = "p2c"`, or a `[routing]` table.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum FileRouting {
    /// Just the rule.
    Rule(Routing),
    /// The rule and how a request's model is found.
    Table(FileRoutingTable),
}

impl<'de> Deserialize<'de> for FileRouting {
    /// A string is a rule, a table is a table: each failure says what was
    /// wrong with the one it is (an unknown rule names the valid ones),
    /// rather than that neither shape matched.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = FileRouting;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(
                    "a routing rule (\"round_robin\", \"prefix\", ...) or a [routing] table",
                )
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                v.parse::<Routing>()
                    .map(FileRouting::Rule)
                    .map_err(E::custom)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Self::Value, A::Error> {
                FileRoutingTable::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(FileRouting::Table)
            }
        }
        d.deserialize_any(Visitor)
    }
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
    pub max_text_bytes: Option<usize>,
    /// `fewest` or `hash`: see [`crate::pool::NewPrefix`]. Default `fewest`,
    /// `hash` with `[cluster]`.
    pub new_prefix: Option<crate::pool::NewPrefix>,
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
            max_text_bytes: self.max_text_bytes.unwrap_or(base.max_text_bytes),
            new_prefix: self.new_prefix.unwrap_or(base.new_prefix),
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
    /// The model name the replicas serve; a body naming the pool by
    /// another name (an alias) is forwarded with its `"model"` set to it.
    /// Default: the pool's name.
    pub served_model_name: Option<String>,
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
    /// TLS to the pool's replicas.
    pub upstream_tls: Option<FileUpstreamTls>,
    /// Session affinity: requests with the same key go to the same replica.
    pub affinity: Option<FileAffinity>,
    /// LoRA adapters the replicas serve under their own names.
    #[serde(default)]
    pub adapters: Vec<String>,
    /// What the replicas speak: `"http1"` (default) or `"grpc"` (HTTP/2 to
    /// the replicas; gRPC calls only).
    pub protocol: Option<crate::pool::PoolProtocol>,
    /// A gRPC pool's services and idempotent methods.
    pub grpc: Option<FileGrpc>,
}

/// `grpc = { services = ["inference.GRPCInferenceService"],
/// idempotent_methods = ["/inference.GRPCInferenceService/ModelMetadata"] }`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileGrpc {
    /// Services whose calls come to this pool when they name no model.
    #[serde(default)]
    pub services: Vec<String>,
    /// Methods sent again on another replica when one failed before any
    /// response frame (`/package.Service/Method`, or `/package.Service/*`).
    #[serde(default)]
    pub idempotent_methods: Vec<String>,
}

/// `affinity = { key = "header:X-Session-ID", epsilon = 0.25 }`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAffinity {
    /// `header:NAME`, `cookie:NAME` or `json:FIELD` (`json:user`).
    pub key: String,
    /// A key moves off a replica whose load would pass `(1 + epsilon)` ×
    /// the mean. Default 0.25.
    pub epsilon: Option<f64>,
}

/// `[pools.upstream_tls]`: the proxy speaks TLS to the pool's replicas.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileUpstreamTls {
    /// CA certificates (PEM) the replicas' certificates are verified
    /// against. Default: the system's roots.
    pub ca: Option<String>,
    /// The name verified and sent as SNI. Default: the replica's host (its
    /// address's name or IP).
    pub server_name: Option<String>,
    /// Verify the replicas' certificates. Default true; false accepts any
    /// certificate (a test setup, never the internet).
    pub verify: Option<bool>,
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
    /// Time for a whole request body held in memory (read for its model
    /// before a replica is picked) to arrive, however steadily it trickles;
    /// then 408. Default 60 000 (HAProxy `timeout http-request`; nginx's
    /// `client_body_timeout` is a gap).
    pub request_read_timeout_ms: Option<u64>,
    /// Longest a write to a replica (the request head or a piece of its
    /// body) may wait for the replica to read; then the exchange ends (504
    /// before any response byte). Default: `body_read_timeout_ms` (nginx
    /// `proxy_send_timeout`, 60 s there).
    pub upstream_write_timeout_ms: Option<u64>,
    /// On SIGTERM, how long in-flight requests and streams may take to finish.
    /// Default 30 000 (ALB deregistration delay is 300 s; Kubernetes gives 30 s).
    pub shutdown_drain_timeout_ms: Option<u64>,
    /// Time for a client to finish its TLS handshake; then the connection
    /// closes (counted as `timeout`). Default 10 000 (HAProxy
    /// `timeout client` covers it; nginx `ssl_handshake_timeout` 60 s).
    pub tls_handshake_timeout_ms: Option<u64>,
    /// Longest an upgraded connection (a WebSocket) may carry no byte in
    /// either direction; then both sides are closed. Default 3 600 000
    /// (nginx `proxy_read_timeout` applies to tunnels too; ALB's idle
    /// timeout, 60 s, would end quiet realtime sessions).
    pub tunnel_idle_timeout_ms: Option<u64>,
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
    /// Client connections one client address may hold across all workers;
    /// past it new ones from that address are closed at once. Default 0:
    /// off (for a proxy at the edge; nginx `limit_conn`, HAProxy
    /// `src_conn_cur`).
    pub max_connections_per_client: Option<usize>,
    /// Bytes of request bodies the process holds in memory to read their
    /// `"model"` (or prompt text), shared equally by the workers. A request
    /// that finds none left is routed without reading its body where that
    /// is possible (the model header, a default pool), else answered 503
    /// with `Retry-After`. Default 67 108 864 (64 MiB).
    pub inspect_budget_bytes: Option<usize>,
    /// Slowest a body held in memory (read for its model) may arrive,
    /// averaged from its first byte after one second's grace; slower gets
    /// 408. Default 1 024; 0 is off (Apache `MinRate`).
    pub min_body_rate_bytes_per_s: Option<u64>,
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

/// `[access_log]`: one line per request (nginx `access_log`, HAProxy
/// `option httplog`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAccessLog {
    /// A file to append to, or `"-"` for stdout. Absent: no access log.
    pub path: Option<String>,
    /// `"json"` (JSON lines, the default) or `"text"` (combined-like).
    pub format: Option<String>,
}

/// `[[listeners]]`: one address the proxy serves on.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileListener {
    /// `ip:port`, e.g. `"0.0.0.0:8080"` or `"[::]:8080"`.
    pub address: String,
    /// TLS termination; absent: plaintext (HTTP/1.1, and h2c with prior
    /// knowledge when `alpn` lists `h2`).
    pub tls: Option<FileTls>,
    /// Protocols offered, in order of preference. Default
    /// `["h2", "http/1.1"]`; `["http/1.1"]` turns HTTP/2 off.
    pub alpn: Option<Vec<String>>,
    /// Client certificates required and verified against these CAs (PEM):
    /// mutual TLS. Also accepted inside `tls`.
    pub client_ca: Option<String>,
}

/// A listener's `tls` table.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTls {
    /// Certificate chains (PEM, leaf first) and their private keys (PEM:
    /// PKCS#8, PKCS#1 or SEC1), ECDSA or RSA. The client's SNI picks one
    /// by the names in its certificate; the first serves every other name.
    #[serde(default)]
    pub certificates: Vec<FileCertificate>,
    /// See [`FileListener::client_ca`].
    pub client_ca: Option<String>,
    /// What a handshake naming a server no certificate covers gets:
    /// `"first"` (default: the first certificate) or `"refuse"` (the
    /// handshake fails with an `unrecognized_name` alert).
    pub unknown_server_name: Option<String>,
}

/// One certificate chain and its key.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileCertificate {
    pub cert: String,
    pub key: String,
}

/// `[http2]`: HTTP/2 from clients, and its limits against abuse.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileHttp2 {
    /// Streams a client may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS).
    /// Default 128 (nginx `http2_max_concurrent_streams`).
    pub max_concurrent_streams: Option<u32>,
    /// Largest decoded header list of one request (SETTINGS_MAX_HEADER_LIST_SIZE),
    /// CONTINUATION frames included; more resets the connection. Default:
    /// `limits.max_request_head_bytes`.
    pub max_header_list_size: Option<u32>,
    /// Streams a client may reset per second on one connection before the
    /// connection is closed with GOAWAY (ENHANCE_YOUR_CALM), against rapid
    /// reset (CVE-2023-44487). Default 100.
    pub max_resets_per_s: Option<u32>,
    /// Control frames (SETTINGS, PING, WINDOW_UPDATE with no stream work)
    /// a client may send per second before GOAWAY. Default 1 000.
    pub max_control_frames_per_s: Option<u32>,
    /// A stream's receive window, bytes. Default 262 144.
    pub stream_window_bytes: Option<u32>,
    /// A connection's receive window, bytes. Default 1 048 576.
    pub connection_window_bytes: Option<u32>,
}

/// `[cors]`: cross-origin requests from browser UIs that call the API
/// directly.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileCors {
    /// Origins allowed (`"https://ui.example.com"`), or `["*"]` for any.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// Default `["GET", "POST", "OPTIONS"]`.
    pub allowed_methods: Option<Vec<String>>,
    /// Request headers allowed; default `["*"]`: whatever the preflight
    /// asks for (`Authorization` included).
    pub allowed_headers: Option<Vec<String>>,
    /// Response headers a page may read. Default `["X-Request-Id"]`.
    pub expose_headers: Option<Vec<String>>,
    /// How long a browser caches a preflight. Default 600.
    pub max_age_s: Option<u64>,
    /// Send `Access-Control-Allow-Credentials: true` (cookies). Default
    /// false; not with `"*"` origins.
    pub allow_credentials: Option<bool>,
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
    /// A path the proxy answers itself on the data listener (e.g.
    /// `"/healthz"`), for a load balancer or a Kubernetes probe in front:
    /// 200 while a replica of any pool is healthy and routable, else 503.
    /// Off by default (every path goes to the replicas).
    pub serve_path: Option<String>,
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
