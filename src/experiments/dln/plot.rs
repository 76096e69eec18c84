//! Recovery error of both networks against iterations and against seconds, one PNG.

use super::train::LogPoint;
use crate::util::plot::{framed_legend, labelled_line, register_font};
use anyhow::{anyhow, Result};
use plotters::prelude::*;
use std::path::Path;

const SERIES: [(&str, RGBColor); 2] = [
    ("original", RGBColor(31, 119, 180)),
    ("compressed", RGBColor(214, 39, 40)),
];

pub fn plot_curves(points: &[LogPoint], title: &str, path: &Path) -> Result<()> {
    register_font()?;
    let root = BitMapBackend::new(path, (1400, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let root = root
        .titled(title, ("sans-serif", 24))
        .map_err(|e| anyhow!("{e}"))?;
    let (left, right) = root.split_horizontally(700);
    panel(&left, points, "iteration", |p| p.iter as f64)?;
    panel(&right, points, "seconds", |p| p.seconds)?;
    root.present()
        .map_err(|e| anyhow!("writing {}: {e}", path.display()))
}

fn panel(
    area: &DrawingArea<BitMapBackend, plotters::coord::Shift>,
    points: &[LogPoint],
    x_label: &str,
    x: impl Fn(&LogPoint) -> f64,
) -> Result<()> {
    let finite = || {
        points
            .iter()
            .filter(|p| p.recovery_error.is_finite() && p.recovery_error > 0.0)
    };
    let x_max = finite().map(&x).fold(1e-9, f64::max);
    let y_min = finite()
        .map(|p| p.recovery_error)
        .fold(f64::INFINITY, f64::min)
        .min(1.0)
        * 0.5;
    let y_max = finite()
        .map(|p| p.recovery_error)
        .fold(0.0, f64::max)
        .max(1e-12)
        * 2.0;
    let mut chart = ChartBuilder::on(area)
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..x_max, (y_min..y_max).log_scale())
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc("‖W − Φ‖_F / ‖Φ‖_F")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v:.0e}"))
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    for (name, color) in SERIES {
        let line: Vec<(f64, f64)> = finite()
            .filter(|p| p.network == name)
            .map(|p| (x(p), p.recovery_error))
            .collect();
        labelled_line(&mut chart, line, color, name)?;
    }
    framed_legend(&mut chart)
}
