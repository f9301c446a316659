//! Pools over real sockets: the model from `X-Model` or a JSON body picks
//! the pool, `GET /v1/models` lists the pools, a model nobody serves gets
//! OpenAI's 404, `prefix` keeps a prompt prefix on one replica and
//! `least_load` follows the engines' own load. Both monoio drivers.

mod support;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use inferlb_core::{Command, EngineLoad, IoDriver, PoolName, PoolSpec, Routing, State};
use inferlb_testkit::{eventually, FakeReplica, RawClient, ReplicaHandle};
use support::{pool_spec, start_state};

both_drivers!(
    the_model_header_picks_the_pool,
    a_json_body_names_the_model_and_reaches_the_replica_unchanged,
    an_alias_in_the_body_is_forwarded_as_the_served_name,
    a_form_upload_is_routed_by_its_model_field,
    without_a_default_pool_a_model_nobody_serves_gets_404,
    a_body_over_the_inspect_limit_goes_to_the_default_pool_or_gets_413,
    the_proxy_lists_the_models_of_its_pools,
    prefix_routing_keeps_each_prefix_on_one_replica,
    least_load_follows_the_engines_queues,
    requests_without_a_json_body_are_not_held,
    front_end_metrics_count_every_answer_and_time_streams,
);

/// Echoing replicas named `names`, each in the pool of the same index.
fn replicas(names: &[&str]) -> Vec<ReplicaHandle> {
    names
        .iter()
        .map(|n| FakeReplica::builder().name(n).echo().start().unwrap())
        .collect()
}

fn pool(name: &str, aliases: &[&str], routing: Option<Routing>) -> PoolSpec {
    let mut spec = PoolSpec::named(PoolName::new(name).unwrap());
    spec.aliases = aliases.iter().map(|a| a.to_string()).collect();
    spec.routing = routing;
    spec
}

/// Pools `a` (alias `org/a`, two replicas a1 a2) and `b` (b1); with
/// `default`, also the default pool (d1).
fn fleet(default: bool) -> (State, Vec<ReplicaHandle>) {
    let handles = replicas(&["a1", "a2", "b1", "d1"]);
    let mut state = State::new(Routing::RoundRobin);
    state
        .apply(Command::SetPool(Box::new(pool("a", &["org/a"], None))))
        .unwrap();
    state
        .apply(Command::SetPool(Box::new(pool("b", &[], None))))
        .unwrap();
    let pools = ["a", "a", "b", "default"];
    for (i, h) in handles.iter().enumerate() {
        if pools[i] == "default" && !default {
            continue;
        }
        let id = ["a1", "a2", "b1", "d1"][i];
        state
            .apply(Command::Add(pool_spec(id, h.addr(), pools[i])))
            .unwrap();
    }
    (state, handles)
}

/// One pool `m` routing by `routing` over echoing replicas named `names`.
fn one_pool(routing: Routing, names: &[&str]) -> (State, Vec<ReplicaHandle>) {
    let handles = replicas(names);
    let mut state = State::new(Routing::RoundRobin);
    state
        .apply(Command::SetPool(Box::new(pool("m", &[], Some(routing)))))
        .unwrap();
    for (name, h) in names.iter().zip(&handles) {
        state
            .apply(Command::Add(pool_spec(name, h.addr(), "m")))
            .unwrap();
    }
    (state, handles)
}

fn post(
    client: &mut RawClient,
    path: &str,
    headers: &str,
    body: &str,
) -> inferlb_testkit::RawResponse {
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: t\r\n{headers}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    client.send(request.as_bytes()).unwrap();
    client.read_response().unwrap()
}

fn replica_of(resp: &inferlb_testkit::RawResponse) -> String {
    resp.header("x-replica").unwrap_or("?").to_owned()
}

