//! L(W)/L(W0) against the step for each method at its best step size, one PNG.

use super::{Best, Point};
use crate::util::plot::{framed_legend, labelled_line, register_font};
use anyhow::{anyhow, Result};
use plotters::prelude::*;
use std::path::Path;

const COLORS: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
];

pub fn plot_curves(points: &[Point], best: &[Best], title: &str, path: &Path) -> Result<()> {
    register_font()?;
    let root = BitMapBackend::new(path, (900, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let shown = |p: &&Point| {
        p.rel_loss.is_finite()
            && p.rel_loss > 0.0
            && best.iter().any(|b| b.method == p.method && b.lr == p.lr)
    };
    let x_max = points
        .iter()
        .filter(shown)
        .map(|p| p.step)
        .max()
        .unwrap_or(1) as f64;
    let y_min = points
        .iter()
        .filter(shown)
        .map(|p| p.rel_loss)
        .fold(1.0, f64::min)
        .max(1e-16)
        * 0.5;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..x_max, (y_min..2.0).log_scale())
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc("L(W) / L(W0)")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v:.0e}"))
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    for (b, &color) in best.iter().zip(COLORS.iter().cycle()) {
        let line: Vec<(f64, f64)> = points
            .iter()
            .filter(shown)
            .filter(|p| p.method == b.method)
            .map(|p| (p.step as f64, p.rel_loss))
            .collect();
        labelled_line(
            &mut chart,
            line,
            color,
            &format!("{} (lr {:e})", b.method, b.lr),
        )?;
    }
    framed_legend(&mut chart)?;
    root.present()
        .map_err(|e| anyhow!("writing {}: {e}", path.display()))
}
