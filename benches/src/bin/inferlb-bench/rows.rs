//! The results as a table and as ratios between peers.

use super::*;

/// Prints the scenario's table and returns it.
pub(crate) fn print_rows(s: &Scenario, rows: &[Row]) -> String {
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
            Kind::Connections => {
                let f = |key: &str| m.extra.get(key).and_then(serde_json::Value::as_f64);
                let mut text = f("rss_per_connection_kib")
                    .map(|v| format!("{v:.2} KiB/conn"))
                    .unwrap_or_default();
                if let (Some(burst), Some(peak), Some(after)) = (
                    f("burst_rss_per_idle_connection_kib"),
                    f("flood_peak_rss_kib"),
                    f("flood_after_60s_ratio"),
                ) {
                    text.push_str(&format!(
                        "; after a burst {burst:.2} KiB/conn; flood peak {:.0} MiB, 60 s later {after:.2}x before",
                        peak / 1024.0
                    ));
                }
                text
            }
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
            Kind::Edge => {
                let f = |key: &str| m.extra.get(key).and_then(serde_json::Value::as_f64);
                let mut notes = Vec::new();
                if let Some(v) = f("rss_per_connection_kib") {
                    notes.push(format!("{v:.2} KiB/conn"));
                }
                if let Some(v) = f("resumed_share") {
                    notes.push(format!("{:.0}% resumed", v * 100.0));
                }
                if let (Some(mean), Some(max)) = (f("mean_ms"), f("max_ms")) {
                    notes.push(format!("h2load mean {mean:.2} ms, max {max:.1} ms"));
                }
                notes.join("; ")
            }
            Kind::Grpc => {
                // The latency this proxy adds to a call, at the p99.
                let direct = rows
                    .iter()
                    .find(|d| d.point == r.point && d.peer == "direct")
                    .map(|d| d.median.latency.p99_ms);
                match direct {
                    Some(d) if r.peer != "direct" => {
                        format!("p99 +{:.2} ms over direct", m.latency.p99_ms - d)
                    }
                    _ => String::new(),
                }
            }
            Kind::Requests | Kind::Prefix | Kind::Autoscale | Kind::Cluster => String::new(),
        };
        row.push(extra);
        table.push(row);
    }
    let text = report::table(
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
            "notes",
        ],
        &table,
    );
    println!("{text}");
    text
}

/// One figure of a measurement, when it was measured.
type Figure = fn(&Measurement) -> Option<f64>;

/// The figure's panels: what a reader compares between peers. Throughput,
/// p50 and p99 latency, CPU per request and memory for every scenario that
/// measured them, and each kind's own figures (time to first token, memory
/// per connection, the slow replica's share).
pub(crate) fn panels(s: &Scenario, rows: &[Row]) -> Vec<report::Panel> {
    use report::Panel;
    let mut throughput = Panel::new("throughput", "requests/s", true);
    let mut p50 = Panel::new("latency p50", "ms", false);
    let mut p99 = Panel::new("latency p99", "ms", false);
    let mut cpu = Panel::new("CPU per 100 000 requests", "CPU s", false);
    let mut rss = Panel::new("peak memory", "MiB", false);
    let mut own: Vec<(Panel, Figure)> = match s.kind {
        Kind::Stream => vec![
            (Panel::new("time to first token p50", "ms", false), |m| {
                m.first_token.as_ref().map(|p| p.p50_ms)
            }),
            (Panel::new("time to first token p99", "ms", false), |m| {
                m.first_token.as_ref().map(|p| p.p99_ms)
            }),
        ],
        Kind::Connections => vec![
            (
                Panel::new("memory per idle connection", "KiB", false),
                |m| {
                    m.extra
                        .get("rss_per_connection_kib")
                        .and_then(|v| v.as_f64())
                },
            ),
            (
                Panel::new("memory per idle connection after a burst", "KiB", false),
                |m| {
                    m.extra
                        .get("burst_rss_per_idle_connection_kib")
                        .and_then(|v| v.as_f64())
                },
            ),
        ],
        Kind::Edge => vec![(
            Panel::new("memory per idle connection", "KiB", false),
            |m| {
                m.extra
                    .get("rss_per_connection_kib")
                    .and_then(|v| v.as_f64())
            },
        )],
        Kind::Skew => vec![(
            Panel::new("share of requests on the slow replica", "%", false),
            |m| {
                m.extra
                    .get("slow_replica_share")
                    .and_then(|v| v.as_f64())
                    .map(|v| v * 100.0)
            },
        )],
        _ => Vec::new(),
    };
    for r in rows {
        let m = &r.median;
        throughput.bar(&r.point, &r.peer, Some(m.throughput_rps));
        p50.bar(&r.point, &r.peer, Some(m.latency.p50_ms));
        p99.bar(&r.point, &r.peer, Some(m.latency.p99_ms));
        cpu.bar(&r.point, &r.peer, m.cpu_s_per_100k);
        rss.bar(&r.point, &r.peer, m.peak_rss_kib.map(|k| k as f64 / 1024.0));
        for (panel, value) in &mut own {
            panel.bar(&r.point, &r.peer, value(m));
        }
    }
    let mut panels = vec![throughput, p50, p99, cpu, rss];
    panels.extend(own.into_iter().map(|(panel, _)| panel));
    panels
}

pub(crate) fn ratios(rows: &[Row]) -> serde_json::Value {
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
