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

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
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

/// The builder's settings with the static parts of responses prepared once.
#[derive(Debug)]
struct Spec {
    name: String,
    latency: Latency,
    status: u16,
    tokens: Option<(usize, Duration)>,
    framing: Framing,
    failure: Option<Failure>,
    echo: bool,
    completions: bool,
    keep_alive: bool,
    extra_headers: String,
    json_body: Bytes,
    idle_close: Option<Duration>,
    lean: bool,
    /// The whole answer (head and body) when it never varies.
    prepared: Option<Bytes>,
}

impl Spec {
    fn from_builder(b: ReplicaBuilder) -> Self {
        let mut json = format!(
            "{{\"id\":\"cmpl-1\",\"object\":\"text_completion\",\"replica\":\"{}\",\"choices\":[{{\"text\":\"Hello from {}. ",
            b.name, b.name
        );
        let tail = "\"}]}";
        let fill = b.body_bytes.saturating_sub(json.len() + tail.len() + 1);
        json.extend(std::iter::repeat_n('x', fill));
        json.push_str(tail);
        json.push('\n');
        let extra_headers = b
            .headers
            .iter()
            .map(|(n, v)| format!("{n}: {v}\r\n"))
            .collect();
        Self {
            name: b.name,
            latency: b.latency,
            status: b.status,
            tokens: b.tokens,
            framing: b.framing,
            failure: b.failure,
            echo: b.echo,
            completions: b.completions,
            keep_alive: b.keep_alive,
            extra_headers,
            json_body: Bytes::from(json),
            idle_close: b.idle_close,
            lean: b.lean,
            prepared: None,
        }
    }
}

async fn serve(
    listener: TcpListener,
    spec: Arc<Spec>,
    counters: Arc<Counters>,
    stop: watch::Receiver<bool>,
) {
    let mut stopped = stop.clone();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                counters.connections.fetch_add(1, Ordering::SeqCst);
                counters.open_connections.fetch_add(1, Ordering::SeqCst);
                let spec = Arc::clone(&spec);
                let counters = Arc::clone(&counters);
                let mut stop = stop.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = connection(stream, &spec, &counters) => {}
                        _ = stop.wait_for(|s| *s) => {}
                    }
                    counters.open_connections.fetch_sub(1, Ordering::SeqCst);
                });
            }
            _ = stopped.wait_for(|s| *s) => return,
        }
    }
}

/// A parsed request head, owned.
struct Head {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    close: bool,
    chunked: bool,
    content_length: usize,
}

fn parse_head(buf: &[u8], keep_headers: bool) -> Option<Result<(Head, usize), ()>> {
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => {
            let mut head = Head {
                method: if keep_headers {
                    req.method.unwrap_or("").to_owned()
                } else {
                    String::new()
                },
                path: if keep_headers {
                    req.path.unwrap_or("").to_owned()
                } else {
                    String::new()
                },
                headers: Vec::with_capacity(req.headers.len()),
                close: req.version == Some(0),
                chunked: false,
                content_length: 0,
            };
            for h in req.headers.iter() {
                if h.name.eq_ignore_ascii_case("connection") {
                    let v = String::from_utf8_lossy(h.value).to_ascii_lowercase();
                    head.close = v.contains("close") || (head.close && !v.contains("keep-alive"));
                } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                    head.chunked = String::from_utf8_lossy(h.value)
                        .to_ascii_lowercase()
                        .contains("chunked");
                } else if h.name.eq_ignore_ascii_case("content-length") {
                    head.content_length = std::str::from_utf8(h.value)
                        .ok()
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                }
                if keep_headers {
                    head.headers.push((
                        h.name.to_owned(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    ));
                }
            }
            Some(Ok((head, len)))
        }
        Ok(httparse::Status::Partial) => None,
        Err(_) => Some(Err(())),
    }
}

/// Reads more bytes into `buf`; `Ok(false)` on a clean close.
async fn fill(stream: &mut TcpStream, buf: &mut BytesMut) -> io::Result<bool> {
    buf.reserve(16 * 1024);
    Ok(stream.read_buf(buf).await? > 0)
}

