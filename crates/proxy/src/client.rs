//! The client side of a connection: its socket, the buffers it rents while
//! a request is in progress, reading request heads, proxy-generated error
//! responses, and the lingering close.
//!
//! Each buffer has one role and one owner:
//! - `buf`: bytes read from the client (heads, then body bytes);
//! - `out`: bytes for the client (a response head with the body bytes that
//!   came with it, a de-chunked piece of body, or an error response);
//! - `request`: the request as the replica gets it (the rewritten head and
//!   the body bytes kept for a replay).
//!
//! All three are rented from the worker's pool ([`crate::buffers`]) for the
//! length of a request and given back when the connection goes idle.

use std::future::{poll_fn, Future};
use std::io;
use std::mem;
use std::net::IpAddr;
use std::pin::pin;
use std::task::Poll;
use std::time::{Duration, Instant};

use monoio::buf::{IoBuf, IoBufMut};
use monoio::io::{CancelableAsyncReadRent, Canceller};
use monoio::net::tcp::stream_poll::TcpStreamPoll;

use crate::buffers::{Buffers, MIN_READ};
use crate::error::{Abort, ErrorKind};
use crate::h1::request::HeadScanner;
use crate::h1::RequestId;
use crate::io::ClientIo;
use crate::worker::Worker;

/// Capacity a client buffer may grow to while a large body streams through.
pub(crate) const BODY_BUFFER: usize = 64 * 1024;
/// Time allowed to write a proxy-generated response before giving up.
pub(crate) const ERROR_WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// After an error that closes the connection, unread client bytes are read
/// and discarded for at most this long, so that closing does not reset the
/// connection before the client has read the error (nginx `lingering_close`).
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 256 * 1024;

/// The client's address as text, held inline (an IPv6 address is at most
/// 45 characters) so that a connection allocates nothing for it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct IpText {
    bytes: [u8; 46],
    len: u8,
}

impl IpText {
    fn new(ip: IpAddr) -> Self {
        use std::io::Write;
        let mut bytes = [0; 46];
        let mut cursor = io::Cursor::new(&mut bytes[..]);
        let _ = write!(cursor, "{}", ip.to_canonical());
        let len = cursor.position() as u8;
        Self { bytes, len }
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// A response the proxy writes itself: an error, or a model listing.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Generated<'a> {
    /// `HTTP/1.1 404 Not Found\r\n`.
    pub(crate) status_line: &'a [u8],
    /// Whole header lines, each ending in CRLF.
    pub(crate) extra_headers: &'a [u8],
    /// A JSON document.
    pub(crate) body: &'a [u8],
}

/// A client connection and the buffers it holds while a request is in
/// progress.
pub(crate) struct Client {
    pub(crate) stream: ClientIo,
    /// A byte a TLS connection's idle wait read, not yet in `buf`.
    pub(crate) carry: Option<u8>,
    /// The TLS version and cipher suite, on a TLS connection.
    pub(crate) tls: Option<(&'static str, &'static str)>,
    /// Bytes read from the client; `buf[pos..]` are not consumed yet.
    pub(crate) buf: Vec<u8>,
    pub(crate) pos: usize,
    /// Bytes for the client.
    pub(crate) out: Vec<u8>,
    /// The request as the replica gets it.
    pub(crate) request: Vec<u8>,
    pub(crate) ip: IpText,
    /// The client is one of `trusted_proxies`.
    pub(crate) trusted: bool,
    pub(crate) scanner: HeadScanner,
    /// The accept time, until the first request head has arrived: that head
    /// must arrive within the header timeout of the accept.
    pub(crate) accepted: Option<Instant>,
    /// The connection is busy: its last request came soon after the
    /// response before it, so the next one is awaited with a read rather
    /// than an idle wait (see [`Client::wait_hot`]).
    pub(crate) hot: bool,
    /// The access log record of the request being served, lent by the
    /// handler for the request (none when there is no access log).
    pub(crate) log: Option<Box<crate::access::Record>>,
    /// `[cors]` header lines every answer to the current request carries
    /// (empty without `[cors]` or an allowed `Origin`).
    pub(crate) cors: Vec<u8>,
}

/// What a busy connection's short wait for its next request found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HotWait {
    /// Bytes of the next request are in `buf`.
    Request,
    /// Nothing within the window: the connection goes back to an idle wait,
    /// owning no buffer.
    Cold,
    /// The client closed the connection (or it failed).
    Closed,
}

