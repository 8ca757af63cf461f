//! Image- and pixel-level anomaly-detection metrics (DESIGN.md §3).
//!
//! Conventions shared by every function here:
//!
//! - Higher score = more anomalous. The positive class is *defective* (an image with a defect,
//!   or a pixel inside a ground-truth mask).
//! - Curves are swept over every distinct score: at threshold `t` everything scoring `>= t` is
//!   flagged. Samples with equal scores are flagged together, so a tie between a defective and a
//!   good sample becomes a diagonal segment of the curve, and areas under it count such a pair as
//!   half right — the Mann–Whitney convention. A model that outputs a constant therefore scores
//!   exactly 0.5 AUROC, never an accidental 0 or 1 depending on sort order.
//! - All metrics are exact: no threshold binning. Scores are mapped once to order-preserving
//!   `u32` keys and sorted; everything else is a linear sweep over the sorted keys.
//! - `-0.0` and `0.0` are the same score; `NaN` is rejected with an error because it has no
//!   place in an ordering and would silently corrupt a rank-based metric.
//!
//! Memory: [`PixelEval`] keeps 4 bytes per defect-free pixel and 8 bytes per defect pixel, so
//! the 547 MTD test images at full resolution (≈ 217 M pixels) need ≈ 0.9 GB, and at a reduced
//! map resolution of 256 × 256 (≈ 36 M pixels) ≈ 150 MB.

use rayon::slice::ParallelSliceMut;
use serde::Serialize;
use thiserror::Error;
use ustad_core::judge::decide::Verdict;
pub use ustad_core::plot::CurvePoint;

use super::components::{checked_area, label_into};

/// Why a metric could not be computed.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum MetricError {
    /// Two parallel inputs (scores and labels, or predictions and labels) differ in length.
    #[error("{what}: expected {expected} entries, got {actual}")]
    LengthMismatch {
        /// Which input was too short or too long.
        what: &'static str,
        /// The length implied by the other input.
        expected: usize,
        /// The length actually given.
        actual: usize,
    },
    /// A metric needs both classes and one of them is empty.
    #[error("no {0} samples: the metric is undefined without both classes")]
    EmptyClass(&'static str),
    /// An image-level score is NaN.
    #[error("score {index} is NaN")]
    NanScore {
        /// Index into the score slice.
        index: usize,
    },
    /// A pixel of an anomaly map is NaN.
    #[error("image {image}: anomaly map pixel {index} is NaN")]
    NanPixel {
        /// Index of the map in the input slice.
        image: usize,
        /// Row-major pixel index.
        index: usize,
    },
    /// An anomaly map's length does not match its stated size.
    #[error("image {image}: map has {actual} values but is declared {width}×{height}")]
    MapShape {
        /// Index of the map in the input slice.
        image: usize,
        /// Declared width.
        width: usize,
        /// Declared height.
        height: usize,
        /// Actual number of values.
        actual: usize,
    },
    /// A ground-truth mask does not have one entry per map pixel.
    #[error("image {image}: mask has {actual} pixels, map has {expected}")]
    MaskShape {
        /// Index of the image in the input slice.
        image: usize,
        /// Pixel count of the map.
        expected: usize,
        /// Pixel count of the mask.
        actual: usize,
    },
    /// `width * height` overflows `usize`.
    #[error("{width}×{height} is too many pixels")]
    SizeOverflow {
        /// Declared width.
        width: usize,
        /// Declared height.
        height: usize,
    },
    /// More ground-truth regions than the 32-bit region ids can index.
    #[error("more than 2^32 ground-truth regions")]
    TooManyRegions,
    /// The AU-PRO integration limit is outside `(0, 1]`.
    #[error("FPR limit must be in (0, 1], got {0}")]
    FprLimit(f64),
}

/// Maps an `f32` to a `u32` whose unsigned order is the float's total order.
///
/// Sorting `u32` is faster than sorting floats with a comparator, and integer keys make "equal
/// score" an exact, unambiguous test for tie grouping. `x + 0.0` turns `-0.0` into `+0.0` so
/// the two zeros tie, as they compare equal as floats. NaN must be filtered out before.
fn order_key(x: f32) -> u32 {
    let bits = (x + 0.0).to_bits();
    if bits & 0x8000_0000 != 0 {
        !bits
    } else {
        bits | 0x8000_0000
    }
}

/// Inverse of [`order_key`], used to report thresholds on curves.
fn key_value(key: u32) -> f32 {
    if key & 0x8000_0000 != 0 {
        f32::from_bits(key & 0x7fff_ffff)
    } else {
        f32::from_bits(!key)
    }
}

/// Sorts in parallel when it is worth it; the pixel metrics sort tens of millions of keys.
fn sort_keys<T: Ord + Send + Copy>(v: &mut [T]) {
    if v.len() > 1 << 16 {
        v.par_sort_unstable();
    } else {
        v.sort_unstable();
    }
}

/// Validates image-level inputs and splits them into sorted negative keys and sorted positive
/// keys (as `key << 32`, the layout the shared sweep expects).
fn split_scores(scores: &[f32], labels: &[bool]) -> Result<(Vec<u32>, Vec<u64>), MetricError> {
    if labels.len() != scores.len() {
        return Err(MetricError::LengthMismatch {
            what: "labels",
            expected: scores.len(),
            actual: labels.len(),
        });
    }
    let mut neg = Vec::new();
    let mut pos = Vec::new();
    for (index, (&s, &l)) in scores.iter().zip(labels).enumerate() {
        if s.is_nan() {
            return Err(MetricError::NanScore { index });
        }
        if l {
            pos.push(u64::from(order_key(s)) << 32);
        } else {
            neg.push(order_key(s));
        }
    }
    if pos.is_empty() {
        return Err(MetricError::EmptyClass("defective"));
    }
    if neg.is_empty() {
        return Err(MetricError::EmptyClass("good"));
    }
    sort_keys(&mut neg);
    sort_keys(&mut pos);
    Ok((neg, pos))
}

/// Image-level AUROC: the probability that a random defective image scores higher than a
/// random good one, ties counting one half.
///
/// Computed as the Mann–Whitney U statistic with mid-ranks, exactly in integer arithmetic
/// (ranks are doubled so mid-ranks of tie groups stay integral). `labels[i]` is `true` when
/// image `i` is defective.
///
/// Errors when the lengths differ, a score is NaN, or either class is empty.
pub fn image_auroc(scores: &[f32], labels: &[bool]) -> Result<f64, MetricError> {
    let (neg, pos) = split_scores(scores, labels)?;
    let mut all: Vec<(u32, bool)> = neg
        .iter()
        .map(|&k| (k, false))
        .chain(pos.iter().map(|&k| ((k >> 32) as u32, true)))
        .collect();
    all.sort_unstable();
    // Sum over positives of 2 × mid-rank. A tie group occupying sorted positions i..j (ranks
    // i+1..=j) has mid-rank (i + 1 + j) / 2.
    let mut twice_rank_sum: u128 = 0;
    let mut i = 0;
    while i < all.len() {
        let mut j = i;
        let mut group_pos: u128 = 0;
        while j < all.len() && all[j].0 == all[i].0 {
            group_pos += u128::from(all[j].1);
            j += 1;
        }
        twice_rank_sum += group_pos * (i + 1 + j) as u128;
        i = j;
    }
    let (n_pos, n_neg) = (pos.len() as u128, neg.len() as u128);
    let twice_u = twice_rank_sum - n_pos * (n_pos + 1);
    Ok(twice_u as f64 / (2 * n_pos * n_neg) as f64)
}

