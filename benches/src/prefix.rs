//! `cargo xtask bench prefix`: inference workloads offered to a fleet of
//! simulated engines (`inferlb_testkit::fake_engine`) whose prefix caches
//! hold only part of what they are asked, once per routing rule of inferlb
//! and per policy of the inference routers users pick instead (SGLang's
//! `smg`, `vllm-router`), each on fresh engines (cold caches).
//!
//! The workloads ([`Pattern`]): SGLang's generated shared prefix (G long
//! system prompts, each followed by many distinct questions), multi-turn
//! chat (each turn carries the whole conversation so far), Zipf-skewed
//! prompt popularity, a sequential variant (one request at a time over a
//! few prefixes: where cache-aware routers collapse onto one engine), and
//! unique prompts (nothing to share: what cache awareness costs).
//!
//! Each request is a streamed chat completion. Time to first token (TTFT)
//! and to the last one are measured from the moment the request was *due*,
//! so a router that delays sending cannot hide it. After each run the
//! engines report their cache hit ratio and how many requests each served.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use inferlb_testkit::{EngineConfig, EngineHandle};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::loadgen::Percentiles;

/// `[prefix]` of a `kind = "prefix"` scenario: the engines, what is
/// compared, and the workloads.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrefixScenario {
    /// Routing rules of inferlb compared.
    pub routings: Vec<String>,
    /// Inference routers compared, as `program:policy` (`smg:cache_aware`,
    /// `vllm-router:consistent_hash`).
    #[serde(default)]
    pub routers: Vec<String>,
    /// The engines' cost model.
    pub prefill_us_per_token: f64,
    pub decode_ms_per_token: f64,
    pub max_running: usize,
    pub max_waiting: usize,
    pub cache_tokens: usize,
    /// The workloads, each run with every rule and router.
    pub workloads: Vec<Workload>,
}

/// How a workload's prompts relate to each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pattern {
    /// `groups` system prompts, each picked uniformly, a distinct question
    /// after it.
    SharedPrefix,
    /// `groups` conversations of `turns` turns: each request carries the
    /// system prompt and every earlier question and answer.
    MultiTurn,
    /// `groups` system prompts picked with Zipf popularity (`zipf_s`).
    Zipf,
    /// Every prompt unique.
    Unique,
}

/// One workload of the prefix scenario.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    /// Its name in the report.
    pub name: String,
    pub pattern: Pattern,
    /// System prompts, or conversations.
    #[serde(default = "one")]
    pub groups: usize,
    /// Tokens per system prompt.
    pub prompt_tokens: usize,
    /// Tokens per question.
    pub question_tokens: usize,
    /// Output tokens per request.
    pub output_tokens: usize,
    /// Offered requests per second (open loop); or
    pub rate: Option<f64>,
    /// requests kept in flight (closed loop: 1 is one at a time).
    pub concurrency: Option<usize>,
    /// Turns per conversation (`multi_turn`).
    #[serde(default = "one")]
    pub turns: usize,
    /// Zipf exponent of prompt popularity (`zipf`).
    #[serde(default)]
    pub zipf_s: f64,
}

fn one() -> usize {
    1
}

impl PrefixScenario {
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
            start_delay: Duration::ZERO,
            ..EngineConfig::default()
        }
    }
}

/// `tokens` tokens of text no other seed gives.
fn text(seed: u64, tokens: usize) -> String {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..tokens * inferlb_testkit::fake_engine::BYTES_PER_TOKEN)
        .map(|_| char::from(b'a' + rng.u8(..26)))
        .collect()
}

/// The fake engine's answer of `tokens` tokens (what a client would send
/// back as the assistant's turn).
fn answer(tokens: usize) -> String {
    const WORDS: [&str; 8] = [
        "The ", "quick ", "model ", "answers ", "every ", "token ", "in ", "turn. ",
    ];
    (0..tokens).map(|i| WORDS[i % WORDS.len()]).collect()
}

