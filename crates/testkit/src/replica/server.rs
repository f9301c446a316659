//! The fake replica's server: each connection's requests read (heads,
//! sized and chunked bodies) and answered as the builder said.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::*;

/// The builder's settings with the static parts of responses prepared once.
#[derive(Debug)]
pub(super) struct Spec {
    pub(super) name: String,
    pub(super) latency: Latency,
    pub(super) status: u16,
    pub(super) tokens: Option<(usize, Duration)>,
    pub(super) framing: Framing,
    pub(super) failure: Option<Failure>,
    pub(super) echo: bool,
    pub(super) completions: bool,
    pub(super) keep_alive: bool,
    pub(super) extra_headers: String,
    pub(super) json_body: Bytes,
    pub(super) idle_close: Option<Duration>,
    pub(super) lean: bool,
    /// The whole answer (head and body) when it never varies.
    pub(super) prepared: Option<Bytes>,
}

impl Spec {
    pub(super) fn from_builder(b: ReplicaBuilder) -> Self {
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

pub(super) async fn serve(
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
        let Some((head, body, body_len)) =
            read_request(&mut stream, &mut buf, spec, counters).await
        else {
            return;
        };
        let close = head.close || !spec.keep_alive;
        if let Some(answer) = &spec.prepared {
            if stream.write_all(answer).await.is_err() || close {
                return;
            }
            continue;
        }
        let ok = answer(
            &mut stream,
            &mut buf,
            spec,
            counters,
            &head,
            body,
            body_len,
            close,
        )
        .await;
        if !ok || close {
            return;
        }
    }
}

/// Reads one request: its head (400 and `None` for a bad one), then its
/// body, sized or chunked. `None` when the connection ends.
async fn read_request(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    spec: &Spec,
    counters: &Counters,
) -> Option<(Head, BytesMut, usize)> {
    let (head, head_len) = loop {
        if !buf.is_empty() {
            match parse_head(buf, !spec.lean) {
                Some(Ok(parsed)) => break parsed,
                Some(Err(())) => {
                    let _ = stream
                        .write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                        .await;
                    return None;
                }
                None => {}
            }
        }
        let filled = match spec.idle_close {
            Some(after) if buf.is_empty() => {
                match tokio::time::timeout(after, fill(stream, buf)).await {
                    Ok(filled) => filled,
                    Err(_) => return None,
                }
            }
            _ => fill(stream, buf).await,
        };
        match filled {
            Ok(true) => {}
            _ => return None,
        }
    };
    let _ = buf.split_to(head_len);
    counters.requests.fetch_add(1, Ordering::SeqCst);
    let keep_body = spec.echo || spec.completions;
    let body = if head.chunked {
        read_chunked(stream, buf, keep_body).await
    } else {
        read_sized(stream, buf, head.content_length, keep_body).await
    };
    let Ok((body_len, body)) = body else {
        return None;
    };
    counters
        .body_bytes
        .fetch_add(body_len as u64, Ordering::Relaxed);
    Some((head, body, body_len))
}

/// Answers one request as the builder (or the request's `x-testkit-*`
/// headers) says: after its latency, a body or a token stream. False when
/// the connection must end.
#[allow(clippy::too_many_arguments)]
async fn answer(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    spec: &Spec,
    counters: &Counters,
    head: &Head,
    body: BytesMut,
    body_len: usize,
    close: bool,
) -> bool {
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
        let _ = sleep_unless_closed(stream, buf, Duration::from_secs(3600)).await;
        return false;
    }
    if spec.failure == Some(Failure::CloseOnRequest) {
        return false;
    }
    if !sleep_unless_closed(stream, buf, latency.sample()).await {
        counters.cancellations.fetch_add(1, Ordering::SeqCst);
        return false;
    }
    let ok = if wants_stream {
        let (count, interval) = spec.tokens.unwrap_or((16, Duration::from_millis(50)));
        stream_tokens(stream, buf, spec, status, count, interval, close, counters).await
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
        send_body(stream, spec, status, content_type, &body, close, is_head).await
    };
    ok
}

pub(super) fn head_bytes(
    spec: &Spec,
    status: u16,
    content_type: &str,
    framing: &str,
    close: bool,
) -> Vec<u8> {
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
