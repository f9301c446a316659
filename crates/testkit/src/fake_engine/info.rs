//! The fake engine's routes besides generation: embeddings, the model list
//! and vLLM-named metrics.

use super::*;

pub(super) async fn embeddings(
    State(engine): State<Arc<Engine>>,
    body: axum::body::Bytes,
) -> Response {
    let request = match accept(&engine, &body) {
        Ok(request) => request,
        Err(response) => return *response,
    };
    let model = request["model"].as_str();
    let inputs: Vec<String> = match &request["input"] {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => items
            .iter()
            .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_owned))
            .collect(),
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "`input` must be a string or an array",
                "invalid_request_error",
                "invalid_input",
            )
        }
    };
    let mut tokens = 0;
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, text)| {
            tokens += text.len().div_ceil(BYTES_PER_TOKEN);
            let mut h = DefaultHasher::new();
            text.hash(&mut h);
            let seed = h.finish();
            let vector: Vec<f32> = (0..8)
                .map(|k| ((seed.rotate_left(k * 8) & 0xffff) as f32 / 65535.0) - 0.5)
                .collect();
            json!({"object": "embedding", "index": i, "embedding": vector})
        })
        .collect();
    let model = model.unwrap_or_else(|| engine.model()).to_owned();
    let mut response = Json(json!({"object": "list", "data": data, "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}))
    .into_response();
    engine.header(&mut response);
    response
}

/// vLLM's `POST /tokenize`: `{"prompt": ...}` or `{"messages": [...]}`
/// (and `model`), answered with `count`, `max_model_len` and `tokens`: the
/// ids of the engine's own tokens (4 bytes of text each, as its cost model
/// counts them), so equal text gives equal ids.
pub(super) async fn tokenize(
    State(engine): State<Arc<Engine>>,
    body: axum::body::Bytes,
) -> Response {
    engine
        .stats
        .tokenize_requests
        .fetch_add(1, Ordering::Relaxed);
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "the body is not valid JSON",
            "invalid_request_error",
            "invalid_json",
        );
    };
    if !engine.serves(request["model"].as_str()) {
        return error(
            StatusCode::NOT_FOUND,
            "The model does not exist.",
            "invalid_request_error",
            "model_not_found",
        );
    }
    let text = prompt_text(&request);
    let tokens: Vec<u32> = text
        .as_bytes()
        .chunks(BYTES_PER_TOKEN)
        .map(|piece| {
            let mut h = DefaultHasher::new();
            piece.hash(&mut h);
            (h.finish() % 128_000) as u32
        })
        .collect();
    Json(json!({"count": tokens.len(), "max_model_len": 131_072, "tokens": tokens, "token_strs": null}))
        .into_response()
}

pub(super) async fn models(State(engine): State<Arc<Engine>>) -> Json<Value> {
    let mut data: Vec<Value> = engine
        .config
        .models
        .iter()
        .map(|m| json!({"id": m, "object": "model", "created": now_s(), "owned_by": "inferlb-fake-replica", "root": m, "parent": null}))
        .collect();
    // Adapters as vLLM lists them: their base model is the parent.
    data.extend(engine.config.adapters.iter().map(|a| {
        json!({"id": a, "object": "model", "created": now_s(), "owned_by": "inferlb-fake-replica", "root": a, "parent": engine.model()})
    }));
    Json(json!({"object": "list", "data": data}))
}

pub(super) async fn metrics(State(engine): State<Arc<Engine>>) -> Response {
    let s = &engine.stats;
    let model = engine.model();
    let blocks = (engine.config.cache_tokens / BLOCK_TOKENS).max(1) as f64;
    let usage = (engine.blocks_in_use.load(Ordering::Relaxed) as f64 / blocks).min(1.0);
    let mut page = String::new();
    let mut gauge = |name: &str, help: &str, kind: &str, value: f64| {
        page.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{{model_name=\"{model}\"}} {value}\n"
        ));
    };
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed) as f64;
    gauge(
        "vllm:num_requests_running",
        "Number of requests in model execution batches.",
        "gauge",
        load(&s.running),
    );
    gauge(
        "vllm:num_requests_waiting",
        "Number of requests waiting to be processed.",
        "gauge",
        load(&s.waiting),
    );
    gauge(
        "vllm:kv_cache_usage_perc",
        "KV-cache usage. 1 means 100 percent usage.",
        "gauge",
        usage,
    );
    gauge(
        "vllm:prefix_cache_queries_total",
        "Prefix cache queries, in terms of number of queried tokens.",
        "counter",
        load(&s.prompt_tokens),
    );
    gauge(
        "vllm:prefix_cache_hits_total",
        "Prefix cache hits, in terms of number of cached tokens.",
        "counter",
        load(&s.cached_tokens),
    );
    gauge(
        "vllm:generation_tokens_total",
        "Number of generation tokens processed.",
        "counter",
        load(&s.output_tokens),
    );
    if !engine.config.adapters.is_empty() {
        let (max, running, waiting) = engine.lora_info();
        let at = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        page.push_str(&format!(
            "# HELP vllm:lora_requests_info Running stats on lora requests.\n# TYPE vllm:lora_requests_info gauge\n\
             vllm:lora_requests_info{{max_lora=\"{max}\",running_lora_adapters=\"{running}\",waiting_lora_adapters=\"{waiting}\"}} {at}\n"
        ));
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], page).into_response()
}
