//! The edge with Python clients nobody here wrote, installed by
//! `cargo xtask test` (which sets `INFERLB_PYTHON`): the `openai` SDK and
//! `httpx` over https with a test CA (HTTP/2 and HTTP/1.1), and the `h2`
//! library driving HTTP/2 abuse by hand: rapid reset, PING and SETTINGS
//! floods, a CONTINUATION flood and an oversized header list each end the
//! connection while the proxy keeps serving others. Both drivers.

#[path = "support/certs.rs"]
mod certs;
mod support;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use inferlb_core::config::Listener;
use inferlb_core::{H2Abuse, IoDriver};
use inferlb_testkit::{eventually, fresh_dir, EngineConfig};

both_drivers!(
    the_openai_sdk_and_httpx_speak_h2_over_tls,
    http2_abuse_ends_the_connection_and_nothing_else,
    a_reset_stream_cancels_its_replica,
    an_idle_http2_connection_gets_goaway_at_the_keepalive_timeout,
);

/// An h2c connection with no stream, waiting for what the server does.
const IDLE_SCRIPT: &str = r#"
import socket, sys
import h2.connection, h2.config
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
c.initiate_connection()
s.sendall(c.data_to_send())
# Frames read by hand: the h2 library closes its state machine at the
# first GOAWAY, and RFC 9113's graceful shutdown sends two (the second
# after a PING round trip).
pending = b""
while True:
    data = s.recv(65536)
    if not data:
        print("closed")
        break
    pending += data
    while len(pending) >= 9:
        size = 9 + int.from_bytes(pending[:3], "big")
        if len(pending) < size:
            break
        frame, pending = pending[:size], pending[size:]
        kind, flags, payload = frame[3], frame[4], frame[9:]
        if kind == 4 and not flags & 1:
            s.sendall(bytes([0, 0, 0, 4, 1, 0, 0, 0, 0]))
        elif kind == 6 and not flags & 1:
            s.sendall(bytes([0, 0, 8, 6, 1, 0, 0, 0, 0]) + payload)
        elif kind == 7:
            last = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
            code = int.from_bytes(payload[4:8], "big")
            print("goaway", last, code)
"#;

/// An HTTP/2 connection with no stream for `client_keepalive_timeout_ms`
/// (the header timeout before its first request) is closed with GOAWAY
/// (NO_ERROR, no stream processed).
fn an_idle_http2_connection_gets_goaway_at_the_keepalive_timeout(driver: IoDriver) {
    let replica = inferlb_testkit::FakeReplica::builder()
        .name("r1")
        .start()
        .unwrap();
    let proxy = support::start(driver, &[replica.addr()], |c| {
        c.proxy.listeners = vec![Listener::plain("127.0.0.1:0".parse().unwrap())];
        c.proxy.timeouts.client_header = Duration::from_millis(300);
        c.proxy.timeouts.client_keepalive = Duration::from_millis(300);
    });
    let out = support::run_python(
        IDLE_SCRIPT,
        &["127.0.0.1", &proxy.addr().port().to_string()],
    );
    // One GOAWAY naming the last stream processed (none), and close.
    assert_eq!(out, "goaway 0 0\nclosed\n");
}

