//! Configuration: the TOML file form, and the validated form the program uses.
//!
//! [`FileConfig`] mirrors the file one to one (unknown fields are refused so a
//! typo cannot silently fall back to a default); [`Config::parse`] checks
//! every field, turns milliseconds into `Duration`s, and reports **every**
//! problem in the file at once, each with its field path and the reason.
//! Checking resolves no host name; [`Config::resolve`] does that, as a step
//! of its own ([`Config::load`] and [`Config::from_toml`] do both). Comments
//! name the nginx or ALB setting each field corresponds to.
//!
//! One module per part of the file: [`file`] (the serde form), `proxy`
//! (the data plane's sections), `listeners` (`[[listeners]]` with TLS, and
//! `[http2]`), `pools` (pools and replicas), `autoscaling`
//! (`[pools.autoscaling]`, `[autoscaling.publish]`), `admin` (`[admin]`,
//! `[health]`, `[dns]`), `cluster` (`[cluster]`).

mod admin;
mod autoscaling;
mod cluster;
mod cors;
pub mod file;
mod listeners;
mod pools;
mod proxy;

use std::path::Path;
use std::time::Duration;

use crate::command::ReplicaSpec;
use crate::pool::PoolSpec;
use crate::routing::Routing;

pub use admin::{AdminConfig, HealthCheck};
pub use autoscaling::Publish;
pub use cluster::{host_name, valid_key_segment, Cluster, ClusterTls, DEFAULT_LEASE_TTL};
pub use cors::Cors;
pub use file::*;
pub use listeners::{CertificateFiles, Http2, Listener, Protocol, Tls};
pub use pools::{replica_spec, replica_spec_in};
pub use proxy::{
    AccessLog, AccessLogFormat, IoDriver, Limits, ModelSelection, ProxyConfig, Retries, Timeouts,
    Upstream, MAX_HEADERS_CAP,
};

/// A configuration that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The file is not valid TOML or has a field of the wrong type or name.
    #[error("{0}")]
    Parse(String),
    /// Fields have values the program cannot use: every one found, in the
    /// order of the file's sections.
    #[error("{}", render(.0))]
    Invalid(Vec<Problem>),
}

/// One field's problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid value for `{field}`: {reason}")]
pub struct Problem {
    /// The field's path, e.g. `pools[1].autoscaling.max`.
    pub field: String,
    pub reason: String,
}

fn render(problems: &[Problem]) -> String {
    match problems {
        [one] => one.to_string(),
        many => {
            let mut text = format!("{} problems:", many.len());
            for problem in many {
                text.push_str("\n  ");
                text.push_str(&problem.to_string());
            }
            text
        }
    }
}

impl ConfigError {
    /// One field's problem.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid(vec![Problem {
            field: field.into(),
            reason: reason.into(),
        }])
    }

    /// The problems, by field (none for a parse error).
    pub fn problems(&self) -> &[Problem] {
        match self {
            Self::Parse(_) => &[],
            Self::Invalid(problems) => problems,
        }
    }
}

/// The problems found so far while checking a file.
#[derive(Debug, Default)]
pub(crate) struct Problems(Vec<Problem>);

impl Problems {
    pub(crate) fn add(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        self.0.push(Problem {
            field: field.into(),
            reason: reason.into(),
        });
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    pub(crate) fn into_result(self) -> Result<(), ConfigError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(self.0))
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
    /// The replicas to start with, every pool's. Until [`Config::resolve`],
    /// a replica named by host has the unspecified address `0.0.0.0:0`.
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
    pub safeguards: crate::replica_set::Safeguards,
    /// Publishing the proxy's concurrency to CloudWatch; `None` is off.
    pub publish: Option<Publish>,
    /// `[cluster]`: the state lives in etcd, shared with other instances.
    pub cluster: Option<Cluster>,
    /// Each replica's field in the file, for [`Config::resolve`]'s errors.
    replica_fields: Vec<String>,
}

