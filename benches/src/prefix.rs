//! `cargo xtask bench prefix`: a shared-prefix workload (SGLang's
//! generated-shared-prefix benchmark: G long system prompts, each followed
//! by many distinct questions) offered open loop to a fleet of simulated
//! engines (`inferlb_testkit::fake_engine`) whose prefix caches hold only part
//! of all the prompts, once per routing rule.
//!
//! Each request is a streamed chat completion. Time to first token (TTFT)
//! is measured from the moment the request was *due*, so a proxy that
//! delays sending cannot hide it. After each run the engines report their
//! cache hit ratio and how many requests each served.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use inferlb_testkit::{EngineConfig, EngineHandle};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::loadgen::Percentiles;

/// `[prefix]` of a `kind = "prefix"` scenario.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrefixWorkload {
    /// System prompts (groups).
    pub groups: usize,
    /// Tokens per system prompt.
    pub prompt_tokens: usize,
    /// Tokens per question.
    pub question_tokens: usize,
    /// Output tokens per request.
    pub output_tokens: usize,
    /// Offered requests per second.
    pub rate: f64,
    /// Routing rules of inferlb compared.
    pub routings: Vec<String>,
    /// The engines' cost model.
    pub prefill_us_per_token: f64,
    pub decode_ms_per_token: f64,
    pub max_running: usize,
    pub max_waiting: usize,
    pub cache_tokens: usize,
}

impl PrefixWorkload {
    /// The engine every replica runs.
    pub fn engine(&self, name: &str) -> EngineConfig {
        EngineConfig {
            models: vec!["bench-model".into()],
            name: name.into(),
            prefill_us_per_token: self.prefill_us_per_token,
            decode_ms_per_token: self.decode_ms_per_token,
            max_running: self.max_running,
            max_waiting: self.max_waiting,
            cache_tokens: self.cache_tokens,
            default_max_tokens: self.output_tokens,
            start_delay: Duration::ZERO,
            ..EngineConfig::default()
        }
    }

    /// The request bodies: `groups` system prompts, question `i` of group
    /// `g` unique. The same sequence for every rule (a fixed seed).
    pub fn bodies(&self, count: usize) -> Vec<String> {
        let bytes = |tokens: usize| tokens * inferlb_testkit::fake_engine::BYTES_PER_TOKEN;
        let systems: Vec<String> = (0..self.groups)
            .map(|g| {
                let mut rng = fastrand::Rng::with_seed(g as u64 + 1);
                (0..bytes(self.prompt_tokens))
                    .map(|_| char::from(b'a' + rng.u8(..26)))
                    .collect()
            })
            .collect();
        let mut rng = fastrand::Rng::with_seed(42);
        (0..count)
            .map(|i| {
                let g = rng.usize(..self.groups);
                let question =
                    format!("question {i}: ") + &"why ".repeat(bytes(self.question_tokens) / 4);
                serde_json::json!({
                    "model": "bench-model",
                    "stream": true,
                    "max_tokens": self.output_tokens,
                    "messages": [
                        {"role": "system", "content": systems[g]},
                        {"role": "user", "content": question},
                    ],
                })
                .to_string()
            })
            .collect()
    }
}

/// What one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct PrefixResult {
    /// `prefix`, `round_robin`, ... or `nginx` / `haproxy`.
    pub rule: String,
    pub peer: String,
    pub offered_rps: f64,
    /// Streams completed within the run, per second.
    pub throughput_rps: f64,
    pub ttft: Percentiles,
    pub completed: u64,
    /// Non-200 answers (429 from a full engine queue, 5xx) and I/O errors.
    pub errors: u64,
    /// Prompt tokens found in the engines' prefix caches.
    pub cache_hit_ratio: f64,
    /// The busiest replica's requests over the mean.
    pub busiest_share: f64,
}

/// Starts `n` engines for one run.
pub fn start_engines(w: &PrefixWorkload, n: usize) -> Result<Vec<EngineHandle>> {
    (0..n)
        .map(|i| {
            inferlb_testkit::fake_engine::start(
                w.engine(&format!("engine-{i}")),
                SocketAddr::from(([127, 0, 0, 1], 0)),
            )
            .context("cannot start a simulated engine")
        })
        .collect()
}

