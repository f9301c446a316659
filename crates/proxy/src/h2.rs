//! HTTP/2 from clients: over TLS (ALPN `h2`) and as h2c with prior
//! knowledge on plaintext listeners, decoded by the `h2` crate.
//!
//! Each stream is one request on the same path as HTTP/1.1: it is written
//! as an HTTP/1.1 request into a [`pipe::Pipe`] and served by a worker
//! handler like any connection's request (pools, the model from a header or
//! the body, every routing rule, retries, the hold queue, metrics, the
//! access log), then the handler's HTTP/1.1 response is turned back into
//! HTTP/2 frames. Replicas are reached over HTTP/1.1 keep-alive as before.
//!
//! ```text
//!  client ══h2══▶ connection task ─ stream task ┬ upload: DATA ─▶ pipe ─▶ handler ─▶ replica
//!                                                └ response: HEADERS/DATA ◀─ pipe ◀─ handler
//! ```
//!
//! Abuse is bounded before the codec: [`Meter`] reads the frame headers of
//! everything the client sends and ends the connection with GOAWAY
//! (`ENHANCE_YOUR_CALM`) when stream resets (rapid reset, CVE-2023-44487)
//! or control frames (SETTINGS, PING, WINDOW_UPDATE, PRIORITY floods) come
//! faster than `[http2]` allows. The codec itself bounds the header list
//! (HPACK bombs, CONTINUATION floods: CVE-2024-27316), concurrent streams,
//! and resets of streams not yet accepted.

mod pipe;

use std::cell::Cell;
use std::future::poll_fn;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::server::SendResponse;
use h2::{Reason, RecvStream, SendStream};
use inferlb_core::H2Abuse;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::client::Client;
use crate::h1::body::{Body, Framing};
use crate::io::ClientIo;
use crate::worker::Worker;

use pipe::Pipe;
pub(crate) use pipe::StreamIo;

/// The client connection preface (RFC 9113 §3.4).
pub(crate) const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Who the connection's client is, for every stream's request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Peer {
    pub(crate) ip: IpAddr,
    pub(crate) trusted: bool,
    pub(crate) https: bool,
    /// The TLS version and cipher suite, over TLS.
    pub(crate) tls: Option<(&'static str, &'static str)>,
}

