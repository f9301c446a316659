//! Several listeners (`[[listeners]]`): every worker accepts on each, and a
//! graceful stop closes them all. Both monoio drivers.

mod support;

use std::time::Duration;

use inferlb_core::IoDriver;
use inferlb_testkit::{eventually, FakeReplica, RawClient};

both_drivers!(every_listener_serves_and_a_stop_closes_them_all);

fn every_listener_serves_and_a_stop_closes_them_all(driver: IoDriver) {
    let replica = FakeReplica::builder().name("r1").start().unwrap();
    let proxy = support::start(driver, &[replica.addr()], |c| {
        c.proxy.workers = 2;
        for addr in ["127.0.0.1:0", "[::1]:0"] {
            let listener = inferlb_core::config::Listener::plain(addr.parse().unwrap());
            c.proxy.listeners.push(listener);
        }
    });
    let addrs = proxy.handle.local_addrs().to_vec();
    assert_eq!(addrs.len(), 3);
    assert_eq!(addrs[0], proxy.addr());
    assert!(addrs[2].is_ipv6());
    for &addr in &addrs {
        let mut client = RawClient::connect(addr).unwrap();
        for _ in 0..3 {
            let resp = client.get("/").unwrap();
            assert_eq!(resp.status, 200, "{addr}");
            assert_eq!(resp.header("x-replica"), Some("r1"));
        }
    }
    proxy.handle.shutdown();
    for &addr in &addrs {
        assert!(
            eventually(Duration::from_secs(5), || std::net::TcpStream::connect(
                addr
            )
            .is_err()),
            "{addr} still accepts after the stop"
        );
    }
}