/// A TLS listener and a plaintext one in front of the simulated engine.
fn start(driver: IoDriver, dir: &std::path::Path) -> (support::Proxy, certs::Ca) {
    let ca = certs::Ca::new(dir, "py");
    let leaf = ca.leaf(dir, "api", &["localhost"]);
    let engine = inferlb_testkit::fake_engine::start(
        EngineConfig {
            models: vec!["m1".into()],
            decode_ms_per_token: 1.0,
            ..EngineConfig::default()
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap();
    let engine_addr = engine.addr();
    std::mem::forget(engine);
    let proxy = support::start(driver, &[engine_addr], |c| {
        c.proxy.listeners = vec![
            leaf.listener(),
            Listener::plain("127.0.0.1:0".parse().unwrap()),
        ];
        c.proxy.http2.max_resets_per_s = 50;
        c.proxy.http2.max_control_frames_per_s = 200;
        c.proxy.timeouts.client_header = Duration::from_secs(1);
    });
    (proxy, ca)
}

const SDK_SCRIPT: &str = r#"
import sys, httpx
from openai import OpenAI
base, ca = sys.argv[1], sys.argv[2]
for http2 in (True, False):
    http = httpx.Client(verify=ca, http2=http2)
    client = OpenAI(base_url=base, api_key="unused", max_retries=0, timeout=20, http_client=http)
    stream = client.chat.completions.create(
        model="m1", messages=[{"role": "user", "content": "Hello!"}], max_tokens=4, stream=True)
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    reply = client.chat.completions.create(model="m1", messages=[{"role": "user", "content": "x"}], max_tokens=2)
    r = http.get(base + "/models")
    print("h2" if http2 else "h1", r.http_version, len([p for p in pieces if p]), reply.usage.completion_tokens)
"#;

fn the_openai_sdk_and_httpx_speak_h2_over_tls(driver: IoDriver) {
    let dir = fresh_dir(&format!("edge-py-sdk-{driver:?}"));
    let (proxy, ca) = start(driver, &dir);
    let tls: SocketAddr = proxy.handle.local_addrs()[0];
    let base = format!("https://localhost:{}/v1", tls.port());
    let out = support::run_python(SDK_SCRIPT, &[&base, ca.pem.to_str().unwrap()]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines, ["h2 HTTP/2 4 2", "h1 HTTP/1.1 4 2"], "{out}");
    assert!(
        proxy
            .handle
            .front_end()
            .edge
            .h2_streams
            .load(Ordering::Relaxed)
            >= 3
    );
}

/// Each attack on its own h2c connection; prints what the server did.
const ABUSE_SCRIPT: &str = r#"
import socket, sys, time
import h2.connection, h2.config, h2.events, h2.exceptions
from hyperframe.frame import HeadersFrame, ContinuationFrame, PingFrame, WindowUpdateFrame
host, port = sys.argv[1], int(sys.argv[2])

def connect():
    s = socket.create_connection((host, port), timeout=5)
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    c.initiate_connection()
    s.sendall(c.data_to_send())
    return s, c

def outcome(s, c):
    # Reads until the server closes: the GOAWAY's error code, or "open".
    deadline = time.time() + 5
    code = None
    while time.time() < deadline:
        try:
            data = s.recv(65536)
        except socket.timeout:
            break
        except ConnectionResetError:
            return code or "reset"
        if not data:
            return code or "closed"
        try:
            for e in c.receive_data(data):
                if isinstance(e, h2.events.ConnectionTerminated):
                    code = e.error_code.name
        except h2.exceptions.ProtocolError:
            pass
        try:
            s.sendall(c.data_to_send())
        except OSError:
            return code or "closed"
    return code or "open"

headers = [(":method", "GET"), (":path", "/"), (":scheme", "http"), (":authority", "x")]

# The advertised limit.
s, c = connect()
s.sendall(c.data_to_send())
data = s.recv(65536)
for e in c.receive_data(data):
    if isinstance(e, h2.events.RemoteSettingsChanged):
        print("max_concurrent_streams", e.changed_settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS].new_value)
s.close()

# Rapid reset: open and cancel streams as fast as possible.
s, c = connect()
for i in range(400):
    sid = c.get_next_available_stream_id()
    c.send_headers(sid, headers, end_stream=True)
    c.reset_stream(sid)
    try:
        s.sendall(c.data_to_send())
    except OSError:
        break
print("rapid_reset", outcome(s, c))

# PING flood.
s, c = connect()
for i in range(2000):
    try:
        s.sendall(PingFrame(0, opaque_data=i.to_bytes(8, "big")).serialize())
    except OSError:
        break
print("ping_flood", outcome(s, c))

# SETTINGS flood.
s, c = connect()
for i in range(2000):
    c.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 100 + i % 7})
    try:
        s.sendall(c.data_to_send())
    except OSError:
        break
