//! Every kind of bad input gets its exact status and a closed connection, and
//! nothing reaches a replica. Both monoio drivers.

mod support;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use inferlb_core::IoDriver;
use inferlb_testkit::{FakeReplica, RawClient};
use support::start;

both_drivers!(
    malformed_requests_get_their_status_and_a_close,
    oversized_heads_get_431,
    body_over_the_limit_gets_413,
    slowloris_gets_408,
    silent_connection_gets_408,
    idle_keep_alive_connection_is_closed,
    body_read_stall_is_bounded,
    garbage_does_not_hurt_the_worker,
);

/// Sends `request`, expects `status`, then expects the connection closed.
fn expect_status_and_close(addr: std::net::SocketAddr, request: &[u8], status: u16) {
    let mut client = RawClient::connect(addr).unwrap();
    client.send(request).unwrap();
    let resp = client
        .read_response()
        .unwrap_or_else(|e| panic!("no response to {:?}: {e}", String::from_utf8_lossy(request)));
    assert_eq!(
        resp.status,
        status,
        "for {:?}",
        String::from_utf8_lossy(request)
    );
    assert_eq!(
        resp.header("connection"),
        Some("close"),
        "for {:?}",
        String::from_utf8_lossy(request)
    );
    assert!(
        client.is_closed(Duration::from_secs(3)),
        "left open after {:?}",
        String::from_utf8_lossy(request)
    );
}

