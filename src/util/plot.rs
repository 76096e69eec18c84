//! Shared plotting set-up: plotters' ab_glyph text backend needs a TTF registered before any text
//! is drawn, so the project embeds DejaVu Sans (assets/, licence beside it) and registers it once.

use anyhow::{anyhow, Result};
use plotters::style::FontStyle;
use std::sync::OnceLock;

static FONT: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");

/// Registers DejaVu Sans as "sans-serif"; safe to call any number of times.
pub fn register_font() -> Result<()> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        plotters::style::register_font("sans-serif", FontStyle::Normal, FONT)
            .map_err(|_| "the embedded DejaVu Sans is not a valid font".to_string())
    })
    .clone()
    .map_err(|e| anyhow!(e))
}

/// One labelled line of a chart: the series and its legend entry (a short stroke of its colour).
pub fn labelled_line<'a, DB, X, Y>(
    chart: &mut plotters::chart::ChartContext<
        'a,
        DB,
        plotters::coord::cartesian::Cartesian2d<X, Y>,
    >,
    line: Vec<(X::ValueType, Y::ValueType)>,
    color: plotters::style::RGBColor,
    label: &str,
) -> Result<()>
where
    DB: plotters::prelude::DrawingBackend + 'a,
    X: plotters::coord::ranged1d::Ranged,
    Y: plotters::coord::ranged1d::Ranged,
    X::ValueType: Clone + 'static,
    Y::ValueType: Clone + 'static,
{
    use plotters::prelude::*;
    chart
        .draw_series(LineSeries::new(line, color.stroke_width(2)))
        .map_err(|e| anyhow!("{e}"))?
        .label(label)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    Ok(())
}

/// The chart's legend: every labelled series in a framed white box.
pub fn framed_legend<'a, DB, X, Y>(
    chart: &mut plotters::chart::ChartContext<
        'a,
        DB,
        plotters::coord::cartesian::Cartesian2d<X, Y>,
    >,
) -> Result<()>
where
    DB: plotters::prelude::DrawingBackend + 'a,
    X: plotters::coord::ranged1d::Ranged,
    Y: plotters::coord::ranged1d::Ranged,
{
    use plotters::prelude::*;
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE)
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    Ok(())
}
