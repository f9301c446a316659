//! One client connection: read each request head, pick a replica, forward
//! the request, and stream the response back as it arrives.
//!
//! Requests on a connection are handled one after another, so pipelined
//! requests are answered in order; bytes of the next request that arrive
//! early simply wait in the connection's buffer. Every buffer is owned by the
//! connection (or by the pooled upstream connection) and reused, monoio's
//! rent style: `(result, buf) = stream.read(buf).await`.

use std::io;
use std::mem;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use inferlb_core::{clock, ReplicaStats, Tried};
use monoio::buf::IoBuf;
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

use crate::error::{Abort, ErrorKind};
use crate::h1::chunked::ChunkedDecoder;
use crate::h1::request::{self, HeadScanner, RequestBody, RequestInfo};
use crate::h1::response::{self, ResponseBody, ResponseInfo};
use crate::h1::RequestId;
use crate::sock::{self, peer_state, PeerState};
use crate::upstream::{self, UpstreamConn};
use crate::worker::Worker;

/// Initial capacity of a client connection's buffer. Small, because idle
/// keep-alive connections are the common case; it grows for large heads and
/// bodies.
const CLIENT_BUFFER: usize = 1024;
/// Capacity a client buffer grows to while a large body streams through.
const BODY_BUFFER: usize = 64 * 1024;
/// The least free space a read is given.
const MIN_READ: usize = 2 * 1024;
/// Largest response head accepted from a replica.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// How long an upstream read may take before the proxy also starts watching
/// the client for a disconnect. Fast responses never pay for the watch (a
/// poll on the client socket); a slow generation is cancelled within this
/// long of the client leaving.
const WATCH_AFTER: Duration = Duration::from_millis(20);
/// Time allowed to write a proxy-generated error before giving up.
const ERROR_WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// After an error that closes the connection, unread client bytes are read
/// and discarded for at most this long, so that closing does not reset the
/// connection before the client has read the error (nginx `lingering_close`).
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 256 * 1024;

/// What happens to the client connection after a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    KeepAlive,
    Close,
}

/// A client connection and the buffers it reuses for every request.
struct Client {
    stream: TcpStream,
    /// Bytes read from the client; `buf[pos..]` are not yet consumed.
    buf: Vec<u8>,
    pos: usize,
    /// Scratch for rewritten heads and coalesced writes.
    out: Vec<u8>,
    ip: Vec<u8>,
    scanner: HeadScanner,
    request_id: RequestId,
}

