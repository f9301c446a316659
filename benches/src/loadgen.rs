//! The load generator: many keep-alive HTTP/1.1 connections on monoio, one
//! runtime per thread.
//!
//! Closed loop: each connection sends its next request as soon as the last
//! response is complete. Open loop: requests are due on a fixed schedule
//! and latency is measured from the time a request was *due*, not sent, so
//! a stall that delays sending shows in the percentiles instead of hiding
//! (coordinated omission).

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use serde::Serialize;

/// How requests are paced.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pace {
    /// As fast as each connection can go.
    Closed,
    /// This many requests per second over all connections.
    Open { rate: f64 },
}

/// What to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Whole responses: latency from send (or due time) to the last byte.
    Requests,
    /// SSE streams: time to first event and gaps between events.
    Stream,
}

/// One load run.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// Where connections go (spread round robin over the list).
    pub targets: Vec<SocketAddr>,
    /// Concurrent connections.
    pub connections: usize,
    /// Generator threads.
    pub threads: usize,
    /// Pacing.
    pub pace: Pace,
    /// What to measure.
    pub mode: Mode,
    /// How long to send.
    pub duration: Duration,
    /// The raw request bytes, sent as they are.
    pub request: Vec<u8>,
    /// Progress counter shared with a progress bar.
    pub progress: Arc<AtomicU64>,
}

/// How long one response may take before it counts as an I/O error.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors by kind.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Errors {
    pub connect: u64,
    pub io: u64,
    pub status: u64,
    pub protocol: u64,
}

impl Errors {
    pub fn total(&self) -> u64 {
        self.connect + self.io + self.status + self.protocol
    }
    fn add(&mut self, o: &Errors) {
        self.connect += o.connect;
        self.io += o.io;
        self.status += o.status;
        self.protocol += o.protocol;
    }
}

/// What a run measured.
#[derive(Debug, Clone)]
pub struct LoadResult {
    pub completed: u64,
    pub elapsed: Duration,
    pub errors: Errors,
    /// Request latency, µs (Requests mode).
    pub latency: Histogram<u64>,
    /// Time to first event, µs (Stream mode).
    pub first_event: Histogram<u64>,
    /// Gaps between events, µs (Stream mode).
    pub event_gap: Histogram<u64>,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

impl LoadResult {
    fn empty() -> Self {
        Self {
            completed: 0,
            elapsed: Duration::ZERO,
            errors: Errors::default(),
            latency: histogram(),
            first_event: histogram(),
            event_gap: histogram(),
        }
    }

    fn merge(&mut self, o: &LoadResult) {
        self.completed += o.completed;
        self.elapsed = self.elapsed.max(o.elapsed);
        self.errors.add(&o.errors);
        let _ = self.latency.add(&o.latency);
        let _ = self.first_event.add(&o.first_event);
        let _ = self.event_gap.add(&o.event_gap);
    }

