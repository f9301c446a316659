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

/// One dhat profiler at a time: the tests of this file take turns.
static PROFILER: std::sync::Mutex<()> = std::sync::Mutex::new(());

const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
const REQUEST: &[u8] = b"GET /v1/models HTTP/1.1\r\nHost: t\r\nX-Request-Id: fixed\r\n\r\n";

/// The `Content-Length` of a head, read without allocating.
fn content_length(head: &[u8]) -> usize {
    let name = b"content-length:";
    head.windows(name.len())
        .position(|w| w.eq_ignore_ascii_case(name))
        .map_or(0, |at| {
            head[at + name.len()..]
                .iter()
                .skip_while(|b| **b == b' ')
                .take_while(|b| b.is_ascii_digit())
                .fold(0, |n, d| n * 10 + usize::from(d - b'0'))
        })
}

/// A keep-alive replica that answers each request (head and body) with a
/// fixed response.
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
                    let whole = end + 4 + content_length(&buf[..end]);
                    if have < whole {
                        break;
                    }
                    if stream.write_all(RESPONSE).is_err() {
                        return;
                    }
                    buf.copy_within(whole..have, 0);
                    have -= whole;
                }
            }
        });
    }
}

fn requests(client: &mut TcpStream, n: usize) {
    requests_of(client, REQUEST, n);
}

fn requests_of(client: &mut TcpStream, request: &[u8], n: usize) {
    let mut buf = [0u8; 4096];
    for _ in 0..n {
        client.write_all(request).unwrap();
        let mut have = 0;
        loop {
            have += client.read(&mut buf[have..]).unwrap();
            if let Some(end) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") {
                if have >= end + 4 + 5 {
                    break;
                }
            }
        }
        assert!(
            buf.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&buf[..have])
        );
    }
}

#[test]
fn steady_state_forwarding_does_not_allocate_per_request() {
    let _turn = PROFILER.lock().unwrap_or_else(|e| e.into_inner());
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

/// A request naming its model in the header, and one naming it only in its
/// JSON body (read for its `"model"` before a replica is picked).
const BY_HEADER: &[u8] = b"POST /v1/completions HTTP/1.1\r\nHost: t\r\nX-Request-Id: fixed\r\nX-Model: llama\r\nContent-Type: application/json\r\nContent-Length: 16\r\n\r\n{\"prompt\": \"hi\"}";
const BY_BODY: &[u8] = b"POST /v1/completions HTTP/1.1\r\nHost: t\r\nX-Request-Id: fixed\r\nContent-Type: application/json\r\nContent-Length: 34\r\n\r\n{\"model\": \"llama\", \"prompt\": \"hi\"}";

#[test]
fn model_routing_by_header_or_body_does_not_allocate_per_request() {
    let _turn = PROFILER.lock().unwrap_or_else(|e| e.into_inner());
    let _profiler = dhat::Profiler::builder().testing().build();
    let mut addrs = Vec::new();
    for _ in 0..2 {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        addrs.push(listener.local_addr().unwrap());
        thread::spawn(move || replica(listener));
    }
    for driver in [IoDriver::Uring, IoDriver::Legacy] {
        let mut state = inferlb_core::State::new(inferlb_core::Routing::RoundRobin);
        state
            .apply(inferlb_core::Command::Add(support::pool_spec(
                "a", addrs[0], "llama",
            )))
            .unwrap();
        state
            .apply(inferlb_core::Command::Add(support::pool_spec(
                "b", addrs[1], "qwen",
            )))
            .unwrap();
        let proxy = support::start_state(driver, state, |_| {});
        for (path, request) in [("header", BY_HEADER), ("body", BY_BODY)] {
            let mut client = TcpStream::connect(proxy.addr()).unwrap();
            client.set_nodelay(true).unwrap();
            requests_of(&mut client, request, 500);
            let before = dhat::HeapStats::get().total_blocks;
            requests_of(&mut client, request, 1000);
            let after_1k = dhat::HeapStats::get().total_blocks;
            requests_of(&mut client, request, 4000);
            let after_5k = dhat::HeapStats::get().total_blocks;
            let (k1, k4) = (after_1k - before, after_5k - after_1k);
            assert!(
                k4 <= k1 + 64 && k4 < 4000 / 4,
                "{driver:?}, model by {path}: {k1} blocks over 1000 requests, {k4} over the next 4000"
            );
        }
    }
}
