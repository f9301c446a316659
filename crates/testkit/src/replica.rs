//! A fake inference replica: an HTTP/1.1 server with a fluent builder.
//!
//! It runs on its own thread and tokio runtime, so a test on any runtime (or
//! none) can start one, and it stops when its handle is dropped.

use std::io;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use bytes::Bytes;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// How long a replica waits before its response head.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Latency {
    /// No wait.
    None,
    /// The same wait every time.
    Fixed(Duration),
    /// Uniform between two bounds.
    Uniform(Duration, Duration),
    /// Exponential with this mean (a common model of service time).
    Exponential(Duration),
}

impl Latency {
    fn sample(self) -> Duration {
        match self {
            Self::None => Duration::ZERO,
            Self::Fixed(d) => d,
            Self::Uniform(lo, hi) => {
                let span = hi.saturating_sub(lo).as_secs_f64();
                lo + Duration::from_secs_f64(span * fastrand::f64())
            }
            Self::Exponential(mean) => {
                let u = fastrand::f64().max(f64::MIN_POSITIVE);
                Duration::from_secs_f64(-u.ln() * mean.as_secs_f64()).min(mean * 20)
            }
        }
    }
}

/// How a response body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `Content-Length`.
    ContentLength,
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// No length: the body ends when the connection closes.
    UntilClose,
}

/// Ways a replica can misbehave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Nothing listens: connects are refused.
    Refuse,
    /// Reads the request, sends the response head, then closes.
    CloseAfterHead,
    /// Sends the head and this many tokens (or body bytes), then closes.
    CloseMidStream(usize),
    /// Reads the request and never answers.
    Hang,
    /// Closes the connection as soon as a request arrives, answering nothing.
    CloseOnRequest,
}

/// One request as the replica saw it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// Method.
    pub method: String,
    /// Request target.
    pub path: String,
    /// Header fields in order, names as sent.
    pub headers: Vec<(String, String)>,
    /// Body length after de-chunking.
    pub body_len: usize,
}

impl RecordedRequest {
    /// Every value of a header, case-insensitively.
    pub fn header_values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The first value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.header_values(name).into_iter().next()
    }
}

/// What a replica counted. Shared with its handle.
#[derive(Debug, Default)]
pub struct Counters {
    /// Requests whose head was read.
    pub requests: AtomicU64,
    /// Connections accepted.
    pub connections: AtomicU64,
    /// Connections open now.
    pub open_connections: AtomicU64,
    /// Responses the client stopped reading before their end.
    pub cancellations: AtomicU64,
    /// Request body bytes received.
    pub body_bytes: AtomicU64,
    recorded: Mutex<Vec<RecordedRequest>>,
}

/// How many requests a replica keeps for inspection; older ones are dropped
/// so that a long benchmark does not grow without bound.
const RECORD_LIMIT: usize = 1024;

impl Counters {
    /// Requests seen.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }
    /// Connections accepted.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::SeqCst)
    }
    /// Connections open now.
    pub fn open_connections(&self) -> u64 {
        self.open_connections.load(Ordering::SeqCst)
    }
    /// Responses cut short by the client.
    pub fn cancellations(&self) -> u64 {
        self.cancellations.load(Ordering::SeqCst)
    }
    /// The most recent requests (up to 1024), oldest first.
    pub fn recorded(&self) -> Vec<RecordedRequest> {
        self.recorded.lock().map(|r| r.clone()).unwrap_or_default()
    }
    /// The most recent request.
    pub fn last_request(&self) -> Option<RecordedRequest> {
        self.recorded.lock().ok().and_then(|r| r.last().cloned())
    }
    fn record(&self, request: RecordedRequest) {
        if let Ok(mut recorded) = self.recorded.lock() {
            if recorded.len() >= RECORD_LIMIT {
                recorded.remove(0);
            }
            recorded.push(request);
        }
    }
}

/// Builds a fake replica.
#[derive(Debug, Clone)]
pub struct ReplicaBuilder {
    name: String,
    bind: SocketAddr,
    latency: Latency,
    status: u16,
    body_bytes: usize,
    tokens: Option<(usize, Duration)>,
    framing: Framing,
    failure: Option<Failure>,
    echo: bool,
    completions: bool,
    keep_alive: bool,
    threads: usize,
    headers: Vec<(String, String)>,
    idle_close: Option<Duration>,
    lean: bool,
}

/// Entry point: `FakeReplica::builder()...start()`.
#[derive(Debug)]
pub struct FakeReplica;

impl FakeReplica {
    /// A replica that answers 200 with a small JSON body, at once.
    pub fn builder() -> ReplicaBuilder {
        ReplicaBuilder {
            name: "replica".into(),
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            latency: Latency::None,
            status: 200,
            body_bytes: 64,
            tokens: None,
            framing: Framing::ContentLength,
            failure: None,
            echo: false,
            completions: false,
            keep_alive: true,
            threads: 1,
            headers: Vec::new(),
            idle_close: None,
            lean: false,
        }
    }
}

