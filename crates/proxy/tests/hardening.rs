//! Slow and hostile peers (data plane v2): stalled replica writes, chunk
//! extensions, upload time, misbehaving replicas, header semantics and a
//! listen address still held at start. Both monoio drivers.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use inferlb_core::{IoDriver, ReplicaStats};
use inferlb_testkit::{eventually, FakeReplica, RawClient};
use support::{scripted, stalled, start, Proxy};

both_drivers!(
    a_stalled_replica_write_times_out,
    a_client_leaving_ends_a_stalled_write,
    a_client_closing_after_its_body_ends_the_exchange,
    evicting_a_replica_ends_a_stalled_write,
    chunk_extensions_count_toward_the_limits,
    upload_time_is_not_response_time,
    every_transfer_encoding_line_counts,
    response_content_length_lists_follow_the_request_rules,
    interim_responses_are_capped_and_100_goes_only_to_who_asked,
    an_invalid_chunked_response_before_any_byte_out_is_a_502,
    bytes_after_the_last_chunk_keep_the_connection_out_of_the_pool,
    no_replay_after_a_response_byte,
    connection_cannot_name_host_away_and_every_token_counts,
    underscored_headers_are_dropped_by_default,
    forwarding_headers_from_untrusted_clients_are_replaced,
    forwarding_headers_from_trusted_proxies_are_appended,
    absolute_form_goes_on_in_origin_form,
    refused_methods_close_when_asked,
    start_waits_for_a_listen_address_still_held,
);

/// The stats of the proxy's only replica.
fn replica_stats(proxy: &Proxy) -> Arc<ReplicaStats> {
    Arc::clone(&proxy.snapshots.load().replicas()[0].stats)
}

/// A client that sends a 1 GiB upload as fast as the proxy takes it.
/// Returns the socket to read the answer from, a stop flag and the writer.
fn upload_forever(addr: SocketAddr) -> (TcpStream, Arc<AtomicBool>, JoinHandle<()>) {
    let stream = TcpStream::connect(addr).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    let handle = std::thread::spawn(move || {
        let head = b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 1073741824\r\n\r\n";
        if writer.write_all(head).is_err() {
            return;
        }
        // Short write timeouts, so a stalled writer still sees `stop`.
        writer
            .set_write_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..16 * 1024 {
            if flag.load(Ordering::Relaxed) {
                return;
            }
            match writer.write(&chunk) {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return,
            }
        }
    });
    (stream, stop, handle)
}

/// Reads a response head within `within`; returns its status.
fn read_status(stream: &mut TcpStream, within: Duration) -> Option<u16> {
    stream.set_read_timeout(Some(within)).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return None,
        }
    }
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

fn a_stalled_replica_write_times_out(driver: IoDriver) {
    let (replica, _) = stalled();
    let proxy = start(driver, &[replica], |c| {
        c.proxy.timeouts.upstream_write = Duration::from_millis(300);
    });
    let stats = replica_stats(&proxy);
    let (mut reader, stop, writer) = upload_forever(proxy.addr());
    assert_eq!(read_status(&mut reader, Duration::from_secs(20)), Some(504));
    stop.store(true, Ordering::Relaxed);
    drop(reader);
    writer.join().unwrap();
    assert!(
        eventually(Duration::from_secs(3), || stats.in_flight() == 0),
        "the stalled exchange still counts as in flight"
    );
}

fn a_client_leaving_ends_a_stalled_write(driver: IoDriver) {
    let (replica, held) = stalled();
    // The default write timeout is minutes: only the client's leaving can
    // end this exchange in time.
    let proxy = start(driver, &[replica], |_| {});
    let stats = replica_stats(&proxy);
    let (reader, stop, writer) = upload_forever(proxy.addr());
    assert!(eventually(Duration::from_secs(5), || held
        .load(Ordering::SeqCst)
        == 1));
    assert!(eventually(Duration::from_secs(5), || stats.in_flight() == 1));
    // Let the socket buffers fill, so the proxy's write to the replica pends.
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    // Leave abruptly (a killed client): the close resets the connection,
    // since the client's unsent body can never be delivered now.
    socket2::SockRef::from(&reader)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(reader);
    assert!(
        eventually(Duration::from_secs(3), || stats.in_flight() == 0),
        "a client that left still pins the replica"
    );
}

