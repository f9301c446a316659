//! Real clients against `inferlb demo`: the official OpenAI Python SDK
//! (installed by `cargo xtask test`, which sets `INFERLB_PYTHON`) lists the
//! models and streams a chat completion through the proxy, and a `serve`
//! config with pools routes `inferlb fake-replica` processes by model.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use inferlb_testkit::{free_addr, wait_for_port, RawClient};

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn inferlb() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_inferlb"));
    command
        .env("RUST_LOG", "warn")
        .env_remove("INFERLB_CONFIG")
        .env_remove("INFERLB_ADMIN_TOKEN")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    command
}

/// The Python with the OpenAI SDK; a loud failure without it.
fn python() -> String {
    std::env::var("INFERLB_PYTHON").unwrap_or_else(|_| {
        panic!("INFERLB_PYTHON is not set: run these tests with `cargo xtask test`, which installs the openai SDK")
    })
}

/// `inferlb fake-replica` processes serving `args(i)`, once they listen.
fn fake_replicas(
    count: usize,
    args: impl Fn(usize) -> Vec<String>,
) -> (Vec<SocketAddr>, Vec<Running>) {
    let addrs: Vec<SocketAddr> = (0..count).map(|_| free_addr()).collect();
    let children = addrs
        .iter()
        .enumerate()
        .map(|(i, addr)| {
            Running(
                inferlb()
                    .args(["fake-replica", "--listen", &addr.to_string()])
                    .args(args(i))
                    .spawn()
                    .unwrap(),
            )
        })
        .collect();
    for addr in &addrs {
        assert!(wait_for_port(*addr, Duration::from_secs(20)));
    }
    (addrs, children)
}

/// `inferlb serve` with `config` (its `listen` is `listen`) and `flags`,
/// once it listens.
fn serve(name: &str, config: &str, listen: SocketAddr, flags: &[&str]) -> Running {
    let dir = inferlb_testkit::fresh_dir(name);
    let path = dir.join("inferlb.toml");
    std::fs::write(&path, config).unwrap();
    let running = Running(
        inferlb()
            .arg("serve")
            .args(flags)
            .arg("--config")
            .arg(&path)
            .spawn()
            .unwrap(),
    );
    assert!(wait_for_port(listen, Duration::from_secs(20)));
    running
}

/// Runs a Python script with the SDK; its output, or a failure with both
/// of its streams.
fn sdk(script: &str, args: &[&str], what: &str) -> String {
    let output = Command::new(python())
        .args(["-c", script])
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{what}: the SDK failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// `{ address = "..." }, ...` for a config's `replicas`.
fn members(addrs: &[SocketAddr]) -> String {
    addrs
        .iter()
        .map(|a| format!("{{ address = \"{a}\" }}"))
        .collect::<Vec<_>>()
        .join(", ")
}

const SDK_SCRIPT: &str = r#"
import sys
from openai import OpenAI
client = OpenAI(base_url=sys.argv[1], api_key="unused", max_retries=0, timeout=20)
models = sorted(m.id for m in client.models.list())
print("models", ",".join(models))
pieces = []
stream = client.chat.completions.create(
    model="meta-llama/Meta-Llama-3-8B-Instruct",
    messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello!"}],
    max_tokens=5,
    stream=True,
    stream_options={"include_usage": True},
)
usage = None
for chunk in stream:
    if chunk.usage is not None:
        usage = chunk.usage
    for choice in chunk.choices:
        pieces.append(choice.delta.content or "")
print("stream", len([p for p in pieces if p]), repr("".join(pieces)))
print("usage", usage.completion_tokens)
reply = client.completions.create(model="qwen2-7b", prompt="once", max_tokens=3)
print("completion", reply.model, reply.usage.completion_tokens, repr(reply.choices[0].text))
emb = client.embeddings.create(model="qwen2-7b", input=["a", "b"])
print("embeddings", len(emb.data))
try:
    client.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "x"}])
except Exception as e:
    print("missing", type(e).__name__, e.status_code)
"#;

#[test]
fn the_openai_sdk_streams_a_chat_completion_through_the_demo() {
    let python = python();
    let (listen, admin) = (free_addr(), free_addr());
    let _demo = Running(
        inferlb()
            .args(["demo", "--listen", &listen.to_string()])
            .args(["--admin-listen", &admin.to_string()])
            .args(["--workers", "1"])
            .spawn()
            .unwrap(),
    );
    assert!(
        wait_for_port(listen, Duration::from_secs(20)),
        "the demo did not start"
    );
    let output = Command::new(python)
        .args(["-c", SDK_SCRIPT, &format!("http://{listen}/v1")])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the SDK failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines[0],
        "models Qwen/Qwen2-7B-Instruct,llama-3-8b,meta-llama/Meta-Llama-3-8B-Instruct,qwen2-7b,sql-lora"
    );
    assert!(lines[1].starts_with("stream 5 "), "{stdout}");
    assert_eq!(lines[2], "usage 5");
    assert!(lines[3].starts_with("completion qwen2-7b 3 "), "{stdout}");
    assert_eq!(lines[4], "embeddings 2");
    assert_eq!(lines[5], "missing NotFoundError 404");
}

