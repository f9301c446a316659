//! gRPC through the balancer with clients nobody here wrote, installed by
//! `cargo xtask test` (which sets `INFERLB_PYTHON`): `tritonclient[grpc]`
//! and `grpcio` (with Triton's generated stubs) against the testkit's KServe
//! v2 replica. Unary and streaming calls, trailers and errors, the model
//! key, deadlines, cancellation and the proxy's own gRPC errors. Both
//! drivers.

#[path = "support/certs.rs"]
mod certs;
mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use inferlb_core::{
    Command as StateCommand, GrpcSettings, IoDriver, PoolName, PoolProtocol, PoolSpec,
    ReplicaStats, Routing, State,
};
use inferlb_testkit::grpc_replica::{self, INFERENCE_SERVICE};
use inferlb_testkit::{eventually, GrpcReplicaConfig, GrpcReplicaHandle};

both_drivers!(
    triton_calls_go_through_every_replica,
    streaming_calls_flow_both_ways,
    the_model_key_picks_the_pool,
    the_proxy_answers_in_grpc_errors,
    grpc_timeout_is_the_calls_deadline,
    a_cancelled_call_cancels_the_replicas_stream,
    a_held_call_cancelled_by_its_client_leaves_the_queue,
    an_idle_replica_connection_is_closed,
    a_stream_the_replica_refused_is_sent_to_another,
    a_replica_that_refuses_connections_is_passed_over,
    a_grpc_pool_reaches_its_replicas_over_tls,
);

/// The client, by mode (argv[1]); the proxy's address is argv[2].
const CLIENT: &str = r#"
import sys, threading, time, queue
import numpy as np
import grpc
import tritonclient.grpc as triton
from tritonclient.grpc import service_pb2 as pb, service_pb2_grpc as pb_grpc
from tritonclient.utils import InferenceServerException

mode, addr = sys.argv[1], sys.argv[2]

def request(model, values, **params):
    r = pb.ModelInferRequest(model_name=model, id="call")
    t = r.inputs.add(name="INPUT0", datatype="FP32", shape=[len(values)])
    t.contents.fp32_contents.extend(values)
    for k, v in params.items():
        r.parameters[k].int64_param = v
    return r

if mode == "unary":
    c = triton.InferenceServerClient(addr)
    print(c.is_server_live(), c.is_server_ready(), c.is_model_ready("m1"), c.is_model_ready("nope"))
    print(c.get_model_metadata("m1").platform)
    seen = set()
    for i in range(6):
        inp = triton.InferInput("INPUT0", [3], "FP32")
        inp.set_data_from_numpy(np.array([i, i + 1, i + 2], dtype=np.float32))
        r = c.infer("m1", [inp])
        assert list(r.as_numpy("OUTPUT0")) == [i, i + 1, i + 2], r.as_numpy("OUTPUT0")
        seen.add(r.get_response().parameters["replica"].string_param)
    print(" ".join(sorted(seen)))
    try:
        c.get_model_metadata("nope")
    except InferenceServerException as e:
        print(e.status())
elif mode == "stream":
    c = triton.InferenceServerClient(addr)
    results = queue.Queue()
    c.start_stream(callback=lambda result, error: results.put((result, error)))
    # One request, many responses (server streaming).
    inp = triton.InferInput("INPUT0", [1], "FP32")
    inp.set_data_from_numpy(np.array([7], dtype=np.float32))
    c.async_stream_infer("m1", [inp], parameters={"responses": 5, "delay_ms": 10})
    got = [results.get(timeout=10) for _ in range(5)]
    print("server-streaming", len(got), all(e is None and r.as_numpy("OUTPUT0")[0] == 7 for r, e in got))
    # Many requests, one response each, interleaved (bidirectional).
    for i in range(20):
        inp = triton.InferInput("INPUT0", [1], "FP32")
        inp.set_data_from_numpy(np.array([i], dtype=np.float32))
        c.async_stream_infer("m1", [inp])
    got = sorted(int(results.get(timeout=10)[0].as_numpy("OUTPUT0")[0]) for _ in range(20))
    print("bidirectional", got == list(range(20)))
    c.stop_stream()
    # Client streaming with raw grpcio: the requests, then half-close, then
    # the responses.
    ch = grpc.insecure_channel(addr)
    stub = pb_grpc.GRPCInferenceServiceStub(ch)
    replies = list(stub.ModelStreamInfer(iter([request("m1", [float(i)]) for i in range(10)]), timeout=10))
    print("client-streaming", len(replies), [r.infer_response.outputs[0].contents.fp32_contents[0] for r in replies] == list(range(10)))
    # A large message both ways (past every window).
    big = request("m1", [1.0] * 1000000)
    reply = stub.ModelInfer(big, timeout=20)
    print("large", len(reply.outputs[0].contents.fp32_contents))
