//! Routing for inference traffic over real sockets: least outstanding away
//! from a slow replica, penalties for 429, outlier ejection and recovery,
//! retries and the retry budget. Both monoio drivers.

mod support;

use std::time::{Duration, Instant};

use inferlb_core::{IoDriver, Routing};
use inferlb_testkit::{eventually, Failure, FakeReplica, Latency, RawClient};
use support::{shares_under_load, start};

both_drivers!(
    least_outstanding_and_p2c_avoid_a_slow_replica,
    a_429_moves_traffic_away_for_its_retry_after,
    a_503_moves_traffic_away_only_with_retry_after,
    only_small_bodies_are_replayed,
    a_failing_replica_is_ejected_with_no_client_error_and_comes_back,
    non_idempotent_requests_are_not_retried,
    the_retry_budget_stops_a_retry_storm,
);

fn least_outstanding_and_p2c_avoid_a_slow_replica(driver: IoDriver) {
    let slow = FakeReplica::builder()
        .name("slow")
        .latency(Latency::Fixed(Duration::from_millis(100)))
        .start()
        .unwrap();
    let fast: Vec<_> = (0..3)
        .map(|i| {
            FakeReplica::builder()
                .name(&format!("fast{i}"))
                .latency(Latency::Fixed(Duration::from_millis(5)))
                .start()
                .unwrap()
        })
        .collect();
    let mut addrs = vec![slow.addr()];
    addrs.extend(fast.iter().map(|f| f.addr()));
    for routing in [Routing::LeastOutstanding, Routing::P2c] {
        let proxy = start(driver, &addrs, |c| c.routing = routing);
        let shares = shares_under_load(proxy.addr(), 8, 40);
        let total: usize = shares.values().sum();
        let slow_share = *shares.get("slow").unwrap_or(&0) as f64 / total as f64;
        assert!(
            slow_share < 0.10,
            "{routing:?}: the slow replica got {:.1}% ({shares:?})",
            slow_share * 100.0
        );
    }
}

fn a_429_moves_traffic_away_for_its_retry_after(driver: IoDriver) {
    let busy = FakeReplica::builder()
        .name("busy")
        .status(429)
        .header("Retry-After", "2")
        .start()
        .unwrap();
    let free = FakeReplica::builder().name("free").start().unwrap();
    let proxy = start(driver, &[busy.addr(), free.addr()], |_| {});
    let mut client = RawClient::connect(proxy.addr()).unwrap();
    let mut statuses = Vec::new();
    for _ in 0..20 {
        statuses.push(client.get("/").unwrap().status);
    }
    // At most the first request meets the 429; then the penalty holds.
    assert!(
        statuses.iter().filter(|s| **s == 429).count() <= 1,
        "{statuses:?}"
    );
    assert_eq!(
        busy.counters().requests(),
        statuses.iter().filter(|s| **s == 429).count() as u64
    );
}

fn a_503_moves_traffic_away_only_with_retry_after(driver: IoDriver) {
    for (retry_after, penalized) in [(Some("2"), true), (None, false)] {
        let mut builder = FakeReplica::builder().name("busy").status(503);
        if let Some(seconds) = retry_after {
            builder = builder.header("Retry-After", seconds);
        }
        let busy = builder.start().unwrap();
        let free = FakeReplica::builder().name("free").start().unwrap();
        // Ejection off: only the penalty may move traffic here.
        let proxy = start(driver, &[busy.addr(), free.addr()], |c| {
            c.proxy.outlier.consecutive_failures = 0
        });
        let mut client = RawClient::connect(proxy.addr()).unwrap();
        let unavailable = (0..20)
            .filter(|_| client.get("/").unwrap().status == 503)
            .count();
        if penalized {
            assert!(
                unavailable <= 1,
                "503 with Retry-After: {unavailable} of 20 still went there"
            );
        } else {
            assert_eq!(
                unavailable, 10,
                "a plain 503 is not a penalty: round robin continues"
            );
        }
    }
}