#[test]
fn serve_routes_fake_replica_processes_by_model() {
    let replicas: Vec<(SocketAddr, &str)> = vec![
        (free_addr(), "alpha"),
        (free_addr(), "alpha"),
        (free_addr(), "beta"),
    ];
    let _children: Vec<Running> = replicas
        .iter()
        .enumerate()
        .map(|(i, (addr, model))| {
            Running(
                inferlb()
                    .args(["fake-replica", "--listen", &addr.to_string()])
                    .args(["--model", model, "--name", &format!("{model}-{i}")])
                    .args(["--decode-ms-per-token", "1"])
                    .spawn()
                    .unwrap(),
            )
        })
        .collect();
    for (addr, _) in &replicas {
        assert!(wait_for_port(*addr, Duration::from_secs(20)));
    }
    let (listen, admin) = (free_addr(), free_addr());
    let config = format!(
        "listen = \"{listen}\"\nworkers = 1\n[admin]\nlisten = \"{}\"\n\
         [[pools]]\nname = \"alpha\"\nrouting = \"prefix\"\nreplicas = [{{ address = \"{}\" }}, {{ address = \"{}\" }}]\n\
         [pools.engine_metrics]\nenabled = true\ninterval_ms = 100\n\
         [[pools]]\nname = \"beta\"\nreplicas = [{{ address = \"{}\" }}]\n",
        admin,
        replicas[0].0,
        replicas[1].0,
        replicas[2].0
    );
    let dir = inferlb_testkit::fresh_dir("openai");
    let path = dir.join("inferlb.toml");
    std::fs::write(&path, config).unwrap();
    let _serve = Running(
        inferlb()
            .arg("serve")
            .arg("--config")
            .arg(&path)
            .spawn()
            .unwrap(),
    );
    assert!(wait_for_port(listen, Duration::from_secs(20)));
    let mut client = RawClient::connect(listen).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    for (model, prefix) in [("alpha", "alpha-"), ("beta", "beta-"), ("alpha", "alpha-")] {
        let body = format!(r#"{{"model":"{model}","prompt":"hello","max_tokens":2}}"#);
        let request = format!(
            "POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        client.send(request.as_bytes()).unwrap();
        let resp = client.read_response().unwrap();
        assert_eq!(resp.status, 200, "{}", resp.text());
        assert!(resp.header("x-replica").unwrap().starts_with(prefix));
        let reply: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
        assert_eq!(reply["model"], model);
        assert!(Instant::now() < deadline);
    }
    // The engines' metrics are scraped and shown per replica: the alpha
    // pool's (scraped every 100 ms), not beta's (engine metrics off).
    let scraped = inferlb_testkit::eventually(Duration::from_secs(5), || {
        let Ok(mut admin_client) = RawClient::connect(admin) else {
            return false;
        };
        // The admin API serves only loopback names without a token.
        let request = b"GET /v1/replicas HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
        if admin_client.send(request).is_err() {
            return false;
        }
        let Ok(resp) = admin_client.read_response() else {
            return false;
        };
        let list: serde_json::Value = serde_json::from_slice(&resp.body).unwrap_or_default();
        let fresh = |pool: &str| {
            list.as_array()
                .into_iter()
                .flatten()
                .any(|r| r["pool"] == pool && r["engine"]["fresh"] == serde_json::Value::Bool(true))
        };
        fresh("alpha") && !fresh("beta")
    });
    assert!(
        scraped,
        "the alpha replicas' engine metrics were never shown fresh"
    );
}

const SDK_ERRORS: &str = r#"
import sys
from openai import OpenAI, APIStatusError
client = OpenAI(base_url=sys.argv[1], api_key="unused", max_retries=0, timeout=20)
for model, prompt in [("dead", "x"), ("empty", "x"), ("dead", "y" * 5000)]:
    try:
        client.completions.create(model=model, prompt=prompt, max_tokens=1)
        print(model, "no error")
    except APIStatusError as e:
        print(model, type(e).__name__, e.status_code, e.code, e.type, "message" if e.message else "empty")
"#;

/// Every error the proxy makes is in OpenAI's shape, so the SDK's exception
/// carries its code, type and message: a replica that refuses connections
/// (502 `bad_gateway`), a pool with no replica (503 `no_routable_replica`),
/// a body over the limit (413 `request_too_large`).
#[test]
fn the_openai_sdk_raises_the_proxy_errors_with_their_code() {
    let (listen, admin, dead) = (free_addr(), free_addr(), free_addr());
    let config = format!(
        "listen = \"{listen}\"\nworkers = 1\n[admin]\nlisten = \"{admin}\"\n\
         [limits]\nmax_request_body_bytes = 2048\n\
         [health]\nenabled = false\n\
         [[pools]]\nname = \"dead\"\nreplicas = [{{ address = \"{dead}\" }}]\n\
         [[pools]]\nname = \"empty\"\n"
    );
    let _serve = serve("openai-errors", &config, listen, &[]);
    let stdout = sdk(SDK_ERRORS, &[&format!("http://{listen}/v1")], "errors");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        [
            "dead InternalServerError 502 bad_gateway server_error message",
            "empty InternalServerError 503 no_routable_replica server_error message",
            "dead APIStatusError 413 request_too_large invalid_request_error message",
        ],
        "{stdout}"
    );
}

const SDK_SESSIONS: &str = r#"
import sys
from openai import OpenAI
client = OpenAI(base_url=sys.argv[1], api_key="unused", max_retries=0, timeout=20)
for user in ["alice", "bob", "carol", "dave", "erin", "frank"]:
    seen = set()
    for turn in range(3):
        raw = client.chat.completions.with_raw_response.create(
            model="chat",
            messages=[{"role": "user", "content": f"turn {turn}"}],
            max_tokens=1,
            user=user,
        )
        raw.parse()
        seen.add(raw.headers.get("x-replica"))
    print(user, ",".join(sorted(seen)))
"#;

/// The OpenAI SDK's `user` field keys session affinity (`json:user`): each
/// user's turns land on one replica, users spread over the pool. Both I/O
/// drivers, the binary and `inferlb fake-replica` processes.
#[test]
fn the_openai_sdk_user_field_keeps_a_user_on_one_replica() {
    let (replicas, _children) = fake_replicas(3, |i| {
        [
            "--model",
            "chat",
            "--name",
            &format!("chat-{i}"),
            "--decode-ms-per-token",
            "1",
        ]
        .map(String::from)
        .to_vec()
    });
    for driver in ["uring", "legacy"] {
        let (listen, admin) = (free_addr(), free_addr());
        let config = format!(
            "listen = \"{listen}\"\nworkers = 2\n[admin]\nlisten = \"{admin}\"\n\
             [[pools]]\nname = \"chat\"\nrouting = \"least_outstanding\"\n\
             affinity = {{ key = \"json:user\" }}\nreplicas = [{}]\n",
            members(&replicas)
        );
        let _serve = serve("openai-sessions", &config, listen, &["--io-driver", driver]);
        let stdout = sdk(SDK_SESSIONS, &[&format!("http://{listen}/v1")], driver);
        let mut used = std::collections::HashSet::new();
        for line in stdout.lines() {
            let (user, seen) = line.split_once(' ').unwrap();
            assert!(
                !seen.contains(','),
                "{driver}: {user}'s turns went to {seen}"
            );
            used.insert(seen.to_owned());
        }
        assert_eq!(stdout.lines().count(), 6, "{stdout}");
        assert!(used.len() >= 2, "{driver}: users spread: {stdout}");
    }
}

const SDK_ADAPTERS: &str = r#"
import json, sys, threading, time, urllib.request
from openai import OpenAI
base, admin = sys.argv[1], sys.argv[2]
client = OpenAI(base_url=base, api_key="unused", max_retries=0, timeout=30)
for m in sorted(client.models.list(), key=lambda m: m.id):
    print("model", m.id, getattr(m, "parent", None) or "-")

def replica_of(model, tokens):
    raw = client.completions.with_raw_response.create(model=model, prompt="SELECT", max_tokens=tokens)
    reply = raw.parse()
    return raw.headers.get("x-replica"), reply.model

# A long sql-lora request holds the adapter in one engine's only slot.
long = {}
t = threading.Thread(target=lambda: long.update(r=replica_of("sql-lora", 150)))
t.start()
holder, deadline = None, time.time() + 10
while holder is None and time.time() < deadline:
    replicas = json.load(urllib.request.urlopen(f"http://{admin}/v1/replicas"))
    for r in replicas:
        adapters = (r.get("engine") or {}).get("adapters") or {}
        if (r.get("engine") or {}).get("fresh") and "sql-lora" in adapters.get("running", []):
            holder = r["address"]
    time.sleep(0.05)
print("holder", holder)
for _ in range(4):
    replica, model = replica_of("sql-lora", 1)
    print("sql", replica, model)
for _ in range(4):
    replica, model = replica_of("chat-lora", 1)
    print("chat", replica, model)
t.join()
print("long", long["r"][0])
"#;

/// LoRA adapters: `/v1/models` lists a pool's adapters with the base model
/// as `parent`; a request naming an adapter reaches the base pool with its
/// model unchanged, goes where an engine reports the adapter running
/// (`vllm:lora_requests_info`), and another adapter goes where a slot is
/// free. The openai SDK against `inferlb fake-replica --adapter`
/// processes, both I/O drivers.
#[test]
fn the_openai_sdk_names_adapters_and_they_go_where_they_are_loaded() {
    let (replicas, _children) = fake_replicas(3, |_| {
        [
            "--model",
            "base",
            "--adapter",
            "sql-lora",
            "--adapter",
            "chat-lora",
            "--max-loras",
            "1",
            "--adapter-load-ms",
            "20",
            "--decode-ms-per-token",
            "20",
        ]
        .map(String::from)
        .to_vec()
    });
    for driver in ["uring", "legacy"] {
        let (listen, admin) = (free_addr(), free_addr());
        let config = format!(
            "listen = \"{listen}\"\nworkers = 2\n[admin]\nlisten = \"{admin}\"\n\
             [[pools]]\nname = \"base\"\nrouting = \"least_load\"\n\
             adapters = [\"sql-lora\", \"chat-lora\"]\nreplicas = [{}]\n\
             [pools.engine_metrics]\nenabled = true\ninterval_ms = 50\n",
            members(&replicas)
        );
        let _serve = serve("openai-adapters", &config, listen, &["--io-driver", driver]);
        let url = format!("http://{listen}/v1");
        let stdout = sdk(SDK_ADAPTERS, &[&url, &admin.to_string()], driver);
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(
            &lines[..3],
            [
                "model base -",
                "model chat-lora base",
                "model sql-lora base"
            ],
            "{driver}: {stdout}"
        );
        let holder = lines[3].strip_prefix("holder ").unwrap();
        assert_ne!(
            holder, "None",
            "{driver}: no engine reported sql-lora running: {stdout}"
        );
        for line in &lines[4..8] {
            assert_eq!(
                *line,
                format!("sql {holder} sql-lora"),
                "{driver}: {stdout}"
            );
        }
        for line in &lines[8..12] {
            let parts: Vec<&str> = line.split(' ').collect();
            assert_eq!(parts[0], "chat");
            assert_ne!(
                parts[1], holder,
                "{driver}: chat-lora went to the busy slot: {stdout}"
            );
            assert_eq!(parts[2], "chat-lora", "{driver}: the model is unchanged");
        }
        assert_eq!(lines[12], format!("long {holder}"));
    }
}

/// A pool that declares no adapters learns them from its replicas'
/// `/v1/models` (entries with a `parent`): they are listed with the pool as
/// parent and routed to it, unchanged.
#[test]
fn adapters_are_learned_from_the_replicas_model_lists() {
    let (replicas, _children) = fake_replicas(1, |_| {
        [
            "--model",
            "base",
            "--adapter",
            "sql-lora",
            "--decode-ms-per-token",
            "1",
        ]
        .map(String::from)
        .to_vec()
    });
    let (listen, admin) = (free_addr(), free_addr());
    let config = format!(
        "listen = \"{listen}\"\nworkers = 1\n[admin]\nlisten = \"{admin}\"\n\
         [[pools]]\nname = \"base\"\nreplicas = [{}]\n\
         [pools.engine_metrics]\nenabled = true\ninterval_ms = 100\n",
        members(&replicas)
    );
    let _serve = serve("learned-adapters", &config, listen, &[]);
    let listed = inferlb_testkit::eventually(Duration::from_secs(15), || {
        let Ok(mut client) = RawClient::connect(listen) else {
            return false;
        };
        client.get("/v1/models").is_ok_and(|r| {
            r.text().contains(r#""id":"sql-lora","object":"model""#)
                && r.text().contains(r#""parent":"base""#)
        })
    });
    assert!(listed, "sql-lora was never learned");
    let mut client = RawClient::connect(listen).unwrap();
    let body = r#"{"model":"sql-lora","prompt":"SELECT","max_tokens":1}"#;
    let request = format!(
        "POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    client.send(request.as_bytes()).unwrap();
    let resp = client.read_response().unwrap();
    assert_eq!(resp.status, 200, "{}", resp.text());
    let reply: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
    assert_eq!(reply["model"], "sql-lora");
}
