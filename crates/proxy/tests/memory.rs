//! Memory a hostile client cannot pin: bodies read for their model draw on a
//! bounded budget (held requests' bodies too), trickle against a whole-body
//! deadline and a minimum rate, and one client address may hold only so
//! many connections. Both monoio drivers.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use inferlb_core::{Command, IoDriver, PoolName, PoolSpec, Provider, Routing, State};
use inferlb_testkit::{eventually, FakeReplica, RawClient, ReplicaHandle};
use support::{pool_spec, start_state};

both_drivers!(
    a_body_the_budget_cannot_hold_is_routed_unread_or_refused,
    a_held_request_keeps_its_share_of_the_budget,
    a_body_held_in_memory_has_a_whole_body_deadline,
    a_body_slower_than_the_minimum_rate_gets_408,
    a_model_that_comes_first_routes_the_rest_unread,
    prefix_routing_reads_only_the_start_of_the_text,
    one_client_address_holds_at_most_its_connections,
);

/// Pools `a` and `b` of one echoing replica each; with `default`, a
/// default pool too.
fn pools(default: bool) -> (State, Vec<ReplicaHandle>) {
    let names = ["a1", "b1", "d1"];
    let handles: Vec<ReplicaHandle> = names
        .iter()
        .map(|n| FakeReplica::builder().name(n).echo().start().unwrap())
        .collect();
    let mut state = State::new(Routing::RoundRobin);
    for (name, pool) in [("a1", "a"), ("b1", "b"), ("d1", "default")] {
        if pool == "default" && !default {
            continue;
        }
        if pool != "default" {
            state
                .apply(Command::SetPool(Box::new(PoolSpec::named(
                    PoolName::new(pool).unwrap(),
                ))))
                .unwrap();
        }
        let h = &handles[names.iter().position(|n| *n == name).unwrap()];
        state
            .apply(Command::Add(pool_spec(name, h.addr(), pool)))
            .unwrap();
    }
    (state, handles)
}

