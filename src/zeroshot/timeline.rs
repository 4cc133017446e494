//! `label --timeline`: the per-window scores of every prompt over a recording, as a PNG.
//!
//! One strip per prompt, stacked over a shared time axis (seconds from the file's start): a marker per window at
//! its middle, `(t0 + t1) / 2`, joined by a lighter line, and the prompt's threshold as a dashed line. Marker
//! colours come from [`PALETTE`] in prompt order and are used by nothing else in the picture, so every marker can
//! be found by its colour (the tests count them). The width grows with the number of windows so that
//! neighbouring markers stay apart (8 px, up to a 8000 px wide picture).

use std::path::Path;

use anyhow::{Context, anyhow};
use plotters::prelude::*;

use super::WindowScores;
use super::font::GlyphBitmap;
use crate::labels::ScoreMode;

/// Marker colours, one per prompt in order (Tableau 10), repeating after ten prompts.
pub const PALETTE: [(u8, u8, u8); 10] = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
];

const TITLE_PX: u32 = 30;
const STRIP_PX: u32 = 120;
const X_AXIS_PX: u32 = 40;
const Y_AXIS_PX: u32 = 56;
const RIGHT_PX: u32 = 24;
const MIN_PLOT_PX: f64 = 720.0;
const MAX_PLOT_PX: f64 = 7900.0;
const MARKER_GAP_PX: f64 = 8.0;
/// Half the marker's side: markers are 5 × 5 px.
const MARKER_HALF: i32 = 2;

/// One prompt's scores over time.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// The prompt's label.
    pub label: String,
    /// Its threshold.
    pub threshold: f32,
    /// The scale of its scores.
    pub mode: ScoreMode,
    /// (window middle in seconds, score) per window.
    pub points: Vec<(f64, f32)>,
}

/// The series of `prompts` (label, threshold, mode) from a file's windows.
pub fn series(windows: &[WindowScores], prompts: &[(String, f32, ScoreMode)]) -> Vec<Series> {
    prompts
        .iter()
        .map(|(label, threshold, mode)| Series {
            label: label.clone(),
            threshold: *threshold,
            mode: *mode,
            points: windows
                .iter()
                .filter_map(|w| {
                    let s = w.scores.iter().find(|s| &s.label == label)?;
                    s.score.is_finite().then_some(((w.t0_secs + w.t1_secs) / 2.0, s.score))
                })
                .collect(),
        })
        .collect()
}

/// The marker colour of the `i`-th prompt.
pub fn colour(i: usize) -> RGBColor {
    let (r, g, b) = PALETTE[i % PALETTE.len()];
    RGBColor(r, g, b)
}

/// Draws `series` over `[0, duration_secs]` and writes the PNG to `path`.
pub fn write(path: &Path, title: &str, series: &[Series], duration_secs: f64) -> anyhow::Result<()> {
    let (rgb, w, h) = render(title, series, duration_secs)?;
    write_png(path, &rgb, w, h)
}

/// Draws the timeline; returns RGB bytes, width and height.
pub fn render(title: &str, series: &[Series], duration_secs: f64) -> anyhow::Result<(Vec<u8>, u32, u32)> {
    let duration = if duration_secs.is_finite() && duration_secs > 0.0 {
        duration_secs
    } else {
        1.0
    };
    let plot_w = plot_width(series, duration);
    let width = Y_AXIS_PX + plot_w + RIGHT_PX;
    let n = u32::try_from(series.len().max(1)).unwrap_or(u32::MAX);
    let height = TITLE_PX + n.saturating_mul(STRIP_PX) + X_AXIS_PX;
    if height > 16_000 {
        anyhow::bail!("{} prompts are too many for one timeline (at most 130)", series.len());
    }
    let mut buf = vec![255u8; (width as usize) * (height as usize) * 3];
    draw(&mut buf, (width, height), title, series, duration).map_err(|e| anyhow!("drawing the timeline: {e}"))?;
    Ok((buf, width, height))
}

/// Plot width in pixels: neighbouring windows at least `MARKER_GAP_PX` apart, within bounds.
fn plot_width(series: &[Series], duration: f64) -> u32 {
    let mut xs: Vec<f64> = series.iter().flat_map(|s| s.points.iter().map(|p| p.0)).collect();
    xs.sort_by(f64::total_cmp);
    let gap = xs
        .windows(2)
        .map(|w| w[1] - w[0])
        .filter(|g| *g > 1e-9)
        .fold(f64::INFINITY, f64::min);
    let want = if gap.is_finite() {
        duration / gap * MARKER_GAP_PX
    } else {
        MIN_PLOT_PX
    };
    want.clamp(MIN_PLOT_PX, MAX_PLOT_PX).ceil() as u32
}

type DrawResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