elif mode == "metadata":
    ch = grpc.insecure_channel(addr)
    stub = pb_grpc.GRPCInferenceServiceStub(ch)
    key = sys.argv[3]
    for model in sys.argv[4:]:
        try:
            reply, call = stub.ModelInfer.with_call(request(model, [1.0]), metadata=[(key, model)], timeout=10)
            print(model, dict(call.initial_metadata())["x-replica"])
        except grpc.RpcError as e:
            print(model, e.code().name, e.details())
elif mode == "status":
    ch = grpc.insecure_channel(addr)
    stub = pb_grpc.GRPCInferenceServiceStub(ch)
    try:
        stub.ModelInfer(request(sys.argv[3], [1.0]), metadata=[("x-model", sys.argv[3])], timeout=10)
        print("OK")
    except grpc.RpcError as e:
        print(e.code().name, e.details())
elif mode == "cancel":
    ch = grpc.insecure_channel(addr)
    stub = pb_grpc.GRPCInferenceServiceStub(ch)
    future = stub.ModelInfer.future(request("m1", [1.0], delay_ms=30000))
    print("started", flush=True)
    sys.stdin.readline()
    future.cancel()
    print("cancelled", future.cancelled(), flush=True)
"#;

/// A gRPC replica by hand with the `h2` library that answers no call
/// (argv[1] `silent`: ignoring deadlines; `refuse`: resetting each stream
/// with REFUSED_STREAM): prints its port, then `request grpc-timeout=…` for
/// each call and `reset` for each stream the proxy resets.
const HAND_REPLICA: &str = r#"
import socket, sys
import h2.connection, h2.config, h2.events, h2.errors
listener = socket.create_server(("127.0.0.1", 0))
print(listener.getsockname()[1], flush=True)
listener.settimeout(30)
s, _ = listener.accept()
s.settimeout(30)
c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
c.initiate_connection()
s.sendall(c.data_to_send())
while True:
    data = s.recv(65536)
    if not data:
        break
    for e in c.receive_data(data):
        if isinstance(e, h2.events.RequestReceived):
            print("request grpc-timeout=" + dict(e.headers).get("grpc-timeout", "none"), flush=True)
            if sys.argv[1] == "refuse":
                c.reset_stream(e.stream_id, error_code=h2.errors.ErrorCodes.REFUSED_STREAM)
        elif isinstance(e, h2.events.DataReceived):
            c.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
        elif isinstance(e, h2.events.StreamReset):
            print("reset", flush=True)
    s.sendall(c.data_to_send())
"#;

/// By hand with the `h2` library, so that only the proxy can end the call:
/// a ModelInfer with `grpc-timeout: 300m` (and a `delay_ms` of 30 s for a
/// replica that would answer); prints the status and trailers it gets.
const DEADLINE: &str = r#"
import socket, struct, sys
import h2.connection, h2.config, h2.events
from tritonclient.grpc import service_pb2 as pb
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10)
c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
c.initiate_connection()
r = pb.ModelInferRequest(model_name="m1")
r.parameters["delay_ms"].int64_param = 30000
message = r.SerializeToString()
c.send_headers(1, [(":method", "POST"), (":scheme", "http"), (":path", "/inference.GRPCInferenceService/ModelInfer"),
                   (":authority", "localhost"), ("content-type", "application/grpc"), ("te", "trailers"),
                   ("grpc-timeout", "300m")])