print("settings_flood", outcome(s, c))

# CONTINUATION flood: one header block that never ends.
s, c = connect()
frame = HeadersFrame(1)
frame.data = c.encoder.encode(headers)
s.sendall(frame.serialize())
block = c.encoder.encode([("x-filler", "a" * 1000)])
sent = 0
for i in range(5000):
    cont = ContinuationFrame(1)
    cont.data = block
    try:
        s.sendall(cont.serialize())
    except OSError:
        break
    sent += 1
print("continuation_flood", outcome(s, c), "stopped" if sent < 5000 else "all")

# A header list over the limit (HPACK-decoded size).
s, c = connect()
try:
    c.send_headers(1, headers + [("x-big-%d" % i, "v" * 1000) for i in range(40)], end_stream=True)
    s.sendall(c.data_to_send())
except Exception as e:
    print("oversized", "client refused", type(e).__name__)
else:
    print("oversized", outcome(s, c))

# WINDOW_UPDATE flood on the connection.
s, c = connect()
for i in range(2000):
    try:
        s.sendall(WindowUpdateFrame(0, window_increment=1).serialize())
    except OSError:
        break
print("window_update_flood", outcome(s, c))

# An HPACK bomb: one 3 900-byte header put in the dynamic table, then
# referenced 200 times by a one-byte index (780 KB decoded from 4 KB).
s, c = connect()
block = c.encoder.encode(headers)
block += b"\x40\x06x-bomb" + b"\x7f\xbd\x1d" + b"v" * 3900 + b"\xbe" * 200
frame = HeadersFrame(1, flags=["END_HEADERS", "END_STREAM"])
frame.data = block
s.sendall(frame.serialize())
print("hpack_bomb", outcome(s, c))

# More streams than max_concurrent_streams, by hand (the library would
# refuse): each HEADERS without END_STREAM keeps its stream open.
s, c = connect()
post = [(":method", "POST"), (":path", "/"), (":scheme", "http"), (":authority", "x")]
frames = b""
for i in range(130):
    frame = HeadersFrame(2 * i + 1, flags=["END_HEADERS"])
    frame.data = c.encoder.encode(post)
    frames += frame.serialize()
s.sendall(frames)
refused = set()
pending = b""
deadline = time.time() + 5
while time.time() < deadline and len(refused) < 2:
    try:
        data = s.recv(65536)
    except socket.timeout:
        break
    if not data:
        break
    pending += data
    while len(pending) >= 9:
        size = 9 + int.from_bytes(pending[:3], "big")
        if len(pending) < size:
            break
        frame, pending = pending[:size], pending[size:]
        sid = int.from_bytes(frame[5:9], "big") & 0x7FFFFFFF
        if frame[3] == 3 and int.from_bytes(frame[9:13], "big") == 7:
            refused.add(sid)
print("refused_streams", sorted(refused))
s.close()

# The preface, then nothing: closed at the header timeout.
s = socket.create_connection((host, port), timeout=10)
s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
started = time.time()
try:
    while s.recv(65536):
        pass
    print("header_timeout", "closed", round(time.time() - started))
except socket.timeout:
    print("header_timeout", "open")
"#;