impl Client {
    pub(crate) fn new(stream: ClientIo, ip: IpAddr, trusted: bool) -> Self {
        if let Some(tcp) = stream.plain() {
            let _ = tcp.set_nodelay(true);
        }
        Self {
            stream,
            carry: None,
            tls: None,
            buf: Vec::new(),
            pos: 0,
            out: Vec::new(),
            request: Vec::new(),
            ip: IpText::new(ip),
            trusted,
            scanner: HeadScanner::default(),
            accepted: Some(Instant::now()),
            hot: false,
            log: None,
            cors: Vec::new(),
        }
    }

    /// Bytes read but not consumed yet (the start of a pipelined request).
    pub(crate) fn pending(&self) -> usize {
        self.buf.len() - self.pos + usize::from(self.carry.is_some())
    }

    /// The plain TCP connection, switched to readiness-based I/O for a
    /// protocol that needs it (HTTP/2); `None` for any other transport.
    pub(crate) fn into_poll_io(self) -> Option<TcpStreamPoll> {
        match self.stream {
            ClientIo::Plain(stream) => stream.try_into_poll_io().ok(),
            _ => None,
        }
    }

    /// Rents the buffer a request's head is read into. The others wait for
    /// a complete head ([`Client::rent_for_request`]): a flood of partial
    /// heads holds one buffer per connection, not three.
    pub(crate) fn rent_for_head(&mut self, buffers: &mut Buffers) {
        buffers.rent(&mut self.buf);
    }

    /// Rents the buffers a request needs once its head is in.
    pub(crate) fn rent_for_request(&mut self, buffers: &mut Buffers) {
        buffers.rent(&mut self.out);
        buffers.rent(&mut self.request);
    }

    /// Moves up to `max` pending body bytes (as far as `body` says they are
    /// body) from `buf` to the end of `request`.
    pub(crate) fn keep_body(
        &mut self,
        body: &mut crate::h1::body::Body,
        max: usize,
    ) -> Result<(), Abort> {
        let start = self.pos;
        let end = self.buf.len().min(start.saturating_add(max));
        let n = body
            .take(&self.buf[start..end], |_| {})
            .map_err(|e| Abort::Respond(e.kind()))?;
        self.request.extend_from_slice(&self.buf[start..start + n]);
        self.pos += n;
        Ok(())
    }

    /// Gives the buffers back between requests; `buf` stays while it holds
    /// the start of a pipelined request.
    pub(crate) fn give_back(&mut self, buffers: &mut Buffers) {
        if self.pending() == 0 {
            self.pos = 0;
            buffers.give_back(&mut self.buf);
        }
        buffers.give_back(&mut self.out);
        buffers.give_back(&mut self.request);
    }

    /// Reads more bytes after those pending, growing the buffer up to `max`
    /// when less than [`MIN_READ`] is free.
    pub(crate) async fn fill(&mut self, max: usize) -> io::Result<usize> {
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        } else if self.pos > 0 && self.buf.capacity() - self.buf.len() < MIN_READ {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        let spare = self.buf.capacity() - self.buf.len();
        if spare < MIN_READ {
            let grown = (self.buf.capacity() * 2).clamp(MIN_READ, max.max(MIN_READ));
            self.buf
                .reserve(grown.max(self.buf.len() + MIN_READ) - self.buf.len());
        }
        if let Some(byte) = self.carry.take() {
            self.buf.push(byte);
            return Ok(1);
        }
        let buf = mem::take(&mut self.buf);
        let (result, buf) = self.stream.read_into(buf).await;
        self.buf = buf;
        result
    }

