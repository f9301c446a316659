//! A fake gRPC model server: KServe v2's `inference.GRPCInferenceService`
//! (Triton's field numbers, so `tritonclient[grpc]` works against it) and
//! `grpc.health.v1.Health`, on tonic. What `inferlb fake-replica --protocol
//! grpc` runs, and the gRPC pools' replica in tests.
//!
//! - `ServerLive`, `ServerReady`, `ServerMetadata`; `ModelReady` and
//!   `ModelMetadata` for the models it serves (`NOT_FOUND` for others).
//! - `ModelInfer` echoes: output `OUTPUTn` is input `n` renamed (contents
//!   and raw contents alike), with the parameter `replica` set to its name.
//!   The request parameter `delay_ms` (int64) makes it wait that long
//!   first; a call cancelled meanwhile is counted in
//!   [`GrpcStats::cancelled`].
//! - `ModelStreamInfer` answers each request with `responses` (int64,
//!   default 1) such echoes, `delay_ms` apart; a model it does not serve
//!   gets a response with `error_message`.
//! - Every response carries the `x-replica` metadata key.
//! - `Health/Check` says `SERVING` for `""` and the inference service
//!   while [`GrpcStats::set_serving`] says so (`NOT_SERVING` otherwise),
//!   and `NOT_FOUND` for any other service.
//! - Open client connections are counted in [`GrpcStats::connections`].

use std::io;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::thread;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, watch};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

/// The generated messages and services.
#[allow(missing_docs, clippy::all, clippy::pedantic, unreachable_pub)]
pub mod proto {
    /// KServe v2 (`package inference`).
    pub mod inference {
        tonic::include_proto!("inference");
    }
    /// `grpc.health.v1`.
    pub mod health {
        tonic::include_proto!("grpc.health.v1");
    }
}

use proto::health::health_check_response::ServingStatus;
use proto::health::health_server::{Health, HealthServer};
use proto::health::{HealthCheckRequest, HealthCheckResponse};
use proto::inference::grpc_inference_service_server::{
    GrpcInferenceService, GrpcInferenceServiceServer,
};
use proto::inference::{self as v2, infer_parameter::ParameterChoice, InferParameter};

/// The service's full name, as health checks and routing use it.
pub const INFERENCE_SERVICE: &str = "inference.GRPCInferenceService";

/// What the fake serves.
#[derive(Debug, Clone)]
pub struct GrpcReplicaConfig {
    /// Model names it serves.
    pub models: Vec<String>,
    /// Reported in `x-replica` and the `replica` parameter.
    pub name: String,
}

impl Default for GrpcReplicaConfig {
    fn default() -> Self {
        Self {
            models: vec!["fake-model".into()],
            name: "grpc".into(),
        }
    }
}

/// What it counted, and its health switch.
#[derive(Debug)]
pub struct GrpcStats {
    /// `ModelInfer` calls and `ModelStreamInfer` requests received.
    pub calls: AtomicU64,
    /// Calls whose client cancelled before the answer was sent.
    pub cancelled: AtomicU64,
    /// Client connections open now.
    pub connections: AtomicU64,
    serving: AtomicBool,
}

impl Default for GrpcStats {
    fn default() -> Self {
        Self {
            calls: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            serving: AtomicBool::new(true),
        }
    }
}

impl GrpcStats {
    /// What `Health/Check` answers from now on.
    pub fn set_serving(&self, serving: bool) {
        self.serving.store(serving, Ordering::SeqCst);
    }
}

