//! The access log of a running `inferlb serve`: one JSON line per request
//! with what an operator looks for (the replica's answers and the proxy's
//! own), the text format, and SIGUSR1 reopening the file after logrotate
//! moved it.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use inferlb_testkit::{eventually, free_addr, fresh_dir, wait_for_port, FakeReplica, RawClient};

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `inferlb serve` with one worker on `listen`, the admin API on a free
/// port, and `rest` of the config (written in `dir`); waits for the port.
fn serve(
    dir: &Path,
    listen: std::net::SocketAddr,
    rest: &str,
    args: &[&std::ffi::OsStr],
) -> Running {
    let config = format!(
        "listen = \"{listen}\"\nworkers = 1\n[admin]\nlisten = \"{}\"\n{rest}",
        free_addr()
    );
    let config_path = dir.join("inferlb.toml");
    std::fs::write(&config_path, config).unwrap();
    let serve = Running(
        Command::new(env!("CARGO_BIN_EXE_inferlb"))
            .arg("serve")
            .arg("--config")
            .arg(&config_path)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    assert!(wait_for_port(listen, Duration::from_secs(20)));
    serve
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn post(client: &mut RawClient, body: &str) -> inferlb_testkit::RawResponse {
    let request = format!(
        "POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nX-Request-Id: rid-{}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len(),
        body.len()
    );
    client.send(request.as_bytes()).unwrap();
    client.read_response().unwrap()
}

#[test]
fn every_request_gets_a_line_and_sigusr1_reopens_the_file() {
    let replica = FakeReplica::builder().name("r1").echo().start().unwrap();
    let dir = fresh_dir("access-log");
    let log = dir.join("access.log");
    let listen = free_addr();
    let pools = format!(
        "[[pools]]\nname = \"alpha\"\nreplicas = [{{ address = \"{}\" }}]\n",
        replica.addr()
    );
    let serve = serve(
        &dir,
        listen,
        &pools,
        &["--access-log".as_ref(), log.as_os_str()],
    );
    let mut client = RawClient::connect(listen).unwrap();
    assert_eq!(
        post(&mut client, r#"{"model":"alpha","prompt":"hi"}"#).status,
        200
    );
    assert_eq!(
        post(&mut client, r#"{"model":"nobody","prompt":"x"}"#).status,
        404
    );
    assert!(
        eventually(Duration::from_secs(5), || lines(&log).len() >= 2),
        "{:?}",
        lines(&log)
    );
    let parsed: Vec<serde_json::Value> = lines(&log)
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let served = &parsed[0];
    assert_eq!(served["method"], "POST");
    assert_eq!(served["path"], "/v1/completions");
    assert_eq!(served["status"], 200);
    assert_eq!(served["pool"], "alpha");
    assert_eq!(served["model"], "alpha");
    assert_eq!(served["replica"], replica.addr().to_string());
    assert_eq!(served["client"], "127.0.0.1");
    assert!(
        served["request_id"].as_str().unwrap().starts_with("rid-"),
        "the client's X-Request-Id: {served}"
    );
    assert_eq!(served["retries"], 0);
    assert_eq!(served["reason"], serde_json::Value::Null);
    assert!(
        served["bytes_in"].as_u64().unwrap() > 100,
        "head and body: {served}"
    );
    assert!(served["bytes_out"].as_u64().unwrap() > 31, "{served}");
    for field in [
        "time",
        "request_time_ms",
        "head_time_ms",
        "first_byte_ms",
        "hold_ms",
    ] {
        assert!(!served[field].is_null(), "{field}: {served}");
    }
    let refused = &parsed[1];
    assert_eq!(refused["status"], 404);
    assert_eq!(refused["reason"], "model_not_found");
    assert_eq!(refused["replica"], serde_json::Value::Null);

    // logrotate: move the file, signal, and the next line goes to a new one.
    let rotated = dir.join("access.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    let signalled = Command::new("kill")
        .args(["-USR1", &serve.0.id().to_string()])
        .status()
        .unwrap();
    assert!(signalled.success());
    // The reopen happens before the logger's next write: keep sending until
    // a line lands in the new file (each lands in one of the two).
    let reopened = eventually(Duration::from_secs(5), || {
        post(&mut client, r#"{"model":"alpha","prompt":"again"}"#);
        std::thread::sleep(Duration::from_millis(150));
        !lines(&log).is_empty()
    });
    assert!(reopened, "no new file after SIGUSR1");
    assert!(
        lines(&rotated).len() >= 2,
        "the old lines stay where they were"
    );
}

#[test]
fn the_text_format_reads_like_a_combined_log() {
    let replica = FakeReplica::builder().name("r1").start().unwrap();
    let dir = fresh_dir("access-log-text");
    let log = dir.join("access.log");
    let listen = free_addr();
    let rest = format!(
        "[access_log]\npath = \"{}\"\nformat = \"text\"\n[[replicas]]\naddress = \"{}\"\n",
        log.display(),
        replica.addr()
    );
    let _serve = serve(&dir, listen, &rest, &[]);
    let mut client = RawClient::connect(listen).unwrap();
    assert_eq!(client.get("/some/path?q=1").unwrap().status, 200);
    assert!(eventually(Duration::from_secs(5), || !lines(&log).is_empty()));
    let line = &lines(&log)[0];
    assert!(line.starts_with("127.0.0.1 - - ["), "{line}");
    assert!(line.contains("] \"GET /some/path?q=1\" 200 "), "{line}");
    assert!(
        line.contains(&format!(" replica={} ", replica.addr())),
        "{line}"
    );
    assert!(line.contains(" reason=-"), "{line}");
}
