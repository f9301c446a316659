//! One request, top to bottom: read its head, classify it, pick a replica,
//! connect, exchange, decide on a retry, stream the response.
//!
//! ```text
//! read head ─▶ classify ─▶ pick ─▶ connect ─▶ exchange ─▶ stream the response
//!                            ▲        │ failed    │ failed before any response byte
//!                            └────────┴───────────┘ (within the limits of `Attempts`)
//! ```
//!
//! Each phase is one function below, in that order; finding the target
//! (`target`), picking and reaching a replica (`replica`) and streaming the
//! response (`stream`) have modules of their own. The exchange (one attempt on one upstream connection) lives in
//! `exchange`, the body framer in `h1::body`, the client's buffers in
//! `client`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use inferlb_core::{clock, penalty, PrefixKey, ReplicaSet, ReplicaStats, Tried};

use crate::client::{Client, Generated};
use crate::error::{Abort, ErrorKind};
use crate::exchange::{Exchange, Outcome, Progress, Stage};
use crate::h1::body::{Body, Framing};
use crate::h1::request::{self, Local, RequestInfo};
use crate::h1::response::ResponseInfo;
use crate::h1::RequestId;
use crate::hold::{self, Hold};
use crate::model_name::ModelName;
use crate::sock;
use crate::upstream::{self, UpstreamConn};
use crate::watch::{self, Io};
use crate::worker::Worker;
use crate::{inspect, models};

mod replica;
mod stream;
mod target;

use replica::{account, connect, pick, record_failure, Picked};
use stream::{finish, stream};
use target::{find_target, Routed, Target};

/// Counts a connect failure or a failed exchange against a replica (for
/// outlier ejection), for the other protocols' paths.
pub(crate) fn record_upstream_failure(worker: &Worker, uid: u64) {
    record_failure(worker, uid);
}

/// What happens to the client connection after a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    KeepAlive,
    Close,
}

/// Serves one request on a connection that is readable or has bytes
/// pending; `head_timed_out` says the connection sent nothing within the
/// header timeout (it gets 408). Errors are answered here.
pub(crate) async fn serve_request(
    worker: &Worker,
    client: &mut Client,
    id: &mut RequestId,
    head_timed_out: bool,
) -> Next {
    client.rent_for_head(&mut worker.buffers.borrow_mut());
    client.cors.clear();
    id.clear();
    if let Some(log) = client.log.as_deref_mut() {
        log.begin();
        log.h2 = matches!(client.stream, crate::io::ClientIo::H2(_));
        log.tls = client.tls;
    }
    let result = if head_timed_out {
        Err(Abort::Respond(ErrorKind::HeadTimeout))
    } else {
        match client.read_head(worker).await {
            Ok(Some(head_len)) => {
                if let Some(log) = client.log.as_deref_mut() {
                    log.request_line(&client.buf[client.pos..client.pos + head_len]);
                    log.bytes_in = head_len as u64;
                }
                client.rent_for_request(&mut worker.buffers.borrow_mut());
                forward(worker, client, id, head_len).await
            }
            Ok(None) => Err(Abort::ClientGone),
            Err(kind) => Err(Abort::Respond(kind)),
        }
    };
    let next = match result {
        Ok(Next::KeepAlive) => Next::KeepAlive,
        Ok(Next::Close) => {
            client.linger_close().await;
            Next::Close
        }
        Err(Abort::Respond(kind)) => {
            if client.respond_error(worker, kind, true, id).await {
                client.linger_close().await;
            }
            Next::Close
        }
        Err(Abort::ClientGone | Abort::AfterHead) => Next::Close,
    };
    if next == Next::Close {
        client.pos = client.buf.len();
    }
    client.give_back(&mut worker.buffers.borrow_mut());
    log_request(worker, client, id);
    next
}

