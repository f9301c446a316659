//! The autoscaling sections: a pool's `[pools.autoscaling]` (local
//! autoscaling: provider, bounds, timing) and `[autoscaling.publish]`
//! (the proxy's concurrency, published to CloudWatch).

use std::time::Duration;

use super::file::{FileAutoscaling, FilePool, FilePoolAutoscaling};
use super::{millis, Problems};
use crate::scaling::{PoolAutoscaling, Provider, ScalingSettings, MAX_REPLICAS};

/// Publishing the proxy's concurrency to CloudWatch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub namespace: String,
    pub interval: Duration,
    pub region: Option<String>,
    /// `(name, value)` pairs added to every metric, after `Pool`.
    pub dimensions: Vec<(String, String)>,
}

/// `[pools.autoscaling]`, checked under `at`; `None` when a problem leaves
/// nothing to run (no provider, no max).
pub(super) fn autoscaling(
    p: &mut Problems,
    at: &str,
    a: &FilePoolAutoscaling,
    pool: &FilePool,
    health_path: Option<&str>,
) -> Option<PoolAutoscaling> {
    let field = |name: &str| format!("{at}.{name}");
    if !pool.replicas.is_empty() {
        p.add(
            at,
            "a pool that autoscales starts its own replicas: remove its `replicas`",
        );
    }
    let provider = scaling_provider(p, &field, a);
    let mut settings = PoolAutoscaling::new(provider.clone().unwrap_or(Provider::Exec {
        command: Vec::new(),
        env: Vec::new(),
    }));
    let max = a.max;
    if max.is_none() {
        p.add(field("max"), "required");
    }
    settings.min = a.min.unwrap_or(0);
    settings.max = max.unwrap_or(MAX_REPLICAS);
    if let Some(target) = a.target_in_flight {
        settings.target_in_flight = target;
    }
    if let Some(text) = &a.ports {
        match port_range(text) {
            Some(range) => settings.ports = range,
            None => p.add(
                field("ports"),
                format!("{text:?} is not a range like \"20000-20099\""),
            ),
        }
    }
    // The bounds and the target by the rules a runtime change follows too
    // (`PATCH /v1/pools/{name}/autoscaling`), each under its own field; a
    // `max` above the ports available is the `ports` field's problem here.
    if max.is_some() {
        let declared = ScalingSettings::declared(&settings);
        if let Err(problems) = declared.check(&settings) {
            for problem in problems {
                let name = if problem.field == "max" && problem.reason.contains("ports") {
                    "ports"
                } else {
                    problem.field
                };
                p.add(field(name), problem.reason);
            }
        }
    }
    scaling_timing(p, &field, a, &mut settings);
    if let Some(host) = a.host {
        settings.host = host;
    }
    settings.start_timeout = positive_seconds(
        p,
        field("start_timeout_s"),
        a.start_timeout_s,
        settings.start_timeout,
    );
    if let Some(s) = a.stop_grace_s {
        settings.stop_grace = Duration::from_secs(s);
    }
    match a.drain_timeout_s {
        Some(s) if s > 3600 => p.add(field("drain_timeout_s"), "must be at most 3600"),
        Some(s) => settings.drain_timeout = Duration::from_secs(s),
        None => {}
    }
    // Its own `health_path`, else the pool's, else `[health]`'s: only its
    // own is its field's problem (the others are reported where they are).
    let inherited = pool
        .health
        .path
        .clone()
        .or_else(|| health_path.map(str::to_owned));
    match (&a.health_path, inherited) {
        (Some(path), _) if !path.starts_with('/') => {
            p.add(field("health_path"), format!("{path:?} must start with /"))
        }
        (Some(path), _) => settings.health_path.clone_from(path),
        (None, Some(path)) if path.starts_with('/') => settings.health_path = path,
        (None, _) => {}
    }
    settings.queue_timeout = millis(
        p,
        &field("queue_timeout_ms"),
        a.queue_timeout_ms,
        settings.queue_timeout,
    );
    if let Some(n) = a.max_queued {
        settings.max_queued = n;
    }
    match a.max_in_flight_per_replica {
        Some(0) => p.add(
            field("max_in_flight_per_replica"),
            "must be above 0 (leave it out for no limit)",
        ),
        n => settings.max_in_flight_per_replica = n,
    }
    (provider.is_some() && max.is_some()).then_some(settings)
}

/// Whole seconds above 0, or `default` when left out.
fn positive_seconds(
    p: &mut Problems,
    field: String,
    value: Option<u64>,
    default: Duration,
) -> Duration {
    match value {
        None => default,
        Some(0) => {
            p.add(field, "must be above 0");
            default
        }
        Some(s) => Duration::from_secs(s),
    }
}

