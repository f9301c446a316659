//! The admin API against the real binary: runtime changes under load,
//! draining, persistence across kill -9, tokens, and SIGHUP reloads.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use inferlb_testkit::{eventually, free_addr, wait_for_port, FakeReplica, RawClient};
use serde_json::Value;

fn temp_dir(name: &str) -> inferlb_testkit::Scratch {
    inferlb_testkit::fresh_dir(&format!("admin-{name}"))
}

struct Server {
    child: Child,
    listen: SocketAddr,
    admin: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn command(state_file: &Path, admin: SocketAddr, listen: SocketAddr) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_inferlb"));
    command
        .env_remove("INFERLB_CONFIG")
        .env_remove("INFERLB_ADMIN_TOKEN")
        .env("RUST_LOG", "info")
        .args(["serve", "--workers", "2"])
        .args([
            "--listen",
            &listen.to_string(),
            "--admin-listen",
            &admin.to_string(),
        ])
        .arg("--state-file")
        .arg(state_file)
        .stdout(Stdio::null())
        // The log stays beside the state file, for a failing test to show.
        .stderr(std::fs::File::create(state_file.with_extension("log")).unwrap());
    command
}

fn start(mut command: Command, listen: SocketAddr, admin: SocketAddr) -> Server {
    let child = command.spawn().unwrap();
    let server = Server {
        child,
        listen,
        admin,
    };
    assert!(
        wait_for_port(admin, Duration::from_secs(10)),
        "admin API did not start"
    );
    assert!(
        wait_for_port(listen, Duration::from_secs(10)),
        "proxy did not start"
    );
    server
}

/// The last `n` lines of a server's log (its stderr, beside its state file).
fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn spawn_server(state_file: &Path) -> Server {
    let (listen, admin) = (free_addr(), free_addr());
    start(command(state_file, admin, listen), listen, admin)
}

/// One admin call; returns the status and the JSON body.
fn call(
    admin: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    token: Option<&str>,
) -> (u16, Value) {
    let mut client = RawClient::connect(admin).unwrap();
    // A change answers once it is on disk, and this machine's disk has
    // stalled a state file sync for 6.6 s while the other tests ran.
    client.set_read_timeout(Duration::from_secs(30)).unwrap();
    let body = body.unwrap_or("");
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    client.send(request.as_bytes()).unwrap();
    let resp = client.read_response().unwrap();
    let value = serde_json::from_slice(&resp.body).unwrap_or(Value::Null);
    (resp.status, value)
}

