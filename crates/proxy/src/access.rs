//! The access log: one line per request (nginx `access_log`, HAProxy
//! `option httplog`), kept off the data plane.
//!
//! ```text
//!  worker (per request)            worker (every sweep)        logger thread
//!  ────────────────────            ────────────────────        ─────────────
//!  Record filled as the    ──▶     its buffer of lines   ──▶   write(2) to the file
//!  request goes; one line          handed over whole            (reopened after SIGUSR1)
//!  appended to the worker's        (try_send: a full queue
//!  buffer when it ends             drops the lines, counted)
//! ```
//!
//! A request only formats its line into its worker's buffer: no lock, no
//! system call, and no allocation once the buffer has grown. The worker
//! hands the buffer over at each sweep (100 ms) or when it passes
//! [`FLUSH_AT`], with a `try_send`: when the logger is behind (a stalled
//! disk) the lines are dropped and counted
//! (`inferlb_worker_access_log_dropped_lines`), never waited for.

use std::cell::{Cell, RefCell};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crossbeam::channel::{self, Receiver, RecvTimeoutError, Sender, TrySendError};
use inferlb_core::config::{AccessLog, AccessLogFormat};
use inferlb_core::WorkerStats;

/// A worker hands its buffer over once it holds this much.
const FLUSH_AT: usize = 64 * 1024;
/// Buffers in flight to the logger; more are dropped.
const QUEUE: usize = 64;

/// What one request did, filled in as it goes. Each handler keeps one and
/// lends it to the connection it serves, so its buffers are reused.
#[derive(Debug, Default)]
pub(crate) struct Record {
    started: Option<Instant>,
    wall: Option<SystemTime>,
    /// `METHOD target`, from the request line.
    request: Vec<u8>,
    /// The final status: the replica's, or the proxy's own answer.
    pub(crate) status: u16,
    /// Why the proxy answered itself (its error code), if it did.
    pub(crate) reason: Option<&'static str>,
    model: Vec<u8>,
    pub(crate) replica: Option<SocketAddr>,
    pub(crate) bytes_in: u64,
    pub(crate) bytes_out: u64,
    head: Option<Duration>,
    first_byte: Option<Duration>,
    /// Replicas tried (connects and sends): retries are this less one.
    pub(crate) attempts: u32,
    pub(crate) hold: Duration,
    /// The response streams (chunked, or until close): its timing counts
    /// as time to first token and inter-token gaps.
    pub(crate) streamed: bool,
    /// Gaps between body writes to the client, in microseconds.
    pub(crate) gaps: Vec<u32>,
    last_body: Option<Instant>,
    /// The request came as an HTTP/2 stream.
    pub(crate) h2: bool,
    /// The TLS version and cipher suite, over TLS.
    pub(crate) tls: Option<(&'static str, &'static str)>,
}

impl Record {
    /// Starts a request: everything else is forgotten.
    pub(crate) fn begin(&mut self) {
        self.started = Some(Instant::now());
        self.wall = Some(SystemTime::now());
        self.request.clear();
        self.status = 0;
        self.reason = None;
        self.model.clear();
        self.replica = None;
        self.bytes_in = 0;
        self.bytes_out = 0;
        self.head = None;
        self.first_byte = None;
        self.attempts = 0;
        self.hold = Duration::ZERO;
        self.streamed = false;
        self.gaps.clear();
        self.last_body = None;
        self.h2 = false;
        self.tls = None;
    }

    /// Keeps the request line's method and target.
    pub(crate) fn request_line(&mut self, head: &[u8]) {
        let line = head
            .split(|&b| b == b'\r' || b == b'\n')
            .next()
            .unwrap_or(b"");
        // Method and target, not the version.
        let end = line
            .iter()
            .rposition(|&b| b == b' ')
            .filter(|&i| i > 0)
            .unwrap_or(line.len());
        self.request.clear();
        self.request.extend_from_slice(&line[..end.min(4096)]);
    }