/// Serves one HTTP/2 connection until it closes.
pub(crate) async fn serve<T>(worker: Rc<Worker>, io: T, peer: Peer)
where
    T: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let settings = worker.config.http2;
    let shared = Rc::new(Shared::default());
    let metered = Meter::new(io, &settings, Rc::clone(&shared));
    let mut builder = h2::server::Builder::new();
    builder
        .max_concurrent_streams(settings.max_concurrent_streams)
        .max_header_list_size(settings.max_header_list_size)
        .initial_window_size(settings.stream_window_bytes)
        .initial_connection_window_size(settings.connection_window_bytes)
        .max_send_buffer_size(64 * 1024)
        // Above the meter's limit, so that rapid reset is the meter's call
        // (and counted as such); the codec's limit is the backstop.
        .max_pending_accept_reset_streams(settings.max_resets_per_s.saturating_mul(4) as usize);
    if !worker.config.upgrades.is_empty() {
        // RFC 8441: WebSockets (and the other allowed protocols) over
        // HTTP/2 with the extended CONNECT method.
        builder.enable_connect_protocol();
    }
    let handshake = builder.handshake::<_, Bytes>(metered);
    let timeout = worker.config.timeouts.client_header;
    let mut conn = match monoio::time::timeout(timeout, handshake).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(error)) => {
            tracing::debug!(%error, "HTTP/2 handshake failed");
            return;
        }
        Err(_) => return,
    };
    let edge = &worker.front.edge();
    edge.h2_connections
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let keepalive = worker.config.timeouts.client_keepalive;
    // One row in the worker's idle table, always: its deadline is the
    // keep-alive timeout while no stream is open, and far away while one
    // is; a stopping worker wakes every row, so GOAWAY goes out at once.
    const BUSY: Duration = Duration::from_secs(365 * 24 * 3600);
    // The first request must come within the header timeout, as on
    // HTTP/1.1; later gaps get the keep-alive timeout.
    let mut row = worker
        .idle
        .register(worker.now() + worker.config.timeouts.client_header);
    let mut busy = false;
    let mut shutting = false;
    let mut meter_acted = false;
    let ended = poll_fn(|cx| {
        crate::handler::register(&shared.conn, cx.waker());
        if let Some(abuse) = shared.abuse.get() {
            edge.goaway(abuse);
            tracing::debug!(reason = abuse.label(), "HTTP/2 connection closed for abuse");
            conn.abrupt_shutdown(Reason::ENHANCE_YOUR_CALM);
            shared.abuse.set(None);
            shutting = true;
            meter_acted = true;
        }
        // Stopping: GOAWAY with the last stream id, and streams in flight
        // finish. Idle past the keep-alive timeout (or, before its first
        // request, past the header timeout): nothing to finish, so one
        // GOAWAY and close, without waiting on the client (a graceful
        // shutdown waits for a PING round trip a silent client never makes).
        if !shutting && worker.stopping.get() {
            conn.graceful_shutdown();
            shutting = true;
        }
        if !shutting && !busy && row.expired(cx.waker()) {
            conn.abrupt_shutdown(Reason::NO_ERROR);
            shutting = true;
        }
        loop {
            match conn.poll_accept(cx) {
                Poll::Ready(Some(Ok((request, respond)))) => {
                    if !busy {
                        row = worker.idle.register(worker.now() + BUSY);
                        let _ = row.expired(cx.waker());
                        busy = true;
                    }
                    shared.open.set(shared.open.get() + 1);
                    edge.h2_streams
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let worker = Rc::clone(&worker);
                    let shared = Rc::clone(&shared);
                    monoio::spawn(async move {
                        stream(&worker, &shared, request, respond, peer).await;
                        shared.open.set(shared.open.get() - 1);
                        crate::handler::wake(&shared.conn);
                    });
                }
                Poll::Ready(Some(Err(error))) => return Poll::Ready(Some(error)),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => break,
            }
        }
        if shared.open.get() == 0 && busy {
            row = worker.idle.register(worker.now() + keepalive);
            busy = false;
            if row.expired(cx.waker()) {
                cx.waker().wake_by_ref();
            }
        }
        Poll::Pending
    })
    .await;
    if let Some(error) = ended {
        // The codec's own GOAWAYs (a header list over the limit, a
        // CONTINUATION flood, HPACK errors, bad frames); those the meter
        // asked for were counted when it did.
        let failed = !matches!(error.reason(), None | Some(Reason::NO_ERROR));
        if !error.is_remote() && !error.is_io() && !meter_acted && failed {
            edge.goaway(H2Abuse::Protocol);
        }
        tracing::debug!(%error, "HTTP/2 connection ended");
    }
}

/// What a connection's streams share with it.
#[derive(Default)]
struct Shared {
    /// Streams being served.
    open: Cell<usize>,
    /// The connection task, woken when a stream ends or abuse is seen.
    conn: Cell<Option<Waker>>,
    /// Abuse the meter saw, for the connection task to act on.
    abuse: Cell<Option<H2Abuse>>,
    /// Request ids and access log records of finished streams, for the
    /// next ones (at most as many as streams ran at once).
    spare: std::cell::RefCell<Vec<(crate::h1::RequestId, Box<crate::access::Record>)>>,
}