/// The cooldowns, the idle time before zero and the alarm datapoints of
/// `[pools.autoscaling]`, over `settings`' defaults.
fn scaling_timing(
    p: &mut Problems,
    field: &dyn Fn(&str) -> String,
    a: &FilePoolAutoscaling,
    settings: &mut PoolAutoscaling,
) {
    if let Some(s) = a.scale_out_cooldown_s {
        settings.scale_out_cooldown = Duration::from_secs(s);
    }
    if let Some(s) = a.scale_in_cooldown_s {
        settings.scale_in_cooldown = Duration::from_secs(s);
    }
    settings.idle_to_zero = positive_seconds(
        p,
        field("idle_to_zero_s"),
        a.idle_to_zero_s,
        settings.idle_to_zero,
    );
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
            Some(0) => p.add(field(name), "must be above 0"),
            Some(n) => *into = n,
            None => {}
        }
    }
    settings.scale_out_period = positive_seconds(
        p,
        field("scale_out_period_s"),
        a.scale_out_period_s,
        settings.scale_out_period,
    );
    settings.scale_in_period = positive_seconds(
        p,
        field("scale_in_period_s"),
        a.scale_in_period_s,
        settings.scale_in_period,
    );
}

/// The replica provider of `[pools.autoscaling]`: `exec` with its command,
/// or `systemd` with its template unit and port.
fn scaling_provider(
    p: &mut Problems,
    field: &dyn Fn(&str) -> String,
    a: &FilePoolAutoscaling,
) -> Option<Provider> {
    match a.provider.as_deref() {
        Some("exec") => {
            let command = a.command.clone().unwrap_or_default();
            if command.first().is_none_or(|c| c.is_empty()) {
                p.add(
                    field("command"),
                    "the exec provider needs a command, e.g. [\"/opt/models/serve\", \"--port\", \"{port}\"]",
                );
                return None;
            }
            Some(Provider::Exec {
                command,
                env: a.env.clone().into_iter().collect(),
            })
        }
        Some("systemd") => {
            let unit = a.unit.clone().unwrap_or_default();
            let unit_ok = unit.contains("{index}") && unit.contains('@');
            if !unit_ok {
                p.add(
                    field("unit"),
                    "the systemd provider needs a template unit with {index}, e.g. \"model@{index}.service\"",
                );
            }
            let text = a.port.as_deref().unwrap_or("");
            let base = port_base(text);
            if base.is_none() {
                p.add(
                    field("port"),
                    format!("{text:?} is not of the form \"{{20000 + index}}\""),
                );
            }
            Some(Provider::Systemd {
                unit,
                port_base: base?,
            })
            .filter(|_| unit_ok)
        }
        Some(other) => {
            p.add(
                field("provider"),
                format!("{other:?} is not a provider: use \"exec\" or \"systemd\""),
            );
            None
        }
        None => {
            p.add(field("provider"), "required: \"exec\" or \"systemd\"");
            None
        }
    }
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

/// `[autoscaling.publish]`; `None` when it is absent (or invalid).
pub(super) fn publish(p: &mut Problems, a: &FileAutoscaling) -> Option<Publish> {
    let publish = a.publish.as_ref()?;
    let before = p.len();
    let namespace = publish
        .namespace
        .clone()
        .unwrap_or_else(|| "inferlb".to_owned());
    if namespace.is_empty() || namespace.len() > 255 || namespace.starts_with("AWS/") {
        p.add(
            "autoscaling.publish.namespace",
            "1 to 255 characters, and not an AWS/ namespace",
        );
    }
    let interval = match publish.interval_s.unwrap_or(60) {
        s @ (10 | 60) => Duration::from_secs(s),
        other => {
            p.add(
                "autoscaling.publish.interval_s",
                format!("{other} is not 10 (high-resolution metrics) or 60"),
            );
            Duration::from_secs(60)
        }
    };
    // CloudWatch allows 30 dimensions per metric; the pool is one.
    if publish.dimensions.len() > 29 {
        p.add(
            "autoscaling.publish.dimensions",
            "at most 29 (the pool is the 30th)",
        );
    }
    for (i, d) in publish.dimensions.iter().enumerate() {
        if d.name.is_empty() || d.value.is_empty() || d.name == "Pool" {
            p.add(
                format!("autoscaling.publish.dimensions[{i}]"),
                "name and value must not be empty, and Pool is inferlb's own",
            );
        }
    }
    (p.len() == before).then(|| Publish {
        namespace,
        interval,
        region: publish.region.clone(),
        dimensions: publish
            .dimensions
            .iter()
            .map(|d| (d.name.clone(), d.value.clone()))
            .collect(),
    })
}
