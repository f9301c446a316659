//! The inference-routing scenarios: prefix-aware routing against the
//! other rules and peers, and local autoscaling's timelines.

use super::*;

/// One run's router: inferlb with a rule, an inference router with a
/// policy, or nginx / HAProxy round robin.
#[derive(Debug, Clone)]
struct Run {
    peer: Peer,
    rule: String,
}

/// The prefix workloads: every routing rule of inferlb, the inference
/// routers (`smg`, `vllm-router`) with each policy, and (on the shared
/// prefix workload) nginx and HAProxy round robin, each over fresh engines
/// (cold caches), one worker or core each on the proxy's CPU.
pub(crate) fn prefix(
    s: &Scenario,
    args: &Args,
    layout: &Layout,
    dir: &std::path::Path,
) -> Result<()> {
    let p = s
        .prefix
        .as_ref()
        .context("a prefix scenario needs a [prefix] table")?;
    let duration = Duration::from_secs(args.duration.unwrap_or(s.duration_s));
    println!(
        "cost model (simulated engines): {}",
        p.engine("e").describe()
    );
    let mut runs: Vec<Run> = p
        .routings
        .iter()
        .map(|r| Run {
            peer: Peer::Inferlb,
            rule: r.clone(),
        })
        .collect();
    for router in &p.routers {
        let (program, policy) = router
            .split_once(':')
            .with_context(|| format!("router {router:?}: expected program:policy"))?;
        let peer = match program {
            "smg" => Peer::Smg,
            "vllm-router" => Peer::VllmRouter,
            other => bail!("router {other:?}: expected smg or vllm-router"),
        };
        // `--peers none` measures inferlb alone.
        if args.peers == "none" {
            continue;
        }
        runs.push(Run {
            peer,
            rule: policy.into(),
        });
    }
    let mut commands = Vec::new();
    for run in &runs {
        if matches!(run.peer, Peer::Smg | Peer::VllmRouter) {
            let example = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
            let engines: Vec<SocketAddr> = (0..s.replicas)
                .map(|i| example(31_000 + i as u16))
                .collect();
            let line = peers::router_command(
                run.peer,
                &args.routers_venv,
                example(30_000),
                example(30_001),
                &engines,
                &run.rule,
            )
            .join(" ");
            println!("{}: {line}", run.peer.name());
            commands.push(line);
        }
    }
    let mut results = Vec::new();
    for workload in &p.workloads {
        println!("\n-- {}: {}", workload.name, workload.describe());
        // Closed loop: bodies for up to 100 requests per second per client
        // (they are reused in turn beyond that).
        let rate = workload
            .rate
            .unwrap_or(100.0 * workload.concurrency.unwrap_or(1) as f64);
        let count = (rate * duration.as_secs_f64()).ceil() as usize + 1;
        let bodies = workload.bodies(count);
        let mut these = runs.clone();
        if workload.pattern == inferlb_benches::prefix::Pattern::SharedPrefix
            && workload.rate.is_some()
        {
            for peer in peer_list(s, args) {
                if matches!(peer, Peer::Nginx | Peer::Haproxy) {
                    these.push(Run {
                        peer,
                        rule: "round_robin".into(),
                    });
                }
            }
        }
        let mut rows = Vec::new();
        for run in &these {
            let mut rounds = Vec::new();
            for _ in 0..args.rounds(s) {
                rounds.push(prefix_round(
                    s, p, workload, &bodies, run, args, layout, dir, duration,
                )?);
            }
            rounds.sort_by(|a, b| a.throughput_rps.total_cmp(&b.throughput_rps));
            rows.push(rounds[rounds.len() / 2].clone());
        }
        let text = prefix_table(&rows);
        print!("{text}");
        for line in prefix_targets(workload, &rows) {
            println!("  {line}");
        }
        results.extend(rows);
    }
    let mut text = String::new();
    for workload in &p.workloads {
        let rows: Vec<_> = results
            .iter()
            .filter(|r| r.workload == workload.name)
            .cloned()
            .collect();
        text.push_str(&format!("-- {}: {}\n", workload.name, workload.describe()));
        text.push_str(&prefix_table(&rows));
        for line in prefix_targets(workload, &rows) {
            text.push_str(&format!("  {line}\n"));
        }
        text.push('\n');
    }
    for line in &commands {
        text.push_str(&format!("{line}\n"));
    }
    report::write_table(&args.out, &s.name, &text)?;
    let record = json!({
        "scenario": s.name,
        "description": s.description,
        "date": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        "machine": procstat::machine(layout.cores),
        "commit": args.commit,
        "command": report::command_line(),
        "cost_model": p.engine("e").describe(),
        "router_commands": commands,
        "workloads": p.workloads.iter().map(|w| json!({"name": w.name, "description": w.describe(), "parameters": w})).collect::<Vec<_>>(),
        "settings": {"rounds": args.rounds(s), "duration_s": duration.as_secs(), "workers": args.workers, "layout": layout, "scenario": s},
        "results": results,
    });
    report::write_json(&args.out, &s.name, &record)?;
    // Per workload: throughput, TTFT, the cache hit ratio, balance, and
    // what routing costs the router.
    let mut panels = Vec::new();
    for workload in &p.workloads {
        let name = &workload.name;
        let mut throughput =
            report::Panel::new(&format!("{name}: completed streams"), "requests/s", true);
        let mut ttft50 =
            report::Panel::new(&format!("{name}: time to first token p50"), "ms", false);
        let mut ttft99 =
            report::Panel::new(&format!("{name}: time to first token p99"), "ms", false);
        let mut hits = report::Panel::new(
            &format!("{name}: prefix cache hit ratio"),
            "share of prompt tokens",
            true,
        );
        let mut busiest =
            report::Panel::new(&format!("{name}: busiest replica / mean"), "ratio", false);
        let mut cpu = report::Panel::new(
            &format!("{name}: router CPU per 1 000 requests"),
            "CPU s",
            false,
        );
        for r in results.iter().filter(|r| &r.workload == name) {
            throughput.bar(&r.rule, &r.peer, Some(r.throughput_rps));
            ttft50.bar(&r.rule, &r.peer, Some(r.ttft.p50_ms));
            ttft99.bar(&r.rule, &r.peer, Some(r.ttft.p99_ms));
            hits.bar(&r.rule, &r.peer, Some(r.cache_hit_ratio));
            busiest.bar(&r.rule, &r.peer, Some(r.busiest_share));
            cpu.bar(&r.rule, &r.peer, r.cpu_s_per_1k);
        }
        panels.extend([throughput, ttft50, ttft99, hits, busiest, cpu]);
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

/// One round of one run: fresh engines, the router, the workload.
#[allow(clippy::too_many_arguments)]
fn prefix_round(
    s: &Scenario,
    p: &inferlb_benches::prefix::PrefixScenario,
    workload: &inferlb_benches::prefix::Workload,
    bodies: &[String],
    run: &Run,
    args: &Args,
    layout: &Layout,
    dir: &std::path::Path,
    duration: Duration,
) -> Result<inferlb_benches::prefix::PrefixResult> {
    let engines = inferlb_benches::prefix::start_engines(p, s.replicas)?;
    let addrs: Vec<SocketAddr> = engines.iter().map(|e| e.addr()).collect();
    let mut settings = settings(args, layout, &run.rule, dir, 256);
    let base = settings.inferlb_config.take().unwrap_or_default();
    // Engine metrics at their default interval (250 ms), as a user runs them.
    settings.inferlb_config = Some(format!("{base}[engine_metrics]\nenabled = true\n"));
    let running = peers::start(run.peer, &addrs, &settings)?;
    ready(running.addr)?;
    let spinner = ProgressBar::new_spinner();
    spinner.set_message(format!(
        "{} {} {}",
        workload.name,
        run.peer.name(),
        run.rule
    ));
    spinner.enable_steady_tick(Duration::from_millis(200));
    let cpu_before = running.cpu_seconds();
    let offer = inferlb_benches::prefix::Offer {
        workload,
        bodies,
        duration,
    };
    let mut result = inferlb_benches::prefix::run(
        &run.rule,
        run.peer.name(),
        &[running.addr],
        &offer,
        &engines,
    );
    let cpu = running.cpu_seconds() - cpu_before;
    spinner.finish_and_clear();
    if result.completed > 0 {
        result.cpu_s_per_1k = Some(cpu / result.completed as f64 * 1000.0);
    }
    result.peak_rss_mib = Some(running.peak_rss_kib() as f64 / 1024.0);
    drop(running);
    drop(engines);
    Ok(result)
}

/// Waits until the router lists the engines' models (an inference router
/// listens before its workers are registered).
pub(crate) fn ready(addr: SocketAddr) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ok = std::net::TcpStream::connect(addr).ok().and_then(|mut c| {
            use std::io::{Read, Write};
            c.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
            c.write_all(b"GET /v1/models HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
                .ok()?;
            let mut head = [0u8; 12];
            c.read_exact(&mut head).ok()?;
            Some(head.ends_with(b"200"))
        });
        if ok == Some(true) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the router on {addr} never listed the engines' models");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub(crate) fn prefix_table(rows: &[inferlb_benches::prefix::PrefixResult]) -> String {
    let table: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.rule.clone(),
                r.peer.clone(),
                format!("{:.0}", r.throughput_rps),
                format!("{:.1}", r.ttft.p50_ms),
                format!("{:.1}", r.ttft.p99_ms),
                format!("{:.1}", r.e2e.p99_ms),
                format!("{:.2}", r.cache_hit_ratio),
                format!("{:.2}", r.busiest_share),
                r.errors.to_string(),
                r.cpu_s_per_1k.map_or("-".into(), |c| format!("{c:.3}")),
                r.peak_rss_mib.map_or("-".into(), |m| format!("{m:.1}")),
            ]
        })
        .collect();
    report::table(
        &[
            "RULE",
            "ROUTER",
            "REQ/S",
            "TTFT P50 MS",
            "TTFT P99 MS",
            "E2E P99 MS",
            "CACHE HITS",
            "BUSIEST/MEAN",
            "ERRORS",
            "CPU S/1K",
            "PEAK RSS MIB",
        ],
        &table,
    )
}