/// Offers `bodies` at `w.rate` to `target` for `duration` and measures; the
/// engines' counters give the cache hit ratio and the busiest share.
pub fn run(
    rule: &str,
    peer: &str,
    target: SocketAddr,
    w: &PrefixWorkload,
    bodies: &[String],
    duration: Duration,
    engines: &[EngineHandle],
) -> PrefixResult {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let ttft = Arc::new(Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("valid bounds"),
    ));
    let completed = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let pool: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
    let requests: Vec<Arc<Vec<u8>>> = bodies
        .iter()
        .map(|b| {
            Arc::new(
                format!(
                    "POST /v1/chat/completions HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}",
                    b.len()
                )
                .into_bytes(),
            )
        })
        .collect();
    let start = Instant::now();
    let deadline = start + duration;
    runtime.block_on(async {
        let interval = Duration::from_secs_f64(1.0 / w.rate);
        let mut tasks = Vec::new();
        for (i, request) in requests.iter().cycle().enumerate() {
            let due = start + interval * i as u32;
            if due >= deadline {
                break;
            }
            tokio::time::sleep_until(due.into()).await;
            let (request, pool) = (Arc::clone(request), Arc::clone(&pool));
            let (ttft, completed, errors) = (
                Arc::clone(&ttft),
                Arc::clone(&completed),
                Arc::clone(&errors),
            );
            tasks.push(tokio::spawn(async move {
                let left =
                    deadline.saturating_duration_since(Instant::now()) + Duration::from_secs(5);
                match tokio::time::timeout(left, stream(target, &request, &pool, due)).await {
                    Ok(Some(first)) => {
                        if Instant::now() <= deadline {
                            completed.fetch_add(1, Ordering::Relaxed);
                        }
                        let us = first.as_micros().max(1) as u64;
                        let _ = ttft.lock().map(|mut h| h.record(us));
                    }
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    });
    let ttft = ttft.lock().map(|h| Percentiles::of(&h)).unwrap_or_default();
    let prompt: u64 = engines
        .iter()
        .map(|e| e.stats().prompt_tokens.load(Ordering::Relaxed))
        .sum();
    let cached: u64 = engines
        .iter()
        .map(|e| e.stats().cached_tokens.load(Ordering::Relaxed))
        .sum();
    let served: Vec<u64> = engines
        .iter()
        .map(|e| e.stats().requests.load(Ordering::Relaxed))
        .collect();
    let mean = served.iter().sum::<u64>() as f64 / served.len().max(1) as f64;
    PrefixResult {
        rule: rule.into(),
        peer: peer.into(),
        offered_rps: w.rate,
        throughput_rps: completed.load(Ordering::Relaxed) as f64 / duration.as_secs_f64(),
        ttft,
        completed: completed.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
        cache_hit_ratio: cached as f64 / prompt.max(1) as f64,
        busiest_share: served.iter().copied().max().unwrap_or(0) as f64 / mean.max(1e-9),
    }
}

/// Sends one streamed request on a pooled connection and reads the stream
/// to its end; the time from `due` to the first event, or `None` on any
/// failure (a non-200 answer included).
async fn stream(
    target: SocketAddr,
    request: &[u8],
    pool: &Mutex<Vec<TcpStream>>,
    due: Instant,
) -> Option<Duration> {
    let pooled = pool.lock().ok().and_then(|mut p| p.pop());
    let mut conn = match pooled {
        Some(c) => c,
        None => {
            let c = TcpStream::connect(target).await.ok()?;
            let _ = c.set_nodelay(true);
            c
        }
    };
    conn.write_all(request).await.ok()?;
    let mut buf = Vec::with_capacity(16 * 1024);
    // The head.
    let (status, head_len, chunked, length, close) = loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        if let Ok(httparse::Status::Complete(len)) = resp.parse(&buf) {
            let value = |name: &str| {
                resp.headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case(name))
                    .map(|h| String::from_utf8_lossy(h.value).to_ascii_lowercase())
            };
            let chunked = value("transfer-encoding").is_some_and(|v| v.contains("chunked"));
            let length: Option<usize> = value("content-length").and_then(|v| v.trim().parse().ok());
            let close = value("connection").is_some_and(|v| v.contains("close"));
            break (resp.code?, len, chunked, length, close);
        }
        if conn.read_buf(&mut buf).await.ok()? == 0 {
            return None;
        }
    };
    buf.drain(..head_len);
    let mut first = None;
    let mut payload = Vec::new();
    let mut decoder = Dechunk::default();
    loop {
        if chunked {
            decoder.feed(&mut buf, &mut payload)?;
        } else {
            payload.append(&mut buf);
        }
        if first.is_none() && status == 200 && payload.windows(5).any(|w| w == b"data:") {
            first = Some(due.elapsed());
        }
        let done = if chunked {
            decoder.done
        } else {
            length.is_some_and(|n| payload.len() >= n)
        };
        if done {
            break;
        }
        if conn.read_buf(&mut buf).await.ok()? == 0 {
            return None;
        }
    }
    if !close {
        if let Ok(mut p) = pool.lock() {
            p.push(conn);
        }
    }
    if status != 200 || !payload.windows(6).any(|w| w == b"[DONE]") {
        return None;
    }
    first
}

/// A chunked-body decoder over a growing buffer.
#[derive(Debug, Default)]
struct Dechunk {
    /// Bytes left in the current chunk (plus its CRLF).
    left: usize,
    done: bool,
}

impl Dechunk {
    /// Moves whole payload bytes from `buf` to `out`; `None` on bad framing.
    fn feed(&mut self, buf: &mut Vec<u8>, out: &mut Vec<u8>) -> Option<()> {
        loop {
            if self.done {
                return Some(());
            }
            if self.left > 0 {
                let take = self.left.min(buf.len());
                // The last two bytes of a chunk are its CRLF.
                let payload = take.min(self.left.saturating_sub(2));
                out.extend_from_slice(&buf[..payload]);
                buf.drain(..take);
                self.left -= take;
                if self.left > 0 {
                    return Some(());
                }
            }
            let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
                return Some(());
            };
            let line = std::str::from_utf8(&buf[..end]).ok()?;
            let size = usize::from_str_radix(line.split(';').next()?.trim(), 16).ok()?;
            if size == 0 {
                // The last chunk: wait for the empty line that ends it.
                if buf.len() < end + 4 {
                    return Some(());
                }
                buf.drain(..end + 4);
                self.done = true;
                return Some(());
            }
            buf.drain(..end + 2);
            self.left = size + 2;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_split_anywhere_decode() {
        let wire = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
        for split in 0..wire.len() {
            let mut d = Dechunk::default();
            let mut out = Vec::new();
            let mut buf = wire[..split].to_vec();
            d.feed(&mut buf, &mut out).unwrap();
            buf.extend_from_slice(&wire[split..]);
            d.feed(&mut buf, &mut out).unwrap();
            assert!(d.done, "split at {split}");
            assert_eq!(out, b"hello world", "split at {split}");
        }
    }

    #[test]
    fn bodies_share_their_group_prompts() {
        let w = PrefixWorkload {
            groups: 4,
            prompt_tokens: 100,
            question_tokens: 8,
            output_tokens: 4,
            rate: 10.0,
            routings: vec![],
            prefill_us_per_token: 1.0,
            decode_ms_per_token: 1.0,
            max_running: 1,
            max_waiting: 1,
            cache_tokens: 100,
        };
        let bodies = w.bodies(40);
        let systems: std::collections::HashSet<String> = bodies
            .iter()
            .map(|b| {
                let v: serde_json::Value = serde_json::from_str(b).unwrap();
                v["messages"][0]["content"].as_str().unwrap().to_owned()
            })
            .collect();
        assert_eq!(systems.len(), 4);
        assert_eq!(w.bodies(40), bodies, "the same sequence every time");
    }
}