/// A body whose `"model"` comes last, so it must be read whole.
fn model_last(model: &str, len: usize) -> String {
    let tail = format!(r#"","model":"{model}"}}"#);
    format!(r#"{{"prompt":"{}{tail}"#, "x".repeat(len - tail.len() - 12))
}

fn body_of(model: &str, len: usize) -> String {
    let head = format!(r#"{{"model":"{model}","prompt":""#);
    format!("{head}{}\"}}", "x".repeat(len - head.len() - 2))
}

fn post(client: &mut RawClient, headers: &str, body: &str) -> inferlb_testkit::RawResponse {
    let request = format!(
        "POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n{headers}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    client.send(request.as_bytes()).unwrap();
    client.read_response().unwrap()
}

fn a_body_the_budget_cannot_hold_is_routed_unread_or_refused(driver: IoDriver) {
    // One worker with 1 000 bytes to hold bodies in; this body is 2 000.
    let body = body_of("b", 2000);
    let budget = |c: &mut inferlb_core::Config| c.proxy.limits.inspect_budget_bytes = 1000;
    let (state, _replicas) = pools(false);
    let proxy = start_state(driver, state, budget);
    let mut client = RawClient::connect(proxy.addr()).unwrap();
    let resp = post(&mut client, "", &body);
    assert_eq!(resp.status, 503, "nothing else says where it goes");
    assert_eq!(resp.header("retry-after"), Some("1"));
    // The model header routes it without reading it.
    let mut client = RawClient::connect(proxy.addr()).unwrap();
    let resp = post(&mut client, "X-Model: a\r\n", &body);
    assert_eq!((resp.status, resp.header("x-replica")), (200, Some("a1")));
    assert_eq!(resp.body.len(), body.len(), "forwarded whole");
    // A small body still fits, and the budget came back after each request.
    let resp = post(&mut client, "", &body_of("b", 500));
    assert_eq!((resp.status, resp.header("x-replica")), (200, Some("b1")));
    // With a default pool, the body goes there unread.
    let (state, _replicas) = pools(true);
    let proxy = start_state(driver, state, budget);
    let mut client = RawClient::connect(proxy.addr()).unwrap();
    let resp = post(&mut client, "", &body);
    assert_eq!((resp.status, resp.header("x-replica")), (200, Some("d1")));
}

fn a_held_request_keeps_its_share_of_the_budget(driver: IoDriver) {
    // A pool that scales itself and has no replica: its requests are held.
    let mut spec = PoolSpec::named(PoolName::new("auto").unwrap());
    let mut scaling = inferlb_core::PoolAutoscaling::new(Provider::Exec {
        command: vec!["unused".into()],
        env: Vec::new(),
    });
    scaling.queue_timeout = Duration::from_secs(3);
    spec.autoscaling = Some(std::sync::Arc::new(scaling));
    let mut state = State::new(Routing::RoundRobin);
    state.apply(Command::SetPool(Box::new(spec))).unwrap();
    let proxy = start_state(driver, state, |c| {
        c.proxy.limits.inspect_budget_bytes = 1000
    });
    let held_body = body_of("auto", 600);
    let mut held = TcpStream::connect(proxy.addr()).unwrap();
    held.write_all(
        format!(
            "POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{held_body}",
            held_body.len()
        )
        .as_bytes(),
    )
    .unwrap();
    // While it waits for a first replica, its 600 bytes stay reserved: a
    // second body of 600 finds no room.
    let mut second = RawClient::connect(proxy.addr()).unwrap();
    assert!(eventually(Duration::from_secs(5), || {
        let resp = post(&mut second, "", &body_of("auto", 600));
        second = RawClient::connect(proxy.addr()).unwrap();
        resp.status == 503 && resp.header("retry-after") == Some("1")
    }));
    // The held one gives up (queue timeout) and gives its bytes back.
    held.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut answer = [0u8; 12];
    held.read_exact(&mut answer).unwrap();
    assert_eq!(&answer[9..12], b"503");
}

fn a_body_held_in_memory_has_a_whole_body_deadline(driver: IoDriver) {
    let (state, _replicas) = pools(false);
    let proxy = start_state(driver, state, |c| {
        c.proxy.timeouts.request_read = Duration::from_millis(500);
        c.proxy.limits.min_body_rate_bytes_per_s = 0;
    });
    // Ten bytes every 100 ms: every gap is short, the whole never arrives.
    let body = model_last("a", 200);
    let status = trickle(proxy.addr(), &body);
    assert_eq!(status.as_deref(), Some("408"));
}

fn a_body_slower_than_the_minimum_rate_gets_408(driver: IoDriver) {
    let (state, _replicas) = pools(false);
    let proxy = start_state(driver, state, |c| {
        c.proxy.limits.min_body_rate_bytes_per_s = 1000;
    });
    // 10 bytes every 100 ms is 100 B/s, a tenth of the minimum.
    let body = model_last("a", 5000);
    let status = trickle(proxy.addr(), &body);
    assert_eq!(status.as_deref(), Some("408"));
}

fn a_model_that_comes_first_routes_the_rest_unread(driver: IoDriver) {
    // 32 KiB to hold bodies in, and a 200 KB body that names its model
    // first: only its start is held, the rest streams to the replica.
    let (state, replicas) = pools(false);
    let proxy = start_state(driver, state, |c| {
        c.proxy.limits.inspect_budget_bytes = 32 * 1024
    });
    let body = body_of("b", 200_000);
    let mut client = RawClient::connect(proxy.addr()).unwrap();
    let resp = post(&mut client, "", &body);
    assert_eq!((resp.status, resp.header("x-replica")), (200, Some("b1")));
    assert_eq!(resp.body.len(), body.len(), "the replica got it all");
    assert_eq!(replicas[1].counters().requests(), 1);
    // Its model last, the same body must be read whole: over the budget.
    let resp = post(&mut client, "", &model_last("b", 200_000));
    assert_eq!(resp.status, 503);
    // A second "model" far into a body routed on its first is still
    // refused: the proxy answers, the replica's body is cut short.
    let twice = format!(
        r#"{{"model":"b","prompt":"{}","model":"a"}}"#,
        "x".repeat(200_000)
    );
    let mut client = RawClient::connect(proxy.addr()).unwrap();
    let resp = post(&mut client, "", &twice);
    assert_eq!(resp.status, 400);
    let error: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
    assert_eq!(error["error"]["code"], "duplicate_model");
    assert_eq!(resp.header("x-replica"), None, "answered by the proxy");
    assert_eq!(replicas[0].counters().requests(), 0);
}

fn prefix_routing_reads_only_the_start_of_the_text(driver: IoDriver) {
    // A pool of two replicas routing by the first KiB of text, 32 KiB to
    // hold bodies in, and 200 KB chats: only their start is held.
    let replicas: Vec<ReplicaHandle> = ["p1", "p2"]
        .iter()
        .map(|n| FakeReplica::builder().name(n).echo().start().unwrap())
        .collect();
    let mut state = State::new(Routing::RoundRobin);
    let mut spec = PoolSpec::named(PoolName::new("p").unwrap());
    spec.routing = Some(Routing::Prefix);
    spec.prefix.max_text_bytes = 1024;
    state.apply(Command::SetPool(Box::new(spec))).unwrap();
    for (name, h) in ["p1", "p2"].iter().zip(&replicas) {
        state
            .apply(Command::Add(pool_spec(name, h.addr(), "p")))
            .unwrap();
    }
    let proxy = start_state(driver, state, |c| {
        c.proxy.limits.inspect_budget_bytes = 32 * 1024
    });
    let chat = |tail: &str| {
        format!(
            r#"{{"model":"p","messages":[{{"role":"system","content":"{}"}},{{"role":"user","content":"{tail}"}}],"max_tokens":1}}"#,
            "s".repeat(2000)
        )
    };
    let mut client = RawClient::connect(proxy.addr()).unwrap();
    let mut served_by = Vec::new();
    for tail in ["a", "b", "c"] {
        let body = chat(&tail.repeat(200_000));
        // Read whole, it would not fit the budget: 503.
        let resp = post(&mut client, "", &body);
        assert_eq!(resp.status, 200, "{}", resp.text());
        assert_eq!(resp.body.len(), body.len(), "the replica got it all");
        served_by.push(resp.header("x-replica").unwrap().to_owned());
    }
    // The same first KiB of text: the replica that served it serves it again.
    assert!(
        served_by.iter().all(|r| *r == served_by[0]),
        "{served_by:?}"
    );
    // Its text after 200 KB of something else, the body must be read whole:
    // over the budget.
    let late = format!(
        r#"{{"model":"p","tools":"{}","messages":[{{"role":"user","content":"hi"}}]}}"#,
        "t".repeat(200_000)
    );
    let resp = post(&mut client, "", &late);
    assert_eq!(resp.status, 503);
}

/// Sends a POST's head at once and `body` ten bytes every 100 ms; returns
/// the status of the answer.
fn trickle(to: SocketAddr, body: &str) -> Option<String> {
    let mut client = TcpStream::connect(to).unwrap();
    let head = format!(
        "POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    client.write_all(head.as_bytes()).unwrap();
    trickle_until_answered(&mut client, body.as_bytes(), Duration::from_millis(100))
}

/// Sends `body` ten bytes at a time, `every` apart, until the proxy
/// answers; returns the answer's status (`None`: never answered).
fn trickle_until_answered(client: &mut TcpStream, body: &[u8], every: Duration) -> Option<String> {
    client.set_read_timeout(Some(every)).unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    for piece in body.chunks(10).chain(std::iter::repeat_n(&[][..], 100)) {
        if !piece.is_empty() && client.write_all(piece).is_err() {
            break;
        }
        match client.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                answer.extend_from_slice(&buf[..n]);
                if answer.len() >= 12 {
                    break;
                }
            }
            Err(_) => {}
        }
    }
    (answer.len() >= 12).then(|| String::from_utf8_lossy(&answer[9..12]).into_owned())
}

/// A connection from `from` (any 127.0.0.0/8 address is this machine).
fn connect_from(from: [u8; 4], to: SocketAddr) -> RawClient {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.bind(&SocketAddr::from((from, 0)).into()).unwrap();
    socket.connect(&to.into()).unwrap();
    RawClient::from_stream(socket.into()).unwrap()
}

fn one_client_address_holds_at_most_its_connections(driver: IoDriver) {
    let (state, _replicas) = pools(true);
    let proxy = start_state(driver, state, |c| {
        c.proxy.limits.max_connections_per_client = Some(2)
    });
    // Two served (so counted) and kept open.
    let mut kept: Vec<RawClient> = (0..2)
        .map(|_| {
            let mut c = connect_from([127, 0, 0, 1], proxy.addr());
            assert_eq!(c.get("/").unwrap().status, 200);
            c
        })
        .collect();
    let mut third = connect_from([127, 0, 0, 1], proxy.addr());
    assert!(third.get("/").is_err(), "a third connection was served");
    // Another address has its own.
    let mut other = connect_from([127, 0, 0, 2], proxy.addr());
    assert_eq!(other.get("/").unwrap().status, 200);
    // A closed connection frees its place.
    drop(kept.pop());
    assert!(eventually(Duration::from_secs(5), || {
        connect_from([127, 0, 0, 1], proxy.addr())
            .get("/")
            .is_ok_and(|r| r.status == 200)
    }));
}
