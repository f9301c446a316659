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

/// One panel of a scenario's figure: one figure per peer at each load
/// point.
#[derive(Debug, Clone)]
pub struct Panel {
    pub title: String,
    pub unit: String,
    /// Throughput: the best bar is the highest; latency, CPU, memory: the
    /// lowest.
    pub higher_is_better: bool,
    /// (point, peer, value).
    pub bars: Vec<(String, String, f64)>,
}

impl Panel {
    pub fn new(title: &str, unit: &str, higher_is_better: bool) -> Self {
        Self {
            title: title.to_owned(),
            unit: unit.to_owned(),
            higher_is_better,
            bars: Vec::new(),
        }
    }

    /// Adds a bar; values that are not positive and finite are left out.
    pub fn bar(&mut self, point: &str, peer: &str, value: Option<f64>) {
        if let Some(v) = value.filter(|v| v.is_finite() && *v > 0.0) {
            self.bars.push((point.to_owned(), peer.to_owned(), v));
        }
    }
}

/// A value to 3 significant digits: `237k`, `23.7`, `0.123`, `1.23M`.
pub fn sig3(v: f64) -> String {
    let (scaled, suffix) = if v.abs() >= 1e6 {
        (v / 1e6, "M")
    } else if v.abs() >= 1e3 {
        (v / 1e3, "k")
    } else {
        (v, "")
    };
    let a = scaled.abs();
    let digits = if a >= 100.0 {
        0
    } else if a >= 10.0 {
        1
    } else if a >= 1.0 {
        2
    } else if a == 0.0 {
        0
    } else {
        (2 - a.log10().floor() as i32).max(0) as usize
    };
    format!("{scaled:.digits$}{suffix}")
}

fn distinct<'a>(items: impl Iterator<Item = &'a String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for item in items {
        if !out.contains(item) {
            out.push(item.clone());
        }
    }
    out
}

const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// Writes `target/bench/<scenario>.svg`: one panel per figure (throughput,
/// latency, CPU, memory...), grouped bars per load point, each labelled
/// with its value (3 significant digits) and its ratio to the best peer at
/// that point; a panel whose values span more than a decade is drawn on a
/// log scale; the legend sits above the panels, never over a bar. Text is
/// SVG `<text>`, so no font files are needed.
pub fn write_figure(dir: &Path, name: &str, title: &str, panels: &[Panel]) -> Result<()> {
    let e = |e: DrawingAreaErrorKind<_>| anyhow::anyhow!("{e}");
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!("{name}.svg"));
    let panels: Vec<&Panel> = panels.iter().filter(|p| !p.bars.is_empty()).collect();
    let peers = distinct(panels.iter().flat_map(|p| p.bars.iter().map(|b| &b.1)));
    let columns = if panels.len() > 1 { 2 } else { 1 };
    let rows = panels.len().div_ceil(columns).max(1);
    let (panel_w, panel_h) = (620u32, 360u32);
    let header = 70u32;
    let size = (panel_w * columns as u32, header + panel_h * rows as u32);
    let root = SVGBackend::new(&path, size).into_drawing_area();
    root.fill(&WHITE).map_err(e)?;
    let (top, body) = root.split_vertically(header);
    top.draw(&Text::new(
        title.to_owned(),
        (16, 10),
        ("sans-serif", 20).into_font().color(&BLACK),
    ))
    .map_err(e)?;
    // The legend: one swatch per peer, in a row above the panels.
    let mut x = 16;
    for (i, peer) in peers.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        top.draw(&Rectangle::new([(x, 44), (x + 14, 58)], color.filled()))
            .map_err(e)?;
        top.draw(&Text::new(peer.clone(), (x + 20, 44), ("sans-serif", 14)))
            .map_err(e)?;
        x += 34 + 8 * peer.len() as i32;
    }
    let areas = body.split_evenly((rows, columns));
    for (panel, area) in panels.iter().zip(areas) {
        draw_panel(&area, panel, &peers).map_err(|err| anyhow::anyhow!("{err}"))?;
    }
    root.present().map_err(e)?;
    Ok(())
}

