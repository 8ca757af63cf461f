//! Connected-component labelling of ground-truth masks.
//!
//! AU-PRO weights every ground-truth defect *region* equally, however many pixels it has, so a
//! scratch and a large dent count the same. "Region" is defined the way the MVTec AD evaluation
//! defines it: a set of defect pixels connected through any of their 8 neighbours (diagonal
//! contact joins two blobs). The labelling lives in its own function so it can be tested on
//! hand-drawn masks independently of the metric that uses it.

use super::metrics::MetricError;

/// The 8-connected regions of one mask.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Components {
    /// Width of the labelled mask in pixels.
    pub width: usize,
    /// Height of the labelled mask in pixels.
    pub height: usize,
    /// Row-major label per pixel: 0 for background, `1..=count` for the region the pixel
    /// belongs to. Labels are assigned in raster order of each region's first pixel, so the
    /// output is deterministic.
    pub labels: Vec<u32>,
    /// Pixel count of each region; `sizes[l - 1]` is the size of label `l`.
    pub sizes: Vec<usize>,
}

impl Components {
    /// Number of regions found.
    pub fn count(&self) -> usize {
        self.sizes.len()
    }
}

/// Labels the 8-connected foreground regions of a row-major `width × height` mask.
///
/// Errors when `mask.len() != width * height`.
pub fn connected_components(
    mask: &[bool],
    width: usize,
    height: usize,
) -> Result<Components, MetricError> {
    let expected = checked_area(width, height)?;
    if mask.len() != expected {
        return Err(MetricError::MaskShape {
            image: 0,
            expected,
            actual: mask.len(),
        });
    }
    let mut labels = Vec::new();
    let mut stack = Vec::new();
    let sizes = label_into(width, height, |i| mask[i], &mut labels, &mut stack);
    Ok(Components {
        width,
        height,
        labels,
        sizes,
    })
}

/// `width * height` without overflow, as a typed error instead of a panic.
pub(crate) fn checked_area(width: usize, height: usize) -> Result<usize, MetricError> {
    width
        .checked_mul(height)
        .ok_or(MetricError::SizeOverflow { width, height })
}