impl Client {
    fn pending(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Reads more bytes after those pending, growing the buffer up to `cap`.
    async fn fill(&mut self, cap: usize) -> io::Result<usize> {
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        } else if self.pos > 0 && self.buf.capacity() - self.buf.len() < MIN_READ {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        let spare = self.buf.capacity() - self.buf.len();
        if spare < MIN_READ || (self.buf.capacity() < cap && spare < cap / 2) {
            let want = cap.max(self.buf.len() + MIN_READ);
            self.buf.reserve(want - self.buf.len());
        }
        let buf = mem::take(&mut self.buf);
        let (len, cap) = (buf.len(), buf.capacity());
        let (result, slice) = self.stream.read(buf.slice_mut(len..cap)).await;
        self.buf = slice.into_inner();
        result
    }

    /// Drops empty lines before a request line (RFC 9112 §2.2 asks servers to
    /// ignore at least one, which some clients send after a body).
    fn skip_empty_lines(&mut self) {
        while self.buf[self.pos..].starts_with(b"\r\n") {
            self.pos += 2;
        }
    }

    /// Writes `self.out` to the client.
    async fn write_out(&mut self, timeout: Duration) -> Result<(), Abort> {
        let out = mem::take(&mut self.out);
        let result = monoio::time::timeout(timeout, self.stream.write_all(out)).await;
        match result {
            Ok((Ok(_), out)) => {
                self.out = out;
                Ok(())
            }
            _ => Err(Abort::ClientGone),
        }
    }

    /// Writes `buf[range]` to the client.
    async fn write_slice(
        &mut self,
        buf: Vec<u8>,
        start: usize,
        end: usize,
        timeout: Duration,
    ) -> Result<Vec<u8>, Abort> {
        let result =
            monoio::time::timeout(timeout, self.stream.write_all(buf.slice(start..end))).await;
        match result {
            Ok((Ok(_), slice)) => Ok(slice.into_inner()),
            _ => Err(Abort::ClientGone),
        }
    }

    /// Sends a proxy-generated error response.
    async fn respond_error(&mut self, kind: ErrorKind, close: bool) -> bool {
        if self.request_id.is_empty() {
            self.request_id.generate();
        }
        let body = kind.body();
        self.out.clear();
        self.out.extend_from_slice(kind.status_line());
        self.out
            .extend_from_slice(b"Content-Type: application/json\r\nContent-Length: ");
        self.out
            .extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
        self.out.extend_from_slice(b"\r\n");
        self.out.extend_from_slice(kind.extra_headers());
        self.out.extend_from_slice(b"X-Request-Id: ");
        self.out.extend_from_slice(self.request_id.as_bytes());
        self.out.extend_from_slice(if close {
            b"\r\nConnection: close\r\n\r\n"
        } else {
            b"\r\n\r\n"
        });
        self.out.extend_from_slice(body);
        self.write_out(ERROR_WRITE_TIMEOUT).await.is_ok()
    }

    /// Closes after an error without resetting the connection: stop sending,
    /// then read and discard what the client still sends, briefly.
    async fn linger_close(mut self) {
        sock::shutdown_write(&self.stream);
        let deadline = Instant::now() + LINGER;
        let mut discarded = 0;
        while discarded < LINGER_BYTES {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            self.buf.clear();
            self.pos = 0;
            match monoio::time::timeout(left, self.fill(CLIENT_BUFFER)).await {
                Ok(Ok(n)) if n > 0 => discarded += n,
                _ => break,
            }
        }
    }
}

/// Serves one client connection until it closes.
pub(crate) async fn serve(worker: &Worker, stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let mut client = Client {
        stream,
        buf: Vec::with_capacity(CLIENT_BUFFER),
        pos: 0,
        out: Vec::new(),
        ip: peer.ip().to_canonical().to_string().into_bytes(),
        scanner: HeadScanner::default(),
        request_id: RequestId::new(),
    };
    let accepted = Instant::now();
    let mut first = true;
    loop {
        client.request_id.clear();
        let head_len = match read_head(worker, &mut client, first.then_some(accepted)).await {
            Ok(Some(n)) => n,
            Ok(None) => return,
            Err(kind) => {
                if client.respond_error(kind, true).await {
                    client.linger_close().await;
                }
                return;
            }
        };
        first = false;
        match forward(worker, &mut client, head_len).await {
            Ok(Next::KeepAlive) => {
                if client.buf.capacity() > BODY_BUFFER / 2 && client.pending() < CLIENT_BUFFER {
                    // Give back what a large body grew, so idle connections stay small.
                    client.buf.drain(..client.pos);
                    client.pos = 0;
                    client.buf.shrink_to(CLIENT_BUFFER);
                }
            }
            Ok(Next::Close) => {
                client.linger_close().await;
                return;
            }
            Err(Abort::Respond(kind)) => {
                if client.respond_error(kind, true).await {
                    client.linger_close().await;
                }
                return;
            }
            Err(Abort::ClientGone | Abort::AfterHead) => return,
        }
    }
}

/// Waits for and scans a request head. `Ok(None)`: close quietly (the client
/// left, an idle keep-alive connection timed out, or the worker is stopping).
/// `first` holds the accept time for a connection's first request, whose
/// head must arrive within the header timeout of the accept.
async fn read_head(
    worker: &Worker,
    client: &mut Client,
    first: Option<Instant>,
) -> Result<Option<usize>, ErrorKind> {
    let timeouts = &worker.config.timeouts;
    let max_head = worker.config.limits.max_request_head_bytes;
    client.scanner.reset();
    client.skip_empty_lines();
    if client.pending() == 0 {
        let idle = if first.is_some() {
            timeouts.client_header
        } else {
            timeouts.client_keepalive
        };
        // Registered before the flag is read, so a stop in between is not missed.
        let stop = worker.stop.notified();
        if worker.stopping.get() {
            return Ok(None);
        }
        let read = monoio::select! {
            read = monoio::time::timeout(idle, client.fill(CLIENT_BUFFER)) => read,
            _ = stop => return Ok(None),
        };
        match read {
            Ok(Ok(n)) if n > 0 => {}
            Ok(_) => return Ok(None),
            // A connection that never sent a byte gets 408 like a slow one
            // (HAProxy does the same); an idle keep-alive one just closes.
            Err(_) if first.is_some() => return Err(ErrorKind::HeadTimeout),
            Err(_) => return Ok(None),
        }
        client.skip_empty_lines();
    }
    let deadline = first.unwrap_or_else(Instant::now) + timeouts.client_header;
    loop {
        if let Some(len) = client.scanner.scan(&client.buf[client.pos..])? {
            if len > max_head {
                return Err(ErrorKind::HeadTooLarge);
            }
            return Ok(Some(len));
        }
        if client.pending() >= max_head {
            return Err(ErrorKind::HeadTooLarge);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ErrorKind::HeadTimeout);
        }
        match monoio::time::timeout(left, client.fill(max_head + MIN_READ)).await {
            Ok(Ok(n)) if n > 0 => {}
            Ok(_) => return Ok(None),
            Err(_) => return Err(ErrorKind::HeadTimeout),
        }
    }
}