/// Serves one stream: the upload, the handler and the response run
/// together until all three are done.
async fn stream(
    worker: &Rc<Worker>,
    shared: &Shared,
    request: http::Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    peer: Peer,
) {
    if crate::grpc::is_grpc(request.method(), request.headers()) {
        // Boxed: a call's state stays in one place while the stream's task
        // (sized for the bridge below) is moved.
        let spare = shared.spare.borrow_mut().pop();
        let (request_id, record) =
            spare.unwrap_or_else(|| (crate::h1::RequestId::new(), Box::default()));
        let (request_id, record) = Box::pin(crate::grpc::serve(
            worker, request, respond, peer, request_id, record,
        ))
        .await;
        shared.spare.borrow_mut().push((request_id, record));
        return;
    }
    let (parts, body) = request.into_parts();
    let mut head = Vec::with_capacity(512);
    let tunnel = tunnel_protocol(worker, &parts);
    let chunked = write_head(&parts, body.is_end_stream(), tunnel, &mut head);
    let pipe = Pipe::with_inbound(head);
    let is_head = parts.method == http::Method::HEAD;
    let mut client = Client::new(
        ClientIo::H2(StreamIo::new(Rc::clone(&pipe), peer.https)),
        peer.ip,
        peer.trusted,
    );
    client.accepted = None;
    client.tls = peer.tls;
    // The stream's own task serves its request (a connection's handler
    // hand-over buys nothing here): with a request id and an access log
    // record kept by the connection for its next streams.
    let (mut request_id, record) = shared
        .spare
        .borrow_mut()
        .pop()
        .unwrap_or_else(|| (crate::h1::RequestId::new(), Box::default()));
    client.log = Some(record);
    let handler = async {
        // Boxed: the request path's future is most of a stream's state,
        // and a spawned task's future is moved whole, more than once.
        let mut serving = Box::pin(crate::forward::serve_request(
            worker,
            &mut client,
            &mut request_id,
            false,
        ));
        let served = crate::handler::Isolated(serving.as_mut()).await;
        drop(serving);
        if served.is_err() {
            tracing::error!("a request handler panicked; its HTTP/2 stream was reset");
        }
        let record = client.log.take().unwrap_or_default();
        // The handler's end closes: the response ends.
        drop(client);
        shared.spare.borrow_mut().push((request_id, record));
    };
    monoio::join!(
        upload(body, &pipe, chunked),
        handler,
        response(&pipe, &mut respond, is_head, tunnel.is_some())
    );
}

/// The protocol of an extended CONNECT (RFC 8441) that `upgrades` allows:
/// the stream becomes an HTTP/1.1 upgrade toward the replica, and a tunnel
/// once the replica switches.
fn tunnel_protocol<'p>(worker: &Worker, parts: &'p http::request::Parts) -> Option<&'p str> {
    if parts.method != http::Method::CONNECT {
        return None;
    }
    let protocol = parts.extensions.get::<h2::ext::Protocol>()?.as_str();
    crate::h1::upgrade_allowed(&worker.config.upgrades, protocol.as_bytes()).then_some(protocol)
}

/// Writes the HTTP/1.1 head of an HTTP/2 request; returns whether its body
/// is sent chunked (an HTTP/2 body without `content-length`).
fn write_head(
    parts: &http::request::Parts,
    end_stream: bool,
    tunnel: Option<&str>,
    out: &mut Vec<u8>,
) -> bool {
    // An extended CONNECT is the HTTP/1.1 handshake's GET with its switch
    // (RFC 8441 §5); its DATA is the tunnel's bytes, never a body.
    let method = if tunnel.is_some() {
        "GET"
    } else {
        parts.method.as_str()
    };
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if let Some(authority) = parts.uri.authority() {
        push(out, b"host", authority.as_str().as_bytes());
    }
    let mut length = false;
    let mut cookies: Vec<&[u8]> = Vec::new();
    for (name, value) in &parts.headers {
        match name.as_str() {
            // :authority wins over a host field (RFC 9113 §8.3.1).
            "host" if parts.uri.authority().is_some() => {}
            // Connection-specific fields are malformed in HTTP/2 (the codec
            // refuses them); `te: trailers` means nothing to HTTP/1.1.
            "te" | "expect" => {}
            // Split cookies are joined again (RFC 9113 §8.2.3).
            "cookie" => cookies.push(value.as_bytes()),
            other => {
                length |= other == "content-length";
                push(out, other.as_bytes(), value.as_bytes());
            }
        }
    }
    if !cookies.is_empty() {
        out.extend_from_slice(b"cookie: ");
        out.extend_from_slice(&cookies.join(&b"; "[..]));
        out.extend_from_slice(b"\r\n");
    }
    if let Some(protocol) = tunnel {
        push(out, b"connection", b"upgrade");
        push(out, b"upgrade", protocol.as_bytes());
        if protocol.eq_ignore_ascii_case("websocket")
            && !parts.headers.contains_key("sec-websocket-key")
        {
            // HTTP/2 has no key (RFC 8441 §5); an HTTP/1.1 server wants one.
            push(out, b"sec-websocket-key", &websocket_key());
        }
        out.extend_from_slice(b"\r\n");
        return false;
    }
    let chunked = !length && !end_stream;
    if chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    } else if !length && body_expected(&parts.method) {
        out.extend_from_slice(b"content-length: 0\r\n");
    }
    out.extend_from_slice(b"\r\n");
    chunked
}