/// Counts what the client saw in the front-end metrics and appends the
/// request's access log line, if there is an access log. A connection that
/// closed before sending a byte is no request.
fn log_request(worker: &Worker, client: &mut Client, id: &RequestId) {
    let Some(log) = client.log.as_deref_mut() else {
        return;
    };
    if !log.is_open() || (log.status == 0 && log.request_is_empty()) {
        return;
    }
    if log.status == 0 {
        // Closed by the client before an answer (nginx's 499).
        log.status = 499;
    }
    let mut snapshots = worker.snapshots.borrow_mut();
    let set = snapshots.load();
    let model = log.model_str();
    let pool = set
        .pool_for((!model.is_empty()).then_some(model))
        .map_or("", |i| set.pools()[i].name().as_str());
    // A model no pool serves is counted as "unknown": clients cannot grow
    // the metrics without bound.
    let model_label = if model.is_empty() || set.pool_named(model).is_some() {
        model
    } else {
        "unknown"
    };
    worker.front.record(pool, model_label, log);
    if let Some(access) = &worker.access {
        access.write(log, client.ip.as_bytes(), id.as_bytes(), pool);
    }
}

/// Forwards one request whose head is `client.buf[pos..pos + head_len]`:
/// routed (classified, answered locally, or given a pool), then sent to
/// replicas of that pool until one answers or the attempts run out.
async fn forward(
    worker: &Worker,
    client: &mut Client,
    id: &mut RequestId,
    head_len: usize,
) -> Result<Next, Abort> {
    match route(worker, client, id, head_len).await? {
        Route::Answered(next) => Ok(next),
        Route::Forward(mut request) => {
            let sent = send(worker, client, id, &mut request).await;
            if let Some(log) = client.log.as_deref_mut() {
                log.bytes_in += request.body.payload_len();
            }
            sent
        }
    }
}

/// A request ready to go to a replica of its pool.
struct Routable {
    info: RequestInfo,
    body: Body,
    target: Target,
    /// Where the replica's head ends in `client.request` (a Host header
    /// may be added there).
    head_end: usize,
    progress: Progress,
    keep_client: bool,
    /// The body was kept whole (with the head, or read for inspection), so
    /// the request can be sent again.
    replayable: bool,
}

// Boxing the larger variant would allocate per request; the future that
// holds it lives in a handler task reused request after request.
#[allow(clippy::large_enum_variant)]
enum Route {
    /// The proxy answered itself (a refusal, a model listing, 404).
    Answered(Next),
    Forward(Routable),
}

