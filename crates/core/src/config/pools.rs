//! The pools and their replicas: `[[replicas]]`, `[[pools]]` (names,
//! aliases, routing, `[prefix]`, `[least_load]`, `[engine_metrics]`,
//! `[pools.health]`, `[pools.autoscaling]`), and the replica form the
//! admin API and `--replica` share.

use std::net::SocketAddr;

use super::autoscaling::autoscaling;
use super::file::{FileConfig, FileEngineMetrics, FileReplica};
use super::{millis, ConfigError, Problems};
use crate::command::ReplicaSpec;
use crate::pool::{EngineMetrics, LoadWeights, PoolName, PoolSpec, PrefixSettings};
use crate::replica::{check_weight, parse_address, resolve_address, ReplicaId, DEFAULT_WEIGHT};

/// Where a replica of the file stands before its name is resolved.
const UNRESOLVED: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0);

/// Turns a declared replica into a spec, resolving its name now; the field
/// is named on failure. For `--replica` and the admin API.
pub fn replica_spec(field: &str, replica: &FileReplica) -> Result<ReplicaSpec, ConfigError> {
    replica_spec_in(field, replica, PoolName::default_pool())
}

/// Like [`replica_spec`], for a replica of `pool`.
pub fn replica_spec_in(
    field: &str,
    replica: &FileReplica,
    pool: PoolName,
) -> Result<ReplicaSpec, ConfigError> {
    let mut p = Problems::default();
    let spec = checked_spec(&mut p, field, replica, pool);
    p.into_result()?;
    let mut spec = spec.ok_or_else(|| ConfigError::invalid(field, "invalid replica"))?;
    if spec.addr == UNRESOLVED {
        spec.addr = resolve_address(&replica.address)
            .map_err(|e| ConfigError::invalid(format!("{field}.address"), e.to_string()))?;
    }
    Ok(spec)
}

/// A replica's spec, checked without resolving its name: a host name's
/// address is [`UNRESOLVED`] until [`super::Config::resolve`].
fn checked_spec(
    p: &mut Problems,
    field: &str,
    replica: &FileReplica,
    pool: PoolName,
) -> Option<ReplicaSpec> {
    let addr = parse_address(&replica.address)
        .map_err(|e| p.add(format!("{field}.address"), e.to_string()))
        .ok()?;
    let weight = check_weight(replica.weight.unwrap_or(u64::from(DEFAULT_WEIGHT)))
        .map_err(|e| p.add(format!("{field}.weight"), e.to_string()))
        .ok()?;
    let id = match &replica.id {
        Some(id) => ReplicaId::new(id)
            .map_err(|e| p.add(format!("{field}.id"), e.to_string()))
            .ok()?,
        None => ReplicaId::from_address(&replica.address),
    };
    Some(ReplicaSpec {
        id,
        address: replica.address.clone(),
        addr: addr.unwrap_or(UNRESOLVED),
        weight,
        pool,
    })
}

/// Every pool's replicas, checked (ids and addresses used once), names not
/// resolved yet. Returns them with their fields, for [`resolve`].
pub(super) fn replicas(p: &mut Problems, file: &FileConfig) -> Vec<(String, ReplicaSpec)> {
    let mut listed = Vec::new();
    for (i, replica) in file.replicas.iter().enumerate() {
        listed.push((format!("replicas[{i}]"), replica, PoolName::default_pool()));
    }
    for (n, pool) in file.pools.iter().enumerate() {
        // A bad pool name is reported by `pools`.
        let Ok(name) = PoolName::new(&pool.name) else {
            continue;
        };
        for (i, replica) in pool.replicas.iter().enumerate() {
            listed.push((format!("pools[{n}].replicas[{i}]"), replica, name.clone()));
        }
    }
    let mut replicas: Vec<(String, ReplicaSpec)> = Vec::with_capacity(listed.len());
    for (field, replica, pool) in listed {
        let Some(spec) = checked_spec(p, &field, replica, pool) else {
            continue;
        };
        if replicas.iter().any(|(_, r)| r.id == spec.id) {
            p.add(
                format!("{field}.id"),
                format!("id {} is used twice", spec.id),
            );
            continue;
        }
        let same = |r: &ReplicaSpec| {
            r.address == spec.address || (spec.addr != UNRESOLVED && r.addr == spec.addr)
        };
        if replicas.iter().any(|(_, r)| same(r)) {
            p.add(
                format!("{field}.address"),
                format!("address {} is used twice", spec.address),
            );
            continue;
        }
        replicas.push((field, spec));
    }
    replicas
}