/// Where the request body stands.
#[derive(Debug)]
enum BodyLeft {
    Done,
    Length(u64),
    Chunked(ChunkedDecoder),
}

impl BodyLeft {
    fn is_done(&self) -> bool {
        matches!(self, Self::Done)
    }
}

/// The replica a request went to.
struct Picked {
    uid: u64,
    addr: SocketAddr,
    stats: Arc<ReplicaStats>,
}

/// Moves up to `max` bytes of the body from the client buffer to `out`,
/// checking framing and the size limit; returns how many were moved.
fn take_body(
    client: &mut Client,
    body: &mut BodyLeft,
    limit: Option<u64>,
    max: usize,
    into_out: bool,
) -> Result<usize, ErrorKind> {
    let avail = &client.buf[client.pos..client.buf.len().min(client.pos.saturating_add(max))];
    let n = match body {
        BodyLeft::Done => 0,
        BodyLeft::Length(left) => {
            let n = avail
                .len()
                .min(usize::try_from(*left).unwrap_or(usize::MAX));
            *left -= n as u64;
            if *left == 0 {
                *body = BodyLeft::Done;
            }
            n
        }
        BodyLeft::Chunked(decoder) => {
            let n = decoder
                .feed(avail, |_| {})
                .map_err(|_| ErrorKind::BadRequest)?;
            if limit.is_some_and(|l| decoder.data_len() > l) {
                return Err(ErrorKind::BodyTooLarge);
            }
            if decoder.is_done() {
                *body = BodyLeft::Done;
            }
            n
        }
    };
    if into_out {
        client
            .out
            .extend_from_slice(&client.buf[client.pos..client.pos + n]);
        client.pos += n;
    }
    Ok(n)
}

