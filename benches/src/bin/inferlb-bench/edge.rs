//! The edge scenarios: `tls` (handshakes per second, TLS 1.3 full and 1.2
//! resumed; CPU per request at a fixed rate over TLS keep-alive; memory
//! per idle TLS connection) and `h2` (requests per second with h2load over
//! TLS and h2c; memory per idle h2 connection), against nginx and HAProxy
//! with the same ECDSA P-256 certificate, one worker each on the same core.

use inferlb_benches::edge::{self, Handshake};
use inferlb_benches::report::{Measurement, Row};

use super::*;

/// One thing measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Full13,
    Resumed12,
    KeepAliveRate,
    IdleTls,
    H2Tls,
    H2c,
    /// h2c answered by the proxy itself (no replica): the codec and the
    /// proxy's own HTTP/2 handling, with the `h2` crate alone beside them.
    H2cLocal,
    IdleH2,
}

impl Part {
    fn label(self, point: &inferlb_benches::scenario::LoadPoint) -> String {
        let c = point.connections;
        match self {
            Self::Full13 => "TLS 1.3 handshakes (new connection per request)".into(),
            Self::Resumed12 => "TLS 1.2 resumed handshakes".into(),
            Self::KeepAliveRate => format!(
                "HTTP/1.1 over TLS keep-alive, c={c} rate={}",
                point.rate.unwrap_or(0.0)
            ),
            Self::IdleTls => "idle TLS keep-alive connections".into(),
            Self::H2Tls => format!("h2 over TLS, c={c} m=10"),
            Self::H2c => format!("h2c, c={c} m=10"),
            Self::H2cLocal => format!("h2c answered without a replica, c={c} m=10"),
            Self::IdleH2 => "idle h2 connections".into(),
        }
    }

    /// What the median is taken of: handshakes or requests per second,
    /// CPU per request at a fixed rate, memory per idle connection.
    fn key(self) -> fn(&Measurement) -> f64 {
        match self {
            Self::KeepAliveRate => |m| m.cpu_s_per_100k.unwrap_or(0.0),
            Self::IdleTls | Self::IdleH2 => |m| {
                m.extra
                    .get("rss_per_connection_kib")
                    .and_then(|v| v.as_f64())
                    .unwrap_or(0.0)
            },
            _ => |m| m.throughput_rps,
        }
    }
}

pub(crate) fn edge(
    s: &Scenario,
    args: &Args,
    layout: &Layout,
    dir: &std::path::Path,
    load_threads: usize,
) -> Result<Vec<Row>> {
    let parts: &[Part] = match s.name.as_str() {
        "tls" => &[
            Part::Full13,
            Part::Resumed12,
            Part::KeepAliveRate,
            Part::IdleTls,
        ],
        "h2" => &[Part::H2Tls, Part::H2c, Part::H2cLocal, Part::IdleH2],
        other => bail!("edge scenario {other:?}: expected tls or h2"),
    };
    let replicas = start_replicas(s, load_threads)?;
    let addrs: Vec<SocketAddr> = replicas.iter().map(ReplicaHandle::addr).collect();
    let tls = edge::certificate(&dir.join("tls"))?;
    let duration = Duration::from_secs(args.duration.unwrap_or(s.duration_s));
    let proxies: Vec<Peer> = peer_list(s, args)
        .into_iter()
        .filter(|p| !matches!(p, Peer::Direct | Peer::HaproxyTcp))
        .collect();
    let point = s.load.first().context("the scenario has no load point")?;
    let mut rows = Vec::new();
    for &part in parts {
        let mut peers = proxies.clone();
        if part == Part::H2cLocal {
            peers.push(Peer::H2Crate);
        }
        let mut rounds: Vec<Vec<Measurement>> = vec![Vec::new(); peers.len()];
        for _round in 0..args.rounds(s) {
            for (i, &peer) in peers.iter().enumerate() {
                // h2load keeps 10 requests in flight per connection: every
                // peer's upstream keep-alive pool holds that many.
                let in_flight = point.connections * if s.name == "h2" { 10 } else { 1 };
                let mut settings = settings(args, layout, "round_robin", dir, in_flight);
                settings.tls = Some(tls.clone());
                let running = peers::start(peer, &addrs, &settings)?;
                let mut m = measure_part(s, part, &running, point, duration, load_threads)?;
                m.extra.insert("round".into(), json!(rounds[i].len() + 1));
                rounds[i].push(m);
            }
        }
        for (i, peer) in peers.iter().enumerate() {
            rows.push(Row {
                point: part.label(point),
                peer: peer.name().into(),
                median: report::median(&rounds[i], part.key()),
                rounds: rounds[i].clone(),
            });
        }
    }
    drop(replicas);
    Ok(rows)
}

pub(crate) fn empty() -> Measurement {
    Measurement {
        throughput_rps: 0.0,
        completed: 0,
        errors: Default::default(),
        latency: Default::default(),
        first_token: None,
        token_gap: None,
        cpu_s_per_100k: None,
        peak_rss_kib: None,
        extra: serde_json::Map::new(),
    }
}

