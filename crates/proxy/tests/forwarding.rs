//! End to end: routing, keep-alive, streaming, headers and upstream failures,
//! over real sockets on 127.0.0.1, each test on both monoio drivers.

mod support;

use std::collections::HashMap;
use std::io::Write;
use std::time::{Duration, Instant};

use inferlb_core::{IoDriver, Routing};
use inferlb_testkit::{eventually, Failure, FakeReplica, Framing, Latency, RawClient};
use support::{start, start_weighted};

both_drivers!(
    round_robin_gives_equal_shares,
    weights_three_to_one_are_honoured,
    keep_alive_reuses_upstream_connections,
    chunked_upload_arrives_byte_identical,
    first_sse_event_arrives_before_the_last_is_sent,
    client_disconnect_mid_stream_reaches_the_replica,
    client_disconnect_while_waiting_reaches_the_replica,
    dead_replica_is_skipped,
    all_replicas_dead_gives_502,
    no_replicas_gives_503,
    hanging_replica_gives_504,
    failure_after_head_closes_the_client,
    failure_before_head_gives_502,
    headers_are_rewritten,
    request_id_is_kept_or_generated,
    pipelined_requests_are_answered_in_order,
    expect_continue_works,
    bodiless_responses_carry_no_body,
    stale_pooled_connection_is_replaced,
    http10_client_gets_a_closed_delimited_response,
    chunked_response_passes_through,
    interim_responses_pass_through,
    slow_body_streams_without_buffering,
);

fn replica_name(resp: &inferlb_testkit::RawResponse) -> String {
    resp.header("x-replica").unwrap_or("?").to_owned()
}

fn round_robin_gives_equal_shares(driver: IoDriver) {
    let replicas: Vec<_> = (0..3)
        .map(|i| {
            FakeReplica::builder()
                .name(&format!("r{i}"))
                .start()
                .unwrap()
        })
        .collect();
    let addrs: Vec<_> = replicas.iter().map(|r| r.addr()).collect();
    let proxy = start(driver, &addrs, |_| {});
    let mut client = RawClient::connect(proxy.addr()).unwrap();
    let mut shares: HashMap<String, usize> = HashMap::new();
    for _ in 0..300 {
        let resp = client.get("/v1/models").unwrap();
        assert_eq!(resp.status, 200);
        *shares.entry(replica_name(&resp)).or_default() += 1;
    }
    assert_eq!(shares.len(), 3, "{shares:?}");
    assert!(shares.values().all(|&n| n == 100), "{shares:?}");
}

fn weights_three_to_one_are_honoured(driver: IoDriver) {
    let a = FakeReplica::builder().name("a").start().unwrap();
    let b = FakeReplica::builder().name("b").start().unwrap();
    let proxy = start_weighted(driver, &[(a.addr(), 3), (b.addr(), 1)], |c| {
        c.routing = Routing::WeightedRoundRobin;
    });
    let mut client = RawClient::connect(proxy.addr()).unwrap();
    let mut shares: HashMap<String, usize> = HashMap::new();
    for _ in 0..400 {
        *shares
            .entry(replica_name(&client.get("/").unwrap()))
            .or_default() += 1;
    }
    assert_eq!(shares["a"], 300, "{shares:?}");
    assert_eq!(shares["b"], 100, "{shares:?}");
}

fn keep_alive_reuses_upstream_connections(driver: IoDriver) {
    let replica = FakeReplica::builder().start().unwrap();
    let proxy = start(driver, &[replica.addr()], |c| {
        c.proxy.upstream.max_idle_per_replica = 4
    });
    let mut clients: Vec<_> = (0..4)
        .map(|_| RawClient::connect(proxy.addr()).unwrap())
        .collect();
    for i in 0..1000 {
        let client = &mut clients[i % 4];
        assert_eq!(client.get("/").unwrap().status, 200);
    }
    assert_eq!(replica.counters().requests(), 1000);
    let connections = replica.counters().connections();
    assert!(
        connections <= 4,
        "{connections} upstream connections for 1000 sequential requests"
    );
}