/// A fresh `Sec-WebSocket-Key`: 16 random bytes in base64 (RFC 6455 §4.1).
fn websocket_key() -> [u8; 24] {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let nonce = fastrand::u128(..).to_be_bytes();
    let mut key = [b'='; 24];
    for (i, group) in nonce.chunks(3).enumerate() {
        let bits = group
            .iter()
            .enumerate()
            .fold(0u32, |n, (j, &b)| n | u32::from(b) << (16 - 8 * j));
        for k in 0..=group.len() {
            key[i * 4 + k] = ALPHABET[(bits >> (18 - 6 * k) & 63) as usize];
        }
    }
    key
}

/// Methods whose requests usually carry a body, which HTTP/1.1 frames
/// with `Content-Length: 0` when the HTTP/2 request has none.
fn body_expected(method: &http::Method) -> bool {
    matches!(
        *method,
        http::Method::POST | http::Method::PUT | http::Method::PATCH
    )
}

fn push(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Moves the request body's DATA frames into the pipe, chunk-framed when
/// the request had no length, releasing flow-control window only as the
/// handler takes the bytes.
async fn upload(mut body: RecvStream, pipe: &Pipe, chunked: bool) {
    if !body.is_end_stream() {
        loop {
            if !pipe.upload_room().await {
                return;
            }
            match body.data().await {
                Some(Ok(data)) => {
                    let _ = body.flow_control().release_capacity(data.len());
                    if data.is_empty() {
                        continue;
                    }
                    if chunked {
                        let mut size = [0u8; 18];
                        let len = hex(data.len(), &mut size);
                        pipe.push_inbound(&size[..len]);
                        pipe.push_inbound(&data);
                        pipe.push_inbound(b"\r\n");
                    } else {
                        pipe.push_inbound(&data);
                    }
                }
                Some(Err(_)) => {
                    pipe.set_reset();
                    return;
                }
                None => break,
            }
        }
    }
    if chunked {
        pipe.push_inbound(b"0\r\n\r\n");
    }
    pipe.end_inbound();
}

/// `{len:x}\r\n` into `out`; returns its length.
fn hex(len: usize, out: &mut [u8; 18]) -> usize {
    use std::io::Write;
    let mut cursor = io::Cursor::new(&mut out[..]);
    let _ = write!(cursor, "{len:x}\r\n");
    cursor.position() as usize
}

/// Sends the handler's HTTP/1.1 response as HTTP/2: the head as HEADERS,
/// the body (de-chunked) as DATA frames within the client's window.
///
/// For a `tunnel` (an extended CONNECT), the replica's 101 is the client's
/// 200 and what follows it goes out as DATA until either side ends.
async fn response(pipe: &Pipe, respond: &mut SendResponse<Bytes>, is_head: bool, tunnel: bool) {
    let mut buf = Vec::with_capacity(4096);
    // The head, past any 1xx the handler relayed.
    let (head, framing) = loop {
        let more = poll_fn(|cx| {
            if respond.poll_reset(cx).is_ready() {
                return Poll::Ready(None);
            }
            pipe.poll_outbound(cx, &mut buf).map(Some)
        })
        .await;
        match more {
            None => return pipe.set_reset(),
            // The handler ended without a response: the client went away.
            Some(false) => {
                if !pipe.is_reset() {
                    respond.send_reset(Reason::INTERNAL_ERROR);
                }
                return;
            }
            Some(_) => {}
        }
        match parse_head(&buf, is_head) {
            Ok(None) => {}
            Ok(Some((len, mut head, _))) if tunnel && head.status() == 101 => {
                buf.drain(..len);
                *head.status_mut() = http::StatusCode::OK;
                head.headers_mut().remove("sec-websocket-accept");
                break (head, Framing::UntilClose);
            }
            Ok(Some((len, _, _))) if is_informational(&buf) => {
                buf.drain(..len);
            }
            Ok(Some((len, head, framing))) => {
                buf.drain(..len);
                break (head, framing);
            }
            Err(()) => {
                respond.send_reset(Reason::INTERNAL_ERROR);
                return;
            }
        }
    };
    let empty = matches!(framing, Framing::None | Framing::Length(0));
    let mut send = match respond.send_response(head, empty) {
        Ok(send) => send,
        Err(_) => return pipe.set_reset(),
    };
    if empty {
        return;
    }
    let mut body = Body::new(framing);
    let mut data = Vec::new();
    let mut input = buf;
    loop {
        data.clear();
        let taken = body.take(&input, |range| data.extend_from_slice(&input[range]));
        if taken.is_err() {
            send.send_reset(Reason::INTERNAL_ERROR);
            return;
        }
        input.clear();
        if !data.is_empty()
            && send_data(&mut send, Bytes::copy_from_slice(&data))
                .await
                .is_err()
        {
            return pipe.set_reset();
        }
        if body.is_done() {
            let _ = send.send_data(Bytes::new(), true);
            return;
        }
        let more = poll_fn(|cx| {
            if send.poll_reset(cx).is_ready() {
                return Poll::Ready(None);
            }
            pipe.poll_outbound(cx, &mut input).map(Some)
        })
        .await;
        match more {
            None => return pipe.set_reset(),
            Some(true) => {}
            // The handler is done: a body that ends at close ends here;
            // any other was cut short.
            Some(false) => {
                if body.ends_at_close() {
                    let _ = send.send_data(Bytes::new(), true);
                } else {
                    send.send_reset(Reason::INTERNAL_ERROR);
                }
                return;
            }
        }
    }
}

/// Sends `data` as the peer's window allows (the client's, or a gRPC
/// replica's).
pub(crate) async fn send_data(
    send: &mut SendStream<Bytes>,
    mut data: Bytes,
) -> Result<(), h2::Error> {
    while !data.is_empty() {
        send.reserve_capacity(data.len());
        let granted = match poll_fn(|cx| send.poll_capacity(cx)).await {
            Some(Ok(n)) => n,
            Some(Err(e)) => return Err(e),
            None => return Err(h2::Error::from(Reason::CANCEL)),
        };
        if granted == 0 {
            continue;
        }
        let piece = data.split_to(granted.min(data.len()));
        send.send_data(piece, false)?;
    }
    Ok(())
}

fn is_informational(buf: &[u8]) -> bool {
    buf.get(9) == Some(&b'1')
}

/// Parses the handler's response head into an HTTP/2 response; `Ok(None)`
/// while incomplete.
#[allow(clippy::type_complexity)]
fn parse_head(
    buf: &[u8],
    is_head: bool,
) -> Result<Option<(usize, http::Response<()>, Framing)>, ()> {
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut parsed = httparse::Response::new(&mut headers);
    let len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(()),
    };
    let status = parsed.code.ok_or(())?;
    let mut response = http::Response::new(());
    *response.status_mut() = http::StatusCode::from_u16(status).map_err(|_| ())?;
    let map = response.headers_mut();
    map.reserve(parsed.headers.len());
    let mut length = None;
    let mut chunked = false;
    for header in parsed.headers.iter() {
        // Known names are matched without allocating; the codec writes
        // every name in lowercase.
        let Ok(name) = http::HeaderName::from_bytes(header.name.as_bytes()) else {
            return Err(());
        };
        if name == http::header::TRANSFER_ENCODING {
            chunked = true;
            continue;
        }
        if name == http::header::CONNECTION
            || name == http::header::UPGRADE
            || name == http::header::TE
            || name.as_str() == "keep-alive"
            || name.as_str() == "proxy-connection"
        {
            continue;
        }
        if name == http::header::CONTENT_LENGTH {
            length = crate::h1::content_length(length, header.value);
        }
        let value = http::HeaderValue::from_bytes(header.value).map_err(|_| ())?;
        map.append(name, value);
    }
    let framing = if is_head || status == 204 || status == 304 || (100..200).contains(&status) {
        Framing::None
    } else if chunked {
        Framing::Chunked
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        Framing::UntilClose
    };
    Ok(Some((len, response, framing)))
}

