//! A simulated inference engine that speaks the OpenAI API: what `inferlb
//! fake-replica`, `inferlb demo` and `cargo xtask bench prefix` run.
//!
//! It serves `POST /v1/chat/completions`, `POST /v1/completions` (JSON, or
//! SSE with `"stream": true`, ending with `data: [DONE]`), `POST
//! /v1/embeddings`, `GET /v1/models`, `GET /health`, `GET /metrics` (vLLM's
//! metric names), vLLM's `POST /tokenize` and a Realtime-API-shaped
//! WebSocket at `GET /v1/realtime` (see `realtime`), so any OpenAI client
//! (and a router that asks the engine for token ids) works against it.
//!
//! # Cost model
//!
//! Time is spent the way an engine like vLLM spends it, at a much smaller
//! scale than a GPU's:
//! - a request waits for one of `max_running` decode slots; beyond that
//!   up to `max_waiting` requests queue, and more get 429 + `Retry-After`;
//! - prefill costs `prefill_us_per_token` per prompt token *not* already in
//!   the prefix cache (an LRU over 16-token blocks of the prompt, chained so
//!   a block only hits when everything before it does, `cache_tokens` big);
//! - each output token costs `decode_ms_per_token`.
//!
//! A token is taken as 4 bytes of text. The numbers are a simulation: they
//! show how routing changes cache hits and queueing, not a GPU's speed.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::io;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch, Semaphore};

/// Bytes of text per token, for the cost model.
pub const BYTES_PER_TOKEN: usize = 4;
/// Tokens per prefix-cache block (vLLM's default block size).
pub const BLOCK_TOKENS: usize = 16;

/// How the simulated engine behaves.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The model names it serves (`--served-model-name`); the first is the
    /// one it reports.
    pub models: Vec<String>,
    /// Reported in `X-Replica`.
    pub name: String,
    /// Prefill time per prompt token not in the cache, µs.
    pub prefill_us_per_token: f64,
    /// Decode time per output token, ms.
    pub decode_ms_per_token: f64,
    /// Requests decoding at once.
    pub max_running: usize,
    /// Requests queued beyond those; more get 429.
    pub max_waiting: usize,
    /// Prefix-cache size, tokens.
    pub cache_tokens: usize,
    /// Output tokens when the request gives no `max_tokens`.
    pub default_max_tokens: usize,
    /// Wait before listening (a model loading), for autoscaling demos.
    pub start_delay: Duration,
    /// LoRA adapters served under their own model names (vLLM's
    /// `--lora-modules`), on top of the base model.
    pub adapters: Vec<String>,
    /// Adapters served at once (vLLM's `--max-loras`).
    pub max_loras: usize,
    /// Time to put an adapter into one of the `max_loras` slots, ms.
    pub adapter_load_ms: f64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            models: vec!["fake-model".into()],
            name: "engine".into(),
            prefill_us_per_token: 20.0,
            decode_ms_per_token: 5.0,
            max_running: 8,
            max_waiting: 256,
            cache_tokens: 65_536,
            default_max_tokens: 16,
            start_delay: Duration::ZERO,
            adapters: Vec::new(),
            max_loras: 1,
            adapter_load_ms: 50.0,
        }
    }
}

impl EngineConfig {
    /// The cost model in one line, for reports.
    pub fn describe(&self) -> String {
        let mut line = format!(
            "prefill {} µs/uncached token, decode {} ms/token, {} running + {} waiting, prefix cache {} tokens ({}-token blocks), 1 token = {} bytes",
            self.prefill_us_per_token,
            self.decode_ms_per_token,
            self.max_running,
            self.max_waiting,
            self.cache_tokens,
            BLOCK_TOKENS,
            BYTES_PER_TOKEN
        );
        if !self.adapters.is_empty() {
            line.push_str(&format!(
                ", {} LoRA adapters, {} at once, {} ms to load one",
                self.adapters.len(),
                self.max_loras,
                self.adapter_load_ms
            ));
        }
        line
    }
}