fn chunked_upload_arrives_byte_identical(driver: IoDriver) {
    let replica = FakeReplica::builder().echo().start().unwrap();
    let proxy = start(driver, &[replica.addr()], |_| {});
    let body: Vec<u8> = (0..8 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let mut client = RawClient::connect(proxy.addr()).unwrap();
    client
        .send(b"POST /upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        .unwrap();
    for chunk in body.chunks(100_003) {
        let mut framed = format!("{:x}\r\n", chunk.len()).into_bytes();
        framed.extend_from_slice(chunk);
        framed.extend_from_slice(b"\r\n");
        client.send(&framed).unwrap();
    }
    client.send(b"0\r\n\r\n").unwrap();
    let resp = client.read_response().unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body.len(), body.len());
    assert!(resp.body == body, "the echoed body differs");
    assert_eq!(
        replica.counters().last_request().unwrap().body_len,
        body.len()
    );
}

fn first_sse_event_arrives_before_the_last_is_sent(driver: IoDriver) {
    let interval = Duration::from_millis(100);
    let replica = FakeReplica::builder().tokens(10, interval).start().unwrap();
    let proxy = start(driver, &[replica.addr()], |_| {});
    let mut client = RawClient::connect(proxy.addr()).unwrap();
    let started = Instant::now();
    client
        .send(b"POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n{}")
        .unwrap();
    let head = client.read_head().unwrap();
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-type"), Some("text/event-stream"));
    let first = client.read_until(b"\n\n").unwrap();
    let first_at = started.elapsed();
    assert!(String::from_utf8_lossy(&first).contains("tok0"));
    let second = client.read_until(b"\n\n").unwrap();
    let second_at = started.elapsed();
    assert!(String::from_utf8_lossy(&second).contains("tok1"));
    // The replica sends the last token after 9 intervals; each event must
    // arrive on its own, not batched until the end.
    assert!(first_at < interval * 5, "first event after {first_at:?}");
    assert!(
        second_at >= first_at + interval / 2,
        "events coalesced: {first_at:?} then {second_at:?}"
    );
    client.read_until(b"[DONE]").unwrap();
}

fn client_disconnect_mid_stream_reaches_the_replica(driver: IoDriver) {
    let replica = FakeReplica::builder()
        .tokens(200, Duration::from_millis(50))
        .start()
        .unwrap();
    let proxy = start(driver, &[replica.addr()], |_| {});
    let mut client = RawClient::connect(proxy.addr()).unwrap();
    client
        .send(b"GET /stream HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    client.read_head().unwrap();
    client.read_until(b"\n\n").unwrap();
    drop(client);
    let gone = Instant::now();
    assert!(
        eventually(Duration::from_secs(1), || replica
            .counters()
            .cancellations()
            == 1),
        "the replica did not see the cancellation within 1 s"
    );
    assert!(gone.elapsed() < Duration::from_secs(1));
    assert!(eventually(Duration::from_secs(1), || replica
        .counters()
        .open_connections()
        == 0));
}

fn client_disconnect_while_waiting_reaches_the_replica(driver: IoDriver) {
    // A long non-streaming generation: the client leaves before the head.
    let replica = FakeReplica::builder()
        .latency(Latency::Fixed(Duration::from_secs(30)))
        .start()
        .unwrap();
    let proxy = start(driver, &[replica.addr()], |_| {});
    let mut client = RawClient::connect(proxy.addr()).unwrap();
    client
        .send(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert!(eventually(Duration::from_secs(2), || replica
        .counters()
        .requests()
        == 1));
    drop(client);
    assert!(
        eventually(Duration::from_secs(1), || replica
            .counters()
            .cancellations()
            == 1),
        "the replica kept generating for a client that left"
    );
}

fn dead_replica_is_skipped(driver: IoDriver) {
    let dead = FakeReplica::builder()
        .failure(Failure::Refuse)
        .start()
        .unwrap();
    let a = FakeReplica::builder().name("a").start().unwrap();
    let b = FakeReplica::builder().name("b").start().unwrap();
    let proxy = start(driver, &[dead.addr(), a.addr(), b.addr()], |_| {});
    let mut client = RawClient::connect(proxy.addr()).unwrap();
    for _ in 0..30 {
        assert_eq!(client.get("/").unwrap().status, 200);
    }
    assert_eq!(a.counters().requests() + b.counters().requests(), 30);
    // Five refused connects in a row eject it; after that it is not tried.
    let snapshot = proxy.snapshots.load();
    let dead_stats = &snapshot.replicas()[0].stats;
    assert_eq!(dead_stats.connect_errors(), 5);
    assert_eq!(dead_stats.ejections(), 1);
}

fn all_replicas_dead_gives_502(driver: IoDriver) {
    let dead1 = FakeReplica::builder()
        .failure(Failure::Refuse)
        .start()
        .unwrap();
    let dead2 = FakeReplica::builder()
        .failure(Failure::Refuse)
        .start()
        .unwrap();
    let proxy = start(driver, &[dead1.addr(), dead2.addr()], |_| {});
    let mut client = RawClient::connect(proxy.addr()).unwrap();
    let resp = client.get("/").unwrap();
    assert_eq!(resp.status, 502);
    assert!(resp.text().contains("bad_gateway"));
    // The connection stays usable for the next request.
    assert_eq!(client.get("/").unwrap().status, 502);
}

fn no_replicas_gives_503(driver: IoDriver) {
    let proxy = start(driver, &[], |_| {});
    let mut client = RawClient::connect(proxy.addr()).unwrap();
    let resp = client.get("/").unwrap();
    assert_eq!(resp.status, 503);
    assert_eq!(resp.header("retry-after"), Some("1"));
    assert_eq!(resp.header("content-type"), Some("application/json"));
    assert!(resp.text().contains("no_routable_replica"));
    assert!(resp.header("x-request-id").is_some());
}

fn hanging_replica_gives_504(driver: IoDriver) {
    let replica = FakeReplica::builder()
        .failure(Failure::Hang)
        .start()
        .unwrap();
    let proxy = start(driver, &[replica.addr()], |c| {
        c.proxy.timeouts.upstream_response = Duration::from_millis(300);
    });
    let mut client = RawClient::connect(proxy.addr()).unwrap();
    let started = Instant::now();
    let resp = client.get("/").unwrap();
    assert_eq!(resp.status, 504);
    // Not before the timeout, within the timer wheel's millisecond
    // rounding (it fired at 299.x ms once in many runs).
    assert!(started.elapsed() >= Duration::from_millis(295));
    // The client's connection stays usable; the replica's is closed.
    assert_eq!(client.get("/").unwrap().status, 504);
    assert!(eventually(Duration::from_secs(2), || replica
        .counters()
        .open_connections()
        == 0));
}

fn failure_after_head_closes_the_client(driver: IoDriver) {
    let replica = FakeReplica::builder()
        .body_bytes(10_000)
        .failure(Failure::CloseMidStream(100))
        .start()
        .unwrap();
    let proxy = start(driver, &[replica.addr()], |_| {});
    let mut client = RawClient::connect(proxy.addr()).unwrap();
    client.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let head = client.read_head().unwrap();
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("10000"));
    // The body stops short and the connection closes: never a response that
    // looks complete.
    let mut got = Vec::new();
    let err = loop {
        match client.read_until(b"\0") {
            Ok(bytes) => got.extend(bytes),
            Err(e) => break e,
        }
    };
    assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);

    // The same through a chunked stream.
    let streaming = FakeReplica::builder()
        .tokens(10, Duration::from_millis(10))
        .failure(Failure::CloseMidStream(3))
        .start()
        .unwrap();
    let proxy = start(driver, &[streaming.addr()], |_| {});
    let mut client = RawClient::connect(proxy.addr()).unwrap();
    client.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    assert!(
        client.read_response().is_err(),
        "a cut stream must not end cleanly"
    );
}

fn failure_before_head_gives_502(driver: IoDriver) {
    let replica = FakeReplica::builder()
        .failure(Failure::CloseOnRequest)
        .start()
        .unwrap();
    let proxy = start(driver, &[replica.addr()], |_| {});
    let mut client = RawClient::connect(proxy.addr()).unwrap();
    assert_eq!(client.get("/").unwrap().status, 502);
    assert_eq!(
        client.get("/").unwrap().status,
        502,
        "a 502 closed a connection that could be kept"
    );
}

fn headers_are_rewritten(driver: IoDriver) {
    let replica = FakeReplica::builder().start().unwrap();
    let proxy = start(driver, &[replica.addr()], |_| {});
    let mut client = RawClient::connect(proxy.addr()).unwrap();
    client
        .send(
            b"GET /v1/models HTTP/1.1\r\nHost: models.example\r\nConnection: keep-alive, X-Secret\r\n\
              X-Secret: drop-me\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nUpgrade: websocket\r\n\
              Proxy-Connection: keep-alive\r\nX-Forwarded-For: 10.0.0.1\r\nX-Forwarded-Proto: https\r\n\
              Authorization: Bearer abc\r\n\r\n",
        )
        .unwrap();
    let resp = client.read_response().unwrap();
    assert_eq!(resp.status, 200);
    let seen = replica.counters().last_request().unwrap();
    assert_eq!(seen.header("host"), Some("models.example"));
    // 127.0.0.1 is not a trusted proxy here: its claims are replaced.
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.header_values("x-forwarded-proto"), vec!["http"]);
    assert_eq!(seen.header("authorization"), Some("Bearer abc"));
    for hop in [
        "connection",
        "x-secret",
        "keep-alive",
        "te",
        "upgrade",
        "proxy-connection",
    ] {
        assert_eq!(seen.header(hop), None, "{hop} was forwarded");
    }
    assert!(seen.header("x-request-id").is_some());
}