const CASES: &[(&str, &[u8], u16)] = &[
    ("garbage request line", b"HELLO\r\n\r\n", 400),
    ("missing version", b"GET /\r\nHost: t\r\n\r\n", 400),
    ("space in header name", b"GET / HTTP/1.1\r\nHost: t\r\nBad Header: x\r\n\r\n", 400),
    ("space before colon", b"GET / HTTP/1.1\r\nHost : t\r\n\r\n", 400),
    ("obs-fold", b"GET / HTTP/1.1\r\nHost: t\r\nX-A: 1\r\n  continued\r\n\r\n", 400),
    ("bare LF", b"GET / HTTP/1.1\nHost: t\n\n", 400),
    ("bare LF in a header", b"GET / HTTP/1.1\r\nHost: t\nX-A: 1\r\n\r\n", 400),
    ("bare CR", b"GET / HTTP/1.1\r\nHost: t\rX-A: 1\r\n\r\n", 400),
    ("NUL in a header", b"GET / HTTP/1.1\r\nHost: t\r\nX-A: a\0b\r\n\r\n", 400),
    ("HTTP/1.1 without Host", b"GET / HTTP/1.1\r\nX-A: 1\r\n\r\n", 400),
    ("two Hosts", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    (
        "Content-Length with Transfer-Encoding",
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    ("differing Content-Lengths", b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", 400),
    ("Content-Length list that differs", b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5, 6\r\n\r\nhello!", 400),
    (
        "a Content-Length trailer",
        b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\nContent-Length: 40\r\n\r\n",
        400,
    ),
    (
        "a folded trailer",
        b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\nX-A: 1\r\n folded\r\n\r\n",
        400,
    ),
    (
        "a trailer that is not a field",
        b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\nGET /x HTTP/1.1\r\n\r\n",
        400,
    ),
    ("negative Content-Length", b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: -5\r\n\r\n", 400),
    ("Content-Length with a sign", b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: +5\r\n\r\nhello", 400),
    ("chunked not final", b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", 400),
    ("chunked twice", b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    ("unknown coding", b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: xchunked\r\n\r\n", 400),
    ("identity coding", b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: identity\r\n\r\n", 400),
    ("chunked in HTTP/1.0", b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("gzip then chunked", b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
    ("invalid chunk size", b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n", 400),
    ("chunk size with a space", b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5 \r\nhello\r\n0\r\n\r\n", 400),
    ("chunk without CRLF", b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n", 400),
    ("HTTP/2.0", b"GET / HTTP/2.0\r\nHost: t\r\n\r\n", 505),
    ("HTTP/3.1", b"GET / HTTP/3.1\r\nHost: t\r\n\r\n", 505),
    ("unknown method", b"BREW / HTTP/1.1\r\nHost: t\r\n\r\n", 501),
    ("Expect other than 100-continue", b"GET / HTTP/1.1\r\nHost: t\r\nExpect: 200-ok\r\n\r\n", 417),
];

fn malformed_requests_get_their_status_and_a_close(driver: IoDriver) {
    let replica = FakeReplica::builder().start().unwrap();
    let proxy = start(driver, &[replica.addr()], |_| {});
    for (name, request, status) in CASES {
        let mut client = RawClient::connect(proxy.addr()).unwrap();
        client.send(request).unwrap();
        let resp = client
            .read_response()
            .unwrap_or_else(|e| panic!("{name}: no response: {e}"));
        assert_eq!(resp.status, *status, "{name}");
        assert_eq!(resp.header("connection"), Some("close"), "{name}");
        assert!(resp.text().contains("\"error\""), "{name}: {}", resp.text());
        assert!(
            client.is_closed(Duration::from_secs(3)),
            "{name}: connection left open"
        );
    }
    assert_eq!(
        replica.counters().requests(),
        0,
        "a bad request reached the replica"
    );

    // CONNECT and TRACE are refused without closing: the framing is sound.
    let mut client = RawClient::connect(proxy.addr()).unwrap();
    client
        .send(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
        .unwrap();
    assert_eq!(client.read_response().unwrap().status, 405);
    client.send(b"TRACE / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    assert_eq!(client.read_response().unwrap().status, 405);
    assert_eq!(client.get("/").unwrap().status, 200);
}

fn oversized_heads_get_431(driver: IoDriver) {
    let replica = FakeReplica::builder().start().unwrap();
    let proxy = start(driver, &[replica.addr()], |_| {});
    let big = format!(
        "GET / HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    expect_status_and_close(proxy.addr(), big.as_bytes(), 431);
    let mut many = String::from("GET / HTTP/1.1\r\nHost: t\r\n");
    for i in 0..150 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    expect_status_and_close(proxy.addr(), many.as_bytes(), 431);
    // A head just under the limit is fine.
    let fine = format!(
        "GET / HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
        "a".repeat(15_000)
    );
    let mut client = RawClient::connect(proxy.addr()).unwrap();
    client.send(fine.as_bytes()).unwrap();
    assert_eq!(client.read_response().unwrap().status, 200);
}

fn body_over_the_limit_gets_413(driver: IoDriver) {
    let replica = FakeReplica::builder().start().unwrap();
    let proxy = start(driver, &[replica.addr()], |c| {
        c.proxy.limits.max_request_body_bytes = Some(1000)
    });
    let body = "x".repeat(2000);
    let request = format!("POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 2000\r\n\r\n{body}");
    expect_status_and_close(proxy.addr(), request.as_bytes(), 413);
    let chunked = format!("POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n7d0\r\n{body}\r\n0\r\n\r\n");
    expect_status_and_close(proxy.addr(), chunked.as_bytes(), 413);
    let mut client = RawClient::connect(proxy.addr()).unwrap();
    client
        .send(
            format!(
                "POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n{}",
                &body[..1000]
            )
            .as_bytes(),
        )
        .unwrap();
    assert_eq!(client.read_response().unwrap().status, 200);
}

fn slowloris_gets_408(driver: IoDriver) {
    let replica = FakeReplica::builder().start().unwrap();
    let proxy = start(driver, &[replica.addr()], |c| {
        c.proxy.timeouts.client_header = Duration::from_millis(500)
    });
    let mut client = RawClient::connect(proxy.addr()).unwrap();
    let started = Instant::now();
    // A byte every 100 ms never completes the head within 500 ms.
    for byte in b"GET / HTTP/1.1\r\nHost: t\r\n" {
        if client.send(&[*byte]).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        if started.elapsed() > Duration::from_millis(700) {
            break;
        }
    }
    let resp = client.read_response().unwrap();
    assert_eq!(resp.status, 408);
    assert!(client.is_closed(Duration::from_secs(3)));
    assert!(started.elapsed() < Duration::from_secs(3));
}

fn silent_connection_gets_408(driver: IoDriver) {
    let proxy = start(driver, &[], |c| {
        c.proxy.timeouts.client_header = Duration::from_millis(300)
    });
    let mut client = RawClient::connect(proxy.addr()).unwrap();
    assert_eq!(client.read_response().unwrap().status, 408);
    assert!(client.is_closed(Duration::from_secs(2)));
}

fn idle_keep_alive_connection_is_closed(driver: IoDriver) {
    let replica = FakeReplica::builder().start().unwrap();
    let proxy = start(driver, &[replica.addr()], |c| {
        c.proxy.timeouts.client_keepalive = Duration::from_millis(300);
    });
    let mut client = RawClient::connect(proxy.addr()).unwrap();
    assert_eq!(client.get("/").unwrap().status, 200);
    let idle_from = Instant::now();
    // Closed quietly, with no 408, after the keep-alive timeout.
    assert!(client.is_closed(Duration::from_secs(3)));
    assert!(idle_from.elapsed() >= Duration::from_millis(250));
}

fn body_read_stall_is_bounded(driver: IoDriver) {
    let replica = FakeReplica::builder().start().unwrap();
    let proxy = start(driver, &[replica.addr()], |c| {
        c.proxy.timeouts.body_read = Duration::from_millis(300)
    });
    let mut client = RawClient::connect(proxy.addr()).unwrap();
    client
        .send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nonly-some")
        .unwrap();
    let resp = client.read_response().unwrap();
    assert_eq!(resp.status, 408);
    // The message names the body, not the head.
    assert!(resp.text().contains("body"), "{}", resp.text());
    assert!(client.is_closed(Duration::from_secs(3)));
}

fn garbage_does_not_hurt_the_worker(driver: IoDriver) {
    let replica = FakeReplica::builder().start().unwrap();
    let proxy = start(driver, &[replica.addr()], |c| {
        c.proxy.timeouts.client_header = Duration::from_millis(300)
    });
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    for round in 0..200 {
        let mut junk = Vec::new();
        let len = 1 + (round * 37) % 3000;
        for _ in 0..len {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            junk.push(rng as u8);
        }
        if round % 3 == 0 {
            junk.splice(
                0..0,
                b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                    .iter()
                    .copied(),
            );
        }
        let mut stream = TcpStream::connect(proxy.addr()).unwrap();
        let _ = stream.write_all(&junk);
        drop(stream);
    }
    // The worker still serves, and no connection was leaked.
    let mut client = RawClient::connect(proxy.addr()).unwrap();
    assert_eq!(client.get("/").unwrap().status, 200);
    drop(client);
    assert!(inferlb_testkit::eventually(Duration::from_secs(5), || {
        proxy.handle.worker_stats()[0].open_connections() == 0
    }));
}