c.send_data(1, b"\0" + struct.pack(">I", len(message)) + message, end_stream=True)
s.sendall(c.data_to_send())
fields = {}
while True:
    data = s.recv(65536)
    if not data:
        break
    done = False
    for e in c.receive_data(data):
        if isinstance(e, (h2.events.ResponseReceived, h2.events.TrailersReceived)):
            fields.update(dict(e.headers))
        if isinstance(e, (h2.events.StreamEnded, h2.events.StreamReset)):
            done = True
    s.sendall(c.data_to_send())
    if done:
        break
print(fields.get(":status"), fields.get("grpc-status"), fields.get("grpc-message"))
"#;

fn client(mode: &str, proxy: SocketAddr, rest: &[&str]) -> String {
    let proxy = proxy.to_string();
    let mut args = vec![mode, proxy.as_str()];
    args.extend(rest);
    support::run_python(CLIENT, &args)
}

fn replica(name: &str, models: &[&str]) -> GrpcReplicaHandle {
    grpc_replica::start(
        GrpcReplicaConfig {
            models: models.iter().map(|m| m.to_string()).collect(),
            name: name.into(),
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap()
}

fn grpc_pool(name: &str, services: &[&str]) -> PoolSpec {
    let mut pool = PoolSpec::named(PoolName::new(name).unwrap());
    pool.protocol = PoolProtocol::Grpc;
    pool.grpc = GrpcSettings {
        services: services.iter().map(|s| s.to_string()).collect(),
        idempotent_methods: Vec::new(),
    };
    pool
}

/// A proxy in front of gRPC pools: `(pool, services, replicas)`.
fn proxy(driver: IoDriver, pools: &[(&str, &[&str], &[&GrpcReplicaHandle])]) -> support::Proxy {
    let mut state = State::new(Routing::RoundRobin);
    for (name, services, replicas) in pools {
        state
            .apply(StateCommand::SetPool(Box::new(grpc_pool(name, services))))
            .unwrap();
        for (i, r) in replicas.iter().enumerate() {
            let id = format!("{name}-{i}");
            state
                .apply(StateCommand::Add(support::pool_spec(&id, r.addr(), name)))
                .unwrap();
        }
    }
    support::start_state(driver, state, |_| {})
}

/// A proxy in front of the gRPC pool `m1` with replicas at `addrs`.
fn m1_proxy(
    driver: IoDriver,
    addrs: &[SocketAddr],
    tweak: impl FnOnce(&mut inferlb_core::Config),
) -> support::Proxy {
    let mut state = State::new(Routing::RoundRobin);
    state
        .apply(StateCommand::SetPool(Box::new(grpc_pool(
            "m1",
            &[INFERENCE_SERVICE],
        ))))
        .unwrap();
    for (i, &addr) in addrs.iter().enumerate() {
        state
            .apply(StateCommand::Add(support::pool_spec(
                &format!("m1-{i}"),
                addr,
                "m1",
            )))
            .unwrap();
    }
    support::start_state(driver, state, tweak)
}

/// A grpcio call that the test cancels once `ready` holds; returns when the
/// client says the call was cancelled.
fn cancel_call_once(proxy: SocketAddr, ready: impl Fn() -> bool) {
    let mut child = Command::new(support::python())
        .args(["-c", CLIENT, "cancel", &proxy.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "started\n");
    assert!(
        eventually(Duration::from_secs(10), ready),
        "the call never got there"
    );
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    line.clear();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "cancelled True\n");
    assert!(child.wait().unwrap().success());
}

fn stats(proxy: &support::Proxy) -> Arc<ReplicaStats> {
    Arc::clone(&proxy.snapshots.load().replicas()[0].stats)
}

fn triton_calls_go_through_every_replica(driver: IoDriver) {
    let (g1, g2) = (replica("g1", &["m1"]), replica("g2", &["m1"]));
    let proxy = proxy(driver, &[("m1", &[INFERENCE_SERVICE], &[&g1, &g2])]);
    let out = client("unary", proxy.addr(), &[]);
    // Round robin over both; a replica's error (NOT_FOUND) reaches the
    // client in its trailers.
    assert_eq!(
        out,
        "True True True False\ninferlb-fake\ng1 g2\nStatusCode.NOT_FOUND\n"
    );
}

fn streaming_calls_flow_both_ways(driver: IoDriver) {
    let g1 = replica("g1", &["m1"]);
    let proxy = proxy(driver, &[("m1", &[INFERENCE_SERVICE], &[&g1])]);
    let out = client("stream", proxy.addr(), &[]);
    assert_eq!(
        out,
        "server-streaming 5 True\nbidirectional True\nclient-streaming 10 True\nlarge 1000000\n"
    );
    let stats = stats(&proxy);
    assert!(eventually(Duration::from_secs(5), || stats.in_flight() == 0));
}

fn the_model_key_picks_the_pool(driver: IoDriver) {
    let (a, b) = (replica("ga", &["a"]), replica("gb", &["b"]));
    // No pool lists the service: only the model key routes.
    let proxy = proxy(driver, &[("a", &[], &[&a]), ("b", &[], &[&b])]);
    let out = client("metadata", proxy.addr(), &["x-model", "a", "b", "a"]);
    assert_eq!(out, "a ga\nb gb\na ga\n");
    let out = client("metadata", proxy.addr(), &["x-model", "nope"]);
    assert!(
        out.starts_with("nope NOT_FOUND no pool serves model \"nope\""),
        "{out}"
    );
}

fn the_proxy_answers_in_grpc_errors(driver: IoDriver) {
    let g1 = replica("g1", &["m1"]);
    let stopped = replica("gone", &["down"]);
    let gone_addr = stopped.addr();
    drop(stopped);
    let proxy = {
        let mut state = State::new(Routing::RoundRobin);
        for (name, protocol) in [
            ("m1", PoolProtocol::Grpc),
            ("down", PoolProtocol::Grpc),
            ("web", PoolProtocol::Http1),
        ] {
            let mut pool = grpc_pool(name, &[]);
            pool.protocol = protocol;
            state.apply(StateCommand::SetPool(Box::new(pool))).unwrap();
        }
        state
            .apply(StateCommand::Add(support::pool_spec("g1", g1.addr(), "m1")))
            .unwrap();
        state
            .apply(StateCommand::Add(support::pool_spec(
                "gone", gone_addr, "down",
            )))
            .unwrap();
        support::start_state(driver, state, |_| {})
    };
    assert_eq!(client("status", proxy.addr(), &["m1"]), "OK\n");
    // A replica that refuses connections: UNAVAILABLE, in trailers-only form.
    let out = client("status", proxy.addr(), &["down"]);
    assert!(out.starts_with("UNAVAILABLE "), "{out}");
    // A pool of HTTP/1.1 replicas takes no gRPC call.
    let out = client("status", proxy.addr(), &["web"]);
    assert!(
        out.starts_with("UNIMPLEMENTED pool \"web\" does not speak gRPC"),
        "{out}"
    );
}

fn grpc_timeout_is_the_calls_deadline(driver: IoDriver) {
    // A replica that ignores deadlines (tonic's would end the call itself
    // at the same moment, and win the race now and then).
    let (mut replica, addr) = hand_replica("silent");
    let mut said = BufReader::new(replica.stdout.take().unwrap());
    let _stop = Killed(&mut replica);
    let mut line = String::new();
    let proxy = m1_proxy(driver, &[addr], |_| {});
    let out = support::run_python(DEADLINE, &[&proxy.addr().port().to_string()]);
    assert_eq!(out, "200 4 deadline exceeded\n");
    // The replica got the deadline, and its stream was cancelled at it.
    for expected in ["request grpc-timeout=300m\n", "reset\n"] {
        line.clear();
        said.read_line(&mut line).unwrap();
        assert_eq!(line, expected);
    }
    let stats = stats(&proxy);
    assert!(eventually(Duration::from_secs(5), || stats.in_flight() == 0));
}

fn a_stream_the_replica_refused_is_sent_to_another(driver: IoDriver) {
    let (mut refusing, refusing_addr) = hand_replica("refuse");
    let g1 = replica("g1", &["m1"]);
    let proxy = m1_proxy(driver, &[refusing_addr, g1.addr()], |_| {});
    // ModelInfer is not idempotent: only REFUSED_STREAM allows the retry.
    // (Two calls: the retry budget's floor is three retries per window.)
    let out = client("metadata", proxy.addr(), &["x-model", "m1", "m1"]);
    assert_eq!(out, "m1 g1\nm1 g1\n");
    refusing.kill().unwrap();
    refusing.wait().unwrap();
    let mut said = String::new();
    use std::io::Read;
    refusing
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut said)
        .unwrap();
    assert!(
        said.contains("request "),
        "the refusing replica got no call: {said}"
    );
}

/// Starts [`HAND_REPLICA`] in `mode`; its address comes from its first line.
fn hand_replica(mode: &str) -> (std::process::Child, SocketAddr) {
    let mut child = Command::new(support::python())
        .args(["-c", HAND_REPLICA, mode])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut port = [0u8; 6];
    let mut stdout = child.stdout.take().unwrap();
    let mut n = 0;
    use std::io::Read;
    while n == 0 || port[n - 1] != b'\n' {
        n += stdout.read(&mut port[n..n + 1]).unwrap();
    }
    child.stdout = Some(stdout);
    let port: u16 = std::str::from_utf8(&port[..n - 1])
        .unwrap()
        .parse()
        .unwrap();
    (child, SocketAddr::from(([127, 0, 0, 1], port)))
}

/// Kills the child when the test ends, however it ends.
struct Killed<'a>(&'a mut std::process::Child);