fn draw_panel(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    panel: &Panel,
    peers: &[String],
) -> Result<()> {
    let e = |e: DrawingAreaErrorKind<_>| anyhow::anyhow!("{e}");
    let points = distinct(panel.bars.iter().map(|b| &b.0));
    let lo = panel.bars.iter().map(|b| b.2).fold(f64::INFINITY, f64::min);
    let hi = panel.bars.iter().map(|b| b.2).fold(0.0_f64, f64::max);
    // A decade or more apart: log scale (bars from the decade below the
    // smallest value).
    let log = hi / lo > 10.0;
    let floor = if log { lo.log10().floor() } else { 0.0 };
    let y = |v: f64| if log { v.log10() - floor } else { v };
    let top = if log {
        hi.log10() - floor + 0.35
    } else {
        hi * 1.25
    };
    let group = peers.len() + 1;
    let slots = (points.len() * group).max(1) as f64;
    let scale = if log { ", log scale" } else { "" };
    let mut chart = ChartBuilder::on(area)
        .caption(format!("{}{scale}", panel.title), ("sans-serif", 15))
        .margin(10)
        .x_label_area_size(28)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..slots, 0.0..top)
        .map_err(e)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_desc(panel.unit.clone())
        .y_label_formatter(&|v: &f64| {
            if log {
                sig3(10f64.powf(v + floor))
            } else {
                sig3(*v)
            }
        })
        .draw()
        .map_err(e)?;
    for (pi, point) in points.iter().enumerate() {
        let at_point: Vec<f64> = panel
            .bars
            .iter()
            .filter(|b| &b.0 == point)
            .map(|b| b.2)
            .collect();
        let best = if panel.higher_is_better {
            at_point.iter().copied().fold(0.0, f64::max)
        } else {
            at_point.iter().copied().fold(f64::INFINITY, f64::min)
        };
        for (ki, peer) in peers.iter().enumerate() {
            let Some((_, _, v)) = panel.bars.iter().find(|(p, k, _)| p == point && k == peer)
            else {
                continue;
            };
            let x0 = (pi * group + ki) as f64 + 0.1;
            let color = PALETTE[ki % PALETTE.len()];
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(x0, 0.0), (x0 + 0.8, y(*v))],
                    color.filled(),
                )))
                .map_err(e)?;
            let ratio = if panel.higher_is_better {
                v / best
            } else {
                best / v
            };
            let label = format!("{} ({:.2}x)", sig3(*v), ratio);
            chart
                .draw_series(std::iter::once(Text::new(
                    label,
                    (x0, y(*v) + top * 0.015),
                    ("sans-serif", 10),
                )))
                .map_err(e)?;
        }
        let x = (pi * group) as f64;
        chart
            .draw_series(std::iter::once(Text::new(
                point.clone(),
                (x, -top * 0.05),
                ("sans-serif", 12),
            )))
            .map_err(e)?;
    }
    Ok(())
}