fn draw(buf: &mut [u8], (width, height): (u32, u32), title: &str, series: &[Series], duration: f64) -> DrawResult {
    let root = GlyphBitmap::with_buffer(buf, (width, height)).into_drawing_area();
    root.fill(&WHITE)?;
    root.draw_text(
        title,
        &("sans-serif", 12).into_font().color(&BLACK),
        (i32::try_from(Y_AXIS_PX).unwrap_or(0), 10),
    )?;
    let (lo, hi) = y_range(series);
    for (i, s) in series.iter().enumerate() {
        let last = i + 1 == series.len();
        let top = TITLE_PX + u32::try_from(i).unwrap_or(u32::MAX).saturating_mul(STRIP_PX);
        let strip_h = STRIP_PX + if last { X_AXIS_PX } else { 0 };
        let area = root.clone().shrink((0, top), (width, strip_h));
        let mut chart = ChartBuilder::on(&area)
            .margin_top(18)
            .margin_right(RIGHT_PX)
            .y_label_area_size(Y_AXIS_PX)
            .x_label_area_size(if last { X_AXIS_PX } else { 0 })
            .build_cartesian_2d(0f64..duration, lo..hi)?;
        chart
            .configure_mesh()
            .x_labels(12)
            .y_labels(3)
            .light_line_style(WHITE)
            .bold_line_style(RGBColor(225, 225, 225))
            .axis_style(RGBColor(90, 90, 90))
            .label_style(("sans-serif", 12).into_font().color(&RGBColor(40, 40, 40)))
            .x_label_formatter(&|x| format!("{x:.1}"))
            .y_label_formatter(&|y| format!("{y:.2}"))
            .x_desc(if last { "seconds from the start" } else { "" })
            .draw()?;
        let marker = colour(i);
        let tint = marker.mix(0.45);
        let threshold = f64::from(s.threshold);
        chart.draw_series(DashedLineSeries::new(
            [(0.0, threshold), (duration, threshold)],
            6,
            4,
            RGBColor(200, 40, 40).stroke_width(1),
        ))?;
        let points: Vec<(f64, f64)> = s.points.iter().map(|&(x, y)| (x, f64::from(y))).collect();
        chart.draw_series(LineSeries::new(points.iter().copied(), tint.stroke_width(1)))?;
        chart.draw_series(points.iter().map(|&p| {
            EmptyElement::at(p)
                + Rectangle::new(
                    [(-MARKER_HALF, -MARKER_HALF), (MARKER_HALF, MARKER_HALF)],
                    marker.filled(),
                )
        }))?;
        let caption = format!("{}  ({}, threshold {:.2})", s.label, s.mode.as_str(), s.threshold);
        area.draw_text(
            &caption,
            &("sans-serif", 12).into_font().color(&BLACK),
            (i32::try_from(Y_AXIS_PX).unwrap_or(0) + 4, 4),
        )?;
    }
    root.present()?;
    Ok(())
}

/// The score axis: 0 to 1, widened to every score and threshold (cosine and z-score modes leave 0–1).
fn y_range(series: &[Series]) -> (f64, f64) {
    let values = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| f64::from(p.1)).chain([f64::from(s.threshold)]))
        .filter(|v| v.is_finite());
    let (lo, hi) = values.fold((0.0f64, 1.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let pad = (hi - lo) * 0.04;
    (lo - pad, hi + pad)
}

/// Writes RGB bytes as an 8-bit PNG.
pub fn write_png(path: &Path, rgb: &[u8], width: u32, height: u32) -> anyhow::Result<()> {
    let file = std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder
        .write_header()
        .with_context(|| format!("cannot write {}", path.display()))?;
    writer
        .write_image_data(rgb)
        .with_context(|| format!("cannot write {}", path.display()))?;
    writer
        .finish()
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::labels::LabelScore;

    fn window(seq: u64, a: f32) -> WindowScores {
        let ls = |label: &str, score: f32| LabelScore {
            label: label.into(),
            score,
            cosine: 0.0,
            active: false,
            mode: ScoreMode::Softmax,
        };
        WindowScores {
            seq,
            t0_secs: seq as f64 * 0.5,
            t1_secs: seq as f64 * 0.5 + 1.0,
            scores: vec![ls("a", a), ls("b", 1.0 - a)],
        }
    }

    #[test]
    fn every_window_and_prompt_gets_a_marker_of_the_prompts_colour() {
        let windows: Vec<WindowScores> = (0..7).map(|i| window(i, 0.1 + i as f32 * 0.1)).collect();
        let prompts = [
            ("a".to_owned(), 0.5, ScoreMode::Softmax),
            ("b".to_owned(), 0.7, ScoreMode::Softmax),
        ];
        let s = series(&windows, &prompts);
        assert_eq!(s[0].points.len(), 7);
        assert!((s[1].points[0].1 - 0.9).abs() < 1e-6 && (s[1].points[0].0 - 0.5).abs() < 1e-9);
        let (rgb, w, h) = render("test", &s, 4.0).unwrap();
        for (i, _) in prompts.iter().enumerate() {
            let (r, g, b) = PALETTE[i];
            let blobs = count_blobs(&rgb, w, h, [r, g, b]);
            assert_eq!(blobs, 7, "prompt {i}");
        }
    }

    /// 4-connected regions of exactly `colour`.
    fn count_blobs(rgb: &[u8], w: u32, h: u32, colour: [u8; 3]) -> usize {
        let (w, h) = (w as usize, h as usize);
        let is = |i: usize| rgb[i * 3..i * 3 + 3] == colour;
        let mut seen = vec![false; w * h];
        let mut blobs = 0;
        for start in 0..w * h {
            if seen[start] || !is(start) {
                continue;
            }
            blobs += 1;
            let mut stack = vec![start];
            seen[start] = true;
            while let Some(i) = stack.pop() {
                let (x, y) = (i % w, i / w);
                let mut next = Vec::new();
                if x > 0 {
                    next.push(i - 1);
                }
                if x + 1 < w {
                    next.push(i + 1);
                }
                if y > 0 {
                    next.push(i - w);
                }
                if y + 1 < h {
                    next.push(i + w);
                }
                for j in next {
                    if !seen[j] && is(j) {
                        seen[j] = true;
                        stack.push(j);
                    }
                }
            }
        }
        blobs
    }
}