/// Classifies the request, answers what the proxy answers itself, and
/// finds the pool: from the model header, or the model of a JSON body.
async fn route(
    worker: &Worker,
    client: &mut Client,
    id: &mut RequestId,
    head_len: usize,
) -> Result<Route, Abort> {
    let config = &worker.config;
    let answered = |next: Result<Next, Abort>| next.map(Route::Answered);

    // Classify: parse and check the head, write the replica's version of it.
    let info = classify(worker, client, id, head_len)?;
    if let Some(cors) = &config.cors {
        let head = &client.buf[client.pos - head_len..client.pos];
        let keep = info.keep_alive && !worker.stopping.get();
        match crate::cors::judge(cors, &info, head, &mut client.cors) {
            crate::cors::Verdict::Pass => {}
            crate::cors::Verdict::Preflight => {
                if let Some(log) = client.log.as_deref_mut() {
                    log.reason = Some("cors_preflight");
                }
                let response = models::generated(b"HTTP/1.1 204 No Content\r\n", b"");
                return answered(respond_with(worker, client, id, response, true, keep).await);
            }
            crate::cors::Verdict::Refused => {
                let kind = ErrorKind::CorsRefused;
                return answered(respond_keeping(worker, client, id, kind, true, keep).await);
            }
        }
    }
    if let Some(kind) = info.refused {
        return answered(respond_keeping(worker, client, id, kind, true, info.keep_alive).await);
    }
    let head = client.pos - head_len..client.pos;
    if let Some(next) = answer_locally(worker, client, id, &info, head.clone()).await {
        return answered(next);
    }
    let from_head = from_head(&client.buf[head], &info);
    let limit = config.limits.max_request_body_bytes;
    if matches!(info.body, Framing::Length(n) if limit.is_some_and(|l| n > l)) {
        return Err(Abort::Respond(ErrorKind::BodyTooLarge));
    }
    let mut body = Body::limited(info.body, limit, config.limits.max_chunk_extension_bytes);
    let keep_client = info.keep_alive && !worker.stopping.get();
    let mut head_end = client.request.len();
    // The body bytes that came with the head go out in the same write (and
    // can be sent again when they are the whole body).
    client.keep_body(&mut body, config.retries.max_replay_body_bytes)?;
    let mut progress = Progress::default();
    let routed = find_target(
        worker,
        client,
        &info,
        &mut body,
        &mut head_end,
        from_head,
        &mut progress,
    )
    .await?;
    if let Some(log) = client.log.as_deref_mut() {
        match &routed {
            Routed::To(Target { model: Some(m), .. }) | Routed::NoPool(Some(m)) => {
                log.model(m.as_str())
            }
            _ => {}
        }
    }
    let target = match routed {
        Routed::To(target) => target,
        Routed::NoPool(model) => {
            if let Some(log) = client.log.as_deref_mut() {
                log.reason = Some("model_not_found");
            }
            let response = models::not_found(model.as_ref().map(ModelName::as_str));
            let response = models::generated(models::NOT_FOUND, &response);
            let body_done = body.is_done();
            return answered(
                respond_with(worker, client, id, response, body_done, keep_client).await,
            );
        }
        Routed::TooLarge => {
            let config = &worker.config.model;
            let body = models::too_large_to_inspect(config.max_inspect_body_bytes, &config.header);
            let response = models::generated(models::TOO_LARGE, &body);
            // The rest of the body is unread: the connection closes.
            return answered(respond_with(worker, client, id, response, false, false).await);
        }
    };
    Ok(Route::Forward(Routable {
        info,
        replayable: body.is_done(),
        body,
        target,
        head_end,
        progress,
        keep_client,
    }))
}

/// What the head says of where the request goes, copied out of it before
/// the buffer moves: the model header (or an upgrade's `?model=`,
/// percent-decoded: a Hugging Face id's `/`), and a form's boundary for its
/// `model` field (rare).
fn from_head(head: &[u8], info: &RequestInfo) -> target::FromHead {
    let model = info.model.map(|span| {
        let value = span.in_head(head);
        if info.model_in_query {
            ModelName::new(models::percent_decoded(&String::from_utf8_lossy(value)).as_bytes())
        } else {
            ModelName::new(value)
        }
    });
    let form = info.form.map(|span| span.in_head(head).to_vec());
    target::FromHead { model, form }
}