/// Image AUROC with its DeLong standard error and a normal-approximation confidence interval.
///
/// With a few hundred test images an AUROC of 0.6 can be chance or not; the interval says which.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct AurocInterval {
    /// The empirical AUROC, as [`image_auroc`].
    pub auroc: f64,
    /// DeLong et al. (1988) standard error of the empirical AUROC.
    pub standard_error: f64,
    /// `auroc ± z · standard_error`, clipped to [0, 1].
    pub low: f64,
    pub high: f64,
    /// Coverage of `low..high` (0.95 for z = 1.96).
    pub level: f64,
}

/// [`image_auroc`] with a 95 % confidence interval from DeLong's variance estimate.
///
/// DeLong: each defective image's *placement* is the fraction of good images it outscores (ties
/// one half), and each good image's the fraction of defective images that outscore it; the
/// AUROC is the mean of either, and its variance `var(placements of defective) / m +
/// var(placements of good) / n`. Exact O(m·n) pairing; test sets are hundreds of images.
///
/// Errors as [`image_auroc`]; with one image in a class the variance of that class is taken as 0.
pub fn image_auroc_interval(scores: &[f32], labels: &[bool]) -> Result<AurocInterval, MetricError> {
    let auroc = image_auroc(scores, labels)?;
    let pos: Vec<f32> = scores
        .iter()
        .zip(labels)
        .filter(|(_, l)| **l)
        .map(|(s, _)| *s)
        .collect();
    let neg: Vec<f32> = scores
        .iter()
        .zip(labels)
        .filter(|(_, l)| !**l)
        .map(|(s, _)| *s)
        .collect();
    let wins = |p: f32, n: f32| {
        if p > n {
            1.0
        } else if p == n {
            0.5
        } else {
            0.0
        }
    };
    let pos_placements: Vec<f64> = pos
        .iter()
        .map(|&p| neg.iter().map(|&n| wins(p, n)).sum::<f64>() / neg.len() as f64)
        .collect();
    let neg_placements: Vec<f64> = neg
        .iter()
        .map(|&n| pos.iter().map(|&p| wins(p, n)).sum::<f64>() / pos.len() as f64)
        .collect();
    let sample_variance = |v: &[f64]| {
        if v.len() < 2 {
            return 0.0;
        }
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (v.len() - 1) as f64
    };
    let variance = sample_variance(&pos_placements) / pos.len() as f64
        + sample_variance(&neg_placements) / neg.len() as f64;
    let standard_error = variance.sqrt();
    const Z95: f64 = 1.959_963_984_540_054;
    Ok(AurocInterval {
        auroc,
        standard_error,
        low: (auroc - Z95 * standard_error).max(0.0),
        high: (auroc + Z95 * standard_error).min(1.0),
        level: 0.95,
    })
}

/// Image-level ROC curve, one point per distinct score plus the origin.
///
/// Samples with equal scores are collapsed into one point, so ties appear as diagonal segments
/// and the trapezoid area under the returned curve equals [`image_auroc`]. Points are ordered by
/// decreasing threshold, i.e. non-decreasing FPR and TPR, ending at (1, 1).
pub fn roc_curve(scores: &[f32], labels: &[bool]) -> Result<Vec<CurvePoint>, MetricError> {
    let (neg, pos) = split_scores(scores, labels)?;
    let (n_neg, n_pos) = (neg.len() as f64, pos.len() as f64);
    let mut curve = vec![CurvePoint {
        threshold: f32::INFINITY,
        fpr: 0.0,
        y: 0.0,
    }];
    sweep(
        &neg,
        &pos,
        |_| 0.0,
        |s| {
            curve.push(CurvePoint {
                threshold: key_value(s.key),
                fpr: s.fp as f64 / n_neg,
                y: s.tp as f64 / n_pos,
            });
            true
        },
    );
    Ok(curve)
}

/// Trapezoid area under a curve given by points of non-decreasing FPR, from FPR 0 to
/// `fpr_limit`, linearly interpolating the curve at exactly `fpr_limit`.
///
/// Exposed so callers can integrate curves they built themselves (and so tests can compare
/// against it); the pixel metrics integrate on the fly instead of storing the curve.
pub fn area_under(curve: &[CurvePoint], fpr_limit: f64) -> f64 {
    let mut area = Integrator::new(fpr_limit);
    for p in curve {
        if !area.push(p.fpr, p.y) {
            break;
        }
    }
    area.area
}

/// Running trapezoid integration up to an FPR limit.
struct Integrator {
    limit: f64,
    prev: (f64, f64),
    area: f64,
}

impl Integrator {
    /// Curves start at the origin: nothing flagged, no false positives, no overlap.
    fn new(limit: f64) -> Self {
        Integrator {
            limit,
            prev: (0.0, 0.0),
            area: 0.0,
        }
    }

    /// Adds the segment from the previous point to `(x, y)`. Returns `false` once the limit is
    /// reached, after adding the partial trapezoid up to the interpolated point at the limit.
    fn push(&mut self, x: f64, y: f64) -> bool {
        let (x0, y0) = self.prev;
        if x >= self.limit {
            // x0 < limit <= x here, so the division is safe.
            let y_at = y0 + (y - y0) * (self.limit - x0) / (x - x0);
            self.area += (self.limit - x0) * (y0 + y_at) / 2.0;
            return false;
        }
        self.area += (x - x0) * (y0 + y) / 2.0;
        self.prev = (x, y);
        true
    }
}

/// State of a threshold sweep after flagging every sample with key `>= key`.
struct SweepState {
    key: u32,
    /// Negatives flagged so far.
    fp: u64,
    /// Positives flagged so far.
    tp: u64,
    /// Sum of the per-positive weights flagged so far.
    weight: f64,
}

/// Sweeps the threshold down over every distinct key of two ascending-sorted inputs, calling
/// `visit` once per distinct key after flagging all samples with that key; `visit` returns
/// `false` to stop early.
///
/// `pos` holds `key << 32 | region` and `weight(region)` the amount each positive adds to the
/// running weight (1 / (region size × region count) for PRO). This single merge is what makes
/// ROC, PRO and their areas exact with correct tie handling in O(n) after sorting.
fn sweep(
    neg: &[u32],
    pos: &[u64],
    weight: impl Fn(u32) -> f64,
    mut visit: impl FnMut(&SweepState) -> bool,
) {
    let (mut i, mut j) = (neg.len(), pos.len());
    let mut state = SweepState {
        key: 0,
        fp: 0,
        tp: 0,
        weight: 0.0,
    };
    // Neumaier-compensated running sum: tens of millions of tiny per-pixel weights would
    // otherwise drift by ~1e-9 from the true PRO.
    let (mut sum, mut compensation) = (0.0f64, 0.0f64);
    loop {
        let kn = i.checked_sub(1).map(|i| neg[i]);
        let kp = j.checked_sub(1).map(|j| (pos[j] >> 32) as u32);
        let Some(key) = kn.max(kp) else { break };
        while i > 0 && neg[i - 1] == key {
            i -= 1;
            state.fp += 1;
        }
        while j > 0 && (pos[j - 1] >> 32) as u32 == key {
            j -= 1;
            state.tp += 1;
            let w = weight(pos[j] as u32);
            let t = sum + w;
            compensation += if sum.abs() >= w.abs() {
                (sum - t) + w
            } else {
                (w - t) + sum
            };
            sum = t;
        }
        state.key = key;
        state.weight = sum + compensation;
        if !visit(&state) {
            break;
        }
    }
}

