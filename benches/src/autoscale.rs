//! `cargo xtask bench autoscale`: local autoscaling under an open-loop load
//! that steps from nothing to a burst and back, against a pool whose
//! replicas are `inferlb fake-replica` processes (the exec provider) with a
//! fixed per-replica capacity and start-up delay.
//!
//! Every second the runner records the offered load, the answers, their
//! p50/p99 latency, and what `GET /v1/pools/{name}/autoscaling` says
//! (replicas starting, in service, draining; held requests; in flight),
//! then checks the targets: no failed request, held requests waiting at
//! most the start delay plus one second, no more than one scale-in per
//! cooldown, and in-flight per replica within ±25 % of the target once
//! steady.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use plotters::prelude::*;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One step of the offered load.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Phase {
    pub seconds: u64,
    /// Requests per second offered (open loop).
    pub rate: f64,
}

/// `[autoscale]` of a `kind = "autoscale"` scenario.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutoscaleWorkload {
    pub phases: Vec<Phase>,
    /// Output tokens per request, and the replicas' decode time per token:
    /// a request takes about `max_tokens × decode_ms_per_token`.
    pub max_tokens: u32,
    pub decode_ms_per_token: f64,
    /// Requests a replica decodes at once (its capacity).
    pub max_running: u32,
    /// How long a replica takes to start.
    pub start_delay_s: u64,
    /// `[pools.autoscaling]` lines (min, max, target, cooldowns, alarms).
    pub pool: String,
    /// The target in flight per replica (also in `pool`), for the check.
    pub target_in_flight: f64,
    pub scale_in_cooldown_s: u64,
}

impl AutoscaleWorkload {
    fn total(&self) -> Duration {
        Duration::from_secs(self.phases.iter().map(|p| p.seconds).sum())
    }

    /// The rate offered at `t` from the start.
    fn rate_at(&self, t: Duration) -> f64 {
        let mut end = Duration::ZERO;
        for p in &self.phases {
            end += Duration::from_secs(p.seconds);
            if t < end {
                return p.rate;
            }
        }
        0.0
    }

    /// When the first phase with load starts.
    fn burst_start(&self) -> Duration {
        let mut at = Duration::ZERO;
        for p in &self.phases {
            if p.rate > 0.0 {
                return at;
            }
            at += Duration::from_secs(p.seconds);
        }
        at
    }

    /// When the load ends.
    fn burst_end(&self) -> Duration {
        let mut at = Duration::ZERO;
        let mut end = Duration::ZERO;
        for p in &self.phases {
            at += Duration::from_secs(p.seconds);
            if p.rate > 0.0 {
                end = at;
            }
        }
        end
    }
}

/// One second of the run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Second {
    pub t: u64,
    pub offered: u64,
    pub ok: u64,
    pub failed: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub desired: u64,
    pub starting: u64,
    pub in_service: u64,
    pub draining: u64,
    pub held: u64,
    pub in_flight: u64,
}

/// What the run found, against its targets.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub requests: u64,
    pub failed: u64,
    /// The longest a request was held by the proxy for a first replica.
    pub longest_hold_s: f64,
    /// The longest a request sent while the pool had no replica waited, as
    /// its client saw it, beyond its own service time: the hold, plus
    /// queueing inside the one replica the held requests then go to.
    pub longest_client_wait_s: f64,
    pub hold_limit_s: f64,
    pub scale_outs: u64,
    pub scale_ins: u64,
    /// The shortest time between two scale-ins (policy ones; going to
    /// zero when idle is not one).
    pub shortest_scale_in_gap_s: Option<f64>,
    /// In flight per replica in service over the steady part of the burst,
    /// over the target.
    pub steady_in_flight_ratio: Option<f64>,
    pub timeline: Vec<Second>,
    pub activities: serde_json::Value,
    pub met: Vec<(String, bool)>,
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_addr() -> Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// Blocking GET of a JSON document from the admin API.
fn admin_json(admin: SocketAddr, path: &str) -> Option<serde_json::Value> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(admin).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let body = text.split_once("\r\n\r\n")?.1;
    serde_json::from_str(body).ok()
}