/// Reads the frame headers of what the client sends, counting resets and
/// control frames per second; over a limit it records the abuse and wakes
/// the connection task, which sends GOAWAY.
struct Meter<T> {
    io: T,
    shared: Rc<Shared>,
    /// Preface bytes still to skip.
    preface: usize,
    /// A frame header being gathered, and how much of it is in.
    header: [u8; 9],
    have: usize,
    /// Payload bytes of the current frame still to skip.
    payload: usize,
    window_start: Instant,
    resets: u32,
    control: u32,
    max_resets: u32,
    max_control: u32,
    /// A limit was passed: nothing more is read.
    tripped: bool,
}

impl<T> Meter<T> {
    fn new(io: T, settings: &inferlb_core::config::Http2, shared: Rc<Shared>) -> Self {
        Self {
            io,
            shared,
            preface: PREFACE.len(),
            header: [0; 9],
            have: 0,
            payload: 0,
            window_start: Instant::now(),
            resets: 0,
            control: 0,
            max_resets: settings.max_resets_per_s,
            max_control: settings.max_control_frames_per_s,
            tripped: false,
        }
    }

    /// Walks the bytes just read; returns how many the codec may see: all,
    /// or those before the frame that went over a limit (the codec never
    /// sees the flood past it, and the connection closes).
    fn scan(&mut self, all: &[u8]) -> usize {
        let mut bytes = all;
        while !bytes.is_empty() {
            if self.tripped {
                return all.len() - bytes.len();
            }
            if self.preface > 0 {
                let n = self.preface.min(bytes.len());
                self.preface -= n;
                bytes = &bytes[n..];
            } else if self.payload > 0 {
                let n = self.payload.min(bytes.len());
                self.payload -= n;
                bytes = &bytes[n..];
            } else {
                let n = (9 - self.have).min(bytes.len());
                self.header[self.have..self.have + n].copy_from_slice(&bytes[..n]);
                self.have += n;
                bytes = &bytes[n..];
                if self.have == 9 {
                    self.have = 0;
                    let h = self.header;
                    self.payload =
                        usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
                    self.frame(h[3], h[4]);
                }
            }
        }
        if self.tripped {
            // The limit was passed on the last frame header: its payload
            // and whatever followed are not handed on.
            return all.len() - bytes.len();
        }
        all.len()
    }

