//! The inference-routing scenarios: prefix-aware routing against the
//! other rules and peers, and local autoscaling's timelines.

use super::*;

/// The shared-prefix workload: every routing rule of inferlb, then nginx
/// and HAProxy round robin, each over fresh engines (cold caches).
pub(crate) fn prefix(
    s: &Scenario,
    args: &Args,
    layout: &Layout,
    dir: &std::path::Path,
) -> Result<()> {
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
    let text = report::table(
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
        &table,
    );
    print!("{text}");
    report::write_table(&args.out, &s.name, &text)?;
    let record = json!({
        "scenario": s.name,
        "description": s.description,
        "date": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        "machine": procstat::machine(layout.cores),
        "commit": args.commit,
        "command": report::command_line(),
        "cost_model": w.engine("e").describe(),
        "settings": {"rounds": args.rounds, "duration_s": duration.as_secs(), "workers": args.workers, "layout": layout, "scenario": s},
        "results": results,
    });
    report::write_json(&args.out, &s.name, &record)?;
    // The headline beside throughput: time to first token (what the cache
    // saves), the cache hit ratio, and how evenly the replicas were loaded.
    let mut throughput = report::Panel::new("completed streams", "requests/s", true);
    let mut ttft50 = report::Panel::new("time to first token p50", "ms", false);
    let mut ttft99 = report::Panel::new("time to first token p99", "ms", false);
    let mut hits = report::Panel::new("prefix cache hit ratio", "share of prompt tokens", true);
    let mut busiest = report::Panel::new("busiest replica / mean (1 = even)", "ratio", false);
    for r in &results {
        throughput.bar(&r.rule, &r.peer, Some(r.throughput_rps));
        ttft50.bar(&r.rule, &r.peer, Some(r.ttft.p50_ms));
        ttft99.bar(&r.rule, &r.peer, Some(r.ttft.p99_ms));
        hits.bar(&r.rule, &r.peer, Some(r.cache_hit_ratio));
        busiest.bar(&r.rule, &r.peer, Some(r.busiest_share));
    }
    report::write_figure(
        &args.out,
        &s.name,
        &format!("{}: {}", s.name, s.description),
        &[throughput, ttft50, ttft99, hits, busiest],
    )?;
    report::write_index(&args.out)?;
    report::announce(&args.out, &s.name);
    Ok(())
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
