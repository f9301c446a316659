//! SVG charts (plotters, SVG text: no font files needed).

use std::path::Path;

use anyhow::{anyhow, Context, Result};
use inferlb_autoscaler::simulate::{Row, Simulation};
use plotters::prelude::*;

/// What one line of the chart is, and on which axis.
struct Line {
    label: &'static str,
    color: RGBColor,
    dashed: bool,
}

const LOAD: Line = Line {
    label: "load (left axis)",
    color: RGBColor(31, 119, 180),
    dashed: false,
};
const SERVED: Line = Line {
    label: "served: in service x capacity/instance (left)",
    color: RGBColor(255, 127, 14),
    dashed: true,
};
const UNSERVED: Line = Line {
    label: "unserved load (left)",
    color: RGBColor(214, 39, 40),
    dashed: false,
};
const IN_SERVICE: Line = Line {
    label: "instances in service (right axis)",
    color: RGBColor(44, 160, 44),
    dashed: false,
};
const DESIRED: Line = Line {
    label: "desired capacity (right)",
    color: RGBColor(0, 0, 0),
    dashed: false,
};

/// Steps: each minute's value holds until the next (capacity changes at
/// once; it does not ramp).
fn steps(timeline: &[Row], f: impl Fn(&Row) -> f64) -> Vec<(f64, f64)> {
    let mut points = Vec::with_capacity(timeline.len() * 2 + 1);
    for (i, row) in timeline.iter().enumerate() {
        let v = f(row);
        if let Some(&(_, before)) = points.last() {
            points.push((i as f64, before));
        }
        points.push((i as f64, v));
    }
    if let Some(&(_, last)) = points.last() {
        points.push((timeline.len() as f64, last));
    }
    points
}

/// Load, served capacity and unserved load (left axis, the metric's units)
/// and desired and in-service capacity (right axis, integer instances) per
/// minute, as steps; the legend sits beside the plot, never over it.
/// `capacity_per_instance` is the load one instance serves.
pub(crate) fn simulation(
    path: &Path,
    title: &str,
    sim: &Simulation,
    capacity_per_instance: f64,
    unit: &str,
) -> Result<()> {
    let e = |e: DrawingAreaErrorKind<_>| anyhow!("{e}");
    let timeline = &sim.timeline;
    let minutes = timeline.len().max(1) as f64;
    let served = |r: &Row| f64::from(r.in_service) * capacity_per_instance;
    let load_max = timeline
        .iter()
        .map(|r| r.load.max(served(r)))
        .fold(0.0_f64, f64::max)
        .max(1.0)
        * 1.1;
    let cap_max = timeline
        .iter()
        .map(|r| r.desired.max(r.in_service))
        .max()
        .unwrap_or(1)
        .max(1);
    let cap_top = f64::from(cap_max) * 1.15 + 0.5;
    let root = SVGBackend::new(path, (1200, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(e)?;
    let (plot, legend) = root.split_horizontally(840);
    let mut chart = ChartBuilder::on(&plot)
        .caption(format!("autoscale simulate: {title}"), ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .right_y_label_area_size(60)
        .build_cartesian_2d(0.0..minutes, 0.0..load_max)
        .map_err(e)?
        .set_secondary_coord(0.0..minutes, 0.0..cap_top);
    chart
        .configure_mesh()
        .x_desc("minutes from the trace's start")
        .y_desc(format!("load ({unit})"))
        .x_label_formatter(&|v: &f64| format!("{v:.0}"))
        .y_label_formatter(&|v: &f64| format!("{v:.0}"))
        .draw()
        .map_err(e)?;
    // Whole instances only: one tick per instance up to a dozen, else
    // every few.
    let every = (cap_max / 10).max(1);
    chart
        .configure_secondary_axes()
        .y_desc("capacity (instances)")
        .y_labels((cap_top as usize).min(40) + 1)
        .y_label_formatter(&|v: &f64| {
            let n = v.round() as i32;
            if (v - f64::from(n)).abs() < 1e-6 && n % every == 0 {
                n.to_string()
            } else {
                String::new()
            }
        })
        .draw()
        .map_err(e)?;
    let style = |line: &Line| ShapeStyle::from(&line.color).stroke_width(2);
    let draw = |points: Vec<(f64, f64)>, line: &Line| -> Vec<PathElement<(f64, f64)>> {
        if !line.dashed {
            return vec![PathElement::new(points, style(line))];
        }
        // Dashes: each segment cut into pieces of a fixed share of the
        // axes, every other one drawn.
        let (dx, dy) = (minutes / 150.0, load_max / 60.0);
        let mut pieces = Vec::new();
        for pair in points.windows(2) {
            let ((x0, y0), (x1, y1)) = (pair[0], pair[1]);
            let n = (((x1 - x0) / dx).abs().max(((y1 - y0) / dy).abs()).ceil() as usize).max(1);
            for k in (0..n).step_by(2) {
                let at = |k: usize| {
                    let t = k as f64 / n as f64;
                    (x0 + (x1 - x0) * t, y0 + (y1 - y0) * t)
                };
                pieces.push(PathElement::new(vec![at(k), at(k + 1)], style(line)));
            }
        }
        pieces
    };
    chart
        .draw_series(draw(steps(timeline, |r| r.load), &LOAD))
        .map_err(e)?;
    chart
        .draw_series(draw(steps(timeline, served), &SERVED))
        .map_err(e)?;
    chart
        .draw_series(draw(steps(timeline, |r| r.unserved), &UNSERVED))
        .map_err(e)?;
    chart
        .draw_secondary_series(draw(
            steps(timeline, |r| f64::from(r.in_service)),
            &IN_SERVICE,
        ))
        .map_err(e)?;
    chart
        .draw_secondary_series(draw(steps(timeline, |r| f64::from(r.desired)), &DESIRED))
        .map_err(e)?;
    // The legend, beside the plot.
    let text = ("sans-serif", 13).into_font().color(&BLACK);
    for (i, line) in [LOAD, SERVED, UNSERVED, IN_SERVICE, DESIRED]
        .iter()
        .enumerate()
    {
        let y = 60 + i as i32 * 28;
        let sample: Vec<(i32, i32)> = if line.dashed {
            vec![(10, y), (18, y)]
        } else {
            vec![(10, y), (40, y)]
        };
        legend
            .draw(&PathElement::new(sample, style(line)))
            .map_err(e)?;
        if line.dashed {
            legend
                .draw(&PathElement::new(vec![(26, y), (34, y)], style(line)))
                .map_err(e)?;
        }
        legend
            .draw(&Text::new(line.label, (48, y - 7), text.clone()))
            .map_err(e)?;
    }
    let summary = &sim.summary;
    let notes = [
        format!("peak: {} instances", summary.peak),
        format!("{:.2} instance-hours", summary.instance_hours),
        format!("{} minutes with unserved load", summary.unserved_minutes),
    ];
    for (i, note) in notes.into_iter().enumerate() {
        let y = 60 + 5 * 28 + 14 + i as i32 * 20;
        legend
            .draw(&Text::new(note, (10, y), text.clone()))
            .map_err(e)?;
    }
    root.present()
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
