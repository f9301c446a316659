//! Results: medians over rounds, ratios, the printed table, the JSON record
//! and the SVG chart.

use std::path::Path;

use anyhow::{Context, Result};
use plotters::prelude::*;
use serde::Serialize;

use crate::loadgen::{Errors, Percentiles};

/// One peer at one load point in one round.
#[derive(Debug, Clone, Serialize)]
pub struct Measurement {
    pub throughput_rps: f64,
    pub completed: u64,
    pub errors: Errors,
    pub latency: Percentiles,
    /// Stream scenarios.
    pub first_token: Option<Percentiles>,
    pub token_gap: Option<Percentiles>,
    /// CPU seconds of the proxy per 100 000 requests.
    pub cpu_s_per_100k: Option<f64>,
    pub peak_rss_kib: Option<u64>,
    /// Scenario-specific figures (RSS per connection, slow replica share...).
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// Every round of one peer at one load point, with the median.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// `connections=64` or `round_robin` (skew).
    pub point: String,
    pub peer: String,
    pub rounds: Vec<Measurement>,
    pub median: Measurement,
}

fn median_f64(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The round whose headline figure is the median (so every figure of the
/// median row comes from one real round, never a mix).
pub fn median(rounds: &[Measurement], key: impl Fn(&Measurement) -> f64) -> Measurement {
    let target = median_f64(rounds.iter().map(&key).collect());
    rounds
        .iter()
        .min_by(|a, b| (key(a) - target).abs().total_cmp(&(key(b) - target).abs()))
        .cloned()
        .expect("at least one round")
}

/// Prints a fixed-width table.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:>w$}"))
            .collect::<Vec<_>>()
            .join("  ")
    };
    let mut out = line(headers.to_vec());
    out.push('\n');
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
        out.push('\n');
    }
    out
}

/// Writes `target/bench/<scenario>.json`.
pub fn write_json(dir: &Path, name: &str, value: &serde_json::Value) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, serde_json::to_string_pretty(value)? + "\n")
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Writes `target/bench/<scenario>.svg`: grouped bars of one figure per peer
/// at each load point. Text is SVG `<text>`, so no font files are needed.
pub fn write_svg(
    dir: &Path,
    name: &str,
    title: &str,
    unit: &str,
    bars: &[(String, String, f64)],
) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!("{name}.svg"));
    let points: Vec<String> = bars.iter().fold(Vec::new(), |mut v, (p, _, _)| {
        if !v.contains(p) {
            v.push(p.clone());
        }
        v
    });
    let peers: Vec<String> = bars.iter().fold(Vec::new(), |mut v, (_, peer, _)| {
        if !v.contains(peer) {
            v.push(peer.clone());
        }
        v
    });
    let max = bars.iter().map(|b| b.2).fold(0.0_f64, f64::max).max(1e-9) * 1.15;
    let slots = (points.len() * (peers.len() + 1)).max(1) as f64;
    let root = SVGBackend::new(&path, (900, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..slots, 0.0..max)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_desc(unit)
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let palette = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
    ];
    for (pi, point) in points.iter().enumerate() {
        for (ki, peer) in peers.iter().enumerate() {
            let Some((_, _, v)) = bars.iter().find(|(p, k, _)| p == point && k == peer) else {
                continue;
            };
            let x0 = (pi * (peers.len() + 1) + ki) as f64 + 0.1;
            let color = palette[ki % palette.len()];
            let bar = chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(x0, 0.0), (x0 + 0.8, *v)],
                    color.filled(),
                )))
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            if pi == 0 {
                bar.label(peer.clone()).legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled())
                });
            }
            chart
                .draw_series(std::iter::once(Text::new(
                    format!("{v:.3}"),
                    (x0, *v + max * 0.01),
                    ("sans-serif", 11),
                )))
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        let x = (pi * (peers.len() + 1)) as f64 + peers.len() as f64 / 2.0 - 0.5;
        chart
            .draw_series(std::iter::once(Text::new(
                point.clone(),
                (x, -max * 0.06),
                ("sans-serif", 13),
            )))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    // One legend entry per peer: the first point's bars carry the labels.
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}
