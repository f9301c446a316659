//! The control plane's sections: `[admin]`, `[health]` and `[dns]`.

use std::net::SocketAddr;
use std::time::Duration;

use super::file::{FileAdmin, FileDns, FileHealth};
use super::{count, millis, Problems};

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

pub(super) fn admin(p: &mut Problems, a: &FileAdmin) -> AdminConfig {
    let defaults = AdminConfig::default();
    let listen = match &a.listen {
        None => defaults.listen,
        Some(text) => text.parse().unwrap_or_else(|_| {
            p.add(
                "admin.listen",
                format!("{text:?} is not ip:port (e.g. 127.0.0.1:9090)"),
            );
            defaults.listen
        }),
    };
    AdminConfig {
        listen,
        token_file: a.token_file.as_ref().map(std::path::PathBuf::from),
        protect_probes: a.protect_probes.unwrap_or(false),
        state_file: a.state_file.as_ref().map(std::path::PathBuf::from),
        listen_given: a.listen.is_some(),
    }
}

pub(super) fn health(p: &mut Problems, h: &FileHealth) -> HealthCheck {
    let hd = HealthCheck::default();
    let mut path = h.path.clone().unwrap_or(hd.path.clone());
    if !path.starts_with('/')
        || path
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        p.add(
            "health.path",
            format!("{path:?} must start with '/' and have no spaces"),
        );
        path = hd.path.clone();
    }
    let health = HealthCheck {
        enabled: h.enabled.unwrap_or(true),
        path,
        interval: millis(p, "health.interval_ms", h.interval_ms, hd.interval),
        timeout: millis(p, "health.timeout_ms", h.timeout_ms, hd.timeout),
        healthy_threshold: count(
            p,
            "health.healthy_threshold",
            h.healthy_threshold.map(|v| v as usize),
            2,
            1,
            10,
        ) as u32,
        unhealthy_threshold: count(
            p,
            "health.unhealthy_threshold",
            h.unhealthy_threshold.map(|v| v as usize),
            2,
            1,
            10,
        ) as u32,
    };
    if health.timeout >= health.interval {
        p.add("health.timeout_ms", "must be below health.interval_ms");
    }
    health
}

/// How often replica host names are resolved again; `None` is off.
pub(super) fn dns_refresh(d: &FileDns) -> Option<Duration> {
    match d.refresh_interval_ms {
        None => Some(Duration::from_secs(30)),
        Some(0) => None,
        Some(ms) => Some(Duration::from_millis(ms)),
    }
}
