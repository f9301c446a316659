//! Engine load signals: the control plane scrapes each replica's Prometheus
//! metrics (vLLM, SGLang, TGI) and stores the queue, running requests and
//! KV-cache usage in the replica's shared counters, where `least_load` and
//! `prefix`'s balance guard read them. A scrape that fails, or one older
//! than four intervals, is not routed on: routing falls back to inferlb's
//! own in-flight count.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use inferlb_core::pool::Flavor;
use inferlb_core::replica::Adapters;
use inferlb_core::EngineLoad;
use openmetrics_parser::PrometheusValue;

use crate::http::Client;
use crate::writer::Control;

/// Largest metrics page read.
const MAX_PAGE: usize = 4 * 1024 * 1024;

/// Scrapes older than this many intervals are not routed on.
pub const FRESH_INTERVALS: u32 = 4;

/// The metric names of one engine: queue, running, KV usage (0..1).
struct Names {
    waiting: &'static [&'static str],
    running: &'static [&'static str],
    kv_usage: &'static [&'static str],
}

const VLLM: Names = Names {
    waiting: &["vllm:num_requests_waiting"],
    running: &["vllm:num_requests_running"],
    kv_usage: &["vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"],
};
const SGLANG: Names = Names {
    waiting: &["sglang:num_queue_reqs"],
    running: &["sglang:num_running_reqs"],
    kv_usage: &["sglang:token_usage"],
};
const TGI: Names = Names {
    waiting: &["tgi_queue_size"],
    running: &["tgi_batch_current_size"],
    kv_usage: &[],
};

fn names(flavor: Flavor) -> &'static [Names] {
    match flavor {
        Flavor::Auto => &[VLLM, SGLANG, TGI],
        Flavor::Vllm => &[VLLM],
        Flavor::Sglang => &[SGLANG],
        Flavor::Tgi => &[TGI],
    }
}

/// Reads the load from a metrics page; `None` when the page has none of the
/// flavor's names. Series of one name (e.g. one per model) are summed.
pub fn parse(page: &str, flavor: Flavor) -> Option<EngineLoad> {
    let wanted = names(flavor);
    let all = || {
        wanted
            .iter()
            .flat_map(|n| n.waiting.iter().chain(n.running).chain(n.kv_usage))
    };
    // Only the samples of the names wanted go through the parser (a vLLM
    // page is mostly histograms), each name under its own `# TYPE` line:
    // the parser groups untyped samples of different names otherwise.
    let mut text = String::new();
    for name in all() {
        let mut typed = false;
        for line in page.lines() {
            let is_sample = line
                .strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(['{', ' ']));
            if is_sample {
                if !std::mem::replace(&mut typed, true) {
                    text.push_str("# TYPE ");
                    text.push_str(name);
                    text.push_str(" gauge\n");
                }
                text.push_str(line);
                text.push('\n');
            }
        }
    }
    let exposition = openmetrics_parser::prometheus::parse_prometheus(&text).ok()?;
    let mut sums: HashMap<&str, f64> = HashMap::new();
    for (name, family) in &exposition.families {
        let Some(wanted_name) = all().find(|n| **n == name.as_str()) else {
            continue;
        };
        for sample in family.iter_samples() {
            let value = match &sample.value {
                PrometheusValue::Gauge(n) | PrometheusValue::Unknown(n) => n.as_f64(),
                PrometheusValue::Counter(c) => c.value.as_f64(),
                _ => continue,
            };
            if value.is_finite() {
                *sums.entry(wanted_name).or_default() += value;
            }
        }
    }
    let first = |list: &[&str]| list.iter().find_map(|n| sums.get(n).copied());
    wanted.iter().find_map(|n| {
        let waiting = first(n.waiting);
        let running = first(n.running);
        (waiting.is_some() || running.is_some()).then(|| EngineLoad {
            waiting: waiting.unwrap_or(0.0).max(0.0),
            running: running.unwrap_or(0.0).max(0.0),
            kv_usage: first(n.kv_usage).unwrap_or(0.0).clamp(0.0, 1.0),
        })
    })
}

/// vLLM's LoRA gauge: one series per label set ever reported, its value
/// the time it was last set.
const LORA_INFO: &str = "vllm:lora_requests_info";

/// The adapters a vLLM page reports in `vllm:lora_requests_info`'s labels
/// (`running_lora_adapters`, `waiting_lora_adapters`: comma-separated;
/// `max_lora`), from its newest series (the Python client keeps every label
/// set it was ever given, each with the time it was last set); `None` when
/// the page has none.
pub fn parse_adapters(page: &str) -> Option<Adapters> {
    let mut newest: Option<(f64, Adapters)> = None;
    for line in page.lines() {
        let Some(rest) = line
            .strip_prefix(LORA_INFO)
            .and_then(|r| r.strip_prefix('{'))
        else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once('}') else {
            continue;
        };
        let value: f64 = value
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        let mut adapters = Adapters::default();
        for (key, text) in labels_of(labels) {
            let names = || {
                text.split(',')
                    .map(str::trim)
                    .filter(|n| !n.is_empty())
                    .map(str::to_owned)
                    .collect()
            };
            match key.as_str() {
                "running_lora_adapters" => adapters.running = names(),
                "waiting_lora_adapters" => adapters.waiting = names(),
                "max_lora" => adapters.max_lora = text.trim().parse().unwrap_or(0),
                _ => {}
            }
        }
        if newest.as_ref().is_none_or(|(at, _)| value >= *at) {
            newest = Some((value, adapters));
        }
    }
    newest.map(|(_, adapters)| adapters)
}