impl Drop for Killed<'_> {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn a_cancelled_call_cancels_the_replicas_stream(driver: IoDriver) {
    let g1 = replica("g1", &["m1"]);
    let proxy = proxy(driver, &[("m1", &[INFERENCE_SERVICE], &[&g1])]);
    let stats = stats(&proxy);
    cancel_call_once(proxy.addr(), || stats.in_flight() == 1);
    let replica_stats = Arc::clone(g1.stats());
    assert!(
        eventually(Duration::from_secs(5), || replica_stats
            .cancelled
            .load(Ordering::SeqCst)
            == 1),
        "the replica's call was not cancelled"
    );
    assert!(eventually(Duration::from_secs(5), || stats.in_flight() == 0));
}

fn a_held_call_cancelled_by_its_client_leaves_the_queue(driver: IoDriver) {
    // A pool that scales from zero and has no replica yet: its calls are
    // held (here, for up to 30 s; no scaler runs in this test).
    let mut pool = grpc_pool("m1", &[INFERENCE_SERVICE]);
    let mut scaling = inferlb_core::PoolAutoscaling::new(inferlb_core::Provider::Exec {
        command: vec!["unused".into()],
        env: Vec::new(),
    });
    scaling.queue_timeout = Duration::from_secs(30);
    pool.autoscaling = Some(Arc::new(scaling));
    let mut state = State::new(Routing::RoundRobin);
    state.apply(StateCommand::SetPool(Box::new(pool))).unwrap();
    let proxy = support::start_state(driver, state, |_| {});
    let snapshot = proxy.snapshots.load();
    let queue = Arc::clone(
        snapshot.pools()[snapshot.pool_named("m1").unwrap()]
            .queue()
            .unwrap(),
    );
    cancel_call_once(proxy.addr(), || queue.held() == 1);
    // The client's RST_STREAM ends the hold: its place is free long
    // before the queue timeout.
    assert!(
        eventually(Duration::from_secs(5), || queue.held() == 0),
        "the cancelled call is still held"
    );
}