fn the_model_header_picks_the_pool(driver: IoDriver) {
    let (state, _handles) = fleet(true);
    let proxy = start_state(driver, state, |_| {});
    let mut client = RawClient::connect(proxy.addr()).unwrap();
    let mut seen = HashSet::new();
    for _ in 0..4 {
        let resp = post(&mut client, "/v1/completions", "X-Model: a\r\n", "{}");
        assert_eq!(resp.status, 200);
        seen.insert(replica_of(&resp));
    }
    assert_eq!(seen, HashSet::from(["a1".to_owned(), "a2".to_owned()]));
    let resp = post(&mut client, "/x", "x-model: org/a\r\n", "");
    assert!(
        replica_of(&resp).starts_with('a'),
        "an alias names the pool"
    );
    let resp = post(&mut client, "/x", "X-Model: b\r\n", "");
    assert_eq!(replica_of(&resp), "b1");
    // No model, or one no pool serves: the default pool.
    assert_eq!(replica_of(&client.get("/").unwrap()), "d1");
    let resp = post(&mut client, "/x", "X-Model: nobody\r\n", "");
    assert_eq!(replica_of(&resp), "d1");
}

fn a_json_body_names_the_model_and_reaches_the_replica_unchanged(driver: IoDriver) {
    let (state, _handles) = fleet(true);
    let proxy = start_state(driver, state, |_| {});
    let mut client = RawClient::connect(proxy.addr()).unwrap();
    let body =
        r#"{"messages":[{"role":"user","content":"hi \"there\""}],"model":"b","stream":false}"#;
    let json = "Content-Type: application/json; charset=utf-8\r\n";
    let resp = post(&mut client, "/v1/chat/completions", json, body);
    assert_eq!(replica_of(&resp), "b1");
    assert_eq!(resp.text(), body, "forwarded byte for byte");
    // The header wins over the body.
    let resp = post(
        &mut client,
        "/v1/chat/completions",
        &format!("{json}X-Model: a\r\n"),
        body,
    );
    assert!(replica_of(&resp).starts_with('a'));
    // A chunked body, the model split across chunks, with 100-continue.
    let chunked = "POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n";
    client.send(chunked.as_bytes()).unwrap();
    let interim = client.read_head().unwrap();
    assert_eq!(
        interim.status, 100,
        "the proxy asks for the body it inspects"
    );
    client
        .send(b"9\r\n{\"model\":\r\n8\r\n\"org/a\"}\r\n0\r\n\r\n")
        .unwrap();
    let resp = client.read_response().unwrap();
    assert!(replica_of(&resp).starts_with('a'), "{resp:?}");
    // The alias goes out as the name the pool's replicas serve.
    assert_eq!(resp.text(), "{\"model\":\"a\"}");
    // Not JSON (by its content type) on a path of another API: not looked
    // into, default pool.
    let resp = post(
        &mut client,
        "/generate",
        "Content-Type: text/plain\r\n",
        body,
    );
    assert_eq!(replica_of(&resp), "d1");
    // On OpenAI's JSON API: 415 naming the type it takes (as curl's `-d`
    // without `-H 'Content-Type: application/json'` sends).
    for path in ["/v1/completions", "/v1/chat/completions?x=1"] {
        let mut client = RawClient::connect(proxy.addr()).unwrap();
        let resp = post(
            &mut client,
            path,
            "Content-Type: application/x-www-form-urlencoded\r\n",
            body,
        );
        assert_eq!(resp.status, 415, "{path}");
        let error: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
        assert_eq!(error["error"]["code"], "unsupported_media_type");
        assert!(error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("application/json"));
    }
}