/// Ground truth of one test image.
#[derive(Clone, Copy, Debug)]
pub enum Mask<'a> {
    /// A good image: every pixel is defect-free. Saves building an all-zero mask for the
    /// majority of test images.
    Good,
    /// One `bool` per map pixel, `true` inside a defect.
    Bool(&'a [bool]),
    /// One byte per map pixel as in MVTec `*_mask.png` files (0 / 255). Values `>= 128` are
    /// defect, so a mask resized with interpolation is cut at half coverage.
    Gray(&'a [u8]),
}

impl Mask<'_> {
    fn len(&self) -> Option<usize> {
        match self {
            Mask::Good => None,
            Mask::Bool(m) => Some(m.len()),
            Mask::Gray(m) => Some(m.len()),
        }
    }
}

/// One anomaly map with its ground truth, for the pixel-level metrics.
///
/// Maps may be at any resolution (evaluating at a reduced size saves memory and time); the mask
/// must have the same size as the map.
#[derive(Clone, Copy, Debug)]
pub struct MapSample<'a> {
    /// Row-major anomaly scores, `width * height` of them.
    pub scores: &'a [f32],
    /// Map width in pixels.
    pub width: usize,
    /// Map height in pixels.
    pub height: usize,
    /// Ground truth at the map's resolution.
    pub mask: Mask<'a>,
}

/// Pixel-level evaluation over a whole test set: sorts every pixel once, then answers pixel
/// AUROC, AU-PRO and both curves from the same sorted data.
///
/// Build it once per evaluation and query it several times; [`pixel_auroc`] and [`au_pro`]
/// are one-shot shortcuts that each sort again.
#[derive(Clone, Debug)]
pub struct PixelEval {
    /// Order keys of the defect-free pixels, ascending.
    negatives: Vec<u32>,
    /// `key << 32 | region id` of the defect pixels, ascending.
    positives: Vec<u64>,
    /// `1 / (region size × region count)`: what one pixel of each region adds to PRO.
    region_weight: Vec<f64>,
}

impl PixelEval {
    /// Collects and sorts every pixel of `samples`, labelling the ground-truth regions of each
    /// mask with 8-connectivity. Regions never span images.
    ///
    /// Errors on a map/mask size mismatch, a NaN pixel, or when there are no defect pixels or
    /// no defect-free pixels (both metrics are undefined then).
    pub fn new(samples: &[MapSample<'_>]) -> Result<Self, MetricError> {
        let mut total = 0usize;
        for (image, s) in samples.iter().enumerate() {
            let n = checked_area(s.width, s.height)?;
            if s.scores.len() != n {
                return Err(MetricError::MapShape {
                    image,
                    width: s.width,
                    height: s.height,
                    actual: s.scores.len(),
                });
            }
            if let Some(len) = s.mask.len().filter(|&len| len != n) {
                return Err(MetricError::MaskShape {
                    image,
                    expected: n,
                    actual: len,
                });
            }
            total = total.saturating_add(n);
        }
        // Defect pixels are a small fraction of a test set: reserving for all pixels as
        // negatives avoids repeated doubling of the largest buffer at a small over-allocation.
        let mut negatives = Vec::with_capacity(total);
        let mut positives = Vec::new();
        let mut region_sizes: Vec<usize> = Vec::new();
        let mut labels = Vec::new();
        let mut stack = Vec::new();
        for (image, s) in samples.iter().enumerate() {
            if let Some(index) = s.scores.iter().position(|v| v.is_nan()) {
                return Err(MetricError::NanPixel { image, index });
            }
            let sizes = match s.mask {
                Mask::Good => Vec::new(),
                Mask::Bool(m) => label_into(s.width, s.height, |i| m[i], &mut labels, &mut stack),
                Mask::Gray(m) => {
                    label_into(s.width, s.height, |i| m[i] >= 128, &mut labels, &mut stack)
                }
            };
            if sizes.is_empty() {
                negatives.extend(s.scores.iter().map(|&v| order_key(v)));
                continue;
            }
            let base = region_sizes.len();
            region_sizes.extend(&sizes);
            if region_sizes.len() > u32::MAX as usize {
                return Err(MetricError::TooManyRegions);
            }
            for (&v, &label) in s.scores.iter().zip(&labels) {
                let key = order_key(v);
                if label == 0 {
                    negatives.push(key);
                } else {
                    // Fits: region_sizes.len() <= u32::MAX checked above.
                    let region = (base + label as usize - 1) as u64;
                    positives.push(u64::from(key) << 32 | region);
                }
            }
        }
        if positives.is_empty() {
            return Err(MetricError::EmptyClass("defect pixel"));
        }
        if negatives.is_empty() {
            return Err(MetricError::EmptyClass("defect-free pixel"));
        }
        negatives.shrink_to_fit();
        sort_keys(&mut negatives);
        sort_keys(&mut positives);
        let count = region_sizes.len() as f64;
        let region_weight = region_sizes
            .iter()
            .map(|&size| 1.0 / (size as f64 * count))
            .collect();
        Ok(PixelEval {
            negatives,
            positives,
            region_weight,
        })
    }

    /// Number of defect-free pixels (the FPR denominator).
    pub fn good_pixels(&self) -> usize {
        self.negatives.len()
    }

    /// Number of defect pixels.
    pub fn defect_pixels(&self) -> usize {
        self.positives.len()
    }

    /// Number of ground-truth regions over all images.
    pub fn regions(&self) -> usize {
        self.region_weight.len()
    }

    /// Pixel AUROC, exact, ties counting one half.
    ///
    /// Counts, for every defect pixel, the defect-free pixels strictly below and equal to it
    /// with a two-pointer walk over the sorted keys, in integer arithmetic.
    pub fn auroc(&self) -> f64 {
        let neg = &self.negatives;
        let mut lo = 0usize;
        let mut twice_wins: u128 = 0;
        let mut j = 0;
        while j < self.positives.len() {
            let key = (self.positives[j] >> 32) as u32;
            let start = j;
            while j < self.positives.len() && (self.positives[j] >> 32) as u32 == key {
                j += 1;
            }
            while lo < neg.len() && neg[lo] < key {
                lo += 1;
            }
            let mut hi = lo;
            while hi < neg.len() && neg[hi] == key {
                hi += 1;
            }
            twice_wins += (j - start) as u128 * (2 * lo + (hi - lo)) as u128;
        }
        twice_wins as f64 / (2 * self.negatives.len() as u128 * self.positives.len() as u128) as f64
    }

    /// Normalised area under the PRO curve from FPR 0 to `fpr_limit` (MVTec AU-PRO; DESIGN.md
    /// uses 0.3).
    ///
    /// PRO at threshold `t` is the mean over all ground-truth regions of the fraction of the
    /// region's pixels scoring `>= t`; the x-axis is the fraction of defect-free pixels (of all
    /// images, good ones included) scoring `>= t`. The curve is swept exactly over every distinct
    /// pixel score, integrated with the trapezoid rule, interpolated at exactly `fpr_limit`, and
    /// divided by `fpr_limit` so a perfect map scores 1.0. Exact up to `f64` rounding of the
    /// (compensated) running PRO sum, about 1e-15, with no threshold binning.
    pub fn au_pro(&self, fpr_limit: f64) -> Result<f64, MetricError> {
        if !(fpr_limit > 0.0 && fpr_limit <= 1.0) {
            return Err(MetricError::FprLimit(fpr_limit));
        }
        let n_neg = self.negatives.len() as f64;
        let mut area = Integrator::new(fpr_limit);
        sweep(
            &self.negatives,
            &self.positives,
            |r| self.region_weight[r as usize],
            |s| area.push(s.fp as f64 / n_neg, self.pro_of(s)),
        );
        Ok(area.area / fpr_limit)
    }

    /// PRO at a sweep state: the running sum, exactly 1 once every defect pixel is flagged
    /// (so curves end at (1, 1) despite rounding), never above 1.
    fn pro_of(&self, s: &SweepState) -> f64 {
        if s.tp as usize == self.positives.len() {
            1.0
        } else {
            s.weight.min(1.0)
        }
    }

    /// The PRO curve over the full FPR range, thinned for plotting.
    ///
    /// The exact curve has a point per distinct pixel score (tens of millions); this keeps a
    /// point only once it is at least `resolution` away (in FPR or PRO) from the last kept
    /// point, plus the point just before it, so the kept polyline stays within `resolution` of
    /// the exact one in both coordinates and has at most about `4 / resolution` points. Use
    /// `resolution = 0.0` for every point. Always starts at (0, 0) and ends at (1, 1).
    pub fn pro_curve(&self, resolution: f64) -> Vec<CurvePoint> {
        let n_neg = self.negatives.len() as f64;
        let mut thin = Thinner::new(resolution);
        sweep(
            &self.negatives,
            &self.positives,
            |r| self.region_weight[r as usize],
            |s| {
                thin.push(CurvePoint {
                    threshold: key_value(s.key),
                    fpr: s.fp as f64 / n_neg,
                    y: self.pro_of(s),
                });
                true
            },
        );
        thin.finish()
    }

    /// The pixel ROC curve, thinned for plotting like [`PixelEval::pro_curve`].
    pub fn roc_curve(&self, resolution: f64) -> Vec<CurvePoint> {
        let n_neg = self.negatives.len() as f64;
        let n_pos = self.positives.len() as f64;
        let mut thin = Thinner::new(resolution);
        sweep(
            &self.negatives,
            &self.positives,
            |_| 0.0,
            |s| {
                thin.push(CurvePoint {
                    threshold: key_value(s.key),
                    fpr: s.fp as f64 / n_neg,
                    y: s.tp as f64 / n_pos,
                });
                true
            },
        );
        thin.finish()
    }
}

/// Drops curve points that are within `resolution` of the last kept one.
///
/// Both coordinates of a ROC/PRO curve are non-decreasing along the sweep, so every dropped
/// point lies in the box between the last kept point and that point plus `resolution`; keeping
/// the last dropped point before each jump preserves the corners of the staircase.
struct Thinner {
    resolution: f64,
    kept: Vec<CurvePoint>,
    pending: Option<CurvePoint>,
}

impl Thinner {
    fn new(resolution: f64) -> Self {
        Thinner {
            resolution,
            kept: vec![CurvePoint {
                threshold: f32::INFINITY,
                fpr: 0.0,
                y: 0.0,
            }],
            pending: None,
        }
    }

