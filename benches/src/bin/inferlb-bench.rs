//! The load-test runner behind `cargo xtask bench`: starts fake replicas and
//! each peer, drives load, and reports.

// A report tool: its terminal output is the product.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use inferlb_benches::loadgen::{self, LoadSpec, Mode, Pace, Percentiles};
use inferlb_benches::peers::{self, Peer, PeerSettings};
use inferlb_benches::procstat;
use inferlb_benches::report::{self, Measurement, Row};
use inferlb_benches::scenario::{Kind, Scenario};
use inferlb_testkit::{FakeReplica, Latency, ReplicaHandle};
use serde_json::json;

/// Load tests of inferlb against direct, nginx and HAProxy.
#[derive(Debug, Parser)]
struct Args {
    /// Scenarios to run (names of benches/scenarios/*.toml); all when none.
    scenarios: Vec<String>,
    /// Seconds per measurement [default: the scenario's].
    #[arg(long)]
    duration: Option<u64>,
    /// Rounds, interleaved A B C A B C; medians are reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Peers besides inferlb and direct: nginx, haproxy, haproxy-tcp (the L4
    /// relay; also run whenever haproxy is), or none.
    #[arg(long, default_value = "nginx,haproxy")]
    peers: String,
    /// Worker threads (processes for nginx) of every proxy.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// The inferlb binary.
    #[arg(long, default_value = "target/release/inferlb")]
    inferlb: PathBuf,
    /// Where scenarios live.
    #[arg(long, default_value = "benches/scenarios")]
    scenario_dir: PathBuf,
    /// Where results go.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// The commit being measured (recorded in the JSON).
    #[arg(long, default_value = "unknown")]
    commit: String,
}

/// Which CPUs the proxy gets and which the load side gets.
#[derive(Debug, Clone, serde::Serialize)]
struct Layout {
    cores: usize,
    proxy_cpus: Vec<usize>,
    load_cpus: Vec<usize>,
}

fn layout(workers: usize) -> Layout {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cores <= workers {
        return Layout {
            cores,
            proxy_cpus: vec![],
            load_cpus: vec![],
        };
    }
    let proxy_cpus = (cores - workers..cores).collect();
    let load_cpus = (0..cores - workers).collect();
    Layout {
        cores,
        proxy_cpus,
        load_cpus,
    }
}

fn start_replicas(s: &Scenario, load_threads: usize) -> Result<Vec<ReplicaHandle>> {
    (0..s.replicas)
        .map(|i| {
            let mut b = FakeReplica::builder()
                .name(&format!("r{i}"))
                .lean()
                .body_bytes(s.body_bytes)
                .threads(load_threads);
            if s.kind == Kind::Stream {
                b = b.tokens(s.tokens, Duration::from_millis(s.token_interval_ms));
            }
            let mut latency = s.latency_ms;
            if s.kind == Kind::Skew && i == 0 {
                latency *= s.slow_factor.max(1);
            }
            if latency > 0 {
                b = b.latency(Latency::Fixed(Duration::from_millis(latency)));
            }
            b.start().context("cannot start a fake replica")
        })
        .collect()
}

fn request_bytes(kind: Kind) -> Vec<u8> {
    match kind {
        Kind::Stream => b"POST /v1/completions HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: 16\r\n\r\n{\"stream\": true}".to_vec(),
        _ => b"GET /v1/models HTTP/1.1\r\nHost: bench\r\n\r\n".to_vec(),
    }
}