fn measure_part(
    s: &Scenario,
    part: Part,
    peer: &peers::Running,
    point: &inferlb_benches::scenario::LoadPoint,
    duration: Duration,
    load_threads: usize,
) -> Result<Measurement> {
    let mut m = empty();
    let label = format!("{} {} {:?}", s.name, peer.peer.name(), part);
    eprintln!("  {label}");
    let tls_url = format!("https://127.0.0.1:{}/v1/models", peer.addr.port());
    let h2c = peer.h2c.context("the peer has no h2c listener")?;
    let h2c_url = format!("http://{h2c}/v1/models");
    let threads = load_threads.to_string();
    let secs = format!("{}s", duration.as_secs().max(1));
    match part {
        Part::Full13 | Part::Resumed12 => {
            let kind = if part == Part::Full13 {
                Handshake::Full13
            } else {
                Handshake::Resumed12
            };
            // Warm-up, not measured.
            edge::handshakes(peer.addr, load_threads, Duration::from_millis(500), kind);
            let cpu_before = peer.cpu_seconds();
            let done = edge::handshakes(peer.addr, load_threads, duration, kind);
            let cpu = peer.cpu_seconds() - cpu_before;
            m.completed = done.completed;
            m.throughput_rps = done.completed as f64 / done.elapsed.as_secs_f64();
            m.errors.protocol = done.errors;
            if let Some(h) = &done.latency {
                m.latency = loadgen::Percentiles::of(h);
            }
            if done.completed > 0 {
                m.cpu_s_per_100k = Some(cpu / done.completed as f64 * 100_000.0);
                m.extra.insert(
                    "resumed_share".into(),
                    json!(done.resumed as f64 / done.completed as f64),
                );
            }
        }
        Part::KeepAliveRate => {
            let rate = point.rate.context("the tls scenario needs a rate")?;
            let per_client = (rate / point.connections as f64).ceil().max(1.0);
            let args = ["--h1".into(), format!("--rps={per_client}")];
            h2load_measured(&mut m, peer, point, &threads, &args, &tls_url, &secs)?;
        }
        Part::H2Tls | Part::H2c | Part::H2cLocal => {
            let local_url = format!("http://{h2c}{}", peers::HEALTH_PATH);
            let url = match part {
                Part::H2Tls => &tls_url,
                Part::H2c => &h2c_url,
                _ => &local_url,
            };
            let args = ["-m".into(), "10".into()];
            h2load_measured(&mut m, peer, point, &threads, &args, url, &secs)?;
        }
        Part::IdleTls | Part::IdleH2 => {
            std::thread::sleep(Duration::from_millis(300));
            let baseline = peer.rss_kib();
            let idle = if part == Part::IdleTls {
                edge::idle_tls(peer.addr, s.idle_connections)
            } else {
                edge::idle_h2c(h2c, s.idle_connections)
            };
            // The proxy settles what the last connections allocated.
            std::thread::sleep(Duration::from_millis(500));
            let rss = peer.rss_kib();
            let opened = idle.len();
            if opened > 0 {
                let per = rss.saturating_sub(baseline) as f64 / opened as f64;
                m.extra.insert("rss_per_connection_kib".into(), json!(per));
            }
            m.extra.insert("idle_connections".into(), json!(opened));
            m.errors.connect = (s.idle_connections - opened) as u64;
            drop(idle);
        }
    }
    m.peak_rss_kib = Some(peer.peak_rss_kib());
    Ok(m)
}

/// h2load with `args` against `url` from the point's connections: a
/// second of warm-up, then `secs` measured with the proxy's CPU.
pub(crate) fn h2load_measured(
    m: &mut Measurement,
    peer: &peers::Running,
    point: &inferlb_benches::scenario::LoadPoint,
    threads: &str,
    args: &[String],
    url: &str,
    secs: &str,
) -> Result<()> {
    let run = |duration: &str| {
        let mut all: Vec<String> = vec![
            "-c".into(),
            point.connections.to_string(),
            "-t".into(),
            threads.into(),
            "-D".into(),
            duration.into(),
        ];
        all.extend_from_slice(args);
        all.push(url.into());
        edge::h2load(&all)
    };
    run("1s")?;
    let cpu_before = peer.cpu_seconds();
    let done = run(secs)?;
    let cpu = peer.cpu_seconds() - cpu_before;
    fill(m, &done);
    m.cpu_s_per_100k = Some(cpu / done.succeeded.max(1) as f64 * 100_000.0);
    Ok(())
}

/// An h2load summary as a measurement.
fn fill(m: &mut Measurement, done: &edge::H2load) {
    m.throughput_rps = done.rps;
    m.completed = done.succeeded;
    m.errors.status = done.failed;
    m.extra.insert("mean_ms".into(), json!(done.mean_ms));
    m.extra.insert("max_ms".into(), json!(done.max_ms));
}