fn ids(admin: SocketAddr) -> Vec<String> {
    let (status, list) = call(admin, "GET", "/v1/replicas", None, None);
    assert_eq!(status, 200);
    list.as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn a_201_survives_kill_9() {
    let dir = temp_dir("kill9");
    let state = dir.join("state.json");
    let replica = FakeReplica::builder().name("kept").start().unwrap();
    let mut server = spawn_server(&state);
    let body = format!(
        r#"{{"address": "{}", "id": "kept", "weight": 7}}"#,
        replica.addr()
    );
    let (status, _) = call(server.admin, "POST", "/v1/replicas", Some(&body), None);
    assert_eq!(status, 201);
    server.child.kill().unwrap();
    server.child.wait().unwrap();

    let server = spawn_server(&state);
    let (_, list) = call(server.admin, "GET", "/v1/replicas", None, None);
    assert_eq!(list[0]["id"], "kept");
    assert_eq!(list[0]["weight"], 7);
    let mut client = RawClient::connect(server.listen).unwrap();
    assert_eq!(client.get("/").unwrap().header("x-replica"), Some("kept"));
}

#[test]
fn a_corrupt_state_file_stops_start_up_and_is_kept() {
    let dir = temp_dir("corrupt");
    let state = dir.join("state.json");
    std::fs::write(&state, "{\"version\": 1, \"replicas\": [").unwrap();
    let output = command(&state, free_addr(), free_addr())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("corrupt") && stderr.contains("state.json"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_to_string(&state).unwrap(),
        "{\"version\": 1, \"replicas\": ["
    );
}

#[test]
fn churn_under_load_fails_no_request() {
    let dir = temp_dir("churn");
    let stable: Vec<_> = (0..2)
        .map(|i| {
            FakeReplica::builder()
                .name(&format!("s{i}"))
                .threads(2)
                .start()
                .unwrap()
        })
        .collect();
    let extra: Vec<_> = (0..3)
        .map(|i| {
            FakeReplica::builder()
                .name(&format!("e{i}"))
                .start()
                .unwrap()
        })
        .collect();
    let server = spawn_server(&dir.join("state.json"));
    for (i, r) in stable.iter().enumerate() {
        let body = format!(r#"{{"address": "{}", "id": "s{i}"}}"#, r.addr());
        assert_eq!(
            call(server.admin, "POST", "/v1/replicas", Some(&body), None).0,
            201
        );
    }

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..64)
        .map(|_| {
            let (stop, ok, failed, listen) = (
                Arc::clone(&stop),
                Arc::clone(&ok),
                Arc::clone(&failed),
                server.listen,
            );
            std::thread::spawn(move || {
                let mut client = RawClient::connect(listen).unwrap();
                let deadline = Instant::now() + Duration::from_secs(60);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    match client.get("/v1/models") {
                        Ok(resp) if resp.status == 200 => ok.fetch_add(1, Ordering::Relaxed),
                        _ => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            match RawClient::connect(listen) {
                                Ok(c) => client = c,
                                Err(_) => break,
                            }
                            0
                        }
                    };
                }
            })
        })
        .collect();

    // 500 operations: add, reweight, drain, over and over.
    for op in 0..500 {
        let k = (op / 3) % extra.len();
        let id = format!("e{k}");
        let (status, body) = match op % 3 {
            0 => call(
                server.admin,
                "POST",
                "/v1/replicas",
                Some(&format!(
                    r#"{{"address": "{}", "id": "{id}"}}"#,
                    extra[k].addr()
                )),
                None,
            ),
            1 => call(
                server.admin,
                "PATCH",
                &format!("/v1/replicas/{id}"),
                Some(r#"{"weight": 3}"#),
                None,
            ),
            _ => call(
                server.admin,
                "DELETE",
                &format!("/v1/replicas/{id}?drain_timeout_s=30"),
                None,
                None,
            ),
        };
        assert!(
            (200..300).contains(&status),
            "operation {op} on {id}: {status} {body}"
        );
        if op % 3 == 2 {
            // A drained replica leaves once its in-flight requests finish
            // (the reaper looks every 100 ms; the bound allows for state
            // file syncs slowed by the other tests' disk traffic: one took
            // 6.6 s here, logged by the server's slow-save warning).
            let asked = Instant::now();
            assert!(
                eventually(Duration::from_secs(15), || !ids(server.admin).contains(&id)),
                "{id} never left in {:?}: {}\nserver log, last lines:\n{}",
                asked.elapsed(),
                call(
                    server.admin,
                    "GET",
                    &format!("/v1/replicas/{id}"),
                    None,
                    None
                )
                .1,
                log_tail(&dir.join("state.log"), 30)
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert_eq!(failed, 0, "{failed} failed requests out of {}", ok + failed);
    assert!(ok > 1000, "only {ok} requests went through");
    assert!(
        extra.iter().any(|r| r.counters().requests() > 0),
        "the churned replicas never took traffic"
    );
}

#[test]
fn a_drained_replica_finishes_its_streams() {
    let dir = temp_dir("drain");
    let replica = FakeReplica::builder()
        .name("slow")
        .tokens(10, Duration::from_millis(100))
        .start()
        .unwrap();
    let server = spawn_server(&dir.join("state.json"));
    let body = format!(r#"{{"address": "{}", "id": "slow"}}"#, replica.addr());
    assert_eq!(
        call(server.admin, "POST", "/v1/replicas", Some(&body), None).0,
        201
    );
    let mut client = RawClient::connect(server.listen).unwrap();
    client
        .send(b"GET /stream HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    client.read_until(b"tok0").unwrap();
    let (status, view) = call(server.admin, "DELETE", "/v1/replicas/slow", None, None);
    assert_eq!(status, 202);
    assert_eq!(view["state"], "draining");
    let (_, one) = call(server.admin, "GET", "/v1/replicas/slow", None, None);
    assert_eq!(one["state"], "draining");
    assert_eq!(one["in_flight"], 1);
    // No new requests go to it.
    let mut other = RawClient::connect(server.listen).unwrap();
    assert_eq!(other.get("/").unwrap().status, 503);
    // The stream in flight finishes, then the replica disappears.
    client.read_until(b"[DONE]").unwrap();
    assert!(
        eventually(Duration::from_secs(5), || ids(server.admin).is_empty()),
        "{:?}",
        ids(server.admin)
    );
}

#[test]
fn the_token_is_enforced_and_required_off_loopback() {
    let dir = temp_dir("token");
    let (listen, admin) = (free_addr(), free_addr());
    let mut cmd = command(&dir.join("state.json"), admin, listen);
    cmd.env("INFERLB_ADMIN_TOKEN", "hunter2");
    let server = start(cmd, listen, admin);
    assert_eq!(call(server.admin, "GET", "/v1/replicas", None, None).0, 401);
    assert_eq!(
        call(server.admin, "GET", "/v1/replicas", None, Some("nope")).0,
        401
    );
    assert_eq!(
        call(server.admin, "GET", "/v1/replicas", None, Some("hunter2")).0,
        200
    );
    assert_eq!(call(server.admin, "GET", "/healthz", None, None).0, 200);
    // The CLI: `--admin host:port` needs no scheme, and a 401 says how to
    // give the token.
    let cli = |token: Option<&str>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_inferlb"));
        command
            .args(["replicas", "--admin", &server.admin.to_string(), "list"])
            .env_remove("INFERLB_ADMIN_TOKEN");
        if let Some(token) = token {
            command.env("INFERLB_ADMIN_TOKEN", token);
        }
        command.output().unwrap()
    };
    let refused = cli(None);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("--token-file") && stderr.contains("INFERLB_ADMIN_TOKEN"),
        "{stderr}"
    );
    let listed = cli(Some("hunter2"));
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );

    let token_file = dir.join("token");
    std::fs::write(&token_file, "from-a-file\n").unwrap();
    let (listen, admin) = (free_addr(), free_addr());
    let mut cmd = command(&dir.join("state2.json"), admin, listen);
    cmd.arg("--admin-token-file").arg(&token_file);
    let server = start(cmd, listen, admin);
    assert_eq!(
        call(server.admin, "GET", "/v1/status", None, Some("from-a-file")).0,
        200
    );
    assert_eq!(call(server.admin, "GET", "/v1/status", None, None).0, 401);
    // Written with the default umask, the file is readable by everyone: the
    // start-up log says so (as ssh does of a private key); at 0600 it does not.
    let warning = "readable by its group or by everyone";
    let log = std::fs::read_to_string(dir.join("state2.log")).unwrap();
    assert!(log.contains(warning), "{log}");
    drop(server);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (listen, admin) = (free_addr(), free_addr());
    let mut cmd = command(&dir.join("state4.json"), admin, listen);
    cmd.arg("--admin-token-file").arg(&token_file);
    let server = start(cmd, listen, admin);
    assert_eq!(
        call(server.admin, "GET", "/v1/status", None, Some("from-a-file")).0,
        200
    );
    let log = std::fs::read_to_string(dir.join("state4.log")).unwrap();
    assert!(!log.contains(warning), "{log}");

    let port = free_addr().port();
    let output = command(
        &dir.join("state3.json"),
        format!("0.0.0.0:{port}").parse().unwrap(),
        free_addr(),
    )
    .stderr(Stdio::piped())
    .output()
    .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("without a token"));
}

#[test]
fn sighup_applies_the_config_difference_and_rejects_a_bad_file() {
    let dir = temp_dir("sighup");
    let a = FakeReplica::builder().name("a").start().unwrap();
    let b = FakeReplica::builder().name("b").start().unwrap();
    let config = dir.join("inferlb.toml");
    std::fs::write(
        &config,
        format!("[[replicas]]\naddress = \"{}\"\nid = \"a\"\n", a.addr()),
    )
    .unwrap();
    let (listen, admin) = (free_addr(), free_addr());
    let mut cmd = command(&dir.join("state.json"), admin, listen);
    cmd.arg("--config").arg(&config);
    let server = start(cmd, listen, admin);
    assert_eq!(ids(server.admin), ["a"]);

    std::fs::write(
        &config,
        format!(
            "[[replicas]]\naddress = \"{}\"\nid = \"b\"\nweight = 2\n",
            b.addr()
        ),
    )
    .unwrap();
    let hup = |pid: u32| {
        assert!(Command::new("kill")
            .args(["-s", "HUP", &pid.to_string()])
            .status()
            .unwrap()
            .success());
    };
    hup(server.child.id());
    assert!(
        eventually(Duration::from_secs(5), || ids(server.admin) == ["b"]),
        "{:?}",
        ids(server.admin)
    );

    std::fs::write(&config, "workers = \"many\"\n").unwrap();
    hup(server.child.id());
    // The server says it kept the running configuration, and it did.
    let log = dir.join("state.log");
    assert!(
        eventually(Duration::from_secs(5), || std::fs::read_to_string(&log)
            .is_ok_and(|l| l.contains("config reload rejected"))),
        "{}",
        log_tail(&log, 20)
    );
    assert_eq!(ids(server.admin), ["b"]);
    let mut client = RawClient::connect(server.listen).unwrap();
    assert_eq!(client.get("/").unwrap().header("x-replica"), Some("b"));
}

/// `inferlb serve` with the given replicas, no state file flag, run in `dir`.
fn serve_in(dir: &Path, replicas: &[SocketAddr], extra: &[&str]) -> Server {
    let (listen, admin) = (free_addr(), free_addr());
    let mut command = Command::new(env!("CARGO_BIN_EXE_inferlb"));
    command
        .current_dir(dir)
        .env_remove("INFERLB_CONFIG")
        .env_remove("INFERLB_ADMIN_TOKEN")
        .env_remove("STATE_DIRECTORY")
        .env("RUST_LOG", "warn")
        .args(["serve", "--workers", "1"])
        .args([
            "--listen",
            &listen.to_string(),
            "--admin-listen",
            &admin.to_string(),
        ])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for replica in replicas {
        command.args(["--replica", &replica.to_string()]);
    }
    start(command, listen, admin)
}

/// Which replica answers a GET through the proxy.
fn answered_by(listen: SocketAddr) -> String {
    let mut client = RawClient::connect(listen).unwrap();
    let resp = client.get("/").unwrap();
    assert_eq!(resp.status, 200);
    resp.header("x-replica").unwrap_or("?").to_owned()
}

/// Adds a replica through the admin API; it must be accepted.
fn add_replica(admin: SocketAddr, id: &str, addr: SocketAddr) {
    let body = format!(r#"{{"address": "{addr}", "id": "{id}"}}"#);
    let (status, _) = call(admin, "POST", "/v1/replicas", Some(&body), None);
    assert_eq!(status, 201);
}

/// The id a replica gets from its address (`127.0.0.1:9` → `127.0.0.1-9`).
fn id_of(addr: SocketAddr) -> String {
    addr.to_string().replace(':', "-")
}

#[test]
fn a_second_run_in_the_same_directory_serves_what_it_declares() {
    let a = FakeReplica::builder().name("A").start().unwrap();
    let b = FakeReplica::builder().name("B").start().unwrap();
    let c = FakeReplica::builder().name("C").start().unwrap();
    let dir = temp_dir("second-run");
    {
        let server = serve_in(&dir, &[a.addr()], &[]);
        assert_eq!(answered_by(server.listen), "A");
        // A runtime change, kept in memory only: no --state-file here.
        add_replica(server.admin, "c", c.addr());
    }
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        0,
        "a run without --state-file wrote into its working directory"
    );
    let server = serve_in(&dir, &[b.addr()], &[]);
    assert_eq!(ids(server.admin), vec![id_of(b.addr())]);
    assert_eq!(answered_by(server.listen), "B");
}

#[test]
fn runtime_changes_persist_on_top_of_what_is_declared() {
    let a = FakeReplica::builder().name("A").start().unwrap();
    let b = FakeReplica::builder().name("B").start().unwrap();
    let c = FakeReplica::builder().name("C").start().unwrap();
    let dir = temp_dir("overlay");
    let state = dir.join("state.json");
    let state_arg = state.to_string_lossy().into_owned();
    let a_id = id_of(a.addr());
    {
        let server = serve_in(&dir, &[a.addr()], &["--state-file", &state_arg]);
        add_replica(server.admin, "c", c.addr());
    }
    // A different declared list: B is served, with the runtime add kept.
    {
        let server = serve_in(&dir, &[b.addr()], &["--state-file", &state_arg]);
        let mut listed = ids(server.admin);
        listed.sort();
        let mut expected = vec![id_of(b.addr()), "c".to_owned()];
        expected.sort();
        assert_eq!(listed, expected);
    }
    // A declared replica removed at runtime stays removed while the file
    // says so (and the start-up log says how to bring it back).
    {
        let server = serve_in(&dir, &[a.addr()], &["--state-file", &state_arg]);
        let (status, _) = call(
            server.admin,
            "DELETE",
            &format!("/v1/replicas/{a_id}?drain_timeout_s=0"),
            None,
            None,
        );
        assert_eq!(status, 202);
    }
    let server = serve_in(&dir, &[a.addr()], &["--state-file", &state_arg]);
    assert_eq!(ids(server.admin), vec!["c".to_owned()]);
}

/// `replicas add --pool NAME` refuses a pool that does not exist (a typo
/// would make a pool nobody routes to), naming the pools and the flag that
/// creates one.
#[test]
fn adding_to_an_unknown_pool_needs_create_pool() {
    let dir = temp_dir("create-pool");
    let server = spawn_server(&dir.join("state.json"));
    let add = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_inferlb"))
            .args(["replicas", "--admin", &server.admin.to_string(), "add"])
            .arg(free_addr().to_string())
            .args(["--pool", "llama-typo"])
            .args(extra)
            .env_remove("INFERLB_ADMIN_TOKEN")
            .output()
            .unwrap()
    };
    let refused = add(&[]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("--create-pool") && stderr.contains("llama-typo"),
        "{stderr}"
    );
    let created = add(&["--create-pool"]);
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    // Now it exists: a second replica needs no flag.
    assert!(add(&[]).status.success());
}