    fn push(&mut self, p: CurvePoint) {
        let last = self.kept[self.kept.len() - 1];
        let far = (p.fpr - last.fpr).abs().max((p.y - last.y).abs());
        if far >= self.resolution && far > 0.0 {
            if let Some(q) = self.pending.take() {
                self.kept.push(q);
            }
            self.kept.push(p);
        } else {
            self.pending = Some(p);
        }
    }

    fn finish(mut self) -> Vec<CurvePoint> {
        if let Some(q) = self.pending.take() {
            self.kept.push(q);
        }
        self.kept
    }
}

/// Pixel AUROC over a set of maps; see [`PixelEval::auroc`].
pub fn pixel_auroc(samples: &[MapSample<'_>]) -> Result<f64, MetricError> {
    Ok(PixelEval::new(samples)?.auroc())
}

/// AU-PRO over a set of maps, normalised to [0, 1]; see [`PixelEval::au_pro`].
pub fn au_pro(samples: &[MapSample<'_>], fpr_limit: f64) -> Result<f64, MetricError> {
    PixelEval::new(samples)?.au_pro(fpr_limit)
}

/// Confusion counts and the two rates an operator cares about, at one deployed threshold.
///
/// Positive = defective = rejected. A false positive is a *false reject* (a good part thrown
/// away, costing yield); a false negative is an *escape* (a defective part shipped, costing a
/// customer complaint). The two rates are kept separate because they have very different costs
/// and no single accuracy number says which one a threshold trades.
///
/// Serialises to JSON with the four counts plus `false_reject_rate` and `escape_rate` (`null`
/// when undefined), so reports need no post-processing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThresholdReport {
    /// Defective parts rejected.
    pub true_positives: usize,
    /// Good parts rejected (false rejects).
    pub false_positives: usize,
    /// Good parts accepted.
    pub true_negatives: usize,
    /// Defective parts accepted (escapes).
    pub false_negatives: usize,
}

impl ThresholdReport {
    /// Counts decisions at `threshold` with the daemon's rule (`decide::Verdict::from_score`):
    /// reject when `score >= threshold`, so a part scoring exactly the threshold is rejected,
    /// matching the `>=` convention of the curves.
    ///
    /// Errors when the lengths differ or a score is NaN: the daemon rejects a NaN part, but in
    /// an evaluation a NaN means a broken model and should stop the run, not inflate a count.
    pub fn at_threshold(
        scores: &[f32],
        defective: &[bool],
        threshold: f32,
    ) -> Result<Self, MetricError> {
        if let Some(index) = scores.iter().position(|s| s.is_nan()) {
            return Err(MetricError::NanScore { index });
        }
        let rejected: Vec<bool> = scores
            .iter()
            .map(|&s| Verdict::from_score(s, threshold).rejects())
            .collect();
        Self::from_decisions(&rejected, defective)
    }

    /// Counts already-made decisions, for decision rules that are more than a score threshold
    /// (minimum defect area, top-k mean, ...).
    pub fn from_decisions(rejected: &[bool], defective: &[bool]) -> Result<Self, MetricError> {
        if defective.len() != rejected.len() {
            return Err(MetricError::LengthMismatch {
                what: "labels",
                expected: rejected.len(),
                actual: defective.len(),
            });
        }
        let mut r = ThresholdReport {
            true_positives: 0,
            false_positives: 0,
            true_negatives: 0,
            false_negatives: 0,
        };
        for (&rej, &def) in rejected.iter().zip(defective) {
            match (rej, def) {
                (true, true) => r.true_positives += 1,
                (true, false) => r.false_positives += 1,
                (false, false) => r.true_negatives += 1,
                (false, true) => r.false_negatives += 1,
            }
        }
        Ok(r)
    }

    /// Good parts seen.
    pub fn good(&self) -> usize {
        self.false_positives + self.true_negatives
    }

    /// Defective parts seen.
    pub fn defective(&self) -> usize {
        self.true_positives + self.false_negatives
    }

    /// Fraction of good parts rejected; `None` without good parts.
    pub fn false_reject_rate(&self) -> Option<f64> {
        ratio(self.false_positives, self.good())
    }

    /// Fraction of defective parts accepted; `None` without defective parts.
    pub fn escape_rate(&self) -> Option<f64> {
        ratio(self.false_negatives, self.defective())
    }
}

impl Serialize for ThresholdReport {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = serializer.serialize_struct("ThresholdReport", 6)?;
        st.serialize_field("true_positives", &self.true_positives)?;
        st.serialize_field("false_positives", &self.false_positives)?;
        st.serialize_field("true_negatives", &self.true_negatives)?;
        st.serialize_field("false_negatives", &self.false_negatives)?;
        st.serialize_field("false_reject_rate", &self.false_reject_rate())?;
        st.serialize_field("escape_rate", &self.escape_rate())?;
        st.end()
    }
}

fn ratio(num: usize, den: usize) -> Option<f64> {
    (den > 0).then(|| num as f64 / den as f64)
}

/// The wrong decisions at a threshold, worst first, for showing people what went wrong.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Mistakes {
    /// Indices of good images rejected, highest score (most confidently wrong) first.
    pub false_rejects: Vec<usize>,
    /// Indices of defective images accepted, lowest score (most confidently wrong) first.
    pub escapes: Vec<usize>,
}