/// What the engine counted, shared with its handle.
#[derive(Debug, Default)]
pub struct EngineStats {
    /// Requests answered (any status).
    pub requests: AtomicU64,
    /// Requests refused with 429.
    pub rejected: AtomicU64,
    /// Requests decoding now.
    pub running: AtomicU64,
    /// Requests waiting for a slot.
    pub waiting: AtomicU64,
    /// Prompt tokens looked up in the prefix cache.
    pub prompt_tokens: AtomicU64,
    /// Of those, found in the cache.
    pub cached_tokens: AtomicU64,
    /// Output tokens produced.
    pub output_tokens: AtomicU64,
    /// Adapters put into a slot (their load cost paid).
    pub adapter_loads: AtomicU64,
    /// `POST /tokenize` calls.
    pub tokenize_requests: AtomicU64,
}

impl EngineStats {
    /// Cached prompt tokens over all prompt tokens.
    pub fn hit_ratio(&self) -> f64 {
        let all = self.prompt_tokens.load(Ordering::Relaxed);
        if all == 0 {
            return 0.0;
        }
        self.cached_tokens.load(Ordering::Relaxed) as f64 / all as f64
    }
}

struct Engine {
    config: EngineConfig,
    stats: Arc<EngineStats>,
    slots: Semaphore,
    cache: Mutex<lru::LruCache<u64, ()>>,
    /// Blocks held by running requests, for `kv_cache_usage_perc`.
    blocks_in_use: AtomicU64,
    next_id: AtomicU64,
    /// The LoRA adapter slots.
    loras: Mutex<LoraSlots>,
    /// Signalled when an adapter's last running request ends.
    lora_freed: tokio::sync::Notify,
}

/// Which adapters are in the engine's `max_loras` slots, and which have
/// requests running or waiting (vLLM's `vllm:lora_requests_info`).
#[derive(Debug, Default)]
struct LoraSlots {
    /// In a slot, least recently used first.
    loaded: Vec<String>,
    running: std::collections::BTreeMap<String, usize>,
    waiting: std::collections::BTreeMap<String, usize>,
}

impl LoraSlots {
    fn bump(map: &mut std::collections::BTreeMap<String, usize>, name: &str, up: bool) {
        if up {
            *map.entry(name.to_owned()).or_default() += 1;
        } else if let Some(n) = map.get_mut(name) {
            *n -= 1;
            if *n == 0 {
                map.remove(name);
            }
        }
    }
}

/// One request's use of an adapter: waiting for a slot, then running in
/// it; undone on every path out.
struct LoraUse<'a> {
    engine: &'a Engine,
    name: &'a str,
    running: bool,
}

impl<'a> LoraUse<'a> {
    fn waiting(engine: &'a Engine, name: &'a str) -> Self {
        let mut slots = engine.loras.lock().unwrap_or_else(|e| e.into_inner());
        LoraSlots::bump(&mut slots.waiting, name, true);
        Self {
            engine,
            name,
            running: false,
        }
    }

    /// Waits for the adapter to be in a slot: already there, a free slot,
    /// or the least recently used adapter with nothing running evicted;
    /// pays the load cost when it was not there.
    async fn run(&mut self) {
        let engine = self.engine;
        let load = loop {
            let freed = engine.lora_freed.notified();
            {
                let mut slots = engine.loras.lock().unwrap_or_else(|e| e.into_inner());
                let slots = &mut *slots;
                let load = if let Some(at) = slots.loaded.iter().position(|a| a == self.name) {
                    let name = slots.loaded.remove(at);
                    slots.loaded.push(name);
                    Some(false)
                } else if slots.loaded.len() < engine.config.max_loras.max(1) {
                    slots.loaded.push(self.name.to_owned());
                    Some(true)
                } else if let Some(at) = slots
                    .loaded
                    .iter()
                    .position(|a| !slots.running.contains_key(a))
                {
                    slots.loaded.remove(at);
                    slots.loaded.push(self.name.to_owned());
                    Some(true)
                } else {
                    None
                };
                if let Some(load) = load {
                    LoraSlots::bump(&mut slots.waiting, self.name, false);
                    LoraSlots::bump(&mut slots.running, self.name, true);
                    self.running = true;
                    break load;
                }
            }
            freed.await;
        };
        if load {
            engine.stats.adapter_loads.fetch_add(1, Ordering::Relaxed);
            let cost = Duration::from_secs_f64(engine.config.adapter_load_ms / 1e3);
            tokio::time::sleep(cost).await;
        }
    }
}

