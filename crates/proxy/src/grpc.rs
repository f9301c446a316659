//! gRPC through the balancer: an HTTP/2 stream whose content type is
//! `application/grpc` goes to a pool with `protocol = "grpc"`, over HTTP/2
//! to the replica (see [`crate::upstream::h2`]), frame by frame in both
//! directions with flow control, trailers and all.
//!
//! ```text
//!  route: model key ─▶ pool │ service ─▶ pool │ default pool
//!  pick ─▶ h2 stream to the replica ─▶ upload ∥ download (headers, DATA, trailers)
//!    ▲        │ connect failed; refused (REFUSED_STREAM, GOAWAY) or an
//!    └────────┘ idempotent method failed, before any response frame
//! ```
//!
//! The proxy's own answers are gRPC errors in trailers-only form (HTTP 200,
//! `grpc-status`, `grpc-message`): no pool → `NOT_FOUND` (or `UNIMPLEMENTED`
//! for a pool that is not gRPC), no routable replica → `UNAVAILABLE`,
//! `grpc-timeout` passed → `DEADLINE_EXCEEDED` (in the trailers when the
//! replica's headers already went out). A client's RST_STREAM cancels the
//! replica's stream at once. A call is one request in flight on its replica
//! (`least_outstanding` counts streams), held while an autoscaling pool
//! starts a replica like any request.

use std::cell::RefCell;
use std::future::{poll_fn, Future};
use std::pin::pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::server::SendResponse;
use h2::{Reason, RecvStream, SendStream};
use http::{HeaderMap, HeaderValue};
use inferlb_core::{clock, PoolProtocol, ReplicaStats, Tried};

use crate::h1::RequestId;
use crate::h2::{send_data, Peer};
use crate::hold::{self, Hold};
use crate::upstream::h2::{self as upstream_h2, StreamSlot};
use crate::worker::Worker;

/// Request bytes kept to send again on another replica; a larger request
/// is not retried.
const MAX_KEPT: usize = 64 * 1024;

/// gRPC status codes the proxy answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Code {
    DeadlineExceeded = 4,
    NotFound = 5,
    Unimplemented = 12,
    Unavailable = 14,
}

/// Whether an HTTP/2 request is a gRPC call.
pub(crate) fn is_grpc(method: &http::Method, headers: &HeaderMap) -> bool {
    method == http::Method::POST
        && headers
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// Serves one gRPC call.
/// Serves one gRPC call; the request id and access log record (lent by the
/// connection, for its next streams) come back.
pub(crate) async fn serve(
    worker: &Rc<Worker>,
    request: http::Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    peer: Peer,
    request_id: RequestId,
    record: Box<crate::access::Record>,
) -> (RequestId, Box<crate::access::Record>) {
    let (parts, mut body) = request.into_parts();
    let deadline = parts
        .headers
        .get("grpc-timeout")
        .and_then(|v| timeout(v.as_bytes()))
        .map(|d| Instant::now() + d);
    let mut log = Log::begin(&parts, peer, request_id, record);
    let mut call = Call {
        worker,
        parts,
        kept: Kept::default(),
        sent: None,
        log: &mut log,
    };
    let answered = match deadline {
        None => call.run(&mut body, &mut respond).await,
        Some(at) => {
            let left = at.saturating_duration_since(Instant::now());
            match monoio::time::timeout(left, call.run(&mut body, &mut respond)).await {
                Ok(answered) => answered,
                Err(_) => Err((Code::DeadlineExceeded, "deadline exceeded".to_owned())),
            }
        }
    };
    if let Err((code, message)) = answered {
        call.log.reason = Some(code.reason());
        match call.sent.take() {
            // The replica's headers went out: the error ends the stream in
            // its trailers.
            Some(mut send) => {
                let _ = send.send_trailers(status_trailers(code, &message));
            }
            None => {
                call.log.status = 200;
                let _ = respond.send_response(trailers_only(code, &message), true);
            }
        }
    }
    log.finish(worker)
}

impl Code {
    fn reason(self) -> &'static str {
        match self {
            Self::DeadlineExceeded => "grpc_deadline_exceeded",
            Self::NotFound => "grpc_not_found",
            Self::Unimplemented => "grpc_unimplemented",
            Self::Unavailable => "grpc_unavailable",
        }
    }
}

type Failed = (Code, String);

/// One call's state across its attempts.
struct Call<'a> {
    worker: &'a Worker,
    parts: http::request::Parts,
    kept: Kept,
    /// The client's stream once the replica's headers went to it.
    sent: Option<SendStream<Bytes>>,
    log: &'a mut Log,
}