    /// Waits briefly for the next request of a busy connection with a read
    /// already in flight, which saves the idle wait's readiness poll and the
    /// hand-over to the connection task on every request. The window ends at
    /// the worker's second deadline sweep (100 to 200 ms: see
    /// [`Worker::short_deadline`]); then the read is cancelled and, unless
    /// bytes won the race, the buffer goes back to the pool.
    pub(crate) async fn wait_hot(&mut self, worker: &Worker, canceller: &mut Canceller) -> HotWait {
        debug_assert_eq!(self.pending(), 0);
        if worker.stopping.get() {
            return HotWait::Cold;
        }
        self.pos = 0;
        worker.buffers.borrow_mut().rent(&mut self.buf);
        self.buf.clear();
        let buf = mem::take(&mut self.buf);
        let cap = buf.capacity();
        let row = worker.idle.register(worker.short_deadline());
        let ClientIo::Plain(stream) = &mut self.stream else {
            self.buf = buf;
            worker.buffers.borrow_mut().give_back(&mut self.buf);
            return HotWait::Cold;
        };
        let mut read = pin!(stream.cancelable_read(buf.slice_mut(0..cap), canceller.handle()));
        let mut cancelled = false;
        let (result, slice) = poll_fn(|cx| {
            if let Poll::Ready(done) = read.as_mut().poll(cx) {
                return Poll::Ready(done);
            }
            if !cancelled && (worker.stopping.get() || row.expired(cx.waker())) {
                // The read now ends: cancelled, or with bytes that won the
                // race, which are served as usual.
                cancelled = true;
                *canceller = mem::take(canceller).cancel();
            }
            Poll::Pending
        })
        .await;
        self.buf = slice.into_inner();
        match result {
            Ok(n) if n > 0 => HotWait::Request,
            Ok(_) => HotWait::Closed,
            // Cancelled (any other error shows again on the idle wait).
            Err(_) if cancelled => {
                self.hot = false;
                worker.buffers.borrow_mut().give_back(&mut self.buf);
                HotWait::Cold
            }
            Err(_) => HotWait::Closed,
        }
    }

    /// Drops empty lines before a request line (RFC 9112 §2.2 asks servers to
    /// ignore at least one, which some clients send after a body).
    fn skip_empty_lines(&mut self) {
        while self.buf[self.pos..].starts_with(b"\r\n") {
            self.pos += 2;
        }
    }