/// `key="value",...` of a Prometheus sample, escapes undone.
fn labels_of(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.next_if(|c| *c == ',' || c.is_whitespace()).is_some() {}
        let key: String = std::iter::from_fn(|| chars.next_if(|c| *c != '=')).collect();
        if chars.next() != Some('=') || chars.next() != Some('"') {
            return out;
        }
        let mut value = String::new();
        loop {
            match chars.next() {
                None => return out,
                Some('"') => break,
                Some('\\') => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(c) => value.push(c),
                    None => return out,
                },
                Some(c) => value.push(c),
            }
        }
        out.push((key.trim().to_owned(), value));
    }
}

/// How often the replicas' model lists are read for LoRA adapters.
pub const ADAPTERS_EVERY: Duration = Duration::from_secs(5);

/// The LoRA adapters in an OpenAI model list, as vLLM lists them: the
/// entries with a `parent` (their base model).
pub fn adapters_in_models(page: &str) -> Vec<String> {
    let Ok(list) = serde_json::from_str::<serde_json::Value>(page) else {
        return Vec::new();
    };
    list["data"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["parent"].as_str().is_some_and(|p| !p.is_empty()))
        .filter_map(|m| m["id"].as_str().map(str::to_owned))
        .collect()
}

/// Learns each engine-metrics pool's LoRA adapters from its replicas'
/// `GET /v1/models` every [`ADAPTERS_EVERY`], and tells the writer when
/// the set changes (a request naming one is then routed to the pool).
pub async fn learn_adapters(control: Arc<Control>) {
    let client = Client::new("inferlb-engine-metrics");
    let mut known: HashMap<inferlb_core::PoolName, Vec<String>> = HashMap::new();
    let mut ticker = tokio::time::interval(ADAPTERS_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let snapshot = control.snapshot();
        for pool in snapshot.pools() {
            if !pool.spec().engine_metrics.enabled {
                continue;
            }
            let mut adapters = Vec::new();
            let mut answered = false;
            for &i in pool.members() {
                let r = &snapshot.replicas()[i as usize];
                if !r.resolved || !r.is_routable() {
                    continue;
                }
                let timeout = Duration::from_secs(2);
                if let Some(page) = fetch(&client, r.addr, "/v1/models", timeout).await {
                    answered = true;
                    adapters.extend(adapters_in_models(&page));
                }
            }
            if !answered {
                continue;
            }
            adapters.sort();
            adapters.dedup();
            let name = pool.name().clone();
            if known.get(&name) == Some(&adapters) {
                continue;
            }
            // Names the pool did not route yet (declared ones aside).
            let new: Vec<&String> = adapters
                .iter()
                .filter(|a| !pool.spec().is_adapter(a))
                .collect();
            if !new.is_empty() {
                tracing::info!(pool = %name, adapters = ?new, "LoRA adapters learned from the replicas' model lists");
            }
            let command = inferlb_core::Command::LearnAdapters {
                pool: name.clone(),
                adapters: adapters.clone(),
            };
            match control.apply_one(command).await {
                Ok(_) => {
                    known.insert(name, adapters);
                }
                Err(error) => {
                    tracing::warn!(pool = %name, %error, "cannot record learned adapters")
                }
            }
        }
    }
}