fn only_small_bodies_are_replayed(driver: IoDriver) {
    let failing = FakeReplica::builder()
        .name("sick")
        .failure(Failure::CloseOnRequest)
        .start()
        .unwrap();
    let good = FakeReplica::builder().name("good").start().unwrap();
    let proxy = start(driver, &[failing.addr(), good.addr()], |c| {
        c.proxy.outlier.consecutive_failures = 0;
        c.proxy.retries.non_idempotent = true;
        c.proxy.retries.max_replay_body_bytes = 16;
        // Every request may meet the failing replica first; let the budget
        // allow a retry for each.
        c.proxy.retries.budget_percent = 100;
    });
    let post = |body: &str| {
        let mut client = RawClient::connect(proxy.addr()).unwrap();
        let request = format!(
            "POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        client.send(request.as_bytes()).unwrap();
        client.read_response().unwrap().status
    };
    // A body small enough to keep is replayed on the good replica.
    let small: Vec<u16> = (0..4).map(|_| post("{}")).collect();
    assert!(small.iter().all(|s| *s == 200), "{small:?}");
    // A larger one is not kept, so a failure before the response is a 502.
    let large = "x".repeat(100);
    let statuses: Vec<u16> = (0..4).map(|_| post(&large)).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 502).count(),
        2,
        "{statuses:?}"
    );
}

fn a_failing_replica_is_ejected_with_no_client_error_and_comes_back(driver: IoDriver) {
    let failing = FakeReplica::builder()
        .name("sick")
        .failure(Failure::CloseOnRequest)
        .start()
        .unwrap();
    let sick_addr = failing.addr();
    let good = FakeReplica::builder().name("good").start().unwrap();
    let proxy = start(driver, &[sick_addr, good.addr()], |c| {
        c.proxy.outlier.consecutive_failures = 3;
        c.proxy.outlier.base_ms = 600;
    });
    let mut client = RawClient::connect(proxy.addr()).unwrap();
    // Idempotent requests: every failure is retried on the good replica.
    for _ in 0..30 {
        assert_eq!(client.get("/").unwrap().status, 200);
    }
    let snapshot = proxy.snapshots.load();
    let sick_stats = &snapshot.replicas()[0].stats;
    assert!(
        sick_stats.ejections() >= 1,
        "the failing replica was never ejected"
    );
    let seen = failing.counters().requests();
    assert!(
        seen <= 6,
        "an ejected replica kept getting requests: {seen}"
    );
    // It recovers: replace it with a healthy one on the same port; after the
    // ejection ends, it takes requests again.
    failing.stop();
    let healed = FakeReplica::builder()
        .name("healed")
        .bind(sick_addr)
        .start()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut back = false;
    while Instant::now() < deadline && !back {
        back = client.get("/").unwrap().header("x-replica") == Some("healed");
    }
    assert!(back, "the recovered replica never got traffic again");
    assert!(eventually(Duration::from_secs(1), || healed
        .counters()
        .requests()
        > 0));
}

fn non_idempotent_requests_are_not_retried(driver: IoDriver) {
    let failing = FakeReplica::builder()
        .name("sick")
        .failure(Failure::CloseOnRequest)
        .start()
        .unwrap();
    let good = FakeReplica::builder().name("good").start().unwrap();
    let proxy = start(driver, &[failing.addr(), good.addr()], |c| {
        c.proxy.outlier.consecutive_failures = 0
    });
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let mut client = RawClient::connect(proxy.addr()).unwrap();
        client
            .send(b"POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n{}")
            .unwrap();
        statuses.push(client.read_response().unwrap().status);
    }
    // Round robin sends half to the failing replica; a POST that reached it
    // may have been acted on, so it is answered 502, not replayed.
    assert_eq!(
        statuses.iter().filter(|s| **s == 502).count(),
        2,
        "{statuses:?}"
    );
    assert_eq!(good.counters().requests(), 2);
}

fn the_retry_budget_stops_a_retry_storm(driver: IoDriver) {
    let sick: Vec<_> = (0..3)
        .map(|_| {
            FakeReplica::builder()
                .failure(Failure::CloseOnRequest)
                .start()
                .unwrap()
        })
        .collect();
    let addrs: Vec<_> = sick.iter().map(|r| r.addr()).collect();
    let proxy = start(driver, &addrs, |c| {
        c.proxy.outlier.consecutive_failures = 0;
        c.proxy.retries.budget_percent = 20;
    });
    let requests = 100;
    // A 502 keeps the client's connection: the request was read whole.
    let mut client = RawClient::connect(proxy.addr()).unwrap();
    for _ in 0..requests {
        assert_eq!(client.get("/").unwrap().status, 502);
    }
    let attempts: u64 = sick.iter().map(|r| r.counters().requests()).sum();
    let retries = attempts - requests;
    // 20 % of 100 requests, plus the small floor of 3.
    assert!(
        retries <= 23,
        "{retries} retries for {requests} requests: the budget did not hold"
    );
    assert!(retries >= 3, "no retries at all");
}
