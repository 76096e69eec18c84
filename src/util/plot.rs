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