impl Drop for LoraUse<'_> {
    fn drop(&mut self) {
        let mut slots = self.engine.loras.lock().unwrap_or_else(|e| e.into_inner());
        if self.running {
            LoraSlots::bump(&mut slots.running, self.name, false);
        } else {
            LoraSlots::bump(&mut slots.waiting, self.name, false);
        }
        drop(slots);
        self.engine.lora_freed.notify_waiters();
    }
}

/// A running engine; dropping it stops it.
#[derive(Debug)]
pub struct EngineHandle {
    addr: SocketAddr,
    stats: Arc<EngineStats>,
    stop: watch::Sender<bool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl EngineHandle {
    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// What it counted.
    pub fn stats(&self) -> &Arc<EngineStats> {
        &self.stats
    }

    /// Blocks until the engine stops (it runs until the handle is dropped).
    pub fn join(mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for EngineHandle {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Starts an engine on `bind` on a thread of its own. With a start delay,
/// the port is bound at once but answers only after it (as a loading model
/// server refuses nothing but answers nothing).
pub fn start(config: EngineConfig, bind: SocketAddr) -> io::Result<EngineHandle> {
    let listener = StdListener::bind(bind)?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let stats = Arc::new(EngineStats::default());
    let blocks = (config.cache_tokens / BLOCK_TOKENS).max(1);
    let engine = Arc::new(Engine {
        slots: Semaphore::new(config.max_running.max(1)),
        cache: Mutex::new(lru::LruCache::new(
            NonZeroUsize::new(blocks).unwrap_or(NonZeroUsize::MIN),
        )),
        blocks_in_use: AtomicU64::new(0),
        next_id: AtomicU64::new(1),
        loras: Mutex::default(),
        lora_freed: tokio::sync::Notify::new(),
        stats: Arc::clone(&stats),
        config,
    });
    let (stop, mut stopped) = watch::channel(false);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("fake-engine")
        .enable_all()
        .build()?;
    let thread = thread::Builder::new()
        .name("fake-engine".into())
        .spawn(move || {
            runtime.block_on(async move {
                let delay = engine.config.start_delay;
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                    return;
                };
                let app = router(engine);
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async move {
                        let _ = stopped.wait_for(|s| *s).await;
                    })
                    .await;
            });
            runtime.shutdown_timeout(Duration::from_millis(100));
        })?;
    Ok(EngineHandle {
        addr,
        stats,
        stop,
        thread: Some(thread),
    })
}

fn router(engine: Arc<Engine>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/models", get(models))
        .route("/tokenize", post(tokenize))
        .route("/health", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .route("/v1/realtime", get(realtime::realtime))
        .with_state(engine)
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// An OpenAI-style error.
fn error(status: StatusCode, message: &str, kind: &str, code: &str) -> Response {
    let body = json!({"error": {"message": message, "type": kind, "param": null, "code": code}});
    (status, Json(body)).into_response()
}

/// The prompt's text: chat roles and contents, or the completion prompt.
fn prompt_text(request: &Value) -> String {
    let mut text = String::new();
    if let Some(messages) = request["messages"].as_array() {
        for m in messages {
            text.push_str(m["role"].as_str().unwrap_or(""));
            text.push('\0');
            match &m["content"] {
                Value::String(s) => text.push_str(s),
                Value::Array(parts) => {
                    for p in parts {
                        text.push_str(p["text"].as_str().unwrap_or(""));
                    }
                }
                _ => {}
            }
            text.push('\0');
        }
    } else {
        match &request["prompt"] {
            Value::String(s) => text.push_str(s),
            Value::Array(items) => {
                for item in items {
                    match item {
                        Value::String(s) => text.push_str(s),
                        other => text.push_str(&other.to_string()),
                    }
                }
            }
            _ => {}
        }
    }
    text
}

impl Engine {
    fn serves(&self, model: Option<&str>) -> bool {
        model.is_none_or(|m| self.config.models.iter().any(|n| n == m) || self.is_adapter(m))
    }

    fn is_adapter(&self, model: &str) -> bool {
        self.config.adapters.iter().any(|a| a == model)
    }

    /// `vllm:lora_requests_info`'s labels: max, running, waiting.
    fn lora_info(&self) -> (usize, String, String) {
        let slots = self.loras.lock().unwrap_or_else(|e| e.into_inner());
        let names = |m: &std::collections::BTreeMap<String, usize>| {
            m.keys().cloned().collect::<Vec<_>>().join(",")
        };
        (
            self.config.max_loras,
            names(&slots.running),
            names(&slots.waiting),
        )
    }

    fn model(&self) -> &str {
        self.config
            .models
            .first()
            .map_or("fake-model", String::as_str)
    }

    fn header(&self, response: &mut Response) {
        if let Ok(v) = HeaderValue::from_str(&self.config.name) {
            response.headers_mut().insert("x-replica", v);
        }
    }

    /// Looks the prompt's blocks up in the prefix cache and inserts them;
    /// returns (prompt tokens, cached tokens, blocks).
    fn prefill_lookup(&self, text: &str) -> (usize, usize, usize) {
        let tokens = text.len().div_ceil(BYTES_PER_TOKEN).max(1);
        let block_bytes = BLOCK_TOKENS * BYTES_PER_TOKEN;
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let mut h = DefaultHasher::new();
        let mut hit_blocks = 0;
        let mut missed = false;
        let mut blocks = 0;
        for block in text.as_bytes().chunks(block_bytes) {
            // Only whole blocks are cached, as in vLLM.
            if block.len() < block_bytes {
                break;
            }
            block.hash(&mut h);
            let key = h.finish();
            blocks += 1;
            if !missed && cache.get(&key).is_some() {
                hit_blocks += 1;
            } else {
                missed = true;
                cache.put(key, ());
            }
        }
        let cached = (hit_blocks * BLOCK_TOKENS).min(tokens);
        self.stats
            .prompt_tokens
            .fetch_add(tokens as u64, Ordering::Relaxed);
        self.stats
            .cached_tokens
            .fetch_add(cached as u64, Ordering::Relaxed);
        (tokens, cached, blocks.max(1))
    }
}

/// Which kind of generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Chat,
    Completion,
}

async fn chat(State(engine): State<Arc<Engine>>, body: axum::body::Bytes) -> Response {
    generate(engine, body, Kind::Chat).await
}

async fn completions(State(engine): State<Arc<Engine>>, body: axum::body::Bytes) -> Response {
    generate(engine, body, Kind::Completion).await
}

/// Decrements a gauge when dropped (a request ends on any path).
struct Gauge<'a>(&'a AtomicU64, u64);

impl<'a> Gauge<'a> {
    fn up(cell: &'a AtomicU64, n: u64) -> Self {
        cell.fetch_add(n, Ordering::Relaxed);
        Self(cell, n)
    }
}

impl Drop for Gauge<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(self.1, Ordering::Relaxed);
    }
}