/// How one attempt on one replica ended.
enum Attempt {
    /// The response went to the client (trailers included), or the client
    /// left.
    Done,
    /// The replica failed before any response frame; `refused`: it says it
    /// did not process the stream (REFUSED_STREAM, GOAWAY before it).
    Failed { refused: bool },
}

impl Call<'_> {
    /// Routes and forwards the call; an error is the proxy's answer.
    async fn run(
        &mut self,
        body: &mut RecvStream,
        respond: &mut SendResponse<Bytes>,
    ) -> Result<(), Failed> {
        let worker = self.worker;
        let pool = self.pool()?;
        self.log.model(&pool);
        let path = self.parts.uri.path().to_owned();
        let idempotent = {
            let mut snapshots = worker.snapshots.borrow_mut();
            let set = snapshots.load();
            set.pool_named(&pool)
                .is_some_and(|i| set.pools()[i].spec().grpc.is_idempotent(&path))
        };
        let mut tried = Tried::default();
        let mut generation = u64::MAX;
        let mut connects = 0;
        let mut resends = 0;
        let mut may_hold = true;
        loop {
            let Some(picked) = pick(worker, &pool, &mut tried, &mut generation) else {
                if std::mem::take(&mut may_hold) {
                    let held_at = Instant::now();
                    let held = {
                        let client = RefCell::new(&mut *respond);
                        let gone = || client_reset(&mut client.borrow_mut());
                        hold::wait(worker, &gone, Some(&pool)).await
                    };
                    self.log.record.hold += held_at.elapsed();
                    match held {
                        Hold::Ready => continue,
                        Hold::NotHeld => {}
                        // Cancelled while held: nothing to answer (499).
                        Hold::ClientGone => return Ok(()),
                        Hold::Refused(_) => {
                            return Err(unavailable("no replica became ready in time"))
                        }
                    }
                }
                return Err(unavailable(&format!(
                    "no replica of pool {pool:?} is available"
                )));
            };
            may_hold = false;
            self.log.record.replica = Some(picked.addr);
            self.log.record.attempts += 1;
            let Some(slot) = connect(worker, &picked).await else {
                connects += 1;
                if connects < worker.config.limits.max_connect_attempts {
                    continue;
                }
                return Err(unavailable("cannot connect to a replica"));
            };
            let _in_flight = picked.stats.start_request();
            let started = Instant::now();
            match self.attempt(&slot, body, respond, &picked.stats).await {
                Attempt::Done => {
                    picked.stats.duration().record(started.elapsed());
                    return Ok(());
                }
                Attempt::Failed { refused } => {
                    crate::forward::record_upstream_failure(worker, picked.uid);
                    let again = (refused || idempotent)
                        && self.kept.replayable()
                        && resends < worker.config.retries.max_retries
                        && worker.retry_budget.borrow_mut().try_retry(clock::now_ms());
                    if !again {
                        return Err(unavailable("the replica failed before answering"));
                    }
                    resends += 1;
                    tracing::debug!(replica = %picked.addr, "gRPC call failed before any response frame; retrying on another replica");
                }
            }
        }
    }

    /// The pool: named by the model key, else the gRPC pool serving the
    /// call's service, else the default pool.
    fn pool(&self) -> Result<String, Failed> {
        let worker = self.worker;
        let mut snapshots = worker.snapshots.borrow_mut();
        let set = snapshots.load();
        let model = self
            .parts
            .headers
            .get(worker.config.model.header.as_str())
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty());
        let path = self.parts.uri.path();
        let index = match model {
            Some(model) => set
                .pool_named(model)
                .ok_or_else(|| (Code::NotFound, format!("no pool serves model {model:?}")))?,
            None => set
                .pools()
                .iter()
                .position(|p| p.spec().protocol == PoolProtocol::Grpc && p.spec().grpc.serves(path))
                .or_else(|| set.default_pool())
                .ok_or_else(|| {
                    (
                        Code::NotFound,
                        format!(
                            "no pool serves {path:?}: name the model in the {:?} metadata key",
                            worker.config.model.header
                        ),
                    )
                })?,
        };
        let spec = set.pools()[index].spec();
        if spec.protocol != PoolProtocol::Grpc {
            return Err((
                Code::Unimplemented,
                format!(
                    "pool {:?} does not speak gRPC (protocol = \"http1\")",
                    spec.name.as_str()
                ),
            ));
        }
        Ok(spec.name.as_str().to_owned())
    }

    /// One attempt: the request's headers, its body (kept for a replay
    /// while small) and the response, until the response ends, the client
    /// resets, or the replica fails.
    async fn attempt(
        &mut self,
        slot: &StreamSlot,
        body: &mut RecvStream,
        respond: &mut SendResponse<Bytes>,
        stats: &ReplicaStats,
    ) -> Attempt {
        let request = upstream_request(&self.parts, self.log.client_ip);
        let replay = self.kept.complete;
        let end_now = if replay {
            self.kept.frames.is_empty() && self.kept.trailers.is_none()
        } else {
            body.is_end_stream()
        };
        let mut sender = slot.sender();
        let sent = match poll_fn(|cx| sender.poll_ready(cx)).await {
            Ok(()) => sender.send_request(request, end_now),
            Err(error) => Err(error),
        };
        let (response, mut upload) = match sent {
            Ok(sent) => sent,
            // The connection went away before the stream: not processed.
            Err(error) => {
                tracing::debug!(%error, "no stream to the replica");
                return Attempt::Failed { refused: true };
            }
        };
        let kept = &mut self.kept;
        let upload_done = async {
            if end_now {
                if !replay {
                    kept.complete = true;
                }
                return;
            }
            if replay {
                kept.resend(&mut upload).await;
            } else {
                kept.stream(body, &mut upload, stats).await;
            }
        };
        let log = &mut *self.log;
        let sent_slot = &mut self.sent;
        let download = download(response, respond, sent_slot, log, stats);
        let mut upload_done = pin!(upload_done);
        let mut download = pin!(download);
        let mut uploading = true;
        poll_fn(|cx| {
            if uploading && upload_done.as_mut().poll(cx).is_ready() {
                uploading = false;
            }
            download.as_mut().poll(cx)
        })
        .await
    }
}