/// Writes `target/bench/index.html`: every scenario recorded in `dir` (its
/// `.json`), with its figure, its table, the machine, the commit, the date
/// and the exact command that produced it.
pub fn write_index(dir: &Path) -> Result<()> {
    let mut records: Vec<(String, serde_json::Value)> = std::fs::read_dir(dir)?
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            if path.extension()? != "json" {
                return None;
            }
            let name = path.file_stem()?.to_string_lossy().into_owned();
            let value = serde_json::from_str(&std::fs::read_to_string(&path).ok()?).ok()?;
            Some((name, value))
        })
        .collect();
    records.sort_by(|a, b| a.0.cmp(&b.0));
    let escape = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    };
    let mut html = String::from(
        "<!doctype html>\n<meta charset=\"utf-8\">\n<title>inferlb benchmarks</title>\n<style>body{font-family:sans-serif;max-width:1300px;margin:2em auto}pre{background:#f6f6f6;padding:1em;overflow:auto}img{max-width:100%}</style>\n<h1>inferlb benchmarks</h1>\n<ul>\n",
    );
    for (name, _) in &records {
        html.push_str(&format!("<li><a href=\"#{name}\">{name}</a></li>\n"));
    }
    html.push_str("</ul>\n");
    for (name, record) in &records {
        let text = |key: &str| record[key].as_str().unwrap_or("").to_owned();
        let machine = &record["machine"];
        html.push_str(&format!(
            "<h2 id=\"{name}\">{name}</h2>\n<p>{}</p>\n<p><b>machine</b>: {} ({} cores used, kernel {}) &middot; <b>commit</b>: {} &middot; <b>date</b>: {}</p>\n<p><b>command</b>: <code>{}</code></p>\n",
            escape(&text("description")),
            escape(machine["cpu"].as_str().unwrap_or("?")),
            machine["cores"],
            escape(machine["kernel"].as_str().unwrap_or("?")),
            escape(&text("commit")),
            escape(&text("date")),
            escape(&text("command")),
        ));
        if dir.join(format!("{name}.svg")).exists() {
            html.push_str(&format!(
                "<p><a href=\"{name}.svg\"><img src=\"{name}.svg\" alt=\"{name}\"></a></p>\n"
            ));
        }
        if let Ok(table) = std::fs::read_to_string(dir.join(format!("{name}.txt"))) {
            html.push_str(&format!("<pre>{}</pre>\n", escape(&table)));
        }
        html.push_str(&format!(
            "<p><a href=\"{name}.json\">{name}.json</a> (every round)</p>\n"
        ));
    }
    let path = dir.join("index.html");
    std::fs::write(&path, html).with_context(|| format!("cannot write {}", path.display()))
}

/// Writes `target/bench/<scenario>.txt`: the printed table.
pub fn write_table(dir: &Path, name: &str, table: &str) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!("{name}.txt"));
    std::fs::write(&path, table).with_context(|| format!("cannot write {}", path.display()))
}

/// Says where a scenario's files went.
#[allow(clippy::print_stdout)]
pub fn announce(dir: &Path, name: &str) {
    println!(
        "wrote {}/{name}.json, .txt and .svg; index: {}/index.html",
        dir.display(),
        dir.display()
    );
}

/// The command line that is running, for the records.
pub fn command_line() -> String {
    std::env::args().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_significant_digits() {
        assert_eq!(sig3(236_784.616), "237k");
        assert_eq!(sig3(23_678.4), "23.7k");
        assert_eq!(sig3(2_367.8), "2.37k");
        assert_eq!(sig3(23.678), "23.7");
        assert_eq!(sig3(1.2345), "1.23");
        assert_eq!(sig3(0.012345), "0.0123");
        assert_eq!(sig3(1_234_567.0), "1.23M");
    }

    #[test]
    fn a_figure_has_every_panel_labels_and_ratios() {
        let dir = std::env::temp_dir().join(format!("inferlb-report-{}", std::process::id()));
        let mut throughput = Panel::new("throughput", "requests/s", true);
        throughput.bar("c=64", "inferlb", Some(200_000.0));
        throughput.bar("c=64", "nginx", Some(100_000.0));
        let mut p99 = Panel::new("p99 latency", "ms", false);
        p99.bar("c=64", "inferlb", Some(0.5));
        p99.bar("c=64", "nginx", Some(50.0));
        write_figure(&dir, "t", "t: figures", &[throughput, p99]).unwrap();
        let svg = std::fs::read_to_string(dir.join("t.svg")).unwrap();
        for text in [
            "200k (1.00x)",
            "100k (0.50x)",
            "p99 latency, log scale",
            "0.500 (1.00x)",
            "nginx",
        ] {
            assert!(svg.contains(text), "{text}");
        }
        std::fs::write(dir.join("t.json"), r#"{"description":"d","machine":{"cpu":"c","cores":2,"kernel":"k"},"commit":"abc","date":"now","command":"inferlb-bench t"}"#).unwrap();
        write_table(&dir, "t", "A  B\n").unwrap();
        write_index(&dir).unwrap();
        let html = std::fs::read_to_string(dir.join("index.html")).unwrap();
        for text in ["t.svg", "abc", "inferlb-bench t", "A  B"] {
            assert!(html.contains(text), "{text}");
        }
        std::fs::remove_dir_all(dir).unwrap();
    }
}