fn http2_abuse_ends_the_connection_and_nothing_else(driver: IoDriver) {
    let dir = fresh_dir(&format!("edge-py-abuse-{driver:?}"));
    let (proxy, _ca) = start(driver, &dir);
    let plain = proxy.handle.local_addrs()[1];
    let out = support::run_python(ABUSE_SCRIPT, &["127.0.0.1", &plain.port().to_string()]);
    let line = |name: &str| {
        out.lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} line in:\n{out}"))
            .to_owned()
    };
    assert_eq!(line("max_concurrent_streams"), "max_concurrent_streams 128");
    // A flood ends with GOAWAY ENHANCE_YOUR_CALM; a client still sending
    // when the proxy closes may see the reset its unread bytes cause
    // instead (then the GOAWAY is lost with them): as ECONNRESET on its
    // read ("reset") or EPIPE on its next write ("closed"). The metrics
    // below say which limit acted.
    for flood in [
        "rapid_reset",
        "ping_flood",
        "settings_flood",
        "window_update_flood",
    ] {
        let seen = line(flood);
        assert!(
            [
                format!("{flood} ENHANCE_YOUR_CALM"),
                format!("{flood} reset"),
                format!("{flood} closed"),
            ]
            .contains(&seen),
            "{out}"
        );
    }
    // The codec refuses the endless header block (its size passes the
    // header list limit) and closes the connection.
    let continuation = line("continuation_flood");
    assert!(!continuation.contains(" open"), "{out}");
    let oversized = line("oversized");
    assert!(!oversized.ends_with(" open"), "{out}");
    // The GOAWAY reaches a client that stopped sending in time: at least
    // one of the floods saw it.
    assert!(
        out.contains("_flood ENHANCE_YOUR_CALM") || out.contains("rapid_reset ENHANCE_YOUR_CALM"),
        "{out}"
    );
    let bomb = line("hpack_bomb");
    assert!(!bomb.ends_with(" open"), "{out}");
    // Streams 257 and 259, past the 128 allowed at once, are refused.
    assert_eq!(
        line("refused_streams"),
        "refused_streams [257, 259]",
        "{out}"
    );
    assert_eq!(line("header_timeout"), "header_timeout closed 1", "{out}");
    let edge = &proxy.handle.front_end().edge;
    let goaways = edge.goaways();
    let count = |why| {
        goaways
            .iter()
            .find(|(w, _)| *w == why)
            .map_or(0, |(_, n)| *n)
    };
    assert!(count(H2Abuse::RapidReset) >= 1, "{goaways:?}");
    assert!(count(H2Abuse::ControlFlood) >= 3, "{goaways:?}");
    assert!(count(H2Abuse::Protocol) >= 2, "{goaways:?}");
    // The proxy still serves.
    assert!(eventually(Duration::from_secs(5), || {
        let mut client = inferlb_testkit::RawClient::connect(plain).unwrap();
        client.get("/v1/models").is_ok_and(|r| r.status == 200)
    }));
}

/// A token stream reset by the client after its first token.
const RESET_SCRIPT: &str = r#"
import socket, sys
import h2.connection, h2.config, h2.events
host, port = sys.argv[1], int(sys.argv[2])
headers = [(":method", "POST"), (":path", "/v1/completions"), (":scheme", "http"),
           (":authority", "x"), ("content-type", "application/json")]
s = socket.create_connection((host, port), timeout=10)
c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
c.initiate_connection()
c.send_headers(1, headers)
c.send_data(1, b'{"stream": true}', end_stream=True)
s.sendall(c.data_to_send())
done = False
while not done:
    data = s.recv(65536)
    if not data:
        break
    for e in c.receive_data(data):
        if isinstance(e, h2.events.DataReceived):
            c.reset_stream(1)
            s.sendall(c.data_to_send())
            print("reset", flush=True)
            done = True
            break
"#;

/// A client's `RST_STREAM` mid-stream closes the replica's connection (the
/// model server stops generating), like a client leaving on HTTP/1.1.
fn a_reset_stream_cancels_its_replica(driver: IoDriver) {
    let replica = inferlb_testkit::FakeReplica::builder()
        .name("r1")
        .tokens(20, Duration::from_millis(50))
        .start()
        .unwrap();
    let proxy = support::start(driver, &[replica.addr()], |c| {
        c.proxy.listeners = vec![Listener::plain("127.0.0.1:0".parse().unwrap())];
    });
    let out = support::run_python(
        RESET_SCRIPT,
        &["127.0.0.1", &proxy.addr().port().to_string()],
    );
    assert_eq!(out.trim(), "reset");
    assert!(eventually(Duration::from_secs(5), || {
        replica.counters().cancellations() >= 1
    }));
}