impl Workload {
    /// Its parameters in one line, for the report.
    pub fn describe(&self) -> String {
        let load = match (self.rate, self.concurrency) {
            (Some(rate), _) => format!("{rate} req/s offered (open loop)"),
            (None, Some(n)) => format!("{n} in flight (closed loop)"),
            (None, None) => "no load".into(),
        };
        let shape = match self.pattern {
            Pattern::SharedPrefix => format!(
                "{} system prompts of {} tokens, each followed by distinct {}-token questions",
                self.groups, self.prompt_tokens, self.question_tokens
            ),
            Pattern::MultiTurn => format!(
                "{} conversations of {} turns, a {}-token system prompt, {}-token questions, each turn carrying the whole history",
                self.groups, self.turns, self.prompt_tokens, self.question_tokens
            ),
            Pattern::Zipf => format!(
                "{} system prompts of {} tokens with Zipf popularity (s = {}, the top prompt {:.0} % of requests), distinct {}-token questions",
                self.groups,
                self.prompt_tokens,
                self.zipf_s,
                self.zipf_weights().first().copied().unwrap_or(0.0) * 100.0,
                self.question_tokens
            ),
            Pattern::Unique => format!("unique prompts of {} tokens", self.prompt_tokens),
        };
        format!("{shape}, {} output tokens, {load}", self.output_tokens)
    }

    /// Popularity of each group under `zipf_s`, most popular first.
    fn zipf_weights(&self) -> Vec<f64> {
        let raw: Vec<f64> = (1..=self.groups.max(1))
            .map(|k| 1.0 / (k as f64).powf(self.zipf_s))
            .collect();
        let sum: f64 = raw.iter().sum();
        raw.into_iter().map(|w| w / sum).collect()
    }

    /// `count` request bodies: the same sequence for every rule and router
    /// (fixed seeds).
    pub fn bodies(&self, count: usize) -> Vec<String> {
        let groups = self.groups.max(1);
        let systems: Vec<String> = (0..groups)
            .map(|g| text(g as u64 + 1, self.prompt_tokens))
            .collect();
        let question =
            |i: usize| format!("question {i}: ") + &"why ".repeat(self.question_tokens.max(1));
        let body = |messages: serde_json::Value| {
            serde_json::json!({
                "model": "bench-model",
                "stream": true,
                "max_tokens": self.output_tokens,
                "messages": messages,
            })
            .to_string()
        };
        let mut rng = fastrand::Rng::with_seed(42);
        match self.pattern {
            Pattern::SharedPrefix | Pattern::Zipf => {
                let weights = self.zipf_weights();
                (0..count)
                    .map(|i| {
                        let g = if self.pattern == Pattern::Zipf {
                            let mut x = rng.f64();
                            weights
                                .iter()
                                .position(|w| {
                                    x -= w;
                                    x < 0.0
                                })
                                .unwrap_or(groups - 1)
                        } else {
                            rng.usize(..groups)
                        };
                        body(serde_json::json!([
                            {"role": "system", "content": systems[g]},
                            {"role": "user", "content": question(i)},
                        ]))
                    })
                    .collect()
            }
            Pattern::Unique => (0..count)
                .map(|i| {
                    body(serde_json::json!([
                        {"role": "system", "content": text(1_000_000 + i as u64, self.prompt_tokens)},
                        {"role": "user", "content": question(i)},
                    ]))
                })
                .collect(),
            Pattern::MultiTurn => {
                // Conversations advance in a shuffled order, each turn
                // after its previous one; new conversations start as old
                // ones end, so the history keeps growing and renewing.
                let turns = self.turns.max(1);
                let mut histories: Vec<(Vec<serde_json::Value>, usize, u64)> = (0..groups)
                    .map(|g| (Vec::new(), 0, g as u64))
                    .collect();
                let mut next_conversation = groups as u64;
                let mut out = Vec::with_capacity(count);
                while out.len() < count {
                    let c = rng.usize(..groups);
                    let (history, turn, id) = &mut histories[c];
                    if *turn == turns {
                        *history = Vec::new();
                        *turn = 0;
                        *id = next_conversation;
                        next_conversation += 1;
                    }
                    if history.is_empty() {
                        history.push(serde_json::json!({"role": "system", "content": text(*id + 1, self.prompt_tokens)}));
                    }
                    history.push(serde_json::json!({"role": "user", "content": question(out.len())}));
                    out.push(body(serde_json::Value::Array(history.clone())));
                    history.push(serde_json::json!({"role": "assistant", "content": answer(self.output_tokens)}));
                    *turn += 1;
                }
                out
            }
        }
    }
}

