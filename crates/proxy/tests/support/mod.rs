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
    let mut config = Config::default();
    config.proxy.listen = "127.0.0.1:0".parse().unwrap();
    config.proxy.workers = 1;
    config.proxy.io_driver = driver;
    config.routing = Routing::RoundRobin;
    tweak(&mut config);
    let mut state = State::new(config.routing);
    for &(addr, weight) in replicas {
        state.apply(Command::Add(spec(addr, weight))).unwrap();
    }
    let snapshots = Snapshots::new(state.snapshot());
    let handle = inferlb_proxy::start(&config.proxy, snapshots.clone()).expect("proxy starts");
    Proxy {
        handle,
        snapshots,
        state,
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