    /// Keeps a method and target given apart (an HTTP/2 request's).
    pub(crate) fn request_target(&mut self, method: &[u8], target: &[u8]) {
        self.request.clear();
        self.request.extend_from_slice(method);
        self.request.push(b' ');
        self.request
            .extend_from_slice(&target[..target.len().min(4096 - method.len() - 1)]);
    }

    /// The model the request was routed by.
    pub(crate) fn model(&mut self, model: &str) {
        self.model.clear();
        self.model.extend_from_slice(model.as_bytes());
    }

    /// The response head went to the client now.
    pub(crate) fn head_sent(&mut self) {
        if self.head.is_none() {
            self.head = self.started.map(|s| s.elapsed());
        }
    }

    /// A body byte went to the client now.
    pub(crate) fn body_sent(&mut self) {
        let now = Instant::now();
        if self.first_byte.is_none() {
            self.first_byte = self.started.map(|s| now.duration_since(s));
        }
        if let Some(last) = self.last_body.replace(now) {
            if self.streamed {
                let gap = now.duration_since(last).as_micros();
                self.gaps.push(u32::try_from(gap).unwrap_or(u32::MAX));
            }
        }
    }

    /// Time from the request to the first body byte.
    pub(crate) fn first_byte(&self) -> Option<Duration> {
        self.first_byte
    }

    /// Whether a request is being recorded.
    pub(crate) fn is_open(&self) -> bool {
        self.started.is_some()
    }

    /// No request line was read (the head never came, or was refused).
    pub(crate) fn request_is_empty(&self) -> bool {
        self.request.is_empty()
    }

    /// The protocol the client spoke.
    fn protocol(&self) -> &'static str {
        if self.h2 {
            "HTTP/2.0"
        } else {
            "HTTP/1.1"
        }
    }

    /// The model, as text.
    pub(crate) fn model_str(&self) -> &str {
        std::str::from_utf8(&self.model).unwrap_or("")
    }
}

/// A worker's side of the access log.
pub(crate) struct WorkerLog {
    tx: Sender<Vec<u8>>,
    buf: RefCell<Vec<u8>>,
    lines: Cell<u64>,
    format: AccessLogFormat,
    stats: Arc<WorkerStats>,
    /// The last second formatted (`2026-12-03T18:40:12`), reused by every
    /// line of that second.
    second: RefCell<(u64, Vec<u8>)>,
}

