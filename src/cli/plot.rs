//! `lowrank plot DIR...`: DIR/loss.png, the training and validation loss curves from
//! metrics.jsonl, and DIR/ranks.png, each layer's rank over training, when the run logged ranks.
//! With `--compare OUT.png`: the runs' validation curves on one chart, and a table of each run's
//! last validation loss.

use crate::lowrank::LowRankMode;
use crate::train::config::TrainConfig;
use crate::train::metrics::{self, StepRecord};
use crate::util::plot::register_font;
use anyhow::{ensure, Context, Result};
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Training runs' output directories (each holding metrics.jsonl)
    #[arg(required = true, value_name = "DIR")]
    dirs: Vec<PathBuf>,
    /// Draw the runs' validation losses on one chart at this PNG, labelled by directory name, and
    /// print each run's last validation loss, instead of each run's own figures
    #[arg(long, value_name = "PNG")]
    compare: Option<PathBuf>,
}

pub fn run(a: Args) -> Result<()> {
    let runs = a
        .dirs
        .iter()
        .map(|d| Ok((d.as_path(), read_run(d)?)))
        .collect::<Result<Vec<_>>>()?;
    if let Some(out) = &a.compare {
        print!("{}", compare_table(&runs));
        compare_figure(&runs, out)?;
        println!("wrote {}", out.display());
        return Ok(());
    }
    for (dir, records) in &runs {
        let out = dir.join("loss.png");
        loss_figure(records, &out)?;
        println!("wrote {}", out.display());
        if records.iter().any(|r| r.ranks.is_some()) {
            let out = dir.join("ranks.png");
            rank_figure(records, dense_run(dir, records)?, &out)?;
            println!("wrote {}", out.display());
        }
    }
    Ok(())
}

fn read_run(dir: &Path) -> Result<Vec<StepRecord>> {
    let records = metrics::read(&dir.join("metrics.jsonl"))?;
    ensure!(
        !records.is_empty(),
        "{} has no metrics.jsonl records to plot",
        dir.display()
    );
    Ok(records)
}

/// A run's label: its directory's name.
fn label(dir: &Path) -> String {
    dir.file_name()
        .map_or_else(|| dir.display().to_string(), |n| n.to_string_lossy().into())
}

/// One line per run: its last validation loss (and the step), its parameters and last training
/// loss.
fn compare_table(runs: &[(&Path, Vec<StepRecord>)]) -> String {
    let mut t = format!(
        "{:<24} {:>7} {:>10} {:>10} {:>12}\n",
        "run", "step", "val loss", "train", "parameters"
    );
    for (dir, records) in runs {
        let last = records.last().expect("read_run refuses empty runs");
        let val = records
            .iter()
            .rev()
            .find_map(|r| r.val_loss.map(|v| (r.step, v)));
        let (step, val) = match val {
            Some((s, v)) => (s.to_string(), format!("{v:.4}")),
            None => ("-".into(), "-".into()),
        };
        t += &format!(
            "{:<24} {step:>7} {val:>10} {:>10.4} {:>12}\n",
            label(dir),
            last.train_loss,
            last.params
        );
    }
    t
}

