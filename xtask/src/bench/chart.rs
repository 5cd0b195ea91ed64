//! `latest.png`: time and peak memory against data size, ours beside the baselines, and a backup cycle's
//! time against the tenant count, one at a time and side by side. Text is drawn with
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
    let root = BitMapBackend::new(path, (2100, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let caption = format!("cargo xtask bench, {} ({})", results.date, results.machine);
    let root = root
        .titled(&caption, ("sans-serif", 18))
        .map_err(|e| anyhow!("{e}"))?;
    let (left, rest) = root.split_horizontally(700);
    let (middle, right) = rest.split_horizontally(700);
    let time = size_lines(results, TIME, |s| s.wall.as_secs_f64());
    plot(&left, "Wall time (s)", "million hits", &time)?;
    let limit = results.memory_limit_mib as f64;
    let memory = size_lines(results, MEMORY, |s| s.rss as f64 / 1024.0 / 1024.0);
    let title = format!("Peak RSS (MiB); DuckDB limit {limit:.0} MiB");
    plot(&middle, &title, "million hits", &memory)?;
    let title = "One backup cycle over many small tenants (s)";
    plot(&right, title, "tenants", &tenant_lines(results))?;
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(())
}

/// One line of a panel: its points, and whether it is ours (drawn thick) or a baseline.
struct Line {
    label: String,
    points: Vec<(f64, f64)>,
    ours: bool,
}

/// Each series against the data size, in millions of hits.
fn size_lines(results: &Results, series: &[Series], value: fn(&Sample) -> f64) -> Vec<Line> {
    series
        .iter()
        .map(|(label, field, ours)| Line {
            label: (*label).to_owned(),
            points: results
                .sizes
                .iter()
                .map(|s| (s.hits as f64 / 1e6, value(&field(s))))
                .collect(),
            ours: *ours,
        })
        .collect()
}

/// A cycle's wall time against the tenant count, one line per concurrency.
fn tenant_lines(results: &Results) -> Vec<Line> {
    [1, 2, 4]
        .into_iter()
        .map(|concurrency| Line {
            label: match concurrency {
                1 => "one at a time".to_owned(),
                n => format!("{n} at once"),
            },
            points: results
                .tenants
                .iter()
                .filter_map(|t| Some((t.tenants as f64, t.at(concurrency)?.wall.as_secs_f64())))
                .collect(),
            ours: concurrency > 1,
        })
        .collect()
}

fn plot(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    title: &str,
    x_desc: &str,
    lines: &[Line],
) -> Result<()> {
    let points = || lines.iter().flat_map(|l| l.points.iter());
    let x_max = points().map(|p| p.0).fold(1.0, f64::max) * 1.05;
    let y_max = points().map(|p| p.1).fold(1.0, f64::max) * 1.1;
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    for (i, line) in lines.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let style = match line.ours {
            true => color.stroke_width(3),
            false => color.stroke_width(1),
        };
        chart
            .draw_series(LineSeries::new(line.points.clone(), style))
            .map_err(|e| anyhow!("{e}"))?
            .label(line.label.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        chart
            .draw_series(
                line.points
                    .iter()
                    .map(|&p| Circle::new(p, 3, color.filled())),
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::bench::results::TenantResult;

    fn took(secs: f64, mib: u64) -> Sample {
        Sample {
            wall: Duration::from_secs_f64(secs),
            rss: mib * 1024 * 1024,
            ..Sample::default()
        }
    }

    #[test]
    fn the_chart_has_a_panel_for_sizes_memory_and_tenants() {
        let mut results = Results::new("test", 3, 1024);
        for (hits, secs) in [(1_000_000, 3.0), (4_000_000, 9.0)] {
            let mut size = SizeResult::new(hits);
            size.backup = took(secs, 300);
            size.export = took(secs / 1.3, 200);
            results.sizes.push(size);
        }
        for (tenants, secs) in [(10, 3.0), (50, 14.0), (200, 54.0)] {
            results.tenants.push(TenantResult {
                tenants,
                by_concurrency: vec![(1, took(secs, 0)), (2, took(secs / 1.4, 0))],
            });
        }
        let lines = tenant_lines(&results);
        assert_eq!(
            lines[0].points,
            vec![(10.0, 3.0), (50.0, 14.0), (200.0, 54.0)]
        );
        assert_eq!(lines[1].points.len(), 3);
        assert!(lines[2].points.is_empty(), "4 at once was not measured");

        let dir = tempfile::tempdir().unwrap();
        let png = dir.path().join("chart.png");
        draw(&results, &png).unwrap();
        let bytes = std::fs::read(&png).unwrap();
        assert!(bytes.starts_with(b"\x89PNG"));
        // The IHDR chunk: width and height, big-endian, at bytes 16..24.
        assert_eq!(&bytes[16..24], &[0, 0, 8, 52, 0, 0, 2, 48]);
    }
}
