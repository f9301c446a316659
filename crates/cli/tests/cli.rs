//! The `inferlb` binary end to end: start-up errors, flags, and SIGTERM.

use std::io::Read;
use std::net::TcpListener;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use inferlb_testkit::{free_addr, fresh_dir, wait_for_port, FakeReplica, RawClient, Scratch};

fn inferlb() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_inferlb"));
    command
        .env("RUST_LOG", "info")
        .env_remove("INFERLB_CONFIG")
        .env_remove("INFERLB_ADMIN_TOKEN");
    command
}

/// `inferlb serve` with its admin API on a free port and its state file in
/// a fresh temporary directory (removed when the returned guard drops), so
/// tests never share either.
fn serve(name: &str) -> (Command, Scratch) {
    let dir = fresh_dir(&format!("cli-{name}"));
    let mut command = inferlb();
    command
        .arg("serve")
        .args(["--admin-listen", &free_addr().to_string()])
        .arg("--state-file")
        .arg(dir.join("state.json"));
    (command, dir)
}

/// Runs the binary to completion, bounded in time.
fn run_to_end(mut command: Command) -> Output {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "inferlb did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn stderr_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn invalid_config_stops_start_up_naming_the_field() {
    let cases = [
        (
            "zero.toml",
            "[timeouts]\nupstream_connect_timeout_ms = 0\n",
            "timeouts.upstream_connect_timeout_ms",
        ),
        (
            "unknown.toml",
            "listen = \"127.0.0.1:1\"\nworkerz = 2\n",
            "workerz",
        ),
        (
            "weight.toml",
            "[[replicas]]\naddress = \"127.0.0.1:9\"\nweight = 5000\n",
            "replicas[0].weight",
        ),
        (
            "port.toml",
            "[[replicas]]\naddress = \"127.0.0.1:0\"\n",
            "port 0",
        ),
    ];
    for (name, text, expected) in cases {
        let (mut command, dir) = serve(name);
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        command.arg("--config").arg(&path);
        let output = run_to_end(command);
        assert!(!output.status.success(), "{name} was accepted");
        let stderr = stderr_of(&output);
        assert!(stderr.contains(expected), "{name}: {stderr}");
    }
    let (mut command, _dir) = serve("nonexistent");
    command.args(["--config", "/nonexistent/inferlb.toml"]);
    let output = run_to_end(command);
    assert!(!output.status.success());
    assert!(stderr_of(&output).contains("/nonexistent/inferlb.toml"));
}

