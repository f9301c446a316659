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
                front: Default::default(),
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
    // Served once each, so admitted, and kept open.
    let mut held: Vec<TcpStream> = (0..4)
        .map(|_| {
            let mut s = TcpStream::connect(addr).unwrap();
            assert_eq!(ask(&mut s, HEALTHZ), 200);
            s
        })
        .collect();
    let mut extra = TcpStream::connect(addr).unwrap();
    assert!(
        closed_within(&mut extra, Duration::from_secs(2)),
        "a fifth connection was kept"
    );
    // The held ones still work; once they close, new ones are served.
    for stream in &mut held {
        assert_eq!(ask(stream, HEALTHZ), 200);
    }
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut again = TcpStream::connect(addr).unwrap();
        if again.write_all(HEALTHZ).is_ok()
            && !closed_within(&mut again, Duration::from_millis(200))
        {
            break;
        }
        assert!(Instant::now() < deadline, "the freed slots never came back");
    }
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

/// A connection from `from` (any 127.0.0.0/8 address is this machine).
fn connect_from(from: [u8; 4], addr: SocketAddr) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.bind(&SocketAddr::from((from, 0)).into()).unwrap();
    socket.connect(&addr.into()).unwrap();
    socket.into()
}

/// Sends one request on `stream` and reads the status of its answer,
/// leaving the connection open (keep-alive).
fn ask(stream: &mut TcpStream, request: &[u8]) -> u16 {
    stream.write_all(request).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    // Until the end of the head and the Content-Length body.
    loop {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "closed before an answer");
        answer.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&answer).to_ascii_lowercase();
        if let Some(end) = text.find("\r\n\r\n") {
            let length: usize = text[..end]
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            if answer.len() >= end + 4 + length {
                return text[9..12].parse().unwrap();
            }
        }
    }
}

const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";

/// `n` connections, each served once (so admitted) and kept open.
fn served(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|_| {
            let mut s = TcpStream::connect(addr).unwrap();
            assert_eq!(ask(&mut s, HEALTHZ), 200);
            s
        })
        .collect()
}

#[test]
fn one_client_address_cannot_take_every_connection() {
    let addr = start(ServeLimits {
        max_connections_per_client: 3,
        ..ServeLimits::default()
    });
    // Three served (so admitted) and kept open.
    let mut held: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut s = connect_from([127, 0, 0, 1], addr);
            assert_eq!(ask(&mut s, HEALTHZ), 200);
            s
        })
        .collect();
    let mut extra = connect_from([127, 0, 0, 1], addr);
    assert!(
        closed_within(&mut extra, Duration::from_secs(2)),
        "a fourth connection from one address was kept"
    );
    // Another address is served.
    let mut other = connect_from([127, 0, 0, 2], addr);
    assert_eq!(ask(&mut other, HEALTHZ), 200);
    // Once one closes, the first address gets a connection again.
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut again = connect_from([127, 0, 0, 1], addr);
        if again.write_all(HEALTHZ).is_ok()
            && !closed_within(&mut again, Duration::from_millis(200))
        {
            break;
        }
        assert!(Instant::now() < deadline, "the freed slot never came back");
    }
}

#[test]
fn slots_kept_for_the_token_serve_only_requests_that_carry_it() {
    let addr = start(ServeLimits {
        max_connections: 4,
        reserved_for_token: 2,
        token: Some("s3cret".into()),
        ..ServeLimits::default()
    });
    // The two open slots, taken by an unauthenticated peer.
    let _held = served(addr, 2);
    // A kept slot without the token: 401, then closed.
    let mut anonymous = TcpStream::connect(addr).unwrap();
    assert_eq!(ask(&mut anonymous, HEALTHZ), 401);
    assert!(closed_within(&mut anonymous, Duration::from_secs(2)));
    // With it, served, and kept alive.
    let mut operator = TcpStream::connect(addr).unwrap();
    let with_token =
        b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer s3cret\r\n\r\n";
    assert_eq!(ask(&mut operator, with_token), 200);
    assert_eq!(ask(&mut operator, with_token), 200);
}

#[test]
fn a_body_that_never_ends_is_cut_off() {
    let addr = start(ServeLimits {
        body_read_timeout: Duration::from_millis(300),
        ..ServeLimits::default()
    });
    let mut slow = TcpStream::connect(addr).unwrap();
    slow.write_all(
        b"POST /v1/replicas HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"add",
    )
    .unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut head = [0u8; 12];
    slow.read_exact(&mut head).unwrap();
    assert_eq!(&head[9..12], b"408");
    assert!(
        closed_within(&mut slow, Duration::from_secs(3)),
        "a slow body held its connection"
    );
}

#[test]
fn a_client_at_its_cap_still_reaches_the_api_with_the_token() {
    let addr = start(ServeLimits {
        max_connections_per_client: 2,
        reserved_for_token: 2,
        token: Some("s3cret".into()),
        ..ServeLimits::default()
    });
    // An unauthenticated peer holds its two.
    let _held = served(addr, 2);
    // From the same address: without the token, 401 and closed...
    let mut anonymous = TcpStream::connect(addr).unwrap();
    assert_eq!(ask(&mut anonymous, HEALTHZ), 401);
    assert!(closed_within(&mut anonymous, Duration::from_secs(2)));
    // ...with it, served.
    let mut operator = TcpStream::connect(addr).unwrap();
    let with_token =
        b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer s3cret\r\n\r\n";
    assert_eq!(ask(&mut operator, with_token), 200);
}