/// Runs the workload against `inferlb` (the binary), in `dir`.
pub fn run(inferlb: &Path, w: &AutoscaleWorkload, dir: &Path) -> Result<Outcome> {
    std::fs::create_dir_all(dir)?;
    let (listen, admin) = (free_addr()?, free_addr()?);
    let exe = std::fs::canonicalize(inferlb)
        .with_context(|| format!("{} not found", inferlb.display()))?;
    let config = format!(
        "listen = \"{listen}\"\nworkers = 1\n[admin]\nlisten = \"{admin}\"\n[[pools]]\nname = \"bench\"\n[pools.autoscaling]\n{pool}\nprovider = \"exec\"\ncommand = [\"{exe}\", \"fake-replica\", \"--listen\", \"{{host}}:{{port}}\", \"--model\", \"{{pool}}\", \"--name\", \"{{pool}}-{{index}}\", \"--start-delay\", \"{delay}s\", \"--decode-ms-per-token\", \"{decode}\", \"--max-running\", \"{running}\"]\n",
        pool = w.pool,
        exe = exe.display(),
        delay = w.start_delay_s,
        decode = w.decode_ms_per_token,
        running = w.max_running,
    );
    let path = dir.join("autoscale.toml");
    std::fs::write(&path, config)?;
    let child = Command::new(&exe)
        .args(["serve", "-c"])
        .arg(&path)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start inferlb")?;
    let server = Server(child);
    let up = Instant::now();
    while admin_json(admin, "/v1/pools/bench/autoscaling").is_none() {
        if up.elapsed() > Duration::from_secs(10) {
            bail!("inferlb did not start");
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    let total = w.total();
    let seconds = total.as_secs() as usize + 1;
    let offered: Arc<Vec<AtomicU64>> = Arc::new((0..seconds).map(|_| AtomicU64::new(0)).collect());
    let ok: Arc<Vec<AtomicU64>> = Arc::new((0..seconds).map(|_| AtomicU64::new(0)).collect());
    let failed: Arc<Vec<AtomicU64>> = Arc::new((0..seconds).map(|_| AtomicU64::new(0)).collect());
    let latencies: Arc<Mutex<Vec<Histogram<u64>>>> = Arc::new(Mutex::new(
        (0..seconds)
            .map(|_| Histogram::new_with_bounds(1, 600_000_000, 3).expect("bounds"))
            .collect(),
    ));
    let longest_hold_us = Arc::new(AtomicU64::new(0));
    let service = Duration::from_secs_f64(f64::from(w.max_tokens) * w.decode_ms_per_token / 1000.0);

    // Sample the autoscaler once a second, meanwhile.
    let start = Instant::now();
    let sampler = {
        let samples: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
        let out = Arc::clone(&samples);
        let handle = std::thread::spawn(move || {
            for s in 0..seconds as u32 {
                let due = start + Duration::from_secs(u64::from(s)) + Duration::from_millis(500);
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
                let value = admin_json(admin, "/v1/pools/bench/autoscaling")
                    .unwrap_or(serde_json::Value::Null);
                if let Ok(mut v) = out.lock() {
                    v.push(value);
                }
            }
        });
        (handle, samples)
    };

    let body = format!(
        r#"{{"model":"bench","messages":[{{"role":"user","content":"hello"}}],"max_tokens":{}}}"#,
        w.max_tokens
    );
    let request = Arc::new(
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut tasks = Vec::new();
        let mut t = Duration::ZERO;
        let deadline = total;
        while t < deadline {
            let rate = w.rate_at(t);
            if rate <= 0.0 {
                t += Duration::from_millis(100);
                continue;
            }
            let due = start + t;
            tokio::time::sleep_until(due.into()).await;
            let second = t.as_secs() as usize;
            offered[second].fetch_add(1, Ordering::Relaxed);
            let (request, ok, failed, latencies, hold) = (
                Arc::clone(&request),
                Arc::clone(&ok),
                Arc::clone(&failed),
                Arc::clone(&latencies),
                Arc::clone(&longest_hold_us),
            );
            let waking = t < w.burst_start() + Duration::from_secs(1);
            tasks.push(tokio::spawn(async move {
                let answered =
                    tokio::time::timeout(Duration::from_secs(120), once(listen, &request)).await;
                let took = due.elapsed();
                let done = ((due + took).duration_since(start).as_secs() as usize).min(seconds - 1);
                if matches!(answered, Ok(Some(200))) {
                    ok[done].fetch_add(1, Ordering::Relaxed);
                    if let Ok(mut h) = latencies.lock() {
                        let _ = h[done].record(took.as_micros().max(1) as u64);
                    }
                    if waking {
                        let held = took.saturating_sub(service);
                        hold.fetch_max(held.as_micros() as u64, Ordering::Relaxed);
                    }
                } else {
                    failed[done].fetch_add(1, Ordering::Relaxed);
                }
            }));
            t += Duration::from_secs_f64(1.0 / rate);
        }
        for task in tasks {
            let _ = task.await;
        }
    });
    let (handle, samples) = sampler;
    let _ = handle.join();
    let last = admin_json(admin, "/v1/pools/bench/autoscaling").unwrap_or_default();
    let activities = last["activities"].clone();
    // The proxy's own measure of the longest hold (the client's also
    // includes queueing inside the replica the held requests go to).
    let proxy_hold_us = last["longest_hold_ms"].as_u64().unwrap_or(0) * 1000;
    drop(server);

    let samples = samples.lock().map(|s| s.clone()).unwrap_or_default();
    let latencies = latencies.lock().map(|h| h.clone()).unwrap_or_default();
    let number = |v: &serde_json::Value, key: &str| v[key].as_u64().unwrap_or(0);
    let timeline: Vec<Second> = (0..seconds)
        .map(|s| {
            let sample = samples.get(s).cloned().unwrap_or_default();
            let h = &latencies[s];
            let ms = |q: f64| {
                if h.is_empty() {
                    0.0
                } else {
                    h.value_at_quantile(q) as f64 / 1000.0
                }
            };
            Second {
                t: s as u64,
                offered: offered[s].load(Ordering::Relaxed),
                ok: ok[s].load(Ordering::Relaxed),
                failed: failed[s].load(Ordering::Relaxed),
                p50_ms: ms(0.5),
                p99_ms: ms(0.99),
                desired: number(&sample, "desired"),
                starting: number(&sample, "starting"),
                in_service: number(&sample, "in_service"),
                draining: number(&sample, "draining"),
                held: number(&sample, "queued"),
                in_flight: number(&sample, "in_flight"),
            }
        })
        .collect();
    Ok(judge(
        w,
        timeline,
        activities,
        proxy_hold_us,
        longest_hold_us.load(Ordering::Relaxed),
    ))
}

/// One request on a fresh connection: its status, or `None` on an I/O
/// error.
async fn once(target: SocketAddr, request: &[u8]) -> Option<u16> {
    let mut conn = TcpStream::connect(target).await.ok()?;
    let _ = conn.set_nodelay(true);
    conn.write_all(request).await.ok()?;
    let mut buf = Vec::with_capacity(4096);
    loop {
        let mut chunk = [0u8; 4096];
        let n = conn.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        if let Ok(httparse::Status::Complete(len)) = resp.parse(&buf) {
            let status = resp.code?;
            let length: usize = resp
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok())
                .unwrap_or(0);
            while buf.len() < len + length {
                let n = conn.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            return Some(status);
        }
    }
}

fn judge(
    w: &AutoscaleWorkload,
    timeline: Vec<Second>,
    activities: serde_json::Value,
    hold_us: u64,
    client_wait_us: u64,
) -> Outcome {
    let list: Vec<&serde_json::Value> = activities
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    let at = |a: &serde_json::Value| {
        a["at"]
            .as_str()
            .and_then(|t| humantime::parse_rfc3339(t).ok())
    };
    let mut ins: Vec<std::time::SystemTime> = list
        .iter()
        .filter(|a| {
            a["direction"] == "in"
                && !a["cause"]
                    .as_str()
                    .unwrap_or("")
                    .contains("scaling to zero")
        })
        .filter_map(|a| at(a))
        .collect();
    ins.sort();
    let gaps: Vec<f64> = ins
        .windows(2)
        .filter_map(|p| p[1].duration_since(p[0]).ok())
        .map(|d| d.as_secs_f64())
        .collect();
    let shortest = gaps.iter().copied().reduce(f64::min);
    // Steady: the last third of the burst.
    let end = w.burst_end().as_secs() as usize;
    let from =
        w.burst_start().as_secs() as usize + (end - w.burst_start().as_secs() as usize) * 2 / 3;
    let steady: Vec<&Second> = timeline
        .iter()
        .filter(|s| (from..end).contains(&(s.t as usize)) && s.in_service > 0)
        .collect();
    let ratio = (!steady.is_empty()).then(|| {
        let per: f64 = steady
            .iter()
            .map(|s| s.in_flight as f64 / s.in_service as f64)
            .sum::<f64>()
            / steady.len() as f64;
        per / w.target_in_flight
    });
    let requests: u64 = timeline.iter().map(|s| s.ok + s.failed).sum();
    let failed: u64 = timeline.iter().map(|s| s.failed).sum();
    let hold_limit_s = w.start_delay_s as f64 + 1.0;
    let longest_hold_s = hold_us as f64 / 1e6;
    let met = vec![
        ("no failed request".to_owned(), failed == 0),
        (
            format!("held requests wait at most the start delay + 1 s ({hold_limit_s:.1} s)"),
            longest_hold_s <= hold_limit_s,
        ),
        (
            format!(
                "no more than one scale-in per cooldown ({} s)",
                w.scale_in_cooldown_s
            ),
            shortest.is_none_or(|g| g + 1.0 >= w.scale_in_cooldown_s as f64),
        ),
        (
            "in flight per replica within ±25 % of the target once steady".to_owned(),
            ratio.is_some_and(|r| (0.75..=1.25).contains(&r)),
        ),
    ];
    Outcome {
        requests,
        failed,
        longest_hold_s,
        longest_client_wait_s: client_wait_us as f64 / 1e6,
        hold_limit_s,
        scale_outs: list.iter().filter(|a| a["direction"] == "out").count() as u64,
        scale_ins: list.iter().filter(|a| a["direction"] == "in").count() as u64,
        shortest_scale_in_gap_s: shortest,
        steady_in_flight_ratio: ratio,
        timeline,
        activities,
        met,
    }
}

/// A line of the chart: its label, colour and points.
type Series<'a> = (&'a str, RGBColor, Vec<(f64, f64)>);

