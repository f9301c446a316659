//! WebSocket through the balancer with the Python `websockets` client
//! (installed by `cargo xtask test`, which sets `INFERLB_PYTHON`) against
//! the simulated engine's Realtime-shaped `/v1/realtime`: messages both
//! ways (text, binary, 1 MiB, a streamed response), the model from
//! `?model=` or `X-Model`, the tunnel counted in flight while it lasts, the
//! idle timeout, a drained replica's tunnels closed at its deadline, and
//! `upgrades = []` refusing the switch; and RFC 8441's extended CONNECT
//! from an HTTP/2 client relayed to the replica's HTTP/1.1 upgrade. Both
//! drivers.

#[path = "support/certs.rs"]
mod certs;
mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use inferlb_core::{IoDriver, PoolName, PoolSpec, ReplicaStats, Routing, State};
use inferlb_testkit::{eventually, fake_engine, fresh_dir, EngineConfig, EngineHandle};

both_drivers!(
    messages_flow_both_ways_through_a_websocket,
    the_model_comes_from_the_query_or_the_header,
    a_tunnel_is_in_flight_until_it_closes,
    an_idle_tunnel_is_closed,
    a_drained_replicas_tunnels_close_at_its_deadline,
    upgrades_can_be_turned_off,
    a_websocket_over_http2_is_relayed_to_an_http1_upgrade,
    a_websocket_over_tls_is_relayed,
);

/// RFC 8441 by hand with the `h2` library (no Python WebSocket client
/// speaks HTTP/2): the server must offer SETTINGS_ENABLE_CONNECT_PROTOCOL,
/// an extended CONNECT gets 200, and WebSocket frames (masked from the
/// client) travel as DATA both ways; then the client ends its stream.
const H2_CLIENT: &str = r#"
import json, os, socket, struct, sys
import h2.connection, h2.config, h2.events, h2.settings
host, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
s = socket.create_connection((host, port), timeout=10)
c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
c.initiate_connection()
s.sendall(c.data_to_send())
received = b""
events = []
def pump():
    global received
    data = s.recv(65536)
    if not data:
        raise SystemExit("closed")
    for e in c.receive_data(data):
        if isinstance(e, h2.events.DataReceived):
            received += e.data
            c.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
        events.append(e)
    s.sendall(c.data_to_send())
while c.remote_settings.get(h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL) != 1:
    pump()
print("connect protocol offered")
sid = c.get_next_available_stream_id()
c.send_headers(sid, [(":method", "CONNECT"), (":protocol", "websocket"), (":scheme", "http"),
                     (":path", path), (":authority", "localhost"), ("sec-websocket-version", "13")])
s.sendall(c.data_to_send())
while not any(isinstance(e, h2.events.ResponseReceived) for e in events):
    pump()
status = dict(next(e for e in events if isinstance(e, h2.events.ResponseReceived)).headers)[":status"]
print("status", status)
def frame(opcode, payload):
    mask = os.urandom(4)
    head = bytes([0x80 | opcode])
    head += bytes([0x80 | len(payload)]) if len(payload) < 126 else bytes([0x80 | 126]) + struct.pack(">H", len(payload))
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
def message():
    global received
    while True:
        if len(received) >= 2:
            n, at = received[1] & 0x7F, 2
            if n == 126:
                n, at = struct.unpack(">H", received[2:4])[0], 4
            if len(received) >= at + n:
                opcode, payload, received = received[0] & 0x0F, received[at:at + n], received[at + n:]
                return opcode, payload
        pump()
opcode, payload = message()
print(json.loads(payload)["type"], json.loads(payload)["session"]["model"])
c.send_data(sid, frame(1, b"hello over h2"))
s.sendall(c.data_to_send())
print(message()[1].decode())
c.send_data(sid, frame(8, struct.pack(">H", 1000)), end_stream=True)
s.sendall(c.data_to_send())
opcode, payload = message()
print("close", opcode, struct.unpack(">H", payload[:2])[0])
while not any(isinstance(e, h2.events.StreamEnded) for e in events):
    pump()
print("stream ended")
"#;

/// One client per mode:
/// - `session`: the session's model and replica, an echoed text, an echoed
///   binary message, a streamed response's events, a 1 MiB echo, a close;
/// - `hold`: opens, says `open`, then waits for the server to close (or a
///   line on stdin: then it closes itself);
/// - `refused`: the handshake's refusal status.
const CLIENT: &str = r#"
import functools, json, os, ssl, sys, threading
from websockets.sync.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
mode, url = sys.argv[1], sys.argv[2]
headers = [tuple(a.split("=", 1)) for a in sys.argv[3:]]
if url.startswith("wss:"):
    connect = functools.partial(connect, ssl=ssl.create_default_context(cafile=os.environ["WS_CA"]))