impl WorkerLog {
    /// Appends `record`'s line; hands the buffer over when it is full.
    pub(crate) fn write(&self, record: &Record, client: &[u8], request_id: &[u8], pool: &str) {
        let Some(started) = record.started else {
            return;
        };
        let mut buf = self.buf.borrow_mut();
        let took = started.elapsed();
        let wall = record.wall.unwrap_or_else(SystemTime::now);
        let (method, target) = split_request(&record.request);
        let retries = record.attempts.saturating_sub(1);
        let _ = match self.format {
            AccessLogFormat::Json => {
                buf.extend_from_slice(b"{\"time\":\"");
                self.time(&mut buf, wall);
                buf.extend_from_slice(b"\",\"client\":");
                json_str(&mut buf, client);
                buf.extend_from_slice(b",\"method\":");
                json_str(&mut buf, method);
                buf.extend_from_slice(b",\"path\":");
                json_str(&mut buf, target);
                buf.extend_from_slice(b",\"status\":");
                push_u64(&mut buf, u64::from(record.status));
                buf.extend_from_slice(b",\"pool\":");
                json_opt(&mut buf, pool.as_bytes());
                buf.extend_from_slice(b",\"model\":");
                json_opt(&mut buf, &record.model);
                buf.extend_from_slice(b",\"replica\":");
                match record.replica {
                    Some(addr) => {
                        buf.push(b'"');
                        push_addr(&mut buf, addr);
                        buf.push(b'"');
                    }
                    None => buf.extend_from_slice(b"null"),
                }
                buf.extend_from_slice(b",\"request_id\":");
                json_str(&mut buf, request_id);
                buf.extend_from_slice(b",\"bytes_in\":");
                push_u64(&mut buf, record.bytes_in);
                buf.extend_from_slice(b",\"bytes_out\":");
                push_u64(&mut buf, record.bytes_out);
                buf.extend_from_slice(b",\"request_time_ms\":");
                push_thousandths(&mut buf, took.as_micros());
                for (name, value) in [
                    (&b",\"head_time_ms\":"[..], record.head),
                    (b",\"first_byte_ms\":", record.first_byte),
                ] {
                    buf.extend_from_slice(name);
                    match value {
                        Some(d) => push_thousandths(&mut buf, d.as_micros()),
                        None => buf.extend_from_slice(b"null"),
                    }
                }
                buf.extend_from_slice(b",\"retries\":");
                push_u64(&mut buf, u64::from(retries));
                buf.extend_from_slice(b",\"hold_ms\":");
                push_thousandths(&mut buf, record.hold.as_micros());
                buf.extend_from_slice(b",\"reason\":");
                json_opt(&mut buf, record.reason.unwrap_or("").as_bytes());
                buf.extend_from_slice(b",\"protocol\":");
                json_str(&mut buf, record.protocol().as_bytes());
                let (version, cipher) = record.tls.unwrap_or(("", ""));
                buf.extend_from_slice(b",\"tls_version\":");
                json_opt(&mut buf, version.as_bytes());
                buf.extend_from_slice(b",\"tls_cipher\":");
                json_opt(&mut buf, cipher.as_bytes());
                buf.extend_from_slice(b"}\n");
                Ok::<(), io::Error>(())
            }
            AccessLogFormat::Text => {
                text_field(&mut buf, client);
                let _ = write!(buf, " - - [{}] \"", humantime::format_rfc3339_millis(wall));
                text_field(&mut buf, &record.request);
                buf.extend_from_slice(b"\" ");
                push_u64(&mut buf, u64::from(record.status));
                buf.push(b' ');
                push_u64(&mut buf, record.bytes_out);
                buf.extend_from_slice(b" rid=");
                text_field(&mut buf, request_id);
                buf.extend_from_slice(b" pool=");
                text_or_dash(&mut buf, pool.as_bytes());
                buf.extend_from_slice(b" model=");
                text_or_dash(&mut buf, &record.model);
                buf.extend_from_slice(b" replica=");
                match record.replica {
                    Some(addr) => push_addr(&mut buf, addr),
                    None => buf.push(b'-'),
                }
                buf.extend_from_slice(b" in=");
                push_u64(&mut buf, record.bytes_in);
                buf.extend_from_slice(b" rt=");
                push_thousandths(&mut buf, took.as_millis());
                buf.extend_from_slice(b" ht=");
                secs_or_dash(&mut buf, record.head);
                buf.extend_from_slice(b" fb=");
                secs_or_dash(&mut buf, record.first_byte);
                buf.extend_from_slice(b" retries=");
                push_u64(&mut buf, u64::from(retries));
                buf.extend_from_slice(b" hold=");
                push_thousandths(&mut buf, record.hold.as_millis());
                buf.extend_from_slice(b" reason=");
                buf.extend_from_slice(record.reason.unwrap_or("-").as_bytes());
                buf.extend_from_slice(b" proto=");
                buf.extend_from_slice(record.protocol().as_bytes());
                buf.extend_from_slice(b" tls=");
                match record.tls {
                    Some((version, cipher)) => {
                        buf.extend_from_slice(version.as_bytes());
                        buf.push(b'/');
                        buf.extend_from_slice(cipher.as_bytes());
                    }
                    None => buf.push(b'-'),
                }
                buf.push(b'\n');
                Ok(())
            }
        };
        self.lines.set(self.lines.get() + 1);
        if buf.len() >= FLUSH_AT {
            drop(buf);
            self.flush();
        }
    }