    /// Reads a request head on a connection that is readable or has bytes
    /// pending. `Ok(None)`: close quietly (the client left without starting
    /// a request).
    pub(crate) async fn read_head(&mut self, worker: &Worker) -> Result<Option<usize>, ErrorKind> {
        let timeouts = &worker.config.timeouts;
        let max_head = worker.config.limits.max_request_head_bytes;
        // With nothing pending, the connection was just found readable: the
        // first read completes at once and needs no timer of its own.
        let mut ready = self.pending() == 0;
        let mut deadline = None;
        self.scanner.reset();
        loop {
            self.skip_empty_lines();
            if self.pending() > 0 {
                if let Some(len) = self.scanner.scan(&self.buf[self.pos..])? {
                    if len > max_head {
                        return Err(ErrorKind::HeadTooLarge);
                    }
                    self.accepted = None;
                    return Ok(Some(len));
                }
                if self.pending() >= max_head {
                    return Err(ErrorKind::HeadTooLarge);
                }
            }
            let read = if std::mem::take(&mut ready) {
                Ok(self.fill(max_head + MIN_READ).await)
            } else {
                let deadline = *deadline.get_or_insert_with(|| {
                    self.accepted.unwrap_or_else(|| worker.now()) + timeouts.client_header
                });
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(ErrorKind::HeadTimeout);
                }
                monoio::time::timeout(left, self.fill(max_head + MIN_READ)).await
            };
            match read {
                Ok(Ok(n)) if n > 0 => {}
                Ok(_) => return Ok(None),
                Err(_) => return Err(ErrorKind::HeadTimeout),
            }
        }
    }

    /// Writes `out` to the client within `timeout` (timerless while fast:
    /// see [`crate::watch::within`]).
    pub(crate) async fn write_out(
        &mut self,
        worker: &Worker,
        timeout: Duration,
    ) -> Result<(), Abort> {
        let out = mem::take(&mut self.out);
        match crate::watch::within(worker, self.stream.write_all(out), timeout).await {
            Some((Ok(n), out)) => {
                self.out = out;
                if let Some(log) = self.log.as_deref_mut() {
                    log.bytes_out += n as u64;
                }
                Ok(())
            }
            _ => Err(Abort::ClientGone),
        }
    }

    /// Writes `buf[..end]` to the client and gives the buffer back.
    pub(crate) async fn write_prefix(
        &mut self,
        worker: &Worker,
        buf: Vec<u8>,
        end: usize,
        timeout: Duration,
    ) -> Result<Vec<u8>, Abort> {
        match crate::watch::within(worker, self.stream.write_all(buf.slice(..end)), timeout).await {
            Some((Ok(n), slice)) => {
                if let Some(log) = self.log.as_deref_mut() {
                    log.bytes_out += n as u64;
                    log.body_sent();
                }
                Ok(slice.into_inner())
            }
            _ => Err(Abort::ClientGone),
        }
    }

    /// Sends a proxy-generated error response; false when the client is gone.
    pub(crate) async fn respond_error(
        &mut self,
        worker: &Worker,
        kind: ErrorKind,
        close: bool,
        request_id: &mut RequestId,
    ) -> bool {
        let response = Generated {
            status_line: kind.status_line(),
            extra_headers: kind.extra_headers(),
            body: kind.body(),
        };
        if let Some(log) = self.log.as_deref_mut() {
            log.reason = Some(kind.code());
        }
        self.respond(worker, response, close, request_id).await
    }

    /// Sends a response the proxy made (JSON); false when the client is gone.
    pub(crate) async fn respond(
        &mut self,
        worker: &Worker,
        response: Generated<'_>,
        close: bool,
        request_id: &mut RequestId,
    ) -> bool {
        if request_id.is_empty() {
            request_id.generate();
        }
        self.out.clear();
        self.out.extend_from_slice(response.status_line);
        // A 204 (a CORS preflight's answer) has no body to describe.
        if status_of(response.status_line) != 204 {
            self.out
                .extend_from_slice(b"Content-Type: application/json\r\nContent-Length: ");
            self.out
                .extend_from_slice(itoa::Buffer::new().format(response.body.len()).as_bytes());
            self.out.extend_from_slice(b"\r\n");
        }
        self.out.extend_from_slice(response.extra_headers);
        self.out.extend_from_slice(&self.cors);
        self.out.extend_from_slice(b"X-Request-Id: ");
        self.out.extend_from_slice(request_id.as_bytes());
        self.out.extend_from_slice(if close {
            b"\r\nConnection: close\r\n\r\n"
        } else {
            b"\r\n\r\n"
        });
        self.out.extend_from_slice(response.body);
        if let Some(log) = self.log.as_deref_mut() {
            log.status = status_of(response.status_line);
            log.head_sent();
            log.body_sent();
        }
        self.write_out(worker, ERROR_WRITE_TIMEOUT).await.is_ok()
    }

    /// Closes after an error without resetting the connection: stop sending,
    /// then read and discard what the client still sends, briefly.
    pub(crate) async fn linger_close(&mut self) {
        self.stream.shutdown_write().await;
        let deadline = Instant::now() + LINGER;
        let mut discarded = 0;
        while discarded < LINGER_BYTES {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            self.buf.clear();
            self.pos = 0;
            match monoio::time::timeout(left, self.fill(BODY_BUFFER)).await {
                Ok(Ok(n)) if n > 0 => discarded += n,
                _ => break,
            }
        }
    }
}

/// The status code of a status line (`HTTP/1.1 404 Not Found\r\n`).
fn status_of(line: &[u8]) -> u16 {
    line.get(9..12)
        .and_then(|code| std::str::from_utf8(code).ok())
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}
