//! `latest.png`: time and peak memory against data size, ours beside the baselines. Text is drawn with
//! ab_glyph from DejaVu Sans (Debian's fonts-dejavu-core), so no fontconfig is involved.

use std::path::Path;

use anyhow::{Context, Result, anyhow};
use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

use super::measure::Sample;
use super::results::{Results, SizeResult};
use crate::e2e::tools;

const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

type Series = (&'static str, fn(&SizeResult) -> Sample, bool);

/// (label, field, ours?) for the time panel; the memory panel shows ours and the bare export.
const TIME: &[Series] = &[
    ("hitkeep backup", |s| s.backup, true),
    ("local EXPORT", |s| s.export, false),
    ("rclone upload (tuned)", |s| s.rclone_tuned, false),
    ("hitkeep restore", |s| s.restore, true),
    ("rclone + IMPORT", |s| s.rclone_import, false),
    ("hitkeep archive", |s| s.archive, true),
    ("COPY + DELETE", |s| s.copy_delete, false),
];
const MEMORY: &[Series] = &[
    ("hitkeep backup", |s| s.backup, true),
    ("hitkeep restore", |s| s.restore, true),
    ("hitkeep archive", |s| s.archive, true),
    ("local EXPORT (no limit)", |s| s.export, false),
];

fn load_font() -> Result<()> {
    if !Path::new(FONT).is_file() {
        tools::apt_install("fonts-dejavu-core")?;
    }
    let bytes = std::fs::read(FONT).with_context(|| format!("read {FONT}"))?;
    // plotters keeps registered fonts for the life of the process.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| anyhow!("{FONT} is not a usable font"))
}

pub fn draw(results: &Results, path: &Path) -> Result<()> {
    load_font()?;
    let root = BitMapBackend::new(path, (1400, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let caption = format!("cargo xtask bench, {} ({})", results.date, results.machine);
    let root = root
        .titled(&caption, ("sans-serif", 18))
        .map_err(|e| anyhow!("{e}"))?;
    let (left, right) = root.split_horizontally(700);
    panel(&left, results, "Wall time (s)", TIME, |s| {
        s.wall.as_secs_f64()
    })?;
    let limit = results.memory_limit_mib as f64;
    panel(
        &right,
        results,
        &format!("Peak RSS (MiB); DuckDB limit {limit:.0} MiB"),
        MEMORY,
        |s| s.rss as f64 / 1024.0 / 1024.0,
    )?;
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(())
}

fn panel(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    results: &Results,
    title: &str,
    series: &[Series],
    value: fn(&Sample) -> f64,
) -> Result<()> {
    let x_max = results
        .sizes
        .iter()
        .map(|s| s.hits as f64 / 1e6)
        .fold(1.0, f64::max)
        * 1.05;
    let y_max = results
        .sizes
        .iter()
        .flat_map(|s| series.iter().map(move |(_, f, _)| value(&f(s))))
        .fold(1.0, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc("million hits")
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    for (i, (label, field, ours)) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let style = match ours {
            true => color.stroke_width(3),
            false => color.stroke_width(1),
        };
        let points: Vec<(f64, f64)> = results
            .sizes
            .iter()
            .map(|s| (s.hits as f64 / 1e6, value(&field(s))))
            .collect();
        chart
            .draw_series(LineSeries::new(points.clone(), style))
            .map_err(|e| anyhow!("{e}"))?
            .label(*label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        chart
            .draw_series(
                points
                    .into_iter()
                    .map(|p| Circle::new(p, 3, color.filled())),
            )
            .map_err(|e| anyhow!("{e}"))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    Ok(())
}