fn a_client_closing_after_its_body_ends_the_exchange(driver: IoDriver) {
    // The whole body leaves the client; the replica never reads it (the
    // socket buffers on the way absorb it here, so the proxy waits for a
    // head) when the client closes: the exchange ends.
    let (replica, held) = stalled();
    let proxy = start(driver, &[replica], |_| {});
    let stats = replica_stats(&proxy);
    let mut client = TcpStream::connect(proxy.addr()).unwrap();
    let body = vec![b'x'; 256 * 1024];
    client
        .write_all(
            format!(
                "POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        )
        .unwrap();
    client.write_all(&body).unwrap();
    assert!(eventually(Duration::from_secs(5), || held
        .load(Ordering::SeqCst)
        == 1));
    assert!(eventually(Duration::from_secs(5), || stats.in_flight() == 1));
    std::thread::sleep(Duration::from_millis(300));
    drop(client);
    assert!(
        eventually(Duration::from_secs(3), || stats.in_flight() == 0),
        "a client that closed still pins the replica"
    );
}

fn evicting_a_replica_ends_a_stalled_write(driver: IoDriver) {
    let (replica, _) = stalled();
    let proxy = start(driver, &[replica], |_| {});
    let stats = replica_stats(&proxy);
    let (mut reader, stop, writer) = upload_forever(proxy.addr());
    assert!(eventually(Duration::from_secs(5), || stats.in_flight() == 1));
    std::thread::sleep(Duration::from_millis(500));
    // What the control plane does when a drain deadline passes.
    stats.evict();
    assert_eq!(read_status(&mut reader, Duration::from_secs(5)), Some(502));
    stop.store(true, Ordering::Relaxed);
    drop(reader);
    writer.join().unwrap();
    assert!(eventually(Duration::from_secs(3), || stats.in_flight() == 0));
}

/// Sends `request`, expects `status`, then expects the connection closed.
fn expect_status_and_close(addr: SocketAddr, request: &[u8], status: u16) {
    let mut client = RawClient::connect(addr).unwrap();
    client.send(request).unwrap();
    let resp = client.read_response().expect("a response");
    assert_eq!(resp.status, status);
    assert_eq!(resp.header("connection"), Some("close"));
    assert!(client.is_closed(Duration::from_secs(3)), "left open");
}

fn chunk_extensions_count_toward_the_limits(driver: IoDriver) {
    let replica = FakeReplica::builder().echo().start().unwrap();
    let proxy = start(driver, &[replica.addr()], |c| {
        c.proxy.limits.max_request_body_bytes = Some(64);
    });
    // 10 payload bytes fit the 64-byte limit; 100 extension bytes do not.
    let request = format!(
        "POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\na;{}\r\n0123456789\r\n0\r\n\r\n",
        "x".repeat(100)
    );
    expect_status_and_close(proxy.addr(), request.as_bytes(), 413);
    let small = b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\na;k=v\r\n0123456789\r\n0\r\n\r\n";
    let mut client = RawClient::connect(proxy.addr()).unwrap();
    client.send(small).unwrap();
    assert_eq!(client.read_response().unwrap().status, 200);

    // Without a body limit, the extensions of one request are still capped.
    let unlimited = FakeReplica::builder().echo().start().unwrap();
    let proxy = start(driver, &[unlimited.addr()], |_| {});
    let mut request = b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..100 {
        request.extend_from_slice(format!("1;{}\r\nz\r\n", "e".repeat(60)).as_bytes());
    }
    request.extend_from_slice(b"0\r\n\r\n");
    expect_status_and_close(proxy.addr(), &request, 413);
}

fn upload_time_is_not_response_time(driver: IoDriver) {
    let replica = FakeReplica::builder().echo().start().unwrap();
    let proxy = start(driver, &[replica.addr()], |_| {});
    let stats = replica_stats(&proxy);
    let mut client = RawClient::connect(proxy.addr()).unwrap();
    client
        .send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(600));
    client.send(b"hello").unwrap();
    assert_eq!(client.read_response().unwrap().status, 200);
    let head_ms = stats.ewma_head_us() / 1000.0;
    assert!(
        head_ms < 300.0,
        "a 600 ms upload counted as {head_ms:.0} ms of response time"
    );
}

fn every_transfer_encoding_line_counts(driver: IoDriver) {
    for response in [
        &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n5\r\nhello\r\n0\r\n\r\n"[..],
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    ] {
        let replica = scripted(response, true);
        let proxy = start(driver, &[replica.addr], |_| {});
        let mut client = RawClient::connect(proxy.addr()).unwrap();
        assert_eq!(
            client.get("/").unwrap().status,
            502,
            "{:?}",
            String::from_utf8_lossy(response)
        );
    }
}

fn response_content_length_lists_follow_the_request_rules(driver: IoDriver) {
    // RFC 9110 §8.6: a list of one repeated value is that value; differing
    // values cannot frame the body.
    for (response, status) in [
        (
            &b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\nhello"[..],
            200,
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5,5\r\n\r\nhello",
            200,
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\nhello!",
            502,
        ),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5,\r\n\r\nhello", 502),
    ] {
        let replica = scripted(response, false);
        let proxy = start(driver, &[replica.addr], |_| {});
        let mut client = RawClient::connect(proxy.addr()).unwrap();
        let resp = client.get("/").unwrap();
        let text = String::from_utf8_lossy(response);
        assert_eq!(resp.status, status, "{text:?}");
        if status == 200 {
            assert_eq!(resp.text(), "hello", "{text:?}");
            // The body was framed by the one length: the connection goes on.
            assert_eq!(client.get("/").unwrap().status, 200, "{text:?}");
        }
    }
}

fn interim_responses_are_capped_and_100_goes_only_to_who_asked(driver: IoDriver) {
    // Eleven interim responses and never a final one: after ten, 502.
    let endless: &'static [u8] = Box::leak(
        "HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n"
            .repeat(11)
            .into_bytes()
            .into_boxed_slice(),
    );
    let replica = scripted(endless, false);
    let proxy = start(driver, &[replica.addr], |_| {});
    let mut client = RawClient::connect(proxy.addr()).unwrap();
    client.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let mut hints = 0;
    let last = loop {
        let head = client.read_head().unwrap();
        if head.status != 103 {
            break head;
        }
        hints += 1;
    };
    assert_eq!((hints, last.status), (10, 502));
    // A 100 Continue the client did not ask for is not passed on (RFC 9110
    // §15.2.1); the final answer is.
    let replica = scripted(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        false,
    );
    let proxy = start(driver, &[replica.addr], |_| {});
    let mut client = RawClient::connect(proxy.addr()).unwrap();
    client
        .send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi")
        .unwrap();
    // The first head the client sees is the final one.
    assert_eq!(client.read_head().unwrap().status, 200);
}