fn word(i: usize) -> String {
    const WORDS: [&str; 8] = [
        "The ", "quick ", "model ", "answers ", "every ", "token ", "in ", "turn. ",
    ];
    WORDS[i % WORDS.len()].to_owned()
}

/// Counts a request and parses its JSON body; the error response when it
/// is not JSON or names a model this engine does not serve.
fn accept(engine: &Engine, body: &[u8]) -> Result<Value, Box<Response>> {
    engine.stats.requests.fetch_add(1, Ordering::Relaxed);
    let Ok(request) = serde_json::from_slice::<Value>(body) else {
        return Err(Box::new(error(
            StatusCode::BAD_REQUEST,
            "the body is not valid JSON",
            "invalid_request_error",
            "invalid_json",
        )));
    };
    let model = request["model"].as_str();
    if !engine.serves(model) {
        let message = format!("The model `{}` does not exist.", model.unwrap_or(""));
        let mut response = error(
            StatusCode::NOT_FOUND,
            &message,
            "invalid_request_error",
            "model_not_found",
        );
        engine.header(&mut response);
        return Err(Box::new(response));
    }
    Ok(request)
}

async fn generate(engine: Arc<Engine>, body: axum::body::Bytes, kind: Kind) -> Response {
    let request = match accept(&engine, &body) {
        Ok(request) => request,
        Err(response) => return *response,
    };
    let model = request["model"].as_str();
    let max_tokens = request["max_completion_tokens"]
        .as_u64()
        .or(request["max_tokens"].as_u64())
        .map_or(engine.config.default_max_tokens, |n| n as usize)
        .clamp(1, 4096);
    let stream = request["stream"].as_bool().unwrap_or(false);
    let include_usage = request["stream_options"]["include_usage"]
        .as_bool()
        .unwrap_or(false);
    let text = prompt_text(&request);

    // Queue for a decode slot, or refuse when the queue is full.
    if engine.stats.waiting.load(Ordering::Relaxed) as usize >= engine.config.max_waiting
        && engine.slots.available_permits() == 0
    {
        engine.stats.rejected.fetch_add(1, Ordering::Relaxed);
        let mut response = error(
            StatusCode::TOO_MANY_REQUESTS,
            "the engine's queue is full",
            "rate_limit_error",
            "queue_full",
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        engine.header(&mut response);
        return response;
    }
    let id = engine.next_id.fetch_add(1, Ordering::Relaxed);
    let model = model.unwrap_or_else(|| engine.model()).to_owned();
    if !stream {
        let adapter = engine.is_adapter(&model).then_some(model.as_str());
        let Some((prompt_tokens, output)) = run(&engine, &text, max_tokens, adapter, None).await
        else {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the engine is stopping",
                "server_error",
                "unavailable",
            );
        };
        let usage = json!({"prompt_tokens": prompt_tokens, "completion_tokens": max_tokens, "total_tokens": prompt_tokens + max_tokens});
        let body = match kind {
            Kind::Chat => json!({
                "id": format!("chatcmpl-{id}"), "object": "chat.completion", "created": now_s(), "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": output}, "logprobs": null, "finish_reason": "length"}],
                "usage": usage,
            }),
            Kind::Completion => json!({
                "id": format!("cmpl-{id}"), "object": "text_completion", "created": now_s(), "model": model,
                "choices": [{"index": 0, "text": output, "logprobs": null, "finish_reason": "length"}],
                "usage": usage,
            }),
        };
        let mut response = Json(body).into_response();
        engine.header(&mut response);
        return response;
    }
    // Streaming: the generation runs as a task feeding the body; a client
    // that leaves drops the body, and the task stops at its next token.
    let (tx, rx) = mpsc::channel::<String>(16);
    let created = now_s();
    let task_engine = Arc::clone(&engine);
    tokio::spawn(async move {
        let id = match kind {
            Kind::Chat => format!("chatcmpl-{id}"),
            Kind::Completion => format!("cmpl-{id}"),
        };
        let chunk = |delta: Option<&str>, finish: Option<&str>, first: bool| -> String {
            let event = match kind {
                Kind::Chat => {
                    let mut d = json!({});
                    if first {
                        d["role"] = json!("assistant");
                    }
                    if let Some(t) = delta {
                        d["content"] = json!(t);
                    }
                    json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                        "choices": [{"index": 0, "delta": d, "logprobs": null, "finish_reason": finish}]})
                }
                Kind::Completion => {
                    json!({"id": id, "object": "text_completion", "created": created, "model": model,
                    "choices": [{"index": 0, "text": delta.unwrap_or(""), "logprobs": null, "finish_reason": finish}]})
                }
            };
            format!("data: {event}\n\n")
        };
        let adapter = task_engine.is_adapter(&model).then_some(model.as_str());
        let tokens = run(
            &task_engine,
            &text,
            max_tokens,
            adapter,
            Some((&tx, &chunk)),
        )
        .await;
        let Some((prompt_tokens, _)) = tokens else {
            return;
        };
        let _ = tx.send(chunk(None, Some("length"), false)).await;
        if include_usage {
            let usage = json!({"id": id, "object": if kind == Kind::Chat { "chat.completion.chunk" } else { "text_completion" },
                "created": created, "model": model, "choices": [],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": max_tokens, "total_tokens": prompt_tokens + max_tokens}});
            let _ = tx.send(format!("data: {usage}\n\n")).await;
        }
        let _ = tx.send("data: [DONE]\n\n".to_owned()).await;
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|event| (Ok::<_, io::Error>(axum::body::Bytes::from(event)), rx))
    });
    let mut response = Response::new(Body::from_stream(stream));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    engine.header(&mut response);
    response
}

