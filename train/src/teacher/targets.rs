//! Dense distillation targets: backbone feature maps brought onto the teacher's output grid.
//!
//! The teacher in image mode at stride `s` puts cell `(i, j)` at the patch centred on pixel
//! `(i·s, j·s)`. A backbone node at stride `t` (input side / map side) has cell `(a, b)` centred
//! on pixel `(a·t + (t − 1)/2, b·t + (t − 1)/2)`. Each teacher cell therefore reads the node's
//! map bilinearly at `((i·s − (t − 1)/2) / t, …)`, clamped to the map, after the map has been
//! averaged over the configured neighbourhood. Nodes are concatenated along channels.

use crate::backbone::FeatureMap;

/// The teacher's output grid on a square crop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grid {
    /// Side of the (square) input crop in pixels.
    pub input: usize,
    /// Teacher output stride.
    pub stride: usize,
    pub height: usize,
    pub width: usize,
}

/// Mean over the `k × k` window centred on each location; windows are clipped at the border
/// and divided by the number of locations they cover (padding is not counted).
pub fn box_average(map: &FeatureMap, k: usize) -> FeatureMap {
    if k <= 1 {
        return map.clone();
    }
    let r = (k / 2) as isize;
    let (h, w) = (map.height as isize, map.width as isize);
    let mut values = vec![0.0f32; map.values.len()];
    for c in 0..map.channels {
        let plane = &map.values[c * map.height * map.width..(c + 1) * map.height * map.width];
        let out = &mut values[c * map.height * map.width..(c + 1) * map.height * map.width];
        for y in 0..h {
            for x in 0..w {
                let (mut sum, mut count) = (0.0f32, 0u32);
                for yy in (y - r).max(0)..=(y + r).min(h - 1) {
                    for xx in (x - r).max(0)..=(x + r).min(w - 1) {
                        sum += plane[(yy * w + xx) as usize];
                        count += 1;
                    }
                }
                out[(y * w + x) as usize] = sum / count as f32;
            }
        }
    }
    FeatureMap {
        values,
        ..map.clone()
    }
}

// The geometry is the feature teacher's (`ustad_core::bundle::onnx::features`), so a backbone teacher
// and a distilled one read the backbone at the same places.
use ustad_core::bundle::onnx::features::source_coordinate as source;

/// `map` (already aggregated) sampled at every cell of `grid`: `channels × grid.height ×
/// grid.width`, appended to `out`.
pub fn resample_onto(map: &FeatureMap, grid: &Grid, out: &mut Vec<f32>) {
    let sy = grid.input as f32 / map.height as f32;
    let sx = grid.input as f32 / map.width as f32;
    let rows: Vec<_> = (0..grid.height)
        .map(|i| source(i, grid.stride, sy, map.height))
        .collect();
    let cols: Vec<_> = (0..grid.width)
        .map(|j| source(j, grid.stride, sx, map.width))
        .collect();
    for c in 0..map.channels {
        let plane = &map.values[c * map.height * map.width..(c + 1) * map.height * map.width];
        let at = |y: usize, x: usize| plane[y * map.width + x];
        for &(y0, y1, fy) in &rows {
            for &(x0, x1, fx) in &cols {
                let top = at(y0, x0) * (1.0 - fx) + at(y0, x1) * fx;
                let bottom = at(y1, x0) * (1.0 - fx) + at(y1, x1) * fx;
                out.push(top * (1.0 - fy) + bottom * fy);
            }
        }
    }
}

/// The raw (unnormalised) dense target of one crop: every node aggregated, resampled onto
/// `grid` and concatenated, `channels × grid.height × grid.width`.
pub fn dense_target(maps: &[FeatureMap], neighbourhood: usize, grid: &Grid) -> Vec<f32> {
    let channels: usize = maps.iter().map(|m| m.channels).sum();
    let mut out = Vec::with_capacity(channels * grid.height * grid.width);
    for map in maps {
        resample_onto(&box_average(map, neighbourhood), grid, &mut out);
    }
    out
}

