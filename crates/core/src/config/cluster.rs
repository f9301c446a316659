//! `[cluster]`: several inferlb instances sharing their state in etcd.

use std::path::PathBuf;
use std::time::Duration;

use super::file::FileCluster;
use super::Problems;

/// Validated `[cluster]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    /// etcd's client URLs (`http://host:port` or `https://host:port`).
    pub etcd: Vec<String>,
    /// The fleet's name: its keys live under `/inferlb/<name>/`.
    pub name: String,
    /// This instance's name, unique in the fleet (default: the host name).
    pub instance: String,
    /// The TTL of the lease this instance's presence (and its leadership,
    /// for singletons) is held under.
    pub lease_ttl: Duration,
    /// TLS to etcd.
    pub tls: Option<ClusterTls>,
}

/// TLS to etcd: the CA that signs its certificates, and optionally a client
/// certificate for etcd's `--client-cert-auth`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterTls {
    pub ca: PathBuf,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl Cluster {
    /// The prefix every key of the fleet starts with.
    pub fn prefix(&self) -> String {
        format!("/inferlb/{}/", self.name)
    }
}

/// The default lease TTL.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(10);

/// This host's name, the default instance name.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "inferlb".to_owned())
}

/// Whether `name` may be a path segment of an etcd key: letters, digits,
/// `.`, `_`, `-`.
pub fn valid_key_segment(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

pub(super) fn cluster(p: &mut Problems, file: Option<&FileCluster>) -> Option<Cluster> {
    let file = file?;
    if file.etcd.is_empty() {
        p.add(
            "cluster.etcd",
            "list at least one etcd client URL, e.g. [\"http://10.0.0.1:2379\"]",
        );
    }
    for (i, url) in file.etcd.iter().enumerate() {
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"));
        let ok = rest.is_some_and(|hostport| {
            hostport
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
        });
        if !ok {
            p.add(
                format!("cluster.etcd[{i}]"),
                format!("{url:?} is not http://host:port or https://host:port"),
            );
        }
        if url.starts_with("https://") && file.tls.is_none() {
            p.add(
                format!("cluster.etcd[{i}]"),
                "an https:// endpoint needs `cluster.tls` with the CA that signed etcd's certificate",
            );
        }
    }
    let name = file.name.clone().unwrap_or_else(|| "default".to_owned());
    if !valid_key_segment(&name) {
        p.add(
            "cluster.name",
            format!("{name:?}: use letters, digits, '.', '_' or '-' (it is part of every key)"),
        );
    }
    let instance = file.instance.clone().unwrap_or_else(host_name);
    if !valid_key_segment(&instance) {
        p.add(
            "cluster.instance",
            format!("{instance:?}: use letters, digits, '.', '_' or '-' (it is part of a key)"),
        );
    }
    let lease_ttl = match file.lease_ttl_s {
        None => DEFAULT_LEASE_TTL,
        Some(s) if (2..=600).contains(&s) => Duration::from_secs(s),
        Some(s) => {
            p.add("cluster.lease_ttl_s", format!("{s} is outside 2..=600"));
            DEFAULT_LEASE_TTL
        }
    };
    let tls = file.tls.as_ref().map(|t| {
        if t.cert.is_some() != t.key.is_some() {
            p.add(
                "cluster.tls",
                "`cert` and `key` go together (a client certificate and its key)",
            );
        }
        ClusterTls {
            ca: PathBuf::from(&t.ca),
            cert: t.cert.as_ref().map(PathBuf::from),
            key: t.key.as_ref().map(PathBuf::from),
        }
    });
    Some(Cluster {
        etcd: file.etcd.clone(),
        name,
        instance,
        lease_ttl,
        tls,
    })
}