impl Config {
    /// Parses and checks a TOML document, resolving nothing: every problem
    /// is reported at once.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let file: FileConfig =
            toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        Self::try_from(file)
    }

    /// Resolves the replicas' host names (each failure named by its field)
    /// and checks that no two replicas share an address.
    pub fn resolve(&mut self) -> Result<(), ConfigError> {
        let mut listed: Vec<(String, ReplicaSpec)> = self
            .replicas
            .drain(..)
            .enumerate()
            .map(|(i, spec)| {
                let field = self
                    .replica_fields
                    .get(i)
                    .cloned()
                    .unwrap_or_else(|| format!("replicas[{i}]"));
                (field, spec)
            })
            .collect();
        let resolved = pools::resolve(&mut listed);
        self.replicas = listed.into_iter().map(|(_, spec)| spec).collect();
        resolved
    }

    /// Parses, checks and resolves a TOML document.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let mut config = Self::parse(text)?;
        config.resolve()?;
        Ok(config)
    }

    /// Reads and checks a file, resolving nothing.
    pub fn check(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::Parse(format!("cannot read {}: {e}", path.display())))?;
        Self::parse(&text).map_err(|e| match e {
            ConfigError::Parse(msg) => ConfigError::Parse(format!("{}: {msg}", path.display())),
            other => other,
        })
    }

    /// Reads, checks and resolves a file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let mut config = Self::check(path)?;
        config.resolve()?;
        Ok(config)
    }
}

/// A duration field: present or default, never 0.
pub(crate) fn millis(
    p: &mut Problems,
    field: &str,
    value: Option<u64>,
    default: Duration,
) -> Duration {
    match value {
        None => default,
        Some(0) => {
            p.add(field, "must be above 0");
            default
        }
        Some(ms) => Duration::from_millis(ms),
    }
}

/// A count field: present or default, within `min..=max`.
pub(crate) fn count(
    p: &mut Problems,
    field: &str,
    value: Option<usize>,
    default: usize,
    min: usize,
    max: usize,
) -> usize {
    match value {
        None => default,
        Some(n) if (min..=max).contains(&n) => n,
        Some(n) => {
            p.add(field, format!("{n} is outside {min}..={max}"));
            default
        }
    }
}

impl TryFrom<FileConfig> for Config {
    type Error = ConfigError;

    /// Checks every section, collecting every problem.
    fn try_from(file: FileConfig) -> Result<Self, Self::Error> {
        let mut p = Problems::default();
        let proxy = proxy::proxy(&mut p, &file);
        let health = admin::health(&mut p, &file.health);
        let admin = admin::admin(&mut p, &file.admin);
        let safeguards = crate::replica_set::Safeguards {
            slow_start_ms: file.slow_start_ms.unwrap_or(0),
            fail_open: file.health.fail_open.unwrap_or(true),
        };
        let replicas = pools::replicas(&mut p, &file);
        let pools = pools::pools(&mut p, &file);
        let publish = autoscaling::publish(&mut p, &file.autoscaling);
        let cluster = cluster::cluster(&mut p, file.cluster.as_ref());
        if cluster.is_some() && admin.state_file.is_some() {
            p.add(
                "admin.state_file",
                "not with [cluster]: the fleet's runtime changes live in etcd",
            );
        }
        p.into_result()?;
        let (replica_fields, replicas) = replicas.into_iter().unzip();
        Ok(Self {
            proxy,
            routing: match &file.routing {
                None => Routing::default(),
                Some(FileRouting::Rule(rule)) => *rule,
                Some(FileRouting::Table(t)) => t.rule.unwrap_or_default(),
            },
            replicas,
            pools,
            admin,
            health,
            dns_refresh: admin::dns_refresh(&file.dns),
            safeguards,
            publish,
            cluster,
            replica_fields,
        })
    }
}

/// An RFC 9110 token (§5.6.2): a method, a header name, a protocol name.
pub(crate) fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
mod tests;
