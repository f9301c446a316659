//! The data plane's sections: `listen`, `workers`, `[timeouts]`, `[limits]`,
//! `[upstream]`, `[retries]`, `[outlier]`, `trusted_proxies` and how a
//! request's model is read (`[routing]`), validated into the form the
//! workers run with.

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::cors::Cors;
use super::file::{
    FileConfig, FileLimits, FileOutlier, FileRetries, FileRouting, FileTimeouts, FileUpstream,
};
use super::listeners::{http2, listener, Http2, Listener};
use super::{count, millis, Problems};
use crate::cidr::Cidr;

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

/// What the data plane needs to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyConfig {
    /// The data-plane listeners, never empty: `listen`'s one plaintext
    /// address, or every `[[listeners]]` entry.
    pub listeners: Vec<Listener>,
    /// `[http2]`.
    pub http2: Http2,
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
    /// See [`FileConfig::keep_untrusted_forwarded_headers`].
    pub keep_untrusted_forwarded_headers: bool,
    /// See [`FileConfig::upgrades`]: lowercase protocol names.
    pub upgrades: Vec<String>,
    /// How a request's model is found.
    pub model: ModelSelection,
    /// `[health] serve_path`: answered by the proxy itself.
    pub health_path: Option<String>,
    /// `[access_log]`, when there is one.
    pub access_log: Option<AccessLog>,
    /// `[cors]`, when there is one.
    pub cors: Option<Cors>,
}

/// Where access log lines go, and how they read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLog {
    /// The file, or `None` for stdout (`"-"`).
    pub path: Option<std::path::PathBuf>,
    pub format: AccessLogFormat,
}

/// An access log line's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AccessLogFormat {
    /// One JSON object per line.
    #[default]
    Json,
    /// Combined-like text: `client - - [time] "METHOD path" status bytes`
    /// and `key=value` fields.
    Text,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            listeners: vec![Listener::plain(SocketAddr::from(([0, 0, 0, 0], 8080)))],
            http2: Http2::default(),
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
            keep_untrusted_forwarded_headers: false,
            upgrades: vec!["websocket".to_owned()],
            model: ModelSelection::default(),
            health_path: None,
            access_log: None,
            cors: None,
        }
    }
}

impl ProxyConfig {
    /// The first listener's address.
    pub fn listen(&self) -> SocketAddr {
        self.listeners[0].address
    }

    /// Replaces every listener with one plaintext address (`--listen`).
    pub fn listen_on(&mut self, address: SocketAddr) {
        self.listeners = vec![Listener::plain(address)];
    }