/// What the upload kept of the request, to send it again.
#[derive(Default)]
struct Kept {
    frames: Vec<Bytes>,
    trailers: Option<HeaderMap>,
    bytes: usize,
    /// Past [`MAX_KEPT`]: nothing can be replayed.
    overflow: bool,
    /// The client's request ended, and `frames` hold all of it (unless
    /// `overflow`).
    complete: bool,
}

impl Kept {
    fn replayable(&self) -> bool {
        self.complete && !self.overflow
    }

    fn keep(&mut self, data: &Bytes) {
        if self.overflow {
            return;
        }
        self.bytes += data.len();
        if self.bytes > MAX_KEPT {
            self.overflow = true;
            self.frames = Vec::new();
        } else {
            self.frames.push(data.clone());
        }
    }

    /// Moves the client's DATA (and trailers) to the replica, releasing the
    /// client's window only as the replica takes the bytes.
    async fn stream(
        &mut self,
        body: &mut RecvStream,
        upload: &mut SendStream<Bytes>,
        stats: &ReplicaStats,
    ) {
        loop {
            match body.data().await {
                Some(Ok(data)) => {
                    let n = data.len();
                    self.keep(&data);
                    if send_data(upload, data).await.is_err() {
                        return;
                    }
                    stats.add_bytes_out(n);
                    let _ = body.flow_control().release_capacity(n);
                }
                Some(Err(_)) => {
                    // The client reset its stream: the download sees it.
                    return;
                }
                None => break,
            }
        }
        match body.trailers().await {
            Ok(Some(trailers)) => {
                self.trailers = Some(trailers.clone());
                let _ = upload.send_trailers(trailers);
            }
            _ => {
                let _ = upload.send_data(Bytes::new(), true);
            }
        }
        self.complete = true;
    }

    /// Sends what was kept, as the first attempt sent it.
    async fn resend(&self, upload: &mut SendStream<Bytes>) {
        for data in &self.frames {
            if send_data(upload, data.clone()).await.is_err() {
                return;
            }
        }
        match &self.trailers {
            Some(trailers) => {
                let _ = upload.send_trailers(trailers.clone());
            }
            None => {
                let _ = upload.send_data(Bytes::new(), true);
            }
        }
    }
}

