//! The fleet (`cluster`): a real three-member etcd on loopback, how long an
//! admin change made through one instance takes to be routable on every
//! other, and prefix routing's cache hits with two instances in front of
//! the same engines against one.

use super::*;
use inferlb_benches::prefix::{PrefixResult, PrefixScenario, Workload};
use inferlb_testkit::{EtcdCluster, RawClient};

/// The fleet's `[cluster]` lines for instance `i` of fleet `name`.
fn cluster_lines(etcd: &EtcdCluster, name: &str, i: usize) -> String {
    format!(
        "\n[cluster]\netcd = {}\nname = \"{name}\"\ninstance = \"lb-{i}\"\n",
        etcd.toml_endpoints()
    )
}

pub(crate) fn cluster(
    s: &Scenario,
    args: &Args,
    layout: &Layout,
    dir: &std::path::Path,
) -> Result<()> {
    let c = s
        .cluster
        .as_ref()
        .context("a cluster scenario needs a [cluster] table")?;
    let p = s
        .prefix
        .as_ref()
        .context("a cluster scenario needs a [prefix] table with its workloads")?;
    std::fs::create_dir_all(dir)?;
    let etcd_dir = dir.join("etcd");
    let _ = std::fs::remove_dir_all(&etcd_dir);
    std::fs::create_dir_all(&etcd_dir)?;
    let etcd = EtcdCluster::start(&etcd_dir, 3);
    println!("etcd: 3 members on {}", etcd.endpoints().join(", "));

    let convergence = converge(c, args, layout, dir, &etcd)?;
    let mut text = format!(
        "admin change through lb-0 -> routable on each of the {} other instances \
         ({} changes, {} observations): p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms\n",
        c.instances - 1,
        c.changes,
        convergence.count,
        convergence.p50_ms,
        convergence.p90_ms,
        convergence.p99_ms,
        convergence.max_ms
    );
    let met = convergence.p99_ms <= 1000.0;
    text.push_str(&format!(
        "  {} p99 within 1 s: {:.1} ms\n\n",
        if met { "met:   " } else { "MISSED:" },
        convergence.p99_ms
    ));
    print!("{text}");

    let duration = Duration::from_secs(args.duration.unwrap_or(s.duration_s));
    let mut results = Vec::new();
    for (n, workload) in p.workloads.iter().enumerate() {
        println!("-- {}: {}", workload.name, workload.describe());
        let rate = workload
            .rate
            .unwrap_or(100.0 * workload.concurrency.unwrap_or(1) as f64);
        let bodies = workload.bodies((rate * duration.as_secs_f64()).ceil() as usize + 1);
        let mut rows = Vec::new();
        for (label, fleet) in [
            ("inferlb x1", None),
            ("inferlb x2 hash", Some("hash")),
            ("inferlb x2 fewest", Some("fewest")),
        ] {
            let name = format!("bench-{n}-{}", fleet.unwrap_or("one"));
            let fleet = fleet.map(|placement| (placement, &etcd, name.as_str()));
            rows.push(prefix_fleet_round(
                s, p, workload, &bodies, label, fleet, args, layout, dir, duration,
            )?);
        }
        let table = routers::prefix_table(&rows);
        print!("{table}");
        let line = hit_target(&rows);
        println!("  {line}");
        text.push_str(&format!(
            "-- {}: {}\n{table}  {line}\n\n",
            workload.name,
            workload.describe()
        ));
        results.extend(rows);
    }
    report::write_table(&args.out, &s.name, &text)?;
    let record = json!({
        "scenario": s.name,
        "description": s.description,
        "date": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        "machine": procstat::machine(layout.cores),
        "commit": args.commit,
        "command": report::command_line(),
        "convergence": convergence,
        "settings": {"duration_s": duration.as_secs(), "workers": args.workers, "layout": layout, "scenario": s},
        "results": results,
    });
    report::write_json(&args.out, &s.name, &record)?;
    // Per workload: cache hits and TTFT, one instance against two.
    let mut panels = Vec::new();
    for workload in &p.workloads {
        let name = &workload.name;
        let mut hits = report::Panel::new(
            &format!("{name}: prefix cache hit ratio"),
            "share of prompt tokens",
            true,
        );
        let mut ttft99 =
            report::Panel::new(&format!("{name}: time to first token p99"), "ms", false);
        for r in results.iter().filter(|r| &r.workload == name) {
            hits.bar(&r.rule, &r.peer, Some(r.cache_hit_ratio));
            ttft99.bar(&r.rule, &r.peer, Some(r.ttft.p99_ms));
        }
        panels.extend([hits, ttft99]);
    }
    report::write_figure(
        &args.out,
        &s.name,
        &format!("{}: {}", s.name, s.description),
        &panels,
    )?;
    report::write_index(&args.out)?;
    report::announce(&args.out, &s.name);
    Ok(())
}