/// Resolves the host names among `replicas` (each field named on failure)
/// and checks that no two resolve to one address.
pub(super) fn resolve(replicas: &mut [(String, ReplicaSpec)]) -> Result<(), ConfigError> {
    let mut p = Problems::default();
    for i in 0..replicas.len() {
        let (field, spec) = &mut replicas[i];
        if spec.addr == UNRESOLVED {
            match resolve_address(&spec.address) {
                Ok(addr) => spec.addr = addr,
                Err(e) => {
                    p.add(format!("{field}.address"), e.to_string());
                    continue;
                }
            }
        }
        let (field, spec) = &replicas[i];
        if replicas[..i].iter().any(|(_, r)| r.addr == spec.addr) {
            p.add(
                format!("{field}.address"),
                format!("{} is the address of another replica", spec.address),
            );
        }
    }
    p.into_result()
}

/// The declared pools, each problem recorded under its field.
pub(super) fn pools(p: &mut Problems, file: &FileConfig) -> Vec<PoolSpec> {
    // A fleet's instances place new prefixes alike without talking.
    let defaults = PrefixSettings {
        new_prefix: if file.cluster.is_some() {
            crate::pool::NewPrefix::Hash
        } else {
            crate::pool::NewPrefix::Fewest
        },
        ..PrefixSettings::default()
    };
    let mut base_prefix = file.prefix.over(defaults);
    if let Err((field, reason)) = base_prefix.check("prefix") {
        p.add(field, reason);
        base_prefix = defaults;
    }
    let mut base_load = file.least_load.over(LoadWeights::default());
    if let Err((field, reason)) = check_weights("least_load", &base_load) {
        p.add(field, reason);
        base_load = LoadWeights::default();
    }
    let base_engine = engine_metrics(
        p,
        "engine_metrics",
        &file.engine_metrics,
        &EngineMetrics::default(),
    );
    let mut pools: Vec<PoolSpec> = Vec::with_capacity(file.pools.len());
    let mut names: Vec<(String, String)> = Vec::new();
    for (n, pool) in file.pools.iter().enumerate() {
        let at = format!("pools[{n}]");
        let name = PoolName::new(&pool.name)
            .map_err(|e| p.add(format!("{at}.name"), e.to_string()))
            .ok();
        claim_names(p, &at, pool, &mut names);
        let mut prefix = pool.prefix.over(base_prefix);
        if let Err((field, reason)) = prefix.check(&format!("{at}.prefix")) {
            p.add(field, reason);
            prefix = base_prefix;
        }
        let mut load = pool.least_load.over(base_load);
        if let Err((field, reason)) = check_weights(&format!("{at}.least_load"), &load) {
            p.add(field, reason);
            load = base_load;
        }
        let engine_metrics = engine_metrics(
            p,
            &format!("{at}.engine_metrics"),
            &pool.engine_metrics,
            &base_engine,
        );
        if let Some(path) = pool.health.path.as_ref().filter(|p| !p.starts_with('/')) {
            p.add(
                format!("{at}.health.path"),
                format!("{path:?} must start with /"),
            );
        }
        let autoscaling = pool.autoscaling.as_ref().and_then(|a| {
            autoscaling(
                p,
                &format!("{at}.autoscaling"),
                a,
                pool,
                file.health.path.as_deref(),
            )
            .map(std::sync::Arc::new)
        });
        let upstream_tls = pool
            .upstream_tls
            .as_ref()
            .map(|tls| upstream_tls(p, &at, tls));
        let affinity = pool.affinity.as_ref().and_then(|a| affinity(p, &at, a));
        let protocol = pool.protocol.unwrap_or_default();
        let grpc = grpc_settings(p, &at, protocol, pool.grpc.as_ref());
        let Some(name) = name else {
            continue;
        };
        pools.push(PoolSpec {
            autoscaling,
            upstream_tls,
            affinity,
            adapters: pool.adapters.clone(),
            protocol,
            grpc,
            name,
            aliases: pool.aliases.clone(),
            served_model_name: pool.served_model_name.clone(),
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
    pools
}

/// A pool's model names (its name, aliases and adapters): each valid, and
/// none claimed by an earlier field of `names`.
fn claim_names(
    p: &mut Problems,
    at: &str,
    pool: &super::file::FilePool,
    names: &mut Vec<(String, String)>,
) {
    if let Some(Err(e)) = pool
        .served_model_name
        .as_deref()
        .map(crate::pool::check_alias)
    {
        p.add(format!("{at}.served_model_name"), e.to_string());
    }
    fn listed<'a>(
        at: &'a str,
        list: &'static str,
        models: &'a [String],
    ) -> impl Iterator<Item = (String, String)> + 'a {
        models
            .iter()
            .enumerate()
            .map(move |(i, m)| (format!("{at}.{list}[{i}]"), m.clone()))
    }
    // The name itself is checked by `PoolName::new`.
    for (field, model) in
        listed(at, "aliases", &pool.aliases).chain(listed(at, "adapters", &pool.adapters))
    {
        if let Err(e) = crate::pool::check_alias(&model) {
            p.add(field, e.to_string());
        }
    }
    let fields = std::iter::once((format!("{at}.name"), pool.name.clone()))
        .chain(listed(at, "aliases", &pool.aliases))
        .chain(listed(at, "adapters", &pool.adapters));
    for (field, model) in fields {
        if let Some((first, _)) = names.iter().find(|(_, m)| *m == model) {
            p.add(
                field.clone(),
                format!("model name {model:?} is already used by {first}"),
            );
        }
        names.push((field, model));
    }
}

/// A pool's `grpc` table: only on a gRPC pool; services as
/// `package.Service`, methods as `/package.Service/Method` (or `/*`).
fn grpc_settings(
    p: &mut Problems,
    at: &str,
    protocol: crate::pool::PoolProtocol,
    file: Option<&super::file::FileGrpc>,
) -> crate::pool::GrpcSettings {
    let Some(file) = file else {
        return crate::pool::GrpcSettings::default();
    };
    if protocol != crate::pool::PoolProtocol::Grpc {
        p.add(
            format!("{at}.grpc"),
            "only a pool with protocol = \"grpc\" takes gRPC settings",
        );
    }
    let name = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
    };
    for (i, service) in file.services.iter().enumerate() {
        if !name(service) {
            p.add(
                format!("{at}.grpc.services[{i}]"),
                format!(
                    "{service:?} is not a service name such as \"inference.GRPCInferenceService\""
                ),
            );
        }
    }
    for (i, method) in file.idempotent_methods.iter().enumerate() {
        let parts: Vec<&str> = method.strip_prefix('/').unwrap_or("").split('/').collect();
        let ok = parts.len() == 2 && name(parts[0]) && (parts[1] == "*" || name(parts[1]));
        if !ok {
            p.add(
                format!("{at}.grpc.idempotent_methods[{i}]"),
                format!("{method:?} is not a method such as \"/inference.GRPCInferenceService/ModelMetadata\" (or \"/inference.GRPCInferenceService/*\")"),
            );
        }
    }
    crate::pool::GrpcSettings {
        services: file.services.clone(),
        idempotent_methods: file.idempotent_methods.clone(),
    }
}