/// Forwards one request whose head is `client.buf[pos..pos + head_len]`.
async fn forward(worker: &Worker, client: &mut Client, head_len: usize) -> Result<Next, Abort> {
    let config = &worker.config;
    let head = &client.buf[client.pos..client.pos + head_len];
    let forwarding = request::Forwarding {
        client_ip: &client.ip,
    };
    let parsed = request::parse_and_rewrite(
        head,
        config.limits.max_headers,
        &forwarding,
        &mut client.request_id,
        &mut client.out,
    );
    let info = match parsed {
        Ok(info) => info,
        // Sound framing, refused method: answer and keep the connection.
        Err(kind) if !kind.closes() => {
            client.pos += head_len;
            return respond_keeping(client, kind, &BodyLeft::Done, true).await;
        }
        Err(kind) => return Err(Abort::Respond(kind)),
    };
    client.pos += head_len;
    let limit = config.limits.max_request_body_bytes;
    let mut body = match info.body {
        RequestBody::None => BodyLeft::Done,
        RequestBody::Length(n) if limit.is_some_and(|l| n > l) => {
            return Err(Abort::Respond(ErrorKind::BodyTooLarge))
        }
        RequestBody::Length(n) => BodyLeft::Length(n),
        RequestBody::Chunked => BodyLeft::Chunked(ChunkedDecoder::new()),
    };
    let keep_client = info.keep_alive;

    // Pick a replica and get a connection, moving on when a connect fails;
    // then send the request and read the response head. A replica that
    // fails before any response byte is retried on another (idempotent or
    // opted-in requests whose body was kept, within the retry budget).
    let mut tried = Tried::default();
    let mut tried_generation = u64::MAX;
    let mut attempts = 0;
    let mut retries = 0;
    let mut started;
    let mut host_added = false;
    let mut body_taken = false;
    let mut replayable = false;
    let mut sent_continue = false;
    let keep_client = keep_client && !worker.stopping.get();
    worker.retry_budget.borrow_mut().on_request(clock::now_ms());
    let (picked, _in_flight, mut conn, resp) = 'replica: loop {
        let (picked, in_flight, mut conn) = loop {
            let choice = {
                let mut snapshots = worker.snapshots.borrow_mut();
                let set = snapshots.load();
                if set.generation() != tried_generation {
                    tried.clear();
                    tried_generation = set.generation();
                }
                let mut cursor = worker.cursor.borrow_mut();
                set.pick_index(&mut cursor, &tried).map(|i| {
                    let r = &set.replicas()[i];
                    (
                        i,
                        Picked {
                            uid: r.uid,
                            addr: r.addr,
                            stats: Arc::clone(&r.stats),
                        },
                    )
                })
            };
            let Some((index, picked)) = choice else {
                let kind = if attempts == 0 {
                    ErrorKind::NoReplica
                } else {
                    ErrorKind::ConnectFailed
                };
                return respond_keeping(client, kind, &body, keep_client).await;
            };
            attempts += 1;
            tried.insert(index);
            let in_flight = picked.stats.start_request();
            started = Instant::now();
            let pooled = worker.pool.borrow_mut().take(picked.uid);
            if let Some(conn) = pooled {
                break (picked, in_flight, conn);
            }
            match upstream::connect(picked.addr, config.timeouts.upstream_connect).await {
                Ok(conn) => break (picked, in_flight, conn),
                Err(error) => {
                    picked.stats.record_connect_error();
                    record_failure(worker, picked.uid);
                    tracing::debug!(replica = %picked.addr, ?error, "connect failed");
                    if attempts >= config.limits.max_connect_attempts {
                        return respond_keeping(
                            client,
                            ErrorKind::ConnectFailed,
                            &body,
                            keep_client,
                        )
                        .await;
                    }
                }
            }
        };
        if info.needs_host && !host_added {
            // An HTTP/1.0 request without Host: name the replica, as HTTP/1.1 requires.
            host_added = true;
            client.out.truncate(client.out.len() - 2);
            use std::io::Write;
            let _ = write!(client.out, "Host: {}\r\n\r\n", picked.addr);
        }
        if !body_taken {
            // The head plus whatever body already arrived go out in one
            // write. When that is the whole request, it can be replayed on a
            // fresh connection or another replica.
            body_taken = true;
            take_body(
                client,
                &mut body,
                limit,
                config.retries.max_replay_body_bytes,
                true,
            )
            .map_err(Abort::Respond)?;
            replayable = body.is_done();
        }
        let mut replayed = false;
        let outcome: Result<ResponseInfo, Abort> = 'attempt: loop {
            let out = mem::take(&mut client.out);
            let written = out.len();
            let (result, out) = conn.stream.write_all(out).await;
            client.out = out;
            if result.is_err() {
                if conn.reused && replayable && !replayed {
                    replayed = true;
                    conn = match reconnect(worker, &picked).await {
                        Ok(c) => c,
                        Err(abort) => break 'attempt Err(abort),
                    };
                    continue 'attempt;
                }
                break 'attempt Err(Abort::Respond(ErrorKind::UpstreamFailed));
            }
            picked.stats.add_bytes_out(written);

            // A client that asked to be told before sending its body hears it
            // now that a replica is ready for it (nginx answers 100 itself too).
            if info.expect_continue
                && info.minor == 1
                && !body.is_done()
                && client.pending() == 0
                && !sent_continue
            {
                sent_continue = true;
                let request = mem::replace(&mut client.out, Vec::with_capacity(64));
                client
                    .out
                    .extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
                let sent = client.write_out(ERROR_WRITE_TIMEOUT).await;
                client.out = request;
                if let Err(abort) = sent {
                    sock::shutdown(&conn.stream);
                    return Err(abort);
                }
            }
            if let Err(abort) =
                stream_request_body(worker, client, &mut conn, &mut body, limit, &picked).await
            {
                sock::shutdown(&conn.stream);
                return Err(abort);
            }

            // The response head, passing interim 1xx responses on.
            let mut interim = false;
            loop {
                match read_response_head(worker, client, &mut conn, &info, keep_client, &picked)
                    .await
                {
                    Ok(resp) if resp.informational => {
                        interim = true;
                        if info.minor == 1 && !(resp.status == 100 && sent_continue) {
                            if let Err(abort) = client.write_out(config.timeouts.body_read).await {
                                sock::shutdown(&conn.stream);
                                return Err(abort);
                            }
                        }
                        conn.buf.drain(..resp.head_len);
                    }
                    Ok(resp) => break 'attempt Ok(resp),
                    Err(Abort::Respond(ErrorKind::UpstreamFailed))
                        if conn.reused
                            && replayable
                            && !replayed
                            && !interim
                            && info.method.is_idempotent() =>
                    {
                        // The pooled connection died under the request before
                        // any response byte: an idempotent request is replayed
                        // once on a fresh connection. (A failed write, above,
                        // is replayed for any method: nothing reached the replica.)
                        replayed = true;
                        sock::shutdown(&conn.stream);
                        conn = match reconnect(worker, &picked).await {
                            Ok(c) => c,
                            Err(abort) => break 'attempt Err(abort),
                        };
                        continue 'attempt;
                    }
                    Err(Abort::Respond(ErrorKind::UpstreamFailed)) if interim => {
                        // Part of a response (an interim one) already went
                        // out: close rather than answer twice.
                        sock::shutdown(&conn.stream);
                        return Err(Abort::AfterHead);
                    }
                    Err(abort) => break 'attempt Err(abort),
                }
            }
        };
        match outcome {
            Ok(resp) => break 'replica (picked, in_flight, conn, resp),
            Err(Abort::Respond(kind @ (ErrorKind::UpstreamFailed | ErrorKind::ConnectFailed))) => {
                sock::shutdown(&conn.stream);
                record_failure(worker, picked.uid);
                drop(in_flight);
                let may_retry = replayable
                    && (info.method.is_idempotent() || config.retries.non_idempotent)
                    && retries < config.retries.max_retries
                    && worker.retry_budget.borrow_mut().try_retry(clock::now_ms());
                if !may_retry {
                    // The connection stays usable when the whole request was read.
                    return respond_keeping(client, kind, &body, keep_client).await;
                }
                retries += 1;
                tracing::debug!(replica = %picked.addr, retries, "replica failed before responding; retrying on another");
            }
            Err(Abort::Respond(kind @ ErrorKind::UpstreamTimeout)) => {
                // The replica may still be generating: close its connection,
                // never retry, and keep the client's when it can be kept.
                sock::shutdown(&conn.stream);
                return respond_keeping(client, kind, &body, keep_client).await;
            }
            Err(abort) => {
                sock::shutdown(&conn.stream);
                return Err(abort);
            }
        }
    };
    picked.stats.record_response(resp.status);
    picked.stats.record_head_time(started.elapsed());
    if resp.status >= 500 {
        record_failure(worker, picked.uid);
    } else {
        picked.stats.record_success();
    }
    if let Some(seconds) = resp
        .retry_after_s
        .filter(|_| resp.status == 429 || resp.status == 503)
    {
        // Back off as the replica asked (a penalty, not an ejection).
        picked
            .stats
            .penalize_until(clock::now_ms() + seconds.min(MAX_PENALTY_S) * 1000);
    } else if resp.status == 429 {
        picked
            .stats
            .penalize_until(clock::now_ms() + DEFAULT_PENALTY_S * 1000);
    }
    let reusable = stream_response(worker, client, &mut conn, &info, &resp, &picked).await;
    picked.stats.duration().record(started.elapsed());
    match reusable {
        Ok(true) => worker.pool.borrow_mut().put(picked.uid, conn),
        Ok(false) => {}
        Err(abort) => {
            sock::shutdown(&conn.stream);
            return Err(abort);
        }
    }
    Ok(if resp.client_close {
        Next::Close
    } else {
        Next::KeepAlive
    })
}