/// Lists false rejects and escapes at `threshold` (rule as in
/// [`ThresholdReport::at_threshold`]), worst first; ties keep input order.
pub fn mistakes(
    scores: &[f32],
    defective: &[bool],
    threshold: f32,
) -> Result<Mistakes, MetricError> {
    if defective.len() != scores.len() {
        return Err(MetricError::LengthMismatch {
            what: "labels",
            expected: scores.len(),
            actual: defective.len(),
        });
    }
    if let Some(index) = scores.iter().position(|s| s.is_nan()) {
        return Err(MetricError::NanScore { index });
    }
    let mut m = Mistakes::default();
    for (i, (&s, &d)) in scores.iter().zip(defective).enumerate() {
        match (Verdict::from_score(s, threshold).rejects(), d) {
            (true, false) => m.false_rejects.push(i),
            (false, true) => m.escapes.push(i),
            _ => {}
        }
    }
    m.false_rejects
        .sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    m.escapes.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    const EPS: f64 = 1e-12;

    /// O(n²) AUROC straight from the definition.
    fn pairwise_auroc(scores: &[f32], labels: &[bool]) -> f64 {
        let (mut wins, mut pairs) = (0.0, 0.0);
        for (&p, _) in scores.iter().zip(labels).filter(|(_, l)| **l) {
            for (&n, _) in scores.iter().zip(labels).filter(|(_, l)| !**l) {
                pairs += 1.0;
                if p > n {
                    wins += 1.0;
                } else if p == n {
                    wins += 0.5;
                }
            }
        }
        wins / pairs
    }

    #[test]
    fn image_auroc_hand_computed() {
        // The scikit-learn docstring example.
        let auc = image_auroc(&[0.1, 0.4, 0.35, 0.8], &[false, false, true, true]).unwrap();
        assert!((auc - 0.75).abs() < EPS);
        // Ties: pos {0.5, 0.9}, neg {0.5, 0.2} → (0.5 + 1 + 1 + 1) / 4.
        let auc = image_auroc(&[0.5, 0.5, 0.2, 0.9], &[true, false, false, true]).unwrap();
        assert!((auc - 0.875).abs() < EPS);
    }

    #[test]
    fn auroc_interval_hand_computed_delong() {
        // pos {0.35, 0.8}, neg {0.1, 0.4}: placements of pos {0.5, 1}, of neg {1, 0.5};
        // each sample variance 0.125, so var = 0.125 / 2 + 0.125 / 2 = 0.125.
        let i = image_auroc_interval(&[0.1, 0.4, 0.35, 0.8], &[false, false, true, true]).unwrap();
        assert!((i.auroc - 0.75).abs() < EPS);
        assert!((i.standard_error - 0.125f64.sqrt()).abs() < 1e-12, "{i:?}");
        assert!((i.low - (0.75 - 1.959_963_984_540_054 * 0.125f64.sqrt())).abs() < 1e-12);
        assert_eq!(i.high, 1.0, "clipped");
        // Perfect separation has no spread of placements: the interval is the point.
        let labels = [false, true, false, true, true, false];
        let i = image_auroc_interval(&[0.1, 0.9, 0.2, 0.8, 0.7, 0.3], &labels).unwrap();
        assert_eq!(
            (i.auroc, i.standard_error, i.low, i.high),
            (1.0, 0.0, 1.0, 1.0)
        );
    }

    #[test]
    fn auroc_interval_narrows_with_more_images_and_holds_the_auroc() {
        // The same overlapping score pattern repeated: the AUROC stays, the error shrinks ~1/√k.
        let base_scores = [0.1f32, 0.5, 0.3, 0.45, 0.7, 0.2, 0.6, 0.4];
        let base_labels = [false, true, false, true, true, false, false, true];
        let repeat = |k: usize| {
            let s: Vec<f32> = (0..k).flat_map(|_| base_scores).collect();
            let l: Vec<bool> = (0..k).flat_map(|_| base_labels).collect();
            image_auroc_interval(&s, &l).unwrap()
        };
        let (small, large) = (repeat(4), repeat(64));
        assert!((small.auroc - large.auroc).abs() < EPS);
        assert!(small.low <= small.auroc && small.auroc <= small.high);
        let ratio = small.standard_error / large.standard_error;
        assert!((3.5..4.5).contains(&ratio), "ratio {ratio}");
        assert!(image_auroc_interval(&[1.0], &[true]).is_err());
    }

    #[test]
    fn image_auroc_perfect_inverted_and_constant() {
        let labels = [false, true, false, true, true, false];
        let perfect = [0.1, 0.9, 0.2, 0.8, 0.7, 0.3];
        let inverted: Vec<f32> = perfect.iter().map(|s| -s).collect();
        assert_eq!(image_auroc(&perfect, &labels).unwrap(), 1.0);
        assert_eq!(image_auroc(&inverted, &labels).unwrap(), 0.0);
        assert_eq!(image_auroc(&[3.0; 6], &labels).unwrap(), 0.5);
        // The two zeros are the same score.
        assert_eq!(image_auroc(&[0.0, -0.0], &[true, false]).unwrap(), 0.5);
        // Infinities order like any score.
        let auc = image_auroc(&[f32::INFINITY, f32::NEG_INFINITY], &[true, false]).unwrap();
        assert_eq!(auc, 1.0);
    }

    #[test]
    fn image_auroc_matches_pairwise_on_random_data_with_ties() {
        let mut rng = StdRng::seed_from_u64(5);
        for round in 0..50 {
            let n = rng.random_range(2..120);
            let levels = if round % 2 == 0 { 5 } else { 1000 };
            let mut labels: Vec<bool> = (0..n).map(|_| rng.random_bool(0.4)).collect();
            labels[0] = true;
            labels[1] = false;
            let scores: Vec<f32> = labels
                .iter()
                .map(|&l| {
                    let base = rng.random_range(0..levels) as f32 / levels as f32;
                    if l { base + 0.1 } else { base }
                })
                .collect();
            let expected = pairwise_auroc(&scores, &labels);
            let auc = image_auroc(&scores, &labels).unwrap();
            assert!((auc - expected).abs() < EPS, "{auc} vs {expected}");
            let curve = roc_curve(&scores, &labels).unwrap();
            assert!((area_under(&curve, 1.0) - expected).abs() < EPS);
        }
    }

    #[test]
    fn roc_curve_collapses_ties() {
        let scores = [0.9, 0.5, 0.5, 0.5, 0.1];
        let labels = [true, true, false, false, false];
        let curve = roc_curve(&scores, &labels).unwrap();
        let xy: Vec<(f64, f64)> = curve.iter().map(|p| (p.fpr, p.y)).collect();
        assert_eq!(
            xy,
            vec![(0.0, 0.0), (0.0, 0.5), (2.0 / 3.0, 1.0), (1.0, 1.0)]
        );
        let t: Vec<f32> = curve.iter().map(|p| p.threshold).collect();
        assert_eq!(t, vec![f32::INFINITY, 0.9, 0.5, 0.1]);
        // Diagonal through the tie: (0.5·1 + 0.5·0.5·... ) = pairwise.
        let auc = pairwise_auroc(&scores, &labels);
        assert!((area_under(&curve, 1.0) - auc).abs() < EPS);
    }

    #[test]
    fn image_metric_errors() {
        assert_eq!(
            image_auroc(&[0.1, 0.2], &[true, true]),
            Err(MetricError::EmptyClass("good"))
        );
        assert_eq!(
            image_auroc(&[0.1, 0.2], &[false, false]),
            Err(MetricError::EmptyClass("defective"))
        );
        assert_eq!(
            image_auroc(&[0.1, f32::NAN], &[true, false]),
            Err(MetricError::NanScore { index: 1 })
        );
        assert!(matches!(
            image_auroc(&[0.1], &[true, false]),
            Err(MetricError::LengthMismatch { .. })
        ));
        assert!(roc_curve(&[], &[]).is_err());
    }

    #[test]
    fn order_keys_preserve_order_and_round_trip() {
        let values = [
            f32::NEG_INFINITY,
            f32::MIN,
            -1.0,
            -f32::MIN_POSITIVE,
            -1e-45,
            0.0,
            1e-45,
            f32::MIN_POSITIVE,
            0.5,
            1.0,
            f32::MAX,
            f32::INFINITY,
        ];
        for w in values.windows(2) {
            assert!(order_key(w[0]) < order_key(w[1]), "{} {}", w[0], w[1]);
        }
        for v in values {
            assert_eq!(key_value(order_key(v)), v);
        }
        assert_eq!(order_key(-0.0), order_key(0.0));
    }

    /// The hand-computed example: one 4 × 2 image with regions A (1 px) and B (3 px).
    ///
    /// ```text
    /// A 0.9 | n 0.7 | B 0.8 | B 0.2
    /// n 0.5 | n 0.3 | n 0.1 | B 0.2
    /// ```
    ///
    /// Sweep: t=0.9 → PRO ½ (A found), t=0.8 → PRO (1 + ⅓)/2 = ⅔, then FPR ¼, ½, ¾ at PRO ⅔,
    /// t=0.2 → PRO 1, t=0.1 → FPR 1. AU-PRO(0.3) = (0.3 · ⅔) / 0.3 = ⅔;
    /// AU-PRO(1) = 0.75 · ⅔ + 0.25 · 1 = 0.75. Pixel AUROC = (4 + 4 + 1 + 1) / 16.
    /// Were pixels weighted instead of regions, PRO at t=0.8 would be 2/4, not ⅔.
    fn hand_example() -> (Vec<f32>, Vec<bool>) {
        let scores = vec![0.9, 0.7, 0.8, 0.2, 0.5, 0.3, 0.1, 0.2];
        let mask = vec![true, false, true, true, false, false, false, true];
        (scores, mask)
    }

    #[test]
    fn pixel_metrics_hand_computed() {
        let (scores, mask) = hand_example();
        let gray: Vec<u8> = mask.iter().map(|&m| if m { 255 } else { 0 }).collect();
        for m in [Mask::Bool(&mask), Mask::Gray(&gray)] {
            let s = [MapSample {
                scores: &scores,
                width: 4,
                height: 2,
                mask: m,
            }];
            let e = PixelEval::new(&s).unwrap();
            assert_eq!((e.regions(), e.defect_pixels(), e.good_pixels()), (2, 4, 4));
            assert!((e.au_pro(0.3).unwrap() - 2.0 / 3.0).abs() < EPS);
            assert!((e.au_pro(1.0).unwrap() - 0.75).abs() < EPS);
            // Up to FPR 0.1 the curve sits at ⅔ from x = 0.
            assert!((e.au_pro(0.1).unwrap() - 2.0 / 3.0).abs() < EPS);
            assert!((e.auroc() - 0.625).abs() < EPS);
            assert!((pixel_auroc(&s).unwrap() - 0.625).abs() < EPS);
            assert!((au_pro(&s, 0.3).unwrap() - 2.0 / 3.0).abs() < EPS);
            let xy: Vec<(f64, f64)> = e.pro_curve(0.0).iter().map(|p| (p.fpr, p.y)).collect();
            let expected = [
                (0.0, 0.0),
                (0.0, 0.5),
                (0.0, 2.0 / 3.0),
                (0.25, 2.0 / 3.0),
                (0.5, 2.0 / 3.0),
                (0.75, 2.0 / 3.0),
                (0.75, 1.0),
                (1.0, 1.0),
            ];
            assert_eq!(xy.len(), expected.len());
            for (a, b) in xy.iter().zip(expected) {
                assert!(
                    (a.0 - b.0).abs() < EPS && (a.1 - b.1).abs() < EPS,
                    "{a:?} {b:?}"
                );
            }
        }
    }

    #[test]
    fn regions_weigh_equally_whatever_their_size() {
        // A 1-pixel defect found at every threshold above the good pixels, a 9-pixel defect
        // scored like the background: PRO sits at exactly ½ until the background is flagged.
        let (w, h) = (8, 4);
        let mut mask = vec![false; w * h];
        let mut scores = vec![0.0f32; w * h];
        mask[0] = true;
        scores[0] = 1.0;
        for y in 1..4 {
            for x in 4..7 {
                mask[y * w + x] = true;
            }
        }
        let s = [MapSample {
            scores: &scores,
            width: w,
            height: h,
            mask: Mask::Bool(&mask),
        }];
        let e = PixelEval::new(&s).unwrap();
        assert_eq!(e.regions(), 2);
        // Everything else ties at 0: the curve goes (0, 0) → (0, ½) → (1, 1).
        // Area to 0.3: 0.3 · (½ + (½ + 0.3 · ½)) / 2 = 0.3 · 0.575.
        assert!((e.au_pro(0.3).unwrap() - 0.575).abs() < EPS);
    }

    /// Random test set: `n` images, some good, masks of random rectangles (touching ones merge),
    /// scores quantised to `levels` so that ties across classes are common.
    fn random_set(
        rng: &mut StdRng,
        n: usize,
        levels: u32,
    ) -> Vec<(Vec<f32>, Vec<bool>, usize, usize)> {
        (0..n)
            .map(|i| {
                let (w, h) = (rng.random_range(3..14), rng.random_range(3..14));
                let mut mask = vec![false; w * h];
                if i % 3 != 0 {
                    for _ in 0..rng.random_range(1..4) {
                        let (x0, y0) = (rng.random_range(0..w), rng.random_range(0..h));
                        let (x1, y1) = (rng.random_range(x0..w), rng.random_range(y0..h));
                        for y in y0..=y1 {
                            for x in x0..=x1 {
                                mask[y * w + x] = true;
                            }
                        }
                    }
                }
                let scores = mask
                    .iter()
                    .map(|&m| {
                        let q = rng.random_range(0..levels) as f32 / levels as f32;
                        if m { q + 0.3 } else { q }
                    })
                    .collect();
                (scores, mask, w, h)
            })
            .collect()
    }

    fn samples(set: &[(Vec<f32>, Vec<bool>, usize, usize)]) -> Vec<MapSample<'_>> {
        set.iter()
            .map(|(s, m, w, h)| MapSample {
                scores: s,
                width: *w,
                height: *h,
                mask: if m.iter().any(|&b| b) {
                    Mask::Bool(m)
                } else {
                    Mask::Good
                },
            })
            .collect()
    }

    /// Naive 8-connected labelling by repeated min-propagation, independent of the flood fill.
    fn naive_regions(mask: &[bool], w: usize, h: usize) -> Vec<Vec<usize>> {
        let mut label: Vec<usize> = (0..mask.len()).collect();
        loop {
            let mut changed = false;
            for p in 0..mask.len() {
                if !mask[p] {
                    continue;
                }
                let (x, y) = ((p % w) as i64, (p / w) as i64);
                for dy in -1..=1 {
                    for dx in -1..=1 {
                        let (nx, ny) = (x + dx, y + dy);
                        if nx < 0 || ny < 0 || nx >= w as i64 || ny >= h as i64 {
                            continue;
                        }
                        let q = ny as usize * w + nx as usize;
                        if mask[q] && label[q] < label[p] {
                            label[p] = label[q];
                            changed = true;
                        }
                    }
                }
            }
            if !changed {
                break;
            }
        }
        let mut roots: Vec<usize> = (0..mask.len())
            .filter(|&p| mask[p])
            .map(|p| label[p])
            .collect();
        roots.sort_unstable();
        roots.dedup();
        roots
            .iter()
            .map(|&r| {
                (0..mask.len())
                    .filter(|&p| mask[p] && label[p] == r)
                    .collect()
            })
            .collect()
    }

    /// PRO curve and normalised AU-PRO by evaluating every threshold from scratch.
    fn brute_force_pro(
        set: &[(Vec<f32>, Vec<bool>, usize, usize)],
        limit: f64,
    ) -> (Vec<(f64, f64)>, f64) {
        let regions: Vec<(usize, Vec<usize>)> = set
            .iter()
            .enumerate()
            .flat_map(|(i, (_, m, w, h))| naive_regions(m, *w, *h).into_iter().map(move |r| (i, r)))
            .collect();
        let negatives: Vec<f32> = set
            .iter()
            .flat_map(|(s, m, _, _)| s.iter().zip(m).filter(|(_, m)| !**m).map(|(s, _)| *s))
            .collect();
        let mut thresholds: Vec<f32> = set.iter().flat_map(|(s, ..)| s.iter().copied()).collect();
        thresholds.sort_by(|a, b| b.total_cmp(a));
        thresholds.dedup();
        let mut curve = vec![(0.0, 0.0)];
        for t in thresholds {
            let fpr = negatives.iter().filter(|&&s| s >= t).count() as f64 / negatives.len() as f64;
            let pro = regions
                .iter()
                .map(|(i, r)| {
                    r.iter().filter(|&&p| set[*i].0[p] >= t).count() as f64 / r.len() as f64
                })
                .sum::<f64>()
                / regions.len() as f64;
            curve.push((fpr, pro));
        }
        let mut area = 0.0;
        for w in curve.windows(2) {
            let ((x0, y0), (x1, y1)) = (w[0], w[1]);
            if x0 >= limit {
                break;
            }
            if x1 <= limit {
                area += (x1 - x0) * (y0 + y1) / 2.0;
            } else {
                let y = y0 + (y1 - y0) * (limit - x0) / (x1 - x0);
                area += (limit - x0) * (y0 + y) / 2.0;
            }
        }
        (curve, area / limit)
    }

    #[test]
    fn pixel_metrics_match_brute_force_on_random_maps() {
        let mut rng = StdRng::seed_from_u64(42);
        for round in 0..40 {
            let levels = [4, 16, 1 << 20][round % 3];
            let n = rng.random_range(2..7);
            let set = random_set(&mut rng, n, levels);
            let s = samples(&set);
            let Ok(e) = PixelEval::new(&s) else {
                // Rare: a set whose masks cover every pixel has no FPR denominator.
                continue;
            };
            for limit in [0.01, 0.05, 0.3, 0.77, 1.0] {
                let (curve, expected) = brute_force_pro(&set, limit);
                let got = e.au_pro(limit).unwrap();
                assert!(
                    (got - expected).abs() < 1e-9,
                    "round {round}: {got} vs {expected}"
                );
                let exact = e.pro_curve(0.0);
                assert_eq!(exact.len(), curve.len());
                for (a, b) in exact.iter().zip(&curve) {
                    assert!((a.fpr - b.0).abs() < 1e-12 && (a.y - b.1).abs() < 1e-9);
                }
            }
            let all: Vec<f32> = set.iter().flat_map(|(s, ..)| s.iter().copied()).collect();
            let labels: Vec<bool> = set
                .iter()
                .flat_map(|(_, m, ..)| m.iter().copied())
                .collect();
            let expected = pairwise_auroc(&all, &labels);
            assert!((e.auroc() - expected).abs() < EPS);
            let roc = e.roc_curve(0.0);
            assert!((area_under(&roc, 1.0) - expected).abs() < 1e-9);
            // The pixel AUROC is the image AUROC of the pooled pixels.
            assert!((image_auroc(&all, &labels).unwrap() - expected).abs() < EPS);
        }
    }

    #[test]
    fn perfect_inverted_and_constant_maps() {
        let mut rng = StdRng::seed_from_u64(9);
        let set = random_set(&mut rng, 6, 1 << 20);
        let perfect: Vec<_> = set
            .iter()
            .map(|(s, m, w, h)| {
                let s: Vec<f32> = s
                    .iter()
                    .zip(m)
                    .map(|(s, &m)| if m { 2.0 + s } else { *s })
                    .collect();
                (s, m.clone(), *w, *h)
            })
            .collect();
        let inverted: Vec<(Vec<f32>, Vec<bool>, usize, usize)> = perfect
            .iter()
            .map(|(s, m, w, h)| (s.iter().map(|v| -v).collect(), m.clone(), *w, *h))
            .collect();
        let constant: Vec<_> = set
            .iter()
            .map(|(s, m, w, h)| (vec![0.25; s.len()], m.clone(), *w, *h))
            .collect();
        let e = PixelEval::new(&samples(&perfect)).unwrap();
        assert_eq!(e.auroc(), 1.0);
        assert!((e.au_pro(0.3).unwrap() - 1.0).abs() < EPS);
        let e = PixelEval::new(&samples(&inverted)).unwrap();
        assert_eq!(e.auroc(), 0.0);
        assert!(e.au_pro(0.3).unwrap().abs() < EPS);
        assert!((e.au_pro(1.0).unwrap()).abs() < EPS);
        // A constant map: the curve is the diagonal, area 0.3²/2, normalised 0.15.
        let e = PixelEval::new(&samples(&constant)).unwrap();
        assert_eq!(e.auroc(), 0.5);
        assert!((e.au_pro(0.3).unwrap() - 0.15).abs() < EPS);
        assert_eq!(e.pro_curve(0.0).len(), 2);
    }

    #[test]
    fn thinned_curves_stay_close_to_the_exact_curve() {
        let mut rng = StdRng::seed_from_u64(3);
        let (w, h) = (200, 150);
        let mask: Vec<bool> = (0..w * h)
            .map(|p| {
                let (x, y) = (p % w, p / w);
                (20..60).contains(&x) && (30..50).contains(&y)
                    || (120..125).contains(&x) && (100..140).contains(&y)
            })
            .collect();
        let scores: Vec<f32> = mask
            .iter()
            .map(|&m| rng.random::<f32>() + if m { 0.6 } else { 0.0 })
            .collect();
        let s = [MapSample {
            scores: &scores,
            width: w,
            height: h,
            mask: Mask::Bool(&mask),
        }];
        let e = PixelEval::new(&s).unwrap();
        for curve in [e.pro_curve(0.0), e.roc_curve(0.0)] {
            assert!(curve.len() > 20_000);
        }
        for res in [0.01, 0.001] {
            for (exact, thin) in [
                (e.pro_curve(0.0), e.pro_curve(res)),
                (e.roc_curve(0.0), e.roc_curve(res)),
            ] {
                assert!(thin.len() as f64 <= 4.0 / res + 2.0, "{}", thin.len());
                assert_eq!(thin[0], exact[0]);
                assert_eq!(thin.last(), exact.last());
                // Kept points are a subsequence (thresholds strictly decrease), and each exact
                // point is within `res` of the last kept point at or above its threshold.
                let mut k = 0;
                for p in &exact {
                    while k + 1 < thin.len() && thin[k + 1].threshold >= p.threshold {
                        k += 1;
                    }
                    let q = thin[k];
                    assert!((p.fpr - q.fpr).abs() <= res && (p.y - q.y).abs() <= res);
                }
                assert!(thin.windows(2).all(|w| w[0].threshold > w[1].threshold));
            }
        }
        let last = e.pro_curve(0.01).last().copied().unwrap();
        assert_eq!((last.fpr, last.y), (1.0, 1.0));
    }

    #[test]
    fn pixel_metric_errors() {
        let (scores, mask) = hand_example();
        let ok = |m| MapSample {
            scores: &scores,
            width: 4,
            height: 2,
            mask: m,
        };
        assert!(matches!(
            PixelEval::new(&[ok(Mask::Good)]),
            Err(MetricError::EmptyClass("defect pixel"))
        ));
        assert!(matches!(
            PixelEval::new(&[ok(Mask::Bool(&[true; 8]))]),
            Err(MetricError::EmptyClass("defect-free pixel"))
        ));
        assert!(matches!(
            PixelEval::new(&[ok(Mask::Good), ok(Mask::Bool(&mask[..7]))]),
            Err(MetricError::MaskShape {
                image: 1,
                expected: 8,
                actual: 7
            })
        ));
        let short = MapSample {
            scores: &scores[..6],
            width: 4,
            height: 2,
            mask: Mask::Good,
        };
        assert!(matches!(
            PixelEval::new(&[short]),
            Err(MetricError::MapShape { image: 0, .. })
        ));
        let mut nan = scores.clone();
        nan[5] = f32::NAN;
        let bad = MapSample {
            scores: &nan,
            width: 4,
            height: 2,
            mask: Mask::Bool(&mask),
        };
        assert_eq!(
            PixelEval::new(&[ok(Mask::Good), bad]).err(),
            Some(MetricError::NanPixel { image: 1, index: 5 })
        );
        let huge = MapSample {
            scores: &[],
            width: usize::MAX,
            height: 2,
            mask: Mask::Good,
        };
        assert!(matches!(
            PixelEval::new(&[huge]),
            Err(MetricError::SizeOverflow { .. })
        ));
        let e = PixelEval::new(&[ok(Mask::Bool(&mask))]).unwrap();
        for limit in [0.0, -0.1, 1.5, f64::NAN] {
            assert!(matches!(e.au_pro(limit), Err(MetricError::FprLimit(_))));
        }
        // Zero-sized maps are allowed and contribute nothing.
        let empty = MapSample {
            scores: &[],
            width: 0,
            height: 5,
            mask: Mask::Bool(&[]),
        };
        assert!(PixelEval::new(&[empty, ok(Mask::Bool(&mask))]).is_ok());
    }

    #[test]
    fn threshold_report_counts_and_rates() {
        let scores = [0.1, 0.5, 0.9, 0.2, 0.7, 0.5, 0.4];
        let defective = [false, false, false, true, true, true, false];
        let r = ThresholdReport::at_threshold(&scores, &defective, 0.5).unwrap();
        // Rejected (>= 0.5): 0.5 and 0.9 (good), 0.7 and 0.5 (defective); 0.2 escapes.
        assert_eq!(
            r,
            ThresholdReport {
                true_positives: 2,
                false_positives: 2,
                true_negatives: 2,
                false_negatives: 1,
            }
        );
        assert_eq!((r.good(), r.defective()), (4, 3));
        assert_eq!(r.false_reject_rate(), Some(0.5));
        assert!((r.escape_rate().unwrap() - 1.0 / 3.0).abs() < EPS);
        let json = serde_json::to_value(r).unwrap();
        assert_eq!(json["false_positives"], 2);
        assert_eq!(json["false_reject_rate"], 0.5);

        let none = ThresholdReport::from_decisions(&[true, false], &[false, false]).unwrap();
        assert_eq!(none.escape_rate(), None);
        assert_eq!(none.false_reject_rate(), Some(0.5));
        assert!(serde_json::to_value(none).unwrap()["escape_rate"].is_null());

        assert!(ThresholdReport::at_threshold(&[f32::NAN], &[true], 0.0).is_err());
        assert!(ThresholdReport::from_decisions(&[true], &[]).is_err());
    }

    #[test]
    fn mistakes_are_ranked_worst_first() {
        let scores = [0.6, 0.95, 0.1, 0.3, 0.7, 0.45, 0.2, 0.5, 0.5];
        let defective = [false, false, false, true, false, true, true, false, true];
        let m = mistakes(&scores, &defective, 0.5).unwrap();
        // A good part at exactly the threshold is rejected; a defective one there is caught.
        assert_eq!(m.false_rejects, vec![1, 4, 0, 7]);
        assert_eq!(m.escapes, vec![6, 3, 5]);
        assert!(mistakes(&scores, &defective[..2], 0.5).is_err());
        assert!(mistakes(&[f32::NAN], &[true], 0.5).is_err());
    }
}
