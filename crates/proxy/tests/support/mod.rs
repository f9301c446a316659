//! Shared set-up of the proxy's end-to-end tests: a proxy on 127.0.0.1:0 in
//! front of fake replicas, on the driver the test asks for.

#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::net::SocketAddr;

use inferlb_core::{Command, Config, IoDriver, ReplicaId, ReplicaSpec, Routing, Snapshots, State};
use inferlb_proxy::ProxyHandle;
use inferlb_testkit::RawClient;

/// A running proxy and the state it was built from.
pub struct Proxy {
    pub handle: ProxyHandle,
    pub snapshots: Snapshots,
    pub state: State,
}

impl Proxy {
    pub fn addr(&self) -> SocketAddr {
        self.handle.local_addr()
    }

    /// Applies a command and publishes the result.
    pub fn apply(&mut self, command: Command) {
        self.state.apply(command).expect("command applies");
        self.snapshots.publish(self.state.snapshot());
    }
}

pub fn spec(addr: SocketAddr, weight: u32) -> ReplicaSpec {
    ReplicaSpec {
        id: ReplicaId::from_address(&addr.to_string()),
        address: addr.to_string(),
        addr,
        weight,
        pool: Default::default(),
    }
}

/// One worker (so shares are exact), the given driver, the given replicas.
pub fn start(driver: IoDriver, replicas: &[SocketAddr], tweak: impl FnOnce(&mut Config)) -> Proxy {
    start_weighted(
        driver,
        &replicas.iter().map(|&a| (a, 1)).collect::<Vec<_>>(),
        tweak,
    )
}

pub fn start_weighted(
    driver: IoDriver,
    replicas: &[(SocketAddr, u32)],
    tweak: impl FnOnce(&mut Config),
) -> Proxy {
    let mut config = test_config(driver);
    config.routing = Routing::RoundRobin;
    tweak(&mut config);
    let mut state = State::new(config.routing);
    for &(addr, weight) in replicas {
        state.apply(Command::Add(spec(addr, weight))).unwrap();
    }
    start_state(driver, state, |c| *c = config)
}

/// A proxy (one worker, the given driver) over a state the test built.
/// One worker (so shares are exact) on 127.0.0.1:0, the given driver.
fn test_config(driver: IoDriver) -> Config {
    let mut config = Config::default();
    config.proxy.listen_on("127.0.0.1:0".parse().unwrap());
    config.proxy.workers = 1;
    config.proxy.io_driver = driver;
    config
}

pub fn start_state(driver: IoDriver, state: State, tweak: impl FnOnce(&mut Config)) -> Proxy {
    let mut config = test_config(driver);
    tweak(&mut config);
    let snapshots = Snapshots::new(state.snapshot());
    let handle = inferlb_proxy::start(&config.proxy, snapshots.clone()).expect("proxy starts");
    Proxy {
        handle,
        snapshots,
        state,
    }
}

/// A replica spec in pool `pool`, its id `id`.
pub fn pool_spec(id: &str, addr: SocketAddr, pool: &str) -> ReplicaSpec {
    ReplicaSpec {
        id: ReplicaId::new(id).unwrap(),
        address: addr.to_string(),
        addr,
        weight: 1,
        pool: inferlb_core::PoolName::new(pool).unwrap(),
    }
}

/// `clients` keep-alive connections, each sending `requests` GETs at once;
/// every answer must be 200. Returns requests per replica (`X-Replica`).
pub fn shares_under_load(
    addr: SocketAddr,
    clients: usize,
    requests: usize,
) -> HashMap<String, usize> {
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            std::thread::spawn(move || {
                let mut shares: HashMap<String, usize> = HashMap::new();
                let mut client = RawClient::connect(addr).unwrap();
                for _ in 0..requests {
                    let resp = client.get("/").unwrap();
                    assert_eq!(resp.status, 200);
                    *shares
                        .entry(resp.header("x-replica").unwrap_or("?").to_owned())
                        .or_default() += 1;
                }
                shares
            })
        })
        .collect();
    let mut total = HashMap::new();
    for t in threads {
        for (k, v) in t.join().unwrap() {
            *total.entry(k).or_default() += v;
        }
    }
    total
}

/// Generates one `#[test]` per driver for each listed function, which takes
/// the driver as its argument.
#[macro_export]
macro_rules! both_drivers {
    ($($name:ident),* $(,)?) => {
        mod uring {
            $( #[test] fn $name() { super::$name(inferlb_core::IoDriver::Uring) } )*
        }
        mod legacy {
            $( #[test] fn $name() { super::$name(inferlb_core::IoDriver::Legacy) } )*
        }
    };
}

/// A hand-written replica: answers every request with `response`, byte for
/// byte (closing afterwards when `close_after`), and counts connections and
/// requests. For replica misbehaviour the fake replicas will not produce.
pub struct Scripted {
    pub addr: SocketAddr,
    pub connections: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    pub requests: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

pub fn scripted(response: &'static [u8], close_after: bool) -> Scripted {
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(AtomicUsize::new(0));
    let (c, r) = (Arc::clone(&connections), Arc::clone(&requests));
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            c.fetch_add(1, Ordering::SeqCst);
            let r = Arc::clone(&r);
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    // One request: a head, then a Content-Length body.
                    let head_end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        match stream.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map_or(0, |v| v.trim().parse().unwrap_or(0));
                    while buf.len() < head_end + length {
                        match stream.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    buf.drain(..head_end + length);
                    r.fetch_add(1, Ordering::SeqCst);
                    if stream.write_all(response).is_err() || close_after {
                        return;
                    }
                }
            });
        }
    });
    Scripted {
        addr,
        connections,
        requests,
    }
}

/// A replica that accepts connections and never reads from them, so writes
/// to it stall once the socket buffers are full (its receive buffer is made
/// small, so that happens after a few KiB). Returns its address and the
/// count of connections it holds.
pub fn stalled() -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket
        .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    socket.listen(16).unwrap();
    let listener: std::net::TcpListener = socket.into();
    let addr = listener.local_addr().unwrap();
    let held = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&held);
    std::thread::spawn(move || {
        let mut streams = Vec::new();
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            count.fetch_add(1, Ordering::SeqCst);
            streams.push(stream);
        }
    });
    (addr, held)
}

/// The Python with the clients installed (`cargo xtask test` sets
/// `INFERLB_PYTHON`).
pub fn python() -> String {
    std::env::var("INFERLB_PYTHON").unwrap_or_else(|_| {
        panic!("INFERLB_PYTHON is not set: run these tests with `cargo xtask test`, which installs the Python clients")
    })
}

/// Runs `script` with `args` to its end; its output, which must be a
/// success.
pub fn run_python(script: &str, args: &[&str]) -> String {
    let output = std::process::Command::new(python())
        .args(["-c", script])
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "the script failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}