/// `[pools.upstream_tls]`, checked under `at`.
fn upstream_tls(
    p: &mut Problems,
    at: &str,
    tls: &super::file::FileUpstreamTls,
) -> std::sync::Arc<crate::pool::UpstreamTls> {
    if tls.ca.as_deref().is_some_and(|c| c.trim().is_empty()) {
        p.add(
            format!("{at}.upstream_tls.ca"),
            "is empty: give a PEM file's path",
        );
    }
    if let Some(name) = &tls.server_name {
        if name.is_empty()
            || name.contains(['/', ' ', ':']) && name.parse::<std::net::IpAddr>().is_err()
        {
            p.add(
                format!("{at}.upstream_tls.server_name"),
                format!("{name:?} is not a DNS name or an IP address"),
            );
        }
    }
    if tls.verify == Some(false) && tls.ca.is_some() {
        p.add(
            format!("{at}.upstream_tls.verify"),
            "a CA is given but verify = false ignores it: remove one",
        );
    }
    std::sync::Arc::new(crate::pool::UpstreamTls {
        ca: tls.ca.as_ref().map(std::path::PathBuf::from),
        server_name: tls.server_name.clone(),
        verify: tls.verify.unwrap_or(true),
    })
}

/// A pool's `affinity`, checked under `at`; `None` when its key is bad
/// (recorded).
fn affinity(
    p: &mut Problems,
    at: &str,
    a: &super::file::FileAffinity,
) -> Option<crate::affinity::Affinity> {
    let key = a
        .key
        .parse::<crate::affinity::AffinityKey>()
        .map_err(|e| p.add(format!("{at}.affinity.key"), e))
        .ok();
    let epsilon = a.epsilon.unwrap_or(crate::affinity::DEFAULT_EPSILON);
    if let Err(e) = crate::affinity::Affinity::check_epsilon(epsilon) {
        p.add(format!("{at}.affinity.epsilon"), e);
    }
    Some(crate::affinity::Affinity { key: key?, epsilon })
}

/// `[engine_metrics]` fields over `base`, checked under `at`.
fn engine_metrics(
    p: &mut Problems,
    at: &str,
    m: &FileEngineMetrics,
    base: &EngineMetrics,
) -> EngineMetrics {
    let mut metrics = EngineMetrics {
        enabled: m.enabled.unwrap_or(base.enabled),
        path: m.path.clone().unwrap_or_else(|| base.path.clone()),
        interval: millis(
            p,
            &format!("{at}.interval_ms"),
            m.interval_ms,
            base.interval,
        ),
        flavor: m.flavor.unwrap_or(base.flavor),
    };
    if !metrics.path.starts_with('/') {
        p.add(format!("{at}.path"), "must start with /");
        metrics.path.clone_from(&base.path);
    }
    metrics
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
