//! Local autoscaling end to end: `inferlb serve` starting and stopping real
//! replica processes (`inferlb fake-replica`), on both I/O drivers.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use inferlb_testkit::{eventually, free_addr, wait_for_port, RawClient, RawResponse};
use serde_json::Value;

fn temp_dir(name: &str) -> inferlb_testkit::Scratch {
    inferlb_testkit::fresh_dir(&format!("local-{name}"))
}

/// Five ports for one test's replicas, below the kernel's ephemeral range
/// (32768 and up) so no client socket holds them.
fn port_range(slot: u16) -> (u16, u16) {
    let base = 20_000 + (std::process::id() % 300) as u16 * 40 + slot * 5;
    (base, base + 4)
}

/// A unique mark in every replica's command line, to find its processes.
fn marker(name: &str) -> String {
    format!("mark-{}-{name}", std::process::id())
}

/// Pids of live processes whose command line holds `mark`.
fn processes_with(mark: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let status = std::fs::read_to_string(entry.path().join("status")).unwrap_or_default();
        let zombie = status
            .lines()
            .any(|l| l.starts_with("State:") && l.contains('Z'));
        if !zombie && String::from_utf8_lossy(&cmdline).contains(mark) {
            pids.push(pid);
        }
    }
    pids
}

struct Serve {
    child: Child,
    listen: SocketAddr,
    admin: SocketAddr,
    mark: String,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for pid in processes_with(&self.mark) {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    }
}

/// The fake replica's command, as a TOML array: it loads for `delay`.
fn fake_command(mark: &str, delay: &str) -> String {
    format!(
        r#"["{}", "fake-replica", "--listen", "{{host}}:{{port}}", "--model", "{{pool}}", "--name", "{mark}-{{index}}", "--start-delay", "{delay}", "--decode-ms-per-token", "40", "--max-running", "8"]"#,
        env!("CARGO_BIN_EXE_inferlb")
    )
}

fn serve(dir: &Path, mark: &str, autoscaling: &str, driver: &str, extra: &[&str]) -> Serve {
    serve_pool(dir, mark, "", autoscaling, driver, extra)
}

/// `serve` with `pool` lines (e.g. its routing) in the autoscaling pool.
fn serve_pool(
    dir: &Path,
    mark: &str,
    pool: &str,
    autoscaling: &str,
    driver: &str,
    extra: &[&str],
) -> Serve {
    let (listen, admin) = (free_addr(), free_addr());
    let config = dir.join("inferlb.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"{listen}\"\nworkers = 2\n[admin]\nlisten = \"{admin}\"\n[[pools]]\nname = \"llama\"\n{pool}[pools.autoscaling]\n{autoscaling}\n[[pools]]\nname = \"static\"\n"
        ),
    )
    .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_inferlb"))
        .env_remove("INFERLB_CONFIG")
        .env_remove("INFERLB_ADMIN_TOKEN")
        .env("RUST_LOG", "warn")
        .args(["serve", "--io-driver", driver, "-c"])
        .arg(&config)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let serve = Serve {
        child,
        listen,
        admin,
        mark: mark.to_owned(),
    };
    assert!(
        wait_for_port(admin, Duration::from_secs(10)),
        "admin API did not start"
    );
    assert!(
        wait_for_port(listen, Duration::from_secs(10)),
        "proxy did not start"
    );
    serve
}

fn call(admin: SocketAddr, method: &str, path: &str, body: Option<&str>) -> (u16, Value) {
    let mut client = RawClient::connect(admin).unwrap();
    let body = body.unwrap_or("");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    client.send(request.as_bytes()).unwrap();
    let resp = client.read_response().unwrap();
    let value = serde_json::from_slice(&resp.body).unwrap_or(Value::Null);
    (resp.status, value)
}

