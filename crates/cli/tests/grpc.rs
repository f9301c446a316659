//! A gRPC pool through the real binary: `inferlb fake-replica --protocol
//! grpc` as a replica process, `protocol = "grpc"` in the config, the pool
//! in `GET /v1/pools`, and health checks over `grpc.health.v1` taking a
//! replica that says NOT_SERVING out of rotation and back; and a gRPC pool
//! scaling from zero, its first call held until the started replica's
//! gRPC health check passes. The calls are made with `grpcio` (installed by
//! `cargo xtask test`, which sets `INFERLB_PYTHON`).

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use inferlb_testkit::{
    eventually, free_addr, fresh_dir, grpc_replica, wait_for_port, GrpcReplicaConfig,
};

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Makes `count` ModelInfer calls; prints the replica of each, one per line.
const CALLS: &str = r#"
import sys, grpc
from tritonclient.grpc import service_pb2 as pb, service_pb2_grpc as pb_grpc
stub = pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(sys.argv[1]))
for _ in range(int(sys.argv[2])):
    reply, call = stub.ModelInfer.with_call(pb.ModelInferRequest(model_name="m1"), timeout=10)
    print(dict(call.initial_metadata())["x-replica"])
"#;

fn calls(proxy: SocketAddr, count: usize) -> Vec<String> {
    let python = std::env::var("INFERLB_PYTHON").unwrap_or_else(|_| {
        panic!("INFERLB_PYTHON is not set: run these tests with `cargo xtask test`, which installs the Python clients")
    });
    let output = Command::new(python)
        .args(["-c", CALLS, &proxy.to_string(), &count.to_string()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout.lines().map(str::to_owned).collect()
}

fn get(admin: SocketAddr, path: &str) -> serde_json::Value {
    let mut client = inferlb_testkit::RawClient::connect(admin).unwrap();
    // The admin API answers its own host names only (421 otherwise).
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    client.send(request.as_bytes()).unwrap();
    let response = client.read_response().unwrap();
    assert_eq!(response.status, 200, "{path}");
    serde_json::from_slice(&response.body).unwrap()
}

/// A replica's `state`: `active`, `unhealthy`, ...
fn state_of(admin: SocketAddr, id: &str) -> String {
    let replicas = get(admin, "/v1/replicas");
    replicas
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == id)
        .map(|r| r["state"].as_str().unwrap_or("").to_owned())
        .unwrap_or_default()
}

#[test]
fn a_grpc_pool_is_served_and_health_checked_over_grpc() {
    let dir = fresh_dir("cli-grpc");
    // One replica as the binary's own fake, one in this process (its
    // health can be switched).
    let g1_addr = free_addr();
    let _g1 = Killed(
        Command::new(env!("CARGO_BIN_EXE_inferlb"))
            .args([
                "fake-replica",
                "--protocol",
                "grpc",
                "--model",
                "m1",
                "--name",
                "g1",
            ])
            .arg("--listen")
            .arg(g1_addr.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    assert!(wait_for_port(g1_addr, Duration::from_secs(10)));
    let g2 = grpc_replica::start(
        GrpcReplicaConfig {
            models: vec!["m1".into()],
            name: "g2".into(),
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap();
    let (listen, admin) = (free_addr(), free_addr());
    let config = dir.join("inferlb.toml");
    std::fs::write(
        &config,
        format!(
            r#"
listen = "{listen}"
workers = 1
[admin]
listen = "{admin}"
[health]
interval_ms = 100
timeout_ms = 90
[[pools]]
name = "m1"
protocol = "grpc"
grpc = {{ services = ["inference.GRPCInferenceService"] }}
replicas = [{{ id = "g1", address = "{g1_addr}" }}, {{ id = "g2", address = "{}" }}]
"#,
            g2.addr()
        ),
    )
    .unwrap();
    let _server = serve(&config, &dir, &[listen, admin]);
    let pool = get(admin, "/v1/pools/m1");
    assert_eq!(pool["protocol"], "grpc", "{pool}");
    assert_eq!(pool["grpc_services"][0], "inference.GRPCInferenceService");
    assert!(eventually(Duration::from_secs(10), || state_of(
        admin, "g1"
    ) == "active"
        && state_of(admin, "g2") == "active"));
    let mut seen = calls(listen, 4);
    seen.sort();
    seen.dedup();
    assert_eq!(seen, ["g1", "g2"]);
    // g2 says NOT_SERVING: it leaves the rotation, and comes back.
    g2.stats().set_serving(false);
    assert!(eventually(Duration::from_secs(10), || state_of(
        admin, "g2"
    ) == "unhealthy"));
    assert!(calls(listen, 4).iter().all(|r| r == "g1"));
    g2.stats().set_serving(true);
    assert!(eventually(Duration::from_secs(10), || state_of(
        admin, "g2"
    ) == "active"));
}

/// `inferlb serve --config config` (its log in `dir/serve.log`), once it
/// listens on every address of `ports`.
fn serve(config: &std::path::Path, dir: &std::path::Path, ports: &[SocketAddr]) -> Killed {
    let server = Killed(
        Command::new(env!("CARGO_BIN_EXE_inferlb"))
            .env_remove("INFERLB_CONFIG")
            .env_remove("INFERLB_ADMIN_TOKEN")
            .args(["serve", "--config"])
            .arg(config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("serve.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    for &port in ports {
        assert!(wait_for_port(port, Duration::from_secs(10)), "{port}");
    }
    server
}

/// Pids of live processes whose command line holds `mark`.
fn processes_with(mark: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(mark) {
            pids.push(pid);
        }
    }
    pids
}

/// Kills the replica processes a test's pool started.
struct Marked(String);

impl Drop for Marked {
    fn drop(&mut self) {
        for pid in processes_with(&self.0) {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    }
}

#[test]
fn a_grpc_pool_scales_from_zero_without_failing_a_call() {
    let dir = fresh_dir("cli-grpc-zero");
    let mark = format!("gzero{}r", std::process::id());
    let base = 21_000 + (std::process::id() % 300) as u16 * 10;
    let (listen, admin) = (free_addr(), free_addr());
    let command = format!(
        r#"["{}", "fake-replica", "--protocol", "grpc", "--listen", "{{host}}:{{port}}", "--model", "{{pool}}", "--name", "{mark}-{{index}}"]"#,
        env!("CARGO_BIN_EXE_inferlb")
    );
    let config = dir.join("inferlb.toml");
    std::fs::write(
        &config,
        format!(
            r#"
listen = "{listen}"
workers = 1
[admin]
listen = "{admin}"
[[pools]]
name = "m1"
protocol = "grpc"
grpc = {{ services = ["inference.GRPCInferenceService"] }}
[pools.autoscaling]
min = 0
max = 1
provider = "exec"
command = {command}
ports = "{base}-{}"
start_timeout_s = 30
queue_timeout_ms = 30000
"#,
            base + 4
        ),
    )
    .unwrap();
    let _replicas = Marked(mark.clone());
    let _server = serve(&config, &dir, &[listen, admin]);
    assert!(
        processes_with(&format!("{mark}-")).is_empty(),
        "a replica ran before any call"
    );
    // The first call finds no replica: it is held while one starts, and
    // answered by it.
    assert_eq!(calls(listen, 2), [format!("{mark}-0"), format!("{mark}-0")]);
}