fn an_invalid_chunked_response_before_any_byte_out_is_a_502(driver: IoDriver) {
    // The head and a broken first chunk arrive together: nothing has gone
    // to the client, so it gets a 502, not a bare close.
    let replica = scripted(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        true,
    );
    let proxy = start(driver, &[replica.addr], |_| {});
    let mut client = RawClient::connect(proxy.addr()).unwrap();
    let resp = client.get("/").unwrap();
    assert_eq!(resp.status, 502);
}

fn bytes_after_the_last_chunk_keep_the_connection_out_of_the_pool(driver: IoDriver) {
    // The extra bytes look like a second response: pooled, the connection
    // could answer the next request with them.
    let replica = scripted(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfake!",
        false,
    );
    let proxy = start(driver, &[replica.addr], |_| {});
    // An HTTP/1.0 client: the body is de-chunked on its way.
    let mut old = RawClient::connect(proxy.addr()).unwrap();
    old.send(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let resp = old.read_response().unwrap();
    assert_eq!((resp.status, resp.text()), (200, "hello".to_owned()));
    // And an HTTP/1.1 client, passed through.
    for _ in 0..2 {
        let mut client = RawClient::connect(proxy.addr()).unwrap();
        let resp = client.get("/").unwrap();
        assert_eq!(resp.status, 200);
        assert!(resp.text().contains("hello"), "{}", resp.text());
    }
    assert_eq!(
        replica.connections.load(Ordering::SeqCst),
        3,
        "a connection with bytes after its response was reused"
    );
}

fn no_replay_after_a_response_byte(driver: IoDriver) {
    // Both replicas start a response head, then close.
    let a = scripted(b"HTTP/1.1 200 OK\r\nContent-Le", true);
    let b = scripted(b"HTTP/1.1 200 OK\r\nContent-Le", true);
    let proxy = start(driver, &[a.addr, b.addr], |c| {
        c.proxy.retries.non_idempotent = true;
    });
    let mut client = RawClient::connect(proxy.addr()).unwrap();
    client
        .send(b"POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n{}")
        .unwrap();
    assert_eq!(client.read_response().unwrap().status, 502);
    let sent = a.requests.load(Ordering::SeqCst) + b.requests.load(Ordering::SeqCst);
    assert_eq!(
        sent, 1,
        "the request was sent again after a replica began answering"
    );
}

fn connection_cannot_name_host_away_and_every_token_counts(driver: IoDriver) {
    let replica = FakeReplica::builder().start().unwrap();
    let proxy = start(driver, &[replica.addr()], |_| {});
    let names: Vec<String> = (1..=20).map(|i| format!("X-H{i}")).collect();
    let mut request = format!(
        "GET / HTTP/1.1\r\nHost: models.example\r\nConnection: Host, Content-Length, {}\r\n",
        names.join(", ")
    );
    for name in &names {
        request.push_str(&format!("{name}: 1\r\n"));
    }
    request.push_str("\r\n");
    let mut client = RawClient::connect(proxy.addr()).unwrap();
    client.send(request.as_bytes()).unwrap();
    assert_eq!(client.read_response().unwrap().status, 200);
    let seen = replica.counters().last_request().unwrap();
    assert_eq!(seen.header("host"), Some("models.example"));
    for name in &names {
        assert_eq!(seen.header(name), None, "{name} was forwarded");
    }
}

fn underscored_headers_are_dropped_by_default(driver: IoDriver) {
    let request = b"GET / HTTP/1.1\r\nHost: t\r\nX_Forwarded_For: 6.6.6.6\r\nMy_Header: 1\r\nMy-Header: 2\r\n\r\n";
    let replica = FakeReplica::builder().start().unwrap();
    let proxy = start(driver, &[replica.addr()], |_| {});
    let mut client = RawClient::connect(proxy.addr()).unwrap();
    client.send(request).unwrap();
    assert_eq!(client.read_response().unwrap().status, 200);
    let seen = replica.counters().last_request().unwrap();
    assert_eq!(seen.header("x_forwarded_for"), None);
    assert_eq!(seen.header("my_header"), None);
    assert_eq!(seen.header("my-header"), Some("2"));
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));

    let allowing = FakeReplica::builder().start().unwrap();
    let proxy = start(driver, &[allowing.addr()], |c| {
        c.proxy.underscores_in_headers = true;
    });
    let mut client = RawClient::connect(proxy.addr()).unwrap();
    client.send(request).unwrap();
    assert_eq!(client.read_response().unwrap().status, 200);
    let seen = allowing.counters().last_request().unwrap();
    assert_eq!(seen.header("my_header"), Some("1"));
}