/// What one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct PrefixResult {
    /// The workload's name.
    pub workload: String,
    /// `prefix`, `round_robin`, ... or a router's policy.
    pub rule: String,
    /// `inferlb`, `smg`, `vllm-router`, `nginx`, `haproxy`.
    pub peer: String,
    /// Streams completed within the run, per second.
    pub throughput_rps: f64,
    /// From due to the first token, and to the end of the stream.
    pub ttft: Percentiles,
    pub e2e: Percentiles,
    pub completed: u64,
    /// Non-200 answers (429 from a full engine queue, 5xx) and I/O errors.
    pub errors: u64,
    /// Prompt tokens found in the engines' prefix caches.
    pub cache_hit_ratio: f64,
    /// The busiest replica's requests over the mean.
    pub busiest_share: f64,
    /// The router's CPU seconds per 1 000 completed requests.
    pub cpu_s_per_1k: Option<f64>,
    /// The router's peak resident memory, MiB.
    pub peak_rss_mib: Option<f64>,
    /// `POST /tokenize` calls the engines got.
    pub tokenize_calls: u64,
}

/// Starts `n` engines for one run.
pub fn start_engines(w: &PrefixScenario, n: usize) -> Result<Vec<EngineHandle>> {
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

/// What a run offers: the workload's bodies, at its rate (open loop) or
/// with its concurrency (closed loop), for `duration`.
#[derive(Debug)]
pub struct Offer<'a> {
    pub workload: &'a Workload,
    pub bodies: &'a [String],
    pub duration: Duration,
}

/// What a run's requests share: their bodies, a pool of connections, and
/// what they measured.
struct Tally {
    ttft: Mutex<Histogram<u64>>,
    e2e: Mutex<Histogram<u64>>,
    completed: AtomicU64,
    errors: AtomicU64,
    /// Idle connections, one pool per target.
    pools: Vec<Mutex<Vec<TcpStream>>>,
    requests: Vec<Vec<u8>>,
}