#[test]
fn check_reports_every_problem_and_exits_non_zero() {
    let dir = fresh_dir("cli-check");
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "routing = \"fastest\"\n").unwrap();
    let mut command = inferlb();
    command.args(["check", "--config"]).arg(&bad);
    let output = run_to_end(command);
    assert!(!output.status.success());
    let stderr = stderr_of(&output);
    assert!(
        stderr.contains("least_outstanding"),
        "the valid rules are named: {stderr}"
    );

    let bad = dir.join("many.toml");
    std::fs::write(
        &bad,
        "[timeouts]\nupstream_connect_timeout_ms = 0\n[health]\npath = \"nope\"\n\
         [[pools]]\nname = \"m\"\n[pools.autoscaling]\nprovider = \"exec\"\ncommand = [\"/nonexistent/serve\"]\nmax = 2\n\
         [[pools]]\nname = \"n\"\n[pools.autoscaling]\nprovider = \"exec\"\ncommand = [\"no-such-model-server-xyz\"]\nmax = 2\n",
    )
    .unwrap();
    let mut command = inferlb();
    command.args(["check", "--config"]).arg(&bad);
    let output = run_to_end(command);
    assert!(!output.status.success());
    let stderr = stderr_of(&output);
    for field in ["timeouts.upstream_connect_timeout_ms", "health.path"] {
        assert!(stderr.contains(field), "{field}: {stderr}");
    }
    // The file's own problems first; the commands once the file is valid.
    let commands = dir.join("commands.toml");
    std::fs::write(
        &commands,
        "[[pools]]\nname = \"m\"\n[pools.autoscaling]\nprovider = \"exec\"\ncommand = [\"/nonexistent/serve\"]\nmax = 2\n\
         [[pools]]\nname = \"n\"\n[pools.autoscaling]\nprovider = \"exec\"\ncommand = [\"no-such-model-server-xyz\"]\nmax = 2\n\
         [[pools]]\nname = \"o\"\n[pools.autoscaling]\nprovider = \"exec\"\ncommand = [\"sh\", \"-c\", \"true\"]\nmax = 2\n",
    )
    .unwrap();
    let mut command = inferlb();
    command.args(["check", "--config"]).arg(&commands);
    let output = run_to_end(command);
    assert!(!output.status.success());
    let stderr = stderr_of(&output);
    assert!(
        stderr.contains("pools[0].autoscaling.command") && stderr.contains("/nonexistent/serve"),
        "{stderr}"
    );
    assert!(
        stderr.contains("pools[1].autoscaling.command") && stderr.contains("not found in PATH"),
        "{stderr}"
    );
    assert!(!stderr.contains("pools[2]"), "sh is found: {stderr}");
    // `serve` refuses the same file.
    let (mut command, _state) = serve("check-commands");
    command.arg("--config").arg(&commands);
    let output = run_to_end(command);
    assert!(!output.status.success());
    assert!(stderr_of(&output).contains("pools[1].autoscaling.command"));

    let good = dir.join("good.toml");
    std::fs::write(&good, "routing = \"p2c\"\n").unwrap();
    let mut command = inferlb();
    command.args(["check", "-c"]).arg(&good);
    let output = run_to_end(command);
    assert!(output.status.success(), "{}", stderr_of(&output));
    assert!(String::from_utf8_lossy(&output.stdout).contains("valid"));
    // The shipped example is valid.
    let mut command = inferlb();
    command.args(["check", "--config"]).arg(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/inferlb.toml"
    ));
    let output = run_to_end(command);
    assert!(output.status.success(), "{}", stderr_of(&output));
    // So are the three-instance fleet's.
    for i in 1..=3 {
        let mut command = inferlb();
        command.args(["check", "--config"]).arg(format!(
            "{}/../../deploy/cluster/lb-{i}.toml",
            env!("CARGO_MANIFEST_DIR")
        ));
        let output = run_to_end(command);
        assert!(output.status.success(), "lb-{i}: {}", stderr_of(&output));
    }
}

#[test]
fn the_demo_keeps_a_tokenless_admin_api_on_loopback() {
    let mut command = inferlb();
    command.args([
        "demo",
        "--admin-listen",
        "0.0.0.0:0",
        "--listen",
        "127.0.0.1:0",
    ]);
    let output = run_to_end(command);
    assert!(!output.status.success());
    assert!(
        stderr_of(&output).contains("without a token"),
        "{}",
        stderr_of(&output)
    );
}

#[test]
fn the_demo_checks_both_ports_before_its_banner() {
    // The admin port taken (as Prometheus takes 9090): the error names the
    // flag that moves it, and nothing was printed or started before it.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let mut command = inferlb();
    command.args(["demo", "--listen", "127.0.0.1:0", "--admin-listen", &addr]);
    let output = run_to_end(command);
    assert!(!output.status.success());
    let stderr = stderr_of(&output);
    assert!(
        stderr.contains("already in use") && stderr.contains("--admin-listen"),
        "{stderr}"
    );
    assert!(output.stdout.is_empty(), "no banner before the check");
    // The data port taken: --listen.
    let mut command = inferlb();
    command.args(["demo", "--listen", &addr, "--admin-listen", "127.0.0.1:0"]);
    let output = run_to_end(command);
    assert!(!output.status.success());
    assert!(
        stderr_of(&output).contains("--listen"),
        "{}",
        stderr_of(&output)
    );
}

