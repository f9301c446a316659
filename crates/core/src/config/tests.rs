//! The config's rules: each field's problem named, every problem at once.

use super::*;

/// The fields an error names, in order.
fn fields(err: &ConfigError) -> Vec<&str> {
    assert!(matches!(err, ConfigError::Invalid(_)), "{err}");
    err.problems().iter().map(|p| p.field.as_str()).collect()
}

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
    let text = include_str!("../../../../deploy/inferlb.toml");
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
        assert_eq!(fields(&err), [field], "{text}");
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
        served_model_name = "meta-llama/Meta-Llama-3-8B-Instruct"
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
    assert_eq!(pool.served_name(), "meta-llama/Meta-Llama-3-8B-Instruct");
    assert_eq!(
        config
            .pools
            .iter()
            .find(|p| p.name.is_default())
            .unwrap()
            .served_name(),
        "default",
        "without served_model_name, the pool's name"
    );
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
fn session_affinity_is_read_per_pool() {
    let config = Config::from_toml(
        r#"
        [[pools]]
        name = "chat"
        affinity = { key = "header:X-Session-ID" }
        [[pools]]
        name = "assistant"
        affinity = { key = "json:user", epsilon = 0.5 }
        [[pools]]
        name = "plain"
        "#,
    )
    .unwrap();
    let affinity = |name: &str| {
        config
            .pools
            .iter()
            .find(|p| p.name.as_str() == name)
            .unwrap()
            .affinity
            .clone()
    };
    let chat = affinity("chat").unwrap();
    assert_eq!(
        chat.key,
        crate::affinity::AffinityKey::Header("x-session-id".into())
    );
    assert_eq!(chat.epsilon, crate::affinity::DEFAULT_EPSILON);
    let assistant = affinity("assistant").unwrap();
    assert_eq!(
        assistant.key,
        crate::affinity::AffinityKey::Json("user".into())
    );
    assert_eq!(assistant.epsilon, 0.5);
    assert!(affinity("plain").is_none());
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
            "[[pools]]\nname = \"a\"\nserved_model_name = \"\"",
            "pools[0].served_model_name",
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
        (
            "[[pools]]\nname = \"a\"\naffinity = { key = \"session\" }",
            "pools[0].affinity.key",
        ),
        (
            "[[pools]]\nname = \"a\"\n[[pools]]\nname = \"b\"\nadapters = [\"a\"]",
            "pools[1].adapters[0]",
        ),
        (
            "[[pools]]\nname = \"a\"\nadapters = [\"x y\"]",
            "pools[0].adapters[0]",
        ),
        (
            "[[pools]]\nname = \"a\"\naffinity = { key = \"header:X-Session-ID\", epsilon = 0 }",
            "pools[0].affinity.epsilon",
        ),
        ("[least_load]\nqueue = -1.0", "least_load.queue"),
    ];
    for (text, field) in cases {
        let err = Config::from_toml(text).unwrap_err();
        assert_eq!(fields(&err), [field], "{text}");
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
        let err = Config::from_toml(text).unwrap_err();
        assert_eq!(fields(&err), [field], "{text}");
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

#[test]
fn every_problem_in_the_file_is_reported_at_once() {
    let text = r#"
listen = "nowhere"
workers = 5000
[timeouts]
upstream_connect_timeout_ms = 0
body_read_timeout_ms = 0
[health]
path = "health"
[[replicas]]
address = "127.0.0.1:0"
[[pools]]
name = "bad name"
[[pools]]
name = "auto"
[pools.autoscaling]
provider = "exec"
command = ["serve"]
max = 5
ports = "20000-20001"
target_in_flight = 0
"#;
    let err = Config::from_toml(text).unwrap_err();
    assert_eq!(
        fields(&err),
        [
            "listen",
            "workers",
            "timeouts.upstream_connect_timeout_ms",
            "timeouts.body_read_timeout_ms",
            "health.path",
            "replicas[0].address",
            "pools[0].name",
            "pools[1].autoscaling.target_in_flight",
            "pools[1].autoscaling.ports",
        ]
    );
    let shown = err.to_string();
    assert!(shown.starts_with("9 problems:"), "{shown}");
    assert!(
        shown.contains("invalid value for `timeouts.upstream_connect_timeout_ms`: must be above 0"),
        "{shown}"
    );
}

#[test]
fn checking_resolves_no_host_name() {
    // A name that cannot resolve: `parse` accepts it (no DNS), `resolve`
    // names the field.
    let text = "[[replicas]]\naddress = \"no-such-host.invalid:8000\"\n";
    let mut config = Config::parse(text).unwrap();
    assert_eq!(config.replicas.len(), 1);
    assert!(config.replicas[0].addr.ip().is_unspecified());
    let err = config.resolve().unwrap_err();
    assert_eq!(fields(&err), ["replicas[0].address"]);
    // An IP literal needs no resolution, and names that resolve to one
    // address are refused at resolution.
    let text = "[[replicas]]\naddress = \"localhost:8000\"\nid = \"a\"\n[[replicas]]\naddress = \"127.0.0.1:8000\"\nid = \"b\"\n";
    let mut config = Config::parse(text).unwrap();
    assert_eq!(config.replicas[1].addr, "127.0.0.1:8000".parse().unwrap());
    if config.resolve().is_ok() {
        // `localhost` resolved to ::1 first on this host: no clash.
        assert_ne!(config.replicas[0].addr, config.replicas[1].addr);
    }
}

#[test]
fn autoscaling_bounds_follow_the_runtime_rules() {
    let pool = |extra: &str| {
        format!("[[pools]]\nname = \"m\"\n[pools.autoscaling]\nprovider = \"exec\"\ncommand = [\"x\"]\n{extra}")
    };
    for (extra, field) in [
        ("max = 1001", "pools[0].autoscaling.max"),
        ("max = 2\nmin = 3", "pools[0].autoscaling.min"),
        (
            "max = 2\ntarget_in_flight = 1e9",
            "pools[0].autoscaling.target_in_flight",
        ),
        ("min = 1", "pools[0].autoscaling.max"),
    ] {
        let err = Config::from_toml(&pool(extra)).unwrap_err();
        assert_eq!(fields(&err), [field], "{extra}");
    }
    assert!(Config::from_toml(&pool("max = 4\ntarget_in_flight = 0.5")).is_ok());
}

#[test]
fn a_bad_routing_value_names_the_valid_rules() {
    for text in [
        "routing = \"fastest\"",
        "[routing]\nrule = \"fastest\"",
        "[[pools]]\nname = \"m\"\nrouting = \"fastest\"",
    ] {
        let err = Config::from_toml(text).unwrap_err().to_string();
        assert!(
            err.contains("round_robin")
                && err.contains("least_outstanding")
                && err.contains("prefix"),
            "{text}: {err}"
        );
        assert!(!err.contains("untagged"), "{text}: {err}");
    }
    assert_eq!(
        Config::from_toml("routing = \"p2c\"").unwrap().routing,
        Routing::P2c
    );
    let table = Config::from_toml("[routing]\nrule = \"prefix\"\nmodel_header = \"X-M\"").unwrap();
    assert_eq!(table.routing, Routing::Prefix);
    assert_eq!(table.proxy.model.header, "x-m");
}

#[test]
fn the_health_serve_path_is_a_path() {
    let config = Config::from_toml("[health]\nserve_path = \"/healthz\"\n").unwrap();
    assert_eq!(config.proxy.health_path.as_deref(), Some("/healthz"));
    for bad in ["healthz", "/h?x=1", "/a b"] {
        let err = Config::from_toml(&format!("[health]\nserve_path = \"{bad}\"\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("health.serve_path"), "{bad}: {err}");
    }
}

#[test]
fn cors_is_checked_field_by_field() {
    let config = Config::from_toml(
        "[cors]\nallowed_origins = [\"https://UI.example.com\"]\nallowed_methods = [\"post\"]",
    )
    .unwrap();
    let cors = config.proxy.cors.unwrap();
    assert_eq!(cors.origins, ["https://ui.example.com"]);
    assert!(cors.allows_origin(b"https://ui.example.com"));
    assert!(!cors.allows_origin(b"https://ui.example.com.evil"));
    assert_eq!(cors.methods, ["POST"]);
    assert!(cors.any_header, "default: the headers a preflight asks for");
    assert_eq!(cors.max_age_s, 600);
    assert!(Config::from_toml("").unwrap().proxy.cors.is_none());
    // Every problem at once, each with its field.
    let err = Config::from_toml(
        "[cors]\nallowed_origins = [\"*\", \"ui.example.com\", \"https://a/b\"]\nallow_credentials = true\nallowed_headers = [\"bad header\"]",
    )
    .unwrap_err()
    .to_string();
    for field in [
        "cors.allowed_origins[1]",
        "cors.allowed_origins[2]",
        "cors.allow_credentials",
        "cors.allowed_headers[0]",
    ] {
        assert!(err.contains(field), "{field}: {err}");
    }
    let err = Config::from_toml("[cors]\n").unwrap_err().to_string();
    assert!(err.contains("cors.allowed_origins"), "{err}");
}

#[test]
fn listeners_are_read_and_checked() {
    let config = Config::from_toml(
        "[[listeners]]\naddress = \"0.0.0.0:8080\"\n[[listeners]]\naddress = \"[::]:8081\"\n",
    )
    .unwrap();
    assert_eq!(config.proxy.listen().to_string(), "0.0.0.0:8080");
    assert_eq!(config.proxy.listeners.len(), 2);
    assert_eq!(config.proxy.listeners[1].address.to_string(), "[::]:8081");
    assert!(config
        .proxy
        .listeners
        .iter()
        .all(|l| l.tls.is_none() && l.allows_h2()));
    // Every problem at once, with its field.
    let err = Config::from_toml(
        "listen = \"0.0.0.0:1\"\n[[listeners]]\naddress = \"nope\"\n[[listeners]]\naddress = \"0.0.0.0:2\"\n[[listeners]]\naddress = \"0.0.0.0:2\"\n",
    )
    .unwrap_err()
    .to_string();
    for field in ["listen", "listeners[0].address", "listeners[2].address"] {
        assert!(err.contains(field), "{field}: {err}");
    }
}

#[test]
fn tls_listeners_and_http2_are_read_and_checked() {
    let config = Config::from_toml(
        r#"
[[listeners]]
address = "0.0.0.0:443"
tls = { certificates = [{ cert = "/etc/inferlb/api.pem", key = "/etc/inferlb/api.key" },
                        { cert = "/etc/inferlb/other.pem", key = "/etc/inferlb/other.key" }],
        unknown_server_name = "refuse" }
alpn = ["http/1.1"]
client_ca = "/etc/inferlb/clients.pem"
[[listeners]]
address = "0.0.0.0:8080"
[http2]
max_concurrent_streams = 64
[timeouts]
tls_handshake_timeout_ms = 5000
"#,
    )
    .unwrap();
    let tls = config.proxy.listeners[0].tls.as_ref().unwrap();
    assert_eq!(tls.certificates.len(), 2);
    assert_eq!(
        tls.certificates[1].key.to_str(),
        Some("/etc/inferlb/other.key")
    );
    assert_eq!(
        tls.client_ca.as_deref().and_then(|p| p.to_str()),
        Some("/etc/inferlb/clients.pem")
    );
    assert!(tls.refuse_unknown_server_name);
    assert!(!config.proxy.listeners[0].allows_h2());
    assert!(config.proxy.listeners[1].allows_h2());
    assert_eq!(config.proxy.http2.max_concurrent_streams, 64);
    // The header list defaults to the HTTP/1.1 head limit.
    assert_eq!(config.proxy.http2.max_header_list_size, 16 * 1024);
    assert_eq!(config.proxy.timeouts.tls_handshake.as_millis(), 5000);

    // Every problem at once, with its field.
    let err = Config::from_toml(
        r#"
[[listeners]]
address = "0.0.0.0:443"
tls = { certificates = [], unknown_server_name = "maybe" }
alpn = ["h3", "h2", "h2"]
[[listeners]]
address = "0.0.0.0:444"
tls = { certificates = [{ cert = "", key = "/k" }], client_ca = "/a" }
client_ca = "/b"
[[listeners]]
address = "0.0.0.0:8080"
client_ca = "/c"
[http2]
max_concurrent_streams = 0
stream_window_bytes = 100
"#,
    )
    .unwrap_err()
    .to_string();
    for field in [
        "listeners[0].tls.certificates",
        "listeners[0].tls.unknown_server_name",
        "listeners[0].alpn[0]",
        "listeners[0].alpn[2]",
        "listeners[1].tls.certificates[0].cert",
        "listeners[1].client_ca",
        "listeners[2].client_ca",
        "http2.max_concurrent_streams",
        "http2.stream_window_bytes",
    ] {
        assert!(err.contains(field), "{field}: {err}");
    }
}

#[test]
fn cluster_is_read_with_defaults_and_every_problem_named() {
    let config = Config::from_toml(
        "[cluster]\netcd = [\"http://10.0.0.1:2379\", \"http://10.0.0.2:2379\"]\nname = \"prod\"\ninstance = \"lb-1\"\n",
    )
    .unwrap();
    let cluster = config.cluster.unwrap();
    assert_eq!(cluster.prefix(), "/inferlb/prod/");
    assert_eq!(cluster.instance, "lb-1");
    assert_eq!(cluster.lease_ttl, DEFAULT_LEASE_TTL);
    assert!(cluster.tls.is_none());
    // The instance defaults to the host name.
    let config = Config::from_toml("[cluster]\netcd = [\"http://127.0.0.1:2379\"]\n").unwrap();
    assert_eq!(config.cluster.unwrap().instance, host_name());

    let err = Config::from_toml(
        "[admin]\nstate_file = \"/var/lib/inferlb/state.json\"\n\
         [cluster]\netcd = [\"10.0.0.1:2379\", \"https://10.0.0.2:2379\"]\nname = \"a/b\"\n\
         instance = \"\"\nlease_ttl_s = 1\n",
    )
    .unwrap_err();
    assert_eq!(
        fields(&err),
        [
            "cluster.etcd[0]",
            "cluster.etcd[1]",
            "cluster.name",
            "cluster.instance",
            "cluster.lease_ttl_s",
            "admin.state_file"
        ],
        "{err}"
    );
    let err =
        Config::from_toml("[cluster]\netcd = []\ntls = { ca = \"/ca.pem\", cert = \"/c.pem\" }\n")
            .unwrap_err();
    assert_eq!(fields(&err), ["cluster.etcd", "cluster.tls"], "{err}");
}

#[test]
fn upgrades_default_to_websocket_and_name_their_bad_entries() {
    let config = Config::from_toml("").unwrap();
    assert_eq!(config.proxy.upgrades, ["websocket"]);
    assert_eq!(config.proxy.timeouts.tunnel_idle, Duration::from_secs(3600));
    let config =
        Config::from_toml("upgrades = []\n[timeouts]\ntunnel_idle_timeout_ms = 5000").unwrap();
    assert!(config.proxy.upgrades.is_empty());
    assert_eq!(config.proxy.timeouts.tunnel_idle, Duration::from_secs(5));
    let err = Config::from_toml("upgrades = [\"WebSocket\", \"web socket\", \"h2c\"]")
        .unwrap_err()
        .to_string();
    assert!(err.contains("upgrades[1]"), "{err}");
    assert!(
        err.contains("upgrades[2]") && err.contains("prior knowledge"),
        "{err}"
    );
    assert!(!err.contains("upgrades[0]"), "{err}");
}
