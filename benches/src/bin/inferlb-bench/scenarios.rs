//! The scenarios with a shape of their own: idle connections' memory,
//! admin churn under load, a slow replica among fast ones.

use super::*;

/// Size of the header each idle connection's warm-up request carries.
pub(crate) const WARMUP_HEADER_BYTES: usize = 12 * 1024;

/// Idle connections held on the peer, with light load; RSS per connection
/// is the growth of the peer's resident memory over its idle baseline.
pub(crate) fn connections_measurement(
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
    let targets_first = targets[0];
    let mut m = measure(s, peer, targets, point, duration, load_threads);
    let rss = peer.rss_kib();
    let opened = idle.opened();
    drop(idle);
    if peer.peer != Peer::Direct && opened > 0 {
        let per = (rss.saturating_sub(baseline)) as f64 / opened as f64;
        m.extra.insert("rss_per_connection_kib".into(), json!(per));
    }
    m.extra.insert("idle_connections".into(), json!(opened));
    if peer.peer != Peer::Direct {
        burst(peer, targets_first, &mut m);
    }
    m.extra.insert("rss_kib".into(), json!(rss));
    m.extra.insert("baseline_rss_kib".into(), json!(baseline));
    m
}

/// A raw HTTP call to the admin API; returns the status.
pub(crate) fn admin_call(admin: SocketAddr, method: &str, path: &str, body: &str) -> u16 {
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
pub(crate) fn churn(
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
    for _ in 0..args.rounds(s) {
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
pub(crate) fn skew(
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
        for _ in 0..args.rounds(s) {
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

/// Connections of the flood: each sends most of a 15 KiB head, then waits.
const FLOOD_CONNECTIONS: usize = 8000;
const FLOOD_HEAD_BYTES: usize = 15 * 1024;
/// Connections of the concurrent burst: all at once, each with a 12 KiB
/// header in two segments and a 64 KiB response, then idle.
const BURST_CONNECTIONS: usize = 200;
/// How long after the flood memory is measured again.
const SETTLE: Duration = Duration::from_secs(60);

/// The burst variants: what a flood of partial heads leaves behind a
/// minute after it ends, and what idle connections cost after a concurrent
/// burst of large requests (the sequential warm-up above takes them one at
/// a time, which hides what a burst leaves in the allocator).
fn burst(peer: &peers::Running, target: SocketAddr, m: &mut Measurement) {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    std::thread::sleep(Duration::from_millis(500));
    let before = peer.rss_kib();
    let partial = format!(
        "GET /v1/models HTTP/1.1\r\nHost: bench\r\nX-Padding: {}",
        "f".repeat(FLOOD_HEAD_BYTES)
    );
    let mut flood = Vec::with_capacity(FLOOD_CONNECTIONS);
    for _ in 0..FLOOD_CONNECTIONS {
        let Ok(mut stream) = TcpStream::connect(target) else {
            break;
        };
        // A peer that refuses the head early may close on the write.
        let _ = stream.write_all(partial.as_bytes());
        flood.push(stream);
    }
    std::thread::sleep(Duration::from_secs(2));
    let flood_peak = peer.rss_kib();
    let flooded = flood.len();
    drop(flood);
    std::thread::sleep(SETTLE);
    let after_flood = peer.rss_kib();
    m.extra.insert("flood_connections".into(), json!(flooded));
    m.extra.insert("flood_before_rss_kib".into(), json!(before));
    m.extra
        .insert("flood_peak_rss_kib".into(), json!(flood_peak));
    m.extra
        .insert("flood_after_60s_rss_kib".into(), json!(after_flood));
    m.extra.insert(
        "flood_after_60s_ratio".into(),
        json!(after_flood as f64 / before.max(1) as f64),
    );

    let base = peer.rss_kib();
    let head = format!(
        "GET /v1/models HTTP/1.1\r\nHost: bench\r\nX-Padding: {}\r\n\r\n",
        "p".repeat(WARMUP_HEADER_BYTES)
    );
    let (first, second) = head.as_bytes().split_at(head.len() / 2);
    let mut conns: Vec<TcpStream> = (0..BURST_CONNECTIONS)
        .filter_map(|_| TcpStream::connect(target).ok())
        .collect();
    for c in &mut conns {
        let _ = c.write_all(first);
    }
    std::thread::sleep(Duration::from_millis(50));
    for c in &mut conns {
        let _ = c.write_all(second);
    }
    let mut served = 0;
    for c in &mut conns {
        let _ = c.set_read_timeout(Some(Duration::from_secs(10)));
        if read_one_response(c).is_some() {
            served += 1;
        }
    }
    std::thread::sleep(Duration::from_secs(2));
    let idle = peer.rss_kib();
    m.extra.insert("burst_connections".into(), json!(served));
    m.extra.insert(
        "burst_rss_per_idle_connection_kib".into(),
        json!(idle.saturating_sub(base) as f64 / served.max(1) as f64),
    );
    drop(conns);

    /// Reads one response (head and Content-Length body); `None` on failure.
    fn read_one_response(stream: &mut TcpStream) -> Option<()> {
        let mut data = Vec::new();
        let mut buf = [0u8; 65536];
        let head_end = loop {
            let n = stream.read(&mut buf).ok().filter(|&n| n > 0)?;
            data.extend_from_slice(&buf[..n]);
            if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
        };
        let head = String::from_utf8_lossy(&data[..head_end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())?;
        while data.len() < head_end + length {
            let n = stream.read(&mut buf).ok().filter(|&n| n > 0)?;
            data.extend_from_slice(&buf[..n]);
        }
        Some(())
    }
}