fn request_id_is_kept_or_generated(driver: IoDriver) {
    let replica = FakeReplica::builder().start().unwrap();
    let proxy = start(driver, &[replica.addr()], |_| {});
    let mut client = RawClient::connect(proxy.addr()).unwrap();
    client
        .send(b"GET / HTTP/1.1\r\nHost: t\r\nX-Request-Id: abc-123\r\n\r\n")
        .unwrap();
    let resp = client.read_response().unwrap();
    assert_eq!(resp.header("x-request-id"), Some("abc-123"));
    assert_eq!(
        replica
            .counters()
            .last_request()
            .unwrap()
            .header("x-request-id"),
        Some("abc-123")
    );

    let first = client.get("/").unwrap();
    let second = client.get("/").unwrap();
    let (a, b) = (
        first.header("x-request-id").unwrap(),
        second.header("x-request-id").unwrap(),
    );
    assert_eq!(a.len(), 32);
    assert_ne!(a, b);
    assert_eq!(
        replica
            .counters()
            .last_request()
            .unwrap()
            .header("x-request-id"),
        Some(b)
    );
}

fn pipelined_requests_are_answered_in_order(driver: IoDriver) {
    let replica = FakeReplica::builder().echo().start().unwrap();
    let proxy = start(driver, &[replica.addr()], |_| {});
    let mut client = RawClient::connect(proxy.addr()).unwrap();
    let mut batch = Vec::new();
    for i in 0..5 {
        let body = format!("request-{i}");
        batch.extend_from_slice(
            format!(
                "POST /{i} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
    }
    client.send(&batch).unwrap();
    for i in 0..5 {
        let resp = client.read_response().unwrap();
        assert_eq!(resp.status, 200);
        assert_eq!(resp.text(), format!("request-{i}"));
    }
}

fn expect_continue_works(driver: IoDriver) {
    let replica = FakeReplica::builder().echo().start().unwrap();
    let proxy = start(driver, &[replica.addr()], |_| {});
    let mut client = RawClient::connect(proxy.addr()).unwrap();
    client
        .send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        .unwrap();
    let interim = client.read_head().unwrap();
    assert_eq!(interim.status, 100);
    client.send(b"hello").unwrap();
    let resp = client.read_response().unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "hello");
    assert_eq!(
        replica.counters().last_request().unwrap().header("expect"),
        None
    );
}

fn bodiless_responses_carry_no_body(driver: IoDriver) {
    for status in [204u16, 304] {
        let replica = FakeReplica::builder().status(status).start().unwrap();
        let proxy = start(driver, &[replica.addr()], |_| {});
        let mut client = RawClient::connect(proxy.addr()).unwrap();
        for _ in 0..2 {
            let resp = client.get("/").unwrap();
            assert_eq!(resp.status, status);
            assert!(resp.body.is_empty());
        }
    }
    let replica = FakeReplica::builder().body_bytes(500).start().unwrap();
    let proxy = start(driver, &[replica.addr()], |_| {});
    let mut client = RawClient::connect(proxy.addr()).unwrap();
    client.send(b"HEAD / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let resp = client.read_response_to("HEAD").unwrap();
    assert_eq!(resp.header("content-length"), Some("500"));
    // The next response on the connection must start right after the head.
    assert_eq!(client.get("/").unwrap().body.len(), 500);
}

fn stale_pooled_connection_is_replaced(driver: IoDriver) {
    let replica = FakeReplica::builder()
        .idle_close(Duration::from_millis(100))
        .start()
        .unwrap();
    let proxy = start(driver, &[replica.addr()], |_| {});
    let mut client = RawClient::connect(proxy.addr()).unwrap();
    for method in ["GET", "POST", "GET"] {
        std::thread::sleep(Duration::from_millis(250));
        client
            .send(format!("{method} / HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n").as_bytes())
            .unwrap();
        assert_eq!(
            client.read_response().unwrap().status,
            200,
            "{method} after the replica closed the pooled connection"
        );
    }
    assert_eq!(replica.counters().connections(), 3);
}

fn http10_client_gets_a_closed_delimited_response(driver: IoDriver) {
    let replica = FakeReplica::builder()
        .framing(Framing::Chunked)
        .body_bytes(300)
        .start()
        .unwrap();
    let proxy = start(driver, &[replica.addr()], |_| {});
    let mut client = RawClient::connect(proxy.addr()).unwrap();
    client.send(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let resp = client.read_response().unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("transfer-encoding"), None);
    assert_eq!(resp.body.len(), 300);
    assert!(client.is_closed(Duration::from_secs(1)));
    // The replica saw a Host header, as HTTP/1.1 requires.
    assert!(replica
        .counters()
        .last_request()
        .unwrap()
        .header("host")
        .is_some());

    // HTTP/1.0 keep-alive with a length-delimited response.
    let replica = FakeReplica::builder().start().unwrap();
    let proxy = start(driver, &[replica.addr()], |_| {});
    let mut client = RawClient::connect(proxy.addr()).unwrap();
    for _ in 0..2 {
        client
            .send(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .unwrap();
        let resp = client.read_response().unwrap();
        assert_eq!(resp.header("connection"), Some("keep-alive"));
    }
}

fn chunked_response_passes_through(driver: IoDriver) {
    let replica = FakeReplica::builder()
        .framing(Framing::Chunked)
        .body_bytes(50_000)
        .start()
        .unwrap();
    let proxy = start(driver, &[replica.addr()], |_| {});
    let mut client = RawClient::connect(proxy.addr()).unwrap();
    for _ in 0..3 {
        let resp = client.get("/").unwrap();
        assert_eq!(resp.header("transfer-encoding"), Some("chunked"));
        assert_eq!(resp.body.len(), 50_000);
    }
    assert_eq!(replica.counters().connections(), 1);

    let replica = FakeReplica::builder()
        .framing(Framing::UntilClose)
        .body_bytes(5000)
        .start()
        .unwrap();
    let proxy = start(driver, &[replica.addr()], |_| {});
    let mut client = RawClient::connect(proxy.addr()).unwrap();
    let resp = client.get("/").unwrap();
    assert_eq!(resp.body.len(), 5000);
    assert_eq!(resp.header("connection"), Some("close"));
}

fn interim_responses_pass_through(driver: IoDriver) {
    // A replica that sends 103 Early Hints before its answer.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut buf = [0u8; 4096];
        let _ = std::io::Read::read(&mut stream, &mut buf).unwrap();
        stream
            .write_all(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            .unwrap();
        std::thread::sleep(Duration::from_millis(200));
    });
    let proxy = start(driver, &[addr], |_| {});
    let mut client = RawClient::connect(proxy.addr()).unwrap();
    client.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let hint = client.read_head().unwrap();
    assert_eq!(hint.status, 103);
    assert_eq!(hint.header("link"), Some("</a.css>"));
    let resp = client.read_response().unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "ok");
    server.join().unwrap();
}

fn slow_body_streams_without_buffering(driver: IoDriver) {
    // Content-Length bodies also flow as they arrive, not when complete.
    let interval = Duration::from_millis(100);
    let replica = FakeReplica::builder()
        .tokens(5, interval)
        .framing(Framing::UntilClose)
        .start()
        .unwrap();
    let proxy = start(driver, &[replica.addr()], |_| {});
    let mut client = RawClient::connect(proxy.addr()).unwrap();
    let started = Instant::now();
    client.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    client.read_head().unwrap();
    client.read_until(b"tok0").unwrap();
    assert!(started.elapsed() < interval * 3);
    client.read_until(b"[DONE]").unwrap();
    assert!(client.is_closed(Duration::from_secs(2)));
}