/// A 429 without `Retry-After` avoids the replica this long.
const DEFAULT_PENALTY_S: u64 = 1;
/// The longest `Retry-After` honoured, so a bogus header cannot park a
/// replica for hours.
const MAX_PENALTY_S: u64 = 300;

/// Counts a connect failure or 5xx against a replica; ejects it after a run.
fn record_failure(worker: &Worker, uid: u64) {
    let mut snapshots = worker.snapshots.borrow_mut();
    let set = snapshots.load();
    if let Some(index) = set.replicas().iter().position(|r| r.uid == uid) {
        if let Some(ms) = worker
            .config
            .outlier
            .on_failure(set, index, clock::now_ms())
        {
            tracing::warn!(replica = %set.replicas()[index].id, ejected_ms = ms, "replica ejected after consecutive failures");
        }
    }
}

/// A fresh connection to the same replica, for a replay.
async fn reconnect(worker: &Worker, picked: &Picked) -> Result<UpstreamConn, Abort> {
    match upstream::connect(picked.addr, worker.config.timeouts.upstream_connect).await {
        Ok(conn) => Ok(conn),
        Err(_) => {
            picked.stats.record_connect_error();
            Err(Abort::Respond(ErrorKind::ConnectFailed))
        }
    }
}

/// Answers with an error before the request body was read: the connection
/// stays open only when there is no body left unread on it.
async fn respond_keeping(
    client: &mut Client,
    kind: ErrorKind,
    body: &BodyLeft,
    keep_client: bool,
) -> Result<Next, Abort> {
    let close = kind.closes() || !body.is_done() || !keep_client;
    if !client.respond_error(kind, close).await {
        return Err(Abort::ClientGone);
    }
    Ok(if close { Next::Close } else { Next::KeepAlive })
}

