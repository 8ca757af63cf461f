//! ROC and PRO curves as PNG images.
//!
//! Evaluation reports need a picture of the curve, not just its area: two models with the same
//! AU-PRO can trade very differently at low false-positive rates. This draws them with the
//! `image` crate alone — axes, a 0.1 grid, tick labels and titles in a built-in 5 × 7 bitmap font
//! — so the edge binary needs no font files or plotting stack.
//!
//! Both axes span [0, 1]. The ROC plot adds the chance diagonal; the PRO plot shades the area
//! that AU-PRO integrates and marks the FPR limit with a dashed red line.

use std::path::{Path, PathBuf};

use image::{Rgb, RgbImage};
use serde::Serialize;
use thiserror::Error;

/// One point of a ROC or PRO curve.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct CurvePoint {
    /// Everything scoring `>= threshold` is flagged. The first point of a curve, where nothing
    /// is flagged yet, carries `f32::INFINITY` (serialised as `null` in JSON).
    pub threshold: f32,
    /// False-positive rate: fraction of good samples (or defect-free pixels) flagged.
    pub fpr: f64,
    /// True-positive rate for a ROC curve, per-region overlap for a PRO curve.
    pub y: f64,
}

/// Why a plot could not be drawn or written.
#[derive(Debug, Error)]
pub enum PlotError {
    /// The requested image cannot hold the margins, labels and a usable plot area, or is
    /// implausibly large.
    #[error("plot size {width}×{height} is outside {MIN_SIDE}..={MAX_SIDE} pixels per side")]
    BadSize {
        /// Requested width.
        width: u32,
        /// Requested height.
        height: u32,
    },
    /// Encoding or writing the PNG failed.
    #[error("writing {path}: {source}")]
    Write {
        /// Destination file.
        path: PathBuf,
        /// Underlying error.
        source: image::ImageError,
    },
}

/// Smallest side that leaves room for margins, labels and a plot area.
pub const MIN_SIDE: u32 = 160;
/// Largest side accepted, to keep a typo from allocating gigabytes.
pub const MAX_SIDE: u32 = 8192;

/// Background.
pub const BACKGROUND: Rgb<u8> = Rgb([255, 255, 255]);
/// Grid lines every 0.1.
pub const GRID: Rgb<u8> = Rgb([225, 225, 225]);
/// Axes, frame and text.
pub const INK: Rgb<u8> = Rgb([0, 0, 0]);
/// The curve itself.
pub const CURVE: Rgb<u8> = Rgb([31, 119, 180]);
/// The ROC chance diagonal.
pub const CHANCE: Rgb<u8> = Rgb([150, 150, 150]);
/// The PRO FPR-limit line.
pub const LIMIT: Rgb<u8> = Rgb([214, 39, 40]);
/// The area AU-PRO integrates.
pub const FILL: Rgb<u8> = Rgb([208, 225, 242]);

/// Output size of a plot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlotStyle {
    /// Image width in pixels.
    pub width: u32,
    /// Image height in pixels.
    pub height: u32,
}

impl Default for PlotStyle {
    fn default() -> Self {
        PlotStyle {
            width: 600,
            height: 600,
        }
    }
}

/// Where the unit square of the data lands in the image, so callers (and tests) can locate
/// data points in pixels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame {
    /// Pixel column of x = 0.
    pub left: i64,
    /// Pixel row of y = 1.
    pub top: i64,
    /// Pixel column of x = 1.
    pub right: i64,
    /// Pixel row of y = 0.
    pub bottom: i64,
    /// Font scale: each font pixel is a `scale × scale` block.
    pub scale: i64,
}

impl Frame {
    /// Lays out margins for the tick labels, the axis titles and the plot title, scaled with
    /// the image so text stays legible on large plots.
    pub fn new(style: &PlotStyle) -> Result<Self, PlotError> {
        let (w, h) = (style.width, style.height);
        if w < MIN_SIDE || h < MIN_SIDE || w > MAX_SIDE || h > MAX_SIDE {
            return Err(PlotError::BadSize {
                width: w,
                height: h,
            });
        }
        let scale = i64::from(w.min(h) / 300).max(1);
        Ok(Frame {
            left: 40 * scale,
            top: 20 * scale,
            right: i64::from(w) - 1 - 14 * scale,
            bottom: i64::from(h) - 1 - 30 * scale,
            scale,
        })
    }