fn metrics(admin: SocketAddr) -> String {
    let mut client = RawClient::connect(admin).unwrap();
    client
        .send(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    client.read_response().unwrap().text()
}

fn status(serve: &Serve) -> Value {
    let (code, body) = call(serve.admin, "GET", "/v1/pools/llama/autoscaling", None);
    assert_eq!(code, 200, "{body}");
    body
}

fn chat_request(tokens: u32) -> String {
    let body = format!(
        r#"{{"model":"llama","messages":[{{"role":"user","content":"hello there"}}],"max_tokens":{tokens}}}"#
    );
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: inferlb\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

fn chat(listen: SocketAddr, tokens: u32) -> RawResponse {
    let mut client = RawClient::connect(listen).unwrap();
    client.set_read_timeout(Duration::from_secs(60)).unwrap();
    client.send(chat_request(tokens).as_bytes()).unwrap();
    client.read_response().unwrap()
}

fn causes(status: &Value) -> Vec<String> {
    status["activities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            format!(
                "{} {}->{} {}: {}",
                a["direction"].as_str().unwrap(),
                a["from"],
                a["to"],
                a["status"].as_str().unwrap(),
                a["cause"].as_str().unwrap()
            )
        })
        .collect()
}

fn fast_settings(mark: &str, ports: (u16, u16), min: u32, delay: &str) -> String {
    format!(
        "min = {min}\nmax = 3\ntarget_in_flight = 2\nscale_out_cooldown_s = 1\nscale_in_cooldown_s = 2\n\
         scale_out_datapoints = 2\nscale_out_period_s = 1\nscale_in_datapoints = 3\nscale_in_period_s = 1\n\
         idle_to_zero_s = 4\nprovider = \"exec\"\ncommand = {}\nports = \"{}-{}\"\nstart_timeout_s = 30\n\
         stop_grace_s = 5\ndrain_timeout_s = 20\nqueue_timeout_ms = 30000\nenv = {{ REPLICA_INDEX = \"{{index}}\" }}\n",
        fake_command(mark, delay),
        ports.0,
        ports.1
    )
}