const SPOOFED: &[u8] =
    b"GET / HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 10.0.0.1\r\nX-Forwarded-Proto: https\r\n\
X-Real-IP: 10.0.0.1\r\nForwarded: for=10.0.0.1;proto=https\r\nX-Forwarded-Host: evil.example\r\n\
X-Forwarded-Port: 8443\r\nX-Forwarded-Prefix: /admin\r\nX-Forwarded-Server: evil\r\n\r\n";

/// The claims only a proxy in front can vouch for.
const CLAIMS: [&str; 4] = [
    "x-forwarded-host",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-server",
];

fn forwarding_headers_from_untrusted_clients_are_replaced(driver: IoDriver) {
    let replica = FakeReplica::builder().start().unwrap();
    let proxy = start(driver, &[replica.addr()], |_| {});
    let mut client = RawClient::connect(proxy.addr()).unwrap();
    client.send(SPOOFED).unwrap();
    assert_eq!(client.read_response().unwrap().status, 200);
    let seen = replica.counters().last_request().unwrap();
    assert_eq!(seen.header_values("x-forwarded-for"), vec!["127.0.0.1"]);
    assert_eq!(seen.header_values("x-forwarded-proto"), vec!["http"]);
    assert_eq!(seen.header_values("x-real-ip"), vec!["127.0.0.1"]);
    assert_eq!(
        seen.header_values("forwarded"),
        vec!["for=127.0.0.1;proto=http"]
    );
    for claim in CLAIMS {
        assert!(
            seen.header_values(claim).is_empty(),
            "{claim} reached the replica"
        );
    }
    // Kept when the operator says so.
    let proxy = start(driver, &[replica.addr()], |c| {
        c.proxy.keep_untrusted_forwarded_headers = true;
    });
    let mut client = RawClient::connect(proxy.addr()).unwrap();
    client.send(SPOOFED).unwrap();
    assert_eq!(client.read_response().unwrap().status, 200);
    let seen = replica.counters().last_request().unwrap();
    assert_eq!(seen.header_values("x-forwarded-host"), vec!["evil.example"]);
}