    /// Pixel of data point `(x, y)`, rounded to the nearest pixel.
    pub fn to_pixel(&self, x: f64, y: f64) -> (i64, i64) {
        let px = self.left as f64 + x * (self.right - self.left) as f64;
        let py = self.bottom as f64 - y * (self.bottom - self.top) as f64;
        (px.round() as i64, py.round() as i64)
    }

    /// Data x of pixel column `px`.
    fn x_of(&self, px: i64) -> f64 {
        (px - self.left) as f64 / (self.right - self.left) as f64
    }
}

/// Draws a ROC curve (x: FPR, y: TPR) with the chance diagonal.
pub fn render_roc(
    curve: &[CurvePoint],
    title: &str,
    style: &PlotStyle,
) -> Result<RgbImage, PlotError> {
    let f = Frame::new(style)?;
    let mut c = Canvas::new(style);
    c.grid(&f);
    let (x0, y0) = f.to_pixel(0.0, 0.0);
    let (x1, y1) = f.to_pixel(1.0, 1.0);
    c.line((x0, y0), (x1, y1), 0, Some(4 * f.scale), CHANCE);
    c.axes(&f, "FPR", "TPR", title);
    c.polyline(&f, curve, CURVE);
    Ok(c.img)
}

/// Draws a PRO curve (x: pixel FPR, y: per-region overlap), shading the area under it up to
/// `fpr_limit` and marking the limit with a dashed line.
pub fn render_pro(
    curve: &[CurvePoint],
    fpr_limit: f64,
    title: &str,
    style: &PlotStyle,
) -> Result<RgbImage, PlotError> {
    let f = Frame::new(style)?;
    let mut c = Canvas::new(style);
    let limit = fpr_limit.clamp(0.0, 1.0);
    let (limit_px, _) = f.to_pixel(limit, 0.0);
    for px in f.left..=limit_px {
        if let Some(y) = interpolate(curve, f.x_of(px)) {
            let (_, top) = f.to_pixel(0.0, y.clamp(0.0, 1.0));
            for py in top..=f.bottom {
                c.put(px, py, FILL);
            }
        }
    }
    c.grid(&f);
    c.line(
        (limit_px, f.top),
        (limit_px, f.bottom),
        0,
        Some(4 * f.scale),
        LIMIT,
    );
    c.axes(&f, "FPR", "PRO", title);
    c.polyline(&f, curve, CURVE);
    Ok(c.img)
}

/// Renders a ROC curve and writes it as PNG.
pub fn write_roc_png(
    path: &Path,
    curve: &[CurvePoint],
    title: &str,
    style: &PlotStyle,
) -> Result<(), PlotError> {
    save(path, render_roc(curve, title, style)?)
}

/// Renders a PRO curve and writes it as PNG.
pub fn write_pro_png(
    path: &Path,
    curve: &[CurvePoint],
    fpr_limit: f64,
    title: &str,
    style: &PlotStyle,
) -> Result<(), PlotError> {
    save(path, render_pro(curve, fpr_limit, title, style)?)
}

/// A curve of a [`render_series`] plot, in data units.
pub struct Series<'a> {
    pub points: &'a [(f64, f64)],
    pub color: Rgb<u8>,
}

