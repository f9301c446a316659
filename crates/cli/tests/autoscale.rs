//! `inferlb autoscale` against moto_server (started by `cargo xtask test`):
//! exit codes, idempotence, dry runs and JSON output through the binary.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Output};

fn moto_url() -> String {
    std::env::var("INFERLB_MOTO_URL").unwrap_or_else(|_| {
        panic!("INFERLB_MOTO_URL is not set: run these tests with `cargo xtask test`, which starts moto_server")
    })
}

fn reset(url: &str) {
    let addr = url.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(stream, "POST /moto-api/reset HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    stream.read_to_string(&mut out).unwrap();
    assert!(out.contains(" 200 "), "{out}");
}

fn autoscale(url: &str, args: &[&str]) -> Output {
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/autoscaling.example.toml"
    );
    Command::new(env!("CARGO_BIN_EXE_inferlb"))
        .arg("autoscale")
        .args(args)
        .args([
            "--file",
            example,
            "--endpoint-url",
            url,
            "--region",
            "us-east-1",
        ])
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env_remove("AWS_PROFILE")
        .output()
        .unwrap()
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn plan_apply_destroy_through_the_binary() {
    let url = moto_url();
    reset(&url);

    let plan = autoscale(&url, &["plan"]);
    assert_eq!(
        plan.status.code(),
        Some(2),
        "changes pending: {}",
        text(&plan)
    );
    assert!(
        text(&plan).contains("Plan: 12 to create"),
        "{}",
        text(&plan)
    );

    let dry = autoscale(&url, &["apply", "--dry-run"]);
    assert_eq!(dry.status.code(), Some(0));
    assert!(text(&dry).contains("Dry run"));
    assert_eq!(
        autoscale(&url, &["plan"]).status.code(),
        Some(2),
        "a dry run changed something"
    );

    let apply = autoscale(&url, &["apply", "--output", "json"]);
    assert_eq!(apply.status.code(), Some(0), "{}", text(&apply));
    let outcome: serde_json::Value = serde_json::from_slice(&apply.stdout).unwrap();
    assert_eq!(outcome["calls"].as_array().unwrap().len(), 12);

    let plan = autoscale(&url, &["plan"]);
    assert_eq!(plan.status.code(), Some(0), "{}", text(&plan));
    let again = autoscale(&url, &["apply"]);
    assert!(
        text(&again).contains("no write call was made"),
        "{}",
        text(&again)
    );

    let status = autoscale(&url, &["status", "--output", "json"]);
    assert_eq!(status.status.code(), Some(0));
    let targets: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert!(targets
        .as_array()
        .unwrap()
        .iter()
        .all(|t| t["registered"] == true));

    let destroy = autoscale(&url, &["destroy"]);
    assert_eq!(destroy.status.code(), Some(0), "{}", text(&destroy));
    assert_eq!(
        autoscale(&url, &["plan"]).status.code(),
        Some(2),
        "destroy left something behind"
    );
}

#[test]
fn errors_exit_1_with_the_reason() {
    let url = moto_url();
    let dir = inferlb_testkit::fresh_dir("autoscale");
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        "[[targets]]\nresource_id = \"endpoint/x\"\nmin_capacity = 3\nmax_capacity = 1\n",
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_inferlb"))
        .args(["autoscale", "plan", "--endpoint-url", &url, "--file"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let message = text(&output);
    assert!(
        message.contains("targets[0].resource_id") && message.contains("targets[0].min_capacity"),
        "{message}"
    );
}

#[test]
fn hold_pauses_run_until_released() {
    let dir = inferlb_testkit::fresh_dir("hold");
    let file = dir.join("autoscaling.toml");
    std::fs::write(&file, "").unwrap();
    let hold = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_inferlb"))
            .args(["autoscale", "hold", "--file"])
            .arg(&file)
            .args(args)
            .output()
            .unwrap()
    };
    let held = hold(&["--for", "30m"]);
    assert_eq!(held.status.code(), Some(0), "{}", text(&held));
    let until = inferlb_autoscaler::read_hold(&inferlb_autoscaler::hold_path(&file))
        .expect("a hold in force");
    let left = until
        .duration_since(std::time::SystemTime::now())
        .unwrap()
        .as_secs();
    assert!((1700..=1800).contains(&left), "{left}");
    let released = hold(&["--release"]);
    assert_eq!(released.status.code(), Some(0));
    assert!(inferlb_autoscaler::read_hold(&inferlb_autoscaler::hold_path(&file)).is_none());
    assert!(text(&hold(&["--release"])).contains("no hold"));
}

/// `simulate` runs on every shipped trace and prints the table, the JSON
/// (one row per minute) and the SVG, with no AWS call and no AWS settings.
#[test]
fn simulate_runs_on_the_shipped_traces() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let file = format!("{root}/deploy/autoscaling.example.toml");
    let dir = inferlb_testkit::fresh_dir("simulate");
    for (trace, target) in [
        ("daily", "endpoint/chat-llm/variant/AllTraffic"),
        ("spike", "endpoint/chat-llm/variant/AllTraffic"),
        ("ramp-to-zero", "inference-component/chat-llm-ic"),
    ] {
        let trace_path = format!("{root}/deploy/traces/{trace}.csv");
        let svg = dir.join(format!("{trace}.svg"));
        let run = |output: &str| {
            Command::new(env!("CARGO_BIN_EXE_inferlb"))
                .args([
                    "autoscale",
                    "simulate",
                    "--file",
                    &file,
                    "--trace",
                    &trace_path,
                ])
                .args(["--target", target, "--output", output])
                .arg("--svg")
                .arg(&svg)
                .env_remove("AWS_REGION")
                .env("AWS_EC2_METADATA_DISABLED", "true")
                .output()
                .unwrap()
        };
        let table = run("table");
        assert_eq!(table.status.code(), Some(0), "{trace}: {}", text(&table));
        assert!(text(&table).contains("scale-outs"), "{}", text(&table));
        let json = run("json");
        assert_eq!(json.status.code(), Some(0), "{trace}: {}", text(&json));
        let sim: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
        let rows = sim["timeline"].as_array().unwrap();
        assert!(rows.len() > 60, "{trace}: one row per minute");
        assert!(sim["summary"]["peak"].as_i64().unwrap() >= 1);
        let drawn = std::fs::read_to_string(&svg).unwrap();
        assert!(
            drawn.starts_with("<svg") && drawn.contains("unserved"),
            "{trace}"
        );
        // Which line is on which axis, the axes' units, and served
        // capacity on the load axis.
        for text in [
            "load (left axis)",
            "instances in service (right axis)",
            "served: in service x capacity/instance (left)",
            "capacity (instances)",
            "minutes from the trace",
        ] {
            assert!(drawn.contains(text), "{trace}: {text}");
        }
    }
    // The scale-to-zero trace goes to zero copies and comes back.
    let json = Command::new(env!("CARGO_BIN_EXE_inferlb"))
        .args(["autoscale", "simulate", "--file", &file])
        .args(["--trace", &format!("{root}/deploy/traces/ramp-to-zero.csv")])
        .args([
            "--target",
            "inference-component/chat-llm-ic",
            "--output",
            "json",
        ])
        .output()
        .unwrap();
    let sim: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let desired: Vec<i64> = sim["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["desired"].as_i64().unwrap())
        .collect();
    let zero = desired
        .iter()
        .position(|&d| d == 0)
        .expect("scales to zero");
    assert!(desired[zero..].iter().any(|&d| d > 0), "and back");
    // The alarm flags and the modelling assumptions are taken and printed
    // with the run, readably.
    let slow = Command::new(env!("CARGO_BIN_EXE_inferlb"))
        .args(["autoscale", "simulate", "--file", &file])
        .args(["--trace", &format!("{root}/deploy/traces/spike.csv")])
        .args(["--target", "inference-component/chat-llm-ic"])
        .args(["--scale-out-period", "1m", "--scale-in-datapoints", "5"])
        .args(["--scale-in-step", "1", "--busy-while-provisioning", "false"])
        .output()
        .unwrap();
    assert_eq!(slow.status.code(), Some(0), "{}", text(&slow));
    let printed = text(&slow);
    for expected in [
        "of 60 s above target",
        "scale in after 5 datapoints",
        "assumptions",
        "scale-in step: at most 1 per scale-in",
        "while capacity provisions: no",
        "scale-in waits for a scale-out cooldown: no",
    ] {
        assert!(printed.contains(expected), "{expected:?} in {printed}");
    }
    let json = Command::new(env!("CARGO_BIN_EXE_inferlb"))
        .args(["autoscale", "simulate", "--file", &file])
        .args(["--trace", &format!("{root}/deploy/traces/spike.csv")])
        .args(["--scale-in-step", "2", "--output", "json"])
        .output()
        .unwrap();
    let sim: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(sim["assumptions"]["scale_in_step"], 2);
    assert_eq!(sim["assumptions"]["busy_while_provisioning"], true);
    // Piped into a reader that stops early: a quiet end, no panic.
    let piped = Command::new("bash")
        .args(["-c", &format!(
            "set -o pipefail; {} autoscale simulate --file {file} --trace {root}/deploy/traces/daily.csv | head -1",
            env!("CARGO_BIN_EXE_inferlb")
        )])
        .output()
        .unwrap();
    assert!(piped.status.success(), "{}", text(&piped));
    assert!(!text(&piped).contains("panicked"), "{}", text(&piped));
    // A trace of seconds through a target with scheduled actions needs a
    // wall-clock start; with --start it replays, and says where it started.
    let relative = dir.join("relative.csv");
    std::fs::write(&relative, "time,invocations\n0,60\n3600,60\n").unwrap();
    let run = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_inferlb"))
            .args(["autoscale", "simulate", "--file", &file, "--trace"])
            .arg(&relative)
            .args(["--target", "endpoint/chat-llm/variant/AllTraffic"])
            .args(extra)
            .output()
            .unwrap()
    };
    let refused = run(&[]);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(text(&refused).contains("--start"), "{}", text(&refused));
    let started = run(&["--start", "2026-01-05T08:00:00Z"]);
    assert_eq!(started.status.code(), Some(0), "{}", text(&started));
    assert!(
        text(&started).contains("start: 2026-01-05T08:00:00Z"),
        "{}",
        text(&started)
    );
}

/// ListMetrics through moto's query API: the metric names in `namespace`.
fn listed_metrics(url: &str, namespace: &str) -> String {
    let addr = url.trim_start_matches("http://");
    let body = format!("Action=ListMetrics&Namespace={namespace}&Version=2010-08-01");
    let Ok(mut stream) = TcpStream::connect(addr) else {
        return String::new();
    };
    let _ = write!(
        stream,
        "POST / HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         Authorization: AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/monitoring/aws4_request, SignedHeaders=host, Signature=0\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut out = String::new();
    let _ = stream.read_to_string(&mut out);
    out
}

/// `inferlb serve` with `[autoscaling.publish]` puts its per-pool
/// concurrency into CloudWatch every interval (moto stands in; credentials
/// and endpoint through aws-config's environment).
#[test]
fn serve_publishes_pool_concurrency_to_cloudwatch() {
    use std::net::TcpListener;
    use std::time::{Duration, Instant};
    let url = moto_url();
    let namespace = format!("inferlb-e2e-{}", std::process::id());
    let replica = inferlb_testkit::FakeReplica::builder()
        .name("m1")
        .start()
        .unwrap();
    let free = || {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    };
    let (listen, admin) = (free(), free());
    let config = format!(
        "listen = \"{listen}\"\nworkers = 1\n[admin]\nlisten = \"{admin}\"\n\
         [[pools]]\nname = \"m\"\nreplicas = [{{ address = \"{}\" }}]\n\
         [autoscaling.publish]\nnamespace = \"{namespace}\"\ninterval_s = 10\n\
         dimensions = [{{ name = \"EndpointName\", value = \"e2e\" }}]\n",
        replica.addr()
    );
    let dir = inferlb_testkit::fresh_dir("publish");
    let path = dir.join("inferlb.toml");
    std::fs::write(&path, config).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_inferlb"))
        .args(["serve", "--config"])
        .arg(&path)
        .env("AWS_ENDPOINT_URL", &url)
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    assert!(inferlb_testkit::wait_for_port(
        listen,
        Duration::from_secs(15)
    ));
    let mut client = inferlb_testkit::RawClient::connect(listen).unwrap();
    for _ in 0..5 {
        client
            .send(b"GET / HTTP/1.1\r\nHost: t\r\nX-Model: m\r\n\r\n")
            .unwrap();
        assert_eq!(client.read_response().unwrap().status, 200);
    }
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut listed = String::new();
    while Instant::now() < deadline {
        listed = listed_metrics(&url, &namespace);
        if listed.contains("InFlightPerReplica") && listed.contains("Requests") {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let _ = child.kill();
    let _ = child.wait();
    for needle in [
        "InFlightPerReplica",
        "MaxInFlightPerReplica",
        "Requests",
        "Errors5xx",
        "QueuedRequests",
        "<Value>m</Value>",
        "EndpointName",
    ] {
        assert!(listed.contains(needle), "{needle} not published: {listed}");
    }
}

/// What reaching AWS failed on is one line: a refused connection names the
/// endpoint, missing credentials name where they were looked for, and with
/// `--endpoint-url` the instance metadata service is not tried.
#[test]
fn aws_errors_are_one_readable_line() {
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let url = format!("http://{closed}");
    let output = autoscale(&url, &["plan", "--max-attempts", "1"]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        stderr.contains(&format!("cannot connect to {url}: connection refused")),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(!stderr.contains("ConnectorError"), "{stderr}");

    let home = inferlb_testkit::fresh_dir("no-aws-home");
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/autoscaling.example.toml"
    );
    let output = Command::new(env!("CARGO_BIN_EXE_inferlb"))
        .args([
            "autoscale",
            "plan",
            "--max-attempts",
            "1",
            "--file",
            example,
        ])
        .args(["--endpoint-url", &url, "--region", "us-east-1"])
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_PROFILE")
        .env("HOME", &*home)
        .env_remove("AWS_CONFIG_FILE")
        .env_remove("AWS_SHARED_CREDENTIALS_FILE")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(stderr.contains("no AWS credentials found"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        !stderr.contains("Ec2InstanceMetadata") && !stderr.contains("IMDS"),
        "{stderr}"
    );
}
