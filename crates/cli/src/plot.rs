//! SVG charts (plotters, SVG text: no font files needed).

use std::path::Path;

use anyhow::{anyhow, Context, Result};
use inferlb_autoscaler::simulate::Simulation;
use plotters::prelude::*;

/// Load, capacity in service, desired capacity and unserved load over time.
/// Load is on the left axis; capacity on the right.
pub(crate) fn simulation(path: &Path, title: &str, sim: &Simulation) -> Result<()> {
    let minutes = sim.timeline.len().max(1) as f64;
    let load_max = sim
        .timeline
        .iter()
        .map(|r| r.load)
        .fold(0.0_f64, f64::max)
        .max(1.0)
        * 1.1;
    let cap_max = f64::from(
        sim.timeline
            .iter()
            .map(|r| r.desired.max(r.in_service))
            .max()
            .unwrap_or(1)
            .max(1),
    ) * 1.2;
    let root = SVGBackend::new(path, (1000, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("simulate: {title}"), ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .right_y_label_area_size(60)
        .build_cartesian_2d(0.0..minutes, 0.0..load_max)
        .map_err(|e| anyhow!("{e}"))?
        .set_secondary_coord(0.0..minutes, 0.0..cap_max);
    chart
        .configure_mesh()
        .x_desc("minute")
        .y_desc("load")
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .configure_secondary_axes()
        .y_desc("capacity")
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    let series = |f: fn(&inferlb_autoscaler::simulate::Row) -> f64| {
        sim.timeline
            .iter()
            .enumerate()
            .map(move |(i, r)| (i as f64, f(r)))
            .collect::<Vec<_>>()
    };
    chart
        .draw_series(LineSeries::new(series(|r| r.load), &BLUE))
        .map_err(|e| anyhow!("{e}"))?
        .label("load")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    chart
        .draw_series(LineSeries::new(series(|r| r.unserved), &RED))
        .map_err(|e| anyhow!("{e}"))?
        .label("unserved")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
    chart
        .draw_secondary_series(LineSeries::new(series(|r| f64::from(r.in_service)), &GREEN))
        .map_err(|e| anyhow!("{e}"))?
        .label("in service")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], GREEN));
    chart
        .draw_secondary_series(LineSeries::new(series(|r| f64::from(r.desired)), &BLACK))
        .map_err(|e| anyhow!("{e}"))?
        .label("desired")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK));
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    root.present()
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