    /// Counts one frame by type and flags.
    fn frame(&mut self, kind: u8, flags: u8) {
        const RST_STREAM: u8 = 0x3;
        const PRIORITY: u8 = 0x2;
        const SETTINGS: u8 = 0x4;
        const PING: u8 = 0x6;
        const WINDOW_UPDATE: u8 = 0x8;
        const ACK: u8 = 0x1;
        if self.window_start.elapsed() >= Duration::from_secs(1) {
            self.window_start = Instant::now();
            self.resets = 0;
            self.control = 0;
        }
        let abuse = match kind {
            RST_STREAM => {
                self.resets += 1;
                (self.resets > self.max_resets).then_some(H2Abuse::RapidReset)
            }
            SETTINGS | PING if flags & ACK == 0 => {
                self.control += 1;
                (self.control > self.max_control).then_some(H2Abuse::ControlFlood)
            }
            PRIORITY | WINDOW_UPDATE => {
                self.control += 1;
                (self.control > self.max_control).then_some(H2Abuse::ControlFlood)
            }
            _ => None,
        };
        if let Some(abuse) = abuse {
            self.tripped = true;
            if self.shared.abuse.get().is_none() {
                self.shared.abuse.set(Some(abuse));
                crate::handler::wake(&self.shared.conn);
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Meter<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.tripped {
            // The connection task sends GOAWAY and closes; the codec
            // waits for nothing more.
            return Poll::Pending;
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let seen = self.scan(&buf.filled()[before..]);
            buf.set_filled(before + seen);
            if seen == 0 && self.tripped {
                return Poll::Pending;
            }
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Meter<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_websocket_key_is_16_bytes_in_base64() {
        let key = super::websocket_key();
        assert!(key.ends_with(b"=="));
        assert!(key[..22]
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/'));
        // The last character holds 2 bits of the 16th byte, 4 zero bits.
        let last = b"AQgw";
        assert!(last.contains(&key[21]), "{}", String::from_utf8_lossy(&key));
        assert_ne!(super::websocket_key(), key);
    }
}
