//! End to end: snapshots republished under load, several workers, limits,
//! and graceful shutdown. Both monoio drivers.

mod support;

use std::time::{Duration, Instant};

use inferlb_core::{Command, Health, IoDriver, ReplicaId, ReplicaState};
use inferlb_testkit::{eventually, FakeReplica, RawClient};
use support::start;

both_drivers!(
    graceful_shutdown_lets_a_stream_finish,
    connection_limit_refuses_quickly,
    draining_and_zero_weight_replicas_get_no_new_requests,
    two_workers_share_the_load,
    head_split_across_reads_is_served,
    snapshot_changes_apply_from_the_next_request,
    busy_connection_pauses_without_losing_a_byte,
    busy_connection_closes_on_shutdown,
    the_health_path_is_answered_on_the_data_port,
);

fn graceful_shutdown_lets_a_stream_finish(driver: IoDriver) {
    let replica = FakeReplica::builder()
        .tokens(10, Duration::from_millis(50))
        .start()
        .unwrap();
    let proxy = start(driver, &[replica.addr()], |_| {});
    let addr = proxy.addr();
    let mut idle = RawClient::connect(addr).unwrap();
    let mut client = RawClient::connect(addr).unwrap();
    client
        .send(b"GET /stream HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let head = client.read_head().unwrap();
    assert_eq!(head.status, 200);
    proxy.handle.shutdown();
    // New connections are refused once the listener is gone.
    assert!(eventually(Duration::from_secs(2), || {
        std::net::TcpStream::connect(addr).is_err()
    }));
    // An idle keep-alive connection is closed.
    assert!(idle.is_closed(Duration::from_secs(2)));
    // The stream in flight finishes whole.
    let rest = client.read_until(b"[DONE]").unwrap();
    assert!(String::from_utf8_lossy(&rest).contains("tok9"));
    let started = Instant::now();
    proxy.handle.wait();
    assert!(started.elapsed() < Duration::from_secs(5));
}

fn connection_limit_refuses_quickly(driver: IoDriver) {
    let replica = FakeReplica::builder().start().unwrap();
    let proxy = start(driver, &[replica.addr()], |c| {
        c.proxy.limits.max_connections_per_worker = 2
    });
    let mut a = RawClient::connect(proxy.addr()).unwrap();
    let mut b = RawClient::connect(proxy.addr()).unwrap();
    assert_eq!(a.get("/").unwrap().status, 200);
    assert_eq!(b.get("/").unwrap().status, 200);
    let mut c = RawClient::connect(proxy.addr()).unwrap();
    let started = Instant::now();
    assert!(
        c.is_closed(Duration::from_secs(2)),
        "a connection past the limit was kept"
    );
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(proxy.handle.worker_stats()[0].refused(), 1);
    drop(a);
    assert!(eventually(Duration::from_secs(2), || proxy
        .handle
        .worker_stats()[0]
        .open_connections()
        == 1));
    let mut d = RawClient::connect(proxy.addr()).unwrap();
    assert_eq!(d.get("/").unwrap().status, 200);
}

fn draining_and_zero_weight_replicas_get_no_new_requests(driver: IoDriver) {
    let a = FakeReplica::builder().name("a").start().unwrap();
    let b = FakeReplica::builder().name("b").start().unwrap();
    let c = FakeReplica::builder().name("c").start().unwrap();
    let mut proxy = start(driver, &[a.addr(), b.addr(), c.addr()], |_| {});
    let id = |addr: std::net::SocketAddr| ReplicaId::from_address(&addr.to_string());
    proxy.apply(Command::SetState {
        id: id(b.addr()),
        state: ReplicaState::Draining,
    });
    proxy.apply(Command::SetWeight {
        id: id(c.addr()),
        weight: 0,
    });
    let mut client = RawClient::connect(proxy.addr()).unwrap();
    for _ in 0..50 {
        assert_eq!(client.get("/").unwrap().header("x-replica"), Some("a"));
    }
    proxy.apply(Command::SetState {
        id: id(a.addr()),
        state: ReplicaState::Draining,
    });
    assert_eq!(client.get("/").unwrap().status, 503);
}

fn two_workers_share_the_load(driver: IoDriver) {
    let replicas: Vec<_> = (0..2)
        .map(|i| {
            FakeReplica::builder()
                .name(&format!("r{i}"))
                .start()
                .unwrap()
        })
        .collect();
    let addrs: Vec<_> = replicas.iter().map(|r| r.addr()).collect();
    let proxy = start(driver, &addrs, |c| c.proxy.workers = 2);
    let total = support::shares_under_load(proxy.addr(), 8, 100);
    assert_eq!(total.values().sum::<usize>(), 800);
    // Each worker alternates on its own cursor, so the split stays even.
    for share in total.values() {
        assert!((300..=500).contains(share), "{total:?}");
    }
    let accepted: u64 = proxy
        .handle
        .worker_stats()
        .iter()
        .map(|w| w.accepted())
        .sum();
    assert_eq!(accepted, 8);
}

fn head_split_across_reads_is_served(driver: IoDriver) {
    let replica = FakeReplica::builder().echo().start().unwrap();
    let proxy = start(driver, &[replica.addr()], |_| {});
    let mut client = RawClient::connect(proxy.addr()).unwrap();
    let request = b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello";
    for piece in request.chunks(3) {
        client.send(piece).unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    let resp = client.read_response().unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "hello");
    // Split exactly at line ends, too.
    for piece in [&b"GET / HTTP/1.1\r\n"[..], b"Host: t\r\n", b"\r\n"] {
        client.send(piece).unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(client.read_response().unwrap().status, 200);
}

fn snapshot_changes_apply_from_the_next_request(driver: IoDriver) {
    let a = FakeReplica::builder().name("a").start().unwrap();
    let b = FakeReplica::builder().name("b").start().unwrap();
    let mut proxy = start(driver, &[a.addr()], |_| {});
    let mut client = RawClient::connect(proxy.addr()).unwrap();
    assert_eq!(client.get("/").unwrap().header("x-replica"), Some("a"));
    proxy.apply(Command::Add(support::spec(b.addr(), 1)));
    proxy.apply(Command::Remove {
        id: ReplicaId::from_address(&a.addr().to_string()),
    });
    for _ in 0..10 {
        assert_eq!(client.get("/").unwrap().header("x-replica"), Some("b"));
    }
    // The removed replica's pooled connection is closed by the reaper.
    assert!(eventually(Duration::from_secs(3), || a
        .counters()
        .open_connections()
        == 0));
}

/// A busy keep-alive connection awaits its next request with a read in
/// flight for 100 to 200 ms, then cancels it and waits idle. Requests sent
/// at every point of that window, the moment of the cancel included, are
/// served whole; after the last one the keep-alive timeout still closes it.
fn busy_connection_pauses_without_losing_a_byte(driver: IoDriver) {
    let replica = FakeReplica::builder().start().unwrap();
    let proxy = start(driver, &[replica.addr()], |c| {
        c.proxy.timeouts.client_keepalive = Duration::from_millis(800);
    });
    let mut client = RawClient::connect(proxy.addr()).unwrap();
    for pause_ms in [0, 0, 0, 60, 95, 105, 130, 160, 190, 205, 230, 400, 0, 0] {
        std::thread::sleep(Duration::from_millis(pause_ms));
        let response = client.get(&format!("/after-{pause_ms}")).unwrap();
        assert_eq!(response.status, 200, "after a pause of {pause_ms} ms");
    }
    // A pipelined pair on the busy connection is served in order.
    client
        .send(b"GET /p1 HTTP/1.1\r\nHost: t\r\n\r\nGET /p2 HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert_eq!(client.read_response().unwrap().status, 200);
    assert_eq!(client.read_response().unwrap().status, 200);
    assert_eq!(replica.counters().requests(), 16);
    let idle_from = Instant::now();
    assert!(client.is_closed(Duration::from_secs(3)));
    assert!(idle_from.elapsed() >= Duration::from_millis(700));
    // A busy connection the client closes mid-window costs nothing else.
    let mut gone = RawClient::connect(proxy.addr()).unwrap();
    for _ in 0..3 {
        assert_eq!(gone.get("/").unwrap().status, 200);
    }
    drop(gone);
    let mut next = RawClient::connect(proxy.addr()).unwrap();
    assert_eq!(next.get("/").unwrap().status, 200);
}

/// Shutdown does not wait for a busy connection's window: it is closed like
/// an idle one.
fn busy_connection_closes_on_shutdown(driver: IoDriver) {
    let replica = FakeReplica::builder().start().unwrap();
    let proxy = start(driver, &[replica.addr()], |_| {});
    let mut client = RawClient::connect(proxy.addr()).unwrap();
    for _ in 0..3 {
        assert_eq!(client.get("/").unwrap().status, 200);
    }
    let started = Instant::now();
    proxy.handle.shutdown();
    assert!(client.is_closed(Duration::from_secs(2)));
    proxy.handle.wait();
    assert!(started.elapsed() < Duration::from_secs(2));
}

/// `[health] serve_path`: answered by the proxy on the data listener (for a
/// load balancer or a Kubernetes probe in front), 200 while a replica is
/// healthy and routable, 503 when none is — failing open included — and
/// never sent to a replica.
fn the_health_path_is_answered_on_the_data_port(driver: IoDriver) {
    let replica = FakeReplica::builder().start().unwrap();
    let mut proxy = start(driver, &[replica.addr()], |c| {
        c.proxy.health_path = Some("/healthz".into());
    });
    let mut client = RawClient::connect(proxy.addr()).unwrap();
    let resp = client.get("/healthz").unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), r#"{"status":"ok"}"#);
    assert_eq!(client.get("/healthz?probe=1").unwrap().status, 200);
    assert_eq!(replica.counters().requests(), 0, "not forwarded");
    // Other paths still go to the replica.
    assert_eq!(client.get("/health").unwrap().status, 200);
    assert_eq!(replica.counters().requests(), 1);
    // Its only replica unhealthy: routing fails open, the probe says 503.
    let id = ReplicaId::from_address(&replica.addr().to_string());
    proxy.apply(Command::SetHealth {
        id: id.clone(),
        health: Health::Unhealthy,
    });
    let resp = client.get("/healthz").unwrap();
    assert_eq!(resp.status, 503, "{}", resp.text());
    assert_eq!(
        client.get("/v1/anything").unwrap().status,
        200,
        "fails open"
    );
    proxy.apply(Command::Remove { id });
    assert_eq!(client.get("/healthz").unwrap().status, 503);
}