    /// The worker count with 0 resolved to the available cores.
    pub fn worker_count(&self) -> usize {
        if self.workers > 0 {
            self.workers
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    }
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
    /// See [`FileTimeouts::request_read_timeout_ms`].
    pub request_read: Duration,
    /// See [`FileTimeouts::upstream_write_timeout_ms`].
    pub upstream_write: Duration,
    /// See [`FileTimeouts::shutdown_drain_timeout_ms`].
    pub shutdown_drain: Duration,
    /// See [`FileTimeouts::tls_handshake_timeout_ms`].
    pub tls_handshake: Duration,
    /// See [`FileTimeouts::tunnel_idle_timeout_ms`].
    pub tunnel_idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            client_header: Duration::from_secs(10),
            client_keepalive: Duration::from_secs(60),
            upstream_connect: Duration::from_secs(2),
            upstream_response: Duration::from_secs(300),
            body_read: Duration::from_secs(300),
            request_read: Duration::from_secs(60),
            upstream_write: Duration::from_secs(300),
            shutdown_drain: Duration::from_secs(30),
            tls_handshake: Duration::from_secs(10),
            tunnel_idle: Duration::from_secs(3600),
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
    /// See [`FileLimits::max_connections_per_client`]; `None` is off.
    pub max_connections_per_client: Option<usize>,
    /// See [`FileLimits::inspect_budget_bytes`].
    pub inspect_budget_bytes: usize,
    /// See [`FileLimits::min_body_rate_bytes_per_s`]; 0 is off.
    pub min_body_rate_bytes_per_s: u64,
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
            max_connections_per_client: None,
            inspect_budget_bytes: 64 * 1024 * 1024,
            min_body_rate_bytes_per_s: 1024,
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

/// The data plane's settings from `file`; each problem is recorded and its
/// field left at its default.
pub(super) fn proxy(p: &mut Problems, file: &FileConfig) -> ProxyConfig {
    let defaults = ProxyConfig::default();
    let address = |p: &mut Problems, field: String, text: &str| {
        text.parse::<SocketAddr>()
            .map_err(|_| {
                p.add(
                    field,
                    format!("{text:?} is not ip:port (e.g. 0.0.0.0:8080 or [::]:8080)"),
                )
            })
            .ok()
    };
    let mut listeners: Vec<Listener> = Vec::new();
    for (i, entry) in file.listeners.iter().enumerate() {
        let field = format!("listeners[{i}].address");
        let Some(addr) = address(p, field.clone(), &entry.address) else {
            continue;
        };
        if listeners.iter().any(|l| l.address == addr) {
            p.add(field, format!("{addr} is listed twice"));
        } else {
            listeners.push(listener(p, i, addr, entry));
        }
    }
    if file.listen.is_some() && !file.listeners.is_empty() {
        p.add(
            "listen",
            "give either listen or [[listeners]], not both: [[listeners]] lists every address",
        );
    }
    let listeners = match &file.listen {
        Some(text) => vec![Listener::plain(
            address(p, "listen".into(), text).unwrap_or(defaults.listen()),
        )],
        None if !listeners.is_empty() => listeners,
        None => defaults.listeners,
    };
    let limits = limits(p, &file.limits);
    ProxyConfig {
        listeners,
        http2: http2(p, &file.http2, &limits),
        workers: count(p, "workers", file.workers, 0, 0, 1024),
        io_driver: file.io_driver.unwrap_or_default(),
        cpu_pinning: file.cpu_pinning.unwrap_or(false),
        timeouts: timeouts(p, &file.timeouts),
        limits,
        upstream: upstream(p, &file.upstream),
        retries: retries(p, &file.retries),
        outlier: outlier(p, &file.outlier),
        trusted_proxies: trusted_proxies(p, &file.trusted_proxies),
        underscores_in_headers: file.underscores_in_headers.unwrap_or(false),
        keep_untrusted_forwarded_headers: file.keep_untrusted_forwarded_headers.unwrap_or(false),
        upgrades: upgrades(p, file.upgrades.as_deref()),
        model: model_selection(p, file.routing.as_ref()),
        health_path: health_path(p, file.health.serve_path.as_deref()),
        access_log: access_log(p, &file.access_log),
        cors: file.cors.as_ref().map(|c| super::cors::cors(p, c)),
    }
}

/// `[access_log]`: a path (or `"-"`), and `json` or `text`.
fn access_log(p: &mut Problems, file: &super::file::FileAccessLog) -> Option<AccessLog> {
    let format = match file.format.as_deref() {
        None | Some("json") => AccessLogFormat::Json,
        Some("text") => AccessLogFormat::Text,
        Some(other) => {
            p.add(
                "access_log.format",
                format!("{other:?} is not \"json\" or \"text\""),
            );
            AccessLogFormat::Json
        }
    };
    let path = file.path.as_deref()?;
    if path.is_empty() {
        p.add("access_log.path", "give a file, or \"-\" for stdout");
        return None;
    }
    Some(AccessLog {
        path: (path != "-").then(|| std::path::PathBuf::from(path)),
        format,
    })
}

/// `[health] serve_path`: an absolute path without a query.
fn health_path(p: &mut Problems, path: Option<&str>) -> Option<String> {
    let path = path?;
    let ok = path.starts_with('/')
        && !path.contains(['?', '#', ' '])
        && path.bytes().all(|b| b.is_ascii_graphic());
    if !ok {
        p.add(
            "health.serve_path",
            format!("{path:?} is not a path such as \"/healthz\" (a leading /, no query)"),
        );
        return None;
    }
    Some(path.to_owned())
}

/// `upgrades`: protocol names as `Upgrade` carries them (RFC 9110 tokens,
/// without a version), compared without case.
fn upgrades(p: &mut Problems, list: Option<&[String]>) -> Vec<String> {
    let Some(list) = list else {
        return ProxyConfig::default().upgrades;
    };
    let mut names = Vec::new();
    for (i, name) in list.iter().enumerate() {
        if !super::is_token(name) {
            p.add(
                format!("upgrades[{i}]"),
                format!("{name:?} is not a protocol name such as \"websocket\""),
            );
        } else if name.eq_ignore_ascii_case("h2c") {
            p.add(
                format!("upgrades[{i}]"),
                "h2c is not relayed as a tunnel: clients use HTTP/2 with prior knowledge (or TLS with ALPN)",
            );
        } else {
            names.push(name.to_ascii_lowercase());
        }
    }
    names
}

fn timeouts(p: &mut Problems, t: &FileTimeouts) -> Timeouts {
    let td = Timeouts::default();
    Timeouts {
        client_header: millis(
            p,
            "timeouts.client_header_timeout_ms",
            t.client_header_timeout_ms,
            td.client_header,
        ),
        client_keepalive: millis(
            p,
            "timeouts.client_keepalive_timeout_ms",
            t.client_keepalive_timeout_ms,
            td.client_keepalive,
        ),
        upstream_connect: millis(
            p,
            "timeouts.upstream_connect_timeout_ms",
            t.upstream_connect_timeout_ms,
            td.upstream_connect,
        ),
        upstream_response: millis(
            p,
            "timeouts.upstream_response_timeout_ms",
            t.upstream_response_timeout_ms,
            td.upstream_response,
        ),
        body_read: millis(
            p,
            "timeouts.body_read_timeout_ms",
            t.body_read_timeout_ms,
            td.body_read,
        ),
        request_read: millis(
            p,
            "timeouts.request_read_timeout_ms",
            t.request_read_timeout_ms,
            td.request_read,
        ),
        upstream_write: millis(
            p,
            "timeouts.upstream_write_timeout_ms",
            // Only its own field is blamed for its own value.
            t.upstream_write_timeout_ms
                .or(t.body_read_timeout_ms.filter(|&ms| ms > 0)),
            td.upstream_write,
        ),
        shutdown_drain: millis(
            p,
            "timeouts.shutdown_drain_timeout_ms",
            t.shutdown_drain_timeout_ms,
            td.shutdown_drain,
        ),
        tls_handshake: millis(
            p,
            "timeouts.tls_handshake_timeout_ms",
            t.tls_handshake_timeout_ms,
            td.tls_handshake,
        ),
        tunnel_idle: millis(
            p,
            "timeouts.tunnel_idle_timeout_ms",
            t.tunnel_idle_timeout_ms,
            td.tunnel_idle,
        ),
    }
}

fn limits(p: &mut Problems, l: &FileLimits) -> Limits {
    let ld = Limits::default();
    Limits {
        max_connections_per_client: l.max_connections_per_client.filter(|&n| n > 0),
        inspect_budget_bytes: count(
            p,
            "limits.inspect_budget_bytes",
            l.inspect_budget_bytes,
            ld.inspect_budget_bytes,
            0,
            1 << 40,
        ),
        min_body_rate_bytes_per_s: l
            .min_body_rate_bytes_per_s
            .unwrap_or(ld.min_body_rate_bytes_per_s),
        max_request_head_bytes: count(
            p,
            "limits.max_request_head_bytes",
            l.max_request_head_bytes,
            ld.max_request_head_bytes,
            1024,
            1024 * 1024,
        ),
        max_headers: count(
            p,
            "limits.max_headers",
            l.max_headers,
            ld.max_headers,
            8,
            MAX_HEADERS_CAP,
        ),
        max_request_body_bytes: l.max_request_body_bytes.filter(|&n| n > 0),
        max_connections_per_worker: count(
            p,
            "limits.max_connections_per_worker",
            l.max_connections_per_worker,
            ld.max_connections_per_worker,
            1,
            10_000_000,
        ),
        max_connect_attempts: count(
            p,
            "limits.max_connect_attempts",
            l.max_connect_attempts,
            ld.max_connect_attempts,
            1,
            16,
        ),
        max_chunk_extension_bytes: count(
            p,
            "limits.max_chunk_extension_bytes",
            l.max_chunk_extension_bytes,
            ld.max_chunk_extension_bytes,
            0,
            1024 * 1024,
        ),
    }
}

fn upstream(p: &mut Problems, u: &FileUpstream) -> Upstream {
    let ud = Upstream::default();
    Upstream {
        max_idle_per_replica: count(
            p,
            "upstream.max_idle_per_replica",
            u.max_idle_per_replica,
            ud.max_idle_per_replica,
            0,
            100_000,
        ),
        idle_timeout: millis(
            p,
            "upstream.idle_timeout_ms",
            u.idle_timeout_ms,
            ud.idle_timeout,
        ),
    }
}

fn trusted_proxies(p: &mut Problems, list: &[String]) -> Vec<Cidr> {
    list.iter()
        .enumerate()
        .filter_map(|(i, text)| {
            text.parse::<Cidr>()
                .map_err(|reason| p.add(format!("trusted_proxies[{i}]"), reason))
                .ok()
        })
        .collect()
}

fn model_selection(p: &mut Problems, routing: Option<&FileRouting>) -> ModelSelection {
    let defaults = ModelSelection::default();
    let Some(FileRouting::Table(t)) = routing else {
        return defaults;
    };
    let header = match &t.model_header {
        None => defaults.header.clone(),
        Some(h) if !h.is_empty() && h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') => {
            h.to_ascii_lowercase()
        }
        Some(h) => {
            p.add(
                "routing.model_header",
                format!("{h:?} is not a header name (letters, digits and -)"),
            );
            defaults.header.clone()
        }
    };
    ModelSelection {
        header,
        max_inspect_body_bytes: count(
            p,
            "routing.max_inspect_body_bytes",
            t.max_inspect_body_bytes,
            defaults.max_inspect_body_bytes,
            0,
            64 * 1024 * 1024,
        ),
    }
}

fn outlier(p: &mut Problems, o: &FileOutlier) -> crate::outlier::Ejection {
    let od = crate::outlier::Ejection::default();
    crate::outlier::Ejection {
        consecutive_failures: o.consecutive_failures.unwrap_or(od.consecutive_failures),
        base_ms: millis(
            p,
            "outlier.base_ejection_ms",
            o.base_ejection_ms,
            Duration::from_millis(od.base_ms),
        )
        .as_millis() as u64,
        max_ms: millis(
            p,
            "outlier.max_ejection_ms",
            o.max_ejection_ms,
            Duration::from_millis(od.max_ms),
        )
        .as_millis() as u64,
        max_percent: count(
            p,
            "outlier.max_ejection_percent",
            o.max_ejection_percent.map(|v| v as usize),
            od.max_percent as usize,
            0,
            100,
        ) as u64,
    }
}

fn retries(p: &mut Problems, r: &FileRetries) -> Retries {
    let rd = Retries::default();
    Retries {
        max_retries: count(
            p,
            "retries.max_retries",
            r.max_retries.map(|v| v as usize),
            rd.max_retries as usize,
            0,
            10,
        ) as u32,
        budget_percent: count(
            p,
            "retries.budget_percent",
            r.budget_percent.map(|v| v as usize),
            rd.budget_percent as usize,
            0,
            100,
        ) as u64,
        budget_window_ms: millis(
            p,
            "retries.budget_window_ms",
            r.budget_window_ms,
            Duration::from_millis(rd.budget_window_ms),
        )
        .as_millis() as u64,
        max_replay_body_bytes: count(
            p,
            "retries.max_replay_body_bytes",
            r.max_replay_body_bytes,
            rd.max_replay_body_bytes,
            0,
            16 * 1024 * 1024,
        ),
        non_idempotent: r.non_idempotent.unwrap_or(false),
    }
}
