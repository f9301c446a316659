//! The `grpc` scenario: KServe v2 calls per second through a gRPC pool,
//! with h2load posting one gRPC message per call over h2c, against direct
//! (h2load straight to one replica) and HAProxy proxying gRPC over h2
//! (`proto h2` on both sides), one worker each on the same core. Two kinds
//! of call: unary `ModelInfer`, and server-streaming `ModelStreamInfer`
//! (one request, `tokens` responses). p50 and p99 come from h2load's
//! per-request log.

use inferlb_benches::edge;
use inferlb_benches::report::{Measurement, Row};
use inferlb_testkit::grpc_replica::proto::inference::{
    infer_parameter::ParameterChoice, model_infer_request::InferInputTensor, InferParameter,
    InferTensorContents, ModelInferRequest,
};
use inferlb_testkit::grpc_replica::{self, GrpcReplicaHandle};
use inferlb_testkit::GrpcReplicaConfig;
use prost::Message;

use super::edge::{empty, h2load_measured};
use super::*;

/// One kind of call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    Unary,
    ServerStreaming,
}

impl Call {
    fn path(self) -> &'static str {
        match self {
            Self::Unary => "/inference.GRPCInferenceService/ModelInfer",
            Self::ServerStreaming => "/inference.GRPCInferenceService/ModelStreamInfer",
        }
    }

    fn label(self, s: &Scenario, connections: usize) -> String {
        match self {
            Self::Unary => format!("unary ModelInfer, c={connections} m=10"),
            Self::ServerStreaming => format!(
                "server-streaming ModelStreamInfer ({} responses), c={connections} m=10",
                s.tokens.max(1)
            ),
        }
    }
}

/// A gRPC message (length-prefixed, uncompressed) of a 16-value request.
fn message(responses: Option<usize>) -> Vec<u8> {
    let mut request = ModelInferRequest {
        model_name: "m1".into(),
        inputs: vec![InferInputTensor {
            name: "INPUT0".into(),
            datatype: "FP32".into(),
            shape: vec![16],
            contents: Some(InferTensorContents {
                fp32_contents: (0..16).map(|i| i as f32).collect(),
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    };
    if let Some(n) = responses {
        request.parameters.insert(
            "responses".into(),
            InferParameter {
                parameter_choice: Some(ParameterChoice::Int64Param(n as i64)),
            },
        );
    }
    let body = request.encode_to_vec();
    let mut framed = Vec::with_capacity(5 + body.len());
    framed.push(0);
    framed.extend_from_slice(&(body.len() as u32).to_be_bytes());
    framed.extend_from_slice(&body);
    framed
}

pub(crate) fn grpc(
    s: &Scenario,
    args: &Args,
    layout: &Layout,
    dir: &std::path::Path,
    load_threads: usize,
) -> Result<Vec<Row>> {
    let replicas: Vec<GrpcReplicaHandle> = (0..s.replicas)
        .map(|i| {
            grpc_replica::start(
                GrpcReplicaConfig {
                    models: vec!["m1".into()],
                    name: format!("g{i}"),
                },
                "127.0.0.1:0".parse().expect("an address"),
            )
            .context("cannot start a fake gRPC replica")
        })
        .collect::<Result<_>>()?;
    let addrs: Vec<SocketAddr> = replicas.iter().map(GrpcReplicaHandle::addr).collect();
    let duration = Duration::from_secs(args.duration.unwrap_or(s.duration_s));
    let peers: Vec<Peer> = peer_list(s, args)
        .into_iter()
        .filter(|p| matches!(p, Peer::Direct | Peer::Inferlb | Peer::Haproxy))
        .collect();
    let point = s.load.first().context("the scenario has no load point")?;
    std::fs::create_dir_all(dir)?;
    let mut rows = Vec::new();
    for call in [Call::Unary, Call::ServerStreaming] {
        let payload = dir.join(format!("grpc-{call:?}.bin"));
        let responses = (call == Call::ServerStreaming).then_some(s.tokens.max(1));
        std::fs::write(&payload, message(responses))?;
        let mut rounds: Vec<Vec<Measurement>> = vec![Vec::new(); peers.len()];
        for _round in 0..args.rounds(s) {
            for (i, &peer) in peers.iter().enumerate() {
                let mut settings =
                    settings(args, layout, "round_robin", dir, point.connections * 10);
                settings.grpc = true;
                let running = peers::start(peer, &addrs, &settings)?;
                eprintln!("  {} {} {call:?}", s.name, peer.name());
                let log = dir.join(format!("h2load-{}.log", peer.name()));
                let _ = std::fs::remove_file(&log);
                let h2load_args = [
                    "-m".to_owned(),
                    "10".to_owned(),
                    "-d".to_owned(),
                    payload.display().to_string(),
                    "-H".to_owned(),
                    "content-type: application/grpc".to_owned(),
                    "-H".to_owned(),
                    "te: trailers".to_owned(),
                    format!("--log-file={}", log.display()),
                ];
                let url = format!("http://{}{}", running.addr, call.path());
                let mut m = empty();
                h2load_measured(
                    &mut m,
                    &running,
                    point,
                    &load_threads.to_string(),
                    &h2load_args,
                    &url,
                    &format!("{}s", duration.as_secs().max(1)),
                )?;
                if let Some((p50, p99)) = edge::h2load_log_percentiles(&log) {
                    m.latency.p50_ms = p50;
                    m.latency.p99_ms = p99;
                }
                if running.pid().is_some() {
                    m.peak_rss_kib = Some(running.peak_rss_kib());
                } else {
                    // Direct: no proxy, no proxy CPU.
                    m.cpu_s_per_100k = None;
                }
                m.extra.insert("round".into(), json!(rounds[i].len() + 1));
                rounds[i].push(m);
            }
        }
        for (i, peer) in peers.iter().enumerate() {
            rows.push(Row {
                point: call.label(s, point.connections),
                peer: peer.name().into(),
                median: report::median(&rounds[i], |m| m.throughput_rps),
                rounds: rounds[i].clone(),
            });
        }
    }
    drop(replicas);
    Ok(rows)
}