    /// Writes `wall` as RFC 3339 with milliseconds, formatting the date and
    /// time of day once per second.
    fn time(&self, buf: &mut Vec<u8>, wall: SystemTime) {
        let since = wall
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let (secs, millis) = (since.as_secs(), since.subsec_millis());
        let mut second = self.second.borrow_mut();
        if second.0 != secs {
            second.1.clear();
            let whole = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
            let _ = write!(second.1, "{}", humantime::format_rfc3339_seconds(whole));
            // `...:12Z`: the `Z` goes after the milliseconds.
            second.1.pop();
            second.0 = secs;
        }
        buf.extend_from_slice(&second.1);
        buf.extend_from_slice(&[
            b'.',
            b'0' + (millis / 100) as u8,
            b'0' + (millis / 10 % 10) as u8,
            b'0' + (millis % 10) as u8,
            b'Z',
        ]);
    }

    /// Hands the buffered lines to the logger, or drops them (counted)
    /// when it is behind.
    pub(crate) fn flush(&self) {
        let mut buf = self.buf.borrow_mut();
        if buf.is_empty() {
            return;
        }
        let lines = self.lines.replace(0);
        let batch = std::mem::replace(&mut *buf, Vec::with_capacity(FLUSH_AT + 4096));
        match self.tx.try_send(batch) {
            Ok(()) => {}
            Err(TrySendError::Full(mut batch) | TrySendError::Disconnected(mut batch)) => {
                self.stats.access_log_lines_dropped(lines);
                batch.clear();
                *buf = batch;
            }
        }
    }
}

fn secs_or_dash(buf: &mut Vec<u8>, d: Option<Duration>) {
    match d {
        Some(d) => push_thousandths(buf, d.as_millis()),
        None => buf.push(b'-'),
    }
}