fn an_idle_replica_connection_is_closed(driver: IoDriver) {
    let g1 = replica("g1", &["m1"]);
    let proxy = m1_proxy(driver, &[g1.addr()], |c| {
        c.proxy.upstream.idle_timeout = Duration::from_millis(300);
    });
    let connections = || g1.stats().connections.load(Ordering::SeqCst);
    assert_eq!(client("status", proxy.addr(), &["m1"]), "OK\n");
    // The call's connection (kept for the next calls) goes once it has
    // carried no stream for the upstream idle timeout.
    assert_eq!(g1.stats().calls.load(Ordering::SeqCst), 1);
    assert!(
        eventually(Duration::from_secs(5), || connections() == 0),
        "the idle connection to the replica stayed open"
    );
    // The next call opens another.
    assert_eq!(client("status", proxy.addr(), &["m1"]), "OK\n");
}

fn a_replica_that_refuses_connections_is_passed_over(driver: IoDriver) {
    let g1 = replica("g1", &["m1"]);
    let dead = replica("dead", &["m1"]);
    let proxy = proxy(driver, &[("m1", &[INFERENCE_SERVICE], &[&g1, &dead])]);
    let dead_stats = Arc::clone(&proxy.snapshots.load().replicas()[1].stats);
    drop(dead);
    // Every call is answered, by the replica that is up: a refused connect
    // sent nothing, so the call moves on.
    let out = client(
        "metadata",
        proxy.addr(),
        &["x-model", "m1", "m1", "m1", "m1"],
    );
    assert_eq!(out, "m1 g1\nm1 g1\nm1 g1\nm1 g1\n");
    assert!(dead_stats.in_flight() == 0);
}