/// Reads a chunked body out of `buf`/`stream`, returning its decoded bytes.
async fn read_chunked(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    keep: bool,
) -> io::Result<(usize, BytesMut)> {
    let mut body = BytesMut::new();
    let mut total = 0;
    loop {
        let line_end = loop {
            if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                break i;
            }
            if !fill(stream, buf).await? {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        };
        let line = String::from_utf8_lossy(&buf[..line_end]).into_owned();
        let size_text = line.split(';').next().unwrap_or("").trim();
        let size =
            usize::from_str_radix(size_text, 16).map_err(|_| io::Error::other("bad chunk size"))?;
        let _ = buf.split_to(line_end + 2);
        if size == 0 {
            // Trailers, then the final empty line.
            loop {
                let end = loop {
                    if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                        break i;
                    }
                    if !fill(stream, buf).await? {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                };
                let _ = buf.split_to(end + 2);
                if end == 0 {
                    return Ok((total, body));
                }
            }
        }
        while buf.len() < size + 2 {
            if !fill(stream, buf).await? {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        let data = buf.split_to(size);
        if keep {
            body.extend_from_slice(&data);
        }
        total += size;
        let _ = buf.split_to(2);
    }
}

async fn read_sized(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    len: usize,
    keep: bool,
) -> io::Result<(usize, BytesMut)> {
    let mut body = BytesMut::new();
    let mut left = len;
    while left > 0 {
        if buf.is_empty() && !fill(stream, buf).await? {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let take = left.min(buf.len());
        let data = buf.split_to(take);
        if keep {
            body.extend_from_slice(&data);
        }
        left -= take;
    }
    Ok((len, body))
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        304 => "Not Modified",
        400 => "Bad Request",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// Waits `d`, or returns early with `false` when the client closes first.
async fn sleep_unless_closed(stream: &mut TcpStream, buf: &mut BytesMut, d: Duration) -> bool {
    if d.is_zero() {
        return true;
    }
    let sleep = tokio::time::sleep(d);
    tokio::pin!(sleep);
    loop {
        buf.reserve(1024);
        tokio::select! {
            _ = &mut sleep => return true,
            read = stream.read_buf(buf) => match read {
                // Pipelined bytes stay in `buf` for the next request.
                Ok(n) if n > 0 => continue,
                _ => return false,
            },
        }
    }
}

async fn connection(mut stream: TcpStream, spec: &Spec, counters: &Counters) {
    let mut buf = BytesMut::with_capacity(16 * 1024);
    loop {
        let (head, head_len) = loop {
            if !buf.is_empty() {
                match parse_head(&buf, !spec.lean) {
                    Some(Ok(parsed)) => break parsed,
                    Some(Err(())) => {
                        let _ = stream
                            .write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                            .await;
                        return;
                    }
                    None => {}
                }
            }
            let filled = match spec.idle_close {
                Some(after) if buf.is_empty() => {
                    match tokio::time::timeout(after, fill(&mut stream, &mut buf)).await {
                        Ok(filled) => filled,
                        Err(_) => return,
                    }
                }
                _ => fill(&mut stream, &mut buf).await,
            };
            match filled {
                Ok(true) => {}
                _ => return,
            }
        };
        let _ = buf.split_to(head_len);
        counters.requests.fetch_add(1, Ordering::SeqCst);
        let keep_body = spec.echo || spec.completions;
        let body = if head.chunked {
            read_chunked(&mut stream, &mut buf, keep_body).await
        } else {
            read_sized(&mut stream, &mut buf, head.content_length, keep_body).await
        };
        let Ok((body_len, body)) = body else { return };
        counters
            .body_bytes
            .fetch_add(body_len as u64, Ordering::Relaxed);
        let close = head.close || !spec.keep_alive;
        if let Some(answer) = &spec.prepared {
            if stream.write_all(answer).await.is_err() || close {
                return;
            }
            continue;
        }
        let is_head = head.method == "HEAD";
        if !spec.lean {
            counters.record(RecordedRequest {
                method: head.method.clone(),
                path: head.path.clone(),
                headers: head.headers.clone(),
                body_len,
            });
        }
        let header = |name: &str| {
            head.headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        };
        let status = header("x-testkit-status")
            .and_then(|v| v.parse().ok())
            .unwrap_or(spec.status);
        let latency = header("x-testkit-latency-ms")
            .and_then(|v| v.parse().ok())
            .map_or(spec.latency, |ms| Latency::Fixed(Duration::from_millis(ms)));
        let wants_stream = spec.tokens.is_some()
            || (spec.completions
                && head.path.starts_with("/v1/completions")
                && serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v.get("stream").and_then(serde_json::Value::as_bool))
                    .unwrap_or(false));
        if spec.failure == Some(Failure::Hang) {
            // Hold the connection until the client gives up.
            let _ = sleep_unless_closed(&mut stream, &mut buf, Duration::from_secs(3600)).await;
            return;
        }
        if spec.failure == Some(Failure::CloseOnRequest) {
            return;
        }
        if !sleep_unless_closed(&mut stream, &mut buf, latency.sample()).await {
            counters.cancellations.fetch_add(1, Ordering::SeqCst);
            return;
        }
        let ok = if wants_stream {
            let (count, interval) = spec.tokens.unwrap_or((16, Duration::from_millis(50)));
            stream_tokens(
                &mut stream,
                &mut buf,
                spec,
                status,
                count,
                interval,
                close,
                counters,
            )
            .await
        } else {
            let body = if spec.echo {
                body.freeze()
            } else {
                spec.json_body.clone()
            };
            let content_type = if spec.echo {
                "application/octet-stream"
            } else {
                "application/json"
            };
            send_body(
                &mut stream,
                spec,
                status,
                content_type,
                &body,
                close,
                is_head,
            )
            .await
        };
        if !ok || close {
            return;
        }
    }
}

fn head_bytes(spec: &Spec, status: u16, content_type: &str, framing: &str, close: bool) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nX-Replica: {}\r\n{}{framing}{}\r\n",
        reason(status),
        spec.name,
        spec.extra_headers,
        if close { "Connection: close\r\n" } else { "" },
    )
    .into_bytes()
}

async fn send_body(
    stream: &mut TcpStream,
    spec: &Spec,
    status: u16,
    content_type: &str,
    body: &Bytes,
    close: bool,
    is_head: bool,
) -> bool {
    let no_body = is_head || status == 204 || status == 304;
    let (framing, close) = match spec.framing {
        _ if status == 204 || status == 304 => (String::new(), close),
        Framing::ContentLength => (format!("Content-Length: {}\r\n", body.len()), close),
        Framing::Chunked => ("Transfer-Encoding: chunked\r\n".to_owned(), close),
        Framing::UntilClose => (String::new(), true),
    };
    let head = head_bytes(spec, status, content_type, &framing, close);
    if stream.write_all(&head).await.is_err() {
        return false;
    }
    if spec.failure == Some(Failure::CloseAfterHead) {
        return false;
    }
    if no_body {
        return true;
    }
    let cut = match spec.failure {
        Some(Failure::CloseMidStream(n)) => Some(n.min(body.len())),
        _ => None,
    };
    let payload = &body[..cut.unwrap_or(body.len())];
    let written = match spec.framing {
        Framing::Chunked => {
            let mut out = Vec::with_capacity(payload.len() + 32);
            if !payload.is_empty() {
                out.extend_from_slice(format!("{:x}\r\n", payload.len()).as_bytes());
                out.extend_from_slice(payload);
                out.extend_from_slice(b"\r\n");
            }
            if cut.is_none() {
                out.extend_from_slice(b"0\r\n\r\n");
            }
            stream.write_all(&out).await
        }
        _ => stream.write_all(payload).await,
    };
    // A body delimited by the close must be followed by the close.
    written.is_ok() && cut.is_none() && !close
}

#[allow(clippy::too_many_arguments)]
async fn stream_tokens(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    spec: &Spec,
    status: u16,
    count: usize,
    interval: Duration,
    close: bool,
    counters: &Counters,
) -> bool {
    let chunked = spec.framing != Framing::UntilClose;
    let framing = if chunked {
        "Transfer-Encoding: chunked\r\nCache-Control: no-cache\r\n"
    } else {
        "Cache-Control: no-cache\r\n"
    };
    let head = head_bytes(
        spec,
        status,
        "text/event-stream",
        framing,
        close || !chunked,
    );
    if stream.write_all(&head).await.is_err() {
        return false;
    }
    if spec.failure == Some(Failure::CloseAfterHead) {
        return false;
    }
    let cut = match spec.failure {
        Some(Failure::CloseMidStream(n)) => Some(n),
        _ => None,
    };
    for i in 0..=count {
        if cut == Some(i) {
            return false;
        }
        let event = if i == count {
            "data: [DONE]\n\n".to_owned()
        } else {
            format!(
                "data: {{\"replica\":\"{}\",\"index\":{i},\"choices\":[{{\"text\":\"tok{i} \"}}]}}\n\n",
                spec.name
            )
        };
        let mut out = Vec::with_capacity(event.len() + 16);
        if chunked {
            out.extend_from_slice(format!("{:x}\r\n", event.len()).as_bytes());
            out.extend_from_slice(event.as_bytes());
            out.extend_from_slice(b"\r\n");
            if i == count {
                out.extend_from_slice(b"0\r\n\r\n");
            }
        } else {
            out.extend_from_slice(event.as_bytes());
        }
        if stream.write_all(&out).await.is_err() {
            counters.cancellations.fetch_add(1, Ordering::SeqCst);
            return false;
        }
        if i < count && !sleep_unless_closed(stream, buf, interval).await {
            counters.cancellations.fetch_add(1, Ordering::SeqCst);
            return false;
        }
    }
    chunked
}
