//! The admin server's own limits on real sockets: a head that never ends,
//! more connections than allowed, an oversized head and body. The API is
//! reachable before any token is checked, so each must be bounded.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use inferlb_admin::{AppState, DataPlane, ServeLimits};
use inferlb_control::Control;
use inferlb_core::{Routing, Snapshots, State};

/// Starts the admin server with `limits` on a thread of its own.
fn start(limits: ServeLimits) -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let state = State::new(Routing::RoundRobin);
            let snapshots = Snapshots::new(state.snapshot());
            let control = Arc::new(Control::new(state, snapshots, None));
            let data_plane = DataPlane {
                workers: 1,
                io_driver: "io_uring".into(),
                worker_stats: Vec::new(),
            };
            let app = AppState::new(control, data_plane, None, false);
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            inferlb_admin::serve_with_limits(
                listener,
                inferlb_admin::router(app),
                std::future::pending(),
                limits,
            )
            .await
            .unwrap();
        });
    });
    rx.recv().unwrap()
}

/// Reads until the peer closes or `within` passes; true when it closed.
fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        stream
            .set_read_timeout(Some(
                deadline
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(1)),
            ))
            .unwrap();
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
    false
}

/// Sends `request` and returns the status of the answer.
fn status(addr: SocketAddr, request: &[u8]) -> u16 {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.write_all(request).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).unwrap();
    std::str::from_utf8(&head[9..12]).unwrap().parse().unwrap()
}

#[test]
fn a_head_that_never_ends_is_cut_off() {
    let addr = start(ServeLimits {
        header_read_timeout: Duration::from_millis(300),
        ..ServeLimits::default()
    });
    let mut slow = TcpStream::connect(addr).unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        .unwrap();
    assert!(
        closed_within(&mut slow, Duration::from_secs(3)),
        "a slow head held its connection"
    );
}

#[test]
fn connections_over_the_cap_are_closed() {
    let addr = start(ServeLimits {
        max_connections: 4,
        ..ServeLimits::default()
    });
    let mut held: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect(addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut extra = TcpStream::connect(addr).unwrap();
    assert!(
        closed_within(&mut extra, Duration::from_secs(2)),
        "a fifth connection was kept"
    );
    // The held ones still work; once they close, new ones are served.
    for stream in &mut held {
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut answer = String::new();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        stream.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    drop(held);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        status(addr, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"),
        200
    );
}

#[test]
fn oversized_heads_and_bodies_are_refused() {
    let addr = start(ServeLimits::default());
    let big_head = format!(
        "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20 * 1024)
    );
    assert_eq!(status(addr, big_head.as_bytes()), 431);
    let body = format!(
        r#"{{"address": "127.0.0.1:9", "id": "{}"}}"#,
        "a".repeat(70 * 1024)
    );
    let request = format!(
        "POST /v1/replicas HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    assert_eq!(status(addr, request.as_bytes()), 413);
}