/// `[pools.upstream_tls]` on a gRPC pool: h2 over TLS (ALPN h2, verified),
/// here to a second inferlb whose TLS listener fronts the replica.
fn a_grpc_pool_reaches_its_replicas_over_tls(driver: IoDriver) {
    use inferlb_core::pool::UpstreamTls;
    let dir = inferlb_testkit::fresh_dir(&format!("grpc-tls-{driver:?}"));
    let ca = certs::Ca::new(&dir, "grpc");
    let leaf = ca.leaf(&dir, "replica", &["replica.test"]);
    let g1 = replica("g1", &["m1"]);
    let mut back_state = State::new(Routing::RoundRobin);
    back_state
        .apply(StateCommand::SetPool(Box::new(grpc_pool(
            "m1",
            &[INFERENCE_SERVICE],
        ))))
        .unwrap();
    back_state
        .apply(StateCommand::Add(support::pool_spec("g1", g1.addr(), "m1")))
        .unwrap();
    let back = support::start_state(driver, back_state, |c| {
        c.proxy.listeners = vec![leaf.listener()];
    });
    let mut front_state = State::new(Routing::RoundRobin);
    let mut pool = grpc_pool("m1", &[INFERENCE_SERVICE]);
    pool.upstream_tls = Some(Arc::new(UpstreamTls {
        ca: Some(ca.pem.clone()),
        server_name: Some("replica.test".into()),
        verify: true,
    }));
    front_state
        .apply(StateCommand::SetPool(Box::new(pool)))
        .unwrap();
    front_state
        .apply(StateCommand::Add(support::pool_spec(
            "tls",
            back.addr(),
            "m1",
        )))
        .unwrap();
    let front = support::start_state(driver, front_state, |_| {});
    let out = client("metadata", front.addr(), &["x-model", "m1", "m1"]);
    assert_eq!(out, "m1 g1\nm1 g1\n");
}