fn progress(
    total: Duration,
    label: String,
    counter: Arc<AtomicU64>,
) -> (ProgressBar, std::thread::JoinHandle<()>, Arc<AtomicBool>) {
    let bar = ProgressBar::new(total.as_millis() as u64);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>28} [{bar:30}] {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_prefix(label);
    let done = Arc::new(AtomicBool::new(false));
    let (b, d) = (bar.clone(), Arc::clone(&done));
    let started = Instant::now();
    let ticker = std::thread::spawn(move || {
        while !d.load(Ordering::Relaxed) {
            b.set_position(started.elapsed().as_millis() as u64);
            b.set_message(format!("{} responses", counter.load(Ordering::Relaxed)));
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    (bar, ticker, done)
}

/// One measurement of one peer at one load point.
fn measure(
    scenario: &Scenario,
    peer: &peers::Running,
    targets: Vec<SocketAddr>,
    point: &inferlb_benches::scenario::LoadPoint,
    duration: Duration,
    load_threads: usize,
) -> Measurement {
    let pace = point.rate.map_or(Pace::Closed, |rate| Pace::Open { rate });
    let mode = if scenario.kind == Kind::Stream {
        Mode::Stream
    } else {
        Mode::Requests
    };
    // Warm-up: fill pools and caches, not measured.
    let warm = LoadSpec {
        targets: targets.clone(),
        connections: point.connections,
        threads: load_threads,
        pace,
        mode,
        duration: Duration::from_millis(500),
        request: request_bytes(scenario.kind),
        progress: Arc::new(AtomicU64::new(0)),
    };
    loadgen::run(&warm);
    let counter = Arc::new(AtomicU64::new(0));
    let spec = LoadSpec {
        duration,
        progress: Arc::clone(&counter),
        ..warm
    };
    let label = format!(
        "{} {} c={}",
        scenario.name,
        peer.peer.name(),
        point.connections
    );
    let (bar, ticker, done) = progress(duration, label, counter);
    let cpu_before = peer.cpu_seconds();
    let result = loadgen::run(&spec);
    let cpu = peer.cpu_seconds() - cpu_before;
    done.store(true, Ordering::Relaxed);
    let _ = ticker.join();
    bar.finish_and_clear();
    let is_proxy = peer.peer != Peer::Direct;
    Measurement {
        throughput_rps: result.throughput(),
        completed: result.completed,
        errors: result.errors.clone(),
        latency: Percentiles::of(&result.latency),
        first_token: (mode == Mode::Stream).then(|| Percentiles::of(&result.first_event)),
        token_gap: (mode == Mode::Stream).then(|| Percentiles::of(&result.event_gap)),
        cpu_s_per_100k: (is_proxy && result.completed > 0)
            .then(|| cpu / result.completed as f64 * 100_000.0),
        peak_rss_kib: is_proxy.then(|| peer.peak_rss_kib()),
        extra: serde_json::Map::new(),
    }
}

fn peer_list(s: &Scenario, args: &Args) -> Vec<Peer> {
    let allowed: Vec<&str> = if args.peers == "none" {
        vec![]
    } else {
        args.peers.split(',').collect()
    };
    s.peers
        .iter()
        .filter_map(|p| match p.as_str() {
            "direct" => Some(Peer::Direct),
            "inferlb" => Some(Peer::Inferlb),
            "nginx" if allowed.contains(&"nginx") => Some(Peer::Nginx),
            "haproxy" if allowed.contains(&"haproxy") => Some(Peer::Haproxy),
            "haproxy-tcp" if allowed.contains(&"haproxy") || allowed.contains(&"haproxy-tcp") => {
                Some(Peer::HaproxyTcp)
            }
            _ => None,
        })
        .filter(|p| {
            let ok = p.installed();
            if !ok {
                eprintln!(
                    "  {} is not installed; skipped (cargo xtask bench --install-peers)",
                    p.name()
                );
            }
            ok
        })
        .collect()
}

fn settings(
    args: &Args,
    layout: &Layout,
    routing: &str,
    dir: &std::path::Path,
    connections: usize,
) -> PeerSettings {
    PeerSettings {
        workers: args.workers,
        proxy_cpus: layout.proxy_cpus.clone(),
        inferlb: args.inferlb.clone(),
        dir: dir.to_path_buf(),
        routing: routing.to_owned(),
        upstream_keepalive: connections.max(64) * 2,
        // The same keep-alive pool nginx gets, so no peer closes and reopens
        // upstream connections under load while another keeps them.
        inferlb_config: Some(format!(
            "[upstream]\nmax_idle_per_replica = {}\n",
            connections.max(64) * 2
        )),
    }
}

/// The shared-prefix workload: every routing rule of inferlb, then nginx
/// and HAProxy round robin, each over fresh engines (cold caches).
fn prefix(s: &Scenario, args: &Args, layout: &Layout, dir: &std::path::Path) -> Result<()> {
    let w = s
        .prefix
        .as_ref()
        .context("a prefix scenario needs a [prefix] table")?;
    let duration = Duration::from_secs(args.duration.unwrap_or(s.duration_s));
    let count = (w.rate * duration.as_secs_f64()).ceil() as usize + 1;
    let bodies = w.bodies(count);
    println!("cost model: {}", w.engine("e").describe());
    println!(
        "workload: {} system prompts of {} tokens, {}-token questions, {} output tokens, {} req/s offered for {:?}, {} engines",
        w.groups, w.prompt_tokens, w.question_tokens, w.output_tokens, w.rate, duration, s.replicas
    );
    let mut runs: Vec<(String, Peer)> = w
        .routings
        .iter()
        .map(|r| (r.clone(), Peer::Inferlb))
        .collect();
    for peer in peer_list(s, args) {
        if matches!(peer, Peer::Nginx | Peer::Haproxy) {
            runs.push(("round_robin".into(), peer));
        }
    }
    let mut results = Vec::new();
    for (rule, peer) in runs {
        let mut rounds = Vec::new();
        for _ in 0..args.rounds.max(1) {
            let engines = inferlb_benches::prefix::start_engines(w, s.replicas)?;
            let addrs: Vec<SocketAddr> = engines.iter().map(|e| e.addr()).collect();
            let mut settings = settings(args, layout, &rule, dir, 256);
            let base = settings.inferlb_config.take().unwrap_or_default();
            settings.inferlb_config = Some(format!(
                "{base}[engine_metrics]\nenabled = true\ninterval_ms = 100\n"
            ));
            let running = peers::start(peer, &addrs, &settings)?;
            let name = if peer == Peer::Inferlb {
                "inferlb"
            } else {
                peer.name()
            };
            let spinner = ProgressBar::new_spinner();
            spinner.set_message(format!("{name} {rule}"));
            spinner.enable_steady_tick(Duration::from_millis(200));
            let result = inferlb_benches::prefix::run(
                &rule,
                name,
                running.addr,
                w,
                &bodies,
                duration,
                &engines,
            );
            spinner.finish_and_clear();
            drop(running);
            drop(engines);
            rounds.push(result);
        }
        rounds.sort_by(|a, b| a.throughput_rps.total_cmp(&b.throughput_rps));
        results.push(rounds[rounds.len() / 2].clone());
    }
    let baseline = results
        .iter()
        .find(|r| r.rule == "round_robin" && r.peer == "inferlb")
        .cloned();
    let mut table = Vec::new();
    for r in &results {
        let vs = |f: f64, base: Option<f64>| {
            base.filter(|b| *b > 0.0)
                .map_or("-".to_owned(), |b| format!("{:.2}x", f / b))
        };
        table.push(vec![
            r.rule.clone(),
            r.peer.clone(),
            format!("{:.0}", r.throughput_rps),
            vs(
                r.throughput_rps,
                baseline.as_ref().map(|b| b.throughput_rps),
            ),
            format!("{:.1}", r.ttft.p50_ms),
            vs(r.ttft.p50_ms, baseline.as_ref().map(|b| b.ttft.p50_ms)),
            format!("{:.1}", r.ttft.p99_ms),
            format!("{:.2}", r.cache_hit_ratio),
            format!("{:.2}", r.busiest_share),
            r.errors.to_string(),
        ]);
    }
    print!(
        "{}",
        report::table(
            &[
                "RULE",
                "PEER",
                "REQ/S",
                "VS RR",
                "TTFT P50 MS",
                "VS RR",
                "TTFT P99 MS",
                "CACHE HITS",
                "BUSIEST/MEAN",
                "ERRORS",
            ],
            &table
        )
    );
    let record = json!({
        "scenario": s.name,
        "description": s.description,
        "date": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        "machine": procstat::machine(layout.cores),
        "commit": args.commit,
        "cost_model": w.engine("e").describe(),
        "settings": {"rounds": args.rounds, "duration_s": duration.as_secs(), "workers": args.workers, "layout": layout, "scenario": s},
        "results": results,
    });
    report::write_json(&args.out, &s.name, &record)?;
    let bars: Vec<(String, String, f64)> = results
        .iter()
        .map(|r| (r.rule.clone(), r.peer.clone(), r.throughput_rps))
        .collect();
    report::write_svg(
        &args.out,
        &s.name,
        &format!("{}: completed streams per second", s.name),
        "requests/s",
        &bars,
    )?;
    println!("wrote {}/{}.json and .svg", args.out.display(), s.name);
    Ok(())
}

/// Comparison scenarios: every peer at every load point, rounds interleaved.
fn compare(
    s: &Scenario,
    args: &Args,
    layout: &Layout,
    dir: &std::path::Path,
    load_threads: usize,
) -> Result<Vec<Row>> {
    let replicas = start_replicas(s, load_threads)?;
    let addrs: Vec<SocketAddr> = replicas.iter().map(ReplicaHandle::addr).collect();
    let duration = Duration::from_secs(args.duration.unwrap_or(s.duration_s));
    let peers = peer_list(s, args);
    let mut rows = Vec::new();
    for point in &s.load {
        let mut rounds: Vec<Vec<Measurement>> = vec![Vec::new(); peers.len()];
        for _round in 0..args.rounds {
            for (i, &peer) in peers.iter().enumerate() {
                let running = peers::start(
                    peer,
                    &addrs,
                    &settings(args, layout, "round_robin", dir, point.connections),
                )?;
                let targets = if peer == Peer::Direct {
                    addrs.clone()
                } else {
                    vec![running.addr]
                };
                let mut m = if s.kind == Kind::Connections {
                    connections_measurement(s, &running, targets, point, duration, load_threads)
                } else {
                    measure(s, &running, targets, point, duration, load_threads)
                };
                m.extra.insert("round".into(), json!(rounds[i].len() + 1));
                rounds[i].push(m);
            }
        }
        for (i, peer) in peers.iter().enumerate() {
            let key: fn(&Measurement) -> f64 = match s.kind {
                Kind::Stream => |m| m.first_token.as_ref().map_or(0.0, |p| p.p99_ms),
                Kind::Connections => |m| {
                    m.extra
                        .get("rss_per_connection_kib")
                        .and_then(|v| v.as_f64())
                        .unwrap_or(0.0)
                },
                _ if s.load.iter().any(|l| l.rate.is_some()) => |m| m.cpu_s_per_100k.unwrap_or(0.0),
                _ => |m| m.throughput_rps,
            };
            let median = report::median(&rounds[i], key);
            rows.push(Row {
                point: format!(
                    "connections={}{}",
                    point.connections,
                    point.rate.map(|r| format!(" rate={r}")).unwrap_or_default()
                ),
                peer: peer.name().into(),
                rounds: rounds[i].clone(),
                median,
            });
        }
    }
    drop(replicas);
    Ok(rows)
}

/// Size of the header each idle connection's warm-up request carries.
const WARMUP_HEADER_BYTES: usize = 12 * 1024;

/// Idle connections held on the peer, with light load; RSS per connection
/// is the growth of the peer's resident memory over its idle baseline.
fn connections_measurement(
    s: &Scenario,
    peer: &peers::Running,
    targets: Vec<SocketAddr>,
    point: &inferlb_benches::scenario::LoadPoint,
    duration: Duration,
    load_threads: usize,
) -> Measurement {
    std::thread::sleep(Duration::from_millis(300));
    let baseline = peer.rss_kib();
    // Each connection first carries a request with a 12 KiB header that
    // arrives in two TCP segments, and a response of the scenario's size
    // (64 KiB): buffers a proxy grew for it must not stay with the idle
    // connection.
    let head = format!(
        "GET /v1/models HTTP/1.1\r\nHost: bench\r\nX-Padding: {}\r\n\r\n",
        "p".repeat(WARMUP_HEADER_BYTES)
    );
    let warmup = loadgen::Warmup {
        split_at: head.len() / 2,
        request: head.into_bytes(),
    };
    let idle = loadgen::hold_idle(targets[0], s.idle_connections, warmup);
    let deadline = Instant::now() + Duration::from_secs(60);
    while idle.opened() < s.idle_connections as u64 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut m = measure(s, peer, targets, point, duration, load_threads);
    let rss = peer.rss_kib();
    let opened = idle.opened();
    drop(idle);
    if peer.peer != Peer::Direct && opened > 0 {
        let per = (rss.saturating_sub(baseline)) as f64 / opened as f64;
        m.extra.insert("rss_per_connection_kib".into(), json!(per));
    }
    m.extra.insert("idle_connections".into(), json!(opened));
    m.extra.insert("rss_kib".into(), json!(rss));
    m.extra.insert("baseline_rss_kib".into(), json!(baseline));
    m
}

/// A raw HTTP call to the admin API; returns the status.
fn admin_call(admin: SocketAddr, method: &str, path: &str, body: &str) -> u16 {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&admin, Duration::from_secs(2)) else {
        return 0;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    if s.write_all(req.as_bytes()).is_err() {
        return 0;
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// Load while replicas come and go through the admin API.
fn churn(
    s: &Scenario,
    args: &Args,
    layout: &Layout,
    dir: &std::path::Path,
    load_threads: usize,
) -> Result<Vec<Row>> {
    let replicas = start_replicas(s, load_threads)?;
    let addrs: Vec<SocketAddr> = replicas.iter().map(ReplicaHandle::addr).collect();
    let (stable, extra) = addrs.split_at(2);
    let duration = Duration::from_secs(args.duration.unwrap_or(s.duration_s));
    let point = &s.load[0];
    let mut rounds = Vec::new();
    for _ in 0..args.rounds {
        let running = peers::start(
            Peer::Inferlb,
            stable,
            &settings(args, layout, "round_robin", dir, point.connections),
        )?;
        let admin = running.admin.context("inferlb has an admin API")?;
        let stop = Arc::new(AtomicBool::new(false));
        let ops = Arc::new(AtomicU64::new(0));
        let failed_ops = Arc::new(AtomicU64::new(0));
        let (stop2, ops2, failed2) = (Arc::clone(&stop), Arc::clone(&ops), Arc::clone(&failed_ops));
        let extra = extra.to_vec();
        let interval = Duration::from_millis(s.churn_interval_ms.max(1));
        let churner = std::thread::spawn(move || {
            let mut k = 0usize;
            while !stop2.load(Ordering::Relaxed) {
                let r = extra[k % extra.len()];
                let id = format!("churn{}", k % extra.len());
                let add = admin_call(
                    admin,
                    "POST",
                    "/v1/replicas",
                    &format!(r#"{{"address":"{r}","id":"{id}"}}"#),
                );
                std::thread::sleep(interval);
                let drain = admin_call(
                    admin,
                    "DELETE",
                    &format!("/v1/replicas/{id}?drain_timeout_s=30"),
                    "",
                );
                std::thread::sleep(interval);
                ops2.fetch_add(2, Ordering::Relaxed);
                if !(200..300).contains(&add) || !(200..300).contains(&drain) {
                    failed2.fetch_add(1, Ordering::Relaxed);
                }
                k += 1;
            }
        });
        let mut m = measure(
            s,
            &running,
            vec![running.addr],
            point,
            duration,
            load_threads,
        );
        stop.store(true, Ordering::Relaxed);
        let _ = churner.join();
        m.extra.insert(
            "admin_operations".into(),
            json!(ops.load(Ordering::Relaxed)),
        );
        m.extra.insert(
            "failed_admin_operations".into(),
            json!(failed_ops.load(Ordering::Relaxed)),
        );
        m.extra
            .insert("failed_requests".into(), json!(m.errors.total()));
        rounds.push(m);
    }
    let median = report::median(&rounds, |m| m.errors.total() as f64);
    Ok(vec![Row {
        point: format!("connections={}", point.connections),
        peer: "inferlb".into(),
        rounds,
        median,
    }])
}

/// One slow replica; the same offered load per routing rule.
fn skew(
    s: &Scenario,
    args: &Args,
    layout: &Layout,
    dir: &std::path::Path,
    load_threads: usize,
) -> Result<Vec<Row>> {
    let duration = Duration::from_secs(args.duration.unwrap_or(s.duration_s));
    let point = &s.load[0];
    let mut rows = Vec::new();
    for routing in &s.routings {
        let mut rounds = Vec::new();
        let mut available = true;
        for _ in 0..args.rounds {
            let replicas = start_replicas(s, load_threads)?;
            let addrs: Vec<SocketAddr> = replicas.iter().map(ReplicaHandle::addr).collect();
            let running = match peers::start(
                Peer::Inferlb,
                &addrs,
                &settings(args, layout, routing, dir, point.connections),
            ) {
                Ok(r) => r,
                Err(_) => {
                    available = false;
                    break;
                }
            };
            let mut m = measure(
                s,
                &running,
                vec![running.addr],
                point,
                duration,
                load_threads,
            );
            let total: u64 = replicas.iter().map(|r| r.counters().requests()).sum();
            let slow = replicas[0].counters().requests();
            m.extra.insert(
                "slow_replica_share".into(),
                json!(slow as f64 / total.max(1) as f64),
            );
            rounds.push(m);
        }
        if !available {
            eprintln!("  routing {routing}: not available yet");
            continue;
        }
        let median = report::median(&rounds, |m| m.latency.p90_ms);
        rows.push(Row {
            point: routing.clone(),
            peer: "inferlb".into(),
            rounds,
            median,
        });
    }
    Ok(rows)
}

fn print_rows(s: &Scenario, rows: &[Row]) {
    let direct = |point: &str| {
        rows.iter()
            .find(|r| r.point == point && r.peer == "direct")
            .map(|r| r.median.throughput_rps)
    };
    let mut table = Vec::new();
    for r in rows {
        let m = &r.median;
        let vs_direct = direct(&r.point)
            .filter(|d| *d > 0.0)
            .map(|d| format!("{:.2}x", m.throughput_rps / d))
            .unwrap_or_default();
        let mut row = vec![
            r.point.clone(),
            r.peer.clone(),
            format!("{:.0}", m.throughput_rps),
            vs_direct,
            format!("{:.2}", m.latency.p50_ms),
            format!("{:.2}", m.latency.p99_ms),
            m.cpu_s_per_100k
                .map(|c| format!("{c:.2}"))
                .unwrap_or_default(),
            m.peak_rss_kib
                .map(|k| format!("{:.1}", k as f64 / 1024.0))
                .unwrap_or_default(),
            m.errors.total().to_string(),
        ];
        let extra = match s.kind {
            Kind::Stream => m
                .first_token
                .as_ref()
                .zip(m.token_gap.as_ref())
                .map(|(f, g)| {
                    format!(
                        "ttft p50 {:.1} p99 {:.1} ms; gap p99 {:.1} ms",
                        f.p50_ms, f.p99_ms, g.p99_ms
                    )
                })
                .unwrap_or_default(),
            Kind::Connections => m
                .extra
                .get("rss_per_connection_kib")
                .and_then(|v| v.as_f64())
                .map(|v| format!("{v:.2} KiB/conn"))
                .unwrap_or_default(),
            Kind::Skew => m
                .extra
                .get("slow_replica_share")
                .and_then(|v| v.as_f64())
                .map(|v| {
                    format!(
                        "slow share {:.1}%, p90 {:.1} ms",
                        v * 100.0,
                        m.latency.p90_ms
                    )
                })
                .unwrap_or_default(),
            Kind::Churn => format!(
                "{} admin ops, {} failed requests",
                m.extra.get("admin_operations").cloned().unwrap_or_default(),
                m.errors.total()
            ),
            Kind::Requests | Kind::Prefix | Kind::Autoscale => String::new(),
        };
        row.push(extra);
        table.push(row);
    }
    println!(
        "{}",
        report::table(
            &[
                "point",
                "peer",
                "req/s",
                "vs direct",
                "p50 ms",
                "p99 ms",
                "cpu s/100k",
                "peak MiB",
                "errors",
                "notes"
            ],
            &table
        )
    );
}

fn ratios(rows: &[Row]) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    let points: Vec<&String> = rows.iter().map(|r| &r.point).fold(Vec::new(), |mut v, p| {
        if !v.contains(&p) {
            v.push(p);
        }
        v
    });
    for point in points {
        let get = |peer: &str| {
            rows.iter()
                .find(|r| &r.point == point && r.peer == peer)
                .map(|r| &r.median)
        };
        let Some(inferlb) = get("inferlb") else {
            continue;
        };
        let mut m = serde_json::Map::new();
        for other in ["direct", "nginx", "haproxy", "haproxy-tcp"] {
            if let Some(o) = get(other) {
                if o.throughput_rps > 0.0 {
                    m.insert(
                        format!("throughput_inferlb_over_{other}"),
                        json!(inferlb.throughput_rps / o.throughput_rps),
                    );
                }
                if let (Some(a), Some(b)) = (inferlb.cpu_s_per_100k, o.cpu_s_per_100k) {
                    m.insert(
                        format!("cpu_per_request_inferlb_over_{other}"),
                        json!(a / b),
                    );
                }
            }
        }
        out.insert(point.clone(), serde_json::Value::Object(m));
    }
    serde_json::Value::Object(out)
}

fn main() -> Result<()> {
    let args = Args::parse();
    let layout = layout(args.workers);
    // Pin the load side first: every thread started from here on (load
    // generator, fake replicas) inherits it.
    if !layout.load_cpus.is_empty() {
        let _ = monoio::utils::bind_to_cpu_set(layout.load_cpus.clone());
    }
    let _ = rlimit::increase_nofile_limit(1 << 20);
    println!(
        "layout: {} cores; proxy on CPUs {:?}, load generator and replicas on CPUs {:?}",
        layout.cores, layout.proxy_cpus, layout.load_cpus
    );
    if !args.inferlb.is_file() {
        bail!(
            "{} not found; build it with cargo build --release -p inferlb",
            args.inferlb.display()
        );
    }
    let load_threads = layout.load_cpus.len().max(1);
    let mut names = args.scenarios.clone();
    if names.is_empty() {
        names = [
            "small",
            "rate",
            "stream",
            "connections",
            "churn",
            "skew",
            "prefix",
            "autoscale",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    }
    let dir = std::env::temp_dir().join(format!("inferlb-bench-{}", std::process::id()));
    for name in names {
        let scenario = Scenario::load(&args.scenario_dir.join(format!("{name}.toml")))?;
        println!("\n== {}: {}", scenario.name, scenario.description);
        if scenario.kind == Kind::Prefix {
            prefix(&scenario, &args, &layout, &dir)?;
            continue;
        }
        if scenario.kind == Kind::Autoscale {
            autoscale(&scenario, &args, &layout, &dir)?;
            continue;
        }
        let started = Instant::now();
        let rows = match scenario.kind {
            Kind::Churn => churn(&scenario, &args, &layout, &dir, load_threads)?,
            Kind::Skew => skew(&scenario, &args, &layout, &dir, load_threads)?,
            _ => compare(&scenario, &args, &layout, &dir, load_threads)?,
        };
        print_rows(&scenario, &rows);
        let record = json!({
            "scenario": scenario.name,
            "description": scenario.description,
            "date": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            "machine": procstat::machine(layout.cores),
            "commit": args.commit,
            "settings": {
                "rounds": args.rounds,
                "duration_s": args.duration.unwrap_or(scenario.duration_s),
                "workers": args.workers,
                "layout": layout,
                "scenario": scenario,
            },
            "ratios": ratios(&rows),
            "results": rows,
            "wall_s": started.elapsed().as_secs_f64(),
        });
        report::write_json(&args.out, &scenario.name, &record)?;
        let (title, unit, value): (String, &str, fn(&Row) -> f64) = match scenario.kind {
            Kind::Stream => (
                format!("{}: time to first token, p99", scenario.name),
                "ms",
                |r| r.median.first_token.as_ref().map_or(0.0, |p| p.p99_ms),
            ),
            Kind::Connections => (
                format!("{}: resident memory per idle connection", scenario.name),
                "KiB",
                |r| {
                    r.median
                        .extra
                        .get("rss_per_connection_kib")
                        .and_then(|v| v.as_f64())
                        .unwrap_or(0.0)
                },
            ),
            Kind::Skew => (
                format!("{}: p90 latency per routing rule", scenario.name),
                "ms",
                |r| r.median.latency.p90_ms,
            ),
            _ if scenario.load.iter().any(|l| l.rate.is_some()) => (
                format!("{}: CPU seconds per 100 000 requests", scenario.name),
                "CPU s",
                |r| r.median.cpu_s_per_100k.unwrap_or(0.0),
            ),
            _ => (
                format!("{}: throughput", scenario.name),
                "requests/s",
                |r| r.median.throughput_rps,
            ),
        };
        let bars: Vec<(String, String, f64)> = rows
            .iter()
            .map(|r| (r.point.clone(), r.peer.clone(), value(r)))
            .collect();
        report::write_svg(&args.out, &scenario.name, &title, unit, &bars)?;
        println!(
            "wrote {}/{}.json and .svg",
            args.out.display(),
            scenario.name
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// `autoscale`: one run (a timeline, not a comparison), then the targets.
fn autoscale(s: &Scenario, args: &Args, layout: &Layout, dir: &std::path::Path) -> Result<()> {
    let w = s
        .autoscale
        .as_ref()
        .context("an autoscale scenario needs an [autoscale] table")?;
    let started = Instant::now();
    let spinner = ProgressBar::new_spinner();
    spinner.set_message(format!(
        "inferlb autoscaling, {} s of load steps",
        w.phases.iter().map(|p| p.seconds).sum::<u64>()
    ));
    spinner.enable_steady_tick(Duration::from_millis(200));
    let outcome = inferlb_benches::autoscale::run(&args.inferlb, w, &dir.join("autoscale"));
    spinner.finish_and_clear();
    let outcome = outcome?;
    let rows: Vec<Vec<String>> = outcome
        .timeline
        .iter()
        .filter(|t| t.t % 5 == 0)
        .map(|t| {
            vec![
                t.t.to_string(),
                t.offered.to_string(),
                t.ok.to_string(),
                t.failed.to_string(),
                format!("{:.0}", t.p50_ms),
                format!("{:.0}", t.p99_ms),
                t.desired.to_string(),
                t.starting.to_string(),
                t.in_service.to_string(),
                t.draining.to_string(),
                t.held.to_string(),
                t.in_flight.to_string(),
            ]
        })
        .collect();
    print!(
        "{}",
        report::table(
            &[
                "T S",
                "OFFERED",
                "200",
                "FAILED",
                "P50 MS",
                "P99 MS",
                "DESIRED",
                "STARTING",
                "IN SERVICE",
                "DRAINING",
                "HELD",
                "IN FLIGHT",
            ],
            &rows,
        )
    );
    println!(
        "requests {}, failed {}, longest hold {:.2} s (limit {:.1} s), scale-outs {}, scale-ins {}, shortest scale-in gap {}, steady in flight per replica / target {}",
        outcome.requests,
        outcome.failed,
        outcome.longest_hold_s,
        outcome.hold_limit_s,
        outcome.scale_outs,
        outcome.scale_ins,
        outcome
            .shortest_scale_in_gap_s
            .map_or("-".to_owned(), |g| format!("{g:.0} s")),
        outcome
            .steady_in_flight_ratio
            .map_or("-".to_owned(), |r| format!("{r:.2}"))
    );
    for (target, met) in &outcome.met {
        println!("  {} {target}", if *met { "met:   " } else { "MISSED:" });
    }
    let record = json!({
        "scenario": s.name,
        "description": s.description,
        "date": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        "machine": procstat::machine(layout.cores),
        "commit": args.commit,
        "settings": { "scenario": s },
        "outcome": outcome,
        "wall_s": started.elapsed().as_secs_f64(),
    });
    report::write_json(&args.out, &s.name, &record)?;
    inferlb_benches::autoscale::write_svg(&args.out, &s.name, &outcome)?;
    println!("wrote {}/{}.json and .svg", args.out.display(), s.name);
    Ok(())
}