/// Per-channel `(mean, std)` over every cell of `targets` (each `channels × cells`), f64
/// accumulation; a constant channel keeps std 1 so it never divides by zero.
pub fn channel_moments(targets: &[Vec<f32>], channels: usize) -> (Vec<f32>, Vec<f32>) {
    let mut sum = vec![0.0f64; channels];
    let mut sq = vec![0.0f64; channels];
    let mut n = 0usize;
    for t in targets {
        let cells = t.len() / channels;
        n += cells;
        for c in 0..channels {
            for &v in &t[c * cells..(c + 1) * cells] {
                sum[c] += v as f64;
                sq[c] += (v as f64) * (v as f64);
            }
        }
    }
    let n = n.max(1) as f64;
    let mean: Vec<f32> = sum.iter().map(|s| (s / n) as f32).collect();
    let std = sum
        .iter()
        .zip(&sq)
        .map(|(s, q)| {
            let var = (q / n - (s / n).powi(2)).max(0.0);
            if var.sqrt() > 1e-6 {
                var.sqrt() as f32
            } else {
                1.0
            }
        })
        .collect();
    (mean, std)
}

/// Normalises `target` (`channels × cells`) in place with per-channel `mean` and `std`.
pub fn normalise(target: &mut [f32], mean: &[f32], std: &[f32]) {
    let cells = target.len() / mean.len();
    for (c, (m, s)) in mean.iter().zip(std).enumerate() {
        for v in &mut target[c * cells..(c + 1) * cells] {
            *v = (*v - m) / s;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(channels: usize, height: usize, width: usize) -> FeatureMap {
        FeatureMap {
            channels,
            height,
            width,
            values: (0..channels * height * width).map(|v| v as f32).collect(),
        }
    }

    #[test]
    fn box_average_excludes_padding() {
        let map = ramp(1, 3, 3);
        let avg = box_average(&map, 3);
        // Corner: mean of 0, 1, 3, 4; centre: mean of all nine.
        assert_eq!(avg.values[0], 2.0);
        assert_eq!(avg.values[4], 4.0);
    }

    #[test]
    fn resampling_the_same_grid_is_the_identity() {
        // A stride-4 node on a 32-pixel crop, read by a stride-4 grid: cell centres 4i vs
        // 4a + 1.5 differ by a constant shift that the clamp absorbs only at the border.
        let map = ramp(2, 8, 8);
        let grid = Grid {
            input: 32,
            stride: 4,
            height: 8,
            width: 8,
        };
        let mut out = Vec::new();
        resample_onto(&map, &grid, &mut out);
        assert_eq!(out.len(), 2 * 64);
        // Interior cell (3, 3) reads u = (12 − 1.5)/4 = 2.625 on both axes.
        let expected = {
            let at = |y: f32, x: f32| y * 8.0 + x;
            let (u, fu) = (2.0, 0.625);
            let top = at(u, u) * (1.0 - fu) + at(u, u + 1.0) * fu;
            let bottom = at(u + 1.0, u) * (1.0 - fu) + at(u + 1.0, u + 1.0) * fu;
            top * (1.0 - fu) + bottom * fu
        };
        assert!((out[3 * 8 + 3] - expected).abs() < 1e-5);
        // The first cell is clamped to the first node cell.
        assert_eq!(out[0], 0.0);
    }

    #[test]
    fn moments_and_normalisation() {
        let targets = vec![vec![1.0, 3.0, 5.0, 5.0], vec![1.0, 3.0, 5.0, 5.0]];
        let (mean, std) = channel_moments(&targets, 2);
        assert_eq!(mean, vec![2.0, 5.0]);
        assert_eq!(std, vec![1.0, 1.0]); // channel 1 is constant: std kept at 1
        let mut t = targets[0].clone();
        normalise(&mut t, &mean, &std);
        assert_eq!(t, vec![-1.0, 1.0, 0.0, 0.0]);
    }
}
