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

mod cluster;
mod edge;
mod grpc;
mod routers;
mod rows;
mod scenarios;

use routers::{autoscale, prefix};
use rows::{print_rows, ratios};
use scenarios::{churn, connections_measurement, skew};

/// Load tests of inferlb against direct, nginx and HAProxy.
#[derive(Debug, Parser)]
struct Args {
    /// Scenarios to run (names of benches/scenarios/*.toml); all when none.
    scenarios: Vec<String>,
    /// Seconds per measurement [default: the scenario's].
    #[arg(long)]
    duration: Option<u64>,
    /// Rounds, interleaved A B C A B C; medians are reported [default: the
    /// scenario's `rounds`, else 3].
    #[arg(long)]
    rounds: Option<usize>,
    /// Peers besides inferlb and direct: nginx, haproxy, haproxy-tcp (the L4
    /// relay; also run whenever haproxy is), or none (which also leaves out
    /// the `prefix` scenario's inference routers, smg and vllm-router).
    #[arg(long, default_value = "nginx,haproxy")]
    peers: String,
    /// Worker threads (processes for nginx) of every proxy.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// The inferlb binary.
    #[arg(long, default_value = "target/release/inferlb")]
    inferlb: PathBuf,
    /// TOML appended to inferlb's config in every scenario, to measure what
    /// a setting costs (e.g. an `[access_log]`).
    #[arg(long, value_name = "FILE")]
    inferlb_extra_config: Option<PathBuf>,
    /// Where scenarios live.
    #[arg(long, default_value = "benches/scenarios")]
    scenario_dir: PathBuf,
    /// Where results go.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// The commit being measured (recorded in the JSON).
    #[arg(long, default_value = "unknown")]
    commit: String,
    /// The venv with the inference routers `smg` and `vllm-router` (the
    /// `prefix` scenario's peers; `cargo xtask bench` installs it).
    #[arg(long, default_value = "target/routers-venv")]
    routers_venv: PathBuf,
    /// Serve h2c on ADDR with the `h2` crate alone (the `h2` scenario's
    /// codec floor) instead of running scenarios.
    #[arg(long, hide = true, value_name = "ADDR")]
    serve_h2_crate: Option<SocketAddr>,
}

impl Args {
    /// Rounds for scenario `s`: `--rounds`, else the scenario's, else 3.
    fn rounds(&self, s: &Scenario) -> usize {
        self.rounds.or(s.rounds).unwrap_or(3).max(1)
    }
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
        routers_venv: args.routers_venv.clone(),
        upstream_keepalive: connections.max(64) * 2,
        // The same keep-alive pool nginx gets, so no peer closes and reopens
        // upstream connections under load while another keeps them.
        inferlb_config: Some(format!(
            "[upstream]\nmax_idle_per_replica = {}\n{}",
            connections.max(64) * 2,
            args.inferlb_extra_config
                .as_ref()
                .and_then(|p| std::fs::read_to_string(p).ok())
                .unwrap_or_default()
        )),
        tls: None,
        grpc: false,
    }
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
        for _round in 0..args.rounds(s) {
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

fn main() -> Result<()> {
    let args = Args::parse();
    if let Some(addr) = args.serve_h2_crate {
        return inferlb_benches::h2codec::serve(addr);
    }
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
        if scenario.kind == Kind::Cluster {
            cluster::cluster(&scenario, &args, &layout, &dir)?;
            continue;
        }
        let started = Instant::now();
        let rows = match scenario.kind {
            Kind::Churn => churn(&scenario, &args, &layout, &dir, load_threads)?,
            Kind::Skew => skew(&scenario, &args, &layout, &dir, load_threads)?,
            Kind::Edge => edge::edge(&scenario, &args, &layout, &dir, load_threads)?,
            Kind::Grpc => grpc::grpc(&scenario, &args, &layout, &dir, load_threads)?,
            _ => compare(&scenario, &args, &layout, &dir, load_threads)?,
        };
        let table = print_rows(&scenario, &rows);
        let record = json!({
            "scenario": scenario.name,
            "description": scenario.description,
            "date": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            "machine": procstat::machine(layout.cores),
            "commit": args.commit,
            "command": report::command_line(),
            "settings": {
                "rounds": args.rounds(&scenario),
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
        report::write_table(&args.out, &scenario.name, &table)?;
        let title = format!("{}: {}", scenario.name, scenario.description);
        report::write_figure(
            &args.out,
            &scenario.name,
            &title,
            &rows::panels(&scenario, &rows),
        )?;
        report::write_index(&args.out)?;
        report::announce(&args.out, &scenario.name);
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