    /// Completed requests per second.
    pub fn throughput(&self) -> f64 {
        self.completed as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Percentiles in milliseconds.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Percentiles {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub count: u64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Self {
        let ms = |v: u64| v as f64 / 1000.0;
        Self {
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
            count: h.len(),
        }
    }
}

/// Runs a load on `spec.threads` threads and merges the results.
pub fn run(spec: &LoadSpec) -> LoadResult {
    let threads: Vec<_> = (0..spec.threads.max(1))
        .map(|t| {
            let spec = spec.clone();
            std::thread::spawn(move || thread_main(t, &spec))
        })
        .collect();
    let mut total = LoadResult::empty();
    for t in threads {
        if let Ok(r) = t.join() {
            total.merge(&r);
        }
    }
    total
}

fn thread_main(index: usize, spec: &LoadSpec) -> LoadResult {
    let mut runtime = match monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .with_entries(4096)
        .build()
    {
        Ok(rt) => rt,
        Err(_) => return LoadResult::empty(),
    };
    runtime.block_on(async move {
        let threads = spec.threads.max(1);
        let mine: Vec<usize> = (0..spec.connections)
            .filter(|c| c % threads == index)
            .collect();
        let result = Rc::new(RefCell::new(LoadResult::empty()));
        let start = Instant::now();
        let deadline = start + spec.duration;
        let mut tasks = Vec::with_capacity(mine.len());
        for c in mine {
            let spec = spec.clone();
            let result = Rc::clone(&result);
            tasks.push(monoio::spawn(async move {
                connection(c, &spec, start, deadline, &result).await;
            }));
        }
        for t in tasks {
            t.await;
        }
        let mut r = result.borrow().clone();
        // Responses still in flight at the deadline may finish a little
        // later; a straggler must not stretch the measured time without bound.
        r.elapsed = start.elapsed().min(spec.duration + Duration::from_secs(1));
        r
    })
}

/// Reads one response; returns its status and, in stream mode, event times.
struct Reader {
    buf: Vec<u8>,
}

enum ReadError {
    Io,
    Protocol,
}

impl Reader {
    async fn fill(&mut self, stream: &mut TcpStream) -> Result<(), ReadError> {
        if self.buf.capacity() - self.buf.len() < 4096 {
            self.buf.reserve(16 * 1024);
        }
        let buf = std::mem::take(&mut self.buf);
        let (len, cap) = (buf.len(), buf.capacity());
        let (res, slice) = stream
            .read(monoio::buf::IoBufMut::slice_mut(buf, len..cap))
            .await;
        self.buf = slice.into_inner();
        match res {
            Ok(0) | Err(_) => Err(ReadError::Io),
            Ok(_) => Ok(()),
        }
    }

    /// Reads a response; `on_event` is called at each `\n\n` of the body.
    async fn response(
        &mut self,
        stream: &mut TcpStream,
        mut on_event: impl FnMut(),
    ) -> Result<u16, ReadError> {
        let (status, head_len, length, chunked) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut resp = httparse::Response::new(&mut headers);
            match resp.parse(&self.buf) {
                Ok(httparse::Status::Complete(n)) => {
                    let mut length = None;
                    let mut chunked = false;
                    for h in resp.headers.iter() {
                        if h.name.eq_ignore_ascii_case("content-length") {
                            length = std::str::from_utf8(h.value)
                                .ok()
                                .and_then(|v| v.trim().parse::<usize>().ok());
                        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                            chunked = h.value.eq_ignore_ascii_case(b"chunked");
                        }
                    }
                    let status = resp.code.unwrap_or(0);
                    if (100..200).contains(&status) {
                        self.buf.drain(..n);
                        continue;
                    }
                    break (status, n, length, chunked);
                }
                Ok(httparse::Status::Partial) => self.fill(stream).await?,
                Err(_) => return Err(ReadError::Protocol),
            }
        };
        self.buf.drain(..head_len);
        if chunked {
            // Walk chunks; count events as "\n\n" in the payload as it arrives.
            let mut pos = 0;
            loop {
                let line_end = loop {
                    if let Some(i) = self.buf[pos..].windows(2).position(|w| w == b"\r\n") {
                        break pos + i;
                    }
                    self.fill(stream).await?;
                };
                let size_text = std::str::from_utf8(&self.buf[pos..line_end])
                    .map_err(|_| ReadError::Protocol)?;
                let size =
                    usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                        .map_err(|_| ReadError::Protocol)?;
                pos = line_end + 2;
                if size == 0 {
                    while self.buf.len() < pos + 2 {
                        self.fill(stream).await?;
                    }
                    self.buf.drain(..pos + 2);
                    return Ok(status);
                }
                while self.buf.len() < pos + size + 2 {
                    self.fill(stream).await?;
                }
                let events = self.buf[pos..pos + size]
                    .windows(2)
                    .filter(|w| *w == b"\n\n")
                    .count();
                for _ in 0..events {
                    on_event();
                }
                pos += size + 2;
                self.buf.drain(..pos);
                pos = 0;
            }
        }
        let length = length.ok_or(ReadError::Protocol)?;
        while self.buf.len() < length {
            self.fill(stream).await?;
        }
        self.buf.drain(..length);
        Ok(status)
    }
}

async fn connect(target: SocketAddr) -> Option<TcpStream> {
    let stream = monoio::time::timeout(Duration::from_secs(5), TcpStream::connect_addr(target))
        .await
        .ok()?
        .ok()?;
    let _ = stream.set_nodelay(true);
    Some(stream)
}

async fn connection(
    index: usize,
    spec: &LoadSpec,
    start: Instant,
    deadline: Instant,
    result: &Rc<RefCell<LoadResult>>,
) {
    let target = spec.targets[index % spec.targets.len()];
    let mut stream = None;
    let mut reader = Reader {
        buf: Vec::with_capacity(16 * 1024),
    };
    let interval = match spec.pace {
        Pace::Closed => None,
        Pace::Open { rate } => Some(Duration::from_secs_f64(
            spec.connections as f64 / rate.max(1e-6),
        )),
    };
    // Spread the connections' schedules over one interval.
    let mut due = start
        + interval.map_or(Duration::ZERO, |i| {
            i.mul_f64(index as f64 / spec.connections as f64)
        });
    let mut request = spec.request.clone();
    loop {
        if interval.is_some() {
            let now = Instant::now();
            if due > now {
                monoio::time::sleep(due - now).await;
            }
        }
        if Instant::now() >= deadline {
            return;
        }
        if stream.is_none() {
            stream = connect(target).await;
            if stream.is_none() {
                result.borrow_mut().errors.connect += 1;
                monoio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
            reader.buf.clear();
        }
        let Some(s) = stream.as_mut() else { continue };
        let sent_at = if interval.is_some() {
            due
        } else {
            Instant::now()
        };
        let (res, back) = s.write_all(request).await;
        request = back;
        if res.is_err() {
            result.borrow_mut().errors.io += 1;
            stream = None;
            continue;
        }
        let mut first: Option<Instant> = None;
        let mut last: Option<Instant> = None;
        let mut gaps: Vec<u64> = Vec::new();
        let reading = reader.response(s, || {
            let now = Instant::now();
            if first.is_none() {
                first = Some(now);
            }
            if let Some(prev) = last {
                gaps.push(now.duration_since(prev).as_micros() as u64);
            }
            last = Some(now);
        });
        // A response that never comes is an error, not a hang.
        let outcome = match monoio::time::timeout(RESPONSE_TIMEOUT, reading).await {
            Ok(outcome) => outcome,
            Err(_) => Err(ReadError::Io),
        };
        let done = Instant::now();
        let mut r = result.borrow_mut();
        match outcome {
            Ok(status) if (200..400).contains(&status) => {
                r.completed += 1;
                spec.progress.fetch_add(1, Ordering::Relaxed);
                let _ = r
                    .latency
                    .record(done.duration_since(sent_at).as_micros().max(1) as u64);
                if spec.mode == Mode::Stream {
                    if let Some(f) = first {
                        let _ = r
                            .first_event
                            .record(f.duration_since(sent_at).as_micros().max(1) as u64);
                    }
                    for g in gaps {
                        let _ = r.event_gap.record(g.max(1));
                    }
                }
            }
            Ok(_) => r.errors.status += 1,
            Err(ReadError::Io) => {
                r.errors.io += 1;
                stream = None;
            }
            Err(ReadError::Protocol) => {
                r.errors.protocol += 1;
                stream = None;
            }
        }
        drop(r);
        if let Some(interval) = interval {
            due += interval;
        }
    }
}

/// How each idle connection is warmed up before it is left idle: one
/// request, written in two parts (separate TCP segments) when `split_at`
/// falls inside it, so that a proxy sees a head spanning two reads.
#[derive(Debug, Clone)]
pub struct Warmup {
    pub request: Vec<u8>,
    pub split_at: usize,
}

/// Connections warmed up at once: enough to be quick, few enough that the
/// proxy's per-request state is measured as what it is, transient.
const WARMUP_CONCURRENCY: usize = 32;

/// Opens `count` connections to `target`, sends one request on each and
/// keeps them open, idle, until the returned handle is dropped.
pub fn hold_idle(target: SocketAddr, count: usize, warmup: Warmup) -> IdleConnections {
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let opened = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&opened);
    let thread = std::thread::spawn(move || {
        let Ok(mut runtime) = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
            .enable_timer()
            .with_entries(4096)
            .build()
        else {
            return;
        };
        runtime.block_on(async move {
            let held = Rc::new(RefCell::new(Vec::with_capacity(count)));
            let stopped = Rc::new(std::cell::Cell::new(false));
            let warmup = Rc::new(warmup);
            let tasks: Vec<_> = (0..WARMUP_CONCURRENCY)
                .map(|task| {
                    let (held, stopped, warmup) =
                        (Rc::clone(&held), Rc::clone(&stopped), Rc::clone(&warmup));
                    let counter = Arc::clone(&counter);
                    let share =
                        count / WARMUP_CONCURRENCY + usize::from(task < count % WARMUP_CONCURRENCY);
                    monoio::spawn(async move {
                        let mut failures = 0;
                        for _ in 0..share {
                            // A peer at its connection limit stops answering;
                            // give up after a few misses rather than wait.
                            if failures >= 3 || stopped.get() {
                                break;
                            }
                            match warm(target, &warmup).await {
                                Some(s) => {
                                    counter.fetch_add(1, Ordering::Relaxed);
                                    held.borrow_mut().push(s);
                                }
                                None => failures += 1,
                            }
                        }
                    })
                })
                .collect();
            while let Err(std::sync::mpsc::TryRecvError::Empty) = stop_rx.try_recv() {
                monoio::time::sleep(Duration::from_millis(50)).await;
            }
            stopped.set(true);
            for task in tasks {
                task.await;
            }
            held.borrow_mut().clear();
        });
    });
    IdleConnections {
        stop: Some(stop_tx),
        thread: Some(thread),
        opened,
    }
}

/// Opens one connection and carries the warm-up request on it.
async fn warm(target: SocketAddr, warmup: &Warmup) -> Option<TcpStream> {
    let mut s = connect(target).await?;
    let split = warmup.split_at.min(warmup.request.len());
    let (first, second) = warmup.request.split_at(split);
    for (i, part) in [first, second].into_iter().enumerate() {
        if part.is_empty() {
            continue;
        }
        if i == 1 {
            // Long enough for the first part to leave as its own segment.
            monoio::time::sleep(Duration::from_millis(2)).await;
        }
        let (res, _) = s.write_all(part.to_vec()).await;
        res.ok()?;
    }
    let mut reader = Reader {
        buf: Vec::with_capacity(1024),
    };
    let answered =
        monoio::time::timeout(Duration::from_secs(5), reader.response(&mut s, || {})).await;
    matches!(answered, Ok(Ok(_))).then_some(s)
}

/// Idle connections held open; closed on drop.
#[derive(Debug)]
pub struct IdleConnections {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    opened: Arc<AtomicU64>,
}

impl IdleConnections {
    /// Connections opened and answered so far.
    pub fn opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }
}

impl Drop for IdleConnections {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