fn forwarding_headers_from_trusted_proxies_are_appended(driver: IoDriver) {
    let replica = FakeReplica::builder().start().unwrap();
    let proxy = start(driver, &[replica.addr()], |c| {
        c.proxy.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
    });
    let mut client = RawClient::connect(proxy.addr()).unwrap();
    client.send(SPOOFED).unwrap();
    assert_eq!(client.read_response().unwrap().status, 200);
    let seen = replica.counters().last_request().unwrap();
    assert_eq!(
        seen.header_values("x-forwarded-for"),
        vec!["10.0.0.1, 127.0.0.1"]
    );
    assert_eq!(seen.header_values("x-forwarded-proto"), vec!["https"]);
    assert_eq!(seen.header_values("x-real-ip"), vec!["10.0.0.1"]);
    assert_eq!(
        seen.header_values("forwarded"),
        vec!["for=10.0.0.1;proto=https, for=127.0.0.1;proto=http"]
    );
    // A trusted proxy's claims go on.
    for claim in CLAIMS {
        assert_eq!(seen.header_values(claim).len(), 1, "{claim}");
    }
}

fn absolute_form_goes_on_in_origin_form(driver: IoDriver) {
    let replica = FakeReplica::builder().start().unwrap();
    let proxy = start(driver, &[replica.addr()], |_| {});
    let mut client = RawClient::connect(proxy.addr()).unwrap();
    client
        .send(b"GET http://models.example:8000/v1/models?x=1 HTTP/1.1\r\nHost: other\r\n\r\n")
        .unwrap();
    assert_eq!(client.read_response().unwrap().status, 200);
    let seen = replica.counters().last_request().unwrap();
    assert_eq!(seen.path, "/v1/models?x=1");
    assert_eq!(seen.header_values("host"), vec!["models.example:8000"]);
    client
        .send(b"GET HTTP://models.example HTTP/1.1\r\nHost: models.example\r\n\r\n")
        .unwrap();
    assert_eq!(client.read_response().unwrap().status, 200);
    assert_eq!(replica.counters().last_request().unwrap().path, "/");
    // User info in the authority is refused.
    expect_status_and_close(
        proxy.addr(),
        b"GET http://user@models.example/ HTTP/1.1\r\nHost: models.example\r\n\r\n",
        400,
    );
}

fn refused_methods_close_when_asked(driver: IoDriver) {
    let replica = FakeReplica::builder().start().unwrap();
    let proxy = start(driver, &[replica.addr()], |_| {});
    expect_status_and_close(
        proxy.addr(),
        b"TRACE / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        405,
    );
    expect_status_and_close(proxy.addr(), b"TRACE / HTTP/1.0\r\n\r\n", 405);
}

fn start_waits_for_a_listen_address_still_held(driver: IoDriver) {
    // Held as a dead process's ring holds it for a moment after kill -9.
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = holder.local_addr().unwrap();
    let release = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1000));
        drop(holder);
    });
    let replica = FakeReplica::builder().start().unwrap();
    let started = Instant::now();
    let proxy = start(driver, &[replica.addr()], |c| c.proxy.listen_on(addr));
    assert!(started.elapsed() >= Duration::from_millis(500));
    release.join().unwrap();
    let mut client = RawClient::connect(proxy.addr()).unwrap();
    assert_eq!(client.get("/").unwrap().status, 200);
}