/// Labelling core shared with the pixel metrics.
///
/// Takes the foreground test as a closure so callers with `u8` masks (0/255 PNGs) need not
/// allocate a `bool` copy, and reuses caller-owned buffers so that labelling hundreds of test
/// masks does not allocate per image. Uses an explicit-stack flood fill: O(pixels), no
/// recursion (a 600 × 600 defect would overflow the call stack), and no union–find bookkeeping.
///
/// On return `labels` holds `width * height` labels (0 = background) and the returned vector the
/// size of each region. The caller guarantees `is_fg` is valid for `0..width * height`.
pub(crate) fn label_into(
    width: usize,
    height: usize,
    is_fg: impl Fn(usize) -> bool,
    labels: &mut Vec<u32>,
    stack: &mut Vec<usize>,
) -> Vec<usize> {
    let n = width * height;
    labels.clear();
    labels.resize(n, 0);
    let mut sizes = Vec::new();
    for seed in 0..n {
        if labels[seed] != 0 || !is_fg(seed) {
            continue;
        }
        // A mask has at most `n` regions, and `n` fits in memory as `u32` labels only if it
        // is far below `u32::MAX`; saturate rather than wrap just in case.
        let label = u32::try_from(sizes.len() + 1).unwrap_or(u32::MAX);
        labels[seed] = label;
        stack.clear();
        stack.push(seed);
        let mut size = 0usize;
        while let Some(p) = stack.pop() {
            size += 1;
            let (x, y) = (p % width, p / width);
            let x0 = x.saturating_sub(1);
            let x1 = (x + 1).min(width - 1);
            let y0 = y.saturating_sub(1);
            let y1 = (y + 1).min(height - 1);
            for ny in y0..=y1 {
                for nx in x0..=x1 {
                    let q = ny * width + nx;
                    if labels[q] == 0 && is_fg(q) {
                        labels[q] = label;
                        stack.push(q);
                    }
                }
            }
        }
        sizes.push(size);
    }
    sizes
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses a hand-drawn mask: `#` is defect, anything else background.
    fn draw(rows: &[&str]) -> (Vec<bool>, usize, usize) {
        let width = rows[0].len();
        let mask = rows
            .iter()
            .flat_map(|r| {
                assert_eq!(r.len(), width);
                r.bytes().map(|b| b == b'#')
            })
            .collect();
        (mask, width, rows.len())
    }

    #[test]
    fn hand_drawn_mask() {
        let (mask, w, h) = draw(&[
            "##....#", // region 1 (top-left), region 2 (top-right)
            "#....#.", // region 2 continues diagonally
            "...#...", // region 3 alone
            "..#....", // diagonal contact joins it to region 3
            ".......", "###..##", // regions 4 and 5
        ]);
        let c = connected_components(&mask, w, h).unwrap();
        assert_eq!(c.count(), 5);
        assert_eq!(c.sizes, vec![3, 2, 2, 3, 2]);
        #[rustfmt::skip]
        let expected = vec![
            1, 1, 0, 0, 0, 0, 2,
            1, 0, 0, 0, 0, 2, 0,
            0, 0, 0, 3, 0, 0, 0,
            0, 0, 3, 0, 0, 0, 0,
            0, 0, 0, 0, 0, 0, 0,
            4, 4, 4, 0, 0, 5, 5,
        ];
        assert_eq!(c.labels, expected);
    }

    #[test]
    fn ring_and_enclosed_blob_are_separate() {
        // A hole in a ring is background; a blob inside the hole not touching the ring is its
        // own region. With 4-connectivity the diagonal corners would split the ring.
        let (mask, w, h) = draw(&[
            ".###...", //
            "#...#..", //
            "#.#.#..", //
            "#...#..", //
            ".###...", //
        ]);
        let c = connected_components(&mask, w, h).unwrap();
        assert_eq!(c.count(), 2);
        assert_eq!(c.sizes, vec![12, 1]);
        assert_eq!(c.labels[2 * w + 2], 2);
    }

    #[test]
    fn empty_full_and_degenerate_masks() {
        let c = connected_components(&[false; 12], 4, 3).unwrap();
        assert_eq!(c.count(), 0);
        assert!(c.labels.iter().all(|&l| l == 0));

        let c = connected_components(&[true; 12], 4, 3).unwrap();
        assert_eq!(c.sizes, vec![12]);

        // Single row and single column: neighbours must not wrap around the edges.
        let c = connected_components(&[true, false, true, true], 4, 1).unwrap();
        assert_eq!(c.sizes, vec![1, 2]);
        let c = connected_components(&[true, false, true, true], 1, 4).unwrap();
        assert_eq!(c.sizes, vec![1, 2]);
        // Right edge of one row must not connect to the left edge of the next.
        let (mask, w, h) = draw(&["..#", "#.."]);
        assert_eq!(connected_components(&mask, w, h).unwrap().count(), 2);

        let c = connected_components(&[], 0, 0).unwrap();
        assert_eq!(c.count(), 0);
    }

    #[test]
    fn wrong_length_is_an_error() {
        assert!(matches!(
            connected_components(&[true; 5], 2, 3),
            Err(MetricError::MaskShape {
                expected: 6,
                actual: 5,
                ..
            })
        ));
    }

    #[test]
    fn matches_pairwise_adjacency_on_random_masks() {
        use rand::rngs::StdRng;
        use rand::{Rng, SeedableRng};
        let mut rng = StdRng::seed_from_u64(11);
        for _ in 0..200 {
            let (w, h) = (rng.random_range(1..12), rng.random_range(1..12));
            let mask: Vec<bool> = (0..w * h).map(|_| rng.random_bool(0.45)).collect();
            let c = connected_components(&mask, w, h).unwrap();
            // Background is 0, foreground labelled; sizes agree with the labels.
            for (p, &m) in mask.iter().enumerate() {
                assert_eq!(m, c.labels[p] != 0);
            }
            for (i, &size) in c.sizes.iter().enumerate() {
                let n = c.labels.iter().filter(|&&l| l as usize == i + 1).count();
                assert_eq!(n, size);
            }
            // 8-adjacent foreground pixels share a label ...
            for p in 0..w * h {
                for q in 0..w * h {
                    let (px, py, qx, qy) = (p % w, p / w, q % w, q / w);
                    if mask[p] && mask[q] && px.abs_diff(qx) <= 1 && py.abs_diff(qy) <= 1 {
                        assert_eq!(c.labels[p], c.labels[q]);
                    }
                }
            }
            // ... and each label is one connected piece: flood from its first pixel over
            // same-label neighbours reaches all of it.
            for (i, &size) in c.sizes.iter().enumerate() {
                let label = (i + 1) as u32;
                let Some(start) = c.labels.iter().position(|&l| l == label) else {
                    panic!("label {label} unused");
                };
                let mut seen = vec![start];
                let mut k = 0;
                while k < seen.len() {
                    let p = seen[k];
                    k += 1;
                    for q in 0..w * h {
                        let (px, py, qx, qy) = (p % w, p / w, q % w, q / w);
                        if c.labels[q] == label
                            && px.abs_diff(qx) <= 1
                            && py.abs_diff(qy) <= 1
                            && !seen.contains(&q)
                        {
                            seen.push(q);
                        }
                    }
                }
                assert_eq!(seen.len(), size);
            }
        }
    }

    #[test]
    fn large_blob_does_not_overflow_the_stack() {
        let (w, h) = (700, 700);
        let c = connected_components(&vec![true; w * h], w, h).unwrap();
        assert_eq!(c.sizes, vec![w * h]);
    }
}