/// An integer, without the formatting machinery (a line has a dozen).
fn push_u64(buf: &mut Vec<u8>, n: u64) {
    buf.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// `n` thousandths as a decimal with three places: microseconds as
/// milliseconds (`1234` → `1.234`), or milliseconds as seconds.
fn push_thousandths(buf: &mut Vec<u8>, n: u128) {
    let n = u64::try_from(n).unwrap_or(u64::MAX);
    push_u64(buf, n / 1000);
    let frac = n % 1000;
    buf.extend_from_slice(&[
        b'.',
        b'0' + (frac / 100) as u8,
        b'0' + (frac / 10 % 10) as u8,
        b'0' + (frac % 10) as u8,
    ]);
}

/// `ip:port` (`[ip]:port` for IPv6), an IPv4 address without `fmt`.
fn push_addr(buf: &mut Vec<u8>, addr: std::net::SocketAddr) {
    match addr {
        std::net::SocketAddr::V4(v4) => {
            for (i, octet) in v4.ip().octets().iter().enumerate() {
                if i > 0 {
                    buf.push(b'.');
                }
                push_u64(buf, u64::from(*octet));
            }
            buf.push(b':');
            push_u64(buf, u64::from(v4.port()));
        }
        std::net::SocketAddr::V6(_) => {
            let _ = write!(buf, "{addr}");
        }
    }
}

fn split_request(request: &[u8]) -> (&[u8], &[u8]) {
    match request.iter().position(|&b| b == b' ') {
        Some(i) => (&request[..i], &request[i + 1..]),
        None => (request, b""),
    }
}

/// A JSON string of arbitrary bytes (invalid UTF-8 replaced).
fn json_str(buf: &mut Vec<u8>, value: &[u8]) {
    // The common case, a path or model of plain ASCII, is copied as is.
    if value
        .iter()
        .all(|&b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
    {
        buf.push(b'"');
        buf.extend_from_slice(value);
        buf.push(b'"');
        return;
    }
    buf.push(b'"');
    for ch in String::from_utf8_lossy(value).chars() {
        match ch {
            '"' => buf.extend_from_slice(b"\\\""),
            '\\' => buf.extend_from_slice(b"\\\\"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(buf, "\\u{:04x}", c as u32);
            }
            c => {
                let mut utf8 = [0u8; 4];
                buf.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
            }
        }
    }
    buf.push(b'"');
}

/// A JSON string, or `null` when empty.
fn json_opt(buf: &mut Vec<u8>, value: &[u8]) {
    if value.is_empty() {
        buf.extend_from_slice(b"null");
    } else {
        json_str(buf, value);
    }
}

/// Bytes for a text line: printable ASCII as is, others (and `"`) escaped
/// as `\xNN`, so a line can never be split or forged.
fn text_field(buf: &mut Vec<u8>, value: &[u8]) {
    for &b in value {
        if b.is_ascii_graphic() && b != b'"' && b != b'\\' || b == b' ' {
            buf.push(b);
        } else {
            let _ = write!(buf, "\\x{b:02x}");
        }
    }
}

fn text_or_dash(buf: &mut Vec<u8>, value: &[u8]) {
    if value.is_empty() {
        buf.push(b'-');
    } else {
        text_field(buf, value);
    }
}

/// The logger thread, and how to reach it.
#[derive(Debug)]
pub(crate) struct Logger {
    thread: Option<JoinHandle<()>>,
    reopen: Arc<AtomicBool>,
}

impl Logger {
    /// Opens the log (failing at start-up, not at the first request) and
    /// starts the thread that writes it. Returns the sender for workers.
    pub(crate) fn start(settings: &AccessLog) -> io::Result<(Self, Sender<Vec<u8>>)> {
        let mut out = Output::open(settings.path.clone())?;
        let (tx, rx) = channel::bounded::<Vec<u8>>(QUEUE);
        let reopen = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&reopen);
        let thread = std::thread::Builder::new()
            .name("inferlb-access-log".into())
            .spawn(move || out.run(&rx, &flag))?;
        Ok((
            Self {
                thread: Some(thread),
                reopen,
            },
            tx,
        ))
    }

    /// Reopens the file before the next write (after logrotate moved it).
    pub(crate) fn reopen(&self) {
        self.reopen.store(true, Ordering::Relaxed);
    }

    /// Waits for the thread to write what it was given; it ends once every
    /// worker's sender is gone.
    pub(crate) fn join(&mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The log's destination.
struct Output {
    path: Option<PathBuf>,
    file: Option<File>,
}

impl Output {
    fn open(path: Option<PathBuf>) -> io::Result<Self> {
        let file = match &path {
            Some(p) => Some(append(p)?),
            None => None,
        };
        Ok(Self { path, file })
    }

    fn run(&mut self, rx: &Receiver<Vec<u8>>, reopen: &AtomicBool) {
        let mut failing_since: Option<Instant> = None;
        loop {
            let batch = match rx.recv_timeout(Duration::from_millis(500)) {
                Ok(batch) => Some(batch),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return,
            };
            if reopen.swap(false, Ordering::Relaxed) {
                if let Some(path) = &self.path {
                    match append(path) {
                        Ok(file) => {
                            self.file = Some(file);
                            tracing::info!(path = %path.display(), "access log reopened");
                        }
                        Err(e) => {
                            tracing::error!(path = %path.display(), error = %e, "cannot reopen the access log; writing on to the old file")
                        }
                    }
                }
            }
            let Some(batch) = batch else { continue };
            let written = match &mut self.file {
                Some(file) => file.write_all(&batch),
                None => io::stdout().lock().write_all(&batch),
            };
            match written {
                Ok(()) => failing_since = None,
                Err(e) => {
                    if failing_since.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                        tracing::error!(error = %e, "cannot write the access log; lines are lost");
                        failing_since = Some(Instant::now());
                    }
                }
            }
        }
    }
}

fn append(path: &PathBuf) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot open the access log {}: {e}", path.display()),
            )
        })
}

