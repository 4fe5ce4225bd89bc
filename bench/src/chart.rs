//! `benchmark.png`: boot timeline (kernel until "Run /init", then the initrd phase) per
//! initrd, below it the build time (log scale) and the image size, and at the bottom the
//! end-to-end times (host command to result) when they were measured. Fonts are embedded
//! (DejaVu Sans), so no fontconfig or system font is needed.

use crate::peers::Kind;
use crate::report::{mb, med, secs, Report, Row};
use anyhow::{anyhow, Result};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::path::Path;

const OURS: RGBColor = RGBColor(31, 119, 180);
const PEER: RGBColor = RGBColor(230, 126, 34);
const KERNEL: RGBColor = RGBColor(200, 200, 200);
const WHISKER: RGBColor = RGBColor(60, 60, 60);
const FONT: &str = "sans-serif";

fn register_fonts() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular());
        let _ = plotters::style::register_font(FONT, FontStyle::Bold, dejavu::sans::bold());
    });
}

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("drawing the chart: {e:?}")
}

pub fn draw(report: &Report, path: &Path) -> Result<()> {
    register_fonts();
    let rows: Vec<&Row> = report.rows.iter().collect();
    let n = rows.len();
    let e2e = report.e2e_rows.len() as u32;
    let e2e_h = if e2e > 0 { 90 + 50 * e2e } else { 0 };
    let height = 300 + 60 * n as u32 + 80 + 40 * n as u32 + e2e_h;
    let root = BitMapBackend::new(path, (1200, height)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let (title, rest) = root.split_vertically(50);
    title
        .draw(&Text::new(
            format!(
                "nixboot vs peers: {} boot{} each, {} ({}), kernel {} — {}",
                report.setup.runs,
                if report.setup.runs == 1 { "" } else { "s" },
                report.setup.accel.to_uppercase(),
                report.setup.cores.to_string() + "-core host",
                report.setup.kernel,
                report.setup.date
            ),
            (20, 15),
            (FONT, 22).into_font().style(FontStyle::Bold),
        ))
        .map_err(err)?;
    let (rest, e2e_area) = rest.split_vertically(rest.dim_in_pixel().1 - e2e_h);
    let (top, bottom) = rest.split_vertically(90 + 60 * n as u32 + 40);
    timeline(&top, &rows)?;
    if e2e > 0 {
        e2e_bars(&e2e_area, report)?;
    }
    let halves = bottom.split_evenly((1, 2));
    build_times(&halves[0], &rows)?;
    sizes(&halves[1], &rows)?;
    root.present().map_err(err)?;
    Ok(())
}

fn name(r: &Row) -> String {
    r.built.kind.name().to_string()
}

fn color(r: &Row) -> RGBColor {
    if r.built.kind == Kind::Nixboot {
        OURS
    } else {
        PEER
    }
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;

/// Rows are drawn top-down in report order (nixboot first): row `k` of `n` is the band
/// `n-1-k .. n-k` of the y axis `0..n`; this is its centre.
fn slot(k: usize, n: usize) -> f64 {
    (n - 1 - k) as f64 + 0.5
}

/// The lower and upper edge of a row's bar.
fn edges(k: usize, n: usize) -> (f64, f64) {
    let c = slot(k, n);
    (c - 0.32, c + 0.32)
}

/// Labels sit at the band centres (y = 0.5, 1.5, ...); other key points stay blank.
fn row_label(rows: &[&Row], y: &f64) -> String {
    let n = rows.len();
    let p = y - 0.5;
    if (p - p.round()).abs() > 1e-6 || p < -1e-6 || p.round() as usize >= n {
        return String::new();
    }
    name(rows[n - 1 - p.round() as usize])
}

/// Stacked bars: kernel until "Run /init" (median) + initrd phase (median); the whisker is
/// the min-max of the stage-2 uptime.
fn timeline(area: &Area, rows: &[&Row]) -> Result<()> {
    let n = rows.len() as i32;
    let xmax = rows
        .iter()
        .filter_map(|r| r.stage2.map(|s| s.max))
        .fold(1.0f64, f64::max)
        * 1.25;
    let mut chart = ChartBuilder::on(area)
        .caption(
            "Boot until stage 2 starts (s since the kernel started): grey = kernel until \"Run /init\", colour = initrd phase; median, whisker = min-max",
            (FONT, 17),
        )
        .margin(15)
        .x_label_area_size(35)
        .y_label_area_size(140)
        .build_cartesian_2d(0f64..xmax, 0f64..n as f64)
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(2 * rows.len() + 1)
        .y_label_formatter(&|v| row_label(rows, v))
        .y_label_style((FONT, 16))
        .x_label_style((FONT, 14))
        .x_desc("seconds since the kernel started")
        .draw()
        .map_err(err)?;
    for (k, r) in rows.iter().enumerate() {
        let i = slot(k, rows.len());
        let (lo_edge, hi_edge) = edges(k, rows.len());
        let (Some(run_init), Some(phase), Some(stage2)) =
            (med(r.run_init), med(r.initrd_phase), r.stage2)
        else {
            continue;
        };
        let seg = |x0: f64, x1: f64, c: RGBColor| {
            let mut rect = Rectangle::new([(x0, lo_edge), (x1, hi_edge)], c.filled());
            rect.set_margin(8, 8, 0, 0);
            rect
        };
        chart
            .draw_series([
                seg(0.0, run_init, KERNEL),
                seg(run_init, run_init + phase, color(r)),
            ])
            .map_err(err)?;
        chart
            .draw_series([PathElement::new(
                vec![(stage2.min, i), (stage2.max, i)],
                WHISKER.stroke_width(2),
            )])
            .map_err(err)?;
        let label = format!("{} (initrd phase {})", secs(stage2.median), secs(phase));
        let style = TextStyle::from((FONT, 15).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
        chart
            .draw_series([Text::new(
                label,
                (stage2.max.max(run_init + phase) + xmax * 0.01, i),
                style,
            )])
            .map_err(err)?;
    }
    Ok(())
}

fn build_times(area: &Area, rows: &[&Row]) -> Result<()> {
    let n = rows.len() as i32;
    let vals: Vec<f64> = rows.iter().map(|r| r.built.build_secs.max(1e-3)).collect();
    let lo = vals.iter().copied().fold(f64::MAX, f64::min) / 3.0;
    let hi = vals.iter().copied().fold(0.0, f64::max) * 8.0;
    let mut chart = ChartBuilder::on(area)
        .caption("Build time (s, log scale)", (FONT, 17))
        .margin(15)
        .x_label_area_size(35)
        .y_label_area_size(140)
        .build_cartesian_2d((lo..hi).log_scale(), 0f64..n as f64)
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(2 * rows.len() + 1)
        .y_label_formatter(&|v| row_label(rows, v))
        .y_label_style((FONT, 16))
        .x_label_style((FONT, 14))
        .x_label_formatter(&|v| {
            if *v < 1.0 {
                format!("{v:.2}")
            } else {
                format!("{v:.0}")
            }
        })
        .draw()
        .map_err(err)?;
    for (k, r) in rows.iter().enumerate() {
        let i = slot(k, rows.len());
        let (lo_edge, hi_edge) = edges(k, rows.len());
        let v = vals[k];
        let rect = Rectangle::new([(lo, lo_edge), (v, hi_edge)], color(r).filled());
        chart.draw_series([rect]).map_err(err)?;
        let style = TextStyle::from((FONT, 15).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
        chart
            .draw_series([Text::new(
                format!(
                    "{}{}",
                    secs(r.built.build_secs),
                    if r.built.cached.is_some() { "*" } else { "" }
                ),
                (v * 1.15, i),
                style,
            )])
            .map_err(err)?;
    }
    Ok(())
}

fn sizes(area: &Area, rows: &[&Row]) -> Result<()> {
    let n = rows.len() as i32;
    let vals: Vec<f64> = rows.iter().map(|r| r.built.size as f64 / 1e6).collect();
    let hi = vals.iter().copied().fold(1.0, f64::max) * 1.35;
    let mut chart = ChartBuilder::on(area)
        .caption("Image size (MB)", (FONT, 17))
        .margin(15)
        .x_label_area_size(35)
        .y_label_area_size(140)
        .build_cartesian_2d(0f64..hi, 0f64..n as f64)
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(2 * rows.len() + 1)
        .y_label_formatter(&|v| row_label(rows, v))
        .y_label_style((FONT, 16))
        .x_label_style((FONT, 14))
        .draw()
        .map_err(err)?;
    for (k, r) in rows.iter().enumerate() {
        let i = slot(k, rows.len());
        let (lo_edge, hi_edge) = edges(k, rows.len());
        let v = vals[k];
        let rect = Rectangle::new([(0.0, lo_edge), (v, hi_edge)], color(r).filled());
        chart.draw_series([rect]).map_err(err)?;
        let style = TextStyle::from((FONT, 15).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
        chart
            .draw_series([Text::new(mb(r.built.size), (v + hi * 0.01, i), style)])
            .map_err(err)?;
    }
    Ok(())
}

/// End to end: one bar per tool, the median from the host command's start to its result
/// (the command's output; multi-user.target), whisker = min-max.
fn e2e_bars(area: &Area, report: &Report) -> Result<()> {
    let rows = &report.e2e_rows;
    let n = rows.len();
    let xmax = rows
        .iter()
        .filter_map(|r| r.secs.map(|s| s.max))
        .fold(1.0f64, f64::max)
        * 1.3;
    let names: Vec<String> = rows
        .iter()
        .map(|r| r.contender.name().to_string())
        .collect();
    let label = |y: &f64| {
        let p = y - 0.5;
        if (p - p.round()).abs() > 1e-6 || p < -1e-6 || p.round() as usize >= n {
            return String::new();
        }
        names[n - 1 - p.round() as usize].clone()
    };
    let mut chart = ChartBuilder::on(area)
        .caption(
            "End to end (s, host clock from the command's start): `uname -r` output; real systemd at multi-user.target",
            (FONT, 17),
        )
        .margin(15)
        .x_label_area_size(35)
        .y_label_area_size(230)
        .build_cartesian_2d(0f64..xmax, 0f64..n as f64)
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(2 * n + 1)
        .y_label_formatter(&label)
        .y_label_style((FONT, 16))
        .x_label_style((FONT, 14))
        .draw()
        .map_err(err)?;
    for (k, r) in rows.iter().enumerate() {
        let Some(s) = r.secs else { continue };
        let (lo_edge, hi_edge) = edges(k, n);
        let ours = matches!(
            r.contender,
            crate::e2e::Contender::NixbootExec | crate::e2e::Contender::NixbootSystemd
        );
        let c = if ours { OURS } else { PEER };
        let i = slot(k, n);
        chart
            .draw_series([Rectangle::new(
                [(0.0, lo_edge), (s.median, hi_edge)],
                c.filled(),
            )])
            .map_err(err)?;
        chart
            .draw_series([PathElement::new(
                vec![(s.min, i), (s.max, i)],
                WHISKER.stroke_width(2),
            )])
            .map_err(err)?;
        let style = TextStyle::from((FONT, 15).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
        chart
            .draw_series([Text::new(
                secs(s.median),
                (s.max.max(s.median) + xmax * 0.01, i),
                style,
            )])
            .map_err(err)?;
    }
    Ok(())
}