/// The targets for one workload, each line "met" or "MISSED".
fn prefix_targets(
    workload: &inferlb_benches::prefix::Workload,
    rows: &[inferlb_benches::prefix::PrefixResult],
) -> Vec<String> {
    use inferlb_benches::prefix::Pattern;
    let find = |peer: &str, rule: &str| rows.iter().find(|r| r.peer == peer && r.rule == rule);
    let Some(ours) = find("inferlb", "prefix") else {
        return Vec::new();
    };
    let peers: Vec<_> = rows
        .iter()
        .filter(|r| r.peer == "smg" || r.peer == "vllm-router")
        .collect();
    let mut lines = Vec::new();
    let mut check = |met: bool, what: String| {
        lines.push(format!(
            "{} {what}",
            if met { "met:   " } else { "MISSED:" }
        ));
    };
    if workload.pattern == Pattern::Unique {
        if let Some(least) = find("inferlb", "least_load") {
            check(
                ours.throughput_rps >= 0.95 * least.throughput_rps,
                format!(
                    "throughput within 5 % of least_load: {:.0} vs {:.0} req/s",
                    ours.throughput_rps, least.throughput_rps
                ),
            );
            check(
                ours.ttft.p50_ms <= 1.05 * least.ttft.p50_ms,
                format!(
                    "TTFT p50 within 5 % of least_load: {:.1} vs {:.1} ms",
                    ours.ttft.p50_ms, least.ttft.p50_ms
                ),
            );
        }
    } else if !peers.is_empty() {
        let best = |key: fn(&inferlb_benches::prefix::PrefixResult) -> f64, higher: bool| {
            peers
                .iter()
                .map(|r| (key(r), format!("{} {}", r.peer, r.rule)))
                .reduce(|a, b| if (a.0 > b.0) == higher { a } else { b })
                .unwrap_or((0.0, String::new()))
        };
        // "Matches": within 1 % of completed requests (a count over the
        // run: routers that all serve the whole offered load match), and
        // within half a point of cache hits.
        let (rps, who) = best(|r| r.throughput_rps, true);
        check(
            ours.throughput_rps >= 0.99 * rps,
            format!(
                "throughput matches (within 1 %) or beats the best peer: {:.1} vs {rps:.1} req/s ({who})",
                ours.throughput_rps
            ),
        );
        let (hits, who) = best(|r| r.cache_hit_ratio, true);
        check(
            ours.cache_hit_ratio >= hits - 0.005,
            format!(
                "cache hit ratio matches (within 0.005) or beats the best peer: {:.3} vs {hits:.3} ({who})",
                ours.cache_hit_ratio
            ),
        );
        let (p50, who) = best(|r| r.ttft.p50_ms, false);
        check(
            ours.ttft.p50_ms <= p50,
            format!(
                "TTFT p50 ≤ the best peer: {:.1} vs {p50:.1} ms ({who})",
                ours.ttft.p50_ms
            ),
        );
        let (p99, who) = best(|r| r.ttft.p99_ms, false);
        let factor = if workload.pattern == Pattern::Zipf || workload.concurrency.is_some() {
            0.8
        } else {
            1.0
        };
        check(
            ours.ttft.p99_ms <= factor * p99,
            format!(
                "TTFT p99 ≤ {factor}× the best peer: {:.1} vs {p99:.1} ms ({who})",
                ours.ttft.p99_ms
            ),
        );
        check(
            ours.busiest_share <= 1.3,
            format!("busiest replica ≤ 1.3× the mean: {:.2}", ours.busiest_share),
        );
    }
    let lean = |key: fn(&inferlb_benches::prefix::PrefixResult) -> Option<f64>| {
        peers.iter().filter_map(|r| key(r)).reduce(f64::min)
    };
    if let (Some(cpu), Some(peer)) = (ours.cpu_s_per_1k, lean(|r| r.cpu_s_per_1k)) {
        check(
            cpu <= 0.5 * peer,
            format!("router CPU per request ≤ 0.5× the leaner peer: {cpu:.3} vs {peer:.3} s/1k"),
        );
    }
    if let (Some(rss), Some(peer)) = (ours.peak_rss_mib, lean(|r| r.peak_rss_mib)) {
        check(
            rss <= 0.5 * peer,
            format!("peak RSS ≤ 0.5× the leaner peer: {rss:.1} vs {peer:.1} MiB"),
        );
    }
    lines
}

/// `autoscale`: one run (a timeline, not a comparison), then the targets.
pub(crate) fn autoscale(
    s: &Scenario,
    args: &Args,
    layout: &Layout,
    dir: &std::path::Path,
) -> Result<()> {
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
    let mut text = report::table(
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
    );
    text.push_str(&format!(
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
    ));
    for (target, met) in &outcome.met {
        text.push_str(&format!(
            "\n  {} {target}",
            if *met { "met:   " } else { "MISSED:" }
        ));
    }
    text.push('\n');
    print!("{text}");
    report::write_table(&args.out, &s.name, &text)?;
    let record = json!({
        "scenario": s.name,
        "description": s.description,
        "date": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        "machine": procstat::machine(layout.cores),
        "commit": args.commit,
        "command": report::command_line(),
        "settings": { "scenario": s },
        "outcome": outcome,
        "wall_s": started.elapsed().as_secs_f64(),
    });
    report::write_json(&args.out, &s.name, &record)?;
    inferlb_benches::autoscale::write_svg(&args.out, &s.name, &outcome)?;
    report::write_index(&args.out)?;
    report::announce(&args.out, &s.name);
    Ok(())
}