/// Plots the timeline: load and latency above, replicas and held requests
/// below.
pub fn write_svg(dir: &Path, name: &str, outcome: &Outcome) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!("{name}.svg"));
    let root = SVGBackend::new(&path, (900, 640)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let (top, bottom) = root.split_vertically(320);
    let t_max = outcome.timeline.len().max(1) as f64;
    let draw = |area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
                title: &str,
                unit: &str,
                series: Vec<Series<'_>>|
     -> Result<()> {
        let y_max = series
            .iter()
            .flat_map(|(_, _, p)| p.iter().map(|(_, y)| *y))
            .fold(1.0_f64, f64::max)
            * 1.15;
        let mut chart = ChartBuilder::on(area)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(30)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..t_max, 0.0..y_max)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        chart
            .configure_mesh()
            .x_desc("seconds")
            .y_desc(unit)
            .draw()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        for (label, color, points) in series {
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .label(label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(())
    };
    let line = |f: fn(&Second) -> f64| -> Vec<(f64, f64)> {
        outcome
            .timeline
            .iter()
            .map(|s| (s.t as f64, f(s)))
            .collect()
    };
    draw(
        &top,
        "autoscale: offered load, answers and latency",
        "req/s, p99 s",
        vec![
            (
                "offered req/s",
                RGBColor(31, 119, 180),
                line(|s| s.offered as f64),
            ),
            ("200 per s", RGBColor(44, 160, 44), line(|s| s.ok as f64)),
            (
                "failed per s",
                RGBColor(214, 39, 40),
                line(|s| s.failed as f64),
            ),
            (
                "p99 latency s",
                RGBColor(148, 103, 189),
                line(|s| s.p99_ms / 1000.0),
            ),
        ],
    )?;
    draw(
        &bottom,
        "replicas and held requests",
        "count",
        vec![
            (
                "in service",
                RGBColor(44, 160, 44),
                line(|s| s.in_service as f64),
            ),
            (
                "starting",
                RGBColor(255, 127, 14),
                line(|s| s.starting as f64),
            ),
            (
                "draining",
                RGBColor(140, 86, 75),
                line(|s| s.draining as f64),
            ),
            (
                "held requests",
                RGBColor(214, 39, 40),
                line(|s| s.held as f64),
            ),
        ],
    )?;
    root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}