/// Draws curves in data units (training losses, say) scaled onto the unit square: x over
/// `[0, x_max]`, y over `[0, y_max]`, both maxima over all series, stated at the end of the
/// title (`x:500 y:200`) so the 0–1 ticks read as fractions of them. Keep `title` under ~30
/// characters: the plot does not wrap it.
pub fn render_series(
    series: &[Series<'_>],
    title: &str,
    x_label: &str,
    y_label: &str,
    style: &PlotStyle,
) -> Result<RgbImage, PlotError> {
    let finite = |v: f64| v.is_finite().then_some(v);
    let all = || series.iter().flat_map(|s| s.points.iter());
    let x_max = all()
        .filter_map(|p| finite(p.0))
        .fold(0.0f64, f64::max)
        .max(1e-12);
    let y_max = all()
        .filter_map(|p| finite(p.1))
        .fold(0.0f64, f64::max)
        .max(1e-12);
    let f = Frame::new(style)?;
    let mut c = Canvas::new(style);
    c.grid(&f);
    c.axes(
        &f,
        x_label,
        y_label,
        &format!("{title} (x:{x_max:.0} y:{y_max:.0})"),
    );
    for s in series {
        let curve: Vec<CurvePoint> = s
            .points
            .iter()
            .map(|&(x, y)| CurvePoint {
                threshold: 0.0,
                fpr: x / x_max,
                y: y / y_max,
            })
            .collect();
        c.polyline(&f, &curve, s.color);
    }
    Ok(c.img)
}

/// Renders [`render_series`] and writes it as PNG.
pub fn write_series_png(
    path: &Path,
    series: &[Series<'_>],
    title: &str,
    x_label: &str,
    y_label: &str,
    style: &PlotStyle,
) -> Result<(), PlotError> {
    save(path, render_series(series, title, x_label, y_label, style)?)
}

fn save(path: &Path, img: RgbImage) -> Result<(), PlotError> {
    img.save_with_format(path, image::ImageFormat::Png)
        .map_err(|source| PlotError::Write {
            path: path.to_path_buf(),
            source,
        })
}

/// The curve's y at `x`, linear between points; at a vertical jump the upper end, so the
/// shading reaches the curve. Assumes points ordered by non-decreasing FPR (as the metric
/// functions return them); `None` left of the first point or for an empty curve.
fn interpolate(curve: &[CurvePoint], x: f64) -> Option<f64> {
    let k = curve.partition_point(|p| p.fpr <= x);
    let a = curve.get(k.checked_sub(1)?)?;
    match curve.get(k) {
        Some(b) if b.fpr > a.fpr => Some(a.y + (b.y - a.y) * (x - a.fpr) / (b.fpr - a.fpr)),
        _ => Some(a.y),
    }
}

/// An image with bounds-checked drawing primitives.
struct Canvas {
    img: RgbImage,
}

impl Canvas {
    fn new(style: &PlotStyle) -> Self {
        Canvas {
            img: RgbImage::from_pixel(style.width, style.height, BACKGROUND),
        }
    }

    /// Sets a pixel, silently clipping outside the image.
    fn put(&mut self, x: i64, y: i64, color: Rgb<u8>) {
        if let (Ok(x), Ok(y)) = (u32::try_from(x), u32::try_from(y))
            && x < self.img.width()
            && y < self.img.height()
        {
            self.img.put_pixel(x, y, color);
        }
    }

    /// Bresenham line; each pixel is stamped as a square of half-width `radius`, and with
    /// `dash = Some(n)` the line alternates `n` pixels on, `n` off.
    fn line(
        &mut self,
        (mut x0, mut y0): (i64, i64),
        (x1, y1): (i64, i64),
        radius: i64,
        dash: Option<i64>,
        color: Rgb<u8>,
    ) {
        let dx = (x1 - x0).abs();
        let dy = -(y1 - y0).abs();
        let sx = if x0 < x1 { 1 } else { -1 };
        let sy = if y0 < y1 { 1 } else { -1 };
        let mut err = dx + dy;
        let mut step = 0i64;
        loop {
            if dash.is_none_or(|n| (step / n.max(1)) % 2 == 0) {
                for oy in -radius..=radius {
                    for ox in -radius..=radius {
                        self.put(x0 + ox, y0 + oy, color);
                    }
                }
            }
            if x0 == x1 && y0 == y1 {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x0 += sx;
            }
            if e2 <= dx {
                err += dx;
                y0 += sy;
            }
            step += 1;
        }
    }

    /// Grid lines at every 0.1 in both directions.
    fn grid(&mut self, f: &Frame) {
        for i in 1..10 {
            let v = f64::from(i) / 10.0;
            let (px, py) = f.to_pixel(v, v);
            self.line((px, f.top), (px, f.bottom), 0, None, GRID);
            self.line((f.left, py), (f.right, py), 0, None, GRID);
        }
    }

    /// Frame, tick marks and labels at every 0.2, axis titles and the plot title.
    fn axes(&mut self, f: &Frame, x_label: &str, y_label: &str, title: &str) {
        let s = f.scale;
        self.line((f.left, f.top), (f.right, f.top), 0, None, INK);
        self.line((f.left, f.bottom), (f.right, f.bottom), 0, None, INK);
        self.line((f.left, f.top), (f.left, f.bottom), 0, None, INK);
        self.line((f.right, f.top), (f.right, f.bottom), 0, None, INK);
        for i in 0..=5 {
            let v = f64::from(i) / 5.0;
            let label = match i {
                0 => "0".to_string(),
                5 => "1".to_string(),
                _ => format!("0.{}", 2 * i),
            };
            let (px, py) = f.to_pixel(v, v);
            self.line((px, f.bottom), (px, f.bottom + 3 * s), 0, None, INK);
            self.line((f.left - 3 * s, py), (f.left, py), 0, None, INK);
            let w = text_width(&label, s);
            self.text(&label, px - w / 2, f.bottom + 5 * s, s);
            self.text(&label, f.left - 5 * s - w, py - 3 * s, s);
        }
        let w = text_width(x_label, s);
        self.text(
            x_label,
            (f.left + f.right) / 2 - w / 2,
            f.bottom + 18 * s,
            s,
        );
        // The y title is stacked one letter per line: no rotation needed.
        let n = y_label.chars().count() as i64;
        let mut y = (f.top + f.bottom) / 2 - n * 9 * s / 2;
        for ch in y_label.chars() {
            self.text(&ch.to_string(), 3 * s, y, s);
            y += 9 * s;
        }
        self.text(title, f.left, 6 * s, s);
    }

    /// The curve as a 3-pixel-wide polyline, skipping non-finite points and segments that do
    /// not leave the current pixel (an unthinned pixel curve has millions of points).
    fn polyline(&mut self, f: &Frame, curve: &[CurvePoint], color: Rgb<u8>) {
        let radius = (f.scale / 2).max(1);
        let mut prev: Option<(i64, i64)> = None;
        for p in curve {
            if !(p.fpr.is_finite() && p.y.is_finite()) {
                continue;
            }
            let q = f.to_pixel(p.fpr.clamp(0.0, 1.0), p.y.clamp(0.0, 1.0));
            match prev {
                Some(a) if a == q => continue,
                Some(a) => self.line(a, q, radius, None, color),
                None => self.line(q, q, radius, None, color),
            }
            prev = Some(q);
        }
    }

    /// Draws `text` with its top-left corner at `(x, y)`; lower case is drawn as upper case.
    fn text(&mut self, text: &str, x: i64, y: i64, scale: i64) {
        for (i, ch) in text.chars().enumerate() {
            let rows = glyph(ch);
            let gx = x + i as i64 * 6 * scale;
            for (r, bits) in rows.iter().enumerate() {
                for c in 0..5 {
                    if bits & (0x10 >> c) != 0 {
                        for oy in 0..scale {
                            for ox in 0..scale {
                                self.put(gx + c * scale + ox, y + r as i64 * scale + oy, INK);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Width in pixels of `text` at `scale`, without the trailing letter gap.
fn text_width(text: &str, scale: i64) -> i64 {
    (text.chars().count() as i64 * 6 - 1).max(0) * scale
}

/// 5 × 7 bitmap of a character: seven rows, bit 4 is the leftmost column. Covers digits, the
/// Latin letters (lower case drawn as upper case) and the punctuation a metric title needs;
/// anything else is drawn as `?`.
fn glyph(ch: char) -> [u8; 7] {
    match ch.to_ascii_uppercase() {
        '0' => [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
        '1' => [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
        '2' => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
        '3' => [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
        '4' => [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
        '5' => [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
        '6' => [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
        '7' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
        '9' => [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
        'A' => [0x0E, 0x11, 0x11, 0x11, 0x1F, 0x11, 0x11],
        'B' => [0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E],
        'C' => [0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E],
        'D' => [0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C],
        'E' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F],
        'F' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10],
        'G' => [0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F],
        'H' => [0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'I' => [0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E],
        'J' => [0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C],
        'K' => [0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11],
        'L' => [0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F],
        'M' => [0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11],
        'N' => [0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11],
        'O' => [0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'P' => [0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10],
        'Q' => [0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D],
        'R' => [0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11],
        'S' => [0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E],
        'T' => [0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04],
        'U' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'V' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04],
        'W' => [0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A],
        'X' => [0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11],
        'Y' => [0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04],
        'Z' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F],
        ' ' => [0; 7],
        '.' => [0x00, 0x00, 0x00, 0x00, 0x00, 0x0C, 0x0C],
        ',' => [0x00, 0x00, 0x00, 0x00, 0x0C, 0x04, 0x08],
        ':' => [0x00, 0x0C, 0x0C, 0x00, 0x0C, 0x0C, 0x00],
        '-' => [0x00, 0x00, 0x00, 0x1F, 0x00, 0x00, 0x00],
        '+' => [0x00, 0x04, 0x04, 0x1F, 0x04, 0x04, 0x00],
        '=' => [0x00, 0x00, 0x1F, 0x00, 0x1F, 0x00, 0x00],
        '_' => [0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x1F],
        '/' => [0x00, 0x01, 0x02, 0x04, 0x08, 0x10, 0x00],
        '(' => [0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02],
        ')' => [0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08],
        '%' => [0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03],
        _ => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x00, 0x04],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pt(fpr: f64, y: f64) -> CurvePoint {
        CurvePoint {
            threshold: 0.0,
            fpr,
            y,
        }
    }

    fn at(img: &RgbImage, (x, y): (i64, i64)) -> Rgb<u8> {
        *img.get_pixel(x as u32, y as u32)
    }

    #[test]
    fn roc_curve_pixels_are_on_the_curve() {
        let style = PlotStyle::default();
        let f = Frame::new(&style).unwrap();
        // A staircase: straight up to TPR 0.8, across to FPR 0.4, then up to (1, 1).
        let curve = [pt(0.0, 0.0), pt(0.0, 0.8), pt(0.4, 0.8), pt(1.0, 1.0)];
        let img = render_roc(&curve, "ROC AUROC 0.92", &style).unwrap();
        assert_eq!(img.dimensions(), (600, 600));
        assert_eq!(at(&img, f.to_pixel(0.0, 0.45)), CURVE);
        assert_eq!(at(&img, f.to_pixel(0.25, 0.8)), CURVE);
        assert_eq!(at(&img, f.to_pixel(0.7, 0.9)), CURVE);
        // Off the curve: above the staircase, below it, and the grid.
        assert_eq!(at(&img, f.to_pixel(0.15, 0.95)), BACKGROUND);
        assert_eq!(at(&img, f.to_pixel(0.65, 0.35)), BACKGROUND);
        assert_eq!(at(&img, f.to_pixel(0.5, 0.25)), GRID);
        // Frame corners are ink.
        assert_eq!(at(&img, (f.right, f.bottom)), INK);
        assert_eq!(at(&img, (f.left, f.top)), INK);
        // The dashed chance diagonal is there, and not everywhere.
        let chance = (0..100)
            .filter(|&i| {
                let v = 0.3 + f64::from(i) * 0.004;
                at(&img, f.to_pixel(v, v)) == CHANCE
            })
            .count();
        assert!(chance > 20 && chance < 90, "{chance}");
    }

    #[test]
    fn pro_plot_shades_up_to_the_limit() {
        let style = PlotStyle {
            width: 400,
            height: 300,
        };
        let f = Frame::new(&style).unwrap();
        let curve = [pt(0.0, 0.0), pt(0.1, 0.8), pt(0.3, 0.9), pt(1.0, 1.0)];
        let img = render_pro(&curve, 0.3, "PRO", &style).unwrap();
        assert_eq!(img.dimensions(), (400, 300));
        assert_eq!(at(&img, f.to_pixel(0.2, 0.85)), CURVE);
        assert_eq!(at(&img, f.to_pixel(0.65, 0.95)), CURVE);
        assert_eq!(at(&img, f.to_pixel(0.15, 0.45)), FILL);
        assert_eq!(at(&img, f.to_pixel(0.55, 0.45)), BACKGROUND);
        assert_eq!(at(&img, f.to_pixel(0.15, 0.95)), BACKGROUND);
        let (lx, _) = f.to_pixel(0.3, 0.0);
        let limit = (f.top..f.bottom)
            .filter(|&y| at(&img, (lx, y)) == LIMIT)
            .count() as i64;
        assert!(limit > (f.bottom - f.top) / 3, "{limit}");
        let (gx, _) = f.to_pixel(0.5, 0.0);
        assert_eq!(
            (f.top..f.bottom)
                .filter(|&y| at(&img, (gx, y)) == LIMIT)
                .count(),
            0
        );
    }

    #[test]
    fn png_files_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let style = PlotStyle {
            width: 320,
            height: 240,
        };
        let curve = [pt(0.0, 0.0), pt(0.2, 0.7), pt(1.0, 1.0)];
        let roc = dir.path().join("roc.png");
        let pro = dir.path().join("pro.png");
        write_roc_png(&roc, &curve, "image roc", &style).unwrap();
        write_pro_png(&pro, &curve, 0.3, "pro", &style).unwrap();
        let f = Frame::new(&style).unwrap();
        for path in [&roc, &pro] {
            let bytes = std::fs::read(path).unwrap();
            assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
            let img = image::open(path).unwrap().to_rgb8();
            assert_eq!(img.dimensions(), (320, 240));
            assert_eq!(at(&img, f.to_pixel(0.1, 0.35)), CURVE);
        }
        let missing = dir.path().join("no/such/dir/x.png");
        assert!(matches!(
            write_roc_png(&missing, &curve, "", &style),
            Err(PlotError::Write { .. })
        ));
    }

    #[test]
    fn too_small_or_too_large_is_an_error() {
        for (width, height) in [(100, 600), (600, 10), (9000, 600)] {
            assert!(matches!(
                render_roc(&[], "", &PlotStyle { width, height }),
                Err(PlotError::BadSize { .. })
            ));
        }
    }

    #[test]
    fn degenerate_curves_do_not_panic() {
        let style = PlotStyle::default();
        let weird = [
            pt(f64::NAN, 0.5),
            pt(-1.0, 2.0),
            pt(0.5, f64::INFINITY),
            pt(0.5, 0.5),
        ];
        render_roc(&weird, "", &style).unwrap();
        render_pro(&weird, 2.0, "", &style).unwrap();
        render_pro(&[], 0.3, "", &style).unwrap();
    }

    #[test]
    fn text_uses_the_bitmap_font() {
        let mut c = Canvas::new(&PlotStyle::default());
        c.text("1", 10, 20, 1);
        // The stem of the '1' is column 2 on rows 0..7; its base spans columns 1..=3.
        for r in 0..7 {
            assert_eq!(*c.img.get_pixel(12, 20 + r), INK);
        }
        assert_eq!(*c.img.get_pixel(11, 26), INK);
        assert_eq!(*c.img.get_pixel(13, 26), INK);
        assert_eq!(*c.img.get_pixel(10, 23), BACKGROUND);
        assert_eq!(glyph('a'), glyph('A'));
        assert_eq!(glyph('~'), glyph('?'));
        assert_eq!(text_width("0.2", 2), 34);
    }

    #[test]
    fn interpolation_follows_segments_and_jumps() {
        let curve = [pt(0.0, 0.0), pt(0.0, 0.5), pt(0.5, 0.7), pt(0.5, 0.9)];
        assert_eq!(interpolate(&curve, 0.0), Some(0.5));
        assert!((interpolate(&curve, 0.25).unwrap() - 0.6).abs() < 1e-12);
        assert_eq!(interpolate(&curve, 0.5), Some(0.9));
        assert_eq!(interpolate(&curve, 0.8), Some(0.9));
        assert_eq!(interpolate(&curve, -0.1), None);
        assert_eq!(interpolate(&[], 0.1), None);
    }
}