/// A running fake; dropping it stops it.
#[derive(Debug)]
pub struct GrpcReplicaHandle {
    addr: SocketAddr,
    stats: Arc<GrpcStats>,
    stop: watch::Sender<bool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl GrpcReplicaHandle {
    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// What it counted.
    pub fn stats(&self) -> &Arc<GrpcStats> {
        &self.stats
    }

    /// Blocks until it stops (it runs until the handle is dropped).
    pub fn join(mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for GrpcReplicaHandle {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Starts a fake gRPC replica on `bind`, on a thread of its own.
pub fn start(config: GrpcReplicaConfig, bind: SocketAddr) -> io::Result<GrpcReplicaHandle> {
    let listener = StdListener::bind(bind)?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let stats = Arc::new(GrpcStats::default());
    let service = Fake {
        config: Arc::new(config),
        stats: Arc::clone(&stats),
    };
    let counted = Arc::clone(&stats);
    let (stop, mut stopped) = watch::channel(false);
    let mut stopping = stop.subscribe();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("fake-grpc")
        .enable_all()
        .build()?;
    let thread = thread::Builder::new()
        .name("fake-grpc".into())
        .spawn(move || {
            runtime.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                    return;
                };
                let incoming =
                    tokio_stream::wrappers::TcpListenerStream::new(listener).map(move |accepted| {
                        accepted.map(|stream| Counted::new(stream, Arc::clone(&counted)))
                    });
                let serve = tonic::transport::Server::builder()
                    .add_service(GrpcInferenceServiceServer::new(service.clone()))
                    .add_service(HealthServer::new(service))
                    .serve_with_incoming_shutdown(incoming, async move {
                        let _ = stopped.wait_for(|s| *s).await;
                    });
                // A graceful stop waits for clients to close their
                // connections; a client that keeps one open (a balancer's
                // pool) gets half a second.
                tokio::select! {
                    _ = serve => {}
                    _ = async {
                        let _ = stopping.wait_for(|s| *s).await;
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    } => {}
                }
            });
            runtime.shutdown_timeout(Duration::from_millis(100));
        })?;
    Ok(GrpcReplicaHandle {
        addr,
        stats,
        stop,
        thread: Some(thread),
    })
}

/// A client connection, counted in [`GrpcStats::connections`] while open.
struct Counted {
    stream: tokio::net::TcpStream,
    stats: Arc<GrpcStats>,
}

impl Counted {
    fn new(stream: tokio::net::TcpStream, stats: Arc<GrpcStats>) -> Self {
        stats.connections.fetch_add(1, Ordering::SeqCst);
        Self { stream, stats }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.stats.connections.fetch_sub(1, Ordering::SeqCst);
    }
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for Counted {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

#[derive(Clone)]
struct Fake {
    config: Arc<GrpcReplicaConfig>,
    stats: Arc<GrpcStats>,
}

impl Fake {
    fn serves(&self, model: &str) -> bool {
        self.config.models.iter().any(|m| m == model)
    }

    fn reply<T>(&self, message: T) -> Response<T> {
        let mut response = Response::new(message);
        if let Ok(value) = self.config.name.parse() {
            response.metadata_mut().insert("x-replica", value);
        }
        response
    }

    fn not_found(model: &str) -> Status {
        Status::not_found(format!("model {model:?} is not served here"))
    }

    /// The echo of one inference request.
    fn echo(&self, request: &v2::ModelInferRequest) -> v2::ModelInferResponse {
        let outputs = request
            .inputs
            .iter()
            .enumerate()
            .map(|(i, input)| v2::model_infer_response::InferOutputTensor {
                name: format!("OUTPUT{i}"),
                datatype: input.datatype.clone(),
                shape: input.shape.clone(),
                parameters: Default::default(),
                contents: input.contents.clone(),
            })
            .collect();
        let replica = InferParameter {
            parameter_choice: Some(ParameterChoice::StringParam(self.config.name.clone())),
        };
        v2::ModelInferResponse {
            model_name: request.model_name.clone(),
            model_version: "1".into(),
            id: request.id.clone(),
            parameters: [("replica".to_owned(), replica)].into_iter().collect(),
            outputs,
            raw_output_contents: request.raw_input_contents.clone(),
        }
    }
}

/// An int64 request parameter.
fn int_param(request: &v2::ModelInferRequest, name: &str) -> Option<i64> {
    match request.parameters.get(name)?.parameter_choice {
        Some(ParameterChoice::Int64Param(n)) => Some(n),
        _ => None,
    }
}

fn delay(request: &v2::ModelInferRequest) -> Duration {
    Duration::from_millis(int_param(request, "delay_ms").unwrap_or(0).max(0) as u64)
}

/// Counts a call as cancelled unless it was answered.
struct Answering<'a> {
    stats: &'a GrpcStats,
    answered: bool,
}

impl Drop for Answering<'_> {
    fn drop(&mut self) {
        if !self.answered {
            self.stats.cancelled.fetch_add(1, Ordering::SeqCst);
        }
    }
}

type ResponseStream =
    Pin<Box<dyn Stream<Item = Result<v2::ModelStreamInferResponse, Status>> + Send>>;

#[tonic::async_trait]
impl GrpcInferenceService for Fake {
    async fn server_live(
        &self,
        _: Request<v2::ServerLiveRequest>,
    ) -> Result<Response<v2::ServerLiveResponse>, Status> {
        Ok(self.reply(v2::ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: Request<v2::ServerReadyRequest>,
    ) -> Result<Response<v2::ServerReadyResponse>, Status> {
        Ok(self.reply(v2::ServerReadyResponse { ready: true }))
    }

    async fn model_ready(
        &self,
        request: Request<v2::ModelReadyRequest>,
    ) -> Result<Response<v2::ModelReadyResponse>, Status> {
        let ready = self.serves(&request.get_ref().name);
        Ok(self.reply(v2::ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _: Request<v2::ServerMetadataRequest>,
    ) -> Result<Response<v2::ServerMetadataResponse>, Status> {
        Ok(self.reply(v2::ServerMetadataResponse {
            name: self.config.name.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: Vec::new(),
        }))
    }

    async fn model_metadata(
        &self,
        request: Request<v2::ModelMetadataRequest>,
    ) -> Result<Response<v2::ModelMetadataResponse>, Status> {
        let name = &request.get_ref().name;
        if !self.serves(name) {
            return Err(Self::not_found(name));
        }
        let tensor = |name: &str| v2::model_metadata_response::TensorMetadata {
            name: name.into(),
            datatype: "FP32".into(),
            shape: vec![-1],
        };
        Ok(self.reply(v2::ModelMetadataResponse {
            name: name.clone(),
            versions: vec!["1".into()],
            platform: "inferlb-fake".into(),
            inputs: vec![tensor("INPUT0")],
            outputs: vec![tensor("OUTPUT0")],
        }))
    }

    async fn model_infer(
        &self,
        request: Request<v2::ModelInferRequest>,
    ) -> Result<Response<v2::ModelInferResponse>, Status> {
        self.stats.calls.fetch_add(1, Ordering::SeqCst);
        let request = request.into_inner();
        if !self.serves(&request.model_name) {
            return Err(Self::not_found(&request.model_name));
        }
        let mut answering = Answering {
            stats: &self.stats,
            answered: false,
        };
        tokio::time::sleep(delay(&request)).await;
        answering.answered = true;
        Ok(self.reply(self.echo(&request)))
    }

    type ModelStreamInferStream = ResponseStream;

    async fn model_stream_infer(
        &self,
        request: Request<Streaming<v2::ModelInferRequest>>,
    ) -> Result<Response<Self::ModelStreamInferStream>, Status> {
        let mut requests = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let fake = self.clone();
        tokio::spawn(async move {
            while let Ok(Some(request)) = requests.message().await {
                fake.stats.calls.fetch_add(1, Ordering::SeqCst);
                if !fake.serves(&request.model_name) {
                    let error = v2::ModelStreamInferResponse {
                        error_message: format!("model {:?} is not served here", request.model_name),
                        infer_response: None,
                    };
                    if tx.send(Ok(error)).await.is_err() {
                        return;
                    }
                    continue;
                }
                for _ in 0..int_param(&request, "responses").unwrap_or(1).max(0) {
                    tokio::time::sleep(delay(&request)).await;
                    let response = v2::ModelStreamInferResponse {
                        error_message: String::new(),
                        infer_response: Some(fake.echo(&request)),
                    };
                    if tx.send(Ok(response)).await.is_err() {
                        fake.stats.cancelled.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                }
            }
        });
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        Ok(self.reply(Box::pin(stream) as ResponseStream))
    }
}

#[tonic::async_trait]
impl Health for Fake {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        let service = &request.get_ref().service;
        if !service.is_empty() && service != INFERENCE_SERVICE {
            return Err(Status::not_found(format!("unknown service {service:?}")));
        }
        let status = if self.stats.serving.load(Ordering::SeqCst) {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        Ok(self.reply(HealthCheckResponse {
            status: status as i32,
        }))
    }
}