/// Two instances' hit ratio (new prefixes hashed) against one's.
fn hit_target(rows: &[PrefixResult]) -> String {
    let hits = |peer: &str| {
        rows.iter()
            .find(|r| r.peer == peer)
            .map(|r| r.cache_hit_ratio)
    };
    match (hits("inferlb x1"), hits("inferlb x2 hash")) {
        (Some(one), Some(two)) => {
            let ratio = two / one.max(1e-9);
            format!(
                "{} two instances keep >= 0.9x one instance's cache hits: {two:.3} vs {one:.3} = {ratio:.2}x",
                if ratio >= 0.9 { "met:   " } else { "MISSED:" }
            )
        }
        _ => "no comparison".to_owned(),
    }
}

/// Starts `instances` fleet members, adds `changes` replicas through the
/// first, and times each until every other instance lists it.
fn converge(
    c: &inferlb_benches::scenario::ClusterScenario,
    args: &Args,
    layout: &Layout,
    dir: &std::path::Path,
    etcd: &EtcdCluster,
) -> Result<Percentiles> {
    let mut running = Vec::new();
    for i in 0..c.instances {
        let mut settings = settings(args, layout, "round_robin", dir, 64);
        let base = settings.inferlb_config.take().unwrap_or_default();
        settings.inferlb_config = Some(format!(
            "{base}\n[health]\nenabled = false\n{}",
            cluster_lines(etcd, "bench-converge", i)
        ));
        running.push(peers::start(Peer::Inferlb, &[], &settings)?);
    }
    let admins: Vec<SocketAddr> = running.iter().filter_map(|r| r.admin).collect();
    let mut histogram = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let started = Instant::now();
    for n in 0..c.changes {
        let id = format!("change-{n}");
        // Nothing listens there: health checks are off, so it is routable
        // as soon as an instance applies it.
        let body = format!(r#"{{"address": "127.0.0.1:{}", "id": "{id}"}}"#, 40_000 + n);
        let mut client = RawClient::connect(admins[0])?;
        client.send(
            format!(
                "POST /v1/replicas HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )?;
        let answer = client.read_response()?;
        if answer.status != 201 {
            bail!("adding {id} through lb-0 answered {}", answer.status);
        }
        let committed = Instant::now();
        let mut waiting: Vec<SocketAddr> = admins[1..].to_vec();
        while !waiting.is_empty() {
            if committed.elapsed() > Duration::from_secs(30) {
                bail!("{id} never reached {waiting:?}");
            }
            waiting.retain(|&admin| {
                // The admin API serves a loopback Host only (no token).
                let seen = RawClient::connect(admin)
                    .and_then(|mut c| {
                        c.send(
                            format!("GET /v1/replicas/{id} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                                .as_bytes(),
                        )?;
                        c.read_response()
                    })
                    .is_ok_and(|r| r.status == 200);
                if seen {
                    let _ = histogram.record(committed.elapsed().as_micros().max(1) as u64);
                }
                !seen
            });
        }
    }
    println!(
        "{} changes in {:.1} s",
        c.changes,
        started.elapsed().as_secs_f64()
    );
    drop(running);
    Ok(Percentiles::of(&histogram))
}

/// One run: fresh engines, one inferlb or a fleet of two (new prefixes
/// placed by `placement`), the workload split evenly over the instances.
#[allow(clippy::too_many_arguments)]
fn prefix_fleet_round(
    s: &Scenario,
    p: &PrefixScenario,
    workload: &Workload,
    bodies: &[String],
    label: &str,
    fleet: Option<(&str, &EtcdCluster, &str)>,
    args: &Args,
    layout: &Layout,
    dir: &std::path::Path,
    duration: Duration,
) -> Result<PrefixResult> {
    let engines = inferlb_benches::prefix::start_engines(p, s.replicas)?;
    let addrs: Vec<SocketAddr> = engines.iter().map(|e| e.addr()).collect();
    let mut running = Vec::new();
    let count = if fleet.is_some() { 2 } else { 1 };
    for i in 0..count {
        let mut settings = settings(args, layout, "prefix", dir, 256);
        let base = settings.inferlb_config.take().unwrap_or_default();
        let mut config = format!("{base}\n[engine_metrics]\nenabled = true\n");
        if let Some((placement, etcd, name)) = fleet {
            config.push_str(&format!("[prefix]\nnew_prefix = \"{placement}\"\n"));
            config.push_str(&cluster_lines(etcd, name, i));
        }
        settings.inferlb_config = Some(config);
        running.push(peers::start(Peer::Inferlb, &addrs, &settings)?);
    }
    let targets: Vec<SocketAddr> = running.iter().map(|r| r.addr).collect();
    for &target in &targets {
        routers::ready(target)?;
    }
    let cpu_before: f64 = running.iter().map(|r| r.cpu_seconds()).sum();
    let offer = inferlb_benches::prefix::Offer {
        workload,
        bodies,
        duration,
    };
    let mut result = inferlb_benches::prefix::run("prefix", label, &targets, &offer, &engines);
    let cpu: f64 = running.iter().map(|r| r.cpu_seconds()).sum::<f64>() - cpu_before;
    if result.completed > 0 {
        result.cpu_s_per_1k = Some(cpu / result.completed as f64 * 1000.0);
    }
    result.peak_rss_mib = running
        .iter()
        .map(|r| r.peak_rss_kib() as f64 / 1024.0)
        .reduce(f64::max);
    drop(running);
    drop(engines);
    Ok(result)
}