/// Offers the workload to `targets` (every n-th request to each) and measures; the engines' counters
/// give the cache hit ratio and the busiest share.
pub fn run(
    rule: &str,
    peer: &str,
    targets: &[SocketAddr],
    offer: &Offer<'_>,
    engines: &[EngineHandle],
) -> PrefixResult {
    let targets: Arc<[SocketAddr]> = targets.into();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let histogram =
        || Mutex::new(Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("valid bounds"));
    let tally = Arc::new(Tally {
        ttft: histogram(),
        e2e: histogram(),
        completed: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        pools: targets.iter().map(|_| Mutex::default()).collect(),
        requests: offer
            .bodies
            .iter()
            .map(|b| {
                format!(
                    "POST /v1/chat/completions HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}",
                    b.len()
                )
                .into_bytes()
            })
            .collect(),
    });
    let start = Instant::now();
    let deadline = start + offer.duration;
    // One request: sent when due, its times recorded.
    let one = {
        let tally = Arc::clone(&tally);
        let targets = Arc::clone(&targets);
        move |i: usize, due: Instant| {
            let tally = Arc::clone(&tally);
            let targets = Arc::clone(&targets);
            async move {
                let request = &tally.requests[i % tally.requests.len()];
                let left =
                    deadline.saturating_duration_since(Instant::now()) + Duration::from_secs(5);
                // Several targets (a fleet behind DNS): each gets every
                // n-th request.
                let t = i % targets.len();
                let sent = stream(targets[t], request, &tally.pools[t], due);
                match tokio::time::timeout(left, sent).await {
                    Ok(Some(first)) => {
                        if Instant::now() <= deadline {
                            tally.completed.fetch_add(1, Ordering::Relaxed);
                        }
                        let us = |d: Duration| d.as_micros().max(1) as u64;
                        let _ = tally.ttft.lock().map(|mut h| h.record(us(first)));
                        let _ = tally.e2e.lock().map(|mut h| h.record(us(due.elapsed())));
                    }
                    _ => {
                        tally.errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    };
    runtime.block_on(async {
        let mut tasks = Vec::new();
        match (offer.workload.rate, offer.workload.concurrency) {
            (Some(rate), _) => {
                let interval = Duration::from_secs_f64(1.0 / rate);
                for i in 0.. {
                    let due = start + interval * i as u32;
                    if due >= deadline {
                        break;
                    }
                    tokio::time::sleep_until(due.into()).await;
                    tasks.push(tokio::spawn(one(i, due)));
                }
            }
            (None, concurrency) => {
                // Closed loop: each client sends its next request when its
                // last one ends, in the bodies' order across clients.
                let next = Arc::new(AtomicUsize::new(0));
                for _ in 0..concurrency.unwrap_or(1).max(1) {
                    let (next, one) = (Arc::clone(&next), one.clone());
                    tasks.push(tokio::spawn(async move {
                        while Instant::now() < deadline {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            one(i, Instant::now()).await;
                        }
                    }));
                }
            }
        }
        for t in tasks {
            let _ = t.await;
        }
    });
    let quantiles =
        |h: &Mutex<Histogram<u64>>| h.lock().map(|h| Percentiles::of(&h)).unwrap_or_default();
    let sum = |f: fn(&inferlb_testkit::EngineStats) -> &AtomicU64| -> u64 {
        engines
            .iter()
            .map(|e| f(e.stats()).load(Ordering::Relaxed))
            .sum()
    };
    let (prompt, cached) = (sum(|s| &s.prompt_tokens), sum(|s| &s.cached_tokens));
    let served: Vec<u64> = engines
        .iter()
        .map(|e| e.stats().requests.load(Ordering::Relaxed))
        .collect();
    let mean = served.iter().sum::<u64>() as f64 / served.len().max(1) as f64;
    PrefixResult {
        workload: offer.workload.name.clone(),
        rule: rule.into(),
        peer: peer.into(),
        throughput_rps: tally.completed.load(Ordering::Relaxed) as f64
            / offer.duration.as_secs_f64(),
        ttft: quantiles(&tally.ttft),
        e2e: quantiles(&tally.e2e),
        completed: tally.completed.load(Ordering::Relaxed),
        errors: tally.errors.load(Ordering::Relaxed),
        cache_hit_ratio: cached as f64 / prompt.max(1) as f64,
        busiest_share: served.iter().copied().max().unwrap_or(0) as f64 / mean.max(1e-9),
        cpu_s_per_1k: None,
        peak_rss_mib: None,
        tokenize_calls: sum(|s| &s.tokenize_requests),
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

    fn workload(pattern: Pattern) -> Workload {
        Workload {
            name: "w".into(),
            pattern,
            groups: 4,
            prompt_tokens: 100,
            question_tokens: 8,
            output_tokens: 4,
            rate: Some(10.0),
            concurrency: None,
            turns: 3,
            zipf_s: 1.5,
        }
    }

    fn systems(bodies: &[String]) -> Vec<String> {
        bodies
            .iter()
            .map(|b| {
                let v: serde_json::Value = serde_json::from_str(b).unwrap();
                v["messages"][0]["content"].as_str().unwrap().to_owned()
            })
            .collect()
    }

    #[test]
    fn bodies_share_their_group_prompts() {
        let w = workload(Pattern::SharedPrefix);
        let bodies = w.bodies(40);
        let distinct: std::collections::HashSet<String> = systems(&bodies).into_iter().collect();
        assert_eq!(distinct.len(), 4);
        assert_eq!(w.bodies(40), bodies, "the same sequence every time");
        let unique = workload(Pattern::Unique).bodies(40);
        let distinct: std::collections::HashSet<String> = systems(&unique).into_iter().collect();
        assert_eq!(distinct.len(), 40);
    }

    #[test]
    fn zipf_puts_most_requests_on_the_top_prompt() {
        let w = workload(Pattern::Zipf);
        let bodies = w.bodies(2000);
        let all = systems(&bodies);
        let mut counts = std::collections::HashMap::new();
        for s in &all {
            *counts.entry(s.clone()).or_insert(0usize) += 1;
        }
        let most = counts.values().copied().max().unwrap();
        assert!(most as f64 / 2000.0 > 0.4, "top share {most} of 2000");
    }

    #[test]
    fn each_turn_carries_the_conversation_so_far() {
        let w = workload(Pattern::MultiTurn);
        let bodies = w.bodies(60);
        let messages: Vec<Vec<serde_json::Value>> = bodies
            .iter()
            .map(|b| {
                let v: serde_json::Value = serde_json::from_str(b).unwrap();
                v["messages"].as_array().unwrap().clone()
            })
            .collect();
        // A later turn starts with an earlier request's messages.
        let continued = messages.iter().enumerate().filter(|(i, m)| {
            m.len() > 2 && messages[..*i].iter().any(|earlier| m.starts_with(earlier))
        });
        assert!(continued.count() > 20);
        assert!(messages.iter().all(|m| m.len() <= 2 * 3), "at most 3 turns");
    }
}