/// Streams the rest of the request body from the client to the replica.
async fn stream_request_body(
    worker: &Worker,
    client: &mut Client,
    conn: &mut UpstreamConn,
    body: &mut BodyLeft,
    limit: Option<u64>,
    picked: &Picked,
) -> Result<(), Abort> {
    let timeout = worker.config.timeouts.body_read;
    while !body.is_done() {
        if client.pending() == 0 {
            match monoio::time::timeout(timeout, client.fill(BODY_BUFFER)).await {
                Ok(Ok(n)) if n > 0 => {}
                Ok(_) => return Err(Abort::ClientGone),
                Err(_) => return Err(Abort::Respond(ErrorKind::HeadTimeout)),
            }
        }
        let n = take_body(client, body, limit, usize::MAX, false).map_err(Abort::Respond)?;
        let buf = mem::take(&mut client.buf);
        let (start, end) = (client.pos, client.pos + n);
        let (result, slice) = conn.stream.write_all(buf.slice(start..end)).await;
        client.buf = slice.into_inner();
        client.pos = end;
        if result.is_err() {
            return Err(Abort::Respond(ErrorKind::UpstreamFailed));
        }
        picked.stats.add_bytes_out(n);
    }
    Ok(())
}

/// What a watched upstream read ended with.
enum Read {
    Bytes(usize),
    Eof,
    Failed,
    TimedOut,
    ClientGone,
}