type Chunker<'a> = dyn Fn(Option<&str>, Option<&str>, bool) -> String + Send + Sync + 'a;

/// Runs one generation: waits for a slot, prefills, decodes. With `sink`,
/// each token is sent as an SSE event; `None` when the client left.
/// Returns the prompt tokens and the text.
async fn run(
    engine: &Engine,
    text: &str,
    max_tokens: usize,
    adapter: Option<&str>,
    sink: Option<(&mpsc::Sender<String>, &Chunker<'_>)>,
) -> Option<(usize, String)> {
    let mut lora = adapter.map(|name| LoraUse::waiting(engine, name));
    let permit = {
        let _waiting = Gauge::up(&engine.stats.waiting, 1);
        let permit = engine.slots.acquire().await.ok()?;
        if let Some(lora) = lora.as_mut() {
            lora.run().await;
        }
        permit
    };
    let _running = Gauge::up(&engine.stats.running, 1);
    let (tokens, cached, blocks) = engine.prefill_lookup(text);
    let _blocks = Gauge::up(&engine.blocks_in_use, blocks as u64);
    let prefill = (tokens - cached) as f64 * engine.config.prefill_us_per_token;
    tokio::time::sleep(Duration::from_secs_f64(prefill / 1e6)).await;
    let decode = Duration::from_secs_f64(engine.config.decode_ms_per_token / 1e3);
    let mut output = String::new();
    for i in 0..max_tokens {
        if i > 0 {
            tokio::time::sleep(decode).await;
        }
        let piece = word(i);
        if let Some((tx, chunk)) = sink {
            tx.send(chunk(Some(&piece), None, i == 0)).await.ok()?;
        }
        output.push_str(&piece);
        engine.stats.output_tokens.fetch_add(1, Ordering::Relaxed);
    }
    drop(permit);
    drop(lora);
    Some((tokens, output))
}

mod info;
mod realtime;

use info::{embeddings, metrics, models, tokenize};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_prefix_hits_the_cache_block_by_block() {
        let engine = Engine {
            config: EngineConfig::default(),
            stats: Arc::default(),
            slots: Semaphore::new(1),
            cache: Mutex::new(lru::LruCache::new(NonZeroUsize::new(1024).unwrap())),
            blocks_in_use: AtomicU64::new(0),
            next_id: AtomicU64::new(1),
            loras: Mutex::default(),
            lora_freed: tokio::sync::Notify::new(),
        };
        let system = "s".repeat(64 * 10);
        let (tokens, cached, _) = engine.prefill_lookup(&format!("{system}first question"));
        assert_eq!(cached, 0);
        assert!(tokens > 160);
        let (_, cached, _) = engine.prefill_lookup(&format!("{system}second question"));
        assert_eq!(
            cached,
            10 * BLOCK_TOKENS,
            "the shared system prompt's blocks hit"
        );
        let (_, cached, _) = engine.prefill_lookup(&format!("x{system}"));
        assert_eq!(
            cached, 0,
            "a different first block misses everything after it"
        );
        assert!(engine.stats.hit_ratio() > 0.0);
    }
}