impl ReplicaBuilder {
    /// Name reported in `X-Replica` and in bodies.
    pub fn name(mut self, name: &str) -> Self {
        self.name = name.into();
        self
    }
    /// Address to bind (default `127.0.0.1:0`).
    pub fn bind(mut self, addr: SocketAddr) -> Self {
        self.bind = addr;
        self
    }
    /// Wait before the response head.
    pub fn latency(mut self, latency: Latency) -> Self {
        self.latency = latency;
        self
    }
    /// Response status.
    pub fn status(mut self, status: u16) -> Self {
        self.status = status;
        self
    }
    /// Size of the JSON body, in bytes (at least the JSON's own length).
    pub fn body_bytes(mut self, n: usize) -> Self {
        self.body_bytes = n;
        self
    }
    /// Answer every request with an SSE stream of `count` tokens, `interval` apart.
    pub fn tokens(mut self, count: usize, interval: Duration) -> Self {
        self.tokens = Some((count, interval));
        self
    }
    /// Body framing.
    pub fn framing(mut self, framing: Framing) -> Self {
        self.framing = framing;
        self
    }
    /// Misbehave.
    pub fn failure(mut self, failure: Failure) -> Self {
        self.failure = Some(failure);
        self
    }
    /// Answer with the request body itself.
    pub fn echo(mut self) -> Self {
        self.echo = true;
        self
    }
    /// OpenAI-style `POST /v1/completions`: SSE when the JSON body has
    /// `"stream": true`, JSON otherwise.
    pub fn completions(mut self) -> Self {
        self.completions = true;
        self
    }
    /// Answer `Connection: close` and close after each response.
    pub fn no_keep_alive(mut self) -> Self {
        self.keep_alive = false;
        self
    }
    /// tokio worker threads (default 1); more for load tests.
    pub fn threads(mut self, n: usize) -> Self {
        self.threads = n.max(1);
        self
    }
    /// Close keep-alive connections idle this long, without a word, as model
    /// servers with a short keep-alive timeout do.
    pub fn idle_close(mut self, after: Duration) -> Self {
        self.idle_close = Some(after);
        self
    }
    /// Load-test mode: requests are counted but not recorded, and a static
    /// answer is written from a prepared buffer, so the replica costs as
    /// little CPU per request as it can (it shares cores with the load
    /// generator in `cargo xtask bench`).
    pub fn lean(mut self) -> Self {
        self.lean = true;
        self
    }
    /// An extra response header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Binds and starts serving on a thread of its own.
    pub fn start(self) -> io::Result<ReplicaHandle> {
        let counters = Arc::new(Counters::default());
        let (stop_tx, stop_rx) = watch::channel(false);
        let listener = StdListener::bind(self.bind)?;
        let addr = listener.local_addr()?;
        if self.failure == Some(Failure::Refuse) {
            // Closing the listener leaves a port where connects are refused.
            drop(listener);
            return Ok(ReplicaHandle {
                addr,
                counters,
                stop: stop_tx,
                thread: None,
            });
        }
        listener.set_nonblocking(true)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(self.threads)
            .thread_name(format!("fake-{}", self.name))
            .enable_all()
            .build()?;
        let mut spec = Spec::from_builder(self);
        let is_static = spec.lean
            && spec.tokens.is_none()
            && spec.failure.is_none()
            && !spec.echo
            && !spec.completions
            && spec.latency == Latency::None
            && spec.framing == Framing::ContentLength
            && spec.keep_alive;
        if is_static {
            let framing = format!("Content-Length: {}\r\n", spec.json_body.len());
            let mut answer = head_bytes(&spec, spec.status, "application/json", &framing, false);
            answer.extend_from_slice(&spec.json_body);
            spec.prepared = Some(Bytes::from(answer));
        }
        let spec = Arc::new(spec);
        let thread_counters = Arc::clone(&counters);
        let thread = thread::Builder::new()
            .name("fake-replica".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let Ok(listener) = TcpListener::from_std(listener) else {
                        return;
                    };
                    serve(listener, spec, thread_counters, stop_rx).await;
                });
                runtime.shutdown_timeout(Duration::from_millis(100));
            })?;
        Ok(ReplicaHandle {
            addr,
            counters,
            stop: stop_tx,
            thread: Some(thread),
        })
    }
}

/// A running fake replica; dropping it stops the replica and closes its
/// connections.
#[derive(Debug)]
pub struct ReplicaHandle {
    addr: SocketAddr,
    counters: Arc<Counters>,
    stop: watch::Sender<bool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl ReplicaHandle {
    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    /// What it counted.
    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }
    /// Stops serving and closes every connection.
    pub fn stop(mut self) {
        self.shutdown();
    }
    fn shutdown(&mut self) {
        let _ = self.stop.send(true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for ReplicaHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

mod server;

use server::{head_bytes, serve, Spec};