if mode == "refused":
    try:
        connect(url, additional_headers=headers, open_timeout=10)
        print("open")
    except InvalidStatus as e:
        print("status", e.response.status_code)
    sys.exit(0)
ws = connect(url, additional_headers=headers, open_timeout=10, max_size=None)
created = json.loads(ws.recv(timeout=10))
print(created["session"]["model"], created["session"]["replica"], flush=True)
if mode == "session":
    ws.send("hello")
    print(ws.recv(timeout=10))
    ws.send(b"\x00\x01\xfe\xff")
    print(ws.recv(timeout=10).hex())
    ws.send(json.dumps({"type": "response.create", "response": {"max_output_tokens": 5}}))
    events = []
    while not events or events[-1] != "response.done":
        events.append(json.loads(ws.recv(timeout=10))["type"])
    print(" ".join(events))
    big = "x" * (1 << 20)
    ws.send(big)
    print(len(ws.recv(timeout=30)) == len(big))
    ws.close()
    print("closed", ws.close_code)
elif mode == "hold":
    print("open", flush=True)
    threading.Thread(target=lambda: (sys.stdin.readline(), ws.close()), daemon=True).start()
    try:
        while True:
            ws.recv(timeout=60)
    except ConnectionClosed:
        print("closed", flush=True)
"#;

fn client(args: &[&str]) -> Command {
    let mut command = Command::new(support::python());
    command.args(["-c", CLIENT]).args(args);
    command
}

/// A `hold` client, started; returns it once it says `open`.
fn hold(url: &str) -> (Child, BufReader<ChildStdout>) {
    let mut child = client(&["hold", url])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert!(!line.is_empty(), "the session did not open");
    line.clear();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "open\n");
    (child, out)
}

/// Waits for a `hold` client to see its connection closed.
fn closed(mut child: Child, mut out: BufReader<ChildStdout>) {
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "closed\n");
    assert!(child.wait().unwrap().success());
}

