//! Allocation-free forwarding is checked, not hoped: heap blocks allocated
//! over K requests in steady state must not grow with K.
//!
//! Everything in this process allocates through dhat, so the replica and the
//! client here are hand-written over std sockets with fixed buffers: the only
//! allocator in the loop is the proxy.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread;

use inferlb_core::IoDriver;

mod support;

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
const REQUEST: &[u8] = b"GET /v1/models HTTP/1.1\r\nHost: t\r\nX-Request-Id: fixed\r\n\r\n";

/// A keep-alive replica that answers each head with a fixed response.
fn replica(listener: TcpListener) {
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { return };
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            let mut have = 0;
            loop {
                match stream.read(&mut buf[have..]) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => have += n,
                }
                while let Some(end) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") {
                    if stream.write_all(RESPONSE).is_err() {
                        return;
                    }
                    buf.copy_within(end + 4..have, 0);
                    have -= end + 4;
                }
            }
        });
    }
}

fn requests(client: &mut TcpStream, n: usize) {
    let mut buf = [0u8; 4096];
    for _ in 0..n {
        client.write_all(REQUEST).unwrap();
        let mut have = 0;
        loop {
            have += client.read(&mut buf[have..]).unwrap();
            if let Some(end) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") {
                if have >= end + 4 + 5 {
                    break;
                }
            }
        }
        assert!(buf.starts_with(b"HTTP/1.1 200"));
    }
}

#[test]
fn steady_state_forwarding_does_not_allocate_per_request() {
    let _profiler = dhat::Profiler::builder().testing().build();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || replica(listener));
    for driver in [IoDriver::Uring, IoDriver::Legacy] {
        let proxy = support::start(driver, &[addr], |_| {});
        let mut client = TcpStream::connect(proxy.addr()).unwrap();
        client.set_nodelay(true).unwrap();
        requests(&mut client, 500);
        let before = dhat::HeapStats::get().total_blocks;
        requests(&mut client, 1000);
        let after_1k = dhat::HeapStats::get().total_blocks;
        requests(&mut client, 4000);
        let after_5k = dhat::HeapStats::get().total_blocks;
        let (k1, k4) = (after_1k - before, after_5k - after_1k);
        assert!(
            k4 <= k1 + 64 && k4 < 4000 / 4,
            "{driver:?}: {k1} blocks over 1000 requests, {k4} over the next 4000"
        );
    }
}