/// Every run's validation loss over steps, from a fifth of the way on, where runs differ (the
/// steep start would flatten the rest; all of it when a run has nothing there).
fn compare_figure(runs: &[(&Path, Vec<StepRecord>)], out: &Path) -> Result<()> {
    register_font()?;
    let val = |records: &[StepRecord]| -> Vec<(f64, f64)> {
        let val = records
            .iter()
            .filter_map(|r| r.val_loss.map(|v| (r.step as f64, v as f64)));
        val.filter(|p| p.1.is_finite()).collect()
    };
    let all: Vec<(String, Vec<(f64, f64)>)> = runs
        .iter()
        .map(|(dir, records)| (label(dir), val(records)))
        .collect();
    let points = || all.iter().flat_map(|(_, c)| c.iter());
    ensure!(
        points().next().is_some(),
        "none of the runs logged a validation loss (train with --eval-every K)"
    );
    let max_step = points().map(|p| p.0).fold(1.0, f64::max);
    let from = match points()
        .filter(|p| p.0 >= max_step / 5.0)
        .map(|p| p.0)
        .reduce(f64::min)
    {
        Some(f) if all.iter().all(|(_, c)| c.iter().any(|p| p.0 >= f)) => f,
        _ => 0.0,
    };
    let curves: Vec<(&String, Vec<(f64, f64)>)> = all
        .iter()
        .map(|(name, c)| (name, c.iter().copied().filter(|p| p.0 >= from).collect()))
        .collect();
    let ys = curves.iter().flat_map(|(_, c)| c.iter().map(|p| p.1));
    let (lo, hi) = ys.fold((f64::MAX, f64::MIN), |(lo, hi), y| (lo.min(y), hi.max(y)));
    let pad = (hi - lo).max(1e-3) * 0.05;
    render(out, |root| {
        let (x, y) = (from..max_step.max(from + 1.0), (lo - pad)..(hi + pad));
        let mut chart = step_chart(root, "validation loss", x, y, "cross-entropy (nats)")?;
        for (i, (name, curve)) in curves.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            chart
                .draw_series(LineSeries::new(curve.clone(), color.stroke_width(2)))?
                .label(name.as_str())
                .legend(legend_mark(color));
        }
        draw_legend(&mut chart)
    })
}

/// Whether the run in `dir` trained dense weights, from its config.json (`lowrank.mode`). A
/// metrics file without its config (copied alone) falls back to the ranks: a dense layer logs its
/// full rank at every step, so a run whose logged ranks never change is taken as dense, which a
/// fixed-rank low-rank run would also be (its solid rank lines are then not drawn).
fn dense_run(dir: &Path, records: &[StepRecord]) -> Result<bool> {
    let path = dir.join("config.json");
    if path.exists() {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let config: TrainConfig = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a training run's config", path.display()))?;
        return Ok(config.lowrank.mode == LowRankMode::Dense);
    }
    let logged: Vec<_> = records.iter().filter_map(|r| r.ranks.as_ref()).collect();
    Ok(logged.iter().all(|ks| {
        ks.iter()
            .zip(logged[0].iter())
            .all(|(k, first)| k.rank == first.rank)
    }))
}

/// Per layer over steps: the live rank of low-rank layers, solid, and r90 (the smallest rank
/// explaining 90% of the energy: of the live product, or of W − W0 in a dense run), dashed.
/// A dense layer's "rank" is its full rank, which is not drawn.
pub fn rank_figure(records: &[StepRecord], dense: bool, out: &Path) -> Result<()> {
    register_font()?;
    let logged: Vec<(f64, &Vec<crate::lowrank::LayerRank>)> = records
        .iter()
        .filter_map(|r| r.ranks.as_ref().map(|k| (r.step as f64, k)))
        .collect();
    let layers: Vec<String> = logged[0].1.iter().map(|l| l.layer.clone()).collect();
    let series = |pick: fn(&crate::lowrank::LayerRank) -> usize, i: usize| -> Vec<(f64, f64)> {
        logged
            .iter()
            .filter_map(|(s, ks)| ks.get(i).map(|k| (*s, pick(k) as f64)))
            .collect()
    };
    let top = logged
        .iter()
        .flat_map(|(_, ks)| {
            ks.iter()
                .map(|k| if dense { k.r90 } else { k.rank.max(k.r90) })
        })
        .max()
        .unwrap_or(1);
    let max_step = logged.last().map_or(1.0, |l| l.0).max(1.0);
    render(out, |root| {
        let title = if dense {
            "r90 of W − W0 per layer"
        } else {
            "rank (solid) and r90 (dashed) per layer"
        };
        let mut chart = step_chart(
            root,
            title,
            0.0..max_step,
            0.0..(top as f64 * 1.1 + 1.0),
            "rank",
        )?;
        for (i, name) in layers.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            if !dense {
                chart
                    .draw_series(LineSeries::new(
                        series(|k| k.rank, i),
                        color.stroke_width(2),
                    ))?
                    .label(name.as_str())
                    .legend(legend_mark(color));
            }
            let r90 = series(|k| k.r90, i);
            let dashed = DashedLineSeries::new(r90, 6, 4, color.stroke_width(1));
            let drawn = chart.draw_series(dashed)?;
            if dense {
                drawn.label(name.as_str()).legend(legend_mark(color));
            }
        }
        draw_legend(&mut chart)
    })
}