/// Reads from the replica into the free space of `conn.buf`, within
/// `limit`, while watching the client for a disconnect once the read has
/// taken longer than [`WATCH_AFTER`].
async fn read_upstream(
    conn: &mut UpstreamConn,
    client: &TcpStream,
    stats: &ReplicaStats,
    limit: Duration,
) -> Read {
    if conn.buf.capacity() - conn.buf.len() < MIN_READ {
        conn.buf.reserve(MIN_READ.max(conn.buf.capacity()));
    }
    let buf = mem::take(&mut conn.buf);
    let (len, cap) = (buf.len(), buf.capacity());
    let mut read = pin!(conn.stream.read(buf.slice_mut(len..cap)));
    let fast = WATCH_AFTER.min(limit);
    let early = monoio::select! {
        biased;
        done = &mut read => Some(done),
        _ = monoio::time::sleep(fast) => None,
    };
    let (result, slice) = match early {
        Some(done) => done,
        None => monoio::select! {
            biased;
            done = &mut read => done,
            _ = client_gone(client) => return Read::ClientGone,
            _ = evicted(stats) => return Read::Failed,
            _ = monoio::time::sleep(limit - fast) => return Read::TimedOut,
        },
    };
    conn.buf = slice.into_inner();
    match result {
        Ok(0) => Read::Eof,
        Ok(n) => Read::Bytes(n),
        Err(_) => Read::Failed,
    }
}

/// How often a slow exchange checks whether its replica was evicted.
const EVICTION_CHECK: Duration = Duration::from_millis(100);

/// Completes when the replica is evicted (removed after a drain timed out
/// with this exchange still in flight).
async fn evicted(stats: &ReplicaStats) {
    while !stats.is_evicted() {
        monoio::time::sleep(EVICTION_CHECK).await;
    }
}

/// Completes when the client has closed its side or the connection failed.
/// Pipelined bytes from the client mean it is still there: then this never
/// completes (they are read later, as the next request).
async fn client_gone(client: &TcpStream) {
    loop {
        if client.readable(false).await.is_err() {
            return;
        }
        match peer_state(client) {
            PeerState::Closed => return,
            PeerState::HasData => std::future::pending::<()>().await,
            // A spurious wake-up; do not spin on it.
            PeerState::Quiet => monoio::time::sleep(Duration::from_millis(1)).await,
        }
    }
}

/// Reads and rewrites a response head into `client.out`.
async fn read_response_head(
    worker: &Worker,
    client: &mut Client,
    conn: &mut UpstreamConn,
    info: &RequestInfo,
    keep_client: bool,
    picked: &Picked,
) -> Result<ResponseInfo, Abort> {
    let deadline = Instant::now() + worker.config.timeouts.upstream_response;
    loop {
        if !conn.buf.is_empty() {
            match response::parse_and_rewrite(
                &conn.buf,
                info,
                keep_client,
                &client.request_id,
                &mut client.out,
            ) {
                Ok(Some(resp)) => return Ok(resp),
                Ok(None) if conn.buf.len() >= MAX_RESPONSE_HEAD => {
                    return Err(Abort::Respond(ErrorKind::UpstreamFailed));
                }
                Ok(None) => {}
                Err(kind) => return Err(Abort::Respond(kind)),
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Abort::Respond(ErrorKind::UpstreamTimeout));
        }
        match read_upstream(conn, &client.stream, &picked.stats, left).await {
            Read::Bytes(n) => picked.stats.add_bytes_in(n),
            Read::Eof | Read::Failed => return Err(Abort::Respond(ErrorKind::UpstreamFailed)),
            Read::TimedOut => return Err(Abort::Respond(ErrorKind::UpstreamTimeout)),
            Read::ClientGone => return Err(Abort::ClientGone),
        }
    }
}

