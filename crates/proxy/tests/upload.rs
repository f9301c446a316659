//! A large upload streams through in bounded memory. One test in its own
//! binary, so that the process's peak memory is this test's alone.

mod support;

use std::io::Write;
use std::time::Duration;

use inferlb_core::IoDriver;
use inferlb_testkit::{FakeReplica, RawClient};
use support::start;

/// The process's peak resident set, in KiB.
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn a_256_mib_upload_uses_bounded_memory_on_both_drivers() {
    const SIZE: usize = 256 * 1024 * 1024;
    let replica = FakeReplica::builder().start().unwrap();
    for driver in [IoDriver::Uring, IoDriver::Legacy] {
        let proxy = start(driver, &[replica.addr()], |c| {
            c.proxy.timeouts.body_read = Duration::from_secs(30)
        });
        let before = peak_rss_kib();
        let mut client = RawClient::connect(proxy.addr()).unwrap();
        client
            .send(
                format!("PUT /blob HTTP/1.1\r\nHost: t\r\nContent-Length: {SIZE}\r\n\r\n")
                    .as_bytes(),
            )
            .unwrap();
        let chunk = vec![0x5au8; 1024 * 1024];
        let stream = client.stream();
        let mut writer = stream.try_clone().unwrap();
        for _ in 0..SIZE / chunk.len() {
            writer.write_all(&chunk).unwrap();
        }
        let resp = client.read_response().unwrap();
        assert_eq!(resp.status, 200);
        assert_eq!(replica.counters().last_request().unwrap().body_len, SIZE);
        let grown_mib = (peak_rss_kib().saturating_sub(before)) / 1024;
        assert!(
            grown_mib < 32,
            "{driver:?}: peak memory grew by {grown_mib} MiB for a 256 MiB upload"
        );
    }
}