/// Answers what the proxy answers itself: its health path, and OpenAI's
/// model listing from its pools. `None`: the request goes on to a pool.
async fn answer_locally(
    worker: &Worker,
    client: &mut Client,
    id: &mut RequestId,
    info: &RequestInfo,
    head: std::ops::Range<usize>,
) -> Option<Result<Next, Abort>> {
    let local = info.local?;
    let keep = info.keep_alive && !worker.stopping.get();
    if local == Local::Health {
        // 200 while a replica of any pool is healthy and routable; a pool
        // failing open (sent to replicas that fail their checks) is 503.
        let healthy = worker.snapshots.borrow_mut().load().has_healthy();
        let (status, body): (&[u8], &[u8]) = if healthy {
            (b"HTTP/1.1 200 OK\r\n", br#"{"status":"ok"}"#)
        } else {
            (
                b"HTTP/1.1 503 Service Unavailable\r\n",
                br#"{"status":"unavailable","message":"no replica is healthy and routable"}"#,
            )
        };
        let response = models::generated(status, body);
        return Some(respond_with(worker, client, id, response, true, keep).await);
    }
    let name = match local {
        // A model id with a `/` (a Hugging Face id) comes as `%2F`.
        Local::GetModel(span) => {
            models::percent_decoded(&String::from_utf8_lossy(span.in_head(&client.buf[head])))
        }
        Local::ListModels | Local::Health => String::new(),
    };
    let set = Arc::clone(worker.snapshots.borrow_mut().load());
    let (status, body) = models::answer(&set, local, &name)?;
    let response = models::generated(status, &body);
    Some(respond_with(worker, client, id, response, true, keep).await)
}

/// What one attempt on one replica came to.
enum Attempted {
    Done(Result<Next, Abort>),
    /// Try another replica.
    Again,
}

/// Picks a replica of the pool, connects and exchanges, and decides on a
/// retry, until a response is streamed or the attempts run out.
async fn send(
    worker: &Worker,
    client: &mut Client,
    id: &mut RequestId,
    request: &mut Routable,
) -> Result<Next, Abort> {
    // One clock read serves the budget and every pick of this request.
    let mut now_ms = clock::now_ms();
    worker.retry_budget.borrow_mut().on_request(now_ms);
    let mut attempts = Attempts::new(
        worker,
        request.replayable
            && (request.info.method.is_idempotent() || worker.config.retries.non_idempotent),
    );
    let mut tried = Tried::default();
    let mut tried_generation = u64::MAX;
    let mut host_added = false;

    let mut may_hold = true;
    loop {
        // Pick a replica of the pool not tried yet.
        let picked = pick(
            worker,
            &mut tried,
            &mut tried_generation,
            now_ms,
            &request.target,
            may_hold,
        );
        let Some(picked) = picked else {
            // An autoscaling pool with no replica yet (or every replica at
            // its `max_in_flight_per_replica`): wait for one.
            let mut kind = attempts.give_up();
            if std::mem::take(&mut may_hold) {
                let held_at = Instant::now();
                let gone = || client.stream.has_left();
                let held = hold::wait(
                    worker,
                    &gone,
                    request.target.model.as_ref().map(ModelName::as_str),
                )
                .await;
                if let Some(log) = client.log.as_deref_mut() {
                    log.hold += held_at.elapsed();
                }
                match held {
                    Hold::Ready => {
                        now_ms = clock::now_ms();
                        continue;
                    }
                    Hold::ClientGone => return Err(Abort::ClientGone),
                    Hold::Refused(refused) => kind = refused,
                    Hold::NotHeld => {}
                }
            }
            return refuse(worker, client, id, request, kind).await;
        };
        may_hold = false;
        if let Some(log) = client.log.as_deref_mut() {
            log.replica = Some(picked.addr);
            log.attempts += 1;
        }
        let _in_flight = picked.stats.start_request();
        let started = Instant::now();

        // Connect, or take a pooled connection.
        let Some(conn) = connect(worker, &picked).await else {
            if attempts.connect_failed() {
                continue;
            }
            return refuse(worker, client, id, request, ErrorKind::ConnectFailed).await;
        };
        if request.info.needs_host && !host_added {
            host_added = true;
            add_host(&mut client.request, request.head_end, picked.addr);
        }
        match attempt(
            worker,
            client,
            id,
            request,
            &picked,
            conn,
            started,
            &mut attempts,
        )
        .await
        {
            Attempted::Done(next) => return next,
            Attempted::Again => {}
        }
    }
}

/// One attempt on a connection to `picked`: the exchange (a pooled
/// connection the replica had closed while idle gets one replay on a fresh
/// connection, since nothing was answered), then the response streamed, or
/// the retry decision.
#[allow(clippy::too_many_arguments)]
async fn attempt(
    worker: &Worker,
    client: &mut Client,
    id: &mut RequestId,
    request: &mut Routable,
    picked: &Picked,
    mut conn: UpstreamConn,
    started: Instant,
    attempts: &mut Attempts,
) -> Attempted {
    let info = &request.info;
    let exchange = Exchange {
        worker,
        info,
        stats: &picked.stats,
        request_id: id,
        keep_client: request.keep_client,
    };
    let (body, progress) = (&mut request.body, &mut request.progress);
    let mut outcome = exchange.run(client, &mut conn, body, progress).await;
    if let Outcome::Retryable(stage) = outcome {
        if conn.reused
            && request.replayable
            && (stage == Stage::Send || info.method.is_idempotent())
        {
            sock::shutdown(&conn.stream);
            let timeout = worker.config.timeouts.upstream_connect;
            match upstream::connect(picked.addr, picked.tls.as_ref(), timeout).await {
                Ok(fresh) => {
                    conn = fresh;
                    outcome = exchange.run(client, &mut conn, body, progress).await;
                }
                Err(_) => picked.stats.record_connect_error(),
            }
        }
    }

    let kind = match outcome {
        Outcome::Response { resp, head_time } => {
            account(worker, picked, &resp, head_time);
            if let Some(log) = client.log.as_deref_mut() {
                log.status = resp.status;
            }
            if resp.upgraded {
                let ended = crate::tunnel::relay(worker, client, conn, &resp, &picked.stats).await;
                picked.stats.duration().record(started.elapsed());
                return Attempted::Done(Err(ended));
            }
            let streamed = stream(worker, client, &mut conn, info, &resp, &picked.stats).await;
            picked.stats.duration().record(started.elapsed());
            return Attempted::Done(finish(
                worker,
                conn,
                picked.uid,
                streamed,
                resp.client_close,
            ));
        }
        // Decide on a retry: the replica failed before answering.
        Outcome::Retryable(_) => {
            sock::shutdown(&conn.stream);
            record_failure(worker, picked.uid);
            if attempts.may_resend(worker) {
                tracing::debug!(replica = %picked.addr, "replica failed before responding; retrying on another");
                return Attempted::Again;
            }
            ErrorKind::UpstreamFailed
        }
        Outcome::Fatal(abort) => {
            sock::shutdown(&conn.stream);
            match abort {
                Abort::Respond(kind @ ErrorKind::UpstreamFailed) => {
                    record_failure(worker, picked.uid);
                    kind
                }
                // The replica may still be working: never retried.
                Abort::Respond(
                    kind @ (ErrorKind::UpstreamTimeout | ErrorKind::UpstreamWriteTimeout),
                ) => kind,
                other => return Attempted::Done(Err(other)),
            }
        }
    };
    Attempted::Done(refuse(worker, client, id, request, kind).await)
}

/// Answers with an error instead of a replica's response; the connection
/// stays open when the request was read whole and the client keeps it.
async fn refuse(
    worker: &Worker,
    client: &mut Client,
    id: &mut RequestId,
    request: &Routable,
    kind: ErrorKind,
) -> Result<Next, Abort> {
    let body_done = request.body.is_done();
    respond_keeping(worker, client, id, kind, body_done, request.keep_client).await
}

/// Parses and checks the head at `client.buf[pos..pos + head_len]` and
/// writes the replica's version of it into `client.request`.
fn classify(
    worker: &Worker,
    client: &mut Client,
    id: &mut RequestId,
    head_len: usize,
) -> Result<RequestInfo, Abort> {
    let config = &worker.config;
    let head = &client.buf[client.pos..client.pos + head_len];
    let forwarding = request::Forwarding {
        client_ip: client.ip.as_bytes(),
        https: client.stream.is_https(),
        trusted: client.trusted,
        underscores: config.underscores_in_headers,
        keep_claims: config.keep_untrusted_forwarded_headers,
        model_header: config.model.header.as_bytes(),
        health_path: config.health_path.as_deref(),
        upgrades: &config.upgrades,
    };
    let parsed = request::parse_and_rewrite(
        head,
        config.limits.max_headers,
        &forwarding,
        id,
        &mut client.request,
    );
    client.pos += head_len;
    parsed.map_err(Abort::Respond)
}

/// How many replicas one request may touch; both limits are counted here.
///
/// - A connect that fails sent nothing, so the request moves on to the next
///   replica; `limits.max_connect_attempts` failed connects end it with 502.
/// - A request that reached a replica which failed before any response byte
///   is sent again, to another replica, only when its body was kept whole,
///   its method is idempotent (or `retries.non_idempotent` is set) and the
///   worker's retry budget allows; `retries.max_retries` such re-sends.
/// - A pooled connection the replica had closed while idle is replayed once
///   on a fresh connection to the same replica, counted against neither.
struct Attempts {
    failed_connects: usize,
    max_connects: usize,
    resends: u32,
    max_resends: u32,
    /// The request may be sent again at all.
    resendable: bool,
    /// What the client gets when no replica is left to try.
    last_failure: ErrorKind,
}

impl Attempts {
    fn new(worker: &Worker, resendable: bool) -> Self {
        Self {
            failed_connects: 0,
            max_connects: worker.config.limits.max_connect_attempts,
            resends: 0,
            max_resends: worker.config.retries.max_retries,
            resendable,
            last_failure: ErrorKind::NoReplica,
        }
    }

    /// A connect failed; whether another replica may be tried.
    fn connect_failed(&mut self) -> bool {
        self.failed_connects += 1;
        self.last_failure = ErrorKind::ConnectFailed;
        self.failed_connects < self.max_connects
    }

    /// A replica failed before answering; whether to send the request again.
    fn may_resend(&mut self, worker: &Worker) -> bool {
        self.last_failure = ErrorKind::UpstreamFailed;
        let allowed = self.resendable
            && self.resends < self.max_resends
            && worker.retry_budget.borrow_mut().try_retry(clock::now_ms());
        self.resends += u32::from(allowed);
        allowed
    }

    /// The answer when no untried replica is left: 503 when none was tried.
    fn give_up(&self) -> ErrorKind {
        self.last_failure
    }
}

/// An HTTP/1.0 request without `Host`: names the replica, as HTTP/1.1
/// requires, before the blank line that ends the head at `head_end`.
fn add_host(request: &mut Vec<u8>, head_end: usize, addr: SocketAddr) {
    use std::io::Write;
    let mut line = [0u8; 64];
    let mut cursor = std::io::Cursor::new(&mut line[..]);
    let _ = write!(cursor, "Host: {addr}\r\n");
    let len = cursor.position() as usize;
    let at = head_end - 2;
    request.splice(at..at, line[..len].iter().copied());
}

/// Sends a response the proxy made (404 for an unknown model, a model
/// listing), with the same rule for keeping the connection as an error.
async fn respond_with(
    worker: &Worker,
    client: &mut Client,
    id: &mut RequestId,
    response: Generated<'_>,
    body_done: bool,
    keep_client: bool,
) -> Result<Next, Abort> {
    let close = !body_done || !keep_client;
    if !client.respond(worker, response, close, id).await {
        return Err(Abort::ClientGone);
    }
    Ok(if close { Next::Close } else { Next::KeepAlive })
}

/// Answers with an error before the request body was read whole: the
/// connection stays open only when nothing of the request is left unread
/// and the client wants it kept.
async fn respond_keeping(
    worker: &Worker,
    client: &mut Client,
    id: &mut RequestId,
    kind: ErrorKind,
    body_done: bool,
    keep_client: bool,
) -> Result<Next, Abort> {
    let close = kind.closes() || !body_done || !keep_client;
    if !client.respond_error(worker, kind, close, id).await {
        return Err(Abort::ClientGone);
    }
    Ok(if close { Next::Close } else { Next::KeepAlive })
}