fn an_alias_in_the_body_is_forwarded_as_the_served_name(driver: IoDriver) {
    let (mut state, _handles) = fleet(true);
    // Pool b's replicas serve "org/b-instruct", whatever name clients use.
    let mut b = pool("b", &["b-alias"], None);
    b.served_model_name = Some("org/b-instruct".into());
    state.apply(Command::SetPool(Box::new(b))).unwrap();
    let proxy = start_state(driver, state, |c| {
        c.proxy.model.max_inspect_body_bytes = 4096
    });
    let mut client = RawClient::connect(proxy.addr()).unwrap();
    let json = "Content-Type: application/json\r\n";
    // By alias, by the pool's name, escaped: only the model string changes
    // and the replica reads exactly the new length.
    for (sent, forwarded) in [
        (
            r#"{"model": "org/a", "prompt":"hi","n":1}"#,
            r#"{"model": "a", "prompt":"hi","n":1}"#,
        ),
        (
            r#"{"prompt":"model","model":"b","n":1}"#,
            r#"{"prompt":"model","model":"org/b-instruct","n":1}"#,
        ),
        (
            r#"{"model":"b-al\u0069as"}"#,
            r#"{"model":"org/b-instruct"}"#,
        ),
    ] {
        let resp = post(&mut client, "/v1/completions", json, sent);
        assert_eq!(resp.status, 200, "{sent}");
        assert_eq!(resp.text(), forwarded, "{sent}");
    }
    // The served name itself, a model only the default pool takes, and a
    // model named by the header: the body is untouched.
    for (headers, body) in [
        (json.to_owned(), r#"{"model":"a"}"#),
        (json.to_owned(), r#"{"model":"org/b-instruct"}"#),
        (json.to_owned(), r#"{"model":"unknown"}"#),
        (format!("{json}X-Model: org/a\r\n"), r#"{"model":"org/a"}"#),
    ] {
        let resp = post(&mut client, "/v1/completions", &headers, body);
        assert_eq!(resp.status, 200, "{body}");
        assert_eq!(resp.text(), body, "{headers}");
    }
    // A body whose model comes first is routed on its start, the rest
    // streamed (when it arrives later): the start is rewritten, the rest
    // follows as sent, and a Content-Length with fewer digits moves the
    // head's end. Either way the replica reads exactly the new body.
    let tail = "x".repeat(1_002 - 29);
    let sent = format!(r#"{{"model":"org/a","prompt":"{tail}"}}"#);
    let forwarded = format!(r#"{{"model":"a","prompt":"{tail}"}}"#);
    assert_eq!((sent.len(), forwarded.len()), (1_002, 998));
    client
        .send(
            format!(
                "POST /v1/completions HTTP/1.1\r\nHost: t\r\n{json}Content-Length: {}\r\n\r\n{}",
                sent.len(),
                &sent[..40]
            )
            .as_bytes(),
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(50));
    client.send(&sent.as_bytes()[40..]).unwrap();
    let resp = client.read_response().unwrap();
    assert_eq!(resp.status, 200);
    assert!(resp.text() == forwarded, "body rewritten at its start");
    // Chunked: re-sent as one chunk.
    let head = "POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
    client
        .send(format!("{head}5\r\n{{\"mod\r\n10\r\nel\": \"b-alias\" }}\r\n0\r\n\r\n").as_bytes())
        .unwrap();
    let resp = client.read_response().unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), r#"{"model": "org/b-instruct" }"#);
    // The connection is still in step after all of them.
    assert_eq!(post(&mut client, "/v1/completions", json, "{}").status, 200);
}

/// A `multipart/form-data` body as OpenAI's SDKs send an audio upload: the
/// fields, then the file.
fn form(boundary: &str, model: &str, file: &[u8]) -> Vec<u8> {
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\n{model}\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"response_format\"\r\n\r\njson\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\nContent-Type: audio/wav\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(file);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    body
}

fn a_form_upload_is_routed_by_its_model_field(driver: IoDriver) {
    let (state, _handles) = fleet(false);
    let proxy = start_state(driver, state, |c| {
        c.proxy.model.max_inspect_body_bytes = 4096
    });
    let mut client = RawClient::connect(proxy.addr()).unwrap();
    let upload = |client: &mut RawClient, body: &[u8], content_type: &str| {
        let head = format!(
            "POST /v1/audio/transcriptions HTTP/1.1\r\nHost: t\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        client.send(head.as_bytes()).unwrap();
        client.send(body).unwrap();
        client.read_response().unwrap()
    };
    let boundary = "a7f3c9e0d1b2";
    let content_type = format!("multipart/form-data; boundary={boundary}");
    // A small form, and one whose file is far over the inspection limit:
    // the field at its start routes it, the file streams unread.
    for file_len in [100, 64 * 1024] {
        let file: Vec<u8> = (0..file_len).map(|i| (i % 251) as u8).collect();
        let resp = upload(&mut client, &form(boundary, "b", &file), &content_type);
        assert_eq!(replica_of(&resp), "b1", "{file_len}");
        assert_eq!(resp.body, form(boundary, "b", &file), "forwarded unchanged");
        // By alias: the field's value is rewritten to the served name.
        let resp = upload(&mut client, &form(boundary, "org/a", &file), &content_type);
        assert!(replica_of(&resp).starts_with('a'), "{file_len}");
        assert_eq!(resp.body, form(boundary, "a", &file), "{file_len}");
    }
    // A quoted boundary; a model nobody serves is OpenAI's 404.
    let quoted = format!("multipart/form-data; boundary=\"{boundary}\"");
    let resp = upload(&mut client, &form(boundary, "whisper-9", b"x"), &quoted);
    assert_eq!(resp.status, 404);
    let error: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
    assert_eq!(error["error"]["code"], "model_not_found");
}

fn without_a_default_pool_a_model_nobody_serves_gets_404(driver: IoDriver) {
    let (state, _handles) = fleet(false);
    let proxy = start_state(driver, state, |_| {});
    let mut client = RawClient::connect(proxy.addr()).unwrap();
    let json = "Content-Type: application/json\r\n";
    for (headers, body) in [
        (json.to_owned(), r#"{"model":"gpt-9","prompt":"x"}"#),
        (format!("{json}X-Model: gpt-9\r\n"), "{}"),
        (json.to_owned(), r#"{"prompt":"no model"}"#),
    ] {
        let resp = post(&mut client, "/v1/completions", &headers, body);
        assert_eq!(resp.status, 404, "{headers} {body}");
        let error: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
        assert_eq!(error["error"]["code"], "model_not_found");
        assert_eq!(error["error"]["type"], "invalid_request_error");
        assert!(error["error"]["message"].as_str().unwrap().len() > 10);
    }
    // The connection stays usable: the body was read whole.
    let resp = post(&mut client, "/v1/completions", json, r#"{"model":"a"}"#);
    assert_eq!(resp.status, 200);
    // A body that names its model twice is refused, not read as no model
    // (or as whichever one the replica's parser would keep).
    let mut client = RawClient::connect(proxy.addr()).unwrap();
    let resp = post(
        &mut client,
        "/v1/completions",
        json,
        r#"{"model":"a","prompt":"x","model":"b"}"#,
    );
    assert_eq!(resp.status, 400);
    let error: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
    assert_eq!(error["error"]["code"], "duplicate_model");
    // Malformed JSON is 400, not a 404 saying it names no model.
    let mut client = RawClient::connect(proxy.addr()).unwrap();
    let resp = post(
        &mut client,
        "/v1/completions",
        json,
        r#"{"model": "a", "prompt": "#,
    );
    assert_eq!(resp.status, 400);
    let error: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
    assert_eq!(error["error"]["code"], "invalid_json");
}

fn a_body_over_the_inspect_limit_goes_to_the_default_pool_or_gets_413(driver: IoDriver) {
    let big = format!(r#"{{"model":"b","prompt":"{}"}}"#, "x".repeat(4096));
    let json = "Content-Type: application/json\r\n";
    let (state, _handles) = fleet(true);
    let proxy = start_state(driver, state, |c| {
        c.proxy.model.max_inspect_body_bytes = 1024
    });
    let mut client = RawClient::connect(proxy.addr()).unwrap();
    let resp = post(&mut client, "/v1/completions", json, &big);
    assert_eq!(replica_of(&resp), "d1", "too big to read: the default pool");
    assert_eq!(resp.body.len(), big.len());
    let small = r#"{"model":"b"}"#;
    assert_eq!(replica_of(&post(&mut client, "/", json, small)), "b1");

    let (state, _handles) = fleet(false);
    let proxy = start_state(driver, state, |c| {
        c.proxy.model.max_inspect_body_bytes = 1024
    });
    let mut client = RawClient::connect(proxy.addr()).unwrap();
    let resp = post(&mut client, "/v1/completions", json, &big);
    assert_eq!(resp.status, 413);
    assert_eq!(resp.header("connection"), Some("close"));
    // The answer names the limit and the way around it.
    let error: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
    let message = error["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("routing.max_inspect_body_bytes") && message.contains("1024"),
        "{message}"
    );
    assert!(message.contains("x-model"), "{message}");
    // The limit counts the payload, not a chunked body's framing: 900
    // bytes in 8-byte chunks (about 1 500 bytes on the wire) are read.
    let mut client = RawClient::connect(proxy.addr()).unwrap();
    let payload = format!(r#"{{"model":"b","prompt":"{}"}}"#, "y".repeat(870));
    let mut wire = String::from("POST / HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n");
    for piece in payload.as_bytes().chunks(8) {
        wire.push_str(&format!(
            "{:x}\r\n{}\r\n",
            piece.len(),
            std::str::from_utf8(piece).unwrap()
        ));
    }
    wire.push_str("0\r\n\r\n");
    assert!(wire.len() > 1024 + 200);
    client.send(wire.as_bytes()).unwrap();
    let resp = client.read_response().unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(replica_of(&resp), "b1");
    // Chunked, discovered while reading.
    let mut client = RawClient::connect(proxy.addr()).unwrap();
    let head = "POST / HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
    client
        .send(format!("{head}{:x}\r\n{big}\r\n0\r\n\r\n", big.len()).as_bytes())
        .unwrap();
    assert_eq!(client.read_response().unwrap().status, 413);
}

fn the_proxy_lists_the_models_of_its_pools(driver: IoDriver) {
    let (mut state, _handles) = fleet(false);
    // A pool whose only replica drains is not listed.
    let c = FakeReplica::builder().name("c1").start().unwrap();
    state
        .apply(Command::Add(pool_spec("c1", c.addr(), "c")))
        .unwrap();
    state
        .apply(Command::SetState {
            id: inferlb_core::ReplicaId::new("c1").unwrap(),
            state: inferlb_core::ReplicaState::Draining,
        })
        .unwrap();
    let proxy = start_state(driver, state, |_| {});
    let mut client = RawClient::connect(proxy.addr()).unwrap();
    let resp = client.get("/v1/models").unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("x-replica"), None, "answered by the proxy");
    let list: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
    assert_eq!(list["object"], "list");
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["a", "org/a", "b"]);
    assert!(list["data"][0]["created"].is_u64());
    assert_eq!(list["data"][0]["object"], "model");
    let resp = client.get("/v1/models/org/a").unwrap();
    assert_eq!(resp.status, 200);
    let model: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
    assert_eq!(model["id"], "org/a");
    // As clients send an id with a `/` (`urllib.parse.quote(id, safe="")`).
    let resp = client.get("/v1/models/org%2Fa").unwrap();
    assert_eq!(resp.status, 200);
    let model: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
    assert_eq!(model["id"], "org/a");
    let resp = client.get("/v1/models/c").unwrap();
    assert_eq!(resp.status, 404);

    // With only the default pool the replicas list their own models.
    let d = FakeReplica::builder().name("d1").start().unwrap();
    let mut state = State::new(Routing::RoundRobin);
    state
        .apply(Command::Add(pool_spec("d1", d.addr(), "default")))
        .unwrap();
    let proxy = start_state(driver, state, |_| {});
    let resp = RawClient::connect(proxy.addr())
        .unwrap()
        .get("/v1/models")
        .unwrap();
    assert_eq!(resp.header("x-replica"), Some("d1"));
}

fn prefix_routing_keeps_each_prefix_on_one_replica(driver: IoDriver) {
    let (state, _handles) = one_pool(Routing::Prefix, &["p1", "p2", "p3"]);
    let proxy = start_state(driver, state, |_| {});
    let mut client = RawClient::connect(proxy.addr()).unwrap();
    let json = "Content-Type: application/json\r\n";
    let mut owners: HashMap<usize, HashSet<String>> = HashMap::new();
    for question in 0..5 {
        for system in 0..6 {
            let prompt = format!("system prompt {system}: {}", "be helpful. ".repeat(200));
            let body = serde_json::json!({
                "model": "m",
                "messages": [
                    {"role": "system", "content": prompt},
                    {"role": "user", "content": format!("question {question}")},
                ],
            })
            .to_string();
            let resp = post(&mut client, "/v1/chat/completions", json, &body);
            assert_eq!(resp.status, 200);
            owners.entry(system).or_default().insert(replica_of(&resp));
        }
    }
    for (system, replicas) in &owners {
        assert_eq!(
            replicas.len(),
            1,
            "system prompt {system} went to {replicas:?}"
        );
    }
    let used: HashSet<&String> = owners.values().flatten().collect();
    assert!(
        used.len() >= 2,
        "new prefixes go to the least loaded: {owners:?}"
    );
    // Removing a replica forgets its prefixes; its prompts move on.
    let mut proxy = proxy;
    let gone = owners[&0].iter().next().unwrap().clone();
    proxy.apply(Command::Remove {
        id: inferlb_core::ReplicaId::new(&gone).unwrap(),
    });
    let prompt = format!("system prompt 0: {}", "be helpful. ".repeat(200));
    let body =
        serde_json::json!({"model": "m", "messages": [{"role": "system", "content": prompt}]})
            .to_string();
    let resp = post(&mut client, "/v1/chat/completions", json, &body);
    assert_ne!(replica_of(&resp), gone);
}

fn least_load_follows_the_engines_queues(driver: IoDriver) {
    let (state, _handles) = one_pool(Routing::LeastLoad, &["l1", "l2", "l3"]);
    let proxy = start_state(driver, state, |_| {});
    // l1 and l2 report long queues; l3 a short one.
    let now = inferlb_core::clock::now_ms();
    for (r, waiting) in proxy.state.replicas().iter().zip([12.0, 9.0, 1.0]) {
        let load = EngineLoad {
            waiting,
            running: 4.0,
            kv_usage: 0.5,
        };
        r.stats.record_engine(load, now, 60_000);
    }
    let mut client = RawClient::connect(proxy.addr()).unwrap();
    for _ in 0..6 {
        let resp = post(&mut client, "/", "X-Model: m\r\n", "");
        assert_eq!(replica_of(&resp), "l3");
    }
    // Stale metrics fall back to inferlb's own count: spread again.
    for r in proxy.state.replicas() {
        r.stats.record_engine(EngineLoad::default(), now, 0);
    }
    std::thread::sleep(Duration::from_millis(20));
    let seen: HashSet<String> = (0..6)
        .map(|_| replica_of(&post(&mut client, "/", "X-Model: m\r\n", "")))
        .collect();
    assert!(seen.len() >= 2, "{seen:?}");
}

fn requests_without_a_json_body_are_not_held(driver: IoDriver) {
    let (state, _handles) = fleet(true);
    let proxy = start_state(driver, state, |_| {});
    let mut client = RawClient::connect(proxy.addr()).unwrap();
    // A JSON content type on a GET: no body to wait for.
    client
        .send(b"GET / HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\r\n")
        .unwrap();
    client.set_read_timeout(Duration::from_secs(2)).unwrap();
    assert_eq!(client.read_response().unwrap().status, 200);
    // A streamed upload that names its model in the header starts at once:
    // the replica answers before the body is complete.
    let slow = FakeReplica::builder().name("b-slow").start().unwrap();
    let mut state = State::new(Routing::RoundRobin);
    state
        .apply(Command::Add(pool_spec("s1", slow.addr(), "b")))
        .unwrap();
    state
        .apply(Command::Add(pool_spec("s2", slow.addr(), "default")))
        .unwrap_err();
    let proxy = start_state(driver, state, |_| {});
    let mut client = RawClient::connect(proxy.addr()).unwrap();
    client
        .send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nX-Model: b\r\nContent-Length: 10\r\n\r\n{\"a\"")
        .unwrap();
    assert!(
        eventually(Duration::from_secs(5), || slow.counters().requests() == 1),
        "the head did not go on without the body"
    );
    client.send(b":1234}").unwrap();
    assert_eq!(client.read_response().unwrap().status, 200);
}

/// The front-end counters see what clients saw, the proxy's own answers
/// included (a model nobody serves, a pool with no replica), with a model
/// nobody serves counted as "unknown"; a stream's time to first token and
/// its inter-token gaps land in its pool's histograms.
fn front_end_metrics_count_every_answer_and_time_streams(driver: IoDriver) {
    let streaming = FakeReplica::builder()
        .name("s1")
        .tokens(5, Duration::from_millis(20))
        .start()
        .unwrap();
    let mut state = State::new(Routing::RoundRobin);
    state
        .apply(Command::SetPool(Box::new(pool("s", &["org/s"], None))))
        .unwrap();
    state
        .apply(Command::SetPool(Box::new(pool("empty", &[], None))))
        .unwrap();
    state
        .apply(Command::Add(pool_spec("s1", streaming.addr(), "s")))
        .unwrap();
    let proxy = start_state(driver, state, |_| {});
    let mut client = RawClient::connect(proxy.addr()).unwrap();
    let json = "Content-Type: application/json\r\n";
    for (body, status) in [
        (r#"{"model":"org/s","stream":true}"#, 200),
        (r#"{"model":"gpt-9"}"#, 404),
        (r#"{"model":"empty"}"#, 503),
    ] {
        let mut client = RawClient::connect(proxy.addr()).unwrap();
        let resp = post(&mut client, "/v1/completions", json, body);
        assert_eq!(resp.status, status, "{body}: {}", resp.text());
    }
    drop(client.get("/"));
    let front = proxy.handle.front_end();
    let count = |pool: &str, model: &str, class: &str| {
        front
            .pools()
            .into_iter()
            .filter(|(p, _)| p == pool)
            .flat_map(|(_, f)| f.models())
            .filter(|(m, _)| m == model)
            .flat_map(|(_, c)| c.counts())
            .filter(|(k, _)| *k == class)
            .map(|(_, n)| n)
            .sum::<u64>()
    };
    assert!(
        eventually(Duration::from_secs(2), || count("s", "org/s", "2xx") == 1),
        "{:?}",
        front
            .pools()
            .iter()
            .map(|(p, _)| p.clone())
            .collect::<Vec<_>>()
    );
    assert_eq!(
        count("", "unknown", "4xx"),
        1,
        "404 for a model nobody serves"
    );
    assert_eq!(
        count("empty", "empty", "5xx"),
        1,
        "503 for a pool without a replica"
    );
    let (_, s) = front.pools().into_iter().find(|(p, _)| p == "s").unwrap();
    assert_eq!(s.ttft.snapshot().count, 1);
    assert!(s.itl.snapshot().count >= 3, "{:?}", s.itl.snapshot());
}