fn engine(name: &str, model: &str) -> EngineHandle {
    fake_engine::start(
        EngineConfig {
            models: vec![model.into()],
            name: name.into(),
            decode_ms_per_token: 1.0,
            ..EngineConfig::default()
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap()
}

fn url(proxy: SocketAddr, query: &str) -> String {
    format!("ws://{proxy}/v1/realtime{query}")
}

fn stats(proxy: &support::Proxy) -> Arc<ReplicaStats> {
    Arc::clone(&proxy.snapshots.load().replicas()[0].stats)
}

fn messages_flow_both_ways_through_a_websocket(driver: IoDriver) {
    let engine = engine("e1", "m1");
    let proxy = support::start(driver, &[engine.addr()], |_| {});
    let out = support::run_python(CLIENT, &["session", &url(proxy.addr(), "?model=m1")]);
    assert_eq!(
        out,
        "m1 e1\nhello\n0001feff\nresponse.created response.output_text.delta \
         response.output_text.delta response.output_text.delta response.output_text.delta \
         response.output_text.delta response.done\nTrue\nclosed 1000\n"
    );
}

fn the_model_comes_from_the_query_or_the_header(driver: IoDriver) {
    let (e1, e2) = (engine("e1", "m1"), engine("e2", "m2"));
    let mut state = State::new(Routing::RoundRobin);
    for name in ["m1", "m2"] {
        let pool = PoolSpec::named(PoolName::new(name).unwrap());
        state
            .apply(inferlb_core::Command::SetPool(Box::new(pool)))
            .unwrap();
    }
    for (id, addr, pool) in [("e1", e1.addr(), "m1"), ("e2", e2.addr(), "m2")] {
        state
            .apply(inferlb_core::Command::Add(support::pool_spec(
                id, addr, pool,
            )))
            .unwrap();
    }
    let proxy = support::start_state(driver, state, |_| {});
    let addr = proxy.addr();
    assert_eq!(
        support::run_python(CLIENT, &["session", &url(addr, "?model=m2")])
            .lines()
            .next(),
        Some("m2 e2")
    );
    assert_eq!(
        support::run_python(CLIENT, &["session", &url(addr, "?model=m1")])
            .lines()
            .next(),
        Some("m1 e1")
    );
    // The header wins; the engine reports the query's model, which it was
    // not asked to check.
    let header = support::run_python(CLIENT, &["session", &url(addr, "?model=m1"), "X-Model=m2"]);
    assert_eq!(header.lines().next(), Some("m1 e2"));
    // A model no pool serves is refused before the switch, OpenAI's 404.
    assert_eq!(
        support::run_python(CLIENT, &["refused", &url(addr, "?model=nope")]),
        "status 404\n"
    );
}

fn a_tunnel_is_in_flight_until_it_closes(driver: IoDriver) {
    let engine = engine("e1", "m1");
    let proxy = support::start(driver, &[engine.addr()], |_| {});
    let stats = stats(&proxy);
    let (mut child, out) = hold(&url(proxy.addr(), ""));
    assert!(eventually(Duration::from_secs(5), || stats.in_flight() == 1));
    // The client closes: both sides end, and the tunnel is no longer counted.
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"close\n").unwrap();
    closed(child, out);
    assert!(
        eventually(Duration::from_secs(5), || stats.in_flight() == 0),
        "a closed tunnel still counts as in flight"
    );
}

fn an_idle_tunnel_is_closed(driver: IoDriver) {
    let engine = engine("e1", "m1");
    let proxy = support::start(driver, &[engine.addr()], |c| {
        c.proxy.timeouts.tunnel_idle = Duration::from_millis(500);
    });
    let stats = stats(&proxy);
    let (child, out) = hold(&url(proxy.addr(), ""));
    // Nobody sends: the proxy closes both sides.
    closed(child, out);
    assert!(eventually(Duration::from_secs(5), || stats.in_flight() == 0));
}

fn a_drained_replicas_tunnels_close_at_its_deadline(driver: IoDriver) {
    let engine = engine("e1", "m1");
    let proxy = support::start(driver, &[engine.addr()], |_| {});
    let stats = stats(&proxy);
    let (child, out) = hold(&url(proxy.addr(), ""));
    assert!(eventually(Duration::from_secs(5), || stats.in_flight() == 1));
    // What the control plane does when a drain's deadline passes with the
    // tunnel still open.
    stats.evict();
    closed(child, out);
    assert!(eventually(Duration::from_secs(5), || stats.in_flight() == 0));
}

fn a_websocket_over_http2_is_relayed_to_an_http1_upgrade(driver: IoDriver) {
    let engine = engine("e1", "m1");
    let proxy = support::start(driver, &[engine.addr()], |_| {});
    let stats = stats(&proxy);
    let stdout = support::run_python(
        H2_CLIENT,
        &[
            "127.0.0.1",
            &proxy.addr().port().to_string(),
            "/v1/realtime?model=m1",
        ],
    );
    assert_eq!(
        stdout,
        "connect protocol offered\nstatus 200\nsession.created m1\nhello over h2\n\
         close 8 1000\nstream ended\n"
    );
    assert!(eventually(Duration::from_secs(5), || stats.in_flight() == 0));
}

fn a_websocket_over_tls_is_relayed(driver: IoDriver) {
    let dir = fresh_dir(&format!("ws-tls-{driver:?}"));
    let ca = certs::Ca::new(&dir, "ws");
    let leaf = ca.leaf(&dir, "api", &["localhost"]);
    let engine = engine("e1", "m1");
    let proxy = support::start(driver, &[engine.addr()], |c| {
        c.proxy.listeners = vec![leaf.listener()];
    });
    let url = format!(
        "wss://localhost:{}/v1/realtime?model=m1",
        proxy.addr().port()
    );
    let output = client(&["session", &url])
        .env("WS_CA", &ca.pem)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.starts_with("m1 e1\nhello\n0001feff\n"), "{stdout}");
    assert!(stdout.ends_with("True\nclosed 1000\n"), "{stdout}");
}

fn upgrades_can_be_turned_off(driver: IoDriver) {
    let engine = engine("e1", "m1");
    let proxy = support::start(driver, &[engine.addr()], |c| {
        c.proxy.upgrades = Vec::new();
    });
    // `Upgrade` is dropped as hop-by-hop: the engine sees a plain GET and
    // refuses it (axum's 400 for a request that is not a WebSocket
    // handshake), and the client never switches.
    let out = support::run_python(CLIENT, &["refused", &url(proxy.addr(), "")]);
    assert!(out.starts_with("status 4"), "{out}");
}