#[test]
fn a_port_in_use_is_refused() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let (mut command, _dir) = serve("in-use");
    command.args(["--workers", "1", "--listen", &addr.to_string()]);
    let output = run_to_end(command);
    assert!(!output.status.success());
    assert!(
        stderr_of(&output).contains("cannot listen on"),
        "{}",
        stderr_of(&output)
    );
}

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits (bounded) for the process to exit; its status and its stderr.
fn exit_and_stderr(running: &mut Running) -> (std::process::ExitStatus, String) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = running.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "inferlb did not exit");
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    running
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    (status, stderr)
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args(["-s", name, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn serve_proxies_and_sigterm_lets_the_stream_finish() {
    let replica = FakeReplica::builder()
        .tokens(10, Duration::from_millis(100))
        .start()
        .unwrap();
    let listen = free_addr();
    let (mut command, _dir) = serve("sigterm");
    command
        .args(["--workers", "2", "--listen", &listen.to_string()])
        .args(["--replica", &replica.addr().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut running = Running(command.spawn().unwrap());
    assert!(
        wait_for_port(listen, Duration::from_secs(10)),
        "inferlb did not start"
    );

    let mut client = RawClient::connect(listen).unwrap();
    client
        .send(b"GET /v1/completions HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert_eq!(client.read_head().unwrap().status, 200);
    client.read_until(b"tok0").unwrap();
    signal(&running.0, "TERM");
    let rest = client.read_until(b"[DONE]").unwrap();
    assert!(String::from_utf8_lossy(&rest).contains("tok9"));

    let (status, stderr) = exit_and_stderr(&mut running);
    assert!(status.success(), "exit status {status}");
    for line in [
        "workers started",
        "I/O driver",
        "listening",
        "replica",
        "admin API",
    ] {
        assert!(
            stderr.contains(line),
            "no {line:?} line in the log:\n{stderr}"
        );
    }
}

#[test]
fn serve_without_replicas_answers_503() {
    let listen = free_addr();
    let (mut command, _dir) = serve("empty");
    command
        .args([
            "--workers",
            "1",
            "--io-driver",
            "legacy",
            "--listen",
            &listen.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let running = Running(command.spawn().unwrap());
    assert!(wait_for_port(listen, Duration::from_secs(10)));
    let mut client = RawClient::connect(listen).unwrap();
    assert_eq!(client.get("/").unwrap().status, 503);
    signal(&running.0, "INT");
}

#[test]
fn a_busy_default_admin_port_disables_the_admin_api_but_not_the_proxy() {
    // Hold the default admin port (or find it already held).
    let _held = TcpListener::bind("127.0.0.1:9090");
    let listen = free_addr();
    let dir = fresh_dir("cli-busy-admin");
    let mut command = inferlb();
    command
        .args(["serve", "--workers", "1", "--listen", &listen.to_string()])
        .arg("--state-file")
        .arg(dir.join("state.json"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut running = Running(command.spawn().unwrap());
    assert!(
        wait_for_port(listen, Duration::from_secs(10)),
        "the proxy did not start"
    );
    let mut client = RawClient::connect(listen).unwrap();
    assert_eq!(client.get("/").unwrap().status, 503);
    signal(&running.0, "TERM");
    let (_, stderr) = exit_and_stderr(&mut running);
    assert!(stderr.contains("WITHOUT the admin API"), "{stderr}");

    // An address the operator chose must be free, or start-up fails.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut command = inferlb();
    command
        .args([
            "serve",
            "--workers",
            "1",
            "--listen",
            &free_addr().to_string(),
        ])
        .args(["--admin-listen", &taken.local_addr().unwrap().to_string()])
        .arg("--state-file")
        .arg(dir.join("state2.json"));
    let output = run_to_end(command);
    assert!(!output.status.success());
    assert!(
        stderr_of(&output).contains("for the admin API"),
        "{}",
        stderr_of(&output)
    );
}

#[test]
fn the_systemd_unit_keeps_the_proxy_off_instance_metadata() {
    let unit = include_str!("../../../deploy/systemd/inferlb.service");
    assert!(
        unit.lines()
            .any(|l| l.trim() == "IPAddressDeny=169.254.169.254"),
        "the unit no longer denies the instance metadata address"
    );
    // Persistence under systemd comes from the state directory it sets.
    assert!(unit.lines().any(|l| l.trim() == "StateDirectory=inferlb"));
}

/// The exec provider's drop-in gives the model servers (inferlb's children)
/// the GPUs the shipped unit hides, and JIT memory; the systemd provider's
/// template takes its index and port from the instance name.
#[test]
fn the_local_autoscaling_units_lift_what_model_servers_need() {
    let unit = include_str!("../../../deploy/systemd/inferlb.service");
    assert!(unit.lines().any(|l| l.trim() == "PrivateDevices=yes"));
    let dropin = include_str!("../../../deploy/systemd/inferlb.service.d/exec-provider.conf");
    let lines: Vec<&str> = dropin.lines().map(str::trim).collect();
    for wanted in [
        "[Service]",
        "PrivateDevices=no",
        "DevicePolicy=closed",
        "DeviceAllow=char-nvidia-frontend rw",
        "DeviceAllow=/dev/nvidiactl rw",
        "MemoryDenyWriteExecute=no",
        "ReadOnlyPaths=/opt/models",
    ] {
        assert!(lines.contains(&wanted), "{wanted} missing from the drop-in");
    }
    let template = include_str!("../../../deploy/systemd/model@.service");
    assert!(template.contains("%i") && template.contains("CUDA_VISIBLE_DEVICES=%i"));
    let rules = include_str!("../../../deploy/systemd/50-inferlb-model-units.rules");
    assert!(rules.contains("model@[0-9]+\\.service"));
}

#[test]
fn serve_help_lists_every_routing_rule() {
    let mut command = inferlb();
    command.args(["serve", "--help"]);
    let output = run_to_end(command);
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for rule in [
        "round_robin",
        "weighted_round_robin",
        "least_outstanding",
        "p2c",
        "least_load",
        "prefix",
    ] {
        assert!(help.contains(rule), "{rule}: {help}");
    }
}

#[test]
fn rust_log_debug_shows_each_routing_decision() {
    let replica = FakeReplica::builder().name("r1").start().unwrap();
    let listen = free_addr();
    let (mut command, _dir) = serve("debug");
    command
        .env("RUST_LOG", "debug")
        .args(["--workers", "1", "--listen", &listen.to_string()])
        .args(["--replica", &replica.addr().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut running = Running(command.spawn().unwrap());
    assert!(wait_for_port(listen, Duration::from_secs(10)));
    let mut client = RawClient::connect(listen).unwrap();
    assert_eq!(client.get("/").unwrap().status, 200);
    signal(&running.0, "TERM");
    let (_, stderr) = exit_and_stderr(&mut running);
    let line = stderr
        .lines()
        .find(|l| l.contains("routed"))
        .unwrap_or_else(|| panic!("no routing decision logged:\n{stderr}"));
    assert!(
        line.contains("pool=default") && line.contains("rule=round_robin"),
        "{line}"
    );
}

#[test]
fn serve_listens_on_every_configured_listener() {
    let replica = FakeReplica::builder().name("r1").start().unwrap();
    let (a, b) = (free_addr(), free_addr());
    let (mut command, dir) = serve("listeners");
    let config = dir.join("inferlb.toml");
    std::fs::write(
        &config,
        format!("[[listeners]]\naddress = \"{a}\"\n[[listeners]]\naddress = \"{b}\"\n"),
    )
    .unwrap();
    command
        .arg("--config")
        .arg(&config)
        .args(["--workers", "1", "--replica", &replica.addr().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut running = Running(command.spawn().unwrap());
    for addr in [a, b] {
        assert!(wait_for_port(addr, Duration::from_secs(10)), "{addr}");
        let mut client = RawClient::connect(addr).unwrap();
        assert_eq!(client.get("/").unwrap().status, 200, "{addr}");
    }
    signal(&running.0, "TERM");
    let (status, stderr) = exit_and_stderr(&mut running);
    assert!(status.success(), "{stderr}");
    for addr in [a, b] {
        assert!(
            stderr.contains(&format!("listen={addr}")),
            "no listening line for {addr}:\n{stderr}"
        );
    }
}