/// A worker's side of the log, given the logger's sender.
pub(crate) fn worker_log(
    tx: Sender<Vec<u8>>,
    format: AccessLogFormat,
    stats: Arc<WorkerStats>,
) -> WorkerLog {
    WorkerLog {
        tx,
        buf: RefCell::new(Vec::with_capacity(FLUSH_AT + 4096)),
        lines: Cell::new(0),
        format,
        stats,
        second: RefCell::new((u64::MAX, Vec::with_capacity(32))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Record {
        let mut r = Record::default();
        r.begin();
        r.request_line(b"POST /v1/chat/completions?x=\"1\" HTTP/1.1\r\nHost: h\r\n\r\n");
        r.status = 200;
        r.model("llama");
        r.replica = Some("10.0.0.5:8000".parse().unwrap());
        r.bytes_in = 120;
        r.bytes_out = 4096;
        r.attempts = 2;
        r.head_sent();
        r.body_sent();
        r
    }

    #[test]
    fn a_json_line_has_every_field_and_escapes_what_it_must() {
        let (tx, rx) = channel::bounded(4);
        let log = worker_log(tx, AccessLogFormat::Json, Arc::default());
        log.write(&record(), b"192.0.2.1", b"req-1", "llama");
        log.flush();
        let batch = rx.try_recv().unwrap();
        let line: serde_json::Value = serde_json::from_slice(&batch).unwrap();
        assert_eq!(line["method"], "POST");
        assert_eq!(line["path"], "/v1/chat/completions?x=\"1\"");
        assert_eq!(line["status"], 200);
        assert_eq!(line["pool"], "llama");
        assert_eq!(line["replica"], "10.0.0.5:8000");
        assert_eq!(line["retries"], 1);
        assert_eq!(line["reason"], serde_json::Value::Null);
        let time = line["time"].as_str().unwrap();
        assert!(humantime::parse_rfc3339(time).is_ok(), "{time}");
        assert_eq!(time.len(), "2026-12-03T18:40:12.345Z".len(), "{time}");
        for field in [
            "time",
            "client",
            "request_id",
            "bytes_in",
            "bytes_out",
            "request_time_ms",
            "head_time_ms",
            "first_byte_ms",
            "hold_ms",
        ] {
            assert!(!line[field].is_null(), "{field}");
        }
    }

    #[test]
    fn a_text_line_cannot_be_split_or_forged() {
        let (tx, rx) = channel::bounded(4);
        let log = worker_log(tx, AccessLogFormat::Text, Arc::default());
        let mut r = record();
        r.request_line(b"GET /a\"\x01b HTTP/1.1\r\n");
        log.write(&r, b"192.0.2.1", b"req-1", "");
        log.flush();
        let batch = rx.try_recv().unwrap();
        let text = String::from_utf8(batch).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.starts_with("192.0.2.1 - - ["), "{text}");
        assert!(text.contains("\"GET /a\\x22\\x01b\" 200 4096"), "{text}");
        assert!(
            text.contains(" pool=- model=llama replica=10.0.0.5:8000"),
            "{text}"
        );
    }

    #[test]
    fn numbers_are_written_without_fmt_as_fmt_would() {
        let mut buf = Vec::new();
        for (n, text) in [
            (0u128, "0.000"),
            (7, "0.007"),
            (1_234, "1.234"),
            (60_000_001, "60000.001"),
        ] {
            buf.clear();
            push_thousandths(&mut buf, n);
            assert_eq!(buf, text.as_bytes());
        }
        for addr in ["10.0.0.255:8000", "[::1]:9000", "127.0.0.1:0"] {
            buf.clear();
            let addr: std::net::SocketAddr = addr.parse().unwrap();
            push_addr(&mut buf, addr);
            assert_eq!(buf, addr.to_string().as_bytes());
        }
    }

    #[test]
    fn a_logger_that_is_behind_costs_dropped_lines_not_waiting() {
        let (tx, _rx) = channel::bounded(1);
        let stats = Arc::new(WorkerStats::default());
        let log = worker_log(tx, AccessLogFormat::Json, Arc::clone(&stats));
        for _ in 0..3 {
            log.write(&record(), b"192.0.2.1", b"r", "p");
            log.flush();
        }
        assert_eq!(stats.access_log_dropped(), 2, "the queue holds one batch");
    }
}