/// The replica's response to the client: headers, DATA within the client's
/// window, trailers. A client reset cancels the replica's stream (by
/// dropping it).
async fn download(
    response: h2::client::ResponseFuture,
    respond: &mut SendResponse<Bytes>,
    sent: &mut Option<SendStream<Bytes>>,
    log: &mut Log,
    stats: &ReplicaStats,
) -> Attempt {
    let mut response = pin!(response);
    let head = poll_fn(|cx| {
        if respond.poll_reset(cx).is_ready() {
            return Poll::Ready(None);
        }
        response.as_mut().poll(cx).map(Some)
    })
    .await;
    let head = match head {
        None => return Attempt::Done,
        Some(Ok(head)) => head,
        Some(Err(error)) => {
            let refused = error.reason() == Some(Reason::REFUSED_STREAM)
                || (error.is_go_away() && error.is_remote());
            tracing::debug!(%error, refused, "replica failed before responding");
            return Attempt::Failed { refused };
        }
    };
    let (parts, mut recv) = head.into_parts();
    stats.record_response(parts.status.as_u16());
    stats.record_success();
    log.record.status = parts.status.as_u16();
    let mut client_head = http::Response::new(());
    *client_head.status_mut() = parts.status;
    *client_head.headers_mut() = parts.headers;
    log.record.head_sent();
    let end = recv.is_end_stream();
    let send = match respond.send_response(client_head, end) {
        Ok(send) => send,
        Err(_) => return Attempt::Done,
    };
    if end {
        return Attempt::Done;
    }
    let send = sent.insert(send);
    loop {
        let data = poll_fn(|cx| {
            if send.poll_reset(cx).is_ready() {
                return Poll::Ready(None);
            }
            recv.poll_data(cx).map(Some)
        })
        .await;
        match data {
            // The client reset: dropping `recv` cancels the replica's stream.
            None => {
                *sent = None;
                return Attempt::Done;
            }
            Some(Some(Ok(data))) => {
                let n = data.len();
                log.record.bytes_out += n as u64;
                log.record.body_sent();
                stats.add_bytes_in(n);
                if send_data(send, data).await.is_err() {
                    *sent = None;
                    return Attempt::Done;
                }
                let _ = recv.flow_control().release_capacity(n);
            }
            Some(Some(Err(error))) => {
                // The replica reset its stream mid-response: so does the client's.
                tracing::debug!(%error, "replica's stream failed mid-response");
                let reason = error.reason().unwrap_or(Reason::INTERNAL_ERROR);
                send.send_reset(reason);
                *sent = None;
                return Attempt::Done;
            }
            Some(None) => break,
        }
    }
    let trailers = poll_fn(|cx| {
        if send.poll_reset(cx).is_ready() {
            return Poll::Ready(None);
        }
        recv.poll_trailers(cx).map(Some)
    })
    .await;
    match trailers {
        Some(Ok(Some(trailers))) => {
            let _ = send.send_trailers(trailers);
        }
        Some(Ok(None)) => {
            let _ = send.send_data(Bytes::new(), true);
        }
        Some(Err(_)) => send.send_reset(Reason::INTERNAL_ERROR),
        None => {}
    }
    *sent = None;
    Attempt::Done
}

/// The replica's request: the client's, with `x-forwarded-for` for this
/// hop. HTTP/2 allows no connection-specific field, so there is nothing
/// hop-by-hop to drop but `host`.
fn upstream_request(
    parts: &http::request::Parts,
    client_ip: std::net::IpAddr,
) -> http::Request<()> {
    let mut request = http::Request::new(());
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = parts.uri.clone();
    let headers = request.headers_mut();
    for (name, value) in &parts.headers {
        if name == http::header::HOST || name.as_str() == "x-forwarded-for" {
            continue;
        }
        headers.append(name.clone(), value.clone());
    }
    if let Ok(value) = HeaderValue::from_str(&client_ip.to_string()) {
        headers.insert("x-forwarded-for", value);
    }
    request
}

/// A picked replica.
struct Picked {
    uid: u64,
    addr: std::net::SocketAddr,
    stats: Arc<ReplicaStats>,
    tls: Option<crate::upstream::TlsTarget>,
}

fn pick(worker: &Worker, pool: &str, tried: &mut Tried, generation: &mut u64) -> Option<Picked> {
    let mut snapshots = worker.snapshots.borrow_mut();
    let set = snapshots.load();
    if set.generation() != *generation {
        tried.clear();
        *generation = set.generation();
    }
    let pool = set.pool_named(pool)?;
    let cursor = &mut worker.cursor.borrow_mut();
    let index = set.pick_in(pool, cursor, tried, clock::now_ms(), None)?;
    tried.insert(index);
    let replica = &set.replicas()[index];
    tracing::debug!(pool = %set.pools()[pool].name(), replica = %replica.id, in_flight = replica.stats.in_flight(), "routed a gRPC call");
    let tls = match &set.pools()[pool].spec().upstream_tls {
        None => None,
        Some(settings) => Some(crate::upstream::tls::target(settings, &replica.address)?),
    };
    Some(Picked {
        uid: replica.uid,
        addr: replica.addr,
        stats: Arc::clone(&replica.stats),
        tls,
    })
}