/// How the response body is relayed.
enum Relay {
    Done,
    Length(u64),
    /// Passed through as chunked, or de-chunked for an HTTP/1.0 client.
    Chunked {
        decoder: ChunkedDecoder,
        dechunk: bool,
    },
    UntilClose,
}

impl Relay {
    /// Takes the body bytes at the start of `input`, appending what the
    /// client gets to `out` when given; returns how many input bytes belong
    /// to the body.
    fn take(&mut self, input: &[u8], out: Option<&mut Vec<u8>>) -> Result<usize, Abort> {
        let n = match self {
            Self::Done => 0,
            Self::Length(left) => {
                let n = input
                    .len()
                    .min(usize::try_from(*left).unwrap_or(usize::MAX));
                *left -= n as u64;
                if *left == 0 {
                    *self = Self::Done;
                }
                if let Some(out) = out {
                    out.extend_from_slice(&input[..n]);
                }
                n
            }
            Self::Chunked { decoder, dechunk } => {
                let dechunk = *dechunk;
                let mut sink = out;
                let n = decoder
                    .feed(input, |range| {
                        if dechunk {
                            if let Some(out) = sink.as_deref_mut() {
                                out.extend_from_slice(&input[range]);
                            }
                        }
                    })
                    .map_err(|_| Abort::AfterHead)?;
                if !dechunk {
                    if let Some(out) = sink {
                        out.extend_from_slice(&input[..n]);
                    }
                }
                if decoder.is_done() {
                    *self = Self::Done;
                }
                n
            }
            Self::UntilClose => {
                if let Some(out) = out {
                    out.extend_from_slice(input);
                }
                input.len()
            }
        };
        Ok(n)
    }
}

/// Sends the response head and streams the body, each read written to the
/// client as it arrives. Returns whether the upstream connection can go back
/// to the pool.
async fn stream_response(
    worker: &Worker,
    client: &mut Client,
    conn: &mut UpstreamConn,
    info: &RequestInfo,
    resp: &ResponseInfo,
    picked: &Picked,
) -> Result<bool, Abort> {
    let timeout = worker.config.timeouts.body_read;
    let mut relay = match resp.body {
        ResponseBody::None => Relay::Done,
        ResponseBody::Length(0) => Relay::Done,
        ResponseBody::Length(n) => Relay::Length(n),
        ResponseBody::Chunked => Relay::Chunked {
            decoder: ChunkedDecoder::new(),
            dechunk: info.minor == 0,
        },
        ResponseBody::UntilClose => Relay::UntilClose,
    };
    // Body bytes that arrived with the head ride in the head's write.
    let early = conn.buf.len() - resp.head_len;
    let mut trailing = false;
    if early > 0 {
        let input = &conn.buf[resp.head_len..];
        let n = relay.take(input, Some(&mut client.out))?;
        trailing = n < early;
    }
    conn.buf.clear();
    client.write_out(timeout).await?;
    while !matches!(relay, Relay::Done) {
        if picked.stats.is_evicted() {
            // The replica's drain timed out: cut what is still flowing.
            return Err(Abort::AfterHead);
        }
        conn.buf.clear();
        let n = match read_upstream(conn, &client.stream, &picked.stats, timeout).await {
            Read::Bytes(n) => n,
            Read::Eof if matches!(relay, Relay::UntilClose) => return Ok(false),
            Read::ClientGone => return Err(Abort::ClientGone),
            Read::Eof | Read::Failed | Read::TimedOut => return Err(Abort::AfterHead),
        };
        picked.stats.add_bytes_in(n);
        let dechunk = matches!(relay, Relay::Chunked { dechunk: true, .. });
        if dechunk {
            client.out.clear();
            let input = &conn.buf[..n];
            relay.take(input, Some(&mut client.out))?;
            client.write_out(timeout).await?;
        } else {
            let taken = relay.take(&conn.buf[..n], None)?;
            trailing |= taken < n;
            let buf = mem::take(&mut conn.buf);
            conn.buf = client.write_slice(buf, 0, taken, timeout).await?;
        }
    }
    Ok(resp.upstream_keep_alive && !trailing)
}