/// From zero to a burst and back to zero: the first request is held while
/// a replica starts, the burst scales out, quiet scales in and then to
/// zero, and no request fails on the way.
fn scale_from_zero_out_in_and_back(driver: &str, slot: u16) {
    let dir = temp_dir(&format!("cycle-{driver}"));
    let mark = marker(&format!("cycle-{driver}"));
    let serve = serve(
        &dir,
        &mark,
        &fast_settings(&mark, port_range(slot), 0, "1s"),
        driver,
        &[],
    );
    let s = status(&serve);
    assert_eq!(
        (s["desired"].as_u64(), s["current"].as_u64()),
        (Some(0), Some(0)),
        "{s}"
    );
    assert!(
        processes_with(&mark).is_empty(),
        "nothing runs before a request"
    );
    // The model is listed at zero replicas: a request would be held.
    let mut client = RawClient::connect(serve.listen).unwrap();
    let models = client.get("/v1/models").unwrap();
    assert!(
        models.text().contains("\"id\":\"llama\""),
        "{}",
        models.text()
    );
    assert!(!models.text().contains("\"static\""), "{}", models.text());

    // Scale from zero: held, then answered as if nothing happened.
    let first = chat(serve.listen, 2);
    assert_eq!(first.status, 200, "{}", first.text());
    let s = status(&serve);
    assert!(
        causes(&s)
            .iter()
            .any(|c| c.starts_with("out 0->1") && c.contains("scale from zero")),
        "{:?}",
        causes(&s)
    );

    // A burst: 8 clients with requests of ~0.4 s each, target 2 per replica.
    let started = Instant::now();
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let listen = serve.listen;
            std::thread::spawn(move || {
                let mut codes = Vec::new();
                while started.elapsed() < Duration::from_secs(6) {
                    codes.push(chat(listen, 10).status);
                }
                codes
            })
        })
        .collect();
    let codes: Vec<u16> = workers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    assert!(codes.len() > 16, "{} requests", codes.len());
    assert!(
        codes.iter().all(|&c| c == 200),
        "every request answered: {codes:?}"
    );
    let s = status(&serve);
    assert!(
        causes(&s).iter().any(|c| c.starts_with("out 1->3")),
        "scaled out to the max: {:?}",
        causes(&s)
    );
    assert!(
        causes(&s).iter().any(|c| c.contains("in service after")),
        "{:?}",
        causes(&s)
    );
    assert_eq!(
        s["replicas"][0]["phase"]
            .as_str()
            .map(|p| p == "in_service"),
        Some(true),
        "{s}"
    );

    // Quiet: scale in, then to zero; every process is stopped.
    assert!(
        eventually(Duration::from_secs(30), || {
            let s = status(&serve);
            s["desired"] == 0 && s["current"] == 0
        }),
        "back to zero: {:?}",
        causes(&status(&serve))
    );
    let s = status(&serve);
    let all = causes(&s);
    assert!(all.iter().any(|c| c.starts_with("in 3->")), "{all:?}");
    assert!(all.iter().any(|c| c.contains("scaling to zero")), "{all:?}");
    assert!(
        eventually(Duration::from_secs(10), || processes_with(&mark).is_empty()),
        "replica processes left: {:?}",
        processes_with(&mark)
    );

    // The metrics say the same.
    let metrics = metrics(serve.admin);
    for line in [
        "inferlb_pool_desired_replicas{pool=\"llama\"} 0",
        "inferlb_pool_current_replicas{pool=\"llama\"} 0",
        "inferlb_pool_queued_requests{pool=\"llama\"} 0",
        "inferlb_pool_cold_start_seconds_count{pool=\"llama\"}",
        "inferlb_pool_scaling_activities_total{pool=\"llama\",direction=\"out\"}",
        "inferlb_pool_scaling_activities_total{pool=\"llama\",direction=\"in\"}",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn scale_from_zero_out_in_and_back_uring() {
    scale_from_zero_out_in_and_back("uring", 0);
}

#[test]
fn scale_from_zero_out_in_and_back_legacy() {
    scale_from_zero_out_in_and_back("legacy", 1);
}

/// A replica that never becomes healthy: held requests get 503 with
/// Retry-After after `queue_timeout_ms`, those beyond `max_queued` at once,
/// and a client that leaves is dropped from the queue.
fn held_requests_time_out_overflow_and_leave(driver: &str) {
    let dir = temp_dir(&format!("queue-{driver}"));
    let mark = marker(&format!("queue-{driver}"));
    let settings = format!(
        "min = 0\nmax = 1\nprovider = \"exec\"\ncommand = [\"/bin/sh\", \"-c\", \"exec sleep 60\", \"{mark}\", \"{{port}}\"]\n\
         ports = \"{}-{}\"\nstart_timeout_s = 60\nqueue_timeout_ms = 1500\nmax_queued = 2\nstop_grace_s = 1\n",
        port_range(if driver == "uring" { 2 } else { 3 }).0,
        port_range(if driver == "uring" { 2 } else { 3 }).1
    );
    let serve = serve(&dir, &mark, &settings, driver, &[]);

    // Times out: 503, Retry-After, the reason in the body.
    let started = Instant::now();
    let timed_out = chat(serve.listen, 2);
    assert_eq!(timed_out.status, 503, "{}", timed_out.text());
    assert!(started.elapsed() >= Duration::from_millis(1400));
    assert!(timed_out.header("retry-after").is_some());
    assert!(
        timed_out.text().contains("queue timeout"),
        "{}",
        timed_out.text()
    );

    // Two held, the third refused at once.
    let mut held: Vec<RawClient> = (0..2)
        .map(|_| {
            let mut c = RawClient::connect(serve.listen).unwrap();
            c.send(chat_request(2).as_bytes()).unwrap();
            c
        })
        .collect();
    assert!(eventually(Duration::from_secs(2), || status(&serve)
        ["queued"]
        == 2));
    // 429 in OpenAI's shape: the openai SDK raises RateLimitError and
    // retries after Retry-After.
    let refused = chat(serve.listen, 2);
    assert_eq!(refused.status, 429);
    assert_eq!(refused.header("retry-after"), Some("5"));
    let error: serde_json::Value = serde_json::from_slice(&refused.body).unwrap();
    assert_eq!(error["error"]["code"], "queue_full");
    assert_eq!(error["error"]["type"], "rate_limit_error");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Too many requests are waiting"),
        "{}",
        refused.text()
    );
    // The held clients leave: the queue empties at once.
    held.clear();
    assert!(eventually(Duration::from_millis(500), || {
        metrics(serve.admin).contains("inferlb_pool_queued_requests{pool=\"llama\"} 0")
    }));
    // A pool that does not autoscale answers 404 there, and is not held.
    let (code, body) = call(serve.admin, "GET", "/v1/pools/static/autoscaling", None);
    assert_eq!(code, 404, "{body}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn held_requests_time_out_overflow_and_leave_uring() {
    held_requests_time_out_overflow_and_leave("uring");
}

#[test]
fn held_requests_time_out_overflow_and_leave_legacy() {
    held_requests_time_out_overflow_and_leave("legacy");
}

/// A crashed replica is removed and replaced; `kill -9` of inferlb leaves
/// no replica running.
#[test]
fn a_crash_is_replaced_and_kill_9_leaves_no_orphans() {
    let dir = temp_dir("crash");
    let mark = marker("crash");
    let serve = serve(
        &dir,
        &mark,
        &fast_settings(&mark, port_range(4), 1, "0s"),
        "auto",
        &[],
    );
    assert!(
        eventually(Duration::from_secs(15), || status(&serve)["in_service"]
            == 1),
        "{}",
        status(&serve)
    );
    let pids = processes_with(&mark);
    assert_eq!(pids.len(), 1, "{pids:?}");
    let _ = Command::new("kill")
        .args(["-9", &pids[0].to_string()])
        .status();
    assert!(
        eventually(Duration::from_secs(15), || {
            let now = processes_with(&mark);
            now.len() == 1 && now[0] != pids[0] && status(&serve)["in_service"] == 1
        }),
        "{:?}",
        causes(&status(&serve))
    );
    assert!(
        causes(&status(&serve))
            .iter()
            .any(|c| c.contains("Failed") && c.contains("exited") && c.contains("replacing")),
        "{:?}",
        causes(&status(&serve))
    );
    assert_eq!(chat(serve.listen, 2).status, 200);
    // kill -9: the kernel takes the replicas with it (PR_SET_PDEATHSIG).
    let pid = serve.child.id();
    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    assert!(
        eventually(Duration::from_secs(10), || processes_with(&mark).is_empty()),
        "orphans: {:?}",
        processes_with(&mark)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// PATCH changes min, max and target at runtime (checked, persisted in the
/// state file); the autoscaler's replicas are never persisted.
#[test]
fn patch_changes_settings_and_persists_them_but_not_the_replicas() {
    let dir = temp_dir("patch");
    let mark = marker("patch");
    let state = dir.join("state.json");
    let state_arg = state.to_string_lossy().into_owned();
    let settings = fast_settings(&mark, port_range(5), 0, "0s");
    let serve1 = serve(
        &dir,
        &mark,
        &settings,
        "auto",
        &["--state-file", &state_arg],
    );
    for (body, want) in [
        (r#"{"min": 5, "max": 3}"#, "min (5) is above max (3)"),
        (r#"{"max": 0}"#, "max must be between 1 and 1000"),
        (
            r#"{"target_in_flight": -1}"#,
            "target_in_flight must be above 0",
        ),
        (r#"{"mystery": 1}"#, "mystery"),
    ] {
        let (code, reply) = call(
            serve1.admin,
            "PATCH",
            "/v1/pools/llama/autoscaling",
            Some(body),
        );
        assert_eq!(code, 400, "{body}: {reply}");
        assert!(reply.to_string().contains(want), "{body}: {reply}");
    }
    let (code, _) = call(
        serve1.admin,
        "PATCH",
        "/v1/pools/nope/autoscaling",
        Some("{}"),
    );
    assert_eq!(code, 404);
    let (code, reply) = call(
        serve1.admin,
        "PATCH",
        "/v1/pools/llama/autoscaling",
        Some(r#"{"min": 1, "target": 3}"#),
    );
    assert_eq!(code, 200, "{reply}");
    assert_eq!(
        (reply["min"].as_u64(), reply["target_in_flight"].as_f64()),
        (Some(1), Some(3.0))
    );
    // min 1 wakes the pool.
    assert!(
        eventually(Duration::from_secs(15), || status(&serve1)["in_service"]
            == 1),
        "{:?}",
        causes(&status(&serve1))
    );
    let saved = std::fs::read_to_string(&state).unwrap();
    assert!(saved.contains("\"scaling\""), "{saved}");
    assert!(
        !saved.contains("llama-0"),
        "the autoscaler's replica is not a runtime change: {saved}"
    );
    // Suspended: held as it is.
    let (code, reply) = call(
        serve1.admin,
        "PATCH",
        "/v1/pools/llama/autoscaling",
        Some(r#"{"suspended": true}"#),
    );
    assert_eq!((code, reply["suspended"].as_bool()), (200, Some(true)));
    drop(serve1);
    assert!(eventually(Duration::from_secs(10), || processes_with(
        &mark
    )
    .is_empty()));

    // A restart keeps the runtime settings, and starts from its own replicas.
    let serve2 = serve(
        &dir,
        &mark,
        &settings,
        "auto",
        &["--state-file", &state_arg],
    );
    let s = status(&serve2);
    assert_eq!(
        (s["min"].as_u64(), s["suspended"].as_bool()),
        (Some(1), Some(true)),
        "{s}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The systemd provider drives `systemctl` (here a stand-in on PATH that
/// runs the fake replica): leftover units stopped at start, `start` on
/// scale-out, `stop` on shutdown.
#[test]
fn the_systemd_provider_starts_and_stops_template_units() {
    let dir = temp_dir("systemd");
    let mark = marker("systemd");
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let base = port_range(6).0;
    let script = format!(
        r#"#!/bin/sh
# A stand-in for systemctl: units model@N.service run the fake replica.
state="{state}"
cmd="$1"; shift
echo "$cmd $*" >> "$state/calls"
case "$cmd" in
  start) for u in "$@"; do case "$u" in --*) continue ;; esac; n="${{u#model@}}"; n="${{n%.service}}"
      "{inferlb}" fake-replica --listen "127.0.0.1:$(({base} + n))" --model llama --name "{mark}-$n" >/dev/null 2>&1 &
      echo $! > "$state/$u.pid"; done ;;
  stop) for u in "$@"; do if [ -f "$state/$u.pid" ]; then kill "$(cat "$state/$u.pid")"; rm -f "$state/$u.pid"; fi; done ;;
  is-active) [ "$1" = --quiet ] && shift; [ -f "$state/$1.pid" ] && kill -0 "$(cat "$state/$1.pid")" 2>/dev/null ;;
esac
"#,
        state = dir.display(),
        inferlb = env!("CARGO_BIN_EXE_inferlb"),
    );
    let systemctl = bin.join("systemctl");
    std::fs::write(&systemctl, script).unwrap();
    Command::new("chmod")
        .arg("+x")
        .arg(&systemctl)
        .status()
        .unwrap();
    let settings = format!(
        "min = 1\nmax = 2\nprovider = \"systemd\"\nunit = \"model@{{index}}.service\"\nport = \"{{{base} + index}}\"\nstart_timeout_s = 30\n"
    );
    let (listen, admin) = (free_addr(), free_addr());
    let config = dir.join("inferlb.toml");
    std::fs::write(
        &config,
        format!("listen = \"{listen}\"\n[admin]\nlisten = \"{admin}\"\n[[pools]]\nname = \"llama\"\n[pools.autoscaling]\n{settings}"),
    )
    .unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let child = Command::new(env!("CARGO_BIN_EXE_inferlb"))
        .env("PATH", path)
        .env("RUST_LOG", "warn")
        .args(["serve", "-c"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut serve = Serve {
        child,
        listen,
        admin,
        mark: mark.clone(),
    };
    assert!(wait_for_port(admin, Duration::from_secs(10)));
    assert!(
        eventually(Duration::from_secs(20), || status(&serve)["in_service"]
            == 1),
        "{}",
        status(&serve)
    );
    let s = status(&serve);
    assert_eq!(s["provider"], "systemd");
    assert_eq!(s["replicas"][0]["address"], format!("127.0.0.1:{base}"));
    assert_eq!(chat(serve.listen, 2).status, 200);
    // SIGTERM: inferlb stops its units on the way out.
    let _ = Command::new("kill")
        .args(["-TERM", &serve.child.id().to_string()])
        .status();
    let _ = serve.child.wait();
    let calls = std::fs::read_to_string(dir.join("calls")).unwrap();
    let lines: Vec<&str> = calls.lines().collect();
    assert!(
        lines[0].starts_with("stop model@0.service model@1.service"),
        "{calls}"
    );
    assert!(
        lines.contains(&"start --no-block model@0.service"),
        "{calls}"
    );
    assert_eq!(lines.last(), Some(&"stop model@0.service"), "{calls}");
    assert!(eventually(Duration::from_secs(5), || processes_with(&mark).is_empty()));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Scale-in drains the replica with the fewest requests in flight and its
/// stream finishes; a scale-out arriving during the drain takes that
/// replica back instead of starting another.
#[test]
fn a_scale_out_during_a_drain_takes_the_replica_back_and_streams_finish() {
    let dir = temp_dir("undrain");
    let mark = marker("undrain");
    let (lo, hi) = port_range(7);
    let settings = format!(
        "min = 1\nmax = 2\ntarget_in_flight = 2\nscale_out_cooldown_s = 1\nscale_in_cooldown_s = 1\n\
         scale_out_datapoints = 2\nscale_out_period_s = 1\nscale_in_datapoints = 3\nscale_in_period_s = 1\n\
         provider = \"exec\"\ncommand = {}\nports = \"{lo}-{hi}\"\nstart_timeout_s = 30\nstop_grace_s = 5\n\
         drain_timeout_s = 60\n",
        fake_command(&mark, "0s")
    );
    // least_outstanding: the two streams below go one to each replica.
    let serve = serve_pool(
        &dir,
        &mark,
        "routing = \"least_outstanding\"\n",
        &settings,
        "auto",
        &[],
    );
    assert!(eventually(Duration::from_secs(15), || status(&serve)
        ["in_service"]
        == 1));

    // A burst until the second replica serves.
    let burst = |until: Box<dyn Fn() -> bool + Send + Sync>| {
        let until = std::sync::Arc::new(until);
        let workers: Vec<_> = (0..6)
            .map(|_| {
                let (listen, until) = (serve.listen, std::sync::Arc::clone(&until));
                std::thread::spawn(move || {
                    let started = Instant::now();
                    let mut codes = Vec::new();
                    while !until() && started.elapsed() < Duration::from_secs(30) {
                        codes.push(chat(listen, 5).status);
                    }
                    codes
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect::<Vec<u16>>()
    };
    let admin = serve.admin;
    let in_service = move |n: u64| -> Box<dyn Fn() -> bool + Send + Sync> {
        Box::new(move || {
            call(admin, "GET", "/v1/pools/llama/autoscaling", None).1["in_service"] == n
        })
    };
    let codes = burst(in_service(2));
    assert!(codes.iter().all(|&c| c == 200), "{codes:?}");
    assert!(eventually(Duration::from_secs(5), || status(&serve)
        ["in_flight"]
        == 0));

    // Two long streams, one per replica (1 in flight each, below 90 % of
    // the target): a scale-in drains one of them.
    let streams: Vec<_> = (0..2)
        .map(|_| {
            let listen = serve.listen;
            let handle = std::thread::spawn(move || {
                let body = r#"{"model":"llama","messages":[{"role":"user","content":"hi"}],"max_tokens":300,"stream":true}"#;
                let mut client = RawClient::connect(listen).unwrap();
                client.set_read_timeout(Duration::from_secs(60)).unwrap();
                client
                    .send(format!("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).as_bytes())
                    .unwrap();
                client.read_response().unwrap()
            });
            std::thread::sleep(Duration::from_millis(200));
            handle
        })
        .collect();
    assert!(
        eventually(Duration::from_secs(10), || status(&serve)["draining"] == 1),
        "{:?}",
        causes(&status(&serve))
    );
    let s = status(&serve);
    let draining: Vec<String> = s["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["phase"] == "draining")
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(draining.len(), 1, "{s}");
    // A burst during the drain: the draining replica comes back.
    let codes = burst(Box::new({
        let admin = serve.admin;
        move || {
            let s = call(admin, "GET", "/v1/pools/llama/autoscaling", None).1;
            s["draining"] == 0 && s["in_service"] == 2
        }
    }));
    assert!(codes.iter().all(|&c| c == 200), "{codes:?}");
    let s = status(&serve);
    let ids: Vec<&str> = s["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&draining[0].as_str()), "{ids:?}");
    assert!(
        !ids.contains(&"llama-2"),
        "no third replica started: {ids:?}"
    );
    assert!(
        causes(&s)
            .iter()
            .any(|c| c.contains(&format!("replica {} taken back", draining[0]))),
        "{:?}",
        causes(&s)
    );
    // Both streams ran to their end.
    for stream in streams {
        let resp = stream.join().unwrap();
        assert_eq!(resp.status, 200);
        assert!(resp.text().contains("[DONE]"), "{}", resp.text());
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// With `max_in_flight_per_replica`, a burst at a pool scaling from zero
/// waits for room instead of piling onto the first replica: requests are
/// held while every replica in service is at the limit, and all succeed.
fn a_burst_waits_for_room_under_the_per_replica_limit(driver: &str, slot: u16) {
    let dir = temp_dir(&format!("limit-{driver}"));
    let mark = marker(&format!("limit-{driver}"));
    let (lo, hi) = port_range(slot);
    let settings = format!(
        "min = 0\nmax = 2\ntarget_in_flight = 2\nmax_in_flight_per_replica = 2\nscale_out_cooldown_s = 1\n\
         scale_out_datapoints = 1\nscale_out_period_s = 1\nprovider = \"exec\"\ncommand = {}\n\
         ports = \"{lo}-{hi}\"\nstart_timeout_s = 30\nqueue_timeout_ms = 30000\n",
        fake_command(&mark, "1s")
    );
    let serve = serve(&dir, &mark, &settings, driver, &[]);
    let requests: Vec<_> = (0..6)
        .map(|_| {
            let listen = serve.listen;
            std::thread::spawn(move || chat(listen, 25).status)
        })
        .collect();
    let (mut held_beside_a_replica, mut worst) = (false, 0.0_f64);
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(15) && !requests.iter().all(|r| r.is_finished()) {
        let s = status(&serve);
        let (in_service, queued, in_flight) = (
            s["in_service"].as_u64().unwrap_or(0),
            s["queued"].as_u64().unwrap_or(0),
            s["in_flight"].as_u64().unwrap_or(0),
        );
        if in_service > 0 {
            held_beside_a_replica |= queued > 0;
            worst = worst.max(in_flight as f64 / in_service as f64);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let codes: Vec<u16> = requests.into_iter().map(|r| r.join().unwrap()).collect();
    assert!(codes.iter().all(|&c| c == 200), "{codes:?}");
    assert!(
        held_beside_a_replica,
        "requests were held while a replica served"
    );
    // The limit holds, give or take a request released by each worker at
    // the same moment.
    assert!(worst <= 3.0, "{worst} in flight per replica");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_burst_waits_for_room_under_the_per_replica_limit_uring() {
    a_burst_waits_for_room_under_the_per_replica_limit("uring", 8);
}

#[test]
fn a_burst_waits_for_room_under_the_per_replica_limit_legacy() {
    a_burst_waits_for_room_under_the_per_replica_limit("legacy", 9);
}