/// A stream slot on a pooled connection to the replica, or on a new one.
async fn connect(worker: &Worker, picked: &Picked) -> Option<StreamSlot> {
    if let Some(slot) = worker.h2_pool.borrow_mut().take(picked.uid) {
        return Some(slot);
    }
    let timeout = worker.config.timeouts.upstream_connect;
    let closer = worker.h2_pool.borrow().closer();
    match upstream_h2::connect(picked.addr, picked.tls.as_ref(), timeout, closer).await {
        Ok(conn) => Some(worker.h2_pool.borrow_mut().add(picked.uid, conn)),
        Err(error) => {
            picked.stats.record_connect_error();
            crate::forward::record_upstream_failure(worker, picked.uid);
            tracing::debug!(replica = %picked.addr, ?error, "connect failed");
            None
        }
    }
}

fn unavailable(message: &str) -> Failed {
    (Code::Unavailable, message.to_owned())
}

/// The `grpc-status` and `grpc-message` fields of an error.
fn status_trailers(code: Code, message: &str) -> HeaderMap {
    let mut fields = HeaderMap::new();
    fields.insert("grpc-status", HeaderValue::from(code as u16));
    if let Ok(value) = HeaderValue::from_str(&percent_encode(message)) {
        fields.insert("grpc-message", value);
    }
    fields
}

/// Whether the client reset its stream (a cancelled call) or its
/// connection ended; never waits.
fn client_reset(respond: &mut SendResponse<Bytes>) -> bool {
    respond
        .poll_reset(&mut Context::from_waker(Waker::noop()))
        .is_ready()
}

/// A trailers-only response: one HEADERS frame, ending the stream.
fn trailers_only(code: Code, message: &str) -> http::Response<()> {
    let mut response = http::Response::new(());
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.extend(status_trailers(code, message));
    response
}

/// `grpc-message`'s encoding: printable ASCII but `%` as is, the rest
/// percent-encoded (gRPC's HTTP/2 protocol).
fn percent_encode(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for &b in message.as_bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `grpc-timeout`: up to 8 digits and a unit (`H`, `M`, `S`, `m`, `u`, `n`).
fn timeout(value: &[u8]) -> Option<Duration> {
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// A call's access log record and front-end counts.
struct Log {
    record: Box<crate::access::Record>,
    request_id: RequestId,
    client_ip: std::net::IpAddr,
    pool: String,
    reason: Option<&'static str>,
    status: u16,
}

impl Log {
    fn begin(
        parts: &http::request::Parts,
        peer: Peer,
        request_id: RequestId,
        mut record: Box<crate::access::Record>,
    ) -> Self {
        record.begin();
        record.h2 = true;
        record.tls = peer.tls;
        record.request_target(b"POST", parts.uri.path().as_bytes());
        Self {
            record,
            request_id,
            client_ip: peer.ip,
            pool: String::new(),
            reason: None,
            status: 0,
        }
    }

    fn model(&mut self, pool: &str) {
        self.pool = pool.to_owned();
        self.record.model(pool);
    }

    fn finish(mut self, worker: &Worker) -> (RequestId, Box<crate::access::Record>) {
        if self.record.status == 0 {
            self.record.status = if self.status == 0 { 499 } else { self.status };
        }
        self.record.reason = self.reason;
        worker.front.record(&self.pool, &self.pool, &self.record);
        if let Some(access) = &worker.access {
            self.request_id.generate();
            let ip = self.client_ip.to_string();
            access.write(
                &self.record,
                ip.as_bytes(),
                self.request_id.as_bytes(),
                &self.pool,
            );
        }
        (self.request_id, self.record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_reads_every_unit_and_refuses_the_rest() {
        assert_eq!(timeout(b"100m"), Some(Duration::from_millis(100)));
        assert_eq!(timeout(b"2S"), Some(Duration::from_secs(2)));
        assert_eq!(timeout(b"1H"), Some(Duration::from_secs(3600)));
        assert_eq!(timeout(b"5M"), Some(Duration::from_secs(300)));
        assert_eq!(timeout(b"7u"), Some(Duration::from_micros(7)));
        assert_eq!(timeout(b"9n"), Some(Duration::from_nanos(9)));
        for bad in [&b""[..], b"m", b"123456789m", b"10x", b"-1S", b"1.5S"] {
            assert_eq!(timeout(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn grpc_message_is_percent_encoded() {
        assert_eq!(percent_encode("no replica: 50%"), "no replica: 50%25");
        assert_eq!(percent_encode("é\n"), "%C3%A9%0A");
    }
}