/// Training loss per step and validation loss at each evaluation, on one chart.
pub fn loss_figure(records: &[StepRecord], out: &Path) -> Result<()> {
    register_font()?;
    let train: Vec<(f64, f64)> = records
        .iter()
        .map(|r| (r.step as f64, r.train_loss as f64))
        .collect();
    let val: Vec<(f64, f64)> = records
        .iter()
        .filter_map(|r| r.val_loss.map(|v| (r.step as f64, v as f64)))
        .collect();
    let finite = train
        .iter()
        .chain(&val)
        .map(|p| p.1)
        .filter(|y| y.is_finite());
    let (lo, hi) = finite.fold((f64::MAX, f64::MIN), |(lo, hi), y| (lo.min(y), hi.max(y)));
    let max_step = records.iter().map(|r| r.step).max().unwrap_or(1).max(1) as f64;
    render(out, |root| {
        let y_range = (lo * 0.95)..(hi * 1.02);
        let mut chart = step_chart(root, "loss", 0.0..max_step, y_range, "cross-entropy (nats)")?;
        chart
            .draw_series(LineSeries::new(train.clone(), &BLUE))?
            .label("train")
            .legend(legend_mark(BLUE.to_rgba()));
        if !val.is_empty() {
            chart
                .draw_series(LineSeries::new(val.clone(), RED.stroke_width(2)))?
                .label("validation")
                .legend(legend_mark(RED.to_rgba()));
            chart.draw_series(val.iter().map(|&p| Circle::new(p, 3, RED.filled())))?;
        }
        draw_legend(&mut chart)
    })
}

type DrawResult = std::result::Result<(), Box<dyn std::error::Error>>;
type StepChart<'a, DB> = ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// A titled chart over optimiser steps `x` and `y`, its mesh drawn.
fn step_chart<'a, DB>(
    root: &'a DrawingArea<DB, Shift>,
    title: &str,
    x: std::ops::Range<f64>,
    y: std::ops::Range<f64>,
    y_desc: &str,
) -> std::result::Result<StepChart<'a, DB>, Box<dyn std::error::Error>>
where
    DB: DrawingBackend,
    DB::ErrorType: 'static,
{
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 26))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(x, y)?;
    chart
        .configure_mesh()
        .x_desc("optimiser step")
        .y_desc(y_desc)
        .draw()?;
    Ok(chart)
}

/// A short line in `color`, the legend's mark of a series.
fn legend_mark(color: RGBAColor) -> impl Fn((i32, i32)) -> PathElement<(i32, i32)> {
    move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color)
}

/// The series labels in a framed box.
fn draw_legend<'a, DB>(chart: &mut StepChart<'a, DB>) -> DrawResult
where
    DB: DrawingBackend + 'a,
    DB::ErrorType: 'static,
{
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

/// A 1000×600 PNG at `out`: a white canvas handed to `draw`, then written; plotters' errors become
/// one message naming the file.
fn render(
    out: &Path,
    draw: impl FnOnce(&DrawingArea<BitMapBackend, Shift>) -> DrawResult,
) -> Result<()> {
    let root = BitMapBackend::new(out, (1000, 600)).into_drawing_area();
    let result: DrawResult = (|| {
        root.fill(&WHITE)?;
        draw(&root)?;
        root.present()?;
        Ok(())
    })();
    result
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("cannot draw {}", out.display()))
}