/// GETs `path` from `addr` and returns the body of a 200.
pub async fn fetch(
    client: &Client,
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Option<String> {
    let answer = client
        .get(addr, path, timeout, MAX_PAGE, |status| status == 200)
        .await?;
    String::from_utf8(answer.body?.to_vec()).ok()
}

/// Scrapes the replicas of every pool with `engine_metrics.enabled`, each
/// on its pool's interval, until the process ends.
pub async fn run(control: Arc<Control>) {
    let client = Client::new("inferlb-engine-metrics");
    let mut last: HashMap<u64, Instant> = HashMap::new();
    let mut ticker = tokio::time::interval(Duration::from_millis(50));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut scrapes = tokio::task::JoinSet::new();
    loop {
        ticker.tick().await;
        while scrapes.try_join_next().is_some() {}
        let snapshot = control.snapshot();
        let now = Instant::now();
        let mut seen = Vec::new();
        for pool in snapshot.pools() {
            let settings = &pool.spec().engine_metrics;
            if !settings.enabled {
                continue;
            }
            for &i in pool.members() {
                let r = &snapshot.replicas()[i as usize];
                seen.push(r.uid);
                if !r.resolved
                    || last
                        .get(&r.uid)
                        .is_some_and(|t| now - *t < settings.interval)
                {
                    continue;
                }
                last.insert(r.uid, now);
                let (addr, stats) = (r.addr, Arc::clone(&r.stats));
                let (path, flavor, interval) =
                    (settings.path.clone(), settings.flavor, settings.interval);
                let client = client.clone();
                scrapes.spawn(async move {
                    let timeout = interval.max(Duration::from_millis(200));
                    let page = fetch(&client, addr, &path, timeout).await;
                    match page.as_deref().and_then(|p| parse(p, flavor)) {
                        Some(load) => {
                            stats.record_adapters(page.as_deref().and_then(parse_adapters));
                            stats.record_engine(
                                load,
                                inferlb_core::clock::now_ms(),
                                (interval * FRESH_INTERVALS).as_millis() as u64,
                            );
                        }
                        None => {
                            // A failed scrape falls back to inferlb's own
                            // count at once, not after four intervals.
                            stats.expire_engine();
                            tracing::debug!(%addr, %path, "engine metrics scrape failed");
                        }
                    }
                });
            }
        }
        last.retain(|uid, _| seen.contains(uid));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vllm_sglang_and_tgi_pages_are_read() {
        let vllm = "# HELP vllm:num_requests_waiting Number of requests waiting.\n# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{model_name=\"m\"} 3.0\n# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{model_name=\"m\"} 5.0\n# TYPE vllm:kv_cache_usage_perc gauge\nvllm:kv_cache_usage_perc{model_name=\"m\"} 0.25\n# TYPE vllm:e2e_request_latency_seconds histogram\nvllm:e2e_request_latency_seconds_bucket{le=\"1.0\"} 4.0\n";
        let load = parse(vllm, Flavor::Auto).unwrap();
        assert_eq!(
            (load.waiting, load.running, load.kv_usage),
            (3.0, 5.0, 0.25)
        );
        assert_eq!(parse(vllm, Flavor::Vllm), Some(load));
        assert_eq!(parse(vllm, Flavor::Sglang), None);
        let old_vllm = "vllm:num_requests_waiting 1\nvllm:num_requests_running 2\nvllm:gpu_cache_usage_perc 0.5\n";
        assert_eq!(parse(old_vllm, Flavor::Auto).unwrap().kv_usage, 0.5);
        let sglang = "# TYPE sglang:num_queue_reqs gauge\nsglang:num_queue_reqs{model_name=\"m\"} 7\nsglang:num_running_reqs{model_name=\"m\"} 2\nsglang:token_usage{model_name=\"m\"} 0.9\n";
        let load = parse(sglang, Flavor::Auto).unwrap();
        assert_eq!((load.waiting, load.running, load.kv_usage), (7.0, 2.0, 0.9));
        let tgi = "# TYPE tgi_queue_size gauge\ntgi_queue_size 4\n# TYPE tgi_batch_current_size gauge\ntgi_batch_current_size 8\n";
        let load = parse(tgi, Flavor::Tgi).unwrap();
        assert_eq!((load.waiting, load.running, load.kv_usage), (4.0, 8.0, 0.0));
        assert_eq!(parse("other_metric 1\n", Flavor::Auto), None);
        // A name that only starts like a wanted one is not it.
        assert_eq!(parse("tgi_queue_size_total 4\n", Flavor::Tgi), None);
    }

    #[test]
    fn lora_adapters_are_read_from_the_newest_series() {
        let page = "# HELP vllm:lora_requests_info Running stats on lora requests.\n# TYPE vllm:lora_requests_info gauge\n\
            vllm:lora_requests_info{max_lora=\"2\",running_lora_adapters=\"old\",waiting_lora_adapters=\"\"} 1.7e+09\n\
            vllm:lora_requests_info{max_lora=\"2\",running_lora_adapters=\"sql-lora,chat-lora\",waiting_lora_adapters=\"x\"} 1.8e+09\n\
            vllm:num_requests_waiting 0\n";
        let adapters = parse_adapters(page).unwrap();
        assert_eq!(adapters.running, ["sql-lora", "chat-lora"]);
        assert_eq!(adapters.waiting, ["x"]);
        assert_eq!(adapters.max_lora, 2);
        assert!(adapters.has("x") && !adapters.has("old"));
        assert!(!adapters.has_free_slot());
        assert_eq!(parse_adapters("vllm:num_requests_waiting 0\n"), None);
    }

    #[test]
    fn adapters_are_the_models_with_a_parent() {
        let page = r#"{"object":"list","data":[
            {"id":"meta-llama/Llama-2-7b-hf","object":"model","parent":null},
            {"id":"sql-lora","object":"model","root":"/adapters/sql","parent":"meta-llama/Llama-2-7b-hf"},
            {"id":"alias","object":"model"}]}"#;
        assert_eq!(adapters_in_models(page), ["sql-lora"]);
        assert!(adapters_in_models("not json").is_empty());
    }

    #[test]
    fn series_of_one_name_are_summed() {
        let page = "vllm:num_requests_waiting{model_name=\"a\"} 1\nvllm:num_requests_waiting{model_name=\"b\"} 2\nvllm:num_requests_running{model_name=\"a\"} 0\n";
        assert_eq!(parse(page, Flavor::Auto).unwrap().waiting, 3.0);
    }
}
