//! The simulated engine over real sockets: vLLM's `POST /tokenize`, and
//! LoRA adapters (served under their names, listed with their parent, a
//! bounded set of slots with a load cost, `vllm:lora_requests_info`).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use inferlb_testkit::fake_engine::{start, EngineConfig};
use inferlb_testkit::RawClient;

fn post(addr: SocketAddr, path: &str, body: &str) -> (u16, serde_json::Value) {
    let mut client = RawClient::connect(addr).unwrap();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: e\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    client.send(request.as_bytes()).unwrap();
    let resp = client.read_response().unwrap();
    (
        resp.status,
        serde_json::from_slice(&resp.body).unwrap_or_default(),
    )
}

fn get(addr: SocketAddr, path: &str) -> String {
    let mut client = RawClient::connect(addr).unwrap();
    client.get(path).unwrap().text()
}

fn config() -> EngineConfig {
    EngineConfig {
        models: vec!["base".into()],
        adapters: vec!["sql".into(), "chat".into()],
        max_loras: 1,
        adapter_load_ms: 100.0,
        decode_ms_per_token: 1.0,
        ..EngineConfig::default()
    }
}

#[test]
fn tokenize_counts_tokens_like_the_cost_model_and_is_counted() {
    let engine = start(config(), SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    let (status, one) = post(
        engine.addr(),
        "/tokenize",
        r#"{"model": "base", "prompt": "abcdefgh"}"#,
    );
    assert_eq!(status, 200);
    assert_eq!(one["count"], 2);
    assert_eq!(one["tokens"].as_array().unwrap().len(), 2);
    let (_, again) = post(engine.addr(), "/tokenize", r#"{"prompt": "abcdefgh"}"#);
    assert_eq!(again["tokens"], one["tokens"], "equal text, equal ids");
    let (_, chat) = post(
        engine.addr(),
        "/tokenize",
        r#"{"model": "base", "messages": [{"role": "user", "content": "hello there"}]}"#,
    );
    assert!(chat["count"].as_u64().unwrap() > 0);
    let (status, _) = post(
        engine.addr(),
        "/tokenize",
        r#"{"model": "other", "prompt": "x"}"#,
    );
    assert_eq!(status, 404);
    assert_eq!(engine.stats().tokenize_requests.load(Ordering::Relaxed), 4);
}

#[test]
fn adapters_are_listed_served_and_loaded_into_bounded_slots() {
    let engine = start(config(), SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    let addr = engine.addr();
    let models: serde_json::Value = serde_json::from_str(&get(addr, "/v1/models")).unwrap();
    let parents: Vec<(String, serde_json::Value)> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["id"].as_str().unwrap().to_owned(), m["parent"].clone()))
        .collect();
    assert_eq!(
        parents,
        [
            ("base".to_owned(), serde_json::Value::Null),
            ("sql".to_owned(), "base".into()),
            ("chat".to_owned(), "base".into()),
        ]
    );
    let completion = |model: &str, tokens: u32| {
        post(
            addr,
            "/v1/completions",
            &format!(r#"{{"model": "{model}", "prompt": "x", "max_tokens": {tokens}}}"#),
        )
    };
    // First use loads the adapter (100 ms); the next request finds it.
    let t = Instant::now();
    let (status, reply) = completion("sql", 1);
    assert_eq!((status, reply["model"].as_str()), (200, Some("sql")));
    assert!(t.elapsed() >= Duration::from_millis(100));
    completion("sql", 1);
    assert_eq!(engine.stats().adapter_loads.load(Ordering::Relaxed), 1);
    // One slot: a long sql request holds it, so chat waits for it and
    // is loaded after; the metric shows who runs and who waits.
    let long = std::thread::spawn(move || completion_on(addr, "sql", 400));
    let running = inferlb_testkit::eventually(Duration::from_secs(5), || {
        get(addr, "/metrics").contains("running_lora_adapters=\"sql\"")
    });
    assert!(running, "{}", get(addr, "/metrics"));
    let waiter = std::thread::spawn(move || completion_on(addr, "chat", 1));
    let waiting = inferlb_testkit::eventually(Duration::from_secs(5), || {
        let page = get(addr, "/metrics");
        page.contains("waiting_lora_adapters=\"chat\"") && page.contains("max_lora=\"1\"")
    });
    assert!(waiting, "{}", get(addr, "/metrics"));
    assert_eq!(long.join().unwrap(), 200);
    assert_eq!(waiter.join().unwrap(), 200);
    assert_eq!(engine.stats().adapter_loads.load(Ordering::Relaxed), 2);
    let (status, _) = completion("other-lora", 1);
    assert_eq!(status, 404);
}

fn completion_on(addr: SocketAddr, model: &str, tokens: u32) -> u16 {
    post(
        addr,
        "/v1/completions",
        &format!(r#"{{"model": "{model}", "prompt": "x", "max_tokens": {tokens}}}"#),
    )
    .0
}
